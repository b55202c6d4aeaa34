#include "kvtier/layout.h"

#include <xxhash.h>

#include <algorithm>
#include <cstdint>
#include <limits>
#include <vector>

#include "absl/strings/str_cat.h"

namespace kvtier {
namespace {

__extension__ typedef __int128 i128;  // addresses and their differences, without overflow

// floor(a / b) for b > 0.
i128 FloorDiv(i128 a, i128 b) { return a >= 0 ? a / b : -((-a + b - 1) / b); }

struct Span {
  uint64_t lo = 0;  // address of slot 0
  uint64_t hi = 0;  // one past the last byte of slot num_slots - 1
  const Segment* seg = nullptr;
  size_t layer = 0, index = 0;
};

// Whether a slot region of `a` shares a byte with a slot region of `b` (n slots each). Equal
// strides: O(1), the slot distance k solving -len_b < (b.base - a.base) + k * stride < len_a.
// Different strides: O(n), for each slot of `a` the first region of `b` ending after its start
// (regions of one segment are disjoint and ascending, stride >= size).
bool RegionsOverlap(const Segment& a, const Segment& b, uint32_t n) {
  const i128 abase = reinterpret_cast<uintptr_t>(a.base);
  const i128 bbase = reinterpret_cast<uintptr_t>(b.base);
  const i128 la = a.bytes_per_block, lb = b.bytes_per_block;
  if (a.stride_bytes == b.stride_bytes) {
    const i128 stride = a.stride_bytes, d = bbase - abase;
    const i128 k_lo = std::max<i128>(FloorDiv(-lb - d, stride) + 1, -(i128{n} - 1));
    const i128 k_hi = std::min<i128>(-FloorDiv(d - la, stride) - 1, i128{n} - 1);
    return k_lo <= k_hi;
  }
  for (uint32_t s = 0; s < n; ++s) {
    const i128 x = abase + i128{s} * a.stride_bytes;
    const i128 t = std::max<i128>(0, FloorDiv(x - bbase - lb, b.stride_bytes) + 1);
    if (t < n && bbase + t * b.stride_bytes < x + la) return true;
  }
  return false;
}

// kInvalidArgument naming the first two segments whose slot regions share a byte: a Load into one
// block would overwrite another block's KV. Spans sorted by start; only pairs whose spans overlap
// are compared (interleaved layouts, as FlashInfer's [slot][K|V] or a cross-layer tensor, are such
// pairs and valid when their regions are disjoint).
absl::Status CheckNoOverlap(const std::vector<LayerLayout>& layers, uint32_t num_slots) {
  std::vector<Span> spans;
  for (size_t l = 0; l < layers.size(); ++l) {
    for (size_t s = 0; s < layers[l].segments.size(); ++s) {
      const Segment& g = layers[l].segments[s];
      const uint64_t lo = reinterpret_cast<uintptr_t>(g.base);
      const uint64_t len = uint64_t{num_slots - 1} * g.stride_bytes + g.bytes_per_block;
      if (lo > std::numeric_limits<uint64_t>::max() - len) {
        return absl::InvalidArgumentError(
            absl::StrCat("BlockLayout.layers[", l, "].segments[", s,
                         "]: base + (num_slots - 1) * stride_bytes + bytes_per_block wraps around "
                         "the address space"));
      }
      spans.push_back({lo, lo + len, &g, l, s});
    }
  }
  std::sort(spans.begin(), spans.end(), [](const Span& x, const Span& y) { return x.lo < y.lo; });
  for (size_t i = 0; i < spans.size(); ++i) {
    for (size_t j = i + 1; j < spans.size() && spans[j].lo < spans[i].hi; ++j) {
      if (RegionsOverlap(*spans[i].seg, *spans[j].seg, num_slots)) {
        return absl::InvalidArgumentError(
            absl::StrCat("BlockLayout.layers[", spans[j].layer, "].segments[", spans[j].index,
                         "]: its slots overlap those of layers[", spans[i].layer, "].segments[",
                         spans[i].index, "] (a block's bytes would be written over another's)"));
      }
    }
  }
  return absl::OkStatus();
}

}  // namespace

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
  return need_pointers ? CheckNoOverlap(layers, num_slots) : absl::OkStatus();
}

absl::Status BlockLayout::SetSegmentRoles(const std::vector<std::string>& roles,
                                          const std::string& what) {
  std::vector<SegmentRole> parsed;
  for (const std::string& r : roles) {
    if (r == "k" || r == "key") {
      parsed.push_back(SegmentRole::kKey);
    } else if (r == "v" || r == "value") {
      parsed.push_back(SegmentRole::kValue);
    } else if (r == "latent") {
      parsed.push_back(SegmentRole::kLatent);
    } else if (r.empty()) {
      parsed.push_back(SegmentRole::kUnspecified);
    } else {
      return absl::InvalidArgumentError(
          absl::StrCat(what, ": segment role '", r, "' is not k, v, latent or empty"));
    }
  }
  for (size_t l = 0; l < layers.size(); ++l) {
    if (layers[l].segments.size() != parsed.size()) {
      return absl::InvalidArgumentError(absl::StrCat(what, ": ", parsed.size(), " roles vs layer ",
                                                     l, "'s ", layers[l].segments.size(),
                                                     " segments"));
    }
  }
  for (LayerLayout& layer : layers) {
    for (size_t i = 0; i < parsed.size(); ++i) layer.segments[i].role = parsed[i];
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
