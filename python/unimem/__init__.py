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

import atexit
import os
import warnings
from typing import Any, Callable, Iterable, Optional, Union

from . import _unimem
from ._unimem import (Block, Cell, Grid, Layout, OffloadCell, OffloadPool, Tape, Transfer, View, gpu_available,
                      gpu_count, gpu_unavailable_reason, page_cache_fraction)
from ._unimem import __version__, build_info

__all__ = [
    "Block", "Cell", "Grid", "Layout", "OffloadCell", "OffloadPool", "Tape", "Transfer", "View", "load_safetensors",
    "release_loaders",
    "gpu_available", "gpu_count", "gpu_unavailable_reason",
    "build_info", "page_cache_fraction",
    "Error", "InvalidArgument", "OutOfMemory", "NotFound", "PermissionDenied", "OSFailure", "BadFormat",
    "NotABlock", "Unsupported", "NoCuda", "CudaError", "Disconnected",
]
if hasattr(_unimem, "RemotePool"):  # built with UCX: remote pools (OffloadPool.export, RemotePool)
    from ._unimem import Exporter, RemotePool, RemoteTransfer
    __all__ += ["Exporter", "RemotePool", "RemoteTransfer"]


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


class NotABlock(Error, ValueError):
    """An id, descriptor or Block that is not (this kind of) unimem memory: e.g.
    attaching an OffloadPool to a Block that holds none."""


class Unsupported(Error, NotImplementedError):
    """This platform or build lacks the feature, or the object refuses the call
    in this process (a fork() child)."""


class NoCuda(Error, RuntimeError):
    """GPU memory asked for, but no CUDA driver loads or it sees no device."""


class CudaError(Error, RuntimeError):
    """A CUDA driver call failed (the message names the call and the error)."""


class Disconnected(Error, ConnectionError):
    """The peer closed the connection before a Block arrived."""


_by_code = {
    "invalid_argument": InvalidArgument,
    "out_of_memory": OutOfMemory,
    "memlock_limit": OutOfMemory,
    "system": OSFailure,
    "unsupported": Unsupported,
    "no_cuda_driver": NoCuda,
    "no_cuda_device": NoCuda,
    "cuda": CudaError,
    "not_found": NotFound,
    "permission_denied": PermissionDenied,
    "not_a_block": NotABlock,
    "disconnected": Disconnected,
    "bad_format": BadFormat,
}
_unimem._set_error_types({value: _by_code[name] for name, value in _unimem._error_codes.items()})

_FP8 = ("float8_e4m3fn", "float8_e5m2")
_NOT_NUMPY = ("bfloat16",) + _FP8
_warned_dtypes: set = set()


def _torch_view(torch, tensor, dtype: str, name: str):
    """`tensor` (uint8, the raw bytes) viewed as `dtype` where this torch has
    that type; otherwise the bytes themselves, and a warning once per dtype."""
    to = getattr(torch, dtype, None)
    if to is None:
        if dtype not in _warned_dtypes:
            _warned_dtypes.add(dtype)
            warnings.warn(f"unimem: torch {torch.__version__} has no {dtype}: such tensors (first: {name!r}) are "
                          f"returned as their bytes (torch.uint8)", UserWarning, stacklevel=4)
        return tensor
    return tensor.view(to)

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
                if v.dtype in _FP8 or v.dtype == "bool":
                    return _torch_view(torch, torch.from_dlpack(v.view_as("uint8")), v.dtype, item[0])
                return torch.from_dlpack(v)
            self.finish = public
            return
        self.mode = mode

        def imported(item):
            t = raw(item[1])
            return t if item[2] is None else _torch_view(torch, t, item[2], item[0])
        self.finish = imported


def _data_bytes(path: str) -> int:
    """The bytes of a safetensors file after its header: what a load reads
    and reports as progress (the header itself is parsed, not counted)."""
    with open(path, "rb") as f:
        header = int.from_bytes(f.read(8), "little")
    return max(os.path.getsize(path) - 8 - header, 0)


def _drop_page_cache(path: str) -> None:
    """Asks the kernel to drop the file's clean cached pages (advice only)."""
    if not hasattr(os, "posix_fadvise"):
        return
    fd = os.open(path, os.O_RDONLY)
    try:
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)


def _progress_callback(progress):
    """(callable(done, total) or None, the tqdm bar to close or None)."""
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
                     output: Optional[str] = None, pinned: Optional[bool] = None,
                     drop_page_cache: bool = False):
    """Loads safetensors files into unimem memory and returns name -> tensor.

    paths: a .safetensors file, a sharded model's model.safetensors.index.json,
        or a list of them.
    device: "cpu" (the tensors live in a pinned Block, of huge pages where
        they back a load faster, read with O_DIRECT where the file is not
        cached), "cuda" / "cuda:N" / N (one device allocation
        through a gpu::Loader kept between calls, so a cached file loads at the
        PCIe link rate from its second load on), or a list of CUDA devices (one
        dict per device, in that order).
    dtype: CUDA only: "float32", "float16" or "bfloat16"; floating tensors are
        converted on the GPU as they load.
    split: CUDA lists only: "replicate" (default), "rows", "columns", or a
        callable (name, dtype, shape) -> one of those, per tensor.
    progress: a callable(done, total), or True for a tqdm bar: bytes of
        tensor data, with the same total (every file's) from the first call.
        On CUDA it is called from the loader's own threads (not this one: no
        threading.local there) and must not load to the same devices itself
        (their kept Loader is busy with this load).
    output: "torch" (default when torch imports), "numpy" (default otherwise;
        bfloat16/fp8 and GPU tensors stay Views) or "view".
    pinned: CPU only. None (default): pinned pages where RLIMIT_MEMLOCK allows,
        else unpinned ones with a ResourceWarning naming the limit; True:
        pinned or raise OutOfMemory; False: never pinned.
    drop_page_cache: after each file is loaded, ask the kernel to drop its
        pages from the page cache (posix_fadvise DONTNEED), for a process
        that loads a model once and wants the memory back. On CUDA the kept
        Loader then keeps no registration of the file (its next load is a
        first load again); kept Loaders of other device lists keep theirs.

    A tensor the index names but its file lacks raises NotFound; an index
    that names a file outside its folder, or is not one, raises BadFormat.
    Bool tensors are torch.bool; fp8 tensors are torch's float8 types where
    this torch has them, else their bytes (uint8), with a warning.

    The memory belongs to unimem and is freed when the last tensor using it
    goes. The GIL is released while files are read.
    """
    if isinstance(paths, (str, os.PathLike)):
        paths = [paths]
    paths = [os.fspath(p) for p in paths]
    devices = _devices(device)
    out_as = _Output(output)
    if devices is not None and pinned is not None:
        raise InvalidArgument("unimem: pinned applies to CPU loads", "invalid_argument")
    # Every index resolved (and checked) before anything is read or allocated.
    models = [_unimem._model_files(p) for p in paths]
    callback, bar = _progress_callback(progress)
    total = sum(_data_bytes(f) for files in models for f, _ in files) if callback else 0
    done = 0

    def report(file_done: int, _file_total: int) -> None:
        callback(done + file_done, total)
    try:
        if devices is None:
            if dtype is not None or split is not None:
                raise InvalidArgument("unimem: dtype and split apply to CUDA devices; on the CPU convert with torch",
                                      "invalid_argument")
            out: dict = {}
            for files in models:
                for shard, wanted in files:
                    loaded = _unimem._load_host(shard, False, report if callback else None, out_as.mode, pinned)
                    names = set(wanted)
                    for item in loaded:
                        name = item[0]
                        if names and name not in names:
                            continue
                        if name in out:
                            raise BadFormat(f"unimem: tensor {name!r} is in more than one file", "bad_format")
                        out[name] = out_as.finish(item)
                    if names:
                        missing = names.difference(item[0] for item in loaded)
                        if missing:
                            raise NotFound(f"unimem: the index puts {sorted(missing)[0]!r} in {shard}, which lacks "
                                           f"it ({len(missing)} tensor(s) missing)", "not_found")
                    if drop_page_cache:
                        _drop_page_cache(shard)
                    if callback:
                        done += _data_bytes(shard)
                        callback(done, total)
            return out
        rules = split
        if callable(split):
            rules = {}
            for files in models:
                for shard, wanted in files:
                    names = set(wanted)
                    for name, dt, shape in _unimem._header(shard):
                        if not names or name in names:
                            rules[name] = split(name, dt, shape)
        per_device: list[dict] = [{} for _ in devices]
        if callback:
            callback(0, total)
        for path, files in zip(paths, models):
            path_total = sum(_data_bytes(f) for f, _ in files)

            def path_report(path_done: int, path_bytes: int) -> None:
                # The library counts this path's tensor bytes; scaled to its files' data bytes.
                if path_done < path_bytes:
                    callback(done + path_done * path_total // max(path_bytes, 1), total)
            lists = _unimem._load_devices(path, devices, dtype, rules, out_as.mode,
                                          path_report if callback else None, bool(drop_page_cache))
            for d, tensors in enumerate(lists):
                into = per_device[d]
                for item in tensors:
                    if item[0] in into:
                        raise BadFormat(f"unimem: tensor {item[0]!r} is in more than one file", "bad_format")
                    into[item[0]] = out_as.finish(item)
            if callback:
                done += sum(_data_bytes(f) for f, _ in files)
                callback(done, total)
        return per_device if isinstance(device, (list, tuple)) else per_device[0]
    finally:
        if bar is not None:
            bar.close()


def release_loaders() -> None:
    """Unregisters the page cache that CUDA loads kept registered (for fast
    reloads) and frees their staging memory. Tensors already loaded stay."""
    _unimem._release_loaders()


# Loaders hold registrations and streams of the CUDA driver: released while
# the interpreter (and the CUDA runtime of the program, e.g. PyTorch's) is
# still up, not by a static destructor after both have shut down.
atexit.register(release_loaders)
