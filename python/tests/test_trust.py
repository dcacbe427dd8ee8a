"""Bad input from Python never crashes, misreads or escapes as a foreign
exception: sizes that overflow, shapes that are not integers, index arrays in
another byte order, counts beyond a pool, indexes that reach outside their
model's folder, headers that are not UTF-8, the memlock limit of a normal
user, and dtypes the installed torch lacks. Each case names what it guards."""
import json
import os
import struct
import subprocess
import sys
import textwrap
import warnings

import numpy as np
import pytest

import unimem

try:
    import torch
except ImportError:
    torch = None


def run_python(code, **kwargs):
    """Runs `code` in a fresh interpreter that imports this unimem; returns the
    CompletedProcess (the caller checks its exit status)."""
    package = os.path.dirname(os.path.dirname(unimem.__file__))
    env = dict(os.environ, PYTHONPATH=package)
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True, env=env,
                          timeout=120, **kwargs)


# ---- sizes and shapes ----------------------------------------------------------

def test_a_view_whose_byte_count_overflows_is_refused():
    b = unimem.Block(4096)
    for shape in [(2**32, 2**32), (2**62, 4), (2**63 - 1,), (3, 2**62)]:
        with pytest.raises(unimem.InvalidArgument):
            b.view("uint8", shape)
    with pytest.raises(unimem.InvalidArgument):
        b.view("float64", (2**61, 1))  # 2^61 * 8 wraps to 0
    grid = unimem.Grid(4096, 2)
    cell = grid.take()
    with pytest.raises(unimem.InvalidArgument):
        cell.view("uint8", (2**32, 2**32))
    pool = unimem.OffloadPool(4096, 2, device=None)
    with pytest.raises(unimem.InvalidArgument):
        pool.take().view("uint8", (2**32, 2**32))
    # A zero dimension makes any other dimension harmless.
    assert b.view("uint8", (0, 2**62)).nbytes == 0
    assert np.asarray(b.view("uint8", (64, 64))).shape == (64, 64)


def test_shapes_are_integers_of_any_kind_and_nothing_else():
    tape = unimem.Tape(1 << 16)
    scalar = tape.take((), "float32")
    assert scalar.shape == () and np.asarray(scalar).shape == ()  # 0-d, as NumPy has it
    assert tape.take(np.int64(3), "float32").shape == (3,)
    assert tape.take((np.uint16(2), np.int32(4)), "float32").shape == (2, 4)
    b = unimem.Block(4096)
    assert b.view("float32", ()).shape == ()
    for bad in [(1.5,), ("4",), "4", (True, 2), (2**64,), (-1,), 2.0, {"a": 1}, (None,)]:
        with pytest.raises(unimem.InvalidArgument):
            tape.take(bad, "uint8")
        with pytest.raises(unimem.InvalidArgument):
            b.view("uint8", bad)
    assert tape.take(8).nbytes == 8  # the Tape still works


# ---- offload pool arguments ---------------------------------------------------

def test_offload_take_checks_n_before_allocating():
    pool = unimem.OffloadPool(4096, 4, device=None)
    for n in [2**62, 10**8, 5, -1, 2**64, 1.0, True]:
        with pytest.raises(unimem.InvalidArgument):
            pool.take(n)
    assert len(pool.take(4)) == 4 and pool.take(1) is None


def test_offload_index_lists_refuse_what_is_not_a_cell_index():
    pool = unimem.OffloadPool(4096, 4, device=None)
    for bad in [[-1], [2**32], [2**40], [1.0], ["1"], [None]]:
        with pytest.raises(unimem.InvalidArgument):
            pool.store([0x1000], bad)
        with pytest.raises(unimem.InvalidArgument):
            pool.fetch(bad, [0x1000])
    for bad in [[-1], [2**64], [1.5]]:
        with pytest.raises(unimem.InvalidArgument):
            pool.store(bad, [0])


def test_index_arrays_in_another_byte_order_are_refused_not_misread():
    pool = unimem.OffloadPool(4096, 300, device=None)
    other = ">" if sys.byteorder == "little" else "<"
    for dtype in ["u2", "u4", "i8", "u8"]:
        with pytest.raises(unimem.InvalidArgument, match="byte order"):
            pool.store(np.array([1], dtype="u8"), np.array([1], other + dtype))
        with pytest.raises(unimem.InvalidArgument, match="byte order"):
            pool.fetch(np.array([1], other + dtype), np.array([1], dtype="u8"))
    # Native order, spelt either way, still reads: cell 299 exists, 300 does not.
    native = "<" if sys.byteorder == "little" else ">"
    with pytest.raises(unimem.InvalidArgument, match="300"):
        pool.store([0x1000], np.array([300], native + "u2"))
    with pytest.raises(unimem.InvalidArgument, match="300"):
        pool.store([0x1000], np.array([300], "=u2"))


def test_attaching_a_block_that_is_no_pool_is_not_a_block():
    b = unimem.Block(1 << 16)
    with pytest.raises(unimem.NotABlock) as e:
        unimem.OffloadPool.attach(b.id, device=None)
    assert isinstance(e.value, ValueError) and e.value.code == "not_a_block"


def test_every_error_code_has_its_own_class():
    classes = {}
    for name in unimem._unimem._error_codes:
        cls = unimem._by_code[name]
        assert cls is not unimem.Error and issubclass(cls, unimem.Error), name
        classes[name] = cls
    assert set(classes) >= {"not_a_block", "unsupported", "cuda", "no_cuda_driver", "disconnected"}


# ---- files ----------------------------------------------------------------------

def test_a_header_that_is_not_utf8_is_bad_format_with_a_readable_message(tmp_path):
    header = b'{"w\xff\xfe":{"dtype":"U8","shape":[1],"data_offsets":[0,1]}}'
    path = tmp_path / "bad.safetensors"
    path.write_bytes(struct.pack("<Q", len(header)) + header + b"\0")
    with pytest.raises(unimem.BadFormat) as e:
        unimem.load_safetensors(str(path))
    str(e.value).encode("utf-8")  # a message a terminal can print


def index_of(folder, weight_map):
    path = folder / "model.safetensors.index.json"
    path.write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    return str(path)


def test_an_index_reaches_no_file_outside_its_folder(tmp_path, write_st):
    model = tmp_path / "model"
    model.mkdir()
    outside = write_st("outside.safetensors", {"w": ("U8", (1,), b"\x07")})
    for name in ["../outside.safetensors", outside, "sub/../../outside.safetensors", ".", ".."]:
        with pytest.raises(unimem.BadFormat, match="not a file name"):
            unimem.load_safetensors(index_of(model, {"w": name}))
        if unimem.gpu_available():
            with pytest.raises(unimem.BadFormat, match="not a file name"):
                unimem.load_safetensors(index_of(model, {"w": name}), device="cuda")


def test_a_tensor_the_index_names_but_its_shard_lacks_is_not_found(tmp_path):
    from conftest import write_safetensors
    write_safetensors(tmp_path / "a.safetensors", {"w": ("U8", (2,), b"\x01\x02")})
    with pytest.raises(unimem.NotFound, match="'v'"):
        unimem.load_safetensors(index_of(tmp_path, {"w": "a.safetensors", "v": "a.safetensors"}), output="numpy")
    out = unimem.load_safetensors(index_of(tmp_path, {"w": "a.safetensors"}), output="numpy")
    assert list(out) == ["w"] and out["w"].tolist() == [1, 2]


def test_a_malformed_or_missing_index_raises_unimem_errors(tmp_path):
    for text in ["{", "[]", '{"weight_map": 3}', '{"weight_map": {"w": 4}}', '{"weight_map": {}}', "\xff"]:
        path = tmp_path / "model.safetensors.index.json"
        path.write_text(text, encoding="latin-1")
        with pytest.raises(unimem.BadFormat):
            unimem.load_safetensors(str(path))
    with pytest.raises(unimem.NotFound):
        unimem.load_safetensors(str(tmp_path / "missing.safetensors.index.json"))


def test_progress_reports_one_total_from_the_first_call(write_st):
    big = np.arange(3 << 20, dtype=np.float32)
    path = write_st("m.safetensors", {"x": ("F32", big.shape, big.tobytes()),
                                      "y": ("U8", (5,), b"12345")})
    seen = []
    out = unimem.load_safetensors(path, progress=lambda done, total: seen.append((done, total)), output="numpy")
    assert np.array_equal(out["x"], big)
    assert seen and {total for _, total in seen} == {big.nbytes + 5}, seen[:3]
    assert [d for d, _ in seen] == sorted(d for d, _ in seen) and seen[-1][0] == big.nbytes + 5


# ---- dtypes the installed torch may lack -------------------------------------------

@pytest.mark.skipif(torch is None, reason="skipped: torch does not import here")
def test_bool_and_fp8_tensors_load_on_every_torch(write_st):
    path = write_st("m.safetensors", {"mask": ("BOOL", (4,), b"\x01\x00\x01\x01"),
                                      "f8": ("F8_E4M3", (2,), b"\x38\x40")})
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        out = unimem.load_safetensors(path)
    assert out["mask"].dtype == torch.bool and out["mask"].tolist() == [True, False, True, True]
    if hasattr(torch, "float8_e4m3fn"):
        assert out["f8"].dtype == torch.float8_e4m3fn
        assert out["f8"].view(torch.uint8).tolist() == [0x38, 0x40]
    else:  # torch without float8 types: the bytes, and a warning that says so
        assert out["f8"].dtype == torch.uint8 and out["f8"].tolist() == [0x38, 0x40]
        assert any("float8_e4m3fn" in str(w.message) for w in caught)


# ---- a normal user's memlock limit -------------------------------------------------

def as_nobody_with_8_mib():
    import resource
    resource.setrlimit(resource.RLIMIT_MEMLOCK, (8 << 20, 8 << 20))
    if os.geteuid() == 0:  # root's CAP_IPC_LOCK ignores the limit
        os.setgid(65534)
        os.setuid(65534)


def test_a_cpu_load_past_the_memlock_limit_falls_back_to_unpinned_pages():
    import shutil
    import tempfile
    from conftest import write_safetensors
    tmp_path = __import__("pathlib").Path(tempfile.mkdtemp(prefix="unimem-memlock-"))  # readable by nobody
    os.chmod(tmp_path, 0o755)
    try:
        check_fallback(tmp_path, write_safetensors)
    finally:
        shutil.rmtree(tmp_path)


def check_fallback(tmp_path, write_safetensors):
    data = np.arange(4 << 20, dtype=np.float32)  # 16 MiB: past the 8 MiB limit
    path = write_safetensors(tmp_path / "m.safetensors", {"w": ("F32", data.shape, data.tobytes())})
    os.chmod(path, 0o644)
    code = f"""
        import warnings, numpy as np, unimem
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            out = unimem.load_safetensors({path!r}, output="numpy")
        assert np.array_equal(out["w"], np.arange(4 << 20, dtype=np.float32))
        print("warned", [w.category.__name__ for w in caught], "RLIMIT_MEMLOCK" in str(caught[0].message))
        tape = unimem.Tape(64 << 20)  # the same default for every object
        print("tape", tape.take(16).nbytes)
        try:
            unimem.load_safetensors({path!r}, pinned=True, output="numpy")
        except unimem.OutOfMemory as e:
            print("insisted", e.code)
        print("unpinned", unimem.Block(64 << 20, pinned=False).pinned)
    """
    r = run_python(code, preexec_fn=as_nobody_with_8_mib, cwd="/")
    if "ModuleNotFoundError" in r.stderr or "Permission denied" in r.stderr:
        pytest.skip(f"skipped: the package is not readable by the unprivileged child ({r.stderr.strip()[-120:]})")
    assert r.returncode == 0, r.stdout + r.stderr
    lines = r.stdout.splitlines()
    assert lines[0] == "warned ['ResourceWarning'] True", r.stdout
    assert lines[1:] == ["tape 16", "insisted memlock_limit", "unpinned False"], r.stdout


# ---- exit --------------------------------------------------------------------------

def test_a_program_that_loads_exits_cleanly(write_st):
    tensors = {"w": ("F32", (256,), np.arange(256, dtype=np.float32).tobytes())}
    path = write_st("m.safetensors", tensors)
    device = "cuda" if unimem.gpu_available() else "cpu"
    for variant in ["kept", "deleted", "twice"]:
        code = f"""
            try:
                import torch
                if {device!r} == "cuda":
                    torch.empty(1, device="cuda")  # torch's CUDA context first, as a PyTorch program has it
            except ImportError:
                pass
            import unimem
            w = unimem.load_safetensors({path!r}, device={device!r})
            if {variant!r} == "deleted":
                del w
            elif {variant!r} == "twice":
                w = unimem.load_safetensors({path!r}, device={device!r})
            print("loaded")
        """
        r = run_python(code)
        assert r.returncode == 0 and r.stdout.strip() == "loaded", (variant, r.returncode, r.stderr[-2000:])


# ---- dropping a loaded file's pages from the page cache ----------------------


def _cached_and_droppable(path):
    """Reads `path` into the page cache; whether this file system drops its
    clean pages on POSIX_FADV_DONTNEED (tmpfs keeps them: nothing to test)."""
    with open(path, "rb") as f:
        os.fsync(f.fileno())
        while f.read(1 << 20):
            pass
    assert unimem.page_cache_fraction(path) > 0.9
    fd = os.open(path, os.O_RDONLY)
    try:
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)
    droppable = unimem.page_cache_fraction(path) < 0.5
    with open(path, "rb") as f:
        while f.read(1 << 20):
            pass
    return droppable


@pytest.mark.skipif(not hasattr(os, "posix_fadvise"), reason="skipped: no posix_fadvise here")
def test_drop_page_cache_leaves_the_loaded_file_out_of_the_page_cache(write_st):
    big = np.arange(1 << 20, dtype=np.float32) * 3
    path = write_st("m.safetensors", {"x": ("F32", big.shape, big.tobytes())})
    if not _cached_and_droppable(path):
        pytest.skip("skipped: this file system keeps clean pages on POSIX_FADV_DONTNEED (tmpfs)")
    assert unimem.page_cache_fraction(path) > 0.9
    kept = unimem.load_safetensors(path, output="numpy")
    assert unimem.page_cache_fraction(path) > 0.9, "without the option the pages stay"
    out = unimem.load_safetensors(path, output="numpy", drop_page_cache=True)
    assert np.array_equal(out["x"], big) and np.array_equal(kept["x"], big)
    assert unimem.page_cache_fraction(path) < 0.5
