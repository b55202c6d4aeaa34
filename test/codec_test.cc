// The block codecs (lib/codec): round trips within each codec's analytic error bound, special
// values, element types, odd shapes, header checks.
#include "lib/codec/codec.h"

#include <unistd.h>

#include <algorithm>
#include <bit>
#include <chrono>
#include <cmath>
#include <cstring>
#include <limits>
#include <memory>
#include <random>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "catch2/catch.hpp"
#include "kvtier/cache.h"
#include "kvtier/options.h"
#include "lib/cache_factory.h"
#include "lib/tiers/disk_tier.h"
#include "lib/transfer/emulated_device.h"
#include "test/util/redis_cluster_fixture.h"
#include "test/util/test_util.h"

namespace kvtier::internal {
namespace {

float Bf16(uint16_t h) { return std::bit_cast<float>(static_cast<uint32_t>(h) << 16); }

// Element conversions of the test (independent of the codec's): fp16 via the compiler's _Float16
// where it exists is not portable, so fp16 here is decoded by the textbook formula.
float HalfToFloat(uint16_t h) {
  const int sign = h >> 15, e = (h >> 10) & 0x1f, m = h & 0x3ff;
  float v;
  if (e == 0) {
    v = std::ldexp(static_cast<float>(m), -24);
  } else if (e == 31) {
    v = m ? std::numeric_limits<float>::quiet_NaN() : std::numeric_limits<float>::infinity();
  } else {
    v = std::ldexp(1.0f + m / 1024.0f, e - 15);
  }
  return sign ? -v : v;
}
// Nearest fp16 (by search over the sorted finite values): for building inputs.
uint16_t NearestHalf(float f) {
  static const std::vector<std::pair<float, uint16_t>> table = [] {
    std::vector<std::pair<float, uint16_t>> t;
    for (uint32_t h = 0; h < 0x7c00; ++h) t.push_back({HalfToFloat(static_cast<uint16_t>(h)), h});
    return t;  // ascending: non-negative halves sort like their bits
  }();
  const float a = std::fabs(f);
  auto it = std::lower_bound(table.begin(), table.end(), std::make_pair(a, uint16_t{0}));
  if (it == table.end()) --it;
  if (it != table.begin() && a - std::prev(it)->first < it->first - a) --it;
  return static_cast<uint16_t>(it->second | (f < 0 ? 0x8000 : 0));
}

struct Tensor {
  ElementType type;
  uint32_t tokens;
  uint64_t channels;
  std::vector<uint8_t> bytes;

  float Get(uint64_t i) const {
    if (type == ElementType::kF32) {
      float f;
      std::memcpy(&f, &bytes[i * 4], 4);
      return f;
    }
    uint16_t h;
    std::memcpy(&h, &bytes[i * 2], 2);
    return type == ElementType::kF16 ? HalfToFloat(h) : Bf16(h);
  }
  uint64_t size() const { return uint64_t{tokens} * channels; }
};

// Values of `f(i)` stored exactly in `type` (fp32; bf16 by truncation; fp16 through a table).
Tensor MakeTensor(ElementType type, uint32_t tokens, uint64_t channels,
                  const std::vector<float>& values) {
  Tensor t{type, tokens, channels, {}};
  t.bytes.resize(t.size() * ElementBytes(type));
  for (uint64_t i = 0; i < t.size(); ++i) {
    const float f = values[i];
    if (type == ElementType::kF32) {
      std::memcpy(&t.bytes[i * 4], &f, 4);
    } else if (type == ElementType::kBf16) {
      const uint16_t h = static_cast<uint16_t>(std::bit_cast<uint32_t>(f) >> 16);
      std::memcpy(&t.bytes[i * 2], &h, 2);
    } else {
      const uint16_t h = NearestHalf(f);
      std::memcpy(&t.bytes[i * 2], &h, 2);
    }
  }
  return t;
}

// A one-layer layout with one segment of `t.tokens` x `t.channels` elements and `role`.
BlockLayout OneSegment(const Tensor& t, SegmentRole role) {
  BlockLayout layout;
  layout.tokens_per_block = t.tokens;
  layout.num_slots = 1;
  const uint64_t bytes = t.bytes.size();
  layout.layers = {LayerLayout{.segments = {Segment{
                                   .base = nullptr,
                                   .bytes_per_block = bytes,
                                   .stride_bytes = bytes,
                                   .role = role,
                               }}}};
  return layout;
}

Tensor RoundTrip(const Tensor& in, CodecId id, uint32_t group, SegmentRole role,
                 uint64_t* encoded_bytes = nullptr) {
  auto codec = BlockCodec::Create("test", {.id = id, .group_size = group, .element = in.type},
                                  OneSegment(in, role));
  REQUIRE(codec.ok());
  std::vector<uint8_t> enc(codec->encoded_bytes());
  codec->Encode(in.bytes.data(), enc.data());
  Tensor out = in;
  std::fill(out.bytes.begin(), out.bytes.end(), 0xAB);
  REQUIRE(codec->Decode(enc.data(), out.bytes.data()).ok());
  if (encoded_bytes) *encoded_bytes = enc.size();
  return out;
}

// Half a unit in the last place of `x` in `type` (the rounding of the decoded value).
float HalfUlp(ElementType type, float x) {
  const int bits = type == ElementType::kF32 ? 24 : (type == ElementType::kF16 ? 11 : 8);
  const float a = std::max(std::fabs(x), type == ElementType::kF16 ? 6.1e-5f : 1e-30f);
  return std::ldexp(1.0f, std::ilogb(a) - bits);
}

// Checks |decoded - x| <= s/2 per group, s = (max - min) / levels widened by bf16's rounding up
// of s (2^-7 relative) and down of the minimum, plus float and element-type rounding.
void CheckIntBound(const Tensor& in, const Tensor& out, uint32_t levels, uint32_t group,
                   SegmentRole role) {
  const uint32_t T = in.tokens;
  const uint64_t C = in.channels;
  auto check_group = [&](const std::vector<uint64_t>& idx) {
    float lo = std::numeric_limits<float>::infinity(), hi = -lo;
    for (uint64_t i : idx) {
      lo = std::min(lo, in.Get(i));
      hi = std::max(hi, in.Get(i));
    }
    // The bf16 minimum is up to one bf16 ulp below lo: the range grows by that much.
    const float range = (hi - lo) + 2 * HalfUlp(ElementType::kBf16, lo);
    const float s = range / levels * (1.0f + 1.0f / 64);
    for (uint64_t i : idx) {
      const float x = in.Get(i), y = out.Get(i);
      const float bound = s / 2 + HalfUlp(in.type, x) * 2 + std::fabs(x) * 1e-6f + 1e-30f;
      INFO("i=" << i << " x=" << x << " y=" << y << " bound=" << bound << " range=" << hi - lo);
      REQUIRE(std::fabs(y - x) <= bound);
    }
  };
  if (role == SegmentRole::kKey) {
    for (uint64_t c = 0; c < C; ++c) {
      for (uint32_t t0 = 0; t0 < T; t0 += group) {
        std::vector<uint64_t> idx;
        for (uint32_t t = t0; t < std::min(T, t0 + group); ++t) idx.push_back(t * C + c);
        check_group(idx);
      }
    }
  } else {
    for (uint32_t t = 0; t < T; ++t) {
      for (uint64_t c0 = 0; c0 < C; c0 += group) {
        std::vector<uint64_t> idx;
        for (uint64_t c = c0; c < std::min<uint64_t>(C, c0 + group); ++c) idx.push_back(t * C + c);
        check_group(idx);
      }
    }
  }
}

std::vector<float> Random(uint64_t n, uint32_t seed, float scale = 2.0f) {
  std::mt19937 rng(seed);
  std::normal_distribution<float> d(0.0f, scale);
  std::vector<float> v(n);
  // Per-channel offsets as real K has (outlier channels): channel i % 7 shifted.
  for (uint64_t i = 0; i < n; ++i) v[i] = d(rng) + static_cast<float>((i % 7) * 3);
  return v;
}

}  // namespace

TEST_CASE("codec names parse, unknown codec and element types are refused", "[codec]") {
  for (CodecId id : {CodecId::kNone, CodecId::kFp8E4m3, CodecId::kInt8, CodecId::kInt4}) {
    auto p = ParseCodec("Options.host.codec", CodecName(id));
    REQUIRE(p.ok());
    CHECK(*p == id);
  }
  auto bad = ParseCodec("Options.host.codec", "int3");
  REQUIRE(bad.status().code() == absl::StatusCode::kInvalidArgument);
  CHECK(bad.status().message().find("Options.host.codec: 'int3'") != absl::string_view::npos);
  CHECK(*ParseElementType("torch.bfloat16") == ElementType::kBf16);
  CHECK(*ParseElementType("half") == ElementType::kF16);
  CHECK(*ParseElementType("float32") == ElementType::kF32);
  CHECK(ParseElementType("float8_e4m3fn").status().code() == absl::StatusCode::kInvalidArgument);
  CHECK(ParseElementType("").status().code() == absl::StatusCode::kInvalidArgument);
}

TEST_CASE("codec Create refuses odd group sizes, missing roles and ragged segments", "[codec]") {
  Tensor t = MakeTensor(ElementType::kF32, 4, 8, std::vector<float>(32, 1.0f));
  for (uint32_t g : {0u, 1u, 3u, 6u, 48u, kMaxCodecGroupSize * 2}) {
    auto c = BlockCodec::Create("Options.host.codec",
                                {.id = CodecId::kInt8, .group_size = g, .element = t.type},
                                OneSegment(t, SegmentRole::kValue));
    INFO("group " << g);
    REQUIRE(c.status().code() == absl::StatusCode::kInvalidArgument);
    CHECK(c.status().message().find("Options.host.codec_group_size") != absl::string_view::npos);
  }
  auto norole = BlockCodec::Create("Options.host.codec", {.id = CodecId::kInt4, .element = t.type},
                                   OneSegment(t, SegmentRole::kUnspecified));
  REQUIRE(norole.status().code() == absl::StatusCode::kInvalidArgument);
  CHECK(norole.status().message().find("role is unspecified") != absl::string_view::npos);
  // fp8 needs no role.
  CHECK(BlockCodec::Create("c", {.id = CodecId::kFp8E4m3, .element = t.type},
                           OneSegment(t, SegmentRole::kUnspecified))
            .ok());
  BlockLayout ragged = OneSegment(t, SegmentRole::kKey);
  ragged.layers[0].segments[0].bytes_per_block = 4 * 4 * 3 + 4;  // not tokens x elements
  CHECK(
      BlockCodec::Create("c", {.id = CodecId::kInt8, .element = t.type}, ragged).status().code() ==
      absl::StatusCode::kInvalidArgument);
  CHECK(BlockCodec::Create("c", {.id = CodecId::kNone, .element = t.type},
                           OneSegment(t, SegmentRole::kKey))
            .status()
            .code() == absl::StatusCode::kInvalidArgument);
}

TEST_CASE("int8 and int4 round trips stay within s/2 per group, K per channel and V per token",
          "[codec]") {
  struct Case {
    ElementType type;
    uint32_t tokens;
    uint64_t channels;
    uint32_t group;
  };
  const Case cases[] = {{ElementType::kF32, 16, 128, 64}, {ElementType::kBf16, 16, 256, 32},
                        {ElementType::kF16, 16, 64, 64},  {ElementType::kF32, 5, 37, 8},
                        {ElementType::kBf16, 3, 7, 2},    {ElementType::kF32, 1, 1, 4}};
  for (const Case& k : cases) {
    const Tensor in = MakeTensor(k.type, k.tokens, k.channels,
                                 Random(uint64_t{k.tokens} * k.channels, k.tokens * 31 + 7));
    for (CodecId id : {CodecId::kInt8, CodecId::kInt4}) {
      for (SegmentRole role : {SegmentRole::kKey, SegmentRole::kValue, SegmentRole::kLatent}) {
        INFO("codec " << CodecName(id) << " type " << static_cast<int>(k.type) << " role "
                      << static_cast<int>(role) << " " << k.tokens << "x" << k.channels << " g"
                      << k.group);
        const Tensor out = RoundTrip(in, id, k.group, role);
        CheckIntBound(in, out, id == CodecId::kInt8 ? 255 : 15, k.group,
                      role == SegmentRole::kKey ? SegmentRole::kKey : SegmentRole::kValue);
      }
    }
  }
}

TEST_CASE("int8 K groups are per channel: a channel offset by 1000 costs the others nothing",
          "[codec]") {
  // 16 tokens x 8 channels; channel 3 is around 1000, the others in [0, 1). Per-channel scales
  // keep the small channels' error below 1/255/2; a per-token scale would make it ~2.
  std::vector<float> v(16 * 8);
  for (int t = 0; t < 16; ++t) {
    for (int c = 0; c < 8; ++c) v[t * 8 + c] = c == 3 ? 1000.0f + t : c / 8.0f + t / 128.0f;
  }
  const Tensor in = MakeTensor(ElementType::kF32, 16, 8, v);
  const Tensor k = RoundTrip(in, CodecId::kInt8, 64, SegmentRole::kKey);
  const Tensor val = RoundTrip(in, CodecId::kInt8, 64, SegmentRole::kValue);
  float k_err = 0, v_err = 0;
  for (uint64_t i = 0; i < in.size(); ++i) {
    if (i % 8 == 3) continue;
    k_err = std::max(k_err, std::fabs(k.Get(i) - in.Get(i)));
    v_err = std::max(v_err, std::fabs(val.Get(i) - in.Get(i)));
  }
  CHECK(k_err <= 1.0f / 255);
  CHECK(v_err > 0.3f);
}

TEST_CASE("int codecs: constant and all-zero groups decode exactly, NaN and Inf saturate",
          "[codec]") {
  for (CodecId id : {CodecId::kInt8, CodecId::kInt4}) {
    for (float c : {0.0f, 3.25f, -7.5f}) {
      const Tensor in = MakeTensor(ElementType::kBf16, 4, 16, std::vector<float>(64, c));
      for (SegmentRole role : {SegmentRole::kKey, SegmentRole::kValue}) {
        const Tensor out = RoundTrip(in, id, 16, role);
        for (uint64_t i = 0; i < in.size(); ++i) REQUIRE(out.Get(i) == c);
      }
    }
    std::vector<float> v(16);
    for (int i = 0; i < 16; ++i) v[i] = static_cast<float>(i);
    v[3] = std::numeric_limits<float>::quiet_NaN();
    v[5] = std::numeric_limits<float>::infinity();
    v[9] = -std::numeric_limits<float>::infinity();
    const Tensor in = MakeTensor(ElementType::kF32, 1, 16, v);
    const Tensor out = RoundTrip(in, id, 16, SegmentRole::kValue);
    // Finite range is [0, 15]: NaN -> the minimum, +Inf -> max, -Inf -> min; the rest in bound.
    const float s = 15.0f / (id == CodecId::kInt8 ? 255 : 15) * (1.0f + 1.0f / 64);
    CHECK(std::fabs(out.Get(3) - 0.0f) <= s / 2);
    CHECK(std::fabs(out.Get(5) - 15.0f) <= s / 2);
    CHECK(std::fabs(out.Get(9) - 0.0f) <= s / 2);
    for (int i : {0, 1, 2, 4, 6, 7, 8, 10, 15})
      CHECK(std::fabs(out.Get(i) - v[i]) <= s / 2 + 1e-6f);
    // A group of nothing finite decodes to zeros.
    const Tensor nan = MakeTensor(ElementType::kF32, 1, 4,
                                  std::vector<float>(4, std::numeric_limits<float>::quiet_NaN()));
    const Tensor nan_out = RoundTrip(nan, id, 4, SegmentRole::kValue);
    for (uint64_t i = 0; i < 4; ++i) CHECK(nan_out.Get(i) == 0.0f);
  }
}

TEST_CASE("int codecs: a zero minimum is stored as +0 whichever zero the group has first",
          "[codec]") {
  // 16 tokens x 16 channels, fp32, groups of 16: every K group (a channel) and every V group (a
  // token) has minimum zero, -0 first and +0 later in channels 0-7 and tokens 0-7, only -0 in the
  // others. The stored minimum (the bf16 after each group's scale) is +0 in each, in both kernels.
  std::vector<float> v(16 * 16);
  for (int t = 0; t < 16; ++t) {
    for (int c = 0; c < 16; ++c) v[t * 16 + c] = 1.0f + static_cast<float>(t + c) / 8;
  }
  for (int i = 0; i < 16; ++i) {
    v[i * 16 + i] = -0.0f;                         // the diagonal: in each row and column
    if (i < 8) v[((i + 1) % 16) * 16 + i] = 0.0f;  // +0 after it in column i
    if (i < 8) v[i * 16 + (i + 1) % 16] = 0.0f;    // and in row i
  }
  const Tensor in = MakeTensor(ElementType::kF32, 16, 16, v);
  for (CodecKernel kernel : {CodecKernel::kScalar, CodecKernel::kAvx2}) {
    if (!CodecKernelSupported(kernel)) continue;
    for (SegmentRole role : {SegmentRole::kKey, SegmentRole::kValue}) {
      INFO("kernel " << CodecKernelName(kernel) << " role " << static_cast<int>(role));
      auto codec = BlockCodec::Create(
          "t", {.id = CodecId::kInt8, .group_size = 16, .element = ElementType::kF32},
          OneSegment(in, role));
      REQUIRE(codec.ok());
      std::vector<uint8_t> enc(codec->encoded_bytes());
      codec->Encode(in.bytes.data(), enc.data(), kernel);
      for (int g = 0; g < 16; ++g) {  // 16 groups of (s, m) after the header
        uint16_t m;
        std::memcpy(&m, &enc[kCodecHeaderBytes + 4 * g + 2], 2);
        CHECK(m == 0);
      }
    }
  }
}

TEST_CASE("fp8_e4m3 round trips within 2^-4 relative error, saturating, NaN kept", "[codec]") {
  for (ElementType type : {ElementType::kF32, ElementType::kBf16, ElementType::kF16}) {
    std::vector<float> v = Random(16 * 96, 5, 3.0f);
    v[10] = 0.0f;
    const Tensor in = MakeTensor(type, 16, 96, v);
    const Tensor out = RoundTrip(in, CodecId::kFp8E4m3, 64, SegmentRole::kUnspecified);
    float amax = 0;
    for (uint64_t i = 0; i < in.size(); ++i) amax = std::max(amax, std::fabs(in.Get(i)));
    const float scale = amax / 448.0f;
    for (uint64_t i = 0; i < in.size(); ++i) {
      const float x = in.Get(i), y = out.Get(i);
      // Normal e4m3 (|x / s| >= 2^-6): relative 2^-4; below: absolute 2^-10 * s. Plus the
      // decoded value's rounding to the element type.
      const float bound =
          (std::fabs(x) / scale >= 0x1p-6f ? std::fabs(x) * 0x1p-4f : scale * 0x1p-10f) * 1.0001f +
          HalfUlp(type, x) * 2;
      INFO("type " << static_cast<int>(type) << " x=" << x << " y=" << y);
      REQUIRE(std::fabs(y - x) <= bound);
    }
    CHECK(out.Get(10) == 0.0f);
  }
  std::vector<float> v = {1.0f,
                          -2.0f,
                          std::numeric_limits<float>::infinity(),
                          -std::numeric_limits<float>::infinity(),
                          std::numeric_limits<float>::quiet_NaN(),
                          0.5f,
                          0.0f,
                          -0.0f};
  const Tensor in = MakeTensor(ElementType::kF32, 1, 8, v);
  const Tensor out = RoundTrip(in, CodecId::kFp8E4m3, 64, SegmentRole::kValue);
  // amax over finite values is 2: scale 2/448; Inf saturates to +-448 * scale = +-2.
  CHECK(out.Get(0) == 1.0f);
  CHECK(out.Get(1) == -2.0f);
  CHECK(out.Get(2) == 2.0f);
  CHECK(out.Get(3) == -2.0f);
  CHECK(std::isnan(out.Get(4)));
  CHECK(out.Get(5) == 0.5f);
  CHECK(out.Get(6) == 0.0f);
}

TEST_CASE("codec sizes: int8 about half, int4 about a quarter of fp16 plus scales", "[codec]") {
  const Tensor in = MakeTensor(ElementType::kBf16, 16, 1024, Random(16 * 1024, 9));
  uint64_t k8 = 0, v8 = 0, v4 = 0, f8 = 0;
  RoundTrip(in, CodecId::kInt8, 64, SegmentRole::kKey, &k8);
  RoundTrip(in, CodecId::kInt8, 64, SegmentRole::kValue, &v8);
  RoundTrip(in, CodecId::kInt4, 64, SegmentRole::kValue, &v4);
  RoundTrip(in, CodecId::kFp8E4m3, 64, SegmentRole::kValue, &f8);
  const uint64_t n = 16 * 1024;
  CHECK(k8 == kCodecHeaderBytes + n + 1024 * 4);     // one group per channel (16 tokens <= 64)
  CHECK(v8 == kCodecHeaderBytes + n + 16 * 16 * 4);  // 16 groups of 64 channels per token
  CHECK(v4 == kCodecHeaderBytes + n / 2 + 16 * 16 * 4);
  CHECK(f8 == kCodecHeaderBytes + n + 4);
}

TEST_CASE("codec Decode refuses another codec's, group size's or element type's block", "[codec]") {
  const Tensor in = MakeTensor(ElementType::kBf16, 16, 64, Random(16 * 64, 3));
  const BlockLayout layout = OneSegment(in, SegmentRole::kValue);
  auto int8 = BlockCodec::Create(
      "c", {.id = CodecId::kInt8, .group_size = 64, .element = ElementType::kBf16}, layout);
  REQUIRE(int8.ok());
  std::vector<uint8_t> enc(int8->encoded_bytes());
  int8->Encode(in.bytes.data(), enc.data());
  std::vector<uint8_t> out(in.bytes.size(), 0x5A);
  const std::vector<uint8_t> untouched = out;
  for (CodecConfig other :
       {CodecConfig{.id = CodecId::kInt8, .group_size = 32, .element = ElementType::kBf16},
        CodecConfig{.id = CodecId::kInt4, .group_size = 64, .element = ElementType::kBf16},
        CodecConfig{.id = CodecId::kInt8, .group_size = 64, .element = ElementType::kF16}}) {
    auto c = BlockCodec::Create("c", other, layout);
    REQUIRE(c.ok());
    // Decoding reads only the header before refusing: the buffer need only be header-sized.
    CHECK(c->Decode(enc.data(), out.data()).code() == absl::StatusCode::kDataLoss);
    CHECK(out == untouched);
  }
  std::vector<uint8_t> bad = enc;
  bad[5] = 9;  // an unknown codec id
  CHECK(int8->Decode(bad.data(), out.data()).code() == absl::StatusCode::kDataLoss);
  bad = enc;
  bad[4] = 2;  // a later version
  CHECK(int8->Decode(bad.data(), out.data()).code() == absl::StatusCode::kDataLoss);
  CHECK(out == untouched);
  CHECK(int8->Decode(enc.data(), out.data()).ok());
}

TEST_CASE("codec on a multi-layer block: layers decode one by one to the same bytes", "[codec]") {
  BlockLayout layout;
  layout.tokens_per_block = 8;
  layout.num_slots = 1;
  for (int l = 0; l < 3; ++l) {
    layout.layers.push_back(LayerLayout{.segments = {Segment{.bytes_per_block = 8 * 32 * 2,
                                                             .stride_bytes = 8 * 32 * 2,
                                                             .role = SegmentRole::kKey},
                                                     Segment{.bytes_per_block = 8 * 32 * 2,
                                                             .stride_bytes = 8 * 32 * 2,
                                                             .role = SegmentRole::kValue}}});
  }
  auto codec = BlockCodec::Create(
      "c", {.id = CodecId::kInt4, .group_size = 16, .element = ElementType::kF16}, layout);
  REQUIRE(codec.ok());
  REQUIRE(codec->raw_bytes() == layout.block_bytes());
  std::vector<uint8_t> raw(layout.block_bytes());
  std::mt19937 rng(1);
  for (size_t i = 0; i < raw.size(); i += 2) {
    const uint16_t h = static_cast<uint16_t>(0x3000 + rng() % 0x1000);  // finite, [0.125, 2)
    std::memcpy(&raw[i], &h, 2);
  }
  std::vector<uint8_t> enc(codec->encoded_bytes()), whole(raw.size()), layered(raw.size());
  codec->Encode(raw.data(), enc.data());
  REQUIRE(codec->Decode(enc.data(), whole.data()).ok());
  REQUIRE(codec->CheckHeader(enc.data()).ok());
  for (uint32_t l = 0; l < codec->num_layers(); ++l) {
    codec->DecodeLayer(l, enc.data() + codec->layer_offset(l),
                       layered.data() + codec->raw_layer_offset(l));
  }
  CHECK(whole == layered);
  CHECK(codec->layer_offset(3) == codec->encoded_bytes());
}

// ---- the AVX2 kernel against the scalar one ----

// Random element bits of `type`: mostly normals over 2 x `spread` binades around 1, and zeros of
// both signs, subnormals, +-Inf, NaNs with random payloads, the largest binade (fp32: beyond
// bf16's range).
uint32_t RandomBits(ElementType type, std::mt19937& rng, int spread) {
  const int ebits = type == ElementType::kF16 ? 5 : 8;
  const int mbits = type == ElementType::kF16 ? 10 : (type == ElementType::kBf16 ? 7 : 23);
  const uint32_t emax = (1u << ebits) - 1, bias = emax / 2, mmask = (1u << mbits) - 1;
  const uint32_t sign = rng() & 1;
  uint32_t e, m = rng() & mmask;
  const uint32_t r = rng() % 100;
  if (r < 3) {
    e = 0, m = 0;
  } else if (r < 6) {
    e = 0, m = m ? m : 1;
  } else if (r < 8) {
    e = emax, m = 0;
  } else if (r < 10) {
    e = emax, m = m ? m : 1;
  } else if (r < 11) {
    e = emax - 1;
  } else {
    const int d = static_cast<int>(rng() % (2 * spread + 1)) - spread;
    e = static_cast<uint32_t>(std::clamp<int>(static_cast<int>(bias) + d, 1, emax - 1));
  }
  return sign << (ebits + mbits) | e << mbits | m;
}

void PutBits(ElementType type, uint8_t* p, uint32_t bits) {
  if (type == ElementType::kF32) {
    std::memcpy(p, &bits, 4);
  } else {
    const uint16_t h = static_cast<uint16_t>(bits);
    std::memcpy(p, &h, 2);
  }
}

// A segment of `tokens` x `channels` random elements, with rectangles overwritten by one value
// (constant groups), zeros of both signs (the sign of a zero minimum depends on the order), zeros
// and positives, or NaN and Inf only (no finite value).
void FillSegment(ElementType type, uint32_t tokens, uint64_t channels, std::mt19937& rng,
                 uint8_t* p) {
  const uint32_t e = ElementBytes(type);
  const int spread = 1 + static_cast<int>(rng() % 20);
  for (uint64_t i = 0; i < tokens * channels; ++i)
    PutBits(type, p + i * e, RandomBits(type, rng, spread));
  const uint32_t sign = type == ElementType::kF32 ? 0x80000000u : 0x8000u;
  const uint32_t inf =
      type == ElementType::kF32 ? 0x7f800000u : (type == ElementType::kF16 ? 0x7c00u : 0x7f80u);
  for (int k = 0; k < 8; ++k) {
    const uint32_t t0 = rng() % tokens, t1 = t0 + 1 + rng() % (tokens - t0);
    const uint64_t c0 = rng() % channels,
                   c1 = c0 + 1 + rng() % std::min<uint64_t>(channels - c0, 80);
    const uint32_t kind = rng() % 4, constant = RandomBits(type, rng, spread);
    for (uint32_t t = t0; t < t1; ++t) {
      for (uint64_t c = c0; c < c1; ++c) {
        uint32_t bits = constant;
        if (kind == 1) bits = (rng() & 1) ? sign : 0;
        if (kind == 2)
          bits = (rng() & 1) ? ((rng() & 1) ? sign : 0) : RandomBits(type, rng, 2) & ~sign;
        if (kind == 3) bits = (rng() & 1) ? inf | (rng() % 4) : (inf | sign);
        PutBits(type, p + (t * channels + c) * e, bits);
      }
    }
  }
}

TEST_CASE("codec AVX2 kernel writes the scalar kernel's bytes, encoding and decoding", "[codec]") {
  if (!CodecKernelSupported(CodecKernel::kAvx2)) {
    WARN("this CPU lacks AVX2 or F16C: nothing to compare");
    return;
  }
  struct Shape {
    uint32_t tokens;
    uint64_t channels;
    uint32_t group;
  };
  // Llama-like, odd tails in both directions, groups shorter than a vector, one group per row.
  const std::vector<Shape> shapes = {{16, 1024, 64}, {16, 1024, 8}, {7, 200, 16},  {5, 13, 2},
                                     {33, 67, 32},   {3, 100, 4},   {16, 96, 128}, {1, 1, 2}};
  std::mt19937 rng(7);
  int compared = 0;
  for (ElementType type : {ElementType::kF16, ElementType::kBf16, ElementType::kF32}) {
    for (const Shape& shape : shapes) {
      const uint64_t bytes = shape.tokens * shape.channels * ElementBytes(type);
      const BlockLayout layout = test::TwoLayerLayout(
          shape.tokens, bytes, {SegmentRole::kKey, SegmentRole::kValue, SegmentRole::kLatent});
      for (CodecId id : {CodecId::kFp8E4m3, CodecId::kInt8, CodecId::kInt4}) {
        auto codec =
            BlockCodec::Create("c", {.id = id, .group_size = shape.group, .element = type}, layout);
        REQUIRE(codec.ok());
        for (int rep = 0; rep < 3; ++rep) {
          INFO("element " << static_cast<int>(type) << " codec " << CodecName(id) << " "
                          << shape.tokens << "x" << shape.channels << " group " << shape.group
                          << " rep " << rep);
          std::vector<uint8_t> raw(codec->raw_bytes());
          for (uint64_t off = 0; off < raw.size(); off += bytes) {
            FillSegment(type, shape.tokens, shape.channels, rng, raw.data() + off);
          }
          std::vector<uint8_t> scalar(codec->encoded_bytes()), avx2(scalar.size(), 0xAB);
          codec->Encode(raw.data(), scalar.data(), CodecKernel::kScalar);
          codec->Encode(raw.data(), avx2.data(), CodecKernel::kAvx2);
          REQUIRE(std::mismatch(scalar.begin(), scalar.end(), avx2.begin()).first -
                      scalar.begin() ==
                  static_cast<ptrdiff_t>(scalar.size()));
          // Decode the block; then the same scales with random codes (every code is valid); then
          // (int codecs) a few minima made NaN, as a damaged block could hold (NaN decodes to
          // fp16's 0x7e00 | sign in both, whatever its payload).
          for (int pass = 0; pass < 3; ++pass) {
            if (pass == 2 && id == CodecId::kFp8E4m3) break;
            if (pass >= 1) {
              uint64_t at = kCodecHeaderBytes;
              for (size_t l = 0; l < layout.layers.size(); ++l) {
                for (const Segment& g : layout.layers[l].segments) {
                  const SegmentRole role =
                      g.role == SegmentRole::kKey ? SegmentRole::kKey : SegmentRole::kValue;
                  const uint64_t seg_bytes =
                      SegmentEncodedBytes(codec->config(), role, shape.tokens, shape.channels);
                  const uint64_t n = shape.tokens * shape.channels;
                  const uint64_t code_bytes = id == CodecId::kInt4 ? (n + 1) / 2 : n;
                  for (uint64_t i = at + seg_bytes - code_bytes; i < at + seg_bytes; ++i) {
                    scalar[i] = static_cast<uint8_t>(rng());
                  }
                  if (id == CodecId::kInt4 && n % 2) scalar[at + seg_bytes - 1] &= 0x0f;
                  for (uint64_t i = at; pass == 2 && i < at + seg_bytes - code_bytes; i += 4) {
                    if (rng() % 8 != 0) continue;
                    const uint16_t nan = static_cast<uint16_t>(0x7f81 + rng() % 0x7f) |
                                         static_cast<uint16_t>((rng() & 1) << 15);
                    std::memcpy(&scalar[i + 2], &nan, 2);  // (s, m): the minimum
                  }
                  at += seg_bytes;
                }
              }
              REQUIRE(at == scalar.size());
            }
            std::vector<uint8_t> out_scalar(raw.size()), out_avx2(raw.size(), 0xAB);
            REQUIRE(codec->Decode(scalar.data(), out_scalar.data(), CodecKernel::kScalar).ok());
            REQUIRE(codec->Decode(scalar.data(), out_avx2.data(), CodecKernel::kAvx2).ok());
            REQUIRE(std::mismatch(out_scalar.begin(), out_scalar.end(), out_avx2.begin()).first -
                        out_scalar.begin() ==
                    static_cast<ptrdiff_t>(out_scalar.size()));
          }
          ++compared;
        }
      }
    }
  }
  CHECK(compared == 3 * 8 * 3 * 3);
}

// The work items of lib/codec/codec_math.h are the CUDA kernels' code (cuda/codec_kernels.cu runs
// them one per thread); here they run in a loop on the CPU against the scalar kernel.
TEST_CASE("codec work items (the CUDA kernels' code) write the scalar kernel's bytes", "[codec]") {
  struct Shape {
    uint32_t tokens;
    uint64_t channels;
    uint32_t group;
  };
  // Odd channel counts put an int4 byte across two tokens (and two groups).
  const std::vector<Shape> shapes = {{16, 256, 64}, {7, 200, 16}, {5, 13, 2},
                                     {33, 67, 32},  {3, 100, 4},  {1, 1, 2}};
  std::mt19937 rng(11);
  int compared = 0;
  for (ElementType type : {ElementType::kF16, ElementType::kBf16, ElementType::kF32}) {
    for (const Shape& shape : shapes) {
      const uint64_t bytes = shape.tokens * shape.channels * ElementBytes(type);
      const BlockLayout layout =
          test::TwoLayerLayout(shape.tokens, bytes, {SegmentRole::kKey, SegmentRole::kValue});
      for (CodecId id : {CodecId::kFp8E4m3, CodecId::kInt8, CodecId::kInt4}) {
        auto codec =
            BlockCodec::Create("c", {.id = id, .group_size = shape.group, .element = type}, layout);
        REQUIRE(codec.ok());
        INFO("element " << static_cast<int>(type) << " codec " << CodecName(id) << " "
                        << shape.tokens << "x" << shape.channels << " group " << shape.group);
        std::vector<uint8_t> raw(codec->raw_bytes());
        for (uint64_t off = 0; off < raw.size(); off += bytes) {
          FillSegment(type, shape.tokens, shape.channels, rng, raw.data() + off);
        }
        std::vector<uint8_t> scalar(codec->encoded_bytes()), items(scalar.size(), 0xAB);
        std::vector<uint8_t> decoded(raw.size()), items_decoded(raw.size(), 0xAB);
        codec->Encode(raw.data(), scalar.data(), CodecKernel::kScalar);
        REQUIRE(codec->Decode(scalar.data(), decoded.data(), CodecKernel::kScalar).ok());
        codec->EncodeHeader(items.data());
        for (const bool encode : {true, false}) {
          std::vector<codec_math::CodecSegmentJob> jobs;
          for (uint32_t l = 0; l < codec->num_layers(); ++l) {
            uint8_t* layer_raw =
                (encode ? raw.data() : items_decoded.data()) + codec->raw_layer_offset(l);
            auto segments = [&](size_t s) -> void* { return layer_raw + s * bytes; };
            // Decoding reads the scalar kernel's encoding, so each direction is checked alone.
            uint8_t* enc = (encode ? items.data() : scalar.data()) + codec->layer_offset(l);
            codec->AppendLayerJobs(l, segments, enc, encode, &jobs);
          }
          REQUIRE(jobs.size() == 4);
          for (const codec_math::CodecSegmentJob& job : jobs) {
            if (encode) {
              codec_math::EncodeSegmentItems(codec->params(), job);
            } else {
              codec_math::DecodeSegmentItems(codec->params(), job);
            }
          }
        }
        REQUIRE(std::mismatch(scalar.begin(), scalar.end(), items.begin()).first - scalar.begin() ==
                static_cast<ptrdiff_t>(scalar.size()));
        REQUIRE(std::mismatch(decoded.begin(), decoded.end(), items_decoded.begin()).first -
                    decoded.begin() ==
                static_cast<ptrdiff_t>(decoded.size()));
        ++compared;
      }
    }
  }
  CHECK(compared == 3 * 6 * 3);
}

TEST_CASE("codec AVX2 kernel: every fp16 and bf16 bit pattern encodes as the scalar kernel's",
          "[codec]") {
  if (!CodecKernelSupported(CodecKernel::kAvx2)) {
    WARN("this CPU lacks AVX2 or F16C: nothing to compare");
    return;
  }
  for (ElementType type : {ElementType::kF16, ElementType::kBf16}) {
    // 65536 elements, [16][4096], bit pattern i at element i (and reversed in a V segment).
    std::vector<uint8_t> raw(2 * 65536 * 2);
    for (uint32_t i = 0; i < 65536; ++i) {
      const uint16_t h = static_cast<uint16_t>(i), r = static_cast<uint16_t>(65535 - i);
      std::memcpy(&raw[2 * i], &h, 2);
      std::memcpy(&raw[2 * 65536 + 2 * i], &r, 2);
    }
    BlockLayout layout;
    layout.tokens_per_block = 16;
    layout.num_slots = 1;
    layout.layers = {LayerLayout{
        .segments = {
            Segment{.bytes_per_block = 131072, .stride_bytes = 131072, .role = SegmentRole::kKey},
            Segment{
                .bytes_per_block = 131072, .stride_bytes = 131072, .role = SegmentRole::kValue}}}};
    for (CodecId id : {CodecId::kFp8E4m3, CodecId::kInt8, CodecId::kInt4}) {
      INFO("element " << static_cast<int>(type) << " codec " << CodecName(id));
      auto codec = BlockCodec::Create("c", {.id = id, .group_size = 8, .element = type}, layout);
      REQUIRE(codec.ok());
      std::vector<uint8_t> scalar(codec->encoded_bytes()), avx2(scalar.size(), 0xAB);
      codec->Encode(raw.data(), scalar.data(), CodecKernel::kScalar);
      codec->Encode(raw.data(), avx2.data(), CodecKernel::kAvx2);
      CHECK(scalar == avx2);
      std::vector<uint8_t> out_scalar(raw.size()), out_avx2(raw.size(), 0xAB);
      REQUIRE(codec->Decode(scalar.data(), out_scalar.data(), CodecKernel::kScalar).ok());
      REQUIRE(codec->Decode(scalar.data(), out_avx2.data(), CodecKernel::kAvx2).ok());
      CHECK(out_scalar == out_avx2);
    }
  }
}

}  // namespace kvtier::internal

// ---- through a Cache: host and disk tiers on the emulated device ----

namespace kvtier {
namespace {

float BfToFloat(uint16_t h) { return std::bit_cast<float>(static_cast<uint32_t>(h) << 16); }

// An engine of bf16 K/V tensors: 2 layers, K and V, 4 tokens x 64 channels per block.
struct FloatEngine {
  static constexpr uint32_t kLayers = 2, kTokens = 4, kChannels = 64, kSlots = 4;
  static constexpr uint64_t kSegmentBytes = kTokens * kChannels * 2;
  std::vector<std::vector<uint16_t>> tensors;  // [layer * 2 + seg]: kSlots blocks each
  BlockLayout layout;

  explicit FloatEngine(bool roles = true) {
    layout.tokens_per_block = kTokens;
    layout.num_slots = kSlots;
    tensors.assign(kLayers * 2, std::vector<uint16_t>(kSlots * kSegmentBytes / 2));
    for (uint32_t l = 0; l < kLayers; ++l) {
      LayerLayout layer;
      for (uint32_t s = 0; s < 2; ++s) {
        layer.segments.push_back(Segment{
            .base = tensors[l * 2 + s].data(),
            .bytes_per_block = kSegmentBytes,
            .stride_bytes = kSegmentBytes,
            .role = roles ? (s == 0 ? SegmentRole::kKey : SegmentRole::kValue)
                          : SegmentRole::kUnspecified,
        });
      }
      layout.layers.push_back(std::move(layer));
    }
  }
  // The value of element i of segment (l, s) of block `seed`: smooth in [-4, 4] with outliers.
  static float Value(uint32_t seed, uint32_t l, uint32_t s, uint32_t i) {
    const float base = std::sin(0.37f * static_cast<float>(i + 97 * seed + 13 * l + 5 * s));
    return (i % 64 == 7 ? 4.0f : 1.0f) * base;
  }
  static uint16_t ToBf16(float f) {  // truncation: exact values of the test
    return static_cast<uint16_t>(std::bit_cast<uint32_t>(f) >> 16);
  }
  void Write(uint32_t slot, uint32_t seed) {
    for (uint32_t t = 0; t < kLayers * 2; ++t) {
      for (uint32_t i = 0; i < kSegmentBytes / 2; ++i) {
        tensors[t][slot * kSegmentBytes / 2 + i] = ToBf16(Value(seed, t / 2, t % 2, i));
      }
    }
  }
  // Largest |decoded - written| over block `seed` in device slot `slot`.
  float MaxError(uint32_t slot, uint32_t seed) const {
    float err = 0;
    for (uint32_t t = 0; t < kLayers * 2; ++t) {
      for (uint32_t i = 0; i < kSegmentBytes / 2; ++i) {
        const float want = BfToFloat(ToBf16(Value(seed, t / 2, t % 2, i)));
        const float got = BfToFloat(tensors[t][slot * kSegmentBytes / 2 + i]);
        err = std::max(err, std::fabs(got - want));
      }
    }
    return err;
  }
  bool Exact(uint32_t slot, uint32_t seed) const {
    for (uint32_t t = 0; t < kLayers * 2; ++t) {
      for (uint32_t i = 0; i < kSegmentBytes / 2; ++i) {
        if (tensors[t][slot * kSegmentBytes / 2 + i] != ToBf16(Value(seed, t / 2, t % 2, i))) {
          return false;
        }
      }
    }
    return true;
  }
};

Options CodecOptions(const FloatEngine& e, const std::string& codec, uint32_t host_raw_blocks) {
  Options o;
  o.layout = e.layout;
  o.backend = DeviceBackend::kEmulated;
  o.shard.dtype = "bfloat16";
  o.host.capacity_bytes = uint64_t{host_raw_blocks} * e.layout.block_bytes();
  o.host.codec = codec;
  o.host.codec_group_size = 32;
  return o;
}

// Commits blocks `seeds` (one chain), pushes them off the device with another chain, then loads
// them back; returns the lease and the transfer's promotions.
struct Loaded {
  DeviceLease lease;
  uint32_t promoted = 0;
  uint32_t blocks = 0;
  uint32_t lossy = 0;
};
Loaded CommitEvictLoad(Cache& cache, FloatEngine& e, uint32_t seed) {
  const std::vector<BlockKey> keys = test::Chain(2, seed, FloatEngine::kTokens);
  {
    auto lease = cache.AllocateDevice(2);
    REQUIRE_OK(lease);
    for (uint32_t i = 0; i < 2; ++i) e.Write(lease->slots()[i], seed * 10 + i);
    REQUIRE_OK(cache.Commit(keys, *lease));
  }
  for (uint32_t other = 0; other < 2; ++other) {  // 4 device slots: push the first chain out
    const std::vector<BlockKey> filler =
        test::Chain(2, seed * 100 + 50 + other, FloatEngine::kTokens);
    auto lease = cache.AllocateDevice(2);
    REQUIRE_OK(lease);
    for (uint32_t i = 0; i < 2; ++i) e.Write(lease->slots()[i], 999);
    REQUIRE_OK(cache.Commit(filler, *lease));
  }
  auto match = cache.Match(keys);
  REQUIRE_OK(match);
  REQUIRE(match->size() == 2);
  REQUIRE(match->blocks_in(Tier::kDevice) == 0);
  auto lease = cache.AllocateDevice(2);
  REQUIRE_OK(lease);
  auto xfer = cache.Load(*match, *lease);
  REQUIRE_OK(xfer);
  REQUIRE_OK(xfer->Wait());
  Loaded out;
  out.promoted = xfer->blocks_promoted();
  out.lossy = xfer->blocks_lossy();
  out.blocks = xfer->blocks();
  out.lease = std::move(*lease);
  return out;
}

}  // namespace

TEST_CASE("Cache with host.codec: blocks come back from the host within the codec's bound",
          "[codec]") {
  // Values in [-4, 4]: an int8 group spans at most 8, s <= 8/255; int4 s <= 8/15; fp8 relative
  // 2^-4 of at most 4. Plus bf16's rounding of the decoded value (2^-8 relative of 4).
  const std::pair<const char*, float> cases[] = {{"int8", 8.0f / 255 / 2 * 1.02f + 4 * 0x1p-8f},
                                                 {"int4", 8.0f / 15 / 2 * 1.02f + 4 * 0x1p-8f},
                                                 {"fp8_e4m3", 4 * 0x1p-4f + 4 * 0x1p-8f}};
  for (const auto& [codec, bound] : cases) {
    INFO("codec " << codec);
    FloatEngine e;
    auto cache = Cache::Create(CodecOptions(e, codec, 4));
    REQUIRE_OK(cache);
    // Slots sized by the encoded size: more than the 4 raw blocks the capacity would hold.
    CHECK((*cache)->Stats().host.capacity_blocks > 4);
    Loaded got = CommitEvictLoad(**cache, e, 1);
    REQUIRE(got.promoted == 2);
    for (uint32_t i = 0; i < 2; ++i) {
      const float err = e.MaxError(got.lease.slots()[i], 10 + i);
      INFO("block " << i << " max error " << err << " bound " << bound);
      CHECK(err <= bound);
      CHECK(err > 0);  // lossy indeed (the values are not all on the grid)
    }
    const CacheStats s = (*cache)->Stats();
    CHECK(s.codec_lossy_blocks_loaded == 2);
    CHECK(got.lossy == 2);  // the Transfer says which blocks it returned lossy
    CHECK(s.codec_refused_blocks == 0);
    REQUIRE_OK((*cache)->CheckInvariants());
  }
}

// The device codec path (Device::EncodeToHost, DecodeFromHost: what CudaDevice runs its kernels
// for) on the emulated device, once with the CPU codec and once with the CUDA kernels' own work
// items: the engine gets exactly the bytes of a CPU encode and decode of what it committed.
TEST_CASE(
    "Cache with host.codec: a Load returns the CPU codec's exact round trip, also when the "
    "device runs the CUDA kernels' code",
    "[codec]") {
  auto block_bytes = [](const FloatEngine& e, uint32_t slot) {
    std::vector<uint8_t> out;
    for (const std::vector<uint16_t>& t : e.tensors) {
      const auto* p =
          reinterpret_cast<const uint8_t*>(t.data()) + slot * FloatEngine::kSegmentBytes;
      out.insert(out.end(), p, p + FloatEngine::kSegmentBytes);
    }
    return out;
  };
  for (const char* name : {"int8", "int4", "fp8_e4m3"}) {
    for (internal::CodecKernel kernel :
         {internal::DefaultCodecKernel(), internal::CodecKernel::kItems}) {
      INFO("codec " << name << " kernel " << internal::CodecKernelName(kernel));
      FloatEngine e;
      const Options options = CodecOptions(e, name, 4);
      auto codec = internal::HostCodecOf(options);
      REQUIRE_OK(codec);
      auto cache =
          internal::CreateCache(options, std::make_unique<internal::EmulatedDevice>(kernel));
      REQUIRE_OK(cache);
      Loaded got = CommitEvictLoad(**cache, e, 1);
      REQUIRE(got.promoted == 2);
      for (uint32_t i = 0; i < 2; ++i) {
        FloatEngine original;
        original.Write(0, 10 + i);
        std::vector<uint8_t> encoded((*codec)->encoded_bytes());
        std::vector<uint8_t> want((*codec)->raw_bytes());
        (*codec)->Encode(block_bytes(original, 0).data(), encoded.data(),
                         internal::CodecKernel::kScalar);
        REQUIRE_OK((*codec)->Decode(encoded.data(), want.data(), internal::CodecKernel::kScalar));
        CHECK(block_bytes(e, got.lease.slots()[i]) == want);
        CHECK_FALSE(e.Exact(got.lease.slots()[i], 10 + i));  // lossy: not the committed bytes
      }
      CHECK((*cache)->Stats().codec_refused_blocks == 0);
      REQUIRE_OK((*cache)->CheckInvariants());
    }
  }
}

TEST_CASE(
    "Cache with host.codec: a decoded device copy stays lossy until a recomputed Commit replaces "
    "it",
    "[codec]") {
  FloatEngine e;
  auto created = Cache::Create(CodecOptions(e, "int8", 4));
  REQUIRE_OK(created);
  Cache& cache = **created;
  const std::vector<BlockKey> keys = test::Chain(2, 1, FloatEngine::kTokens);
  Loaded got = CommitEvictLoad(cache, e, 1);  // keys, decoded from the host onto the device
  REQUIRE(got.lossy == 2);
  // Another request's Load shares those device blocks: it gets the decoded bytes too, and says so.
  auto load_shared = [&]() -> uint32_t {
    auto match = cache.Match(keys);
    REQUIRE_OK(match);
    REQUIRE(match->blocks_in(Tier::kDevice) == 2);
    auto lease = cache.AllocateDevice(2);
    REQUIRE_OK(lease);
    auto xfer = cache.Load(*match, *lease);
    REQUIRE_OK(xfer);
    REQUIRE_OK(xfer->Wait());
    CHECK(xfer->blocks_promoted() == 0);
    CHECK(xfer->blocks() == 2);
    const uint32_t lossy = xfer->blocks_lossy();
    for (uint32_t i = 0; i < 2 && lossy == 0; ++i) CHECK(e.Exact(lease->slots()[i], 10 + i));
    REQUIRE_OK(cache.Release(*lease));
    return lossy;
  };
  CHECK(load_shared() == 2);
  CHECK(cache.Stats().codec_lossy_blocks_loaded == 4);
  // The engine recomputes the blocks (exact) into its own slots and commits them.
  auto recompute = [&] {
    auto lease = cache.AllocateDevice(2);
    REQUIRE_OK(lease);
    for (uint32_t i = 0; i < 2; ++i) e.Write(lease->slots()[i], 10 + i);
    REQUIRE_OK(cache.Commit(keys, *lease));
    REQUIRE_OK(cache.Release(*lease));
  };
  // While a lease still holds the decoded copy it stays: the commit shares it.
  recompute();
  CHECK(cache.Stats().codec_lossy_blocks_replaced == 0);
  CHECK(load_shared() == 2);
  // Held by no one, it gives way to the recomputed block: later Loads get the exact bytes.
  REQUIRE_OK(cache.Release(got.lease));
  recompute();
  const CacheStats s = cache.Stats();
  CHECK(s.codec_lossy_blocks_replaced == 2);
  CHECK(s.blocks_commit_shared == 2);  // the first recompute's, not the second's
  CHECK(load_shared() == 0);
  REQUIRE_OK(cache.CheckInvariants());
}

TEST_CASE("Cache without a codec: host round trips stay byte-exact, nothing counted lossy",
          "[codec]") {
  FloatEngine e;
  auto cache = Cache::Create(CodecOptions(e, "none", 4));
  REQUIRE_OK(cache);
  CHECK((*cache)->Stats().host.capacity_blocks == 4);
  Loaded got = CommitEvictLoad(**cache, e, 1);
  REQUIRE(got.promoted == 2);
  for (uint32_t i = 0; i < 2; ++i) CHECK(e.Exact(got.lease.slots()[i], 10 + i));
  CHECK((*cache)->Stats().codec_lossy_blocks_loaded == 0);
  CHECK(got.lossy == 0);
}

TEST_CASE("Cache with host.codec and a disk tier: blocks round trip through disk encoded",
          "[codec]") {
  test::TempDir dir("codec_disk");
  FloatEngine e;
  const uint64_t raw = e.layout.block_bytes();
  uint64_t encoded = 0, host_bytes = 0;
  {
    // Two host slots: the filler chains push the first chain's blocks down to disk.
    Options o = CodecOptions(e, "int8", 1);
    auto alignment = internal::DiskTier::Alignment(dir.path.string());
    REQUIRE_OK(alignment);
    host_bytes = 2 * internal::DiskTier::HostSlotBytes(internal::StoredBlockBytes(o), *alignment);
    o.host.capacity_bytes = host_bytes;  // 2 slots padded for the disk
    o.disk.directory = dir.path.string();
    o.disk.capacity_bytes = 64 * raw;
    o.disk.allow_buffered = true;
    encoded = internal::StoredBlockBytes(o);
    CHECK(encoded < raw);  // tiny blocks: K's per-channel scales weigh (docs/compression.md)
    auto cache = Cache::Create(o);
    REQUIRE_OK(cache);
    Loaded got = CommitEvictLoad(**cache, e, 3);
    REQUIRE(got.blocks == 2);
    for (uint32_t i = 0; i < 2; ++i) {
      CHECK(e.MaxError(got.lease.slots()[i], 30 + i) <= 8.0f / 255 / 2 * 1.02f + 4 * 0x1p-8f);
    }
    const CacheStats s = (*cache)->Stats();
    CHECK(s.bytes_disk_read > 0);
    CHECK(s.bytes_disk_read % encoded == 0);  // the disk moves encoded blocks
    CHECK(s.codec_lossy_blocks_loaded == 2);
  }
  // A warm restart with another codec is another layout's directory: refused, or reset on demand.
  Options other = CodecOptions(e, "int4", 1);
  other.host.capacity_bytes = host_bytes * 2;
  other.disk.directory = dir.path.string();
  other.disk.capacity_bytes = 64 * raw;
  other.disk.allow_buffered = true;
  auto refused = Cache::Create(other);
  CHECK_FALSE(refused.ok());
  Options none = other;
  none.host.codec = "none";
  CHECK_FALSE(Cache::Create(none).ok());
  // Another group size of the same encoded size (64 channels: one V group per token at 64 and
  // at 128; 4 tokens: one K group per channel): only the fingerprint tells them apart.
  Options regrouped = CodecOptions(e, "int8", 1);
  regrouped.host.codec_group_size = 64;
  Options regrouped2 = regrouped;
  regrouped2.host.codec_group_size = 128;
  REQUIRE(internal::StoredBlockBytes(regrouped) == internal::StoredBlockBytes(regrouped2));
  for (Options* r : {&regrouped, &regrouped2}) {
    r->host.capacity_bytes = host_bytes;
    r->disk.directory = dir.path.string();
    r->disk.capacity_bytes = 64 * raw;
    r->disk.allow_buffered = true;
  }
  {
    test::TempDir dir2("codec_regroup");
    regrouped.disk.directory = regrouped2.disk.directory = dir2.path.string();
    {
      auto first = Cache::Create(regrouped);
      REQUIRE_OK(first);
      CommitEvictLoad(**first, e, 5);
    }
    auto second = Cache::Create(regrouped2);
    CHECK_FALSE(second.ok());
  }
  other.disk.reset_on_mismatch = true;
  auto reset = Cache::Create(other);
  REQUIRE_OK(reset);
  CHECK((*reset)->Stats().disk.used_blocks == 0);
}

TEST_CASE("Cache::Create refuses a codec it cannot apply, naming the option", "[codec]") {
  FloatEngine e;
  auto message = [](const absl::Status& s) { return std::string(s.message()); };
  {
    Options o = CodecOptions(e, "int8", 4);
    o.shard.dtype = "";  // no element type
    auto c = Cache::Create(o);
    REQUIRE_CODE(c, absl::StatusCode::kInvalidArgument);
    CHECK(message(c.status()).find("Options.shard.dtype") != std::string::npos);
  }
  {
    FloatEngine no_roles(/*roles=*/false);
    auto c = Cache::Create(CodecOptions(no_roles, "int4", 4));
    REQUIRE_CODE(c, absl::StatusCode::kInvalidArgument);
    CHECK(message(c.status()).find("role is unspecified") != std::string::npos);
    // fp8 needs no roles.
    CHECK_OK(Cache::Create(CodecOptions(no_roles, "fp8_e4m3", 4)));
  }
  for (uint32_t group : {0u, 3u, 33u}) {
    Options o = CodecOptions(e, "int8", 4);
    o.host.codec_group_size = group;
    auto c = Cache::Create(o);
    REQUIRE_CODE(c, absl::StatusCode::kInvalidArgument);
    CHECK(message(c.status()).find("Options.host.codec_group_size") != std::string::npos);
  }
  {
    auto c = Cache::Create(CodecOptions(e, "int2", 4));
    REQUIRE_CODE(c, absl::StatusCode::kInvalidArgument);
    CHECK(message(c.status()).find("Options.host.codec: 'int2'") != std::string::npos);
  }
  {
    Options o = CodecOptions(e, "int8", 0);  // no host tier
    auto c = Cache::Create(o);
    REQUIRE_CODE(c, absl::StatusCode::kInvalidArgument);
    CHECK(message(c.status()).find("needs the host tier") != std::string::npos);
  }
  // The codec is part of the fingerprint (only when set: "none" keeps the old value).
  Options a = CodecOptions(e, "none", 4), b = CodecOptions(e, "int8", 4);
  Options c = b;
  c.host.codec_group_size = 64;
  CHECK(a.Fingerprint() != b.Fingerprint());
  CHECK(b.Fingerprint() != c.Fingerprint());
  Options plain;
  plain.layout = e.layout;
  plain.shard.dtype = "bfloat16";
  CHECK(plain.Fingerprint() == a.Fingerprint());
}

}  // namespace kvtier

namespace kvtier {

TEST_CASE("Cache with host.codec: a failed device-to-host copy is a lost block, never served",
          "[codec]") {
  FloatEngine e;
  auto owned = std::make_unique<internal::EmulatedDevice>();
  internal::EmulatedDevice* device = owned.get();
  auto cache = internal::CreateCache(CodecOptions(e, "int8", 4), std::move(owned));
  REQUIRE_OK(cache);
  const std::vector<BlockKey> keys = test::Chain(2, 7, FloatEngine::kTokens);
  {
    auto lease = (*cache)->AllocateDevice(2);
    REQUIRE_OK(lease);
    for (uint32_t i = 0; i < 2; ++i) e.Write(lease->slots()[i], 70 + i);
    REQUIRE_OK((*cache)->Commit(keys, *lease));
  }
  // The next allocation writes the chain back to the host: its copy fails.
  const uint64_t failures_before = (*cache)->Stats().transfer_failures;
  device->FailNextCopies(1);
  for (uint32_t other = 0; other < 2; ++other) {
    auto lease = (*cache)->AllocateDevice(2);
    REQUIRE_OK(lease);
    for (uint32_t i = 0; i < 2; ++i) e.Write(lease->slots()[i], 999);
    REQUIRE_OK((*cache)->Commit(test::Chain(2, 700 + other, FloatEngine::kTokens), *lease));
  }
  CHECK((*cache)->Stats().transfer_failures > failures_before);
  auto match = (*cache)->Match(keys);
  REQUIRE_OK(match);
  CHECK(match->size() == 0);  // the lost block ends the prefix: nothing of it is served
  REQUIRE_OK((*cache)->CheckInvariants());
}

}  // namespace kvtier

namespace kvtier {

TEST_CASE("Cache with host.codec and a remote tier: another cache loads the encoded blocks",
          "[codec][remote]") {
  std::string why;
  if (!test::LocalRedisCluster::Available(&why)) {
    if (test::SkipMissing("redis", "no redis-server to run a cluster with (" + why + ")")) return;
  }
  auto cluster = test::LocalRedisCluster::Start();
  REQUIRE_OK(cluster);
  std::string nodes;
  for (const std::string& n : (*cluster)->nodes()) nodes += (nodes.empty() ? "" : ",") + n;
  const std::pair<const char*, float> cases[] = {{"int8", 8.0f / 255 / 2 * 1.02f + 4 * 0x1p-8f},
                                                 {"int4", 8.0f / 15 / 2 * 1.02f + 4 * 0x1p-8f},
                                                 {"fp8_e4m3", 4 * 0x1p-4f + 4 * 0x1p-8f},
                                                 {"none", 0.0f}};
  for (const auto& [codec, bound] : cases) {
    INFO("codec " << codec);
    FloatEngine ea, eb;  // two engines, their own device memory
    auto options = [&](const FloatEngine& e) {
      Options o = CodecOptions(e, codec, 4);
      o.remote.nodes = nodes;
      o.remote.scope = std::string("codec-") + codec + "-" + std::to_string(getpid());
      o.remote.match_budget_us = 500000;
      return o;
    };
    auto a = Cache::Create(options(ea));
    auto b = Cache::Create(options(eb));
    REQUIRE_OK(a);
    REQUIRE_OK(b);
    const std::vector<BlockKey> keys = test::Chain(2, 5, FloatEngine::kTokens);
    {
      auto lease = (*a)->AllocateDevice(2);
      REQUIRE_OK(lease);
      for (uint32_t i = 0; i < 2; ++i) ea.Write(lease->slots()[i], 50 + i);
      REQUIRE_OK((*a)->Commit(keys, *lease));
    }
    // Write-through publication: both blocks encoded on A's host, then written to the store.
    const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(20);
    while ((*a)->Stats().remote.writes < 2 && std::chrono::steady_clock::now() < deadline) {
      std::this_thread::sleep_for(std::chrono::milliseconds(5));
    }
    REQUIRE((*a)->Stats().remote.writes == 2);
    auto match = (*b)->Match(keys);
    REQUIRE_OK(match);
    REQUIRE(match->blocks_in(Tier::kRemote) == 2);
    auto lease = (*b)->AllocateDevice(2);
    REQUIRE_OK(lease);
    auto xfer = (*b)->Load(*match, *lease);
    REQUIRE_OK(xfer);
    REQUIRE_OK(xfer->Wait());
    REQUIRE(xfer->blocks_loaded() == 2);
    for (uint32_t i = 0; i < 2; ++i) {
      if (std::string(codec) == "none") {
        CHECK(eb.Exact(lease->slots()[i], 50 + i));
      } else {
        const float err = eb.MaxError(lease->slots()[i], 50 + i);
        INFO("block " << i << " max error " << err << " bound " << bound);
        CHECK(err <= bound);
        CHECK(err > 0);
      }
    }
    CHECK(xfer->blocks_lossy() == (std::string(codec) == "none" ? 0u : 2u));
    CHECK((*b)->Stats().codec_refused_blocks == 0);
    REQUIRE_OK((*b)->CheckInvariants());
  }
}

}  // namespace kvtier
