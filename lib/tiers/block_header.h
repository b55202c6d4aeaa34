// The header that travels with a block below the host: the disk tier writes it as each slot's
// trailer, the remote tier as the first bytes of each value. It names the block (key and parent),
// the layout it was written under (fingerprint) and the payload (length and XXH3-64), and checks
// itself (its own XXH3-64), so a read can tell an intact block from a torn, stale, foreign or
// corrupted one without trusting the storage.
//
// Encoding: little-endian, whatever the host; `header_bytes` (at least kBlockHeaderMinBytes) is
// part of the encoding, zero-padded, so a header written for one size never decodes as another.
#ifndef KVTIER_LIB_TIERS_BLOCK_HEADER_H_
#define KVTIER_LIB_TIERS_BLOCK_HEADER_H_

#include <cstddef>
#include <cstdint>
#include <cstring>

#include "kvtier/block_key.h"

namespace kvtier::internal {

// magic, version, header size, key, parent, fingerprint, payload bytes, payload hash, sequence,
// and the header's own checksum.
inline constexpr size_t kBlockHeaderMinBytes = 8 + 4 + 4 + 16 + 16 + 8 + 8 + 8 + 8 + 8;
// The format of what is stored below the host: this header, the disk tier's manifest and
// kvtier.meta, and the keys they name (kvtier/block_key.h). A block of another version never
// decodes, so it is never served: 2 since block keys hash length-prefixed salts (issue 17 #9).
inline constexpr uint32_t kBlockHeaderVersion = 2;

struct BlockHeader {
  BlockKey key, parent;
  uint64_t fingerprint = 0;  // Options::Fingerprint(): layout shape and shard identity
  uint64_t payload_bytes = 0;
  uint64_t payload_hash = 0;  // PayloadHash of the payload
  uint64_t sequence = 0;      // the writer's own use (the disk tier: write order)
};

// XXH3-64 of a payload, with the widest vector unit the CPU has (libxxhash's runtime dispatch on
// x86-64; the value is XXH3-64's whatever the path).
uint64_t PayloadHash(const void* p, size_t n);

// Writes `header_bytes` >= kBlockHeaderMinBytes bytes at `out`.
void EncodeBlockHeader(const BlockHeader& h, uint32_t header_bytes, uint8_t* out);
// Decodes and checks the header's own integrity (magic, version, size, checksum); false if any
// fails. Says nothing of the payload: compare payload_hash with PayloadHash of the bytes read.
bool DecodeBlockHeader(const uint8_t* in, uint32_t header_bytes, BlockHeader* h);
// Whether a block read back from storage is the one expected, intact: the `header_bytes` header at
// `header` decodes (DecodeBlockHeader), names `key`, the layout `fingerprint` and `payload_bytes`
// bytes of payload, and the `payload_bytes` bytes at `payload` hash to its payload_hash. The one
// check both the disk and the remote tier apply to every read. O(payload_bytes); the payload is
// hashed only when the header matches.
bool VerifyBlock(const uint8_t* header, uint32_t header_bytes, const void* payload,
                 const BlockKey& key, uint64_t fingerprint, uint64_t payload_bytes);

// Little-endian field writer and reader (block headers, the disk tier's manifest).
struct LeWriter {
  uint8_t* p;
  void U32(uint32_t v) {
    for (int i = 0; i < 4; ++i) *p++ = static_cast<uint8_t>(v >> (8 * i));
  }
  void U64(uint64_t v) {
    for (int i = 0; i < 8; ++i) *p++ = static_cast<uint8_t>(v >> (8 * i));
  }
  void Bytes(const void* b, size_t n) {
    std::memcpy(p, b, n);
    p += n;
  }
};
struct LeReader {
  const uint8_t* p;
  uint32_t U32() {
    uint32_t v = 0;
    for (int i = 0; i < 4; ++i) v |= uint32_t{*p++} << (8 * i);
    return v;
  }
  uint64_t U64() {
    uint64_t v = 0;
    for (int i = 0; i < 8; ++i) v |= uint64_t{*p++} << (8 * i);
    return v;
  }
};

}  // namespace kvtier::internal

#endif  // KVTIER_LIB_TIERS_BLOCK_HEADER_H_
