// kvtier_startup: what Cache::Create costs with a disk tier, by host pool size
// (docs/configuration.md, "Start-up cost"). For each size: the wall time of Create, the process's
// RSS before and after it, and the RSS once it stops growing (the host pool's io_uring buffer
// registration, which pins and so faults in the pool, may go on in the background after Create
// returned). Public API only.
//
//   kvtier_startup <disk directory> <host MiB>...     e.g. kvtier_startup /var/tmp/kv 256 1024 2048
#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <string>
#include <thread>
#include <vector>

#include "kvtier/cache.h"

namespace {

uint64_t RssBytes() {
  std::ifstream status("/proc/self/status");
  std::string line;
  while (std::getline(status, line)) {
    if (line.rfind("VmRSS:", 0) == 0) return std::stoull(line.substr(6)) * 1024;
  }
  return 0;
}

double Mib(uint64_t bytes) { return static_cast<double>(bytes) / (1 << 20); }

}  // namespace

int main(int argc, char** argv) {
  if (argc < 3) {
    std::fprintf(stderr, "usage: %s <disk directory> <host MiB>...\n", argv[0]);
    return 2;
  }
  const std::filesystem::path dir = argv[1];
  // One small layer: 64 KiB blocks (what matters here is the host pool's size, not the layout).
  constexpr uint32_t kDeviceSlots = 8;
  constexpr uint64_t kSegBytes = 32 << 10;
  std::vector<std::byte> kv(2 * kDeviceSlots * kSegBytes);
  kvtier::BlockLayout layout;
  layout.num_slots = kDeviceSlots;
  layout.tokens_per_block = 16;
  kvtier::LayerLayout layer;
  layer.segments.push_back(
      {.base = kv.data(), .bytes_per_block = kSegBytes, .stride_bytes = kSegBytes});
  layer.segments.push_back({.base = kv.data() + kDeviceSlots * kSegBytes,
                            .bytes_per_block = kSegBytes,
                            .stride_bytes = kSegBytes});
  layout.layers.push_back(layer);
  std::printf("%10s %12s %14s %14s %14s %12s\n", "host_MiB", "create_ms", "rss_before_MiB",
              "rss_after_MiB", "rss_settled_MiB", "settle_ms");
  for (int a = 2; a < argc; ++a) {
    const uint64_t host_mib = std::strtoull(argv[a], nullptr, 10);
    std::filesystem::remove_all(dir);
    std::filesystem::create_directories(dir);
    kvtier::Options o;
    o.layout = layout;
    o.host.capacity_bytes = host_mib << 20;
    o.disk.directory = dir.string();
    o.disk.capacity_bytes = uint64_t{64} << 20;
    o.disk.flush_on_close = false;
    const uint64_t before = RssBytes();
    const auto start = std::chrono::steady_clock::now();
    auto cache = kvtier::Cache::Create(o);
    const auto created = std::chrono::steady_clock::now();
    if (!cache.ok()) {
      std::fprintf(stderr, "Create(%llu MiB): %s\n", static_cast<unsigned long long>(host_mib),
                   std::string(cache.status().message()).c_str());
      return 1;
    }
    const uint64_t after = RssBytes();
    // Settled: unchanged (within 1 MiB) over 0.5 s, or 60 s at most.
    uint64_t last = after;
    auto settled_at = created;
    for (int still = 0, i = 0; still < 5 && i < 600; ++i) {
      std::this_thread::sleep_for(std::chrono::milliseconds(100));
      const uint64_t now = RssBytes();
      if (now > last + (1 << 20)) {
        still = 0;
        settled_at = std::chrono::steady_clock::now();
      } else {
        ++still;
      }
      last = std::max(last, now);
    }
    using Ms = std::chrono::duration<double, std::milli>;
    std::printf("%10llu %12.1f %14.1f %14.1f %14.1f %12.1f\n",
                static_cast<unsigned long long>(host_mib), Ms(created - start).count(), Mib(before),
                Mib(after), Mib(last), Ms(settled_at - start).count());
    std::fflush(stdout);
    cache->reset();
  }
  std::filesystem::remove_all(dir);
  return 0;
}
