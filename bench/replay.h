// Replay: drives a parsed request trace through kvtier, for kvtier-replay and its tests.
//
// Two modes:
//  - kCache: every request goes through a real kvtier::Cache (index, tiers, policies, prefix rule)
//    as an engine would drive it: Match(keys), AllocateDevice(n), Load, Commit, Release. A block
//    is a hit when Load hands it to the request (the served prefix: what the engine need not
//    recompute). Requests longer than the device tier are capped: only their first
//    `device_blocks` blocks are looked up and cached, the rest count as misses (`capped_blocks`).
//    Metadata-only by default (DeviceBackend::kMetadataOnly: no byte moves); with `payload`, the
//    emulated device and host pool hold and copy real bytes (and a disk tier writes files).
//    With a remote tier (`remote.nodes`, payload only) `replicas` Caches, each with the tiers
//    above, share one Redis Cluster: request i goes to replica i % replicas, a block computed by
//    one replica is published and another may load it from the store. Every computed block is
//    then filled with a pattern derived from its key and every loaded block is checked against it
//    (`mismatched_bytes`).
//  - kFlat: the reference simulation of libCacheSim: one tier of unit-size blocks, one lookup per
//    block access, a hit if resident (EvictionPolicy::OnAccess), else an insert that first evicts
//    the policy's victim (PickVictim with an always-true predicate, OnRemove, OnInsert). Same
//    registered EvictionPolicy objects as the cache, no prefix rule, no pins, no links.
//
// Thread safety: Replay() may run concurrently on distinct configs (each builds its own cache).
// Errors: kInvalidArgument for a bad config (zero capacity, shape not divisible, unknown mode,
//   replicas > 1 without a remote tier, a remote tier without payload),
//   kNotFound for an unknown policy (listing the registered ones), kResourceExhausted when payload
//   memory would not fit, kInternal when a policy breaks the call protocol (returns a slot it was
//   not given), kDeadlineExceeded past time_limit_seconds, or the cache's own error.
#ifndef KVTIER_BENCH_REPLAY_H_
#define KVTIER_BENCH_REPLAY_H_

#include <array>
#include <cstdint>
#include <functional>
#include <span>
#include <string>
#include <utility>
#include <vector>

#include "absl/status/statusor.h"
#include "bench/trace.h"
#include "kvtier/block_key.h"
#include "kvtier/cache.h"
#include "kvtier/options.h"
#include "kvtier/policy.h"

namespace kvtier::replay {

enum class Mode { kFlat, kCache };
const char* ModeName(Mode mode);

// The model's KV block, for byte accounting and payload mode. The default is Llama-3.1-8B in fp16
// (32 layers, 8 KV heads of dim 128, K and V) at the Mooncake traces' 512 tokens per block.
struct BlockShape {
  uint32_t tokens_per_block = 512;
  uint32_t layers = 32;
  uint64_t block_bytes = uint64_t{512} * 32 * 2 * 8 * 128 * 2;  // 64 MiB; a multiple of 2*layers
};

struct ReplayConfig {
  Mode mode = Mode::kCache;
  std::string policy = "lru";  // every tier's policy (a registered name)
  PolicyParams policy_params;
  uint32_t device_blocks = 0;  // required: the device tier (kFlat: the only tier)
  uint32_t host_blocks = 0;    // kCache: 0 = no host tier
  uint32_t disk_blocks = 0;    // kCache: 0 = no disk tier; needs a host tier
  bool payload = false;        // kCache: move real bytes (full mode) instead of metadata only
  std::string disk_directory;  // payload with a disk tier: an existing directory (reset if foreign)
  bool demote_on_evict = true;      // Options.demote_on_evict
  bool host_write_through = false;  // Options.host_write_through
  BlockShape shape;
  // Called from the replaying thread about every 0.25 s with the requests done so far.
  std::function<void(uint64_t requests_done)> progress;
  // > 0: a run still replaying after this many seconds stops with kDeadlineExceeded (a policy
  // whose victim search degenerates must not stall a sweep). Checked every 64 requests.
  double time_limit_seconds = 0;
  // kCache: caches replaying the trace, requests assigned round-robin; > 1 needs a remote tier
  // (what they share) and payload.
  uint32_t replicas = 1;
  // kCache with payload: the remote tier every replica's cache uses (Options.remote); nodes empty:
  // none. Use a scope of the run's own, or blocks of an earlier run are hits.
  RemoteTierOptions remote;
  // kCache: Options.host.codec ("none", "fp8_e4m3", "int8", "int4") and its group size. With a
  // codec the blocks are fp16 with K and V segments (Segment.role), and host and disk keep their
  // byte capacities, so they hold more (smaller) blocks: hit ratios at equal bytes.
  std::string codec = "none";
  uint32_t codec_group_size = 64;
  // kCache: (path, text) pairs set on every cache's Options after the fields above, in order, by
  // the shared option table (lib/options_fields.h; kvtier-replay --option PATH=VALUE). A bad path
  // or value fails the replay with kInvalidArgument naming the path.
  std::vector<std::pair<std::string, std::string>> options;
};

// One replica's share of a multi-replica (or remote-tier) replay.
struct ReplicaReplayStats {
  uint64_t requests = 0;
  uint64_t block_accesses = 0;     // blocks of its requests
  uint64_t blocks_queried = 0;     // keys it passed to Match() (requests capped at the device tier)
  uint64_t hit_blocks = 0;         // blocks Load() served (the usable prefix, any tier)
  uint64_t remote_hit_blocks = 0;  // of which: Match found them only in the remote tier
  // Of which: the replay saw another replica publish the block first (it computed and committed
  // it before anyone else did): what sharing the store bought this replica.
  uint64_t cross_replica_hit_blocks = 0;
  uint64_t published_blocks = 0;  // blocks it computed and committed first (their publisher)
  RemoteStats remote;             // its cache's remote-tier counters at the end of the replay

  double prefix_hit_ratio() const { return Ratio(hit_blocks, block_accesses); }
  double remote_hit_ratio() const { return Ratio(remote_hit_blocks, blocks_queried); }
  double cross_replica_hit_ratio() const { return Ratio(cross_replica_hit_blocks, blocks_queried); }

 private:
  static double Ratio(uint64_t a, uint64_t b) {
    return b == 0 ? 0.0 : static_cast<double>(a) / static_cast<double>(b);
  }
};

struct TierReplayStats {
  uint64_t capacity_blocks = 0;
  uint64_t hits = 0;  // blocks served from this tier (highest tier holding them at Match)
  uint64_t inserts = 0;
  uint64_t evictions = 0;
  uint64_t drops = 0;  // evictions that left the block in no tier
};

struct ReplayResult {
  std::string policy;
  Mode mode = Mode::kCache;
  bool payload = false;
  uint64_t requests = 0;
  uint64_t block_accesses = 0;
  // kFlat: accesses that found the block resident. kCache: blocks Load() served (the usable
  // prefix, from any tier), i.e. blocks not recomputed.
  uint64_t hit_blocks = 0;
  // Hits whose every earlier block of the same request also hit: what an engine can reuse. kCache:
  // equal to hit_blocks (Match stops at the first miss).
  uint64_t prefix_hit_blocks = 0;
  uint64_t matched_blocks = 0;  // kCache: Match()'s prefix (served ones + ones lost before Load)
  uint64_t capped_blocks = 0;   // kCache: blocks of requests longer than the device tier
  std::array<TierReplayStats, kNumTiers> tiers;  // kFlat: only [kDevice]
  double request_prefix_ratio_sum = 0;  // Σ over requests with blocks of prefix hits / blocks
  uint64_t requests_with_blocks = 0;
  uint64_t input_tokens = 0;        // Σ input_length
  uint64_t prefix_hit_tokens = 0;   // Σ min(prefix hits * tokens_per_block, input_length)
  uint64_t bytes_h2d = 0;           // host -> device (promotions)
  uint64_t bytes_d2h = 0;           // device -> host (write-back, write-through)
  uint64_t bytes_disk_written = 0;  // host -> disk
  uint64_t bytes_disk_read = 0;     // disk -> host
  double seconds = 0;               // the replay loop alone (no parsing, no cache creation)
  // kCache with a remote tier: one entry per replica (the fields above sum them; tiers[] capacity
  // included). Empty otherwise.
  std::vector<ReplicaReplayStats> replicas;
  ReplicaReplayStats remote_total;  // the replicas' figures summed
  uint64_t mismatched_bytes = 0;    // with a remote tier: loaded bytes that differ from the pattern

  double hit_ratio() const { return Ratio(hit_blocks, block_accesses); }
  double prefix_hit_ratio() const { return Ratio(prefix_hit_blocks, block_accesses); }
  double tier_hit_ratio(Tier t) const {
    return Ratio(tiers[static_cast<int>(t)].hits, block_accesses);
  }
  // Mean over requests of the fraction of their input blocks served without recompute.
  double mean_request_prefix_ratio() const {
    return requests_with_blocks == 0 ? 0.0 : request_prefix_ratio_sum / requests_with_blocks;
  }
  double token_hit_ratio() const { return Ratio(prefix_hit_tokens, input_tokens); }
  double accesses_per_second() const { return seconds > 0 ? block_accesses / seconds : 0.0; }

 private:
  static double Ratio(uint64_t a, uint64_t b) {
    return b == 0 ? 0.0 : static_cast<double>(a) / static_cast<double>(b);
  }
};

// The BlockKey of every block access of `trace` (parallel to trace.blocks): the key of the block
// with hash id h after parent key p is BlockHasher().Chain(p, {h as one 32-bit "token"}), using the
// trace's dense id, so keys chain as prefixes do. O(accesses); computed once per distinct prefix.
std::vector<BlockKey> ChainKeys(const Trace& trace);

// Replays `trace` under `config`. kCache uses `keys` (from ChainKeys; computed here when empty).
absl::StatusOr<ReplayResult> Replay(const Trace& trace, const ReplayConfig& config,
                                    std::span<const BlockKey> keys = {});

}  // namespace kvtier::replay

#endif  // KVTIER_BENCH_REPLAY_H_
