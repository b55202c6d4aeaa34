#include "lib/tiers/disk_tier.h"

#include <fcntl.h>
#include <sys/file.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/statvfs.h>
#include <unistd.h>
#include <xxhash.h>

#include <cerrno>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <future>
#include <sstream>

#include "absl/container/flat_hash_map.h"
#include "absl/strings/str_cat.h"
#include "lib/common/status_macros.h"
#include "lib/tiers/block_header.h"

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
  const int fd = open(probe.c_str(), O_RDWR | O_CREAT, 0600);
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
  t->padded_payload_ = RoundUp(config.block_bytes, t->alignment_);
  t->slot_bytes_ = t->padded_payload_ + t->alignment_;
  if (config.capacity_bytes < t->slot_bytes_ ||
      config.capacity_bytes / t->slot_bytes_ > UINT32_MAX) {
    return absl::InvalidArgumentError(absl::StrCat(
        "Options.disk.capacity_bytes: ", config.capacity_bytes, " vs one slot of ", t->slot_bytes_,
        " bytes (a ", config.block_bytes, "-byte block, aligned, with its trailer) to 2^32 slots"));
  }
  t->capacity_slots_ = static_cast<uint32_t>(config.capacity_bytes / t->slot_bytes_);

  // One cache per directory: an advisory lock held for the tier's life (released by the kernel if
  // the process dies, so a crash never leaves the directory locked).
  const std::string lock_path = dir + "/kvtier.lock";
  t->lock_fd_ = open(lock_path.c_str(), O_RDWR | O_CREAT | O_CLOEXEC, 0600);
  if (t->lock_fd_ < 0) return Errno(absl::StrCat("DiskTier: open ", lock_path));
  if (flock(t->lock_fd_, LOCK_EX | LOCK_NB) != 0) {
    return absl::FailedPreconditionError(
        absl::StrCat("Options.disk.directory: ", dir, " is in use by another kvtier cache"));
  }

  // Geometry and layout of what the directory holds.
  std::ostringstream meta;
  meta << "kvtier-disk v" << kVersion << " fingerprint=" << config.layout_fingerprint
       << " block_bytes=" << config.block_bytes << " slot_bytes=" << t->slot_bytes_
       << " slots=" << t->capacity_slots_ << " files=" << config.files << "\n";
  const std::string meta_path = dir + "/kvtier.meta";
  bool reset = false;
  if (fs::exists(meta_path, ec)) {
    std::ifstream in(meta_path);
    std::string old((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
    if (old != meta.str()) {
      if (!config.reset_on_mismatch) {
        return absl::FailedPreconditionError(absl::StrCat(
            "Options.disk.directory: ", dir, " holds blocks of another layout or geometry (",
            old.substr(0, old.size() - (old.empty() ? 0 : 1)), ") vs (",
            meta.str().substr(0, meta.str().size() - 1),
            "); set Options.disk.reset_on_mismatch to start empty"));
      }
      reset = true;
    }
  } else {
    reset = true;  // nothing (usable) there yet
  }
  if (reset) {
    fs::remove(dir + "/manifest", ec);
    for (uint32_t f = 0; f < config.files; ++f) fs::remove(absl::StrCat(dir, "/blocks.", f), ec);
  }

  const uint64_t slots_per_file = (t->capacity_slots_ + config.files - 1) / config.files;
  // Refuse a capacity the file system cannot hold before allocating any of it (fallocate would
  // fill the disk first and fail last).
  if (struct statvfs vfs{}; statvfs(dir.c_str(), &vfs) == 0) {
    uint64_t have = uint64_t{vfs.f_bavail} * vfs.f_frsize;
    for (uint32_t f = 0; f < config.files; ++f) {
      struct stat st {};
      if (stat(absl::StrCat(dir, "/blocks.", f).c_str(), &st) == 0) have += st.st_blocks * 512ull;
    }
    const uint64_t need = slots_per_file * t->slot_bytes_ * config.files;
    if (need > have) {
      return absl::ResourceExhaustedError(absl::StrCat("Options.disk.capacity_bytes: ", need,
                                                       " bytes needed in ", dir, " vs ", have,
                                                       " available"));
    }
  }
  for (uint32_t f = 0; f < config.files; ++f) {
    const std::string path = absl::StrCat(dir, "/blocks.", f);
    int fd = open(path.c_str(), O_RDWR | O_CREAT | O_DIRECT | O_CLOEXEC, 0600);
    if (fd < 0 && errno == EINVAL) {
      if (!config.allow_buffered) {
        return absl::FailedPreconditionError(absl::StrCat(
            "Options.disk.directory: the file system of ", dir,
            " does not support O_DIRECT (tmpfs?); use a disk, or set Options.disk.allow_buffered"));
      }
      fd = open(path.c_str(), O_RDWR | O_CREAT | O_CLOEXEC, 0600);
      t->buffered_ = true;
    }
    if (fd < 0) return Errno(absl::StrCat("DiskTier: open ", path));
    t->fds_.push_back(fd);
    if (int r = posix_fallocate(fd, 0, static_cast<off_t>(slots_per_file * t->slot_bytes_));
        r != 0) {
      if (r == ENOSPC) {
        return absl::ResourceExhaustedError(
            absl::StrCat("Options.disk.capacity_bytes: no room for ",
                         slots_per_file * t->slot_bytes_, " bytes in ", path));
      }
      return absl::ErrnoToStatus(r, absl::StrCat("DiskTier: fallocate ", path));
    }
  }
  if (reset) {
    std::ofstream out(meta_path, std::ios::trunc);
    out << meta.str();
    out.flush();
    if (!out) return absl::InternalError(absl::StrCat("DiskTier: cannot write ", meta_path));
  }
  KVTIER_ASSIGN_OR_RETURN(
      t->ring_, IoRing::Create({.queue_depth = config.queue_depth, .injector = config.injector},
                               t->fds_, host_memory));
  if (!reset) KVTIER_RETURN_IF_ERROR(t->Recover(&reset));
  return t;
}

DiskTier::~DiskTier() {
  ring_.reset();  // waits for in-flight I/O
  for (int fd : fds_) close(fd);
  if (lock_fd_ >= 0) close(lock_fd_);  // releases the lock
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
  auto* base = static_cast<uint8_t*>(host_slot);
  const BlockHeader tr{.key = key,
                       .parent = parent,
                       .fingerprint = config_.layout_fingerprint,
                       .payload_bytes = config_.block_bytes,
                       .payload_hash = PayloadHash(base, config_.block_bytes),
                       .sequence = sequence_.fetch_add(1)};
  std::memset(base + config_.block_bytes, 0, padded_payload_ - config_.block_bytes);
  EncodeBlockHeader(tr, alignment_, base + padded_payload_);
  writes_++;
  const uint64_t start = MonotonicNanos();
  return ring_->Submit(
      {RequestFor(IoOp::kWrite, slot, host_slot, static_cast<uint32_t>(slot_bytes_), false)},
      [this, start, done = std::move(done)](absl::Status s) {
        write_latency_.RecordSince(start);
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
  if (!found) KVTIER_RETURN_IF_ERROR(ScanTrailers());
  // The manifest is trusted once: from now on the files change under it.
  std::error_code ec;
  std::filesystem::remove(config_.directory + "/manifest", ec);
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

absl::Status DiskTier::LoadManifest(bool* found) {
  *found = false;
  const std::string path = config_.directory + "/manifest";
  std::ifstream in(path, std::ios::binary);
  if (!in) return absl::OkStatus();
  std::vector<uint8_t> bytes((std::istreambuf_iterator<char>(in)),
                             std::istreambuf_iterator<char>());
  constexpr size_t kHead = 8 + 4 + 8 + 8 + 4 + 4 + 8 + 8, kEntry = 4 + 32;
  if (bytes.size() < kHead + 8 || std::memcmp(bytes.data(), kManifestMagic, 8) != 0 ||
      XXH3_64bits(bytes.data(), bytes.size() - 8) !=
          LeReader{bytes.data() + bytes.size() - 8}.U64()) {
    recovery_dropped_++;  // a torn or foreign manifest: fall back to the scan
    return absl::OkStatus();
  }
  LeReader r{bytes.data() + 8};
  const uint32_t version = r.U32();
  const uint64_t fingerprint = r.U64(), slot_bytes = r.U64();
  const uint32_t slots = r.U32(), files = r.U32();
  const uint64_t count = r.U64(), max_seq = r.U64();
  if (version != kVersion || fingerprint != config_.layout_fingerprint ||
      slot_bytes != slot_bytes_ || slots != capacity_slots_ || files != config_.files ||
      bytes.size() != kHead + count * kEntry + 8) {
    recovery_dropped_++;
    return absl::OkStatus();
  }
  for (uint64_t i = 0; i < count; ++i) {
    StoredBlock b;
    b.slot = r.U32();
    b.key = {r.U64(), r.U64()};
    b.parent = {r.U64(), r.U64()};
    if (b.slot >= capacity_slots_) return absl::OkStatus();
    recovered_.push_back(b);
  }
  sequence_ = max_seq + 1;
  *found = true;
  return absl::OkStatus();
}

absl::Status DiskTier::Close(std::span<const StoredBlock> live) {
  std::vector<uint8_t> bytes(8 + 4 + 8 + 8 + 4 + 4 + 8 + 8 + live.size() * 36 + 8);
  LeWriter w{bytes.data()};
  w.Bytes(kManifestMagic, 8);
  w.U32(kVersion);
  w.U64(config_.layout_fingerprint);
  w.U64(slot_bytes_);
  w.U32(capacity_slots_);
  w.U32(config_.files);
  w.U64(live.size());
  w.U64(sequence_.load());
  for (const StoredBlock& b : live) {
    w.U32(b.slot);
    w.U64(b.key.hi);
    w.U64(b.key.lo);
    w.U64(b.parent.hi);
    w.U64(b.parent.lo);
  }
  w.U64(XXH3_64bits(bytes.data(), bytes.size() - 8));
  // Atomically: data files durable, temp manifest durable, rename, directory durable.
  for (int fd : fds_) {
    if (fdatasync(fd) != 0) return Errno("DiskTier::Close: fdatasync");
  }
  const std::string tmp = config_.directory + "/manifest.tmp";
  const int fd = open(tmp.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
  if (fd < 0) return Errno(absl::StrCat("DiskTier::Close: open ", tmp));
  const bool wrote =
      write(fd, bytes.data(), bytes.size()) == static_cast<ssize_t>(bytes.size()) && fsync(fd) == 0;
  close(fd);
  if (!wrote) return Errno(absl::StrCat("DiskTier::Close: write ", tmp));
  if (rename(tmp.c_str(), (config_.directory + "/manifest").c_str()) != 0) {
    return Errno("DiskTier::Close: rename manifest");
  }
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
  return Stats{.reads = reads_.load(),
               .writes = writes_.load(),
               .corrupt_reads = corrupt_.load(),
               .io_errors = io_errors_.load(),
               .recovered_blocks = recovered_blocks_,
               .recovery_dropped = recovery_dropped_,
               .buffered_io = buffered_,
               .from_manifest = from_manifest_,
               .queue_depth = ring_->stats().outstanding,
               .read_latency = read_latency_.Snapshot(),
               .write_latency = write_latency_.Snapshot()};
}

}  // namespace kvtier::internal
