// AtomicHistogram: records latencies into a LatencyHistogram's buckets with relaxed atomics, from
// any thread and without a lock; Snapshot() reads it.
//
// A snapshot taken while samples are recorded may count a sample in its bucket but not yet in
// sum_nanos (or the reverse); count is always the sum of the buckets, so a Prometheus +Inf bucket
// equals its _count.
#ifndef KVTIER_LIB_COMMON_HISTOGRAM_H_
#define KVTIER_LIB_COMMON_HISTOGRAM_H_

#include <array>
#include <atomic>
#include <chrono>
#include <cstdint>

#include "kvtier/stats.h"

namespace kvtier::internal {

// Nanoseconds on the monotonic clock, for latencies.
inline uint64_t MonotonicNanos() {
  return static_cast<uint64_t>(std::chrono::duration_cast<std::chrono::nanoseconds>(
                                   std::chrono::steady_clock::now().time_since_epoch())
                                   .count());
}

class AtomicHistogram {
 public:
  void Record(uint64_t nanos) {
    buckets_[LatencyHistogram::BucketFor(nanos)].fetch_add(1, std::memory_order_relaxed);
    sum_nanos_.fetch_add(nanos, std::memory_order_relaxed);
  }
  // Records the time since `start_nanos` (a MonotonicNanos() value).
  void RecordSince(uint64_t start_nanos) {
    const uint64_t now = MonotonicNanos();
    Record(now > start_nanos ? now - start_nanos : 0);
  }
  LatencyHistogram Snapshot() const {
    LatencyHistogram h;
    for (int i = 0; i < LatencyHistogram::kBuckets; ++i) {
      h.buckets[i] = buckets_[i].load(std::memory_order_relaxed);
      h.count += h.buckets[i];
    }
    h.sum_nanos = sum_nanos_.load(std::memory_order_relaxed);
    return h;
  }

 private:
  std::array<std::atomic<uint64_t>, LatencyHistogram::kBuckets> buckets_{};
  std::atomic<uint64_t> sum_nanos_{0};
};

}  // namespace kvtier::internal

#endif  // KVTIER_LIB_COMMON_HISTOGRAM_H_
