// BlockCodec: lossy encodings of one KV block for the tiers below the device (Options.host.codec).
//
// Pure functions over a block's bytes: Encode() turns the raw block (its segments concatenated
// layer by layer, as in a host slot without a codec) into its encoded form, Decode() turns it back.
// The codec reads each segment's block region as token-major elements [tokens][channels] of one
// element type (fp16, bf16 or fp32; channels = bytes_per_block / element size / tokens_per_block).
//
// Codecs (group size G, Options.host.codec_group_size):
//  - none: the identity (no header); never built as a BlockCodec.
//  - int8 / int4: asymmetric min/max quantisation with a zero point, as KIVI: each group of
//    elements gets a scale s and a minimum m, code q = round((x - m) / s) in [0, 2^bits - 1],
//    decoded x' = m + q * s. Groups: a K segment (SegmentRole::kKey) per channel, G consecutive
//    tokens of one channel per group; a V or latent segment per token, G consecutive channels of
//    one token per group; the last group of a row or column may be shorter. s and m are stored as
//    bf16, m rounded down and s rounded up, so every finite input of the group lies in
//    [m, m + (2^bits - 1) * s]: |x' - x| <= s / 2 (plus float rounding and the rounding of x' to
//    the element type). Min and max are over the group's finite values; +-Inf saturates to that
//    max/min, NaN decodes to m (code 0); an fp32 value beyond bf16's range (|x| > 3.3895e38)
//    saturates. A constant group has s = 0 and decodes exactly. The encoder's arithmetic, in
//    float only (what a GPU kernel can repeat bit for bit): m = the bf16 at or below the minimum
//    (+0 for a zero minimum), s = the bf16 at or above (max - m) * (1 / (2^bits - 1)), and
//    q = nearbyint(min((x - m) * (1 / s), 2^bits - 1)) (to nearest even; negative and NaN to 0).
//    A decoder needs none of this: any (s, m, q) decode as m + q * s.
//  - fp8_e4m3: one fp32 scale per segment of a layer, s = amax / 448 over its finite values (1 when
//    0); each element is x / s rounded to OCP e4m3fn (round to nearest even, saturating at +-448:
//    +-Inf become +-448 * s, NaN stays NaN), decoded e4m3 * s. Relative error <= 2^-4 for values
//    whose x / s is an e4m3 normal (>= 2^-6), absolute error <= 2^-10 * s below. G is not used.
//
// Encoded block (little-endian), in this order:
//   header, 16 bytes: u32 magic "KVQC" (0x4351564b), u8 version (1), u8 codec id (CodecId),
//     u8 element type (ElementType), u8 0, u32 group size (0 for fp8), u32 segments in the block;
//   then for each layer, for each of its segments (the layout's order):
//     int8/int4: the groups' (s, m) pairs as two bf16 each: K as [token group][channel], V and
//       latent as [token][channel group]; then the codes: int8 one byte per element, int4 two per
//       byte (element 2i in the low nibble of byte i, element 2i+1 in the high nibble; a last odd
//       element leaves the high nibble 0), elements in the segment's [token][channel] order;
//     fp8_e4m3: the fp32 scale, then one e4m3 byte per element.
// A layer's encoded bytes are contiguous (layer_offset()), so layers can be decoded one by one.
//
// Kernels (CodecKernel): the portable scalar code, and AVX2 + F16C code for x86-64 CPUs that have
// them, chosen at run time (DefaultCodecKernel()); both write the same encoded and decoded bytes
// (test/codec_test.cc compares them), so a block encoded by one decodes identically by the other.
//
// Thread safety: a BlockCodec is immutable; Encode/Decode from any thread (they use thread-local
// scratch memory).
// Errors: Create() returns kInvalidArgument naming the field; Decode() returns kDataLoss when the
// header is not this codec's (another codec, version, element type, group size or layout): the
// caller must treat the block as missing, never as data.
#ifndef KVTIER_LIB_CODEC_CODEC_H_
#define KVTIER_LIB_CODEC_CODEC_H_

#include <cstdint>
#include <optional>
#include <vector>

#include "absl/functional/function_ref.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "kvtier/layout.h"
#include "kvtier/options.h"
#include "lib/codec/codec_math.h"

namespace kvtier::internal {

enum class CodecId : uint8_t { kNone = 0, kFp8E4m3 = 1, kInt8 = 2, kInt4 = 3 };
enum class ElementType : uint8_t { kF16 = 1, kBf16 = 2, kF32 = 3 };

// "none", "fp8_e4m3", "int8", "int4" (kInvalidArgument otherwise, naming `path`).
absl::StatusOr<CodecId> ParseCodec(absl::string_view path, absl::string_view name);
const char* CodecName(CodecId id);
// The element types of Options.shard.dtype the codecs read: "float16"/"half", "bfloat16",
// "float32"/"float", with or without "torch."; kInvalidArgument for any other (or empty).
absl::StatusOr<ElementType> ParseElementType(absl::string_view dtype);
uint32_t ElementBytes(ElementType type);

// The CPU code that Encode/Decode run. Every kernel writes the same bytes for every input.
// kItems: the CUDA kernels' work items (lib/codec/codec_math.h) in a loop, one at a time: slow,
// for tests and the emulated device's check of the device codec path.
enum class CodecKernel : uint8_t { kScalar = 0, kAvx2 = 1, kItems = 2 };
// Whether this CPU runs `kernel`: kScalar and kItems always, kAvx2 on x86-64 with AVX2 and F16C.
// An unsupported kernel passed to Encode/Decode runs as kScalar.
bool CodecKernelSupported(CodecKernel kernel);
// The fastest supported kernel (checked once per process).
CodecKernel DefaultCodecKernel();
const char* CodecKernelName(CodecKernel kernel);  // "scalar", "avx2", "items"

// One job of a device that runs the codec (Device::EncodeToHost, DecodeFromHost), on this CPU by
// `kernel`: the bytes the CUDA kernels write for it.
void EncodeSegmentJob(const codec_math::CodecParams& params, const codec_math::CodecSegmentJob& job,
                      CodecKernel kernel = DefaultCodecKernel());
void DecodeSegmentJob(const codec_math::CodecParams& params, const codec_math::CodecSegmentJob& job,
                      CodecKernel kernel = DefaultCodecKernel());

inline constexpr uint32_t kDefaultCodecGroupSize = 64;
inline constexpr uint32_t kMaxCodecGroupSize = 1u << 16;
inline constexpr uint32_t kCodecHeaderBytes = 16;

struct CodecConfig {
  CodecId id = CodecId::kNone;
  uint32_t group_size = kDefaultCodecGroupSize;  // a power of two in [2, kMaxCodecGroupSize]
  ElementType element = ElementType::kF16;
};

class BlockCodec {
 public:
  // The codec of `config` for blocks of `layout` (its shape only). kInvalidArgument ("<path>: ...")
  // for codec none, a group size that is not a power of two in [2, 65536], a segment whose size is
  // not a whole number of tokens x elements, or (int8/int4) a segment without a role.
  static absl::StatusOr<BlockCodec> Create(absl::string_view path, const CodecConfig& config,
                                           const BlockLayout& layout);

  const CodecConfig& config() const { return config_; }
  uint64_t raw_bytes() const { return raw_bytes_; }          // layout.block_bytes()
  uint64_t encoded_bytes() const { return encoded_bytes_; }  // header + every layer
  uint32_t num_layers() const { return static_cast<uint32_t>(layer_encoded_.size()) - 1; }
  // Offsets of layer `layer`'s encoded bytes in an encoded block and of its raw bytes in a raw one.
  uint64_t layer_offset(uint32_t layer) const { return layer_encoded_[layer]; }
  uint64_t raw_layer_offset(uint32_t layer) const { return layer_raw_[layer]; }

  // Encodes the raw block `raw` (raw_bytes()) into `encoded` (encoded_bytes()). O(raw_bytes).
  void Encode(const void* raw, void* encoded, CodecKernel kernel = DefaultCodecKernel()) const;
  // Checks the header of `encoded`, then decodes it into `raw`. kDataLoss on a header mismatch
  // (nothing written).
  absl::Status Decode(const void* encoded, void* raw,
                      CodecKernel kernel = DefaultCodecKernel()) const;
  // Writes the header of an encoded block (Encode does; for blocks encoded layer by layer).
  void EncodeHeader(void* encoded) const;
  // Checks only the header (kDataLoss as Decode).
  absl::Status CheckHeader(const void* encoded) const;
  // One layer: raw layer bytes (at raw_layer_offset) <-> its encoded bytes (at layer_offset). No
  // header check (Decode or CheckHeader does it once per block).
  void EncodeLayer(uint32_t layer, const void* raw_layer, void* encoded_layer,
                   CodecKernel kernel = DefaultCodecKernel()) const;
  void DecodeLayer(uint32_t layer, const void* encoded_layer, void* raw_layer,
                   CodecKernel kernel = DefaultCodecKernel()) const;

  // For a device that runs the codec (Device::EncodeToHost): the kernels' parameters, and the jobs
  // of layer `layer` of one block, one per segment, appended to `out`. `raw(s)`: the address of
  // segment s's raw bytes (tokens x channels elements); `encoded_layer`: the layer's encoded bytes
  // (at layer_offset(layer) in the block). `encode`: raw -> encoded, else the other way.
  codec_math::CodecParams params() const;
  void AppendLayerJobs(uint32_t layer, absl::FunctionRef<void*(size_t)> raw, void* encoded_layer,
                       bool encode, std::vector<codec_math::CodecSegmentJob>* out) const;

  // One segment's bytes: `tokens` x `channels` elements, `role` K/V. For tools and tests
  // (kvtier.codec_roundtrip).
  struct SegmentShape {
    uint32_t tokens = 0;
    uint64_t channels = 0;
    SegmentRole role = SegmentRole::kValue;
    uint64_t encoded_bytes = 0;  // filled by Create
  };
  struct LayerShape {
    std::vector<SegmentShape> segments;
  };

 private:
  BlockCodec() = default;

  CodecConfig config_;
  uint64_t raw_bytes_ = 0;
  uint64_t encoded_bytes_ = 0;
  uint32_t segment_count_ = 0;
  std::vector<LayerShape> layers_;
  std::vector<uint64_t> layer_encoded_;  // layers + 1 offsets; [0] = header bytes
  std::vector<uint64_t> layer_raw_;      // layers + 1 offsets; [0] = 0
};

// The codec of Options.host.codec for `options` (nullopt for "none"); kInvalidArgument naming the
// option (unknown codec, shard.dtype not fp16/bf16/fp32, bad group size, a segment without a role).
absl::StatusOr<std::optional<BlockCodec>> HostCodecOf(const Options& options);

// Bytes of one block as the tiers below the device store it: the host codec's encoded size, or
// layout.block_bytes() without one (or with an invalid one: Validate() refuses those).
uint64_t StoredBlockBytes(const Options& options);

// Encoded bytes of one segment of `tokens` x `channels` elements under `config`.
uint64_t SegmentEncodedBytes(const CodecConfig& config, SegmentRole role, uint32_t tokens,
                             uint64_t channels);

}  // namespace kvtier::internal

#endif  // KVTIER_LIB_CODEC_CODEC_H_
