#include "test/util/test_util.h"

#include <unistd.h>

#include <atomic>
#include <future>
#include <utility>

#include "absl/strings/str_cat.h"

namespace kvtier::test {

EngineKv::EngineKv(const KvShape& shape) : shape_(shape) {
  layout_.tokens_per_block = shape.tokens_per_block;
  layout_.num_slots = shape.num_slots;
  const uint64_t per_tensor = shape.segment_bytes * shape.num_slots;
  for (uint32_t l = 0; l < shape.layers; ++l) {
    LayerLayout layer;
    if (shape.interleaved) {
      // One tensor per layer, [slot][segment][bytes]: FlashInfer-style K/V adjacency.
      tensors_.push_back(std::make_unique<std::byte[]>(per_tensor * shape.segments));
      for (uint32_t s = 0; s < shape.segments; ++s) {
        layer.segments.push_back(Segment{.base = tensors_.back().get() + s * shape.segment_bytes,
                                         .bytes_per_block = shape.segment_bytes,
                                         .stride_bytes = shape.segment_bytes * shape.segments});
      }
    } else {
      for (uint32_t s = 0; s < shape.segments; ++s) {
        tensors_.push_back(std::make_unique<std::byte[]>(per_tensor));
        layer.segments.push_back(Segment{.base = tensors_.back().get(),
                                         .bytes_per_block = shape.segment_bytes,
                                         .stride_bytes = shape.segment_bytes});
      }
    }
    layout_.layers.push_back(std::move(layer));
  }
}

std::byte* EngineKv::At(uint32_t layer, uint32_t seg, uint32_t slot) const {
  const Segment& g = layout_.layers[layer].segments[seg];
  return static_cast<std::byte*>(g.base) + uint64_t{slot} * g.stride_bytes;
}

uint8_t PatternByte(const BlockKey& key, uint32_t layer, uint32_t seg, uint64_t i) {
  uint64_t x = key.hi ^ (key.lo * 0x9E3779B97F4A7C15ULL) ^ (uint64_t{layer} << 40) ^
               (uint64_t{seg} << 56) ^ (i / 8);
  x ^= x >> 33;
  x *= 0xff51afd7ed558ccdULL;
  x ^= x >> 33;
  return static_cast<uint8_t>(x >> (8 * (i % 8)));
}

void EngineKv::Write(uint32_t slot, const BlockKey& key) {
  for (uint32_t l = 0; l < shape_.layers; ++l) {
    for (uint32_t s = 0; s < shape_.segments; ++s) {
      auto* p = reinterpret_cast<uint8_t*>(At(l, s, slot));
      for (uint64_t i = 0; i < shape_.segment_bytes; ++i) p[i] = PatternByte(key, l, s, i);
    }
  }
}

uint64_t EngineKv::Mismatches(uint32_t slot, const BlockKey& key) const {
  uint64_t bad = 0;
  for (uint32_t l = 0; l < shape_.layers; ++l) {
    for (uint32_t s = 0; s < shape_.segments; ++s) {
      const auto* p = reinterpret_cast<const uint8_t*>(At(l, s, slot));
      for (uint64_t i = 0; i < shape_.segment_bytes; ++i) bad += p[i] != PatternByte(key, l, s, i);
    }
  }
  return bad;
}

void EngineKv::Scribble(uint32_t slot, uint8_t value) {
  for (uint32_t l = 0; l < shape_.layers; ++l) {
    for (uint32_t s = 0; s < shape_.segments; ++s) {
      std::memset(At(l, s, slot), value, shape_.segment_bytes);
    }
  }
}

std::vector<BlockKey> Chain(uint32_t n, uint32_t seed, uint32_t tokens_per_block,
                            const BlockHasher& hasher) {
  std::vector<int32_t> tokens(uint64_t{n} * tokens_per_block);
  for (size_t i = 0; i < tokens.size(); ++i) tokens[i] = static_cast<int32_t>(seed * 100000 + i);
  auto keys = hasher.ChainTokens(tokens, tokens_per_block);
  return *keys;
}

BlockLayout TwoLayerLayout(uint32_t tokens_per_block, uint64_t bytes,
                           const std::vector<SegmentRole>& roles) {
  BlockLayout layout;
  layout.tokens_per_block = tokens_per_block;
  layout.num_slots = 1;
  LayerLayout layer;
  for (SegmentRole role : roles) {
    layer.segments.push_back({.bytes_per_block = bytes, .stride_bytes = bytes, .role = role});
  }
  layout.layers = {layer, layer};
  return layout;
}

Options MakeOptions(const EngineKv& kv, uint32_t host_blocks) {
  Options o;
  o.layout = kv.layout();
  o.backend = DeviceBackend::kEmulated;
  o.host.capacity_bytes = uint64_t{host_blocks} * kv.layout().block_bytes();
  return o;
}

absl::StatusOr<StepResult> RunSequence(Cache& cache, EngineKv& kv, std::span<const BlockKey> keys,
                                       DeviceLease* lease_out, LoadFailures failures) {
  StepResult r;
  absl::StatusOr<MatchResult> match = cache.Match(keys);
  if (!match.ok()) return match.status();
  r.matched = match->size();
  absl::StatusOr<DeviceLease> lease = cache.AllocateDevice(static_cast<uint32_t>(keys.size()));
  if (!lease.ok()) return lease.status();
  absl::StatusOr<Transfer> xfer = cache.Load(*match, *lease);
  if (!xfer.ok()) return xfer.status();
  absl::Status waited = xfer->Wait();
  if (!waited.ok() && failures == LoadFailures::kForbidden) {
    return absl::InternalError(absl::StrCat(
        "RunSequence: the load failed where no fault is injected: ", waited.ToString()));
  }
  r.load_failed = !waited.ok();
  r.loaded = waited.ok() ? xfer->blocks() : 0;
  const auto slots = lease->slots();
  for (uint32_t i = 0; i < r.loaded; ++i) r.mismatched_bytes += kv.Mismatches(slots[i], keys[i]);
  for (uint32_t i = r.loaded; i < keys.size(); ++i) kv.Write(slots[i], keys[i]);
  if (absl::Status s = cache.Commit(keys, *lease); !s.ok()) return s;
  if (lease_out != nullptr) *lease_out = std::move(*lease);
  return r;
}

TempDir::TempDir(const std::string& prefix) {
  static std::atomic<int> counter{0};
  path = std::filesystem::current_path() /
         (prefix + "." + std::to_string(getpid()) + "." + std::to_string(counter++));
  std::filesystem::remove_all(path);
  std::filesystem::create_directories(path);
}

TempDir::~TempDir() {
  std::error_code ignored;  // never throw from a destructor
  std::filesystem::remove_all(path, ignored);
}

absl::Status WaitForCallback(
    const std::function<absl::Status(std::function<void(absl::Status)>)>& start) {
  std::promise<absl::Status> p;
  auto f = p.get_future();
  if (absl::Status s = start([&](absl::Status st) { p.set_value(st); }); !s.ok()) return s;
  return f.get();
}

}  // namespace kvtier::test
