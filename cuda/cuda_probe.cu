#include <cuda_runtime_api.h>

#include "cuda/cuda_probe.h"

namespace kvtier::internal {

int CudaDeviceCount(std::string* why) {
  int count = 0;
  const cudaError_t e = cudaGetDeviceCount(&count);
  if (e != cudaSuccess) {
    if (why != nullptr) *why = std::string(cudaGetErrorName(e)) + ": " + cudaGetErrorString(e);
    cudaGetLastError();  // clear it: it is not sticky, and no later call should see it
    return 0;
  }
  if (count == 0 && why != nullptr) *why = "cudaGetDeviceCount found no device";
  return count;
}

}  // namespace kvtier::internal
