// ARC (Megiddo and Modha, FAST'03): adaptive replacement between recency and frequency.
//
// T1 holds entries seen once since they entered, T2 entries seen again (both LRU lists over
// slots); B1 and B2 remember the ids of entries recently evicted from T1 and T2 (ghosts, ids from
// OnInsertKey). The target size p of T1 grows on a B1 hit (recency was evicted too early) and
// shrinks on a B2 hit. The victim is T1's LRU entry when |T1| > p, else T2's; a block inserted
// whose id is a ghost goes to T2, any other to T1. Ghost lists are trimmed as in the paper
// (|T1|+|B1| <= c, |T1|+|T2|+|B1|+|B2| <= 2c).
//
// Adaptation to this interface: a cache chooses the victim before it knows the incoming block (it
// takes a slot before the engine commits a key into it), so without OnMissKey the adaptation of p
// on a ghost hit happens when the block is inserted, after the victim was chosen with the old p,
// and the paper's tie rule (|T1| == p and the incoming block in B2: evict from T1) cannot apply.
// A simulation calls OnMissKey first and gets the paper's ARC exactly (docs/policies.md compares
// it with libCacheSim). The victim's ghost bookkeeping waits for the next insertion, which decides
// whether the ghost lists are trimmed (plain miss) or not (ghost hit). A parent the cache refuses
// because its children are cached (the prefix rule) is parked, out of T1/T2 but still moving to T2
// when matched, and returns to the LRU end of its list when its last linked child leaves. A block
// the cache withholds (OnWithhold: kept for the prefix rule, its children in a tier above) leaves
// its list the same way; it keeps its place as a rank that moves as the list would have moved it,
// and its restore puts it back at that place. Entries the search may not take (pinned, refused by
// the cache) are passed over; if the preferred list has none to give, the other list gives its LRU
// evictable entry. Victim cost: O(1) amortised plus the pinned entries passed over; a restore
// O(entries between its place and the nearer end of its list). Parameters: none.
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

class ArcPolicy final : public EvictionPolicy {
 public:
  static absl::StatusOr<std::unique_ptr<EvictionPolicy>> Create(const PolicyContext& ctx) {
    if (absl::Status s = CheckPolicyParams("arc", ctx.params, {}); !s.ok()) return s;
    if (absl::Status s = internal::CheckGhostIds("arc", ctx.capacity_slots, "the capacity");
        !s.ok()) {
      return s;
    }
    return std::unique_ptr<EvictionPolicy>(new ArcPolicy(ctx.capacity_slots));
  }

  void OnInsertKey(SlotId s, uint64_t id) override { key_[s] = Key{.id = id, .known = true}; }

  void OnMissKey(uint64_t id) override {
    const bool in_b1 = b1_.Contains(id);
    if (!in_b1 && !b2_.Contains(id)) return;
    SettleVictim(/*trim=*/true);  // a victim whose slot was never refilled
    Adapt(in_b1);
    incoming_ = Incoming{.id = id, .in_b2 = !in_b1, .valid = true};
  }

  void OnInsert(SlotId s) override {
    const Key k = key_[s];
    const bool adapted = incoming_.valid && k.known && incoming_.id == k.id;
    incoming_ = Incoming{};
    const bool in_b1 = k.known && b1_.Contains(k.id);
    if (k.known && (in_b1 || b2_.Contains(k.id))) {
      // A ghost hit. p moves with the ghost sizes before the victim joins them, as in the paper.
      if (!adapted) Adapt(in_b1);
      SettleVictim(/*trim=*/false);
      (in_b1 ? b1_ : b2_).Erase(k.id);
      PushFront(kT2, s);
    } else {
      SettleVictim(/*trim=*/true);
      PushFront(kT1, s);
    }
    pinned_[s] = false;
  }

  void OnLink(SlotId s, SlotId parent) override {
    links_.Link(s, parent);
    // A withheld parent would be parked by the next search that met it, refused: park it now.
    if (withheld_[parent] && !parked_[parent]) {
      parked_[parent] = true;
      order_[parent] = ++newest_;
    }
  }
  void OnAccess(SlotId s) override {
    if (Away(s)) {  // moves to T2 where it is now, or when it comes back
      if (!home_t2_[s]) away_t1_--;
      home_t2_[s] = true;
      if (!parked_[s]) order_[s] = ++newest_;
    } else {
      lists_.Remove(s);
      PushFront(kT2, s);
    }
  }

  void OnRemove(SlotId s) override {
    if (s == victim_) {
      // Ghost bookkeeping waits for the incoming block (OnInsert), which decides it.
      victim_from_t1_ = lists_.ListOf(s) == kT1 || (lists_.ListOf(s) == kParked && !home_t2_[s]);
      victim_id_ = key_[s];
      victim_pending_ = true;
      victim_ = SlotLists::kNil;
    }
    if (Away(s) && !home_t2_[s]) away_t1_--;
    if (withheld_[s]) withheld_count_--;
    withheld_[s] = parked_[s] = false;
    lists_.Remove(s);
    key_[s] = Key{};
    if (const SlotId p = links_.Remove(s); p != ChildLinks::kNone && parked_[p]) {
      parked_[p] = false;  // back at the LRU end of its list
      if (withheld_[p]) {
        order_[p] = --oldest_;
      } else {
        if (!home_t2_[p]) away_t1_--;
        lists_.Remove(p);
        PushBack(home_t2_[p] ? kT2 : kT1, p);
      }
    }
  }
  void OnPin(SlotId s) override { pinned_[s] = true; }
  void OnUnpin(SlotId s) override { pinned_[s] = false; }

  // Withheld (a block the cache keeps for the prefix rule, taken out of the candidates): out of its
  // list, still counted in |T1| or |T2|, and its place kept as an order that moves as the list
  // would have moved it (an access to T2's MRU end, a park, an unpark to the LRU end), so that its
  // restore puts it back where it would be had it never left.
  bool OnWithhold(SlotId s) override {
    if (!parked_[s]) {
      home_t2_[s] = lists_.ListOf(s) == kT2;
      if (!home_t2_[s]) away_t1_++;
    }
    lists_.Remove(s);
    withheld_[s] = true;
    withheld_count_++;
    return true;
  }
  void OnRestore(SlotId s) override {
    withheld_[s] = false;
    withheld_count_--;
    if (parked_[s]) return InsertByOrder(kParked, s);
    if (!home_t2_[s]) away_t1_--;
    InsertByOrder(home_t2_[s] ? kT2 : kT1, s);
  }

  std::optional<SlotId> PickVictim(absl::FunctionRef<bool(SlotId)> can_evict) override {
    SettleVictim(/*trim=*/true);  // a victim whose slot was never refilled
    const double t1 = T1Size();
    const bool b2_hit = incoming_.valid && incoming_.in_b2;
    const uint16_t first = (t1 > 0 && (t1 > p_ || (t1 == p_ && b2_hit))) ? kT1 : kT2;
    for (const uint16_t list : {first, static_cast<uint16_t>(kT1 + kT2 - first)}) {
      for (SlotId s = lists_.Back(list); s != SlotLists::kNil;) {
        const SlotId newer = lists_.Newer(s);
        if (!pinned_[s]) {
          if (can_evict(s)) return victim_ = s;
          if (links_.children(s) > 0) {
            home_t2_[s] = list == kT2;
            if (list == kT1) away_t1_++;
            parked_[s] = true;
            lists_.Remove(s);
            PushFront(kParked, s);
          }
        }
        s = newer;
      }
    }
    for (SlotId s = lists_.Back(kParked); s != SlotLists::kNil; s = lists_.Newer(s)) {
      if (!pinned_[s] && can_evict(s)) return victim_ = s;
    }
    return std::nullopt;
  }

 private:
  static constexpr uint16_t kT1 = 0;
  static constexpr uint16_t kT2 = 1;
  static constexpr uint16_t kParked = 2;
  struct Key {
    uint64_t id = 0;
    bool known = false;
  };

  explicit ArcPolicy(uint32_t capacity)
      : capacity_(capacity),
        lists_(capacity, 3),
        links_(capacity),
        home_t2_(capacity, false),
        parked_(capacity, false),
        withheld_(capacity, false),
        order_(capacity, 0),
        b1_(capacity),
        b2_(capacity),
        key_(capacity),
        pinned_(capacity, false) {}

  // Out of T1 and T2: parked or withheld.
  bool Away(SlotId s) const { return parked_[s] || withheld_[s]; }
  // |T1| and |T2| count their parked and withheld entries too.
  int64_t T1Size() const { return lists_.Size(kT1) + away_t1_; }
  int64_t T2Size() const {
    return lists_.Size(kT2) + (lists_.Size(kParked) + withheld_count_ - away_t1_);
  }

  // Every list is ordered by order_, greatest at the front.
  void PushFront(uint16_t list, SlotId s) {
    order_[s] = ++newest_;
    lists_.PushFront(list, s);
  }
  void PushBack(uint16_t list, SlotId s) {
    order_[s] = --oldest_;
    lists_.PushBack(list, s);
  }
  void InsertByOrder(uint16_t list, SlotId s) {
    lists_.InsertByOrder(list, s, [this](SlotId x) { return order_[x]; });
  }

  // The paper's adaptation of p on a hit in B1 (grow T1's target) or B2 (shrink it).
  void Adapt(bool in_b1) {
    const double n1 = b1_.size(), n2 = b2_.size();
    if (in_b1) {
      p_ = std::min(p_ + std::max(n2 / n1, 1.0), static_cast<double>(capacity_));
    } else {
      p_ = std::max(p_ - std::max(n1 / n2, 1.0), 0.0);
    }
  }

  // Puts the last victim's id in its ghost list and, for a block inserted on a plain miss, trims
  // the ghost lists as the paper's case A / case B do. Sizes are those before the victim left.
  void SettleVictim(bool trim) {
    if (!victim_pending_) return;
    victim_pending_ = false;
    const int64_t c = capacity_;
    const int64_t t1 = T1Size() + (victim_from_t1_ ? 1 : 0);
    const int64_t t2 = T2Size() + (victim_from_t1_ ? 0 : 1);
    bool ghost = true;
    if (trim) {
      if (t1 + b1_.size() >= c) {
        if (t1 < c) {
          b1_.PopOldest();
        } else {
          ghost = false;  // T1 alone fills the cache: its LRU entry leaves no ghost
        }
      } else if (t1 + t2 + b1_.size() + b2_.size() >= 2 * c) {
        b2_.PopOldest();
      }
    }
    if (ghost && victim_id_.known) (victim_from_t1_ ? b1_ : b2_).Push(victim_id_.id);
  }

  const int64_t capacity_;
  double p_ = 0;     // target size of T1; fractional steps, as the paper's |B2|/|B1|
  SlotLists lists_;  // kT1, kT2, kParked; front: most recent
  internal::ChildLinks links_;
  std::vector<bool> home_t2_;   // for a parked or withheld slot: the list it returns to
  std::vector<bool> parked_;    // in kParked, or would be there but for being withheld
  std::vector<bool> withheld_;  // OnWithhold accepted, not yet restored
  std::vector<int64_t> order_;  // the place in its list (see PushFront); kept while withheld
  int64_t newest_ = 0;          // the last order_ given at a front
  int64_t oldest_ = 0;          // the last order_ given at a back
  uint32_t away_t1_ = 0;        // parked or withheld slots whose home is T1
  uint32_t withheld_count_ = 0;
  GhostList b1_, b2_;
  std::vector<Key> key_;
  std::vector<bool> pinned_;
  SlotId victim_ = SlotLists::kNil;  // returned by PickVictim, not yet removed
  bool victim_pending_ = false;      // removed, ghost bookkeeping not done yet
  bool victim_from_t1_ = false;
  Key victim_id_;
  struct Incoming {  // a ghost announced by OnMissKey, p already adapted
    uint64_t id = 0;
    bool in_b2 = false;
    bool valid = false;
  };
  Incoming incoming_;
};

}  // namespace

KVTIER_REGISTER_POLICY("arc", ArcPolicy);

}  // namespace kvtier
