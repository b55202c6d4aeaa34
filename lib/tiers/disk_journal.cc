#include "lib/tiers/disk_journal.h"

#include <fcntl.h>
#include <sys/random.h>
#include <sys/stat.h>
#include <unistd.h>
#include <xxhash.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <optional>

#include "absl/container/flat_hash_map.h"
#include "absl/strings/str_cat.h"
#include "lib/common/status_macros.h"
#include "lib/tiers/block_header.h"

namespace kvtier::internal {
namespace {

constexpr char kCheckpointMagic[8] = {'K', 'V', 'T', 'I', 'E', 'R', 'C', '1'};
constexpr uint32_t kVersion = kBlockHeaderVersion;
constexpr uint64_t kHead = 8 + 4 + 8 + 8 + 4 + 4 + 8 + 8 + 8 + 8, kEntry = kStoredBlockEntryBytes,
                   kTail = 8;
constexpr uint64_t kFlushBytes = 64 * 1024;  // pending records that wake the flusher at once
constexpr uint64_t kReadChunk = 1 << 20;

std::string CheckpointPath(const std::string& dir) { return dir + "/checkpoint"; }
std::string JournalPath(const std::string& dir, uint64_t generation) {
  return absl::StrCat(dir, "/journal.", generation % 2);
}

// Opens `path` without following a link, and only if it is a regular file of this user with one
// name (as the tier's other files). kNotFound when absent.
absl::StatusOr<int> OpenOurs(const std::string& path, int flags) {
  const int fd = open(path.c_str(), flags | O_NOFOLLOW | O_CLOEXEC | O_NONBLOCK, 0600);
  if (fd < 0) {
    if (errno == ENOENT) return absl::NotFoundError(path);
    return absl::FailedPreconditionError(absl::StrCat("Options.disk.directory: ", path,
                                                      " cannot be opened as a file of this cache (",
                                                      std::strerror(errno), ")"));
  }
  struct stat st {};
  if (fstat(fd, &st) != 0 || !S_ISREG(st.st_mode) || st.st_uid != geteuid() || st.st_nlink != 1 ||
      fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) & ~O_NONBLOCK) != 0) {
    close(fd);
    return absl::FailedPreconditionError(absl::StrCat(
        "Options.disk.directory: ", path, " is not a file of this cache (vs a regular file of uid ",
        geteuid(), " with one link)"));
  }
  return fd;
}

// pread of up to `n` bytes at `offset`, retried on EINTR and short reads: the bytes read (fewer
// at the end of the file), or -1.
int64_t ReadAt(int fd, uint8_t* p, uint64_t n, uint64_t offset) {
  uint64_t got = 0;
  while (got < n) {
    const ssize_t r = pread(fd, p + got, n - got, static_cast<off_t>(offset + got));
    if (r < 0 && errno == EINTR) continue;
    if (r < 0) return -1;
    if (r == 0) break;
    got += static_cast<uint64_t>(r);
  }
  return static_cast<int64_t>(got);
}

bool WriteAt(int fd, const uint8_t* p, uint64_t n, uint64_t offset) {
  uint64_t done = 0;
  while (done < n) {
    const ssize_t r = pwrite(fd, p + done, n - done, static_cast<off_t>(offset + done));
    if (r < 0 && errno == EINTR) continue;
    if (r <= 0) return false;
    done += static_cast<uint64_t>(r);
  }
  return true;
}

uint64_t RandomEpoch() {
  uint64_t e = 0;
  if (getrandom(&e, sizeof(e), 0) != sizeof(e) || e == 0) {
    e = XXH3_64bits_withSeed(
        &e, sizeof(e), static_cast<uint64_t>(getpid()) ^ static_cast<uint64_t>(time(nullptr)));
  }
  return e;
}

// The replayed state: per slot its block, and per key its slot (so a key written again elsewhere
// leaves its older slot, as the trailer scan keeps the newest).
struct ReplayState {
  explicit ReplayState(uint32_t slots) : table(slots) {}
  struct Entry {
    BlockKey key, parent;
    bool live = false;
  };
  void Put(SlotId slot, const BlockKey& key, const BlockKey& parent) {
    Drop(slot);
    if (auto it = slot_of.find(key); it != slot_of.end()) table[it->second].live = false;
    table[slot] = {key, parent, true};
    slot_of[key] = slot;
  }
  void Drop(SlotId slot) {
    if (!table[slot].live) return;
    if (auto it = slot_of.find(table[slot].key); it != slot_of.end() && it->second == slot) {
      slot_of.erase(it);
    }
    table[slot].live = false;
  }
  std::vector<Entry> table;
  absl::flat_hash_map<BlockKey, SlotId> slot_of;
};

}  // namespace

uint64_t JournalSeed(uint64_t epoch, uint64_t generation, uint64_t fingerprint) {
  const uint64_t words[3] = {epoch, generation, fingerprint};
  return XXH3_64bits(words, sizeof(words));
}

void EncodeJournalRecord(const JournalRecord& r, uint64_t seed, uint64_t index, uint8_t* out) {
  LeWriter w{out};
  w.U32(static_cast<uint32_t>(r.op));  // op, then three zero bytes
  w.U32(r.slot);
  w.U64(r.key.hi);
  w.U64(r.key.lo);
  w.U64(r.parent.hi);
  w.U64(r.parent.lo);
  w.U64(r.sequence);
  w.U64(index);
  w.U64(XXH3_64bits_withSeed(out, kJournalRecordBytes - 8, seed));
}

bool DecodeJournalRecord(const uint8_t* in, uint64_t seed, uint64_t index, JournalRecord* r) {
  if (XXH3_64bits_withSeed(in, kJournalRecordBytes - 8, seed) !=
      LeReader{in + kJournalRecordBytes - 8}.U64()) {
    return false;
  }
  LeReader rd{in};
  const uint32_t op = rd.U32();
  if (op != static_cast<uint32_t>(JournalOp::kPut) &&
      op != static_cast<uint32_t>(JournalOp::kDrop)) {
    return false;
  }
  r->op = static_cast<JournalOp>(op);
  r->slot = rd.U32();
  r->key = {rd.U64(), rd.U64()};
  r->parent = {rd.U64(), rd.U64()};
  r->sequence = rd.U64();
  return rd.U64() == index;
}

std::vector<uint8_t> EncodeDiskCheckpoint(const DiskGeometry& geometry, uint64_t epoch,
                                          uint64_t generation, std::span<const StoredBlock> blocks,
                                          uint64_t max_sequence) {
  std::vector<uint8_t> bytes(kHead + blocks.size() * kEntry + kTail);
  LeWriter w{bytes.data()};
  w.Bytes(kCheckpointMagic, 8);
  w.U32(kVersion);
  w.U64(geometry.layout_fingerprint);
  w.U64(geometry.slot_bytes);
  w.U32(geometry.slots);
  w.U32(geometry.files);
  w.U64(epoch);
  w.U64(generation);
  w.U64(blocks.size());
  w.U64(max_sequence);
  WriteStoredBlocks(w, blocks);
  w.U64(XXH3_64bits(bytes.data(), bytes.size() - kTail));
  return bytes;
}

absl::StatusOr<DiskCheckpoint> DecodeDiskCheckpoint(std::span<const uint8_t> bytes,
                                                    const DiskGeometry& geometry) {
  const uint8_t* p = bytes.data();
  const uint64_t size = bytes.size();
  if (size < kHead + kTail || std::memcmp(p, kCheckpointMagic, 8) != 0 ||
      XXH3_64bits(p, size - kTail) != LeReader{p + size - kTail}.U64()) {
    return absl::DataLossError(absl::StrCat("DecodeDiskCheckpoint: torn or foreign (", size,
                                            " bytes, magic or checksum wrong)"));
  }
  LeReader r{p + 8};
  const uint32_t version = r.U32();
  const uint64_t fingerprint = r.U64(), slot_bytes = r.U64();
  const uint32_t slots = r.U32(), files = r.U32();
  DiskCheckpoint c;
  c.epoch = r.U64();
  c.generation = r.U64();
  const uint64_t count = r.U64();
  c.max_sequence = r.U64();
  const uint64_t body = size - kHead - kTail;
  if (version != kVersion || fingerprint != geometry.layout_fingerprint ||
      slot_bytes != geometry.slot_bytes || slots != geometry.slots || files != geometry.files ||
      body % kEntry != 0 || count != body / kEntry || c.max_sequence == UINT64_MAX) {
    return absl::DataLossError(absl::StrCat(
        "DecodeDiskCheckpoint: v", version, " of ", count, " blocks in ", size,
        " bytes, for another version, geometry or size vs v", kVersion,
        " fingerprint=", geometry.layout_fingerprint, " slot_bytes=", geometry.slot_bytes,
        " slots=", geometry.slots, " files=", geometry.files));
  }
  KVTIER_RETURN_IF_ERROR(
      ReadStoredBlocks(r, count, geometry.slots, "DecodeDiskCheckpoint", &c.blocks));
  return c;
}

DiskJournal::Loaded DiskJournal::Load(const DiskJournalConfig& config) {
  Loaded out;
  const DiskGeometry& g = config.geometry;
  // The checkpoint: no longer than this geometry allows, read whole.
  auto fd = OpenOurs(CheckpointPath(config.directory), O_RDONLY);
  if (!fd.ok()) {
    if (fd.status().code() != absl::StatusCode::kNotFound) out.dropped++;
    return out;
  }
  struct stat st {};
  const uint64_t max_bytes = kHead + uint64_t{g.slots} * kEntry + kTail;
  std::vector<uint8_t> bytes;
  int64_t got = -1;
  if (fstat(*fd, &st) == 0 && static_cast<uint64_t>(st.st_size) <= max_bytes) {
    bytes.resize(static_cast<uint64_t>(st.st_size));
    got = ReadAt(*fd, bytes.data(), bytes.size(), 0);
  }
  close(*fd);
  if (got < 0 || static_cast<uint64_t>(got) != bytes.size()) {
    out.dropped++;
    return out;
  }
  out.bytes_read += bytes.size();
  absl::StatusOr<DiskCheckpoint> c = DecodeDiskCheckpoint(bytes, g);
  if (!c.ok()) {
    out.dropped++;
    return out;
  }
  bytes = {};
  ReplayState state(g.slots);
  state.slot_of.reserve(c->blocks.size());
  for (const StoredBlock& b : c->blocks) state.Put(b.slot, b.key, b.parent);
  uint64_t max_seq = c->max_sequence;
  // Generation G, then G + 1 (begun before a crash cut the writing of checkpoint G + 1 short).
  std::vector<uint8_t> chunk(kReadChunk);
  for (uint64_t gen = c->generation; gen <= c->generation + 1; ++gen) {
    auto jfd = OpenOurs(JournalPath(config.directory, gen), O_RDONLY);
    if (!jfd.ok()) break;
    const uint64_t seed = JournalSeed(c->epoch, gen, g.layout_fingerprint);
    uint64_t index = 0;
    bool more = true, whole = true;  // whole: every byte of the file was a valid record
    for (uint64_t offset = 0; more;) {
      const int64_t n = ReadAt(*jfd, chunk.data(), chunk.size(), offset);
      if (n < 0) whole = false;
      if (n <= 0) break;
      out.bytes_read += static_cast<uint64_t>(n);
      offset += static_cast<uint64_t>(n);
      more = static_cast<uint64_t>(n) == chunk.size();
      if (static_cast<uint64_t>(n) % kJournalRecordBytes != 0) whole = false;
      for (uint64_t at = 0; at + kJournalRecordBytes <= static_cast<uint64_t>(n);
           at += kJournalRecordBytes) {
        JournalRecord r;
        if (!DecodeJournalRecord(chunk.data() + at, seed, index, &r) || r.slot >= g.slots) {
          more = whole = false;  // the end: torn, foreign, or of an older generation
          break;
        }
        index++;
        if (r.op == JournalOp::kPut) {
          state.Put(r.slot, r.key, r.parent);
          max_seq = std::max(max_seq, r.sequence);
        } else {
          state.Drop(r.slot);
        }
      }
    }
    close(*jfd);
    out.records += index;
    // G + 1 follows G only where G is whole (its file holds nothing else, truncated when G
    // began): after a gap in G (a power loss), G + 1's records would skip G's lost ones.
    if (!whole) break;
  }
  for (SlotId s = 0; s < g.slots; ++s) {
    const ReplayState::Entry& e = state.table[s];
    if (e.live) out.blocks.push_back({s, e.key, e.parent});
  }
  out.max_sequence = std::min<uint64_t>(max_seq, UINT64_MAX - 1);
  out.found = true;
  return out;
}

absl::StatusOr<std::unique_ptr<DiskJournal>> DiskJournal::Start(
    const DiskJournalConfig& config, std::span<const StoredBlock> blocks,
    const std::atomic<uint64_t>* sequence) {
  std::unique_ptr<DiskJournal> j(new DiskJournal());
  j->config_ = config;
  j->max_records_ = config.max_records != 0 ? config.max_records
                                            : std::max<uint64_t>(16384, config.geometry.slots / 2);
  j->epoch_ = RandomEpoch();
  j->sequence_ = sequence;
  j->table_.resize(config.geometry.slots);
  for (const StoredBlock& b : blocks) j->table_[b.slot] = {b.key, b.parent, 1};
  // The checkpoint of the new epoch first: until its rename the previous state stays whole.
  KVTIER_RETURN_IF_ERROR(j->WriteCheckpoint(0, j->table_, /*sync=*/true));
  for (uint64_t gen : {0, 1}) {
    KVTIER_ASSIGN_OR_RETURN(j->fds_[gen],
                            OpenOurs(JournalPath(config.directory, gen), O_RDWR | O_CREAT));
    if (ftruncate(j->fds_[gen], 0) != 0) {
      return absl::ErrnoToStatus(
          errno, absl::StrCat("DiskJournal: truncate ", JournalPath(config.directory, gen)));
    }
  }
  j->flusher_ = std::thread([p = j.get()] { p->FlusherLoop(); });
  return j;
}

DiskJournal::~DiskJournal() {
  Stop();
  for (int fd : fds_) {
    if (fd >= 0) close(fd);
  }
}

void DiskJournal::Stop() {
  {
    std::lock_guard<std::mutex> l(mu_);
    if (!stopped_) FlushLocked();
    stopped_ = true;
  }
  cv_.notify_all();
  if (flusher_.joinable()) flusher_.join();
}

void DiskJournal::RemoveFiles(const std::string& directory) {
  for (const std::string& path : {CheckpointPath(directory), CheckpointPath(directory) + ".tmp",
                                  JournalPath(directory, 0), JournalPath(directory, 1)}) {
    unlink(path.c_str());  // a directory of that name is not ours to remove
  }
}

void DiskJournal::AppendLocked(const JournalRecord& r) {
  const size_t at = pending_.size();
  pending_.resize(at + kJournalRecordBytes);
  EncodeJournalRecord(r, JournalSeed(epoch_, generation_, config_.geometry.layout_fingerprint),
                      index_++, pending_.data() + at);
  stats_.records++;
}

void DiskJournal::FlushLocked() {
  if (pending_.empty() || failed_ || stopped_) return;
  if (!WriteAt(fds_[generation_ % 2], pending_.data(), pending_.size(), offset_)) {
    FailLocked();
    return;
  }
  offset_ += pending_.size();
  pending_.clear();
  stats_.flushes++;
}

void DiskJournal::FailLocked() {
  // Without its records the checkpoint would replay blocks since overwritten: remove it, so the
  // next start scans the trailers.
  failed_ = true;
  pending_.clear();
  stats_.errors++;
  unlink(CheckpointPath(config_.directory).c_str());
}

void DiskJournal::Overwriting(std::span<const SlotId> slots) {
  std::lock_guard<std::mutex> l(mu_);
  if (failed_ || stopped_) return;
  bool any = false;
  for (SlotId s : slots) {
    if (s >= table_.size() || table_[s].sequence == 0) continue;
    table_[s] = {};
    AppendLocked({.op = JournalOp::kDrop, .slot = s});
    any = true;
  }
  if (!any) return;
  FlushLocked();
  if (WakeDueLocked()) cv_.notify_all();  // a compaction, due after these drops
}

void DiskJournal::Wrote(SlotId slot, const BlockKey& key, const BlockKey& parent,
                        uint64_t sequence) {
  bool wake = false;
  {
    std::lock_guard<std::mutex> l(mu_);
    if (failed_ || stopped_ || slot >= table_.size()) return;
    table_[slot] = {key, parent, std::max<uint64_t>(sequence, 1)};
    AppendLocked(
        {.op = JournalOp::kPut, .slot = slot, .key = key, .parent = parent, .sequence = sequence});
    wake = WakeDueLocked();
  }
  if (wake) cv_.notify_all();
}

bool DiskJournal::WakeDueLocked() {
  // The flusher needs a wake-up where it sleeps untimed and now has work (else its timed wait
  // ends by itself), and once where enough became pending or a compaction became due.
  const bool due = pending_.size() >= kFlushBytes || index_ >= max_records_;
  const bool idle_with_work = flusher_idle_ && (due || !pending_.empty());
  if (!idle_with_work && !(due && !signalled_)) return false;
  flusher_idle_ = false;
  signalled_ = signalled_ || due;
  stats_.wakeups++;
  return true;
}

void DiskJournal::Flush() {
  std::lock_guard<std::mutex> l(mu_);
  FlushLocked();
}

void DiskJournal::FlusherLoop() {
  std::unique_lock<std::mutex> l(mu_);
  while (!stopped_) {
    // Idle until a waker clears flusher_idle_ (one wake-up, not one per record). Once woken it
    // waits out an interval below, even where a drop's flush took the work meanwhile: so at most
    // one wake-up per interval.
    if (pending_.empty() && index_ < max_records_) {
      flusher_idle_ = true;
      while (flusher_idle_ && !stopped_) cv_.wait(l);
    }
    flusher_idle_ = false;
    // Awake, under the lock: whatever became due so far is seen by the wait below; what becomes
    // due later signals again.
    signalled_ = false;
    if (stopped_) break;
    // Batch: the interval, unless enough is pending or a compaction is due.
    cv_.wait_for(l, config_.flush_interval, [&] {
      return stopped_ || pending_.size() >= kFlushBytes || index_ >= max_records_;
    });
    signalled_ = false;
    if (stopped_) break;
    FlushLocked();
    if (failed_ || index_ < max_records_) continue;
    // Compaction: generation G is whole in its file; G + 1 starts in the other one (its old
    // content, generation G - 1, is covered by checkpoint G), then checkpoint G + 1 replaces G.
    const uint64_t next = generation_ + 1;
    if (ftruncate(fds_[next % 2], 0) != 0) {
      FailLocked();
      continue;
    }
    generation_ = next;
    index_ = 0;
    offset_ = 0;
    std::vector<Slot> snapshot = table_;  // O(slots) copy under the lock; the write is not
    l.unlock();
    const absl::Status s = WriteCheckpoint(next, std::move(snapshot), /*sync=*/false);
    l.lock();
    if (!s.ok()) {
      FailLocked();
    } else {
      stats_.checkpoints++;
    }
  }
}

absl::Status DiskJournal::WriteCheckpoint(uint64_t generation, std::vector<Slot> table, bool sync) {
  // One slot per key: the newest write of a key (as the trailer scan keeps).
  absl::flat_hash_map<BlockKey, SlotId> newest;
  newest.reserve(table.size() / 2);
  for (SlotId s = 0; s < table.size(); ++s) {
    if (table[s].sequence == 0) continue;
    auto [it, inserted] = newest.try_emplace(table[s].key, s);
    if (!inserted && table[it->second].sequence < table[s].sequence) it->second = s;
  }
  std::vector<StoredBlock> blocks;
  blocks.reserve(newest.size());
  for (SlotId s = 0; s < table.size(); ++s) {
    if (table[s].sequence == 0) continue;
    if (auto it = newest.find(table[s].key); it->second == s) {
      blocks.push_back({s, table[s].key, table[s].parent});
    }
  }
  table = {};
  const uint64_t max_seq = std::min<uint64_t>(sequence_->load(), UINT64_MAX - 1);
  const std::vector<uint8_t> bytes =
      EncodeDiskCheckpoint(config_.geometry, epoch_, generation, blocks, max_seq);
  const std::string path = CheckpointPath(config_.directory), tmp = path + ".tmp";
  unlink(tmp.c_str());  // a leftover of a crash (a link is removed, not followed)
  const int fd = open(tmp.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, 0600);
  if (fd < 0) return absl::ErrnoToStatus(errno, absl::StrCat("DiskJournal: create ", tmp));
  const bool wrote = WriteAt(fd, bytes.data(), bytes.size(), 0) && (!sync || fsync(fd) == 0);
  const int write_errno = errno;
  close(fd);
  if (!wrote || rename(tmp.c_str(), path.c_str()) != 0) {
    const int e = wrote ? errno : write_errno;
    unlink(tmp.c_str());
    return absl::ErrnoToStatus(e, absl::StrCat("DiskJournal: write ", path));
  }
  if (!sync) return absl::OkStatus();
  if (const int dfd = open(config_.directory.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
      dfd >= 0) {
    fsync(dfd);
    close(dfd);
  }
  std::lock_guard<std::mutex> l(mu_);
  stats_.syncs++;
  return absl::OkStatus();
}

DiskJournal::Stats DiskJournal::stats() const {
  std::lock_guard<std::mutex> l(mu_);
  return stats_;
}

}  // namespace kvtier::internal
