#include "test/util/fake_redis_peer.h"

#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <unistd.h>

#include <catch2/catch.hpp>
#include <cerrno>
#include <charconv>
#include <string_view>
#include <thread>

#include "absl/strings/ascii.h"
#include "absl/strings/str_cat.h"

namespace kvtier::test {
namespace {

// One command parsed off the front of `buf` (a RESP array of bulk strings): its arguments, and
// how many bytes it took; 0 bytes when `buf` does not hold a whole command yet, -1 when `buf`
// is not RESP.
int64_t ParseCommand(std::string_view buf, std::vector<std::string>* out) {
  out->clear();
  size_t pos = 0;
  auto number = [&](char kind, int64_t* n) -> int {
    if (pos >= buf.size()) return 0;
    if (buf[pos] != kind) return -1;
    const size_t end = buf.find("\r\n", pos);
    if (end == std::string_view::npos) return 0;
    auto [p, ec] = std::from_chars(buf.data() + pos + 1, buf.data() + end, *n);
    if (ec != std::errc() || p != buf.data() + end || *n < 0) return -1;
    pos = end + 2;
    return 1;
  };
  int64_t args = 0;
  if (int r = number('*', &args); r <= 0) return r;
  for (int64_t i = 0; i < args; ++i) {
    int64_t len = 0;
    if (int r = number('$', &len); r <= 0) return r;
    if (buf.size() - pos < static_cast<uint64_t>(len) + 2) return 0;
    out->emplace_back(buf.substr(pos, len));
    pos += len + 2;
  }
  return static_cast<int64_t>(pos);
}

}  // namespace

FakeRedisPeer::FakeRedisPeer(Script script) : script_(std::move(script)) {
  listen_fd_ = socket(AF_INET, SOCK_STREAM, 0);
  REQUIRE(listen_fd_ >= 0);
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  REQUIRE(bind(listen_fd_, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) == 0);
  REQUIRE(listen(listen_fd_, 16) == 0);
  socklen_t len = sizeof(addr);
  REQUIRE(getsockname(listen_fd_, reinterpret_cast<sockaddr*>(&addr), &len) == 0);
  port_ = ntohs(addr.sin_port);
  acceptor_ = std::thread([this] { AcceptLoop(); });
}

FakeRedisPeer::~FakeRedisPeer() {
  stop_ = true;
  acceptor_.join();
  std::vector<std::thread> threads;
  {
    std::lock_guard<std::mutex> lock(mu_);
    threads.swap(connections_);
  }
  for (std::thread& t : threads) t.join();
  close(listen_fd_);
}

std::string FakeRedisPeer::addr() const { return absl::StrCat("127.0.0.1:", port_); }

void FakeRedisPeer::AcceptLoop() {
  while (!stop_) {
    pollfd p{.fd = listen_fd_, .events = POLLIN, .revents = 0};
    if (poll(&p, 1, 20) != 1) continue;
    const int fd = accept(listen_fd_, nullptr, nullptr);
    if (fd < 0) continue;
    // Sends wake up now and then, so a stop is seen while a client does not read.
    timeval tv{.tv_sec = 0, .tv_usec = 20000};
    setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof(tv));
    std::lock_guard<std::mutex> lock(mu_);
    connections_.emplace_back([this, fd] {
      Serve(fd);
      close(fd);
    });
  }
}

bool FakeRedisPeer::SendAll(int fd, const char* data, size_t size,
                            std::chrono::steady_clock::time_point until) {
  while (size > 0) {
    if (stop_ || std::chrono::steady_clock::now() >= until) return false;
    const ssize_t n = send(fd, data, size, MSG_NOSIGNAL);
    if (n < 0) {
      if (errno == EINTR || errno == EAGAIN || errno == EWOULDBLOCK) continue;
      return false;  // the client closed the connection
    }
    bytes_sent_ += n;
    data += n;
    size -= n;
  }
  return true;
}

std::optional<FakeRedisPeer::Answer> FakeRedisPeer::DefaultAnswer(
    const std::vector<std::string>& command) const {
  const std::string verb = command.empty() ? "" : absl::AsciiStrToUpper(command[0]);
  if (verb == "CLUSTER" && command.size() == 2 && absl::AsciiStrToUpper(command[1]) == "SLOTS") {
    return Answer{.bytes = absl::StrCat(
                      "*1\r\n*3\r\n:0\r\n:16383\r\n*2\r\n$9\r\n127.0.0.1\r\n:", port_, "\r\n")};
  }
  if (verb == "EXISTS") return Answer{.bytes = ":1\r\n"};
  if (verb == "GET") return Answer{.bytes = "$-1\r\n"};
  if (verb == "SET" || verb == "AUTH" || verb == "ASKING") return Answer{.bytes = "+OK\r\n"};
  return Answer{.bytes = "-ERR unknown command\r\n"};
}

void FakeRedisPeer::Serve(int fd) {
  int one = 1;
  setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
  std::string in;
  std::vector<std::string> command;
  char buf[16384];
  while (!stop_) {
    const int64_t used = ParseCommand(in, &command);
    if (used < 0) return;
    if (used == 0) {
      pollfd p{.fd = fd, .events = POLLIN, .revents = 0};
      if (poll(&p, 1, 20) != 1) continue;
      const ssize_t n = recv(fd, buf, sizeof(buf), 0);
      if (n <= 0) return;
      in.append(buf, n);
      continue;
    }
    in.erase(0, used);
    ++commands_;
    std::optional<Answer> answer = script_ ? script_(command) : std::nullopt;
    if (!answer) answer = DefaultAnswer(command);
    const auto until = std::chrono::steady_clock::now() + answer->stream_for;
    size_t sent = 0;
    for (size_t cut : answer->cuts) {
      cut = std::min(cut, answer->bytes.size());
      if (cut <= sent) continue;
      if (!SendAll(fd, answer->bytes.data() + sent, cut - sent, until)) return;
      sent = cut;
      std::this_thread::sleep_for(answer->pause);
    }
    if (!SendAll(fd, answer->bytes.data() + sent, answer->bytes.size() - sent, until)) return;
    if (!answer->stream.empty()) {
      uint64_t streamed = 0;
      std::string chunk;
      while (chunk.size() < 65536) chunk += answer->stream;
      while (streamed < answer->stream_limit_bytes && std::chrono::steady_clock::now() < until) {
        const size_t n = std::min<uint64_t>(chunk.size(), answer->stream_limit_bytes - streamed);
        if (!SendAll(fd, chunk.data(), n, until)) return;
        streamed += n;
      }
    }
    if (answer->hang_up) return;
  }
}

}  // namespace kvtier::test
