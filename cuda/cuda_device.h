// CudaDevice: the Device backend on a CUDA GPU (see lib/transfer/device.h for the semantics).
//
// Streams: four non-blocking streams, separate from the engine's (lib/transfer/device.h): kH2D
//   (host hits) and kH2DGated (promotions waiting for disk or remote reads) at the device's
//   highest stream priority, kD2H (demotion) at its lowest, so that promotion wins for SMs when
//   both run kernels; kCounters (layer counter writes, one-thread kernels) at the highest.
// Host memory: AllocateHost maps anonymous pages and pins them once with cudaHostRegister (mapped,
//   portable); never per copy. Plain pages, not cudaHostAlloc's, so that O_DIRECT and io_uring's
//   buffer registration work on the pool.
// Copies: by CudaOptions.copy_method (kernel, cudaMemcpyBatchAsync, or one cudaMemcpyAsync per
//   region). The kernel reaches the host pool through its mapped device address; its grid is capped
//   at half the SMs (grid-stride beyond).
// Codecs: EncodeToHost/DecodeFromHost run the host codec's kernels (codec_kernels.cu) on device
//   scratch from a stream-ordered pool of the device's own, and move the encoded bytes by the copy
//   method: the bus carries the encoded form.
// Enqueueing: no call makes a CUDA call on the caller's thread. Each enqueue call queues a closure;
//   per stream an issuer thread makes the CUDA calls in order, and a watcher thread calls the
//   callbacks (lib/transfer/stream_runner.h). So a stream whose queue is full, or is held by a wait
//   for a disk read, never blocks a caller holding the cache's lock.
// Events: RecordEvent returns at once; the issuer records a pooled cudaEvent_t (timing disabled,
//   blocking sync). native() waits until it is recorded and is valid while the DeviceEvent lives.
//   WaitEvent on a CUDA event is cudaStreamWaitEvent, issued when the issuer reaches it: an
//   engine's event (a Connector store's `after`) must not be re-recorded or destroyed until the
//   work submitted with it has been issued (the store's layer event is recorded). On a HostEvent
//   (a disk read) it enqueues a one-thread kernel that waits for a mapped host flag the HostEvent
//   raises, so the stream, and every event recorded after it, waits on the GPU without a host
//   thread blocking.
// Callbacks: not host functions (they would stall the stream between layers): an event recorded
//   where the callback is enqueued, and the stream's watcher thread waits for it and then calls the
//   callback, in order. A CudaEvent's host-side Wait()/Query() also wait for the callbacks
//   enqueued before it on its stream (what the cache relies on: "the index is updated once the
//   event completes"); its native cudaEvent_t, waited on by another stream, does not.
// Failure: a sticky error (illegal address, ECC, lost device) seen by an issuer or a watcher marks
//   the device failed: every spin flag is raised so the streams drain, every callback not yet
//   called is called with the error by its watcher (never by the thread that saw the error), and
//   from then on every enqueue call returns kFailedPrecondition. ~CudaDevice drains what was
//   enqueued; a wait for a host event that never completes is then released (kCancelled).
//
// Thread safety: every method from any thread. Every thread kvtier starts makes the device current
//   first; a caller's thread that an event's Wait()/Query() makes current is restored to the
//   context it had, none included (never GPU 0's primary context by default).
// Errors: CUDA errors through KVTIER_CUDA_RETURN_IF_ERROR (call, file:line, cudaGetErrorString):
//   kResourceExhausted for out of memory, kInternal otherwise.
//
// This header has no CUDA include: lib/cache.cc creates the device through it.
#ifndef KVTIER_CUDA_CUDA_DEVICE_H_
#define KVTIER_CUDA_CUDA_DEVICE_H_

#include <memory>
#include <string>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "kvtier/options.h"
#include "lib/transfer/device.h"

namespace kvtier::internal {

// Creates the device for CUDA ordinal `options.device` (must be >= 0 here). kFailedPrecondition
// when there is no such device (the message says what cudaGetDeviceCount answered); a CUDA error
// status if streams or the flag pool cannot be created.
absl::StatusOr<std::unique_ptr<Device>> CreateCudaDevice(const CudaOptions& options);

// The CUDA ordinal holding `ptr` when it is device (or managed) memory; -1 for anything else
// (host memory, or no device), with the reason in `why`.
int CudaDeviceOfPointer(const void* ptr, std::string* why);

// Tests: marks `device` (a CudaDevice) failed with `error`, as a sticky CUDA error would. Pending
// callbacks are then called with the error by the device's watcher threads (not by this call) and
// new work is refused. kInvalidArgument if `device`
// is not a CudaDevice.
absl::Status FailCudaDeviceForTesting(Device* device, absl::Status error);

}  // namespace kvtier::internal

#endif  // KVTIER_CUDA_CUDA_DEVICE_H_
