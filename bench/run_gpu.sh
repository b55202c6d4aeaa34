#!/usr/bin/env bash
# run_gpu.sh: runs a bundle made by bench/gpu_bundle.sh, on the GPU machine (no ctest, no -dev
# packages there). Writes into results/ (or $1):
#   kvtier_cuda_tests.xml / .txt   the [cuda] tests: Catch2 JUnit, and the console report (whose
#                                  warnings say "skipped: no CUDA device" or give layer-0 timings)
#   kvtier_tests.xml               every other test (emulated device, disk tier, policies)
#   kvtier_bench_cuda.json         Google Benchmark JSON, 3 repetitions, aggregates
#   nvidia-smi.txt, summary.json   the machine, and each step's exit status
# Exit status: non-zero if any step failed.
set -uo pipefail
here=$(cd "$(dirname "$0")" && pwd)
out=${1:-$here/results}
mkdir -p "$out"
out=$(cd "$out" && pwd)
export LD_LIBRARY_PATH="$here/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
cd "$out"  # the tests create their temporary disk-tier directories under the working directory

(nvidia-smi || echo "nvidia-smi: not available") > nvidia-smi.txt 2>&1

"$here/bin/kvtier_cuda_tests" -r junit -o kvtier_cuda_tests.xml
cuda_rc=$?
"$here/bin/kvtier_cuda_tests" -r console -o kvtier_cuda_tests.txt
"$here/bin/kvtier_tests" -r junit -o kvtier_tests.xml
tests_rc=$?
"$here/bin/kvtier_bench_cuda" --benchmark_format=json --benchmark_repetitions=3 \
  --benchmark_report_aggregates_only=true ${KVTIER_BENCH_FILTER:+--benchmark_filter=$KVTIER_BENCH_FILTER} \
  > kvtier_bench_cuda.json
bench_rc=$?

cat > summary.json <<JSON
{"commit": "$(cat "$here/COMMIT" 2>/dev/null)", "kvtier_cuda_tests": $cuda_rc, "kvtier_tests": $tests_rc, "kvtier_bench_cuda": $bench_rc}
JSON
cat summary.json
grep -h "skipped:" kvtier_cuda_tests.txt | sort | uniq -c || true
[[ $cuda_rc -eq 0 && $tests_rc -eq 0 && $bench_rc -eq 0 ]]
