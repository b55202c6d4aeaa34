// LFU: evicts the entry with the fewest accesses since it was inserted; among equals, the one that
// reached that count first. Counts are forgotten on eviction (in-cache frequency).
//
// Parameters: aging=off|on (default off). With aging on it is LFU with dynamic aging (LFU-DA,
// Arlitt et al.): an entry's rank is L + its count, where L is the rank of the last entry evicted,
// so blocks that were hot long ago cannot squat forever; with aging off the rank is the count.
//
// Structure (the O(1) LFU of Shah, Mitra and Matani): buckets of equal rank in a list sorted by
// rank, each a FIFO of its entries; an access moves an entry to the next bucket, the victim is the
// oldest entry of the lowest bucket. Pinned entries keep their place and are skipped; an entry
// the search may not take is requeued at the newest end of its bucket (a tie-break change only),
// so each search is O(1) amortised. Insertion with aging walks from the lowest bucket to rank L+1:
// O(1) unless the last victim was found far above the lowest bucket (everything below it pinned).
#include <cstdint>
#include <limits>
#include <vector>

#include "kvtier/policy.h"
#include "lib/policies/policy_params.h"

namespace kvtier {
namespace {

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
    // The bucket of `rank` or the one it goes before: ranks below age_+1 exist only when
    // something lower was pinned when the last victim was taken.
    uint32_t before = first_;
    while (before != kNone && buckets_[before].rank < rank) before = buckets_[before].next;
    uint32_t b = before;
    if (b == kNone || buckets_[b].rank != rank) {
      b = NewBucket(rank, before == kNone ? last_ : buckets_[before].prev, before);
    }
    entries_[s] = Entry{.bucket = b};
    PushNewest(b, s);
  }

  void OnAccess(SlotId s) override {
    const uint32_t b = entries_[s].bucket;
    const uint64_t rank = buckets_[b].rank + 1;
    uint32_t next = buckets_[b].next;
    if (next == kNone || buckets_[next].rank != rank) next = NewBucket(rank, b, next);
    Unlink(s);
    entries_[s].bucket = next;
    PushNewest(next, s);
    if (buckets_[b].size == 0) FreeBucket(b);
  }

  void OnRemove(SlotId s) override {
    const uint32_t b = entries_[s].bucket;
    if (b == kNone) return;
    Unlink(s);
    entries_[s].bucket = kNone;
    if (buckets_[b].size == 0) FreeBucket(b);
  }
  void OnPin(SlotId s) override { entries_[s].pinned = true; }
  void OnUnpin(SlotId s) override { entries_[s].pinned = false; }

  std::optional<SlotId> PickVictim(absl::FunctionRef<bool(SlotId)> can_evict) override {
    for (uint32_t b = first_; b != kNone; b = buckets_[b].next) {
      for (uint32_t n = buckets_[b].size; n > 0; --n) {
        const SlotId s = buckets_[b].oldest;
        if (!entries_[s].pinned && can_evict(s)) {
          age_ = buckets_[b].rank;
          return s;
        }
        Unlink(s);
        PushNewest(b, s);
      }
    }
    return std::nullopt;
  }

 private:
  static constexpr uint32_t kNone = std::numeric_limits<uint32_t>::max();
  struct Entry {
    uint32_t bucket = kNone;
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

  LfuPolicy(uint32_t capacity, bool aging) : aging_(aging), entries_(capacity) {
    buckets_.reserve(64);
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
    entries_[s].newer = kNone;
    entries_[s].older = k.newest;
    (k.newest != kNone ? entries_[k.newest].newer : k.oldest) = s;
    k.newest = s;
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
};

}  // namespace

KVTIER_REGISTER_POLICY("lfu", LfuPolicy);

}  // namespace kvtier
