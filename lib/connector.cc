// Connector: connector mode over the same Cache::Core as a Cache, its Index holding no device
// slots. Loads and stores are Moves whose device end is an engine block (Move::engine), carried
// out by the same DeviceMover (layer by layer) and StorageMover (disk and store reads, writes
// down the tiers).
#include "kvtier/connector.h"

#include <algorithm>
#include <condition_variable>
#include <deque>
#include <thread>
#include <utility>

#include "absl/container/flat_hash_map.h"
#include "absl/container/flat_hash_set.h"
#include "absl/strings/str_cat.h"
#include "lib/cache_core.h"
#include "lib/cache_factory.h"
#include "lib/common/status_macros.h"
#include "lib/transfer/transfer_state.h"

namespace kvtier {

namespace internal {

// An engine's CUDA event, waited on by the copy stream (the CUDA device waits on native()).
class EngineEvent : public DeviceEvent {
 public:
  explicit EngineEvent(void* native) : native_(native) {}
  bool Query() const override { return false; }
  absl::Status Wait() const override {
    return absl::UnimplementedError("an engine event is only waited on by a stream");
  }
  void* native() const override { return native_; }

 private:
  void* native_;
};

struct ConnectorStore {
  std::shared_ptr<DeviceMover::StoreJob> job;  // guarded by the index lock
  uint32_t unstored = 0;
};

class ConnectorImpl {
 public:
  explicit ConnectorImpl(std::unique_ptr<Cache::Core> core)
      : core_(std::move(core)),
        store_tier_(core_->storage_.tier(Tier::kRemote) != nullptr ? Tier::kRemote : Tier::kDevice),
        native_events_(std::string_view(core_->device_->name()) != "emulated") {
    if (store_tier_ == Tier::kRemote) prober_ = std::thread([this] { ProbeLoop(); });
  }
  ~ConnectorImpl() {
    {
      MutexLock lock(&probe_mu_);
      stop_ = true;
      probe_cv_.SignalAll();
    }
    if (prober_.joinable()) prober_.join();
  }

  static std::unique_ptr<Connector> Wrap(std::unique_ptr<ConnectorImpl> impl) {
    return std::unique_ptr<Connector>(new Connector(std::move(impl)));
  }
  Cache::Core& core() { return *core_; }
  const Options& options() const { return core_->options_; }
  Index& index() { return core_->index_; }

  // Block ids: in range, and no repeats.
  absl::Status CheckBlocks(const char* call, const char* what, size_t want,
                           std::span<const uint32_t> blocks) const {
    if (blocks.size() != want) {
      return absl::InvalidArgumentError(
          absl::StrCat(call, ": ", blocks.size(), " ", what, " for ", want, " keys past `first`"));
    }
    const uint32_t n = core_->options_.layout.num_slots;
    for (size_t i = 0; i < blocks.size(); ++i) {
      if (blocks[i] >= n) {
        return absl::InvalidArgumentError(
            absl::StrCat(call, ": ", what, "[", i, "] = ", blocks[i], " vs layout.num_slots ", n));
      }
    }
    absl::flat_hash_set<uint32_t> seen;
    seen.reserve(blocks.size());
    for (size_t i = 0; i < blocks.size(); ++i) {
      if (!seen.insert(blocks[i]).second) {
        return absl::InvalidArgumentError(
            absl::StrCat(call, ": ", what, "[", i, "] = ", blocks[i], " repeats"));
      }
    }
    return absl::OkStatus();
  }

  static absl::Status CheckKeys(const char* call, std::span<const BlockKey> keys, uint32_t first) {
    if (first > keys.size()) {
      return absl::InvalidArgumentError(
          absl::StrCat(call, ": first = ", first, " vs ", keys.size(), " keys"));
    }
    for (size_t i = 0; i < keys.size(); ++i) {
      if (keys[i] == kRootKey) {
        return absl::InvalidArgumentError(absl::StrCat(call, ": keys[", i, "] is the root key"));
      }
    }
    return absl::OkStatus();
  }

  absl::StatusOr<std::shared_ptr<DeviceEvent>> EngineEventFor(const char* call, void* event) {
    if (event == nullptr) return std::shared_ptr<DeviceEvent>();
    if (!native_events_) {
      return absl::InvalidArgumentError(
          absl::StrCat(call,
                       ": a ready event on the emulated device, which has no native events (pass "
                       "nullptr once the bytes are complete)"));
    }
    return std::shared_ptr<DeviceEvent>(std::make_shared<EngineEvent>(event));
  }

  absl::StatusOr<LookupResult> Lookup(std::span<const BlockKey> keys, uint32_t first,
                                      const LookupOptions& options) {
    KVTIER_RETURN_IF_ERROR(CheckKeys("Connector::Lookup", keys, first));
    MatchResult m;
    {
      MutexLock lock(&index().mu());
      m = index().MatchLocked(keys, options.touch);
    }
    const uint32_t local = m.size();
    bool pending = false;
    if (local < keys.size() && store_tier_ == Tier::kRemote) {
      if (options.wait_for_store) {
        core_->storage_.FindPrefix(keys, &m);
      } else {
        pending = !TakeProbe(keys, &m);
      }
      if (options.touch && m.size() > local) {
        MutexLock lock(&index().mu());
        index().NoteStoreHitsLocked(m.size() - local);
      }
    }
    LookupResult r;
    r.pending = pending;
    if (m.size() > first) {
      r.blocks = m.size() - first;
      r.tiers.assign(m.tiers.begin() + first, m.tiers.end());
    }
    return r;
  }

  absl::StatusOr<std::shared_ptr<TransferState>> Load(std::span<const BlockKey> keys,
                                                      uint32_t first, std::span<const uint32_t> dst,
                                                      uint64_t request_id) {
    const uint64_t start = MonotonicNanos();
    KVTIER_RETURN_IF_ERROR(CheckKeys("Connector::Load", keys, first));
    KVTIER_RETURN_IF_ERROR(CheckBlocks("Connector::Load", "dst_blocks", keys.size() - first, dst));
    std::shared_ptr<TransferState> state;
    {
      MutexLock lock(&index().mu());
      KVTIER_ASSIGN_OR_RETURN(LoadPlan plan,
                              index().PlanEngineLoadLocked(keys, first, dst, store_tier_));
      KVTIER_ASSIGN_OR_RETURN(state, core_->device_mover_.StartLoadLocked(std::move(plan), start));
    }
    Track(request_id, Finished::Kind::kLoad, state);
    return state;
  }

  absl::StatusOr<std::shared_ptr<ConnectorStore>> BeginStore(std::span<const BlockKey> keys,
                                                             uint32_t first,
                                                             std::span<const uint32_t> src,
                                                             uint64_t request_id) {
    const uint64_t start = MonotonicNanos();
    KVTIER_RETURN_IF_ERROR(CheckKeys("Connector::Store", keys, first));
    KVTIER_RETURN_IF_ERROR(CheckBlocks("Connector::Store", "src_blocks", keys.size() - first, src));
    auto store = std::make_shared<ConnectorStore>();
    {
      MutexLock lock(&index().mu());
      uint32_t skipped = 0;
      KVTIER_ASSIGN_OR_RETURN(
          std::vector<Move> moves,
          index().PlanEngineStoreLocked(keys, first, src, &skipped, &store->unstored));
      core_->storage_.StartWritesLocked();  // host room made by write-back
      store->job = core_->device_mover_.BeginStoreLocked(std::move(moves), start);
    }
    Track(request_id, Finished::Kind::kStore, store->job->state);
    return store;
  }

  absl::Status SaveLayers(ConnectorStore& store, uint32_t layer, uint32_t end, void* event,
                          const char* call) {
    KVTIER_ASSIGN_OR_RETURN(std::shared_ptr<DeviceEvent> after, EngineEventFor(call, event));
    const uint32_t layers = static_cast<uint32_t>(core_->options_.layout.layers.size());
    MutexLock lock(&index().mu());
    DeviceMover::StoreJob& job = *store.job;
    if (layer >= layers) {
      return absl::OutOfRangeError(
          absl::StrCat(call, ": layer ", layer, " vs num_layers=", layers));
    }
    // Nothing to copy (every key cached already): the engine saves its layers as always, and
    // each call is done at once.
    if (job.moves.empty()) return absl::OkStatus();
    if (layer != job.next_layer) {
      return absl::FailedPreconditionError(
          absl::StrCat(call, ": layer ", layer, " vs the next unsaved layer ", job.next_layer,
                       job.next_layer == layers ? " (every layer is saved)" : ""));
    }
    return core_->device_mover_.SaveLayersLocked(job, end, std::move(after));
  }

  uint32_t LayersSaved(const ConnectorStore& store) {
    MutexLock lock(&index().mu());
    return store.job->next_layer;
  }
  bool AllSaved(const ConnectorStore& store) {
    MutexLock lock(&index().mu());
    return store.job->ended;
  }
  void Abandon(ConnectorStore& store) {
    MutexLock lock(&index().mu());
    core_->device_mover_.AbandonStoreLocked(*store.job);
  }

  std::vector<Finished> TakeFinished() {
    std::vector<Finished> out;
    MutexLock lock(&tracked_mu_);
    auto done = [&](const Tracked& t) {
      if (!t.state->Poll()) return false;
      out.push_back(
          Finished{.request_id = t.request_id,
                   .kind = t.kind,
                   .status = t.state->status(),
                   .blocks = t.kind == Finished::Kind::kLoad ? t.state->blocks : t.state->promoted,
                   .blocks_loaded = t.state->blocks_loaded()});
      return true;
    };
    tracked_.erase(std::remove_if(tracked_.begin(), tracked_.end(), done), tracked_.end());
    return out;
  }

 private:
  struct Tracked {
    uint64_t request_id;
    Finished::Kind kind;
    std::shared_ptr<TransferState> state;
  };
  void Track(uint64_t request_id, Finished::Kind kind, std::shared_ptr<TransferState> state) {
    if (request_id == 0) return;
    MutexLock lock(&tracked_mu_);
    tracked_.push_back({request_id, kind, std::move(state)});
  }

  // ---- The store probe for Lookup(wait_for_store = false) ----
  // A chain is named by its last key (chained hashes: it determines the whole chain). A probe
  // answers which keys past `from` (the local prefix when asked) the store holds.
  struct Probe {
    std::vector<BlockKey> keys;
    uint32_t from = 0;
    bool done = false;
    uint32_t end = 0;  // keys [from, end) are in the store
    std::vector<Tier> tiers;
  };
  static constexpr size_t kMaxProbes = 4096;

  // True when the store's answer for `keys` is in: *m (the local prefix) is extended by it.
  // Else starts a probe (unless one runs) and returns false.
  bool TakeProbe(std::span<const BlockKey> keys, MatchResult* m) {
    const BlockKey name = keys.back();
    const uint32_t local = m->size();
    MutexLock lock(&probe_mu_);
    auto it = probes_.find(name);
    if (it != probes_.end()) {
      Probe& p = it->second;
      if (!p.done) return false;
      const bool usable = p.from <= local && p.keys.size() == keys.size();
      if (usable) {
        for (uint32_t i = local; i < p.end; ++i) {
          m->keys.push_back(keys[i]);
          m->tiers.push_back(Tier::kRemote);
        }
      }
      probes_.erase(it);
      if (usable) return true;
    }
    if (probes_.size() >= kMaxProbes) {
      // Answers nobody came back for: drop the finished ones; still full, answer local only.
      absl::erase_if(probes_, [](const auto& kv) { return kv.second.done; });
      if (probes_.size() >= kMaxProbes) return true;
    }
    Probe p;
    p.keys.assign(keys.begin(), keys.end());
    p.from = local;
    probes_.emplace(name, std::move(p));
    queue_.push_back(name);
    probe_cv_.SignalAll();
    return false;
  }

  void ProbeLoop() {
    MutexLock lock(&probe_mu_);
    for (;;) {
      while (queue_.empty() && !stop_) probe_cv_.Wait(&probe_mu_);
      if (stop_) return;
      const BlockKey name = queue_.front();
      queue_.pop_front();
      auto it = probes_.find(name);
      if (it == probes_.end()) continue;
      MatchResult m;
      m.keys.assign(it->second.keys.begin(), it->second.keys.begin() + it->second.from);
      m.tiers.assign(it->second.from, Tier::kHost);
      const std::vector<BlockKey> keys = it->second.keys;
      probe_mu_.Unlock();
      core_->storage_.FindPrefix(keys, &m);  // waits for the network, without locks
      probe_mu_.Lock();
      it = probes_.find(name);
      if (it != probes_.end()) {
        it->second.done = true;
        it->second.end = m.size();
      }
    }
  }

  std::unique_ptr<Cache::Core> core_;
  const Tier store_tier_;     // Tier::kRemote when configured, else kDevice (none)
  const bool native_events_;  // the device waits on engine CUDA events

  Mutex tracked_mu_;
  std::vector<Tracked> tracked_ ABSL_GUARDED_BY(tracked_mu_);

  Mutex probe_mu_;
  CondVar probe_cv_;
  bool stop_ ABSL_GUARDED_BY(probe_mu_) = false;
  absl::flat_hash_map<BlockKey, Probe> probes_ ABSL_GUARDED_BY(probe_mu_);
  std::deque<BlockKey> queue_ ABSL_GUARDED_BY(probe_mu_);
  std::thread prober_;
};

}  // namespace internal

using internal::MutexLock;

// ---- StoreHandle ----

StoreHandle::StoreHandle(StoreHandle&& other) noexcept
    : connector_(std::exchange(other.connector_, nullptr)), store_(std::move(other.store_)) {}

StoreHandle& StoreHandle::operator=(StoreHandle&& other) noexcept {
  if (this != &other) {
    Reset();
    connector_ = std::exchange(other.connector_, nullptr);
    store_ = std::move(other.store_);
  }
  return *this;
}

StoreHandle::~StoreHandle() { Reset(); }

void StoreHandle::Reset() {
  if (store_ != nullptr) {
    connector_->impl_->Abandon(*store_);  // no-op once every layer was enqueued
    store_->job->state->Wait().IgnoreError();
  }
  store_.reset();
  connector_ = nullptr;
}

uint32_t StoreHandle::blocks() const {
  return store_ == nullptr ? 0 : static_cast<uint32_t>(store_->job->state->promoted);
}
uint32_t StoreHandle::unstored() const { return store_ == nullptr ? 0 : store_->unstored; }

absl::Status StoreHandle::SaveLayer(uint32_t layer, void* ready_event) {
  if (store_ == nullptr)
    return absl::FailedPreconditionError("StoreHandle::SaveLayer: empty handle");
  return connector_->impl_->SaveLayers(*store_, layer, layer + 1, ready_event,
                                       "StoreHandle::SaveLayer");
}

absl::Status StoreHandle::SaveAll(void* ready_event) {
  if (store_ == nullptr) return absl::FailedPreconditionError("StoreHandle::SaveAll: empty handle");
  const uint32_t saved = layers_saved();
  const uint32_t layers = static_cast<uint32_t>(connector_->options().layout.layers.size());
  if (saved == layers) return absl::OkStatus();
  return connector_->impl_->SaveLayers(*store_, saved, layers, ready_event, "StoreHandle::SaveAll");
}

uint32_t StoreHandle::layers_saved() const {
  return store_ == nullptr ? 0 : connector_->impl_->LayersSaved(*store_);
}

absl::Status StoreHandle::Wait() {
  if (store_ == nullptr) return absl::FailedPreconditionError("StoreHandle::Wait: empty handle");
  if (!connector_->impl_->AllSaved(*store_)) {
    return absl::FailedPreconditionError(
        absl::StrCat("StoreHandle::Wait: only ", layers_saved(), " of ",
                     static_cast<uint32_t>(connector_->options().layout.layers.size()),
                     " layers saved: save the rest first"));
  }
  return store_->job->state->Wait();
}

bool StoreHandle::Poll() const { return store_ != nullptr && store_->job->state->Poll(); }

absl::Status StoreHandle::status() const {
  if (store_ == nullptr) return absl::FailedPreconditionError("StoreHandle::status: empty handle");
  return store_->job->state->status();
}

// ---- Connector ----

Connector::Connector(std::unique_ptr<internal::ConnectorImpl> impl) : impl_(std::move(impl)) {}
Connector::~Connector() = default;

absl::StatusOr<std::unique_ptr<Connector>> Connector::Create(const Options& options) {
  KVTIER_RETURN_IF_ERROR(options.Validate());
  KVTIER_ASSIGN_OR_RETURN(std::unique_ptr<internal::Device> device, internal::MakeDevice(options));
  return internal::CreateConnector(options, std::move(device));
}

absl::StatusOr<std::unique_ptr<Connector>> internal::CreateConnector(const Options& options,
                                                                     std::unique_ptr<Device> device,
                                                                     FaultInjector* disk_faults) {
  KVTIER_RETURN_IF_ERROR(options.Validate());
  if (options.device.capacity_slots != 0) {
    return absl::InvalidArgumentError(
        "Options.device.capacity_slots: set for a Connector, whose device blocks are the "
        "engine's (leave it 0)");
  }
  if (options.host.capacity_bytes == 0) {
    return absl::InvalidArgumentError(
        "Options.host.capacity_bytes: 0, but a Connector needs the host tier (its loads and "
        "stores pass through host slots)");
  }
  KVTIER_ASSIGN_OR_RETURN(std::unique_ptr<Cache::Core> core,
                          CreateCore(options, std::move(device), disk_faults,
                                     /*engine_device=*/true));
  return ConnectorImpl::Wrap(std::make_unique<ConnectorImpl>(std::move(core)));
}

absl::StatusOr<LookupResult> Connector::Lookup(std::span<const BlockKey> keys, uint32_t first,
                                               LookupOptions options) {
  return impl_->Lookup(keys, first, options);
}

absl::StatusOr<Transfer> Connector::Load(std::span<const BlockKey> keys, uint32_t first,
                                         std::span<const uint32_t> dst_blocks,
                                         uint64_t request_id) {
  KVTIER_ASSIGN_OR_RETURN(auto state, impl_->Load(keys, first, dst_blocks, request_id));
  return Transfer(std::move(state));
}

absl::StatusOr<StoreHandle> Connector::BeginStore(std::span<const BlockKey> keys, uint32_t first,
                                                  std::span<const uint32_t> src_blocks,
                                                  uint64_t request_id) {
  KVTIER_ASSIGN_OR_RETURN(auto store, impl_->BeginStore(keys, first, src_blocks, request_id));
  return StoreHandle(this, std::move(store));
}

absl::StatusOr<StoreHandle> Connector::Store(std::span<const BlockKey> keys, uint32_t first,
                                             std::span<const uint32_t> src_blocks,
                                             void* ready_event, uint64_t request_id) {
  // Checked before any host slot is taken: a bad event changes nothing.
  KVTIER_RETURN_IF_ERROR(impl_->EngineEventFor("Connector::Store", ready_event).status());
  KVTIER_ASSIGN_OR_RETURN(StoreHandle handle, BeginStore(keys, first, src_blocks, request_id));
  KVTIER_RETURN_IF_ERROR(handle.SaveAll(ready_event));
  return handle;
}

std::vector<Finished> Connector::TakeFinished() { return impl_->TakeFinished(); }

absl::Status Connector::Hint(std::span<const BlockKey> keys, std::span<const double> scores) {
  return impl_->core().Hint(keys, scores);
}

absl::Status Connector::Hint(std::span<const BlockKey> keys, std::span<const double> scores,
                             absl::Duration duration) {
  return impl_->core().Hint(keys, scores, duration);
}

absl::StatusOr<ManageResult> Connector::Remove(std::span<const BlockKey> keys) {
  return impl_->core().Remove(keys);
}

absl::StatusOr<ManageResult> Connector::Clear(Tier tier) {
  if (tier == Tier::kDevice) {
    return absl::InvalidArgumentError(
        "Connector::Clear: the device tier is the engine's; clear host or disk");
  }
  return impl_->core().Clear(tier);
}

absl::StatusOr<ManageResult> Connector::Pin(std::span<const BlockKey> keys,
                                            absl::Duration duration) {
  return impl_->core().Pin(keys, duration);
}

absl::StatusOr<ManageResult> Connector::Unpin(std::span<const BlockKey> keys) {
  return impl_->core().Unpin(keys);
}

absl::StatusOr<Transfer> Connector::Prefetch(std::span<const BlockKey> keys) {
  KVTIER_ASSIGN_OR_RETURN(auto state, impl_->core().CheckedPrefetch(keys));
  return Transfer(std::move(state));
}

std::vector<KvEvent> Connector::TakeEvents(size_t max_events) {
  return impl_->core().TakeEvents(max_events);
}

CacheStats Connector::Stats() const { return impl_->core().Stats(); }

const Options& Connector::options() const { return impl_->options(); }

absl::Status Connector::CheckInvariants() const {
  MutexLock lock(&impl_->index().mu());
  return impl_->index().CheckInvariantsLocked();
}

size_t Connector::engine_blocks_busy() const {
  MutexLock lock(&impl_->index().mu());
  return impl_->index().engine_blocks_busy_locked();
}

}  // namespace kvtier
