// CreateCache: builds a Cache over a given Device. Cache::Create() picks the Device from
// Options.backend and calls this; tests pass an EmulatedDevice they keep a pointer to (to inject
// faults), and the CUDA backend plugs in here.
#ifndef KVTIER_LIB_CACHE_FACTORY_H_
#define KVTIER_LIB_CACHE_FACTORY_H_

#include <cstdint>
#include <functional>
#include <memory>

#include "absl/status/statusor.h"
#include "kvtier/cache.h"
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

}  // namespace kvtier::internal

#endif  // KVTIER_LIB_CACHE_FACTORY_H_
