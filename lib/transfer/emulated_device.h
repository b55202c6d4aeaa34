// EmulatedDevice: a Device whose "device memory" is host memory, for machines without a GPU.
//
// Each stream is a thread that runs its queue in order: copies are memcpy, events complete when the
// thread reaches them, WaitEvent blocks the thread, callbacks run on it. The ordering and
// completion semantics are those of CUDA streams, so the cache's state machine is exercised exactly
// as on a GPU.
//
// The host codec's jobs (EncodeToHost, DecodeFromHost) run on the stream's thread with the CPU
// codec's `codec_kernel` (lib/codec/codec.h): the fastest by default; CodecKernel::kItems runs the
// CUDA kernels' own code, so that tests check the device codec path with it.
//
// Fault injection (tests): FailNextCopies(n) makes the next n copy or codec operations, on any
// stream, fail without writing their destination; the failure reaches the next callback of that
// stream.
// Thread safety: every method from any thread. Destruction drains the queues.
#ifndef KVTIER_LIB_TRANSFER_EMULATED_DEVICE_H_
#define KVTIER_LIB_TRANSFER_EMULATED_DEVICE_H_

#include <array>
#include <atomic>
#include <deque>
#include <thread>
#include <vector>

#include "lib/codec/codec.h"
#include "lib/common/mutex.h"
#include "lib/transfer/device.h"

namespace kvtier::internal {

class EmulatedDevice final : public Device {
 public:
  explicit EmulatedDevice(CodecKernel codec_kernel = DefaultCodecKernel());
  ~EmulatedDevice() override;

  const char* name() const override { return "emulated"; }
  absl::StatusOr<void*> AllocateHost(uint64_t bytes, uint64_t unit) override;
  void FreeHost(void* ptr, uint64_t bytes) override;
  absl::Status Copy(Stream stream, std::span<const CopyRegion> regions) override;
  absl::StatusOr<std::shared_ptr<DeviceEvent>> RecordEvent(Stream stream) override;
  absl::Status WaitEvent(Stream stream, std::shared_ptr<DeviceEvent> event) override;
  absl::Status AddCallback(Stream stream, std::function<void(absl::Status)> fn) override;
  absl::Status EncodeToHost(Stream stream, const codec_math::CodecParams& params,
                            std::span<const codec_math::CodecSegmentJob> jobs) override;
  absl::Status DecodeFromHost(Stream stream, const codec_math::CodecParams& params,
                              std::span<const codec_math::CodecSegmentJob> jobs) override;
  absl::Status Synchronize() override;

  void FailNextCopies(uint32_t n) { fail_next_copies_.fetch_add(n); }

 private:
  struct Op;
  struct Queue {
    Mutex mu;
    CondVar cv;
    std::deque<Op> ops ABSL_GUARDED_BY(mu);
    bool stop ABSL_GUARDED_BY(mu) = false;
    std::thread thread;
  };
  void Enqueue(Stream stream, Op op);
  void Run(Queue* queue);

  // Whether this copy or codec operation is to fail (FailNextCopies).
  bool TakeInjectedFailure();

  const CodecKernel codec_kernel_;
  std::atomic<uint32_t> fail_next_copies_{0};
  std::array<Queue, kNumStreams> queues_;
};

}  // namespace kvtier::internal

#endif  // KVTIER_LIB_TRANSFER_EMULATED_DEVICE_H_
