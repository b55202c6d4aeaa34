#!/usr/bin/env bash
# remote_demo.sh: two engine replicas share KV blocks through a Redis Cluster.
#
#   examples/remote_demo.sh [BUILD_DIR]          (default build/default)
#
# Starts a 3-master Redis Cluster of Debian's redis-server on loopback in a temp dir, runs
# engine_loop process A on the first $REQUESTS requests of the trace (publishing every block it
# computes to the cluster), then process B -- a second replica with fresh device and host tiers,
# same scope -- on the same requests. B finds the prompts' blocks in the remote tier instead of
# recomputing them; both processes check every loaded byte. The cluster is killed on exit.
#
# Environment: ENGINE_LOOP (the binary; default BUILD_DIR/examples/engine_loop), REQUESTS
# (default 200), PUBLISH (write-through, the default, or write-back: A then publishes only what its
# host tier evicts, so B may find little).
# Exit status: 0 when B had cross-replica hits and no mismatched byte (or when redis-server is not
# installed: skipped); 1 otherwise.
set -euo pipefail

build=${1:-build/default}
requests=${REQUESTS:-200}
publish=${PUBLISH:-write-through}
engine=${ENGINE_LOOP:-$build/examples/engine_loop}

if ! command -v redis-server >/dev/null || ! command -v redis-cli >/dev/null; then
  echo "remote_demo: skipped: redis-server or redis-cli not installed (apt-get install redis-server)"
  exit 0
fi
if [[ ! -x $engine ]]; then
  echo "remote_demo: $engine not found: build the engine_loop target first" >&2
  exit 1
fi

start=$(date +%s.%N)
dir=$(mktemp -d "${TMPDIR:-/tmp}/kvtier-remote-demo.XXXXXX")
cleanup() {
  local pidfile
  for pidfile in "$dir"/node*/redis.pid; do
    [[ -f $pidfile ]] && kill -9 "$(cat "$pidfile")" 2>/dev/null || true
  done
  rm -rf "$dir"
}
trap cleanup EXIT
trap 'exit 1' INT TERM

# A port is free when nothing answers on it; the cluster bus uses port + 10000 as well.
in_use() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
ports=()
base=$((20000 + (RANDOM % 900) * 10))
for ((p = base; ${#ports[@]} < 3 && p < base + 2000; ++p)); do
  if ! in_use "$p" && ! in_use $((p + 10000)); then ports+=("$p"); fi
done
[[ ${#ports[@]} -eq 3 ]] || { echo "remote_demo: no free ports near $base" >&2; exit 1; }

nodes=()
for i in 0 1 2; do
  d=$dir/node$i
  mkdir -p "$d"
  redis-server --port "${ports[$i]}" --bind 127.0.0.1 --cluster-enabled yes \
    --cluster-config-file nodes.conf --cluster-node-timeout 2000 --appendonly no --save '' \
    --dir "$d" --daemonize yes --pidfile "$d/redis.pid" --logfile "$d/redis.log"
  nodes+=("127.0.0.1:${ports[$i]}")
done

# Polls `cmd` every 0.1 s for up to $1 seconds.
wait_for() {
  local deadline=$(($(date +%s) + $1))
  shift
  until "$@" >/dev/null 2>&1; do
    if (($(date +%s) >= deadline)); then return 1; fi
    sleep 0.1
  done
}
for p in "${ports[@]}"; do
  wait_for 10 bash -c "[[ \$(redis-cli -p $p ping) == PONG ]]" ||
    { echo "remote_demo: redis-server on port $p did not start:" >&2; cat "$dir"/node*/redis.log >&2; exit 1; }
done
redis-cli --cluster create "${nodes[@]}" --cluster-replicas 0 --cluster-yes >"$dir/create.log" 2>&1 ||
  { echo "remote_demo: redis-cli --cluster create failed:" >&2; cat "$dir/create.log" >&2; exit 1; }
for p in "${ports[@]}"; do
  wait_for 20 bash -c "redis-cli -p $p cluster info | grep -q '^cluster_state:ok'" ||
    { echo "remote_demo: the cluster did not reach cluster_state:ok" >&2; exit 1; }
done
seeds=$(IFS=,; echo "${nodes[*]}")
echo "remote_demo: Redis Cluster of 3 masters on ${seeds} (redis-server $(redis-server --version | sed 's/.*v=\([^ ]*\).*/\1/'))"

# Both replicas: the same requests, small blocks (4 layers of 2 KiB K and V), no disk tier, the
# same scope; each process has its own device and host tiers.
scope=remote-demo-$$
common=(--requests "$requests" --layers 4 --block-bytes 16384 --disk-blocks 0
        --remote "$seeds" --remote-scope "$scope" --remote-publish "$publish")

echo "remote_demo: replica A computes and publishes ($publish)"
"$engine" "${common[@]}" --disk-dir "$dir/a" >"$dir/a.txt" 2>&1 ||
  { cat "$dir/a.txt"; echo "remote_demo: replica A failed" >&2; exit 1; }
grep -E '^engine_loop:|prompt blocks|computed|remote|mismatched|wall time' "$dir/a.txt"

echo "remote_demo: replica B (fresh device and host tiers) on the same requests"
"$engine" "${common[@]}" --disk-dir "$dir/b" >"$dir/b.txt" 2>&1 ||
  { cat "$dir/b.txt"; echo "remote_demo: replica B failed" >&2; exit 1; }
cat "$dir/b.txt"

# The last number on the line starting with `label` in B's summary.
figure() { awk -v l="$1" 'index($0, l) == 1 { v = $NF } END { print v + 0 }' < <(sed 's/^ *//' "$dir/b.txt"); }
prompt=$(figure "prompt blocks")
cross=$(figure "of which from the remote tier")
mismatched=$(figure "mismatched bytes")
corrupt=$(figure "remote corrupt reads")
elapsed=$(awk -v s="$start" -v e="$(date +%s.%N)" 'BEGIN { printf "%.1f", e - s }')
# B's blocks loaded from the remote tier are cross-replica hits: with write-through, A (which ran
# the same requests first and drained its writes at exit) published every one of them. With
# write-back a few may be B's own, written back by its host tier and read again.
echo "remote_demo: replica B: cross-replica hits (blocks B loaded from the remote tier):" \
  "$cross of $prompt prompt blocks; mismatched bytes: $mismatched;" \
  "corrupt remote reads: $corrupt; wall time ${elapsed} s"
if [[ $mismatched != 0 || $corrupt != 0 ]]; then
  echo "remote_demo: FAILED: replica B loaded wrong bytes" >&2
  exit 1
fi
if [[ $publish == write-through && $cross == 0 ]]; then
  echo "remote_demo: FAILED: replica B found nothing that A published" >&2
  exit 1
fi
echo "remote_demo: ok"
