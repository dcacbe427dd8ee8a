#!/bin/sh
# The pipeline.torch_peer test: torch_layer.py (the layer in PyTorch) on the
# CPU at a tiny size, on weights unimem_pipeline wrote in cpu mode (which
# checks its own outputs against the C++ float64 reference), f32 and bf16;
# then once through --pipeline, which reads unimem_pipeline's JSON rows.
# torch_layer.py fails when its outputs stray from its float64 run of the
# same layer, or when unimem_pipeline fails. Exit 77 (CTest's skip) where
# PYTHON cannot import torch.
#
# usage: torch_peer_test.sh PYTHON UNIMEM_PIPELINE TORCH_LAYER_PY
set -eu
if [ $# -ne 3 ]; then
  echo "usage: $0 PYTHON UNIMEM_PIPELINE TORCH_LAYER_PY" >&2
  exit 2
fi
py=$1 pipeline=$2 script=$3
if ! "$py" -c "import torch" >/dev/null 2>&1; then
  echo "skipped: no torch ($py cannot import it)"
  exit 77
fi
dir=$(mktemp -d)
trap 'rm -rf "$dir"' EXIT
size="--dim 64 --heads 4 --mlp 160 --prompt 4 --tokens 6"
for dtype in "" --bf16; do
  # shellcheck disable=SC2086  # $size and $dtype are lists of words
  "$pipeline" --mode cpu $size $dtype --repeat 1 --save-weights "$dir/weights.safetensors"
  # shellcheck disable=SC2086
  "$py" "$script" --device cpu $size $dtype --repeat 2 --weights "$dir/weights.safetensors"
done
# shellcheck disable=SC2086
"$py" "$script" --device cpu $size --repeat 2 --pipeline "$pipeline"
echo "torch peer: all runs passed"
