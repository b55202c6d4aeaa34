// KvEvent: what changed in the cache, for KV-aware routers (vLLM's KV events BlockStored /
// BlockRemoved / AllBlocksCleared, NVIDIA Dynamo, TensorRT-LLM's KV cache event manager).
//
// With Options.events.capacity > 0 the cache records one event per residency transition in a
// bounded queue that the engine drains with Cache::TakeEvents() and forwards to its router:
//   kStored      a block became Ready in `tier` (committed, copied there, or found there by a warm
//                restart): from now on a request routed here finds it in that tier.
//   kRemoved     a block that was stored in `tier` left it (evicted, demoted, removed by
//                Cache::Remove or Clear, or its copy failed to verify on a read).
//   kAllCleared  Cache::Clear(tier): forget every block of `tier`. The kStored events that follow
//   it
//                in the same call re-announce the blocks Clear kept (pinned, held, in flight, or
//                kept by the prefix rule).
// Per (tier, key), kStored and kRemoved alternate, starting with kStored: a copy that never became
// Ready (a failed copy, one still in flight) has neither. The remote tier (Options.remote) emits
// nothing: it is shared, and other caches change it.
//
// Keys: a router that has the request's token ids recomputes the keys with the same hasher
// (kvtier/block_key.h: BlockHasher over the same NamespaceSalt, i.e. model id, LoRA id and tenant)
// and the same tokens_per_block, carried in every event (Options.layout.tokens_per_block); kvtier
// itself never sees token ids. `parent` is the previous block of the chain (kRootKey for a first
// block), so a router can rebuild the prefix tree from the events alone.
//
// Loss: when the queue is full new events are dropped and counted (CacheStats::events_dropped);
// `seq` counts every event the cache produced, dropped ones included, so a gap in `seq` between
// two consecutive events taken tells the router it missed some (it should then treat this cache's
// state as unknown, e.g. until a Clear).
//
// Thread safety: values. Ownership: plain data, no pointers.
#ifndef KVTIER_EVENTS_H_
#define KVTIER_EVENTS_H_

#include <cstdint>

#include "kvtier/block_key.h"
#include "kvtier/tier.h"

namespace kvtier {

enum class KvEventType : uint8_t { kStored = 0, kRemoved = 1, kAllCleared = 2 };

// "stored", "removed", "all_cleared"; "unknown" for a value outside the enum.
const char* KvEventTypeName(KvEventType type);

struct KvEvent {
  uint64_t seq = 0;  // 0, 1, 2, ... per cache, counting dropped events too
  KvEventType type = KvEventType::kStored;
  Tier tier = Tier::kDevice;      // kDevice, kHost or kDisk
  uint32_t tokens_per_block = 0;  // tokens hashed into each key (Options.layout)
  BlockKey key;                   // kRootKey for kAllCleared
  BlockKey parent;                // kRootKey for a first block and for kAllCleared
};

}  // namespace kvtier

#endif  // KVTIER_EVENTS_H_
