#include "lib/tiers/host_pool.h"

#include <cstring>
#include <limits>

#include "lib/transfer/emulated_device.h"
#include "test/util/test_util.h"

namespace kvtier::internal {
namespace {

TEST_CASE("HostPool: slots are disjoint, page-aligned at the base, and hold what is written",
          "[host_pool]") {
  EmulatedDevice dev;
  auto pool = HostPool::Create(&dev, 64, 3000);
  REQUIRE_OK(pool);
  CHECK((*pool)->slots() == 64);
  CHECK(reinterpret_cast<uintptr_t>((*pool)->slot_ptr(0)) % 4096 == 0);
  for (SlotId s = 0; s < 64; ++s) {
    CHECK((*pool)->slot_ptr(s) == (*pool)->slot_ptr(0) + uint64_t{s} * 3000);
    std::memset((*pool)->slot_ptr(s), static_cast<int>(s), 3000);
  }
  for (SlotId s = 0; s < 64; ++s) {
    const std::byte* p = (*pool)->slot_ptr(s);
    CHECK(std::all_of(p, p + 3000, [s](std::byte b) { return b == std::byte(s); }));
  }
}

TEST_CASE("HostPool: an empty pool is allowed, an overflowing size is rejected", "[host_pool]") {
  EmulatedDevice dev;
  auto empty = HostPool::Create(&dev, 0, 4096);
  REQUIRE_OK(empty);
  CHECK((*empty)->slots() == 0);
  REQUIRE_CODE(HostPool::Create(&dev, 1000, std::numeric_limits<uint64_t>::max() / 10),
               absl::StatusCode::kInvalidArgument);
  REQUIRE_CODE(HostPool::Create(&dev, 1, 0), absl::StatusCode::kInvalidArgument);
}

TEST_CASE("HostPool: a pool larger than the available memory is refused at Create", "[host_pool]") {
  EmulatedDevice dev;
  auto too_big = HostPool::Create(&dev, 4, 4096, /*mem_available_bytes=*/4 * 4096 - 1);
  REQUIRE_CODE(too_big, absl::StatusCode::kResourceExhausted);
  CHECK(too_big.status().message().find("MemAvailable 16383 bytes") != std::string::npos);
  REQUIRE_OK(HostPool::Create(&dev, 4, 4096, /*mem_available_bytes=*/4 * 4096));
  // The machine's own figure: readable here, and a pool of more than all of it is refused.
  const std::optional<uint64_t> available = HostPool::MemAvailableBytes();
  REQUIRE(available.has_value());
  REQUIRE_CODE(HostPool::Create(&dev, 2, *available), absl::StatusCode::kResourceExhausted);
}

}  // namespace
}  // namespace kvtier::internal
