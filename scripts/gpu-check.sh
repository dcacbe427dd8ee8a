#!/usr/bin/env bash
# GPU checks in two steps, for a GPU machine without network or build tools:
#   bash scripts/gpu-check.sh build DIR   (here) build Release with nvcc for sm_90 and
#                                          copy the test and benchmark binaries into DIR
#   bash scripts/gpu-check.sh run DIR     (on the GPU machine) run them all; logs go to
#                                          $OUT when set, else DIR/logs
set -euo pipefail
cd "$(dirname "$0")/.."
step=${1:?build or run}
dir=${2:?folder}

if [ "$step" = build ]; then
  source scripts/deps.sh
  cmake -S . -B build/device -G Ninja -DCMAKE_BUILD_TYPE=Release -DCMAKE_CUDA_ARCHITECTURES=90
  cmake --build build/device
  mkdir -p "$dir"
  cp build/device/tests/unimem_test build/device/tests/unimem_gpu_test \
     build/device/bench/unimem_gpu_benchmark build/device/bench/unimem_block_benchmark "$dir"/
  cp -L /usr/lib/x86_64-linux-gnu/libbenchmark.so.1debian "$dir"/
  exit 0
fi

logs=${OUT:-$dir/logs}
mkdir -p "$logs"
export LD_LIBRARY_PATH="$dir${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
status=0
{
  date -u
  nvidia-smi --query-gpu=index,name,driver_version,memory.total,pcie.link.gen.current,pcie.link.width.current --format=csv || true
  echo "cpus: $(nproc); $(grep -m1 'model name' /proc/cpuinfo)"
  echo "memlock: $(ulimit -l); shmem THP: $(cat /sys/kernel/mm/transparent_hugepage/shmem_enabled 2>/dev/null)"
  echo "anon THP: $(cat /sys/kernel/mm/transparent_hugepage/enabled 2>/dev/null); kernel $(uname -r)"
} 2>&1 | tee "$logs/machine.txt"
"$dir/unimem_gpu_test" 2>&1 | tee "$logs/gpu_test.txt" || status=1
"$dir/unimem_test" --gtest_death_test_style=threadsafe 2>&1 | tee "$logs/unit_test.txt" | tail -3 || status=1
"$dir/unimem_block_benchmark" 2>&1 | tee "$logs/block_benchmark.txt" || status=1
"$dir/unimem_gpu_benchmark" "${@:3}" 2>&1 | tee "$logs/gpu_benchmark.txt" || status=1
exit $status
