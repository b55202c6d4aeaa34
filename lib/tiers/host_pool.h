// HostPool: the host tier's storage, fixed-size slots in one page-aligned allocation that the
// Device pins (so copies to and from it run at full speed and, later, io_uring can register it).
//
// Which slot holds what is the Index's business; the pool only maps slot ids to addresses.
// Thread safety: immutable after Create(); slot_ptr() from any thread.
#ifndef KVTIER_LIB_TIERS_HOST_POOL_H_
#define KVTIER_LIB_TIERS_HOST_POOL_H_

#include <cstdint>
#include <memory>

#include "absl/status/statusor.h"
#include "kvtier/policy.h"
#include "lib/transfer/device.h"

namespace kvtier::internal {

class HostPool {
 public:
  // `slots` slots of `slot_bytes` each (0 slots: an empty pool). kResourceExhausted if the memory
  // cannot be had, kInvalidArgument if the size overflows.
  static absl::StatusOr<std::unique_ptr<HostPool>> Create(Device* device, uint32_t slots,
                                                          uint64_t slot_bytes);
  ~HostPool();
  HostPool(const HostPool&) = delete;
  HostPool& operator=(const HostPool&) = delete;

  uint32_t slots() const { return slots_; }
  uint64_t slot_bytes() const { return slot_bytes_; }
  std::byte* slot_ptr(SlotId slot) const { return base_ + uint64_t{slot} * slot_bytes_; }

 private:
  HostPool(Device* device, std::byte* base, uint32_t slots, uint64_t slot_bytes, uint64_t bytes)
      : device_(device), base_(base), slots_(slots), slot_bytes_(slot_bytes), bytes_(bytes) {}
  Device* device_;
  std::byte* base_;
  uint32_t slots_;
  uint64_t slot_bytes_;
  uint64_t bytes_;
};

}  // namespace kvtier::internal

#endif  // KVTIER_LIB_TIERS_HOST_POOL_H_
