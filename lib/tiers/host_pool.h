// HostPool: the host tier's storage, fixed-size slots in one page-aligned allocation that the
// Device pins (so copies to and from it run at full speed and, later, io_uring can register it).
//
// Which slot holds what is the Index's business; the pool only maps slot ids to addresses.
// Thread safety: immutable after Create(); slot_ptr() from any thread.
#ifndef KVTIER_LIB_TIERS_HOST_POOL_H_
#define KVTIER_LIB_TIERS_HOST_POOL_H_

#include <cstdint>
#include <memory>
#include <optional>

#include "absl/status/statusor.h"
#include "kvtier/policy.h"
#include "lib/transfer/device.h"

namespace kvtier::internal {

class HostPool {
 public:
  // `slots` slots of `slot_bytes` each (0 slots: an empty pool). kResourceExhausted if the memory
  // cannot be had, or if it is more than the memory available (MemAvailable in /proc/meminfo, or
  // `mem_available_bytes` when given: tests): the pool ends up resident (pinned), and a pool that
  // does not fit would push the machine into swap or the OOM killer instead of failing here.
  // kInvalidArgument if the size overflows. Costs no more than an mmap: the pages are faulted in
  // by their first use (or by the pinning: the CUDA backend, io_uring buffer registration).
  static absl::StatusOr<std::unique_ptr<HostPool>> Create(
      Device* device, uint32_t slots, uint64_t slot_bytes,
      std::optional<uint64_t> mem_available_bytes = std::nullopt);
  // MemAvailable from /proc/meminfo, in bytes; nullopt where it cannot be read.
  static std::optional<uint64_t> MemAvailableBytes();
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
