#include "lib/codec/codec.h"

#include <algorithm>
#include <array>
#include <bit>
#include <cmath>
#include <cstring>
#include <limits>
#include <string>
#include <utility>

#if defined(__x86_64__)
#include <cpuid.h>
#include <immintrin.h>
#endif

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/strip.h"
#include "lib/codec/codec_math.h"
#include "lib/common/status_macros.h"

namespace kvtier::internal {
namespace {

constexpr uint32_t kMagic = 0x4351564b;  // "KVQC"
constexpr uint8_t kVersion = 1;

// The element math shared with the CUDA kernels (lib/codec/codec_math.h).
using codec_math::AddFinite;
using codec_math::Bf16Down;
using codec_math::Bf16ToFloat;
using codec_math::Bf16Up;
using codec_math::BitsToFloat;
using codec_math::Finite;
using codec_math::FloatToBf16;
using codec_math::FloatToBits;
using codec_math::FloatToE4m3;
using codec_math::FloatToHalf;
using codec_math::Fp8Magnitude;
using codec_math::Fp8Scale;
using codec_math::Group;
using codec_math::HalfToFloat;
using codec_math::Inverse;
using codec_math::kBf16MaxBits;
using codec_math::LoadGroup;
using codec_math::MakeGroup;
using codec_math::Quantise;
using codec_math::StoreGroup;
static_assert(codec_math::kCodecFp8E4m3 == static_cast<uint8_t>(CodecId::kFp8E4m3) &&
              codec_math::kCodecInt8 == static_cast<uint8_t>(CodecId::kInt8) &&
              codec_math::kCodecInt4 == static_cast<uint8_t>(CodecId::kInt4));
static_assert(codec_math::kElementF16 == static_cast<uint8_t>(ElementType::kF16) &&
              codec_math::kElementBf16 == static_cast<uint8_t>(ElementType::kBf16) &&
              codec_math::kElementF32 == static_cast<uint8_t>(ElementType::kF32));

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

// Minimum and maximum of the finite values among x[0, n) (+Inf and -Inf when there are none).
inline void FiniteMinMax(const float* x, uint64_t n, float* lo_out, float* hi_out) {
  constexpr float kInf = std::numeric_limits<float>::infinity();
  float lo = kInf, hi = -kInf;
  for (uint64_t i = 0; i < n; ++i) AddFinite(x[i], lo, hi);
  *lo_out = lo;
  *hi_out = hi;
}

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
        for (uint64_t c = 0; c < channels; ++c) AddFinite(row[c], lo[c], hi[c]);
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
      float lo, hi;
      FiniteMinMax(row + c0, c1 - c0, &lo, &hi);
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

const std::array<float, 256>& E4m3Table() {
  static const std::array<float, 256> table = [] {
    std::array<float, 256> t{};
    for (int i = 0; i < 256; ++i) t[i] = codec_math::E4m3ToFloat(static_cast<uint8_t>(i));
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
      const float a = Fp8Magnitude(x[i]);
      amax = a > amax ? a : amax;
    }
    const float scale = Fp8Scale(amax);
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

// ---- AVX2 + F16C kernels: the same bytes as the scalar ones above ----
//
// Every quantisation step repeats the scalar kernel's IEEE operations in the same order (no FMA:
// the target has none, so m + q * s and (x - m) * inv round as in the scalar code); float min/max
// keep the scalar's "a < lo ? a : lo" (MINPS returns its second operand on ties and NaN); fp16 and
// bf16 min/max run on integer keys, the group scales on an exact test in double instead of
// MakeGroup's division (MakeGroups says why each gives the same result). Where a vector step could
// differ (the sign of a zero minimum found out of order, a NaN payload converted to fp16) the
// scalar code redoes that group or those lanes. test/codec_test.cc compares the two kernels.
#if defined(__x86_64__)
#define KVTIER_AVX2 __attribute__((target("avx2,f16c")))

template <ElementType E>
KVTIER_AVX2 inline __m256 Load8(const uint8_t* p) {
  if constexpr (E == ElementType::kF16) {
    return _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p)));
  } else if constexpr (E == ElementType::kBf16) {
    const __m256i w = _mm256_cvtepu16_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p)));
    return _mm256_castsi256_ps(_mm256_slli_epi32(w, 16));
  } else {
    return _mm256_loadu_ps(reinterpret_cast<const float*>(p));
  }
}

// kMayBeNaN false: the caller knows no lane is a NaN with a payload (a NaN of zero payload, as
// arithmetic makes, converts alike either way).
template <ElementType E, bool kMayBeNaN = true>
KVTIER_AVX2 inline void Store8(__m256 x, uint8_t* p) {
  if constexpr (E == ElementType::kF16) {
    // The scalar FloatToHalf makes every NaN 0x7e00 | sign; VCVTPS2PH keeps the payload.
    if (kMayBeNaN && _mm256_movemask_ps(_mm256_cmp_ps(x, x, _CMP_UNORD_Q)) != 0) {
      alignas(32) float f[8];
      _mm256_store_ps(f, x);
      for (int k = 0; k < 8; ++k) StoreElement<E>(f[k], p + 2 * k);
      return;
    }
    _mm_storeu_si128(reinterpret_cast<__m128i*>(p),
                     _mm256_cvtps_ph(x, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC));
  } else if constexpr (E == ElementType::kBf16) {
    const __m256i u = _mm256_castps_si256(x);
    const __m256i nan = _mm256_cmpgt_epi32(_mm256_and_si256(u, _mm256_set1_epi32(0x7fffffff)),
                                           _mm256_set1_epi32(0x7f800000));
    const __m256i odd = _mm256_and_si256(_mm256_srli_epi32(u, 16), _mm256_set1_epi32(1));
    const __m256i r = _mm256_srli_epi32(
        _mm256_add_epi32(_mm256_add_epi32(u, _mm256_set1_epi32(0x7fff)), odd), 16);
    const __m256i q = _mm256_or_si256(_mm256_srli_epi32(u, 16), _mm256_set1_epi32(0x40));
    const __m256i h = kMayBeNaN ? _mm256_blendv_epi8(r, q, nan) : r;
    _mm_storeu_si128(reinterpret_cast<__m128i*>(p),
                     _mm_packus_epi32(_mm256_castsi256_si128(h), _mm256_extracti128_si256(h, 1)));
  } else {
    _mm256_storeu_ps(reinterpret_cast<float*>(p), x);
  }
}

// Four vectors of 8 int32 in [0, 255] -> 32 bytes in order.
KVTIER_AVX2 inline void StoreBytes32(__m256i a, __m256i b, __m256i c, __m256i d, uint8_t* p) {
  const __m256i ab = _mm256_packus_epi32(a, b), cd = _mm256_packus_epi32(c, d);
  const __m256i bytes = _mm256_packus_epi16(ab, cd);  // lanes: a0 b0 c0 d0 | a1 b1 c1 d1
  _mm256_storeu_si256(
      reinterpret_cast<__m256i*>(p),
      _mm256_permutevar8x32_epi32(bytes, _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7)));
}
KVTIER_AVX2 inline void StoreBytes8(__m256i a, uint8_t* p) {
  const __m128i w = _mm_packus_epi32(_mm256_castsi256_si128(a), _mm256_extracti128_si256(a, 1));
  _mm_storel_epi64(reinterpret_cast<__m128i*>(p), _mm_packus_epi16(w, w));
}
KVTIER_AVX2 inline __m256 LoadCodes8(const uint8_t* p) {
  return _mm256_cvtepi32_ps(
      _mm256_cvtepu8_epi32(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(p))));
}

// Quantise: (x - m) * inv, clamped to [0, levels] (NaN -> 0), rounded to nearest even (the
// MXCSR's mode, as std::nearbyint's). Only the upper clamp is done here (MINPS with levels first
// keeps NaN): a negative value, -Inf or NaN converts to a negative int32 or INT_MIN, which the
// packing to bytes saturates to 0, as the clamp would.
KVTIER_AVX2 inline __m256i Code8(__m256 x, __m256 m, __m256 inv, __m256 levels) {
  return _mm256_cvtps_epi32(_mm256_min_ps(levels, _mm256_mul_ps(_mm256_sub_ps(x, m), inv)));
}

// Min/max over finite values, as the scalar loops: -Inf is left out of lo, +Inf out of hi, NaN out
// of both (MINPS/MAXPS return their second operand when the first is NaN).
KVTIER_AVX2 inline void MinMax8(__m256 x, __m256& lo, __m256& hi) {
  const __m256 inf = _mm256_set1_ps(std::numeric_limits<float>::infinity());
  const __m256 ninf = _mm256_set1_ps(-std::numeric_limits<float>::infinity());
  lo = _mm256_min_ps(_mm256_blendv_ps(x, inf, _mm256_cmp_ps(x, ninf, _CMP_EQ_OQ)), lo);
  hi = _mm256_max_ps(_mm256_blendv_ps(x, ninf, _mm256_cmp_ps(x, inf, _CMP_EQ_OQ)), hi);
}

// FloatToBf16 of finite floats (round to nearest even).
KVTIER_AVX2 inline __m256i RoundBf16(__m256 f) {
  const __m256i u = _mm256_castps_si256(f);
  const __m256i odd = _mm256_and_si256(_mm256_srli_epi32(u, 16), _mm256_set1_epi32(1));
  return _mm256_srli_epi32(_mm256_add_epi32(_mm256_add_epi32(u, _mm256_set1_epi32(0x7fff)), odd),
                           16);
}
KVTIER_AVX2 inline __m256 Bf16Lanes(__m256i b) {
  return _mm256_castsi256_ps(_mm256_slli_epi32(b, 16));
}

// MakeGroup for groups [0, n): (s, m) at groups + 4 i, m and 1/s as floats. The same float
// operations as MakeGroup, 8 groups at a time.
KVTIER_AVX2 void MakeGroups(const float* lo_in, const float* hi_in, uint64_t n, uint32_t levels,
                            uint8_t* groups, float* m_out, float* inv_out) {
  const float limit = Bf16ToFloat(kBf16MaxBits);
  const __m256 lim = _mm256_set1_ps(limit), nlim = _mm256_set1_ps(-limit);
  const __m256 inv_levels = _mm256_set1_ps(1.0f / static_cast<float>(levels));
  const __m256 inf = _mm256_set1_ps(std::numeric_limits<float>::infinity());
  const __m256i one = _mm256_set1_epi32(1);
  uint64_t i = 0;
  for (; i + 8 <= n; i += 8) {
    const __m256 lo0 = _mm256_loadu_ps(lo_in + i), hi0 = _mm256_loadu_ps(hi_in + i);
    const __m256i valid = _mm256_castps_si256(_mm256_cmp_ps(lo0, hi0, _CMP_LE_OQ));
    // std::clamp(v, -limit, limit) of a finite v (or +-Inf where the group is not valid).
    const __m256 lo = _mm256_min_ps(_mm256_max_ps(lo0, nlim), lim);
    const __m256 hi = _mm256_min_ps(_mm256_max_ps(hi0, nlim), lim);
    // m = Bf16Down(lo): the nearest bf16, one step down when above (m - 1 if positive, m + 1 if
    // negative); then -0 as +0.
    __m256i m = RoundBf16(lo);
    const __m256i above = _mm256_castps_si256(_mm256_cmp_ps(Bf16Lanes(m), lo, _CMP_GT_OQ));
    const __m256i down =
        _mm256_sub_epi32(_mm256_add_epi32(m, _mm256_slli_epi32(_mm256_srli_epi32(m, 15), 1)), one);
    m = _mm256_blendv_epi8(m, down, above);
    m = _mm256_andnot_si256(_mm256_cmpeq_epi32(m, _mm256_set1_epi32(0x8000)), m);
    const __m256 mf = Bf16Lanes(m);
    const __m256 range = _mm256_sub_ps(hi, mf);
    const __m256 x = _mm256_blendv_ps(
        _mm256_mul_ps(range, inv_levels),
        _mm256_sub_ps(_mm256_mul_ps(hi, inv_levels), _mm256_mul_ps(mf, inv_levels)),
        _mm256_cmp_ps(range, inf, _CMP_EQ_OQ));
    // s = Bf16Up(x): the nearest bf16, one step up when below.
    const __m256i b = RoundBf16(x);
    __m256i s =
        _mm256_sub_epi32(b, _mm256_castps_si256(_mm256_cmp_ps(Bf16Lanes(b), x, _CMP_LT_OQ)));
    const __m256i positive =
        _mm256_castps_si256(_mm256_cmp_ps(range, _mm256_setzero_ps(), _CMP_GT_OQ));
    s = _mm256_and_si256(s, _mm256_and_si256(valid, positive));
    m = _mm256_and_si256(m, valid);
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(groups + 4 * i),
                        _mm256_or_si256(s, _mm256_slli_epi32(m, 16)));
    const __m256 sf = Bf16Lanes(s);
    _mm256_storeu_ps(m_out + i, Bf16Lanes(m));
    _mm256_storeu_ps(inv_out + i,
                     _mm256_and_ps(_mm256_div_ps(_mm256_set1_ps(1.0f), sf),
                                   _mm256_cmp_ps(sf, _mm256_setzero_ps(), _CMP_GT_OQ)));
  }
  for (; i < n; ++i) {
    const Group g = MakeGroup(lo_in[i], hi_in[i], levels);
    StoreGroup(groups + 4 * i, g);
    m_out[i] = Bf16ToFloat(g.min);
    inv_out[i] = Inverse(Bf16ToFloat(g.scale));
  }
}

// Codes of n consecutive elements at src, element i with minimum m[i] and inverse scale inv[i].
template <ElementType E>
KVTIER_AVX2 void QuantiseRun(const uint8_t* src, uint64_t n, const float* m, const float* inv,
                             float levels, uint8_t* out) {
  constexpr uint64_t kBytes = E == ElementType::kF32 ? 4 : 2;
  const __m256 lv = _mm256_set1_ps(levels);
  uint64_t c = 0;
  for (; c + 32 <= n; c += 32) {
    __m256i q[4];
    for (int k = 0; k < 4; ++k) {
      const uint64_t j = c + 8 * k;
      q[k] =
          Code8(Load8<E>(src + j * kBytes), _mm256_loadu_ps(m + j), _mm256_loadu_ps(inv + j), lv);
    }
    StoreBytes32(q[0], q[1], q[2], q[3], out + c);
  }
  for (; c + 8 <= n; c += 8) {
    StoreBytes8(
        Code8(Load8<E>(src + c * kBytes), _mm256_loadu_ps(m + c), _mm256_loadu_ps(inv + c), lv),
        out + c);
  }
  for (; c < n; ++c) out[c] = Quantise(LoadElement<E>(src + c * kBytes), m[c], inv[c], levels);
}

KVTIER_AVX2 inline float HorizontalMin(__m256 v) {
  __m128 x = _mm_min_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  x = _mm_min_ps(x, _mm_movehl_ps(x, x));
  x = _mm_min_ss(x, _mm_shuffle_ps(x, x, 1));
  return _mm_cvtss_f32(x);
}
KVTIER_AVX2 inline float HorizontalMax(__m256 v) {
  __m128 x = _mm_max_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  x = _mm_max_ps(x, _mm_movehl_ps(x, x));
  x = _mm_max_ss(x, _mm_shuffle_ps(x, x, 1));
  return _mm_cvtss_f32(x);
}

template <bool kMin>
KVTIER_AVX2 inline __m256 MinOrMax(__m256 a, __m256 b) {
  return kMin ? _mm256_min_ps(a, b) : _mm256_max_ps(a, b);
}
// Eight vectors at v (8 floats each, none NaN) to one: lane g the minimum (kMin) or maximum of
// vector g's lanes. Pairs interleaved, then quads, then the two 128-bit halves.
template <bool kMin>
KVTIER_AVX2 inline __m256 Reduce8x8(const float* v) {
  constexpr auto op = MinOrMax<kMin>;
  __m256 t[4];
  for (int i = 0; i < 4; ++i) {
    const __m256 a = _mm256_loadu_ps(v + 16 * i), b = _mm256_loadu_ps(v + 16 * i + 8);
    t[i] = op(_mm256_unpacklo_ps(a, b), _mm256_unpackhi_ps(a, b));  // per half: a b a b
  }
  const __m256 u0 = op(_mm256_shuffle_ps(t[0], t[1], _MM_SHUFFLE(1, 0, 1, 0)),
                       _mm256_shuffle_ps(t[0], t[1], _MM_SHUFFLE(3, 2, 3, 2)));  // 0 1 2 3 | ..
  const __m256 u1 = op(_mm256_shuffle_ps(t[2], t[3], _MM_SHUFFLE(1, 0, 1, 0)),
                       _mm256_shuffle_ps(t[2], t[3], _MM_SHUFFLE(3, 2, 3, 2)));  // 4 5 6 7 | ..
  return op(_mm256_permute2f128_ps(u0, u1, 0x20), _mm256_permute2f128_ps(u0, u1, 0x31));
}

// fp16 / bf16 minimum and maximum over finite values in the integer domain, 16 lanes: u = h ^
// (sign ? 0xffff : 0x8000) orders the values as unsigned integers (-0 just below +0, NaN beyond
// +-Inf); u - kKeyOffset wraps the non-finite codes at the low end above every finite one (a key
// for the minimum), u + kKeyOffset wraps those at the high end below every finite one (for the
// maximum). A minimum of zero may be -0 where the scalar loop met +0 first: MakeGroup makes both
// +0.
template <ElementType E>
constexpr uint16_t kKeyOffset = E == ElementType::kF16 ? 0x8000 - 0x7c00 : 0x8000 - 0x7f80;

template <ElementType E>
KVTIER_AVX2 inline void KeyMinMax16(const uint8_t* p, __m256i& lo, __m256i& hi) {
  const __m256i h = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p));
  const __m256i u = _mm256_xor_si256(
      h,
      _mm256_or_si256(_mm256_srai_epi16(h, 15), _mm256_set1_epi16(static_cast<int16_t>(0x8000))));
  lo = _mm256_min_epu16(lo, _mm256_sub_epi16(u, _mm256_set1_epi16(kKeyOffset<E>)));
  hi = _mm256_max_epu16(hi, _mm256_add_epi16(u, _mm256_set1_epi16(kKeyOffset<E>)));
}

// Eight keys of KeyMinMax16 back to floats: +Inf (minimum) or -Inf (maximum) where no value was
// finite.
template <ElementType E, bool kMin>
KVTIER_AVX2 inline __m256 KeysToFloats(__m128i key) {
  constexpr int16_t kOff = static_cast<int16_t>(kKeyOffset<E>);
  const __m128i u =
      kMin ? _mm_add_epi16(key, _mm_set1_epi16(kOff)) : _mm_sub_epi16(key, _mm_set1_epi16(kOff));
  // None finite: the minimum's key at or above 2^16 - 2 kOff, the maximum's below 2 kOff.
  const __m128i none =
      kMin ? _mm_cmpeq_epi16(_mm_max_epu16(key, _mm_set1_epi16(static_cast<int16_t>(-2 * kOff))),
                             key)
           : _mm_cmpeq_epi16(_mm_min_epu16(key, _mm_set1_epi16(static_cast<int16_t>(2 * kOff - 1))),
                             key);
  const __m128i h =
      _mm_xor_si128(u, _mm_or_si128(_mm_andnot_si128(_mm_srai_epi16(u, 15), _mm_set1_epi16(0x7fff)),
                                    _mm_set1_epi16(static_cast<int16_t>(0x8000))));
  __m256 f;
  if constexpr (E == ElementType::kF16) {
    f = _mm256_cvtph_ps(h);
  } else {
    f = _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(h), 16));
  }
  const float inf = std::numeric_limits<float>::infinity();
  return _mm256_blendv_ps(f, _mm256_set1_ps(kMin ? inf : -inf),
                          _mm256_castsi256_ps(_mm256_cvtepi16_epi32(none)));
}

// QuantiseSegment reading the raw elements; false (nothing written) where it has no fast path.
template <ElementType E>
KVTIER_AVX2 bool QuantiseSegmentAvx2(const uint8_t* raw, uint32_t tokens, uint64_t channels,
                                     SegmentRole role, uint32_t group_size, uint32_t levels,
                                     uint8_t* groups, uint8_t* codes) {
  constexpr uint64_t kBytes = E == ElementType::kF32 ? 4 : 2;
  constexpr float kInf = std::numeric_limits<float>::infinity();
  const float lv = static_cast<float>(levels);
  // The first pass over the segment also prefetches (into L2) the bytes one segment further on:
  // the next segment of the block, so that a block cold in DRAM streams in while this one is
  // computed (a prefetch never faults, past the block's end included).
  const uint64_t ahead = tokens * channels * kBytes;
  if (role == SegmentRole::kKey) {
    float* lo = FloatScratch(4 * channels);
    float* hi = lo + channels;
    float* m = hi + channels;
    float* inv = m + channels;
    for (uint32_t t0 = 0; t0 < tokens; t0 += group_size) {
      const uint32_t t1 = std::min(tokens, t0 + group_size);
      uint64_t c = 0;
      if constexpr (E != ElementType::kF32) {
        for (; c + 64 <= channels; c += 64) {  // two 64-byte lines per token
          __m256i l[4], h[4];
          for (int k = 0; k < 4; ++k) l[k] = _mm256_set1_epi16(-1), h[k] = _mm256_setzero_si256();
          for (uint32_t t = t0; t < t1; ++t) {
            const uint8_t* p = raw + (t * channels + c) * kBytes;
            _mm_prefetch(reinterpret_cast<const char*>(p + ahead), _MM_HINT_T1);
            _mm_prefetch(reinterpret_cast<const char*>(p + ahead + 64), _MM_HINT_T1);
            for (int k = 0; k < 4; ++k) KeyMinMax16<E>(p + 32 * k, l[k], h[k]);
          }
          for (int k = 0; k < 8; ++k) {
            const __m256i lk = l[k / 2], hk = h[k / 2];
            const __m128i lh = k % 2 ? _mm256_extracti128_si256(lk, 1) : _mm256_castsi256_si128(lk);
            const __m128i hh = k % 2 ? _mm256_extracti128_si256(hk, 1) : _mm256_castsi256_si128(hk);
            _mm256_storeu_ps(lo + c + 8 * k, KeysToFloats<E, true>(lh));
            _mm256_storeu_ps(hi + c + 8 * k, KeysToFloats<E, false>(hh));
          }
        }
      }
      for (; c + 32 <= channels; c += 32) {  // a 64-byte line of fp16 per token
        __m256 l[4], h[4];
        for (int k = 0; k < 4; ++k) l[k] = _mm256_set1_ps(kInf), h[k] = _mm256_set1_ps(-kInf);
        for (uint32_t t = t0; t < t1; ++t) {
          const uint8_t* p = raw + (t * channels + c) * kBytes;
          for (int k = 0; k < 4; ++k) MinMax8(Load8<E>(p + 8 * k * kBytes), l[k], h[k]);
        }
        for (int k = 0; k < 4; ++k) {
          _mm256_storeu_ps(lo + c + 8 * k, l[k]);
          _mm256_storeu_ps(hi + c + 8 * k, h[k]);
        }
      }
      for (; c + 8 <= channels; c += 8) {
        __m256 l = _mm256_set1_ps(kInf), h = _mm256_set1_ps(-kInf);
        for (uint32_t t = t0; t < t1; ++t)
          MinMax8(Load8<E>(raw + (t * channels + c) * kBytes), l, h);
        _mm256_storeu_ps(lo + c, l);
        _mm256_storeu_ps(hi + c, h);
      }
      for (; c < channels; ++c) {
        lo[c] = kInf;
        hi[c] = -kInf;
        for (uint32_t t = t0; t < t1; ++t) {
          AddFinite(LoadElement<E>(raw + (t * channels + c) * kBytes), lo[c], hi[c]);
        }
      }
      MakeGroups(lo, hi, channels, levels, groups + (t0 / group_size) * channels * 4, m, inv);
      for (uint32_t t = t0; t < t1; ++t) {
        QuantiseRun<E>(raw + t * channels * kBytes, channels, m, inv, lv, codes + t * channels);
      }
    }
    return true;
  }
  if (group_size < 8) return false;
  // V and latent, groups of group_size channels of a token: each row converted once to floats (in
  // L1), 8 lanes of minimum and maximum per whole group, reduced 8 groups at a time; a group that
  // met -Inf or +Inf (and a last, shorter group) redone by the scalar loop over finite values (NaN
  // never enters MINPS/MAXPS's result with the new value first); then the codes from the floats.
  const int shift = std::countr_zero(group_size);
  const uint64_t whole = channels >> shift;
  const uint64_t per_row = (channels + group_size - 1) >> shift;
  float* x = FloatScratch(channels + 16 * whole + 4 * per_row);
  float* lanes_lo = x + channels;
  float* lanes_hi = lanes_lo + 8 * whole;
  float* lo = lanes_hi + 8 * whole;
  float* hi = lo + per_row;
  float* m = hi + per_row;
  float* inv = m + per_row;
  const __m256 inf = _mm256_set1_ps(kInf), ninf = _mm256_set1_ps(-kInf);
  const __m256 lvv = _mm256_set1_ps(lv);
  for (uint32_t t = 0; t < tokens; ++t) {
    const uint8_t* row = raw + t * channels * kBytes;
    for (uint64_t g = 0; g < whole; ++g) {
      __m256 l = inf, h = ninf;
      for (uint64_t c = g << shift; c < (g + 1) << shift; c += 8) {
        // Interleaved with the loads (a burst per row streamed 8 % slower): for fp16 four
        // prefetches fall in one line, which costs less than the burst's stall.
        _mm_prefetch(reinterpret_cast<const char*>(row + c * kBytes + ahead), _MM_HINT_T1);
        const __m256 v = Load8<E>(row + c * kBytes);
        _mm256_storeu_ps(x + c, v);
        l = _mm256_min_ps(v, l);
        h = _mm256_max_ps(v, h);
      }
      _mm256_storeu_ps(lanes_lo + 8 * g, l);
      _mm256_storeu_ps(lanes_hi + 8 * g, h);
    }
    for (uint64_t c = whole << shift; c < channels; ++c) x[c] = LoadElement<E>(row + c * kBytes);
    uint64_t g = 0;
    for (; g + 8 <= whole; g += 8) {
      _mm256_storeu_ps(lo + g, Reduce8x8<true>(lanes_lo + 8 * g));
      _mm256_storeu_ps(hi + g, Reduce8x8<false>(lanes_hi + 8 * g));
    }
    for (; g < whole; ++g) {
      lo[g] = HorizontalMin(_mm256_loadu_ps(lanes_lo + 8 * g));
      hi[g] = HorizontalMax(_mm256_loadu_ps(lanes_hi + 8 * g));
    }
    for (g = 0; g < per_row; ++g) {
      if (g == whole || lo[g] == -kInf || hi[g] == kInf) {
        const uint64_t c0 = g << shift;
        FiniteMinMax(x + c0, std::min<uint64_t>(group_size, channels - c0), &lo[g], &hi[g]);
      }
    }
    uint8_t* group_out = groups + t * per_row * 4;
    MakeGroups(lo, hi, per_row, levels, group_out, m, inv);
    uint8_t* out = codes + t * channels;
    uint64_t c = 0;
    for (; c + 32 <= channels; c += 32) {
      __m256i q[4];
      for (int k = 0; k < 4; ++k) {
        const uint64_t j = c + 8 * k;
        q[k] = Code8(_mm256_loadu_ps(x + j), _mm256_broadcast_ss(m + (j >> shift)),
                     _mm256_broadcast_ss(inv + (j >> shift)), lvv);
      }
      StoreBytes32(q[0], q[1], q[2], q[3], out + c);
    }
    for (; c + 8 <= channels; c += 8) {
      StoreBytes8(Code8(_mm256_loadu_ps(x + c), _mm256_broadcast_ss(m + (c >> shift)),
                        _mm256_broadcast_ss(inv + (c >> shift)), lvv),
                  out + c);
    }
    for (; c < channels; ++c) out[c] = Quantise(x[c], m[c >> shift], inv[c >> shift], lv);
  }
  return true;
}

// kFinite: every m and s is finite, so m + q * s is never NaN.
template <ElementType E, bool kPerElement, bool kFinite>
KVTIER_AVX2 void DequantiseRun(const uint8_t* codes, uint64_t n, const float* m, const float* s,
                               uint8_t* dst) {
  constexpr uint64_t kBytes = E == ElementType::kF32 ? 4 : 2;
  const __m256 m1 = _mm256_set1_ps(m[0]), s1 = _mm256_set1_ps(s[0]);
  uint64_t c = 0;
  for (; c + 8 <= n; c += 8) {
    const __m256 mv = kPerElement ? _mm256_loadu_ps(m + c) : m1;
    const __m256 sv = kPerElement ? _mm256_loadu_ps(s + c) : s1;
    Store8<E, !kFinite>(_mm256_add_ps(mv, _mm256_mul_ps(LoadCodes8(codes + c), sv)),
                        dst + c * kBytes);
  }
  for (; c < n; ++c) {
    const float mc = kPerElement ? m[c] : m[0], sc = kPerElement ? s[c] : s[0];
    StoreElement<E>(mc + static_cast<float>(codes[c]) * sc, dst + c * kBytes);
  }
}

template <ElementType E>
KVTIER_AVX2 void DequantiseSegmentAvx2(const uint8_t* codes, const uint8_t* groups, uint32_t tokens,
                                       uint64_t channels, SegmentRole role, uint32_t group_size,
                                       uint8_t* raw) {
  constexpr uint64_t kBytes = E == ElementType::kF32 ? 4 : 2;
  if (role == SegmentRole::kKey) {
    float* m = FloatScratch(2 * channels);
    float* s = m + channels;
    for (uint32_t t0 = 0; t0 < tokens; t0 += group_size) {
      const uint32_t t1 = std::min(tokens, t0 + group_size);
      const uint8_t* gp = groups + (t0 / group_size) * channels * 4;
      uint32_t exponents = 0;  // a bf16 with all exponent bits set is Inf or NaN
      for (uint64_t c = 0; c < channels; ++c) {
        uint32_t g;
        std::memcpy(&g, gp + 4 * c, 4);
        s[c] = BitsToFloat(g << 16);
        m[c] = BitsToFloat(g & 0xffff0000u);
        exponents |= ((g & 0x7f800000u) == 0x7f800000u) | ((g & 0x7f80u) == 0x7f80u);
      }
      for (uint32_t t = t0; t < t1; ++t) {
        if (exponents == 0) {
          DequantiseRun<E, true, true>(codes + t * channels, channels, m, s,
                                       raw + t * channels * kBytes);
        } else {
          DequantiseRun<E, true, false>(codes + t * channels, channels, m, s,
                                        raw + t * channels * kBytes);
        }
      }
    }
    return;
  }
  const uint64_t per_row = (channels + group_size - 1) / group_size;
  for (uint32_t t = 0; t < tokens; ++t) {
    for (uint64_t c0 = 0, g = t * per_row; c0 < channels; c0 += group_size, ++g) {
      const uint64_t c1 = std::min<uint64_t>(channels, c0 + group_size);
      const Group gr = LoadGroup(groups + 4 * g);
      const float m = Bf16ToFloat(gr.min), s = Bf16ToFloat(gr.scale);
      if (Finite(m) && Finite(s)) {
        DequantiseRun<E, false, true>(codes + t * channels + c0, c1 - c0, &m, &s,
                                      raw + (t * channels + c0) * kBytes);
      } else {
        DequantiseRun<E, false, false>(codes + t * channels + c0, c1 - c0, &m, &s,
                                       raw + (t * channels + c0) * kBytes);
      }
    }
  }
}

KVTIER_AVX2 void PackInt4Avx2(const uint8_t* codes, uint64_t n, uint8_t* out) {
  uint64_t i = 0;  // pairs
  for (; 2 * i + 32 <= n; i += 16) {
    // 16-bit lanes lo | hi << 8, both < 16: lo | hi << 4 in the low byte.
    const __m256i w = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(codes + 2 * i));
    const __m256i b =
        _mm256_or_si256(_mm256_and_si256(w, _mm256_set1_epi16(0x0f)),
                        _mm256_and_si256(_mm256_srli_epi16(w, 4), _mm256_set1_epi16(0xf0)));
    _mm_storeu_si128(reinterpret_cast<__m128i*>(out + i),
                     _mm_packus_epi16(_mm256_castsi256_si128(b), _mm256_extracti128_si256(b, 1)));
  }
  PackInt4(codes + 2 * i, n - 2 * i, out + i);
}

KVTIER_AVX2 void UnpackInt4Avx2(const uint8_t* in, uint64_t n, uint8_t* codes) {
  uint64_t i = 0;  // bytes
  const __m128i low = _mm_set1_epi8(0x0f);
  for (; 2 * i + 32 <= n; i += 16) {
    const __m128i b = _mm_loadu_si128(reinterpret_cast<const __m128i*>(in + i));
    const __m128i lo = _mm_and_si128(b, low), hi = _mm_and_si128(_mm_srli_epi16(b, 4), low);
    _mm_storeu_si128(reinterpret_cast<__m128i*>(codes + 2 * i), _mm_unpacklo_epi8(lo, hi));
    _mm_storeu_si128(reinterpret_cast<__m128i*>(codes + 2 * i + 16), _mm_unpackhi_epi8(lo, hi));
  }
  UnpackInt4(in + i, n - 2 * i, codes + 2 * i);
}

// FloatToE4m3 of 8 lanes, as int32 in [0, 255].
KVTIER_AVX2 inline __m256i E4m3Of8(__m256 y) {
  const __m256i u = _mm256_castps_si256(y);
  const __m256i sign = _mm256_and_si256(_mm256_srli_epi32(u, 24), _mm256_set1_epi32(0x80));
  const __m256i a = _mm256_and_si256(u, _mm256_set1_epi32(0x7fffffff));
  const __m256i nan = _mm256_cmpgt_epi32(a, _mm256_set1_epi32(0x7f800000));
  const __m256i sub = _mm256_cmpgt_epi32(_mm256_set1_epi32(0x3c800000), a);
  // Below 2^-6: nearbyint(a * 512) (the current rounding mode, as std::nearbyint).
  const __m256i subv =
      _mm256_cvtps_epi32(_mm256_mul_ps(_mm256_castsi256_ps(a), _mm256_set1_ps(512.0f)));
  const __m256i odd = _mm256_and_si256(_mm256_srli_epi32(a, 20), _mm256_set1_epi32(1));
  // The rounded exponent and 3 mantissa bits, less the bias difference (127 - 7) << 3 folded into
  // the addition (lanes below 2^-6 wrap, and are subnormal lanes, replaced below).
  const __m256i r = _mm256_srli_epi32(
      _mm256_add_epi32(_mm256_add_epi32(a, _mm256_set1_epi32(0x7ffff - ((127 - 7) << 23))), odd),
      20);
  // At or above 448 (Inf included) the rounded code is beyond 0x7e: the minimum saturates it.
  __m256i o = _mm256_min_epi32(r, _mm256_set1_epi32(0x7e));
  o = _mm256_blendv_epi8(o, subv, sub);
  o = _mm256_blendv_epi8(o, _mm256_set1_epi32(0x7f), nan);
  return _mm256_or_si256(o, sign);
}

template <ElementType E>
KVTIER_AVX2 void EncodeFp8Avx2(const uint8_t* raw, uint64_t n, uint8_t* out) {
  constexpr uint64_t kBytes = E == ElementType::kF32 ? 4 : 2;
  const __m256 abs_mask = _mm256_castsi256_ps(_mm256_set1_epi32(0x7fffffff));
  const __m256 inf = _mm256_set1_ps(std::numeric_limits<float>::infinity());
  __m256 amax8 = _mm256_setzero_ps();
  uint64_t i = 0;
  if constexpr (E != ElementType::kF32) {
    // |h| + kKeyOffset as int16: finite magnitudes stay positive and ordered, the non-finite wrap
    // negative, out of a signed maximum.
    const __m256i off = _mm256_set1_epi16(static_cast<int16_t>(kKeyOffset<E>));
    __m256i key = off;
    for (; i + 16 <= n; i += 16) {
      const __m256i h = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(raw + i * kBytes));
      key = _mm256_max_epi16(key,
                             _mm256_add_epi16(_mm256_and_si256(h, _mm256_set1_epi16(0x7fff)), off));
    }
    // All lanes are positive: the maximum as the least of 0x7fff - key.
    const __m128i k8 =
        _mm_sub_epi16(_mm_set1_epi16(0x7fff),
                      _mm_max_epi16(_mm256_castsi256_si128(key), _mm256_extracti128_si256(key, 1)));
    const uint16_t top = static_cast<uint16_t>(
        0x7fff - (_mm_cvtsi128_si32(_mm_minpos_epu16(k8)) & 0xffff) - kKeyOffset<E>);
    uint8_t bytes[2];
    std::memcpy(bytes, &top, 2);
    amax8 = _mm256_set1_ps(LoadElement<E>(bytes));
  }
  for (; i + 8 <= n; i += 8) {
    const __m256 a = _mm256_and_ps(Load8<E>(raw + i * kBytes), abs_mask);
    amax8 = _mm256_max_ps(_mm256_and_ps(a, _mm256_cmp_ps(a, inf, _CMP_LT_OQ)), amax8);
  }
  float amax = HorizontalMax(amax8);
  for (; i < n; ++i) {
    const float a = Fp8Magnitude(LoadElement<E>(raw + i * kBytes));
    amax = a > amax ? a : amax;
  }
  const float scale = Fp8Scale(amax);
  std::memcpy(out, &scale, 4);
  const float inv = 1.0f / scale;
  const __m256 inv8 = _mm256_set1_ps(inv);
  uint8_t* q = out + 4;
  i = 0;
  for (; i + 32 <= n; i += 32) {
    __m256i c[4];
    for (int k = 0; k < 4; ++k) {
      c[k] = E4m3Of8(_mm256_mul_ps(Load8<E>(raw + (i + 8 * k) * kBytes), inv8));
    }
    StoreBytes32(c[0], c[1], c[2], c[3], q + i);
  }
  for (; i + 8 <= n; i += 8)
    StoreBytes8(E4m3Of8(_mm256_mul_ps(Load8<E>(raw + i * kBytes), inv8)), q + i);
  for (; i < n; ++i) q[i] = FloatToE4m3(LoadElement<E>(raw + i * kBytes) * inv);
}

template <ElementType E>
KVTIER_AVX2 void DecodeFp8Avx2(const uint8_t* in, uint64_t n, uint8_t* raw) {
  constexpr uint64_t kBytes = E == ElementType::kF32 ? 4 : 2;
  float scale;
  std::memcpy(&scale, in, 4);
  const __m256 scale8 = _mm256_set1_ps(scale);
  const uint8_t* q = in + 4;
  // The e4m3 bits shifted into an fp16 (sign | e << 10 | m << 7) are the value times 2^-8 exactly,
  // subnormals included (fp16's start at 2^-24); times 2^8 and the scale as the table's product.
  // NaN codes become fp16's NaN of zero payload, as the table's quiet NaN; a non-NaN scale keeps
  // every NaN of zero payload (see Store8).
  const bool nan_scale = !(scale == scale);
  const __m256 k256 = _mm256_set1_ps(256.0f);
  uint64_t i = 0;
  for (; i + 16 <= n; i += 16) {
    const __m256i v =
        _mm256_cvtepu8_epi16(_mm_loadu_si128(reinterpret_cast<const __m128i*>(q + i)));
    const __m256i em = _mm256_and_si256(v, _mm256_set1_epi16(0x7f));
    __m256i h = _mm256_or_si256(
        _mm256_slli_epi16(em, 7),
        _mm256_and_si256(_mm256_slli_epi16(v, 8), _mm256_set1_epi16(static_cast<int16_t>(0x8000))));
    h = _mm256_blendv_epi8(h, _mm256_set1_epi16(0x7e00),
                           _mm256_cmpeq_epi16(em, _mm256_set1_epi16(0x7f)));
    const __m256 f0 =
        _mm256_mul_ps(_mm256_mul_ps(_mm256_cvtph_ps(_mm256_castsi256_si128(h)), k256), scale8);
    const __m256 f1 =
        _mm256_mul_ps(_mm256_mul_ps(_mm256_cvtph_ps(_mm256_extracti128_si256(h, 1)), k256), scale8);
    if (nan_scale) {
      Store8<E>(f0, raw + i * kBytes);
      Store8<E>(f1, raw + (i + 8) * kBytes);
    } else {
      Store8<E, false>(f0, raw + i * kBytes);
      Store8<E, false>(f1, raw + (i + 8) * kBytes);
    }
  }
  const auto& table = E4m3Table();
  for (; i < n; ++i) StoreElement<E>(table[q[i]] * scale, raw + i * kBytes);
}

template <ElementType E>
KVTIER_AVX2 bool EncodeSegmentAvx2(const CodecConfig& config, const BlockCodec::SegmentShape& shape,
                                   const uint8_t* raw, uint8_t* out) {
  const uint64_t n = shape.tokens * shape.channels;
  if (config.id == CodecId::kFp8E4m3) {
    EncodeFp8Avx2<E>(raw, n, out);
    return true;
  }
  const uint32_t levels = config.id == CodecId::kInt8 ? 255 : 15;
  const uint64_t group_bytes =
      GroupCount(shape.role, shape.tokens, shape.channels, config.group_size) * 4;
  if (config.id == CodecId::kInt8) {
    return QuantiseSegmentAvx2<E>(raw, shape.tokens, shape.channels, shape.role, config.group_size,
                                  levels, out, out + group_bytes);
  }
  uint8_t* codes = CodeScratch(n);
  if (!QuantiseSegmentAvx2<E>(raw, shape.tokens, shape.channels, shape.role, config.group_size,
                              levels, out, codes)) {
    return false;
  }
  PackInt4Avx2(codes, n, out + group_bytes);
  return true;
}

template <ElementType E>
KVTIER_AVX2 void DecodeSegmentAvx2(const CodecConfig& config, const BlockCodec::SegmentShape& shape,
                                   const uint8_t* in, uint8_t* raw) {
  const uint64_t n = shape.tokens * shape.channels;
  if (config.id == CodecId::kFp8E4m3) return DecodeFp8Avx2<E>(in, n, raw);
  const uint64_t group_bytes =
      GroupCount(shape.role, shape.tokens, shape.channels, config.group_size) * 4;
  const uint8_t* codes = in + group_bytes;
  if (config.id == CodecId::kInt4) {
    uint8_t* unpacked = CodeScratch(n);
    UnpackInt4Avx2(codes, n, unpacked);
    codes = unpacked;
  }
  DequantiseSegmentAvx2<E>(codes, in, shape.tokens, shape.channels, shape.role, config.group_size,
                           raw);
}

bool HasAvx2() {
  // F16C through CPUID.1:ECX bit 29 (clang's __builtin_cpu_supports lacks "f16c"); the "avx2"
  // check includes the OS's saving of the AVX state, which F16C needs too.
  static const bool has = [] {
    unsigned eax = 0, ebx = 0, ecx = 0, edx = 0;
    return __builtin_cpu_supports("avx2") && __get_cpuid(1, &eax, &ebx, &ecx, &edx) != 0 &&
           (ecx & (1u << 29)) != 0;
  }();
  return has;
}
#else
bool HasAvx2() { return false; }
#endif  // __x86_64__

codec_math::CodecParams ParamsOf(const CodecConfig& c) {
  return {.codec = static_cast<uint8_t>(c.id),
          .element = static_cast<uint8_t>(c.element),
          .group_size = c.group_size};
}
codec_math::CodecSegmentJob JobOf(const BlockCodec::SegmentShape& s, const uint8_t* in,
                                  uint8_t* out) {
  return {.src = in,
          .dst = out,
          .channels = s.channels,
          .tokens = s.tokens,
          .key = static_cast<uint8_t>(s.role == SegmentRole::kKey ? 1 : 0)};
}

void EncodeAny(CodecKernel kernel, const CodecConfig& c, const BlockCodec::SegmentShape& s,
               const uint8_t* raw, uint8_t* out) {
  if (kernel == CodecKernel::kItems) {
    return codec_math::EncodeSegmentItems(ParamsOf(c), JobOf(s, raw, out));
  }
#if defined(__x86_64__)
  if (kernel == CodecKernel::kAvx2 && HasAvx2()) {
    bool done = false;
    switch (c.element) {
      case ElementType::kF16:
        done = EncodeSegmentAvx2<ElementType::kF16>(c, s, raw, out);
        break;
      case ElementType::kBf16:
        done = EncodeSegmentAvx2<ElementType::kBf16>(c, s, raw, out);
        break;
      case ElementType::kF32:
        done = EncodeSegmentAvx2<ElementType::kF32>(c, s, raw, out);
        break;
    }
    if (done) return;
  }
#else
  (void)kernel;
#endif
  switch (c.element) {
    case ElementType::kF16:
      return EncodeSegment<ElementType::kF16>(c, s, raw, out);
    case ElementType::kBf16:
      return EncodeSegment<ElementType::kBf16>(c, s, raw, out);
    case ElementType::kF32:
      return EncodeSegment<ElementType::kF32>(c, s, raw, out);
  }
}

void DecodeAny(CodecKernel kernel, const CodecConfig& c, const BlockCodec::SegmentShape& s,
               const uint8_t* in, uint8_t* raw) {
  if (kernel == CodecKernel::kItems) {
    return codec_math::DecodeSegmentItems(ParamsOf(c), JobOf(s, in, raw));
  }
#if defined(__x86_64__)
  if (kernel == CodecKernel::kAvx2 && HasAvx2()) {
    switch (c.element) {
      case ElementType::kF16:
        return DecodeSegmentAvx2<ElementType::kF16>(c, s, in, raw);
      case ElementType::kBf16:
        return DecodeSegmentAvx2<ElementType::kBf16>(c, s, in, raw);
      case ElementType::kF32:
        return DecodeSegmentAvx2<ElementType::kF32>(c, s, in, raw);
    }
  }
#else
  (void)kernel;
#endif
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

bool CodecKernelSupported(CodecKernel kernel) {
  return kernel == CodecKernel::kScalar || kernel == CodecKernel::kItems ||
         (kernel == CodecKernel::kAvx2 && HasAvx2());
}

CodecKernel DefaultCodecKernel() { return HasAvx2() ? CodecKernel::kAvx2 : CodecKernel::kScalar; }

const char* CodecKernelName(CodecKernel kernel) {
  switch (kernel) {
    case CodecKernel::kAvx2:
      return "avx2";
    case CodecKernel::kItems:
      return "items";
    case CodecKernel::kScalar:
      break;
  }
  return "scalar";
}

// The CPU codec's configuration and shape of a job, for EncodeAny (which runs the kernel asked).
namespace {
std::pair<CodecConfig, BlockCodec::SegmentShape> ConfigOf(const codec_math::CodecParams& p,
                                                          const codec_math::CodecSegmentJob& j) {
  return {CodecConfig{.id = static_cast<CodecId>(p.codec),
                      .group_size = p.group_size,
                      .element = static_cast<ElementType>(p.element)},
          BlockCodec::SegmentShape{.tokens = j.tokens,
                                   .channels = j.channels,
                                   .role = j.key ? SegmentRole::kKey : SegmentRole::kValue}};
}
}  // namespace

void EncodeSegmentJob(const codec_math::CodecParams& params, const codec_math::CodecSegmentJob& job,
                      CodecKernel kernel) {
  const auto [config, shape] = ConfigOf(params, job);
  EncodeAny(kernel, config, shape, static_cast<const uint8_t*>(job.src),
            static_cast<uint8_t*>(job.dst));
}

void DecodeSegmentJob(const codec_math::CodecParams& params, const codec_math::CodecSegmentJob& job,
                      CodecKernel kernel) {
  const auto [config, shape] = ConfigOf(params, job);
  DecodeAny(kernel, config, shape, static_cast<const uint8_t*>(job.src),
            static_cast<uint8_t*>(job.dst));
}

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

void BlockCodec::EncodeLayer(uint32_t layer, const void* raw_layer, void* encoded_layer,
                             CodecKernel kernel) const {
  const auto* in = static_cast<const uint8_t*>(raw_layer);
  auto* out = static_cast<uint8_t*>(encoded_layer);
  const uint32_t element = ElementBytes(config_.element);
  for (const SegmentShape& s : layers_[layer].segments) {
    EncodeAny(kernel, config_, s, in, out);
    in += s.tokens * s.channels * element;
    out += s.encoded_bytes;
  }
}

codec_math::CodecParams BlockCodec::params() const { return ParamsOf(config_); }

void BlockCodec::AppendLayerJobs(uint32_t layer, absl::FunctionRef<void*(size_t)> raw,
                                 void* encoded_layer, bool encode,
                                 std::vector<codec_math::CodecSegmentJob>* out) const {
  auto* enc = static_cast<uint8_t*>(encoded_layer);
  const std::vector<SegmentShape>& segments = layers_[layer].segments;
  for (size_t s = 0; s < segments.size(); ++s) {
    const SegmentShape& shape = segments[s];
    auto* raw_segment = static_cast<uint8_t*>(raw(s));
    out->push_back(encode ? JobOf(shape, raw_segment, enc) : JobOf(shape, enc, raw_segment));
    enc += shape.encoded_bytes;
  }
}

void BlockCodec::DecodeLayer(uint32_t layer, const void* encoded_layer, void* raw_layer,
                             CodecKernel kernel) const {
  const auto* in = static_cast<const uint8_t*>(encoded_layer);
  auto* out = static_cast<uint8_t*>(raw_layer);
  const uint32_t element = ElementBytes(config_.element);
  for (const SegmentShape& s : layers_[layer].segments) {
    DecodeAny(kernel, config_, s, in, out);
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

void BlockCodec::Encode(const void* raw, void* encoded, CodecKernel kernel) const {
  auto* out = static_cast<uint8_t*>(encoded);
  EncodeHeader(out);
  const auto* in = static_cast<const uint8_t*>(raw);
  for (uint32_t l = 0; l < num_layers(); ++l) {
    EncodeLayer(l, in + layer_raw_[l], out + layer_encoded_[l], kernel);
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

absl::Status BlockCodec::Decode(const void* encoded, void* raw, CodecKernel kernel) const {
  if (absl::Status s = CheckHeader(encoded); !s.ok()) return s;
  const auto* in = static_cast<const uint8_t*>(encoded);
  auto* out = static_cast<uint8_t*>(raw);
  for (uint32_t l = 0; l < num_layers(); ++l) {
    DecodeLayer(l, in + layer_encoded_[l], out + layer_raw_[l], kernel);
  }
  return absl::OkStatus();
}

}  // namespace kvtier::internal
