// h2o: keeps the heavy hitters (after H2O, Zhang et al., NeurIPS'23): the block with the lowest
// accumulated score is demoted first, the least recently used among equal scores.
//
// Scores come from the engine through Cache::Hint: with accumulate=true (default) each hint adds
// to the block's score (the engine passes the attention mass a block received since its last
// hint); with accumulate=false a hint replaces it (the engine keeps the sums). A block starts at
// 0, so without hints this is LRU. Unlike the paper, nothing is dropped: a demoted block still
// exists in the tier below (docs/policies.md).
// Structure: an indexed min-heap on (score, last use); pinned and withheld entries leave it until
// unpinned or restored (a restored entry keeps its rank: it goes back exactly where it was).
// Victim cost: O(log n) plus O(log n) per entry the cache refuses (a prefix-kept one once, then it
// is withheld). Access: O(log n).
// Parameters: accumulate (true|false, default true).
#include <cmath>
#include <cstdint>
#include <vector>

#include "kvtier/policy.h"
#include "lib/policies/policy_params.h"
#include "lib/policies/slot_heap.h"

namespace kvtier {
namespace {

class H2oPolicy final : public EvictionPolicy {
 public:
  static absl::StatusOr<std::unique_ptr<EvictionPolicy>> Create(const PolicyContext& ctx) {
    if (absl::Status s = CheckPolicyParams("h2o", ctx.params, {"accumulate"}); !s.ok()) return s;
    absl::StatusOr<bool> accumulate = internal::ParamBool("h2o", ctx.params, "accumulate", true);
    if (!accumulate.ok()) return accumulate.status();
    return std::unique_ptr<EvictionPolicy>(new H2oPolicy(ctx.capacity_slots, *accumulate));
  }

  void OnInsert(SlotId s) override {
    rank_[s] = Rank{.score = 0, .tick = ++clock_};
    heap_.Push(s);
  }
  void OnAccess(SlotId s) override {
    rank_[s].tick = ++clock_;
    heap_.Update(s);  // no-op while out of the heap
  }
  void OnRemove(SlotId s) override {
    heap_.Erase(s);  // no-op when absent
    rank_[s].pinned = rank_[s].withheld = false;
  }
  void OnPin(SlotId s) override {
    rank_[s].pinned = true;
    heap_.Erase(s);  // no-op when absent
  }
  void OnUnpin(SlotId s) override {
    rank_[s].pinned = false;
    rank_[s].tick = ++clock_;
    if (!rank_[s].withheld) heap_.Push(s);
  }
  bool OnWithhold(SlotId s) override {
    rank_[s].withheld = true;
    heap_.Erase(s);  // no-op when absent
    return true;
  }
  void OnRestore(SlotId s) override {
    rank_[s].withheld = false;
    if (!rank_[s].pinned) heap_.Push(s);
  }
  void OnHint(SlotId s, double score) override {
    if (std::isnan(score)) return;
    rank_[s].score = accumulate_ ? rank_[s].score + score : score;
    heap_.Update(s);  // no-op while out of the heap
  }

  std::optional<SlotId> PickVictim(absl::FunctionRef<bool(SlotId)> can_evict) override {
    std::optional<SlotId> victim;
    while (!heap_.empty()) {
      const SlotId s = heap_.Top();
      if (can_evict(s)) {
        victim = s;
        break;
      }
      heap_.Erase(s);
      refused_.push_back(s);
    }
    for (SlotId s : refused_) heap_.Push(s);
    refused_.clear();
    return victim;
  }

 private:
  struct Rank {
    double score = 0;
    uint64_t tick = 0;  // last insert, access or unpin
    bool pinned = false;
    bool withheld = false;
  };
  struct Less {
    const std::vector<Rank>* rank;
    bool operator()(SlotId a, SlotId b) const {
      const Rank& x = (*rank)[a];
      const Rank& y = (*rank)[b];
      return x.score != y.score ? x.score < y.score : x.tick < y.tick;
    }
  };

  H2oPolicy(uint32_t capacity, bool accumulate)
      : accumulate_(accumulate), rank_(capacity), heap_(capacity, Less{&rank_}) {}

  const bool accumulate_;
  uint64_t clock_ = 0;
  std::vector<Rank> rank_;
  internal::SlotHeap<Less> heap_;
  std::vector<SlotId> refused_;
};

}  // namespace

KVTIER_REGISTER_POLICY("h2o", H2oPolicy);

}  // namespace kvtier
