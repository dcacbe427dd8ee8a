"""unimem.transformers.from_pretrained against transformers' own loader, on the
GPU machine (PyTorch with CUDA, transformers 5, safetensors, unimem installed):

    python3 python/benchmarks/transformers_load.py FOLDER [--repeat N] [--small-only]

1. Makes, where FOLDER lacks them, three checkpoints with random weights
   (save_pretrained, sharded safetensors): a 7B-shaped Llama (hidden 4096,
   intermediate 11008, 32 layers, 32 heads, vocab 32000, bf16, 5 GB shards;
   filled on the GPU), a small Llama (tied embeddings, bf16) and a small Qwen2
   (untied, float32: loaded as bf16 it is converted on the GPU).
2. Checks, per checkpoint in a fresh process, that
   unimem.transformers.from_pretrained(path, device="cuda", dtype=torch.bfloat16)
   and AutoModelForCausalLM.from_pretrained(path, device_map="cuda",
   dtype=torch.bfloat16) give bit-identical parameters and buffers and
   identical logits for a fixed prompt.
3. Times, on the 7B checkpoint with its files in the page cache, each
   measurement in a fresh process (torch imported and its CUDA context made
   before the clock starts; transformers, its Llama and Qwen2 model modules,
   safetensors and unimem imported too):
   unimem.transformers.from_pretrained, AutoModelForCausalLM.from_pretrained,
   unimem.load_safetensors alone (no model), safetensors.torch.load_file per
   shard, and the ceiling (one pinned host -> device copy of the same bytes).
   Prints seconds, GB/s and ratios; then, in a run of its own, the host
   memory the unimem load grew by (/proc/self/status sampled every ms: the
   anonymous and shared memory the process owns; apart, the file pages it
   maps from the page cache, which unimem registers to copy from and which
   are not a copy of the data; and VmHWM, both together).

Everything printed also goes to FOLDER/transformers_load.log. Ends with
"verdict: PASS" when every check is identical, unimem is >= 5x transformers
and its host memory growth is <= 10% of the model; else "verdict: FAIL".
"""
import argparse
import json
import os
import statistics
import subprocess
import sys
import threading
import time

PROMPT = [[1, 306, 4658, 278, 6593, 310, 2834, 338, 263, 1243, 29889, 13, 29871, 450, 1234]]
BIG = "llama-7b-shaped-bf16"
SMALL = ("llama-small-tied-bf16", "qwen2-small-untied-f32")


# ------------------------------------------------------------------------------------------ children


def _child_setup():
    import torch
    torch.empty(1, device="cuda")
    torch.cuda.synchronize()
    # The libraries, imported in full before the clock (transformers imports its
    # model modules lazily, on first use: a one-off cost per process that both
    # loaders would pay and that is not loading).
    import safetensors.torch  # noqa: F401
    import transformers
    import transformers.conversion_mapping  # noqa: F401
    import unimem.transformers  # noqa: F401
    for name in ("AutoConfig", "AutoModelForCausalLM", "LlamaForCausalLM", "Qwen2ForCausalLM", "GenerationConfig"):
        getattr(transformers, name)
    return torch


def make(kind, folder):
    import torch
    import transformers
    common = dict(max_position_embeddings=4096, rms_norm_eps=1e-5)
    if kind == BIG:
        config = transformers.LlamaConfig(hidden_size=4096, intermediate_size=11008, num_hidden_layers=32,
                                          num_attention_heads=32, num_key_value_heads=32, vocab_size=32000,
                                          tie_word_embeddings=False, **common)
        dtype, shard = torch.bfloat16, "5GB"
    elif kind == SMALL[0]:
        config = transformers.LlamaConfig(hidden_size=256, intermediate_size=688, num_hidden_layers=4,
                                          num_attention_heads=8, num_key_value_heads=4, vocab_size=32000,
                                          tie_word_embeddings=True, **common)
        dtype, shard = torch.bfloat16, "4MB"
    else:
        config = transformers.Qwen2Config(hidden_size=256, intermediate_size=688, num_hidden_layers=4,
                                          num_attention_heads=8, num_key_value_heads=4, vocab_size=32000,
                                          tie_word_embeddings=False, **common)
        dtype, shard = torch.float32, "8MB"
    with torch.device("meta"):
        model = transformers.AutoModelForCausalLM.from_config(config, dtype=dtype)
    model.to_empty(device="cuda")
    model.tie_weights()  # to_empty gave the tied head a tensor of its own
    generator = torch.Generator(device="cuda").manual_seed(0)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.dim() == 1:
                p.normal_(1.0, 0.1, generator=generator)  # norms
            else:
                p.normal_(0.0, 0.02, generator=generator)
    torch.cuda.synchronize()
    model.save_pretrained(folder, safe_serialization=True, max_shard_size=shard)
    open(os.path.join(folder, ".complete"), "w").close()


def bits(t):
    return t.detach().contiguous().view(-1).view(__import__("torch").uint8)


def check(path):
    torch = _child_setup()
    import transformers
    from unimem import transformers as ut
    ref = transformers.AutoModelForCausalLM.from_pretrained(path, device_map="cuda", dtype=torch.bfloat16)
    got = ut.from_pretrained(path, device="cuda", dtype=torch.bfloat16)
    want = dict(ref.named_parameters(remove_duplicate=False)) | dict(ref.named_buffers(remove_duplicate=False))
    have = dict(got.named_parameters(remove_duplicate=False)) | dict(got.named_buffers(remove_duplicate=False))
    different = sorted(set(want) ^ set(have))
    for name in set(want) & set(have):
        a, b = want[name], have[name]
        if (a.dtype, a.shape, a.device, a.requires_grad) != (b.dtype, b.shape, b.device, b.requires_grad) or \
                not torch.equal(bits(a), bits(b)):
            different.append(name)
    ids = torch.tensor(PROMPT, device="cuda")
    with torch.no_grad():
        la, lb = ref(ids).logits, got(ids).logits
    return {"tensors": len(want), "different": sorted(different)[:5], "n_different": len(different),
            "logits_identical": bool(torch.equal(la, lb)), "logits_finite": bool(torch.isfinite(la).all()),
            "type": type(got).__name__, "same_type": type(got) is type(ref), "eval": not got.training,
            "tied_same": (got.lm_head.weight is got.model.embed_tokens.weight) ==
                         (ref.lm_head.weight is ref.model.embed_tokens.weight)}


class HostMemory:
    """Peak growth of the process's own memory (RssAnon + RssShmem) and of
    the file pages it maps (RssFile), sampled every millisecond."""

    def __init__(self):
        try:
            with open("/proc/self/clear_refs", "w") as f:
                f.write("5")  # VmHWM := VmRSS now
        except OSError:
            pass
        self.base = self.read()
        self.peak = dict(self.base)
        self.running = True
        self.thread = threading.Thread(target=self.run, daemon=True)
        self.thread.start()

    @staticmethod
    def read():
        out = {}
        with open("/proc/self/status") as f:
            for line in f:
                key, _, value = line.partition(":")
                if key in ("RssAnon", "RssFile", "RssShmem", "VmRSS", "VmHWM"):
                    out[key] = int(value.split()[0]) * 1024
        return out

    def run(self):
        while self.running:
            now = self.read()
            own = now["RssAnon"] + now["RssShmem"]
            if own > self.peak["RssAnon"] + self.peak["RssShmem"]:
                self.peak["RssAnon"], self.peak["RssShmem"] = now["RssAnon"], now["RssShmem"]
            self.peak["RssFile"] = max(self.peak["RssFile"], now["RssFile"])
            time.sleep(0.001)

    def stop(self):
        self.running = False
        self.thread.join()
        now = self.read()
        own = now["RssAnon"] + now["RssShmem"]
        peak_own = max(own, self.peak["RssAnon"] + self.peak["RssShmem"])
        return {"own_growth": peak_own - self.base["RssAnon"] - self.base["RssShmem"],
                "rss_peak_growth": now["VmHWM"] - self.base["VmRSS"],
                "file_growth": max(now["RssFile"], self.peak["RssFile"]) - self.base["RssFile"]}


def timed(method, path):
    torch = _child_setup()
    import safetensors.torch
    import transformers
    import unimem
    from unimem import transformers as ut
    index = os.path.join(path, "model.safetensors.index.json")
    shards = sorted({os.path.join(path, f) for f in json.load(open(index))["weight_map"].values()})
    nbytes = sum(os.path.getsize(s) for s in shards)
    memory = None
    if method == "ceiling":
        host = torch.empty(nbytes, dtype=torch.uint8, pin_memory=True)
        dev = torch.empty(nbytes, dtype=torch.uint8, device="cuda")
        times = []
        for _ in range(3):
            start = time.perf_counter()
            dev.copy_(host, non_blocking=True)
            torch.cuda.synchronize()
            times.append(time.perf_counter() - start)
        return {"seconds": min(times), "bytes": nbytes}
    if method.endswith("+memory"):
        # Its own runs: the sampling thread takes the GIL now and then.
        method = method.removesuffix("+memory")
        memory = HostMemory()
    if method == "unimem":
        start = time.perf_counter()
        model = ut.from_pretrained(path, device="cuda", dtype=torch.bfloat16)
    elif method == "unimem-tensors":
        start = time.perf_counter()
        model = unimem.load_safetensors(index, device="cuda")
    elif method == "transformers":
        start = time.perf_counter()
        model = transformers.AutoModelForCausalLM.from_pretrained(path, device_map="cuda", dtype=torch.bfloat16)
    elif method == "safetensors":
        start = time.perf_counter()
        model = [safetensors.torch.load_file(s, device="cuda") for s in shards]
    else:
        raise SystemExit(f"unknown method {method}")
    torch.cuda.synchronize()
    seconds = time.perf_counter() - start
    out = {"seconds": seconds, "bytes": nbytes}
    if memory is not None:
        out.update(memory.stop())
    del model
    return out


# ------------------------------------------------------------------------------------------ parent


class Log:
    def __init__(self, path):
        self.file = open(path, "w")

    def __call__(self, *args):
        text = " ".join(str(a) for a in args)
        print(text, flush=True)
        self.file.write(text + "\n")
        self.file.flush()


def child(log, *args, timeout=300):
    run = subprocess.run([sys.executable, os.path.abspath(__file__), "--child", *args], capture_output=True,
                         text=True, timeout=timeout)
    if run.returncode != 0:
        log(f"  child {' '.join(args)} failed (exit {run.returncode}):\n{run.stderr[-4000:]}")
        return None
    lines = [line for line in run.stdout.splitlines() if line.startswith("RESULT ")]
    return json.loads(lines[-1][7:]) if lines else {}


def warm(path):
    for name in os.listdir(path):
        if name.endswith(".safetensors"):
            with open(os.path.join(path, name), "rb") as f:
                while f.read(64 << 20):
                    pass


def main():
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        what, args = sys.argv[2], sys.argv[3:]
        result = {"make": lambda: make(*args), "check": lambda: check(*args), "time": lambda: timed(*args)}[what]()
        print("RESULT " + json.dumps(result or {}), flush=True)
        return
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("folder")
    parser.add_argument("--repeat", type=int, default=3, help="fresh processes per loader (default 3)")
    parser.add_argument("--small-only", action="store_true", help="checks on the small checkpoints only")
    options = parser.parse_args()
    os.makedirs(options.folder, exist_ok=True)
    log = Log(os.path.join(options.folder, "transformers_load.log"))
    versions = subprocess.run([sys.executable, "-c", "import torch, transformers, safetensors, unimem; "
                               "print(f'torch {torch.__version__}, transformers {transformers.__version__}, "
                               "safetensors {safetensors.__version__}, '"
                               "f'{torch.cuda.get_device_name(0)}; unimem from {unimem.__file__}')"],
                              capture_output=True, text=True)
    log(time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()), versions.stdout.strip() or versions.stderr[-2000:])
    ok = True
    names = list(SMALL) + ([] if options.small_only else [BIG])
    for name in names:
        path = os.path.join(options.folder, name)
        if not os.path.exists(os.path.join(path, ".complete")):
            start = time.perf_counter()
            if child(log, "make", name, path, timeout=400) is None:
                return 1
            log(f"made {path} in {time.perf_counter() - start:.1f} s")
        warm(path)
        size = sum(os.path.getsize(os.path.join(path, f)) for f in os.listdir(path) if f.endswith(".safetensors"))
        result = child(log, "check", path)
        good = bool(result) and result["n_different"] == 0 and result["logits_identical"] and \
            result["same_type"] and result["eval"] and result["tied_same"]
        ok &= good
        log(f"check {name} ({size / 2**30:.2f} GiB): {'identical' if good else 'DIFFERENT'}: {result}")
    if options.small_only:
        log("verdict:", "PASS" if ok else "FAIL")
        return 0 if ok else 1

    path = os.path.join(options.folder, BIG)
    warm(path)
    rows = {}
    plan = [("ceiling", 1), ("unimem", options.repeat), ("transformers", options.repeat),
            ("unimem-tensors", options.repeat), ("safetensors", max(1, options.repeat - 1)),
            ("unimem+memory", 1)]
    for method, count in plan:
        for _ in range(count):
            result = child(log, "time", method, path)
            if result is None:
                return 1
            rows.setdefault(method, []).append(result)
            extra = ""
            if "own_growth" in result:
                extra = (f"; host memory +{result['own_growth'] / 2**20:.0f} MiB own, "
                         f"+{result['file_growth'] / 2**20:.0f} MiB page cache mapped, "
                         f"VmHWM +{result['rss_peak_growth'] / 2**20:.0f} MiB")
            log(f"  {method:<15} {result['seconds']:.3f} s  {result['bytes'] / result['seconds'] / 1e9:6.2f} GB/s{extra}")
    nbytes = rows["unimem"][0]["bytes"]
    best = {m: min(r["seconds"] for r in rs) for m, rs in rows.items()}
    median = {m: statistics.median(r["seconds"] for r in rs) for m, rs in rows.items()}
    what = {
        "ceiling": "ceiling: one pinned host -> device copy of the same bytes",
        "unimem": "unimem.transformers.from_pretrained(device='cuda', dtype=bf16)",
        "unimem-tensors": "unimem.load_safetensors(index, device='cuda'), tensors, no model",
        "transformers": "AutoModelForCausalLM.from_pretrained(device_map='cuda', dtype=bf16)",
        "safetensors": "safetensors.torch.load_file(shard, device='cuda') per shard",
    }
    log(f"\n{BIG}: {nbytes / 2**30:.2f} GiB; fresh process each, files in the page cache")
    log("| loader | best s | median s | GB/s (best) | x unimem model load (best) |\n|---|---|---|---|---|")
    for method in ("ceiling", "unimem", "unimem-tensors", "transformers", "safetensors"):
        log(f"| {what[method]} | {best[method]:.3f} | {median[method]:.3f} | {nbytes / best[method] / 1e9:.2f} | "
            f"{best[method] / best['unimem']:.2f} |")
    speedup = best["transformers"] / best["unimem"]
    speedup_median = median["transformers"] / median["unimem"]
    own = max(r["own_growth"] for r in rows["unimem+memory"])
    mapped = max(r["file_growth"] for r in rows["unimem+memory"])
    hwm = max(r["rss_peak_growth"] for r in rows["unimem+memory"])
    log(f"\ntransformers / unimem: {speedup:.2f}x (best), {speedup_median:.2f}x (median); goal >= 5x")
    log(f"safetensors / unimem: {best['safetensors'] / best['unimem']:.2f}x; unimem at "
        f"{best['ceiling'] / best['unimem']:.2f} of the pinned ceiling; the model around the tensors costs "
        f"{(best['unimem'] - best['unimem-tensors']) * 1e3:.0f} ms")
    log(f"host memory growth during the unimem load, peak: {own / 2**20:.0f} MiB own "
        f"({own / nbytes:.1%} of the model; goal <= 10%), {mapped / 2**20:.0f} MiB of page cache mapped "
        "(the files themselves, registered with CUDA to copy from: not a copy); "
        f"VmHWM growth, both together: {hwm / 2**20:.0f} MiB")
    ok &= speedup >= 5 and own <= 0.1 * nbytes
    log("verdict:", "PASS" if ok else "FAIL")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
