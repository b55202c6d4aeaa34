#include "lib/index/index.h"

#include <algorithm>
#include <utility>

#include "absl/container/flat_hash_set.h"
#include "absl/strings/str_cat.h"

namespace kvtier::internal {
namespace {

constexpr Tier kDev = Tier::kDevice;
constexpr Tier kHostTier = Tier::kHost;
int T(Tier t) { return static_cast<int>(t); }

}  // namespace

Index::Index(IndexConfig config)
    : demote_on_evict_(config.demote_on_evict), host_write_through_(config.host_write_through) {
  MutexLock lock(&mu_);
  for (int t = 0; t < kNumTiers; ++t) {
    TierTable& tt = tiers_[t];
    tt.capacity = config.capacity_slots[t];
    tt.use.assign(tt.capacity, SlotUse::kFree);
    tt.key.assign(tt.capacity, kRootKey);
    tt.free.reserve(tt.capacity);
    // Low slot ids on top of the stack: handy when reading traces and tests.
    for (uint32_t s = tt.capacity; s > 0; --s) tt.free.push_back(s - 1);
    tt.policy = std::move(config.policies[t]);
    tt.stats.capacity_blocks = tt.capacity;
  }
}

Index::Lease* Index::FindLeaseLocked(uint64_t id) {
  auto it = leases_.find(id);
  return it == leases_.end() ? nullptr : &it->second;
}

void Index::PinLocked(Entry& e, Tier tier, bool lease) {
  Residency& r = e.res[T(tier)];
  if (r.pins() == 0) table(tier).policy->OnPin(r.slot);
  (lease ? r.lease_pins : r.io_pins)++;
}

void Index::UnpinLocked(Entry& e, Tier tier, bool lease) {
  Residency& r = e.res[T(tier)];
  (lease ? r.lease_pins : r.io_pins)--;
  if (r.pins() == 0) table(tier).policy->OnUnpin(r.slot);
}

void Index::FreeSlotLocked(Tier tier, SlotId slot) {
  TierTable& tt = table(tier);
  tt.use[slot] = SlotUse::kFree;
  tt.key[slot] = kRootKey;
  tt.free.push_back(slot);
}

void Index::AddResidencyLocked(const BlockKey& key, Tier tier, SlotId slot, ResState state,
                               uint32_t lease_pins, uint32_t io_pins) {
  TierTable& tt = table(tier);
  tt.use[slot] = SlotUse::kResident;
  tt.key[slot] = key;
  Entry& e = entries_.at(key);
  e.res[T(tier)] = Residency{.state = state, .slot = slot, .lease_pins = lease_pins,
                             .io_pins = io_pins};
  tt.policy->OnInsert(slot);
  if (lease_pins + io_pins > 0) tt.policy->OnPin(slot);
  tt.stats.inserts++;
}

SlotId Index::RemoveResidencyLocked(const BlockKey& key, Tier tier) {
  auto it = entries_.find(key);
  Residency& r = it->second.res[T(tier)];
  const SlotId slot = r.slot;
  table(tier).policy->OnRemove(slot);
  r = Residency{};
  EraseIfUnusedLocked(key);
  return slot;
}

void Index::EraseIfUnusedLocked(BlockKey key) {
  // Erase the entry and, walking up, every lost parent it was the last child of.
  while (key != kRootKey) {
    auto it = entries_.find(key);
    if (it == entries_.end() || it->second.cached() || it->second.children > 0) return;
    const BlockKey parent = it->second.parent;
    entries_.erase(it);
    if (parent == kRootKey) return;
    entries_.at(parent).children--;
    key = parent;
  }
}

MatchResult Index::MatchLocked(std::span<const BlockKey> keys) {
  MatchResult m;
  BlockKey parent = kRootKey;
  std::vector<Entry*> hit;
  for (const BlockKey& k : keys) {
    auto it = entries_.find(k);
    if (it == entries_.end() || !it->second.cached() || it->second.parent != parent) break;
    const bool on_device = it->second.res[T(kDev)].present();
    m.keys.push_back(k);
    m.tiers.push_back(on_device ? kDev : kHostTier);
    table(on_device ? kDev : kHostTier).stats.hits++;
    hit.push_back(&it->second);
    parent = k;
  }
  // Access leaves first so that, under recency policies, a chain's root is the most recent entry
  // and its tail is evicted before its head.
  for (auto e = hit.rbegin(); e != hit.rend(); ++e) {
    for (int t = 0; t < kNumTiers; ++t) {
      if ((*e)->res[t].present()) tiers_[t].policy->OnAccess((*e)->res[t].slot);
    }
  }
  counters_.match_calls++;
  counters_.blocks_queried += keys.size();
  counters_.blocks_missed += keys.size() - m.keys.size();
  return m;
}

std::optional<SlotId> Index::TakeHostSlotLocked() {
  TierTable& host = table(kHostTier);
  if (host.capacity == 0) return std::nullopt;
  if (!host.free.empty()) {
    const SlotId s = host.free.back();
    host.free.pop_back();
    return s;
  }
  auto victim = host.policy->PickVictim([&](SlotId s) {
    const Entry& e = entries_.at(host.key[s]);
    const Residency& r = e.res[T(kHostTier)];
    return r.state == ResState::kReady && r.pins() == 0 &&
           (e.res[T(kDev)].present() || e.children == 0);
  });
  if (!victim) return std::nullopt;
  const BlockKey key = host.key[*victim];
  const bool dropped = !entries_.at(key).res[T(kDev)].present();
  host.stats.evictions++;
  if (dropped) host.stats.drops++;
  return RemoveResidencyLocked(key, kHostTier);
}

std::optional<SlotId> Index::TakeDeviceSlotLocked(std::vector<Demotion>* demotions) {
  TierTable& dev = table(kDev);
  if (!dev.free.empty()) {
    const SlotId s = dev.free.back();
    dev.free.pop_back();
    return s;
  }
  bool can_write_back = demote_on_evict_ && table(kHostTier).capacity > 0;
  for (;;) {
    auto victim = dev.policy->PickVictim([&](SlotId s) {
      const Entry& e = entries_.at(dev.key[s]);
      const Residency& r = e.res[T(kDev)];
      return r.state == ResState::kReady && r.pins() == 0 &&
             (e.res[T(kHostTier)].present() || e.children == 0 || can_write_back);
    });
    if (!victim) return std::nullopt;
    const BlockKey key = dev.key[*victim];
    Entry& e = entries_.at(key);
    if (!e.res[T(kHostTier)].present() && can_write_back) {
      // Write-back: the host copy starts Filling (io-pinned) and the device slot is handed on at
      // once; the caller finishes the copy before anyone may write the slot.
      std::optional<SlotId> host_slot = TakeHostSlotLocked();
      if (!host_slot) {
        can_write_back = false;  // host full of pinned or protected blocks: drop leaves instead
        continue;
      }
      AddResidencyLocked(key, kHostTier, *host_slot, ResState::kFilling, 0, 1);
      demotions->push_back(Demotion{.key = key, .device_slot = *victim, .host_slot = *host_slot});
      counters_.demotions++;
    } else if (!e.res[T(kHostTier)].present()) {
      dev.stats.drops++;
    }
    dev.stats.evictions++;
    return RemoveResidencyLocked(key, kDev);
  }
}

absl::Status Index::AddLeaseSlotsLocked(Lease& lease, uint32_t n, std::vector<SlotId>* slots,
                                        std::vector<Demotion>* demotions) {
  std::vector<SlotId> taken;
  taken.reserve(n);
  for (uint32_t i = 0; i < n; ++i) {
    std::optional<SlotId> s = TakeDeviceSlotLocked(demotions);
    if (!s) {
      for (SlotId t : taken) FreeSlotLocked(kDev, t);
      return absl::ResourceExhaustedError(
          absl::StrCat("AllocateDevice: only ", i, " of ", n,
                       " device slots could be freed; the rest are pinned by leases or in flight (",
                       table(kDev).capacity, " slots in the device tier)"));
    }
    table(kDev).use[*s] = SlotUse::kLeased;
    table(kDev).key[*s] = kRootKey;
    taken.push_back(*s);
  }
  for (SlotId s : taken) {
    lease.slots.push_back(LeaseSlot{.slot = s});
    slots->push_back(s);
  }
  return absl::OkStatus();
}

absl::StatusOr<uint64_t> Index::NewLeaseLocked(uint32_t n, std::vector<SlotId>* slots,
                                               std::vector<Demotion>* demotions) {
  Lease lease;
  lease.slots.reserve(n);
  if (absl::Status s = AddLeaseSlotsLocked(lease, n, slots, demotions); !s.ok()) return s;
  const uint64_t id = next_lease_id_++;
  leases_.emplace(id, std::move(lease));
  return id;
}

absl::Status Index::GrowLeaseLocked(uint64_t lease_id, uint32_t n, std::vector<SlotId>* slots,
                                    std::vector<Demotion>* demotions) {
  Lease* lease = FindLeaseLocked(lease_id);
  if (lease == nullptr) return absl::FailedPreconditionError("Grow: the lease was released");
  return AddLeaseSlotsLocked(*lease, n, slots, demotions);
}

absl::StatusOr<LoadPlan> Index::PlanLoadLocked(uint64_t lease_id, std::span<const BlockKey> keys) {
  Lease* lease = FindLeaseLocked(lease_id);
  if (lease == nullptr) return absl::FailedPreconditionError("Load: the lease was released");
  if (keys.size() > lease->slots.size()) {
    return absl::InvalidArgumentError(absl::StrCat("Load: the match has ", keys.size(),
                                                   " blocks but the lease only ",
                                                   lease->slots.size(), " slots"));
  }
  for (size_t i = 0; i < keys.size(); ++i) {
    if (lease->slots[i].holds) {
      return absl::FailedPreconditionError(
          absl::StrCat("Load: lease slot ", i, " already holds a block (loaded or committed)"));
    }
  }
  LoadPlan plan;
  BlockKey parent = kRootKey;
  for (uint32_t i = 0; i < keys.size(); ++i) {
    auto it = entries_.find(keys[i]);
    if (it == entries_.end() || !it->second.cached() || it->second.parent != parent) break;
    Entry& e = it->second;
    Residency& d = e.res[T(kDev)];
    LeaseSlot& ls = lease->slots[i];
    if (d.present()) {
      // Already on the device: share it, give the lease's own slot back. A block another Load is
      // still filling ends the plan: its outcome is not known yet.
      if (d.state != ResState::kReady) break;
      FreeSlotLocked(kDev, ls.slot);
      ls = LeaseSlot{.slot = d.slot, .holds = true, .key = keys[i]};
      PinLocked(e, kDev, /*lease=*/true);
    } else {
      Residency& h = e.res[T(kHostTier)];
      if (h.state != ResState::kReady) break;
      PinLocked(e, kHostTier, /*lease=*/false);
      plan.promotions.push_back(Promotion{.key = keys[i], .host_slot = h.slot,
                                          .device_slot = ls.slot, .lease_id = lease_id,
                                          .position = i});
      AddResidencyLocked(keys[i], kDev, ls.slot, ResState::kFilling, 1, 1);
      ls.holds = true;
      ls.key = keys[i];
      counters_.promotions++;
    }
    parent = keys[i];
    plan.blocks++;
  }
  counters_.blocks_loaded += plan.blocks;
  plan.lease_slots.reserve(lease->slots.size());
  for (const LeaseSlot& ls : lease->slots) plan.lease_slots.push_back(ls.slot);
  return plan;
}

absl::Status Index::CommitLocked(uint64_t lease_id, std::span<const BlockKey> keys,
                                 std::vector<Demotion>* demotions) {
  Lease* lease = FindLeaseLocked(lease_id);
  if (lease == nullptr) return absl::FailedPreconditionError("Commit: the lease was released");
  if (keys.size() > lease->slots.size()) {
    return absl::InvalidArgumentError(absl::StrCat("Commit: ", keys.size(),
                                                   " keys for a lease of ", lease->slots.size(),
                                                   " slots"));
  }
  // Validate everything first: Commit is all or nothing.
  absl::flat_hash_set<BlockKey> seen;
  seen.reserve(keys.size());
  BlockKey parent = kRootKey;
  for (size_t i = 0; i < keys.size(); ++i) {
    const BlockKey& k = keys[i];
    if (k == kRootKey) {
      return absl::InvalidArgumentError(absl::StrCat("Commit: keys[", i, "] is the root key"));
    }
    if (!seen.insert(k).second) {
      return absl::InvalidArgumentError(
          absl::StrCat("Commit: keys[", i, "] repeats an earlier key (", k.ToHex(), ")"));
    }
    const LeaseSlot& ls = lease->slots[i];
    if (ls.holds) {
      if (ls.key != k) {
        return absl::InvalidArgumentError(absl::StrCat(
            "Commit: lease slot ", i, " holds block ", ls.key.ToHex(), " vs keys[", i, "] ",
            k.ToHex()));
      }
    } else if (auto it = entries_.find(k); it != entries_.end()) {
      if (it->second.parent != parent) {
        return absl::InvalidArgumentError(absl::StrCat(
            "Commit: keys[", i, "] is cached with another parent (", it->second.parent.ToHex(),
            " vs ", parent.ToHex(), "): keys must be one chain from the root"));
      }
      if (it->second.cached()) {
        return absl::AlreadyExistsError(absl::StrCat(
            "Commit: keys[", i, "] (", k.ToHex(), ") is already cached; Load it instead"));
      }
    }
    parent = k;
  }
  parent = kRootKey;
  for (size_t i = 0; i < keys.size(); ++i) {
    const BlockKey k = keys[i];
    LeaseSlot& ls = lease->slots[i];
    if (!ls.holds) {
      auto [it, inserted] = entries_.try_emplace(k);
      if (inserted) {
        it->second.parent = parent;
        if (parent != kRootKey) entries_.at(parent).children++;
      }
      AddResidencyLocked(k, kDev, ls.slot, ResState::kReady, 1, 0);
      ls.holds = true;
      ls.key = k;
      counters_.blocks_committed++;
      if (host_write_through_) {
        if (std::optional<SlotId> hs = TakeHostSlotLocked()) {
          AddResidencyLocked(k, kHostTier, *hs, ResState::kFilling, 0, 1);
          PinLocked(entries_.at(k), kDev, /*lease=*/false);
          demotions->push_back(Demotion{.key = k, .device_slot = ls.slot, .host_slot = *hs,
                                        .device_pinned = true});
          counters_.demotions++;
        }
      }
    }
    parent = k;
  }
  return absl::OkStatus();
}

absl::Status Index::ReleaseLeaseLocked(uint64_t lease_id) {
  auto it = leases_.find(lease_id);
  if (it == leases_.end()) return absl::FailedPreconditionError("Release: the lease was released");
  // Leaves first, for the same reason as in MatchLocked.
  for (auto ls = it->second.slots.rbegin(); ls != it->second.slots.rend(); ++ls) {
    if (ls->holds) {
      UnpinLocked(entries_.at(ls->key), kDev, /*lease=*/true);
    } else {
      FreeSlotLocked(kDev, ls->slot);
    }
  }
  leases_.erase(it);
  return absl::OkStatus();
}

void Index::FinishPromotionLocked(const Promotion& p, bool ok) {
  Entry& e = entries_.at(p.key);
  UnpinLocked(e, kHostTier, /*lease=*/false);
  UnpinLocked(e, kDev, /*lease=*/false);
  if (ok) {
    e.res[T(kDev)].state = ResState::kReady;
    return;
  }
  counters_.transfer_failures++;
  // The bytes in the slot are undefined: forget the residency, give the slot back to its lease.
  bool lease_owns = false;
  if (Lease* lease = FindLeaseLocked(p.lease_id); lease != nullptr) {
    LeaseSlot& ls = lease->slots[p.position];
    if (ls.holds && ls.key == p.key && ls.slot == p.device_slot) {
      ls.holds = false;
      e.res[T(kDev)].lease_pins--;
      lease_owns = true;
    }
  }
  const SlotId slot = RemoveResidencyLocked(p.key, kDev);
  if (lease_owns) {
    table(kDev).use[slot] = SlotUse::kLeased;
    table(kDev).key[slot] = kRootKey;
  } else {
    FreeSlotLocked(kDev, slot);
  }
}

void Index::FinishDemotionLocked(const Demotion& d, bool ok) {
  Entry& e = entries_.at(d.key);
  if (d.device_pinned) UnpinLocked(e, kDev, /*lease=*/false);
  UnpinLocked(e, kHostTier, /*lease=*/false);
  if (ok) {
    e.res[T(kHostTier)].state = ResState::kReady;
    return;
  }
  counters_.transfer_failures++;
  FreeSlotLocked(kHostTier, RemoveResidencyLocked(d.key, kHostTier));
}

void Index::FillStatsLocked(CacheStats* stats) const {
  *stats = counters_;
  stats->device = table(kDev).stats;
  stats->host = table(kHostTier).stats;
  for (int t = 0; t < kNumTiers; ++t) {
    TierStats& ts = t == 0 ? stats->device : stats->host;
    ts.used_blocks = tiers_[t].capacity - tiers_[t].free.size();
  }
  for (const auto& [key, e] : entries_) {
    if (e.res[0].present() && e.res[0].pins() > 0) stats->device.pinned_blocks++;
    if (e.res[1].present() && e.res[1].pins() > 0) stats->host.pinned_blocks++;
  }
  stats->leases_live = leases_.size();
}

absl::Status Index::CheckInvariantsLocked() const {
  auto fail = [](auto&&... parts) { return absl::InternalError(absl::StrCat(parts...)); };
  // Slots: each tier's slots are free, leased or resident, the free list is exact.
  for (int t = 0; t < kNumTiers; ++t) {
    const TierTable& tt = tiers_[t];
    const char* name = TierName(static_cast<Tier>(t));
    std::vector<uint8_t> on_free(tt.capacity, 0);
    for (SlotId s : tt.free) {
      if (s >= tt.capacity || on_free[s]++ || tt.use[s] != SlotUse::kFree) {
        return fail(name, ": free list holds slot ", s, " twice, out of range or in use");
      }
    }
    for (SlotId s = 0; s < tt.capacity; ++s) {
      if (tt.use[s] == SlotUse::kFree && !on_free[s]) {
        return fail(name, ": free slot ", s, " missing from the free list");
      }
      if (tt.use[s] == SlotUse::kLeased && t != 0) return fail(name, ": leased host slot ", s);
      if (tt.use[s] == SlotUse::kResident) {
        auto it = entries_.find(tt.key[s]);
        if (it == entries_.end() || !it->second.res[t].present() || it->second.res[t].slot != s) {
          return fail(name, ": resident slot ", s, " has no matching residency");
        }
      }
    }
  }
  // Leases: every leased slot belongs to exactly one lease; lease pins add up.
  absl::flat_hash_map<BlockKey, uint32_t> lease_pins;
  std::vector<uint8_t> leased(table(kDev).capacity, 0);
  for (const auto& [id, lease] : leases_) {
    for (const LeaseSlot& ls : lease.slots) {
      if (ls.holds) {
        auto it = entries_.find(ls.key);
        if (it == entries_.end() || it->second.res[0].slot != ls.slot ||
            !it->second.res[0].present()) {
          return fail("lease ", id, " holds ", ls.key.ToHex(), " at slot ", ls.slot,
                      " but the block does not reside there");
        }
        lease_pins[ls.key]++;
      } else if (table(kDev).use[ls.slot] != SlotUse::kLeased || leased[ls.slot]++) {
        return fail("lease ", id, " owns device slot ", ls.slot,
                    " which is not leased to it alone");
      }
    }
  }
  for (SlotId s = 0; s < table(kDev).capacity; ++s) {
    if (table(kDev).use[s] == SlotUse::kLeased && !leased[s]) {
      return fail("device slot ", s, " is leased to no live lease");
    }
  }
  // Entries: residencies point at their slots, pins add up, the chain is intact.
  absl::flat_hash_map<BlockKey, uint32_t> children;
  for (const auto& [key, e] : entries_) {
    if (e.parent != kRootKey) {
      if (!entries_.contains(e.parent)) return fail(key.ToHex(), ": parent not in the index");
      children[e.parent]++;
    }
    if (!e.cached() && e.children == 0) return fail(key.ToHex(), ": uncached leaf kept");
    for (int t = 0; t < kNumTiers; ++t) {
      const Residency& r = e.res[t];
      if (!r.present()) {
        if (r.pins() != 0) return fail(key.ToHex(), ": pins on an absent residency");
        continue;
      }
      const TierTable& tt = tiers_[t];
      if (r.slot >= tt.capacity || tt.use[r.slot] != SlotUse::kResident || tt.key[r.slot] != key) {
        return fail(key.ToHex(), ": ", TierName(static_cast<Tier>(t)), " residency at slot ",
                    r.slot, " which does not name it");
      }
      if (r.state == ResState::kFilling && r.io_pins == 0) {
        return fail(key.ToHex(), ": Filling without an I/O pin");
      }
      const uint32_t want = t == 0 && lease_pins.contains(key) ? lease_pins.at(key) : 0;
      if (r.lease_pins != want) {
        return fail(key.ToHex(), ": ", r.lease_pins, " lease pins vs ", want, " lease holders");
      }
    }
  }
  for (const auto& [key, e] : entries_) {
    const uint32_t want = children.contains(key) ? children.at(key) : 0;
    if (e.children != want) return fail(key.ToHex(), ": ", e.children, " children vs ", want);
  }
  return absl::OkStatus();
}

}  // namespace kvtier::internal
