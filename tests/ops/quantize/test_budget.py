"""`quantize --target-bpw`: the allocation meets the budget with less error than the uniform scheme of the
same size, deterministically; the GGUF it writes holds the chosen types and loads in llama.cpp."""

from __future__ import annotations

import json

import pytest
import torch
from builders import add_byte_level_tokenizer, make_tiny_llama
from helpers import run

from modelsurgeon.ops.core.errors import SurgeonError, UsageError
from modelsurgeon.ops.quantize.budget import Option, allocate
from modelsurgeon.recipes.quantize import QuantizeConfig


def test_allocate_follows_the_hull_and_the_budget():
    # "big" has 100x the error of "small" under every scheme: the extra bits go to it first
    opts = {
        "small": [Option("q4", 400, 1.0), Option("q5", 500, 0.25), Option("q8", 800, 0.004)],
        "big": [Option("q4", 400, 100.0), Option("q5", 500, 25.0), Option("q8", 800, 0.4)],
    }
    assert allocate(opts, 800, 200) == {"small": "q4", "big": "q4"}
    assert allocate(opts, 900, 200) == {"small": "q4", "big": "q5"}
    assert allocate(opts, 1200, 200) == {"small": "q4", "big": "q8"}
    assert allocate(opts, 1300, 200) == {"small": "q5", "big": "q8"}
    with pytest.raises(SurgeonError, match=r"below what the cheapest candidates need \(4 bits per weight\)"):
        allocate(opts, 799, 200)
    # a dominated option (more bits, more error) is never taken
    assert allocate({"t": [Option("a", 4, 1.0), Option("b", 5, 2.0)]}, 5, 1) == {"t": "a"}


def test_config_checks():
    with pytest.raises(UsageError, match="positive number"):
        QuantizeConfig(scheme="q4_0", target_bpw=0)
    with pytest.raises(UsageError, match="give --target-bpw"):
        QuantizeConfig(scheme="q4_0", candidates=("q8_0",))
    with pytest.raises(UsageError, match="--candidates w4a16: --format gguf cannot hold scheme w4a16"):
        QuantizeConfig(scheme="q4_0", target_bpw=5, candidates=("q8_0", "w4a16"))
    with pytest.raises(UsageError, match="overrides cannot"):
        QuantizeConfig(scheme="q4_0", target_bpw=5, overrides=[{"match": "x", "scheme": "q8_0"}])
    assert QuantizeConfig(scheme="q4_0", target_bpw=5, candidates="q8_0,q4_0").candidates == ("q8_0", "q4_0")


@pytest.fixture(scope="module")
def llama(tmp_path_factory):
    """A tiny Llama whose down_proj weights are 20x larger than the rest: they deserve the bits."""
    from safetensors.torch import load_file, save_file

    folder = make_tiny_llama(tmp_path_factory.mktemp("bpw") / "m", hidden_size=128, intermediate_size=256, vocab_size=300)
    add_byte_level_tokenizer(folder, 300)
    sd = load_file(str(folder / "model.safetensors"))
    for k in sd:
        if "down_proj" in k:
            sd[k] = sd[k] * 20
    save_file(sd, str(folder / "model.safetensors"), metadata={"format": "pt"})
    return folder


def _q(capsys, *args):
    code, out, err = run(capsys, "quantize", *map(str, args), "-q", "--json")
    assert code == 0, err
    return json.loads(out)


def test_target_bpw_beats_the_uniform_scheme_of_the_same_size(capsys, tmp_path, llama):
    gguf = pytest.importorskip("gguf")
    pre = ("--pre-tokenizer", "gpt-2")  # the tiny tokenizer's check-text hash is not one llama.cpp lists
    uniform = _q(capsys, llama, "-o", tmp_path / "u.gguf", "--scheme", "q5_0", *pre)
    budget = uniform["bits_per_weight"]  # 5.5
    mixed = _q(capsys, llama, "-o", tmp_path / "m.gguf", "--scheme", "q4_0", "--target-bpw", budget, *pre)
    again = _q(capsys, llama, "-o", tmp_path / "m2.gguf", "--scheme", "q4_0", "--target-bpw", budget, *pre)
    assert mixed["bits_per_weight"] <= budget + 1e-9
    assert mixed["sqnr_db"] > uniform["sqnr_db"] + 1.0  # less total error at the same size
    chosen = {c["name"]: c["scheme"] for c in mixed["choices"]}
    assert {chosen[n] for n in chosen if "down_proj" in n} == {"q8_0"}  # the big tensors got the bits
    assert chosen == {c["name"]: c["scheme"] for c in again["choices"]}  # deterministic
    assert (tmp_path / "m.gguf").read_bytes() == (tmp_path / "m2.gguf").read_bytes()
    row = mixed["choices"][0]
    # the single GGUF types; the K-quants only where a row is whole 256-value super-blocks
    assert (
        {"q8_0", "q4_0", "q4_1", "q5_0", "q5_1"}
        <= set(row["candidates"])
        <= {"q8_0", "q4_0", "q4_1", "q5_0", "q5_1", "q3_k", "q4_k", "q5_k"}
    )
    types = {t.name: t.tensor_type.name for t in gguf.GGUFReader(str(tmp_path / "m.gguf")).tensors}
    assert types["blk.0.ffn_down.weight"] == "Q8_0"
    assert {t["scheme"] for t in mixed["tensors"] if t["scheme"]} == set(chosen.values())
    llama_cpp = pytest.importorskip("llama_cpp", reason="llama-cpp-python is not installed")
    llm = llama_cpp.Llama(model_path=str(tmp_path / "m.gguf"), n_ctx=32, n_threads=1, verbose=False)
    assert llm(" the", max_tokens=2, temperature=0.0)["usage"]["completion_tokens"] == 2


def test_target_bpw_in_compressed_tensors_loads_in_transformers(capsys, tmp_path, llama):
    from transformers import AutoModelForCausalLM

    r = _q(capsys, llama, "-o", tmp_path / "ct", "--scheme", "w4a16", "--target-bpw", "5", "--candidates", "w4a16,w8a16")
    assert 4 < r["bits_per_weight"] <= 5
    groups = json.loads((tmp_path / "ct/config.json").read_text())["quantization_config"]["config_groups"]
    assert sorted(g["weights"]["num_bits"] for g in groups.values()) == [4, 8]
    model = AutoModelForCausalLM.from_pretrained(tmp_path / "ct")
    with torch.no_grad():
        assert torch.isfinite(model(torch.tensor([[1, 2, 3]])).logits).all()


def test_weighted_energies_weight_each_column():
    from modelsurgeon.ops.quantize.budget import weighted_energies

    w = torch.tensor([[1.0, 2.0], [3.0, 4.0]])
    deq = torch.tensor([[1.0, 1.0], [2.0, 4.0]])  # errors: column 0 -> 1 (row 1), column 1 -> 1 (row 0)
    assert weighted_energies(w, deq, torch.tensor([1.0, 1.0])) == (30.0, 2.0)
    assert weighted_energies(w, deq, torch.tensor([10.0, 0.0])) == (100.0, 10.0)


def test_target_bpw_weighs_the_error_by_the_importance_matrix(capsys, tmp_path, llama):
    """down_proj is 20x larger, so by weight error alone it gets the bits; an importance matrix that says the
    MLP's inputs (gate/up) carry 10^4 x the activation energy of everything else moves the bits there."""
    pytest.importorskip("gguf")
    from builders import write_legacy_imatrix

    pre = ("--pre-tokenizer", "gpt-2")
    entries = {}
    for i in range(2):
        for name, cols in (("attn_q", 128), ("attn_k", 128), ("attn_v", 128), ("attn_output", 128), ("ffn_down", 256)):
            entries[f"blk.{i}.{name}.weight"] = torch.ones(cols)
        for name in ("ffn_gate", "ffn_up"):
            entries[f"blk.{i}.{name}.weight"] = torch.full((128,), 1e4)
    im = write_legacy_imatrix(tmp_path / "imatrix.dat", entries, ncalls=4, dataset="test")
    flags = ("--scheme", "q4_0", "--target-bpw", "5.5", "--candidates", "q4_0,q5_0,q8_0", *pre)
    plain = _q(capsys, llama, "-o", tmp_path / "p.gguf", *flags)
    weighted = _q(capsys, llama, "-o", tmp_path / "w.gguf", *flags, "--imatrix", im)
    bits = {"q4_0": 4.5, "q5_0": 5.5, "q8_0": 8.5}

    def mean_bits(r, part):
        return sum(bits[c["scheme"]] for c in r["choices"] if part in c["name"]) / 2

    assert mean_bits(plain, "down_proj") > mean_bits(plain, "up_proj")  # weight error alone: the big tensors
    for part in ("up_proj", "gate_proj"):  # the important inputs get the bits
        assert mean_bits(weighted, part) > mean_bits(plain, part) and mean_bits(weighted, part) > 5
    assert mean_bits(weighted, "down_proj") < mean_bits(plain, "down_proj")
    assert weighted["bits_per_weight"] <= 5.5 + 1e-9
    assert {c["name"]: c["scheme"] for c in plain["choices"]} != {c["name"]: c["scheme"] for c in weighted["choices"]}
