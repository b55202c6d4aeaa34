#include "lib/cache_core.h"

#include <algorithm>
#include <atomic>
#include <cassert>
#include <optional>
#include <type_traits>
#include <utility>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/time/time.h"
#include "lib/codec/codec.h"
#include "lib/common/status_macros.h"

namespace kvtier {

using internal::MutexLock;

namespace {

// Options.host.codec's codec; CreateCore has validated the options.
std::optional<internal::BlockCodec> HostCodecOrNone(const Options& options) {
  absl::StatusOr<std::optional<internal::BlockCodec>> codec = internal::HostCodecOf(options);
  return codec.ok() ? *std::move(codec) : std::nullopt;
}

}  // namespace

Cache::Core::Core(const Options& options, std::unique_ptr<internal::Device> device,
                  std::unique_ptr<internal::HostPool> host,
                  std::unique_ptr<internal::DiskTier> disk,
                  std::unique_ptr<internal::StorageTier> remote, internal::IndexConfig config)
    : options_(options),
      device_(std::move(device)),
      host_(std::move(host)),
      index_(std::move(config)),
      storage_(index_, *host_, internal::StoredBlockBytes(options), std::move(disk),
               std::move(remote)),
      device_mover_(options_.layout, options.backend == DeviceBackend::kMetadataOnly, index_,
                    *device_, *host_, storage_, HostCodecOrNone(options)) {
  const std::vector<std::string> tenants = options_.Tenants();
  for (size_t i = 0; i < tenants.size(); ++i) tenant_ids_[tenants[i]] = static_cast<uint8_t>(i + 1);
}

absl::StatusOr<uint8_t> Cache::Core::TenantId(absl::string_view tenant) const {
  if (tenant.empty()) return 0;
  auto it = tenant_ids_.find(tenant);
  if (it == tenant_ids_.end()) {
    return absl::InvalidArgumentError(
        absl::StrCat("SetTenant: tenant '", tenant, "' vs the ", tenant_ids_.size(),
                     " named in Options.host.tenant_shares and Options.disk.tenant_shares"));
  }
  return it->second;
}

Cache::Core::~Core() {
  // Callbacks reference this object: drain the tiers below (their reads feed device streams), the
  // device, then the tiers again (device callbacks may have started writes).
  storage_.Drain();
  device_->Synchronize().IgnoreError();
  storage_.Drain();
  internal::DiskTier* disk = storage_.disk();
  if (disk != nullptr && options_.disk.flush_on_close) Flush();
  {
    // Remote write-back publishes a block when the host evicts it: what the host still holds
    // would be lost to the other caches. Publish it now (the blocks the store is known to hold
    // are skipped); each batch is bounded by Options.remote's timeout, and a store that cannot
    // be reached fails its batches at once (reconnect backoff).
    MutexLock lock(&index_.mu());
    if (index_.FlushHostToStoreLocked() > 0) storage_.StartWritesLocked();
  }
  storage_.Drain();
  {
    // Wipes of slots freed since the last call (by copies that failed), before the manifest.
    MutexLock lock(&index_.mu());
    storage_.StartWritesLocked();
  }
  storage_.Drain();
  MutexLock lock(&index_.mu());
  assert(index_.live_leases_locked() == 0 && "destroy every DeviceLease before its Cache");
  if (disk != nullptr) {
    // Clean shutdown: the manifest lets the next Create() skip the trailer scan.
    std::vector<internal::StoredBlock> live;
    for (const internal::RestoredBlock& b : index_.ListLocked(Tier::kDisk)) {
      live.push_back({b.slot, b.key, b.parent});
    }
    disk->Close(live).IgnoreError();  // best effort: without it the next start scans
  }
}

absl::Status Cache::Core::Allocate(Reserve reserve) {
  for (int attempt = 0;; ++attempt) {
    std::vector<internal::Move> demotions;
    std::vector<SlotId> quarantine;
    absl::Status reserved;
    uint64_t evictions_before = 0;
    {
      MutexLock lock(&index_.mu());
      evictions_before = index_.EvictionsLocked();
      reserved = reserve(&demotions, &quarantine);
    }
    const absl::Status s = FinishAllocation(reserved, std::move(demotions), std::move(quarantine));
    if (s.ok() || s.code() != absl::StatusCode::kResourceExhausted ||
        !RetryAllocation(attempt, evictions_before)) {
      return s;
    }
  }
}

absl::Status Cache::Core::FinishAllocation(const absl::Status& reserved,
                                           std::vector<internal::Move> demotions,
                                           std::vector<SlotId> quarantine) {
  std::shared_ptr<internal::DeviceEvent> write_back;
  {
    MutexLock lock(&index_.mu());
    storage_.StartWritesLocked();
    if (!demotions.empty()) {
      auto event = device_mover_.EnqueueDemotionsLocked(std::move(demotions));
      if (event.ok()) write_back = *event;
    }
  }
  // The victims' bytes must reach the host before anyone may overwrite their slots.
  if (write_back != nullptr) write_back->Wait().IgnoreError();
  if (!quarantine.empty()) {
    MutexLock lock(&index_.mu());
    index_.FreeQuarantinedLocked(quarantine);
  }
  return reserved;
}

void Cache::Core::DrainDemotions() {
  device_mover_.DrainDeviceToHost();
  // Publications the copies just started hold their host copies pinned until sent, and until a
  // write-back ends its disk slot is Filling: either way no victim for the next attempt yet.
  storage_.WaitForWrites();
}

// A single attempt can only demote as far as the slots it finds Ready: the host and disk slots it
// takes for write-backs stay Filling (not evictable) until it has finished, so with nothing pinned
// it can fail where the next attempt, starting from the written-back state, succeeds. So: retry
// once after draining, and again for as long as the failed attempt evicted something (each such
// attempt moves blocks down the tiers or drops them, a bounded amount), never more than
// kMaxAllocationAttempts in all.
bool Cache::Core::RetryAllocation(int attempt, uint64_t evictions_before) {
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

void Cache::Core::Flush() {
  // In rounds: the device blocks the host has room for go to the host, then every host block
  // without a disk copy gets one; once written, those host blocks can make room for the next
  // round. Each round copies at least one device block that had no other copy, so this ends; it
  // ends early when a round copies none (host full of blocks that cannot leave, or disk full).
  // A failed copy ends it too (a failing device would fail every round).
  SlotId next = 0;
  for (;;) {
    std::shared_ptr<internal::DeviceEvent> demoted;
    bool any = false;
    {
      MutexLock lock(&index_.mu());
      std::vector<internal::Move> demotions = index_.FlushDeviceLocked(next);
      any = !demotions.empty();
      storage_.StartWritesLocked();  // host room made by write-back
      if (any) {
        auto event = device_mover_.EnqueueDemotionsLocked(std::move(demotions));
        if (event.ok()) {
          demoted = *event;
        } else {
          any = false;
        }
      }
    }
    if (demoted != nullptr && !demoted->Wait().ok()) any = false;
    device_->Synchronize().IgnoreError();  // the demotions' callbacks made the host copies Ready
    {
      MutexLock lock(&index_.mu());
      index_.FlushHostLocked();
      storage_.StartWritesLocked();
    }
    storage_.Drain();
    if (!any) return;
  }
}

void Cache::Core::Restore() {
  internal::DiskTier* disk = storage_.disk();
  if (disk == nullptr) return;
  std::vector<internal::RestoredBlock> blocks;
  for (const internal::StoredBlock& b : disk->recovered()) {
    blocks.push_back({b.key, b.parent, b.slot});
  }
  MutexLock lock(&index_.mu());
  restored_ = index_.RestoreLocked(Tier::kDisk, blocks);
  restore_dropped_ = blocks.size() - restored_;
}

struct Cache::Core::PrefetchReads {
  std::vector<internal::Move> reads;
  std::vector<uint8_t> failed;       // read i failed (set before its share of `pending` is given)
  std::vector<uint8_t> source_lost;  // ... because its copy below failed to verify
  // Reads not yet ended, plus one for Prefetch itself until it has started them all: whoever
  // takes it to 0 reports them, so a read that ends during StartReadsLocked (under the lock, on
  // this thread) never does.
  std::atomic<size_t> pending{0};
};

absl::StatusOr<std::shared_ptr<internal::TransferState>> Cache::Core::Prefetch(
    std::span<const BlockKey> keys) {
  MatchResult m;
  {
    MutexLock lock(&index_.mu());
    m = index_.CachedPrefixLocked(keys);
  }
  // Past the local prefix: what a store holds. It may wait for the network: without the lock.
  if (m.size() < keys.size()) storage_.FindPrefix(keys, &m);
  MutexLock lock(&index_.mu());
  auto ctx = std::make_shared<PrefetchReads>();
  const uint32_t blocks = index_.PlanPrefetchLocked(m, &ctx->reads);
  storage_.StartWritesLocked();  // the host victims that made room go below first
  const size_t n = ctx->reads.size();
  auto state = std::make_shared<internal::TransferState>(blocks, static_cast<uint32_t>(n),
                                                         /*num_layers=*/0);
  if (n == 0) {
    state->FinishNow();
    return state;
  }
  ctx->failed.assign(n, 0);
  ctx->source_lost.assign(n, 0);
  ctx->pending.store(n + 1);
  std::vector<std::shared_ptr<internal::HostEvent>> read_done;  // not needed: no copy follows
  storage_.StartReadsLocked(
      ctx->reads,
      [this, ctx, state](size_t i, const absl::Status& st) {
        if (!st.ok()) {
          ctx->failed[i] = 1;
          ctx->source_lost[i] = st.code() == absl::StatusCode::kDataLoss;
          state->RecordError(st);
        }
        // The last read to end, on a tier's thread (Prefetch still holds its share while it may
        // run here under the lock).
        if (ctx->pending.fetch_sub(1) == 1) {
          MutexLock finish(&index_.mu());
          FinishPrefetchLocked(*ctx, *state);
        }
      },
      &read_done);
  if (ctx->pending.fetch_sub(1) == 1) FinishPrefetchLocked(*ctx, *state);  // all ended already
  return state;
}

void Cache::Core::FinishPrefetchLocked(const PrefetchReads& ctx, internal::TransferState& state) {
  // Each read's outcome stands on its own: a read past a failed one that verified stays on the
  // host (reachable once the failed block is cached again). blocks_loaded: the chain's blocks
  // before the first failed read.
  uint32_t loaded = state.blocks;
  for (size_t i = 0; i < ctx.reads.size(); ++i) {
    index_.FinishPrefetchLocked(ctx.reads[i], ctx.failed[i] == 0, ctx.source_lost[i] != 0);
    if (ctx.failed[i] != 0) loaded = std::min(loaded, ctx.reads[i].position);
  }
  state.Finish(loaded);  // no writes to start: a prefetch's outcome decides none
}

CacheStats Cache::Core::Stats() const {
  MutexLock lock(&index_.mu());
  CacheStats stats;
  index_.FillStatsLocked(&stats);
  storage_.FillStats(&stats);
  device_mover_.FillStats(&stats);
  stats.disk_recovered_blocks = restored_;
  stats.disk_recovery_dropped += restore_dropped_;
  stats.device.bytes_in = stats.bytes_h2d;
  stats.device.bytes_out = stats.bytes_d2h;
  stats.host.bytes_in = stats.bytes_d2h + stats.bytes_disk_read;
  stats.host.bytes_out = stats.bytes_h2d + stats.bytes_disk_written;
  stats.disk.bytes_in = stats.bytes_disk_written;
  stats.disk.bytes_out = stats.bytes_disk_read;
  return stats;
}

// ---- Management (the Index's side: lib/index/index_manage.cc) ----

namespace {

// Longest deadline a hold or a timed hint may have.
constexpr absl::Duration kMaxDuration = absl::Hours(24);

absl::Status CheckDuration(const char* call, absl::Duration d) {
  if (d <= absl::ZeroDuration() || d > kMaxDuration) {
    return absl::InvalidArgumentError(absl::StrCat(call, ": duration ", absl::FormatDuration(d),
                                                   " vs (0, ", absl::FormatDuration(kMaxDuration),
                                                   "]"));
  }
  return absl::OkStatus();
}

absl::Status CheckNoRoot(const char* call, std::span<const BlockKey> keys) {
  for (size_t i = 0; i < keys.size(); ++i) {
    if (keys[i] == kRootKey) {
      return absl::InvalidArgumentError(absl::StrCat(call, ": keys[", i, "] is the root key"));
    }
  }
  return absl::OkStatus();
}

ManageResult ToResult(const internal::Index::ManageCounts& c) {
  return ManageResult{.done = c.done,
                      .not_found = c.not_found,
                      .busy = c.busy,
                      .kept_for_children = c.kept_for_children};
}

absl::Status CheckHintSizes(std::span<const BlockKey> keys, std::span<const double> scores) {
  if (keys.size() != scores.size()) {
    return absl::InvalidArgumentError(
        absl::StrCat("Hint: ", keys.size(), " keys vs ", scores.size(), " scores"));
  }
  return absl::OkStatus();
}

}  // namespace

absl::Status Cache::Core::Hint(std::span<const BlockKey> keys, std::span<const double> scores) {
  KVTIER_RETURN_IF_ERROR(CheckHintSizes(keys, scores));
  MutexLock lock(&index_.mu());
  index_.HintLocked(keys, scores);
  return absl::OkStatus();
}

absl::Status Cache::Core::Hint(std::span<const BlockKey> keys, std::span<const double> scores,
                               absl::Duration duration) {
  KVTIER_RETURN_IF_ERROR(CheckHintSizes(keys, scores));
  KVTIER_RETURN_IF_ERROR(CheckDuration("Hint", duration));
  const uint64_t deadline = index_.Now() + absl::ToInt64Nanoseconds(duration);
  MutexLock lock(&index_.mu());
  index_.HintUntilLocked(keys, scores, deadline);
  return absl::OkStatus();
}

absl::StatusOr<ManageResult> Cache::Core::Remove(std::span<const BlockKey> keys) {
  KVTIER_RETURN_IF_ERROR(CheckNoRoot("Remove", keys));
  MutexLock lock(&index_.mu());
  const internal::Index::ManageCounts counts = index_.RemoveLocked(keys);
  storage_.StartWritesLocked();  // wipes the slots freed (Options.*.wipe_on_free)
  return ToResult(counts);
}

absl::StatusOr<ManageResult> Cache::Core::Clear(Tier tier) {
  // Read as its underlying type: a value outside the enum is the caller's mistake, not UB here.
  const auto t = static_cast<std::underlying_type_t<Tier>>(tier);
  if (t >= kNumTiers) {
    return absl::InvalidArgumentError(
        absl::StrCat("Clear: tier ", t, " (", TierName(tier),
                     ") vs device, host or disk; the remote store is shared with other caches"));
  }
  MutexLock lock(&index_.mu());
  const internal::Index::ManageCounts counts = index_.ClearTierLocked(tier);
  storage_.StartWritesLocked();  // wipes the slots freed (Options.*.wipe_on_free)
  return ToResult(counts);
}

absl::StatusOr<ManageResult> Cache::Core::Pin(std::span<const BlockKey> keys,
                                              absl::Duration duration) {
  KVTIER_RETURN_IF_ERROR(CheckDuration("Pin", duration));
  KVTIER_RETURN_IF_ERROR(CheckNoRoot("Pin", keys));
  const uint64_t deadline = index_.Now() + absl::ToInt64Nanoseconds(duration);
  MutexLock lock(&index_.mu());
  return ToResult(index_.HoldLocked(keys, deadline));
}

absl::StatusOr<ManageResult> Cache::Core::Unpin(std::span<const BlockKey> keys) {
  MutexLock lock(&index_.mu());
  return ToResult(index_.UnholdLocked(keys));
}

absl::StatusOr<std::shared_ptr<internal::TransferState>> Cache::Core::CheckedPrefetch(
    std::span<const BlockKey> keys) {
  KVTIER_RETURN_IF_ERROR(CheckNoRoot("Prefetch", keys));
  if (index_.capacity(Tier::kHost) == 0) {
    return absl::FailedPreconditionError(
        "Prefetch: no host tier to bring blocks to (Options.host.capacity_bytes is 0)");
  }
  return Prefetch(keys);
}

std::vector<KvEvent> Cache::Core::TakeEvents(size_t max_events) {
  std::vector<KvEvent> events;
  MutexLock lock(&index_.mu());
  index_.TakeEventsLocked(max_events, &events);
  return events;
}

}  // namespace kvtier
