"""`surgeon quantize` through the real entry point: outputs, the summary, and every bad input of the issue
(one line on stderr, the exit code, nothing written)."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys

import pytest
import torch
from builders import make_tiny_llama, write_checkpoint
from helpers import assert_one_line_error, run, run_json
from safetensors.torch import load_file

from modelsurgeon.ops.quantize.quant import group_dequantize, group_quantize
from modelsurgeon.ops.quantize.schemes import schemes


@pytest.fixture(scope="module")
def llama(tmp_path_factory):
    return make_tiny_llama(tmp_path_factory.mktemp("q") / "tiny")


def _nothing_written(out):
    assert not out.exists()
    assert not [p for p in out.parent.iterdir() if p.name.startswith(f".{out.name}.tmp")]


def test_help_names_every_registered_scheme():
    from modelsurgeon.cli.quantize import SCHEME_NAMES

    assert SCHEME_NAMES.split(", ") == [s.name for s in schemes()]


def test_compressed_tensors_json_summary(capsys, tmp_path, llama):
    out = tmp_path / "w4"
    r = run_json(capsys, "quantize", llama, "-o", out, "--scheme", "w4a16", "--group-size", "32", "-q")
    assert r["scheme"] == "w4a16" and r["format"] == "compressed-tensors" and r["group_size"] == 32 and r["symmetric"]
    assert r["quantized_tensors"] == 14 and r["num_tensors"] == 21
    rows = {t["name"]: t for t in r["tensors"]}
    down = rows["model.layers.0.mlp.down_proj.weight"]
    assert down["bits_per_weight"] == 4 + 32 / 32  # fp32 weights keep fp32 scales
    assert 15 < down["sqnr_db"] < 30 and down["rel_l2"] == pytest.approx(10 ** (-down["sqnr_db"] / 20), rel=1e-6)
    assert rows["model.embed_tokens.weight"]["scheme"] is None and rows["model.norm.weight"]["sqnr_db"] is None
    files = load_file(out / "model.safetensors")
    assert r["bytes_after"] == sum(t.numel() * t.element_size() for t in files.values())
    assert down["bytes_after"] == sum(
        t.numel() * t.element_size() for n, t in files.items() if n.startswith("model.layers.0.mlp.down_proj.")
    )
    assert r["bytes_before"] == sum(t["bytes_before"] for t in r["tensors"])
    assert r["sqnr_db"] == pytest.approx(min(t["sqnr_db"] for t in r["tensors"] if t["scheme"]), abs=3)
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["quantization_config"]["config_groups"]["group_0"]["weights"]["group_size"] == 32
    assert cfg["quantization_config"]["ignore"] == ["lm_head"]
    meta = json.loads(__import__("safetensors").safe_open(str(out / "model.safetensors"), "pt").metadata()["modelsurgeon_recipe"])
    assert meta["scheme"] == "w4a16" and meta["group_size"] == 32


def test_table_output(capsys, tmp_path, llama):
    code, out, err = run(capsys, "quantize", llama, "-o", tmp_path / "o", "--scheme", "w8a8", "-q")
    assert code == 0, err
    assert "SQNR dB" in out and "model.layers.1.mlp.up_proj.weight" in out and "bits per weight 8.44" in out


def test_dense_is_the_dequantized_weight(capsys, tmp_path, llama):
    out = tmp_path / "d"
    r = run_json(capsys, "quantize", llama, "-o", out, "--scheme", "w4a16", "-g", "32", "--format", "dense", "-q")
    src, got = load_file(llama / "model.safetensors"), load_file(out / "model.safetensors")
    assert set(src) == set(got) and all(src[n].dtype == got[n].dtype for n in src)
    w = src["model.layers.1.self_attn.q_proj.weight"]
    c, s, z = group_quantize(w, 4, 32, True)
    assert torch.equal(got["model.layers.1.self_attn.q_proj.weight"], group_dequantize(c, s, z, 32, w.dtype))
    assert torch.equal(got["model.embed_tokens.weight"], src["model.embed_tokens.weight"])
    assert "quantization_config" not in json.loads((out / "config.json").read_text())
    assert r["bytes_after"] == r["bytes_before"]
    # SQNR from the summary is the one of the written tensor
    sig = float(w.double().square().sum())
    noise = float((got["model.layers.1.self_attn.q_proj.weight"].double() - w.double()).square().sum())
    row = next(t for t in r["tensors"] if t["name"] == "model.layers.1.self_attn.q_proj.weight")
    assert row["sqnr_db"] == pytest.approx(10 * math.log10(sig / noise), rel=1e-5)


@pytest.mark.parametrize(
    "scheme,extra", [("nf4", []), ("binary", ["-g", "64"]), ("q5_1", []), ("fp8", []), ("w8a16", ["-g", "64"])]
)
def test_dense_for_other_schemes(capsys, tmp_path, llama, scheme, extra):
    r = run_json(capsys, "quantize", llama, "-o", tmp_path / scheme, "--scheme", scheme, "--format", "dense", "-q", *extra)
    assert r["format"] == "dense" and math.isfinite(r["sqnr_db"])
    expected = {"nf4": (15, 25), "binary": (3, 8), "q5_1": (25, 32), "fp8": (25, 35), "w8a16": (38, 50)}[scheme]
    assert expected[0] < r["sqnr_db"] < expected[1], r["sqnr_db"]


def test_ignore_keeps_tensors_and_lists_them_for_the_loader(capsys, tmp_path, llama):
    out = tmp_path / "ig"
    r = run_json(capsys, "quantize", llama, "-o", out, "--scheme", "w8a8", "--ignore", r"mlp\.down_proj", "-q")
    assert r["quantized_tensors"] == 12
    files = load_file(out / "model.safetensors")
    assert files["model.layers.0.mlp.down_proj.weight"].dtype == torch.float32
    ignore = json.loads((out / "config.json").read_text())["quantization_config"]["ignore"]
    assert sorted(ignore) == ["lm_head", "model.layers.0.mlp.down_proj", "model.layers.1.mlp.down_proj"]


def test_hqq_notes_its_group_size(capsys, tmp_path, llama):
    code, out, err = run(capsys, "quantize", llama, "-o", tmp_path / "h", "--scheme", "w4a16", "--optimizer", "hqq", "--json")
    assert code == 0, err
    r = json.loads(out)
    assert r["group_size"] == 64 and r["optimizer"] == "hqq" and "HQQ's default" in err


def test_asym_warns_about_transformers(capsys, tmp_path, llama):
    code, out, err = run(
        capsys, "quantize", llama, "-o", tmp_path / "a", "--scheme", "w4a16", "-g", "32", "--asym", "-q", "--json"
    )
    assert code == 0
    assert "warning" in err and "vLLM can" in err
    assert "model.layers.0.mlp.up_proj.weight_zero_point" in load_file(tmp_path / "a" / "model.safetensors")


def test_minilm_dense(capsys, tmp_path, minilm_dir):
    r = run_json(capsys, "quantize", "minilm", "-o", tmp_path / "m", "--scheme", "w8a16", "-g", "64", "--format", "dense", "-q")
    assert r["quantized_tensors"] == 37 and r["sqnr_db"] > 35  # 6 layers x 6 linear + the pooler


# --- bad input: one line, an exit code, nothing written


def test_unknown_scheme_lists_the_known_ones(capsys, tmp_path, llama):
    out = tmp_path / "x"
    code, o, e = run(capsys, "quantize", llama, "-o", out, "--scheme", "int3")
    assert_one_line_error(code, o, e, 2, "unknown quantization scheme 'int3'", "w4a16", "q5_1", "binary")
    _nothing_written(out)


def test_unknown_scheme_fails_before_the_hub_is_asked(tmp_path):
    """The scheme is checked while the flags are read: an uncached Hub id with HF_HUB_OFFLINE=1 reports the
    misspelt scheme (exit 2), not the cache miss it would hit next, and torch is never imported."""
    cache = tmp_path / "hub"
    cache.mkdir()
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HUB_CACHE": str(cache), "HF_HOME": str(cache)}
    code = (
        "import sys\n"
        "from modelsurgeon.cli.main import main\n"
        "rc = main(sys.argv[1:])\n"
        "assert rc != 2 or 'torch' not in sys.modules, 'torch was imported before the flags were checked'\n"
        "sys.exit(rc)\n"
    )
    out = tmp_path / "out"
    args = ["quantize", "org/not-cached", "-o", str(out), "--scheme"]
    r = subprocess.run([sys.executable, "-c", code, *args, "w4a61"], capture_output=True, text=True, env=env)
    assert_one_line_error(r.returncode, r.stdout, r.stderr, 2, "unknown quantization scheme 'w4a61'", "did you mean w4a16?")
    assert "cache" not in r.stderr
    _nothing_written(out)
    # the same command with a known scheme goes on to the Hub and misses the cache: the check above came first
    r = subprocess.run([sys.executable, "-c", code, *args, "w4a16"], capture_output=True, text=True, env=env)
    assert_one_line_error(r.returncode, r.stdout, r.stderr, 1, "not in the local Hugging Face cache")


def test_every_problem_of_the_plan_at_once(capsys, tmp_path):
    src = write_checkpoint(
        tmp_path / "odd", {"a.weight": torch.randn(4, 48), "b.weight": torch.randn(4, 40), "c.weight": torch.randn(2, 4, 64)}
    )
    out = tmp_path / "x"
    out.mkdir()
    code, o, e = run(capsys, "quantize", src, "-o", out, "--scheme", "q8_0", "--format", "dense", "--include", r"weight$")
    assert code == 1 and o == "" and "Traceback" not in e
    lines = e.strip().splitlines()
    assert lines[0] == "error: 3 problems with the quantization of " + str(src) + ", nothing was written:", e
    assert "c.weight is 3-D [2, 4, 64]" in lines[1]
    assert "a.weight has rows of 48" in lines[2] and "(and 1 more)" in lines[2]
    assert "already exists" in lines[3] and "--force" in lines[3]
    assert list(out.iterdir()) == []


@pytest.mark.parametrize("scheme,fmt,needles", [
    ("nf4", "compressed-tensors", ["cannot hold scheme nf4", "nf4 can be written as dense"]),
    ("w4a16", "gguf", ["cannot hold scheme w4a16", "gguf holds q8_0, q4_0"]),
    ("q4_0", "compressed-tensors", ["cannot hold scheme q4_0", "gguf or dense"]),
])  # fmt: skip
def test_format_that_cannot_hold_the_scheme(capsys, tmp_path, llama, scheme, fmt, needles):
    out = tmp_path / "x"
    code, o, e = run(capsys, "quantize", llama, "-o", out, "--scheme", scheme, "--format", fmt)
    assert_one_line_error(code, o, e, 2, *needles)
    _nothing_written(out)


def test_gguf_on_an_unsupported_architecture(capsys, tmp_path, minilm_dir):
    out = tmp_path / "m.gguf"
    code, o, e = run(capsys, "quantize", "minilm", "-o", out, "--scheme", "q8_0", "--format", "gguf")
    assert_one_line_error(code, o, e, 1, "does not support", "BertModel", "LlamaForCausalLM")
    _nothing_written(out)


def test_row_length_not_divisible_names_tensor_and_sizes(capsys, tmp_path, llama):
    out = tmp_path / "x"
    code, o, e = run(capsys, "quantize", llama, "-o", out, "--scheme", "w4a16")  # rows of 64, group 128
    assert_one_line_error(code, o, e, 1, "model.layers.0.mlp.gate_proj.weight", "rows of 64", "group size 128", "(and 11 more)")
    _nothing_written(out)


def test_gguf_block_size_names_the_tensor(capsys, tmp_path):
    src = write_checkpoint(tmp_path / "odd", {"a.weight": torch.randn(4, 48)})
    out = tmp_path / "x"
    code, o, e = run(capsys, "quantize", src, "-o", out, "--scheme", "q8_0", "--format", "dense")
    assert_one_line_error(code, o, e, 1, "a.weight has rows of 48", "group size 32", "GGUF block size")
    _nothing_written(out)


def test_already_quantized_input(capsys, tmp_path, llama):
    """A quantized input that ops/io reads is quantized again from its dequantized values, with one warning
    about the double rounding; one that nothing reads is refused."""
    q = tmp_path / "q"
    assert run(capsys, "quantize", llama, "-o", q, "--scheme", "w8a8", "-q")[0] == 0
    out = tmp_path / "again"
    code, o, e = run(capsys, "quantize", q, "-o", out, "--scheme", "w8a8", "--json")
    assert code == 0, e
    assert e.count("rounded twice") == 1 and "compressed-tensors" in e
    assert json.loads(o)["quantized_tensors"] > 0
    out = tmp_path / "refused"
    gptq = write_checkpoint(
        tmp_path / "gptq",
        {"l.qweight": torch.zeros(4, 32, dtype=torch.int32), "l.scales": torch.ones(1, 32)},
        {"model_type": "llama", "quantization_config": {"quant_method": "gptq", "bits": 4}},
    )
    code, o, e = run(capsys, "quantize", gptq, "-o", out, "--scheme", "w8a8")
    assert_one_line_error(code, o, e, 1, "gptq", "not read yet")
    _nothing_written(out)
    # int8 tensors without a quantization_config are recognised too
    src = write_checkpoint(
        tmp_path / "int8", {"l.weight": torch.zeros(4, 32, dtype=torch.int8), "l.weight_scale": torch.ones(4, 1)}
    )
    code, o, e = run(capsys, "quantize", src, "-o", out, "--scheme", "w8a8")
    assert_one_line_error(code, o, e, 1, "already quantized", "l.weight")
    _nothing_written(out)


@pytest.mark.parametrize("args,needles", [
    (["--scheme", "q4_0", "--asym"], ["--asym does not apply to q4_0", "q4_1 or q5_1"]),
    (["--scheme", "fp8", "--optimizer", "hqq"], ["--optimizer hqq does not apply to fp8", "w4a16"]),
    (["--scheme", "q8_0", "--group-size", "64"], ["--group-size does not apply to q8_0", "block size 32"]),
    (["--scheme", "w4a16", "--optimizer", "gptq"], ["--optimizer 'gptq' is unknown", "rtn, hqq"]),
    (["--scheme", "w4a16", "--group-size", "0"], ["--group-size 0 is invalid"]),
    (["--scheme", "w4a16", "--format", "onnx"], ["--format 'onnx' is unknown"]),
    (["--scheme", "w8a8", "--ignore", "("], ["--ignore '(' is not a valid regular expression"]),
])  # fmt: skip
def test_bad_flags(capsys, tmp_path, llama, args, needles):
    out = tmp_path / "x"
    code, o, e = run(capsys, "quantize", llama, "-o", out, *args)
    assert_one_line_error(code, o, e, 2, *needles)
    _nothing_written(out)


def test_existing_output_is_refused(capsys, tmp_path, llama):
    out = tmp_path / "exists"
    out.mkdir()
    code, o, e = run(capsys, "quantize", llama, "-o", out, "--scheme", "w8a8")
    assert_one_line_error(code, o, e, 1, "already exists", "--force")
    assert list(out.iterdir()) == []


def test_nan_weights_fail_and_write_nothing(capsys, tmp_path):
    w = torch.randn(8, 64)
    w[2, 5] = float("nan")
    src = write_checkpoint(tmp_path / "nan", {"layer.weight": w})
    out = tmp_path / "x"
    code, o, e = run(capsys, "quantize", src, "-o", out, "--scheme", "w8a8")
    assert_one_line_error(code, o, e, 1, "layer.weight holds NaN")
    _nothing_written(out)
