// kv_adaptive: ARC that knows what a KV block is, with LRU and hit-density rules chosen by a
// shadow duel.
//
// Five structural facts about prefix-cached KV blocks and their tiers, none a tuned number:
// 1. Dead tips. The last block of a request is almost always partial; the next turn of the
//    conversation re-tokenises it into a block with another id, so it is the likeliest dead block
//    of all (on the Mooncake conversation trace 96 of 11,913 distinct last blocks ever return). A
//    block the policy sees end a request goes to a `dead` list, evicted before anything else. In
//    flat mode the end of a request is inferred from the access stream alone: blocks arrive in
//    prefix order, so a block's parent is the block accessed right before its insertion, and an
//    access whose parent is not the previous access starts a new request.
// 2. Long ghosts. A conversation returns for its next turn after many cache turnovers, so ARC's
//    ghost lists (B1, B2) remember `ghost_factor` x capacity ids each (default 4) instead of ARC's
//    c in all: a ghost costs 16 bytes where a block costs megabytes. T1 and T2, the target p and
//    its adaptation are ARC's (Megiddo and Modha, FAST'03, fractional steps).
// 3. The LRU regime. When the tier holds most of the reuse (large tiers), plain recency beats
//    ARC's split. Two metadata-only shadows (lib/policies/shadow_caches.h) of the ARC above and of
//    LRU, each on a hash sample of the ids, keep decayed hit counts; the real tier takes its victim
//    by last use while the LRU shadow leads, else by ARC's rule. Adaptive, as p is.
//    With tiers below that keep this tier's victims (PolicyContext::capacity_below_slots), the
//    shadows model the hierarchy: ARC here over a recency list of the size below, against one LRU
//    of both sizes (an LRU tier over a tier of its victims behaves as that).
// 4. Spare copies. A copy this tier holds while a tier above holds the block too (OnUpperCopy: a
//    promotion from here landed) costs nothing to evict, so it goes first; accesses meanwhile
//    read the copy above and do not count here. When the tier above lets the block go, this copy
//    is its demotion, though no bytes moved: it returns to the list it left, as most recent.
// 5. Hit density. Which block returns soon is told best by what kind of block it is: how long
//    ago it was last accessed (the gap between a conversation's turns) and whether it ended its
//    request. internal::HitDensity learns, per class (the log10 bucket of the block's previous
//    reuse gap; dead tips apart), hits per slot-access by age (LHD, Beckmann et al., NSDI'18),
//    from every access while its history (8 x capacity accesses) fits a fixed budget, from a
//    hash sample beyond: a trace's few hot blocks are in one sample and not another, and the
//    densities moved with them (H8). Its victim rule: the least dense of each class's least recent
//    block, from per-class recency lists (in a class, density is a function of age). A third
//    shadow runs that rule; it takes over from ARC's while it leads ARC's by more than the noise
//    (hysteresis), and LRU's still wins where it leads ARC's. Off with hit_density=0.
//
// With drop_dead_tips=1, DemoteVictim declines dead tips: the cache drops them instead of
// demoting them. Off by default: on the shared trace it moved the hit ratio by under 0.003 with a
// kv_adaptive host and cost up to 0.02 with a streaming one (docs/policies.md §8).
// The cache never calls OnMissKey; in cache mode requests are inferred from Commit's inserts
// instead: a run of two or more inserts, each linked (OnLink) to the one before, is a request's
// new blocks, and its last is the tip, dead once the run ends (the next insert does not link to
// it, or a Match touches, or an allocation asks for a victim). p adapts at insertion, as arc's.
// A parent the cache refuses (cached children in this tier) is parked until its last child
// leaves, then returns to the LRU end of its list; a withheld block (OnWithhold) leaves the lists
// and returns to the LRU end, or to T2's MRU end if it was accessed meanwhile. Parked and withheld
// blocks do not count in |T1| and |T2| (an approximation of arc's accounting). Victim cost: O(1)
// amortised plus pinned entries passed over; shadows O(1) per sampled access (hash lookups).
// Parameters: ghost_factor (4, 1..64; ghost_factor x capacity at most 2^30), drop_dead_tips (0,
// 0..1), hit_density (1, 0..1), rule (adaptive: the duel picks; arc, lru or density: every victim
// by that rule, for research), sample_seed (0, 0..65535: which ids the duel samples; a research
// knob to measure how much a result owes to the sample, docs/policies.md §8).
#include <array>
#include <cstdint>
#include <vector>

#include "kvtier/policy.h"
#include "lib/policies/child_links.h"
#include "lib/policies/ghost_list.h"
#include "lib/policies/hit_density.h"
#include "lib/policies/policy_params.h"
#include "lib/policies/shadow_caches.h"
#include "lib/policies/slot_list.h"

namespace kvtier {
namespace {

using internal::ChildLinks;
using internal::GhostLists;
using internal::HitDensity;
using internal::ShadowDuel;
using internal::SlotLists;

class KvAdaptivePolicy final : public EvictionPolicy {
 public:
  static absl::StatusOr<std::unique_ptr<EvictionPolicy>> Create(const PolicyContext& ctx) {
    if (absl::Status s = CheckPolicyParams(
            "kv_adaptive", ctx.params,
            {"ghost_factor", "drop_dead_tips", "hit_density", "rule", "sample_seed"});
        !s.ok()) {
      return s;
    }
    absl::StatusOr<uint32_t> g =
        internal::ParamUint("kv_adaptive", ctx.params, "ghost_factor", 4, 1, 64);
    if (!g.ok()) return g.status();
    absl::StatusOr<uint32_t> drop =
        internal::ParamUint("kv_adaptive", ctx.params, "drop_dead_tips", 0, 0, 1);
    if (!drop.ok()) return drop.status();
    absl::StatusOr<uint32_t> density =
        internal::ParamUint("kv_adaptive", ctx.params, "hit_density", 1, 0, 1);
    if (!density.ok()) return density.status();
    absl::StatusOr<int> rule = internal::ParamChoice("kv_adaptive", ctx.params, "rule", kAdaptive,
                                                     {"arc", "lru", "density", "adaptive"});
    if (!rule.ok()) return rule.status();
    absl::StatusOr<uint32_t> seed =
        internal::ParamUint("kv_adaptive", ctx.params, "sample_seed", 0, 0, 65535);
    if (!seed.ok()) return seed.status();
    if (*rule == static_cast<int>(ShadowDuel::Rule::kDensity) && *density == 0) {
      return absl::InvalidArgumentError("kv_adaptive: rule=density needs hit_density=1");
    }
    if (absl::Status s = internal::CheckGhostIds("kv_adaptive", uint64_t{ctx.capacity_slots} * *g,
                                                 "ghost_factor x capacity");
        !s.ok()) {
      return s;
    }
    return std::unique_ptr<EvictionPolicy>(new KvAdaptivePolicy(
        ctx.capacity_slots, ctx.capacity_below_slots, *g, *drop == 1, *density == 1, *rule, *seed));
  }

  void OnMissKey(uint64_t id) override {
    flat_ = true;
    AfterPrevious(id, kUnknown);
    const int g = ghosts_.Find(id);
    miss_ = Miss{.id = id, .parent = prev_id_, .in_b1 = g == kB1, .in_b2 = g == kB2, .valid = true};
    if (miss_.in_b1 || miss_.in_b2) Adapt(miss_.in_b1);
    prev_id_ = id;
    prev_slot_ = SlotLists::kNil;
  }
  void OnInsertKey(SlotId s, uint64_t id) override { slots_[s] = Slot{.id = id, .known = true}; }
  void OnInsert(SlotId s) override {
    if (!flat_) {  // cache mode: s may continue the run of inserts that ended at run_tip_
      ResolveAwaiting();
      awaiting_ = run_tip_;
      awaiting_len_ = run_len_;
      run_tip_ = s;
      run_len_ = 1;
    }
    Slot& st = slots_[s];
    const bool adapted = miss_.valid && st.known && miss_.id == st.id;
    if (adapted) st.parent = miss_.parent;
    const int g = adapted || !st.known ? GhostLists::kNone : ghosts_.Find(st.id);
    const bool in_b1 = adapted ? miss_.in_b1 : g == kB1;
    const bool in_b2 = adapted ? miss_.in_b2 : g == kB2;
    if (!adapted && (in_b1 || in_b2)) Adapt(in_b1);
    if (in_b1 || in_b2) ghosts_.Erase(st.id);
    miss_ = Miss{};
    const uint8_t cls = HitDensity::ClassOf(false, in_b1 || in_b2 ? HitDensity::kGapUnknown : 0);
    stamps_[s] = Stamp{.last = ++now_, .cls = cls};
    if (st.known && duel_.Watched(st.id)) duel_.Access(st.id, cls, now_);
    Push(in_b1 || in_b2 ? kT2 : kT1, s, /*front=*/true);
    if (flat_) prev_slot_ = s;
  }
  void OnLink(SlotId s, SlotId parent) override {
    links_.Link(s, parent);
    if (!flat_ && s == run_tip_ && awaiting_ != SlotLists::kNil && parent == awaiting_) {
      run_len_ = awaiting_len_ + 1;  // the run goes on
      awaiting_ = SlotLists::kNil;
    }
  }
  void OnAccess(SlotId s) override {
    if (!flat_) EndRun(s);  // a Match: a new request began
    Slot& st = slots_[s];
    ++now_;
    if (st.spare) return;  // a copy above was read, not this one
    if (flat_) {
      AfterPrevious(st.id, st.parent);
      prev_id_ = st.id;
      prev_slot_ = s;
    }
    const uint8_t cls = HitDensity::ClassOf(false, HitDensity::GapBucket(now_ - stamps_[s].last));
    stamps_[s] = Stamp{.last = now_, .cls = cls};
    if (st.known && duel_.Watched(st.id)) duel_.Access(st.id, cls, now_);
    if (st.away) {
      st.home = kT2;
      st.touched = true;
      return;
    }
    Unlink(s);
    Push(kT2, s, /*front=*/true);
  }
  void OnRemove(SlotId s) override {
    if (s == run_tip_) run_tip_ = SlotLists::kNil;
    if (s == awaiting_) awaiting_ = SlotLists::kNil;
    Slot& st = slots_[s];
    if (s == victim_ && st.known && !st.spare) {  // a spare's block is still cached above
      const uint16_t from = st.away ? st.home : lists_.ListOf(s);
      ghosts_.Push(from == kT2 ? kB2 : kB1, st.id);
    }
    if (s == victim_) victim_ = SlotLists::kNil;
    if (s == prev_slot_) prev_slot_ = SlotLists::kNil;
    Unlink(s);
    st = Slot{};
    if (const SlotId p = links_.Remove(s);
        p != ChildLinks::kNone && slots_[p].parked && links_.children(p) == 0) {
      slots_[p].parked = false;
      if (!slots_[p].withheld) Return(p);
    }
  }
  // A spare copy (the block is cached above too) is the first victim: evicting it loses nothing.
  // When the tier above lets the block go, this copy is its demotion: back to the list it left.
  void OnUpperCopy(SlotId s, bool held_above) override {
    Slot& st = slots_[s];
    if (st.spare == held_above) return;  // the cache never repeats itself; cheap to be sure
    st.spare = held_above;
    if (st.known && duel_.Watched(st.id)) {
      if (held_above)
        duel_.Dead(st.id);
      else
        duel_.Arrive(st.id, stamps_[s].cls, now_);
    }
    if (st.away) return;  // Return() puts it in the list it belongs to then
    if (held_above) {
      st.spare_home = Home(s);
      Unlink(s);
      lists_.PushFront(kSpare, s);
    } else {
      lists_.Remove(s);
      Push(st.spare_home, s, /*front=*/true);
    }
  }
  void OnPin(SlotId s) override { slots_[s].pinned = true; }
  void OnUnpin(SlotId s) override { slots_[s].pinned = false; }
  bool OnWithhold(SlotId s) override {
    Slot& st = slots_[s];
    if (!st.away) Leave(s);
    st.withheld = true;
    return true;
  }
  void OnRestore(SlotId s) override {
    slots_[s].withheld = false;
    if (!slots_[s].parked) Return(s);
  }

  std::optional<SlotId> PickVictim(absl::FunctionRef<bool(SlotId)> can_evict) override {
    if (!flat_) EndRun(SlotLists::kNil);  // an allocation: the next request began
    // An unpinned candidate: the victim if it may go now; refused for the prefix rule (it has
    // cached children), parked until childless. The caller has its next candidate already.
    const auto offer = [&](SlotId s) {
      if (can_evict(s)) {
        victim_ = s;
        return true;
      }
      if (links_.children(s) > 0) {
        Leave(s);
        slots_[s].parked = true;
      }
      return false;
    };
    const auto take = [&](uint16_t list) -> std::optional<SlotId> {
      for (SlotId s = lists_.Back(list); s != SlotLists::kNil;) {
        const SlotId newer = lists_.Newer(s);
        if (!slots_[s].pinned && offer(s)) return s;
        s = newer;
      }
      return std::nullopt;
    };
    if (auto v = take(kSpare)) return v;
    if (auto v = take(kDead)) return v;
    const auto rule = rule_ == kAdaptive ? duel_.Choose() : static_cast<ShadowDuel::Rule>(rule_);
    // The LRU and hit-density rules take from the classes' recency lists, merged: the candidate
    // with the least key among each class's least recent unpinned slot, offered as take() offers
    // the slots of one list.
    const auto take_by_class = [&](auto key) -> std::optional<SlotId> {
      std::array<SlotId, HitDensity::kGapBuckets> at;  // each class's next candidate
      for (int c = 0; c < HitDensity::kGapBuckets; ++c) {
        at[c] = by_class_.Back(static_cast<uint16_t>(c));
      }
      for (;;) {
        int cls = -1;
        uint64_t least = ~uint64_t{0};
        for (int c = 0; c < HitDensity::kGapBuckets; ++c) {
          SlotId& s = at[c];
          while (s != SlotLists::kNil && slots_[s].pinned) s = by_class_.Newer(s);
          if (s == SlotLists::kNil) continue;
          if (const uint64_t k = key(s); k < least) {
            least = k;
            cls = c;
          }
        }
        if (cls < 0) return std::nullopt;
        const SlotId s = at[cls];
        at[cls] = by_class_.Newer(s);
        if (offer(s)) return s;
      }
    };
    if (rule == ShadowDuel::Rule::kLru) {
      // The least recently used of all: the oldest of the classes' oldest.
      if (auto v = take_by_class([&](SlotId s) { return stamps_[s].last; })) return v;
    } else if (rule == ShadowDuel::Rule::kDensity) {
      // LHD's rule: the least dense of the classes' least recent blocks. In a class density is a
      // function of age, so this is LHD's victim wherever density does not rise with age; it
      // matched 32 random samples per victim in the study (docs/policies.md §8, H6) at a fraction
      // of the cost.
      if (auto v = take_by_class([&](SlotId s) {
            return duel_.density().Rank(stamps_[s].cls, now_ - stamps_[s].last);
          })) {
        return v;
      }
    }
    const double t1 = lists_.Size(kT1);
    const bool t1_first = t1 > 0 && (t1 > p_ || (t1 == p_ && miss_.valid && miss_.in_b2));
    for (const uint16_t list : {t1_first ? kT1 : kT2, t1_first ? kT2 : kT1}) {
      if (auto v = take(list)) return v;
    }
    for (SlotId s = lists_.Back(kParked); s != SlotLists::kNil; s = lists_.Newer(s)) {
      if (!slots_[s].pinned && can_evict(s)) return victim_ = s;
    }
    return std::nullopt;
  }
  // A dead tip is not expected back: the tier below should not spend a slot on it.
  bool DemoteVictim(SlotId s) override {
    return !drop_dead_tips_ || slots_[s].away || lists_.ListOf(s) != kDead;
  }

 private:
  static constexpr uint16_t kT1 = 0, kT2 = 1, kDead = 2, kParked = 3, kSpare = 4;
  static constexpr int kB1 = 0, kB2 = 1;         // ghosts_' lists
  static constexpr uint64_t kUnknown = ~0ull;    // parent not known (no OnMissKey before it)
  static constexpr uint64_t kStart = ~0ull - 1;  // inserted before any other access
  struct Slot {
    uint64_t id = 0;
    uint64_t parent = kUnknown;  // flat mode: the id accessed right before its insertion
    bool known = false;
    bool pinned = false;
    bool away = false;          // out of T1/T2/dead: parked or withheld
    bool parked = false;        // refused for the prefix rule, back when its last child leaves
    bool withheld = false;      // OnWithhold accepted, not yet restored
    bool touched = false;       // accessed while away: comes back at T2's MRU end
    bool spare = false;         // OnUpperCopy: a tier above holds the block too
    uint16_t home = kT1;        // the list an away slot returns to
    uint16_t spare_home = kT1;  // the list a spare returns to when the copy above goes
  };
  struct Stamp {
    uint64_t last = 0;  // now_ at the slot's last access
    uint8_t cls = 0;    // HitDensity class at its last access
  };
  struct Miss {  // the block OnMissKey announced, p already adapted
    uint64_t id = 0;
    uint64_t parent = kUnknown;
    bool in_b1 = false, in_b2 = false, valid = false;
  };

  static constexpr int kAdaptive = 3;  // `rule`: the duel chooses (else a ShadowDuel::Rule)

  KvAdaptivePolicy(uint32_t capacity, uint64_t below, uint32_t ghost_factor, bool drop_dead_tips,
                   bool hit_density, int rule, uint32_t sample_seed)
      : drop_dead_tips_(drop_dead_tips),
        rule_(rule),
        capacity_(capacity),
        lists_(capacity, 5),
        by_class_(capacity, HitDensity::kGapBuckets),
        links_(capacity),
        ghosts_({capacity * ghost_factor, capacity * ghost_factor}),
        duel_(capacity, below, ghost_factor, hit_density, sample_seed),
        slots_(capacity),
        stamps_(capacity) {}

  // Flat mode: block `id`, chained from `parent`, follows the previous access. A known parent
  // that is not the previous access means a new request began: the previous block ended one.
  void AfterPrevious(uint64_t id, uint64_t parent) {
    if (parent == kUnknown || parent == prev_id_ || id == prev_id_) return;
    if (prev_id_ == kStart) return;
    if (duel_.Watched(prev_id_)) duel_.Tip(prev_id_);
    const SlotId s = prev_slot_;
    if (s == SlotLists::kNil || slots_[s].id != prev_id_) return;
    MakeDead(s);
  }

  // Cache mode. The cache never calls OnMissKey, but Commit inserts a request's new blocks in
  // chain order, each linked (OnLink) to the one before: a run of linked inserts is one request's,
  // and its last block is the request's tip. A run ends when the next insert does not link to it,
  // or at the next Match (OnAccess) or allocation (PickVictim). Only runs of two or more blocks
  // count: a tier that receives blocks one by one (the host, from device evictions) sees no
  // request structure.
  void ResolveAwaiting() {  // the insert after `awaiting_` did not link to it: its run ended
    if (awaiting_ != SlotLists::kNil && awaiting_len_ >= 2) MakeDead(awaiting_);
    awaiting_ = SlotLists::kNil;
  }
  void EndRun(SlotId accessed) {
    ResolveAwaiting();
    if (run_tip_ != SlotLists::kNil && run_tip_ != accessed && run_len_ >= 2) {
      if (slots_[run_tip_].known && duel_.Watched(slots_[run_tip_].id)) {
        duel_.Tip(slots_[run_tip_].id);
      }
      MakeDead(run_tip_);
    }
    run_tip_ = SlotLists::kNil;
    run_len_ = 0;
  }
  void MakeDead(SlotId s) {
    if (slots_[s].away || slots_[s].spare || lists_.ListOf(s) == kDead) return;
    lists_.Remove(s);
    lists_.PushFront(kDead, s);
  }

  void Push(uint16_t list, SlotId s, bool front) {
    const auto cls = static_cast<uint16_t>(HitDensity::GapOf(stamps_[s].cls));
    if (front) {
      lists_.PushFront(list, s);
      by_class_.PushFront(cls, s);
    } else {
      lists_.PushBack(list, s);
      by_class_.PushBack(cls, s);
    }
  }
  void Unlink(SlotId s) {
    lists_.Remove(s);
    by_class_.Remove(s);
  }
  // Out of the candidate lists (parked or withheld); remembers where it was.
  void Leave(SlotId s) {
    Slot& st = slots_[s];
    st.home = st.spare ? st.spare_home : Home(s);
    st.touched = false;
    st.away = true;
    Unlink(s);
    lists_.PushFront(kParked, s);
  }
  void Return(SlotId s) {
    Slot& st = slots_[s];
    st.away = false;
    lists_.Remove(s);
    if (st.spare) {  // a tier above took it meanwhile: home is where it goes when let go
      st.spare_home = st.home;
      lists_.PushFront(kSpare, s);
      return;
    }
    Push(st.home, s, /*front=*/st.touched);  // touched: home is T2 (OnAccess set both)
  }
  // The list a slot in T1, T2 or dead goes back to: a dead tip that returns is live after all.
  uint16_t Home(SlotId s) const { return lists_.ListOf(s) == kDead ? kT1 : lists_.ListOf(s); }

  void Adapt(bool in_b1) {
    const double n1 = ghosts_.size(kB1), n2 = ghosts_.size(kB2);
    p_ = in_b1 ? std::min(p_ + std::max(n2 / n1, 1.0), static_cast<double>(capacity_))
               : std::max(p_ - std::max(n1 / n2, 1.0), 0.0);
  }

  const bool drop_dead_tips_;  // DemoteVictim declines dead tips
  const int rule_;             // kAdaptive, or the ShadowDuel::Rule every victim follows
  const uint32_t capacity_;
  double p_ = 0;        // ARC's target size of T1
  SlotLists lists_;     // kT1, kT2, kDead, kParked, kSpare; front: most recent
  SlotLists by_class_;  // every slot in T1, T2 or dead, by HitDensity class (gap bucket) and use
  ChildLinks links_;
  GhostLists ghosts_;  // kB1: ids evicted from T1 (and dead), kB2: from T2
  internal::ShadowDuel duel_;
  std::vector<Slot> slots_;
  std::vector<Stamp> stamps_;
  Miss miss_;
  bool flat_ = false;                        // OnMissKey seen: a simulation, infer requests
  uint64_t prev_id_ = kStart;                // flat mode: the block accessed last
  SlotId prev_slot_ = SlotLists::kNil;       // its slot, if resident
  SlotId victim_ = SlotLists::kNil;          // returned by PickVictim, not yet removed
  SlotId run_tip_ = SlotLists::kNil;         // cache mode: the last insert, its run maybe going on
  SlotId awaiting_ = SlotLists::kNil;        // the run tip before it, until run_tip_'s OnLink
  uint32_t run_len_ = 0, awaiting_len_ = 0;  // their runs' lengths
  uint64_t now_ = 0;                         // access clock: OnInsert and OnAccess calls
};

}  // namespace

KVTIER_REGISTER_POLICY("kv_adaptive", KvAdaptivePolicy);

}  // namespace kvtier
