// SlotLists: intrusive doubly linked lists over a tier's slot ids, for eviction policies.
//
// One node per slot (vectors, no allocation after construction); a slot is in at most one of the
// `num_lists` lists at a time. Front = most recently pushed, back = oldest. Every operation is
// O(1). Not thread-safe: a policy is called under its tier's lock.
#ifndef KVTIER_LIB_POLICIES_SLOT_LIST_H_
#define KVTIER_LIB_POLICIES_SLOT_LIST_H_

#include <cstdint>
#include <limits>
#include <vector>

#include "kvtier/policy.h"
#include "lib/common/huge_pages.h"

namespace kvtier::internal {

class SlotLists {
 public:
  static constexpr SlotId kNil = std::numeric_limits<SlotId>::max();
  static constexpr uint16_t kNoList = std::numeric_limits<uint16_t>::max();

  SlotLists(uint32_t capacity_slots, uint16_t num_lists)
      : nodes_(capacity_slots), lists_(num_lists) {}

  // The list slot s is in, or kNoList.
  uint16_t ListOf(SlotId s) const { return nodes_[s].list; }
  bool Linked(SlotId s) const { return nodes_[s].list != kNoList; }
  uint32_t Size(uint16_t list) const { return lists_[list].size; }
  SlotId Front(uint16_t list) const { return lists_[list].head; }
  SlotId Back(uint16_t list) const { return lists_[list].tail; }
  // Toward the front (newer) / the back (older); kNil at the ends.
  SlotId Newer(SlotId s) const { return nodes_[s].prev; }
  SlotId Older(SlotId s) const { return nodes_[s].next; }

  // Precondition for the pushes and InsertOlder: s is in no list.
  void PushFront(uint16_t list, SlotId s) {
    List& l = lists_[list];
    nodes_[s] = Node{.prev = kNil, .next = l.head, .list = list};
    (l.head != kNil ? nodes_[l.head].prev : l.tail) = s;
    l.head = s;
    l.size++;
  }
  void PushBack(uint16_t list, SlotId s) {
    List& l = lists_[list];
    nodes_[s] = Node{.prev = l.tail, .next = kNil, .list = list};
    (l.tail != kNil ? nodes_[l.tail].next : l.head) = s;
    l.tail = s;
    l.size++;
  }
  // Puts s right behind `at` (on the older side), in at's list.
  void InsertOlder(SlotId at, SlotId s) {
    const uint16_t list = nodes_[at].list;
    const SlotId older = nodes_[at].next;
    if (older == kNil) return PushBack(list, s);
    nodes_[s] = Node{.prev = at, .next = older, .list = list};
    nodes_[at].next = s;
    nodes_[older].prev = s;
    lists_[list].size++;
  }
  // For a list ordered by `order(slot)`, greatest at the front (a tick, a recency rank; values
  // distinct): puts s at its place. The walk starts from the end whose value is nearer to s's:
  // O(entries between that end and s). Precondition: s is in no list.
  template <typename Order>
  void InsertByOrder(uint16_t list, SlotId s, Order order) {
    const auto key = order(s);
    const SlotId front = lists_[list].head;
    if (front == kNil || order(front) < key) return PushFront(list, s);
    const SlotId back = lists_[list].tail;
    if (order(back) > key) return PushBack(list, s);
    SlotId at;  // s goes right behind it
    if (order(front) - key < key - order(back)) {
      for (at = front; order(nodes_[at].next) > key;) at = nodes_[at].next;
    } else {
      for (at = nodes_[back].prev; order(at) < key;) at = nodes_[at].prev;
    }
    InsertOlder(at, s);
  }
  // No-op when s is in no list.
  void Remove(SlotId s) {
    Node& n = nodes_[s];
    if (n.list == kNoList) return;
    List& l = lists_[n.list];
    (n.prev != kNil ? nodes_[n.prev].next : l.head) = n.next;
    (n.next != kNil ? nodes_[n.next].prev : l.tail) = n.prev;
    l.size--;
    n = Node{};
  }
  void MoveToFront(uint16_t list, SlotId s) {
    Remove(s);
    PushFront(list, s);
  }

 private:
  // One struct per slot, so a list operation touches one cache line per node.
  struct Node {
    SlotId prev = kNil;
    SlotId next = kNil;
    uint16_t list = kNoList;
  };
  struct List {
    SlotId head = kNil;
    SlotId tail = kNil;
    uint32_t size = 0;
  };
  HugeVector<Node> nodes_;  // touched at random by every search: on huge pages
  std::vector<List> lists_;
};

}  // namespace kvtier::internal

#endif  // KVTIER_LIB_POLICIES_SLOT_LIST_H_
