// CreateCache: builds a Cache over a given Device. Cache::Create() picks the Device from
// Options.backend and calls this; tests pass an EmulatedDevice they keep a pointer to (to inject
// faults), and the CUDA backend plugs in here.
#ifndef KVTIER_LIB_CACHE_FACTORY_H_
#define KVTIER_LIB_CACHE_FACTORY_H_

#include <cstdint>
#include <functional>
#include <memory>
#include <string>

#include "absl/status/statusor.h"
#include "kvtier/cache.h"
#include "kvtier/connector.h"
#include "lib/tiers/io_ring.h"
#include "lib/transfer/device.h"

namespace kvtier::internal {

// Validates `options` (ignoring options.backend) and builds the cache on `device`. `disk_faults`
// (tests; may be null, not owned, outlives the cache) injects faults into the disk tier's I/O.
// `clock` (tests; null: the steady clock): nanoseconds on a monotonic clock, for the deadlines of
// Pin and timed Hints; called under the cache's lock, from any thread.
absl::StatusOr<std::unique_ptr<Cache>> CreateCache(const Options& options,
                                                   std::unique_ptr<Device> device,
                                                   FaultInjector* disk_faults = nullptr,
                                                   std::function<uint64_t()> clock = nullptr);

// What a Cache or a Connector is made of. `engine_device`: the device tier is the engine's
// (Connector): the Index gets no device slots.
absl::StatusOr<std::unique_ptr<Cache::Core>> CreateCore(const Options& options,
                                                        std::unique_ptr<Device> device,
                                                        FaultInjector* disk_faults,
                                                        bool engine_device,
                                                        std::function<uint64_t()> clock = nullptr);
// Connector::Create over a given Device (tests inject faults through it and `disk_faults`).
absl::StatusOr<std::unique_ptr<Connector>> CreateConnector(const Options& options,
                                                           std::unique_ptr<Device> device,
                                                           FaultInjector* disk_faults = nullptr);
// The Device for Options.backend (Cache::Create's choice).
absl::StatusOr<std::unique_ptr<Device>> MakeDevice(const Options& options);
// The middle of the cache's remote keys, "<scope>.<Options::Fingerprint() in 16 hex digits>"
// (RemoteTierConfig::name_space): caches share blocks only when scope, layout shape and shard
// identity are all equal.
std::string RemoteNameSpace(const Options& options);

}  // namespace kvtier::internal

#endif  // KVTIER_LIB_CACHE_FACTORY_H_
