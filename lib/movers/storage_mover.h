// StorageMover: moves whole blocks between host slots and the tiers below the host (the disk, the
// remote store), all through the StorageTier interface:
//  - the Index's writes from host slots (write-back of host victims, flush, publication to the
//    store), as Moves taken with Index::TakeWritesLocked;
//  - the reads that bring a promotion's block from below into its host slot (`via`);
//  - Match's second half: the blocks past the local prefix that a store holds.
// It owns the storage tiers and the host-slot hazards: a host victim's slot is handed on while its
// write still reads it, and whoever fills the slot next (a read here, a demotion in the
// DeviceMover) waits for that write (PendingWriteLocked).
//
// Thread safety: *Locked methods run under the index lock (they assert it). Completions run on
// the tiers' threads and take the index lock to report to the Index. FindPrefix, WaitForWrites and
// Drain are called without it.
// Ownership: borrows the Index and the HostPool, which outlive it; owns the tiers.
#ifndef KVTIER_LIB_MOVERS_STORAGE_MOVER_H_
#define KVTIER_LIB_MOVERS_STORAGE_MOVER_H_

#include <array>
#include <atomic>
#include <cstdint>
#include <functional>
#include <memory>
#include <span>
#include <vector>

#include "absl/status/status.h"
#include "kvtier/stats.h"
#include "kvtier/tier.h"
#include "lib/index/index.h"
#include "lib/tiers/disk_tier.h"
#include "lib/tiers/host_pool.h"
#include "lib/tiers/storage_tier.h"
#include "lib/transfer/host_event.h"
#include "lib/transfer/host_slot_hazards.h"

namespace kvtier::internal {

class StorageMover {
 public:
  // `disk` and `remote` may be null (not configured). Without a disk tier object but with disk
  // slots in the Index (metadata only), the Index's disk writes and reads complete at once.
  StorageMover(Index& index, HostPool& host, uint64_t block_bytes, std::unique_ptr<DiskTier> disk,
               std::unique_ptr<StorageTier> remote);
  StorageMover(const StorageMover&) = delete;
  StorageMover& operator=(const StorageMover&) = delete;

  // The tier object below the host named `tier`; null above the host or when not configured.
  StorageTier* tier(Tier t) const { return tiers_[static_cast<int>(t)]; }
  DiskTier* disk() const { return disk_.get(); }

  // Starts the writes the Index has decided, and the wipes of the slots it freed
  // (Options.*.wipe_on_free: a host slot is zeroed here, a disk slot's trailer overwritten, each
  // back on the free list once done). Call after every index call that may take or free host slots
  // or finish a demotion, before enqueueing anything that fills those slots.
  void StartWritesLocked();

  // Reads the blocks of `promotions` that come from below the host into their host slots (`via`),
  // per tier one batch of those whose slot is free now, and each of the others once the write
  // still reading its slot has ended. For each such promotion i: done(i, status) (on a tier's
  // thread, or on this one for a read that could not be started; it must take no lock), then
  // (*read_done)[i] (created here) completes. A tier not configured completes at once.
  using ReadDone = std::function<void(size_t i, const absl::Status& status)>;
  void StartReadsLocked(std::span<const Move> promotions, const ReadDone& done,
                        std::vector<std::shared_ptr<HostEvent>>* read_done);
  // Bytes a promotion from below moved without a read (metadata only), counted as read.
  void CountReadLocked(Tier from);

  // The event a copy into host slot `s` must wait for (the write still reading it); null if none.
  std::shared_ptr<HostEvent> PendingWriteLocked(SlotId s) const;

  // Match, past the local prefix `m->keys` of `keys`: appends the blocks the tiers below hold, in
  // tier order, each under its tier. Waits for the network, without the index lock.
  void FindPrefix(std::span<const BlockKey> keys, MatchResult* m) const;

  // Waits for every write started so far (a host or disk slot it fills becomes Ready).
  void WaitForWrites();
  // Waits until every read and write started so far has ended (its completion run).
  void Drain();
  // Each tier's own figures, and the disk's bytes moved.
  void FillStats(CacheStats* stats) const;

 private:
  void StartWipesLocked();

  Index& index_;
  HostPool& host_;
  const uint64_t block_bytes_;
  std::unique_ptr<DiskTier> disk_;
  std::unique_ptr<StorageTier> remote_;
  std::array<StorageTier*, kNumTiers + 1> tiers_{};  // by Tier: below the host, when configured
  // Host slots whose last block is still being written below, and those writes.
  HostSlotHazards hazards_ ABSL_GUARDED_BY(index_.mu());
  // Bytes moved to and from the disk tier, counted when the write starts and when the read ends.
  uint64_t bytes_disk_written_ ABSL_GUARDED_BY(index_.mu()) = 0;
  std::atomic<uint64_t> bytes_disk_read_{0};
};

}  // namespace kvtier::internal

#endif  // KVTIER_LIB_MOVERS_STORAGE_MOVER_H_
