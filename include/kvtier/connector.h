// Connector: kvtier for an engine that keeps its own GPU block pool and prefix cache (vLLM's KV
// connector, SGLang HiCache, TensorRT-LLM's connector). The engine's device is its own: kvtier
// tracks no device residency and evicts nothing there. Its tiers are host, disk and remote; it
// copies between them and the engine's blocks, named by the engine's block ids (block id = slot
// of Options.layout, which describes the engine's KV tensors as for a Cache).
//
// The lifecycle (see docs/integration.md, "Connector mode"), per request, keys being the request's
// block keys (a chain from the root) and `first` the blocks the engine's own prefix cache holds:
//   scheduler:  found = connector.Lookup(keys, first)          // cached past the engine's hits
//               ... the engine allocates found.blocks blocks of its own: dst ...
//   worker:     xfer = connector.Load(keys[0, first + n), first, dst, request_id)
//               ... xfer.WaitLayer(l) (or LayerReady(l) on the CUDA stream) before layer l ...
//               store = connector.BeginStore(keys, first, src, request_id)  // the new blocks
//               ... store.SaveLayer(l, event) as the forward pass writes layer l ...
//   each step:  connector.TakeFinished()   // loads and stores that ended: their blocks are free
//
// The engine's blocks: a Load writes dst blocks and a Store reads src blocks until they end; the
// engine must not write a src block nor read or reuse a dst block before (vLLM holds a request's
// blocks until get_finished reports it). kvtier refuses a Load into a block that a copy in flight
// reads or writes, and a Store from a block a Load in flight writes (kFailedPrecondition); it
// cannot see the engine's own writes.
//
// Thread safety: every Connector method may be called from any thread concurrently; a Transfer or
// StoreHandle is used by one thread at a time. Ownership: handles must be destroyed before the
// Connector (an engine that polls TakeFinished keeps them, by request, until reported). Errors:
// absl::Status, never exceptions or aborts on user error; a rejected call changes nothing and
// leaves the Connector usable.
#ifndef KVTIER_CONNECTOR_H_
#define KVTIER_CONNECTOR_H_

#include <cstddef>
#include <cstdint>
#include <memory>
#include <span>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "kvtier/block_key.h"
#include "kvtier/cache.h"
#include "kvtier/events.h"
#include "kvtier/options.h"
#include "kvtier/stats.h"
#include "kvtier/tier.h"
#include "kvtier/transfer.h"

namespace kvtier {

namespace internal {
struct ConnectorStore;
class ConnectorImpl;
}  // namespace internal

class Connector;

struct LookupOptions {
  // Counts as an access for the policies and the hit statistics. False only looks (a scheduler
  // asking again about a request it has not admitted yet).
  bool touch = true;
  // With a remote tier: true waits for the store's answer (within remote.match_budget_us); false
  // never waits: the store is asked in the background and LookupResult::pending says the answer
  // may grow, so the scheduler asks again next step (vLLM: get_num_new_matched_tokens -> None).
  bool wait_for_store = true;
};

struct LookupResult {
  // Keys [first, first + blocks) are cached: in this process's tiers, or past them in the store.
  uint32_t blocks = 0;
  std::vector<Tier> tiers;  // the tier of each of them (kHost, kDisk, kRemote)
  // The store's answer for the keys past the local ones is not in yet: `blocks` counts the local
  // ones only. Ask again.
  bool pending = false;
};

// A load or store that ended, reported once by Connector::TakeFinished().
struct Finished {
  enum class Kind : uint8_t { kLoad, kStore };
  uint64_t request_id = 0;
  Kind kind = Kind::kLoad;
  absl::Status status;  // OK: every block moved. Else a load's blocks past blocks_loaded are
                        // misses to recompute; a store's blocks were not stored. Either way the
                        // blocks are free.
  uint32_t blocks = 0;  // blocks it moved (or tried to)
  // A load: its dst blocks [0, blocks_loaded) hold their keys' bytes (== blocks when OK); dst
  // blocks [blocks_loaded, blocks) are the "blocks with load errors" (vLLM
  // get_block_ids_with_load_errors) the engine recomputes. A store: blocks if OK, else 0.
  uint32_t blocks_loaded = 0;
};

// One Connector::Store or BeginStore: copies of engine blocks into host slots (and from there to
// the disk and remote tiers, as the options say).
//
// Ownership: move-only. Destroying it waits for the copies enqueued so far; if layers were left
// unsaved, the store is abandoned first (its blocks not stored, status kCancelled).
class StoreHandle {
 public:
  StoreHandle() = default;
  StoreHandle(StoreHandle&& other) noexcept;
  StoreHandle& operator=(StoreHandle&& other) noexcept;
  StoreHandle(const StoreHandle&) = delete;
  StoreHandle& operator=(const StoreHandle&) = delete;
  ~StoreHandle();

  explicit operator bool() const { return store_ != nullptr; }
  // Blocks copied: the keys past `first` that were not cached here already, as far as host room
  // allowed (CacheStats::blocks_store_skipped counts the others). 0 for an empty handle.
  uint32_t blocks() const;
  // Keys past `first` not stored for want of host room (every host slot pinned or in flight).
  uint32_t unstored() const;

  // Layer-wise save (after BeginStore): enqueues the copies of layer `layer` of every block, once
  // `ready_event` (the engine's cudaEvent_t recorded after its forward pass wrote the layer;
  // nullptr: the bytes are complete now) has completed. Layers in order, each once: layer must be
  // the next unsaved one (kFailedPrecondition otherwise; kOutOfRange past the last). The copies of
  // the last layer report the store to the cache. On the emulated device a non-null event is
  // kInvalidArgument (it has no native events). A store with nothing to copy
  // (blocks() == 0) accepts every layer, in any order, and is done from the start. On CUDA the
  // stream waits on `ready_event` shortly after this call returns (kvtier's issuer thread): keep
  // the event alive until Wait() returns (re-recording it sooner may delay the copies, no more).
  absl::Status SaveLayer(uint32_t layer, void* ready_event = nullptr);
  // SaveLayer of every layer not saved yet.
  absl::Status SaveAll(void* ready_event = nullptr);
  // The layers saved (enqueued) so far.
  uint32_t layers_saved() const;

  // Blocks until every layer is copied and the cache recorded it (kFailedPrecondition if layers
  // are still unsaved, since nothing would finish the store); returns the outcome.
  absl::Status Wait();
  // True once finished; never blocks.
  bool Poll() const;
  // The outcome: kUnavailable while running.
  absl::Status status() const;

 private:
  friend class Connector;
  StoreHandle(Connector* connector, std::shared_ptr<internal::ConnectorStore> store)
      : connector_(connector), store_(std::move(store)) {}
  void Reset();

  Connector* connector_ = nullptr;
  std::shared_ptr<internal::ConnectorStore> store_;
};

class Connector {
 public:
  // As Cache::Create, for an engine-owned device: Options.layout describes the engine's KV
  // tensors (num_slots = its block pool); Options.device is not used (kInvalidArgument if
  // device.capacity_slots is set). The host tier is required (kInvalidArgument without it).
  static absl::StatusOr<std::unique_ptr<Connector>> Create(const Options& options);
  ~Connector();
  Connector(const Connector&) = delete;
  Connector& operator=(const Connector&) = delete;

  // How many blocks past the engine's `first` hits (keys[0, first)) are cached, and where. `keys`
  // is a chain from the root. O(keys) under the index lock; with a remote tier and blocks past the
  // local prefix, a store probe (see LookupOptions). kInvalidArgument for first > keys.size() or a
  // root key.
  absl::StatusOr<LookupResult> Lookup(std::span<const BlockKey> keys, uint32_t first,
                                      LookupOptions options = {});

  // Copies the cached blocks keys[first, keys.size()) into the engine's blocks `dst_blocks` (one
  // each, in order), asynchronously, with per-layer readiness (Transfer::WaitLayer,
  // LayerReady). Keys [0, first) are the engine's hits (they need not be cached here). Stops at
  // the first block no longer cached: Transfer::blocks() says how many dst blocks get data; the
  // engine recomputes the rest. A failed copy, or a block whose read fails or does not verify,
  // fails the Transfer from that block on: dst blocks [0, Transfer::blocks_loaded()) hold data,
  // the others are misses (the dst blocks are the engine's again once it reports; a failed device
  // copy fails them all).
  // `request_id` (non-zero) makes TakeFinished report its end. kInvalidArgument: dst_blocks.size()
  // != keys.size() - first, a block id >= layout.num_slots or repeated, a key contradicting the
  // cached chain. kFailedPrecondition: a dst block that a copy in flight reads or writes.
  absl::StatusOr<Transfer> Load(std::span<const BlockKey> keys, uint32_t first,
                                std::span<const uint32_t> dst_blocks, uint64_t request_id = 0);

  // Stores the engine's blocks `src_blocks` (src_blocks[i] holds keys[first + i]): keys cached
  // here already are skipped, the others are copied into host slots (evicting with the host
  // policy) once `ready_event` (a cudaEvent_t after which the bytes are complete; nullptr: they
  // are now) has completed, and from there go down the tiers as a Cache's do. Keys [0, first) are
  // the chain's prefix (stored earlier, or the engine's own). Returns at once; the engine must not
  // write the src blocks until the handle (or TakeFinished) reports the end. Errors as Load, and
  // kFailedPrecondition for a src block a Load in flight writes.
  absl::StatusOr<StoreHandle> Store(std::span<const BlockKey> keys, uint32_t first,
                                    std::span<const uint32_t> src_blocks,
                                    void* ready_event = nullptr, uint64_t request_id = 0);
  // Store, layer by layer: reserves the host slots now; the engine then calls
  // StoreHandle::SaveLayer(l, event) as its forward pass writes each layer (vLLM save_kv_layer).
  absl::StatusOr<StoreHandle> BeginStore(std::span<const BlockKey> keys, uint32_t first,
                                         std::span<const uint32_t> src_blocks,
                                         uint64_t request_id = 0);

  // The loads and stores with a request id that ended since the last call, each reported once
  // (vLLM get_finished: a request is finished receiving or sending once all of its are). O(loads
  // and stores in flight).
  std::vector<Finished> TakeFinished();

  // As Cache::Hint, both forms.
  absl::Status Hint(std::span<const BlockKey> keys, std::span<const double> scores);
  absl::Status Hint(std::span<const BlockKey> keys, std::span<const double> scores,
                    absl::Duration duration);
  // The management calls, as the Cache's (kvtier/cache.h) over the connector's tiers (host, disk):
  // Clear(Tier::kDevice) is kInvalidArgument (the engine's), Prefetch brings disk and store
  // blocks up to the host for a later Load.
  absl::StatusOr<ManageResult> Remove(std::span<const BlockKey> keys);
  absl::StatusOr<ManageResult> Clear(Tier tier);
  absl::StatusOr<ManageResult> Pin(std::span<const BlockKey> keys, absl::Duration duration);
  absl::StatusOr<ManageResult> Unpin(std::span<const BlockKey> keys);
  absl::StatusOr<Transfer> Prefetch(std::span<const BlockKey> keys);
  // KV events (Options.events), as Cache::TakeEvents: the host and disk tiers' (the engine's
  // device events are its own).
  std::vector<KvEvent> TakeEvents(size_t max_events = SIZE_MAX);
  CacheStats Stats() const;
  const Options& options() const;
  // Cache::CheckInvariants, plus: no engine block is marked busy without a copy in flight (when
  // none is in flight).
  absl::Status CheckInvariants() const;

  // Tests: engine blocks marked busy by copies in flight.
  size_t engine_blocks_busy() const;

 private:
  friend class StoreHandle;
  friend class internal::ConnectorImpl;  // makes them (lib/connector.cc)
  explicit Connector(std::unique_ptr<internal::ConnectorImpl> impl);
  std::unique_ptr<internal::ConnectorImpl> impl_;
};

}  // namespace kvtier

#endif  // KVTIER_CONNECTOR_H_
