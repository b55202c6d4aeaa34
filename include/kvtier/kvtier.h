/* kvtier.h: the C API of kvtier, for engines that are not written in C++ (and for FFI).
 *
 * Valid C99 (and C++); includes only <stddef.h>, <stdint.h> and <stdbool.h>. It mirrors the C++
 * lifecycle of kvtier/cache.h (see docs/integration.md):
 *
 *   kvtier_hasher_chain_tokens(h, tokens, n, tpb, keys, cap, &nkeys)   block keys, root first
 *   kvtier_cache_match(c, keys, nkeys, &m)            cached prefix, tier of each block
 *   kvtier_cache_allocate_device(c, nkeys, &lease)    device slots for the whole sequence
 *   kvtier_cache_load(c, m, lease, &x)                lease slots [0, blocks) get cached blocks
 *   kvtier_transfer_wait_layer(x, l) ...              before attention on layer l
 *   ... compute blocks [blocks, nkeys) into kvtier_lease_slots() ...
 *   kvtier_cache_commit(c, keys, nkeys, lease)        publish the computed blocks
 *   kvtier_cache_release(c, lease); kvtier_lease_destroy(lease)
 *   kvtier_cache_close(c); kvtier_cache_destroy(c)
 *
 * Errors: every fallible function returns a kvtier_status (KVTIER_OK == 0; the other values are
 *   those of absl::StatusCode). On return, kvtier_last_error() gives this thread's message for the
 *   last call: "" after a success, the Status message ("<Call>: <what is wrong>") after a failure.
 *   The string is owned by kvtier and valid until the next kvtier call on the same thread.
 *   No C++ exception and no abort leaves this API on bad input: allocation failures are
 *   KVTIER_RESOURCE_EXHAUSTED, any other exception KVTIER_INTERNAL.
 * Connector mode (kvtier/connector.h), for an engine that owns its GPU blocks, is the
 *   kvtier_connector_* and kvtier_store_* functions (their own section below); its loads are
 *   kvtier_transfer handles. What is said here of a cache holds for a connector too.
 * Misuse detected (an error code, never a crash): a NULL handle or NULL output pointer
 *   (KVTIER_INVALID_ARGUMENT); a NULL array with a nonzero count (KVTIER_INVALID_ARGUMENT); an
 *   options or stats struct_size that is 0 or too small (KVTIER_INVALID_ARGUMENT); a lease or
 *   match used with another cache (KVTIER_FAILED_PRECONDITION, or the C++ API's own check); a
 *   lease used after kvtier_cache_release (KVTIER_FAILED_PRECONDITION); any call on a cache, or on
 *   a lease or transfer of a cache, after kvtier_cache_close (KVTIER_FAILED_PRECONDITION); the same
 *   through a connector, its transfers or its stores after kvtier_connector_close.
 *   NOT detected, undefined like free(): using a handle after its *_destroy() function.
 * Thread safety: as the C++ API. Cache functions from any thread; a lease, match or transfer
 *   handle is used by one thread at a time. kvtier_cache_close() waits for calls in progress on
 *   the cache (including transfer waits) to return.
 * Ownership: every handle returned through an out pointer is the caller's, freed by its
 *   *_destroy() function (NULL is accepted). Leases, matches, transfers and stores may outlive the
 *   cache's close and even its destroy: they then only answer KVTIER_FAILED_PRECONDITION and must
 *   still be destroyed.
 */
#ifndef KVTIER_KVTIER_H_
#define KVTIER_KVTIER_H_

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#if defined(_WIN32)
#define KVTIER_C_API
#else
#define KVTIER_C_API __attribute__((visibility("default")))
#endif

/* absl::StatusCode's values. */
typedef enum kvtier_status {
  KVTIER_OK = 0,
  KVTIER_CANCELLED = 1,
  KVTIER_UNKNOWN = 2,
  KVTIER_INVALID_ARGUMENT = 3,
  KVTIER_DEADLINE_EXCEEDED = 4,
  KVTIER_NOT_FOUND = 5,
  KVTIER_ALREADY_EXISTS = 6,
  KVTIER_PERMISSION_DENIED = 7,
  KVTIER_RESOURCE_EXHAUSTED = 8,
  KVTIER_FAILED_PRECONDITION = 9,
  KVTIER_ABORTED = 10,
  KVTIER_OUT_OF_RANGE = 11,
  KVTIER_UNIMPLEMENTED = 12,
  KVTIER_INTERNAL = 13,
  KVTIER_UNAVAILABLE = 14,
  KVTIER_DATA_LOSS = 15,
  KVTIER_UNAUTHENTICATED = 16
} kvtier_status;

/* This thread's message for its last kvtier call: "" after a success. Never NULL; valid until the
 * next kvtier call on this thread. */
KVTIER_C_API const char* kvtier_last_error(void);
/* "OK", "INVALID_ARGUMENT", ...; "UNKNOWN_CODE" for a value outside the enum. Static storage. */
KVTIER_C_API const char* kvtier_status_name(kvtier_status status);

typedef enum kvtier_tier {
  KVTIER_TIER_DEVICE = 0,
  KVTIER_TIER_HOST = 1,
  KVTIER_TIER_DISK = 2,
  KVTIER_TIER_REMOTE = 3 /* the shared store (remote.nodes): named by matches and lookups only */
} kvtier_tier;

typedef enum kvtier_backend {
  KVTIER_BACKEND_AUTO = 0,     /* CUDA when built with it and a device is present, else emulated */
  KVTIER_BACKEND_EMULATED = 1, /* device memory is host memory */
  KVTIER_BACKEND_CUDA = 2,     /* KVTIER_UNIMPLEMENTED when CUDA is not available */
  KVTIER_BACKEND_METADATA_ONLY = 3 /* no byte moved; simulation only */
} kvtier_backend;

/* ---- block keys ---- */

typedef struct kvtier_block_key {
  uint64_t hi;
  uint64_t lo;
} kvtier_block_key; /* all-zero = the root key, parent of every first block */

typedef struct kvtier_hasher kvtier_hasher;

/* A hasher for one namespace salt (see kvtier/block_key.h). NULL strings are empty strings. */
KVTIER_C_API kvtier_status kvtier_hasher_create(const char* model_id, const char* lora_id,
                                                const char* tenant, kvtier_hasher** out);
KVTIER_C_API void kvtier_hasher_destroy(kvtier_hasher* hasher);
/* The key of one block of `num_tokens` token ids chained from `parent` (NULL = the root). */
KVTIER_C_API kvtier_status kvtier_hasher_chain(const kvtier_hasher* hasher,
                                               const kvtier_block_key* parent,
                                               const int32_t* tokens, size_t num_tokens,
                                               kvtier_block_key* out);
/* The keys of every block of a sequence from the root. num_tokens must be a multiple of
 * tokens_per_block (> 0), else KVTIER_INVALID_ARGUMENT; keys_capacity must be at least
 * num_tokens / tokens_per_block, else KVTIER_OUT_OF_RANGE (*num_keys says how many are needed). */
KVTIER_C_API kvtier_status kvtier_hasher_chain_tokens(const kvtier_hasher* hasher,
                                                      const int32_t* tokens, size_t num_tokens,
                                                      uint32_t tokens_per_block,
                                                      kvtier_block_key* keys, size_t keys_capacity,
                                                      size_t* num_keys);

/* ---- options ---- */

/* One per-block region array of the engine's KV memory: slot s is the bytes_per_block bytes at
 * base + s * stride_bytes (stride_bytes 0 = bytes_per_block). */
typedef struct kvtier_segment {
  void* base;
  uint64_t bytes_per_block;
  uint64_t stride_bytes;
} kvtier_segment;

/* Values stored by kvtier_options_set (opaque). */
typedef struct kvtier_option_values kvtier_option_values;

/* Zero-initialised fields take the C++ defaults (kvtier/options.h). Set struct_size to
 * sizeof(kvtier_options) (kvtier_options_init does). ABI growth: fields are only ever appended. A
 * struct larger than this library knows (a newer header) is accepted if the bytes beyond are zero,
 * else KVTIER_INVALID_ARGUMENT. This is version 2 (version 1 ended before `values`): a struct_size
 * of at least KVTIER_OPTIONS_SIZE_V1 is accepted, the fields it does not reach taking their
 * defaults; a smaller one is rejected.
 *
 * The fields below cover the layout and the common settings. Every other option of
 * kvtier::Options (the remote tier's, cuda.*, policy parameters, ...) is set by its dotted path
 * with kvtier_options_set(), which any option can also be set through: the one list of paths that
 * the Python module and kvtier-replay --option use too (lib/options_fields.h in the source tree).
 * Options added to kvtier::Options later reach C that way, without a new struct version. */
typedef struct kvtier_options {
  size_t struct_size; /* sizeof(kvtier_options); 0 is rejected */
  /* layout: num_layers * segments_per_layer segments, layer-major (layer 0's, then layer 1's) */
  uint32_t tokens_per_block;      /* 0 = 16 */
  uint32_t num_slots;             /* blocks the engine's KV tensors hold; required */
  uint32_t num_layers;            /* required */
  uint32_t segments_per_layer;    /* 2 for K and V, 1 for MLA; required */
  const kvtier_segment* segments; /* copied by create; the memory they point to is borrowed */
  kvtier_backend backend;
  /* device tier */
  uint32_t device_capacity_slots; /* 0 = num_slots */
  const char* device_policy;      /* NULL = "lru" */
  /* host tier */
  uint64_t host_capacity_bytes; /* 0 disables the host tier */
  const char* host_policy;      /* NULL = "lru" */
  /* disk tier (needs the host tier) */
  const char* disk_directory;   /* NULL or "" = no disk tier */
  uint64_t disk_capacity_bytes; /* 0 disables the disk tier */
  uint32_t disk_files;          /* 0 = 1 */
  uint32_t disk_queue_depth;    /* 0 = 64 */
  const char* disk_policy;      /* NULL = "lru" */
  bool disk_reset_on_mismatch;  /* start empty on another layout's directory */
  bool disk_allow_buffered;     /* no O_DIRECT: buffered I/O instead of failing */
  bool disk_no_flush_on_close;  /* true: skip the flush down to disk at close */
  /* behaviour */
  bool drop_on_evict;      /* true: device victims are dropped, not demoted (demote_on_evict) */
  bool host_write_through; /* Commit also copies new blocks to the host */
  /* ---- version 2 ---- */
  /* What kvtier_options_set stored, applied by create after the fields above (a path set there
   * overrides its field here). NULL = nothing. Owned through the struct: a copy of the struct
   * shares it; free it once, with kvtier_options_free_values. */
  kvtier_option_values* values;
} kvtier_options;

/* The struct_size of a version-1 kvtier_options (no `values`): still accepted by create. */
#define KVTIER_OPTIONS_SIZE_V1 offsetof(kvtier_options, values)

/* Zeroes *options and sets struct_size. Call kvtier_options_free_values first on a struct that
 * holds values, or they leak. */
KVTIER_C_API void kvtier_options_init(kvtier_options* options);

/* Sets one option of kvtier::Options by its dotted path (kvtier/options.h; the list with each
 * type: lib/options_fields.h in the source tree, or kvtier-replay --list-options), from text:
 *   kvtier_options_set(&o, "remote.nodes", "10.0.0.7:7000");
 *   kvtier_options_set(&o, "remote.publish", "write-back");
 *   kvtier_options_set(&o, "remote.connect_timeout_ms", "200");
 *   kvtier_options_set(&o, "host.policy_params", "key=value,key2=value2");
 *   kvtier_options_set(&o, "shard.tp_rank", "1");    (the shard identity, ShardIdentity in
 *   kvtier_options_set(&o, "shard.dtype", "bfloat16");  options.h: part of every stored key)
 *   kvtier_options_set(&o, "layout.segment_roles", "k,v");  (one role per segment of a layer,
 *     k|key, v|value, latent or empty, the same in every layer: what the int8 and int4 host
 *     codecs need; their count is checked against segments_per_layer by create)
 * bool: true/false; integers: decimal; enums by name (backend auto|emulated|cuda|metadata_only,
 * cuda.copy_method auto|kernel|batch_memcpy|memcpy_async, remote.publish
 * write-through|write-back|never); strings as given; policy parameters key=value[,key=value...].
 * The value is parsed now: an unknown path, or a value that does not parse or fit the field, is
 * KVTIER_INVALID_ARGUMENT with a message naming the path ("Options.remote.publish: 'x' is not
 * write-through, write-back or never") and stores nothing. What the value means (a policy name,
 * reachable nodes) is checked by kvtier_cache_create, as for the struct's fields. Setting a path
 * again replaces its value. The strings are copied. Needs a version-2 struct (struct_size >=
 * sizeof(kvtier_options) as of this header), else KVTIER_INVALID_ARGUMENT. Allocates
 * options->values on first use. */
KVTIER_C_API kvtier_status kvtier_options_set(kvtier_options* options, const char* path,
                                              const char* value);
/* Frees what kvtier_options_set stored and sets options->values to NULL; the other fields are left
 * as they are. NULL, or a struct without values (or a version-1 struct), is a no-op. */
KVTIER_C_API void kvtier_options_free_values(kvtier_options* options);

/* ---- stats ---- */

typedef struct kvtier_tier_stats {
  uint64_t capacity_blocks, used_blocks, pinned_blocks, hits, inserts, evictions, drops;
} kvtier_tier_stats;

/* kvtier::CacheStats, flattened (see kvtier/stats.h for each field). */
typedef struct kvtier_stats {
  size_t struct_size; /* in: sizeof(kvtier_stats) as the caller knows it (at least version 1's);
                       * a larger struct's unknown tail is left untouched */
  kvtier_tier_stats device, host, disk;
  uint64_t match_calls, blocks_queried, blocks_missed, blocks_loaded, blocks_committed;
  uint64_t demotions, promotions, bytes_h2d, bytes_d2h, transfer_failures;
  uint64_t bytes_disk_read, bytes_disk_written, disk_corrupt_reads, disk_io_errors;
  uint64_t disk_recovered_blocks, disk_recovery_dropped;
  uint64_t leases_live, transfers_in_flight;
  bool disk_buffered_io;
  double hit_ratio;              /* CacheStats::HitRatio() */
  uint64_t blocks_commit_shared; /* version 2 (appended) */
  /* ---- version 3 ---- */
  uint64_t blocks_stored;        /* connector stores: blocks copied from the engine's blocks */
  uint64_t blocks_store_skipped; /* connector stores: keys cached already, not copied */
  uint64_t events_dropped;       /* KV events lost to a full queue (Options.events) */
  /* ---- version 4 ---- */
  uint64_t loads_failed;                /* loads that ended with an error */
  uint64_t loads_partial;               /* ... that still delivered their first blocks */
  uint64_t blocks_load_lost;            /* blocks failed loads did not deliver (recomputed) */
  uint64_t codec_lossy_blocks_loaded;   /* blocks loaded through a lossy host codec */
  uint64_t codec_refused_blocks;        /* promotions refused: encoded by another codec */
  uint64_t codec_lossy_blocks_replaced; /* lossy device copies replaced by a Commit */
} kvtier_stats;

/* The struct_size of earlier versions of kvtier_stats, still accepted (the fields they do not
 * reach are not written). */
#define KVTIER_STATS_SIZE_V1 offsetof(kvtier_stats, blocks_commit_shared)
#define KVTIER_STATS_SIZE_V2 offsetof(kvtier_stats, blocks_stored)
#define KVTIER_STATS_SIZE_V3 offsetof(kvtier_stats, loads_failed)

/* ---- the cache ---- */

typedef struct kvtier_cache kvtier_cache;
typedef struct kvtier_match kvtier_match;
typedef struct kvtier_lease kvtier_lease;
typedef struct kvtier_transfer kvtier_transfer;

/* Validates the options (messages name the field) and builds the cache. With disk_directory set,
 * serves what a previous cache left there (warm restart). */
KVTIER_C_API kvtier_status kvtier_cache_create(const kvtier_options* options, kvtier_cache** out);
/* Opens (or creates) a cache over a disk directory: kvtier_cache_create with *options, except
 * disk_directory = directory and disk_capacity_bytes = disk_capacity_bytes. The directory must
 * exist; blocks a previous cache left there are served (warm restart). */
KVTIER_C_API kvtier_status kvtier_cache_open(const kvtier_options* options, const char* directory,
                                             uint64_t disk_capacity_bytes, kvtier_cache** out);
/* Waits for the transfers of this cache, releases its live leases and destroys the C++ cache
 * (flushing to disk, writing the manifest). Afterwards every call with this handle, its leases or
 * its transfers answers KVTIER_FAILED_PRECONDITION, except *_destroy and a second close (OK). */
KVTIER_C_API kvtier_status kvtier_cache_close(kvtier_cache* cache);
/* Closes (if open) and frees the handle. NULL is a no-op. */
KVTIER_C_API void kvtier_cache_destroy(kvtier_cache* cache);

/* Bytes of one block over all layers and segments (its size in a host slot). */
KVTIER_C_API kvtier_status kvtier_cache_block_bytes(const kvtier_cache* cache, uint64_t* bytes);

/* The address of segment `segment` of layer `layer` in device slot `slot` (base + slot * stride)
 * and its size. Host memory on the emulated device (the engine's own buffers), a device pointer on
 * CUDA. KVTIER_OUT_OF_RANGE for a bad slot, layer or segment. */
KVTIER_C_API kvtier_status kvtier_cache_slot_address(const kvtier_cache* cache, uint32_t slot,
                                                     uint32_t layer, uint32_t segment,
                                                     void** address, uint64_t* bytes);

/* The longest cached prefix of keys[0, num_keys); *out owns it (kvtier_match_destroy). */
KVTIER_C_API kvtier_status kvtier_cache_match(kvtier_cache* cache, const kvtier_block_key* keys,
                                              size_t num_keys, kvtier_match** out);
/* Matched blocks. */
KVTIER_C_API kvtier_status kvtier_match_size(const kvtier_match* match, uint32_t* size);
/* The tier of each matched block (highest tier holding it), into tiers[0, size). capacity must be
 * at least the size, else KVTIER_OUT_OF_RANGE. */
KVTIER_C_API kvtier_status kvtier_match_tiers(const kvtier_match* match, kvtier_tier* tiers,
                                              size_t capacity);
/* Matched blocks found first in `tier`. */
KVTIER_C_API kvtier_status kvtier_match_blocks_in(const kvtier_match* match, kvtier_tier tier,
                                                  uint32_t* count);
KVTIER_C_API void kvtier_match_destroy(kvtier_match* match);

/* Reserves n >= 1 device slots (Cache::AllocateDevice). KVTIER_RESOURCE_EXHAUSTED when too few are
 * free or evictable. */
KVTIER_C_API kvtier_status kvtier_cache_allocate_device(kvtier_cache* cache, uint32_t n,
                                                        kvtier_lease** out);
/* kvtier_cache_allocate_device for a sequence whose cached prefix is `match` (Cache::AllocateDevice
 * with a match): its blocks on the device are shared at once, so making room cannot evict them.
 * KVTIER_INVALID_ARGUMENT when the match has more than n blocks. */
KVTIER_C_API kvtier_status kvtier_cache_allocate_for_match(kvtier_cache* cache,
                                                           const kvtier_match* match, uint32_t n,
                                                           kvtier_lease** out);
/* Adds n >= 1 slots at the end of the lease (Cache::Grow). */
KVTIER_C_API kvtier_status kvtier_cache_grow(kvtier_cache* cache, kvtier_lease* lease, uint32_t n);
/* Slots in the lease. */
KVTIER_C_API kvtier_status kvtier_lease_size(const kvtier_lease* lease, uint32_t* size);
/* Leading positions kvtier_cache_allocate_for_match shared at once (DeviceLease::shared): they hold
 * cached blocks; never write them. 0 for kvtier_cache_allocate_device. */
KVTIER_C_API kvtier_status kvtier_lease_shared(const kvtier_lease* lease, uint32_t* shared);
/* The device slot of each block, into slots[0, size); capacity >= size else KVTIER_OUT_OF_RANGE.
 * Load may change slots: read them after kvtier_cache_load. */
KVTIER_C_API kvtier_status kvtier_lease_slots(const kvtier_lease* lease, uint32_t* slots,
                                              size_t capacity);
/* kvtier_cache_slot_address for the slot of the lease's block `block`. */
KVTIER_C_API kvtier_status kvtier_lease_block_address(const kvtier_lease* lease, uint32_t block,
                                                      uint32_t layer, uint32_t segment,
                                                      void** address, uint64_t* bytes);
/* Brings the matched blocks into lease slots [0, match size) (Cache::Load); never waits. */
KVTIER_C_API kvtier_status kvtier_cache_load(kvtier_cache* cache, const kvtier_match* match,
                                             kvtier_lease* lease, kvtier_transfer** out);
/* Publishes lease slots [0, num_keys) under keys (Cache::Commit). */
KVTIER_C_API kvtier_status kvtier_cache_commit(kvtier_cache* cache, const kvtier_block_key* keys,
                                               size_t num_keys, kvtier_lease* lease);
/* Returns uncommitted slots, unpins the blocks; the lease stays a handle that answers
 * KVTIER_FAILED_PRECONDITION until kvtier_lease_destroy. Releasing twice: FAILED_PRECONDITION. */
KVTIER_C_API kvtier_status kvtier_cache_release(kvtier_cache* cache, kvtier_lease* lease);
/* Cache::SetTenant: the lease serves `tenant` (one named in the options "host.tenant_shares" or
 * "disk.tenant_shares"; NULL or "" = the default tenant), whose shares its blocks count against.
 * KVTIER_INVALID_ARGUMENT for an unknown name. */
KVTIER_C_API kvtier_status kvtier_lease_set_tenant(kvtier_cache* cache, kvtier_lease* lease,
                                                   const char* tenant);
/* Releases (if not yet) and frees the handle. NULL is a no-op. */
KVTIER_C_API void kvtier_lease_destroy(kvtier_lease* lease);

/* The engine's importance score of each cached block (Cache::Hint). */
KVTIER_C_API kvtier_status kvtier_cache_hint(kvtier_cache* cache, const kvtier_block_key* keys,
                                             const double* scores, size_t num_keys);

/* ---- KV events (kvtier/events.h), for KV-aware routers ---- */

typedef enum kvtier_event_type {
  KVTIER_EVENT_STORED = 0,     /* a block became Ready in `tier` */
  KVTIER_EVENT_REMOVED = 1,    /* a block stored in `tier` left it */
  KVTIER_EVENT_ALL_CLEARED = 2 /* kvtier_cache_clear(tier): forget the tier's blocks; the STORED
                                * events that follow re-announce those it kept */
} kvtier_event_type;

/* One event (kvtier::KvEvent). A router recomputes keys from token ids with a hasher of the same
 * salt (kvtier_hasher_create) and this tokens_per_block; kvtier never sees token ids. A gap in
 * `seq` means events were dropped (kvtier_stats.events_dropped). This struct never changes. */
typedef struct kvtier_event {
  uint64_t seq; /* 0, 1, 2, ... per cache, dropped events included */
  kvtier_event_type type;
  kvtier_tier tier;
  uint32_t tokens_per_block; /* tokens hashed into each key */
  kvtier_block_key key;      /* all zero for KVTIER_EVENT_ALL_CLEARED */
  kvtier_block_key parent;   /* all zero (the root) for a first block and for ALL_CLEARED */
} kvtier_event;

/* Moves the oldest queued events, at most `capacity`, into events[0, *num_events), oldest first
 * (Cache::TakeEvents). *num_events = 0 when none are queued or the cache records none (the option
 * "events.capacity", set with kvtier_options_set, is 0 by default). events may be NULL only with
 * capacity 0. */
KVTIER_C_API kvtier_status kvtier_cache_take_events(kvtier_cache* cache, kvtier_event* events,
                                                    size_t capacity, size_t* num_events);

/* ---- management (kvtier::Cache's Remove, Clear, Pin, Unpin, Prefetch, timed Hint) ---- */

/* What a management call did (kvtier::ManageResult): every key given is counted in one field. */
typedef struct kvtier_manage_result {
  uint64_t done;              /* blocks acted on (removed, held, hold ended) */
  uint64_t not_found;         /* keys cached nowhere (unpin: not held); skipped */
  uint64_t busy;              /* kept: pinned by a lease or a copy in flight (clear: or held) */
  uint64_t kept_for_children; /* kept: a cached block chains from it (prefix rule) */
} kvtier_manage_result;

/* Drops these blocks from every local tier, leaves first (Cache::Remove): a block a cached block
 * not dropped chains from is kept, one in use skipped. KVTIER_INVALID_ARGUMENT for the root key. */
KVTIER_C_API kvtier_status kvtier_cache_remove(kvtier_cache* cache, const kvtier_block_key* keys,
                                               size_t num_keys, kvtier_manage_result* result);
/* Drops every block of `tier` not in use (Cache::Clear); prefix rule as for remove. Emits an
 * ALL_CLEARED event. KVTIER_INVALID_ARGUMENT for a value that is not a kvtier_tier. */
KVTIER_C_API kvtier_status kvtier_cache_clear(kvtier_cache* cache, kvtier_tier tier,
                                              kvtier_manage_result* result);
/* Keeps the cached blocks of keys from eviction in every tier until kvtier_cache_unpin or
 * duration_ms has passed (Cache::Pin; 0 < duration_ms <= 86400000, else
 * KVTIER_INVALID_ARGUMENT). */
KVTIER_C_API kvtier_status kvtier_cache_pin(kvtier_cache* cache, const kvtier_block_key* keys,
                                            size_t num_keys, uint64_t duration_ms,
                                            kvtier_manage_result* result);
/* Ends the holds of kvtier_cache_pin (Cache::Unpin). */
KVTIER_C_API kvtier_status kvtier_cache_unpin(kvtier_cache* cache, const kvtier_block_key* keys,
                                              size_t num_keys, kvtier_manage_result* result);
/* kvtier_cache_hint whose scores revert to the policies' default once duration_ms has passed
 * (Cache::Hint with a duration; 0 < duration_ms <= 86400000). */
KVTIER_C_API kvtier_status kvtier_cache_hint_for(kvtier_cache* cache, const kvtier_block_key* keys,
                                                 const double* scores, size_t num_keys,
                                                 uint64_t duration_ms);
/* Brings the blocks of the chain keys[0, num_keys) that are only on disk (or in the remote store)
 * up to the host tier, asynchronously, without a lease (Cache::Prefetch). *out is a transfer
 * without layers (kvtier_transfer_wait_layer: KVTIER_OUT_OF_RANGE); kvtier_transfer_blocks gives
 * the chain's blocks covered and the reads started. KVTIER_FAILED_PRECONDITION without a host
 * tier. */
KVTIER_C_API kvtier_status kvtier_cache_prefetch(kvtier_cache* cache, const kvtier_block_key* keys,
                                                 size_t num_keys, kvtier_transfer** out);

/* A snapshot of the counters. stats->struct_size must be set by the caller; the fields that fit
 * in it are written. */
KVTIER_C_API kvtier_status kvtier_cache_stats(const kvtier_cache* cache, kvtier_stats* stats);
/* Verifies the cache's internal invariants (tests, debugging); KVTIER_INTERNAL names the first
 * one broken. */
KVTIER_C_API kvtier_status kvtier_cache_check_invariants(const kvtier_cache* cache);

/* ---- transfers ---- */

/* Blocks the transfer brings (lease slots [0, blocks)), and how many of them were copied. */
KVTIER_C_API kvtier_status kvtier_transfer_blocks(const kvtier_transfer* transfer, uint32_t* blocks,
                                                  uint32_t* blocks_promoted);
/* Once finished: lease slots (a connector load: dst blocks) [0, *blocks_loaded) hold their blocks,
 * also when the transfer failed (== blocks when it succeeded). A failure stops at the first block
 * whose read or copy failed: the engine recomputes from there (Transfer::blocks_loaded). 0 while
 * running. */
KVTIER_C_API kvtier_status kvtier_transfer_blocks_loaded(const kvtier_transfer* transfer,
                                                         uint32_t* blocks_loaded);
/* *done = true once finished; never blocks. */
KVTIER_C_API kvtier_status kvtier_transfer_poll(const kvtier_transfer* transfer, bool* done);
/* Blocks until every copy finished; returns the transfer's outcome. */
KVTIER_C_API kvtier_status kvtier_transfer_wait(kvtier_transfer* transfer);
/* Blocks until layer `layer` of every block is on the device; KVTIER_OUT_OF_RANGE for a bad layer.
 */
KVTIER_C_API kvtier_status kvtier_transfer_wait_layer(kvtier_transfer* transfer, uint32_t layer);
/* The outcome so far: KVTIER_UNAVAILABLE while running. */
KVTIER_C_API kvtier_status kvtier_transfer_status(const kvtier_transfer* transfer);
/* The cudaEvent_t (as void*) recorded after layer `layer` was copied, for cudaStreamWaitEvent on
 * the engine's stream. *event = NULL when there is nothing to wait for, and always on the emulated
 * device (use kvtier_transfer_wait_layer). KVTIER_OUT_OF_RANGE for a bad layer. */
KVTIER_C_API kvtier_status kvtier_transfer_layer_ready_event(const kvtier_transfer* transfer,
                                                             uint32_t layer, void** event);
/* Waits for the transfer (as the C++ destructor does) and frees the handle. NULL is a no-op. */
KVTIER_C_API void kvtier_transfer_destroy(kvtier_transfer* transfer);

/* ---- connector mode (kvtier/connector.h) ----
 *
 * For an engine that keeps its own GPU block pool and prefix cache (vLLM's KV connector): kvtier
 * tracks no device residency; its tiers are host, disk and remote, and it copies between them and
 * the engine's blocks, named by block id (= slot of the options' layout, which describes the
 * engine's KV tensors; device_capacity_slots must stay 0, host_capacity_bytes is required). Per
 * request, keys being its block keys from the root and `first` the blocks the engine's own prefix
 * cache holds:
 *
 *   kvtier_connector_lookup(c, keys, n, first, true, true, &r)  r.blocks cached past `first`
 *   kvtier_connector_load(c, keys, first + r.blocks, first, dst, r.blocks, id, &x)
 *   kvtier_transfer_wait_layer(x, l) ...                       before attention on layer l
 *   kvtier_connector_begin_store(c, keys, n, first, src, n - first, id, &s)
 *   kvtier_store_save_layer(s, l, event) ...                   as the forward pass writes layer l
 *   kvtier_connector_take_finished(c, done, cap, &k)           loads and stores that ended
 *
 * A load writes its dst blocks and a store reads its src blocks until they end (the transfer or
 * store handle, or take_finished, says when): the engine must not reuse them before. Loads are
 * kvtier_transfer handles (every kvtier_transfer_* function applies; kvtier_transfer_blocks says
 * how many dst blocks get data). kvtier_connector_close waits for the connector's transfers,
 * abandons its stores with layers unsaved and waits for the others, then destroys it.
 */
typedef struct kvtier_connector kvtier_connector;
typedef struct kvtier_store kvtier_store;

/* kvtier_connector_lookup's answer. */
typedef struct kvtier_lookup_result {
  kvtier_tier* tiers;    /* in: where the tier of each found block goes; NULL: not wanted */
  size_t tiers_capacity; /* in: entries at tiers: at least num_keys - first when tiers is set */
  uint32_t blocks;       /* out: keys [first, first + blocks) are cached */
  bool pending;          /* out: the store's answer is not in yet (wait_for_store false): blocks
                          * counts the local tiers only; ask again */
} kvtier_lookup_result;

typedef enum kvtier_finished_kind {
  KVTIER_FINISHED_LOAD = 0,
  KVTIER_FINISHED_STORE = 1
} kvtier_finished_kind;

/* A load or store with a nonzero request id that ended, reported once by
 * kvtier_connector_take_finished. */
typedef struct kvtier_finished {
  uint64_t request_id;
  kvtier_finished_kind kind;
  kvtier_status status;   /* KVTIER_OK: every block moved. Else a load's blocks past blocks_loaded
                           * are misses to recompute, a store's are not stored (KVTIER_CANCELLED:
                           * destroyed or closed with layers unsaved). Either way the engine's
                           * blocks are free. */
  uint32_t blocks;        /* blocks it moved (or tried to) */
  uint32_t blocks_loaded; /* a load: dst blocks [0, blocks_loaded) hold data, the rest are the
                           * blocks with load errors; a store: blocks if OK, else 0 */
} kvtier_finished;

/* Validates the options (as kvtier_cache_create; device_capacity_slots set, or no host tier, is
 * KVTIER_INVALID_ARGUMENT) and builds the connector over the engine's KV tensors. */
KVTIER_C_API kvtier_status kvtier_connector_create(const kvtier_options* options,
                                                   kvtier_connector** out);
/* Waits for the connector's transfers, abandons its stores that have layers unsaved (KVTIER_
 * CANCELLED), waits for the others and destroys the C++ connector; finished loads and stores not
 * yet taken are dropped. Afterwards every call with this handle, its transfers or its stores
 * answers KVTIER_FAILED_PRECONDITION, except *_destroy and a second close (OK). */
KVTIER_C_API kvtier_status kvtier_connector_close(kvtier_connector* connector);
/* Closes (if open) and frees the handle. NULL is a no-op. */
KVTIER_C_API void kvtier_connector_destroy(kvtier_connector* connector);

/* Bytes of one block over all layers and segments. */
KVTIER_C_API kvtier_status kvtier_connector_block_bytes(const kvtier_connector* connector,
                                                        uint64_t* bytes);

/* How many blocks past the engine's `first` hits (keys [0, first)) are cached, and where
 * (Connector::Lookup). touch: counts as an access for the policies and statistics (false only
 * looks). wait_for_store: with a remote tier, wait for the store's answer (within
 * remote.match_budget_us); false asks it in the background and sets out->pending. An undersized
 * out->tiers is KVTIER_OUT_OF_RANGE before anything is looked up; first > num_keys or a root key
 * KVTIER_INVALID_ARGUMENT. */
KVTIER_C_API kvtier_status kvtier_connector_lookup(kvtier_connector* connector,
                                                   const kvtier_block_key* keys, size_t num_keys,
                                                   uint32_t first, bool touch, bool wait_for_store,
                                                   kvtier_lookup_result* out);
/* Copies the cached blocks keys [first, num_keys) into the engine's blocks dst_blocks (one each,
 * num_dst == num_keys - first), asynchronously, layer by layer (Connector::Load); stops at the
 * first block no longer cached (kvtier_transfer_blocks says how many dst blocks get data). A
 * nonzero request_id makes kvtier_connector_take_finished report its end.
 * KVTIER_INVALID_ARGUMENT: num_dst != num_keys - first, a block id >= num_slots or repeated, a key
 * contradicting the cached chain. KVTIER_FAILED_PRECONDITION: a dst block that a copy in flight
 * reads or writes. */
KVTIER_C_API kvtier_status kvtier_connector_load(kvtier_connector* connector,
                                                 const kvtier_block_key* keys, size_t num_keys,
                                                 uint32_t first, const uint32_t* dst_blocks,
                                                 size_t num_dst, uint64_t request_id,
                                                 kvtier_transfer** out);
/* Stores the engine's blocks src_blocks (src_blocks[i] holds keys[first + i], num_src ==
 * num_keys - first) once ready_event (a cudaEvent_t after which their bytes are complete; NULL:
 * they are now; non-NULL on the emulated device is KVTIER_INVALID_ARGUMENT) has completed
 * (Connector::Store). Keys cached already are skipped. Returns at once: the engine must not write
 * the src blocks until the store ends (kvtier_store_wait/_poll or take_finished). Errors as load,
 * and KVTIER_FAILED_PRECONDITION for a src block a load in flight writes. */
KVTIER_C_API kvtier_status kvtier_connector_store(kvtier_connector* connector,
                                                  const kvtier_block_key* keys, size_t num_keys,
                                                  uint32_t first, const uint32_t* src_blocks,
                                                  size_t num_src, void* ready_event,
                                                  uint64_t request_id, kvtier_store** out);
/* kvtier_connector_store, layer by layer (Connector::BeginStore): reserves the host slots now; the
 * engine then calls kvtier_store_save_layer(s, l, event) as its forward pass writes layer l. */
KVTIER_C_API kvtier_status kvtier_connector_begin_store(kvtier_connector* connector,
                                                        const kvtier_block_key* keys,
                                                        size_t num_keys, uint32_t first,
                                                        const uint32_t* src_blocks, size_t num_src,
                                                        uint64_t request_id, kvtier_store** out);
/* The loads and stores with a nonzero request id that ended, each reported once, into
 * out[0, *count) with *count <= capacity. What does not fit is kept, in order, for the next call:
 * *count == capacity may mean more are waiting (call again until *count < capacity). out may be
 * NULL with capacity 0 (*count is then 0; nothing is lost). */
KVTIER_C_API kvtier_status kvtier_connector_take_finished(kvtier_connector* connector,
                                                          kvtier_finished* out, size_t capacity,
                                                          size_t* count);
/* The engine's importance score of each cached block (Connector::Hint). */
KVTIER_C_API kvtier_status kvtier_connector_hint(kvtier_connector* connector,
                                                 const kvtier_block_key* keys, const double* scores,
                                                 size_t num_keys);
/* As kvtier_cache_stats (the device tier's figures are zero: the device is the engine's). */
KVTIER_C_API kvtier_status kvtier_connector_stats(const kvtier_connector* connector,
                                                  kvtier_stats* stats);
/* Verifies the connector's internal invariants; KVTIER_INTERNAL names the first one broken. */
KVTIER_C_API kvtier_status kvtier_connector_check_invariants(const kvtier_connector* connector);

/* ---- stores (connector mode) ---- */

/* Blocks the store copies (keys past `first` not cached already, as far as host room allowed), and
 * keys it leaves unstored for want of host room. Either pointer may be NULL. */
KVTIER_C_API kvtier_status kvtier_store_blocks(const kvtier_store* store, uint32_t* blocks,
                                               uint32_t* unstored);
/* Enqueues the copies of layer `layer` of every block once ready_event (cudaEvent_t; NULL: the
 * bytes are complete now) has completed. Layers in order, each once: KVTIER_FAILED_PRECONDITION
 * for any but the next unsaved one, KVTIER_OUT_OF_RANGE past the last. */
KVTIER_C_API kvtier_status kvtier_store_save_layer(kvtier_store* store, uint32_t layer,
                                                   void* ready_event);
/* kvtier_store_save_layer of every layer not saved yet (OK when none is left). */
KVTIER_C_API kvtier_status kvtier_store_save_all(kvtier_store* store, void* ready_event);
/* The layers saved so far. */
KVTIER_C_API kvtier_status kvtier_store_layers_saved(const kvtier_store* store, uint32_t* layers);
/* *done = true once finished; never blocks. */
KVTIER_C_API kvtier_status kvtier_store_poll(const kvtier_store* store, bool* done);
/* Blocks until every layer is copied; returns the store's outcome. KVTIER_FAILED_PRECONDITION
 * while layers are unsaved (nothing would finish it). */
KVTIER_C_API kvtier_status kvtier_store_wait(kvtier_store* store);
/* The outcome so far: KVTIER_UNAVAILABLE while running. */
KVTIER_C_API kvtier_status kvtier_store_status(const kvtier_store* store);
/* Abandons the store if layers are unsaved (its blocks are not stored: KVTIER_CANCELLED), waits for
 * the copies enqueued and frees the handle. NULL is a no-op. */
KVTIER_C_API void kvtier_store_destroy(kvtier_store* store);

#ifdef __cplusplus
} /* extern "C" */
#endif

#endif /* KVTIER_KVTIER_H_ */
