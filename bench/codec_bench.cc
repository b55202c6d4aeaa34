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
#include <memory>
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

BlockCodec MakeCodec(CodecId id, const kvtier::BlockLayout& layout = OneLayer()) {
  auto codec = BlockCodec::Create(
      "bench", {.id = id, .group_size = 64, .element = ElementType::kF16}, layout);
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

// "<codec> <kernel>", the benchmarks' label.
std::string Label(const BlockCodec& codec, CodecKernel kernel) {
  return std::string(kvtier::internal::CodecName(codec.config().id)) + " " +
         kvtier::internal::CodecKernelName(kernel);
}

// The kernel of argument 1; false (the run skipped) where this CPU lacks it.
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
  state.SetLabel(Label(codec, kernel) + " ratio " +
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
  state.SetLabel(Label(codec, kernel));
}
BENCHMARK(BM_CodecDecode)->ArgsProduct({{1, 2, 3}, {0, 1}});

// ---- streaming: whole blocks cold in DRAM, as demotion and promotion meet them ----
//
// BM_MemcpyStream / BM_CodecEncodeStream/<codec> / BM_CodecDecodeStream/<codec>: a pool of
// kStreamBlocks whole Llama-3-8B blocks (32 of the layers above: 2 MiB raw each; 256 MiB in all,
// 8x this VM's L3) is copied, encoded or decoded one block per iteration, each into its own slot of
// an output pool, in turn: source and destination are out of cache, as for a block the engine
// demotes (the GPU, or on the emulated device another thread, wrote it) or one promoted from a
// tier. Default kernel (AVX2 where the CPU has it); bytes/s of the raw block.
constexpr uint32_t kStreamLayers = 32, kStreamBlocks = 128;

kvtier::BlockLayout WholeBlock() {
  kvtier::BlockLayout layout = OneLayer();
  layout.layers.assign(kStreamLayers, layout.layers[0]);
  return layout;
}

// kStreamBlocks raw blocks: the layer of FillRawBlock repeated.
std::unique_ptr<Buffer> RawPool() {
  Buffer layer(2 * kSegmentBytes);
  FillRawBlock(layer);
  auto pool = std::make_unique<Buffer>(uint64_t{kStreamBlocks} * kStreamLayers * layer.size());
  for (uint64_t off = 0; off < pool->size(); off += layer.size()) {
    std::memcpy(pool->data() + off, layer.data(), layer.size());
  }
  return pool;
}

void BM_MemcpyStream(benchmark::State& state) {
  const uint64_t block = uint64_t{kStreamLayers} * 2 * kSegmentBytes;
  const auto raw = RawPool();
  Buffer out(raw->size());
  std::memset(out.data(), 0, out.size());
  uint64_t i = 0;
  for (auto _ : state) {
    const uint64_t b = i++ % kStreamBlocks;
    std::memcpy(out.data() + b * block, raw->data() + b * block, block);
    benchmark::ClobberMemory();
  }
  state.SetBytesProcessed(static_cast<int64_t>(state.iterations() * block));
}
BENCHMARK(BM_MemcpyStream);

void BM_CodecEncodeStream(benchmark::State& state) {
  const BlockCodec codec = MakeCodec(static_cast<CodecId>(state.range(0)), WholeBlock());
  const uint64_t block = codec.raw_bytes(), encoded = codec.encoded_bytes();
  const auto raw = RawPool();
  Buffer out(kStreamBlocks * encoded);
  std::memset(out.data(), 0, out.size());
  uint64_t i = 0;
  for (auto _ : state) {
    const uint64_t b = i++ % kStreamBlocks;
    codec.Encode(raw->data() + b * block, out.data() + b * encoded);
    benchmark::ClobberMemory();
  }
  state.SetBytesProcessed(static_cast<int64_t>(state.iterations() * block));
  state.SetLabel(Label(codec, kvtier::internal::DefaultCodecKernel()));
}
BENCHMARK(BM_CodecEncodeStream)->Arg(1)->Arg(2)->Arg(3);

void BM_CodecDecodeStream(benchmark::State& state) {
  const BlockCodec codec = MakeCodec(static_cast<CodecId>(state.range(0)), WholeBlock());
  const uint64_t block = codec.raw_bytes(), encoded = codec.encoded_bytes();
  const auto raw = RawPool();
  Buffer enc(kStreamBlocks * encoded);
  for (uint64_t b = 0; b < kStreamBlocks; ++b) {
    codec.Encode(raw->data() + b * block, enc.data() + b * encoded);
  }
  std::memset(raw->data(), 0, raw->size());  // the output pool
  uint64_t i = 0;
  for (auto _ : state) {
    const uint64_t b = i++ % kStreamBlocks;
    if (!codec.Decode(enc.data() + b * encoded, raw->data() + b * block).ok()) {
      state.SkipWithError("decode failed");
    }
    benchmark::ClobberMemory();
  }
  state.SetBytesProcessed(static_cast<int64_t>(state.iterations() * block));
  state.SetLabel(Label(codec, kvtier::internal::DefaultCodecKernel()));
}
BENCHMARK(BM_CodecDecodeStream)->Arg(1)->Arg(2)->Arg(3);

}  // namespace
