// custom_policy: a plugin for `kvtier-replay --plugin` (docs/policies.md). Evicts the block whose
// prefix was matched (or extended) longest ago, deepest first: parents are never older than their
// children, so the cold end holds leaves, as the prefix rule wants. Flat replay: LRU. O(log n).
#include <cstdint>
#include <set>
#include <tuple>
#include <utility>
#include <vector>

#include "kvtier/policy.h"

namespace kvtier {
namespace {
class PrefixIdlePolicy final : public EvictionPolicy {
 public:
  static absl::StatusOr<std::unique_ptr<EvictionPolicy>> Create(const PolicyContext& ctx) {
    if (absl::Status s = CheckPolicyParams("prefix_idle", ctx.params, {}); !s.ok()) return s;
    return std::unique_ptr<EvictionPolicy>(new PrefixIdlePolicy(ctx.capacity_slots));
  }
  void OnInsert(SlotId s) override {
    b_[s] = Block{.gen = b_[s].gen};
    Touch(s, ++clock_);
    prev_ = std::exchange(last_, s);
  }
  void OnLink(SlotId s, SlotId parent) override {  // right after OnInsert(s)
    b_[s].parent = parent;
    b_[s].parent_gen = b_[parent].gen;
    const uint64_t t = parent == prev_ ? b_[parent].last : b_[s].last;  // Commit goes root-down
    Rank(s, t, b_[parent].depth + 1);
    Touch(parent, t);  // the prefix was just extended: it was used now
  }
  void OnAccess(SlotId s) override {
    Touch(s, last_ != kNil && Parent(last_) == s ? clock_ : ++clock_);  // Match goes leaf-up
    last_ = s;
  }
  void OnRemove(SlotId s) override {
    ranked_.erase(Key(s));
    b_[s].gen++;  // ends the links to s
  }
  std::optional<SlotId> PickVictim(absl::FunctionRef<bool(SlotId)> can_evict) override {
    for (const auto& [last, shallowness, s] : ranked_) {
      if (can_evict(s)) return s;
    }
    return std::nullopt;
  }

 private:
  static constexpr SlotId kNil = UINT32_MAX;
  struct Block {
    uint32_t gen = 0;      // bumped when the slot's block goes
    uint64_t last = 0;     // logical time its prefix was last matched
    uint32_t depth = 0;    // ancestors linked in this tier
    SlotId parent = kNil;  // valid while b_[parent].gen == parent_gen
    uint32_t parent_gen = 0;
  };
  explicit PrefixIdlePolicy(uint32_t capacity) : b_(capacity) {}
  SlotId Parent(SlotId s) const {
    return b_[s].parent != kNil && b_[b_[s].parent].gen == b_[s].parent_gen ? b_[s].parent : kNil;
  }
  std::tuple<uint64_t, uint32_t, SlotId> Key(SlotId s) const {  // oldest, then deepest, first
    return {b_[s].last, UINT32_MAX - b_[s].depth, s};
  }
  void Rank(SlotId s, uint64_t last, uint32_t depth) {
    ranked_.erase(Key(s));
    b_[s].last = last;
    b_[s].depth = depth;
    ranked_.insert(Key(s));
  }
  void Touch(SlotId s, uint64_t t) {  // s and its ancestors were matched at time t
    for (; s != kNil && b_[s].last < t; s = Parent(s)) Rank(s, t, b_[s].depth);
  }
  std::vector<Block> b_;
  std::set<std::tuple<uint64_t, uint32_t, SlotId>> ranked_;
  uint64_t clock_ = 0;
  SlotId last_ = kNil, prev_ = kNil;  // the slot last inserted or accessed, the one before
};
KVTIER_REGISTER_POLICY("prefix_idle", PrefixIdlePolicy);  // runs when the plugin is loaded
}  // namespace
}  // namespace kvtier
