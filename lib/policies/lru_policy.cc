// LRU: evicts the least recently inserted, accessed or unpinned entry.
//
// An intrusive doubly linked list over slot ids (vectors, no nodes). Pinned slots leave the list
// and come back at the most recent end when unpinned, so that blocks a running sequence held are
// as fresh as when it ended. Withheld slots (prefix-protected parents the cache took out of the
// candidates) leave it too, and come back at the least recent end, where they were, or at the most
// recent one if they were accessed or pinned meanwhile. Victim cost: O(1) plus the entries the
// predicate rejects, each at most once while it stays rejected for the prefix rule (then it is
// withheld); pinned and Filling slots are never in the list.
#include <cstdint>
#include <limits>
#include <vector>

#include "kvtier/policy.h"
#include "lib/common/huge_pages.h"
#include "lib/policies/withhold_state.h"

namespace kvtier {
namespace {

using internal::WithholdState;

class LruPolicy final : public EvictionPolicy {
 public:
  static absl::StatusOr<std::unique_ptr<EvictionPolicy>> Create(const PolicyContext& ctx) {
    if (absl::Status s = CheckPolicyParams("lru", ctx.params, {}); !s.ok()) return s;
    return std::unique_ptr<EvictionPolicy>(new LruPolicy(ctx.capacity_slots));
  }

  void OnInsert(SlotId s) override {
    nodes_[s].state.Reset();
    PushFront(s);
  }
  void OnAccess(SlotId s) override {
    if (nodes_[s].state.Defer()) return;  // pinned or withheld: comes back as recent
    Unlink(s);
    PushFront(s);
  }
  void OnRemove(SlotId s) override {
    if (linked(s)) Unlink(s);
    nodes_[s].state.Reset();
  }
  void OnPin(SlotId s) override {
    nodes_[s].state.Pin();
    if (linked(s)) Unlink(s);
  }
  void OnUnpin(SlotId s) override {
    if (nodes_[s].state.Unpin()) PushFront(s);
  }
  bool OnWithhold(SlotId s) override {
    if (linked(s)) Unlink(s);
    nodes_[s].state.Withhold();
    return true;
  }
  void OnRestore(SlotId s) override {
    switch (nodes_[s].state.Restore()) {
      case WithholdState::Place::kFront:
        return PushFront(s);
      case WithholdState::Place::kBack:
        return PushBack(s);
      case WithholdState::Place::kNowhere:
        return;  // relinked on unpin
    }
  }
  std::optional<SlotId> PickVictim(absl::FunctionRef<bool(SlotId)> can_evict) override {
    for (SlotId s = tail_; s != kNil; s = nodes_[s].prev) {
      // The next victim is this one's predecessor: start fetching it (large tiers miss the cache).
      if (nodes_[s].prev != kNil) __builtin_prefetch(&nodes_[nodes_[s].prev]);
      if (can_evict(s)) return s;
    }
    return std::nullopt;
  }

 private:
  static constexpr SlotId kNil = std::numeric_limits<SlotId>::max();
  // prev: toward the head (most recent); next: toward the tail (least recent). One struct per slot
  // so that a list operation touches one cache line per node.
  struct Node {
    SlotId prev = kNil;
    SlotId next = kNil;
    bool linked = false;  // in the list: neither pinned nor withheld
    WithholdState state;
  };
  static_assert(sizeof(Node) == 12, "one node per slot: keep the state inside the padding");
  explicit LruPolicy(uint32_t capacity) : nodes_(capacity) {}

  bool linked(SlotId s) const { return nodes_[s].linked; }
  void PushFront(SlotId s) {
    Node& n = nodes_[s];
    n.prev = kNil;
    n.next = head_;
    n.linked = true;
    if (head_ != kNil) nodes_[head_].prev = s;
    head_ = s;
    if (tail_ == kNil) tail_ = s;
  }
  void PushBack(SlotId s) {
    Node& n = nodes_[s];
    n.prev = tail_;
    n.next = kNil;
    n.linked = true;
    if (tail_ != kNil) nodes_[tail_].next = s;
    tail_ = s;
    if (head_ == kNil) head_ = s;
  }
  void Unlink(SlotId s) {
    Node& n = nodes_[s];
    (n.prev != kNil ? nodes_[n.prev].next : head_) = n.next;
    (n.next != kNil ? nodes_[n.next].prev : tail_) = n.prev;
    n.linked = false;
  }

  internal::HugeVector<Node> nodes_;  // touched at random by every search: on huge pages
  SlotId head_ = kNil;
  SlotId tail_ = kNil;
};

}  // namespace

KVTIER_REGISTER_POLICY("lru", LruPolicy);

}  // namespace kvtier
