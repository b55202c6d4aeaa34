// TestDevice: an EmulatedDevice that a test can hold back and watch. Host-to-device copies enqueued
// while the gate is held wait (on the device's stream, like a slow copy engine) until it is
// released, and so do waits for reads while the reads' gate is held; every host allocation is
// recorded. The cache owns the device: keep a raw pointer.
#ifndef KVTIER_TEST_UTIL_TEST_DEVICE_H_
#define KVTIER_TEST_UTIL_TEST_DEVICE_H_

#include <algorithm>
#include <array>
#include <atomic>
#include <cstdint>
#include <memory>
#include <utility>

#include "lib/common/mutex.h"
#include "lib/transfer/emulated_device.h"
#include "lib/transfer/host_event.h"

namespace kvtier::test {

class TestDevice final : public internal::Device {
 public:
  const char* name() const override { return "test"; }

  // Copies enqueued on the host-to-device stream from now on wait for ReleaseHostToDevice().
  void HoldHostToDevice() { Hold(&TestDevice::gate_); }
  void ReleaseHostToDevice() { Release(&TestDevice::gate_); }
  // Waits of a host-to-device stream for a host event (a read from below a promotion's copies
  // wait for) enqueued from now on also wait for ReleaseReads(): reads as slow as the test wants.
  void HoldReads() { Hold(&TestDevice::reads_gate_); }
  void ReleaseReads() { Release(&TestDevice::reads_gate_); }
  // The next WaitEvent on the host-to-device stream for a host event (a disk read a promotion's
  // copies wait for) fails with kInternal, as an enqueue on an unusable device does.
  void FailNextReadWait() {
    internal::MutexLock lock(&mu_);
    fail_read_wait_ = true;
  }
  bool read_wait_failed() {
    internal::MutexLock lock(&mu_);
    return read_wait_failed_;
  }
  // Layer counters in host memory, written in stream order (a callback after the work before
  // it), as CudaDevice writes its device words; counter(i) reads one.
  uint32_t counter(uint32_t i) const {
    return std::atomic_ref<uint32_t>(const_cast<uint32_t&>(counters_[i])).load();
  }
  absl::Status WriteCounter(internal::Stream stream, uint32_t index, uint32_t value) override {
    if (index >= kMaxLayerCounters) return absl::InvalidArgumentError("WriteCounter: index");
    return inner_.AddCallback(stream, [this, index, value](absl::Status) {
      std::atomic_ref<uint32_t>(counters_[index]).store(value);
    });
  }
  void* counters() const override { return const_cast<uint32_t*>(counters_.data()); }
  // The largest AllocateHost() request so far, in bytes.
  uint64_t max_host_allocation() {
    internal::MutexLock lock(&mu_);
    return max_host_allocation_;
  }

  // The `unit` of the last AllocateHost() request.
  uint64_t last_host_unit() {
    internal::MutexLock lock(&mu_);
    return last_host_unit_;
  }

  absl::StatusOr<void*> AllocateHost(uint64_t bytes, uint64_t unit) override {
    {
      internal::MutexLock lock(&mu_);
      max_host_allocation_ = std::max(max_host_allocation_, bytes);
      last_host_unit_ = unit;
    }
    return inner_.AllocateHost(bytes, unit);
  }
  void FreeHost(void* ptr, uint64_t bytes) override { inner_.FreeHost(ptr, bytes); }
  absl::Status Copy(internal::Stream stream,
                    std::span<const internal::CopyRegion> regions) override {
    if (absl::Status s = WaitForGate(stream); !s.ok()) return s;
    return inner_.Copy(stream, regions);
  }
  absl::Status EncodeToHost(internal::Stream stream,
                            const internal::codec_math::CodecParams& params,
                            std::span<const internal::codec_math::CodecSegmentJob> jobs) override {
    return inner_.EncodeToHost(stream, params, jobs);
  }
  absl::Status DecodeFromHost(
      internal::Stream stream, const internal::codec_math::CodecParams& params,
      std::span<const internal::codec_math::CodecSegmentJob> jobs) override {
    if (absl::Status s = WaitForGate(stream); !s.ok()) return s;  // a host-to-device copy too
    return inner_.DecodeFromHost(stream, params, jobs);
  }
  absl::StatusOr<std::shared_ptr<internal::DeviceEvent>> RecordEvent(
      internal::Stream stream) override {
    return inner_.RecordEvent(stream);
  }
  absl::Status WaitEvent(internal::Stream stream,
                         std::shared_ptr<internal::DeviceEvent> event) override {
    if (ToDevice(stream) && dynamic_cast<internal::HostEvent*>(event.get()) != nullptr) {
      std::shared_ptr<internal::HostEvent> reads_gate;
      {
        internal::MutexLock lock(&mu_);
        if (std::exchange(fail_read_wait_, false)) {
          read_wait_failed_ = true;
          return absl::InternalError("TestDevice: injected enqueue failure");
        }
        reads_gate = reads_gate_;
      }
      if (reads_gate != nullptr) {  // a slow read: the stream waits for the gate first
        if (absl::Status s = inner_.WaitEvent(stream, reads_gate); !s.ok()) return s;
      }
    }
    return inner_.WaitEvent(stream, std::move(event));
  }
  absl::Status AddCallback(internal::Stream stream, std::function<void(absl::Status)> fn) override {
    return inner_.AddCallback(stream, std::move(fn));
  }
  absl::Status Synchronize() override { return inner_.Synchronize(); }

 private:
  std::array<uint32_t, kMaxLayerCounters> counters_{};
  internal::EmulatedDevice inner_;
  internal::Mutex mu_;
  using Gate = std::shared_ptr<internal::HostEvent> TestDevice::*;
  void Hold(Gate gate) {
    internal::MutexLock lock(&mu_);
    this->*gate = std::make_shared<internal::HostEvent>();
  }
  void Release(Gate gate) {
    std::shared_ptr<internal::HostEvent> event;
    {
      internal::MutexLock lock(&mu_);
      event = std::move(this->*gate);
    }
    if (event != nullptr) event->Complete();
  }
  // Host-to-device work waits on its stream while the gate is held.
  absl::Status WaitForGate(internal::Stream stream) {
    std::shared_ptr<internal::HostEvent> gate;
    if (ToDevice(stream)) {
      internal::MutexLock lock(&mu_);
      gate = gate_;
    }
    return gate != nullptr ? inner_.WaitEvent(stream, gate) : absl::OkStatus();
  }
  static bool ToDevice(internal::Stream s) {
    return s == internal::Stream::kH2D || s == internal::Stream::kH2DGated;
  }

  std::shared_ptr<internal::HostEvent> gate_ ABSL_GUARDED_BY(mu_);
  std::shared_ptr<internal::HostEvent> reads_gate_ ABSL_GUARDED_BY(mu_);
  uint64_t max_host_allocation_ ABSL_GUARDED_BY(mu_) = 0;
  uint64_t last_host_unit_ ABSL_GUARDED_BY(mu_) = 0;
  bool fail_read_wait_ ABSL_GUARDED_BY(mu_) = false;
  bool read_wait_failed_ ABSL_GUARDED_BY(mu_) = false;
};

}  // namespace kvtier::test

#endif  // KVTIER_TEST_UTIL_TEST_DEVICE_H_
