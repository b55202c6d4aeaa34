#include "cuda/cuda_status.h"

#include "absl/strings/str_cat.h"

namespace kvtier::internal {

absl::Status CudaStatus(cudaError_t error, const char* call, const char* file, int line) {
  const std::string msg = absl::StrCat(call, " at ", file, ":", line, ": ", cudaGetErrorName(error),
                                       " (", cudaGetErrorString(error), ")");
  if (error == cudaErrorMemoryAllocation) return absl::ResourceExhaustedError(msg);
  return absl::InternalError(msg);
}

}  // namespace kvtier::internal
