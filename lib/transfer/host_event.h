// HostEvent: a DeviceEvent completed by the host (a disk I/O, not a stream), so device streams and
// disk operations can be ordered after host-side work.
//
// Then(fn) runs fn once the event completes: at once (on the caller's thread) if it already has,
// else on the thread that calls Complete(), after it releases the event's lock.
// Thread safety: all methods from any thread.
#ifndef KVTIER_LIB_TRANSFER_HOST_EVENT_H_
#define KVTIER_LIB_TRANSFER_HOST_EVENT_H_

#include <functional>
#include <utility>
#include <vector>

#include "lib/common/mutex.h"
#include "lib/transfer/device.h"

namespace kvtier::internal {

class HostEvent final : public DeviceEvent {
 public:
  bool Query() const override {
    MutexLock lock(&mu_);
    return done_;
  }
  absl::Status Wait() const override {
    MutexLock lock(&mu_);
    while (!done_) cv_.Wait(&mu_);
    return absl::OkStatus();
  }
  void* native() const override { return nullptr; }

  void Complete() {
    std::vector<std::function<void()>> then;
    {
      MutexLock lock(&mu_);
      done_ = true;
      then.swap(then_);
      cv_.SignalAll();
    }
    for (auto& fn : then) fn();
  }
  void Then(std::function<void()> fn) {
    {
      MutexLock lock(&mu_);
      if (!done_) {
        then_.push_back(std::move(fn));
        return;
      }
    }
    fn();
  }

 private:
  mutable Mutex mu_;
  mutable CondVar cv_;
  bool done_ ABSL_GUARDED_BY(mu_) = false;
  std::vector<std::function<void()>> then_ ABSL_GUARDED_BY(mu_);
};

}  // namespace kvtier::internal

#endif  // KVTIER_LIB_TRANSFER_HOST_EVENT_H_
