// Launchers for the host codec's kernels (codec_kernels.cu): encode and decode of one segment per
// thread block, with the work items of lib/codec/codec_math.h, so that they write exactly the CPU
// codec's bytes. Host code includes this header; only codec_kernels.cu is compiled by nvcc.
//
// Both pointers of every job must be device memory (CudaDevice stages the host side of a job in
// device scratch first: the kernels never reach across the bus themselves). Each launcher enqueues
// on `stream` with cudaLaunchKernelEx and returns that launch's own error.
#ifndef KVTIER_CUDA_CODEC_KERNELS_H_
#define KVTIER_CUDA_CODEC_KERNELS_H_

#include <cuda_runtime_api.h>

#include <cstdint>

#include "lib/codec/codec_math.h"

namespace kvtier::internal {

// Jobs per launch: they travel by value as the kernel's parameter (32 B each, 16 KiB at most), so
// no job table has to outlive the launch.
inline constexpr uint32_t kMaxCodecJobs = 512;

// Loads the codec kernels' module now (see PreloadCopyKernels: a lazy load would wait for a
// running spin kernel).
cudaError_t PreloadCodecKernels();

// Encodes (`encode`) or decodes jobs[0..n) (n <= kMaxCodecJobs): one thread block per job.
cudaError_t LaunchCodec(bool encode, const codec_math::CodecParams& params,
                        const codec_math::CodecSegmentJob* jobs, uint32_t n, cudaStream_t stream);

}  // namespace kvtier::internal

#endif  // KVTIER_CUDA_CODEC_KERNELS_H_
