// Fuzz target: the disk tier's manifest (DecodeDiskManifest, lib/tiers/disk_tier.h), the file a
// clean Close() leaves and the next Open() reads back, which anyone with access to the directory
// may have truncated, corrupted or forged.
//
// Input: one mode byte, then the manifest's bytes.
//   mode bit 0: the last 8 bytes are replaced by the checksum of the rest, so that inputs get past
//     it to the header and the entries.
//   mode bit 1: the geometry expected is the one the manifest's header names (slots at most
//     2^16), so that any geometry reaches the entries; else a fixed one (kGeometry, that of the
//     seed corpus).
// A manifest that decodes holds only slots of the tier, each once, each key once, and encodes
// back to the same bytes.
#include <xxhash.h>

#include <cstdint>
#include <cstring>
#include <vector>

#include "absl/container/flat_hash_set.h"
#include "lib/tiers/block_header.h"
#include "lib/tiers/disk_tier.h"
#include "test/fuzz/fuzz_check.h"

namespace kvtier::internal {
namespace {

constexpr DiskGeometry kGeometry = {
    .layout_fingerprint = 0x6b76746965720001, .slot_bytes = 8192, .slots = 16, .files = 2};
constexpr size_t kMagicAndVersion = 8 + 4;

}  // namespace
}  // namespace kvtier::internal

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using namespace kvtier::internal;  // NOLINT(build/namespaces): a fuzz target's entry point
  if (size == 0) return 0;
  const uint8_t mode = data[0];
  std::vector<uint8_t> bytes(data + 1, data + size);
  if ((mode & 1) && bytes.size() >= 8) {
    LeWriter{bytes.data() + bytes.size() - 8}.U64(XXH3_64bits(bytes.data(), bytes.size() - 8));
  }
  DiskGeometry geometry = kGeometry;
  if ((mode & 2) && bytes.size() >= kMagicAndVersion + 24) {
    LeReader r{bytes.data() + kMagicAndVersion};
    geometry.layout_fingerprint = r.U64();
    geometry.slot_bytes = r.U64();
    geometry.slots = r.U32() % (1 << 16);  // the tier's own size: bounded by the caller
    geometry.files = r.U32();
  }
  absl::StatusOr<DiskManifest> m = DecodeDiskManifest(bytes, geometry);
  if (!m.ok()) {
    KVTIER_FUZZ_CHECK(m.status().code() == absl::StatusCode::kDataLoss);
    return 0;
  }
  absl::flat_hash_set<uint32_t> slots;
  absl::flat_hash_set<kvtier::BlockKey> keys;
  for (const StoredBlock& b : m->blocks) {
    KVTIER_FUZZ_CHECK(b.slot < geometry.slots);
    KVTIER_FUZZ_CHECK(slots.insert(b.slot).second);
    KVTIER_FUZZ_CHECK(keys.insert(b.key).second);
  }
  KVTIER_FUZZ_CHECK(m->max_sequence != UINT64_MAX);
  const std::vector<uint8_t> again = EncodeDiskManifest(geometry, m->blocks, m->max_sequence);
  KVTIER_FUZZ_CHECK(again == bytes);
  return 0;
}
