#!/usr/bin/env bash
# The pipeline example on a GPU machine: run from the repository root there,
# with DIR holding the binaries that `bash scripts/gpu-check.sh build DIR` made.
#   bash scripts/pipeline-check.sh DIR
# Runs the ctest configurations (all modes, checked against float64), then the
# default size and the large preset in every mode, and the large preset with
# the GPU reading the weights in place, and without the GPU's device mirror;
# then, where torch imports, examples/pipeline/torch_layer.py beside gpu mode.
# Logs go to $OUT when set, else DIR/logs.
set -uo pipefail
dir=${1:?folder with unimem_pipeline}
logs=${OUT:-$dir/logs}
mkdir -p "$logs"
export LD_LIBRARY_PATH="$dir${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
status=0
run() {  # run NAME ARGS...: log to NAME.txt, remember a failure
  local name=$1
  shift
  echo "== unimem_pipeline $*" | tee "$logs/$name.txt"
  "$dir/unimem_pipeline" "$@" 2>&1 | tee -a "$logs/$name.txt" || status=1
}
{
  date -u
  nvidia-smi --query-gpu=name,driver_version,pcie.link.gen.current,pcie.link.width.current --format=csv,noheader
  echo "cpus: $(nproc); $(grep -m1 'model name' /proc/cpuinfo); amx: $(grep -c -m1 amx_bf16 /proc/cpuinfo)"
} 2>&1 | tee "$logs/pipeline_machine.txt"
run pipeline_test_f32 --mode all --dim 256 --heads 4 --mlp 680 --prompt 5 --tokens 7
run pipeline_test_bf16_host --mode all --dim 128 --heads 4 --mlp 340 --prompt 5 --tokens 7 --bf16 --gpu-weights host
run pipeline_test_no_mirror --mode all --dim 256 --heads 4 --mlp 680 --prompt 5 --tokens 7 --no-gpu-mirror
run pipeline_default --mode all
run pipeline_large --preset large --mode all
run pipeline_large_host_weights --preset large --mode split --gpu-weights host
run pipeline_large_no_mirror --preset large --mode all --no-gpu-mirror
# PyTorch's layer beside the gpu mode, one table (where torch imports).
if python3 -c "import torch" 2>/dev/null; then
  echo "== torch_layer.py --pipeline $dir/unimem_pipeline --preset large" | tee "$logs/torch_large.txt"
  python3 examples/pipeline/torch_layer.py --pipeline "$dir/unimem_pipeline" --preset large 2>&1 |
    tee -a "$logs/torch_large.txt" || status=1
fi
exit $status
