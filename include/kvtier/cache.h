// Cache: a tiered KV-block cache for one GPU (one tensor-parallel rank).
//
// The engine lifecycle (see docs/integration.md):
//   keys  = hasher.ChainTokens(prompt_tokens, tokens_per_block)   // block keys, root first
//   match = cache.Match(keys)                  // the cached prefix, and the tier of each block
//   lease = cache.AllocateDevice(keys.size())  // device slots for the whole sequence
//   xfer  = cache.Load(match, lease)           // lease slots [0, xfer.blocks()) get cached blocks
//   ... xfer.WaitLayer(l) before attention on layer l; compute blocks [xfer.blocks(), n) ...
//   cache.Commit(keys, lease)                  // publish the computed blocks
//   lease = {} / cache.Release(lease)          // done: blocks unpinned, now evictable
//
// Tiers: kDevice (the engine's KV memory, described by Options.layout), kHost (pinned DRAM pool),
// kDisk (files on NVMe, Options.disk). A block may reside in several. Making room in a tier evicts
// with its policy and, unless Options.demote_on_evict is false, first copies a victim that has no
// copy in any other tier one tier down (device -> host -> disk); the bottom tier's victims are
// dropped. Prefix rule: a block is never dropped from every tier while a block chained from it is
// still cached, so a cached block's ancestors are always reachable.
// Warm restart: with Options.disk, Create() serves the blocks a previous cache left in the
// directory (destroying a Cache writes the manifest that makes the next start fast).
// Remote tier (Options.remote): caches on many machines share blocks through a Redis Cluster.
// Match() asks the store about the blocks past the local prefix (within match_budget_us), Load()
// reads them into host slots, verifies them and copies them to the device like host hits; a
// block the store lost or that fails to verify fails the Transfer like a failed disk read.
//
// Thread safety: every Cache method may be called from any thread concurrently (a scheduler thread
//   matching and allocating while workers load and commit). A DeviceLease or Transfer handle is
//   used by one thread at a time, like any value.
// Ownership: Create() returns the Cache; leases and transfers must be destroyed before it.
// Errors: absl::Status, never exceptions or aborts on user error. Invalid arguments are rejected
// with
//   the cache unchanged and usable. Codes: kInvalidArgument (bad option, layout, or key span),
//   kFailedPrecondition (empty/released/foreign lease, Load into slots already loaded),
//   kResourceExhausted (every device
//   slot pinned or in flight), kUnimplemented (CUDA asked for, not available).
#ifndef KVTIER_CACHE_H_
#define KVTIER_CACHE_H_

#include <cstddef>
#include <cstdint>
#include <memory>
#include <span>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/time/time.h"
#include "kvtier/block_key.h"
#include "kvtier/events.h"
#include "kvtier/options.h"
#include "kvtier/stats.h"
#include "kvtier/tier.h"
#include "kvtier/transfer.h"

namespace kvtier {

class Cache;

// Device slots reserved for one sequence, in block order. Slot i is where block i of the sequence
// lives in the engine's KV tensors (layout segment base + slot * stride).
//
// Ownership: move-only; destroying it (or Cache::Release) returns uncommitted slots and unpins the
//   cached blocks it holds. An empty (default or moved-from) lease answers kFailedPrecondition.
// Thread safety: one thread at a time per lease; the Cache is what is shared.
class DeviceLease {
 public:
  DeviceLease() = default;
  DeviceLease(DeviceLease&& other) noexcept;
  DeviceLease& operator=(DeviceLease&& other) noexcept;
  DeviceLease(const DeviceLease&) = delete;
  DeviceLease& operator=(const DeviceLease&) = delete;
  ~DeviceLease();

  explicit operator bool() const { return cache_ != nullptr; }
  // The cache that issued it (nullptr when empty).
  const Cache* cache() const { return cache_; }
  uint32_t size() const { return static_cast<uint32_t>(slots_.size()); }
  // Device slot of each block. Load() may replace slot i by the slot where block i already resides
  // on the device (no copy): read this after Load() to build the engine's block table.
  std::span<const uint32_t> slots() const { return slots_; }
  // Leading positions AllocateDevice(match, n) shared at once: they hold the matched blocks
  // (cached, maybe read by other leases: never write them); Load keeps them. 0 otherwise.
  uint32_t shared() const { return shared_; }

 private:
  friend class Cache;
  DeviceLease(Cache* cache, uint64_t id, std::vector<uint32_t> slots, uint32_t shared = 0)
      : cache_(cache), id_(id), slots_(std::move(slots)), shared_(shared) {}
  void Reset();

  Cache* cache_ = nullptr;
  uint64_t id_ = 0;
  std::vector<uint32_t> slots_;
  uint32_t shared_ = 0;
};

// What a management call (Remove, Clear, Pin, Unpin) did with the blocks it was given. Every key
// given is counted once in one of the four (Clear: every resident block of the tier).
struct ManageResult {
  uint64_t done = 0;       // blocks acted on (removed, held, hold ended)
  uint64_t not_found = 0;  // keys cached in no tier (Unpin: keys not held); skipped
  uint64_t busy = 0;       // kept: a copy pinned by a lease or a copy in flight (Clear: or held)
  uint64_t kept_for_children = 0;  // kept by the prefix rule: a cached block chains from it
};

class Cache {
 public:
  // Validates options (messages name the field) and builds the tiers. kUnimplemented when
  // backend == kCuda and CUDA is not available.
  static absl::StatusOr<std::unique_ptr<Cache>> Create(const Options& options);
  ~Cache();
  Cache(const Cache&) = delete;
  Cache& operator=(const Cache&) = delete;

  // The longest prefix of `keys` (a chain from the root) that is cached, with the tier of each
  // block; stops at the first block cached nowhere. Counts as an access for the policies.
  // O(prefix).
  absl::StatusOr<MatchResult> Match(std::span<const BlockKey> keys);

  // Reserves n >= 1 device slots, evicting unpinned blocks with the device policy. Blocks while
  // victims without a host copy are copied to the host (write-back). When slots are short, first
  // waits for every demotion in flight (device-to-host copies, host-to-disk write-backs) and tries
  // again, for as long as each failed try still evicted something (a try can only demote into
  // slots that were Ready when it started). kInvalidArgument for n == 0 or n > the device tier's
  // capacity; kResourceExhausted when too few slots are free or evictable (nothing is reserved).
  absl::StatusOr<DeviceLease> AllocateDevice(uint32_t n);

  // AllocateDevice(n) for a sequence whose cached prefix `match` reports (Match of the same keys):
  // the matched blocks still Ready on the device, from the first, are shared at once (lease slot i
  // becomes the block's slot, pinned, as Load would make it) before any slot is taken, so making
  // room for the rest cannot evict them; the other n - (those) slots are new. Load(match, lease)
  // then keeps them. Without it, a device nearly full of the very prefix to be reused evicts that
  // prefix to make room for the whole sequence. Same errors as AllocateDevice(n), and
  // kInvalidArgument when match.size() > n.
  absl::StatusOr<DeviceLease> AllocateDevice(const MatchResult& match, uint32_t n);

  // Adds n >= 1 slots at the end of `lease` (a sequence that grew). Same errors as AllocateDevice.
  absl::Status Grow(DeviceLease& lease, uint32_t n);

  // Brings the blocks of `match` into lease slots [0, match.size()): a block already on the device
  // is shared (lease slot i becomes its slot, pinned), a block on the host is copied into lease
  // slot i asynchronously. Stops at the first block no longer cached (see Transfer::blocks()).
  // Positions AllocateDevice(match, n) already shared are kept. Never waits for a copy.
  // kFailedPrecondition if the lease is empty/released/foreign or already loaded at those
  // positions; kInvalidArgument if match.size() > lease.size() or a position shared at allocation
  // holds another key than the match's.
  // Read-only: lease slots [0, Transfer::blocks()) hold cached blocks, the same device memory that
  // every other request loading those keys reads (and a copied block is published once it lands).
  // The engine must never write into them (nor into slots it has committed): kvtier cannot see such
  // a write, and every later request would load the changed bytes. Only if the Transfer failed are
  // the copied slots the engine's again, to recompute (never the DeviceLease::shared() ones). The
  // Python module refuses such writes.
  absl::StatusOr<Transfer> Load(const MatchResult& match, DeviceLease& lease);

  // Publishes lease slots [0, keys.size()) under `keys` (a chain from the root: keys[i-1] is the
  // parent of keys[i]). Slots that already hold their key (shared by Load, or committed before)
  // are skipped; a key cached only below the device (say, after a failed Load was recomputed)
  // gains this slot as its device copy. A key already on the device from elsewhere (another
  // request computed it too, or the engine recomputed a block it could have loaded) keeps that
  // copy: this lease's slot stays the lease's, unpublished, and the rest of the chain is published
  // under the existing block (CacheStats::blocks_commit_shared counts them). The bytes must be
  // complete in device memory when called. All or nothing: kInvalidArgument if keys.size() >
  // lease.size(), a key repeats, or a key contradicts the cached chain (same key, other parent),
  // kFailedPrecondition for a bad lease.
  absl::Status Commit(std::span<const BlockKey> keys, DeviceLease& lease);

  // Returns the lease's uncommitted slots and unpins its blocks; `lease` becomes empty.
  // kFailedPrecondition for an empty lease (e.g. released twice) or one of another cache.
  absl::Status Release(DeviceLease& lease);

  // Names the tenant whose request `lease` serves (Options.host/disk.tenant_shares): the blocks
  // its Commit and Load add to the cache are that tenant's, in every tier, for as long as they are
  // cached, and count against its shares. A lease names the default tenant until this is called;
  // "" names it again. Blocks recovered at a restart are the default tenant's. kInvalidArgument
  // for a name that is in no tier's tenant_shares; kFailedPrecondition for an empty lease or one
  // of another cache. O(1).
  absl::Status SetTenant(DeviceLease& lease, absl::string_view tenant);

  // Passes the engine's importance score of each cached block to the policies of the tiers holding
  // it (EvictionPolicy::OnHint): request priority, accumulated attention. Keys not cached are
  // skipped. kInvalidArgument if the spans differ in length. O(keys).
  absl::Status Hint(std::span<const BlockKey> keys, std::span<const double> scores);

  // Hint for a while (TensorRT-LLM's KvCacheRetentionConfig: a priority for a token range that
  // reverts after a duration): as Hint, and once `duration` has passed each block's score reverts
  // to its policies' default (they get EvictionPolicy::OnHint with a NaN score: priority goes back
  // to its `default` level; h2o, whose scores are attention masses, keeps them). Only the tiers
  // holding a block now get the score. A later Hint of a key (timed or not) replaces the pending
  // revert. Expiry is lazy, checked under the cache's lock before a victim is chosen and on these
  // management calls: O(expired), no thread. kInvalidArgument if the spans differ in length or
  // duration is not in (0, 24 h]. O(keys).
  absl::Status Hint(std::span<const BlockKey> keys, std::span<const double> scores,
                    absl::Duration duration);

  // ---- Management ----

  // Drops the blocks of `keys` from every tier they are in (device, host, disk; not from the
  // remote store, which other caches share). Keys may come in any order; blocks are dropped leaves
  // first, and a block is dropped whole or not at all:
  //  - one that another cached block chains from (a child not in `keys`, or one kept below) is
  //    kept, since dropping it would orphan that child (prefix rule): kept_for_children;
  //  - one with a copy pinned by a lease or a copy in flight is skipped: busy. Call again once the
  //    lease is released or the Transfer finished.
  // A block held by Pin is dropped (its hold ends). Keys cached nowhere count as not_found.
  // Emits a kRemoved event per residency dropped. The disk slots are freed, not overwritten: a
  // warm restart after a crash (no manifest) may find their blocks again. kInvalidArgument if a key
  // is the root key (nothing is dropped). O(keys).
  absl::StatusOr<ManageResult> Remove(std::span<const BlockKey> keys);

  // Drops every block of `tier` but those in use: pinned by a lease, being copied, or held by Pin
  // (busy). Blocks with a copy in another tier lose only this one. A block whose only copy is in
  // `tier` and that a cached block chains from is kept (prefix rule: kept_for_children), unless
  // its children go too (leaves first): a chain that lives only in `tier` goes whole. Nothing is
  // copied down first. Emits one kAllCleared event for the tier, then a kStored event for each
  // block it kept. kInvalidArgument for kRemote (shared with other caches) or a value outside the
  // enum. O(slots of the tier).
  absl::StatusOr<ManageResult> Clear(Tier tier);

  // Holds the cached blocks of `keys`: none of them is evicted from any tier it is or comes to be
  // in until Unpin(keys) or `duration` has passed (then it is evictable again, lazily: see the
  // timed Hint). Separate from the pins of leases and copies, and unaffected by them; pinning again
  // replaces the deadline. Remove still drops a held block; Clear keeps it. A held block's
  // ancestors stay cached (prefix rule) but may move down the tiers: hold the whole chain to keep
  // it where it is. Holding more blocks than a tier has slots makes allocations there fail with
  // kResourceExhausted. done: blocks held; not_found: keys cached nowhere (skipped).
  // kInvalidArgument if duration is not in (0, 24 h] or a key is the root key. O(keys); while
  // blocks are held, a victim search may walk past them (CacheStats::index_work).
  absl::StatusOr<ManageResult> Pin(std::span<const BlockKey> keys, absl::Duration duration);
  // Ends the holds of `keys`. done: holds ended; not_found: keys not held (never, expired, or
  // dropped). O(keys).
  absl::StatusOr<ManageResult> Unpin(std::span<const BlockKey> keys);

  // Brings the cached blocks of the chain `keys` (from the root, as for Match) that are only on
  // disk, or only in the remote store, up to the host tier, asynchronously and without a device
  // lease (SGLang HiCache's prefetch): a scheduler calls it for a queued request so that its Load
  // later copies from the host. Blocks on the device or the host already are left as they are.
  // Stops at the first block cached nowhere (or not in the store), still being written, or for
  // which no host slot can be freed. The store is asked as Match does (within
  // Options.remote.match_budget_us), without the lock. The returned Transfer has no layers
  // (WaitLayer and LayerReady answer kOutOfRange): blocks() is how many blocks of the chain are
  // on the host or above once it finishes (fewer if a read fails), blocks_promoted() how many
  // reads it started; Wait()/Poll()/status() as for Load. A failed read leaves that block where
  // it was, or drops it if it failed to verify (as Load does); status() reports the first error.
  // The blocks are not pinned once read: Pin them to keep them on the host until loaded.
  // kFailedPrecondition without a host tier; kInvalidArgument if a key is the root key.
  // O(keys) under the lock.
  absl::StatusOr<Transfer> Prefetch(std::span<const BlockKey> keys);

  // KV events (kvtier/events.h): removes and returns the oldest min(max_events, queued) events,
  // oldest first, for the engine to forward to its KV-aware router. Empty when
  // Options.events.capacity is 0. Call it often enough that the queue does not fill (lost events
  // count in CacheStats::events_dropped and show as gaps in KvEvent::seq). O(events returned).
  std::vector<KvEvent> TakeEvents(size_t max_events = SIZE_MAX);

  CacheStats Stats() const;

  // For CUDA graphs: the device address of the cache's layer counters, one uint32_t per layer
  // (up to 1024), fixed for the cache's life; counter l holds the sequence() of the last Load
  // whose layer l is copied. kUnimplemented on a device without them (emulated, metadata-only).
  absl::StatusOr<void*> GraphLayerCounters() const;
  const Options& options() const;

  // Verifies every internal invariant (capacity, pins, prefix rule, slot ownership); kInternal
  // naming the first one broken. O(blocks). For tests and debugging.
  absl::Status CheckInvariants() const;

  // The implementation (lib/cache_core.h): opaque to users.
  class Core;

 private:
  friend class DeviceLease;
  explicit Cache(std::unique_ptr<Core> core);
  void ReleaseLease(uint64_t id);  // for ~DeviceLease: never fails
  std::unique_ptr<Core> core_;
};

}  // namespace kvtier

#endif  // KVTIER_CACHE_H_
