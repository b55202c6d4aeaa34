// Index benchmarks: the cost of kvtier's metadata path per block, against a raw absl::flat_hash_map
// doing the equivalent lookups and inserts, in the same binary and run.
//
// BM_MatchCommit: a cache warmed with 1,048,576 blocks (65,536 chains of 16) on a device tier of
// exactly that many slots (tiny blocks: the bytes are not what is measured). One iteration is one
// request of 16 blocks, the engine lifecycle: Match (8 cached prefix blocks from a pool of 4,096
// hot prefixes, then 8 new ones: 9 lookups), AllocateDevice(16) (the device is full: 16 LRU
// evictions), Load (shares the 8 cached blocks, returns 8 slots), Commit (8 new blocks), Release.
// BM_FlatHashMapBaseline: the same requests on flat_hash_map<BlockKey, uint32_t>: 9 finds, 8 erases
// of the oldest keys (a FIFO ring stands in for the policy), 8 inserts.
// Items are blocks (16 per request); compare items_per_second.
#include <benchmark/benchmark.h>

#include <cstdint>
#include <deque>
#include <memory>
#include <vector>

#include "absl/container/flat_hash_map.h"
#include "bench/scale_workload.h"
#include "kvtier/cache.h"

namespace {

constexpr uint32_t kChains = 65536;
constexpr uint32_t kChainBlocks = 16;
constexpr uint32_t kWarmBlocks = kChains * kChainBlocks;  // 1,048,576
constexpr uint32_t kHotPrefixes = 4096;
constexpr uint32_t kPrefix = 8;

uint64_t Mix(uint64_t x) {
  x += 0x9E3779B97F4A7C15ULL;
  x = (x ^ (x >> 30)) * 0xBF58476D1CE4E5B9ULL;
  x = (x ^ (x >> 27)) * 0x94D049BB133111EBULL;
  return x ^ (x >> 31);
}
kvtier::BlockKey Key(uint64_t chain, uint64_t block) {
  return {Mix(chain * 1000003 + block), Mix(~(chain * 1000003 + block))};
}

struct Request {
  std::vector<kvtier::BlockKey> keys;  // kPrefix cached + fresh suffix
};
Request MakeRequest(uint64_t i) {
  Request r;
  const uint64_t chain = Mix(i) % kHotPrefixes;
  for (uint32_t b = 0; b < kPrefix; ++b) r.keys.push_back(Key(chain, b));
  for (uint32_t b = kPrefix; b < kChainBlocks; ++b) r.keys.push_back(Key(kChains + i, b));
  return r;
}

void BM_MatchCommit(benchmark::State& state) {
  static std::vector<std::byte> kv(uint64_t{kWarmBlocks} * 16);
  kvtier::BlockLayout layout{.tokens_per_block = 16, .num_slots = kWarmBlocks};
  layout.layers.push_back({.segments = {{kv.data(), 16, 16}}});
  auto cache =
      kvtier::Cache::Create({.layout = layout, .backend = kvtier::DeviceBackend::kEmulated});
  if (!cache.ok()) return state.SkipWithError(cache.status().ToString().c_str());
  for (uint32_t c = 0; c < kChains; ++c) {
    std::vector<kvtier::BlockKey> keys;
    for (uint32_t b = 0; b < kChainBlocks; ++b) keys.push_back(Key(c, b));
    auto lease = (*cache)->AllocateDevice(kChainBlocks);
    if (!lease.ok() || !(*cache)->Commit(keys, *lease).ok()) {
      return state.SkipWithError("warm-up failed");
    }
  }
  uint64_t i = 0;
  uint64_t hits = 0;
  for (auto _ : state) {
    const Request r = MakeRequest(i++);
    auto match = (*cache)->Match(r.keys);
    auto lease = (*cache)->AllocateDevice(kChainBlocks);
    if (!match.ok() || !lease.ok()) return state.SkipWithError("match/allocate failed");
    auto xfer = (*cache)->Load(*match, *lease);
    if (!xfer.ok() || !(*cache)->Commit(r.keys, *lease).ok()) {
      return state.SkipWithError("load/commit failed");
    }
    hits += match->size();
  }
  state.SetItemsProcessed(static_cast<int64_t>(state.iterations()) * kChainBlocks);
  state.counters["matched_per_request"] =
      static_cast<double>(hits) / static_cast<double>(state.iterations());
}
BENCHMARK(BM_MatchCommit)->Unit(benchmark::kMicrosecond);

void BM_FlatHashMapBaseline(benchmark::State& state) {
  absl::flat_hash_map<kvtier::BlockKey, uint32_t> map;
  map.reserve(kWarmBlocks);
  std::deque<kvtier::BlockKey> fifo;  // oldest first, like the cache's LRU tail
  for (uint32_t c = 0; c < kChains; ++c) {
    for (uint32_t b = 0; b < kChainBlocks; ++b) {
      map.emplace(Key(c, b), c * kChainBlocks + b);
      if (b >= kPrefix || c >= kHotPrefixes) fifo.push_back(Key(c, b));
    }
  }
  uint64_t i = 0;
  uint64_t hits = 0;
  for (auto _ : state) {
    const Request r = MakeRequest(i++);
    for (const kvtier::BlockKey& k : r.keys) {  // lookups up to the first miss
      auto it = map.find(k);
      if (it == map.end()) break;
      benchmark::DoNotOptimize(it->second);
      hits++;
    }
    for (uint32_t b = kPrefix; b < kChainBlocks; ++b) {  // make room, insert the new blocks
      map.erase(fifo.front());
      fifo.pop_front();
      map.emplace(r.keys[b], static_cast<uint32_t>(i));
      fifo.push_back(r.keys[b]);
    }
  }
  state.SetItemsProcessed(static_cast<int64_t>(state.iterations()) * kChainBlocks);
  state.counters["matched_per_request"] =
      static_cast<double>(hits) / static_cast<double>(state.iterations());
}
BENCHMARK(BM_FlatHashMapBaseline)->Unit(benchmark::kMicrosecond);

// BM_Scale/<slots>: the whole lifecycle (Match, AllocateDevice, Load, Commit, Hint, Stats,
// Release) of 16-block requests on device + host + disk tiers of <slots> slots each, metadata only
// (bench/scale_workload.h). Per-request cost must not grow with capacity: compare the time per
// request across the arguments within one run (goal: 4 Mi <= 2x 16 Ki).
void BM_Scale(benchmark::State& state) {
  auto w = kvtier::bench::ScaleWorkload::Create(static_cast<uint32_t>(state.range(0)));
  if (!w.ok()) return state.SkipWithError(w.status().ToString().c_str());
  if (absl::Status s = (*w)->WarmUp(); !s.ok()) return state.SkipWithError(s.ToString().c_str());
  const kvtier::CacheStats before = (*w)->cache().Stats();
  uint64_t matched = 0;
  for (auto _ : state) {
    uint32_t m = 0;
    if (absl::Status s = (*w)->Request(&m); !s.ok()) {
      return state.SkipWithError(s.ToString().c_str());
    }
    matched += m;
  }
  const kvtier::CacheStats after = (*w)->cache().Stats();
  const auto n = static_cast<double>(state.iterations());
  state.SetItemsProcessed(static_cast<int64_t>(state.iterations()) *
                          kvtier::bench::ScaleWorkload::kBlocks);
  state.counters["matched_per_request"] = static_cast<double>(matched) / n;
  state.counters["index_work_per_request"] =
      static_cast<double>(after.index_work - before.index_work) / n;
}
BENCHMARK(BM_Scale)->Arg(16 << 10)->Arg(256 << 10)->Arg(1 << 20)->Arg(4 << 20)->Unit(
    benchmark::kMicrosecond);

// Hashing a block of 16 tokens into a chained key, against XXH3-128 of the same 64 bytes.
void BM_BlockHasherChain(benchmark::State& state) {
  const kvtier::BlockHasher hasher({.model_id = "bench"});
  std::vector<int32_t> tokens(static_cast<size_t>(state.range(0)));
  for (size_t i = 0; i < tokens.size(); ++i) tokens[i] = static_cast<int32_t>(i * 7919);
  kvtier::BlockKey parent;
  for (auto _ : state) {
    parent = hasher.Chain(parent, tokens);
    benchmark::DoNotOptimize(parent);
  }
  state.SetBytesProcessed(static_cast<int64_t>(state.iterations() * tokens.size() * 4));
}
BENCHMARK(BM_BlockHasherChain)->Arg(16)->Arg(512);

}  // namespace

BENCHMARK_MAIN();
