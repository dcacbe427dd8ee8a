#!/usr/bin/env bash
# Remote pools (unimem::remote, UCX) on the GPU machine, in two steps, as scripts/gpu-check.sh:
#   bash scripts/remote-check.sh build DIR   (here) build Release with nvcc and UCX (Debian's
#                                            libucx-dev 1.13 headers: the UCP API and the
#                                            libucp.so.0 soname are the same in 1.16), copy the
#                                            remote tests, helper and benchmark into DIR, with
#                                            Debian's ucx_perftest and the UCX 1.13 libraries it
#                                            runs on (DIR/ucx-1.13) and the libraries the GPU
#                                            machine lacks (liburing)
#   bash scripts/remote-check.sh run DIR     (on the GPU machine) the remote tests over tcp and
#                                            shared memory on the machine's UCX (1.16), then the
#                                            benchmark beside ucx_perftest (the machine's own
#                                            where installed, else the carried 1.13 one on its
#                                            own libraries) and the remote -> pool -> GPU chain
#                                            beside the local fetch alone; logs go to $OUT when
#                                            set, else DIR/logs
# Success: remote_test.txt has no FAILED line (the skips are the cases UCX over shared
# memory alone cannot detect), and remote_benchmark.txt has a ratio for every row (tcp, sm
# and the same-host route) and "gpu chain" lines with GB/s.
set -euo pipefail
cd "$(dirname "$0")/.."
step=${1:?build or run}
dir=${2:?folder}

if [ "$step" = build ]; then
  source scripts/deps.sh
  dpkg-query -W -f='${Status}' libucx-dev ucx-utils 2>/dev/null | grep -q "install ok installed" ||
    apt-get install -y -qq --no-install-recommends libucx-dev ucx-utils
  cmake -S . -B build/device-remote -G Ninja -DCMAKE_BUILD_TYPE=Release -DCMAKE_CUDA_ARCHITECTURES=90 \
    -DUNIMEM_UCX=ON -DUNIMEM_BUILD_EXAMPLES=OFF
  cmake --build build/device-remote --target unimem_remote_test unimem_remote_helper unimem_remote_benchmark
  mkdir -p "$dir/ucx-1.13/ucx"
  cp build/device-remote/tests/unimem_remote_test build/device-remote/tests/unimem_remote_helper \
     build/device-remote/bench/unimem_remote_benchmark "$dir"/
  cp -L /usr/lib/x86_64-linux-gnu/liburing.so.2 "$dir"/
  cp -L /usr/bin/ucx_perftest "$dir/ucx-1.13/"
  for lib in libucp.so.0 libuct.so.0 libucs.so.0 libucm.so.0; do cp -L "/usr/lib/x86_64-linux-gnu/$lib" "$dir/ucx-1.13/"; done
  cp -L /usr/lib/x86_64-linux-gnu/ucx/*.so.0 "$dir/ucx-1.13/ucx/"
  exit 0
fi

logs=${OUT:-$dir/logs}
mkdir -p "$logs"
dir=$(cd "$dir" && pwd)
export LD_LIBRARY_PATH="$dir${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"  # liburing only: UCX is the machine's
export UNIMEM_REMOTE_HELPER="$dir/unimem_remote_helper"
status=0
{
  date -u
  nvidia-smi --query-gpu=index,name,driver_version --format=csv || true
  echo "cpus: $(nproc); $(grep -m1 'model name' /proc/cpuinfo)"
  echo "UCX the binaries load: $(ldd "$dir/unimem_remote_test" | grep libucp)"
  ls /usr/lib/x86_64-linux-gnu/libucp.so.* 2>/dev/null || true
  if command -v ucx_info >/dev/null; then ucx_info -v; else echo "ucx_info: not installed"; fi
} 2>&1 | tee "$logs/remote_machine.txt"
"$dir/unimem_remote_test" 2>&1 | tee "$logs/remote_test.txt" | grep -E "^\[ +(OK|FAILED|SKIPPED|PASSED) " || status=1
grep -q "^\[  PASSED  \]" "$logs/remote_test.txt" && ! grep -q "^\[  FAILED  \]" "$logs/remote_test.txt" || status=1
if command -v ucx_perftest >/dev/null; then
  perftest=ucx_perftest
else  # the carried 1.13 tool on its own 1.13 libraries (said so in the log)
  perftest="env LD_LIBRARY_PATH=$dir/ucx-1.13 $dir/ucx-1.13/ucx_perftest"
fi
echo "perftest: $perftest" | tee "$logs/remote_benchmark.txt"
"$dir/unimem_remote_benchmark" --perftest "$perftest" --seconds 2 --gpu 2>&1 | grep -v "UCX  WARN" |
  tee -a "$logs/remote_benchmark.txt" || status=1
exit $status
