#!/usr/bin/env bash
# Cold file reads with and without io_uring compiled in, beside dd iflag=direct,
# in one run: a 4 GiB file (page cache dropped before every read) into a Block
# and into GPU memory, by two builds of unimem_file_benchmark that differ only
# in -DUNIMEM_IO_URING (ON: io_uring + O_DIRECT; OFF: pread on threads + O_DIRECT).
#   bash scripts/uring-vs-pread.sh build DIR          (here: builds both with nvcc for sm_90,
#                                                      copies them and liburing.so.2 into DIR)
#   bash scripts/uring-vs-pread.sh run DIR [GiB] [R]  (on the GPU machine, as root: runs both
#                                                      builds R times (default 3), alternating,
#                                                      and prints the best of each and the ratios)
# Logs go to $OUT when set, else DIR/logs. The file lies in .bench/ (on disk, not tmpfs).
set -euo pipefail
cd "$(dirname "$0")/.."
step=${1:?build or run}
dir=${2:?folder}

if [ "$step" = build ]; then
  source scripts/deps.sh
  for uring in ON OFF; do
    b=build/bench-uring-$uring
    cmake -S . -B "$b" -G Ninja -DCMAKE_BUILD_TYPE=Release -DCMAKE_CUDA_ARCHITECTURES=90 -DUNIMEM_IO_URING=$uring \
      -DUNIMEM_BUILD_TESTS=OFF -DUNIMEM_BUILD_EXAMPLES=OFF -DUNIMEM_BUILD_BENCHMARKS=ON
    cmake --build "$b" --target unimem_file_benchmark unimem_tool
    mkdir -p "$dir/uring-$uring"
    cp "$b/bench/unimem_file_benchmark" "$b/unimem" "$dir/uring-$uring/"
  done
  cp -L /usr/lib/x86_64-linux-gnu/liburing.so.2 "$dir/uring-ON/"
  exit 0
fi

gib=${3:-4}
rounds=${4:-3}
logs=${OUT:-$dir/logs}
data="$PWD/.bench"
mkdir -p "$logs" "$data"
[ -w /proc/sys/vm/drop_caches ] ||
  { echo "uring-vs-pread: run as root: the page cache is dropped before every cold read" >&2; exit 2; }
for uring in ON OFF; do
  LD_LIBRARY_PATH="$dir/uring-$uring" "$dir/uring-$uring/unimem" info | grep -m1 "^  io_uring" | sed "s/^ */UNIMEM_IO_URING=$uring: /" || true
done
for round in $(seq "$rounds"); do
  for uring in ON OFF; do
    echo "=== round $round, UNIMEM_IO_URING=$uring"
    LD_LIBRARY_PATH="$dir/uring-$uring${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}" \
      "$dir/uring-$uring/unimem_file_benchmark" --dir "$data" --gib "$gib" --st-gib 1 > "$logs/uring-$uring.$round.txt"
    grep -E "^  (disk: dd|host cold: unimem read_file -> Block|file->GPU cold: unimem copy_file_to_device)" \
      "$logs/uring-$uring.$round.txt" || true
  done
done

# The best of the rounds per build, from the rows the benchmarks print as they go.
python3 - "$logs" "$rounds" "$gib" <<'PY'
import glob, re, sys
logs, rounds, gib = sys.argv[1], int(sys.argv[2]), sys.argv[3]
rows = {"dd": r"  disk: dd iflag=direct", "block": r"  host cold: unimem read_file -> Block",
        "gpu": r"  file->GPU cold: unimem copy_file_to_device"}
best, paths = {}, {}
for build in ("ON", "OFF"):
    for path in glob.glob(f"{logs}/uring-{build}.*.txt"):
        for line in open(path):
            for key, pattern in rows.items():
                m = re.match(pattern + r".*?\s([0-9.]+) GB/s", line)
                if m:
                    best[build, key] = max(best.get((build, key), 0.0), float(m.group(1)))
                    if key == "block":
                        paths[build] = re.search(r"\((\w+)\)", line).group(1)
if ("ON", "block") not in best or ("OFF", "block") not in best:
    sys.exit(f"uring-vs-pread: no cold read measured (could the page cache be dropped?): see {logs}")
dd = max(best.get(("ON", "dd"), 0), best.get(("OFF", "dd"), 0))
print(f"\ncold {gib} GiB file, best of {rounds} per build; dd iflag=direct bs=4M: {dd:.2f} GB/s")
print(f"{'':24} {'io_uring':>10} {'pread':>10} {'pread/io_uring':>15} {'io_uring/dd':>12} {'pread/dd':>9}")
ok = True
for key, what in (("block", "-> Block (read_file)"), ("gpu", "-> GPU (copy_file_to)")):
    if ("ON", key) not in best or ("OFF", key) not in best:
        print(f"{what:24} skipped: no CUDA device")
        continue
    on, off = best["ON", key], best["OFF", key]
    ok &= off >= 0.9 * on
    print(f"{what:24} {on:10.2f} {off:10.2f} {off / on:14.2f}x {on / dd if dd else 0:11.2f}x {off / dd if dd else 0:8.2f}x")
print(f"paths: UNIMEM_IO_URING=ON {paths.get('ON')}, OFF {paths.get('OFF')}")
print("the build without liburing reaches >= 0.9x the one with it:", "yes" if ok else "NO")
PY
