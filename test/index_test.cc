#include "lib/index/index.h"

#include <vector>

#include "test/util/test_util.h"

namespace kvtier::internal {
namespace {

// An Index with small tiers and LRU everywhere; every step is followed by CheckInvariants.
struct Fixture {
  explicit Fixture(uint32_t device, uint32_t host = 0, uint32_t disk = 0, bool demote = true)
      : index(MakeConfig(device, host, disk, demote)) {}
  static IndexConfig MakeConfig(uint32_t device, uint32_t host, uint32_t disk, bool demote) {
    IndexConfig c;
    c.capacity_slots = {device, host, disk};
    for (int t = 0; t < kNumTiers; ++t) {
      c.policies[t] = *CreatePolicy("lru", {.capacity_slots = c.capacity_slots[t]});
    }
    c.demote_on_evict = demote;
    return c;
  }
  void Check() ABSL_NO_THREAD_SAFETY_ANALYSIS { REQUIRE_OK(index.CheckInvariantsLocked()); }
  // A lease of n slots committing `keys` (a chain); returns the lease id.
  uint64_t Commit(std::span<const BlockKey> keys,
                  std::vector<Move>* d = nullptr) ABSL_NO_THREAD_SAFETY_ANALYSIS {
    std::vector<SlotId> slots;
    std::vector<Move> ignored;
    auto id = index.NewLeaseLocked(static_cast<uint32_t>(keys.size()), &slots, d ? d : &ignored);
    REQUIRE_OK(id);
    REQUIRE_OK(index.CommitLocked(*id, keys, d ? d : &ignored));
    Check();
    return *id;
  }
  Index index;
};

TEST_CASE("Index: commit makes pinned Ready residencies, release unpins them", "[index]")
ABSL_NO_THREAD_SAFETY_ANALYSIS {
  Fixture f(8);
  MutexLock lock(&f.index.mu());
  const auto keys = test::Chain(3, 1);
  const uint64_t lease = f.Commit(keys);
  CacheStats s;
  f.index.FillStatsLocked(&s);
  CHECK(s.device.used_blocks == 3);
  CHECK(s.device.pinned_blocks == 3);
  CHECK(s.blocks_committed == 3);
  REQUIRE_OK(f.index.ReleaseLeaseLocked(lease));
  f.Check();
  f.index.FillStatsLocked(&s);
  CHECK(s.device.pinned_blocks == 0);
  CHECK(f.index.MatchLocked(keys).size() == 3);
  REQUIRE_CODE(f.index.ReleaseLeaseLocked(lease), absl::StatusCode::kFailedPrecondition);
}

TEST_CASE("Index: a full device evicts the least recently used unpinned block, leaf first",
          "[index]")
ABSL_NO_THREAD_SAFETY_ANALYSIS {
  Fixture f(4, /*host=*/0);
  MutexLock lock(&f.index.mu());
  const auto a = test::Chain(2, 1), b = test::Chain(2, 2);
  REQUIRE_OK(f.index.ReleaseLeaseLocked(f.Commit(a)));
  REQUIRE_OK(f.index.ReleaseLeaseLocked(f.Commit(b)));
  // LRU order, least recent first: a1 a0 b1 b0 (a release unpins leaves first). Touching a makes
  // it b1 b0 a1 a0.
  f.index.MatchLocked(a);
  std::vector<SlotId> slots;
  std::vector<Move> d;
  const uint64_t l1 = *f.index.NewLeaseLocked(1, &slots, &d);  // evicts b1, b's leaf
  CacheStats s;
  f.index.FillStatsLocked(&s);
  CHECK(s.device.evictions == 1);
  CHECK(s.device.drops == 1);  // no host tier: dropped
  CHECK(f.index.MatchLocked(a).size() == 2);
  f.Check();
  // Now a1 a0 b0 after the Match of a above... no: the Match just now touched a again: b0 a1 a0.
  const uint64_t l2 = *f.index.NewLeaseLocked(1, &slots, &d);  // evicts b0
  CHECK(f.index.MatchLocked(b).size() == 0);
  CHECK(f.index.MatchLocked(a).size() == 2);
  // Everything is pinned or leased now except a; pin a too: the next allocation fails, and
  // nothing changes.
  const uint64_t la = *f.index.NewLeaseLocked(0, &slots, &d);
  auto plan = f.index.PlanLoadLocked(la, MatchResult{});
  REQUIRE_OK(plan);
  const uint64_t l3 = *f.index.NewLeaseLocked(2, &slots, &d);  // takes a's two slots
  CHECK(f.index.MatchLocked(a).size() == 0);
  slots.clear();
  REQUIRE_CODE(f.index.NewLeaseLocked(1, &slots, &d), absl::StatusCode::kResourceExhausted);
  CHECK(slots.empty());
  f.Check();
  for (uint64_t id : {l1, l2, la, l3}) REQUIRE_OK(f.index.ReleaseLeaseLocked(id));
  f.Check();
}

TEST_CASE("Index: with a host tier a device victim is written back, then Ready on completion",
          "[index]")
ABSL_NO_THREAD_SAFETY_ANALYSIS {
  const bool ok = GENERATE(true, false);
  CAPTURE(ok);
  Fixture f(2, /*host=*/4);
  MutexLock lock(&f.index.mu());
  const auto a = test::Chain(2, 1);
  REQUIRE_OK(f.index.ReleaseLeaseLocked(f.Commit(a)));
  std::vector<Move> demotions;
  f.Commit(test::Chain(2, 2), &demotions);
  REQUIRE(demotions.size() == 2);
  CHECK_FALSE(demotions[0].source_kept);
  auto m = f.index.MatchLocked(a);
  REQUIRE(m.size() == 2);
  CHECK(m.tiers[0] == Tier::kHost);  // Filling counts as cached for Match ...
  std::vector<SlotId> slots;
  std::vector<Move> d;
  const uint64_t probe = *f.index.NewLeaseLocked(0 + 0, &slots, &d);  // an empty lease
  auto plan = f.index.PlanLoadLocked(probe, MatchResult{});
  REQUIRE_OK(plan);
  for (const Move& x : demotions) f.index.FinishMoveLocked(x, ok);
  f.Check();
  CacheStats s;
  f.index.FillStatsLocked(&s);
  CHECK(f.index.MatchLocked(a).size() == (ok ? 2u : 0u));
  CHECK(s.transfer_failures == (ok ? 0u : 2u));
}

TEST_CASE("Index: Load shares Ready device blocks, plans host promotions, stops at Filling",
          "[index]")
ABSL_NO_THREAD_SAFETY_ANALYSIS {
  Fixture f(7, /*host=*/8);
  MutexLock lock(&f.index.mu());
  const auto a = test::Chain(3, 1);
  const uint64_t first = f.Commit(a);
  REQUIRE_OK(f.index.ReleaseLeaseLocked(first));
  // Push a's last two blocks down to the host by filling the device.
  std::vector<Move> demotions;
  const uint64_t other = f.Commit(test::Chain(6, 2), &demotions);
  for (const Move& d : demotions) f.index.FinishMoveLocked(d, true);
  REQUIRE_OK(f.index.ReleaseLeaseLocked(other));
  f.Check();
  auto m = f.index.MatchLocked(a);
  REQUIRE(m.size() == 3);
  REQUIRE(m.blocks_in(Tier::kDevice) == 1);
  std::vector<SlotId> slots;
  std::vector<Move> d;
  const uint64_t lease = *f.index.NewLeaseLocked(3, &slots, &d);
  auto plan = f.index.PlanLoadLocked(lease, m);
  REQUIRE_OK(plan);
  CHECK(plan->blocks == 3);
  CHECK(plan->promotions.size() == m.blocks_in(Tier::kHost));
  f.Check();
  // A second lease shares a's first block (Ready on the device) but not the two still being
  // promoted into the first lease (Filling): its plan stops at the first of them, and plans no
  // copy of its own for them.
  std::vector<SlotId> slots2;
  const uint64_t lease2 = *f.index.NewLeaseLocked(3, &slots2, &d);
  auto plan2 = f.index.PlanLoadLocked(lease2, m);
  REQUIRE_OK(plan2);
  CHECK(plan2->blocks == 1);
  CHECK(plan2->promotions.empty());
  f.Check();
  REQUIRE_OK(f.index.ReleaseLeaseLocked(lease2));
  // A match longer than the lease is refused.
  const uint64_t lease3 = *f.index.NewLeaseLocked(1, &slots2, &d);
  REQUIRE_CODE(f.index.PlanLoadLocked(lease3, m), absl::StatusCode::kInvalidArgument);
  REQUIRE_OK(f.index.ReleaseLeaseLocked(lease3));
  // Loading twice into the same lease is refused.
  REQUIRE_CODE(f.index.PlanLoadLocked(lease, m), absl::StatusCode::kFailedPrecondition);
  // A failed promotion gives the slot back to the lease.
  for (const Move& p : plan->promotions) f.index.FinishMoveLocked(p, false);
  f.Check();
  REQUIRE_OK(f.index.CommitLocked(lease, a, &d));  // the engine recomputed them
  f.Check();
}

TEST_CASE("Index: Commit is all or nothing", "[index]") ABSL_NO_THREAD_SAFETY_ANALYSIS {
  Fixture f(8);
  MutexLock lock(&f.index.mu());
  const auto a = test::Chain(2, 1);
  f.Commit(a);
  std::vector<SlotId> slots;
  std::vector<Move> d;
  const uint64_t lease = *f.index.NewLeaseLocked(3, &slots, &d);
  const auto fresh = test::Chain(3, 7);
  // keys[2] is a's root under another parent: the chain contradicts the index.
  const std::vector<BlockKey> contradict = {fresh[0], fresh[1], a[1]};
  REQUIRE_CODE(f.index.CommitLocked(lease, contradict, &d), absl::StatusCode::kInvalidArgument);
  const std::vector<BlockKey> repeat = {fresh[0], fresh[0]};
  REQUIRE_CODE(f.index.CommitLocked(lease, repeat, &d), absl::StatusCode::kInvalidArgument);
  const std::vector<BlockKey> root = {kRootKey};
  REQUIRE_CODE(f.index.CommitLocked(lease, root, &d), absl::StatusCode::kInvalidArgument);
  REQUIRE_CODE(f.index.CommitLocked(lease, test::Chain(4, 8), &d),
               absl::StatusCode::kInvalidArgument);  // more keys than slots
  CHECK(f.index.MatchLocked(fresh).size() == 0);     // nothing of the rejected commits remains
  f.Check();
  // Keys on the device from another lease keep that copy: nothing of this lease is published.
  REQUIRE_OK(f.index.CommitLocked(lease, a, &d));
  CacheStats s;
  f.index.FillStatsLocked(&s);
  CHECK(s.blocks_commit_shared == 2);
  CHECK(s.blocks_committed == 2);  // a's, by the first lease
  f.Check();
  REQUIRE_OK(f.index.CommitLocked(lease, fresh, &d));
  CHECK(f.index.MatchLocked(fresh).size() == 3);
  f.Check();
}

TEST_CASE("Index: a failed write-back makes its block a miss and leaves no entry behind", "[index]")
ABSL_NO_THREAD_SAFETY_ANALYSIS {
  Fixture f(2, /*host=*/2);
  MutexLock lock(&f.index.mu());
  const auto a = test::Chain(2, 1);
  REQUIRE_OK(f.index.ReleaseLeaseLocked(f.Commit(a)));
  std::vector<Move> d;
  std::vector<SlotId> slots;
  // One slot: the least recent block, a's leaf (released last-to-first), is written back; fail it.
  const uint64_t l1 = *f.index.NewLeaseLocked(1, &slots, &d);
  REQUIRE(d.size() == 1);
  CHECK(d[0].key == a[1]);
  f.index.FinishMoveLocked(d[0], false);
  f.Check();
  CHECK(f.index.MatchLocked(a).size() == 1);
  // Now the root: the same again. Nothing of a is left, and no entry lingers (Check).
  d.clear();
  const uint64_t l2 = *f.index.NewLeaseLocked(1, &slots, &d);
  REQUIRE(d.size() == 1);
  CHECK(d[0].key == a[0]);
  f.index.FinishMoveLocked(d[0], false);
  f.Check();
  CHECK(f.index.MatchLocked(a).size() == 0);
  REQUIRE_OK(f.index.ReleaseLeaseLocked(l1));
  REQUIRE_OK(f.index.ReleaseLeaseLocked(l2));
  f.Check();
}

// LRU that drops every victim it is asked about (DemoteVictim false): a host victim with no other
// copy and no children then leaves the index.
class DroppingLru : public EvictionPolicy {
 public:
  explicit DroppingLru(uint32_t capacity)
      : lru_(*CreatePolicy("lru", {.capacity_slots = capacity})) {}
  void OnInsertKey(SlotId s, uint64_t id) override { lru_->OnInsertKey(s, id); }
  void OnInsert(SlotId s) override { lru_->OnInsert(s); }
  void OnAccess(SlotId s) override { lru_->OnAccess(s); }
  void OnRemove(SlotId s) override { lru_->OnRemove(s); }
  void OnPin(SlotId s) override { lru_->OnPin(s); }
  void OnUnpin(SlotId s) override { lru_->OnUnpin(s); }
  void OnLink(SlotId s, SlotId parent) override { lru_->OnLink(s, parent); }
  std::optional<SlotId> PickVictim(absl::FunctionRef<bool(SlotId)> can_evict) override {
    return lru_->PickVictim(can_evict);
  }
  bool DemoteVictim(SlotId) override { return false; }

 private:
  std::unique_ptr<EvictionPolicy> lru_;
};

TEST_CASE("Regression: a Commit whose write-through evicts a later key of its own chain", "[index]")
ABSL_NO_THREAD_SAFETY_ANALYSIS {
  // Commit [k0, k1] with k0 on disk only and k1 the host's only block: k0's write-through copy
  // takes k1's host slot, which drops k1 (no other copy, no children) and with it k1's entry.
  // Commit looked k1 up before that and must not use the id it had found: it was freed (and may
  // be reused). The soak found it (a device or host slot left resident to another entry).
  IndexConfig c = Fixture::MakeConfig(/*device=*/2, /*host=*/1, /*disk=*/1, /*demote=*/true);
  c.policies[1] = std::make_unique<DroppingLru>(1);
  c.host_write_through = true;
  Index index(std::move(c));
  MutexLock lock(&index.mu());
  int step = 0;
  auto check = [&]() ABSL_NO_THREAD_SAFETY_ANALYSIS {
    INFO("step " << step++);
    REQUIRE_OK(index.CheckInvariantsLocked());
  };
  auto finish_all = [&](std::vector<Move>& moves) ABSL_NO_THREAD_SAFETY_ANALYSIS {
    for (const Move& m : moves) index.FinishMoveLocked(m, true);
    moves.clear();
    for (const Move& m : index.TakeWritesLocked()) index.FinishMoveLocked(m, true);
    check();
  };
  const auto k = test::Chain(2, 1);
  std::vector<SlotId> slots;
  std::vector<Move> d;
  // k0 and k1 on the device, k0 also on the host (k1's write-through found the host full).
  const uint64_t a = *index.NewLeaseLocked(2, &slots, &d);
  REQUIRE_OK(index.CommitLocked(a, k, &d));
  finish_all(d);
  REQUIRE_OK(index.ReleaseLeaseLocked(a));
  // k0 to the disk, off the host; k1 to the host; both off the device.
  index.FlushHostLocked();
  finish_all(d);
  CHECK(index.ClearTierLocked(Tier::kHost).done == 1);
  SlotId next = 0;
  d = index.FlushDeviceLocked(next);
  REQUIRE(d.size() == 1);
  CHECK(d[0].key == k[1]);
  finish_all(d);
  CHECK(index.ClearTierLocked(Tier::kDevice).done == 2);
  MatchResult m = index.MatchLocked(k);
  REQUIRE(m.size() == 2);
  CHECK(m.tiers[0] == Tier::kDisk);
  CHECK(m.tiers[1] == Tier::kHost);
  // The Commit: both keys on the device again, whatever the host write-through did.
  slots.clear();
  const uint64_t b = *index.NewLeaseLocked(2, &slots, &d);
  REQUIRE_OK(index.CommitLocked(b, k, &d));
  check();
  m = index.MatchLocked(k);
  REQUIRE(m.size() == 2);
  CHECK(m.tiers[0] == Tier::kDevice);
  CHECK(m.tiers[1] == Tier::kDevice);
  finish_all(d);
  REQUIRE_OK(index.ReleaseLeaseLocked(b));
  check();
}

TEST_CASE("Index: restored disk blocks are added parents first, orphans are left out", "[index]")
ABSL_NO_THREAD_SAFETY_ANALYSIS {
  Fixture f(4, /*host=*/4, /*disk=*/16);
  MutexLock lock(&f.index.mu());
  const auto a = test::Chain(3, 1);
  const auto orphan = test::Chain(2, 2);
  // Children before parents, and an orphan whose parent is missing.
  const std::vector<RestoredBlock> blocks = {
      {a[2], a[1], 5}, {a[0], kRootKey, 9}, {orphan[1], orphan[0], 3}, {a[1], a[0], 0}};
  CHECK(f.index.RestoreLocked(Tier::kDisk, blocks) == 3);
  f.Check();
  const auto m = f.index.MatchLocked(a);
  REQUIRE(m.size() == 3);
  CHECK(m.blocks_in(Tier::kDisk) == 3);
  CHECK(f.index.MatchLocked(orphan).size() == 0);
  CHECK(f.index.ListLocked(Tier::kDisk).size() == 3);
}

TEST_CASE("Regression #17: RestoreLocked places one block per slot and drops the rest", "[index]")
ABSL_NO_THREAD_SAFETY_ANALYSIS {
  Fixture f(4, /*host=*/4, /*disk=*/16);
  MutexLock lock(&f.index.mu());
  const auto a = test::Chain(3, 1);
  const auto b = test::Chain(2, 2);
  // b[0] claims a[0]'s slot (so b[1], its child, cannot be placed either), a[2] appears twice, and
  // one slot is past the tier.
  const std::vector<RestoredBlock> blocks = {{a[0], kRootKey, 7},
                                             {b[0], kRootKey, 7},
                                             {a[1], a[0], 2},
                                             {b[1], b[0], 3},
                                             {a[2], a[1], 4},
                                             {a[2], a[1], 5},
                                             {test::Chain(1, 3)[0], kRootKey, 16}};
  CHECK(f.index.RestoreLocked(Tier::kDisk, blocks) == 3);
  f.Check();
  CHECK(f.index.MatchLocked(a).size() == 3);
  CHECK(f.index.MatchLocked(b).size() == 0);
  CHECK(f.index.ListLocked(Tier::kDisk).size() == 3);
  // The slots left free are usable: every other slot can still be filled.
  CacheStats s;
  f.index.FillStatsLocked(&s);
  CHECK(s.disk.used_blocks == 3);
}

}  // namespace
}  // namespace kvtier::internal
