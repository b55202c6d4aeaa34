// Tier and MatchResult: where a cached block resides, and the cached prefix Cache::Match() reports.
//
// Tiers, top to bottom: kDevice (the engine's KV memory), kHost (pinned DRAM pool), kDisk (files on
// NVMe), kRemote (a store shared with other caches, Options.remote). The local tiers
// [0, kNumTiers) have slots of their own; kRemote has none and is only named by a MatchResult.
//
// Thread safety: values; TierName() and the const methods may be called from any thread.
// Ownership: MatchResult owns its vectors.
// Errors: none; TierName() of a value outside the enum returns "unknown".
#ifndef KVTIER_TIER_H_
#define KVTIER_TIER_H_

#include <cstdint>
#include <vector>

#include "kvtier/block_key.h"

namespace kvtier {

// kRemote (Options.remote) is shared with other caches and has no slots of its own: only
// MatchResult names it (a block to be read from the store). kNumTiers counts the local tiers.
enum class Tier : uint8_t { kDevice = 0, kHost = 1, kDisk = 2, kRemote = 3 };
inline constexpr int kNumTiers = 3;

// The tier's lower-case name ("device", "host", "disk", "remote"), as in logs and metric labels.
const char* TierName(Tier tier);

// The cached prefix of a key sequence, as Match() saw it. A snapshot: Load() re-checks it.
struct MatchResult {
  std::vector<BlockKey> keys;  // the matched prefix of the queried keys
  std::vector<Tier> tiers;     // highest tier holding each block (device, then host, then disk,
                               // then remote: after the local prefix, blocks the store holds)
  uint32_t size() const { return static_cast<uint32_t>(keys.size()); }
  // How many matched blocks `tiers` places in `tier`. O(size()).
  uint32_t blocks_in(Tier tier) const;
};

}  // namespace kvtier

#endif  // KVTIER_TIER_H_
