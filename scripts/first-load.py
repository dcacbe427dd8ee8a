#!/usr/bin/env python3
"""The first load a PyTorch user sees: a fresh interpreter per run, torch's
CUDA context made first, then one call, timed from the call to the tensors
ready on the GPU.

    python3 scripts/first-load.py FILE [RUNS] [ROUTE]

ROUTE: unimem (default), or safetensors (safetensors.torch.load_file). Prints
each run's GB/s (tensor bytes moved) and the best; the file should be in the
page cache. Used by scripts/loader-bench.sh on the GPU machine.
"""
import json
import os
import struct
import subprocess
import sys

CHILD = r"""
import sys, time, torch
torch.empty(1, device="cuda")
torch.cuda.synchronize()
route, path = sys.argv[1], sys.argv[2]
if route == "unimem":
    import unimem
    t = time.perf_counter()
    out = unimem.load_safetensors(path, device="cuda")
else:
    from safetensors.torch import load_file
    t = time.perf_counter()
    out = load_file(path, device="cuda")
torch.cuda.synchronize()
print(time.perf_counter() - t, len(out))
"""


def tensor_bytes(path):
    with open(path, "rb") as f:
        n = struct.unpack("<Q", f.read(8))[0]
        header = json.loads(f.read(n))
    return sum(t["data_offsets"][1] - t["data_offsets"][0] for k, t in header.items() if k != "__metadata__")


def main():
    path = sys.argv[1]
    runs = int(sys.argv[2]) if len(sys.argv) > 2 else 3
    route = sys.argv[3] if len(sys.argv) > 3 else "unimem"
    moved = tensor_bytes(path)
    rates = []
    for _ in range(runs):
        r = subprocess.run([sys.executable, "-c", CHILD, route, path], capture_output=True, text=True)
        if r.returncode != 0:
            print(f"{route}: the child exited with status {r.returncode}: {r.stderr[-500:]}")
            sys.exit(1)
        seconds = float(r.stdout.split()[0])
        rates.append(moved / seconds / 1e9)
    label = f"{route} first load, fresh process after torch's CUDA init"
    print(f"{label:<66} {max(rates):10.2f} GB/s (runs: {', '.join(f'{x:.1f}' for x in rates)}; exit status 0)")


if __name__ == "__main__":
    main()
