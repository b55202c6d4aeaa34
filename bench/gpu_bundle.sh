#!/usr/bin/env bash
# bench/gpu_bundle.sh: builds kvtier here (default preset: CUDA sources for sm_90) and packs what a
# GPU machine without any -dev package needs into build/gpu_bundle/ (git-ignored, with the build):
#   bin/   kvtier_tests, kvtier_cuda_tests, kvtier_bench_cuda
#   lib/   the shared libraries they load that such a machine lacks (from ldd: libkvtier, Abseil,
#          liburing, xxhash, benchmark, libcudart, ...); libc, libm, libstdc++, libgcc_s, libcuda
#          and the dynamic loader are left out: the GPU machine has its own (libcuda = its driver)
#   run_gpu.sh   runs them there (see bench/run_gpu.sh)
# Usage: bash bench/gpu_bundle.sh [out_dir]   then copy out_dir over and: bash out_dir/run_gpu.sh
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
out=${1:-$root/build/gpu_bundle}
build=$root/build/default

cd "$root"
cmake --preset default >/dev/null
cmake --build "$build" -j"${JOBS:-2}" --target kvtier_tests kvtier_cuda_tests kvtier_bench_cuda

bins=("$build/test/kvtier_tests" "$build/test/kvtier_cuda_tests" "$build/bench/kvtier_bench_cuda")
for b in "${bins[@]}"; do
  [[ -x $b ]] || { echo "gpu_bundle: $b was not built (is nvcc found? KVTIER_WITH_CUDA)" >&2; exit 1; }
done

rm -rf "$out"
mkdir -p "$out/bin" "$out/lib"
cp "${bins[@]}" "$out/bin/"
# Libraries the GPU machine has itself (system C/C++ runtime, the driver's libcuda, the loader).
skip='^(linux-vdso|ld-linux|libc\.so|libm\.so|libstdc\+\+\.so|libgcc_s\.so|libcuda\.so|libpthread\.so|libdl\.so|librt\.so)'
for b in "${bins[@]}"; do
  ldd "$b" | awk '$2 == "=>" && $3 ~ /^\// {print $1, $3}' | while read -r name path; do
    if [[ $name =~ $skip ]]; then continue; fi
    [[ -e $out/lib/$name ]] || cp -L "$path" "$out/lib/$name"
  done
  if ldd "$b" | grep -q 'not found'; then
    echo "gpu_bundle: $b has unresolved libraries:" >&2
    ldd "$b" | grep 'not found' >&2
    exit 1
  fi
done
# Debug info is most of the bundle (107 MB with the build's -g): without it the bundle (9 MB)
# fits the device tool's 64 MiB carry limit. Symbols stay: a backtrace still names functions.
strip --strip-debug "$out"/bin/* "$out"/lib/libkvtier.so*
cp "$root/bench/run_gpu.sh" "$out/run_gpu.sh"
chmod +x "$out/run_gpu.sh"
git -C "$root" rev-parse HEAD > "$out/COMMIT" 2>/dev/null || true
echo "gpu_bundle: $(du -sh "$out" | cut -f1) in $out"
ls "$out/bin" "$out/lib"
