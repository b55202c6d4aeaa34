// SIEVE (Zhang et al., NSDI'24): a FIFO queue with one visited bit per entry and a hand.
//
// New entries enter at the head with the bit clear; an access sets the bit. The hand moves from
// the tail toward the head (wrapping to the tail): it clears the bits it passes and stops at the
// first entry with a clear bit, which is the victim; it resumes from that entry's newer neighbour.
// Entries are never moved, so a hit costs one store. Entries the hand may not take now (pinned, or
// refused by the cache) are passed over with their bit untouched. Victim cost: O(1) amortised
// (each pass clears the bits it crosses), at most two trips round the queue when nothing can go.
// Parameters: none.
#include <cstdint>
#include <vector>

#include "kvtier/policy.h"
#include "lib/policies/slot_list.h"

namespace kvtier {
namespace {

using internal::SlotLists;

class SievePolicy final : public EvictionPolicy {
 public:
  static absl::StatusOr<std::unique_ptr<EvictionPolicy>> Create(const PolicyContext& ctx) {
    if (absl::Status s = CheckPolicyParams("sieve", ctx.params, {}); !s.ok()) return s;
    return std::unique_ptr<EvictionPolicy>(new SievePolicy(ctx.capacity_slots));
  }

  void OnInsert(SlotId s) override {
    state_[s] = State{};
    queue_.PushFront(0, s);
  }
  void OnAccess(SlotId s) override { state_[s].visited = true; }
  void OnRemove(SlotId s) override {
    if (hand_ == s) hand_ = queue_.Newer(s);
    queue_.Remove(s);
  }
  void OnPin(SlotId s) override { state_[s].pinned = true; }
  void OnUnpin(SlotId s) override { state_[s].pinned = false; }

  std::optional<SlotId> PickVictim(absl::FunctionRef<bool(SlotId)> can_evict) override {
    SlotId s = hand_ != SlotLists::kNil ? hand_ : queue_.Back(0);
    for (uint64_t steps = 2ull * queue_.Size(0) + 1; s != SlotLists::kNil && steps > 0; --steps) {
      State& st = state_[s];
      if (!st.pinned && can_evict(s)) {
        if (!st.visited) {
          hand_ = s;  // OnRemove(s) moves it on to the newer neighbour
          return s;
        }
        st.visited = false;
      }
      s = queue_.Newer(s);
      if (s == SlotLists::kNil) s = queue_.Back(0);
    }
    return std::nullopt;
  }

 private:
  struct State {
    bool visited = false;
    bool pinned = false;
  };
  explicit SievePolicy(uint32_t capacity) : queue_(capacity, 1), state_(capacity) {}

  SlotLists queue_;  // front: newest
  std::vector<State> state_;
  SlotId hand_ = SlotLists::kNil;  // next entry to examine; kNil: start at the tail
};

}  // namespace

KVTIER_REGISTER_POLICY("sieve", SievePolicy);

}  // namespace kvtier
