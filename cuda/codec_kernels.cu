// The host codec's encode and decode kernels. Every value they write comes from the work items of
// lib/codec/codec_math.h (the CPU codec's arithmetic, step for step), run one per thread; what
// this file adds is the order of the phases and the fp8 segment's amax reduction.
#include <cuda_runtime.h>

#include "cuda/codec_kernels.h"

namespace kvtier::internal {
namespace {

using codec_math::CodecParams;
using codec_math::CodecSegmentJob;

// Parameters sized to the batch, as GatherBatch: a launch of 4 jobs passes 4 * 32 B.
template <uint32_t N>
struct CodecBatch {
  CodecSegmentJob jobs[N];
};

constexpr uint32_t kThreads = 256;

// grid: one block per job; block: kThreads threads striding over the job's items.
// int8/int4: every group's (s, m), then (after the barrier makes them visible to the block) every
// code byte, which reads its group back. fp8: the segment's amax (a block-wide max of the finite
// magnitudes: non-negative floats order as their bits), its scale, then every element.
template <uint32_t N>
__global__ void __launch_bounds__(kThreads)
    EncodeKernel(CodecParams p, const __grid_constant__ CodecBatch<N> batch) {
  const CodecSegmentJob& j = batch.jobs[blockIdx.x];
  const uint64_t n = codec_math::Elements(j);
  if (p.codec == codec_math::kCodecFp8E4m3) {
    __shared__ unsigned int amax_bits;
    if (threadIdx.x == 0) amax_bits = 0;
    __syncthreads();
    float local = 0;
    const auto* x = static_cast<const uint8_t*>(j.src);
    for (uint64_t i = threadIdx.x; i < n; i += blockDim.x) {
      const float a = codec_math::Fp8Magnitude(codec_math::LoadElement(x, i, p.element));
      local = a > local ? a : local;
    }
    atomicMax(&amax_bits, __float_as_uint(local));
    __syncthreads();
    const float scale = codec_math::Fp8Scale(__uint_as_float(amax_bits));
    if (threadIdx.x == 0) {
      codec_math::StoreU32(static_cast<uint8_t*>(j.dst), codec_math::FloatToBits(scale));
    }
    const float inv = codec_math::Div(1.0f, scale);
    for (uint64_t i = threadIdx.x; i < n; i += blockDim.x) {
      codec_math::EncodeFp8Element(p, j, i, inv);
    }
    return;
  }
  const uint64_t groups = codec_math::GroupCount(p, j);
  for (uint64_t g = threadIdx.x; g < groups; g += blockDim.x) codec_math::EncodeGroup(p, j, g);
  __syncthreads();
  const uint64_t bytes = codec_math::CodeBytes(p, j);
  for (uint64_t b = threadIdx.x; b < bytes; b += blockDim.x) codec_math::EncodeCodeByte(p, j, b);
}

// grid: one block per job; block: kThreads threads, one code byte each per pass.
template <uint32_t N>
__global__ void __launch_bounds__(kThreads)
    DecodeKernel(CodecParams p, const __grid_constant__ CodecBatch<N> batch) {
  const CodecSegmentJob& j = batch.jobs[blockIdx.x];
  const uint64_t bytes = codec_math::CodeBytes(p, j);
  for (uint64_t b = threadIdx.x; b < bytes; b += blockDim.x) codec_math::DecodeCodeByte(p, j, b);
}

template <uint32_t N>
cudaError_t LaunchSized(bool encode, const CodecParams& params, const CodecSegmentJob* jobs,
                        uint32_t n, cudaStream_t stream) {
  CodecBatch<N> batch{};
  for (uint32_t i = 0; i < n; ++i) batch.jobs[i] = jobs[i];
  cudaLaunchConfig_t config{};
  config.gridDim = dim3(n);
  config.blockDim = dim3(kThreads);
  config.stream = stream;
  return encode ? cudaLaunchKernelEx(&config, EncodeKernel<N>, params, batch)
                : cudaLaunchKernelEx(&config, DecodeKernel<N>, params, batch);
}

}  // namespace

cudaError_t PreloadCodecKernels() {
  cudaFuncAttributes attr{};
  for (const void* fn : {reinterpret_cast<const void*>(&EncodeKernel<8>),
                         reinterpret_cast<const void*>(&EncodeKernel<64>),
                         reinterpret_cast<const void*>(&EncodeKernel<kMaxCodecJobs>),
                         reinterpret_cast<const void*>(&DecodeKernel<8>),
                         reinterpret_cast<const void*>(&DecodeKernel<64>),
                         reinterpret_cast<const void*>(&DecodeKernel<kMaxCodecJobs>)}) {
    if (cudaError_t e = cudaFuncGetAttributes(&attr, fn); e != cudaSuccess) return e;
  }
  return cudaSuccess;
}

cudaError_t LaunchCodec(bool encode, const CodecParams& params, const CodecSegmentJob* jobs,
                        uint32_t n, cudaStream_t stream) {
  if (n == 0) return cudaSuccess;
  if (n > kMaxCodecJobs) return cudaErrorInvalidValue;
  if (n <= 8) return LaunchSized<8>(encode, params, jobs, n, stream);
  if (n <= 64) return LaunchSized<64>(encode, params, jobs, n, stream);
  return LaunchSized<kMaxCodecJobs>(encode, params, jobs, n, stream);
}

}  // namespace kvtier::internal
