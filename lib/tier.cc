#include "kvtier/tier.h"

namespace kvtier {

const char* TierName(Tier tier) {
  switch (tier) {
    case Tier::kDevice:
      return "device";
    case Tier::kHost:
      return "host";
    case Tier::kDisk:
      return "disk";
    case Tier::kRemote:
      return "remote";
  }
  return "unknown";
}

uint32_t MatchResult::blocks_in(Tier tier) const {
  uint32_t n = 0;
  for (Tier t : tiers) n += t == tier;
  return n;
}

}  // namespace kvtier
