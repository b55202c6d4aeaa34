#include "kvtier/block_key.h"

#include <xxhash.h>

#include <array>
#include <vector>

#include "absl/container/flat_hash_set.h"
#include "test/util/test_util.h"

namespace kvtier {
namespace {

const std::vector<int32_t> kTokens = {1, 2, 3, 4};

// These values are the on-disk and cross-process contract: a change here is a format break.
// Format 2 (issue 17 #9, length-prefixed salt strings): every value changed on purpose, as every
// salt did; they were recomputed outside kvtier (Python, libxxhash's XXH3_128bits over the
// documented bytes), which also reproduces the format-1 values these replaced.
TEST_CASE("BlockHasher: keys match fixed vectors in every process and on every machine",
          "[block_key]") {
  const BlockHasher plain;
  const BlockHasher salted({.model_id = "m", .lora_id = "l", .tenant = "t"});
  CHECK(plain.salt_key().ToHex() == "80c5ccd1ac5a6e2287faf635723f71db");
  CHECK(salted.salt_key().ToHex() == "ba7da150988168c3a05b390bf7832697");
  const BlockKey a = plain.Chain(kRootKey, kTokens);
  CHECK(a.ToHex() == "e2b10c17959017a8b24b8673df46993b");
  CHECK(plain.Chain(a, kTokens).ToHex() == "7af62cd8b4db1ab3f9f0f05495bf9987");
  CHECK(salted.Chain(kRootKey, kTokens).ToHex() == "1c53924e46e60452af67cef4e9207c8a");
  CHECK(plain.Chain(kRootKey, std::vector<int32_t>{-1, 0, 2147483647}).ToHex() ==
        "279bb240c07d9bada14a95522c6a10a9");
}

TEST_CASE("BlockHasher: a key is XXH3-128 of the documented byte encoding", "[block_key]") {
  // Recomputed here from the header's description, independently of block_key.cc.
  const BlockHasher hasher({.model_id = "m", .lora_id = "l", .tenant = "t"});
  std::string salt_bytes("kvtier-salt-v2", 15);  // with its '\0'
  for (const char* s : {"m", "l", "t"}) {
    salt_bytes += std::string("\x01\0\0\0\0\0\0\0", 8) + s;  // length 1, little-endian
  }
  const XXH128_hash_t salt = XXH3_128bits(salt_bytes.data(), salt_bytes.size());
  CHECK(hasher.salt_key() == BlockKey{salt.high64, salt.low64});
  std::vector<unsigned char> bytes(std::begin("kvtier-key-v1"), std::end("kvtier-key-v1") - 1);
  auto put = [&](uint64_t v) {
    for (int i = 7; i >= 0; --i) bytes.push_back(static_cast<unsigned char>(v >> (8 * i)));
  };
  put(salt.high64);
  put(salt.low64);
  put(0);  // parent: the root
  put(0);
  for (int32_t t : kTokens) {
    for (int i = 0; i < 4; ++i) bytes.push_back(static_cast<unsigned char>(uint32_t(t) >> (8 * i)));
  }
  const XXH128_hash_t key = XXH3_128bits(bytes.data(), bytes.size());
  CHECK(hasher.Chain(kRootKey, kTokens) == BlockKey{key.high64, key.low64});
}

TEST_CASE("BlockHasher: different model, LoRA or tenant never share a key", "[block_key]") {
  const std::array<NamespaceSalt, 6> salts = {{{},
                                               {.model_id = "m"},
                                               {.lora_id = "m"},
                                               {.tenant = "m"},
                                               {.model_id = "ab", .lora_id = "c"},
                                               {.model_id = "a", .lora_id = "bc"}}};
  absl::flat_hash_set<BlockKey> keys;
  for (const NamespaceSalt& s : salts) keys.insert(BlockHasher(s).Chain(kRootKey, kTokens));
  CHECK(keys.size() == salts.size());
}

TEST_CASE("Regression #17: salts whose strings hold NUL bytes are as distinct as the strings",
          "[block_key][regression]") {
  // Each pair shared a salt (and so every key) when '\0' separated the strings (format 1).
  using namespace std::string_literals;
  const std::array<std::pair<NamespaceSalt, NamespaceSalt>, 4> pairs = {{
      {{.model_id = "a\0"s, .lora_id = "b"}, {.model_id = "a", .lora_id = "\0b"s}},
      {{.model_id = "a\0"s}, {.model_id = "a", .tenant = "\0"s}},
      {{.lora_id = "x\0y"s, .tenant = "z"}, {.lora_id = "x", .tenant = "y\0z"s}},
      {{.model_id = "\0"s}, {.lora_id = "\0"s}},
  }};
  for (const auto& [first, second] : pairs) {
    CAPTURE(first.model_id, first.lora_id, first.tenant, second.model_id, second.lora_id,
            second.tenant);
    CHECK(BlockHasher(first).salt_key() != BlockHasher(second).salt_key());
    CHECK(BlockHasher(first).Chain(kRootKey, kTokens) !=
          BlockHasher(second).Chain(kRootKey, kTokens));
  }
}

TEST_CASE("BlockHasher: a key depends on its parent, its tokens and their order", "[block_key]") {
  const BlockHasher h;
  const BlockKey root_child = h.Chain(kRootKey, kTokens);
  CHECK(h.Chain(root_child, kTokens) != root_child);
  CHECK(h.Chain(kRootKey, std::vector<int32_t>{2, 1, 3, 4}) != root_child);
  CHECK(h.Chain(kRootKey, std::vector<int32_t>{1, 2, 3}) != root_child);
  CHECK(h.Chain(kRootKey, kTokens) == root_child);  // and it is deterministic
  CHECK(root_child != kRootKey);
}

TEST_CASE("BlockHasher: ChainTokens is Chain over each block, and rejects partial blocks",
          "[block_key]") {
  const BlockHasher h({.model_id = "x"});
  std::vector<int32_t> tokens(12);
  for (int i = 0; i < 12; ++i) tokens[i] = i * 7;
  auto keys = h.ChainTokens(tokens, 4);
  REQUIRE_OK(keys);
  REQUIRE(keys->size() == 3);
  BlockKey parent = kRootKey;
  for (int b = 0; b < 3; ++b) {
    parent = h.Chain(parent, std::span(tokens).subspan(b * 4, 4));
    CHECK((*keys)[b] == parent);
  }
  REQUIRE_CODE(h.ChainTokens(std::span(tokens).first(10), 4), absl::StatusCode::kInvalidArgument);
  REQUIRE_CODE(h.ChainTokens(tokens, 0), absl::StatusCode::kInvalidArgument);
  auto empty = h.ChainTokens({}, 4);
  REQUIRE_OK(empty);
  CHECK(empty->empty());
}

TEST_CASE("BlockKey: hex is 32 lowercase digits, high half first", "[block_key]") {
  CHECK(BlockKey{0x1, 0xabcdef}.ToHex() == "00000000000000010000000000abcdef");
  CHECK(kRootKey.ToHex() == std::string(32, '0'));
}

}  // namespace
}  // namespace kvtier
