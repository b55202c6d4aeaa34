#include "lib/transfer/host_slot_hazards.h"

#include <memory>

#include "test/util/test_util.h"

namespace kvtier::internal {
namespace {

TEST_CASE("HostSlotHazards: a slot is busy until its write completes, and joins a second write",
          "[hazards]") {
  HostSlotHazards h(4);
  CHECK_FALSE(h.Busy(0));
  auto disk = std::make_shared<HostEvent>();
  auto remote = std::make_shared<HostEvent>();
  h.Add(0, disk);
  h.Add(0, remote);  // the same bytes to the remote tier: the next user waits for both
  auto other = std::make_shared<HostEvent>();
  h.Add(1, other);
  CHECK(h.Busy(0));
  CHECK(h.Busy(1));
  CHECK_FALSE(h.Busy(2));
  CHECK(h.InFlight().size() == 3);  // one entry per write
  other->Complete();
  CHECK_FALSE(h.Busy(1));
  disk->Complete();
  CHECK(h.Busy(0));  // still waiting for the remote write
  remote->Complete();
  CHECK_FALSE(h.Busy(0));
  CHECK(h.Pending(0)->Query());
}

TEST_CASE("HostSlotHazards: finished writes are dropped from the in-flight list as it grows",
          "[hazards]") {
  HostSlotHazards h(1);
  for (int i = 0; i < 1000; ++i) {
    auto w = std::make_shared<HostEvent>();
    h.Add(0, w);
    w->Complete();
  }
  CHECK(h.InFlight().size() <= 64);
  auto open = std::make_shared<HostEvent>();
  h.Add(0, open);
  CHECK(h.Busy(0));
  open->Complete();
}

}  // namespace
}  // namespace kvtier::internal
