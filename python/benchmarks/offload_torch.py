"""KV-cache offload the way PyTorch users write it, for comparison with
unimem's gpu::OffloadPool (bench/offload_benchmark.cu prints the same block
sizes, GB/s and ratios for the pool's routes, the pinned ceiling and a
cudaMemcpyAsync per block).

A host pool of KV blocks is one pinned tensor, ``torch.empty((blocks,
block_bytes), dtype=torch.uint8, pin_memory=True)``; the GPU's KV cache is one
device tensor of the same block size. Per block size and in random block order
(GPU blocks and host cells both shuffled) it times:

  ceiling       one copy of the whole pinned pool to the GPU and back (non_blocking)
  store loop    host_pool[cell].copy_(gpu_kv[block], non_blocking=True) per block
  store gather  host_pool.index_copy_(0, cells, gpu_kv[blocks].cpu())
                (a gather on the GPU, a copy to pageable memory, a CPU scatter)
  fetch loop    gpu_kv[block].copy_(host_pool[cell], non_blocking=True) per block
  fetch gather  gpu_kv[blocks] = host_pool[cells].to("cuda", non_blocking=True)
                (a CPU gather into pageable memory, a copy, a GPU scatter)
  unimem        unimem.OffloadPool.store / fetch from Python, one call per
                measurement on torch's current stream (where `import unimem`
                works), so the torch routes and unimem's stand in one run

Each row: one warm-up, the median of --reps runs, host clock between
torch.cuda.synchronize() calls; GB/s of block bytes moved and the ratio to the
ceiling of the same direction. Without CUDA it says "skipped: no CUDA device".

    python3 python/benchmarks/offload_torch.py [--gib 1] [--reps 5] [--sizes 16,64,256,512,1024,2048] [--device 0]
"""

import argparse
import statistics
import time

import numpy as np


def timed(torch, reps, fn):
    """Median seconds of `reps` runs of fn() after one warm-up, synchronized."""
    fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(reps):
        start = time.perf_counter()
        fn()
        torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--gib", type=float, default=1.0, help="GiB moved per measurement")
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--sizes", default="16,64,256,512,1024,2048", help="block sizes in KiB")
    parser.add_argument("--device", type=int, default=0)
    args = parser.parse_args()

    try:
        import torch
    except ImportError:
        print("skipped: torch is not installed")
        return
    if not torch.cuda.is_available():
        print("skipped: no CUDA device")
        return
    try:
        import unimem
    except ImportError:
        unimem = None
    device = torch.device("cuda", args.device)
    torch.cuda.set_device(device)
    moved = int(args.gib * (1 << 30)) // (2 << 20) * (2 << 20)
    print(
        f"torch {torch.__version__} offload benchmark: {torch.cuda.get_device_name(device)}, "
        f"{moved / (1 << 30):.2f} GiB per measurement, median of {args.reps}"
    )
    rows = []

    def row(size, what, gbps, ceiling):
        rows.append((size, what, gbps, gbps / ceiling))
        print(f"  {size:>8} {what:<58} {gbps:7.2f} GB/s  {gbps / ceiling:5.2f}x ceiling", flush=True)

    host_flat = torch.empty(moved, dtype=torch.uint8, pin_memory=True)
    host_flat.fill_(0x5A)
    gpu_flat = torch.randint(0, 256, (moved,), dtype=torch.uint8, device=device)
    h2d = moved / timed(torch, args.reps, lambda: gpu_flat.copy_(host_flat, non_blocking=True)) / 1e9
    d2h = moved / timed(torch, args.reps, lambda: host_flat.copy_(gpu_flat, non_blocking=True)) / 1e9
    row("-", "ceiling: one pinned copy, host to device (non_blocking)", h2d, h2d)
    row("-", "ceiling: one pinned copy, device to host (non_blocking)", d2h, d2h)

    generator = torch.Generator().manual_seed(2026)
    for kib in (int(k) for k in args.sizes.split(",")):
        block = kib * 1024
        n = moved // block
        if n == 0:
            continue
        size = f"{kib // 1024} MiB" if kib >= 1024 else f"{kib} KiB"
        host_pool = host_flat.view(n, block)  # pinned, one row per cell
        gpu_kv = gpu_flat.view(n, block)
        blocks = torch.randperm(n, generator=generator)
        cells = torch.randperm(n, generator=generator)
        blocks_gpu = blocks.to(device)
        blocks_list, cells_list = blocks.tolist(), cells.tolist()

        def store_loop():
            for b, c in zip(blocks_list, cells_list):
                host_pool[c].copy_(gpu_kv[b], non_blocking=True)

        def store_gather():
            host_pool.index_copy_(0, cells, gpu_kv[blocks_gpu].cpu())

        def fetch_loop():
            for b, c in zip(blocks_list, cells_list):
                gpu_kv[b].copy_(host_pool[c], non_blocking=True)

        def fetch_gather():
            gpu_kv[blocks_gpu] = host_pool[cells].to(device, non_blocking=True)

        def rate(fn):
            return moved / timed(torch, args.reps, fn) / 1e9

        row(size, "store: per-block copy_(non_blocking=True) into pinned", rate(store_loop), d2h)
        row(size, "store: index_copy_(0, cells, gpu_kv[blocks].cpu())", rate(store_gather), d2h)
        row(size, "fetch: per-block copy_(non_blocking=True) from pinned", rate(fetch_loop), h2d)
        row(size, "fetch: gpu_kv[blocks] = host_pool[cells].to('cuda')", rate(fetch_gather), h2d)
        if unimem is not None:
            pool = unimem.OffloadPool(block, n, device=args.device)
            taken = pool.take(n)
            # The block table as arrays, as an engine keeps it (lists cost ~0.3 us per item to convert).
            ptrs = np.array([gpu_kv[b].data_ptr() for b in blocks_list], dtype=np.uint64)
            stream = torch.cuda.current_stream(device).cuda_stream
            ordered = [taken[c] for c in cells_list]
            at = np.array([c.index for c in ordered], dtype=np.uint32)
            row(size, f"unimem OffloadPool.store ({pool.route}) from Python",
                rate(lambda: pool.store(ptrs, at, stream=stream)), d2h)
            row(size, f"unimem OffloadPool.fetch ({pool.route}) from Python",
                rate(lambda: pool.fetch(at, ptrs, stream=stream)), h2d)
            for i in torch.randint(0, n, (16,), generator=generator).tolist():  # fetch put cell c into block b
                cell = torch.from_dlpack(ordered[i].view().as_cpu())
                if not torch.equal(gpu_kv[blocks_list[i]].cpu(), cell):
                    raise SystemExit(f"CHECK FAILED: unimem block {blocks_list[i]} differs from its cell")
            del taken, ordered, pool
        # The last fetch put cell cells[i] into block blocks[i]: check a sample.
        for i in torch.randint(0, n, (16,), generator=generator).tolist():
            if not torch.equal(gpu_kv[blocks_list[i]].cpu(), host_pool[cells_list[i]]):
                raise SystemExit(f"CHECK FAILED: block {blocks_list[i]} differs from cell {cells_list[i]}")

    print("\n| block | route | GB/s | x ceiling |\n|---|---|---|---|")
    for size, what, gbps, ratio in rows:
        print(f"| {size} | {what} | {gbps:.2f} | {ratio:.2f} |")


if __name__ == "__main__":
    main()
