// The codecs' arithmetic, one copy for the CPU and the GPU: the element conversions and the
// quantisation steps of lib/codec/codec.h's formats, compiled by the C++ compiler for the CPU codec
// (codec.cc's scalar kernel, which the AVX2 kernel is tested against) and by nvcc for the CUDA
// codec kernels (cuda/codec_kernels.cu), so a block encoded on either decodes alike on the other.
//
// Every float step is one IEEE operation rounded to nearest even, in the order written: on the GPU
// through __fmul_rn and friends (never contracted into an FMA, whatever -fmad says), on the CPU as
// plain operators (x86-64's baseline has no FMA; codec_test.cc compares the kernels). No step
// depends on a NaN's payload or sign after arithmetic (GPUs make every NaN canonical): a NaN input
// is recognised by its bits before any arithmetic touches it.
//
// Below the element math: one segment's encode and decode as work items (a group's scales, an
// output byte), which a GPU kernel runs one per thread and EncodeSegmentItems / DecodeSegmentItems
// run in a loop on the CPU, in the same order of phases: every group (or an fp8 segment's scale)
// first, then every byte. Self-contained: no Abseil, no std library code that nvcc cannot run.
#ifndef KVTIER_LIB_CODEC_CODEC_MATH_H_
#define KVTIER_LIB_CODEC_CODEC_MATH_H_

#include <cstdint>
#include <cstring>

#if defined(__CUDACC__)
#define KVTIER_HD __host__ __device__
#else
#define KVTIER_HD
#endif

namespace kvtier::internal::codec_math {

// The values of lib/codec/codec.h's CodecId and ElementType (codec.cc static_asserts them).
inline constexpr uint8_t kCodecFp8E4m3 = 1, kCodecInt8 = 2, kCodecInt4 = 3;
inline constexpr uint8_t kElementF16 = 1, kElementBf16 = 2, kElementF32 = 3;
inline constexpr uint32_t kBf16MaxBits = 0x7f7f;  // largest finite bf16, 3.3895e38
inline constexpr uint32_t kQuietNaNBits = 0x7fc00000u;

// ---- IEEE steps ----

KVTIER_HD inline float BitsToFloat(uint32_t u) {
#if defined(__CUDA_ARCH__)
  return __uint_as_float(u);
#else
  float f;
  std::memcpy(&f, &u, 4);
  return f;
#endif
}
KVTIER_HD inline uint32_t FloatToBits(float f) {
#if defined(__CUDA_ARCH__)
  return __float_as_uint(f);
#else
  uint32_t u;
  std::memcpy(&u, &f, 4);
  return u;
#endif
}
KVTIER_HD inline float Add(float a, float b) {
#if defined(__CUDA_ARCH__)
  return __fadd_rn(a, b);
#else
  return a + b;
#endif
}
KVTIER_HD inline float Sub(float a, float b) {
#if defined(__CUDA_ARCH__)
  return __fsub_rn(a, b);
#else
  return a - b;
#endif
}
KVTIER_HD inline float Mul(float a, float b) {
#if defined(__CUDA_ARCH__)
  return __fmul_rn(a, b);
#else
  return a * b;
#endif
}
KVTIER_HD inline float Div(float a, float b) {
#if defined(__CUDA_ARCH__)
  return __fdiv_rn(a, b);
#else
  return a / b;
#endif
}
KVTIER_HD inline float Infinity() { return BitsToFloat(0x7f800000u); }
KVTIER_HD inline bool Finite(float x) { return (FloatToBits(x) & 0x7f800000u) != 0x7f800000u; }
// To nearest even for 0 <= v < 2^23, where v + 2^23 has an ulp of 1 (as VCVTPS2DQ and nearbyint).
KVTIER_HD inline float RoundSmall(float v) { return Sub(Add(v, 0x1p23f), 0x1p23f); }

// ---- element conversions (branch-free, so that the CPU loops over them vectorise) ----

KVTIER_HD inline float HalfToFloat(uint16_t h) {
  const uint32_t sign = static_cast<uint32_t>(h & 0x8000) << 16;
  const uint32_t em = h & 0x7fffu;
  // em << 13 read as a float is the value times 2^-112 (normals and subnormals alike).
  uint32_t bits = FloatToBits(Mul(BitsToFloat(em << 13), 0x1p112f));
  bits |= em >= 0x7c00 ? 0x7f800000u : 0u;  // Inf and NaN keep their mantissa
  return BitsToFloat(bits | sign);
}

// Round to nearest even (F. Giesen's float_to_half_fast3_rtne); NaN -> 0x7e00 | sign.
KVTIER_HD inline uint16_t FloatToHalf(float f) {
  constexpr uint32_t kInf = 255u << 23, kHalfMax = (127u + 16) << 23;
  constexpr uint32_t kDenormMagic = ((127u - 15) + (23 - 10) + 1) << 23;
  uint32_t u = FloatToBits(f);
  const uint32_t sign = u & 0x80000000u;
  u ^= sign;
  const uint32_t big = u > kInf ? 0x7e00u : 0x7c00u;
  // Used only for u < 2^-14, where the sum is finite (no NaN is made here).
  const uint32_t sub = FloatToBits(Add(BitsToFloat(u), BitsToFloat(kDenormMagic))) - kDenormMagic;
  const uint32_t normal = (u + ((15u - 127) << 23) + 0xfff + ((u >> 13) & 1)) >> 13;
  const uint32_t o = u >= kHalfMax ? big : (u < (113u << 23) ? sub : normal);
  return static_cast<uint16_t>(o | (sign >> 16));
}

KVTIER_HD inline float Bf16ToFloat(uint16_t h) {
  return BitsToFloat(static_cast<uint32_t>(h) << 16);
}

// Round to nearest even; NaN keeps its upper bits, made quiet.
KVTIER_HD inline uint16_t FloatToBf16(float f) {
  const uint32_t u = FloatToBits(f);
  const bool nan = (u & 0x7fffffffu) > 0x7f800000u;
  const uint32_t r = (u + 0x7fffu + ((u >> 16) & 1)) >> 16;
  return static_cast<uint16_t>(nan ? ((u >> 16) | 0x40u) : r);
}

// bf16 at or below / at or above a finite float `x` (|x| <= bf16 max): the nearest bf16, one step
// toward -Inf / +Inf where it lies on the wrong side. Bf16Up is used for x > 0 only.
KVTIER_HD inline uint16_t Bf16Down(float x) {
  const uint16_t b = FloatToBf16(x);
  if (!(Bf16ToFloat(b) > x)) return b;
  // b > x: b is not +0 (x < 0 rounds to a negative bf16).
  return static_cast<uint16_t>((b & 0x8000) ? b + 1 : b - 1);
}
KVTIER_HD inline uint16_t Bf16Up(float x) {
  const uint16_t b = FloatToBf16(x);
  return static_cast<uint16_t>(Bf16ToFloat(b) < x ? b + 1 : b);
}

KVTIER_HD inline uint16_t LoadU16(const uint8_t* p) {
  return static_cast<uint16_t>(p[0] | (p[1] << 8));
}
KVTIER_HD inline void StoreU16(uint8_t* p, uint16_t v) {
  p[0] = static_cast<uint8_t>(v);
  p[1] = static_cast<uint8_t>(v >> 8);
}
KVTIER_HD inline uint32_t LoadU32(const uint8_t* p) {
  return static_cast<uint32_t>(p[0]) | (static_cast<uint32_t>(p[1]) << 8) |
         (static_cast<uint32_t>(p[2]) << 16) | (static_cast<uint32_t>(p[3]) << 24);
}
KVTIER_HD inline void StoreU32(uint8_t* p, uint32_t v) {
  for (int i = 0; i < 4; ++i) p[i] = static_cast<uint8_t>(v >> (8 * i));
}

// Element i of a [tokens][channels] run of `element`s, little-endian, any alignment.
KVTIER_HD inline float LoadElement(const uint8_t* base, uint64_t i, uint8_t element) {
  if (element == kElementF32) return BitsToFloat(LoadU32(base + 4 * i));
  const uint16_t h = LoadU16(base + 2 * i);
  return element == kElementF16 ? HalfToFloat(h) : Bf16ToFloat(h);
}
KVTIER_HD inline void StoreElement(float f, uint8_t* base, uint64_t i, uint8_t element) {
  if (element == kElementF32) {
    StoreU32(base + 4 * i, FloatToBits(f));
  } else {
    StoreU16(base + 2 * i, element == kElementF16 ? FloatToHalf(f) : FloatToBf16(f));
  }
}

// ---- int8 / int4 ----

struct Group {
  uint16_t scale;  // bf16
  uint16_t min;    // bf16
};

// One value into a group's minimum and maximum over its finite values (lo starts at +Inf, hi at
// -Inf; +-Inf and NaN are left out, so a group of none keeps lo > hi).
KVTIER_HD inline void AddFinite(float v, float& lo, float& hi) {
  const bool f = Finite(v);
  const float a = f ? v : Infinity(), b = f ? v : -Infinity();
  lo = a < lo ? a : lo;
  hi = b > hi ? b : hi;
}

// (s, m) of a group whose finite values span [lo, hi] (lo > hi: none finite): m is the bf16 at or
// below lo (+0 for a zero minimum of either sign); s the bf16 at or above (hi - m) / levels, taken
// as (hi - m) * (1 / levels) rounded to float (hi * (1 / levels) - m * (1 / levels) where hi - m
// overflows float). So s * levels >= hi - m up to float rounding: the codes of [m, hi] stay within
// [0, levels].
KVTIER_HD inline Group MakeGroup(float lo, float hi, uint32_t levels) {
  if (!(lo <= hi)) return {0, 0};
  const float limit = Bf16ToFloat(kBf16MaxBits);
  lo = lo < -limit ? -limit : (lo > limit ? limit : lo);
  hi = hi < -limit ? -limit : (hi > limit ? limit : hi);
  uint16_t m = Bf16Down(lo);
  if (m == 0x8000) m = 0;
  const float mf = Bf16ToFloat(m);
  const float inv_levels = Div(1.0f, static_cast<float>(levels));
  const float range = Sub(hi, mf);
  const float x =
      range == Infinity() ? Sub(Mul(hi, inv_levels), Mul(mf, inv_levels)) : Mul(range, inv_levels);
  return {range > 0 ? Bf16Up(x) : uint16_t{0}, m};
}

KVTIER_HD inline void StoreGroup(uint8_t* p, Group g) {
  StoreU16(p, g.scale);
  StoreU16(p + 2, g.min);
}
KVTIER_HD inline Group LoadGroup(const uint8_t* p) { return {LoadU16(p), LoadU16(p + 2)}; }

// The code of x in a group of minimum m and inverse scale inv: (x - m) * inv clamped to
// [0, levels] (NaN to 0), rounded to nearest even.
KVTIER_HD inline uint8_t Quantise(float x, float m, float inv, float levels) {
  float v = Mul(Sub(x, m), inv);
  v = v > 0.0f ? v : 0.0f;  // NaN -> 0
  v = v < levels ? v : levels;
  return static_cast<uint8_t>(RoundSmall(v));
}

KVTIER_HD inline float Inverse(float s) { return s > 0 ? Div(1.0f, s) : 0.0f; }

// m + q * s.
KVTIER_HD inline float Dequantise(uint8_t q, float m, float s) {
  return Add(m, Mul(static_cast<float>(q), s));
}

// ---- fp8 e4m3fn ----

// Finite |x|, 0 for Inf and NaN: what the segment's amax is taken over.
KVTIER_HD inline float Fp8Magnitude(float x) {
  return Finite(x) ? BitsToFloat(FloatToBits(x) & 0x7fffffffu) : 0.0f;
}
KVTIER_HD inline float Fp8Scale(float amax) { return amax > 0 ? Div(amax, 448.0f) : 1.0f; }

// Round to nearest even, saturating at +-448 (Inf too); NaN -> 0x7f | sign.
KVTIER_HD inline uint8_t FloatToE4m3(float f) {
  const uint32_t u = FloatToBits(f);
  const auto sign = static_cast<uint8_t>((u >> 24) & 0x80);
  const uint32_t a = u & 0x7fffffffu;
  if (a > 0x7f800000u) return sign | 0x7f;   // NaN
  if (a >= 0x43e00000u) return sign | 0x7e;  // >= 448 (and Inf): saturate
  if (a < 0x3c800000u) {                     // below 2^-6: subnormal, m * 2^-9 (8 = 2^-6)
    return sign | static_cast<uint8_t>(RoundSmall(Mul(BitsToFloat(a), 512.0f)));
  }
  const uint32_t r = (a + 0x7ffffu + ((a >> 20) & 1)) >> 20;  // exponent and 3 mantissa bits
  const uint32_t o = r - ((127u - 7) << 3);
  return sign | static_cast<uint8_t>(o < 0x7eu ? o : 0x7eu);
}

// x * inv as e4m3; a NaN x keeps its sign (decided before the product, which a GPU would make a
// canonical NaN).
KVTIER_HD inline uint8_t EncodeFp8(float x, float inv) {
  if ((FloatToBits(x) & 0x7fffffffu) > 0x7f800000u) {
    return static_cast<uint8_t>(((FloatToBits(x) >> 24) & 0x80) | 0x7f);
  }
  return FloatToE4m3(Mul(x, inv));
}

// The exact value of an e4m3fn byte; both NaN codes give the positive quiet NaN.
KVTIER_HD inline float E4m3ToFloat(uint8_t v) {
  const uint32_t sign = static_cast<uint32_t>(v & 0x80) << 24;
  const uint32_t e = (v >> 3) & 0xf, m = v & 7;
  if (e == 0xf && m == 7) return BitsToFloat(kQuietNaNBits);
  if (e == 0) return BitsToFloat(FloatToBits(Mul(static_cast<float>(m), 0x1p-9f)) | sign);
  return BitsToFloat(sign | ((e + 127 - 7) << 23) | (m << 20));
}

// e4m3 * scale; a NaN code decodes to the positive quiet NaN, whatever the scale.
KVTIER_HD inline float DecodeFp8(uint8_t q, float scale) {
  const float v = E4m3ToFloat(q);
  return Finite(v) ? Mul(v, scale) : v;
}

// ---- one segment as work items ----

struct CodecParams {
  uint8_t codec = 0;    // kCodec*
  uint8_t element = 0;  // kElement*
  uint32_t group_size = 0;
};

// One segment of one block: `tokens` x `channels` elements, [token][channel]. Encoding: `src` the
// raw elements, `dst` the segment's encoded bytes; decoding the other way round.
struct CodecSegmentJob {
  const void* src = nullptr;
  void* dst = nullptr;
  uint64_t channels = 0;
  uint32_t tokens = 0;
  uint8_t key = 0;  // 1: groups per channel (K); 0: per token (V, latent)
};

KVTIER_HD inline uint64_t Elements(const CodecSegmentJob& j) { return j.tokens * j.channels; }
KVTIER_HD inline uint32_t Levels(const CodecParams& p) { return p.codec == kCodecInt8 ? 255 : 15; }

// int8/int4: the segment's groups, and the group of element (t, c).
KVTIER_HD inline uint64_t GroupCount(const CodecParams& p, const CodecSegmentJob& j) {
  const uint64_t g = p.group_size;
  if (j.key) return ((j.tokens + g - 1) / g) * j.channels;
  return j.tokens * ((j.channels + g - 1) / g);
}
KVTIER_HD inline uint64_t GroupOf(const CodecParams& p, const CodecSegmentJob& j, uint64_t t,
                                  uint64_t c) {
  if (j.key) return (t / p.group_size) * j.channels + c;
  return t * ((j.channels + p.group_size - 1) / p.group_size) + c / p.group_size;
}

// Bytes after the groups (int) or the scale (fp8): the codes.
KVTIER_HD inline uint64_t CodeBytes(const CodecParams& p, const CodecSegmentJob& j) {
  return p.codec == kCodecInt4 ? (Elements(j) + 1) / 2 : Elements(j);
}
// Offset of the codes in the encoded segment.
KVTIER_HD inline uint64_t CodesOffset(const CodecParams& p, const CodecSegmentJob& j) {
  return p.codec == kCodecFp8E4m3 ? 4 : GroupCount(p, j) * 4;
}

// Bytes of the segment's encoded form: groups or scale, then codes.
KVTIER_HD inline uint64_t EncodedBytes(const CodecParams& p, const CodecSegmentJob& j) {
  return CodesOffset(p, j) + CodeBytes(p, j);
}

// Encode, int8/int4, phase 1: group g's (s, m), from its finite minimum and maximum.
KVTIER_HD inline void EncodeGroup(const CodecParams& p, const CodecSegmentJob& j, uint64_t g) {
  const auto* x = static_cast<const uint8_t*>(j.src);
  float lo = Infinity(), hi = -Infinity();
  uint64_t first, count, step;
  if (j.key) {  // group_size tokens of one channel
    const uint64_t t0 = (g / j.channels) * p.group_size;
    const uint64_t t1 = t0 + p.group_size < j.tokens ? t0 + p.group_size : j.tokens;
    first = t0 * j.channels + g % j.channels;
    count = t1 - t0;
    step = j.channels;
  } else {  // group_size channels of one token
    const uint64_t per_row = (j.channels + p.group_size - 1) / p.group_size;
    const uint64_t c0 = (g % per_row) * p.group_size;
    const uint64_t c1 = c0 + p.group_size < j.channels ? c0 + p.group_size : j.channels;
    first = (g / per_row) * j.channels + c0;
    count = c1 - c0;
    step = 1;
  }
  for (uint64_t k = 0; k < count; ++k)
    AddFinite(LoadElement(x, first + k * step, p.element), lo, hi);
  StoreGroup(static_cast<uint8_t*>(j.dst) + 4 * g, MakeGroup(lo, hi, Levels(p)));
}

// Encode, int8/int4, phase 2: code byte b (int4: elements 2b and 2b + 1), from the groups phase 1
// wrote.
KVTIER_HD inline void EncodeCodeByte(const CodecParams& p, const CodecSegmentJob& j, uint64_t b) {
  const auto* x = static_cast<const uint8_t*>(j.src);
  auto* out = static_cast<uint8_t*>(j.dst);
  const uint64_t n = Elements(j);
  const int per_byte = p.codec == kCodecInt4 ? 2 : 1;
  const float levels = static_cast<float>(Levels(p));
  uint32_t byte = 0;
  for (int k = 0; k < per_byte; ++k) {
    const uint64_t e = b * per_byte + k;
    if (e >= n) break;
    const Group g = LoadGroup(out + 4 * GroupOf(p, j, e / j.channels, e % j.channels));
    const uint8_t q = Quantise(LoadElement(x, e, p.element), Bf16ToFloat(g.min),
                               Inverse(Bf16ToFloat(g.scale)), levels);
    byte |= static_cast<uint32_t>(q) << (4 * k);
  }
  out[CodesOffset(p, j) + b] = static_cast<uint8_t>(byte);
}

// Encode, fp8, phase 1 is the segment's amax (a reduction: Fp8Magnitude of every element), then
// Fp8Scale; phase 2 element i.
KVTIER_HD inline void EncodeFp8Element(const CodecParams& p, const CodecSegmentJob& j, uint64_t i,
                                       float inv) {
  const float x = LoadElement(static_cast<const uint8_t*>(j.src), i, p.element);
  static_cast<uint8_t*>(j.dst)[4 + i] = EncodeFp8(x, inv);
}

// Decode code byte b (every codec; int4: elements 2b and 2b + 1).
KVTIER_HD inline void DecodeCodeByte(const CodecParams& p, const CodecSegmentJob& j, uint64_t b) {
  const auto* in = static_cast<const uint8_t*>(j.src);
  auto* x = static_cast<uint8_t*>(j.dst);
  const uint8_t code = in[CodesOffset(p, j) + b];
  if (p.codec == kCodecFp8E4m3) {
    StoreElement(DecodeFp8(code, BitsToFloat(LoadU32(in))), x, b, p.element);
    return;
  }
  const uint64_t n = Elements(j);
  const int per_byte = p.codec == kCodecInt4 ? 2 : 1;
  for (int k = 0; k < per_byte; ++k) {
    const uint64_t e = b * per_byte + k;
    if (e >= n) break;
    const Group g = LoadGroup(in + 4 * GroupOf(p, j, e / j.channels, e % j.channels));
    const auto q = static_cast<uint8_t>(per_byte == 2 ? (code >> (4 * k)) & 0x0f : code);
    StoreElement(Dequantise(q, Bf16ToFloat(g.min), Bf16ToFloat(g.scale)), x, e, p.element);
  }
}

// The work items of one segment, in a loop: what a GPU kernel runs one per thread. The CPU codec
// (codec.cc) writes the same bytes faster; these are the reference the GPU kernels share.
inline void EncodeSegmentItems(const CodecParams& p, const CodecSegmentJob& j) {
  if (p.codec == kCodecFp8E4m3) {
    float amax = 0;
    const auto* x = static_cast<const uint8_t*>(j.src);
    for (uint64_t i = 0; i < Elements(j); ++i) {
      const float a = Fp8Magnitude(LoadElement(x, i, p.element));
      amax = a > amax ? a : amax;
    }
    const float scale = Fp8Scale(amax);
    StoreU32(static_cast<uint8_t*>(j.dst), FloatToBits(scale));
    const float inv = Div(1.0f, scale);
    for (uint64_t i = 0; i < Elements(j); ++i) EncodeFp8Element(p, j, i, inv);
    return;
  }
  for (uint64_t g = 0; g < GroupCount(p, j); ++g) EncodeGroup(p, j, g);
  for (uint64_t b = 0; b < CodeBytes(p, j); ++b) EncodeCodeByte(p, j, b);
}
inline void DecodeSegmentItems(const CodecParams& p, const CodecSegmentJob& j) {
  for (uint64_t b = 0; b < CodeBytes(p, j); ++b) DecodeCodeByte(p, j, b);
}

}  // namespace kvtier::internal::codec_math

#endif  // KVTIER_LIB_CODEC_CODEC_MATH_H_
