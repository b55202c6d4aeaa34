// engine_loop: a toy inference engine on kvtier, with a scheduler thread and a worker thread.
//
// It follows the lifecycle that vLLM's KV connector and SGLang's HiCache share
// (docs/integration.md):
//   scheduler: tokens -> block keys (BlockHasher, chained prefix hashes) -> Match (how much of the
//              prompt is cached, and where) -> AllocateDevice (device slots for the whole prompt)
//              -> Load (asynchronous) -> hand the request to the worker through a queue
//   worker:    per layer: WaitLayer(l), then "attention" reads the loaded blocks of layer l and
//              "prefill" writes the blocks that were not loaded -> Commit -> decode (Grow, Commit
//              the full generated blocks) -> Release
// with several requests in flight at once (--inflight), so that the two threads call the Cache
// concurrently, as an engine does.
//
// Requests come from a Mooncake trace (JSON lines with timestamp, input_length, output_length and
// hash_ids, 512 tokens per block, equal id = same block; see ../shared/data/README.md), default
// ../shared/data/conversation_trace.jsonl beside the source tree, or, when there is none, from a
// synthetic generator (a shared system prompt and multi-turn conversations). Each trace id becomes
// 512 token ids derived from it, so the keys chain exactly as the ids do; a prompt's last, usually
// partial, block counts as a full one, as in the trace's reference replay. Prompts longer than the
// device tier are cut to it. The disk tier lives in --disk-dir (default engine_loop-data in the
// build tree), emptied at start unless --warm (restart from what the last run left) or
// --damage-disk (the same, with a byte of every stored block flipped: loading one of them fails
// and is recomputed).
//
// The device is kvtier's emulated one (host memory and a copy thread). What the engine's kernels do
// to KV memory is the KvKernels interface below: on the emulated device, "attention" copies each
// loaded block's layer out of device memory and compares every byte with the pattern that prefill
// wrote for that key and layer; a CUDA engine would launch kernels on its compute stream after
// cudaStreamWaitEvent(stream, transfer.LayerReady(l)) instead.
//
// With --remote host:port[,...] the cache also has a remote tier (Options.remote): a Redis
// Cluster that other engine_loop processes ("replicas" on other machines) share under the same
// --remote-scope. Blocks one process publishes (--remote-publish write-through: at Commit;
// write-back: when its host tier evicts them) another one's Match finds past its local prefix and
// its Load reads, verifies and copies to the device; the byte check covers them like any other
// loaded block. examples/remote_demo.sh runs two processes this way.
//
// Exit status: 0 when every loaded byte matched and every API error was one an engine recovers
// from (kResourceExhausted from AllocateDevice/Grow: wait or skip; a failed Transfer: recompute
// those blocks);
// 1 otherwise; 2 for bad flags.
#include <algorithm>
#include <chrono>
#include <cinttypes>
#include <condition_variable>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <deque>
#include <filesystem>
#include <fstream>
#include <memory>
#include <mutex>
#include <optional>
#include <span>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "kvtier/cache.h"

#ifndef KVTIER_ENGINE_LOOP_TRACE
#define KVTIER_ENGINE_LOOP_TRACE ""
#endif
#ifndef KVTIER_ENGINE_LOOP_DATA_DIR
#define KVTIER_ENGINE_LOOP_DATA_DIR "engine_loop-data"
#endif

namespace {

using Clock = std::chrono::steady_clock;
using kvtier::BlockKey;

constexpr uint32_t kTokensPerBlock = 512;  // the Mooncake traces' block size

// ---- flags ----

struct Flags {
  std::string trace = KVTIER_ENGINE_LOOP_TRACE;  // "" or "synthetic": the generator
  uint64_t requests = 500;                       // 0 = the whole trace
  uint32_t device_blocks = 256;
  uint32_t host_blocks = 512;
  uint32_t disk_blocks = 4096;  // 0 disables the disk tier
  std::string disk_dir = KVTIER_ENGINE_LOOP_DATA_DIR;
  uint32_t layers = 4;
  uint64_t block_bytes = 32 << 10;  // one block, all layers, K and V
  uint32_t inflight = 4;            // requests between scheduler and worker
  bool warm = false;                // keep the previous run's disk blocks (warm restart)
  bool damage_disk = false;         // --warm, after flipping a byte in every stored block
  std::string remote;               // "host:port[,host:port]" of a Redis Cluster; "" = no remote
  std::string remote_scope = "engine_loop";  // processes sharing blocks use the same scope
  kvtier::RemotePublish remote_publish = kvtier::RemotePublish::kWriteThrough;
};

void Usage() {
  std::fprintf(stderr,
               "usage: engine_loop [--trace FILE|synthetic] [--requests N (0 = all)]\n"
               "                   [--device-blocks N] [--host-blocks N] [--disk-blocks N (0 = no "
               "disk)]\n"
               "                   [--disk-dir DIR] [--layers N] [--block-bytes N] [--inflight N] "
               "[--warm]\n"
               "                   [--damage-disk (--warm, with a byte of every stored block "
               "flipped)]\n"
               "                   [--remote HOST:PORT[,HOST:PORT...] (a Redis Cluster shared "
               "with other processes)]\n"
               "                   [--remote-scope S] [--remote-publish "
               "write-through|write-back]\n");
}

bool ParseFlags(int argc, char** argv, Flags* f) {
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    if (a == "--warm" || a == "--damage-disk") {
      f->warm = true;
      f->damage_disk = f->damage_disk || a == "--damage-disk";
      continue;
    }
    if (a == "--help" || a == "-h" || i + 1 >= argc) return false;
    const char* v = argv[++i];
    char* end = nullptr;
    const unsigned long long n = std::strtoull(v, &end, 10);
    const bool numeric = end != v && *end == '\0' && v[0] != '-';
    if (a == "--trace") {
      f->trace = v;
    } else if (a == "--disk-dir") {
      f->disk_dir = v;
    } else if (a == "--remote") {
      f->remote = v;
    } else if (a == "--remote-scope") {
      f->remote_scope = v;
    } else if (a == "--remote-publish") {
      if (std::strcmp(v, "write-through") == 0) {
        f->remote_publish = kvtier::RemotePublish::kWriteThrough;
      } else if (std::strcmp(v, "write-back") == 0) {
        f->remote_publish = kvtier::RemotePublish::kWriteBack;
      } else {
        std::fprintf(stderr,
                     "engine_loop: --remote-publish: expected write-through or write-back (got "
                     "'%s')\n",
                     v);
        return false;
      }
    } else if (!numeric) {
      std::fprintf(stderr, "engine_loop: %s: expected a number (got '%s')\n", a.c_str(), v);
      return false;
    } else if (a == "--requests") {
      f->requests = n;
    } else if (a == "--device-blocks") {
      f->device_blocks = static_cast<uint32_t>(n);
    } else if (a == "--host-blocks") {
      f->host_blocks = static_cast<uint32_t>(n);
    } else if (a == "--disk-blocks") {
      f->disk_blocks = static_cast<uint32_t>(n);
    } else if (a == "--layers") {
      f->layers = static_cast<uint32_t>(n);
    } else if (a == "--block-bytes") {
      f->block_bytes = n;
    } else if (a == "--inflight") {
      f->inflight = static_cast<uint32_t>(n);
    } else {
      std::fprintf(stderr, "engine_loop: unknown flag %s\n", a.c_str());
      return false;
    }
  }
  const uint64_t unit = uint64_t{f->layers} * 2 * 8;  // K and V per layer, whole 8-byte words
  if (f->layers == 0 || f->block_bytes == 0 || f->block_bytes % unit != 0) {
    std::fprintf(stderr, "engine_loop: --block-bytes must be a positive multiple of 16 * layers\n");
    return false;
  }
  if (f->device_blocks == 0 || f->inflight == 0 || (f->disk_blocks > 0 && f->host_blocks == 0)) {
    std::fprintf(stderr,
                 "engine_loop: --device-blocks and --inflight must be > 0; a disk tier needs a "
                 "host tier\n");
    return false;
  }
  if (!f->remote.empty() && f->host_blocks == 0) {
    std::fprintf(stderr,
                 "engine_loop: --remote needs a host tier (remote blocks move through host "
                 "slots)\n");
    return false;
  }
  return true;
}

// ---- requests: a Mooncake trace or a synthetic one ----

struct Request {
  uint64_t id = 0;
  uint64_t input_tokens = 0;
  uint64_t output_tokens = 0;
  std::vector<uint64_t> hash_ids;  // one per 512-token block of the prompt
};

// Reads the unsigned integer after `"name":` in `line`; nullopt if absent or malformed.
std::optional<uint64_t> JsonUint(const std::string& line, const char* name) {
  const size_t at = line.find(std::string("\"") + name + "\"");
  if (at == std::string::npos) return std::nullopt;
  const size_t colon = line.find(':', at);
  if (colon == std::string::npos) return std::nullopt;
  const char* p = line.c_str() + colon + 1;
  char* end = nullptr;
  const unsigned long long v = std::strtoull(p, &end, 10);
  if (end == p) return std::nullopt;
  return v;
}

// A minimal reader for the four fields used here (the traces are flat, one object per line).
bool ReadTrace(const std::string& path, uint64_t max_requests, std::vector<Request>* out) {
  std::ifstream in(path);
  if (!in) return false;
  std::string line;
  for (uint64_t n = 1; std::getline(in, line); ++n) {
    if (line.find_first_not_of(" \t\r") == std::string::npos) continue;
    Request r{.id = out->size()};
    const auto input = JsonUint(line, "input_length");
    const size_t ids = line.find("\"hash_ids\"");
    const size_t open = ids == std::string::npos ? ids : line.find('[', ids);
    const size_t close = open == std::string::npos ? open : line.find(']', open);
    if (!input || close == std::string::npos) {
      std::fprintf(stderr, "engine_loop: %s:%" PRIu64 ": no input_length or hash_ids\n",
                   path.c_str(), n);
      std::exit(1);
    }
    r.input_tokens = *input;
    r.output_tokens = JsonUint(line, "output_length").value_or(0);
    for (const char* p = line.c_str() + open + 1; p < line.c_str() + close;) {
      char* end = nullptr;
      const unsigned long long v = std::strtoull(p, &end, 10);
      if (end == p) break;
      r.hash_ids.push_back(v);
      p = end;
      while (p < line.c_str() + close && (*p == ',' || *p == ' ')) ++p;
    }
    if (r.hash_ids.empty()) continue;
    out->push_back(std::move(r));
    if (max_requests > 0 && out->size() == max_requests) break;
  }
  return true;
}

// Multi-turn conversations behind a shared 4-block system prompt: each turn re-sends the history
// plus one to three new blocks; conversations end after ~40 blocks and a new one starts.
std::vector<Request> SyntheticTrace(uint64_t n) {
  constexpr int kUsers = 24;
  std::vector<std::vector<uint64_t>> history(kUsers);
  uint64_t next_id = 4, rng = 0x2545F4914F6CDD1DULL;
  auto next = [&rng] {
    rng ^= rng << 13;
    rng ^= rng >> 7;
    rng ^= rng << 17;
    return rng;
  };
  std::vector<Request> out;
  for (uint64_t i = 0; i < n; ++i) {
    auto& h = history[next() % kUsers];
    if (h.empty() || h.size() > 40) h = {0, 1, 2, 3};
    for (uint64_t k = 1 + next() % 3; k > 0; --k) h.push_back(next_id++);
    out.push_back({.id = i,
                   .input_tokens = h.size() * kTokensPerBlock - next() % kTokensPerBlock,
                   .output_tokens = 100 + next() % 800,
                   .hash_ids = h});
  }
  return out;
}

// The token ids of a block: any deterministic function of its trace id will do, since equal ids
// mean equal content (and equal prefix) and the keys chain the prefix in.
void AppendBlockTokens(uint64_t hash_id, std::vector<int32_t>* tokens) {
  for (uint32_t j = 0; j < kTokensPerBlock; ++j) {
    tokens->push_back(static_cast<int32_t>((hash_id * 7919 + j * 104729) & 0x7fffffff));
  }
}

// ---- the engine's KV memory and kernels ----

// Per layer, a K tensor and a V tensor of `slots` block regions each: vLLM's layout.
class EngineKv {
 public:
  EngineKv(uint32_t layers, uint32_t slots, uint64_t segment_bytes)
      : segment_bytes_(segment_bytes),
        layout_{.tokens_per_block = kTokensPerBlock, .num_slots = slots} {
    for (uint32_t l = 0; l < layers; ++l) {
      kvtier::LayerLayout layer;
      for (int kv = 0; kv < 2; ++kv) {
        tensors_.push_back(std::make_unique<uint64_t[]>(segment_bytes / 8 * slots));
        layer.segments.push_back({tensors_.back().get(), segment_bytes, segment_bytes});
      }
      layout_.layers.push_back(std::move(layer));
    }
  }
  const kvtier::BlockLayout& layout() const { return layout_; }
  uint64_t segment_bytes() const { return segment_bytes_; }
  uint64_t* At(uint32_t layer, uint32_t seg, uint32_t slot) {
    return tensors_[layer * 2 + seg].get() + uint64_t{slot} * (segment_bytes_ / 8);
  }

 private:
  uint64_t segment_bytes_;
  kvtier::BlockLayout layout_;
  std::vector<std::unique_ptr<uint64_t[]>> tensors_;
};

// Word `w` of segment `seg` of layer `layer` of the block named `key`: what prefill writes.
uint64_t Pattern(const BlockKey& key, uint32_t layer, uint32_t seg, uint64_t w) {
  uint64_t x = key.hi ^ (key.lo + 0x9E3779B97F4A7C15ULL * (uint64_t{layer} * 2 + seg + 1)) ^
               (w * 0xD6E8FEB86659FD93ULL);
  x ^= x >> 31;
  x *= 0xBF58476D1CE4E5B9ULL;
  x ^= x >> 29;
  return x;
}

// What the engine's kernels do to KV memory, one layer at a time. The emulated implementation runs
// on the calling thread; a CUDA one would launch on the compute stream (after waiting for the
// layer's LayerReady event) and report mismatches through a device counter.
class KvKernels {
 public:
  virtual ~KvKernels() = default;
  // Prefill: writes layer `layer` of block keys[i] into device slot slots[i].
  virtual void Prefill(uint32_t layer, std::span<const BlockKey> keys,
                       std::span<const uint32_t> slots) = 0;
  // Attention: reads layer `layer` of block keys[i] from device slot slots[i]; returns the bytes
  // that differ from what Prefill wrote for that key.
  virtual uint64_t Attend(uint32_t layer, std::span<const BlockKey> keys,
                          std::span<const uint32_t> slots) = 0;
};

class EmulatedKernels final : public KvKernels {
 public:
  explicit EmulatedKernels(EngineKv* kv) : kv_(kv), scratch_(kv->segment_bytes() / 8) {}

  void Prefill(uint32_t layer, std::span<const BlockKey> keys,
               std::span<const uint32_t> slots) override {
    const uint64_t words = kv_->segment_bytes() / 8;
    for (size_t i = 0; i < keys.size(); ++i) {
      for (uint32_t seg = 0; seg < 2; ++seg) {
        uint64_t* p = kv_->At(layer, seg, slots[i]);
        for (uint64_t w = 0; w < words; ++w) p[w] = Pattern(keys[i], layer, seg, w);
      }
    }
  }

  uint64_t Attend(uint32_t layer, std::span<const BlockKey> keys,
                  std::span<const uint32_t> slots) override {
    const uint64_t words = kv_->segment_bytes() / 8;
    uint64_t mismatched = 0;
    for (size_t i = 0; i < keys.size(); ++i) {
      for (uint32_t seg = 0; seg < 2; ++seg) {
        // Read the bytes as a kernel would (device memory -> registers), then check them.
        std::memcpy(scratch_.data(), kv_->At(layer, seg, slots[i]), words * 8);
        for (uint64_t w = 0; w < words; ++w) {
          const uint64_t diff = scratch_[w] ^ Pattern(keys[i], layer, seg, w);
          for (uint64_t d = diff; d != 0; d >>= 8) mismatched += (d & 0xff) != 0;
        }
      }
    }
    return mismatched;
  }

 private:
  EngineKv* kv_;
  std::vector<uint64_t> scratch_;
};

// ---- scheduler -> worker ----

// One request between Load() and Release(): everything the worker needs. Moved, never shared.
struct InFlight {
  const Request* request = nullptr;
  std::vector<BlockKey> keys;
  kvtier::MatchResult match;
  kvtier::DeviceLease lease;
  kvtier::Transfer transfer;
  std::vector<uint32_t> own_slots;  // the lease's slots before Load(): a changed one was shared
  Clock::time_point load_started;
};

class WorkQueue {
 public:
  explicit WorkQueue(uint32_t capacity) : capacity_(capacity) {}
  void Push(InFlight work) {
    std::unique_lock lock(mu_);
    not_full_.wait(lock, [&] { return items_.size() < capacity_; });
    items_.push_back(std::move(work));
    not_empty_.notify_one();
  }
  // Nothing once Close() was called and the queue is empty.
  std::optional<InFlight> Pop() {
    std::unique_lock lock(mu_);
    not_empty_.wait(lock, [&] { return !items_.empty() || closed_; });
    if (items_.empty()) return std::nullopt;
    InFlight w = std::move(items_.front());
    items_.pop_front();
    not_full_.notify_one();
    return w;
  }
  void Close() {
    std::lock_guard lock(mu_);
    closed_ = true;
    not_empty_.notify_all();
  }
  // Requests the worker has not released yet (queued or being worked on).
  void Done() {
    std::lock_guard lock(mu_);
    --outstanding_;
    ++releases_;
    released_.notify_all();
  }
  // Releases so far: read before a call that may come up short, for WaitForRelease.
  uint64_t releases() {
    std::lock_guard lock(mu_);
    return releases_;
  }
  void Started() {
    std::lock_guard lock(mu_);
    ++outstanding_;
  }
  // Waits until the worker has released a request since releases() returned `seen` (at once if it
  // already has: the release may come between the failed call and this wait); false if none was
  // and nothing is outstanding (the wait would never end).
  bool WaitForRelease(uint64_t seen) {
    std::unique_lock lock(mu_);
    if (releases_ == seen && outstanding_ == 0) return false;
    released_.wait(lock, [&] { return releases_ != seen; });
    return true;
  }

 private:
  std::mutex mu_;
  std::condition_variable not_full_, not_empty_, released_;
  std::deque<InFlight> items_;
  const uint32_t capacity_;
  uint64_t outstanding_ = 0;
  uint64_t releases_ = 0;
  bool closed_ = false;
};

struct SchedulerTotals {
  uint64_t requests = 0, truncated = 0, blocks = 0, input_tokens = 0;
  uint64_t matched[kvtier::kNumTiers] = {};
  uint64_t matched_remote = 0;            // past the local prefix, in the remote tier
  uint64_t allocation_waits = 0;          // AllocateDevice kResourceExhausted: waited for a release
  uint64_t idle_allocation_failures = 0;  // the same with no request in flight (an error)
  uint64_t errors = 0;                    // unrecoverable API errors
};

struct WorkerTotals {
  uint64_t blocks_loaded = 0;         // handed over by successful loads (verified)
  uint64_t blocks_loaded_remote = 0;  // of which: Match found them only in the remote tier
  uint64_t blocks_computed = 0;       // prefilled (missed, or recomputed after a failed load)
  uint64_t tokens_reused = 0;         // prompt tokens whose KV came from the cache
  uint64_t load_errors = 0;           // failed Transfers (their promoted blocks were recomputed)
  uint64_t blocks_recomputed = 0;     // of which: blocks recomputed after a failed load
  uint64_t decode_blocks = 0;         // generated full blocks committed after Grow
  uint64_t grow_exhausted = 0;        // Grow kResourceExhausted: decode blocks not cached
  uint64_t mismatched_bytes = 0;
  uint64_t errors = 0;  // unrecoverable API errors
  std::vector<double>
      load_us;  // Load() -> last layer ready, seen by the worker (queueing included)
  std::vector<double> stall_us;  // time the worker waited in WaitLayer
};

void ReportError(const char* what, const absl::Status& s, uint64_t request, uint64_t* errors) {
  std::fprintf(stderr, "engine_loop: request %" PRIu64 ": %s: %s\n", request, what,
               s.ToString().c_str());
  ++*errors;
}

double Micros(Clock::duration d) { return std::chrono::duration<double, std::micro>(d).count(); }

// ---- the worker: attention on loaded blocks, prefill of the rest, commit, decode, release ----

void Work(kvtier::Cache& cache, const kvtier::BlockHasher& hasher, KvKernels& kernels,
          WorkQueue& queue, WorkerTotals* t) {
  const uint32_t layers = static_cast<uint32_t>(cache.options().layout.layers.size());
  while (std::optional<InFlight> w = queue.Pop()) {
    const uint64_t id = w->request->id;
    const uint32_t n = static_cast<uint32_t>(w->keys.size());
    const std::span<const BlockKey> keys = w->keys;
    const std::span<const uint32_t> slots = w->lease.slots();  // final since Load() returned
    const uint32_t loaded = w->transfer.blocks();
    bool load_failed = false;
    const bool had_copies = w->transfer.blocks_promoted() > 0;
    for (uint32_t l = 0; l < layers; ++l) {
      // Before attention on layer l: that layer of every loaded block must be on the device.
      if (!load_failed && loaded > 0) {
        const Clock::time_point wait_start = Clock::now();
        const absl::Status ready = w->transfer.WaitLayer(l);
        if (had_copies) t->stall_us.push_back(Micros(Clock::now() - wait_start));
        if (!ready.ok()) {
          // A failed load is a miss, not an error: the copies' blocks are recomputed below. Wait
          // for the whole Transfer first: until it has finished, copies may still write into the
          // lease's slots, and the slots are only the lease's again afterwards.
          load_failed = true;
          w->transfer.Wait().IgnoreError();
          ++t->load_errors;
        } else {
          t->mismatched_bytes += kernels.Attend(l, keys.first(loaded), slots.first(loaded));
        }
      }
      if (had_copies && l + 1 == layers && !load_failed) {
        t->load_us.push_back(Micros(Clock::now() - w->load_started));
      }
    }
    // Prefill what the cache did not provide. After a failed load that is also every promoted
    // block from the first failed one on (blocks_loaded(): the blocks before it arrived whole):
    // the positions whose slot is still the lease's own (shared device blocks stay valid, and
    // other requests may be reading them: never write a shared slot).
    std::vector<BlockKey> todo_keys;
    std::vector<uint32_t> todo_slots;
    for (uint32_t i = load_failed ? w->transfer.blocks_loaded() : loaded; i < n; ++i) {
      if (i < loaded && slots[i] != w->own_slots[i]) continue;  // shared, already verified
      todo_keys.push_back(keys[i]);
      todo_slots.push_back(slots[i]);
      if (i < loaded) ++t->blocks_recomputed;
    }
    for (uint32_t l = 0; l < layers; ++l) kernels.Prefill(l, todo_keys, todo_slots);
    t->blocks_computed += todo_keys.size();
    const uint32_t reused = n - static_cast<uint32_t>(todo_keys.size());
    t->blocks_loaded += reused;
    if (!load_failed) {
      for (uint32_t i = 0; i < loaded; ++i) {
        t->blocks_loaded_remote += w->match.tiers[i] == kvtier::Tier::kRemote;
      }
    }
    t->tokens_reused +=
        std::min<uint64_t>(uint64_t{reused} * kTokensPerBlock, w->request->input_tokens);

    // Publish the prompt's blocks: the bytes are complete in device memory now.
    // A key another request in flight computed (or is promoting) and published first keeps that
    // copy; the rest of the chain is published under it (CacheStats::blocks_commit_shared).
    absl::Status committed = cache.Commit(keys, w->lease);
    if (!committed.ok()) {
      ReportError("Commit", committed, id, &t->errors);
    }

    // Decode: the generated tokens fill new blocks; grow the lease for the full ones and publish
    // them with the longer chain (a partial last block is never published).
    const auto generated = static_cast<uint32_t>(w->request->output_tokens / kTokensPerBlock);
    const uint32_t capacity = cache.options().layout.num_slots;
    const uint32_t grow = std::min(generated, capacity - std::min(n, capacity));
    if (committed.ok() && grow > 0) {
      absl::Status grown = cache.Grow(w->lease, grow);
      if (grown.code() == absl::StatusCode::kResourceExhausted) {
        ++t->grow_exhausted;  // every other slot is pinned: the sequence's tail is not cached
      } else if (!grown.ok()) {
        ReportError("Grow", grown, id, &t->errors);
      } else {
        std::vector<BlockKey> chain = w->keys;
        std::vector<int32_t> tokens(kTokensPerBlock);
        for (uint32_t b = 0; b < grow; ++b) {
          for (uint32_t j = 0; j < kTokensPerBlock; ++j) {
            tokens[j] = static_cast<int32_t>((id * 1000003 + b * kTokensPerBlock + j) & 0x7fffffff);
          }
          chain.push_back(hasher.Chain(chain.back(), tokens));
        }
        const std::span<const uint32_t> all = w->lease.slots();
        for (uint32_t l = 0; l < layers; ++l) {
          kernels.Prefill(l, std::span(chain).subspan(n), all.subspan(n));
        }
        if (absl::Status s = cache.Commit(chain, w->lease); s.ok()) {
          t->decode_blocks += grow;
        } else {
          ReportError("Commit (decode)", s, id, &t->errors);
        }
      }
    }
    // Done: the blocks stay cached, unpinned. (Destroying the lease does the same, silently.)
    if (absl::Status s = cache.Release(w->lease); !s.ok())
      ReportError("Release", s, id, &t->errors);
    w->transfer = kvtier::Transfer();  // finished; destroy it before the cache
    queue.Done();
  }
}

// ---- the scheduler: keys, Match, AllocateDevice, Load ----

void Schedule(kvtier::Cache& cache, const kvtier::BlockHasher& hasher,
              const std::vector<Request>& requests, WorkQueue& queue, SchedulerTotals* t) {
  const uint32_t capacity = cache.options().layout.num_slots;
  std::vector<int32_t> tokens;
  for (const Request& r : requests) {
    // An engine caps prompts at its context length; here: at the device tier.
    const auto n = static_cast<uint32_t>(std::min<size_t>(r.hash_ids.size(), capacity));
    t->truncated += n < r.hash_ids.size();
    tokens.clear();
    for (uint32_t b = 0; b < n; ++b) AppendBlockTokens(r.hash_ids[b], &tokens);
    absl::StatusOr<std::vector<BlockKey>> keys = hasher.ChainTokens(tokens, kTokensPerBlock);
    if (!keys.ok()) {
      ReportError("ChainTokens", keys.status(), r.id, &t->errors);
      continue;
    }
    absl::StatusOr<kvtier::MatchResult> match = cache.Match(*keys);
    if (!match.ok()) {
      ReportError("Match", match.status(), r.id, &t->errors);
      continue;
    }
    uint64_t seen = queue.releases();
    absl::StatusOr<kvtier::DeviceLease> lease = cache.AllocateDevice(n);
    // Every device slot is pinned by requests in flight: wait for the worker to release one, and
    // try again. With nothing of ours in flight the cache must find the slots itself (it waits for
    // its own copies): short then is an error.
    while (lease.status().code() == absl::StatusCode::kResourceExhausted) {
      if (!queue.WaitForRelease(seen)) {
        ++t->idle_allocation_failures;
        break;
      }
      ++t->allocation_waits;
      seen = queue.releases();
      lease = cache.AllocateDevice(n);
    }
    if (!lease.ok()) {
      ReportError("AllocateDevice", lease.status(), r.id, &t->errors);
      continue;
    }
    InFlight w{.request = &r, .keys = std::move(*keys), .match = std::move(*match)};
    w.lease = std::move(*lease);
    w.own_slots.assign(w.lease.slots().begin(), w.lease.slots().end());
    w.load_started = Clock::now();
    absl::StatusOr<kvtier::Transfer> xfer = cache.Load(w.match, w.lease);
    if (!xfer.ok()) {
      ReportError("Load", xfer.status(), r.id, &t->errors);
      continue;  // the lease is released when w goes
    }
    w.transfer = std::move(*xfer);
    t->requests++;
    t->blocks += n;
    t->input_tokens += r.input_tokens;
    for (int tier = 0; tier < kvtier::kNumTiers; ++tier) {
      t->matched[tier] += w.match.blocks_in(static_cast<kvtier::Tier>(tier));
    }
    t->matched_remote += w.match.blocks_in(kvtier::Tier::kRemote);
    queue.Started();
    queue.Push(std::move(w));
  }
  queue.Close();
}

double Percentile(std::vector<double> v, double p) {
  if (v.empty()) return 0;
  const size_t k = std::min(v.size() - 1, static_cast<size_t>(p * static_cast<double>(v.size())));
  std::nth_element(v.begin(), v.begin() + static_cast<std::ptrdiff_t>(k), v.end());
  return v[k];
}

double Mean(const std::vector<double>& v) {
  double sum = 0;
  for (double x : v) sum += x;
  return v.empty() ? 0 : sum / static_cast<double>(v.size());
}

// A failing disk, for the recovery path: flips one payload byte of every slot of the disk tier's
// files (blocks.*; a slot is the block padded to 4 KiB plus a 4 KiB trailer, docs/architecture.md)
// so that every read of a previous run's block fails its checksum. Returns the bytes flipped.
uint64_t DamageDiskFiles(const std::string& dir, uint64_t slot_bytes) {
  uint64_t flipped = 0;
  std::error_code ec;
  for (const auto& entry : std::filesystem::directory_iterator(dir, ec)) {
    if (entry.path().filename().string().rfind("blocks.", 0) != 0) continue;
    std::fstream file(entry.path(), std::ios::in | std::ios::out | std::ios::binary);
    const uint64_t size = entry.file_size(ec);
    for (uint64_t off = 64; file && off < size; off += slot_bytes) {
      char c = 0;
      file.seekg(static_cast<std::streamoff>(off));
      file.read(&c, 1);
      c = static_cast<char>(c ^ 0x5a);
      file.seekp(static_cast<std::streamoff>(off));
      file.write(&c, 1);
      flipped += static_cast<bool>(file);
    }
  }
  return flipped;
}

int Run(const Flags& f) {
  std::vector<Request> requests;
  std::string source = f.trace;
  if (f.trace.empty() || f.trace == "synthetic" || !std::filesystem::exists(f.trace)) {
    if (!f.trace.empty() && f.trace != "synthetic") {
      std::fprintf(stderr, "engine_loop: %s not found: using the synthetic generator\n",
                   f.trace.c_str());
    }
    requests = SyntheticTrace(f.requests == 0 ? 500 : f.requests);
    source = "synthetic (shared system prompt, 24 multi-turn conversations)";
  } else if (!ReadTrace(f.trace, f.requests, &requests)) {
    std::fprintf(stderr, "engine_loop: cannot read %s\n", f.trace.c_str());
    return 1;
  }

  const uint64_t segment_bytes = f.block_bytes / (uint64_t{f.layers} * 2);
  EngineKv kv(f.layers, f.device_blocks, segment_bytes);
  const uint64_t block = kv.layout().block_bytes();
  // Assigned, not designated: GCC 12 at -O3 warns that the members a designated initializer skips
  // "may be used uninitialized" (a false positive, -Werror in the release preset).
  kvtier::Options options;
  options.layout = kv.layout();
  options.backend = kvtier::DeviceBackend::kEmulated;
  options.host.capacity_bytes = uint64_t{f.host_blocks} * block;
  if (f.disk_blocks > 0) {
    std::error_code ec;
    if (!f.warm) std::filesystem::remove_all(f.disk_dir, ec);
    std::filesystem::create_directories(f.disk_dir, ec);
    // A disk slot is the block rounded up to the direct-I/O alignment plus a one-unit trailer. With
    // a disk tier a host slot is that size too, and host.capacity_bytes caps the whole pool.
    const uint64_t slot = (block + 4095) / 4096 * 4096 + 4096;
    options.host.capacity_bytes = uint64_t{f.host_blocks} * slot;
    if (f.damage_disk) {
      std::printf("engine_loop: flipped a byte in %" PRIu64 " disk slots of %s\n",
                  DamageDiskFiles(f.disk_dir, slot), f.disk_dir.c_str());
    }
    options.disk = {.directory = f.disk_dir,
                    .capacity_bytes = uint64_t{f.disk_blocks} * slot,
                    .reset_on_mismatch = true,
                    .allow_buffered = true};
  }
  if (!f.remote.empty()) {
    options.remote = {.nodes = f.remote, .scope = f.remote_scope, .publish = f.remote_publish};
  }
  absl::StatusOr<std::unique_ptr<kvtier::Cache>> created = kvtier::Cache::Create(options);
  if (!created.ok()) {
    std::fprintf(stderr, "engine_loop: Cache::Create: %s\n", created.status().ToString().c_str());
    return 1;
  }
  kvtier::Cache& cache = **created;
  const uint64_t recovered = cache.Stats().disk_recovered_blocks;
  const kvtier::BlockHasher hasher({.model_id = "toy-engine", .tenant = "engine_loop"});
  EmulatedKernels kernels(&kv);

  SchedulerTotals st;
  WorkerTotals wt;
  WorkQueue queue(f.inflight);
  const Clock::time_point start = Clock::now();
  std::thread worker(Work, std::ref(cache), std::cref(hasher), std::ref(kernels), std::ref(queue),
                     &wt);
  Schedule(cache, hasher, requests, queue, &st);
  worker.join();
  const double seconds = std::chrono::duration<double>(Clock::now() - start).count();

  const kvtier::CacheStats s = cache.Stats();
  const absl::Status invariants = cache.CheckInvariants();
  const double hit = st.blocks == 0 ? 0 : static_cast<double>(wt.blocks_loaded) / st.blocks;
  const double tok =
      st.input_tokens == 0 ? 0 : static_cast<double>(wt.tokens_reused) / st.input_tokens;
  auto row = [](const char* name, uint64_t v) { std::printf("  %-44s %14" PRIu64 "\n", name, v); };
  auto mib = [](const char* name, uint64_t v) {
    std::printf("  %-44s %14.1f MiB\n", name, static_cast<double>(v) / (1 << 20));
  };
  std::printf("engine_loop: %s\n", source.c_str());
  std::printf("  %u layers, %u-token blocks of %" PRIu64
              " KiB; tiers: device %u, host %u, disk %" PRIu64
              " blocks; %u requests in flight (emulated device)\n",
              f.layers, kTokensPerBlock, block >> 10, f.device_blocks, f.host_blocks,
              s.disk.capacity_blocks, f.inflight);
  row("requests", st.requests);
  row("requests cut to the device tier's size", st.truncated);
  row("blocks from a previous run (warm restart)", recovered);
  row("prompt blocks", st.blocks);
  row("  matched on device", st.matched[0]);
  row("  matched on host", st.matched[1]);
  row("  matched on disk", st.matched[2]);
  if (!f.remote.empty()) row("  matched in the remote tier only", st.matched_remote);
  row("  loaded and verified", wt.blocks_loaded);
  if (!f.remote.empty()) row("    of which from the remote tier", wt.blocks_loaded_remote);
  row("  computed (prefill)", wt.blocks_computed);
  std::printf("  %-44s %14.4f\n", "prefix hit ratio (blocks loaded / prompt blocks)", hit);
  std::printf("  %-44s %14.4f\n", "Match hit ratio (CacheStats::HitRatio)", s.HitRatio());
  row("tokens not recomputed", wt.tokens_reused);
  std::printf("  %-44s %14.4f\n", "  of prompt tokens", tok);
  mib("bytes host -> device (promotion)", s.bytes_h2d);
  mib("bytes disk -> host (promotion)", s.bytes_disk_read);
  mib("bytes device -> host (demotion)", s.bytes_d2h);
  mib("bytes host -> disk (write-back)", s.bytes_disk_written);
  std::printf("  %-44s %" PRIu64 " / %" PRIu64 " / %" PRIu64 "\n", "evictions device / host / disk",
              s.device.evictions, s.host.evictions, s.disk.evictions);
  std::printf("  %-44s %14zu\n", "loads with copies", wt.load_us.size());
  std::printf("  %-44s %8.0f / %.0f / %.0f us\n", "  Load() to last layer ready, avg / p50 / p99",
              Mean(wt.load_us), Percentile(wt.load_us, 0.5), Percentile(wt.load_us, 0.99));
  std::printf("  %-44s %8.0f / %.0f / %.0f us\n", "  worker stall in WaitLayer avg / p50 / p99",
              Mean(wt.stall_us), Percentile(wt.stall_us, 0.5), Percentile(wt.stall_us, 0.99));
  row("load errors (blocks recomputed)", wt.load_errors);
  row("  blocks recomputed after a failed load", wt.blocks_recomputed);
  row("disk blocks failing checksums", s.disk_corrupt_reads);
  if (!f.remote.empty()) {
    std::printf(
        "  remote tier: %s, scope '%s', %s\n", f.remote.c_str(), f.remote_scope.c_str(),
        f.remote_publish == kvtier::RemotePublish::kWriteThrough ? "write-through" : "write-back");
    row("  Match blocks found in the remote tier", s.remote.hits);
    row("  remote lookups (EXISTS)", s.remote.lookups);
    row("  Match lookups out of time budget", s.remote.lookup_timeouts);
    row("  remote reads (verified)", s.remote.reads);
    row("  remote corrupt reads", s.remote.corrupt_reads);
    row("  remote read misses (value gone)", s.remote.read_misses);
    row("  remote read errors", s.remote.read_errors);
    row("  remote writes (acknowledged so far)", s.remote.writes);
    row("  remote write errors", s.remote.write_errors);
    row("  remote writes skipped (already there)", s.remote.writes_skipped);
  }
  row("Commit: keys on the device already", s.blocks_commit_shared);
  row("AllocateDevice waits (kResourceExhausted)", st.allocation_waits);
  row("  with no request in flight (errors)", st.idle_allocation_failures);
  row("decode blocks committed after Grow", wt.decode_blocks);
  row("Grow refused (kResourceExhausted)", wt.grow_exhausted);
  row("unrecoverable API errors", st.errors + wt.errors);
  row("mismatched bytes", wt.mismatched_bytes);
  std::printf("  %-44s %14s\n", "invariants", invariants.ok() ? "ok" : "BROKEN");
  std::printf("  %-44s %14.2f s\n", "wall time", seconds);
  if (!invariants.ok()) std::fprintf(stderr, "%s\n", invariants.ToString().c_str());
  bool ok = wt.mismatched_bytes == 0 && st.errors + wt.errors == 0 && invariants.ok();
  if (f.damage_disk && wt.load_errors == 0) {
    std::fprintf(stderr, "engine_loop: --damage-disk, but no load failed: nothing was tested\n");
    ok = false;
  }
  return ok ? 0 : 1;
}

}  // namespace

int main(int argc, char** argv) {
  Flags flags;
  if (!ParseFlags(argc, argv, &flags)) {
    Usage();
    return 2;
  }
  return Run(flags);
}
