// The gather/scatter kernel and the host-flag wait. See copy_kernels.h for the contracts.
#include <cuda_runtime.h>

#include <algorithm>

#include "cuda/copy_kernels.h"

namespace kvtier::internal {
namespace {

struct GatherBatch {
  GatherRegion regions[kMaxGatherRegions];  // [count]: region blockIdx.y is this block's
};

constexpr uint32_t kThreads = 256;
constexpr uint32_t kUnroll = 4;  // 16-byte loads in flight per thread before their stores:
                                 // hides PCIe latency when the source is mapped host memory

// grid: (blocks per region, regions); block: kThreads threads. Each CTA row copies one region:
// 16-byte vectors when both ends are 16-byte aligned, then the tail (or everything, when not
// aligned) byte by byte.
__global__ void __launch_bounds__(kThreads)
    GatherKernel(const __grid_constant__ GatherBatch batch) {
  const GatherRegion r = batch.regions[blockIdx.y];
  auto* dst = static_cast<unsigned char*>(r.dst);
  const auto* src = static_cast<const unsigned char*>(r.src);
  const uint64_t tid = uint64_t{blockIdx.x} * blockDim.x + threadIdx.x;
  const uint64_t threads = uint64_t{gridDim.x} * blockDim.x;
  uint64_t done = 0;
  if (((reinterpret_cast<uintptr_t>(dst) | reinterpret_cast<uintptr_t>(src)) & 15) == 0) {
    const uint64_t vectors = r.bytes / 16;
    const auto* s = reinterpret_cast<const uint4*>(src);
    auto* d = reinterpret_cast<uint4*>(dst);
    for (uint64_t base = tid; base < vectors; base += kUnroll * threads) {
      uint4 v[kUnroll];
#pragma unroll
      for (uint32_t k = 0; k < kUnroll; ++k) {
        const uint64_t i = base + k * threads;
        if (i < vectors) v[k] = s[i];
      }
#pragma unroll
      for (uint32_t k = 0; k < kUnroll; ++k) {
        const uint64_t i = base + k * threads;
        if (i < vectors) d[i] = v[k];
      }
    }
    done = vectors * 16;
  }
  for (uint64_t i = done + tid; i < r.bytes; i += threads) dst[i] = src[i];
}

// grid: 1; block: 1 thread. `flag`: device address of a mapped host word the host raises.
__global__ void WaitFlagKernel(const uint32_t* flag, uint32_t value) {
  for (;;) {
    uint32_t v;
    asm volatile("ld.acquire.sys.global.u32 %0, [%1];" : "=r"(v) : "l"(flag) : "memory");
    if (v >= value) return;
    __nanosleep(2000);
  }
}

}  // namespace

cudaError_t LaunchGather(const GatherRegion* regions, uint32_t n, uint64_t max_bytes,
                         cudaStream_t stream) {
  if (n == 0) return cudaSuccess;
  if (n > kMaxGatherRegions) return cudaErrorInvalidValue;
  GatherBatch batch;
  std::copy(regions, regions + n, batch.regions);
  // One CTA moves kThreads * 16 * kUnroll = 16 KiB per pass; up to 16 CTAs per region.
  const uint64_t per_cta = uint64_t{kThreads} * 16 * kUnroll;
  const auto x =
      static_cast<uint32_t>(std::clamp<uint64_t>((max_bytes + per_cta - 1) / per_cta, 1, 16));
  GatherKernel<<<dim3(x, n), kThreads, 0, stream>>>(batch);
  return cudaGetLastError();
}

cudaError_t LaunchWaitFlag(const uint32_t* flag, uint32_t value, cudaStream_t stream) {
  WaitFlagKernel<<<1, 1, 0, stream>>>(flag, value);
  return cudaGetLastError();
}

}  // namespace kvtier::internal
