// The Index's management calls (Cache::Remove, Clear, Pin, Unpin, Hint with a duration,
// Prefetch): built on the residency transitions of index.cc, which record the KV events.
#include <cmath>
#include <limits>
#include <optional>

#include "absl/container/flat_hash_map.h"
#include "absl/container/inlined_vector.h"
#include "lib/index/index.h"

namespace kvtier::internal {
namespace {

constexpr Tier kHostTier = Tier::kHost;
constexpr Tier kDiskTier = Tier::kDisk;
int T(Tier t) { return static_cast<int>(t); }

}  // namespace

uint32_t Index::CachedAncestorLocked(uint32_t id) const {
  uint32_t p = E(id).parent_id;
  while (p != kNoEntry && !E(p).cached()) p = E(p).parent_id;
  return p;
}

void Index::ExpireDeadlinesLocked() {
  if (holds_.empty() && timed_hints_.empty()) return;
  const uint64_t now = clock_();
  holds_.Expire(now, [](uint32_t) {});  // evictable again: nothing else to do
  timed_hints_.Expire(now, [&](uint32_t id) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    for (int t = 0; t < kNumTiers; ++t) {
      const Residency& r = E(id).res[t];
      if (r.present()) tiers_[t].policy->OnHint(r.slot, std::numeric_limits<double>::quiet_NaN());
    }
  });
}

// Leaves first, in O(keys): a block is dropped once no entry chains from it; dropping one may
// free its nearest cached ancestor, which is dropped next if it was asked for too.
Index::ManageCounts Index::RemoveLocked(std::span<const BlockKey> keys) {
  ManageCounts c;
  // Entry -> still to decide (true) or decided (false), for the cached keys asked for.
  absl::flat_hash_map<uint32_t, bool> asked;
  absl::InlinedVector<uint32_t, 64> ready;  // asked entries with no children
  for (const BlockKey& k : keys) {
    const uint32_t id = FindLocked(k);
    if (id == kNoEntry || !E(id).cached()) {
      c.not_found++;
      continue;
    }
    if (!asked.emplace(id, true).second) continue;  // a key given twice counts once
    if (E(id).children == 0) ready.push_back(id);
  }
  while (!ready.empty()) {
    const uint32_t id = ready.back();
    ready.pop_back();
    asked[id] = false;
    bool busy = false;
    for (const Residency& r : E(id).res) {
      busy |= r.present() && (r.pins() > 0 || r.state != ResState::kReady);
    }
    if (busy) {
      c.busy++;
      continue;
    }
    const uint32_t up = CachedAncestorLocked(id);
    for (int t = 0; t < kNumTiers; ++t) {
      // The last removal erases the entry (no children), and with it its hold.
      if (E(id).res[t].present()) {
        FreeSlotLocked(static_cast<Tier>(t), RemoveResidencyLocked(id, static_cast<Tier>(t)));
      }
    }
    c.done++;
    if (up == kNoEntry || E(up).children != 0) continue;
    if (auto it = asked.find(up); it != asked.end() && it->second) ready.push_back(up);
  }
  for (const auto& [id, undecided] : asked) c.kept_for_children += undecided;
  return c;
}

Index::ManageCounts Index::ClearTierLocked(Tier tier) {
  ExpireDeadlinesLocked();
  ManageCounts c;
  TierTable& tt = table(tier);
  // Dropping a residency of the block's only copy may leave its nearest cached ancestor without
  // children: then the prefix rule no longer keeps that one, which goes next (leaves first).
  auto droppable = [&](uint32_t id) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    const Residency& r = E(id).res[T(tier)];
    return r.present() && r.state == ResState::kReady && r.pins() == 0 && !HeldLocked(id) &&
           (E(id).children == 0 || HasOtherCopyLocked(id, tier));
  };
  events_muted_ = true;  // one kAllCleared instead of a kRemoved per residency
  work_ += tt.capacity;
  for (SlotId s = 0; s < tt.capacity; ++s) {
    if (tt.slot[s].use != SlotUse::kResident) continue;
    for (uint32_t id = tt.slot[s].entry; id != kNoEntry && droppable(id);) {
      const uint32_t up = CachedAncestorLocked(id);
      FreeSlotLocked(tier, RemoveResidencyLocked(id, tier));
      c.done++;
      id = up;
    }
  }
  events_muted_ = false;
  if (events_.enabled()) events_.Push(KvEventType::kAllCleared, tier, kRootKey, kRootKey);
  // What stayed: re-announced to routers when Ready (a Filling one is announced when it lands).
  work_ += tt.capacity;
  for (SlotId s = 0; s < tt.capacity; ++s) {
    if (tt.slot[s].use != SlotUse::kResident) continue;
    const uint32_t id = tt.slot[s].entry;
    const Residency& r = E(id).res[T(tier)];
    if (r.state == ResState::kReady) EmitLocked(KvEventType::kStored, id, tier);
    if (r.state != ResState::kReady || r.pins() > 0 || HeldLocked(id)) {
      c.busy++;
    } else {
      c.kept_for_children++;
    }
  }
  return c;
}

Index::ManageCounts Index::HoldLocked(std::span<const BlockKey> keys, uint64_t deadline) {
  ExpireDeadlinesLocked();
  ManageCounts c;
  for (const BlockKey& k : keys) {
    const uint32_t id = FindLocked(k);
    if (id == kNoEntry || !E(id).cached()) {
      c.not_found++;
      continue;
    }
    holds_.Set(id, deadline);
    c.done++;
  }
  return c;
}

Index::ManageCounts Index::UnholdLocked(std::span<const BlockKey> keys) {
  ExpireDeadlinesLocked();
  ManageCounts c;
  for (const BlockKey& k : keys) {
    const uint32_t id = FindLocked(k);
    if (id != kNoEntry && holds_.Erase(id)) {
      c.done++;
    } else {
      c.not_found++;
    }
  }
  return c;
}

void Index::HintUntilLocked(std::span<const BlockKey> keys, std::span<const double> scores,
                            uint64_t deadline) {
  ExpireDeadlinesLocked();
  for (size_t i = 0; i < keys.size(); ++i) {
    const uint32_t id = FindLocked(keys[i]);
    if (id == kNoEntry) continue;
    for (int t = 0; t < kNumTiers; ++t) {
      if (E(id).res[t].present()) tiers_[t].policy->OnHint(E(id).res[t].slot, scores[i]);
    }
    timed_hints_.Set(id, deadline);
  }
}

MatchResult Index::CachedPrefixLocked(std::span<const BlockKey> keys) {
  MatchResult m;
  uint32_t parent = kNoEntry;
  for (const BlockKey& k : keys) {
    const uint32_t id = FindLocked(k);
    if (id == kNoEntry || !E(id).cached() || E(id).parent_id != parent) break;
    int top = 0;
    while (!E(id).res[top].present()) ++top;
    m.keys.push_back(k);
    m.tiers.push_back(static_cast<Tier>(top));
    parent = id;
  }
  return m;
}

uint32_t Index::PlanPrefetchLocked(const MatchResult& m, std::vector<Move>* reads) {
  // A read of entry `id` from `from` into host slot `hs`.
  auto read = [&](uint32_t id, Place from, SlotId hs) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    reads->push_back(Move{.key = E(id).key,
                          .parent = ParentKeyLocked(id),
                          .entry = id,
                          .from = from,
                          .to = {kHostTier, hs},
                          .via = hs,
                          .source_kept = T(from.tier) < kNumTiers});
    table(kHostTier).stats.promotions++;
  };
  uint32_t parent = kNoEntry;
  uint32_t blocks = 0;
  for (uint32_t i = 0; i < m.size(); ++i) {
    const BlockKey& key = m.keys[i];
    uint32_t id = FindLocked(key);
    if (id != kNoEntry && E(id).parent_id != parent) break;
    if (id == kNoEntry || !E(id).cached()) {
      // Cached nowhere here; the store has it (Match's second half): read it into a new host slot.
      const Tier store = i < m.tiers.size() ? m.tiers[i] : Tier::kDevice;
      if (T(store) < kNumTiers || !StageFromStoreLocked(key, parent, &id)) break;
      read(id, {store, 0}, E(id).res[T(kHostTier)].slot);
      reads->back().position = i;  // Transfer::blocks_loaded stops at the first failed read
    } else if (!E(id).res[T(Tier::kDevice)].present() && !E(id).res[T(kHostTier)].present()) {
      // On disk only. Its copy must be whole (not still being written) to be read.
      const Residency k = E(id).res[T(kDiskTier)];
      if (k.state != ResState::kReady) break;
      // Pin the source first: making room on the host can cascade into a disk eviction.
      PinLocked(id, kDiskTier, /*lease=*/false);
      std::optional<SlotId> hs = TakeSlotLocked(kHostTier, nullptr, id);
      if (!hs) {  // every host slot pinned, held or in flight: the rest stays where it is
        UnpinLocked(id, kDiskTier, /*lease=*/false);
        break;
      }
      AddResidencyLocked(id, kHostTier, *hs, ResState::kFilling, 0, 1);
      read(id, {kDiskTier, k.slot}, *hs);
      reads->back().position = i;
    }
    parent = id;
    blocks++;
  }
  return blocks;
}

void Index::FinishPrefetchLocked(const Move& m, bool ok, bool source_lost) {
  const bool local_source = T(m.from.tier) < kNumTiers;
  if (local_source) UnpinLocked(m.entry, m.from.tier, /*lease=*/false);
  UnpinLocked(m.entry, kHostTier, /*lease=*/false);
  if (ok) {
    MarkReadyLocked(m.entry, kHostTier);
    return;
  }
  counters_.transfer_failures++;
  table(kHostTier).stats.fill_failures++;
  if (source_lost && local_source) {
    // Failed to verify: the copy below is dropped too, so that no later Match finds it. First,
    // while the host residency still keeps the entry.
    FreeSlotLocked(m.from.tier, RemoveResidencyLocked(m.entry, m.from.tier));
  }
  FreeSlotLocked(kHostTier, RemoveResidencyLocked(m.entry, kHostTier));
}

}  // namespace kvtier::internal
