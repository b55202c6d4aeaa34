// The management calls of Cache (kvtier/cache.h): Remove, Clear, Pin/Unpin, Prefetch and Hint
// with a duration; each with its bad input, after which the cache still serves requests.
#include <atomic>
#include <filesystem>
#include <fstream>
#include <memory>
#include <set>
#include <tuple>
#include <vector>

#include "absl/time/time.h"
#include "kvtier/cache.h"
#include "kvtier/events.h"
#include "lib/cache_factory.h"
#include "lib/tiers/disk_tier.h"
#include "lib/tiers/io_ring.h"
#include "lib/transfer/emulated_device.h"
#include "test/util/test_util.h"

namespace kvtier {
namespace {

using test::EngineKv;
using EventSet = std::set<std::tuple<KvEventType, Tier, BlockKey>>;

// After a call (rejected or not) the cache must still serve a full request correctly (of `blocks`
// blocks: a device of two slots reloads only one, its other slot making room).
void StillUsable(Cache& cache, EngineKv& kv, uint32_t blocks = 2) {
  const auto keys = test::Chain(blocks, 4242);
  REQUIRE_OK(test::RunSequence(cache, kv, keys));
  auto again = test::RunSequence(cache, kv, keys);
  REQUIRE_OK(again);
  CHECK(again->loaded == blocks);
  CHECK(again->mismatched_bytes == 0);
  REQUIRE_OK(cache.CheckInvariants());
}

uint32_t Matched(Cache& cache, std::span<const BlockKey> keys) {
  auto m = cache.Match(keys);
  REQUIRE_OK(m);
  return m->size();
}

EventSet Events(Cache& cache) {
  EventSet out;
  for (const KvEvent& e : cache.TakeEvents()) out.insert({e.type, e.tier, e.key});
  return out;
}

// A cache on the emulated device whose deadlines run on `*now` (nanoseconds).
std::unique_ptr<Cache> WithClock(const Options& o, std::atomic<uint64_t>* now) {
  auto cache = internal::CreateCache(o, std::make_unique<internal::EmulatedDevice>(), nullptr,
                                     [now] { return now->load(); });
  REQUIRE_OK(cache);
  return std::move(*cache);
}

constexpr uint64_t kSecond = 1'000'000'000;

// Four device slots, eight host slots; `a` committed, then `b`, which pushes a[2] and a[1] down to
// the host (a[0] stays on the device). `b_lease`: keep b's lease (pinned) in it.
struct TwoChains {
  explicit TwoChains(DeviceLease* b_lease = nullptr) {
    Options o = test::MakeOptions(kv, 8);
    o.events.capacity = 256;
    auto c = Cache::Create(o);
    REQUIRE_OK(c);
    cache = std::move(*c);
    REQUIRE_OK(test::RunSequence(*cache, kv, a));
    REQUIRE_OK(test::RunSequence(*cache, kv, b, b_lease));
    auto m = cache->Match(a);
    REQUIRE_OK(m);
    REQUIRE(m->size() == 3);
    REQUIRE(m->tiers == std::vector<Tier>{Tier::kDevice, Tier::kHost, Tier::kHost});
    cache->TakeEvents();
  }
  EngineKv kv{{.num_slots = 4}};
  std::vector<BlockKey> a = test::Chain(3, 1), b = test::Chain(3, 2);
  std::unique_ptr<Cache> cache;
};

TEST_CASE("Remove: drops a chain from every tier, leaves first, whatever the keys' order",
          "[management]") {
  TwoChains t;
  const std::vector<BlockKey> root_first = {t.a[0], t.a[1], t.a[2]};
  auto r = t.cache->Remove(root_first);
  REQUIRE_OK(r);
  CHECK(r->done == 3);
  CHECK(r->not_found == 0);
  CHECK(r->busy == 0);
  CHECK(r->kept_for_children == 0);
  CHECK(Matched(*t.cache, t.a) == 0);
  CHECK(Matched(*t.cache, t.b) == 3);  // b untouched
  const std::vector<KvEvent> events = t.cache->TakeEvents();
  REQUIRE(events.size() == 3);  // one per residency, leaves first
  CHECK(std::make_tuple(events[0].type, events[0].tier, events[0].key) ==
        std::make_tuple(KvEventType::kRemoved, Tier::kHost, t.a[2]));
  CHECK(std::make_tuple(events[1].type, events[1].tier, events[1].key) ==
        std::make_tuple(KvEventType::kRemoved, Tier::kHost, t.a[1]));
  CHECK(std::make_tuple(events[2].type, events[2].tier, events[2].key) ==
        std::make_tuple(KvEventType::kRemoved, Tier::kDevice, t.a[0]));
  CHECK(t.cache->Stats().host.used_blocks == 0);
  REQUIRE_OK(t.cache->CheckInvariants());
  StillUsable(*t.cache, t.kv);
}

TEST_CASE("Remove: keeps what a cached block chains from, skips blocks in use, counts unknown keys",
          "[management][bad_input]") {
  TwoChains t;
  DeviceLease lease;  // a again, held: pinned on the device
  REQUIRE_OK(test::RunSequence(*t.cache, t.kv, t.a, &lease));
  auto r = t.cache->Remove(t.a);
  REQUIRE_OK(r);
  CHECK(r->done == 0);
  CHECK(r->busy == 1);               // a[2], the leaf, is pinned ...
  CHECK(r->kept_for_children == 2);  // ... so its ancestors stay
  CHECK(Matched(*t.cache, t.a) == 3);
  REQUIRE_OK(t.cache->Release(lease));
  const auto unknown = test::Chain(2, 99);
  r = t.cache->Remove(unknown);
  REQUIRE_OK(r);
  CHECK(r->not_found == 2);
  const std::vector<BlockKey> with_root = {t.a[2], kRootKey};
  REQUIRE_CODE(t.cache->Remove(with_root), absl::StatusCode::kInvalidArgument);
  CHECK(Matched(*t.cache, t.a) == 3);  // nothing dropped by the rejected call
  r = t.cache->Remove(std::vector<BlockKey>{t.a[0]});
  REQUIRE_OK(r);
  CHECK(r->kept_for_children == 1);                                    // a[1] chains from it
  r = t.cache->Remove(std::vector<BlockKey>{t.a[1], t.a[2], t.a[2]});  // a key twice: once
  REQUIRE_OK(r);
  CHECK(r->done == 2);
  CHECK(Matched(*t.cache, t.a) == 1);
  r = t.cache->Remove(std::vector<BlockKey>{t.a[0]});
  REQUIRE_OK(r);
  CHECK(r->done == 1);
  CHECK(Matched(*t.cache, t.a) == 0);
  REQUIRE_OK(t.cache->CheckInvariants());
  StillUsable(*t.cache, t.kv);
}

TEST_CASE("Remove: a held block is dropped and its hold ends", "[management]") {
  TwoChains t;
  auto held = t.cache->Pin(t.a, absl::Minutes(1));
  REQUIRE_OK(held);
  CHECK(held->done == 3);
  auto r = t.cache->Remove(t.a);
  REQUIRE_OK(r);
  CHECK(r->done == 3);
  auto unpinned = t.cache->Unpin(t.a);
  REQUIRE_OK(unpinned);
  CHECK(unpinned->not_found == 3);
  StillUsable(*t.cache, t.kv);
}

TEST_CASE("Clear: drops a tier's blocks leaves first, keeps blocks in use and prefix-kept ones",
          "[management]") {
  SECTION("host: a chain only there goes whole, with one all-cleared event") {
    TwoChains t;
    auto r = t.cache->Clear(Tier::kHost);
    REQUIRE_OK(r);
    CHECK(r->done == 2);
    CHECK(r->busy == 0);
    CHECK(r->kept_for_children == 0);
    const std::vector<KvEvent> events = t.cache->TakeEvents();
    REQUIRE(events.size() == 1);
    CHECK(events[0].type == KvEventType::kAllCleared);
    CHECK(events[0].tier == Tier::kHost);
    CHECK(events[0].key == kRootKey);
    CHECK(Matched(*t.cache, t.a) == 1);  // a[0], on the device
    CHECK(t.cache->Stats().host.used_blocks == 0);
    REQUIRE_OK(t.cache->CheckInvariants());
    StillUsable(*t.cache, t.kv);
  }
  SECTION("device: leased blocks are busy, a parent of host blocks is kept; both re-announced") {
    DeviceLease lease;
    TwoChains t(&lease);
    auto r = t.cache->Clear(Tier::kDevice);
    REQUIRE_OK(r);
    CHECK(r->done == 0);
    CHECK(r->busy == 3);               // b, leased
    CHECK(r->kept_for_children == 1);  // a[0]: its children are on the host
    CHECK(Events(*t.cache) == EventSet{{KvEventType::kAllCleared, Tier::kDevice, kRootKey},
                                       {KvEventType::kStored, Tier::kDevice, t.a[0]},
                                       {KvEventType::kStored, Tier::kDevice, t.b[0]},
                                       {KvEventType::kStored, Tier::kDevice, t.b[1]},
                                       {KvEventType::kStored, Tier::kDevice, t.b[2]}});
    REQUIRE_OK(t.cache->Release(lease));
    r = t.cache->Clear(Tier::kDevice);
    REQUIRE_OK(r);
    CHECK(r->done == 3);  // b, leaves first
    CHECK(r->kept_for_children == 1);
    CHECK(Matched(*t.cache, t.b) == 0);
    CHECK(Matched(*t.cache, t.a) == 3);
    REQUIRE_OK(t.cache->CheckInvariants());
    StillUsable(*t.cache, t.kv);
  }
  SECTION("host with a held leaf: the leaf is busy, its parent kept for it") {
    TwoChains t;
    REQUIRE_OK(t.cache->Pin(std::vector<BlockKey>{t.a[2]}, absl::Minutes(1)));
    auto r = t.cache->Clear(Tier::kHost);
    REQUIRE_OK(r);
    CHECK(r->done == 0);
    CHECK(r->busy == 1);
    CHECK(r->kept_for_children == 1);
    CHECK(Matched(*t.cache, t.a) == 3);
    StillUsable(*t.cache, t.kv);
  }
}

TEST_CASE("Clear bad input: the remote tier or no tier at all is kInvalidArgument",
          "[management][bad_input]") {
  TwoChains t;
  REQUIRE_CODE(t.cache->Clear(Tier::kRemote), absl::StatusCode::kInvalidArgument);
  REQUIRE_CODE(t.cache->Clear(static_cast<Tier>(9)), absl::StatusCode::kInvalidArgument);
  CHECK(Matched(*t.cache, t.a) == 3);
  auto r = t.cache->Clear(Tier::kDisk);  // no disk tier: nothing to drop
  REQUIRE_OK(r);
  CHECK(r->done == 0);
  StillUsable(*t.cache, t.kv);
}

TEST_CASE("Pin: held blocks are never victims until Unpin or the deadline, lazily",
          "[management]") {
  std::atomic<uint64_t> now{1000 * kSecond};
  EngineKv kv({.num_slots = 2});
  auto cache = WithClock(test::MakeOptions(kv, 0), &now);  // no host tier: victims are dropped
  const auto a = test::Chain(2, 1);
  DeviceLease lease;
  REQUIRE_OK(test::RunSequence(*cache, kv, a, &lease));
  auto r = cache->Pin(a, absl::Seconds(10));  // on top of the lease's pins
  REQUIRE_OK(r);
  CHECK(r->done == 2);
  REQUIRE_OK(cache->Release(lease));  // the lease's pins go, the hold stays
  REQUIRE_OK(cache->CheckInvariants());
  REQUIRE_CODE(cache->AllocateDevice(1), absl::StatusCode::kResourceExhausted);
  now += 9 * kSecond;
  REQUIRE_CODE(cache->AllocateDevice(1), absl::StatusCode::kResourceExhausted);
  CHECK(Matched(*cache, a) == 2);
  SECTION("the deadline passes") {
    now += 2 * kSecond;
    auto all = cache->AllocateDevice(2);
    REQUIRE_OK(all);
    CHECK(Matched(*cache, a) == 0);
    REQUIRE_OK(cache->Release(*all));
  }
  SECTION("Unpin ends holds early, key by key") {
    r = cache->Unpin(std::vector<BlockKey>{a[1]});
    REQUIRE_OK(r);
    CHECK(r->done == 1);
    auto one = cache->AllocateDevice(1);  // a[1] goes, a[0] stays held
    REQUIRE_OK(one);
    CHECK(Matched(*cache, a) == 1);
    REQUIRE_OK(cache->Release(*one));
    r = cache->Unpin(a);
    REQUIRE_OK(r);
    CHECK(r->done == 1);
    CHECK(r->not_found == 1);  // a[1]: dropped, so no hold left
  }
  SECTION("pinning again replaces the deadline") {
    REQUIRE_OK(cache->Pin(a, absl::Seconds(60)));
    now += 30 * kSecond;
    REQUIRE_CODE(cache->AllocateDevice(1), absl::StatusCode::kResourceExhausted);
  }
  REQUIRE_OK(cache->CheckInvariants());
  REQUIRE_OK(cache->Unpin(a));
  StillUsable(*cache, kv, 1);
}

TEST_CASE("Pin bad input: durations out of range, the root key, unknown keys",
          "[management][bad_input]") {
  TwoChains t;
  for (absl::Duration d :
       {absl::ZeroDuration(), absl::Seconds(-1), absl::Hours(25), absl::InfiniteDuration()}) {
    CAPTURE(absl::FormatDuration(d));
    REQUIRE_CODE(t.cache->Pin(t.a, d), absl::StatusCode::kInvalidArgument);
  }
  REQUIRE_CODE(t.cache->Pin(std::vector<BlockKey>{kRootKey}, absl::Seconds(1)),
               absl::StatusCode::kInvalidArgument);
  auto r = t.cache->Pin(test::Chain(2, 77), absl::Seconds(1));
  REQUIRE_OK(r);
  CHECK(r->not_found == 2);
  CHECK(r->done == 0);
  r = t.cache->Unpin(test::Chain(2, 77));
  REQUIRE_OK(r);
  CHECK(r->not_found == 2);
  REQUIRE_OK(t.cache->Pin(t.a, absl::Hours(24)));  // the longest allowed
  REQUIRE_OK(t.cache->Unpin(t.a));
  StillUsable(*t.cache, t.kv);
}

TEST_CASE("Hint with a duration: the score holds until the deadline, then the policy's default",
          "[management]") {
  std::atomic<uint64_t> now{1000 * kSecond};
  EngineKv kv({.num_slots = 2});
  Options o = test::MakeOptions(kv, 0);
  o.device.policy = "priority";  // default level 35; the lowest level is evicted first
  auto cache = WithClock(o, &now);
  const auto a = test::Chain(1, 1), b = test::Chain(1, 2), c = test::Chain(1, 3),
             d = test::Chain(1, 4);
  REQUIRE_OK(test::RunSequence(*cache, kv, a));
  REQUIRE_OK(test::RunSequence(*cache, kv, b));
  const std::vector<double> high = {90}, mid = {60};
  REQUIRE_OK(cache->Hint(a, high, absl::Seconds(10)));
  REQUIRE_OK(test::RunSequence(*cache, kv, c));  // evicts b (35 < 90)
  CHECK(Matched(*cache, b) == 0);
  REQUIRE_OK(cache->Hint(c, mid));  // c at 60, for good
  SECTION("before the deadline: a (90) outranks c (60)") {
    now += 5 * kSecond;
    REQUIRE_OK(test::RunSequence(*cache, kv, d));
    CHECK(Matched(*cache, a) == 1);
    CHECK(Matched(*cache, c) == 0);
  }
  SECTION("after it: a is back at the default (35), below c") {
    now += 11 * kSecond;
    REQUIRE_OK(test::RunSequence(*cache, kv, d));
    CHECK(Matched(*cache, a) == 0);
    CHECK(Matched(*cache, c) == 1);
  }
  SECTION("a later plain Hint replaces the pending revert") {
    REQUIRE_OK(cache->Hint(a, high));
    now += 11 * kSecond;
    REQUIRE_OK(test::RunSequence(*cache, kv, d));
    CHECK(Matched(*cache, a) == 1);
    CHECK(Matched(*cache, c) == 0);
  }
  REQUIRE_OK(cache->CheckInvariants());
}

TEST_CASE("Hint with a duration bad input: spans of different lengths, durations out of range",
          "[management][bad_input]") {
  TwoChains t;
  const std::vector<double> two = {1, 2}, one = {1};
  REQUIRE_CODE(t.cache->Hint(std::vector<BlockKey>{t.a[0]}, two, absl::Seconds(1)),
               absl::StatusCode::kInvalidArgument);
  REQUIRE_CODE(t.cache->Hint(std::vector<BlockKey>{t.a[0]}, one, absl::ZeroDuration()),
               absl::StatusCode::kInvalidArgument);
  REQUIRE_CODE(t.cache->Hint(std::vector<BlockKey>{t.a[0]}, one, absl::Hours(25)),
               absl::StatusCode::kInvalidArgument);
  REQUIRE_OK(t.cache->Hint(test::Chain(1, 55), one, absl::Seconds(1)));  // unknown: skipped
  StillUsable(*t.cache, t.kv);
}

// ---- Prefetch: over a real disk tier, found there by a warm restart ----

Options DiskOptions(const EngineKv& kv, const std::string& dir, uint32_t host_blocks,
                    uint32_t disk_blocks) {
  Options o = test::MakeOptions(kv, host_blocks);
  const uint64_t slot = internal::DiskTier::HostSlotBytes(kv.layout().block_bytes(),
                                                          *internal::DiskTier::Alignment(dir));
  o.host.capacity_bytes = uint64_t{host_blocks} * slot;
  o.disk = {.directory = dir, .capacity_bytes = uint64_t{disk_blocks} * slot};
  return o;
}

// Fails every read with EIO once armed.
class FailReads final : public internal::FaultInjector {
 public:
  internal::Fault Next(internal::IoOp op, uint64_t, uint32_t) override {
    return armed && op == internal::IoOp::kRead ? internal::Fault::kEio : internal::Fault::kNone;
  }
  std::atomic<bool> armed{false};
};

// Flips a byte of every slot in the directory's slot files (as engine_loop --damage-disk does).
void DamageSlots(const std::filesystem::path& dir, uint64_t slot_bytes) {
  for (const auto& entry : std::filesystem::directory_iterator(dir)) {
    if (entry.path().filename().string().rfind("blocks.", 0) != 0) continue;
    std::fstream file(entry.path(), std::ios::in | std::ios::out | std::ios::binary);
    const uint64_t size = entry.file_size();
    for (uint64_t off = 64; file && off < size; off += slot_bytes) {
      char c = 0;
      file.seekg(static_cast<std::streamoff>(off));
      file.read(&c, 1);
      c = static_cast<char>(c ^ 0x5a);
      file.seekp(static_cast<std::streamoff>(off));
      file.write(&c, 1);
    }
    REQUIRE(file);
  }
}

TEST_CASE("Prefetch: a failed read leaves the block below, one that fails to verify is dropped",
          "[management][disk][faults]") {
  test::TempDir dir("prefetch_faults");
  EngineKv kv({.num_slots = 4});
  const Options o = DiskOptions(kv, dir.path.string(), 8, 32);
  const auto a = test::Chain(3, 1);
  {
    auto first = Cache::Create(o);
    REQUIRE_OK(first);
    REQUIRE_OK(test::RunSequence(**first, kv, a));
  }
  FailReads injector;
  SECTION("read errors: the blocks stay on disk") {
    auto cache = internal::CreateCache(o, std::make_unique<internal::EmulatedDevice>(), &injector);
    REQUIRE_OK(cache);
    REQUIRE(Matched(**cache, a) == 3);
    injector.armed = true;
    auto x = (*cache)->Prefetch(a);
    REQUIRE_OK(x);
    CHECK(x->blocks_promoted() == 3);
    CHECK_FALSE(x->Wait().ok());
    injector.armed = false;
    auto m = (*cache)->Match(a);
    REQUIRE_OK(m);
    CHECK(m->blocks_in(Tier::kDisk) == 3);
    const CacheStats s = (*cache)->Stats();
    CHECK(s.transfer_failures == 3);
    CHECK(s.host.fill_failures == 3);
    CHECK(s.host.used_blocks == 0);
    REQUIRE_OK((*cache)->CheckInvariants());
    auto r = test::RunSequence(**cache, kv, a);  // loads them from disk now
    REQUIRE_OK(r);
    CHECK(r->loaded == 3);
    CHECK(r->mismatched_bytes == 0);
    StillUsable(**cache, kv);
  }
  SECTION("checksum failures: the blocks are dropped, never served") {
    const uint64_t slot = internal::DiskTier::HostSlotBytes(
        kv.layout().block_bytes(), *internal::DiskTier::Alignment(dir.path.string()));
    DamageSlots(dir.path, slot);
    auto cache = Cache::Create(o);
    REQUIRE_OK(cache);
    REQUIRE(Matched(**cache, a) == 3);
    auto x = (*cache)->Prefetch(a);
    REQUIRE_OK(x);
    CHECK(x->blocks_promoted() == 3);
    REQUIRE_CODE(x->Wait(), absl::StatusCode::kDataLoss);
    CHECK(Matched(**cache, a) == 0);
    const CacheStats s = (*cache)->Stats();
    CHECK(s.transfer_failures == 3);
    CHECK(s.disk_corrupt_reads == 3);
    CHECK(s.host.used_blocks == 0);
    CHECK(s.disk.used_blocks == 0);
    REQUIRE_OK((*cache)->CheckInvariants());
    StillUsable(**cache, kv);
  }
}

TEST_CASE("Prefetch bad input: no host tier, the root key, and unknown keys read nothing",
          "[management][bad_input]") {
  EngineKv kv({.num_slots = 4});
  auto no_host = Cache::Create(test::MakeOptions(kv, 0));
  REQUIRE_OK(no_host);
  REQUIRE_CODE((*no_host)->Prefetch(test::Chain(2, 1)), absl::StatusCode::kFailedPrecondition);
  StillUsable(**no_host, kv);
  TwoChains t;
  REQUIRE_CODE(t.cache->Prefetch(std::vector<BlockKey>{kRootKey}),
               absl::StatusCode::kInvalidArgument);
  auto x = t.cache->Prefetch(test::Chain(2, 99));
  REQUIRE_OK(x);
  CHECK(x->blocks() == 0);
  CHECK(x->Poll());
  REQUIRE_OK(x->Wait());
  x = t.cache->Prefetch(t.a);  // on the device and the host already
  REQUIRE_OK(x);
  CHECK(x->blocks() == 3);
  CHECK(x->blocks_promoted() == 0);
  StillUsable(*t.cache, t.kv);
}

TEST_CASE("Prefetch on the metadata-only backend: disk blocks reach the host at once",
          "[management]") {
  BlockLayout layout{.tokens_per_block = 4, .num_slots = 2};
  layout.layers.push_back({.segments = {{nullptr, 1024, 1024}}});
  Options o{.layout = layout,
            .backend = DeviceBackend::kMetadataOnly,
            .host = {.capacity_bytes = 2 * 1024},
            .disk = {.directory = "(metadata-only)", .capacity_bytes = 16 * 1024}};
  auto cache = Cache::Create(o);
  REQUIRE_OK(cache);
  const auto a = test::Chain(2, 1);
  for (uint32_t seed = 1; seed <= 4; ++seed) {
    const auto keys = test::Chain(2, seed);
    auto lease = (*cache)->AllocateDevice(2);
    REQUIRE_OK(lease);
    REQUIRE_OK((*cache)->Commit(keys, *lease));
  }  // a went down to the disk
  auto m = (*cache)->Match(a);
  REQUIRE_OK(m);
  REQUIRE(m->blocks_in(Tier::kDisk) == 2);
  auto x = (*cache)->Prefetch(a);
  REQUIRE_OK(x);
  CHECK(x->Poll());
  CHECK(x->blocks_promoted() == 2);
  REQUIRE_OK(x->Wait());
  m = (*cache)->Match(a);
  REQUIRE_OK(m);
  CHECK(m->blocks_in(Tier::kHost) == 2);
  REQUIRE_OK((*cache)->CheckInvariants());
}

}  // namespace
}  // namespace kvtier
