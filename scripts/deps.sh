#!/usr/bin/env bash
# Installs the Debian packages unimem's build, tests and tools need, when missing.
# Sourced by scripts/demo.sh and scripts/test.sh; safe to run again.
set -euo pipefail

UNIMEM_PACKAGES=(cmake ninja-build g++ clang libclang-rt-14-dev libgtest-dev libbenchmark-dev
                 libboost-dev libmimalloc-dev libjemalloc-dev python3
                 liburing-dev nlohmann-json3-dev pkg-config libdnnl-dev clang-format clang-tidy
                 python3-dev python3-pybind11 pybind11-dev python3-numpy python3-pytest python3-setuptools
                 python3-pip python3-venv python3-torch python3-tqdm python3-hypothesis
                 libucx-dev ucx-utils)  # remote pools (unimem::remote) and ucx_perftest

missing=()
for p in "${UNIMEM_PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
  echo "unimem: installing ${missing[*]}"
  sudo=""
  [ "$(id -u)" -eq 0 ] || sudo="sudo"
  export DEBIAN_FRONTEND=noninteractive
  $sudo apt-get update -qq
  $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi

# The Python package builds for and is tested with Debian's python3 (its
# packages: pybind11, numpy, pytest, torch), also where another python3 comes
# first on PATH (pyenv).
UNIMEM_PYTHON=/usr/bin/python3
[ -x "$UNIMEM_PYTHON" ] || UNIMEM_PYTHON=$(command -v python3)
export UNIMEM_PYTHON

# CUDA's compiler is optional (it only adds the nvcc header check); use it where installed.
if ! command -v nvcc >/dev/null && [ -x /usr/local/cuda/bin/nvcc ]; then
  export CUDACXX=/usr/local/cuda/bin/nvcc
fi

# build/release is configured the same way by demo.sh and test.sh: a
# different compiler or option there would make CMake wipe the other's cache
# (and with it compile_commands.json, which lint.sh reads).
UNIMEM_RELEASE_ARGS=(-DCMAKE_BUILD_TYPE=Release -DCMAKE_CXX_COMPILER=g++ -DUNIMEM_WERROR=ON
                     -DCMAKE_EXPORT_COMPILE_COMMANDS=ON -DUNIMEM_PYTHON=ON "-DPython_EXECUTABLE=$UNIMEM_PYTHON")
