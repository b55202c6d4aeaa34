#include "lib/tiers/host_pool.h"

#include <limits>

#include "absl/strings/str_cat.h"

namespace kvtier::internal {

absl::StatusOr<std::unique_ptr<HostPool>> HostPool::Create(Device* device, uint32_t slots,
                                                           uint64_t slot_bytes) {
  if (slots == 0) return std::unique_ptr<HostPool>(new HostPool(device, nullptr, 0, slot_bytes, 0));
  if (slot_bytes == 0 || slot_bytes > std::numeric_limits<uint64_t>::max() / slots) {
    return absl::InvalidArgumentError(
        absl::StrCat("HostPool: ", slots, " slots of ", slot_bytes, " bytes overflows"));
  }
  const uint64_t bytes = slot_bytes * slots;
  absl::StatusOr<void*> mem = device->AllocateHost(bytes);
  if (!mem.ok()) return mem.status();
  return std::unique_ptr<HostPool>(
      new HostPool(device, static_cast<std::byte*>(*mem), slots, slot_bytes, bytes));
}

HostPool::~HostPool() {
  if (base_ != nullptr) device_->FreeHost(base_, bytes_);
}

}  // namespace kvtier::internal
