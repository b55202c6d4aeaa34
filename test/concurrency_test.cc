// Concurrency: scheduler threads match, allocate and start loads; worker threads wait, check every
// byte, compute the rest, commit and release; an observer reads stats and checks invariants.
// Requests share prefixes, so the threads contend on the same blocks. Run under the tsan preset.
#include <atomic>
#include <condition_variable>
#include <deque>
#include <filesystem>
#include <mutex>
#include <random>
#include <thread>

#include "kvtier/cache.h"
#include "lib/tiers/disk_tier.h"
#include "test/util/test_util.h"

namespace kvtier {
namespace {

using test::EngineKv;

struct Job {
  std::vector<BlockKey> keys;
  DeviceLease lease;
  Transfer transfer;
};

class JobQueue {
 public:
  void Push(Job job) {
    std::lock_guard<std::mutex> l(mu_);
    jobs_.push_back(std::move(job));
    cv_.notify_one();
  }
  // Empty optional once every producer is done and the queue is drained.
  std::optional<Job> Pop() {
    std::unique_lock<std::mutex> l(mu_);
    cv_.wait(l, [&] { return !jobs_.empty() || producers_ == 0; });
    if (jobs_.empty()) return std::nullopt;
    Job j = std::move(jobs_.front());
    jobs_.pop_front();
    return j;
  }
  void ProducerDone() {
    std::lock_guard<std::mutex> l(mu_);
    producers_--;
    cv_.notify_all();
  }
  size_t size() {
    std::lock_guard<std::mutex> l(mu_);
    return jobs_.size();
  }
  explicit JobQueue(int producers) : producers_(producers) {}

 private:
  std::mutex mu_;
  std::condition_variable cv_;
  std::deque<Job> jobs_;
  int producers_;
};

#if defined(__SANITIZE_THREAD__) || defined(__SANITIZE_ADDRESS__)
constexpr int kRequestsPerScheduler = 400;
#else
constexpr int kRequestsPerScheduler = 2000;
#endif

TEST_CASE("Cache concurrency: schedulers and workers share prefixes without a wrong byte",
          "[concurrency]") {
  const bool with_disk = GENERATE(false, true);
  CAPTURE(with_disk);
  EngineKv kv({.layers = 2, .segment_bytes = 256, .num_slots = 32});
  Options o = test::MakeOptions(kv, 24);
  const std::filesystem::path dir =
      std::filesystem::current_path() / ("concurrency_test." + std::to_string(getpid()));
  std::filesystem::remove_all(dir);
  if (with_disk) {
    std::filesystem::create_directories(dir);
    const uint32_t align = *internal::DiskTier::Alignment(dir.string());
    o.disk = {
        .directory = dir.string(),
        .capacity_bytes = 64 * internal::DiskTier::HostSlotBytes(kv.layout().block_bytes(), align)};
  }
  {
    auto created = Cache::Create(o);
    REQUIRE_OK(created);
    Cache& cache = **created;
    std::vector<std::vector<BlockKey>> bases;
    for (uint32_t b = 0; b < 6; ++b) bases.push_back(test::Chain(6, 500 + b));

    JobQueue queue(/*producers=*/2);
    std::atomic<uint64_t> mismatched{0}, loaded{0}, committed{0}, exhausted{0}, errors{0},
        load_failures{0};
    std::atomic<bool> done{false};
    auto scheduler = [&](uint32_t seed) {
      std::mt19937 rng(seed);
      for (int i = 0; i < kRequestsPerScheduler; ++i) {
        // Backpressure instead of sleeping: don't run far ahead of the workers.
        while (queue.size() > 4) std::this_thread::yield();
        const auto& base = bases[rng() % bases.size()];
        std::vector<BlockKey> keys(base.begin(), base.begin() + 1 + rng() % base.size());
        auto match = cache.Match(keys);
        auto lease = cache.AllocateDevice(static_cast<uint32_t>(keys.size()));
        if (!match.ok()) {
          errors++;
          continue;
        }
        if (!lease.ok()) {
          if (lease.status().code() != absl::StatusCode::kResourceExhausted) errors++;
          exhausted++;
          continue;
        }
        auto xfer = cache.Load(*match, *lease);
        if (!xfer.ok()) {
          errors++;
          continue;
        }
        queue.Push(Job{std::move(keys), std::move(*lease), std::move(*xfer)});
      }
      queue.ProducerDone();
    };
    auto worker = [&] {
      while (std::optional<Job> job = queue.Pop()) {
        // No fault is injected: a failed load is an error, not "0 loaded".
        const bool ok = job->transfer.Wait().ok();
        if (!ok) load_failures++;
        const uint32_t blocks = ok ? job->transfer.blocks() : 0;
        const auto slots = job->lease.slots();
        for (uint32_t i = 0; i < blocks; ++i) mismatched += kv.Mismatches(slots[i], job->keys[i]);
        for (uint32_t i = blocks; i < job->keys.size(); ++i) kv.Write(slots[i], job->keys[i]);
        loaded += blocks;
        const absl::Status s = cache.Commit(job->keys, job->lease);
        if (s.ok()) {
          committed++;
        } else if (s.code() != absl::StatusCode::kAlreadyExists) {  // a racing commit is legal
          errors++;
        }
        if (job->keys.size() % 2 == 0) {
          if (!cache.Release(job->lease).ok()) errors++;
        }  // else the lease's destructor releases it
      }
    };
    std::thread observer([&] {
      while (!done.load()) {
        const CacheStats s = cache.Stats();
        if (s.device.used_blocks > s.device.capacity_blocks) errors++;
        if (!cache.CheckInvariants().ok()) errors++;
        std::this_thread::yield();
      }
    });
    std::vector<std::thread> threads;
    threads.emplace_back(scheduler, 1);
    threads.emplace_back(scheduler, 2);
    threads.emplace_back(worker);
    threads.emplace_back(worker);
    for (auto& t : threads) t.join();
    done = true;
    observer.join();

    CHECK(errors == 0);
    CHECK(load_failures == 0);
    CHECK(mismatched == 0);
    CHECK(committed > 0);
    CHECK(loaded > 0);
    REQUIRE_OK(cache.CheckInvariants());
    const CacheStats s = cache.Stats();
    CHECK(s.leases_live == 0);
    CHECK(s.device.pinned_blocks == 0);
    CHECK(s.transfer_failures == 0);
    if (with_disk) CHECK(s.disk_corrupt_reads == 0);
  }
  std::filesystem::remove_all(dir);
}

}  // namespace
}  // namespace kvtier
