#!/usr/bin/env bash
# Sets up, builds (Release) and runs the demo: the transformer-layer pipeline,
# unimem against standard allocation (CPU mode without a GPU; CPU, GPU and
# split modes with one). Arguments go to the pipeline, e.g. --preset large.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/deps.sh
cmake -S . -B build/release -G Ninja "${UNIMEM_RELEASE_ARGS[@]}"
cmake --build build/release --target unimem_pipeline unimem_python
# `import unimem` for that Python from now on: a .pth file in the user's
# site-packages naming build/release/python (`python3 -m pip install .` installs it
# for good instead: README, Python).
site=$("$UNIMEM_PYTHON" -c "import site; print(site.getusersitepackages())")
mkdir -p "$site" && echo "$PWD/build/release/python" > "$site/unimem-build.pth"
./build/release/examples/unimem_pipeline "$@"
