// The disk tier's restart after a crash (lib/tiers/disk_journal.h): what a restart publishes is
// exactly what the writer had durably journaled, every block of it verifies, and the restart
// reads the checkpoint and the journal, never every slot.
#include <fcntl.h>
#include <signal.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <functional>
#include <future>
#include <map>
#include <memory>
#include <numeric>
#include <optional>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include "kvtier/cache.h"
#include "lib/tiers/block_header.h"
#include "lib/tiers/disk_journal.h"
#include "lib/tiers/disk_tier.h"
#include "test/util/test_util.h"

namespace kvtier::internal {
namespace {

namespace fs = std::filesystem;
constexpr uint64_t kBlockBytes = 4096 + 100;  // deliberately not aligned
constexpr uint64_t kFingerprint = 0x5678;

struct HostSlots {
  HostSlots(uint32_t n, uint32_t align) : slot(DiskTier::HostSlotBytes(kBlockBytes, align)) {
    bytes = slot * n;
    base = static_cast<uint8_t*>(
        mmap(nullptr, bytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0));
  }
  ~HostSlots() { munmap(base, bytes); }
  uint8_t* at(uint32_t i) const { return base + uint64_t{i} * slot; }
  uint64_t slot, bytes;
  uint8_t* base;
};

BlockKey KeyOf(uint64_t i) { return {0x5eed0000 + i, i * 0x9E3779B97F4A7C15ULL + 7}; }
BlockKey ParentOf(uint64_t i) { return i == 0 ? kRootKey : KeyOf(i - 1); }
uint64_t IndexOf(const BlockKey& k) { return k.hi - 0x5eed0000; }

void Pattern(uint8_t* p, uint64_t k) {
  std::mt19937_64 rng(k * 13 + 5);
  for (uint64_t i = 0; i < kBlockBytes; i += 8) {
    const uint64_t v = rng();
    std::memcpy(p + i, &v, std::min<uint64_t>(8, kBlockBytes - i));
  }
}
bool Matches(const uint8_t* p, uint64_t k) {
  std::vector<uint8_t> want(kBlockBytes + 8);
  Pattern(want.data(), k);
  return std::memcmp(p, want.data(), kBlockBytes) == 0;
}

uint32_t Align(const fs::path& dir) { return *DiskTier::Alignment(dir.string()); }

DiskTierConfig Config(const fs::path& dir, uint32_t slots, uint32_t align,
                      uint64_t journal_max_records = 0) {
  DiskTierConfig c;
  c.directory = dir.string();
  c.capacity_bytes = uint64_t{slots} * DiskTier::HostSlotBytes(kBlockBytes, align);
  c.files = 2;
  c.queue_depth = 16;
  c.block_bytes = kBlockBytes;
  c.layout_fingerprint = kFingerprint;
  c.journal_max_records = journal_max_records;
  c.journal_flush_interval = std::chrono::microseconds(1000);
  return c;
}

using test::WaitForCallback;
absl::Status WriteBlock(DiskTier& d, SlotId slot, uint64_t k, uint8_t* host) {
  Pattern(host, k);
  return WaitForCallback(
      [&](auto done) { return d.Write(slot, KeyOf(k), ParentOf(k), host, done); });
}
absl::Status ReadBlock(DiskTier& d, SlotId slot, uint64_t k, uint8_t* host) {
  std::memset(host, 0xEE, kBlockBytes);
  return WaitForCallback([&](auto done) { return d.Read(slot, KeyOf(k), host, done); });
}
absl::Status InvalidateSlot(DiskTier& d, SlotId slot) {
  return WaitForCallback([&](auto done) { return d.Invalidate(slot, done); });
}

// `fixed` plus KVTIER_TEST_SEED when set (a number); printed.
uint32_t Seed(uint32_t fixed) {
  uint32_t seed = fixed;
  const char* env = std::getenv("KVTIER_TEST_SEED");
  if (env != nullptr && *env != '\0') {
    seed = static_cast<uint32_t>(std::strtoul(env, nullptr, 10)) + fixed;
  }
  std::printf("disk_recovery_test: seed %u (KVTIER_TEST_SEED=%s)\n", seed,
              env != nullptr ? env : "unset");
  std::fflush(stdout);
  return seed;
}

// What the crash test's writer does in batch `b` of round `round`: 8 distinct slots, each written
// with a fresh key (key index `round * 1e6 + b * 8 + i`) or, one time in six, invalidated.
struct Op {
  SlotId slot;
  std::optional<uint64_t> key;  // nullopt: Invalidate
};
std::vector<Op> Plan(uint32_t seed, uint32_t round, uint64_t b, uint32_t slots) {
  std::mt19937_64 rng((uint64_t{seed} << 32) ^ (uint64_t{round} << 24) ^ b);
  std::vector<SlotId> all(slots);
  std::iota(all.begin(), all.end(), 0);
  std::vector<Op> ops;
  for (uint32_t i = 0; i < 8; ++i) {
    std::swap(all[i], all[i + rng() % (slots - i)]);
    std::optional<uint64_t> key;
    if (rng() % 6 != 0) key = uint64_t{round} * 1000000 + b * 8 + i;
    ops.push_back({all[i], key});
  }
  return ops;
}

// The child: opens the tier (recovering the last round's crash) and runs batches until killed,
// writing one byte to `report` after each batch has completed.
[[noreturn]] void Writer(const DiskTierConfig& config, uint32_t align, uint32_t seed,
                         uint32_t round, int report) {
  for (int sig : {SIGABRT, SIGSEGV, SIGBUS}) signal(sig, SIG_DFL);
  HostSlots host(8, align);
  auto disk = DiskTier::Open(config, {});
  if (!disk.ok()) _exit(3);
  const uint32_t slots = (*disk)->capacity_slots();
  for (uint64_t b = 0;; ++b) {
    std::vector<StorageTier::Block> writes;
    for (const Op& op : Plan(seed, round, b, slots)) {
      if (!op.key) {
        if (!InvalidateSlot(**disk, op.slot).ok()) _exit(4);
        continue;
      }
      uint8_t* h = host.at(static_cast<uint32_t>(writes.size()));
      Pattern(h, *op.key);
      writes.push_back({.key = KeyOf(*op.key),
                        .parent = ParentOf(*op.key),
                        .slot = op.slot,
                        .host = reinterpret_cast<std::byte*>(h)});
    }
    std::promise<void> all;
    std::atomic<size_t> left{writes.size()};
    std::atomic<bool> failed{false};
    const size_t n = writes.size();
    auto not_started = (*disk)->WriteBlocks(std::move(writes), [&](size_t, absl::Status s) {
      if (!s.ok()) failed = true;
      if (--left == 0) all.set_value();
    });
    if (!not_started.empty()) _exit(5);
    if (n > 0) all.get_future().wait();
    if (failed) _exit(6);
    if (write(report, "x", 1) != 1) _exit(7);
  }
}

TEST_CASE(
    "DiskJournal: after kill -9 at a random point, a restart publishes only what the writer "
    "journaled, every block verifies, and no slot is scanned",
    "[disk][crash][journal]") {
  test::TempDir dir("disk_recovery");
  const uint32_t align = Align(dir.path);
  const uint32_t seed = Seed(1);
  constexpr uint32_t kSlots = 96;
  constexpr uint64_t kMaxRecords = 100;  // compactions every few batches
  const DiskTierConfig config = Config(dir.path, kSlots, align, kMaxRecords);
  std::mt19937 rng(seed);
  std::map<SlotId, uint64_t> state;  // what the last restart published: slot -> key index
  uint64_t recovered = 0;
  for (uint32_t round = 0; round < 4; ++round) {
    CAPTURE(round);
    int report[2];
    REQUIRE(pipe(report) == 0);
    const pid_t child = fork();
    REQUIRE(child >= 0);
    if (child == 0) {
      close(report[0]);
      Writer(config, align, seed, round, report[1]);
    }
    close(report[1]);
    // Kill it after a random number of batches, wherever it is in the next one.
    const uint32_t wait_batches = 1 + rng() % 60;
    uint64_t reported = 0;
    char buf[256];
    while (reported < wait_batches) {
      const ssize_t n = read(report[0], buf, sizeof(buf));
      REQUIRE(n > 0);
      reported += static_cast<uint64_t>(n);
    }
    kill(child, SIGKILL);
    int status = 0;
    REQUIRE(waitpid(child, &status, 0) == child);
    REQUIRE(WIFSIGNALED(status));
    for (ssize_t n; (n = read(report[0], buf, sizeof(buf))) > 0;) reported += n;
    close(report[0]);
    INFO("batches completed " << reported);

    // Per slot, what the writer can have left journaled: the last op on it in the batches it
    // completed (or the last restart's block), or the op of the batch it was killed in.
    std::map<SlotId, std::optional<uint64_t>> done_last;  // nullopt: invalidated
    for (uint64_t b = 0; b < reported; ++b) {
      for (const Op& op : Plan(seed, round, b, kSlots)) done_last[op.slot] = op.key;
    }
    std::map<SlotId, std::optional<uint64_t>> cut;
    for (const Op& op : Plan(seed, round, reported, kSlots)) cut[op.slot] = op.key;

    const auto start = std::chrono::steady_clock::now();
    auto disk = DiskTier::Open(config, {});
    const double ms =
        std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - start).count();
    REQUIRE_OK(disk);
    const DiskTier::Stats st = (*disk)->stats();
    std::printf(
        "disk_recovery_test: round %u: %zu blocks after %lu batches, restart %.2f ms, "
        "%lu bytes read, %lu records\n",
        round, (*disk)->recovered().size(), static_cast<unsigned long>(reported), ms,
        static_cast<unsigned long>(st.recovery_bytes_read),
        static_cast<unsigned long>(st.journal_records_replayed));
    CHECK(st.from_journal);
    CHECK_FALSE(st.from_manifest);
    CHECK(st.recovery_trailer_reads == 0);
    // The checkpoint (at most every slot) and two journal files, each of about max_records
    // records (plus those appended while a checkpoint was written): nothing per slot of the tier.
    // (A loose bound: how far a file grows while a checkpoint is written depends on timing.)
    CHECK(st.recovery_bytes_read <= 128 + kSlots * 36 + 2 * 32 * kMaxRecords * kJournalRecordBytes);

    HostSlots host(1, align);
    std::map<SlotId, uint64_t> now;
    for (const StoredBlock& b : (*disk)->recovered()) {
      const uint64_t k = IndexOf(b.key);
      CAPTURE(b.slot, k);
      REQUIRE(b.key == KeyOf(k));
      CHECK(b.parent == ParentOf(k));
      std::vector<std::optional<uint64_t>> allowed;
      if (cut.contains(b.slot)) allowed.push_back(cut[b.slot]);
      if (done_last.contains(b.slot)) {
        allowed.push_back(done_last[b.slot]);
      } else if (state.contains(b.slot)) {
        allowed.push_back(state[b.slot]);
      }
      CHECK(std::find(allowed.begin(), allowed.end(), std::optional<uint64_t>(k)) != allowed.end());
      REQUIRE_OK(ReadBlock(**disk, b.slot, k, host.at(0)));
      CHECK(Matches(host.at(0), k));
      now[b.slot] = k;
    }
    recovered += now.size();
    state = now;
  }
  // What completed well before a kill is there (a flush is due every millisecond).
  CHECK(recovered > 0);
}

// Blocks 0..9 written into slots 0..9 (records 0..9 of journal.0), then the tier is dropped
// without Close: as after a crash once the journal was flushed.
void WriteTen(const fs::path& dir, uint32_t align) {
  HostSlots host(1, align);
  auto disk = DiskTier::Open(Config(dir, 16, align), {});
  REQUIRE_OK(disk);
  for (uint32_t s = 0; s < 10; ++s) REQUIRE_OK(WriteBlock(**disk, s, s, host.at(0)));
}

std::vector<SlotId> RecoveredSlots(const DiskTier& disk) {
  std::vector<SlotId> slots;
  for (const StoredBlock& b : disk.recovered()) slots.push_back(b.slot);
  return slots;
}

TEST_CASE("DiskJournal: a torn journal tail is detected and the records before it are used",
          "[disk][journal]") {
  test::TempDir dir("disk_recovery_torn");
  const uint32_t align = Align(dir.path);
  WriteTen(dir.path, align);
  const fs::path journal = dir.path / "journal.0";
  REQUIRE(fs::file_size(journal) == 10 * kJournalRecordBytes);
  SECTION("a record cut short") { fs::resize_file(journal, 6 * kJournalRecordBytes + 30); }
  SECTION("a flipped byte") {
    const int fd = open(journal.c_str(), O_RDWR);
    uint8_t b = 0;
    REQUIRE(pread(fd, &b, 1, 6 * kJournalRecordBytes + 17) == 1);
    b ^= 0x04;
    REQUIRE(pwrite(fd, &b, 1, 6 * kJournalRecordBytes + 17) == 1);
    close(fd);
  }
  SECTION("a record in its place from another generation") {
    std::vector<uint8_t> rec(kJournalRecordBytes);
    EncodeJournalRecord({.op = JournalOp::kDrop, .slot = 1}, 12345, 6, rec.data());
    const int fd = open(journal.c_str(), O_RDWR);
    REQUIRE(pwrite(fd, rec.data(), rec.size(), 6 * kJournalRecordBytes) == 64);
    close(fd);
  }
  HostSlots host(1, align);
  auto disk = DiskTier::Open(Config(dir.path, 16, align), {});
  REQUIRE_OK(disk);
  CHECK((*disk)->stats().from_journal);
  CHECK((*disk)->stats().journal_records_replayed == 6);
  CHECK((*disk)->stats().recovery_trailer_reads == 0);
  CHECK(RecoveredSlots(**disk) == std::vector<SlotId>{0, 1, 2, 3, 4, 5});
  for (const StoredBlock& b : (*disk)->recovered()) {
    REQUIRE_OK(ReadBlock(**disk, b.slot, b.slot, host.at(0)));
    CHECK(Matches(host.at(0), b.slot));
  }
}

TEST_CASE("DiskJournal: a torn checkpoint is not trusted: the trailers are scanned instead",
          "[disk][journal]") {
  test::TempDir dir("disk_recovery_ckpt");
  const uint32_t align = Align(dir.path);
  WriteTen(dir.path, align);
  const fs::path checkpoint = dir.path / "checkpoint";
  REQUIRE(fs::exists(checkpoint));
  fs::resize_file(checkpoint, fs::file_size(checkpoint) - 1);
  auto disk = DiskTier::Open(Config(dir.path, 16, align), {});
  REQUIRE_OK(disk);
  CHECK_FALSE((*disk)->stats().from_journal);
  CHECK((*disk)->stats().recovery_trailer_reads == 16);
  CHECK((*disk)->stats().recovery_dropped == 1);  // the checkpoint
  CHECK(RecoveredSlots(**disk) == std::vector<SlotId>{0, 1, 2, 3, 4, 5, 6, 7, 8, 9});
}

TEST_CASE("DiskJournal: slots invalidated (disk.wipe_on_free) before a kill -9 never come back",
          "[disk][crash][journal]") {
  test::TempDir dir("disk_recovery_wipe");
  const uint32_t align = Align(dir.path);
  // No flush but those the invalidations force: the puts reach the journal only with them.
  DiskTierConfig config = Config(dir.path, 16, align);
  config.journal_flush_interval = std::chrono::microseconds(3600LL * 1000000);
  const pid_t child = fork();
  REQUIRE(child >= 0);
  if (child == 0) {
    HostSlots host(1, align);
    auto disk = DiskTier::Open(config, {});
    if (!disk.ok()) _exit(3);
    for (uint32_t s = 0; s < 10; ++s) {
      if (!WriteBlock(**disk, s, s, host.at(0)).ok()) _exit(4);
    }
    for (uint32_t s = 0; s < 10; s += 2) {
      if (!InvalidateSlot(**disk, s).ok()) _exit(5);
    }
    kill(getpid(), SIGKILL);  // no destructor, no flush after the last invalidation
    _exit(6);
  }
  int status = 0;
  REQUIRE(waitpid(child, &status, 0) == child);
  REQUIRE(WIFSIGNALED(status));
  HostSlots host(1, align);
  auto disk = DiskTier::Open(config, {});
  REQUIRE_OK(disk);
  CHECK((*disk)->stats().from_journal);
  CHECK((*disk)->stats().recovery_trailer_reads == 0);
  CHECK(RecoveredSlots(**disk) == std::vector<SlotId>{1, 3, 5, 7, 9});
  for (const StoredBlock& b : (*disk)->recovered()) {
    REQUIRE_OK(ReadBlock(**disk, b.slot, b.slot, host.at(0)));
    CHECK(Matches(host.at(0), b.slot));
  }
}

TEST_CASE("DiskJournal: a slot overwritten after its record is dropped before the write starts",
          "[disk][journal]") {
  test::TempDir dir("disk_recovery_overwrite");
  const uint32_t align = Align(dir.path);
  DiskTierConfig config = Config(dir.path, 16, align);
  config.journal_flush_interval = std::chrono::microseconds(3600LL * 1000000);
  HostSlots host(1, align);
  {
    auto disk = DiskTier::Open(config, {});
    REQUIRE_OK(disk);
    REQUIRE_OK(WriteBlock(**disk, 3, 3, host.at(0)));
    REQUIRE_OK(WriteBlock(**disk, 4, 4, host.at(0)));
    const uint64_t flushes = (*disk)->stats().journal_flushes;
    REQUIRE_OK(WriteBlock(**disk, 3, 7, host.at(0)));  // slot 3 again: its drop is flushed first
    CHECK((*disk)->stats().journal_flushes == flushes + 1);
    REQUIRE_OK(WriteBlock(**disk, 5, 8, host.at(0)));  // an empty slot: nothing to flush
    CHECK((*disk)->stats().journal_flushes == flushes + 1);
  }
  // What the journal held once slot 3's rewrite was submitted: put 3, put 4, drop 3 (the put of
  // key 7 and later were flushed by the destructor: cut them off, as a crash would have).
  fs::resize_file(dir.path / "journal.0", 3 * kJournalRecordBytes);
  auto disk = DiskTier::Open(config, {});
  REQUIRE_OK(disk);
  CHECK(RecoveredSlots(**disk) == std::vector<SlotId>{4});
}

TEST_CASE("DiskJournal: compaction bounds the journal, and a restart replays checkpoint and tail",
          "[disk][journal]") {
  test::TempDir dir("disk_recovery_compact");
  const uint32_t align = Align(dir.path);
  constexpr uint64_t kMaxRecords = 40;
  DiskTierConfig config = Config(dir.path, 32, align, kMaxRecords);
  HostSlots host(1, align);
  std::map<SlotId, uint64_t> last;
  uint64_t max_journal_bytes = 0;
  {
    auto disk = DiskTier::Open(config, {});
    REQUIRE_OK(disk);
    std::mt19937 rng(Seed(2));
    for (uint64_t k = 0; k < 600; ++k) {
      const SlotId s = rng() % 32;
      REQUIRE_OK(WriteBlock(**disk, s, k, host.at(0)));
      last[s] = k;
      for (const char* f : {"journal.0", "journal.1"}) {
        max_journal_bytes = std::max<uint64_t>(max_journal_bytes, fs::file_size(dir.path / f));
      }
    }
    CHECK((*disk)->stats().journal_checkpoints >= 1);
    CHECK((*disk)->stats().journal_records > 600);
  }  // stopped without Close: as a crash after the last flush
  // ~2 records per write (drop, put): compactions keep each file to about max_records of them
  // (plus what is appended while a checkpoint is written: timing, so only a loose bound here).
  CHECK(max_journal_bytes < 600 * kJournalRecordBytes / 2);
  auto disk = DiskTier::Open(config, {});
  REQUIRE_OK(disk);
  CHECK((*disk)->stats().from_journal);
  CHECK((*disk)->stats().recovery_trailer_reads == 0);
  std::map<SlotId, uint64_t> got;
  for (const StoredBlock& b : (*disk)->recovered()) got[b.slot] = IndexOf(b.key);
  CHECK(got == last);
}

// Opens a tier of `config` (`slots` slots) and writes blocks 0 .. writes - 1 round robin over its
// slots: each write past the first `slots` overwrites a block (a drop before it, a put after it).
std::unique_ptr<DiskTier> WriteRoundRobin(const DiskTierConfig& config, uint32_t slots,
                                          uint64_t writes, const HostSlots& host) {
  auto disk = DiskTier::Open(config, {});
  REQUIRE_OK(disk);
  for (uint64_t k = 0; k < writes; ++k) REQUIRE_OK(WriteBlock(**disk, k % slots, k, host.at(0)));
  return std::move(*disk);
}

TEST_CASE(
    "DiskJournal: a write costs no device flush and no flusher wake-up of its own: compactions "
    "are not fsynced, and the flusher is woken only from idle",
    "[disk][journal]") {
  test::TempDir dir("disk_recovery_costs");
  const uint32_t align = Align(dir.path);
  constexpr uint64_t kWrites = 300;
  DiskTierConfig config = Config(dir.path, 8, align, /*journal_max_records=*/40);
  // A flush interval far longer than the test: the flusher, once woken, stays in its timed wait.
  config.journal_flush_interval = std::chrono::seconds(100);
  HostSlots host(1, align);
  const auto disk = WriteRoundRobin(config, 8, kWrites, host);
  const DiskTier::Stats s = disk->stats();
  CHECK(s.journal_records == 2 * kWrites - 8);  // the first write of each slot drops nothing
  // ~14 compactions (40 records each); the epoch's checkpoint at Open is the only one fsynced.
  CHECK(s.journal_checkpoints >= 1);
  CHECK(s.journal_syncs == 1);
  // Each compaction due wakes the flusher once, and it may go idle once after it; the puts
  // between never do, though every drop's flush leaves the next put the first record pending
  // (which used to wake the flusher: one wake-up per write, 300 here).
  INFO("wake-ups " << s.journal_wakeups << ", compactions " << s.journal_checkpoints);
  CHECK(s.journal_wakeups <= 2 * (s.journal_checkpoints + 1) + 1);
}

TEST_CASE(
    "DiskJournal: the last put is flushed by the flusher, also after drops' flushes woke it with "
    "nothing left pending",
    "[disk][journal]") {
  test::TempDir dir("disk_recovery_last_put");
  const uint32_t align = Align(dir.path);
  HostSlots host(1, align);
  const auto disk = WriteRoundRobin(Config(dir.path, 4, align), 4, 50, host);  // flush: 1 ms
  // 50 puts and 46 drops; each drop was flushed with the put before it. Only the flusher writes
  // the last put: within the interval (polled for up to 10 s, so a loaded machine is no failure).
  const uint64_t want = (2 * 50 - 4) * kJournalRecordBytes;
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(10);
  while (fs::file_size(dir.path / "journal.0") < want &&
         std::chrono::steady_clock::now() < deadline) {
    std::this_thread::sleep_for(std::chrono::milliseconds(1));
  }
  CHECK(fs::file_size(dir.path / "journal.0") == want);
  CHECK(disk->stats().journal_records == 2 * 50 - 4);
}

TEST_CASE(
    "DiskJournal: a clean Close leaves a manifest only, as a version without the journal "
    "wrote, and such a directory opens",
    "[disk][journal]") {
  test::TempDir dir("disk_recovery_legacy");
  const uint32_t align = Align(dir.path);
  HostSlots host(1, align);
  {
    auto disk = DiskTier::Open(Config(dir.path, 16, align), {});
    REQUIRE_OK(disk);
    std::vector<StoredBlock> live;
    for (uint32_t s = 0; s < 4; ++s) {
      REQUIRE_OK(WriteBlock(**disk, s, s, host.at(0)));
      live.push_back({s, KeyOf(s), ParentOf(s)});
    }
    REQUIRE_OK((*disk)->Close(live));
  }
  CHECK(fs::exists(dir.path / "manifest"));
  for (const char* f : {"checkpoint", "journal.0", "journal.1"})
    CHECK_FALSE(fs::exists(dir.path / f));
  {
    auto disk = DiskTier::Open(Config(dir.path, 16, align), {});
    REQUIRE_OK(disk);
    CHECK((*disk)->stats().from_manifest);
    CHECK((*disk)->recovered().size() == 4);
    CHECK_FALSE(fs::exists(dir.path / "manifest"));
    CHECK(fs::exists(dir.path / "checkpoint"));
  }
  // A crash of the version before (no manifest, no journal): the trailers are scanned.
  DiskJournal::RemoveFiles(dir.path.string());
  auto disk = DiskTier::Open(Config(dir.path, 16, align), {});
  REQUIRE_OK(disk);
  CHECK_FALSE((*disk)->stats().from_journal);
  CHECK((*disk)->stats().recovery_trailer_reads == 16);
  CHECK((*disk)->recovered().size() == 4);
}

TEST_CASE("DiskJournal: a checkpoint or journal file that is not ours is never followed",
          "[disk][journal]") {
  test::TempDir dir("disk_recovery_hostile");
  const uint32_t align = Align(dir.path);
  WriteTen(dir.path, align);
  const fs::path victim = dir.path / "victim";
  std::ofstream(victim) << "keep me";
  SECTION("a checkpoint that links elsewhere: not read, the trailers are scanned") {
    fs::remove(dir.path / "checkpoint");
    fs::create_symlink("/dev/zero", dir.path / "checkpoint");
    auto disk = DiskTier::Open(Config(dir.path, 16, align), {});
    REQUIRE_OK(disk);
    CHECK_FALSE((*disk)->stats().from_journal);
    CHECK((*disk)->stats().recovery_dropped == 1);
    CHECK((*disk)->recovered().size() == 10);
    CHECK_FALSE(fs::is_symlink(dir.path / "checkpoint"));  // replaced, not followed
  }
  SECTION("a journal file that links elsewhere: an error naming it, its target untouched") {
    fs::remove(dir.path / "journal.1");
    fs::create_symlink(victim, dir.path / "journal.1");
    REQUIRE_CODE(DiskTier::Open(Config(dir.path, 16, align), {}),
                 absl::StatusCode::kFailedPrecondition);
  }
  SECTION("a huge sparse journal: one chunk read, nothing replayed from it") {
    fs::resize_file(dir.path / "journal.1", uint64_t{1} << 40);
    auto disk = DiskTier::Open(Config(dir.path, 16, align), {});
    REQUIRE_OK(disk);
    CHECK((*disk)->stats().from_journal);
    CHECK((*disk)->recovered().size() == 10);
    CHECK((*disk)->stats().recovery_bytes_read < (4u << 20));
  }
  std::ifstream in(victim);
  std::string text;
  std::getline(in, text);
  CHECK(text == "keep me");
}

TEST_CASE(
    "DiskJournal: a Cache killed after Remove with disk.wipe_on_free: the removed blocks "
    "stay gone, the rest is restored from the journal",
    "[disk][crash][journal][cache]") {
  const bool wipe = GENERATE(true, false);
  CAPTURE(wipe);
  test::TempDir dir("disk_recovery_cache");
  test::EngineKv kv({.num_slots = 4});
  Options o = test::MakeOptions(kv, 4);
  const uint32_t align = Align(dir.path);
  const uint64_t slot = DiskTier::HostSlotBytes(kv.layout().block_bytes(), align);
  o.host.capacity_bytes = 4 * slot;
  o.disk.directory = dir.path.string();
  o.disk.capacity_bytes = 64 * slot;
  o.disk.files = 2;
  o.disk.wipe_on_free = wipe;
  std::vector<BlockKey> keys;
  for (uint32_t i = 1; i <= 16; ++i) {
    for (const BlockKey& k : test::Chain(2, i)) keys.push_back(k);
  }
  const std::vector<BlockKey> removed(keys.begin() + 16, keys.end());
  const pid_t child = fork();
  REQUIRE(child >= 0);
  if (child == 0) {
    auto cache = Cache::Create(o);
    if (!cache.ok()) _exit(3);
    for (uint32_t i = 1; i <= 16; ++i) {
      auto r = test::RunSequence(**cache, kv, test::Chain(2, i));
      if (!r.ok() || r->mismatched_bytes != 0) _exit(4);
    }
    if ((*cache)->Stats().disk.used_blocks == 0) _exit(5);
    auto r = (*cache)->Remove(removed);
    if (!r.ok() || r->done != removed.size()) _exit(6);
    // A crash well past the journal's flush interval (10 ms): what completed is journaled. (With
    // the option, Remove's drops flushed it all already; without, only the interval does.)
    usleep(300000);
    kill(getpid(), SIGKILL);  // no clean close: no manifest
    _exit(7);
  }
  int status = 0;
  REQUIRE(waitpid(child, &status, 0) == child);
  REQUIRE(WIFSIGNALED(status));
  REQUIRE(WTERMSIG(status) == SIGKILL);
  CHECK_FALSE(fs::exists(dir.path / "manifest"));
  auto cache = Cache::Create(o);
  REQUIRE_OK(cache);
  CHECK((*cache)->Stats().disk_recovered_blocks > 0);  // the first half survives
  uint32_t back = 0;
  for (size_t i = 0; i < removed.size(); i += 2) {
    auto m = (*cache)->Match(std::span<const BlockKey>(removed).subspan(i, 2));
    REQUIRE_OK(m);
    back += static_cast<uint32_t>(m->size());
  }
  // With the option the journal dropped each removed slot before wiping it; without it the
  // slots still hold their blocks, which verify, and come back (as the trailer scan's would).
  if (wipe) {
    CHECK(back == 0);
  } else {
    CHECK(back > 0);
  }
  REQUIRE_OK((*cache)->CheckInvariants());
}

TEST_CASE(
    "DiskCheckpoint: what it encodes decodes, and a flipped byte or another geometry is "
    "kDataLoss",
    "[disk][journal]") {
  const DiskGeometry g{.layout_fingerprint = 1, .slot_bytes = 8192, .slots = 8, .files = 2};
  const std::vector<StoredBlock> blocks = {{7, KeyOf(1), ParentOf(1)}, {0, KeyOf(2), ParentOf(2)}};
  const std::vector<uint8_t> bytes = EncodeDiskCheckpoint(g, 99, 3, blocks, 41);
  auto c = DecodeDiskCheckpoint(bytes, g);
  REQUIRE_OK(c);
  CHECK((c->epoch == 99 && c->generation == 3 && c->max_sequence == 41));
  REQUIRE(c->blocks.size() == 2);
  CHECK((c->blocks[0].slot == 7 && c->blocks[1].key == KeyOf(2)));
  for (size_t i = 0; i < bytes.size(); i += 3) {
    std::vector<uint8_t> flipped = bytes;
    flipped[i] ^= 0x01;
    CAPTURE(i);
    REQUIRE_CODE(DecodeDiskCheckpoint(flipped, g), absl::StatusCode::kDataLoss);
  }
  REQUIRE_CODE(DecodeDiskCheckpoint(bytes, {1, 8192, 9, 2}), absl::StatusCode::kDataLoss);
  REQUIRE_CODE(DecodeDiskCheckpoint(
                   EncodeDiskCheckpoint(g, 1, 0, {{{1, KeyOf(1), {}}, {2, KeyOf(1), {}}}}, 1), g),
               absl::StatusCode::kDataLoss);
  // A journal record decodes only at its index, with its seed.
  uint8_t rec[kJournalRecordBytes];
  EncodeJournalRecord({.op = JournalOp::kPut, .slot = 5, .key = KeyOf(3), .sequence = 9}, 77, 4,
                      rec);
  JournalRecord r;
  CHECK(DecodeJournalRecord(rec, 77, 4, &r));
  CHECK((r.slot == 5 && r.key == KeyOf(3) && r.sequence == 9 && r.op == JournalOp::kPut));
  CHECK_FALSE(DecodeJournalRecord(rec, 78, 4, &r));
  CHECK_FALSE(DecodeJournalRecord(rec, 77, 5, &r));
}

}  // namespace
}  // namespace kvtier::internal
