#!/usr/bin/env bash
# Sets up, builds (Release) and runs the demo: the transformer-layer pipeline,
# unimem against standard allocation (CPU mode without a GPU; CPU, GPU and
# split modes with one). Arguments go to the pipeline, e.g. --preset large.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/deps.sh
cmake -S . -B build/release -G Ninja -DCMAKE_BUILD_TYPE=Release
cmake --build build/release --target unimem_pipeline
./build/release/examples/unimem_pipeline "$@"
