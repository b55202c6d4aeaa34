#include "lib/tiers/host_pool.h"

#include <fstream>
#include <limits>
#include <string>

#include "absl/strings/str_cat.h"

namespace kvtier::internal {

std::optional<uint64_t> HostPool::MemAvailableBytes() {
  std::ifstream meminfo("/proc/meminfo");
  std::string name;
  uint64_t kib = 0;
  std::string unit;
  while (meminfo >> name >> kib >> unit) {
    if (name == "MemAvailable:") return kib * 1024;
  }
  return std::nullopt;
}

absl::StatusOr<std::unique_ptr<HostPool>> HostPool::Create(
    Device* device, uint32_t slots, uint64_t slot_bytes,
    std::optional<uint64_t> mem_available_bytes) {
  if (slots == 0) return std::unique_ptr<HostPool>(new HostPool(device, nullptr, 0, slot_bytes, 0));
  if (slot_bytes == 0 || slot_bytes > std::numeric_limits<uint64_t>::max() / slots) {
    return absl::InvalidArgumentError(
        absl::StrCat("HostPool: ", slots, " slots of ", slot_bytes, " bytes overflows"));
  }
  const uint64_t bytes = slot_bytes * slots;
  if (!mem_available_bytes) mem_available_bytes = MemAvailableBytes();
  if (mem_available_bytes && bytes > *mem_available_bytes) {
    return absl::ResourceExhaustedError(
        absl::StrCat("HostPool: Options.host.capacity_bytes makes a pool of ", bytes, " bytes (",
                     slots, " slots of ", slot_bytes, ") vs MemAvailable ", *mem_available_bytes,
                     " bytes: the pool is pinned in memory; lower host.capacity_bytes"));
  }
  absl::StatusOr<void*> mem = device->AllocateHost(bytes, slot_bytes);
  if (!mem.ok()) return mem.status();
  return std::unique_ptr<HostPool>(
      new HostPool(device, static_cast<std::byte*>(*mem), slots, slot_bytes, bytes));
}

HostPool::~HostPool() {
  if (base_ != nullptr) device_->FreeHost(base_, bytes_);
}

}  // namespace kvtier::internal
