// [cuda] tests of the CUDA backend: run where a CUDA device is, skip with the reason elsewhere.
//
// The "engine" is GpuKv: per-layer K/V (or MLA latent) tensors cudaMalloc'ed here, filled and
// checked with cudaMemcpy, with the same key-derived byte pattern as the emulated tests.
#include "cuda/cuda_device.h"

#include <cuda_runtime_api.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <catch2/catch.hpp>
#include <chrono>
#include <cmath>
#include <cstring>
#include <filesystem>
#include <memory>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include "cuda/copy_kernels.h"
#include "cuda/cuda_probe.h"
#include "kvtier/cache.h"
#include "lib/codec/codec.h"
#include "lib/transfer/host_event.h"
#include "test/util/test_util.h"

namespace kvtier {
namespace {

namespace fs = std::filesystem;
using test::PatternByte;

bool NoDevice() {
  std::string why;
  if (internal::CudaDeviceCount(&why) > 0) return false;
  return test::SkipMissing("cuda", "no CUDA device (" + why + ")");
}

#define REQUIRE_CUDA(expr)                         \
  do {                                             \
    const cudaError_t e_ = (expr);                 \
    INFO(#expr << ": " << cudaGetErrorString(e_)); \
    REQUIRE(e_ == cudaSuccess);                    \
  } while (0)

struct GpuShape {
  const char* name;
  uint32_t layers;
  uint32_t segments;    // 2: K and V; 1: MLA
  uint64_t seg_bytes;   // one block's bytes in one segment
  uint64_t stride_pad;  // stride = seg_bytes + stride_pad (non-zero: unaligned slots)
  uint32_t num_slots;
};

// The engine's device KV memory: one cudaMalloc per (layer, segment) tensor; or, with
// on_gpu = false, host buffers (to run the same scenario on the emulated device anywhere).
class GpuKv {
 public:
  explicit GpuKv(const GpuShape& shape, bool on_gpu = true) : shape_(shape), on_gpu_(on_gpu) {
    layout_.tokens_per_block = 16;
    layout_.num_slots = shape.num_slots;
    for (uint32_t l = 0; l < shape.layers; ++l) {
      LayerLayout layer;
      for (uint32_t g = 0; g < shape.segments; ++g) {
        void* p = nullptr;
        const uint64_t stride = shape.seg_bytes + shape.stride_pad;
        if (!on_gpu) {
          host_.push_back(std::make_unique<std::byte[]>(stride * shape.num_slots));
          p = host_.back().get();
        } else if (cudaMalloc(&p, stride * shape.num_slots) != cudaSuccess) {
          ok_ = false;
          return;
        } else {
          tensors_.push_back(p);
        }
        layer.segments.push_back({p, shape.seg_bytes, stride});
      }
      layout_.layers.push_back(std::move(layer));
    }
  }
  ~GpuKv() {
    for (void* p : tensors_) static_cast<void>(cudaFree(p));
  }
  bool ok() const { return ok_; }
  const BlockLayout& layout() const { return layout_; }

  void Write(uint32_t slot, const BlockKey& key) {
    std::vector<uint8_t> buf(shape_.seg_bytes);
    for (uint32_t l = 0; l < shape_.layers; ++l) {
      for (uint32_t g = 0; g < shape_.segments; ++g) {
        for (uint64_t i = 0; i < buf.size(); ++i) buf[i] = PatternByte(key, l, g, i);
        if (!on_gpu_) {
          std::memcpy(At(l, g, slot), buf.data(), buf.size());
          continue;
        }
        REQUIRE_CUDA(cudaMemcpy(At(l, g, slot), buf.data(), buf.size(), cudaMemcpyHostToDevice));
      }
    }
    // A pageable-to-device cudaMemcpy may return before its DMA lands: the engine's "prefill" must
    // be complete before Commit lets kvtier's streams read it.
    if (on_gpu_) REQUIRE_CUDA(cudaDeviceSynchronize());
  }
  uint64_t Mismatches(uint32_t slot, const BlockKey& key) {
    std::vector<uint8_t> buf(shape_.seg_bytes);
    uint64_t bad = 0;
    for (uint32_t l = 0; l < shape_.layers; ++l) {
      for (uint32_t g = 0; g < shape_.segments; ++g) {
        if (on_gpu_) {
          REQUIRE_CUDA(cudaMemcpy(buf.data(), At(l, g, slot), buf.size(), cudaMemcpyDeviceToHost));
        } else {
          std::memcpy(buf.data(), At(l, g, slot), buf.size());
        }
        for (uint64_t i = 0; i < buf.size(); ++i) bad += buf[i] != PatternByte(key, l, g, i);
      }
    }
    return bad;
  }
  void Scribble(uint32_t slot) {
    for (uint32_t l = 0; l < shape_.layers; ++l) {
      for (uint32_t g = 0; g < shape_.segments; ++g) {
        if (on_gpu_) {
          REQUIRE_CUDA(cudaMemset(At(l, g, slot), 0xA5, shape_.seg_bytes));
        } else {
          std::memset(At(l, g, slot), 0xA5, shape_.seg_bytes);
        }
      }
    }
    if (on_gpu_) REQUIRE_CUDA(cudaDeviceSynchronize());  // cudaMemset is asynchronous
  }

 private:
  void* At(uint32_t l, uint32_t g, uint32_t slot) const {
    const Segment& s = layout_.layers[l].segments[g];
    return static_cast<std::byte*>(s.base) + uint64_t{slot} * s.stride_bytes;
  }
  GpuShape shape_;
  bool on_gpu_;
  bool ok_ = true;
  std::vector<void*> tensors_;                      // cudaMalloc'ed
  std::vector<std::unique_ptr<std::byte[]>> host_;  // or these
  BlockLayout layout_;
};

struct TempDir : test::TempDir {
  TempDir() : test::TempDir("cuda_device_test") {}
};

// Allocates, writes the pattern of `keys` into the lease's slots, commits, releases.
void CommitChain(Cache& cache, GpuKv& kv, const std::vector<BlockKey>& keys) {
  auto lease = cache.AllocateDevice(static_cast<uint32_t>(keys.size()));
  REQUIRE_OK(lease);
  for (size_t i = 0; i < keys.size(); ++i) kv.Write(lease->slots()[i], keys[i]);
  REQUIRE_OK(cache.Commit(keys, *lease));
  REQUIRE_OK(cache.Release(*lease));
}

// Loads `keys` into a fresh lease and returns the bytes that differ from their pattern.
uint64_t LoadAndCheck(Cache& cache, GpuKv& kv, const std::vector<BlockKey>& keys,
                      MatchResult* match_out = nullptr) {
  auto match = cache.Match(keys);
  REQUIRE_OK(match);
  REQUIRE(match->size() == keys.size());
  if (match_out != nullptr) *match_out = *match;
  auto lease = cache.AllocateDevice(static_cast<uint32_t>(keys.size()));
  REQUIRE_OK(lease);
  for (uint32_t s : lease->slots()) kv.Scribble(s);
  auto xfer = cache.Load(*match, *lease);
  REQUIRE_OK(xfer);
  REQUIRE_OK(xfer->Wait());
  REQUIRE(xfer->blocks() == keys.size());
  uint64_t bad = 0;
  for (size_t i = 0; i < keys.size(); ++i) bad += kv.Mismatches(lease->slots()[i], keys[i]);
  REQUIRE_OK(cache.Release(*lease));
  return bad;
}

const char* MethodName(CudaCopyMethod m) {
  switch (m) {
    case CudaCopyMethod::kAuto:
      return "auto";
    case CudaCopyMethod::kKernel:
      return "kernel";
    case CudaCopyMethod::kBatchMemcpy:
      return "batch_memcpy";
    case CudaCopyMethod::kMemcpyAsync:
      return "memcpy_async";
  }
  return "?";
}

TEST_CASE("CudaDevice: kCuda on memory that is not a GPU's is refused with a reason", "[cuda]") {
  test::EngineKv host_kv;  // host buffers, whatever the machine has
  Options options = test::MakeOptions(host_kv, 4);
  options.backend = DeviceBackend::kCuda;
  auto cache = Cache::Create(options);
  REQUIRE_CODE(cache, absl::StatusCode::kFailedPrecondition);
  INFO(cache.status().ToString());
  CHECK(cache.status().message().find("backend kCuda") != absl::string_view::npos);
}

TEST_CASE("CudaDevice: kAuto on host memory stays emulated, LayerReady is kUnimplemented there",
          "[cuda]") {
  test::EngineKv host_kv;
  Options options = test::MakeOptions(host_kv, 8);
  options.host_write_through = true;
  auto cache = Cache::Create(options);
  REQUIRE_OK(cache);
  const auto keys = test::Chain(2, 1);
  {
    auto lease = (*cache)->AllocateDevice(2);
    REQUIRE_OK(lease);
    for (uint32_t i = 0; i < 2; ++i) host_kv.Write(lease->slots()[i], keys[i]);
    REQUIRE_OK((*cache)->Commit(keys, *lease));
  }
  // Push the blocks off the device so that the next load copies.
  const uint32_t capacity = (*cache)->options().layout.num_slots;
  {
    auto all = (*cache)->AllocateDevice(capacity);
    REQUIRE_OK(all);
  }
  auto match = (*cache)->Match(keys);
  REQUIRE_OK(match);
  REQUIRE(match->blocks_in(Tier::kHost) == 2);
  auto lease = (*cache)->AllocateDevice(2);
  REQUIRE_OK(lease);
  auto xfer = (*cache)->Load(*match, *lease);
  REQUIRE_OK(xfer);
  REQUIRE_CODE(xfer->LayerReady(0), absl::StatusCode::kUnimplemented);
  REQUIRE_CODE(xfer->LayerReady(1000), absl::StatusCode::kOutOfRange);
  REQUIRE_OK(xfer->Wait());
  REQUIRE_CODE(Transfer().LayerReady(0), absl::StatusCode::kFailedPrecondition);
}

// Commits 8 chains of 2 blocks into an 8-slot device with 4 host slots over a disk tier, so that
// the first ones go device -> host -> disk, then loads every chain back and checks every byte.
void RoundTripThroughDisk(GpuKv& kv, DeviceBackend backend, CudaCopyMethod method) {
  TempDir dir;
  Options options;
  options.layout = kv.layout();
  options.backend = backend;
  options.cuda.copy_method = method;
  options.host.capacity_bytes = 4 * kv.layout().block_bytes();  // 4 host slots: the rest to disk
  options.disk = {.directory = dir.path.string(),
                  .capacity_bytes = 64 * kv.layout().block_bytes() + (16 << 20),
                  .allow_buffered = true};
  auto cache = Cache::Create(options);
  REQUIRE_OK(cache);
  std::vector<std::vector<BlockKey>> chains;
  for (uint32_t i = 0; i < 8; ++i) {
    chains.push_back(test::Chain(2, 10 + i, 16));
    CommitChain(**cache, kv, chains.back());
  }
  uint32_t from_disk = 0;
  for (const auto& chain : chains) {
    MatchResult match;
    CHECK(LoadAndCheck(**cache, kv, chain, &match) == 0);
    from_disk += match.blocks_in(Tier::kDisk);
  }
  CHECK(from_disk > 0);
  REQUIRE_OK((*cache)->CheckInvariants());
  const CacheStats stats = (*cache)->Stats();
  CHECK(stats.bytes_disk_read > 0);
  CHECK(stats.bytes_disk_written > 0);
  CHECK(stats.bytes_h2d > 0);
  CHECK(stats.bytes_d2h > 0);
}

// Random elements of `element` type with the specials the codecs treat apart (NaN, +-Inf, -0,
// subnormals), in groups of very different magnitudes.
std::vector<uint8_t> CodecInput(uint8_t element, uint64_t n, std::mt19937& rng) {
  namespace cm = internal::codec_math;
  const uint32_t bytes = element == cm::kElementF32 ? 4 : 2;
  std::vector<uint8_t> out(n * bytes);
  std::uniform_real_distribution<float> value(-1.0f, 1.0f);
  float magnitude = 1;
  for (uint64_t i = 0; i < n; ++i) {
    if (i % 16 == 0) magnitude = std::ldexp(1.0f, static_cast<int>(rng() % 40) - 20);
    float f = value(rng) * magnitude;
    const uint32_t special = rng() % 64;
    const uint32_t sign = (rng() & 1) ? 0x80000000u : 0;
    if (special == 0) f = cm::BitsToFloat(0x7fc00001u | sign);  // NaN with a payload
    if (special == 1) f = cm::BitsToFloat(0x7f800000u | sign);  // +-Inf
    if (special == 2) f = cm::BitsToFloat(sign);                // +-0
    if (special == 3) f = cm::BitsToFloat(0x00000001u | sign);  // the smallest subnormal
    cm::StoreElement(f, out.data(), i, element);
  }
  return out;
}

TEST_CASE("CudaDevice: the codec kernels write the CPU codec's bytes, encoding and decoding",
          "[cuda][codec]") {
  if (NoDevice()) return;
  namespace cm = internal::codec_math;
  auto device = internal::CreateCudaDevice({.device = 0});
  REQUIRE_OK(device);
  struct Shape {
    uint32_t tokens;
    uint64_t channels;
    uint32_t group;
  };
  // Llama-like, odd tails (an int4 byte across two tokens), one group per row.
  const std::vector<Shape> shapes = {{16, 1024, 64}, {7, 200, 16}, {5, 13, 2}, {33, 67, 32}};
  std::mt19937 rng(5);
  for (internal::ElementType type :
       {internal::ElementType::kF16, internal::ElementType::kBf16, internal::ElementType::kF32}) {
    for (const Shape& shape : shapes) {
      const uint64_t bytes = shape.tokens * shape.channels * internal::ElementBytes(type);
      const BlockLayout layout =
          test::TwoLayerLayout(shape.tokens, bytes, {SegmentRole::kKey, SegmentRole::kValue});
      for (internal::CodecId id :
           {internal::CodecId::kFp8E4m3, internal::CodecId::kInt8, internal::CodecId::kInt4}) {
        INFO("element " << static_cast<int>(type) << " codec " << internal::CodecName(id) << " "
                        << shape.tokens << "x" << shape.channels << " group " << shape.group);
        auto codec = internal::BlockCodec::Create(
            "c", {.id = id, .group_size = shape.group, .element = type}, layout);
        REQUIRE_OK(codec);
        const std::vector<uint8_t> raw = CodecInput(
            static_cast<uint8_t>(type), codec->raw_bytes() / internal::ElementBytes(type), rng);
        std::vector<uint8_t> want(codec->encoded_bytes()), want_raw(raw.size());
        codec->Encode(raw.data(), want.data(), internal::CodecKernel::kScalar);
        REQUIRE_OK(codec->Decode(want.data(), want_raw.data(), internal::CodecKernel::kScalar));

        void* dev = nullptr;
        REQUIRE_CUDA(cudaMalloc(&dev, raw.size()));
        REQUIRE_CUDA(cudaMemcpy(dev, raw.data(), raw.size(), cudaMemcpyHostToDevice));
        const uint64_t host_bytes = (want.size() + 4095) / 4096 * 4096;
        auto host = (*device)->AllocateHost(host_bytes, 0);
        REQUIRE_OK(host);
        auto* enc = static_cast<uint8_t*>(*host);
        std::memset(enc, 0xAB, want.size());
        auto jobs = [&](bool encode) {
          std::vector<cm::CodecSegmentJob> out;
          for (uint32_t l = 0; l < codec->num_layers(); ++l) {
            auto* raw_layer = static_cast<uint8_t*>(dev) + codec->raw_layer_offset(l);
            codec->AppendLayerJobs(
                l, [&](size_t s) -> void* { return raw_layer + s * bytes; },
                enc + codec->layer_offset(l), encode, &out);
          }
          return out;
        };
        // Encode on the GPU: every byte after the header (which the host writes) as the CPU's.
        REQUIRE_OK((*device)->EncodeToHost(internal::Stream::kD2H, codec->params(), jobs(true)));
        REQUIRE_OK((*device)->Synchronize());
        CHECK(std::equal(want.begin() + internal::kCodecHeaderBytes, want.end(),
                         enc + internal::kCodecHeaderBytes));
        // Decode the CPU's encoding on the GPU, into scribbled device memory.
        std::memcpy(enc, want.data(), want.size());
        REQUIRE_CUDA(cudaMemset(dev, 0xA5, raw.size()));
        REQUIRE_CUDA(cudaDeviceSynchronize());
        REQUIRE_OK((*device)->DecodeFromHost(internal::Stream::kH2D, codec->params(), jobs(false)));
        REQUIRE_OK((*device)->Synchronize());
        std::vector<uint8_t> got(raw.size());
        REQUIRE_CUDA(cudaMemcpy(got.data(), dev, got.size(), cudaMemcpyDeviceToHost));
        CHECK(got == want_raw);
        (*device)->FreeHost(*host, host_bytes);
        REQUIRE_CUDA(cudaFree(dev));
      }
    }
  }
}

TEST_CASE("CudaDevice: the round-trip scenario holds on the emulated device", "[cuda]") {
  GpuKv kv({"mla", 6, 1, 16 * 576 * 2, 0, 8}, /*on_gpu=*/false);
  RoundTripThroughDisk(kv, DeviceBackend::kEmulated, CudaCopyMethod::kAuto);
}

TEST_CASE("CudaDevice: bytes round-trip device -> host -> disk -> host -> device", "[cuda]") {
  if (NoDevice()) return;
  const GpuShape shape = GENERATE(
      // Llama-like MHA/GQA: K and V per layer, 16 tokens x heads x 128 dims x fp16.
      GpuShape{"mha", 4, 2, 16 * 32 * 128 * 2, 0, 8}, GpuShape{"gqa", 4, 2, 16 * 8 * 128 * 2, 0, 8},
      // MLA: one latent segment of 576 dims per layer.
      GpuShape{"mla", 6, 1, 16 * 576 * 2, 0, 8},
      // Odd sizes and strides: the kernel's byte path, unaligned batch-memcpy entries.
      GpuShape{"odd", 3, 2, 1001, 7, 8});
  const CudaCopyMethod method =
      GENERATE(CudaCopyMethod::kAuto, CudaCopyMethod::kKernel, CudaCopyMethod::kBatchMemcpy,
               CudaCopyMethod::kMemcpyAsync);
  CAPTURE(shape.name, MethodName(method));
  GpuKv kv(shape);
  REQUIRE(kv.ok());
  RoundTripThroughDisk(kv, DeviceBackend::kCuda, method);
}

// A cache whose blocks `keys` sit in the host tier only (committed with write-through, then pushed
// off the device).
struct HostResident {
  std::unique_ptr<Cache> cache;
  std::vector<BlockKey> keys;
};
HostResident MakeHostResident(GpuKv& kv, uint32_t blocks, CudaCopyMethod method,
                              DeviceBackend backend = DeviceBackend::kCuda) {
  Options options;
  options.layout = kv.layout();
  options.backend = backend;
  options.cuda.copy_method = method;
  options.host.capacity_bytes = uint64_t{blocks} * kv.layout().block_bytes();
  options.host_write_through = true;
  auto cache = Cache::Create(options);
  REQUIRE_OK(cache);
  HostResident r{std::move(*cache), test::Chain(blocks, 7, 16)};
  CommitChain(*r.cache, kv, r.keys);
  // Taking every device slot evicts them (their host copies make that free).
  {
    auto all = r.cache->AllocateDevice(kv.layout().num_slots);
    REQUIRE_OK(all);
  }
  auto match = r.cache->Match(r.keys);
  REQUIRE_OK(match);
  REQUIRE(match->blocks_in(Tier::kHost) == blocks);
  return r;
}

TEST_CASE("CudaDevice: a captured graph waits on a layer counter across Loads", "[cuda][graph]") {
  if (NoDevice()) return;
  GpuKv kv({"graph", 4, 2, 16 * 8 * 128 * 2, 0, 8});
  REQUIRE(kv.ok());
  HostResident r = MakeHostResident(kv, 4, CudaCopyMethod::kKernel);
  auto counters = r.cache->GraphLayerCounters();
  REQUIRE_OK(counters);
  auto* layer0 = static_cast<uint32_t*>(*counters);
  uint32_t* target = nullptr;
  REQUIRE_CUDA(cudaMalloc(reinterpret_cast<void**>(&target), sizeof(uint32_t)));
  cudaStream_t engine = nullptr;
  REQUIRE_CUDA(cudaStreamCreateWithFlags(&engine, cudaStreamNonBlocking));
  // The engine's decode graph: "wait for layer 0", captured once with fixed pointers.
  cudaGraph_t graph = nullptr;
  cudaGraphExec_t exec = nullptr;
  REQUIRE_CUDA(cudaStreamBeginCapture(engine, cudaStreamCaptureModeThreadLocal));
  REQUIRE_CUDA(internal::LaunchWaitCounter(layer0, target, engine));
  REQUIRE_CUDA(cudaStreamEndCapture(engine, &graph));
  REQUIRE_CUDA(cudaGraphInstantiate(&exec, graph, 0));
  // Round 0 copies from the host; round 1 finds the blocks on the device (nothing to copy): the
  // counters are written either way.
  uint32_t last = 0;
  for (int round = 0; round < 2; ++round) {
    CAPTURE(round);
    auto match = r.cache->Match(r.keys);
    REQUIRE_OK(match);
    auto lease = r.cache->AllocateDevice(*match, static_cast<uint32_t>(r.keys.size()));
    REQUIRE_OK(lease);
    auto xfer = r.cache->Load(*match, *lease);
    REQUIRE_OK(xfer);
    const uint32_t seq = xfer->sequence();
    CHECK(seq > last);
    last = seq;
    REQUIRE_CUDA(cudaMemcpy(target, &seq, sizeof(seq), cudaMemcpyHostToDevice));
    REQUIRE_CUDA(cudaGraphLaunch(exec, engine));
    REQUIRE_CUDA(cudaStreamSynchronize(engine));  // returns: the counter reached seq
    REQUIRE_OK(xfer->Wait());
    uint32_t seen = 0;
    REQUIRE_CUDA(cudaMemcpy(&seen, layer0, sizeof(seen), cudaMemcpyDeviceToHost));
    CHECK(seen == seq);
    for (size_t i = 0; i < r.keys.size(); ++i)
      CHECK(kv.Mismatches(lease->slots()[i], r.keys[i]) == 0);
    REQUIRE_OK(r.cache->Release(*lease));
  }
  REQUIRE_CUDA(cudaGraphExecDestroy(exec));
  REQUIRE_CUDA(cudaGraphDestroy(graph));
  REQUIRE_CUDA(cudaStreamDestroy(engine));
  REQUIRE_CUDA(cudaFree(target));
}

TEST_CASE("CudaDevice: layer events complete in layer order", "[cuda]") {
  if (NoDevice()) return;
  const CudaCopyMethod method = GENERATE(CudaCopyMethod::kKernel, CudaCopyMethod::kBatchMemcpy);
  CAPTURE(MethodName(method));
  GpuKv kv({"llama16", 32, 2, 16 * 8 * 128 * 2, 0, 16});
  REQUIRE(kv.ok());
  HostResident r = MakeHostResident(kv, 16, method);
  auto match = r.cache->Match(r.keys);
  REQUIRE_OK(match);
  auto lease = r.cache->AllocateDevice(16);
  REQUIRE_OK(lease);
  auto xfer = r.cache->Load(*match, *lease);
  REQUIRE_OK(xfer);
  std::vector<cudaEvent_t> events;
  for (uint32_t l = 0; l < 32; ++l) {
    auto ev = xfer->LayerReady(l);
    REQUIRE_OK(ev);
    REQUIRE(*ev != nullptr);
    events.push_back(static_cast<cudaEvent_t>(*ev));
  }
  // Query from the last layer down: once layer l is seen complete, every earlier one must be.
  uint64_t violations = 0;
  bool all = false;
  while (!all) {
    bool later_done = false;
    all = true;
    for (int l = 31; l >= 0; --l) {
      const cudaError_t e = cudaEventQuery(events[l]);
      REQUIRE((e == cudaSuccess || e == cudaErrorNotReady));
      if (e == cudaErrorNotReady) all = false;
      if (later_done && e != cudaSuccess) violations++;
      later_done = later_done || e == cudaSuccess;
    }
  }
  CHECK(violations == 0);
  REQUIRE_OK(xfer->Wait());
  for (uint32_t i = 0; i < 16; ++i) CHECK(kv.Mismatches(lease->slots()[i], r.keys[i]) == 0);
}

TEST_CASE("CudaDevice: a compute stream waiting on LayerReady(0) does not wait for the last layer",
          "[cuda]") {
  if (NoDevice()) return;
  const CudaCopyMethod method = GENERATE(CudaCopyMethod::kKernel, CudaCopyMethod::kBatchMemcpy);
  CAPTURE(MethodName(method));
  // Llama-3-8B, 64 tokens per block: 8 MiB per block; 32 blocks = 256 MiB per load.
  GpuKv kv({"llama64", 32, 2, 64 * 8 * 128 * 2, 0, 32});
  REQUIRE(kv.ok());
  HostResident r = MakeHostResident(kv, 32, method);
  auto match = r.cache->Match(r.keys);
  REQUIRE_OK(match);
  auto lease = r.cache->AllocateDevice(32);
  REQUIRE_OK(lease);
  cudaStream_t compute = nullptr;
  REQUIRE_CUDA(cudaStreamCreateWithFlags(&compute, cudaStreamNonBlocking));
  cudaEvent_t layer0_seen = nullptr;
  REQUIRE_CUDA(cudaEventCreate(&layer0_seen));
  const auto start = std::chrono::steady_clock::now();
  auto xfer = r.cache->Load(*match, *lease);
  REQUIRE_OK(xfer);
  auto first = xfer->LayerReady(0);
  auto last = xfer->LayerReady(31);
  REQUIRE_OK(first);
  REQUIRE_OK(last);
  REQUIRE_CUDA(cudaStreamWaitEvent(compute, static_cast<cudaEvent_t>(*first), 0));
  REQUIRE_CUDA(cudaEventRecord(layer0_seen, compute));
  REQUIRE_CUDA(cudaEventSynchronize(layer0_seen));
  const auto layer0 = std::chrono::steady_clock::now();
  const cudaError_t last_state = cudaEventQuery(static_cast<cudaEvent_t>(*last));
  REQUIRE_OK(xfer->Wait());
  const auto whole = std::chrono::steady_clock::now();
  using us = std::chrono::microseconds;
  WARN("layer 0 ready after " << std::chrono::duration_cast<us>(layer0 - start).count()
                              << " us, whole load "
                              << std::chrono::duration_cast<us>(whole - start).count() << " us ("
                              << MethodName(method) << ")");
  CHECK(last_state == cudaErrorNotReady);  // the compute stream ran ahead of the last layer
  for (uint32_t i = 0; i < 32; ++i) CHECK(kv.Mismatches(lease->slots()[i], r.keys[i]) == 0);
  static_cast<void>(cudaEventDestroy(layer0_seen));
  static_cast<void>(cudaStreamDestroy(compute));
}

// Four threads, each loading, verifying, completing and committing (with write-through) chains of
// 4 blocks on a 24-slot device (32 blocks per thread: misses, so promotions): H2D and D2H copies
// in flight together.
void ConcurrentLoadsAndStores(GpuKv& kv, DeviceBackend backend, CudaCopyMethod method) {
  Options options;
  options.layout = kv.layout();
  options.backend = backend;
  options.cuda.copy_method = method;
  options.host.capacity_bytes = 256 * kv.layout().block_bytes();
  options.host_write_through = true;
  auto cache = Cache::Create(options);
  REQUIRE_OK(cache);
  constexpr int kThreads = 4, kRounds = 20;
  std::atomic<uint64_t> mismatched{0}, errors{0}, loaded{0}, promoted{0};
  auto worker = [&](int t) {
    for (int round = 0; round < kRounds; ++round) {
      const auto keys = test::Chain(4, 1000 * t + round % 8, 16);  // 32 blocks per thread
      auto match = (*cache)->Match(keys);
      if (!match.ok()) {
        errors++;
        continue;
      }
      auto lease = (*cache)->AllocateDevice(4);
      if (!lease.ok()) continue;  // all slots busy for now: fine
      auto xfer = (*cache)->Load(*match, *lease);
      if (!xfer.ok() || !xfer->Wait().ok()) {
        errors++;
        continue;
      }
      promoted += xfer->blocks_promoted();
      for (uint32_t i = 0; i < xfer->blocks(); ++i) {
        mismatched += kv.Mismatches(lease->slots()[i], keys[i]);
        loaded++;
      }
      for (uint32_t i = xfer->blocks(); i < 4; ++i) kv.Write(lease->slots()[i], keys[i]);
      if (!(*cache)->Commit(keys, *lease).ok()) errors++;
    }
  };
  std::vector<std::thread> threads;
  for (int t = 0; t < kThreads; ++t) threads.emplace_back(worker, t);
  for (auto& th : threads) th.join();
  CHECK(mismatched == 0);
  CHECK(errors == 0);
  CHECK(loaded > 0);
  const CacheStats stats = (*cache)->Stats();
  INFO("promotions " << stats.promotions << ", demotions " << stats.demotions << ", bytes_d2h "
                     << stats.bytes_d2h);
  CHECK(promoted > 0);
  REQUIRE_OK((*cache)->CheckInvariants());
}

TEST_CASE("CudaDevice: the host-resident and concurrency scenarios hold on the emulated device",
          "[cuda]") {
  GpuKv kv({"gqa", 8, 2, 1024, 0, 24}, /*on_gpu=*/false);
  {
    HostResident r = MakeHostResident(kv, 16, CudaCopyMethod::kAuto, DeviceBackend::kEmulated);
    CHECK(r.keys.size() == 16);
  }
  ConcurrentLoadsAndStores(kv, DeviceBackend::kEmulated, CudaCopyMethod::kAuto);
}

TEST_CASE("CudaDevice: concurrent loads (H2D) and stores (D2H) do not corrupt each other",
          "[cuda]") {
  if (NoDevice()) return;
  const CudaCopyMethod method = GENERATE(CudaCopyMethod::kKernel, CudaCopyMethod::kBatchMemcpy);
  CAPTURE(MethodName(method));
  GpuKv kv({"gqa", 8, 2, 16 * 8 * 128 * 2, 0, 24});
  REQUIRE(kv.ok());
  ConcurrentLoadsAndStores(kv, DeviceBackend::kCuda, method);
}

TEST_CASE(
    "Regression #14: a failed device calls pending callbacks with the error on its own threads, "
    "releases a stream held by a disk wait, and refuses work",
    "[cuda][spin]") {
  if (NoDevice()) return;
  auto device = internal::CreateCudaDevice({.device = 0});
  REQUIRE_OK(device);
  // Hold the H2D stream on a host event (a disk read that never completes).
  auto read = std::make_shared<internal::HostEvent>();
  REQUIRE_OK((*device)->WaitEvent(internal::Stream::kH2D, read));
  std::atomic<int> calls{0};
  absl::Status seen;
  std::thread::id on;
  REQUIRE_OK((*device)->AddCallback(internal::Stream::kH2D, [&](absl::Status s) {
    seen = s;
    on = std::this_thread::get_id();
    calls++;
  }));
  CHECK(calls == 0);  // the stream is held
  REQUIRE_OK(internal::FailCudaDeviceForTesting(device->get(), absl::InternalError("injected")));
  const internal::CopyRegion none{};
  CHECK((*device)->Copy(internal::Stream::kD2H, {&none, 1}).code() ==
        absl::StatusCode::kFailedPrecondition);
  CHECK((*device)->RecordEvent(internal::Stream::kD2H).status().code() ==
        absl::StatusCode::kFailedPrecondition);
  CHECK((*device)->AddCallback(internal::Stream::kD2H, [](absl::Status) {}).code() ==
        absl::StatusCode::kFailedPrecondition);
  // The spin kernel was released (its flag raised by the failure), though the read never ends.
  CHECK((*device)->Synchronize().code() == absl::StatusCode::kInternal);
  CHECK(calls == 1);
  CHECK(seen.code() == absl::StatusCode::kInternal);
  CHECK(on != std::this_thread::get_id());
  device->reset();   // ~CudaDevice returns
  read->Complete();  // late: touches nothing freed
}

TEST_CASE("CudaDevice: a stream waiting on a disk read runs once the read completes",
          "[cuda][spin]") {
  if (NoDevice()) return;
  auto device = internal::CreateCudaDevice({.device = 0});
  REQUIRE_OK(device);
  auto read = std::make_shared<internal::HostEvent>();
  REQUIRE_OK((*device)->WaitEvent(internal::Stream::kH2D, read));
  auto after = (*device)->RecordEvent(internal::Stream::kH2D);
  REQUIRE_OK(after);
  std::this_thread::sleep_for(std::chrono::milliseconds(20));  // a GPU-side wait: no host clock
  CHECK_FALSE((*after)->Query());
  read->Complete();
  REQUIRE_OK((*after)->Wait());
  REQUIRE_OK((*device)->Synchronize());
}

// Runs the hidden test case `name` of this binary in a fresh process (CUDA does not survive fork(),
// and a hang must not take the whole binary down): fork + exec, killed after `timeout_s`. The
// child's exit status: 0 when its test passed.
int RunChild(const char* name, int timeout_s) {
  const pid_t pid = fork();
  REQUIRE(pid >= 0);
  if (pid == 0) {
    execl("/proc/self/exe", "/proc/self/exe", name, static_cast<char*>(nullptr));
    _exit(127);
  }
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(timeout_s);
  int status = 0;
  for (;;) {
    const pid_t r = waitpid(pid, &status, WNOHANG);
    if (r == pid) break;
    if (std::chrono::steady_clock::now() > deadline) {
      kill(pid, SIGKILL);
      waitpid(pid, &status, 0);
      FAIL("child '" << name << "' still running after " << timeout_s << " s: killed (a hang)");
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(50));  // polling a child, not timing
  }
  INFO("child '" << name << "' status " << status);
  REQUIRE(WIFEXITED(status));
  return WEXITSTATUS(status);
}

// Commits `n` blocks in chains of 100, pushes them off the device through a 64-slot host pool
// (write-backs to the disk), and returns the keys. The cache has `n` + 36 device slots.
struct DiskGated {
  TempDir dir;
  std::unique_ptr<GpuKv> kv;
  std::unique_ptr<Cache> cache;
  std::vector<std::vector<BlockKey>> chains;
};
std::unique_ptr<DiskGated> MakeDiskGated(uint32_t n) {
  auto g = std::make_unique<DiskGated>();
  // 16 KiB blocks: 2 layers x K, V x 4 KiB.
  g->kv = std::make_unique<GpuKv>(GpuShape{"gated", 2, 2, 4096, 0, n + 36});
  REQUIRE(g->kv->ok());
  Options options;
  options.layout = g->kv->layout();
  options.backend = DeviceBackend::kCuda;
  options.cuda.copy_method = CudaCopyMethod::kKernel;
  options.host.capacity_bytes = 64 * (g->kv->layout().block_bytes() + 8192);  // about 64 slots
  options.disk = {.directory = g->dir.path.string(),
                  .capacity_bytes = uint64_t{n + 256} * (g->kv->layout().block_bytes() + 8192),
                  .allow_buffered = true};
  auto cache = Cache::Create(options);
  REQUIRE_OK(cache);
  g->cache = std::move(*cache);
  for (uint32_t c = 0; c * 100 < n; ++c) {
    g->chains.push_back(test::Chain(std::min<uint32_t>(100, n - c * 100), 500 + c, 16));
    CommitChain(*g->cache, *g->kv, g->chains.back());
  }
  {
    // Taking every device slot pushes every block down: through the full host pool to the disk.
    auto all = g->cache->AllocateDevice(g->kv->layout().num_slots);
    REQUIRE_OK(all);
  }
  return g;
}

TEST_CASE("child: a disk-gated Load of 1,500 blocks with a full host pool completes",
          "[.cuda_child]") {
  if (NoDevice()) return;
  auto g = MakeDiskGated(1500);
  uint32_t from_disk = 0;
  std::vector<MatchResult> matches;
  std::vector<DeviceLease> leases;
  std::vector<Transfer> transfers;
  // Every chain's Load is enqueued before any is waited for: about 1,500 reads, each the copies'
  // gate, behind write-backs of the host slots they reuse; thousands of commands on the stream.
  for (const auto& chain : g->chains) {
    auto match = g->cache->Match(chain);
    REQUIRE_OK(match);
    REQUIRE(match->size() == chain.size());
    from_disk += match->blocks_in(Tier::kDisk);
    auto lease = g->cache->AllocateDevice(*match, static_cast<uint32_t>(chain.size()));
    REQUIRE_OK(lease);
    auto xfer = g->cache->Load(*match, *lease);
    REQUIRE_OK(xfer);
    matches.push_back(*match);
    leases.push_back(std::move(*lease));
    transfers.push_back(std::move(*xfer));
  }
  CHECK(from_disk > 1000);
  uint64_t bad = 0;
  for (size_t c = 0; c < transfers.size(); ++c) {
    REQUIRE_OK(transfers[c].Wait());
    for (size_t i = 0; i < g->chains[c].size(); ++i) {
      bad += g->kv->Mismatches(leases[c].slots()[i], g->chains[c][i]);
    }
  }
  CHECK(bad == 0);
  REQUIRE_OK(g->cache->CheckInvariants());
}

TEST_CASE("Regression #14: a disk-gated Load of 1,500 blocks with a full host pool ends in time",
          "[cuda][spin]") {
  if (NoDevice()) return;
  CHECK(RunChild("child: a disk-gated Load of 1,500 blocks with a full host pool completes", 240) ==
        0);
}

TEST_CASE("child: an illegal address mid-Load fails the Load and the process exits",
          "[.cuda_child]") {
  if (NoDevice()) return;
  auto g = MakeDiskGated(300);
  std::vector<DeviceLease> leases;
  std::vector<Transfer> transfers;
  for (const auto& chain : g->chains) {
    auto match = g->cache->Match(chain);
    REQUIRE_OK(match);
    auto lease = g->cache->AllocateDevice(*match, static_cast<uint32_t>(chain.size()));
    REQUIRE_OK(lease);
    auto xfer = g->cache->Load(*match, *lease);
    REQUIRE_OK(xfer);
    leases.push_back(std::move(*lease));
    transfers.push_back(std::move(*xfer));
  }
  // The engine's bug, mid-Load: a kernel writing through a wild pointer on its own stream. The
  // context's sticky error stops every stream; kvtier must fail the Loads, not hang on them.
  cudaStream_t engine = nullptr;
  REQUIRE_CUDA(cudaStreamCreateWithFlags(&engine, cudaStreamNonBlocking));
  void* scratch = nullptr;
  REQUIRE_CUDA(cudaMalloc(&scratch, 4096));
  const internal::GatherRegion wild{reinterpret_cast<void*>(uintptr_t{0x10}), scratch, 4096};
  REQUIRE(internal::LaunchGather(&wild, 1, 4096, 1, engine) == cudaSuccess);
  int failed = 0;
  for (Transfer& t : transfers) failed += t.Wait().ok() ? 0 : 1;
  INFO(failed << " of " << transfers.size() << " Loads failed");
  // Every Transfer ended; those that had finished before the fault may have succeeded.
  leases.clear();
  transfers.clear();
  g->cache.reset();  // ~Cache and ~CudaDevice return on a failed context
}

TEST_CASE("Regression #14: a process whose context faults mid-Load exits without hanging",
          "[cuda][spin]") {
  if (NoDevice()) return;
  CHECK(RunChild("child: an illegal address mid-Load fails the Load and the process exits", 120) ==
        0);
}

}  // namespace
}  // namespace kvtier
