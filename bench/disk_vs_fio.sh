#!/usr/bin/env bash
# kvtier's disk tier vs fio, on the same file, block sizes and queue depths, interleaved.
#
#   bash bench/disk_vs_fio.sh [build-dir] [repetitions] [seconds-per-run]
#
# For each block size (64 KiB, 256 KiB, 2 MiB), queue depth (1, 8, 32) and direction, runs fio
# (io_uring, O_DIRECT, registered files and buffers, random offsets) and kvtier_bench's
# BM_DiskRead/BM_DiskWrite (random slots, payload checksums verified on every read) in turn,
# `repetitions` times, and prints the median bandwidth of each and their ratio. kvtier moves a
# 4 KiB trailer per block on top of the payload; its figure counts payload bytes only. The last
# column is the ceiling of the checksum kvtier verifies every read with: BM_Xxh3 (XXH3-64 on one
# core over blocks of that size, cold in cache as a read's DMA leaves them), median of the runs.
# The fio-slot columns: fio moving kvtier's slots, block + 4 KiB (the trailer) at multiples of that
# size, counting the payload only, as kvtier's figure does: what the device gives that geometry,
# so kvtier/fio-slot is the software's own cost (a 4 KiB alignment unit assumed).
# Needs: fio, python3 (apt-get install fio python3). Data: $KVTIER_BENCH_DIR (default
# <build-dir>/kvtier-bench-disk), $KVTIER_BENCH_DISK_BYTES per block size (default 1 GiB).
set -euo pipefail
build=${1:-build/default}
reps=${2:-3}
secs=${3:-3}
bench="$build/bench/kvtier_bench"
for tool in fio python3; do
  command -v "$tool" >/dev/null || { echo "disk_vs_fio: $tool not found (apt-get install $tool)" >&2; exit 2; }
done
[ -x "$bench" ] || { echo "disk_vs_fio: $bench not built (cmake --build $build --target kvtier_bench)" >&2; exit 2; }
export KVTIER_BENCH_DIR=${KVTIER_BENCH_DIR:-$build/kvtier-bench-disk}
out=$(mktemp -d)
# Like for like: kvtier's host slots are on (transparent) huge pages, so fio's buffers are too
# (--iomem=shmhuge, from hugetlb pages reserved for the run and given back after). On 4 KiB pages
# a 2 MiB transfer is 512 scatter-gather segments and the disk holds few such requests at once:
# either tool then runs at half its speed. Without root, fio runs on 4 KiB pages (said below).
fio_mem=malloc
hugepages_before=
if [ -w /proc/sys/vm/nr_hugepages ]; then
  hugepages_before=$(cat /proc/sys/vm/nr_hugepages)
  echo $((hugepages_before + 96)) >/proc/sys/vm/nr_hugepages
  if [ "$(cat /proc/sys/vm/nr_hugepages)" -ge $((hugepages_before + 80)) ]; then fio_mem=shmhuge; fi
fi
restore() {
  rm -rf "$out"
  if [ -n "$hugepages_before" ]; then echo "$hugepages_before" >/proc/sys/vm/nr_hugepages; fi
}
trap restore EXIT

xxh3_run() {  # bs -> bytes/s hashed on one core, cold blocks
  "$bench" --benchmark_filter="^BM_Xxh3/$1/1\$" --benchmark_min_time=0.5 --benchmark_format=json \
    2>/dev/null |
    python3 -c 'import json,sys; b=json.load(sys.stdin)["benchmarks"]; print(b[0].get("bytes_per_second", 0) if b else 0)'
}
kvtier_run() {  # dir bs qd -> bytes/s
  "$bench" --benchmark_filter="^BM_Disk$1/$2/$3/real_time\$" --benchmark_min_time="$secs" \
    --benchmark_format=json 2>/dev/null |
    python3 -c 'import json,sys; b=json.load(sys.stdin)["benchmarks"]; print(b[0].get("bytes_per_second", 0) if b and "error_occurred" not in b[0] else 0)'
}
fio_run() {  # rw bs qd file [payload] -> bytes/s; with payload: transfers of bs at multiples of bs,
             # and payload bytes per transfer counted (kvtier's slot geometry)
  local unit=$2 align=() per='j["read"]["bw_bytes"]+j["write"]["bw_bytes"]'
  if [ -n "${5:-}" ]; then
    align=(--blockalign="$2")
    per="(j[\"read\"][\"iops\"]+j[\"write\"][\"iops\"])*$5"
  fi
  fio --name=kvtier-cmp --filename="$4" --direct=1 --ioengine=io_uring --fixedbufs=1 --iomem="$fio_mem" \
    --registerfiles=1 --rw="$1" --bs="$unit" "${align[@]}" --iodepth="$3" --runtime="$secs" \
    --time_based=1 --size="$(stat -c %s "$file")" --randrepeat=0 --norandommap=1 \
    --output-format=json 2>/dev/null |
    python3 -c "import json,sys; j=json.load(sys.stdin)['jobs'][0]; print(int($per))"
}

echo "disk_vs_fio: $reps interleaved repetitions of ${secs}s per point, data in $KVTIER_BENCH_DIR," \
  "fio buffers: $([ $fio_mem = shmhuge ] && echo 'huge pages' || echo '4 KiB pages (not root: no hugetlb pages)')" >&2
for bs in 65536 262144 2097152; do
  # kvtier creates and fills the file once per block size; fio reads the very same file (and
  # writes a file of the same size beside it).
  kvtier_run Read "$bs" 1 >/dev/null
  file="$KVTIER_BENCH_DIR/$bs/blocks.0"
  for qd in 1 8 32; do
    for dir in Read Write; do
      rw=rand$(echo "$dir" | tr 'A-Z' 'a-z')
      for r in $(seq "$reps"); do
        # fio writes its own file of the same size beside kvtier's: written by fio, kvtier's
        # blocks would no longer verify, and every later kvtier read would fail.
        target=$file
        if [ "$dir" = Write ]; then target=$file.fio-write; fi
        echo "$bs $qd $dir fio $(fio_run "$rw" "$bs" "$qd" "$target")" >>"$out/raw"
        echo "$bs $qd $dir kvtier $(kvtier_run "$dir" "$bs" "$qd")" >>"$out/raw"
        echo "$bs $qd $dir fio-slot $(fio_run "$rw" $((bs + 4096)) "$qd" "$target" "$bs")" >>"$out/raw"
        echo -n . >&2
      done
      echo "$bs 0 ceiling xxh3 $(xxh3_run "$bs")" >>"$out/raw"
    done
  done
done
echo >&2
python3 "$(dirname "$0")/ratio_table.py" "$out/raw" --baseline fio --depth-name QD --ceiling xxh3 \
  --also fio-slot
