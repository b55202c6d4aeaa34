#include "lib/transfer/emulated_device.h"

#include <sys/mman.h>

#include <cstring>
#include <utility>

#include "absl/strings/str_cat.h"
#include "lib/common/huge_pages.h"
#include "lib/transfer/host_event.h"

namespace kvtier::internal {

struct EmulatedDevice::Op {
  enum class Kind { kCopy, kRecord, kWait, kCallback, kEncode, kDecode } kind;
  std::vector<CopyRegion> regions;  // kCopy
  codec_math::CodecParams params;   // kEncode, kDecode
  std::vector<codec_math::CodecSegmentJob> jobs;
  std::shared_ptr<DeviceEvent> event;          // kRecord (a HostEvent), kWait
  std::function<void(absl::Status)> callback;  // kCallback
};

EmulatedDevice::EmulatedDevice(CodecKernel codec_kernel) : codec_kernel_(codec_kernel) {
  for (Queue& q : queues_) q.thread = std::thread([this, &q] { Run(&q); });
}

EmulatedDevice::~EmulatedDevice() {
  for (Queue& q : queues_) {
    MutexLock lock(&q.mu);
    q.stop = true;
    q.cv.SignalAll();
  }
  for (Queue& q : queues_) q.thread.join();
}

absl::StatusOr<void*> EmulatedDevice::AllocateHost(uint64_t bytes, uint64_t /*unit*/) {
  // mmap: zero-filled, returned to the OS on free (pinning is the CUDA backend's), on huge pages
  // where the kernel has them (MapHugePageAligned says why).
  void* p = MapHugePageAligned(bytes);
  if (p == nullptr) {
    return absl::ResourceExhaustedError(
        absl::StrCat("AllocateHost: mmap of ", bytes, " bytes failed: ", std::strerror(errno)));
  }
  return p;
}

void EmulatedDevice::FreeHost(void* ptr, uint64_t bytes) {
  if (ptr != nullptr) munmap(ptr, bytes);
}

void EmulatedDevice::Enqueue(Stream stream, Op op) {
  Queue& q = queues_[static_cast<int>(stream)];
  MutexLock lock(&q.mu);
  q.ops.push_back(std::move(op));
  q.cv.SignalAll();
}

absl::Status EmulatedDevice::Copy(Stream stream, std::span<const CopyRegion> regions) {
  Enqueue(stream, Op{.kind = Op::Kind::kCopy, .regions = {regions.begin(), regions.end()}});
  return absl::OkStatus();
}

absl::StatusOr<std::shared_ptr<DeviceEvent>> EmulatedDevice::RecordEvent(Stream stream) {
  // An emulated stream is a host thread: its events are host events it completes.
  auto event = std::make_shared<HostEvent>();
  Enqueue(stream, Op{.kind = Op::Kind::kRecord, .event = event});
  return event;
}

absl::Status EmulatedDevice::WaitEvent(Stream stream, std::shared_ptr<DeviceEvent> event) {
  if (event == nullptr) return absl::InvalidArgumentError("WaitEvent: null event");
  Enqueue(stream, Op{.kind = Op::Kind::kWait, .event = std::move(event)});
  return absl::OkStatus();
}

absl::Status EmulatedDevice::AddCallback(Stream stream, std::function<void(absl::Status)> fn) {
  Enqueue(stream, Op{.kind = Op::Kind::kCallback, .callback = std::move(fn)});
  return absl::OkStatus();
}

absl::Status EmulatedDevice::EncodeToHost(Stream stream, const codec_math::CodecParams& params,
                                          std::span<const codec_math::CodecSegmentJob> jobs) {
  Enqueue(stream,
          Op{.kind = Op::Kind::kEncode, .params = params, .jobs = {jobs.begin(), jobs.end()}});
  return absl::OkStatus();
}

absl::Status EmulatedDevice::DecodeFromHost(Stream stream, const codec_math::CodecParams& params,
                                            std::span<const codec_math::CodecSegmentJob> jobs) {
  Enqueue(stream,
          Op{.kind = Op::Kind::kDecode, .params = params, .jobs = {jobs.begin(), jobs.end()}});
  return absl::OkStatus();
}

bool EmulatedDevice::TakeInjectedFailure() {
  uint32_t n = fail_next_copies_.load();
  while (n > 0) {
    if (fail_next_copies_.compare_exchange_weak(n, n - 1)) return true;
  }
  return false;
}

absl::Status EmulatedDevice::Synchronize() {
  for (int s = 0; s < kNumStreams; ++s) {
    auto event = RecordEvent(static_cast<Stream>(s));
    if (!event.ok()) return event.status();
    (*event)->Wait().IgnoreError();
  }
  return absl::OkStatus();
}

void EmulatedDevice::Run(Queue* q) {
  absl::Status pending;  // first copy error since the last callback on this stream
  for (;;) {
    Op op;
    {
      MutexLock lock(&q->mu);
      while (q->ops.empty() && !q->stop) q->cv.Wait(&q->mu);
      if (q->ops.empty()) return;  // stop requested and drained
      op = std::move(q->ops.front());
      q->ops.pop_front();
    }
    switch (op.kind) {
      case Op::Kind::kCopy:
      case Op::Kind::kEncode:
      case Op::Kind::kDecode:
        if (TakeInjectedFailure()) {
          if (pending.ok()) pending = absl::InternalError("emulated copy failed (injected fault)");
          break;
        }
        for (const CopyRegion& r : op.regions) std::memcpy(r.dst, r.src, r.bytes);
        for (const codec_math::CodecSegmentJob& j : op.jobs) {
          if (op.kind == Op::Kind::kEncode) {
            EncodeSegmentJob(op.params, j, codec_kernel_);
          } else {
            DecodeSegmentJob(op.params, j, codec_kernel_);
          }
        }
        break;
      case Op::Kind::kRecord:
        static_cast<HostEvent*>(op.event.get())->Complete();
        break;
      case Op::Kind::kWait:
        op.event->Wait().IgnoreError();
        break;
      case Op::Kind::kCallback:
        op.callback(std::exchange(pending, absl::OkStatus()));
        break;
    }
  }
}

}  // namespace kvtier::internal
