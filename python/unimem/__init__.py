"""unimem: one piece of memory for the CPU, every GPU and other processes.

Allocate once; NumPy, PyTorch and CUDA kernels read and write the same pages,
with no copies between them. Every object that hands out memory hands out a
`View`, which exports DLPack (``torch.from_dlpack(view)``,
``numpy.from_dlpack(view)``) and the buffer protocol (``numpy.asarray(view)``).

    import unimem, torch
    weights = unimem.load_safetensors("model.safetensors", device="cuda")
    tape = unimem.Tape(1 << 20, gpu=True)          # pinned, visible to every GPU
    x = torch.from_dlpack(tape.take((256, 256), "float32"))

Errors are `unimem.Error` subclasses that also derive from the built-in
exception a Python caller expects: `MemoryError` (out of memory, memlock
limit), `FileNotFoundError`, `PermissionError`, `ValueError` (bad arguments,
malformed files) and `OSError` (other system failures).
"""

from __future__ import annotations

import json
import os
from typing import Any, Callable, Iterable, Optional, Union

from . import _unimem
from ._unimem import (Block, Cell, Grid, Layout, OffloadCell, OffloadPool, Tape, Transfer, View, gpu_available,
                      gpu_count, gpu_unavailable_reason)
from ._unimem import __version__, build_info

__all__ = [
    "Block", "Cell", "Grid", "Layout", "OffloadCell", "OffloadPool", "Tape", "Transfer", "View", "load_safetensors",
    "release_loaders",
    "gpu_available", "gpu_count", "gpu_unavailable_reason",
    "build_info",
    "Error", "InvalidArgument", "OutOfMemory", "NotFound", "PermissionDenied", "OSFailure", "BadFormat",
]


class Error(Exception):
    """A unimem failure. `code` names it ("memlock_limit", "cuda", ...); `errno`
    is the failing system call's errno, or 0."""

    def __init__(self, message: str = "", code: str = "", errno: int = 0):
        super().__init__(message)
        self.code = code
        self.errno = errno


class InvalidArgument(Error, ValueError):
    """A bad size, alignment, dtype, shape, cell or option."""


class BadFormat(Error, ValueError):
    """A file that does not follow its format (the message says where)."""


class OutOfMemory(Error, MemoryError):
    """Not enough memory (host or device), or pinning refused by RLIMIT_MEMLOCK."""


class NotFound(Error, FileNotFoundError):
    """No such file, tensor or Block."""


class PermissionDenied(Error, PermissionError):
    """The file or Block belongs to someone else."""


class OSFailure(Error, OSError):
    """An operating-system call failed (errno says which error)."""


_by_code = {
    "invalid_argument": InvalidArgument,
    "out_of_memory": OutOfMemory,
    "memlock_limit": OutOfMemory,
    "system": OSFailure,
    "not_found": NotFound,
    "permission_denied": PermissionDenied,
    "bad_format": BadFormat,
}
_unimem._set_error_types({value: _by_code.get(name, Error) for name, value in _unimem._error_codes.items()})

_FP8 = ("float8_e4m3fn", "float8_e5m2")
_NOT_NUMPY = ("bfloat16",) + _FP8

def _devices(device) -> Optional[list[int]]:
    """None for the CPU, else the CUDA ordinals `device` names."""
    if isinstance(device, (list, tuple)):
        out = []
        for d in device:
            one = _devices(d)
            if one is None:
                raise InvalidArgument("unimem: a list of devices names CUDA devices only", "invalid_argument")
            out += one
        if not out:
            raise InvalidArgument("unimem: the list of devices is empty", "invalid_argument")
        return out
    if isinstance(device, int) and not isinstance(device, bool):
        return [device]
    text = str(device)  # also torch.device
    if text == "cpu":
        return None
    if text == "cuda":
        return [0]
    if text.startswith("cuda:") and text[5:].isdigit():
        return [int(text[5:])]
    raise InvalidArgument(f"unimem: unknown device {device!r} (cpu, cuda, cuda:N, or a list)", "invalid_argument")


_capsule_modes: dict = {}  # torch module -> what its importer reads (probed once per process)


def _torch_capsule_mode(torch, raw) -> Optional[int]:
    """1 if torch's importer takes versioned capsules, 2 if legacy ones only,
    None if it has none or takes neither."""
    if id(torch) not in _capsule_modes:
        mode = None
        if raw is not None:
            probe = Tape(4096).take(4, "float32")
            for m, capsule in ((1, lambda: probe.__dlpack__(max_version=(1, 0))), (2, lambda: probe.__dlpack__())):
                try:
                    if raw(capsule()).data_ptr() == probe.address:
                        mode = m
                        break
                except (TypeError, RuntimeError, BufferError):
                    pass
        _capsule_modes[id(torch)] = mode
    return _capsule_modes[id(torch)]


class _Output:
    """How the loaders' results become what load_safetensors returns. `mode`
    is what the C++ side hands over: 0 Views, 1 versioned or 2 legacy DLPack
    capsules (for torch, whose importer then takes them directly)."""

    def __init__(self, output: Optional[str]):
        if output not in (None, "torch", "numpy", "view"):
            raise InvalidArgument(f"unimem: output must be 'torch', 'numpy' or 'view', not {output!r}",
                                  "invalid_argument")
        self.mode, self.finish = 0, lambda item: item[1]
        if output in (None, "torch"):
            try:
                import torch
            except ImportError:
                if output == "torch":
                    raise
            else:
                self._torch(torch)
                return
        if output in (None, "numpy"):
            try:
                import numpy
            except ImportError:
                if output == "numpy":
                    raise
            else:
                def to_numpy(item):
                    v = item[1]
                    if v.dtype in _NOT_NUMPY or v.__dlpack_device__()[0] == 2:
                        return v  # NumPy has no such dtype, or cannot reach GPU memory
                    return numpy.asarray(v)
                self.finish = to_numpy

    def _torch(self, torch):
        # torch.from_dlpack spends most of its time, for a small tensor, on the
        # stream handshake (finding the current CUDA stream to order the
        # producer's work before it). Every unimem tensor is complete before
        # it is handed over, so capsules go to torch's importer directly where
        # torch has one (versioned where it reads them), else Views through
        # torch.from_dlpack.
        raw = getattr(torch._C, "_from_dlpack", None)
        mode = _torch_capsule_mode(torch, raw)
        if mode is None:
            def public(item):
                v = item[1]
                if v.__dlpack_device__()[0] == 3:  # kDLCUDAHost: torch imports it as kDLCPU
                    v = v.as_cpu()
                if v.dtype in _FP8:
                    return torch.from_dlpack(v.view_as("uint8")).view(getattr(torch, v.dtype))
                return torch.from_dlpack(v)
            self.finish = public
            return
        self.mode = mode

        def imported(item):
            t = raw(item[1])
            return t if item[2] is None else t.view(getattr(torch, item[2]))
        self.finish = imported


def _shards(path: str) -> list[str]:
    """The files of a model: one .safetensors file, or those an index names."""
    if not path.endswith(".json"):
        return [path]
    with open(path) as f:
        index = json.load(f)
    folder = os.path.dirname(path)
    files: list[str] = []
    for name in index.get("weight_map", {}).values():
        full = os.path.join(folder, name)
        if full not in files:
            files.append(full)
    return files


def _progress_callback(progress):
    if progress is True:
        try:
            from tqdm import tqdm
        except ImportError:
            return None, None
        bar = tqdm(unit="B", unit_scale=True, desc="unimem")

        def update(done: int, total: int) -> None:
            bar.total = total
            bar.n = done
            bar.refresh()
        return update, bar
    return (progress or None), None


def load_safetensors(paths: Union[str, os.PathLike, Iterable[Union[str, os.PathLike]]],
                     device: Any = "cpu", *, dtype: Optional[str] = None,
                     split: Union[None, str, Callable[[str, str, tuple], str]] = None,
                     progress: Union[None, bool, Callable[[int, int], None]] = None,
                     output: Optional[str] = None):
    """Loads safetensors files into unimem memory and returns name -> tensor.

    paths: a .safetensors file, a sharded model's model.safetensors.index.json,
        or a list of them.
    device: "cpu" (the tensors live in a pinned Block, read with O_DIRECT where
        the file is not cached), "cuda" / "cuda:N" / N (one device allocation
        through a gpu::Loader kept between calls, so a cached file loads at the
        PCIe link rate from its second load on), or a list of CUDA devices (one
        dict per device, in that order).
    dtype: CUDA only: "float32", "float16" or "bfloat16"; floating tensors are
        converted on the GPU as they load.
    split: CUDA lists only: "replicate" (default), "rows", "columns", or a
        callable (name, dtype, shape) -> one of those, per tensor.
    progress: a callable(done, total), or True for a tqdm bar: bytes read on
        the CPU, files loaded for CUDA.
    output: "torch" (default when torch imports), "numpy" (default otherwise;
        bfloat16/fp8 and GPU tensors stay Views) or "view".

    The memory belongs to unimem and is freed when the last tensor using it
    goes. The GIL is released while files are read.
    """
    if isinstance(paths, (str, os.PathLike)):
        paths = [paths]
    paths = [os.fspath(p) for p in paths]
    devices = _devices(device)
    out_as = _Output(output)
    callback, bar = _progress_callback(progress)
    try:
        if devices is None:
            if dtype is not None or split is not None:
                raise InvalidArgument("unimem: dtype and split apply to CUDA devices; on the CPU convert with torch",
                                      "invalid_argument")
            out: dict = {}
            for path in paths:
                wanted = None
                if path.endswith(".json"):
                    with open(path) as f:
                        wanted = set(json.load(f).get("weight_map", {}))
                for shard in _shards(path):
                    for item in _unimem._load_host(shard, False, callback, out_as.mode):
                        name = item[0]
                        if wanted is not None and name not in wanted:
                            continue
                        if name in out:
                            raise BadFormat(f"unimem: tensor {name!r} is in more than one file", "bad_format")
                        out[name] = out_as.finish(item)
            return out
        rules = split
        if callable(split):
            rules = {}
            for path in paths:
                for shard in _shards(path):
                    for name, dt, shape in _unimem._header(shard):
                        rules[name] = split(name, dt, shape)
        per_device: list[dict] = [{} for _ in devices]
        done = 0
        for i, path in enumerate(paths):
            lists = _unimem._load_devices(path, devices, dtype, rules, out_as.mode)
            for d, tensors in enumerate(lists):
                into = per_device[d]
                for item in tensors:
                    if item[0] in into:
                        raise BadFormat(f"unimem: tensor {item[0]!r} is in more than one file", "bad_format")
                    into[item[0]] = out_as.finish(item)
            if callback:
                callback(i + 1, len(paths))
        return per_device if isinstance(device, (list, tuple)) else per_device[0]
    finally:
        if bar is not None:
            bar.close()


def release_loaders() -> None:
    """Unregisters the page cache that CUDA loads kept registered (for fast
    reloads) and frees their staging memory. Tensors already loaded stay."""
    _unimem._release_loaders()
