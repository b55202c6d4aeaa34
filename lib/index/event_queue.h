// EventQueue: the bounded ring of KvEvents (kvtier/events.h) that the Index records at its
// residency transitions and Cache::TakeEvents drains, oldest first.
//
// The ring is allocated once, at construction; recording an event is O(1) and allocates nothing.
// When the ring is full a new event is dropped (the ones queued are kept, so what the engine takes
// is always a gapless run from its last take, up to the first loss) and counted; its sequence
// number is still used, so the gap shows in `seq`. Capacity 0: disabled, Push is a branch.
//
// Thread safety: none of its own; the Index calls it under its mutex.
#ifndef KVTIER_LIB_INDEX_EVENT_QUEUE_H_
#define KVTIER_LIB_INDEX_EVENT_QUEUE_H_

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <vector>

#include "kvtier/block_key.h"
#include "kvtier/events.h"
#include "kvtier/tier.h"

namespace kvtier::internal {

class EventQueue {
 public:
  // `capacity` events at most queued (0: disabled); each carries `tokens_per_block`.
  EventQueue(uint32_t capacity, uint32_t tokens_per_block)
      : ring_(capacity), tokens_per_block_(tokens_per_block) {}

  bool enabled() const { return !ring_.empty(); }

  void Push(KvEventType type, Tier tier, const BlockKey& key, const BlockKey& parent) {
    if (ring_.empty()) return;
    const uint64_t seq = next_seq_++;
    if (size_ == ring_.size()) {
      dropped_++;
      return;
    }
    size_t at = head_ + size_;
    if (at >= ring_.size()) at -= ring_.size();
    ring_[at] = KvEvent{.seq = seq,
                        .type = type,
                        .tier = tier,
                        .tokens_per_block = tokens_per_block_,
                        .key = key,
                        .parent = parent};
    size_++;
  }

  // Moves the oldest min(max, size()) events to the end of `out`, in order. O(events taken).
  void Take(size_t max, std::vector<KvEvent>* out) {
    const size_t n = std::min(max, size_);
    out->reserve(out->size() + n);
    for (size_t i = 0; i < n; ++i) {
      out->push_back(ring_[head_]);
      if (++head_ == ring_.size()) head_ = 0;
    }
    size_ -= n;
  }

  size_t size() const { return size_; }
  uint64_t dropped() const { return dropped_; }

 private:
  std::vector<KvEvent> ring_;
  const uint32_t tokens_per_block_;
  size_t head_ = 0;  // the oldest event queued
  size_t size_ = 0;  // events queued
  uint64_t next_seq_ = 0;
  uint64_t dropped_ = 0;
};

}  // namespace kvtier::internal

#endif  // KVTIER_LIB_INDEX_EVENT_QUEUE_H_
