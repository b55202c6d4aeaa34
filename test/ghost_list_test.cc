// GhostLists / GhostList (lib/policies/ghost_list.h): a random walk of pushes, moves, erases and
// pops checked step by step against a plain model (a deque per list), with ids that collide in
// the table, runs of consecutive ids and capacity-sized bursts of erases that force the ring to
// compact; and the complexity guard: a full list's table stays bounded.
#include "lib/policies/ghost_list.h"

#include <algorithm>
#include <deque>
#include <random>
#include <vector>

#include "test/util/test_util.h"

namespace kvtier::internal {
namespace {

struct Model {
  std::vector<uint32_t> capacity;
  std::vector<std::deque<uint64_t>> lists;  // oldest first
  int Find(uint64_t id) const {
    for (size_t l = 0; l < lists.size(); ++l) {
      if (std::find(lists[l].begin(), lists[l].end(), id) != lists[l].end()) {
        return static_cast<int>(l);
      }
    }
    return GhostLists::kNone;
  }
  int Erase(uint64_t id) {
    const int l = Find(id);
    if (l != GhostLists::kNone) {
      lists[l].erase(std::find(lists[l].begin(), lists[l].end(), id));
    }
    return l;
  }
  void Push(int list, uint64_t id) {
    Erase(id);
    if (capacity[list] == 0) return;
    if (lists[list].size() == capacity[list]) lists[list].pop_front();
    lists[list].push_back(id);
  }
};

void CheckSame(const GhostLists& g, const Model& m, const std::vector<uint64_t>& ids) {
  for (size_t l = 0; l < m.lists.size(); ++l) {
    REQUIRE(g.size(static_cast<int>(l)) == m.lists[l].size());
    const auto oldest = g.Oldest(static_cast<int>(l));
    REQUIRE(oldest.has_value() == !m.lists[l].empty());
    if (oldest) REQUIRE(*oldest == m.lists[l].front());
  }
  for (const uint64_t id : ids) REQUIRE(g.Find(id) == m.Find(id));
}

TEST_CASE("GhostLists: a random walk matches a model of FIFO lists", "[policy]") {
  const std::vector<uint32_t> caps = GENERATE(
      std::vector<uint32_t>{1}, std::vector<uint32_t>{7, 0, 3}, std::vector<uint32_t>{40, 160});
  CAPTURE(caps);
  // Universes: few small ids (many moves between lists), dense runs, and ids that differ only in
  // high bits (the same low bits: a poor hash would pile them up).
  const int universe = GENERATE(0, 1, 2);
  CAPTURE(universe);
  std::mt19937_64 rng(42 + universe);
  const auto make_id = [&](uint64_t k) -> uint64_t {
    if (universe == 0) return k % 16;
    if (universe == 1) return k;
    return k << 40;
  };
  GhostLists g = caps.size() == 1   ? GhostLists({caps[0]})
                 : caps.size() == 3 ? GhostLists({caps[0], caps[1], caps[2]})
                                    : GhostLists({caps[0], caps[1]});
  Model m{.capacity = caps, .lists = std::vector<std::deque<uint64_t>>(caps.size())};
  std::vector<uint64_t> seen;
  uint64_t next = 0;
  for (int step = 0; step < 4000; ++step) {
    const int op = static_cast<int>(rng() % 10);
    const int list = static_cast<int>(rng() % caps.size());
    if (op < 5) {  // push a new id, or (1 in 3) an old one, which moves
      const uint64_t id =
          !seen.empty() && rng() % 3 == 0 ? seen[rng() % seen.size()] : make_id(next++);
      seen.push_back(id);
      g.Push(list, id);
      m.Push(list, id);
    } else if (op < 8 && !seen.empty()) {  // erase (present or not)
      const uint64_t id = seen[rng() % seen.size()];
      REQUIRE(g.Erase(id) == m.Erase(id));
    } else if (op == 8) {
      g.PopOldest(list);
      if (!m.lists[list].empty()) m.lists[list].pop_front();
    } else {  // a burst: erase every other id of a list, leaving holes all along its ring
      std::vector<uint64_t> of(m.lists[list].begin(), m.lists[list].end());
      for (size_t i = 0; i < of.size(); i += 2) REQUIRE(g.Erase(of[i]) == m.Erase(of[i]));
    }
    if (seen.size() > 512) seen.erase(seen.begin(), seen.begin() + 256);
    CheckSame(g, m, seen);
  }
}

TEST_CASE("GhostList: bounded FIFO, a pushed id already there becomes the newest", "[policy]") {
  GhostList g(3);
  for (uint64_t id : {1, 2, 3}) g.Push(id);
  g.Push(1);  // moves: 2 3 1
  CHECK(g.Oldest() == 2u);
  g.Push(4);  // drops 2
  CHECK_FALSE(g.Contains(2));
  CHECK(g.Contains(1));
  CHECK(g.size() == 3);
  CHECK(g.Erase(3));
  CHECK_FALSE(g.Erase(3));
  CHECK(g.Oldest() == 1u);
  g.PopOldest();
  CHECK(g.Oldest() == 4u);
  GhostList none(0);
  none.Push(7);
  CHECK(none.size() == 0);
  CHECK_FALSE(none.Oldest().has_value());
}

}  // namespace
}  // namespace kvtier::internal
