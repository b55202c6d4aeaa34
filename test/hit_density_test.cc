// HitDensity (lib/policies/hit_density.h): the gap buckets and classes, hit densities computed by
// hand from what was observed, the window that turns a late reuse into "never", tips learnt apart,
// unseen classes, and the rank order victims are taken in; ShadowDuel's hysteresis between hit
// density and ARC.
#include "lib/policies/hit_density.h"

#include "lib/policies/shadow_caches.h"
#include "test/util/test_util.h"

namespace kvtier::internal {
namespace {

constexpr uint8_t Gap(int bucket) { return HitDensity::ClassOf(false, bucket); }

TEST_CASE("HitDensity: gap buckets are log10 of the gap, classes split dead tips", "[policy]") {
  CHECK(HitDensity::GapBucket(1) == 1);
  CHECK(HitDensity::GapBucket(9) == 1);
  CHECK(HitDensity::GapBucket(10) == 2);
  CHECK(HitDensity::GapBucket(99'999) == 5);
  CHECK(HitDensity::GapBucket(100'000) == 6);
  CHECK(HitDensity::GapBucket(uint64_t{1} << 60) == 6);
  CHECK(HitDensity::ClassOf(false, 3) == 3);
  CHECK(HitDensity::ClassOf(true, 3) == HitDensity::kGapBuckets + 3);
  static_assert(HitDensity::kGapUnknown < HitDensity::kGapBuckets);
}

// Rounds of three sampled accesses, 8 clock ticks apart: an `a` block reused 4 ticks later as a
// `c` access, and a `b` block never reused. Enough rounds for several tables (one per kPeriod).
void Feed(HitDensity& d, uint8_t a, uint8_t b, uint8_t c, bool a_is_tip = false) {
  uint64_t now = 0;
  for (uint64_t k = 0; k < 2 * HitDensity::kPeriod; ++k, now += 8) {
    d.Observe(1'000'000 + k, a, now);
    if (a_is_tip) d.MarkTip(1'000'000 + k);
    d.Observe(2'000'000 + k, b, now + 1);
    d.Observe(1'000'000 + k, c, now + 4);  // distance 4: age bucket bit_width(4) = 3
  }
}

TEST_CASE("HitDensity: densities by age, computed by hand from the observed distances",
          "[policy]") {
  HitDensity d(/*window=*/64, /*rate=*/1);
  const uint8_t a = Gap(2), b = Gap(3), c = Gap(4);
  Feed(d, a, b, c);
  // Class a: every block hits at distance 4 (bucket 3, taken at its middle, 1.5 x 8 = 12), none
  // is left. From age 0 (bucket 0, start 1): n hits for n x (12 - 1) slot-accesses = 1/11. From
  // age 4..7 (bucket 3, start 8; a hit within the block's own bucket costs 0.5 x 8 + 1): 1/5.
  // Past it (bucket 4): nothing left to hit.
  CHECK(d.Density(a, 0) == Approx(1.0 / 11));
  CHECK(d.Density(a, 1) == Approx(1.0 / 10));  // bucket 1, start 2: 12 - 2
  CHECK(d.Density(a, 4) == Approx(1.0 / 5));
  CHECK(d.Density(a, 7) == Approx(1.0 / 5));
  CHECK(d.Density(a, 8) == 0);
  // Classes b and c: never reused within the window of 64 ticks.
  CHECK(d.Density(b, 0) == 0);
  CHECK(d.Density(c, 0) == 0);
  // A class not seen: all classes' row. a's hits among everyone's (b and c never hit): less
  // than a's density, more than none.
  const uint8_t unseen = Gap(6);
  CHECK(d.Density(unseen, 0) > 0);
  CHECK(d.Density(unseen, 0) < d.Density(a, 0));
  // Rank: the least dense first, and of equal densities the oldest.
  CHECK(d.Rank(b, 1) < d.Rank(a, 4));  // b: density 0, a at 4..7: 1/5
  CHECK(d.Rank(b, 100) < d.Rank(b, 1));
  CHECK(d.Rank(a, 8) < d.Rank(a, 4));  // past its reuse: density 0
}

TEST_CASE("HitDensity: a reuse after the window is no hit, and tips are learnt apart", "[policy]") {
  SECTION("window") {
    HitDensity d(/*window=*/3, /*rate=*/1);  // distance 4 is beyond it
    Feed(d, Gap(2), Gap(3), Gap(4));
    CHECK(d.Density(Gap(2), 0) == 0);
    CHECK(d.Density(Gap(2), 4) == 0);
  }
  SECTION("tips") {
    HitDensity d(/*window=*/64, /*rate=*/1);
    Feed(d, Gap(2), Gap(3), Gap(4), /*a_is_tip=*/true);
    // The hits were learnt for the tip class, and the non-tip class has none of its own.
    CHECK(d.Density(HitDensity::ClassOf(true, 2), 0) == Approx(1.0 / 11));
    CHECK(d.Density(Gap(2), 0) < d.Density(HitDensity::ClassOf(true, 2), 0));
  }
  SECTION("before the first table every density is 0 and the oldest goes first") {
    HitDensity d(/*window=*/64, /*rate=*/1);
    d.Observe(1, Gap(2), 0);
    d.Observe(1, Gap(2), 4);
    CHECK(d.Density(Gap(2), 0) == 0);
    CHECK(d.Rank(Gap(5), 10) < d.Rank(Gap(2), 3));
  }
}

TEST_CASE("ShadowDuel: hit density takes over from ARC, and back, only past the noise",
          "[policy]") {
  // The margin is the square root of the larger decayed count: 10 at 100.
  CHECK_FALSE(ShadowDuel::DensityLeads(false, 100, 105));
  CHECK(ShadowDuel::DensityLeads(false, 100, 111));
  CHECK(ShadowDuel::DensityLeads(true, 100, 95));  // in force: stays within the noise
  CHECK_FALSE(ShadowDuel::DensityLeads(true, 100, 89));
  CHECK_FALSE(ShadowDuel::DensityLeads(false, 0, 0));
}

TEST_CASE("ShadowDuel: recency wins only where it leads the rule in force", "[policy]") {
  using R = ShadowDuel::Rule;
  // Hit density not in force: LRU against ARC alone, as before the third rule.
  CHECK(ShadowDuel::Pick(false, /*arc=*/100, /*lru=*/101, /*lhd=*/500) == R::kLru);
  CHECK(ShadowDuel::Pick(false, 100, 99, 0) == R::kArc);
  CHECK(ShadowDuel::Pick(false, 100, 100, 0) == R::kArc);  // a tie keeps ARC's
  // In force: LRU must lead density too, though it leads ARC.
  CHECK(ShadowDuel::Pick(true, 100, 110, 120) == R::kDensity);
  CHECK(ShadowDuel::Pick(true, 100, 130, 120) == R::kLru);
  CHECK(ShadowDuel::Pick(true, 100, 90, 95) == R::kDensity);
}

}  // namespace
}  // namespace kvtier::internal
