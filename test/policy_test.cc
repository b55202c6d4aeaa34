#include "kvtier/policy.h"

#include <algorithm>
#include <map>
#include <random>
#include <set>
#include <utility>
#include <vector>

#include "kvtier/cache.h"
#include "test/util/test_util.h"

namespace kvtier {
namespace {

std::unique_ptr<EvictionPolicy> Make(const std::string& name, uint32_t capacity) {
  auto p = CreatePolicy(name, {.capacity_slots = capacity});
  REQUIRE_OK(p);
  return std::move(*p);
}
auto Any() {
  return [](SlotId) { return true; };
}

TEST_CASE("LruPolicy: evicts in least-recent order, access, pin and unpin move entries",
          "[policy]") {
  auto lru = Make("lru", 8);
  for (SlotId s : {0, 1, 2, 3}) lru->OnInsert(s);
  CHECK(lru->PickVictim(Any()) == 0);
  lru->OnAccess(0);  // order, least recent first: 1 2 3 0
  CHECK(lru->PickVictim(Any()) == 1);
  lru->OnPin(1);  // pinned: not a candidate
  CHECK(lru->PickVictim(Any()) == 2);
  lru->OnUnpin(1);  // back as the most recent: 2 3 0 1
  CHECK(lru->PickVictim(Any()) == 2);
  CHECK(lru->PickVictim([](SlotId s) { return s != 2 && s != 3; }) == 0);
  lru->OnRemove(2);
  CHECK(lru->PickVictim(Any()) == 3);
  lru->OnPin(3);
  lru->OnRemove(3);  // removal while pinned is allowed
  CHECK(lru->PickVictim(Any()) == 0);
  CHECK_FALSE(lru->PickVictim([](SlotId) { return false; }).has_value());
}

TEST_CASE("Policy registry: names are unique and listed, bad names and params are errors",
          "[policy]") {
  const auto names = ListPolicies();
  CHECK(std::find(names.begin(), names.end(), "lru") != names.end());
  CHECK(std::is_sorted(names.begin(), names.end()));
  auto lru_factory = [](const PolicyContext& c) { return CreatePolicy("lru", c); };
  REQUIRE_CODE(RegisterPolicy("lru", lru_factory), absl::StatusCode::kAlreadyExists);
  REQUIRE_CODE(RegisterPolicy("", lru_factory), absl::StatusCode::kInvalidArgument);
  REQUIRE_CODE(RegisterPolicy("null-factory", nullptr), absl::StatusCode::kInvalidArgument);
  REQUIRE_CODE(CreatePolicy("no-such-policy", {.capacity_slots = 4}), absl::StatusCode::kNotFound);
  REQUIRE_CODE(CreatePolicy("lru", {.capacity_slots = 4, .params = {{"x", "1"}}}),
               absl::StatusCode::kInvalidArgument);
}

// A policy a researcher registers at run time, used by a Cache by name.
class MruForTest final : public EvictionPolicy {
 public:
  void OnInsert(SlotId s) override { order_.push_back(s); }
  void OnAccess(SlotId s) override {
    order_.erase(std::find(order_.begin(), order_.end(), s));
    order_.push_back(s);
  }
  void OnRemove(SlotId s) override {
    order_.erase(std::find(order_.begin(), order_.end(), s));
    pinned_.erase(s);
  }
  void OnPin(SlotId s) override { pinned_.insert(s); }
  void OnUnpin(SlotId s) override { pinned_.erase(s); }
  std::optional<SlotId> PickVictim(absl::FunctionRef<bool(SlotId)> can_evict) override {
    for (auto it = order_.rbegin(); it != order_.rend(); ++it) {
      if (!pinned_.contains(*it) && can_evict(*it)) return *it;
    }
    return std::nullopt;
  }

 private:
  std::vector<SlotId> order_;
  std::set<SlotId> pinned_;
};

TEST_CASE("Policy registry: a policy registered at run time drives a cache", "[policy]") {
  static const bool registered =
      RegisterPolicy("mru-for-test", [](const PolicyContext&) {
        return absl::StatusOr<std::unique_ptr<EvictionPolicy>>(std::make_unique<MruForTest>());
      }).ok();
  REQUIRE(registered);
  test::EngineKv kv({.num_slots = 4});
  Options o = test::MakeOptions(kv, 0);
  o.device.policy = "mru-for-test";
  auto cache = Cache::Create(o);
  REQUIRE_OK(cache);
  for (uint32_t s = 0; s < 10; ++s) {
    auto r = test::RunSequence(**cache, kv, test::Chain(1, s));
    REQUIRE_OK(r);
    CHECK(r->mismatched_bytes == 0);
  }
  // MRU keeps the oldest blocks: sequence 0 survives, 8 was evicted by 9.
  auto old = (*cache)->Match(test::Chain(1, 0));
  REQUIRE_OK(old);
  CHECK(old->size() == 1);
  REQUIRE_OK((*cache)->CheckInvariants());
}

// Every registered policy with its defaults, and kv_adaptive with each victim rule forced.
std::vector<std::pair<std::string, PolicyParams>> PolicyVariants() {
  std::vector<std::pair<std::string, PolicyParams>> out;
  for (const std::string& name : ListPolicies()) out.push_back({name, {}});
  for (const char* rule : {"arc", "lru", "density"}) {
    out.push_back({"kv_adaptive", {{"rule", rule}}});
  }
  return out;
}

// The properties every registered policy must have, on random call sequences that follow the
// protocol of policy.h.
TEST_CASE("Policies: every registered policy returns only evictable entries, and one if any is",
          "[policy]") {
  const auto [name, params] = GENERATE(from_range(PolicyVariants()));
  const uint32_t seed = GENERATE(1u, 2u, 3u);
  const std::string rule = params.contains("rule") ? params.at("rule") : "";
  CAPTURE(name, rule, seed);
  constexpr uint32_t kCap = 32;
  auto policy = CreatePolicy(name, {.capacity_slots = kCap, .params = params});
  if (!policy.ok()) {
    // A policy that needs parameters has no defaults to test here.
    WARN("skipped: " << policy.status().ToString());
    return;
  }
  std::mt19937 rng(seed);
  std::set<SlotId> live, pinned, above;
  std::map<SlotId, uint64_t> ids;  // of the live slots: 96 ids, so that evicted ones return
  for (int step = 0; step < 5000; ++step) {
    const SlotId s = rng() % kCap;
    switch (rng() % 6) {
      case 0:
        if (!live.contains(s)) {
          uint64_t id = rng() % 96;
          while (std::any_of(ids.begin(), ids.end(), [&](const auto& e) { return e.second == id; }))
            id = (id + 1) % 96;
          ids[s] = id;
          (*policy)->OnInsertKey(s, id);
          (*policy)->OnInsert(s);
          live.insert(s);
        }
        break;
      case 1:  // an access, or a copy above that comes or goes (OnUpperCopy)
        if (!live.contains(s)) break;
        if (rng() % 2) {
          (*policy)->OnAccess(s);
        } else {
          const bool held = !above.contains(s);
          (*policy)->OnUpperCopy(s, held);
          if (held) {
            above.insert(s);
          } else {
            above.erase(s);
          }
        }
        break;
      case 2:
        if (live.contains(s) && !pinned.contains(s)) {
          (*policy)->OnPin(s);
          pinned.insert(s);
        } else if (pinned.contains(s)) {
          (*policy)->OnUnpin(s);
          pinned.erase(s);
        }
        break;
      case 3:
        if (live.contains(s)) {
          (*policy)->OnRemove(s);
          live.erase(s);
          pinned.erase(s);
          above.erase(s);
          ids.erase(s);
        }
        break;
      default: {
        const uint32_t mask = rng();  // a random predicate
        auto can = [&](SlotId x) { return ((mask >> (x % 32)) & 1) != 0; };
        const auto v = (*policy)->PickVictim(can);
        bool any = false;
        for (SlotId x : live) any |= !pinned.contains(x) && can(x);
        if (v.has_value()) {
          CHECK(live.contains(*v));
          CHECK_FALSE(pinned.contains(*v));
          CHECK(can(*v));
          (*policy)->OnRemove(*v);  // as the cache does
          live.erase(*v);
          above.erase(*v);
          ids.erase(*v);
        } else {
          CHECK_FALSE(any);
        }
      }
    }
  }
}

}  // namespace
}  // namespace kvtier
