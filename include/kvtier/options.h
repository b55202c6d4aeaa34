// Options: everything a Cache is configured with, validated as a whole by Cache::Create().
//
// Aggregates with a default for every field, set by designated initializers:
//   auto cache = kvtier::Cache::Create({.layout = layout, .host = {.capacity_bytes = 8ull << 30}});
// Thread safety: values. Errors: Validate() returns kInvalidArgument whose message names the
// field's path ("Options.host.capacity_bytes: ...").
#ifndef KVTIER_OPTIONS_H_
#define KVTIER_OPTIONS_H_

#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "kvtier/layout.h"
#include "kvtier/policy.h"

namespace kvtier {

enum class DeviceBackend {
  kAuto,      // CUDA when built with it, a device is present and the layout's pointers are device
              // memory (cudaMalloc); else emulated
  kEmulated,  // device memory is host memory; copies on copy threads (tests, CI, laptops)
  kCuda,      // CUDA; Create() fails with kUnimplemented when not built with it, and with
              // kFailedPrecondition without a device or when the layout is not device memory
  // No byte is read or written and layout pointers may be null: copies complete at once. For
  // simulation (kvtier-replay) and index benchmarks, never for an engine.
  kMetadataOnly,
};

// How the CUDA backend moves one block's segments between the engine's per-layer tensors and a
// contiguous host slot (each Copy is many small segments: 2 x layers per block).
enum class CudaCopyMethod {
  kAuto,         // kKernel until the benchmark (kvtier_bench_cuda) says otherwise
  kKernel,       // one gather/scatter kernel launch per up to 512 segments, reading or writing
                 // the mapped pinned host pool directly (16-byte loads/stores where aligned)
  kBatchMemcpy,  // cudaMemcpyBatchAsync, one entry per segment (copy engines; CUDA 12.8+ driver)
  kMemcpyAsync,  // one cudaMemcpyAsync per segment (the simplest; the baseline)
};

// The CUDA backend's settings; ignored by the other backends.
struct CudaOptions {
  int device = -1;  // CUDA device ordinal; -1: the device holding the layout's first segment
  CudaCopyMethod copy_method = CudaCopyMethod::kAuto;
};

// Per-tenant shares of a tier: tenant name -> its share of the tier's slots, a decimal in (0, 1]
// ({"acme": "0.5", "beta": "0.25"}; text form "acme=0.5,beta=0.25"). Shares of one tier sum to at
// most 1; what they leave is the default tenant's (the blocks of leases given no tenant). A tenant
// at or over its share evicts its own blocks first; one under it never loses a block to another
// tenant's insert; free slots are anyone's (a tenant may exceed its share while there is room).
// Tenants are named on a lease (Cache::SetTenant); the names of all tiers together are the
// cache's tenants, at most kMaxTenants. Empty (default): the tier is shared as without tenants.
using TenantShares = PolicyParams;
inline constexpr size_t kMaxTenants = 16;

struct DeviceTierOptions {
  uint32_t capacity_slots = 0;  // blocks kvtier may use on the device; 0 = all layout.num_slots
  std::string policy = "lru";   // name in the policy registry
  PolicyParams policy_params;   // key=value strings, validated by the policy
};

struct HostTierOptions {
  // Hard cap on the pinned host pool; 0 disables the host tier. The pool holds as many slots as
  // fit: a slot is one block (layout.block_bytes()), or with a disk tier the block rounded up to
  // the file system's direct-I/O alignment plus one alignment unit for its on-disk trailer (e.g.
  // 36 KiB for a 32 KiB block at 4 KiB alignment). Create() fails with kInvalidArgument if not
  // even one slot fits.
  uint64_t capacity_bytes = 0;
  std::string policy = "lru";  // name in the policy registry
  PolicyParams policy_params;  // key=value strings, validated by the policy
  // A slot freed by Cache::Remove, Clear or a failed copy is zeroed before it can be reused, so no
  // stale block (another tenant's) stays in free memory. An evicted slot is not freed: it goes
  // straight to the block that replaces it, which overwrites it. Costs a memset of one slot per
  // freed block, under the cache's lock.
  bool wipe_on_free = false;
  // Each tenant's share of the host slots (see TenantShares); each named tenant gets its own
  // instance of `policy` (memory: one policy's per-slot state per tenant).
  TenantShares tenant_shares;
  // Lossy encoding of the blocks below the device (docs/compression.md): "none" (default, bytes
  // kept exactly), "fp8_e4m3", "int8" or "int4". A block is encoded on its way from the device to
  // a host slot and decoded on its way back, so host slots are sized by the encoded size (2-4x the
  // blocks in the same capacity_bytes) and the disk and remote tiers store and move the encoded
  // bytes as they are (they inherit the host's codec). Needs Options.shard.dtype float16,
  // bfloat16 or float32, and for int8/int4 every segment's role (K, V or latent); the emulated
  // device only in this version (kUnimplemented on CUDA). Part of Options::Fingerprint(): a disk
  // directory or store written with another codec is another layout's. Blocks loaded through it
  // are counted in CacheStats.codec_lossy_blocks_loaded.
  std::string codec = "none";
  // int8/int4: elements per scale group, a power of two in [2, 65536] (K: tokens of one channel;
  // V: channels of one token). Ignored by fp8_e4m3 and none.
  uint32_t codec_group_size = 64;
};

// The NVMe tier: fixed-size slots in preallocated files, io_uring, O_DIRECT, checksummed.
struct DiskTierOptions {
  std::string directory;  // existing, writable, on a file system with O_DIRECT; one cache each
  uint64_t capacity_bytes = 0;  // slot files, preallocated; 0 disables the disk tier
  uint32_t files = 1;           // slots are striped over this many files
  uint32_t queue_depth = 64;    // io_uring operations in flight
  std::string policy = "lru";   // name in the policy registry
  PolicyParams policy_params;   // key=value strings, validated by the policy
  // Threads that run the disk's completion work (a read's checksum verification, and what the
  // cache does next with the block): 0 runs it on the io_uring ring's own completion thread, which
  // then resubmits at once; N hands it to N threads, so that one core's hashing (10+ GB/s) does
  // not limit an array faster than that, at the cost of a hand-off and a wake-up per block.
  uint32_t verify_threads = 0;
  // The directory holds another layout's or geometry's blocks, or slot files without the record
  // of what they hold (kvtier.meta): start empty (every slot file removed) instead of failing.
  bool reset_on_mismatch = false;
  // The file system has no O_DIRECT (tmpfs on old kernels): use buffered I/O instead of failing
  // (CacheStats.disk_buffered_io says so).
  bool allow_buffered = false;
  // Destroying the cache first copies every block that is not on disk down to it (device ->
  // host -> disk, as room allows), so the next start finds whole prefixes, not orphaned tails.
  // Costs a write of the device and host tiers' unique blocks at shutdown.
  bool flush_on_close = true;
  // A slot freed by Cache::Remove, Clear or a failed copy has its trailer overwritten with zeros
  // before it can be reused, so no read, trailer scan or warm restart can serve the block it held
  // (an evicted slot goes straight to the block replacing it, whose write overwrites it). Costs one
  // alignment-unit write per freed block; the slot is out of use until it completes.
  bool wipe_on_free = false;
  // Each tenant's share of the disk slots, as HostTierOptions.tenant_shares.
  TenantShares tenant_shares;
};

// Which part of a model's KV cache this cache holds, and how its bytes are encoded: everything
// that changes a block's bytes for the same tokens besides the layout's shape. It is part of the
// identity of every copy of a block that leaves the process (Options::Fingerprint(): the disk
// trailer and kvtier.meta, the remote tier's keys), so caches whose identities differ never read
// each other's blocks, even when their layouts have the same shape: two tensor-parallel ranks of
// one model (each holds its own KV heads), two pipeline stages, fp16 vs bf16, two engines' memory
// formats. Every cache that should share blocks must set the same values, strings spelled byte for
// byte alike.
struct ShardIdentity {
  uint32_t tp_rank = 0;  // tensor-parallel rank of this cache's GPU; < tp_size
  uint32_t tp_size = 1;  // tensor-parallel degree; >= 1
  uint32_t pp_rank = 0;  // pipeline-parallel stage of this cache's GPU; < pp_size
  uint32_t pp_size = 1;  // pipeline-parallel degree; >= 1
  // Element type of the KV tensors ("bfloat16", "float8_e4m3fn"); free-form, compared as bytes.
  // At most kMaxShardStringBytes, no NUL. Empty: unnamed (only equal to another empty dtype).
  // A name PyTorch uses ("float16", "bfloat16", "float32", "float8_e4m3fn", with or without
  // "torch.") also checks the layout: every segment's base, size and stride must be a whole number
  // of elements (kInvalidArgument otherwise).
  std::string dtype;
  // The engine's name for how it lays out and encodes a block ("vllm-flash-nhd"), with a version if
  // it may change; free-form, same limits as dtype.
  std::string format;
  // Every tensor-parallel rank holds the same bytes for a block (MLA's latent KV, replicated on
  // each rank): tp_rank and tp_size are left out of the identity, so all ranks, of any TP degree,
  // share ONE copy of each block. Only one rank needs to publish it: set
  // Options.remote.publish = RemotePublish::kNever on the others (they still read).
  bool replicated = false;
};

// Longest ShardIdentity.dtype or .format, in bytes.
inline constexpr size_t kMaxShardStringBytes = 256;

// When blocks are published to the remote tier.
enum class RemotePublish {
  // Every block that reaches the host from the device is published: Commit() copies each new
  // block to the host (as Options.host_write_through does) and from there to the store, so other
  // replicas can use a prefix as soon as it is computed. Costs a write per new block.
  kWriteThrough,
  // A block is published when the host tier evicts it: less traffic, but other replicas only see
  // what this one has stopped holding. A clean close (the Cache destroyed) publishes what the
  // host still holds (one batch, bounded by timeout_ms; device-only blocks are not published).
  kWriteBack,
  // Never: this cache only reads what others publish (Match() and Load() use the store as with
  // the other modes). For caches whose blocks another cache already publishes: the ranks of a
  // replicated (ShardIdentity.replicated) layout but one.
  kNever,
};

// The remote tier: a Redis Cluster that many caches (engine replicas, on many machines) share.
// Blocks go to it from host slots and come back through host slots, so it needs the host tier.
// Capacity and eviction are the store's (its maxmemory policy, and ttl_seconds here).
struct RemoteTierOptions {
  // "host:port[,host:port...]" of one or more cluster nodes (the rest are discovered); empty
  // disables the remote tier.
  std::string nodes;
  // Caches that share blocks must use the same scope (and the same layout and shard identity:
  // Options::Fingerprint() is part of every store key, so another model's, rank's or dtype's
  // blocks are never even looked up). One scope for all the ranks of a deployment is safe.
  std::string scope = "default";
  RemotePublish publish = RemotePublish::kWriteThrough;
  uint32_t ttl_seconds = 0;  // expiry of every published block; 0: none
  // How long Match() may wait for the store to confirm the blocks past the local prefix; what it
  // has not confirmed by then counts as a miss.
  uint32_t match_budget_us = 5000;
  uint32_t timeout_ms = 1000;         // per batch of reads or writes
  uint32_t connect_timeout_ms = 500;  // per connection attempt
  std::string password;               // AUTH on every connection when non-empty (no TLS: Debian
                                      // 12's hiredis 0.14 has none; use a private network)
  uint32_t threads = 2;               // threads running the store's batches
};

// KV events for KV-aware routers (kvtier/events.h, Cache::TakeEvents).
struct EventOptions {
  // Events queued at most until the engine takes them; 0 (default) records none, at no cost.
  // When full, new events are dropped and counted (CacheStats::events_dropped). Each takes 48
  // bytes, allocated at Create(); at most kMaxCapacity.
  uint32_t capacity = 0;
  static constexpr uint32_t kMaxCapacity = 1u << 24;
};

struct Options {
  BlockLayout layout;   // the engine's device KV memory; required
  ShardIdentity shard;  // which rank's, dtype's and format's blocks this cache holds
  DeviceBackend backend = DeviceBackend::kAuto;
  CudaOptions cuda;  // used when the backend is CUDA
  DeviceTierOptions device;
  HostTierOptions host;
  DiskTierOptions disk;      // needs the host tier: disk reads and writes go through host slots
  RemoteTierOptions remote;  // needs the host tier, as the disk tier does
  EventOptions events;       // off by default
  // A device victim with no host copy is copied to the host tier before its slot is reused
  // (write-back). False drops it instead: cheaper eviction, fewer hits.
  bool demote_on_evict = true;
  // Commit() also starts a device-to-host copy of each new block (when the host tier has room), so
  // that evicting it from the device later costs nothing.
  bool host_write_through = false;

  absl::Status Validate() const;

  // The identity of every copy of a block that leaves the process: a hash of the layout's shape
  // (BlockLayout::Fingerprint()) and of `shard` (tp_rank and tp_size only when not replicated;
  // strings length-prefixed). Written in each disk trailer and in kvtier.meta, and part of every
  // remote key: a disk directory or store value of another fingerprint is never served. The same
  // value on every machine (little-endian words). Version 2 of the hash; version 1 hashed the
  // shape alone, so directories written before the shard identity existed are a mismatch (see
  // DiskTierOptions.reset_on_mismatch). O(layers x segments + string lengths).
  uint64_t Fingerprint() const;

  // The tenants named in host.tenant_shares and disk.tenant_shares, sorted, each once: tenant i
  // of this list is tenant id i + 1 (0 is the default tenant). O(tenants log tenants).
  std::vector<std::string> Tenants() const;
};

}  // namespace kvtier

#endif  // KVTIER_OPTIONS_H_
