// SlotHeap: an indexed binary min-heap of a tier's slot ids, for policies that rank by a value.
//
// `Less(a, b)` compares two slots by the policy's own per-slot keys; after changing a slot's key
// the policy calls Update(s). Push, Erase and Update are O(log n), Top O(1); positions are kept
// per slot, so nothing is allocated after construction. Not thread-safe: a policy is called under
// its tier's lock.
#ifndef KVTIER_LIB_POLICIES_SLOT_HEAP_H_
#define KVTIER_LIB_POLICIES_SLOT_HEAP_H_

#include <cstdint>
#include <limits>
#include <utility>
#include <vector>

#include "kvtier/policy.h"

namespace kvtier::internal {

template <typename Less>
class SlotHeap {
 public:
  static constexpr uint32_t kAbsent = std::numeric_limits<uint32_t>::max();

  SlotHeap(uint32_t capacity_slots, Less less) : pos_(capacity_slots, kAbsent), less_(less) {
    heap_.reserve(capacity_slots);
  }

  bool empty() const { return heap_.empty(); }
  uint32_t size() const { return static_cast<uint32_t>(heap_.size()); }
  bool Contains(SlotId s) const { return pos_[s] != kAbsent; }
  // Precondition: !empty().
  SlotId Top() const { return heap_.front(); }

  // Precondition: !Contains(s).
  void Push(SlotId s) {
    pos_[s] = size();
    heap_.push_back(s);
    Up(pos_[s]);
  }
  // No-op when absent.
  void Erase(SlotId s) {
    const uint32_t i = pos_[s];
    if (i == kAbsent) return;
    const SlotId last = heap_.back();
    heap_.pop_back();
    pos_[s] = kAbsent;
    if (i == size()) return;
    heap_[i] = last;
    pos_[last] = i;
    Down(Up(i));
  }
  // Restores the order after s's key changed; no-op when absent.
  void Update(SlotId s) {
    if (pos_[s] != kAbsent) Down(Up(pos_[s]));
  }

 private:
  uint32_t Up(uint32_t i) {
    while (i > 0) {
      const uint32_t parent = (i - 1) / 2;
      if (!less_(heap_[i], heap_[parent])) break;
      Swap(i, parent);
      i = parent;
    }
    return i;
  }
  void Down(uint32_t i) {
    for (;;) {
      const uint32_t l = 2 * i + 1, r = l + 1;
      uint32_t m = i;
      if (l < size() && less_(heap_[l], heap_[m])) m = l;
      if (r < size() && less_(heap_[r], heap_[m])) m = r;
      if (m == i) return;
      Swap(i, m);
      i = m;
    }
  }
  void Swap(uint32_t i, uint32_t j) {
    std::swap(heap_[i], heap_[j]);
    pos_[heap_[i]] = i;
    pos_[heap_[j]] = j;
  }

  std::vector<SlotId> heap_;
  std::vector<uint32_t> pos_;
  Less less_;
};

}  // namespace kvtier::internal

#endif  // KVTIER_LIB_POLICIES_SLOT_HEAP_H_
