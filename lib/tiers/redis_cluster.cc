#include "lib/tiers/redis_cluster.h"

#include <hiredis/hiredis.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <sys/uio.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <charconv>
#include <climits>
#include <cstdio>
#include <cstring>
#include <optional>
#include <utility>

#include "absl/container/flat_hash_map.h"
#include "absl/functional/function_ref.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/string_view.h"
#include "lib/common/mutex.h"
#include "lib/common/status_macros.h"
#include "lib/tiers/resp_reader.h"

namespace kvtier::internal {
namespace {

using Clock = RedisCluster::Clock;

struct ContextDeleter {
  void operator()(redisContext* c) const { redisFree(c); }
};
using ContextPtr = std::unique_ptr<redisContext, ContextDeleter>;

// CRC16-XMODEM (poly 0x1021, init 0), as Redis Cluster's keyHashSlot uses.
uint16_t Crc16(std::string_view data) {
  uint16_t crc = 0;
  for (unsigned char byte : data) {
    crc ^= static_cast<uint16_t>(byte) << 8;
    for (int bit = 0; bit < 8; ++bit) {
      crc = (crc & 0x8000) ? static_cast<uint16_t>((crc << 1) ^ 0x1021)
                           : static_cast<uint16_t>(crc << 1);
    }
  }
  return crc;
}

struct HostPort {
  std::string host;
  int port = 0;
};

absl::StatusOr<HostPort> ParseHostPort(absl::string_view addr) {
  const size_t colon = addr.rfind(':');
  if (colon == absl::string_view::npos || colon == 0 || colon + 1 == addr.size()) {
    return absl::InvalidArgumentError(
        absl::StrCat("RedisCluster: seed '", addr, "' is not host:port"));
  }
  int port = 0;
  const char* first = addr.data() + colon + 1;
  const char* last = addr.data() + addr.size();
  auto [end, ec] = std::from_chars(first, last, port);
  if (ec != std::errc() || end != last || port < 1 || port > 65535) {
    return absl::InvalidArgumentError(
        absl::StrCat("RedisCluster: seed '", addr, "' has no valid port (vs 1..65535)"));
  }
  return HostPort{std::string(addr.substr(0, colon)), port};
}

timeval ToTimeval(Clock::duration d) {
  // A zero timeval means "no timeout" to the kernel: never hand it one.
  const int64_t us =
      std::max<int64_t>(1000, std::chrono::duration_cast<std::chrono::microseconds>(d).count());
  return timeval{.tv_sec = static_cast<time_t>(us / 1000000),
                 .tv_usec = static_cast<suseconds_t>(us % 1000000)};
}

// Waits until `fd` is ready for `events` (POLLIN, POLLOUT) or the deadline passes: true when
// ready (or in error: the next call on it says which), false when the deadline passed first.
bool WaitFor(int fd, short events, Clock::time_point deadline) {  // NOLINT(runtime/int): poll's
  for (;;) {
    const int64_t left =
        std::chrono::duration_cast<std::chrono::nanoseconds>(deadline - Clock::now()).count();
    if (left <= 0) return false;
    const timespec ts{.tv_sec = static_cast<time_t>(left / 1000000000),
                      .tv_nsec = static_cast<long>(left % 1000000000)};  // NOLINT(runtime/int)
    pollfd p{.fd = fd, .events = events, .revents = 0};
    const int ready = ppoll(&p, 1, &ts, nullptr);
    if (ready > 0) return true;
    if (ready < 0 && errno != EINTR) return true;  // the call that follows reports the error
  }
}

// Why a pipeline step failed: kDeadlineExceeded when the deadline passed (the socket timeout
// fired), kUnavailable for any other I/O or protocol failure.
absl::Status IoError(const redisContext* c, absl::string_view addr, Clock::time_point deadline,
                     int saved_errno) {
  if (saved_errno == EAGAIN || saved_errno == EWOULDBLOCK || Clock::now() >= deadline) {
    return absl::DeadlineExceededError(
        absl::StrCat("RedisCluster: ", addr, " did not answer before the deadline"));
  }
  return absl::UnavailableError(absl::StrCat(
      "RedisCluster: I/O with ", addr, " failed: ", c->errstr[0] ? c->errstr : "connection lost"));
}

// The argv of one command; the strings it points into outlive it (keys, values, literals). An
// argument may be two parts sent back to back (a block's header and payload, from different
// memory): nothing is copied to join them.
struct Argv {
  std::vector<const char*> argv;
  std::vector<size_t> len;
  std::vector<std::string_view> tail;  // per argument: a second part ("" for most)
  void Add(std::string_view s, std::string_view second = {}) {
    argv.push_back(s.data());
    len.push_back(s.size());
    tail.push_back(second);
  }
};

// Commands framed in RESP for one writev() pipeline: small pieces (lengths, verbs, keys) are
// copied into one buffer, large ones (values) are sent from the caller's memory as they are.
class Frames {
 public:
  void Command(const Argv& a) {
    Inline(absl::StrCat("*", a.argv.size(), "\r\n"));
    for (size_t i = 0; i < a.argv.size(); ++i) {
      Inline(absl::StrCat("$", a.len[i] + a.tail[i].size(), "\r\n"));
      Data(std::string_view(a.argv[i], a.len[i]));
      Data(a.tail[i]);
      Inline("\r\n");
    }
  }
  void Asking() { Inline("*1\r\n$6\r\nASKING\r\n"); }

  // Writes everything, never waiting past the deadline: sendmsg() without blocking first (one
  // system call per pipeline when the socket has room, as it has for most), ppoll() for room
  // only when it is full. (Setting SO_SNDTIMEO before each blocking writev cost a system call
  // per pipeline: a sixth of a 64 KiB GET's.)
  absl::Status Write(redisContext* c, absl::string_view addr, Clock::time_point deadline) {
    std::vector<iovec> iov;
    iov.reserve(pieces_.size());
    for (const Piece& p : pieces_) {
      const char* base = p.owned ? small_.data() + p.offset : p.data;
      iov.push_back({const_cast<char*>(base), p.size});
    }
    size_t first = 0;
    while (first < iov.size()) {
      msghdr msg{};
      msg.msg_iov = iov.data() + first;
      msg.msg_iovlen = std::min<size_t>(iov.size() - first, IOV_MAX);
      const ssize_t n = sendmsg(c->fd, &msg, MSG_DONTWAIT | MSG_NOSIGNAL);
      if (n < 0) {
        if (errno == EINTR) continue;
        if (errno != EAGAIN && errno != EWOULDBLOCK) return IoError(c, addr, deadline, errno);
        if (!WaitFor(c->fd, POLLOUT, deadline)) return IoError(c, addr, deadline, EAGAIN);
        continue;
      }
      // Skip what was written; a partial iovec keeps its rest.
      size_t left = static_cast<size_t>(n);
      while (first < iov.size() && left >= iov[first].iov_len) left -= iov[first++].iov_len;
      if (left > 0) {
        iov[first].iov_base = static_cast<char*>(iov[first].iov_base) + left;
        iov[first].iov_len -= left;
      }
    }
    return absl::OkStatus();
  }

 private:
  static constexpr size_t kInlineBelow = 4096;  // smaller data is copied, not pointed at
  struct Piece {
    bool owned;
    size_t offset;  // into small_ when owned
    const char* data;
    size_t size;
  };
  void Inline(std::string_view s) {
    if (!pieces_.empty() && pieces_.back().owned &&
        pieces_.back().offset + pieces_.back().size == small_.size()) {
      pieces_.back().size += s.size();  // extend the last owned piece
    } else {
      pieces_.push_back({true, small_.size(), nullptr, s.size()});
    }
    small_.append(s);
  }
  void Data(std::string_view s) {
    if (s.size() < kInlineBelow) {
      Inline(s);
    } else {
      pieces_.push_back({false, 0, s.data(), s.size()});
    }
  }
  std::string small_;
  std::vector<Piece> pieces_;
};

// Reads the replies of one connection, each call bounded in time and in memory whatever the peer
// sends:
// - Time: it reads only what poll() reports before the deadline. Past it, replies that had
//   already arrived are still taken (a slow node read first must not fail the keys of the nodes
//   that answered in time), but only those: what the socket held when this reader first found
//   the deadline passed is all it reads afterwards, so a peer that keeps streaming cannot hold it.
// - Memory: a line longer than kMaxLineBytes, a bulk string announcing more than the reply may
//   hold, a reply of more than kMaxReplyObjects objects, or more bytes than its limit is refused
//   (kUnavailable) as soon as it is seen, before it is buffered (ReplyParser, resp_reader.h). The
//   connection is then out of step: the caller closes it.
// - Copies: a GET value for a target is received straight into it (NextInto), not through the
//   connection's buffer.
class ReplyReader {
 public:
  // `copied`: bytes of target values that went through the connection's buffer (a counter).
  ReplyReader(redisContext* c, absl::string_view addr, Clock::time_point deadline,
              uint64_t max_reply_bytes, std::atomic<uint64_t>* copied = nullptr)
      : c_(c),
        addr_(addr),
        deadline_(deadline),
        max_reply_bytes_(max_reply_bytes),
        copied_(copied) {}

  // The next reply. With a target, a top-level bulk string goes there (its reply is the sunk
  // marker, the value's length in *value_bytes) and may not be longer than the target.
  absl::StatusOr<ReplyPtr> Next(const RedisCluster::ReadTarget* target = nullptr,
                                size_t* value_bytes = nullptr) {
    if (target != nullptr) return NextInto(*target, value_bytes);
    return Parse(nullptr, nullptr, {});
  }

 private:
  // Replies through hiredis' reader (every reply but a value of the target's exact length):
  // `unread` (bytes already taken off the socket, which come before anything read from now on)
  // is fed first.
  absl::StatusOr<ReplyPtr> Parse(const RedisCluster::ReadTarget* target, size_t* value_bytes,
                                 absl::string_view unread) {
    ReplyParser parser(c_->reader, addr_, max_reply_bytes_, target);
    if (!unread.empty()) KVTIER_RETURN_IF_ERROR(parser.Feed(unread.data(), unread.size()));
    for (;;) {
      KVTIER_ASSIGN_OR_RETURN(ReplyPtr reply, parser.Poll());
      if (reply != nullptr) {
        if (parser.value_bytes().has_value()) {
          if (value_bytes != nullptr) *value_bytes = *parser.value_bytes();
          if (copied_ != nullptr)
            copied_->fetch_add(*parser.value_bytes(), std::memory_order_relaxed);
        }
        return reply;
      }
      char buf[kReadChunkBytes];
      iovec iov{.iov_base = buf, .iov_len = sizeof(buf)};
      KVTIER_ASSIGN_OR_RETURN(size_t n, Receive(&iov, 1, sizeof(buf)));
      KVTIER_RETURN_IF_ERROR(parser.Feed(buf, n));
    }
  }

  // A GET reply for `t`, read off the socket straight into it when it is a value of exactly the
  // target's length (what the caller expects): the bytes are received as the stream
  // "$<length>\r\n" | head | body | "\r\n", each part where it belongs, so the value is never
  // copied (and at most one system call per ~64 KiB the socket delivers, none to find the
  // length first). Anything else (nil, an error or redirection, a value of another length) is
  // seen in its first bytes: what was received (some of it in the target: the target's bytes are
  // then undefined, but nothing is ever written past it, as the stream is no longer than the
  // target's value) is handed to hiredis' reader, in order, to be parsed as any reply.
  absl::StatusOr<ReplyPtr> NextInto(const RedisCluster::ReadTarget& t, size_t* value_bytes) {
    redisReader* r = c_->reader;
    if (r->err != 0 || r->ridx >= 0) return Parse(&t, value_bytes, {});  // mid-reply: not ours
    const size_t len = t.head_len + t.body_len;
    char prefix[32];
    const size_t prefix_len =
        static_cast<size_t>(std::snprintf(prefix, sizeof(prefix), "$%zu\r\n", len));
    char line[32];
    char crlf[2];
    const iovec parts[4] = {
        {line, prefix_len}, {t.head, t.head_len}, {t.body, t.body_len}, {crlf, 2}};
    const size_t total = prefix_len + len + 2;
    size_t got = 0;
    // Bytes of the stream since [got_from, got): appended to what the reader holds on a mismatch.
    auto matches = [&] { return std::memcmp(line, prefix, std::min(got, prefix_len)) == 0; };
    // First what the reader already holds (the end of an earlier read).
    const size_t held = std::min(r->len - r->pos, total);
    Place(parts, r->buf + r->pos, held);
    r->pos += held;
    got = held;
    while (matches() && got < total) {
      iovec iov[4];
      const int count = Remaining(parts, got, iov);
      absl::StatusOr<size_t> n = Receive(iov, count, total - got);
      if (!n.ok()) {
        // The reader's held bytes stay consumed: the connection is closed after an error.
        return n.status();
      }
      got += *n;
    }
    if (!matches()) {
      // Not a value of the expected length: hiredis parses it (and what followed it) from the
      // reader's bytes put back and what was received since.
      r->pos -= held;
      std::string since(got - held, '\0');
      Gather(parts, held, got, since.data());
      return Parse(&t, value_bytes, since);
    }
    if (crlf[0] != '\r' || crlf[1] != '\n') {
      return absl::UnavailableError(absl::StrCat("RedisCluster: bad reply from ", addr_,
                                                 ": a value of ", len,
                                                 " bytes not followed by CRLF"));
    }
    if (copied_ != nullptr && held > prefix_len) {
      copied_->fetch_add(std::min(held - prefix_len, len), std::memory_order_relaxed);
    }
    if (value_bytes != nullptr) *value_bytes = len;
    return SunkReply();
  }

  // Copies `n` bytes into the stream `parts` from its start.
  static void Place(const iovec (&parts)[4], const char* p, size_t n) {
    for (const iovec& part : parts) {
      const size_t k = std::min(n, part.iov_len);
      if (k > 0) std::memcpy(part.iov_base, p, k);
      p += k;
      n -= k;
    }
  }
  // Copies the stream's bytes [from, to) out to `out`.
  static void Gather(const iovec (&parts)[4], size_t from, size_t to, char* out) {
    size_t at = 0;
    for (const iovec& part : parts) {
      const size_t lo = std::max(from, at), hi = std::min(to, at + part.iov_len);
      if (lo < hi) {
        std::memcpy(out, static_cast<const char*>(part.iov_base) + (lo - at), hi - lo);
        out += hi - lo;
      }
      at += part.iov_len;
    }
  }
  // The stream's parts past its first `got` bytes, as iovecs (empty parts left out).
  static int Remaining(const iovec (&parts)[4], size_t got, iovec (&out)[4]) {
    int count = 0;
    size_t at = 0;
    for (const iovec& part : parts) {
      if (got < at + part.iov_len) {
        const size_t skip = got > at ? got - at : 0;
        out[count++] = {static_cast<char*>(part.iov_base) + skip, part.iov_len - skip};
      }
      at += part.iov_len;
    }
    return count;
  }

  // Receives up to `want` bytes into `iov` (at least one byte): waits (ppoll) only when the
  // socket had nothing at the last try, and never past the deadline; past it, only what the
  // socket held when this reader first found it passed.
  absl::StatusOr<size_t> Receive(iovec* iov, int count, size_t want) {
    for (;;) {
      if (Clock::now() >= deadline_) {
        if (!late_bytes_left_.has_value()) {
          int queued = 0;
          late_bytes_left_ = ioctl(c_->fd, FIONREAD, &queued) == 0 ? std::max(queued, 0) : 0;
        }
        if (*late_bytes_left_ == 0) return Late();
        want = std::min<size_t>(want, *late_bytes_left_);
      } else if (!maybe_ready_) {
        WaitFor(c_->fd, POLLIN, deadline_);
        maybe_ready_ = true;
        continue;  // the deadline may have passed meanwhile: the loop looks again
      }
      // Bounded to `want` bytes: trim the iovecs.
      iovec trimmed[4];
      int n_iov = 0;
      size_t room = want;
      for (int i = 0; i < count && n_iov < 4 && room > 0; ++i) {
        trimmed[n_iov] = iov[i];
        trimmed[n_iov].iov_len = std::min(iov[i].iov_len, room);
        room -= trimmed[n_iov++].iov_len;
      }
      msghdr msg{};
      msg.msg_iov = trimmed;
      msg.msg_iovlen = static_cast<size_t>(n_iov);
      const ssize_t n = recvmsg(c_->fd, &msg, MSG_DONTWAIT);
      if (n == 0) {
        return absl::UnavailableError(
            absl::StrCat("RedisCluster: ", addr_, " closed the connection"));
      }
      if (n < 0) {
        if (errno == EINTR) continue;
        if (errno == EAGAIN || errno == EWOULDBLOCK) {
          if (late_bytes_left_.has_value()) return Late();
          maybe_ready_ = false;
          continue;
        }
        return IoFailure(errno);
      }
      if (late_bytes_left_.has_value()) *late_bytes_left_ -= std::min<size_t>(*late_bytes_left_, n);
      // A read that filled all it asked for may have left more behind: the next one tries at
      // once. One that drained the socket: the next one waits first (a try would find nothing,
      // one system call lost for each piece a node sends of a large value).
      maybe_ready_ = static_cast<size_t>(n) == want;
      return static_cast<size_t>(n);
    }
  }

  absl::Status Late() const {
    return absl::DeadlineExceededError(
        absl::StrCat("RedisCluster: ", addr_, " did not answer before the deadline"));
  }
  absl::Status IoFailure(int err) const {
    return absl::UnavailableError(
        absl::StrCat("RedisCluster: I/O with ", addr_, " failed: ", std::strerror(err)));
  }

  redisContext* const c_;
  const absl::string_view addr_;
  const Clock::time_point deadline_;
  const uint64_t max_reply_bytes_;
  std::atomic<uint64_t>* const copied_;
  // Set when the deadline is first found passed: the bytes the socket held then, less those
  // read since. Nothing more is read.
  std::optional<size_t> late_bytes_left_;
  // Whether the socket may hold bytes (the last read filled its request): recv first, ppoll
  // after.
  bool maybe_ready_ = false;
};

// One command and its reply, on a connection with nothing else in flight (AUTH, CLUSTER SLOTS).
absl::StatusOr<ReplyPtr> Call(redisContext* c, absl::string_view addr, const Argv& a,
                              Clock::time_point deadline, uint64_t max_reply_bytes) {
  Frames frames;
  frames.Command(a);
  KVTIER_RETURN_IF_ERROR(frames.Write(c, addr, deadline));
  return ReplyReader(c, addr, deadline, max_reply_bytes).Next();
}

}  // namespace

struct RedisCluster::Impl {
  struct Node {
    HostPort host_port;
    std::vector<ContextPtr> idle;     // connections with no command in flight
    Clock::duration backoff{};        // 0 while the node is reachable
    Clock::time_point retry_after{};  // connects fail fast until then
  };

  // One command of a batch on its way to a node.
  struct Op {
    size_t index;       // into the batch's keys
    std::string addr;   // node to send it to
    uint32_t hops = 0;  // redirects followed so far
    bool asking = false;
  };

  explicit Impl(RedisClusterConfig c) : config(std::move(c)) {}

  const RedisClusterConfig config;

  mutable Mutex mu;
  // Master "host:port" per slot ("" when unknown).
  std::vector<std::string> slot_owner ABSL_GUARDED_BY(mu) = std::vector<std::string>(kNumSlots);
  absl::flat_hash_map<std::string, Node> nodes ABSL_GUARDED_BY(mu);
  Clock::time_point last_refresh ABSL_GUARDED_BY(mu){};

  struct {
    std::atomic<uint64_t> commands{0}, moved{0}, ask{0}, topology_refreshes{0}, connects{0},
        connect_failures{0}, timeouts{0}, errors{0}, value_bytes_copied{0};
  } stats;

  static void Bump(std::atomic<uint64_t>& counter, uint64_t n = 1) {
    counter.fetch_add(n, std::memory_order_relaxed);
  }

  Node& NodeLocked(const std::string& addr) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu) {
    auto [it, inserted] = nodes.try_emplace(addr);
    if (inserted) {
      auto hp = ParseHostPort(addr);
      if (hp.ok()) it->second.host_port = *hp;
    }
    return it->second;
  }

  // An idle connection to `addr`, or a new one (connect bounded by connect_timeout). Fails at
  // once with kUnavailable while the node is in its reconnect backoff.
  absl::StatusOr<ContextPtr> Acquire(const std::string& addr) {
    HostPort hp;
    {
      MutexLock lock(&mu);
      Node& node = NodeLocked(addr);
      if (!node.idle.empty()) {
        ContextPtr c = std::move(node.idle.back());
        node.idle.pop_back();
        return c;
      }
      if (Clock::now() < node.retry_after) {
        return absl::UnavailableError(
            absl::StrCat("RedisCluster: ", addr, " is unreachable (reconnect backoff)"));
      }
      if (node.host_port.port == 0) {
        return absl::InvalidArgumentError(
            absl::StrCat("RedisCluster: node address '", addr, "' is not host:port"));
      }
      hp = node.host_port;
    }
    absl::Status st = absl::OkStatus();
    ContextPtr c(redisConnectWithTimeout(
        hp.host.c_str(), hp.port,
        ToTimeval(std::chrono::duration_cast<Clock::duration>(config.connect_timeout))));
    if (c == nullptr) {
      st = absl::ResourceExhaustedError(
          absl::StrCat("RedisCluster: no memory for a connection to ", addr));
    } else if (c->err) {
      st = absl::UnavailableError(
          absl::StrCat("RedisCluster: connect to ", addr, " failed: ", c->errstr));
    } else {
      // hiredis sets TCP_NODELAY itself on TCP connects; set it again so a pipeline's last
      // command never waits for Nagle whatever the hiredis version.
      int one = 1;
      setsockopt(c->fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
      SetUpRespReader(c->reader);
      if (!config.password.empty()) st = Auth(c.get(), addr);
    }
    MutexLock lock(&mu);
    Node& node = NodeLocked(addr);
    if (!st.ok()) {
      Bump(stats.connect_failures);
      if (st.code() == absl::StatusCode::kUnavailable) {
        const auto min = std::chrono::duration_cast<Clock::duration>(config.reconnect_backoff_min);
        const auto max = std::chrono::duration_cast<Clock::duration>(config.reconnect_backoff_max);
        node.backoff =
            node.backoff == Clock::duration::zero() ? min : std::min(max, 2 * node.backoff);
        node.retry_after = Clock::now() + node.backoff;
      }
      return st;
    }
    Bump(stats.connects);
    node.backoff = Clock::duration::zero();
    node.retry_after = Clock::time_point{};
    return c;
  }

  absl::Status Auth(redisContext* c, const std::string& addr) {
    Argv a;
    a.Add("AUTH");
    a.Add(config.password);
    KVTIER_ASSIGN_OR_RETURN(ReplyPtr reply, Call(c, addr, a, Clock::now() + config.connect_timeout,
                                                 config.max_reply_bytes));
    if (reply->type == REDIS_REPLY_ERROR) {
      return absl::FailedPreconditionError(
          absl::StrCat("RedisCluster: ", addr, " refused AUTH: ", reply->str));
    }
    return absl::OkStatus();
  }

  // Back to the pool, or closed when the pool is full.
  void Release(const std::string& addr, ContextPtr c) {
    MutexLock lock(&mu);
    Node& node = NodeLocked(addr);
    if (node.idle.size() < config.max_connections_per_node) node.idle.push_back(std::move(c));
    // else: c closes here; redisFree only closes a socket, no network wait.
  }

  // After an I/O failure (not a timeout) the node's idle connections are most likely dead too:
  // close them rather than failing one batch on each.
  void DropIdle(const std::string& addr) {
    std::vector<ContextPtr> dead;
    {
      MutexLock lock(&mu);
      dead.swap(NodeLocked(addr).idle);
    }
  }

  // CLUSTER SLOTS from `addr`, checked for full coverage, installed as the slot map.
  absl::Status RefreshFrom(const std::string& addr) {
    KVTIER_ASSIGN_OR_RETURN(ContextPtr c, Acquire(addr));
    Argv a;
    a.Add("CLUSTER");
    a.Add("SLOTS");
    absl::StatusOr<ReplyPtr> reply =
        Call(c.get(), addr, a, Clock::now() + config.connect_timeout, config.max_reply_bytes);
    if (!reply.ok()) {
      if (reply.status().code() != absl::StatusCode::kDeadlineExceeded) DropIdle(addr);
      return reply.status();
    }
    Release(addr, std::move(c));
    KVTIER_ASSIGN_OR_RETURN(std::vector<std::string> owner,
                            ParseClusterSlots(reply->get(), addr, ParseHostPort(addr)->host));
    Bump(stats.topology_refreshes);
    MutexLock lock(&mu);
    slot_owner = std::move(owner);
    for (const std::string& m : slot_owner) NodeLocked(m);
    last_refresh = Clock::now();
    return absl::OkStatus();
  }

  // Tries `preferred` first, then the masters, then the seeds. kFailedPrecondition when the
  // nodes answered but none covers every slot (or AUTH was refused), else kUnavailable.
  absl::Status Refresh(const std::string& preferred) {
    std::vector<std::string> candidates;
    if (!preferred.empty()) candidates.push_back(preferred);
    {
      MutexLock lock(&mu);
      for (const std::string& m : slot_owner) {
        if (!m.empty() && std::find(candidates.begin(), candidates.end(), m) == candidates.end()) {
          candidates.push_back(m);
        }
      }
    }
    for (const std::string& s : config.seeds) {
      if (std::find(candidates.begin(), candidates.end(), s) == candidates.end()) {
        candidates.push_back(s);
      }
    }
    std::vector<std::string> errors;
    bool precondition = false;
    for (const std::string& addr : candidates) {
      absl::Status st = RefreshFrom(addr);
      if (st.ok()) return st;
      precondition |= st.code() == absl::StatusCode::kFailedPrecondition;
      errors.push_back(std::string(st.message()));
    }
    std::string msg = absl::StrCat("RefreshTopology: no node gave a topology (",
                                   absl::StrJoin(errors, "; "), ")");
    return precondition ? absl::FailedPreconditionError(msg) : absl::UnavailableError(msg);
  }

  // Runs one command per key: groups them by node, writes every node's pipeline, then reads
  // each node's replies; MOVED/ASK send a key again (to the named node) in the next round. The
  // result per key is its reply (never an error reply) or the status it failed with.
  // `targets` (empty, or one per key): where each key's GET value goes (its reply is then
  // kSunkReply, with the value's length in `sunk`).
  std::vector<absl::StatusOr<ReplyPtr>> Run(std::span<const std::string> keys,
                                            absl::FunctionRef<void(size_t, Argv*)> build,
                                            Clock::time_point deadline,
                                            std::span<const RedisCluster::ReadTarget> targets = {},
                                            std::vector<size_t>* sunk = nullptr) {
    std::vector<absl::StatusOr<ReplyPtr>> out;
    out.reserve(keys.size());
    for (size_t i = 0; i < keys.size(); ++i) out.emplace_back(absl::InternalError("not run"));
    std::vector<Op> ops;
    ops.reserve(keys.size());
    {
      MutexLock lock(&mu);
      for (size_t i = 0; i < keys.size(); ++i) {
        ops.push_back(Op{.index = i, .addr = slot_owner[KeySlot(keys[i])]});
      }
    }
    while (!ops.empty()) {
      if (Clock::now() >= deadline) {
        for (const Op& op : ops) {
          out[op.index] = absl::DeadlineExceededError(
              absl::StrCat("RedisCluster: deadline passed before '", op.addr, "' was asked"));
        }
        break;
      }
      // Group by node, keeping the batch's order within a node.
      absl::flat_hash_map<std::string, std::vector<Op>> by_node;
      std::vector<std::string> order;
      for (Op& op : ops) {
        auto [it, inserted] = by_node.try_emplace(op.addr);
        if (inserted) order.push_back(op.addr);
        it->second.push_back(std::move(op));
      }
      ops.clear();

      bool refresh = false;        // connection trouble: re-read the topology (rate-limited)
      bool moved_refresh = false;  // a MOVED: re-read it now
      std::string moved_to;
      auto fail = [&](const std::vector<Op>& group, size_t from, const absl::Status& st) {
        for (size_t k = from; k < group.size(); ++k) out[group[k].index] = st;
        if (st.code() == absl::StatusCode::kDeadlineExceeded) {
          Bump(stats.timeouts);
        } else {
          Bump(stats.errors, group.size() - from);
        }
      };

      // Write phase: every node's pipeline is flushed before any reply is read, so the nodes
      // work in parallel.
      std::vector<std::pair<std::string, ContextPtr>> sent;
      for (const std::string& addr : order) {
        std::vector<Op>& group = by_node[addr];
        if (addr.empty()) {
          fail(group, 0, absl::UnavailableError("RedisCluster: no master serves the key's slot"));
          refresh = true;
          continue;
        }
        absl::StatusOr<ContextPtr> c = Acquire(addr);
        if (!c.ok()) {
          fail(group, 0, c.status());
          refresh = true;
          continue;
        }
        Frames frames;
        for (const Op& op : group) {
          if (op.asking) frames.Asking();
          Argv a;
          build(op.index, &a);
          frames.Command(a);
        }
        absl::Status st = frames.Write(c->get(), addr, deadline);
        Bump(stats.commands, group.size());
        if (!st.ok()) {
          // The connection is dropped (c goes out of scope): replies would be out of step.
          fail(group, 0, st);
          if (st.code() != absl::StatusCode::kDeadlineExceeded) {
            DropIdle(addr);
            refresh = true;
          }
          continue;
        }
        sent.emplace_back(addr, std::move(*c));
      }

      // Read phase.
      for (auto& [addr, c] : sent) {
        std::vector<Op>& group = by_node[addr];
        ReplyReader reader(c.get(), addr, deadline, config.max_reply_bytes,
                           &stats.value_bytes_copied);
        absl::Status st = absl::OkStatus();
        size_t k = 0;
        for (; k < group.size(); ++k) {
          Op& op = group[k];
          if (op.asking) {
            absl::StatusOr<ReplyPtr> asking = reader.Next();
            if (!asking.ok()) {
              st = asking.status();
              break;
            }
          }
          absl::StatusOr<ReplyPtr> reply =
              targets.empty()
                  ? reader.Next()
                  : reader.Next(&targets[op.index], sunk != nullptr ? &(*sunk)[op.index] : nullptr);
          if (!reply.ok()) {
            st = reply.status();
            break;
          }
          if ((*reply)->type != REDIS_REPLY_ERROR) {
            out[op.index] = std::move(reply);
            continue;
          }
          absl::string_view err((*reply)->str, (*reply)->len);
          int slot = 0;
          std::string target;
          const bool moved = ParseRedirect(err, "MOVED", &slot, &target);
          const bool ask = !moved && ParseRedirect(err, "ASK", &slot, &target);
          if (moved || ask) {
            if (op.hops >= config.max_redirects) {
              Bump(stats.errors);
              out[op.index] = absl::InternalError(absl::StrCat(
                  "RedisCluster: key redirected ", op.hops + 1,
                  " times vs max_redirects=", config.max_redirects, " (last: ", err, ")"));
              continue;
            }
            if (moved) {
              Bump(stats.moved);
              MutexLock lock(&mu);
              slot_owner[slot] = target;
              moved_refresh = true;
              moved_to = target;
            } else {
              Bump(stats.ask);
            }
            ops.push_back(
                Op{.index = op.index, .addr = target, .hops = op.hops + 1, .asking = ask});
            continue;
          }
          Bump(stats.errors);
          if (IsTransientServerError(err)) {
            out[op.index] = absl::UnavailableError(absl::StrCat("RedisCluster: ", addr, ": ", err));
            refresh = true;
          } else {
            out[op.index] = absl::InternalError(absl::StrCat("RedisCluster: ", addr, ": ", err));
          }
        }
        if (!st.ok()) {
          // c is dropped, not released: the unread replies would answer the next batch.
          fail(group, k, st);
          if (st.code() != absl::StatusCode::kDeadlineExceeded) {
            DropIdle(addr);
            refresh = true;
          }
          c.reset();
          continue;
        }
        Release(addr, std::move(c));
      }

      if (moved_refresh) {
        // The redirected keys carry their target already; the refresh fixes the other slots
        // that moved with this one. Its failure is not the batch's.
        Refresh(moved_to).IgnoreError();
      } else if (refresh) {
        bool due;
        {
          MutexLock lock(&mu);
          due = Clock::now() - last_refresh >= config.reconnect_backoff_min;
        }
        if (due) Refresh("").IgnoreError();
      }
    }
    return out;
  }
};

absl::StatusOr<std::unique_ptr<RedisCluster>> RedisCluster::Connect(RedisClusterConfig config) {
  if (config.seeds.empty()) {
    return absl::InvalidArgumentError("RedisCluster: no seeds (vs at least one host:port)");
  }
  for (const std::string& seed : config.seeds) KVTIER_RETURN_IF_ERROR(ParseHostPort(seed).status());
  if (config.connect_timeout <= std::chrono::milliseconds::zero()) {
    return absl::InvalidArgumentError(absl::StrCat("RedisCluster: connect_timeout ",
                                                   config.connect_timeout.count(), "ms vs > 0"));
  }
  if (config.reconnect_backoff_min <= std::chrono::milliseconds::zero() ||
      config.reconnect_backoff_max < config.reconnect_backoff_min) {
    return absl::InvalidArgumentError(
        absl::StrCat("RedisCluster: reconnect_backoff_min ", config.reconnect_backoff_min.count(),
                     "ms, _max ", config.reconnect_backoff_max.count(), "ms vs 0 < min <= max"));
  }
  if (config.max_reply_bytes < kMaxLineBytes) {
    return absl::InvalidArgumentError(absl::StrCat(
        "RedisCluster: max_reply_bytes ", config.max_reply_bytes, " vs >= ", kMaxLineBytes));
  }
  auto impl = std::make_unique<Impl>(std::move(config));
  KVTIER_RETURN_IF_ERROR(impl->Refresh(""));
  return std::unique_ptr<RedisCluster>(new RedisCluster(std::move(impl)));
}

RedisCluster::RedisCluster(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
RedisCluster::~RedisCluster() = default;

std::vector<absl::StatusOr<std::optional<std::string>>> RedisCluster::Get(
    std::span<const std::string> keys, Clock::time_point deadline) {
  auto replies = impl_->Run(
      keys,
      [&](size_t i, Argv* a) {
        a->Add("GET");
        a->Add(keys[i]);
      },
      deadline);
  std::vector<absl::StatusOr<std::optional<std::string>>> out;
  out.reserve(keys.size());
  for (auto& r : replies) {
    if (!r.ok()) {
      out.push_back(r.status());
    } else if ((*r)->type == REDIS_REPLY_NIL) {
      out.push_back(std::optional<std::string>());
    } else if ((*r)->type == REDIS_REPLY_STRING) {
      out.push_back(std::optional<std::string>(std::in_place, (*r)->str, (*r)->len));
    } else {
      out.push_back(absl::InternalError(
          absl::StrCat("RedisCluster: GET reply type ", (*r)->type, " vs string or nil")));
    }
  }
  return out;
}

std::vector<absl::StatusOr<std::optional<size_t>>> RedisCluster::GetInto(
    std::span<const std::string> keys, std::span<const ReadTarget> targets,
    Clock::time_point deadline) {
  if (targets.size() != keys.size()) {
    return std::vector<absl::StatusOr<std::optional<size_t>>>(
        keys.size(), absl::InvalidArgumentError(absl::StrCat(
                         "GetInto: ", targets.size(), " targets vs ", keys.size(), " keys")));
  }
  std::vector<size_t> sunk(keys.size(), 0);
  auto replies = impl_->Run(
      keys,
      [&](size_t i, Argv* a) {
        a->Add("GET");
        a->Add(keys[i]);
      },
      deadline, targets, &sunk);
  std::vector<absl::StatusOr<std::optional<size_t>>> out;
  out.reserve(keys.size());
  for (size_t i = 0; i < replies.size(); ++i) {
    const auto& r = replies[i];
    if (!r.ok()) {
      out.push_back(r.status());
    } else if ((*r)->type == REDIS_REPLY_NIL) {
      out.push_back(std::optional<size_t>());
    } else if (IsSunkReply(r->get())) {
      out.push_back(std::optional<size_t>(sunk[i]));
    } else {
      out.push_back(absl::InternalError(
          absl::StrCat("RedisCluster: GET reply type ", (*r)->type, " vs string or nil")));
    }
  }
  return out;
}

std::vector<absl::StatusOr<bool>> RedisCluster::Exists(std::span<const std::string> keys,
                                                       Clock::time_point deadline) {
  auto replies = impl_->Run(
      keys,
      [&](size_t i, Argv* a) {
        a->Add("EXISTS");
        a->Add(keys[i]);
      },
      deadline);
  std::vector<absl::StatusOr<bool>> out;
  out.reserve(keys.size());
  for (auto& r : replies) {
    if (!r.ok()) {
      out.push_back(r.status());
    } else if ((*r)->type == REDIS_REPLY_INTEGER) {
      out.push_back((*r)->integer > 0);
    } else {
      out.push_back(absl::InternalError(
          absl::StrCat("RedisCluster: EXISTS reply type ", (*r)->type, " vs integer")));
    }
  }
  return out;
}

std::vector<absl::Status> RedisCluster::Set(std::span<const std::string> keys,
                                            std::span<const std::string_view> values,
                                            uint32_t ttl_seconds, Clock::time_point deadline) {
  std::vector<ValueParts> parts;
  parts.reserve(values.size());
  for (std::string_view v : values) parts.push_back({v, {}});
  return SetParts(keys, parts, ttl_seconds, deadline);
}

std::vector<absl::Status> RedisCluster::SetParts(std::span<const std::string> keys,
                                                 std::span<const ValueParts> values,
                                                 uint32_t ttl_seconds, Clock::time_point deadline) {
  if (values.size() != keys.size()) {
    return std::vector<absl::Status>(
        keys.size(), absl::InvalidArgumentError(absl::StrCat("Set: ", values.size(), " values vs ",
                                                             keys.size(), " keys")));
  }
  const std::string ttl = absl::StrCat(ttl_seconds);
  auto replies = impl_->Run(
      keys,
      [&](size_t i, Argv* a) {
        a->Add("SET");
        a->Add(keys[i]);
        a->Add(values[i].head, values[i].body);
        if (ttl_seconds > 0) {
          a->Add("EX");
          a->Add(ttl);
        }
      },
      deadline);
  std::vector<absl::Status> out;
  out.reserve(keys.size());
  for (auto& r : replies) out.push_back(r.status());
  return out;
}

std::vector<absl::Status> RedisCluster::Del(std::span<const std::string> keys,
                                            Clock::time_point deadline) {
  auto replies = impl_->Run(
      keys,
      [&](size_t i, Argv* a) {
        a->Add("DEL");
        a->Add(keys[i]);
      },
      deadline);
  std::vector<absl::Status> out;
  out.reserve(keys.size());
  for (auto& r : replies) out.push_back(r.status());
  return out;
}

absl::Status RedisCluster::RefreshTopology() { return impl_->Refresh(""); }

std::string RedisCluster::NodeForSlot(uint16_t slot) const {
  if (slot >= kNumSlots) return "";
  MutexLock lock(&impl_->mu);
  return impl_->slot_owner[slot];
}

RedisClusterStats RedisCluster::stats() const {
  const auto& s = impl_->stats;
  auto get = [](const std::atomic<uint64_t>& a) { return a.load(std::memory_order_relaxed); };
  return RedisClusterStats{.commands = get(s.commands),
                           .moved = get(s.moved),
                           .ask = get(s.ask),
                           .topology_refreshes = get(s.topology_refreshes),
                           .connects = get(s.connects),
                           .connect_failures = get(s.connect_failures),
                           .timeouts = get(s.timeouts),
                           .errors = get(s.errors),
                           .value_bytes_copied = get(s.value_bytes_copied)};
}

uint16_t RedisCluster::KeySlot(std::string_view key) {
  // The {hash tag} rule: if the key has a '{' followed later by a '}' with at least one byte
  // between them, only the bytes between the first '{' and the first '}' after it are hashed.
  const size_t open = key.find('{');
  if (open != std::string_view::npos) {
    const size_t close = key.find('}', open + 1);
    if (close != std::string_view::npos && close > open + 1) {
      key = key.substr(open + 1, close - open - 1);
    }
  }
  return Crc16(key) & (kNumSlots - 1);
}

}  // namespace kvtier::internal
