// What the disk tier's fuzz targets (disk_open, disk_journal) share: a scratch directory for the
// files a run writes, and the property every recovered state must have.
#ifndef KVTIER_TEST_FUZZ_DISK_FUZZ_UTIL_H_
#define KVTIER_TEST_FUZZ_DISK_FUZZ_UTIL_H_

#include <stdlib.h>

#include <filesystem>
#include <string>
#include <system_error>
#include <vector>

#include "absl/container/flat_hash_set.h"
#include "lib/tiers/disk_tier.h"
#include "test/fuzz/fuzz_check.h"

namespace kvtier::internal {

// A new directory named `name`.XXXXXX under $TMPDIR, else /dev/shm (tmpfs: an fsync there costs
// nothing), else /tmp.
inline std::string MakeFuzzScratchDir(const std::string& name) {
  namespace fs = std::filesystem;
  const char* tmp = getenv("TMPDIR");
  std::error_code ec;
  const std::string base = tmp != nullptr && *tmp             ? tmp
                           : fs::is_directory("/dev/shm", ec) ? "/dev/shm"
                                                              : "/tmp";
  std::string pattern = base + "/" + name + ".XXXXXX";
  KVTIER_FUZZ_CHECK(mkdtemp(pattern.data()) != nullptr);
  return pattern;
}

// Slots and keys each at most once, every slot inside a tier of `slots`.
inline void CheckStoredBlocks(const std::vector<StoredBlock>& blocks, uint32_t slots) {
  absl::flat_hash_set<SlotId> seen_slots;
  absl::flat_hash_set<BlockKey> seen_keys;
  for (const StoredBlock& b : blocks) {
    KVTIER_FUZZ_CHECK(b.slot < slots);
    KVTIER_FUZZ_CHECK(seen_slots.insert(b.slot).second);
    KVTIER_FUZZ_CHECK(seen_keys.insert(b.key).second);
  }
}

}  // namespace kvtier::internal

#endif  // KVTIER_TEST_FUZZ_DISK_FUZZ_UTIL_H_
