"""Merging PEFT LoRA adapters in adapter space: loads in peft, close to merging the folded models."""

from __future__ import annotations

import json

import pytest
import torch
from builders import make_tiny_llama
from helpers import run, run_json
from safetensors.torch import load_file


@pytest.fixture(scope="module")
def adapters(tmp_path_factory):
    """A tiny Llama and three peft adapters of it: two alike (rank 4 and 2, different alphas and a
    rank_pattern), one on other modules, one of another base."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    root = tmp_path_factory.mktemp("adapters")
    base = make_tiny_llama(root / "base", seed=0)
    other = make_tiny_llama(root / "other", seed=3)
    out = {"base": base, "root": root}
    kinds = {
        "a": (base, dict(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj", "down_proj"], rank_pattern={"down_proj": 2})),
        "b": (base, dict(r=2, lora_alpha=4, target_modules=["q_proj", "v_proj", "down_proj"], use_rslora=True)),
        "c": (base, dict(r=2, lora_alpha=4, target_modules=["q_proj", "k_proj", "down_proj"])),
        "d": (other, dict(r=2, lora_alpha=4, target_modules=["q_proj", "v_proj", "down_proj"])),
    }
    for i, (name, (b, kw)) in enumerate(kinds.items()):
        torch.manual_seed(10 + i)
        pm = get_peft_model(AutoModelForCausalLM.from_pretrained(b), LoraConfig(init_lora_weights=False, **kw))
        pm.save_pretrained(root / f"lora-{name}")
        out[name] = root / f"lora-{name}"
    return out


def folded_merge(capsys, adapters, tmp_path, method: str, *extra: str) -> dict[str, torch.Tensor]:
    base = str(adapters["base"])
    out = tmp_path / f"folded-{method}"
    run_json(
        capsys,
        "merge",
        "--method",
        method,
        "--base",
        base,
        f"{base}+{adapters['a']}",
        f"{base}+{adapters['b']}",
        *extra,
        "-o",
        str(out),
        "-q",
    )
    return load_file(str(out / "model.safetensors"))


def peft_merged(adapters, folder) -> dict[str, torch.Tensor]:
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(adapters["base"]), folder).merge_and_unload()
    return {k: v.detach() for k, v in model.state_dict().items()}


def test_linear_at_the_summed_rank_is_exact(capsys, adapters, tmp_path):
    """A weighted sum of a rank-4 and a rank-2 delta has rank <= 6: re-factored at 6 it is exact."""
    out = tmp_path / "linear"
    r = run_json(
        capsys,
        "merge",
        "--adapters",
        "--method",
        "task_arithmetic",
        str(adapters["a"]),
        str(adapters["b"]),
        "--weight",
        "0.7",
        "--weight",
        "0.3",
        "-o",
        str(out),
        "-q",
    )
    assert r["modules"] == 6 and r["rank"] == 6 and r["max_rel_error"] < 1e-5
    cfg = json.loads((out / "adapter_config.json").read_text())
    assert cfg["peft_type"] == "LORA" and cfg["lora_alpha"] == cfg["r"]
    got = peft_merged(adapters, out)
    want = folded_merge(capsys, adapters, tmp_path, "task_arithmetic", "--weight", "0.7", "--weight", "0.3")
    for k, w in want.items():
        assert torch.allclose(got[k], w, atol=1e-5), k


def test_ties_at_a_low_rank_reports_the_refactoring_error(capsys, adapters, tmp_path):
    out = tmp_path / "ties"
    r = run_json(
        capsys,
        "merge",
        "--adapters",
        "--method",
        "ties",
        str(adapters["a"]),
        str(adapters["b"]),
        "--density",
        "0.5",
        "--rank",
        "4",
        "-o",
        str(out),
        "-q",
    )
    assert set(r["per_module"]) and all(m["rank"] == 4 for m in r["per_module"].values())
    assert 0 < r["mean_rel_error"] <= r["max_rel_error"] < 1
    got = peft_merged(adapters, out)
    want = folded_merge(capsys, adapters, tmp_path, "ties", "--density", "0.5")
    base = load_file(str(adapters["base"] / "model.safetensors"))
    for mod, info in r["per_module"].items():
        k = mod + ".weight"
        merged_delta, ours = want[k] - base[k], got[k] - base[k]
        rel = float(torch.linalg.vector_norm(ours - merged_delta) / torch.linalg.vector_norm(merged_delta))
        assert abs(rel - info["rel_error"]) < 1e-4, (k, rel, info["rel_error"])  # the reported error is the whole difference
    # adaptive: each module keeps what it needs under the cap
    r2 = run_json(
        capsys,
        "merge",
        "--adapters",
        "--method",
        "ties",
        str(adapters["a"]),
        str(adapters["b"]),
        "--density",
        "0.5",
        "--rank",
        "64",
        "--sv-threshold",
        "0.2",
        "-o",
        str(tmp_path / "adaptive"),
        "-q",
    )
    assert 1 <= min(m["rank"] for m in r2["per_module"].values()) <= max(m["rank"] for m in r2["per_module"].values()) <= 64
    peft_merged(adapters, tmp_path / "adaptive")  # loads in peft


def test_bad_adapters_all_at_once(capsys, adapters, tmp_path):
    out = tmp_path / "never"
    code, stdout, err = run(
        capsys,
        "merge",
        "--adapters",
        "--method",
        "ties",
        str(adapters["a"]),
        str(adapters["c"]),
        str(adapters["d"]),
        "-o",
        str(out),
    )
    assert code == 1 and stdout == "" and "Traceback" not in err and not out.exists()
    assert "trained on different bases" in err and str(adapters["d"]) in err
    assert "target different modules" in err and "k_proj" in err
    code, _, err = run(capsys, "merge", "--adapters", "--method", "slerp", str(adapters["a"]), str(adapters["b"]), "-o", str(out))
    assert code == 1 and "does not merge task vectors" in err and not out.exists()
