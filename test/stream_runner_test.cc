// StreamRunner: the threads of the CUDA backend (no CUDA call or callback on a submitting thread,
// failures released on the runner's own threads), run here on a fake backend with no GPU.
#include "lib/transfer/stream_runner.h"

#include <atomic>
#include <memory>
#include <mutex>
#include <thread>
#include <vector>

#include "lib/transfer/host_event.h"
#include "test/util/test_util.h"

namespace kvtier::internal {
namespace {

// Markers are HostEvents: complete at once, or, while held, when Release() or Abort() (as raising
// the spin flags releases a CUDA stream) completes them. Every call records its thread.
class FakeBackend final : public StreamRunner::Backend {
 public:
  void EnterThread() override { Note(); }
  absl::StatusOr<void*> RecordMarker(int) override {
    Note();
    auto marker = std::make_shared<HostEvent>();
    MutexLock lock(&mu_);
    if (!held_) marker->Complete();
    markers_.push_back(marker);
    return marker.get();
  }
  absl::Status WaitMarker(void* marker) override {
    Note();
    return static_cast<HostEvent*>(marker)->Wait();
  }
  void ReleaseMarker(void*) override { Note(); }
  bool IsFatal(const absl::Status& error) override {
    Note();
    return error.code() == absl::StatusCode::kDataLoss;  // "sticky" in these tests
  }
  void Abort() override {
    aborts++;
    Release();
  }

  void Hold() {
    MutexLock lock(&mu_);
    held_ = true;
  }
  void Release() {
    std::vector<std::shared_ptr<HostEvent>> markers;
    {
      MutexLock lock(&mu_);
      held_ = false;
      markers = markers_;
    }
    for (auto& m : markers) {
      if (!m->Query()) m->Complete();
    }
  }
  bool CalledOn(std::thread::id id) {
    MutexLock lock(&mu_);
    for (std::thread::id t : threads_) {
      if (t == id) return true;
    }
    return false;
  }
  std::atomic<int> aborts{0};

 private:
  void Note() {
    MutexLock lock(&mu_);
    threads_.push_back(std::this_thread::get_id());
  }
  Mutex mu_;
  bool held_ ABSL_GUARDED_BY(mu_) = false;
  std::vector<std::shared_ptr<HostEvent>> markers_ ABSL_GUARDED_BY(mu_);
  std::vector<std::thread::id> threads_ ABSL_GUARDED_BY(mu_);
};

// What a callback saw: its status, its thread, and whether the "index lock" was free.
struct Seen {
  Mutex mu;
  std::vector<absl::Status> statuses ABSL_GUARDED_BY(mu);
  std::vector<std::thread::id> threads ABSL_GUARDED_BY(mu);
  std::vector<int> order ABSL_GUARDED_BY(mu);
};

StreamRunner::Callback Record(Seen* seen, std::mutex* index_mu, int tag) {
  return [seen, index_mu, tag](absl::Status s) {
    // try_lock: a callback called by the thread holding the index lock would self-deadlock; here
    // it is reported instead (by its thread id) so that the test fails rather than hangs.
    std::unique_lock<std::mutex> lock(*index_mu, std::try_to_lock);
    MutexLock l(&seen->mu);
    seen->statuses.push_back(s);
    seen->threads.push_back(std::this_thread::get_id());
    seen->order.push_back(tag);
  };
}

TEST_CASE(
    "Regression #14: a failure seen by a submitter holding the index lock calls no callback on "
    "its thread",
    "[device][stream_runner]") {
  FakeBackend backend;
  StreamRunner runner(2, &backend);
  std::mutex index_mu;  // the cache's index lock
  Seen seen;
  backend.Hold();  // the callbacks' markers are pending (a stream held by a disk wait)
  REQUIRE_OK(runner.SubmitCallback(0, Record(&seen, &index_mu, 1), "test"));
  REQUIRE_OK(runner.SubmitCallback(1, Record(&seen, &index_mu, 2), "test"));
  REQUIRE_OK(runner.SubmitCallback(0, Record(&seen, &index_mu, 3), "test"));
  {
    // An enqueue under the index lock sees a sticky error (CudaDevice's old AfterError path).
    std::lock_guard<std::mutex> lock(index_mu);
    runner.Fail(absl::InternalError("illegal address"));
    CHECK(runner.failed());
    CHECK(runner
              .Submit(
                  0, [] { return absl::OkStatus(); }, "test")
              .code() == absl::StatusCode::kFailedPrecondition);
    MutexLock l(&seen.mu);
    for (std::thread::id t : seen.threads) CHECK(t != std::this_thread::get_id());
  }
  CHECK(runner.Drain().code() == absl::StatusCode::kInternal);
  CHECK(backend.aborts == 1);  // the held stream was released, once
  MutexLock l(&seen.mu);
  REQUIRE(seen.statuses.size() == 3);
  for (size_t i = 0; i < 3; ++i) {
    CHECK(seen.statuses[i].code() == absl::StatusCode::kInternal);
    CHECK(seen.threads[i] != std::this_thread::get_id());
  }
}

TEST_CASE(
    "StreamRunner: no backend call and no work runs on a submitting thread, and order is kept",
    "[device][stream_runner]") {
  FakeBackend backend;
  StreamRunner runner(2, &backend);
  std::mutex index_mu;
  Seen seen;
  std::atomic<bool> work_on_submitter{false};
  std::vector<int> works;  // touched by stream 0's issuer only
  for (int i = 0; i < 50; ++i) {
    REQUIRE_OK(runner.Submit(
        0,
        [&, i, me = std::this_thread::get_id()] {
          if (std::this_thread::get_id() == me) work_on_submitter = true;
          works.push_back(i);
          return absl::OkStatus();
        },
        "test"));
    REQUIRE_OK(runner.SubmitCallback(0, Record(&seen, &index_mu, i), "test"));
  }
  REQUIRE_OK(runner.Drain());
  CHECK_FALSE(work_on_submitter);
  CHECK_FALSE(backend.CalledOn(std::this_thread::get_id()));
  REQUIRE(works.size() == 50);
  for (int i = 0; i < 50; ++i) CHECK(works[i] == i);
  MutexLock l(&seen.mu);
  REQUIRE(seen.order.size() == 50);
  for (int i = 0; i < 50; ++i) {
    CHECK(seen.order[i] == i);
    CHECK(seen.statuses[i].ok());
    CHECK(seen.threads[i] != std::this_thread::get_id());
  }
}

TEST_CASE("StreamRunner: a work's error that is not fatal reaches the next callback only",
          "[device][stream_runner]") {
  FakeBackend backend;
  StreamRunner runner(1, &backend);
  std::mutex index_mu;
  Seen seen;
  REQUIRE_OK(runner.Submit(
      0, [] { return absl::InvalidArgumentError("bad copy"); }, "test"));
  REQUIRE_OK(runner.SubmitCallback(0, Record(&seen, &index_mu, 1), "test"));
  REQUIRE_OK(runner.SubmitCallback(0, Record(&seen, &index_mu, 2), "test"));
  REQUIRE_OK(runner.Drain());
  CHECK_FALSE(runner.failed());
  MutexLock l(&seen.mu);
  REQUIRE(seen.statuses.size() == 2);
  CHECK(seen.statuses[0].code() == absl::StatusCode::kInvalidArgument);
  CHECK(seen.statuses[1].ok());
}

TEST_CASE("StreamRunner: a fatal error skips the queued work (on_skip instead) and refuses more",
          "[device][stream_runner]") {
  FakeBackend backend;
  StreamRunner runner(1, &backend);
  auto gate = std::make_shared<HostEvent>();
  std::atomic<int> ran{0}, skipped{0};
  // The issuer waits on `gate` so that everything below is queued behind the fatal work.
  REQUIRE_OK(runner.Submit(
      0,
      [&] {
        runner.WaitHost(*gate);
        return absl::DataLossError("sticky");
      },
      "test"));
  for (int i = 0; i < 5; ++i) {
    REQUIRE_OK(runner.Submit(
        0,
        [&] {
          ran++;
          return absl::OkStatus();
        },
        "test", [&] { skipped++; }));
  }
  gate->Complete();
  CHECK(runner.Drain().code() == absl::StatusCode::kDataLoss);
  CHECK(ran == 0);
  CHECK(skipped == 5);
  CHECK(runner
            .SubmitCallback(
                0, [](absl::Status) {}, "test")
            .code() == absl::StatusCode::kFailedPrecondition);
}

TEST_CASE("Regression #14: a host wait that never completes is released by a failure",
          "[device][stream_runner]") {
  FakeBackend backend;
  StreamRunner runner(1, &backend);
  auto never = std::make_shared<HostEvent>();  // a disk read that never completes
  auto waiting = std::make_shared<HostEvent>();
  std::atomic<bool> released{false};
  REQUIRE_OK(runner.Submit(
      0,
      [&] {
        waiting->Complete();
        released = !runner.WaitHost(*never);
        return absl::OkStatus();
      },
      "test"));
  std::mutex index_mu;
  Seen seen;
  REQUIRE_OK(runner.SubmitCallback(0, Record(&seen, &index_mu, 1), "test"));
  REQUIRE_OK(waiting->Wait());  // the issuer is in the wait
  runner.Fail(absl::InternalError("device lost"));
  CHECK(runner.Drain().code() == absl::StatusCode::kInternal);
  CHECK(released);
  MutexLock l(&seen.mu);
  REQUIRE(seen.statuses.size() == 1);
  CHECK(seen.statuses[0].code() == absl::StatusCode::kInternal);
}

TEST_CASE("Regression #14: shutting down with a host wait that never completes does not hang",
          "[device][stream_runner]") {
  FakeBackend backend;
  auto never = std::make_shared<HostEvent>();
  std::mutex index_mu;
  Seen seen;
  {
    StreamRunner runner(1, &backend);
    auto waiting = std::make_shared<HostEvent>();
    REQUIRE_OK(runner.Submit(
        0,
        [&] {
          waiting->Complete();
          runner.WaitHost(*never);
          return absl::OkStatus();
        },
        "test"));
    REQUIRE_OK(runner.SubmitCallback(0, Record(&seen, &index_mu, 1), "test"));
    REQUIRE_OK(waiting->Wait());  // the issuer is in the wait
  }                               // ~StreamRunner: returns
  never->Complete();              // late: touches nothing freed
  MutexLock l(&seen.mu);
  REQUIRE(seen.statuses.size() == 1);
  CHECK(seen.statuses[0].code() == absl::StatusCode::kCancelled);
}

}  // namespace
}  // namespace kvtier::internal
