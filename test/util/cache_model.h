// The reference model of the Cache contract, shared by test/model_test.cc (seeded random calls)
// and test/fuzz/cache_sequence_fuzz.cc (calls decoded from the fuzzer's bytes): a sequence of API
// calls, good and bad, on a small cache, checked after every call against what the contract
// promises.
//
// The model knows everything the caller can know: which leases are live, how many of their
// leading positions hold blocks, which keys were ever committed (a block's bytes are a pure
// function of its key, so any block handed back can be checked byte for byte). Eviction choices
// are the cache's own: where the contract allows two outcomes (a hit or a miss, OK or
// kResourceExhausted when slots are short), the model accepts either and checks the rest.
// Where it does not, the model checks recall: a block that a live lease holds (committed or
// loaded) is pinned on the device, so Match must find at least that prefix.
//
// Variants (ModelConfig): a disk tier below a small host tier, host write-through, loads left in
// flight while other calls run (waited and checked later); every run also sends Hints.
//
// The includer defines how a check fails before including this header:
//   KVTIER_MODEL_CHECK(cond), KVTIER_MODEL_CHECK_OK(status_or_statusor),
//   KVTIER_MODEL_CHECK_CODE(status_or_statusor, code), KVTIER_MODEL_INFO(stream expression).
#ifndef KVTIER_TEST_UTIL_CACHE_MODEL_H_
#define KVTIER_TEST_UTIL_CACHE_MODEL_H_

#if !defined(KVTIER_MODEL_CHECK) || !defined(KVTIER_MODEL_CHECK_OK) || \
    !defined(KVTIER_MODEL_CHECK_CODE) || !defined(KVTIER_MODEL_INFO)
#error "define KVTIER_MODEL_CHECK, _CHECK_OK, _CHECK_CODE and _INFO before including cache_model.h"
#endif

#include <algorithm>
#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <set>
#include <string>
#include <utility>
#include <vector>

#include "kvtier/cache.h"
#include "lib/tiers/disk_tier.h"
#include "test/util/test_util.h"

namespace kvtier::test {

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

class Model {
 public:
  // `next`: the source of every choice the model makes (a seeded generator, or a fuzzer's bytes).
  explicit Model(std::function<uint32_t()> next, const ModelConfig& config = {})
      : config_(config),
        next_(std::move(next)),
        kv_({.layers = 2, .segment_bytes = 64, .num_slots = kDeviceSlots}) {
    Options options = MakeOptions(kv_, kHostBlocks);
    options.device.policy = config.policy;
    options.host.policy = config.policy;
    options.host_write_through = config.write_through;
    if (config.disk) {
      dir_ = std::make_unique<TempDir>("model_test");
      auto align = internal::DiskTier::Alignment(dir_->path.string());
      KVTIER_MODEL_CHECK_OK(align);
      const uint64_t slot = internal::DiskTier::HostSlotBytes(kv_.layout().block_bytes(), *align);
      options.host.capacity_bytes = 8 * slot;
      options.disk.directory = dir_->path.string();
      options.disk.capacity_bytes = 64 * slot;
      options.disk.policy = config.policy;
    }
    auto cache = Cache::Create(options);
    KVTIER_MODEL_CHECK_OK(cache);
    cache_ = std::move(*cache);
    auto other = Cache::Create(MakeOptions(other_kv_, 4));
    KVTIER_MODEL_CHECK_OK(other);
    other_ = std::move(*other);
    // 8 base chains of 8 blocks; requests take prefixes of them, so they share blocks.
    for (uint32_t b = 0; b < 8; ++b) bases_.push_back(Chain(8, 1000 + b));
  }

  void Step() {
    const uint32_t op = Next() % 100;
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
    KVTIER_MODEL_CHECK_OK(cache_->CheckInvariants());
    const CacheStats s = cache_->Stats();
    KVTIER_MODEL_CHECK(s.leases_live == leases_.size());
    KVTIER_MODEL_INFO("last op " << last_op_);
    // Nothing is in flight between calls, unless a Load is (its host sources are pinned), a
    // write-through copy (its device source and host slot are), or a disk write (its host slot).
    const bool copying = config_.disk || config_.write_through || Pending() > 0;
    if (!copying) KVTIER_MODEL_CHECK(s.host.pinned_blocks == 0);
    KVTIER_MODEL_CHECK(s.device.used_blocks <= s.device.capacity_blocks);
    KVTIER_MODEL_CHECK(s.host.used_blocks <= s.host.capacity_blocks);
    uint64_t held = 0;
    for (const auto& [id, l] : leases_) held += l.lease.size();
    if (!config_.write_through) KVTIER_MODEL_CHECK(s.device.pinned_blocks <= held);
    KVTIER_MODEL_CHECK(s.match_calls >= last_.match_calls);  // counters never go back
    KVTIER_MODEL_CHECK(s.blocks_committed >= last_.blocks_committed);
    KVTIER_MODEL_CHECK(s.device.evictions >= last_.device.evictions);
    KVTIER_MODEL_CHECK(s.host.evictions >= last_.host.evictions);
    KVTIER_MODEL_CHECK(s.bytes_h2d >= last_.bytes_h2d);
    last_ = s;
  }

  uint32_t Next() { return next_(); }
  uint64_t calls() const { return calls_; }
  uint64_t mismatched() const { return mismatched_; }
  uint64_t loaded() const { return loaded_; }
  uint64_t recall_checks() const { return recall_checks_; }
  uint64_t loaded_in_flight() const { return loaded_in_flight_; }
  const CacheStats& last_stats() const { return last_; }

 private:
  std::vector<BlockKey> Request() {
    const auto& base = bases_[Next() % bases_.size()];
    return {base.begin(), base.begin() + 1 + Next() % base.size()};
  }
  ModelLease* AnyLease() {
    if (leases_.empty()) return nullptr;
    auto it = leases_.begin();
    std::advance(it, Next() % leases_.size());
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
    KVTIER_MODEL_CHECK_OK(l.pending->Wait());
    KVTIER_MODEL_CHECK_OK(l.pending->status());
    KVTIER_MODEL_CHECK(l.pending->Poll());
    for (uint32_t i = 0; i < l.pending->blocks(); ++i) {
      const uint64_t bad = kv_.Mismatches(l.lease.slots()[i], l.keys[i]);
      mismatched_ += bad;
      KVTIER_MODEL_CHECK(bad == 0);
    }
    loaded_ += l.pending->blocks();
    loaded_in_flight_ += l.pending->blocks();
    l.pending.reset();
  }

  void DoMatch() {
    calls_++;
    // Half the time the query is a live lease's chain: recall can be checked.
    ModelLease* l = Next() % 2 ? AnyLease() : nullptr;
    const auto keys = l != nullptr ? l->keys : Request();
    auto m = cache_->Match(keys);
    KVTIER_MODEL_CHECK_OK(m);
    KVTIER_MODEL_CHECK(m->size() <= keys.size());
    for (uint32_t i = 0; i < m->size(); ++i) {
      KVTIER_MODEL_CHECK(m->keys[i] == keys[i]);  // a prefix of the query
      KVTIER_MODEL_CHECK(
          committed_.contains(keys[i]));  // nothing is matched that was never committed
    }
    if (l != nullptr && !l->held_unknown && !l->pending) {
      // Positions [0, held) of a live lease hold its chain's blocks, pinned on the device (loaded,
      // committed or shared): none can have been evicted, so Match finds at least those.
      recall_checks_++;
      KVTIER_MODEL_INFO("lease holds " << l->held << " matched " << m->size());
      KVTIER_MODEL_CHECK(m->size() >= l->held);
      for (uint32_t i = 0; i < l->held; ++i) KVTIER_MODEL_CHECK(m->tiers[i] == Tier::kDevice);
    }
  }

  void DoHint() {
    calls_++;
    const auto keys = Request();
    std::vector<double> scores(keys.size());
    for (double& x : scores) x = static_cast<double>(Next() % 100);
    KVTIER_MODEL_CHECK_OK(cache_->Hint(keys, scores));  // cached or not, any score is accepted
  }

  void DoAllocate() {
    calls_++;
    if (leases_.size() >= 6) return DoRelease();
    const auto keys = Request();
    const auto n = static_cast<uint32_t>(keys.size());
    // Half the time the engine passes its Match: the matched device blocks are shared at once.
    std::optional<MatchResult> match;
    if (Next() % 2) {
      auto m = cache_->Match(keys);
      KVTIER_MODEL_CHECK_OK(m);
      match = std::move(*m);
    }
    auto lease = match ? cache_->AllocateDevice(*match, n) : cache_->AllocateDevice(n);
    if (Pinned() + n <= kDeviceSlots) {
      const CacheStats st = cache_->Stats();
      KVTIER_MODEL_INFO("leases " << leases_.size() << " pinned-by-model " << Pinned()
                                  << " device used " << st.device.used_blocks << " pinned "
                                  << st.device.pinned_blocks << " host used " << st.host.used_blocks
                                  << " pinned " << st.host.pinned_blocks);
      KVTIER_MODEL_CHECK_OK(lease);  // enough unpinned slots: must succeed
    } else if (!lease.ok()) {
      KVTIER_MODEL_CHECK(lease.status().code() == absl::StatusCode::kResourceExhausted);
      return;
    }
    KVTIER_MODEL_CHECK(lease->size() == n);
    std::set<uint32_t> distinct(lease->slots().begin(), lease->slots().end());
    KVTIER_MODEL_CHECK(distinct.size() == n);
    const uint32_t shared = lease->shared();
    KVTIER_MODEL_CHECK(shared <= (match ? match->blocks_in(Tier::kDevice) : 0));
    for (uint32_t i = 0; i < shared; ++i) {  // the matched blocks themselves, byte for byte
      const uint64_t bad = kv_.Mismatches(lease->slots()[i], keys[i]);
      mismatched_ += bad;
      KVTIER_MODEL_CHECK(bad == 0);
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
    KVTIER_MODEL_CHECK_OK(m);
    auto xfer = cache_->Load(*m, l->lease);
    if (l->held > 0 && m->size() > 0 && !l->only_shared) {
      if (l->held_unknown && xfer.ok()) {
        // The lease held none of those positions after all (its Commit kept other copies).
      } else {
        KVTIER_MODEL_CHECK_CODE(xfer, absl::StatusCode::kFailedPrecondition);
        return;
      }
    }
    KVTIER_MODEL_CHECK_OK(xfer);
    if (l->only_shared)
      KVTIER_MODEL_CHECK(xfer->blocks() >= l->held);  // the shared positions are kept
    l->only_shared = false;
    KVTIER_MODEL_CHECK(xfer->blocks() <= m->size());
    if (config_.in_flight && Next() % 2) {
      // Left in flight: other calls run meanwhile; Finish waits and checks it later.
      l->held = std::max(l->held, xfer->blocks());
      l->pending = std::move(*xfer);
      return;
    }
    KVTIER_MODEL_CHECK_OK(xfer->Wait());
    KVTIER_MODEL_CHECK_OK(xfer->status());
    for (uint32_t i = 0; i < xfer->blocks(); ++i) {
      const uint64_t bad = kv_.Mismatches(l->lease.slots()[i], l->keys[i]);
      mismatched_ += bad;
      KVTIER_MODEL_CHECK(bad == 0);
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
    const auto n = static_cast<uint32_t>(1 + Next() % l->keys.size());
    for (uint32_t i = l->held; i < n; ++i) kv_.Write(l->lease.slots()[i], l->keys[i]);
    const uint64_t kept_before = cache_->Stats().blocks_commit_shared;
    const absl::Status s = cache_->Commit(std::span(l->keys).first(n), l->lease);
    KVTIER_MODEL_CHECK_OK(s);  // a key on the device from elsewhere keeps that copy: never refused
    for (uint32_t i = 0; i < n; ++i) committed_.insert(l->keys[i]);
    if (cache_->Stats().blocks_commit_shared != kept_before) l->held_unknown = true;
    if (n > l->held) l->only_shared = false;
    l->held = std::max(l->held, n);
  }

  void DoRelease() {
    calls_++;
    if (leases_.empty()) return;
    auto it = leases_.begin();
    std::advance(it, Next() % leases_.size());
    if (Next() % 4 != 0) Finish(it->second);  // else the Transfer waits in its destructor
    if (Next() % 2) {
      KVTIER_MODEL_CHECK_OK(cache_->Release(it->second.lease));
      KVTIER_MODEL_CHECK_CODE(cache_->Release(it->second.lease),
                              absl::StatusCode::kFailedPrecondition);
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
    KVTIER_MODEL_INFO("leases " << leases_.size() << " pinned-by-model " << Pinned()
                                << " device used " << st.device.used_blocks << " pinned "
                                << st.device.pinned_blocks << " host used " << st.host.used_blocks
                                << " pinned " << st.host.pinned_blocks);
    if (before + 1 > kDeviceSlots) {  // more than the device holds: never possible, not "full"
      KVTIER_MODEL_CHECK_CODE(s, absl::StatusCode::kInvalidArgument);
      KVTIER_MODEL_CHECK(l->lease.size() == before);
      return;
    }
    if (Pinned() + 1 <= kDeviceSlots) KVTIER_MODEL_CHECK_OK(s);
    if (s.ok()) {
      KVTIER_MODEL_CHECK(l->lease.size() == before + 1);
    } else {
      KVTIER_MODEL_CHECK_CODE(s, absl::StatusCode::kResourceExhausted);
      KVTIER_MODEL_CHECK(l->lease.size() == before);
    }
    // The chain cannot grow past its base: the extra slot just stays unused.
  }

  void DoBadCall() {
    calls_++;
    switch (Next() % 7) {
      case 0: {
        std::vector<BlockKey> keys = Request();
        keys.push_back(kRootKey);
        KVTIER_MODEL_CHECK_CODE(cache_->Match(keys), absl::StatusCode::kInvalidArgument);
        break;
      }
      case 1:
        KVTIER_MODEL_CHECK_CODE(cache_->AllocateDevice(0), absl::StatusCode::kInvalidArgument);
        KVTIER_MODEL_CHECK_CODE(cache_->AllocateDevice(kDeviceSlots + 1),
                                absl::StatusCode::kInvalidArgument);
        break;
      case 2: {  // a lease used after it was released / moved from
        DeviceLease empty;
        MatchResult none;
        KVTIER_MODEL_CHECK_CODE(cache_->Load(none, empty), absl::StatusCode::kFailedPrecondition);
        KVTIER_MODEL_CHECK_CODE(cache_->Commit(Request(), empty),
                                absl::StatusCode::kFailedPrecondition);
        KVTIER_MODEL_CHECK_CODE(cache_->Grow(empty, 1), absl::StatusCode::kFailedPrecondition);
        KVTIER_MODEL_CHECK_CODE(cache_->Release(empty), absl::StatusCode::kFailedPrecondition);
        break;
      }
      case 3: {  // another cache's lease
        auto foreign = other_->AllocateDevice(1);
        KVTIER_MODEL_CHECK_OK(foreign);
        const std::vector<BlockKey> one = {Request()[0]};
        KVTIER_MODEL_CHECK_CODE(cache_->Commit(one, *foreign),
                                absl::StatusCode::kFailedPrecondition);
        KVTIER_MODEL_CHECK_CODE(cache_->Release(*foreign), absl::StatusCode::kFailedPrecondition);
        break;
      }
      case 4: {  // more keys than slots, and a match longer than the lease
        ModelLease* l = AnyLease();
        if (l == nullptr) break;
        Finish(*l);
        std::vector<BlockKey> longer = Chain(l->lease.size() + 1, 77);
        KVTIER_MODEL_CHECK_CODE(cache_->Commit(longer, l->lease),
                                absl::StatusCode::kInvalidArgument);
        MatchResult m{.keys = longer, .tiers = std::vector<Tier>(longer.size(), Tier::kHost)};
        KVTIER_MODEL_CHECK_CODE(cache_->Load(m, l->lease), absl::StatusCode::kInvalidArgument);
        break;
      }
      case 5: {  // a key repeated in one chain
        ModelLease* l = AnyLease();
        if (l == nullptr || l->lease.size() < 2) break;
        Finish(*l);
        const std::vector<BlockKey> twice = {l->keys[0], l->keys[0]};
        KVTIER_MODEL_CHECK_CODE(cache_->Commit(twice, l->lease),
                                absl::StatusCode::kInvalidArgument);
        break;
      }
      default:  // mismatched hint spans
        KVTIER_MODEL_CHECK_CODE(cache_->Hint(Request(), std::vector<double>{}),
                                absl::StatusCode::kInvalidArgument);
    }
  }

  const ModelConfig config_;
  std::unique_ptr<TempDir> dir_;  // the disk tier's; removed after the cache
  std::function<uint32_t()> next_;
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

}  // namespace kvtier::test

#endif  // KVTIER_TEST_UTIL_CACHE_MODEL_H_
