// CacheStats: a snapshot of a Cache's counters and gauges.
//
// Counters are monotonic from Create() and never reset by reading; gauges are the value at the time
// of the snapshot. Names carry their unit (blocks, bytes) and cause.
// Thread safety: a value; Cache::Stats() may be called from any thread at any time.
#ifndef KVTIER_STATS_H_
#define KVTIER_STATS_H_

#include <cstdint>

namespace kvtier {

struct TierStats {
  uint64_t capacity_blocks = 0;  // gauge: slots in the tier
  uint64_t used_blocks = 0;      // gauge: slots holding a block (Filling or Ready) or leased
  uint64_t pinned_blocks = 0;    // gauge: resident blocks with a pin (lease or copy in flight)
  uint64_t hits = 0;             // blocks Match() found here first (highest tier wins)
  uint64_t inserts = 0;          // blocks that started residing here
  uint64_t evictions = 0;        // blocks removed to make room (demoted or dropped)
  uint64_t drops = 0;            // evictions that left the block in no tier at all
};

struct CacheStats {
  TierStats device;
  TierStats host;
  TierStats disk;

  uint64_t match_calls = 0;
  uint64_t blocks_queried = 0;      // keys passed to Match()
  uint64_t blocks_missed = 0;       // keys at or after the first miss of each Match()
  uint64_t blocks_loaded = 0;       // blocks a Load() handed to a lease (device hits + promotions)
  uint64_t blocks_committed = 0;    // new blocks published by Commit()
  uint64_t demotions = 0;           // device-to-host copies started (write-back or write-through)
  uint64_t promotions = 0;          // host-to-device copies started by Load()
  uint64_t bytes_h2d = 0;           // bytes of promotions
  uint64_t bytes_d2h = 0;           // bytes of demotions
  uint64_t transfer_failures = 0;   // copies that failed; their blocks became misses
  uint64_t bytes_disk_read = 0;     // payload bytes read from the disk tier
  uint64_t bytes_disk_written = 0;  // payload bytes written to the disk tier (host write-back)
  uint64_t disk_corrupt_reads = 0;  // disk reads whose trailer or payload failed to verify: misses
  uint64_t disk_io_errors = 0;      // disk reads and writes that failed
  uint64_t disk_recovered_blocks = 0;  // blocks served from a previous run's directory
  uint64_t disk_recovery_dropped = 0;  // slots found invalid, stale or orphaned at start
  bool disk_buffered_io = false;       // the disk tier runs without O_DIRECT (allow_buffered)
  uint64_t leases_live = 0;            // gauge: DeviceLeases not yet released
  uint64_t transfers_in_flight = 0;    // gauge

  // Fraction of queried blocks that Match() found in some tier; 0 when nothing was queried.
  double HitRatio() const {
    return blocks_queried == 0
               ? 0.0
               : static_cast<double>(blocks_queried - blocks_missed) / blocks_queried;
  }
};

}  // namespace kvtier

#endif  // KVTIER_STATS_H_
