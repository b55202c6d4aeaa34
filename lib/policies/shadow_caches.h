// ShadowDuel: metadata-only caches over block ids, ARC (with dead-tip and long ghost lists, as
// kv_adaptive runs itself), LRU and, with `density`, hit density (HitDensity's rule as the tier
// runs it), fed a hash-sampled share of the accesses, whose decayed hit counts say which victim
// rule the real tier should follow now (set sampling, as SHARDS samples a trace: each shadow holds
// capacity/R ids and sees the ids whose hash falls in the lowest 1/R of its range).
// HitDensity learns from a sample of its own, as large as its history's budget allows: every
// access while the window (8 x capacity) fits in kLearnBudget entries, else one id in
// window / kLearnBudget. A trace's few hot blocks (the roots every request shares) weigh on a
// class's densities, and a 1-in-R sample holds some of them and not others: on the shared trace
// the hit ratio at 1 % moved by up to 0.008 with the choice of sample, by up to 0.003 once the
// learner saw every access (docs/policies.md §8, H8). The budget also bounds the learner's memory
// (about 3 MB a tier at most), where a 1-in-R sample grew with the tier (24 bytes a slot).
//
// A tier whose victims go on to tiers below (a device over a host) is not the end of the cache: a
// block it evicts may still hit below. So each shadow models the hierarchy as the real one would
// be under its rule: ARC (or hit density) at this tier's size with its victims kept in a recency
// list of the size below (a hit there counts, and the block comes back up), against one LRU of
// both sizes (an LRU tier over a tier that keeps its victims). With nothing below, they are plain.
//
// Nothing here is tuned to a trace: R = min(16, capacity / 128) keeps each shadow at >= 128 ids,
// kLearnBudget (2^15 accesses of 24 bytes, 16 classes x 24 age buckets to fill) is a memory bound,
// a hit's weight falls by 1/e over 4 shadow turnovers (4 x capacity / R sampled accesses), the
// tiers below are modelled as far as the ghosts reach (ghost_factor x capacity ids; a larger list
// moved the results both ways on the shared trace), and hit density must lead ARC by the noise of
// the counts to take over (Choose). Not thread-safe: a policy runs under its tier's lock.
#ifndef KVTIER_LIB_POLICIES_SHADOW_CACHES_H_
#define KVTIER_LIB_POLICIES_SHADOW_CACHES_H_

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <optional>

#include "absl/container/flat_hash_map.h"
#include "lib/policies/ghost_list.h"
#include "lib/policies/hit_density.h"

namespace kvtier::internal {

class ShadowDuel {
 public:
  enum class Rule { kArc, kLru, kDensity };
  // The learner's history holds at most this many accesses: it learns from every access while
  // its window (8 x capacity) fits, from a hash sample of window / kLearnBudget beyond.
  static constexpr uint64_t kLearnBudget = uint64_t{1} << 15;
  // below_slots: PolicyContext::capacity_below_slots, the tiers below that take this one's victims.
  // density: duel a third rule too, hit density (HitDensity), learnt from its own sample.
  // sample_seed: which ids are sampled (each value picks other sets).
  ShadowDuel(uint32_t capacity_slots, uint64_t below_slots, uint32_t ghost_factor, bool density,
             uint32_t sample_seed = 0)
      : salt_(sample_seed * 0x632BE59BD9B4E019ull),
        rate_(std::max<uint32_t>(1, std::min<uint32_t>(16, capacity_slots / 128))),
        learn_rate_(
            static_cast<uint32_t>((Window(capacity_slots) + kLearnBudget - 1) / kLearnBudget)),
        shadow_below_((uint64_t{1} << 32) / rate_),
        learn_below_((uint64_t{1} << 32) / learn_rate_),
        watch_below_(density ? std::max(shadow_below_, learn_below_) : shadow_below_),
        c_(std::max<uint32_t>(1, capacity_slots / rate_)),
        b_(static_cast<uint32_t>(
            std::min<uint64_t>(below_slots / rate_, uint64_t{c_} * ghost_factor))),
        keep_(1.0 - 1.0 / (4.0 * c_)),
        arc_({c_, c_, c_, c_ * ghost_factor, c_ * ghost_factor}),
        below_({std::max<uint32_t>(b_, 1)}),
        lru_({c_ + b_, c_ + b_}),
        density_on_(density),
        // A table every kPeriod shadow samples' worth of accesses, as many accesses as before
        // the learner had a sample of its own (and never under kPeriod samples of its own).
        density_(density ? Window(capacity_slots) : 0, learn_rate_,
                 HitDensity::kPeriod * std::max<uint32_t>(1, rate_ / learn_rate_)),
        lhd_([&] {
          const uint32_t l = density ? c_ : 0;  // nothing kept when the rule is off
          return GhostLists({l, l, l, l, l, l, l, l});
        }()),
        lhd_below_({std::max<uint32_t>(b_, 1)}) {}

  // Whether the duel watches id at all: the learner's sample or the shadows' (one is part of the
  // other: both are the ids whose hash falls below a threshold). Only these reach Access, Tip,
  // Arrive and Dead.
  bool Watched(uint64_t id) const { return Hash(id) < watch_below_; }
  // One access of a watched id (a hit or a miss, as the real tier will see it), of HitDensity
  // class `cls` at the tier's access clock `now`.
  void Access(uint64_t id, uint8_t cls, uint64_t now) {
    if (density_on_ && Hash(id) < learn_below_) density_.Observe(id, cls, now);
    if (!InShadows(id)) return;
    arc_hits_ = arc_hits_ * keep_ + (ArcAccess(id) ? 1 : 0);
    lru_hits_ = lru_hits_ * keep_ + (LruAccess(id) ? 1 : 0);
    if (density_on_) lhd_hits_ = lhd_hits_ * keep_ + (LhdAccess(id, cls, now) ? 1 : 0);
  }
  // The block arrived again without being asked for (a tier above let it go: it is demoted here
  // though no bytes moved): as Access, but no shadow counts a hit and nothing is learnt.
  void Arrive(uint64_t id, uint8_t cls, uint64_t now) {
    if (!InShadows(id)) return;
    ArcAccess(id);
    LruAccess(id);
    if (density_on_) LhdAccess(id, cls, now);
  }
  // The copy became a spare (a tier above holds the block): the real tier evicts those first, so
  // the shadows do too.
  void Dead(uint64_t id) {
    if (!InShadows(id)) return;
    if (const int g = arc_.Find(id); g == kT1 || g == kT2) arc_.Push(kDead, id);
    if (lru_.Find(id) == kLru) lru_.Push(kLruDead, id);
    if (density_on_) LhdEvict(id);
  }
  // The block was the last of its request: evicted first, as a spare, and learnt as a tip.
  void Tip(uint64_t id) {
    Dead(id);
    if (density_on_) density_.MarkTip(id);
  }
  // The rule the tier should follow now: hit density or ARC, whichever leads, with hysteresis (the
  // one not in force takes over only when it leads by about one standard deviation of the
  // difference of two decayed hit counts, the square root of the count: where ARC's regime ends
  // the two score within noise of each other, and a tier that alternates between them keeps what
  // neither would, docs/policies.md §8, H6); then recency (LRU) where it leads that one (Pick).
  Rule Choose() {
    if (density_on_) density_leads_ = DensityLeads(density_leads_, arc_hits_, lhd_hits_);
    return Pick(density_leads_, arc_hits_, lru_hits_, lhd_hits_);
  }
  // LRU's rule where its shadow leads ARC's and, while hit density is in force, density's too;
  // else the one in force. (LRU over ARC alone would hand a tier that density serves best to
  // recency whenever recency beats ARC: H7.)
  static Rule Pick(bool density_leads, double arc_hits, double lru_hits, double lhd_hits) {
    if (lru_hits > arc_hits && (!density_leads || lru_hits > lhd_hits)) return Rule::kLru;
    return density_leads ? Rule::kDensity : Rule::kArc;
  }
  // The hysteresis: whether hit density is (still) in force, given whether it was.
  static bool DensityLeads(bool was, double arc_hits, double lhd_hits) {
    const double margin = std::sqrt(std::max(arc_hits, lhd_hits));
    return was ? lhd_hits + margin > arc_hits : lhd_hits > arc_hits + margin;
  }
  const HitDensity& density() const { return density_; }
  double arc_hits() const { return arc_hits_; }  // decayed
  double lru_hits() const { return lru_hits_; }
  double lhd_hits() const { return lhd_hits_; }

 private:
  // HitDensity's window: 8 x the tier's capacity, in accesses (at least 8).
  static uint64_t Window(uint32_t capacity_slots) {
    return uint64_t{8} * std::max<uint32_t>(capacity_slots, 1);
  }
  // The samples: the ids whose hash falls below 2^32 / rate (all of them at rate 1).
  uint32_t Hash(uint64_t id) const {
    return static_cast<uint32_t>(((id ^ salt_) * 0x9E3779B97F4A7C15ull) >> 32);
  }
  bool InShadows(uint64_t id) const { return Hash(id) < shadow_below_; }

  // The lists of the shadow ARC (resident: T1, T2, dead; ghosts: B1, B2) and of the shadow LRU,
  // each an LRU set of ids; an id is in one list at most, and moves by a Push.
  static constexpr int kT1 = 0, kT2 = 1, kDead = 2, kB1 = 3, kB2 = 4;
  static constexpr int kLru = 0, kLruDead = 1;

  // ARC at this tier's size; what it evicts goes into the recency list of the tiers below, where a
  // later access hits too (and leaves it: the block comes back up).
  bool ArcAccess(uint64_t id) {
    const int g = arc_.Find(id);
    if (g == kT1 || g == kT2 || g == kDead) {
      arc_.Push(kT2, id);
      return true;
    }
    const bool below = b_ > 0 && below_.Erase(id) != GhostLists::kNone;
    const bool in_b1 = g == kB1, in_b2 = g == kB2;
    const double n1 = arc_.size(kB1), n2 = arc_.size(kB2);
    if (in_b1) p_ = std::min<double>(c_, p_ + std::max(n2 / n1, 1.0));
    if (in_b2) p_ = std::max(0.0, p_ - std::max(n1 / n2, 1.0));
    const uint32_t t1 = arc_.size(kT1);
    if (t1 + arc_.size(kT2) + arc_.size(kDead) >= c_) {
      std::optional<uint64_t> victim;
      int ghost = kB1;
      if (auto d = arc_.Oldest(kDead)) {
        victim = d;
      } else if (t1 > 0 && (t1 > p_ || (in_b2 && t1 == p_))) {
        victim = arc_.Oldest(kT1);
      } else if (arc_.size(kT2) > 0) {
        victim = arc_.Oldest(kT2);
        ghost = kB2;
      }
      if (victim) {
        arc_.Push(ghost, *victim);
        if (b_ > 0) below_.Push(0, *victim);  // the oldest there drops out
      }
    }
    arc_.Push(in_b1 || in_b2 ? kT2 : kT1, id);
    return below;
  }
  bool LruAccess(uint64_t id) {
    const bool hit = lru_.Erase(id) != GhostLists::kNone;
    if (!hit && lru_.size(kLru) + lru_.size(kLruDead) >= c_ + b_) {
      lru_.PopOldest(lru_.size(kLruDead) > 0 ? kLruDead : kLru);
    }
    lru_.Push(kLru, id);
    return hit;
  }

  // LHD at this tier's size over the same hierarchy as ARC's, as the tier runs it: one recency
  // list per class (its gap bucket), the victim the least dense of their oldest.
  struct LhdStamp {
    uint64_t time;
    uint8_t cls;
  };
  static_assert(HitDensity::kGapBuckets == 8);  // lhd_'s lists
  bool LhdAccess(uint64_t id, uint8_t cls, uint64_t now) {
    const int list = HitDensity::GapOf(cls);
    const LhdStamp stamp{.time = now, .cls = cls};
    if (const auto [it, fresh] = lhd_stamps_.try_emplace(id, stamp); !fresh) {
      it->second = stamp;
      lhd_.Push(list, id);
      return true;
    }
    // A miss, its stamp in already: over capacity, the victim is taken from the lists, which it
    // is not in yet.
    const bool below = b_ > 0 && lhd_below_.Erase(id) != GhostLists::kNone;
    if (lhd_stamps_.size() > c_) {
      std::optional<uint64_t> victim;
      uint64_t least = ~uint64_t{0};
      for (int c = 0; c < HitDensity::kGapBuckets; ++c) {
        const std::optional<uint64_t> oldest = lhd_.Oldest(c);
        if (!oldest) continue;
        const LhdStamp& st = lhd_stamps_.find(*oldest)->second;
        if (const uint64_t r = density_.Rank(st.cls, now - st.time); r < least) {
          least = r;
          victim = oldest;
        }
      }
      if (victim) LhdEvict(*victim);
    }
    lhd_.Push(list, id);
    return below;
  }
  void LhdEvict(uint64_t id) {
    if (lhd_stamps_.erase(id) == 0) return;
    lhd_.Erase(id);
    if (b_ > 0) lhd_below_.Push(0, id);
  }

  const uint64_t salt_;                 // from sample_seed; 0 for the default sample
  const uint32_t rate_;                 // R: the shadows see one id in R
  const uint32_t learn_rate_;           // HitDensity learns from one id in learn_rate_
  const uint64_t shadow_below_;         // the shadows' sample: Hash(id) < shadow_below_
  const uint64_t learn_below_;          // the learner's
  const uint64_t watch_below_;          // their union (the larger), or the shadows' alone
  const uint32_t c_;                    // each shadow's capacity in ids
  const uint32_t b_;                    // the tiers below it, in ids
  const double keep_;                   // decay per sampled access
  double p_ = 0;                        // the shadow ARC's T1 target
  GhostLists arc_, below_, lru_;        // bounded LRU sets of ids, see above
  double arc_hits_ = 0, lru_hits_ = 0;  // decayed hit counts
  const bool density_on_;               // the third rule is in the duel
  HitDensity density_;                  // what the tier and the LHD shadow rank blocks by
  GhostLists lhd_;                      // the LHD shadow's ids, a recency list per class
  absl::flat_hash_map<uint64_t, LhdStamp> lhd_stamps_;  // their last access
  GhostLists lhd_below_;                                // its victims, in the tiers below
  double lhd_hits_ = 0;
  bool density_leads_ = false;  // Choose()'s last pick between hit density and ARC
};

}  // namespace kvtier::internal

#endif  // KVTIER_LIB_POLICIES_SHADOW_CACHES_H_
