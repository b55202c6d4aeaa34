// test::Required and test::SkipMissing (test_util.h). In a file of their own: they use Catch2's
// FAIL and WARN, and kvtier_bench links test_util.cc's helpers without Catch2's runner.
#include <cstdlib>
#include <string>
#include <string_view>

#include "absl/strings/ascii.h"
#include "absl/strings/str_split.h"
#include "test/util/test_util.h"

namespace kvtier::test {

bool Required(std::string_view component) {
  const char* env = std::getenv("KVTIER_TEST_REQUIRE");
  if (env == nullptr) return false;
  bool required = false;
  for (absl::string_view name : absl::StrSplit(env, ',', absl::SkipWhitespace())) {
    name = absl::StripAsciiWhitespace(name);
    if (name != "redis" && name != "cuda") {
      FAIL("KVTIER_TEST_REQUIRE=" << env << ": unknown component '" << name
                                  << "' (vs redis, cuda)");
    }
    required |= std::string_view(name.data(), name.size()) == component;
  }
  return required;
}

bool SkipMissing(std::string_view component, const std::string& why) {
  if (Required(component)) {
    FAIL("required component '" << component << "' is missing (KVTIER_TEST_REQUIRE): " << why);
  }
  WARN("skipped: " << why);
  return true;
}

}  // namespace kvtier::test
