// TransferState: what a Transfer handle and the copy callbacks share.
//
// Layers complete in order: the callback after layer l's copies calls LayerDone(l, status); the
// last one is followed by Finish() (or Finish(loaded): a Load that failed past its first blocks)
// once the index has recorded the outcome.
// Thread safety: all methods from any thread. Lock order: after Index::mu() (callbacks take the
// index lock first, then this one, never the reverse).
#ifndef KVTIER_LIB_TRANSFER_TRANSFER_STATE_H_
#define KVTIER_LIB_TRANSFER_TRANSFER_STATE_H_

#include <cstdint>
#include <memory>
#include <vector>

#include "absl/status/status.h"
#include "lib/common/mutex.h"
#include "lib/transfer/device.h"

namespace kvtier::internal {

struct TransferState {
  TransferState(uint32_t num_blocks, uint32_t num_promoted, uint32_t num_layers)
      : blocks(num_blocks), promoted(num_promoted), layers(num_layers) {}

  const uint32_t blocks;
  const uint32_t promoted;
  const uint32_t layers;
  std::vector<std::shared_ptr<DeviceEvent>> layer_events;  // set before the handle is returned
  // A Load's number (1, 2, ... per cache): the value its layers write into the device's layer
  // counters (Device::WriteCounter) once copied. 0: no counters written (not a Load).
  uint32_t sequence = 0;

  void LayerDone(const absl::Status& status) {
    MutexLock lock(&mu);
    if (error.ok() && !status.ok()) error = status;
    layers_done++;
    cv.SignalAll();
  }
  // An error found outside the copies (a disk read that failed to verify): the Transfer fails.
  void RecordError(const absl::Status& status) {
    MutexLock lock(&mu);
    if (error.ok()) error = status;
    cv.SignalAll();
  }
  absl::Status first_error() {
    MutexLock lock(&mu);
    return error;
  }
  // For a Transfer with nothing to copy: every layer is ready now.
  void FinishNow() {
    MutexLock lock(&mu);
    layers_done = layers;
    loaded = blocks;
    done = true;
    cv.SignalAll();
  }
  // All or nothing: every block arrived unless an error was recorded.
  void Finish() {
    MutexLock lock(&mu);
    loaded = error.ok() ? blocks : 0;
    done = true;
    cv.SignalAll();
  }
  // A Load's end: blocks [0, blocks_loaded) arrived and were published (all of them unless an
  // error was recorded).
  void Finish(uint32_t blocks_loaded) {
    MutexLock lock(&mu);
    loaded = blocks_loaded;
    done = true;
    cv.SignalAll();
  }
  // Transfer::blocks_loaded(): 0 until finished.
  uint32_t blocks_loaded() {
    MutexLock lock(&mu);
    return done ? loaded : 0;
  }
  // Before Finish: how many of the loaded blocks were decoded from a lossy codec.
  void SetLossy(uint32_t n) {
    MutexLock lock(&mu);
    lossy = n;
  }
  // Transfer::blocks_lossy(): 0 until finished.
  uint32_t blocks_lossy() {
    MutexLock lock(&mu);
    return done ? lossy : 0;
  }
  // A failure is reported only once the whole Transfer has finished: until then copies of its other
  // blocks may still write into the lease's slots, and only Finish() (after the index gave the
  // failed blocks' slots back to the lease) makes them the engine's to recompute into.
  absl::Status WaitLayer(uint32_t layer) {
    MutexLock lock(&mu);
    while (layers_done <= layer && error.ok()) cv.Wait(&mu);
    if (!error.ok()) {
      while (!done) cv.Wait(&mu);
    }
    return error;
  }
  absl::Status Wait() {
    MutexLock lock(&mu);
    while (!done) cv.Wait(&mu);
    return error;
  }
  bool Poll() {
    MutexLock lock(&mu);
    return done;
  }
  absl::Status status() {
    MutexLock lock(&mu);
    if (!done) return absl::UnavailableError("Transfer: still running");
    return error;
  }

  Mutex mu;
  CondVar cv;
  uint32_t layers_done ABSL_GUARDED_BY(mu) = 0;
  bool done ABSL_GUARDED_BY(mu) = false;
  uint32_t loaded ABSL_GUARDED_BY(mu) = 0;  // set by the Finish calls
  uint32_t lossy ABSL_GUARDED_BY(mu) = 0;   // set by SetLossy
  absl::Status error ABSL_GUARDED_BY(mu);
};

}  // namespace kvtier::internal

#endif  // KVTIER_LIB_TRANSFER_TRANSFER_STATE_H_
