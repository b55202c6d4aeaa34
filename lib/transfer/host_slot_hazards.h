// HostSlotHazards: per host slot, the write still reading it (the disk write-back or the remote
// publication of the block that last held it), which the slot's next user must wait for; and the
// set of such writes in flight, for whoever must wait for all of them.
//
// A host victim's slot is handed to its next block at once, while its bytes are still being
// written below; the next block's copy into the slot (a device-to-host demotion, a disk or remote
// read) is ordered after that write through the slot's event.
// Thread safety: none; the Cache calls it under the index lock. The events themselves are
// thread-safe and complete on I/O threads.
// Cost: O(1) per call, amortised; InFlight() is O(writes in flight), never O(slots).
#ifndef KVTIER_LIB_TRANSFER_HOST_SLOT_HAZARDS_H_
#define KVTIER_LIB_TRANSFER_HOST_SLOT_HAZARDS_H_

#include <algorithm>
#include <atomic>
#include <cstdint>
#include <memory>
#include <utility>
#include <vector>

#include "lib/common/huge_pages.h"
#include "lib/transfer/host_event.h"

namespace kvtier::internal {

class HostSlotHazards {
 public:
  explicit HostSlotHazards(uint32_t slots) : pending_(slots) {}

  // Whether a write of slot `s` has not completed yet.
  bool Busy(uint32_t s) const { return pending_[s] != nullptr && !pending_[s]->Query(); }
  // The event the slot's next user waits on; non-null when Busy(s).
  const std::shared_ptr<HostEvent>& Pending(uint32_t s) const { return pending_[s]; }

  // A write of slot `s` started; it completes `write`. A write of the slot already in flight (the
  // same bytes going to the disk and to the remote tier) is joined: the next user waits for both.
  void Add(uint32_t s, const std::shared_ptr<HostEvent>& write) {
    pending_[s] = Busy(s) ? Both(pending_[s], write) : write;
    Track(write);
  }

  // The writes that may still be in flight (some may have completed since).
  const std::vector<std::shared_ptr<HostEvent>>& InFlight() const { return in_flight_; }

 private:
  static constexpr size_t kMinPruneAt = 64;

  // An event that completes once both have.
  static std::shared_ptr<HostEvent> Both(const std::shared_ptr<HostEvent>& a,
                                         const std::shared_ptr<HostEvent>& b) {
    auto both = std::make_shared<HostEvent>();
    auto pending = std::make_shared<std::atomic<int>>(2);
    auto one_done = [both, pending] {
      if (pending->fetch_sub(1) == 1) both->Complete();
    };
    a->Then(one_done);
    b->Then(one_done);
    return both;
  }

  // Finished writes are dropped when the list has doubled since the last pass: amortised O(1).
  void Track(const std::shared_ptr<HostEvent>& write) {
    in_flight_.push_back(write);
    if (in_flight_.size() < prune_at_) return;
    std::erase_if(in_flight_, [](const std::shared_ptr<HostEvent>& w) { return w->Query(); });
    prune_at_ = std::max(kMinPruneAt, 2 * in_flight_.size());
  }

  HugeVector<std::shared_ptr<HostEvent>> pending_;  // per host slot
  std::vector<std::shared_ptr<HostEvent>> in_flight_;
  size_t prune_at_ = kMinPruneAt;
};

}  // namespace kvtier::internal

#endif  // KVTIER_LIB_TRANSFER_HOST_SLOT_HAZARDS_H_
