#!/usr/bin/env bash
# Sets up, builds and runs every test in four configurations:
#   release  g++,     -O2, with the Python package and its pytest suite (also checks
#            the headers with nvcc where CUDA is installed)
#   nouring  g++,     -O2, built without liburing (-DUNIMEM_IO_URING=OFF): every read
#            takes the threaded pread route, as on machines without liburing-dev
#   asan     clang++, AddressSanitizer + UndefinedBehaviorSanitizer
#   tsan     g++,     ThreadSanitizer
# every build with warnings as errors; after the release build, scripts/lint.sh
# (clang-format and clang-tidy), scripts/pip-check.sh (the Python package
# installed with pip, as a user installs it: with and without a package index)
# and scripts/venv-check.sh (the transformers tests in a venv with pinned torch,
# transformers and safetensors).
# Exits non-zero if any build, test or check fails. Pass config names to run a subset.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/deps.sh

configs=("$@")
((${#configs[@]})) || configs=(release nouring asan tsan)
jobs=$(nproc)

for config in "${configs[@]}"; do
  case "$config" in
    release) args=("${UNIMEM_RELEASE_ARGS[@]}") ;;
    # nouring differs from release in host code only: no examples, benchmarks or
    # nvcc kernel tests (CMAKE_CUDA_COMPILER=NOTFOUND: as if none were installed).
    nouring) args=(-DCMAKE_BUILD_TYPE=Release -DCMAKE_CXX_COMPILER=g++ -DUNIMEM_IO_URING=OFF
                   -DUNIMEM_BUILD_EXAMPLES=OFF -DUNIMEM_BUILD_BENCHMARKS=OFF -DCMAKE_CUDA_COMPILER=NOTFOUND) ;;
    asan) args=(-DCMAKE_BUILD_TYPE=RelWithDebInfo -DCMAKE_CXX_COMPILER=clang++ -DUNIMEM_SANITIZE=address) ;;
    tsan) args=(-DCMAKE_BUILD_TYPE=RelWithDebInfo -DCMAKE_CXX_COMPILER=g++ -DUNIMEM_SANITIZE=thread) ;;
    *) echo "unknown configuration '$config' (release, nouring, asan, tsan)" >&2; exit 2 ;;
  esac
  echo "=== $config ==="
  cmake -S . -B "build/$config" -G Ninja -DUNIMEM_WERROR=ON -DCMAKE_EXPORT_COMPILE_COMMANDS=ON "${args[@]}"
  cmake --build "build/$config" -j "$jobs"
  ASAN_OPTIONS=detect_leaks=1:abort_on_error=0 UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1 \
  TSAN_OPTIONS=halt_on_error=1:second_deadlock_stack=1 \
    ctest --test-dir "build/$config" --output-on-failure -j "$jobs"
  if [ "$config" = release ]; then
    bash scripts/lint.sh "build/$config"
    bash scripts/pip-check.sh "build/$config/pip"
    # unimem.transformers against pinned transformers, torch and safetensors, in a venv.
    bash scripts/venv-check.sh
  fi
  # ctest hides what skipped tests print: show the GPU tests' verdict here.
  gpu_test="build/$config/tests/unimem_gpu_test"
  if [ -x "$gpu_test" ]; then
    "$gpu_test" --gtest_filter=Gpu.DevicesAreReported | grep -E "skipped:|device [0-9]+:" || true
  fi
  pipeline="build/$config/examples/unimem_pipeline"
  if [ -x "$pipeline" ]; then
    "$pipeline" --mode all --gpu-or-skip --dim 64 --heads 4 --mlp 160 --prompt 2 --tokens 2 --repeat 1 |
      grep -E "skipped:|tokens/s" || true
  fi
done
echo "all tests passed: ${configs[*]}"
