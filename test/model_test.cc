// Model-based random test: a seeded sequence of API calls, good and bad, on a small cache,
// checked after every call against a reference model of what the contract promises.
//
// The model knows everything the caller can know: which leases are live, how many of their
// leading positions hold blocks, which keys were ever committed (a block's bytes are a pure
// function of its key, so any block handed back can be checked byte for byte). Eviction choices
// are the cache's own: where the contract allows two outcomes (a hit or a miss, OK or
// kResourceExhausted when slots are short), the model accepts either and checks the rest.
// Where it does not, the model checks recall: a block that a live lease holds (committed or
// loaded) is pinned on the device, so Match must find at least that prefix.
//
// Variants: a disk tier below a small host tier (write-back to disk, disk-to-device loads), host
// write-through, loads left in flight while other calls run (waited and checked later), Hints.
// The seed comes from KVTIER_TEST_SEED when set (CI sets a new one per run); every case prints
// the seed it used, to rerun a failure with it.
#include <cstdio>
#include <cstdlib>
#include <map>
#include <memory>
#include <optional>
#include <random>
#include <set>
#include <string>

#include "kvtier/cache.h"
#include "kvtier/policy.h"
#include "lib/tiers/disk_tier.h"
#include "test/util/test_util.h"

namespace kvtier {
namespace {

using test::EngineKv;

constexpr uint32_t kDeviceSlots = 24;
constexpr uint32_t kHostBlocks = 32;

struct ModelLease {
  DeviceLease lease;
  uint32_t held = 0;           // leading positions holding blocks (loaded, committed, shared)
  std::vector<BlockKey> keys;  // the chain this lease serves
  // held == lease.shared(): only what AllocateDevice(match, n) shared (a Load keeps those).
  bool only_shared = false;
  // A Commit kept another copy of some key (blocks_commit_shared grew): which positions the
  // lease holds is no longer known exactly, so a Load may be refused or not.
  bool held_unknown = false;
  // A Load not waited for yet (destroyed before the lease: a Transfer waits in its destructor).
  std::optional<Transfer> pending;
};

// What the model's cache has besides the device and host tiers.
struct ModelConfig {
  std::string policy = "lru";
  bool disk = false;           // a disk tier of 64 blocks under a host tier of 8
  bool write_through = false;  // Options.host_write_through
  bool in_flight = false;      // half the Loads are waited only at a later step
};

// The seed of a model run: `fixed` plus KVTIER_TEST_SEED when set (a number); printed.
uint32_t ModelSeed(uint32_t fixed) {
  uint32_t seed = fixed;
  const char* env = std::getenv("KVTIER_TEST_SEED");
  if (env != nullptr && *env != '\0') {
    seed = static_cast<uint32_t>(std::strtoul(env, nullptr, 10)) + fixed;
  }
  std::printf("model_test: seed %u (KVTIER_TEST_SEED=%s)\n", seed, env != nullptr ? env : "unset");
  std::fflush(stdout);
  return seed;
}

class Model {
 public:
  explicit Model(uint32_t seed, const ModelConfig& config = {})
      : config_(config),
        rng_(seed),
        kv_({.layers = 2, .segment_bytes = 64, .num_slots = kDeviceSlots}) {
    Options options = test::MakeOptions(kv_, kHostBlocks);
    options.device.policy = config.policy;
    options.host.policy = config.policy;
    options.host_write_through = config.write_through;
    if (config.disk) {
      dir_ = std::make_unique<test::TempDir>("model_test");
      auto align = internal::DiskTier::Alignment(dir_->path.string());
      REQUIRE_OK(align);
      const uint64_t slot = internal::DiskTier::HostSlotBytes(kv_.layout().block_bytes(), *align);
      options.host.capacity_bytes = 8 * slot;
      options.disk.directory = dir_->path.string();
      options.disk.capacity_bytes = 64 * slot;
      options.disk.policy = config.policy;
    }
    auto cache = Cache::Create(options);
    REQUIRE_OK(cache);
    cache_ = std::move(*cache);
    auto other = Cache::Create(test::MakeOptions(other_kv_, 4));
    REQUIRE_OK(other);
    other_ = std::move(*other);
    // 8 base chains of 8 blocks; requests take prefixes of them, so they share blocks.
    for (uint32_t b = 0; b < 8; ++b) bases_.push_back(test::Chain(8, 1000 + b));
  }

  void Step() {
    const uint32_t op = rng_() % 100;
    last_op_ = op;
    if (op < 22) return DoMatch();
    if (op < 37) return DoAllocate();
    if (op < 55) return DoLoad();
    if (op < 75) return DoCommit();
    if (op < 85) return DoRelease();
    if (op < 89) return DoGrow();
    if (op < 94) return DoHint();
    return DoBadCall();
  }

  void CheckAll() {
    REQUIRE_OK(cache_->CheckInvariants());
    const CacheStats s = cache_->Stats();
    REQUIRE(s.leases_live == leases_.size());
    INFO("last op " << last_op_);
    // Nothing is in flight between calls, unless a Load is (its host sources are pinned), a
    // write-through copy (its device source and host slot are), or a disk write (its host slot).
    const bool copying = config_.disk || config_.write_through || Pending() > 0;
    if (!copying) REQUIRE(s.host.pinned_blocks == 0);
    REQUIRE(s.device.used_blocks <= s.device.capacity_blocks);
    REQUIRE(s.host.used_blocks <= s.host.capacity_blocks);
    uint64_t held = 0;
    for (const auto& [id, l] : leases_) held += l.lease.size();
    if (!config_.write_through) REQUIRE(s.device.pinned_blocks <= held);
    REQUIRE(s.match_calls >= last_.match_calls);  // counters never go back
    REQUIRE(s.blocks_committed >= last_.blocks_committed);
    REQUIRE(s.device.evictions >= last_.device.evictions);
    REQUIRE(s.host.evictions >= last_.host.evictions);
    REQUIRE(s.bytes_h2d >= last_.bytes_h2d);
    last_ = s;
  }

  uint64_t calls() const { return calls_; }
  uint64_t mismatched() const { return mismatched_; }
  uint64_t loaded() const { return loaded_; }
  uint64_t recall_checks() const { return recall_checks_; }
  uint64_t loaded_in_flight() const { return loaded_in_flight_; }
  const CacheStats& last_stats() const { return last_; }

 private:
  std::vector<BlockKey> Request() {
    const auto& base = bases_[rng_() % bases_.size()];
    return {base.begin(), base.begin() + 1 + rng_() % base.size()};
  }
  ModelLease* AnyLease() {
    if (leases_.empty()) return nullptr;
    auto it = leases_.begin();
    std::advance(it, rng_() % leases_.size());
    return &it->second;
  }
  uint64_t Pinned() const {
    uint64_t n = 0;
    for (const auto& [id, l] : leases_) n += l.lease.size();
    return n;
  }
  uint64_t Pending() const {
    uint64_t n = 0;
    for (const auto& [id, l] : leases_) n += l.pending.has_value();
    return n;
  }

  // Waits for the lease's Load in flight, if any, and checks every byte it brought.
  void Finish(ModelLease& l) {
    if (!l.pending) return;
    REQUIRE_OK(l.pending->Wait());
    REQUIRE_OK(l.pending->status());
    REQUIRE(l.pending->Poll());
    for (uint32_t i = 0; i < l.pending->blocks(); ++i) {
      const uint64_t bad = kv_.Mismatches(l.lease.slots()[i], l.keys[i]);
      mismatched_ += bad;
      REQUIRE(bad == 0);
    }
    loaded_ += l.pending->blocks();
    loaded_in_flight_ += l.pending->blocks();
    l.pending.reset();
  }

  void DoMatch() {
    calls_++;
    // Half the time the query is a live lease's chain: recall can be checked.
    ModelLease* l = rng_() % 2 ? AnyLease() : nullptr;
    const auto keys = l != nullptr ? l->keys : Request();
    auto m = cache_->Match(keys);
    REQUIRE_OK(m);
    REQUIRE(m->size() <= keys.size());
    for (uint32_t i = 0; i < m->size(); ++i) {
      REQUIRE(m->keys[i] == keys[i]);         // a prefix of the query
      REQUIRE(committed_.contains(keys[i]));  // nothing is matched that was never committed
    }
    if (l != nullptr && !l->held_unknown && !l->pending) {
      // Positions [0, held) of a live lease hold its chain's blocks, pinned on the device (loaded,
      // committed or shared): none can have been evicted, so Match finds at least those.
      recall_checks_++;
      INFO("lease holds " << l->held << " matched " << m->size());
      REQUIRE(m->size() >= l->held);
      for (uint32_t i = 0; i < l->held; ++i) REQUIRE(m->tiers[i] == Tier::kDevice);
    }
  }

  void DoHint() {
    calls_++;
    const auto keys = Request();
    std::vector<double> scores(keys.size());
    for (double& x : scores) x = static_cast<double>(rng_() % 100);
    REQUIRE_OK(cache_->Hint(keys, scores));  // cached or not, any score is accepted
  }

  void DoAllocate() {
    calls_++;
    if (leases_.size() >= 6) return DoRelease();
    const auto keys = Request();
    const auto n = static_cast<uint32_t>(keys.size());
    // Half the time the engine passes its Match: the matched device blocks are shared at once.
    std::optional<MatchResult> match;
    if (rng_() % 2) {
      auto m = cache_->Match(keys);
      REQUIRE_OK(m);
      match = std::move(*m);
    }
    auto lease = match ? cache_->AllocateDevice(*match, n) : cache_->AllocateDevice(n);
    if (Pinned() + n <= kDeviceSlots) {
      const CacheStats st = cache_->Stats();
      INFO("leases " << leases_.size() << " pinned-by-model " << Pinned() << " device used "
                     << st.device.used_blocks << " pinned " << st.device.pinned_blocks
                     << " host used " << st.host.used_blocks << " pinned "
                     << st.host.pinned_blocks);
      REQUIRE_OK(lease);  // enough unpinned slots: must succeed
    } else if (!lease.ok()) {
      REQUIRE(lease.status().code() == absl::StatusCode::kResourceExhausted);
      return;
    }
    REQUIRE(lease->size() == n);
    std::set<uint32_t> distinct(lease->slots().begin(), lease->slots().end());
    REQUIRE(distinct.size() == n);
    const uint32_t shared = lease->shared();
    REQUIRE(shared <= (match ? match->blocks_in(Tier::kDevice) : 0));
    for (uint32_t i = 0; i < shared; ++i) {  // the matched blocks themselves, byte for byte
      const uint64_t bad = kv_.Mismatches(lease->slots()[i], keys[i]);
      mismatched_ += bad;
      REQUIRE(bad == 0);
    }
    leases_.emplace(
        next_id_++,
        ModelLease{
            .lease = std::move(*lease), .held = shared, .keys = keys, .only_shared = shared > 0});
  }

  void DoLoad() {
    calls_++;
    ModelLease* l = AnyLease();
    if (l == nullptr) return DoAllocate();
    Finish(*l);
    auto m = cache_->Match(l->keys);
    REQUIRE_OK(m);
    auto xfer = cache_->Load(*m, l->lease);
    if (l->held > 0 && m->size() > 0 && !l->only_shared) {
      if (l->held_unknown && xfer.ok()) {
        // The lease held none of those positions after all (its Commit kept other copies).
      } else {
        REQUIRE_CODE(xfer, absl::StatusCode::kFailedPrecondition);
        return;
      }
    }
    REQUIRE_OK(xfer);
    if (l->only_shared) REQUIRE(xfer->blocks() >= l->held);  // the shared positions are kept
    l->only_shared = false;
    REQUIRE(xfer->blocks() <= m->size());
    if (config_.in_flight && rng_() % 2) {
      // Left in flight: other calls run meanwhile; Finish waits and checks it later.
      l->held = std::max(l->held, xfer->blocks());
      l->pending = std::move(*xfer);
      return;
    }
    REQUIRE_OK(xfer->Wait());
    REQUIRE_OK(xfer->status());
    for (uint32_t i = 0; i < xfer->blocks(); ++i) {
      const uint64_t bad = kv_.Mismatches(l->lease.slots()[i], l->keys[i]);
      mismatched_ += bad;
      REQUIRE(bad == 0);
    }
    loaded_ += xfer->blocks();
    l->held = std::max(l->held, xfer->blocks());
  }

  void DoCommit() {
    calls_++;
    ModelLease* l = AnyLease();
    if (l == nullptr) return DoAllocate();
    Finish(*l);
    // The engine computes the positions not held, then publishes a prefix of its chain.
    const auto n = static_cast<uint32_t>(1 + rng_() % l->keys.size());
    for (uint32_t i = l->held; i < n; ++i) kv_.Write(l->lease.slots()[i], l->keys[i]);
    const uint64_t kept_before = cache_->Stats().blocks_commit_shared;
    const absl::Status s = cache_->Commit(std::span(l->keys).first(n), l->lease);
    REQUIRE_OK(s);  // a key on the device from elsewhere keeps that copy: never refused
    for (uint32_t i = 0; i < n; ++i) committed_.insert(l->keys[i]);
    if (cache_->Stats().blocks_commit_shared != kept_before) l->held_unknown = true;
    if (n > l->held) l->only_shared = false;
    l->held = std::max(l->held, n);
  }

  void DoRelease() {
    calls_++;
    if (leases_.empty()) return;
    auto it = leases_.begin();
    std::advance(it, rng_() % leases_.size());
    if (rng_() % 4 != 0) Finish(it->second);  // else the Transfer waits in its destructor
    if (rng_() % 2) {
      REQUIRE_OK(cache_->Release(it->second.lease));
      REQUIRE_CODE(cache_->Release(it->second.lease), absl::StatusCode::kFailedPrecondition);
    }  // else: destruction releases it
    leases_.erase(it);
  }

  void DoGrow() {
    calls_++;
    ModelLease* l = AnyLease();
    if (l == nullptr) return;
    Finish(*l);
    const uint32_t before = l->lease.size();
    const absl::Status s = cache_->Grow(l->lease, 1);
    const CacheStats st = cache_->Stats();
    INFO("leases " << leases_.size() << " pinned-by-model " << Pinned() << " device used "
                   << st.device.used_blocks << " pinned " << st.device.pinned_blocks
                   << " host used " << st.host.used_blocks << " pinned " << st.host.pinned_blocks);
    if (Pinned() + 1 <= kDeviceSlots) REQUIRE_OK(s);
    if (s.ok()) {
      REQUIRE(l->lease.size() == before + 1);
    } else {
      REQUIRE(s.code() == absl::StatusCode::kResourceExhausted);
      REQUIRE(l->lease.size() == before);
    }
    // The chain cannot grow past its base: the extra slot just stays unused.
  }

  void DoBadCall() {
    calls_++;
    switch (rng_() % 7) {
      case 0: {
        std::vector<BlockKey> keys = Request();
        keys.push_back(kRootKey);
        REQUIRE_CODE(cache_->Match(keys), absl::StatusCode::kInvalidArgument);
        break;
      }
      case 1:
        REQUIRE_CODE(cache_->AllocateDevice(0), absl::StatusCode::kInvalidArgument);
        REQUIRE_CODE(cache_->AllocateDevice(kDeviceSlots + 1), absl::StatusCode::kInvalidArgument);
        break;
      case 2: {  // a lease used after it was released / moved from
        DeviceLease empty;
        MatchResult none;
        REQUIRE_CODE(cache_->Load(none, empty), absl::StatusCode::kFailedPrecondition);
        REQUIRE_CODE(cache_->Commit(Request(), empty), absl::StatusCode::kFailedPrecondition);
        REQUIRE_CODE(cache_->Grow(empty, 1), absl::StatusCode::kFailedPrecondition);
        REQUIRE_CODE(cache_->Release(empty), absl::StatusCode::kFailedPrecondition);
        break;
      }
      case 3: {  // another cache's lease
        auto foreign = other_->AllocateDevice(1);
        REQUIRE_OK(foreign);
        const std::vector<BlockKey> one = {Request()[0]};
        REQUIRE_CODE(cache_->Commit(one, *foreign), absl::StatusCode::kFailedPrecondition);
        REQUIRE_CODE(cache_->Release(*foreign), absl::StatusCode::kFailedPrecondition);
        break;
      }
      case 4: {  // more keys than slots, and a match longer than the lease
        ModelLease* l = AnyLease();
        if (l == nullptr) break;
        Finish(*l);
        std::vector<BlockKey> longer = test::Chain(l->lease.size() + 1, 77);
        REQUIRE_CODE(cache_->Commit(longer, l->lease), absl::StatusCode::kInvalidArgument);
        MatchResult m{.keys = longer, .tiers = std::vector<Tier>(longer.size(), Tier::kHost)};
        REQUIRE_CODE(cache_->Load(m, l->lease), absl::StatusCode::kInvalidArgument);
        break;
      }
      case 5: {  // a key repeated in one chain
        ModelLease* l = AnyLease();
        if (l == nullptr || l->lease.size() < 2) break;
        Finish(*l);
        const std::vector<BlockKey> twice = {l->keys[0], l->keys[0]};
        REQUIRE_CODE(cache_->Commit(twice, l->lease), absl::StatusCode::kInvalidArgument);
        break;
      }
      default:  // mismatched hint spans
        REQUIRE_CODE(cache_->Hint(Request(), std::vector<double>{}),
                     absl::StatusCode::kInvalidArgument);
    }
  }

  const ModelConfig config_;
  std::unique_ptr<test::TempDir> dir_;  // the disk tier's; removed after the cache
  std::mt19937 rng_;
  EngineKv kv_;
  EngineKv other_kv_;
  std::unique_ptr<Cache> cache_;
  std::unique_ptr<Cache> other_;
  std::vector<std::vector<BlockKey>> bases_;
  std::map<uint64_t, ModelLease> leases_;
  uint64_t next_id_ = 0;
  std::set<BlockKey> committed_;
  CacheStats last_;
  uint64_t calls_ = 0, mismatched_ = 0, loaded_ = 0, recall_checks_ = 0, loaded_in_flight_ = 0;
  uint32_t last_op_ = 0;
};

#if defined(__SANITIZE_ADDRESS__) || defined(__SANITIZE_THREAD__)
constexpr uint64_t kCalls = 30000;  // sanitizers: the same paths, fewer laps
#else
constexpr uint64_t kCalls = 100000;
#endif

TEST_CASE("Cache model: 100k random calls, good and bad, keep every promise", "[model]") {
  const uint32_t seed = ModelSeed(GENERATE(11u, 12u));
  CAPTURE(seed);
  Model model(seed);
  while (model.calls() < kCalls) {
    model.Step();
    model.CheckAll();
  }
  CHECK(model.mismatched() == 0);
  CHECK(model.loaded() > 1000);  // the run did exercise loads
  CHECK(model.recall_checks() > 1000);
}

TEST_CASE("Cache model: with a disk tier, write-through and loads in flight, every promise holds",
          "[model][disk]") {
  const int variant = GENERATE(0, 1, 2, 3);
  ModelConfig config;
  config.disk = variant == 0 || variant == 2 || variant == 3;
  config.write_through = variant == 1 || variant == 3;
  config.in_flight = variant >= 1;
  CAPTURE(variant, config.disk, config.write_through, config.in_flight);
  const uint32_t seed = ModelSeed(31 + variant);
  CAPTURE(seed);
  // Disk I/O is slower than the emulated device: fewer calls.
  const uint64_t calls = config.disk ? kCalls / 5 : kCalls / 2;
  Model model(seed, config);
  while (model.calls() < calls) {
    model.Step();
    model.CheckAll();
  }
  CHECK(model.mismatched() == 0);
  CHECK(model.loaded() > 200);
  CHECK(model.recall_checks() > 100);
  const CacheStats& s = model.last_stats();
  if (config.disk) {
    CHECK(s.disk.hits > 0);  // blocks did come back from disk
    CHECK(s.bytes_disk_written > 0);
  }
  if (config.in_flight) CHECK(model.loaded_in_flight() > 0);
}

// The shared property test of every registered policy, through a real Cache: whatever the policy
// ranks, capacity is never exceeded, pinned and Filling blocks are never evicted, the prefix rule
// holds (CheckInvariants after every call) and no wrong byte is served.
TEST_CASE("Cache model: every registered policy keeps every promise", "[model][policy]") {
  const std::string policy = GENERATE(from_range(ListPolicies()));
  CAPTURE(policy);
  if (policy.find("for-test") != std::string::npos) return;  // registered by other tests
  ModelConfig config;
  config.policy = policy;
  Model model(ModelSeed(21), config);
  while (model.calls() < kCalls / 5) {
    model.Step();
    model.CheckAll();
  }
  CHECK(model.mismatched() == 0);
  CHECK(model.loaded() > 200);
}

}  // namespace
}  // namespace kvtier
