"""unimem.transformers: Hugging Face transformers models whose weights unimem loads.

`from_pretrained(folder)` returns the model that
``AutoModelForCausalLM.from_pretrained(folder, device_map=device, dtype=dtype)``
returns, bit for bit, but its weights are read by `unimem.load_safetensors`:
for CUDA one device allocation filled straight from the files (dtype converted
on the GPU as it loads), on the CPU a pinned Block per file. The files load on a
thread of their own (the GIL released) while the model is built on the meta
device (no weight memory, no init) and the checkpoint is checked against it
from the safetensors headers (names, shapes, dtypes); then the loaded tensors
become the model's parameters and persistent buffers as they are: nothing is
copied, and the memory goes back when the model goes. A failed load waits
for the thread and lets everything it loaded go.

What transformers does after loading is done the way transformers does it:
its key renames (a missing or extra base-model prefix, legacy names) through
its own conversion mapping, tied weights tied by `model.tie_weights()`,
non-persistent buffers (rotary tables) materialized on the device and filled
by the model's own `initialize_weights()` (which skips loaded tensors),
parameters with ``requires_grad`` set for floating tensors, eval mode, the
generation config. Where transformers would have to transform tensors
(merging experts, quantization), or would leave a parameter randomly
initialized because the checkpoint lacks it, this module raises instead.

Needs transformers 5 (`model.all_tied_weights_keys`,
`named_non_persistent_buffers`, `initialize_weights`); imported on its own
(``import unimem.transformers``), never by ``import unimem``.
"""

from __future__ import annotations

import contextlib
import copy
import inspect
import os
import re
import threading
from typing import Any, Optional

import unimem
from unimem import BadFormat, Error, InvalidArgument, NotFound

import torch

__all__ = ["from_pretrained", "load_into"]

# safetensors checkpoints, in the order transformers looks for them.
_SAFETENSORS = ("model.safetensors.index.json", "model.safetensors")
# Pickle checkpoints: refused (unimem reads safetensors; unpickling runs code).
_PICKLE = ("pytorch_model.bin.index.json", "pytorch_model.bin", "model.pt", "model.pth", "model.ckpt")
# Checkpoint tensors that transformers drops without a word (old layouts).
_IGNORED_EXTRA = (r"rotary_emb\.inv_freq", r"(^|\.)position_ids$")
# What unimem raises where CUDA is missing (a class of its own where it has one).
_NoCuda = getattr(unimem, "NoCuda", Error)
# Target dtypes unimem converts to on the GPU while loading.
_GPU_CONVERTS = ("float32", "float16", "bfloat16")


def from_pretrained(path: "str | os.PathLike", device: Any = "cuda", dtype: Any = None,
                    model_class: Any = None, **kwargs):
    """The model in `path` (a folder with config.json and safetensors weights),
    on `device`, as ``model_class.from_pretrained(path, device_map=device,
    dtype=dtype, **kwargs)`` returns it.

    device: "cuda", "cuda:N", N or "cpu" (pinned host memory).
    dtype: None or "auto" (the config's dtype, else the checkpoint's), a
        torch.dtype or its name. On CUDA, float32/float16/bfloat16 tensors are
        converted on the GPU while loading; other conversions, and every
        conversion on the CPU, are done with torch after loading (a copy of
        those tensors).
    model_class: an Auto class (default AutoModelForCausalLM) or a model class.
    kwargs: config overrides and model arguments, as for transformers
        (e.g. attn_implementation="eager").

    Raises (all `unimem.Error`, naming the tensor or file): NotFound (no
    config or safetensors checkpoint, a parameter the checkpoint lacks),
    BadFormat (a pickle checkpoint, a tensor the model does not have, a
    misshaped tensor, a tensor transformers would have to convert),
    InvalidArgument (a bad device or dtype, a tensor whose dtype cannot
    become the parameter's), unimem.NoCuda where unimem has that class, else
    Error (codes "no_cuda_driver", "no_cuda_device": CUDA asked for where
    there is none); what `unimem.load_safetensors` raises. On failure
    nothing stays allocated.
    """
    import transformers

    folder, checkpoint = _checkpoint(path)
    target = _device(device)
    config_kwargs = {k: v for k, v in kwargs.items() if k != "config"}
    config = kwargs.get("config")
    if config is None:
        config, model_kwargs = transformers.AutoConfig.from_pretrained(folder, return_unused_kwargs=True,
                                                                       **config_kwargs)
    else:
        config, model_kwargs = copy.deepcopy(config), config_kwargs  # building sets its dtype
    cls = _model_class(model_class, config, transformers)
    headers = _headers(checkpoint)
    torch_dtype = _resolve_dtype(dtype, config, headers)
    # The files stream in on a thread while the model is built and checked.
    early = _EarlyLoad(headers.load_path, target, _expected_conversion(headers, torch_dtype, target))
    try:
        with _no_init(transformers), torch.device("meta"):
            model = cls._from_config(config, dtype=torch_dtype, **model_kwargs)
        model.config.name_or_path = os.fspath(path)
        _load_into(model, headers, target, None, early)
    except BaseException:
        early.drop()
        raise
    model.eval()
    if model.can_generate() and os.path.exists(os.path.join(folder, "generation_config.json")):
        model.generation_config = transformers.GenerationConfig.from_pretrained(folder)
    return model


def load_into(model, path: "str | os.PathLike", device: Any = "cuda", dtype: Any = None):
    """Loads the safetensors checkpoint `path` (a folder, an index .json or a
    .safetensors file) into `model`, a torch module (typically built on the
    meta device), and returns `model`.

    Every parameter and persistent buffer becomes the loaded tensor itself,
    on `device`, in the parameter's dtype (or `dtype` for floating ones where
    given). Non-persistent buffers still on the meta device are materialized
    on `device` and filled by the model's `initialize_weights()`; tied weights
    are tied again. The model's train/eval mode is left as it is. Errors as
    for `from_pretrained`; on failure the model keeps the tensors it had.
    """
    _, checkpoint = _checkpoint(path)
    target = _device(device)
    want = None if dtype is None else _torch_dtype(dtype)
    _load_into(model, _headers(checkpoint), target, want, None)
    return model


def _load_into(model, headers, target, want, early) -> None:
    plan = _plan(model, headers, want, target)
    if early is not None and early.convert == plan.convert:
        tensors = early.take()
    else:
        if early is not None:
            early.drop()  # loaded with another conversion than the model needs: again
        tensors = _load(headers.load_path, target, plan.convert)
    _assign(model, plan, tensors, target)


class _EarlyLoad:
    """unimem.load_safetensors on a thread of its own, started before the
    model is built: the files load (the GIL released) while Python builds the
    model on the meta device and checks the checkpoint against it."""

    def __init__(self, load_path: str, target: "torch.device", convert: Optional[str]):
        self.convert = convert
        self.box: dict = {}
        self.thread = threading.Thread(target=self._run, args=(load_path, target, convert), daemon=True,
                                       name="unimem.transformers load")
        self.thread.start()

    def _run(self, load_path, target, convert):
        try:
            self.box["tensors"] = _load(load_path, target, convert)
        except BaseException as e:  # handed to take()
            self.box["error"] = e

    def take(self) -> dict:
        self.thread.join()
        box, self.box = self.box, {}
        if "error" in box:
            raise box["error"]
        return box["tensors"]

    def drop(self) -> None:
        """Waits for the load and lets its memory go."""
        self.thread.join()
        self.box.clear()


def _expected_conversion(headers, dtype: "torch.dtype", target: "torch.device") -> Optional[str]:
    """The conversion _plan will ask for where every floating parameter is in
    `dtype` (what building under that dtype gives; _load_into checks it)."""
    name = _name(dtype)
    if target.type != "cuda" or name not in _GPU_CONVERTS:
        return None
    return name if any(dt in _GPU_CONVERTS and dt != name for _, dt, _ in headers.tensors.values()) else None


def _no_init(transformers):
    """transformers' context that skips weight init while building (nothing
    to initialize on the meta device), where it has one."""
    try:
        from transformers.initialization import no_init_weights
    except ImportError:
        return contextlib.nullcontext()
    return no_init_weights()


# ---------------------------------------------------------------------------- checkpoint


class _Headers:
    """A checkpoint's tensors from the safetensors headers: name -> (file,
    dtype name, shape), and what to hand `unimem.load_safetensors`."""

    def __init__(self, load_path: str, tensors: dict):
        self.load_path = load_path
        self.tensors = tensors


def _checkpoint(path) -> tuple[str, str]:
    """(folder, safetensors file or index) for a folder or a file."""
    path = os.fspath(path)
    if os.path.isdir(path):
        for name in _SAFETENSORS:
            if os.path.isfile(os.path.join(path, name)):
                return path, os.path.join(path, name)
        for name in _PICKLE:
            if os.path.isfile(os.path.join(path, name)):
                raise BadFormat(f"unimem.transformers: {os.path.join(path, name)} is a pickle checkpoint; unimem reads "
                                "safetensors only (save it with save_pretrained(safe_serialization=True))",
                                "bad_format")
        raise NotFound(f"unimem.transformers: no {' or '.join(_SAFETENSORS)} in {path}", "not_found")
    if not os.path.exists(path):
        raise NotFound(f"unimem.transformers: no such file or folder: {path}", "not_found")
    if path.endswith(".safetensors") or path.endswith(".safetensors.index.json"):
        return os.path.dirname(path) or ".", path
    raise BadFormat(f"unimem.transformers: {path} is not a safetensors checkpoint (.safetensors or "
                    ".safetensors.index.json); unimem does not read pickle checkpoints", "bad_format")


def _headers(checkpoint: str) -> _Headers:
    """Every tensor's header; for an index, the tensors it puts in each shard
    (which is what unimem.load_safetensors loads from it)."""
    # The library's index resolver: the same files, checks and errors as
    # unimem.load_safetensors (a file outside the folder is BadFormat).
    shards = {shard: (set(names) if names else None) for shard, names in unimem._unimem._model_files(checkpoint)}
    tensors: dict = {}
    for shard, names in shards.items():
        for name, dt, shape in unimem._unimem._header(shard):
            if names is not None and name not in names:
                continue
            if name in tensors:
                raise BadFormat(f"unimem: tensor {name!r} is in more than one file ({tensors[name][0]}, {shard})",
                                "bad_format")
            tensors[name] = (shard, dt, tuple(shape))
        lacking = sorted((names or set()) - tensors.keys())
        if lacking:
            raise NotFound(f"unimem.transformers: {checkpoint} puts tensor {lacking[0]!r} in {shard}, which does not "
                           "hold it", "not_found")
    return _Headers(checkpoint, tensors)


# ---------------------------------------------------------------------------- devices and dtypes


def _device(device) -> "torch.device":
    if isinstance(device, torch.device) and device.type == "cuda" and device.index is None:
        device = "cuda"
    ordinals = unimem._devices(device)  # InvalidArgument for what it does not know
    if ordinals is None:
        return torch.device("cpu")
    if len(ordinals) != 1:
        raise InvalidArgument(f"unimem.transformers: one device, not {device!r}", "invalid_argument")
    if not unimem.gpu_available():
        raise _NoCuda(f"unimem.transformers: device {device!r} asked for, but {unimem.gpu_unavailable_reason()}",
                      "no_cuda_driver")
    if not torch.cuda.is_available():
        raise _NoCuda(f"unimem.transformers: device {device!r} asked for, but this torch ({torch.__version__}) "
                      "sees no CUDA device", "no_cuda_device")
    if ordinals[0] >= unimem.gpu_count():
        raise InvalidArgument(f"unimem.transformers: no CUDA device {ordinals[0]} ({unimem.gpu_count()} here)",
                              "invalid_argument")
    return torch.device("cuda", ordinals[0])


def _torch_dtype(dtype) -> "torch.dtype":
    if isinstance(dtype, torch.dtype):
        out = dtype
    else:
        out = getattr(torch, str(dtype).removeprefix("torch."), None)
        if not isinstance(out, torch.dtype):
            raise InvalidArgument(f"unimem.transformers: unknown dtype {dtype!r}", "invalid_argument")
    if not out.is_floating_point:
        raise InvalidArgument(f"unimem.transformers: dtype {out} is not a floating type", "invalid_argument")
    return out


def _resolve_dtype(dtype, config, headers: _Headers) -> "torch.dtype":
    """transformers' dtype="auto": the config's, else the first floating tensor's."""
    if dtype is not None and dtype != "auto":
        return _torch_dtype(dtype)
    configured = getattr(config, "dtype", None)
    if configured is not None:
        return _torch_dtype(configured)
    for _, dt, _ in headers.tensors.values():
        t = getattr(torch, dt, None)
        if isinstance(t, torch.dtype) and t.is_floating_point:
            return t
    return torch.get_default_dtype()


def _name(dtype: "torch.dtype") -> str:
    return str(dtype).removeprefix("torch.")


# ---------------------------------------------------------------------------- what goes where


class _Plan:
    """Checkpoint name -> (model key, wanted dtype), the tied keys, and the
    dtype to ask unimem for (None: none or mixed)."""

    def __init__(self):
        self.targets: dict = {}
        self.tied: set = set()  # every key of a tied group
        self.missing: set = set()  # model keys the checkpoint lacks (tied ones)
        self.convert: Optional[str] = None


def _renamer(model):
    """checkpoint key -> (model key, True if transformers must transform the
    tensor, not only rename it), through transformers' own mapping where it
    has one, else the base-model prefix rule."""
    meta_keys = model.state_dict()
    prefix = getattr(model, "base_model_prefix", "") or ""
    try:
        from transformers.conversion_mapping import get_model_conversion_mapping
        from transformers.core_model_loading import WeightConverter, WeightRenaming, rename_source_key
        mapping = get_model_conversion_mapping(model, None, None)
    except (ImportError, TypeError, AttributeError):
        def simple(key):
            if key in meta_keys or not prefix:
                return key, False
            if f"{prefix}.{key}" in meta_keys:
                return f"{prefix}.{key}", False
            if key.startswith(prefix + ".") and key[len(prefix) + 1:] in meta_keys:
                return key[len(prefix) + 1:], False
            return key, False
        return simple
    renamings = [m for m in mapping if isinstance(m, WeightRenaming)]
    converters = [m for m in mapping if isinstance(m, WeightConverter)]

    def rename(key):
        renamed, pattern = rename_source_key(key, renamings, converters, prefix, meta_keys)
        if renamed not in meta_keys and key in meta_keys:
            renamed, pattern = rename_source_key(key, [], [], prefix, meta_keys)
        return renamed, pattern is not None
    return rename


def _plan(model, headers: _Headers, want: Optional["torch.dtype"], target: "torch.device") -> _Plan:
    plan = _Plan()
    slots = model.state_dict(keep_vars=True)  # parameters and persistent buffers, tied ones under each name
    tied = dict(getattr(model, "all_tied_weights_keys", None) or {})  # target key -> source key
    ignored = [re.compile(p) for p in _IGNORED_EXTRA] + \
        [re.compile(p) for p in (getattr(model, "_keys_to_ignore_on_load_unexpected", None) or [])]
    if all(name in slots or any(p.search(name) for p in ignored) for name in headers.tensors):
        # The model's own names (what save_pretrained writes): no renaming, and
        # no building of transformers' conversion tables (a tenth of a second).
        def rename(key):
            return key, False
    else:
        rename = _renamer(model)
    loaded: set = set()
    for name, (shard, dt, shape) in headers.tensors.items():
        key, transformed = rename(name)
        if transformed:
            raise BadFormat(f"unimem.transformers: tensor {name!r} ({shard}) must be transformed by transformers' weight "
                            "conversion for this model, which unimem does not do; load it with transformers",
                            "bad_format")
        if key not in slots:
            if any(p.search(key) for p in ignored):
                continue
            raise BadFormat(f"unimem.transformers: tensor {name!r} in {shard} is not a parameter or buffer of "
                            f"{type(model).__name__}", "bad_format")
        if key in loaded:
            raise BadFormat(f"unimem.transformers: tensor {name!r} ({shard}) and another both load {key!r}",
                            "bad_format")
        loaded.add(key)
        slot = slots[key]
        if tuple(slot.shape) != shape:
            raise BadFormat(f"unimem.transformers: tensor {name!r} in {shard} has shape {list(shape)}, the model's "
                            f"{key!r} {list(slot.shape)}", "bad_format")
        source = getattr(torch, dt, None)
        wanted = want if (want is not None and slot.is_floating_point()) else slot.dtype
        if not isinstance(source, torch.dtype) or (
                source != wanted and (source.is_floating_point != wanted.is_floating_point or
                                      not wanted.is_floating_point)):
            raise InvalidArgument(f"unimem.transformers: tensor {name!r} in {shard} is {dt}; it cannot become the "
                                  f"{_name(wanted)} of {key!r}", "invalid_argument")
        plan.targets[name] = (key, wanted)
    # A tied key the checkpoint lacks is fine where another key of its group
    # (a source and its targets) is there: tie_weights ties it to that one.
    group: dict = {}
    for t, source in tied.items():
        group.setdefault(source, {source}).add(t)
        group[t] = group[source]
    plan.missing = {k for k in slots if k not in loaded}
    lacking = [k for k in slots if k in plan.missing and not (group.get(k, set()) & loaded)]
    if lacking:
        more = f" and {len(lacking) - 1} more" if len(lacking) > 1 else ""
        raise NotFound(f"unimem.transformers: {headers.load_path} has no tensor for {lacking[0]!r}{more} of "
                       f"{type(model).__name__}", "not_found")
    plan.tied = {k for k in group if k in slots}
    if target.type == "cuda":
        # unimem converts every float32/float16/bfloat16 tensor of the checkpoint
        # to one dtype: ask for it where all of those want the same one; torch
        # converts what is left after loading.
        sources = [(headers.tensors[name][1], _name(wanted)) for name, (_, wanted) in plan.targets.items()
                   if headers.tensors[name][1] in _GPU_CONVERTS]
        wants = {w for _, w in sources}
        if len(wants) == 1 and wants <= set(_GPU_CONVERTS) and any(dt not in wants for dt, _ in sources):
            plan.convert = wants.pop()
    return plan


# ---------------------------------------------------------------------------- loading and assigning


def _load(load_path: str, target: "torch.device", convert: Optional[str]) -> dict:
    if target.type == "cpu":
        return unimem.load_safetensors(load_path, device="cpu", output="torch")
    return unimem.load_safetensors(load_path, device=f"cuda:{target.index}", dtype=convert, output="torch")


def _submodule(model, key: str):
    owner, _, attr = key.rpartition(".")
    return (model.get_submodule(owner) if owner else model), attr


def _assign(model, plan: _Plan, tensors: dict, target: "torch.device") -> None:
    """Puts the loaded tensors into the model; on failure puts back what was
    there, so no loaded tensor stays referenced."""
    undo = []

    def put(module, attr, value):
        store = module._parameters if attr in module._parameters else module._buffers
        undo.append((store, attr, store[attr]))
        store[attr] = value

    try:
        for name, (key, wanted) in plan.targets.items():
            module, attr = _submodule(model, key)
            t = tensors.pop(name)
            if t.dtype != wanted:
                t = t.to(wanted)  # the conversions unimem does not do (see from_pretrained)
            if attr in module._parameters:
                t = torch.nn.Parameter(t, requires_grad=t.is_floating_point())
            t._is_hf_initialized = True  # transformers' initialize_weights leaves it alone
            put(module, attr, t)
            del t
        tensors.clear()  # what is not the model's (tied over, ignored)
        for key in plan.missing:
            # Tied below; marked so that initialize_weights skips it, as transformers does.
            module, attr = _submodule(model, key)
            getattr(module, attr)._is_hf_initialized = True
        with torch.no_grad():
            # As transformers does: empty on the device, then the model's own init
            # fills them. A model without one keeps them on meta (an error below).
            initialize = getattr(model, "initialize_weights", None)
            pending = False
            for key, buffer in list(_non_persistent_buffers(model)):
                module, attr = _submodule(model, key)
                if buffer.is_meta and initialize is not None:
                    put(module, attr, torch.empty_like(buffer, device=target))
                    pending = True
                elif not buffer.is_meta and buffer.device != target:
                    put(module, attr, buffer.to(target))
            if pending:
                initialize()
        if hasattr(model, "tie_weights"):
            for key in plan.tied:
                module, attr = _submodule(model, key)
                store = module._parameters if attr in module._parameters else module._buffers
                undo.append((store, attr, store[attr]))
            if "missing_keys" in inspect.signature(model.tie_weights).parameters:
                # As from_pretrained ties: a target the checkpoint has and a missing
                # source swap; a target and source both there and different stay untied.
                model.tie_weights(missing_keys=set(plan.missing), recompute_mapping=False)
            else:
                model.tie_weights()
        left = [k for k, v in list(model.named_parameters(remove_duplicate=False)) +
                list(model.named_buffers(remove_duplicate=False)) if v is not None and v.is_meta]
        if left:
            raise NotFound(f"unimem.transformers: {left[0]!r} of {type(model).__name__} is still on the meta device "
                           "after loading (not in the checkpoint, not tied, not made by the model's init)",
                           "not_found")
    except BaseException:
        tensors.clear()
        for store, attr, old in reversed(undo):
            store[attr] = old
        undo.clear()
        raise


def _non_persistent_buffers(model):
    for owner, module in model.named_modules():
        for attr, buffer in module._buffers.items():
            if buffer is not None and attr in module._non_persistent_buffers_set:
                yield (f"{owner}.{attr}" if owner else attr), buffer


def _model_class(model_class, config, transformers):
    if model_class is None:
        model_class = transformers.AutoModelForCausalLM
    mapping = getattr(model_class, "_model_mapping", None)
    if mapping is None:
        return model_class
    from transformers.models.auto.auto_factory import _get_model_class
    try:
        return _get_model_class(config, mapping)  # mapping.keys() would import every model's config: seconds
    except (KeyError, ValueError):
        raise InvalidArgument(f"unimem.transformers: {model_class.__name__} has no model for {type(config).__name__}",
                              "invalid_argument") from None
