#!/usr/bin/env bash
# A throwaway Redis Cluster on loopback, from Debian's redis-server (apt-get install redis-server
# redis-tools), for the remote tier's demo and benchmark and for trying Options.remote by hand.
#
#   examples/local_redis_cluster.sh start DIR [MASTERS]   # prints the nodes: 127.0.0.1:P1,...
#   examples/local_redis_cluster.sh stop DIR              # kills the nodes, removes DIR
#
# Each node runs daemonized in DIR/nodeI (cluster-enabled, no persistence) on free ports (the
# cluster bus takes port + 10000 too); `start` returns once every node reports cluster_state:ok.
# A failed attempt stops what it started and shows the nodes' logs; after three, it exits 1.
set -euo pipefail

usage() { echo "usage: $0 start DIR [MASTERS] | stop DIR" >&2; exit 2; }
[[ $# -ge 2 ]] || usage
cmd=$1
dir=$2
masters=${3:-3}

stop() {
  local pidfile
  for pidfile in "$dir"/node*/redis.pid; do
    [[ -f $pidfile ]] && kill -9 "$(cat "$pidfile")" 2>/dev/null || true
  done
  rm -rf "$dir"
}

# Polls a command every 0.1 s for up to $1 seconds.
wait_for() {
  local deadline=$(($(date +%s) + $1))
  shift
  until "$@" >/dev/null 2>&1; do
    if (($(date +%s) >= deadline)); then return 1; fi
    sleep 0.1
  done
}

# Reports why a start attempt failed (with the nodes' output and logs) and stops its nodes.
fail() {
  echo "local_redis_cluster: $1" >&2
  cat "$dir"/node*/stdout "$dir"/node*/redis.log "$dir/create.log" 2>/dev/null >&2 || true
  stop
  return 1
}

# One attempt on freshly chosen ports.
start_once() {
  mkdir -p "$dir"
  # A port is free when nothing answers on it.
  in_use() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
  local ports=() nodes=() p i base=$((20000 + (RANDOM % 900) * 10))
  for ((p = base; ${#ports[@]} < masters && p < base + 2000; ++p)); do
    if ! in_use "$p" && ! in_use $((p + 10000)); then ports+=("$p"); fi
  done
  [[ ${#ports[@]} -eq $masters ]] || { fail "no free ports near $base"; return 1; }
  for ((i = 0; i < masters; ++i)); do
    mkdir -p "$dir/node$i"
    redis-server --port "${ports[$i]}" --bind 127.0.0.1 --cluster-enabled yes \
      --cluster-config-file nodes.conf --cluster-node-timeout 2000 --appendonly no --save '' \
      --dir "$dir/node$i" --daemonize yes --pidfile "$dir/node$i/redis.pid" \
      --logfile "$dir/node$i/redis.log" >"$dir/node$i/stdout" 2>&1 ||
      { fail "redis-server on ${ports[$i]} failed"; return 1; }
    nodes+=("127.0.0.1:${ports[$i]}")
  done
  for p in "${ports[@]}"; do
    wait_for 10 bash -c "[[ \$(redis-cli -p $p ping) == PONG ]]" ||
      { fail "redis-server on $p did not start"; return 1; }
  done
  redis-cli --cluster create "${nodes[@]}" --cluster-replicas 0 --cluster-yes >"$dir/create.log" 2>&1 ||
    { fail "redis-cli --cluster create failed"; return 1; }
  for p in "${ports[@]}"; do
    wait_for 20 bash -c "redis-cli -p $p cluster info | grep -q '^cluster_state:ok'" ||
      { fail "the cluster did not reach cluster_state:ok"; return 1; }
  done
  (IFS=,; echo "${nodes[*]}")
}

# A port chosen free can be taken before redis-server binds it (ephemeral client ports, other
# clusters starting): try again on other ports.
start() {
  for tool in redis-server redis-cli; do
    command -v "$tool" >/dev/null || { echo "local_redis_cluster: $tool not found (apt-get install redis-server redis-tools)" >&2; exit 1; }
  done
  local attempt
  for attempt in 1 2 3; do
    start_once && return 0
    echo "local_redis_cluster: attempt $attempt failed" >&2
  done
  exit 1
}

case $cmd in
  start) start ;;
  stop) stop ;;
  *) usage ;;
esac
