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
// Errors: a failed copy, or a block read from below (disk, remote store) that failed or did not
//   verify, ends the Transfer with !status().ok() (the first failure). It is partial: the blocks
//   before the first failed one arrived whole and stay (blocks_loaded() says how many: lease slots
//   [0, blocks_loaded()) hold their keys' bytes and are published in the cache). That block and
//   every later one the Transfer copied are misses: not published, their lease slots writable
//   again, never data; that includes later blocks whose own reads verified (a block is only
//   reachable through its prefix; their copies below stay there for a later Load). A failed
//   device copy names no block: it fails every copied block. Blocks Load shared from the device
//   are not copied and stay held, wherever they sit. No call reports a failure before the whole
//   Transfer has stopped: when WaitLayer(), Wait() or status() returns an error (or Poll() is
//   true), no copy of this Transfer writes into the lease any more, and blocks_loaded() is final,
//   so the engine may recompute from blocks_loaded() at once. An engine that ignores
//   blocks_loaded() and recomputes every copied block stays correct (it rewrites valid bytes).
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
  // Once finished (Poll() true; Wait() or a failed WaitLayer() returned): lease slots (a
  // Connector load: dst blocks) [0, blocks_loaded()) hold their blocks, whatever status() says;
  // blocks() when it succeeded. After a failure, the first failed block's position: the engine
  // recomputes from there (positions past it that Load shared from the device stay valid and
  // held: do not write them). A Prefetch: the chain's blocks before the first failed read (reads
  // past it that verified stay on the host). 0 while running and for an empty handle.
  uint32_t blocks_loaded() const;
  // Once finished: how many of the blocks [0, blocks_loaded()) this Load promoted through a lossy
  // Options.host.codec (decoded from the host tier, within the codec's error bound:
  // docs/compression.md); the others are exact. 0 without a codec, while running and for an
  // empty handle.
  uint32_t blocks_lossy() const;

  // Blocks until every copy finished and the cache recorded it; returns the outcome.
  absl::Status Wait();
  // True once finished; never blocks. False for an empty handle.
  bool Poll() const;
  // The outcome: kUnavailable while running; kFailedPrecondition for an empty handle.
  absl::Status status() const;

  // Blocks until layer `layer` of every block is on the device (earlier layers too: layers arrive
  // in order). kOutOfRange for a bad layer. If the Transfer failed, returns its error, but only
  // after every copy of the Transfer has stopped (as Wait() does), which may take longer than the
  // layer alone: a failure is never reported while the lease's slots can still be written. OK
  // means the layer is there for all blocks(): a block that fails (its read, or any copy before
  // this layer's end) makes it return the error, never OK; then every layer of blocks
  // [0, blocks_loaded()) is on the device.
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
  // engine's stream): it says when copying stopped, not that the bytes are valid. status()/Wait()
  // say whether they all are, blocks_loaded() which blocks are (attention on the others must not
  // use them: re-run it from blocks_loaded() after recomputing).
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
