#include "kvtier/layout.h"

#include <xxhash.h>

#include <limits>
#include <vector>

#include "absl/strings/str_cat.h"

namespace kvtier {

absl::Status BlockLayout::Validate() const { return ValidateShape(/*need_pointers=*/true); }

absl::Status BlockLayout::ValidateShape(bool need_pointers) const {
  if (tokens_per_block == 0) {
    return absl::InvalidArgumentError("BlockLayout.tokens_per_block: must be > 0");
  }
  if (num_slots == 0) return absl::InvalidArgumentError("BlockLayout.num_slots: must be > 0");
  if (layers.empty()) return absl::InvalidArgumentError("BlockLayout.layers: no layer");
  uint64_t total = 0;
  for (size_t l = 0; l < layers.size(); ++l) {
    const auto& segs = layers[l].segments;
    if (segs.empty()) {
      return absl::InvalidArgumentError(absl::StrCat(
          "BlockLayout.layers[", l, "].segments: no segment (K and V, or one for MLA)"));
    }
    for (size_t s = 0; s < segs.size(); ++s) {
      const Segment& g = segs[s];
      const std::string path = absl::StrCat("BlockLayout.layers[", l, "].segments[", s, "].");
      if (need_pointers && g.base == nullptr) {
        return absl::InvalidArgumentError(absl::StrCat(path, "base: null"));
      }
      if (g.bytes_per_block == 0) {
        return absl::InvalidArgumentError(absl::StrCat(path, "bytes_per_block: must be > 0"));
      }
      if (g.stride_bytes < g.bytes_per_block) {
        return absl::InvalidArgumentError(
            absl::StrCat(path, "stride_bytes: ", g.stride_bytes,
                         " is smaller than bytes_per_block=", g.bytes_per_block));
      }
      const uint64_t max = std::numeric_limits<uint64_t>::max();
      if (g.stride_bytes > (max - g.bytes_per_block) / num_slots ||
          total > max - g.bytes_per_block) {
        return absl::InvalidArgumentError(absl::StrCat(path, "stride_bytes: ", g.stride_bytes,
                                                       " x num_slots=", num_slots, " overflows"));
      }
      total += g.bytes_per_block;
    }
  }
  return absl::OkStatus();
}

uint64_t BlockLayout::layer_bytes(uint32_t layer) const {
  uint64_t n = 0;
  for (const Segment& g : layers[layer].segments) n += g.bytes_per_block;
  return n;
}

uint64_t BlockLayout::block_bytes() const {
  uint64_t n = 0;
  for (uint32_t l = 0; l < layers.size(); ++l) n += layer_bytes(l);
  return n;
}

uint64_t BlockLayout::Fingerprint() const {
  std::vector<uint64_t> words = {0x6b7674696572ULL /* "kvtier" */, 1, tokens_per_block,
                                 layers.size()};
  for (const LayerLayout& l : layers) {
    words.push_back(l.segments.size());
    for (const Segment& g : l.segments) words.push_back(g.bytes_per_block);
  }
  // Words hashed as little-endian bytes so the value is the same on any machine.
  std::vector<unsigned char> bytes;
  bytes.reserve(words.size() * 8);
  for (uint64_t w : words) {
    for (int i = 0; i < 8; ++i) bytes.push_back(static_cast<unsigned char>(w >> (8 * i)));
  }
  return XXH3_64bits(bytes.data(), bytes.size());
}

}  // namespace kvtier
