#include "lib/transfer/stream_runner.h"

#include <utility>

#include "absl/strings/str_cat.h"
#include "lib/common/status_macros.h"

namespace kvtier::internal {

StreamRunner::StreamRunner(int streams, Backend* backend) : backend_(backend) {
  for (int i = 0; i < streams; ++i) lanes_.push_back(std::make_unique<Lane>());
  for (int i = 0; i < streams; ++i) {
    lanes_[i]->issuer = std::thread([this, i] { IssueLoop(i); });
    lanes_[i]->watcher = std::thread([this, i] { WatchLoop(i); });
  }
}

StreamRunner::~StreamRunner() {
  // Whatever is still queued or waiting for the host is abandoned: its callbacks get kCancelled.
  // A runner whose owner drained it first has nothing left, and then this changes nothing.
  bool idle = true;
  for (auto& lane : lanes_) {
    MutexLock lock(&lane->mu);
    idle = idle && lane->issue.empty() && lane->watch.empty();
  }
  if (!idle) Fail(absl::CancelledError("StreamRunner: shut down with work queued"));
  stopping_.store(true, std::memory_order_release);
  WakeAll();
  for (auto& lane : lanes_) {
    {
      MutexLock lock(&lane->mu);
      lane->stop = true;
      lane->cv.SignalAll();
    }
    lane->issuer.join();
    lane->watcher.join();
  }
}

absl::Status StreamRunner::failure() const {
  MutexLock lock(&failure_mu_);
  return failure_;
}

absl::Status StreamRunner::Refuse(const char* call) const {
  if (!failed()) return absl::OkStatus();
  return absl::FailedPreconditionError(
      absl::StrCat(call, ": the device failed earlier (", failure().message(), ")"));
}

absl::Status StreamRunner::Submit(int stream, Work work, const char* call,
                                  std::function<void()> on_skip) {
  KVTIER_RETURN_IF_ERROR(Refuse(call));
  Lane& lane = *lanes_[stream];
  MutexLock lock(&lane.mu);
  lane.issue.push_back({.work = std::move(work), .on_skip = std::move(on_skip)});
  lane.submitted_works++;
  lane.cv.SignalAll();
  return absl::OkStatus();
}

absl::Status StreamRunner::SubmitCallback(int stream, Callback fn, const char* call) {
  KVTIER_RETURN_IF_ERROR(Refuse(call));
  Lane& lane = *lanes_[stream];
  MutexLock lock(&lane.mu);
  lane.issue.push_back({.callback = std::move(fn)});
  lane.submitted_callbacks++;
  lane.cv.SignalAll();
  return absl::OkStatus();
}

void StreamRunner::Fail(const absl::Status& cause) {
  {
    MutexLock lock(&failure_mu_);
    if (!failure_.ok()) return;  // the first cause wins; the rest was done then
    failure_ = cause.ok() ? absl::InternalError("StreamRunner: marked failed") : cause;
  }
  failed_.store(true, std::memory_order_release);
  backend_->Abort();  // the streams drain: every marker completes
  WakeAll();
}

void StreamRunner::WakeAll() {
  {
    MutexLock lock(&wake_->mu);
    wake_->cv.SignalAll();
  }
  for (auto& lane : lanes_) {
    MutexLock lock(&lane->mu);
    lane->cv.SignalAll();
  }
}

uint64_t StreamRunner::CallbacksSubmitted(int stream) {
  Lane& lane = *lanes_[stream];
  MutexLock lock(&lane.mu);
  return lane.submitted_callbacks;
}

bool StreamRunner::CallbacksDone(int stream, uint64_t seq) {
  Lane& lane = *lanes_[stream];
  MutexLock lock(&lane.mu);
  return lane.called_callbacks >= seq;
}

void StreamRunner::WaitCallbacks(int stream, uint64_t seq) {
  Lane& lane = *lanes_[stream];
  MutexLock lock(&lane.mu);
  while (lane.called_callbacks < seq) lane.cv.Wait(&lane.mu);
}

bool StreamRunner::WaitHost(HostEvent& event) {
  auto done = std::make_shared<std::atomic<bool>>(false);
  event.Then([wake = wake_, done] {
    done->store(true, std::memory_order_release);
    MutexLock lock(&wake->mu);
    wake->cv.SignalAll();
  });
  MutexLock lock(&wake_->mu);
  while (!done->load(std::memory_order_acquire) && !failed() &&
         !stopping_.load(std::memory_order_acquire)) {
    wake_->cv.Wait(&wake_->mu);
  }
  return done->load(std::memory_order_acquire);
}

absl::Status StreamRunner::Drain() {
  for (auto& lane_ptr : lanes_) {
    Lane& lane = *lane_ptr;
    MutexLock lock(&lane.mu);
    const uint64_t works = lane.submitted_works;
    const uint64_t callbacks = lane.submitted_callbacks;
    while (lane.issued_works < works || lane.called_callbacks < callbacks) lane.cv.Wait(&lane.mu);
  }
  return failure();
}

void StreamRunner::IssueLoop(int stream) {
  backend_->EnterThread();
  Lane& lane = *lanes_[stream];
  absl::Status pending;  // the first error of the work issued since the previous callback
  for (;;) {
    Item item;
    {
      MutexLock lock(&lane.mu);
      while (lane.issue.empty() && !lane.stop) lane.cv.Wait(&lane.mu);
      if (lane.issue.empty()) {  // stopped and drained
        lane.issuer_done = true;
        lane.cv.SignalAll();
        return;
      }
      item = std::move(lane.issue.front());
      lane.issue.pop_front();
    }
    if (item.work) {
      if (!failed()) {
        absl::Status s = item.work();
        if (!s.ok()) {
          if (pending.ok()) pending = s;
          if (backend_->IsFatal(s)) Fail(s);
        }
      } else if (item.on_skip) {
        item.on_skip();
      }
      MutexLock lock(&lane.mu);
      lane.issued_works++;
      lane.cv.SignalAll();
      continue;
    }
    // A marker even on a failed runner: work issued before the failure may still be running
    // (a failure raised by a test or a shutdown leaves the streams working), and the callback
    // must come after it. On a context with a sticky error the record fails at once.
    Watched w{.callback = std::move(item.callback), .error = std::exchange(pending, {})};
    absl::StatusOr<void*> marker = backend_->RecordMarker(stream);
    if (marker.ok()) {
      w.marker = *marker;
    } else {
      if (w.error.ok()) w.error = marker.status();
      if (backend_->IsFatal(marker.status())) Fail(marker.status());
    }
    MutexLock lock(&lane.mu);
    lane.watch.push_back(std::move(w));
    lane.cv.SignalAll();
  }
}

void StreamRunner::WatchLoop(int stream) {
  backend_->EnterThread();
  Lane& lane = *lanes_[stream];
  for (;;) {
    Watched w;
    {
      MutexLock lock(&lane.mu);
      while (lane.watch.empty() && !lane.issuer_done) lane.cv.Wait(&lane.mu);
      if (lane.watch.empty()) return;  // the issuer has handed over everything and stopped
      w = std::move(lane.watch.front());
      lane.watch.pop_front();
    }
    if (w.marker != nullptr) {
      // Waits even on a failed runner: the marker completes once Abort() released the stream,
      // and only then may the callback's owner reuse what the work before it touches.
      const absl::Status waited = backend_->WaitMarker(w.marker);
      backend_->ReleaseMarker(w.marker);
      if (!waited.ok()) Fail(waited);
    }
    w.callback(failed() ? failure() : w.error);
    MutexLock lock(&lane.mu);
    lane.called_callbacks++;
    lane.cv.SignalAll();
  }
}

}  // namespace kvtier::internal
