"""The real consumers read what `surgeon quantize` writes: transformers (+ compressed-tensors) loads the
compressed-tensors checkpoints, gguf-py reads the GGUF files back, and llama.cpp (when `llama_cpp` is
installed) loads them and computes the same logits as a transformers model built from our dense output."""

from __future__ import annotations

import json
import struct

import numpy as np
import pytest
import torch
from builders import add_byte_level_tokenizer, make_tiny_llama
from helpers import run
from safetensors.torch import load_file

from modelsurgeon.ops.quantize.formats.gguf import permute_rows

transformers = pytest.importorskip("transformers")
gguf = pytest.importorskip("gguf")

VOCAB = 300
TEXT = "the quick brown fox jumps over the lazy dog"


@pytest.fixture(scope="module")
def llama(tmp_path_factory):
    folder = make_tiny_llama(tmp_path_factory.mktemp("consumers") / "tiny", vocab_size=VOCAB)
    add_byte_level_tokenizer(folder, VOCAB, TEXT)
    return folder


def _quantize(capsys, *args):
    code, out, err = run(capsys, "quantize", *map(str, args), "-q", "--json")
    assert code == 0, err
    return json.loads(out)


# --------------------------------------------------------------------------------------------
# compressed-tensors -> transformers


@pytest.mark.parametrize("scheme,group", [("w4a16", "32"), ("w8a8", "-1"), ("fp8", None)])
def test_transformers_loads_compressed_tensors(capsys, tmp_path, llama, scheme, group):
    from transformers import AutoModelForCausalLM

    g = ["--group-size", group] if group else []
    _quantize(capsys, llama, "-o", tmp_path / "ct", "--scheme", scheme, *g)
    _quantize(capsys, llama, "-o", tmp_path / "dense", "--scheme", scheme, "--format", "dense", *g)
    q = AutoModelForCausalLM.from_pretrained(tmp_path / "ct")
    d = AutoModelForCausalLM.from_pretrained(tmp_path / "dense")
    ids = torch.randint(0, VOCAB, (2, 24), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        lq, ld = q(ids).logits, d(ids).logits  # the first forward decompresses the weights
    # the weights transformers decompresses are bit for bit our dense output
    sq, sd = q.state_dict(), d.state_dict()
    assert set(sd) <= set(sq)
    for name, t in sd.items():
        assert torch.equal(sq[name], t), name
    rel = float((lq - ld).norm() / ld.norm())
    if scheme == "w4a16":
        assert rel == 0.0  # weight-only: the same weights give the same logits
    else:
        # w8a8 and fp8 also quantize activations per token at run time (int8: absmax/127.5 steps, about
        # 0.2% of each value; e4m3: 3 mantissa bits, about 2%), which our dense model does not
        assert rel < {"w8a8": 0.02, "fp8": 0.06}[scheme], rel
        for m in q.modules():  # with activation quantization off, the logits are the dense model's
            if getattr(m, "quantization_scheme", None) is not None:
                m.quantization_scheme.input_activations = None
        with torch.no_grad():
            assert torch.equal(q(ids).logits, ld)


# --------------------------------------------------------------------------------------------
# GGUF -> gguf-py


def _field(reader, key):
    return reader.fields[key].contents()


# The tiny tokenizer trained here splits text as GPT-2 does, but its vocabulary is its own, so its check-text
# hash is one llama.cpp does not list: name its pre-tokenizer, as a user with such a tokenizer must.
PRE = ("--pre-tokenizer", "gpt-2")


def test_gguf_reads_back_with_llama_metadata(capsys, tmp_path, llama):
    path = tmp_path / "tiny-q4_0.gguf"
    r = _quantize(capsys, llama, "-o", path, "--scheme", "q4_0", *PRE)
    assert r["format"] == "gguf" and r["bytes_after"] == sum(t["bytes_after"] for t in r["tensors"])
    reader = gguf.GGUFReader(path)
    cfg = json.loads((llama / "config.json").read_text())
    expect = {
        "general.architecture": "llama", "general.file_type": 2, "general.quantization_version": 2,
        "llama.block_count": 2, "llama.context_length": 128, "llama.embedding_length": 64,
        "llama.feed_forward_length": 128, "llama.attention.head_count": 4, "llama.attention.head_count_kv": 2,
        "llama.rope.dimension_count": 16, "llama.vocab_size": VOCAB,
        "tokenizer.ggml.model": "gpt2", "tokenizer.ggml.pre": "gpt-2", "tokenizer.ggml.bos_token_id": 0,
        "tokenizer.ggml.eos_token_id": 0,
        "tokenizer.chat_template": "{% for m in messages %}{{ m['content'] }}{% endfor %}",
    }  # fmt: skip
    for key, value in expect.items():
        assert _field(reader, key) == value, key
    assert "tokenizer.ggml.add_bos_token" not in reader.fields  # the tokenizer says nothing: the converter writes none
    assert _field(reader, "llama.attention.layer_norm_rms_epsilon") == pytest.approx(cfg["rms_norm_eps"])
    assert _field(reader, "llama.rope.freq_base") == pytest.approx(cfg.get("rope_theta", 10000.0))
    tok = json.loads((llama / "tokenizer.json").read_text())
    tokens = _field(reader, "tokenizer.ggml.tokens")
    assert len(tokens) == VOCAB and tokens[0] == "<|endoftext|>"
    assert all(tokens[i] == t for t, i in tok["model"]["vocab"].items())
    assert _field(reader, "tokenizer.ggml.token_type")[:2] == [3, 1]
    assert _field(reader, "tokenizer.ggml.merges") == [m if isinstance(m, str) else " ".join(m) for m in tok["model"]["merges"]]
    tensors = {t.name: t for t in reader.tensors}
    assert set(tensors) == {"token_embd.weight", "output.weight", "output_norm.weight"} | {
        f"blk.{i}.{n}.weight" for i in range(2)
        for n in ("attn_norm", "ffn_norm", "attn_q", "attn_k", "attn_v", "attn_output", "ffn_gate", "ffn_up", "ffn_down")
    }  # fmt: skip
    assert tensors["blk.0.attn_q.weight"].tensor_type.name == "Q4_0"
    assert tensors["blk.1.attn_norm.weight"].tensor_type.name == "F32"
    assert tensors["token_embd.weight"].tensor_type.name == "F32"  # embeddings stay as they are (fp32 here)
    assert list(tensors["blk.0.ffn_down.weight"].shape) == [128, 64]  # ggml order: ne[0] is the row length
    # data: q/k rows are permuted for ggml's RoPE, and the blocks dequantize to our dense q4_0 output
    dense = tmp_path / "dense"
    _quantize(capsys, llama, "-o", dense, "--scheme", "q4_0", "--format", "dense")
    want = load_file(dense / "model.safetensors")
    for hf, g, heads in [
        ("self_attn.q_proj", "attn_q", 4),
        ("self_attn.k_proj", "attn_k", 2),
        ("mlp.down_proj", "ffn_down", None),
    ]:
        t = tensors[f"blk.1.{g}.weight"]
        got = torch.from_numpy(gguf.quants.dequantize(t.data, t.tensor_type)).reshape(want[f"model.layers.1.{hf}.weight"].shape)
        ref = want[f"model.layers.1.{hf}.weight"]
        assert torch.equal(got, permute_rows(ref, heads) if heads else ref), hf


def _sentencepiece_model(path, pieces):
    """A SentencePiece ModelProto with just its pieces, encoded by hand (field 1: {1: piece, 2: score, 3: type})."""

    def varint(n):
        out = b""
        while True:
            b, n = n & 0x7F, n >> 7
            out += bytes([b | (0x80 if n else 0)])
            if not n:
                return out

    data = b""
    for piece, score, kind in pieces:
        raw = piece.encode()
        inner = b"\x0a" + varint(len(raw)) + raw + b"\x15" + struct.pack("<f", score) + b"\x18" + varint(kind)
        data += b"\x0a" + varint(len(inner)) + inner
    path.write_bytes(data)


@pytest.fixture(scope="module")
def spm_llama(tmp_path_factory):
    words = ["▁the", "▁quick", "▁brown", "▁fox", "▁jumps", "▁over", "▁lazy", "▁dog", "▁", "e", "o", "t", "h"]
    pieces = [("<unk>", 0.0, 2), ("<s>", 0.0, 3), ("</s>", 0.0, 3)]
    pieces += [(f"<0x{b:02X}>", 0.0, 6) for b in range(256)]
    pieces += [(w, -float(i), 1) for i, w in enumerate(words)]
    folder = make_tiny_llama(tmp_path_factory.mktemp("spm") / "tiny", vocab_size=len(pieces), bos_token_id=1, eos_token_id=2)
    _sentencepiece_model(folder / "tokenizer.model", pieces)
    return folder, pieces


def test_gguf_sentencepiece_vocabulary(capsys, tmp_path, spm_llama):
    folder, pieces = spm_llama
    path = tmp_path / "spm.gguf"
    _quantize(capsys, folder, "-o", path, "--scheme", "q8_0")
    reader = gguf.GGUFReader(path)
    assert _field(reader, "tokenizer.ggml.model") == "llama"
    assert _field(reader, "tokenizer.ggml.tokens") == [p[0] for p in pieces]
    assert _field(reader, "tokenizer.ggml.token_type") == [p[2] for p in pieces]
    assert _field(reader, "tokenizer.ggml.scores") == pytest.approx([p[1] for p in pieces])
    assert _field(reader, "tokenizer.ggml.bos_token_id") == 1 and _field(reader, "general.file_type") == 7


# --------------------------------------------------------------------------------------------
# GGUF -> llama.cpp (llama-cpp-python builds llama.cpp from source: optional, see the README)


@pytest.mark.parametrize("scheme", ["q8_0", "q4_0", "q4_1", "q5_0", "q5_1"])
def test_llama_cpp_matches_the_dense_model(capsys, tmp_path, llama, scheme):
    llama_cpp = pytest.importorskip("llama_cpp", reason="llama-cpp-python is not installed")
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = tmp_path / f"tiny-{scheme}.gguf"
    _quantize(capsys, llama, "-o", path, "--scheme", scheme, *PRE)
    _quantize(capsys, llama, "-o", tmp_path / "dense", "--scheme", scheme, "--format", "dense")
    llm = llama_cpp.Llama(model_path=str(path), n_ctx=64, n_threads=1, logits_all=True, verbose=False)
    ids = llm.tokenize(TEXT.encode(), add_bos=False)
    assert ids == AutoTokenizer.from_pretrained(llama).encode(TEXT)  # same tokenizer
    llm.eval(ids)
    got = np.asarray(llm.scores[: len(ids)])
    with torch.no_grad():
        want = AutoModelForCausalLM.from_pretrained(tmp_path / "dense")(torch.tensor([ids])).logits[0].numpy()
    # llama.cpp multiplies quantized weights with activations it quantizes to 8 bits on the fly (and keeps
    # f16 intermediates), so logits agree to about 1%; a wrong RoPE permutation or layout gives ~100%
    rel = float(np.linalg.norm(got - want) / np.linalg.norm(want))
    assert rel < 0.03, rel
    assert (got.argmax(-1) == want.argmax(-1)).mean() >= 0.85
    out = llm(TEXT[:15], max_tokens=4, temperature=0.0)
    assert out["usage"]["completion_tokens"] == 4


def test_llama_cpp_loads_a_sentencepiece_vocabulary(capsys, tmp_path, spm_llama):
    llama_cpp = pytest.importorskip("llama_cpp", reason="llama-cpp-python is not installed")
    folder, pieces = spm_llama
    path = tmp_path / "spm.gguf"
    _quantize(capsys, folder, "-o", path, "--scheme", "q4_0")
    llm = llama_cpp.Llama(model_path=str(path), n_ctx=64, n_threads=1, verbose=False)
    toks = llm.tokenize(b"the quick fox", add_bos=True)
    assert pieces[toks[0]][0] == "<s>" and llm.n_vocab() == len(pieces)
    assert llm.detokenize(toks[1:]).strip() == b"the quick fox"
    assert llm(" the", max_tokens=3, temperature=0.0)["usage"]["completion_tokens"] >= 1
