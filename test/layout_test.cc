#include "kvtier/layout.h"

#include <limits>

#include "test/util/test_util.h"

namespace kvtier {
namespace {

BlockLayout Mha(std::byte* k, std::byte* v) {
  BlockLayout l{.tokens_per_block = 16, .num_slots = 8};
  for (int i = 0; i < 3; ++i) l.layers.push_back({.segments = {{k, 100, 100}, {v, 100, 128}}});
  return l;
}

TEST_CASE("BlockLayout: MHA, MLA and interleaved K/V layouts are valid and sized", "[layout]") {
  std::byte buf[4096];
  const BlockLayout mha = Mha(buf, buf + 1024);
  REQUIRE_OK(mha.Validate());
  CHECK(mha.layer_bytes(0) == 200);
  CHECK(mha.block_bytes() == 600);
  BlockLayout mla{.tokens_per_block = 64, .num_slots = 4};
  for (int i = 0; i < 61; ++i) mla.layers.push_back({.segments = {{buf, 576, 576}}});
  REQUIRE_OK(mla.Validate());
  CHECK(mla.block_bytes() == 61 * 576);
  BlockLayout inter{.tokens_per_block = 16, .num_slots = 4};
  inter.layers.push_back({.segments = {{buf, 64, 128}, {buf + 64, 64, 128}}});
  REQUIRE_OK(inter.Validate());
}

TEST_CASE("BlockLayout: each bad field is kInvalidArgument", "[layout]") {
  std::byte buf[64];
  const BlockLayout good = Mha(buf, buf);
  auto bad = [&](auto mutate) {
    BlockLayout l = good;
    mutate(l);
    return l.Validate();
  };
  const auto kInvalid = absl::StatusCode::kInvalidArgument;
  REQUIRE_CODE(bad([](BlockLayout& l) { l.tokens_per_block = 0; }), kInvalid);
  REQUIRE_CODE(bad([](BlockLayout& l) { l.num_slots = 0; }), kInvalid);
  REQUIRE_CODE(bad([](BlockLayout& l) { l.layers.clear(); }), kInvalid);
  REQUIRE_CODE(bad([](BlockLayout& l) { l.layers[1].segments.clear(); }), kInvalid);
  REQUIRE_CODE(bad([](BlockLayout& l) { l.layers[2].segments[1].base = nullptr; }), kInvalid);
  REQUIRE_CODE(bad([](BlockLayout& l) { l.layers[0].segments[0].bytes_per_block = 0; }), kInvalid);
  REQUIRE_CODE(bad([](BlockLayout& l) { l.layers[0].segments[0].stride_bytes = 99; }), kInvalid);
  REQUIRE_CODE(bad([](BlockLayout& l) {
                 l.layers[0].segments[0].stride_bytes = std::numeric_limits<uint64_t>::max() / 2;
               }),
               kInvalid);
  // Null pointers are only accepted when the caller says they are not needed (metadata-only).
  BlockLayout nulls = good;
  nulls.layers[0].segments[0].base = nullptr;
  REQUIRE_OK(nulls.ValidateShape(/*need_pointers=*/false));
}

TEST_CASE("BlockLayout: the fingerprint follows the shape, not the pointers or slot count",
          "[layout]") {
  std::byte a[64], b[64];
  const BlockLayout base = Mha(a, a);
  BlockLayout moved = Mha(b, b);
  moved.num_slots = 1000;
  moved.layers[0].segments[1].stride_bytes = 4096;
  CHECK(moved.Fingerprint() == base.Fingerprint());
  BlockLayout bigger = base;
  bigger.layers[2].segments[0].bytes_per_block = 101;
  CHECK(bigger.Fingerprint() != base.Fingerprint());
  BlockLayout deeper = base;
  deeper.layers.push_back(base.layers[0]);
  CHECK(deeper.Fingerprint() != base.Fingerprint());
  BlockLayout longer = base;
  longer.tokens_per_block = 32;
  CHECK(longer.Fingerprint() != base.Fingerprint());
}

}  // namespace
}  // namespace kvtier
