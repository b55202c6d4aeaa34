// Cache: the public API over the index (state), the host pool (bytes) and the device (copies).
//
// Every call takes the index lock once, lets the Index make the transition, and enqueues the copies
// that transition asks for while still holding it, so that the copies of one call are contiguous on
// their stream (a callback's error window is that call's copies alone). Enqueueing never waits. The
// only waits (write-back before AllocateDevice returns, Transfer::Wait) happen after unlocking.
#include "kvtier/cache.h"

#include <algorithm>
#include <atomic>
#include <cassert>
#include <string>
#include <type_traits>
#include <utility>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "lib/cache_factory.h"
#include "lib/common/histogram.h"
#include "lib/common/status_macros.h"
#include "lib/index/index.h"
#include "lib/tiers/disk_tier.h"
#include "lib/tiers/host_pool.h"
#include "lib/tiers/remote_tier.h"
#include "lib/tiers/storage_tier.h"
#include "lib/transfer/device.h"
#include "lib/transfer/emulated_device.h"
#include "lib/transfer/host_event.h"
#include "lib/transfer/host_slot_hazards.h"
#include "lib/transfer/transfer_state.h"

#if KVTIER_HAVE_CUDA
#include "cuda/cuda_device.h"
#endif

namespace kvtier {

namespace internal {

class CacheCore {
 public:
  CacheCore(const Options& options, std::unique_ptr<Device> device, std::unique_ptr<HostPool> host,
            std::unique_ptr<DiskTier> disk, std::unique_ptr<RemoteTier> remote, IndexConfig config)
      : options_(options),
        metadata_only_(options.backend == DeviceBackend::kMetadataOnly),
        device_(std::move(device)),
        host_(std::move(host)),
        disk_(std::move(disk)),
        remote_(std::move(remote)),
        publish_on_demotion_(remote_ != nullptr &&
                             options.remote.publish == RemotePublish::kWriteThrough),
        index_(std::move(config)),
        hazards_(index_.capacity(Tier::kHost)) {
    // Where each layer's segments sit inside a contiguous host slot.
    uint64_t offset = 0;
    for (const LayerLayout& layer : options_.layout.layers) {
      std::vector<SegmentAt> segs;
      for (const Segment& g : layer.segments) {
        segs.push_back({g, offset});
        offset += g.bytes_per_block;
      }
      layers_.push_back(std::move(segs));
    }
  }

  ~CacheCore() {
    // Callbacks reference this object: drain the disk and the remote tier (their reads feed device
    // streams), the device, then both again (device callbacks may have queued remote writes).
    DrainStorage();
    device_->Synchronize().IgnoreError();
    DrainStorage();
    if (disk_ != nullptr && options_.disk.flush_on_close) Flush();
    MutexLock lock(&index_.mu());
    assert(index_.live_leases_locked() == 0 && "destroy every DeviceLease before its Cache");
    if (disk_ != nullptr) {
      // Clean shutdown: the manifest lets the next Create() skip the trailer scan.
      std::vector<StoredBlock> live;
      for (const RestoredBlock& b : index_.ListLocked(Tier::kDisk)) {
        live.push_back({b.slot, b.key, b.parent});
      }
      disk_->Close(live).IgnoreError();  // best effort: without it the next start scans
    }
  }

  void DrainStorage() {
    if (disk_ != nullptr) disk_->Drain();
    if (remote_ != nullptr) remote_->Drain();
  }

  // Waits for every device-to-host copy enqueued so far (and the index updates they make).
  void DrainDeviceToHost() {
    auto event = device_->RecordEvent(Stream::kD2H);
    if (event.ok()) (*event)->Wait().IgnoreError();
  }

  // Waits for every demotion in flight: device-to-host copies (and the index updates they make),
  // remote publications, then host-to-disk write-backs, whichever call started them. Until a
  // write-back ends, its disk slot is Filling, so a full disk has no victim and the prefix rule
  // protects the parents above.
  void DrainDemotions() {
    DrainDeviceToHost();
    // Remote publications the copies just queued hold their host copies pinned until the payload
    // is sent: a host full of them has no victim for the next attempt either.
    if (remote_ != nullptr) remote_->Drain();
    std::vector<std::shared_ptr<HostEvent>> writes;
    {
      MutexLock lock(&index_.mu());
      writes = hazards_.InFlight();
    }
    for (const std::shared_ptr<HostEvent>& w : writes) w->Wait().IgnoreError();
  }

  // After an allocation came up short: whether to try again, having waited for every demotion in
  // flight. A single attempt can only demote as far as the slots it finds Ready: the host and disk
  // slots it takes for write-backs stay Filling (not evictable) until it has finished, so with
  // nothing pinned it can fail where the next attempt, starting from the written-back state,
  // succeeds. So: retry once after draining, and again for as long as the failed attempt evicted
  // something (each such attempt moves blocks down the tiers or drops them, a bounded amount),
  // never more than kMaxAllocationAttempts in all.
  bool RetryAllocation(int attempt, uint64_t evictions_before) {
    static constexpr int kMaxAllocationAttempts = 64;
    if (attempt + 1 >= kMaxAllocationAttempts) return false;
    bool progress = true;
    if (attempt > 0) {
      MutexLock lock(&index_.mu());
      progress = index_.EvictionsLocked() != evictions_before;
    }
    if (progress) DrainDemotions();
    return progress;
  }

  // Copies every block not yet on disk down to it, so the next start finds whole prefixes.
  void Flush() {
    std::shared_ptr<DeviceEvent> demoted;
    {
      MutexLock lock(&index_.mu());
      std::vector<Demotion> demotions = index_.FlushDeviceLocked();
      StartWriteBacksLocked();  // host room made by write-back
      if (!demotions.empty()) {
        auto event = EnqueueDemotionsLocked(std::move(demotions));
        if (event.ok()) demoted = *event;
      }
    }
    if (demoted != nullptr) demoted->Wait().IgnoreError();
    device_->Synchronize().IgnoreError();  // the demotions' callbacks made the host copies Ready
    {
      MutexLock lock(&index_.mu());
      index_.FlushHostLocked();
      StartWriteBacksLocked();
    }
    disk_->Drain();
  }

  // Warm restart: registers what the disk tier found in its directory.
  void Restore() {
    if (disk_ == nullptr) return;
    std::vector<RestoredBlock> blocks;
    for (const StoredBlock& b : disk_->recovered()) blocks.push_back({b.key, b.parent, b.slot});
    MutexLock lock(&index_.mu());
    restored_ = index_.RestoreLocked(Tier::kDisk, blocks);
    restore_dropped_ = blocks.size() - restored_;
  }

  // The Cache's methods use index_ itself rather than index(), so that clang's thread-safety
  // analysis sees that the lock they take (index_.mu()) is the one the *Locked calls require.
  friend class ::kvtier::Cache;

  Index& index() { return index_; }
  const Options& options() const { return options_; }
  Device& device() { return *device_; }

  // Regions of layer `layer` of one block between a device slot and a host slot.
  void AppendLayerRegions(uint32_t layer, SlotId device_slot, SlotId host_slot, bool to_device,
                          std::vector<CopyRegion>* out) const {
    std::byte* host = host_->slot_ptr(host_slot);
    for (const SegmentAt& s : layers_[layer]) {
      std::byte* dev =
          static_cast<std::byte*>(s.segment.base) + uint64_t{device_slot} * s.segment.stride_bytes;
      std::byte* h = host + s.host_offset;
      out->push_back(to_device ? CopyRegion{dev, h, s.segment.bytes_per_block}
                               : CopyRegion{h, dev, s.segment.bytes_per_block});
    }
  }

  // Enqueues the device-to-host copies of `demotions` and a callback that reports them to the
  // index. Returns the event to wait on before the write-back device slots may be reused.
  absl::StatusOr<std::shared_ptr<DeviceEvent>> EnqueueDemotionsLocked(
      std::vector<Demotion> demotions) ABSL_EXCLUSIVE_LOCKS_REQUIRED(index_.mu()) {
    const uint64_t bytes = demotions.size() * options_.layout.block_bytes();
    const uint64_t start = MonotonicNanos();
    if (metadata_only_) {
      for (const Demotion& d : demotions) index_.FinishDemotionLocked(d, true);
      bytes_d2h_ += bytes;
      demotion_latency_.RecordSince(start);
      return std::shared_ptr<DeviceEvent>();
    }
    std::vector<CopyRegion> regions;
    absl::Status s;
    for (const Demotion& d : demotions) {
      // A host slot whose previous block is still being written to disk: wait for that write.
      if (s.ok() && hazards_.Busy(d.host_slot))
        s = device_->WaitEvent(Stream::kD2H, hazards_.Pending(d.host_slot));
      for (uint32_t l = 0; l < layers_.size(); ++l) {
        AppendLayerRegions(l, d.device_slot, d.host_slot, /*to_device=*/false, &regions);
      }
    }
    if (s.ok()) s = device_->Copy(Stream::kD2H, regions);
    // The callback first, then the event: whoever waits on the event (AllocateDevice) finds the
    // index already updated.
    bool reported = false;
    if (s.ok()) {
      s = device_->AddCallback(Stream::kD2H, [this, demotions, start](absl::Status st) {
        std::vector<RemoteWrite> publish;
        {
          MutexLock lock(&index_.mu());
          for (const Demotion& d : demotions) {
            index_.FinishDemotionLocked(d, st.ok());
            if (st.ok() && publish_on_demotion_) {
              if (auto w = index_.PinHostCopyLocked(d.key)) publish.push_back(*w);
            }
          }
        }
        if (!publish.empty()) PublishPinned(std::move(publish));
        demotion_latency_.RecordSince(start);  // before the event: its waiters see the sample
      });
      reported = s.ok();
    }
    absl::StatusOr<std::shared_ptr<DeviceEvent>> event =
        s.ok() ? device_->RecordEvent(Stream::kD2H) : s;
    if (!reported) {  // the callback will not run: fail them now
      for (const Demotion& d : demotions) index_.FinishDemotionLocked(d, false);
      demotion_latency_.RecordSince(start);
      return s;
    }
    if (!event.ok()) return event.status();  // the callback still reports them
    bytes_d2h_ += bytes;
    return event;
  }

  // The storage-tier blocks of writes whose bytes are in host slots.
  template <typename W>
  std::vector<StorageTier::Block> FromHostSlots(const std::vector<W>& writes) const {
    std::vector<StorageTier::Block> blocks;
    blocks.reserve(writes.size());
    for (const W& w : writes) {
      StorageTier::Block b{.key = w.key, .parent = w.parent, .host = host_->slot_ptr(w.host_slot)};
      if constexpr (std::is_same_v<W, DiskWrite>) b.slot = w.disk_slot;
      blocks.push_back(b);
    }
    return blocks;
  }

  // Remote write-through: publishes host copies the index io-pinned, and unpins each once its
  // bytes are sent (the payload goes to the network from the host slot itself).
  void PublishPinned(std::vector<RemoteWrite> pinned) {
    auto unpin = [this, pinned](size_t j, const absl::Status&) {
      MutexLock lock(&index_.mu());
      index_.UnpinHostCopyLocked(pinned[j]);
    };
    for (const auto& [j, st] : remote_->WriteBlocks(FromHostSlots(pinned), unpin)) unpin(j, st);
  }

  // Starts the remote write-backs of host victims the last index call decided: each victim's slot
  // was handed on, and its next user waits (hazards_) until the victim's bytes are sent.
  void StartRemoteWritesLocked() ABSL_EXCLUSIVE_LOCKS_REQUIRED(index_.mu()) {
    std::vector<RemoteWrite> victims = index_.TakeRemoteWritesLocked();
    if (victims.empty() || remote_ == nullptr) return;
    std::vector<std::shared_ptr<HostEvent>> sent;
    for (const RemoteWrite& w : victims) {
      // A slot may also be being written to disk (the same bytes): its next user waits for both.
      sent.push_back(std::make_shared<HostEvent>());
      hazards_.Add(w.host_slot, sent.back());
    }
    auto done = [sent](size_t j, const absl::Status&) { sent[j]->Complete(); };
    for (const auto& [j, st] : remote_->WriteBlocks(FromHostSlots(victims), done)) done(j, st);
  }

  // Starts the host-to-disk (and host-to-remote) write-backs the last index call decided. Call
  // after every index call that may take host slots, before enqueueing anything that uses them.
  void StartWriteBacksLocked() ABSL_EXCLUSIVE_LOCKS_REQUIRED(index_.mu()) {
    StartDiskWritesLocked();
    StartRemoteWritesLocked();
  }

  void StartDiskWritesLocked() ABSL_EXCLUSIVE_LOCKS_REQUIRED(index_.mu()) {
    std::vector<DiskWrite> writes = index_.TakeDiskWritesLocked();
    if (writes.empty()) return;
    bytes_disk_written_ += writes.size() * options_.layout.block_bytes();
    if (disk_ == nullptr) {  // metadata-only: the write is done when decided
      for (const DiskWrite& w : writes) index_.FinishDiskWriteLocked(w, true);
      return;
    }
    std::vector<std::shared_ptr<HostEvent>> written;
    for (const DiskWrite& w : writes) {
      written.push_back(std::make_shared<HostEvent>());
      hazards_.Add(w.host_slot, written.back());
    }
    const StorageTier::NotStarted not_started = disk_->WriteBlocks(
        FromHostSlots(writes), [this, writes, written](size_t j, const absl::Status& st) {
          {
            MutexLock lock(&index_.mu());
            index_.FinishDiskWriteLocked(writes[j], st.ok());
          }
          written[j]->Complete();
        });
    for (const auto& [j, st] : not_started) {  // under the lock already
      index_.FinishDiskWriteLocked(writes[j], false);
      written[j]->Complete();
    }
  }

  // `load_start`: when Load() was called (MonotonicNanos), for load_latency.
  absl::StatusOr<std::shared_ptr<TransferState>> StartLoadLocked(LoadPlan plan, uint64_t load_start)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(index_.mu()) {
    StartWriteBacksLocked();  // the plan may have evicted host blocks to disk
    const auto layers = static_cast<uint32_t>(layers_.size());
    auto state = std::make_shared<TransferState>(
        plan.blocks, static_cast<uint32_t>(plan.promotions.size()), layers);
    if (plan.promotions.empty() || metadata_only_) {  // nothing to copy, or nothing to wait for
      for (const Promotion& p : plan.promotions) {
        index_.FinishPromotionLocked(p, true);
        if (p.source == Tier::kDisk) bytes_disk_read_ += options_.layout.block_bytes();
      }
      bytes_h2d_ += plan.promotions.size() * options_.layout.block_bytes();
      load_latency_.RecordSince(load_start);
      state->FinishNow();
      return state;
    }
    auto ctx = std::make_shared<LoadContext>();
    ctx->promotions = std::move(plan.promotions);
    ctx->source_lost.assign(ctx->promotions.size(), 0);
    const size_t n = ctx->promotions.size();
    // Blocks in a storage tier (disk, remote) are read into their host slots first; block i's
    // device copies wait for read i alone, so they overlap later reads.
    std::vector<std::shared_ptr<HostEvent>> read_done(n);
    StartStorageReadsLocked(ctx, state, &read_done);
    absl::Status s;
    std::vector<CopyRegion> regions;
    for (uint32_t l = 0; l < layers && s.ok(); ++l) {
      regions.clear();
      for (size_t i = 0; i < n && s.ok(); ++i) {
        const Promotion& p = ctx->promotions[i];
        if (l == 0 && read_done[i] != nullptr) {
          if (!regions.empty()) s = device_->Copy(Stream::kH2D, regions);
          regions.clear();
          if (s.ok()) s = device_->WaitEvent(Stream::kH2D, read_done[i]);
        }
        AppendLayerRegions(l, p.device_slot, p.host_slot, /*to_device=*/true, &regions);
      }
      if (s.ok() && !regions.empty()) s = device_->Copy(Stream::kH2D, regions);
      absl::StatusOr<std::shared_ptr<DeviceEvent>> event =
          s.ok() ? device_->RecordEvent(Stream::kH2D) : s;
      if (!event.ok()) {
        s = event.status();
        break;
      }
      state->layer_events.push_back(*event);
      const bool last = l + 1 == layers;
      s = device_->AddCallback(Stream::kH2D, [this, state, ctx, last, load_start](absl::Status st) {
        state->LayerDone(st);
        if (!last) return;
        const absl::Status outcome = state->first_error();
        {
          MutexLock lock(&index_.mu());
          for (size_t i = 0; i < ctx->promotions.size(); ++i) {
            index_.FinishPromotionLocked(ctx->promotions[i], outcome.ok(),
                                         ctx->source_lost[i] != 0);
          }
          in_flight_--;
        }
        load_latency_.RecordSince(load_start);  // before Finish: a waiter's next Stats() has it
        state->Finish();
      });
    }
    if (!s.ok()) {
      // Enqueueing failed (the device is unusable). The last layer's callback, the one that reports
      // to the index, is the last thing enqueued, so it is not queued: report the failure now.
      // Disk reads already started complete into their (now freed) host slots' old owners: wait.
      for (const auto& r : read_done) {
        if (r != nullptr) r->Wait().IgnoreError();
      }
      for (const Promotion& p : ctx->promotions) index_.FinishPromotionLocked(p, false);
      return s;
    }
    bytes_h2d_ += n * options_.layout.block_bytes();
    in_flight_++;
    return state;
  }

  // Match's second half: how many of `keys` (past the local prefix) the store holds, within the
  // budget. Without the lock: it waits for the network.
  uint32_t MatchRemote(std::span<const BlockKey> keys) {
    if (remote_ == nullptr || keys.empty()) return 0;
    bool timed_out = false;
    const auto deadline =
        RemoteTier::Clock::now() + std::chrono::microseconds(options_.remote.match_budget_us);
    return remote_->ExistsPrefix(keys, deadline, &timed_out);
  }
  bool has_remote() const { return remote_ != nullptr; }

  CacheStats Stats() const ABSL_EXCLUSIVE_LOCKS_REQUIRED(index_.mu()) {
    CacheStats stats;
    index_.FillStatsLocked(&stats);
    for (const Tier t : {Tier::kDisk, Tier::kRemote}) {
      if (const StorageTier* tier = storage(t)) tier->FillStats(&stats);
    }
    stats.bytes_h2d = bytes_h2d_;
    stats.bytes_d2h = bytes_d2h_;
    stats.bytes_disk_written = bytes_disk_written_;
    stats.bytes_disk_read = bytes_disk_read_.load();
    stats.transfers_in_flight = in_flight_;
    stats.disk_recovered_blocks = restored_;
    stats.disk_recovery_dropped += restore_dropped_;
    stats.device.bytes_in = stats.bytes_h2d;
    stats.device.bytes_out = stats.bytes_d2h;
    stats.host.bytes_in = stats.bytes_d2h + stats.bytes_disk_read;
    stats.host.bytes_out = stats.bytes_h2d + stats.bytes_disk_written;
    stats.disk.bytes_in = stats.bytes_disk_written;
    stats.disk.bytes_out = stats.bytes_disk_read;
    stats.load_latency = load_latency_.Snapshot();
    stats.demotion_latency = demotion_latency_.Snapshot();
    return stats;
  }

 private:
  struct LoadContext {
    std::vector<Promotion> promotions;
    std::vector<uint8_t> source_lost;  // promotion i's disk copy failed to verify (set before
                                       // read i's event completes; read after the last layer)
  };

  // The storage tier a promotion's bytes come from (null: the host).
  StorageTier* storage(Tier source) const {
    switch (source) {
      case Tier::kDisk:
        return disk_.get();
      case Tier::kRemote:
        return remote_.get();
      default:
        return nullptr;
    }
  }

  // Reads the storage-resident blocks of a load into their host slots: per tier, one batch of
  // those whose slot is free now, and each of the others alone once the write still reading its
  // slot (hazards_) has ended. (*read_done)[i] completes when promotion i's read has, however.
  void StartStorageReadsLocked(const std::shared_ptr<LoadContext>& ctx,
                               const std::shared_ptr<TransferState>& state,
                               std::vector<std::shared_ptr<HostEvent>>* read_done)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(index_.mu()) {
    for (const Tier source : {Tier::kDisk, Tier::kRemote}) {
      StorageTier* tier = storage(source);
      std::vector<StorageTier::Block> now;
      std::vector<size_t> now_which;  // now[j] is promotion now_which[j]
      for (size_t i = 0; i < ctx->promotions.size(); ++i) {
        const Promotion& p = ctx->promotions[i];
        if (p.source != source) continue;
        (*read_done)[i] = std::make_shared<HostEvent>();
        StorageTier::Block block{
            .key = p.key, .slot = p.disk_slot, .host = host_->slot_ptr(p.host_slot)};
        if (hazards_.Busy(p.host_slot)) {
          hazards_.Pending(p.host_slot)
              ->Then([tier, block, done = ReadDone(ctx, state, *read_done, {i}, source)] {
                for (const auto& [j, st] : tier->ReadBlocks({block}, done)) done(j, st);
              });
        } else {
          now.push_back(block);
          now_which.push_back(i);
        }
      }
      if (now.empty()) continue;
      StorageTier::Done done = ReadDone(ctx, state, *read_done, std::move(now_which), source);
      // The completion takes no lock: it may run here for a block that could not be started.
      for (const auto& [j, st] : tier->ReadBlocks(std::move(now), done)) done(j, st);
    }
  }

  // The completion of a batch of reads whose block j is promotion which[j].
  StorageTier::Done ReadDone(const std::shared_ptr<LoadContext>& ctx,
                             const std::shared_ptr<TransferState>& state,
                             const std::vector<std::shared_ptr<HostEvent>>& read_done,
                             std::vector<size_t> which, Tier source) {
    std::vector<std::shared_ptr<HostEvent>> events;
    for (size_t i : which) events.push_back(read_done[i]);
    return [this, ctx, state, source, which = std::move(which), events = std::move(events)](
               size_t j, const absl::Status& st) {
      if (st.ok()) {
        if (source == Tier::kDisk) bytes_disk_read_ += options_.layout.block_bytes();
      } else {
        // A copy that failed to verify is dropped from its tier (the disk's; the remote tier
        // forgets it itself) so that the next Match does not find it again.
        ctx->source_lost[which[j]] = st.code() == absl::StatusCode::kDataLoss;
        state->RecordError(st);
      }
      events[j]->Complete();
    };
  }

  struct SegmentAt {
    Segment segment;
    uint64_t host_offset;  // of this segment inside a host slot
  };

  const Options options_;
  const bool metadata_only_;  // no bytes move: every copy completes when enqueued
  std::unique_ptr<Device> device_;
  std::unique_ptr<HostPool> host_;
  std::unique_ptr<DiskTier> disk_;      // null without a disk tier (or when metadata-only)
  std::unique_ptr<RemoteTier> remote_;  // null without a remote tier
  const bool publish_on_demotion_;      // remote write-through: publish what reaches the host
  std::vector<std::vector<SegmentAt>> layers_;
  Index index_;
  uint64_t bytes_h2d_ ABSL_GUARDED_BY(index_.mu()) = 0;
  uint64_t bytes_d2h_ ABSL_GUARDED_BY(index_.mu()) = 0;
  uint64_t in_flight_ ABSL_GUARDED_BY(index_.mu()) = 0;
  uint64_t bytes_disk_written_ ABSL_GUARDED_BY(index_.mu()) = 0;
  std::atomic<uint64_t> bytes_disk_read_{0};  // counted on the disk's completion thread
  AtomicHistogram load_latency_;              // recorded on copy threads, without a lock
  AtomicHistogram demotion_latency_;
  uint64_t restored_ = 0, restore_dropped_ = 0;  // set once, before the cache is shared
  // Host slots whose last block is still being written below, and those writes.
  HostSlotHazards hazards_ ABSL_GUARDED_BY(index_.mu());
};

}  // namespace internal

using internal::CacheCore;
using internal::MutexLock;

// ---- DeviceLease ----

DeviceLease::DeviceLease(DeviceLease&& other) noexcept
    : core_(std::exchange(other.core_, nullptr)),
      id_(std::exchange(other.id_, 0)),
      slots_(std::move(other.slots_)) {
  other.slots_.clear();
}

DeviceLease& DeviceLease::operator=(DeviceLease&& other) noexcept {
  if (this != &other) {
    Reset();
    core_ = std::exchange(other.core_, nullptr);
    id_ = std::exchange(other.id_, 0);
    slots_ = std::move(other.slots_);
    other.slots_.clear();
  }
  return *this;
}

DeviceLease::~DeviceLease() { Reset(); }

void DeviceLease::Reset() {
  if (core_ != nullptr) {
    MutexLock lock(&core_->index().mu());
    core_->index().ReleaseLeaseLocked(id_).IgnoreError();  // the destructor never fails
  }
  core_ = nullptr;
  id_ = 0;
  slots_.clear();
}

// ---- Transfer ----

Transfer& Transfer::operator=(Transfer&& other) noexcept {
  if (this != &other) {
    if (state_ != nullptr) state_->Wait().IgnoreError();
    state_ = std::move(other.state_);
  }
  return *this;
}

Transfer::~Transfer() {
  if (state_ != nullptr) state_->Wait().IgnoreError();
}

uint32_t Transfer::blocks() const { return state_ == nullptr ? 0 : state_->blocks; }
uint32_t Transfer::blocks_promoted() const { return state_ == nullptr ? 0 : state_->promoted; }

absl::Status Transfer::Wait() {
  if (state_ == nullptr) return absl::FailedPreconditionError("Transfer::Wait: empty handle");
  return state_->Wait();
}

bool Transfer::Poll() const { return state_ != nullptr && state_->Poll(); }

absl::Status Transfer::status() const {
  if (state_ == nullptr) return absl::FailedPreconditionError("Transfer::status: empty handle");
  return state_->status();
}

absl::Status Transfer::WaitLayer(uint32_t layer) {
  if (state_ == nullptr) return absl::FailedPreconditionError("Transfer::WaitLayer: empty handle");
  if (layer >= state_->layers) {
    return absl::OutOfRangeError(
        absl::StrCat("Transfer::WaitLayer: layer ", layer, " vs num_layers=", state_->layers));
  }
  return state_->WaitLayer(layer);
}

absl::StatusOr<void*> Transfer::LayerReadyEvent(uint32_t layer) const {
  if (state_ == nullptr) {
    return absl::FailedPreconditionError("Transfer::LayerReadyEvent: empty handle");
  }
  if (layer >= state_->layers) {
    return absl::OutOfRangeError(absl::StrCat("Transfer::LayerReadyEvent: layer ", layer,
                                              " vs num_layers=", state_->layers));
  }
  if (state_->layer_events.empty()) return nullptr;  // nothing was copied
  return state_->layer_events[layer]->native();
}

absl::StatusOr<void*> Transfer::LayerReady(uint32_t layer) const {
  if (state_ == nullptr) return absl::FailedPreconditionError("Transfer::LayerReady: empty handle");
  if (layer >= state_->layers) {
    return absl::OutOfRangeError(
        absl::StrCat("Transfer::LayerReady: layer ", layer, " vs num_layers=", state_->layers));
  }
  if (state_->layer_events.empty()) return nullptr;  // nothing was copied
  void* event = state_->layer_events[layer]->native();
  if (event == nullptr) {
    return absl::UnimplementedError(
        "Transfer::LayerReady: this device has no native events (emulated); use WaitLayer");
  }
  return event;
}

// ---- Cache ----

Cache::Cache(std::unique_ptr<CacheCore> core) : core_(std::move(core)) {}
Cache::~Cache() = default;

namespace {

#if KVTIER_HAVE_CUDA
// The CUDA device for a layout whose segments are all device memory on one GPU.
absl::StatusOr<std::unique_ptr<internal::Device>> MakeCudaDevice(const Options& options) {
  int holder = -1;
  for (size_t l = 0; l < options.layout.layers.size(); ++l) {
    const auto& segments = options.layout.layers[l].segments;
    for (size_t g = 0; g < segments.size(); ++g) {
      std::string why;
      const int d = internal::CudaDeviceOfPointer(segments[g].base, &why);
      if (d < 0 || (holder >= 0 && d != holder)) {
        return absl::FailedPreconditionError(absl::StrCat(
            "Cache::Create: backend kCuda: Options.layout.layers[", l, "].segments[", g,
            "].base: ", d < 0 ? why : absl::StrCat("on device ", d, " vs ", holder)));
      }
      holder = d;
    }
  }
  CudaOptions cuda = options.cuda;
  if (cuda.device < 0) cuda.device = holder;
  if (cuda.device != holder) {
    return absl::InvalidArgumentError(absl::StrCat("Options.cuda.device: ", cuda.device,
                                                   " vs the layout's memory on device ", holder));
  }
  return internal::CreateCudaDevice(cuda);
}
#endif

absl::StatusOr<std::unique_ptr<internal::Device>> MakeDevice(const Options& options) {
  switch (options.backend) {
    case DeviceBackend::kCuda:
#if KVTIER_HAVE_CUDA
      return MakeCudaDevice(options);
#else
      return absl::UnimplementedError(
          "Cache::Create: backend kCuda: this build has no CUDA device backend "
          "(configure with KVTIER_WITH_CUDA=ON)");
#endif
    case DeviceBackend::kAuto:
#if KVTIER_HAVE_CUDA
      // CUDA only for an engine whose KV tensors are device memory: host buffers (tests, CPU
      // engines) keep the emulated device even on a GPU machine.
      if (internal::CudaDeviceOfPointer(options.layout.layers[0].segments[0].base, nullptr) >= 0) {
        return MakeCudaDevice(options);
      }
#endif
      break;
    case DeviceBackend::kEmulated:
    case DeviceBackend::kMetadataOnly:
      break;
  }
  return std::unique_ptr<internal::Device>(std::make_unique<internal::EmulatedDevice>());
}

}  // namespace

absl::StatusOr<std::unique_ptr<Cache>> Cache::Create(const Options& options) {
  KVTIER_RETURN_IF_ERROR(options.Validate());
  KVTIER_ASSIGN_OR_RETURN(std::unique_ptr<internal::Device> device, MakeDevice(options));
  return internal::CreateCache(options, std::move(device));
}

namespace internal {

absl::StatusOr<std::unique_ptr<Cache>> CreateCache(const Options& options,
                                                   std::unique_ptr<Device> device,
                                                   FaultInjector* disk_faults) {
  KVTIER_RETURN_IF_ERROR(options.Validate());
  if (device == nullptr) return absl::InvalidArgumentError("CreateCache: null device");
  const bool no_bytes = options.backend == DeviceBackend::kMetadataOnly;
  const bool with_disk = options.disk.capacity_bytes > 0;
  IndexConfig config;
  const uint32_t device_slots =
      options.device.capacity_slots == 0 ? options.layout.num_slots : options.device.capacity_slots;
  const uint64_t block = options.layout.block_bytes();
  // With a disk tier a host slot also holds the block's on-disk trailer, padded to the file
  // system's direct-I/O alignment, so that a block moves to and from disk in one transfer. The
  // slot count comes from that real footprint: host.capacity_bytes is a hard cap on the pool.
  uint64_t host_slot_bytes = block;
  uint32_t alignment = 0;
  if (with_disk && !no_bytes) {
    KVTIER_ASSIGN_OR_RETURN(alignment, DiskTier::Alignment(options.disk.directory));
    host_slot_bytes = DiskTier::HostSlotBytes(block, alignment);
    if (options.host.capacity_bytes < host_slot_bytes) {
      return absl::InvalidArgumentError(
          absl::StrCat("Options.host.capacity_bytes: ", options.host.capacity_bytes,
                       " is less than one host slot with a disk tier (", host_slot_bytes,
                       " bytes: the ", block, "-byte block padded to the ", alignment,
                       "-byte direct-I/O alignment, plus its trailer)"));
    }
  }
  const auto host_slots = static_cast<uint32_t>(options.host.capacity_bytes / host_slot_bytes);
  KVTIER_ASSIGN_OR_RETURN(
      auto host, HostPool::Create(device.get(), no_bytes ? 0 : host_slots, host_slot_bytes));
  std::unique_ptr<DiskTier> disk;
  uint32_t disk_slots = 0;
  if (with_disk && no_bytes) {
    disk_slots = static_cast<uint32_t>(
        std::min<uint64_t>(options.disk.capacity_bytes / block, UINT32_MAX - 1));
  } else if (with_disk) {
    std::vector<iovec> memory;
    if (host->slots() > 0) memory.push_back({host->slot_ptr(0), host->slots() * host_slot_bytes});
    KVTIER_ASSIGN_OR_RETURN(disk,
                            DiskTier::Open({.directory = options.disk.directory,
                                            .capacity_bytes = options.disk.capacity_bytes,
                                            .files = options.disk.files,
                                            .queue_depth = options.disk.queue_depth,
                                            .block_bytes = block,
                                            .layout_fingerprint = options.layout.Fingerprint(),
                                            .reset_on_mismatch = options.disk.reset_on_mismatch,
                                            .allow_buffered = options.disk.allow_buffered,
                                            .injector = disk_faults},
                                           memory));
    disk_slots = disk->capacity_slots();
  }
  std::unique_ptr<RemoteTier> remote;
  if (!options.remote.nodes.empty()) {
    const RemoteTierOptions& r = options.remote;
    RemoteTierConfig rc{
        .cluster = {.seeds = absl::StrSplit(r.nodes, ',', absl::SkipWhitespace()),
                    .password = r.password,
                    .connect_timeout = std::chrono::milliseconds(r.connect_timeout_ms)},
        .name_space =
            absl::StrCat(r.scope, ".", absl::Hex(options.layout.Fingerprint(), absl::kZeroPad16)),
        .block_bytes = block,
        .layout_fingerprint = options.layout.Fingerprint(),
        .ttl_seconds = r.ttl_seconds,
        .timeout = std::chrono::milliseconds(r.timeout_ms),
        .threads = r.threads};
    auto opened = RemoteTier::Open(std::move(rc));
    if (!opened.ok()) {
      return absl::Status(opened.status().code(),
                          absl::StrCat("Options.remote.nodes: ", opened.status().message()));
    }
    remote = std::move(*opened);
  }
  const bool remote_write_through =
      remote != nullptr && options.remote.publish == RemotePublish::kWriteThrough;
  config.capacity_slots = {device_slots, host_slots, disk_slots};
  config.demote_on_evict = options.demote_on_evict;
  config.host_write_through = options.host_write_through || remote_write_through;
  config.remote_write_back =
      remote != nullptr && options.remote.publish == RemotePublish::kWriteBack;
  struct TierPolicy {
    const char* path;
    const std::string* name;
    const PolicyParams* params;
  };
  const TierPolicy policies[kNumTiers] = {
      {"Options.device.policy", &options.device.policy, &options.device.policy_params},
      {"Options.host.policy", &options.host.policy, &options.host.policy_params},
      {"Options.disk.policy", &options.disk.policy, &options.disk.policy_params}};
  for (int t = 0; t < kNumTiers; ++t) {
    // A disabled tier's policy is never asked anything: its options are not checked (as in
    // Options::Validate), and it gets an empty lru.
    const bool enabled = config.capacity_slots[t] > 0;
    static const PolicyParams kNoParams;
    auto p = CreatePolicy(enabled ? *policies[t].name : "lru",
                          {.capacity_slots = config.capacity_slots[t],
                           .params = enabled ? *policies[t].params : kNoParams});
    if (!p.ok()) {
      // An unknown name is a bad option value like any other: kInvalidArgument, not the
      // registry's kNotFound.
      const absl::StatusCode code = p.status().code() == absl::StatusCode::kNotFound
                                        ? absl::StatusCode::kInvalidArgument
                                        : p.status().code();
      return absl::Status(code, absl::StrCat(policies[t].path, ": ", p.status().message()));
    }
    config.policies[t] = std::move(*p);
  }
  auto core = std::make_unique<CacheCore>(options, std::move(device), std::move(host),
                                          std::move(disk), std::move(remote), std::move(config));
  core->Restore();
  return std::unique_ptr<Cache>(new Cache(std::move(core)));
}

}  // namespace internal

absl::StatusOr<MatchResult> Cache::Match(std::span<const BlockKey> keys) {
  for (size_t i = 0; i < keys.size(); ++i) {
    if (keys[i] == kRootKey) {
      return absl::InvalidArgumentError(absl::StrCat("Match: keys[", i, "] is the root key"));
    }
  }
  MatchResult m;
  {
    MutexLock lock(&core_->index_.mu());
    m = core_->index_.MatchLocked(keys);
  }
  if (!core_->has_remote() || m.size() == keys.size()) return m;
  const uint32_t found = core_->MatchRemote(keys.subspan(m.size()));
  if (found > 0) {
    MutexLock lock(&core_->index_.mu());
    core_->index_.NoteRemoteHitsLocked(found);
  }
  const size_t local = m.keys.size();
  for (uint32_t i = 0; i < found; ++i) {
    m.keys.push_back(keys[local + i]);
    m.tiers.push_back(Tier::kRemote);
  }
  return m;
}

namespace {

absl::Status CheckLease(const char* call, const DeviceLease& lease, const CacheCore* core) {
  if (!lease) {
    return absl::FailedPreconditionError(
        absl::StrCat(call, ": empty lease (released, moved from, or never allocated)"));
  }
  if (lease.core_for_checks() != core) {
    return absl::FailedPreconditionError(absl::StrCat(call, ": the lease is another cache's"));
  }
  return absl::OkStatus();
}

}  // namespace

// Enqueues the write-backs an allocation decided (whether or not it succeeded), waits for them
// outside the lock, then frees the slots a failed allocation had to keep out of use meanwhile.
absl::Status Cache::FinishAllocation(const absl::Status& reserved,
                                     std::vector<internal::Demotion> demotions,
                                     std::vector<uint32_t> quarantine) {
  std::shared_ptr<internal::DeviceEvent> write_back;
  {
    MutexLock lock(&core_->index_.mu());
    core_->StartWriteBacksLocked();
    if (!demotions.empty()) {
      auto event = core_->EnqueueDemotionsLocked(std::move(demotions));
      if (event.ok()) write_back = *event;
    }
  }
  // The victims' bytes must reach the host before anyone may overwrite their slots.
  if (write_back != nullptr) write_back->Wait().IgnoreError();
  if (!quarantine.empty()) {
    MutexLock lock(&core_->index_.mu());
    core_->index_.FreeQuarantinedLocked(quarantine);
  }
  return reserved;
}

absl::StatusOr<DeviceLease> Cache::AllocateDevice(uint32_t n) {
  const uint32_t capacity = core_->index_.capacity(Tier::kDevice);
  if (n == 0 || n > capacity) {
    return absl::InvalidArgumentError(
        absl::StrCat("AllocateDevice: ", n, " slots asked vs 1..", capacity, " available"));
  }
  for (int attempt = 0;; ++attempt) {
    std::vector<uint32_t> slots, quarantine;
    std::vector<internal::Demotion> demotions;
    absl::StatusOr<uint64_t> id;
    uint64_t evictions_before = 0;
    {
      MutexLock lock(&core_->index_.mu());
      evictions_before = core_->index_.EvictionsLocked();
      id = core_->index_.NewLeaseLocked(n, &slots, &demotions, &quarantine);
    }
    const absl::Status s =
        FinishAllocation(id.status(), std::move(demotions), std::move(quarantine));
    if (s.ok()) return DeviceLease(core_.get(), *id, std::move(slots));
    if (s.code() != absl::StatusCode::kResourceExhausted ||
        !core_->RetryAllocation(attempt, evictions_before)) {
      return s;
    }
  }
}

absl::Status Cache::Grow(DeviceLease& lease, uint32_t n) {
  KVTIER_RETURN_IF_ERROR(CheckLease("Grow", lease, core_.get()));
  const uint32_t capacity = core_->index_.capacity(Tier::kDevice);
  if (n == 0 || n > capacity - std::min(capacity, lease.size())) {
    return absl::InvalidArgumentError(absl::StrCat("Grow: ", n, " slots asked vs 1..",
                                                   capacity - std::min(capacity, lease.size()),
                                                   " available to a lease of ", lease.size()));
  }
  for (int attempt = 0;; ++attempt) {
    std::vector<uint32_t> slots, quarantine;
    std::vector<internal::Demotion> demotions;
    absl::Status grown;
    uint64_t evictions_before = 0;
    {
      MutexLock lock(&core_->index_.mu());
      evictions_before = core_->index_.EvictionsLocked();
      grown = core_->index_.GrowLeaseLocked(lease.id_, n, &slots, &demotions, &quarantine);
    }
    const absl::Status s = FinishAllocation(grown, std::move(demotions), std::move(quarantine));
    if (s.ok()) {
      lease.slots_.insert(lease.slots_.end(), slots.begin(), slots.end());
      return absl::OkStatus();
    }
    if (s.code() != absl::StatusCode::kResourceExhausted ||
        !core_->RetryAllocation(attempt, evictions_before)) {
      return s;
    }
  }
}

absl::StatusOr<Transfer> Cache::Load(const MatchResult& match, DeviceLease& lease) {
  const uint64_t start = internal::MonotonicNanos();
  KVTIER_RETURN_IF_ERROR(CheckLease("Load", lease, core_.get()));
  MutexLock lock(&core_->index_.mu());
  uint32_t remote_from = UINT32_MAX;  // the first block Match() found in the remote tier only
  if (core_->has_remote()) {
    for (uint32_t i = 0; i < match.tiers.size(); ++i) {
      if (match.tiers[i] == Tier::kRemote) {
        remote_from = i;
        break;
      }
    }
  }
  KVTIER_ASSIGN_OR_RETURN(internal::LoadPlan plan,
                          core_->index_.PlanLoadLocked(lease.id_, match.keys, remote_from));
  lease.slots_ = plan.lease_slots;
  KVTIER_ASSIGN_OR_RETURN(auto state, core_->StartLoadLocked(std::move(plan), start));
  return Transfer(std::move(state));
}

absl::Status Cache::Commit(std::span<const BlockKey> keys, DeviceLease& lease) {
  KVTIER_RETURN_IF_ERROR(CheckLease("Commit", lease, core_.get()));
  MutexLock lock(&core_->index_.mu());
  std::vector<internal::Demotion> demotions;
  KVTIER_RETURN_IF_ERROR(core_->index_.CommitLocked(lease.id_, keys, &demotions));
  core_->StartWriteBacksLocked();
  if (!demotions.empty()) {
    // Write-through copies: their failure only loses the host copy; Commit itself succeeded.
    core_->EnqueueDemotionsLocked(std::move(demotions)).status().IgnoreError();
  }
  return absl::OkStatus();
}

absl::Status Cache::Release(DeviceLease& lease) {
  KVTIER_RETURN_IF_ERROR(CheckLease("Release", lease, core_.get()));
  lease.Reset();
  return absl::OkStatus();
}

absl::Status Cache::Hint(std::span<const BlockKey> keys, std::span<const double> scores) {
  if (keys.size() != scores.size()) {
    return absl::InvalidArgumentError(
        absl::StrCat("Hint: ", keys.size(), " keys vs ", scores.size(), " scores"));
  }
  MutexLock lock(&core_->index_.mu());
  core_->index_.HintLocked(keys, scores);
  return absl::OkStatus();
}

CacheStats Cache::Stats() const {
  MutexLock lock(&core_->index_.mu());
  return core_->Stats();
}

const Options& Cache::options() const { return core_->options(); }

absl::Status Cache::CheckInvariants() const {
  MutexLock lock(&core_->index_.mu());
  return core_->index_.CheckInvariantsLocked();
}

}  // namespace kvtier
