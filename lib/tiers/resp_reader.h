// The Redis client's reply side that sees only bytes: RESP replies parsed from what a connection
// received (hiredis' reader, with kvtier's reply functions), each bounded in memory whatever the
// peer sends, and what kvtier reads out of them (redirections, the CLUSTER SLOTS map). The socket
// side (deadlines, recv) is RedisCluster's (redis_cluster.cc); being apart from it, this part is
// fed bytes directly by the tests and the fuzzers (test/fuzz/resp_reader_fuzz.cc).
//
// Hostile replies: a line (status, error, integer, length) longer than kMaxLineBytes, a bulk
// string announcing more than the reply may hold, a reply of more than kMaxReplyObjects objects
// (or an array of negative length), or more than its byte limit is refused (kUnavailable) as soon
// as it is seen, before it is buffered. The reader is then out of step: discard it.
//
// Thread safety: a reader and its ReplyParser belong to one thread at a time (one connection).
// SetUpRespReader may be called from any thread.
#ifndef KVTIER_LIB_TIERS_RESP_READER_H_
#define KVTIER_LIB_TIERS_RESP_READER_H_

#include <cstddef>
#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "lib/tiers/redis_cluster.h"

// hiredis' types (only resp_reader.cc and redis_cluster.cc include hiredis).
struct redisReader;
struct redisReply;

namespace kvtier::internal {

// The most objects (strings, integers, arrays, nils) one reply may make: far above any reply
// kvtier asks for (CLUSTER SLOTS of 16384 one-slot ranges with a replica each makes about
// 200,000), far below what would exhaust memory. An array announcing more is refused before
// hiredis allocates its element pointers.
inline constexpr int64_t kMaxReplyObjects = 1 << 20;
// The longest line (status, error, integer, or the length of a bulk or an array) before its CRLF:
// hiredis scans the whole unterminated line again on every read, so a peer streaming one would
// cost time quadratic in its length.
inline constexpr size_t kMaxLineBytes = 64 << 10;
// Bytes read from the socket at a time (a reply's byte limit allows one such read of the next).
inline constexpr size_t kReadChunkBytes = 64 << 10;
// Slots of a Redis Cluster.
inline constexpr int kNumSlots = 16384;

// One reply being read: the reader's privdata while its ReplyParser lives, for kvtier's reply
// functions (resp_reader.cc).
struct ReplyContext {
  const RedisCluster::ReadTarget* target = nullptr;
  size_t value_bytes = 0;  // the whole value's length, once it went to the target
  bool filled = false;
  bool too_long = false;                    // the value was longer than the target: refused
  int64_t objects_left = kMaxReplyObjects;  // below 0: the reply made too many, refused
};

struct ReplyDeleter {
  void operator()(redisReply* r) const;  // freeReplyObject, but never for a sunk reply
};
using ReplyPtr = std::unique_ptr<redisReply, ReplyDeleter>;

// Installs kvtier's reply functions on `r` (a connection's reader, or redisReaderCreate()'s) and
// makes it keep its buffer between replies. Once per reader, before its first ReplyParser.
void SetUpRespReader(redisReader* r);

// Whether `r` is the marker reply of a value that went to its ReadTarget (ReplyParser).
bool IsSunkReply(const redisReply* r);
// The marker reply, for a value that went to its ReadTarget another way (read off the socket).
ReplyPtr SunkReply();

// One reply being read from a reader set up by SetUpRespReader: Poll() until it has the reply,
// Feed() the connection's bytes meanwhile. With a target, a top-level bulk string goes there (its
// first head_len bytes to head, the rest to body; no allocation), its reply is the sunk marker
// (IsSunkReply) and value_bytes() its length; a longer value than the target is refused.
// Not copyable or movable: the reader points at it while it lives.
class ReplyParser {
 public:
  // `addr` names the peer in errors; max_reply_bytes bounds a reply without a target (a target
  // bounds its own: its length, plus kMaxLineBytes for the length line or an error reply).
  ReplyParser(redisReader* r, absl::string_view addr, uint64_t max_reply_bytes,
              const RedisCluster::ReadTarget* target = nullptr);
  ~ReplyParser();
  ReplyParser(const ReplyParser&) = delete;
  ReplyParser& operator=(const ReplyParser&) = delete;

  // The reply when the bytes fed so far hold it whole; nullptr when more are needed; kUnavailable
  // ("RedisCluster: bad reply from <addr>: ...") when what arrived is refused or malformed.
  // O(bytes buffered) at most, bounded by kMaxLineBytes for an unfinished line.
  absl::StatusOr<ReplyPtr> Poll();
  // Hands `n` more bytes of the connection to the reader (copied). kUnavailable when hiredis
  // refuses them (a reader already failed).
  absl::Status Feed(const char* p, size_t n);
  // The length of the value that went to the target, once Poll() returned its (sunk) reply.
  std::optional<size_t> value_bytes() const;

 private:
  // What hiredis holds of an unfinished reply, checked before more is read.
  absl::Status CheckPending() const;
  absl::Status BadReply(absl::string_view what) const;

  redisReader* const r_;
  const absl::string_view addr_;
  const uint64_t max_reply_bytes_;
  const uint64_t limit_;  // bytes this reply may take (see the constructor)
  uint64_t taken_;        // bytes of this reply buffered so far (at most)
  ReplyContext context_;  // r_->privdata while this parser lives
};

// "MOVED 3999 127.0.0.1:6381" / "ASK 3999 127.0.0.1:6381" (`kind` "MOVED" or "ASK"): the slot and
// the target; false when `err` is not such a redirection or is malformed (a slot outside
// [0, kNumSlots), no target).
bool ParseRedirect(absl::string_view err, absl::string_view kind, int* slot, std::string* addr);

// Server errors that a retry later may cure (cluster reconfiguring, failover under way).
bool IsTransientServerError(absl::string_view err);

// The master "host:port" of every slot, from a CLUSTER SLOTS reply of node `addr` (an empty or
// "?" host is `addr_host`, the host that was asked). kFailedPrecondition for an error reply or a
// reply that does not cover every slot, kInternal for a malformed one. O(reply + kNumSlots).
absl::StatusOr<std::vector<std::string>> ParseClusterSlots(const redisReply* r,
                                                           absl::string_view addr,
                                                           absl::string_view addr_host);

}  // namespace kvtier::internal

#endif  // KVTIER_LIB_TIERS_RESP_READER_H_
