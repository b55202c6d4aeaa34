#!/usr/bin/env bash
# run_gpu.sh: runs a bundle made by bench/gpu_bundle.sh on the GPU machine (no ctest, no -dev
# packages there), in priority order, every step under `timeout`, within about 9 minutes:
#   1 probe      driver/runtime versions, the devices (nvidia-smi and the [probe] tests)   ~20 s
#   2 failures   the [spin] cases: the spin kernel, its release on failure, a failed device, the
#                1,500-block disk-gated Load and the illegal address (each in a child)    <=150 s
#   3 cuda       every other [cuda] test: byte-exact round trips (MHA/GQA/MLA/odd x every
#                copy method), layer-event order, concurrency                            <=150 s
#   4 bench      kvtier_bench_cuda: the baseline, layouts 0 and 3 x methods 1-3 at 64 blocks,
#                and the codec kernels (layouts 0 and 3 x fp8/int8/int4), 3 repetitions   <=180 s
#   (5 cpu       kvtier_tests, the CPU suite: only with KVTIER_RUN_CPU_TESTS=1; it needs no GPU)
# Writes into results/ (or $1): <step>.xml (Catch2 JUnit) and <step>.txt (console, whose warnings
# say "skipped: ..." or give the versions), kvtier_bench_cuda.json, nvidia-smi.txt, summary.json.
# KVTIER_REQUIRE_GPU=1: no usable GPU (too old a driver, no device) fails every step instead of
# skipping it (the tests get KVTIER_TEST_REQUIRE=cuda; the benchmark exits 1).
# Exit status: non-zero if any step failed or timed out (124).
set -uo pipefail
here=$(cd "$(dirname "$0")" && pwd)
out=${1:-$here/results}
mkdir -p "$out"
out=$(cd "$out" && pwd)
export LD_LIBRARY_PATH="$here/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
if [[ ${KVTIER_REQUIRE_GPU:-0} == 1 ]]; then
  export KVTIER_TEST_REQUIRE=cuda
fi
cd "$out"  # the tests create their temporary disk-tier directories under the working directory
start=$SECONDS
declare -A rc

step() {  # step <name> <seconds> <command...>
  local name=$1 secs=$2
  shift 2
  echo "== $name (timeout ${secs}s, at $((SECONDS - start))s)"
  timeout -k 5 "$secs" "$@"
  rc[$name]=$?
  echo "== $name: exit ${rc[$name]}"
}

step smi 15 bash -c 'nvidia-smi; nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv' \
  > nvidia-smi.txt 2>&1
cuda_tests() {  # cuda_tests <name> <seconds> <filter>
  step "$1" "$2" "$here/bin/kvtier_cuda_tests" "$3" -r junit -o "$1.xml"
  # The console report too (versions, skips, layer-0 timings), from the JUnit run's warnings.
  grep -h -o 'message="[^"]*"' "$1.xml" > "$1.txt" 2>/dev/null || true
}
cuda_tests probe 20 "[probe]"
"$here/bin/kvtier_cuda_tests" "[probe]" -s 2>&1 | grep -E "driver|device" | head -20
cuda_tests failures 150 "[spin]"
cuda_tests cuda 150 "[cuda]~[spin]~[probe]"
# Layouts 0 (Llama-3-8B) and 3 (MLA, 64 tokens), methods 1-3, 64 blocks, the three codecs; the
# baselines they divide by.
filter='BM_CudaMemcpyBaseline|BM_Cuda(Promote|Demote)/layout:[03]/method:[123]/blocks:64'
filter+='|BM_CudaCodec(Promote|Demote)/layout:[03]/codec:[123]/blocks:64'
step bench 180 "$here/bin/kvtier_bench_cuda" --benchmark_format=json --benchmark_repetitions=3 \
  --benchmark_report_aggregates_only=true --benchmark_filter="${KVTIER_BENCH_FILTER:-$filter}" \
  --benchmark_out=kvtier_bench_cuda.json --benchmark_out_format=json
if [[ ${KVTIER_RUN_CPU_TESTS:-0} == 1 ]]; then
  step cpu 300 "$here/bin/kvtier_tests" -r junit -o kvtier_tests.xml
fi

{
  printf '{"commit": "%s", "seconds": %d' "$(cat "$here/COMMIT" 2>/dev/null)" $((SECONDS - start))
  for k in "${!rc[@]}"; do printf ', "%s": %d' "$k" "${rc[$k]}"; done
  printf '}\n'
} > summary.json
cat summary.json
cat ./*.txt 2>/dev/null | grep -h "skipped:" | sort | uniq -c || true
fail=0
for k in "${!rc[@]}"; do
  [[ $k == smi ]] && continue  # informational
  [[ ${rc[$k]} -eq 0 ]] || fail=1
done
exit $fail
