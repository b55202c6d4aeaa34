// RemoteTier: blocks in a Redis Cluster shared by many caches (engine replicas on many machines).
//
// A block is one string value under "kvtier:<namespace>:<key hex>": a block header
// (lib/tiers/block_header.h: magic, version, key, parent, layout fingerprint, length, XXH3-64) and
// then the payload. Every read verifies it all: a value that is missing, torn, of another key or
// layout, or corrupted is a miss (counted), never bytes handed on. Capacity and eviction are the
// store's (maxmemory, TTL): kvtier only keeps a bounded set of keys it believes are there (written
// or read by this cache) so that it does not publish the same block twice; a lookup that finds
// one of them gone forgets it.
//
// Reads and writes are asynchronous: each call queues one job (one pipelined batch per node) on
// the tier's worker threads and calls back on a worker thread when it ends; Exists blocks the
// caller for at most its deadline. Drain() waits for every job queued so far.
//
// Thread safety: all methods may be called from any thread concurrently. Callbacks run without
// any lock of the tier held.
#ifndef KVTIER_LIB_TIERS_REMOTE_TIER_H_
#define KVTIER_LIB_TIERS_REMOTE_TIER_H_

#include <atomic>
#include <chrono>
#include <cstdint>
#include <deque>
#include <functional>
#include <memory>
#include <span>
#include <string>
#include <thread>
#include <vector>

#include "absl/container/flat_hash_set.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "kvtier/block_key.h"
#include "kvtier/stats.h"
#include "lib/common/histogram.h"
#include "lib/common/mutex.h"
#include "lib/tiers/redis_cluster.h"
#include "lib/tiers/storage_tier.h"

namespace kvtier::internal {

struct RemoteTierConfig {
  RedisClusterConfig cluster;
  std::string name_space;  // the key's middle part: scope and Options::Fingerprint()
  uint64_t block_bytes = 0;
  uint64_t layout_fingerprint = 0;  // Options::Fingerprint(): in every value's header
  uint32_t ttl_seconds = 0;  // EX on every SET; 0: none (the store's maxmemory policy decides)
  std::chrono::milliseconds timeout{1000};       // per read or write batch
  std::chrono::microseconds match_budget{1000};  // FindPrefix's deadline, from its call
  uint32_t threads = 2;                          // worker threads running batches
  size_t known_capacity = 1 << 20;               // keys remembered as published or seen
};

class RemoteTier final : public StorageTier {
 public:
  using Clock = RedisCluster::Clock;

  // Connects to the cluster (see RedisCluster::Connect for the errors).
  static absl::StatusOr<std::unique_ptr<RemoteTier>> Open(RemoteTierConfig config);
  ~RemoteTier();  // drains
  RemoteTier(const RemoteTier&) = delete;
  RemoteTier& operator=(const RemoteTier&) = delete;

  // How many of `keys`, from the first, exist in the store (stops at the first that does not,
  // or that the store could not answer for by `deadline`). *timed_out: the deadline cut it short.
  uint32_t ExistsPrefix(std::span<const BlockKey> keys, Clock::time_point deadline,
                        bool* timed_out);

  struct Read {
    BlockKey key;
    void* dst = nullptr;  // block_bytes of payload land here, only once verified
  };
  // Reads every block (one pipelined batch) and calls done(i, status) for each: OK (dst holds
  // the verified payload), kNotFound (no value), kDataLoss (it failed to verify; dst undefined),
  // or the store's error. `before` runs first on the worker (waiting for dst to be free).
  void ReadAsync(std::vector<Read> reads, std::function<void()> before,
                 std::function<void(size_t, const absl::Status&)> done);

  struct Write {
    BlockKey key;
    BlockKey parent;
    const void* src = nullptr;  // block_bytes of payload, readable until done runs
  };
  // Publishes the blocks this tier does not already know to be there (one pipelined batch; each
  // payload is sent from `src` itself, not copied), then calls done() once: the sources may be
  // reused from then on.
  void WriteAsync(std::vector<Write> writes, std::function<void()> done);

  // StorageTier: ReadAsync and WriteAsync for a batch. A write's done reports OK whatever the
  // store answered: publication is best effort, and failures are counted (write_errors).
  NotStarted ReadBlocks(std::vector<Block> blocks, Done done) override;
  NotStarted WriteBlocks(std::vector<Block> blocks, Done done) override;
  // ExistsPrefix within config.match_budget; the blocks found count as hits.
  uint32_t FindPrefix(std::span<const BlockKey> keys) override;

  // Waits until every job queued so far has ended (its callback run).
  void Drain() override;

  // The store key of a block.
  std::string StoreKey(const BlockKey& key) const;
  // Adds this tier's counters and latencies to `stats`.
  void FillStats(CacheStats* stats) const override;
  RedisCluster& cluster() { return *cluster_; }

 private:
  RemoteTier(RemoteTierConfig config, std::unique_ptr<RedisCluster> cluster);
  void Submit(std::function<void()> job);
  void WorkerLoop();
  bool Known(const BlockKey& key);
  void Remember(const BlockKey& key);
  void Forget(const BlockKey& key);

  const RemoteTierConfig config_;
  const std::string prefix_;  // "kvtier:<namespace>:"
  std::unique_ptr<RedisCluster> cluster_;

  Mutex mu_;
  CondVar cv_;  // jobs queued, or a job ended
  std::deque<std::function<void()>> jobs_ ABSL_GUARDED_BY(mu_);
  uint64_t running_ ABSL_GUARDED_BY(mu_) = 0;
  bool stop_ ABSL_GUARDED_BY(mu_) = false;
  std::vector<std::thread> workers_;

  Mutex known_mu_;
  absl::flat_hash_set<BlockKey> known_ ABSL_GUARDED_BY(known_mu_);
  std::deque<BlockKey> known_order_ ABSL_GUARDED_BY(known_mu_);  // oldest first, for the bound

  std::atomic<uint64_t> hits_{0}, lookups_{0}, lookup_timeouts_{0}, reads_{0}, read_misses_{0},
      corrupt_reads_{0}, read_errors_{0}, writes_{0}, write_errors_{0}, writes_skipped_{0},
      bytes_read_{0}, bytes_written_{0};
  AtomicHistogram read_latency_, write_latency_;
};

}  // namespace kvtier::internal

#endif  // KVTIER_LIB_TIERS_REMOTE_TIER_H_
