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

namespace kvtier {
namespace {

using internal::SlotLists;

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
    pinned_[s] = withheld_[s] = false;
    lists_.PushFront(level_[s], s);
  }
  void OnAccess(SlotId s) override {
    if (pinned_[s] || withheld_[s]) {
      touched_[s] = true;  // a withheld slot comes back as recent
      return;
    }
    lists_.MoveToFront(level_[s], s);
  }
  void OnRemove(SlotId s) override {
    lists_.Remove(s);
    pinned_[s] = withheld_[s] = false;
  }
  void OnPin(SlotId s) override {
    pinned_[s] = true;
    lists_.Remove(s);
  }
  void OnUnpin(SlotId s) override {
    pinned_[s] = false;
    touched_[s] = true;
    if (!withheld_[s]) lists_.PushFront(level_[s], s);
  }
  // Withheld (a prefix-kept block the cache took out of the candidates): out of its list, back at
  // its level's cold end where it was, or at the recent end if it was used meanwhile.
  bool OnWithhold(SlotId s) override {
    lists_.Remove(s);
    withheld_[s] = true;
    touched_[s] = false;
    return true;
  }
  void OnRestore(SlotId s) override {
    withheld_[s] = false;
    if (pinned_[s]) return;  // relinked on unpin
    if (touched_[s]) {
      lists_.PushFront(level_[s], s);
    } else {
      lists_.PushBack(level_[s], s);
    }
  }
  void OnHint(SlotId s, double score) override {
    const double clamped = std::isnan(score) ? default_level_ : std::clamp(score, 0.0, 100.0);
    const auto level = static_cast<uint16_t>(std::lround(clamped));
    if (level == level_[s]) return;
    level_[s] = level;
    if (pinned_[s] || withheld_[s]) {
      touched_[s] = true;
      return;
    }
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
        pinned_(capacity, false),
        withheld_(capacity, false),
        touched_(capacity, false) {}

  const uint16_t default_level_;
  SlotLists lists_;  // one per level; front: most recent
  std::vector<uint16_t> level_;
  std::vector<bool> pinned_;
  std::vector<bool> withheld_;  // OnWithhold accepted, not yet restored
  std::vector<bool> touched_;   // accessed, hinted or unpinned while withheld
};

}  // namespace

KVTIER_REGISTER_POLICY("priority", PriorityPolicy);

}  // namespace kvtier
