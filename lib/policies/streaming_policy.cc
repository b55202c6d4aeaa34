// streaming: keeps each sequence's attention sinks and recent window, demotes the middle first
// (after StreamingLLM, Xiao et al., ICLR'24).
//
// A block's depth in its prefix chain comes from OnLink (root = 0). The first `sinks` blocks of a
// chain (depth < sinks) are sinks; a newly linked block is in its sequence's window, and pushes
// the block `window` positions above it out of the window into the middle. Three LRU lists:
// middle, window, sinks; the victim is the least recently used evictable block of the first
// non-empty class in that order. So while any middle block can go, no sink or window block is
// demoted: the tier keeps what StreamingLLM keeps, yet nothing is lost: a demoted middle block
// still exists below and is promoted back when matched (docs/policies.md). A chain whose parent
// is not in this tier starts again at depth 0 (a tier's own view of the sequence).
// Blocks in the middle are inner blocks of their chains; where the cache may not drop them (no
// tier below to demote to: the prefix rule), the search parks each one it is refused, until its
// last linked child leaves the tier; so a search is O(1) amortised instead of a walk past every
// middle block. Parked blocks are still offered when nothing else can go.
// Cost: access and victim O(1) amortised; a link walks `window` parents up, O(window). Pinned
// entries leave the lists and return as most recent when unpinned.
// Parameters: sinks (default 1, 0..1024), window (default 8, 0..65536), both in blocks.
#include <cstdint>
#include <vector>

#include "kvtier/policy.h"
#include "lib/policies/child_links.h"
#include "lib/policies/policy_params.h"
#include "lib/policies/slot_list.h"
#include "lib/policies/withhold_state.h"

namespace kvtier {
namespace {

using internal::ChildLinks;
using internal::SlotLists;
using internal::WithholdState;

class StreamingPolicy final : public EvictionPolicy {
 public:
  static absl::StatusOr<std::unique_ptr<EvictionPolicy>> Create(const PolicyContext& ctx) {
    if (absl::Status s = CheckPolicyParams("streaming", ctx.params, {"sinks", "window"}); !s.ok()) {
      return s;
    }
    absl::StatusOr<uint32_t> sinks =
        internal::ParamUint("streaming", ctx.params, "sinks", 1, 0, 1024);
    if (!sinks.ok()) return sinks.status();
    absl::StatusOr<uint32_t> window =
        internal::ParamUint("streaming", ctx.params, "window", 8, 0, 65536);
    if (!window.ok()) return window.status();
    return std::unique_ptr<EvictionPolicy>(
        new StreamingPolicy(ctx.capacity_slots, *sinks, *window));
  }

  void OnInsert(SlotId s) override {
    nodes_[s] = Node{};
    Classify(s, 0);
  }

  void OnLink(SlotId s, SlotId parent) override {
    links_.Link(s, parent);
    Classify(s, nodes_[parent].depth + 1);
    // The block `window` positions up leaves the window (unless it is a sink).
    SlotId up = s;
    for (uint32_t i = 0; i < window_ && up != ChildLinks::kNone; ++i) up = links_.Parent(up);
    if (up != ChildLinks::kNone && nodes_[up].cls == kWindow) SetClass(up, kMiddle);
  }

  void OnAccess(SlotId s) override {
    if (nodes_[s].state.Defer()) return;  // pinned or withheld: comes back as recent
    if (lists_.ListOf(s) != kParked) lists_.MoveToFront(nodes_[s].cls, s);
  }
  void OnRemove(SlotId s) override {
    lists_.Remove(s);
    nodes_[s].state.Reset();
    if (const SlotId p = links_.Remove(s); p != ChildLinks::kNone && lists_.ListOf(p) == kParked) {
      lists_.Remove(p);
      lists_.PushBack(nodes_[p].cls, p);  // the next in line: its cold branch goes on
    }
  }
  void OnPin(SlotId s) override {
    nodes_[s].state.Pin();
    lists_.Remove(s);
  }
  void OnUnpin(SlotId s) override {
    if (nodes_[s].state.Unpin()) lists_.PushFront(nodes_[s].cls, s);
  }
  // Withheld (a prefix-kept block the cache took out of the candidates): out of its list, back at
  // its class's cold end where it was, or at the recent end if it was used or reclassified.
  bool OnWithhold(SlotId s) override {
    lists_.Remove(s);
    nodes_[s].state.Withhold();
    return true;
  }
  void OnRestore(SlotId s) override {
    Node& n = nodes_[s];
    switch (n.state.Restore()) {
      case WithholdState::Place::kFront:
        return lists_.PushFront(n.cls, s);
      case WithholdState::Place::kBack:
        return lists_.PushBack(n.cls, s);
      case WithholdState::Place::kNowhere:
        return;  // relinked on unpin
    }
  }

  std::optional<SlotId> PickVictim(absl::FunctionRef<bool(SlotId)> can_evict) override {
    for (const uint16_t cls : {kMiddle, kWindow, kSink}) {
      for (SlotId s = lists_.Back(cls); s != SlotLists::kNil;) {
        const SlotId newer = lists_.Newer(s);
        if (can_evict(s)) return s;
        if (links_.children(s) > 0) {  // refused while its children are here: park it
          lists_.Remove(s);
          lists_.PushFront(kParked, s);
        }
        s = newer;
      }
    }
    for (SlotId s = lists_.Back(kParked); s != SlotLists::kNil; s = lists_.Newer(s)) {
      if (can_evict(s)) return s;
    }
    return std::nullopt;
  }

 private:
  static constexpr uint16_t kMiddle = 0;
  static constexpr uint16_t kWindow = 1;
  static constexpr uint16_t kSink = 2;
  static constexpr uint16_t kParked = 3;  // refused inner blocks, any class
  struct Node {
    uint32_t depth = 0;
    uint16_t cls = kWindow;
    WithholdState state;
  };

  StreamingPolicy(uint32_t capacity, uint32_t sinks, uint32_t window)
      : sinks_(sinks), window_(window), lists_(capacity, 4), links_(capacity), nodes_(capacity) {}
  void Classify(SlotId s, uint32_t depth) {
    nodes_[s].depth = depth;
    SetClass(s, depth < sinks_ ? kSink : window_ > 0 ? kWindow : kMiddle);
  }
  void SetClass(SlotId s, uint16_t cls) {
    Node& n = nodes_[s];
    const bool listed = lists_.Linked(s);
    n.cls = cls;
    // Pinned or withheld: a move to the front, deferred to its return.
    if (n.state.Defer() || lists_.ListOf(s) == kParked) return;
    if (listed) {
      lists_.MoveToFront(cls, s);  // keeps its recency as well as a move can: most recent
    } else {
      lists_.PushFront(cls, s);
    }
  }

  const uint32_t sinks_;
  const uint32_t window_;
  SlotLists lists_;  // kMiddle, kWindow, kSink, kParked; front: most recent
  ChildLinks links_;
  std::vector<Node> nodes_;
};

}  // namespace

KVTIER_REGISTER_POLICY("streaming", StreamingPolicy);

}  // namespace kvtier
