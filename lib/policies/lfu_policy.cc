// LFU: evicts the entry with the fewest accesses since it was inserted; among equals, the one that
// reached that count first. Counts are forgotten on eviction (in-cache frequency).
//
// Parameters: aging=off|on (default off). With aging on it is LFU with dynamic aging (LFU-DA,
// Arlitt et al.): an entry's rank is L + its count, where L is the rank of the last entry evicted,
// so blocks that were hot long ago cannot squat forever; with aging off the rank is the count.
//
// Structure (the O(1) LFU of Shah, Mitra and Matani): buckets of equal rank in a list sorted by
// rank, each a FIFO of its entries; an access moves an entry to the next bucket, the victim is the
// oldest entry of the lowest bucket. Pinned entries keep their place and are passed over. A parent
// the cache refuses because its children are cached (the prefix rule) is parked, still counting
// its accesses, and comes back at the oldest end of its rank's bucket when its last linked child
// leaves, so it is evicted right after its children and the search does not walk past it on every
// eviction. Victim cost: O(1) amortised plus the pinned entries passed over; parked entries are
// offered only when nothing else can go. Bringing a parked entry back and inserting with aging
// walk the buckets from the lowest: O(number of distinct ranks), small in practice.
#include <cstdint>
#include <limits>
#include <vector>

#include "kvtier/policy.h"
#include "lib/policies/child_links.h"
#include "lib/policies/policy_params.h"
#include "lib/policies/slot_list.h"

namespace kvtier {
namespace {

using internal::ChildLinks;
using internal::SlotLists;

class LfuPolicy final : public EvictionPolicy {
 public:
  static absl::StatusOr<std::unique_ptr<EvictionPolicy>> Create(const PolicyContext& ctx) {
    if (absl::Status s = CheckPolicyParams("lfu", ctx.params, {"aging"}); !s.ok()) return s;
    absl::StatusOr<bool> aging = internal::ParamBool("lfu", ctx.params, "aging", false);
    if (!aging.ok()) return aging.status();
    return std::unique_ptr<EvictionPolicy>(new LfuPolicy(ctx.capacity_slots, *aging));
  }

  void OnInsert(SlotId s) override {
    const uint64_t rank = (aging_ ? age_ : 0) + 1;
    entries_[s] = Entry{.rank = rank};
    PushNewest(BucketOf(rank), s);
  }
  void OnLink(SlotId s, SlotId parent) override { links_.Link(s, parent); }

  void OnAccess(SlotId s) override {
    if (entries_[s].parked) {
      entries_[s].rank++;
      return;
    }
    const uint32_t b = entries_[s].bucket;
    const uint64_t rank = ++entries_[s].rank;
    uint32_t next = buckets_[b].next;
    if (next == kNone || buckets_[next].rank != rank) next = NewBucket(rank, b, next);
    Unlink(s);
    entries_[s].bucket = next;
    PushNewest(next, s);
    if (buckets_[b].size == 0) FreeBucket(b);
  }

  void OnRemove(SlotId s) override {
    if (entries_[s].parked) {
      parked_.Remove(s);
    } else if (const uint32_t b = entries_[s].bucket; b != kNone) {
      Unlink(s);
      if (buckets_[b].size == 0) FreeBucket(b);
    }
    entries_[s] = Entry{};
    if (const SlotId p = links_.Remove(s); p != ChildLinks::kNone && entries_[p].parked) {
      parked_.Remove(p);
      entries_[p].parked = false;
      PushOldest(BucketOf(entries_[p].rank), p);
    }
  }
  void OnPin(SlotId s) override { entries_[s].pinned = true; }
  void OnUnpin(SlotId s) override { entries_[s].pinned = false; }

  std::optional<SlotId> PickVictim(absl::FunctionRef<bool(SlotId)> can_evict) override {
    for (uint32_t b = first_; b != kNone;) {
      const uint32_t next_bucket = buckets_[b].next;
      for (SlotId s = buckets_[b].oldest; s != kNone;) {
        const SlotId newer = entries_[s].newer;
        if (!entries_[s].pinned) {
          if (can_evict(s)) {
            age_ = buckets_[b].rank;
            return s;
          }
          if (links_.children(s) > 0) Park(s);  // may free bucket b: `newer` is in it, or kNone
        }
        s = newer;
      }
      b = next_bucket;
    }
    for (SlotId s = parked_.Back(0); s != SlotLists::kNil; s = parked_.Newer(s)) {
      if (!entries_[s].pinned && can_evict(s)) {
        age_ = entries_[s].rank;
        return s;
      }
    }
    return std::nullopt;
  }

 private:
  static constexpr uint32_t kNone = std::numeric_limits<uint32_t>::max();
  struct Entry {
    uint64_t rank = 0;
    uint32_t bucket = kNone;
    bool parked = false;
    SlotId newer = kNone;
    SlotId older = kNone;
    bool pinned = false;
  };
  struct Bucket {
    uint64_t rank = 0;
    uint32_t prev = kNone;  // lower rank
    uint32_t next = kNone;  // higher rank
    SlotId newest = kNone;
    SlotId oldest = kNone;
    uint32_t size = 0;
  };

  LfuPolicy(uint32_t capacity, bool aging)
      : aging_(aging), entries_(capacity), parked_(capacity, 1), links_(capacity) {
    buckets_.reserve(64);
  }

  // The bucket of `rank`, created in order if missing.
  uint32_t BucketOf(uint64_t rank) {
    uint32_t before = first_;
    while (before != kNone && buckets_[before].rank < rank) before = buckets_[before].next;
    if (before != kNone && buckets_[before].rank == rank) return before;
    return NewBucket(rank, before == kNone ? last_ : buckets_[before].prev, before);
  }
  void Park(SlotId s) {
    const uint32_t b = entries_[s].bucket;
    Unlink(s);
    entries_[s].bucket = kNone;
    entries_[s].parked = true;
    parked_.PushFront(0, s);
    if (buckets_[b].size == 0) FreeBucket(b);
  }
  uint32_t NewBucket(uint64_t rank, uint32_t prev, uint32_t next) {
    uint32_t b;
    if (!free_buckets_.empty()) {
      b = free_buckets_.back();
      free_buckets_.pop_back();
    } else {
      b = static_cast<uint32_t>(buckets_.size());
      buckets_.emplace_back();
    }
    buckets_[b] = Bucket{.rank = rank, .prev = prev, .next = next};
    (prev != kNone ? buckets_[prev].next : first_) = b;
    (next != kNone ? buckets_[next].prev : last_) = b;
    return b;
  }
  void FreeBucket(uint32_t b) {
    const Bucket& k = buckets_[b];
    (k.prev != kNone ? buckets_[k.prev].next : first_) = k.next;
    (k.next != kNone ? buckets_[k.next].prev : last_) = k.prev;
    free_buckets_.push_back(b);
  }
  void PushNewest(uint32_t b, SlotId s) {
    Bucket& k = buckets_[b];
    entries_[s].bucket = b;
    entries_[s].newer = kNone;
    entries_[s].older = k.newest;
    (k.newest != kNone ? entries_[k.newest].newer : k.oldest) = s;
    k.newest = s;
    k.size++;
  }
  void PushOldest(uint32_t b, SlotId s) {
    Bucket& k = buckets_[b];
    entries_[s].bucket = b;
    entries_[s].older = kNone;
    entries_[s].newer = k.oldest;
    (k.oldest != kNone ? entries_[k.oldest].older : k.newest) = s;
    k.oldest = s;
    k.size++;
  }
  void Unlink(SlotId s) {
    Entry& e = entries_[s];
    Bucket& k = buckets_[e.bucket];
    (e.newer != kNone ? entries_[e.newer].older : k.newest) = e.older;
    (e.older != kNone ? entries_[e.older].newer : k.oldest) = e.newer;
    k.size--;
  }

  const bool aging_;
  uint64_t age_ = 0;  // L: the rank of the last victim (aging only)
  std::vector<Entry> entries_;
  std::vector<Bucket> buckets_;
  std::vector<uint32_t> free_buckets_;
  uint32_t first_ = kNone;  // lowest rank
  uint32_t last_ = kNone;
  internal::SlotLists parked_;  // refused parents, out of their buckets
  internal::ChildLinks links_;
};

}  // namespace

KVTIER_REGISTER_POLICY("lfu", LfuPolicy);

}  // namespace kvtier
