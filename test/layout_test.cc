#include "kvtier/layout.h"

#include <limits>
#include <vector>

#include "test/util/test_util.h"

namespace kvtier {
namespace {

// Three layers of K (stride 100) and V (stride 128), each layer's tensors after the previous
// layer's: k needs 3 x 800 bytes, v 3 x 1024.
BlockLayout Mha(std::byte* k, std::byte* v) {
  BlockLayout l{.tokens_per_block = 16, .num_slots = 8};
  for (int i = 0; i < 3; ++i) {
    l.layers.push_back({.segments = {{k + i * 800, 100, 100}, {v + i * 1024, 100, 128}}});
  }
  return l;
}

TEST_CASE("BlockLayout: MHA, MLA and interleaved K/V layouts are valid and sized", "[layout]") {
  std::byte buf[8192];
  const BlockLayout mha = Mha(buf, buf + 2400);
  REQUIRE_OK(mha.Validate());
  CHECK(mha.layer_bytes(0) == 200);
  CHECK(mha.block_bytes() == 600);
  BlockLayout mla{.tokens_per_block = 64, .num_slots = 4};
  std::vector<std::byte> latent(61 * 4 * 576);  // one [slot][576] tensor per layer
  for (int i = 0; i < 61; ++i) {
    mla.layers.push_back({.segments = {{latent.data() + i * 4 * 576, 576, 576}}});
  }
  REQUIRE_OK(mla.Validate());
  CHECK(mla.block_bytes() == 61 * 576);
  BlockLayout inter{.tokens_per_block = 16, .num_slots = 4};
  inter.layers.push_back({.segments = {{buf, 64, 128}, {buf + 64, 64, 128}}});
  REQUIRE_OK(inter.Validate());
}

TEST_CASE("BlockLayout: each bad field is kInvalidArgument", "[layout]") {
  std::byte buf[8192];
  const BlockLayout good = Mha(buf, buf + 2400);
  REQUIRE_OK(good.Validate());
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

TEST_CASE("BlockLayout: segments whose slots share a byte are refused, interleaved ones are not",
          "[layout]") {
  std::byte buf[1 << 16];
  auto two = [&](Segment a, Segment b, uint32_t slots = 8) {
    BlockLayout l{.tokens_per_block = 16, .num_slots = slots};
    l.layers.push_back({.segments = {a}});
    l.layers.push_back({.segments = {b}});
    return l.Validate();
  };
  const auto kInvalid = absl::StatusCode::kInvalidArgument;
  // Separate tensors, end to end: valid; one byte less apart: slot 7 of K meets slot 0 of V.
  REQUIRE_OK(two({buf, 64, 64}, {buf + 512, 64, 64}));
  REQUIRE_CODE(two({buf, 64, 64}, {buf + 511, 64, 64}), kInvalid);
  // The same tensor twice (two layers aliasing one another).
  REQUIRE_CODE(two({buf, 64, 64}, {buf, 64, 64}), kInvalid);
  // FlashInfer-style [slot][K|V]: V starts 64 bytes into each 128-byte slot. Valid; V 63 bytes in
  // overlaps K of the same slot; V 64 + 1 bytes in with 64-byte regions overlaps K of the next.
  REQUIRE_OK(two({buf, 64, 128}, {buf + 64, 64, 128}));
  REQUIRE_CODE(two({buf, 64, 128}, {buf + 63, 64, 128}), kInvalid);
  REQUIRE_CODE(two({buf, 64, 128}, {buf + 65, 64, 128}), kInvalid);
  // A cross-layer tensor [slot][layer][K|V] with 4 layers: all 8 segments interleave, none overlap.
  {
    BlockLayout l{.tokens_per_block = 16, .num_slots = 16};
    for (int layer = 0; layer < 4; ++layer) {
      l.layers.push_back(
          {.segments = {{buf + layer * 64, 32, 256}, {buf + layer * 64 + 32, 32, 256}}});
    }
    REQUIRE_OK(l.Validate());
    l.layers[3].segments[1].bytes_per_block = 33;  // one byte into the next slot's layer-0 K
    REQUIRE_CODE(l.Validate(), kInvalid);
  }
  // Against a brute-force check of every pair of slots, for equal strides (the O(1) rule) and
  // different ones (the walk), at every offset of V from K in [0, 300).
  for (const uint64_t v_stride : {96, 100}) {
    for (uint64_t offset = 0; offset < 300; ++offset) {
      const Segment k{buf, 40, 96}, v{buf + offset, 30, v_stride};
      bool overlap = false;
      for (uint64_t i = 0; i < 8; ++i) {
        for (uint64_t j = 0; j < 8; ++j) {
          const uint64_t ks = i * 96, vs = offset + j * v_stride;
          overlap = overlap || (ks < vs + 30 && vs < ks + 40);
        }
      }
      INFO("V stride " << v_stride << ", offset " << offset);
      CHECK(two(k, v).ok() == !overlap);
      CHECK(two(v, k).ok() == !overlap);
    }
  }
  // Null pointers (metadata-only) are not checked for overlap.
  BlockLayout nulls{.tokens_per_block = 16, .num_slots = 8};
  nulls.layers.push_back({.segments = {{nullptr, 64, 64}, {nullptr, 64, 64}}});
  REQUIRE_OK(nulls.ValidateShape(/*need_pointers=*/false));
}

TEST_CASE("BlockLayout: the fingerprint follows the shape, not the pointers or slot count",
          "[layout]") {
  std::byte a[64], b[64];
  const BlockLayout base = Mha(a, a);  // shape only: aliasing pointers do not matter here
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
