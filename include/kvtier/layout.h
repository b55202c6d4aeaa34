// BlockLayout: how one KV block is laid out in the engine's device memory.
//
// A block is `tokens_per_block` tokens of K and V for every layer. On the device the engine keeps,
// per layer, one or more tensors (segments): K and V for MHA/GQA, a single latent tensor for MLA.
// Each segment is an array of `num_slots` equally spaced per-block regions: slot s of a segment is
// the `bytes_per_block` bytes at `base + s * stride_bytes`. kvtier never allocates the engine's KV
// memory; it only copies into and out of these regions. In a host slot or on disk a block is the
// concatenation of its segments, layer by layer, in the order given here.
//
// Thread safety: a value; Validate() is const.
// Ownership: the pointers are borrowed; the memory must outlive every Cache built on the layout.
// Errors: Validate() returns kInvalidArgument naming the first bad field.
#ifndef KVTIER_LAYOUT_H_
#define KVTIER_LAYOUT_H_

#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/status.h"

namespace kvtier {

// What a segment holds, for the codecs that quantise K and V differently (Options.host.codec,
// docs/compression.md): int8 and int4 scale K per channel and V per token (KIVI). A segment's block
// region is then read as token-major [tokens_per_block][channels] elements of Options.shard.dtype.
enum class SegmentRole : uint8_t {
  kUnspecified,  // not said: fine without a codec, refused by the int8 and int4 codecs
  kKey,          // K: scaled per channel (groups along the tokens)
  kValue,        // V: scaled per token (groups along the channels)
  kLatent,       // MLA's joint latent: scaled as V (per token)
};

struct Segment {
  void* base = nullptr;          // device address of slot 0 (host memory on the emulated device)
  uint64_t bytes_per_block = 0;  // bytes of one block in this segment
  uint64_t stride_bytes = 0;     // distance from slot s to slot s+1; >= bytes_per_block
  SegmentRole role = SegmentRole::kUnspecified;  // K, V or latent: needed by int8/int4 codecs
};

struct LayerLayout {
  std::vector<Segment> segments;  // 2 (K, V) for MHA/GQA, 1 for MLA
};

struct BlockLayout {
  uint32_t tokens_per_block = 16;   // tokens in one block
  uint32_t num_slots = 0;           // blocks the engine's KV tensors hold: the device tier's size
  std::vector<LayerLayout> layers;  // one entry per transformer layer

  // kInvalidArgument when tokens_per_block or num_slots is 0, there is no layer, a layer has no
  // segment, a base is null, a size is 0, a stride is smaller than its size, a byte count
  // overflows, or two segments' slot regions share a byte (interleaved segments, e.g. K and V of a
  // slot side by side, are valid when their regions are disjoint). Message names the field:
  // "BlockLayout.layers[3].segments[1].stride_bytes: ...". O(segments^2) at worst, plus
  // O(num_slots) per pair of segments with overlapping extents and different strides (a layout no
  // engine uses).
  absl::Status Validate() const;
  // Validate() without the pointer checks (nor the overlap check): for
  // DeviceBackend::kMetadataOnly.
  absl::Status ValidateShape(bool need_pointers) const;

  // Bytes of one block over all layers and segments (its size in a host slot). O(segments).
  uint64_t block_bytes() const;
  // Bytes of one block's layer `layer` (all its segments). O(segments of the layer).
  uint64_t layer_bytes(uint32_t layer) const;

  // A hash of the shape (tokens per block, layers, segment sizes; not the pointers, strides or slot
  // count). The shape part of Options::Fingerprint(), which adds the shard identity (TP/PP rank,
  // dtype, format) and is what tags stored blocks: equal shapes are not enough to share blocks.
  uint64_t Fingerprint() const;

  // Sets the segments' roles, the same in every layer: `roles[i]` for segment i of each layer, as
  // "k" or "key", "v" or "value", "latent", or "" (unspecified). kInvalidArgument, naming `what`
  // (the option that gave them) and changing nothing, for an unknown role or when a layer has not
  // exactly roles.size() segments. O(segments).
  absl::Status SetSegmentRoles(const std::vector<std::string>& roles, const std::string& what);
};

}  // namespace kvtier

#endif  // KVTIER_LAYOUT_H_
