// CacheStats: a snapshot of a Cache's counters, gauges and latency histograms.
//
// Counters are monotonic from Create() and never reset by reading; gauges are the value at the time
// of the snapshot. Names carry their unit (blocks, bytes) and cause. FormatPrometheus()
// (kvtier/prometheus.h) renders a snapshot in Prometheus' text format.
// Thread safety: a value; Cache::Stats() may be called from any thread at any time. Counters
// recorded outside the cache's lock (disk I/O, latencies) may be a few operations apart from the
// others in one snapshot; each is monotonic on its own.
#ifndef KVTIER_STATS_H_
#define KVTIER_STATS_H_

#include <array>
#include <cstdint>

namespace kvtier {

// A latency distribution with fixed exponential buckets: bucket i < kFinite holds the samples in
// (UpperBoundNanos(i-1), UpperBoundNanos(i)], from 1 us doubling to about 8.4 s; the last bucket
// holds the slower ones. Counts are per bucket (not cumulative): Cumulative(i) sums them.
struct LatencyHistogram {
  static constexpr int kFinite = 24;            // buckets with an upper bound
  static constexpr int kBuckets = kFinite + 1;  // plus the overflow bucket (+Inf)
  // Upper bound of bucket i < kFinite: 1 us * 2^i, in nanoseconds.
  static constexpr uint64_t UpperBoundNanos(int i) { return uint64_t{1000} << i; }
  // The bucket a sample of `nanos` falls in.
  static constexpr int BucketFor(uint64_t nanos) {
    for (int i = 0; i < kFinite; ++i) {
      if (nanos <= UpperBoundNanos(i)) return i;
    }
    return kFinite;
  }

  std::array<uint64_t, kBuckets> buckets{};  // samples per bucket
  uint64_t count = 0;                        // samples in all buckets (their sum, always)
  uint64_t sum_nanos = 0;                    // sum of the samples

  // Samples at or below UpperBoundNanos(i) (i == kFinite: all of them).
  uint64_t Cumulative(int i) const {
    uint64_t n = 0;
    for (int b = 0; b <= i && b < kBuckets; ++b) n += buckets[b];
    return n;
  }
};

// One tier's figures. Copies between tiers are counted on both sides: a device-to-host write-back
// is one of device.demotions and adds to device.bytes_out and host.bytes_in.
struct TierStats {
  uint64_t capacity_blocks = 0;   // gauge: slots in the tier
  uint64_t used_blocks = 0;       // gauge: slots holding a block (Filling or Ready) or leased
  uint64_t pinned_blocks = 0;     // gauge: resident blocks with a pin (lease or copy in flight)
  uint64_t in_flight_blocks = 0;  // gauge: residencies being filled (bytes in flight into the tier)
  uint64_t queue_depth = 0;       // gauge: I/O operations submitted and not completed (disk only:
                                  // io_uring reads and writes, those held back beyond
                                  // Options.disk.queue_depth included; 0 for device and host)
  uint64_t hits = 0;              // blocks Match() found here first (highest tier wins)
  uint64_t misses = 0;            // blocks Match() did not find here nor in a tier above: per
                                  // tier, lookups = hits + misses, and disk.misses ==
                                  // blocks_missed + remote.hits
  uint64_t inserts = 0;           // blocks that started residing here
  uint64_t evictions = 0;         // blocks removed to make room (demoted or dropped)
  uint64_t drops = 0;             // evictions that left the block in no tier at all
  uint64_t blocks_stored = 0;     // Connector::Store: blocks copied from the engine's device
  uint64_t blocks_store_skipped = 0;  // Connector::Store: keys already cached here, not copied
  uint64_t demotions = 0;             // copies started from this tier down to the next (device: to
                                      // host, write-back, write-through or flush; host: to disk)
  uint64_t promotions = 0;     // copies started into this tier from the one below (device: from
                               // host, by Load; host: disk reads, by Load)
  uint64_t bytes_in = 0;       // bytes copied into this tier (device: bytes_h2d; host: bytes_d2h
                               // + bytes_disk_read; disk: bytes_disk_written)
  uint64_t bytes_out = 0;      // bytes copied out of it (device: bytes_d2h; host: bytes_h2d +
                               // bytes_disk_written; disk: bytes_disk_read)
  uint64_t fill_failures = 0;  // copies into this tier that failed, their residency dropped
                               // (device: promotions, whether the copy or the disk read under it
                               // failed; host: device-to-host copies; disk: writes); the sum
                               // over tiers is transfer_failures
  uint64_t corrupt_reads = 0;  // reads whose bytes failed to verify (disk only: checksums)
  uint64_t io_errors = 0;      // reads and writes the storage failed (disk only: io_uring errors;
                               // device and host copies that fail count in fill_failures)
};

// The remote tier's figures (Options.remote); all zero without one. A remote block is read into
// a host slot (counted in host.promotions) and then copied to the device like a host hit.
struct RemoteStats {
  uint64_t hits = 0;             // blocks Match() found in the remote tier past the local prefix
  uint64_t lookups = 0;          // blocks Match() asked the remote tier about (EXISTS)
  uint64_t lookup_timeouts = 0;  // Match() calls whose lookup ran out of Options.remote
                                 // .match_budget_us: the blocks not yet confirmed are misses
  uint64_t reads = 0;            // blocks Load() read from the store and verified
  uint64_t read_misses = 0;      // reads that found no value (evicted or expired there): misses
  uint64_t corrupt_reads = 0;    // values that failed to verify (header, key, layout, payload
                                 // checksum): misses, never handed to the engine
  uint64_t read_errors = 0;      // reads the store failed (unreachable node, timeout)
  uint64_t writes = 0;           // blocks published (SET acknowledged)
  uint64_t write_errors = 0;     // publications the store failed
  uint64_t writes_skipped = 0;   // publications skipped: this cache knows the block is there
  uint64_t bytes_read = 0;       // payload bytes of verified reads
  uint64_t bytes_written = 0;    // payload bytes of acknowledged writes
  uint64_t redirects = 0;        // MOVED and ASK replies followed (slot migrations, failovers)
  uint64_t connects = 0;         // connections opened to the cluster's nodes
};

struct CacheStats {
  TierStats device;
  TierStats host;
  TierStats disk;
  RemoteStats remote;

  uint64_t match_calls = 0;
  uint64_t blocks_queried = 0;    // keys passed to Match()
  uint64_t blocks_missed = 0;     // keys at or after the first miss of each Match() (local
                                  // tiers, then the remote tier)
  uint64_t blocks_loaded = 0;     // blocks a Load() handed to a lease (device hits + promotions)
  uint64_t blocks_committed = 0;  // new blocks published by Commit()
  uint64_t blocks_commit_shared = 0;  // Commit() keys already on the device from elsewhere: that
                                      // copy was kept, the lease's not published
  uint64_t blocks_stored = 0;         // Connector::Store: blocks copied from the engine's device
  uint64_t blocks_store_skipped = 0;  // Connector::Store: keys already cached here, not copied
  uint64_t demotions = 0;             // device-to-host copies started (write-back or write-through)
  uint64_t promotions = 0;            // host-to-device copies started by Load()
  uint64_t bytes_h2d = 0;             // bytes of promotions
  uint64_t bytes_d2h = 0;             // bytes of demotions
  uint64_t transfer_failures = 0;     // copies that failed; their blocks became misses
  // Blocks a Load() handed over as a lossy Options.host.codec decoded them (promoted from the host
  // tier, or shared with the device copy an earlier such Load made): within the codec's error
  // bound, not byte-exact. Transfer::blocks_lossy() counts them per Load.
  uint64_t codec_lossy_blocks_loaded = 0;
  // Commit() keys whose device copy was such a decoded one, held by no lease: the committed
  // (recomputed, exact) block replaced it.
  uint64_t codec_lossy_blocks_replaced = 0;
  // Promotions refused because the block's codec header was not this cache's codec (another codec,
  // version, group size or element type): misses, never misread data.
  uint64_t codec_refused_blocks = 0;
  uint64_t bytes_disk_read = 0;     // payload bytes read from the disk tier
  uint64_t bytes_disk_written = 0;  // payload bytes written to the disk tier (host write-back)
  uint64_t disk_corrupt_reads = 0;  // disk reads whose trailer or payload failed to verify: misses
  uint64_t disk_io_errors = 0;      // disk reads and writes that failed
  uint64_t disk_recovered_blocks = 0;  // blocks served from a previous run's directory
  uint64_t disk_recovery_dropped = 0;  // slots found invalid, stale or orphaned at start
  bool disk_buffered_io = false;       // the disk tier runs without O_DIRECT (allow_buffered)
  uint64_t leases_live = 0;            // gauge: DeviceLeases not yet released
  uint64_t transfers_in_flight = 0;    // gauge: Load transfers whose copies have not finished
  uint64_t index_work = 0;             // entries and slots the index visited: key lookups, eviction
                            // candidates its policies offered (taken or passed over), slots
                            // walked by flush and restore. Grows with the requests served, not
                            // with capacity: a rise per request means victim searches walk past
                            // blocks they may not evict (pinned or prefix-protected)
  uint64_t events_dropped = 0;  // KV events lost because the queue (Options.events.capacity) was
                                // full: the router missed them (kvtier/events.h)
  // Loads (Cache and Connector) that ended with an error; of them, those that still delivered
  // their first blocks (0 < Transfer::blocks_loaded() < blocks()); and blocks() - blocks_loaded()
  // summed over them: the misses engines recompute (the failed blocks and every later one).
  uint64_t loads_failed = 0;
  uint64_t loads_partial = 0;
  uint64_t blocks_load_lost = 0;

  // Latencies, one sample per operation, whatever its outcome:
  LatencyHistogram load_latency;         // Load() call to its Transfer finishing (0 blocks to copy:
                                         // the time Load() took)
  LatencyHistogram demotion_latency;     // a batch of device-to-host copies (one call's write-back
                                         // or write-through): enqueued to copied
  LatencyHistogram disk_write_latency;   // one block's disk write: submitted to completed
  LatencyHistogram disk_read_latency;    // one block's disk read: submitted to read and verified
  LatencyHistogram remote_read_latency;  // one Load()'s remote reads (one pipelined batch)
  LatencyHistogram remote_write_latency;  // one batch of remote writes (publications)

  // Fraction of queried blocks that Match() found in some tier; 0 when nothing was queried.
  double HitRatio() const {
    return blocks_queried == 0
               ? 0.0
               : static_cast<double>(blocks_queried - blocks_missed) / blocks_queried;
  }
};

}  // namespace kvtier

#endif  // KVTIER_STATS_H_
