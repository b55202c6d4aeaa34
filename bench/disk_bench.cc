// Disk tier benchmarks: kvtier's NVMe tier (io_uring, O_DIRECT, registered buffers, checksummed
// trailers verified on every read) moving whole blocks at a fixed queue depth, to be compared with
// fio on the same file by bench/disk_vs_fio.sh. These measure the internal DiskTier directly (the
// one benchmark that reaches past the public API): the cache's own overheads are in index_bench.
//
// BM_DiskRead/<block bytes>/<queue depth>, BM_DiskWrite/...: random slots, bytes_per_second counts
// payload bytes (the trailer, one 4 KiB unit per slot, is overhead the comparison includes).
// Directory: $KVTIER_BENCH_DIR (default ./kvtier-bench-disk), file size $KVTIER_BENCH_DISK_BYTES
// (default 1 GiB).
#include <benchmark/benchmark.h>
#include <sys/mman.h>

#include <atomic>
#include <condition_variable>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <map>
#include <memory>
#include <mutex>
#include <random>
#include <string>

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
  fx->memory = static_cast<uint8_t*>(
      mmap(nullptr, mem, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0));
  std::mt19937_64 rng(1);
  for (uint64_t i = 0; i < mem; i += 8) *reinterpret_cast<uint64_t*>(fx->memory + i) = rng();
  const iovec iov{fx->memory, mem};
  auto disk = DiskTier::Open({.directory = dir,
                              .capacity_bytes = BenchBytes(),
                              .files = 1,
                              .queue_depth = 64,
                              .block_bytes = block_bytes,
                              .layout_fingerprint = block_bytes,
                              .reset_on_mismatch = true},
                             {&iov, 1});
  if (!disk.ok()) return state.SkipWithError(disk.status().ToString().c_str()), nullptr;
  fx->disk = std::move(*disk);
  f = std::move(fx);
  return f.get();
}

// Keeps `qd` ops in flight (each lane has its own host buffer) until `ops` have completed, on
// random slots, or on slots 0, 1, 2, ... when `sequential`; returns the number that failed.
uint64_t Drive(Fixture& fx, bool write, uint32_t qd, uint64_t ops, uint64_t seed,
               bool sequential = false) {
  std::mutex mu;
  std::condition_variable cv;
  uint64_t issued = 0, failed = 0;
  uint32_t lanes_retired = 0;  // Drive returns only when no callback can touch its locals again
  std::mt19937 rng(static_cast<uint32_t>(seed));
  const uint32_t slots = fx.disk->capacity_slots();
  std::function<void(uint32_t)> issue = [&](uint32_t lane) {
    uint32_t slot;
    {
      std::lock_guard<std::mutex> l(mu);
      if (issued == ops) {
        lanes_retired++;
        cv.notify_all();
        return;
      }
      slot = sequential ? static_cast<uint32_t>(issued) : rng() % slots;
      issued++;
    }
    uint8_t* buf = fx.memory + lane * fx.host_slot;
    auto cb = [&, lane](absl::Status s) {
      if (!s.ok()) {
        std::lock_guard<std::mutex> l(mu);
        if (failed++ == 0) std::fprintf(stderr, "disk bench: %s\n", s.ToString().c_str());
      }
      issue(lane);
    };
    absl::Status s = write ? fx.disk->Write(slot, KeyOf(slot), kvtier::kRootKey, buf, cb)
                           : fx.disk->Read(slot, KeyOf(slot), buf, cb);
    if (!s.ok()) cb(s);
  };
  for (uint32_t lane = 0; lane < qd; ++lane) issue(lane);
  std::unique_lock<std::mutex> lock(mu);
  cv.wait(lock, [&] { return lanes_retired == qd; });
  return failed;
}

void BM_Disk(benchmark::State& state, bool write) {
  const auto block = static_cast<uint64_t>(state.range(0));
  const auto qd = static_cast<uint32_t>(state.range(1));
  Fixture* fx = GetFixture(block, state);
  if (fx == nullptr) return;
  static std::map<uint64_t, bool> filled;  // write every slot once, so reads verify real data
  if (!filled[block]) {
    if (Drive(*fx, /*write=*/true, 32, fx->disk->capacity_slots(), 0, /*sequential=*/true) > 0) {
      return state.SkipWithError("filling the disk tier failed");
    }
    filled[block] = true;
  }
  // Enough ops per iteration to amortise the ramp-up at this depth.
  const uint64_t ops = std::max<uint64_t>(4 * qd, (64ull << 20) / block);
  uint64_t failed = 0, seed = 0;
  for (auto _ : state) failed += Drive(*fx, write, qd, ops, ++seed);
  if (failed > 0) state.SkipWithError("I/O failed or did not verify");
  state.SetBytesProcessed(static_cast<int64_t>(state.iterations() * ops * block));
  state.SetItemsProcessed(static_cast<int64_t>(state.iterations() * ops));
}
void BM_DiskRead(benchmark::State& state) { BM_Disk(state, false); }
void BM_DiskWrite(benchmark::State& state) { BM_Disk(state, true); }

void DiskArgs(benchmark::internal::Benchmark* b) {
  for (int64_t block : {64 << 10, 256 << 10, 2 << 20}) {
    for (int64_t qd : {1, 8, 32}) b->Args({block, qd});
  }
  b->UseRealTime()->Unit(benchmark::kMillisecond);
}
BENCHMARK(BM_DiskRead)->Apply(DiskArgs);
BENCHMARK(BM_DiskWrite)->Apply(DiskArgs);

}  // namespace
