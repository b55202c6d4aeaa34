// Cache: the public API over the index (state), the host pool (bytes) and the device (copies).
//
// Every call takes the index lock once, lets the Index make the transition, and enqueues the copies
// that transition asks for while still holding it, so that the copies of one call are contiguous on
// their stream (a callback's error window is that call's copies alone). Enqueueing never waits. The
// only waits (write-back before AllocateDevice returns, Transfer::Wait) happen after unlocking.
#include "kvtier/cache.h"

#include <cassert>
#include <utility>

#include "absl/strings/str_cat.h"
#include "lib/cache_factory.h"
#include "lib/common/status_macros.h"
#include "lib/index/index.h"
#include "lib/tiers/host_pool.h"
#include "lib/transfer/device.h"
#include "lib/transfer/emulated_device.h"
#include "lib/transfer/transfer_state.h"

namespace kvtier {

const char* TierName(Tier tier) {
  switch (tier) {
    case Tier::kDevice:
      return "device";
    case Tier::kHost:
      return "host";
  }
  return "unknown";
}

uint32_t MatchResult::blocks_in(Tier tier) const {
  uint32_t n = 0;
  for (Tier t : tiers) n += t == tier;
  return n;
}

namespace internal {

class CacheCore {
 public:
  CacheCore(const Options& options, std::unique_ptr<Device> device, std::unique_ptr<HostPool> host,
            IndexConfig config)
      : options_(options),
        metadata_only_(options.backend == DeviceBackend::kMetadataOnly),
        device_(std::move(device)),
        host_(std::move(host)),
        index_(std::move(config)) {
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
    device_->Synchronize().IgnoreError();  // callbacks reference this object
    MutexLock lock(&index_.mu());
    assert(index_.live_leases_locked() == 0 && "destroy every DeviceLease before its Cache");
  }

  Index& index() { return index_; }
  const Options& options() const { return options_; }
  Device& device() { return *device_; }

  // Regions of layer `layer` of one block between a device slot and a host slot.
  void AppendLayerRegions(uint32_t layer, SlotId device_slot, SlotId host_slot, bool to_device,
                          std::vector<CopyRegion>* out) const {
    std::byte* host = host_->slot_ptr(host_slot);
    for (const SegmentAt& s : layers_[layer]) {
      std::byte* dev = static_cast<std::byte*>(s.segment.base) +
                       uint64_t{device_slot} * s.segment.stride_bytes;
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
    if (metadata_only_) {
      for (const Demotion& d : demotions) index_.FinishDemotionLocked(d, true);
      bytes_d2h_ += bytes;
      return std::shared_ptr<DeviceEvent>();
    }
    std::vector<CopyRegion> regions;
    for (const Demotion& d : demotions) {
      for (uint32_t l = 0; l < layers_.size(); ++l) {
        AppendLayerRegions(l, d.device_slot, d.host_slot, /*to_device=*/false, &regions);
      }
    }
    absl::Status s = device_->Copy(Stream::kD2H, regions);
    absl::StatusOr<std::shared_ptr<DeviceEvent>> event =
        s.ok() ? device_->RecordEvent(Stream::kD2H) : s;
    if (event.ok()) {
      s = device_->AddCallback(Stream::kD2H, [this, demotions](absl::Status st) {
        MutexLock lock(&index_.mu());
        for (const Demotion& d : demotions) index_.FinishDemotionLocked(d, st.ok());
      });
    }
    if (!event.ok() || !s.ok()) {  // nothing will run: fail them now
      for (const Demotion& d : demotions) index_.FinishDemotionLocked(d, false);
      return event.ok() ? s : event.status();
    }
    bytes_d2h_ += bytes;
    return event;
  }

  uint64_t bytes_d2h() const ABSL_EXCLUSIVE_LOCKS_REQUIRED(index_.mu()) { return bytes_d2h_; }
  uint64_t bytes_h2d() const ABSL_EXCLUSIVE_LOCKS_REQUIRED(index_.mu()) { return bytes_h2d_; }
  uint64_t in_flight() const ABSL_EXCLUSIVE_LOCKS_REQUIRED(index_.mu()) { return in_flight_; }

  absl::StatusOr<std::shared_ptr<TransferState>> StartLoadLocked(LoadPlan plan)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(index_.mu()) {
    const auto layers = static_cast<uint32_t>(layers_.size());
    auto state = std::make_shared<TransferState>(
        plan.blocks, static_cast<uint32_t>(plan.promotions.size()), layers);
    if (plan.promotions.empty() || metadata_only_) {  // nothing to copy, or nothing to wait for
      for (const Promotion& p : plan.promotions) index_.FinishPromotionLocked(p, true);
      bytes_h2d_ += plan.promotions.size() * options_.layout.block_bytes();
      state->FinishNow();
      return state;
    }
    auto promotions = std::make_shared<std::vector<Promotion>>(std::move(plan.promotions));
    absl::Status s;
    std::vector<CopyRegion> regions;
    for (uint32_t l = 0; l < layers && s.ok(); ++l) {
      regions.clear();
      for (const Promotion& p : *promotions) {
        AppendLayerRegions(l, p.device_slot, p.host_slot, /*to_device=*/true, &regions);
      }
      if (!regions.empty()) s = device_->Copy(Stream::kH2D, regions);
      absl::StatusOr<std::shared_ptr<DeviceEvent>> event =
          s.ok() ? device_->RecordEvent(Stream::kH2D) : s;
      if (!event.ok()) {
        s = event.status();
        break;
      }
      state->layer_events.push_back(*event);
      const bool last = l + 1 == layers;
      s = device_->AddCallback(Stream::kH2D, [this, state, promotions, last](absl::Status st) {
        state->LayerDone(st);
        if (!last) return;
        const absl::Status outcome = state->first_error();
        {
          MutexLock lock(&index_.mu());
          for (const Promotion& p : *promotions) index_.FinishPromotionLocked(p, outcome.ok());
          in_flight_--;
        }
        state->Finish();
      });
    }
    if (!s.ok()) {
      // Enqueueing failed (the device is unusable). The last layer's callback, the one that reports
      // to the index, is the last thing enqueued, so it is not queued: report the failure now.
      for (const Promotion& p : *promotions) index_.FinishPromotionLocked(p, false);
      return s;
    }
    bytes_h2d_ += promotions->size() * options_.layout.block_bytes();
    in_flight_++;
    return state;
  }

 private:
  struct SegmentAt {
    Segment segment;
    uint64_t host_offset;  // of this segment inside a host slot
  };

  const Options options_;
  const bool metadata_only_;  // no bytes move: every copy completes when enqueued
  std::unique_ptr<Device> device_;
  std::unique_ptr<HostPool> host_;
  std::vector<std::vector<SegmentAt>> layers_;
  Index index_;
  uint64_t bytes_h2d_ ABSL_GUARDED_BY(index_.mu()) = 0;
  uint64_t bytes_d2h_ ABSL_GUARDED_BY(index_.mu()) = 0;
  uint64_t in_flight_ ABSL_GUARDED_BY(index_.mu()) = 0;
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
    return absl::OutOfRangeError(absl::StrCat("Transfer::WaitLayer: layer ", layer,
                                              " vs num_layers=", state_->layers));
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

// ---- Cache ----

Cache::Cache(std::unique_ptr<CacheCore> core) : core_(std::move(core)) {}
Cache::~Cache() = default;

absl::StatusOr<std::unique_ptr<Cache>> Cache::Create(const Options& options) {
  KVTIER_RETURN_IF_ERROR(options.Validate());
  switch (options.backend) {
    case DeviceBackend::kCuda:
      return absl::UnimplementedError(
          "Cache::Create: backend kCuda: this build has no CUDA device backend");
    case DeviceBackend::kAuto:
    case DeviceBackend::kEmulated:
    case DeviceBackend::kMetadataOnly:
      break;
  }
  return internal::CreateCache(options, std::make_unique<internal::EmulatedDevice>());
}

namespace internal {

absl::StatusOr<std::unique_ptr<Cache>> CreateCache(const Options& options,
                                                   std::unique_ptr<Device> device) {
  KVTIER_RETURN_IF_ERROR(options.Validate());
  if (device == nullptr) return absl::InvalidArgumentError("CreateCache: null device");
  IndexConfig config;
  const uint32_t device_slots =
      options.device.capacity_slots == 0 ? options.layout.num_slots : options.device.capacity_slots;
  const uint64_t block = options.layout.block_bytes();
  const auto host_slots = static_cast<uint32_t>(options.host.capacity_bytes / block);
  config.capacity_slots = {device_slots, host_slots};
  config.demote_on_evict = options.demote_on_evict;
  config.host_write_through = options.host_write_through;
  struct TierPolicy {
    const char* path;
    const std::string* name;
    const PolicyParams* params;
  };
  const TierPolicy policies[kNumTiers] = {
      {"Options.device.policy", &options.device.policy, &options.device.policy_params},
      {"Options.host.policy", &options.host.policy, &options.host.policy_params}};
  for (int t = 0; t < kNumTiers; ++t) {
    auto p = CreatePolicy(*policies[t].name,
                          {.capacity_slots = config.capacity_slots[t], .params = *policies[t].params});
    if (!p.ok()) {
      return absl::Status(p.status().code(),
                          absl::StrCat(policies[t].path, ": ", p.status().message()));
    }
    config.policies[t] = std::move(*p);
  }
  // Metadata-only caches keep no host bytes: the pool maps no memory.
  const bool no_bytes = options.backend == DeviceBackend::kMetadataOnly;
  KVTIER_ASSIGN_OR_RETURN(auto host,
                          HostPool::Create(device.get(), no_bytes ? 0 : host_slots, block));
  return std::unique_ptr<Cache>(new Cache(
      std::make_unique<CacheCore>(options, std::move(device), std::move(host), std::move(config))));
}

}  // namespace internal

absl::StatusOr<MatchResult> Cache::Match(std::span<const BlockKey> keys) {
  for (size_t i = 0; i < keys.size(); ++i) {
    if (keys[i] == kRootKey) {
      return absl::InvalidArgumentError(absl::StrCat("Match: keys[", i, "] is the root key"));
    }
  }
  MutexLock lock(&core_->index().mu());
  return core_->index().MatchLocked(keys);
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

absl::StatusOr<DeviceLease> Cache::AllocateDevice(uint32_t n) {
  const uint32_t capacity = core_->index().capacity(Tier::kDevice);
  if (n == 0 || n > capacity) {
    return absl::InvalidArgumentError(absl::StrCat("AllocateDevice: ", n,
                                                   " slots asked vs 1..", capacity, " available"));
  }
  std::vector<uint32_t> slots;
  std::shared_ptr<internal::DeviceEvent> write_back;
  uint64_t id = 0;
  {
    MutexLock lock(&core_->index().mu());
    std::vector<internal::Demotion> demotions;
    KVTIER_ASSIGN_OR_RETURN(id, core_->index().NewLeaseLocked(n, &slots, &demotions));
    if (!demotions.empty()) {
      auto event = core_->EnqueueDemotionsLocked(std::move(demotions));
      if (event.ok()) write_back = *event;
    }
  }
  // The victims' bytes must reach the host before the engine may overwrite their slots.
  if (write_back != nullptr) write_back->Wait().IgnoreError();
  return DeviceLease(core_.get(), id, std::move(slots));
}

absl::Status Cache::Grow(DeviceLease& lease, uint32_t n) {
  KVTIER_RETURN_IF_ERROR(CheckLease("Grow", lease, core_.get()));
  const uint32_t capacity = core_->index().capacity(Tier::kDevice);
  if (n == 0 || n > capacity - std::min(capacity, lease.size())) {
    return absl::InvalidArgumentError(absl::StrCat("Grow: ", n, " slots asked vs 1..",
                                                   capacity - std::min(capacity, lease.size()),
                                                   " available to a lease of ", lease.size()));
  }
  std::vector<uint32_t> slots;
  std::shared_ptr<internal::DeviceEvent> write_back;
  {
    MutexLock lock(&core_->index().mu());
    std::vector<internal::Demotion> demotions;
    KVTIER_RETURN_IF_ERROR(core_->index().GrowLeaseLocked(lease.id_, n, &slots, &demotions));
    if (!demotions.empty()) {
      auto event = core_->EnqueueDemotionsLocked(std::move(demotions));
      if (event.ok()) write_back = *event;
    }
  }
  if (write_back != nullptr) write_back->Wait().IgnoreError();
  lease.slots_.insert(lease.slots_.end(), slots.begin(), slots.end());
  return absl::OkStatus();
}

absl::StatusOr<Transfer> Cache::Load(const MatchResult& match, DeviceLease& lease) {
  KVTIER_RETURN_IF_ERROR(CheckLease("Load", lease, core_.get()));
  MutexLock lock(&core_->index().mu());
  KVTIER_ASSIGN_OR_RETURN(internal::LoadPlan plan,
                          core_->index().PlanLoadLocked(lease.id_, match.keys));
  lease.slots_ = plan.lease_slots;
  KVTIER_ASSIGN_OR_RETURN(auto state, core_->StartLoadLocked(std::move(plan)));
  return Transfer(std::move(state));
}

absl::Status Cache::Commit(std::span<const BlockKey> keys, DeviceLease& lease) {
  KVTIER_RETURN_IF_ERROR(CheckLease("Commit", lease, core_.get()));
  MutexLock lock(&core_->index().mu());
  std::vector<internal::Demotion> demotions;
  KVTIER_RETURN_IF_ERROR(core_->index().CommitLocked(lease.id_, keys, &demotions));
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
    return absl::InvalidArgumentError(absl::StrCat("Hint: ", keys.size(), " keys vs ",
                                                   scores.size(), " scores"));
  }
  MutexLock lock(&core_->index().mu());
  core_->index().HintLocked(keys, scores);
  return absl::OkStatus();
}

CacheStats Cache::Stats() const {
  CacheStats stats;
  MutexLock lock(&core_->index().mu());
  core_->index().FillStatsLocked(&stats);
  stats.bytes_h2d = core_->bytes_h2d();
  stats.bytes_d2h = core_->bytes_d2h();
  stats.transfers_in_flight = core_->in_flight();
  return stats;
}

const Options& Cache::options() const { return core_->options(); }

absl::Status Cache::CheckInvariants() const {
  MutexLock lock(&core_->index().mu());
  return core_->index().CheckInvariantsLocked();
}

}  // namespace kvtier
