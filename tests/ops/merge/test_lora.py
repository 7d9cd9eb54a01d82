"""LoRA: folding a PEFT adapter streams to what peft's merge_and_unload gives; extraction loads in peft."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from builders import make_tiny_llama
from helpers import run, run_json
from safetensors.torch import load_file, save_file

from modelsurgeon.ops.merge.extract import truncated_svd
from modelsurgeon.ops.merge.lora import delta_weight, fold, pattern_value


def test_delta_hand_computed():
    a, b = torch.tensor([[1.0, 0.0, 1.0]]), torch.tensor([[1.0], [2.0]])
    assert torch.equal(delta_weight(a, b, 2 / 1, "linear", False), torch.tensor([[2.0, 0, 2], [4, 0, 4]]))
    assert torch.equal(delta_weight(a, b, 2.0, "linear", True), torch.tensor([[2.0, 4], [0, 0], [2, 4]]))  # fan_in_fan_out
    assert torch.equal(delta_weight(a, b, 1.0, "embedding", False), torch.tensor([[1.0, 2], [0, 0], [1, 2]]))
    w = torch.ones(2, 3)
    m = torch.tensor([3.0, 1.0])
    out = fold(w, a, b, 1.0, magnitude=m)  # DoRA: each row rescaled to the magnitude
    assert torch.allclose(torch.linalg.vector_norm(out, dim=1), m)


def test_pattern_rule_is_peft_s():
    pats = {"q_proj": 8, r"layers\.1\..*v_proj": 2}
    assert pattern_value(pats, "model.layers.0.self_attn.q_proj", 4) == 8
    assert pattern_value(pats, "model.layers.1.self_attn.v_proj", 4) == 2
    assert pattern_value(pats, "model.layers.0.self_attn.v_proj", 4) == 4
    assert pattern_value(pats, "model.layers.0.self_attn.xq_proj", 4) == 4  # whole name parts only


@pytest.fixture(scope="module")
def lora_setup(tmp_path_factory):
    """A base tiny Llama and PEFT adapters made with peft itself, with peft's own merged results."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    root = tmp_path_factory.mktemp("lora")
    base = make_tiny_llama(root / "base", seed=0)
    out = {"base": base, "root": root}
    variants = {
        "plain": dict(
            r=4,
            lora_alpha=8,
            target_modules=["q_proj", "v_proj", "down_proj"],
            rank_pattern={"down_proj": 2},
            alpha_pattern={"v_proj": 3},
        ),
        "rslora_dora": dict(r=4, lora_alpha=8, target_modules=["k_proj", "up_proj"], use_rslora=True, use_dora=True),
        "head": dict(r=2, lora_alpha=2, target_modules=["o_proj"], modules_to_save=["lm_head"]),
    }
    for name, kw in variants.items():
        torch.manual_seed(1)
        pm = get_peft_model(AutoModelForCausalLM.from_pretrained(base), LoraConfig(init_lora_weights=False, **kw))
        if name == "head":
            with torch.no_grad():
                pm.base_model.model.lm_head.modules_to_save["default"].weight.add_(0.5)
        pm.save_pretrained(root / f"adapter-{name}")
        pm.merge_and_unload().save_pretrained(root / f"peft-{name}")
        out[name] = root / f"adapter-{name}"
    return out


@pytest.mark.parametrize("variant", ["plain", "rslora_dora", "head"])
def test_fold_equals_peft_merge_and_unload(capsys, lora_setup, tmp_path, variant):
    out = tmp_path / "folded"
    r = run_json(capsys, "merge", "--base", lora_setup["base"], "--lora", lora_setup[variant], "-o", out, "-q")
    assert r["method"] == "passthrough"
    got, want = (
        load_file(str(out / "model.safetensors")),
        load_file(str(lora_setup["root"] / f"peft-{variant}" / "model.safetensors")),
    )
    assert set(got) == set(want)
    for k in want:
        assert torch.allclose(got[k], want[k], atol=1e-6), k
    base = load_file(str(lora_setup["base"] / "model.safetensors"))
    assert sum(not torch.equal(got[k], base[k]) for k in got) > 0


def test_recipe_model_plus_adapter(capsys, lora_setup, tmp_path):
    """`base+adapter` in a recipe: the adapter is folded on the fly, then merged like any model."""
    root = lora_setup["root"]
    recipe = tmp_path / "r.yml"
    recipe.write_text(f"""\
merge_method: task_arithmetic
base_model: {lora_setup["base"]}
models:
  - model: {lora_setup["base"]}+{lora_setup["plain"]}
    parameters: {{weight: 0.5}}
""")
    run_json(capsys, "merge", recipe, "-o", tmp_path / "m", "-q")
    got = load_file(str(tmp_path / "m" / "model.safetensors"))
    base = load_file(str(lora_setup["base"] / "model.safetensors"))
    peft = load_file(str(root / "peft-plain" / "model.safetensors"))
    for k in got:
        assert torch.allclose(got[k], base[k] + 0.5 * (peft[k] - base[k]), atol=1e-6), k


def test_adapter_targets_missing_from_the_base(capsys, lora_setup, tmp_path):
    bad = tmp_path / "bad-adapter"
    shutil.copytree(lora_setup["plain"], bad)
    sd = load_file(str(bad / "adapter_model.safetensors"))
    save_file({k.replace("q_proj", "qq_proj"): v for k, v in sd.items()}, str(bad / "adapter_model.safetensors"))
    out = tmp_path / "out"
    code, stdout, err = run(capsys, "merge", "--base", lora_setup["base"], "--lora", bad, "-o", out)
    assert code == 1 and stdout == "" and "Traceback" not in err
    lines = err.strip().splitlines()
    assert lines[0] == "error: 2 problems with the merge, nothing was written:"
    assert "targets model.layers.0.self_attn.qq_proj, but the base" in lines[1]
    assert "no tensor model.layers.0.self_attn.qq_proj.weight" in lines[1]
    assert not out.exists()


def test_adapter_with_wrong_rank_or_not_lora(capsys, lora_setup, tmp_path):
    bad = tmp_path / "bad"
    shutil.copytree(lora_setup["plain"], bad)
    cfg = json.loads((bad / "adapter_config.json").read_text())
    (bad / "adapter_config.json").write_text(json.dumps({**cfg, "r": 5, "rank_pattern": {}}))
    code, _, err = run(capsys, "merge", "--base", lora_setup["base"], "--lora", bad, "-o", tmp_path / "o")
    assert code == 1 and "has rank 4 but adapter_config.json says r=5" in err
    (bad / "adapter_config.json").write_text(json.dumps({**cfg, "peft_type": "IA3"}))
    code, _, err = run(capsys, "merge", "--base", lora_setup["base"], "--lora", bad, "-o", tmp_path / "o")
    assert code == 1 and "is a IA3 adapter; only LoRA adapters can be folded" in err


# --- extraction


@pytest.fixture(scope="module")
def finetune(lora_setup):
    """A fine-tune whose linear deltas have rank 3, with a changed final norm."""
    root = lora_setup["root"]
    ft = root / "ft"
    shutil.copytree(lora_setup["base"], ft)
    sd = load_file(str(ft / "model.safetensors"))
    g = torch.Generator().manual_seed(5)
    for k, v in sd.items():
        if v.dim() == 2 and "embed" not in k and "lm_head" not in k:
            sd[k] = v + 0.05 * (torch.randn(v.shape[0], 3, generator=g) @ torch.randn(3, v.shape[1], generator=g))
    sd["model.norm.weight"] = sd["model.norm.weight"] + 0.5
    save_file(sd, str(ft / "model.safetensors"), metadata={"format": "pt"})
    return ft


def test_extract_loads_in_peft_and_reproduces_the_finetune(capsys, lora_setup, finetune, tmp_path):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    out = tmp_path / "adapter"
    r = run_json(capsys, "merge", "--extract-lora", finetune, "--base", lora_setup["base"], "--rank", "4", "-o", out, "-q")
    assert r["modules"] == 14 and r["full_tensors"] == ["model.norm.weight"] and r["max_rel_error"] < 1e-5
    cfg = json.loads((out / "adapter_config.json").read_text())
    assert cfg["r"] == cfg["lora_alpha"] == 4 and cfg["peft_type"] == "LORA" and cfg["modules_to_save"] == ["model.norm"]
    model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(lora_setup["base"]), out)
    ft = AutoModelForCausalLM.from_pretrained(finetune)
    x = torch.randint(0, 256, (2, 12), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert torch.allclose(model(x).logits, ft(x).logits, atol=1e-4)


def test_extract_low_rank_truncates_and_reports_the_error(capsys, lora_setup, finetune, tmp_path):
    r = run_json(
        capsys,
        "merge",
        "--extract-lora",
        finetune,
        "--base",
        lora_setup["base"],
        "--rank",
        "1",
        "--exact-svd",
        "--exclude",
        "mlp",
        "-o",
        tmp_path / "a1",
        "-q",
    )
    assert r["modules"] == 8 and 0.1 < r["mean_rel_error"] < 1
    sd = load_file(str(tmp_path / "a1" / "adapter_model.safetensors"))
    assert sd["base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight"].shape == (1, 64)


def test_truncated_svd_randomized_matches_exact_on_low_rank():
    g = torch.Generator().manual_seed(0)
    m = torch.randn(1500, 6, generator=g) @ torch.randn(6, 900, generator=g)  # big enough for the randomized path
    u, s, vh = truncated_svd(m, 6, exact=False, generator=torch.Generator().manual_seed(1))
    assert torch.allclose((u * s) @ vh, m, atol=1e-3 * m.abs().max())


def test_extract_refuses_mismatched_models(capsys, lora_setup, tmp_path):
    other = make_tiny_llama(tmp_path / "wide", seed=2, intermediate_size=96)
    code, stdout, err = run(
        capsys, "merge", "--extract-lora", other, "--base", lora_setup["base"], "--rank", "2", "-o", tmp_path / "x"
    )
    assert code == 1 and stdout == "" and "problems with the LoRA extraction" in err
    assert "model.layers.0.mlp.up_proj.weight: " in err and "[96, 64]" in err and not (tmp_path / "x").exists()


def test_extract_adaptive_rank_per_module_with_errors(capsys, lora_setup, finetune, tmp_path):
    """The fine-tune's deltas have rank 3: a relative threshold finds it in every module, under a cap of 8;
    the error of each module is reported and the adapter loads in peft and reproduces the fine-tune."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    out = tmp_path / "adaptive"
    r = run_json(
        capsys,
        "merge",
        "--extract-lora",
        finetune,
        "--base",
        lora_setup["base"],
        "--rank",
        "8",
        "--sv-threshold",
        "0.01",
        "-o",
        out,
        "-q",
    )
    assert r["sv_threshold"] == 0.01 and len(r["per_module"]) == 14
    assert {m["rank"] for m in r["per_module"].values()} == {3}
    assert max(m["rel_error"] for m in r["per_module"].values()) == r["max_rel_error"] < 1e-5
    cfg = json.loads((out / "adapter_config.json").read_text())
    assert cfg["r"] == 3 and cfg["rank_pattern"] == {}
    model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(lora_setup["base"]), out)
    ft = AutoModelForCausalLM.from_pretrained(finetune)
    x = torch.randint(0, 256, (2, 12), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert torch.allclose(model(x).logits, ft(x).logits, atol=1e-4)
    # a coarse threshold keeps fewer values in some modules: rank_pattern carries them
    r2 = run_json(
        capsys,
        "merge",
        "--extract-lora",
        finetune,
        "--base",
        lora_setup["base"],
        "--rank",
        "8",
        "--sv-threshold",
        "0.9",
        "--exact-svd",
        "-o",
        tmp_path / "coarse",
        "-q",
    )
    ranks = {m: v["rank"] for m, v in r2["per_module"].items()}
    assert min(ranks.values()) >= 1 and max(ranks.values()) <= 3 and r2["max_rel_error"] > 0.01
    cfg2 = json.loads((tmp_path / "coarse" / "adapter_config.json").read_text())
    assert cfg2["r"] == max(ranks.values())
    sd = load_file(str(tmp_path / "coarse" / "adapter_model.safetensors"))
    for m, k in ranks.items():
        assert sd[f"base_model.model.{m}.lora_A.weight"].shape[0] == k


def test_extract_embeddings_as_lora(capsys, lora_setup, finetune, tmp_path):
    """--embed-lora factors a changed embedding (PEFT's lora_embedding_A/B) instead of saving it whole."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    ft2 = tmp_path / "ft-emb"
    shutil.copytree(finetune, ft2)
    sd = load_file(str(ft2 / "model.safetensors"))
    g = torch.Generator().manual_seed(9)
    e = sd["model.embed_tokens.weight"]
    sd["model.embed_tokens.weight"] = e + 0.05 * (
        torch.randn(e.shape[0], 2, generator=g) @ torch.randn(2, e.shape[1], generator=g)
    )
    save_file(sd, str(ft2 / "model.safetensors"), metadata={"format": "pt"})
    out = tmp_path / "emb"
    r = run_json(
        capsys, "merge", "--extract-lora", ft2, "--base", lora_setup["base"], "--rank", "4", "--embed-lora", "-o", out, "-q"
    )
    assert "model.embed_tokens" in r["per_module"] and "model.embed_tokens.weight" not in r["full_tensors"]
    ad = load_file(str(out / "adapter_model.safetensors"))
    assert ad["base_model.model.model.embed_tokens.lora_embedding_A"].shape == (4, 256)
    assert ad["base_model.model.model.embed_tokens.lora_embedding_B"].shape == (64, 4)
    model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(lora_setup["base"]), out)
    ft = AutoModelForCausalLM.from_pretrained(ft2)
    x = torch.randint(0, 256, (2, 12), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert torch.allclose(model(x).logits, ft(x).logits, atol=1e-4)
