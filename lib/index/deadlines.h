// DeadlineTable: entry ids with a deadline each (Cache::Pin's holds, Hint's timed scores), expired
// lazily: the Index calls Expire(now) where a deadline matters (before choosing a victim, and at
// the start of the calls that set or end them), so no timer thread is needed.
//
// A hash map id -> deadline, and a min-heap of (deadline, id) with lazy deletion: Erase and a
// second Set leave a stale heap record that Expire skips (its deadline no longer the id's). When
// stale records outnumber live ones the heap is rebuilt from the map, so the heap stays within
// 2 x size() + 64 records. Cost: Set, Erase, Contains O(1) (Set O(log n) for the heap), Expire
// O((expired + stale passed) log n).
//
// Thread safety: none of its own; the Index calls it under its mutex.
#ifndef KVTIER_LIB_INDEX_DEADLINES_H_
#define KVTIER_LIB_INDEX_DEADLINES_H_

#include <cstddef>
#include <cstdint>
#include <functional>
#include <queue>
#include <utility>
#include <vector>

#include "absl/container/flat_hash_map.h"
#include "absl/functional/function_ref.h"

namespace kvtier::internal {

class DeadlineTable {
 public:
  bool empty() const { return deadline_.empty(); }
  size_t size() const { return deadline_.size(); }
  bool Contains(uint32_t id) const { return deadline_.contains(id); }

  // Gives `id` the deadline `at` (nanoseconds on the Index's clock), replacing any it had.
  void Set(uint32_t id, uint64_t at) {
    deadline_[id] = at;
    heap_.push({at, id});
    if (heap_.size() > 2 * deadline_.size() + 64) Rebuild();
  }
  // Ends `id`'s deadline early; false if it had none.
  bool Erase(uint32_t id) { return deadline_.erase(id) > 0; }

  // Removes every id whose deadline is at or before `now`, calling expired(id) for each, earliest
  // first.
  void Expire(uint64_t now, absl::FunctionRef<void(uint32_t)> expired) {
    while (!heap_.empty() && heap_.top().first <= now) {
      const auto [at, id] = heap_.top();
      heap_.pop();
      auto it = deadline_.find(id);
      if (it == deadline_.end() || it->second != at) continue;  // stale: erased or set again
      deadline_.erase(it);
      expired(id);
    }
  }

 private:
  using Record = std::pair<uint64_t, uint32_t>;  // (deadline, id)

  void Rebuild() {
    std::vector<Record> live;
    live.reserve(deadline_.size());
    for (const auto& [id, at] : deadline_) live.push_back({at, id});
    heap_ = decltype(heap_)(std::greater<Record>(), std::move(live));
  }

  absl::flat_hash_map<uint32_t, uint64_t> deadline_;
  std::priority_queue<Record, std::vector<Record>, std::greater<Record>> heap_;
};

}  // namespace kvtier::internal

#endif  // KVTIER_LIB_INDEX_DEADLINES_H_
