// kvtier_bench_cuda: the CUDA backend's copy path against one large cudaMemcpyAsync.
//
// BM_CudaMemcpyBaseline/<dir>/<bytes>: one cudaMemcpyAsync of `bytes` between a pinned buffer and
//   device memory (dir 0: H2D, 1: D2H): what the copy engines give at best. The buffer is pinned
//   as kvtier pins its host pool (anonymous mmap + cudaHostRegister), not cudaMallocHost's, so the
//   ratio compares the same kind of memory.
// BM_CudaPromote/<layout>/<method>/<blocks> and BM_CudaDemote/...: kvtier's Device moving `blocks`
//   whole blocks between the engine's per-layer tensors (cudaMalloc) and the pinned host pool, as
//   Cache::Load (per layer: the layer's segments of every block, then a layer event) and demotion
//   (every segment of every block, one event) enqueue them. Counters: vs_memcpy (bandwidth over the
//   baseline's for the same total bytes, measured in the same process), and for promotion
//   layer0_us / whole_us (host-observed time to layer 0's event and to the end).
// Layouts: 0 Llama-3-8B 16 tokens/block (32 layers x K,V x 8 heads x 128 dims x fp16 = 32 KiB per
//   segment), 1 the same with 64 tokens (128 KiB), 2 MLA 61 layers x 576 dims x fp16 x 16 tokens
//   (18 KiB), 3 MLA with 64 tokens (72 KiB). Methods: 1 kernel, 2 cudaMemcpyBatchAsync,
//   3 cudaMemcpyAsync per segment.
// BM_CudaCodecPromote/<layout>/<codec>/<blocks> and BM_CudaCodecDemote/...: the same moves through
//   the host codec's kernels (codec 1 fp8_e4m3, 2 int8, 3 int4; group 64): vs_memcpy counts the raw
//   bytes delivered against the baseline's for those raw bytes; bus_bytes_ratio is encoded / raw.
// Without a CUDA device it prints why and exits 0 (an empty benchmark list in JSON), or 1 when
// KVTIER_REQUIRE_GPU=1. It prints the driver and runtime versions and the device to stderr first.
#include <benchmark/benchmark.h>
#include <cuda_runtime_api.h>
#include <sys/mman.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "cuda/cuda_device.h"
#include "cuda/cuda_probe.h"
#include "kvtier/layout.h"
#include "kvtier/options.h"
#include "lib/codec/codec.h"

namespace kvtier {
namespace {

using internal::CopyRegion;
using internal::Device;
using internal::Stream;

struct Shape {
  uint32_t layers;
  uint32_t segments;
  uint64_t seg_bytes;
};

Shape LayoutShape(int64_t layout) {
  switch (layout) {
    case 0:
      return {32, 2, 16 * 8 * 128 * 2};
    case 1:
      return {32, 2, 64 * 8 * 128 * 2};
    case 2:
      return {61, 1, 16 * 576 * 2};
    default:
      return {61, 1, 64 * 576 * 2};
  }
}

// The engine's tensors (device) and a pinned host pool of `blocks` slots, plus the device.
struct Rig {
  Shape shape{};
  uint32_t blocks = 0;
  std::unique_ptr<Device> device;
  std::vector<void*> tensors;  // [layer * segments + segment]
  std::byte* host = nullptr;
  uint64_t host_bytes = 0;

  uint64_t block_bytes() const { return uint64_t{shape.layers} * shape.segments * shape.seg_bytes; }
  ~Rig() {
    for (void* p : tensors) static_cast<void>(cudaFree(p));
    if (host != nullptr) device->FreeHost(host, host_bytes);
  }
  // Layer `layer` of every block; to_device: host slot -> device slot.
  void LayerRegions(uint32_t layer, bool to_device, std::vector<CopyRegion>* out) const {
    for (uint32_t b = 0; b < blocks; ++b) {
      std::byte* slot = host + b * block_bytes();
      for (uint32_t g = 0; g < shape.segments; ++g) {
        std::byte* dev = static_cast<std::byte*>(tensors[layer * shape.segments + g]) +
                         uint64_t{b} * shape.seg_bytes;
        std::byte* h = slot + (uint64_t{layer} * shape.segments + g) * shape.seg_bytes;
        out->push_back(to_device ? CopyRegion{dev, h, shape.seg_bytes}
                                 : CopyRegion{h, dev, shape.seg_bytes});
      }
    }
  }
};

std::unique_ptr<Rig> MakeRig(int64_t layout, CudaCopyMethod method, uint32_t blocks,
                             std::string* error) {
  auto rig = std::make_unique<Rig>();
  rig->shape = LayoutShape(layout);
  rig->blocks = blocks;
  auto device = internal::CreateCudaDevice({.device = 0, .copy_method = method});
  if (!device.ok()) {
    *error = device.status().ToString();
    return nullptr;
  }
  rig->device = std::move(*device);
  for (uint32_t i = 0; i < rig->shape.layers * rig->shape.segments; ++i) {
    void* p = nullptr;
    if (cudaMalloc(&p, rig->shape.seg_bytes * blocks) != cudaSuccess) {
      *error = "cudaMalloc of the KV tensors failed";
      return nullptr;
    }
    static_cast<void>(cudaMemset(p, i & 0xff, rig->shape.seg_bytes * blocks));
    rig->tensors.push_back(p);
  }
  rig->host_bytes = rig->block_bytes() * blocks;
  auto host = rig->device->AllocateHost(rig->host_bytes, 0);
  if (!host.ok()) {
    *error = host.status().ToString();
    return nullptr;
  }
  rig->host = static_cast<std::byte*>(*host);
  std::memset(rig->host, 0x5a, rig->host_bytes);
  if (cudaDeviceSynchronize() != cudaSuccess) {  // the cudaMemsets above are asynchronous
    *error = "cudaDeviceSynchronize after setup failed";
    return nullptr;
  }
  return rig;
}

// Host memory pinned the way CudaDevice::AllocateHost pins the pool: anonymous pages registered
// with cudaHostRegister (mapped, portable). Null on failure.
void* PinLikeKvtier(uint64_t bytes) {
  void* p = mmap(nullptr, bytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  if (p == MAP_FAILED) return nullptr;
  if (cudaHostRegister(p, bytes, cudaHostRegisterMapped | cudaHostRegisterPortable) !=
      cudaSuccess) {
    munmap(p, bytes);
    return nullptr;
  }
  return p;
}
void UnpinLikeKvtier(void* p, uint64_t bytes) {
  if (p == nullptr) return;
  static_cast<void>(cudaHostUnregister(p));
  munmap(p, bytes);
}

// Seconds for one cudaMemcpyAsync of `bytes` (pinned <-> device), median of 5, cached per size.
double BaselineSeconds(bool to_device, uint64_t bytes) {
  static std::map<std::pair<bool, uint64_t>, double> cache;
  if (auto it = cache.find({to_device, bytes}); it != cache.end()) return it->second;
  void* dev = nullptr;
  void* host = nullptr;
  cudaStream_t s = nullptr;
  cudaEvent_t a = nullptr, b = nullptr;
  if (cudaMalloc(&dev, bytes) != cudaSuccess || (host = PinLikeKvtier(bytes)) == nullptr ||
      cudaStreamCreateWithFlags(&s, cudaStreamNonBlocking) != cudaSuccess ||
      cudaEventCreate(&a) != cudaSuccess || cudaEventCreate(&b) != cudaSuccess) {
    return 0;
  }
  std::vector<float> ms;
  for (int i = 0; i < 6; ++i) {
    static_cast<void>(cudaEventRecord(a, s));
    static_cast<void>(to_device ? cudaMemcpyAsync(dev, host, bytes, cudaMemcpyHostToDevice, s)
                                : cudaMemcpyAsync(host, dev, bytes, cudaMemcpyDeviceToHost, s));
    static_cast<void>(cudaEventRecord(b, s));
    static_cast<void>(cudaEventSynchronize(b));
    float t = 0;
    static_cast<void>(cudaEventElapsedTime(&t, a, b));
    if (i > 0) ms.push_back(t);  // the first one warms up
  }
  std::sort(ms.begin(), ms.end());
  const double seconds = ms[ms.size() / 2] / 1e3;
  static_cast<void>(cudaEventDestroy(a));
  static_cast<void>(cudaEventDestroy(b));
  static_cast<void>(cudaStreamDestroy(s));
  static_cast<void>(cudaFree(dev));
  UnpinLikeKvtier(host, bytes);
  cache[{to_device, bytes}] = seconds;
  return seconds;
}

void BM_CudaMemcpyBaseline(benchmark::State& state) {
  const bool to_device = state.range(0) == 0;
  const auto bytes = static_cast<uint64_t>(state.range(1));
  void* dev = nullptr;
  void* host = nullptr;
  cudaStream_t s = nullptr;
  if (cudaMalloc(&dev, bytes) != cudaSuccess || (host = PinLikeKvtier(bytes)) == nullptr ||
      cudaStreamCreateWithFlags(&s, cudaStreamNonBlocking) != cudaSuccess) {
    state.SkipWithError("allocation failed");
    return;
  }
  for (auto _ : state) {
    static_cast<void>(to_device ? cudaMemcpyAsync(dev, host, bytes, cudaMemcpyHostToDevice, s)
                                : cudaMemcpyAsync(host, dev, bytes, cudaMemcpyDeviceToHost, s));
    static_cast<void>(cudaStreamSynchronize(s));
  }
  state.SetBytesProcessed(static_cast<int64_t>(state.iterations() * bytes));
  static_cast<void>(cudaStreamDestroy(s));
  static_cast<void>(cudaFree(dev));
  UnpinLikeKvtier(host, bytes);
}

// The rig of a benchmark's arguments (layout, copy method or codec, blocks); null once the
// benchmark is skipped with the reason.
std::unique_ptr<Rig> RigFor(benchmark::State& state) {
  std::string error;
  auto rig = MakeRig(state.range(0), static_cast<CudaCopyMethod>(state.range(1)),
                     static_cast<uint32_t>(state.range(2)), &error);
  if (rig == nullptr) state.SkipWithError(error.c_str());
  return rig;
}

// Times a Load's shape: `layers` calls of enqueue_layer(l) on kH2D, an event after each.
// Counters: layer0_us (host-observed time to layer 0's event), whole_us, and vs_memcpy against the
// baseline for `bytes`.
void TimePromotion(benchmark::State& state, Device& device, uint32_t layers,
                   const std::function<absl::Status(uint32_t)>& enqueue_layer, uint64_t bytes) {
  double layer0_s = 0, whole_s = 0;
  for (auto _ : state) {
    const auto start = std::chrono::steady_clock::now();
    std::shared_ptr<internal::DeviceEvent> first;
    absl::Status s;
    for (uint32_t l = 0; l < layers && s.ok(); ++l) {
      s = enqueue_layer(l);
      auto ev = s.ok() ? device.RecordEvent(Stream::kH2D) : s;
      if (!ev.ok()) s = ev.status();
      if (s.ok() && l == 0) first = *ev;
    }
    if (s.ok() && first != nullptr) s = first->Wait();
    const auto at_layer0 = std::chrono::steady_clock::now();
    if (s.ok()) s = device.Synchronize();
    if (!s.ok()) {
      state.SkipWithError(s.ToString().c_str());
      break;
    }
    const auto end = std::chrono::steady_clock::now();
    layer0_s += std::chrono::duration<double>(at_layer0 - start).count();
    whole_s += std::chrono::duration<double>(end - start).count();
  }
  if (state.iterations() == 0) return;
  state.SetBytesProcessed(static_cast<int64_t>(state.iterations() * bytes));
  const double n = static_cast<double>(state.iterations());
  state.counters["layer0_us"] = layer0_s / n * 1e6;
  state.counters["whole_us"] = whole_s / n * 1e6;
  const double baseline = BaselineSeconds(true, bytes);
  if (baseline > 0 && whole_s > 0) state.counters["vs_memcpy"] = baseline / (whole_s / n);
}

// Times a demotion's shape: one enqueue on kD2H, then Synchronize. Counter: vs_memcpy.
void TimeDemotion(benchmark::State& state, Device& device,
                  const std::function<absl::Status()>& enqueue, uint64_t bytes) {
  double whole_s = 0;
  for (auto _ : state) {
    const auto start = std::chrono::steady_clock::now();
    absl::Status s = enqueue();
    if (s.ok()) s = device.Synchronize();
    if (!s.ok()) {
      state.SkipWithError(s.ToString().c_str());
      break;
    }
    whole_s += std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  }
  if (state.iterations() == 0) return;
  state.SetBytesProcessed(static_cast<int64_t>(state.iterations() * bytes));
  const double baseline = BaselineSeconds(false, bytes);
  if (baseline > 0 && whole_s > 0) {
    state.counters["vs_memcpy"] = baseline / (whole_s / static_cast<double>(state.iterations()));
  }
}

void BM_CudaPromote(benchmark::State& state) {
  const std::unique_ptr<Rig> rig = RigFor(state);
  if (rig == nullptr) return;
  std::vector<std::vector<CopyRegion>> layers(rig->shape.layers);
  for (uint32_t l = 0; l < rig->shape.layers; ++l) rig->LayerRegions(l, true, &layers[l]);
  TimePromotion(
      state, *rig->device, rig->shape.layers,
      [&](uint32_t l) { return rig->device->Copy(Stream::kH2D, layers[l]); }, rig->host_bytes);
}

void BM_CudaDemote(benchmark::State& state) {
  const std::unique_ptr<Rig> rig = RigFor(state);
  if (rig == nullptr) return;
  std::vector<CopyRegion> regions;
  for (uint32_t l = 0; l < rig->shape.layers; ++l) rig->LayerRegions(l, false, &regions);
  TimeDemotion(
      state, *rig->device, [&] { return rig->device->Copy(Stream::kD2H, regions); },
      rig->host_bytes);
}

// The host codec on the GPU (Options.host.codec): the same moves as BM_CudaPromote/Demote with
// the codec's kernels (Device::DecodeFromHost per layer, EncodeToHost for every segment), so the
// bus carries the encoded bytes. vs_memcpy: the raw KV bytes delivered per second over one
// cudaMemcpyAsync's of the same raw bytes (above 1: the codec moved them faster than raw).
struct CodecRig {
  std::unique_ptr<Rig> rig;
  std::optional<internal::BlockCodec> codec;
  std::byte* encoded = nullptr;  // blocks x encoded_bytes, pinned by the device
  uint64_t encoded_bytes = 0;
  ~CodecRig() {
    if (encoded != nullptr) rig->device->FreeHost(encoded, encoded_bytes);
  }
  // Layer `layer` of every block: device tensors <-> the encoded host slots.
  std::vector<internal::codec_math::CodecSegmentJob> LayerJobs(uint32_t layer, bool encode) const {
    std::vector<internal::codec_math::CodecSegmentJob> jobs;
    const Shape& shape = rig->shape;
    for (uint32_t b = 0; b < rig->blocks; ++b) {
      auto raw = [&](size_t g) -> void* {
        return static_cast<std::byte*>(rig->tensors[layer * shape.segments + g]) +
               uint64_t{b} * shape.seg_bytes;
      };
      std::byte* slot = encoded + b * codec->encoded_bytes();
      codec->AppendLayerJobs(layer, raw, slot + codec->layer_offset(layer), encode, &jobs);
    }
    return jobs;
  }
};

std::unique_ptr<CodecRig> MakeCodecRig(int64_t layout, int64_t codec_id, uint32_t blocks,
                                       std::string* error) {
  auto c = std::make_unique<CodecRig>();
  c->rig = MakeRig(layout, CudaCopyMethod::kKernel, blocks, error);
  if (c->rig == nullptr) return nullptr;
  const Shape& shape = c->rig->shape;
  BlockLayout l;
  l.tokens_per_block = layout == 0 || layout == 2 ? 16 : 64;
  l.num_slots = blocks;
  for (uint32_t i = 0; i < shape.layers; ++i) {
    LayerLayout layer;
    for (uint32_t g = 0; g < shape.segments; ++g) {
      const SegmentRole role = shape.segments == 1 ? SegmentRole::kLatent
                               : g == 0            ? SegmentRole::kKey
                                                   : SegmentRole::kValue;
      layer.segments.push_back(
          {c->rig->tensors[i * shape.segments + g], shape.seg_bytes, shape.seg_bytes, role});
    }
    l.layers.push_back(std::move(layer));
  }
  auto codec = internal::BlockCodec::Create(
      "bench", {.id = static_cast<internal::CodecId>(codec_id), .group_size = 64}, l);
  if (!codec.ok()) {
    *error = codec.status().ToString();
    return nullptr;
  }
  c->codec = std::move(*codec);
  c->encoded_bytes = c->codec->encoded_bytes() * blocks;
  auto host = c->rig->device->AllocateHost(c->encoded_bytes, 0);
  if (!host.ok()) {
    *error = host.status().ToString();
    return nullptr;
  }
  c->encoded = static_cast<std::byte*>(*host);
  // Real encoded blocks to decode: the tensors (fp16 bytes 0x00.., 0x01.., ...) encoded once.
  for (uint32_t i = 0; i < shape.layers; ++i) {
    const auto jobs = c->LayerJobs(i, /*encode=*/true);
    if (absl::Status s = c->rig->device->EncodeToHost(Stream::kD2H, c->codec->params(), jobs);
        !s.ok()) {
      *error = s.ToString();
      return nullptr;
    }
  }
  if (absl::Status s = c->rig->device->Synchronize(); !s.ok()) {
    *error = s.ToString();
    return nullptr;
  }
  return c;
}

std::unique_ptr<CodecRig> CodecRigFor(benchmark::State& state) {
  std::string error;
  auto c =
      MakeCodecRig(state.range(0), state.range(1), static_cast<uint32_t>(state.range(2)), &error);
  if (c == nullptr) state.SkipWithError(error.c_str());
  return c;
}

void BM_CudaCodecPromote(benchmark::State& state) {
  const std::unique_ptr<CodecRig> c = CodecRigFor(state);
  if (c == nullptr) return;
  const uint32_t layers = c->rig->shape.layers;
  std::vector<std::vector<internal::codec_math::CodecSegmentJob>> jobs(layers);
  for (uint32_t l = 0; l < layers; ++l) jobs[l] = c->LayerJobs(l, /*encode=*/false);
  TimePromotion(
      state, *c->rig->device, layers,
      [&](uint32_t l) {
        return c->rig->device->DecodeFromHost(Stream::kH2D, c->codec->params(), jobs[l]);
      },
      c->rig->host_bytes);
  state.counters["bus_bytes_ratio"] =
      static_cast<double>(c->encoded_bytes) / static_cast<double>(c->rig->host_bytes);
}

void BM_CudaCodecDemote(benchmark::State& state) {
  const std::unique_ptr<CodecRig> c = CodecRigFor(state);
  if (c == nullptr) return;
  std::vector<internal::codec_math::CodecSegmentJob> jobs;
  for (uint32_t l = 0; l < c->rig->shape.layers; ++l) {
    for (const auto& j : c->LayerJobs(l, /*encode=*/true)) jobs.push_back(j);
  }
  TimeDemotion(
      state, *c->rig->device,
      [&] { return c->rig->device->EncodeToHost(Stream::kD2H, c->codec->params(), jobs); },
      c->rig->host_bytes);
}

void CopyArgs(benchmark::internal::Benchmark* b) {
  b->ArgNames({"layout", "method", "blocks"});
  for (int64_t layout : {0, 1, 2, 3}) {
    for (int64_t method : {1, 2, 3}) {
      for (int64_t blocks : {16, 64}) b->Args({layout, method, blocks});
    }
  }
}

BENCHMARK(BM_CudaMemcpyBaseline)
    ->ArgNames({"dir", "bytes"})
    ->ArgsProduct({{0, 1}, {32 << 20, 512 << 20}})
    ->UseRealTime();
BENCHMARK(BM_CudaPromote)->Apply(CopyArgs)->UseRealTime();
BENCHMARK(BM_CudaDemote)->Apply(CopyArgs)->UseRealTime();
// Codecs: 1 fp8_e4m3, 2 int8, 3 int4 (internal::CodecId), 64 blocks.
BENCHMARK(BM_CudaCodecPromote)
    ->ArgNames({"layout", "codec", "blocks"})
    ->ArgsProduct({{0, 1, 2, 3}, {1, 2, 3}, {64}})
    ->UseRealTime();
BENCHMARK(BM_CudaCodecDemote)
    ->ArgNames({"layout", "codec", "blocks"})
    ->ArgsProduct({{0, 1, 2, 3}, {1, 2, 3}, {64}})
    ->UseRealTime();

}  // namespace
}  // namespace kvtier

int main(int argc, char** argv) {
  std::string why;
  const int count = kvtier::internal::CudaDeviceCount(&why);
  int driver = 0, runtime = 0;
  static_cast<void>(cudaDriverGetVersion(&driver));
  static_cast<void>(cudaRuntimeGetVersion(&runtime));
  std::fprintf(stderr, "kvtier_bench_cuda: driver %d, runtime %d, %d device(s)\n", driver, runtime,
               count);
  if (count > 0) {
    cudaDeviceProp prop{};
    if (cudaGetDeviceProperties(&prop, 0) == cudaSuccess) {
      std::fprintf(stderr, "kvtier_bench_cuda: device 0: %s, sm_%d%d, %d SMs\n", prop.name,
                   prop.major, prop.minor, prop.multiProcessorCount);
    }
  }
  const char* require = std::getenv("KVTIER_REQUIRE_GPU");
  const bool required = require != nullptr && std::strcmp(require, "1") == 0;
  if (count == 0) {
    bool json = false;
    for (int i = 1; i < argc; ++i)
      json = json || std::strcmp(argv[i], "--benchmark_format=json") == 0;
    std::fprintf(stderr, "kvtier_bench_cuda: skipped: no CUDA device (%s)\n", why.c_str());
    if (json)
      std::printf("{\"context\": {}, \"benchmarks\": [], \"skipped\": \"no CUDA device\"}\n");
    return required ? 1 : 0;  // KVTIER_REQUIRE_GPU=1: a skip is a failure
  }
  benchmark::Initialize(&argc, argv);
  if (benchmark::ReportUnrecognizedArguments(argc, argv)) return 1;
  benchmark::RunSpecifiedBenchmarks();
  benchmark::Shutdown();
  return 0;
}
