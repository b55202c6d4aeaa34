// [cuda] tests: run where a CUDA device is, skip with the reason everywhere else.
#include "cuda/cuda_probe.h"

#include <cuda_runtime_api.h>

#include <catch2/catch.hpp>
#include <string>

#include "cuda/cuda_status.h"
#include "test/util/test_util.h"

namespace kvtier {
namespace {

TEST_CASE("CudaProbe: the driver, runtime and devices, printed for the run's record",
          "[cuda][probe]") {
  int driver = 0, runtime = 0;
  static_cast<void>(cudaDriverGetVersion(&driver));
  static_cast<void>(cudaRuntimeGetVersion(&runtime));
  std::string why;
  const int count = internal::CudaDeviceCount(&why);
  WARN("driver " << driver << ", runtime " << runtime << ", " << count << " device(s) " << why);
  for (int d = 0; d < count; ++d) {
    cudaDeviceProp prop{};
    if (cudaGetDeviceProperties(&prop, d) != cudaSuccess) continue;
    WARN("device " << d << ": " << prop.name << ", sm_" << prop.major << prop.minor << ", "
                   << prop.multiProcessorCount << " SMs, " << (prop.totalGlobalMem >> 20)
                   << " MiB");
  }
  static_cast<void>(cudaGetLastError());
  if (count == 0) {
    test::SkipMissing("cuda", "no CUDA device (" + why + ")");
    return;
  }
  // A driver older than the runtime answers cudaErrorInsufficientDriver everywhere: say so here.
  CHECK(driver >= runtime);
}

TEST_CASE("CudaProbe: no device is reported as a count of 0 with a reason, never an error",
          "[cuda][probe]") {
  std::string why;
  const int count = internal::CudaDeviceCount(&why);
  REQUIRE(count >= 0);
  if (count == 0) {
    CHECK_FALSE(why.empty());
    if (test::SkipMissing("cuda", "no CUDA device (" + why + ")")) return;
  }
  CHECK(why.empty());
}

TEST_CASE("CudaStatus: out of memory is kResourceExhausted, other errors kInternal", "[cuda]") {
  CHECK(internal::CudaStatus(cudaErrorMemoryAllocation, "cudaMalloc(&p, n)", "f.cc", 1).code() ==
        absl::StatusCode::kResourceExhausted);
  const absl::Status s = internal::CudaStatus(cudaErrorInvalidValue, "cudaMemcpy", "f.cc", 7);
  CHECK(s.code() == absl::StatusCode::kInternal);
  CHECK(s.message().find("f.cc:7") != absl::string_view::npos);
}

}  // namespace
}  // namespace kvtier
