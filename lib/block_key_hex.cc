#include <cstdio>
#include <string>

#include "kvtier/block_key.h"

namespace kvtier {

// Apart from the BlockHasher (block_key.cc): the index and the tiers name keys in their messages,
// and this keeps them from depending on xxHash.
std::string BlockKey::ToHex() const {
  char buf[33];
  std::snprintf(buf, sizeof(buf), "%016llx%016llx", static_cast<unsigned long long>(hi),
                static_cast<unsigned long long>(lo));
  return buf;
}

}  // namespace kvtier
