// prefix_aware: leaf-first LRU. A block whose descendants are cached in this tier is never
// offered while a leaf can go, so cold branches are evicted whole, deepest block first.
//
// The tree comes from OnLink (a block and its parent in the same tier). Leaves (no linked child in
// the tier) sit in one LRU list, inner blocks in another. When a block's last child leaves, the
// block becomes a leaf at the place its own last use gives it among the leaves: right behind the
// child just evicted when that child was the coldest, so the rest of a cold branch goes next.
// Inner blocks are offered only when no leaf can go (all pinned or refused), so the policy never
// fails an allocation the cache could serve. Links and child counts are ChildLinks
// (child_links.h).
// Cost: access O(1); victim O(1) plus the entries the cache refuses; a block becoming a leaf
// O(number of leaves used less recently than it), which is O(1) for the cold branch being evicted.
// Pinned entries leave the lists and come back as most recent when unpinned. Parameters: none.
#include <cstdint>
#include <vector>

#include "kvtier/policy.h"
#include "lib/policies/child_links.h"
#include "lib/policies/slot_list.h"

namespace kvtier {
namespace {

using internal::ChildLinks;
using internal::SlotLists;

class PrefixAwarePolicy final : public EvictionPolicy {
 public:
  static absl::StatusOr<std::unique_ptr<EvictionPolicy>> Create(const PolicyContext& ctx) {
    if (absl::Status s = CheckPolicyParams("prefix_aware", ctx.params, {}); !s.ok()) return s;
    return std::unique_ptr<EvictionPolicy>(new PrefixAwarePolicy(ctx.capacity_slots));
  }

  void OnInsert(SlotId s) override {
    nodes_[s] = Node{.tick = ++clock_};
    lists_.PushFront(kLeaf, s);
  }

  void OnLink(SlotId s, SlotId parent) override {
    links_.Link(s, parent);
    Node& p = nodes_[parent];
    if (links_.children(parent) == 1 && !p.pinned) {
      lists_.Remove(parent);
      lists_.PushFront(kInner, parent);  // the prefix was just extended: a use of the parent
      p.tick = ++clock_;
    }
  }

  void OnAccess(SlotId s) override {
    Node& n = nodes_[s];
    n.tick = ++clock_;
    if (!n.pinned) lists_.MoveToFront(links_.children(s) == 0 ? kLeaf : kInner, s);
  }

  void OnRemove(SlotId s) override {
    lists_.Remove(s);
    if (const SlotId p = links_.Remove(s); p != ChildLinks::kNone && !nodes_[p].pinned) {
      lists_.Remove(p);
      InsertLeafByTick(p);
    }
  }

  void OnPin(SlotId s) override {
    nodes_[s].pinned = true;
    lists_.Remove(s);
  }
  void OnUnpin(SlotId s) override {
    Node& n = nodes_[s];
    n.pinned = false;
    n.tick = ++clock_;
    lists_.PushFront(links_.children(s) == 0 ? kLeaf : kInner, s);
  }

  std::optional<SlotId> PickVictim(absl::FunctionRef<bool(SlotId)> can_evict) override {
    for (const uint16_t list : {kLeaf, kInner}) {
      for (SlotId s = lists_.Back(list); s != SlotLists::kNil; s = lists_.Newer(s)) {
        if (can_evict(s)) return s;
      }
    }
    return std::nullopt;
  }

 private:
  static constexpr uint16_t kLeaf = 0;
  static constexpr uint16_t kInner = 1;
  struct Node {
    uint64_t tick = 0;  // last insert, access, extension or unpin
    bool pinned = false;
  };

  explicit PrefixAwarePolicy(uint32_t capacity)
      : lists_(capacity, 2), links_(capacity), nodes_(capacity) {}

  // The leaf list is ordered by tick, newest at the front; keep it so.
  void InsertLeafByTick(SlotId s) {
    SlotId older_than_s = lists_.Back(kLeaf);
    if (older_than_s == SlotLists::kNil || nodes_[older_than_s].tick > nodes_[s].tick) {
      lists_.PushBack(kLeaf, s);
      return;
    }
    // Walk toward the front while entries are older than s; s goes right in front of the last.
    SlotId at = older_than_s;
    while (lists_.Newer(at) != SlotLists::kNil && nodes_[lists_.Newer(at)].tick < nodes_[s].tick) {
      at = lists_.Newer(at);
    }
    const SlotId newer = lists_.Newer(at);
    if (newer == SlotLists::kNil) {
      lists_.PushFront(kLeaf, s);
    } else {
      lists_.InsertOlder(newer, s);
    }
  }

  uint64_t clock_ = 0;
  SlotLists lists_;  // kLeaf, kInner; front: most recent
  ChildLinks links_;
  std::vector<Node> nodes_;
};

}  // namespace

KVTIER_REGISTER_POLICY("prefix_aware", PrefixAwarePolicy);

}  // namespace kvtier
