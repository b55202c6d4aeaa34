// CudaDevice's pinning plan (cuda/host_pinning.h): pieces of whole host slots, at most 1 GiB, and
// the GPU's NUMA node from sysfs text. Plain host code: runs without a GPU.
#include "cuda/host_pinning.h"

#include <cstdint>
#include <numeric>
#include <vector>

#include "catch2/catch.hpp"

namespace kvtier::internal {
namespace {

uint64_t Sum(const std::vector<uint64_t>& v) { return std::accumulate(v.begin(), v.end(), 0ull); }

TEST_CASE("PinPieces: whole slots, at most the piece size, summing to the pool", "[pinning]") {
  constexpr uint64_t kGiB = uint64_t{1} << 30;
  // 2 MiB slots: 512 per 1 GiB piece.
  const auto even = PinPieces(3 * kGiB, 2 << 20, kMaxPinPiece);
  CHECK(even == std::vector<uint64_t>{kGiB, kGiB, kGiB});
  // A 3 MiB slot does not divide 1 GiB: pieces of 341 slots, the rest in the last one.
  const uint64_t slot = 3 << 20, pool = 1000 * slot;
  const auto odd = PinPieces(pool, slot, kMaxPinPiece);
  REQUIRE(odd.size() == 3);
  CHECK(odd[0] == 341 * slot);
  CHECK(odd[1] == 341 * slot);
  CHECK(odd[2] == 318 * slot);
  CHECK(Sum(odd) == pool);
  for (uint64_t p : odd) CHECK((p % slot == 0 && p <= kMaxPinPiece));
  // A slot larger than a piece: one slot per piece.
  CHECK(PinPieces(5 * (kGiB + 4096), kGiB + 4096, kMaxPinPiece) ==
        std::vector<uint64_t>(5, kGiB + 4096));
  // Small pools, no unit, and nothing.
  CHECK(PinPieces(4096, 4096, kMaxPinPiece) == std::vector<uint64_t>{4096});
  CHECK(PinPieces(kGiB + 1, 0, kMaxPinPiece) == std::vector<uint64_t>{kGiB, 1});
  CHECK(PinPieces(0, 4096, kMaxPinPiece).empty());
  // 600 GiB of 2 MiB slots: 600 calls, none near the driver's 512 GiB per-call limit.
  const auto big = PinPieces(600 * kGiB, 2 << 20, kMaxPinPiece);
  CHECK(big.size() == 600);
  CHECK(Sum(big) == 600 * kGiB);
}

TEST_CASE("NUMA node of the GPU: the sysfs path and the file's text", "[pinning]") {
  CHECK(NumaNodePath("0000:3B:00.0") == "/sys/bus/pci/devices/0000:3b:00.0/numa_node");
  CHECK(ParseNumaNode("1\n") == 1);
  CHECK(ParseNumaNode("0") == 0);
  CHECK(ParseNumaNode("12\n") == 12);
  CHECK(ParseNumaNode("-1\n") == -1);  // the kernel's "no node"
  CHECK(ParseNumaNode("") == -1);
  CHECK(ParseNumaNode("x\n") == -1);
  CHECK(ParseNumaNode("123456") == -1);
}

}  // namespace
}  // namespace kvtier::internal
