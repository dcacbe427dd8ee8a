#!/usr/bin/env bash
# Loading files into GPU memory, every route side by side, on a GPU machine:
# run from the repository root there, with DIR holding unimem_loader_benchmark
# (and liburing.so.2).
#   bash scripts/loader-bench.sh DIR [GiB]
# Writes .bench/loader.bin (random bytes) and .bench/loader.safetensors (a mix
# of bf16/f16/f32 tensors, made with torch + safetensors) on disk, times
# unimem_loader_benchmark on both and safetensors.torch.load_file(device=cuda)
# on the same safetensors file. Where the page cache can be dropped (root),
# also the cold file: dd iflag=direct, unimem load into a Block, and unimem
# load --gpu, each after dropping the cache, twice (needs DIR/unimem).
set -uo pipefail
dir=${1:?folder with unimem_loader_benchmark}
gib=${2:-4}
data="$PWD/.bench"
mkdir -p "$data"
export LD_LIBRARY_PATH="$dir${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
bin="$data/loader.bin"
st="$data/loader.safetensors"
[ -f "$bin" ] || head -c "$((gib << 30))" /dev/urandom > "$bin"
[ -f "$st" ] || python3 - "$st" "$gib" <<'PY'
import sys, torch
from safetensors.torch import save_file
path, gib = sys.argv[1], int(sys.argv[2])
g = torch.Generator().manual_seed(1)
tensors, total, i = {}, 0, 0
dtypes = [torch.bfloat16, torch.float16, torch.float32]
while total < (gib << 30):
    rows = [4096, 11008, 1024, 128][i % 4]
    dt = dtypes[i % 3]
    t = torch.randn(rows, 4096 if i % 5 else 1, generator=g).to(dt)
    tensors[f"layers.{i}.w"] = t
    total += t.numel() * t.element_size()
    i += 1
save_file(tensors, path)
print(f"made {path}: {len(tensors)} tensors, {total / 2**30:.2f} GiB")
PY
sync  # no writeback of the files just made while timing
echo "== raw file"
"$dir/unimem_loader_benchmark" "$bin"
echo "== safetensors file"
"$dir/unimem_loader_benchmark" "$st" --safetensors
python3 scripts/safetensors-peer.py "$st" "peer: safetensors.torch.load_file(device=cuda), same file" ||
  echo "safetensors package: not timed"
if python3 -c "import unimem, torch" 2>/dev/null; then
  echo "== Python, first load in a fresh process (torch's CUDA context made first)"
  python3 scripts/first-load.py "$st" 3 unimem
  python3 scripts/first-load.py "$st" 3 safetensors
else
  echo "Python first load: not timed (unimem or torch does not import)"
fi
if [ -w /proc/sys/vm/drop_caches ] && [ -x "$dir/unimem" ]; then
  echo "== cold file (the page cache dropped before each line)"
  cold() { sync; echo 3 > /proc/sys/vm/drop_caches; }
  for rep in 1 2; do
    cold; echo "dd iflag=direct: $(dd if="$bin" of=/dev/null bs=64M iflag=direct 2>&1 | tail -1)"
    cold; "$dir/unimem" load "$bin" | tr "\r" "\n" | grep -v "^\s*$" | tail -2
    cold; "$dir/unimem" load "$bin" --gpu 0
  done
else
  echo "cold file: not timed (the page cache cannot be dropped here)"
fi
