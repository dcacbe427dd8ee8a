"""unimem with CUDA and PyTorch: run for real on the GPU machine, skipped
(with "skipped: no CUDA device") elsewhere."""
import gc

import numpy as np
import pytest

import unimem

torch = pytest.importorskip("torch", reason="skipped: torch does not import here")
pytestmark = pytest.mark.skipif(not (unimem.gpu_available() and torch.cuda.is_available()),
                                reason="skipped: no CUDA device")


def mixed_model(path):
    """A real mix of dtypes and shapes, written by the safetensors package."""
    st = pytest.importorskip("safetensors.torch", reason="skipped: the safetensors package is not installed")
    g = torch.Generator().manual_seed(3)
    tensors = {
        "embed": torch.randn(1000, 64, generator=g).to(torch.bfloat16),
        "q": torch.randn(64, 64, generator=g).to(torch.float16),
        "norm": torch.randn(64, generator=g),
        "ids": torch.arange(77, dtype=torch.int64),
        "mask": torch.rand(3, 5, generator=g) > 0.5,
        "small": torch.randint(-100, 100, (9,), dtype=torch.int8, generator=g),
        "scalar": torch.tensor(2.5, dtype=torch.float64),
        "empty": torch.zeros(0, 8),
    }
    if hasattr(torch, "float8_e4m3fn"):
        tensors["fp8"] = torch.randn(16, 16, generator=g).to(torch.float8_e4m3fn)
    st.save_file(tensors, str(path))
    return st, tensors


def same(a, b):
    if a.dtype in (getattr(torch, "float8_e4m3fn", None), getattr(torch, "float8_e5m2", None)):
        a, b = a.view(torch.uint8), b.view(torch.uint8)
    return a.dtype == b.dtype and a.shape == b.shape and torch.equal(a, b)


def test_load_safetensors_to_cuda_equals_the_safetensors_package(tmp_path):
    path = tmp_path / "m.safetensors"
    st, tensors = mixed_model(path)
    theirs = st.load_file(str(path), device="cuda")
    for device in ("cuda", "cuda:0", 0):
        ours = unimem.load_safetensors(str(path), device=device)
        assert set(ours) == set(theirs)
        for name in theirs:
            assert ours[name].device.type == "cuda", name
            assert same(ours[name], theirs[name]), name
            assert ours[name].data_ptr() % 256 == 0
    # A kernel (a torch op) sees what the loader wrote.
    ours = unimem.load_safetensors(str(path), device="cuda")
    assert torch.equal((ours["norm"] * 2).sum(), (theirs["norm"] * 2).sum())
    assert torch.equal(ours["embed"].float() @ ours["q"].float(), theirs["embed"].float() @ theirs["q"].float())


def test_load_safetensors_converts_dtypes_on_the_gpu(tmp_path):
    path = tmp_path / "m.safetensors"
    st, tensors = mixed_model(path)
    theirs = st.load_file(str(path), device="cuda")
    ours = unimem.load_safetensors(str(path), device="cuda", dtype="float32")
    for name in ("embed", "q", "norm"):
        assert ours[name].dtype == torch.float32
        assert torch.equal(ours[name], theirs[name].float()), name
    assert ours["ids"].dtype == torch.int64, "integers stay as stored"
    half = unimem.load_safetensors(str(path), device="cuda", dtype="bfloat16")
    assert torch.equal(half["norm"], theirs["norm"].to(torch.bfloat16))


def test_a_sharded_model_to_cuda(tmp_path):
    st = pytest.importorskip("safetensors.torch", reason="skipped: the safetensors package is not installed")
    a = {"a.w": torch.randn(33, 7), "a.b": torch.randn(7)}
    b = {"b.w": torch.randn(5, 5).to(torch.bfloat16)}
    st.save_file(a, str(tmp_path / "model-1.safetensors"))
    st.save_file(b, str(tmp_path / "model-2.safetensors"))
    index = tmp_path / "model.safetensors.index.json"
    index.write_text('{"weight_map": {"a.w": "model-1.safetensors", "a.b": "model-1.safetensors", '
                     '"b.w": "model-2.safetensors"}}')
    ours = unimem.load_safetensors(str(index), device="cuda")
    assert set(ours) == {"a.w", "a.b", "b.w"}
    for name, t in {**a, **b}.items():
        assert torch.equal(ours[name].cpu(), t), name


def test_a_gpu_visible_view_is_a_pinned_tensor_at_the_same_address():
    tape = unimem.Tape(1 << 20, gpu=True)
    v = tape.take((1024,), "float32")
    assert v.__dlpack_device__() == (3, 0)  # kDLCUDAHost
    try:
        torch.from_dlpack(v)
    except BufferError as e:  # torch 2.11 imports no kDLCUDAHost tensor
        print(f"torch {torch.__version__}: from_dlpack of a kDLCUDAHost view: {e}")
    x = torch.from_dlpack(v.as_cpu())  # the same memory as kDLCPU
    assert x.device.type == "cpu" and x.data_ptr() == v.address and x.is_pinned()
    x[:] = 3
    y = x.to("cuda", non_blocking=True)
    torch.cuda.synchronize()
    assert y.sum().item() == 3072
    block = unimem.Block(1 << 16, gpu=True)
    z = torch.from_dlpack(block.view("int32").as_cpu())
    assert z.is_pinned() and z.data_ptr() == block.address
    later = unimem.Block(1 << 16)
    assert later.__dlpack_device__() == (1, 0)
    np_view = np.asarray(later)
    np_view[:4] = [9, 8, 7, 6]
    later.make_gpu_visible()  # the same pages, registered in place
    assert later.gpu_visible and later.__dlpack_device__() == (3, 0)
    w = torch.from_dlpack(later.view("uint8").as_cpu())
    assert w.is_pinned() and w[:4].tolist() == [9, 8, 7, 6]
    assert w.cuda()[:4].tolist() == [9, 8, 7, 6]


def test_device_memory_is_freed_when_the_last_tensor_goes(tmp_path):
    st = pytest.importorskip("safetensors.torch", reason="skipped: the safetensors package is not installed")
    path = tmp_path / "big.safetensors"
    st.save_file({"x": torch.ones(16 << 20), "y": torch.ones(16)}, str(path))  # 64 MiB
    torch.cuda.synchronize()
    unimem.load_safetensors(str(path), device="cuda")  # the loader and its staging exist from here on
    gc.collect()
    before = torch.cuda.mem_get_info()[0]
    out = unimem.load_safetensors(str(path), device="cuda")
    during = torch.cuda.mem_get_info()[0]
    assert before - during >= 64 << 20
    keep = out["y"]
    del out
    gc.collect()
    assert torch.cuda.mem_get_info()[0] <= during + (2 << 20), "freed while a tensor still used it"
    assert keep.sum().item() == 16
    del keep
    gc.collect()
    after = torch.cuda.mem_get_info()[0]
    assert abs(after - before) <= 2 << 20, f"{(before - after) >> 20} MiB of device memory leaked"


@pytest.mark.skipif(unimem.gpu_count() < 2, reason="skipped: fewer than 2 CUDA devices")
def test_two_gpus_split_and_replicated(tmp_path):
    st = pytest.importorskip("safetensors.torch", reason="skipped: the safetensors package is not installed")
    w = torch.randn(64, 30)
    st.save_file({"w": w, "bias": torch.randn(30)}, str(tmp_path / "m.safetensors"))
    rule = lambda name, dtype, shape: "columns" if name == "w" else "replicate"  # noqa: E731
    parts = unimem.load_safetensors(str(tmp_path / "m.safetensors"), device=["cuda:0", "cuda:1"], split=rule)
    assert [p["w"].device.index for p in parts] == [0, 1]
    assert torch.equal(torch.cat([parts[0]["w"].cpu(), parts[1]["w"].cpu()], dim=1), w)
    assert torch.equal(parts[1]["bias"].cpu(), parts[0]["bias"].cpu())
    # A cut that does not divide is refused (tensor parallelism needs equal parts).
    st.save_file({"odd": torch.randn(4, 31)}, str(tmp_path / "odd.safetensors"))
    with pytest.raises(ValueError, match="not a multiple of 2"):
        unimem.load_safetensors(str(tmp_path / "odd.safetensors"), device=["cuda:0", "cuda:1"], split="columns")


def test_offload_pool_moves_torch_kv_blocks_both_ways_byte_exact():
    block = 64 << 10
    g = torch.Generator().manual_seed(15)
    kv = torch.randint(1, 255, (32, block), dtype=torch.uint8, generator=g).cuda()  # never zeros
    back = torch.zeros_like(kv)
    for route in ("kernel", "copies", "automatic"):
        pool = unimem.OffloadPool(block, 16, device=0, route=route)
        assert pool.route in ("kernel", "copies")
        cells = pool.take(12)
        picked = torch.randperm(32, generator=g)[:12].tolist()
        stream = torch.cuda.current_stream().cuda_stream
        t = pool.store([kv[i].data_ptr() for i in picked], cells, stream=stream)
        assert (t.blocks, t.bytes) == (12, 12 * block)
        t.wait()
        assert t.ready()
        for i, c in zip(picked, cells):  # the CPU sees the cells in place
            assert np.array_equal(np.from_dlpack(c.view().as_cpu()), kv[i].cpu().numpy())
        back.zero_()
        if route == "automatic":  # arrays instead of lists: the path without per-item Python work
            at = np.array([back[i].data_ptr() for i in picked], dtype=np.uint64)
            pool.fetch(np.array([c.index for c in cells], dtype=np.uint32), at, stream=stream).wait()
        else:
            pool.fetch(cells, [back[i].data_ptr() for i in picked], stream=stream).wait()
        assert torch.equal(back[picked], kv[picked])
        with pytest.raises(ValueError):
            pool.store([kv[0].data_ptr() + 1], cells[:1])  # not 16-byte aligned: nothing moves



def test_progress_and_drop_page_cache_on_cuda(tmp_path):
    """Progress reports from the loader's threads, one total, the last equal
    to it; drop_page_cache leaves the file out of the page cache (where the
    file system drops pages) and nothing registered to reload from."""
    import os
    path = tmp_path / "m.safetensors"
    st = pytest.importorskip("safetensors.torch", reason="skipped: the safetensors package is not installed")
    g = torch.Generator().manual_seed(5)
    tensors = {f"w{i}": torch.randn(1024, 1024, generator=g) for i in range(96)}  # 384 MiB: staged by the workers
    st.save_file(tensors, str(path))
    with open(path, "rb") as f:
        os.fsync(f.fileno())
        while f.read(64 << 20):
            pass
    seen = []
    out = unimem.load_safetensors(str(path), device="cuda", progress=lambda d, t: seen.append((d, t)))
    total = sum(t.numel() * t.element_size() for t in tensors.values())
    assert {t for _, t in seen} == {total} and seen[-1][0] == total, seen[-3:]
    assert len(seen) >= 3, "reports as the load goes, not only at the end"
    assert [d for d, _ in seen] == sorted(d for d, _ in seen)
    assert all(torch.equal(out[n].cpu(), tensors[n]) for n in tensors)
    del out
    # Whether this file system drops clean pages at all (tmpfs keeps them).
    fd = os.open(str(path), os.O_RDONLY)
    os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    droppable = unimem.page_cache_fraction(str(path)) < 0.5
    while os.read(fd, 64 << 20):
        pass
    os.close(fd)
    out = unimem.load_safetensors(str(path), device="cuda")  # a second load: registers, as kept Loaders do
    out = unimem.load_safetensors(str(path), device="cuda", drop_page_cache=True)
    assert all(torch.equal(out[n].cpu(), tensors[n]) for n in tensors)
    if droppable:
        fraction = unimem.page_cache_fraction(str(path))
        assert fraction < 0.5, f"{fraction:.2f} of the file still cached (its registration kept?)"
