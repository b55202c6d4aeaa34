// Cache: the public API, a facade over Cache::Core (lib/cache_core.h).
//
// Every call takes the index lock once, lets the Index make the transition, and has the movers
// enqueue the copies that transition asks for while still holding it, so that the copies of one
// call are contiguous on their stream (a callback's error window is that call's copies alone).
// Enqueueing never waits. The only waits (write-back before AllocateDevice returns, a store's
// lookup in Match, Transfer::Wait) happen after unlocking.
#include "kvtier/cache.h"

#include <algorithm>
#include <type_traits>
#include <utility>

#include "absl/strings/str_cat.h"
#include "absl/time/time.h"
#include "lib/cache_core.h"
#include "lib/common/status_macros.h"
#include "lib/index/index.h"
#include "lib/transfer/transfer_state.h"

namespace kvtier {

using internal::MutexLock;

// ---- DeviceLease ----

DeviceLease::DeviceLease(DeviceLease&& other) noexcept
    : cache_(std::exchange(other.cache_, nullptr)),
      id_(std::exchange(other.id_, 0)),
      slots_(std::move(other.slots_)),
      shared_(std::exchange(other.shared_, 0)) {
  other.slots_.clear();
}

DeviceLease& DeviceLease::operator=(DeviceLease&& other) noexcept {
  if (this != &other) {
    Reset();
    cache_ = std::exchange(other.cache_, nullptr);
    id_ = std::exchange(other.id_, 0);
    slots_ = std::move(other.slots_);
    shared_ = std::exchange(other.shared_, 0);
    other.slots_.clear();
  }
  return *this;
}

DeviceLease::~DeviceLease() { Reset(); }

void DeviceLease::Reset() {
  if (cache_ != nullptr) cache_->ReleaseLease(id_);
  cache_ = nullptr;
  id_ = 0;
  slots_.clear();
  shared_ = 0;
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
uint32_t Transfer::blocks_loaded() const { return state_ == nullptr ? 0 : state_->blocks_loaded(); }
uint32_t Transfer::blocks_lossy() const { return state_ == nullptr ? 0 : state_->blocks_lossy(); }

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

uint32_t Transfer::sequence() const { return state_ == nullptr ? 0 : state_->sequence; }

// ---- Cache ----

Cache::Cache(std::unique_ptr<Core> core) : core_(std::move(core)) {}
Cache::~Cache() = default;

void Cache::ReleaseLease(uint64_t id) {
  MutexLock lock(&core_->index_.mu());
  core_->index_.ReleaseLeaseLocked(id).IgnoreError();  // a lease's destructor never fails
}

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
  if (m.size() == keys.size()) return m;
  // Past the local prefix: what the tiers below that the index keeps no slots of (a store shared
  // with other caches) hold. Without the lock: it may wait for the network.
  const uint32_t local = m.size();
  core_->storage_.FindPrefix(keys, &m);
  if (m.size() > local) {
    MutexLock lock(&core_->index_.mu());
    core_->index_.NoteStoreHitsLocked(m.size() - local);
  }
  return m;
}

namespace {

absl::Status CheckLease(const char* call, const DeviceLease& lease, const Cache* cache) {
  if (!lease) {
    return absl::FailedPreconditionError(
        absl::StrCat(call, ": empty lease (released, moved from, or never allocated)"));
  }
  if (lease.cache() != cache) {
    return absl::FailedPreconditionError(absl::StrCat(call, ": the lease is another cache's"));
  }
  return absl::OkStatus();
}

}  // namespace

absl::StatusOr<DeviceLease> Cache::AllocateDevice(uint32_t n) {
  return AllocateDevice(MatchResult{}, n);
}

absl::StatusOr<DeviceLease> Cache::AllocateDevice(const MatchResult& match, uint32_t n) {
  const uint32_t capacity = core_->index_.capacity(Tier::kDevice);
  if (n == 0 || n > capacity) {
    return absl::InvalidArgumentError(
        absl::StrCat("AllocateDevice: ", n, " slots asked vs 1..", capacity, " available"));
  }
  if (match.size() > n) {
    return absl::InvalidArgumentError(absl::StrCat("AllocateDevice: the match has ", match.size(),
                                                   " blocks vs ", n, " slots asked"));
  }
  uint64_t id = 0;
  uint32_t shared = 0;
  std::vector<uint32_t> slots;
  KVTIER_RETURN_IF_ERROR(core_->Allocate(
      [&](std::vector<internal::Move>* demotions, std::vector<uint32_t>* quarantine) {
        core_->index_.mu().AssertHeld();
        slots.clear();
        absl::StatusOr<uint64_t> lease =
            core_->index_.NewLeaseLocked(n, &slots, demotions, quarantine, match.keys, &shared);
        if (lease.ok()) id = *lease;
        return lease.status();
      }));
  return DeviceLease(this, id, std::move(slots), shared);
}

absl::Status Cache::Grow(DeviceLease& lease, uint32_t n) {
  KVTIER_RETURN_IF_ERROR(CheckLease("Grow", lease, this));
  const uint32_t capacity = core_->index_.capacity(Tier::kDevice);
  if (n == 0 || n > capacity - std::min(capacity, lease.size())) {
    return absl::InvalidArgumentError(absl::StrCat("Grow: ", n, " slots asked vs 1..",
                                                   capacity - std::min(capacity, lease.size()),
                                                   " available to a lease of ", lease.size()));
  }
  std::vector<uint32_t> slots;
  KVTIER_RETURN_IF_ERROR(core_->Allocate(
      [&](std::vector<internal::Move>* demotions, std::vector<uint32_t>* quarantine) {
        core_->index_.mu().AssertHeld();
        slots.clear();
        return core_->index_.GrowLeaseLocked(lease.id_, n, &slots, demotions, quarantine);
      }));
  lease.slots_.insert(lease.slots_.end(), slots.begin(), slots.end());
  return absl::OkStatus();
}

absl::StatusOr<Transfer> Cache::Load(const MatchResult& match, DeviceLease& lease) {
  const uint64_t start = internal::MonotonicNanos();
  KVTIER_RETURN_IF_ERROR(CheckLease("Load", lease, this));
  MutexLock lock(&core_->index_.mu());
  KVTIER_ASSIGN_OR_RETURN(internal::LoadPlan plan, core_->index_.PlanLoadLocked(lease.id_, match));
  lease.slots_ = plan.lease_slots;
  KVTIER_ASSIGN_OR_RETURN(auto state, core_->device_mover_.StartLoadLocked(std::move(plan), start));
  return Transfer(std::move(state));
}

absl::Status Cache::Commit(std::span<const BlockKey> keys, DeviceLease& lease) {
  KVTIER_RETURN_IF_ERROR(CheckLease("Commit", lease, this));
  MutexLock lock(&core_->index_.mu());
  std::vector<internal::Move> demotions;
  KVTIER_RETURN_IF_ERROR(core_->index_.CommitLocked(lease.id_, keys, &demotions));
  core_->storage_.StartWritesLocked();
  if (!demotions.empty()) {
    // Write-through copies: their failure only loses the host copy; Commit itself succeeded.
    core_->device_mover_.EnqueueDemotionsLocked(std::move(demotions)).status().IgnoreError();
  }
  return absl::OkStatus();
}

absl::Status Cache::SetTenant(DeviceLease& lease, absl::string_view tenant) {
  KVTIER_RETURN_IF_ERROR(CheckLease("SetTenant", lease, this));
  KVTIER_ASSIGN_OR_RETURN(const uint8_t id, core_->TenantId(tenant));
  MutexLock lock(&core_->index_.mu());
  return core_->index_.SetLeaseTenantLocked(lease.id_, id);
}

absl::Status Cache::Release(DeviceLease& lease) {
  KVTIER_RETURN_IF_ERROR(CheckLease("Release", lease, this));
  lease.Reset();
  return absl::OkStatus();
}

absl::Status Cache::Hint(std::span<const BlockKey> keys, std::span<const double> scores) {
  return core_->Hint(keys, scores);
}

// ---- Management (Cache::Core's, shared with the Connector) ----

absl::Status Cache::Hint(std::span<const BlockKey> keys, std::span<const double> scores,
                         absl::Duration duration) {
  return core_->Hint(keys, scores, duration);
}

absl::StatusOr<ManageResult> Cache::Remove(std::span<const BlockKey> keys) {
  return core_->Remove(keys);
}

absl::StatusOr<ManageResult> Cache::Clear(Tier tier) { return core_->Clear(tier); }

absl::StatusOr<ManageResult> Cache::Pin(std::span<const BlockKey> keys, absl::Duration duration) {
  return core_->Pin(keys, duration);
}

absl::StatusOr<ManageResult> Cache::Unpin(std::span<const BlockKey> keys) {
  return core_->Unpin(keys);
}

absl::StatusOr<Transfer> Cache::Prefetch(std::span<const BlockKey> keys) {
  KVTIER_ASSIGN_OR_RETURN(auto state, core_->CheckedPrefetch(keys));
  return Transfer(std::move(state));
}

std::vector<KvEvent> Cache::TakeEvents(size_t max_events) { return core_->TakeEvents(max_events); }

CacheStats Cache::Stats() const { return core_->Stats(); }

const Options& Cache::options() const { return core_->options_; }

absl::StatusOr<void*> Cache::GraphLayerCounters() const {
  void* counters = core_->device_->counters();
  if (counters == nullptr || options().backend == DeviceBackend::kMetadataOnly) {
    return absl::UnimplementedError(
        "Cache::GraphLayerCounters: this device has no layer counters (emulated or metadata-only)");
  }
  return counters;
}

absl::Status Cache::CheckInvariants() const {
  MutexLock lock(&core_->index_.mu());
  return core_->index_.CheckInvariantsLocked();
}

}  // namespace kvtier
