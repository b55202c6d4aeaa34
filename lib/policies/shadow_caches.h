// ShadowDuel: two metadata-only caches over block ids, ARC (with dead-tip and long ghost lists, as
// kv_adaptive runs itself) and LRU, fed a hash-sampled share of the accesses, whose decayed hit
// counts say which victim rule the real tier should follow now (set sampling, as SHARDS samples a
// trace: each shadow holds capacity/R ids and sees the ids with hash % R == 0).
//
// Nothing here is tuned to a trace: R = min(16, capacity / 128) keeps each shadow at >= 128 ids,
// a hit's weight falls by 1/e over 4 shadow turnovers (4 x capacity / R sampled accesses). Not
// thread-safe: a policy runs under its tier's lock.
#ifndef KVTIER_LIB_POLICIES_SHADOW_CACHES_H_
#define KVTIER_LIB_POLICIES_SHADOW_CACHES_H_

#include <algorithm>
#include <cstdint>

#include "lib/policies/ghost_list.h"

namespace kvtier::internal {

class ShadowDuel {
 public:
  ShadowDuel(uint32_t capacity_slots, uint32_t ghost_factor)
      : rate_(std::max<uint32_t>(1, std::min<uint32_t>(16, capacity_slots / 128))),
        c_(std::max<uint32_t>(1, capacity_slots / rate_)),
        keep_(1.0 - 1.0 / (4.0 * c_)),
        t1_(c_),
        t2_(c_),
        dead_(c_),
        b1_(c_ * ghost_factor),
        b2_(c_ * ghost_factor),
        lru_(c_),
        lru_dead_(c_) {}

  bool Sampled(uint64_t id) const { return ((id * 0x9E3779B97F4A7C15ull) >> 32) % rate_ == 0; }
  // One access of a sampled id (a hit or a miss, as the real tier will see it).
  void Access(uint64_t id) {
    arc_hits_ = arc_hits_ * keep_ + (ArcAccess(id) ? 1 : 0);
    lru_hits_ = lru_hits_ * keep_ + (LruAccess(id) ? 1 : 0);
  }
  // The block was the last of its request: both shadows evict it first.
  void Dead(uint64_t id) {
    if (t1_.Erase(id) || t2_.Erase(id)) dead_.Push(id);
    if (lru_.Erase(id)) lru_dead_.Push(id);
  }
  bool PreferLru() const { return lru_hits_ > arc_hits_; }

 private:
  bool ArcAccess(uint64_t id) {
    if (t1_.Erase(id) || t2_.Erase(id) || dead_.Erase(id)) {
      t2_.Push(id);
      return true;
    }
    const bool in_b1 = b1_.Contains(id), in_b2 = b2_.Contains(id);
    const double n1 = b1_.size(), n2 = b2_.size();
    if (in_b1) p_ = std::min<double>(c_, p_ + std::max(n2 / n1, 1.0));
    if (in_b2) p_ = std::max(0.0, p_ - std::max(n1 / n2, 1.0));
    if (t1_.size() + t2_.size() + dead_.size() >= c_) {
      if (auto d = dead_.Oldest()) {
        dead_.Erase(*d);
        b1_.Push(*d);
      } else if (t1_.size() > 0 && (t1_.size() > p_ || (in_b2 && t1_.size() == p_))) {
        b1_.Push(*t1_.Oldest());
        t1_.PopOldest();
      } else if (t2_.size() > 0) {
        b2_.Push(*t2_.Oldest());
        t2_.PopOldest();
      }
    }
    b1_.Erase(id);
    b2_.Erase(id);
    (in_b1 || in_b2 ? t2_ : t1_).Push(id);
    return false;
  }
  bool LruAccess(uint64_t id) {
    const bool hit = lru_.Erase(id) || lru_dead_.Erase(id);
    if (!hit && lru_.size() + lru_dead_.size() >= c_) {
      (lru_dead_.size() > 0 ? lru_dead_ : lru_).PopOldest();
    }
    lru_.Push(id);
    return hit;
  }

  const uint32_t rate_;                                  // R: one id in R is sampled
  const uint32_t c_;                                     // each shadow's capacity in ids
  const double keep_;                                    // decay per sampled access
  double p_ = 0;                                         // the shadow ARC's T1 target
  GhostList t1_, t2_, dead_, b1_, b2_, lru_, lru_dead_;  // bounded LRU sets of ids
  double arc_hits_ = 0, lru_hits_ = 0;                   // decayed hit counts
};

}  // namespace kvtier::internal

#endif  // KVTIER_LIB_POLICIES_SHADOW_CACHES_H_
