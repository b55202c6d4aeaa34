// Typed reading of a policy's key=value parameters, with the error messages all built-ins share.
#ifndef KVTIER_LIB_POLICIES_POLICY_PARAMS_H_
#define KVTIER_LIB_POLICIES_POLICY_PARAMS_H_

#include <cstdint>
#include <initializer_list>
#include <string>

#include "absl/status/statusor.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "kvtier/policy.h"
#include "lib/policies/ghost_list.h"

namespace kvtier::internal {

// params[key] as a number in [min, max], or `fallback` when absent. kInvalidArgument naming the
// policy, the key, the value and the range otherwise.
inline absl::StatusOr<double> ParamDouble(const char* policy, const PolicyParams& params,
                                          const std::string& key, double fallback, double min,
                                          double max) {
  auto it = params.find(key);
  if (it == params.end()) return fallback;
  double v = 0;
  if (!absl::SimpleAtod(it->second, &v) || !(v >= min && v <= max)) {
    return absl::InvalidArgumentError(absl::StrCat(policy, ": parameter ", key, "='", it->second,
                                                   "' is not a number in [", min, ", ", max, "]"));
  }
  return v;
}

inline absl::StatusOr<uint32_t> ParamUint(const char* policy, const PolicyParams& params,
                                          const std::string& key, uint32_t fallback, uint32_t min,
                                          uint32_t max) {
  auto it = params.find(key);
  if (it == params.end()) return fallback;
  uint32_t v = 0;
  if (!absl::SimpleAtoi(it->second, &v) || v < min || v > max) {
    return absl::InvalidArgumentError(absl::StrCat(policy, ": parameter ", key, "='", it->second,
                                                   "' is not an integer in [", min, ", ", max,
                                                   "]"));
  }
  return v;
}

inline absl::StatusOr<bool> ParamBool(const char* policy, const PolicyParams& params,
                                      const std::string& key, bool fallback) {
  auto it = params.find(key);
  if (it == params.end()) return fallback;
  if (it->second == "true" || it->second == "1" || it->second == "on") return true;
  if (it->second == "false" || it->second == "0" || it->second == "off") return false;
  return absl::InvalidArgumentError(absl::StrCat(policy, ": parameter ", key, "='", it->second,
                                                 "' is not a boolean (true|false|on|off|1|0)"));
}

// params[key] as the index of one of `choices`, or `fallback` when absent. kInvalidArgument
// naming the policy, the key, the value and the choices otherwise.
inline absl::StatusOr<int> ParamChoice(const char* policy, const PolicyParams& params,
                                       const std::string& key, int fallback,
                                       std::initializer_list<const char*> choices) {
  auto it = params.find(key);
  if (it == params.end()) return fallback;
  int i = 0;
  for (const char* c : choices) {
    if (it->second == c) return i;
    ++i;
  }
  return absl::InvalidArgumentError(absl::StrCat(policy, ": parameter ", key, "='", it->second,
                                                 "' is not one of ", absl::StrJoin(choices, "|")));
}

// OK when a ghost list of `ids` ids fits GhostLists (kMaxCapacity); kInvalidArgument naming the
// policy and `what` sized it otherwise, before anything is allocated.
inline absl::Status CheckGhostIds(const char* policy, uint64_t ids, const char* what) {
  if (ids <= GhostLists::kMaxCapacity) return absl::OkStatus();
  return absl::InvalidArgumentError(absl::StrCat(policy, ": ", what, " gives ", ids,
                                                 " ghost ids per list, over the 2^30 one holds"));
}

}  // namespace kvtier::internal

#endif  // KVTIER_LIB_POLICIES_POLICY_PARAMS_H_
