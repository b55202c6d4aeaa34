// LRU: evicts the least recently inserted, accessed or unpinned entry.
//
// An intrusive doubly linked list over slot ids (vectors, no nodes). Pinned slots leave the list
// and come back at the most recent end when unpinned, so that blocks a running sequence held are
// as fresh as when it ended. Victim cost: O(1) plus the entries the predicate rejects (unpinned
// but prefix-protected parents, which the cache touches after their children, so they sit away from
// the cold end).
#include <limits>
#include <vector>

#include "kvtier/policy.h"

namespace kvtier {
namespace {

class LruPolicy final : public EvictionPolicy {
 public:
  static absl::StatusOr<std::unique_ptr<EvictionPolicy>> Create(const PolicyContext& ctx) {
    if (absl::Status s = CheckPolicyParams("lru", ctx.params, {}); !s.ok()) return s;
    return std::unique_ptr<EvictionPolicy>(new LruPolicy(ctx.capacity_slots));
  }

  void OnInsert(SlotId s) override { PushFront(s); }
  void OnAccess(SlotId s) override {
    if (!linked(s)) return;  // pinned: relinked on unpin
    Unlink(s);
    PushFront(s);
  }
  void OnRemove(SlotId s) override {
    if (linked(s)) Unlink(s);
  }
  void OnPin(SlotId s) override {
    if (linked(s)) Unlink(s);
  }
  void OnUnpin(SlotId s) override {
    if (!linked(s)) PushFront(s);
  }
  std::optional<SlotId> PickVictim(absl::FunctionRef<bool(SlotId)> can_evict) override {
    for (SlotId s = tail_; s != kNil; s = prev_[s]) {
      if (can_evict(s)) return s;
    }
    return std::nullopt;
  }

 private:
  static constexpr SlotId kNil = std::numeric_limits<SlotId>::max();
  explicit LruPolicy(uint32_t capacity)
      : prev_(capacity, kNil), next_(capacity, kNil), in_(capacity, 0) {}

  bool linked(SlotId s) const { return in_[s] != 0; }
  void PushFront(SlotId s) {
    prev_[s] = kNil;
    next_[s] = head_;
    if (head_ != kNil) prev_[head_] = s;
    head_ = s;
    if (tail_ == kNil) tail_ = s;
    in_[s] = 1;
  }
  void Unlink(SlotId s) {
    (prev_[s] != kNil ? next_[prev_[s]] : head_) = next_[s];
    (next_[s] != kNil ? prev_[next_[s]] : tail_) = prev_[s];
    in_[s] = 0;
  }

  std::vector<SlotId> prev_, next_;  // toward the head (most recent) / the tail (least recent)
  std::vector<uint8_t> in_;          // 1 while linked
  SlotId head_ = kNil;
  SlotId tail_ = kNil;
};

}  // namespace

KVTIER_REGISTER_POLICY("lru", LruPolicy);

}  // namespace kvtier
