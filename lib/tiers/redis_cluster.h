// RedisCluster: a Redis Cluster client on hiredis (Debian 12 ships no hiredis-cluster), for the
// remote tier. Keeps a slot map (CRC16 key slot -> master, from CLUSTER SLOTS), routes each key
// to its master, pipelines every command of a batch per node (all nodes written before any is
// read, so the nodes work in parallel), and follows MOVED (slot map updated, topology refreshed)
// and ASK (ASKING + the command, once) redirections.
//
// Connections: a pool of hiredis contexts per node (redisContext, TCP_NODELAY), used with
// non-blocking sendmsg/recvmsg and ppoll bounded by the batch deadline (one sendmsg per node's
// pipeline; GET values received straight into their targets). A connection that fails or times out
// mid-pipeline is closed, never reused (its replies would be out of step). A node that cannot be
// reached is retried after an exponential backoff (reconnect_backoff_min doubling to _max); until
// then its keys fail at once with kUnavailable instead of waiting for a connect timeout on every
// batch.
//
// Results are per key: a key whose node failed, timed out or redirected too often gets an error
// status (kUnavailable, kDeadlineExceeded, kInternal), the others their replies. A batch never
// waits past its deadline (plus one connect timeout when it has to open a connection), whatever
// the nodes send: past the deadline only what had already arrived is read.
//
// Hostile replies: nothing a node sends is trusted for its size. A line (status, error, integer,
// length) longer than 64 KiB, a reply of more than 2^20 objects or of more than
// max_reply_bytes, a GetInto value announced longer than its target: each fails its key with
// kUnavailable as soon as it is seen, before it is buffered (and the rest of that node's
// pipeline too: the connection is closed, out of step).
//
// Thread safety: every method may be called from any thread concurrently; batches on different
// threads use different connections. No callback: the calls block the calling thread.
#ifndef KVTIER_LIB_TIERS_REDIS_CLUSTER_H_
#define KVTIER_LIB_TIERS_REDIS_CLUSTER_H_

#include <chrono>
#include <cstdint>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"

namespace kvtier::internal {

struct RedisClusterConfig {
  // "host:port" of one or more cluster nodes; the rest of the topology is discovered from them.
  std::vector<std::string> seeds;
  std::string password;  // AUTH <password> on every new connection when non-empty
  std::chrono::milliseconds connect_timeout{500};
  uint32_t max_connections_per_node = 8;  // idle connections kept per node; more open on demand
  uint32_t max_redirects = 5;             // MOVED/ASK hops per key per batch
  std::chrono::milliseconds reconnect_backoff_min{20};
  std::chrono::milliseconds reconnect_backoff_max{2000};
  // The most bytes one reply may bring (its whole RESP encoding), other than a GetInto value,
  // which its target bounds. A longer reply, or a bulk string announcing more, is refused as it
  // arrives, before it is buffered.
  uint64_t max_reply_bytes = 64ull << 20;
};

struct RedisClusterStats {
  uint64_t commands = 0;  // commands sent (ASKING and topology queries excluded)
  uint64_t moved = 0;     // MOVED replies followed
  uint64_t ask = 0;       // ASK replies followed
  uint64_t topology_refreshes = 0;
  uint64_t connects = 0;  // connections opened
  uint64_t connect_failures = 0;
  uint64_t timeouts = 0;  // node pipelines that ran past their deadline
  uint64_t errors = 0;    // per-key failures of any other kind (I/O, protocol, server)
  // GetInto value bytes copied through a connection's buffer rather than received straight into
  // their target: those of values of another length than their target (shorter ones), and of
  // the end of a read that brought a value's first bytes along with an earlier reply.
  uint64_t value_bytes_copied = 0;
};

class RedisCluster {
 public:
  using Clock = std::chrono::steady_clock;

  // Connects to a seed, reads the topology (CLUSTER SLOTS) and checks that every slot is served.
  // kInvalidArgument for a malformed seed ("host:port"), kUnavailable when no seed answers (the
  // message lists each seed's error), kFailedPrecondition when the cluster does not cover all
  // 16384 slots or a node refuses AUTH.
  static absl::StatusOr<std::unique_ptr<RedisCluster>> Connect(RedisClusterConfig config);
  ~RedisCluster();
  RedisCluster(const RedisCluster&) = delete;
  RedisCluster& operator=(const RedisCluster&) = delete;

  // GET of each key: nullopt for a missing key. `out[i]` is the reply for keys[i].
  std::vector<absl::StatusOr<std::optional<std::string>>> Get(std::span<const std::string> keys,
                                                              Clock::time_point deadline);
  // Where GetInto puts a value: its first head_len bytes at head, the rest (up to body_len) at
  // body. Bytes beyond head_len + body_len are not copied anywhere.
  struct ReadTarget {
    char* head = nullptr;
    size_t head_len = 0;
    char* body = nullptr;
    size_t body_len = 0;
  };
  // GET of each key straight into caller memory (no allocation per value): the value's whole
  // length, or nullopt for a missing key. A value of exactly the target's length (head_len +
  // body_len) is received off the socket into the target (no copy); a longer one is refused
  // (kUnavailable); a shorter one is copied and its length returned (compare it with what you
  // expected). Nothing is written past a target; after a reply other than a value of the
  // target's length (nil, an error, another length) the target's bytes are undefined.
  std::vector<absl::StatusOr<std::optional<size_t>>> GetInto(std::span<const std::string> keys,
                                                             std::span<const ReadTarget> targets,
                                                             Clock::time_point deadline);
  // EXISTS of each key.
  std::vector<absl::StatusOr<bool>> Exists(std::span<const std::string> keys,
                                           Clock::time_point deadline);
  // SET keys[i] values[i], with EX ttl_seconds when ttl_seconds > 0.
  std::vector<absl::Status> Set(std::span<const std::string> keys,
                                std::span<const std::string_view> values, uint32_t ttl_seconds,
                                Clock::time_point deadline);
  // A value sent as two parts back to back (a header and a payload from different memory), with
  // no copy to join them: values of 4 KiB and more are written from the caller's memory.
  struct ValueParts {
    std::string_view head;
    std::string_view body;
  };
  std::vector<absl::Status> SetParts(std::span<const std::string> keys,
                                     std::span<const ValueParts> values, uint32_t ttl_seconds,
                                     Clock::time_point deadline);
  // DEL of each key (whether it existed is not reported).
  std::vector<absl::Status> Del(std::span<const std::string> keys, Clock::time_point deadline);

  // Re-reads CLUSTER SLOTS from any reachable node (after a failover, say). Batches do this
  // themselves on MOVED and on connection failures.
  absl::Status RefreshTopology();

  // "host:port" of the master serving `slot` in the current slot map ("" if none).
  std::string NodeForSlot(uint16_t slot) const;
  RedisClusterStats stats() const;

  // The cluster hash slot of a key: CRC16-XMODEM of the key (or of its {hash tag}) mod 16384.
  static uint16_t KeySlot(std::string_view key);

 private:
  struct Impl;
  explicit RedisCluster(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

}  // namespace kvtier::internal

#endif  // KVTIER_LIB_TIERS_REDIS_CLUSTER_H_
