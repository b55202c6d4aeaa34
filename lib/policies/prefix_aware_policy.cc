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
// Both lists are ordered by each block's last use (a tick). Pinned entries leave the lists and come
// back as most recent when unpinned. Withheld ones (OnWithhold: blocks the cache keeps for the
// prefix rule, their children in a tier above) leave them too and come back at the place their
// last use gives them, as if they had never left, so withholding changes no victim.
// Cost: access O(1); victim O(1) plus the entries the cache refuses, each at most once while the
// prefix rule keeps it (it is withheld then); a block becoming a leaf or restored O(number of
// entries between its place and the nearer end of its list), which is O(1) for the cold branch
// being evicted and for a withheld block restored unused. Parameters: none.
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
      // The prefix was just extended: a use of the parent. A withheld one gets its tick and list
      // at its restore.
      if (!p.withheld) lists_.PushFront(kInner, parent);
      p.tick = ++clock_;
    }
  }

  void OnAccess(SlotId s) override {
    Node& n = nodes_[s];
    n.tick = ++clock_;
    if (!n.pinned && !n.withheld) lists_.MoveToFront(ListFor(s), s);
  }

  void OnRemove(SlotId s) override {
    lists_.Remove(s);
    nodes_[s].withheld = false;
    if (const SlotId p = links_.Remove(s);
        p != ChildLinks::kNone && !nodes_[p].pinned && !nodes_[p].withheld) {
      lists_.Remove(p);
      InsertByTick(kLeaf, p);
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
    if (!n.withheld) lists_.PushFront(ListFor(s), s);
  }

  // Withheld (a block the cache keeps for the prefix rule, taken out of the candidates): out of its
  // list, its tick still moving with its uses, back at its tick's place among the leaves or inner
  // blocks when restored, as if it had never left (both lists are ordered by tick).
  bool OnWithhold(SlotId s) override {
    lists_.Remove(s);
    nodes_[s].withheld = true;
    return true;
  }
  void OnRestore(SlotId s) override {
    Node& n = nodes_[s];
    n.withheld = false;
    if (n.pinned) return;  // relinked on unpin
    InsertByTick(ListFor(s), s);
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
    bool withheld = false;  // OnWithhold accepted, not yet restored
  };

  explicit PrefixAwarePolicy(uint32_t capacity)
      : lists_(capacity, 2), links_(capacity), nodes_(capacity) {}

  uint16_t ListFor(SlotId s) const { return links_.children(s) == 0 ? kLeaf : kInner; }

  // Each list is ordered by tick, newest at the front; keep it so. O(1) for the cold branch
  // being evicted (s goes right behind the child just removed) and for a restored block used
  // meanwhile (near the front).
  void InsertByTick(uint16_t list, SlotId s) {
    lists_.InsertByOrder(list, s, [this](SlotId x) { return nodes_[x].tick; });
  }

  uint64_t clock_ = 0;
  SlotLists lists_;  // kLeaf, kInner; front: most recent
  ChildLinks links_;
  std::vector<Node> nodes_;
};

}  // namespace

KVTIER_REGISTER_POLICY("prefix_aware", PrefixAwarePolicy);

}  // namespace kvtier
