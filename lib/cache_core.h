// Cache::Core: what a Cache is made of, and the work that spans its parts. The public Cache
// (lib/cache.cc) is the facade over it; lib/cache_create.cc builds it.
//
//   Index         state: keys, residencies per tier, leases, pins (decides every move; no I/O)
//   DeviceMover   device <-> host copies on the device's streams (promotions, demotions)
//   StorageMover  host <-> the tiers below (disk, remote store) through StorageTier, and the
//                 host-slot hazards between the two movers
//
// Core itself: the allocation retry (waiting for the demotions in flight), Flush and the warm
// restart, shutdown, and Stats() assembled from each part's own figures.
//
// Thread safety: the Cache's methods take index_.mu() once per call and drive the parts under it;
// the movers' completions take it on their own threads.
#ifndef KVTIER_LIB_CACHE_CORE_H_
#define KVTIER_LIB_CACHE_CORE_H_

#include <cstdint>
#include <memory>
#include <span>
#include <vector>

#include "absl/container/flat_hash_map.h"
#include "absl/functional/function_ref.h"
#include "absl/status/status.h"
#include "absl/time/time.h"
#include "kvtier/cache.h"
#include "kvtier/options.h"
#include "kvtier/stats.h"
#include "lib/index/index.h"
#include "lib/movers/device_mover.h"
#include "lib/movers/storage_mover.h"
#include "lib/tiers/disk_tier.h"
#include "lib/tiers/host_pool.h"
#include "lib/tiers/storage_tier.h"
#include "lib/transfer/device.h"
#include "lib/transfer/transfer_state.h"

namespace kvtier {

namespace internal {
class ConnectorImpl;
}  // namespace internal

class Cache::Core {
 public:
  // `disk` and `remote` may be null (not configured).
  Core(const Options& options, std::unique_ptr<internal::Device> device,
       std::unique_ptr<internal::HostPool> host, std::unique_ptr<internal::DiskTier> disk,
       std::unique_ptr<internal::StorageTier> remote, internal::IndexConfig config);
  // Drains every copy, flushes to disk when asked (Options.disk.flush_on_close) and writes the
  // disk's manifest. Every DeviceLease must be gone.
  ~Core();
  Core(const Core&) = delete;
  Core& operator=(const Core&) = delete;

  // The Cache that owns `core` (the only way to make one: Cache's constructor is private).
  static std::unique_ptr<Cache> Wrap(std::unique_ptr<Core> core) {
    return std::unique_ptr<Cache>(new Cache(std::move(core)));
  }

  // Warm restart: registers what the disk tier found in its directory.
  void Restore();
  // Reserves device slots with `reserve` (an Index call, run under the index lock: it appends the
  // write-backs it decides and the slots it must keep out of use meanwhile), starts those copies
  // and waits for them outside the lock; when slots were short, tries again as RetryAllocation
  // decides. Returns the last attempt's status.
  using Reserve = absl::FunctionRef<absl::Status(std::vector<internal::Move>* demotions,
                                                 std::vector<SlotId>* quarantine)>;
  absl::Status Allocate(Reserve reserve);
  // Cache::Stats and Connector::Stats (takes the index lock).
  CacheStats Stats() const;
  // The id of a tenant named in Options.*.tenant_shares ("" is the default tenant, 0);
  // kInvalidArgument for another name. O(1).
  absl::StatusOr<uint8_t> TenantId(absl::string_view tenant) const;
  // The host tier's memory, for tests that inspect slots (wipe_on_free).
  const internal::HostPool& host_pool() const { return *host_; }

  // The management calls of Cache and Connector (their contracts: kvtier/cache.h). Each takes
  // the index lock itself.
  absl::Status Hint(std::span<const BlockKey> keys, std::span<const double> scores);
  absl::Status Hint(std::span<const BlockKey> keys, std::span<const double> scores,
                    absl::Duration duration);
  absl::StatusOr<ManageResult> Remove(std::span<const BlockKey> keys);
  absl::StatusOr<ManageResult> Clear(Tier tier);
  absl::StatusOr<ManageResult> Pin(std::span<const BlockKey> keys, absl::Duration duration);
  absl::StatusOr<ManageResult> Unpin(std::span<const BlockKey> keys);
  // Prefetch after checking the keys and that there is a host tier.
  absl::StatusOr<std::shared_ptr<internal::TransferState>> CheckedPrefetch(
      std::span<const BlockKey> keys);
  std::vector<KvEvent> TakeEvents(size_t max_events);
  // Cache::Prefetch: plans the reads of `keys`' blocks up to the host (the store asked first,
  // without the lock) and starts them. The state has no layers; it finishes once every read has
  // ended and the Index has recorded them.
  absl::StatusOr<std::shared_ptr<internal::TransferState>> Prefetch(std::span<const BlockKey> keys);

 private:
  // The Cache's methods use index_ itself rather than an accessor, so that clang's thread-safety
  // analysis sees that the lock they take is the one the *Locked calls require.
  friend class Cache;
  friend class internal::ConnectorImpl;  // connector mode drives the same parts

  // Enqueues the write-backs an allocation decided (whether or not it succeeded), waits for them
  // outside the lock, then frees the slots a failed allocation had to keep out of use meanwhile.
  absl::Status FinishAllocation(const absl::Status& reserved, std::vector<internal::Move> demotions,
                                std::vector<SlotId> quarantine);
  // After an allocation came up short: whether to try again, having waited for every demotion in
  // flight (see the definition).
  bool RetryAllocation(int attempt, uint64_t evictions_before);
  // Waits for every demotion in flight: device-to-host copies (and the index updates they make),
  // then the writes below the host, whichever call started them.
  void DrainDemotions();
  // Copies every block not yet on disk down to it, so the next start finds whole prefixes.
  void Flush();
  // A prefetch's reads and their outcomes, shared by their completions.
  struct PrefetchReads;
  // Reports a prefetch's reads to the Index, then finishes its state.
  void FinishPrefetchLocked(const PrefetchReads& reads, internal::TransferState& state)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(index_.mu());

  const Options options_;
  std::unique_ptr<internal::Device> device_;
  std::unique_ptr<internal::HostPool> host_;
  internal::Index index_;
  internal::StorageMover storage_;
  internal::DeviceMover device_mover_;
  uint64_t restored_ = 0, restore_dropped_ = 0;  // set once, before the cache is shared
  // Options::Tenants(), name -> id (its position + 1). Immutable.
  absl::flat_hash_map<std::string, uint8_t> tenant_ids_;
};

}  // namespace kvtier

#endif  // KVTIER_LIB_CACHE_CORE_H_
