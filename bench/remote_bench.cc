// Remote tier benchmarks: the RedisCluster client (lib/tiers/redis_cluster.h) moving whole blocks
// to and from a local Redis Cluster, to be compared with redis-benchmark on the same cluster by
// bench/remote_vs_redis_benchmark.sh.
//
// BM_RemoteSet/<value bytes>/<batch>, BM_RemoteGet/...: one pipelined batch of `batch` keys per
// iteration (spread over the masters evenly); bytes_per_second counts value bytes. With
// /threads:3, three callers do so at once (keys of their own; with batch 1, one per master).
// Cluster: the one named by $KVTIER_BENCH_REDIS_SEEDS ("host:port,host:port"; the script's), else
// a 3-master LocalRedisCluster started here (needs redis-server and redis-cli; skipped without).
//
// BM_RemoteGet reads with GetInto (values received off the socket straight into the caller's
// buffers, as the remote tier reads into host slots); BM_RemoteSet sends values from the
// caller's memory. Neither allocates per value: with per-reply allocations, glibc handed large
// freed replies back to the kernel after each batch and the next one faulted them in again
// (7-15x slower for 256 KiB values on this VM).
#include <benchmark/benchmark.h>

#include <chrono>
#include <cstdlib>
#include <memory>
#include <set>
#include <string>
#include <string_view>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "lib/tiers/redis_cluster.h"
#include "test/util/redis_cluster_fixture.h"

namespace {

using kvtier::internal::RedisCluster;
using kvtier::test::LocalRedisCluster;

struct Remote {
  std::unique_ptr<LocalRedisCluster> cluster;  // null when $KVTIER_BENCH_REDIS_SEEDS is used
  std::unique_ptr<RedisCluster> client;
  std::string error;  // why there is no client
};

Remote& GetRemote() {
  static Remote remote = [] {
    Remote r;
    std::vector<std::string> seeds;
    if (const char* env = std::getenv("KVTIER_BENCH_REDIS_SEEDS"); env != nullptr && *env) {
      seeds = absl::StrSplit(env, ',', absl::SkipEmpty());
    } else {
      std::string why;
      if (!LocalRedisCluster::Available(&why)) {
        r.error = why;
        return r;
      }
      auto started = LocalRedisCluster::Start({.masters = 3});
      if (!started.ok()) {
        r.error = started.status().ToString();
        return r;
      }
      r.cluster = std::move(*started);
      seeds = r.cluster->seeds();
    }
    auto client = RedisCluster::Connect({.seeds = seeds});
    if (!client.ok()) {
      r.error = client.status().ToString();
    } else {
      r.client = std::move(*client);
    }
    return r;
  }();
  return remote;
}

// `batch` keys for caller `thread`: key i on master (thread + i) mod masters, so a batch is
// spread over the masters evenly and, with one key per batch, caller t keeps master t busy (as
// redis-benchmark -c <masters> keeps one client on each master).
std::vector<std::string> Keys(const RedisCluster& client, int64_t value_bytes, int64_t batch,
                              int thread) {
  std::set<std::string> found;
  for (int slot = 0; slot < 16384; ++slot) found.insert(client.NodeForSlot(slot));
  const std::vector<std::string> masters(found.begin(), found.end());
  std::vector<std::string> keys;
  for (int64_t i = 0, j = 0; static_cast<int64_t>(keys.size()) < batch; ++j) {
    std::string key = absl::StrCat("kvtier:bench:", value_bytes, ":", thread, ":", j);
    if (client.NodeForSlot(RedisCluster::KeySlot(key)) != masters[(thread + i) % masters.size()]) {
      continue;
    }
    keys.push_back(std::move(key));
    ++i;
  }
  return keys;
}

RedisCluster::Clock::time_point Deadline() {
  return RedisCluster::Clock::now() + std::chrono::seconds(30);
}

// One benchmark point: its client, `batch` keys and one value of `bytes` for each.
struct Point {
  RedisCluster* client = nullptr;
  int64_t bytes = 0, batch = 0;
  std::vector<std::string> keys;
  std::string value;
  std::vector<std::string_view> values;
};

// Fills *p in place (its values point into its value); false when the state was skipped.
bool Setup(benchmark::State& state, Point* p) {
  Remote& r = GetRemote();
  if (r.client == nullptr) {
    state.SkipWithError(("no Redis Cluster: " + r.error).c_str());
    return false;
  }
  p->client = r.client.get();
  p->bytes = state.range(0);
  p->batch = state.range(1);
  p->keys = Keys(*p->client, p->bytes, p->batch, state.thread_index());
  p->value.assign(static_cast<size_t>(p->bytes), 'k');
  p->values.assign(p->keys.size(), p->value);
  return true;
}

// Counts value bytes and values.
void Count(benchmark::State& state, const Point& p) {
  state.SetBytesProcessed(state.iterations() * p.batch * p.bytes);
  state.SetItemsProcessed(state.iterations() * p.batch);
}

void BM_RemoteSet(benchmark::State& state) {
  Point p;
  if (!Setup(state, &p)) return;
  for (auto _ : state) {
    for (const absl::Status& s : p.client->Set(p.keys, p.values, 0, Deadline())) {
      if (!s.ok()) return state.SkipWithError(s.ToString().c_str());
    }
  }
  Count(state, p);
}

void BM_RemoteGet(benchmark::State& state) {
  Point p;
  if (!Setup(state, &p)) return;
  for (const absl::Status& s : p.client->Set(p.keys, p.values, 0, Deadline())) {
    if (!s.ok()) return state.SkipWithError(s.ToString().c_str());
  }
  // Into the caller's buffers, as the remote tier reads blocks into host slots.
  std::vector<std::string> dst(p.keys.size(), std::string(p.value.size(), '\0'));
  std::vector<RedisCluster::ReadTarget> targets;
  for (std::string& d : dst) targets.push_back({.body = d.data(), .body_len = d.size()});
  for (auto _ : state) {
    for (const auto& got : p.client->GetInto(p.keys, targets, Deadline())) {
      if (!got.ok() || !got->has_value() || **got != p.value.size()) {
        return state.SkipWithError(got.ok() ? "GET: missing or short value"
                                            : got.status().ToString().c_str());
      }
    }
  }
  Count(state, p);
}

void RemoteArgs(benchmark::internal::Benchmark* b) {
  for (int64_t bytes : {64 << 10, 256 << 10, 2 << 20}) {
    for (int64_t batch : {1, 8, 64}) b->Args({bytes, batch});
  }
  b->UseRealTime();
}

// One caller (compare with redis-benchmark -c 1), and three callers, each with its batch in
// flight, as redis-benchmark -c 3 keeps one client per master (bytes_per_second: all of them).
BENCHMARK(BM_RemoteSet)->Apply(RemoteArgs);
BENCHMARK(BM_RemoteGet)->Apply(RemoteArgs);
BENCHMARK(BM_RemoteSet)->Apply(RemoteArgs)->Threads(3);
BENCHMARK(BM_RemoteGet)->Apply(RemoteArgs)->Threads(3);

}  // namespace
