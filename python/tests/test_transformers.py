"""unimem.transformers against transformers' own from_pretrained, on small
models made here from configs (random weights, sharded safetensors). Runs on
the CPU wherever transformers imports (CI: scripts/venv-check.sh), and on the
GPU where there is one; skipped visibly elsewhere."""
import gc
import json
import os
import shutil

import pytest

import unimem

torch = pytest.importorskip("torch", reason="skipped: torch does not import here")
transformers = pytest.importorskip("transformers", reason="skipped: transformers does not import here")
st = pytest.importorskip("safetensors.torch", reason="skipped: the safetensors package is not installed")
if not hasattr(transformers.PreTrainedModel, "initialize_weights"):
    pytest.skip(f"skipped: transformers {transformers.__version__} is older than 5", allow_module_level=True)

from unimem import transformers as ut  # noqa: E402

GPU = unimem.gpu_available() and torch.cuda.is_available()
needs_gpu = pytest.mark.skipif(not GPU, reason="skipped: no CUDA device")
PROMPT = [[1, 17, 42, 5, 99, 3, 250, 7]]


def test_import_unimem_does_not_import_transformers():
    code = ("import sys, unimem; assert 'transformers' not in sys.modules, 'transformers'; "
            "assert 'unimem.transformers' not in sys.modules, 'unimem.transformers'")
    import subprocess
    import sys
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert run.returncode == 0, run.stderr


def tiny(kind, tied, **more):
    common = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                  num_key_value_heads=2, vocab_size=256, max_position_embeddings=128, tie_word_embeddings=tied)
    common.update(more)
    if kind == "llama":
        return transformers.LlamaConfig(**common)
    return transformers.Qwen2Config(**common)


def make(folder, config, dtype, shard="40KB", seed=0):
    """A model with random weights saved as transformers saves it: sharded safetensors."""
    torch.manual_seed(seed)
    model = transformers.AutoModelForCausalLM.from_config(config, dtype=dtype)
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0, 0.5)  # norms too: all ones would hide a missed tensor
    model.save_pretrained(folder, safe_serialization=True, max_shard_size=shard)
    return str(folder)


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    root = tmp_path_factory.mktemp("models")
    return {
        "llama-tied-bf16": make(root / "llama", tiny("llama", True), torch.bfloat16),
        "qwen2-untied-f32": make(root / "qwen2", tiny("qwen2", False), torch.float32),
        "llama-untied-f16-one-file": make(root / "llama1", tiny("llama", False), torch.float16, shard="50MB"),
        "llama-tied-f32-one-file": make(root / "llama2", tiny("llama", True), torch.float32, shard="50MB"),
    }


def single_file(src, dst, edit):
    """A copy of a one-file checkpoint with its tensors edited."""
    shutil.copytree(src, dst)
    tensors = st.load_file(os.path.join(dst, "model.safetensors"))
    edit(tensors)
    st.save_file(tensors, os.path.join(dst, "model.safetensors"), metadata={"format": "pt"})
    return str(dst)


def bits(t):
    return t.detach().contiguous().view(-1).view(torch.uint8)


def assert_same_model(ref, got):
    """Every parameter and buffer (non-persistent ones too) bit-identical, same
    dtype and device; ties, requires_grad and eval mode as transformers has them."""
    assert type(got) is type(ref)
    want = dict(ref.named_parameters(remove_duplicate=False)) | dict(ref.named_buffers(remove_duplicate=False))
    have = dict(got.named_parameters(remove_duplicate=False)) | dict(got.named_buffers(remove_duplicate=False))
    assert want.keys() == have.keys()
    for name, a in want.items():
        b = have[name]
        assert (b.dtype, b.shape, b.device, b.requires_grad) == (a.dtype, a.shape, a.device, a.requires_grad), name
        assert torch.equal(bits(a), bits(b)), name
    assert ref.state_dict().keys() == got.state_dict().keys()
    tied = ref.lm_head.weight is ref.model.embed_tokens.weight
    assert (got.lm_head.weight is got.model.embed_tokens.weight) == tied
    assert got.training is ref.training is False
    ids = torch.tensor(PROMPT, device=next(ref.parameters()).device)
    with torch.no_grad():
        assert torch.equal(ref(ids).logits, got(ids).logits)


@pytest.fixture
def loaded(monkeypatch):
    """The data pointers of every tensor unimem.load_safetensors returns (the
    real one, called through)."""
    pointers = set()
    real = unimem.load_safetensors

    def spy(*args, **kwargs):
        out = real(*args, **kwargs)
        pointers.update(t.data_ptr() for t in out.values())
        return out
    monkeypatch.setattr(unimem, "load_safetensors", spy)
    return pointers


def not_copied(model, loaded):
    """Every parameter is a tensor unimem loaded, not a copy of one."""
    return bool(loaded) and {p.data_ptr() for p in model.parameters()} <= loaded


def one_allocation(model):
    """True if every parameter lies in one span of memory no larger than their
    bytes plus alignment: the loaded memory itself, not per-tensor copies."""
    spans = sorted((p.data_ptr(), p.data_ptr() + p.nbytes) for p in set(model.parameters()))
    total = sum(e - s for s, e in spans)
    return spans[-1][1] - spans[0][0] <= total + 4096 * len(spans)


@pytest.mark.parametrize("name", ["llama-tied-bf16", "qwen2-untied-f32", "llama-untied-f16-one-file",
                                  "llama-tied-f32-one-file"])
def test_cpu_model_is_bit_identical_to_from_pretrained(models, name, loaded):
    ref = transformers.AutoModelForCausalLM.from_pretrained(models[name])
    got = ut.from_pretrained(models[name], device="cpu")
    assert_same_model(ref, got)
    assert got.config.dtype == ref.config.dtype
    assert got.generation_config.to_dict() == ref.generation_config.to_dict()
    assert not_copied(got, loaded)


@pytest.mark.parametrize("dtype", [torch.bfloat16, "float16"])
def test_cpu_dtype_conversion_matches_from_pretrained(models, dtype):
    ref = transformers.AutoModelForCausalLM.from_pretrained(models["qwen2-untied-f32"], dtype=dtype)
    got = ut.from_pretrained(models["qwen2-untied-f32"], device="cpu", dtype=dtype)
    assert next(got.parameters()).dtype == ref.dtype != torch.float32
    assert_same_model(ref, got)


def test_the_model_class_is_the_one_asked_for(models):
    ref = transformers.LlamaForCausalLM.from_pretrained(models["llama-tied-bf16"])
    got = ut.from_pretrained(models["llama-tied-bf16"], device="cpu", model_class=transformers.LlamaForCausalLM)
    assert_same_model(ref, got)
    base = ut.from_pretrained(models["llama-tied-bf16"], device="cpu", model_class=transformers.AutoModel)
    assert type(base) is transformers.LlamaModel
    assert torch.equal(bits(base.embed_tokens.weight), bits(ref.model.embed_tokens.weight))


def test_a_checkpoint_without_the_base_model_prefix(models, tmp_path):
    """transformers adds the missing "model." prefix; so does unimem."""
    src = models["llama-untied-f16-one-file"]
    folder = single_file(src, tmp_path / "bare", lambda t: t.update(
        {k.removeprefix("model."): t.pop(k) for k in list(t) if k.startswith("model.")}))
    assert "model.norm.weight" not in st.load_file(os.path.join(folder, "model.safetensors"))
    ref = transformers.AutoModelForCausalLM.from_pretrained(folder)
    got = ut.from_pretrained(folder, device="cpu")
    assert_same_model(ref, got)


@pytest.mark.parametrize("case", ["both, different", "both, equal", "only the target"])
def test_tied_weights_are_tied_as_transformers_ties_them(models, tmp_path, case):
    """A tied config whose checkpoint has the head too: tied if it equals the
    embedding, else left untied; with the head alone, the embedding is tied to it."""
    def edit(t):
        embedding = t["model.embed_tokens.weight"]
        if case == "both, different":
            t["lm_head.weight"] = embedding.flip(0).contiguous()
        elif case == "both, equal":
            t["lm_head.weight"] = embedding.clone()
        else:
            t["lm_head.weight"] = t.pop("model.embed_tokens.weight")
    folder = single_file(models["llama-tied-f32-one-file"], tmp_path / "m", edit)
    ref = transformers.AutoModelForCausalLM.from_pretrained(folder)
    got = ut.from_pretrained(folder, device="cpu")
    assert (ref.lm_head.weight is ref.model.embed_tokens.weight) == (case != "both, different")
    assert_same_model(ref, got)


def test_load_into_a_model_built_on_meta(models, loaded):
    path = models["qwen2-untied-f32"]
    config = transformers.AutoConfig.from_pretrained(path)
    with torch.device("meta"):
        model = transformers.AutoModelForCausalLM.from_config(config)
    assert ut.load_into(model, path, device="cpu") is model
    model.eval()
    assert_same_model(transformers.AutoModelForCausalLM.from_pretrained(path), model)
    assert not_copied(model, loaded)


def test_load_into_a_model_built_on_the_cpu_replaces_its_weights(models):
    path = models["llama-tied-bf16"]
    config = transformers.AutoConfig.from_pretrained(path)
    model = transformers.AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16).eval()
    before = model.model.norm.weight
    ut.load_into(model, os.path.join(path, "model.safetensors.index.json"), device="cpu")
    assert model.model.norm.weight is not before
    assert_same_model(transformers.AutoModelForCausalLM.from_pretrained(path), model)


# ------------------------------------------------------------------------------------------------- errors


def test_a_missing_parameter_is_named(models, tmp_path):
    folder = single_file(models["llama-untied-f16-one-file"], tmp_path / "m",
                         lambda t: t.pop("model.layers.1.mlp.up_proj.weight"))
    with pytest.raises(unimem.NotFound, match=r"model\.layers\.1\.mlp\.up_proj\.weight"):
        ut.from_pretrained(folder, device="cpu")


def test_an_untied_model_needs_its_lm_head(models, tmp_path):
    folder = single_file(models["llama-untied-f16-one-file"], tmp_path / "m", lambda t: t.pop("lm_head.weight"))
    with pytest.raises(unimem.NotFound, match=r"lm_head\.weight"):
        ut.from_pretrained(folder, device="cpu")


def test_an_extra_tensor_is_named(models, tmp_path):
    folder = single_file(models["llama-untied-f16-one-file"], tmp_path / "m",
                         lambda t: t.update({"model.layers.0.mlp.gate_proj.scale": torch.ones(3)}))
    with pytest.raises(unimem.BadFormat, match=r"model\.layers\.0\.mlp\.gate_proj\.scale.*model\.safetensors"):
        ut.from_pretrained(folder, device="cpu")


def test_two_tensors_for_one_parameter_are_refused(models, tmp_path):
    """With and without the base-model prefix: both name model.norm.weight."""
    folder = single_file(models["llama-untied-f16-one-file"], tmp_path / "m",
                         lambda t: t.update({"norm.weight": t["model.norm.weight"].clone()}))
    with pytest.raises(unimem.BadFormat, match=r"both load 'model\.norm\.weight'"):
        ut.from_pretrained(folder, device="cpu")


def test_a_misshaped_tensor_is_named(models, tmp_path):
    def edit(t):
        t["model.layers.0.self_attn.o_proj.weight"] = t["model.layers.0.self_attn.o_proj.weight"][:, :32].clone()
    folder = single_file(models["llama-untied-f16-one-file"], tmp_path / "m", edit)
    with pytest.raises(unimem.BadFormat, match=r"model\.layers\.0\.self_attn\.o_proj\.weight.*\[64, 32\].*\[64, 64\]"):
        ut.from_pretrained(folder, device="cpu")


def test_an_integer_tensor_for_a_floating_parameter_is_refused(models, tmp_path):
    def edit(t):
        t["model.norm.weight"] = torch.ones(64, dtype=torch.int32)
    folder = single_file(models["llama-untied-f16-one-file"], tmp_path / "m", edit)
    with pytest.raises(unimem.InvalidArgument, match=r"model\.norm\.weight.*int32.*float16"):
        ut.from_pretrained(folder, device="cpu")


@pytest.mark.parametrize("dtype", [torch.int8, "float33"])
def test_a_dtype_that_is_not_floating_is_refused(models, dtype):
    with pytest.raises(unimem.InvalidArgument, match="dtype"):
        ut.from_pretrained(models["llama-tied-bf16"], device="cpu", dtype=dtype)


def test_a_pickle_checkpoint_is_refused(models, tmp_path):
    folder = tmp_path / "pickled"
    folder.mkdir()
    shutil.copy(os.path.join(models["llama-tied-bf16"], "config.json"), folder)
    torch.save({"model.norm.weight": torch.ones(64)}, folder / "pytorch_model.bin")
    with pytest.raises(unimem.BadFormat, match="pytorch_model.bin.*pickle"):
        ut.from_pretrained(folder, device="cpu")
    with pytest.raises(unimem.BadFormat, match="pytorch_model.bin"):
        ut.load_into(torch.nn.Linear(2, 2), folder / "pytorch_model.bin", device="cpu")


def test_no_checkpoint_and_no_folder(tmp_path):
    with pytest.raises(unimem.NotFound, match="model.safetensors"):
        ut.from_pretrained(tmp_path, device="cpu")
    with pytest.raises(unimem.NotFound, match="nowhere"):
        ut.load_into(torch.nn.Linear(2, 2), tmp_path / "nowhere", device="cpu")


def test_an_index_naming_a_tensor_its_shards_lack(models, tmp_path):
    folder = shutil.copytree(models["llama-tied-bf16"], tmp_path / "m")
    index = json.loads((folder / "model.safetensors.index.json").read_text())
    index["weight_map"]["model.layers.7.mlp.up_proj.weight"] = next(iter(index["weight_map"].values()))
    (folder / "model.safetensors.index.json").write_text(json.dumps(index))
    with pytest.raises(unimem.NotFound, match=r"model\.layers\.7\.mlp\.up_proj\.weight.*model-0000"):
        ut.from_pretrained(folder, device="cpu")


@pytest.mark.skipif(GPU, reason="this machine has CUDA")
def test_cuda_where_there_is_none(models):
    with pytest.raises(unimem.Error, match="cuda") as caught:
        ut.from_pretrained(models["llama-tied-bf16"])  # device="cuda" by default
    assert caught.value.code in ("no_cuda_driver", "no_cuda_device")


def test_a_bad_device(models):
    with pytest.raises(unimem.InvalidArgument, match="device"):
        ut.from_pretrained(models["llama-tied-bf16"], device="tpu")


class WithTable(torch.nn.Module):
    """A plain module whose non-persistent buffer nothing initializes."""

    def __init__(self):
        super().__init__()
        self.proj = torch.nn.Linear(64, 64, bias=False)
        self.register_buffer("table", torch.arange(8.0), persistent=False)


def test_a_failed_load_into_leaves_the_model_as_it_was(tmp_path):
    path = str(tmp_path / "w.safetensors")
    st.save_file({"proj.weight": torch.randn(64, 64)}, path)
    with torch.device("meta"):
        model = WithTable()
    with pytest.raises(unimem.NotFound, match="table"):
        ut.load_into(model, path, device="cpu")
    assert model.proj.weight.is_meta and model.table.is_meta
    built = WithTable()  # built on the CPU: its table is real, and it loads
    ut.load_into(built, path, device="cpu")
    assert torch.equal(built.proj.weight, st.load_file(path)["proj.weight"])
    assert built.proj.weight.requires_grad


# ------------------------------------------------------------------------------------------------- CUDA


@needs_gpu
@pytest.mark.parametrize("name", ["llama-tied-bf16", "qwen2-untied-f32", "llama-untied-f16-one-file"])
def test_cuda_model_is_bit_identical_to_from_pretrained(models, name, loaded):
    ref = transformers.AutoModelForCausalLM.from_pretrained(models[name], device_map="cuda")
    got = ut.from_pretrained(models[name], device="cuda")
    assert next(got.parameters()).device == torch.device("cuda", 0)
    assert_same_model(ref, got)
    assert not_copied(got, loaded) and one_allocation(got)


@needs_gpu
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_cuda_dtype_converted_on_the_gpu_matches_from_pretrained(models, dtype, loaded):
    ref = transformers.AutoModelForCausalLM.from_pretrained(models["qwen2-untied-f32"], device_map="cuda", dtype=dtype)
    got = ut.from_pretrained(models["qwen2-untied-f32"], device="cuda", dtype=dtype)
    assert next(got.parameters()).dtype == dtype
    assert_same_model(ref, got)
    assert not_copied(got, loaded) and one_allocation(got)


def device_free():
    gc.collect()
    torch.cuda.synchronize()
    unimem.release_loaders()  # the loaders' staging memory is not the model's
    torch.cuda.empty_cache()
    return torch.cuda.mem_get_info()[0]


@needs_gpu
def test_cuda_memory_goes_back_with_the_model_and_after_a_failure(tmp_path):
    path = make(tmp_path / "big", tiny("llama", False, vocab_size=16384, hidden_size=256, intermediate_size=512),
                torch.float32, shard="8MB")
    size = sum(os.path.getsize(os.path.join(path, f)) for f in os.listdir(path) if f.endswith(".safetensors"))
    ut.from_pretrained(path)  # CUDA context, kernels, first registrations
    free = device_free()
    model = ut.from_pretrained(path)
    assert free - device_free() >= 0.9 * size
    del model
    assert device_free() >= free - (2 << 20)

    # Misshaped everywhere: found while the files load on their thread.
    other = make(tmp_path / "other", tiny("llama", False, vocab_size=16384, hidden_size=256, intermediate_size=384),
                 torch.float32, shard="8MB")
    shutil.copy(os.path.join(path, "config.json"), other)
    with pytest.raises(unimem.BadFormat, match="mlp"):
        ut.from_pretrained(other)
    assert device_free() >= free - (2 << 20)

    single = str(tmp_path / "w.safetensors")
    st.save_file({"proj.weight": torch.randn(4096, 1024)}, single)  # 16 MiB
    with torch.device("meta"):
        plain = WithTable()
        plain.proj = torch.nn.Linear(1024, 4096, bias=False)
    with pytest.raises(unimem.NotFound, match="table"):
        ut.load_into(plain, single, device="cuda")  # fails after loading
    assert plain.proj.weight.is_meta
    assert device_free() >= free - (2 << 20)


def readme_example():
    """The README's unimem.transformers example, as written."""
    readme = open(os.path.join(os.path.dirname(__file__), "..", "..", "README.md")).read()
    blocks = [b.split("```", 1)[0] for b in readme.split("```python\n")[1:]]
    return next(b for b in blocks if "unimem.transformers.from_pretrained" in b)


def run_readme_example(tmp_path, monkeypatch, capsys, code):
    make(tmp_path / "llama", tiny("llama", True, vocab_size=32000), torch.bfloat16, shard="2MB")
    monkeypatch.chdir(tmp_path)
    capsys.readouterr()
    exec(compile(code, "README.md", "exec"), {})
    token = int(capsys.readouterr().out.split()[-1])
    assert 0 <= token < 32000


@needs_gpu
def test_the_readme_example_runs_as_written(tmp_path, monkeypatch, capsys):
    code = readme_example()
    assert len(code.strip().splitlines()) == 5
    run_readme_example(tmp_path, monkeypatch, capsys, code)


def test_the_readme_example_on_the_cpu(tmp_path, monkeypatch, capsys):
    run_readme_example(tmp_path, monkeypatch, capsys, readme_example().replace('"cuda"', '"cpu"'))
