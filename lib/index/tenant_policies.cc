#include "lib/index/tenant_policies.h"

#include <utility>

namespace kvtier::internal {

TenantPolicies::TenantPolicies(std::vector<std::unique_ptr<EvictionPolicy>> policies,
                               std::vector<uint32_t> quota_slots, uint32_t capacity)
    : policies_(std::move(policies)),
      quota_(std::move(quota_slots)),
      used_(quota_.size(), 0),
      owner_(capacity, 0) {}

void TenantPolicies::OnInsertKey(SlotId slot, uint64_t block_id) {
  Of(slot).OnInsertKey(slot, block_id);
}

void TenantPolicies::OnInsert(SlotId slot) {
  used_[owner_[slot]]++;
  Of(slot).OnInsert(slot);
}

void TenantPolicies::OnRemove(SlotId slot) {
  used_[owner_[slot]]--;
  Of(slot).OnRemove(slot);
}

void TenantPolicies::OnLink(SlotId slot, SlotId parent) {
  // Each policy knows only its tenant's slots: a chain that crosses tenants (one salt used by two
  // of them) is not linked across.
  if (owner_[slot] == owner_[parent]) Of(slot).OnLink(slot, parent);
}

std::optional<SlotId> TenantPolicies::PickVictim(absl::FunctionRef<bool(SlotId)> can_evict) {
  const uint8_t self = inserter_;
  const bool self_over = used_[self] >= quota_[self];
  if (self_over) {
    if (auto v = policies_[self]->PickVictim(can_evict)) return v;
  }
  // Tenants strictly over their quota, the most over first: evicting one leaves it at or above
  // its quota. O(tenants) per round, at most `tenants` rounds when victims cannot be had.
  uint64_t tried = uint64_t{1} << self;  // quota_.size() <= 64
  for (;;) {
    int best = -1;
    uint32_t best_excess = 0;
    for (size_t t = 0; t < quota_.size(); ++t) {
      if ((tried >> t & 1) != 0 || used_[t] <= quota_[t]) continue;
      const uint32_t excess = used_[t] - quota_[t];
      if (excess > best_excess) {
        best = static_cast<int>(t);
        best_excess = excess;
      }
    }
    if (best < 0) break;
    tried |= uint64_t{1} << best;
    if (auto v = policies_[static_cast<size_t>(best)]->PickVictim(can_evict)) return v;
  }
  if (!self_over) return policies_[self]->PickVictim(can_evict);
  return std::nullopt;
}

}  // namespace kvtier::internal
