// GhostList: the ids of recently evicted blocks, oldest dropped first (ARC's B1/B2, S3-FIFO's
// ghost queue).
//
// Ids are the 64-bit block ids of EvictionPolicy::OnInsertKey. A bounded FIFO with O(1) push,
// erase, lookup and pop: a hash map from id to node, nodes in a vector with a free list, so a
// full ghost list allocates nothing. Not thread-safe: a policy is called under its tier's lock.
#ifndef KVTIER_LIB_POLICIES_GHOST_LIST_H_
#define KVTIER_LIB_POLICIES_GHOST_LIST_H_

#include <cstdint>
#include <limits>
#include <optional>
#include <vector>

#include "absl/container/flat_hash_map.h"

namespace kvtier::internal {

class GhostList {
 public:
  // Holds at most `capacity` ids; pushing one more drops the oldest. 0 keeps nothing.
  explicit GhostList(uint32_t capacity) : capacity_(capacity) {
    nodes_.reserve(capacity);
    index_.reserve(capacity);
  }

  uint32_t size() const { return static_cast<uint32_t>(index_.size()); }
  bool Contains(uint64_t id) const { return index_.contains(id); }

  // Adds id as the newest (an id already present becomes the newest).
  void Push(uint64_t id) {
    if (capacity_ == 0) return;
    Erase(id);
    if (size() == capacity_) PopOldest();
    uint32_t n;
    if (!free_.empty()) {
      n = free_.back();
      free_.pop_back();
    } else {
      n = static_cast<uint32_t>(nodes_.size());
      nodes_.emplace_back();
    }
    nodes_[n] = Node{.id = id, .newer = kNil, .older = newest_};
    (newest_ != kNil ? nodes_[newest_].newer : oldest_) = n;
    newest_ = n;
    index_.emplace(id, n);
  }

  // Removes id; false when it was not there.
  bool Erase(uint64_t id) {
    auto it = index_.find(id);
    if (it == index_.end()) return false;
    Unlink(it->second);
    index_.erase(it);
    return true;
  }

  // The oldest id, or nullopt when empty.
  std::optional<uint64_t> Oldest() const {
    if (oldest_ == kNil) return std::nullopt;
    return nodes_[oldest_].id;
  }
  // Drops the oldest id; no-op when empty.
  void PopOldest() {
    if (oldest_ == kNil) return;
    const uint32_t n = oldest_;
    index_.erase(nodes_[n].id);
    Unlink(n);
  }

 private:
  static constexpr uint32_t kNil = std::numeric_limits<uint32_t>::max();
  struct Node {
    uint64_t id = 0;
    uint32_t newer = kNil;
    uint32_t older = kNil;
  };
  void Unlink(uint32_t n) {
    const Node& node = nodes_[n];
    (node.newer != kNil ? nodes_[node.newer].older : newest_) = node.older;
    (node.older != kNil ? nodes_[node.older].newer : oldest_) = node.newer;
    free_.push_back(n);
  }

  const uint32_t capacity_;
  std::vector<Node> nodes_;
  std::vector<uint32_t> free_;
  absl::flat_hash_map<uint64_t, uint32_t> index_;
  uint32_t newest_ = kNil;
  uint32_t oldest_ = kNil;
};

}  // namespace kvtier::internal

#endif  // KVTIER_LIB_POLICIES_GHOST_LIST_H_
