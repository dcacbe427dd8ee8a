"""Remote pools from Python (unimem.RemotePool, OffloadPool.export): both ends
in this process over UCX's tcp transport; skipped where unimem was built
without UCX."""
import os

import numpy as np
import pytest

import unimem

pytestmark = pytest.mark.skipif(not hasattr(unimem, "RemotePool"), reason="unimem built without UCX")

CELL = 65536


@pytest.fixture(autouse=True)
def tcp(monkeypatch):
    monkeypatch.setenv("UCX_TLS", "tcp")


def filled_pool(blocks=8):
    pool = unimem.OffloadPool(CELL, blocks, device=None)
    cells = pool.take(blocks)
    for c in cells:
        np.frombuffer(memoryview(c.view("uint8", [CELL])), dtype=np.uint8)[:] = c.index + 1
    return pool, cells


def test_get_into_a_buffer_and_put_back_bytes_exact():
    pool, cells = filled_pool()
    far = unimem.RemotePool(pool.export())
    assert (far.cells, far.cell_size, far.read_only) == (8, CELL, False)
    into = np.zeros((3, CELL), dtype=np.uint8)
    t = far.get(np.array([5, 1, 6], dtype=np.int64), into)
    assert t.wait(timeout=30)
    assert [int(into[i, 0]) for i in range(3)] == [6, 2, 7] and (into[0] == 6).all()
    source = np.full((2, CELL), 200, dtype=np.uint8)
    source[1] = 201
    far.put([3, 4], source).wait()
    by_index = {c.index: c for c in cells}
    assert (np.asarray(by_index[3].view("uint8", [CELL])) == 200).all()
    assert (np.asarray(by_index[4].view("uint8", [CELL])) == 201).all()


def test_get_into_a_local_pools_cells_checks_generations():
    pool, cells = filled_pool()
    local = unimem.OffloadPool(CELL, 4, device=None)
    mine = local.take(4)
    far = unimem.RemotePool(pool.export(read_only=True))
    assert far.read_only
    t = far.get([0, 7], local, [mine[2], mine[3].index], check_generations=True)
    t.wait()
    assert t.changed == [] and all(g % 2 == 1 for g in t.generations)  # held cells: odd
    assert (np.asarray(mine[2].view("uint8", [CELL])) == 1).all()
    assert (np.asarray(mine[3].view("uint8", [CELL])) == 8).all()
    with pytest.raises(unimem.InvalidArgument, match="read-only"):
        far.put([0], local, [mine[0]])


def test_bad_input_is_a_clear_error():
    pool, _ = filled_pool()
    d = pool.export()
    with pytest.raises(unimem.BadFormat):
        unimem.RemotePool(d[:-3])
    with pytest.raises(unimem.BadFormat):
        unimem.RemotePool(b"x" * 100)
    far = unimem.RemotePool(d)
    with pytest.raises(unimem.InvalidArgument):
        far.get([8], np.zeros((1, CELL), dtype=np.uint8))  # out of range
    with pytest.raises(unimem.InvalidArgument):
        far.get([1, 2], np.zeros((1, CELL), dtype=np.uint8))  # buffer too small
    with pytest.raises(unimem.InvalidArgument):
        far.get([-1], np.zeros((1, CELL), dtype=np.uint8))
    exporter = unimem.Exporter(pool, read_only=True)
    assert exporter.read_only and isinstance(exporter.descriptor, bytes)
