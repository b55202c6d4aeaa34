// Model-based random test: a seeded sequence of API calls, good and bad, on a small cache,
// checked after every call against a reference model of what the contract promises.
//
// The model knows everything the caller can know: which leases are live, how many of their
// leading positions hold blocks, which keys were ever committed (a block's bytes are a pure
// function of its key, so any block handed back can be checked byte for byte). Eviction choices
// are the cache's own: where the contract allows two outcomes (a hit or a miss, OK or
// kResourceExhausted when slots are short), the model accepts either and checks the rest.
#include <map>
#include <optional>
#include <random>
#include <set>
#include <string>

#include "kvtier/cache.h"
#include "kvtier/policy.h"
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
};

class Model {
 public:
  explicit Model(uint32_t seed, const std::string& policy = "lru")
      : rng_(seed), kv_({.layers = 2, .segment_bytes = 64, .num_slots = kDeviceSlots}) {
    Options options = test::MakeOptions(kv_, kHostBlocks);
    options.device.policy = policy;
    options.host.policy = policy;
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
    if (op < 25) return DoMatch();
    if (op < 40) return DoAllocate();
    if (op < 58) return DoLoad();
    if (op < 78) return DoCommit();
    if (op < 88) return DoRelease();
    if (op < 92) return DoGrow();
    return DoBadCall();
  }

  void CheckAll() {
    REQUIRE_OK(cache_->CheckInvariants());
    const CacheStats s = cache_->Stats();
    REQUIRE(s.leases_live == leases_.size());
    INFO("last op " << last_op_);
    REQUIRE(s.host.pinned_blocks == 0);  // nothing is in flight between calls
    REQUIRE(s.device.used_blocks <= s.device.capacity_blocks);
    REQUIRE(s.host.used_blocks <= s.host.capacity_blocks);
    uint64_t held = 0;
    for (const auto& [id, l] : leases_) held += l.lease.size();
    REQUIRE(s.device.pinned_blocks <= held);
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

  void DoMatch() {
    calls_++;
    const auto keys = Request();
    auto m = cache_->Match(keys);
    REQUIRE_OK(m);
    REQUIRE(m->size() <= keys.size());
    for (uint32_t i = 0; i < m->size(); ++i) {
      REQUIRE(m->keys[i] == keys[i]);         // a prefix of the query
      REQUIRE(committed_.contains(keys[i]));  // nothing is matched that was never committed
    }
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
        std::vector<BlockKey> longer = test::Chain(l->lease.size() + 1, 77);
        REQUIRE_CODE(cache_->Commit(longer, l->lease), absl::StatusCode::kInvalidArgument);
        MatchResult m{.keys = longer, .tiers = std::vector<Tier>(longer.size(), Tier::kHost)};
        REQUIRE_CODE(cache_->Load(m, l->lease), absl::StatusCode::kInvalidArgument);
        break;
      }
      case 5: {  // a key repeated in one chain
        ModelLease* l = AnyLease();
        if (l == nullptr || l->lease.size() < 2) break;
        const std::vector<BlockKey> twice = {l->keys[0], l->keys[0]};
        REQUIRE_CODE(cache_->Commit(twice, l->lease), absl::StatusCode::kInvalidArgument);
        break;
      }
      default:  // mismatched hint spans
        REQUIRE_CODE(cache_->Hint(Request(), std::vector<double>{}),
                     absl::StatusCode::kInvalidArgument);
    }
  }

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
  uint64_t calls_ = 0, mismatched_ = 0, loaded_ = 0;
  uint32_t last_op_ = 0;
};

#if defined(__SANITIZE_ADDRESS__) || defined(__SANITIZE_THREAD__)
constexpr uint64_t kCalls = 30000;  // sanitizers: the same paths, fewer laps
#else
constexpr uint64_t kCalls = 100000;
#endif

TEST_CASE("Cache model: 100k random calls, good and bad, keep every promise", "[model]") {
  const uint32_t seed = GENERATE(11u, 12u);
  CAPTURE(seed);
  Model model(seed);
  while (model.calls() < kCalls) {
    model.Step();
    model.CheckAll();
  }
  CHECK(model.mismatched() == 0);
  CHECK(model.loaded() > 1000);  // the run did exercise loads
}

// The shared property test of every registered policy, through a real Cache: whatever the policy
// ranks, capacity is never exceeded, pinned and Filling blocks are never evicted, the prefix rule
// holds (CheckInvariants after every call) and no wrong byte is served.
TEST_CASE("Cache model: every registered policy keeps every promise", "[model][policy]") {
  const std::string policy = GENERATE(from_range(ListPolicies()));
  CAPTURE(policy);
  if (policy.find("for-test") != std::string::npos) return;  // registered by other tests
  Model model(21, policy);
  while (model.calls() < kCalls / 5) {
    model.Step();
    model.CheckAll();
  }
  CHECK(model.mismatched() == 0);
  CHECK(model.loaded() > 200);
}

}  // namespace
}  // namespace kvtier
