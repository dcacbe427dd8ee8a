"""unimem.load_safetensors against the safetensors package, and the Python
side's cost per tensor. On the GPU machine (PyTorch with CUDA, safetensors):

    python3 python/benchmarks/load_benchmark.py FILE.safetensors

FILE must be in the page cache (the script reads it once first). Prints, in
one table: the pinned cudaMemcpy ceiling, unimem's first and later loads to
"cuda", safetensors.torch.load_file(device="cuda"), and then the time for
100,000 small tensors with the C++ part and the Python part apart.
"""
import json
import os
import struct
import sys
import tempfile
import time

import torch
import unimem


def best(f, reps=3):
    f()
    times = []
    for _ in range(reps):
        t = time.perf_counter()
        f()
        times.append(time.perf_counter() - t)
    return min(times)


def main():
    path = sys.argv[1]
    size = os.path.getsize(path)
    with open(path, "rb") as f:
        while f.read(64 << 20):
            pass
    moved = sum(int(t["data_offsets"][1]) - int(t["data_offsets"][0])
                for k, t in json.loads(open(path, "rb").read(8 + struct.unpack("<Q", open(path, "rb").read(8))[0])[8:]).items()
                if k != "__metadata__")
    print(f"{path}: {size / 2**30:.2f} GiB, moving {moved / 2**30:.2f} GiB; torch {torch.__version__}, "
          f"{torch.cuda.get_device_name(0)}")
    rows = []

    def row(what, seconds):
        rows.append((what, moved / seconds / 1e9))
        print(f"  {what:<78} {rows[-1][1]:7.2f} GB/s", flush=True)

    pinned = torch.empty(moved, dtype=torch.uint8).pin_memory()
    dev = torch.empty(moved, dtype=torch.uint8, device="cuda")

    def ceiling():
        dev.copy_(pinned)
        torch.cuda.synchronize()
    row("ceiling: pinned host -> device copy (torch, one tensor)", best(ceiling))
    del pinned, dev

    def first():
        unimem.release_loaders()
        unimem.load_safetensors(path, device="cuda")
        torch.cuda.synchronize()
    row("unimem.load_safetensors(device='cuda'), first load (registers the page cache)", best(first))

    def later():
        unimem.load_safetensors(path, device="cuda")
        torch.cuda.synchronize()
    later()  # registers
    row("unimem.load_safetensors(device='cuda'), later loads (registrations kept)", best(later))

    def views():
        unimem.load_safetensors(path, device="cuda", output="view")
    row("  the same, returning unimem Views (no torch tensors made)", best(views))
    try:
        from safetensors.torch import load_file
    except ImportError:
        print("  safetensors package: not timed")
    else:
        def peer():
            load_file(path, device="cuda")
            torch.cuda.synchronize()
        row("peer: safetensors.torch.load_file(device='cuda')", best(peer))
    ceiling_gbps = rows[0][1]
    print("\n| route | GB/s | x ceiling |\n|---|---|---|")
    for what, gbps in rows:
        print(f"| {what.strip()} | {gbps:.2f} | {gbps / ceiling_gbps:.2f} |")

    # 100,000 small tensors: where the time goes.
    n = 100_000
    with tempfile.TemporaryDirectory() as d:
        small = os.path.join(d, "small.safetensors")
        header = {f"t{i}": {"dtype": "F32", "shape": [16], "data_offsets": [64 * i, 64 * (i + 1)]} for i in range(n)}
        text = json.dumps(header).encode()
        text += b" " * (-len(text) % 8)
        with open(small, "wb") as f:
            f.write(struct.pack("<Q", len(text)) + text + bytes(64 * n))
        print(f"\n{n} tensors of 16 floats ({os.path.getsize(small) / 2**20:.1f} MiB file), best of 3:")
        cpp = best(lambda: unimem._unimem._load_host(small, False, None))
        print(f"  C++ (header, read, one View per tensor):        {cpp:.3f} s")
        for output in ("view", "numpy", "torch"):
            total = best(lambda: unimem.load_safetensors(small, output=output))
            print(f"  load_safetensors(output={output!r:8}) {total:.3f} s: Python side {total - cpp:.3f} s, "
                  f"{(total - cpp) / n * 1e6:.2f} us per tensor")
        gpu_cpp = best(lambda: unimem._unimem._load_devices(small, [0], None, None))
        gpu = best(lambda: unimem.load_safetensors(small, device="cuda"))
        print(f"  device='cuda': C++ {gpu_cpp:.3f} s, with torch tensors {gpu:.3f} s: Python side "
              f"{(gpu - gpu_cpp) / n * 1e6:.2f} us per tensor")


if __name__ == "__main__":
    main()
