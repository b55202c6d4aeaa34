// CudaDevice: see cuda_device.h for the contract. The reasoning lives here.
//
// Threads. No CUDA call runs on a caller's thread: the cache enqueues under its index lock, and a
// launch or copy blocks once a stream's queue is full (about a thousand commands) or behind a
// lazily loaded module, while the stream may be held by a wait for a disk read whose completion
// needs that lock. Every enqueue call only queues a closure on a StreamRunner
// (lib/transfer/stream_runner.h); per stream one issuer thread makes the CUDA calls in order and
// one watcher thread waits for each callback's event and calls the callback. Both threads make
// the device current first (cudaSetDevice), so no runtime call ever lands on device 0 by default.
// The copy and codec kernels are loaded at start-up (PreloadCopyKernels, PreloadCodecKernels), so
// the first launch cannot wait for a module load behind a running spin kernel.
//
// Codecs. EncodeToHost/DecodeFromHost stage the host side of their jobs in one device scratch
// allocation from kvtier's own stream-ordered pool (cudaMallocFromPoolAsync/cudaFreeAsync on the
// issuer, freed after the work that uses it): the codec kernels (codec_kernels.cu) then read and
// write device memory only, and the encoded bytes cross the bus by the device's copy method, one
// region per block.
//
// Completion and failure. A callback is not a cudaLaunchHostFunc: a host function stalls its stream
// until the CPU has run it, which would put a GPU -> CPU -> GPU round trip between every layer of
// a load, and it never runs once the context has a sticky error. The runner records an event
// after the work before the callback and the watcher waits for it (cudaEventSynchronize, blocking
// sync). A failure (a sticky error seen by an issuer or a watcher, FailCudaDeviceForTesting,
// shutdown) marks the runner failed and raises every spin flag (Abort), so every stream drains and
// every watcher calls its callbacks with the error; no callback ever runs on the thread that saw
// the failure unless that thread is a watcher. The Device contract that work after a callback
// waits for it is kept where kvtier relies on it, host-side: a CudaEvent's Wait() and Query() also
// wait for the callbacks submitted on its stream before it. A native cudaEvent_t waited on by
// another stream (the engine's LayerReady) does not: it needs only the bytes.
//
// Host waits. A disk read completes on io_uring's thread, not on a stream. The issuer enqueues a
// one-thread kernel that polls a mapped host flag (copy_kernels.cu), and the read's completion
// raises it; Abort raises every flag in use, so a read that never completes cannot hold a stream
// (or ~CudaDevice) forever. The flags live in a pool shared with the pending closures, so a late
// completion never writes freed memory; a flag returns to the pool from a callback submitted after
// its kernel. With the pool exhausted (4096 waits in flight) the issuer itself waits for the read
// (StreamRunner::WaitHost, released by a failure too) before issuing what follows.
//
// Events. cudaEvent_t's come from a pool (created on the runner's threads, never destroyed until
// ~CudaDevice): no create/destroy pair per layer per Load. A CudaEvent is a handle the issuer
// fills in when it records; native() waits for that (the engine calls it outside kvtier's lock).
#include "cuda/cuda_device.h"

#include <cuda.h>  // CUcontext only: the two driver calls are reached through the runtime
#include <linux/mempolicy.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <algorithm>
#include <array>
#include <atomic>
#include <cerrno>
#include <cstring>
#include <fstream>
#include <functional>
#include <iterator>
#include <span>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "cuda/codec_kernels.h"
#include "cuda/copy_kernels.h"
#include "cuda/cuda_probe.h"
#include "cuda/cuda_status.h"
#include "cuda/host_pinning.h"
#include "lib/common/huge_pages.h"
#include "lib/common/mutex.h"
#include "lib/common/status_macros.h"
#include "lib/transfer/host_event.h"
#include "lib/transfer/stream_runner.h"

namespace kvtier::internal {
namespace {

// The NUMA node of CUDA device `device` (-1 when the system does not say).
int GpuNumaNode(int device) {
  char bus[32] = {};
  if (cudaDeviceGetPCIBusId(bus, sizeof(bus), device) != cudaSuccess) {
    static_cast<void>(cudaGetLastError());  // not sticky: placement is advice only
    return -1;
  }
  std::ifstream file(NumaNodePath(bus));
  const std::string text((std::istreambuf_iterator<char>(file)), std::istreambuf_iterator<char>());
  return ParseNumaNode(text);
}

// Prefers NUMA node `node` for the pages of [p, p + bytes), none touched yet: advice (the kernel
// falls back to other nodes when that one is full); nothing for node -1 or a failed call.
void PreferNode(void* p, uint64_t bytes, int node) {
  constexpr int kWords = 16;  // 1024 nodes
  if (node < 0 || node >= 64 * kWords) return;
  unsigned long mask[kWords] = {};
  mask[node / 64] = 1ul << (node % 64);
  // maxnode is one more than the mask's bits (the kernel reads maxnode - 1 of them).
  static_cast<void>(syscall(SYS_mbind, p, bytes, MPOL_PREFERRED, mask, 64 * kWords + 1, 0));
}

// cudaStreamQuery/cudaEventQuery answer cudaErrorNotReady for work in flight: not an error.
cudaError_t NotReadyIsSuccess(cudaError_t e) { return e == cudaErrorNotReady ? cudaSuccess : e; }

// cuCtxGetCurrent / cuCtxSetCurrent through the runtime's driver entry points: libkvtier does not
// link libcuda (it must load on machines without a driver). Null when unavailable.
struct DriverContextCalls {
  using GetFn = CUresult(CUDAAPI*)(CUcontext*);
  using SetFn = CUresult(CUDAAPI*)(CUcontext);
  GetFn get = nullptr;
  SetFn set = nullptr;
};

const DriverContextCalls& ContextCalls() {
  static const DriverContextCalls calls = [] {
    DriverContextCalls c;
    void* get = nullptr;
    void* set = nullptr;
    cudaDriverEntryPointQueryResult found{};
    if (cudaGetDriverEntryPointByVersion("cuCtxGetCurrent", &get, 12000, cudaEnableDefault,
                                         &found) == cudaSuccess &&
        found == cudaDriverEntryPointSuccess &&
        cudaGetDriverEntryPointByVersion("cuCtxSetCurrent", &set, 12000, cudaEnableDefault,
                                         &found) == cudaSuccess &&
        found == cudaDriverEntryPointSuccess) {
      c.get = reinterpret_cast<DriverContextCalls::GetFn>(get);
      c.set = reinterpret_cast<DriverContextCalls::SetFn>(set);
    }
    static_cast<void>(cudaGetLastError());  // not sticky: leave nothing for the engine's checks
    return c;
  }();
  return calls;
}

// Makes a device current for a scope on a caller's thread (CudaEvent's host-side Query and Wait)
// and restores the caller's context after, including "none": cudaSetDevice(0) on a thread that
// never chose a device would create GPU 0's primary context (about 0.5 GiB) in every process.
class ScopedDevice {
 public:
  ScopedDevice() = default;
  ScopedDevice(const ScopedDevice&) = delete;
  ScopedDevice& operator=(const ScopedDevice&) = delete;
  ~ScopedDevice() {
    // Nothing to report from a destructor; a failure here would show on the next call anyway.
    if (restore_) static_cast<void>(ContextCalls().set(previous_));
  }
  absl::Status Enter(int device) {
    const DriverContextCalls& calls = ContextCalls();
    if (calls.get == nullptr) {
      // No entry points: set the device and leave it (never "restore" a device not chosen).
      KVTIER_CUDA_RETURN_IF_ERROR(cudaSetDevice(device));
      return absl::OkStatus();
    }
    if (calls.get(&previous_) != CUDA_SUCCESS) previous_ = nullptr;
    int current = -1;
    if (previous_ != nullptr && cudaGetDevice(&current) == cudaSuccess && current == device) {
      return absl::OkStatus();  // already there
    }
    KVTIER_CUDA_RETURN_IF_ERROR(cudaSetDevice(device));
    restore_ = true;
    return absl::OkStatus();
  }

 private:
  CUcontext previous_ = nullptr;
  bool restore_ = false;
};

// cudaEvent_t's for RecordEvent and the runner's markers, reused rather than created and destroyed
// per layer per Load. Take() creates on the calling thread (a runner thread, device current);
// Give() makes no CUDA call. Shared with the events handed out, so a late Give never touches a
// freed pool.
class EventPool {
 public:
  ~EventPool() {
    for (cudaEvent_t e : free_) static_cast<void>(cudaEventDestroy(e));  // teardown: no report
  }
  absl::StatusOr<cudaEvent_t> Take() {
    {
      MutexLock lock(&mu_);
      if (!free_.empty()) {
        cudaEvent_t e = free_.back();
        free_.pop_back();
        return e;
      }
    }
    cudaEvent_t e = nullptr;
    KVTIER_CUDA_RETURN_IF_ERROR(
        cudaEventCreateWithFlags(&e, cudaEventDisableTiming | cudaEventBlockingSync));
    return e;
  }
  // Re-recording an event some stream still waits on is safe: cudaStreamWaitEvent captured the
  // record that was current when it was issued.
  void Give(cudaEvent_t e) {
    MutexLock lock(&mu_);
    free_.push_back(e);
  }

 private:
  Mutex mu_;
  std::vector<cudaEvent_t> free_ ABSL_GUARDED_BY(mu_);
};

class CudaEvent final : public DeviceEvent {
 public:
  // `callbacks_before`: callbacks submitted on `stream` before the event, which Wait() and Query()
  // also wait for. `runner` outlives every host-side wait (a Device outlives its events' users).
  CudaEvent(std::shared_ptr<EventPool> pool, StreamRunner* runner, int device, int stream,
            uint64_t callbacks_before)
      : pool_(std::move(pool)),
        runner_(runner),
        device_(device),
        stream_(stream),
        callbacks_before_(callbacks_before) {}
  ~CudaEvent() override {
    if (event_ != nullptr) pool_->Give(event_);
  }
  CudaEvent(const CudaEvent&) = delete;
  CudaEvent& operator=(const CudaEvent&) = delete;

  // On the issuer: `event` recorded (or `status`, the record's failure).
  void Issued(cudaEvent_t event, absl::Status status) {
    MutexLock lock(&mu_);
    event_ = event;
    status_ = std::move(status);
    issued_ = true;
    cv_.SignalAll();
  }

  // An error (a failed device, a failed record) counts as complete: Wait() then reports it.
  bool Query() const override {
    cudaEvent_t e = nullptr;
    {
      MutexLock lock(&mu_);
      if (!issued_) return runner_->failed();
      if (!status_.ok()) return runner_->CallbacksDone(stream_, callbacks_before_);
      e = event_;
    }
    ScopedDevice scope;
    if (!scope.Enter(device_).ok()) return true;
    return cudaEventQuery(e) != cudaErrorNotReady &&
           runner_->CallbacksDone(stream_, callbacks_before_);
  }
  absl::Status Wait() const override {
    cudaEvent_t e = nullptr;
    absl::Status s;
    {
      MutexLock lock(&mu_);
      while (!issued_ && !runner_->failed()) cv_.Wait(&mu_);
      if (!issued_) {
        s = runner_->failure();
      } else {
        s = status_;
        e = event_;
      }
    }
    if (s.ok()) {
      ScopedDevice scope;
      s = scope.Enter(device_);
      if (s.ok()) {
        s = [&]() -> absl::Status {
          KVTIER_CUDA_RETURN_IF_ERROR(cudaEventSynchronize(e));
          return absl::OkStatus();
        }();
      }
    }
    // Even on error: the watcher calls the earlier callbacks with it at once.
    runner_->WaitCallbacks(stream_, callbacks_before_);
    return s;
  }
  // Waits until the issuer has recorded it (an event never recorded would be a no-op to wait on).
  void* native() const override {
    MutexLock lock(&mu_);
    while (!issued_ && !runner_->failed()) cv_.Wait(&mu_);
    return event_;
  }

 private:
  const std::shared_ptr<EventPool> pool_;
  StreamRunner* const runner_;
  const int device_;
  const int stream_;
  const uint64_t callbacks_before_;
  mutable Mutex mu_;
  mutable CondVar cv_;
  bool issued_ ABSL_GUARDED_BY(mu_) = false;
  cudaEvent_t event_ ABSL_GUARDED_BY(mu_) = nullptr;
  absl::Status status_ ABSL_GUARDED_BY(mu_);
};

// Mapped pinned words that WaitFlagKernel polls; see the file comment.
struct FlagPool {
  static constexpr uint32_t kFlags = 4096;
  FlagPool(uint32_t* h, uint32_t* d) : host(h), device(d), in_use(kFlags, 0) {
    for (uint32_t i = 0; i < kFlags; ++i) free.push_back(kFlags - 1 - i);
  }
  ~FlagPool() { static_cast<void>(cudaFreeHost(host)); }  // nothing to report at teardown
  FlagPool(const FlagPool&) = delete;
  FlagPool& operator=(const FlagPool&) = delete;

  // A lowered flag, or false when none is free. After Abort every flag taken is born raised.
  bool Take(uint32_t* index) {
    MutexLock lock(&mu);
    if (free.empty()) return false;
    *index = free.back();
    free.pop_back();
    in_use[*index] = 1;
    std::atomic_ref<uint32_t>(host[*index]).store(aborted ? 1 : 0, std::memory_order_release);
    return true;
  }
  void Give(uint32_t index) {
    MutexLock lock(&mu);
    in_use[index] = 0;
    free.push_back(index);
  }
  void Raise(uint32_t index) {
    std::atomic_ref<uint32_t>(host[index]).store(1, std::memory_order_release);
  }
  // Raises every flag in use (and every one taken later): every spin kernel returns.
  void Abort() {
    MutexLock lock(&mu);
    aborted = true;
    for (uint32_t i = 0; i < kFlags; ++i) {
      if (in_use[i] != 0) Raise(i);
    }
  }

  uint32_t* const host;
  uint32_t* const device;
  Mutex mu;
  std::vector<uint32_t> free ABSL_GUARDED_BY(mu);
  std::vector<uint8_t> in_use ABSL_GUARDED_BY(mu);
  bool aborted ABSL_GUARDED_BY(mu) = false;
};

class CudaDevice final : public Device, private StreamRunner::Backend {
 public:
  static absl::StatusOr<std::unique_ptr<CudaDevice>> Create(const CudaOptions& options);
  ~CudaDevice() override;
  CudaDevice(const CudaDevice&) = delete;
  CudaDevice& operator=(const CudaDevice&) = delete;

  const char* name() const override { return "cuda"; }
  absl::StatusOr<void*> AllocateHost(uint64_t bytes, uint64_t unit) override;
  void FreeHost(void* ptr, uint64_t bytes) override;
  absl::Status Copy(Stream stream, std::span<const CopyRegion> regions) override;
  absl::StatusOr<std::shared_ptr<DeviceEvent>> RecordEvent(Stream stream) override;
  absl::Status WaitEvent(Stream stream, std::shared_ptr<DeviceEvent> event) override;
  absl::Status AddCallback(Stream stream, std::function<void(absl::Status)> fn) override;
  absl::Status EncodeToHost(Stream stream, const codec_math::CodecParams& params,
                            std::span<const codec_math::CodecSegmentJob> jobs) override {
    return SubmitCodec(stream, params, jobs, /*encode=*/true);
  }
  absl::Status DecodeFromHost(Stream stream, const codec_math::CodecParams& params,
                              std::span<const codec_math::CodecSegmentJob> jobs) override {
    return SubmitCodec(stream, params, jobs, /*encode=*/false);
  }
  absl::Status Synchronize() override;
  absl::Status WriteCounter(Stream stream, uint32_t index, uint32_t value) override;
  void* counters() const override { return counters_; }

  void MarkFailed(const absl::Status& cause) {
    if (runner_ != nullptr) runner_->Fail(cause);
  }

 private:
  struct Pinned {
    const std::byte* host;
    uint64_t bytes;
    std::byte* device;  // cudaHostGetDevicePointer of `host`
  };

  CudaDevice(int device, CudaCopyMethod method) : device_(device), method_(method) {}
  absl::Status Init();

  // StreamRunner::Backend, on the runner's threads.
  void EnterThread() override {
    // A failure shows on this thread's first CUDA call, which reports it.
    static_cast<void>(cudaSetDevice(device_));
  }
  absl::StatusOr<void*> RecordMarker(int stream) override;
  absl::Status WaitMarker(void* marker) override;
  void ReleaseMarker(void* marker) override { events_->Give(static_cast<cudaEvent_t>(marker)); }
  bool IsFatal(const absl::Status& error) override;
  void Abort() override {
    if (flags_ != nullptr) flags_->Abort();
  }

  // On the issuer thread.
  absl::Status CopyImpl(cudaStream_t s, std::span<const CopyRegion> regions);
  absl::Status CopyByKernel(cudaStream_t s, std::span<const CopyRegion> regions);
  absl::Status CopyByBatch(cudaStream_t s, std::span<const CopyRegion> regions);
  absl::Status WaitEventImpl(int stream, const std::shared_ptr<DeviceEvent>& event);
  absl::Status SubmitCodec(Stream stream, const codec_math::CodecParams& params,
                           std::span<const codec_math::CodecSegmentJob> jobs, bool encode);
  absl::Status CodecImpl(cudaStream_t s, const codec_math::CodecParams& params,
                         std::vector<codec_math::CodecSegmentJob> jobs, bool encode);
  // The device address of `p` when it lies in a pool this device pinned; `p` otherwise.
  const void* DeviceAddress(const void* p) const ABSL_EXCLUSIVE_LOCKS_REQUIRED(pinned_mu_);

  cudaStream_t stream(int s) const { return streams_[s]; }

  const int device_;
  const CudaCopyMethod method_;
  uint32_t max_ctas_ = 1;  // thread blocks per gather launch: half the SMs (set by Init)
  int numa_node_ = -1;     // the GPU's NUMA node, for the host pool's pages (set by Init)
  std::array<cudaStream_t, kNumStreams> streams_{};
  std::shared_ptr<FlagPool> flags_;
  std::shared_ptr<EventPool> events_ = std::make_shared<EventPool>();
  uint32_t* counters_ = nullptr;  // kMaxLayerCounters device words (cudaMalloc), zeroed
  static constexpr uint64_t kScratchKeepBytes = uint64_t{256} << 20;
  cudaMemPool_t scratch_pool_ = nullptr;  // the codecs' staging (CodecImpl)
  mutable Mutex pinned_mu_;
  std::vector<Pinned> pinned_ ABSL_GUARDED_BY(pinned_mu_);  // sorted by host address
  // Last: its threads use everything above, and stop first.
  std::unique_ptr<StreamRunner> runner_;
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
  // Load both kernels now: a lazily loaded module would make the first gather launch wait for a
  // running spin kernel (CUDA_MODULE_LOADING=LAZY is the default since 12.2).
  KVTIER_CUDA_RETURN_IF_ERROR(PreloadCopyKernels());
  KVTIER_CUDA_RETURN_IF_ERROR(PreloadCodecKernels());
  int sms = 0;
  KVTIER_CUDA_RETURN_IF_ERROR(
      cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, device_));
  // Half the SMs: a copy at the highest priority leaves the engine's kernels the rest. A guess
  // until the first GPU run compares it with the copy engines (docs/cuda.md).
  max_ctas_ = static_cast<uint32_t>(std::max(1, sms / 2));
  numa_node_ = GpuNumaNode(device_);
  int least = 0, greatest = 0;  // numerically, greatest < least
  KVTIER_CUDA_RETURN_IF_ERROR(cudaDeviceGetStreamPriorityRange(&least, &greatest));
  KVTIER_CUDA_RETURN_IF_ERROR(cudaStreamCreateWithPriority(
      &streams_[static_cast<int>(Stream::kH2D)], cudaStreamNonBlocking, greatest));
  KVTIER_CUDA_RETURN_IF_ERROR(cudaStreamCreateWithPriority(
      &streams_[static_cast<int>(Stream::kD2H)], cudaStreamNonBlocking, least));
  KVTIER_CUDA_RETURN_IF_ERROR(cudaStreamCreateWithPriority(
      &streams_[static_cast<int>(Stream::kH2DGated)], cudaStreamNonBlocking, greatest));
  KVTIER_CUDA_RETURN_IF_ERROR(cudaStreamCreateWithPriority(
      &streams_[static_cast<int>(Stream::kCounters)], cudaStreamNonBlocking, greatest));
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
  KVTIER_CUDA_RETURN_IF_ERROR(
      cudaMalloc(reinterpret_cast<void**>(&counters_), kMaxLayerCounters * sizeof(uint32_t)));
  // On kCounters, the stream every WriteCounter uses: in order with them (a non-blocking stream
  // does not wait for the legacy default stream a plain cudaMemset would use).
  KVTIER_CUDA_RETURN_IF_ERROR(cudaMemsetAsync(counters_, 0, kMaxLayerCounters * sizeof(uint32_t),
                                              streams_[static_cast<int>(Stream::kCounters)]));
  // The codecs' device scratch: a pool of kvtier's own (the engine's allocator and the device's
  // default pool are left alone) that keeps up to kScratchKeepBytes between uses instead of
  // returning it to the driver at every synchronisation.
  cudaMemPoolProps props{};
  props.allocType = cudaMemAllocationTypePinned;
  props.location.type = cudaMemLocationTypeDevice;
  props.location.id = device_;
  KVTIER_CUDA_RETURN_IF_ERROR(cudaMemPoolCreate(&scratch_pool_, &props));
  uint64_t keep = kScratchKeepBytes;
  KVTIER_CUDA_RETURN_IF_ERROR(
      cudaMemPoolSetAttribute(scratch_pool_, cudaMemPoolAttrReleaseThreshold, &keep));
  runner_ = std::make_unique<StreamRunner>(kNumStreams, static_cast<StreamRunner::Backend*>(this));
  return absl::OkStatus();
}

CudaDevice::~CudaDevice() {
  if (runner_ != nullptr) {
    Synchronize().IgnoreError();  // drain what was submitted; a held stream is released below
    runner_.reset();              // fails (kCancelled) and releases whatever is left, joins
  }
  ScopedDevice scope;
  static_cast<void>(scope.Enter(device_));  // teardown: nothing to report
  for (cudaStream_t s : streams_) {
    if (s != nullptr) static_cast<void>(cudaStreamDestroy(s));
  }
  if (counters_ != nullptr) static_cast<void>(cudaFree(counters_));
  if (scratch_pool_ != nullptr) static_cast<void>(cudaMemPoolDestroy(scratch_pool_));
}

absl::StatusOr<void*> CudaDevice::RecordMarker(int stream_index) {
  KVTIER_ASSIGN_OR_RETURN(cudaEvent_t e, events_->Take());
  if (cudaError_t err = cudaEventRecord(e, stream(stream_index)); err != cudaSuccess) {
    events_->Give(e);
    KVTIER_CUDA_RETURN_IF_ERROR(err);
  }
  return static_cast<void*>(e);
}

absl::Status CudaDevice::WaitMarker(void* marker) {
  KVTIER_CUDA_RETURN_IF_ERROR(cudaEventSynchronize(static_cast<cudaEvent_t>(marker)));
  return absl::OkStatus();
}

bool CudaDevice::IsFatal(const absl::Status& error) {
  static_cast<void>(error);
  static_cast<void>(cudaGetLastError());  // clears a non-sticky error; a sticky one stays
  for (cudaStream_t s : streams_) {
    if (NotReadyIsSuccess(cudaStreamQuery(s)) != cudaSuccess) return true;
  }
  return false;
}

absl::StatusOr<void*> CudaDevice::AllocateHost(uint64_t bytes, uint64_t unit) {
  if (runner_->failed()) {
    return absl::FailedPreconditionError(
        absl::StrCat("CudaDevice::AllocateHost: the device failed earlier (",
                     runner_->failure().message(), ")"));
  }
  ScopedDevice scope;
  KVTIER_RETURN_IF_ERROR(scope.Enter(device_));
  // Plain anonymous pages, pinned once: O_DIRECT and io_uring buffer registration need ordinary
  // pages, which cudaHostAlloc's driver mapping is not. Huge ones where the kernel has them
  // (MapHugePageAligned: fewer segments per transfer, to disk and over PCIe), on the GPU's NUMA
  // node, registered in pieces of whole units (cuda/host_pinning.h says why).
  void* p = MapHugePageAligned(bytes);
  if (p == nullptr) {
    return absl::ResourceExhaustedError(absl::StrCat("CudaDevice::AllocateHost: mmap of ", bytes,
                                                     " bytes failed: ", std::strerror(errno)));
  }
  PreferNode(p, bytes, numa_node_);
  std::vector<Pinned> pieces;
  auto pin = [&]() -> absl::Status {
    auto* at = static_cast<std::byte*>(p);
    for (uint64_t piece : PinPieces(bytes, unit, kMaxPinPiece)) {
      KVTIER_CUDA_RETURN_IF_ERROR(
          cudaHostRegister(at, piece, cudaHostRegisterMapped | cudaHostRegisterPortable));
      pieces.push_back({at, piece, nullptr});
      void* dev = nullptr;
      KVTIER_CUDA_RETURN_IF_ERROR(cudaHostGetDevicePointer(&dev, at, 0));
      pieces.back().device = static_cast<std::byte*>(dev);
      at += piece;
    }
    return absl::OkStatus();
  };
  if (absl::Status s = pin(); !s.ok()) {
    for (const Pinned& e : pieces)
      static_cast<void>(cudaHostUnregister(const_cast<std::byte*>(e.host)));
    munmap(p, bytes);
    static_cast<void>(cudaGetLastError());  // not sticky: leave nothing for the engine's checks
    return s;
  }
  MutexLock lock(&pinned_mu_);
  // The pieces are consecutive and in address order; no other registration lies between them.
  const Pinned first{static_cast<const std::byte*>(p), 0, nullptr};
  pinned_.insert(std::upper_bound(pinned_.begin(), pinned_.end(), first,
                                  [](const Pinned& a, const Pinned& b) { return a.host < b.host; }),
                 pieces.begin(), pieces.end());
  return p;
}

void CudaDevice::FreeHost(void* ptr, uint64_t bytes) {
  if (ptr == nullptr) return;
  std::vector<const std::byte*> pieces;  // the registrations of [ptr, ptr + bytes)
  {
    MutexLock lock(&pinned_mu_);
    const auto* begin = static_cast<const std::byte*>(ptr);
    std::erase_if(pinned_, [&](const Pinned& e) {
      if (e.host < begin || e.host >= begin + bytes) return false;
      pieces.push_back(e.host);
      return true;
    });
  }
  ScopedDevice scope;
  static_cast<void>(scope.Enter(device_));  // FreeHost cannot fail; unregistering still works
  for (const std::byte* piece : pieces) {
    static_cast<void>(cudaHostUnregister(const_cast<std::byte*>(piece)));
  }
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
        LaunchGather(batch.data(), static_cast<uint32_t>(batch.size()), max_bytes, max_ctas_, s));
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
  std::vector<void*> srcs;  // void*: converts to 12.8/12.9's `void**` and 13's `const void* const*`
  std::vector<size_t> sizes;
  auto flush = [&]() -> absl::Status {
    if (dsts.empty()) return absl::OkStatus();
    // One attribute for every copy: sources in stream order (they are written by earlier work on
    // this stream or by the engine before it called us); overlap with compute preferred.
    cudaMemcpyAttributes attr{};
    attr.srcAccessOrder = cudaMemcpySrcAccessOrderStream;
    attr.flags = cudaMemcpyFlagPreferOverlapWithCompute;
    size_t attr_index = 0;
#if CUDART_VERSION >= 13000
    KVTIER_CUDA_RETURN_IF_ERROR(cudaMemcpyBatchAsync(dsts.data(), srcs.data(), sizes.data(),
                                                     dsts.size(), &attr, &attr_index, 1, s));
#else  // 12.8 and 12.9: a 9th argument, the index of the copy that failed
    size_t fail_index = 0;
    KVTIER_CUDA_RETURN_IF_ERROR(cudaMemcpyBatchAsync(dsts.data(), srcs.data(), sizes.data(),
                                                     dsts.size(), &attr, &attr_index, 1,
                                                     &fail_index, s));
#endif
    dsts.clear();
    srcs.clear();
    sizes.clear();
    return absl::OkStatus();
  };
  for (const CopyRegion& r : regions) {
    if (r.bytes == 0) continue;
    dsts.push_back(r.dst);
    srcs.push_back(const_cast<void*>(r.src));
    sizes.push_back(r.bytes);
    if (dsts.size() == kMaxBatch) KVTIER_RETURN_IF_ERROR(flush());
  }
  return flush();
}

absl::Status CudaDevice::Copy(Stream stream_id, std::span<const CopyRegion> regions) {
  std::vector<CopyRegion> copy;
  copy.reserve(regions.size());
  for (const CopyRegion& r : regions) {
    if (r.bytes != 0) copy.push_back(r);
  }
  if (copy.empty())
    return runner_->Submit(
        static_cast<int>(stream_id), [] { return absl::OkStatus(); }, "CudaDevice::Copy");
  const int index = static_cast<int>(stream_id);
  return runner_->Submit(
      index, [this, index, copy = std::move(copy)] { return CopyImpl(stream(index), copy); },
      "CudaDevice::Copy");
}

absl::Status CudaDevice::SubmitCodec(Stream stream_id, const codec_math::CodecParams& params,
                                     std::span<const codec_math::CodecSegmentJob> jobs,
                                     bool encode) {
  const int index = static_cast<int>(stream_id);
  return runner_->Submit(
      index,
      [this, index, params, encode, jobs = std::vector(jobs.begin(), jobs.end())]() mutable {
        return CodecImpl(stream(index), params, std::move(jobs), encode);
      },
      encode ? "CudaDevice::EncodeToHost" : "CudaDevice::DecodeFromHost");
}

// The host side of every job (encode: dst, decode: src) is staged in one stream-ordered device
// scratch allocation, so the kernels touch device memory only and the bus carries the encoded
// bytes in as few copies as the jobs allow (a block's segments and layers are contiguous in its
// host slot: one region per block, by this device's copy method).
absl::Status CudaDevice::CodecImpl(cudaStream_t s, const codec_math::CodecParams& params,
                                   std::vector<codec_math::CodecSegmentJob> jobs, bool encode) {
  uint64_t total = 0;
  for (const codec_math::CodecSegmentJob& j : jobs) total += codec_math::EncodedBytes(params, j);
  if (total == 0) return absl::OkStatus();
  std::byte* scratch = nullptr;
  KVTIER_CUDA_RETURN_IF_ERROR(
      cudaMallocFromPoolAsync(reinterpret_cast<void**>(&scratch), total, scratch_pool_, s));
  std::vector<CopyRegion> regions;  // host <-> scratch, merged where both sides run on
  uint64_t at = 0;
  for (codec_math::CodecSegmentJob& j : jobs) {
    const uint64_t bytes = codec_math::EncodedBytes(params, j);
    std::byte* staged = scratch + at;
    std::byte* host;
    if (encode) {
      host = static_cast<std::byte*>(j.dst);
      j.dst = staged;
    } else {
      host = static_cast<std::byte*>(const_cast<void*>(j.src));
      j.src = staged;
    }
    at += bytes;
    if (!regions.empty()) {
      CopyRegion& last = regions.back();
      const std::byte* last_host = static_cast<const std::byte*>(encode ? last.dst : last.src);
      const std::byte* last_staged = static_cast<const std::byte*>(encode ? last.src : last.dst);
      if (last_host + last.bytes == host && last_staged + last.bytes == staged) {
        last.bytes += bytes;
        continue;
      }
    }
    regions.push_back(encode ? CopyRegion{host, staged, bytes} : CopyRegion{staged, host, bytes});
  }
  absl::Status st = [&]() -> absl::Status {
    if (!encode) KVTIER_RETURN_IF_ERROR(CopyImpl(s, regions));
    for (size_t i = 0; i < jobs.size(); i += kMaxCodecJobs) {
      const auto n = static_cast<uint32_t>(std::min<size_t>(kMaxCodecJobs, jobs.size() - i));
      KVTIER_CUDA_RETURN_IF_ERROR(LaunchCodec(encode, params, jobs.data() + i, n, s));
    }
    if (encode) KVTIER_RETURN_IF_ERROR(CopyImpl(s, regions));
    return absl::OkStatus();
  }();
  // Freed in stream order, after the work above, whether or not all of it was enqueued.
  if (cudaError_t e = cudaFreeAsync(scratch, s); e != cudaSuccess && st.ok()) {
    st = CudaStatus(e, "cudaFreeAsync", __FILE__, __LINE__);
  }
  return st;
}

absl::StatusOr<std::shared_ptr<DeviceEvent>> CudaDevice::RecordEvent(Stream stream_id) {
  const int index = static_cast<int>(stream_id);
  // Callbacks submitted so far on this stream. The count and the submission are not atomic
  // together: a callback another thread adds in between may be counted; waiting for it as well is
  // harmless (it runs after work enqueued before this event anyway).
  auto event = std::make_shared<CudaEvent>(events_, runner_.get(), device_, index,
                                           runner_->CallbacksSubmitted(index));
  KVTIER_RETURN_IF_ERROR(runner_->Submit(
      index,
      [this, index, event]() -> absl::Status {
        absl::StatusOr<cudaEvent_t> e = events_->Take();
        if (!e.ok()) {
          event->Issued(nullptr, e.status());
          return e.status();
        }
        absl::Status s = [&]() -> absl::Status {
          KVTIER_CUDA_RETURN_IF_ERROR(cudaEventRecord(*e, stream(index)));
          return absl::OkStatus();
        }();
        event->Issued(*e, s);
        return s;
      },
      "CudaDevice::RecordEvent",
      // Never recorded (the device failed first): its waiters get the failure.
      [this, event] { event->Issued(nullptr, runner_->failure()); }));
  return std::shared_ptr<DeviceEvent>(event);
}

absl::Status CudaDevice::WaitEvent(Stream stream_id, std::shared_ptr<DeviceEvent> event) {
  if (event == nullptr) return absl::InvalidArgumentError("CudaDevice::WaitEvent: null event");
  // Not native() on a CudaEvent here: it waits for the record, and this thread may hold the
  // cache's lock.
  if (dynamic_cast<HostEvent*>(event.get()) == nullptr &&
      dynamic_cast<CudaEvent*>(event.get()) == nullptr && event->native() == nullptr) {
    return absl::InvalidArgumentError(
        "CudaDevice::WaitEvent: an event that is neither a CUDA event nor a HostEvent");
  }
  const int index = static_cast<int>(stream_id);
  return runner_->Submit(
      index, [this, index, event = std::move(event)] { return WaitEventImpl(index, event); },
      "CudaDevice::WaitEvent");
}

absl::Status CudaDevice::WaitEventImpl(int index, const std::shared_ptr<DeviceEvent>& event) {
  cudaStream_t s = stream(index);
  if (void* native = event->native(); native != nullptr) {
    KVTIER_CUDA_RETURN_IF_ERROR(cudaStreamWaitEvent(s, static_cast<cudaEvent_t>(native), 0));
    return absl::OkStatus();
  }
  auto* host = static_cast<HostEvent*>(event.get());  // checked by WaitEvent
  if (host->Query()) return absl::OkStatus();         // host work already done: nothing to wait for
  uint32_t flag = 0;
  if (!flags_->Take(&flag)) {
    // Every flag is in use: this issuer waits for the read before issuing what follows (slower,
    // still correct, and released by a failure or the shutdown).
    if (!runner_->WaitHost(*host)) {
      return absl::CancelledError("CudaDevice::WaitEvent: abandoned on failure or shutdown");
    }
    return absl::OkStatus();
  }
  if (cudaError_t e = LaunchWaitFlag(flags_->device + flag, 1, s); e != cudaSuccess) {
    flags_->Give(flag);
    KVTIER_CUDA_RETURN_IF_ERROR(e);
  }
  // The kernel is queued: from here on the flag must be raised whatever else fails (Abort raises
  // it on a failure; the read's completion otherwise).
  host->Then([pool = flags_, flag] { pool->Raise(flag); });
  // The flag is reused once the kernel has passed (on a failed device it is simply never reused).
  static_cast<void>(runner_->SubmitCallback(
      index,
      [pool = flags_, flag](absl::Status st) {
        if (st.ok()) pool->Give(flag);
      },
      "CudaDevice::WaitEvent"));
  return absl::OkStatus();
}

absl::Status CudaDevice::AddCallback(Stream stream_id, std::function<void(absl::Status)> fn) {
  return runner_->SubmitCallback(static_cast<int>(stream_id), std::move(fn),
                                 "CudaDevice::AddCallback");
}

absl::Status CudaDevice::WriteCounter(Stream stream_id, uint32_t index, uint32_t value) {
  if (index >= kMaxLayerCounters) {
    return absl::InvalidArgumentError(absl::StrCat("CudaDevice::WriteCounter: index ", index,
                                                   " vs ", kMaxLayerCounters, " counters"));
  }
  const int s = static_cast<int>(stream_id);
  return runner_->Submit(
      s,
      [this, s, index, value]() -> absl::Status {
        KVTIER_CUDA_RETURN_IF_ERROR(LaunchWriteCounter(counters_ + index, value, stream(s)));
        return absl::OkStatus();
      },
      "CudaDevice::WriteCounter");
}

absl::Status CudaDevice::Synchronize() {
  // A callback at the end of each stream, then wait for every callback: everything submitted so
  // far is then done (or, on a failed device, released and reported).
  for (int i = 0; i < kNumStreams; ++i) {
    runner_
        ->SubmitCallback(
            i, [](absl::Status) {}, "CudaDevice::Synchronize")
        .IgnoreError();
  }
  return runner_->Drain();
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
