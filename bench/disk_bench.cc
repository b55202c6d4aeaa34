// Disk tier benchmarks: kvtier's NVMe tier (io_uring, O_DIRECT, registered buffers, checksummed
// trailers verified on every read) moving whole blocks at a fixed queue depth, to be compared with
// fio on the same file by bench/disk_vs_fio.sh. These measure the internal DiskTier directly (the
// one benchmark that reaches past the public API): the cache's own overheads are in index_bench.
//
// BM_DiskRead/<block bytes>/<queue depth>, BM_DiskWrite/...: random slots, bytes_per_second counts
// payload bytes (the trailer, one 4 KiB unit per slot, is overhead the comparison includes).
// Directory: $KVTIER_BENCH_DIR (default ./kvtier-bench-disk), file size $KVTIER_BENCH_DISK_BYTES
// (default 1 GiB), verification threads $KVTIER_BENCH_VERIFY_THREADS (default 0, as
// Options.disk.verify_threads). BM_Xxh3/<block bytes>/<cold>: the read checksum's own ceiling on
// one core. BM_DiskWriteCall/<block bytes>: the caller's time inside a batch's WriteBlocks, per
// block.
#include <benchmark/benchmark.h>
#include <sys/mman.h>

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <map>
#include <memory>
#include <mutex>
#include <random>
#include <string>
#include <vector>

#include "lib/common/huge_pages.h"
#include "lib/tiers/block_header.h"
#include "lib/tiers/disk_tier.h"

namespace {

using kvtier::BlockKey;
using kvtier::internal::DiskTier;

std::string BenchDir() {
  const char* d = std::getenv("KVTIER_BENCH_DIR");
  return d != nullptr ? d : "kvtier-bench-disk";
}
uint64_t BenchBytes() {
  const char* b = std::getenv("KVTIER_BENCH_DISK_BYTES");
  return b != nullptr ? std::strtoull(b, nullptr, 10) : (uint64_t{1} << 30);
}
uint32_t VerifyThreads() {
  const char* t = std::getenv("KVTIER_BENCH_VERIFY_THREADS");
  return t != nullptr ? static_cast<uint32_t>(std::strtoul(t, nullptr, 10)) : 0;
}
BlockKey KeyOf(uint32_t slot) { return {0x6b7674, slot + 1ull}; }

// One tier per block size, its slots all written once (so reads verify real data).
struct Fixture {
  std::unique_ptr<DiskTier> disk;
  uint8_t* memory = nullptr;  // 64 host slots, registered
  uint64_t host_slot = 0;
};

Fixture* GetFixture(uint64_t block_bytes, benchmark::State& state) {
  static std::map<uint64_t, std::unique_ptr<Fixture>> fixtures;
  auto& f = fixtures[block_bytes];
  if (f != nullptr) return f.get();
  const std::string dir = BenchDir() + "/" + std::to_string(block_bytes);
  std::filesystem::create_directories(dir);
  auto align = DiskTier::Alignment(dir);
  if (!align.ok()) return state.SkipWithError(align.status().ToString().c_str()), nullptr;
  auto fx = std::make_unique<Fixture>();
  fx->host_slot = DiskTier::HostSlotBytes(block_bytes, *align);
  const uint64_t mem = fx->host_slot * 64;
  // Host memory as the cache's host pool has it (Device::AllocateHost): on huge pages.
  fx->memory = static_cast<uint8_t*>(kvtier::internal::MapHugePageAligned(mem));
  if (fx->memory == nullptr) return state.SkipWithError("mmap of the host buffers failed"), nullptr;
  std::mt19937_64 rng(1);
  for (uint64_t i = 0; i < mem; i += 8) *reinterpret_cast<uint64_t*>(fx->memory + i) = rng();
  const iovec iov{fx->memory, mem};
  auto disk = DiskTier::Open({.directory = dir,
                              .capacity_bytes = BenchBytes(),
                              .files = 1,
                              .queue_depth = 64,
                              .verify_threads = VerifyThreads(),
                              .block_bytes = block_bytes,
                              .layout_fingerprint = block_bytes,
                              .reset_on_mismatch = true},
                             {&iov, 1});
  if (!disk.ok()) return state.SkipWithError(disk.status().ToString().c_str()), nullptr;
  fx->disk = std::move(*disk);
  f = std::move(fx);
  return f.get();
}

// Keeps `qd` ops in flight (each lane has its own host buffer) on random slots, or on slots 0, 1,
// 2, ... when `sequential`, until Stop(): like fio's time-based runs, the lanes never drain between
// benchmark iterations (a drain per iteration would leave the device idle for one latency each
// time). Callbacks run on the ring's completion thread and resubmit from there.
class Driver {
 public:
  Driver(Fixture& fx, bool write, uint32_t qd, uint64_t seed, bool sequential = false)
      : fx_(fx),
        write_(write),
        qd_(qd),
        sequential_(sequential),
        rng_(static_cast<uint32_t>(seed)) {}
  ~Driver() { Stop(); }

  // Waits until `ops` more ops have completed (starting the lanes on the first call); with
  // `limit`, no op past the first `limit` in all is issued.
  void Run(uint64_t ops, uint64_t limit = UINT64_MAX) {
    std::unique_lock<std::mutex> lock(mu_);
    target_ += ops;
    limit_ = limit;
    if (!started_) {
      started_ = true;
      lock.unlock();
      for (uint32_t lane = 0; lane < qd_; ++lane) Issue(lane);
      lock.lock();
    }
    cv_.wait(lock, [&] { return completed_ >= target_ || retired_ == qd_; });
  }
  // Stops issuing and waits until no callback can touch this driver again; the ops that failed.
  uint64_t Stop() {
    std::unique_lock<std::mutex> lock(mu_);
    stopping_ = true;
    if (started_) cv_.wait(lock, [&] { return retired_ == qd_; });
    return failed_;
  }

 private:
  void Issue(uint32_t lane) {
    uint32_t slot;
    {
      std::lock_guard<std::mutex> l(mu_);
      if (stopping_ || issued_ >= limit_) {
        retired_++;
        cv_.notify_all();
        return;
      }
      const uint32_t slots = fx_.disk->capacity_slots();
      // Random slots, but lane l only ever takes slots l, l + qd, l + 2 qd, ...: no two ops in
      // flight share a slot (as in the cache, which never writes a slot twice at once). Two
      // writes of one slot at the same time can interleave on the device, and a later read of it
      // rightly refuses the torn block.
      const uint32_t per_lane = std::max<uint32_t>(1, slots / qd_);
      slot = sequential_ ? static_cast<uint32_t>(issued_ % slots)
                         : (lane + qd_ * (rng_() % per_lane)) % slots;
      issued_++;
    }
    uint8_t* buf = fx_.memory + lane * fx_.host_slot;
    auto cb = [this, lane](absl::Status s) {
      {
        std::lock_guard<std::mutex> l(mu_);
        if (!s.ok() && failed_++ == 0)
          std::fprintf(stderr, "disk bench: %s\n", s.ToString().c_str());
        if (++completed_ == target_) cv_.notify_all();
      }
      Issue(lane);
    };
    absl::Status s = write_ ? fx_.disk->Write(slot, KeyOf(slot), kvtier::kRootKey, buf, cb)
                            : fx_.disk->Read(slot, KeyOf(slot), buf, cb);
    if (!s.ok()) cb(s);
  }

  Fixture& fx_;
  const bool write_;
  const uint32_t qd_;
  const bool sequential_;
  std::mutex mu_;
  std::condition_variable cv_;
  std::mt19937 rng_;
  bool started_ = false, stopping_ = false;
  uint64_t issued_ = 0, completed_ = 0, target_ = 0, failed_ = 0, limit_ = UINT64_MAX;
  uint32_t retired_ = 0;
};

void BM_Disk(benchmark::State& state, bool write) {
  const auto block = static_cast<uint64_t>(state.range(0));
  const auto qd = static_cast<uint32_t>(state.range(1));
  Fixture* fx = GetFixture(block, state);
  if (fx == nullptr) return;
  // Every slot must hold a block so that reads verify real data: written once per directory (a
  // later process finds them by the tier's own recovery, so no run reads right behind a fill).
  static std::map<uint64_t, bool> filled;
  if (!filled[block] && fx->disk->stats().recovered_blocks < fx->disk->capacity_slots()) {
    const uint64_t slots = fx->disk->capacity_slots();
    Driver fill(*fx, /*write=*/true, 32, 0, /*sequential=*/true);
    fill.Run(slots, slots);
    if (fill.Stop() > 0) return state.SkipWithError("filling the disk tier failed");
  }
  filled[block] = true;
  // Enough ops per iteration that a timer read and a wakeup per iteration cost nothing.
  const uint64_t ops = std::max<uint64_t>(4 * qd, (64ull << 20) / block);
  Driver driver(*fx, write, qd, 1);
  for (auto _ : state) driver.Run(ops);
  if (driver.Stop() > 0) {
    // A directory filled by an older build of this benchmark (before lanes kept to their own
    // slots) can hold torn blocks that recovery lists but reads refuse: start from an empty one.
    state.SkipWithError(write ? "I/O failed"
                              : "I/O failed or did not verify (if the directory came from an "
                                "older build of this benchmark, remove $KVTIER_BENCH_DIR)");
  }
  state.SetBytesProcessed(static_cast<int64_t>(state.iterations() * ops * block));
  state.SetItemsProcessed(static_cast<int64_t>(state.iterations() * ops));
}
void BM_DiskRead(benchmark::State& state) { BM_Disk(state, false); }
void BM_DiskWrite(benchmark::State& state) { BM_Disk(state, true); }

// BM_DiskWriteCall/<block bytes>: the time the caller spends inside WriteBlocks for a batch of 16
// blocks, per block: what the cache, which calls it under its index lock, holds that lock for
// (the journal's drop records, the requests queued; not the I/O). Each batch is drained, untimed.
void BM_DiskWriteCall(benchmark::State& state) {
  const auto block = static_cast<uint64_t>(state.range(0));
  Fixture* fx = GetFixture(block, state);
  if (fx == nullptr) return;
  constexpr uint32_t kBatch = 16;
  const uint32_t slots = fx->disk->capacity_slots();
  uint32_t next = 0;
  std::atomic<uint32_t> failed{0};
  for (auto _ : state) {
    std::vector<kvtier::internal::StorageTier::Block> blocks;
    for (uint32_t i = 0; i < kBatch; ++i, next = (next + 1) % slots) {
      blocks.push_back({.key = KeyOf(next),
                        .parent = kvtier::kRootKey,
                        .slot = next,
                        .host = reinterpret_cast<std::byte*>(fx->memory + i * fx->host_slot)});
    }
    const auto start = std::chrono::steady_clock::now();
    const auto not_started = fx->disk->WriteBlocks(
        std::move(blocks), [&failed](size_t, const absl::Status& st) { failed += !st.ok(); });
    const auto end = std::chrono::steady_clock::now();
    state.SetIterationTime(std::chrono::duration<double>(end - start).count() / kBatch);
    failed += static_cast<uint32_t>(not_started.size());
    fx->disk->Drain();
  }
  if (failed > 0) state.SkipWithError("a write failed");
}
// A fixed number of batches (~1 GiB written per size): the timed part is short, so a minimum time
// would take very many drained batches.
BENCHMARK(BM_DiskWriteCall)
    ->Arg(64 << 10)
    ->Iterations(1000)
    ->UseManualTime()
    ->Unit(benchmark::kMicrosecond);
BENCHMARK(BM_DiskWriteCall)
    ->Arg(256 << 10)
    ->Iterations(250)
    ->UseManualTime()
    ->Unit(benchmark::kMicrosecond);
BENCHMARK(BM_DiskWriteCall)
    ->Arg(2 << 20)
    ->Iterations(32)
    ->UseManualTime()
    ->Unit(benchmark::kMicrosecond);

// BM_Xxh3/<block bytes>/<cold>: the checksum's own ceiling, PayloadHash (the very function a
// disk read verifies with) over blocks of the disk benchmarks' sizes, on one thread. cold=1 walks
// 512 MiB of blocks (16x the VM's L3), as a read finds its buffer after the device's DMA; cold=0
// hashes one block again and again (cached). bytes_per_second is hashed bytes.
void BM_Xxh3(benchmark::State& state) {
  const auto block = static_cast<uint64_t>(state.range(0));
  const uint64_t span = state.range(1) != 0 ? (512ull << 20) : block;
  static std::map<uint64_t, std::vector<uint64_t>> pools;  // filled once per size (not timed)
  auto& pool = pools[span];
  if (pool.empty()) {
    pool.resize(span / 8);
    std::mt19937_64 rng(1);
    for (uint64_t& w : pool) w = rng();
  }
  const auto* base = reinterpret_cast<const uint8_t*>(pool.data());
  uint64_t offset = 0, sink = 0;
  for (auto _ : state) {
    sink += kvtier::internal::PayloadHash(base + offset, block);
    offset = offset + 2 * block <= span ? offset + block : 0;
  }
  benchmark::DoNotOptimize(sink);
  state.SetBytesProcessed(static_cast<int64_t>(state.iterations() * block));
}
BENCHMARK(BM_Xxh3)->ArgsProduct({{64 << 10, 256 << 10, 2 << 20}, {0, 1}});

void DiskArgs(benchmark::internal::Benchmark* b) {
  for (int64_t block : {64 << 10, 256 << 10, 2 << 20}) {
    for (int64_t qd : {1, 8, 32}) b->Args({block, qd});
  }
  b->UseRealTime()->Unit(benchmark::kMillisecond);
}
BENCHMARK(BM_DiskRead)->Apply(DiskArgs);
BENCHMARK(BM_DiskWrite)->Apply(DiskArgs);

}  // namespace
