// The gather/scatter kernel and the host-flag wait. See copy_kernels.h for the contracts and
// gather_plan.h for the index and alignment arithmetic (shared with the CPU tests).
#include <cuda_runtime.h>

#include <algorithm>

#include "cuda/copy_kernels.h"
#include "cuda/gather_plan.h"

namespace kvtier::internal {
namespace {

// Parameters sized to the batch: a launch of 3 regions passes 3 * 24 B, not 12 KiB.
template <uint32_t N>
struct GatherBatch {
  GatherRegion regions[N];  // [count]
  uint32_t count;
};

constexpr uint32_t kThreads = 256;
constexpr uint32_t kMaxBlocksPerRegion = 16;

// grid: (x blocks per region, y region rows), capped (PlanGrid); block: kThreads threads. Row
// blockIdx.y copies regions blockIdx.y, blockIdx.y + gridDim.y, ...; its x blocks stride over the
// bytes of each (CopyRegionShare).
template <uint32_t N>
__global__ void __launch_bounds__(kThreads)
    GatherKernel(const __grid_constant__ GatherBatch<N> batch) {
  const uint64_t tid = uint64_t{blockIdx.x} * blockDim.x + threadIdx.x;
  const uint64_t threads = uint64_t{gridDim.x} * blockDim.x;
  for (uint32_t r = blockIdx.y; r < batch.count; r += gridDim.y) {
    const GatherRegion& region = batch.regions[r];
    CopyRegionShare(region.dst, region.src, region.bytes, tid, threads);
  }
}

// grid: 1; block: 1 thread. `flag`: device address of a mapped host word the host raises (a
// read's completion, or CudaDevice's abort on failure and shutdown).
__global__ void WaitFlagKernel(const uint32_t* flag, uint32_t value) {
  for (;;) {
    uint32_t v;
    asm volatile("ld.acquire.sys.global.u32 %0, [%1];" : "=r"(v) : "l"(flag) : "memory");
    if (v >= value) return;
    __nanosleep(2000);
  }
}

// grid: 1; block: 1 thread. `counter`: a device word kvtier owns.
__global__ void WriteCounterKernel(uint32_t* counter, uint32_t value) {
  asm volatile("st.release.sys.global.u32 [%0], %1;" ::"l"(counter), "r"(value) : "memory");
}

// grid: 1; block: 1 thread. Waits until *counter >= *target (wrap-safe: the difference as signed).
__global__ void WaitCounterKernel(const uint32_t* counter, const uint32_t* target) {
  const uint32_t want = *target;
  for (;;) {
    uint32_t v;
    asm volatile("ld.acquire.sys.global.u32 %0, [%1];" : "=r"(v) : "l"(counter) : "memory");
    if (static_cast<int32_t>(v - want) >= 0) return;
    __nanosleep(1000);
  }
}

template <uint32_t N>
cudaError_t LaunchSized(const GatherRegion* regions, uint32_t n, GatherGrid grid,
                        cudaStream_t stream) {
  GatherBatch<N> batch;
  std::copy(regions, regions + n, batch.regions);
  batch.count = n;
  cudaLaunchConfig_t config{};
  config.gridDim = dim3(grid.x, grid.y);
  config.blockDim = dim3(kThreads);
  config.dynamicSmemBytes = 0;
  config.stream = stream;
  // cudaLaunchKernelEx returns this launch's own error: no cudaGetLastError(), which would also
  // return (and clear) an error the engine's own work left pending on this thread.
  return cudaLaunchKernelEx(&config, GatherKernel<N>, batch);
}

}  // namespace

cudaError_t PreloadCopyKernels() {
  cudaFuncAttributes attr{};
  for (const void* fn : {reinterpret_cast<const void*>(&GatherKernel<8>),
                         reinterpret_cast<const void*>(&GatherKernel<64>),
                         reinterpret_cast<const void*>(&GatherKernel<kMaxGatherRegions>),
                         reinterpret_cast<const void*>(&WaitFlagKernel),
                         reinterpret_cast<const void*>(&WriteCounterKernel),
                         reinterpret_cast<const void*>(&WaitCounterKernel)}) {
    if (cudaError_t e = cudaFuncGetAttributes(&attr, fn); e != cudaSuccess) return e;
  }
  return cudaSuccess;
}

cudaError_t LaunchGather(const GatherRegion* regions, uint32_t n, uint64_t max_bytes,
                         uint32_t max_ctas, cudaStream_t stream) {
  if (n == 0) return cudaSuccess;
  if (n > kMaxGatherRegions) return cudaErrorInvalidValue;
  // One block moves kThreads * 16 B * 4 (unrolled) = 16 KiB per pass at the 16-byte width.
  const GatherGrid grid =
      PlanGrid(n, max_bytes, uint64_t{kThreads} * 16 * 4, kMaxBlocksPerRegion, max_ctas);
  if (n <= 8) return LaunchSized<8>(regions, n, grid, stream);
  if (n <= 64) return LaunchSized<64>(regions, n, grid, stream);
  return LaunchSized<kMaxGatherRegions>(regions, n, grid, stream);
}

cudaError_t LaunchWaitFlag(const uint32_t* flag, uint32_t value, cudaStream_t stream) {
  cudaLaunchConfig_t config{};
  config.gridDim = dim3(1);
  config.blockDim = dim3(1);
  config.stream = stream;
  return cudaLaunchKernelEx(&config, WaitFlagKernel, flag, value);
}

cudaError_t LaunchWriteCounter(uint32_t* counter, uint32_t value, cudaStream_t stream) {
  cudaLaunchConfig_t config{};
  config.gridDim = dim3(1);
  config.blockDim = dim3(1);
  config.stream = stream;
  return cudaLaunchKernelEx(&config, WriteCounterKernel, counter, value);
}

cudaError_t LaunchWaitCounter(const uint32_t* counter, const uint32_t* target,
                              cudaStream_t stream) {
  cudaLaunchConfig_t config{};
  config.gridDim = dim3(1);
  config.blockDim = dim3(1);
  config.stream = stream;
  return cudaLaunchKernelEx(&config, WaitCounterKernel, counter, target);
}

}  // namespace kvtier::internal
