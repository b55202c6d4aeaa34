#!/usr/bin/env bash
# kvtier's Redis Cluster client vs redis-benchmark, on the same local cluster, value sizes and
# pipeline depths.
#
#   bash bench/remote_vs_redis_benchmark.sh [build-dir] [repetitions] [seconds-per-run]
#
# Starts a 3-master Redis Cluster on loopback (redis-server, cluster-enabled, no persistence) in a
# temp dir, then for each value size (64 KiB, 256 KiB, 2 MiB), batch/pipeline depth (1, 8, 64) and
# op (set, get) runs redis-benchmark (--cluster, -d <size>, -P <depth>, one client per master) and
# kvtier_bench's BM_RemoteSet/BM_RemoteGet (one thread, one pipelined batch per iteration over all
# masters) in turn, `repetitions` times, and prints the median bandwidth of each and their ratio.
# redis-benchmark's rate (requests/s) times the value size is its bandwidth.
# Needs: redis-server, redis-cli, redis-benchmark (apt-get install redis-server redis-tools),
# python3. The cluster is killed and its dir removed on exit.
set -euo pipefail
build=${1:-build/default}
reps=${2:-3}
secs=${3:-2}
bench="$build/bench/kvtier_bench"
for tool in redis-server redis-cli redis-benchmark python3; do
  command -v "$tool" >/dev/null || { echo "remote_vs_redis_benchmark: $tool not found (apt-get install redis-server redis-tools python3)" >&2; exit 2; }
done
[ -x "$bench" ] || { echo "remote_vs_redis_benchmark: $bench not built (cmake --build $build --target kvtier_bench)" >&2; exit 2; }

work=$(mktemp -d)
cluster=$(dirname "$0")/../examples/local_redis_cluster.sh
trap 'bash "$cluster" stop "$work/cluster"; rm -rf "$work"' EXIT
seeds=$(bash "$cluster" start "$work/cluster" 3)
export KVTIER_BENCH_REDIS_SEEDS=$seeds
first=${seeds%%,*}

kvtier_run() {  # Set|Get bytes batch -> bytes/s
  "$bench" --benchmark_filter="^BM_Remote$1/$2/$3/real_time\$" --benchmark_min_time="$secs" \
    --benchmark_format=json 2>/dev/null |
    python3 -c 'import json,sys; b=json.load(sys.stdin)["benchmarks"]; print(b[0].get("bytes_per_second", 0) if b and "error_occurred" not in b[0] else 0)'
}
redis_run() {  # set|get bytes pipeline -> bytes/s
  # Enough requests for about `secs` seconds at ~1 GB/s, at least 100 per client.
  local n
  n=$(awk -v s="$secs" -v b="$2" 'BEGIN { n = int(s * 1e9 / b); print (n < 300 ? 300 : n) }')
  redis-benchmark --cluster -h "${first%:*}" -p "${first##*:}" -t "$1" -d "$2" -P "$3" -c 3 -n "$n" \
    -r 64 --csv 2>/dev/null |
    python3 -c 'import csv,sys
rows=[r for r in csv.reader(sys.stdin) if r and r[0] not in ("test",)]
print(float(rows[-1][1]) * int(sys.argv[1]) if rows else 0)' "$2"
}

echo "remote_vs_redis_benchmark: cluster on $seeds, $reps repetitions of ~${secs}s per point" >&2
out="$work/raw"
for bs in 65536 262144 2097152; do
  for depth in 1 8 64; do
    for op in Set Get; do
      lop=$(echo "$op" | tr 'A-Z' 'a-z')
      for r in $(seq "$reps"); do
        echo "$bs $depth $op redis $(redis_run "$lop" "$bs" "$depth")" >>"$out"
        echo "$bs $depth $op kvtier $(kvtier_run "$op" "$bs" "$depth")" >>"$out"
        echo -n . >&2
      done
    done
  done
done
echo >&2
python3 "$(dirname "$0")/ratio_table.py" "$out" --baseline redis --depth-name depth
