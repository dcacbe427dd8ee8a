#!/usr/bin/env bash
# Style and static checks, run by scripts/test.sh (what CI runs):
#   clang-format  every C++/CUDA source matches .clang-format
#   clang-tidy    the library and tool sources pass .clang-tidy (bugprone,
#                 concurrency, performance), given a build's compile_commands.json
# Usage: scripts/lint.sh BUILD_DIR
set -euo pipefail
cd "$(dirname "$0")/.."
build=${1:?usage: scripts/lint.sh BUILD_DIR (with compile_commands.json)}

mapfile -t sources < <(git ls-files '*.cpp' '*.hpp' '*.cu' '*.h')
echo "clang-format: ${#sources[@]} files"
clang-format --dry-run -Werror "${sources[@]}"

# The platform seam (docs/DESIGN.md, "Layers and seams"): no library source outside
# src/platform/<os>/ includes a system header; the tool's own probes and the tests,
# benchmarks and test helpers may.
mapfile -t seam < <(git ls-files src include tools python/src | grep -E '\.(cpp|hpp|cu)$' |
  grep -v -E '_test\.cpp$|_benchmark\.cpp$|testing\.hpp$|share_helper|remote_helper|test_kernels|^src/platform/[a-z]+/|^tools/cli\.cpp$' |
  xargs grep -l -E '#include <(sys/|unistd|fcntl|dlfcn|pthread|linux/|liburing|poll|signal|csignal|sched|spawn)' || true)
if [ "${#seam[@]}" -ne 0 ]; then
  echo "platform seam: system headers outside src/platform/<os>/: ${seam[*]}" >&2
  exit 1
fi
echo "platform seam: no system header outside src/platform/<os>/ and the tool"

# The library and the tool (tests, benchmarks and examples follow their frameworks' idioms).
mapfile -t library < <(git ls-files 'src/*.cpp' 'src/**/*.cpp' 'tools/*.cpp' | grep -v -E '_test\.cpp$|_benchmark\.cpp$|share_helper\.cpp$')
echo "clang-tidy: ${#library[@]} files"
printf '%s\n' "${library[@]}" | xargs -P "$(nproc)" -n 4 clang-tidy -p "$build" --quiet
echo "lint passed"
