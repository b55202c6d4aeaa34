#include "lib/tiers/remote_tier.h"

#include <algorithm>
#include <array>
#include <cstring>
#include <string_view>
#include <utility>

#include "absl/strings/str_cat.h"
#include "lib/tiers/block_header.h"

namespace kvtier::internal {
namespace {

// Room for the header's fields and growth; values are header + payload.
constexpr uint32_t kHeaderBytes = 128;
static_assert(kHeaderBytes >= kBlockHeaderMinBytes);

}  // namespace

absl::StatusOr<std::unique_ptr<RemoteTier>> RemoteTier::Open(RemoteTierConfig config) {
  if (config.block_bytes == 0) return absl::InvalidArgumentError("RemoteTier: block_bytes is 0");
  if (config.threads == 0) config.threads = 1;
  auto cluster = RedisCluster::Connect(config.cluster);
  if (!cluster.ok()) return cluster.status();
  // Open a connection to every master now (an EXISTS of a probe key in each one's slots), so the
  // first Match() does not spend its budget connecting. A master that does not answer is not an
  // error here: its keys are misses until it does.
  absl::flat_hash_set<std::string> masters;
  std::vector<std::string> probes;
  for (int i = 0; i < 4096 && masters.size() < 64; ++i) {
    std::string probe = absl::StrCat("kvtier:probe:", i);
    if (masters.insert((*cluster)->NodeForSlot(RedisCluster::KeySlot(probe))).second) {
      probes.push_back(std::move(probe));
    }
  }
  (*cluster)->Exists(probes, Clock::now() + config.cluster.connect_timeout);
  return std::unique_ptr<RemoteTier>(new RemoteTier(std::move(config), std::move(*cluster)));
}

RemoteTier::RemoteTier(RemoteTierConfig config, std::unique_ptr<RedisCluster> cluster)
    : config_(std::move(config)),
      prefix_(absl::StrCat("kvtier:", config_.name_space, ":")),
      cluster_(std::move(cluster)) {
  for (uint32_t i = 0; i < config_.threads; ++i) workers_.emplace_back([this] { WorkerLoop(); });
}

RemoteTier::~RemoteTier() {
  Drain();
  {
    MutexLock lock(&mu_);
    stop_ = true;
  }
  cv_.SignalAll();
  for (std::thread& t : workers_) t.join();
}

std::string RemoteTier::StoreKey(const BlockKey& key) const {
  return absl::StrCat(prefix_, key.ToHex());
}

void RemoteTier::Submit(std::function<void()> job) {
  {
    MutexLock lock(&mu_);
    jobs_.push_back(std::move(job));
  }
  cv_.SignalAll();
}

void RemoteTier::WorkerLoop() {
  MutexLock lock(&mu_);
  for (;;) {
    while (jobs_.empty() && !stop_) cv_.Wait(&mu_);
    if (jobs_.empty()) return;  // stopping, nothing left
    std::function<void()> job = std::move(jobs_.front());
    jobs_.pop_front();
    running_++;
    mu_.Unlock();
    job();
    job = nullptr;  // its captures go before Drain() can return
    mu_.Lock();
    running_--;
    cv_.SignalAll();
  }
}

void RemoteTier::Drain() {
  MutexLock lock(&mu_);
  while (!jobs_.empty() || running_ > 0) cv_.Wait(&mu_);
}

bool RemoteTier::Known(const BlockKey& key) {
  MutexLock lock(&known_mu_);
  return known_.contains(key);
}

void RemoteTier::Remember(const BlockKey& key) {
  MutexLock lock(&known_mu_);
  if (!known_.insert(key).second) return;
  known_order_.push_back(key);
  // Bounded: the oldest beliefs go first (forgetting one only costs a duplicate publication).
  while (known_order_.size() > config_.known_capacity) {
    known_.erase(known_order_.front());
    known_order_.pop_front();
  }
}

void RemoteTier::Forget(const BlockKey& key) {
  MutexLock lock(&known_mu_);
  known_.erase(key);  // its known_order_ record stays until it ages out; erasing twice is harmless
}

uint32_t RemoteTier::ExistsPrefix(std::span<const BlockKey> keys, Clock::time_point deadline,
                                  bool* timed_out) {
  *timed_out = false;
  // In growing batches (32, 128, then the rest): a prompt the store has little of costs one
  // small round trip, one it has much of a few.
  uint32_t n = 0;
  size_t batch = 32;
  std::vector<std::string> store_keys;
  while (n < keys.size()) {
    const std::span<const BlockKey> part = keys.subspan(n, std::min(batch, keys.size() - n));
    batch *= 4;
    store_keys.clear();
    for (const BlockKey& k : part) store_keys.push_back(StoreKey(k));
    lookups_ += part.size();
    std::vector<absl::StatusOr<bool>> found = cluster_->Exists(store_keys, deadline);
    for (size_t i = 0; i < part.size(); ++i, ++n) {
      if (!found[i].ok()) {
        *timed_out = found[i].status().code() == absl::StatusCode::kDeadlineExceeded;
        if (*timed_out) lookup_timeouts_++;
        return n;
      }
      if (!*found[i]) {
        Forget(part[i]);  // evicted or expired there: publish it again when it comes by
        return n;
      }
    }
  }
  return n;
}

uint32_t RemoteTier::FindPrefix(std::span<const BlockKey> keys) {
  if (keys.empty()) return 0;
  bool timed_out = false;
  const uint32_t n = ExistsPrefix(keys, Clock::now() + config_.match_budget, &timed_out);
  hits_ += n;
  return n;
}

void RemoteTier::ReadAsync(std::vector<Read> reads, std::function<void()> before,
                           std::function<void(size_t, const absl::Status&)> done) {
  Submit([this, reads = std::move(reads), before = std::move(before), done = std::move(done)] {
    if (before) before();
    const uint64_t start = MonotonicNanos();
    std::vector<std::string> store_keys;
    store_keys.reserve(reads.size());
    // The header of each value lands here, its payload straight in the destination.
    std::vector<std::array<uint8_t, kHeaderBytes>> headers(reads.size());
    std::vector<RedisCluster::ReadTarget> targets;
    targets.reserve(reads.size());
    for (size_t i = 0; i < reads.size(); ++i) {
      store_keys.push_back(StoreKey(reads[i].key));
      targets.push_back({.head = reinterpret_cast<char*>(headers[i].data()),
                         .head_len = kHeaderBytes,
                         .body = static_cast<char*>(reads[i].dst),
                         .body_len = config_.block_bytes});
    }
    auto values = cluster_->GetInto(store_keys, targets, Clock::now() + config_.timeout);
    read_latency_.RecordSince(start);
    for (size_t i = 0; i < reads.size(); ++i) {
      absl::Status s;
      if (!values[i].ok()) {
        read_errors_++;
        s = values[i].status();
      } else if (!values[i]->has_value()) {
        read_misses_++;
        Forget(reads[i].key);
        s = absl::NotFoundError(
            absl::StrCat("RemoteTier: ", store_keys[i], " is not in the store"));
      } else {
        const size_t value_bytes = **values[i];
        const bool ok = value_bytes == kHeaderBytes + config_.block_bytes &&
                        VerifyBlock(headers[i].data(), kHeaderBytes, reads[i].dst, reads[i].key,
                                    config_.layout_fingerprint, config_.block_bytes);
        if (ok) {
          reads_++;
          bytes_read_ += config_.block_bytes;
          Remember(reads[i].key);
        } else {
          corrupt_reads_++;
          Forget(reads[i].key);  // a good copy may be published over it
          s = absl::DataLossError(absl::StrCat("RemoteTier: ", store_keys[i], " (", value_bytes,
                                               " bytes) does not hold the block intact"));
        }
      }
      done(i, s);
    }
  });
}

void RemoteTier::WriteAsync(std::vector<Write> writes, std::function<void()> done) {
  Submit([this, writes = std::move(writes), done = std::move(done)] {
    const uint64_t start = MonotonicNanos();
    std::vector<std::string> store_keys;
    std::vector<std::array<uint8_t, kHeaderBytes>> headers;
    std::vector<const Write*> sent;
    for (const Write& w : writes) {
      if (Known(w.key)) {
        writes_skipped_++;
        continue;
      }
      headers.emplace_back();
      EncodeBlockHeader({.key = w.key,
                         .parent = w.parent,
                         .fingerprint = config_.layout_fingerprint,
                         .payload_bytes = config_.block_bytes,
                         .payload_hash = PayloadHash(w.src, config_.block_bytes)},
                        kHeaderBytes, headers.back().data());
      store_keys.push_back(StoreKey(w.key));
      sent.push_back(&w);
    }
    if (!sent.empty()) {
      // Header and payload go out back to back, the payload from the source itself.
      std::vector<RedisCluster::ValueParts> values;
      for (size_t i = 0; i < sent.size(); ++i) {
        values.push_back(
            {std::string_view(reinterpret_cast<const char*>(headers[i].data()), kHeaderBytes),
             std::string_view(static_cast<const char*>(sent[i]->src), config_.block_bytes)});
      }
      std::vector<absl::Status> results = cluster_->SetParts(
          store_keys, values, config_.ttl_seconds, Clock::now() + config_.timeout);
      for (size_t i = 0; i < sent.size(); ++i) {
        if (results[i].ok()) {
          writes_++;
          bytes_written_ += config_.block_bytes;
          Remember(sent[i]->key);
        } else {
          write_errors_++;
        }
      }
      write_latency_.RecordSince(start);
    }
    if (done) done();  // the sources are free again
  });
}

StorageTier::NotStarted RemoteTier::ReadBlocks(std::vector<Block> blocks, Done done) {
  std::vector<Read> reads;
  reads.reserve(blocks.size());
  for (const Block& b : blocks) reads.push_back({.key = b.key, .dst = b.host});
  ReadAsync(std::move(reads), nullptr, std::move(done));
  return {};
}

StorageTier::NotStarted RemoteTier::WriteBlocks(std::vector<Block> blocks, Done done) {
  std::vector<Write> writes;
  writes.reserve(blocks.size());
  for (const Block& b : blocks) writes.push_back({.key = b.key, .parent = b.parent, .src = b.host});
  const size_t n = writes.size();
  WriteAsync(std::move(writes), [n, done = std::move(done)] {
    for (size_t i = 0; i < n; ++i) done(i, absl::OkStatus());
  });
  return {};
}

void RemoteTier::FillStats(CacheStats* stats) const {
  RemoteStats& r = stats->remote;
  r.hits = hits_;
  r.lookups = lookups_;
  r.lookup_timeouts = lookup_timeouts_;
  r.reads = reads_;
  r.read_misses = read_misses_;
  r.corrupt_reads = corrupt_reads_;
  r.read_errors = read_errors_;
  r.writes = writes_;
  r.write_errors = write_errors_;
  r.writes_skipped = writes_skipped_;
  r.bytes_read = bytes_read_;
  r.bytes_written = bytes_written_;
  const RedisClusterStats c = cluster_->stats();
  r.redirects = c.moved + c.ask;
  r.connects = c.connects;
  stats->remote_read_latency = read_latency_.Snapshot();
  stats->remote_write_latency = write_latency_.Snapshot();
}

}  // namespace kvtier::internal
