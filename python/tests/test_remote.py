"""Remote pools from Python (unimem.RemotePool, OffloadPool.export): both ends
in this process, over UCX's tcp transport and over the same-host route, and
an exporter in another process; skipped where unimem was built without UCX."""
import os
import subprocess
import sys

import numpy as np
import pytest

import unimem

pytestmark = pytest.mark.skipif(not hasattr(unimem, "RemotePool"), reason="unimem built without UCX")

CELL = 65536


@pytest.fixture(autouse=True)
def tcp(monkeypatch):
    monkeypatch.setenv("UCX_TLS", "tcp")


@pytest.fixture(params=["same_host", "ucx"])
def route(request):
    return request.param


def connect(descriptor, route):
    far = unimem.RemotePool(descriptor, same_host=route == "same_host")
    assert far.route == route
    return far


def filled_pool(blocks=8):
    pool = unimem.OffloadPool(CELL, blocks, device=None)
    cells = pool.take(blocks)
    for c in cells:
        np.frombuffer(memoryview(c.view("uint8", [CELL])), dtype=np.uint8)[:] = c.index + 1
    return pool, cells


def test_get_into_a_buffer_and_put_back_bytes_exact(route):
    pool, cells = filled_pool()
    far = connect(pool.export(), route)
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


def test_get_into_a_local_pools_cells_checks_generations(route):
    pool, cells = filled_pool()
    local = unimem.OffloadPool(CELL, 4, device=None)
    mine = local.take(4)
    far = connect(pool.export(read_only=True), route)
    assert far.read_only
    t = far.get([0, 7], local, [mine[2], mine[3].index], check_generations=True)
    t.wait()
    assert t.changed == [] and all(g % 2 == 1 for g in t.generations)  # held cells: odd
    assert (np.asarray(mine[2].view("uint8", [CELL])) == 1).all()
    assert (np.asarray(mine[3].view("uint8", [CELL])) == 8).all()
    with pytest.raises(unimem.InvalidArgument, match="read-only"):
        far.put([0], local, [mine[0]])


def test_bad_input_is_a_clear_error(route):
    pool, _ = filled_pool()
    d = pool.export()
    with pytest.raises(unimem.BadFormat):
        unimem.RemotePool(d[:-3])
    with pytest.raises(unimem.BadFormat):
        unimem.RemotePool(b"x" * 100)
    far = connect(d, route)
    with pytest.raises(unimem.InvalidArgument):
        far.get([8], np.zeros((1, CELL), dtype=np.uint8))  # out of range
    with pytest.raises(unimem.InvalidArgument):
        far.get([1, 2], np.zeros((1, CELL), dtype=np.uint8))  # buffer too small
    with pytest.raises(unimem.InvalidArgument):
        far.get([-1], np.zeros((1, CELL), dtype=np.uint8))
    exporter = unimem.Exporter(pool, read_only=True)
    assert exporter.read_only and isinstance(exporter.descriptor, bytes)


EXPORTER = """
import sys, numpy as np, unimem
pool = unimem.OffloadPool(65536, 4, device=None)
cells = pool.take(4)
for c in cells:
    np.frombuffer(memoryview(c.view("uint8", [65536])), dtype=np.uint8)[:] = c.index + 40
exporter = unimem.Exporter(pool)
print(exporter.descriptor.hex(), flush=True)
sys.stdin.read()
"""


def test_an_exporter_in_another_process_then_killed_is_disconnected():
    child = subprocess.Popen([sys.executable, "-c", EXPORTER], stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    try:
        line = child.stdout.readline().decode().strip()
        assert line, f"the exporter printed nothing (exit status {child.poll()})"
        far = unimem.RemotePool(bytes.fromhex(line))
        assert far.route == "same_host"
        into = np.zeros((2, CELL), dtype=np.uint8)
        far.get([3, 0], into).wait()
        assert (into[0] == 43).all() and (into[1] == 40).all()
        child.kill()
        child.wait()
        with pytest.raises(unimem.Disconnected, match="exited"):
            far.get([1], into[:1]).wait()
    finally:
        child.kill()
        child.wait()
