// Soak: a bounded stress run of one Cache with every tier (emulated device, host, disk, a local
// Redis Cluster), 8 engine threads, injected faults (failed device copies, disk EIO, short
// transfers, bit flips and ENOSPC) and a remote master killed mid-run, then restarted.
//
// Checks: every block any Load hands out holds exactly the bytes committed under its key (0 wrong
// bytes, ever); CheckInvariants() and the capacity limits between phases (the threads park, so
// nothing is in flight); RSS flat after the warm-up phase (bounded growth, sampled from
// /proc/self/statm). Figures are printed at the end (docs/architecture.md, "Soak").
//
// KVTIER_SOAK_SECONDS: run length (600 when unset); the ctest entry `soak` (asan preset) runs 60.
#include <unistd.h>

#include <atomic>
#include <cinttypes>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include "kvtier/cache.h"
#include "lib/cache_factory.h"
#include "lib/tiers/disk_tier.h"
#include "lib/tiers/io_ring.h"
#include "lib/transfer/emulated_device.h"
#include "test/util/redis_cluster_fixture.h"
#include "test/util/test_util.h"

namespace kvtier {
namespace {

using Clock = std::chrono::steady_clock;

constexpr int kThreads = 8;
constexpr int kPhases = 6;
constexpr uint32_t kChainBlocks = 8;

uint64_t RssBytes() {
  std::ifstream statm("/proc/self/statm");
  uint64_t size = 0, resident = 0;
  statm >> size >> resident;
  return resident * static_cast<uint64_t>(sysconf(_SC_PAGESIZE));
}

uint64_t SoakSeconds() {
  const char* env = std::getenv("KVTIER_SOAK_SECONDS");
  if (env == nullptr || *env == '\0') return 600;
  return std::strtoull(env, nullptr, 10);
}

struct Totals {
  std::atomic<uint64_t> ops{0}, loads{0}, blocks_loaded{0}, load_failures{0}, wrong_bytes{0};
  std::atomic<uint64_t> commits{0}, exhausted{0}, hints{0}, device_faults{0}, errors{0};
};

TEST_CASE("Soak: 8 threads, every tier, injected faults and a node kill: 0 wrong bytes, RSS flat",
          "[soak]") {
  std::string why;
  if (!test::LocalRedisCluster::Available(&why)) {
    if (test::SkipMissing("redis", why)) return;
  }
  auto cluster = test::LocalRedisCluster::Start({.masters = 3, .replicas_per_master = 1});
  REQUIRE_OK(cluster);
  const uint64_t seconds = SoakSeconds();
  const uint32_t seed = 17;
  std::printf("soak: %" PRIu64 " s, %d threads, seed %u\n", seconds, kThreads, seed);

  test::TempDir dir("soak");
  test::EngineKv kv({.layers = 2, .segment_bytes = 512, .num_slots = 64});
  const uint64_t block = kv.layout().block_bytes();
  const uint32_t align = *internal::DiskTier::Alignment(dir.path.string());
  const uint64_t slot = internal::DiskTier::HostSlotBytes(block, align);
  Options o = test::MakeOptions(kv, 0);
  o.host.capacity_bytes = 48 * slot;
  o.disk.directory = dir.path.string();
  o.disk.capacity_bytes = 160 * slot;
  std::string nodes;
  for (const std::string& n : (*cluster)->nodes()) nodes += (nodes.empty() ? "" : ",") + n;
  o.remote.nodes = nodes;
  o.remote.scope = "soak-" + std::to_string(getpid());
  o.remote.timeout_ms = 500;
  o.remote.match_budget_us = 20000;
  internal::RandomFaultInjector disk_faults(
      seed, {.eio = 0.01, .short_transfer = 0.02, .bit_flip = 0.01, .enospc = 0.005});
  auto owned = std::make_unique<internal::EmulatedDevice>();
  internal::EmulatedDevice* device = owned.get();
  auto created = internal::CreateCache(o, std::move(owned), &disk_faults);
  REQUIRE_OK(created);
  Cache& cache = **created;

  // 48 chains of 8 blocks; requests take prefixes, so threads contend on shared blocks, and the
  // working set (384 blocks) is larger than device + host + disk (272): the remote tier serves.
  std::vector<std::vector<BlockKey>> bases;
  for (uint32_t b = 0; b < 48; ++b) bases.push_back(test::Chain(kChainBlocks, 9000 + b));

  Totals t;
  std::atomic<bool> stop{false}, pause{false};
  std::atomic<int> parked{0};
  auto worker = [&](uint32_t id) {
    std::mt19937 rng(seed * 100 + id);
    while (!stop.load()) {
      if (pause.load()) {
        parked++;
        while (pause.load() && !stop.load()) std::this_thread::yield();
        parked--;
        continue;
      }
      t.ops++;
      // A skewed choice of chain (some prefixes hot), a prefix of it.
      const uint32_t r = rng() % 100;
      const auto& base = bases[r < 60 ? rng() % 8 : rng() % bases.size()];
      const std::vector<BlockKey> keys(base.begin(), base.begin() + 1 + rng() % base.size());
      if (id == 0 && t.ops.load() % 400 == 0) {
        device->FailNextCopies(1);
        t.device_faults++;
      }
      auto match = cache.Match(keys);
      if (!match.ok()) {
        t.errors++;
        continue;
      }
      auto lease = cache.AllocateDevice(static_cast<uint32_t>(keys.size()));
      if (!lease.ok()) {
        if (lease.status().code() != absl::StatusCode::kResourceExhausted) t.errors++;
        t.exhausted++;
        continue;
      }
      auto xfer = cache.Load(*match, *lease);
      if (!xfer.ok()) {
        t.errors++;
        continue;
      }
      t.loads++;
      uint32_t loaded = 0;
      if (xfer->Wait().ok()) {
        loaded = xfer->blocks();
      } else {
        t.load_failures++;  // injected: the blocks are misses, recomputed below
      }
      const auto slots = lease->slots();
      for (uint32_t i = 0; i < loaded; ++i) t.wrong_bytes += kv.Mismatches(slots[i], keys[i]);
      t.blocks_loaded += loaded;
      for (uint32_t i = loaded; i < keys.size(); ++i) kv.Write(slots[i], keys[i]);
      const absl::Status s = cache.Commit(keys, *lease);
      if (s.ok()) {
        t.commits++;
      } else if (s.code() != absl::StatusCode::kAlreadyExists) {
        t.errors++;
      }
      if (rng() % 16 == 0) {
        const std::vector<double> scores(keys.size(), static_cast<double>(rng() % 100));
        if (cache.Hint(keys, scores).ok()) t.hints++;
      }
      if (!cache.Release(*lease).ok()) t.errors++;
    }
  };

  std::vector<std::thread> threads;
  for (uint32_t i = 0; i < kThreads; ++i) threads.emplace_back(worker, i);
  const auto phase_length = std::chrono::milliseconds(seconds * 1000 / kPhases);
  uint64_t rss_warm = 0, rss_max = 0;
  const uint64_t rss_start = RssBytes();
  for (int phase = 0; phase < kPhases; ++phase) {
    std::this_thread::sleep_for(phase_length);
    pause = true;
    while (parked.load() < kThreads) std::this_thread::yield();
    // Parked: no call in flight; the cache's own writes (disk, remote) may still run.
    REQUIRE_OK(cache.CheckInvariants());
    const CacheStats s = cache.Stats();
    CHECK(s.leases_live == 0);
    // (device.pinned_blocks may be > 0: write-back copies still in flight pin their sources.)
    CHECK(s.device.used_blocks <= s.device.capacity_blocks);
    CHECK(s.host.used_blocks <= s.host.capacity_blocks);
    CHECK(s.disk.used_blocks <= s.disk.capacity_blocks);
    const uint64_t rss = RssBytes();
    if (phase == 0) rss_warm = rss;
    rss_max = std::max(rss_max, rss);
    std::printf("soak: phase %d: ops %" PRIu64 " loads %" PRIu64 " failed %" PRIu64
                " wrong bytes %" PRIu64 " rss %" PRIu64 " KiB\n",
                phase, t.ops.load(), t.loads.load(), t.load_failures.load(), t.wrong_bytes.load(),
                rss >> 10);
    std::fflush(stdout);
    if (phase == 1) (*cluster)->Kill(0);  // a master with a replica: failover during phase 2
    if (phase == 3) CHECK_OK((*cluster)->Restart(0));
    pause = false;
  }
  stop = true;
  for (auto& th : threads) th.join();
  REQUIRE_OK(cache.CheckInvariants());
  const CacheStats s = cache.Stats();
  const uint64_t rss_end = RssBytes();
  std::printf("soak: %" PRIu64 " ops, %" PRIu64 " loads (%" PRIu64 " failed), %" PRIu64
              " blocks loaded, %" PRIu64 " commits, %" PRIu64 " exhausted, %" PRIu64
              " hints\n"
              "soak: hits device %" PRIu64 " host %" PRIu64 " disk %" PRIu64 " remote %" PRIu64
              "\n"
              "soak: faults: device copies %" PRIu64 ", disk %" PRIu64 " (corrupt reads %" PRIu64
              ", io errors %" PRIu64
              "), remote node killed and restarted; transfer failures %" PRIu64
              "\n"
              "soak: wrong bytes %" PRIu64 ", errors %" PRIu64 "; RSS start %" PRIu64
              " KiB, after warm-up %" PRIu64 " KiB, max %" PRIu64 " KiB, end %" PRIu64 " KiB\n",
              t.ops.load(), t.loads.load(), t.load_failures.load(), t.blocks_loaded.load(),
              t.commits.load(), t.exhausted.load(), t.hints.load(), s.device.hits, s.host.hits,
              s.disk.hits, s.remote.hits, t.device_faults.load(), disk_faults.injected(),
              s.disk.corrupt_reads, s.disk.io_errors, s.transfer_failures, t.wrong_bytes.load(),
              t.errors.load(), rss_start >> 10, rss_warm >> 10, rss_max >> 10, rss_end >> 10);
  CHECK(t.wrong_bytes == 0);
  CHECK(t.errors == 0);
  CHECK(t.blocks_loaded > 0);
  CHECK(s.host.hits > 0);
  CHECK(s.disk.hits > 0);
  CHECK(s.remote.hits > 0);
  CHECK(disk_faults.injected() > 0);
  CHECK(t.load_failures > 0);  // the faults did reach loads
  // RSS flat after the warm-up phase: the caches' memory is allocated at Create, the rest is
  // transient. 64 MiB covers allocator and sanitizer noise, not a leak per operation.
  CHECK(rss_end <= rss_warm + (64ull << 20));
}

}  // namespace
}  // namespace kvtier
