// Launchers for kvtier's two kernels (copy_kernels.cu): the segment gather/scatter and the wait on
// a host-written flag. Host code includes this header; only copy_kernels.cu is compiled by nvcc.
//
// Each launcher enqueues on `stream` with cudaLaunchKernelEx and returns that launch's own error
// (never an error the engine's work left pending on the thread); asynchronous faults surface on
// the stream's events.
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
// 32764 B of parameters on sm_70+), so no descriptor buffer has to outlive the launch. The
// parameter block is sized to the batch (8, 64 or 512 regions), not always 12 KiB.
inline constexpr uint32_t kMaxGatherRegions = 512;

// Loads both kernels' module now (cudaFuncGetAttributes): with lazy loading (the default since
// CUDA 12.2) the first launch would otherwise load it, and a module load waits for running
// kernels, a spin kernel included.
cudaError_t PreloadCopyKernels();

// Copies regions[0..n) (n <= kMaxGatherRegions) in one launch. Regions must not overlap each other.
// `max_bytes`: the largest region, which sizes the grid; `max_ctas`: at most this many thread
// blocks (grid-stride beyond), so a copy at the highest stream priority never takes every SM from
// the engine's kernels.
cudaError_t LaunchGather(const GatherRegion* regions, uint32_t n, uint64_t max_bytes,
                         uint32_t max_ctas, cudaStream_t stream);

// Enqueues a one-thread kernel that returns once *flag >= value (read with system-scope acquire),
// so work enqueued after it waits for a host-side completion (a disk read) without a host thread
// blocking in a CUDA callback. `flag`: device address of a mapped pinned host word.
cudaError_t LaunchWaitFlag(const uint32_t* flag, uint32_t value, cudaStream_t stream);

// Graph-stable layer waits (docs/cuda.md, "CUDA graphs"). LaunchWriteCounter: one thread stores
// `value` to the device word `counter` (system-scope release, after the stream's earlier work).
// LaunchWaitCounter, the engine's side: one thread returns once *counter >= *target; both are
// device addresses read when the kernel runs, so a captured graph replays it unchanged while the
// engine writes a new target per step.
cudaError_t LaunchWriteCounter(uint32_t* counter, uint32_t value, cudaStream_t stream);
cudaError_t LaunchWaitCounter(const uint32_t* counter, const uint32_t* target, cudaStream_t stream);

}  // namespace kvtier::internal

#endif  // KVTIER_CUDA_COPY_KERNELS_H_
