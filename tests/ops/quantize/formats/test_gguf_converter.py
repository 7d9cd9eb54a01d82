"""GGUF against the real consumers and peers: our f16/bf16/f32 file equals llama.cpp's convert_hf_to_gguf.py
tensor for tensor (names, types, shapes, bytes) and key for key on a tiny random model of every architecture;
llama.cpp loads it and its greedy tokens equal transformers'; our K mixtures equal what ``llama_model_quantize``
makes of our f16 file (types, keys, bytes); --imatrix blocks equal ``ggml_quantize_chunk``'s.

The converter ships in llama.cpp's source (the llama-cpp-python sdist vendors it): the README's install keeps
the sdist in .venv/sdist (CI has it there), or set LLAMA_CPP_DIR to a llama.cpp checkout. Without it those
comparisons skip (and say why); the rest runs everywhere llama-cpp-python is installed."""

from __future__ import annotations

import ctypes
import json
import os
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch

pytestmark = pytest.mark.slow

BASE = dict(
    hidden_size=64,
    intermediate_size=128,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    max_position_embeddings=256,
    tie_word_embeddings=False,
)
LLAMA3_ROPE = {
    "rope_type": "llama3",
    "factor": 8.0,
    "low_freq_factor": 1.0,
    "high_freq_factor": 4.0,
    "original_max_position_embeddings": 64,
}
# name -> (transformers config class, model class, config overrides, tokenizer: "bpe" SmolLM2's / "spm" trained here)
ARCHS = {
    "llama": ("LlamaConfig", "LlamaForCausalLM", {}, "bpe"),
    "llama3": (
        "LlamaConfig",
        "LlamaForCausalLM",
        dict(rope_scaling=LLAMA3_ROPE, rope_theta=500000.0, tie_word_embeddings=True),
        "bpe",
    ),
    "llama-spm": ("LlamaConfig", "LlamaForCausalLM", {}, "spm"),
    "mistral": ("MistralConfig", "MistralForCausalLM", dict(sliding_window=None), "bpe"),
    "qwen2": ("Qwen2Config", "Qwen2ForCausalLM", {}, "spm"),
    "qwen3": ("Qwen3Config", "Qwen3ForCausalLM", dict(head_dim=32), "bpe"),
    "gemma2": ("Gemma2Config", "Gemma2ForCausalLM", dict(head_dim=16, tie_word_embeddings=True), "spm"),
    "gemma3": ("Gemma3TextConfig", "Gemma3ForCausalLM", dict(head_dim=16, tie_word_embeddings=True), "bpe"),
    "phi3": ("Phi3Config", "Phi3ForCausalLM", {}, "bpe"),
    "mixtral": ("MixtralConfig", "MixtralForCausalLM", dict(num_local_experts=4, num_experts_per_tok=2), "bpe"),
    "qwen2moe": (
        "Qwen2MoeConfig",
        "Qwen2MoeForCausalLM",
        dict(num_experts=4, num_experts_per_tok=2, moe_intermediate_size=32, shared_expert_intermediate_size=64),
        "bpe",
    ),
    "qwen3moe": (
        "Qwen3MoeConfig",
        "Qwen3MoeForCausalLM",
        dict(num_experts=4, num_experts_per_tok=2, moe_intermediate_size=32, head_dim=16),
        "bpe",
    ),
}


# --------------------------------------------------------------------------------------------
# inputs: tokenizers and models made here


@pytest.fixture(scope="session")
def smollm_tokenizer(smollm2_gguf, tmp_path_factory) -> Path:
    from builders import add_smollm2_tokenizer

    return add_smollm2_tokenizer(tmp_path_factory.mktemp("smollm-tokenizer"), smollm2_gguf)


@pytest.fixture(scope="session")
def spm_tokenizer(tmp_path_factory) -> Path:
    """A 512-piece SentencePiece BPE trained here on the test text (as Llama 2 / Gemma ship tokenizer.model)."""
    spm = pytest.importorskip("sentencepiece", reason="SentencePiece tokenizers need the sentencepiece package")
    out = tmp_path_factory.mktemp("spm-tokenizer")
    text = (Path(__file__).resolve().parents[3] / "data" / "pride_and_prejudice.txt").read_text()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(text.splitlines()),
        model_prefix=str(out / "tokenizer"),
        vocab_size=512,
        model_type="bpe",
        byte_fallback=True,
        user_defined_symbols=["<start_of_turn>"],
        minloglevel=2,
    )
    cfg = {"bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>", "add_bos_token": True, "add_eos_token": False}
    cfg.update(tokenizer_class="LlamaTokenizer", chat_template="{{ messages[0]['content'] }}")
    cfg["added_tokens_decoder"] = {"3": {"content": "<start_of_turn>", "special": True}}
    (out / "tokenizer_config.json").write_text(json.dumps(cfg))
    return out


def make_model(folder: Path, arch: str, tokenizers: dict[str, Path], dtype=torch.float16, **overrides) -> Path:
    import transformers

    cfg_cls, model_cls, kw, tok = ARCHS[arch]
    vocab = 49152 if tok == "bpe" else 512
    extra = {} if tok == "bpe" else dict(bos_token_id=1, eos_token_id=2, pad_token_id=0)
    torch.manual_seed(0)
    cfg = getattr(transformers, cfg_cls)(**{**BASE, "vocab_size": vocab, **extra, **kw, **overrides})
    getattr(transformers, model_cls)(cfg).to(dtype).save_pretrained(folder)
    src = tokenizers[tok]
    for f in ("tokenizer.json", "tokenizer.model", "tokenizer_config.json"):
        if (src / f).is_file():
            shutil.copy(src / f, folder / f)
    return folder


@pytest.fixture(scope="session")
def tokenizers(smollm_tokenizer, spm_tokenizer):
    return {"bpe": smollm_tokenizer, "spm": spm_tokenizer}


def ours(model: Path, out: Path, scheme: str) -> Path:
    from modelsurgeon import api
    from modelsurgeon.recipes.quantize import QuantizeConfig

    api.quantize(str(model), str(out), QuantizeConfig(scheme=scheme, format="gguf"), force=True)
    return out


# --------------------------------------------------------------------------------------------
# the converter


def _find_converter(root: Path) -> Path | None:
    if os.environ.get("LLAMA_CPP_DIR"):
        p = Path(os.environ["LLAMA_CPP_DIR"]) / "convert_hf_to_gguf.py"
        return p if p.is_file() else None
    candidates = sorted((Path(sys.prefix) / "sdist").glob("llama_cpp_python-*.tar.gz"))  # the README's install
    cache = Path(os.environ.get("PIP_CACHE_DIR", Path.home() / ".cache" / "pip"))
    candidates += sorted(cache.rglob("llama_cpp_python-*.tar.gz")) if cache.is_dir() else []
    for sdist in candidates:
        with tarfile.open(sdist) as tf:
            members = [m for m in tf.getmembers() if "/vendor/llama.cpp/" in m.name]
            wanted = [
                m
                for m in members
                if m.name.endswith("/vendor/llama.cpp/convert_hf_to_gguf.py")
                or "/vendor/llama.cpp/conversion/" in m.name
                or "/vendor/llama.cpp/gguf-py/" in m.name
            ]
            if not wanted:
                continue
            tf.extractall(root, members=wanted, filter="data")
        return next(root.rglob("vendor/llama.cpp/convert_hf_to_gguf.py"))
    return None


@pytest.fixture(scope="session")
def converter(tmp_path_factory) -> Path:
    pytest.importorskip("sentencepiece", reason="llama.cpp's converter imports sentencepiece for Llama-family vocabularies")
    found = _find_converter(tmp_path_factory.mktemp("llama.cpp"))
    if found is None:
        pytest.skip(
            "llama.cpp's convert_hf_to_gguf.py not found: set LLAMA_CPP_DIR or keep the llama-cpp-python sdist in pip's cache"
        )
    return found


def convert(converter: Path, model: Path, out: Path, outtype: str) -> Path:
    proc = subprocess.run(
        [sys.executable, str(converter), str(model), "--outtype", outtype, "--outfile", str(out)],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return out


def read_gguf(path: Path) -> tuple[dict, dict]:
    import gguf

    r = gguf.GGUFReader(str(path))
    kv = {k: f.contents() for k, f in r.fields.items() if not k.startswith("GGUF.")}
    ts = {t.name: (t.tensor_type.name, tuple(int(x) for x in t.shape), t.data.tobytes()) for t in r.tensors}
    return kv, ts


def assert_same_file(got: Path, ref: Path) -> None:
    (kv_a, ts_a), (kv_b, ts_b) = read_gguf(got), read_gguf(ref)
    assert "modelsurgeon.version" in kv_a  # our provenance (--force replaces only files that carry it)
    # the one addition to the converter's keys (llama-quantize copies it from our f16 file into ``ref``)
    kv_a, kv_b = ({k: v for k, v in kv.items() if not k.startswith("modelsurgeon.")} for kv in (kv_a, kv_b))
    keys = [
        f"{k}: {str(kv_a.get(k))[:80]!r} != {str(kv_b.get(k))[:80]!r}"
        for k in sorted(set(kv_a) | set(kv_b))
        if kv_a.get(k) != kv_b.get(k)
    ]
    assert not keys, "metadata differs: " + "; ".join(keys[:5])
    assert sorted(ts_a) == sorted(ts_b), f"tensor names differ: {sorted(set(ts_a) ^ set(ts_b))}"
    bad = [f"{n}: {ts_a[n][:2]} vs {ts_b[n][:2]}" for n in ts_a if ts_a[n][:2] != ts_b[n][:2]]
    assert not bad, "types/shapes differ: " + "; ".join(bad[:5])
    bad = [n for n in ts_a if ts_a[n][2] != ts_b[n][2]]
    assert not bad, f"bytes differ in {len(bad)} tensors: {bad[:5]}"


@pytest.mark.parametrize("arch", list(ARCHS))
def test_f16_equals_llama_cpp_converter(arch, tokenizers, converter, tmp_path):
    model = make_model(tmp_path / arch, arch, tokenizers)
    assert_same_file(ours(model, tmp_path / "ours.gguf", "f16"), convert(converter, model, tmp_path / "ref.gguf", "f16"))


@pytest.mark.parametrize("scheme", ["bf16", "f32"])
def test_bf16_and_f32_equal_the_converter_from_a_bf16_model(scheme, tokenizers, converter, tmp_path):
    model = make_model(tmp_path / "gemma3", "gemma3", tokenizers, dtype=torch.bfloat16)
    assert_same_file(ours(model, tmp_path / "ours.gguf", scheme), convert(converter, model, tmp_path / "ref.gguf", scheme))


def test_pre_tokenizer_hashes_are_the_converters(converter):
    """Every (hash -> name) of ours is one the converter's get_vocab_base_pre resolves to the same name."""
    import re

    from modelsurgeon.ops.quantize.formats.gguf_tokenizer import CHECK_TEXT, PRE_TOKENIZER_HASHES

    src = (converter.parent / "conversion" / "base.py").read_text(encoding="utf-8")
    body = src[src.index("def get_vocab_base_pre") :]
    body = body[: body.index("if res is None")]
    theirs: dict[str, str] = {}
    for h, name in re.findall(r'chkhsh == "([0-9a-f]{64})":\s*\n(?:\s*#[^\n]*\n)*\s*res = "([^"]+)"', body):
        theirs[h] = name  # later ifs override earlier ones, as in the converter
    assert {h: theirs.get(h) for h in PRE_TOKENIZER_HASHES} == PRE_TOKENIZER_HASHES
    assert (
        repr(CHECK_TEXT)[1:-1] in body or CHECK_TEXT.encode("unicode_escape").decode() in body.encode("unicode_escape").decode()
    )


# --------------------------------------------------------------------------------------------
# llama.cpp runs it


def _transformers_greedy(model_dir: Path, ids: list[int], n: int) -> list[int]:
    from transformers import AutoModelForCausalLM

    m = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    with torch.no_grad():
        out = m.generate(torch.tensor([ids]), max_new_tokens=n, do_sample=False, pad_token_id=0)
    return out[0, len(ids) :].tolist()


def _llama_cpp_greedy(gguf_path: Path, ids: list[int], n: int) -> list[int]:
    llama_cpp = pytest.importorskip("llama_cpp")
    llm = llama_cpp.Llama(str(gguf_path), n_ctx=128, n_threads=2, verbose=False, seed=0)
    out = []
    for tok in llm.generate(ids, temp=0.0, top_k=1, repeat_penalty=1.0, reset=True):
        out.append(tok)
        if len(out) == n:
            break
    return out


# phi3 is left out: llama.cpp refuses the converter's own Phi-3 file with this test tokenizer (vocabulary: unordered_map::at)
@pytest.mark.parametrize("arch", ["llama3", "qwen3", "gemma2", "mixtral", "qwen2moe"])
def test_llama_cpp_greedy_tokens_equal_transformers(arch, tokenizers, tmp_path):
    """Scaled-up random weights make the logits decisive, so fp16 arithmetic does not flip the argmax."""
    model = make_model(tmp_path / arch, arch, tokenizers, dtype=torch.float32, initializer_range=0.5)
    path = ours(model, tmp_path / "m.gguf", "f32")
    prompts = [[5, 17, 42, 99, 7], [300, 12, 250, 8]]
    for ids in prompts:
        assert _llama_cpp_greedy(path, ids, 6) == _transformers_greedy(model, ids, 6), ids


# --------------------------------------------------------------------------------------------
# llama-quantize's per-tensor type choice


@pytest.mark.parametrize("arch,overrides,whole", [
    ("llama-spm", dict(num_hidden_layers=10, hidden_size=256, intermediate_size=256, num_key_value_heads=1, tie_word_embeddings=True), ("Q2_K", "Q3_K_M", "Q5_K_S")),
    ("mixtral", dict(num_hidden_layers=9, hidden_size=256, intermediate_size=256, num_key_value_heads=1, num_local_experts=8), ("Q4_K_M",)),
])  # fmt: skip
def test_mixtures_equal_llama_model_quantize(arch, overrides, whole, tokenizers, tmp_path):
    """Rows of 256 so the K types apply; 10 and 9 layers exercise the every-third-layer promotions; 8 experts
    take Mixtral's rules. llama.cpp quantizes our f16 file of the fp16 model; every tensor's type equals our
    choice, and our file from the safetensors equals llama.cpp's key for key and byte for byte (three mixtures
    that use every K type on the Llama, Q4_K_M on Mixtral's stacked experts); llama.cpp runs ours."""
    import gguf

    llama_cpp = pytest.importorskip("llama_cpp")
    from modelsurgeon.ops.io.checkpoint import open_checkpoint
    from modelsurgeon.ops.quantize.formats.gguf import FILE_TYPE, plan_tensors
    from modelsurgeon.ops.quantize.formats.gguf_arch import arch_of
    from modelsurgeon.ops.quantize.formats.gguf_types import MIXTURES, mixture_types

    model = make_model(tmp_path / arch, arch, tokenizers, **overrides)
    f16 = ours(model, tmp_path / "f16.gguf", "f16")
    ck = open_checkpoint(str(model))
    _, a = arch_of(ck.config, "m")
    tensors = plan_tensors(ck, a, ck.config)
    quantizable = {t.name for t in tensors if t.quantizable}
    for mix in MIXTURES:
        params = llama_cpp.llama_model_quantize_default_params()
        params.ftype = FILE_TYPE[mix]
        params.nthread = 2
        out = tmp_path / f"{mix}.gguf"
        assert llama_cpp.llama_model_quantize(str(f16).encode(), str(out).encode(), ctypes.byref(params)) == 0
        theirs = {t.name: t.tensor_type.name for t in gguf.GGUFReader(str(out)).tensors}
        mine = mixture_types(tensors, mix, ck.config, a.gguf, quantizable)
        differ = {n: (mine.get(n, "not quantized"), t) for n, t in theirs.items() if mine.get(n, "F32") != t}
        assert not differ, f"{mix}: {differ}"
        if mix in whole:
            path = ours(model, tmp_path / f"ours-{mix}.gguf", mix.lower())
            assert_same_file(path, out)
            llm = llama_cpp.Llama(str(path), n_ctx=32, n_threads=2, logits_all=True, verbose=False)
            llm.eval([1, 5, 17, 42])
            assert np.isfinite(llm.scores[3]).all()
            del llm
    ck.close()


def test_imatrix_weights_the_blocks_as_ggml_does(capsys, tokenizers, tmp_path):
    """--imatrix in both of llama-imatrix's forms: the quantized tensors equal ggml_quantize_chunk of the f16
    values with each tensor's importance weights, every block byte for byte; the legacy .dat and the GGUF form give the same tensors, and
    the file carries llama-quantize's quantize.imatrix.* keys. An importance matrix of another model is refused."""
    import gguf
    from builders import write_legacy_imatrix
    from helpers import assert_one_line_error, ggml_quantize, run

    pytest.importorskip("llama_cpp")
    model = make_model(tmp_path / "m", "llama-spm", tokenizers, hidden_size=256, intermediate_size=256)
    _, f16 = read_gguf(ours(model, tmp_path / "f16.gguf", "f16"))
    g = torch.Generator().manual_seed(0)
    entries = {
        n: torch.rand(shape[0], generator=g) + 0.05
        for n, (_, shape, _) in f16.items()
        if n.startswith("blk.") and len(shape) == 2
    }
    write_legacy_imatrix(tmp_path / "imatrix.dat", entries, ncalls=7, dataset="notes.txt")
    w = gguf.GGUFWriter(str(tmp_path / "imatrix.gguf"), arch="imatrix")
    w.add_type("imatrix")
    w.add_array("imatrix.datasets", ["notes.txt"])
    w.add_uint32("imatrix.chunk_count", 7)
    w.add_uint32("imatrix.chunk_size", 512)
    for n, v in entries.items():
        w.add_tensor(f"{n}.in_sum2", (v * 7).numpy().astype(np.float32))
        w.add_tensor(f"{n}.counts", np.array([7.0], dtype=np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    files = {}
    for form in ("dat", "gguf"):
        out = tmp_path / f"{form}.gguf"
        code, _, err = run(
            capsys, "quantize", model, "-o", out, "--scheme", "q4_k_m", "--imatrix", tmp_path / f"imatrix.{form}", "-q"
        )
        assert code == 0, err
        files[form] = read_gguf(out)
    kv, ts = files["dat"]
    assert ts == files["gguf"][1]
    assert kv["quantize.imatrix.dataset"] == "notes.txt" and kv["quantize.imatrix.entries_count"] == len(entries)
    assert kv["quantize.imatrix.chunks_count"] == 7
    same = total = 0
    for n, v in entries.items():
        qtype, shape, data = ts[n]
        x = np.frombuffer(f16[n][2], dtype=np.float16).astype(np.float32).reshape(shape[1], shape[0])
        # the weights as llama-quantize reads both files: the stored sums (v * 7 in fp32) divided by the count in
        # fp32, which is not always v itself (an ulp off): v as the reference made 16 of 3072 blocks differ
        weights = (v.numpy().astype(np.float32) * np.float32(7)) / np.float32(7)
        ref = ggml_quantize(x, qtype, weights)
        size = gguf.GGML_QUANT_SIZES[gguf.GGMLQuantizationType[qtype]][1]
        mine = np.frombuffer(data, dtype=np.uint8).reshape(-1, size)
        equal = (mine == ref.reshape(-1, size)).all(axis=1)
        same, total = same + int(equal.sum()), total + len(equal)
    assert same == total, f"{total - same} of {total} blocks differ from ggml_quantize_chunk"
    plain = read_gguf(ours(model, tmp_path / "plain.gguf", "q4_k_m"))[1]
    assert plain["blk.0.attn_q.weight"][2] != ts["blk.0.attn_q.weight"][2]  # the weights changed the search

    write_legacy_imatrix(tmp_path / "other.dat", {"blk.0.attn_q.weight": torch.ones(512)})
    code, out, err = run(
        capsys, "quantize", model, "-o", tmp_path / "x.gguf", "--scheme", "q4_k_m", "--imatrix", tmp_path / "other.dat"
    )
    assert_one_line_error(code, out, err, 1, "blk.0.attn_q.weight", "512")
    assert not (tmp_path / "x.gguf").exists()


# --------------------------------------------------------------------------------------------
# bad input


def test_unsupported_architecture_lists_the_supported(capsys, tmp_path):
    from builders import write_checkpoint
    from helpers import assert_one_line_error, run

    folder = write_checkpoint(tmp_path / "m", {"w.weight": torch.zeros(32, 32)}, {"architectures": ["GPTNeoXForCausalLM"]})
    code, out, err = run(capsys, "quantize", folder, "-o", tmp_path / "o.gguf", "--scheme", "f16")
    assert_one_line_error(code, out, err, 1, "LlamaForCausalLM", "Qwen3MoeForCausalLM")
    assert not (tmp_path / "o.gguf").exists()


def test_unknown_pre_tokenizer_names_the_flag_and_the_flag_works(capsys, tokenizers, tmp_path):
    from helpers import assert_one_line_error, run

    model = make_model(tmp_path / "q", "qwen3", tokenizers, num_hidden_layers=1)
    tj = json.loads((model / "tokenizer.json").read_text())
    split = {"type": "Split", "pattern": {"Regex": "[0-9]+"}, "behavior": "Removed", "invert": False}
    tj["pre_tokenizer"]["pretokenizers"][0] = split  # another split: other ids for the check text
    (model / "tokenizer.json").write_text(json.dumps(tj))
    code, out, err = run(capsys, "quantize", model, "-o", tmp_path / "o.gguf", "--scheme", "f16")
    assert_one_line_error(code, out, err, 1, "--pre-tokenizer NAME")
    assert not (tmp_path / "o.gguf").exists()
    code, out, err = run(capsys, "quantize", model, "-o", tmp_path / "o.gguf", "--scheme", "f16", "--pre-tokenizer", "smollm")
    assert code == 0, err
    assert read_gguf(tmp_path / "o.gguf")[0]["tokenizer.ggml.pre"] == "smollm"


def test_moe_routers_are_left_alone_by_default(tokenizers, tmp_path):
    """Routers stay F32 in GGUF and are not default targets for prune or quantize."""
    from modelsurgeon.ops.io.checkpoint import open_checkpoint
    from modelsurgeon.ops.io.targets import select_targets

    model = make_model(tmp_path / "m", "qwen2moe", tokenizers, num_hidden_layers=1)
    ck = open_checkpoint(str(model))
    targets = select_targets(ck)
    assert not [t for t in targets if t.endswith(("mlp.gate.weight", "shared_expert_gate.weight"))]
    assert any(".experts.0." in t for t in targets)
    ck.close()
    _, ts = read_gguf(ours(model, tmp_path / "m.gguf", "q8_0"))
    assert ts["blk.0.ffn_gate_inp.weight"][0] == "F32" and ts["blk.0.ffn_gate_inp_shexp.weight"][0] == "F32"
    assert ts["blk.0.ffn_down_exps.weight"][0] == "Q8_0"
