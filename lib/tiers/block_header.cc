#include "lib/tiers/block_header.h"

#define XXH_STATIC_LINKING_ONLY
#include <xxhash.h>
#if defined(__x86_64__)
#include <xxh_x86dispatch.h>
#endif

namespace kvtier::internal {
namespace {

constexpr char kMagic[8] = {'K', 'V', 'T', 'I', 'E', 'R', 'B', '1'};
constexpr size_t kFields = kBlockHeaderMinBytes - 8;  // before the header's own checksum

}  // namespace

uint64_t PayloadHash(const void* p, size_t n) {
#if defined(__x86_64__)
  return XXH3_64bits_dispatch(p, n);
#else
  return XXH3_64bits(p, n);
#endif
}

void EncodeBlockHeader(const BlockHeader& h, uint32_t header_bytes, uint8_t* out) {
  std::memset(out, 0, header_bytes);
  LeWriter w{out};
  w.Bytes(kMagic, 8);
  w.U32(kBlockHeaderVersion);
  w.U32(header_bytes);
  w.U64(h.key.hi);
  w.U64(h.key.lo);
  w.U64(h.parent.hi);
  w.U64(h.parent.lo);
  w.U64(h.fingerprint);
  w.U64(h.payload_bytes);
  w.U64(h.payload_hash);
  w.U64(h.sequence);
  w.U64(XXH3_64bits(out, kFields));
}

bool DecodeBlockHeader(const uint8_t* in, uint32_t header_bytes, BlockHeader* h) {
  if (header_bytes < kBlockHeaderMinBytes || std::memcmp(in, kMagic, 8) != 0) return false;
  LeReader r{in + 8};
  if (r.U32() != kBlockHeaderVersion || r.U32() != header_bytes) return false;
  h->key = {r.U64(), r.U64()};
  h->parent = {r.U64(), r.U64()};
  h->fingerprint = r.U64();
  h->payload_bytes = r.U64();
  h->payload_hash = r.U64();
  h->sequence = r.U64();
  return r.U64() == XXH3_64bits(in, kFields);
}

bool VerifyBlock(const uint8_t* header, uint32_t header_bytes, const void* payload,
                 const BlockKey& key, uint64_t fingerprint, uint64_t payload_bytes) {
  BlockHeader h;
  return DecodeBlockHeader(header, header_bytes, &h) && h.key == key &&
         h.fingerprint == fingerprint && h.payload_bytes == payload_bytes &&
         h.payload_hash == PayloadHash(payload, payload_bytes);
}

}  // namespace kvtier::internal
