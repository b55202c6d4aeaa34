// Replay of a trace through a flat single-tier simulation or through a real kvtier::Cache.
//
// The flat mode is the yardstick for the policies themselves: it must agree with libCacheSim
// (docs/policies.md), so it does exactly what libCacheSim's cachesim does per request and nothing
// more. Its per-block state is in vectors indexed by the trace's dense ids, so the only costs left
// are the policy's own (one virtual call per access).
//
// The cache mode measures what an engine would see: prefix-stopping Match, the leaf-first prefix
// rule, tiers and write-back. It is bounded by the cache's per-call lock and index hashing; the
// keys are precomputed (ChainKeys) so hashing token ids is not part of the measurement.
#include "bench/replay.h"

#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <memory>
#include <utility>

#include "absl/container/flat_hash_map.h"
#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "lib/options_fields.h"

namespace kvtier::replay {
namespace {

using Clock = std::chrono::steady_clock;
constexpr SlotId kNoSlot = UINT32_MAX;

// Calls `progress` about every 0.25 s and enforces the time limit; checks the clock every 64
// requests only.
class ProgressTicker {
 public:
  explicit ProgressTicker(const ReplayConfig& config)
      : progress_(config.progress), limit_seconds_(config.time_limit_seconds) {}
  absl::Status Tick(uint64_t requests_done, const TraceRequest& last) {
    if ((!progress_ && limit_seconds_ <= 0) || (requests_done & 63) != 0) return absl::OkStatus();
    const Clock::time_point now = Clock::now();
    if (limit_seconds_ > 0 &&
        std::chrono::duration<double>(now - start_).count() > limit_seconds_) {
      return absl::DeadlineExceededError(absl::StrCat("Replay: stopped after ", limit_seconds_,
                                                      " s (the time limit), ", requests_done,
                                                      " requests in (trace line ", last.line, ")"));
    }
    if (progress_ && now >= next_) {
      next_ = now + std::chrono::milliseconds(250);
      progress_(requests_done);
    }
    return absl::OkStatus();
  }

 private:
  const std::function<void(uint64_t)>& progress_;
  const double limit_seconds_;
  const Clock::time_point start_ = Clock::now();
  Clock::time_point next_ = start_ + std::chrono::milliseconds(250);
};

double Seconds(Clock::time_point start) {
  return std::chrono::duration<double>(Clock::now() - start).count();
}

// The key-aware hook a policy may offer (see include/kvtier/policy.h): called before OnInsert with
// a stable id of the block, so that ghost lists can recognise a block that comes back. Compiled in
// only when the interface has it.
template <typename P>
void InsertKeyHook(P& policy, SlotId slot, uint64_t block_id) {
  if constexpr (requires { policy.OnInsertKey(slot, block_id); }) {
    policy.OnInsertKey(slot, block_id);
  } else {
    (void)policy;
    (void)slot;
    (void)block_id;
  }
}

void AddRequestRatios(const TraceRequest& r, uint32_t prefix_hits, const BlockShape& shape,
                      ReplayResult* out) {
  out->input_tokens += r.input_tokens;
  out->prefix_hit_tokens +=
      std::min<uint64_t>(uint64_t{prefix_hits} * shape.tokens_per_block, r.input_tokens);
  if (r.num_blocks > 0) {
    out->requests_with_blocks++;
    out->request_prefix_ratio_sum += static_cast<double>(prefix_hits) / r.num_blocks;
  }
}

absl::StatusOr<ReplayResult> ReplayFlat(const Trace& trace, const ReplayConfig& config) {
  const uint32_t capacity = config.device_blocks;
  auto created =
      CreatePolicy(config.policy, {.capacity_slots = capacity, .params = config.policy_params});
  if (!created.ok()) return created.status();
  EvictionPolicy& policy = **created;
  ReplayResult out{.policy = config.policy, .mode = Mode::kFlat};
  out.tiers[0].capacity_blocks = capacity;
  std::vector<SlotId> slot_of(trace.unique_blocks(), kNoSlot);  // dense id -> slot
  std::vector<uint32_t> id_of(capacity, 0);                     // slot -> dense id
  uint32_t used = 0;
  uint64_t hits = 0, prefix_hits = 0, evictions = 0;
  ProgressTicker ticker(config);
  const auto always = [](SlotId) { return true; };

  const Clock::time_point start = Clock::now();
  for (size_t ri = 0; ri < trace.requests.size(); ++ri) {
    const TraceRequest& r = trace.requests[ri];
    bool prefix_alive = true;
    uint32_t request_prefix = 0;
    for (const uint32_t id : trace.BlocksOf(r)) {
      SlotId s = slot_of[id];
      if (s != kNoSlot) {
        hits++;
        request_prefix += prefix_alive;
        policy.OnAccess(s);
        continue;
      }
      prefix_alive = false;
      policy.OnMissKey(id);
      if (used < capacity) {
        s = used++;
      } else {
        const std::optional<SlotId> victim = policy.PickVictim(always);
        if (!victim || *victim >= capacity || slot_of[id_of[*victim]] != *victim) {
          return absl::InternalError(absl::StrCat(
              "Replay: policy '", config.policy, "' returned ",
              victim ? absl::StrCat("slot ", *victim) : std::string("no victim"),
              " from a full tier of ", capacity, " unpinned blocks (request line ", r.line, ")"));
        }
        s = *victim;
        policy.OnRemove(s);
        slot_of[id_of[s]] = kNoSlot;
        evictions++;
      }
      slot_of[id] = s;
      id_of[s] = id;
      InsertKeyHook(policy, s, id);
      policy.OnInsert(s);
    }
    prefix_hits += request_prefix;
    AddRequestRatios(r, request_prefix, config.shape, &out);
    if (absl::Status s = ticker.Tick(ri + 1, r); !s.ok()) return s;
  }
  out.seconds = Seconds(start);
  out.requests = trace.requests.size();
  out.block_accesses = trace.block_accesses();
  out.hit_blocks = hits;
  out.prefix_hit_blocks = prefix_hits;
  out.tiers[0].hits = hits;
  out.tiers[0].inserts = out.block_accesses - hits;
  out.tiers[0].evictions = evictions;
  out.tiers[0].drops = evictions;
  return out;
}

// Device memory for payload mode: one buffer, segment (layer, K|V) after segment.
struct DeviceMemory {
  std::unique_ptr<uint8_t[]> bytes;
};

absl::StatusOr<Options> CacheOptions(const ReplayConfig& config, DeviceMemory* memory,
                                     const std::string& disk_dir) {
  const BlockShape& shape = config.shape;
  const uint64_t segments = uint64_t{2} * shape.layers;
  if (shape.layers == 0 || shape.block_bytes == 0 || shape.block_bytes % segments != 0) {
    return absl::InvalidArgumentError(absl::StrCat(
        "Replay: block_bytes=", shape.block_bytes,
        " must be a positive multiple of 2*layers=", segments, " (K and V per layer)"));
  }
  const uint64_t segment_bytes = shape.block_bytes / segments;
  if (config.payload) {
    const uint64_t need = (uint64_t{config.device_blocks} + config.host_blocks) *
                          shape.block_bytes * std::max<uint32_t>(1, config.replicas);
    const uint64_t physical = static_cast<uint64_t>(sysconf(_SC_PHYS_PAGES)) *
                              static_cast<uint64_t>(sysconf(_SC_PAGESIZE));
    if (need > physical / 10 * 8) {
      return absl::ResourceExhaustedError(absl::StrCat(
          "Replay: payload mode needs ", need >> 20, " MiB ((device ", config.device_blocks,
          " + host ", config.host_blocks, " blocks) x ", shape.block_bytes, " bytes x ",
          std::max<uint32_t>(1, config.replicas), " replicas) vs 80% of ", physical >> 20,
          " MiB of memory; use a smaller block size"));
    }
    memory->bytes.reset(new uint8_t[config.device_blocks * shape.block_bytes]);
  }
  BlockLayout layout{.tokens_per_block = shape.tokens_per_block, .num_slots = config.device_blocks};
  for (uint32_t l = 0; l < shape.layers; ++l) {
    LayerLayout layer;
    for (uint32_t kv = 0; kv < 2; ++kv) {
      void* base = nullptr;
      if (config.payload) {
        base = memory->bytes.get() + (uint64_t{l} * 2 + kv) * config.device_blocks * segment_bytes;
      }
      layer.segments.push_back({.base = base,
                                .bytes_per_block = segment_bytes,
                                .stride_bytes = segment_bytes,
                                .role = kv == 0 ? SegmentRole::kKey : SegmentRole::kValue});
    }
    layout.layers.push_back(std::move(layer));
  }
  // A disk slot is the block rounded up to the file system's alignment plus one aligned trailer:
  // size the files for the worst case (4 KiB), so at least disk_blocks slots fit. With a disk tier
  // a host slot has the same footprint (host.capacity_bytes caps it), so the host is sized alike.
  constexpr uint64_t kAlign = 4096;
  const uint64_t slot = config.payload && config.disk_blocks > 0
                            ? (shape.block_bytes + kAlign - 1) / kAlign * kAlign + kAlign
                            : shape.block_bytes;
  // Assigned one by one, not designated: GCC 12 at -O3 warns that members a designated initializer
  // skips (disk, shard, events, ...) "may be used uninitialized" (a false positive, -Werror).
  Options options;
  options.layout = std::move(layout);
  options.backend = config.payload ? DeviceBackend::kEmulated : DeviceBackend::kMetadataOnly;
  options.device.capacity_slots = config.device_blocks;
  options.device.policy = config.policy;
  options.device.policy_params = config.policy_params;
  options.host.capacity_bytes = uint64_t{config.host_blocks} * slot;
  options.host.policy = config.policy;
  options.host.policy_params = config.policy_params;
  options.demote_on_evict = config.demote_on_evict;
  options.host_write_through = config.host_write_through;
  options.remote = config.remote;
  if (config.codec != "none") {  // the same bytes of host and disk hold more encoded blocks
    options.host.codec = config.codec;
    options.host.codec_group_size = config.codec_group_size;
    options.shard.dtype = "float16";
  }
  if (config.disk_blocks > 0) {
    options.disk = {.directory = config.payload ? disk_dir : "(metadata-only: no files)",
                    .capacity_bytes = uint64_t{config.disk_blocks} * slot,
                    .policy = config.policy,
                    .policy_params = config.policy_params,
                    .reset_on_mismatch = true,
                    .allow_buffered = true,
                    .flush_on_close = false};
  }
  for (const auto& [path, value] : config.options) {
    if (absl::Status s = internal::SetOption(options, path, value); !s.ok()) return s;
  }
  return options;
}

// A fresh directory for one payload replay's disk tier, removed afterwards: a replay starts cold.
class ScratchDir {
 public:
  ~ScratchDir() {
    if (!path_.empty()) {
      std::error_code ec;
      std::filesystem::remove_all(path_, ec);
    }
  }
  absl::Status Create(const std::string& parent) {
    std::string tmpl = parent + "/kvtier-replay-XXXXXX";
    if (mkdtemp(tmpl.data()) == nullptr) {
      return absl::ErrnoToStatus(errno, absl::StrCat("Replay: mkdtemp in ", parent));
    }
    path_ = tmpl;
    return absl::OkStatus();
  }
  const std::string& path() const { return path_; }

 private:
  std::string path_;
};

// Word `w` of segment `segment` (layer * 2 + K|V) of the block named `key`: what a replica of a
// remote replay "computes", so that a replica loading the block can check every byte.
uint64_t PatternWord(const BlockKey& key, uint64_t segment, uint64_t w) {
  uint64_t x =
      key.hi ^ (key.lo + 0x9E3779B97F4A7C15ULL * (segment + 1)) ^ (w * 0xD6E8FEB86659FD93ULL);
  x ^= x >> 31;
  x *= 0xBF58476D1CE4E5B9ULL;
  x ^= x >> 29;
  return x;
}

// Writes `key`'s pattern into device slot `slot` of payload memory (every segment), or, with
// `check`, compares the slot with it instead: returns the bytes that differ.
uint64_t PatternSlot(uint8_t* memory, const ReplayConfig& config, uint32_t slot,
                     const BlockKey& key, bool check) {
  const uint64_t segments = uint64_t{2} * config.shape.layers;
  const uint64_t segment_bytes = config.shape.block_bytes / segments;
  uint64_t mismatched = 0;
  for (uint64_t seg = 0; seg < segments; ++seg) {
    uint8_t* p = memory + (seg * config.device_blocks + slot) * segment_bytes;
    for (uint64_t off = 0; off < segment_bytes; off += 8) {
      const uint64_t want = PatternWord(key, seg, off / 8);
      const size_t len = std::min<uint64_t>(8, segment_bytes - off);
      if (!check) {
        std::memcpy(p + off, &want, len);
        continue;
      }
      uint64_t have = want;
      std::memcpy(&have, p + off, len);
      for (uint64_t d = have ^ want; d != 0; d >>= 8) mismatched += (d & 0xff) != 0;
    }
  }
  return mismatched;
}

void AddRemoteStats(const RemoteStats& a, RemoteStats* sum) {
  sum->hits += a.hits;
  sum->lookups += a.lookups;
  sum->lookup_timeouts += a.lookup_timeouts;
  sum->reads += a.reads;
  sum->read_misses += a.read_misses;
  sum->corrupt_reads += a.corrupt_reads;
  sum->read_errors += a.read_errors;
  sum->writes += a.writes;
  sum->write_errors += a.write_errors;
  sum->writes_skipped += a.writes_skipped;
  sum->bytes_read += a.bytes_read;
  sum->bytes_written += a.bytes_written;
  sum->redirects += a.redirects;
  sum->connects += a.connects;
}

// One cache of the replay. Members in destruction order reversed: the cache goes first (its copy
// thread writes into `memory`), the disk directory last.
struct Replica {
  ScratchDir scratch;
  DeviceMemory memory;
  std::unique_ptr<Cache> cache;
  ReplicaReplayStats stats;
};

absl::StatusOr<ReplayResult> ReplayCache(const Trace& trace, const ReplayConfig& config,
                                         std::span<const BlockKey> keys) {
  if (keys.size() != trace.blocks.size()) {
    return absl::InvalidArgumentError(
        absl::StrCat("Replay: ", keys.size(), " keys vs ", trace.blocks.size(), " block accesses"));
  }
  if (config.disk_blocks > 0 && config.host_blocks == 0) {
    return absl::InvalidArgumentError("Replay: a disk tier needs a host tier (host_blocks > 0)");
  }
  const bool remote = !config.remote.nodes.empty();
  std::vector<std::unique_ptr<Replica>> replicas;
  for (uint32_t i = 0; i < config.replicas; ++i) {
    auto replica = std::make_unique<Replica>();
    if (config.payload && config.disk_blocks > 0) {
      if (config.disk_directory.empty()) {
        return absl::InvalidArgumentError(
            "Replay: payload mode with a disk tier needs a directory");
      }
      if (absl::Status s = replica->scratch.Create(config.disk_directory); !s.ok()) return s;
    }
    absl::StatusOr<Options> options =
        CacheOptions(config, &replica->memory, replica->scratch.path());
    if (!options.ok()) return options.status();
    absl::StatusOr<std::unique_ptr<Cache>> created = Cache::Create(*options);
    if (!created.ok()) return created.status();
    replica->cache = *std::move(created);
    replicas.push_back(std::move(replica));
  }

  ReplayResult out{.policy = config.policy, .mode = Mode::kCache, .payload = config.payload};
  const uint32_t cap = config.device_blocks;
  // With a remote tier: the replica that first computed and committed each block (published it).
  absl::flat_hash_map<BlockKey, uint32_t> publisher;
  ProgressTicker ticker(config);
  auto fail = [&](const TraceRequest& r, const absl::Status& s) {
    return absl::Status(s.code(),
                        absl::StrCat("Replay: request at line ", r.line, ": ", s.message()));
  };
  const Clock::time_point start = Clock::now();
  for (size_t ri = 0; ri < trace.requests.size(); ++ri) {
    const TraceRequest& r = trace.requests[ri];
    const auto who = static_cast<uint32_t>(ri % replicas.size());
    Replica& replica = *replicas[who];
    Cache& cache = *replica.cache;
    const uint32_t n = std::min(r.num_blocks, cap);
    out.capped_blocks += r.num_blocks - n;
    uint32_t served = 0;
    if (n > 0) {
      const std::span<const BlockKey> request_keys = keys.subspan(r.first_block, n);
      absl::StatusOr<MatchResult> match = cache.Match(request_keys);
      if (!match.ok()) return fail(r, match.status());
      absl::StatusOr<DeviceLease> lease = cache.AllocateDevice(n);
      if (!lease.ok()) return fail(r, lease.status());
      absl::StatusOr<Transfer> xfer = cache.Load(*match, *lease);
      if (!xfer.ok()) return fail(r, xfer.status());
      // An engine waits for the copies before attention: a failed copy is a miss (recompute).
      served = config.payload && !xfer->Wait().ok() ? 0 : xfer->blocks();
      out.matched_blocks += match->size();
      for (uint32_t i = 0; i < served; ++i) {
        const Tier tier = match->tiers[i];
        if (tier != Tier::kRemote) {
          out.tiers[static_cast<int>(tier)].hits++;
          continue;
        }
        replica.stats.remote_hit_blocks++;
        const auto it = publisher.find(request_keys[i]);
        replica.stats.cross_replica_hit_blocks += it != publisher.end() && it->second != who;
      }
      if (remote) {
        // Attention reads what was loaded; prefill writes the rest (rewriting a block shared
        // from the device after a failed load writes the same bytes again).
        const std::span<const uint32_t> slots = lease->slots();
        for (uint32_t i = 0; i < n; ++i) {
          out.mismatched_bytes += PatternSlot(replica.memory.bytes.get(), config, slots[i],
                                              request_keys[i], /*check=*/i < served);
        }
      }
      if (absl::Status s = cache.Commit(request_keys, *lease); !s.ok()) return fail(r, s);
      if (absl::Status s = cache.Release(*lease); !s.ok()) return fail(r, s);
      if (remote) {
        for (uint32_t i = served; i < n; ++i) {
          replica.stats.published_blocks += publisher.try_emplace(request_keys[i], who).second;
        }
      }
    }
    replica.stats.requests++;
    replica.stats.block_accesses += r.num_blocks;
    replica.stats.blocks_queried += n;
    replica.stats.hit_blocks += served;
    out.hit_blocks += served;
    AddRequestRatios(r, served, config.shape, &out);
    if (absl::Status s = ticker.Tick(ri + 1, r); !s.ok()) return s;
  }
  out.seconds = Seconds(start);
  out.requests = trace.requests.size();
  out.block_accesses = trace.block_accesses();
  out.prefix_hit_blocks = out.hit_blocks;
  for (const std::unique_ptr<Replica>& replica : replicas) {
    const CacheStats stats = replica->cache->Stats();
    const TierStats* tier_stats[kNumTiers] = {&stats.device, &stats.host, &stats.disk};
    for (int t = 0; t < kNumTiers; ++t) {
      out.tiers[t].capacity_blocks += tier_stats[t]->capacity_blocks;
      out.tiers[t].inserts += tier_stats[t]->inserts;
      out.tiers[t].evictions += tier_stats[t]->evictions;
      out.tiers[t].drops += tier_stats[t]->drops;
    }
    out.bytes_h2d += stats.bytes_h2d;
    out.bytes_d2h += stats.bytes_d2h;
    out.bytes_disk_written += stats.bytes_disk_written;
    out.bytes_disk_read += stats.bytes_disk_read;
    if (absl::Status s = replica->cache->CheckInvariants(); !s.ok()) return s;
    if (!remote) continue;
    ReplicaReplayStats& rs = replica->stats;
    rs.remote = stats.remote;
    ReplicaReplayStats& sum = out.remote_total;
    sum.requests += rs.requests;
    sum.block_accesses += rs.block_accesses;
    sum.blocks_queried += rs.blocks_queried;
    sum.hit_blocks += rs.hit_blocks;
    sum.remote_hit_blocks += rs.remote_hit_blocks;
    sum.cross_replica_hit_blocks += rs.cross_replica_hit_blocks;
    sum.published_blocks += rs.published_blocks;
    AddRemoteStats(rs.remote, &sum.remote);
    out.replicas.push_back(rs);
  }
  return out;
}

}  // namespace

const char* ModeName(Mode mode) { return mode == Mode::kFlat ? "flat" : "cache"; }

std::vector<BlockKey> ChainKeys(const Trace& trace) {
  const BlockHasher hasher;
  std::vector<BlockKey> memo(trace.unique_blocks());
  std::vector<uint8_t> known(trace.unique_blocks(), 0);
  std::vector<BlockKey> keys;
  keys.reserve(trace.blocks.size());
  for (const TraceRequest& r : trace.requests) {
    BlockKey parent = kRootKey;
    uint32_t parent_id = Trace::kNoParent;
    bool canonical = true;  // the chain so far is every id's first-seen chain: memo applies
    for (const uint32_t id : trace.BlocksOf(r)) {
      const auto token = static_cast<int32_t>(id);
      canonical = canonical && trace.parent[id] == parent_id;
      BlockKey key;
      if (canonical && known[id]) {
        key = memo[id];
      } else {
        key = hasher.Chain(parent, std::span<const int32_t>(&token, 1));
        if (canonical) {
          memo[id] = key;
          known[id] = 1;
        }
      }
      keys.push_back(key);
      parent = key;
      parent_id = id;
    }
  }
  return keys;
}

absl::StatusOr<ReplayResult> Replay(const Trace& trace, const ReplayConfig& config,
                                    std::span<const BlockKey> keys) {
  if (config.device_blocks == 0) {
    return absl::InvalidArgumentError("Replay: device_blocks must be > 0");
  }
  if (config.replicas == 0) return absl::InvalidArgumentError("Replay: replicas must be > 0");
  if (config.replicas > 1 && config.remote.nodes.empty()) {
    return absl::InvalidArgumentError(
        absl::StrCat("Replay: replicas=", config.replicas,
                     " share nothing without a remote tier (remote.nodes)"));
  }
  if (!config.remote.nodes.empty() && (config.mode != Mode::kCache || !config.payload)) {
    return absl::InvalidArgumentError(
        "Replay: a remote tier needs cache mode with payload (the store holds the blocks' bytes)");
  }
  // Unknown names fail here for both modes, with the registered ones listed.
  if (auto probe =
          CreatePolicy(config.policy, {.capacity_slots = 1, .params = config.policy_params});
      !probe.ok()) {
    return probe.status();
  }
  if (config.mode == Mode::kFlat) return ReplayFlat(trace, config);
  if (!keys.empty()) return ReplayCache(trace, config, keys);
  const std::vector<BlockKey> own = ChainKeys(trace);
  return ReplayCache(trace, config, own);
}

}  // namespace kvtier::replay
