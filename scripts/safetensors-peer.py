#!/usr/bin/env python3
"""Times the peer users pick: safetensors.torch.load_file(FILE, device="cuda").

    python3 scripts/safetensors-peer.py FILE [LABEL]

Warm-up (page cache and CUDA), then the best of 3 loads; prints LABEL and GB/s.
Used by scripts/file-bench.sh and scripts/loader-bench.sh on the GPU machine.
"""
import os
import sys
import time

import torch
from safetensors.torch import load_file

path = sys.argv[1]
label = sys.argv[2] if len(sys.argv) > 2 else "safetensors.torch.load_file(device=cuda)"
size = os.path.getsize(path)
load_file(path, device="cuda")
torch.cuda.synchronize()
best = None
for _ in range(3):
    t = time.perf_counter()
    d = load_file(path, device="cuda")
    torch.cuda.synchronize()
    dt = time.perf_counter() - t
    best = dt if best is None else min(best, dt)
    del d
print(f"{label:<66} {size / best / 1e9:10.2f} GB/s")
