// LocalRedisCluster: a real Redis Cluster of Debian's redis-server processes on loopback, for
// tests, benchmarks and demos. Each node runs in its own temp dir (cluster-enabled, no
// persistence), on free ports found at start; the cluster is formed with
// `redis-cli --cluster create ... --cluster-yes` and Start() returns once every node reports
// cluster_state:ok. The destructor kills every node (SIGKILL) and removes the dirs.
//
// Available() says whether redis-server and redis-cli are installed; tests skip with a message
// when they are not (CI installs them: .ci/setup).
#ifndef KVTIER_TEST_UTIL_REDIS_CLUSTER_FIXTURE_H_
#define KVTIER_TEST_UTIL_REDIS_CLUSTER_FIXTURE_H_

#include <atomic>
#include <chrono>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"

namespace kvtier::test {

struct LocalRedisClusterOptions {
  int masters = 3;
  int replicas_per_master = 0;
  std::chrono::milliseconds node_timeout{1000};  // cluster-node-timeout: failover speed
  std::string password;                          // requirepass/masterauth when non-empty
  std::string maxmemory;                         // e.g. "64mb"; empty = unlimited
};

class LocalRedisCluster {
 public:
  static bool Available(std::string* why);
  // Starts the cluster. Retries (up to 5 attempts, on new ports) only when a node could not bind
  // its port because another process took it after it was found free; any other failure is
  // returned at once (a node that exits for another reason is kFailedPrecondition).
  static absl::StatusOr<std::unique_ptr<LocalRedisCluster>> Start(LocalRedisClusterOptions o = {});
  // Attempts Start has made in this process (tests of the retry rule).
  static std::atomic<int> start_attempts;
  ~LocalRedisCluster();

  // "127.0.0.1:port" of every node, masters first (in the order Start made them).
  std::vector<std::string> nodes() const;
  std::vector<std::string> seeds() const { return nodes(); }
  int port(int node) const;
  // SIGKILL one node (it stays down until Restart).
  void Kill(int node);
  // Starts a killed node again with its old config (it rejoins the cluster) and waits for
  // cluster_state:ok everywhere.
  absl::Status Restart(int node);
  // Waits until every live node reports cluster_state:ok (after a failover, say).
  absl::Status WaitHealthy(std::chrono::milliseconds timeout);
  // Waits until every live master has replicas_per_master replicas online at its replication
  // offset (so a write acknowledged before survives a failover).
  absl::Status WaitReplicated(std::chrono::milliseconds timeout);
  // Moves `slots` hash slots from master `from` to master `to` (redis-cli --cluster reshard).
  absl::Status Reshard(int from, int to, int slots);
  // Runs redis-cli against node `node` with `args`; returns its stdout.
  absl::StatusOr<std::string> Cli(int node, const std::vector<std::string>& args) const;

 private:
  struct Impl;
  explicit LocalRedisCluster(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

}  // namespace kvtier::test

#endif  // KVTIER_TEST_UTIL_REDIS_CLUSTER_FIXTURE_H_
