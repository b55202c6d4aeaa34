#include "lib/index/index.h"

#include <algorithm>
#include <utility>

#include "absl/container/flat_hash_set.h"
#include "absl/container/inlined_vector.h"
#include "absl/strings/str_cat.h"
#include "kvtier/policy.h"
#include "lib/common/histogram.h"
#include "lib/common/status_macros.h"

namespace kvtier::internal {
namespace {

constexpr Tier kDev = Tier::kDevice;
constexpr Tier kHostTier = Tier::kHost;
constexpr Tier kDiskTier = Tier::kDisk;
int T(Tier t) { return static_cast<int>(t); }

// True if keys repeat. Chains are short: pairwise below 32 keys, a hash set above.
bool HasDuplicate(std::span<const BlockKey> keys) {
  if (keys.size() < 32) {
    for (size_t i = 1; i < keys.size(); ++i) {
      for (size_t j = 0; j < i; ++j) {
        if (keys[i] == keys[j]) return true;
      }
    }
    return false;
  }
  absl::flat_hash_set<BlockKey> seen(keys.begin(), keys.end());
  return seen.size() != keys.size();
}

// Sets the tenant whose entries a call makes, for the call's duration.
class TenantScope {
 public:
  TenantScope(uint8_t& current, uint8_t tenant) : current_(current) { current_ = tenant; }
  ~TenantScope() { current_ = 0; }
  TenantScope(const TenantScope&) = delete;
  TenantScope& operator=(const TenantScope&) = delete;

 private:
  uint8_t& current_;
};

}  // namespace

Index::Index(IndexConfig config)
    : capacities_(config.capacity_slots),
      events_(config.events_capacity, config.tokens_per_block),
      clock_(config.clock ? std::move(config.clock) : std::function<uint64_t()>(MonotonicNanos)),
      demote_on_evict_(config.demote_on_evict),
      host_write_through_(config.host_write_through),
      host_lossy_(config.host_lossy),
      store_feed_(config.store_feed),
      wipe_on_free_(config.wipe_on_free) {
  MutexLock lock(&mu_);
  for (int t = 0; t < kNumTiers; ++t) {
    TierTable& tt = tiers_[t];
    tt.capacity = config.capacity_slots[t];
    tt.slot.assign(tt.capacity, TierTable::Slot{});
    tt.free.reserve(tt.capacity);
    // Low slot ids on top of the stack: handy when reading traces and tests.
    for (uint32_t s = tt.capacity; s > 0; --s) tt.free.push_back(s - 1);
    tt.policy = std::move(config.policies[t]);
    if (!config.tenant_quota_slots[t].empty() && tt.capacity > 0) {
      auto split =
          std::make_unique<TenantPolicies>(std::move(config.tenant_policies[t]),
                                           std::move(config.tenant_quota_slots[t]), tt.capacity);
      tenant_policies_[t] = split.get();
      tt.policy = std::move(split);
      split_by_tenant_ = true;
    }
    if (tt.policy == nullptr) {  // a disabled tier: a policy that is never asked anything
      tt.policy = *CreatePolicy("lru", {.capacity_slots = 0});
    }
    tt.stats.capacity_blocks = tt.capacity;
  }
  for (int t = 0; t < kNumTiers; ++t) {
    bottom_[t] = t + 1 == kNumTiers || !demote_on_evict_ || tiers_[t + 1].capacity == 0;
  }
  const size_t expected = size_t{tiers_[0].capacity} + tiers_[1].capacity;
  ids_.reserve(expected);
  slab_.reserve(expected);
}

Index::Lease* Index::FindLeaseLocked(uint64_t id) {
  auto it = leases_.find(id);
  return it == leases_.end() ? nullptr : &it->second;
}

uint32_t Index::AddEntryLocked(const BlockKey& key, uint32_t parent_id) {
  uint32_t id;
  if (!free_ids_.empty()) {
    id = free_ids_.back();
    free_ids_.pop_back();
  } else {
    id = static_cast<uint32_t>(slab_.size());
    slab_.emplace_back();
  }
  slab_[id] = Entry{.key = key, .parent_id = parent_id};
  if (split_by_tenant_) {
    if (owner_.size() <= id) owner_.resize(size_t{id} + 1, 0);
    owner_[id] = tenant_;
  }
  ids_.insert(id);  // hashes slab_[id].key: set it first
  if (parent_id != kNoEntry) slab_[parent_id].children++;
  return id;
}

void Index::PinLocked(uint32_t id, Tier tier, bool lease) {
  Residency& r = E(id).res[T(tier)];
  if (r.pins() == 0) {
    table(tier).policy->OnPin(r.slot);
    table(tier).pinned++;
  }
  if (lease) {
    r.lease_pins++;
  } else {
    r.io_pins++;
  }
}

void Index::UnpinLocked(uint32_t id, Tier tier, bool lease) {
  Residency& r = E(id).res[T(tier)];
  if (lease) {
    r.lease_pins--;
  } else {
    r.io_pins--;
  }
  if (r.pins() == 0) {
    table(tier).policy->OnUnpin(r.slot);
    table(tier).pinned--;
  }
}

bool Index::KeptByPrefixLocked(uint32_t id, Tier tier) const {
  return bottom_[T(tier)] && E(id).children > 0 && !HasOtherCopyLocked(id, tier);
}

void Index::ReviewWithheldLocked(uint32_t id) {
  for (int t = 0; t < kNumTiers; ++t) {
    Residency& r = E(id).res[t];
    if (!r.withheld || KeptByPrefixLocked(id, static_cast<Tier>(t))) continue;
    r.withheld = 0;
    tiers_[t].policy->OnRestore(r.slot);
  }
}

void Index::MarkReadyLocked(uint32_t id, Tier tier) {
  Residency& r = E(id).res[T(tier)];
  const bool was_filling = r.state == ResState::kFilling;
  if (was_filling) table(tier).filling--;
  r.state = ResState::kReady;
  if (was_filling) {
    EmitLocked(KvEventType::kStored, id, tier);
    NoteUpperCopiesLocked(id, tier, /*ready=*/true);
  }
}

bool Index::ReadyAboveLocked(uint32_t id, int below, int skip) const {
  for (int t = 0; t < below; ++t) {
    // A tier that drops its victims (bottom_: demote_on_evict off) does not make a copy below it
    // a spare: that copy is the one that stays.
    if (t != skip && !bottom_[t] && E(id).res[t].state == ResState::kReady) return true;
  }
  return false;
}

void Index::NoteUpperCopiesLocked(uint32_t id, Tier tier, bool ready) {
  const int at = T(tier);
  if (ready && ReadyAboveLocked(id, at, /*skip=*/-1)) {
    tiers_[at].policy->OnUpperCopy(E(id).res[at].slot, true);
  }
  // A Ready copy below changes only if this copy is, or was, the only Ready one above it that
  // counts (see ReadyAboveLocked).
  if (bottom_[at]) return;
  for (int u = at + 1; u < kNumTiers; ++u) {
    const Residency& r = E(id).res[u];
    if (r.state == ResState::kReady && !ReadyAboveLocked(id, u, /*skip=*/at)) {
      tiers_[u].policy->OnUpperCopy(r.slot, ready);
    }
  }
}

template <typename Pred>
std::optional<SlotId> Index::PickVictimLocked(Tier tier, Pred can_evict) {
  TierTable& tt = table(tier);
  absl::InlinedVector<uint32_t, 16> kept;  // entries passed over for the prefix rule alone
  std::optional<SlotId> victim =
      tt.policy->PickVictim([&](SlotId s) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
        work_++;
        if (can_evict(s)) return true;
        const uint32_t id = tt.slot[s].entry;
        const Residency& r = E(id).res[T(tier)];
        if (r.state == ResState::kReady && r.pins() == 0 && KeptByPrefixLocked(id, tier)) {
          kept.push_back(id);
        }
        return false;
      });
  // Outside the policy's walk (it may not be re-entered): offer to withhold them now, before the
  // caller removes the victim (which may restore one: its parent).
  for (uint32_t id : kept) {
    Residency& r = E(id).res[T(tier)];
    if (!r.withheld && tt.policy->OnWithhold(r.slot)) r.withheld = 1;
  }
  return victim;
}

void Index::FreeSlotLocked(Tier tier, SlotId slot) {
  TierTable& tt = table(tier);
  tt.slot[slot].entry = kNoEntry;
  if (tier != kDev && wipe_on_free_[T(tier)]) {
    // Out of use until wiped: a slot on the free list could be taken and read before the wipe.
    tt.slot[slot].use = SlotUse::kQuarantined;
    wipes_.push_back(Place{tier, slot});
    return;
  }
  tt.slot[slot].use = SlotUse::kFree;
  tt.free.push_back(slot);
}

void Index::FinishWipeLocked(Place p) {
  TierTable& tt = table(p.tier);
  tt.slot[p.slot].use = SlotUse::kFree;
  tt.free.push_back(p.slot);
}

void Index::AddResidencyLocked(uint32_t id, Tier tier, SlotId slot, ResState state,
                               uint32_t lease_pins, uint32_t io_pins) {
  TierTable& tt = table(tier);
  if (TenantPolicies* split = tenant_policies_[T(tier)]) split->SetOwner(slot, OwnerLocked(id));
  tt.slot[slot].use = SlotUse::kResident;
  tt.slot[slot].entry = id;
  E(id).res[T(tier)] = Residency{.slot = slot,
                                 .lease_pins = static_cast<uint16_t>(lease_pins),
                                 .io_pins = static_cast<uint8_t>(io_pins),
                                 .state = state};
  tt.policy->OnInsertKey(slot, E(id).key.lo);
  tt.policy->OnInsert(slot);
  if (const uint32_t parent = E(id).parent_id; parent != kNoEntry) {
    if (const Residency& pr = E(parent).res[T(tier)]; pr.present())
      tt.policy->OnLink(slot, pr.slot);
  }
  if (lease_pins + io_pins > 0) {
    tt.policy->OnPin(slot);
    tt.pinned++;
  }
  if (state == ResState::kFilling) tt.filling++;
  if (state == ResState::kReady) {
    EmitLocked(KvEventType::kStored, id, tier);
    NoteUpperCopiesLocked(id, tier, /*ready=*/true);
  }
  tt.stats.inserts++;
  ReviewWithheldLocked(id);  // a second copy: the others are no longer the only one
}

SlotId Index::RemoveResidencyLocked(uint32_t id, Tier tier) {
  Residency& r = E(id).res[T(tier)];
  const SlotId slot = r.slot;
  TierTable& tt = table(tier);
  tt.policy->OnRemove(slot);
  if (r.pins() > 0) tt.pinned--;
  if (r.state == ResState::kFilling) tt.filling--;
  if (r.state == ResState::kReady) {
    EmitLocked(KvEventType::kRemoved, id, tier);
    NoteUpperCopiesLocked(id, tier, /*ready=*/false);
  }
  r = Residency{};
  EraseIfUnusedLocked(id);
  return slot;
}

void Index::EraseIfUnusedLocked(uint32_t id) {
  // Erase the entry and, walking up, every lost parent it was the last child of.
  while (id != kNoEntry) {
    Entry& e = E(id);
    if (e.cached() || e.children > 0) return;
    const uint32_t parent = e.parent_id;
    ForgetDeadlinesLocked(id);
    ids_.erase(e.key);  // before clearing the key: the table hashes through it
    e = Entry{};
    free_ids_.push_back(id);
    if (parent != kNoEntry && --E(parent).children == 0) ReviewWithheldLocked(parent);
    id = parent;
  }
}

MatchResult Index::MatchLocked(std::span<const BlockKey> keys, bool touch) {
  MatchResult m;
  m.keys.reserve(keys.size());
  m.tiers.reserve(keys.size());
  uint32_t parent = kNoEntry;
  absl::InlinedVector<uint32_t, 64> hit;
  for (const BlockKey& k : keys) {
    const uint32_t id = FindLocked(k);
    if (id == kNoEntry || !E(id).cached() || E(id).parent_id != parent) break;
    const Entry& e = E(id);
    const Tier top = e.res[T(kDev)].present()        ? kDev
                     : e.res[T(kHostTier)].present() ? kHostTier
                                                     : kDiskTier;
    m.keys.push_back(k);
    m.tiers.push_back(top);
    if (touch) table(top).stats.hits++;
    hit.push_back(id);
    parent = id;
  }
  if (!touch) return m;
  // Access leaves first so that, under recency policies, a chain's root is the most recent entry
  // and its tail is evicted before its head.
  for (auto id = hit.rbegin(); id != hit.rend(); ++id) {
    for (int t = 0; t < kNumTiers; ++t) {
      if (E(*id).res[t].present()) tiers_[t].policy->OnAccess(E(*id).res[t].slot);
    }
  }
  counters_.match_calls++;
  counters_.blocks_queried += keys.size();
  counters_.blocks_missed += keys.size() - m.keys.size();
  return m;
}

void Index::HintLocked(std::span<const BlockKey> keys, std::span<const double> scores) {
  for (size_t i = 0; i < keys.size(); ++i) {
    const uint32_t id = FindLocked(keys[i]);
    if (id == kNoEntry) continue;
    if (!timed_hints_.empty()) timed_hints_.Erase(id);  // this score stays: no revert
    for (int t = 0; t < kNumTiers; ++t) {
      if (E(id).res[t].present()) tiers_[t].policy->OnHint(E(id).res[t].slot, scores[i]);
    }
  }
}

bool Index::HasOtherCopyLocked(uint32_t id, Tier tier) const {
  for (int t = 0; t < kNumTiers; ++t) {
    if (t != T(tier) && E(id).res[t].present()) return true;
  }
  return false;
}

std::optional<SlotId> Index::TakeSlotLocked(Tier tier, std::vector<Move>* demotions,
                                            uint32_t for_id) {
  TierTable& tt = table(tier);
  if (tt.capacity == 0) return std::nullopt;
  if (!tt.free.empty()) {
    const SlotId s = tt.free.back();
    tt.free.pop_back();
    return s;
  }
  if (TenantPolicies* split = tenant_policies_[T(tier)]) {
    split->SetInserter(for_id != kNoEntry ? OwnerLocked(for_id) : tenant_);
  }
  ExpireDeadlinesLocked();  // holds and timed hints that ran out, before choosing
  // A victim with no copy elsewhere is written back to the tier below, unless this is the bottom.
  bool can_write_back = !bottom_[T(tier)];
  for (;;) {
    auto victim = PickVictimLocked(
        tier, [&](SlotId s) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {  // called inside, under mu_
          const uint32_t id = tt.slot[s].entry;
          const Residency& r = E(id).res[T(tier)];
          return r.state == ResState::kReady && r.pins() == 0 && !HeldLocked(id) &&
                 (E(id).children == 0 || can_write_back || HasOtherCopyLocked(id, tier));
        });
    if (!victim) return std::nullopt;
    const uint32_t id = tt.slot[*victim].entry;
    const bool other_copy = HasOtherCopyLocked(id, tier);
    // The policy may advise dropping a victim it does not expect back; only a childless one may
    // go (prefix rule), and then it spends nothing below.
    const bool demote =
        !other_copy && can_write_back && (E(id).children > 0 || tt.policy->DemoteVictim(*victim));
    if (demote) {
      // Write-back: the copy below starts Filling (io-pinned) and this slot is handed on at once;
      // the caller finishes the copy before anyone may write the slot (the device: a demotion, the
      // host: a write, whose slot's next user waits for it).
      const Tier below = static_cast<Tier>(T(tier) + 1);
      std::optional<SlotId> slot_below = TakeSlotLocked(below, nullptr, id);
      if (!slot_below) {
        can_write_back = false;  // below full of pinned or protected blocks: drop leaves instead
        continue;
      }
      AddResidencyLocked(id, below, *slot_below, ResState::kFilling, 0, 1);
      const Move m{
          .key = E(id).key, .entry = id, .from = {tier, *victim}, .to = {below, *slot_below}};
      if (tier == kDev) {
        demotions->push_back(m);
        counters_.demotions++;
      } else {
        writes_.push_back(m);
        writes_.back().parent = ParentKeyLocked(id);
      }
      tt.stats.demotions++;
    } else if (!other_copy) {
      tt.stats.drops++;
    }
    if (tier == kHostTier && store_feed_ == IndexConfig::StoreFeed::kHostVictims) {
      // The bytes stay in the slot until its next user, who waits for this write, fills it.
      writes_.push_back(Move{.key = E(id).key,
                             .parent = ParentKeyLocked(id),
                             .from = {kHostTier, *victim},
                             .to = {Tier::kRemote, 0}});
    }
    tt.stats.evictions++;
    return RemoveResidencyLocked(id, tier);
  }
}

absl::Status Index::AddLeaseSlotsLocked(Lease& lease, uint32_t n, std::vector<SlotId>* slots,
                                        std::vector<Move>* demotions,
                                        std::vector<SlotId>* quarantine) {
  const size_t first = lease.slots.size();
  const size_t first_demotion = demotions->size();
  for (uint32_t i = 0; i < n; ++i) {
    std::optional<SlotId> s = TakeSlotLocked(kDev, demotions);
    if (!s) {
      // Give back what was taken; a slot whose block is being written back stays out of use until
      // that copy is done.
      for (size_t j = first; j < lease.slots.size(); ++j) {
        const SlotId slot = lease.slots[j].slot;
        const bool copying = std::any_of(
            demotions->begin() + static_cast<ptrdiff_t>(first_demotion), demotions->end(),
            [slot](const Move& d) { return !d.source_kept && d.from.slot == slot; });
        if (copying && quarantine != nullptr) {
          table(kDev).slot[slot].use = SlotUse::kQuarantined;
          quarantine->push_back(slot);
        } else {
          FreeSlotLocked(kDev, slot);
        }
      }
      lease.slots.resize(first);
      return absl::ResourceExhaustedError(
          absl::StrCat("AllocateDevice: only ", i, " of ", n,
                       " device slots could be freed; the rest are pinned by leases or in flight (",
                       table(kDev).capacity, " slots in the device tier)"));
    }
    table(kDev).slot[*s].use = SlotUse::kLeased;
    lease.slots.push_back(LeaseSlot{.slot = *s});
  }
  for (size_t j = first; j < lease.slots.size(); ++j) slots->push_back(lease.slots[j].slot);
  return absl::OkStatus();
}

void Index::FreeQuarantinedLocked(std::span<const SlotId> slots) {
  for (SlotId s : slots) FreeSlotLocked(kDev, s);
}

absl::StatusOr<uint64_t> Index::NewLeaseLocked(uint32_t n, std::vector<SlotId>* slots,
                                               std::vector<Move>* demotions,
                                               std::vector<SlotId>* quarantine,
                                               std::span<const BlockKey> prefix,
                                               uint32_t* shared_out) {
  Lease lease;
  lease.slots.reserve(n);
  // Share the prefix's device blocks first: pinned, they are no victims for the slots below.
  uint32_t parent = kNoEntry;
  for (size_t i = 0; i < prefix.size() && i < n; ++i) {
    const uint32_t id = FindLocked(prefix[i]);
    if (id == kNoEntry || E(id).parent_id != parent) break;
    const Residency d = E(id).res[T(kDev)];
    if (!d.shareable()) break;
    PinLocked(id, kDev, /*lease=*/true);
    lease.slots.push_back(
        LeaseSlot{.slot = d.slot, .holds = true, .shared_at_allocation = true, .entry = id});
    slots->push_back(d.slot);
    parent = id;
  }
  const auto shared = static_cast<uint32_t>(lease.slots.size());
  if (shared_out != nullptr) *shared_out = shared;
  if (absl::Status s = AddLeaseSlotsLocked(lease, n - shared, slots, demotions, quarantine);
      !s.ok()) {
    for (uint32_t j = 0; j < shared; ++j) UnpinLocked(lease.slots[j].entry, kDev, /*lease=*/true);
    slots->resize(slots->size() - shared);
    return s;
  }
  const uint64_t id = next_lease_id_++;
  leases_.emplace(id, std::move(lease));
  return id;
}

absl::Status Index::GrowLeaseLocked(uint64_t lease_id, uint32_t n, std::vector<SlotId>* slots,
                                    std::vector<Move>* demotions, std::vector<SlotId>* quarantine) {
  Lease* lease = FindLeaseLocked(lease_id);
  if (lease == nullptr) return absl::FailedPreconditionError("Grow: the lease was released");
  return AddLeaseSlotsLocked(*lease, n, slots, demotions, quarantine);
}

absl::StatusOr<LoadPlan> Index::PlanLoadLocked(uint64_t lease_id, const MatchResult& match) {
  const std::span<const BlockKey> keys = match.keys;
  Lease* lease = FindLeaseLocked(lease_id);
  if (lease == nullptr) return absl::FailedPreconditionError("Load: the lease was released");
  const TenantScope scope(tenant_, lease->tenant);
  if (keys.size() > lease->slots.size()) {
    return absl::InvalidArgumentError(absl::StrCat("Load: the match has ", keys.size(),
                                                   " blocks but the lease only ",
                                                   lease->slots.size(), " slots"));
  }
  for (size_t i = 0; i < keys.size(); ++i) {
    const LeaseSlot& ls = lease->slots[i];
    if (!ls.holds) continue;
    if (!ls.shared_at_allocation) {
      return absl::FailedPreconditionError(
          absl::StrCat("Load: lease slot ", i, " already holds a block (loaded or committed)"));
    }
    if (E(ls.entry).key != keys[i]) {
      return absl::InvalidArgumentError(
          absl::StrCat("Load: lease slot ", i, " holds block ", E(ls.entry).key.ToHex(),
                       " (shared by AllocateDevice) vs the match's ", keys[i].ToHex()));
    }
  }
  LoadPlan plan;
  // A copy of `m`'s block (its source planned) into lease position i.
  auto promote = [&](uint32_t i, Move m) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    LeaseSlot& ls = lease->slots[i];
    m.to = {kDev, ls.slot};
    m.position = i;
    m.lease_id = lease_id;
    AddResidencyLocked(m.entry, kDev, ls.slot, ResState::kFilling, 1, 1);
    ls.holds = true;
    ls.entry = m.entry;
    counters_.promotions++;
    table(kDev).stats.promotions++;
    plan.promotions.push_back(m);
  };
  uint32_t parent = kNoEntry;
  for (uint32_t i = 0; i < keys.size(); ++i) {
    if (LeaseSlot& ls = lease->slots[i]; ls.holds) {  // shared when the lease was made: keep it
      ls.shared_at_allocation = false;
      if (E(ls.entry).res[T(kDev)].lossy) plan.lossy_shared.push_back(i);
      parent = ls.entry;
      plan.blocks++;
      continue;
    }
    uint32_t id = FindLocked(keys[i]);
    if (id != kNoEntry && E(id).parent_id != parent) break;
    if (const Residency d = id == kNoEntry ? Residency{} : E(id).res[T(kDev)]; d.present()) {
      // Already on the device: share it, give the lease's own slot back. A block another Load is
      // still filling ends the plan: its outcome is not known yet.
      if (!d.shareable()) break;
      LeaseSlot& ls = lease->slots[i];
      FreeSlotLocked(kDev, ls.slot);
      ls = LeaseSlot{.slot = d.slot, .holds = true, .entry = id};
      PinLocked(id, kDev, /*lease=*/true);
      if (d.lossy) plan.lossy_shared.push_back(i);
    } else {
      // Cached nowhere here, Match found it in a store (match.tiers[i] >= kNumTiers); or below.
      const Tier store = i < match.tiers.size() ? match.tiers[i] : kDev;
      Move m{.key = keys[i]};
      if (!PlanSourceLocked(keys[i], parent, store, &id, &m)) break;
      promote(i, m);
    }
    parent = id;
    plan.blocks++;
  }
  counters_.blocks_loaded += plan.blocks;
  plan.lease_slots.reserve(lease->slots.size());
  for (const LeaseSlot& ls : lease->slots) plan.lease_slots.push_back(ls.slot);
  return plan;
}

bool Index::PlanSourceLocked(const BlockKey& key, uint32_t parent, Tier store, uint32_t* id,
                             Move* m) {
  uint32_t& e = *id;
  if (e == kNoEntry || !E(e).cached()) {
    // Cached nowhere here: read it from the store into a new host slot.
    if (T(store) < kNumTiers || !StageFromStoreLocked(key, parent, &e)) return false;
    m->from = {store, 0};
    m->via = E(e).res[T(kHostTier)].slot;
  } else if (const Residency h = E(e).res[T(kHostTier)]; h.present()) {
    if (h.state != ResState::kReady) return false;
    PinLocked(e, kHostTier, /*lease=*/false);
    m->from = {kHostTier, h.slot};
  } else {
    // On disk only: read it into a new host slot, then copy that to the device.
    const Residency k = E(e).res[T(kDiskTier)];
    if (k.state != ResState::kReady) return false;
    // Pin the source first: making room on the host can cascade into a disk eviction.
    PinLocked(e, kDiskTier, /*lease=*/false);
    std::optional<SlotId> host_slot = TakeSlotLocked(kHostTier, nullptr, e);
    if (!host_slot) {  // every host slot pinned: the rest is a miss
      UnpinLocked(e, kDiskTier, /*lease=*/false);
      return false;
    }
    AddResidencyLocked(e, kHostTier, *host_slot, ResState::kFilling, 0, 1);
    m->from = {kDiskTier, k.slot};
    m->via = *host_slot;
  }
  m->entry = e;
  // A read from below into a new host slot comes first.
  if (m->from.tier != kHostTier) table(kHostTier).stats.promotions++;
  return true;
}

absl::StatusOr<uint32_t> Index::LinkEngineChainLocked(std::span<const BlockKey> keys,
                                                      uint32_t first) {
  // The whole chain is validated before anything is made: the entries known here come first and
  // each sits under its predecessor (an entry's parent always exists).
  uint32_t parent = kNoEntry;
  uint32_t known = 0;  // keys [0, known) are entries already
  for (; known < keys.size(); ++known) {
    const uint32_t id = FindLocked(keys[known]);
    if (id == kNoEntry) break;
    if (E(id).parent_id != parent) break;
    parent = id;
  }
  for (uint32_t i = known; i < keys.size(); ++i) {
    if (FindLocked(keys[i]) != kNoEntry) {
      return absl::InvalidArgumentError(absl::StrCat(
          "keys[", i, "] (", keys[i].ToHex(), ") is cached under another parent than keys[",
          i == 0 ? std::string("root") : absl::StrCat(i - 1),
          "]: keys must be one chain from the root"));
    }
  }
  parent = kNoEntry;
  for (uint32_t i = 0; i < first; ++i) {
    const uint32_t id = FindLocked(keys[i]);
    parent = id != kNoEntry ? id : AddEntryLocked(keys[i], parent);
  }
  return parent;
}

absl::Status Index::CheckEngineBlocksLocked(const char* call, std::span<const SlotId> blocks,
                                            bool write) const {
  if (engine_blocks_.empty()) return absl::OkStatus();
  for (size_t i = 0; i < blocks.size(); ++i) {
    auto it = engine_blocks_.find(blocks[i]);
    if (it == engine_blocks_.end()) continue;
    if (it->second.written || (write && it->second.readers > 0)) {
      return absl::FailedPreconditionError(
          absl::StrCat(call, ": engine block ", blocks[i], " is still ",
                       it->second.written ? "being loaded into" : "being read by a store",
                       " (a copy in flight): wait for it before reusing the block"));
    }
  }
  return absl::OkStatus();
}

void Index::EngineBlockUseLocked(SlotId block, bool write, int delta) {
  EngineBlockUse& u = engine_blocks_[block];
  if (write) {
    u.written = delta > 0;
  } else {
    u.readers += delta;
  }
  if (!u.written && u.readers == 0) engine_blocks_.erase(block);
}

absl::StatusOr<LoadPlan> Index::PlanEngineLoadLocked(std::span<const BlockKey> keys, uint32_t first,
                                                     std::span<const SlotId> dst, Tier store) {
  KVTIER_RETURN_IF_ERROR(CheckEngineBlocksLocked("Connector::Load", dst, /*write=*/true));
  absl::StatusOr<uint32_t> link = LinkEngineChainLocked(keys, first);
  if (!link.ok()) {
    return absl::InvalidArgumentError(absl::StrCat("Connector::Load: ", link.status().message()));
  }
  LoadPlan plan;
  uint32_t parent = *link;
  for (uint32_t i = first; i < keys.size(); ++i) {
    uint32_t id = FindLocked(keys[i]);
    if (id != kNoEntry && E(id).parent_id != parent) break;
    Move m{.key = keys[i], .to = {kDev, dst[i - first]}, .position = i - first, .engine = true};
    if (!PlanSourceLocked(keys[i], parent, store, &id, &m)) break;
    EngineBlockUseLocked(m.to.slot, /*write=*/true, +1);
    counters_.promotions++;
    table(kDev).stats.promotions++;
    plan.promotions.push_back(m);
    parent = id;
    plan.blocks++;
  }
  EraseIfUnusedLocked(*link);  // links nothing was hung under
  counters_.blocks_loaded += plan.blocks;
  return plan;
}

absl::StatusOr<std::vector<Move>> Index::PlanEngineStoreLocked(std::span<const BlockKey> keys,
                                                               uint32_t first,
                                                               std::span<const SlotId> src,
                                                               uint32_t* skipped,
                                                               uint32_t* unstored) {
  *skipped = 0;
  *unstored = 0;
  KVTIER_RETURN_IF_ERROR(CheckEngineBlocksLocked("Connector::Store", src, /*write=*/false));
  absl::StatusOr<uint32_t> link = LinkEngineChainLocked(keys, first);
  if (!link.ok()) {
    return absl::InvalidArgumentError(absl::StrCat("Connector::Store: ", link.status().message()));
  }
  std::vector<Move> moves;
  uint32_t parent = *link;
  uint32_t last = *link;  // the deepest entry made or found: erased below if left unused
  for (uint32_t i = first; i < keys.size(); ++i) {
    uint32_t id = FindLocked(keys[i]);
    if (id == kNoEntry) id = AddEntryLocked(keys[i], parent);
    last = id;
    parent = id;
    if (E(id).res[T(kHostTier)].present() || E(id).res[T(kDiskTier)].present()) {
      ++*skipped;
      continue;
    }
    std::optional<SlotId> hs = TakeSlotForLocked(id, kHostTier);
    if (!hs) {  // every host slot pinned or protected: the rest is not stored
      *unstored = static_cast<uint32_t>(keys.size()) - i;
      break;
    }
    AddResidencyLocked(id, kHostTier, *hs, ResState::kFilling, 0, 1);
    const SlotId block = src[i - first];
    EngineBlockUseLocked(block, /*write=*/false, +1);
    moves.push_back(Move{.key = keys[i],
                         .parent = ParentKeyLocked(id),
                         .entry = id,
                         .from = {kDev, block},
                         .to = {kHostTier, *hs},
                         .position = i - first,
                         .engine = true});
    counters_.demotions++;
    counters_.blocks_stored++;
    table(kDev).stats.demotions++;
  }
  counters_.blocks_store_skipped += *skipped;
  // The entry made for the key a stop left out, and links nothing was hung under.
  if (last != kNoEntry) EraseIfUnusedLocked(last);
  return moves;
}

absl::Status Index::CommitLocked(uint64_t lease_id, std::span<const BlockKey> keys,
                                 std::vector<Move>* demotions) {
  Lease* lease = FindLeaseLocked(lease_id);
  if (lease == nullptr) return absl::FailedPreconditionError("Commit: the lease was released");
  const TenantScope scope(tenant_, lease->tenant);
  if (keys.size() > lease->slots.size()) {
    return absl::InvalidArgumentError(absl::StrCat("Commit: ", keys.size(), " keys for a lease of ",
                                                   lease->slots.size(), " slots"));
  }
  // Validate everything first: Commit is all or nothing.
  if (HasDuplicate(keys)) {
    return absl::InvalidArgumentError("Commit: a key repeats: keys must be one chain");
  }
  uint32_t parent = kNoEntry;  // entry id of keys[i-1]; kNoEntry for the root or a new key
  absl::InlinedVector<uint32_t, 64> found(keys.size(), kNoEntry);  // lookups reused below
  for (size_t i = 0; i < keys.size(); ++i) {
    const BlockKey& k = keys[i];
    if (k == kRootKey) {
      return absl::InvalidArgumentError(absl::StrCat("Commit: keys[", i, "] is the root key"));
    }
    const LeaseSlot& ls = lease->slots[i];
    if (ls.holds) {
      if (E(ls.entry).key != k) {
        return absl::InvalidArgumentError(absl::StrCat("Commit: lease slot ", i, " holds block ",
                                                       E(ls.entry).key.ToHex(), " vs keys[", i,
                                                       "] ", k.ToHex()));
      }
      parent = ls.entry;
    } else if (const uint32_t id = FindLocked(k); id != kNoEntry) {
      // A known key must sit under keys[i-1]: an entry's parent always exists, so a key whose
      // predecessor is new (parent == kNoEntry, i > 0) contradicts the chain too.
      if (E(id).parent_id != parent || (parent == kNoEntry && i > 0)) {
        return absl::InvalidArgumentError(absl::StrCat(
            "Commit: keys[", i, "] (", k.ToHex(), ") is cached under another parent than keys[",
            i == 0 ? std::string("root") : absl::StrCat(i - 1), "]: keys must be one chain"));
      }
      parent = id;
      found[i] = id;  // cached below the device (or lost): this lease's copy joins it; or on
                      // the device already: that copy stays, this one is not published
    } else {
      parent = kNoEntry;
    }
  }
  // First every key's device residency, with nothing evicted meanwhile: `found` holds ids looked
  // up above, and an eviction (the host write-through below) may erase one of them, a block only
  // the host held, and free its id for the next new entry.
  uint32_t parent_id = kNoEntry;
  absl::InlinedVector<uint32_t, 64> write_through;  // lease positions whose blocks get a host copy
  for (size_t i = 0; i < keys.size(); ++i) {
    LeaseSlot& ls = lease->slots[i];
    if (found[i] != kNoEntry && E(found[i]).res[T(kDev)].present()) {
      const Residency& d = E(found[i]).res[T(kDev)];
      if (!d.lossy || d.pins() > 0 || ls.holds) {
        // On the device already (another lease's copy, or a Load's): the chain goes on under it.
        counters_.blocks_commit_shared++;
        parent_id = found[i];
        continue;
      }
      // A lossy copy (decoded from a codec's) that no lease or copy holds: this lease's block,
      // the engine's own (recomputed), replaces it. Held as a child of itself meanwhile, the
      // entry is not erased while it has no residency.
      E(found[i]).children++;
      FreeSlotLocked(kDev, RemoveResidencyLocked(found[i], kDev));
      E(found[i]).children--;
      counters_.codec_lossy_blocks_replaced++;
    }
    if (!ls.holds) {
      const uint32_t id = found[i] != kNoEntry ? found[i] : AddEntryLocked(keys[i], parent_id);
      AddResidencyLocked(id, kDev, ls.slot, ResState::kReady, 1, 0);
      ls.holds = true;
      ls.entry = id;
      counters_.blocks_committed++;
      // A key that joins its host copy (cached below the device) keeps that one: a second host
      // residency would leave the first slot marked resident to an entry that no longer points at
      // it.
      if (host_write_through_ && !E(id).res[T(kHostTier)].present()) {
        write_through.push_back(static_cast<uint32_t>(i));
      }
    }
    parent_id = ls.entry;
  }
  // Then the host copies, parents first. Every key of the chain has a device residency now, which
  // making room on the host does not touch: it may drop their host copies, never their entries.
  for (uint32_t i : write_through) {
    const LeaseSlot& ls = lease->slots[i];
    std::optional<SlotId> hs = TakeSlotLocked(kHostTier, nullptr, ls.entry);
    if (!hs) break;  // every host slot pinned or protected: the rest get none either
    AddResidencyLocked(ls.entry, kHostTier, *hs, ResState::kFilling, 0, 1);
    PinLocked(ls.entry, kDev, /*lease=*/false);
    demotions->push_back(Move{.key = keys[i],
                              .entry = ls.entry,
                              .from = {kDev, ls.slot},
                              .to = {kHostTier, *hs},
                              .source_kept = true});
    counters_.demotions++;
    table(kDev).stats.demotions++;
  }
  return absl::OkStatus();
}

absl::Status Index::SetLeaseTenantLocked(uint64_t lease_id, uint8_t tenant) {
  Lease* lease = FindLeaseLocked(lease_id);
  if (lease == nullptr) return absl::FailedPreconditionError("SetTenant: the lease was released");
  lease->tenant = tenant;
  return absl::OkStatus();
}

absl::Status Index::ReleaseLeaseLocked(uint64_t lease_id) {
  auto it = leases_.find(lease_id);
  if (it == leases_.end()) return absl::FailedPreconditionError("Release: the lease was released");
  // Leaves first, for the same reason as in MatchLocked.
  for (auto ls = it->second.slots.rbegin(); ls != it->second.slots.rend(); ++ls) {
    if (ls->holds) {
      UnpinLocked(ls->entry, kDev, /*lease=*/true);
    } else {
      FreeSlotLocked(kDev, ls->slot);
    }
  }
  leases_.erase(it);
  return absl::OkStatus();
}

std::optional<SlotId> Index::TakeSlotForLocked(uint32_t id, Tier tier) {
  // An uncached entry is kept only by its children: if the eviction drops its last child, walking
  // up from the victim would erase it (and reuse its id) under the caller. Held as a child of
  // itself meanwhile, it is not unused.
  E(id).children++;
  std::optional<SlotId> slot = TakeSlotLocked(tier, nullptr, id);
  E(id).children--;
  return slot;
}

bool Index::StageFromStoreLocked(const BlockKey& key, uint32_t parent, uint32_t* id) {
  // The entry first: as the parent's child it keeps the parent cached (prefix rule) while making
  // room on the host evicts, so the chain it hangs from stays matchable.
  if (*id == kNoEntry) *id = AddEntryLocked(key, parent);
  std::optional<SlotId> host_slot = TakeSlotForLocked(*id, kHostTier);
  if (!host_slot) {  // every host slot pinned or protected: the rest is a miss
    EraseIfUnusedLocked(*id);
    return false;
  }
  AddResidencyLocked(*id, kHostTier, *host_slot, ResState::kFilling, 0, 1);
  return true;
}

void Index::QueueWriteLocked(uint32_t id, SlotId host_slot, Place to, bool source_kept) {
  if (source_kept) PinLocked(id, kHostTier, /*lease=*/false);
  writes_.push_back(Move{.key = E(id).key,
                         .parent = ParentKeyLocked(id),
                         .entry = id,
                         .from = {kHostTier, host_slot},
                         .to = to,
                         .source_kept = source_kept});
}

void Index::FinishMoveLocked(const Move& m, bool ok, bool source_lost) {
  if (m.entry == kNoEntry) return;  // a store's copy of a host victim: no state here
  const Tier to = m.to.tier;
  if (m.engine) {  // connector mode: the engine's block is free for its next copy
    EngineBlockUseLocked(to == kDev ? m.to.slot : m.from.slot, /*write=*/to == kDev, -1);
  }
  if (m.source_kept) UnpinLocked(m.entry, m.from.tier, /*lease=*/false);
  if (T(to) >= kNumTiers) return;  // a store keeps no residency here
  if (!(m.engine && to == kDev)) UnpinLocked(m.entry, to, /*lease=*/false);
  if (to == kDev) {
    UnpinLocked(m.entry, kHostTier, /*lease=*/false);
    if (m.from.tier != kHostTier) {
      // Read from below into the `via` host slot first: the block is on the host now too, or not.
      if (T(m.from.tier) < kNumTiers) UnpinLocked(m.entry, m.from.tier, /*lease=*/false);
      if (ok) {
        MarkReadyLocked(m.entry, kHostTier);
      } else {
        FreeSlotLocked(kHostTier, RemoveResidencyLocked(m.entry, kHostTier));
        if (source_lost && T(m.from.tier) < kNumTiers) {
          FreeSlotLocked(m.from.tier, RemoveResidencyLocked(m.entry, m.from.tier));
        }
      }
    }
  }
  if (m.engine && to == kDev) {  // no residency on the engine's device: only the outcome counts
    if (!ok) {
      counters_.transfer_failures++;
      table(kDev).stats.fill_failures++;
    }
    return;
  }
  if (ok) {
    if (to == kDev) E(m.entry).res[T(kDev)].lossy = host_lossy_;  // decoded from the host's form
    MarkReadyLocked(m.entry, to);
    if (to == kHostTier && store_feed_ == IndexConfig::StoreFeed::kHostFills) {
      QueueWriteLocked(m.entry, m.to.slot, {Tier::kRemote, 0}, /*source_kept=*/true);
    }
    return;
  }
  counters_.transfer_failures++;
  table(to).stats.fill_failures++;
  if (to != kDev) {
    FreeSlotLocked(to, RemoveResidencyLocked(m.entry, to));
    return;
  }
  // The bytes in the device slot are undefined: forget the residency, give the slot back to its
  // lease.
  bool lease_owns = false;
  if (Lease* lease = FindLeaseLocked(m.lease_id); lease != nullptr) {
    LeaseSlot& ls = lease->slots[m.position];
    if (ls.holds && ls.entry == m.entry && ls.slot == m.to.slot) {
      ls.holds = false;  // its lease pin goes with the residency, removed below
      ls.entry = kNoEntry;
      lease_owns = true;
    }
  }
  const SlotId slot = RemoveResidencyLocked(m.entry, kDev);
  if (lease_owns) {
    table(kDev).slot[slot].use = SlotUse::kLeased;
    table(kDev).slot[slot].entry = kNoEntry;
  } else {
    FreeSlotLocked(kDev, slot);
  }
}

std::vector<Move> Index::FlushDeviceLocked(SlotId& next) {
  std::vector<Move> out;
  const TierTable& dev = table(kDev);
  for (; next < dev.capacity; ++next) {
    const SlotId s = next;
    ++work_;
    if (dev.slot[s].use != SlotUse::kResident) continue;
    const uint32_t id = dev.slot[s].entry;
    const Entry& e = E(id);
    if (e.res[T(kDev)].state != ResState::kReady || e.res[T(kHostTier)].present() ||
        e.res[T(kDiskTier)].present()) {
      continue;
    }
    std::optional<SlotId> hs = TakeSlotLocked(kHostTier, nullptr, id);
    if (!hs) break;
    AddResidencyLocked(id, kHostTier, *hs, ResState::kFilling, 0, 1);
    PinLocked(id, kDev, /*lease=*/false);
    out.push_back(Move{.key = E(id).key,
                       .entry = id,
                       .from = {kDev, s},
                       .to = {kHostTier, *hs},
                       .source_kept = true});
    counters_.demotions++;
    table(kDev).stats.demotions++;
  }
  return out;
}

void Index::FlushHostLocked() {
  const TierTable& host = table(kHostTier);
  work_ += host.capacity;
  for (SlotId s = 0; s < host.capacity; ++s) {
    if (host.slot[s].use != SlotUse::kResident) continue;
    const uint32_t id = host.slot[s].entry;
    if (E(id).res[T(kHostTier)].state != ResState::kReady || E(id).res[T(kDiskTier)].present()) {
      continue;
    }
    std::optional<SlotId> ds = TakeSlotLocked(kDiskTier, nullptr, id);
    if (!ds) break;
    AddResidencyLocked(id, kDiskTier, *ds, ResState::kFilling, 0, 1);
    QueueWriteLocked(id, s, {kDiskTier, *ds}, /*source_kept=*/true);
    table(kHostTier).stats.demotions++;
  }
}

uint32_t Index::FlushHostToStoreLocked() {
  if (store_feed_ != IndexConfig::StoreFeed::kHostVictims) return 0;
  const TierTable& host = table(kHostTier);
  work_ += host.capacity;
  uint32_t queued = 0;
  for (SlotId s = 0; s < host.capacity; ++s) {
    if (host.slot[s].use != SlotUse::kResident) continue;
    const uint32_t id = host.slot[s].entry;
    if (E(id).res[T(kHostTier)].state != ResState::kReady) continue;
    QueueWriteLocked(id, s, {Tier::kRemote, 0}, /*source_kept=*/true);
    ++queued;
  }
  return queued;
}

uint32_t Index::RestoreLocked(Tier tier, std::span<const RestoredBlock> blocks) {
  TierTable& tt = table(tier);
  absl::flat_hash_map<BlockKey, const RestoredBlock*> by_key;
  for (const RestoredBlock& b : blocks) {
    if (b.slot < tt.capacity && tt.slot[b.slot].use == SlotUse::kFree) by_key.emplace(b.key, &b);
  }
  uint32_t restored = 0;
  // Parents first: walk each block's chain up to a known or root parent, then add downwards.
  std::vector<const RestoredBlock*> chain;
  for (const RestoredBlock& b : blocks) {
    chain.clear();
    for (auto it = by_key.find(b.key); it != by_key.end();) {
      const RestoredBlock* r = it->second;
      chain.push_back(r);
      by_key.erase(it);  // each block is placed once
      if (r->parent == kRootKey) break;
      it = by_key.find(r->parent);
    }
    if (chain.empty()) continue;
    uint32_t parent = kNoEntry;
    if (chain.back()->parent != kRootKey) {
      parent = FindLocked(chain.back()->parent);
      if (parent == kNoEntry) continue;  // an orphan chain: never matchable, leave the slots free
    }
    for (auto it = chain.rbegin(); it != chain.rend(); ++it) {
      const RestoredBlock& r = **it;
      uint32_t id = FindLocked(r.key);
      if (id != kNoEntry && (E(id).parent_id != parent || E(id).res[T(tier)].present())) {
        break;  // contradicts what is known: keep what is, drop the rest of this chain
      }
      // Two blocks claiming one slot (a damaged manifest): the first placed keeps it; this one and
      // the rest of its chain are dropped (not counted as restored).
      if (tt.slot[r.slot].use != SlotUse::kFree) break;
      if (id == kNoEntry) id = AddEntryLocked(r.key, parent);
      AddResidencyLocked(id, tier, r.slot, ResState::kReady, 0, 0);
      parent = id;
      restored++;
    }
  }
  // The restored slots are resident now: rebuild the free list (low ids on top, as at start).
  tt.free.clear();
  work_ += tt.capacity;
  for (uint32_t s = tt.capacity; s > 0; --s) {
    if (tt.slot[s - 1].use == SlotUse::kFree) tt.free.push_back(s - 1);
  }
  return restored;
}

std::vector<RestoredBlock> Index::ListLocked(Tier tier) const {
  std::vector<RestoredBlock> out;
  const TierTable& tt = table(tier);
  work_ += tt.capacity;
  for (SlotId s = 0; s < tt.capacity; ++s) {
    if (tt.slot[s].use != SlotUse::kResident) continue;
    const Entry& e = E(tt.slot[s].entry);
    if (e.res[T(tier)].state != ResState::kReady) continue;
    out.push_back({e.key, ParentKeyLocked(tt.slot[s].entry), s});
  }
  return out;
}

void Index::FillStatsLocked(CacheStats* stats) const {
  *stats = counters_;
  stats->device = table(kDev).stats;
  stats->host = table(kHostTier).stats;
  stats->disk = table(kDiskTier).stats;
  for (int t = 0; t < kNumTiers; ++t) {
    TierStats& ts = t == 0 ? stats->device : t == 1 ? stats->host : stats->disk;
    const TierTable& tt = tiers_[t];
    ts.used_blocks = tt.capacity - tt.free.size();
    ts.pinned_blocks = tt.pinned;
    ts.in_flight_blocks = tt.filling;
  }
  // A lookup reaches a tier when no tier above held the block: what one tier misses, the next is
  // asked for.
  uint64_t lookups = counters_.blocks_queried;
  for (TierStats* ts : {&stats->device, &stats->host, &stats->disk}) {
    ts->misses = lookups - ts->hits;
    lookups = ts->misses;
  }
  stats->leases_live = leases_.size();
  stats->index_work = work_;
  stats->events_dropped = events_.dropped();
}

absl::Status Index::CheckInvariantsLocked() const {
  auto fail = [](auto&&... parts) { return absl::InternalError(absl::StrCat(parts...)); };
  // Entry ids: the key map and the slab agree; unused ids are exactly the free ones.
  std::vector<uint8_t> live(slab_.size(), 0);
  for (uint32_t id : ids_) {
    if (id >= slab_.size() || live[id]++) return fail("entry ", id, " is listed twice");
    auto found = ids_.find(E(id).key);  // not FindLocked: checking is not counted as work
    if (found == ids_.end() || *found != id) {
      return fail("entry ", id, " is not found under its own key");
    }
  }
  for (uint32_t id : free_ids_) {
    if (id >= slab_.size() || live[id]) return fail("free entry id ", id, " is in use");
  }
  if (ids_.size() + free_ids_.size() != slab_.size()) {
    return fail(ids_.size(), " live + ", free_ids_.size(), " free entry ids vs slab of ",
                slab_.size());
  }
  // Slots: each tier's slots are free, leased or resident, the free list is exact.
  for (int t = 0; t < kNumTiers; ++t) {
    const TierTable& tt = tiers_[t];
    const char* name = TierName(static_cast<Tier>(t));
    std::vector<uint8_t> on_free(tt.capacity, 0);
    for (SlotId s : tt.free) {
      if (s >= tt.capacity || on_free[s]++ || tt.slot[s].use != SlotUse::kFree) {
        return fail(name, ": free list holds slot ", s, " twice, out of range or in use");
      }
    }
    for (SlotId s = 0; s < tt.capacity; ++s) {
      if (tt.slot[s].use == SlotUse::kFree && !on_free[s]) {
        return fail(name, ": free slot ", s, " missing from the free list");
      }
      if (tt.slot[s].use == SlotUse::kLeased && t != 0) return fail(name, ": leased host slot ", s);
      if (tt.slot[s].use == SlotUse::kResident) {
        const uint32_t id = tt.slot[s].entry;
        if (id >= slab_.size() || !live[id] || !E(id).res[t].present() || E(id).res[t].slot != s) {
          return fail(name, ": resident slot ", s, " has no matching residency (entry ", id,
                      id < slab_.size() && live[id]
                          ? absl::StrCat(", state ", static_cast<int>(E(id).res[t].state),
                                         " at slot ", E(id).res[t].slot)
                          : std::string(", not live"),
                      ")");
        }
      }
    }
  }
  // Leases: every leased slot belongs to exactly one lease; lease pins add up.
  std::vector<uint32_t> lease_pins(slab_.size(), 0);
  std::vector<uint8_t> leased(table(kDev).capacity, 0);
  for (const auto& [lease_id, lease] : leases_) {
    for (const LeaseSlot& ls : lease.slots) {
      if (ls.holds) {
        if (ls.entry >= slab_.size() || !live[ls.entry] || !E(ls.entry).res[0].present() ||
            E(ls.entry).res[0].slot != ls.slot) {
          return fail("lease ", lease_id, " holds entry ", ls.entry, " at slot ", ls.slot,
                      " but the block does not reside there");
        }
        lease_pins[ls.entry]++;
      } else if (table(kDev).slot[ls.slot].use != SlotUse::kLeased || leased[ls.slot]++) {
        return fail("lease ", lease_id, " owns device slot ", ls.slot,
                    " which is not leased to it alone");
      }
    }
  }
  for (SlotId s = 0; s < table(kDev).capacity; ++s) {
    if (table(kDev).slot[s].use == SlotUse::kLeased && !leased[s]) {
      return fail("device slot ", s, " is leased to no live lease");
    }
  }
  // Entries: residencies point at their slots, pins add up, the chain is intact.
  std::vector<uint32_t> children(slab_.size(), 0);
  std::array<uint64_t, kNumTiers> pinned{}, filling{};
  for (uint32_t id : ids_) {
    const Entry& e = E(id);
    const BlockKey& key = e.key;
    if (e.parent_id != kNoEntry) {
      if (e.parent_id >= slab_.size() || !live[e.parent_id]) {
        return fail(key.ToHex(), ": parent not in the index");
      }
      children[e.parent_id]++;
    }
    if (!e.cached() && e.children == 0) return fail(key.ToHex(), ": uncached leaf kept");
    for (int t = 0; t < kNumTiers; ++t) {
      const Residency& r = e.res[t];
      if (!r.present()) {
        if (r.pins() != 0) return fail(key.ToHex(), ": pins on an absent residency");
        continue;
      }
      const TierTable& tt = tiers_[t];
      if (r.slot >= tt.capacity || tt.slot[r.slot].use != SlotUse::kResident ||
          tt.slot[r.slot].entry != id) {
        return fail(key.ToHex(), ": ", TierName(static_cast<Tier>(t)), " residency at slot ",
                    r.slot, " which does not name it");
      }
      pinned[t] += r.pins() > 0;
      filling[t] += r.state == ResState::kFilling;
      if (r.withheld &&
          (r.state != ResState::kReady || !KeptByPrefixLocked(id, static_cast<Tier>(t)))) {
        return fail(key.ToHex(), ": ", TierName(static_cast<Tier>(t)),
                    " residency withheld from its policy but not kept by the prefix rule");
      }
      if (r.lossy && t != 0) return fail(key.ToHex(), ": a lossy residency below the device");
      if (r.state == ResState::kFilling && r.io_pins == 0) {
        return fail(key.ToHex(), ": Filling without an I/O pin");
      }
      const uint32_t want = t == 0 ? lease_pins[id] : 0;
      if (r.lease_pins != want) {
        return fail(key.ToHex(), ": ", r.lease_pins, " lease pins vs ", want, " lease holders");
      }
    }
  }
  for (uint32_t id : ids_) {
    if (E(id).children != children[id]) {
      return fail(E(id).key.ToHex(), ": ", E(id).children, " children vs ", children[id]);
    }
  }
  // The maintained gauges agree with the residencies.
  for (int t = 0; t < kNumTiers; ++t) {
    if (tiers_[t].pinned != pinned[t] || tiers_[t].filling != filling[t]) {
      return fail(TierName(static_cast<Tier>(t)), ": gauges say ", tiers_[t].pinned, " pinned and ",
                  tiers_[t].filling, " filling vs ", pinned[t], " and ", filling[t], " counted");
    }
  }
  return absl::OkStatus();
}

}  // namespace kvtier::internal
