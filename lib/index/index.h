// Index: keys -> residencies per tier, slot ownership, leases and pins. Every state transition of
// the cache happens here, under mu(), and CheckInvariants() verifies all of them.
//
// The Index does no I/O and knows no Device: a transition that needs bytes moved returns a
// Move for the caller to carry out, and the caller reports the copy's outcome back through
// FinishMoveLocked.
//
// Lock order (the whole library): Index::mu() -> a Device's queue locks -> TransferState::mu.
// Policies own no lock: they run under mu().
//
// Residency life cycle, per (key, tier):
//   absent -> Filling (bytes in flight into the slot; io-pinned) -> Ready -> absent
//   A residency with pins (lease or I/O) or in Filling is never a victim. Prefix rule: a block's
//   last residency is not removed while an entry chained from it exists. An entry that lost its
//   last residency through a failed copy stays as an uncached "lost" parent until its children go.
// KV events (kvtier/events.h) are recorded at the transitions themselves: kStored when a residency
// becomes Ready (AddResidencyLocked Ready, MarkReadyLocked), kRemoved when a Ready one goes
// (RemoveResidencyLocked), so every path that changes residencies reports them.
#ifndef KVTIER_LIB_INDEX_INDEX_H_
#define KVTIER_LIB_INDEX_INDEX_H_

#include <array>
#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <span>
#include <utility>
#include <vector>

#include "absl/container/flat_hash_map.h"
#include "absl/container/flat_hash_set.h"
#include "absl/hash/hash.h"
#include "absl/status/status.h"
#include "kvtier/block_key.h"
#include "kvtier/events.h"
#include "kvtier/policy.h"
#include "kvtier/stats.h"
#include "kvtier/tier.h"
#include "lib/common/huge_pages.h"
#include "lib/common/mutex.h"
#include "lib/index/deadlines.h"
#include "lib/index/event_queue.h"
#include "lib/index/tenant_policies.h"

namespace kvtier::internal {

enum class ResState : uint8_t { kAbsent, kFilling, kReady };

// 8 bytes. Lease pins are bounded (a block shared by 65,535 live sequences on one GPU is beyond
// any engine; Load stops sharing at the bound rather than overflow), I/O pins are at most two.
struct Residency {
  SlotId slot = 0;
  uint16_t lease_pins = 0;  // leases holding this block at this slot (device tier only)
  uint8_t io_pins : 6 = 0;  // copies reading or writing the slot
  // Device tier: the bytes were decoded from a lossy codec's copy (a Load through
  // Options.host.codec), not committed by the engine. Loads that share the block count it in
  // Transfer::blocks_lossy; a Commit of the recomputed block replaces it once no one holds it.
  uint8_t lossy : 1 = 0;
  // Withheld from the tier's policy (EvictionPolicy::OnWithhold accepted) because the prefix rule
  // keeps it: the block's only copy, in a tier that cannot write victims back, with children. A
  // victim search that passed over it withheld it, so that no later search walks past it again;
  // OnRestore hands it back when that stops being true. See Index::PickVictimLocked.
  uint8_t withheld : 1 = 0;
  ResState state = ResState::kAbsent;
  static constexpr uint16_t kMaxLeasePins = UINT16_MAX;
  bool present() const { return state != ResState::kAbsent; }
  // A device residency another lease may share now (Load, AllocateDevice with a match): Ready,
  // and below the lease-pin bound.
  bool shareable() const { return state == ResState::kReady && lease_pins < kMaxLeasePins; }
  uint32_t pins() const { return lease_pins + io_pins; }
};

inline constexpr uint32_t kNoEntry = UINT32_MAX;

// One block known to the index. Entries live in a slab and are named by a dense id that is stable
// while the entry exists, so slots, leases and copies in flight refer to them without hashing.
// 48 bytes: the index holds millions, and every byte is cache misses on the eviction path.
struct Entry {
  BlockKey key;
  uint32_t parent_id = kNoEntry;  // the parent's entry id; kNoEntry for a first block
  uint32_t children = 0;          // entries whose parent is this one
  std::array<Residency, kNumTiers> res;
  bool cached() const {
    for (const Residency& r : res) {
      if (r.present()) return true;
    }
    return false;
  }
};
static_assert(sizeof(Residency) == 8);
static_assert(sizeof(Entry) == 48);

// Where a block's bytes are: a tier and a slot of it. A store the index tracks no slots of
// (kRemote) names its blocks by key: slot 0.
struct Place {
  Tier tier = Tier::kHost;
  SlotId slot = 0;
};

// One copy of one block that the Index decided (state only: the slots are taken, the target is
// Filling and io-pinned) and the caller carries out, reporting its outcome with FinishMoveLocked.
// By direction:
//  - a promotion, to the device (lease `lease_id`, position `position`): from a host slot, or
//    from a tier below through `via`, a new host slot the bytes are read into first (Filling
//    until the promotion finishes; for a store the entry may be new, and a failure forgets it);
//  - a demotion, device to host;
//  - a write, host to a tier below: a disk slot, or a store (the remote tier).
// `source_kept`: the source copy stays, io-pinned until the move ends (write-through, flush).
// Otherwise a demotion's or a write's source slot was handed on at once (write-back of a victim):
// its next user must wait for this copy (a device slot: the allocation waits for the demotion; a
// host slot: HostSlotHazards). `entry` is kNoEntry for a copy the index keeps no state for (a
// store's copy of a host victim): finishing it changes nothing.
struct Move {
  BlockKey key;
  BlockKey parent;  // writes: the key's parent (kRootKey for a first block), stored with it
  uint32_t entry = kNoEntry;
  Place from;
  Place to;
  SlotId via = 0;
  bool source_kept = false;
  uint32_t position = 0;
  uint64_t lease_id = 0;
  // Connector mode: the device end (a promotion's `to`, a store's `from`) is a block of the
  // engine's own KV pool, `slot` its block id. The index holds no state for it beyond
  // EngineBlockUse.
  bool engine = false;

  // The host slot the bytes pass through: a promotion's source (or `via`), a demotion's target, a
  // write's source.
  SlotId host_slot() const {
    if (from.tier == Tier::kHost) return from.slot;
    return to.tier == Tier::kHost ? to.slot : via;
  }
};

// A block found in a tier's storage at start (warm restart).
struct RestoredBlock {
  BlockKey key;
  BlockKey parent;
  SlotId slot = 0;
};

struct LoadPlan {
  uint32_t blocks = 0;  // lease positions [0, blocks) now hold the matched keys
  std::vector<Move> promotions;
  std::vector<uint32_t> lease_slots;  // the lease's device slots after the plan
  // Positions in [0, blocks) whose device blocks the lease shares and which are lossy
  // (Residency::lossy): the engine gets them as decoded, like the promotions through a codec.
  std::vector<uint32_t> lossy_shared;
};

struct IndexConfig {
  std::array<uint32_t, kNumTiers> capacity_slots{};  // 0 disables a tier (the host only)
  std::array<std::unique_ptr<EvictionPolicy>, kNumTiers> policies;
  bool demote_on_evict = true;
  bool host_write_through = false;
  // The host tier holds blocks through a lossy codec (Options.host.codec): a device copy promoted
  // from it is marked lossy (Residency::lossy).
  bool host_lossy = false;
  // Per tier (the device's is ignored): a slot freed (not handed on to a new block) is out of use
  // until the caller has wiped it (TakeWipesLocked, FinishWipeLocked), so no stale block's bytes
  // sit in a free slot.
  std::array<bool, kNumTiers> wipe_on_free{};
  // Per-tenant shares of a tier (TenantPolicies): each tenant's quota in slots, by tenant id (0:
  // the default tenant, then the named ones), and a policy instance for each, for the tiers that
  // have shares; empty: the tier is one policy's, as without tenants. Tenants are at most 64.
  std::array<std::vector<uint32_t>, kNumTiers> tenant_quota_slots;
  std::array<std::vector<std::unique_ptr<EvictionPolicy>>, kNumTiers> tenant_policies;
  // What the store (the remote tier, Tier::kRemote) gets a copy of, as writes from host slots:
  // kHostVictims, every host victim (its bytes still in the slot: write-back); kHostFills, every
  // block a demotion brought to the host (the host copy io-pinned until sent: write-through).
  enum class StoreFeed : uint8_t { kNone, kHostVictims, kHostFills };
  StoreFeed store_feed = StoreFeed::kNone;
  // KV events: at most this many queued for TakeEventsLocked (0: none recorded), each carrying
  // tokens_per_block (the layout's).
  uint32_t events_capacity = 0;
  uint32_t tokens_per_block = 0;
  // Nanoseconds on a monotonic clock, for the deadlines of holds and timed hints; null: the
  // steady clock (MonotonicNanos). Called under mu(), from any thread.
  std::function<uint64_t()> clock;
};

class Index {
 public:
  explicit Index(IndexConfig config);
  Index(const Index&) = delete;
  Index& operator=(const Index&) = delete;

  Mutex& mu() const ABSL_LOCK_RETURNED(mu_) { return mu_; }

  // The cached prefix of `keys`. `touch`: counts as an access for the policies and the stats
  // (hits, match_calls, blocks_queried/missed); false only looks.
  MatchResult MatchLocked(std::span<const BlockKey> keys, bool touch = true)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // Forwards scores[i] to the policies of the tiers holding keys[i]; unknown keys are skipped.
  void HintLocked(std::span<const BlockKey> keys, std::span<const double> scores)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);

  // A new lease of n device slots (evicting as needed); demotions to enqueue are appended, always,
  // even on failure. On kResourceExhausted nothing is reserved, but slots whose block is being
  // written back are appended to `quarantine` (if given; else freed at once): the caller frees them
  // with FreeQuarantinedLocked once those copies are done, so no one writes them before.
  // `prefix` (at most n keys, the sequence's first): its blocks Ready on the device, from the
  // first while they chain from the root, are shared by the lease at once (pinned, as Load
  // shares them) before any slot is taken, so making room cannot evict them; the rest of the n
  // slots are new. `slots` gets all n; *shared (if given) how many were shared.
  absl::StatusOr<uint64_t> NewLeaseLocked(uint32_t n, std::vector<SlotId>* slots,
                                          std::vector<Move>* demotions,
                                          std::vector<SlotId>* quarantine = nullptr,
                                          std::span<const BlockKey> prefix = {},
                                          uint32_t* shared = nullptr)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  absl::Status GrowLeaseLocked(uint64_t lease_id, uint32_t n, std::vector<SlotId>* slots,
                               std::vector<Move>* demotions,
                               std::vector<SlotId>* quarantine = nullptr)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  void FreeQuarantinedLocked(std::span<const SlotId> slots) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // Plans lease positions [0, match.size()). A block cached nowhere locally that the match found
  // in a store (match.tiers[i] >= kNumTiers) gets a new host slot to be read into from the store.
  // Positions the lease shared when it was made are kept (they must hold match.keys[i]).
  absl::StatusOr<LoadPlan> PlanLoadLocked(uint64_t lease_id, const MatchResult& match)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // Publishes lease positions [0, keys.size()). A key already on the device from elsewhere
  // (another lease's copy, or a Load's) keeps that copy: this lease's slot stays its own,
  // unpublished, and the chain goes on under the existing block (counted as
  // blocks_commit_shared).
  absl::Status CommitLocked(uint64_t lease_id, std::span<const BlockKey> keys,
                            std::vector<Move>* demotions) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  absl::Status ReleaseLeaseLocked(uint64_t lease_id) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // The tenant whose request the lease serves (0: the default one): the blocks its Commit and Load
  // add to the index are that tenant's, in every tier, for as long as they are cached.
  // kFailedPrecondition for a released lease.
  absl::Status SetLeaseTenantLocked(uint64_t lease_id, uint8_t tenant)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);

  // ---- Connector mode: the device tier is the engine's (capacity 0 here). Moves to and from it
  // name the engine's block ids (Move::engine); the index keeps only which engine blocks a copy
  // in flight reads or writes, to refuse a second copy into them.
  //
  // Plans copies of keys[first, keys.size()) (a chain from the root) into engine blocks `dst`
  // (dst[i] for keys[first + i]): from the host, or read into a new host slot first from the disk
  // or, for a block cached nowhere here, from `store` (Tier::kRemote when configured, else
  // Tier::kDevice: none). Keys [0, first) are the engine's own hits and need not be cached here:
  // one that is not becomes an uncached link entry (as a lost parent) while a block under it is.
  // Stops at the first block that cannot be had now (plan.blocks says how many are planned).
  // kInvalidArgument: a key known under another parent than its predecessor, a dst block that a
  // copy in flight reads or writes (kFailedPrecondition). Nothing changes on error.
  absl::StatusOr<LoadPlan> PlanEngineLoadLocked(std::span<const BlockKey> keys, uint32_t first,
                                                std::span<const SlotId> dst, Tier store)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // Plans copies of engine blocks `src` (src[i] holds keys[first + i]) into new host slots
  // (Filling, io-pinned) for the keys not cached in any local tier; keys cached (or being filled)
  // are skipped and counted in *skipped. Stops when no host slot can be had: the rest are not
  // stored
  // (*unstored). Keys [0, first) link as in PlanEngineLoadLocked. Same errors; a src block that a
  // load in flight writes is kFailedPrecondition.
  absl::StatusOr<std::vector<Move>> PlanEngineStoreLocked(std::span<const BlockKey> keys,
                                                          uint32_t first,
                                                          std::span<const SlotId> src,
                                                          uint32_t* skipped, uint32_t* unstored)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // Engine blocks that copies in flight read (stores) or write (loads): for tests and invariants.
  size_t engine_blocks_busy_locked() const ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    return engine_blocks_.size();
  }

  // Reports a move's outcome. `source_lost`: a promotion's copy in the tier below failed to
  // verify, and is dropped too. A demotion that succeeds under StoreFeed::kHostFills queues a
  // write to the store.
  void FinishMoveLocked(const Move& m, bool ok, bool source_lost = false)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // Writes from host slots to the tiers below (disk, store) decided since the last take: by any
  // call that takes host slots, by FlushHostLocked, by FinishMoveLocked.
  std::vector<Move> TakeWritesLocked() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    return std::exchange(writes_, {});
  }
  // Host and disk slots freed since the last take on a tier with IndexConfig::wipe_on_free: each is
  // out of use (neither free nor resident) until FinishWipeLocked returns it to the free list, once
  // the caller has zeroed it (host) or invalidated its trailer (disk).
  std::vector<Place> TakeWipesLocked() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    return std::exchange(wipes_, {});
  }
  void FinishWipeLocked(Place slot) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // Moves the oldest min(max, queued) KV events to the end of `out`. O(events taken).
  void TakeEventsLocked(size_t max, std::vector<KvEvent>* out) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    events_.Take(max, out);
  }

  // ---- Management (Cache::Remove, Clear, Pin, Unpin, Hint with a duration, Prefetch), in
  // lib/index/index_manage.cc. ----

  // What a management call did with the blocks it was given (Cache::ManageResult).
  struct ManageCounts {
    uint64_t done = 0;
    uint64_t not_found = 0;
    uint64_t busy = 0;
    uint64_t kept_for_children = 0;
  };
  // The clock deadlines are measured on (IndexConfig::clock). Readable without mu().
  uint64_t Now() const { return clock_(); }
  // Drops each cached key from every tier, leaves first: a block a cached block not dropped here
  // chains from is kept (kept_for_children), as is a block with a residency pinned or Filling
  // (busy). Holds on dropped blocks end. O(keys + uncached parents passed).
  ManageCounts RemoveLocked(std::span<const BlockKey> keys) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // Drops every residency of `tier` but those pinned, Filling or held (busy) and those the prefix
  // rule keeps (the block's only copy, with a cached child: kept_for_children), leaves first.
  // Records one kAllCleared event and a kStored for each Ready residency kept. O(capacity).
  ManageCounts ClearTierLocked(Tier tier) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // Holds the cached keys (not evicted from any tier) until `deadline` (Now() scale), replacing an
  // earlier deadline. O(keys).
  ManageCounts HoldLocked(std::span<const BlockKey> keys, uint64_t deadline)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // Ends the holds of `keys` (done: held ones; not_found: the others). O(keys).
  ManageCounts UnholdLocked(std::span<const BlockKey> keys) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // HintLocked, and at `deadline` each block's residencies get OnHint(slot, NaN): the policy's
  // default again. A later plain HintLocked of a key cancels the revert.
  void HintUntilLocked(std::span<const BlockKey> keys, std::span<const double> scores,
                       uint64_t deadline) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // Ends the holds and timed hints whose deadline has passed. O(expired).
  void ExpireDeadlinesLocked() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // The longest prefix of `keys` cached in a local tier, with each block's highest tier; unlike
  // MatchLocked neither counted nor an access. O(prefix).
  MatchResult CachedPrefixLocked(std::span<const BlockKey> keys) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // Plans bringing the chain `m` to the host (Cache::Prefetch): for each block, from the first,
  // nothing if it is on the device or the host already; a read into a new host slot (Filling,
  // io-pinned; the source io-pinned) if it is Ready only on disk, or cached nowhere here and
  // m.tiers[i] names a store. Stops at the first block it can do neither for (not cached, still
  // being written, no host slot to be had). Appends the reads (to = via = the host slot) and
  // returns how many blocks of the chain it covered.
  uint32_t PlanPrefetchLocked(const MatchResult& m, std::vector<Move>* reads)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // A prefetch read's outcome: the host copy is Ready, or dropped (and the source too when
  // `source_lost`: it failed to verify).
  void FinishPrefetchLocked(const Move& m, bool ok, bool source_lost)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);

  // Match found `n` more blocks in a store past the local prefix: they are not misses.
  void NoteStoreHitsLocked(uint32_t n) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    counters_.blocks_missed -= n;
  }

  // Flush, for a clean shutdown: device blocks with no copy in another tier get a host copy
  // (returned as demotions), then host blocks with no disk copy get a disk copy (as writes).
  // As room allows; nothing pinned is evicted. FlushDeviceLocked walks device slots from `next`
  // and leaves `next` at the first it found no host room for: called again (0 at first) once the
  // host has room, it goes on from there, so all rounds together walk the device table once.
  std::vector<Move> FlushDeviceLocked(SlotId& next) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  void FlushHostLocked() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // Under StoreFeed::kHostVictims (remote write-back), for a clean shutdown: every Ready host
  // block gets a write to the store (source kept, io-pinned until sent), as its eviction would
  // have given it; the store skips those it knows it holds. Returns how many were queued (0 under
  // any other feed). O(host capacity).
  uint32_t FlushHostToStoreLocked() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);

  // Adds blocks found in `tier`'s storage, parents before children; a block whose parent is
  // neither restored nor cached is not added (it could never be matched), nor one whose slot is
  // out of range or already holds a block. Returns how many were.
  uint32_t RestoreLocked(Tier tier, std::span<const RestoredBlock> blocks)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // The Ready residencies of `tier` (for a manifest).
  std::vector<RestoredBlock> ListLocked(Tier tier) const ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);

  absl::Status CheckInvariantsLocked() const ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // O(tiers): every figure is a maintained counter or gauge.
  void FillStatsLocked(CacheStats* stats) const ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // Blocks evicted from any tier so far (a failed allocation that evicted some made progress).
  uint64_t EvictionsLocked() const ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    uint64_t n = 0;
    for (const TierTable& tt : tiers_) n += tt.stats.evictions;
    return n;
  }
  // Fixed at construction: readable without mu().
  uint32_t capacity(Tier tier) const { return capacities_[static_cast<int>(tier)]; }
  size_t live_leases_locked() const ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) { return leases_.size(); }

 private:
  // kQuarantined: a device slot whose old block is still being copied out, or a host or disk slot
  // being wiped (IndexConfig::wipe_on_free), owned by no one.
  enum class SlotUse : uint8_t { kFree, kLeased, kResident, kQuarantined };
  struct TierTable {
    uint32_t capacity = 0;
    struct Slot {
      uint32_t entry = kNoEntry;  // entry id while use == kResident
      SlotUse use = SlotUse::kFree;
    };
    HugeVector<Slot> slot;    // one record per slot: the eviction path touches one cache line
    HugeVector<SlotId> free;  // stack of kFree slots
    std::unique_ptr<EvictionPolicy> policy;
    // Counters and the two gauges below are maintained by the residency transitions; the rest of
    // the gauges (used blocks) are derived from the free list.
    TierStats stats;
    uint64_t pinned = 0;   // residencies with a pin
    uint64_t filling = 0;  // residencies in kFilling
  };
  struct LeaseSlot {
    SlotId slot = 0;
    bool holds = false;  // slot is entry `entry`'s device residency, pinned by this lease
    // Shared when the lease was made (NewLeaseLocked's prefix), not yet passed by a Load: the
    // Load keeps it rather than refusing the position as loaded.
    bool shared_at_allocation = false;
    uint32_t entry = kNoEntry;
  };
  struct Lease {
    std::vector<LeaseSlot> slots;
    uint8_t tenant = 0;  // SetLeaseTenantLocked
  };

  TierTable& table(Tier t) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    return tiers_[static_cast<int>(t)];
  }
  const TierTable& table(Tier t) const ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    return tiers_[static_cast<int>(t)];
  }

  // A slot of `tier` (free, or a victim's: written back to the tier below when it has no copy
  // elsewhere and the tier is not the bottom, else dropped); nullopt when nothing can be freed.
  // The device's write-backs are appended to `demotions`; the host's are queued as writes (to the
  // disk, and to the store under StoreFeed::kHostVictims) for TakeWritesLocked.
  // `for_id`: the entry whose residency the slot is for (its owner's share decides the victim
  // when the tier is split by tenant); kNoEntry: a lease's device slot, or the call's tenant.
  std::optional<SlotId> TakeSlotLocked(Tier tier, std::vector<Move>* demotions,
                                       uint32_t for_id = kNoEntry)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // TakeSlotLocked (no device tier) for a residency of entry `id`, which stays an entry
  // meanwhile even if it is uncached (a lost parent) and the eviction drops its last child.
  std::optional<SlotId> TakeSlotForLocked(uint32_t id, Tier tier)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  bool HasOtherCopyLocked(uint32_t id, Tier tier) const ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // The key of entry `id`'s parent (kRootKey for a first block).
  BlockKey ParentKeyLocked(uint32_t id) const ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    const uint32_t parent = E(id).parent_id;
    return parent == kNoEntry ? kRootKey : E(parent).key;
  }
  // A Filling, io-pinned host residency for a block to be read from a store, under `parent`;
  // *id is the key's entry (a lost parent) or kNoEntry (a new entry is made). False when no host
  // slot can be had.
  bool StageFromStoreLocked(const BlockKey& key, uint32_t parent, uint32_t* id)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // The source of a copy of `key` (entry *id, kNoEntry if unknown here; under `parent`) to the
  // device, below it: its Ready host copy (io-pinned), or a new Filling host slot (`via`) that the
  // block is read into first from the disk or, cached nowhere here, from `store`. Sets m->entry,
  // from and via, and counts the host's promotion; false when it cannot be had now.
  bool PlanSourceLocked(const BlockKey& key, uint32_t parent, Tier store, uint32_t* id, Move* m)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // Validates `keys` as one chain from the root (the keys known here first, each under its
  // predecessor), then makes entries for keys[0, first), uncached links where missing;
  // returns the last one's id (kNoEntry when first == 0). The caller hands that id to
  // EraseIfUnusedLocked once done, which erases the links nothing was hung under. kInvalidArgument
  // when a key is known under another parent (nothing made then).
  absl::StatusOr<uint32_t> LinkEngineChainLocked(std::span<const BlockKey> keys, uint32_t first)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // Checks the engine's block ids of a copy: none written by a copy in flight (nor read, for a
  // load's targets).
  absl::Status CheckEngineBlocksLocked(const char* call, std::span<const SlotId> blocks,
                                       bool write) const ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  void EngineBlockUseLocked(SlotId block, bool write, int delta) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // A host-to-tier-below write of entry `id`'s host copy at `host_slot` (queued for
  // TakeWritesLocked).
  void QueueWriteLocked(uint32_t id, SlotId host_slot, Place to, bool source_kept)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  absl::Status AddLeaseSlotsLocked(Lease& lease, uint32_t n, std::vector<SlotId>* slots,
                                   std::vector<Move>* demotions, std::vector<SlotId>* quarantine)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);

  // The tenant owning entry `id` (0 when no tier is split by tenant).
  uint8_t OwnerLocked(uint32_t id) const ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    return owner_.empty() ? 0 : owner_[id];
  }
  uint32_t FindLocked(const BlockKey& key) const ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    work_++;
    auto it = ids_.find(key);
    return it == ids_.end() ? kNoEntry : *it;
  }
  Entry& E(uint32_t id) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) { return slab_[id]; }
  const Entry& E(uint32_t id) const ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) { return slab_[id]; }
  // A new entry for `key` (which must have none) under `parent_id`. May grow the slab: Entry
  // references taken before are invalid afterwards.
  uint32_t AddEntryLocked(const BlockKey& key, uint32_t parent_id)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);

  // Residency transitions. Add* marks the slot resident and tells the policy; Remove* returns the
  // slot (still marked resident: the caller frees or re-leases it) and erases an entry left with
  // no residency and no children.
  void AddResidencyLocked(uint32_t id, Tier tier, SlotId slot, ResState state, uint32_t lease_pins,
                          uint32_t io_pins) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  SlotId RemoveResidencyLocked(uint32_t id, Tier tier) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // A Filling residency's bytes have arrived.
  void MarkReadyLocked(uint32_t id, Tier tier) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // EvictionPolicy::OnUpperCopy: the copy of `id` at `tier` became Ready (ready) or is about to
  // go (!ready); tells the policies of the copies it changes that for (this one, the Ready ones
  // below it that have no other Ready copy above them).
  void NoteUpperCopiesLocked(uint32_t id, Tier tier, bool ready) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // A Ready copy of `id` in a tier above tier index `below`, other than tier index `skip`, that
  // its tier would write back when evicting it (so the copies below it are spares).
  bool ReadyAboveLocked(uint32_t id, int below, int skip) const ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // Whether entry `id` is held (Cache::Pin): never a victim.
  bool HeldLocked(uint32_t id) const ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    return !holds_.empty() && holds_.Contains(id);
  }
  // Entry `id` is being erased: its hold and timed hint end with it (ids are reused).
  void ForgetDeadlinesLocked(uint32_t id) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    if (!holds_.empty()) holds_.Erase(id);
    if (!timed_hints_.empty()) timed_hints_.Erase(id);
  }
  // The nearest ancestor of entry `id` that is cached (past uncached "lost" parents), or kNoEntry.
  uint32_t CachedAncestorLocked(uint32_t id) const ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // Records a KV event about entry `id`'s residency in `tier` (nothing when events are off).
  void EmitLocked(KvEventType type, uint32_t id, Tier tier) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    if (events_.enabled() && !events_muted_)
      events_.Push(type, tier, E(id).key, ParentKeyLocked(id));
  }
  // Whether the prefix rule alone keeps entry `id`'s residency in `tier` (Ready, unpinned): it has
  // children and no copy in another tier, and the tier cannot write victims back (its bottom).
  bool KeptByPrefixLocked(uint32_t id, Tier tier) const ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // Hands back to their policies entry `id`'s withheld residencies that are no longer kept.
  void ReviewWithheldLocked(uint32_t id) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // Asks `tier`'s policy for a victim that `can_evict` accepts, counting each candidate as work.
  // Candidates passed over because the prefix rule keeps them are withheld from the policy.
  template <typename Pred>
  std::optional<SlotId> PickVictimLocked(Tier tier, Pred can_evict)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  void PinLocked(uint32_t id, Tier tier, bool lease) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  void UnpinLocked(uint32_t id, Tier tier, bool lease) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  void EraseIfUnusedLocked(uint32_t id) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  void FreeSlotLocked(Tier tier, SlotId slot) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  Lease* FindLeaseLocked(uint64_t id) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);

  const std::array<uint32_t, kNumTiers> capacities_;  // slots per tier, as configured
  mutable Mutex mu_;
  std::array<TierTable, kNumTiers> tiers_ ABSL_GUARDED_BY(mu_);
  // key -> entry id. The table stores only the 4-byte id and compares keys through the slab
  // (heterogeneous lookup): a fifth of the memory of a map of keys, which keeps a large index's
  // probes in cache.
  struct IdHash {
    using is_transparent = void;
    const HugeVector<Entry>* slab;
    size_t operator()(uint32_t id) const { return absl::Hash<BlockKey>{}((*slab)[id].key); }
    size_t operator()(const BlockKey& key) const { return absl::Hash<BlockKey>{}(key); }
  };
  struct IdEq {
    using is_transparent = void;
    const HugeVector<Entry>* slab;
    bool operator()(uint32_t a, uint32_t b) const { return a == b; }
    bool operator()(uint32_t id, const BlockKey& key) const { return (*slab)[id].key == key; }
    bool operator()(const BlockKey& key, uint32_t id) const { return (*slab)[id].key == key; }
  };
  // The two largest structures, touched at random by every request: on huge pages.
  HugeVector<Entry> slab_ ABSL_GUARDED_BY(mu_);  // entry id -> entry
  absl::flat_hash_set<uint32_t, IdHash, IdEq, HugePageAllocator<uint32_t>> ids_
      ABSL_GUARDED_BY(mu_){0, IdHash{&slab_}, IdEq{&slab_}};
  std::vector<uint32_t> free_ids_ ABSL_GUARDED_BY(mu_);  // unused entry ids
  absl::flat_hash_map<uint64_t, Lease> leases_ ABSL_GUARDED_BY(mu_);
  uint64_t next_lease_id_ ABSL_GUARDED_BY(mu_) = 1;
  std::vector<Move> writes_ ABSL_GUARDED_BY(mu_);
  std::vector<Place> wipes_ ABSL_GUARDED_BY(mu_);  // freed slots to wipe (TakeWipesLocked)
  // Connector mode: engine blocks that copies in flight read (stores) or write (loads).
  struct EngineBlockUse {
    uint32_t readers = 0;
    bool written = false;
  };
  absl::flat_hash_map<SlotId, EngineBlockUse> engine_blocks_ ABSL_GUARDED_BY(mu_);
  EventQueue events_ ABSL_GUARDED_BY(mu_);
  // Set while a whole-tier clear removes residencies: it records one kAllCleared instead.
  bool events_muted_ ABSL_GUARDED_BY(mu_) = false;
  const std::function<uint64_t()> clock_;
  // Entries held by Cache::Pin until their deadline (consulted by TakeSlotLocked's victim test),
  // and those whose policy score a timed Hint set until its deadline.
  DeadlineTable holds_ ABSL_GUARDED_BY(mu_);
  DeadlineTable timed_hints_ ABSL_GUARDED_BY(mu_);
  const bool demote_on_evict_;
  // Per tier: its victims are never written back below (the device without a host tier, the host
  // without a disk tier, the disk), so the prefix rule protects its only copies with children.
  std::array<bool, kNumTiers> bottom_{};
  const bool host_write_through_;
  const bool host_lossy_;
  const IndexConfig::StoreFeed store_feed_;
  const std::array<bool, kNumTiers> wipe_on_free_;  // IndexConfig::wipe_on_free
  // Per tier: its policy (tiers_[t].policy) when split by tenant, else null.
  std::array<TenantPolicies*, kNumTiers> tenant_policies_{};
  // With any tier split by tenant: each entry's owner, by entry id (else empty). Set when the entry
  // is made, from tenant_.
  std::vector<uint8_t> owner_ ABSL_GUARDED_BY(mu_);
  // The tenant of the lease whose Commit or Load is in progress (0 otherwise): owner of the
  // entries it makes.
  uint8_t tenant_ ABSL_GUARDED_BY(mu_) = 0;
  bool split_by_tenant_ = false;              // some tier has tenant shares; set at construction
  CacheStats counters_ ABSL_GUARDED_BY(mu_);  // the index's counters (tiers' stats live above)
  // Work done so far, in entries and slots visited: key lookups, eviction candidates the policies
  // offered (accepted or not), and slots walked by whole-tier passes (flush, restore, listing);
  // CheckInvariants is not counted. Monotonic; reported as CacheStats::index_work, which
  // test/cost_test.cc compares per request across capacities.
  mutable uint64_t work_ ABSL_GUARDED_BY(mu_) = 0;
};

}  // namespace kvtier::internal

#endif  // KVTIER_LIB_INDEX_INDEX_H_
