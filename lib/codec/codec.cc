#include "lib/codec/codec.h"

#include <algorithm>
#include <array>
#include <bit>
#include <cmath>
#include <cstring>
#include <limits>
#include <string>
#include <utility>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/strip.h"
#include "lib/common/status_macros.h"

namespace kvtier::internal {
namespace {

constexpr uint32_t kMagic = 0x4351564b;  // "KVQC"
constexpr uint8_t kVersion = 1;
constexpr uint32_t kBf16MaxBits = 0x7f7f;  // largest finite bf16, 3.3895e38

// ---- element conversions: branch-free, so that the loops over them vectorise ----

inline float BitsToFloat(uint32_t u) { return std::bit_cast<float>(u); }
inline uint32_t FloatToBits(float f) { return std::bit_cast<uint32_t>(f); }

inline float HalfToFloat(uint16_t h) {
  const uint32_t sign = static_cast<uint32_t>(h & 0x8000) << 16;
  const uint32_t em = h & 0x7fff;
  // em << 13 read as a float is the value times 2^-112 (normals and subnormals alike).
  uint32_t bits = FloatToBits(BitsToFloat(em << 13) * 0x1p112f);
  bits |= em >= 0x7c00 ? 0x7f800000u : 0u;  // Inf and NaN keep their mantissa
  return BitsToFloat(bits | sign);
}

// Round to nearest even (F. Giesen's float_to_half_fast3_rtne); NaN -> quiet NaN.
inline uint16_t FloatToHalf(float f) {
  constexpr uint32_t kInf = 255u << 23, kHalfMax = (127u + 16) << 23;
  constexpr uint32_t kDenormMagic = ((127u - 15) + (23 - 10) + 1) << 23;
  uint32_t u = FloatToBits(f);
  const uint32_t sign = u & 0x80000000u;
  u ^= sign;
  const uint32_t big = u > kInf ? 0x7e00u : 0x7c00u;
  const uint32_t sub = FloatToBits(BitsToFloat(u) + BitsToFloat(kDenormMagic)) - kDenormMagic;
  const uint32_t normal = (u + ((15u - 127) << 23) + 0xfff + ((u >> 13) & 1)) >> 13;
  const uint32_t o = u >= kHalfMax ? big : (u < (113u << 23) ? sub : normal);
  return static_cast<uint16_t>(o | (sign >> 16));
}

inline float Bf16ToFloat(uint16_t h) { return BitsToFloat(static_cast<uint32_t>(h) << 16); }

inline uint16_t FloatToBf16(float f) {
  const uint32_t u = FloatToBits(f);
  const bool nan = (u & 0x7fffffffu) > 0x7f800000u;
  const uint32_t r = (u + 0x7fffu + ((u >> 16) & 1)) >> 16;
  return static_cast<uint16_t>(nan ? ((u >> 16) | 0x40u) : r);
}

// bf16 at or below / at or above `x` (finite, |x| <= bf16 max).
uint16_t Bf16Down(double x) {
  const float f = static_cast<float>(x);
  uint16_t b = FloatToBf16(f);
  while (static_cast<double>(Bf16ToFloat(b)) > x)
    b = (b & 0x8000) ? b + 1 : (b == 0 ? 0x8001 : b - 1);
  return b;
}
uint16_t Bf16Up(double x) {
  const float f = static_cast<float>(x);
  uint16_t b = FloatToBf16(f);
  while (static_cast<double>(Bf16ToFloat(b)) < x)
    b = (b & 0x8000) ? (b == 0x8000 ? 1 : b - 1) : b + 1;
  return b;
}

template <ElementType E>
inline float LoadElement(const uint8_t* p) {
  if constexpr (E == ElementType::kF32) {
    float f;
    std::memcpy(&f, p, 4);
    return f;
  } else {
    uint16_t h;
    std::memcpy(&h, p, 2);
    return E == ElementType::kF16 ? HalfToFloat(h) : Bf16ToFloat(h);
  }
}

template <ElementType E>
inline void StoreElement(float f, uint8_t* p) {
  if constexpr (E == ElementType::kF32) {
    std::memcpy(p, &f, 4);
  } else {
    const uint16_t h = E == ElementType::kF16 ? FloatToHalf(f) : FloatToBf16(f);
    std::memcpy(p, &h, 2);
  }
}

template <ElementType E>
void ToFloat(const uint8_t* src, float* dst, size_t n) {
  constexpr size_t kBytes = E == ElementType::kF32 ? 4 : 2;
  for (size_t i = 0; i < n; ++i) dst[i] = LoadElement<E>(src + i * kBytes);
}

template <ElementType E>
void FromFloat(const float* src, uint8_t* dst, size_t n) {
  constexpr size_t kBytes = E == ElementType::kF32 ? 4 : 2;
  for (size_t i = 0; i < n; ++i) StoreElement<E>(src[i], dst + i * kBytes);
}

// Scratch floats and codes of one segment, per thread.
float* FloatScratch(size_t n) {
  thread_local std::vector<float> scratch;
  if (scratch.size() < n) scratch.resize(n);
  return scratch.data();
}
uint8_t* CodeScratch(size_t n) {
  thread_local std::vector<uint8_t> scratch;
  if (scratch.size() < n) scratch.resize(n);
  return scratch.data();
}

// ---- int8 / int4 ----

inline bool Finite(float x) { return (FloatToBits(x) & 0x7f800000u) != 0x7f800000u; }

struct Group {
  uint16_t scale;  // bf16
  uint16_t min;    // bf16
};

// (s, m) of a group whose finite values span [lo, hi] (lo > hi: none finite).
Group MakeGroup(float lo, float hi, uint32_t levels) {
  if (!(lo <= hi)) return {0, 0};
  const float limit = Bf16ToFloat(kBf16MaxBits);
  lo = std::clamp(lo, -limit, limit);
  hi = std::clamp(hi, -limit, limit);
  const uint16_t m = Bf16Down(lo);
  const double range = static_cast<double>(hi) - static_cast<double>(Bf16ToFloat(m));
  const uint16_t s = range > 0 ? Bf16Up(range / levels) : 0;
  return {s, m};
}

inline void StoreGroup(uint8_t* p, Group g) {
  std::memcpy(p, &g.scale, 2);
  std::memcpy(p + 2, &g.min, 2);
}
inline Group LoadGroup(const uint8_t* p) {
  Group g;
  std::memcpy(&g.scale, p, 2);
  std::memcpy(&g.min, p + 2, 2);
  return g;
}

// Codes of x[i] with per-element minimum m[i] and inverse scale inv[i] (strided views through
// the `m_step` / `inv_step` of 0 or 1).
inline uint8_t Quantise(float x, float m, float inv, float levels) {
  float v = (x - m) * inv;
  v = v > 0.0f ? v : 0.0f;  // NaN -> 0
  v = v < levels ? v : levels;
  return static_cast<uint8_t>(static_cast<int32_t>(v + 0.5f));
}

float Inverse(float s) { return s > 0 ? 1.0f / s : 0.0f; }

// Quantises `x` ([tokens][channels]) into codes and writes the groups at `groups`.
void QuantiseSegment(const float* x, uint32_t tokens, uint64_t channels, SegmentRole role,
                     uint32_t group_size, uint32_t levels, uint8_t* groups, uint8_t* codes) {
  const float lv = static_cast<float>(levels);
  constexpr float kInf = std::numeric_limits<float>::infinity();
  if (role == SegmentRole::kKey) {
    // Per channel, groups of group_size tokens: [token group][channel].
    float* lo = FloatScratch(3 * channels + 0);  // lo, hi, then m and inv reuse them
    float* hi = lo + channels;
    float* inv = hi + channels;
    for (uint32_t t0 = 0; t0 < tokens; t0 += group_size) {
      const uint32_t t1 = std::min(tokens, t0 + group_size);
      for (uint64_t c = 0; c < channels; ++c) {
        lo[c] = kInf;
        hi[c] = -kInf;
      }
      for (uint32_t t = t0; t < t1; ++t) {
        const float* row = x + t * channels;
        for (uint64_t c = 0; c < channels; ++c) {
          const float v = row[c];
          const bool f = Finite(v);
          const float a = f ? v : kInf, b = f ? v : -kInf;
          lo[c] = a < lo[c] ? a : lo[c];
          hi[c] = b > hi[c] ? b : hi[c];
        }
      }
      for (uint64_t c = 0; c < channels; ++c) {
        const Group g = MakeGroup(lo[c], hi[c], levels);
        StoreGroup(groups + ((t0 / group_size) * channels + c) * 4, g);
        lo[c] = Bf16ToFloat(g.min);
        inv[c] = Inverse(Bf16ToFloat(g.scale));
      }
      for (uint32_t t = t0; t < t1; ++t) {
        const float* row = x + t * channels;
        uint8_t* out = codes + t * channels;
        for (uint64_t c = 0; c < channels; ++c) out[c] = Quantise(row[c], lo[c], inv[c], lv);
      }
    }
    return;
  }
  // Per token, groups of group_size channels: [token][channel group].
  const uint64_t per_row = (channels + group_size - 1) / group_size;
  for (uint32_t t = 0; t < tokens; ++t) {
    const float* row = x + t * channels;
    uint8_t* out = codes + t * channels;
    for (uint64_t c0 = 0; c0 < channels; c0 += group_size) {
      const uint64_t c1 = std::min<uint64_t>(channels, c0 + group_size);
      float lo = kInf, hi = -kInf;
      for (uint64_t c = c0; c < c1; ++c) {
        const float v = row[c];
        const bool f = Finite(v);
        const float a = f ? v : kInf, b = f ? v : -kInf;
        lo = a < lo ? a : lo;
        hi = b > hi ? b : hi;
      }
      const Group g = MakeGroup(lo, hi, levels);
      StoreGroup(groups + (t * per_row + c0 / group_size) * 4, g);
      const float m = Bf16ToFloat(g.min), inv = Inverse(Bf16ToFloat(g.scale));
      for (uint64_t c = c0; c < c1; ++c) out[c] = Quantise(row[c], m, inv, lv);
    }
  }
}

void DequantiseSegment(const uint8_t* codes, const uint8_t* groups, uint32_t tokens,
                       uint64_t channels, SegmentRole role, uint32_t group_size, float* x) {
  if (role == SegmentRole::kKey) {
    float* m = FloatScratch(2 * channels);
    float* s = m + channels;
    for (uint32_t t0 = 0; t0 < tokens; t0 += group_size) {
      const uint32_t t1 = std::min(tokens, t0 + group_size);
      for (uint64_t c = 0; c < channels; ++c) {
        const Group g = LoadGroup(groups + ((t0 / group_size) * channels + c) * 4);
        m[c] = Bf16ToFloat(g.min);
        s[c] = Bf16ToFloat(g.scale);
      }
      for (uint32_t t = t0; t < t1; ++t) {
        const uint8_t* in = codes + t * channels;
        float* row = x + t * channels;
        for (uint64_t c = 0; c < channels; ++c) row[c] = m[c] + static_cast<float>(in[c]) * s[c];
      }
    }
    return;
  }
  const uint64_t per_row = (channels + group_size - 1) / group_size;
  for (uint32_t t = 0; t < tokens; ++t) {
    const uint8_t* in = codes + t * channels;
    float* row = x + t * channels;
    for (uint64_t c0 = 0; c0 < channels; c0 += group_size) {
      const uint64_t c1 = std::min<uint64_t>(channels, c0 + group_size);
      const Group g = LoadGroup(groups + (t * per_row + c0 / group_size) * 4);
      const float m = Bf16ToFloat(g.min), s = Bf16ToFloat(g.scale);
      for (uint64_t c = c0; c < c1; ++c) row[c] = m + static_cast<float>(in[c]) * s;
    }
  }
}

uint64_t GroupCount(SegmentRole role, uint32_t tokens, uint64_t channels, uint32_t group_size) {
  if (role == SegmentRole::kKey) return ((tokens + group_size - 1) / group_size) * channels;
  return tokens * ((channels + group_size - 1) / group_size);
}

void PackInt4(const uint8_t* codes, uint64_t n, uint8_t* out) {
  const uint64_t pairs = n / 2;
  for (uint64_t i = 0; i < pairs; ++i) {
    out[i] = static_cast<uint8_t>(codes[2 * i] | (codes[2 * i + 1] << 4));
  }
  if (n % 2) out[pairs] = codes[n - 1];
}

void UnpackInt4(const uint8_t* in, uint64_t n, uint8_t* codes) {
  const uint64_t pairs = n / 2;
  for (uint64_t i = 0; i < pairs; ++i) {
    codes[2 * i] = in[i] & 0x0f;
    codes[2 * i + 1] = in[i] >> 4;
  }
  if (n % 2) codes[n - 1] = in[pairs] & 0x0f;
}

// ---- fp8 e4m3fn ----

uint8_t FloatToE4m3(float f) {
  const uint32_t u = FloatToBits(f);
  const uint8_t sign = static_cast<uint8_t>((u >> 24) & 0x80);
  const uint32_t a = u & 0x7fffffffu;
  if (a > 0x7f800000u) return sign | 0x7f;   // NaN
  if (a >= 0x43e00000u) return sign | 0x7e;  // >= 448 (and Inf): saturate
  if (a < 0x3c800000u) {                     // below 2^-6: subnormal, m * 2^-9
    const int m = static_cast<int>(std::nearbyint(BitsToFloat(a) * 512.0f));  // RNE; 8 = 2^-6
    return sign | static_cast<uint8_t>(m);
  }
  const uint32_t r = (a + 0x7ffffu + ((a >> 20) & 1)) >> 20;  // exponent and 3 mantissa bits
  const uint32_t o = r - ((127u - 7) << 3);
  return sign | static_cast<uint8_t>(std::min<uint32_t>(o, 0x7e));
}

float E4m3ToFloatSlow(uint8_t v) {
  const float sign = (v & 0x80) ? -1.0f : 1.0f;
  const int e = (v >> 3) & 0xf, m = v & 7;
  if (e == 0xf && m == 7) return std::numeric_limits<float>::quiet_NaN();
  if (e == 0) return sign * std::ldexp(static_cast<float>(m), -9);
  return sign * std::ldexp(1.0f + m / 8.0f, e - 7);
}

const std::array<float, 256>& E4m3Table() {
  static const std::array<float, 256> table = [] {
    std::array<float, 256> t{};
    for (int i = 0; i < 256; ++i) t[i] = E4m3ToFloatSlow(static_cast<uint8_t>(i));
    return t;
  }();
  return table;
}

// ---- per segment ----

template <ElementType E>
void EncodeSegment(const CodecConfig& config, const BlockCodec::SegmentShape& shape,
                   const uint8_t* raw, uint8_t* out) {
  const uint64_t n = shape.tokens * shape.channels;
  float* x = FloatScratch(n + 3 * shape.channels) + 3 * shape.channels;
  // QuantiseSegment's K path uses the first 3 * channels floats of the same scratch.
  ToFloat<E>(raw, x, n);
  if (config.id == CodecId::kFp8E4m3) {
    float amax = 0;
    for (uint64_t i = 0; i < n; ++i) {
      const float a = Finite(x[i]) ? std::fabs(x[i]) : 0.0f;
      amax = a > amax ? a : amax;
    }
    const float scale = amax > 0 ? amax / 448.0f : 1.0f;
    std::memcpy(out, &scale, 4);
    const float inv = 1.0f / scale;
    uint8_t* q = out + 4;
    for (uint64_t i = 0; i < n; ++i) q[i] = FloatToE4m3(x[i] * inv);
    return;
  }
  const uint32_t levels = config.id == CodecId::kInt8 ? 255 : 15;
  const uint64_t group_bytes =
      GroupCount(shape.role, shape.tokens, shape.channels, config.group_size) * 4;
  if (config.id == CodecId::kInt8) {
    QuantiseSegment(x, shape.tokens, shape.channels, shape.role, config.group_size, levels, out,
                    out + group_bytes);
    return;
  }
  uint8_t* codes = CodeScratch(n);
  QuantiseSegment(x, shape.tokens, shape.channels, shape.role, config.group_size, levels, out,
                  codes);
  PackInt4(codes, n, out + group_bytes);
}

template <ElementType E>
void DecodeSegment(const CodecConfig& config, const BlockCodec::SegmentShape& shape,
                   const uint8_t* in, uint8_t* raw) {
  const uint64_t n = shape.tokens * shape.channels;
  float* x = FloatScratch(n + 2 * shape.channels) + 2 * shape.channels;
  if (config.id == CodecId::kFp8E4m3) {
    float scale;
    std::memcpy(&scale, in, 4);
    const auto& table = E4m3Table();
    const uint8_t* q = in + 4;
    for (uint64_t i = 0; i < n; ++i) x[i] = table[q[i]] * scale;
  } else {
    const uint64_t group_bytes =
        GroupCount(shape.role, shape.tokens, shape.channels, config.group_size) * 4;
    const uint8_t* codes = in + group_bytes;
    if (config.id == CodecId::kInt4) {
      uint8_t* unpacked = CodeScratch(n);
      UnpackInt4(codes, n, unpacked);
      codes = unpacked;
    }
    DequantiseSegment(codes, in, shape.tokens, shape.channels, shape.role, config.group_size, x);
  }
  FromFloat<E>(x, raw, n);
}

void EncodeAny(const CodecConfig& c, const BlockCodec::SegmentShape& s, const uint8_t* raw,
               uint8_t* out) {
  switch (c.element) {
    case ElementType::kF16:
      return EncodeSegment<ElementType::kF16>(c, s, raw, out);
    case ElementType::kBf16:
      return EncodeSegment<ElementType::kBf16>(c, s, raw, out);
    case ElementType::kF32:
      return EncodeSegment<ElementType::kF32>(c, s, raw, out);
  }
}

void DecodeAny(const CodecConfig& c, const BlockCodec::SegmentShape& s, const uint8_t* in,
               uint8_t* raw) {
  switch (c.element) {
    case ElementType::kF16:
      return DecodeSegment<ElementType::kF16>(c, s, in, raw);
    case ElementType::kBf16:
      return DecodeSegment<ElementType::kBf16>(c, s, in, raw);
    case ElementType::kF32:
      return DecodeSegment<ElementType::kF32>(c, s, in, raw);
  }
}

void PutU32(uint8_t* p, uint32_t v) {
  for (int i = 0; i < 4; ++i) p[i] = static_cast<uint8_t>(v >> (8 * i));
}
uint32_t GetU32(const uint8_t* p) {
  uint32_t v = 0;
  for (int i = 0; i < 4; ++i) v |= static_cast<uint32_t>(p[i]) << (8 * i);
  return v;
}

}  // namespace

absl::StatusOr<CodecId> ParseCodec(absl::string_view path, absl::string_view name) {
  for (CodecId id : {CodecId::kNone, CodecId::kFp8E4m3, CodecId::kInt8, CodecId::kInt4}) {
    if (name == CodecName(id)) return id;
  }
  return absl::InvalidArgumentError(
      absl::StrCat(path, ": '", name, "' is not none, fp8_e4m3, int8 or int4"));
}

const char* CodecName(CodecId id) {
  switch (id) {
    case CodecId::kNone:
      return "none";
    case CodecId::kFp8E4m3:
      return "fp8_e4m3";
    case CodecId::kInt8:
      return "int8";
    case CodecId::kInt4:
      return "int4";
  }
  return "?";
}

absl::StatusOr<ElementType> ParseElementType(absl::string_view dtype) {
  absl::string_view d = dtype;
  absl::ConsumePrefix(&d, "torch.");
  if (d == "float16" || d == "half") return ElementType::kF16;
  if (d == "bfloat16") return ElementType::kBf16;
  if (d == "float32" || d == "float") return ElementType::kF32;
  return absl::InvalidArgumentError(
      absl::StrCat("'", dtype, "' is not float16, bfloat16 or float32"));
}

uint32_t ElementBytes(ElementType type) { return type == ElementType::kF32 ? 4 : 2; }

uint64_t SegmentEncodedBytes(const CodecConfig& config, SegmentRole role, uint32_t tokens,
                             uint64_t channels) {
  const uint64_t n = tokens * channels;
  switch (config.id) {
    case CodecId::kNone:
      return n * ElementBytes(config.element);
    case CodecId::kFp8E4m3:
      return 4 + n;
    case CodecId::kInt8:
      return GroupCount(role, tokens, channels, config.group_size) * 4 + n;
    case CodecId::kInt4:
      return GroupCount(role, tokens, channels, config.group_size) * 4 + (n + 1) / 2;
  }
  return 0;
}

absl::StatusOr<BlockCodec> BlockCodec::Create(absl::string_view path, const CodecConfig& config,
                                              const BlockLayout& layout) {
  if (config.id != CodecId::kFp8E4m3 && config.id != CodecId::kInt8 &&
      config.id != CodecId::kInt4) {
    return absl::InvalidArgumentError(
        absl::StrCat(path, ": codec '", CodecName(config.id), "' has no encoder"));
  }
  if (config.group_size < 2 || config.group_size > kMaxCodecGroupSize ||
      !std::has_single_bit(config.group_size)) {
    return absl::InvalidArgumentError(absl::StrCat(path, "_group_size: ", config.group_size,
                                                   " vs a power of two in [2, ", kMaxCodecGroupSize,
                                                   "]"));
  }
  if (config.element != ElementType::kF16 && config.element != ElementType::kBf16 &&
      config.element != ElementType::kF32) {
    return absl::InvalidArgumentError(absl::StrCat(path, ": unknown element type"));
  }
  if (layout.tokens_per_block == 0 || layout.layers.empty()) {
    return absl::InvalidArgumentError(absl::StrCat(path, ": an empty layout"));
  }
  BlockCodec codec;
  codec.config_ = config;
  const uint32_t element = ElementBytes(config.element);
  const uint32_t tokens = layout.tokens_per_block;
  uint64_t raw = 0, encoded = kCodecHeaderBytes;
  codec.layer_encoded_.push_back(encoded);
  codec.layer_raw_.push_back(raw);
  for (size_t l = 0; l < layout.layers.size(); ++l) {
    LayerShape shape;
    for (size_t s = 0; s < layout.layers[l].segments.size(); ++s) {
      const Segment& g = layout.layers[l].segments[s];
      const uint64_t row = uint64_t{element} * tokens;
      if (g.bytes_per_block == 0 || g.bytes_per_block % row != 0) {
        return absl::InvalidArgumentError(absl::StrCat(
            path, ": Options.layout.layers[", l, "].segments[", s,
            "].bytes_per_block=", g.bytes_per_block, " is not tokens_per_block=", tokens,
            " x a whole number of ", element, "-byte elements"));
      }
      SegmentRole role = g.role;
      if (config.id != CodecId::kFp8E4m3) {
        if (role != SegmentRole::kKey && role != SegmentRole::kValue &&
            role != SegmentRole::kLatent) {
          return absl::InvalidArgumentError(absl::StrCat(
              path, ": Options.layout.layers[", l, "].segments[", s, "].role is unspecified; ",
              CodecName(config.id),
              " scales K per channel and V per token, so every segment must say which"));
        }
      }
      if (role == SegmentRole::kLatent || role == SegmentRole::kUnspecified) {
        role = SegmentRole::kValue;
      }
      SegmentShape seg{.tokens = tokens, .channels = g.bytes_per_block / row, .role = role};
      seg.encoded_bytes = SegmentEncodedBytes(config, role, tokens, seg.channels);
      raw += g.bytes_per_block;
      encoded += seg.encoded_bytes;
      shape.segments.push_back(seg);
      ++codec.segment_count_;
    }
    codec.layers_.push_back(std::move(shape));
    codec.layer_encoded_.push_back(encoded);
    codec.layer_raw_.push_back(raw);
  }
  codec.raw_bytes_ = raw;
  codec.encoded_bytes_ = encoded;
  return codec;
}

void BlockCodec::EncodeLayer(uint32_t layer, const void* raw_layer, void* encoded_layer) const {
  const auto* in = static_cast<const uint8_t*>(raw_layer);
  auto* out = static_cast<uint8_t*>(encoded_layer);
  const uint32_t element = ElementBytes(config_.element);
  for (const SegmentShape& s : layers_[layer].segments) {
    EncodeAny(config_, s, in, out);
    in += s.tokens * s.channels * element;
    out += s.encoded_bytes;
  }
}

void BlockCodec::DecodeLayer(uint32_t layer, const void* encoded_layer, void* raw_layer) const {
  const auto* in = static_cast<const uint8_t*>(encoded_layer);
  auto* out = static_cast<uint8_t*>(raw_layer);
  const uint32_t element = ElementBytes(config_.element);
  for (const SegmentShape& s : layers_[layer].segments) {
    DecodeAny(config_, s, in, out);
    in += s.encoded_bytes;
    out += s.tokens * s.channels * element;
  }
}

absl::StatusOr<std::optional<BlockCodec>> HostCodecOf(const Options& options) {
  KVTIER_ASSIGN_OR_RETURN(const CodecId id, ParseCodec("Options.host.codec", options.host.codec));
  if (id == CodecId::kNone) return std::optional<BlockCodec>();
  absl::StatusOr<ElementType> element = ParseElementType(options.shard.dtype);
  if (!element.ok()) {
    return absl::InvalidArgumentError(absl::StrCat(
        "Options.host.codec: '", options.host.codec,
        "' needs the element type in Options.shard.dtype: ", element.status().message()));
  }
  KVTIER_ASSIGN_OR_RETURN(
      BlockCodec codec,
      BlockCodec::Create(
          "Options.host.codec",
          {.id = id, .group_size = options.host.codec_group_size, .element = *element},
          options.layout));
  return std::optional<BlockCodec>(std::move(codec));
}

uint64_t StoredBlockBytes(const Options& options) {
  absl::StatusOr<std::optional<BlockCodec>> codec = HostCodecOf(options);
  if (codec.ok() && codec->has_value()) return (*codec)->encoded_bytes();
  uint64_t bytes = 0;  // layout.block_bytes(), which lives in the facade (lib/layout.cc)
  for (const LayerLayout& l : options.layout.layers) {
    for (const Segment& g : l.segments) bytes += g.bytes_per_block;
  }
  return bytes;
}

void BlockCodec::EncodeHeader(void* encoded) const {
  auto* out = static_cast<uint8_t*>(encoded);
  PutU32(out, kMagic);
  out[4] = kVersion;
  out[5] = static_cast<uint8_t>(config_.id);
  out[6] = static_cast<uint8_t>(config_.element);
  out[7] = 0;
  PutU32(out + 8, config_.id == CodecId::kFp8E4m3 ? 0 : config_.group_size);
  PutU32(out + 12, segment_count_);
}

void BlockCodec::Encode(const void* raw, void* encoded) const {
  auto* out = static_cast<uint8_t*>(encoded);
  EncodeHeader(out);
  const auto* in = static_cast<const uint8_t*>(raw);
  for (uint32_t l = 0; l < num_layers(); ++l) {
    EncodeLayer(l, in + layer_raw_[l], out + layer_encoded_[l]);
  }
}

absl::Status BlockCodec::CheckHeader(const void* encoded) const {
  const auto* in = static_cast<const uint8_t*>(encoded);
  if (GetU32(in) != kMagic || in[4] != kVersion) {
    return absl::DataLossError(absl::StrCat("BlockCodec: not a version ", kVersion,
                                            " encoded block (magic ", GetU32(in), ", version ",
                                            in[4], ")"));
  }
  const uint32_t group = config_.id == CodecId::kFp8E4m3 ? 0 : config_.group_size;
  if (in[5] != static_cast<uint8_t>(config_.id) || in[6] != static_cast<uint8_t>(config_.element) ||
      GetU32(in + 8) != group || GetU32(in + 12) != segment_count_) {
    return absl::DataLossError(
        absl::StrCat("BlockCodec: block encoded as codec ", in[5], ", element ", in[6], ", group ",
                     GetU32(in + 8), ", ", GetU32(in + 12), " segments vs codec ",
                     static_cast<int>(config_.id), ", element ", static_cast<int>(config_.element),
                     ", group ", group, ", ", segment_count_, " segments"));
  }
  return absl::OkStatus();
}

absl::Status BlockCodec::Decode(const void* encoded, void* raw) const {
  if (absl::Status s = CheckHeader(encoded); !s.ok()) return s;
  const auto* in = static_cast<const uint8_t*>(encoded);
  auto* out = static_cast<uint8_t*>(raw);
  for (uint32_t l = 0; l < num_layers(); ++l) {
    DecodeLayer(l, in + layer_encoded_[l], out + layer_raw_[l]);
  }
  return absl::OkStatus();
}

}  // namespace kvtier::internal
