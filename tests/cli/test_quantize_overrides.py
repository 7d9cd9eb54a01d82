"""Per-tensor overrides in `surgeon quantize --recipe`: several compressed-tensors config groups that
transformers loads, per-tensor GGUF types that gguf-py and llama.cpp read, and the one precedence rule."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from builders import add_byte_level_tokenizer, make_tiny_llama
from helpers import run

import modelsurgeon.recipes as R
from modelsurgeon.ops.core.errors import SurgeonError, UsageError
from modelsurgeon.recipes.quantize import QuantizeConfig

transformers = pytest.importorskip("transformers")

VOCAB = 300
TEXT = "the quick brown fox jumps over the lazy dog"
SHIPPED = Path(R.__file__).parent


@pytest.fixture(scope="module")
def llama(tmp_path_factory):
    folder = make_tiny_llama(tmp_path_factory.mktemp("over") / "tiny", vocab_size=VOCAB)
    add_byte_level_tokenizer(folder, VOCAB, TEXT)
    return folder


def _quantize(capsys, *args):
    code, out, err = run(capsys, "quantize", *map(str, args), "-q", "--json")
    assert code == 0, err
    return json.loads(out)


def test_the_last_matching_entry_wins_per_setting():
    cfg = QuantizeConfig(
        scheme="w4a16",
        overrides=[
            {"match": r"mlp\.", "scheme": "w8a16", "group_size": 32},
            {"match": r"down_proj", "group_size": 64},  # names only the group size: the scheme stays w8a16
            {"match": r"layers\.1\.mlp\.down_proj", "scheme": "w4a16"},  # a scheme: its own group size unless named
        ],
    )
    up, down, down1 = (
        cfg.for_tensor(f"model.layers.{i}.mlp.{p}.weight") for i, p in ((0, "up_proj"), (0, "down_proj"), (1, "down_proj"))
    )
    assert (up.scheme, up.group_size) == ("w8a16", 32)
    assert (down.scheme, down.group_size) == ("w8a16", 64)
    assert (down1.scheme, down1.group_size) == ("w4a16", None)
    assert cfg.for_tensor("model.layers.0.self_attn.q_proj.weight") is cfg
    assert QuantizeConfig.from_dict(cfg.to_dict()) == cfg


def test_bad_overrides_are_refused_before_any_work(tmp_path):
    with pytest.raises(UsageError, match="override 'down': --format compressed-tensors cannot hold scheme q8_0"):
        QuantizeConfig(scheme="w4a16", overrides=[{"match": "down", "scheme": "q8_0"}])
    with pytest.raises(UsageError, match=r"unknown key 'schem' \(did you mean scheme\?\)"):
        QuantizeConfig(scheme="w4a16", overrides=[{"match": "down", "schem": "w8a16"}])
    with pytest.raises(UsageError, match="override 'down': --group-size does not apply to fp8"):
        QuantizeConfig(scheme="fp8", overrides=[{"match": "down", "group_size": 32}])
    bad = tmp_path / "r.yaml"
    bad.write_text("scheme: w4a16\noverrides: [{match: '(', scheme: w8a16}]\n")
    with pytest.raises(SurgeonError, match="not a valid regular expression"):
        QuantizeConfig.build(bad)


def test_cli_refuses_a_bad_override_with_one_line(capsys, tmp_path, llama):
    r = tmp_path / "r.yaml"
    r.write_text("scheme: w4a16\noverrides: [{match: down, scheme: q4_0}]\n")
    code, out, err = run(capsys, "quantize", str(llama), "-o", str(tmp_path / "o"), "--recipe", str(r))
    assert code == 2 and "cannot hold scheme q4_0" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "o").exists()


def test_compressed_tensors_groups_load_in_transformers(capsys, tmp_path, llama):
    from transformers import AutoModelForCausalLM

    recipe = SHIPPED / "w4a16_down_proj_8bit.yaml"
    r = _quantize(capsys, llama, "-o", tmp_path / "ct", "--recipe", recipe, "--group-size", "32")
    _quantize(capsys, llama, "-o", tmp_path / "dense", "--recipe", recipe, "--group-size", "32", "--format", "dense")
    schemes = {t["name"]: t["scheme"] for t in r["tensors"] if t["scheme"]}
    assert {n for n, s in schemes.items() if s == "w8a16"} == {n for n in schemes if "down_proj" in n}
    assert {s for n, s in schemes.items() if "down_proj" not in n} == {"w4a16"}
    qc = json.loads((tmp_path / "ct" / "config.json").read_text())["quantization_config"]
    groups = qc["config_groups"]
    assert groups["group_0"]["targets"] == ["Linear"] and groups["group_0"]["weights"]["num_bits"] == 4
    assert groups["group_0"]["weights"]["group_size"] == 32  # the flag over the recipe
    assert groups["group_1"]["weights"]["num_bits"] == 8 and groups["group_1"]["weights"]["group_size"] == 128
    assert sorted(groups["group_1"]["targets"]) == sorted(n.removesuffix(".weight") for n in schemes if "down_proj" in n)
    assert qc["format"] == "pack-quantized"
    q = AutoModelForCausalLM.from_pretrained(tmp_path / "ct")
    d = AutoModelForCausalLM.from_pretrained(tmp_path / "dense")
    down = next(m for n, m in q.named_modules() if n.endswith("mlp.down_proj"))
    up = next(m for n, m in q.named_modules() if n.endswith("mlp.up_proj"))
    assert down.quantization_scheme.weights.num_bits == 8 and up.quantization_scheme.weights.num_bits == 4
    ids = torch.randint(0, VOCAB, (2, 24), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        lq, ld = q(ids).logits, d(ids).logits
    sq, sd = q.state_dict(), d.state_dict()
    for name, t in sd.items():  # what transformers decompresses is bit for bit our dense output
        assert torch.equal(sq[name], t), name
    assert torch.equal(lq, ld)


def test_mixed_formats_are_written_as_mixed_precision(capsys, tmp_path, llama):
    from transformers import AutoModelForCausalLM

    r = tmp_path / "r.yaml"
    r.write_text("scheme: w4a16\ngroup_size: 32\noverrides:\n  - {match: 'self_attn\\.o_proj', scheme: fp8}\n")
    _quantize(capsys, llama, "-o", tmp_path / "ct", "--recipe", r)
    _quantize(capsys, llama, "-o", tmp_path / "dense", "--recipe", r, "--format", "dense")
    qc = json.loads((tmp_path / "ct" / "config.json").read_text())["quantization_config"]
    assert qc["format"] == "mixed-precision"
    assert [g["format"] for g in qc["config_groups"].values()] == ["pack-quantized", "float-quantized"]
    q = AutoModelForCausalLM.from_pretrained(tmp_path / "ct")
    d = AutoModelForCausalLM.from_pretrained(tmp_path / "dense")
    ids = torch.randint(0, VOCAB, (1, 16), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        q(ids)
    sq, sd = q.state_dict(), d.state_dict()
    for name, t in sd.items():
        assert torch.equal(sq[name], t), name


def test_gguf_per_tensor_types_load_in_llama_cpp(capsys, tmp_path, llama):
    gguf = pytest.importorskip("gguf")
    path = tmp_path / "mixed.gguf"
    recipe = SHIPPED / "gguf_q4_0_q8_0_mixed.yaml"
    # the tiny tokenizer's check-text hash is not one llama.cpp lists: name its pre-tokenizer, as a user must
    r = _quantize(capsys, llama, "-o", path, "--recipe", recipe, "--pre-tokenizer", "gpt-2")
    _quantize(capsys, llama, "-o", tmp_path / "dense", "--recipe", recipe, "--format", "dense")
    types = {t.name: t.tensor_type.name for t in gguf.GGUFReader(str(path)).tensors}
    assert {n for n, t in types.items() if t == "Q8_0"} == {n for n in types if "ffn_down" in n} | {"blk.0.attn_v.weight"}
    assert types["blk.1.attn_v.weight"] == "Q4_0" and types["blk.0.ffn_up.weight"] == "Q4_0"
    assert r["bits_per_weight"] > 4.5  # more than q4_0's 4.5 alone
    llama_cpp = pytest.importorskip("llama_cpp", reason="llama-cpp-python is not installed")
    from transformers import AutoModelForCausalLM

    llm = llama_cpp.Llama(model_path=str(path), n_ctx=64, n_threads=1, logits_all=True, verbose=False)
    ids = llm.tokenize(TEXT.encode(), add_bos=False)
    llm.eval(ids)
    got = np.asarray(llm.scores[: len(ids)])
    with torch.no_grad():
        want = AutoModelForCausalLM.from_pretrained(tmp_path / "dense")(torch.tensor([ids])).logits[0].numpy()
    rel = float(np.linalg.norm(got - want) / np.linalg.norm(want))
    assert rel < 0.03, rel  # as for a uniform type (test_quantize_consumers); a wrong per-tensor type gives ~100%
