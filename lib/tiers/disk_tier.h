// DiskTier: KV blocks in preallocated files on a local file system (NVMe), read and written with
// io_uring and O_DIRECT, each verified by checksums on every read.
//
// Slot format. A slot is the block's payload, zero-padded to the direct-I/O alignment, followed by
// a trailer of one alignment unit (>= 4 KiB):
//   magic "KVTIERB1" | version u32 | trailer bytes u32 | key (hi, lo) | parent (hi, lo) |
//   layout fingerprint u64 | payload bytes u64 | payload xxh3-64 | write sequence u64 |
//   trailer xxh3-64 of everything before it          (all little-endian)
// Host slots are laid out the same way (payload, then room for the trailer), so a block moves
// between a host slot and a disk slot in ONE contiguous O_DIRECT transfer into registered memory.
// Slots are striped over the files: slot s is slot s / files of file s % files.
//
// Warm restart. Open() on a directory holding a previous cache rebuilds its contents: from the
// manifest written atomically (temp file, fsync, rename) by a clean Close(); else, after a crash,
// from the journal (lib/tiers/disk_journal.h: a checkpoint plus the records since, O(checkpoint +
// journal tail) bytes read, no slot read); else (a directory of a version without a journal, or a
// journal that failed) by scanning every slot's trailer. Trailers that fail their checks are
// dropped and counted, and so is a manifest or checkpoint that is not a regular file of ours, is
// longer than this geometry allows, or names a slot past the tier, a slot twice or a key twice:
// the next source recovers instead, and nothing of it is used. Every Open() then starts a new
// journal epoch (a checkpoint of what it recovered) and removes the manifest.
// Crash durability: a block whose write completed before the journal's last flush (at most
// DiskTierConfig::journal_flush_interval before the crash) is recovered after a process crash; a
// slot is dropped from the journal, durably (to the page cache), before it is overwritten or
// invalidated, so a restart never publishes a block it knows is gone. Every block published is
// still verified on read. A
// directory written with another layout, shard identity or geometry, or holding slot files but no
// kvtier.meta, is an error, or an empty start with reset_on_mismatch (which removes every slot
// file, also those of a geometry with more files). kvtier.lock exists while a tier holds the
// directory.
//
// Files. The tier reads and writes only regular files of the effective user with a single link,
// opened without following symlinks: a slot file, kvtier.meta or kvtier.lock that is anything else
// is a kFailedPrecondition naming it (its target is never written).
//
// Thread safety: Read/Write from any thread; `done` runs on the ring's completion thread, or on one
//   of its callback threads with DiskTierConfig::verify_threads > 0 (reads are verified there).
// Errors: Open() names the problem (missing or unwritable directory, no O_DIRECT, no space, another
//   cache holding the directory's lock, capacity under one slot, a file not ours as above); a
//   failed Open() of a directory it emptied leaves it empty, and leaves no kvtier.lock. A read
//   whose trailer or payload does not verify ends with kDataLoss: the block is a miss and the
//   caller frees the slot.
#ifndef KVTIER_LIB_TIERS_DISK_TIER_H_
#define KVTIER_LIB_TIERS_DISK_TIER_H_

#include <sys/uio.h>

#include <atomic>
#include <chrono>
#include <cstdint>
#include <cstdlib>
#include <functional>
#include <memory>
#include <span>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "kvtier/block_key.h"
#include "kvtier/policy.h"
#include "kvtier/stats.h"
#include "lib/common/histogram.h"
#include "lib/tiers/io_ring.h"
#include "lib/tiers/storage_tier.h"

namespace kvtier::internal {

class DiskJournal;
struct DiskJournalConfig;

struct DiskTierConfig {
  std::string directory;        // must exist and be writable
  uint64_t capacity_bytes = 0;  // of slot files, preallocated
  uint32_t files = 1;           // slots are striped over this many files
  uint32_t queue_depth = 64;    // io_uring ops in flight
  uint32_t verify_threads = 0;  // DiskTierOptions::verify_threads: 0 verifies on the ring's thread
  uint64_t block_bytes = 0;     // payload of one block
  // Options::Fingerprint(): layout shape and shard identity, in every trailer and kvtier.meta.
  uint64_t layout_fingerprint = 0;
  bool reset_on_mismatch = false;  // another layout/geometry on disk: start empty, not an error
  bool allow_buffered = false;     // no O_DIRECT (tmpfs): buffered I/O instead of an error
  FaultInjector* injector = nullptr;
  // The crash journal (DiskJournalConfig): records of a generation before a compaction (0: the
  // default, max(16384, slots / 2)), and how late a completed write's record may be flushed.
  uint64_t journal_max_records = 0;
  std::chrono::microseconds journal_flush_interval{10000};
};

struct StoredBlock {
  SlotId slot = 0;
  BlockKey key;
  BlockKey parent;
};

// What a directory's blocks were written for: the layout, and the tier's geometry.
struct DiskGeometry {
  uint64_t layout_fingerprint = 0;
  uint64_t slot_bytes = 0;  // padded payload plus trailer
  uint32_t slots = 0;       // capacity of the tier
  uint32_t files = 0;
};

// The manifest a clean Close() writes (and Open() trusts once): its blocks, and the sequence the
// writer had reached.
struct DiskManifest {
  std::vector<StoredBlock> blocks;
  uint64_t max_sequence = 0;  // writes after a restart continue at max_sequence + 1
};

// Manifest encoding: magic "KVTIERM1" | version u32 | layout fingerprint u64 | slot bytes u64 |
// slots u32 | files u32 | count u64 | max sequence u64 | `count` entries of (slot u32, key (hi,
// lo), parent (hi, lo)) | XXH3-64 of everything before it (all little-endian). O(blocks).
std::vector<uint8_t> EncodeDiskManifest(const DiskGeometry& geometry,
                                        std::span<const StoredBlock> blocks, uint64_t max_sequence);
// Decodes a whole manifest file read from disk, trusting nothing in it: kDataLoss when it is torn
// or foreign (size, magic, checksum), of another version or geometry than `geometry`, holds a
// count that its size does not, a max sequence of 2^64-1, or contradicts itself (a slot past the
// tier, a slot twice, a key twice). Allocates only in proportion to bytes.size(). O(bytes).
absl::StatusOr<DiskManifest> DecodeDiskManifest(std::span<const uint8_t> bytes,
                                                const DiskGeometry& geometry);

struct LeWriter;
struct LeReader;
// The block list of a manifest or a journal checkpoint: `count` entries of (slot u32, key (hi,
// lo), parent (hi, lo)), little-endian, kStoredBlockEntryBytes each.
inline constexpr uint64_t kStoredBlockEntryBytes = 4 + 32;
void WriteStoredBlocks(LeWriter& w, std::span<const StoredBlock> blocks);
// Reads `count` entries into `out`, trusting none: kDataLoss ("<what>: entry i ...") for a slot
// past `slots`, a slot twice or a key twice. The caller has checked that the bytes hold them.
absl::Status ReadStoredBlocks(LeReader& r, uint64_t count, uint32_t slots, const char* what,
                              std::vector<StoredBlock>* out);

class DiskTier final : public StorageTier {
 public:
  struct Stats {
    uint64_t reads = 0, writes = 0, corrupt_reads = 0, io_errors = 0, invalidations = 0;
    uint64_t recovered_blocks = 0, recovery_dropped = 0;
    bool buffered_io = false;             // true when O_DIRECT was unavailable and allowed
    bool from_manifest = false;           // the last Open() used a clean manifest (else a scan)
    bool from_journal = false;            // ... the journal: a checkpoint and the records since
    uint64_t recovery_trailer_reads = 0;  // slots whose trailer the last Open() read (a scan)
    uint64_t recovery_bytes_read = 0;     // of the manifest, checkpoint, journal and trailers
    uint64_t journal_records_replayed = 0;
    uint64_t journal_records = 0, journal_flushes = 0, journal_checkpoints = 0;
    uint64_t journal_syncs = 0, journal_wakeups = 0;  // DiskJournal::Stats::syncs, wakeups
    uint64_t journal_errors = 0;     // failed journal writes: the next Open() scans
    uint64_t queue_depth = 0;        // gauge: reads and writes submitted and not completed
    LatencyHistogram read_latency;   // Read() to its verification, per block
    LatencyHistogram write_latency;  // Write() to its completion, per block
  };

  // The direct-I/O alignment of `directory`'s file system (statx STATX_DIOALIGN, at least 4 KiB).
  static absl::StatusOr<uint32_t> Alignment(const std::string& directory);
  // Bytes a host slot needs to take part in disk transfers: the padded payload plus the trailer.
  static uint64_t HostSlotBytes(uint64_t block_bytes, uint32_t alignment);

  // Opens (creating or recovering) the tier. `host_memory` is registered with the ring.
  static absl::StatusOr<std::unique_ptr<DiskTier>> Open(const DiskTierConfig& config,
                                                        std::span<const iovec> host_memory);
  // Waits for in-flight I/O and flushes the journal; writes no manifest (Close does).
  ~DiskTier();
  DiskTier(const DiskTier&) = delete;
  DiskTier& operator=(const DiskTier&) = delete;

  uint32_t capacity_slots() const { return capacity_slots_; }
  uint32_t alignment() const { return alignment_; }
  uint64_t slot_bytes() const { return slot_bytes_; }
  // What Open() found: blocks that verified (manifest) or whose trailer verified (scan).
  const std::vector<StoredBlock>& recovered() const { return recovered_; }

  // Writes the block from `host_slot` (HostSlotBytes() bytes, aligned) into `slot`. The trailer
  // area is filled (the payload hashed) on the ring's thread before the write is submitted, not on
  // the caller's: O(1) here beyond the journal's drop. `done(OK)` once it is durable in the page
  // cache/device.
  absl::Status Write(SlotId slot, const BlockKey& key, const BlockKey& parent, void* host_slot,
                     std::function<void(absl::Status)> done);
  // Reads `slot` into `host_slot` and verifies it holds `key` with an intact payload:
  // done(OK), done(kDataLoss) on any mismatch, or the I/O error.
  absl::Status Read(SlotId slot, const BlockKey& key, void* host_slot,
                    std::function<void(absl::Status)> done);

  // Overwrites `slot`'s trailer with zeros (one alignment unit), so that no read, scan or restart
  // finds the block it held (Options.disk.wipe_on_free). done(OK) once written, or the I/O error.
  absl::Status Invalidate(SlotId slot, std::function<void(absl::Status)> done);

  // StorageTier: the per-block Read and Write above, for a batch.
  NotStarted ReadBlocks(std::vector<Block> blocks, Done done) override;
  NotStarted WriteBlocks(std::vector<Block> blocks, Done done) override;

  // Waits for every read and write started so far (their callbacks included).
  void Drain() override { ring_->Drain(); }

  // Clean shutdown: writes the manifest of `live` blocks atomically (Open() trusts it once), then
  // stops the journal and removes its files (the manifest replaces them).
  absl::Status Close(std::span<const StoredBlock> live);

  Stats stats() const;
  void FillStats(CacheStats* stats) const override;

 private:
  DiskTier() = default;
  // Takes the directory's lock (kvtier.lock) into lock_fd_.
  absl::Status Lock();
  absl::Status Recover(bool* reset);
  absl::Status ScanTrailers();
  absl::Status LoadManifest(bool* found);
  absl::Status StartJournal();
  DiskJournalConfig JournalConfig() const;
  DiskGeometry geometry() const;
  IoRequest RequestFor(IoOp op, SlotId slot, void* buf, uint32_t bytes, bool trailer_only) const;

  DiskTierConfig config_;
  uint32_t alignment_ = 4096;
  uint64_t padded_payload_ = 0;
  uint64_t slot_bytes_ = 0;
  uint32_t capacity_slots_ = 0;
  // One alignment unit of zeros, the source of every Invalidate (never written; outlives ring_).
  std::unique_ptr<uint8_t, void (*)(void*)> zero_trailer_{nullptr, &std::free};
  std::vector<int> fds_;
  int lock_fd_ = -1;
  std::unique_ptr<IoRing> ring_;
  std::unique_ptr<DiskJournal> journal_;  // stopped by Close()
  std::vector<StoredBlock> recovered_;
  std::atomic<uint64_t> sequence_{1};
  std::atomic<uint64_t> reads_{0}, writes_{0}, corrupt_{0}, io_errors_{0}, invalidations_{0};
  AtomicHistogram read_latency_, write_latency_;  // recorded where `done` runs
  uint64_t recovered_blocks_ = 0, recovery_dropped_ = 0;
  uint64_t recovery_trailer_reads_ = 0, recovery_bytes_read_ = 0, journal_replayed_ = 0;
  uint64_t journal_start_errors_ = 0;  // Open() could not start the journal (runs without)
  bool buffered_ = false;
  bool from_manifest_ = false, from_journal_ = false;
};

}  // namespace kvtier::internal

#endif  // KVTIER_LIB_TIERS_DISK_TIER_H_
