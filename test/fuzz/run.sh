#!/usr/bin/env bash
# Runs every fuzz target of a fuzz build for SECONDS each, from its committed seed corpus
# (test/fuzz/corpus/<target>/, only read), JOBS targets at a time. What a run finds goes under
# BUILD_DIR/fuzz/: new inputs to corpus/<target>/ (kept between runs, so longer runs build on
# shorter ones), logs to logs/<target>.log, and the input of a crash, leak, timeout (10 s) or
# out-of-memory (2 GiB) to artifacts/<target>/, which fails the run (exit 1).
#   cmake --preset fuzz && cmake --build --preset fuzz && test/fuzz/run.sh [SECONDS] [BUILD_DIR]
# SECONDS: 30 by default; BUILD_DIR: build/fuzz. Environment: KVTIER_FUZZ_JOBS (2),
# KVTIER_FUZZ_TARGETS (all, space-separated), KVTIER_FUZZ_ARGS (more libFuzzer flags).
set -euo pipefail
cd "$(dirname "$0")/../.."
seconds=${1:-30}
build=${2:-build/fuzz}
jobs=${KVTIER_FUZZ_JOBS:-2}
read -r -a targets <<< "${KVTIER_FUZZ_TARGETS:-block_header disk_manifest disk_open disk_journal resp_reader trace options cache_sequence}"
read -r -a extra <<< "${KVTIER_FUZZ_ARGS:-}"
out="$build/fuzz"
mkdir -p "$out/logs"

run_one() {
  local t=$1
  mkdir -p "$out/corpus/$t" "$out/artifacts/$t"
  local rc=0
  "$build/test/fuzz/${t}_fuzz" -max_total_time="$seconds" -timeout=10 -rss_limit_mb=2048 \
    -print_final_stats=1 -artifact_prefix="$out/artifacts/$t/" "${extra[@]}" \
    "$out/corpus/$t" "test/fuzz/corpus/$t" > "$out/logs/$t.log" 2>&1 || rc=$?
  echo "$rc" > "$out/logs/$t.rc"
}

start=$(date +%s)
for t in "${targets[@]}"; do
  [ -x "$build/test/fuzz/${t}_fuzz" ] || { echo "fuzz: $build/test/fuzz/${t}_fuzz not built"; exit 1; }
  rm -f "$out/logs/$t.rc"
  while [ "$(jobs -rp | wc -l)" -ge "$jobs" ]; do sleep 1; done
  run_one "$t" &
done
wait
failed=0
for t in "${targets[@]}"; do
  rc=$(cat "$out/logs/$t.rc" 2>/dev/null || echo missing)
  stats=$(grep -E '^stat::number_of_executed_units' "$out/logs/$t.log" | awk '{print $2}' || true)
  if [ "$rc" = 0 ]; then
    echo "fuzz: $t ok (${stats:-?} runs in ${seconds} s)"
  else
    failed=1
    echo "fuzz: $t FAILED (exit $rc); its input is in $out/artifacts/$t/; the log ends:"
    tail -n 40 "$out/logs/$t.log"
  fi
done
echo "fuzz: ${#targets[@]} targets in $(( $(date +%s) - start )) s"
exit "$failed"
