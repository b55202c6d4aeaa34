// ScaleWorkload: the engine's request lifecycle on a cache whose tiers all hold `slots` blocks,
// for measuring how the cost of a request depends on capacity (BM_Scale, and the cost test in
// test/cost_test.cc, which counts the index's work instead of timing it). Public API only.
//
// The cache: device, host and disk tiers of `slots` slots each, metadata only (no bytes move, so
// what is measured is the bookkeeping), LRU everywhere, write-back all the way down. WarmUp()
// commits chains of 16 blocks until three tiers' worth has gone through: every tier is full and
// has evicted. A Request() then is what an engine does per sequence: Match 16 keys (the first 8
// are the prefix of a warm-up chain drawn at random, so that they hit the device, the host, the
// disk or nothing in proportions that do not depend on `slots`; the last 8 are new),
// AllocateDevice(16) (evicting down the tiers), Load (promoting from host and disk), Commit, Hint,
// Stats, Release.
#ifndef KVTIER_BENCH_SCALE_WORKLOAD_H_
#define KVTIER_BENCH_SCALE_WORKLOAD_H_

#include <cstdint>
#include <memory>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/str_cat.h"
#include "kvtier/cache.h"

namespace kvtier::bench {

class ScaleWorkload {
 public:
  static constexpr uint32_t kBlocks = 16;  // per request
  static constexpr uint32_t kPrefix = 8;   // of them drawn from cached chains

  // `disk`: false leaves the host tier at the bottom (its victims are dropped).
  static absl::StatusOr<std::unique_ptr<ScaleWorkload>> Create(uint32_t slots, bool disk = true) {
    BlockLayout layout{.tokens_per_block = 16, .num_slots = slots};
    layout.layers.push_back({.segments = {{nullptr, kBytes, kBytes}}});
    auto cache = Cache::Create({.layout = layout,
                                .backend = DeviceBackend::kMetadataOnly,
                                .host = {.capacity_bytes = uint64_t{slots} * kBytes},
                                .disk = {.directory = "unused-metadata-only",
                                         .capacity_bytes = disk ? uint64_t{slots} * kBytes : 0}});
    if (!cache.ok()) return cache.status();
    return std::unique_ptr<ScaleWorkload>(
        new ScaleWorkload(std::move(*cache), slots, disk ? 3 : 2));
  }

  absl::Status WarmUp() {
    const uint64_t chains = tiers_ * uint64_t{slots_} / kBlocks + 1;
    for (uint64_t c = 0; c < chains; ++c) {
      if (absl::Status s = Run(NewChain(), /*lookup=*/false); !s.ok()) return s;
    }
    return absl::OkStatus();
  }

  // One request; `matched` (if given) gets how many blocks Match found.
  absl::Status Request(uint32_t* matched = nullptr) {
    // The suffix is new, in an id space of its own: a drawn chain's own blocks past the prefix
    // are its children too, and a key has one parent.
    const uint64_t r = requests_++;
    std::vector<BlockKey> keys = Key(Mix(r) % chains_, 0, kPrefix);
    for (const BlockKey& k : Key(kSuffixChains + r, kPrefix, kBlocks)) keys.push_back(k);
    return Run(keys, /*lookup=*/true, matched);
  }

  Cache& cache() { return *cache_; }

 private:
  static constexpr uint64_t kBytes = 16;  // per block: never touched (metadata only)
  static constexpr uint64_t kSuffixChains = uint64_t{1} << 40;  // requests' suffixes' chain ids

  ScaleWorkload(std::unique_ptr<Cache> cache, uint32_t slots, uint32_t tiers)
      : cache_(std::move(cache)), slots_(slots), tiers_(tiers) {}

  static uint64_t Mix(uint64_t x) {
    x += 0x9E3779B97F4A7C15ULL;
    x = (x ^ (x >> 30)) * 0xBF58476D1CE4E5B9ULL;
    x = (x ^ (x >> 27)) * 0x94D049BB133111EBULL;
    return x ^ (x >> 31);
  }
  // Blocks [from, to) of chain `chain`.
  static std::vector<BlockKey> Key(uint64_t chain, uint32_t from, uint32_t to) {
    std::vector<BlockKey> keys;
    for (uint32_t b = from; b < to; ++b) {
      const uint64_t x = chain * kBlocks + b;
      keys.push_back({Mix(x), Mix(~x)});
    }
    return keys;
  }
  std::vector<BlockKey> NewChain() { return Key(chains_++, 0, kBlocks); }

  absl::Status Run(const std::vector<BlockKey>& keys, bool lookup, uint32_t* matched = nullptr) {
    MatchResult match;
    if (lookup) {
      auto m = cache_->Match(keys);
      if (!m.ok()) return m.status();
      match = std::move(*m);
      if (matched != nullptr) *matched = match.size();
    }
    auto lease = cache_->AllocateDevice(kBlocks);
    if (!lease.ok()) return lease.status();
    if (match.size() > 0) {
      auto xfer = cache_->Load(match, *lease);
      if (!xfer.ok()) return xfer.status();
      if (absl::Status s = xfer->Wait(); !s.ok()) return s;
    }
    if (absl::Status s = cache_->Commit(keys, *lease); !s.ok()) return s;
    if (lookup) {
      const std::vector<double> scores(keys.size(), 1.0);
      if (absl::Status s = cache_->Hint(keys, scores); !s.ok()) return s;
      if (cache_->Stats().leases_live != 1) {
        return absl::InternalError(
            absl::StrCat("ScaleWorkload: ", cache_->Stats().leases_live, " leases live vs 1"));
      }
    }
    return cache_->Release(*lease);
  }

  std::unique_ptr<Cache> cache_;
  const uint32_t slots_;
  const uint32_t tiers_;
  uint64_t chains_ = 0;    // chains committed whole by WarmUp (requests draw prefixes from them)
  uint64_t requests_ = 0;  // requests so far (seeds the prefix draw)
};

}  // namespace kvtier::bench

#endif  // KVTIER_BENCH_SCALE_WORKLOAD_H_
