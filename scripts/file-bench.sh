#!/usr/bin/env bash
# File loading benchmark on a GPU machine: run from the repository root there,
# with DIR holding the binaries that `bash scripts/gpu-check.sh build DIR` made.
#   bash scripts/file-bench.sh DIR [GiB] [safetensors GiB]
# Writes its files under .bench/ (on disk, not tmpfs), prints one table, and
# times the safetensors Python package on the same file when it is installed.
set -uo pipefail
dir=${1:?folder with unimem_file_benchmark}
gib=${2:-4}
st_gib=${3:-2}
data="$PWD/.bench"
mkdir -p "$data"
export LD_LIBRARY_PATH="$dir${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
"$dir/unimem_file_benchmark" --dir "$data" --gib "$gib" --st-gib "$st_gib"
python3 scripts/safetensors-peer.py "$data/bench.safetensors" "safetensors->GPU warm: safetensors.torch.load_file(device=cuda)" || echo "safetensors package: not timed"
