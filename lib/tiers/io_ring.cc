#include "lib/tiers/io_ring.h"

#include <liburing.h>

#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <utility>

#include "absl/strings/str_cat.h"

namespace kvtier::internal {
namespace {

constexpr uint64_t kStopMarker = 0;  // user_data of the NOP that stops the completion thread
constexpr uint64_t kWakeMarker = 1;  // user_data of a NOP that makes it submit queued ops
// Fixed buffers are registered in pieces, each pinned and usable on its own: 16 MiB, or larger
// for buffers of more than 256 GiB in all (the kernel takes at most 16384 buffers, of at most 1
// GiB each). Small: the kernel pins a piece under the ring's lock, which submissions wait for.
constexpr uint64_t kMinFixedPiece = uint64_t{16} << 20;
constexpr uint64_t kMaxFixedPiece = uint64_t{1} << 30;
constexpr uint64_t kMaxFixedBuffers = 16384;
// Up to this much is registered in Create() itself; more in the background (Create returns before
// the pages are pinned; I/O into a piece not registered yet is plain, unregistered I/O).
constexpr uint64_t kSyncRegisterBytes = uint64_t{64} << 20;
constexpr uint32_t kShortUnit = 4096;  // injected short transfers stay O_DIRECT-aligned

io_uring* R(void* ring) { return static_cast<io_uring*>(ring); }

// The ring whose completion thread this is, if any: Submit() from a completion callback only
// queues, and the completion loop submits everything once per batch of completions.
thread_local const void* completion_thread_of = nullptr;

}  // namespace

Fault RandomFaultInjector::Next(IoOp op, uint64_t /*offset*/, uint32_t /*bytes*/) {
  double u;
  {
    MutexLock lock(&mu_);
    u = std::uniform_real_distribution<double>(0.0, 1.0)(rng_);
  }
  Fault f = Fault::kNone;
  if ((u -= rates_.eio) < 0) {
    f = Fault::kEio;
  } else if ((u -= rates_.short_transfer) < 0) {
    f = Fault::kShort;
  } else if ((u -= rates_.bit_flip) < 0) {
    f = op == IoOp::kRead ? Fault::kBitFlip : Fault::kNone;
  } else if ((u -= rates_.enospc) < 0) {
    f = op == IoOp::kWrite ? Fault::kEnospc : Fault::kNone;
  }
  if (f != Fault::kNone) injected_++;
  return f;
}

struct IoRing::Batch {
  std::function<void(absl::Status)> done;
  uint32_t remaining;             // guarded by the ring's mu_
  absl::Status status;            // first error; guarded by the ring's mu_
  std::function<void()> prepare;  // once queued, touched by the completion thread only
};

absl::StatusOr<std::unique_ptr<IoRing>> IoRing::Create(const Options& options,
                                                       std::span<const int> files,
                                                       std::span<const iovec> buffers) {
  if (options.queue_depth == 0 || options.queue_depth > 4096) {
    return absl::InvalidArgumentError(
        absl::StrCat("IoRing: queue_depth ", options.queue_depth, " vs 1..4096"));
  }
  auto ring = std::make_unique<io_uring>();
  // Only the completion thread submits I/O, so only it runs the kernel's completion work: it need
  // not be interrupted for it (COOP_TASKRUN) as long as it learns of pending work (TASKRUN_FLAG).
  // Kernels before 5.19 refuse the flags: without them.
  io_uring_params params{};
  params.flags = IORING_SETUP_COOP_TASKRUN | IORING_SETUP_TASKRUN_FLAG;
  int init = io_uring_queue_init_params(options.queue_depth, ring.get(), &params);
  if (init == -EINVAL) init = io_uring_queue_init(options.queue_depth, ring.get(), 0);
  if (init < 0) return absl::ErrnoToStatus(-init, "io_uring_queue_init");
  std::unique_ptr<IoRing> io(new IoRing(options, ring.release()));
  if (!files.empty()) {
    if (int r = io_uring_register_files(R(io->ring_), files.data(), files.size()); r < 0) {
      return absl::ErrnoToStatus(-r, "io_uring_register_files");
    }
    io->num_files_ = static_cast<uint32_t>(files.size());
  }
  uint64_t total = 0;
  for (const iovec& b : buffers) total += b.iov_len;
  constexpr uint64_t kHuge = uint64_t{2} << 20;
  const uint64_t want = (total / kMaxFixedBuffers + kHuge) & ~(kHuge - 1);
  io->piece_bytes_ = std::min(kMaxFixedPiece, std::max(kMinFixedPiece, want));
  for (const iovec& b : buffers) {
    io->spans_.push_back({static_cast<const char*>(b.iov_base), b.iov_len, io->fixed_.size()});
    for (uint64_t off = 0; off < b.iov_len; off += io->piece_bytes_) {
      io->fixed_.push_back({static_cast<char*>(b.iov_base) + off,
                            std::min<uint64_t>(io->piece_bytes_, b.iov_len - off)});
    }
  }
  io->registered_ = std::make_unique<std::atomic<bool>[]>(io->fixed_.size());
  if (!io->fixed_.empty()) {
    const auto n = static_cast<unsigned>(io->fixed_.size());
    // Sparse: every index exists, none usable until updated (kernels before 5.19: -EINVAL, then
    // the whole table at once, as small pools always are).
    const int sparse =
        total > kSyncRegisterBytes ? io_uring_register_buffers_sparse(R(io->ring_), n) : -EINVAL;
    if (sparse == 0) {
      {
        MutexLock lock(&io->registration_mu_);
        io->registration_done_ = false;
      }
      io->register_thread_ = std::thread([p = io.get()] { p->RegisterPieces(); });
    } else {
      const int r = io_uring_register_buffers(R(io->ring_), io->fixed_.data(), n);
      if (r == 0) {  // e.g. -ENOMEM past RLIMIT_MEMLOCK: plain reads instead
        for (size_t i = 0; i < n; ++i) io->registered_[i].store(true);
        MutexLock lock(&io->registration_mu_);
        io->buffers_registered_ = true;
      }
    }
  }
  io->completion_thread_ = std::thread([p = io.get()] { p->CompletionLoop(); });
  for (uint32_t i = 0; i < options.callback_threads; ++i) {
    io->callback_threads_.emplace_back([p = io.get()] { p->CallbackLoop(); });
  }
  return io;
}

void IoRing::RegisterPieces() {
  size_t done = 0;
  for (; done < fixed_.size() && !stop_registering_.load(); ++done) {
    // Pins the piece's pages (faulting them in): the slow part, off Create's path.
    const __u64 tag = 0;
    const int r = io_uring_register_buffers_update_tag(R(ring_), static_cast<unsigned>(done),
                                                       &fixed_[done], &tag, 1);
    if (r != 1) break;  // -ENOMEM past RLIMIT_MEMLOCK: the rest stays unregistered (plain I/O)
    registered_[done].store(true, std::memory_order_release);
  }
  MutexLock lock(&registration_mu_);
  buffers_registered_ = done == fixed_.size();
  registration_done_ = true;
  registration_cv_.SignalAll();
}

bool IoRing::WaitBuffersRegistered() {
  MutexLock lock(&registration_mu_);
  while (!registration_done_) registration_cv_.Wait(&registration_mu_);
  return buffers_registered_;
}

bool IoRing::buffers_registered() const {
  MutexLock lock(&registration_mu_);
  return buffers_registered_;
}

IoRing::IoRing(const Options& options, void* ring) : options_(options), ring_(ring) {}

IoRing::~IoRing() {
  stop_registering_.store(true);
  if (register_thread_.joinable()) register_thread_.join();
  {
    MutexLock lock(&mu_);
    while (outstanding_ > 0) drained_.Wait(&mu_);
    stopping_ = true;
    if (completion_thread_.joinable()) {
      io_uring_sqe* sqe = io_uring_get_sqe(R(ring_));
      while (sqe == nullptr) {  // the ring is idle, so this only waits for the kernel to drain
        io_uring_submit(R(ring_));
        sqe = io_uring_get_sqe(R(ring_));
      }
      io_uring_prep_nop(sqe);
      io_uring_sqe_set_data64(sqe, kStopMarker);
      io_uring_submit(R(ring_));
    }
  }
  if (completion_thread_.joinable()) completion_thread_.join();
  {
    MutexLock lock(&callbacks_mu_);  // no callback is queued: every op was counted finished
    callbacks_stopping_ = true;
  }
  callbacks_ready_.SignalAll();
  for (std::thread& t : callback_threads_) t.join();
  io_uring_queue_exit(R(ring_));
  delete R(ring_);
}

void IoRing::Drain() {
  MutexLock lock(&mu_);
  while (outstanding_ > 0) drained_.Wait(&mu_);
}

IoRing::Stats IoRing::stats() const {
  MutexLock lock(&mu_);
  Stats s = stats_;
  s.outstanding = outstanding_;
  return s;
}

int IoRing::FixedIndex(const void* buf, uint32_t bytes) const {
  const auto* p = static_cast<const char*>(buf);
  for (const Span& s : spans_) {  // the buffers given to Create: one or a few
    if (p < s.base || p >= s.base + s.bytes) continue;
    const size_t i = s.first_piece + static_cast<size_t>(p - s.base) / piece_bytes_;
    const auto* base = static_cast<const char*>(fixed_[i].iov_base);
    if (p + bytes <= base + fixed_[i].iov_len) {
      // A piece the background registration has not reached: plain I/O for now.
      return registered_[i].load(std::memory_order_acquire) ? static_cast<int>(i) : -1;
    }
  }
  return -1;
}

absl::Status IoRing::Submit(std::vector<IoRequest> batch, std::function<void(absl::Status)> done,
                            std::function<void()> prepare) {
  if (batch.empty()) return absl::InvalidArgumentError("IoRing::Submit: empty batch");
  for (const IoRequest& r : batch) {
    if (r.file >= num_files_) {
      return absl::InvalidArgumentError(
          absl::StrCat("IoRing::Submit: file ", r.file, " vs ", num_files_, " registered"));
    }
  }
  const bool unprepared = prepare != nullptr;
  auto* b = new Batch{.done = std::move(done),
                      .remaining = static_cast<uint32_t>(batch.size()),
                      .prepare = std::move(prepare)};
  MutexLock lock(&mu_);
  std::deque<Op*>& queue = unprepared ? unprepared_ : pending_;
  for (const IoRequest& r : batch) queue.push_back(new Op{.req = r, .batch = b});
  outstanding_ += batch.size();
  // Only the completion thread submits I/O: io_uring completes an op (posts its CQE) in the
  // context of the thread that submitted it, so a caller's thread, asleep or descheduled on a
  // loaded machine, would have to run before the completion thread could see its ops complete.
  // Another thread wakes the completion thread with a NOP, which completes inline; the completion
  // thread prepares (a batch's `prepare`) and submits after each completion (work queued by
  // callbacks, and this).
  if (completion_thread_of != this && !wake_pending_) {
    io_uring_sqe* sqe = io_uring_get_sqe(R(ring_));
    if (sqe != nullptr) {
      io_uring_prep_nop(sqe);
      io_uring_sqe_set_data64(sqe, kWakeMarker);
      wake_pending_ = io_uring_submit(R(ring_)) >= 0;
    }
    // No wake-up possible (the submission queue is full, so ops are in flight and their
    // completions will wake the thread): submit what needs no preparing from here after all.
    if (!wake_pending_) PumpLocked();
  }
  return absl::OkStatus();
}

void IoRing::PrepareQueued() {
  for (;;) {
    std::vector<Op*> ops;  // no allocation where nothing waits (once per completion)
    {
      MutexLock lock(&mu_);
      if (unprepared_.empty()) return;
      ops.assign(unprepared_.begin(), unprepared_.end());
      unprepared_.clear();
    }
    for (Op* op : ops) {  // a batch's ops are queued together: its prepare runs once, first
      if (op->batch->prepare != nullptr) {
        op->batch->prepare();
        op->batch->prepare = nullptr;
      }
    }
    MutexLock lock(&mu_);
    pending_.insert(pending_.end(), ops.begin(), ops.end());
  }
}

void IoRing::PumpLocked() {
  bool queued = false;
  while (!pending_.empty() && in_flight_ < options_.queue_depth) {
    io_uring_sqe* sqe = io_uring_get_sqe(R(ring_));
    if (sqe == nullptr) break;  // the SQ is full of unsubmitted entries: submit below, then retry
    Op* op = pending_.front();
    pending_.pop_front();
    const IoRequest& r = op->req;
    op->fault = options_.injector == nullptr ? Fault::kNone
                                             : options_.injector->Next(r.op, r.offset, r.bytes);
    uint32_t bytes = r.bytes;
    if (op->fault == Fault::kShort) {
      bytes = (r.bytes / 2) / kShortUnit * kShortUnit;  // a real, aligned short transfer
      if (bytes == 0) op->fault = Fault::kNone, bytes = r.bytes;
    }
    const int fixed = FixedIndex(r.buf, bytes);
    if (r.op == IoOp::kRead) {
      if (fixed >= 0) {
        io_uring_prep_read_fixed(sqe, static_cast<int>(r.file), r.buf, bytes, r.offset, fixed);
      } else {
        io_uring_prep_read(sqe, static_cast<int>(r.file), r.buf, bytes, r.offset);
      }
    } else {
      if (fixed >= 0) {
        io_uring_prep_write_fixed(sqe, static_cast<int>(r.file), r.buf, bytes, r.offset, fixed);
      } else {
        io_uring_prep_write(sqe, static_cast<int>(r.file), r.buf, bytes, r.offset);
      }
    }
    io_uring_sqe_set_flags(sqe, IOSQE_FIXED_FILE);
    io_uring_sqe_set_data(sqe, op);
    stats_.ops++;
    if (fixed >= 0) stats_.fixed_buffer_ops++;
    in_flight_++;
    queued = true;
  }
  if (queued) {
    // A failed submit leaves the entries in the SQ; the next pump (on a completion) retries.
    io_uring_submit(R(ring_));
  }
}

bool IoRing::Complete(Op* op, int res) {
  Batch* finished = nullptr;
  {
    // The op was written under mu_ and handed over through the kernel, which ThreadSanitizer
    // cannot see: read it under mu_ too.
    MutexLock lock(&mu_);
    IoRequest& r = op->req;
    const Fault fault = op->fault;
    if (res >= 0 && fault == Fault::kEio) res = -EIO;
    if (res >= 0 && fault == Fault::kEnospc) res = -ENOSPC;
    in_flight_--;
    if (res == -EAGAIN || (res > 0 && static_cast<uint32_t>(res) < r.bytes)) {
      // Resubmit the remainder (or the whole op on EAGAIN), ahead of later work.
      if (res > 0) {
        r.offset += res;
        r.buf = static_cast<char*>(r.buf) + res;
        r.bytes -= res;
        stats_.bytes += res;
      }
      stats_.resubmits++;
      pending_.push_front(op);
      return false;  // submitted with the rest of this batch of completions
    }
    Batch* b = op->batch;
    if (res < 0 || (res == 0 && r.bytes > 0)) {
      stats_.errors++;
      if (b->status.ok()) {
        b->status =
            res < 0
                ? absl::ErrnoToStatus(-res, absl::StrCat(r.op == IoOp::kRead ? "read" : "write",
                                                         " at offset ", r.offset))
                : absl::DataLossError(absl::StrCat("read at offset ", r.offset, ": end of file"));
      }
    } else {
      stats_.bytes += res;
      if (fault == Fault::kBitFlip && r.op == IoOp::kRead && r.bytes > 0) {
        const uint64_t bit = (r.offset * 2654435761u + r.bytes) % (uint64_t{r.bytes} * 8);
        static_cast<uint8_t*>(r.buf)[bit / 8] ^= static_cast<uint8_t>(1u << (bit % 8));
      }
    }
    if (--b->remaining == 0) finished = b;
  }
  delete op;
  if (finished != nullptr && !callback_threads_.empty()) {
    {
      MutexLock lock(&callbacks_mu_);
      callbacks_.push_back(finished);
    }
    callbacks_ready_.Signal();
    return false;
  }
  if (finished != nullptr) {
    // Outside the lock. The caller counts the op as finished only after this returns, so the
    // destructor waits for callbacks too.
    finished->done(finished->status);
    delete finished;
  }
  return true;
}

void IoRing::CallbackLoop() {
  for (;;) {
    Batch* b = nullptr;
    {
      MutexLock lock(&callbacks_mu_);
      while (callbacks_.empty() && !callbacks_stopping_) callbacks_ready_.Wait(&callbacks_mu_);
      if (callbacks_.empty()) return;
      b = callbacks_.front();
      callbacks_.pop_front();
    }
    b->done(b->status);
    delete b;
    // The batch's last op counts as finished only now, so Drain() and the destructor wait for it.
    MutexLock lock(&mu_);
    if (--outstanding_ == 0) drained_.SignalAll();
  }
}

void IoRing::CompletionLoop() {
  completion_thread_of = this;
  for (;;) {
    io_uring_cqe* cqe = nullptr;
    const int r = io_uring_wait_cqe(R(ring_), &cqe);
    if (r == -EINTR || r == -EAGAIN) continue;
    if (r < 0) return;  // the ring is unusable; the destructor still joins
    // Everything already completed. The work a callback queues (a caller's next read, queued
    // after verifying this one) goes to the device before the next callback runs, not after the
    // whole batch: callbacks that verify 2 MiB each would otherwise leave the device idle.
    uint32_t finished = 0;
    bool stop = false;
    for (;;) {
      const uint64_t data = io_uring_cqe_get_data64(cqe);
      const int res = cqe->res;
      io_uring_cqe_seen(R(ring_), cqe);  // mark it seen before anything else can return
      if (data == kStopMarker) {
        stop = true;
      } else if (data == kWakeMarker) {
        MutexLock lock(&mu_);
        wake_pending_ = false;  // pumped below
      } else {
        finished += Complete(reinterpret_cast<Op*>(data), res);
      }
      if (io_uring_peek_cqe(R(ring_), &cqe) != 0) break;
      PrepareQueued();  // what this completion's callback queued goes out now, not after the rest
      MutexLock lock(&mu_);
      PumpLocked();
    }
    PrepareQueued();
    MutexLock lock(&mu_);
    PumpLocked();
    if (finished > 0 && (outstanding_ -= finished) == 0) drained_.SignalAll();
    if (stop) return;
  }
}
}  // namespace kvtier::internal
