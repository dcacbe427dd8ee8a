#!/usr/bin/env bash
# Sets up, builds (Release) and runs the demo.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/deps.sh
cmake -S . -B build/release -G Ninja -DCMAKE_BUILD_TYPE=Release
cmake --build build/release --target unimem_demo
./build/release/examples/unimem_demo
