// CudaStatus and KVTIER_CUDA_RETURN_IF_ERROR: the only way kvtier checks a CUDA call.
//
// cudaErrorMemoryAllocation maps to kResourceExhausted, everything else to kInternal, with the
// call, file:line and cudaGetErrorString in the message.
#ifndef KVTIER_CUDA_CUDA_STATUS_H_
#define KVTIER_CUDA_CUDA_STATUS_H_

#include <cuda_runtime_api.h>

#include "absl/status/status.h"

namespace kvtier::internal {

absl::Status CudaStatus(cudaError_t error, const char* call, const char* file, int line);

}  // namespace kvtier::internal

#define KVTIER_CUDA_RETURN_IF_ERROR(expr)                                   \
  do {                                                                      \
    if (cudaError_t e_ = (expr); e_ != cudaSuccess)                         \
      return ::kvtier::internal::CudaStatus(e_, #expr, __FILE__, __LINE__); \
  } while (0)

#endif  // KVTIER_CUDA_CUDA_STATUS_H_
