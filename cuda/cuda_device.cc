// CudaDevice: see cuda_device.h for the contract. The reasoning lives here.
//
// Completion and failure. A callback is not a cudaLaunchHostFunc: a host function stalls its stream
// until the CPU has run it, which would put a GPU -> CPU -> GPU round trip between every layer of
// a load, and it never runs once the context has a sticky error. Instead AddCallback records an
// event, and a watcher thread per stream waits for it (cudaEventSynchronize, blocking sync) and
// then calls the callback, in enqueue order; an error there marks the device failed and the
// callback (and every later one) is called with it. The Device contract that work after a
// callback waits for it is kept where kvtier relies on it, host-side: a CudaEvent's Wait() and
// Query() also wait for the callbacks enqueued on its stream before it. A native cudaEvent_t
// waited on by another stream (the engine's LayerReady) does not: it needs only the bytes.
//
// Host waits. A disk read completes on io_uring's thread, not on a stream. Waiting for it by
// blocking inside a host function would stall CUDA's callback thread for every stream, so the
// stream instead runs a one-thread kernel that polls a mapped host flag (copy_kernels.cu), and the
// read's completion raises it. The flags live in a pool shared with the pending closures, so a
// late completion never writes freed memory; a flag returns to the pool from a callback enqueued
// after its kernel. With the pool exhausted (4096 waits in flight) the wait falls back to
// a host function that blocks.
#include "cuda/cuda_device.h"

#include <sys/mman.h>

#include <algorithm>
#include <array>
#include <atomic>
#include <cerrno>
#include <cstring>
#include <deque>
#include <functional>
#include <span>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/str_cat.h"
#include "cuda/copy_kernels.h"
#include "cuda/cuda_probe.h"
#include "cuda/cuda_status.h"
#include "lib/common/mutex.h"
#include "lib/common/status_macros.h"
#include "lib/transfer/host_event.h"

namespace kvtier::internal {
namespace {

// cudaStreamQuery/cudaEventQuery answer cudaErrorNotReady for work in flight: not an error.
cudaError_t NotReadyIsSuccess(cudaError_t e) { return e == cudaErrorNotReady ? cudaSuccess : e; }

// Makes a device current for a scope and restores the caller's current device after.
class ScopedDevice {
 public:
  ScopedDevice() = default;
  ScopedDevice(const ScopedDevice&) = delete;
  ScopedDevice& operator=(const ScopedDevice&) = delete;
  ~ScopedDevice() {
    // Nothing to report from a destructor; a failure here would show on the next call anyway.
    if (restore_) static_cast<void>(cudaSetDevice(previous_));
  }
  absl::Status Enter(int device) {
    KVTIER_CUDA_RETURN_IF_ERROR(cudaGetDevice(&previous_));
    if (previous_ != device) {
      KVTIER_CUDA_RETURN_IF_ERROR(cudaSetDevice(device));
      restore_ = true;
    }
    return absl::OkStatus();
  }

 private:
  int previous_ = 0;
  bool restore_ = false;
};

// The callbacks of one stream, as a CudaEvent sees them.
class CallbackClock {
 public:
  virtual ~CallbackClock() = default;
  // True once callback number `seq` (1-based; 0: none) of the stream has been called.
  virtual bool CallbacksDone(int stream, uint64_t seq) = 0;
  virtual void WaitCallbacks(int stream, uint64_t seq) = 0;
};

class CudaEvent final : public DeviceEvent {
 public:
  // `callbacks_before`: callbacks enqueued on `stream` before the event, which Wait() and Query()
  // also wait for. `clock` outlives every host-side wait (a Device outlives its events' users).
  CudaEvent(cudaEvent_t event, CallbackClock* clock, int stream, uint64_t callbacks_before)
      : event_(event), clock_(clock), stream_(stream), callbacks_before_(callbacks_before) {}
  ~CudaEvent() override {
    // Destroying a recorded event that has not completed is allowed: CUDA releases it later.
    static_cast<void>(cudaEventDestroy(event_));
  }
  CudaEvent(const CudaEvent&) = delete;
  CudaEvent& operator=(const CudaEvent&) = delete;

  // An error (a failed device) counts as complete: Wait() then reports it.
  bool Query() const override {
    return cudaEventQuery(event_) != cudaErrorNotReady &&
           clock_->CallbacksDone(stream_, callbacks_before_);
  }
  absl::Status Wait() const override {
    const absl::Status s = [&]() -> absl::Status {
      KVTIER_CUDA_RETURN_IF_ERROR(cudaEventSynchronize(event_));
      return absl::OkStatus();
    }();
    // Even on error: the watcher calls the earlier callbacks with it at once.
    clock_->WaitCallbacks(stream_, callbacks_before_);
    return s;
  }
  void* native() const override { return event_; }

 private:
  cudaEvent_t event_;
  CallbackClock* clock_;
  int stream_;
  uint64_t callbacks_before_;
};

struct Callback {
  explicit Callback(std::function<void(absl::Status)> f) : fn(std::move(f)) {}
  void Fire(const absl::Status& status) {
    if (!fired.exchange(true)) fn(status);
  }
  std::function<void(absl::Status)> fn;
  std::atomic<bool> fired{false};
};

// Mapped pinned words that WaitFlagKernel polls; see the file comment.
struct FlagPool {
  static constexpr uint32_t kFlags = 4096;
  FlagPool(uint32_t* h, uint32_t* d) : host(h), device(d) {
    for (uint32_t i = 0; i < kFlags; ++i) free.push_back(kFlags - 1 - i);
  }
  ~FlagPool() { static_cast<void>(cudaFreeHost(host)); }  // nothing to report at teardown
  FlagPool(const FlagPool&) = delete;
  FlagPool& operator=(const FlagPool&) = delete;

  bool Take(uint32_t* index) {
    MutexLock lock(&mu);
    if (free.empty()) return false;
    *index = free.back();
    free.pop_back();
    std::atomic_ref<uint32_t>(host[*index]).store(0, std::memory_order_relaxed);
    return true;
  }
  void Give(uint32_t index) {
    MutexLock lock(&mu);
    free.push_back(index);
  }
  void Raise(uint32_t index) {
    std::atomic_ref<uint32_t>(host[index]).store(1, std::memory_order_release);
  }

  uint32_t* const host;
  uint32_t* const device;
  Mutex mu;
  std::vector<uint32_t> free ABSL_GUARDED_BY(mu);
};

void CUDART_CB BlockOnHostEvent(void* arg) {
  auto* event = static_cast<std::shared_ptr<DeviceEvent>*>(arg);
  (*event)->Wait().IgnoreError();  // a HostEvent's Wait cannot fail
  delete event;
}

class CudaDevice final : public Device, public CallbackClock {
 public:
  static absl::StatusOr<std::unique_ptr<CudaDevice>> Create(const CudaOptions& options);
  ~CudaDevice() override;
  CudaDevice(const CudaDevice&) = delete;
  CudaDevice& operator=(const CudaDevice&) = delete;

  const char* name() const override { return "cuda"; }
  absl::StatusOr<void*> AllocateHost(uint64_t bytes) override;
  void FreeHost(void* ptr, uint64_t bytes) override;
  absl::Status Copy(Stream stream, std::span<const CopyRegion> regions) override;
  absl::StatusOr<std::shared_ptr<DeviceEvent>> RecordEvent(Stream stream) override;
  absl::Status WaitEvent(Stream stream, std::shared_ptr<DeviceEvent> event) override;
  absl::Status AddCallback(Stream stream, std::function<void(absl::Status)> fn) override;
  absl::Status Synchronize() override;

  // Marks the device failed (first cause wins) and calls every pending callback with the error.
  void MarkFailed(const absl::Status& cause);

  bool CallbacksDone(int stream, uint64_t seq) override;
  void WaitCallbacks(int stream, uint64_t seq) override;

 private:
  struct Pending {
    std::shared_ptr<Callback> cb;
    cudaEvent_t after = nullptr;  // recorded where the callback was enqueued
  };
  struct Watch {
    Mutex mu;
    CondVar cv;
    std::deque<Pending> queue ABSL_GUARDED_BY(mu);
    uint64_t added ABSL_GUARDED_BY(mu) = 0;
    uint64_t finished ABSL_GUARDED_BY(mu) = 0;
    bool stop ABSL_GUARDED_BY(mu) = false;
    std::thread thread;
  };
  struct Pinned {
    const std::byte* host;
    uint64_t bytes;
    std::byte* device;  // cudaHostGetDevicePointer of `host`
  };

  CudaDevice(int device, CudaCopyMethod method) : device_(device), method_(method) {}
  absl::Status Init();
  void WatchLoop(Watch* watch);

  // The failure as a status for `call`, or OK while the device is usable.
  absl::Status Refuse(const char* call) const;
  absl::Status failure() const;
  // After an enqueue call failed with `error`: if the context has a sticky error, the device is
  // failed. Clears the thread's non-sticky last error so the engine's next check does not see it.
  absl::Status AfterError(absl::Status error);
  absl::Status Probe(cudaStream_t s);

  absl::Status CopyImpl(cudaStream_t s, std::span<const CopyRegion> regions);
  absl::Status CopyByKernel(cudaStream_t s, std::span<const CopyRegion> regions);
  absl::Status CopyByBatch(cudaStream_t s, std::span<const CopyRegion> regions);
  absl::Status WaitEventImpl(cudaStream_t s, const std::shared_ptr<DeviceEvent>& event);
  absl::Status AddCallbackImpl(Stream stream, std::shared_ptr<Callback> cb);
  // The device address of `p` when it lies in a pool this device pinned; `p` otherwise.
  const void* DeviceAddress(const void* p) const ABSL_EXCLUSIVE_LOCKS_REQUIRED(pinned_mu_);

  cudaStream_t stream(Stream s) const { return streams_[static_cast<int>(s)]; }
  Stream stream_of(cudaStream_t s) const {
    return s == streams_[static_cast<int>(Stream::kH2D)] ? Stream::kH2D : Stream::kD2H;
  }

  const int device_;
  const CudaCopyMethod method_;
  std::array<cudaStream_t, kNumStreams> streams_{};
  std::array<Watch, kNumStreams> watches_;
  std::shared_ptr<FlagPool> flags_;
  mutable Mutex pinned_mu_;
  std::vector<Pinned> pinned_ ABSL_GUARDED_BY(pinned_mu_);  // sorted by host address
  std::atomic<bool> failed_{false};
  mutable Mutex failed_mu_;
  absl::Status failure_ ABSL_GUARDED_BY(failed_mu_);
};

absl::StatusOr<std::unique_ptr<CudaDevice>> CudaDevice::Create(const CudaOptions& options) {
  const CudaCopyMethod method =
      options.copy_method == CudaCopyMethod::kAuto ? CudaCopyMethod::kKernel : options.copy_method;
  std::unique_ptr<CudaDevice> device(new CudaDevice(options.device, method));
  KVTIER_RETURN_IF_ERROR(device->Init());
  return device;
}

absl::Status CudaDevice::Init() {
  ScopedDevice scope;
  KVTIER_RETURN_IF_ERROR(scope.Enter(device_));
  int least = 0, greatest = 0;  // numerically, greatest < least
  KVTIER_CUDA_RETURN_IF_ERROR(cudaDeviceGetStreamPriorityRange(&least, &greatest));
  KVTIER_CUDA_RETURN_IF_ERROR(cudaStreamCreateWithPriority(
      &streams_[static_cast<int>(Stream::kH2D)], cudaStreamNonBlocking, greatest));
  KVTIER_CUDA_RETURN_IF_ERROR(cudaStreamCreateWithPriority(
      &streams_[static_cast<int>(Stream::kD2H)], cudaStreamNonBlocking, least));
  void* host = nullptr;
  KVTIER_CUDA_RETURN_IF_ERROR(cudaHostAlloc(&host, FlagPool::kFlags * sizeof(uint32_t),
                                            cudaHostAllocMapped | cudaHostAllocPortable));
  std::memset(host, 0, FlagPool::kFlags * sizeof(uint32_t));
  void* dev = nullptr;
  if (cudaError_t e = cudaHostGetDevicePointer(&dev, host, 0); e != cudaSuccess) {
    static_cast<void>(cudaFreeHost(host));  // the error below is the one to report
    KVTIER_CUDA_RETURN_IF_ERROR(e);
  }
  flags_ = std::make_shared<FlagPool>(static_cast<uint32_t*>(host), static_cast<uint32_t*>(dev));
  for (Watch& w : watches_) w.thread = std::thread([this, &w] { WatchLoop(&w); });
  return absl::OkStatus();
}

CudaDevice::~CudaDevice() {
  if (flags_ != nullptr) Synchronize().IgnoreError();  // Init got that far: drain
  for (Watch& w : watches_) {
    {
      MutexLock lock(&w.mu);
      w.stop = true;
      w.cv.SignalAll();
    }
    if (w.thread.joinable()) w.thread.join();
  }
  for (cudaStream_t s : streams_) {
    if (s != nullptr) static_cast<void>(cudaStreamDestroy(s));  // nothing to report at teardown
  }
}

void CudaDevice::WatchLoop(Watch* w) {
  for (;;) {
    Pending p;
    {
      MutexLock lock(&w->mu);
      while (w->queue.empty() && !w->stop) w->cv.Wait(&w->mu);
      if (w->queue.empty()) return;
      p = w->queue.front();
    }
    const absl::Status waited = [&]() -> absl::Status {
      KVTIER_CUDA_RETURN_IF_ERROR(cudaEventSynchronize(p.after));
      return absl::OkStatus();
    }();
    static_cast<void>(cudaEventDestroy(p.after));  // done with it either way
    if (!waited.ok()) MarkFailed(waited);
    // OK unless the device failed (then already called, by MarkFailed, unless it just failed).
    p.cb->Fire(failed_.load(std::memory_order_acquire) ? failure() : absl::OkStatus());
    MutexLock lock(&w->mu);
    w->queue.pop_front();
    w->finished++;
    w->cv.SignalAll();
  }
}

bool CudaDevice::CallbacksDone(int stream, uint64_t seq) {
  Watch& w = watches_[stream];
  MutexLock lock(&w.mu);
  return w.finished >= seq;
}

void CudaDevice::WaitCallbacks(int stream, uint64_t seq) {
  Watch& w = watches_[stream];
  MutexLock lock(&w.mu);
  while (w.finished < seq) w.cv.Wait(&w.mu);
}

absl::Status CudaDevice::failure() const {
  MutexLock lock(&failed_mu_);
  return failure_;
}

absl::Status CudaDevice::Refuse(const char* call) const {
  if (!failed_.load(std::memory_order_acquire)) return absl::OkStatus();
  return absl::FailedPreconditionError(
      absl::StrCat(call, ": the CUDA device failed earlier (", failure().message(), ")"));
}

void CudaDevice::MarkFailed(const absl::Status& cause) {
  {
    MutexLock lock(&failed_mu_);
    if (failure_.ok()) {
      failure_ = cause.ok() ? absl::InternalError("CudaDevice: marked failed") : cause;
    }
  }
  failed_.store(true, std::memory_order_release);
  const absl::Status error = failure();
  // Fire outside the watch locks: callbacks take the cache's lock, which enqueuers hold while
  // taking a watch lock.
  std::vector<std::shared_ptr<Callback>> pending;
  for (Watch& w : watches_) {
    MutexLock lock(&w.mu);
    for (const Pending& p : w.queue) pending.push_back(p.cb);
  }
  for (const auto& cb : pending) cb->Fire(error);
}

absl::Status CudaDevice::Probe(cudaStream_t s) {
  KVTIER_CUDA_RETURN_IF_ERROR(NotReadyIsSuccess(cudaStreamQuery(s)));
  return absl::OkStatus();
}

absl::Status CudaDevice::AfterError(absl::Status error) {
  static_cast<void>(cudaGetLastError());  // clears a non-sticky error; a sticky one stays
  for (cudaStream_t s : streams_) {
    if (absl::Status sticky = Probe(s); !sticky.ok()) {
      MarkFailed(sticky);
      break;
    }
  }
  return error;
}

absl::StatusOr<void*> CudaDevice::AllocateHost(uint64_t bytes) {
  KVTIER_RETURN_IF_ERROR(Refuse("CudaDevice::AllocateHost"));
  ScopedDevice scope;
  KVTIER_RETURN_IF_ERROR(scope.Enter(device_));
  // Plain anonymous pages, pinned once: O_DIRECT and io_uring buffer registration need ordinary
  // pages, which cudaHostAlloc's driver mapping is not.
  void* p = mmap(nullptr, bytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  if (p == MAP_FAILED) {
    return absl::ResourceExhaustedError(absl::StrCat("CudaDevice::AllocateHost: mmap of ", bytes,
                                                     " bytes failed: ", std::strerror(errno)));
  }
  auto pin = [&]() -> absl::StatusOr<void*> {
    KVTIER_CUDA_RETURN_IF_ERROR(
        cudaHostRegister(p, bytes, cudaHostRegisterMapped | cudaHostRegisterPortable));
    void* dev = nullptr;
    if (cudaError_t e = cudaHostGetDevicePointer(&dev, p, 0); e != cudaSuccess) {
      static_cast<void>(cudaHostUnregister(p));  // the error below is the one to report
      KVTIER_CUDA_RETURN_IF_ERROR(e);
    }
    return dev;
  };
  absl::StatusOr<void*> dev = pin();
  if (!dev.ok()) {
    munmap(p, bytes);
    static_cast<void>(cudaGetLastError());  // not sticky: leave nothing for the engine's checks
    return dev.status();
  }
  MutexLock lock(&pinned_mu_);
  Pinned entry{static_cast<const std::byte*>(p), bytes, static_cast<std::byte*>(*dev)};
  pinned_.insert(std::upper_bound(pinned_.begin(), pinned_.end(), entry,
                                  [](const Pinned& a, const Pinned& b) { return a.host < b.host; }),
                 entry);
  return p;
}

void CudaDevice::FreeHost(void* ptr, uint64_t bytes) {
  if (ptr == nullptr) return;
  {
    MutexLock lock(&pinned_mu_);
    std::erase_if(pinned_, [&](const Pinned& e) { return e.host == ptr; });
  }
  ScopedDevice scope;
  static_cast<void>(scope.Enter(device_));  // FreeHost cannot fail; unregistering still works
  static_cast<void>(cudaHostUnregister(ptr));
  munmap(ptr, bytes);
}

const void* CudaDevice::DeviceAddress(const void* p) const {
  const auto* b = static_cast<const std::byte*>(p);
  auto it = std::upper_bound(pinned_.begin(), pinned_.end(), b,
                             [](const std::byte* x, const Pinned& e) { return x < e.host; });
  if (it == pinned_.begin()) return p;
  --it;
  if (b >= it->host + it->bytes) return p;
  return it->device + (b - it->host);
}

absl::Status CudaDevice::Copy(Stream stream_id, std::span<const CopyRegion> regions) {
  KVTIER_RETURN_IF_ERROR(Refuse("CudaDevice::Copy"));
  ScopedDevice scope;
  KVTIER_RETURN_IF_ERROR(scope.Enter(device_));
  absl::Status s = CopyImpl(stream(stream_id), regions);
  return s.ok() ? s : AfterError(std::move(s));
}

absl::Status CudaDevice::CopyImpl(cudaStream_t s, std::span<const CopyRegion> regions) {
  switch (method_) {
    case CudaCopyMethod::kAuto:
    case CudaCopyMethod::kKernel:
      return CopyByKernel(s, regions);
    case CudaCopyMethod::kBatchMemcpy:
      return CopyByBatch(s, regions);
    case CudaCopyMethod::kMemcpyAsync:
      for (const CopyRegion& r : regions) {
        if (r.bytes == 0) continue;
        KVTIER_CUDA_RETURN_IF_ERROR(cudaMemcpyAsync(r.dst, r.src, r.bytes, cudaMemcpyDefault, s));
      }
      return absl::OkStatus();
  }
  return absl::InternalError("CudaDevice::Copy: unknown copy method");
}

absl::Status CudaDevice::CopyByKernel(cudaStream_t s, std::span<const CopyRegion> regions) {
  std::vector<GatherRegion> batch;
  batch.reserve(std::min<size_t>(regions.size(), kMaxGatherRegions));
  uint64_t max_bytes = 0;
  auto flush = [&]() -> absl::Status {
    if (batch.empty()) return absl::OkStatus();
    KVTIER_CUDA_RETURN_IF_ERROR(
        LaunchGather(batch.data(), static_cast<uint32_t>(batch.size()), max_bytes, s));
    batch.clear();
    max_bytes = 0;
    return absl::OkStatus();
  };
  MutexLock lock(&pinned_mu_);
  for (const CopyRegion& r : regions) {
    if (r.bytes == 0) continue;
    batch.push_back({const_cast<void*>(DeviceAddress(r.dst)), DeviceAddress(r.src), r.bytes});
    max_bytes = std::max(max_bytes, r.bytes);
    if (batch.size() == kMaxGatherRegions) KVTIER_RETURN_IF_ERROR(flush());
  }
  return flush();
}

absl::Status CudaDevice::CopyByBatch(cudaStream_t s, std::span<const CopyRegion> regions) {
  constexpr size_t kMaxBatch = 4096;  // bounds the arrays; the API states no limit
  std::vector<void*> dsts;
  std::vector<const void*> srcs;
  std::vector<size_t> sizes;
  auto flush = [&]() -> absl::Status {
    if (dsts.empty()) return absl::OkStatus();
    // One attribute for every copy: sources in stream order (they are written by earlier work on
    // this stream or by the engine before it called us); overlap with compute preferred.
    cudaMemcpyAttributes attr{};
    attr.srcAccessOrder = cudaMemcpySrcAccessOrderStream;
    attr.flags = cudaMemcpyFlagPreferOverlapWithCompute;
    size_t attr_index = 0;
    KVTIER_CUDA_RETURN_IF_ERROR(cudaMemcpyBatchAsync(dsts.data(), srcs.data(), sizes.data(),
                                                     dsts.size(), &attr, &attr_index, 1, s));
    dsts.clear();
    srcs.clear();
    sizes.clear();
    return absl::OkStatus();
  };
  for (const CopyRegion& r : regions) {
    if (r.bytes == 0) continue;
    dsts.push_back(r.dst);
    srcs.push_back(r.src);
    sizes.push_back(r.bytes);
    if (dsts.size() == kMaxBatch) KVTIER_RETURN_IF_ERROR(flush());
  }
  return flush();
}

absl::StatusOr<std::shared_ptr<DeviceEvent>> CudaDevice::RecordEvent(Stream stream_id) {
  KVTIER_RETURN_IF_ERROR(Refuse("CudaDevice::RecordEvent"));
  ScopedDevice scope;
  KVTIER_RETURN_IF_ERROR(scope.Enter(device_));
  const int index = static_cast<int>(stream_id);
  auto record = [&]() -> absl::StatusOr<std::shared_ptr<DeviceEvent>> {
    cudaEvent_t e = nullptr;
    KVTIER_CUDA_RETURN_IF_ERROR(
        cudaEventCreateWithFlags(&e, cudaEventDisableTiming | cudaEventBlockingSync));
    // Callbacks enqueued so far on this stream. The count and the record are not atomic together:
    // a callback another thread adds in between may be counted; waiting for it as well is
    // harmless (it runs after work enqueued before this event anyway).
    uint64_t callbacks_before = 0;
    {
      MutexLock lock(&watches_[index].mu);
      callbacks_before = watches_[index].added;
    }
    auto event = std::make_shared<CudaEvent>(e, this, index, callbacks_before);
    KVTIER_CUDA_RETURN_IF_ERROR(cudaEventRecord(e, stream(stream_id)));
    return event;
  };
  absl::StatusOr<std::shared_ptr<DeviceEvent>> event = record();
  if (!event.ok()) return AfterError(event.status());
  return event;
}

absl::Status CudaDevice::WaitEvent(Stream stream_id, std::shared_ptr<DeviceEvent> event) {
  if (event == nullptr) return absl::InvalidArgumentError("CudaDevice::WaitEvent: null event");
  KVTIER_RETURN_IF_ERROR(Refuse("CudaDevice::WaitEvent"));
  ScopedDevice scope;
  KVTIER_RETURN_IF_ERROR(scope.Enter(device_));
  absl::Status s = WaitEventImpl(stream(stream_id), event);
  return s.ok() ? s : AfterError(std::move(s));
}

absl::Status CudaDevice::WaitEventImpl(cudaStream_t s, const std::shared_ptr<DeviceEvent>& event) {
  if (void* native = event->native(); native != nullptr) {
    KVTIER_CUDA_RETURN_IF_ERROR(cudaStreamWaitEvent(s, static_cast<cudaEvent_t>(native), 0));
    return absl::OkStatus();
  }
  if (event->Query()) return absl::OkStatus();  // host work already done: nothing to wait for
  auto* host = dynamic_cast<HostEvent*>(event.get());
  if (host == nullptr) {
    return absl::InvalidArgumentError(
        "CudaDevice::WaitEvent: an event that is neither a CUDA event nor a HostEvent");
  }
  uint32_t index = 0;
  if (!flags_->Take(&index)) {
    // Every flag is in use: block CUDA's callback thread instead (slower, still correct).
    auto arg = std::make_unique<std::shared_ptr<DeviceEvent>>(event);
    KVTIER_CUDA_RETURN_IF_ERROR(cudaLaunchHostFunc(s, &BlockOnHostEvent, arg.get()));
    static_cast<void>(arg.release());  // BlockOnHostEvent frees it
    return absl::OkStatus();
  }
  if (cudaError_t e = LaunchWaitFlag(flags_->device + index, 1, s); e != cudaSuccess) {
    flags_->Give(index);
    KVTIER_CUDA_RETURN_IF_ERROR(e);
  }
  // The kernel is queued: from here on the flag must be raised whatever else fails.
  host->Then([pool = flags_, index] { pool->Raise(index); });
  // The flag is reused once the kernel has passed (if this fails, it is simply never reused).
  static_cast<void>(AddCallbackImpl(
      stream_of(s), std::make_shared<Callback>([pool = flags_, index](absl::Status st) {
        if (st.ok()) pool->Give(index);
      })));
  return absl::OkStatus();
}

absl::Status CudaDevice::AddCallback(Stream stream_id, std::function<void(absl::Status)> fn) {
  KVTIER_RETURN_IF_ERROR(Refuse("CudaDevice::AddCallback"));
  ScopedDevice scope;
  KVTIER_RETURN_IF_ERROR(scope.Enter(device_));
  absl::Status s = AddCallbackImpl(stream_id, std::make_shared<Callback>(std::move(fn)));
  return s.ok() ? s : AfterError(std::move(s));
}

absl::Status CudaDevice::AddCallbackImpl(Stream stream_id, std::shared_ptr<Callback> cb) {
  cudaEvent_t after = nullptr;
  KVTIER_CUDA_RETURN_IF_ERROR(
      cudaEventCreateWithFlags(&after, cudaEventDisableTiming | cudaEventBlockingSync));
  if (cudaError_t e = cudaEventRecord(after, stream(stream_id)); e != cudaSuccess) {
    static_cast<void>(cudaEventDestroy(after));  // the record error is the one to report
    KVTIER_CUDA_RETURN_IF_ERROR(e);
  }
  // Queued: the watcher now calls it exactly once, whatever happens to the device.
  Watch& w = watches_[static_cast<int>(stream_id)];
  MutexLock lock(&w.mu);
  w.queue.push_back({std::move(cb), after});
  w.added++;
  w.cv.SignalAll();
  return absl::OkStatus();
}

absl::Status CudaDevice::Synchronize() {
  std::array<uint64_t, kNumStreams> added{};
  for (int i = 0; i < kNumStreams; ++i) {
    MutexLock lock(&watches_[i].mu);
    added[i] = watches_[i].added;
  }
  ScopedDevice scope;
  absl::Status s = scope.Enter(device_);
  for (cudaStream_t st : streams_) {
    if (!s.ok()) break;
    s = [&]() -> absl::Status {
      KVTIER_CUDA_RETURN_IF_ERROR(cudaStreamSynchronize(st));
      return absl::OkStatus();
    }();
  }
  if (!s.ok()) MarkFailed(s);
  // The callbacks enqueued so far have run (or, on a failed device, been called with the error).
  for (int i = 0; i < kNumStreams; ++i) {
    Watch& w = watches_[i];
    MutexLock lock(&w.mu);
    while (w.finished < added[i]) w.cv.Wait(&w.mu);
  }
  if (failed_.load(std::memory_order_acquire)) return failure();
  return s;
}

}  // namespace

absl::StatusOr<std::unique_ptr<Device>> CreateCudaDevice(const CudaOptions& options) {
  std::string why;
  const int count = CudaDeviceCount(&why);
  if (count == 0) {
    return absl::FailedPreconditionError(
        absl::StrCat("CreateCudaDevice: no CUDA device (", why, ")"));
  }
  if (options.device < 0 || options.device >= count) {
    return absl::FailedPreconditionError(absl::StrCat("CreateCudaDevice: device ", options.device,
                                                      " vs 0..", count - 1, " present"));
  }
  KVTIER_ASSIGN_OR_RETURN(std::unique_ptr<CudaDevice> device, CudaDevice::Create(options));
  return std::unique_ptr<Device>(std::move(device));
}

int CudaDeviceOfPointer(const void* ptr, std::string* why) {
  if (CudaDeviceCount(why) == 0) return -1;
  cudaPointerAttributes attr{};
  if (cudaError_t e = cudaPointerGetAttributes(&attr, ptr); e != cudaSuccess) {
    static_cast<void>(cudaGetLastError());  // not sticky: clear it
    if (why != nullptr) *why = absl::StrCat("cudaPointerGetAttributes: ", cudaGetErrorString(e));
    return -1;
  }
  if (attr.type == cudaMemoryTypeDevice || attr.type == cudaMemoryTypeManaged) return attr.device;
  if (why != nullptr) *why = "the layout's pointers are not CUDA device memory";
  return -1;
}

absl::Status FailCudaDeviceForTesting(Device* device, absl::Status error) {
  auto* cuda = dynamic_cast<CudaDevice*>(device);
  if (cuda == nullptr) {
    return absl::InvalidArgumentError("FailCudaDeviceForTesting: not a CudaDevice");
  }
  cuda->MarkFailed(error);
  return absl::OkStatus();
}

}  // namespace kvtier::internal
