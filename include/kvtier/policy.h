// EvictionPolicy: ranks the entries of one tier so the cache can pick what to evict.
//
// A policy only ranks; it never moves bytes, never sees keys or tiers, and owns no lock. Each tier
// of each Cache has its own instance, and the cache calls it under the tier's lock, one call at a
// time. Entries are the tier's slot ids, dense in [0, capacity_slots): keep per-slot state in
// vectors.
//
// Call protocol (the cache guarantees it; a policy may rely on it):
//   OnInsert(s) once when slot s starts holding a block, OnRemove(s) once when it stops; between
//   them any number of OnAccess(s) (the block was matched), and OnPin(s)/OnUnpin(s) when the slot
//   gains its first pin or loses its last (pinned slots are never evictable: a policy may drop them
//   from its queues until unpinned). OnRemove(s) may come while s is pinned. PickVictim is asked
//   for the next entry to evict, with a predicate that says which entries may go *now* (pinned,
//   Filling and prefix-protected entries may not); it must return a slot it was told of by OnInsert
//   and for which the predicate is true, or nullopt when none is. The cache may then ask
//   DemoteVictim(victim), and calls OnRemove(victim) before inserting anything else. OnUpperCopy
//   says when a tier above holds the block too.
// Cost: state each policy's victim cost in its file; the built-ins are O(1) amortised.
// Registration: KVTIER_REGISTER_POLICY("name", Class) in the policy's .cc (Class constructible from
// const PolicyContext&), or RegisterPolicy() at run time. Options name policies per tier.
#ifndef KVTIER_POLICY_H_
#define KVTIER_POLICY_H_

#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "absl/functional/function_ref.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"

namespace kvtier {

using SlotId = uint32_t;

// key=value strings from Options, parsed and validated by the policy's factory.
using PolicyParams = std::map<std::string, std::string>;

struct PolicyContext {
  uint32_t capacity_slots = 0;  // slot ids are in [0, capacity_slots)
  PolicyParams params;          // unknown keys: the factory returns kInvalidArgument
  // Slots of the tiers below that this tier's victims go on to (0: none, a victim is dropped).
  uint64_t capacity_below_slots = 0;
};

class EvictionPolicy {
 public:
  virtual ~EvictionPolicy() = default;
  // Called right before OnInsert(slot) with a stable 64-bit id of the block (the same block gets
  // the same id whenever it comes back; the cache passes the low half of its BlockKey), for
  // policies that remember evicted blocks (ARC's and S3-FIFO's ghost lists). Optional for callers:
  // a policy must work, with less history, when it never comes.
  virtual void OnInsertKey(SlotId /*slot*/, uint64_t /*block_id*/) {}
  virtual void OnInsert(SlotId slot) = 0;
  // Called by a simulation (kvtier-replay --mode flat) when block `block_id` is looked up and is
  // not in the tier, before the victim that makes room for it is chosen: the next OnInsertKey
  // brings it. Lets a policy that adapts on a ghost hit (ARC) adapt before choosing, as the
  // paper does. The cache does not call it: it takes slots before it knows their keys.
  virtual void OnMissKey(uint64_t /*block_id*/) {}
  virtual void OnAccess(SlotId slot) = 0;
  virtual void OnRemove(SlotId slot) = 0;
  virtual void OnPin(SlotId /*slot*/) {}
  virtual void OnUnpin(SlotId /*slot*/) {}
  // Called right after OnInsert(slot) when the block's parent (the block it is chained from) also
  // resides in this tier, at slot `parent`. Prefix-aware policies build their tree from it; the
  // link ends when either slot is removed.
  virtual void OnLink(SlotId /*slot*/, SlotId /*parent*/) {}
  // The engine's importance score for the block in `slot` (Cache::Hint): a priority, an
  // accumulated attention mass. Higher means keep longer; policies that rank otherwise ignore it.
  // A NaN score withdraws the engine's score (a Hint with a duration that has passed): a policy
  // that keeps a per-block priority goes back to its default for the block (`priority` does).
  virtual void OnHint(SlotId /*slot*/, double /*score*/) {}
  virtual std::optional<SlotId> PickVictim(absl::FunctionRef<bool(SlotId)> can_evict) = 0;
  // Optional advice on the victim PickVictim just returned, asked right before OnRemove(victim)
  // and only when the cache would otherwise copy it into the tier below (its only copy, a tier
  // that writes victims back) and may drop it (no block chained from it is cached: the prefix
  // rule). Return false for a block not expected back (a dead request tip): it is dropped, not
  // demoted, and counted in TierStats::drops, so it spends no space below. The default demotes
  // every such victim.
  virtual bool DemoteVictim(SlotId /*slot*/) { return true; }
  // Optional: whether a tier above this one holds a Ready copy of the block in `slot` that it
  // would write back (demote) when evicting it. true when one first does (a promotion from here
  // landed, or this copy was written below one), false when the last such copy goes (the tier
  // above evicted it: for this tier that is the block's demotion, though no bytes moved). While
  // true this copy is a spare: evicting it loses nothing (the block stays cached above, and
  // OnAccess here means a copy above was read). It never comes while victims are dropped
  // (Options::demote_on_evict off): then the copy below is the one that stays. Comes only between
  // OnInsert(slot) and OnRemove(slot), never for the top tier, never twice with the same value.
  // The default ignores it.
  virtual void OnUpperCopy(SlotId /*slot*/, bool /*held_above*/) {}

  // Optional, for speed. After PickVictim passed over `slot` because the prefix rule keeps it (the
  // block's only copy, with children still cached, in a tier that cannot write victims back), the
  // cache offers to withhold it: return true to take it out of the candidates until
  // OnRestore(slot), so that later searches do not walk past it again and again. OnRestore should
  // put it back where it would be had it never left: it was at the cold end when withheld, unless
  // it was accessed or pinned meanwhile (OnAccess, OnPin and OnUnpin still come while it is
  // withheld). OnRemove(slot) may come instead of OnRestore. The default declines: such a block
  // stays a candidate and every search that reaches it passes over it.
  virtual bool OnWithhold(SlotId /*slot*/) { return false; }
  virtual void OnRestore(SlotId /*slot*/) {}
};

using PolicyFactory =
    std::function<absl::StatusOr<std::unique_ptr<EvictionPolicy>>(const PolicyContext&)>;

// Adds `name` to the process-wide registry. kAlreadyExists if taken, kInvalidArgument if empty or
// factory is null. Thread-safe.
absl::Status RegisterPolicy(const std::string& name, PolicyFactory factory);

// Names of all registered policies, sorted. Thread-safe.
std::vector<std::string> ListPolicies();

// A new instance of policy `name`: kNotFound (listing the registered names) for an unknown name,
// or the factory's error for bad parameters.
absl::StatusOr<std::unique_ptr<EvictionPolicy>> CreatePolicy(const std::string& name,
                                                             const PolicyContext& context);

// Rejects any key of `params` not in `known` with kInvalidArgument naming it and the known keys.
// For factories.
absl::Status CheckPolicyParams(const std::string& policy, const PolicyParams& params,
                               const std::vector<std::string>& known);

namespace internal {
// Registers at static-initialisation time; returns a dummy for the macro below.
bool RegisterPolicyAtStartup(const char* name, PolicyFactory factory);
}  // namespace internal

}  // namespace kvtier

// Registers Class as `name`. Class is an EvictionPolicy with
//   static absl::StatusOr<std::unique_ptr<EvictionPolicy>> Create(const PolicyContext&);
// which validates the parameters. Use once, at namespace scope (where Class is visible), in the .cc
// file defining Class. The macro defines `bool kvtier_policy_anchor_<Class>` in that namespace:
// referencing it from another file keeps the registration when Class sits in a static library.
#define KVTIER_REGISTER_POLICY(name, Class)                                        \
  bool kvtier_policy_anchor_##Class = ::kvtier::internal::RegisterPolicyAtStartup( \
      name, [](const ::kvtier::PolicyContext& ctx) { return Class::Create(ctx); })

#endif  // KVTIER_POLICY_H_
