// Fuzz target: sequences of Cache calls (Match, AllocateDevice with and without a match, Load,
// Commit, Release, Grow, Hint, and bad calls: root keys, zero and oversize allocations, empty,
// foreign and released leases, longer matches, repeated keys, mismatched hint spans), checked
// after every call against the reference model of test/util/cache_model.h, the one
// test/model_test.cc runs on seeded random calls.
//
// Input: byte 0 picks the configuration (bits 0-2: the eviction policy, an index into
// ListPolicies(); bit 3: host write-through; bit 4: half the Loads left in flight while later
// calls run); every later byte is one choice of the model (which call, which chain and prefix,
// which lease, how many blocks), the run ending when the bytes do. No disk or remote tier (each
// input makes a fresh cache; files and servers would make runs slow and stateful).
//
// Deterministic: the model accepts each outcome the contract leaves to the cache (a hit or a
// miss, OK or kResourceExhausted where slots are short), so the copy threads' timing changes no
// verdict. A broken promise (a wrong byte, a wrong code, an invariant, a capacity) aborts.
#include <cstddef>
#include <cstdint>
#include <sstream>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "kvtier/policy.h"
#include "test/fuzz/fuzz_check.h"

#define KVTIER_MODEL_CHECK(cond) KVTIER_FUZZ_CHECK(cond)
// A failed status check prints the status it got, as the Catch2 model test does.
#define KVTIER_MODEL_CHECK_CODE(expr, expected)                                               \
  do {                                                                                        \
    const ::absl::Status got_ = ::kvtier::test::AsStatus(expr);                               \
    if (got_.code() != (expected)) {                                                          \
      std::fprintf(stderr, "%s:%d: fuzz check failed: %s is %s\n", __FILE__, __LINE__, #expr, \
                   got_.ToString().c_str());                                                  \
      std::abort();                                                                           \
    }                                                                                         \
  } while (0)
#define KVTIER_MODEL_CHECK_OK(expr) KVTIER_MODEL_CHECK_CODE(expr, ::absl::StatusCode::kOk)
// Messages are for a failing test's report; here they are only type-checked.
#define KVTIER_MODEL_INFO(msg) \
  do {                         \
    if (false) {               \
      std::ostringstream os_;  \
      os_ << msg;              \
    }                          \
  } while (0)
#include "test/util/cache_model.h"

namespace kvtier {
namespace {

// The registered policies, less those a test registers (none is in this binary, but stay exact).
const std::vector<std::string>& Policies() {
  static const std::vector<std::string> policies = [] {
    std::vector<std::string> out;
    for (const std::string& p : ListPolicies()) {
      if (p.find("for-test") == std::string::npos) out.push_back(p);
    }
    return out;
  }();
  return policies;
}

void Run(const uint8_t* data, size_t size) {
  if (size < 2) return;
  test::ModelConfig config;
  config.policy = Policies()[data[0] % 8 % Policies().size()];
  config.write_through = (data[0] & 0x08) != 0;
  config.in_flight = (data[0] & 0x10) != 0;
  size_t pos = 1;
  bool exhausted = false;
  // Each choice takes one byte (the model reduces it modulo what it chooses among); past the end
  // the choices are 0 and the run stops after the current step.
  test::Model model(
      [&]() -> uint32_t {
        if (pos >= size) {
          exhausted = true;
          return 0;
        }
        return data[pos++];
      },
      config);
  while (!exhausted) {
    model.Step();
    model.CheckAll();
  }
  KVTIER_FUZZ_CHECK(model.mismatched() == 0);
}

}  // namespace
}  // namespace kvtier

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  kvtier::Run(data, size);
  return 0;
}
