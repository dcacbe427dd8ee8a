"""What the package says about its build: unimem.__version__ (CMake's project
version), unimem.build_info(), and the command line tool it ships
(python3 -m unimem), which must print what the `unimem` executable prints."""
import os
import pathlib
import re
import subprocess
import sys

import pytest

import unimem

ROOT = pathlib.Path(__file__).resolve().parents[2]


def cmake_version():
    text = (ROOT / "CMakeLists.txt").read_text()
    return re.search(r"project\(unimem VERSION ([0-9.]+)", text).group(1)


def run_module(*args, cwd):
    """python3 -m unimem ARGS in a child, with this process's import path."""
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in sys.path if p))
    return subprocess.run([sys.executable, "-m", "unimem", *args], cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=120)


def test_version_is_the_cmake_project_version():
    assert unimem.__version__ == cmake_version()
    assert unimem.build_info()["version"] == unimem.__version__


def test_build_info_says_what_was_built_and_what_the_machine_offers():
    info = unimem.build_info()
    assert set(info) >= {"version", "io_uring", "io_uring_status", "cuda_driver", "cuda_driver_version", "gpu_count",
                         "cuda_status", "compiler"}
    assert isinstance(info["io_uring"], bool) and isinstance(info["cuda_driver"], bool)
    if info["io_uring"]:
        assert info["io_uring_status"] == "available" or info["io_uring_status"].startswith("unavailable (")
    else:
        assert "not built in" in info["io_uring_status"]
    expected = os.environ.get("UNIMEM_EXPECT_IO_URING")  # set by ctest: what CMake chose
    if expected is not None:
        assert info["io_uring"] == (expected.upper() in ("ON", "1", "TRUE", "YES")), info
    assert info["cuda_driver"] == unimem.gpu_available()
    if info["cuda_driver"]:
        assert info["cuda_driver_version"] > 0 and info["gpu_count"] == unimem.gpu_count() > 0
        assert info["cuda_status"] == ""
    else:
        assert info["cuda_driver_version"] == 0 and info["gpu_count"] == 0
        assert info["cuda_status"] == unimem.gpu_unavailable_reason() != ""
    print(info)


def test_module_info_prints_what_the_tool_prints(tmp_path):
    r = run_module("info", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert lines[0] == f"unimem {unimem.__version__}"
    assert "io_uring" in r.stdout and "storage" in lines
    tool = os.environ.get("UNIMEM_TOOL")  # set by ctest: the executable of the same build
    if not tool:
        pytest.skip("skipped: no UNIMEM_TOOL to compare with (the package's own output was checked)")
    t = subprocess.run([tool, "info"], cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert t.returncode == 0, t.stderr
    assert r.stdout == t.stdout


def test_module_reports_bad_usage_and_failures_as_the_tool_does(tmp_path):
    r = run_module("bogus", cwd=tmp_path)
    assert r.returncode == 2 and r.stderr.startswith("usage: unimem info"), r.stderr
    r = run_module("load", str(tmp_path / "missing.bin"), cwd=tmp_path)
    assert r.returncode == 1 and r.stderr.count("\n") == 1 and "missing.bin" in r.stderr, r.stderr


def test_module_loads_a_file(tmp_path, write_st):
    path = write_st("m.safetensors", {"w": ("F32", (64, 64), bytes(range(256)) * 64)})
    r = run_module("load", path, cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert re.search(r"via (direct|buffered)_(async|threads)", r.stdout) and "1 tensors" in r.stdout, r.stdout
