// CreateCache: builds a Cache over a given Device. Cache::Create() picks the Device from
// Options.backend and calls this; tests pass an EmulatedDevice they keep a pointer to (to inject
// faults), and the CUDA backend plugs in here.
#ifndef KVTIER_LIB_CACHE_FACTORY_H_
#define KVTIER_LIB_CACHE_FACTORY_H_

#include <memory>

#include "absl/status/statusor.h"
#include "kvtier/cache.h"
#include "lib/transfer/device.h"

namespace kvtier::internal {

// Validates `options` (ignoring options.backend) and builds the cache on `device`.
absl::StatusOr<std::unique_ptr<Cache>> CreateCache(const Options& options,
                                                   std::unique_ptr<Device> device);

}  // namespace kvtier::internal

#endif  // KVTIER_LIB_CACHE_FACTORY_H_
