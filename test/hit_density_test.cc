// HitDensity (lib/policies/hit_density.h): the gap buckets and classes, hit densities computed by
// hand from what was observed, the window that turns a late reuse into "never", tips learnt apart,
// unseen classes, the rank order victims are taken in and the period between tables; ShadowDuel's
// hysteresis between hit density and ARC, the rule it picks, and its samples (the learner's
// sees every id while its window fits the budget; the shadows' lies inside it).
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

TEST_CASE("HitDensity: a new table every `period` observations", "[policy]") {
  HitDensity d(/*window=*/64, /*rate=*/1, /*period=*/8);
  // Blocks 1..4 each reused at distance 4: the table is all zero until the eighth observation.
  uint64_t now = 0;
  for (uint64_t id = 1; id <= 4; ++id) d.Observe(id, Gap(0), ++now);
  for (uint64_t id = 1; id <= 3; ++id) d.Observe(id, Gap(1), ++now);
  CHECK(d.Density(Gap(0), 4) == 0);
  d.Observe(4, Gap(1), ++now);
  CHECK(d.Density(Gap(0), 4) > 0);
}

// How many of the ids 0..n-1 the duel watches (passes to Access, Tip, Arrive, Dead).
uint64_t Watched(const ShadowDuel& duel, uint64_t n) {
  uint64_t k = 0;
  for (uint64_t id = 0; id < n; ++id) k += duel.Watched(id) ? 1 : 0;
  return k;
}

TEST_CASE("ShadowDuel: the learner sees every access while its window fits its budget",
          "[policy]") {
  constexpr uint64_t kIds = 16'000;
  // 100 slots: shadows of 128 ids or fewer sample every id (R = 1).
  CHECK(Watched(ShadowDuel(100, 0, 4, /*density=*/false), kIds) == kIds);
  // 4,096 slots: the shadows sample one id in 16; the learner, whose window of 8 x 4,096
  // accesses fits kLearnBudget, every id.
  static_assert(8 * 4096 <= ShadowDuel::kLearnBudget);
  const uint64_t shadows = Watched(ShadowDuel(4096, 0, 4, false), kIds);
  CHECK(shadows > kIds / 16 * 8 / 10);
  CHECK(shadows < kIds / 16 * 12 / 10);
  CHECK(Watched(ShadowDuel(4096, 0, 4, /*density=*/true), kIds) == kIds);
  // 2^20 slots: the learner's window is 256x its budget, so it samples one id in 256, inside the
  // shadows' one in 16: the duel watches the shadows' sample.
  CHECK(Watched(ShadowDuel(1 << 20, 0, 4, true), kIds) == shadows);
  // Another sample_seed samples other ids, as many.
  const ShadowDuel seed0(4096, 0, 4, false), seed1(4096, 0, 4, false, /*sample_seed=*/1);
  uint64_t both = 0;
  for (uint64_t id = 0; id < kIds; ++id) both += seed0.Watched(id) && seed1.Watched(id) ? 1 : 0;
  CHECK(both < shadows / 4);
  CHECK(Watched(seed1, kIds) > kIds / 16 * 8 / 10);
}

TEST_CASE("ShadowDuel: hit density learns from ids the shadows do not sample", "[policy]") {
  // 4,096 slots: a table every kPeriod x 16 learnt accesses. Blocks each reused 8 accesses later:
  // one table's worth of accesses teaches the learner their density (zero before).
  ShadowDuel duel(4096, 0, 4, /*density=*/true);
  const uint64_t period = uint64_t{HitDensity::kPeriod} * 16;
  uint64_t now = 0;
  for (uint64_t round = 0; now < period - 1; ++round) {
    for (uint64_t k = 0; k < 8 && now < period - 1; ++k) duel.Access(round * 8 + k, Gap(0), ++now);
    for (uint64_t k = 0; k < 8 && now < period - 1; ++k) duel.Access(round * 8 + k, Gap(1), ++now);
  }
  CHECK(duel.density().Density(Gap(0), 8) == 0);
  duel.Access(1'000'000, Gap(0), ++now);
  CHECK(duel.density().Density(Gap(0), 8) > 0);
}

}  // namespace
}  // namespace kvtier::internal
