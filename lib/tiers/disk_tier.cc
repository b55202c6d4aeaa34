#include "lib/tiers/disk_tier.h"

#include <dirent.h>
#include <fcntl.h>
#include <sys/file.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/statvfs.h>
#include <unistd.h>
#include <xxhash.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <filesystem>
#include <future>
#include <optional>
#include <sstream>
#include <string_view>

#include "absl/cleanup/cleanup.h"
#include "absl/container/flat_hash_map.h"
#include "absl/container/flat_hash_set.h"
#include "absl/strings/str_cat.h"
#include "lib/common/status_macros.h"
#include "lib/tiers/block_header.h"
#include "lib/tiers/disk_journal.h"

namespace kvtier::internal {
namespace {

constexpr char kManifestMagic[8] = {'K', 'V', 'T', 'I', 'E', 'R', 'M', '1'};
constexpr uint32_t kVersion = kBlockHeaderVersion;

uint64_t RoundUp(uint64_t n, uint64_t a) { return (n + a - 1) / a * a; }

absl::Status Errno(const std::string& what) { return absl::ErrnoToStatus(errno, what); }

// An aligned scratch buffer for trailers and the manifest.
struct Aligned {
  Aligned(uint64_t n) : bytes(n) {
    p = static_cast<uint8_t*>(
        mmap(nullptr, n, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0));
    if (p == MAP_FAILED) p = nullptr;
  }
  ~Aligned() {
    if (p != nullptr) munmap(p, bytes);
  }
  uint8_t* p;
  uint64_t bytes;
};

// Manifest: header (magic, version, fingerprint, slot bytes, slots, files, count, sequence),
// `count` entries (slot, key, parent), then the XXH3-64 of everything before it.
constexpr uint64_t kManifestHead = 8 + 4 + 8 + 8 + 4 + 4 + 8 + 8,
                   kManifestEntry = kStoredBlockEntryBytes;
constexpr uint64_t kManifestTail = 8;
// kvtier.meta is one short line; anything longer is not ours.
constexpr uint64_t kMaxMetaBytes = 4096;

// a * b, or nullopt when it does not fit in 64 bits.
std::optional<uint64_t> CheckedMul(uint64_t a, uint64_t b) {
  uint64_t r = 0;
  if (__builtin_mul_overflow(a, b, &r)) return std::nullopt;
  return r;
}

// Why `st` is not a file the tier may read or write, or "" when it is: a regular file of this
// user with no other name (so writing it changes nothing outside the directory).
std::string NotOurs(const struct stat& st) {
  if (!S_ISREG(st.st_mode)) return "not a regular file";
  if (st.st_uid != geteuid()) return absl::StrCat("owned by uid ", st.st_uid);
  if (st.st_nlink != 1) return absl::StrCat("with ", st.st_nlink, " links");
  return "";
}

absl::Status NotOursError(const std::string& path, const std::string& why) {
  return absl::FailedPreconditionError(
      absl::StrCat("Options.disk.directory: ", path, " is not a file of this cache (", why,
                   " vs a regular file of uid ", geteuid(), " with one link)"));
}

// Opens `path` with `flags` (plus O_NOFOLLOW, O_CLOEXEC, and O_NONBLOCK until it is known to be a
// regular file, so a FIFO or device cannot block) and checks it is ours (NotOurs).
// kFailedPrecondition names the path when it is not; kNotFound when it does not exist. `open_errno`
// (if given) is open's errno, 0 when the open itself succeeded.
absl::StatusOr<int> OpenOurs(const std::string& path, int flags, int* open_errno = nullptr) {
  const int fd = open(path.c_str(), flags | O_NOFOLLOW | O_CLOEXEC | O_NONBLOCK, 0600);
  if (open_errno != nullptr) *open_errno = fd < 0 ? errno : 0;
  if (fd < 0) {
    if (errno == ELOOP) return NotOursError(path, "a symlink");
    if (errno == EISDIR) return NotOursError(path, "a directory");
    return Errno(absl::StrCat("DiskTier: open ", path));
  }
  struct stat st {};
  std::string why = fstat(fd, &st) != 0 ? std::string("fstat failed") : NotOurs(st);
  if (why.empty() && fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) & ~O_NONBLOCK) != 0) {
    why = "fcntl failed";
  }
  if (!why.empty()) {
    close(fd);
    return NotOursError(path, why);
  }
  return fd;
}

// The whole of the file of ours at `path` (OpenOurs), when it holds at most `max_bytes`; read into
// anonymous memory, so a failed allocation is an error, not an exception.
// kNotFound: no such file. kOutOfRange: longer (`*size` says how long). kFailedPrecondition: not
// ours. Else the read's error.
absl::StatusOr<std::unique_ptr<Aligned>> ReadOurs(const std::string& path, uint64_t max_bytes,
                                                  uint64_t* size) {
  *size = 0;
  KVTIER_ASSIGN_OR_RETURN(const int fd, OpenOurs(path, O_RDONLY));
  const absl::Cleanup closer = [fd] { close(fd); };
  struct stat st {};
  if (fstat(fd, &st) != 0) return Errno(absl::StrCat("DiskTier: fstat ", path));
  *size = static_cast<uint64_t>(st.st_size);
  if (*size > max_bytes) {
    return absl::OutOfRangeError(
        absl::StrCat("DiskTier: ", path, " is too long (", *size, " vs ", max_bytes, " bytes)"));
  }
  auto mem = std::make_unique<Aligned>(std::max<uint64_t>(*size, 1));
  if (mem->p == nullptr) {
    return absl::ResourceExhaustedError(
        absl::StrCat("DiskTier: no memory to read ", path, " (", *size, " bytes)"));
  }
  // Read one byte past the size fstat gave: a file that grew since is as wrong as a longer one.
  uint64_t got = 0;
  while (got < *size) {
    const ssize_t n = pread(fd, mem->p + got, *size - got, static_cast<off_t>(got));
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) return Errno(absl::StrCat("DiskTier: read ", path));
    if (n == 0) break;
    got += static_cast<uint64_t>(n);
  }
  if (uint8_t extra; got != *size || pread(fd, &extra, 1, static_cast<off_t>(got)) != 0) {
    return absl::OutOfRangeError(
        absl::StrCat("DiskTier: ", path, " changed while read (", got, " vs ", *size, " bytes)"));
  }
  return mem;
}

// `text` for a one-line message: its first line, printable characters only, at most 200.
std::string OneLine(std::string_view text) {
  std::string out;
  for (char c : text.substr(0, text.find('\n'))) {
    if (out.size() == 200) return out + "...";
    out += (c >= 0x20 && c < 0x7f) ? c : '?';
  }
  return out;
}

// The names of the slot files (blocks.<n>) in `dir`, whatever their type.
std::vector<std::string> SlotFileNames(const std::string& dir) {
  std::vector<std::string> names;
  DIR* d = opendir(dir.c_str());
  if (d == nullptr) return names;
  while (const dirent* e = readdir(d)) {
    const std::string_view name = e->d_name;
    if (name.size() > 7 && name.substr(0, 7) == "blocks." &&
        name.find_first_not_of("0123456789", 7) == std::string_view::npos) {
      names.emplace_back(name);
    }
  }
  closedir(d);
  return names;
}

// Writes `text` to `path` atomically: a fresh temporary file of ours (O_EXCL, never through a
// link left in its place), fsync, rename over `path` (which replaces a link, never its target).
absl::Status WriteOurFileAtomically(const std::string& path, std::string_view text,
                                    const std::string& call) {
  const std::string tmp = path + ".tmp";
  unlink(tmp.c_str());  // a leftover of a crash (a link is removed, not followed)
  const int fd = open(tmp.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, 0600);
  if (fd < 0) return Errno(absl::StrCat(call, ": create ", tmp));
  const bool wrote =
      write(fd, text.data(), text.size()) == static_cast<ssize_t>(text.size()) && fsync(fd) == 0;
  const int write_errno = errno;
  close(fd);
  if (!wrote) {
    unlink(tmp.c_str());
    return absl::ErrnoToStatus(write_errno, absl::StrCat(call, ": write ", tmp));
  }
  if (rename(tmp.c_str(), path.c_str()) != 0) {
    const int rename_errno = errno;
    unlink(tmp.c_str());
    return absl::ErrnoToStatus(rename_errno, absl::StrCat(call, ": rename ", tmp, " to ", path));
  }
  return absl::OkStatus();
}

absl::Status WaitBatch(IoRing& ring, std::vector<IoRequest> batch) {
  std::promise<absl::Status> done;
  auto f = done.get_future();
  KVTIER_RETURN_IF_ERROR(ring.Submit(std::move(batch), [&](absl::Status s) { done.set_value(s); }));
  return f.get();
}

}  // namespace

absl::StatusOr<uint32_t> DiskTier::Alignment(const std::string& directory) {
  // STATX_DIOALIGN is reported for regular files: ask about a probe file opened for direct I/O.
  const std::string probe = directory + "/.kvtier-align-probe";
  const int fd = open(probe.c_str(), O_RDWR | O_CREAT | O_NOFOLLOW | O_CLOEXEC, 0600);
  if (fd < 0) return Errno(absl::StrCat("DiskTier: cannot create a file in ", directory));
  uint32_t align = 4096;
  struct statx st {};
  if (statx(fd, "", AT_EMPTY_PATH, STATX_DIOALIGN, &st) == 0 && (st.stx_mask & STATX_DIOALIGN)) {
    align = std::max({align, st.stx_dio_mem_align, st.stx_dio_offset_align});
  }
  close(fd);
  unlink(probe.c_str());
  return align;
}

uint64_t DiskTier::HostSlotBytes(uint64_t block_bytes, uint32_t alignment) {
  return RoundUp(block_bytes, alignment) + alignment;
}

absl::StatusOr<std::unique_ptr<DiskTier>> DiskTier::Open(const DiskTierConfig& config,
                                                         std::span<const iovec> host_memory) {
  namespace fs = std::filesystem;
  const std::string& dir = config.directory;
  if (dir.empty()) return absl::InvalidArgumentError("Options.disk.directory: empty");
  std::error_code ec;
  if (!fs::is_directory(dir, ec)) {
    return absl::NotFoundError(
        absl::StrCat("Options.disk.directory: ", dir, " is not a directory"));
  }
  if (access(dir.c_str(), W_OK | X_OK) != 0) {
    return absl::PermissionDeniedError(
        absl::StrCat("Options.disk.directory: ", dir, " is not writable"));
  }
  if (config.block_bytes == 0 || config.files == 0) {
    return absl::InvalidArgumentError("DiskTier: block_bytes and files must be > 0");
  }
  std::unique_ptr<DiskTier> t(new DiskTier());
  t->config_ = config;
  KVTIER_ASSIGN_OR_RETURN(t->alignment_, Alignment(dir));
  // A slot is moved in one transfer whose length is 32-bit (IoRequest::bytes).
  if (config.block_bytes > UINT32_MAX - 2 * uint64_t{t->alignment_}) {
    return absl::InvalidArgumentError(
        absl::StrCat("DiskTier: a ", config.block_bytes, "-byte block vs at most ",
                     UINT32_MAX - 2 * uint64_t{t->alignment_}, " bytes in a disk slot"));
  }
  t->padded_payload_ = RoundUp(config.block_bytes, t->alignment_);
  t->slot_bytes_ = t->padded_payload_ + t->alignment_;
  t->zero_trailer_.reset(static_cast<uint8_t*>(std::aligned_alloc(t->alignment_, t->alignment_)));
  if (t->zero_trailer_ == nullptr) return absl::ResourceExhaustedError("DiskTier: zero trailer");
  std::memset(t->zero_trailer_.get(), 0, t->alignment_);
  if (config.capacity_bytes < t->slot_bytes_ ||
      config.capacity_bytes / t->slot_bytes_ > UINT32_MAX) {
    return absl::InvalidArgumentError(absl::StrCat(
        "Options.disk.capacity_bytes: ", config.capacity_bytes, " vs one slot of ", t->slot_bytes_,
        " bytes (a ", config.block_bytes, "-byte block, aligned, with its trailer) to 2^32 slots"));
  }
  t->capacity_slots_ = static_cast<uint32_t>(config.capacity_bytes / t->slot_bytes_);
  const uint64_t slots_per_file = (uint64_t{t->capacity_slots_} + config.files - 1) / config.files;
  const std::optional<uint64_t> file_bytes = CheckedMul(slots_per_file, t->slot_bytes_);
  const std::optional<uint64_t> need =
      file_bytes ? CheckedMul(*file_bytes, config.files) : std::nullopt;
  if (!need || *need > uint64_t{INT64_MAX}) {
    return absl::InvalidArgumentError(
        absl::StrCat("Options.disk.files: ", config.files, " files of ", slots_per_file,
                     " slots of ", t->slot_bytes_, " bytes vs at most 2^63 bytes in all"));
  }

  KVTIER_RETURN_IF_ERROR(t->Lock());

  // Geometry and layout of what the directory holds.
  std::ostringstream meta;
  meta << "kvtier-disk v" << kVersion << " fingerprint=" << config.layout_fingerprint
       << " block_bytes=" << config.block_bytes << " slot_bytes=" << t->slot_bytes_
       << " slots=" << t->capacity_slots_ << " files=" << config.files << "\n";
  const std::string meta_path = dir + "/kvtier.meta";
  bool reset = false;
  uint64_t meta_size = 0;
  auto old = ReadOurs(meta_path, kMaxMetaBytes, &meta_size);
  if (old.ok() || old.status().code() == absl::StatusCode::kOutOfRange) {
    const std::string was = old.ok()
                                ? OneLine({reinterpret_cast<const char*>((*old)->p), meta_size})
                                : absl::StrCat("a ", meta_size, "-byte file");
    if (!old.ok() ||
        std::string_view(reinterpret_cast<const char*>((*old)->p), meta_size) != meta.str()) {
      if (!config.reset_on_mismatch) {
        return absl::FailedPreconditionError(absl::StrCat(
            "Options.disk.directory: ", dir,
            " holds blocks of another layout, shard identity (Options.shard: TP/PP rank, dtype, "
            "format) or geometry (",
            was, ") vs (", OneLine(meta.str()),
            "); set Options.disk.reset_on_mismatch to start empty"));
      }
      reset = true;
    }
  } else if (old.status().code() == absl::StatusCode::kNotFound) {
    // No record of what the slot files hold: only a directory without any is a fresh start.
    if (std::vector<std::string> files = SlotFileNames(dir);
        !files.empty() && !config.reset_on_mismatch) {
      return absl::FailedPreconditionError(absl::StrCat(
          "Options.disk.directory: ", dir, " holds ", files.size(), " slot files (", files[0],
          "...) vs none without kvtier.meta; set Options.disk.reset_on_mismatch to start empty"));
    }
    reset = true;
  } else {
    return old.status();
  }

  // From here a failed start of an emptied directory leaves it empty, as a fresh one.
  absl::Cleanup undo_reset = [&dir, &meta_path, &reset] {
    if (!reset) return;
    unlink(meta_path.c_str());
    DiskJournal::RemoveFiles(dir);
    for (const std::string& name : SlotFileNames(dir)) unlink((dir + "/" + name).c_str());
  };
  if (reset) {
    // The record first: until the new one is written, the directory is no known cache.
    if (unlink(meta_path.c_str()) != 0 && errno != ENOENT) {
      return Errno(absl::StrCat("DiskTier: remove ", meta_path));
    }
    unlink((dir + "/manifest").c_str());
    DiskJournal::RemoveFiles(dir);  // of another geometry, or with nothing to describe
    // Every slot file, also those of a geometry with more files than this one.
    for (const std::string& name : SlotFileNames(dir)) {
      const std::string path = dir + "/" + name;
      if (unlink(path.c_str()) != 0 && errno != ENOENT) {
        return Errno(absl::StrCat("DiskTier: remove ", path));
      }
    }
    KVTIER_RETURN_IF_ERROR(WriteOurFileAtomically(meta_path, meta.str(), "DiskTier"));
  }

  // Refuse a capacity the file system cannot hold before allocating any of it (fallocate would
  // fill the disk first and fail last).
  if (struct statvfs vfs{}; statvfs(dir.c_str(), &vfs) == 0) {
    const uint64_t avail = CheckedMul(vfs.f_bavail, vfs.f_frsize).value_or(UINT64_MAX);
    uint64_t have = avail;
    for (uint32_t f = 0; f < config.files; ++f) {
      struct stat st {};
      if (lstat(absl::StrCat(dir, "/blocks.", f).c_str(), &st) == 0 && S_ISREG(st.st_mode)) {
        const uint64_t held = CheckedMul(st.st_blocks, 512).value_or(UINT64_MAX);
        have = held > UINT64_MAX - have ? UINT64_MAX : have + held;
      }
    }
    if (*need > have) {
      return absl::ResourceExhaustedError(absl::StrCat("Options.disk.capacity_bytes: ", *need,
                                                       " bytes needed in ", dir, " vs ", have,
                                                       " available"));
    }
  }
  for (uint32_t f = 0; f < config.files; ++f) {
    const std::string path = absl::StrCat(dir, "/blocks.", f);
    // Never through a link (its target would be overwritten), and only a regular file of ours.
    int open_errno = 0;
    auto fd = OpenOurs(path, O_RDWR | O_CREAT | O_DIRECT, &open_errno);
    if (open_errno == EINVAL) {
      if (!config.allow_buffered) {
        return absl::FailedPreconditionError(absl::StrCat(
            "Options.disk.directory: the file system of ", dir,
            " does not support O_DIRECT (tmpfs?); use a disk, or set Options.disk.allow_buffered"));
      }
      fd = OpenOurs(path, O_RDWR | O_CREAT);
      t->buffered_ = true;
    }
    if (!fd.ok()) return fd.status();
    t->fds_.push_back(*fd);
    if (int r = posix_fallocate(*fd, 0, static_cast<off_t>(*file_bytes)); r != 0) {
      if (r == ENOSPC) {
        return absl::ResourceExhaustedError(absl::StrCat(
            "Options.disk.capacity_bytes: no room for ", *file_bytes, " bytes in ", path));
      }
      return absl::ErrnoToStatus(r, absl::StrCat("DiskTier: fallocate ", path));
    }
  }
  KVTIER_ASSIGN_OR_RETURN(t->ring_, IoRing::Create({.queue_depth = config.queue_depth,
                                                    .injector = config.injector,
                                                    .callback_threads = config.verify_threads},
                                                   t->fds_, host_memory));
  if (!reset) KVTIER_RETURN_IF_ERROR(t->Recover(&reset));
  KVTIER_RETURN_IF_ERROR(t->StartJournal());
  std::move(undo_reset).Cancel();
  return t;
}

absl::Status DiskTier::Lock() {
  // One cache per directory: an advisory lock held for the tier's life (released by the kernel if
  // the process dies, so a crash never leaves the directory locked). Its holder removes the file
  // when it lets go; so a lock taken on a file that is no longer the one named kvtier.lock (its
  // holder removed it between our open and our flock) is not the directory's lock: try again.
  const std::string path = config_.directory + "/kvtier.lock";
  for (int attempt = 0; attempt < 16; ++attempt) {
    const int fd = open(path.c_str(), O_RDWR | O_CREAT | O_NOFOLLOW | O_CLOEXEC, 0600);
    if (fd < 0) {
      if (errno == ELOOP) return NotOursError(path, "a symlink");
      return Errno(absl::StrCat("DiskTier: open ", path));
    }
    if (flock(fd, LOCK_EX | LOCK_NB) != 0) {
      const int flock_errno = errno;
      close(fd);
      if (flock_errno == EWOULDBLOCK) {
        return absl::FailedPreconditionError(absl::StrCat(
            "Options.disk.directory: ", config_.directory, " is in use by another kvtier cache"));
      }
      return absl::ErrnoToStatus(flock_errno, absl::StrCat("DiskTier: flock ", path));
    }
    struct stat held {
    }, named{};
    if (fstat(fd, &held) == 0 && lstat(path.c_str(), &named) == 0 && held.st_dev == named.st_dev &&
        held.st_ino == named.st_ino) {
      lock_fd_ = fd;
      return absl::OkStatus();
    }
    close(fd);
  }
  return absl::UnavailableError(
      absl::StrCat("DiskTier: ", path, " kept changing while locked (16 tries vs 1)"));
}

DiskTier::~DiskTier() {
  ring_.reset();     // waits for in-flight I/O (their completions record into the journal)
  journal_.reset();  // flushes it
  for (int fd : fds_) close(fd);
  if (lock_fd_ >= 0) {
    // Removed while still held (see Lock): whoever opened this file meanwhile sees it is gone.
    unlink((config_.directory + "/kvtier.lock").c_str());
    close(lock_fd_);  // releases the lock
  }
}

IoRequest DiskTier::RequestFor(IoOp op, SlotId slot, void* buf, uint32_t bytes,
                               bool trailer_only) const {
  const uint32_t file = slot % config_.files;
  const uint64_t offset =
      uint64_t{slot / config_.files} * slot_bytes_ + (trailer_only ? padded_payload_ : 0);
  return IoRequest{.op = op, .file = file, .offset = offset, .buf = buf, .bytes = bytes};
}

absl::Status DiskTier::Write(SlotId slot, const BlockKey& key, const BlockKey& parent,
                             void* host_slot, std::function<void(absl::Status)> done) {
  if (slot >= capacity_slots_) {
    return absl::InvalidArgumentError(
        absl::StrCat("DiskTier::Write: slot ", slot, " vs ", capacity_slots_));
  }
  if (journal_ != nullptr) journal_->Overwriting({&slot, 1});  // before its old block can go
  auto* base = static_cast<uint8_t*>(host_slot);
  const uint64_t seq = sequence_.fetch_add(1);
  // The trailer (the payload's XXH3 among it) is filled on the ring's thread, just before the
  // write is submitted: not on the caller's, which may hold the cache's lock.
  auto fill_trailer = [this, base, key, parent, seq] {
    const BlockHeader tr{.key = key,
                         .parent = parent,
                         .fingerprint = config_.layout_fingerprint,
                         .payload_bytes = config_.block_bytes,
                         .payload_hash = PayloadHash(base, config_.block_bytes),
                         .sequence = seq};
    std::memset(base + config_.block_bytes, 0, padded_payload_ - config_.block_bytes);
    EncodeBlockHeader(tr, alignment_, base + padded_payload_);
  };
  writes_++;
  const uint64_t start = MonotonicNanos();
  return ring_->Submit(
      {RequestFor(IoOp::kWrite, slot, host_slot, static_cast<uint32_t>(slot_bytes_), false)},
      [this, start, slot, key, parent, seq, done = std::move(done)](absl::Status s) {
        write_latency_.RecordSince(start);
        if (!s.ok()) io_errors_++;
        if (s.ok() && journal_ != nullptr) journal_->Wrote(slot, key, parent, seq);
        done(s);
      },
      std::move(fill_trailer));
}

absl::Status DiskTier::Invalidate(SlotId slot, std::function<void(absl::Status)> done) {
  if (slot >= capacity_slots_) {
    return absl::InvalidArgumentError(
        absl::StrCat("DiskTier::Invalidate: slot ", slot, " vs ", capacity_slots_));
  }
  invalidations_++;
  if (journal_ != nullptr) journal_->Overwriting({&slot, 1});
  // A zero trailer is what a never-written slot holds: the scan skips it, a read fails to verify.
  return ring_->Submit(
      {RequestFor(IoOp::kWrite, slot, zero_trailer_.get(), alignment_, /*trailer_only=*/true)},
      [this, done = std::move(done)](absl::Status s) {
        if (!s.ok()) io_errors_++;
        done(s);
      });
}

absl::Status DiskTier::Read(SlotId slot, const BlockKey& key, void* host_slot,
                            std::function<void(absl::Status)> done) {
  if (slot >= capacity_slots_) {
    return absl::InvalidArgumentError(
        absl::StrCat("DiskTier::Read: slot ", slot, " vs ", capacity_slots_));
  }
  reads_++;
  const uint64_t start = MonotonicNanos();
  return ring_->Submit(
      {RequestFor(IoOp::kRead, slot, host_slot, static_cast<uint32_t>(slot_bytes_), false)},
      [this, key, slot, host_slot, start, done = std::move(done)](absl::Status s) {
        if (!s.ok()) {
          read_latency_.RecordSince(start);
          io_errors_++;
          return done(s);
        }
        const auto* base = static_cast<const uint8_t*>(host_slot);
        const bool ok = VerifyBlock(base + padded_payload_, alignment_, base, key,
                                    config_.layout_fingerprint, config_.block_bytes);
        read_latency_.RecordSince(start);
        if (!ok) {
          corrupt_++;
          return done(absl::DataLossError(
              absl::StrCat("DiskTier: slot ", slot, " does not hold ", key.ToHex(), " intact")));
        }
        done(absl::OkStatus());
      });
}

absl::Status DiskTier::Recover(bool* reset) {
  bool found = false;
  KVTIER_RETURN_IF_ERROR(LoadManifest(&found));
  from_manifest_ = found;
  if (!found) {
    // After a crash: the journal's checkpoint and records, O(them), no slot read.
    DiskJournal::Loaded j = DiskJournal::Load(JournalConfig());
    recovery_dropped_ += j.dropped;
    recovery_bytes_read_ += j.bytes_read;
    if (j.found) {
      recovered_ = std::move(j.blocks);
      sequence_ = j.max_sequence + 1;
      journal_replayed_ = j.records;
      from_journal_ = true;
      found = true;
    }
  }
  if (!found) KVTIER_RETURN_IF_ERROR(ScanTrailers());
  recovered_blocks_ = recovered_.size();
  *reset = false;
  return absl::OkStatus();
}

absl::Status DiskTier::ScanTrailers() {
  constexpr uint32_t kChunk = 256;
  Aligned buf(uint64_t{kChunk} * alignment_);
  if (buf.p == nullptr) return absl::ResourceExhaustedError("DiskTier: scan buffer");
  // The newest write of a key wins (a key rewritten elsewhere leaves a stale trailer behind).
  absl::flat_hash_map<BlockKey, std::pair<uint64_t, StoredBlock>> newest;
  uint64_t max_seq = 0;
  for (uint32_t first = 0; first < capacity_slots_; first += kChunk) {
    const uint32_t n = std::min(kChunk, capacity_slots_ - first);
    recovery_trailer_reads_ += n;
    recovery_bytes_read_ += uint64_t{n} * alignment_;
    std::vector<IoRequest> batch;
    for (uint32_t i = 0; i < n; ++i) {
      batch.push_back(RequestFor(IoOp::kRead, first + i, buf.p + uint64_t{i} * alignment_,
                                 alignment_, /*trailer_only=*/true));
    }
    if (absl::Status s = WaitBatch(*ring_, batch); !s.ok()) {
      // An unreadable chunk loses its blocks, not the cache.
      recovery_dropped_ += n;
      continue;
    }
    for (uint32_t i = 0; i < n; ++i) {
      const uint8_t* p = buf.p + uint64_t{i} * alignment_;
      if (std::all_of(p, p + 8, [](uint8_t b) { return b == 0; })) continue;  // never written
      BlockHeader tr;
      if (!DecodeBlockHeader(p, alignment_, &tr) || tr.fingerprint != config_.layout_fingerprint ||
          tr.payload_bytes != config_.block_bytes) {
        recovery_dropped_++;
        continue;
      }
      max_seq = std::max(max_seq, tr.sequence);
      auto [it, inserted] =
          newest.try_emplace(tr.key, tr.sequence, StoredBlock{first + i, tr.key, tr.parent});
      if (!inserted) {
        recovery_dropped_++;
        if (tr.sequence > it->second.first)
          it->second = {tr.sequence, {first + i, tr.key, tr.parent}};
      }
    }
  }
  for (auto& [key, v] : newest) recovered_.push_back(v.second);
  std::sort(recovered_.begin(), recovered_.end(),
            [](const StoredBlock& a, const StoredBlock& b) { return a.slot < b.slot; });
  sequence_ = max_seq + 1;
  return absl::OkStatus();
}

DiskJournalConfig DiskTier::JournalConfig() const {
  DiskJournalConfig c;
  c.directory = config_.directory;
  c.geometry = geometry();
  c.max_records = config_.journal_max_records;
  c.flush_interval = config_.journal_flush_interval;
  return c;
}

absl::Status DiskTier::StartJournal() {
  // A new epoch from what was recovered: its checkpoint is durable before the manifest goes.
  absl::StatusOr<std::unique_ptr<DiskJournal>> journal =
      DiskJournal::Start(JournalConfig(), recovered_, &sequence_);
  if (journal.ok()) {
    journal_ = std::move(*journal);
  } else if (journal.status().code() == absl::StatusCode::kFailedPrecondition) {
    return journal.status();  // a file not ours where the journal goes: named, as the others
  } else {
    // No room or an I/O error for the checkpoint: run without a journal, and leave none that
    // would describe an older state (the next start after a crash scans the trailers).
    DiskJournal::RemoveFiles(config_.directory);
    journal_start_errors_++;
  }
  // The manifest is trusted once: from now on the files change under it, and the journal records
  // how. (unlink: a directory of that name is not ours to remove.)
  unlink((config_.directory + "/manifest").c_str());
  return absl::OkStatus();
}

DiskGeometry DiskTier::geometry() const {
  return DiskGeometry{.layout_fingerprint = config_.layout_fingerprint,
                      .slot_bytes = slot_bytes_,
                      .slots = capacity_slots_,
                      .files = config_.files};
}

absl::Status DiskTier::LoadManifest(bool* found) {
  *found = false;
  // Anything wrong with the manifest (not a file of ours, too long for this geometry, torn,
  // foreign, or contradicting itself) makes it untrusted, counted once: the scan recovers instead.
  const std::string path = config_.directory + "/manifest";
  const uint64_t max_bytes = kManifestHead + uint64_t{capacity_slots_} * kManifestEntry +
                             kManifestTail;  // < 2^38: no overflow
  uint64_t size = 0;
  auto bytes = ReadOurs(path, max_bytes, &size);
  if (!bytes.ok()) {
    if (bytes.status().code() != absl::StatusCode::kNotFound) recovery_dropped_++;
    return absl::OkStatus();
  }
  recovery_bytes_read_ += size;
  absl::StatusOr<DiskManifest> manifest =
      DecodeDiskManifest(std::span<const uint8_t>((*bytes)->p, size), geometry());
  if (!manifest.ok()) {
    recovery_dropped_++;
    return absl::OkStatus();
  }
  recovered_ = std::move(manifest->blocks);
  sequence_ = manifest->max_sequence + 1;
  *found = true;
  return absl::OkStatus();
}

std::vector<uint8_t> EncodeDiskManifest(const DiskGeometry& geometry,
                                        std::span<const StoredBlock> blocks,
                                        uint64_t max_sequence) {
  std::vector<uint8_t> bytes(kManifestHead + blocks.size() * kManifestEntry + kManifestTail);
  LeWriter w{bytes.data()};
  w.Bytes(kManifestMagic, 8);
  w.U32(kVersion);
  w.U64(geometry.layout_fingerprint);
  w.U64(geometry.slot_bytes);
  w.U32(geometry.slots);
  w.U32(geometry.files);
  w.U64(blocks.size());
  w.U64(max_sequence);
  WriteStoredBlocks(w, blocks);
  w.U64(XXH3_64bits(bytes.data(), bytes.size() - kManifestTail));
  return bytes;
}

absl::StatusOr<DiskManifest> DecodeDiskManifest(std::span<const uint8_t> bytes,
                                                const DiskGeometry& geometry) {
  const uint8_t* p = bytes.data();
  const uint64_t size = bytes.size();
  if (size < kManifestHead + kManifestTail || std::memcmp(p, kManifestMagic, 8) != 0 ||
      XXH3_64bits(p, size - kManifestTail) != LeReader{p + size - kManifestTail}.U64()) {
    return absl::DataLossError(absl::StrCat("DecodeDiskManifest: torn or foreign (", size,
                                            " bytes, magic or checksum wrong)"));
  }
  LeReader r{p + 8};
  const uint32_t version = r.U32();
  const uint64_t fingerprint = r.U64(), slot_bytes = r.U64();
  const uint32_t slots = r.U32(), files = r.U32();
  const uint64_t count = r.U64(), max_seq = r.U64();
  // The entries the size leaves room for, compared without multiplying `count` (which can wrap).
  const uint64_t body = size - kManifestHead - kManifestTail;
  if (version != kVersion || fingerprint != geometry.layout_fingerprint ||
      slot_bytes != geometry.slot_bytes || slots != geometry.slots || files != geometry.files ||
      body % kManifestEntry != 0 || count != body / kManifestEntry || max_seq == UINT64_MAX) {
    return absl::DataLossError(absl::StrCat(
        "DecodeDiskManifest: v", version, " of ", count, " blocks in ", size,
        " bytes, for another version, geometry or size vs v", kVersion,
        " fingerprint=", geometry.layout_fingerprint, " slot_bytes=", geometry.slot_bytes,
        " slots=", geometry.slots, " files=", geometry.files));
  }
  // One block per slot, one slot per key, every slot in the tier: else nothing of it is used.
  DiskManifest manifest{.max_sequence = max_seq};
  KVTIER_RETURN_IF_ERROR(
      ReadStoredBlocks(r, count, geometry.slots, "DecodeDiskManifest", &manifest.blocks));
  return manifest;
}

void WriteStoredBlocks(LeWriter& w, std::span<const StoredBlock> blocks) {
  for (const StoredBlock& b : blocks) {
    w.U32(b.slot);
    w.U64(b.key.hi);
    w.U64(b.key.lo);
    w.U64(b.parent.hi);
    w.U64(b.parent.lo);
  }
}

absl::Status ReadStoredBlocks(LeReader& r, uint64_t count, uint32_t slots, const char* what,
                              std::vector<StoredBlock>* out) {
  out->reserve(count);
  std::vector<bool> slot_used(slots);
  absl::flat_hash_set<BlockKey> keys;
  keys.reserve(count);
  for (uint64_t i = 0; i < count; ++i) {
    StoredBlock b;
    b.slot = r.U32();
    b.key = {r.U64(), r.U64()};
    b.parent = {r.U64(), r.U64()};
    if (b.slot >= slots || slot_used[b.slot] || !keys.insert(b.key).second) {
      return absl::DataLossError(absl::StrCat(what, ": entry ", i, " (slot ", b.slot, ", key ",
                                              b.key.ToHex(),
                                              ") is past the tier or repeats a slot or a key"));
    }
    slot_used[b.slot] = true;
    out->push_back(b);
  }
  return absl::OkStatus();
}

absl::Status DiskTier::Close(std::span<const StoredBlock> live) {
  const std::vector<uint8_t> bytes = EncodeDiskManifest(geometry(), live, sequence_.load());
  // Atomically: data files durable, temp manifest durable, rename, directory durable.
  for (int fd : fds_) {
    if (fdatasync(fd) != 0) return Errno("DiskTier::Close: fdatasync");
  }
  KVTIER_RETURN_IF_ERROR(WriteOurFileAtomically(
      config_.directory + "/manifest",
      std::string_view(reinterpret_cast<const char*>(bytes.data()), bytes.size()),
      "DiskTier::Close"));
  // The manifest replaces the journal (a crash from here on finds the manifest first).
  if (journal_ != nullptr) journal_->Stop();
  DiskJournal::RemoveFiles(config_.directory);
  const int dfd = open(config_.directory.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (dfd >= 0) {
    fsync(dfd);
    close(dfd);
  }
  return absl::OkStatus();
}

namespace {

// Starts `op(blocks[i], done_i)` for each block (a per-block Read or Write); those that could not
// be started are returned, and their completion never runs.
template <typename Op>
StorageTier::NotStarted StartEach(const std::vector<StorageTier::Block>& blocks,
                                  StorageTier::Done done, Op op) {
  auto shared = std::make_shared<StorageTier::Done>(std::move(done));
  StorageTier::NotStarted not_started;
  for (size_t i = 0; i < blocks.size(); ++i) {
    absl::Status s = op(blocks[i], [shared, i](absl::Status st) { (*shared)(i, st); });
    if (!s.ok()) not_started.emplace_back(i, std::move(s));
  }
  return not_started;
}

}  // namespace

StorageTier::NotStarted DiskTier::ReadBlocks(std::vector<Block> blocks, Done done) {
  return StartEach(blocks, std::move(done), [this](const Block& b, auto cb) {
    return Read(b.slot, b.key, b.host, std::move(cb));
  });
}

StorageTier::NotStarted DiskTier::WriteBlocks(std::vector<Block> blocks, Done done) {
  if (journal_ != nullptr) {  // the batch's drops in one journal write (Write then finds none)
    std::vector<SlotId> slots;
    for (const Block& b : blocks) slots.push_back(b.slot);
    journal_->Overwriting(slots);
  }
  return StartEach(blocks, std::move(done), [this](const Block& b, auto cb) {
    return Write(b.slot, b.key, b.parent, b.host, std::move(cb));
  });
}

void DiskTier::FillStats(CacheStats* stats) const {
  const Stats d = this->stats();
  stats->disk_corrupt_reads = d.corrupt_reads;
  stats->disk_io_errors = d.io_errors;
  stats->disk_recovery_dropped = d.recovery_dropped;
  stats->disk_buffered_io = d.buffered_io;
  stats->disk.corrupt_reads = d.corrupt_reads;
  stats->disk.io_errors = d.io_errors;
  stats->disk.queue_depth = d.queue_depth;
  stats->disk_read_latency = d.read_latency;
  stats->disk_write_latency = d.write_latency;
}

DiskTier::Stats DiskTier::stats() const {
  const DiskJournal::Stats j = journal_ != nullptr ? journal_->stats() : DiskJournal::Stats{};
  return Stats{.reads = reads_.load(),
               .writes = writes_.load(),
               .corrupt_reads = corrupt_.load(),
               .io_errors = io_errors_.load(),
               .invalidations = invalidations_.load(),
               .recovered_blocks = recovered_blocks_,
               .recovery_dropped = recovery_dropped_,
               .buffered_io = buffered_,
               .from_manifest = from_manifest_,
               .from_journal = from_journal_,
               .recovery_trailer_reads = recovery_trailer_reads_,
               .recovery_bytes_read = recovery_bytes_read_,
               .journal_records_replayed = journal_replayed_,
               .journal_records = j.records,
               .journal_flushes = j.flushes,
               .journal_checkpoints = j.checkpoints,
               .journal_syncs = j.syncs,
               .journal_wakeups = j.wakeups,
               .journal_errors = j.errors + journal_start_errors_,
               .queue_depth = ring_->stats().outstanding,
               .read_latency = read_latency_.Snapshot(),
               .write_latency = write_latency_.Snapshot()};
}

}  // namespace kvtier::internal
