#include "lib/tiers/disk_tier.h"

#include <fcntl.h>
#include <signal.h>
#include <sys/mman.h>
#include <sys/resource.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <condition_variable>
#include <cstring>
#include <exception>
#include <filesystem>
#include <fstream>
#include <functional>
#include <future>
#include <iterator>
#include <map>
#include <mutex>
#include <random>
#include <thread>

#include "lib/cache_factory.h"
#include "lib/tiers/block_header.h"
#include "lib/tiers/disk_journal.h"
#include "lib/transfer/emulated_device.h"
#include "test/util/test_device.h"
#include "test/util/test_util.h"

namespace kvtier::internal {
namespace {

namespace fs = std::filesystem;
constexpr uint64_t kBlockBytes = 24 * 1024 + 100;  // deliberately not aligned

// A fresh directory under the test's working directory (the build tree: a real disk).
struct TempDir : test::TempDir {
  TempDir() : test::TempDir("disk_tier_test") {}
};

// Host memory laid out as the cache lays it out: n slots of HostSlotBytes each.
struct HostSlots {
  HostSlots(uint32_t n, uint32_t align) : slot(DiskTier::HostSlotBytes(kBlockBytes, align)) {
    bytes = slot * n;
    base = static_cast<uint8_t*>(
        mmap(nullptr, bytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0));
  }
  ~HostSlots() { munmap(base, bytes); }
  uint8_t* at(uint32_t i) const { return base + uint64_t{i} * slot; }
  iovec iov() const { return {base, bytes}; }
  uint64_t slot, bytes;
  uint8_t* base;
};

BlockKey KeyOf(uint64_t i) { return {0xabc0000 + i, i * 0x9E3779B97F4A7C15ULL + 1}; }
BlockKey ParentOf(uint64_t i) { return i == 0 ? kRootKey : KeyOf(i - 1); }

void Pattern(uint8_t* p, uint64_t key_index) {
  std::mt19937_64 rng(key_index * 7 + 1);
  for (uint64_t i = 0; i < kBlockBytes; ++i) p[i] = static_cast<uint8_t>(rng());
}
bool Matches(const uint8_t* p, uint64_t key_index) {
  std::vector<uint8_t> want(kBlockBytes);
  Pattern(want.data(), key_index);
  return std::memcmp(p, want.data(), kBlockBytes) == 0;
}

// Fault kind 0..3 (EIO, short transfer, bit flip, ENOSPC) at `rate`, the others off.
RandomFaultInjector::Rates RatesFor(int kind, double rate) {
  RandomFaultInjector::Rates r;
  (kind == 0 ? r.eio : kind == 1 ? r.short_transfer : kind == 2 ? r.bit_flip : r.enospc) = rate;
  return r;
}

DiskTierConfig Config(const fs::path& dir, uint32_t slots, uint32_t align) {
  return DiskTierConfig{
      .directory = dir.string(),
      .capacity_bytes = uint64_t{slots} * (DiskTier::HostSlotBytes(kBlockBytes, align)),
      .files = 2,
      .queue_depth = 16,
      .block_bytes = kBlockBytes,
      .layout_fingerprint = 0x1234};
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

uint32_t Align(const fs::path& dir) { return *DiskTier::Alignment(dir.string()); }

TEST_CASE("DiskTier: blocks round-trip byte-exact through O_DIRECT slots", "[disk]") {
  TempDir dir;
  const uint32_t align = Align(dir.path);
  HostSlots host(2, align);
  const iovec mem[] = {host.iov()};
  auto disk = DiskTier::Open(Config(dir.path, 32, align), mem);
  REQUIRE_OK(disk);
  CHECK((*disk)->capacity_slots() == 32);
  CHECK((*disk)->alignment() % 4096 == 0);
  CHECK_FALSE((*disk)->stats().buffered_io);
  for (uint32_t s = 0; s < 32; ++s) REQUIRE_OK(WriteBlock(**disk, s, s, host.at(0)));
  for (uint32_t s = 0; s < 32; ++s) {
    REQUIRE_OK(ReadBlock(**disk, s, s, host.at(1)));
    CHECK(Matches(host.at(1), s));
  }
  CHECK((*disk)->stats().corrupt_reads == 0);
}

TEST_CASE("DiskTier: a corrupted payload, trailer or wrong key reads as kDataLoss, counted",
          "[disk]") {
  TempDir dir;
  const uint32_t align = Align(dir.path);
  HostSlots host(1, align);
  auto disk = DiskTier::Open(Config(dir.path, 4, align), {});
  REQUIRE_OK(disk);
  for (uint32_t s = 0; s < 4; ++s) REQUIRE_OK(WriteBlock(**disk, s, s, host.at(0)));
  // Slot 0 is file 0 offset 0; slot 2 is file 0, second slot. Flip bytes behind the tier's back.
  const int fd = open((dir.path / "blocks.0").c_str(), O_RDWR);
  REQUIRE(fd >= 0);
  uint8_t b = 0;
  REQUIRE(pread(fd, &b, 1, 1000) == 1);
  b ^= 0x10;
  REQUIRE(pwrite(fd, &b, 1, 1000) == 1);  // payload of slot 0
  const off_t trailer2 =
      static_cast<off_t>((*disk)->slot_bytes() + (*disk)->slot_bytes() - align + 40);
  REQUIRE(pwrite(fd, &b, 1, trailer2) == 1);  // trailer of slot 2
  close(fd);
  REQUIRE_CODE(ReadBlock(**disk, 0, 0, host.at(0)), absl::StatusCode::kDataLoss);
  REQUIRE_CODE(ReadBlock(**disk, 2, 2, host.at(0)), absl::StatusCode::kDataLoss);
  REQUIRE_CODE(ReadBlock(**disk, 1, 3, host.at(0)), absl::StatusCode::kDataLoss);  // other key
  REQUIRE_OK(ReadBlock(**disk, 3, 3, host.at(0)));
  CHECK(Matches(host.at(0), 3));
  CHECK((*disk)->stats().corrupt_reads == 3);
}

TEST_CASE("BlockHeader: VerifyBlock accepts only the expected block, intact",
          "[disk][block_header]") {
  constexpr uint32_t kHeaderBytes = 128;
  constexpr uint64_t kFingerprint = 0x1234;
  std::vector<uint8_t> payload(kBlockBytes);
  Pattern(payload.data(), 7);
  std::vector<uint8_t> header(kHeaderBytes);
  EncodeBlockHeader({.key = KeyOf(7),
                     .parent = ParentOf(7),
                     .fingerprint = kFingerprint,
                     .payload_bytes = kBlockBytes,
                     .payload_hash = PayloadHash(payload.data(), kBlockBytes),
                     .sequence = 42},
                    kHeaderBytes, header.data());
  const auto verify = [&](const BlockKey& key, uint64_t fingerprint, uint64_t payload_bytes) {
    return VerifyBlock(header.data(), kHeaderBytes, payload.data(), key, fingerprint,
                       payload_bytes);
  };
  REQUIRE(verify(KeyOf(7), kFingerprint, kBlockBytes));

  SECTION("a flipped payload byte") {
    payload[kBlockBytes / 2] ^= 0x01;
    CHECK_FALSE(verify(KeyOf(7), kFingerprint, kBlockBytes));
  }
  SECTION("another key") { CHECK_FALSE(verify(KeyOf(8), kFingerprint, kBlockBytes)); }
  SECTION("another layout fingerprint") {
    CHECK_FALSE(verify(KeyOf(7), kFingerprint + 1, kBlockBytes));
  }
  SECTION("another payload length") {
    CHECK_FALSE(verify(KeyOf(7), kFingerprint, kBlockBytes - 1));
    CHECK_FALSE(verify(KeyOf(7), kFingerprint, kBlockBytes + 1));
    // A header naming another length, though the hash covers the expected bytes.
    EncodeBlockHeader({.key = KeyOf(7),
                       .parent = ParentOf(7),
                       .fingerprint = kFingerprint,
                       .payload_bytes = kBlockBytes + 1,
                       .payload_hash = PayloadHash(payload.data(), kBlockBytes)},
                      kHeaderBytes, header.data());
    CHECK_FALSE(verify(KeyOf(7), kFingerprint, kBlockBytes));
  }
  SECTION("a damaged header") {
    // Magic, version, size, key, fingerprint, the header's own checksum (the zero padding after
    // kBlockHeaderMinBytes is not covered).
    const size_t byte = GENERATE(as<size_t>{}, 0, 8, 12, 16, 48, kBlockHeaderMinBytes - 1);
    CAPTURE(byte);
    header[byte] ^= 0x01;
    CHECK_FALSE(verify(KeyOf(7), kFingerprint, kBlockBytes));
  }
  SECTION("a header read at another size") {
    CHECK_FALSE(VerifyBlock(header.data(), kHeaderBytes - 8, payload.data(), KeyOf(7), kFingerprint,
                            kBlockBytes));
  }
}

TEST_CASE("Regression #17: blocks of key format 1 are never served under format 2's keys",
          "[disk][block_header][regression]") {
  // Format 2 (length-prefixed salts) changed every key: what format 1 stored is refused by its
  // version, in a header, in a trailer scan and in a directory's kvtier.meta.
  REQUIRE(kBlockHeaderVersion == 2);
  std::vector<uint8_t> header(kBlockHeaderMinBytes);
  EncodeBlockHeader({.key = KeyOf(1), .fingerprint = 0x1234}, kBlockHeaderMinBytes, header.data());
  BlockHeader h;
  REQUIRE(DecodeBlockHeader(header.data(), kBlockHeaderMinBytes, &h));
  LeWriter{header.data() + 8}.U32(1);  // as format 1 wrote it, its checksum recomputed
  LeWriter{header.data() + kBlockHeaderMinBytes - 8}.U64(
      PayloadHash(header.data(), kBlockHeaderMinBytes - 8));  // XXH3-64, as the header's
  CHECK_FALSE(DecodeBlockHeader(header.data(), kBlockHeaderMinBytes, &h));

  TempDir dir;
  const uint32_t align = Align(dir.path);
  HostSlots host(1, align);
  {
    auto disk = DiskTier::Open(Config(dir.path, 8, align), {});
    REQUIRE_OK(disk);
    REQUIRE_OK(WriteBlock(**disk, 0, 0, host.at(0)));
  }
  // The directory as format 1 left it: its kvtier.meta says v1.
  std::string meta;
  {
    std::ifstream in(dir.path / "kvtier.meta", std::ios::binary);
    meta.assign(std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>());
  }
  REQUIRE(meta.rfind("kvtier-disk v2 ", 0) == 0);
  meta[std::string("kvtier-disk v").size()] = '1';
  std::ofstream(dir.path / "kvtier.meta", std::ios::binary) << meta;
  REQUIRE_CODE(DiskTier::Open(Config(dir.path, 8, align), {}),
               absl::StatusCode::kFailedPrecondition);
  DiskTierConfig reset = Config(dir.path, 8, align);
  reset.reset_on_mismatch = true;
  auto disk = DiskTier::Open(reset, {});
  REQUIRE_OK(disk);
  CHECK((*disk)->recovered().empty());
}

TEST_CASE("DiskTier: a clean Close writes a manifest that the next Open recovers from", "[disk]") {
  TempDir dir;
  const uint32_t align = Align(dir.path);
  HostSlots host(1, align);
  std::vector<StoredBlock> live;
  {
    auto disk = DiskTier::Open(Config(dir.path, 8, align), {});
    REQUIRE_OK(disk);
    for (uint32_t s = 0; s < 5; ++s) {
      REQUIRE_OK(WriteBlock(**disk, s, s, host.at(0)));
      live.push_back({s, KeyOf(s), ParentOf(s)});
    }
    REQUIRE_OK((*disk)->Close(live));
  }
  auto disk = DiskTier::Open(Config(dir.path, 8, align), {});
  REQUIRE_OK(disk);
  CHECK((*disk)->stats().from_manifest);
  REQUIRE((*disk)->recovered().size() == 5);
  for (const StoredBlock& b : (*disk)->recovered()) {
    CHECK(b.key == KeyOf(b.slot));
    CHECK(b.parent == ParentOf(b.slot));
    REQUIRE_OK(ReadBlock(**disk, b.slot, b.slot, host.at(0)));
    CHECK(Matches(host.at(0), b.slot));
  }
  CHECK_FALSE(fs::exists(dir.path / "manifest"));  // trusted once
}

TEST_CASE(
    "DiskManifest: what it encodes decodes, and a flipped byte or another geometry is kDataLoss",
    "[disk]") {
  const DiskGeometry geometry{
      .layout_fingerprint = 0x1234, .slot_bytes = 8192, .slots = 8, .files = 2};
  const std::vector<StoredBlock> blocks = {{7, KeyOf(1), ParentOf(1)}, {0, KeyOf(2), ParentOf(2)}};
  const std::vector<uint8_t> bytes = EncodeDiskManifest(geometry, blocks, 41);
  auto m = DecodeDiskManifest(bytes, geometry);
  REQUIRE_OK(m);
  CHECK(m->max_sequence == 41);
  REQUIRE(m->blocks.size() == 2);
  CHECK((m->blocks[0].slot == 7 && m->blocks[0].key == KeyOf(1) && m->blocks[1].slot == 0 &&
         m->blocks[1].parent == ParentOf(2)));
  REQUIRE_CODE(DecodeDiskManifest({}, geometry), absl::StatusCode::kDataLoss);
  for (size_t i = 0; i < bytes.size(); i += 5) {
    std::vector<uint8_t> flipped = bytes;
    flipped[i] ^= 0x10;
    CAPTURE(i);
    REQUIRE_CODE(DecodeDiskManifest(flipped, geometry), absl::StatusCode::kDataLoss);
  }
  for (DiskGeometry other :
       {DiskGeometry{geometry.layout_fingerprint + 1, 8192, 8, 2}, DiskGeometry{0x1234, 4096, 8, 2},
        DiskGeometry{0x1234, 8192, 9, 2}, DiskGeometry{0x1234, 8192, 8, 1}}) {
    REQUIRE_CODE(DecodeDiskManifest(bytes, other), absl::StatusCode::kDataLoss);
  }
  // Entries that contradict the tier or each other.
  REQUIRE_CODE(DecodeDiskManifest(EncodeDiskManifest(geometry, {{{8, KeyOf(1), {}}}}, 1), geometry),
               absl::StatusCode::kDataLoss);
  REQUIRE_CODE(
      DecodeDiskManifest(EncodeDiskManifest(geometry, {{{1, KeyOf(1), {}}, {1, KeyOf(2), {}}}}, 1),
                         geometry),
      absl::StatusCode::kDataLoss);
  REQUIRE_CODE(
      DecodeDiskManifest(EncodeDiskManifest(geometry, {{{1, KeyOf(1), {}}, {2, KeyOf(1), {}}}}, 1),
                         geometry),
      absl::StatusCode::kDataLoss);
  REQUIRE_CODE(DecodeDiskManifest(EncodeDiskManifest(geometry, {}, UINT64_MAX), geometry),
               absl::StatusCode::kDataLoss);
}

TEST_CASE("DiskTier: without a manifest the trailers are scanned, bad ones are dropped", "[disk]") {
  TempDir dir;
  const uint32_t align = Align(dir.path);
  HostSlots host(1, align);
  {
    auto disk = DiskTier::Open(Config(dir.path, 8, align), {});
    REQUIRE_OK(disk);
    for (uint32_t s = 0; s < 6; ++s) REQUIRE_OK(WriteBlock(**disk, s, s, host.at(0)));
    REQUIRE_OK(WriteBlock(**disk, 6, 2, host.at(0)));  // key 2 again, newer, in slot 6
  }                                                    // no Close: as after a crash
  // ... of a version without the journal (lib/tiers/disk_journal.h): no checkpoint to start from.
  DiskJournal::RemoveFiles(dir.path.string());
  const int fd = open((dir.path / "blocks.1").c_str(), O_RDWR);  // slot 1 = file 1, first slot
  const uint32_t zero = 0xdeadbeef;
  REQUIRE(pwrite(fd, &zero, 4,
                 static_cast<off_t>(DiskTier::HostSlotBytes(kBlockBytes, align) - align + 20)) ==
          4);
  close(fd);
  auto disk = DiskTier::Open(Config(dir.path, 8, align), {});
  REQUIRE_OK(disk);
  CHECK_FALSE((*disk)->stats().from_manifest);
  std::map<uint32_t, BlockKey> got;
  for (const StoredBlock& b : (*disk)->recovered()) got[b.slot] = b.key;
  CHECK(got.size() == 5);  // 0, 3, 4, 5 and key 2 from slot 6 (not slot 2); slot 1 dropped
  CHECK_FALSE(got.contains(1));
  CHECK_FALSE(got.contains(2));
  REQUIRE(got.contains(6));
  CHECK(got[6] == KeyOf(2));
  CHECK((*disk)->stats().recovery_dropped == 2);
}

TEST_CASE("DiskTier: bad directories, sizes and a second opener get clear errors", "[disk]") {
  TempDir dir;
  const uint32_t align = Align(dir.path);
  SECTION("missing directory") {
    REQUIRE_CODE(DiskTier::Open(Config(dir.path / "nope", 8, align), {}),
                 absl::StatusCode::kNotFound);
  }
  SECTION("capacity under one slot") {
    DiskTierConfig c = Config(dir.path, 8, align);
    c.capacity_bytes = 4096;
    REQUIRE_CODE(DiskTier::Open(c, {}), absl::StatusCode::kInvalidArgument);
  }
  SECTION("more than the disk holds") {
    DiskTierConfig c = Config(dir.path, 8, align);
    c.capacity_bytes = uint64_t{1} << 46;  // 64 TiB
    c.files = 4096;
    REQUIRE_CODE(DiskTier::Open(c, {}), absl::StatusCode::kResourceExhausted);
  }
  SECTION("two caches on one directory") {
    auto first = DiskTier::Open(Config(dir.path, 8, align), {});
    REQUIRE_OK(first);
    REQUIRE_CODE(DiskTier::Open(Config(dir.path, 8, align), {}),
                 absl::StatusCode::kFailedPrecondition);
    first->reset();
    REQUIRE_OK(DiskTier::Open(Config(dir.path, 8, align), {}));  // the lock went with it
  }
  SECTION("another layout: an error, or an empty start when asked") {
    HostSlots host(1, align);
    {
      auto disk = DiskTier::Open(Config(dir.path, 8, align), {});
      REQUIRE_OK(disk);
      REQUIRE_OK(WriteBlock(**disk, 0, 0, host.at(0)));
    }
    DiskTierConfig other = Config(dir.path, 8, align);
    other.layout_fingerprint = 0x9999;
    REQUIRE_CODE(DiskTier::Open(other, {}), absl::StatusCode::kFailedPrecondition);
    other.reset_on_mismatch = true;
    auto disk = DiskTier::Open(other, {});
    REQUIRE_OK(disk);
    CHECK((*disk)->recovered().empty());
  }
  SECTION("a file system without O_DIRECT is refused unless buffered I/O is allowed") {
    // tmpfs gained O_DIRECT in Linux 6.6: on newer kernels this opens direct, which is fine too.
    if (!fs::is_directory("/dev/shm")) return;
    TempDir shm_holder;
    const fs::path shm = fs::path("/dev/shm") / shm_holder.path.filename();
    fs::create_directories(shm);
    DiskTierConfig c = Config(shm, 4, 4096);
    auto strict = DiskTier::Open(c, {});
    if (!strict.ok()) {
      CHECK(strict.status().code() == absl::StatusCode::kFailedPrecondition);
      c.allow_buffered = true;
      auto buffered = DiskTier::Open(c, {});
      REQUIRE_OK(buffered);
      CHECK((*buffered)->stats().buffered_io);
      HostSlots host(1, (*buffered)->alignment());
      REQUIRE_OK(WriteBlock(**buffered, 0, 0, host.at(0)));
      REQUIRE_OK(ReadBlock(**buffered, 0, 0, host.at(0)));
      CHECK(Matches(host.at(0), 0));
    } else {
      WARN("this kernel's tmpfs supports O_DIRECT");
    }
    fs::remove_all(shm);
  }
}

TEST_CASE("DiskTier: under injected faults a long random workload serves 0 corrupt blocks",
          "[disk][faults]") {
  const auto kind = GENERATE(0, 1, 2, 3);
  CAPTURE(kind);
  RandomFaultInjector injector(/*seed=*/42 + kind, RatesFor(kind, 0.2));
  TempDir dir;
  const uint32_t align = Align(dir.path);
  HostSlots host(1, align);
  const iovec mem[] = {host.iov()};
  DiskTierConfig c = Config(dir.path, 16, align);
  c.injector = &injector;
  auto disk = DiskTier::Open(c, mem);
  REQUIRE_OK(disk);
  std::vector<int64_t> holds(16, -1);  // key index each slot holds, per successful writes
  std::mt19937 rng(7 + kind);
  uint64_t served = 0, corrupt_served = 0, misses = 0;
  for (int step = 0; step < 1500; ++step) {
    const uint32_t slot = rng() % 16;
    if (rng() % 2 == 0) {
      const uint64_t k = rng() % 1000;
      if (WriteBlock(**disk, slot, k, host.at(0)).ok()) {
        holds[slot] = static_cast<int64_t>(k);
      } else {
        holds[slot] = -1;  // a failed write leaves the slot's contents undefined
      }
    } else if (holds[slot] >= 0) {
      if (ReadBlock(**disk, slot, static_cast<uint64_t>(holds[slot]), host.at(0)).ok()) {
        served++;
        corrupt_served += !Matches(host.at(0), static_cast<uint64_t>(holds[slot]));
      } else {
        misses++;
      }
    }
  }
  CHECK(corrupt_served == 0);
  CHECK(served > 100);
  CHECK(injector.injected() > 0);
  if (kind == 1) CHECK(misses == 0);  // short transfers are completed, not failed
  if (kind == 2) CHECK((*disk)->stats().corrupt_reads > 0);
}

TEST_CASE("DiskTier: reads verified in parallel under queue-depth load report every corrupt block",
          "[disk][faults][concurrency]") {
  // Every read is in flight at once (the ring's depth, then queued) and verified on the ring's
  // completion thread (verify_threads 0) or on callback threads; a third get one flipped bit. Each
  // must come back byte-exact or kDataLoss, counted once, and Drain must return only after every
  // verification.
  const uint32_t verify_threads = GENERATE(0u, 2u);
  CAPTURE(verify_threads);
  constexpr uint32_t kSlots = 64;
  TempDir dir;
  const uint32_t align = Align(dir.path);
  HostSlots host(kSlots, align);
  const iovec mem[] = {host.iov()};
  RandomFaultInjector::Rates rates;
  rates.bit_flip = 0.33;
  RandomFaultInjector injector(/*seed=*/9, rates);
  DiskTierConfig c = Config(dir.path, kSlots, align);
  c.injector = &injector;  // flips bits of reads only
  c.verify_threads = verify_threads;
  auto disk = DiskTier::Open(c, mem);
  REQUIRE_OK(disk);
  for (uint32_t i = 0; i < kSlots; ++i) REQUIRE_OK(WriteBlock(**disk, i, 100 + i, host.at(i)));
  const uint64_t flipped_before = injector.injected();
  REQUIRE((*disk)->stats().corrupt_reads == 0);
  for (int round = 0; round < 4; ++round) {
    std::vector<StorageTier::Block> blocks;
    for (uint32_t i = 0; i < kSlots; ++i) {
      std::memset(host.at(i), 0xEE, kBlockBytes);
      blocks.push_back(
          {.key = KeyOf(100 + i), .slot = i, .host = reinterpret_cast<std::byte*>(host.at(i))});
    }
    std::vector<absl::Status> got(kSlots, absl::UnknownError("no callback"));
    std::atomic<uint32_t> callbacks{0};
    REQUIRE((*disk)
                ->ReadBlocks(std::move(blocks),
                             [&](size_t i, const absl::Status& st) {
                               got[i] = st;
                               callbacks++;
                             })
                .empty());
    (*disk)->Drain();
    REQUIRE(callbacks == kSlots);
    for (uint32_t i = 0; i < kSlots; ++i) {
      CAPTURE(round, i, got[i].ToString());
      if (got[i].ok()) {
        CHECK(Matches(host.at(i), 100 + i));
      } else {
        CHECK(got[i].code() == absl::StatusCode::kDataLoss);
      }
    }
  }
  const uint64_t flipped = injector.injected() - flipped_before;
  CHECK(flipped > 0);
  CHECK((*disk)->stats().corrupt_reads == flipped);  // each flip seen, none twice, none missed
}

TEST_CASE("DiskTier: after SIGKILL mid-write, reopening serves only blocks that verify",
          "[disk][crash]") {
  TempDir dir;
  const uint32_t align = Align(dir.path);
  int progress[2];
  REQUIRE(pipe(progress) == 0);
  const pid_t child = fork();
  REQUIRE(child >= 0);
  if (child == 0) {
    // The child writes forever, telling the parent how far it got; the parent kills it.
    close(progress[0]);
    HostSlots host(1, align);
    auto disk = DiskTier::Open(Config(dir.path, 64, align), {});
    if (!disk.ok()) _exit(3);
    for (uint64_t i = 0;; ++i) {
      (void)WriteBlock(**disk, static_cast<SlotId>(i % 64), i, host.at(0));
      if (i == 200) (void)!write(progress[1], "x", 1);
    }
  }
  close(progress[1]);
  char c;
  REQUIRE(read(progress[0], &c, 1) == 1);
  std::mt19937 rng(11);
  usleep(rng() % 20000);  // a random point in the write stream
  kill(child, SIGKILL);
  int status = 0;
  waitpid(child, &status, 0);
  close(progress[0]);
  REQUIRE(WIFSIGNALED(status));

  HostSlots host(1, align);
  auto disk = DiskTier::Open(Config(dir.path, 64, align), {});
  REQUIRE_OK(disk);
  CHECK_FALSE((*disk)->stats().from_manifest);
  uint64_t verified = 0, wrong = 0;
  for (const StoredBlock& b : (*disk)->recovered()) {
    const uint64_t k = b.key.hi - 0xabc0000;
    CHECK(b.key == KeyOf(k));
    if (ReadBlock(**disk, b.slot, k, host.at(0)).ok()) {
      verified++;
      wrong += !Matches(host.at(0), k);
    }
  }
  CHECK(wrong == 0);
  CHECK(verified > 0);
}

// ---- Regression #17: hostile manifests, metadata and slot files ----

// Five blocks (keys 0..4 in slots 0..4) in an 8-slot tier, left as after a crash (no manifest).
void WriteFiveBlocks(const fs::path& dir, uint32_t align) {
  HostSlots host(1, align);
  auto disk = DiskTier::Open(Config(dir, 8, align), {});
  REQUIRE_OK(disk);
  for (uint32_t s = 0; s < 5; ++s) REQUIRE_OK(WriteBlock(**disk, s, s, host.at(0)));
}

// A manifest in DiskTier's format for Config(dir, 8, align), whose header says `count` entries,
// with a valid checksum: only its contents can be wrong.
void WriteManifest(const fs::path& dir, uint32_t align, uint64_t count,
                   const std::vector<StoredBlock>& entries) {
  std::vector<uint8_t> bytes(52 + entries.size() * 36 + 8);
  LeWriter w{bytes.data()};
  w.Bytes("KVTIERM1", 8);
  w.U32(kBlockHeaderVersion);
  w.U64(0x1234);
  w.U64(DiskTier::HostSlotBytes(kBlockBytes, align));
  w.U32(8);
  w.U32(2);
  w.U64(count);
  w.U64(100);
  for (const StoredBlock& b : entries) {
    w.U32(b.slot);
    w.U64(b.key.hi);
    w.U64(b.key.lo);
    w.U64(b.parent.hi);
    w.U64(b.parent.lo);
  }
  w.U64(PayloadHash(bytes.data(), bytes.size() - 8));  // XXH3-64, as the manifest's
  std::ofstream(dir / "manifest", std::ios::binary)
      .write(reinterpret_cast<const char*>(bytes.data()),
             static_cast<std::streamsize>(bytes.size()));
}

std::vector<StoredBlock> FiveEntries() {
  std::vector<StoredBlock> e;
  for (uint32_t s = 0; s < 5; ++s) e.push_back({s, KeyOf(s), ParentOf(s)});
  return e;
}

// Whether `disk` holds exactly what the trailer scan of WriteFiveBlocks finds.
bool RecoveredByScan(const DiskTier& disk) {
  if (disk.stats().from_manifest || disk.recovered().size() != 5) return false;
  for (const StoredBlock& b : disk.recovered()) {
    if (b.slot >= 5 || b.key != KeyOf(b.slot) || b.parent != ParentOf(b.slot)) return false;
  }
  return disk.stats().recovery_dropped >= 1;  // the manifest, counted
}

// Runs `body` in a child process with its address space capped at 1 GiB over the current one (so
// a whole-file read of something huge fails there quickly, not here), and a minute to finish.
// Returns the child's exit code, or 128 + the signal that ended it (an uncaught exception: 134).
int InBoundedChild(const std::function<int()>& body) {
  const pid_t pid = fork();
  if (pid == 0) {
    // The child reports by its exit code only: not through Catch's handlers of the parent's run.
    for (int sig : {SIGABRT, SIGSEGV, SIGBUS, SIGFPE, SIGILL}) signal(sig, SIG_DFL);
    std::set_terminate([] { _exit(128 + SIGABRT); });
#if !defined(__SANITIZE_ADDRESS__) && !defined(__SANITIZE_THREAD__)
    uint64_t vm_kib = 0;
    std::ifstream status("/proc/self/status");
    for (std::string line; std::getline(status, line);) {
      if (line.rfind("VmSize:", 0) == 0) vm_kib = std::stoull(line.substr(7));
    }
    const rlimit cap{.rlim_cur = (vm_kib << 10) + (1ull << 30), .rlim_max = RLIM_INFINITY};
    setrlimit(RLIMIT_AS, &cap);
#endif
    alarm(60);
    _exit(body());
  }
  int st = 0;
  if (pid < 0 || waitpid(pid, &st, 0) != pid) return -1;
  return WIFEXITED(st) ? WEXITSTATUS(st) : 128 + WTERMSIG(st);
}

TEST_CASE("Regression #17: a manifest whose entry count wraps its size check is not trusted",
          "[disk][regression]") {
  TempDir dir;
  const uint32_t align = Align(dir.path);
  WriteFiveBlocks(dir.path, align);
  // 36 * 2^62 wraps to 0: with 64-bit arithmetic the size matches five entries.
  WriteManifest(dir.path, align, 5 + (uint64_t{1} << 62), FiveEntries());
  auto disk = DiskTier::Open(Config(dir.path, 8, align), {});
  REQUIRE_OK(disk);
  CHECK(RecoveredByScan(**disk));
}

TEST_CASE(
    "Regression #17: a manifest naming a slot twice, a slot past the tier or a key twice "
    "is not trusted, and none of it is kept",
    "[disk][regression]") {
  TempDir dir;
  const uint32_t align = Align(dir.path);
  WriteFiveBlocks(dir.path, align);
  std::vector<StoredBlock> entries = FiveEntries();
  SECTION("two keys, one slot") { entries[3].slot = 1; }
  SECTION("a slot past the tier, midway") { entries[2].slot = 8; }
  SECTION("one key in two slots") { entries[4].key = entries[3].key; }
  WriteManifest(dir.path, align, entries.size(), entries);
  auto disk = DiskTier::Open(Config(dir.path, 8, align), {});
  REQUIRE_OK(disk);
  CHECK(RecoveredByScan(**disk));  // the scan's blocks alone, nothing from the manifest
}

TEST_CASE(
    "Regression #17: a manifest that is a directory, a device or a huge sparse file is "
    "not read, and Open does not abort",
    "[disk][regression]") {
  TempDir dir;
  const uint32_t align = Align(dir.path);
  WriteFiveBlocks(dir.path, align);
  const fs::path manifest = dir.path / "manifest";
  const auto open_recovers = [&] {
    auto disk = DiskTier::Open(Config(dir.path, 8, align), {});
    return disk.ok() && RecoveredByScan(**disk) ? 0 : 1;
  };
  SECTION("a directory") {
    fs::create_directory(manifest);
    CHECK(InBoundedChild(open_recovers) == 0);
  }
  SECTION("a symlink to /dev/zero") {
    fs::create_symlink("/dev/zero", manifest);
    CHECK(InBoundedChild(open_recovers) == 0);
  }
  SECTION("a 1 TiB sparse file") {
    std::ofstream{manifest};
    fs::resize_file(manifest, uint64_t{1} << 40);
    CHECK(InBoundedChild(open_recovers) == 0);
  }
}

TEST_CASE(
    "Regression #17: a kvtier.meta that is a directory, a device or a huge sparse file is "
    "an error, not an abort",
    "[disk][regression]") {
  TempDir dir;
  const uint32_t align = Align(dir.path);
  WriteFiveBlocks(dir.path, align);
  const fs::path meta = dir.path / "kvtier.meta";
  fs::remove(meta);
  const bool reset = GENERATE(false, true);
  CAPTURE(reset);
  DiskTierConfig c = Config(dir.path, 8, align);
  c.reset_on_mismatch = reset;
  const auto open_fails = [&] {
    auto disk = DiskTier::Open(c, {});
    return disk.status().code() == absl::StatusCode::kFailedPrecondition ? 0 : 1;
  };
  SECTION("a directory") {
    fs::create_directory(meta);
    CHECK(InBoundedChild(open_fails) == 0);  // not ours to remove, even with reset_on_mismatch
  }
  SECTION("a symlink to /dev/zero") {
    fs::create_symlink("/dev/zero", meta);
    CHECK(InBoundedChild(open_fails) == 0);
  }
  SECTION("a 1 TiB sparse file") {
    std::ofstream{meta};
    fs::resize_file(meta, uint64_t{1} << 40);
    if (!reset) {
      CHECK(InBoundedChild(open_fails) == 0);  // another layout, as far as anyone can tell
    } else {
      CHECK(InBoundedChild([&] { return DiskTier::Open(c, {}).ok() ? 0 : 1; }) == 0);
      CHECK(fs::file_size(meta) < 4096);  // rewritten
    }
  }
}

TEST_CASE(
    "Regression #17: a slot file that is a symlink, another user's or a hard link is "
    "refused, and the file behind it is untouched",
    "[disk][regression]") {
  TempDir dir, outside;
  const uint32_t align = Align(dir.path);
  WriteFiveBlocks(dir.path, align);
  const fs::path victim = outside.path / "victim";
  std::ofstream(victim) << "not a cache file";
  const fs::path slot_file = dir.path / "blocks.0";
  fs::remove(slot_file);
  SECTION("a symlink") { fs::create_symlink(victim, slot_file); }
  SECTION("a hard link") { fs::create_hard_link(victim, slot_file); }
  SECTION("another user's file") {
    if (geteuid() != 0) return;  // only root can give a file away
    std::ofstream{slot_file};
    REQUIRE(chown(slot_file.c_str(), 65534, 65534) == 0);
  }
  for (const bool reset : {false, true}) {
    CAPTURE(reset);
    DiskTierConfig c = Config(dir.path, 8, align);
    c.reset_on_mismatch = reset;  // a matching meta: no reset happens, the files are opened
    REQUIRE_CODE(DiskTier::Open(c, {}), absl::StatusCode::kFailedPrecondition);
    CHECK(fs::file_size(victim) == 16);
  }
}

TEST_CASE("Regression #17: slot files without kvtier.meta are an error unless reset is asked",
          "[disk][regression]") {
  TempDir dir;
  const uint32_t align = Align(dir.path);
  WriteFiveBlocks(dir.path, align);
  fs::remove(dir.path / "kvtier.meta");
  DiskTierConfig c = Config(dir.path, 8, align);
  REQUIRE_CODE(DiskTier::Open(c, {}), absl::StatusCode::kFailedPrecondition);
  CHECK(fs::file_size(dir.path / "blocks.0") > 0);  // the old blocks are still there
  c.reset_on_mismatch = true;
  auto disk = DiskTier::Open(c, {});
  REQUIRE_OK(disk);
  CHECK((*disk)->recovered().empty());
}

TEST_CASE("Regression #17: a reset to fewer files removes the slot files no longer used",
          "[disk][regression]") {
  TempDir dir;
  const uint32_t align = Align(dir.path);
  DiskTierConfig c = Config(dir.path, 8, align);
  c.files = 4;
  REQUIRE_OK(DiskTier::Open(c, {}));
  REQUIRE(fs::exists(dir.path / "blocks.3"));
  c.files = 2;
  c.reset_on_mismatch = true;
  REQUIRE_OK(DiskTier::Open(c, {}));
  CHECK(fs::exists(dir.path / "blocks.1"));
  CHECK_FALSE(fs::exists(dir.path / "blocks.2"));
  CHECK_FALSE(fs::exists(dir.path / "blocks.3"));
}

TEST_CASE("Regression #17: kvtier.lock lives only as long as the tier holding it",
          "[disk][regression]") {
  TempDir dir;
  const uint32_t align = Align(dir.path);
  const fs::path lock = dir.path / "kvtier.lock";
  {
    auto first = DiskTier::Open(Config(dir.path, 8, align), {});
    REQUIRE_OK(first);
    CHECK(fs::exists(lock));
    // A second opener fails and leaves the first's lock in force.
    REQUIRE_CODE(DiskTier::Open(Config(dir.path, 8, align), {}),
                 absl::StatusCode::kFailedPrecondition);
    CHECK(fs::exists(lock));
    REQUIRE_CODE(DiskTier::Open(Config(dir.path, 8, align), {}),
                 absl::StatusCode::kFailedPrecondition);
  }
  CHECK_FALSE(fs::exists(lock));
  DiskTierConfig other = Config(dir.path, 8, align);
  other.layout_fingerprint = 0x9999;
  REQUIRE_CODE(DiskTier::Open(other, {}), absl::StatusCode::kFailedPrecondition);
  CHECK_FALSE(fs::exists(lock));  // a failed Open leaves nothing behind
  REQUIRE_OK(DiskTier::Open(Config(dir.path, 8, align), {}));
}

// ---- The disk tier inside a Cache: cascade, promotion, warm restart, faults ----

namespace cache_level {

using test::EngineKv;

Options DiskOptions(const EngineKv& kv, const fs::path& dir, uint32_t host_blocks,
                    uint32_t disk_blocks) {
  Options o = test::MakeOptions(kv, host_blocks);
  // Capacity in bytes: a disk slot is the block padded to the alignment plus one trailer unit, and
  // so is a host slot when there is a disk tier.
  const uint32_t align = *DiskTier::Alignment(dir.string());
  o.host.capacity_bytes =
      uint64_t{host_blocks} * DiskTier::HostSlotBytes(kv.layout().block_bytes(), align);
  o.disk = {.directory = dir.string(),
            .capacity_bytes =
                uint64_t{disk_blocks} * DiskTier::HostSlotBytes(kv.layout().block_bytes(), align),
            .files = 2};
  return o;
}

// Runs `n` two-block sequences (seeds first..first+n) through the cache; returns mismatched bytes.
// A failed load fails the test unless `failures` says the test injects them.
uint64_t RunAll(Cache& cache, EngineKv& kv, uint32_t first, uint32_t n, uint64_t* matched,
                test::LoadFailures failures = test::LoadFailures::kForbidden) {
  uint64_t bad = 0;
  for (uint32_t i = first; i < first + n; ++i) {
    auto keys = test::Chain(2, i);
    auto r = test::RunSequence(cache, kv, keys, nullptr, failures);
    REQUIRE_OK(r);
    REQUIRE_OK(cache.CheckInvariants());
    bad += r->mismatched_bytes;
    *matched += r->loaded;
  }
  return bad;
}

TEST_CASE("Cache with disk: blocks cascade device -> host -> disk and come back byte-exact",
          "[disk][cache]") {
  TempDir dir;
  EngineKv kv({.num_slots = 4});
  auto cache = Cache::Create(DiskOptions(kv, dir.path, 4, 64));
  REQUIRE_OK(cache);
  uint64_t matched = 0;
  CHECK(RunAll(**cache, kv, 1, 20, &matched) == 0);
  CHECK(matched == 0);
  REQUIRE_OK((*cache)->CheckInvariants());
  CHECK(RunAll(**cache, kv, 1, 20, &matched) == 0);
  CHECK(matched == 40);  // every block of every sequence came back from some tier
  const CacheStats s = (*cache)->Stats();
  CHECK(s.disk.hits > 0);
  CHECK(s.bytes_disk_written > 0);
  CHECK(s.bytes_disk_read > 0);
  CHECK(s.disk_corrupt_reads == 0);
  CHECK(s.disk.used_blocks <= s.disk.capacity_blocks);
  REQUIRE_OK((*cache)->CheckInvariants());
}

TEST_CASE("Cache with disk: a new cache on the same directory serves the previous one's blocks",
          "[disk][cache]") {
  const bool with_manifest = GENERATE(true, false);
  CAPTURE(with_manifest);
  TempDir dir;
  EngineKv kv({.num_slots = 4});
  uint64_t matched = 0;
  {
    auto cache = Cache::Create(DiskOptions(kv, dir.path, 4, 64));
    REQUIRE_OK(cache);
    CHECK(RunAll(**cache, kv, 1, 20, &matched) == 0);
  }  // destroyed: writes the manifest
  if (!with_manifest) fs::remove(dir.path / "manifest");
  auto cache = Cache::Create(DiskOptions(kv, dir.path, 4, 64));
  REQUIRE_OK(cache);
  const CacheStats before = (*cache)->Stats();
  CHECK(before.disk_recovered_blocks > 0);
  REQUIRE_OK((*cache)->CheckInvariants());
  CHECK(RunAll(**cache, kv, 1, 20, &matched) == 0);
  CHECK(matched == 40);  // flush_on_close put every block on disk; all 40 come back
  CHECK((*cache)->Stats().disk.hits > 0);
  REQUIRE_OK((*cache)->CheckInvariants());
}

TEST_CASE(
    "Cache with disk: a clean close persists every device block the disk has room for, "
    "however small the host tier",
    "[disk][cache]") {
  TempDir dir;
  EngineKv kv({.num_slots = 16});
  uint64_t matched = 0;
  {
    // 8 two-block sequences fill the 16 device slots; nothing is demoted before the close, and
    // the host holds 2 blocks: the flush must pass them through it in rounds.
    auto cache = Cache::Create(DiskOptions(kv, dir.path, 2, 64));
    REQUIRE_OK(cache);
    CHECK(RunAll(**cache, kv, 1, 8, &matched) == 0);
    CHECK((*cache)->Stats().device.used_blocks == 16);
    CHECK((*cache)->Stats().bytes_disk_written == 0);
  }
  auto cache = Cache::Create(DiskOptions(kv, dir.path, 2, 64));
  REQUIRE_OK(cache);
  CHECK((*cache)->Stats().disk_recovered_blocks == 16);
  CHECK(RunAll(**cache, kv, 1, 8, &matched) == 0);
  CHECK(matched == 16);
  REQUIRE_OK((*cache)->CheckInvariants());
}

TEST_CASE("Cache with disk: without flush_on_close only blocks already on disk survive",
          "[disk][cache]") {
  TempDir dir;
  EngineKv kv({.num_slots = 4});
  Options o = DiskOptions(kv, dir.path, 4, 64);
  o.disk.flush_on_close = false;
  uint64_t matched = 0;
  {
    auto cache = Cache::Create(o);
    REQUIRE_OK(cache);
    CHECK(RunAll(**cache, kv, 1, 20, &matched) == 0);
  }
  auto cache = Cache::Create(o);
  REQUIRE_OK(cache);
  CHECK(RunAll(**cache, kv, 1, 20, &matched) == 0);
  CHECK(matched < 40);  // the blocks that were only on device or host at shutdown are gone
  REQUIRE_OK((*cache)->CheckInvariants());
}

TEST_CASE("Cache with disk: another layout on the directory is an error unless reset is asked",
          "[disk][cache]") {
  TempDir dir;
  {
    EngineKv kv({.num_slots = 4});
    auto cache = Cache::Create(DiskOptions(kv, dir.path, 4, 16));
    REQUIRE_OK(cache);
  }
  EngineKv other({.layers = 2, .num_slots = 4});
  Options o = DiskOptions(other, dir.path, 4, 16);
  REQUIRE_CODE(Cache::Create(o), absl::StatusCode::kFailedPrecondition);
  o.disk.reset_on_mismatch = true;
  auto cache = Cache::Create(o);
  REQUIRE_OK(cache);
  CHECK((*cache)->Stats().disk_recovered_blocks == 0);
}

TEST_CASE(
    "Cache with disk: a directory written by TP rank 0 is a mismatch for another shard identity, "
    "served again to rank 0",
    "[disk][cache][shard]") {
  const ShardIdentity rank0{.tp_rank = 0, .tp_size = 2, .dtype = "bfloat16", .format = "nhd-v1"};
  struct Other {
    const char* what;
    ShardIdentity shard;
  };
  const Other other = GENERATE(
      Other{"tp rank 1", {.tp_rank = 1, .tp_size = 2, .dtype = "bfloat16", .format = "nhd-v1"}},
      Other{"pp stage 1",
            {.tp_rank = 0,
             .tp_size = 2,
             .pp_rank = 1,
             .pp_size = 2,
             .dtype = "bfloat16",
             .format = "nhd-v1"}},
      Other{"float16", {.tp_rank = 0, .tp_size = 2, .dtype = "float16", .format = "nhd-v1"}},
      Other{"format", {.tp_rank = 0, .tp_size = 2, .dtype = "bfloat16", .format = "hnd-v1"}});
  CAPTURE(other.what);
  TempDir dir;
  EngineKv kv({.num_slots = 4});
  Options o0 = DiskOptions(kv, dir.path, 4, 64);
  o0.shard = rank0;
  Options o1 = o0;  // the same layout shape, another shard
  o1.shard = other.shard;
  uint64_t matched = 0;
  {
    auto cache = Cache::Create(o0);
    REQUIRE_OK(cache);
    CHECK(RunAll(**cache, kv, 1, 20, &matched) == 0);
  }  // flush_on_close: all 40 blocks on disk

  REQUIRE_CODE(Cache::Create(o1), absl::StatusCode::kFailedPrecondition);

  {
    // Warm restart of rank 0 itself still serves every block.
    auto cache = Cache::Create(o0);
    REQUIRE_OK(cache);
    CHECK((*cache)->Stats().disk_recovered_blocks > 0);
    matched = 0;
    CHECK(RunAll(**cache, kv, 1, 20, &matched) == 0);
    CHECK(matched == 40);
  }

  // With reset_on_mismatch the other shard starts empty: none of rank 0's blocks is served.
  o1.disk.reset_on_mismatch = true;
  auto cache = Cache::Create(o1);
  REQUIRE_OK(cache);
  CHECK((*cache)->Stats().disk_recovered_blocks == 0);
  matched = 0;
  CHECK(RunAll(**cache, kv, 1, 20, &matched) == 0);
  CHECK(matched == 0);
  REQUIRE_OK((*cache)->CheckInvariants());
}

TEST_CASE("Cache with disk: a replicated (MLA) directory is served to every TP rank",
          "[disk][cache][shard]") {
  TempDir dir;
  EngineKv kv({.segments = 1, .num_slots = 4});
  Options o0 = DiskOptions(kv, dir.path, 4, 64);
  o0.shard = {.tp_rank = 0, .tp_size = 2, .dtype = "bfloat16", .replicated = true};
  uint64_t matched = 0;
  {
    auto cache = Cache::Create(o0);
    REQUIRE_OK(cache);
    CHECK(RunAll(**cache, kv, 1, 20, &matched) == 0);
  }
  Options o1 = o0;
  o1.shard.tp_rank = 1;
  auto cache = Cache::Create(o1);
  REQUIRE_OK(cache);
  CHECK(RunAll(**cache, kv, 1, 20, &matched) == 0);
  CHECK(matched == 40);
}

TEST_CASE("Cache with disk: bad disk options get clear errors", "[disk][cache]") {
  TempDir dir;
  EngineKv kv({.num_slots = 4});
  Options no_host = DiskOptions(kv, dir.path, 0, 16);
  REQUIRE_CODE(Cache::Create(no_host), absl::StatusCode::kInvalidArgument);
  Options missing = DiskOptions(kv, dir.path, 4, 16);
  missing.disk.directory = (dir.path / "missing").string();
  CHECK_FALSE(Cache::Create(missing).ok());
  Options files = DiskOptions(kv, dir.path, 4, 16);
  files.disk.files = 0;
  REQUIRE_CODE(Cache::Create(files), absl::StatusCode::kInvalidArgument);
  Options policy = DiskOptions(kv, dir.path, 4, 16);
  policy.disk.policy = "no-such-policy";
  REQUIRE_CODE(Cache::Create(policy), absl::StatusCode::kInvalidArgument);
  Options threads = DiskOptions(kv, dir.path, 4, 16);
  threads.disk.verify_threads = 65;
  REQUIRE_CODE(Cache::Create(threads), absl::StatusCode::kInvalidArgument);
  REQUIRE_OK(Cache::Create(DiskOptions(kv, dir.path, 4, 16)));  // and a good one still works
}

TEST_CASE("Cache with disk: under injected disk faults no corrupt block reaches the engine",
          "[disk][cache][faults]") {
  const auto kind = GENERATE(0, 1, 2, 3);
  // Completion work on the ring's thread (the default) and handed to threads.
  const uint32_t verify_threads = GENERATE(0u, 2u);
  CAPTURE(kind, verify_threads);
  RandomFaultInjector injector(/*seed=*/100 + kind, RatesFor(kind, 0.15));
  TempDir dir;
  EngineKv kv({.num_slots = 4});
  Options options = DiskOptions(kv, dir.path, 4, 64);
  options.disk.verify_threads = verify_threads;
  auto cache = CreateCache(options, std::make_unique<EmulatedDevice>(), &injector);
  REQUIRE_OK(cache);
  std::mt19937 rng(5 + kind);
  uint64_t bad = 0, matched = 0;
  for (int step = 0; step < 300; ++step) {
    bad += RunAll(**cache, kv, 1 + rng() % 30, 1, &matched, test::LoadFailures::kExpected);
    if (step % 50 == 0) REQUIRE_OK((*cache)->CheckInvariants());
  }
  CHECK(bad == 0);
  CHECK(matched > 0);
  CHECK(injector.injected() > 0);
  const CacheStats s = (*cache)->Stats();
  if (kind == 2) CHECK(s.disk_corrupt_reads > 0);
  REQUIRE_OK((*cache)->CheckInvariants());
}

TEST_CASE("Regression: with a disk tier the host pool stays within host.capacity_bytes",
          "[disk][cache][options][regression]") {
  TempDir dir;
  // 16 KiB blocks: with the trailer and 4 KiB alignment a host slot is 20 KiB, 25% more.
  EngineKv kv({.layers = 4, .segments = 2, .segment_bytes = 2048, .num_slots = 4});
  const uint64_t block = kv.layout().block_bytes();
  const uint64_t slot = DiskTier::HostSlotBytes(block, Align(dir.path));
  REQUIRE(slot > block);
  Options o = DiskOptions(kv, dir.path, 0, 64);
  SECTION("less than one host slot is kInvalidArgument") {
    o.host.capacity_bytes = slot - 1;
    REQUIRE_CODE(Cache::Create(o), absl::StatusCode::kInvalidArgument);
  }
  SECTION("the slots that fit, and not one byte more") {
    o.host.capacity_bytes = 8 * block;
    auto owned = std::make_unique<test::TestDevice>();
    test::TestDevice* device = owned.get();
    auto cache = CreateCache(o, std::move(owned));
    REQUIRE_OK(cache);
    CHECK(device->max_host_allocation() <= o.host.capacity_bytes);
    CHECK(device->last_host_unit() == slot);  // what no copy crosses: CUDA pins whole slots
    CHECK((*cache)->Stats().host.capacity_blocks == o.host.capacity_bytes / slot);
    uint64_t matched = 0;
    CHECK(RunAll(**cache, kv, 1, 12, &matched) == 0);
    CHECK(RunAll(**cache, kv, 1, 12, &matched) == 0);
    CHECK(matched > 0);
  }
}

// Runs `keys` through a first cache, which flushes them to disk when it closes, then starts a
// cache on `options` with a TestDevice (and `injector`): there the blocks are on disk only.
struct DiskOnlyStart {
  std::unique_ptr<Cache> cache;
  test::TestDevice* device = nullptr;
};
DiskOnlyStart StartWithChainOnDisk(const Options& options, EngineKv& kv,
                                   const std::vector<BlockKey>& keys,
                                   FaultInjector* injector = nullptr) {
  {
    auto cache = Cache::Create(options);
    REQUIRE_OK(cache);
    REQUIRE_OK(test::RunSequence(**cache, kv, keys));
  }
  auto owned = std::make_unique<test::TestDevice>();
  DiskOnlyStart start{.device = owned.get()};
  auto cache = CreateCache(options, std::move(owned), injector);
  REQUIRE_OK(cache);
  start.cache = *std::move(cache);
  return start;
}

// Fails the first read submitted after arm(), with EIO; every other op succeeds.
struct FailNextRead final : FaultInjector {
  Fault Next(IoOp op, uint64_t /*offset*/, uint32_t /*bytes*/) override {
    return op == IoOp::kRead && armed.exchange(false) ? Fault::kEio : Fault::kNone;
  }
  std::atomic<bool> armed{false};
};

TEST_CASE("Regression: a failed load is reported only once no copy can write the lease any more",
          "[disk][cache][faults][regression]") {
  TempDir dir;
  EngineKv kv({.num_slots = 8});
  const Options options = DiskOptions(kv, dir.path, 8, 64);
  const auto keys = test::Chain(4, 1);
  FailNextRead injector;
  const DiskOnlyStart start = StartWithChainOnDisk(options, kv, keys, &injector);
  Cache* cache = start.cache.get();
  test::TestDevice* device = start.device;
  auto match = cache->Match(keys);
  REQUIRE_OK(match);
  REQUIRE(match->blocks_in(Tier::kDisk) == 4);
  auto lease = cache->AllocateDevice(4);
  REQUIRE_OK(lease);
  // The first block's read fails; the copies of all four blocks are still held back (a slow copy
  // engine) when that failure is known.
  injector.armed = true;
  device->HoldHostToDevice();
  auto xfer = cache->Load(*match, *lease);
  REQUIRE_OK(xfer);
  REQUIRE(xfer->blocks_promoted() == 4);
  // Lets the copies go once WaitLayer has returned, or after a while if it is (rightly) waiting
  // for them: without the fix the copies run after the engine has recomputed.
  std::mutex mu;
  std::condition_variable cv;
  bool returned = false;
  std::thread release([&] {
    std::unique_lock lock(mu);
    cv.wait_for(lock, std::chrono::milliseconds(300), [&] { return returned; });
    device->ReleaseHostToDevice();
  });
  const absl::Status failed = xfer->WaitLayer(0);
  {
    std::lock_guard lock(mu);
    returned = true;
  }
  cv.notify_all();
  CHECK_FALSE(failed.ok());
  CHECK(xfer->Poll());  // the whole Transfer had stopped when the error was reported
  // The engine recomputes into its slots straight away (other bytes than the lost blocks').
  const auto recomputed = test::Chain(4, 2);
  const std::vector<uint32_t> slots(lease->slots().begin(), lease->slots().end());
  for (uint32_t i = 0; i < 4; ++i) kv.Write(slots[i], recomputed[i]);
  CHECK_FALSE(xfer->Wait().ok());
  release.join();
  REQUIRE_OK(cache->CheckInvariants());
  for (uint32_t i = 0; i < 4; ++i) CHECK(kv.Mismatches(slots[i], recomputed[i]) == 0);
}

TEST_CASE(
    "Regression #14: an enqueue failure in a Load whose reads wait for host write-backs returns "
    "without waiting for the reads under the index lock",
    "[disk][cache][faults]") {
  TempDir dir;
  EngineKv kv({.num_slots = 4});
  auto owned = std::make_unique<test::TestDevice>();
  test::TestDevice* device = owned.get();
  auto cache = CreateCache(DiskOptions(kv, dir.path, 4, 64), std::move(owned));
  REQUIRE_OK(cache);
  uint64_t matched = 0;
  // Early sequences cascade to the disk; the host fills with recent blocks not yet written below.
  REQUIRE(RunAll(**cache, kv, 1, 12, &matched) == 0);
  const std::vector<BlockKey> keys = test::Chain(2, 1);
  auto match = (*cache)->Match(keys);
  REQUIRE_OK(match);
  REQUIRE(match->size() == 2);
  REQUIRE(match->tiers[0] == Tier::kDisk);
  auto lease = (*cache)->AllocateDevice(*match, 2);
  REQUIRE_OK(lease);
  // The Load's host slots are taken from host victims whose write-backs are still reading them:
  // the reads start once those writes complete, and a write's completion takes the index lock.
  // Waiting for the reads under that lock (the old failure path) never returns.
  device->FailNextReadWait();
  auto transfer = (*cache)->Load(*match, *lease);
  CHECK(device->read_wait_failed());
  CHECK(transfer.status().code() == absl::StatusCode::kInternal);
  // The reads end on their own; the promotions then fail, and the cache stays usable.
  REQUIRE_OK((*cache)->Release(*lease));
  REQUIRE(RunAll(**cache, kv, 1, 12, &matched) == 0);
  REQUIRE_OK((*cache)->CheckInvariants());
}

TEST_CASE(
    "A Load that waits for disk reads does not hold back a host hit enqueued after it, and the "
    "layer counters still grow in Load order",
    "[disk][cache]") {
  TempDir dir;
  EngineKv kv({.num_slots = 4});
  const Options options = DiskOptions(kv, dir.path, 8, 64);
  const auto on_disk = test::Chain(2, 1);
  const DiskOnlyStart start = StartWithChainOnDisk(options, kv, on_disk);
  Cache* cache = start.cache.get();
  test::TestDevice* device = start.device;
  const auto on_host = test::Chain(2, 2);
  REQUIRE_OK(test::RunSequence(*cache, kv, on_host));
  for (uint32_t seed : {3, 4}) {  // fill the 4 device slots: on_host's blocks go to the host
    REQUIRE_OK(test::RunSequence(*cache, kv, test::Chain(2, seed)));
  }
  auto disk_match = cache->Match(on_disk);
  REQUIRE_OK(disk_match);
  REQUIRE(disk_match->blocks_in(Tier::kDisk) == 2);
  auto host_match = cache->Match(on_host);
  REQUIRE_OK(host_match);
  REQUIRE(host_match->blocks_in(Tier::kHost) == 2);

  auto disk_lease = cache->AllocateDevice(2);
  REQUIRE_OK(disk_lease);
  device->HoldReads();  // the disk reads take as long as the test wants
  auto slow = cache->Load(*disk_match, *disk_lease);
  REQUIRE_OK(slow);
  // The counter stream writes every earlier Load's number (asynchronously), then waits for this
  // one's held layer.
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(10);
  const uint32_t before = slow->sequence() - 1;
  while (device->counter(0) != before && std::chrono::steady_clock::now() < deadline) {
    std::this_thread::sleep_for(std::chrono::milliseconds(1));
  }
  REQUIRE(device->counter(0) == before);
  auto host_lease = cache->AllocateDevice(2);
  REQUIRE_OK(host_lease);
  auto fast = cache->Load(*host_match, *host_lease);
  REQUIRE_OK(fast);
  REQUIRE(slow->sequence() < fast->sequence());
  // The host hit finishes while the disk-gated Load still waits (on one shared stream it would
  // wait behind the reads: the deadline ends the wait then, and the checks fail).
  while (!fast->Poll() && std::chrono::steady_clock::now() < deadline) {
    std::this_thread::sleep_for(std::chrono::milliseconds(1));
  }
  const bool fast_finished = fast->Poll();
  const bool slow_waiting = !slow->Poll();
  // The counters say "every Load up to n has layer 0": not the host hit's number yet.
  const uint32_t counter_meanwhile = device->counter(0);
  device->ReleaseReads();
  CHECK(fast_finished);
  CHECK(slow_waiting);
  CHECK(counter_meanwhile == before);
  REQUIRE_OK(fast->Wait());
  REQUIRE_OK(slow->Wait());
  // The counter stream writes the host hit's number once the disk-gated Load's layer is done.
  while (device->counter(0) != fast->sequence() && std::chrono::steady_clock::now() < deadline) {
    std::this_thread::sleep_for(std::chrono::milliseconds(1));
  }
  CHECK(device->counter(0) == fast->sequence());
  for (uint32_t i = 0; i < 2; ++i) {
    CHECK(kv.Mismatches(disk_lease->slots()[i], on_disk[i]) == 0);
    CHECK(kv.Mismatches(host_lease->slots()[i], on_host[i]) == 0);
  }
  REQUIRE_OK(cache->Release(*disk_lease));
  REQUIRE_OK(cache->Release(*host_lease));
  REQUIRE_OK(cache->CheckInvariants());
}

// ---- Partial transfers: a Load keeps the blocks before the first one that fails ----

// The slot (in the only slot file: Options.disk.files = 1) whose trailer names `key`.
uint64_t DiskSlotOf(const fs::path& dir, const BlockKey& key, uint64_t slot_bytes) {
  uint8_t needle[16];
  LeWriter w{needle};
  w.U64(key.hi);
  w.U64(key.lo);
  for (const auto& entry : fs::directory_iterator(dir)) {
    if (entry.path().filename().string().rfind("blocks.", 0) != 0) continue;
    std::ifstream file(entry.path(), std::ios::binary);
    const std::string bytes((std::istreambuf_iterator<char>(file)),
                            std::istreambuf_iterator<char>());
    const size_t at = bytes.find(std::string(reinterpret_cast<const char*>(needle), 16));
    if (at != std::string::npos) return at / slot_bytes;
  }
  FAIL("no slot names key " << key.ToHex());
  return 0;
}

// Flips a payload byte of disk slot `slot` (in the only slot file).
void DamageSlot(const fs::path& dir, uint64_t slot, uint64_t slot_bytes) {
  for (const auto& entry : fs::directory_iterator(dir)) {
    if (entry.path().filename().string().rfind("blocks.", 0) != 0) continue;
    std::fstream file(entry.path(), std::ios::in | std::ios::out | std::ios::binary);
    const auto off = static_cast<std::streamoff>(slot * slot_bytes + 64);
    char c = 0;
    file.seekg(off);
    file.read(&c, 1);
    c = static_cast<char>(c ^ 0x5a);
    file.seekp(off);
    file.write(&c, 1);
    REQUIRE(file);
  }
}

// Fails every read of the disk offset `offset` with EIO while armed.
struct FailReadAt final : FaultInjector {
  explicit FailReadAt(uint64_t at) : offset(at) {}
  Fault Next(IoOp op, uint64_t off, uint32_t /*bytes*/) override {
    return armed && op == IoOp::kRead && off == offset ? Fault::kEio : Fault::kNone;
  }
  const uint64_t offset;
  std::atomic<bool> armed{true};
};

struct PartialSetup {
  PartialSetup(const fs::path& dir, const EngineKv& kv, uint32_t n) : keys(test::Chain(n, 7)) {
    options = DiskOptions(kv, dir, 8, 64);
    options.disk.files = 1;
    slot_bytes = DiskTier::HostSlotBytes(kv.layout().block_bytes(), *DiskTier::Alignment(dir));
  }
  Options options;
  std::vector<BlockKey> keys;
  uint64_t slot_bytes = 0;
};

TEST_CASE("Partial transfer: a Load whose k-th disk block fails keeps the blocks before it",
          "[disk][cache][faults]") {
  constexpr uint32_t kN = 6;
  const uint32_t k = GENERATE(0u, 2u, 5u);
  const bool corrupt = GENERATE(true, false);  // fails to verify (kDataLoss), else EIO
  CAPTURE(k, corrupt);
  TempDir dir;
  EngineKv kv({.num_slots = 8});
  const PartialSetup p(dir.path, kv, kN);
  {
    auto cache = Cache::Create(p.options);
    REQUIRE_OK(cache);
    REQUIRE_OK(test::RunSequence(**cache, kv, p.keys));
  }  // flush_on_close: the blocks are on disk only when the next cache starts
  const uint64_t slot = DiskSlotOf(dir.path, p.keys[k], p.slot_bytes);
  if (corrupt) DamageSlot(dir.path, slot, p.slot_bytes);
  FailReadAt injector(corrupt ? UINT64_MAX : slot * p.slot_bytes);
  auto cache = CreateCache(p.options, std::make_unique<EmulatedDevice>(), &injector);
  REQUIRE_OK(cache);
  auto match = (*cache)->Match(p.keys);
  REQUIRE_OK(match);
  REQUIRE(match->blocks_in(Tier::kDisk) == kN);
  auto lease = (*cache)->AllocateDevice(kN);
  REQUIRE_OK(lease);
  auto xfer = (*cache)->Load(*match, *lease);
  REQUIRE_OK(xfer);
  CHECK(xfer->blocks() == kN);
  const absl::Status failed = xfer->Wait();
  REQUIRE_FALSE(failed.ok());
  if (corrupt) CHECK(failed.code() == absl::StatusCode::kDataLoss);
  CHECK(xfer->blocks_loaded() == k);
  CHECK(xfer->WaitLayer(0).code() == failed.code());  // never "ready" for the failed blocks
  REQUIRE_OK((*cache)->CheckInvariants());
  const std::vector<uint32_t> slots(lease->slots().begin(), lease->slots().end());
  for (uint32_t i = 0; i < k; ++i) CHECK(kv.Mismatches(slots[i], p.keys[i]) == 0);
  const CacheStats s = (*cache)->Stats();
  CHECK(s.disk_corrupt_reads == (corrupt ? 1u : 0u));
  CHECK(s.loads_failed == 1);
  CHECK(s.loads_partial == (k > 0 ? 1u : 0u));
  CHECK(s.blocks_load_lost == kN - k);
  // A later Match finds the first k on the device; past them, only a block that failed to verify
  // is gone (an I/O error leaves it on disk), which ends the reachable prefix.
  auto later = (*cache)->Match(p.keys);
  REQUIRE_OK(later);
  CHECK(later->size() == (corrupt ? k : kN));
  CHECK(later->blocks_in(Tier::kDevice) == k);
  // Slots [k, n) are misses the engine writes: it recomputes them and commits the whole chain.
  for (uint32_t i = k; i < kN; ++i) kv.Write(slots[i], p.keys[i]);
  REQUIRE_OK((*cache)->Commit(p.keys, *lease));
  REQUIRE_OK((*cache)->Release(*lease));
  REQUIRE_OK((*cache)->CheckInvariants());
  auto whole = (*cache)->Match(p.keys);
  REQUIRE_OK(whole);
  CHECK(whole->size() == kN);
  injector.armed = false;  // the disk is sound again
  auto again = test::RunSequence(**cache, kv, p.keys);
  REQUIRE_OK(again);
  CHECK(again->loaded == kN);
  CHECK(again->mismatched_bytes == 0);
  REQUIRE_OK((*cache)->CheckInvariants());
}

TEST_CASE("Partial transfer: a Connector load reports the dst blocks with load errors",
          "[disk][connector][faults]") {
  constexpr uint32_t kN = 5;
  const uint32_t k = GENERATE(0u, 3u);
  CAPTURE(k);
  TempDir dir;
  EngineKv kv({.num_slots = 16});
  PartialSetup p(dir.path, kv, kN);
  p.options.device.capacity_slots = 0;
  {
    auto c = CreateConnector(p.options, std::make_unique<EmulatedDevice>());
    REQUIRE_OK(c);
    std::vector<uint32_t> src;
    for (uint32_t i = 0; i < kN; ++i) {
      kv.Write(i, p.keys[i]);
      src.push_back(i);
    }
    auto store = (*c)->Store(p.keys, 0, src);
    REQUIRE_OK(store);
    REQUIRE_OK(store->Wait());
  }  // flush_on_close: on disk only when the next connector starts
  const uint64_t slot = DiskSlotOf(dir.path, p.keys[k], p.slot_bytes);
  DamageSlot(dir.path, slot, p.slot_bytes);
  auto c = CreateConnector(p.options, std::make_unique<EmulatedDevice>());
  REQUIRE_OK(c);
  auto found = (*c)->Lookup(p.keys, 0);
  REQUIRE_OK(found);
  REQUIRE(found->blocks == kN);
  std::vector<uint32_t> dst;
  for (uint32_t i = 0; i < kN; ++i) dst.push_back(8 + i);
  auto xfer = (*c)->Load(p.keys, 0, dst, /*request_id=*/9);
  REQUIRE_OK(xfer);
  CHECK(xfer->Wait().code() == absl::StatusCode::kDataLoss);
  CHECK(xfer->blocks_loaded() == k);
  for (uint32_t i = 0; i < k; ++i) CHECK(kv.Mismatches(dst[i], p.keys[i]) == 0);
  auto finished = (*c)->TakeFinished();
  REQUIRE(finished.size() == 1);
  CHECK(finished[0].request_id == 9);
  CHECK(finished[0].blocks == kN);
  CHECK(finished[0].blocks_loaded == k);  // dst[k, n) are the blocks with load errors
  CHECK((*c)->engine_blocks_busy() == 0);
  REQUIRE_OK((*c)->CheckInvariants());
  // The blocks before the failed one stay cached on the host: a later lookup finds them.
  auto later = (*c)->Lookup(p.keys, 0);
  REQUIRE_OK(later);
  CHECK(later->blocks == k);
}

TEST_CASE("Partial transfer: concurrent Loads of one damaged chain all stop at the same block",
          "[disk][cache][faults]") {
  constexpr uint32_t kN = 6, kK = 3, kThreads = 4;
  TempDir dir;
  EngineKv kv({.num_slots = 32});
  PartialSetup p(dir.path, kv, kN);
  p.options.host.capacity_bytes = 32 * p.slot_bytes;
  {
    auto cache = Cache::Create(p.options);
    REQUIRE_OK(cache);
    REQUIRE_OK(test::RunSequence(**cache, kv, p.keys));
  }
  FailReadAt injector(DiskSlotOf(dir.path, p.keys[kK], p.slot_bytes) * p.slot_bytes);
  auto cache = CreateCache(p.options, std::make_unique<EmulatedDevice>(), &injector);
  REQUIRE_OK(cache);
  std::vector<std::thread> threads;
  std::atomic<uint64_t> bad{0}, wrong_count{0};
  for (uint32_t t = 0; t < kThreads; ++t) {
    threads.emplace_back([&] {
      auto match = (*cache)->Match(p.keys);
      auto lease = (*cache)->AllocateDevice(kN);
      if (!match.ok() || !lease.ok()) {
        wrong_count++;
        return;
      }
      auto xfer = (*cache)->Load(*match, *lease);
      if (!xfer.ok()) {
        wrong_count++;
        return;
      }
      xfer->Wait().IgnoreError();
      // Another thread's Load may have brought (or be bringing) a block: this one stops at a
      // block still in flight elsewhere, or at the failing one; never past it.
      const uint32_t loaded = xfer->blocks_loaded();
      if (loaded > kK) wrong_count++;
      for (uint32_t i = 0; i < loaded; ++i) bad += kv.Mismatches(lease->slots()[i], p.keys[i]);
      (*cache)->Release(*lease).IgnoreError();
    });
  }
  for (std::thread& t : threads) t.join();
  CHECK(bad == 0);
  CHECK(wrong_count == 0);
  REQUIRE_OK((*cache)->CheckInvariants());
  auto later = (*cache)->Match(p.keys);
  REQUIRE_OK(later);
  CHECK(later->size() == kN);  // an I/O error leaves every block on disk
  CHECK((*cache)->Stats().loads_failed >= 1);
}

}  // namespace cache_level

}  // namespace
}  // namespace kvtier::internal
