// FakeRedisPeer: a hostile or broken "Redis Cluster" of one node, for the tests of what the
// client does whatever a peer sends. A real TCP socket on loopback, served by threads of the
// test: it parses each command the client sends (RESP arrays of bulk strings) and answers with
// what the test's script says: fixed bytes, then optionally a pattern streamed for as long as the
// client reads, up to a byte and a time limit (so a client that never stops reading makes the
// test fail, not hang). Commands the script leaves alone get a well-behaved answer: CLUSTER
// SLOTS gives every slot to this node, EXISTS ":1", GET nil, SET and AUTH "+OK".
//
// Thread safety: bytes_sent() and commands() from any thread; the script runs on the peer's
// connection threads (one per connection).
// Lifetime: the destructor stops streaming, closes every connection and joins the threads.
#ifndef KVTIER_TEST_UTIL_FAKE_REDIS_PEER_H_
#define KVTIER_TEST_UTIL_FAKE_REDIS_PEER_H_

#include <atomic>
#include <chrono>
#include <cstdint>
#include <functional>
#include <mutex>
#include <optional>
#include <string>
#include <thread>
#include <vector>

namespace kvtier::test {

class FakeRedisPeer {
 public:
  struct Answer {
    std::string bytes;                         // sent first, as they are
    std::string stream;                        // then sent again and again (nothing when empty)...
    uint64_t stream_limit_bytes = 1ull << 30;  // ...until this many bytes were streamed,
    std::chrono::milliseconds stream_for{10'000};  // or this long passed (bytes too),
    bool hang_up = false;                          // then the connection is closed if set
    // `bytes` sent in pieces: cut at these offsets (ascending), with `pause` after each piece
    // (the peer's socket has TCP_NODELAY, so each piece leaves on its own).
    std::vector<size_t> cuts;
    std::chrono::milliseconds pause{0};
  };
  // The answer to one command (its arguments, verb first), or nullopt for the default one.
  using Script = std::function<std::optional<Answer>(const std::vector<std::string>& command)>;

  // Listens on a free loopback port at once (the test fails through Catch if it cannot).
  explicit FakeRedisPeer(Script script);
  ~FakeRedisPeer();
  FakeRedisPeer(const FakeRedisPeer&) = delete;
  FakeRedisPeer& operator=(const FakeRedisPeer&) = delete;

  std::string addr() const;  // "127.0.0.1:<port>"
  // Bytes the client accepted (send() returned them), all connections together.
  uint64_t bytes_sent() const { return bytes_sent_.load(); }
  uint64_t commands() const { return commands_.load(); }

 private:
  void AcceptLoop();
  void Serve(int fd);
  // False when the client closed the connection, the peer stops, or `until` passed.
  bool SendAll(int fd, const char* data, size_t size, std::chrono::steady_clock::time_point until);
  std::optional<Answer> DefaultAnswer(const std::vector<std::string>& command) const;

  Script script_;
  int listen_fd_ = -1;
  int port_ = 0;
  std::atomic<bool> stop_{false};
  std::atomic<uint64_t> bytes_sent_{0};
  std::atomic<uint64_t> commands_{0};
  std::thread acceptor_;
  std::mutex mu_;
  std::vector<std::thread> connections_;  // guarded by mu_
};

}  // namespace kvtier::test

#endif  // KVTIER_TEST_UTIL_FAKE_REDIS_PEER_H_
