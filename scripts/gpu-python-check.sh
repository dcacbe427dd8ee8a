#!/usr/bin/env bash
# The Python package as a PyTorch user installs it on a GPU machine, from a
# clean copy of the repository, with the tools already installed there (no
# package index needed):
#   1. copies the repository (without build/, .bench/, .git) to a temporary folder
#   2. makes a fresh venv with --system-site-packages (for torch); where python3
#      is itself a venv, the new one also sees that venv's packages (a .pth file)
#   3. python3 -m pip install --no-build-isolation .      (README's install line)
# then, from another folder:
#   4. README's Python example, with device="cuda" (on the CPU, said so, without a GPU)
#   5. pytest python/tests
#   6. a script that imports torch first, makes a CUDA tensor, loads a file to
#      CUDA with unimem, and exits: its exit status is printed and must be 0
# Prints "gpu-python-check: all passed" at the end, or what failed (exit 1).
#   bash scripts/gpu-python-check.sh              (python3 from PATH; UNIMEM_KEEP=1 keeps the folder)
set -uo pipefail
cd "$(dirname "$0")/.."
repo=$PWD
python=${PYTHON:-python3}
tmp=$(mktemp -d "${TMPDIR:-/tmp}/unimem-gpu-python.XXXXXX")
[ "${UNIMEM_KEEP:-0}" = 1 ] || trap 'rm -rf "$tmp"' EXIT
chmod 755 "$tmp"  # a test runs the venv's python as nobody (its memlock limit binds only there)
failed=()
step() { echo; echo "=== $*"; }

step "1. copy of the repository in $tmp/src"
mkdir -p "$tmp/src" "$tmp/run"
tar -C "$repo" --exclude=./build --exclude=./.bench --exclude=./.git -cf - . | tar -C "$tmp/src" -xf - || exit 1

step "2. fresh venv ($("$python" --version 2>&1), --system-site-packages)"
venv="$tmp/venv"
if "$python" -m venv --system-site-packages "$venv"; then
  pip=("$venv/bin/python" -m pip)
else  # no ensurepip for this Python (Ubuntu without python3-venv's pip): the outer pip installs into it
  rm -rf "$venv"
  "$python" -m venv --system-site-packages --without-pip "$venv" || exit 1
  pip=("$python" -m pip --python "$venv/bin/python")
fi
# python3 a venv itself: --system-site-packages reaches the base Python only,
# not that venv's torch and build tools; a .pth file adds them after the new venv's own.
"$python" - "$venv" <<'PY' || exit 1
import subprocess, sys, sysconfig
if sys.prefix != sys.base_prefix:
    outer = {sysconfig.get_paths()[k] for k in ("purelib", "platlib")}
    inner = subprocess.run([sys.argv[1] + "/bin/python", "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                           check=True, capture_output=True, text=True).stdout.strip()
    with open(inner + "/outer-venv.pth", "w") as f:
        f.write("\n".join(sorted(outer)) + "\n")
    print("the new venv also sees", ", ".join(sorted(outer)))
PY
vpython="$venv/bin/python"

step "3. python3 -m pip install --no-build-isolation .   (in $tmp/src)"
if ! (cd "$tmp/src" && "${pip[@]}" install --no-build-isolation .); then
  echo "gpu-python-check: pip install --no-build-isolation . FAILED"
  exit 1
fi
cd "$tmp/run" || exit 1
"$vpython" -c "import unimem; print('installed', unimem.__version__, 'at', unimem.__file__); print(unimem.build_info())" ||
  failed+=("import")
"$vpython" -m unimem info || failed+=("python3 -m unimem info")
gpu=$("$vpython" -c "import unimem; print(1 if unimem.gpu_available() else 0)" 2>/dev/null || echo 0)
[ "$gpu" = 1 ] || echo "skipped: no CUDA device (the CUDA steps below run on the CPU or skip, and say so)"

# A model file: bf16 and f32 tensors, written with the safetensors package
# (torch) where it imports, else by hand.
"$vpython" - <<'PY' || failed+=("writing model.safetensors")
import json, struct
import numpy as np
rng = np.random.default_rng(0)
tensors = {"embed.weight": rng.standard_normal((512, 256), dtype=np.float32),
           "layers.0.mlp.weight": rng.standard_normal((256, 1024), dtype=np.float32),
           "norm.weight": np.ones(256, np.float32)}
try:
    import torch
    from safetensors.torch import save_file
    t = {k: torch.from_numpy(v) for k, v in tensors.items()}
    t["layers.0.attn.weight"] = torch.randn(256, 256, generator=torch.Generator().manual_seed(1)).to(torch.bfloat16)
    save_file(t, "model.safetensors")
    print("model.safetensors written with safetensors.torch")
except ImportError:
    header, blobs, offset = {}, [], 0
    for name, a in tensors.items():
        header[name] = {"dtype": "F32", "shape": list(a.shape), "data_offsets": [offset, offset + a.nbytes]}
        offset += a.nbytes
        blobs.append(a.tobytes())
    text = json.dumps(header).encode()
    text += b" " * (-len(text) % 8)
    with open("model.safetensors", "wb") as f:
        f.write(struct.pack("<Q", len(text)) + text + b"".join(blobs))
    print("model.safetensors written by hand (no torch/safetensors here)")
PY

step "4. README's Python example, device=\"cuda\""
# The first python block of README's "## Python" section, as a user copies it.
"$vpython" - "$tmp/src/README.md" "$gpu" > example.py <<'PY' || failed+=("extracting README's example")
import re, sys
text = open(sys.argv[1]).read()
section = text[text.index("\n## Python\n"):]
code = re.search(r"```python\n(.*?)```", section, re.S).group(1)
call = 'unimem.load_safetensors("model.safetensors")'
assert call in code, "README's example changed: update scripts/gpu-python-check.sh"
if sys.argv[2] == "1":
    code = code.replace(call, 'unimem.load_safetensors("model.safetensors", device="cuda")')
    code += 'assert all(str(t.device) == "cuda:0" for t in weights.values()), {k: t.device for k, t in weights.items()}\n'
    code += 'print("README example: every tensor on", next(iter(weights.values())).device)\n'
print(code)
PY
cat example.py
"$vpython" example.py || failed+=("README's example")

step "5. pytest python/tests   (from $tmp/run)"
"$vpython" -m pytest -q -rs "$tmp/src/python/tests" || failed+=("pytest python/tests")

step "6. torch first, a CUDA tensor, unimem loads to CUDA, exit"
cat > torch_first.py <<'PY'
import sys
try:
    import torch
except ImportError:
    print("skipped: torch does not import here")
    sys.exit(0)
import unimem
if not torch.cuda.is_available() or not unimem.gpu_available():
    print("skipped: no CUDA device (torch imported first, unimem imported after it)")
    sys.exit(0)
x = torch.arange(1 << 20, device="cuda", dtype=torch.float32)  # torch's context and caching allocator first
weights = unimem.load_safetensors("model.safetensors", device="cuda")
try:
    from safetensors.torch import load_file
    reference = load_file("model.safetensors", device="cuda")
    for name, t in reference.items():
        assert torch.equal(weights[name], t), name
    print(f"{len(weights)} tensors equal safetensors.torch.load_file's")
except ImportError:
    print("safetensors package: not compared")
y = (weights["embed.weight"] @ weights["layers.0.mlp.weight"]).sum() + x.sum()
torch.cuda.synchronize()
print("torch first, then unimem on", weights["embed.weight"].device, "->", float(y) != 0)
PY
"$vpython" torch_first.py
status=$?
echo "torch-first script: exit status $status"
[ "$status" = 0 ] || failed+=("torch-first script (exit status $status)")

echo
if ((${#failed[@]})); then
  printf 'gpu-python-check: FAILED: %s\n' "${failed[@]}"
  exit 1
fi
echo "gpu-python-check: all passed"
