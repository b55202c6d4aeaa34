// WithholdState: one slot's pinned/withheld state, for list policies that accept
// EvictionPolicy::OnWithhold and keep their slots in recency lists (lru, priority, streaming).
//
// A slot is away from its list while pinned or withheld. A use while away (an access, an unpin, a
// reclassification) is deferred: the slot comes back as most recent. A withheld slot is restored
// where it was, at the cold end, unless such a use came meanwhile; a slot still pinned at its
// restore comes back on its unpin. The policy owns the lists and asks this type where a slot
// goes. One byte, so a policy can keep it inside its list node. Not thread-safe: a policy is
// called under its tier's lock.
#ifndef KVTIER_LIB_POLICIES_WITHHOLD_STATE_H_
#define KVTIER_LIB_POLICIES_WITHHOLD_STATE_H_

namespace kvtier::internal {

class WithholdState {
 public:
  // Where OnRestore puts the slot back.
  enum class Place { kNowhere, kFront, kBack };

  // OnInsert and OnRemove: in no state.
  void Reset() { *this = WithholdState{}; }
  bool away() const { return pinned_ || withheld_; }

  // A use of the slot (an access, a move to another list). True when it is away: the caller
  // leaves it be and the use moves it to the recent end when it comes back.
  bool Defer() {
    if (away()) touched_ = true;
    return away();
  }
  // OnPin: the caller takes the slot out of its list.
  void Pin() { pinned_ = true; }
  // OnUnpin: true when the caller puts the slot back (as most recent) now; false while withheld.
  bool Unpin() {
    pinned_ = false;
    touched_ = true;
    return !withheld_;
  }
  // OnWithhold: the caller takes the slot out of its list.
  void Withhold() {
    withheld_ = true;
    touched_ = false;
  }
  // OnRestore.
  Place Restore() {
    withheld_ = false;
    if (pinned_) return Place::kNowhere;  // back on its unpin
    return touched_ ? Place::kFront : Place::kBack;
  }

 private:
  bool pinned_ : 1 = false;
  bool withheld_ : 1 = false;  // OnWithhold accepted, not yet restored
  bool touched_ : 1 = false;   // used or unpinned since withheld
};

}  // namespace kvtier::internal

#endif  // KVTIER_LIB_POLICIES_WITHHOLD_STATE_H_
