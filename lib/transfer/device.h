// Device: the one interface through which kvtier moves bytes to and from the accelerator.
//
// Two backends implement it: EmulatedDevice (lib/transfer, host memory and copy threads) and
// CudaDevice (cuda/). Semantics are CUDA's: work is enqueued on a stream and runs in enqueue order;
// an event completes when everything enqueued on its stream before it has; a stream can be made to
// wait for an event of another stream; a callback runs after the work before it, off the caller's
// thread, and must not enqueue work or wait on the device.
//
// Thread safety: every method from any thread. Enqueueing never waits for earlier work.
// Errors: enqueue calls fail only when the device is unusable. A copy that fails while running is
//   reported to the next callback on its stream (its `status` argument), and the bytes it should
//   have written are undefined: the caller must not publish them.
#ifndef KVTIER_LIB_TRANSFER_DEVICE_H_
#define KVTIER_LIB_TRANSFER_DEVICE_H_

#include <cstdint>
#include <functional>
#include <memory>
#include <span>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "lib/codec/codec_math.h"

namespace kvtier::internal {

// kH2D: promotions whose blocks are all on the host (host hits). kH2DGated: promotions that wait
// for reads from below (disk, remote), so that a read's latency never delays a host hit queued
// after it. kD2H: demotions. kCounters: the layer counters (WriteCounter), each written after its
// Load's layer event, in Load order whichever H2D stream the Load used.
enum class Stream : uint8_t { kH2D = 0, kD2H = 1, kH2DGated = 2, kCounters = 3 };
inline constexpr int kNumStreams = 4;

struct CopyRegion {
  void* dst = nullptr;
  const void* src = nullptr;
  uint64_t bytes = 0;
};

class DeviceEvent {
 public:
  virtual ~DeviceEvent() = default;
  // True once complete; never blocks.
  virtual bool Query() const = 0;
  // Blocks the calling thread until complete.
  virtual absl::Status Wait() const = 0;
  // The backend's handle (cudaEvent_t), or nullptr.
  virtual void* native() const = 0;
};

class Device {
 public:
  virtual ~Device() = default;
  virtual const char* name() const = 0;

  // `bytes` of page-aligned host memory that the device can copy from and to at full speed
  // (pinned); freed by FreeHost. `unit` (0: none): the size of what no copy region crosses (a host
  // slot), at offsets 0, unit, 2 unit, ...: a backend may pin the memory in pieces of whole units.
  // kResourceExhausted when it cannot be had.
  virtual absl::StatusOr<void*> AllocateHost(uint64_t bytes, uint64_t unit) = 0;
  virtual void FreeHost(void* ptr, uint64_t bytes) = 0;

  // Enqueues the copies, in order, on `stream`.
  virtual absl::Status Copy(Stream stream, std::span<const CopyRegion> regions) = 0;
  // Enqueues an event on `stream`.
  virtual absl::StatusOr<std::shared_ptr<DeviceEvent>> RecordEvent(Stream stream) = 0;
  // Makes later work on `stream` wait until `event` completes.
  virtual absl::Status WaitEvent(Stream stream, std::shared_ptr<DeviceEvent> event) = 0;
  // Enqueues `fn`, called with the first error of the copies enqueued on `stream` since the
  // previous callback on it (OK if none failed).
  virtual absl::Status AddCallback(Stream stream, std::function<void(absl::Status)> fn) = 0;
  // The host codec (Options.host.codec) runs on the device, so the bus carries the encoded form.
  // Each job is one segment of one block (lib/codec/codec_math.h). EncodeToHost enqueues on
  // `stream` the encoding of each job's raw bytes (src: device memory) into its dst (host memory
  // from AllocateHost); DecodeFromHost the decoding of each job's encoded bytes (src: host memory)
  // into its dst (device memory). Both write exactly the bytes of the CPU codec (BlockCodec) and
  // run in order with the stream's other work; a failure while running is reported as a copy's
  // (the dst bytes are then undefined). Jobs must not overlap.
  virtual absl::Status EncodeToHost(Stream stream, const codec_math::CodecParams& params,
                                    std::span<const codec_math::CodecSegmentJob> jobs) = 0;
  virtual absl::Status DecodeFromHost(Stream stream, const codec_math::CodecParams& params,
                                      std::span<const codec_math::CodecSegmentJob> jobs) = 0;
  // Blocks until all work enqueued so far on every stream is done (callbacks included).
  virtual absl::Status Synchronize() = 0;

  // Graph-stable layer counters (docs/cuda.md, "CUDA graphs"): kMaxLayerCounters 32-bit words in
  // device memory that the device owns for its life. WriteCounter enqueues counter[index] = value
  // on `stream`, in order with its other work; counters() is their device address. A backend
  // without them (the emulated device) has counters() == nullptr and WriteCounter does nothing.
  static constexpr uint32_t kMaxLayerCounters = 1024;
  virtual absl::Status WriteCounter(Stream stream, uint32_t index, uint32_t value) {
    static_cast<void>(stream);
    static_cast<void>(index);
    static_cast<void>(value);
    return absl::OkStatus();
  }
  virtual void* counters() const { return nullptr; }
};

}  // namespace kvtier::internal

#endif  // KVTIER_LIB_TRANSFER_DEVICE_H_
