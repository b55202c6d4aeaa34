// BlockKey and BlockHasher: the identity of a KV block.
//
// A BlockKey names the K and V of one block of tokens *and everything before it*: it is the 128-bit
// xxh3 of (namespace salt, parent key, the block's token ids). Two requests that share their first
// k blocks of tokens under the same salt therefore share their first k keys, and nothing else.
//
// Stability: a key depends only on its inputs, never on the process, the machine or the build. The
// hashed bytes are fixed: salt = XXH3_128("kvtier-salt-v2" '\0' ++ for each of model_id, lora_id
// and tenant: its length as 8 little-endian bytes, then its bytes); key = XXH3_128("kvtier-key-v1"
// ++ salt(16 B) ++ parent(16 B) ++ each token id as 4 little-endian bytes), with the 128-bit values
// written high half first, big-endian. The strings are bytes (any, '\0' included): two different
// (model_id, lora_id, tenant) never hash the same bytes. Keys written to disk by one version of
// kvtier are read back by another; changing this is a format break, recorded in the format version
// of every stored block (disk trailer and manifest, remote value header): 2 since the salt is
// length-prefixed (v1 separated the strings with '\0', so ("a\0", "b", "") and ("a", "\0b", "")
// shared a salt); blocks of another version are never served.
//
// Thread safety: BlockKey is a value; a BlockHasher is immutable after construction, so any method
// may be called from any thread.
// Errors: ChainTokens() rejects a token span that is not a whole number of blocks.
#ifndef KVTIER_BLOCK_KEY_H_
#define KVTIER_BLOCK_KEY_H_

#include <compare>
#include <cstdint>
#include <span>
#include <string>
#include <vector>

#include "absl/status/statusor.h"

namespace kvtier {

// 128 bits; the all-zero key is kRootKey, the parent of every first block and never a block's key.
struct BlockKey {
  uint64_t hi = 0;
  uint64_t lo = 0;

  friend constexpr auto operator<=>(const BlockKey&, const BlockKey&) = default;
  template <typename H>
  friend H AbslHashValue(H h, const BlockKey& k) {
    return H::combine(std::move(h), k.hi, k.lo);
  }
  // 32 lowercase hex digits, hi first.
  std::string ToHex() const;
};

inline constexpr BlockKey kRootKey{};

// What separates tenants: blocks only match under an identical salt.
struct NamespaceSalt {
  std::string model_id;  // e.g. "meta-llama/Llama-3.1-8B@fp16"; empty is allowed
  std::string lora_id;   // adapter id, empty for the base model
  std::string tenant;    // isolation domain; empty = shared
};

class BlockHasher {
 public:
  explicit BlockHasher(const NamespaceSalt& salt = {});

  // The key of a block whose parent is `parent` (kRootKey for the first block) and whose token ids
  // are `tokens`. Cost: O(tokens.size()).
  BlockKey Chain(const BlockKey& parent, std::span<const int32_t> tokens) const;

  // The keys of all blocks of a sequence that starts at the root: tokens.size() must be a multiple
  // of tokens_per_block (> 0), else kInvalidArgument. A trailing partial block is the caller's to
  // drop (it cannot be shared until it is full).
  absl::StatusOr<std::vector<BlockKey>> ChainTokens(std::span<const int32_t> tokens,
                                                    uint32_t tokens_per_block) const;

  // The salt's own 128-bit hash (what Chain mixes in).
  const BlockKey& salt_key() const { return salt_key_; }

 private:
  BlockKey salt_key_;
};

}  // namespace kvtier

#endif  // KVTIER_BLOCK_KEY_H_
