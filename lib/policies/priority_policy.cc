// priority: engine-given retention priority per block, LRU within a priority (as TensorRT-LLM's
// priority-based KV cache retention: priorities 0..100, the lowest evicted first).
//
// A block's priority is the last Cache::Hint score given for it, clamped to [0, 100] and rounded;
// until then it is `default` (35, TensorRT-LLM's default). One LRU list per priority level; the
// victim is the least recently used evictable entry of the lowest non-empty level. Pinned entries
// leave their list and come back at the most recent end of their level when unpinned, as in
// `lru`; so do withheld ones (OnWithhold), which come back at the least recent end of their level
// unless used meanwhile. Victim cost: O(101) to find the level plus the entries the cache refuses
// (a prefix-kept one once: it is withheld then).
// Parameters: default (0..100, default 35).
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <vector>

#include "kvtier/policy.h"
#include "lib/policies/policy_params.h"
#include "lib/policies/slot_list.h"
#include "lib/policies/withhold_state.h"

namespace kvtier {
namespace {

using internal::SlotLists;
using internal::WithholdState;

class PriorityPolicy final : public EvictionPolicy {
 public:
  static constexpr uint16_t kLevels = 101;

  static absl::StatusOr<std::unique_ptr<EvictionPolicy>> Create(const PolicyContext& ctx) {
    if (absl::Status s = CheckPolicyParams("priority", ctx.params, {"default"}); !s.ok()) return s;
    absl::StatusOr<uint32_t> level =
        internal::ParamUint("priority", ctx.params, "default", 35, 0, kLevels - 1);
    if (!level.ok()) return level.status();
    return std::unique_ptr<EvictionPolicy>(
        new PriorityPolicy(ctx.capacity_slots, static_cast<uint16_t>(*level)));
  }

  void OnInsert(SlotId s) override {
    level_[s] = default_level_;
    state_[s].Reset();
    lists_.PushFront(level_[s], s);
  }
  void OnAccess(SlotId s) override {
    if (state_[s].Defer()) return;  // pinned or withheld: comes back as recent
    lists_.MoveToFront(level_[s], s);
  }
  void OnRemove(SlotId s) override {
    lists_.Remove(s);
    state_[s].Reset();
  }
  void OnPin(SlotId s) override {
    state_[s].Pin();
    lists_.Remove(s);
  }
  void OnUnpin(SlotId s) override {
    if (state_[s].Unpin()) lists_.PushFront(level_[s], s);
  }
  // Withheld (a prefix-kept block the cache took out of the candidates): out of its list, back at
  // its level's cold end where it was, or at the recent end if it was used meanwhile.
  bool OnWithhold(SlotId s) override {
    lists_.Remove(s);
    state_[s].Withhold();
    return true;
  }
  void OnRestore(SlotId s) override {
    switch (state_[s].Restore()) {
      case WithholdState::Place::kFront:
        return lists_.PushFront(level_[s], s);
      case WithholdState::Place::kBack:
        return lists_.PushBack(level_[s], s);
      case WithholdState::Place::kNowhere:
        return;  // relinked on unpin
    }
  }
  void OnHint(SlotId s, double score) override {
    const double clamped = std::isnan(score) ? default_level_ : std::clamp(score, 0.0, 100.0);
    const auto level = static_cast<uint16_t>(std::lround(clamped));
    if (level == level_[s]) return;
    level_[s] = level;
    if (state_[s].Defer()) return;
    lists_.MoveToFront(level, s);
  }

  std::optional<SlotId> PickVictim(absl::FunctionRef<bool(SlotId)> can_evict) override {
    for (uint16_t level = 0; level < kLevels; ++level) {
      for (SlotId s = lists_.Back(level); s != SlotLists::kNil; s = lists_.Newer(s)) {
        if (can_evict(s)) return s;
      }
    }
    return std::nullopt;
  }

 private:
  PriorityPolicy(uint32_t capacity, uint16_t default_level)
      : default_level_(default_level),
        lists_(capacity, kLevels),
        level_(capacity, default_level),
        state_(capacity) {}

  const uint16_t default_level_;
  SlotLists lists_;  // one per level; front: most recent
  std::vector<uint16_t> level_;
  std::vector<WithholdState> state_;
};

}  // namespace

KVTIER_REGISTER_POLICY("priority", PriorityPolicy);

}  // namespace kvtier
