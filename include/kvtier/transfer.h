// Transfer: one asynchronous move of blocks into a DeviceLease, started by Cache::Load(); or up
// to the host tier, started by Cache::Prefetch() (no lease and no layers: WaitLayer and the
// events answer kOutOfRange; blocks() is how many blocks of the chain it covers, blocks_promoted()
// how many it reads from disk or the remote store).
//
// Thread safety: any method from any thread; the handle itself is moved, not shared.
// Ownership: move-only; an empty (default or moved-from) Transfer answers kFailedPrecondition. The
//   copies keep their sources pinned until they finish, whether or not the handle still exists.
// Lifetime: destroy before its Cache; destroying an unfinished Transfer waits for it, so no copy
//   engine writes into memory the engine has since reused.
// Errors: a failed copy or disk read ends the Transfer with !status().ok(); its blocks are then
//   misses (they are not published in the cache and their lease slots are writable again), never
//   data. No call reports a failure before the whole Transfer has stopped: when WaitLayer(), Wait()
//   or status() returns an error (or Poll() is true), no copy of this Transfer writes into the
//   lease any more, so the engine may recompute into those slots at once.
#ifndef KVTIER_TRANSFER_H_
#define KVTIER_TRANSFER_H_

#include <cstdint>
#include <memory>

#include "absl/status/status.h"
#include "absl/status/statusor.h"

namespace kvtier {

namespace internal {
struct TransferState;
}  // namespace internal

class Transfer {
 public:
  Transfer() = default;
  Transfer(Transfer&&) noexcept = default;
  Transfer& operator=(Transfer&& other) noexcept;
  Transfer(const Transfer&) = delete;
  Transfer& operator=(const Transfer&) = delete;
  ~Transfer();

  explicit operator bool() const { return state_ != nullptr; }

  // Blocks this Transfer brings into the lease: lease slots [0, blocks()) hold the matched keys
  // once it completes. Known when Load() returns; may be fewer than the match if blocks were
  // evicted in between. 0 for an empty handle.
  uint32_t blocks() const;
  // Blocks among them that were copied from the host (the rest were already on the device).
  uint32_t blocks_promoted() const;

  // Blocks until every copy finished and the cache recorded it; returns the outcome.
  absl::Status Wait();
  // True once finished; never blocks. False for an empty handle.
  bool Poll() const;
  // The outcome: kUnavailable while running; kFailedPrecondition for an empty handle.
  absl::Status status() const;

  // Blocks until layer `layer` of every block is on the device (earlier layers too: layers arrive
  // in order). kOutOfRange for a bad layer. If the Transfer failed, returns its error, but only
  // after every copy of the Transfer has stopped (as Wait() does), which may take longer than the
  // layer alone: a failure is never reported while the lease's slots can still be written.
  absl::Status WaitLayer(uint32_t layer);
  // The device event recorded after layer `layer` was copied: a cudaEvent_t on the CUDA backend,
  // for cudaStreamWaitEvent on the engine's compute stream. nullptr when there is nothing to wait
  // for (every block was already on the device) and always on the emulated device (use WaitLayer).
  // kOutOfRange for a bad layer.
  absl::StatusOr<void*> LayerReadyEvent(uint32_t layer) const;
  // The engine's handle for layer `layer`: the cudaEvent_t (as void*) that completes once layer
  // `layer` of every block is on the device, for cudaStreamWaitEvent(compute_stream, event, 0), so
  // attention on layer 0 starts while later layers are still copying. Events complete in layer
  // order. The event stays valid while this Transfer lives (destroy the Transfer only after the
  // engine's stream has passed its wait, or after Wait()). nullptr when there is nothing to wait
  // for (every block was already on the device). kUnimplemented on the emulated device (it has no
  // native events: use WaitLayer), kOutOfRange for a bad layer, kFailedPrecondition when empty.
  // If the copies fail, the event still completes (or the CUDA context reports the error on the
  // engine's stream); status()/Wait() say whether the bytes are valid.
  absl::StatusOr<void*> LayerReady(uint32_t layer) const;

  // For CUDA graphs: this Load's number (1, 2, ... per cache; 0 for an empty handle or a transfer
  // that is not a Load). Once layer l of this Load is copied, the cache's layer counter l
  // (Cache::GraphLayerCounters) holds at least this value; a captured kernel can wait for that
  // with a target the engine writes before each replay (docs/cuda.md, "CUDA graphs").
  uint32_t sequence() const;

 private:
  friend class Cache;
  friend class Connector;
  explicit Transfer(std::shared_ptr<internal::TransferState> state) : state_(std::move(state)) {}
  std::shared_ptr<internal::TransferState> state_;
};

}  // namespace kvtier

#endif  // KVTIER_TRANSFER_H_
