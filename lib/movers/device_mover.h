// DeviceMover: copies blocks between device slots and host slots on the device's streams, layer by
// layer, and reports each copy's outcome to the Index from the stream's callback:
//  - promotions (Load): host to device; a block below the host is first read into its host slot
//    by the StorageMover, and its device copies wait for that read alone;
//  - demotions (eviction write-back, write-through, flush): device to host, each after the write
//    still reading its host slot (StorageMover::PendingWriteLocked).
// Copies of one call are enqueued contiguously on their stream while the index lock is held;
// enqueueing never waits.
//
// Thread safety: *Locked methods run under the index lock (they assert it). Callbacks run on the
// device's threads and take it.
// Ownership: borrows the Index, Device, HostPool and StorageMover, which outlive it.
#ifndef KVTIER_LIB_MOVERS_DEVICE_MOVER_H_
#define KVTIER_LIB_MOVERS_DEVICE_MOVER_H_

#include <atomic>
#include <cstdint>
#include <memory>
#include <optional>
#include <span>
#include <vector>

#include "absl/status/statusor.h"
#include "kvtier/layout.h"
#include "kvtier/stats.h"
#include "lib/codec/codec.h"
#include "lib/common/histogram.h"
#include "lib/index/index.h"
#include "lib/movers/storage_mover.h"
#include "lib/tiers/host_pool.h"
#include "lib/transfer/device.h"
#include "lib/transfer/transfer_state.h"

namespace kvtier::internal {

class DeviceMover {
 public:
  // `metadata_only`: no bytes move; every copy completes when enqueued. `codec`
  // (Options.host.codec): host slots hold encoded blocks; the device encodes into them
  // (Device::EncodeToHost) and decodes from them layer by layer (DecodeFromHost), so the bus
  // carries the encoded form. The 16-byte header is written by the host once a block's layers are
  // in, and checked by the host before a Load's layer 0 is decoded.
  DeviceMover(const BlockLayout& layout, bool metadata_only, Index& index, Device& device,
              HostPool& host, StorageMover& storage, std::optional<BlockCodec> codec = {});
  DeviceMover(const DeviceMover&) = delete;
  DeviceMover& operator=(const DeviceMover&) = delete;

  // Enqueues the device-to-host copies of `demotions` and a callback that reports them to the
  // Index (and starts the writes their arrival decides). Returns the event to wait on before the
  // write-back device slots may be reused (null when nothing was copied). On failure they are
  // reported failed.
  absl::StatusOr<std::shared_ptr<DeviceEvent>> EnqueueDemotionsLocked(std::vector<Move> demotions);

  // Carries out a Load's plan: reads from below, then every layer's host-to-device copies, one
  // event per layer; the last layer's callback reports the promotions. Each layer then writes the
  // Load's sequence number into its device layer counter (graph-stable waits), also when nothing
  // is copied. `load_start`: when Load()
  // was called (MonotonicNanos), for load_latency.
  absl::StatusOr<std::shared_ptr<TransferState>> StartLoadLocked(LoadPlan plan,
                                                                 uint64_t load_start);

  // Connector stores: engine blocks copied into host slots (Index::PlanEngineStoreLocked's
  // moves), layer by layer as the engine's forward pass produces them. `state` is the handle's.
  struct StoreJob {
    std::vector<Move> moves;
    std::shared_ptr<TransferState> state;
    uint64_t start = 0;       // MonotonicNanos at Store(), for demotion_latency
    uint32_t next_layer = 0;  // layers [0, next_layer) are enqueued (guarded by the index lock)
    bool ended = false;       // every layer enqueued, abandoned, or failed
  };
  std::shared_ptr<StoreJob> BeginStoreLocked(std::vector<Move> moves, uint64_t start);
  // Enqueues layers [job.next_layer, end) of every block, after `after` (the engine's event, when
  // given) completes; the last layer's callback reports the moves to the Index. On an enqueue
  // failure the job ends failed (its moves reported failed).
  absl::Status SaveLayersLocked(StoreJob& job, uint32_t end, std::shared_ptr<DeviceEvent> after);
  // Ends a job whose layers were not all enqueued: its moves fail (after the copies already
  // enqueued), the handle finishes with kCancelled.
  void AbandonStoreLocked(StoreJob& job);

  // Waits for every device-to-host copy enqueued so far (and the index updates they make).
  void DrainDeviceToHost();
  // Bytes copied each way, loads in flight, load and demotion latencies.
  void FillStats(CacheStats* stats) const;

 private:
  struct SegmentAt {
    Segment segment;
    uint64_t host_offset;  // of this segment inside a host slot
  };
  struct LoadContext {
    uint32_t blocks = 0;                 // the plan's: lease positions [0, blocks)
    std::vector<Move> promotions;        // in position order
    std::vector<uint32_t> lossy_shared;  // LoadPlan::lossy_shared
    // Set before read i's event completes (its device copies wait for it), read after the last
    // layer: promotion i's read from below failed; ... because its copy failed to verify.
    std::vector<uint8_t> read_failed;
    std::vector<uint8_t> source_lost;
    std::atomic<bool> copy_failed{false};  // a layer's host-to-device copies failed
  };
  // Lease positions [0, result) that hold their blocks once a Load ends: up to the first promotion
  // whose read failed, or up to the first promotion at all if a device copy failed (a failed copy
  // batch names no block).
  static uint32_t BlocksLoaded(const LoadContext& ctx);

  // Reports a store's moves to the Index (all as `ok`), starts the writes they decide.
  void FinishStoreLocked(std::span<const Move> moves, bool ok);
  // Regions of layer `layer` of one block between a device slot and a raw host block (a host slot,
  // or a staging buffer with a codec).
  void AppendLayerRegions(uint32_t layer, SlotId device_slot, std::byte* host_block, bool to_device,
                          std::vector<CopyRegion>* out) const;
  // With a codec: the jobs of layer `layer` of one block, between device slot `device_slot` and
  // its encoded host slot (Device::EncodeToHost when `encode`, else DecodeFromHost).
  void AppendLayerJobs(uint32_t layer, SlotId device_slot, std::byte* host_slot, bool encode,
                       std::vector<codec_math::CodecSegmentJob>* out) const;
  // With a codec: writes the header of each move's encoded host slot (after its layers are in).
  void WriteHeaders(std::span<const Move> moves);
  // With a codec: refuses each promotion whose host slot's header is not this codec's (another
  // codec, version, group size or element type): a failed read, its copy below dropped.
  void CheckHeaders(LoadContext& ctx, TransferState& state);

  const uint64_t block_bytes_;
  const bool metadata_only_;
  Index& index_;
  Device& device_;
  HostPool& host_;
  StorageMover& storage_;
  std::vector<std::vector<SegmentAt>> layers_;
  const std::optional<BlockCodec> codec_;
  std::atomic<uint64_t> codec_lossy_loaded_{0};  // blocks promoted through the codec
  std::atomic<uint64_t> codec_refused_{0};       // promotions refused: another codec's block
  uint64_t bytes_h2d_ ABSL_GUARDED_BY(index_.mu()) = 0;
  uint64_t bytes_d2h_ ABSL_GUARDED_BY(index_.mu()) = 0;
  uint64_t in_flight_ ABSL_GUARDED_BY(index_.mu()) = 0;
  uint32_t load_sequence_ ABSL_GUARDED_BY(index_.mu()) = 0;  // the last Load's number
  uint64_t loads_failed_ ABSL_GUARDED_BY(index_.mu()) = 0;
  uint64_t loads_partial_ ABSL_GUARDED_BY(index_.mu()) = 0;
  uint64_t blocks_load_lost_ ABSL_GUARDED_BY(index_.mu()) = 0;
  AtomicHistogram load_latency_;  // recorded on copy threads, without a lock
  AtomicHistogram demotion_latency_;
};

}  // namespace kvtier::internal

#endif  // KVTIER_LIB_MOVERS_DEVICE_MOVER_H_
