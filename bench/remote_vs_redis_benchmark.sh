#!/usr/bin/env bash
# kvtier's Redis Cluster client vs redis-benchmark, on the same local cluster, value sizes and
# pipeline depths.
#
#   bash bench/remote_vs_redis_benchmark.sh [build-dir] [repetitions] [seconds-per-run]
#
# Starts a 3-master Redis Cluster on loopback (redis-server, cluster-enabled, no persistence) in a
# temp dir, then for each value size (64 KiB, 256 KiB, 2 MiB), batch/pipeline depth (1, 8, 64) and
# op (set, get) runs, in turn, like for like:
#   - redis-benchmark -c 1 (one client: one pipeline of <depth> in flight) and kvtier_bench's
#     BM_RemoteSet/BM_RemoteGet with one caller (one batch of <depth> in flight, spread over the
#     masters);
#   - redis-benchmark -c 3 (one client per master, each with its pipeline in flight) and the same
#     benchmarks with three callers (/threads:3, each with its batch in flight; with batch 1,
#     caller t's key is on master t),
# `repetitions` times, and prints the median bandwidth of each and their ratio, one table per
# number of callers. redis-benchmark's rate (requests/s) times the value size is its bandwidth.
# Its rate is the "overall" one it prints every 250 ms, read after `seconds-per-run` (it is
# stopped by SIGINT): the rate it prints at its end divides by a run time rounded up to 250 ms
# in cluster mode (its threads stop on a 250 ms tick), which for a run of ~1 s moved it by up to
# 2x (1.00, 1.33, 2.00 GB/s for the same point).
# Needs: redis-server, redis-cli, redis-benchmark (apt-get install redis-server redis-tools),
# python3, timeout (coreutils). The cluster is killed and its dir removed on exit.
set -euo pipefail
build=${1:-build/default}
reps=${2:-3}
secs=${3:-2}
bench="$build/bench/kvtier_bench"
for tool in redis-server redis-cli redis-benchmark python3 timeout; do
  command -v "$tool" >/dev/null || { echo "remote_vs_redis_benchmark: $tool not found (apt-get install redis-server redis-tools python3)" >&2; exit 2; }
done
[ -x "$bench" ] || { echo "remote_vs_redis_benchmark: $bench not built (cmake --build $build --target kvtier_bench)" >&2; exit 2; }

work=$(mktemp -d)
cluster=$(dirname "$0")/../examples/local_redis_cluster.sh
trap 'bash "$cluster" stop "$work/cluster"; rm -rf "$work"' EXIT
seeds=$(bash "$cluster" start "$work/cluster" 3)
export KVTIER_BENCH_REDIS_SEEDS=$seeds
first=${seeds%%,*}

kvtier_run() {  # Set|Get bytes batch callers -> bytes/s
  local name="^BM_Remote$1/$2/$3/real_time\$"
  [ "$4" -gt 1 ] && name="^BM_Remote$1/$2/$3/real_time/threads:$4\$"
  "$bench" --benchmark_filter="$name" --benchmark_min_time="$secs" \
    --benchmark_format=json 2>/dev/null |
    python3 -c 'import json,sys; b=json.load(sys.stdin)["benchmarks"]; print(b[0].get("bytes_per_second", 0) if b and "error_occurred" not in b[0] else 0)'
}
redis_run() {  # set|get bytes pipeline clients -> bytes/s
  # Runs for `secs` seconds (far more requests than it can make), then SIGINT; the last
  # "overall" rate it printed is requests done / time since its start, measured at that tick.
  # Its requests end a pipeline (-P) at a time: long enough for ~10 pipelines per client at
  # 0.3 GB/s in all (2 MiB x 64, -c 1: ~4.5 s; with 1 s, not one had ended by the first tick),
  # at most 20 s.
  local run
  run=$(awk -v s="$secs" -v b="$2" -v p="$3" -v c="$4" 'BEGIN { t = 10 * b * p * c / 3e8; t = t < s ? s : t; print (t > 20 ? 20 : t) }')
  { timeout -s INT "$run" redis-benchmark --cluster -h "${first%:*}" -p "${first##*:}" -t "$1" \
      -d "$2" -P "$3" -c "$4" -n 2000000000 -r 64 2>/dev/null || true; } |
    tr '\r' '\n' |
    python3 -c 'import re,sys
rates=re.findall(r"overall: ([0-9.]+)\) avg_msec", sys.stdin.read())
print(float(rates[-1]) * int(sys.argv[1]) if rates else 0)' "$2"
}

echo "remote_vs_redis_benchmark: cluster on $seeds, $reps repetitions of ~${secs}s per point" >&2
for bs in 65536 262144 2097152; do
  for depth in 1 8 64; do
    for op in Set Get; do
      lop=$(echo "$op" | tr 'A-Z' 'a-z')
      for r in $(seq "$reps"); do
        for callers in 1 3; do
          echo "$bs $depth $op redis $(redis_run "$lop" "$bs" "$depth" "$callers")" >>"$work/raw$callers"
          echo "$bs $depth $op kvtier $(kvtier_run "$op" "$bs" "$depth" "$callers")" >>"$work/raw$callers"
        done
        echo -n . >&2
      done
    done
  done
done
echo >&2
echo "One caller: kvtier, one batch in flight, vs redis-benchmark -c 1 -P <depth>"
python3 "$(dirname "$0")/ratio_table.py" "$work/raw1" --baseline redis --depth-name depth
echo
echo "Three callers: kvtier /threads:3 vs redis-benchmark -c 3 -P <depth> (one client per master)"
python3 "$(dirname "$0")/ratio_table.py" "$work/raw3" --baseline redis --depth-name depth
