#!/usr/bin/env bash
# A throwaway Redis Cluster on loopback, from Debian's redis-server (apt-get install redis-server
# redis-tools), for the remote tier's demo and benchmark and for trying Options.remote by hand.
#
#   examples/local_redis_cluster.sh start DIR [MASTERS]   # prints the nodes: 127.0.0.1:P1,...
#   examples/local_redis_cluster.sh stop DIR              # kills the nodes, removes DIR
#
# Each node runs daemonized in DIR/nodeI (cluster-enabled, no persistence) on free ports (the
# cluster bus takes port + 10000 too); `start` returns once every node reports cluster_state:ok,
# and on any failure stops what it started and exits non-zero with the nodes' logs.
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

fail() {
  echo "local_redis_cluster: $1" >&2
  cat "$dir"/node*/redis.log "$dir/create.log" 2>/dev/null >&2 || true
  stop
  exit 1
}

start() {
  for tool in redis-server redis-cli; do
    command -v "$tool" >/dev/null || { echo "local_redis_cluster: $tool not found (apt-get install redis-server redis-tools)" >&2; exit 1; }
  done
  mkdir -p "$dir"
  # A port is free when nothing answers on it.
  in_use() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
  local ports=() nodes=() p i base=$((20000 + (RANDOM % 900) * 10))
  for ((p = base; ${#ports[@]} < masters && p < base + 2000; ++p)); do
    if ! in_use "$p" && ! in_use $((p + 10000)); then ports+=("$p"); fi
  done
  [[ ${#ports[@]} -eq $masters ]] || fail "no free ports near $base"
  for ((i = 0; i < masters; ++i)); do
    mkdir -p "$dir/node$i"
    redis-server --port "${ports[$i]}" --bind 127.0.0.1 --cluster-enabled yes \
      --cluster-config-file nodes.conf --cluster-node-timeout 2000 --appendonly no --save '' \
      --dir "$dir/node$i" --daemonize yes --pidfile "$dir/node$i/redis.pid" \
      --logfile "$dir/node$i/redis.log" >/dev/null
    nodes+=("127.0.0.1:${ports[$i]}")
  done
  for p in "${ports[@]}"; do
    wait_for 10 bash -c "[[ \$(redis-cli -p $p ping) == PONG ]]" || fail "redis-server on $p did not start"
  done
  redis-cli --cluster create "${nodes[@]}" --cluster-replicas 0 --cluster-yes >"$dir/create.log" 2>&1 ||
    fail "redis-cli --cluster create failed"
  for p in "${ports[@]}"; do
    wait_for 20 bash -c "redis-cli -p $p cluster info | grep -q '^cluster_state:ok'" ||
      fail "the cluster did not reach cluster_state:ok"
  done
  (IFS=,; echo "${nodes[*]}")
}

case $cmd in
  start) start ;;
  stop) stop ;;
  *) usage ;;
esac
