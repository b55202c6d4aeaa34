// StorageTier: a tier below the host that keeps whole blocks (the disk tier, the remote tier). The
// Cache moves blocks between it and host slots only, in batches, asynchronously, through this one
// interface; each block's outcome is reported on its own.
//
// Thread safety: any method from any thread. `done` runs on the tier's own threads, never on the
// caller's during the call, once per block that was started; it may take the Index lock. A block
// that cannot even be started (a bad slot: a bug) is returned by the call instead, and gets no
// `done`.
// Errors (per block, to `done`): kDataLoss, the stored copy failed to verify (header, key, layout,
// payload hash: see VerifyBlock) and its bytes were not trusted; kNotFound, the tier does not hold
// the block; others, an I/O or network failure. A read's host bytes are undefined unless OK.
// Lifetime: host slots are read or written until the block's `done` has run.
#ifndef KVTIER_LIB_TIERS_STORAGE_TIER_H_
#define KVTIER_LIB_TIERS_STORAGE_TIER_H_

#include <cstddef>
#include <functional>
#include <span>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "kvtier/block_key.h"
#include "kvtier/policy.h"
#include "kvtier/stats.h"

namespace kvtier::internal {

class StorageTier {
 public:
  struct Block {
    BlockKey key;
    BlockKey parent;            // writes: stored with the block, for recovery
    SlotId slot = 0;            // the tier's own slot (disk); unused by tiers keyed by BlockKey
    std::byte* host = nullptr;  // the host slot the bytes come from (write) or go to (read)
  };
  using Done = std::function<void(size_t i, const absl::Status& status)>;
  using NotStarted = std::vector<std::pair<size_t, absl::Status>>;  // block index, why

  virtual ~StorageTier() = default;
  // Reads blocks[i] into blocks[i].host and verifies it; done(i, status) for each i started.
  [[nodiscard]] virtual NotStarted ReadBlocks(std::vector<Block> blocks, Done done) = 0;
  // Stores blocks[i] from blocks[i].host; done(i, status) for each i started.
  [[nodiscard]] virtual NotStarted WriteBlocks(std::vector<Block> blocks, Done done) = 0;
  // Match, past the blocks the Index knows: how many of `keys`, from the first, this tier holds,
  // found within the tier's own time budget (the caller waits, without locks). Only a store the
  // Index tracks no slots of (the remote tier, shared with other caches) answers; a tier whose
  // blocks the Index knows (the disk) returns 0.
  virtual uint32_t FindPrefix(std::span<const BlockKey> /*keys*/) { return 0; }
  // Waits until every operation started so far has ended (its callbacks run).
  virtual void Drain() = 0;
  // Sets this tier's own figures in `stats` (counters, gauges, latencies); the Cache adds the
  // byte counts of what it moved.
  virtual void FillStats(CacheStats* stats) const = 0;
};

}  // namespace kvtier::internal

#endif  // KVTIER_LIB_TIERS_STORAGE_TIER_H_
