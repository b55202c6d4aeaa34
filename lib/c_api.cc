// The C API (include/kvtier/kvtier.h) over the C++ one.
//
// Every entry point runs its body through Guard(): the body returns an absl::Status, Guard turns it
// into a kvtier_status and this thread's message, and catches every exception (std::bad_alloc ->
// KVTIER_RESOURCE_EXHAUSTED, anything else -> KVTIER_INTERNAL) so that none crosses into C. The
// message lives in a fixed thread_local buffer, so recording an error never allocates.
//
// Close vs destroy: a kvtier_cache handle owns a shared CacheBox, and so does every lease and
// transfer handle it issued (a kvtier_connector's box holds a Connector instead, shared with its
// transfers and stores). kvtier_cache_close() takes the box's lock exclusively, waits for the
// transfers, empties the leases (the C++ objects must die before their Cache) and destroys the
// Cache; the box stays, so a later call through any of the handles finds `cache == nullptr` and
// answers KVTIER_FAILED_PRECONDITION instead of touching freed memory. Calls take the lock shared,
// so they run concurrently with each other and never overlap a close. Lock order: life_mu, then
// reg_mu or finished_mu (never both).
//
// kvtier_connector_take_finished: Connector::TakeFinished reports each end once; what does not fit
// the caller's array waits in the box, in order, for the next call.
//
// Options: the struct's fields map to kvtier::Options by hand (they are C types: segments, NULL
// strings, inverted booleans); kvtier_options_set stores (path, text) pairs in a side object the
// struct points to, applied through the shared option table (lib/options_fields.h) after the
// fields, so every option the table lists reaches C without a new struct version.
#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <deque>
#include <exception>
#include <memory>
#include <mutex>
#include <new>
#include <shared_mutex>
#include <string>
#include <string_view>
#include <type_traits>
#include <unordered_set>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/ascii.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "absl/time/time.h"
#include "kvtier/block_key.h"
#include "kvtier/cache.h"
#include "kvtier/connector.h"
#include "kvtier/kvtier.h"
#include "kvtier/options.h"
#include "lib/options_fields.h"

namespace {

using kvtier::BlockKey;

static_assert(static_cast<int>(absl::StatusCode::kUnauthenticated) == KVTIER_UNAUTHENTICATED);
static_assert(static_cast<int>(absl::StatusCode::kDataLoss) == KVTIER_DATA_LOSS);
static_assert(static_cast<int>(kvtier::Tier::kDisk) == KVTIER_TIER_DISK);
static_assert(static_cast<int>(kvtier::Tier::kRemote) == KVTIER_TIER_REMOTE);
static_assert(static_cast<int>(kvtier::KvEventType::kStored) == KVTIER_EVENT_STORED);
static_assert(static_cast<int>(kvtier::KvEventType::kRemoved) == KVTIER_EVENT_REMOVED);
static_assert(static_cast<int>(kvtier::KvEventType::kAllCleared) == KVTIER_EVENT_ALL_CLEARED);
static_assert(static_cast<int>(kvtier::DeviceBackend::kMetadataOnly) ==
              KVTIER_BACKEND_METADATA_ONLY);

// The size of each struct in version 1 of the API: the smallest struct_size accepted.
constexpr size_t kOptionsSizeV1 = KVTIER_OPTIONS_SIZE_V1;
constexpr size_t kStatsSizeV1 = KVTIER_STATS_SIZE_V1;
// The smallest struct_size that reaches `values` (version 2).
constexpr size_t kOptionsSizeV2 = offsetof(kvtier_options, values) + sizeof(kvtier_option_values*);
// Version 1's layout is frozen: 104 bytes on LP64 (its 5 trailing bools padded to 8).
static_assert(sizeof(void*) != 8 || kOptionsSizeV1 == 104);

thread_local char t_last_error[1024] = "";

kvtier_status Record(kvtier_status code, const char* message) noexcept {
  std::snprintf(t_last_error, sizeof(t_last_error), "%s", code == KVTIER_OK ? "" : message);
  return code;
}

template <typename F>
kvtier_status Guard(F&& body) noexcept {
  try {
    const absl::Status status = body();
    if (status.ok()) return Record(KVTIER_OK, "");
    // absl::Status's message is a string_view: not necessarily NUL-terminated.
    const std::string message(status.message());
    return Record(static_cast<kvtier_status>(status.raw_code()), message.c_str());
  } catch (const std::bad_alloc&) {
    return Record(KVTIER_RESOURCE_EXHAUSTED, "kvtier: out of memory (std::bad_alloc)");
  } catch (const std::exception& e) {
    char buf[512];
    std::snprintf(buf, sizeof(buf), "kvtier: unexpected exception: %s", e.what());
    return Record(KVTIER_INTERNAL, buf);
  } catch (...) {
    return Record(KVTIER_INTERNAL, "kvtier: unexpected exception");
  }
}

absl::Status Null(const char* call, const char* what) {
  return absl::InvalidArgumentError(absl::StrCat(call, ": ", what, " is NULL"));
}

// The integer a C enum object holds. A C caller may store any int in one; loading a value outside
// the enumerators as the enum type is undefined in C++ (UBSan: "not a valid value"), so read it
// as its underlying type and range-check that.
template <typename E>
int64_t EnumValue(const E& e) {
  std::underlying_type_t<E> v;
  std::memcpy(&v, &e, sizeof(v));
  return static_cast<int64_t>(v);
}

BlockKey FromC(const kvtier_block_key& k) { return BlockKey{k.hi, k.lo}; }
kvtier_block_key ToC(const BlockKey& k) { return kvtier_block_key{k.hi, k.lo}; }

absl::Status CopyKeys(const char* call, const kvtier_block_key* keys, size_t n,
                      std::vector<BlockKey>* out) {
  if (keys == nullptr && n != 0) {
    return absl::InvalidArgumentError(absl::StrCat(call, ": keys is NULL with num_keys=", n));
  }
  out->reserve(n);
  for (size_t i = 0; i < n; ++i) out->push_back(FromC(keys[i]));
  return absl::OkStatus();
}

}  // namespace

// (path, text) pairs in the order first set; a path set again keeps its place, with the new text.
struct kvtier_option_values {
  std::vector<std::pair<std::string, std::string>> pairs;
};

namespace {

// kvtier_options_set's one path that is not an Options field: the segments' roles (K, V, latent),
// one per segment of a layer, comma-separated, the same in every layer (BlockLayout's
// SetSegmentRoles). What the int8 and int4 codecs need (host.codec).
constexpr char kSegmentRolesPath[] = "layout.segment_roles";

std::vector<std::string> SplitRoles(std::string_view list) {
  std::vector<std::string> roles;
  for (absl::string_view r : absl::StrSplit(absl::string_view(list.data(), list.size()), ',')) {
    roles.emplace_back(absl::StripAsciiWhitespace(r));
  }
  return roles;
}

// A cache's or a connector's: exactly one of the two pointers is set until the close.
struct CacheBox {
  std::shared_mutex life_mu;             // shared: a call in progress; exclusive: close
  std::unique_ptr<kvtier::Cache> cache;  // nullptr once closed (written under life_mu exclusive)
  std::unique_ptr<kvtier::Connector> connector;  // the same, for a connector's box
  bool is_connector = false;                     // for messages
  kvtier::BlockLayout layout;                    // a copy, for addresses
  std::mutex reg_mu;                             // guards the three sets
  std::unordered_set<kvtier_lease*> leases;
  std::unordered_set<kvtier_transfer*> transfers;
  std::unordered_set<kvtier_store*> stores;
  std::mutex finished_mu;                 // after life_mu; guards `finished`
  std::deque<kvtier::Finished> finished;  // taken from the connector, not yet handed out

  bool open() const { return cache != nullptr || connector != nullptr; }
};

absl::Status Closed(const char* call) {
  return absl::FailedPreconditionError(absl::StrCat(call, ": the cache is closed"));
}

absl::Status Closed(const char* call, const CacheBox& box) {
  return absl::FailedPreconditionError(
      absl::StrCat(call, ": the ", box.is_connector ? "connector" : "cache", " is closed"));
}

absl::Status SlotAddress(const char* call, const kvtier::BlockLayout& layout, uint32_t slot,
                         uint32_t layer, uint32_t segment, void** address, uint64_t* bytes) {
  if (address == nullptr) return Null(call, "address");
  if (slot >= layout.num_slots) {
    return absl::OutOfRangeError(
        absl::StrCat(call, ": slot ", slot, " vs num_slots=", layout.num_slots));
  }
  if (layer >= layout.layers.size()) {
    return absl::OutOfRangeError(
        absl::StrCat(call, ": layer ", layer, " vs num_layers=", layout.layers.size()));
  }
  const auto& segments = layout.layers[layer].segments;
  if (segment >= segments.size()) {
    return absl::OutOfRangeError(
        absl::StrCat(call, ": segment ", segment, " vs segments=", segments.size()));
  }
  const kvtier::Segment& s = segments[segment];
  *address =
      s.base == nullptr ? nullptr : static_cast<char*>(s.base) + uint64_t{slot} * s.stride_bytes;
  if (bytes != nullptr) *bytes = s.bytes_per_block;
  return absl::OkStatus();
}

// The bytes of a larger (newer) options struct beyond the fields this library knows are all zero.
bool TailIsZero(const kvtier_options* in) {
  const auto* bytes = reinterpret_cast<const unsigned char*>(in);
  for (size_t i = sizeof(kvtier_options); i < in->struct_size; ++i) {
    if (bytes[i] != 0) return false;
  }
  return true;
}

// The values of a struct that reaches the field (version 2), else nullptr.
const kvtier_option_values* ValuesOf(const kvtier_options* in) {
  return in->struct_size >= kOptionsSizeV2 ? in->values : nullptr;
}

absl::Status ToOptions(const kvtier_options* in, kvtier::Options* out) {
  constexpr const char* kCall = "kvtier_cache_create";
  if (in == nullptr) return Null(kCall, "options");
  if (in->struct_size < kOptionsSizeV1) {
    return absl::InvalidArgumentError(absl::StrCat(kCall, ": options.struct_size ", in->struct_size,
                                                   " vs at least ", kOptionsSizeV1,
                                                   " (kvtier_options_init sets it)"));
  }
  // A newer caller's struct: fine if nothing this library does not know about is set.
  if (!TailIsZero(in)) {
    return absl::InvalidArgumentError(absl::StrCat(kCall, ": options.struct_size ", in->struct_size,
                                                   " vs ", sizeof(kvtier_options),
                                                   " known, and a field beyond them is set"));
  }
  const kvtier_options& o = *in;
  const uint64_t num_segments = uint64_t{o.num_layers} * o.segments_per_layer;
  if (num_segments > (1u << 20)) {
    return absl::InvalidArgumentError(
        absl::StrCat(kCall, ": options.num_layers * segments_per_layer = ", num_segments,
                     " vs at most ", 1u << 20));
  }
  if (o.segments == nullptr && num_segments != 0) {
    return absl::InvalidArgumentError(
        absl::StrCat(kCall, ": options.segments is NULL with ", num_segments, " segments"));
  }
  const int64_t backend = EnumValue(o.backend);
  if (backend < KVTIER_BACKEND_AUTO || backend > KVTIER_BACKEND_METADATA_ONLY) {
    return absl::InvalidArgumentError(
        absl::StrCat(kCall, ": options.backend ", backend, " is not a kvtier_backend"));
  }
  kvtier::Options opt;
  opt.layout.tokens_per_block = o.tokens_per_block == 0 ? 16 : o.tokens_per_block;
  opt.layout.num_slots = o.num_slots;
  for (uint32_t l = 0; l < o.num_layers; ++l) {
    kvtier::LayerLayout layer;
    for (uint32_t s = 0; s < o.segments_per_layer; ++s) {
      const kvtier_segment& seg = o.segments[uint64_t{l} * o.segments_per_layer + s];
      layer.segments.push_back(
          {.base = seg.base,
           .bytes_per_block = seg.bytes_per_block,
           .stride_bytes = seg.stride_bytes == 0 ? seg.bytes_per_block : seg.stride_bytes});
    }
    opt.layout.layers.push_back(std::move(layer));
  }
  opt.backend = static_cast<kvtier::DeviceBackend>(backend);
  opt.device.capacity_slots = o.device_capacity_slots;
  if (o.device_policy != nullptr) opt.device.policy = o.device_policy;
  opt.host.capacity_bytes = o.host_capacity_bytes;
  if (o.host_policy != nullptr) opt.host.policy = o.host_policy;
  if (o.disk_directory != nullptr) opt.disk.directory = o.disk_directory;
  opt.disk.capacity_bytes = o.disk_capacity_bytes;
  if (o.disk_files != 0) opt.disk.files = o.disk_files;
  if (o.disk_queue_depth != 0) opt.disk.queue_depth = o.disk_queue_depth;
  if (o.disk_policy != nullptr) opt.disk.policy = o.disk_policy;
  opt.disk.reset_on_mismatch = o.disk_reset_on_mismatch;
  opt.disk.allow_buffered = o.disk_allow_buffered;
  opt.disk.flush_on_close = !o.disk_no_flush_on_close;
  opt.demote_on_evict = !o.drop_on_evict;
  opt.host_write_through = o.host_write_through;
  if (const kvtier_option_values* values = ValuesOf(in); values != nullptr) {
    for (const auto& [path, value] : values->pairs) {
      if (path == kSegmentRolesPath) {  // the layout's, not an Options field: needs the layers
        absl::Status s = opt.layout.SetSegmentRoles(SplitRoles(value), kSegmentRolesPath);
        if (!s.ok()) return s;
        continue;
      }
      // Parsed when set; a failure here would mean the table changed under a live struct.
      if (absl::Status s = kvtier::internal::SetOption(opt, path, value); !s.ok()) return s;
    }
  }
  *out = std::move(opt);
  return absl::OkStatus();
}

void FillTier(const kvtier::TierStats& in, kvtier_tier_stats* out) {
  *out = kvtier_tier_stats{in.capacity_blocks, in.used_blocks, in.pinned_blocks, in.hits,
                           in.inserts,         in.evictions,   in.drops};
}

absl::Status CheckStatsSize(const char* call, const kvtier_stats* stats) {
  if (stats == nullptr) return Null(call, "stats");
  if (stats->struct_size < kStatsSizeV1) {
    return absl::InvalidArgumentError(absl::StrCat(call, ": stats.struct_size ", stats->struct_size,
                                                   " vs at least ", kStatsSizeV1));
  }
  return absl::OkStatus();
}

// Writes the fields of `s` that the caller's struct (stats->struct_size, checked) reaches.
void FillStats(const kvtier::CacheStats& s, kvtier_stats* stats) {
  kvtier_stats o;
  std::memset(&o, 0, sizeof(o));
  o.struct_size = stats->struct_size;
  FillTier(s.device, &o.device);
  FillTier(s.host, &o.host);
  FillTier(s.disk, &o.disk);
  o.match_calls = s.match_calls;
  o.blocks_queried = s.blocks_queried;
  o.blocks_missed = s.blocks_missed;
  o.blocks_loaded = s.blocks_loaded;
  o.blocks_committed = s.blocks_committed;
  o.demotions = s.demotions;
  o.promotions = s.promotions;
  o.bytes_h2d = s.bytes_h2d;
  o.bytes_d2h = s.bytes_d2h;
  o.transfer_failures = s.transfer_failures;
  o.bytes_disk_read = s.bytes_disk_read;
  o.bytes_disk_written = s.bytes_disk_written;
  o.disk_corrupt_reads = s.disk_corrupt_reads;
  o.disk_io_errors = s.disk_io_errors;
  o.disk_recovered_blocks = s.disk_recovered_blocks;
  o.disk_recovery_dropped = s.disk_recovery_dropped;
  o.leases_live = s.leases_live;
  o.transfers_in_flight = s.transfers_in_flight;
  o.disk_buffered_io = s.disk_buffered_io;
  o.hit_ratio = s.HitRatio();
  o.blocks_commit_shared = s.blocks_commit_shared;
  o.blocks_stored = s.blocks_stored;
  o.blocks_store_skipped = s.blocks_store_skipped;
  o.events_dropped = s.events_dropped;
  o.loads_failed = s.loads_failed;
  o.loads_partial = s.loads_partial;
  o.blocks_load_lost = s.blocks_load_lost;
  o.codec_lossy_blocks_loaded = s.codec_lossy_blocks_loaded;
  o.codec_refused_blocks = s.codec_refused_blocks;
  o.codec_lossy_blocks_replaced = s.codec_lossy_blocks_replaced;
  // Only as much as the caller's struct holds (version 1 ends before blocks_commit_shared,
  // version 2 before blocks_stored); a larger tail is left as it is.
  std::memcpy(static_cast<void*>(stats), &o, std::min(stats->struct_size, sizeof(o)));
}

}  // namespace

struct kvtier_hasher {
  kvtier::BlockHasher hasher;
};
struct kvtier_cache {
  std::shared_ptr<CacheBox> box;
};
struct kvtier_match {
  kvtier::MatchResult result;
};
struct kvtier_lease {
  std::shared_ptr<CacheBox> box;
  kvtier::DeviceLease lease;  // empty once released or closed
  bool released = false;
};
struct kvtier_transfer {
  std::shared_ptr<CacheBox> box;
  kvtier::Transfer transfer;  // empty once its cache (or connector) closed
};
struct kvtier_connector {
  std::shared_ptr<CacheBox> box;
};
struct kvtier_store {
  std::shared_ptr<CacheBox> box;
  kvtier::StoreHandle store;  // empty once its connector closed
};

namespace {

// The lease's state check, under box->life_mu (shared).
absl::Status CheckLease(const char* call, const kvtier_lease* lease) {
  if (lease->box->cache == nullptr) return Closed(call);
  if (lease->released) {
    return absl::FailedPreconditionError(absl::StrCat(call, ": the lease was released"));
  }
  return absl::OkStatus();
}

// The calls on one lease of a cache: Guard, NULL cache or lease, a lease of another cache, then
// `fn(cache, lease)` under the life lock (shared) once CheckLease passed.
template <typename Fn>
kvtier_status OnLease(const char* call, kvtier_cache* cache, kvtier_lease* lease, Fn&& fn) {
  return Guard([&]() -> absl::Status {
    if (cache == nullptr) return Null(call, "cache");
    if (lease == nullptr) return Null(call, "lease");
    if (lease->box != cache->box) {
      return absl::FailedPreconditionError(absl::StrCat(call, ": the lease is another cache's"));
    }
    std::shared_lock life(cache->box->life_mu);
    if (absl::Status s = CheckLease(call, lease); !s.ok()) return s;
    return fn(*cache->box->cache, *lease);
  });
}

absl::Status CheckTransfer(const char* call, const kvtier_transfer* t) {
  if (t == nullptr) return Null(call, "transfer");
  if (!t->box->open()) return Closed(call, *t->box);
  return absl::OkStatus();
}

// One call on a transfer or store handle: no exception leaves (Guard); a NULL handle is
// INVALID_ARGUMENT (`name` says which); under the box's life lock (so close waits for it) a closed
// box is FAILED_PRECONDITION; then fn(handle) answers.
template <typename Handle, typename Fn>
kvtier_status OnHandle(const char* call, Handle* h, const char* name, Fn fn) {
  return Guard([&]() -> absl::Status {
    if (h == nullptr) return Null(call, name);
    std::shared_lock life(h->box->life_mu);
    if (!h->box->open()) return Closed(call, *h->box);
    return fn(*h);
  });
}
}  // namespace

namespace {

void ToC(const kvtier::ManageResult& r, kvtier_manage_result* out) {
  *out = kvtier_manage_result{r.done, r.not_found, r.busy, r.kept_for_children};
}

// A duration in milliseconds as the C++ API takes it (beyond int64: infinite, rejected there).
absl::Duration FromMillis(uint64_t ms) {
  return ms > static_cast<uint64_t>(INT64_MAX) ? absl::InfiniteDuration()
                                               : absl::Milliseconds(static_cast<int64_t>(ms));
}

// kvtier_cache_remove, _pin and _unpin: `call` on the copied keys, its result into *result.
template <typename F>
kvtier_status ManageKeys(const char* call, kvtier_cache* cache, const kvtier_block_key* keys,
                         size_t num_keys, kvtier_manage_result* result, F op) {
  return Guard([&]() -> absl::Status {
    if (cache == nullptr) return Null(call, "cache");
    if (result == nullptr) return Null(call, "result");
    std::vector<BlockKey> k;
    if (absl::Status s = CopyKeys(call, keys, num_keys, &k); !s.ok()) return s;
    std::shared_lock life(cache->box->life_mu);
    if (cache->box->cache == nullptr) return Closed(call);
    absl::StatusOr<kvtier::ManageResult> r = op(*cache->box->cache, k);
    if (!r.ok()) return r.status();
    ToC(*r, result);
    return absl::OkStatus();
  });
}

}  // namespace

extern "C" {

const char* kvtier_last_error(void) { return t_last_error; }

const char* kvtier_status_name(kvtier_status status) {
  const int64_t value = EnumValue(status);
  if (value < KVTIER_OK || value > KVTIER_UNAUTHENTICATED) return "UNKNOWN_CODE";
  switch (status) {
    case KVTIER_OK:
      return "OK";
    case KVTIER_CANCELLED:
      return "CANCELLED";
    case KVTIER_UNKNOWN:
      return "UNKNOWN";
    case KVTIER_INVALID_ARGUMENT:
      return "INVALID_ARGUMENT";
    case KVTIER_DEADLINE_EXCEEDED:
      return "DEADLINE_EXCEEDED";
    case KVTIER_NOT_FOUND:
      return "NOT_FOUND";
    case KVTIER_ALREADY_EXISTS:
      return "ALREADY_EXISTS";
    case KVTIER_PERMISSION_DENIED:
      return "PERMISSION_DENIED";
    case KVTIER_RESOURCE_EXHAUSTED:
      return "RESOURCE_EXHAUSTED";
    case KVTIER_FAILED_PRECONDITION:
      return "FAILED_PRECONDITION";
    case KVTIER_ABORTED:
      return "ABORTED";
    case KVTIER_OUT_OF_RANGE:
      return "OUT_OF_RANGE";
    case KVTIER_UNIMPLEMENTED:
      return "UNIMPLEMENTED";
    case KVTIER_INTERNAL:
      return "INTERNAL";
    case KVTIER_UNAVAILABLE:
      return "UNAVAILABLE";
    case KVTIER_DATA_LOSS:
      return "DATA_LOSS";
    case KVTIER_UNAUTHENTICATED:
      return "UNAUTHENTICATED";
  }
  return "UNKNOWN_CODE";
}

// ---- hasher ----

kvtier_status kvtier_hasher_create(const char* model_id, const char* lora_id, const char* tenant,
                                   kvtier_hasher** out) {
  return Guard([&]() -> absl::Status {
    if (out == nullptr) return Null("kvtier_hasher_create", "out");
    *out = nullptr;
    *out = new kvtier_hasher{
        kvtier::BlockHasher(kvtier::NamespaceSalt{.model_id = model_id == nullptr ? "" : model_id,
                                                  .lora_id = lora_id == nullptr ? "" : lora_id,
                                                  .tenant = tenant == nullptr ? "" : tenant})};
    return absl::OkStatus();
  });
}

void kvtier_hasher_destroy(kvtier_hasher* hasher) { delete hasher; }

kvtier_status kvtier_hasher_chain(const kvtier_hasher* hasher, const kvtier_block_key* parent,
                                  const int32_t* tokens, size_t num_tokens, kvtier_block_key* out) {
  return Guard([&]() -> absl::Status {
    constexpr const char* kCall = "kvtier_hasher_chain";
    if (hasher == nullptr) return Null(kCall, "hasher");
    if (out == nullptr) return Null(kCall, "out");
    if (tokens == nullptr && num_tokens != 0) {
      return absl::InvalidArgumentError(
          absl::StrCat(kCall, ": tokens is NULL with num_tokens=", num_tokens));
    }
    const BlockKey p = parent == nullptr ? kvtier::kRootKey : FromC(*parent);
    *out = ToC(hasher->hasher.Chain(p, std::span<const int32_t>(tokens, num_tokens)));
    return absl::OkStatus();
  });
}

kvtier_status kvtier_hasher_chain_tokens(const kvtier_hasher* hasher, const int32_t* tokens,
                                         size_t num_tokens, uint32_t tokens_per_block,
                                         kvtier_block_key* keys, size_t keys_capacity,
                                         size_t* num_keys) {
  return Guard([&]() -> absl::Status {
    constexpr const char* kCall = "kvtier_hasher_chain_tokens";
    if (hasher == nullptr) return Null(kCall, "hasher");
    if (num_keys == nullptr) return Null(kCall, "num_keys");
    *num_keys = 0;
    if (tokens == nullptr && num_tokens != 0) {
      return absl::InvalidArgumentError(
          absl::StrCat(kCall, ": tokens is NULL with num_tokens=", num_tokens));
    }
    if (keys == nullptr && keys_capacity != 0) {
      return absl::InvalidArgumentError(
          absl::StrCat(kCall, ": keys is NULL with keys_capacity=", keys_capacity));
    }
    if (tokens_per_block == 0) {
      return absl::InvalidArgumentError(absl::StrCat(kCall, ": tokens_per_block is 0"));
    }
    if (num_tokens % tokens_per_block != 0) {
      return absl::InvalidArgumentError(
          absl::StrCat(kCall, ": ", num_tokens,
                       " tokens is not a multiple of tokens_per_block=", tokens_per_block));
    }
    const size_t needed = num_tokens / tokens_per_block;
    *num_keys = needed;
    if (keys_capacity < needed) {
      return absl::OutOfRangeError(
          absl::StrCat(kCall, ": keys_capacity ", keys_capacity, " vs ", needed, " blocks"));
    }
    BlockKey parent = kvtier::kRootKey;
    for (size_t b = 0; b < needed; ++b) {
      parent = hasher->hasher.Chain(
          parent, std::span<const int32_t>(tokens + b * tokens_per_block, tokens_per_block));
      keys[b] = ToC(parent);
    }
    return absl::OkStatus();
  });
}

// ---- options, create, close ----

void kvtier_options_init(kvtier_options* options) {
  if (options == nullptr) return;
  std::memset(options, 0, sizeof(*options));
  options->struct_size = sizeof(*options);
}

kvtier_status kvtier_options_set(kvtier_options* options, const char* path, const char* value) {
  return Guard([&]() -> absl::Status {
    constexpr const char* kCall = "kvtier_options_set";
    if (options == nullptr) return Null(kCall, "options");
    if (path == nullptr) return Null(kCall, "path");
    if (value == nullptr) return Null(kCall, "value");
    if (options->struct_size < kOptionsSizeV2) {
      return absl::InvalidArgumentError(
          absl::StrCat(kCall, ": options.struct_size ", options->struct_size, " vs at least ",
                       kOptionsSizeV2, " (a version-1 struct has no values; kvtier_options_init)"));
    }
    // Parse now, against defaults, so the error comes from the call that made it.
    if (std::string_view(path) == std::string_view(kSegmentRolesPath)) {
      // The roles' names now; their count against the layout's segments at create.
      const std::vector<std::string> roles = SplitRoles(value);
      kvtier::BlockLayout one_layer;
      one_layer.layers.resize(1);
      one_layer.layers[0].segments.resize(roles.size());
      if (absl::Status s = one_layer.SetSegmentRoles(roles, kSegmentRolesPath); !s.ok()) return s;
    } else {
      kvtier::Options scratch;
      if (absl::Status s = kvtier::internal::SetOption(scratch, path, value); !s.ok()) return s;
    }
    if (options->values == nullptr) options->values = new kvtier_option_values;
    auto& pairs = options->values->pairs;
    auto it =
        std::find_if(pairs.begin(), pairs.end(), [&](const auto& p) { return p.first == path; });
    if (it != pairs.end()) {
      it->second = value;
    } else {
      pairs.emplace_back(path, value);
    }
    return absl::OkStatus();
  });
}

void kvtier_options_free_values(kvtier_options* options) {
  if (options == nullptr || options->struct_size < kOptionsSizeV2) return;
  delete options->values;
  options->values = nullptr;
}

kvtier_status kvtier_cache_create(const kvtier_options* options, kvtier_cache** out) {
  return Guard([&]() -> absl::Status {
    if (out == nullptr) return Null("kvtier_cache_create", "out");
    *out = nullptr;
    kvtier::Options opt;
    if (absl::Status s = ToOptions(options, &opt); !s.ok()) return s;
    auto cache = kvtier::Cache::Create(opt);
    if (!cache.ok()) return cache.status();
    auto box = std::make_shared<CacheBox>();
    box->layout = opt.layout;
    box->cache = std::move(*cache);
    *out = new kvtier_cache{std::move(box)};
    return absl::OkStatus();
  });
}

kvtier_status kvtier_cache_open(const kvtier_options* options, const char* directory,
                                uint64_t disk_capacity_bytes, kvtier_cache** out) {
  if (options == nullptr || directory == nullptr) {
    if (out != nullptr) *out = nullptr;
    return Record(KVTIER_INVALID_ARGUMENT, options == nullptr
                                               ? "kvtier_cache_open: options is NULL"
                                               : "kvtier_cache_open: directory is NULL");
  }
  // A struct create would reject (too small, or a newer caller's field set): let it say why.
  if (options->struct_size < kOptionsSizeV1 || !TailIsZero(options)) {
    return kvtier_cache_create(options, out);
  }
  // The fields this library knows that the caller's struct reaches (a version-1 struct has no
  // `values`: copying sizeof(kvtier_options) bytes would read past it); the rest stay zero.
  kvtier_options copy;
  std::memset(&copy, 0, sizeof(copy));
  std::memcpy(&copy, options, std::min(options->struct_size, sizeof(copy)));
  copy.struct_size = sizeof(copy);
  if (options->struct_size < kOptionsSizeV2) copy.values = nullptr;
  copy.disk_directory = directory;
  copy.disk_capacity_bytes = disk_capacity_bytes;
  return kvtier_cache_create(&copy, out);
}

kvtier_status kvtier_cache_close(kvtier_cache* cache) {
  return Guard([&]() -> absl::Status {
    if (cache == nullptr) return Null("kvtier_cache_close", "cache");
    CacheBox& box = *cache->box;
    std::unique_lock life(box.life_mu);
    if (box.cache == nullptr) return absl::OkStatus();
    {
      std::lock_guard reg(box.reg_mu);
      for (kvtier_transfer* t : box.transfers) t->transfer = kvtier::Transfer();  // waits
      for (kvtier_lease* l : box.leases) l->lease = kvtier::DeviceLease();        // releases
    }
    box.cache.reset();
    return absl::OkStatus();
  });
}

void kvtier_cache_destroy(kvtier_cache* cache) {
  if (cache == nullptr) return;
  const kvtier_status saved = kvtier_cache_close(cache);
  (void)saved;
  delete cache;
}

kvtier_status kvtier_cache_block_bytes(const kvtier_cache* cache, uint64_t* bytes) {
  return Guard([&]() -> absl::Status {
    if (cache == nullptr) return Null("kvtier_cache_block_bytes", "cache");
    if (bytes == nullptr) return Null("kvtier_cache_block_bytes", "bytes");
    std::shared_lock life(cache->box->life_mu);
    if (cache->box->cache == nullptr) return Closed("kvtier_cache_block_bytes");
    *bytes = cache->box->layout.block_bytes();
    return absl::OkStatus();
  });
}

kvtier_status kvtier_cache_slot_address(const kvtier_cache* cache, uint32_t slot, uint32_t layer,
                                        uint32_t segment, void** address, uint64_t* bytes) {
  return Guard([&]() -> absl::Status {
    constexpr const char* kCall = "kvtier_cache_slot_address";
    if (cache == nullptr) return Null(kCall, "cache");
    std::shared_lock life(cache->box->life_mu);
    if (cache->box->cache == nullptr) return Closed(kCall);
    return SlotAddress(kCall, cache->box->layout, slot, layer, segment, address, bytes);
  });
}

// ---- match ----

kvtier_status kvtier_cache_match(kvtier_cache* cache, const kvtier_block_key* keys, size_t num_keys,
                                 kvtier_match** out) {
  return Guard([&]() -> absl::Status {
    constexpr const char* kCall = "kvtier_cache_match";
    if (cache == nullptr) return Null(kCall, "cache");
    if (out == nullptr) return Null(kCall, "out");
    *out = nullptr;
    std::vector<BlockKey> k;
    if (absl::Status s = CopyKeys(kCall, keys, num_keys, &k); !s.ok()) return s;
    std::shared_lock life(cache->box->life_mu);
    if (cache->box->cache == nullptr) return Closed(kCall);
    auto match = cache->box->cache->Match(k);
    if (!match.ok()) return match.status();
    *out = new kvtier_match{std::move(*match)};
    return absl::OkStatus();
  });
}

kvtier_status kvtier_match_size(const kvtier_match* match, uint32_t* size) {
  return Guard([&]() -> absl::Status {
    if (match == nullptr) return Null("kvtier_match_size", "match");
    if (size == nullptr) return Null("kvtier_match_size", "size");
    *size = match->result.size();
    return absl::OkStatus();
  });
}

kvtier_status kvtier_match_tiers(const kvtier_match* match, kvtier_tier* tiers, size_t capacity) {
  return Guard([&]() -> absl::Status {
    constexpr const char* kCall = "kvtier_match_tiers";
    if (match == nullptr) return Null(kCall, "match");
    const size_t n = match->result.tiers.size();
    if (tiers == nullptr && capacity != 0) {
      return absl::InvalidArgumentError(
          absl::StrCat(kCall, ": tiers is NULL with capacity=", capacity));
    }
    if (capacity < n) {
      return absl::OutOfRangeError(
          absl::StrCat(kCall, ": capacity ", capacity, " vs ", n, " blocks"));
    }
    for (size_t i = 0; i < n; ++i) tiers[i] = static_cast<kvtier_tier>(match->result.tiers[i]);
    return absl::OkStatus();
  });
}

kvtier_status kvtier_match_blocks_in(const kvtier_match* match, kvtier_tier tier, uint32_t* count) {
  return Guard([&]() -> absl::Status {
    constexpr const char* kCall = "kvtier_match_blocks_in";
    if (match == nullptr) return Null(kCall, "match");
    if (count == nullptr) return Null(kCall, "count");
    const int64_t value = EnumValue(tier);
    if (value < KVTIER_TIER_DEVICE || value > KVTIER_TIER_REMOTE) {
      return absl::InvalidArgumentError(
          absl::StrCat(kCall, ": tier ", value, " is not a kvtier_tier"));
    }
    *count = match->result.blocks_in(static_cast<kvtier::Tier>(value));
    return absl::OkStatus();
  });
}

void kvtier_match_destroy(kvtier_match* match) { delete match; }

// ---- leases ----

}  // extern "C": the helpers below are C++ (they return absl types)

namespace {

// kvtier_cache_allocate_device (without_match: no match) and kvtier_cache_allocate_for_match.
kvtier_status Allocate(const char* call, kvtier_cache* cache, const kvtier_match* match, uint32_t n,
                       kvtier_lease** out, bool without_match) {
  return Guard([&]() -> absl::Status {
    const char* const kCall = call;
    if (cache == nullptr) return Null(kCall, "cache");
    if (match == nullptr && !without_match) return Null(kCall, "match");
    if (out == nullptr) return Null(kCall, "out");
    *out = nullptr;
    auto handle = std::make_unique<kvtier_lease>();
    handle->box = cache->box;
    std::shared_lock life(cache->box->life_mu);
    if (cache->box->cache == nullptr) return Closed(kCall);
    auto lease = match != nullptr ? cache->box->cache->AllocateDevice(match->result, n)
                                  : cache->box->cache->AllocateDevice(n);
    if (!lease.ok()) return lease.status();
    handle->lease = std::move(*lease);
    {
      std::lock_guard reg(cache->box->reg_mu);
      cache->box->leases.insert(handle.get());
    }
    *out = handle.release();
    return absl::OkStatus();
  });
}

}  // namespace

extern "C" {

kvtier_status kvtier_cache_allocate_device(kvtier_cache* cache, uint32_t n, kvtier_lease** out) {
  return Allocate("kvtier_cache_allocate_device", cache, nullptr, n, out, /*without_match=*/true);
}

kvtier_status kvtier_cache_allocate_for_match(kvtier_cache* cache, const kvtier_match* match,
                                              uint32_t n, kvtier_lease** out) {
  return Allocate("kvtier_cache_allocate_for_match", cache, match, n, out, /*without_match=*/false);
}

kvtier_status kvtier_cache_grow(kvtier_cache* cache, kvtier_lease* lease, uint32_t n) {
  return OnLease("kvtier_cache_grow", cache, lease,
                 [&](kvtier::Cache& c, kvtier_lease& l) { return c.Grow(l.lease, n); });
}

kvtier_status kvtier_lease_size(const kvtier_lease* lease, uint32_t* size) {
  return Guard([&]() -> absl::Status {
    if (lease == nullptr) return Null("kvtier_lease_size", "lease");
    if (size == nullptr) return Null("kvtier_lease_size", "size");
    std::shared_lock life(lease->box->life_mu);
    if (absl::Status s = CheckLease("kvtier_lease_size", lease); !s.ok()) return s;
    *size = lease->lease.size();
    return absl::OkStatus();
  });
}

kvtier_status kvtier_lease_shared(const kvtier_lease* lease, uint32_t* shared) {
  return Guard([&]() -> absl::Status {
    if (lease == nullptr) return Null("kvtier_lease_shared", "lease");
    if (shared == nullptr) return Null("kvtier_lease_shared", "shared");
    std::shared_lock life(lease->box->life_mu);
    if (absl::Status s = CheckLease("kvtier_lease_shared", lease); !s.ok()) return s;
    *shared = lease->lease.shared();
    return absl::OkStatus();
  });
}

kvtier_status kvtier_lease_slots(const kvtier_lease* lease, uint32_t* slots, size_t capacity) {
  return Guard([&]() -> absl::Status {
    constexpr const char* kCall = "kvtier_lease_slots";
    if (lease == nullptr) return Null(kCall, "lease");
    if (slots == nullptr && capacity != 0) {
      return absl::InvalidArgumentError(
          absl::StrCat(kCall, ": slots is NULL with capacity=", capacity));
    }
    std::shared_lock life(lease->box->life_mu);
    if (absl::Status s = CheckLease(kCall, lease); !s.ok()) return s;
    const auto s = lease->lease.slots();
    if (capacity < s.size()) {
      return absl::OutOfRangeError(
          absl::StrCat(kCall, ": capacity ", capacity, " vs ", s.size(), " slots"));
    }
    std::copy(s.begin(), s.end(), slots);
    return absl::OkStatus();
  });
}

kvtier_status kvtier_lease_block_address(const kvtier_lease* lease, uint32_t block, uint32_t layer,
                                         uint32_t segment, void** address, uint64_t* bytes) {
  return Guard([&]() -> absl::Status {
    constexpr const char* kCall = "kvtier_lease_block_address";
    if (lease == nullptr) return Null(kCall, "lease");
    std::shared_lock life(lease->box->life_mu);
    if (absl::Status s = CheckLease(kCall, lease); !s.ok()) return s;
    const auto slots = lease->lease.slots();
    if (block >= slots.size()) {
      return absl::OutOfRangeError(
          absl::StrCat(kCall, ": block ", block, " vs lease size ", slots.size()));
    }
    return SlotAddress(kCall, lease->box->layout, slots[block], layer, segment, address, bytes);
  });
}

kvtier_status kvtier_cache_load(kvtier_cache* cache, const kvtier_match* match, kvtier_lease* lease,
                                kvtier_transfer** out) {
  return Guard([&]() -> absl::Status {
    constexpr const char* kCall = "kvtier_cache_load";
    if (cache == nullptr) return Null(kCall, "cache");
    if (match == nullptr) return Null(kCall, "match");
    if (lease == nullptr) return Null(kCall, "lease");
    if (out == nullptr) return Null(kCall, "out");
    *out = nullptr;
    if (lease->box != cache->box) {
      return absl::FailedPreconditionError(absl::StrCat(kCall, ": the lease is another cache's"));
    }
    auto handle = std::make_unique<kvtier_transfer>();
    handle->box = cache->box;
    std::shared_lock life(cache->box->life_mu);
    if (absl::Status s = CheckLease(kCall, lease); !s.ok()) return s;
    auto xfer = cache->box->cache->Load(match->result, lease->lease);
    if (!xfer.ok()) return xfer.status();
    handle->transfer = std::move(*xfer);
    {
      std::lock_guard reg(cache->box->reg_mu);
      cache->box->transfers.insert(handle.get());
    }
    *out = handle.release();
    return absl::OkStatus();
  });
}

kvtier_status kvtier_cache_commit(kvtier_cache* cache, const kvtier_block_key* keys,
                                  size_t num_keys, kvtier_lease* lease) {
  return Guard([&]() -> absl::Status {
    constexpr const char* kCall = "kvtier_cache_commit";
    if (cache == nullptr) return Null(kCall, "cache");
    if (lease == nullptr) return Null(kCall, "lease");
    if (lease->box != cache->box) {
      return absl::FailedPreconditionError(absl::StrCat(kCall, ": the lease is another cache's"));
    }
    std::vector<BlockKey> k;
    if (absl::Status s = CopyKeys(kCall, keys, num_keys, &k); !s.ok()) return s;
    std::shared_lock life(cache->box->life_mu);
    if (absl::Status s = CheckLease(kCall, lease); !s.ok()) return s;
    return cache->box->cache->Commit(k, lease->lease);
  });
}

kvtier_status kvtier_lease_set_tenant(kvtier_cache* cache, kvtier_lease* lease,
                                      const char* tenant) {
  return OnLease("kvtier_lease_set_tenant", cache, lease, [&](kvtier::Cache& c, kvtier_lease& l) {
    return c.SetTenant(l.lease, tenant == nullptr ? "" : tenant);
  });
}

kvtier_status kvtier_cache_release(kvtier_cache* cache, kvtier_lease* lease) {
  return OnLease("kvtier_cache_release", cache, lease, [](kvtier::Cache& c, kvtier_lease& l) {
    l.released = true;
    return c.Release(l.lease);
  });
}

void kvtier_lease_destroy(kvtier_lease* lease) {
  if (lease == nullptr) return;
  try {
    std::shared_lock life(lease->box->life_mu);
    {
      std::lock_guard reg(lease->box->reg_mu);
      lease->box->leases.erase(lease);
    }
    lease->lease = kvtier::DeviceLease();  // empty already if the cache is closed
  } catch (...) {
    // Only the locks can throw (system_error); the handle is freed regardless.
  }
  delete lease;
}

kvtier_status kvtier_cache_hint(kvtier_cache* cache, const kvtier_block_key* keys,
                                const double* scores, size_t num_keys) {
  return Guard([&]() -> absl::Status {
    constexpr const char* kCall = "kvtier_cache_hint";
    if (cache == nullptr) return Null(kCall, "cache");
    if (scores == nullptr && num_keys != 0) {
      return absl::InvalidArgumentError(
          absl::StrCat(kCall, ": scores is NULL with num_keys=", num_keys));
    }
    std::vector<BlockKey> k;
    if (absl::Status s = CopyKeys(kCall, keys, num_keys, &k); !s.ok()) return s;
    std::shared_lock life(cache->box->life_mu);
    if (cache->box->cache == nullptr) return Closed(kCall);
    return cache->box->cache->Hint(k, std::span<const double>(scores, num_keys));
  });
}

kvtier_status kvtier_cache_remove(kvtier_cache* cache, const kvtier_block_key* keys,
                                  size_t num_keys, kvtier_manage_result* result) {
  return ManageKeys("kvtier_cache_remove", cache, keys, num_keys, result,
                    [](kvtier::Cache& c, const std::vector<BlockKey>& k) { return c.Remove(k); });
}

kvtier_status kvtier_cache_pin(kvtier_cache* cache, const kvtier_block_key* keys, size_t num_keys,
                               uint64_t duration_ms, kvtier_manage_result* result) {
  return ManageKeys("kvtier_cache_pin", cache, keys, num_keys, result,
                    [duration_ms](kvtier::Cache& c, const std::vector<BlockKey>& k) {
                      return c.Pin(k, FromMillis(duration_ms));
                    });
}

kvtier_status kvtier_cache_unpin(kvtier_cache* cache, const kvtier_block_key* keys, size_t num_keys,
                                 kvtier_manage_result* result) {
  return ManageKeys("kvtier_cache_unpin", cache, keys, num_keys, result,
                    [](kvtier::Cache& c, const std::vector<BlockKey>& k) { return c.Unpin(k); });
}

kvtier_status kvtier_cache_clear(kvtier_cache* cache, kvtier_tier tier,
                                 kvtier_manage_result* result) {
  return Guard([&]() -> absl::Status {
    constexpr const char* kCall = "kvtier_cache_clear";
    if (cache == nullptr) return Null(kCall, "cache");
    if (result == nullptr) return Null(kCall, "result");
    const int64_t t = EnumValue(tier);
    if (t < KVTIER_TIER_DEVICE || t > KVTIER_TIER_DISK) {
      return absl::InvalidArgumentError(
          absl::StrCat(kCall, ": tier ", t, " is not a kvtier_tier (device, host or disk)"));
    }
    std::shared_lock life(cache->box->life_mu);
    if (cache->box->cache == nullptr) return Closed(kCall);
    absl::StatusOr<kvtier::ManageResult> r = cache->box->cache->Clear(static_cast<kvtier::Tier>(t));
    if (!r.ok()) return r.status();
    ToC(*r, result);
    return absl::OkStatus();
  });
}

kvtier_status kvtier_cache_hint_for(kvtier_cache* cache, const kvtier_block_key* keys,
                                    const double* scores, size_t num_keys, uint64_t duration_ms) {
  return Guard([&]() -> absl::Status {
    constexpr const char* kCall = "kvtier_cache_hint_for";
    if (cache == nullptr) return Null(kCall, "cache");
    if (scores == nullptr && num_keys != 0) {
      return absl::InvalidArgumentError(
          absl::StrCat(kCall, ": scores is NULL with num_keys=", num_keys));
    }
    std::vector<BlockKey> k;
    if (absl::Status s = CopyKeys(kCall, keys, num_keys, &k); !s.ok()) return s;
    std::shared_lock life(cache->box->life_mu);
    if (cache->box->cache == nullptr) return Closed(kCall);
    return cache->box->cache->Hint(k, std::span<const double>(scores, num_keys),
                                   FromMillis(duration_ms));
  });
}

kvtier_status kvtier_cache_prefetch(kvtier_cache* cache, const kvtier_block_key* keys,
                                    size_t num_keys, kvtier_transfer** out) {
  return Guard([&]() -> absl::Status {
    constexpr const char* kCall = "kvtier_cache_prefetch";
    if (cache == nullptr) return Null(kCall, "cache");
    if (out == nullptr) return Null(kCall, "out");
    *out = nullptr;
    std::vector<BlockKey> k;
    if (absl::Status s = CopyKeys(kCall, keys, num_keys, &k); !s.ok()) return s;
    auto handle = std::make_unique<kvtier_transfer>();
    handle->box = cache->box;
    std::shared_lock life(cache->box->life_mu);
    if (cache->box->cache == nullptr) return Closed(kCall);
    auto xfer = cache->box->cache->Prefetch(k);
    if (!xfer.ok()) return xfer.status();
    handle->transfer = std::move(*xfer);
    {
      std::lock_guard reg(cache->box->reg_mu);
      cache->box->transfers.insert(handle.get());
    }
    *out = handle.release();
    return absl::OkStatus();
  });
}

kvtier_status kvtier_cache_take_events(kvtier_cache* cache, kvtier_event* events, size_t capacity,
                                       size_t* num_events) {
  return Guard([&]() -> absl::Status {
    constexpr const char* kCall = "kvtier_cache_take_events";
    if (cache == nullptr) return Null(kCall, "cache");
    if (num_events == nullptr) return Null(kCall, "num_events");
    *num_events = 0;
    if (events == nullptr && capacity != 0) {
      return absl::InvalidArgumentError(
          absl::StrCat(kCall, ": events is NULL with capacity=", capacity));
    }
    std::shared_lock life(cache->box->life_mu);
    if (cache->box->cache == nullptr) return Closed(kCall);
    if (capacity == 0) return absl::OkStatus();
    const std::vector<kvtier::KvEvent> taken = cache->box->cache->TakeEvents(capacity);
    for (size_t i = 0; i < taken.size(); ++i) {
      const kvtier::KvEvent& e = taken[i];
      events[i] = kvtier_event{.seq = e.seq,
                               .type = static_cast<kvtier_event_type>(e.type),
                               .tier = static_cast<kvtier_tier>(e.tier),
                               .tokens_per_block = e.tokens_per_block,
                               .key = ToC(e.key),
                               .parent = ToC(e.parent)};
    }
    *num_events = taken.size();
    return absl::OkStatus();
  });
}

kvtier_status kvtier_cache_stats(const kvtier_cache* cache, kvtier_stats* stats) {
  return Guard([&]() -> absl::Status {
    constexpr const char* kCall = "kvtier_cache_stats";
    if (cache == nullptr) return Null(kCall, "cache");
    if (absl::Status s = CheckStatsSize(kCall, stats); !s.ok()) return s;
    std::shared_lock life(cache->box->life_mu);
    if (cache->box->cache == nullptr) return Closed(kCall);
    FillStats(cache->box->cache->Stats(), stats);
    return absl::OkStatus();
  });
}

kvtier_status kvtier_cache_check_invariants(const kvtier_cache* cache) {
  return Guard([&]() -> absl::Status {
    if (cache == nullptr) return Null("kvtier_cache_check_invariants", "cache");
    std::shared_lock life(cache->box->life_mu);
    if (cache->box->cache == nullptr) return Closed("kvtier_cache_check_invariants");
    return cache->box->cache->CheckInvariants();
  });
}

// ---- transfers ----

kvtier_status kvtier_transfer_blocks(const kvtier_transfer* transfer, uint32_t* blocks,
                                     uint32_t* blocks_promoted) {
  return OnHandle("kvtier_transfer_blocks", transfer, "transfer", [&](auto& x) -> absl::Status {
    if (blocks != nullptr) *blocks = x.transfer.blocks();
    if (blocks_promoted != nullptr) *blocks_promoted = x.transfer.blocks_promoted();
    return absl::OkStatus();
  });
}

kvtier_status kvtier_transfer_blocks_loaded(const kvtier_transfer* transfer,
                                            uint32_t* blocks_loaded) {
  return OnHandle("kvtier_transfer_blocks_loaded", transfer, "transfer",
                  [&](auto& x) -> absl::Status {
                    if (blocks_loaded == nullptr) {
                      return Null("kvtier_transfer_blocks_loaded", "blocks_loaded");
                    }
                    *blocks_loaded = x.transfer.blocks_loaded();
                    return absl::OkStatus();
                  });
}

kvtier_status kvtier_transfer_poll(const kvtier_transfer* transfer, bool* done) {
  return OnHandle("kvtier_transfer_poll", transfer, "transfer", [&](auto& x) -> absl::Status {
    if (done == nullptr) return Null("kvtier_transfer_poll", "done");
    *done = x.transfer.Poll();
    return absl::OkStatus();
  });
}

kvtier_status kvtier_transfer_wait(kvtier_transfer* transfer) {
  return OnHandle("kvtier_transfer_wait", transfer, "transfer",
                  [&](auto& x) -> absl::Status { return x.transfer.Wait(); });
}

kvtier_status kvtier_transfer_wait_layer(kvtier_transfer* transfer, uint32_t layer) {
  return OnHandle("kvtier_transfer_wait_layer", transfer, "transfer",
                  [&](auto& x) -> absl::Status { return x.transfer.WaitLayer(layer); });
}

kvtier_status kvtier_transfer_status(const kvtier_transfer* transfer) {
  return OnHandle("kvtier_transfer_status", transfer, "transfer",
                  [&](auto& x) -> absl::Status { return x.transfer.status(); });
}

kvtier_status kvtier_transfer_layer_ready_event(const kvtier_transfer* transfer, uint32_t layer,
                                                void** event) {
  return Guard([&]() -> absl::Status {
    constexpr const char* kCall = "kvtier_transfer_layer_ready_event";
    if (transfer == nullptr) return Null(kCall, "transfer");
    if (event == nullptr) return Null(kCall, "event");
    *event = nullptr;
    std::shared_lock life(transfer->box->life_mu);
    if (absl::Status s = CheckTransfer(kCall, transfer); !s.ok()) return s;
    auto e = transfer->transfer.LayerReadyEvent(layer);
    if (!e.ok()) return e.status();
    *event = *e;
    return absl::OkStatus();
  });
}

void kvtier_transfer_destroy(kvtier_transfer* transfer) {
  if (transfer == nullptr) return;
  try {
    std::shared_lock life(transfer->box->life_mu);
    {
      std::lock_guard reg(transfer->box->reg_mu);
      transfer->box->transfers.erase(transfer);
    }
    transfer->transfer = kvtier::Transfer();  // waits, as ~Transfer does
  } catch (...) {
  }
  delete transfer;
}

// ---- connector mode ----

}  // extern "C"

// Helpers outside extern "C": C linkage would apply to them too, unnamed namespace or not
// (clang: -Wreturn-type-c-linkage for their C++ return types).
namespace {

absl::Status CheckBlockIds(const char* call, const char* what, const uint32_t* blocks, size_t n) {
  if (blocks == nullptr && n != 0) {
    return absl::InvalidArgumentError(
        absl::StrCat(call, ": ", what, " is NULL with ", n, " blocks"));
  }
  return absl::OkStatus();
}

// The connector of `c`, under c->box->life_mu (shared): kFailedPrecondition once closed.
absl::StatusOr<kvtier::Connector*> Open(const char* call, const kvtier_connector* c) {
  if (c->box->connector == nullptr) return Closed(call, *c->box);
  return c->box->connector.get();
}

// kvtier_connector_store (save_all: with ready_event) and kvtier_connector_begin_store.
kvtier_status StartStore(const char* call, kvtier_connector* connector,
                         const kvtier_block_key* keys, size_t num_keys, uint32_t first,
                         const uint32_t* src_blocks, size_t num_src, bool save_all,
                         void* ready_event, uint64_t request_id, kvtier_store** out) {
  return Guard([&]() -> absl::Status {
    if (connector == nullptr) return Null(call, "connector");
    if (out == nullptr) return Null(call, "out");
    *out = nullptr;
    std::vector<BlockKey> k;
    if (absl::Status s = CopyKeys(call, keys, num_keys, &k); !s.ok()) return s;
    if (absl::Status s = CheckBlockIds(call, "src_blocks", src_blocks, num_src); !s.ok()) return s;
    auto handle = std::make_unique<kvtier_store>();
    handle->box = connector->box;
    std::shared_lock life(connector->box->life_mu);
    auto c = Open(call, connector);
    if (!c.ok()) return c.status();
    const std::span<const uint32_t> src(src_blocks, num_src);
    auto store = save_all ? (*c)->Store(k, first, src, ready_event, request_id)
                          : (*c)->BeginStore(k, first, src, request_id);
    if (!store.ok()) return store.status();
    handle->store = std::move(*store);
    {
      std::lock_guard reg(connector->box->reg_mu);
      connector->box->stores.insert(handle.get());
    }
    *out = handle.release();
    return absl::OkStatus();
  });
}

}  // namespace

extern "C" {

kvtier_status kvtier_connector_create(const kvtier_options* options, kvtier_connector** out) {
  return Guard([&]() -> absl::Status {
    if (out == nullptr) return Null("kvtier_connector_create", "out");
    *out = nullptr;
    kvtier::Options opt;
    if (absl::Status s = ToOptions(options, &opt); !s.ok()) return s;
    auto connector = kvtier::Connector::Create(opt);
    if (!connector.ok()) return connector.status();
    auto box = std::make_shared<CacheBox>();
    box->is_connector = true;
    box->layout = opt.layout;
    box->connector = std::move(*connector);
    *out = new kvtier_connector{std::move(box)};
    return absl::OkStatus();
  });
}

kvtier_status kvtier_connector_close(kvtier_connector* connector) {
  return Guard([&]() -> absl::Status {
    if (connector == nullptr) return Null("kvtier_connector_close", "connector");
    CacheBox& box = *connector->box;
    std::unique_lock life(box.life_mu);
    if (box.connector == nullptr) return absl::OkStatus();
    {
      std::lock_guard reg(box.reg_mu);
      // Stores and transfers die before their Connector: a store with layers unsaved is
      // abandoned, the others are waited for.
      for (kvtier_store* s : box.stores) s->store = kvtier::StoreHandle();
      for (kvtier_transfer* t : box.transfers) t->transfer = kvtier::Transfer();
    }
    {
      std::lock_guard finished(box.finished_mu);
      box.finished.clear();
    }
    box.connector.reset();
    return absl::OkStatus();
  });
}

void kvtier_connector_destroy(kvtier_connector* connector) {
  if (connector == nullptr) return;
  const kvtier_status saved = kvtier_connector_close(connector);
  (void)saved;
  delete connector;
}

kvtier_status kvtier_connector_block_bytes(const kvtier_connector* connector, uint64_t* bytes) {
  return Guard([&]() -> absl::Status {
    constexpr const char* kCall = "kvtier_connector_block_bytes";
    if (connector == nullptr) return Null(kCall, "connector");
    if (bytes == nullptr) return Null(kCall, "bytes");
    std::shared_lock life(connector->box->life_mu);
    if (auto c = Open(kCall, connector); !c.ok()) return c.status();
    *bytes = connector->box->layout.block_bytes();
    return absl::OkStatus();
  });
}

kvtier_status kvtier_connector_lookup(kvtier_connector* connector, const kvtier_block_key* keys,
                                      size_t num_keys, uint32_t first, bool touch,
                                      bool wait_for_store, kvtier_lookup_result* out) {
  return Guard([&]() -> absl::Status {
    constexpr const char* kCall = "kvtier_connector_lookup";
    if (connector == nullptr) return Null(kCall, "connector");
    if (out == nullptr) return Null(kCall, "out");
    out->blocks = 0;
    out->pending = false;
    if (out->tiers == nullptr && out->tiers_capacity != 0) {
      return absl::InvalidArgumentError(
          absl::StrCat(kCall, ": out.tiers is NULL with tiers_capacity=", out->tiers_capacity));
    }
    // The most blocks the answer can hold, checked before the lookup (which counts as an access):
    // an undersized array changes nothing. first > num_keys is the C++ call's to refuse.
    if (out->tiers != nullptr && first <= num_keys && out->tiers_capacity < num_keys - first) {
      return absl::OutOfRangeError(absl::StrCat(kCall, ": out.tiers_capacity ", out->tiers_capacity,
                                                " vs num_keys - first = ", num_keys - first));
    }
    std::vector<BlockKey> k;
    if (absl::Status s = CopyKeys(kCall, keys, num_keys, &k); !s.ok()) return s;
    std::shared_lock life(connector->box->life_mu);
    auto c = Open(kCall, connector);
    if (!c.ok()) return c.status();
    auto r = (*c)->Lookup(k, first, {.touch = touch, .wait_for_store = wait_for_store});
    if (!r.ok()) return r.status();
    out->blocks = r->blocks;
    out->pending = r->pending;
    if (out->tiers != nullptr) {
      for (size_t i = 0; i < r->tiers.size(); ++i) {
        out->tiers[i] = static_cast<kvtier_tier>(r->tiers[i]);
      }
    }
    return absl::OkStatus();
  });
}

kvtier_status kvtier_connector_load(kvtier_connector* connector, const kvtier_block_key* keys,
                                    size_t num_keys, uint32_t first, const uint32_t* dst_blocks,
                                    size_t num_dst, uint64_t request_id, kvtier_transfer** out) {
  return Guard([&]() -> absl::Status {
    constexpr const char* kCall = "kvtier_connector_load";
    if (connector == nullptr) return Null(kCall, "connector");
    if (out == nullptr) return Null(kCall, "out");
    *out = nullptr;
    std::vector<BlockKey> k;
    if (absl::Status s = CopyKeys(kCall, keys, num_keys, &k); !s.ok()) return s;
    if (absl::Status s = CheckBlockIds(kCall, "dst_blocks", dst_blocks, num_dst); !s.ok()) {
      return s;
    }
    auto handle = std::make_unique<kvtier_transfer>();
    handle->box = connector->box;
    std::shared_lock life(connector->box->life_mu);
    auto c = Open(kCall, connector);
    if (!c.ok()) return c.status();
    auto xfer = (*c)->Load(k, first, std::span<const uint32_t>(dst_blocks, num_dst), request_id);
    if (!xfer.ok()) return xfer.status();
    handle->transfer = std::move(*xfer);
    {
      std::lock_guard reg(connector->box->reg_mu);
      connector->box->transfers.insert(handle.get());
    }
    *out = handle.release();
    return absl::OkStatus();
  });
}

kvtier_status kvtier_connector_store(kvtier_connector* connector, const kvtier_block_key* keys,
                                     size_t num_keys, uint32_t first, const uint32_t* src_blocks,
                                     size_t num_src, void* ready_event, uint64_t request_id,
                                     kvtier_store** out) {
  return StartStore("kvtier_connector_store", connector, keys, num_keys, first, src_blocks, num_src,
                    /*save_all=*/true, ready_event, request_id, out);
}

kvtier_status kvtier_connector_begin_store(kvtier_connector* connector,
                                           const kvtier_block_key* keys, size_t num_keys,
                                           uint32_t first, const uint32_t* src_blocks,
                                           size_t num_src, uint64_t request_id,
                                           kvtier_store** out) {
  return StartStore("kvtier_connector_begin_store", connector, keys, num_keys, first, src_blocks,
                    num_src, /*save_all=*/false, nullptr, request_id, out);
}

kvtier_status kvtier_connector_take_finished(kvtier_connector* connector, kvtier_finished* out,
                                             size_t capacity, size_t* count) {
  return Guard([&]() -> absl::Status {
    constexpr const char* kCall = "kvtier_connector_take_finished";
    if (connector == nullptr) return Null(kCall, "connector");
    if (count == nullptr) return Null(kCall, "count");
    *count = 0;
    if (out == nullptr && capacity != 0) {
      return absl::InvalidArgumentError(
          absl::StrCat(kCall, ": out is NULL with capacity=", capacity));
    }
    std::shared_lock life(connector->box->life_mu);
    auto c = Open(kCall, connector);
    if (!c.ok()) return c.status();
    CacheBox& box = *connector->box;
    std::lock_guard finished(box.finished_mu);
    // Taken under finished_mu, so concurrent callers hand them out in the order they ended.
    std::vector<kvtier::Finished> fresh = (*c)->TakeFinished();
    for (kvtier::Finished& f : fresh) box.finished.push_back(std::move(f));
    const size_t n = std::min(capacity, box.finished.size());
    for (size_t i = 0; i < n; ++i) {
      const kvtier::Finished& f = box.finished[i];
      out[i] =
          kvtier_finished{.request_id = f.request_id,
                          .kind = f.kind == kvtier::Finished::Kind::kLoad ? KVTIER_FINISHED_LOAD
                                                                          : KVTIER_FINISHED_STORE,
                          .status = static_cast<kvtier_status>(f.status.raw_code()),
                          .blocks = f.blocks,
                          .blocks_loaded = f.blocks_loaded};
    }
    box.finished.erase(box.finished.begin(), box.finished.begin() + static_cast<ptrdiff_t>(n));
    *count = n;
    return absl::OkStatus();
  });
}

kvtier_status kvtier_connector_hint(kvtier_connector* connector, const kvtier_block_key* keys,
                                    const double* scores, size_t num_keys) {
  return Guard([&]() -> absl::Status {
    constexpr const char* kCall = "kvtier_connector_hint";
    if (connector == nullptr) return Null(kCall, "connector");
    if (scores == nullptr && num_keys != 0) {
      return absl::InvalidArgumentError(
          absl::StrCat(kCall, ": scores is NULL with num_keys=", num_keys));
    }
    std::vector<BlockKey> k;
    if (absl::Status s = CopyKeys(kCall, keys, num_keys, &k); !s.ok()) return s;
    std::shared_lock life(connector->box->life_mu);
    auto c = Open(kCall, connector);
    if (!c.ok()) return c.status();
    return (*c)->Hint(k, std::span<const double>(scores, num_keys));
  });
}

kvtier_status kvtier_connector_stats(const kvtier_connector* connector, kvtier_stats* stats) {
  return Guard([&]() -> absl::Status {
    constexpr const char* kCall = "kvtier_connector_stats";
    if (connector == nullptr) return Null(kCall, "connector");
    if (absl::Status s = CheckStatsSize(kCall, stats); !s.ok()) return s;
    std::shared_lock life(connector->box->life_mu);
    auto c = Open(kCall, connector);
    if (!c.ok()) return c.status();
    FillStats((*c)->Stats(), stats);
    return absl::OkStatus();
  });
}

kvtier_status kvtier_connector_check_invariants(const kvtier_connector* connector) {
  return Guard([&]() -> absl::Status {
    constexpr const char* kCall = "kvtier_connector_check_invariants";
    if (connector == nullptr) return Null(kCall, "connector");
    std::shared_lock life(connector->box->life_mu);
    auto c = Open(kCall, connector);
    if (!c.ok()) return c.status();
    return (*c)->CheckInvariants();
  });
}

// ---- stores ----

kvtier_status kvtier_store_blocks(const kvtier_store* store, uint32_t* blocks, uint32_t* unstored) {
  return OnHandle("kvtier_store_blocks", store, "store", [&](auto& x) -> absl::Status {
    if (blocks != nullptr) *blocks = x.store.blocks();
    if (unstored != nullptr) *unstored = x.store.unstored();
    return absl::OkStatus();
  });
}

kvtier_status kvtier_store_save_layer(kvtier_store* store, uint32_t layer, void* ready_event) {
  return OnHandle("kvtier_store_save_layer", store, "store",
                  [&](auto& x) -> absl::Status { return x.store.SaveLayer(layer, ready_event); });
}

kvtier_status kvtier_store_save_all(kvtier_store* store, void* ready_event) {
  return OnHandle("kvtier_store_save_all", store, "store",
                  [&](auto& x) -> absl::Status { return x.store.SaveAll(ready_event); });
}

kvtier_status kvtier_store_layers_saved(const kvtier_store* store, uint32_t* layers) {
  return OnHandle("kvtier_store_layers_saved", store, "store", [&](auto& x) -> absl::Status {
    if (layers == nullptr) return Null("kvtier_store_layers_saved", "layers");
    *layers = x.store.layers_saved();
    return absl::OkStatus();
  });
}

kvtier_status kvtier_store_poll(const kvtier_store* store, bool* done) {
  return OnHandle("kvtier_store_poll", store, "store", [&](auto& x) -> absl::Status {
    if (done == nullptr) return Null("kvtier_store_poll", "done");
    *done = x.store.Poll();
    return absl::OkStatus();
  });
}

kvtier_status kvtier_store_wait(kvtier_store* store) {
  return OnHandle("kvtier_store_wait", store, "store",
                  [&](auto& x) -> absl::Status { return x.store.Wait(); });
}

kvtier_status kvtier_store_status(const kvtier_store* store) {
  return OnHandle("kvtier_store_status", store, "store",
                  [&](auto& x) -> absl::Status { return x.store.status(); });
}

void kvtier_store_destroy(kvtier_store* store) {
  if (store == nullptr) return;
  try {
    std::shared_lock life(store->box->life_mu);
    {
      std::lock_guard reg(store->box->reg_mu);
      store->box->stores.erase(store);
    }
    store->store = kvtier::StoreHandle();  // abandons unsaved layers, waits, as ~StoreHandle does
  } catch (...) {
  }
  delete store;
}

}  // extern "C"
