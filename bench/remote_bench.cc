// Remote tier benchmarks: the RedisCluster client (lib/tiers/redis_cluster.h) moving whole blocks
// to and from a local Redis Cluster, to be compared with redis-benchmark on the same cluster by
// bench/remote_vs_redis_benchmark.sh.
//
// BM_RemoteSet/<value bytes>/<batch>, BM_RemoteGet/...: one pipelined batch of `batch` keys per
// iteration (spread over the masters by their slots); bytes_per_second counts value bytes.
// Cluster: the one named by $KVTIER_BENCH_REDIS_SEEDS ("host:port,host:port"; the script's), else
// a 3-master LocalRedisCluster started here (needs redis-server and redis-cli; skipped without).
//
// BM_RemoteGet reads with GetInto (values copied once, from the connection's buffer into the
// caller's, as the remote tier reads into host slots); BM_RemoteSet sends values from the
// caller's memory. Neither allocates per value: with per-reply allocations, glibc handed large
// freed replies back to the kernel after each batch and the next one faulted them in again
// (7-15x slower for 256 KiB values on this VM).
#include <benchmark/benchmark.h>

#include <chrono>
#include <cstdlib>
#include <memory>
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

std::vector<std::string> Keys(int64_t value_bytes, int64_t batch) {
  std::vector<std::string> keys;
  for (int64_t i = 0; i < batch; ++i)
    keys.push_back(absl::StrCat("kvtier:bench:", value_bytes, ":", i));
  return keys;
}

RedisCluster::Clock::time_point Deadline() {
  return RedisCluster::Clock::now() + std::chrono::seconds(30);
}

void BM_RemoteSet(benchmark::State& state) {
  Remote& r = GetRemote();
  if (r.client == nullptr) return state.SkipWithError(("no Redis Cluster: " + r.error).c_str());
  const int64_t bytes = state.range(0), batch = state.range(1);
  const std::vector<std::string> keys = Keys(bytes, batch);
  const std::string value(static_cast<size_t>(bytes), 'k');
  const std::vector<std::string_view> values(keys.size(), value);
  for (auto _ : state) {
    for (const absl::Status& s : r.client->Set(keys, values, 0, Deadline())) {
      if (!s.ok()) return state.SkipWithError(s.ToString().c_str());
    }
  }
  state.SetBytesProcessed(state.iterations() * batch * bytes);
  state.SetItemsProcessed(state.iterations() * batch);
}

void BM_RemoteGet(benchmark::State& state) {
  Remote& r = GetRemote();
  if (r.client == nullptr) return state.SkipWithError(("no Redis Cluster: " + r.error).c_str());
  const int64_t bytes = state.range(0), batch = state.range(1);
  const std::vector<std::string> keys = Keys(bytes, batch);
  const std::string value(static_cast<size_t>(bytes), 'k');
  const std::vector<std::string_view> values(keys.size(), value);
  for (const absl::Status& s : r.client->Set(keys, values, 0, Deadline())) {
    if (!s.ok()) return state.SkipWithError(s.ToString().c_str());
  }
  // Into the caller's buffers, as the remote tier reads blocks into host slots.
  std::vector<std::string> dst(keys.size(), std::string(static_cast<size_t>(bytes), '\0'));
  std::vector<RedisCluster::ReadTarget> targets;
  for (std::string& d : dst) targets.push_back({.body = d.data(), .body_len = d.size()});
  for (auto _ : state) {
    for (const auto& got : r.client->GetInto(keys, targets, Deadline())) {
      if (!got.ok() || !got->has_value() || **got != value.size()) {
        return state.SkipWithError(got.ok() ? "GET: missing or short value"
                                            : got.status().ToString().c_str());
      }
    }
  }
  state.SetBytesProcessed(state.iterations() * batch * bytes);
  state.SetItemsProcessed(state.iterations() * batch);
}

void RemoteArgs(benchmark::internal::Benchmark* b) {
  for (int64_t bytes : {64 << 10, 256 << 10, 2 << 20}) {
    for (int64_t batch : {1, 8, 64}) b->Args({bytes, batch});
  }
  b->UseRealTime();
}

BENCHMARK(BM_RemoteSet)->Apply(RemoteArgs);
BENCHMARK(BM_RemoteGet)->Apply(RemoteArgs);

}  // namespace
