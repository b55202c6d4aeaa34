// IoRing: kvtier's only door to io_uring. Batched, asynchronous reads and writes of whole buffers
// at file offsets, with registered files and buffers, completed on the ring's own thread.
//
// - Registered buffers: reads and writes whose memory lies inside a buffer given to Create() use
//   the fixed-buffer opcodes (no per-I/O page pinning); others work too, unregistered.
// - Short transfers and -EAGAIN are resubmitted for the remainder; any other error fails the op.
// - Queue depth bounds the ops in flight; more are held in order and submitted as others finish.
// - Fault injection (tests): an injector decides per op to fail it with EIO or ENOSPC, cut it
//   short (then resubmitted, like a real short transfer), or flip one bit of a read's buffer.
//
// - Callback threads (Options.callback_threads): batches' `done` callbacks (a caller's checksum
//   verification, say) run on a pool of that many threads, so that the completion thread only
//   reaps completions and resubmits, and callbacks of different batches run in parallel.
//
// Thread safety: Submit() from any thread. `done` callbacks run on the completion thread (or one
//   of the callback threads), never under a lock of the ring; they must not block on another
//   batch of the same ring.
// Lifetime: the destructor (and Drain) waits for every submitted op and its callback.
// Errors: Create() returns the io_uring setup or registration error (absl::ErrnoToStatus);
//   a batch's `done` gets OK or the first op error (kDataLoss never: checksums are the caller's).
#ifndef KVTIER_LIB_TIERS_IO_RING_H_
#define KVTIER_LIB_TIERS_IO_RING_H_

#include <sys/uio.h>

#include <atomic>
#include <cstdint>
#include <deque>
#include <functional>
#include <memory>
#include <random>
#include <span>
#include <thread>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "lib/common/mutex.h"

namespace kvtier::internal {

enum class IoOp : uint8_t { kRead, kWrite };
enum class Fault : uint8_t { kNone, kEio, kShort, kBitFlip, kEnospc };

class FaultInjector {
 public:
  virtual ~FaultInjector() = default;
  // Called once per op submission (resubmissions of a short op included), from any thread.
  virtual Fault Next(IoOp op, uint64_t offset, uint32_t bytes) = 0;
};

// Each op independently gets a fault with the given probabilities (seeded: reproducible for one
// submission order). Faults that make no sense for an op (ENOSPC on a read, a bit flip on a
// write) are not injected.
class RandomFaultInjector final : public FaultInjector {
 public:
  struct Rates {
    double eio = 0, short_transfer = 0, bit_flip = 0, enospc = 0;
  };
  RandomFaultInjector(uint64_t seed, Rates rates) : rng_(seed), rates_(rates) {}
  Fault Next(IoOp op, uint64_t offset, uint32_t bytes) override;
  uint64_t injected() const { return injected_.load(); }

 private:
  Mutex mu_;
  std::mt19937_64 rng_ ABSL_GUARDED_BY(mu_);
  const Rates rates_;
  std::atomic<uint64_t> injected_{0};
};

struct IoRequest {
  IoOp op = IoOp::kRead;
  uint32_t file = 0;    // index into the files given to Create()
  uint64_t offset = 0;  // bytes; aligned as the file's O_DIRECT needs
  void* buf = nullptr;  // aligned as the file's O_DIRECT needs
  uint32_t bytes = 0;
};

class IoRing {
 public:
  struct Options {
    uint32_t queue_depth = 64;          // ops in flight at most
    FaultInjector* injector = nullptr;  // not owned; outlives the ring
    uint32_t callback_threads = 0;      // 0: callbacks run on the completion thread
  };
  struct Stats {
    uint64_t ops = 0, bytes = 0, resubmits = 0, errors = 0, fixed_buffer_ops = 0;
    uint64_t outstanding = 0;  // gauge: ops submitted and not completed (queued ones included)
  };

  // `files` are registered with the ring (the ring does not own or close them); `buffers` are
  // registered as fixed buffers, split into pieces of 16 MiB (more past 256 GiB: the kernel
  // takes 16384 buffers of at most 1 GiB). Up to 64 MiB in all are registered here; more are
  // registered piece by piece on a background thread (a sparse table, then one update per piece),
  // so that Create does not wait for the kernel to pin (fault in) every page: an op into a piece
  // not registered yet runs as plain, unregistered I/O. A registration the kernel refuses (memlock
  // limit) leaves the rest unregistered: see buffers_registered().
  static absl::StatusOr<std::unique_ptr<IoRing>> Create(const Options& options,
                                                        std::span<const int> files,
                                                        std::span<const iovec> buffers);
  ~IoRing();
  IoRing(const IoRing&) = delete;
  IoRing& operator=(const IoRing&) = delete;

  // Queues the batch; `done` runs once every op of it finished, with the first error or OK.
  // `prepare`, if any, runs on the completion thread before any op of the batch is submitted (the
  // disk tier fills a write's trailer there, hashing its payload, so that the caller's thread and
  // locks are not held for it), as soon as the completion being handled is done with.
  // kInvalidArgument for an empty batch or a bad file index (nothing is queued then).
  absl::Status Submit(std::vector<IoRequest> batch, std::function<void(absl::Status)> done,
                      std::function<void()> prepare = nullptr);

  // Blocks until every op submitted so far has completed and its batch's callback returned.
  void Drain();

  // Every piece is registered (false while the background registration runs, or if it stopped).
  bool buffers_registered() const;
  // Waits for the background registration to end; returns buffers_registered().
  bool WaitBuffersRegistered();
  Stats stats() const;

 private:
  struct Batch;
  struct Op {
    IoRequest req;
    Batch* batch;
    Fault fault = Fault::kNone;
  };
  IoRing(const Options& options, void* ring);
  void PumpLocked() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // On the completion thread: runs the `prepare` of the batches queued with one, then queues
  // their ops for submission.
  void PrepareQueued();
  void CompletionLoop();
  // Handles one CQE; true when the op counts as finished now (false: resubmitted for the rest, or
  // its batch's callback was handed to a callback thread, which counts it once `done` returned).
  bool Complete(Op* op, int res);
  void CallbackLoop();
  int FixedIndex(const void* buf, uint32_t bytes) const;
  // The background registration (Create, for buffers past 64 MiB).
  void RegisterPieces();

  const Options options_;
  void* ring_;  // struct io_uring*, kept out of this header (only io_ring.cc includes liburing.h)
  uint32_t num_files_ = 0;
  std::vector<iovec> fixed_;  // the pieces, by index (fixed after Create)
  struct Span {               // a buffer given to Create, cut into pieces from first_piece on
    const char* base;
    uint64_t bytes;
    size_t first_piece;
  };
  std::vector<Span> spans_;
  uint64_t piece_bytes_ = 0;
  std::unique_ptr<std::atomic<bool>[]> registered_;  // piece i is usable as fixed buffer i
  std::atomic<bool> stop_registering_{false};
  std::thread register_thread_;
  mutable Mutex registration_mu_;
  CondVar registration_cv_;
  bool registration_done_ ABSL_GUARDED_BY(registration_mu_) = true;
  bool buffers_registered_ ABSL_GUARDED_BY(registration_mu_) = false;

  mutable Mutex mu_;
  std::deque<Op*> pending_ ABSL_GUARDED_BY(mu_);     // queued, not yet in the submission ring
  std::deque<Op*> unprepared_ ABSL_GUARDED_BY(mu_);  // of batches whose `prepare` has not run
  uint32_t in_flight_ ABSL_GUARDED_BY(mu_) = 0;
  bool stopping_ ABSL_GUARDED_BY(mu_) = false;
  bool wake_pending_ ABSL_GUARDED_BY(mu_) = false;  // a wake-up NOP is on its way
  uint64_t outstanding_ ABSL_GUARDED_BY(mu_) = 0;   // ops submitted and not completed
  CondVar drained_;
  Stats stats_ ABSL_GUARDED_BY(mu_);
  std::thread completion_thread_;

  Mutex callbacks_mu_;
  std::deque<Batch*> callbacks_ ABSL_GUARDED_BY(callbacks_mu_);  // finished, `done` not yet run
  bool callbacks_stopping_ ABSL_GUARDED_BY(callbacks_mu_) = false;
  CondVar callbacks_ready_;
  std::vector<std::thread> callback_threads_;
};

}  // namespace kvtier::internal

#endif  // KVTIER_LIB_TIERS_IO_RING_H_
