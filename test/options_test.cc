#include "kvtier/options.h"

#include <xxhash.h>

#include <functional>
#include <string>
#include <utility>
#include <vector>

#include "kvtier/cache.h"
#include "test/util/test_util.h"

namespace kvtier {
namespace {

using test::EngineKv;

TEST_CASE("Options: a bad field fails Create with a code and leaves nothing behind", "[options]") {
  EngineKv kv;
  const Options good = test::MakeOptions(kv, 8);
  REQUIRE_OK(good.Validate());
  auto with = [&](auto mutate) {
    Options o = good;
    mutate(o);
    return Cache::Create(o).status();
  };
  const auto kInvalid = absl::StatusCode::kInvalidArgument;
  REQUIRE_CODE(with([](Options& o) { o.layout.num_slots = 0; }), kInvalid);
  REQUIRE_CODE(with([](Options& o) { o.layout.layers.clear(); }), kInvalid);
  REQUIRE_CODE(with([&](Options& o) { o.device.capacity_slots = kv.layout().num_slots + 1; }),
               kInvalid);
  REQUIRE_CODE(with([](Options& o) { o.host.capacity_bytes = 1; }), kInvalid);
  REQUIRE_CODE(with([](Options& o) { o.host.policy = ""; }), kInvalid);
  REQUIRE_CODE(with([](Options& o) { o.device.policy = "no-such-policy"; }),
               absl::StatusCode::kInvalidArgument);
  REQUIRE_CODE(with([](Options& o) { o.host.policy_params = {{"bogus", "1"}}; }), kInvalid);
  REQUIRE_CODE(with([](Options& o) { o.host.policy_params = {{"x", "1"}}; }), kInvalid);
  REQUIRE_CODE(with([](Options& o) {
                 o.device.policy = "s3fifo";
                 o.device.policy_params = {{"small_ratio", "2"}};
               }),
               kInvalid);
  // A disabled tier's policy is never used, so it is not checked (the disk tier is off here).
  REQUIRE(good.disk.directory.empty());
  REQUIRE_OK(with([](Options& o) { o.disk.policy = "no-such-policy"; }));
  REQUIRE_CODE(with([](Options& o) { o.cuda.device = -2; }), kInvalid);
  REQUIRE_CODE(with([](Options& o) { o.cuda.copy_method = static_cast<CudaCopyMethod>(9); }),
               kInvalid);
  {
    // kCuda over host buffers: kUnimplemented in a build without CUDA; kFailedPrecondition with
    // it (no device, or the layout is not device memory).
    const absl::Status s = with([](Options& o) { o.backend = DeviceBackend::kCuda; });
    INFO(s.ToString());
    CHECK((s.code() == absl::StatusCode::kUnimplemented ||
           s.code() == absl::StatusCode::kFailedPrecondition));
  }
  // After all of that, a good cache is still created and works.
  auto cache = Cache::Create(good);
  REQUIRE_OK(cache);
  auto r = test::RunSequence(**cache, kv, test::Chain(3, 1));
  REQUIRE_OK(r);
}

TEST_CASE("Options: a host capacity of 0 disables the host tier", "[options]") {
  EngineKv kv({.num_slots = 4});
  auto cache = Cache::Create(test::MakeOptions(kv, 0));
  REQUIRE_OK(cache);
  CHECK((*cache)->Stats().host.capacity_blocks == 0);
  for (uint32_t s = 0; s < 6; ++s) REQUIRE_OK(test::RunSequence(**cache, kv, test::Chain(2, s)));
  const CacheStats st = (*cache)->Stats();
  CHECK(st.device.drops > 0);  // evictions had nowhere to go
  CHECK(st.demotions == 0);
  REQUIRE_OK((*cache)->CheckInvariants());
}

TEST_CASE("Options: device.capacity_slots limits the device tier below the layout's slots",
          "[options]") {
  EngineKv kv({.num_slots = 16});
  Options o = test::MakeOptions(kv, 0);
  o.device.capacity_slots = 4;
  auto cache = Cache::Create(o);
  REQUIRE_OK(cache);
  REQUIRE_CODE((*cache)->AllocateDevice(5), absl::StatusCode::kInvalidArgument);
  auto lease = (*cache)->AllocateDevice(4);
  REQUIRE_OK(lease);
  for (uint32_t s : lease->slots()) CHECK(s < 4);
}

TEST_CASE("Options: metadata-only caches accept a layout without pointers", "[options]") {
  BlockLayout layout{.tokens_per_block = 512, .num_slots = 8};
  layout.layers.push_back({.segments = {{nullptr, 1 << 20, 1 << 20}}});
  REQUIRE_CODE(Cache::Create({.layout = layout, .backend = DeviceBackend::kEmulated}),
               absl::StatusCode::kInvalidArgument);
  auto cache = Cache::Create({.layout = layout,
                              .backend = DeviceBackend::kMetadataOnly,
                              .host = {.capacity_bytes = 16ull << 20}});
  REQUIRE_OK(cache);
  const auto keys = test::Chain(3, 9);
  auto lease = (*cache)->AllocateDevice(3);
  REQUIRE_OK(lease);
  REQUIRE_OK((*cache)->Commit(keys, *lease));
  auto match = (*cache)->Match(keys);
  REQUIRE_OK(match);
  CHECK(match->size() == 3);
}

TEST_CASE("Options: each bad shard field is kInvalidArgument naming its path", "[options]") {
  EngineKv kv;
  const Options good = test::MakeOptions(kv, 8);
  struct Bad {
    const char* path;
    std::function<void(ShardIdentity&)> mutate;
  };
  const std::vector<Bad> bad = {
      {"Options.shard.tp_size: ", [](ShardIdentity& s) { s.tp_size = 0; }},
      {"Options.shard.tp_rank: ", [](ShardIdentity& s) { s.tp_rank = 1; }},
      {"Options.shard.tp_rank: ",
       [](ShardIdentity& s) {
         s.tp_size = 4;
         s.tp_rank = 4;
       }},
      {"Options.shard.tp_rank: ",  // replicated or not, the rank must exist
       [](ShardIdentity& s) {
         s.replicated = true;
         s.tp_size = 2;
         s.tp_rank = 7;
       }},
      {"Options.shard.pp_size: ", [](ShardIdentity& s) { s.pp_size = 0; }},
      {"Options.shard.pp_rank: ",
       [](ShardIdentity& s) {
         s.pp_size = 2;
         s.pp_rank = 2;
       }},
      {"Options.shard.dtype: ",
       [](ShardIdentity& s) { s.dtype = std::string(kMaxShardStringBytes + 1, 'b'); }},
      {"Options.shard.dtype: ",
       [](ShardIdentity& s) {
         s.dtype = std::string(
             "bf\0"
             "16",
             5);
       }},
      {"Options.shard.format: ",
       [](ShardIdentity& s) { s.format = std::string(kMaxShardStringBytes + 1, 'f'); }},
      {"Options.shard.format: ", [](ShardIdentity& s) { s.format = std::string(1, '\0'); }},
  };
  for (const Bad& b : bad) {
    CAPTURE(b.path);
    Options o = good;
    b.mutate(o.shard);
    const absl::Status v = o.Validate();
    REQUIRE_CODE(v, absl::StatusCode::kInvalidArgument);
    CHECK_THAT(std::string(v.message()), Catch::Matchers::StartsWith(b.path));
    REQUIRE_CODE(Cache::Create(o), absl::StatusCode::kInvalidArgument);
  }
  // The limits themselves are fine.
  Options edge = good;
  edge.shard = {.tp_rank = 7,
                .tp_size = 8,
                .pp_rank = 3,
                .pp_size = 4,
                .dtype = std::string(kMaxShardStringBytes, 'b'),
                .format = std::string(kMaxShardStringBytes, 'f')};
  REQUIRE_OK(edge.Validate());
  REQUIRE_OK(Cache::Create(edge));
}

TEST_CASE("Options: a known shard dtype refuses segments that cut its elements", "[options]") {
  alignas(64) static std::byte kv[2][8 * 1024];
  auto with = [&](const std::string& dtype, uint64_t base_offset, uint64_t bytes, uint64_t stride,
                  DeviceBackend backend = DeviceBackend::kEmulated) {
    Options o;
    o.backend = backend;
    o.shard.dtype = dtype;
    o.layout = {.tokens_per_block = 16, .num_slots = 8};
    void* k = backend == DeviceBackend::kMetadataOnly ? nullptr : kv[0] + base_offset;
    void* v = backend == DeviceBackend::kMetadataOnly ? nullptr : kv[1];
    o.layout.layers.push_back({.segments = {{k, bytes, stride}, {v, 512, 512}}});
    return o.Validate();
  };
  const auto kInvalid = absl::StatusCode::kInvalidArgument;
  REQUIRE_OK(with("bfloat16", 0, 512, 512));
  REQUIRE_OK(with("torch.float32", 4, 516, 516));
  const absl::Status odd_base = with("bfloat16", 1, 512, 512);
  REQUIRE_CODE(odd_base, kInvalid);
  CHECK_THAT(std::string(odd_base.message()),
             Catch::Matchers::StartsWith("Options.layout.layers[0].segments[0].base: ") &&
                 Catch::Matchers::Contains("bfloat16"));
  REQUIRE_CODE(with("float16", 0, 511, 512), kInvalid);
  REQUIRE_CODE(with("torch.float32", 0, 512, 514), kInvalid);
  REQUIRE_CODE(with("float32", 0, 510, 512, DeviceBackend::kMetadataOnly), kInvalid);
  // One-byte types and names it does not know check nothing: any offset is whole elements.
  REQUIRE_OK(with("float8_e4m3fn", 1, 511, 513));
  REQUIRE_OK(with("my-packed-int4", 1, 511, 513));
  REQUIRE_OK(with("", 1, 511, 513));
}

TEST_CASE("Options: the fingerprint covers the layout shape and every shard field", "[options]") {
  EngineKv kv;
  const Options base = test::MakeOptions(kv, 8);
  const uint64_t f = base.Fingerprint();
  auto with = [&](auto mutate) {
    Options o = base;
    mutate(o);
    return o.Fingerprint();
  };
  CHECK(with([](Options& o) { o.shard.tp_size = 2; }) != f);
  CHECK(with([](Options& o) { o.shard = {.tp_rank = 1, .tp_size = 2}; }) !=
        with([](Options& o) { o.shard = {.tp_rank = 0, .tp_size = 2}; }));
  CHECK(with([](Options& o) { o.shard = {.pp_rank = 1, .pp_size = 2}; }) !=
        with([](Options& o) { o.shard = {.pp_rank = 0, .pp_size = 2}; }));
  CHECK(with([](Options& o) { o.shard.pp_size = 2; }) != f);
  CHECK(with([](Options& o) { o.shard.dtype = "bfloat16"; }) !=
        with([](Options& o) { o.shard.dtype = "float16"; }));
  CHECK(with([](Options& o) { o.shard.dtype = "bfloat16"; }) != f);
  CHECK(with([](Options& o) { o.shard.format = "vllm-flash-nhd"; }) != f);
  CHECK(with([](Options& o) { o.shard.replicated = true; }) != f);
  // dtype and format are length-prefixed: moving bytes from one to the other changes it, and so
  // does swapping them.
  CHECK(with([](Options& o) { o.shard = {.dtype = "ab", .format = "c"}; }) !=
        with([](Options& o) { o.shard = {.dtype = "a", .format = "bc"}; }));
  CHECK(with([](Options& o) { o.shard = {.dtype = "x", .format = ""}; }) !=
        with([](Options& o) { o.shard = {.dtype = "", .format = "x"}; }));
  // The layout's shape still counts; its pointers and the other options do not.
  EngineKv other({.segment_bytes = 128});
  CHECK(with([&](Options& o) { o.layout = other.layout(); }) != f);
  EngineKv same_shape;
  CHECK(with([&](Options& o) { o.layout = same_shape.layout(); }) == f);
  CHECK(with([](Options& o) {
          o.host.capacity_bytes *= 2;
          o.remote.scope = "elsewhere";
        }) == f);
  // Replicated (MLA): the same on every TP rank and degree, still distinct per PP stage.
  const uint64_t r0 = with([](Options& o) { o.shard = {.tp_size = 2, .replicated = true}; });
  CHECK(with([](Options& o) { o.shard = {.tp_rank = 1, .tp_size = 2, .replicated = true}; }) == r0);
  CHECK(with([](Options& o) { o.shard = {.tp_rank = 5, .tp_size = 8, .replicated = true}; }) == r0);
  CHECK(with([](Options& o) {
          o.shard = {.tp_size = 2, .pp_rank = 1, .pp_size = 2, .replicated = true};
        }) != r0);
}

TEST_CASE("Options: the fingerprint is XXH3-64 of the documented little-endian encoding",
          "[options]") {
  // Recomputed here from the encoding options.h describes, so a change to it (which would orphan
  // every disk directory and remote key written before) cannot happen unnoticed.
  EngineKv kv;
  Options o = test::MakeOptions(kv, 8);
  o.shard = {.tp_rank = 3,
             .tp_size = 4,
             .pp_rank = 1,
             .pp_size = 2,
             .dtype = "bfloat16",
             .format = "vllm-flash-nhd"};
  auto encode = [](const Options& opt, bool replicated) {
    std::string bytes;
    auto word = [&](uint64_t w) {
      for (int i = 0; i < 8; ++i) bytes.push_back(static_cast<char>((w >> (8 * i)) & 0xff));
    };
    word(0x6b7674696572ULL);
    word(2);
    word(opt.layout.Fingerprint());
    word(replicated ? 1 : 0);
    word(replicated ? 0 : opt.shard.tp_rank);
    word(replicated ? 0 : opt.shard.tp_size);
    word(opt.shard.pp_rank);
    word(opt.shard.pp_size);
    word(opt.shard.dtype.size());
    bytes += opt.shard.dtype;
    word(opt.shard.format.size());
    bytes += opt.shard.format;
    return XXH3_64bits(bytes.data(), bytes.size());
  };
  CHECK(o.Fingerprint() == encode(o, false));
  o.shard.replicated = true;
  CHECK(o.Fingerprint() == encode(o, true));
}

}  // namespace
}  // namespace kvtier
