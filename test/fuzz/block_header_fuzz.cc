// Fuzz target: the block header (lib/tiers/block_header.h), read back from a disk slot's trailer
// or a remote value's first bytes, which the storage may have torn, corrupted or forged.
//
// Input: one mode byte, then
//   mode even: a header of exactly the remaining bytes (header_bytes = their count), decoded as
//     found. A header that decodes encodes back to the same bytes (its fields and checksum).
//   mode odd: the fields of a header (zero-extended to 56 bytes: key, parent, fingerprint,
//     sequence, header size u32, flip position u16, flip mask u8), then a payload. The header is
//     encoded for the payload, must decode and verify; then one byte is flipped at the position:
//     inside the checked fields the header must no longer decode, in the padding it must decode
//     unchanged.
#include <algorithm>
#include <cstdint>
#include <cstring>
#include <vector>

#include "lib/tiers/block_header.h"
#include "test/fuzz/fuzz_check.h"

namespace kvtier::internal {
namespace {

bool SameFields(const BlockHeader& a, const BlockHeader& b) {
  return a.key == b.key && a.parent == b.parent && a.fingerprint == b.fingerprint &&
         a.payload_bytes == b.payload_bytes && a.payload_hash == b.payload_hash &&
         a.sequence == b.sequence;
}

void DecodeAsFound(const uint8_t* data, size_t size) {
  // Exactly the input's bytes: a read past them is ASan's finding.
  const auto header_bytes = static_cast<uint32_t>(std::min<size_t>(size, 1 << 16));
  std::vector<uint8_t> in(data, data + header_bytes);
  BlockHeader h;
  if (!DecodeBlockHeader(in.data(), header_bytes, &h)) return;
  std::vector<uint8_t> again(header_bytes);
  EncodeBlockHeader(h, header_bytes, again.data());
  KVTIER_FUZZ_CHECK(std::memcmp(again.data(), in.data(), kBlockHeaderMinBytes) == 0);
  KVTIER_FUZZ_CHECK(VerifyBlock(in.data(), header_bytes, nullptr, h.key, h.fingerprint, 0) ==
                    (h.payload_bytes == 0 && h.payload_hash == PayloadHash(nullptr, 0)));
}

void EncodeFlipDecode(const uint8_t* data, size_t size) {
  uint8_t fields[56] = {};
  std::memcpy(fields, data, std::min(size, sizeof(fields)));
  const uint8_t* payload = data + std::min(size, sizeof(fields));
  const size_t payload_bytes = size - std::min(size, sizeof(fields));
  LeReader r{fields};
  BlockHeader h;
  h.key = {r.U64(), r.U64()};
  h.parent = {r.U64(), r.U64()};
  h.fingerprint = r.U64();
  h.sequence = r.U64();
  // 0..4095 bytes beyond the minimum.
  const uint32_t header_bytes = static_cast<uint32_t>(kBlockHeaderMinBytes) + r.U32() % 4096;
  const uint16_t flip_at = static_cast<uint16_t>(fields[52] | fields[53] << 8);
  const uint8_t flip_mask = fields[54];
  h.payload_bytes = payload_bytes;
  h.payload_hash = PayloadHash(payload, payload_bytes);

  std::vector<uint8_t> out(header_bytes);
  EncodeBlockHeader(h, header_bytes, out.data());
  BlockHeader back;
  KVTIER_FUZZ_CHECK(DecodeBlockHeader(out.data(), header_bytes, &back));
  KVTIER_FUZZ_CHECK(SameFields(h, back));
  KVTIER_FUZZ_CHECK(
      VerifyBlock(out.data(), header_bytes, payload, h.key, h.fingerprint, payload_bytes));
  // Another size, key or fingerprint than the header's is not this block.
  KVTIER_FUZZ_CHECK(!DecodeBlockHeader(out.data(), header_bytes - 1, &back) ||
                    header_bytes - 1 < kBlockHeaderMinBytes);
  KVTIER_FUZZ_CHECK(!VerifyBlock(out.data(), header_bytes, payload,
                                 BlockKey{h.key.hi, h.key.lo ^ 1}, h.fingerprint, payload_bytes));
  KVTIER_FUZZ_CHECK(
      !VerifyBlock(out.data(), header_bytes, payload, h.key, h.fingerprint ^ 1, payload_bytes));
  if (payload_bytes > 0) {
    std::vector<uint8_t> changed(payload, payload + payload_bytes);
    changed[flip_at % payload_bytes] ^= flip_mask == 0 ? 1 : flip_mask;
    KVTIER_FUZZ_CHECK(!VerifyBlock(out.data(), header_bytes, changed.data(), h.key, h.fingerprint,
                                   payload_bytes));
  }

  if (flip_mask == 0 || flip_at >= header_bytes) return;
  out[flip_at] ^= flip_mask;
  const bool decoded = DecodeBlockHeader(out.data(), header_bytes, &back);
  if (flip_at < kBlockHeaderMinBytes) {
    KVTIER_FUZZ_CHECK(!decoded);
  } else {
    KVTIER_FUZZ_CHECK(decoded && SameFields(h, back));
  }
}

}  // namespace
}  // namespace kvtier::internal

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size == 0) return 0;
  if (data[0] % 2 == 0) {
    kvtier::internal::DecodeAsFound(data + 1, size - 1);
  } else {
    kvtier::internal::EncodeFlipDecode(data + 1, size - 1);
  }
  return 0;
}
