// kvtier-replay's library: the trace parser and both replay modes.
#include "bench/replay.h"

#include <unistd.h>

#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <list>
#include <sstream>
#include <string>
#include <unordered_map>
#include <vector>

#include "bench/trace.h"
#include "test/util/redis_cluster_fixture.h"
#include "test/util/test_util.h"

namespace kvtier::replay {
namespace {

// Five requests over five blocks; with LRU and 4 slots the flat and cache modes differ (see the
// exact-count test for the hand-derived numbers).
constexpr char kTinyTrace[] =
    R"({"timestamp": 0, "input_length": 1500, "output_length": 5, "hash_ids": [0, 1, 2]}
{"timestamp": 1, "input_length": 1500, "output_length": 5, "hash_ids": [0, 1, 3]}
{"timestamp": 2, "input_length": 1500, "output_length": 5, "hash_ids": [0, 1, 2]}
{"timestamp": 3, "input_length": 1000, "output_length": 5, "hash_ids": [0, 4]}
{"timestamp": 4, "input_length": 1500, "output_length": 5, "hash_ids": [0, 1, 3]}
)";

Trace Parse(const std::string& text) {
  absl::StatusOr<Trace> t = ParseTrace(text, "test.jsonl");
  REQUIRE_OK(t.status());
  return *std::move(t);
}

// The real trace, beside the repository (../shared/data), as in CI; empty when absent.
std::string RealTracePath() {
  const std::filesystem::path p = std::filesystem::path(__FILE__).parent_path().parent_path() /
                                  ".." / "shared" / "data" / "conversation_trace.jsonl";
  return std::filesystem::exists(p) ? p.string() : std::string();
}

TEST_CASE("Replay: the parser reads requests, remaps ids densely and records parents", "[replay]") {
  const Trace t = Parse(
      "{\"timestamp\": 7, \"input_length\": 1024, \"output_length\": 3, \"hash_ids\": [10, 20]}\n"
      "\n"
      "  { \"hash_ids\" : [10,30,40] , \"input_length\":1500, \"extra\": {\"a\": [1, \"]\"]},"
      " \"timestamp\": 12.5 }\r\n"
      "{\"input_length\": 0, \"hash_ids\": []}");
  REQUIRE(t.requests.size() == 3);
  CHECK(t.requests[0].timestamp_ms == 7);
  CHECK(t.requests[0].input_tokens == 1024);
  CHECK(t.requests[0].output_tokens == 3);
  CHECK(t.requests[0].line == 1);
  CHECK(t.requests[1].line == 3);
  CHECK(t.requests[1].timestamp_ms == 12);
  CHECK(t.requests[1].output_tokens == 0);
  CHECK(t.requests[2].num_blocks == 0);
  CHECK(t.blocks == std::vector<uint32_t>{0, 1, 0, 2, 3});
  CHECK(t.unique_blocks() == 4);
  CHECK(t.parent == std::vector<uint32_t>{Trace::kNoParent, 0, 0, 2});
  CHECK(t.max_hash_id == 40);
  CHECK(t.prefix_violations == 0);
  CHECK(t.block_accesses() == 5);

  SECTION("max_requests keeps the first requests") {
    absl::StatusOr<Trace> first = ParseTrace(kTinyTrace, "tiny", 2);
    REQUIRE_OK(first.status());
    CHECK(first->requests.size() == 2);
    CHECK(first->block_accesses() == 6);
  }
  SECTION("an id under another parent than before is counted, not rejected") {
    const Trace v = Parse(
        "{\"input_length\": 1, \"hash_ids\": [1, 2]}\n{\"input_length\": 1, \"hash_ids\": [3, 2]}");
    CHECK(v.prefix_violations == 1);
    const std::vector<BlockKey> keys = ChainKeys(v);
    CHECK(keys[1] != keys[3]);  // same id, other prefix: another key in the cache
  }
}

TEST_CASE("Replay: malformed lines are rejected with their line number", "[replay]") {
  const std::string good = "{\"input_length\": 512, \"hash_ids\": [0]}\n";
  const char* bad =
      GENERATE("{\"input_length\": 512, \"hash_ids\": [0, x]}",
               "{\"input_length\": 512, \"hash_ids\": [0, 1}",
               "{\"input_length\": 512, \"hash_ids\": [0, -1]}", "{\"input_length\": 512}",
               "{\"hash_ids\": [0]}", "{\"input_length\": 512, \"hash_ids\": [0]} trailing",
               "{\"input_length\": 512, \"hash_ids\": [0, 1, 0]}",
               "{\"input_length\": 512, \"hash_ids\": [0], \"hash_ids\": [1]}",
               "{\"input_length\": 5.5, \"hash_ids\": [0]}", "[0, 1]",
               "{\"input_length\": 512, \"hash_ids\": [99999999999999999999]}",
               "{\"input_length\": 512 \"hash_ids\": [0]}");
  CAPTURE(bad);
  absl::StatusOr<Trace> t = ParseTrace(good + "\n" + bad + "\n" + good, "bad.jsonl");
  REQUIRE(t.status().code() == absl::StatusCode::kInvalidArgument);
  // The line number is the contract here (users fix their file by it).
  CHECK_THAT(std::string(t.status().message()), Catch::Contains("bad.jsonl:3:"));
}

TEST_CASE("Replay: a missing trace file is an error, not a crash", "[replay]") {
  absl::StatusOr<Trace> t = ReadTrace("/nonexistent/kvtier/trace.jsonl");
  CHECK(t.status().code() == absl::StatusCode::kNotFound);
}

TEST_CASE("Regression #17: a sparse file or /dev/zero as the trace is an error, not an abort",
          "[replay]") {
  // Issue 17 #10: the whole input was read into memory first (a 100 GiB sparse file: bad_alloc).
  absl::StatusOr<Trace> zero = ReadTrace("/dev/zero");
  CHECK(zero.status().code() == absl::StatusCode::kInvalidArgument);
  CHECK_THAT(std::string(zero.status().message()), Catch::Contains("NUL byte at offset 0"));
  test::TempDir dir("replay-sparse");
  const std::filesystem::path sparse = dir.path / "sparse.jsonl";
  {
    std::ofstream out(sparse);
    out << "{\"timestamp\": 0, \"input_length\": 512, \"output_length\": 1, \"hash_ids\": [0]}\n";
  }
  std::filesystem::resize_file(sparse, uint64_t{100} << 30);  // 100 GiB of holes after the line
  absl::StatusOr<Trace> t = ReadTrace(sparse.string());
  CHECK(t.status().code() == absl::StatusCode::kInvalidArgument);
  CHECK_THAT(std::string(t.status().message()), Catch::Contains("NUL byte"));
}

TEST_CASE("Replay: LRU hit counts on a tiny trace, flat and cache modes", "[replay]") {
  const Trace t = Parse(kTinyTrace);
  REQUIRE(t.block_accesses() == 14);
  const auto run = [&](Mode mode, uint32_t slots) {
    absl::StatusOr<ReplayResult> r = Replay(t, {.mode = mode, .device_blocks = slots});
    REQUIRE_OK(r.status());
    return *r;
  };
  SECTION("room for every block: hits are the re-accesses") {
    for (Mode mode : {Mode::kFlat, Mode::kCache}) {
      const ReplayResult r = run(mode, 8);
      CHECK(r.hit_blocks == 9);
      CHECK(r.prefix_hit_blocks == 9);
      CHECK(r.tiers[0].evictions == 0);
      // Prefix hits per request 0, 2, 3, 1, 3 blocks of 512 tokens, capped at input_length.
      CHECK(r.prefix_hit_tokens == 0 + 1024 + 1500 + 512 + 1500);
      CHECK(r.input_tokens == 7000);
      CHECK(r.mean_request_prefix_ratio() == Approx((0 + 2.0 / 3 + 1 + 0.5 + 1) / 5));
    }
  }
  SECTION("flat, 4 slots: libCacheSim's LRU") {
    // 0 1 2 | 0h 1h 3 | 0h 1h 2h | 0h 4 (evicts 3) | 0h 1h 3 (evicts 2)
    const ReplayResult r = run(Mode::kFlat, 4);
    CHECK(r.hit_blocks == 8);
    CHECK(r.prefix_hit_blocks == 8);
    CHECK(r.tiers[0].evictions == 2);
  }
  SECTION("cache, 4 slots: AllocateDevice(n) evicts before Load shares the matched blocks") {
    // Each later request matches 0 and 1, then allocates a slot per block: with one slot free it
    // evicts the cold leaf and then 1 (a leaf by then), so only block 0 is served: 1 hit each.
    const ReplayResult r = run(Mode::kCache, 4);
    CHECK(r.hit_blocks == 4);
    CHECK(r.matched_blocks == 7);  // Match saw 2, 2, 1, 2 blocks
    CHECK(r.tiers[0].evictions == 7);
    CHECK(r.tiers[0].hits == 4);
  }
}

TEST_CASE("Replay: cache mode caps requests longer than the device tier", "[replay]") {
  const Trace t = Parse(kTinyTrace);
  absl::StatusOr<ReplayResult> r = Replay(t, {.mode = Mode::kCache, .device_blocks = 2});
  REQUIRE_OK(r.status());
  CHECK(r->capped_blocks == 4);  // the third block of the four 3-block requests
  CHECK(r->block_accesses == 14);
}

TEST_CASE("Replay: full mode moves bytes and serves the same hits as metadata-only", "[replay]") {
  const Trace t = Parse(kTinyTrace);
  const std::filesystem::path dir =
      std::filesystem::temp_directory_path() / ("kvtier_replay_test_" + std::to_string(getpid()));
  std::filesystem::create_directories(dir);
  ReplayConfig config{.mode = Mode::kCache,
                      .device_blocks = 3,
                      .host_blocks = 2,
                      .disk_blocks = 4,
                      .disk_directory = dir.string(),
                      .shape = {.tokens_per_block = 512, .layers = 2, .block_bytes = 16384}};
  absl::StatusOr<ReplayResult> meta = Replay(t, config);
  config.payload = true;
  absl::StatusOr<ReplayResult> full = Replay(t, config);
  std::error_code ec;
  const bool left_files = !std::filesystem::is_empty(dir, ec);
  std::filesystem::remove_all(dir, ec);
  REQUIRE_OK(meta.status());
  REQUIRE_OK(full.status());
  CHECK_FALSE(left_files);  // each payload replay works in its own scratch directory
  CHECK(full->hit_blocks == meta->hit_blocks);
  CHECK(full->bytes_d2h == meta->bytes_d2h);
  CHECK(full->bytes_h2d == meta->bytes_h2d);
  CHECK(full->bytes_d2h > 0);
  CHECK(full->bytes_d2h % 16384 == 0);
  CHECK(full->tiers[static_cast<int>(Tier::kHost)].capacity_blocks == 2);
  CHECK(full->tiers[static_cast<int>(Tier::kDisk)].capacity_blocks >= 4);
  CHECK(meta->tiers[1].hits + meta->tiers[2].hits > 0);  // the lower tiers served something
}

TEST_CASE("Replay: a host codec holds more blocks in the same bytes and moves fewer to disk",
          "[replay]") {
  const Trace t = Parse(kTinyTrace);
  const std::filesystem::path dir =
      std::filesystem::temp_directory_path() / ("kvtier_replay_codec_" + std::to_string(getpid()));
  std::filesystem::create_directories(dir);
  ReplayConfig config{.mode = Mode::kCache,
                      .device_blocks = 3,
                      .host_blocks = 1,
                      .disk_blocks = 4,
                      .disk_directory = dir.string(),
                      .host_write_through = true,  // every computed block reaches the disk
                      .shape = {.tokens_per_block = 64, .layers = 2, .block_bytes = 65536}};
  absl::StatusOr<ReplayResult> raw = Replay(t, config);
  config.payload = true;
  absl::StatusOr<ReplayResult> raw_full = Replay(t, config);
  config.payload = false;
  config.codec = "int4";
  absl::StatusOr<ReplayResult> meta = Replay(t, config);
  config.payload = true;
  absl::StatusOr<ReplayResult> full = Replay(t, config);
  config.codec = "int3";
  const absl::Status bad = Replay(t, config).status();
  std::error_code ec;
  std::filesystem::remove_all(dir, ec);
  REQUIRE_OK(raw.status());
  REQUIRE_OK(meta.status());
  REQUIRE_OK(full.status());
  const auto host = static_cast<int>(Tier::kHost);
  REQUIRE_OK(raw_full.status());
  CHECK(raw_full->hit_blocks == raw->hit_blocks);
  CHECK(raw->tiers[host].capacity_blocks == 1);
  CHECK(meta->tiers[host].capacity_blocks >= 3);  // int4: under a third of the raw block
  CHECK(meta->hit_blocks >= raw->hit_blocks);
  // Full mode: a host slot also holds the disk trailer, aligned (2 encoded blocks in the raw one's
  // bytes here, 3 in metadata-only mode, which has no trailer).
  CHECK(full->tiers[host].capacity_blocks >= 2);
  CHECK(full->hit_blocks >= raw_full->hit_blocks);
  CHECK(full->bytes_disk_written > 0);
  CHECK(full->bytes_disk_written % 65536 != 0);  // encoded blocks, not raw ones
  CHECK(bad.code() == absl::StatusCode::kInvalidArgument);
  CHECK(std::string(bad.message()).find("int3") != std::string::npos);
}

TEST_CASE("Replay: bad configurations are errors", "[replay]") {
  const Trace t = Parse(kTinyTrace);
  CHECK(Replay(t, {.device_blocks = 0}).status().code() == absl::StatusCode::kInvalidArgument);
  CHECK(Replay(t, {.policy = "no-such-policy", .device_blocks = 4}).status().code() ==
        absl::StatusCode::kNotFound);
  CHECK(Replay(t, {.mode = Mode::kCache, .device_blocks = 4, .disk_blocks = 4}).status().code() ==
        absl::StatusCode::kInvalidArgument);
  CHECK(Replay(t, {.device_blocks = 4, .shape = {.layers = 3, .block_bytes = 1000}})
            .status()
            .code() == absl::StatusCode::kInvalidArgument);
  // Replicas share nothing without a remote tier; the remote tier needs real bytes.
  CHECK(Replay(t, {.device_blocks = 4, .host_blocks = 4, .payload = true, .replicas = 2})
            .status()
            .code() == absl::StatusCode::kInvalidArgument);
  CHECK(Replay(t, {.device_blocks = 4, .host_blocks = 4, .replicas = 0}).status().code() ==
        absl::StatusCode::kInvalidArgument);
  CHECK(
      Replay(
          t,
          {.device_blocks = 4, .host_blocks = 4, .replicas = 2, .remote = {.nodes = "127.0.0.1:1"}})
          .status()
          .code() == absl::StatusCode::kInvalidArgument);
}

TEST_CASE("Replay: a run past its time limit stops with kDeadlineExceeded", "[replay]") {
  std::string text;
  for (int i = 0; i < 256; ++i) {
    text += "{\"input_length\": 1024, \"hash_ids\": [0, " + std::to_string(i + 1) + "]}\n";
  }
  const Trace t = Parse(text);
  for (Mode mode : {Mode::kFlat, Mode::kCache}) {
    CAPTURE(ModeName(mode));
    CHECK(
        Replay(t, {.mode = mode, .device_blocks = 8, .time_limit_seconds = 1e-9}).status().code() ==
        absl::StatusCode::kDeadlineExceeded);
    CHECK(Replay(t, {.mode = mode, .device_blocks = 8, .time_limit_seconds = 60}).ok());
  }
}

// An LRU written from scratch on the raw file's ids (its own line scanner, std::list), so the
// parser and the flat mode are checked together against something that shares no code with them.
uint64_t IndependentLruHits(const std::string& path, size_t max_lines, size_t capacity,
                            size_t* unique_out) {
  std::ifstream in(path);
  std::string line;
  std::list<uint64_t> order;  // front: most recent
  std::unordered_map<uint64_t, std::list<uint64_t>::iterator> where;
  std::unordered_map<uint64_t, bool> seen;
  uint64_t hits = 0;
  for (size_t n = 0; n < max_lines && std::getline(in, line); ++n) {
    const size_t open = line.find('[', line.find("\"hash_ids\""));
    std::istringstream ids(line.substr(open + 1, line.find(']', open) - open - 1));
    std::string item;
    while (std::getline(ids, item, ',')) {
      const uint64_t id = std::strtoull(item.c_str(), nullptr, 10);
      seen[id] = true;
      if (auto it = where.find(id); it != where.end()) {
        hits++;
        order.erase(it->second);
      } else if (order.size() == capacity) {
        where.erase(order.back());
        order.pop_back();
      }
      order.push_front(id);
      where[id] = order.begin();
    }
  }
  *unique_out = seen.size();
  return hits;
}

TEST_CASE("Replay: flat LRU on the real trace's first 2000 requests equals a plain LRU",
          "[replay]") {
  const std::string path = RealTracePath();
  if (path.empty()) {
    WARN("skipped: ../shared/data/conversation_trace.jsonl not found beside the repository");
    return;
  }
  constexpr size_t kRequests = 2000;
  absl::StatusOr<Trace> t = ReadTrace(path, kRequests);
  REQUIRE_OK(t.status());
  REQUIRE(t->requests.size() == kRequests);
  const size_t capacity = GENERATE(1, 64, 500, 2000, 10000);
  CAPTURE(capacity);
  size_t unique = 0;
  const uint64_t expected = IndependentLruHits(path, kRequests, capacity, &unique);
  CHECK(unique == t->unique_blocks());
  absl::StatusOr<ReplayResult> r =
      Replay(*t, {.mode = Mode::kFlat, .device_blocks = static_cast<uint32_t>(capacity)});
  REQUIRE_OK(r.status());
  CHECK(r->hit_blocks == expected);
  // Cache mode on the same slice runs clean (Replay checks the cache's invariants at the end).
  if (capacity >= 500) {
    absl::StatusOr<ReplayResult> c = Replay(*t, {.mode = Mode::kCache,
                                                 .device_blocks = static_cast<uint32_t>(capacity),
                                                 .host_blocks = static_cast<uint32_t>(capacity)});
    REQUIRE_OK(c.status());
    CHECK(c->hit_blocks >= c->tiers[0].hits);
  }
}

TEST_CASE("Replay: two replicas share the real trace's prefixes through a Redis Cluster",
          "[replay][remote]") {
  std::string why;
  if (!test::LocalRedisCluster::Available(&why)) {
    if (test::SkipMissing("redis", "no redis-server to run a cluster with (" + why + ")")) return;
  }
  const std::string path = RealTracePath();
  if (path.empty()) {
    WARN("skipped: ../shared/data/conversation_trace.jsonl not found beside the repository");
    return;
  }
  absl::StatusOr<Trace> t = ReadTrace(path, 300);
  REQUIRE_OK(t.status());
  auto cluster = test::LocalRedisCluster::Start();
  REQUIRE_OK(cluster.status());
  std::string nodes;
  for (const std::string& n : (*cluster)->nodes()) nodes += (nodes.empty() ? "" : ",") + n;
  // Small blocks (2 layers, 4 KiB): the store and the byte checks stay fast.
  absl::StatusOr<ReplayResult> r =
      Replay(*t, {.device_blocks = 256,
                  .host_blocks = 512,
                  .payload = true,
                  .shape = {.layers = 2, .block_bytes = 4096},
                  .replicas = 2,
                  .remote = {.nodes = nodes, .scope = "replay-test-" + std::to_string(getpid())}});
  REQUIRE_OK(r.status());
  REQUIRE(r->replicas.size() == 2);
  const ReplicaReplayStats& total = r->remote_total;
  CAPTURE(total.blocks_queried, total.remote_hit_blocks, total.cross_replica_hit_blocks,
          total.published_blocks, total.remote.writes, total.remote.reads);
  CHECK(total.requests == 300);
  CHECK(r->replicas[0].requests == 150);
  CHECK(total.cross_replica_hit_blocks > 0);
  CHECK(total.cross_replica_hit_blocks <= total.remote_hit_blocks);
  CHECK(total.remote_hit_blocks <= total.remote.reads);
  CHECK(r->mismatched_bytes == 0);
  CHECK(total.remote.corrupt_reads == 0);
  CHECK(total.remote.read_errors == 0);
  CHECK(total.hit_blocks == r->hit_blocks);
}

}  // namespace
}  // namespace kvtier::replay
