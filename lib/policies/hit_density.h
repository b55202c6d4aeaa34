// HitDensity: how many hits a block of a class earns per slot-access it occupies, learnt online
// (LHD, Beckmann et al., NSDI'18, with KV classes). kv_adaptive's third victim rule and its shadow.
//
// A block's class is what the tier knows of it when it is accessed: whether it ended its request
// (a dead tip) and the log10 bucket of the gap since its previous access (never seen, 1-9, ...,
// 10^5 and more, or seen but when is unknown: it came back from the ghost lists). For a hash
// sample of the accesses, a history of the last `window` accesses records each one's class and,
// when the block is accessed again within the window, the distance (log2 buckets); an entry that
// leaves the window unreused counts as never reused. Every `period` sampled accesses the
// histograms become a table: for each class and age bucket, the best over horizons of hits per
// slot-access spent among blocks that reached that age (LHD's hit density, ages and distances at
// their bucket's middle). bench/belady_gap_study.py is this rule in Python, unsampled
// (docs/policies.md §8, N4 and H6).
//
// Nothing here is fitted to a trace: the window (8 x the tier's capacity, so that the tier's own
// lifetimes fit in it) and the period are the study's. Not thread-safe: a policy runs under its
// tier's lock. Everything is allocated by the constructor (the history's ring and its index, for
// the window's expected sampled accesses; the index grows only past that).
#ifndef KVTIER_LIB_POLICIES_HIT_DENSITY_H_
#define KVTIER_LIB_POLICIES_HIT_DENSITY_H_

#include <algorithm>
#include <array>
#include <bit>
#include <cstdint>
#include <vector>

#include "absl/container/flat_hash_map.h"

namespace kvtier::internal {

class HitDensity {
 public:
  static constexpr int kGapBuckets = 8;  // 0: never seen, 1..6: log10(gap) 0..5+, 7: unknown
  static constexpr int kGapUnknown = 7;
  static constexpr int kClasses = 2 * kGapBuckets;  // x dead tip
  static constexpr int kAges = 24;                  // log2 buckets of age and distance
  static constexpr uint32_t kPeriod = 256;          // sampled accesses between two tables

  // window: accesses a history entry waits for its block's next access; rate: one id in `rate`
  // is sampled (the caller decides which, and calls Observe for those); period: Observe calls
  // between two tables.
  HitDensity(uint64_t window, uint32_t rate, uint32_t period = kPeriod)
      : window_(window), period_(period), ring_(static_cast<size_t>(2 * window / rate + 64)) {
    index_.reserve(window / rate + 64);
  }

  static constexpr int GapBucket(uint64_t gap) {
    int b = 1;
    for (uint64_t g = gap; g >= 10 && b < 6; g /= 10) b++;
    return b;
  }
  static constexpr uint8_t ClassOf(bool tip, int gap_bucket) {
    return static_cast<uint8_t>((tip ? kGapBuckets : 0) + gap_bucket);
  }
  static constexpr int GapOf(uint8_t cls) { return cls % kGapBuckets; }  // ClassOf's gap_bucket

  // A sampled access of `id`, of class `cls`, at access clock `now` (non-decreasing).
  void Observe(uint64_t id, uint8_t cls, uint64_t now) {
    Expire(now);
    const uint64_t seq = head_ + count_;  // the new entry's; a Drop below does not change it
    if (const auto [it, fresh] = index_.try_emplace(id, seq); !fresh) {  // a reuse in the window
      Entry& e = ring_[it->second % ring_.size()];
      hist_[e.cls][Bucket(now - e.time)] += 1;
      e.reused = true;
      it->second = seq;
    }
    if (count_ == ring_.size()) Drop();  // more sampled accesses than expected in a window
    ring_[seq % ring_.size()] = Entry{.id = id, .time = now, .cls = cls, .reused = false};
    count_++;
    if (++since_table_ >= period_) Rebuild();
  }
  // The block's last access ended its request (known only at the next request's start).
  void MarkTip(uint64_t id) {
    if (auto it = index_.find(id); it != index_.end()) {
      Entry& e = ring_[it->second % ring_.size()];
      e.cls = ClassOf(true, GapOf(e.cls));
    }
  }
  // Expected hits per slot-access of a block of class `cls` last accessed `age` accesses ago
  // (a class not seen yet: all classes'; 0 before the first table).
  float Density(uint8_t cls, uint64_t age) const { return table_[cls][Bucket(age)]; }
  // Density, then age, as one key: the least is the victim (the oldest of equal densities; before
  // the first table, the oldest: LRU). A non-negative float's bits order as its value does.
  uint64_t Rank(uint8_t cls, uint64_t age) const {
    return (uint64_t{std::bit_cast<uint32_t>(Density(cls, age))} << 32) |
           (0xFFFFFFFFu - std::min<uint64_t>(age, 0xFFFFFFFFu));
  }

 private:
  struct Entry {
    uint64_t id = 0;
    uint64_t time = 0;
    uint8_t cls = 0;
    bool reused = false;
  };
  using Histogram = std::array<double, kAges + 1>;  // [kAges]: not reused within the window

  static int Bucket(uint64_t a) { return std::min<int>(kAges - 1, std::bit_width(a)); }

  void Expire(uint64_t now) {
    while (count_ > 0 && ring_[head_ % ring_.size()].time + window_ < now) Drop();
  }
  void Drop() {
    const Entry& e = ring_[head_ % ring_.size()];
    if (!e.reused) hist_[e.cls][kAges] += 1;
    if (auto it = index_.find(e.id); it != index_.end() && it->second == head_) index_.erase(it);
    head_++;
    count_--;
  }
  void Rebuild() {
    since_table_ = 0;
    Histogram all{};
    std::array<bool, kClasses> seen{};
    for (int c = 0; c < kClasses; ++c) {
      for (int a = 0; a <= kAges; ++a) {
        all[a] += hist_[c][a];
        seen[c] = seen[c] || hist_[c][a] > 0;
      }
    }
    std::array<float, kAges> all_row;
    Densities(all, all_row);
    for (int c = 0; c < kClasses; ++c) {
      if (seen[c]) {
        Densities(hist_[c], table_[c]);
      } else {
        table_[c] = all_row;
      }
    }
  }
  // For each age bucket a: the best, over horizons e >= a, of hits per slot-access spent by the
  // blocks that reached age a, if each stays until its hit or until the horizon.
  static void Densities(const Histogram& h, std::array<float, kAges>& row) {
    Histogram beyond{};  // beyond[e]: entries in buckets > e (never reused included)
    for (int e = kAges - 1; e >= 0; --e) beyond[e] = beyond[e + 1] + h[e + 1];
    for (int a = 0; a < kAges; ++a) {
      const double start = static_cast<double>(uint64_t{1} << a);
      double best_hits = 0, best_total = 1, hits = 0, spent = 0;  // best: a fraction, no division
      for (int e = a; e < kAges; ++e) {
        const double at = static_cast<double>(uint64_t{1} << e);
        hits += h[e];
        spent += h[e] * (e > a ? 1.5 * at - start : 0.5 * start + 1);
        const double total = spent + beyond[e] * (2 * at - start);
        if (hits * best_total > best_hits * total) {
          best_hits = hits;
          best_total = total;
        }
      }
      row[a] = static_cast<float>(best_hits / best_total);
    }
  }

  const uint64_t window_;
  const uint32_t period_;    // Observe calls between two tables
  std::vector<Entry> ring_;  // the sampled accesses of the window, oldest at head_
  uint64_t head_ = 0, count_ = 0;
  absl::flat_hash_map<uint64_t, uint64_t> index_;  // id -> its newest entry's sequence number
  std::array<Histogram, kClasses> hist_{};
  std::array<std::array<float, kAges>, kClasses> table_{};  // Density by class and age bucket
  uint32_t since_table_ = 0;                                // Observe calls since the last Rebuild
};

}  // namespace kvtier::internal

#endif  // KVTIER_LIB_POLICIES_HIT_DENSITY_H_
