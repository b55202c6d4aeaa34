// StreamRunner: the threads of a Device backend whose native calls may block (CUDA), so that no
// native call and no callback ever runs on an enqueuing thread.
//
// Why: the cache enqueues while holding its index lock. A CUDA launch or copy blocks once a
// stream's queue is full (about a thousand commands), and a lazily loaded module blocks behind a
// running kernel; a stream held by a wait for a disk read then blocks the enqueuer, the index lock
// with it, and the disk completion that would release the stream needs that lock. And a failure
// seen by an enqueue must not call the pending callbacks on that thread: they take the index lock.
//
// Shape: per stream, a FIFO of items. Submit() and SubmitCallback() only queue (no backend call,
// no wait). One issuer thread per stream runs each Work (the native calls) in order; for a
// callback it records a completion marker after the work issued before it and hands the pair to
// the stream's watcher thread, which waits for the marker and calls the callback. Callbacks run
// only on watcher threads, in submission order, exactly once each.
//
// Failure: Fail(cause) (a sticky device error, a test, shutdown) marks the runner failed, asks the
// backend to release every host wait (Backend::Abort) and wakes the threads; it calls no callback.
// From then on Submit* return kFailedPrecondition, queued Work is skipped, and every callback not
// yet called is called by its watcher with the failure. A Work that returns an error that is not
// fatal (Backend::IsFatal) is reported to the next callback of its stream.
//
// Host waits: a Work may block on a HostEvent through WaitHost(), which returns early once the
// runner fails or shuts down, so a read that never completes cannot hold a stream forever.
//
// Thread safety: every method from any thread, except that Work, callbacks and Backend methods
// must not call Drain (they run on the runner's threads; a Work may Submit*).
// Lifetime: the destructor fails the runner with kCancelled if anything is still queued, then
// joins its threads; the backend must outlive it.
#ifndef KVTIER_LIB_TRANSFER_STREAM_RUNNER_H_
#define KVTIER_LIB_TRANSFER_STREAM_RUNNER_H_

#include <atomic>
#include <cstdint>
#include <deque>
#include <functional>
#include <memory>
#include <thread>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "lib/common/mutex.h"
#include "lib/transfer/host_event.h"

namespace kvtier::internal {

class StreamRunner {
 public:
  class Backend {
   public:
    virtual ~Backend() = default;
    // First thing on every thread the runner starts (CUDA: make the device current there).
    virtual void EnterThread() = 0;
    // Records a marker on `stream` after everything issued on it so far (issuer thread).
    virtual absl::StatusOr<void*> RecordMarker(int stream) = 0;
    // Blocks until `marker` completes (watcher thread); an error means the device failed.
    virtual absl::Status WaitMarker(void* marker) = 0;
    virtual void ReleaseMarker(void* marker) = 0;
    // Whether an error returned by a Work leaves the device unusable (CUDA: a sticky error).
    virtual bool IsFatal(const absl::Status& error) = 0;
    // Releases every wait the device itself runs for the host (CUDA: raises every spin flag), so
    // that the streams drain after a failure. Called once, from Fail(); must not block.
    virtual void Abort() = 0;
  };
  using Work = std::function<absl::Status()>;
  using Callback = std::function<void(absl::Status)>;

  StreamRunner(int streams, Backend* backend);
  ~StreamRunner();
  StreamRunner(const StreamRunner&) = delete;
  StreamRunner& operator=(const StreamRunner&) = delete;

  // Queues `work` on `stream`. kFailedPrecondition (naming `call`) once the runner failed. When
  // the runner fails before `work` runs, `on_skip` (if any) runs instead, on the issuer.
  absl::Status Submit(int stream, Work work, const char* call,
                      std::function<void()> on_skip = nullptr);
  // Queues `fn`, called with the first error of the work queued on `stream` since the previous
  // callback (OK if none), or with the failure.
  absl::Status SubmitCallback(int stream, Callback fn, const char* call);

  // Marks the runner failed (first cause wins); see the file comment. Never calls a callback.
  void Fail(const absl::Status& cause);
  bool failed() const { return failed_.load(std::memory_order_acquire); }
  absl::Status failure() const;

  // Callbacks submitted on `stream` so far; whether / until the first `seq` have been called.
  uint64_t CallbacksSubmitted(int stream);
  bool CallbacksDone(int stream, uint64_t seq);
  void WaitCallbacks(int stream, uint64_t seq);

  // From a Work: blocks until `event` completes, or the runner fails or shuts down (false then).
  bool WaitHost(HostEvent& event);

  // Blocks until every item submitted so far has been issued and every callback called. The
  // failure if the runner failed, else OK.
  absl::Status Drain();

 private:
  struct Item {
    Work work;                      // or
    Callback callback;              // (exactly one is set)
    std::function<void()> on_skip;  // with `work`, optional
  };
  struct Watched {
    Callback callback;
    void* marker = nullptr;  // null: nothing to wait for (failed, or the record failed)
    absl::Status error;      // of the work before it
  };
  struct Lane {
    Mutex mu;
    CondVar cv;
    std::deque<Item> issue ABSL_GUARDED_BY(mu);
    std::deque<Watched> watch ABSL_GUARDED_BY(mu);
    uint64_t submitted_callbacks ABSL_GUARDED_BY(mu) = 0;
    uint64_t called_callbacks ABSL_GUARDED_BY(mu) = 0;
    uint64_t submitted_works ABSL_GUARDED_BY(mu) = 0;
    uint64_t issued_works ABSL_GUARDED_BY(mu) = 0;  // run or skipped
    bool stop ABSL_GUARDED_BY(mu) = false;
    bool issuer_done ABSL_GUARDED_BY(mu) = false;  // the issuer has handed over its last item
    std::thread issuer;
    std::thread watcher;
  };

  absl::Status Refuse(const char* call) const;
  void IssueLoop(int stream);
  void WatchLoop(int stream);
  void WakeAll();

  Backend* const backend_;
  std::vector<std::unique_ptr<Lane>> lanes_;
  std::atomic<bool> failed_{false};
  std::atomic<bool> stopping_{false};
  mutable Mutex failure_mu_;
  absl::Status failure_ ABSL_GUARDED_BY(failure_mu_);
  // WaitHost's wakeups: a host event's completion, a failure, the shutdown. Shared with the
  // closures a host event keeps, so a completion after the runner is gone touches nothing freed.
  struct Wake {
    Mutex mu;
    CondVar cv;
  };
  const std::shared_ptr<Wake> wake_ = std::make_shared<Wake>();
};

}  // namespace kvtier::internal

#endif  // KVTIER_LIB_TRANSFER_STREAM_RUNNER_H_
