#include "kvtier/cache.h"

#include "test/util/test_util.h"

namespace kvtier {
namespace {

using test::EngineKv;

TEST_CASE("Cache: a committed sequence is matched and loaded byte-exact from the device",
          "[cache]") {
  EngineKv kv({.num_slots = 16});
  auto cache = Cache::Create(test::MakeOptions(kv, 16));
  REQUIRE_OK(cache);
  const auto keys = test::Chain(6, 1);
  auto first = test::RunSequence(**cache, kv, keys);
  REQUIRE_OK(first);
  CHECK(first->matched == 0);
  auto second = test::RunSequence(**cache, kv, keys);
  REQUIRE_OK(second);
  CHECK(second->matched == 6);
  CHECK(second->loaded == 6);
  CHECK(second->mismatched_bytes == 0);
  REQUIRE_OK((*cache)->CheckInvariants());
}

}  // namespace
}  // namespace kvtier
