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
  # KVTIER_TEST_REQUIRE (see README, "Tests"): a required component missing fails, not skips.
  required=",${KVTIER_TEST_REQUIRE:-},"
  if [[ ${required// /} == *",redis,"* ]]; then
    echo "remote_demo: redis-server or redis-cli not installed, and KVTIER_TEST_REQUIRE names redis"
    exit 1
  fi
  echo "remote_demo: skipped: redis-server or redis-cli not installed (apt-get install redis-server)"
  exit 0
fi
if [[ ! -x $engine ]]; then
  echo "remote_demo: $engine not found: build the engine_loop target first" >&2
  exit 1
fi

start=$(date +%s.%N)
dir=$(mktemp -d "${TMPDIR:-/tmp}/kvtier-remote-demo.XXXXXX")
cluster=$(dirname "$0")/local_redis_cluster.sh
trap 'bash "$cluster" stop "$dir/cluster"; rm -rf "$dir"' EXIT
trap 'exit 1' INT TERM
seeds=$(bash "$cluster" start "$dir/cluster" 3) || { echo "remote_demo: no cluster" >&2; exit 1; }
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
