#!/usr/bin/env python3
"""The pipeline example's decoder layer in PyTorch: the peer unimem_pipeline is
compared with.

It runs the same layer as examples/pipeline/ (RMSNorm, Q/K/V projections,
RoPE, causal attention over a KV cache, output projection + residual, RMSNorm,
SwiGLU MLP + residual; model.hpp, cpu_stages.hpp, reference.cpp) on the same
weights, the way a PyTorch user would: torch eager (bf16 weights as stored,
RMSNorm in float32 as Hugging Face's Llama does, a static KV cache, prefill in
one step, then one token per step) and, on CUDA, the decode step captured in
CUDA graphs and replayed per token, as serving engines do. It measures decode
tokens/s (generated tokens over the decode loop's wall time; each token's
output is copied to the host, as unimem_pipeline's is, where a sampler would
read it), prefill time and the error of all positions' outputs against a
float64 run of the same recurrence, so that unimem's numbers stand next to
what PyTorch does with the same work, and next to the bound reading the
weights once per token at the GPU's copy bandwidth sets.

With --pipeline PATH it first runs unimem_pipeline (gpu mode on CUDA, cpu mode
with --device cpu), which writes the weights and its own rows, and prints one
table with both. Exit status: 0 when all is well, 1 when a torch row strays
from float64 (NaN, or above 5e-2 with bf16 weights, 1e-3 with f32) or the
pipeline fails, 2 for bad arguments.
"""
import argparse
import json
import math
import os
import subprocess
import sys
import tempfile
import time

try:
    import torch
    import torch.nn.functional as F
except ImportError as e:  # a clear line, not a traceback
    sys.exit(f"torch_layer.py: PyTorch is needed ({e})")

EPS = 1e-5  # cpu_stages.hpp's rmsnorm
TOLERANCE = {True: 5e-2, False: 1e-3}  # bf16 weights, f32 weights
WEIGHT_NAMES = ["attn_norm", "wq", "wk", "wv", "wo", "mlp_norm", "w_gate", "w_up", "w_down"]
NORMS = ("attn_norm", "mlp_norm")


# ---- configuration -------------------------------------------------------------
class Config:
    def __init__(self, dim=256, heads=8, mlp=688, prompt=16, tokens=32, bf16=False):
        self.dim, self.heads, self.mlp, self.prompt, self.tokens, self.bf16 = dim, heads, mlp, prompt, tokens, bf16

    @property
    def head_dim(self):
        return self.dim // self.heads

    @property
    def positions(self):
        return self.prompt + self.tokens

    def as_dict(self):
        return {k: getattr(self, k) for k in ("dim", "heads", "mlp", "prompt", "tokens", "bf16")}

    def flags(self):  # unimem_pipeline's size options
        f = []
        for k in ("dim", "heads", "mlp", "prompt", "tokens"):
            f += [f"--{k}", str(getattr(self, k))]
        return f + (["--bf16"] if self.bf16 else [])

    def shapes(self):  # model.hpp's weight_specs
        d, f = self.dim, self.mlp
        return {"attn_norm": (d,), "wq": (d, d), "wk": (d, d), "wv": (d, d), "wo": (d, d), "mlp_norm": (d,),
                "w_gate": (f, d), "w_up": (f, d), "w_down": (d, f)}


def positive(text):
    try:
        v = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}")
    if not 1 <= v <= (1 << 20):
        raise argparse.ArgumentTypeError(f"must be between 1 and {1 << 20}: {text}")
    return v


def parse_args(argv):
    p = argparse.ArgumentParser(
        prog="torch_layer.py",
        description="The pipeline example's decoder layer in PyTorch (eager and CUDA graphs): decode tokens/s, "
        "prefill time and error against float64, next to unimem_pipeline's rows.")
    p.add_argument("--preset", choices=["large"], help="dim 4096, 32 heads, MLP 11008, bf16, 128 prompt + 32 generated")
    for name, what in (("dim", "model width (default 256)"), ("heads", "attention heads (default 8)"),
                       ("mlp", "MLP width (default 688)"), ("prompt", "prompt tokens (default 16)"),
                       ("tokens", "generated tokens (default 32)")):
        p.add_argument(f"--{name}", type=positive, help=what)
    p.add_argument("--bf16", action="store_true", help="bf16 matrices (the norm vectors stay f32)")
    p.add_argument("--weights", metavar="FILE", help="a safetensors file unimem_pipeline wrote (--save-weights)")
    p.add_argument("--pipeline", metavar="PATH", help="the unimem_pipeline binary: run it first (gpu mode on CUDA, cpu "
                   "mode with --device cpu), take its weights and rows")
    p.add_argument("--repeat", type=positive, default=5, help="timed conversations per row (default 5); median by "
                   "decode time")
    p.add_argument("--device", choices=["cuda", "cpu"], help="default: cuda when available")
    p.add_argument("--json", metavar="OUT", help="also write the rows as JSON to OUT")
    a = p.parse_args(argv)

    c = Config(4096, 32, 11008, 128, 32, True) if a.preset == "large" else Config()
    for k in ("dim", "heads", "mlp", "prompt", "tokens"):
        if getattr(a, k) is not None:
            setattr(c, k, getattr(a, k))
    c.bf16 = c.bf16 or a.bf16
    if c.dim % (2 * c.heads) != 0:
        p.error("--dim must be a multiple of 2 x --heads")
    if c.positions > 8192:
        p.error("--prompt + --tokens must be at most 8192")
    if a.repeat > 100:
        p.error("--repeat must be at most 100")
    if (a.weights is None) == (a.pipeline is None):
        p.error("give one of --pipeline PATH (run unimem_pipeline, use its weights) or --weights FILE")
    if a.weights is not None and not os.path.isfile(a.weights):
        p.error(f"--weights: no such file: {a.weights}")
    if a.pipeline is not None and not (os.path.isfile(a.pipeline) and os.access(a.pipeline, os.X_OK)):
        p.error(f"--pipeline: not an executable file: {a.pipeline}")
    if a.device is None:
        a.device = "cuda" if torch.cuda.is_available() else "cpu"
    if a.device == "cuda" and not torch.cuda.is_available():
        p.error("--device cuda: torch sees no CUDA device (torch %s)" % torch.__version__)
    return a, c


# ---- weights --------------------------------------------------------------------
def read_safetensors(path):
    """name -> CPU tensor: safetensors.torch where it imports, else a small reader
    (8-byte little-endian header length, JSON header, raw little-endian data)."""
    try:
        from safetensors.torch import load_file
    except ImportError:
        load_file = None
    if load_file is not None:
        return load_file(path)
    if sys.byteorder != "little":
        raise ValueError("the fallback safetensors reader needs a little-endian machine")
    kinds = {"F32": (torch.float32, 4), "F64": (torch.float64, 8), "F16": (torch.float16, 2),
             "BF16": (torch.int16, 2)}  # BF16: the bits, viewed as bfloat16 below
    with open(path, "rb") as f:
        data = bytearray(f.read())
    if len(data) < 8:
        raise ValueError(f"{path}: not a safetensors file (shorter than 8 bytes)")
    n = int.from_bytes(data[:8], "little")
    if 8 + n > len(data):
        raise ValueError(f"{path}: header length {n} runs past the end of the file")
    header = json.loads(bytes(data[8:8 + n]))
    base, out = 8 + n, {}
    for name, e in header.items():
        if name == "__metadata__":
            continue
        if e["dtype"] not in kinds:
            raise ValueError(f"{path}: {name}: dtype {e['dtype']} not supported here")
        dtype, size = kinds[e["dtype"]]
        begin, end = e["data_offsets"]
        count = math.prod(e["shape"])
        if end - begin != count * size or base + end > len(data):
            raise ValueError(f"{path}: {name}: data_offsets {begin}..{end} do not fit shape {e['shape']}")
        if count:
            t = torch.frombuffer(data, dtype=dtype, count=count, offset=base + begin)
        else:
            t = torch.empty(0, dtype=dtype)
        if e["dtype"] == "BF16":
            t = t.view(torch.bfloat16)
        out[name] = t.reshape(e["shape"]).clone()
    return out


def load_weights(path, c):
    """The layer's tensors, checked against the configuration."""
    w = read_safetensors(path)
    missing = [n for n in WEIGHT_NAMES if n not in w]
    if missing:
        raise ValueError(f"{path}: no tensor named {', '.join(missing)} (is it a file unimem_pipeline wrote?)")
    want_matrix = torch.bfloat16 if c.bf16 else torch.float32
    for name, shape in c.shapes().items():
        t = w[name]
        if tuple(t.shape) != shape:
            raise ValueError(f"{path}: {name} has shape {list(t.shape)}, the options say {list(shape)} "
                             f"(pass the --dim/--mlp the file was written with)")
        if name in NORMS and t.dtype != torch.float32:
            raise ValueError(f"{path}: {name} is {t.dtype}, expected float32")
        if name not in NORMS and t.dtype != want_matrix:
            raise ValueError(f"{path}: {name} is {t.dtype}, not {want_matrix}: " +
                             ("leave out --bf16" if c.bf16 else "pass --bf16") + " to match the file")
        if not bool((t != 0).any()):  # never time on zeros
            raise ValueError(f"{path}: {name} is all zeros")
    return {n: w[n] for n in WEIGHT_NAMES}


def prompt_inputs(c):
    """model.hpp's input_for: sin(0.1f * float(token + 1) * float(i + 1)) in float32,
    the sine from the C library's sinf as the C++ code calls it (torch's float32
    sine differs from it in the last bit for some elements; a double sine rounded
    to float, where libm cannot be loaded, for a few)."""
    tok = torch.arange(1, c.prompt + 1, dtype=torch.float32).unsqueeze(1)
    idx = torch.arange(1, c.dim + 1, dtype=torch.float32).unsqueeze(0)
    arg = (torch.tensor(0.1, dtype=torch.float32) * tok) * idx
    try:
        import ctypes
        import ctypes.util
        sinf = ctypes.CDLL(ctypes.util.find_library("m") or "libm.so.6").sinf
        sinf.restype, sinf.argtypes = ctypes.c_float, [ctypes.c_float]
    except (OSError, AttributeError):
        return torch.sin(arg.double()).float()
    return torch.tensor([sinf(a) for a in arg.flatten().tolist()], dtype=torch.float32).view(arg.shape)


def rope_table(c):
    """cos and sin per position and pair of a head, computed once in float64 (model.hpp): [positions, head_dim/2]."""
    p = torch.arange(c.positions, dtype=torch.float64).unsqueeze(1)
    j = torch.arange(c.head_dim // 2, dtype=torch.float64).unsqueeze(0)
    angle = p / torch.pow(torch.tensor(10000.0, dtype=torch.float64), 2 * j / c.head_dim)
    return torch.cos(angle), torch.sin(angle)


# ---- the layer ------------------------------------------------------------------
def attention_explicit(q, k, v, p0):
    """q [H, m, hd] at positions p0.., k/v [H, p0 + m, hd]: causal softmax(q k^T / sqrt(hd)) v; the softmax in
    float32 (float64 for float64), as Hugging Face's eager attention does."""
    m, length = q.shape[1], k.shape[1]
    acc = torch.float64 if q.dtype == torch.float64 else torch.float32
    s = torch.matmul(q, k.transpose(1, 2)).to(acc) * (1.0 / math.sqrt(q.shape[-1]))
    if m > 1:  # row r (position p0 + r) sees positions 0 .. p0 + r
        s = s.masked_fill(torch.ones(m, length, dtype=torch.bool, device=q.device).triu(p0 + 1), float("-inf"))
    return torch.matmul(torch.softmax(s, dim=-1).to(v.dtype), v)


def attention_sdpa(q, k, v, p0):
    m, length = q.shape[1], k.shape[1]
    q4, k4, v4 = q.unsqueeze(0), k.unsqueeze(0), v.unsqueeze(0)
    if m == 1:
        o = F.scaled_dot_product_attention(q4, k4, v4)
    elif p0 == 0:
        o = F.scaled_dot_product_attention(q4, k4, v4, is_causal=True)
    else:
        keep = torch.ones(m, length, dtype=torch.bool, device=q.device).tril(p0)
        o = F.scaled_dot_product_attention(q4, k4, v4, attn_mask=keep)
    return o.squeeze(0)


HAVE_SDPA = hasattr(F, "scaled_dot_product_attention")  # torch >= 2.0


class Layer:
    """The decoder layer on one device in one dtype, with a static KV cache for all positions."""

    def __init__(self, weights, c, dtype, device, sdpa):
        self.c, self.dtype = c, dtype
        self.norm_dtype = torch.float64 if dtype == torch.float64 else torch.float32
        mat = {n: (t.to(device=device, dtype=dtype) if dtype == torch.float64 else t.to(device))
               for n, t in weights.items() if n not in NORMS}
        self.wq, self.wk, self.wv, self.wo = mat["wq"], mat["wk"], mat["wv"], mat["wo"]
        self.w_gate, self.w_up, self.w_down = mat["w_gate"], mat["w_up"], mat["w_down"]
        self.attn_norm = weights["attn_norm"].to(device=device, dtype=self.norm_dtype)
        self.mlp_norm = weights["mlp_norm"].to(device=device, dtype=self.norm_dtype)
        cos, sin = rope_table(c)
        if dtype != torch.float64:  # the table engines keep: float32, used in the activations' dtype
            cos, sin = cos.float(), sin.float()
        self.cos, self.sin = cos.to(device=device, dtype=dtype), sin.to(device=device, dtype=dtype)
        self.k_cache = torch.zeros(c.heads, c.positions, c.head_dim, dtype=dtype, device=device)
        self.v_cache = torch.zeros_like(self.k_cache)
        self.attend = attention_sdpa if sdpa else attention_explicit

    def rmsnorm(self, x, w):
        h = x.to(self.norm_dtype)
        h = h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + EPS)
        return (h * w).to(x.dtype)

    def rope(self, x, p0):
        """Rotates the pairs (2i, 2i+1) of each head (cpu_stages.hpp's rope)."""
        m, c = x.shape[0], self.c
        cs = self.cos[p0:p0 + m].unsqueeze(1)
        sn = self.sin[p0:p0 + m].unsqueeze(1)
        pairs = x.view(m, c.heads, c.head_dim // 2, 2)
        a, b = pairs[..., 0], pairs[..., 1]
        return torch.stack((a * cs - b * sn, a * sn + b * cs), dim=-1).view(m, c.dim)

    def __call__(self, x, p0):
        """Rows x [m, dim] at positions p0 .. p0 + m - 1 -> their outputs; writes their KV cache rows."""
        c, m = self.c, x.shape[0]
        heads = lambda t: t.view(m, c.heads, c.head_dim).transpose(0, 1)  # noqa: E731
        h = self.rmsnorm(x, self.attn_norm)
        q = self.rope(F.linear(h, self.wq), p0)
        self.k_cache[:, p0:p0 + m] = heads(self.rope(F.linear(h, self.wk), p0))
        self.v_cache[:, p0:p0 + m] = heads(F.linear(h, self.wv))
        end = p0 + m
        attn = self.attend(heads(q), self.k_cache[:, :end], self.v_cache[:, :end], p0)
        x = x + F.linear(attn.transpose(0, 1).reshape(m, c.dim), self.wo)
        h = self.rmsnorm(x, self.mlp_norm)
        return x + F.linear(F.silu(F.linear(h, self.w_gate)) * F.linear(h, self.w_up), self.w_down)


# ---- conversations --------------------------------------------------------------
class Run:
    """One way of running the recurrence: prefill in one step, then one token per step;
    each generated token's input is the previous position's output."""

    def __init__(self, layer, c, inputs, device):
        self.layer, self.c, self.device = layer, c, device
        self.inputs = inputs.to(device=device, dtype=layer.dtype)
        self.outs = torch.empty(c.positions, c.dim, dtype=layer.dtype, device=device)
        # Each token's output goes to the host, as unimem_pipeline's does (where a
        # sampler would read it): a blocking copy into pinned memory per token.
        self.host_out = torch.empty(c.dim, dtype=layer.dtype, pin_memory=device.type == "cuda")

    def sync(self):
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def decode_step(self, pos):
        self.outs[pos:pos + 1] = self.layer(self.outs[pos - 1:pos], pos)

    def decode(self):
        for pos in range(self.c.prompt, self.c.positions):
            self.decode_step(pos)
            self.host_out.copy_(self.outs[pos])

    def prefill(self):
        self.outs[:self.c.prompt] = self.layer(self.inputs, 0)

    def converse(self):
        """-> (prefill seconds, decode seconds); outputs in self.outs."""
        self.outs.fill_(float("nan"))  # unwritten rows show in the error
        self.sync()
        t0 = time.perf_counter()
        self.prefill()
        self.sync()
        t1 = time.perf_counter()
        self.decode()
        self.sync()
        t2 = time.perf_counter()
        return t1 - t0, t2 - t1


class GraphRun(Run):
    """The decode step captured in CUDA graphs, one per position (the attention's length
    differs), all in one memory pool; each reads the previous position's row of the
    static outputs and writes its own, so a token is one replay. Prefill stays eager."""

    def __init__(self, layer, c, inputs, device):
        super().__init__(layer, c, inputs, device)
        self.prefill()  # sane data in the cache and outputs before warming up
        Run.decode(self)
        self.sync()
        side = torch.cuda.Stream(device)
        side.wait_stream(torch.cuda.current_stream(device))
        with torch.cuda.stream(side):  # torch wants warm-up before capture, on a side stream
            for _ in range(2):
                Run.decode(self)
        torch.cuda.current_stream(device).wait_stream(side)
        self.sync()
        pool = torch.cuda.graph_pool_handle()
        self.graphs = []
        for pos in range(c.prompt, c.positions):
            g = torch.cuda.CUDAGraph()
            with torch.cuda.graph(g, pool=pool):
                Run.decode_step(self, pos)
            self.graphs.append(g)
        self.sync()

    def decode(self):
        for pos, g in zip(range(self.c.prompt, self.c.positions), self.graphs):
            g.replay()
            self.host_out.copy_(self.outs[pos])


def relative_error(out, ref):
    out = out.to(device=ref.device, dtype=torch.float64)
    return float(torch.linalg.vector_norm(out - ref) / torch.linalg.vector_norm(ref))


def reference(weights, c, device):
    """The same recurrence in float64 (RoPE's angles unrounded, as reference.cpp computes them)."""
    layer = Layer(weights, c, torch.float64, device, sdpa=False)
    run = Run(layer, c, prompt_inputs(c), device)
    run.converse()
    return run.outs.clone()


def measure(runs, repeat):
    """One untimed conversation each, then `repeat` conversations each, alternating; per run the
    median conversation by decode time: (prefill s, decode s, outputs)."""
    for r in runs.values():
        r.converse()
    times = {name: [] for name in runs}
    for _ in range(repeat):
        for name, r in runs.items():
            prefill, decode = r.converse()
            times[name].append((decode, prefill, r.outs.detach().to("cpu", copy=True)))
    result = {}
    for name, v in times.items():
        v.sort(key=lambda t: t[0])
        decode, prefill, outs = v[len(v) // 2]
        result[name] = (prefill, decode, outs)
    return result


def copy_bandwidth(device):
    """Bytes per second a large device-to-device copy moves, read and write counted."""
    free, _ = torch.cuda.mem_get_info(device)
    n = max(1 << 24, min(1 << 30, free // 4))
    a = torch.randint(0, 256, (n,), dtype=torch.uint8, device=device)
    b = torch.empty_like(a)
    b.copy_(a)
    torch.cuda.synchronize(device)
    start, stop = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    reps = 10
    start.record()
    for _ in range(reps):
        b.copy_(a)
    stop.record()
    stop.synchronize()
    seconds = start.elapsed_time(stop) / 1e3
    del a, b
    return 2 * n * reps / seconds


# ---- unimem_pipeline ------------------------------------------------------------
def run_pipeline(path, c, mode, repeat, workdir):
    """Runs unimem_pipeline; -> (weights file, its JSON report, the rows of `mode`)."""
    weights, report = os.path.join(workdir, "weights.safetensors"), os.path.join(workdir, "pipeline.json")
    cmd = [path, "--mode", mode] + c.flags() + ["--repeat", str(repeat), "--save-weights", weights,
                                                 "--json", report]
    print("running:", " ".join(cmd), flush=True)
    t = time.perf_counter()
    p = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    if p.returncode != 0:
        tail = "\n".join(p.stdout.splitlines()[-30:])
        print(f"{tail}\nFAILED: unimem_pipeline exited with status {p.returncode}", file=sys.stderr)
        sys.exit(1)
    print(f"  done in {time.perf_counter() - t:.1f} s", flush=True)
    for f in (weights, report):
        if not os.path.isfile(f):
            raise RuntimeError(f"unimem_pipeline succeeded but wrote no {f} (does it know --save-weights and --json?)")
    with open(report) as f:
        data = json.load(f)
    got = data.get("config", {})
    if {k: got.get(k) for k in c.as_dict()} != c.as_dict():
        raise RuntimeError(f"unimem_pipeline's JSON config {got} is not the one asked for {c.as_dict()}")
    modes = [m for m in data.get("modes", []) if m.get("mode") == mode]
    if not modes or not modes[0].get("rows"):
        raise RuntimeError(f"unimem_pipeline's JSON has no rows for mode {mode}")
    return weights, data, modes[0]["rows"]


# ---- main -----------------------------------------------------------------------
def fmt(v, spec):
    return "-" if v is None or (isinstance(v, float) and math.isnan(v)) else format(v, spec)


def main(argv):
    args, c = parse_args(argv)
    device = torch.device(args.device)
    torch.manual_seed(0)
    print(f"torch_layer: one decoder layer, dim {c.dim}, {c.heads} heads, MLP {c.mlp}, "
          f"{'bf16' if c.bf16 else 'f32'} weights, {c.prompt} prompt + {c.tokens} generated tokens")
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU (%d threads)" % torch.get_num_threads()
    print(f"device: {name}; torch {torch.__version__}; attention: "
          f"{'scaled_dot_product_attention' if HAVE_SDPA else 'explicit matmuls + softmax (no SDPA in this torch)'}")

    with tempfile.TemporaryDirectory(prefix="torch_layer_") as workdir:
        pipeline_rows, pipeline_json = [], None
        weights_file = args.weights
        if args.pipeline:
            mode = "gpu" if device.type == "cuda" else "cpu"
            weights_file, pipeline_json, pipeline_rows = run_pipeline(args.pipeline, c, mode, args.repeat, workdir)
            where = f" on {pipeline_json.get('gpu', '?')}" if mode == "gpu" else ""
            print(f"unimem_pipeline ({mode} mode{where}): {len(pipeline_rows)} rows")
        weights = load_weights(weights_file, c)

    with torch.inference_mode():
        ref = reference(weights, c, device)
        if not bool(torch.isfinite(ref).all()):
            raise RuntimeError("the float64 reference is not finite")
        if pipeline_json is not None and pipeline_json.get("reference_norm") is not None:
            # Where the pipeline reports its own float64 reference's norm: the two references agree.
            mine, theirs = float(torch.linalg.vector_norm(ref)), float(pipeline_json["reference_norm"])
            if not abs(mine - theirs) <= 1e-9 * abs(theirs):
                print(f"FAILED: the float64 references differ: norm {mine!r} here, {theirs!r} in unimem_pipeline",
                      file=sys.stderr)
                return 1

        dtype = torch.bfloat16 if c.bf16 else torch.float32
        layer = Layer(weights, c, dtype, device, HAVE_SDPA)
        inputs = prompt_inputs(c)
        runs = {"torch eager": Run(layer, c, inputs, device)}
        if device.type == "cuda":
            runs["torch + CUDA graphs"] = GraphRun(layer, c, inputs, device)
        measured = measure(runs, args.repeat)
        if device.type != "cuda":
            print("skipped: no CUDA device (torch + CUDA graphs)")

        rows = []  # path, source, tokens/s, prefill ms, error
        for r in pipeline_rows:
            rows.append({"path": r.get("path", "?"), "source": "unimem_pipeline", "tokens_per_s": r.get("tokens_per_s"),
                         "prefill_ms": r.get("prefill_ms"), "error": r.get("error")})
        failed = []
        tolerance = TOLERANCE[c.bf16]
        for path, (prefill, decode, outs) in measured.items():
            err = relative_error(outs, ref)
            rows.append({"path": path, "source": "torch", "tokens_per_s": c.tokens / decode,
                         "prefill_ms": prefill * 1e3, "error": err})
            if not err <= tolerance:  # NaN fails too
                failed.append(f"{path}: error {err:.2e} vs float64 is above {tolerance:.0e}")

        # What reading the weights once per token costs at the device's copy bandwidth.
        weight_bytes = sum(t.numel() * t.element_size() for t in weights.values())
        hbm = {"weight_bytes_per_token": weight_bytes}
        if device.type == "cuda":
            bw = copy_bandwidth(device)
            hbm.update(copy_bytes_per_s=bw, tokens_per_s_bound=bw / weight_bytes)

    # The ratio's yardstick: the row named unimem (else the first whose name starts with it).
    named = [r for r in rows if r["source"] == "unimem_pipeline" and r["tokens_per_s"]]
    base = next((r for r in named if r["path"] == "unimem"), None) or \
        next((r for r in named if r["path"].startswith("unimem")), None)
    unimem = base["tokens_per_s"] if base else None
    print(f"\n{args.repeat} conversations per row; the median's figures (by decode time)")
    head = "unimem/row" if unimem else ""
    print(f"{'path':<24} {'tokens/s':>10} {head:>11} {'prefill ms':>11} {'error vs f64':>13}")
    for r in rows:
        ratio = unimem / r["tokens_per_s"] if unimem and r["tokens_per_s"] else None
        print(f"{r['path']:<24} {fmt(r['tokens_per_s'], '10.1f'):>10} "
              f"{(fmt(ratio, '10.2f') + 'x') if ratio else '':>11} {fmt(r['prefill_ms'], '11.2f'):>11} "
              f"{fmt(r['error'], '13.2e'):>13}")
    if unimem:
        print("(unimem/row: unimem's tokens/s over the row's; above 1 means unimem generates faster)")
    line = f"HBM bound: {weight_bytes / 1e6:.1f} MB of weights per token"
    if "copy_bytes_per_s" in hbm:
        line += (f"; at {hbm['copy_bytes_per_s'] / 1e9:.0f} GB/s (device-to-device copy, read + write counted) "
                 f"reading them once per token gives {hbm['tokens_per_s_bound']:.0f} tokens/s")
    print(line)

    if args.json:
        clean = lambda v: None if isinstance(v, float) and not math.isfinite(v) else v  # noqa: E731
        with open(args.json, "w") as f:
            json.dump({"config": c.as_dict(), "device": name, "torch": torch.__version__,
                       "attention": "sdpa" if HAVE_SDPA else "explicit", "repeat": args.repeat,
                       "rows": [{k: clean(v) for k, v in r.items()} for r in rows], "hbm": hbm,
                       "pipeline": pipeline_json}, f, indent=2)
            f.write("\n")
    for f in failed:
        print("FAILED:", f, file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    try:
        sys.exit(main(sys.argv[1:]))
    except (ValueError, RuntimeError, OSError) as e:
        print(f"torch_layer.py: {e}", file=sys.stderr)
        sys.exit(1)
