#include "lib/tiers/redis_cluster.h"

#include <hiredis/hiredis.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <atomic>
#include <map>
#include <set>
#include <thread>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/strip.h"
#include "lib/tiers/resp_reader.h"
#include "test/util/fake_redis_peer.h"
#include "test/util/redis_cluster_fixture.h"
#include "test/util/test_util.h"

namespace kvtier::internal {
namespace {

using Clock = RedisCluster::Clock;
using std::chrono::milliseconds;
using test::FakeRedisPeer;
using test::LocalRedisCluster;

Clock::time_point In(milliseconds d) { return Clock::now() + d; }

// The cluster the non-destructive cases share (started on first use; nullptr when redis is not
// installed, after a WARN). Its destructor at exit kills the nodes.
LocalRedisCluster* SharedCluster() {
  static std::unique_ptr<LocalRedisCluster> cluster = [] {
    std::unique_ptr<LocalRedisCluster> c;
    std::string why;
    if (!LocalRedisCluster::Available(&why)) return c;
    auto started = LocalRedisCluster::Start({.masters = 3});
    if (started.ok())
      c = std::move(*started);
    else
      FAIL("LocalRedisCluster::Start: " << started.status().ToString());
    return c;
  }();
  return cluster.get();
}

bool SkipWithoutRedis() {
  std::string why;
  if (LocalRedisCluster::Available(&why)) return false;
  return test::SkipMissing("redis", why);
}

std::unique_ptr<RedisCluster> ConnectTo(const LocalRedisCluster& cluster) {
  auto client = RedisCluster::Connect({.seeds = cluster.seeds()});
  REQUIRE_OK(client);
  return std::move(*client);
}

// A value of `bytes` bytes that differs per `seed`, NUL bytes included.
std::string Value(size_t bytes, uint32_t seed) {
  std::string v(bytes, '\0');
  uint32_t x = seed * 2654435761u + 1;
  for (size_t i = 0; i < bytes; ++i) {
    x = x * 1664525u + 1013904223u;
    v[i] = static_cast<char>((x >> 24) % 4 == 0 ? 0 : x >> 24);
  }
  return v;
}

std::vector<std::string_view> Views(const std::vector<std::string>& values) {
  return {values.begin(), values.end()};
}

void RequireAllOk(const std::vector<absl::Status>& results) {
  for (size_t i = 0; i < results.size(); ++i) {
    CAPTURE(i);
    REQUIRE_OK(results[i]);
  }
}

// A port nobody listens on (bound then closed).
int ClosedPort() {
  const int fd = socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  bind(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr));
  socklen_t len = sizeof(addr);
  getsockname(fd, reinterpret_cast<sockaddr*>(&addr), &len);
  close(fd);
  return ntohs(addr.sin_port);
}

TEST_CASE("RedisCluster: KeySlot is CRC16-XMODEM mod 16384 with the hash tag rule", "[redis]") {
  // Values from the Redis Cluster specification (no server needed).
  CHECK(RedisCluster::KeySlot("123456789") == (0x31C3 & 16383));
  CHECK(RedisCluster::KeySlot("{user1000}.following") == RedisCluster::KeySlot("user1000"));
  CHECK(RedisCluster::KeySlot("{user1000}.followers") == RedisCluster::KeySlot("user1000"));
  CHECK(RedisCluster::KeySlot("foo{}{bar}") == RedisCluster::KeySlot("foo{}{bar}"));
  CHECK(RedisCluster::KeySlot("foo{{bar}}zap") == RedisCluster::KeySlot("{bar"));
  CHECK(RedisCluster::KeySlot("foo{bar}{zap}") == RedisCluster::KeySlot("bar"));

  if (SkipWithoutRedis()) return;
  LocalRedisCluster* cluster = SharedCluster();
  REQUIRE(cluster != nullptr);
  for (std::string key : {"foo", "bar", "", "123456789", "{user1000}.following", "foo{}{bar}",
                          "foo{{bar}}zap", "foo{bar}{zap}", "{}", "a{b", "kvtier:block:42"}) {
    CAPTURE(key);
    auto out = cluster->Cli(0, {"CLUSTER", "KEYSLOT", key});
    REQUIRE_OK(out);
    int want = -1;
    REQUIRE(absl::SimpleAtoi(absl::StripAsciiWhitespace(*out), &want));
    CHECK(RedisCluster::KeySlot(key) == want);
  }
}

TEST_CASE("RedisCluster: binary values round trip on every master", "[redis]") {
  if (SkipWithoutRedis()) return;
  LocalRedisCluster* cluster = SharedCluster();
  REQUIRE(cluster != nullptr);
  auto client = ConnectTo(*cluster);

  // Keys until each master serves some, with empty, NUL-laden and 1 MiB values.
  std::vector<std::string> keys, values;
  std::set<std::string> masters;
  for (uint32_t i = 0; masters.size() < 3 || keys.size() < 12; ++i) {
    keys.push_back(absl::StrCat("roundtrip:", i));
    masters.insert(client->NodeForSlot(RedisCluster::KeySlot(keys.back())));
    values.push_back(i % 4 == 0   ? std::string()
                     : i % 4 == 1 ? std::string("\0a\0", 3)
                     : i % 4 == 2 ? Value(1 << 20, i)
                                  : Value(1000, i));
  }
  REQUIRE(masters.size() == 3);
  RequireAllOk(client->Set(keys, Views(values), 0, In(milliseconds(5000))));

  auto got = client->Get(keys, In(milliseconds(5000)));
  REQUIRE(got.size() == keys.size());
  for (size_t i = 0; i < keys.size(); ++i) {
    CAPTURE(keys[i]);
    REQUIRE_OK(got[i]);
    REQUIRE(got[i]->has_value());
    CHECK(**got[i] == values[i]);
  }
  auto exists = client->Exists(keys, In(milliseconds(5000)));
  for (auto& e : exists) {
    REQUIRE_OK(e);
    CHECK(*e);
  }

  RequireAllOk(client->Del(keys, In(milliseconds(5000))));
  exists = client->Exists(keys, In(milliseconds(5000)));
  got = client->Get(keys, In(milliseconds(5000)));
  for (size_t i = 0; i < keys.size(); ++i) {
    REQUIRE_OK(exists[i]);
    CHECK_FALSE(*exists[i]);
    REQUIRE_OK(got[i]);
    CHECK_FALSE(got[i]->has_value());
  }
  CHECK(client->stats().commands >= 5 * keys.size());
  CHECK(client->stats().errors == 0);
}

TEST_CASE("RedisCluster: a batch of 64 keys is pipelined, a missing key is nullopt", "[redis]") {
  if (SkipWithoutRedis()) return;
  LocalRedisCluster* cluster = SharedCluster();
  REQUIRE(cluster != nullptr);
  auto client = ConnectTo(*cluster);

  std::vector<std::string> keys, values;
  for (uint32_t i = 0; i < 64; ++i) {
    keys.push_back(absl::StrCat("batch:", i));
    values.push_back(Value(4096, i));
  }
  RequireAllOk(client->Set(keys, Views(values), 60, In(milliseconds(5000))));
  const uint64_t connects = client->stats().connects;
  keys.push_back("batch:missing");
  auto got = client->Get(keys, In(milliseconds(5000)));
  REQUIRE(got.size() == 65);
  for (size_t i = 0; i < 64; ++i) {
    REQUIRE_OK(got[i]);
    REQUIRE(got[i]->has_value());
    CHECK(**got[i] == values[i]);
  }
  REQUIRE_OK(got[64]);
  CHECK_FALSE(got[64]->has_value());
  // One pooled connection per master served the whole batch: nothing new was opened.
  CHECK(client->stats().connects == connects);
  auto ttl = cluster->Cli(0, {"-c", "TTL", keys[0]});
  REQUIRE_OK(ttl);
  int seconds = 0;
  REQUIRE(absl::SimpleAtoi(absl::StripAsciiWhitespace(*ttl), &seconds));
  CHECK(seconds > 0);
  CHECK(seconds <= 60);
}

TEST_CASE("RedisCluster: SetParts joins head and body, GetInto splits values into caller memory",
          "[redis]") {
  if (SkipWithoutRedis()) return;
  LocalRedisCluster* cluster = SharedCluster();
  REQUIRE(cluster != nullptr);
  auto client = ConnectTo(*cluster);
  // Bodies below and above the size that is sent from the caller's memory instead of copied.
  const std::vector<size_t> body_bytes = {0, 1, 4095, 4096, 70000, 1 << 20};
  std::vector<std::string> keys, heads, bodies;
  std::vector<RedisCluster::ValueParts> parts;
  for (size_t i = 0; i < body_bytes.size(); ++i) {
    keys.push_back(absl::StrCat("parts:", i));
    heads.push_back(Value(16 + i, 100 + static_cast<uint32_t>(i)));
    bodies.push_back(Value(body_bytes[i], 200 + static_cast<uint32_t>(i)));
  }
  for (size_t i = 0; i < keys.size(); ++i) parts.push_back({heads[i], bodies[i]});
  RequireAllOk(client->SetParts(keys, parts, 0, In(milliseconds(5000))));
  // Whole values read back as head + body.
  auto whole = client->Get(keys, In(milliseconds(5000)));
  for (size_t i = 0; i < keys.size(); ++i) {
    REQUIRE_OK(whole[i]);
    REQUIRE(whole[i]->has_value());
    CHECK(**whole[i] == heads[i] + bodies[i]);
  }
  SECTION("into buffers of the exact sizes") {
    std::vector<std::string> h(keys.size()), b(keys.size());
    std::vector<RedisCluster::ReadTarget> targets;
    for (size_t i = 0; i < keys.size(); ++i) {
      h[i].assign(heads[i].size(), '?');
      b[i].assign(bodies[i].size(), '?');
      targets.push_back({h[i].data(), h[i].size(), b[i].data(), b[i].size()});
    }
    keys.push_back("parts:missing");
    targets.push_back({});
    auto got = client->GetInto(keys, targets, In(milliseconds(5000)));
    for (size_t i = 0; i + 1 < keys.size(); ++i) {
      REQUIRE_OK(got[i]);
      REQUIRE(got[i]->has_value());
      CHECK(**got[i] == heads[i].size() + bodies[i].size());
      CHECK(h[i] == heads[i]);
      CHECK(b[i] == bodies[i]);
    }
    REQUIRE_OK(got.back());
    CHECK_FALSE(got.back()->has_value());
    // Every value was received straight into its target.
    CHECK(client->stats().value_bytes_copied == 0);
  }
  SECTION("a value longer than its buffers is refused, a shorter one reports its length") {
    const size_t i = 4;  // 16 + 4 head bytes, 70000 body bytes
    const std::string value = heads[i] + bodies[i];
    std::string big_head(64, '?'), big_body(80000, '?');
    const std::vector<std::string> one = {keys[i]};
    // Regression #17: a longer value is refused (kUnavailable), nothing written past the target
    // (its own bytes are undefined: the value is received into it as it arrives); each in a
    // batch of its own, since the refusal closes the connection and fails the rest of its
    // pipeline.
    std::string small_guarded(8 + 100 + 4096, '?');
    const std::vector<RedisCluster::ReadTarget> small = {
        {small_guarded.data(), 8, small_guarded.data() + 8, 100}};
    auto refused = client->GetInto(one, small, In(milliseconds(5000)));
    REQUIRE_CODE(refused[0], absl::StatusCode::kUnavailable);
    CHECK(small_guarded.substr(108) == std::string(4096, '?'));
    const std::vector<RedisCluster::ReadTarget> big = {
        {big_head.data(), big_head.size(), big_body.data(), big_body.size()}};
    auto got = client->GetInto(one, big, In(milliseconds(5000)));
    REQUIRE_OK(got[0]);
    REQUIRE(got[0]->has_value());
    CHECK(**got[0] == value.size());
    CHECK(big_head == value.substr(0, 64));
    CHECK(big_body.substr(0, value.size() - 64) == value.substr(64));
    // The target's bytes past the shorter value are undefined (they may hold what was received
    // after it: the value is received into the target as if it had the target's length).
  }
  SECTION("mismatched spans are kInvalidArgument") {
    auto got = client->GetInto(keys, {}, In(milliseconds(5000)));
    REQUIRE(got.size() == keys.size());
    CHECK(got[0].status().code() == absl::StatusCode::kInvalidArgument);
  }
}

TEST_CASE("RedisCluster: bad configurations fail with their codes, quickly", "[redis]") {
  SECTION("malformed seeds") {
    for (std::string seed :
         {"", "localhost", "localhost:", ":6379", "host:0", "host:70000", "host:12ab"}) {
      CAPTURE(seed);
      REQUIRE_CODE(RedisCluster::Connect({.seeds = {seed}}), absl::StatusCode::kInvalidArgument);
    }
    REQUIRE_CODE(RedisCluster::Connect({}), absl::StatusCode::kInvalidArgument);
  }
  SECTION("no reachable node") {
    const auto start = Clock::now();
    auto client = RedisCluster::Connect({.seeds = {absl::StrCat("127.0.0.1:", ClosedPort()),
                                                   absl::StrCat("127.0.0.1:", ClosedPort())},
                                         .connect_timeout = milliseconds(200)});
    REQUIRE_CODE(client, absl::StatusCode::kUnavailable);
    CHECK(Clock::now() - start < milliseconds(2000));
  }
}

TEST_CASE("Regression #17: LocalRedisCluster retries only a taken port, never a real fault",
          "[redis]") {
  if (SkipWithoutRedis()) return;
  // A node that cannot start for another reason (here a bad maxmemory) fails Start at once.
  const int before = LocalRedisCluster::start_attempts.load();
  auto bad = LocalRedisCluster::Start({.maxmemory = "not-a-size"});
  REQUIRE_CODE(bad, absl::StatusCode::kFailedPrecondition);
  CHECK(LocalRedisCluster::start_attempts.load() - before == 1);
}

TEST_CASE("RedisCluster: a deadline already passed fails every key with kDeadlineExceeded",
          "[redis]") {
  if (SkipWithoutRedis()) return;
  LocalRedisCluster* cluster = SharedCluster();
  REQUIRE(cluster != nullptr);
  auto client = ConnectTo(*cluster);
  const std::vector<std::string> keys = {"late:1", "late:2", "late:3"};
  const std::vector<std::string> values = {"a", "b", "c"};
  const auto past = Clock::now() - milliseconds(1);
  for (const absl::Status& s : client->Set(keys, Views(values), 0, past)) {
    REQUIRE_CODE(s, absl::StatusCode::kDeadlineExceeded);
  }
  for (const auto& r : client->Get(keys, past)) {
    REQUIRE_CODE(r, absl::StatusCode::kDeadlineExceeded);
  }
  // The client is still usable with a real deadline.
  RequireAllOk(client->Set(keys, Views(values), 0, In(milliseconds(5000))));
}

TEST_CASE("RedisCluster: concurrent batches from 4 threads", "[redis]") {
  if (SkipWithoutRedis()) return;
  LocalRedisCluster* cluster = SharedCluster();
  REQUIRE(cluster != nullptr);
  auto client = ConnectTo(*cluster);
  std::atomic<int> failures{0};
  std::vector<std::thread> threads;
  for (int t = 0; t < 4; ++t) {
    threads.emplace_back([&, t] {
      for (int round = 0; round < 20; ++round) {
        std::vector<std::string> keys, values;
        for (int i = 0; i < 16; ++i) {
          keys.push_back(absl::StrCat("concurrent:", t, ":", i));
          values.push_back(Value(512, static_cast<uint32_t>(t * 1000 + round * 16 + i)));
        }
        for (const absl::Status& s : client->Set(keys, Views(values), 0, In(milliseconds(5000)))) {
          if (!s.ok()) failures++;
        }
        auto got = client->Get(keys, In(milliseconds(5000)));
        for (size_t i = 0; i < keys.size(); ++i) {
          if (!got[i].ok() || !got[i]->has_value() || **got[i] != values[i]) failures++;
        }
        if (round % 5 == 0 && !client->RefreshTopology().ok()) failures++;
      }
    });
  }
  for (std::thread& th : threads) th.join();
  CHECK(failures == 0);
  CHECK(client->stats().errors == 0);
}

TEST_CASE(
    "RedisCluster: a node that does not answer in time fails its keys with "
    "kDeadlineExceeded, and the client recovers",
    "[redis]") {
  if (SkipWithoutRedis()) return;
  LocalRedisCluster* cluster = SharedCluster();
  REQUIRE(cluster != nullptr);
  auto client = ConnectTo(*cluster);
  std::vector<std::string> keys, values;
  for (uint32_t i = 0; i < 24; ++i) {
    keys.push_back(absl::StrCat("slow:", i));
    values.push_back(Value(64, i));
  }
  RequireAllOk(client->Set(keys, Views(values), 0, In(milliseconds(5000))));

  // Master 0 holds every client's commands for 1 s: a 200 ms batch times out on its keys only.
  REQUIRE_OK(cluster->Cli(0, {"CLIENT", "PAUSE", "1000", "ALL"}));
  const auto start = Clock::now();
  auto got = client->Get(keys, In(milliseconds(200)));
  CHECK(Clock::now() - start < milliseconds(700));
  size_t timed_out = 0;
  for (size_t i = 0; i < keys.size(); ++i) {
    CAPTURE(keys[i]);
    if (client->NodeForSlot(RedisCluster::KeySlot(keys[i])) == cluster->nodes()[0]) {
      REQUIRE_CODE(got[i], absl::StatusCode::kDeadlineExceeded);
      timed_out++;
    } else {
      REQUIRE_OK(got[i]);
      CHECK(got[i]->value_or("") == values[i]);
    }
  }
  CHECK(timed_out > 0);
  CHECK(client->stats().timeouts > 0);

  // The timed-out connection was dropped (its late replies never answer another batch): once
  // the pause ends every key reads its own value.
  got = client->Get(keys, In(milliseconds(5000)));
  for (size_t i = 0; i < keys.size(); ++i) {
    CAPTURE(keys[i]);
    REQUIRE_OK(got[i]);
    CHECK(got[i]->value_or("") == values[i]);
  }
}

TEST_CASE("RedisCluster: AUTH with the cluster's password, a wrong one is kFailedPrecondition",
          "[redis]") {
  if (SkipWithoutRedis()) return;
  auto started = LocalRedisCluster::Start({.masters = 3, .password = "s3cret"});
  REQUIRE_OK(started);
  LocalRedisCluster& cluster = **started;
  REQUIRE_CODE(RedisCluster::Connect({.seeds = cluster.seeds(), .password = "wrong"}),
               absl::StatusCode::kFailedPrecondition);
  REQUIRE_CODE(RedisCluster::Connect({.seeds = cluster.seeds()}),
               absl::StatusCode::kFailedPrecondition);
  auto client = RedisCluster::Connect({.seeds = cluster.seeds(), .password = "s3cret"});
  REQUIRE_OK(client);
  const std::vector<std::string> keys = {"auth:a", "auth:b", "auth:c", "auth:d"};
  const std::vector<std::string> values = {"1", "2", "3", "4"};
  RequireAllOk((*client)->Set(keys, Views(values), 0, In(milliseconds(5000))));
  auto got = (*client)->Get(keys, In(milliseconds(5000)));
  for (size_t i = 0; i < keys.size(); ++i) {
    REQUIRE_OK(got[i]);
    CHECK(got[i]->value_or("") == values[i]);
  }
}

TEST_CASE("RedisCluster: MOVED is followed after a reshard, with a stale slot map", "[redis]") {
  if (SkipWithoutRedis()) return;
  auto started = LocalRedisCluster::Start({.masters = 3});
  REQUIRE_OK(started);
  LocalRedisCluster& cluster = **started;
  auto stale = ConnectTo(cluster);

  // Keys on master 0's lowest slots (what reshard moves first) and some anywhere.
  std::vector<std::string> keys, values;
  for (uint32_t i = 0; keys.size() < 48; ++i) {
    std::string key = absl::StrCat("moved:", i);
    if (keys.size() < 24 && RedisCluster::KeySlot(key) >= 500) continue;
    keys.push_back(std::move(key));
    values.push_back(Value(100 + i, i));
  }
  RequireAllOk(stale->Set(keys, Views(values), 0, In(milliseconds(5000))));
  const std::string before = stale->NodeForSlot(RedisCluster::KeySlot(keys[0]));
  REQUIRE(before == cluster.nodes()[0]);

  REQUIRE_OK(cluster.Reshard(0, 1, 500));
  // The stale client still routes slot(keys[0]) to master 0 until told otherwise.
  CHECK(stale->NodeForSlot(RedisCluster::KeySlot(keys[0])) == before);

  auto got = stale->Get(keys, In(milliseconds(5000)));
  for (size_t i = 0; i < keys.size(); ++i) {
    CAPTURE(keys[i]);
    REQUIRE_OK(got[i]);
    REQUIRE(got[i]->has_value());
    CHECK(**got[i] == values[i]);
  }
  CHECK(stale->stats().moved > 0);
  CHECK(stale->NodeForSlot(RedisCluster::KeySlot(keys[0])) == cluster.nodes()[1]);
  // The slot map was refreshed: a second read needs no redirect.
  const uint64_t moved = stale->stats().moved;
  got = stale->Get(keys, In(milliseconds(5000)));
  for (auto& g : got) REQUIRE_OK(g);
  CHECK(stale->stats().moved == moved);
}

TEST_CASE("RedisCluster: ASK is followed while a slot is migrating", "[redis]") {
  if (SkipWithoutRedis()) return;
  auto started = LocalRedisCluster::Start({.masters = 3});
  REQUIRE_OK(started);
  LocalRedisCluster& cluster = **started;
  auto client = ConnectTo(cluster);

  // Half-migrate the slot of "{ask}": master 0 MIGRATING to master 1, master 1 IMPORTING. A key
  // absent from the source is answered with ASK to the target.
  const std::string slot = absl::StrCat(RedisCluster::KeySlot("{ask}"));
  int from = -1;
  for (int m = 0; m < 3; ++m) {
    if (client->NodeForSlot(RedisCluster::KeySlot("{ask}")) == cluster.nodes()[m]) from = m;
  }
  REQUIRE(from >= 0);
  const int to = (from + 1) % 3;
  auto from_id = cluster.Cli(from, {"CLUSTER", "MYID"});
  auto to_id = cluster.Cli(to, {"CLUSTER", "MYID"});
  REQUIRE_OK(from_id);
  REQUIRE_OK(to_id);
  REQUIRE_OK(cluster.Cli(to, {"CLUSTER", "SETSLOT", slot, "IMPORTING",
                              std::string(absl::StripAsciiWhitespace(*from_id))}));
  REQUIRE_OK(cluster.Cli(from, {"CLUSTER", "SETSLOT", slot, "MIGRATING",
                                std::string(absl::StripAsciiWhitespace(*to_id))}));

  const std::vector<std::string> keys = {"{ask}:new"};
  const std::vector<std::string> values = {"asked"};
  RequireAllOk(client->Set(keys, Views(values), 0, In(milliseconds(5000))));
  CHECK(client->stats().ask == 1);
  CHECK(client->stats().moved == 0);
  auto got = client->Get(keys, In(milliseconds(5000)));
  REQUIRE_OK(got[0]);
  REQUIRE(got[0]->has_value());
  CHECK(**got[0] == "asked");
  CHECK(client->stats().ask == 2);
  // ASK does not change the slot map: the slot still belongs to the source.
  CHECK(client->NodeForSlot(RedisCluster::KeySlot("{ask}")) == cluster.nodes()[from]);
}

TEST_CASE("RedisCluster: a killed master fails fast, and the client recovers after failover",
          "[redis]") {
  if (SkipWithoutRedis()) return;
  auto started = LocalRedisCluster::Start({.masters = 3, .replicas_per_master = 1});
  REQUIRE_OK(started);
  LocalRedisCluster& cluster = **started;
  auto client = ConnectTo(cluster);

  std::vector<std::string> keys, values, victim_keys;
  for (uint32_t i = 0; i < 48; ++i) {
    keys.push_back(absl::StrCat("failover:", i));
    values.push_back(Value(2000, i));
  }
  RequireAllOk(client->Set(keys, Views(values), 0, In(milliseconds(5000))));
  REQUIRE_OK(cluster.WaitReplicated(milliseconds(10000)));

  cluster.Kill(0);
  const std::string dead = cluster.nodes()[0];
  const auto start = Clock::now();
  auto got = client->Get(keys, In(milliseconds(1000)));
  CHECK(Clock::now() - start < milliseconds(1500));
  size_t failed = 0;
  for (size_t i = 0; i < keys.size(); ++i) {
    CAPTURE(keys[i]);
    if (client->NodeForSlot(RedisCluster::KeySlot(keys[i])) == dead) {
      CHECK_FALSE(got[i].ok());
      failed++;
    } else {
      REQUIRE_OK(got[i]);
      CHECK(got[i]->value_or("") == values[i]);
    }
  }
  CHECK(failed > 0);
  // While the node is down its keys keep failing fast (reconnect backoff, refused connects).
  const auto again = Clock::now();
  got = client->Get(keys, In(milliseconds(1000)));
  CHECK(Clock::now() - again < milliseconds(1500));

  REQUIRE_OK(cluster.WaitHealthy(milliseconds(20000)));
  REQUIRE_OK(client->RefreshTopology());
  got = client->Get(keys, In(milliseconds(5000)));
  for (size_t i = 0; i < keys.size(); ++i) {
    CAPTURE(keys[i]);
    REQUIRE_OK(got[i]);
    REQUIRE(got[i]->has_value());
    CHECK(**got[i] == values[i]);
  }
  CHECK(client->stats().connect_failures + client->stats().errors > 0);

  // The old master comes back as a replica of its successor.
  REQUIRE_OK(cluster.Restart(0));
  RequireAllOk(client->Set(keys, Views(values), 0, In(milliseconds(5000))));
}

// Hostile peers (FakeRedisPeer: no redis-server needed). Each bound on time is a hang guard, not
// a benchmark: the deadline plus 2 s for a loaded machine, against the 10 s a peer streams.
constexpr milliseconds kSlack{2000};

// A peer that answers `verb` (or CLUSTER SLOTS when verb is "CLUSTER") with `bytes`, then streams
// `stream` until the client hangs up; the rest of the commands get well-behaved answers.
FakeRedisPeer::Script Answering(std::string verb, std::string bytes, std::string stream) {
  return [=](const std::vector<std::string>& command) -> std::optional<FakeRedisPeer::Answer> {
    if (command.empty() || command[0] != verb) return std::nullopt;
    return FakeRedisPeer::Answer{.bytes = bytes, .stream = stream};
  };
}

TEST_CASE("Regression #17: a peer streaming a reply with no CRLF fails the call by its deadline",
          "[redis][hostile]") {
  // A status line, an error line, an integer and a bulk length that never end: the client must
  // neither read for as long as the peer sends nor buffer it all.
  const auto [verb, bytes, stream] = GENERATE(table<std::string, std::string, std::string>({
      {"CLUSTER", "+", "x"},
      {"EXISTS", "-ERR ", "y"},
      {"EXISTS", ":", "1"},
      {"GET", "$", "9"},
      {"GET", "+OK", "z"},
  }));
  CAPTURE(verb, bytes);
  FakeRedisPeer peer(Answering(verb, bytes, stream));
  const milliseconds timeout(300);
  const auto start = Clock::now();
  if (verb == "CLUSTER") {
    auto client = RedisCluster::Connect({.seeds = {peer.addr()}, .connect_timeout = timeout});
    CHECK(Clock::now() - start < timeout + kSlack);
    INFO(client.status().ToString());
    CHECK((client.status().code() == absl::StatusCode::kDeadlineExceeded ||
           client.status().code() == absl::StatusCode::kUnavailable));
    return;
  }
  auto client = RedisCluster::Connect({.seeds = {peer.addr()}, .connect_timeout = timeout});
  REQUIRE_OK(client);
  const std::vector<std::string> keys = {"a", "b", "c"};
  const auto call_start = Clock::now();
  std::vector<absl::Status> results;
  if (verb == "EXISTS") {
    for (const auto& r : (*client)->Exists(keys, In(milliseconds(5))))
      results.push_back(r.status());
  } else {
    char head[128], body[4096];
    std::vector<RedisCluster::ReadTarget> targets(
        keys.size(),
        {.head = head, .head_len = sizeof(head), .body = body, .body_len = sizeof(body)});
    for (const auto& r : (*client)->GetInto(keys, targets, In(timeout))) {
      results.push_back(r.status());
    }
  }
  CHECK(Clock::now() - call_start < timeout + kSlack);
  for (const absl::Status& s : results) {
    INFO(s.ToString());
    CHECK((s.code() == absl::StatusCode::kDeadlineExceeded ||
           s.code() == absl::StatusCode::kUnavailable));
  }
}

TEST_CASE("Regression #17: a value announced longer than expected is refused before it is read",
          "[redis][hostile]") {
  // 2^62 bytes announced, then bytes for as long as the client takes them: the client refuses
  // the length itself, so the peer gets rid of what the sockets hold and no more.
  const std::string announced = GENERATE(as<std::string>(), "4611686018427387904", "4225",
                                         "9223372036854775807", "99999999999999999999");
  CAPTURE(announced);
  FakeRedisPeer peer(Answering("GET", absl::StrCat("$", announced, "\r\n"), "v"));
  auto client = RedisCluster::Connect({.seeds = {peer.addr()}});
  REQUIRE_OK(client);
  const uint64_t before = peer.bytes_sent();
  const milliseconds timeout(1000);
  const auto start = Clock::now();
  char head[128], body[4096];
  const std::vector<std::string> keys = {"k"};
  const std::vector<RedisCluster::ReadTarget> targets = {
      {.head = head, .head_len = sizeof(head), .body = body, .body_len = sizeof(body)}};
  auto got = (*client)->GetInto(keys, targets, In(timeout));
  CHECK(Clock::now() - start < timeout + kSlack);
  REQUIRE(got.size() == 1);
  INFO(got[0].status().ToString());
  CHECK(!got[0].ok());
  // What the loopback sockets buffer (a few MiB), not the 1 GiB the peer would send.
  CHECK(peer.bytes_sent() - before < (32u << 20));

  SECTION("without a target (Get), the reply cap bounds it") {
    const uint64_t before_get = peer.bytes_sent();
    auto whole = (*client)->Get(keys, In(timeout));
    REQUIRE(whole.size() == 1);
    if (announced != "4225") {
      CHECK(!whole[0].ok());
      CHECK(peer.bytes_sent() - before_get < (32u << 20) + (64u << 20));
    }
  }
}

TEST_CASE("RedisCluster: a shorter value than the target is read whole, reported by its length",
          "[redis][hostile]") {
  // A value shorter than expected is small: it is read, and GetInto reports its length (the
  // caller refuses it), and the connection stays in step for the next reply.
  std::atomic<int> gets{0};
  FakeRedisPeer peer(
      [&](const std::vector<std::string>& command) -> std::optional<FakeRedisPeer::Answer> {
        if (command.empty() || command[0] != "GET") return std::nullopt;
        if (gets++ == 0) return FakeRedisPeer::Answer{.bytes = "$5\r\nshort\r\n"};
        return FakeRedisPeer::Answer{.bytes = absl::StrCat("$", 8, "\r\n", "12345678", "\r\n")};
      });
  auto client = RedisCluster::Connect({.seeds = {peer.addr()}});
  REQUIRE_OK(client);
  char head[4], body[4];
  const std::vector<std::string> keys = {"a", "b"};
  const std::vector<RedisCluster::ReadTarget> targets(
      2, {.head = head, .head_len = sizeof(head), .body = body, .body_len = sizeof(body)});
  auto got = (*client)->GetInto(keys, targets, In(milliseconds(5000)));
  REQUIRE(got.size() == 2);
  REQUIRE_OK(got[0]);
  CHECK(got[0]->value_or(0) == 5);
  REQUIRE_OK(got[1]);
  CHECK(got[1]->value_or(0) == 8);
  CHECK(std::string(head, 4) + std::string(body, 4) == "12345678");
}

// ---- GetInto: values received off the socket straight into their targets ----

// "$<len>\r\n<value>\r\n".
std::string Bulk(const std::string& value) {
  return absl::StrCat("$", value.size(), "\r\n", value, "\r\n");
}

// A target of `head` + `body` bytes in one buffer followed by kGuard guard bytes ('#').
struct Guarded {
  static constexpr size_t kGuard = 4096;
  Guarded(size_t head, size_t body) : head_len(head), buf(head + body + kGuard, '#') {}
  RedisCluster::ReadTarget target() {
    return {buf.data(), head_len, buf.data() + head_len, buf.size() - kGuard - head_len};
  }
  std::string value() const { return buf.substr(0, buf.size() - kGuard); }
  bool guard_intact() const { return buf.substr(buf.size() - kGuard) == std::string(kGuard, '#'); }
  size_t head_len;
  std::string buf;
};

TEST_CASE("GetInto: a value split across reads anywhere is received whole into its target",
          "[redis][hostile]") {
  // Every GET answered with its key's value in pieces (20 ms apart, so each piece is a read of
  // its own): inside the length line, inside the value, before its CRLF, between CR and LF.
  constexpr size_t kValue = 100000;
  const size_t prefix = Bulk(std::string(kValue, 'x')).size() - kValue - 2;  // "$100000\r\n"
  const std::vector<size_t> cuts =
      GENERATE_COPY(std::vector<size_t>{1}, std::vector<size_t>{3}, std::vector<size_t>{prefix - 1},
                    std::vector<size_t>{prefix}, std::vector<size_t>{prefix + 1},
                    std::vector<size_t>{prefix + kValue / 2}, std::vector<size_t>{prefix + kValue},
                    std::vector<size_t>{prefix + kValue + 1},
                    std::vector<size_t>{2, 5, 100, kValue / 3, prefix + kValue + 1});
  CAPTURE(cuts);
  FakeRedisPeer peer(
      [&](const std::vector<std::string>& command) -> std::optional<FakeRedisPeer::Answer> {
        if (command.size() != 2 || command[0] != "GET") return std::nullopt;
        return FakeRedisPeer::Answer{
            .bytes = Bulk(Value(kValue, command[1][0])), .cuts = cuts, .pause = milliseconds(20)};
      });
  auto client = RedisCluster::Connect({.seeds = {peer.addr()}});
  REQUIRE_OK(client);
  // Three keys in one pipeline: each reply follows the last one's end on the same connection.
  const std::vector<std::string> keys = {"a", "b", "c"};
  std::vector<Guarded> buffers(keys.size(), Guarded(64, kValue - 64));
  std::vector<RedisCluster::ReadTarget> targets;
  for (Guarded& g : buffers) targets.push_back(g.target());
  auto got = (*client)->GetInto(keys, targets, In(milliseconds(10000)));
  for (size_t i = 0; i < keys.size(); ++i) {
    CAPTURE(i);
    REQUIRE_OK(got[i]);
    REQUIRE(got[i]->has_value());
    CHECK(**got[i] == kValue);
    CHECK(buffers[i].value() == Value(kValue, keys[i][0]));
    CHECK(buffers[i].guard_intact());
  }
  // Received into the targets: not one value byte copied through the connection's buffer.
  CHECK((*client)->stats().value_bytes_copied == 0);
}

TEST_CASE("GetInto: nil, errors and values of another length between values, split anywhere",
          "[redis][hostile]") {
  // In one pipeline: a value of the expected length, a nil, an error, a shorter value, a longer
  // one (refused: it closes the connection, failing what follows it), each reply in pieces.
  constexpr size_t kValue = 70000;
  const size_t cut = GENERATE(1, 2, 4, 9);
  CAPTURE(cut);
  std::map<std::string, std::string> answers = {
      {"a", Bulk(Value(kValue, 'a'))}, {"b", "$-1\r\n"},
      {"c", "-ERR no such thing\r\n"}, {"d", Bulk("short")},
      {"e", Bulk(Value(kValue, 'e'))}, {"f", Bulk(Value(kValue + 1, 'f'))},
      {"g", Bulk(Value(kValue, 'g'))}};
  FakeRedisPeer peer(
      [&](const std::vector<std::string>& command) -> std::optional<FakeRedisPeer::Answer> {
        if (command.size() != 2 || command[0] != "GET") return std::nullopt;
        return FakeRedisPeer::Answer{
            .bytes = answers.at(command[1]), .cuts = {cut}, .pause = milliseconds(10)};
      });
  auto client = RedisCluster::Connect({.seeds = {peer.addr()}});
  REQUIRE_OK(client);
  const std::vector<std::string> keys = {"a", "b", "c", "d", "e", "f", "g"};
  std::vector<Guarded> buffers(keys.size(), Guarded(16, kValue - 16));
  std::vector<RedisCluster::ReadTarget> targets;
  for (Guarded& g : buffers) targets.push_back(g.target());
  auto got = (*client)->GetInto(keys, targets, In(milliseconds(10000)));
  REQUIRE_OK(got[0]);
  CHECK(got[0]->value_or(0) == kValue);
  CHECK(buffers[0].value() == Value(kValue, 'a'));
  REQUIRE_OK(got[1]);
  CHECK_FALSE(got[1]->has_value());
  REQUIRE_CODE(got[2], absl::StatusCode::kInternal);
  CHECK(got[2].status().message().find("no such thing") != std::string::npos);
  REQUIRE_OK(got[3]);
  CHECK(got[3]->value_or(0) == 5);
  CHECK(buffers[3].value().substr(0, 5) == "short");
  REQUIRE_OK(got[4]);
  CHECK(got[4]->value_or(0) == kValue);
  CHECK(buffers[4].value() == Value(kValue, 'e'));
  REQUIRE_CODE(got[5], absl::StatusCode::kUnavailable);
  CHECK(got[6].status().code() == absl::StatusCode::kUnavailable);
  for (size_t i = 0; i < keys.size(); ++i) {
    CAPTURE(i);
    CHECK(buffers[i].guard_intact());
  }
  // Only the shorter value went through the connection's buffer, and the first bytes of the
  // value after it if they came in the same read as its end (at most `cut` bytes).
  CHECK((*client)->stats().value_bytes_copied >= 5);
  CHECK((*client)->stats().value_bytes_copied <= 5 + cut);
}

TEST_CASE("GetInto: a connection lost or stalled mid-value fails the key, nothing past the target",
          "[redis][hostile]") {
  constexpr size_t kValue = 200000;
  const bool hang_up = GENERATE(true, false);
  CAPTURE(hang_up);
  const std::string reply = Bulk(Value(kValue, 'v'));
  FakeRedisPeer peer(
      [&](const std::vector<std::string>& command) -> std::optional<FakeRedisPeer::Answer> {
        if (command.size() != 2 || command[0] != "GET") return std::nullopt;
        // Half the value, then the connection closed, or nothing more for 3 s.
        if (hang_up)
          return FakeRedisPeer::Answer{.bytes = reply.substr(0, kValue / 2), .hang_up = true};
        return FakeRedisPeer::Answer{
            .bytes = reply, .cuts = {kValue / 2}, .pause = milliseconds(3000)};
      });
  auto client = RedisCluster::Connect({.seeds = {peer.addr()}});
  REQUIRE_OK(client);
  Guarded buffer(64, kValue - 64);
  const std::vector<std::string> keys = {"k"};
  const std::vector<RedisCluster::ReadTarget> targets = {buffer.target()};
  const milliseconds timeout(300);
  const auto start = Clock::now();
  auto got = (*client)->GetInto(keys, targets, In(timeout));
  CHECK(Clock::now() - start < timeout + kSlack);
  INFO(got[0].status().ToString());
  CHECK(got[0].status().code() ==
        (hang_up ? absl::StatusCode::kUnavailable : absl::StatusCode::kDeadlineExceeded));
  CHECK(buffer.guard_intact());
}

TEST_CASE("GetInto: a value longer than its target is refused, nothing written past the target",
          "[redis][hostile]") {
  // Longer by one byte (its length line as long as the expected one's) or by far (a longer
  // line), whole or in pieces: kUnavailable, and the guard after the target untouched.
  constexpr size_t kValue = 50000;
  const size_t longer = GENERATE(kValue + 1, 10 * kValue);
  const size_t cut = GENERATE(0, 3, 20000);
  CAPTURE(longer, cut);
  FakeRedisPeer peer(
      [&](const std::vector<std::string>& command) -> std::optional<FakeRedisPeer::Answer> {
        if (command.size() != 2 || command[0] != "GET") return std::nullopt;
        return FakeRedisPeer::Answer{
            .bytes = Bulk(Value(longer, 'L')), .cuts = {cut}, .pause = milliseconds(10)};
      });
  auto client = RedisCluster::Connect({.seeds = {peer.addr()}});
  REQUIRE_OK(client);
  Guarded buffer(64, kValue - 64);
  const std::vector<std::string> keys = {"k"};
  const std::vector<RedisCluster::ReadTarget> targets = {buffer.target()};
  auto got = (*client)->GetInto(keys, targets, In(milliseconds(5000)));
  REQUIRE_CODE(got[0], absl::StatusCode::kUnavailable);
  CHECK(buffer.guard_intact());
}

// ---- ReplyParser: the reply side fed bytes directly (resp_reader.h) ----

// A hiredis reader set up as a connection's, freed at the end of the scope.
struct TestReader {
  TestReader() : r(redisReaderCreate()) { SetUpRespReader(r); }
  ~TestReader() { redisReaderFree(r); }
  redisReader* r;
};

// The next reply of `reader` from `bytes` fed `chunk` bytes at a time (consumed from the front).
absl::StatusOr<ReplyPtr> NextReply(TestReader& reader, std::string* bytes, size_t chunk,
                                   const RedisCluster::ReadTarget* target = nullptr,
                                   uint64_t max_reply_bytes = 1 << 20) {
  ReplyParser parser(reader.r, "peer", max_reply_bytes, target);
  for (;;) {
    absl::StatusOr<ReplyPtr> reply = parser.Poll();
    if (!reply.ok() || *reply != nullptr || bytes->empty()) return reply;
    const size_t n = std::min(chunk, bytes->size());
    if (absl::Status s = parser.Feed(bytes->data(), n); !s.ok()) return s;
    bytes->erase(0, n);
  }
}

TEST_CASE("ReplyParser: replies fed in any chunks come out whole and in order", "[redis]") {
  const size_t chunk = GENERATE(1, 3, 1000);
  CAPTURE(chunk);
  TestReader reader;
  std::string bytes = "+OK\r\n:42\r\n$5\r\nhello\r\n$-1\r\n*2\r\n:1\r\n$0\r\n\r\n-ERR no\r\n";
  auto ok = NextReply(reader, &bytes, chunk);
  REQUIRE_OK(ok);
  CHECK(((*ok)->type == REDIS_REPLY_STATUS && std::string((*ok)->str, (*ok)->len) == "OK"));
  auto integer = NextReply(reader, &bytes, chunk);
  REQUIRE_OK(integer);
  CHECK(((*integer)->type == REDIS_REPLY_INTEGER && (*integer)->integer == 42));
  auto str = NextReply(reader, &bytes, chunk);
  REQUIRE_OK(str);
  CHECK(std::string((*str)->str, (*str)->len) == "hello");
  auto nil = NextReply(reader, &bytes, chunk);
  REQUIRE_OK(nil);
  CHECK((*nil)->type == REDIS_REPLY_NIL);
  auto array = NextReply(reader, &bytes, chunk);
  REQUIRE_OK(array);
  CHECK(((*array)->type == REDIS_REPLY_ARRAY && (*array)->elements == 2));
  auto err = NextReply(reader, &bytes, chunk);
  REQUIRE_OK(err);
  CHECK((*err)->type == REDIS_REPLY_ERROR);
  auto none = NextReply(reader, &bytes, chunk);
  REQUIRE_OK(none);
  CHECK(*none == nullptr);  // no more bytes: no reply yet
}

TEST_CASE("ReplyParser: a value goes to its target, and a longer one or a long line is refused",
          "[redis]") {
  const size_t chunk = GENERATE(1, 1000);
  CAPTURE(chunk);
  char head[2], body[4];
  const RedisCluster::ReadTarget target{.head = head, .head_len = 2, .body = body, .body_len = 4};
  {
    TestReader reader;
    std::string bytes = "$5\r\nhello\r\n";
    ReplyParser parser(reader.r, "peer", 1 << 20, &target);
    REQUIRE(parser.Feed(bytes.data(), bytes.size()).ok());
    auto reply = parser.Poll();
    REQUIRE_OK(reply);
    CHECK(IsSunkReply(reply->get()));
    CHECK(parser.value_bytes() == std::optional<size_t>(5));
    CHECK(std::string(head, 2) == "he");
    CHECK(std::string(body, 3) == "llo");
  }
  {
    TestReader reader;
    std::string bytes = "$7\r\nhello!!\r\n";
    REQUIRE_CODE(NextReply(reader, &bytes, chunk, &target), absl::StatusCode::kUnavailable);
  }
  {
    TestReader reader;
    std::string bytes = "+" + std::string(kMaxLineBytes + 10, 'x');
    REQUIRE_CODE(NextReply(reader, &bytes, chunk == 1 ? 4096 : kMaxLineBytes + 11),
                 absl::StatusCode::kUnavailable);
  }
  {
    TestReader reader;
    std::string bytes = "*2000000\r\n";
    REQUIRE_CODE(NextReply(reader, &bytes, chunk), absl::StatusCode::kUnavailable);
  }
}

TEST_CASE("ParseClusterSlots: a full map, a partial one, and malformed entries", "[redis]") {
  auto parse = [](std::string bytes) -> absl::StatusOr<std::vector<std::string>> {
    TestReader reader;
    absl::StatusOr<ReplyPtr> reply = NextReply(reader, &bytes, bytes.size());
    if (!reply.ok()) return reply.status();
    if (*reply == nullptr) return absl::UnknownError("incomplete reply");
    return ParseClusterSlots(reply->get(), "10.0.0.9:7000", "10.0.0.9");
  };
  auto full = parse(
      "*2\r\n*3\r\n:0\r\n:99\r\n*2\r\n$7\r\n1.2.3.4\r\n:7001\r\n"
      "*3\r\n:100\r\n:16383\r\n*2\r\n$1\r\n?\r\n:7002\r\n");
  REQUIRE_OK(full);
  CHECK((*full)[0] == "1.2.3.4:7001");
  CHECK((*full)[99] == "1.2.3.4:7001");
  CHECK((*full)[16383] == "10.0.0.9:7002");
  REQUIRE_CODE(parse("*1\r\n*3\r\n:0\r\n:99\r\n*2\r\n$1\r\nh\r\n:1\r\n"),
               absl::StatusCode::kFailedPrecondition);
  REQUIRE_CODE(parse("-ERR This instance has cluster support disabled\r\n"),
               absl::StatusCode::kFailedPrecondition);
  REQUIRE_CODE(parse("*1\r\n*3\r\n:0\r\n:16384\r\n*2\r\n$1\r\nh\r\n:1\r\n"),
               absl::StatusCode::kInternal);
  REQUIRE_CODE(parse("*1\r\n*2\r\n:0\r\n:1\r\n"), absl::StatusCode::kInternal);
  REQUIRE_CODE(parse(":5\r\n"), absl::StatusCode::kInternal);
}

TEST_CASE("ParseRedirect: MOVED and ASK with a slot in range and a target", "[redis]") {
  int slot = -1;
  std::string addr;
  CHECK(ParseRedirect("MOVED 3999 127.0.0.1:6381", "MOVED", &slot, &addr));
  CHECK((slot == 3999 && addr == "127.0.0.1:6381"));
  CHECK(ParseRedirect("ASK 0 h:1", "ASK", &slot, &addr));
  CHECK_FALSE(ParseRedirect("ASK 0 h:1", "MOVED", &slot, &addr));
  CHECK_FALSE(ParseRedirect("MOVED 16384 h:1", "MOVED", &slot, &addr));
  CHECK_FALSE(ParseRedirect("MOVED -1 h:1", "MOVED", &slot, &addr));
  CHECK_FALSE(ParseRedirect("MOVED 12 ", "MOVED", &slot, &addr));
  CHECK_FALSE(ParseRedirect("MOVED 12", "MOVED", &slot, &addr));
  CHECK_FALSE(ParseRedirect("MOVED", "MOVED", &slot, &addr));
}

}  // namespace
}  // namespace kvtier::internal
