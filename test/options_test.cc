#include "kvtier/options.h"

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

}  // namespace
}  // namespace kvtier
