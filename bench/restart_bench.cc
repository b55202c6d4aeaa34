// kvtier_restart_bench: the disk tier's restart after kill -9, from its journal (checkpoint plus
// tail, lib/tiers/disk_journal.h) vs the trailer scan of every slot (what a restart did before
// the journal, and still does for a directory without one). docs/benchmarks.md, "Disk tier:
// restart after a crash".
//
//   kvtier_restart_bench [--slots N] [--dir PATH] [--block-bytes B] [--churn F] [--scan 0|1]
//
// A child process opens a tier of N slots in a fresh directory under PATH, writes every slot
// (batches of 64 in flight), then rewrites N*F random slots (a journal tail of drops and puts),
// and is killed with SIGKILL once it reports done. The parent then times Open() from the journal,
// with the journal's files dropped from the page cache first (fdatasync + POSIX_FADV_DONTNEED:
// read from the device, as after a reboot), and Open() by the trailer scan (checkpoint and
// journal removed; the scan's O_DIRECT reads never hit the page cache). Prints one line each.
#include <fcntl.h>
#include <signal.h>
#include <sys/mman.h>
#include <sys/wait.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <future>
#include <random>
#include <string>
#include <vector>

#include "lib/tiers/disk_journal.h"
#include "lib/tiers/disk_tier.h"

namespace {

using kvtier::BlockKey;
using kvtier::internal::DiskJournal;
using kvtier::internal::DiskTier;
using kvtier::internal::DiskTierConfig;
using kvtier::internal::StorageTier;
namespace fs = std::filesystem;

constexpr uint32_t kBatch = 64;

BlockKey KeyOf(uint64_t i) { return {0xbe4c0000 + i, i * 0x9E3779B97F4A7C15ULL + 3}; }

[[noreturn]] void Die(const std::string& what) {
  std::fprintf(stderr, "kvtier_restart_bench: %s\n", what.c_str());
  std::exit(1);
}

// Writes `keys[i]` into `slots[i]`, 64 in flight at a time.
bool WriteAll(DiskTier& disk, uint8_t* host, uint64_t host_slot, const std::vector<uint32_t>& slots,
              uint64_t first_key) {
  for (size_t at = 0; at < slots.size(); at += kBatch) {
    const size_t n = std::min<size_t>(kBatch, slots.size() - at);
    std::vector<StorageTier::Block> blocks;
    for (size_t i = 0; i < n; ++i) {
      uint8_t* h = host + i * host_slot;
      const uint64_t k = first_key + at + i;
      std::memcpy(h, &k, sizeof(k));  // a distinct payload per block
      blocks.push_back({.key = KeyOf(k),
                        .parent = KeyOf(k == 0 ? 0 : k - 1),
                        .slot = slots[at + i],
                        .host = reinterpret_cast<std::byte*>(h)});
    }
    std::promise<void> all;
    std::atomic<size_t> left{n};
    std::atomic<bool> failed{false};
    if (!disk.WriteBlocks(std::move(blocks),
                          [&](size_t, const absl::Status& s) {
                            if (!s.ok()) failed = true;
                            if (--left == 0) all.set_value();
                          })
             .empty()) {
      return false;
    }
    all.get_future().wait();
    if (failed) return false;
  }
  return true;
}

void DropFromPageCache(const fs::path& path) {
  const int fd = open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) return;
  fdatasync(fd);
  posix_fadvise(fd, 0, 0, POSIX_FADV_DONTNEED);
  close(fd);
}

}  // namespace

int main(int argc, char** argv) {
  uint32_t slots = 65536;
  uint64_t block_bytes = 4096;
  double churn = 0.25;
  bool scan = true;
  std::string parent_dir = ".";
  for (int i = 1; i + 1 < argc; i += 2) {
    const std::string a = argv[i];
    if (a == "--slots") {
      slots = static_cast<uint32_t>(std::strtoul(argv[i + 1], nullptr, 10));
    } else if (a == "--dir") {
      parent_dir = argv[i + 1];
    } else if (a == "--block-bytes") {
      block_bytes = std::strtoull(argv[i + 1], nullptr, 10);
    } else if (a == "--scan") {
      scan = std::strtoul(argv[i + 1], nullptr, 10) != 0;
    } else if (a == "--churn") {
      churn = std::strtod(argv[i + 1], nullptr);
    } else {
      Die("usage: kvtier_restart_bench [--slots N] [--dir PATH] [--block-bytes B] [--churn F] "
          "[--scan 0|1]");
    }
  }
  std::string tmpl = parent_dir + "/kvtier-restart-XXXXXX";
  if (mkdtemp(tmpl.data()) == nullptr) Die("mkdtemp under " + parent_dir);
  const fs::path dir = tmpl;
  auto align = DiskTier::Alignment(dir.string());
  if (!align.ok()) Die(align.status().ToString());
  const uint64_t host_slot = DiskTier::HostSlotBytes(block_bytes, *align);
  DiskTierConfig config;
  config.directory = dir.string();
  config.capacity_bytes = uint64_t{slots} * host_slot;
  config.files = 4;
  config.queue_depth = kBatch;
  config.block_bytes = block_bytes;
  config.layout_fingerprint = 0xbe4c;

  int report[2];
  if (pipe(report) != 0) Die("pipe");
  const pid_t child = fork();
  if (child < 0) Die("fork");
  if (child == 0) {
    close(report[0]);
    auto* host = static_cast<uint8_t*>(mmap(nullptr, host_slot * kBatch, PROT_READ | PROT_WRITE,
                                            MAP_PRIVATE | MAP_ANONYMOUS, -1, 0));
    auto disk = DiskTier::Open(config, {});
    if (!disk.ok()) {
      std::fprintf(stderr, "child: %s\n", disk.status().ToString().c_str());
      _exit(3);
    }
    std::vector<uint32_t> order(slots);
    for (uint32_t s = 0; s < slots; ++s) order[s] = s;
    if (!WriteAll(**disk, host, host_slot, order, 0)) _exit(4);
    std::mt19937 rng(7);
    std::vector<uint32_t> again(static_cast<size_t>(slots * churn));
    for (uint32_t& s : again) s = rng() % slots;
    if (!WriteAll(**disk, host, host_slot, again, slots)) _exit(5);
    // Past a flush interval: what it wrote is journaled.
    usleep(100000);
    (void)!write(report[1], "x", 1);
    pause();
    _exit(0);
  }
  close(report[1]);
  char c = 0;
  if (read(report[0], &c, 1) != 1) Die("the writer failed");
  kill(child, SIGKILL);
  int status = 0;
  waitpid(child, &status, 0);

  for (const char* f : {"checkpoint", "journal.0", "journal.1"}) DropFromPageCache(dir / f);
  const uint64_t journal_bytes = fs::file_size(dir / "checkpoint") +
                                 fs::file_size(dir / "journal.0") +
                                 fs::file_size(dir / "journal.1");
  auto time_open = [&](const char* what, uint64_t files_bytes) {
    const auto t0 = std::chrono::steady_clock::now();
    auto disk = DiskTier::Open(config, {});
    const double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    if (!disk.ok()) Die(disk.status().ToString());
    const DiskTier::Stats st = (*disk)->stats();
    std::printf(
        "%-8s slots=%u block_bytes=%lu: restart %.3f s, %lu blocks, %lu slot trailers read, "
        "%.1f MiB read (journal files %.1f MiB), %lu journal records replayed\n",
        what, slots, static_cast<unsigned long>(block_bytes), s, (*disk)->recovered().size(),
        static_cast<unsigned long>(st.recovery_trailer_reads),
        static_cast<double>(st.recovery_bytes_read) / (1 << 20),
        static_cast<double>(files_bytes) / (1 << 20),
        static_cast<unsigned long>(st.journal_records_replayed));
    std::fflush(stdout);
  };
  time_open("journal", journal_bytes);
  if (scan) {
    DiskJournal::RemoveFiles(dir.string());  // as a directory of the version before
    time_open("scan", 0);
  }
  std::error_code ec;
  fs::remove_all(dir, ec);
  return 0;
}
