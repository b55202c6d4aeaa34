#include "lib/transfer/emulated_device.h"

#include <atomic>
#include <cctype>
#include <cstring>
#include <fstream>
#include <future>
#include <string>
#include <vector>

#include "lib/transfer/host_event.h"
#include "test/util/test_util.h"

namespace kvtier::internal {
namespace {

TEST_CASE("EmulatedDevice: copies run in stream order and an event completes after them",
          "[device]") {
  EmulatedDevice dev;
  std::vector<uint8_t> a(4096, 1), b(4096, 0), c(4096, 0);
  const CopyRegion first[] = {{b.data(), a.data(), a.size()}};
  const CopyRegion second[] = {{c.data(), b.data(), b.size()}};  // reads what the first wrote
  REQUIRE_OK(dev.Copy(Stream::kH2D, first));
  REQUIRE_OK(dev.Copy(Stream::kH2D, second));
  auto event = dev.RecordEvent(Stream::kH2D);
  REQUIRE_OK(event);
  REQUIRE_OK((*event)->Wait());
  CHECK((*event)->Query());
  CHECK((*event)->native() == nullptr);
  CHECK(c == a);
}

TEST_CASE("EmulatedDevice: a stream waiting on another stream's event runs after it", "[device]") {
  EmulatedDevice dev;
  std::promise<void> release;
  auto gate = release.get_future().share();
  // D2H is held by a callback until the test releases it; H2D waits for D2H's event.
  REQUIRE_OK(dev.AddCallback(Stream::kD2H, [gate](absl::Status) { gate.wait(); }));
  auto d2h_done = dev.RecordEvent(Stream::kD2H);
  REQUIRE_OK(d2h_done);
  REQUIRE_OK(dev.WaitEvent(Stream::kH2D, *d2h_done));
  std::vector<uint8_t> src(64, 7), dst(64, 0);
  const CopyRegion copy[] = {{dst.data(), src.data(), src.size()}};
  REQUIRE_OK(dev.Copy(Stream::kH2D, copy));
  auto h2d_done = dev.RecordEvent(Stream::kH2D);
  REQUIRE_OK(h2d_done);
  CHECK_FALSE((*h2d_done)->Query());  // blocked behind the gate
  release.set_value();
  REQUIRE_OK((*h2d_done)->Wait());
  CHECK(dst == src);
}

TEST_CASE("EmulatedDevice: a stream can wait on a host event (disk reads feeding copies)",
          "[device]") {
  EmulatedDevice dev;
  auto host = std::make_shared<HostEvent>();
  REQUIRE_OK(dev.WaitEvent(Stream::kH2D, host));
  auto after = dev.RecordEvent(Stream::kH2D);
  REQUIRE_OK(after);
  CHECK_FALSE((*after)->Query());
  int ran = 0;
  host->Then([&] { ran++; });
  CHECK(ran == 0);
  host->Complete();
  CHECK(ran == 1);
  REQUIRE_OK((*after)->Wait());
  host->Then([&] { ran++; });  // after completion: runs at once
  CHECK(ran == 2);
}

TEST_CASE("EmulatedDevice: an injected copy failure reaches the next callback, only once",
          "[device]") {
  EmulatedDevice dev;
  std::vector<uint8_t> src(64, 9), dst(64, 0);
  const CopyRegion copy[] = {{dst.data(), src.data(), src.size()}};
  std::promise<absl::Status> first, second;
  dev.FailNextCopies(1);
  REQUIRE_OK(dev.Copy(Stream::kD2H, copy));
  REQUIRE_OK(dev.AddCallback(Stream::kD2H, [&](absl::Status s) { first.set_value(s); }));
  REQUIRE(!first.get_future().get().ok());
  CHECK(dst == std::vector<uint8_t>(64, 0));  // the failed copy wrote nothing
  REQUIRE_OK(dev.Copy(Stream::kD2H, copy));
  REQUIRE_OK(dev.AddCallback(Stream::kD2H, [&](absl::Status s) { second.set_value(s); }));
  REQUIRE_OK(second.get_future().get());
  CHECK(dst == src);
}

TEST_CASE("EmulatedDevice: Synchronize drains every stream, host memory is page-aligned",
          "[device]") {
  EmulatedDevice dev;
  std::atomic<int> done{0};  // the two streams' callbacks run on two threads
  for (int i = 0; i < 100; ++i) {
    REQUIRE_OK(dev.AddCallback(i % 2 ? Stream::kH2D : Stream::kD2H, [&](absl::Status) { done++; }));
  }
  REQUIRE_OK(dev.Synchronize());
  CHECK(done.load() == 100);
  auto mem = dev.AllocateHost(1 << 20, 0);
  REQUIRE_OK(mem);
  CHECK(reinterpret_cast<uintptr_t>(*mem) % 4096 == 0);
  CHECK(static_cast<uint8_t*>(*mem)[12345] == 0);
  dev.FreeHost(*mem, 1 << 20);
}

// The VmFlags line of the mapping that starts at `p` in /proc/self/smaps ("" if none does).
std::string VmFlagsOf(const void* p) {
  std::ifstream smaps("/proc/self/smaps");
  std::string line;
  bool in = false;
  while (std::getline(smaps, line)) {
    const size_t dash = line.find('-');
    if (dash != std::string::npos && line.find(' ') > dash && std::isxdigit(line[0])) {
      in = std::stoull(line.substr(0, dash), nullptr, 16) == reinterpret_cast<uintptr_t>(p);
    } else if (in && line.rfind("VmFlags:", 0) == 0) {
      return line;
    }
  }
  return "";
}

TEST_CASE("EmulatedDevice: host memory starts at a huge page and is advised to use them",
          "[device]") {
  // Host slots on huge pages: a block's transfer is a few scatter-gather segments, not 512 (see
  // MapHugePageAligned). Whether the kernel grants them is its business (THP may be off); the
  // alignment and the advice are kvtier's.
  EmulatedDevice dev;
  for (uint64_t bytes : {uint64_t{1} << 20, uint64_t{9} << 20, (uint64_t{64} << 20) + 8192}) {
    auto mem = dev.AllocateHost(bytes, 0);
    REQUIRE_OK(mem);
    CHECK(reinterpret_cast<uintptr_t>(*mem) % (uint64_t{2} << 20) == 0);
    const std::string flags = VmFlagsOf(*mem);
    INFO(flags);
    CHECK(flags.find(" hg") != std::string::npos);  // MADV_HUGEPAGE
    static_cast<uint8_t*>(*mem)[bytes - 1] = 1;     // all of it is mapped
    dev.FreeHost(*mem, bytes);
  }
}

}  // namespace
}  // namespace kvtier::internal
