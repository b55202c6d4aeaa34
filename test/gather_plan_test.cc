// The gather kernel's index and alignment arithmetic (cuda/gather_plan.h), run on the CPU: the
// same functions the GPU runs, every thread of a grid played in turn.
#include "cuda/gather_plan.h"

#include <cstdint>
#include <vector>

#include "test/util/test_util.h"

namespace kvtier::internal {
namespace {

TEST_CASE("GatherPlan: the widest common word, a head up to its boundary, and a tail", "[gather]") {
  auto check = [](uint64_t dst, uint64_t src, uint64_t bytes, uint32_t width, uint64_t head) {
    const CopyPlan p = PlanCopy(dst, src, bytes);
    CAPTURE(dst, src, bytes);
    CHECK(p.width == width);
    CHECK(p.head == head);
    CHECK(p.head + p.words * p.width + p.tail == bytes);
    CHECK(p.tail < (p.width == 1 ? 1u : p.width));
    if (p.words > 0) CHECK((dst + p.head) % p.width == 0);
  };
  check(0x1000, 0x2000, 4096, 16, 0);
  check(0x1008, 0x2008, 4096, 16, 8);   // same offset mod 16: peel 8 bytes, then 16-byte words
  check(0x1008, 0x2000, 4096, 8, 0);    // 8 apart: 8-byte words
  check(0x1004, 0x2008, 4096, 4, 0);    // 4 apart: 4-byte words
  check(0x1001, 0x2003, 4096, 1, 0);    // 2 apart: bytes
  check(0x1003, 0x2003, 4096, 16, 13);  // head peeling to the 16-byte boundary
  check(0x1003, 0x2003, 5, 16, 5);      // shorter than the head: all head
  check(0x1000, 0x2000, 0, 16, 0);
}

TEST_CASE("GatherPlan: every byte is copied exactly once for odd alignments, sizes and grids",
          "[gather]") {
  std::vector<unsigned char> src(8192), dst(8192);
  for (size_t i = 0; i < src.size(); ++i) src[i] = static_cast<unsigned char>(i * 7 + 3);
  const uint64_t sizes[] = {0, 1, 3, 15, 16, 17, 63, 100, 1000, 4097};
  const uint64_t offsets[] = {0, 1, 3, 4, 8, 12, 15};
  const uint64_t thread_counts[] = {1, 3, 32, 256, 1000};
  for (uint64_t bytes : sizes) {
    for (uint64_t so : offsets) {
      for (uint64_t doff : offsets) {
        for (uint64_t threads : thread_counts) {
          std::fill(dst.begin(), dst.end(), 0xEE);
          // Align the bases to 16 so that the offsets are the alignments.
          auto base = [](std::vector<unsigned char>& v) {
            auto p = reinterpret_cast<uintptr_t>(v.data());
            return v.data() + ((16 - p % 16) % 16);
          };
          unsigned char* d = base(dst) + doff;
          const unsigned char* s = base(src) + so;
          for (uint64_t tid = 0; tid < threads; ++tid) CopyRegionShare(d, s, bytes, tid, threads);
          CAPTURE(bytes, so, doff, threads);
          bool same = true;
          for (uint64_t i = 0; i < bytes; ++i) same = same && d[i] == s[i];
          CHECK(same);
          // Nothing outside the region is touched.
          const unsigned char* lo = dst.data();
          bool clean = true;
          for (const unsigned char* p = lo; p < d; ++p) clean = clean && *p == 0xEE;
          for (const unsigned char* p = d + bytes; p < dst.data() + dst.size(); ++p) {
            clean = clean && *p == 0xEE;
          }
          CHECK(clean);
        }
      }
    }
  }
}

TEST_CASE("GatherPlan: the grid is capped at max_ctas and never empty", "[gather]") {
  const uint64_t pass = 16384;
  GatherGrid g = PlanGrid(512, 1 << 20, pass, 16, 66);
  CHECK(g.x * g.y <= 66);
  CHECK(g.x == 16);
  CHECK(g.y == 4);
  g = PlanGrid(3, 100, pass, 16, 66);
  CHECK(g.x == 1);
  CHECK(g.y == 3);
  g = PlanGrid(512, 1 << 20, pass, 16, 1);
  CHECK(g.x == 1);
  CHECK(g.y == 1);
  g = PlanGrid(0, 0, pass, 16, 0);
  CHECK(g.x == 1);
  CHECK(g.y == 1);
}

}  // namespace
}  // namespace kvtier::internal
