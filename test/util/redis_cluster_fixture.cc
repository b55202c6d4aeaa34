#include "test/util/redis_cluster_fixture.h"

#include <fcntl.h>
#include <hiredis/hiredis.h>
#include <netinet/in.h>
#include <poll.h>
#include <signal.h>
#include <spawn.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <map>
#include <random>
#include <thread>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "absl/strings/string_view.h"
#include "absl/strings/strip.h"
#include "lib/common/status_macros.h"
#include "test/util/test_util.h"

extern char** environ;

namespace kvtier::test {
namespace {

namespace fs = std::filesystem;
using Clock = std::chrono::steady_clock;
using std::chrono::milliseconds;

// An executable named `name` on PATH, or "".
std::string FindOnPath(const std::string& name) {
  const char* path = std::getenv("PATH");
  for (absl::string_view dir : absl::StrSplit(path ? path : "/usr/bin:/bin", ':')) {
    if (dir.empty()) continue;
    std::string candidate = absl::StrCat(dir, "/", name);
    if (access(candidate.c_str(), X_OK) == 0) return candidate;
  }
  return "";
}

// Whether 127.0.0.1:port can be bound now (nobody listens or lingers there).
bool PortFree(int port) {
  const int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd < 0) return false;
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_port = htons(static_cast<uint16_t>(port));
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  const bool ok = bind(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) == 0;
  close(fd);
  return ok;
}

// posix_spawn of argv with stdin from /dev/null and stdout+stderr to `out_fd`, and no other fd
// of ours inherited (a child holding a copy of a client socket would keep that connection open
// after the client closed it). Where setpriv exists the child gets SIGKILL when we die, so a
// crashed test (sanitizer abort) leaves no redis-server behind.
absl::StatusOr<pid_t> Spawn(std::vector<std::string> args, int out_fd, bool die_with_parent) {
  static const std::string setpriv = FindOnPath("setpriv");
  if (die_with_parent && !setpriv.empty()) {
    args.insert(args.begin(), {setpriv, "--pdeathsig", "KILL"});
  }
  std::vector<char*> argv;
  for (std::string& a : args) argv.push_back(a.data());
  argv.push_back(nullptr);
  posix_spawn_file_actions_t fa;
  posix_spawn_file_actions_init(&fa);
  posix_spawn_file_actions_addopen(&fa, 0, "/dev/null", O_RDONLY, 0);
  posix_spawn_file_actions_adddup2(&fa, out_fd, 1);
  posix_spawn_file_actions_adddup2(&fa, out_fd, 2);
  posix_spawn_file_actions_addclosefrom_np(&fa, 3);
  pid_t pid = -1;
  const int r = posix_spawn(&pid, argv[0], &fa, nullptr, argv.data(), environ);
  posix_spawn_file_actions_destroy(&fa);
  if (r != 0) return absl::ErrnoToStatus(r, absl::StrCat("posix_spawn ", args[0]));
  return pid;
}

struct ProcessResult {
  int exit_code = -1;
  std::string output;  // stdout and stderr
};

// Runs argv to completion (SIGKILLed after `timeout`), capturing its output.
absl::StatusOr<ProcessResult> RunProcess(const std::vector<std::string>& args,
                                         milliseconds timeout) {
  int fds[2];
  if (pipe2(fds, O_CLOEXEC) != 0) return absl::ErrnoToStatus(errno, "pipe2");
  absl::StatusOr<pid_t> pid = Spawn(args, fds[1], /*die_with_parent=*/false);
  close(fds[1]);
  if (!pid.ok()) {
    close(fds[0]);
    return pid.status();
  }
  ProcessResult result;
  const Clock::time_point deadline = Clock::now() + timeout;
  bool timed_out = false;
  for (;;) {
    const auto left = std::chrono::duration_cast<milliseconds>(deadline - Clock::now()).count();
    if (left <= 0) {
      timed_out = true;
      break;
    }
    pollfd p{.fd = fds[0], .events = POLLIN, .revents = 0};
    const int n = poll(&p, 1, static_cast<int>(left));
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) continue;
    char buf[4096];
    const ssize_t got = read(fds[0], buf, sizeof(buf));
    if (got < 0 && errno == EINTR) continue;
    if (got <= 0) break;
    result.output.append(buf, static_cast<size_t>(got));
  }
  close(fds[0]);
  if (timed_out) kill(*pid, SIGKILL);
  int status = 0;
  while (waitpid(*pid, &status, 0) < 0 && errno == EINTR) {
  }
  if (timed_out) {
    return absl::DeadlineExceededError(absl::StrCat(args[0], " ", args.size() > 1 ? args[1] : "",
                                                    ": still running after ", timeout.count(),
                                                    "ms; output: ", result.output));
  }
  result.exit_code = WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
  return result;
}

// One command to 127.0.0.1:port over hiredis (quicker than a redis-cli process per poll). The
// reply as text: strings and statuses as is, integers in decimal, arrays one element per line.
absl::StatusOr<std::string> Query(int port, const std::string& password,
                                  const std::vector<std::string>& args) {
  const timeval tv{.tv_sec = 1, .tv_usec = 0};
  std::unique_ptr<redisContext, void (*)(redisContext*)> c(
      redisConnectWithTimeout("127.0.0.1", port, tv), redisFree);
  if (c == nullptr || c->err) {
    return absl::UnavailableError(
        absl::StrCat("Query: connect to port ", port, ": ", c ? c->errstr : "out of memory"));
  }
  redisSetTimeout(c.get(), tv);
  auto command = [&](const std::vector<std::string>& a) -> absl::StatusOr<std::string> {
    std::vector<const char*> argv;
    std::vector<size_t> len;
    for (const std::string& s : a) {
      argv.push_back(s.data());
      len.push_back(s.size());
    }
    std::unique_ptr<redisReply, void (*)(void*)> r(
        static_cast<redisReply*>(
            redisCommandArgv(c.get(), static_cast<int>(a.size()), argv.data(), len.data())),
        freeReplyObject);
    if (r == nullptr) {
      return absl::UnavailableError(
          absl::StrCat("Query: ", a[0], " on port ", port, ": ", c->errstr));
    }
    auto text = [](const redisReply* e) -> std::string {
      if (e->type == REDIS_REPLY_INTEGER) return absl::StrCat(e->integer);
      if (e->type == REDIS_REPLY_STRING || e->type == REDIS_REPLY_STATUS) {
        return std::string(e->str, e->len);
      }
      return "";
    };
    if (r->type == REDIS_REPLY_ERROR) {
      return absl::InternalError(absl::StrCat("Query: ", a[0], " on port ", port, ": ", r->str));
    }
    if (r->type == REDIS_REPLY_ARRAY) {
      std::vector<std::string> lines;
      for (size_t i = 0; i < r->elements; ++i) lines.push_back(text(r->element[i]));
      return absl::StrJoin(lines, "\n");
    }
    return text(r.get());
  };
  if (!password.empty()) KVTIER_RETURN_IF_ERROR(command({"AUTH", password}).status());
  return command(args);
}

}  // namespace

struct LocalRedisCluster::Impl {
  struct Node {
    int port = 0;
    fs::path dir;
    pid_t pid = -1;  // -1 while killed
  };

  LocalRedisClusterOptions options;
  std::string server_bin, cli_bin;
  std::unique_ptr<TempDir> root;
  std::vector<Node> nodes;
  // Set by an attempt whose node exited at startup because its port (or the cluster bus port,
  // +10000) was taken between PortFree() and its bind: the one failure Start retries.
  bool port_taken = false;

  ~Impl() {
    for (int i = 0; i < static_cast<int>(nodes.size()); ++i) KillNode(i);
  }

  void KillNode(int i) {
    Node& n = nodes[i];
    if (n.pid <= 0) return;
    kill(n.pid, SIGKILL);
    int status = 0;
    while (waitpid(n.pid, &status, 0) < 0 && errno == EINTR) {
    }
    n.pid = -1;
  }

  absl::Status SpawnNode(int i) {
    Node& n = nodes[i];
    fs::create_directories(n.dir);
    std::vector<std::string> args = {
        server_bin,
        "--port",
        absl::StrCat(n.port),
        "--bind",
        "127.0.0.1",
        "--protected-mode",
        "no",
        "--daemonize",
        "no",
        "--cluster-enabled",
        "yes",
        "--cluster-config-file",
        "nodes.conf",
        "--cluster-node-timeout",
        absl::StrCat(options.node_timeout.count()),
        // Replicas may always take over: a test's failover must not wait on data age.
        "--cluster-replica-validity-factor",
        "0",
        "--appendonly",
        "no",
        "--save",
        "",
        // Redis 7 delays a diskless full sync 5 s by default; the replicas should sync at once.
        "--repl-diskless-sync-delay",
        "0",
        "--dir",
        n.dir.string(),
        "--logfile",
        (n.dir / "redis.log").string(),
    };
    if (!options.password.empty()) {
      args.insert(args.end(),
                  {"--requirepass", options.password, "--masterauth", options.password});
    }
    if (!options.maxmemory.empty()) {
      // A cache evicts rather than refusing writes.
      args.insert(args.end(),
                  {"--maxmemory", options.maxmemory, "--maxmemory-policy", "allkeys-lru"});
    }
    const fs::path out = n.dir / "stdout.log";
    const int fd = open(out.c_str(), O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0644);
    if (fd < 0) return absl::ErrnoToStatus(errno, absl::StrCat("open ", out.string()));
    absl::StatusOr<pid_t> pid = Spawn(args, fd, /*die_with_parent=*/true);
    close(fd);
    if (!pid.ok()) return pid.status();
    n.pid = *pid;
    return absl::OkStatus();
  }

  // Until the node answers PING; kUnavailable if it exits first (port taken, say).
  absl::Status WaitListening(int i, milliseconds timeout) {
    const Clock::time_point deadline = Clock::now() + timeout;
    for (;;) {
      if (Query(nodes[i].port, options.password, {"PING"}).ok()) return absl::OkStatus();
      int status = 0;
      if (waitpid(nodes[i].pid, &status, WNOHANG) == nodes[i].pid) {
        nodes[i].pid = -1;
        std::string log;
        for (const char* name : {"redis.log", "stdout.log"}) {
          std::ifstream in(nodes[i].dir / name);
          log += std::string(std::istreambuf_iterator<char>(in), {});
        }
        const std::string what =
            absl::StrCat("LocalRedisCluster: redis-server on port ", nodes[i].port, " exited; see ",
                         (nodes[i].dir / "redis.log").string());
        if (log.find("Address already in use") != std::string::npos) {
          port_taken = true;
          return absl::UnavailableError(what);
        }
        return absl::FailedPreconditionError(what);  // a real fault: not retried
      }
      if (Clock::now() >= deadline) {
        return absl::DeadlineExceededError(absl::StrCat("LocalRedisCluster: redis-server on port ",
                                                        nodes[i].port, " not answering after ",
                                                        timeout.count(), "ms"));
      }
      std::this_thread::sleep_for(milliseconds(10));
    }
  }

  // The slot coverage node `i` believes in, as "first-last:port" ranges sorted, if it covers
  // every slot with masters that are up and not marked failed; else an error saying why not.
  absl::StatusOr<std::string> Coverage(int i) const {
    KVTIER_ASSIGN_OR_RETURN(std::string info,
                            Query(nodes[i].port, options.password, {"CLUSTER", "INFO"}));
    if (info.find("cluster_state:ok") == std::string::npos) {
      return absl::UnavailableError(absl::StrCat("port ", nodes[i].port, ": cluster_state not ok"));
    }
    KVTIER_ASSIGN_OR_RETURN(std::string text,
                            Query(nodes[i].port, options.password, {"CLUSTER", "NODES"}));
    std::vector<std::string> ranges;
    int covered = 0;
    for (absl::string_view line : absl::StrSplit(text, '\n', absl::SkipEmpty())) {
      std::vector<absl::string_view> f = absl::StrSplit(line, ' ', absl::SkipEmpty());
      if (f.size() < 8) continue;
      const absl::string_view flags = f[2];
      if (flags.find("master") == absl::string_view::npos) continue;
      const bool has_slots = f.size() > 8;
      if (!has_slots) continue;
      if (flags.find("fail") != absl::string_view::npos) {
        return absl::UnavailableError(
            absl::StrCat("port ", nodes[i].port, ": master ", f[1], " with slots is failing"));
      }
      // f[1] = "ip:port@cport[,hostname]"
      absl::string_view addr = f[1].substr(0, f[1].find('@'));
      int port = 0;
      if (!absl::SimpleAtoi(addr.substr(addr.rfind(':') + 1), &port)) continue;
      const bool live = std::any_of(nodes.begin(), nodes.end(),
                                    [&](const Node& n) { return n.port == port && n.pid > 0; });
      if (!live) {
        return absl::UnavailableError(
            absl::StrCat("port ", nodes[i].port, ": slots still on killed node ", port));
      }
      for (size_t k = 8; k < f.size(); ++k) {
        if (f[k].front() == '[') {
          return absl::UnavailableError(
              absl::StrCat("port ", nodes[i].port, ": slot ", f[k], " is migrating"));
        }
        std::pair<absl::string_view, absl::string_view> r = absl::StrSplit(f[k], '-');
        int first = 0, last = 0;
        if (!absl::SimpleAtoi(r.first, &first)) continue;
        if (r.second.empty()) {
          last = first;
        } else if (!absl::SimpleAtoi(r.second, &last)) {
          continue;
        }
        covered += last - first + 1;
        ranges.push_back(absl::StrCat(first, "-", last, ":", port));
      }
    }
    if (covered != 16384) {
      return absl::UnavailableError(
          absl::StrCat("port ", nodes[i].port, ": ", covered, " slots covered vs 16384"));
    }
    std::sort(ranges.begin(), ranges.end());
    return absl::StrJoin(ranges, ",");
  }

  absl::Status WaitHealthy(milliseconds timeout) {
    const Clock::time_point deadline = Clock::now() + timeout;
    absl::Status last = absl::OkStatus();
    for (;;) {
      last = absl::OkStatus();
      std::string agreed;
      for (int i = 0; i < static_cast<int>(nodes.size()) && last.ok(); ++i) {
        if (nodes[i].pid <= 0) continue;
        absl::StatusOr<std::string> cov = Coverage(i);
        if (!cov.ok()) {
          last = cov.status();
        } else if (agreed.empty()) {
          agreed = *cov;
        } else if (*cov != agreed) {
          last = absl::UnavailableError(
              absl::StrCat("port ", nodes[i].port, " disagrees on the slot map"));
        }
      }
      if (last.ok()) return last;
      if (Clock::now() >= deadline) {
        return absl::DeadlineExceededError(absl::StrCat(
            "LocalRedisCluster: not healthy after ", timeout.count(), "ms (", last.message(), ")"));
      }
      std::this_thread::sleep_for(milliseconds(20));
    }
  }

  std::vector<std::string> AuthArgs() const {
    if (options.password.empty()) return {};
    return {"-a", options.password, "--no-auth-warning"};
  }

  absl::StatusOr<std::string> RunCli(std::vector<std::string> args, milliseconds timeout) const {
    std::vector<std::string> argv = {cli_bin};
    for (std::string& a : AuthArgs()) argv.push_back(std::move(a));
    for (std::string& a : args) argv.push_back(std::move(a));
    KVTIER_ASSIGN_OR_RETURN(ProcessResult r, RunProcess(argv, timeout));
    if (r.exit_code != 0) {
      return absl::InternalError(absl::StrCat("redis-cli ", absl::StrJoin(args, " "), ": exit ",
                                              r.exit_code, ": ", r.output));
    }
    return r.output;
  }

  // One attempt at Start with fresh random ports; kUnavailable when a port was taken meanwhile.
  absl::Status StartOnce(std::mt19937& rng) {
    const int count = options.masters * (1 + options.replicas_per_master);
    std::uniform_int_distribution<int> dist(20000, 29999);
    nodes.clear();
    while (static_cast<int>(nodes.size()) < count) {
      const int port = dist(rng);
      const bool used = std::any_of(nodes.begin(), nodes.end(), [&](const Node& n) {
        return n.port == port || n.port + 10000 == port || n.port == port + 10000;
      });
      if (used || !PortFree(port) || !PortFree(port + 10000)) continue;
      const int i = static_cast<int>(nodes.size());
      nodes.push_back(Node{.port = port, .dir = root->path / absl::StrCat("node", i, "_", port)});
    }
    for (int i = 0; i < count; ++i) KVTIER_RETURN_IF_ERROR(SpawnNode(i));
    for (int i = 0; i < count; ++i) KVTIER_RETURN_IF_ERROR(WaitListening(i, milliseconds(10000)));

    std::vector<std::string> args = {"--cluster", "create"};
    for (const Node& n : nodes) args.push_back(absl::StrCat("127.0.0.1:", n.port));
    args.insert(args.end(),
                {"--cluster-replicas", absl::StrCat(options.replicas_per_master), "--cluster-yes"});
    KVTIER_RETURN_IF_ERROR(RunCli(args, milliseconds(60000)).status());
    KVTIER_RETURN_IF_ERROR(WaitHealthy(milliseconds(30000)));

    // Masters first: redis-cli picks the first ones on one host, but check rather than assume.
    std::vector<Node> masters, replicas;
    for (const Node& n : nodes) {
      KVTIER_ASSIGN_OR_RETURN(std::string role, Query(n.port, options.password, {"ROLE"}));
      (role.rfind("master", 0) == 0 ? masters : replicas).push_back(n);
    }
    if (static_cast<int>(masters.size()) != options.masters) {
      return absl::InternalError(absl::StrCat("LocalRedisCluster: ", masters.size(), " masters vs ",
                                              options.masters, " asked for"));
    }
    nodes = std::move(masters);
    nodes.insert(nodes.end(), replicas.begin(), replicas.end());
    return absl::OkStatus();
  }
};

std::atomic<int> LocalRedisCluster::start_attempts{0};

bool LocalRedisCluster::Available(std::string* why) {
  for (const char* bin : {"redis-server", "redis-cli"}) {
    if (FindOnPath(bin).empty()) {
      if (why != nullptr)
        *why = absl::StrCat(bin, " not found on PATH (apt install redis-server redis-tools)");
      return false;
    }
  }
  return true;
}

absl::StatusOr<std::unique_ptr<LocalRedisCluster>> LocalRedisCluster::Start(
    LocalRedisClusterOptions o) {
  std::string why;
  if (!Available(&why))
    return absl::FailedPreconditionError(absl::StrCat("LocalRedisCluster: ", why));
  if (o.masters < 3 || o.replicas_per_master < 0) {
    // redis-cli --cluster create refuses fewer than 3 masters.
    return absl::InvalidArgumentError(absl::StrCat("LocalRedisCluster: ", o.masters,
                                                   " masters vs at least 3, ",
                                                   o.replicas_per_master, " replicas vs >= 0"));
  }
  auto impl = std::make_unique<Impl>();
  impl->options = std::move(o);
  impl->server_bin = FindOnPath("redis-server");
  impl->cli_bin = FindOnPath("redis-cli");
  impl->root = std::make_unique<TempDir>("redis_cluster");
  std::mt19937 rng(static_cast<uint32_t>(std::random_device{}() ^ getpid()));
  absl::Status st;
  // Only a port taken between the check and the bind is retried, on new ports: any other
  // failure is the test's to see, not to be masked by another try.
  for (int attempt = 0; attempt < 5; ++attempt) {
    impl->port_taken = false;
    start_attempts.fetch_add(1);
    st = impl->StartOnce(rng);
    if (st.ok()) return std::unique_ptr<LocalRedisCluster>(new LocalRedisCluster(std::move(impl)));
    for (int i = 0; i < static_cast<int>(impl->nodes.size()); ++i) impl->KillNode(i);
    std::error_code ignored;
    for (const Impl::Node& n : impl->nodes) fs::remove_all(n.dir, ignored);
    if (!impl->port_taken) break;
  }
  return st;
}

LocalRedisCluster::LocalRedisCluster(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
LocalRedisCluster::~LocalRedisCluster() = default;

std::vector<std::string> LocalRedisCluster::nodes() const {
  std::vector<std::string> out;
  for (const Impl::Node& n : impl_->nodes) out.push_back(absl::StrCat("127.0.0.1:", n.port));
  return out;
}

int LocalRedisCluster::port(int node) const { return impl_->nodes.at(node).port; }

void LocalRedisCluster::Kill(int node) { impl_->KillNode(node); }

absl::Status LocalRedisCluster::Restart(int node) {
  if (impl_->nodes.at(node).pid > 0) {
    return absl::FailedPreconditionError(
        absl::StrCat("Restart: node ", node, " is running (Kill it first)"));
  }
  KVTIER_RETURN_IF_ERROR(impl_->SpawnNode(node));
  KVTIER_RETURN_IF_ERROR(impl_->WaitListening(node, milliseconds(10000)));
  return impl_->WaitHealthy(milliseconds(30000));
}

absl::Status LocalRedisCluster::WaitHealthy(milliseconds timeout) {
  return impl_->WaitHealthy(timeout);
}

absl::Status LocalRedisCluster::WaitReplicated(milliseconds timeout) {
  const Clock::time_point deadline = Clock::now() + timeout;
  for (;;) {
    absl::Status last = absl::OkStatus();
    for (const Impl::Node& n : impl_->nodes) {
      if (n.pid <= 0 || !last.ok()) continue;
      absl::StatusOr<std::string> info =
          Query(n.port, impl_->options.password, {"INFO", "replication"});
      if (!info.ok()) {
        last = info.status();
        continue;
      }
      if (info->find("role:master") == std::string::npos) continue;
      int64_t master_offset = -1;
      int in_sync = 0;
      for (absl::string_view line :
           absl::StrSplit(*info, absl::ByAnyChar("\r\n"), absl::SkipEmpty())) {
        if (absl::ConsumePrefix(&line, "master_repl_offset:")) {
          (void)absl::SimpleAtoi(line, &master_offset);
        }
      }
      for (absl::string_view line :
           absl::StrSplit(*info, absl::ByAnyChar("\r\n"), absl::SkipEmpty())) {
        // slave0:ip=127.0.0.1,port=23456,state=online,offset=1234,lag=0
        if (line.rfind("slave", 0) != 0 || line.find("state=online") == absl::string_view::npos) {
          continue;
        }
        const size_t at = line.find("offset=");
        int64_t offset = -2;
        if (at != absl::string_view::npos) {
          absl::string_view rest = line.substr(at + 7);
          (void)absl::SimpleAtoi(rest.substr(0, rest.find(',')), &offset);
        }
        if (offset == master_offset) ++in_sync;
      }
      if (in_sync < impl_->options.replicas_per_master) {
        last = absl::UnavailableError(absl::StrCat("master on port ", n.port, ": ", in_sync,
                                                   " replicas in sync vs ",
                                                   impl_->options.replicas_per_master));
      }
    }
    if (last.ok()) return last;
    if (Clock::now() >= deadline) {
      return absl::DeadlineExceededError(
          absl::StrCat("WaitReplicated: after ", timeout.count(), "ms: ", last.message()));
    }
    std::this_thread::sleep_for(milliseconds(10));
  }
}

absl::Status LocalRedisCluster::Reshard(int from, int to, int slots) {
  const Impl::Node& src = impl_->nodes.at(from);
  const Impl::Node& dst = impl_->nodes.at(to);
  KVTIER_ASSIGN_OR_RETURN(std::string from_id,
                          Query(src.port, impl_->options.password, {"CLUSTER", "MYID"}));
  KVTIER_ASSIGN_OR_RETURN(std::string to_id,
                          Query(dst.port, impl_->options.password, {"CLUSTER", "MYID"}));
  KVTIER_RETURN_IF_ERROR(impl_
                             ->RunCli({"--cluster", "reshard", absl::StrCat("127.0.0.1:", src.port),
                                       "--cluster-from", from_id, "--cluster-to", to_id,
                                       "--cluster-slots", absl::StrCat(slots), "--cluster-yes"},
                                      milliseconds(60000))
                             .status());
  return impl_->WaitHealthy(milliseconds(30000));
}

absl::StatusOr<std::string> LocalRedisCluster::Cli(int node,
                                                   const std::vector<std::string>& args) const {
  std::vector<std::string> argv = {"-h", "127.0.0.1", "-p",
                                   absl::StrCat(impl_->nodes.at(node).port)};
  argv.insert(argv.end(), args.begin(), args.end());
  return impl_->RunCli(std::move(argv), milliseconds(30000));
}

}  // namespace kvtier::test
