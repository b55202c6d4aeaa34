// GhostLists / GhostList: the ids of recently evicted blocks, oldest dropped first (ARC's B1/B2,
// S3-FIFO's ghost queue), built for the hot path of a policy that looks ghosts up on every miss.
//
// Ids are the 64-bit block ids of EvictionPolicy::OnInsertKey. GhostLists holds a few disjoint
// bounded FIFOs (an id is in at most one) behind one index, so "is it a ghost, and of which list"
// costs one lookup. O(1) push, erase, lookup and pop:
// - each list's ids sit in a ring in push order (a `live` byte per position; an erased id leaves a
//   hole the oldest end skips, and the ring is compacted in place when its positions run out, at
//   most once per capacity/2 pushes to that list);
// - one open-addressing table (linear probing, backward-shift deletion, load < 2/3) maps an id to
//   its list and ring position, 16 bytes an entry: one cache line a lookup in the common case.
// Everything is allocated by the constructor: pushing, erasing and popping allocate nothing.
// Not thread-safe: a policy is called under its tier's lock.
#ifndef KVTIER_LIB_POLICIES_GHOST_LIST_H_
#define KVTIER_LIB_POLICIES_GHOST_LIST_H_

#include <bit>
#include <cstdint>
#include <initializer_list>
#include <limits>
#include <optional>
#include <vector>

namespace kvtier::internal {

class GhostLists {
 public:
  static constexpr int kNone = -1;
  // The most ids one list may hold: its ring's positions (about 1.5x) must fit a 32-bit position
  // below the empty marker.
  static constexpr uint64_t kMaxCapacity = uint64_t{1} << 30;

  // One list per capacity; list i holds at most capacities[i] ids (at most kMaxCapacity: the
  // caller checks), pushing one more drops its oldest. A capacity of 0 keeps nothing.
  explicit GhostLists(std::initializer_list<uint32_t> capacities) {
    uint64_t total = 0;
    for (const uint32_t c : capacities) {
      Ring r;
      r.capacity = c;
      r.mask = std::bit_ceil(uint64_t{c} + c / 2 + 1) - 1;
      if (c > 0) {
        r.ids.resize(r.mask + 1);
        r.live.resize(r.mask + 1);
      }
      rings_.push_back(std::move(r));
      total += c;
    }
    table_mask_ = std::bit_ceil(total + total / 2 + 1) - 1;
    table_.resize(table_mask_ + 1);
  }

  uint32_t size(int list) const { return rings_[list].size; }
  // The list holding id, or kNone.
  int Find(uint64_t id) const {
    if (count_ == 0) return kNone;
    const Entry& e = table_[Slot(id)];
    return e.pos == kEmpty ? kNone : static_cast<int>(e.list);
  }
  bool Contains(int list, uint64_t id) const { return Find(id) == list; }

  // Adds id as the newest of `list` (an id already in a list leaves it first).
  void Push(int list, uint64_t id) {
    Ring& r = rings_[list];
    if (r.capacity == 0) {
      Erase(id);
      return;
    }
    uint64_t e = Slot(id);
    if (table_[e].pos != kEmpty) {  // present: its old position becomes a hole
      Ring& old = rings_[table_[e].list];
      old.live[table_[e].pos] = 0;
      --old.size;
      --count_;
      SkipHoles(old);
    }
    if (r.size == r.capacity) {
      PopOldest(list);
      e = Slot(id);  // the pop may have shifted entries
    }
    if (r.head - r.tail == r.mask + 1) Compact(r);
    const uint32_t pos = static_cast<uint32_t>(r.head++ & r.mask);
    r.ids[pos] = id;
    r.live[pos] = 1;
    table_[e] = Entry{.id = id, .pos = pos, .list = static_cast<uint32_t>(list)};
    ++r.size;
    ++count_;
  }

  // Removes id from its list; returns that list, or kNone when it was in none.
  int Erase(uint64_t id) {
    if (count_ == 0) return kNone;
    const uint64_t e = Slot(id);
    if (table_[e].pos == kEmpty) return kNone;
    const int list = static_cast<int>(table_[e].list);
    Ring& r = rings_[list];
    r.live[table_[e].pos] = 0;
    --r.size;
    --count_;
    RemoveEntry(e);
    SkipHoles(r);
    return list;
  }

  // The oldest id of `list`, or nullopt when it is empty.
  std::optional<uint64_t> Oldest(int list) const {
    const Ring& r = rings_[list];
    if (r.size == 0) return std::nullopt;
    return r.ids[r.tail & r.mask];
  }
  // Drops the oldest id of `list`; no-op when empty.
  void PopOldest(int list) {
    Ring& r = rings_[list];
    if (r.size == 0) return;
    const uint32_t pos = static_cast<uint32_t>(r.tail & r.mask);
    r.live[pos] = 0;
    --r.size;
    --count_;
    RemoveEntry(Slot(r.ids[pos]));
    SkipHoles(r);
  }

 private:
  static constexpr uint32_t kEmpty = std::numeric_limits<uint32_t>::max();
  struct Entry {
    uint64_t id = 0;
    uint32_t pos = kEmpty;  // position in its list's ring; kEmpty: a free entry
    uint32_t list = 0;
  };
  struct Ring {
    uint32_t capacity = 0;
    uint32_t size = 0;
    uint64_t mask = 0;  // positions - 1 (a power of two, > capacity * 3 / 2)
    uint64_t head = 0;  // the next push's position (not masked)
    uint64_t tail = 0;  // the oldest live position, or head when empty
    std::vector<uint64_t> ids;
    std::vector<uint8_t> live;
  };

  // The home entry: murmur3's finaliser, as ids may be small or dense integers (a trace's).
  uint64_t Home(uint64_t id) const {
    id ^= id >> 33;
    id *= 0xff51afd7ed558ccdull;
    id ^= id >> 33;
    id *= 0xc4ceb9fe1a85ec53ull;
    id ^= id >> 33;
    return id & table_mask_;
  }
  // The entry holding id, or the free entry where it would go.
  uint64_t Slot(uint64_t id) const {
    uint64_t e = Home(id);
    while (table_[e].pos != kEmpty && table_[e].id != id) e = (e + 1) & table_mask_;
    return e;
  }
  // Frees entry e, shifting back the entries of its probe run that may move (no tombstones).
  void RemoveEntry(uint64_t e) {
    for (uint64_t next = (e + 1) & table_mask_; table_[next].pos != kEmpty;
         next = (next + 1) & table_mask_) {
      // next may fill e unless its home lies in the cyclic interval (e, next].
      if (((next - Home(table_[next].id)) & table_mask_) >= ((next - e) & table_mask_)) {
        table_[e] = table_[next];
        e = next;
      }
    }
    table_[e].pos = kEmpty;
  }
  static void SkipHoles(Ring& r) {
    while (r.tail != r.head && !r.live[r.tail & r.mask]) ++r.tail;
  }
  // Moves the live ids of r to consecutive positions from its oldest on, order kept.
  void Compact(Ring& r) {
    uint64_t to = r.tail;
    for (uint64_t from = r.tail; from != r.head; ++from) {
      const uint32_t src = static_cast<uint32_t>(from & r.mask);
      if (!r.live[src]) continue;
      const uint32_t dst = static_cast<uint32_t>(to++ & r.mask);
      if (dst == src) continue;
      r.ids[dst] = r.ids[src];
      r.live[dst] = 1;
      r.live[src] = 0;
      table_[Slot(r.ids[dst])].pos = dst;
    }
    r.head = to;
  }

  std::vector<Ring> rings_;
  std::vector<Entry> table_;
  uint64_t table_mask_ = 0;  // table entries - 1 (a power of two, > total capacity * 3 / 2)
  uint32_t count_ = 0;       // ids in all lists
};

// One bounded FIFO of ids: GhostLists with a single list.
class GhostList {
 public:
  explicit GhostList(uint32_t capacity) : lists_({capacity}) {}
  uint32_t size() const { return lists_.size(0); }
  bool Contains(uint64_t id) const { return lists_.Find(id) == 0; }
  // Adds id as the newest (an id already present becomes the newest).
  void Push(uint64_t id) { lists_.Push(0, id); }
  // Removes id; false when it was not there.
  bool Erase(uint64_t id) { return lists_.Erase(id) == 0; }
  std::optional<uint64_t> Oldest() const { return lists_.Oldest(0); }
  void PopOldest() { lists_.PopOldest(0); }

 private:
  GhostLists lists_;
};

}  // namespace kvtier::internal

#endif  // KVTIER_LIB_POLICIES_GHOST_LIST_H_
