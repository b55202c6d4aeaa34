#include "lib/movers/storage_mover.h"

#include <cstring>
#include <utility>

namespace kvtier::internal {

StorageMover::StorageMover(Index& index, HostPool& host, uint64_t block_bytes,
                           std::unique_ptr<DiskTier> disk, std::unique_ptr<StorageTier> remote)
    : index_(index),
      host_(host),
      block_bytes_(block_bytes),
      disk_(std::move(disk)),
      remote_(std::move(remote)),
      hazards_(index.capacity(Tier::kHost)) {
  tiers_[static_cast<int>(Tier::kDisk)] = disk_.get();
  tiers_[static_cast<int>(Tier::kRemote)] = remote_.get();
}

void StorageMover::StartWipesLocked() {
  index_.mu().AssertHeld();
  for (const Place& p : index_.TakeWipesLocked()) {
    if (p.tier == Tier::kHost) {
      // Freed, so unpinned: no copy reads or writes it. Memory speed, one slot per freed block.
      std::memset(host_.slot_ptr(p.slot), 0, host_.slot_bytes());
      index_.FinishWipeLocked(p);
      continue;
    }
    if (p.tier != Tier::kDisk || disk_ == nullptr) {  // metadata only: nothing on disk
      index_.FinishWipeLocked(p);
      continue;
    }
    // Back on the free list only once written, so a new block's write cannot race the zeros. A
    // failed write frees it all the same: the slot's next write replaces the stale trailer.
    const absl::Status started = disk_->Invalidate(p.slot, [this, p](const absl::Status&) {
      MutexLock lock(&index_.mu());
      index_.FinishWipeLocked(p);
    });
    if (!started.ok()) index_.FinishWipeLocked(p);
  }
}

void StorageMover::StartWritesLocked() {
  index_.mu().AssertHeld();
  StartWipesLocked();
  std::vector<Move> writes = index_.TakeWritesLocked();
  if (writes.empty()) return;
  for (int t = static_cast<int>(Tier::kDisk); t < static_cast<int>(tiers_.size()); ++t) {
    const Tier to = static_cast<Tier>(t);
    std::vector<Move> batch;
    for (const Move& w : writes) {
      if (w.to.tier == to) batch.push_back(w);
    }
    if (batch.empty()) continue;
    if (to == Tier::kDisk) bytes_disk_written_ += batch.size() * block_bytes_;
    StorageTier* tier = tiers_[t];
    if (tier == nullptr) {  // metadata only: the write is done when decided
      for (const Move& w : batch) index_.FinishMoveLocked(w, true);
      continue;
    }
    // Each write's source slot may be handed on (a victim's): its next user waits for the write.
    std::vector<StorageTier::Block> blocks;
    std::vector<std::shared_ptr<HostEvent>> written;
    for (const Move& w : batch) {
      blocks.push_back({.key = w.key,
                        .parent = w.parent,
                        .slot = w.to.slot,
                        .host = host_.slot_ptr(w.host_slot())});
      written.push_back(std::make_shared<HostEvent>());
      hazards_.Add(w.host_slot(), written.back());
    }
    auto done = [this, batch, written](size_t j, const absl::Status& st) {
      if (batch[j].entry != kNoEntry) {  // else a store's copy of a victim: nothing to report
        MutexLock lock(&index_.mu());
        index_.FinishMoveLocked(batch[j], st.ok());
      }
      written[j]->Complete();
    };
    for (const auto& [j, st] : tier->WriteBlocks(std::move(blocks), done)) {  // under the lock
      index_.FinishMoveLocked(batch[j], false);
      written[j]->Complete();
    }
  }
}

void StorageMover::StartReadsLocked(std::span<const Move> promotions, const ReadDone& done,
                                    std::vector<std::shared_ptr<HostEvent>>* read_done) {
  index_.mu().AssertHeld();
  read_done->assign(promotions.size(), nullptr);
  for (int t = static_cast<int>(Tier::kDisk); t < static_cast<int>(tiers_.size()); ++t) {
    const Tier from = static_cast<Tier>(t);
    StorageTier* tier = tiers_[t];
    std::vector<StorageTier::Block> now;
    std::vector<size_t> now_which;  // now[j] is promotion now_which[j]
    // The completion of a batch whose block j is promotion which[j]: `done` first, then the event.
    auto batch_done = [this, &done, &read_done, from](std::vector<size_t> which) {
      std::vector<std::shared_ptr<HostEvent>> events;
      for (size_t i : which) events.push_back((*read_done)[i]);
      return StorageTier::Done([this, done, from, which = std::move(which),
                                events = std::move(events)](size_t j, const absl::Status& st) {
        if (st.ok() && from == Tier::kDisk) bytes_disk_read_ += block_bytes_;
        done(which[j], st);
        events[j]->Complete();
      });
    };
    for (size_t i = 0; i < promotions.size(); ++i) {
      const Move& p = promotions[i];
      if (p.from.tier != from) continue;
      (*read_done)[i] = std::make_shared<HostEvent>();
      if (tier == nullptr) {  // metadata only
        batch_done({i})(0, absl::OkStatus());
        continue;
      }
      const StorageTier::Block block{
          .key = p.key, .slot = p.from.slot, .host = host_.slot_ptr(p.via)};
      if (hazards_.Busy(p.via)) {
        hazards_.Pending(p.via)->Then([tier, block, read = batch_done({i})] {
          for (const auto& [j, st] : tier->ReadBlocks({block}, read)) read(j, st);
        });
      } else {
        now.push_back(block);
        now_which.push_back(i);
      }
    }
    if (now.empty()) continue;
    StorageTier::Done read = batch_done(std::move(now_which));
    // The completion takes no lock: it may run here for a block that could not be started.
    for (const auto& [j, st] : tier->ReadBlocks(std::move(now), read)) read(j, st);
  }
}

void StorageMover::CountReadLocked(Tier from) {
  if (from == Tier::kDisk) bytes_disk_read_ += block_bytes_;
}

std::shared_ptr<HostEvent> StorageMover::PendingWriteLocked(SlotId s) const {
  index_.mu().AssertHeld();
  return hazards_.Busy(s) ? hazards_.Pending(s) : nullptr;
}

void StorageMover::FindPrefix(std::span<const BlockKey> keys, MatchResult* m) const {
  for (int t = static_cast<int>(Tier::kDisk); t < static_cast<int>(tiers_.size()); ++t) {
    if (tiers_[t] == nullptr || m->size() == keys.size()) continue;
    const uint32_t found = tiers_[t]->FindPrefix(keys.subspan(m->size()));
    for (uint32_t i = 0; i < found; ++i) {
      m->keys.push_back(keys[m->size()]);
      m->tiers.push_back(static_cast<Tier>(t));
    }
  }
}

void StorageMover::WaitForWrites() {
  std::vector<std::shared_ptr<HostEvent>> writes;
  {
    MutexLock lock(&index_.mu());
    writes = hazards_.InFlight();
  }
  for (const std::shared_ptr<HostEvent>& w : writes) w->Wait().IgnoreError();
}

void StorageMover::Drain() {
  for (StorageTier* tier : tiers_) {
    if (tier != nullptr) tier->Drain();
  }
}

void StorageMover::FillStats(CacheStats* stats) const {
  index_.mu().AssertHeld();
  for (const StorageTier* tier : tiers_) {
    if (tier != nullptr) tier->FillStats(stats);
  }
  stats->bytes_disk_written = bytes_disk_written_;
  stats->bytes_disk_read = bytes_disk_read_.load();
}

}  // namespace kvtier::internal
