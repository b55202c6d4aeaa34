// BM_CodecEncode / BM_CodecDecode: one Llama-3-8B-shaped block layer (16 tokens, 8 KV heads x 128,
// K and V, fp16: 64 KiB raw) through each codec on one thread, beside BM_Memcpy of the same raw
// bytes. Bytes/s are of the raw block, so the ratio to BM_Memcpy is the codec's cost in memcpys
// (docs/compression.md). The second argument is the kernel: 0 the scalar code, 1 AVX2 + F16C
// (skipped on a CPU without them). Reaches the internal codec (lib/codec/codec.h) inside libkvtier.
#include <benchmark/benchmark.h>

#include <bit>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <string>
#include <utility>
#include <vector>

#include "lib/codec/codec.h"

namespace {

using kvtier::internal::BlockCodec;
using kvtier::internal::CodecId;
using kvtier::internal::CodecKernel;
using kvtier::internal::ElementType;

constexpr uint32_t kTokens = 16, kChannels = 8 * 128;
constexpr uint64_t kSegmentBytes = uint64_t{kTokens} * kChannels * 2;

kvtier::BlockLayout OneLayer() {
  kvtier::BlockLayout layout;
  layout.tokens_per_block = kTokens;
  layout.num_slots = 1;
  kvtier::LayerLayout layer;
  layer.segments.push_back({.bytes_per_block = kSegmentBytes,
                            .stride_bytes = kSegmentBytes,
                            .role = kvtier::SegmentRole::kKey});
  layer.segments.push_back({.bytes_per_block = kSegmentBytes,
                            .stride_bytes = kSegmentBytes,
                            .role = kvtier::SegmentRole::kValue});
  layout.layers.push_back(layer);
  return layout;
}

// Bytes from a 64-byte boundary. glibc's memcpy (rep movsb on the AMD CI VM) runs about 20x
// slower when source and destination sit at different offsets within a cache line (these 64 KiB:
// 1.6 vs 30 us), so with plain vectors BM_Memcpy, the baseline, depended on where malloc put them.
class Buffer {
 public:
  explicit Buffer(size_t n) : bytes_(n + 64), offset_(Offset(bytes_.data())) {}
  Buffer(const Buffer&) = delete;
  Buffer& operator=(const Buffer&) = delete;
  uint8_t* data() { return bytes_.data() + offset_; }
  const uint8_t* data() const { return bytes_.data() + offset_; }
  size_t size() const { return bytes_.size() - 64; }

 private:
  static size_t Offset(const uint8_t* p) { return (64 - reinterpret_cast<uintptr_t>(p) % 64) % 64; }
  std::vector<uint8_t> bytes_;
  size_t offset_;
};

// fp16 values of a smooth signal in [-2, 2] (exponent and mantissa bits built directly).
void FillRawBlock(Buffer& raw) {
  for (size_t i = 0; i < raw.size() / 2; ++i) {
    const float f = 2.0f * std::sin(0.01f * static_cast<float>(i));
    // fp16 by truncation of the float's bits (normal range only: |f| >= 2^-14 or zero).
    const uint32_t u = std::bit_cast<uint32_t>(f);
    const int e = static_cast<int>((u >> 23) & 0xff) - 127 + 15;
    const uint16_t h =
        e <= 0 ? static_cast<uint16_t>((u >> 16) & 0x8000)
               : static_cast<uint16_t>(((u >> 16) & 0x8000) | (e << 10) | ((u >> 13) & 0x3ff));
    std::memcpy(raw.data() + i * 2, &h, 2);
  }
}

BlockCodec MakeCodec(CodecId id) {
  auto codec = BlockCodec::Create(
      "bench", {.id = id, .group_size = 64, .element = ElementType::kF16}, OneLayer());
  return *std::move(codec);
}

void BM_Memcpy(benchmark::State& state) {
  Buffer raw(2 * kSegmentBytes), out(raw.size());
  FillRawBlock(raw);
  for (auto _ : state) {
    std::memcpy(out.data(), raw.data(), raw.size());
    benchmark::DoNotOptimize(out.data());
    benchmark::ClobberMemory();
  }
  state.SetBytesProcessed(static_cast<int64_t>(state.iterations() * raw.size()));
}
BENCHMARK(BM_Memcpy);

// Labels "<codec> <kernel>"; false (the run skipped) where this CPU lacks the kernel.
bool KernelOf(benchmark::State& state, CodecKernel* kernel) {
  *kernel = static_cast<CodecKernel>(state.range(1));
  if (kvtier::internal::CodecKernelSupported(*kernel)) return true;
  state.SkipWithError("kernel not supported on this CPU");
  return false;
}

void BM_CodecEncode(benchmark::State& state) {
  const BlockCodec codec = MakeCodec(static_cast<CodecId>(state.range(0)));
  CodecKernel kernel;
  if (!KernelOf(state, &kernel)) return;
  Buffer raw(2 * kSegmentBytes), out(codec.encoded_bytes());
  FillRawBlock(raw);
  for (auto _ : state) {
    codec.Encode(raw.data(), out.data(), kernel);
    benchmark::DoNotOptimize(out.data());
    benchmark::ClobberMemory();
  }
  state.SetBytesProcessed(static_cast<int64_t>(state.iterations() * raw.size()));
  state.SetLabel(std::string(kvtier::internal::CodecName(codec.config().id)) + " " +
                 kvtier::internal::CodecKernelName(kernel) + " ratio " +
                 std::to_string(static_cast<double>(codec.encoded_bytes()) / raw.size()));
}
BENCHMARK(BM_CodecEncode)->ArgsProduct({{1, 2, 3}, {0, 1}});

void BM_CodecDecode(benchmark::State& state) {
  const BlockCodec codec = MakeCodec(static_cast<CodecId>(state.range(0)));
  CodecKernel kernel;
  if (!KernelOf(state, &kernel)) return;
  Buffer raw(2 * kSegmentBytes), enc(codec.encoded_bytes()), out(raw.size());
  FillRawBlock(raw);
  codec.Encode(raw.data(), enc.data());
  for (auto _ : state) {
    if (!codec.Decode(enc.data(), out.data(), kernel).ok()) state.SkipWithError("decode failed");
    benchmark::DoNotOptimize(out.data());
    benchmark::ClobberMemory();
  }
  state.SetBytesProcessed(static_cast<int64_t>(state.iterations() * raw.size()));
  state.SetLabel(std::string(kvtier::internal::CodecName(codec.config().id)) + " " +
                 kvtier::internal::CodecKernelName(kernel));
}
BENCHMARK(BM_CodecDecode)->ArgsProduct({{1, 2, 3}, {0, 1}});

}  // namespace
