// Helpers shared by the tests: status assertions and an "engine" on the emulated device whose KV
// tensors are ordinary buffers, with a byte pattern derived from each block's key so a test can
// check that a slot holds exactly the bytes committed under a key.
#ifndef KVTIER_TEST_UTIL_TEST_UTIL_H_
#define KVTIER_TEST_UTIL_TEST_UTIL_H_

#include <catch2/catch.hpp>
#include <cstdint>
#include <cstring>
#include <filesystem>
#include <functional>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "kvtier/block_key.h"
#include "kvtier/cache.h"
#include "kvtier/layout.h"

#define REQUIRE_OK(expr)                                      \
  do {                                                        \
    const ::absl::Status s_ = ::kvtier::test::AsStatus(expr); \
    INFO(s_.ToString());                                      \
    REQUIRE(s_.ok());                                         \
  } while (0)
#define CHECK_OK(expr)                                        \
  do {                                                        \
    const ::absl::Status s_ = ::kvtier::test::AsStatus(expr); \
    INFO(s_.ToString());                                      \
    CHECK(s_.ok());                                           \
  } while (0)
#define REQUIRE_CODE(expr, expected_code)                     \
  do {                                                        \
    const ::absl::Status s_ = ::kvtier::test::AsStatus(expr); \
    INFO(s_.ToString());                                      \
    REQUIRE(s_.code() == (expected_code));                    \
  } while (0)

namespace kvtier::test {

// Components a test may need that a machine may lack: "redis" (redis-server and redis-cli, for
// LocalRedisCluster) and "cuda" (a CUDA device). Without one a test skips: it WARNs and passes,
// so ctest reports it Passed. KVTIER_TEST_REQUIRE, a comma-separated list of them (CI sets
// "redis"), makes a missing component fail the test instead, so a machine that lost one cannot
// pass unnoticed. An unknown name in it fails every test that asks.
bool Required(std::string_view component);
// For a test that needs `component` and found it missing (`why`): FAILs when the component is
// required (does not return), else WARNs "skipped: <why>" and returns true (the test returns).
bool SkipMissing(std::string_view component, const std::string& why);

inline absl::Status AsStatus(const absl::Status& s) { return s; }
template <typename T>
absl::Status AsStatus(const absl::StatusOr<T>& s) {
  return s.status();
}

struct KvShape {
  uint32_t layers = 4;
  uint32_t segments = 2;         // 2: K and V; 1: MLA
  uint64_t segment_bytes = 256;  // bytes of one block in one segment
  uint32_t num_slots = 16;
  bool interleaved = false;  // K and V of a slot adjacent (stride 2x), vs separate tensors
  uint32_t tokens_per_block = 4;
};

// The engine's device KV memory (host buffers on the emulated device) and its BlockLayout.
class EngineKv {
 public:
  explicit EngineKv(const KvShape& shape = {});
  const BlockLayout& layout() const { return layout_; }
  const KvShape& shape() const { return shape_; }

  // Writes the pattern of `key` into device slot `slot` (what the engine's prefill would compute).
  void Write(uint32_t slot, const BlockKey& key);
  // Bytes in device slot `slot` that differ from the pattern of `key`.
  uint64_t Mismatches(uint32_t slot, const BlockKey& key) const;
  // Fills slot `slot` with garbage.
  void Scribble(uint32_t slot, uint8_t value);

 private:
  std::byte* At(uint32_t layer, uint32_t seg, uint32_t slot) const;
  KvShape shape_;
  std::vector<std::unique_ptr<std::byte[]>> tensors_;
  BlockLayout layout_;
};

// The byte at offset `i` of segment (layer, seg) of the block named `key`.
uint8_t PatternByte(const BlockKey& key, uint32_t layer, uint32_t seg, uint64_t i);

// A chain of n keys from the root, distinct per `seed` (token ids seed*100000 + i).
std::vector<BlockKey> Chain(uint32_t n, uint32_t seed, uint32_t tokens_per_block = 4,
                            const BlockHasher& hasher = BlockHasher());

// A layout of two layers, each with one segment per role in `roles`, `bytes` per block, no base
// (codec tests: a codec reads only the shape).
BlockLayout TwoLayerLayout(uint32_t tokens_per_block, uint64_t bytes,
                           const std::vector<SegmentRole>& roles);

// Options for a cache over `kv` with `host_blocks` host slots (0 disables the host tier).
Options MakeOptions(const EngineKv& kv, uint32_t host_blocks);

// The whole engine step for one sequence: Match, AllocateDevice, Load (waited), write the pattern
// into the blocks not loaded, verify the loaded ones, Commit, and return the lease.
struct StepResult {
  uint32_t matched = 0;
  uint32_t loaded = 0;  // 0 when the load failed
  uint64_t mismatched_bytes = 0;
  bool load_failed = false;  // the Transfer ended with an error (the engine recomputed all)
};
// Whether a failed load is what the test injects. kForbidden (the default): a failed load is an
// error RunSequence returns (kInternal, with the transfer's status), not "0 loaded", so a test
// that injects no fault cannot pass on loads that failed.
enum class LoadFailures : uint8_t { kForbidden, kExpected };
absl::StatusOr<StepResult> RunSequence(Cache& cache, EngineKv& kv, std::span<const BlockKey> keys,
                                       DeviceLease* lease_out = nullptr,
                                       LoadFailures failures = LoadFailures::kForbidden);

// A fresh, empty directory `<prefix>.<pid>.<n>` under the test's working directory (the build
// tree: a real disk with O_DIRECT, unlike /tmp on tmpfs), removed with everything in it on
// destruction, also when the test fails.
struct TempDir {
  explicit TempDir(const std::string& prefix);
  ~TempDir();
  TempDir(const TempDir&) = delete;
  TempDir& operator=(const TempDir&) = delete;
  std::filesystem::path path;
};

// Runs `start(done)` and waits for its callback: start's own error if it did not start, else the
// status `done` was called with (for the tiers' asynchronous Read/Write/Invalidate).
absl::Status WaitForCallback(
    const std::function<absl::Status(std::function<void(absl::Status)>)>& start);

}  // namespace kvtier::test

#endif  // KVTIER_TEST_UTIL_TEST_UTIL_H_
