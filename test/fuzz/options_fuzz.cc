// Fuzz target: the options text parser (SetOption, lib/options_fields.h: "PATH=VALUE" from
// kvtier-replay's --option, the C API's kvtier_options_set and the Python keywords) and the
// policies' parameter parsing (PolicyParams, through CreatePolicy, as Cache::Create does).
//
// Input: lines of "path=value" (the value is the rest of the line), applied in order to one
// Options. An option that was set reads back (GetOption) as text that sets it to the same value.
// Then Options::Validate() runs on the result (with a valid layout), and each tier's policy is
// created from its name and parameters and given a few slots: bad values are errors, never a
// crash, an exception or an allocation out of proportion.
#include <cstdint>
#include <memory>
#include <string>

#include "absl/strings/string_view.h"
#include "kvtier/options.h"
#include "kvtier/policy.h"
#include "lib/options_fields.h"
#include "test/fuzz/fuzz_check.h"

namespace kvtier {
namespace {

constexpr uint32_t kSlots = 16;

void ExercisePolicy(const std::string& name, const PolicyParams& params) {
  absl::StatusOr<std::unique_ptr<EvictionPolicy>> p =
      CreatePolicy(name, PolicyContext{.capacity_slots = kSlots, .params = params});
  if (!p.ok()) {
    KVTIER_FUZZ_CHECK(p.status().code() == absl::StatusCode::kInvalidArgument ||
                      p.status().code() == absl::StatusCode::kNotFound);
    return;
  }
  EvictionPolicy& policy = **p;
  for (SlotId s = 0; s < kSlots; ++s) {
    policy.OnInsertKey(s, 1000 + s);
    policy.OnInsert(s);
    if (s > 0) policy.OnLink(s, s - 1);
    policy.OnHint(s, s);
  }
  for (SlotId s = 0; s < kSlots; s += 3) policy.OnAccess(s);
  for (int round = 0; round < 4; ++round) {
    std::optional<SlotId> victim = policy.PickVictim([](SlotId) { return true; });
    if (!victim.has_value()) break;
    KVTIER_FUZZ_CHECK(*victim < kSlots);
    policy.OnRemove(*victim);
    policy.OnMissKey(2000 + round);
    policy.OnInsertKey(*victim, 2000 + round);
    policy.OnInsert(*victim);
  }
}

void Run(absl::string_view text) {
  Options options;
  while (!text.empty()) {
    const size_t eol = text.find('\n');
    const absl::string_view line = text.substr(0, eol);
    text = eol == absl::string_view::npos ? absl::string_view() : text.substr(eol + 1);
    const size_t eq = line.find('=');
    if (eq == absl::string_view::npos) continue;
    const absl::string_view path = line.substr(0, eq), value = line.substr(eq + 1);
    const absl::Status set = internal::SetOption(options, path, value);
    if (!set.ok()) {
      KVTIER_FUZZ_CHECK(set.code() == absl::StatusCode::kInvalidArgument);
      continue;
    }
    // Its text form sets it to what it is (GetOption's contract), in a fresh Options too.
    absl::StatusOr<std::string> got = internal::GetOption(options, path);
    KVTIER_FUZZ_CHECK(got.ok());
    Options fresh;
    KVTIER_FUZZ_CHECK(internal::SetOption(fresh, path, *got).ok());
    absl::StatusOr<std::string> again = internal::GetOption(fresh, path);
    KVTIER_FUZZ_CHECK(again.ok() && *again == *got);
  }
  static char engine_memory[1];
  options.layout = BlockLayout{
      .tokens_per_block = 16,
      .num_slots = 64,
      .layers = {
          LayerLayout{.segments = {Segment{
                          .base = engine_memory, .bytes_per_block = 4096, .stride_bytes = 4096}}}}};
  const absl::Status valid = options.Validate();
  KVTIER_FUZZ_CHECK(valid.ok() || valid.code() == absl::StatusCode::kInvalidArgument);
  ExercisePolicy(options.device.policy, options.device.policy_params);
  ExercisePolicy(options.host.policy, options.host.policy_params);
  ExercisePolicy(options.disk.policy, options.disk.policy_params);
}

}  // namespace
}  // namespace kvtier

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  kvtier::Run(absl::string_view(reinterpret_cast<const char*>(data), size));
  return 0;
}
