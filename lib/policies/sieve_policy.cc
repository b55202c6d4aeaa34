// SIEVE (Zhang et al., NSDI'24): a FIFO queue with one visited bit per entry and a hand.
//
// New entries enter at the head with the bit clear; an access sets the bit. The hand moves from
// the tail toward the head (wrapping to the tail): it clears the bits it passes and stops at the
// first entry with a clear bit, which is the victim; it resumes from that entry's newer neighbour.
// Entries are never moved, so a hit costs one store. Entries the hand may not take now are passed
// over with their bit untouched; a parent the cache refuses because its children are cached (the
// prefix rule) is parked and put back in front of the hand when its last linked child leaves, so
// the hand does not cross it on every trip. Victim cost: O(1) amortised (each pass clears the bits
// it crosses), at most two trips round the queue when nothing can go. Parameters: none.
#include <cstdint>
#include <vector>

#include "kvtier/policy.h"
#include "lib/policies/child_links.h"
#include "lib/policies/slot_list.h"

namespace kvtier {
namespace {

using internal::ChildLinks;
using internal::SlotLists;

class SievePolicy final : public EvictionPolicy {
 public:
  static absl::StatusOr<std::unique_ptr<EvictionPolicy>> Create(const PolicyContext& ctx) {
    if (absl::Status s = CheckPolicyParams("sieve", ctx.params, {}); !s.ok()) return s;
    return std::unique_ptr<EvictionPolicy>(new SievePolicy(ctx.capacity_slots));
  }

  void OnInsert(SlotId s) override {
    state_[s] = State{};
    queue_.PushFront(kQueue, s);
  }
  void OnAccess(SlotId s) override { state_[s].visited = true; }
  void OnLink(SlotId s, SlotId parent) override { links_.Link(s, parent); }
  void OnRemove(SlotId s) override {
    if (hand_ == s) hand_ = queue_.Newer(s);
    queue_.Remove(s);
    if (const SlotId p = links_.Remove(s); p != ChildLinks::kNone && queue_.ListOf(p) == kParked) {
      queue_.Remove(p);
      if (hand_ != SlotLists::kNil) {
        queue_.InsertOlder(hand_, p);  // the hand looks at it next
        hand_ = p;
      } else {
        queue_.PushBack(kQueue, p);  // where the hand starts
      }
    }
  }
  void OnPin(SlotId s) override { state_[s].pinned = true; }
  void OnUnpin(SlotId s) override { state_[s].pinned = false; }

  std::optional<SlotId> PickVictim(absl::FunctionRef<bool(SlotId)> can_evict) override {
    SlotId s = hand_ != SlotLists::kNil ? hand_ : queue_.Back(kQueue);
    for (uint64_t steps = 2ull * queue_.Size(kQueue) + 1; s != SlotLists::kNil && steps > 0;
         --steps) {
      State& st = state_[s];
      SlotId next = queue_.Newer(s);
      if (next == SlotLists::kNil) next = queue_.Back(kQueue);
      if (!st.pinned) {
        if (can_evict(s)) {
          if (!st.visited) {
            hand_ = s;  // OnRemove(s) moves it on to the newer neighbour
            return s;
          }
          st.visited = false;
        } else if (links_.children(s) > 0) {
          queue_.Remove(s);
          queue_.PushFront(kParked, s);
          if (next == s) next = SlotLists::kNil;  // it was the only one
        }
      }
      s = next;
    }
    hand_ = s;
    for (SlotId p = queue_.Back(kParked); p != SlotLists::kNil; p = queue_.Newer(p)) {
      if (!state_[p].pinned && can_evict(p)) return p;
    }
    return std::nullopt;
  }

 private:
  struct State {
    bool visited = false;
    bool pinned = false;
  };
  static constexpr uint16_t kQueue = 0;
  static constexpr uint16_t kParked = 1;
  explicit SievePolicy(uint32_t capacity)
      : queue_(capacity, 2), links_(capacity), state_(capacity) {}

  SlotLists queue_;  // kQueue, kParked; front: newest
  ChildLinks links_;
  std::vector<State> state_;
  SlotId hand_ = SlotLists::kNil;  // next entry to examine; kNil: start at the tail
};

}  // namespace

KVTIER_REGISTER_POLICY("sieve", SievePolicy);

}  // namespace kvtier
