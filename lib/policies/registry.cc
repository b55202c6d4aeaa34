// The process-wide policy registry.
#include <algorithm>
#include <map>
#include <utility>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "kvtier/policy.h"
#include "lib/common/mutex.h"

// Built-ins register themselves with KVTIER_REGISTER_POLICY. A static libkvtier.a only links the
// object files something references, so this file references every built-in's anchor from a
// definition with external linkage, which neither the compiler nor the linker may drop while
// registry.o is linked (and it is: it defines RegisterPolicy and CreatePolicy).
namespace kvtier {
extern bool kvtier_policy_anchor_ArcPolicy;
extern bool kvtier_policy_anchor_FifoPolicy;
extern bool kvtier_policy_anchor_H2oPolicy;
extern bool kvtier_policy_anchor_KvAdaptivePolicy;
extern bool kvtier_policy_anchor_LfuPolicy;
extern bool kvtier_policy_anchor_LruPolicy;
extern bool kvtier_policy_anchor_PrefixAwarePolicy;
extern bool kvtier_policy_anchor_PriorityPolicy;
extern bool kvtier_policy_anchor_S3FifoPolicy;
extern bool kvtier_policy_anchor_SievePolicy;
extern bool kvtier_policy_anchor_StreamingPolicy;

namespace internal {
extern const bool* const kBuiltinPolicyAnchors[];
const bool* const kBuiltinPolicyAnchors[] = {
    &kvtier_policy_anchor_ArcPolicy,         &kvtier_policy_anchor_FifoPolicy,
    &kvtier_policy_anchor_H2oPolicy,         &kvtier_policy_anchor_KvAdaptivePolicy,
    &kvtier_policy_anchor_LfuPolicy,         &kvtier_policy_anchor_LruPolicy,
    &kvtier_policy_anchor_PrefixAwarePolicy, &kvtier_policy_anchor_PriorityPolicy,
    &kvtier_policy_anchor_S3FifoPolicy,      &kvtier_policy_anchor_SievePolicy,
    &kvtier_policy_anchor_StreamingPolicy,
};
}  // namespace internal

namespace {

struct Registry {
  internal::Mutex mu;
  std::map<std::string, PolicyFactory> factories ABSL_GUARDED_BY(mu);
};

Registry& GetRegistry() {
  static Registry* registry = new Registry;  // never destroyed: used from static initialisers
  return *registry;
}

}  // namespace

absl::Status RegisterPolicy(const std::string& name, PolicyFactory factory) {
  if (name.empty()) return absl::InvalidArgumentError("RegisterPolicy: empty name");
  if (!factory) {
    return absl::InvalidArgumentError(absl::StrCat("RegisterPolicy: null factory for ", name));
  }
  Registry& r = GetRegistry();
  internal::MutexLock lock(&r.mu);
  if (!r.factories.emplace(name, std::move(factory)).second) {
    return absl::AlreadyExistsError(absl::StrCat("RegisterPolicy: ", name, " is taken"));
  }
  return absl::OkStatus();
}

std::vector<std::string> ListPolicies() {
  Registry& r = GetRegistry();
  internal::MutexLock lock(&r.mu);
  std::vector<std::string> names;
  for (const auto& [name, factory] : r.factories) names.push_back(name);
  return names;
}

absl::StatusOr<std::unique_ptr<EvictionPolicy>> CreatePolicy(const std::string& name,
                                                             const PolicyContext& context) {
  PolicyFactory factory;
  {
    Registry& r = GetRegistry();
    internal::MutexLock lock(&r.mu);
    auto it = r.factories.find(name);
    if (it != r.factories.end()) factory = it->second;
  }
  if (!factory) {
    return absl::NotFoundError(absl::StrCat("CreatePolicy: no policy named '", name,
                                            "' (registered: ", absl::StrJoin(ListPolicies(), ", "),
                                            ")"));
  }
  return factory(context);
}

absl::Status CheckPolicyParams(const std::string& policy, const PolicyParams& params,
                               const std::vector<std::string>& known) {
  for (const auto& [key, value] : params) {
    if (std::find(known.begin(), known.end(), key) == known.end()) {
      return absl::InvalidArgumentError(
          absl::StrCat(policy, ": unknown parameter '", key,
                       "' (known: ", known.empty() ? "none" : absl::StrJoin(known, ", "), ")"));
    }
  }
  return absl::OkStatus();
}

namespace internal {
bool RegisterPolicyAtStartup(const char* name, PolicyFactory factory) {
  return RegisterPolicy(name, std::move(factory)).ok();
}
}  // namespace internal

}  // namespace kvtier
