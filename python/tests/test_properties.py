"""Property-based tests of the Python API (Hypothesis): random shapes, dtypes,
offsets, alignments and DLPack exports. Every call either raises a
unimem.Error subclass or returns a view lying wholly inside its memory
(checked by address), and the object stays usable afterwards."""
import numpy as np
import pytest

import unimem

hypothesis = pytest.importorskip("hypothesis", reason="skipped: hypothesis is not installed")
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

DTYPES = ["bool", "uint8", "int8", "float8_e5m2", "float8_e4m3fn", "int16", "uint16", "float16", "bfloat16",
          "int32", "uint32", "float32", "int64", "uint64", "float64"]
WIDTH = {"bool": 1, "uint8": 1, "int8": 1, "float8_e5m2": 1, "float8_e4m3fn": 1, "int16": 2, "uint16": 2,
         "float16": 2, "bfloat16": 2, "int32": 4, "uint32": 4, "float32": 4, "int64": 8, "uint64": 8, "float64": 8}

# Dimensions from small to far past 64 bits, so that products overflow.
dimension = st.one_of(st.integers(0, 64), st.integers(0, 2**20), st.integers(0, 2**64 + 5), st.integers(-3, -1))
shapes = st.one_of(st.none(), dimension, st.lists(dimension, max_size=6).map(tuple))
PROPERTY = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])

TAPE = unimem.Tape(1 << 16, pinned=False)
BLOCK = unimem.Block(1 << 16, pinned=False)


def expected_bytes(shape, dtype):
    if shape is None:
        return None
    n = WIDTH[dtype]
    for d in (shape if isinstance(shape, tuple) else (shape,)):
        n *= d
    return n


def check_inside(view, base, size, dtype):
    assert view.dtype == dtype
    assert base <= view.address and view.address + view.nbytes <= base + size
    n = WIDTH[dtype]
    for d in view.shape:
        assert d >= 0
        n *= d
    assert n == view.nbytes
    if dtype not in ("bfloat16", "float8_e5m2", "float8_e4m3fn", "bool"):  # NumPy has no such dtype (or DLPack bool)
        a = np.from_dlpack(view)
        assert a.shape == tuple(view.shape) and a.nbytes == view.nbytes
        if a.nbytes:
            assert a.__array_interface__["data"][0] == view.address
        m = memoryview(view)
        assert m.nbytes == view.nbytes


@PROPERTY
@given(shape=shapes, dtype=st.sampled_from(DTYPES), align=st.one_of(st.sampled_from([1, 2, 64, 4096]),
                                                                        st.integers(0, 5000)))
def test_tape_take_returns_memory_inside_the_tape_or_raises(shape, dtype, align):
    TAPE.clear()
    try:
        view = TAPE.take(shape, dtype, align)
    except unimem.Error:
        pass
    else:
        assert view.address % align == 0
        want = expected_bytes(shape, dtype)
        assert want is not None and view.nbytes == want
        check_inside(view, TAPE.address, TAPE.total, dtype)
    TAPE.clear()
    assert TAPE.take(16).nbytes == 16  # still usable


@PROPERTY
@given(shape=shapes, dtype=st.sampled_from(DTYPES), offset=st.one_of(st.integers(0, 1 << 16),
                                                                         st.integers(0, 2**64 - 1)))
def test_block_view_lies_inside_the_block_or_raises(shape, dtype, offset):
    try:
        view = BLOCK.view(dtype, shape, offset)
    except (unimem.Error, OverflowError, TypeError) as e:
        # A Python int beyond size_t for `offset` is refused by the binding itself.
        assert isinstance(e, unimem.Error) or offset >= 2**63
    else:
        assert view.address == BLOCK.address + offset
        check_inside(view, BLOCK.address, BLOCK.size, dtype)
    assert BLOCK.view("uint8", (8,)).nbytes == 8


@PROPERTY
@given(shape=shapes, dtype=st.sampled_from(DTYPES), offload=st.booleans())
def test_cell_views_lie_inside_their_cell_or_raise(shape, dtype, offload):
    # A pool per example: a failing example's traceback keeps its arrays,
    # and with them its cell, out of the pool.
    pool = unimem.OffloadPool(4096, 2, device=None) if offload else unimem.Grid(4096, 2, pinned=False)
    cell = pool.take()
    assert cell is not None
    try:
        view = cell.view(dtype, shape)
    except unimem.Error:
        pass
    else:
        check_inside(view, cell.address, cell.size, dtype)
    cell.give()
    assert pool.take() is not None  # still usable


@PROPERTY
@given(shape=st.lists(st.integers(0, 16), max_size=4).map(tuple), dtype=st.sampled_from(DTYPES),
       max_version=st.sampled_from([None, (0, 8), (1, 0), (1, 1)]))
def test_dlpack_capsules_describe_the_view(shape, dtype, max_version):
    TAPE.clear()
    try:
        view = TAPE.take(shape, dtype)
    except unimem.Error:
        return  # a zero-byte take
    capsule = view.__dlpack__(max_version=max_version)
    assert capsule is not None
    if dtype in ("uint8", "int32", "float64", "float32"):
        a = np.from_dlpack(view)
        assert a.shape == shape and a.__array_interface__["data"][0] == view.address
