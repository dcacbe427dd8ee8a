#!/usr/bin/env bash
# GPU checks in two steps, for a GPU machine without network or build tools:
#   bash scripts/gpu-check.sh build DIR   (here) build Release with nvcc for sm_90 and
#                                          copy the test and benchmark binaries into DIR
#   bash scripts/gpu-check.sh run DIR [ARGS]  (on the GPU machine) run the tests, the GPU
#                                          benchmark (ARGS go to it), the loader benchmark
#                                          (scripts/loader-bench.sh), CPU loads by page size,
#                                          a process's first pinned memory by route,
#                                          the KV offload benchmarks
#                                          (C++, and torch's routes where torch imports) and
#                                          unimem-bench; logs go to $OUT when set, else DIR/logs
set -euo pipefail
cd "$(dirname "$0")/.."
step=${1:?build or run}
dir=${2:?folder}

if [ "$step" = build ]; then
  source scripts/deps.sh
  cmake -S . -B build/device -G Ninja -DCMAKE_BUILD_TYPE=Release -DCMAKE_CUDA_ARCHITECTURES=90
  cmake --build build/device
  mkdir -p "$dir"
  cp build/device/tests/unimem_test build/device/tests/unimem_share_helper build/device/tests/unimem_gpu_test \
     build/device/tests/unimem_offload_gpu_test \
     build/device/bench/unimem_gpu_benchmark build/device/bench/unimem_file_benchmark build/device/unimem \
     build/device/bench/unimem_loader_benchmark build/device/bench/unimem_offload_benchmark \
     build/device/bench/unimem_block_benchmark build/device/bench/unimem_alloc_benchmark* \
     build/device/bench/unimem_host_load_benchmark build/device/bench/unimem_pinned_setup_benchmark \
     build/device/bench/unimem-bench build/device/examples/unimem_pipeline "$dir"/
  # The shared libraries they need that the GPU machine lacks.
  for lib in libbenchmark.so.1debian libmimalloc.so.2 libjemalloc.so.2 liburing.so.2 libdnnl.so.2 libOpenCL.so.1 \
             libgomp.so.1; do
    cp -L "/usr/lib/x86_64-linux-gnu/$lib" "$dir"/ 2>/dev/null || echo "note: $lib not found"
  done
  exit 0
fi

logs=${OUT:-$dir/logs}
mkdir -p "$logs"
export LD_LIBRARY_PATH="$dir${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
export UNIMEM_SHARE_HELPER="$(cd "$dir" && pwd)/unimem_share_helper"
status=0
{
  date -u
  nvidia-smi --query-gpu=index,name,driver_version,memory.total,pcie.link.gen.current,pcie.link.width.current --format=csv || true
  echo "cpus: $(nproc); $(grep -m1 'model name' /proc/cpuinfo)"
  echo "memlock: $(ulimit -l); shmem THP: $(cat /sys/kernel/mm/transparent_hugepage/shmem_enabled 2>/dev/null)"
  echo "anon THP: $(cat /sys/kernel/mm/transparent_hugepage/enabled 2>/dev/null); kernel $(uname -r)"
} 2>&1 | tee "$logs/machine.txt"
"$dir/unimem_gpu_test" 2>&1 | tee "$logs/gpu_test.txt" || status=1
"$dir/unimem_offload_gpu_test" 2>&1 | tee "$logs/offload_gpu_test.txt" || status=1
"$dir/unimem_test" --gtest_death_test_style=threadsafe 2>&1 | tee "$logs/unit_test.txt" | tail -3 || status=1
"$dir/unimem_gpu_benchmark" "${@:3}" 2>&1 | tee "$logs/gpu_benchmark.txt" || status=1
bash scripts/loader-bench.sh "$dir" 4 2>&1 | tee "$logs/loader_bench.txt" || status=1
# CPU loads by page size, back to back (hot) and after idling (cold): which
# pages the CPU loads should ask for (docs/BENCHMARKS.md, "CPU loads: ...").
mkdir -p .bench
[ -f .bench/host.bin ] || head -c $((1 << 30)) /dev/urandom > .bench/host.bin
{
  "$dir/unimem_host_load_benchmark" .bench/host.bin --reps 5
  "$dir/unimem_host_load_benchmark" .bench/host.bin --reps 3 --cool 5 --only naive,malloc,4k,huge,huge-pinned,ceiling
} 2>&1 | tee "$logs/host_load.txt" || status=1
# A fresh process's first host memory for the GPU, by route (the demo's
# default-size loading row in GPU modes).
"$dir/unimem_pinned_setup_benchmark" 2>&1 | tee "$logs/pinned_setup.txt" || status=1
"$dir/unimem_offload_benchmark" 2>&1 | tee "$logs/offload_benchmark.txt" || status=1
if python3 -c "import torch" 2>/dev/null; then
  python3 python/benchmarks/offload_torch.py 2>&1 | tee "$logs/offload_torch.txt" || status=1
fi
# The allocation suite on 16 cores (the size of the single-GPU machine), whatever this host has.
cpus=$(( $(nproc) < 16 ? $(nproc) : 16 ))
pin=""
command -v taskset >/dev/null && pin="taskset -c 0-$((cpus - 1))"
$pin python3 "$dir/unimem-bench" --min-time 0.2 --json "$logs/unimem-bench.json" \
  > "$logs/unimem-bench.txt" 2> "$logs/unimem-bench.err" || status=1
exit $status
