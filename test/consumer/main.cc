// Builds against an installed kvtier and runs one request through it.
#include <cstdio>
#include <vector>

#include "kvtier/cache.h"

int main() {
  std::vector<std::byte> k(8 * 64), v(8 * 64);
  kvtier::BlockLayout layout{.tokens_per_block = 2, .num_slots = 8};
  layout.layers.push_back({.segments = {{k.data(), 64, 64}, {v.data(), 64, 64}}});
  auto cache = kvtier::Cache::Create({.layout = layout, .host = {.capacity_bytes = 8 * 128}});
  if (!cache.ok()) return std::printf("%s\n", cache.status().ToString().c_str()), 1;
  auto keys = kvtier::BlockHasher().ChainTokens(std::vector<int32_t>{1, 2, 3, 4}, 2);
  auto lease = (*cache)->AllocateDevice(2);
  if (!keys.ok() || !lease.ok() || !(*cache)->Commit(*keys, *lease).ok()) return 1;
  auto match = (*cache)->Match(*keys);
  if (!match.ok() || match->size() != 2) return 1;
  std::printf("consumer: matched %u blocks through find_package(kvtier)\n", match->size());
  return 0;
}
