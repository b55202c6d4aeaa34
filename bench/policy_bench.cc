// The cost of each built-in eviction policy per block access, at growing tier sizes: victim search
// must be O(1) or O(log n) amortised (each policy's file says which), so the time per access should
// stay flat as the tier grows 256-fold.
//
// The workload is a cache's, without the cache: requests walk prefix chains (chain c, blocks
// 0..L-1) chosen with a skew; the resident prefix is accessed leaf first (as Cache::Match touches
// it), each missing block is inserted under its parent (OnLink) after a victim is evicted. The
// predicate enforces the prefix rule, the reason victim searches get long: a block with resident
// children may not go. Compare the policies with `lru` within one run, and each with itself across
// sizes; the loop's own bookkeeping (a hash map of resident blocks) is in every figure.
#include <benchmark/benchmark.h>

#include <cstdint>
#include <random>
#include <string>
#include <vector>

#include "absl/container/flat_hash_map.h"
#include "kvtier/policy.h"

namespace kvtier {
namespace {

constexpr uint32_t kChainLen = 16;

struct Workload {
  explicit Workload(uint32_t capacity)
      : slot_parent(capacity, kNone), children(capacity, 0), block_of(capacity, 0) {}
  static constexpr uint32_t kNone = UINT32_MAX;
  absl::flat_hash_map<uint64_t, uint32_t> slot_of;  // block -> slot
  std::vector<uint32_t> slot_parent;                // slot -> parent slot, kNone for roots
  std::vector<uint32_t> children;                   // resident children per slot
  std::vector<uint64_t> block_of;                   // slot -> block
  uint32_t used = 0;
};

void RunPolicy(benchmark::State& state, const std::string& name) {
  const auto capacity = static_cast<uint32_t>(state.range(0));
  auto created = CreatePolicy(name, {.capacity_slots = capacity});
  if (!created.ok()) {
    state.SkipWithError(created.status().ToString().c_str());
    return;
  }
  EvictionPolicy& policy = **created;
  Workload w(capacity);
  w.slot_of.reserve(capacity);
  std::mt19937_64 rng(42);
  // Chains: 4x as many blocks as the tier holds; Zipf-like skew by squaring a uniform draw.
  const uint64_t num_chains = 4ull * capacity / kChainLen + 1;
  std::uniform_real_distribution<double> u(0, 1);
  const auto prefix_rule = [&](SlotId s) { return w.children[s] == 0; };
  uint64_t accesses = 0, misses = 0;
  std::vector<SlotId> hits;
  for (auto _ : state) {
    const uint64_t chain = static_cast<uint64_t>(u(rng) * u(rng) * num_chains);
    const uint32_t len = 1 + static_cast<uint32_t>(rng() % kChainLen);
    uint32_t parent = Workload::kNone;
    uint32_t i = 0;
    hits.clear();
    for (; i < len; ++i, ++accesses) {
      auto it = w.slot_of.find(chain * kChainLen + i);
      if (it == w.slot_of.end()) break;
      hits.push_back(it->second);
      parent = it->second;
    }
    for (auto h = hits.rbegin(); h != hits.rend(); ++h) policy.OnAccess(*h);
    for (; i < len; ++i) {
      const uint64_t block = chain * kChainLen + i;
      accesses++;
      misses++;
      uint32_t s;
      if (w.used < capacity) {
        s = w.used++;
      } else {
        const auto victim = policy.PickVictim(prefix_rule);
        if (!victim) break;  // everything protected: the request stops (never here: leaves exist)
        s = *victim;
        policy.OnRemove(s);
        w.slot_of.erase(w.block_of[s]);
        if (w.slot_parent[s] != Workload::kNone) w.children[w.slot_parent[s]]--;
      }
      // The parent may just have been evicted (it was a leaf): then the block starts a new root.
      const bool parent_alive =
          parent != Workload::kNone && parent != s && w.slot_of.contains(chain * kChainLen + i - 1);
      w.slot_of[block] = s;
      w.block_of[s] = block;
      w.slot_parent[s] = parent_alive ? parent : Workload::kNone;
      w.children[s] = 0;
      policy.OnInsertKey(s, block);
      policy.OnInsert(s);
      if (parent_alive) {
        w.children[parent]++;
        policy.OnLink(s, parent);
      }
      parent = s;
    }
  }
  state.counters["ns_per_access"] = benchmark::Counter(
      static_cast<double>(accesses), benchmark::Counter::kIsRate | benchmark::Counter::kInvert);
  state.counters["miss_ratio"] = accesses ? static_cast<double>(misses) / accesses : 0;
}

void RegisterAll() {
  for (const char* name : {"lru", "fifo", "lfu", "sieve", "arc", "s3fifo", "prefix_aware",
                           "priority", "h2o", "streaming"}) {
    benchmark::RegisterBenchmark((std::string("BM_Policy/") + name).c_str(), RunPolicy,
                                 std::string(name))
        ->Arg(4096)
        ->Arg(65536)
        ->Arg(1 << 20)
        ->MinTime(0.3);
  }
}
const bool registered = (RegisterAll(), true);

}  // namespace
}  // namespace kvtier
