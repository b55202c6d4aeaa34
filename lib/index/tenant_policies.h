// TenantPolicies: one tier's eviction policy split by tenant, so that per-tenant shares of the
// tier hold (Options.host.tenant_shares, Options.disk.tenant_shares).
//
// Each tenant (0: the default, unnamed one; 1..n: the named ones) has its own instance of the
// tier's policy, ranking only its own blocks, and a quota: the slots its share of the tier buys
// (the default tenant's is what the named shares leave). The Index says who owns each slot before
// inserting it (SetOwner) and who the slot it is taking is for before asking for a victim
// (SetInserter). The victim then comes from:
//   - the inserter itself first when it holds its quota or more, then from tenants over theirs;
//   - else tenants over their quota first (the one most over first), then the inserter itself.
// A tenant at or under its quota never loses a block to another tenant's insert. Free slots are
// anyone's: a tenant may hold more than its quota while the tier has room, and gives the excess
// back as others insert.
//
// Cost: the sub-policy's, plus O(tenants) per victim (tenants <= kMaxTenants); memory: one policy
// instance per tenant.
// Thread safety: none; runs under the Index's lock like any policy.
#ifndef KVTIER_LIB_INDEX_TENANT_POLICIES_H_
#define KVTIER_LIB_INDEX_TENANT_POLICIES_H_

#include <cstdint>
#include <memory>
#include <optional>
#include <vector>

#include "kvtier/policy.h"

namespace kvtier::internal {

class TenantPolicies final : public EvictionPolicy {
 public:
  // policies[t] and quota_slots[t] for each tenant t (same size, at least 1); `capacity` slots.
  TenantPolicies(std::vector<std::unique_ptr<EvictionPolicy>> policies,
                 std::vector<uint32_t> quota_slots, uint32_t capacity);

  // The owner of `slot`'s next OnInsert, and the tenant the next PickVictim makes room for.
  void SetOwner(SlotId slot, uint8_t tenant) { owner_[slot] = tenant; }
  void SetInserter(uint8_t tenant) { inserter_ = tenant; }

  void OnInsertKey(SlotId slot, uint64_t block_id) override;
  void OnInsert(SlotId slot) override;
  void OnAccess(SlotId slot) override { Of(slot).OnAccess(slot); }
  void OnRemove(SlotId slot) override;
  void OnPin(SlotId slot) override { Of(slot).OnPin(slot); }
  void OnUnpin(SlotId slot) override { Of(slot).OnUnpin(slot); }
  void OnLink(SlotId slot, SlotId parent) override;
  void OnHint(SlotId slot, double score) override { Of(slot).OnHint(slot, score); }
  std::optional<SlotId> PickVictim(absl::FunctionRef<bool(SlotId)> can_evict) override;
  bool DemoteVictim(SlotId slot) override { return Of(slot).DemoteVictim(slot); }
  void OnUpperCopy(SlotId slot, bool held_above) override {
    Of(slot).OnUpperCopy(slot, held_above);
  }
  bool OnWithhold(SlotId slot) override { return Of(slot).OnWithhold(slot); }
  void OnRestore(SlotId slot) override { Of(slot).OnRestore(slot); }

 private:
  EvictionPolicy& Of(SlotId slot) { return *policies_[owner_[slot]]; }

  std::vector<std::unique_ptr<EvictionPolicy>> policies_;  // by tenant
  std::vector<uint32_t> quota_;                            // by tenant, slots
  std::vector<uint32_t> used_;                             // by tenant, slots held
  std::vector<uint8_t> owner_;                             // by slot
  uint8_t inserter_ = 0;
};

}  // namespace kvtier::internal

#endif  // KVTIER_LIB_INDEX_TENANT_POLICIES_H_
