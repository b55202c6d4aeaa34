// S3-FIFO (Yang et al., SOSP'23): a small FIFO queue, a main FIFO queue and a ghost queue.
//
// A new block enters the small queue (10 % of the tier), or the main queue when its id is in the
// ghost queue (it was evicted from the small queue recently). Accesses raise a 2-bit counter.
// Eviction: while the main queue is over its share (or the small queue is empty) the main queue's
// oldest entry is evicted if its counter is 0, else reinserted with the counter decreased (CLOCK);
// otherwise the small queue's oldest entry moves to the main queue if it was accessed at least
// `threshold` times, or is evicted and its id remembered in the ghost queue (90 % of the tier).
// A new block goes to the small queue even while the tier is filling (as the paper and the
// libCacheSim commit of docs/policies.md's reference; later libCacheSim sends it to the main queue
// when the small one is full before the first eviction, which loses 4 pp at 40 % on our trace).
//
// A parent the cache refuses because its children are cached (the prefix rule) is parked and
// returns to the old end of its queue when its last linked child leaves; other entries the search
// may not take (pinned, refused otherwise) are requeued at the new end of their queue; so a search
// is O(1) amortised. If the rules find nothing, a scan of the queues returns any evictable entry.
// The ghost check of an incoming block happens at its insertion (after the victim is chosen: a
// cache takes a slot before it knows the key). Parameters: small_ratio (0.1, in (0, 1)),
// ghost_ratio (0.9, in [0, 4]), threshold (2, 1..3).
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <vector>

#include "kvtier/policy.h"
#include "lib/policies/child_links.h"
#include "lib/policies/ghost_list.h"
#include "lib/policies/policy_params.h"
#include "lib/policies/slot_list.h"

namespace kvtier {
namespace {

using internal::ChildLinks;
using internal::GhostList;
using internal::SlotLists;

class S3FifoPolicy final : public EvictionPolicy {
 public:
  static absl::StatusOr<std::unique_ptr<EvictionPolicy>> Create(const PolicyContext& ctx) {
    const auto& p = ctx.params;
    if (absl::Status s =
            CheckPolicyParams("s3fifo", p, {"small_ratio", "ghost_ratio", "threshold"});
        !s.ok()) {
      return s;
    }
    absl::StatusOr<double> small = internal::ParamDouble("s3fifo", p, "small_ratio", 0.1, 0, 1);
    if (!small.ok()) return small.status();
    if (*small <= 0 || *small >= 1) {
      return absl::InvalidArgumentError(
          absl::StrCat("s3fifo: parameter small_ratio=", *small, " must be in (0, 1)"));
    }
    absl::StatusOr<double> ghost = internal::ParamDouble("s3fifo", p, "ghost_ratio", 0.9, 0, 4);
    if (!ghost.ok()) return ghost.status();
    absl::StatusOr<uint32_t> threshold = internal::ParamUint("s3fifo", p, "threshold", 2, 1, 3);
    if (!threshold.ok()) return threshold.status();
    if (absl::Status s = internal::CheckGhostIds(
            "s3fifo", static_cast<uint64_t>(ctx.capacity_slots * *ghost), "ghost_ratio x capacity");
        !s.ok()) {
      return s;
    }
    return std::unique_ptr<EvictionPolicy>(
        new S3FifoPolicy(ctx.capacity_slots, *small, *ghost, *threshold));
  }

  void OnInsertKey(SlotId s, uint64_t id) override {
    state_[s].id = id;
    state_[s].known = true;
  }

  void OnInsert(SlotId s) override {
    State& st = state_[s];
    const bool ghost_hit = st.known && ghost_.Erase(st.id);
    FlushGhosts();
    st.freq = 0;
    st.pinned = false;
    lists_.PushFront(ghost_hit ? kMain : kSmall, s);
  }

  void OnAccess(SlotId s) override {
    uint8_t& f = state_[s].freq;
    if (f < 3) f++;
  }

  void OnLink(SlotId s, SlotId parent) override { links_.Link(s, parent); }

  void OnRemove(SlotId s) override {
    const uint16_t queue = lists_.ListOf(s) == kParked ? state_[s].home : lists_.ListOf(s);
    if (s == victim_ && queue == kSmall && state_[s].known) {
      pending_ghosts_.push_back(state_[s].id);  // enters the ghost queue after the next check
    }
    if (s == victim_) victim_ = SlotLists::kNil;
    lists_.Remove(s);
    state_[s] = State{};
    if (const SlotId p = links_.Remove(s); p != ChildLinks::kNone && lists_.ListOf(p) == kParked) {
      lists_.Remove(p);
      lists_.PushBack(state_[p].home, p);
    }
  }
  void OnPin(SlotId s) override { state_[s].pinned = true; }
  void OnUnpin(SlotId s) override { state_[s].pinned = false; }

  std::optional<SlotId> PickVictim(absl::FunctionRef<bool(SlotId)> can_evict) override {
    FlushGhosts();
    const auto evictable = [&](SlotId s) { return !state_[s].pinned && can_evict(s); };
    // As libCacheSim: the queue is chosen once; the small queue then gives entries (promoting the
    // accessed ones) until it evicts one or is empty, and only then does the main queue go.
    if (lists_.Size(kMain) <= main_target_ && lists_.Size(kSmall) > 0) {
      if (auto v = EvictSmall(evictable)) return victim_ = *v;
    }
    if (auto v = EvictMain(evictable)) return victim_ = *v;
    // The rules are stuck on blocked entries (e.g. all accessed ones pinned): any will do.
    for (const uint16_t list : {kSmall, kMain, kParked}) {
      for (SlotId s = lists_.Back(list); s != SlotLists::kNil; s = lists_.Newer(s)) {
        if (evictable(s)) return victim_ = s;
      }
    }
    return std::nullopt;
  }

 private:
  static constexpr uint16_t kSmall = 0;
  static constexpr uint16_t kMain = 1;
  static constexpr uint16_t kParked = 2;
  struct State {
    uint64_t id = 0;
    bool known = false;
    bool pinned = false;
    uint8_t freq = 0;        // accesses, capped at 3
    uint16_t home = kSmall;  // the queue a parked entry returns to
  };

  S3FifoPolicy(uint32_t capacity, double small_ratio, double ghost_ratio, uint32_t threshold)
      : small_target_(static_cast<uint32_t>(capacity * small_ratio)),
        main_target_(capacity - small_target_),
        threshold_(threshold),
        lists_(capacity, 3),
        links_(capacity),
        ghost_(static_cast<uint32_t>(capacity * ghost_ratio)),
        state_(capacity) {}

  // Each step promotes an entry (once per entry) or requeues a blocked one; a full trip of
  // blocked entries in a row ends it.
  template <typename Evictable>
  std::optional<SlotId> EvictSmall(const Evictable& evictable) {
    for (uint32_t blocked = 0; lists_.Size(kSmall) > blocked;) {
      const SlotId s = lists_.Back(kSmall);
      State& st = state_[s];
      if (st.freq >= threshold_) {
        st.freq = 0;
        lists_.Remove(s);
        lists_.PushFront(kMain, s);
        blocked = 0;
      } else if (evictable(s)) {
        return s;
      } else if (!st.pinned && links_.children(s) > 0) {
        Park(s, kSmall);
      } else {
        lists_.MoveToFront(kSmall, s);
        blocked++;
      }
    }
    return std::nullopt;
  }
  // CLOCK: each step lowers a counter (at most 3 per entry) or requeues a blocked entry.
  template <typename Evictable>
  std::optional<SlotId> EvictMain(const Evictable& evictable) {
    for (uint32_t blocked = 0; lists_.Size(kMain) > blocked;) {
      const SlotId s = lists_.Back(kMain);
      State& st = state_[s];
      if (st.freq > 0) {
        st.freq--;
        lists_.MoveToFront(kMain, s);
        blocked = 0;
      } else if (evictable(s)) {
        return s;
      } else if (!st.pinned && links_.children(s) > 0) {
        Park(s, kMain);
      } else {
        lists_.MoveToFront(kMain, s);
        blocked++;
      }
    }
    return std::nullopt;
  }

  void Park(SlotId s, uint16_t home) {
    state_[s].home = home;
    lists_.Remove(s);
    lists_.PushFront(kParked, s);
  }

  void FlushGhosts() {
    for (uint64_t id : pending_ghosts_) ghost_.Push(id);
    pending_ghosts_.clear();
  }

  const uint32_t small_target_;
  const uint32_t main_target_;
  const uint32_t threshold_;
  SlotLists lists_;  // kSmall, kMain, kParked; front: newest
  ChildLinks links_;
  GhostList ghost_;
  std::vector<State> state_;
  std::vector<uint64_t> pending_ghosts_;
  SlotId victim_ = SlotLists::kNil;
};

}  // namespace

KVTIER_REGISTER_POLICY("s3fifo", S3FifoPolicy);

}  // namespace kvtier
