// [cuda] tests: run where a CUDA device is, skip with the reason everywhere else.
#include "cuda/cuda_probe.h"

#include <catch2/catch.hpp>
#include <string>

#include "cuda/cuda_status.h"
#include "test/util/test_util.h"

namespace kvtier {
namespace {

TEST_CASE("CudaProbe: no device is reported as a count of 0 with a reason, never an error",
          "[cuda]") {
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
