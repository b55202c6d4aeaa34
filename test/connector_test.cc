#include "kvtier/connector.h"

#include <atomic>
#include <numeric>
#include <thread>

#include "kvtier/events.h"
#include "lib/cache_factory.h"
#include "lib/transfer/emulated_device.h"
#include "test/util/test_util.h"

namespace kvtier {
namespace {

using test::EngineKv;

// A connector over the engine's `kv` (the engine's own block pool) with `host_blocks` host slots.
std::unique_ptr<Connector> MakeConnector(const EngineKv& kv, uint32_t host_blocks,
                                         Options* with = nullptr) {
  Options o = with != nullptr ? *with : test::MakeOptions(kv, host_blocks);
  o.device.capacity_slots = 0;
  auto c = Connector::Create(o);
  REQUIRE_OK(c);
  return std::move(*c);
}

std::vector<uint32_t> Range(uint32_t from, uint32_t n) {
  std::vector<uint32_t> v(n);
  std::iota(v.begin(), v.end(), from);
  return v;
}

// The engine computes keys[first..] into `blocks` and stores them; waits.
void ComputeAndStore(Connector& c, EngineKv& kv, std::span<const BlockKey> keys, uint32_t first,
                     std::span<const uint32_t> blocks) {
  for (size_t i = 0; i < blocks.size(); ++i) kv.Write(blocks[i], keys[first + i]);
  auto store = c.Store(keys, first, blocks);
  REQUIRE_OK(store);
  REQUIRE_OK(store->Wait());
}

uint64_t Mismatches(const EngineKv& kv, std::span<const BlockKey> keys, uint32_t first,
                    std::span<const uint32_t> blocks, uint32_t n) {
  uint64_t bad = 0;
  for (uint32_t i = 0; i < n; ++i) bad += kv.Mismatches(blocks[i], keys[first + i]);
  return bad;
}

TEST_CASE("Connector: blocks stored from engine blocks load byte-exact into other blocks",
          "[connector]") {
  EngineKv kv({.num_slots = 16});
  auto c = MakeConnector(kv, 16);
  const auto keys = test::Chain(5, 1);
  ComputeAndStore(*c, kv, keys, 0, Range(0, 5));
  CHECK(c->Stats().blocks_stored == 5);
  CHECK(c->Stats().device.used_blocks == 0);  // the engine's device is not a kvtier tier

  auto found = c->Lookup(keys, 0);
  REQUIRE_OK(found);
  CHECK(found->blocks == 5);
  CHECK(found->tiers == std::vector<Tier>(5, Tier::kHost));
  CHECK_FALSE(found->pending);

  // The engine's own prefix cache holds 2 blocks; kvtier loads the other 3 into new blocks.
  for (uint32_t b = 0; b < 16; ++b) kv.Scribble(b, 0xee);
  const auto dst = std::vector<uint32_t>{9, 3, 12};
  auto xfer = c->Load(keys, 2, dst);
  REQUIRE_OK(xfer);
  CHECK(xfer->blocks() == 3);
  REQUIRE_OK(xfer->WaitLayer(0));
  REQUIRE_OK(xfer->Wait());
  CHECK(Mismatches(kv, keys, 2, dst, 3) == 0);
  CHECK(c->engine_blocks_busy() == 0);
  REQUIRE_OK(c->CheckInvariants());
}

TEST_CASE("Connector: Lookup counts past the engine's hits, and touch=false only looks",
          "[connector]") {
  EngineKv kv({.num_slots = 16});
  auto c = MakeConnector(kv, 16);
  const auto keys = test::Chain(6, 2);
  ComputeAndStore(*c, kv, std::span(keys).first(4), 0, Range(0, 4));
  auto r = c->Lookup(keys, 1);
  REQUIRE_OK(r);
  CHECK(r->blocks == 3);  // keys [1, 4): 4 cached, the engine has 1
  auto beyond = c->Lookup(keys, 5);
  REQUIRE_OK(beyond);
  CHECK(beyond->blocks == 0);
  const CacheStats before = c->Stats();
  auto peek = c->Lookup(keys, 0, {.touch = false});
  REQUIRE_OK(peek);
  CHECK(peek->blocks == 4);
  const CacheStats after = c->Stats();
  CHECK(after.match_calls == before.match_calls);
  CHECK(after.host.hits == before.host.hits);
  REQUIRE_CODE(c->Lookup(keys, 7), absl::StatusCode::kInvalidArgument);
}

TEST_CASE("Connector: Store skips cached keys and links an uncached prefix", "[connector]") {
  EngineKv kv({.num_slots = 16});
  auto c = MakeConnector(kv, 16);
  const auto keys = test::Chain(6, 3);
  ComputeAndStore(*c, kv, std::span(keys).first(3), 0, Range(0, 3));
  // The whole chain again: the first 3 are skipped.
  for (uint32_t i = 0; i < 6; ++i) kv.Write(i, keys[i]);
  auto again = c->Store(keys, 0, Range(0, 6));
  REQUIRE_OK(again);
  REQUIRE_OK(again->Wait());
  CHECK(again->blocks() == 3);
  CHECK(c->Stats().blocks_store_skipped == 3);
  // A chain whose prefix the engine holds but never stored: the tail is stored under links; a
  // lookup from the root stops at the uncached prefix, a load past the engine's hits finds it.
  const auto other = test::Chain(4, 4);
  ComputeAndStore(*c, kv, other, 2, std::vector<uint32_t>{10, 11});
  auto from_root = c->Lookup(other, 0);
  REQUIRE_OK(from_root);
  CHECK(from_root->blocks == 0);
  for (uint32_t b : {10u, 11u}) kv.Scribble(b, 1);
  auto xfer = c->Load(other, 2, std::vector<uint32_t>{11, 10});
  REQUIRE_OK(xfer);
  REQUIRE_OK(xfer->Wait());
  CHECK(xfer->blocks() == 2);
  CHECK(kv.Mismatches(11, other[2]) == 0);
  CHECK(kv.Mismatches(10, other[3]) == 0);
  REQUIRE_OK(c->CheckInvariants());
}

TEST_CASE("Connector: storing a link whose only child is the eviction victim keeps it an entry",
          "[connector]") {
  EngineKv kv({.num_slots = 8});
  auto c = MakeConnector(kv, 1);  // one host slot
  const auto keys = test::Chain(2, 14);
  // keys[1] stored under the engine's keys[0]: keys[0] is an uncached link, kept by its child.
  ComputeAndStore(*c, kv, keys, 1, std::vector<uint32_t>{1});
  // Now keys[0] itself: the only host slot is its child's, which is evicted (dropped) for it. The
  // link must survive that eviction to take the slot (it was erased and its id reused before).
  kv.Write(0, keys[0]);
  auto store = c->Store(std::span(keys).first(1), 0, std::vector<uint32_t>{0});
  REQUIRE_OK(store);
  REQUIRE_OK(store->Wait());
  CHECK(store->blocks() == 1);
  REQUIRE_OK(c->CheckInvariants());
  auto found = c->Lookup(keys, 0);
  REQUIRE_OK(found);
  CHECK(found->blocks == 1);
  kv.Scribble(5, 0);
  auto xfer = c->Load(std::span(keys).first(1), 0, std::vector<uint32_t>{5});
  REQUIRE_OK(xfer);
  REQUIRE_OK(xfer->Wait());
  CHECK(kv.Mismatches(5, keys[0]) == 0);
}

TEST_CASE("Connector: a layer-wise store saves layer by layer, in order", "[connector]") {
  EngineKv kv({.layers = 3, .num_slots = 8});
  auto c = MakeConnector(kv, 8);
  const auto keys = test::Chain(2, 5);
  for (uint32_t i = 0; i < 2; ++i) kv.Write(i, keys[i]);
  auto store = c->BeginStore(keys, 0, Range(0, 2), /*request_id=*/7);
  REQUIRE_OK(store);
  CHECK(store->blocks() == 2);
  REQUIRE_CODE(store->SaveLayer(1), absl::StatusCode::kFailedPrecondition);
  REQUIRE_CODE(store->Wait(), absl::StatusCode::kFailedPrecondition);  // layers unsaved
  REQUIRE_OK(store->SaveLayer(0));
  CHECK(store->layers_saved() == 1);
  REQUIRE_CODE(store->SaveLayer(0), absl::StatusCode::kFailedPrecondition);
  REQUIRE_OK(store->SaveLayer(1));
  REQUIRE_OK(store->SaveLayer(2));
  REQUIRE_CODE(store->SaveLayer(3), absl::StatusCode::kOutOfRange);
  REQUIRE_OK(store->Wait());
  auto finished = c->TakeFinished();
  REQUIRE(finished.size() == 1);
  CHECK(finished[0].request_id == 7);
  CHECK(finished[0].kind == Finished::Kind::kStore);
  CHECK(finished[0].status.ok());
  CHECK(finished[0].blocks == 2);
  CHECK(c->TakeFinished().empty());  // reported once
  auto found = c->Lookup(keys, 0);
  REQUIRE_OK(found);
  CHECK(found->blocks == 2);
}

TEST_CASE("Connector: a layer-wise store of cached keys accepts every layer and is done",
          "[connector]") {
  EngineKv kv({.layers = 3, .num_slots = 8});
  auto c = MakeConnector(kv, 8);
  const auto keys = test::Chain(2, 15);
  ComputeAndStore(*c, kv, keys, 0, Range(0, 2));
  auto store = c->BeginStore(keys, 0, Range(0, 2), /*request_id=*/4);
  REQUIRE_OK(store);
  CHECK(store->blocks() == 0);
  CHECK(store->Poll());
  for (uint32_t l = 0; l < 3; ++l) REQUIRE_OK(store->SaveLayer(l));  // the engine's hook per layer
  REQUIRE_CODE(store->SaveLayer(3), absl::StatusCode::kOutOfRange);
  REQUIRE_OK(store->Wait());
  auto finished = c->TakeFinished();
  REQUIRE(finished.size() == 1);
  CHECK(finished[0].status.ok());
  CHECK(c->Stats().blocks_store_skipped == 2);
}

TEST_CASE("Connector: an abandoned layer-wise store stores nothing and frees its host slots",
          "[connector]") {
  EngineKv kv({.layers = 3, .num_slots = 8});
  auto c = MakeConnector(kv, 4);
  const auto keys = test::Chain(3, 6);
  {
    auto store = c->BeginStore(keys, 0, Range(0, 3), /*request_id=*/9);
    REQUIRE_OK(store);
    REQUIRE_OK(store->SaveLayer(0));
  }  // destroyed with layers 1 and 2 unsaved
  auto finished = c->TakeFinished();
  REQUIRE(finished.size() == 1);
  CHECK(finished[0].status.code() == absl::StatusCode::kCancelled);
  auto found = c->Lookup(keys, 0);
  REQUIRE_OK(found);
  CHECK(found->blocks == 0);
  CHECK(c->Stats().host.used_blocks == 0);
  CHECK(c->engine_blocks_busy() == 0);
  REQUIRE_OK(c->CheckInvariants());
  ComputeAndStore(*c, kv, keys, 0, Range(0, 3));  // still usable
  auto again = c->Lookup(keys, 0);
  REQUIRE_OK(again);
  CHECK(again->blocks == 3);
}

TEST_CASE("Connector: blocks in flight are refused as load targets", "[connector]") {
  EngineKv kv({.num_slots = 8});
  auto c = MakeConnector(kv, 8);
  const auto a = test::Chain(2, 7);
  const auto b = test::Chain(2, 8);
  ComputeAndStore(*c, kv, a, 0, Range(0, 2));
  for (uint32_t i = 0; i < 2; ++i) kv.Write(4 + i, b[i]);
  auto store = c->BeginStore(b, 0, Range(4, 2));  // reads blocks 4, 5 until saved
  REQUIRE_OK(store);
  CHECK(c->engine_blocks_busy() == 2);
  // The engine frees block 5 early and loads into it: refused, nothing changes.
  REQUIRE_CODE(c->Load(a, 0, std::vector<uint32_t>{6, 5}), absl::StatusCode::kFailedPrecondition);
  REQUIRE_OK(c->CheckInvariants());
  REQUIRE_OK(store->SaveAll());
  REQUIRE_OK(store->Wait());
  CHECK(c->engine_blocks_busy() == 0);
  auto xfer = c->Load(a, 0, std::vector<uint32_t>{6, 5});
  REQUIRE_OK(xfer);
  REQUIRE_OK(xfer->Wait());
  CHECK(kv.Mismatches(6, a[0]) == 0);
  CHECK(kv.Mismatches(5, a[1]) == 0);
}

TEST_CASE("Connector: bad input is rejected with the connector unchanged", "[connector]") {
  EngineKv kv({.num_slots = 8});
  auto c = MakeConnector(kv, 8);
  const auto keys = test::Chain(3, 9);
  ComputeAndStore(*c, kv, keys, 0, Range(0, 3));
  const CacheStats before = c->Stats();
  using absl::StatusCode;
  REQUIRE_CODE(c->Load(keys, 0, std::vector<uint32_t>{0, 1}), StatusCode::kInvalidArgument);
  REQUIRE_CODE(c->Load(keys, 0, std::vector<uint32_t>{0, 1, 8}), StatusCode::kInvalidArgument);
  REQUIRE_CODE(c->Load(keys, 0, std::vector<uint32_t>{0, 1, 1}), StatusCode::kInvalidArgument);
  REQUIRE_CODE(c->Load(keys, 4, {}), StatusCode::kInvalidArgument);
  REQUIRE_CODE(c->Store(keys, 0, std::vector<uint32_t>{2, 2, 3}), StatusCode::kInvalidArgument);
  std::vector<BlockKey> root = {kRootKey};
  REQUIRE_CODE(c->Lookup(root, 0), StatusCode::kInvalidArgument);
  // A key cached under another parent than its predecessor: not one chain.
  const std::vector<BlockKey> crossed = {test::Chain(1, 10)[0], keys[1]};
  REQUIRE_CODE(c->Store(crossed, 0, std::vector<uint32_t>{4, 5}), StatusCode::kInvalidArgument);
  REQUIRE_CODE(c->Load(crossed, 1, std::vector<uint32_t>{4}), StatusCode::kInvalidArgument);
  int not_a_cuda_event = 0;
  REQUIRE_CODE(c->Store(keys, 0, Range(0, 3), &not_a_cuda_event), StatusCode::kInvalidArgument);
  const CacheStats after = c->Stats();
  CHECK(after.blocks_stored == before.blocks_stored);
  CHECK(after.host.used_blocks == before.host.used_blocks);
  REQUIRE_OK(c->CheckInvariants());
  auto xfer = c->Load(keys, 0, Range(4, 3));
  REQUIRE_OK(xfer);
  REQUIRE_OK(xfer->Wait());
  CHECK(Mismatches(kv, keys, 0, Range(4, 3), 3) == 0);
}

TEST_CASE("Connector: events and management calls act on the connector's tiers", "[connector]") {
  EngineKv kv({.num_slots = 8});
  Options o = test::MakeOptions(kv, 4);
  o.events.capacity = 64;
  auto c = MakeConnector(kv, 0, &o);
  const auto keys = test::Chain(3, 16);
  ComputeAndStore(*c, kv, keys, 0, Range(0, 3));
  const std::vector<KvEvent> stored = c->TakeEvents();
  REQUIRE(stored.size() == 3);
  for (size_t i = 0; i < 3; ++i) {
    CHECK(stored[i].type == KvEventType::kStored);
    CHECK(stored[i].tier == Tier::kHost);
    CHECK(stored[i].key == keys[i]);
  }
  REQUIRE_CODE(c->Clear(Tier::kDevice), absl::StatusCode::kInvalidArgument);
  // Pinned blocks survive a store that needs their host slots.
  auto pinned = c->Pin(keys, absl::Seconds(60));
  REQUIRE_OK(pinned);
  CHECK(pinned->done == 3);
  const auto other = test::Chain(2, 17);
  for (uint32_t i = 0; i < 2; ++i) kv.Write(4 + i, other[i]);
  auto store = c->Store(other, 0, Range(4, 2));
  REQUIRE_OK(store);
  REQUIRE_OK(store->Wait());
  CHECK(store->unstored() == 1);  // 4 host slots: 3 held, 1 for the other chain
  auto found = c->Lookup(keys, 0);
  REQUIRE_OK(found);
  CHECK(found->blocks == 3);
  REQUIRE_OK(c->Unpin(keys));
  auto removed = c->Remove(keys);
  REQUIRE_OK(removed);
  CHECK(removed->done == 3);
  found = c->Lookup(keys, 0);
  REQUIRE_OK(found);
  CHECK(found->blocks == 0);
  REQUIRE_OK(c->CheckInvariants());
}

TEST_CASE("Connector: Create refuses a device capacity and a missing host tier", "[connector]") {
  EngineKv kv({.num_slots = 8});
  Options o = test::MakeOptions(kv, 8);
  o.device.capacity_slots = 4;
  REQUIRE_CODE(Connector::Create(o), absl::StatusCode::kInvalidArgument);
  o = test::MakeOptions(kv, 0);
  o.device.capacity_slots = 0;
  REQUIRE_CODE(Connector::Create(o), absl::StatusCode::kInvalidArgument);
}

TEST_CASE("Connector: blocks go down to disk and load back byte-exact from there", "[connector]") {
  EngineKv kv({.num_slots = 16});
  test::TempDir dir("connector_disk");
  Options o = test::MakeOptions(kv, 4);
  o.disk = {.directory = dir.path.string(), .capacity_bytes = 64 * kv.layout().block_bytes()};
  o.disk.allow_buffered = true;
  // With a disk tier a host slot holds the trailer too: room for 4 blocks.
  o.host.capacity_bytes = 4 * (kv.layout().block_bytes() + 8192);
  auto c = MakeConnector(kv, 0, &o);
  const auto keys = test::Chain(12, 11);
  // 12 blocks through 4 host slots, 2 per step: each step's store evicts the last ones to disk.
  for (uint32_t i = 0; i < 12; i += 2) {
    ComputeAndStore(*c, kv, std::span(keys).first(i + 2), i, Range(i, 2));
  }
  REQUIRE_OK(c->CheckInvariants());
  auto found = c->Lookup(keys, 0);
  REQUIRE_OK(found);
  REQUIRE(found->blocks == 12);
  CHECK(found->tiers[0] == Tier::kDisk);
  for (uint32_t b = 0; b < 16; ++b) kv.Scribble(b, 0x5a);
  const auto dst = Range(4, 12);
  // Each disk read goes through a host slot of its own: one Load brings at most the host tier's
  // slots; the engine loads the rest in further ones, each past the last.
  const auto host_slots = static_cast<uint32_t>(c->Stats().host.capacity_blocks);
  REQUIRE(host_slots < 12);
  uint32_t loaded = 0;
  for (uint64_t request = 1; loaded < 12; ++request) {
    const uint32_t n = std::min(host_slots, 12 - loaded);
    auto xfer = c->Load(std::span(keys).first(loaded + n), loaded,
                        std::span(dst).subspan(loaded, n), request);
    REQUIRE_OK(xfer);
    REQUIRE_OK(xfer->Wait());
    CHECK(xfer->blocks() == n);
    loaded += n;
  }
  CHECK(Mismatches(kv, keys, 0, dst, 12) == 0);
  CHECK(c->Stats().bytes_disk_read > 0);
  auto finished = c->TakeFinished();
  REQUIRE(finished.size() == (12 + host_slots - 1) / host_slots);
  CHECK(finished[0].kind == Finished::Kind::kLoad);
  CHECK(finished[0].request_id == 1);
  REQUIRE_OK(c->CheckInvariants());
}

// A connector over `kv` on an emulated device the test keeps a pointer to, to fail its copies.
struct FaultyConnector {
  explicit FaultyConnector(const EngineKv& kv) {
    auto owned = std::make_unique<internal::EmulatedDevice>();
    device = owned.get();
    Options o = test::MakeOptions(kv, 8);
    o.device.capacity_slots = 0;
    auto c = internal::CreateConnector(o, std::move(owned));
    REQUIRE_OK(c);
    connector = std::move(*c);
  }
  internal::EmulatedDevice* device = nullptr;
  std::unique_ptr<Connector> connector;
};

TEST_CASE("Connector: a failed load copy is a miss to recompute, reported once, host copy kept",
          "[connector]") {
  EngineKv kv({.num_slots = 8});
  FaultyConnector f(kv);
  internal::EmulatedDevice* device = f.device;
  Connector& conn = *f.connector;
  const auto keys = test::Chain(3, 12);
  ComputeAndStore(conn, kv, keys, 0, Range(0, 3));
  device->FailNextCopies(1);
  auto xfer = conn.Load(keys, 0, Range(4, 3), /*request_id=*/5);
  REQUIRE_OK(xfer);
  CHECK_FALSE(xfer->Wait().ok());
  auto finished = conn.TakeFinished();
  REQUIRE(finished.size() == 1);
  CHECK(finished[0].request_id == 5);
  CHECK_FALSE(finished[0].status.ok());
  CHECK(finished[0].blocks == 3);
  CHECK(finished[0].blocks_loaded == 0);  // a failed device copy names no block: all recomputed
  CHECK(xfer->blocks_loaded() == 0);
  CHECK(conn.Stats().transfer_failures >= 1);
  CHECK(conn.engine_blocks_busy() == 0);
  REQUIRE_OK(conn.CheckInvariants());
  // The host copies were not the failure: the next load brings them.
  auto again = conn.Load(keys, 0, Range(4, 3));
  REQUIRE_OK(again);
  REQUIRE_OK(again->Wait());
  CHECK(again->blocks() == 3);
  CHECK(Mismatches(kv, keys, 0, Range(4, 3), 3) == 0);
}

TEST_CASE("Connector: a failed store copy stores nothing", "[connector]") {
  EngineKv kv({.num_slots = 8});
  FaultyConnector f(kv);
  internal::EmulatedDevice* device = f.device;
  Connector& conn = *f.connector;
  const auto keys = test::Chain(2, 13);
  for (uint32_t i = 0; i < 2; ++i) kv.Write(i, keys[i]);
  device->FailNextCopies(1);
  auto store = conn.Store(keys, 0, Range(0, 2));
  REQUIRE_OK(store);
  CHECK_FALSE(store->Wait().ok());
  auto found = conn.Lookup(keys, 0);
  REQUIRE_OK(found);
  CHECK(found->blocks == 0);
  CHECK(conn.Stats().host.used_blocks == 0);
  REQUIRE_OK(conn.CheckInvariants());
  ComputeAndStore(conn, kv, keys, 0, Range(0, 2));
  found = conn.Lookup(keys, 0);
  REQUIRE_OK(found);
  CHECK(found->blocks == 2);
}

TEST_CASE("Connector: threads storing, looking up and loading shared prefixes stay consistent",
          "[connector][concurrency]") {
  constexpr uint32_t kThreads = 4, kBlocksEach = 12, kRounds = 60;
  EngineKv kv({.num_slots = kThreads * kBlocksEach});
  auto c = MakeConnector(kv, 24);  // fewer host slots than blocks: evictions under the threads
  std::atomic<uint64_t> bad{0}, loaded{0};
  std::vector<std::thread> threads;
  for (uint32_t t = 0; t < kThreads; ++t) {
    threads.emplace_back([&, t] {
      const std::vector<uint32_t> mine = Range(t * kBlocksEach, kBlocksEach);
      for (uint32_t r = 0; r < kRounds; ++r) {
        // A third of the requests are prefixes of one chain all threads share; the rest are the
        // thread's own chains. Lengths vary, so requests extend each other's prefixes.
        const std::vector<BlockKey> keys = test::Chain(4 + r % 5, r % 3 == 0 ? 100 : 101 + t);
        auto found = c->Lookup(keys, 0);
        if (!found.ok()) {
          bad++;
          continue;
        }
        const uint32_t n = found->blocks;
        uint32_t got = 0;
        if (n > 0) {
          auto x = c->Load(std::span(keys).first(n), 0, std::span(mine).first(n));
          if (!x.ok() || !x->Wait().ok()) {
            bad++;
            continue;
          }
          got = x->blocks();
          for (uint32_t i = 0; i < got; ++i) bad += kv.Mismatches(mine[i], keys[i]) != 0;
          loaded += got;
        }
        for (uint32_t i = got; i < keys.size(); ++i) kv.Write(mine[i], keys[i]);
        auto s = c->Store(keys, got, std::span(mine).subspan(got, keys.size() - got));
        if (!s.ok() || !s->Wait().ok()) bad++;
      }
    });
  }
  for (auto& th : threads) th.join();
  CHECK(bad == 0);
  CHECK(loaded > 0);
  CHECK(c->engine_blocks_busy() == 0);
  REQUIRE_OK(c->CheckInvariants());
}

}  // namespace
}  // namespace kvtier
