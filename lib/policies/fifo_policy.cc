// FIFO: evicts the entry inserted longest ago; accesses change nothing.
//
// One insertion-ordered queue (an intrusive list over slot ids). Pinned entries keep their place.
// An entry the victim search meets that may not go now (pinned, or refused by the cache: Filling,
// or a parent whose children are cached) is requeued at the new end, a second chance given only
// to entries that could not have gone anyway; so each search is O(1) amortised (every requeued
// entry is passed once per trip round the queue) instead of walking past the same protected
// parents on every eviction. With every entry evictable (a flat simulation) this is plain FIFO.
// Parameters: none.
#include <cstdint>
#include <vector>

#include "kvtier/policy.h"
#include "lib/policies/slot_list.h"

namespace kvtier {
namespace {

using internal::SlotLists;

class FifoPolicy final : public EvictionPolicy {
 public:
  static absl::StatusOr<std::unique_ptr<EvictionPolicy>> Create(const PolicyContext& ctx) {
    if (absl::Status s = CheckPolicyParams("fifo", ctx.params, {}); !s.ok()) return s;
    return std::unique_ptr<EvictionPolicy>(new FifoPolicy(ctx.capacity_slots));
  }

  void OnInsert(SlotId s) override {
    pinned_[s] = false;
    queue_.PushFront(0, s);
  }
  void OnAccess(SlotId) override {}
  void OnRemove(SlotId s) override { queue_.Remove(s); }
  void OnPin(SlotId s) override { pinned_[s] = true; }
  void OnUnpin(SlotId s) override { pinned_[s] = false; }

  std::optional<SlotId> PickVictim(absl::FunctionRef<bool(SlotId)> can_evict) override {
    for (uint32_t n = queue_.Size(0); n > 0; --n) {
      const SlotId s = queue_.Back(0);
      if (!pinned_[s] && can_evict(s)) return s;
      queue_.MoveToFront(0, s);
    }
    return std::nullopt;
  }

 private:
  explicit FifoPolicy(uint32_t capacity) : queue_(capacity, 1), pinned_(capacity, false) {}

  SlotLists queue_;  // front: newest
  std::vector<bool> pinned_;
};

}  // namespace

KVTIER_REGISTER_POLICY("fifo", FifoPolicy);

}  // namespace kvtier
