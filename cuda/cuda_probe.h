// CudaDeviceCount: how many CUDA devices this process can use.
//
// Any CUDA error (no driver, cudaErrorInsufficientDriver on a machine with the toolkit but no GPU,
// no device) means "no device": the count is 0 and `why` says what CUDA answered. This is what
// DeviceBackend::kAuto and the [cuda] tests decide on.
#ifndef KVTIER_CUDA_CUDA_PROBE_H_
#define KVTIER_CUDA_CUDA_PROBE_H_

#include <string>

namespace kvtier::internal {

int CudaDeviceCount(std::string* why);

}  // namespace kvtier::internal

#endif  // KVTIER_CUDA_CUDA_PROBE_H_
