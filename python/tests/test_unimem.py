"""The unimem Python package: every object, zero copy, lifetimes, DLPack
capsules of both versions, dtypes, load_safetensors on the CPU, errors."""
import ctypes
import gc
import os
import threading

import numpy as np
import pytest

import unimem

try:
    import torch
except ImportError:
    torch = None

needs_torch = pytest.mark.skipif(torch is None, reason="skipped: torch does not import here")


def capsule_name(capsule):
    get = ctypes.pythonapi.PyCapsule_GetName
    get.restype, get.argtypes = ctypes.c_char_p, [ctypes.py_object]
    return get(capsule).decode()


def address_of(array):
    return array.__array_interface__["data"][0]


# ---- Block -------------------------------------------------------------------

def test_block_is_one_piece_of_memory_for_every_view():
    b = unimem.Block(1 << 20)
    assert b.size == 1 << 20 and b.pinned and not b.gpu_visible and not b.read_only
    whole = np.asarray(b)
    assert whole.shape == (1 << 20,) and whole.dtype == np.uint8
    assert address_of(whole) == b.address
    f = np.from_dlpack(b.view("float32", (256, 4), offset=4096))  # read-only in NumPy < 2
    assert address_of(f) == b.address + 4096 and f.shape == (256, 4)
    f = np.asarray(b.view("float32", (256, 4), offset=4096))
    assert address_of(f) == b.address + 4096
    f[:] = 7.5
    assert np.frombuffer(memoryview(b)[4096:8192], dtype=np.float32).tolist() == [7.5] * 1024
    assert b.__dlpack_device__() == (1, 0)  # kDLCPU: host-only memory
    with pytest.raises(ValueError):
        b.view("float32", (1 << 20,))  # more than the Block holds
    with pytest.raises(ValueError):
        b.view("uint8", offset=(1 << 20) + 1)
    with pytest.raises(ValueError):
        b.view("complex64")


def test_a_block_attached_by_id_shares_its_pages():
    b = unimem.Block(1 << 16)
    assert b.id.startswith("unimem:")
    other = unimem.Block.attach(b.id)
    np.asarray(b)[:4] = [1, 2, 3, 4]
    assert np.asarray(other)[:4].tolist() == [1, 2, 3, 4]
    ro = unimem.Block.attach(b.id, read_only=True)
    assert ro.read_only and not np.asarray(ro).flags.writeable
    with pytest.raises(unimem.Error) as e:
        unimem.Block.attach("unimem:1:2:3")
    assert e.value.code in ("not_found", "permission_denied", "not_a_block")
    with pytest.raises(ValueError):
        unimem.Block.attach("not an id")


def test_map_file_is_read_only_and_says_so_to_dlpack(tmp_path):
    path = tmp_path / "data.bin"
    path.write_bytes(bytes(range(256)) * 16)
    m = unimem.Block.map_file(str(path))
    a = np.asarray(m)
    assert a.flags.writeable is False and a[:4].tolist() == [0, 1, 2, 3]
    with pytest.raises(BufferError):
        m.__dlpack__()  # a legacy capsule cannot say "read-only"
    cap = m.__dlpack__(max_version=(1, 0))
    assert capsule_name(cap) == "dltensor_versioned"
    with pytest.raises(FileNotFoundError):
        unimem.Block.map_file(str(tmp_path / "missing"))


def test_a_huge_or_zero_block_is_a_clear_error():
    with pytest.raises(ValueError):
        unimem.Block(0)
    with pytest.raises((MemoryError, ValueError)):
        unimem.Block(1 << 60)


@pytest.mark.skipif(unimem.gpu_available(), reason="a GPU is here")
def test_gpu_visibility_without_a_gpu_is_a_clear_error():
    with pytest.raises(unimem.Error) as e:
        unimem.Block(1 << 16, gpu=True)
    assert e.value.code in ("no_cuda_driver", "no_cuda_device")
    assert unimem.gpu_count() == 0 and unimem.gpu_unavailable_reason()


# ---- DLPack --------------------------------------------------------------------

class DLTensor(ctypes.Structure):
    _fields_ = [("data", ctypes.c_void_p), ("device_type", ctypes.c_int32), ("device_id", ctypes.c_int32),
                ("ndim", ctypes.c_int32), ("code", ctypes.c_uint8), ("bits", ctypes.c_uint8),
                ("lanes", ctypes.c_uint16), ("shape", ctypes.POINTER(ctypes.c_int64)),
                ("strides", ctypes.c_void_p), ("byte_offset", ctypes.c_uint64)]


class DLManagedTensorVersioned(ctypes.Structure):
    _fields_ = [("major", ctypes.c_uint32), ("minor", ctypes.c_uint32), ("manager_ctx", ctypes.c_void_p),
                ("deleter", ctypes.c_void_p), ("flags", ctypes.c_uint64), ("dl_tensor", DLTensor)]


def capsule_pointer(capsule, name):
    get = ctypes.pythonapi.PyCapsule_GetPointer
    get.restype, get.argtypes = ctypes.c_void_p, [ctypes.py_object, ctypes.c_char_p]
    return get(capsule, name.encode())


def test_dlpack_capsules_of_both_versions():
    t = unimem.Tape(1 << 16)
    v = t.take((3, 5), "bfloat16")
    legacy = v.__dlpack__()
    assert capsule_name(legacy) == "dltensor"
    assert capsule_name(v.__dlpack__(max_version=(0, 8))) == "dltensor"
    versioned = v.__dlpack__(max_version=(1, 1), stream=None)
    assert capsule_name(versioned) == "dltensor_versioned"
    m = DLManagedTensorVersioned.from_address(capsule_pointer(versioned, "dltensor_versioned"))
    assert (m.major, m.minor) == (1, 1) and m.flags == 0
    dl = m.dl_tensor
    assert dl.data == v.address and (dl.device_type, dl.device_id) == (1, 0)
    assert (dl.ndim, dl.code, dl.bits, dl.lanes) == (2, 4, 16, 1)  # kDLBfloat
    assert [dl.shape[0], dl.shape[1]] == [3, 5] and not dl.strides
    assert v.__dlpack_device__() == (1, 0)
    with pytest.raises(BufferError):
        v.__dlpack__(copy=True)
    with pytest.raises(BufferError):
        v.__dlpack__(dl_device=(2, 0))
    assert capsule_name(v.__dlpack__(dl_device=(1, 0), copy=False)) == "dltensor"
    assert v.as_cpu().__dlpack_device__() == (1, 0) and v.as_cpu().address == v.address


def test_an_unconsumed_capsule_keeps_the_memory_until_it_goes():
    b = unimem.Block(1 << 16)
    block_id = b.id
    cap = b.__dlpack__(max_version=(1, 0))
    del b
    gc.collect()
    unimem.Block.attach(block_id)  # still there: the capsule owns a reference
    del cap
    gc.collect()
    with pytest.raises(unimem.Error):
        unimem.Block.attach(block_id)


# ---- lifetimes -----------------------------------------------------------------

def test_arrays_outlive_the_objects_they_came_from():
    t = unimem.Tape(1 << 20)
    a = np.asarray(t.take(1000, "float64"))
    b = np.asarray(unimem.Block(1 << 16))
    g = unimem.Grid(4096, 2)
    c = np.asarray(g.take().view("int32"))
    del t, g
    gc.collect()
    a[:] = 1.5
    b[:] = 3
    c[:] = -1
    assert a.sum() == 1500 and int(b.sum()) == 3 << 16 and int(c.sum()) == -1024


# ---- Tape ------------------------------------------------------------------------

def test_tape_takes_aligned_views_and_clears():
    t = unimem.Tape(1 << 16)
    v = t.take((4, 4), "float32", align=256)
    assert v.address % 256 == 0 and v.shape == (4, 4) and v.dtype == "float32" and v.nbytes == 64
    assert t.used >= 64 and t.free == t.total - t.used
    w = t.take(10)
    assert w.dtype == "uint8" and w.shape == (10,)
    assert not (v.address <= w.address < v.address + v.nbytes)
    t.clear()
    assert t.used == 0
    assert t.take(8).address == t.address
    with pytest.raises(MemoryError) as e:
        t.take(t.total - 8)
        t.take(64)
    assert e.value.code == "out_of_memory"
    with pytest.raises(ValueError):
        t.take(8, align=3)
    with pytest.raises(ValueError):
        t.take(0)
    with pytest.raises(ValueError):
        t.take((2, -1))
    with pytest.raises(ValueError):
        t.take((1 << 62, 1 << 62), "float64")


# ---- Grid ------------------------------------------------------------------------

def test_grid_cells_come_back_when_given_and_their_arrays_are_gone():
    g = unimem.Grid(4096, 4)
    assert (g.cell_size, g.cells) == (4096, 4)
    cells = [g.take() for _ in range(4)]
    assert len({c.index for c in cells}) == 4 and g.take() is None
    array = np.from_dlpack(cells[0])
    g.give(cells[0])
    assert cells[0].given
    assert g.take() is None, "the cell came back while an array still used it"
    del array
    gc.collect()
    again = g.take()
    assert again is not None
    cells[1].give()
    assert g.take() is not None
    with pytest.raises(unimem.Error):
        cells[1].give()  # twice
    other = unimem.Grid(4096, 1)
    with pytest.raises(ValueError):
        other.give(cells[2])  # a cell of another Grid
    with pytest.raises(ValueError):
        unimem.Grid(100, 4)  # cells must be 64-byte multiples


# ---- OffloadPool (host side; the moves run in test_cuda.py) ----------------------

def test_offload_pool_takes_all_or_nothing_and_shares_cells_between_mappings():
    pool = unimem.OffloadPool(16384, 6, device=None)  # a cache server without a GPU
    assert (pool.block_bytes, pool.blocks, pool.device) == (16384, 6, None)
    four = pool.take(4)
    assert len({c.index for c in four}) == 4
    assert pool.take(3) is None, "only 2 are free: all or nothing"
    other = unimem.OffloadPool.attach(pool.id, device=None)  # as another process would
    two = other.take(2)
    assert {c.index for c in two}.isdisjoint({c.index for c in four})
    assert pool.take() is None and other.take() is None
    np.asarray(four[0].view("uint32"))[:] = 7  # the same pages in both mappings
    first = four[0].index
    array = np.from_dlpack(four[0])
    pool.give(four[0])
    assert four[0].given and other.take() is None, "the cell came back while an array still used it"
    del array
    gc.collect()
    again = other.take()
    assert again is not None and again.index == first
    assert np.all(np.asarray(again.view("uint32")) == 7)
    with pytest.raises(ValueError):
        pool.give(again)  # a cell of the other mapping's pool object
    with pytest.raises(ValueError):
        pool.take(7)  # more than the pool has
    with pytest.raises(ValueError):
        unimem.OffloadPool(100, 4, device=None)  # blocks must be 64-byte multiples
    with pytest.raises(ValueError):
        unimem.OffloadPool(16384, 4, device=None, route="fastest")


def test_offload_pool_without_a_device_refuses_moves_and_names_why():
    pool = unimem.OffloadPool(4096, 2, device=None)
    cells = pool.take(2)
    with pytest.raises(ValueError, match="device"):
        pool.store([0x1000, 0x2000], cells)
    with pytest.raises(ValueError):
        pool.fetch([cells[0], 99], [0x1000, 0x2000])  # index 99 is not a cell of this pool
    with pytest.raises(ValueError, match="integers"):
        pool.store(np.array([4096.0, 8192.0]), cells)  # addresses as floats
    with pytest.raises(ValueError, match="negative"):
        pool.store(np.array([0x1000, 0x2000], dtype=np.uint64), np.array([0, -1]))
    with pytest.raises(ValueError, match="device"):  # arrays pass the argument checks; no device here
        pool.store(np.array([0x1000, 0x2000], dtype=np.uint64), np.array([c.index for c in cells], dtype=np.int32))


# ---- Layout ----------------------------------------------------------------------

def test_layout_clears_per_pass_and_per_talk():
    layout = unimem.Layout(1 << 20, 1 << 16, 1 << 16)
    w = layout.weights.take(1024)
    layout.scratch.take(1024)
    layout.history.take(1024)
    layout.clear_pass()
    assert layout.scratch.used == 0 and layout.history.used > 0 and layout.weights.used > 0
    layout.clear_talk()
    assert layout.history.used == 0 and layout.weights.used > 0
    assert "weights" in layout.stat()
    tape = layout.weights
    del layout
    gc.collect()
    np.asarray(w)[:] = 1  # the Layout lives while its tapes and views do
    assert tape.used > 0


# ---- dtypes ----------------------------------------------------------------------

NUMPY_DTYPES = ["bool", "uint8", "int8", "int16", "uint16", "float16", "int32", "uint32", "float32", "int64",
                "uint64", "float64"]


@pytest.mark.parametrize("dtype", NUMPY_DTYPES)
def test_every_dtype_reaches_numpy(dtype):
    t = unimem.Tape(1 << 12)
    v = t.take((2, 3), dtype)
    b = np.asarray(v)  # the buffer protocol
    assert b.dtype == np.dtype(dtype) and b.shape == (2, 3) and address_of(b) == v.address
    try:
        a = np.from_dlpack(v)
    except RuntimeError as e:  # DLPack's bool code (0.8) is newer than NumPy 1.24
        assert dtype == "bool", e
        return
    assert a.dtype == np.dtype(dtype) and a.shape == (2, 3) and address_of(a) == v.address


@needs_torch
@pytest.mark.parametrize("dtype", ["bool", "uint8", "int8", "int16", "float16", "bfloat16", "int32", "float32",
                                   "int64", "float64", "uint16", "uint32", "uint64", "float8_e4m3fn",
                                   "float8_e5m2"])
def test_every_dtype_reaches_torch(dtype):
    if not hasattr(torch, dtype):
        pytest.skip(f"skipped: torch {torch.__version__} has no {dtype}")
    t = unimem.Tape(1 << 12)
    v = t.take((2, 3), dtype)
    if dtype.startswith("float8"):
        x = torch.from_dlpack(v.view_as("uint8")).view(getattr(torch, dtype))
    else:
        try:
            x = torch.from_dlpack(v)
        except RuntimeError as e:
            pytest.skip(f"skipped: torch {torch.__version__} does not import {dtype} by DLPack ({e})")
    assert x.dtype == getattr(torch, dtype) and tuple(x.shape) == (2, 3) and x.data_ptr() == v.address


# ---- load_safetensors on the CPU -------------------------------------------------

def model_tensors(seed=1):
    rng = np.random.default_rng(seed)
    f32 = rng.standard_normal((64, 33)).astype(np.float32)
    i64 = np.arange(17, dtype=np.int64)
    bf16 = (rng.standard_normal((5, 7)).astype(np.float32).view(np.uint32) >> 16).astype(np.uint16)
    return {"w": ("F32", f32.shape, f32.tobytes()), "ids": ("I64", i64.shape, i64.tobytes()),
            "b": ("BF16", bf16.shape, bf16.tobytes()), "empty": ("F16", (0, 4), b"")}, f32, i64, bf16


def test_load_safetensors_on_the_cpu_as_numpy(write_st):
    tensors, f32, i64, bf16 = model_tensors()
    path = write_st("m.safetensors", tensors)
    out = unimem.load_safetensors(path, output="numpy")
    assert set(out) == {"w", "ids", "b", "empty"}
    assert np.array_equal(out["w"], f32) and np.array_equal(out["ids"], i64)
    assert isinstance(out["b"], unimem.View) and out["b"].dtype == "bfloat16"  # NumPy has no bfloat16
    assert np.array_equal(np.asarray(out["b"]), bf16)  # its raw bits through the buffer protocol
    assert out["empty"].shape == (0, 4)
    views = unimem.load_safetensors(path, output="view")
    assert views["w"].address % 64 == 0 and views["w"].__dlpack_device__() == (1, 0)


@needs_torch
def test_load_safetensors_on_the_cpu_as_torch(write_st):
    tensors, f32, i64, bf16 = model_tensors()
    path = write_st("m.safetensors", tensors)
    out = unimem.load_safetensors(path)  # torch by default where it imports
    assert torch.equal(out["w"], torch.from_numpy(f32)) and torch.equal(out["ids"], torch.from_numpy(i64))
    assert out["b"].dtype == torch.bfloat16
    assert torch.equal(out["b"].view(torch.int16), torch.from_numpy(bf16.view(np.int16)))


def test_load_safetensors_of_a_sharded_model(write_st, tmp_path):
    tensors, f32, i64, _ = model_tensors()
    write_st("a.safetensors", {"w": tensors["w"], "extra": tensors["ids"]})
    write_st("b.safetensors", {"ids": tensors["ids"]})
    index = tmp_path / "model.safetensors.index.json"
    index.write_text('{"weight_map": {"w": "a.safetensors", "ids": "b.safetensors"}}')
    out = unimem.load_safetensors(str(index), output="numpy")
    assert set(out) == {"w", "ids"}, "only what the index names"
    assert np.array_equal(out["w"], f32) and np.array_equal(out["ids"], i64)
    with pytest.raises(unimem.BadFormat):
        unimem.load_safetensors([str(tmp_path / "a.safetensors"), str(tmp_path / "a.safetensors")])


def transparent_huge_pages():
    """The THP policy for private memory ("always", "madvise", "never"), or None."""
    try:
        with open("/sys/kernel/mm/transparent_hugepage/enabled") as f:
            text = f.read()
    except OSError:
        return None
    return text[text.index("[") + 1:text.index("]")] if "[" in text else None


def free_memory_returns_to_host():
    """A virtio balloon that reports free pages (feature bit 5) to a VM host."""
    root = "/sys/bus/virtio/devices"
    for name in os.listdir(root) if os.path.isdir(root) else []:
        try:
            with open(f"{root}/{name}/device") as d, open(f"{root}/{name}/features") as f:
                if d.read().strip() == "0x0005" and f.read().strip()[5:6] == "1":
                    return True
        except OSError:
            pass
    return False


def smaps_entry(address):
    """The /proc/self/smaps fields of the mapping that holds `address`."""
    fields, inside = {}, False
    with open("/proc/self/smaps") as f:
        for line in f:
            head = line.split()[0]
            if "-" in head and not head.endswith(":"):  # a mapping's first line: start-end perms ...
                start, end = (int(x, 16) for x in head.split("-"))
                if inside:
                    break
                inside = start <= address < end
            elif inside:
                name, _, value = line.partition(":")
                fields[name] = value.strip()
    assert fields, f"no mapping holds {address:#x}"
    return fields


@pytest.mark.parametrize("pinned", [None, False])
def test_load_safetensors_on_the_cpu_takes_huge_pages_where_they_pay_off(write_st, pinned):
    # The load writes every page of fresh memory, and 2 MiB faults back it
    # faster (GPU machine: 59 ms against 74-78 for 1 GiB), except in a VM
    # whose host takes free 2 MiB blocks back (dev machine: 3.6x slower).
    # docs/BENCHMARKS.md, "CPU loads by page size".
    policy = transparent_huge_pages()
    expect_huge = policy in ("always", "madvise") and not free_memory_returns_to_host()
    x = np.random.default_rng(7).integers(0, 1 << 31, size=3 << 20, dtype=np.int32)  # 12 MiB
    path = write_st("big.safetensors", {"x": ("I32", x.shape, x.tobytes())})
    out = unimem.load_safetensors(path, output="view", pinned=pinned)
    flags = smaps_entry(out["x"].address)["VmFlags"].split()
    assert ("hg" in flags) == expect_huge, (f"THP {policy!r}, free memory returns to a host: "
                                            f"{free_memory_returns_to_host()}; VmFlags {flags}")
    assert np.array_equal(np.asarray(out["x"]), x)


def test_load_safetensors_reports_progress_and_releases_the_gil(write_st):
    big = np.arange(4 << 20, dtype=np.float32)  # 16 MiB: read by the I/O path, not the small-read one
    path = write_st("big.safetensors", {"x": ("F32", big.shape, big.tobytes())})
    seen = []
    ticks = []
    stop = threading.Event()

    def tick():
        while not stop.is_set():
            ticks.append(1)
            stop.wait(0.0005)
    ticker = threading.Thread(target=tick)
    ticker.start()
    try:
        out = unimem.load_safetensors(path, progress=lambda done, total: seen.append((done, total)),
                                      output="numpy")
    finally:
        stop.set()
        ticker.join()
    assert np.array_equal(out["x"], big)
    assert seen and seen[-1][0] == seen[-1][1] == big.nbytes
    assert all(a[0] <= b[0] for a, b in zip(seen, seen[1:]))


def test_load_safetensors_errors(write_st, tmp_path):
    with pytest.raises(FileNotFoundError) as e:
        unimem.load_safetensors(str(tmp_path / "missing.safetensors"))
    assert isinstance(e.value, unimem.Error) and e.value.code == "not_found"
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json at all}")
    with pytest.raises(ValueError) as e:
        unimem.load_safetensors(str(bad))
    assert e.value.code == "bad_format"
    tensors, *_ = model_tensors()
    path = write_st("m.safetensors", tensors)
    with pytest.raises(ValueError):
        unimem.load_safetensors(path, device="tpu")
    with pytest.raises(ValueError):
        unimem.load_safetensors(path, dtype="float16")  # conversion runs on the GPU
    with pytest.raises(ValueError):
        unimem.load_safetensors(path, output="pandas")
    with pytest.raises(IsADirectoryError if False else ValueError):
        unimem.load_safetensors(str(tmp_path))  # a directory is not a regular file


@pytest.mark.skipif(os.geteuid() == 0, reason="skipped: root reads every file")
def test_an_unreadable_file_is_a_permission_error(write_st):
    tensors, *_ = model_tensors()
    path = write_st("m.safetensors", tensors)
    os.chmod(path, 0)
    with pytest.raises(PermissionError):
        unimem.load_safetensors(path)


def test_a_memlock_refusal_is_a_memory_error():
    """Pinning beyond RLIMIT_MEMLOCK, in a child with a 1 MiB limit (as nobody
    when run as root: root's CAP_IPC_LOCK ignores the limit)."""
    import resource
    import subprocess
    import sys

    def limit():
        resource.setrlimit(resource.RLIMIT_MEMLOCK, (1 << 20, 1 << 20))
        if os.geteuid() == 0:
            os.setgid(65534)
            os.setuid(65534)
    code = ("import unimem\n"
            "try:\n    unimem.Block(64 << 20, pinned=True)\n"
            "except MemoryError as e:\n    print(type(e).__name__, e.code, isinstance(e, unimem.Error))\n")
    package = os.path.dirname(os.path.dirname(unimem.__file__))
    try:
        r = subprocess.run([sys.executable, "-c", code], preexec_fn=limit, capture_output=True, text=True, cwd="/",
                           env=dict(os.environ, PYTHONPATH=package))
    except PermissionError as e:  # the interpreter itself lies where nobody may not go (/root/.pyenv)
        pytest.skip(f"skipped: the unprivileged child cannot run {sys.executable} ({e})")
    if "ModuleNotFoundError" in r.stderr or "Permission denied" in r.stderr:
        pytest.skip(f"skipped: the package is not readable by the unprivileged child ({r.stderr.strip()[-120:]})")
    assert r.returncode == 0, r.stderr
    assert r.stdout.split() == ["OutOfMemory", "memlock_limit", "True"], r.stdout + r.stderr


def test_error_classes_map_to_builtin_exceptions():
    assert issubclass(unimem.OutOfMemory, MemoryError)
    assert issubclass(unimem.NotFound, FileNotFoundError)
    assert issubclass(unimem.PermissionDenied, PermissionError)
    assert issubclass(unimem.InvalidArgument, ValueError)
    assert issubclass(unimem.OSFailure, OSError)
    assert all(issubclass(c, unimem.Error) for c in (unimem.OutOfMemory, unimem.NotFound, unimem.BadFormat))
