// Model-based random test: seeded sequences of API calls, good and bad, on a small cache,
// checked after every call against the reference model of test/util/cache_model.h (which
// test/fuzz/cache_sequence_fuzz.cc drives from the fuzzer's bytes instead). Variants: a disk tier
// below a small host tier, host write-through, loads left in flight, every policy. The seed is
// offset by KVTIER_TEST_SEED when set (CI sets a new one per run); every case prints the seed it
// used, to rerun a failure with it.
#include <cstdio>
#include <cstdlib>
#include <random>
#include <string>

#include "kvtier/cache.h"
#include "kvtier/policy.h"
#include "test/util/test_util.h"

#define KVTIER_MODEL_CHECK(cond) REQUIRE(cond)
#define KVTIER_MODEL_CHECK_OK(expr) REQUIRE_OK(expr)
#define KVTIER_MODEL_CHECK_CODE(expr, code) REQUIRE_CODE(expr, code)
#define KVTIER_MODEL_INFO(msg) INFO(msg)
#include "test/util/cache_model.h"

namespace kvtier {
namespace {

using test::Model;
using test::ModelConfig;

// The seed of a model run: `fixed` plus KVTIER_TEST_SEED when set (a number); printed.
uint32_t ModelSeed(uint32_t fixed) {
  uint32_t seed = fixed;
  const char* env = std::getenv("KVTIER_TEST_SEED");
  if (env != nullptr && *env != '\0') {
    seed = static_cast<uint32_t>(std::strtoul(env, nullptr, 10)) + fixed;
  }
  std::printf("model_test: seed %u (KVTIER_TEST_SEED=%s)\n", seed, env != nullptr ? env : "unset");
  std::fflush(stdout);
  return seed;
}

#if defined(__SANITIZE_ADDRESS__) || defined(__SANITIZE_THREAD__)
constexpr uint64_t kCalls = 30000;  // sanitizers: the same paths, fewer laps
#else
constexpr uint64_t kCalls = 100000;
#endif

TEST_CASE("Cache model: 100k random calls, good and bad, keep every promise", "[model]") {
  const uint32_t seed = ModelSeed(GENERATE(11u, 12u));
  CAPTURE(seed);
  std::mt19937 rng(seed);
  Model model([&rng] { return static_cast<uint32_t>(rng()); });
  while (model.calls() < kCalls) {
    model.Step();
    model.CheckAll();
  }
  CHECK(model.mismatched() == 0);
  CHECK(model.loaded() > 1000);  // the run did exercise loads
  CHECK(model.recall_checks() > 1000);
}

TEST_CASE("Cache model: with a disk tier, write-through and loads in flight, every promise holds",
          "[model][disk]") {
  const int variant = GENERATE(0, 1, 2, 3);
  ModelConfig config;
  config.disk = variant == 0 || variant == 2 || variant == 3;
  config.write_through = variant == 1 || variant == 3;
  config.in_flight = variant >= 1;
  CAPTURE(variant, config.disk, config.write_through, config.in_flight);
  const uint32_t seed = ModelSeed(31 + variant);
  CAPTURE(seed);
  // Disk I/O is slower than the emulated device: fewer calls.
  const uint64_t calls = config.disk ? kCalls / 5 : kCalls / 2;
  std::mt19937 rng(seed);
  Model model([&rng] { return static_cast<uint32_t>(rng()); }, config);
  while (model.calls() < calls) {
    model.Step();
    model.CheckAll();
  }
  CHECK(model.mismatched() == 0);
  CHECK(model.loaded() > 200);
  CHECK(model.recall_checks() > 100);
  const CacheStats& s = model.last_stats();
  if (config.disk) {
    CHECK(s.disk.hits > 0);  // blocks did come back from disk
    CHECK(s.bytes_disk_written > 0);
  }
  if (config.in_flight) CHECK(model.loaded_in_flight() > 0);
}

// The shared property test of every registered policy, through a real Cache: whatever the policy
// ranks, capacity is never exceeded, pinned and Filling blocks are never evicted, the prefix rule
// holds (CheckInvariants after every call) and no wrong byte is served.
TEST_CASE("Cache model: every registered policy keeps every promise", "[model][policy]") {
  const std::string policy = GENERATE(from_range(ListPolicies()));
  CAPTURE(policy);
  if (policy.find("for-test") != std::string::npos) return;  // registered by other tests
  ModelConfig config;
  config.policy = policy;
  std::mt19937 rng(ModelSeed(21));
  Model model([&rng] { return static_cast<uint32_t>(rng()); }, config);
  while (model.calls() < kCalls / 5) {
    model.Step();
    model.CheckAll();
  }
  CHECK(model.mismatched() == 0);
  CHECK(model.loaded() > 200);
}

}  // namespace
}  // namespace kvtier
