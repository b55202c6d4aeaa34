// The remote tier on a real Redis Cluster (LocalRedisCluster: redis-server processes on loopback):
// RemoteTier's value format and verification, then two Caches ("engines on two machines")
// sharing prefixes through the cluster byte-exactly, namespaces, publication modes, corrupt and
// vanished values, a dead master, and bad configuration.
#include "lib/tiers/remote_tier.h"

#include <unistd.h>

#include <atomic>
#include <chrono>
#include <cstring>
#include <future>
#include <memory>
#include <set>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/str_cat.h"
#include "kvtier/connector.h"
#include "lib/cache_factory.h"
#include "lib/tiers/redis_cluster.h"
#include "test/util/fake_redis_peer.h"
#include "test/util/redis_cluster_fixture.h"
#include "test/util/test_util.h"

namespace kvtier::internal {
namespace {

using test::Chain;
using test::EngineKv;
using test::FakeRedisPeer;
using test::LocalRedisCluster;
using test::MakeOptions;
using test::RunSequence;
using Clock = std::chrono::steady_clock;

// One healthy 3-master cluster for the tests that do not break it; nullptr (the test skips) when
// redis-server is not installed.
LocalRedisCluster* SharedCluster() {
  static std::unique_ptr<LocalRedisCluster> cluster = [] {
    std::string why;
    if (!LocalRedisCluster::Available(&why)) return std::unique_ptr<LocalRedisCluster>();
    auto c = LocalRedisCluster::Start();
    REQUIRE_OK(c);
    return std::move(*c);
  }();
  return cluster.get();
}

#define SKIP_WITHOUT_REDIS(cluster)                                                         \
  if ((cluster) == nullptr) {                                                               \
    std::string why_;                                                                       \
    LocalRedisCluster::Available(&why_);                                                    \
    if (test::SkipMissing("redis", "no redis-server to run a cluster with (" + why_ + ")")) \
      return;                                                                               \
  }

std::string Nodes(const LocalRedisCluster& c) {
  std::string s;
  for (const std::string& n : c.nodes()) s += (s.empty() ? "" : ",") + n;
  return s;
}

// A scope of its own per test, so tests sharing the cluster never see each other's blocks.
std::string UniqueScope(const char* name) {
  static std::atomic<int> n{0};
  return std::string(name) + "-" + std::to_string(getpid()) + "-" + std::to_string(n++);
}

Options RemoteOptions(const EngineKv& kv, const LocalRedisCluster& c, const std::string& scope,
                      uint32_t host_blocks = 16) {
  Options o = MakeOptions(kv, host_blocks);
  o.remote.nodes = Nodes(c);
  o.remote.scope = scope;
  // Generous: the machine may be loaded (sanitizers, parallel tests); the budget's own test sets
  // its own.
  o.remote.match_budget_us = 500000;
  return o;
}

// Waits until `cache` has published at least `n` blocks (write-through is asynchronous).
bool WaitPublished(Cache& cache, uint64_t n) {
  const auto until = Clock::now() + std::chrono::seconds(10);
  while (Clock::now() < until) {
    if (cache.Stats().remote.writes >= n) return true;
    std::this_thread::sleep_for(std::chrono::milliseconds(2));
  }
  return false;
}

RemoteTierConfig TierConfig(const LocalRedisCluster& c, uint64_t block_bytes) {
  return {.cluster = {.seeds = c.nodes()},
          .name_space = UniqueScope("tier"),
          .block_bytes = block_bytes,
          .layout_fingerprint = 0x1234,
          .timeout = std::chrono::milliseconds(2000)};
}

// Runs one ReadAsync and waits for it: the status of each block.
std::vector<absl::Status> ReadAll(RemoteTier& tier, std::vector<RemoteTier::Read> reads) {
  std::vector<absl::Status> out(reads.size());
  std::promise<void> all;
  auto left = std::make_shared<std::atomic<size_t>>(reads.size());
  tier.ReadAsync(std::move(reads), nullptr, [&](size_t i, const absl::Status& s) {
    out[i] = s;
    if (left->fetch_sub(1) == 1) all.set_value();
  });
  all.get_future().wait();
  return out;
}

void WriteAll(RemoteTier& tier, std::vector<RemoteTier::Write> writes) {
  tier.WriteAsync(std::move(writes), nullptr);
  tier.Drain();
}

TEST_CASE("RemoteTier: blocks round-trip byte-exact, missing and corrupt values are misses",
          "[remote]") {
  LocalRedisCluster* cluster = SharedCluster();
  SKIP_WITHOUT_REDIS(cluster);
  constexpr uint64_t kBytes = 4096 + 7;  // not a multiple of anything
  auto tier = RemoteTier::Open(TierConfig(*cluster, kBytes));
  REQUIRE_OK(tier);
  const std::vector<BlockKey> keys = Chain(24, 1);
  std::vector<std::vector<uint8_t>> src(keys.size(), std::vector<uint8_t>(kBytes));
  std::vector<RemoteTier::Write> writes;
  for (size_t i = 0; i < keys.size(); ++i) {
    for (uint64_t b = 0; b < kBytes; ++b) src[i][b] = static_cast<uint8_t>(i * 31 + b * 7);
    writes.push_back({keys[i], i == 0 ? kRootKey : keys[i - 1], src[i].data()});
  }
  WriteAll(**tier, writes);
  CacheStats st;
  (*tier)->FillStats(&st);
  CHECK(st.remote.writes == keys.size());
  CHECK(st.remote.bytes_written == keys.size() * kBytes);

  SECTION("a second write of a known block is skipped") {
    WriteAll(**tier, {writes[0]});
    (*tier)->FillStats(&st);
    CHECK(st.remote.writes_skipped == 1);
  }
  SECTION("every block reads back as written; the keys are spread over the masters") {
    std::vector<std::vector<uint8_t>> dst(keys.size(), std::vector<uint8_t>(kBytes, 0xEE));
    std::vector<RemoteTier::Read> reads;
    for (size_t i = 0; i < keys.size(); ++i) reads.push_back({keys[i], dst[i].data()});
    for (const absl::Status& s : ReadAll(**tier, reads)) CHECK_OK(s);
    for (size_t i = 0; i < keys.size(); ++i) CHECK(dst[i] == src[i]);
    std::set<std::string> nodes;
    for (const BlockKey& k : keys) {
      nodes.insert((*tier)->cluster().NodeForSlot(RedisCluster::KeySlot((*tier)->StoreKey(k))));
    }
    CHECK(nodes.size() == 3);
  }
  SECTION("ExistsPrefix stops at the first block the store lacks") {
    bool timed_out = true;
    CHECK((*tier)->ExistsPrefix(keys, Clock::now() + std::chrono::seconds(2), &timed_out) == 24);
    CHECK_FALSE(timed_out);
    const std::string gone = (*tier)->StoreKey(keys[10]);
    REQUIRE_OK((*tier)->cluster().Del({&gone, 1}, Clock::now() + std::chrono::seconds(2))[0]);
    CHECK((*tier)->ExistsPrefix(keys, Clock::now() + std::chrono::seconds(2), &timed_out) == 10);
    std::vector<uint8_t> dst(kBytes);
    CHECK(ReadAll(**tier, {{keys[10], dst.data()}})[0].code() == absl::StatusCode::kNotFound);
    (*tier)->FillStats(&st);
    CHECK(st.remote.read_misses == 1);
  }
  SECTION("a value that is corrupt, another key's, truncated or of another layout is kDataLoss") {
    RedisCluster& rc = (*tier)->cluster();
    const auto deadline = Clock::now() + std::chrono::seconds(2);
    std::vector<std::string> store_keys;
    std::vector<std::string> values;
    for (int i = 0; i < 4; ++i) {
      store_keys.push_back((*tier)->StoreKey(keys[i]));
      auto v = rc.Get({&store_keys.back(), 1}, deadline)[0];
      REQUIRE_OK(v);
      REQUIRE(v->has_value());
      values.push_back(**v);
    }
    values[0][values[0].size() - 100] ^= 0x01;                      // one payload bit
    values[1] = *rc.Get({&store_keys[2], 1}, deadline)[0].value();  // another block's value
    values[2].resize(values[2].size() - 1);                         // torn
    values[3][20] ^= 0x40;                                          // the header
    std::vector<std::string_view> views(values.begin(), values.end());
    for (const absl::Status& s : rc.Set(store_keys, views, 0, deadline)) REQUIRE_OK(s);
    std::vector<std::vector<uint8_t>> dst(4, std::vector<uint8_t>(kBytes, 0xEE));
    std::vector<RemoteTier::Read> reads;
    for (int i = 0; i < 4; ++i) reads.push_back({keys[i], dst[i].data()});
    for (const absl::Status& s : ReadAll(**tier, reads)) {
      CHECK(s.code() == absl::StatusCode::kDataLoss);
    }
    (*tier)->FillStats(&st);
    CHECK(st.remote.corrupt_reads == 4);
    CHECK(st.remote.reads == 0);
  }
  SECTION("another layout fingerprint reads nothing it did not write") {
    RemoteTierConfig other = TierConfig(*cluster, kBytes);
    other.layout_fingerprint = 0x9999;
    auto reader = RemoteTier::Open(other);
    REQUIRE_OK(reader);
    // Same store keys as the writer's: only the fingerprint in the header differs.
    std::vector<uint8_t> dst(kBytes);
    const std::string key = (*tier)->StoreKey(keys[0]);
    auto value = (*tier)->cluster().Get({&key, 1}, Clock::now() + std::chrono::seconds(2))[0];
    REQUIRE_OK(value);
    const std::string their_key = (*reader)->StoreKey(keys[0]);
    const std::string_view v = **value;
    REQUIRE_OK((*reader)->cluster().Set({&their_key, 1}, {&v, 1}, 0,
                                        Clock::now() + std::chrono::seconds(2))[0]);
    CHECK(ReadAll(**reader, {{keys[0], dst.data()}})[0].code() == absl::StatusCode::kDataLoss);
  }
}

TEST_CASE("RemoteTier: ExistsPrefix follows a long prefix across its growing batches", "[remote]") {
  LocalRedisCluster* cluster = SharedCluster();
  SKIP_WITHOUT_REDIS(cluster);
  auto tier = RemoteTier::Open(TierConfig(*cluster, 64));
  REQUIRE_OK(tier);
  const std::vector<BlockKey> keys = Chain(300, 3);
  const std::vector<uint8_t> payload(64, 0x5A);
  std::vector<RemoteTier::Write> writes;
  for (size_t i = 0; i < keys.size(); ++i) {
    writes.push_back({keys[i], i == 0 ? kRootKey : keys[i - 1], payload.data()});
  }
  WriteAll(**tier, writes);
  const auto deadline = [] { return Clock::now() + std::chrono::seconds(5); };
  bool timed_out = true;
  CHECK((*tier)->ExistsPrefix(keys, deadline(), &timed_out) == 300);  // 32 + 128 + 140
  CHECK_FALSE(timed_out);
  // A gap in each batch: the count stops right before it.
  for (uint32_t gap : {250u, 100u, 20u}) {
    const std::string key = (*tier)->StoreKey(keys[gap]);
    REQUIRE_OK((*tier)->cluster().Del({&key, 1}, deadline())[0]);
    CHECK((*tier)->ExistsPrefix(keys, deadline(), &timed_out) == gap);
  }
  CacheStats st;
  (*tier)->FillStats(&st);
  // Keys asked about, whole batches: 32+128+140 three times, then 32+128, then 32.
  CHECK(st.remote.lookups == 300 + 300 + 160 + 32);
}

TEST_CASE("Remote: two caches share a prefix through the cluster byte-exactly", "[remote]") {
  LocalRedisCluster* cluster = SharedCluster();
  SKIP_WITHOUT_REDIS(cluster);
  const std::string scope = UniqueScope("share");
  EngineKv kv_a, kv_b;  // two engines: their own device memory
  auto a = Cache::Create(RemoteOptions(kv_a, *cluster, scope));
  auto b = Cache::Create(RemoteOptions(kv_b, *cluster, scope));
  REQUIRE_OK(a);
  REQUIRE_OK(b);
  const std::vector<BlockKey> keys = Chain(8, 7);
  auto first = RunSequence(**a, kv_a, keys);
  REQUIRE_OK(first);
  CHECK(first->matched == 0);
  REQUIRE(WaitPublished(**a, keys.size()));

  // B has never seen these blocks: Match finds them remote, Load reads and verifies them.
  auto match = (*b)->Match(keys);
  REQUIRE_OK(match);
  CHECK(match->size() == keys.size());
  CHECK(match->blocks_in(Tier::kRemote) == keys.size());
  DeviceLease lease;
  auto second = RunSequence(**b, kv_b, keys, &lease);
  REQUIRE_OK(second);
  CHECK(second->matched == keys.size());
  CHECK(second->loaded == keys.size());
  CHECK(second->mismatched_bytes == 0);
  const CacheStats s = (*b)->Stats();
  CHECK(s.remote.reads == keys.size());
  CHECK(s.remote.hits == 2 * keys.size());  // the test's Match and RunSequence's
  CHECK(s.blocks_missed == 0);
  CHECK(s.host.promotions == keys.size());
  CHECK(s.remote.writes == 0);  // B read them: nothing to publish again
  REQUIRE_OK((*b)->CheckInvariants());
  lease = {};

  SECTION("a longer sequence: B reuses the remote prefix and computes the rest") {
    const std::vector<BlockKey> longer = Chain(12, 7);
    auto third = RunSequence(**b, kv_b, longer);
    REQUIRE_OK(third);
    CHECK(third->matched == keys.size());  // now on B's device
    CHECK(third->mismatched_bytes == 0);
  }
  SECTION("a lookup past its budget counts the rest as misses") {
    EngineKv kv_c;
    Options o = RemoteOptions(kv_c, *cluster, scope);
    o.remote.match_budget_us = 1;
    auto c = Cache::Create(o);
    REQUIRE_OK(c);
    auto m = (*c)->Match(keys);
    REQUIRE_OK(m);
    CHECK(m->size() < keys.size());
    const CacheStats cs = (*c)->Stats();
    CHECK(cs.remote.lookup_timeouts == 1);
    CHECK(cs.blocks_missed == keys.size() - m->size());
  }
  SECTION("a cache with another scope never sees them") {
    EngineKv kv_c;
    auto c = Cache::Create(RemoteOptions(kv_c, *cluster, UniqueScope("other")));
    REQUIRE_OK(c);
    auto m = (*c)->Match(keys);
    REQUIRE_OK(m);
    CHECK(m->size() == 0);
  }
  SECTION("a cache with another layout never sees them") {
    test::KvShape shape;
    shape.segment_bytes = 128;
    EngineKv kv_c(shape);
    auto c = Cache::Create(RemoteOptions(kv_c, *cluster, scope));
    REQUIRE_OK(c);
    auto m = (*c)->Match(keys);
    REQUIRE_OK(m);
    CHECK(m->size() == 0);
  }
}

TEST_CASE(
    "Remote: TP ranks, PP stages, dtypes and formats sharing one scope never read each other's "
    "blocks",
    "[remote][shard]") {
  LocalRedisCluster* cluster = SharedCluster();
  SKIP_WITHOUT_REDIS(cluster);
  // One scope for the whole deployment, as remote.md recommends; equally shaped shards.
  const std::string scope = UniqueScope("shard");
  auto create = [&](EngineKv& kv, const ShardIdentity& shard) {
    Options o = RemoteOptions(kv, *cluster, scope);
    o.shard = shard;
    return Cache::Create(o);
  };
  const ShardIdentity rank0{.tp_rank = 0, .tp_size = 2, .dtype = "bfloat16", .format = "nhd-v1"};
  EngineKv kv_a;
  auto a = create(kv_a, rank0);
  REQUIRE_OK(a);
  const std::vector<BlockKey> keys = Chain(6, 61);
  REQUIRE_OK(RunSequence(**a, kv_a, keys));
  REQUIRE(WaitPublished(**a, keys.size()));
  {
    // Control: the same identity on another machine finds all of them.
    EngineKv kv;
    auto same = create(kv, rank0);
    REQUIRE_OK(same);
    auto m = (*same)->Match(keys);
    REQUIRE_OK(m);
    CHECK(m->blocks_in(Tier::kRemote) == keys.size());
  }

  struct Other {
    const char* what;
    ShardIdentity shard;
  };
  const std::vector<Other> others = {
      {"tp rank 1 of 2", {.tp_rank = 1, .tp_size = 2, .dtype = "bfloat16", .format = "nhd-v1"}},
      {"rank 0 of tp 4", {.tp_rank = 0, .tp_size = 4, .dtype = "bfloat16", .format = "nhd-v1"}},
      {"pp stage 1",
       {.tp_rank = 0,
        .tp_size = 2,
        .pp_rank = 1,
        .pp_size = 2,
        .dtype = "bfloat16",
        .format = "nhd-v1"}},
      {"float16", {.tp_rank = 0, .tp_size = 2, .dtype = "float16", .format = "nhd-v1"}},
      {"another format", {.tp_rank = 0, .tp_size = 2, .dtype = "bfloat16", .format = "hnd-v1"}},
      {"replicated",
       {.tp_rank = 0, .tp_size = 2, .dtype = "bfloat16", .format = "nhd-v1", .replicated = true}},
  };
  for (const Other& other : others) {
    CAPTURE(other.what);
    EngineKv kv_b;
    auto b = create(kv_b, other.shard);
    REQUIRE_OK(b);
    auto m = (*b)->Match(keys);
    REQUIRE_OK(m);
    CHECK(m->size() == 0);
    CHECK((*b)->Stats().remote.hits == 0);
    // It computes the blocks itself and publishes its own copies under its own keys: not skipped
    // as already there, and rank 0's copies are left intact (a value under rank 0's key with
    // another fingerprint in its header would be a corrupt read below).
    auto r = RunSequence(**b, kv_b, keys);
    REQUIRE_OK(r);
    CHECK(r->loaded == 0);
    REQUIRE(WaitPublished(**b, keys.size()));
    REQUIRE_OK((*b)->CheckInvariants());
  }
  EngineKv kv_c;
  auto c = create(kv_c, rank0);
  REQUIRE_OK(c);
  auto r = RunSequence(**c, kv_c, keys);
  REQUIRE_OK(r);
  CHECK(r->loaded == keys.size());
  CHECK(r->mismatched_bytes == 0);
  CHECK((*c)->Stats().remote.corrupt_reads == 0);
}

TEST_CASE(
    "Remote: replicated (MLA) ranks share one copy: rank 0 publishes, rank 1 only reads, "
    "byte-exact",
    "[remote][shard]") {
  LocalRedisCluster* cluster = SharedCluster();
  SKIP_WITHOUT_REDIS(cluster);
  const std::string scope = UniqueScope("mla");
  const test::KvShape mla{.segments = 1, .segment_bytes = 576};  // one latent tensor per layer
  EngineKv kv0(mla), kv1(mla);
  Options o0 = RemoteOptions(kv0, *cluster, scope);
  o0.shard = {.tp_rank = 0, .tp_size = 2, .dtype = "bfloat16", .format = "mla", .replicated = true};
  Options o1 = RemoteOptions(kv1, *cluster, scope);
  o1.shard = o0.shard;
  o1.shard.tp_rank = 1;
  o1.remote.publish = RemotePublish::kNever;  // one rank writes, all read
  // Every block it computes reaches its host tier at once: what write-through would publish.
  o1.host_write_through = true;
  auto r0 = Cache::Create(o0);
  auto r1 = Cache::Create(o1);
  REQUIRE_OK(r0);
  REQUIRE_OK(r1);
  const std::vector<BlockKey> keys = Chain(6, 71);
  REQUIRE_OK(RunSequence(**r0, kv0, keys));
  REQUIRE(WaitPublished(**r0, keys.size()));

  auto m = (*r1)->Match(keys);
  REQUIRE_OK(m);
  CHECK(m->blocks_in(Tier::kRemote) == keys.size());
  auto loaded = RunSequence(**r1, kv1, keys);
  REQUIRE_OK(loaded);
  CHECK(loaded->loaded == keys.size());
  CHECK(loaded->mismatched_bytes == 0);  // rank 0's bytes, as rank 0 computed them
  CHECK((*r1)->Stats().remote.reads == keys.size());

  // Rank 1 publishes nothing, also of what it computes itself: once it is gone (its destructor
  // waits for every copy and store write it started), rank 0 finds none of those blocks.
  const std::vector<BlockKey> own = Chain(4, 72);
  auto computed = RunSequence(**r1, kv1, own);
  REQUIRE_OK(computed);
  CHECK(computed->loaded == 0);
  REQUIRE_OK((*r1)->CheckInvariants());
  CHECK((*r1)->Stats().remote.writes == 0);
  r1->reset();
  auto m0 = (*r0)->Match(own);
  REQUIRE_OK(m0);
  CHECK(m0->size() == 0);
  REQUIRE_OK((*r0)->CheckInvariants());
}

TEST_CASE("Remote: write-back publishes a block only when the host evicts it", "[remote]") {
  LocalRedisCluster* cluster = SharedCluster();
  SKIP_WITHOUT_REDIS(cluster);
  const std::string scope = UniqueScope("writeback");
  EngineKv kv_a, kv_b;
  Options oa = RemoteOptions(kv_a, *cluster, scope, /*host_blocks=*/4);
  oa.remote.publish = RemotePublish::kWriteBack;
  auto a = Cache::Create(oa);
  auto b = Cache::Create(RemoteOptions(kv_b, *cluster, scope));
  REQUIRE_OK(a);
  REQUIRE_OK(b);
  // 16 device slots, 4 host slots: each 8-block sequence pushes older blocks to the host, and
  // from the second such push on, the host evicts (and publishes) what it held.
  std::vector<std::vector<BlockKey>> seqs;
  for (uint32_t i = 0; i < 6; ++i) seqs.push_back(Chain(8, 21 + i));
  REQUIRE_OK(RunSequence(**a, kv_a, seqs[0]));
  CHECK((*a)->Stats().remote.writes == 0);  // committed, on the device: nothing published yet
  for (size_t i = 1; i < seqs.size(); ++i) REQUIRE_OK(RunSequence(**a, kv_a, seqs[i]));
  REQUIRE((*a)->Stats().host.evictions > 0);
  REQUIRE(WaitPublished(**a, 1));
  const CacheStats sa = (*a)->Stats();
  CHECK(sa.remote.writes <= sa.host.evictions);
  // Whatever A published, B loads byte-exact (a prefix of some sequence, from its first block).
  uint32_t shared = 0;
  for (const auto& keys : seqs) {
    auto r = RunSequence(**b, kv_b, keys);
    REQUIRE_OK(r);
    CHECK(r->mismatched_bytes == 0);
    shared += r->loaded;
  }
  CHECK(shared > 0);
  REQUIRE_OK((*a)->CheckInvariants());
  REQUIRE_OK((*b)->CheckInvariants());
}

TEST_CASE(
    "Remote: write-back publishes what the host holds at a clean Close, a second cache loads it",
    "[remote]") {
  LocalRedisCluster* cluster = SharedCluster();
  SKIP_WITHOUT_REDIS(cluster);
  const std::string scope = UniqueScope("writeback-close");
  EngineKv kv_a, kv_b;
  Options oa = RemoteOptions(kv_a, *cluster, scope, /*host_blocks=*/32);
  oa.remote.publish = RemotePublish::kWriteBack;
  auto a = Cache::Create(oa);
  REQUIRE_OK(a);
  // 16 device slots, 32 host slots: the second sequence pushes all of the first to the host,
  // which evicts nothing, so nothing is published while A runs.
  const std::vector<BlockKey> first = Chain(8, 41), second = Chain(16, 42);
  REQUIRE_OK(RunSequence(**a, kv_a, first));
  REQUIRE_OK(RunSequence(**a, kv_a, second));
  auto held = (*a)->Match(first);
  REQUIRE_OK(held);
  REQUIRE(held->blocks_in(Tier::kHost) == first.size());
  CHECK((*a)->Stats().host.evictions == 0);
  CHECK((*a)->Stats().remote.writes == 0);
  REQUIRE_OK((*a)->CheckInvariants());
  a->reset();  // a clean Close: the host's blocks are published before it returns

  auto b = Cache::Create(RemoteOptions(kv_b, *cluster, scope));
  REQUIRE_OK(b);
  auto m = (*b)->Match(first);
  REQUIRE_OK(m);
  CHECK(m->blocks_in(Tier::kRemote) == first.size());
  auto r = RunSequence(**b, kv_b, first);
  REQUIRE_OK(r);
  CHECK(r->loaded == first.size());
  CHECK(r->mismatched_bytes == 0);
  // The device-only blocks never reached the host: not published.
  auto device_only = (*b)->Match(second);
  REQUIRE_OK(device_only);
  CHECK(device_only->blocks_in(Tier::kRemote) == 0);
  REQUIRE_OK((*b)->CheckInvariants());
}

TEST_CASE("Remote: a corrupt or vanished value fails the load as a miss, the cache recovers",
          "[remote]") {
  LocalRedisCluster* cluster = SharedCluster();
  SKIP_WITHOUT_REDIS(cluster);
  const std::string scope = UniqueScope("corrupt");
  EngineKv kv_a, kv_b;
  auto a = Cache::Create(RemoteOptions(kv_a, *cluster, scope));
  auto b = Cache::Create(RemoteOptions(kv_b, *cluster, scope));
  REQUIRE_OK(a);
  REQUIRE_OK(b);
  const std::vector<BlockKey> keys = Chain(6, 31);
  REQUIRE_OK(RunSequence(**a, kv_a, keys));
  REQUIRE(WaitPublished(**a, keys.size()));

  // What B's Match saw is gone or damaged by the time it loads.
  auto match = (*b)->Match(keys);
  REQUIRE_OK(match);
  REQUIRE(match->size() == keys.size());
  const Options oa = RemoteOptions(kv_a, *cluster, scope);
  auto remote = RemoteTier::Open({.cluster = {.seeds = cluster->nodes()},
                                  .name_space = RemoteNameSpace(oa),
                                  .block_bytes = kv_a.layout().block_bytes(),
                                  .layout_fingerprint = oa.Fingerprint()});
  REQUIRE_OK(remote);
  const auto deadline = Clock::now() + std::chrono::seconds(2);
  const std::string damaged = (*remote)->StoreKey(keys[2]);
  auto value = (*remote)->cluster().Get({&damaged, 1}, deadline)[0];
  REQUIRE_OK(value);
  REQUIRE(value->has_value());
  std::string bad = **value;
  bad[bad.size() / 2] ^= 0x10;
  const std::string_view bad_view = bad;
  REQUIRE_OK((*remote)->cluster().Set({&damaged, 1}, {&bad_view, 1}, 0, deadline)[0]);
  const std::string vanished = (*remote)->StoreKey(keys[4]);
  REQUIRE_OK((*remote)->cluster().Del({&vanished, 1}, deadline)[0]);

  auto lease = (*b)->AllocateDevice(keys.size());
  REQUIRE_OK(lease);
  auto xfer = (*b)->Load(*match, *lease);
  REQUIRE_OK(xfer);
  CHECK_FALSE(xfer->Wait().ok());  // never garbage: the transfer fails, the blocks are misses
  // ... from the damaged block on: the two before it arrived and stay (partial transfer).
  CHECK(xfer->blocks_loaded() == 2);
  for (uint32_t i = 0; i < 2; ++i) CHECK(kv_b.Mismatches(lease->slots()[i], keys[i]) == 0);
  const CacheStats s = (*b)->Stats();
  CHECK(s.remote.corrupt_reads == 1);
  CHECK(s.remote.read_misses == 1);
  CHECK(s.transfer_failures > 0);
  CHECK(s.loads_partial == 1);
  CHECK(s.blocks_load_lost == keys.size() - 2);
  REQUIRE_OK((*b)->CheckInvariants());
  auto kept = (*b)->Match(std::span(keys).first(2));
  REQUIRE_OK(kept);
  CHECK(kept->blocks_in(Tier::kDevice) == 2);
  *lease = DeviceLease();

  // The engine recomputes and commits: B then holds every block intact. (The damaged value is
  // still in the store until B's commit replaces it: this step's load may fail on it again.)
  auto again = RunSequence(**b, kv_b, keys, nullptr, test::LoadFailures::kExpected);
  REQUIRE_OK(again);
  CHECK(again->mismatched_bytes == 0);
  auto after = RunSequence(**b, kv_b, keys);
  REQUIRE_OK(after);
  CHECK(after->loaded == keys.size());
  CHECK(after->mismatched_bytes == 0);
  REQUIRE_OK((*b)->CheckInvariants());
}

TEST_CASE("Remote bad config: unreachable nodes, no host tier, bad scope are clear errors",
          "[remote][bad_input]") {
  EngineKv kv;
  Options o = MakeOptions(kv, 4);
  o.remote.nodes = "127.0.0.1:1";  // nothing listens on port 1
  o.remote.connect_timeout_ms = 200;
  const auto start = Clock::now();
  auto c = Cache::Create(o);
  CHECK(c.status().code() == absl::StatusCode::kUnavailable);
  CHECK(c.status().message().find("Options.remote.nodes") != std::string::npos);
  CHECK(Clock::now() - start < std::chrono::seconds(5));

  o.remote.nodes = "no-port-here";
  CHECK(Cache::Create(o).status().code() == absl::StatusCode::kInvalidArgument);

  o.remote.nodes = "127.0.0.1:6379";
  o.remote.scope = "a:b";
  CHECK(Cache::Create(o).status().code() == absl::StatusCode::kInvalidArgument);
  o.remote.scope = "default";
  o.host.capacity_bytes = 0;
  auto no_host = Cache::Create(o);
  CHECK(no_host.status().code() == absl::StatusCode::kInvalidArgument);
  CHECK(no_host.status().message().find("host tier") != std::string::npos);
}

TEST_CASE("Remote: a master killed mid-run gives misses, never a hang or a wrong block",
          "[remote][failover]") {
  std::string why;
  if (!LocalRedisCluster::Available(&why)) {
    if (test::SkipMissing("redis", why)) return;
  }
  auto cluster = LocalRedisCluster::Start({.masters = 3, .replicas_per_master = 1});
  REQUIRE_OK(cluster);
  const std::string scope = UniqueScope("failover");
  EngineKv kv_a, kv_b;
  Options oa = RemoteOptions(kv_a, **cluster, scope);
  oa.remote.timeout_ms = 500;
  Options ob = RemoteOptions(kv_b, **cluster, scope);
  ob.remote.timeout_ms = 500;
  ob.remote.match_budget_us = 200000;
  auto a = Cache::Create(oa);
  auto b = Cache::Create(ob);
  REQUIRE_OK(a);
  REQUIRE_OK(b);
  std::vector<std::vector<BlockKey>> seqs;
  for (uint32_t i = 0; i < 4; ++i) seqs.push_back(Chain(4, 40 + i));
  for (const auto& keys : seqs) REQUIRE_OK(RunSequence(**a, kv_a, keys));
  REQUIRE(WaitPublished(**a, 16));

  (*cluster)->Kill(0);
  // Until the failover, every step ends within its budgets, and whatever B loads is intact.
  const auto start = Clock::now();
  for (const auto& keys : seqs) {
    auto r = RunSequence(**b, kv_b, keys, nullptr, test::LoadFailures::kExpected);
    REQUIRE_OK(r);
    CHECK(r->mismatched_bytes == 0);
  }
  CHECK(Clock::now() - start < std::chrono::seconds(10));
  REQUIRE_OK((*cluster)->WaitHealthy(std::chrono::seconds(20)));
  // After it: new blocks are published and shared again (A's client finds the new master after
  // its first failures, so a write right after the failover may still fail: try fresh prefixes).
  const auto until = Clock::now() + std::chrono::seconds(15);
  uint32_t loaded = 0;
  for (uint32_t attempt = 0; loaded < 6 && Clock::now() < until; ++attempt) {
    const std::vector<BlockKey> fresh = Chain(6, 100 + attempt);
    const CacheStats before = (*a)->Stats();
    REQUIRE_OK(RunSequence(**a, kv_a, fresh));
    while (Clock::now() < until) {
      const CacheStats now = (*a)->Stats();
      if (now.remote.writes + now.remote.write_errors >=
          before.remote.writes + before.remote.write_errors + fresh.size()) {
        break;
      }
      std::this_thread::sleep_for(std::chrono::milliseconds(5));
    }
    EngineKv kv_c;
    auto c = Cache::Create(RemoteOptions(kv_c, **cluster, scope));
    REQUIRE_OK(c);
    auto r = RunSequence(**c, kv_c, fresh, nullptr, test::LoadFailures::kExpected);
    REQUIRE_OK(r);
    CHECK(r->mismatched_bytes == 0);
    loaded = r->loaded;
  }
  CHECK(loaded == 6);
  REQUIRE_OK((*a)->CheckInvariants());
  REQUIRE_OK((*b)->CheckInvariants());
}

// Hostile peers (FakeRedisPeer, a one-node "cluster" served by the test: no redis-server needed).
// The bounds on time are hang guards, not benchmarks: each deadline plus 2 s for a loaded
// machine, against the 10 s the peer streams.
TEST_CASE(
    "Regression #17: a peer streaming without CRLF holds Create, Match and Load no longer "
    "than their deadlines",
    "[remote][hostile]") {
  constexpr auto kSlack = std::chrono::milliseconds(2000);
  // Which command streams, set by each section once the cache is up.
  std::atomic<int> streaming{0};  // 0: none, 1: CLUSTER SLOTS, 2: EXISTS, 3: GET
  FakeRedisPeer peer(
      [&](const std::vector<std::string>& command) -> std::optional<FakeRedisPeer::Answer> {
        const int which = command[0] == "CLUSTER"  ? 1
                          : command[0] == "EXISTS" ? 2
                          : command[0] == "GET"    ? 3
                                                   : 0;
        if (which == 0 || which != streaming.load()) return std::nullopt;
        return FakeRedisPeer::Answer{.bytes = "-ERR ", .stream = "x"};
      });
  EngineKv kv;
  Options o = MakeOptions(kv, 16);
  o.remote.nodes = peer.addr();
  o.remote.scope = "hostile";
  o.remote.connect_timeout_ms = 300;
  o.remote.timeout_ms = 300;
  o.remote.match_budget_us = 5000;
  const std::vector<BlockKey> keys = Chain(4, 17);

  SECTION("Create: CLUSTER SLOTS streams") {
    streaming = 1;
    const auto start = Clock::now();
    auto c = Cache::Create(o);
    CHECK(Clock::now() - start < std::chrono::milliseconds(o.remote.connect_timeout_ms) + kSlack);
    CHECK(c.status().code() == absl::StatusCode::kUnavailable);
  }
  SECTION("Match: EXISTS streams") {
    auto c = Cache::Create(o);
    REQUIRE_OK(c);
    streaming = 2;
    const auto start = Clock::now();
    auto m = (*c)->Match(keys);
    CHECK(Clock::now() - start < std::chrono::microseconds(o.remote.match_budget_us) + kSlack);
    REQUIRE_OK(m);
    CHECK(m->size() == 0);
  }
  SECTION("Load: GET streams") {
    o.remote.match_budget_us = 2000000;  // the store has every block (EXISTS answers 1)
    auto c = Cache::Create(o);
    REQUIRE_OK(c);
    auto m = (*c)->Match(keys);
    REQUIRE_OK(m);
    REQUIRE(m->blocks_in(Tier::kRemote) == keys.size());
    auto lease = (*c)->AllocateDevice(static_cast<uint32_t>(keys.size()));
    REQUIRE_OK(lease);
    streaming = 3;
    const auto start = Clock::now();
    auto xfer = (*c)->Load(*m, *lease);
    REQUIRE_OK(xfer);
    CHECK(!xfer->Wait().ok());
    CHECK(Clock::now() - start < std::chrono::milliseconds(o.remote.timeout_ms) + kSlack);
    CHECK((*c)->Stats().remote.read_errors > 0);
    REQUIRE_OK((*c)->CheckInvariants());
  }
}

TEST_CASE("Regression #17: a value announced at 2^62 bytes fails the load at once, unbuffered",
          "[remote][hostile]") {
  std::atomic<bool> huge{false};
  FakeRedisPeer peer(
      [&](const std::vector<std::string>& command) -> std::optional<FakeRedisPeer::Answer> {
        if (command[0] != "GET" || !huge) return std::nullopt;
        return FakeRedisPeer::Answer{.bytes = "$4611686018427387904\r\n", .stream = "v"};
      });
  EngineKv kv;
  Options o = MakeOptions(kv, 16);
  o.remote.nodes = peer.addr();
  o.remote.scope = "huge";
  o.remote.timeout_ms = 1000;
  o.remote.match_budget_us = 2000000;
  auto c = Cache::Create(o);
  REQUIRE_OK(c);
  const std::vector<BlockKey> keys = Chain(2, 18);
  auto m = (*c)->Match(keys);
  REQUIRE_OK(m);
  REQUIRE(m->blocks_in(Tier::kRemote) == keys.size());
  auto lease = (*c)->AllocateDevice(static_cast<uint32_t>(keys.size()));
  REQUIRE_OK(lease);
  huge = true;
  const uint64_t before = peer.bytes_sent();
  const auto start = Clock::now();
  auto xfer = (*c)->Load(*m, *lease);
  REQUIRE_OK(xfer);
  CHECK(!xfer->Wait().ok());
  CHECK(Clock::now() - start < std::chrono::milliseconds(o.remote.timeout_ms + 2000));
  // What the loopback sockets hold (a few MiB), not the 1 GiB the peer would send.
  CHECK(peer.bytes_sent() - before < (32u << 20));
  REQUIRE_OK((*c)->CheckInvariants());
}

}  // namespace
}  // namespace kvtier::internal

namespace kvtier::internal {
namespace {

TEST_CASE("Remote: a Connector finds another's stores through the store, without waiting",
          "[remote][connector]") {
  LocalRedisCluster* cluster = SharedCluster();
  SKIP_WITHOUT_REDIS(cluster);
  test::EngineKv kv_a({.num_slots = 8}), kv_b({.num_slots = 8});
  const std::string scope = UniqueScope("connector");
  Options oa = RemoteOptions(kv_a, *cluster, scope), ob = RemoteOptions(kv_b, *cluster, scope);
  oa.device.capacity_slots = ob.device.capacity_slots = 0;
  auto a = Connector::Create(oa);
  REQUIRE_OK(a);
  auto b = Connector::Create(ob);
  REQUIRE_OK(b);
  const auto keys = test::Chain(4, 31);
  for (uint32_t i = 0; i < 4; ++i) kv_a.Write(i, keys[i]);
  const std::vector<uint32_t> src = {0, 1, 2, 3};
  auto store = (*a)->Store(keys, 0, src);
  REQUIRE_OK(store);
  REQUIRE_OK(store->Wait());
  const auto until = Clock::now() + std::chrono::seconds(10);
  while ((*a)->Stats().remote.writes < 4 && Clock::now() < until) {
    std::this_thread::sleep_for(std::chrono::milliseconds(2));
  }
  REQUIRE((*a)->Stats().remote.writes >= 4);

  // The scheduler never blocks: the first lookup starts the store's probe and says "not yet".
  auto first = (*b)->Lookup(keys, 0, {.wait_for_store = false});
  REQUIRE_OK(first);
  CHECK(first->pending);
  CHECK(first->blocks == 0);
  absl::StatusOr<LookupResult> found = first;
  while (found.ok() && found->pending && Clock::now() < until) {
    std::this_thread::sleep_for(std::chrono::milliseconds(1));
    found = (*b)->Lookup(keys, 0, {.wait_for_store = false});
  }
  REQUIRE_OK(found);
  CHECK_FALSE(found->pending);
  CHECK(found->blocks == 4);
  CHECK(found->tiers == std::vector<Tier>(4, Tier::kRemote));
  auto waited = (*b)->Lookup(keys, 1);  // waiting for the store: the answer at once
  REQUIRE_OK(waited);
  CHECK(waited->blocks == 3);

  const std::vector<uint32_t> dst = {7, 6, 5, 4};
  auto xfer = (*b)->Load(keys, 0, dst);
  REQUIRE_OK(xfer);
  REQUIRE_OK(xfer->Wait());
  CHECK(xfer->blocks() == 4);
  for (uint32_t i = 0; i < 4; ++i) CHECK(kv_b.Mismatches(dst[i], keys[i]) == 0);
  REQUIRE_OK((*b)->CheckInvariants());
  // Now B holds them on its host: a lookup finds them there.
  auto local = (*b)->Lookup(keys, 0);
  REQUIRE_OK(local);
  CHECK(local->tiers == std::vector<Tier>(4, Tier::kHost));
}

}  // namespace
}  // namespace kvtier::internal
