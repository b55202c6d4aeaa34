// Launchers for kvtier's two kernels (copy_kernels.cu): the segment gather/scatter and the wait on
// a host-written flag. Host code includes this header; only copy_kernels.cu is compiled by nvcc.
//
// Each launcher enqueues on `stream` and returns cudaGetLastError() after the launch, so a bad
// configuration is reported at once (asynchronous faults surface on the stream's events).
#ifndef KVTIER_CUDA_COPY_KERNELS_H_
#define KVTIER_CUDA_COPY_KERNELS_H_

#include <cuda_runtime_api.h>

#include <cstdint>

namespace kvtier::internal {

// One contiguous copy. Both pointers must be readable/writable by the device: device memory, or
// the device address of mapped pinned host memory (cudaHostGetDevicePointer).
struct GatherRegion {
  void* dst = nullptr;
  const void* src = nullptr;
  uint64_t bytes = 0;
};

// Regions per launch: they travel by value as the kernel's parameter (24 B each; CUDA 12.1+ allows
// 32764 B of parameters on sm_70+), so no descriptor buffer has to outlive the launch.
inline constexpr uint32_t kMaxGatherRegions = 512;

// Copies regions[0..n) (n <= kMaxGatherRegions) in one launch. Regions must not overlap each other.
// `max_bytes`: the largest region, which sizes the grid.
cudaError_t LaunchGather(const GatherRegion* regions, uint32_t n, uint64_t max_bytes,
                         cudaStream_t stream);

// Enqueues a one-thread kernel that returns once *flag >= value (read with system-scope acquire),
// so work enqueued after it waits for a host-side completion (a disk read) without a host thread
// blocking in a CUDA callback. `flag`: device address of a mapped pinned host word.
cudaError_t LaunchWaitFlag(const uint32_t* flag, uint32_t value, cudaStream_t stream);

}  // namespace kvtier::internal

#endif  // KVTIER_CUDA_COPY_KERNELS_H_
