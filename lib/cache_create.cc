// Cache creation: the Device for Options.backend, then the tiers (host pool, disk, remote
// store), the policies and the Index, assembled into a Cache::Core.
#include <algorithm>
#include <chrono>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "kvtier/cache.h"
#include "lib/cache_core.h"
#include "lib/cache_factory.h"
#include "lib/codec/codec.h"
#include "lib/common/status_macros.h"
#include "lib/index/index.h"
#include "lib/tiers/disk_tier.h"
#include "lib/tiers/host_pool.h"
#include "lib/tiers/remote_tier.h"
#include "lib/transfer/device.h"
#include "lib/transfer/emulated_device.h"

#if KVTIER_HAVE_CUDA
#include "cuda/cuda_device.h"
#endif

namespace kvtier {

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

}  // namespace

absl::StatusOr<std::unique_ptr<internal::Device>> internal::MakeDevice(const Options& options) {
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

absl::StatusOr<std::unique_ptr<Cache>> Cache::Create(const Options& options) {
  KVTIER_RETURN_IF_ERROR(options.Validate());
  KVTIER_ASSIGN_OR_RETURN(std::unique_ptr<internal::Device> device, internal::MakeDevice(options));
  return internal::CreateCache(options, std::move(device));
}

namespace internal {

std::string RemoteNameSpace(const Options& options) {
  return absl::StrCat(options.remote.scope, ".",
                      absl::Hex(options.Fingerprint(), absl::kZeroPad16));
}

absl::StatusOr<std::unique_ptr<Cache>> CreateCache(const Options& options,
                                                   std::unique_ptr<Device> device,
                                                   FaultInjector* disk_faults,
                                                   std::function<uint64_t()> clock) {
  KVTIER_ASSIGN_OR_RETURN(std::unique_ptr<Cache::Core> core,
                          CreateCore(options, std::move(device), disk_faults,
                                     /*engine_device=*/false, std::move(clock)));
  return Cache::Core::Wrap(std::move(core));
}

absl::StatusOr<std::unique_ptr<Cache::Core>> CreateCore(const Options& options,
                                                        std::unique_ptr<Device> device,
                                                        FaultInjector* disk_faults,
                                                        bool engine_device,
                                                        std::function<uint64_t()> clock) {
  KVTIER_RETURN_IF_ERROR(options.Validate());
  if (device == nullptr) return absl::InvalidArgumentError("CreateCache: null device");
  const bool no_bytes = options.backend == DeviceBackend::kMetadataOnly;
  // Layout shape and shard identity: what tags every block that leaves the process.
  const uint64_t fingerprint = options.Fingerprint();
  const bool with_disk = options.disk.capacity_bytes > 0;
  IndexConfig config;
  const uint32_t device_slots = engine_device ? 0
                                : options.device.capacity_slots == 0
                                    ? options.layout.num_slots
                                    : options.device.capacity_slots;
  // A host codec (Options.host.codec): host slots, disk slots and remote values hold the encoded
  // block, which the device encodes and decodes (Device::EncodeToHost, DecodeFromHost).
  KVTIER_ASSIGN_OR_RETURN(const std::optional<BlockCodec> codec, HostCodecOf(options));
  const uint64_t block = StoredBlockBytes(options);
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
                                            .verify_threads = options.disk.verify_threads,
                                            .block_bytes = block,
                                            .layout_fingerprint = fingerprint,
                                            .reset_on_mismatch = options.disk.reset_on_mismatch,
                                            .allow_buffered = options.disk.allow_buffered,
                                            .injector = disk_faults},
                                           memory));
    disk_slots = disk->capacity_slots();
  }
  std::unique_ptr<RemoteTier> remote;
  if (!options.remote.nodes.empty()) {
    const RemoteTierOptions& r = options.remote;
    // The cluster's fields are assigned, not designated: at -O3 GCC 12 warns that the password
    // of a nested designated initializer "may be used uninitialized" (a false positive).
    RedisClusterConfig cluster;
    cluster.seeds = std::vector<std::string>(absl::StrSplit(r.nodes, ',', absl::SkipWhitespace()));
    cluster.password = r.password;
    cluster.connect_timeout = std::chrono::milliseconds(r.connect_timeout_ms);
    RemoteTierConfig rc{.cluster = std::move(cluster),
                        .name_space = RemoteNameSpace(options),
                        .block_bytes = block,
                        .layout_fingerprint = fingerprint,
                        .ttl_seconds = r.ttl_seconds,
                        .timeout = std::chrono::milliseconds(r.timeout_ms),
                        .match_budget = std::chrono::microseconds(r.match_budget_us),
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
  config.wipe_on_free[static_cast<int>(Tier::kHost)] = options.host.wipe_on_free;
  config.wipe_on_free[static_cast<int>(Tier::kDisk)] = options.disk.wipe_on_free;
  config.events_capacity = options.events.capacity;
  config.tokens_per_block = options.layout.tokens_per_block;
  config.clock = std::move(clock);
  config.host_write_through = options.host_write_through || remote_write_through;
  config.host_lossy = codec.has_value() && !no_bytes;  // device copies decoded from it are lossy
  if (remote != nullptr) {
    switch (options.remote.publish) {
      case RemotePublish::kWriteThrough:
        config.store_feed = IndexConfig::StoreFeed::kHostFills;
        break;
      case RemotePublish::kWriteBack:
        config.store_feed = IndexConfig::StoreFeed::kHostVictims;
        break;
      case RemotePublish::kNever:  // reads only: the store is sent nothing
        config.store_feed = IndexConfig::StoreFeed::kNone;
        break;
    }
  }
  struct TierPolicy {
    const char* path;
    const std::string* name;
    const PolicyParams* params;
  };
  const TierPolicy policies[kNumTiers] = {
      {"Options.device.policy", &options.device.policy, &options.device.policy_params},
      {"Options.host.policy", &options.host.policy, &options.host.policy_params},
      {"Options.disk.policy", &options.disk.policy, &options.disk.policy_params}};
  // PolicyContext::capacity_below_slots: the tiers under each one that its victims are written
  // back to (device -> host -> disk), none when demote_on_evict is off (every victim is dropped).
  const bool demote = options.demote_on_evict;
  const uint64_t below[kNumTiers] = {
      demote ? uint64_t{config.capacity_slots[1]} + config.capacity_slots[2] : 0,
      demote ? config.capacity_slots[2] : 0, 0};
  for (int t = 0; t < kNumTiers; ++t) {
    // A disabled tier's policy is never asked anything: its options are not checked (as in
    // Options::Validate), and it gets an empty lru.
    const bool enabled = config.capacity_slots[t] > 0;
    static const PolicyParams kNoParams;
    auto p = CreatePolicy(enabled ? *policies[t].name : "lru",
                          {.capacity_slots = config.capacity_slots[t],
                           .params = enabled ? *policies[t].params : kNoParams,
                           .capacity_below_slots = below[t]});
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
  // Tiers split by tenant: a quota and a policy instance per tenant (0: the default tenant).
  const std::vector<std::string> tenants = options.Tenants();
  for (int t : {static_cast<int>(Tier::kHost), static_cast<int>(Tier::kDisk)}) {
    const TenantShares& shares = t == static_cast<int>(Tier::kHost) ? options.host.tenant_shares
                                                                    : options.disk.tenant_shares;
    const uint32_t capacity = config.capacity_slots[t];
    if (shares.empty() || capacity == 0) continue;
    std::vector<uint32_t> quota(tenants.size() + 1, 0);
    uint64_t named = 0;
    for (size_t i = 0; i < tenants.size(); ++i) {
      auto it = shares.find(tenants[i]);
      double share = 0;  // a tenant without a share in this tier has none here
      if (it != shares.end() && absl::SimpleAtod(it->second, &share)) {
        quota[i + 1] = static_cast<uint32_t>(share * capacity);
        named += quota[i + 1];
      }
    }
    quota[0] = static_cast<uint32_t>(capacity - std::min<uint64_t>(named, capacity));
    config.tenant_policies[t].push_back(std::move(config.policies[t]));  // the default tenant's
    for (size_t i = 1; i < quota.size(); ++i) {
      auto p = CreatePolicy(*policies[t].name, {.capacity_slots = capacity,
                                                .params = *policies[t].params,
                                                .capacity_below_slots = below[t]});
      if (!p.ok()) return p.status();  // created once above with the same arguments
      config.tenant_policies[t].push_back(std::move(*p));
    }
    config.tenant_quota_slots[t] = std::move(quota);
  }
  auto core = std::make_unique<Cache::Core>(options, std::move(device), std::move(host),
                                            std::move(disk), std::move(remote), std::move(config));
  core->Restore();
  return core;
}

}  // namespace internal

}  // namespace kvtier
