// FIFO: evicts the entry inserted longest ago; accesses change nothing.
//
// One insertion-ordered queue (an intrusive list over slot ids). Pinned entries keep their place
// and are passed over. A parent the cache refuses because its children are cached (the prefix
// rule) is parked and comes back at the old end when its last linked child leaves, so it goes right
// after its children, as plain FIFO with the prefix rule would do, and the search does not walk
// past it on every eviction. Victim cost: O(1) amortised, plus the pinned entries at the old end
// and entries refused for other reasons (e.g. a host block whose children live only on the device);
// parked entries are offered only when nothing else can go. Parameters: none.
#include <cstdint>
#include <vector>

#include "kvtier/policy.h"
#include "lib/policies/child_links.h"
#include "lib/policies/slot_list.h"

namespace kvtier {
namespace {

using internal::ChildLinks;
using internal::SlotLists;

class FifoPolicy final : public EvictionPolicy {
 public:
  static absl::StatusOr<std::unique_ptr<EvictionPolicy>> Create(const PolicyContext& ctx) {
    if (absl::Status s = CheckPolicyParams("fifo", ctx.params, {}); !s.ok()) return s;
    return std::unique_ptr<EvictionPolicy>(new FifoPolicy(ctx.capacity_slots));
  }

  void OnInsert(SlotId s) override {
    pinned_[s] = false;
    lists_.PushFront(kQueue, s);
  }
  void OnLink(SlotId s, SlotId parent) override { links_.Link(s, parent); }
  void OnAccess(SlotId) override {}
  void OnRemove(SlotId s) override {
    lists_.Remove(s);
    if (const SlotId p = links_.Remove(s); p != ChildLinks::kNone && lists_.ListOf(p) == kParked) {
      lists_.Remove(p);
      lists_.PushBack(kQueue, p);
    }
  }
  void OnPin(SlotId s) override { pinned_[s] = true; }
  void OnUnpin(SlotId s) override { pinned_[s] = false; }

  std::optional<SlotId> PickVictim(absl::FunctionRef<bool(SlotId)> can_evict) override {
    for (SlotId s = lists_.Back(kQueue); s != SlotLists::kNil;) {
      const SlotId newer = lists_.Newer(s);
      if (!pinned_[s]) {
        if (can_evict(s)) return s;
        if (links_.children(s) > 0) {
          lists_.Remove(s);
          lists_.PushFront(kParked, s);
        }
      }
      s = newer;
    }
    for (SlotId s = lists_.Back(kParked); s != SlotLists::kNil; s = lists_.Newer(s)) {
      if (!pinned_[s] && can_evict(s)) return s;
    }
    return std::nullopt;
  }

 private:
  static constexpr uint16_t kQueue = 0;
  static constexpr uint16_t kParked = 1;
  explicit FifoPolicy(uint32_t capacity)
      : lists_(capacity, 2), links_(capacity), pinned_(capacity, false) {}

  SlotLists lists_;  // kQueue, kParked; front: newest
  ChildLinks links_;
  std::vector<bool> pinned_;
};

}  // namespace

KVTIER_REGISTER_POLICY("fifo", FifoPolicy);

}  // namespace kvtier
