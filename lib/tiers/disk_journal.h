// DiskJournal: the disk tier's record of which slot holds which block, kept so that a restart
// after a crash reads O(checkpoint + journal tail) bytes instead of every slot's trailer.
//
// State. The journal mirrors, per slot, the block the tier last wrote there (key, parent, write
// sequence), or nothing. A restart publishes exactly that state, as of the last journal flush.
//
// Files (in the tier's directory, each a regular file of ours opened without following links):
//   checkpoint   the whole state at the start of generation G of epoch E, written atomically
//                (temporary file, fsync, rename, directory fsync):
//                magic "KVTIERC1" | version u32 | layout fingerprint u64 | slot bytes u64 |
//                slots u32 | files u32 | epoch u64 | generation u64 | count u64 | max sequence
//                u64 | `count` entries (slot u32, key (hi, lo), parent (hi, lo)) | XXH3-64 of
//                everything before it                                   (all little-endian)
//   journal.0/1  the records of generation G in journal.<G % 2>, appended in order from offset 0;
//                64 bytes each: op u8 (1 put, 2 drop) | 3 zero bytes | slot u32 | key (hi, lo) |
//                parent (hi, lo) | sequence u64 | index u64 (0, 1, ... within the generation) |
//                XXH3-64 of the 56 bytes before it, seeded by (epoch, generation, fingerprint).
// A record is valid only at its own index, in its own epoch and generation: a torn or foreign
// record, a leftover of an older generation or epoch, or a gap ends the replay there (what comes
// before it is used). Replay: the checkpoint, then journal G, then journal G + 1 (records written
// while checkpoint G + 1 was being written, if a crash came before its rename).
//
// Ordering (why nothing published is stale after a process crash):
// - put(slot, key): appended when the block's write has completed, so it never precedes its data.
// - drop(slot): appended, and flushed (written to the file) BEFORE a write or an invalidation of a
//   slot that holds a block is submitted (Overwriting), so a slot whose old block may be gone
//   never replays as holding it. One flush per batch; a slot holding nothing costs nothing.
// - Compaction: when a generation has max_records records, its records are flushed, generation
//   G + 1 starts in the other file (truncated first), and a checkpoint of the state at that
//   point is written and renamed in; the file of G is reused only after that rename.
// - A new epoch (fresh random number) starts at every Open: checkpoint first (rename), then the
//   journal files are truncated; so records of a previous run never replay on the new state.
//
// Durability. Records are written to the page cache (pwrite, no fsync): every put appended before
// the last flush survives a process crash (kill -9); puts are flushed within flush_interval, or
// once 64 KiB are pending. A new epoch's checkpoint (at Start) is fsynced, with the directory; a
// compaction's is not: an fsync flushes the device's write cache, which under full write load
// took ~0.5 s and cut the tier's own writes by half or more (docs/benchmarks.md, "Disk tier vs
// fio"), once every max_records records. A power loss keeps whatever checkpoint and journal pages
// the kernel had written back, each checked (a torn or missing checkpoint: the trailer scan); what
// a restart publishes is then still verified on every read (trailer key and payload XXH3), so it
// is at worst a miss.
//
// Thread safety: every method from any thread; the flusher thread is the journal's own.
// Errors: a failed journal write or checkpoint disables the journal and removes the checkpoint
// (best effort), so the next restart scans every trailer as before; counted in stats().errors.
#ifndef KVTIER_LIB_TIERS_DISK_JOURNAL_H_
#define KVTIER_LIB_TIERS_DISK_JOURNAL_H_

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <memory>
#include <mutex>
#include <span>
#include <string>
#include <thread>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "kvtier/block_key.h"
#include "lib/tiers/disk_tier.h"

namespace kvtier::internal {

inline constexpr uint64_t kJournalRecordBytes = 64;

enum class JournalOp : uint8_t { kPut = 1, kDrop = 2 };

struct JournalRecord {
  JournalOp op = JournalOp::kPut;
  SlotId slot = 0;
  BlockKey key, parent;   // put only (zero for a drop)
  uint64_t sequence = 0;  // put: the block's write sequence
};

// The seed of the records of `generation` of `epoch` for a tier of `fingerprint`.
uint64_t JournalSeed(uint64_t epoch, uint64_t generation, uint64_t fingerprint);
// Writes kJournalRecordBytes bytes at `out`.
void EncodeJournalRecord(const JournalRecord& r, uint64_t seed, uint64_t index, uint8_t* out);
// Whether the kJournalRecordBytes bytes at `in` are record `index` of the generation of `seed`,
// intact and of a known op; fills `r` if so.
bool DecodeJournalRecord(const uint8_t* in, uint64_t seed, uint64_t index, JournalRecord* r);

struct DiskCheckpoint {
  uint64_t epoch = 0, generation = 0, max_sequence = 0;
  std::vector<StoredBlock> blocks;
};
std::vector<uint8_t> EncodeDiskCheckpoint(const DiskGeometry& geometry, uint64_t epoch,
                                          uint64_t generation, std::span<const StoredBlock> blocks,
                                          uint64_t max_sequence);
// As DecodeDiskManifest, for a checkpoint: kDataLoss when torn, foreign, of another geometry or
// contradicting itself (a slot past the tier, a slot twice, a key twice). O(bytes).
absl::StatusOr<DiskCheckpoint> DecodeDiskCheckpoint(std::span<const uint8_t> bytes,
                                                    const DiskGeometry& geometry);

struct DiskJournalConfig {
  std::string directory;
  DiskGeometry geometry;
  // Records of one generation before a compaction into a new checkpoint; 0: max(16384, slots / 2)
  // (so a journal file holds at most ~32 bytes per slot, and a compaction's O(slots) write is
  // amortised over slots / 4 block writes).
  uint64_t max_records = 0;
  std::chrono::microseconds flush_interval{10000};  // a put is flushed at most this late
};

class DiskJournal {
 public:
  // What Load found: the state of the last checkpoint with its journals replayed.
  struct Loaded {
    bool found = false;               // a checkpoint decoded (else: none, or counted in `dropped`)
    std::vector<StoredBlock> blocks;  // by slot, one slot per key
    uint64_t max_sequence = 0;
    uint64_t records = 0;     // journal records replayed
    uint64_t bytes_read = 0;  // of the checkpoint and journal files
    uint64_t dropped = 0;     // a checkpoint not of ours, torn or foreign
  };
  // Reads the checkpoint and replays its journals. Never fails: what cannot be used is not found.
  // O(checkpoint + journal) bytes read, O(slots) memory.
  static Loaded Load(const DiskJournalConfig& config);

  // Starts a new epoch whose state is `blocks` (one slot per key, slots in the tier): writes its
  // checkpoint, empties the journal files, starts the flusher thread. O(blocks).
  static absl::StatusOr<std::unique_ptr<DiskJournal>> Start(const DiskJournalConfig& config,
                                                            std::span<const StoredBlock> blocks,
                                                            const std::atomic<uint64_t>* sequence);
  // Flushes what is pending and stops the flusher.
  ~DiskJournal();
  DiskJournal(const DiskJournal&) = delete;
  DiskJournal& operator=(const DiskJournal&) = delete;

  // Before writes or invalidations of `slots` are submitted: each slot that holds a block is
  // dropped, and the drops are flushed before this returns (one pwrite for all). O(slots).
  void Overwriting(std::span<const SlotId> slots);
  // After a write of `key` into `slot` completed: recorded, flushed within flush_interval.
  void Wrote(SlotId slot, const BlockKey& key, const BlockKey& parent, uint64_t sequence);
  // Writes every pending record to the journal file (no fsync).
  void Flush();
  // Stops recording (flushes first): what the files say stays as it is. Idempotent.
  void Stop();
  // Removes the checkpoint and journal files of `directory` (a clean close replaced them, or a
  // reset). Best effort.
  static void RemoveFiles(const std::string& directory);

  struct Stats {
    uint64_t records = 0, flushes = 0, checkpoints = 0, errors = 0;
    uint64_t syncs = 0;    // checkpoints fsynced (a new epoch's; a compaction's is not)
    uint64_t wakeups = 0;  // of the flusher: from idle (at most one per flush interval), and
                           // once per compaction or full buffer that became due
  };
  Stats stats() const;

 private:
  struct Slot {
    BlockKey key, parent;
    uint64_t sequence = 0;  // 0: the slot holds nothing
  };
  DiskJournal() = default;
  void AppendLocked(const JournalRecord& r);
  void FlushLocked();
  void FailLocked();
  // Whether the flusher must be notified now (counted in stats_.wakeups); then it is deemed awake.
  bool WakeDueLocked();
  void FlusherLoop();
  // `sync`: fsync the checkpoint and the directory (a new epoch's, at Start). A compaction's is
  // not synced: see Durability above.
  absl::Status WriteCheckpoint(uint64_t generation, std::vector<Slot> table, bool sync);

  DiskJournalConfig config_;
  uint64_t max_records_ = 0;
  uint64_t epoch_ = 0;
  const std::atomic<uint64_t>* sequence_ = nullptr;
  int fds_[2] = {-1, -1};  // journal.0, journal.1

  mutable std::mutex mu_;  // guards everything below; held across the journal's pwrite
  std::condition_variable cv_;
  std::vector<Slot> table_;
  std::vector<uint8_t> pending_;  // encoded records not yet written
  uint64_t generation_ = 0;
  uint64_t index_ = 0;   // of the next record in this generation
  uint64_t offset_ = 0;  // in journal.<generation_ % 2> of the first pending record
  bool stopped_ = false, failed_ = false;
  bool flusher_idle_ = false;  // the flusher waits untimed, until a waker clears this
  bool signalled_ = false;     // woken for a full buffer or a due compaction, not yet awake
  Stats stats_;
  std::thread flusher_;
};

}  // namespace kvtier::internal

#endif  // KVTIER_LIB_TIERS_DISK_JOURNAL_H_
