// KV events (kvtier/events.h): the queue itself, the exact events of commits, evictions and
// write-backs through the Cache, the Index's events against its own residencies under a random
// workload (failed copies included), overflow, and "off by default".
#include "kvtier/events.h"

#include <map>
#include <random>
#include <set>
#include <tuple>
#include <utility>
#include <vector>

#include "kvtier/cache.h"
#include "lib/index/event_queue.h"
#include "lib/index/index.h"
#include "test/util/test_util.h"

namespace kvtier {
namespace {

using test::EngineKv;

// What a test expects of one event (seq and tokens_per_block are checked separately).
struct Expected {
  KvEventType type;
  Tier tier;
  BlockKey key;
  BlockKey parent;
};

void CheckEvents(const std::vector<KvEvent>& got, const std::vector<Expected>& want) {
  REQUIRE(got.size() == want.size());
  for (size_t i = 0; i < got.size(); ++i) {
    CAPTURE(i, KvEventTypeName(got[i].type), TierName(got[i].tier));
    CHECK(got[i].type == want[i].type);
    CHECK(got[i].tier == want[i].tier);
    CHECK(got[i].key == want[i].key);
    CHECK(got[i].parent == want[i].parent);
  }
}

// A metadata-only cache (no bytes moved: every copy completes when issued) with `device` slots.
Options MetadataOptions(uint32_t device, uint32_t host, uint32_t events) {
  BlockLayout layout{.tokens_per_block = 16, .num_slots = device};
  layout.layers.push_back({.segments = {{nullptr, 1024, 1024}}});
  return Options{.layout = layout,
                 .backend = DeviceBackend::kMetadataOnly,
                 .host = {.capacity_bytes = uint64_t{host} * 1024},
                 .events = {.capacity = events}};
}

// Commits `keys` in a fresh lease and releases it.
void CommitChain(Cache& cache, std::span<const BlockKey> keys) {
  auto lease = cache.AllocateDevice(static_cast<uint32_t>(keys.size()));
  REQUIRE_OK(lease);
  REQUIRE_OK(cache.Commit(keys, *lease));
  REQUIRE_OK(cache.Release(*lease));
}

TEST_CASE("EventQueue: keeps the oldest, drops and counts new events when full", "[events]") {
  internal::EventQueue q(3, 16);
  const auto keys = test::Chain(5, 1);
  for (const BlockKey& k : keys) q.Push(KvEventType::kStored, Tier::kHost, k, kRootKey);
  CHECK(q.size() == 3);
  CHECK(q.dropped() == 2);
  std::vector<KvEvent> out;
  q.Take(2, &out);
  REQUIRE(out.size() == 2);
  CHECK(out[0].seq == 0);
  CHECK(out[1].seq == 1);
  CHECK(out[0].key == keys[0]);
  CHECK(out[0].tokens_per_block == 16);
  q.Push(KvEventType::kRemoved, Tier::kDisk, keys[0], kRootKey);  // wraps around the ring
  q.Take(10, &out);
  REQUIRE(out.size() == 4);
  CHECK(out[2].seq == 2);
  CHECK(out[3].seq == 5);  // 3 and 4 were dropped: the gap shows
  CHECK(out[3].type == KvEventType::kRemoved);
  CHECK(q.size() == 0);
  internal::EventQueue off(0, 16);
  off.Push(KvEventType::kStored, Tier::kHost, keys[0], kRootKey);
  CHECK(off.size() == 0);
  CHECK(off.dropped() == 0);
}

TEST_CASE("KV events: off by default, nothing is recorded or dropped", "[events]") {
  Options o = MetadataOptions(2, 4, 0);
  auto cache = Cache::Create(o);
  REQUIRE_OK(cache);
  for (uint32_t seed = 1; seed <= 4; ++seed) CommitChain(**cache, test::Chain(2, seed));
  CHECK((*cache)->Stats().device.evictions > 0);
  CHECK((*cache)->TakeEvents().empty());
  CHECK((*cache)->Stats().events_dropped == 0);
}

TEST_CASE("KV events: commit and eviction give exactly the expected events, in order", "[events]") {
  // No host tier: device victims are dropped. Metadata-only backend.
  auto cache = Cache::Create(MetadataOptions(2, 0, 64));
  REQUIRE_OK(cache);
  const auto a = test::Chain(2, 1), b = test::Chain(2, 2);
  CommitChain(**cache, a);
  CommitChain(**cache, b);  // evicts a, leaf first
  const std::vector<KvEvent> got = (*cache)->TakeEvents();
  CheckEvents(got, {{KvEventType::kStored, Tier::kDevice, a[0], kRootKey},
                    {KvEventType::kStored, Tier::kDevice, a[1], a[0]},
                    {KvEventType::kRemoved, Tier::kDevice, a[1], a[0]},
                    {KvEventType::kRemoved, Tier::kDevice, a[0], kRootKey},
                    {KvEventType::kStored, Tier::kDevice, b[0], kRootKey},
                    {KvEventType::kStored, Tier::kDevice, b[1], b[0]}});
  for (size_t i = 0; i < got.size(); ++i) {
    CHECK(got[i].seq == i);
    CHECK(got[i].tokens_per_block == 16);
  }
  CHECK((*cache)->TakeEvents().empty());  // taken once
  CHECK((*cache)->Stats().events_dropped == 0);
  REQUIRE_OK((*cache)->CheckInvariants());
}

TEST_CASE("KV events: a write-back is removed from the device, then stored on the host",
          "[events]") {
  EngineKv kv({.num_slots = 2});
  Options o = test::MakeOptions(kv, 4);
  o.events.capacity = 64;
  auto cache = Cache::Create(o);
  REQUIRE_OK(cache);
  const auto a = test::Chain(2, 1), b = test::Chain(2, 2);
  REQUIRE_OK(test::RunSequence(**cache, kv, a));
  REQUIRE_OK(test::RunSequence(**cache, kv, b));  // a goes to the host (AllocateDevice waits)
  CheckEvents((*cache)->TakeEvents(), {{KvEventType::kStored, Tier::kDevice, a[0], kRootKey},
                                       {KvEventType::kStored, Tier::kDevice, a[1], a[0]},
                                       {KvEventType::kRemoved, Tier::kDevice, a[1], a[0]},
                                       {KvEventType::kRemoved, Tier::kDevice, a[0], kRootKey},
                                       {KvEventType::kStored, Tier::kHost, a[1], a[0]},
                                       {KvEventType::kStored, Tier::kHost, a[0], kRootKey},
                                       {KvEventType::kStored, Tier::kDevice, b[0], kRootKey},
                                       {KvEventType::kStored, Tier::kDevice, b[1], b[0]}});
  // Loading a back: b is written back in turn, a promoted to the device (still on the host).
  auto again = test::RunSequence(**cache, kv, a);
  REQUIRE_OK(again);
  CHECK(again->loaded == 2);
  std::vector<KvEvent> got = (*cache)->TakeEvents();
  std::multiset<std::tuple<KvEventType, Tier, BlockKey>> seen;
  for (const KvEvent& e : got) seen.insert({e.type, e.tier, e.key});
  const std::multiset<std::tuple<KvEventType, Tier, BlockKey>> want = {
      {KvEventType::kRemoved, Tier::kDevice, b[0]}, {KvEventType::kRemoved, Tier::kDevice, b[1]},
      {KvEventType::kStored, Tier::kHost, b[0]},    {KvEventType::kStored, Tier::kHost, b[1]},
      {KvEventType::kStored, Tier::kDevice, a[0]},  {KvEventType::kStored, Tier::kDevice, a[1]}};
  CHECK(seen == want);
  REQUIRE_OK((*cache)->CheckInvariants());
}

TEST_CASE("KV events: a full queue drops new events and counts them in every export", "[events]") {
  auto cache = Cache::Create(MetadataOptions(8, 0, 3));
  REQUIRE_OK(cache);
  const auto a = test::Chain(5, 1);
  CommitChain(**cache, a);  // 5 stored events, room for 3
  CHECK((*cache)->Stats().events_dropped == 2);
  std::vector<KvEvent> first = (*cache)->TakeEvents(1);
  REQUIRE(first.size() == 1);
  CHECK(first[0].key == a[0]);
  std::vector<KvEvent> rest = (*cache)->TakeEvents();
  REQUIRE(rest.size() == 2);
  CHECK(rest[1].key == a[2]);
  CommitChain(**cache, test::Chain(1, 2));
  std::vector<KvEvent> next = (*cache)->TakeEvents();
  REQUIRE(next.size() == 1);
  CHECK(next[0].seq == 5);  // after the two dropped: a router sees the gap
  CHECK((*cache)->TakeEvents(0).empty());
  REQUIRE_OK((*cache)->CheckInvariants());
}

TEST_CASE("KV events: Options.events.capacity is validated", "[events][bad_input]") {
  Options o = MetadataOptions(2, 0, EventOptions::kMaxCapacity + 1);
  REQUIRE_CODE(Cache::Create(o), absl::StatusCode::kInvalidArgument);
  o.events.capacity = EventOptions::kMaxCapacity;
  REQUIRE_OK(o.Validate());
}

}  // namespace
}  // namespace kvtier

namespace kvtier::internal {
namespace {

TEST_CASE("Index: KV events replayed by a router agree with the residencies, failed copies too",
          "[events][index]")
ABSL_NO_THREAD_SAFETY_ANALYSIS {
  const uint32_t seed = GENERATE(range(1u, 9u));
  CAPTURE(seed);
  std::mt19937 rng(seed);
  IndexConfig c;
  c.capacity_slots = {4, 6, 10};
  for (int t = 0; t < kNumTiers; ++t) {
    c.policies[t] = *CreatePolicy("lru", {.capacity_slots = c.capacity_slots[t]});
  }
  c.events_capacity = 1 << 16;
  c.tokens_per_block = 4;
  Index index(std::move(c));
  MutexLock lock(&index.mu());
  // The router's view: (tier, key) -> parent, from the events alone.
  std::map<std::pair<int, BlockKey>, BlockKey> router;
  auto apply = [&]() ABSL_NO_THREAD_SAFETY_ANALYSIS {
    std::vector<KvEvent> events;
    index.TakeEventsLocked(SIZE_MAX, &events);
    for (const KvEvent& e : events) {
      const auto at = std::make_pair(static_cast<int>(e.tier), e.key);
      if (e.type == KvEventType::kStored) {
        REQUIRE(router.emplace(at, e.parent).second);  // stored once, not twice
      } else {
        REQUIRE(e.type == KvEventType::kRemoved);
        REQUIRE(router.erase(at) == 1);  // removed only after stored
      }
    }
  };
  auto finish = [&](std::vector<Move>& moves) ABSL_NO_THREAD_SAFETY_ANALYSIS {
    for (const Move& m : moves) index.FinishMoveLocked(m, rng() % 4 != 0);
    moves.clear();
    // Writes to the disk decided meanwhile, completed (or failed) at once.
    for (int round = 0; round < 4; ++round) {
      std::vector<Move> writes = index.TakeWritesLocked();
      for (const Move& w : writes) index.FinishMoveLocked(w, rng() % 4 != 0);
    }
  };
  for (int step = 0; step < 150; ++step) {
    CAPTURE(step);
    const auto keys = test::Chain(1 + rng() % 4, rng() % 6);
    std::vector<SlotId> slots;
    std::vector<Move> moves;
    auto lease = index.NewLeaseLocked(static_cast<uint32_t>(keys.size()), &slots, &moves);
    finish(moves);
    if (lease.ok()) {
      if (rng() % 2 == 0) {
        // Load what is cached (promotions fail at random), then commit the whole chain.
        MatchResult m = index.MatchLocked(keys);
        auto plan = index.PlanLoadLocked(*lease, m);
        REQUIRE_OK(plan);
        finish(plan->promotions);
      }
      REQUIRE_OK(index.CommitLocked(*lease, keys, &moves));
      finish(moves);
      REQUIRE_OK(index.ReleaseLeaseLocked(*lease));
    }
    REQUIRE_OK(index.CheckInvariantsLocked());
    apply();
    for (int t = 0; t < kNumTiers; ++t) {
      std::map<std::pair<int, BlockKey>, BlockKey> ready;
      for (const RestoredBlock& b : index.ListLocked(static_cast<Tier>(t))) {
        ready.emplace(std::make_pair(t, b.key), b.parent);
      }
      std::map<std::pair<int, BlockKey>, BlockKey> said;
      for (const auto& [at, parent] : router) {
        if (at.first == t) said.emplace(at, parent);
      }
      CAPTURE(t);
      REQUIRE(said == ready);
    }
  }
  CacheStats s;
  index.FillStatsLocked(&s);
  CHECK(s.events_dropped == 0);
  CHECK(s.transfer_failures > 0);  // failed copies were part of it
}

}  // namespace
}  // namespace kvtier::internal
