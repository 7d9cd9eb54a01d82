"""Reading GGUF files: ours (surgeon quantize --format gguf of a tiny Llama) read back as transformers' own GGUF
loader reads them, tensor for tensor, whole and a few rows at a time; the header parser against gguf-py's."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from builders import make_llama_with_tokenizer
from helpers import run

from modelsurgeon.ops.io.checkpoint import open_checkpoint
from modelsurgeon.ops.io.quantized.gguf_header import read_gguf_header


@pytest.fixture(scope="module")
def gguf_files(tmp_path_factory):
    from modelsurgeon.cli.main import main

    root = tmp_path_factory.mktemp("gguf-read")
    src = make_llama_with_tokenizer(root / "src", "the quick brown fox jumps over the lazy dog " * 20)
    files = {}
    for scheme in ("q4_0", "q8_0", "q5_1"):
        files[scheme] = root / f"m-{scheme}.gguf"
        assert main(["quantize", str(src), "-o", str(files[scheme]), "--scheme", scheme, "-q", "--pre-tokenizer", "gpt-2"]) == 0
    return files


@pytest.mark.parametrize("pieces", [False, True], ids=["whole", "in-pieces"])
@pytest.mark.parametrize("scheme", ["q4_0", "q8_0", "q5_1"])
def test_reads_as_transformers_does(monkeypatch, gguf_files, scheme, pieces):
    from transformers import AutoModelForCausalLM

    if pieces:
        monkeypatch.setattr("modelsurgeon.ops.io.quantized.view.CHUNK_ELEMS", 100)
    path = gguf_files[scheme]
    ref = AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name).state_dict()
    with open_checkpoint(path) as ck:
        assert ck.source_format == "gguf" and ck.config["model_type"] == "llama"
        assert set(ck.names()) == set(ref) - ({"lm_head.weight"} if ck.config["tie_word_embeddings"] else set())
        for name in ck.names():
            assert torch.equal(ck.get(name), ref[name]), name
        q = "model.layers.0.self_attn.q_proj.weight"
        assert ck.is_quantized(q) and ck.describe(q)["scheme"] == scheme.upper()
        assert not ck.is_quantized("model.norm.weight")  # stored F32


def test_header_parser_agrees_with_gguf_py(gguf_files):
    import gguf

    path = gguf_files["q5_1"]
    meta, tensors = read_gguf_header(path)
    r = gguf.GGUFReader(str(path))
    assert [t.name for t in tensors] == [t.name for t in r.tensors]
    for ours, theirs in zip(tensors, r.tensors):
        assert ours.offset == theirs.data_offset and ours.ggml_type == int(theirs.tensor_type)
        assert ours.shape == tuple(int(d) for d in reversed(theirs.shape.tolist()))
    for key, field in r.fields.items():
        if key.startswith("GGUF."):
            continue
        want = field.contents()
        got = meta[key]
        if isinstance(want, float):
            assert got == pytest.approx(want, rel=1e-7), key
        else:
            assert got == want or np.array_equal(np.asarray(got), np.asarray(want)), key


def test_truncated_file_is_one_line(capsys, tmp_path, gguf_files):
    from helpers import assert_one_line_error

    bad = tmp_path / "cut.gguf"
    bad.write_bytes(gguf_files["q8_0"].read_bytes()[:-1000])
    code, o, e = run(capsys, "report", bad)
    assert_one_line_error(code, o, e, 1, "truncated")


def test_k_quants_made_by_llama_cpp(tmp_path):
    """A Q4_K_M file made by llama.cpp's own quantizer (Q4_K and Q6_K blocks) reads as transformers reads it."""
    import ctypes

    llama_cpp = pytest.importorskip("llama_cpp")
    from builders import add_byte_level_tokenizer, make_tiny_llama
    from transformers import AutoModelForCausalLM

    from modelsurgeon.cli.main import main

    src = make_tiny_llama(tmp_path / "src", hidden_size=256, intermediate_size=512, num_hidden_layers=1, vocab_size=300)
    add_byte_level_tokenizer(src, 300)  # K-quant rows are whole blocks of 256
    assert (
        main(["quantize", str(src), "-o", str(tmp_path / "q8.gguf"), "--scheme", "q8_0", "-q", "--pre-tokenizer", "gpt-2"]) == 0
    )
    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = llama_cpp.LLAMA_FTYPE_MOSTLY_Q4_K_M
    params.allow_requantize = True
    params.nthread = 1
    out = tmp_path / "k.gguf"
    assert llama_cpp.llama_model_quantize(str(tmp_path / "q8.gguf").encode(), str(out).encode(), ctypes.byref(params)) == 0
    ref = AutoModelForCausalLM.from_pretrained(tmp_path, gguf_file=out.name).state_dict()
    with open_checkpoint(out) as ck:
        assert {ck.describe(n)["scheme"] for n in ck.names()} >= {"Q4_K", "Q6_K"}
        for name in ck.names():
            assert torch.equal(ck.get(name), ref[name]), name
