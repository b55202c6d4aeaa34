#include "lib/tiers/resp_reader.h"

#include <hiredis/hiredis.h>

#include <algorithm>
#include <charconv>
#include <cstring>
#include <mutex>

#include "absl/strings/str_cat.h"
#include "absl/strings/string_view.h"

namespace kvtier::internal {
namespace {

// The first CRLF in [p, p + n): its '\r', or nullptr.
const char* FindCrlf(const char* p, size_t n) {
  const char* end = p + n;
  while (p < end) {
    const char* cr = static_cast<const char*>(std::memchr(p, '\r', end - p));
    if (cr == nullptr || cr + 1 == end) return nullptr;
    if (cr[1] == '\n') return cr;
    p = cr + 1;
  }
  return nullptr;
}

// The reply for a value that went to a target: a marker, never freed.
redisReply kSunkReply = {.type = REDIS_REPLY_STRING};

// hiredis' own reply functions, and ours, which count the objects of a reply (refusing one too
// many makes hiredis fail the reply) and divert a top-level bulk string into the reply's target
// when it has one (so a large value is copied once, from the reader's buffer to its
// destination, with no allocation on the way).
const redisReplyObjectFunctions* g_default_functions = nullptr;

// Counts one more object (or `n` element slots) of the reply; false when that is too many.
bool Take(const redisReadTask* task, int64_t n = 1) {
  auto* reply = static_cast<ReplyContext*>(task->privdata);
  if (reply == nullptr) return true;  // a reader outside ReplyParser (none today)
  reply->objects_left -= n;
  return reply->objects_left >= 0;
}

void* CreateString(const redisReadTask* task, char* str, size_t len) {
  if (!Take(task)) return nullptr;
  auto* reply = static_cast<ReplyContext*>(task->privdata);
  if (reply != nullptr && reply->target != nullptr && task->type == REDIS_REPLY_STRING &&
      task->parent == nullptr) {
    const RedisCluster::ReadTarget& t = *reply->target;
    // Refused when it arrived whole in one read (a longer announcement still on its way is
    // refused by CheckPending before its bytes are read).
    if (len > t.head_len + t.body_len) {
      reply->value_bytes = len;
      reply->too_long = true;
      return nullptr;
    }
    const size_t head = std::min(len, t.head_len);
    if (head > 0) std::memcpy(t.head, str, head);
    const size_t body = std::min(len - head, t.body_len);
    if (body > 0) std::memcpy(t.body, str + head, body);
    reply->value_bytes = len;
    reply->filled = true;
    return &kSunkReply;
  }
  return g_default_functions->createString(task, str, len);
}
void* CreateArray(const redisReadTask* task, int n) {
  // hiredis 0.14 hands over a length it parsed as long long and cut to int: a negative one is
  // refused too (calloc would get its wrapped size).
  if (n < 0) Take(task, kMaxReplyObjects + 1);
  if (n < 0 || !Take(task, int64_t{1} + n)) return nullptr;
  return g_default_functions->createArray(task, n);
}
void* CreateInteger(const redisReadTask* task, long long v) {  // NOLINT(runtime/int): hiredis'
  if (!Take(task)) return nullptr;
  return g_default_functions->createInteger(task, v);
}
void* CreateNil(const redisReadTask* task) {
  if (!Take(task)) return nullptr;
  return g_default_functions->createNil(task);
}
void FreeObject(void* reply) {
  if (reply != &kSunkReply) g_default_functions->freeObject(reply);
}
redisReplyObjectFunctions g_sink_functions = {CreateString, CreateArray, CreateInteger, CreateNil,
                                              FreeObject};

}  // namespace

void ReplyDeleter::operator()(redisReply* r) const {
  if (r != &kSunkReply) freeReplyObject(r);
}

bool IsSunkReply(const redisReply* r) { return r == &kSunkReply; }

ReplyPtr SunkReply() { return ReplyPtr(&kSunkReply); }

// Keeps the reader's buffer between replies (hiredis frees a large empty one, and a big value's
// buffer would be allocated and faulted in again for every reply), counts the objects of each
// reply and diverts values into targets.
void SetUpRespReader(redisReader* r) {
  static std::once_flag once;
  std::call_once(once, [&] { g_default_functions = r->fn; });
  r->maxbuf = 0;
  r->fn = &g_sink_functions;
}

ReplyParser::ReplyParser(redisReader* r, absl::string_view addr, uint64_t max_reply_bytes,
                         const RedisCluster::ReadTarget* target)
    : r_(r),
      addr_(addr),
      max_reply_bytes_(max_reply_bytes),
      // A value for a target is bounded by the target (the caller's memory for it), whatever
      // max_reply_bytes says; room for its length line, or for an error reply, beside it.
      limit_(target != nullptr ? kMaxLineBytes + target->head_len + target->body_len
                               : max_reply_bytes),
      // At most: the last read may have brought the next reply's first bytes too.
      taken_(r->len - r->pos),
      context_{.target = target} {
  r_->privdata = &context_;
}

ReplyParser::~ReplyParser() { r_->privdata = nullptr; }

absl::StatusOr<ReplyPtr> ReplyParser::Poll() {
  void* reply = nullptr;
  if (redisReaderGetReply(r_, &reply) != REDIS_OK) {
    if (context_.too_long) {
      return BadReply(absl::StrCat("a value of ", context_.value_bytes, " bytes vs at most ",
                                   context_.target->head_len + context_.target->body_len,
                                   " expected"));
    }
    if (context_.objects_left < 0) {
      return BadReply(absl::StrCat("more than ", kMaxReplyObjects,
                                   " objects (or an array of negative length)"));
    }
    return BadReply(r_->errstr);
  }
  if (reply != nullptr) return ReplyPtr(static_cast<redisReply*>(reply));
  if (absl::Status s = CheckPending(); !s.ok()) return s;
  return ReplyPtr();
}

absl::Status ReplyParser::Feed(const char* p, size_t n) {
  taken_ += n;
  if (redisReaderFeed(r_, p, n) != REDIS_OK) return BadReply(r_->errstr);
  return absl::OkStatus();
}

std::optional<size_t> ReplyParser::value_bytes() const {
  if (!context_.filled) return std::nullopt;
  return context_.value_bytes;
}

// Every line ends within kMaxLineBytes, a bulk string announces no more than it may hold, and the
// reply's bytes stay within limit_ (plus one read of the next reply's).
absl::Status ReplyParser::CheckPending() const {
  if (taken_ > limit_ + kReadChunkBytes) {
    return BadReply(absl::StrCat("reply of more than ", taken_, " bytes vs at most ", limit_));
  }
  if (r_->ridx < 0 || r_->len <= r_->pos) return absl::OkStatus();
  // hiredis keeps r->pos at the first byte of the item it waits for (past its type byte once
  // that is read): the line there must end soon.
  const char* p = r_->buf + r_->pos;
  const size_t pending = r_->len - r_->pos;
  const size_t scan = std::min(pending, kMaxLineBytes);
  const char* cr = FindCrlf(p, scan);
  if (cr == nullptr && pending > kMaxLineBytes) {
    return BadReply(absl::StrCat("a line longer than ", kMaxLineBytes, " bytes"));
  }
  if (r_->rstack[r_->ridx].type != REDIS_REPLY_STRING) return absl::OkStatus();
  // A bulk string waiting for its bytes: its announced length, checked before they come.
  constexpr size_t kMaxLengthDigits = 20;
  if (cr == nullptr) {
    if (pending > kMaxLengthDigits) return BadReply("a bulk length of more than 20 digits");
    return absl::OkStatus();
  }
  int64_t len = 0;
  auto [end, ec] = std::from_chars(p, cr, len);
  if (ec != std::errc() || end != cr) {
    return BadReply(absl::StrCat("bulk length '", absl::string_view(p, cr - p), "'"));
  }
  const bool to_target = context_.target != nullptr && r_->ridx == 0;
  const uint64_t most =
      to_target ? context_.target->head_len + context_.target->body_len : max_reply_bytes_;
  if (len > 0 && static_cast<uint64_t>(len) > most) {
    return BadReply(absl::StrCat("a value of ", len, " bytes vs at most ", most,
                                 to_target ? " expected" : " (max_reply_bytes)"));
  }
  return absl::OkStatus();
}

absl::Status ReplyParser::BadReply(absl::string_view what) const {
  return absl::UnavailableError(absl::StrCat("RedisCluster: bad reply from ", addr_, ": ", what));
}

bool ParseRedirect(absl::string_view err, absl::string_view kind, int* slot, std::string* addr) {
  if (err.substr(0, kind.size()) != kind || err.size() <= kind.size() + 1 ||
      err[kind.size()] != ' ') {
    return false;
  }
  err.remove_prefix(kind.size() + 1);
  const size_t space = err.find(' ');
  if (space == absl::string_view::npos) return false;
  auto [end, ec] = std::from_chars(err.data(), err.data() + space, *slot);
  if (ec != std::errc() || end != err.data() + space || *slot < 0 || *slot >= kNumSlots) {
    return false;
  }
  *addr = std::string(err.substr(space + 1));
  return !addr->empty();
}

bool IsTransientServerError(absl::string_view err) {
  for (absl::string_view prefix : {"CLUSTERDOWN", "TRYAGAIN", "LOADING", "MASTERDOWN"}) {
    if (err.substr(0, prefix.size()) == prefix) return true;
  }
  return false;
}

absl::StatusOr<std::vector<std::string>> ParseClusterSlots(const redisReply* r,
                                                           absl::string_view addr,
                                                           absl::string_view addr_host) {
  if (r->type == REDIS_REPLY_ERROR) {
    return absl::FailedPreconditionError(absl::StrCat("RedisCluster: CLUSTER SLOTS on ", addr, ": ",
                                                      absl::string_view(r->str, r->len)));
  }
  if (r->type != REDIS_REPLY_ARRAY) {
    return absl::InternalError(absl::StrCat("RedisCluster: CLUSTER SLOTS on ", addr,
                                            ": reply type ", r->type, " vs array"));
  }
  std::vector<std::string> owner(kNumSlots);
  int covered = 0;
  for (size_t i = 0; i < r->elements; ++i) {
    const redisReply* range = r->element[i];
    if (range->type != REDIS_REPLY_ARRAY || range->elements < 3 ||
        range->element[0]->type != REDIS_REPLY_INTEGER ||
        range->element[1]->type != REDIS_REPLY_INTEGER ||
        range->element[2]->type != REDIS_REPLY_ARRAY || range->element[2]->elements < 2 ||
        range->element[2]->element[0]->type != REDIS_REPLY_STRING ||
        range->element[2]->element[1]->type != REDIS_REPLY_INTEGER) {
      return absl::InternalError(
          absl::StrCat("RedisCluster: CLUSTER SLOTS on ", addr, ": malformed entry ", i));
    }
    const long long first = range->element[0]->integer;  // NOLINT(runtime/int): hiredis'
    const long long last = range->element[1]->integer;   // NOLINT(runtime/int)
    if (first < 0 || last >= kNumSlots || first > last) {
      return absl::InternalError(
          absl::StrCat("RedisCluster: CLUSTER SLOTS on ", addr, ": slot range ", first, "-", last));
    }
    std::string host(range->element[2]->element[0]->str, range->element[2]->element[0]->len);
    // An empty or "?" host: the node does not know its own address; it is the one we asked.
    if (host.empty() || host == "?") host = std::string(addr_host);
    const std::string master = absl::StrCat(host, ":", range->element[2]->element[1]->integer);
    for (long long s = first; s <= last; ++s) {  // NOLINT(runtime/int)
      if (owner[s].empty()) ++covered;
      owner[s] = master;
    }
  }
  if (covered != kNumSlots) {
    return absl::FailedPreconditionError(absl::StrCat("RedisCluster: ", addr, " serves ", covered,
                                                      " slots vs ", kNumSlots, " expected"));
  }
  return owner;
}

}  // namespace kvtier::internal
