#include "kvtier/block_key.h"

#define XXH_STATIC_LINKING_ONLY  // XXH3_state_t on the stack
#include <xxhash.h>

#include <array>

#include "absl/strings/str_cat.h"

namespace kvtier {
namespace {

BlockKey FromXxh(XXH128_hash_t h) { return BlockKey{.hi = h.high64, .lo = h.low64}; }

void PutBig64(uint64_t v, unsigned char* out) {
  for (int i = 7; i >= 0; --i) {
    out[i] = static_cast<unsigned char>(v & 0xff);
    v >>= 8;
  }
}

// v2: length-prefixed strings (v1 separated them with '\0', which a string may hold).
constexpr char kSaltDomain[] = "kvtier-salt-v2";
constexpr char kKeyDomain[] = "kvtier-key-v1";

}  // namespace

BlockHasher::BlockHasher(const NamespaceSalt& salt) {
  // Each string after its length, so the bytes name one (model, LoRA, tenant) only: separators
  // cannot, when a string may hold the separator ("a\0" + "b" and "a" + "\0b" were one v1 salt).
  std::string bytes(kSaltDomain, sizeof(kSaltDomain));  // with its '\0'
  for (const std::string* s : {&salt.model_id, &salt.lora_id, &salt.tenant}) {
    const uint64_t n = s->size();
    for (int i = 0; i < 8; ++i) bytes.push_back(static_cast<char>(n >> (8 * i)));
    bytes.append(*s);
  }
  salt_key_ = FromXxh(XXH3_128bits(bytes.data(), bytes.size()));
}

BlockKey BlockHasher::Chain(const BlockKey& parent, std::span<const int32_t> tokens) const {
  XXH3_state_t state;
  XXH3_128bits_reset(&state);
  XXH3_128bits_update(&state, kKeyDomain, sizeof(kKeyDomain) - 1);
  std::array<unsigned char, 32> head;
  PutBig64(salt_key_.hi, head.data());
  PutBig64(salt_key_.lo, head.data() + 8);
  PutBig64(parent.hi, head.data() + 16);
  PutBig64(parent.lo, head.data() + 24);
  XXH3_128bits_update(&state, head.data(), head.size());
  // Token ids as little-endian 32-bit words, in chunks, independent of the host's byte order.
  std::array<unsigned char, 256> buf;
  size_t n = 0;
  for (int32_t t : tokens) {
    const auto u = static_cast<uint32_t>(t);
    buf[n++] = static_cast<unsigned char>(u);
    buf[n++] = static_cast<unsigned char>(u >> 8);
    buf[n++] = static_cast<unsigned char>(u >> 16);
    buf[n++] = static_cast<unsigned char>(u >> 24);
    if (n == buf.size()) {
      XXH3_128bits_update(&state, buf.data(), n);
      n = 0;
    }
  }
  if (n > 0) XXH3_128bits_update(&state, buf.data(), n);
  return FromXxh(XXH3_128bits_digest(&state));
}

absl::StatusOr<std::vector<BlockKey>> BlockHasher::ChainTokens(std::span<const int32_t> tokens,
                                                               uint32_t tokens_per_block) const {
  if (tokens_per_block == 0) {
    return absl::InvalidArgumentError("ChainTokens: tokens_per_block is 0");
  }
  if (tokens.size() % tokens_per_block != 0) {
    return absl::InvalidArgumentError(absl::StrCat("ChainTokens: ", tokens.size(),
                                                   " tokens is not a multiple of ",
                                                   "tokens_per_block=", tokens_per_block));
  }
  std::vector<BlockKey> keys;
  keys.reserve(tokens.size() / tokens_per_block);
  BlockKey parent = kRootKey;
  for (size_t i = 0; i < tokens.size(); i += tokens_per_block) {
    parent = Chain(parent, tokens.subspan(i, tokens_per_block));
    keys.push_back(parent);
  }
  return keys;
}

}  // namespace kvtier
