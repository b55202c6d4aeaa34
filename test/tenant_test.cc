// Multi-tenant safety: freed slots wiped (Options.host/disk.wipe_on_free), and each tenant's share
// of a tier kept from the others' inserts (Options.host/disk.tenant_shares, Cache::SetTenant).
#include <algorithm>
#include <atomic>
#include <cstddef>
#include <filesystem>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/str_cat.h"
#include "lib/cache_core.h"
#include "lib/cache_factory.h"
#include "lib/tiers/disk_tier.h"
#include "lib/transfer/emulated_device.h"
#include "test/util/test_util.h"

namespace kvtier::internal {
namespace {

namespace fs = std::filesystem;
using test::EngineKv;

// A cache on the emulated device whose host pool the test can read.
struct InspectableCache {
  std::unique_ptr<Cache> cache;
  const HostPool* pool = nullptr;
};
InspectableCache MakeCache(const Options& o) {
  auto core = CreateCore(o, std::make_unique<EmulatedDevice>(), nullptr, /*engine_device=*/false);
  REQUIRE_OK(core);
  InspectableCache c;
  c.pool = &(*core)->host_pool();
  c.cache = Cache::Core::Wrap(std::move(*core));
  return c;
}

// Bytes of the host pool that are not zero.
uint64_t NonZeroHostBytes(const HostPool& pool) {
  const std::byte* p = pool.slot_ptr(0);
  return static_cast<uint64_t>(std::count_if(p, p + uint64_t{pool.slots()} * pool.slot_bytes(),
                                             [](std::byte b) { return b != std::byte{0}; }));
}

Options DiskOptions(const EngineKv& kv, const fs::path& dir, uint32_t host_blocks,
                    uint32_t disk_blocks) {
  Options o = test::MakeOptions(kv, host_blocks);
  const uint32_t align = *DiskTier::Alignment(dir.string());
  const uint64_t slot = DiskTier::HostSlotBytes(kv.layout().block_bytes(), align);
  o.host.capacity_bytes = uint64_t{host_blocks} * slot;
  o.disk.directory = dir.string();
  o.disk.capacity_bytes = uint64_t{disk_blocks} * slot;
  o.disk.files = 2;
  return o;
}

// Runs two-block sequences seeds [first, first + n); returns their keys.
std::vector<BlockKey> RunSequences(Cache& cache, EngineKv& kv, uint32_t first, uint32_t n) {
  std::vector<BlockKey> all;
  for (uint32_t i = first; i < first + n; ++i) {
    const std::vector<BlockKey> keys = test::Chain(2, i);
    auto r = test::RunSequence(cache, kv, keys);
    REQUIRE_OK(r);
    REQUIRE(r->mismatched_bytes == 0);
    all.insert(all.end(), keys.begin(), keys.end());
  }
  REQUIRE_OK(cache.CheckInvariants());
  return all;
}

TEST_CASE("wipe_on_free: host slots freed by Remove and Clear hold zeros", "[tenant][cache]") {
  const bool clear = GENERATE(false, true);
  CAPTURE(clear);
  EngineKv kv({.num_slots = 4});
  Options o = test::MakeOptions(kv, 8);
  o.host.wipe_on_free = true;
  InspectableCache c = MakeCache(o);
  const std::vector<BlockKey> keys = RunSequences(*c.cache, kv, 1, 6);  // 12 blocks: 8 demoted
  const CacheStats before = c.cache->Stats();
  REQUIRE(before.host.used_blocks > 0);
  REQUIRE(NonZeroHostBytes(*c.pool) > 0);
  if (clear) {
    auto r = c.cache->Clear(Tier::kHost);
    REQUIRE_OK(r);
    CHECK(r->busy == 0);
  } else {
    auto r = c.cache->Remove(keys);
    REQUIRE_OK(r);
    CHECK(r->done == keys.size());
  }
  CHECK(c.cache->Stats().host.used_blocks == 0);
  CHECK(NonZeroHostBytes(*c.pool) == 0);
  REQUIRE_OK(c.cache->CheckInvariants());
  // The wiped slots are usable again.
  RunSequences(*c.cache, kv, 100, 6);
  CHECK(c.cache->Stats().host.used_blocks > 0);
}

TEST_CASE("wipe_on_free: without it freed host slots keep the removed blocks' bytes",
          "[tenant][cache]") {
  // The baseline the option exists for: what the test above would see without it.
  EngineKv kv({.num_slots = 4});
  InspectableCache c = MakeCache(test::MakeOptions(kv, 8));
  const std::vector<BlockKey> keys = RunSequences(*c.cache, kv, 1, 6);
  REQUIRE_OK(c.cache->Remove(keys));
  CHECK(c.cache->Stats().host.used_blocks == 0);
  CHECK(NonZeroHostBytes(*c.pool) > 0);
}

TEST_CASE("wipe_on_free: a removed disk block is not recovered by a trailer scan after restart",
          "[tenant][disk][cache]") {
  const bool wipe = GENERATE(true, false);
  CAPTURE(wipe);
  test::TempDir dir("tenant_wipe");
  EngineKv kv({.num_slots = 4});
  Options o = DiskOptions(kv, dir.path, 4, 64);
  o.disk.wipe_on_free = wipe;
  o.host.wipe_on_free = wipe;
  std::vector<BlockKey> removed;
  {
    auto cache = Cache::Create(o);
    REQUIRE_OK(cache);
    const std::vector<BlockKey> keys = RunSequences(**cache, kv, 1, 16);  // 32 blocks
    REQUIRE((*cache)->Stats().disk.used_blocks > 0);
    // Remove the second half of the sequences, whole chains: their disk slots are freed.
    removed.assign(keys.begin() + 16, keys.end());
    auto r = (*cache)->Remove(removed);
    REQUIRE_OK(r);
    CHECK(r->done == removed.size());
    REQUIRE_OK((*cache)->CheckInvariants());
  }  // clean close: flush, wipes drained, manifest of what is left
  // As after a crash: no manifest, so the next start scans every trailer.
  fs::remove(dir.path / "manifest");
  auto cache = Cache::Create(o);
  REQUIRE_OK(cache);
  const CacheStats s = (*cache)->Stats();
  CHECK(s.disk_recovered_blocks > 0);  // the first half survives
  // The removed blocks: none is served, with the option; without it the scan brings them back.
  uint32_t recovered = 0;
  for (size_t i = 0; i < removed.size(); i += 2) {
    auto mi = (*cache)->Match(std::span<const BlockKey>(removed).subspan(i, 2));
    REQUIRE_OK(mi);
    recovered += static_cast<uint32_t>(mi->size());
  }
  if (wipe) {
    CHECK(recovered == 0);
  } else {
    CHECK(recovered > 0);
  }
  REQUIRE_OK((*cache)->CheckInvariants());
}

// One single-block sequence of `tenant` per seed in [first, first + n): allocated, named, written
// and committed. Returns false (rather than REQUIRE: threads call it) on any error.
bool Insert(Cache& cache, EngineKv& kv, uint32_t first, uint32_t n, const std::string& tenant) {
  // A cache without shares knows no tenant: its leases stay the default tenant's.
  const bool named =
      !cache.options().host.tenant_shares.empty() || !cache.options().disk.tenant_shares.empty();
  for (uint32_t seed = first; seed < first + n; ++seed) {
    const std::vector<BlockKey> keys = test::Chain(1, seed);
    auto lease = cache.AllocateDevice(1);
    if (!lease.ok() || (named && !cache.SetTenant(*lease, tenant).ok())) return false;
    kv.Write(lease->slots()[0], keys[0]);
    if (!cache.Commit(keys, *lease).ok()) return false;
  }
  return true;
}

// How many of the single-block sequences [first, first + n) are cached in `tier`.
uint32_t CachedIn(Cache& cache, uint32_t first, uint32_t n, Tier tier) {
  uint32_t cached = 0;
  for (uint32_t seed = first; seed < first + n; ++seed) {
    auto m = cache.Match(test::Chain(1, seed));
    REQUIRE_OK(m);
    cached += m->size() == 1 && m->tiers[0] == tier;
  }
  return cached;
}

// Host tier of 8 slots, device of 4; tenants a and b with half the host each (when `shares`).
Options TwoTenants(const EngineKv& kv, bool shares) {
  Options o = test::MakeOptions(kv, 8);
  if (shares) o.host.tenant_shares = {{"a", "0.5"}, {"b", "0.5"}};
  return o;
}

TEST_CASE("tenant_shares: a tenant under its share keeps its blocks when another floods the tier",
          "[tenant][cache]") {
  const bool shares = GENERATE(true, false);
  CAPTURE(shares);
  EngineKv kv({.num_slots = 4});
  auto cache = Cache::Create(TwoTenants(kv, shares));
  REQUIRE_OK(cache);
  REQUIRE(Insert(**cache, kv, 1, 12, "a"));  // 4 on the device, 8 on the host: a exceeds its share
  CHECK(CachedIn(**cache, 1, 12, Tier::kHost) == 8);  // free slots are anyone's
  REQUIRE(Insert(**cache, kv, 1000, 40, "b"));
  REQUIRE_OK((*cache)->CheckInvariants());
  if (shares) {
    // b took back the host slots a held past its share, then evicted its own.
    CHECK(CachedIn(**cache, 1, 12, Tier::kHost) == 4);
    CHECK(CachedIn(**cache, 1000, 40, Tier::kHost) == 4);
  } else {
    CHECK(CachedIn(**cache, 1, 12, Tier::kHost) == 0);  // without shares the flood takes all
  }
}

TEST_CASE("tenant_shares: a tenant over its share evicts its own blocks first", "[tenant][cache]") {
  const bool shares = GENERATE(true, false);
  CAPTURE(shares);
  EngineKv kv({.num_slots = 4});
  auto cache = Cache::Create(TwoTenants(kv, shares));
  REQUIRE_OK(cache);
  REQUIRE(Insert(**cache, kv, 1, 12, "a"));    // a holds the whole host tier
  REQUIRE(Insert(**cache, kv, 1000, 2, "b"));  // b's two blocks, on the device
  REQUIRE(Insert(**cache, kv, 100, 30, "a"));  // push b's to the host, then keep going
  REQUIRE_OK((*cache)->CheckInvariants());
  if (shares) {
    CHECK(CachedIn(**cache, 1000, 2, Tier::kHost) == 2);  // b, under its share, lost none
    CHECK(CachedIn(**cache, 100, 30, Tier::kHost) == 6);  // a made room from its own
  } else {
    CHECK(CachedIn(**cache, 1000, 2, Tier::kHost) == 0);
  }
}

TEST_CASE("tenant_shares: the disk tier keeps shares too", "[tenant][disk][cache]") {
  const bool shares = GENERATE(true, false);
  CAPTURE(shares);
  test::TempDir dir("tenant_disk");
  EngineKv kv({.num_slots = 4});
  Options o = DiskOptions(kv, dir.path, 4, 8);
  if (shares) o.disk.tenant_shares = {{"a", "0.5"}, {"b", "0.5"}};
  auto cache = Cache::Create(o);
  REQUIRE_OK(cache);
  REQUIRE(Insert(**cache, kv, 1, 16, "a"));  // 4 device, 4 host, 8 disk
  REQUIRE(Insert(**cache, kv, 1000, 40, "b"));
  REQUIRE_OK((*cache)->CheckInvariants());
  const uint32_t a_on_disk = CachedIn(**cache, 1, 16, Tier::kDisk);
  if (shares) {
    CHECK(a_on_disk == 4);
  } else {
    CHECK(a_on_disk == 0);
  }
}

TEST_CASE("tenant_shares: bad shares and unknown tenants are rejected with kInvalidArgument",
          "[tenant][cache]") {
  EngineKv kv({.num_slots = 4});
  for (const TenantShares& bad : std::vector<TenantShares>{{{"a", "0.7"}, {"b", "0.4"}},
                                                           {{"a", "0"}},
                                                           {{"a", "1.5"}},
                                                           {{"a", "half"}},
                                                           {{"", "0.5"}}}) {
    Options o = TwoTenants(kv, false);
    o.host.tenant_shares = bad;
    CHECK(Cache::Create(o).status().code() == absl::StatusCode::kInvalidArgument);
    o.host.tenant_shares = {};
    o.disk.tenant_shares = bad;
    CHECK(o.Validate().code() == absl::StatusCode::kInvalidArgument);
  }
  Options many = TwoTenants(kv, false);
  for (size_t i = 0; i <= kMaxTenants; ++i) many.host.tenant_shares[absl::StrCat("t", i)] = "0.01";
  CHECK(Cache::Create(many).status().code() == absl::StatusCode::kInvalidArgument);

  auto cache = Cache::Create(TwoTenants(kv, true));
  REQUIRE_OK(cache);
  auto lease = (*cache)->AllocateDevice(1);
  REQUIRE_OK(lease);
  CHECK((*cache)->SetTenant(*lease, "c").code() == absl::StatusCode::kInvalidArgument);
  REQUIRE_OK((*cache)->SetTenant(*lease, "a"));
  REQUIRE_OK((*cache)->SetTenant(*lease, ""));  // the default tenant again
  DeviceLease empty;
  CHECK((*cache)->SetTenant(empty, "a").code() == absl::StatusCode::kFailedPrecondition);
  // A cache without shares knows only the default tenant.
  auto plain = Cache::Create(TwoTenants(kv, false));
  REQUIRE_OK(plain);
  auto plain_lease = (*plain)->AllocateDevice(1);
  REQUIRE_OK(plain_lease);
  CHECK((*plain)->SetTenant(*plain_lease, "a").code() == absl::StatusCode::kInvalidArgument);
  REQUIRE_OK((*plain)->SetTenant(*plain_lease, ""));
}

TEST_CASE("tenant_shares: two tenants inserting at once each end with their share",
          "[tenant][cache][concurrency]") {
  EngineKv kv({.num_slots = 8});
  Options o = test::MakeOptions(kv, 8);
  o.host.tenant_shares = {{"a", "0.5"}, {"b", "0.5"}};
  auto cache = Cache::Create(o);
  REQUIRE_OK(cache);
  std::atomic<int> failures{0};
  // a inserts while b does; b goes on for long enough that, without shares, its blocks would take
  // the whole (LRU) host tier.
  struct Load {
    std::string tenant;
    uint32_t first = 0, n = 0;
  };
  const Load loads[] = {{"a", 1, 30}, {"b", 1000, 150}};
  std::vector<std::thread> threads;
  for (const Load& load : loads) {
    threads.emplace_back([&] {
      // Each thread writes only the device slots its own leases hold.
      if (!Insert(**cache, kv, load.first, load.n, load.tenant)) failures++;
    });
  }
  for (std::thread& t : threads) t.join();
  CHECK(failures == 0);
  REQUIRE_OK((*cache)->CheckInvariants());
  // Both inserted more than the host holds: each ends with exactly its half of it.
  CHECK(CachedIn(**cache, 1, 30, Tier::kHost) == 4);
  CHECK(CachedIn(**cache, 1000, 150, Tier::kHost) == 4);
}

// Index work (CacheStats::index_work) per insert of tenant b while it takes back its share from
// tenant a, on a host tier of `host_slots` that a filled.
double WorkPerInsert(uint32_t host_slots) {
  EngineKv kv({.segment_bytes = 16, .num_slots = 8});
  Options o = test::MakeOptions(kv, host_slots);
  o.host.tenant_shares = {{"a", "0.5"}, {"b", "0.5"}};
  auto cache = Cache::Create(o);
  REQUIRE_OK(cache);
  REQUIRE(Insert(**cache, kv, 1, host_slots + 8, "a"));  // the host full of a's blocks
  const uint64_t before = (*cache)->Stats().index_work;
  constexpr uint32_t kInserts = 200;
  REQUIRE(Insert(**cache, kv, 1u << 20, kInserts, "b"));
  return static_cast<double>((*cache)->Stats().index_work - before) / kInserts;
}

TEST_CASE("tenant_shares: choosing a victim by share costs the same at 256 and 8192 host slots",
          "[tenant][cost]") {
  const double small = WorkPerInsert(256);
  const double large = WorkPerInsert(8192);
  CAPTURE(small, large);
  CHECK(large <= small * 1.25 + 1);
}

}  // namespace
}  // namespace kvtier::internal
