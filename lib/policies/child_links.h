// ChildLinks: each slot's linked parent and its number of linked children, from OnLink.
//
// For policies that must not walk past the same refused parents on every eviction: the cache
// refuses the last copy of a block whose children are cached (the prefix rule), so a policy can
// park a refused slot that has linked children and take it back when its last child leaves. A link
// ends when either slot is removed; a child's link to a parent slot that has since been reused is
// recognised by a generation count, without child lists. All O(1). Not thread-safe: a policy is
// called under its tier's lock.
#ifndef KVTIER_LIB_POLICIES_CHILD_LINKS_H_
#define KVTIER_LIB_POLICIES_CHILD_LINKS_H_

#include <cstdint>
#include <limits>
#include <vector>

#include "kvtier/policy.h"

namespace kvtier::internal {

class ChildLinks {
 public:
  static constexpr SlotId kNone = std::numeric_limits<SlotId>::max();

  explicit ChildLinks(uint32_t capacity_slots) : nodes_(capacity_slots) {}

  uint32_t children(SlotId s) const { return nodes_[s].children; }
  // s's linked parent while that link lives, else kNone.
  SlotId Parent(SlotId s) const {
    const Node& n = nodes_[s];
    return n.parent != kNone && nodes_[n.parent].gen == n.parent_gen ? n.parent : kNone;
  }

  // OnLink(child, parent).
  void Link(SlotId child, SlotId parent) {
    nodes_[child].parent = parent;
    nodes_[child].parent_gen = nodes_[parent].gen;
    nodes_[parent].children++;
  }

  // OnRemove(s): ends s's links. Returns s's parent when s was its last linked child, else kNone.
  SlotId Remove(SlotId s) {
    const SlotId parent = Parent(s);
    const SlotId orphaned = parent != kNone && --nodes_[parent].children == 0 ? parent : kNone;
    Node& n = nodes_[s];
    n.parent = kNone;
    n.children = 0;
    n.gen++;
    return orphaned;
  }

 private:
  struct Node {
    SlotId parent = kNone;
    uint32_t parent_gen = 0;  // the parent's gen when linked: a mismatch means the link is dead
    uint32_t gen = 0;         // bumped on each Remove of this slot
    uint32_t children = 0;    // live links to this slot
  };
  std::vector<Node> nodes_;
};

}  // namespace kvtier::internal

#endif  // KVTIER_LIB_POLICIES_CHILD_LINKS_H_
