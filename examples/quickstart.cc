// quickstart: a small "engine" on kvtier's emulated device, with all three tiers.
//
// A shared system prompt and eight multi-turn conversations, interleaved so that the device tier
// (48 blocks) and the host tier (32 blocks) overflow: blocks are demoted to pinned host memory and
// on to an NVMe directory (io_uring, O_DIRECT), and promoted back when their conversation returns.
// The directory (argv[1], default ./kvtier-quickstart-data) survives the run: run it again and the
// first requests are served from the previous run's disk blocks. Each request follows the engine
// lifecycle of docs/integration.md: hash the prompt into block keys, Match, AllocateDevice, Load
// (waiting layer by layer, as attention would), compute the blocks not loaded, Commit, release.
// Every loaded byte is checked against what was committed under its key. Exit status 1 on any
// mismatch.
#include <cinttypes>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <memory>
#include <string>
#include <vector>

#include "kvtier/cache.h"

namespace {

constexpr uint32_t kLayers = 8;
constexpr uint32_t kTokensPerBlock = 16;
constexpr uint64_t kSegmentBytes = kTokensPerBlock * 8 /*kv heads*/ * 64 /*head dim*/ * 2 /*fp16*/;
constexpr uint32_t kDeviceSlots = 48;
constexpr uint32_t kHostBlocks = 32;
constexpr uint32_t kDiskBlocks = 512;

// What "prefill" writes for a block: a byte stream derived from its key, layer and segment.
uint8_t Expected(const kvtier::BlockKey& key, uint32_t layer, uint32_t seg, uint64_t i) {
  uint64_t x = key.hi ^ (key.lo + 0x9E3779B97F4A7C15ULL * (layer * 2 + seg + 1)) ^ (i / 8);
  x ^= x >> 31;
  x *= 0xbf58476d1ce4e5b9ULL;
  x ^= x >> 29;
  return static_cast<uint8_t>(x >> (8 * (i % 8)));
}

struct EngineKv {  // the engine's KV tensors: per layer, K and V, [slot][bytes]
  std::vector<std::unique_ptr<uint8_t[]>> tensors;
  kvtier::BlockLayout layout{.tokens_per_block = kTokensPerBlock, .num_slots = kDeviceSlots};
  EngineKv() {
    for (uint32_t l = 0; l < kLayers; ++l) {
      kvtier::LayerLayout layer;
      for (int kv = 0; kv < 2; ++kv) {
        tensors.push_back(std::make_unique<uint8_t[]>(kSegmentBytes * kDeviceSlots));
        layer.segments.push_back({tensors.back().get(), kSegmentBytes, kSegmentBytes});
      }
      layout.layers.push_back(layer);
    }
  }
  uint8_t* At(uint32_t layer, uint32_t seg, uint32_t slot) {
    return tensors[layer * 2 + seg].get() + uint64_t{slot} * kSegmentBytes;
  }
};

struct Totals {
  uint64_t requests = 0, blocks = 0, device_hits = 0, host_hits = 0, disk_hits = 0;
  uint64_t recomputed = 0;
  uint64_t mismatched_bytes = 0;
};

bool Run(const std::string& data_dir) {
  std::filesystem::create_directories(data_dir);
  EngineKv kv;
  auto created = kvtier::Cache::Create({
      .layout = kv.layout,
      .host = {.capacity_bytes = kHostBlocks * kv.layout.block_bytes()},
      .disk = {.directory = data_dir,
               .capacity_bytes = kDiskBlocks * (kv.layout.block_bytes() + (64 << 10)),
               .reset_on_mismatch = true},
  });
  if (!created.ok()) {
    std::fprintf(stderr, "Cache::Create: %s\n", created.status().ToString().c_str());
    return false;
  }
  kvtier::Cache& cache = **created;
  const uint64_t recovered = cache.Stats().disk_recovered_blocks;
  const kvtier::BlockHasher hasher({.model_id = "demo-8L", .tenant = "quickstart"});

  std::vector<int32_t> system_prompt(4 * kTokensPerBlock);
  for (size_t i = 0; i < system_prompt.size(); ++i) system_prompt[i] = static_cast<int32_t>(i);
  std::vector<std::vector<int32_t>> chats(8, system_prompt);
  Totals t;

  for (int turn = 0; turn < 5; ++turn) {
    for (size_t user = 0; user < chats.size(); ++user) {
      // The user's next message and the model's reply: 2 more blocks of history.
      for (uint32_t i = 0; i < 2 * kTokensPerBlock; ++i) {
        chats[user].push_back(static_cast<int32_t>(100000 * (user + 1) + chats[user].size()));
      }
      auto keys = hasher.ChainTokens(chats[user], kTokensPerBlock);
      auto match = keys.ok() ? cache.Match(*keys) : keys.status();
      // With the match, its device blocks are shared at once: making room cannot evict them.
      auto lease = match.ok() ? cache.AllocateDevice(*match, static_cast<uint32_t>(keys->size()))
                              : absl::StatusOr<kvtier::DeviceLease>(match.status());
      if (!match.ok() || !lease.ok()) {
        std::fprintf(stderr, "request failed: %s\n",
                     (!match.ok() ? match.status() : lease.status()).ToString().c_str());
        return false;
      }
      auto xfer = cache.Load(*match, *lease);
      if (!xfer.ok()) return false;
      // A failed load: recompute what it was bringing (the positions shared at allocation stay).
      const uint32_t loaded = xfer->Wait().ok() ? xfer->blocks() : lease->shared();
      const auto slots = lease->slots();
      // "Attention", layer by layer: layer l of the loaded prefix must be exactly what was stored.
      for (uint32_t l = 0; l < kLayers && loaded > 0; ++l) {
        if (!xfer->WaitLayer(l).ok()) return false;
        for (uint32_t b = 0; b < loaded; ++b) {
          for (uint32_t seg = 0; seg < 2; ++seg) {
            const uint8_t* p = kv.At(l, seg, slots[b]);
            for (uint64_t i = 0; i < kSegmentBytes; ++i) {
              t.mismatched_bytes += p[i] != Expected((*keys)[b], l, seg, i);
            }
          }
        }
      }
      // "Prefill" the rest, then publish it.
      for (uint32_t b = loaded; b < keys->size(); ++b) {
        for (uint32_t l = 0; l < kLayers; ++l) {
          for (uint32_t seg = 0; seg < 2; ++seg) {
            uint8_t* p = kv.At(l, seg, slots[b]);
            for (uint64_t i = 0; i < kSegmentBytes; ++i) p[i] = Expected((*keys)[b], l, seg, i);
          }
        }
      }
      if (absl::Status s = cache.Commit(*keys, *lease); !s.ok()) {
        std::fprintf(stderr, "Commit: %s\n", s.ToString().c_str());
        return false;
      }
      t.requests++;
      t.blocks += keys->size();
      t.device_hits += match->blocks_in(kvtier::Tier::kDevice);
      t.host_hits += match->blocks_in(kvtier::Tier::kHost);
      t.disk_hits += match->blocks_in(kvtier::Tier::kDisk);
      t.recomputed += keys->size() - loaded;
    }  // lease released here: its blocks stay cached, unpinned
  }

  const kvtier::CacheStats s = cache.Stats();
  const absl::Status invariants = cache.CheckInvariants();
  std::printf("kvtier quickstart: %u layers, %u-token blocks of %" PRIu64
              " KiB, device %u blocks, "
              "host %u blocks, disk %" PRIu64 " blocks in %s (emulated device)\n",
              kLayers, kTokensPerBlock, kv.layout.block_bytes() >> 10, kDeviceSlots, kHostBlocks,
              s.disk.capacity_blocks, data_dir.c_str());
  std::printf("  %-34s %12" PRIu64 "\n", "blocks found from a previous run", recovered);
  std::printf("  %-34s %12" PRIu64 "\n", "requests", t.requests);
  std::printf("  %-34s %12" PRIu64 "\n", "blocks requested", t.blocks);
  std::printf("  %-34s %12" PRIu64 "\n", "blocks matched on device", t.device_hits);
  std::printf("  %-34s %12" PRIu64 "\n", "blocks matched on host", t.host_hits);
  std::printf("  %-34s %12" PRIu64 "\n", "blocks matched on disk", t.disk_hits);
  std::printf("  %-34s %12" PRIu64 "\n", "blocks recomputed", t.recomputed);
  std::printf("  %-34s %12.3f\n", "prefix hit ratio", s.HitRatio());
  std::printf("  %-34s %12" PRIu64 "\n", "bytes host->device (promotion)", s.bytes_h2d);
  std::printf("  %-34s %12" PRIu64 "\n", "bytes device->host (demotion)", s.bytes_d2h);
  std::printf("  %-34s %12" PRIu64 "\n", "bytes host->disk (write-back)", s.bytes_disk_written);
  std::printf("  %-34s %12" PRIu64 "\n", "bytes disk->host (promotion)", s.bytes_disk_read);
  std::printf("  %-34s %12" PRIu64 "\n", "disk blocks failing checksums", s.disk_corrupt_reads);
  std::printf("  %-34s %12" PRIu64 "\n", "device evictions", s.device.evictions);
  std::printf("  %-34s %12" PRIu64 "\n", "host evictions", s.host.evictions);
  std::printf("  %-34s %12" PRIu64 "\n", "disk evictions", s.disk.evictions);
  std::printf("  %-34s %12" PRIu64 "\n", "mismatched bytes", t.mismatched_bytes);
  std::printf("  %-34s %12s\n", "invariants", invariants.ok() ? "ok" : "BROKEN");
  if (!invariants.ok()) std::fprintf(stderr, "%s\n", invariants.ToString().c_str());
  // The demo must show what it claims: nothing came back wrong; a first run's hits come from every
  // tier, a warm run's from the previous run's disk blocks (every block then has a disk copy, so
  // the device's victims are dropped rather than demoted, and the host only stages disk reads).
  return t.mismatched_bytes == 0 && invariants.ok() && t.disk_hits > 0 &&
         (t.host_hits > 0 || recovered > 0);
}

}  // namespace

int main(int argc, char** argv) {
  return Run(argc > 1 ? argv[1] : "kvtier-quickstart-data") ? 0 : 1;
}
