// The block codecs (lib/codec): round trips within each codec's analytic error bound, special
// values, element types, odd shapes, header checks.
#include "lib/codec/codec.h"

#include <algorithm>
#include <bit>
#include <cmath>
#include <cstring>
#include <limits>
#include <random>
#include <utility>
#include <vector>

#include "catch2/catch.hpp"

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

TEST_CASE("codec names parse; unknown codec and element types are refused", "[codec]") {
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

TEST_CASE("int codecs: constant and all-zero groups decode exactly; NaN and Inf saturate",
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

}  // namespace kvtier::internal
