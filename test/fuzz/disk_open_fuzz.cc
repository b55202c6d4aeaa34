// Fuzz target: a disk tier's warm restart (DiskTier::Open, lib/tiers/disk_tier.h) on a directory
// whose kvtier.meta, manifest and slot trailers come from the input: what a crash, another
// program or a hostile user may leave there. Each run empties one scratch directory (under
// $TMPDIR, else /dev/shm, else /tmp; removed at exit) and writes:
//   kvtier.meta  the input's bytes, or (mode bit 0) the line this geometry writes
//   manifest     the input's bytes, or (mode bit 1) a well-formed manifest of the input's entries
//                (36 bytes each: slot u8 (up to twice the tier), key, parent, padding), or
//                (mode bit 2) none
//   blocks.0     trailers at the slots' trailer offsets: the input's bytes (80 a slot), or (mode
//                bit 3) well-formed trailers of the input's blocks (48 bytes each: key, parent,
//                sequence u32, slot u8, flags u8 (1: another fingerprint, 2: another size), 2 more)
// and opens a tier of 8 slots there (mode bit 4: with reset_on_mismatch). Input: mode byte, meta
// size u16, manifest size u16, the meta's bytes, the manifest's, then the trailers'.
// An Open that succeeds recovers each slot and each key at most once, inside the tier; closed
// cleanly and opened again, it recovers the same blocks from its manifest.
#include <stdlib.h>
#include <unistd.h>

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <string>
#include <vector>

#include "lib/tiers/block_header.h"
#include "lib/tiers/disk_tier.h"
#include "test/fuzz/disk_fuzz_util.h"
#include "test/fuzz/fuzz_check.h"

namespace kvtier::internal {
namespace {

namespace fs = std::filesystem;
constexpr uint32_t kSlots = 8;
constexpr uint64_t kBlockBytes = 4096;
constexpr uint64_t kFingerprint = 0x6b76746965720002;

struct Scratch {
  Scratch() {
    dir = MakeFuzzScratchDir("kvtier-disk-open-fuzz");  // tmpfs if any: Close syncs three times
    absl::StatusOr<uint32_t> a = DiskTier::Alignment(dir);
    KVTIER_FUZZ_CHECK(a.ok());
    alignment = *a;
    slot_bytes = DiskTier::HostSlotBytes(kBlockBytes, alignment);
    // The line this geometry writes, from a first Open of the empty directory.
    {
      auto disk = DiskTier::Open(Config(false), {});
      KVTIER_FUZZ_CHECK(disk.ok());
    }
    std::ifstream in(fs::path(dir) / "kvtier.meta", std::ios::binary);
    meta.assign(std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>());
    KVTIER_FUZZ_CHECK(!meta.empty());
  }
  ~Scratch() {
    std::error_code ec;
    fs::remove_all(dir, ec);
  }
  DiskTierConfig Config(bool reset) const {
    return DiskTierConfig{
        .directory = dir,
        .capacity_bytes = kSlots * DiskTier::HostSlotBytes(kBlockBytes, alignment),
        .files = 1,
        .queue_depth = 8,
        .block_bytes = kBlockBytes,
        .layout_fingerprint = kFingerprint,
        .reset_on_mismatch = reset,
        .allow_buffered = true};
  }
  void Write(const std::string& name, const void* data, size_t size, uint64_t offset = 0) const {
    std::fstream f(fs::path(dir) / name, std::ios::binary | std::ios::in | std::ios::out);
    if (!f) f.open(fs::path(dir) / name, std::ios::binary | std::ios::out);
    f.seekp(static_cast<std::streamoff>(offset));
    f.write(static_cast<const char*>(data), static_cast<std::streamsize>(size));
  }

  std::string dir;
  uint32_t alignment = 4096;
  uint64_t slot_bytes = 0;
  std::string meta;
};

void Run(const uint8_t* data, size_t size) {
  static const Scratch s;  // removed at exit
  if (size < 5) return;
  const uint8_t mode = data[0];
  const size_t meta_len = std::min<size_t>(data[1] | data[2] << 8, size - 5);
  const size_t manifest_len = std::min<size_t>(data[3] | data[4] << 8, size - 5 - meta_len);
  const uint8_t* meta = data + 5;
  const uint8_t* manifest = meta + meta_len;
  const uint8_t* trailers = manifest + manifest_len;
  const size_t trailers_len = size - 5 - meta_len - manifest_len;

  std::error_code ec;
  for (const auto& entry : fs::directory_iterator(s.dir, ec)) fs::remove_all(entry.path(), ec);
  if (mode & 1) {
    s.Write("kvtier.meta", s.meta.data(), s.meta.size());
  } else {
    s.Write("kvtier.meta", meta, meta_len);
  }
  const DiskGeometry geometry{
      .layout_fingerprint = kFingerprint, .slot_bytes = s.slot_bytes, .slots = kSlots, .files = 1};
  if (mode & 4) {
    // no manifest
  } else if (mode & 2) {
    std::vector<StoredBlock> entries;
    for (size_t i = 0; i + 36 <= manifest_len; i += 36) {
      LeReader r{manifest + i + 1};
      StoredBlock b{.slot = manifest[i] % (2 * kSlots)};
      b.key = {r.U64(), r.U64()};
      b.parent = {r.U64(), r.U64()};
      entries.push_back(b);
    }
    const std::vector<uint8_t> bytes = EncodeDiskManifest(geometry, entries, entries.size());
    s.Write("manifest", bytes.data(), bytes.size());
  } else {
    s.Write("manifest", manifest, manifest_len);
  }
  const uint64_t padded = s.slot_bytes - s.alignment;
  std::vector<uint8_t> trailer(s.alignment);
  if (mode & 8) {
    for (size_t i = 0; i + 48 <= trailers_len; i += 48) {
      const uint8_t* p = trailers + i;
      LeReader r{p};
      BlockHeader h;
      h.key = {r.U64(), r.U64()};
      h.parent = {r.U64(), r.U64()};
      h.sequence = r.U32();
      const uint32_t slot = p[36] % kSlots;
      h.fingerprint = kFingerprint ^ (p[37] & 1);
      h.payload_bytes = kBlockBytes + ((p[37] >> 1) & 1);
      EncodeBlockHeader(h, s.alignment, trailer.data());
      s.Write("blocks.0", trailer.data(), trailer.size(), slot * s.slot_bytes + padded);
    }
  } else {
    for (uint32_t slot = 0; slot < kSlots && slot * 80 < trailers_len; ++slot) {
      std::fill(trailer.begin(), trailer.end(), 0);
      std::memcpy(trailer.data(), trailers + slot * 80,
                  std::min<size_t>(80, trailers_len - slot * 80));
      s.Write("blocks.0", trailer.data(), trailer.size(), slot * s.slot_bytes + padded);
    }
  }

  std::vector<StoredBlock> recovered;
  {
    auto disk = DiskTier::Open(s.Config(mode & 16), {});
    if (!disk.ok()) return;
    recovered = (*disk)->recovered();
    CheckStoredBlocks(recovered, kSlots);
    if (!(*disk)->Close(recovered).ok()) return;
  }
  auto again = DiskTier::Open(s.Config(false), {});
  KVTIER_FUZZ_CHECK(again.ok());
  KVTIER_FUZZ_CHECK((*again)->stats().from_manifest);
  std::vector<StoredBlock> back = (*again)->recovered();
  auto by_slot = [](const StoredBlock& a, const StoredBlock& b) { return a.slot < b.slot; };
  std::sort(recovered.begin(), recovered.end(), by_slot);
  std::sort(back.begin(), back.end(), by_slot);
  KVTIER_FUZZ_CHECK(back.size() == recovered.size());
  for (size_t i = 0; i < back.size(); ++i) {
    KVTIER_FUZZ_CHECK(back[i].slot == recovered[i].slot && back[i].key == recovered[i].key &&
                      back[i].parent == recovered[i].parent);
  }
}

}  // namespace
}  // namespace kvtier::internal

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  kvtier::internal::Run(data, size);
  return 0;
}
