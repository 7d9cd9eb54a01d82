"""MoE assembly from mergekit-moe recipes: loads and generates in transformers, experts and routers exact."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from builders import make_llama_with_own_tokenizer
from helpers import run, run_json
from safetensors.torch import load_file, save_file

TEXT = "the quick brown fox jumps over the lazy dog; code, maths and poems " * 20


def expert(base: Path, dst: Path, seed: int) -> Path:
    """A 'fine-tune' whose MLPs differ from the base."""
    shutil.copytree(base, dst)
    sd = load_file(str(base / "model.safetensors"))
    g = torch.Generator().manual_seed(seed)
    for k, v in sd.items():
        if ".mlp." in k:
            sd[k] = v + 0.05 * torch.randn(v.shape, generator=g)
    save_file(sd, str(dst / "model.safetensors"), metadata={"format": "pt"})
    return dst


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("moe")
    base = make_llama_with_own_tokenizer(root / "base", TEXT, 0, layers=2)
    return {"base": base, **{n: expert(base, root / n, i) for i, n in enumerate(("code", "maths", "poems", "chat"), 1)}}


def recipe(m, gate: str, arch: str | None = None, shared: bool = False) -> str:
    lines = [f"base_model: {m['base']}", f"gate_mode: {gate}", "dtype: float32", "experts_per_token: 2"]
    if arch:
        lines.append(f"architecture: {arch}")
    lines.append("experts:")
    for name, pos, neg in (
        ("code", "code and bugs", "poems"),
        ("maths", "maths, numbers", None),
        ("poems", "poems of the fox", None),
        ("chat", "hello there", None),
    ):
        lines += [f"  - source_model: {m[name]}", f"    positive_prompts: [{pos!r}, 'the lazy dog']"]
        if neg:
            lines.append(f"    negative_prompts: [{neg!r}]")
    if shared:
        lines += [
            "shared_experts:",
            f"  - source_model: {m['chat']}",
            "    positive_prompts: ['anything at all']",
            "    residual_scale: 0.5",
        ]
    return "\n".join(lines) + "\n"


def build(capsys, tmp_path, text: str, *flags) -> tuple[Path, dict]:
    path = tmp_path / "moe.yml"
    path.write_text(text)
    out = tmp_path / "out"
    return out, run_json(capsys, "merge", str(path), "-o", str(out), "-q", *flags)


def loads_and_generates(out: Path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(out)
    model = AutoModelForCausalLM.from_pretrained(out)
    ids = tok("the quick brown", return_tensors="pt")["input_ids"]
    gen = model.generate(ids, max_new_tokens=4, do_sample=False)
    assert gen.shape == (1, ids.shape[1] + 4)
    return model, tok


def test_mixtral_with_cheap_embed_routers(capsys, models, tmp_path):
    from transformers import AutoTokenizer

    out, r = build(capsys, tmp_path, recipe(models, "cheap_embed"))
    assert r["architecture"] == "mixtral" and r["layers"] == 2 and not r["dry_run"]
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["model_type"] == "mixtral" and cfg["num_local_experts"] == 4 and cfg["num_experts_per_tok"] == 2
    loads_and_generates(out)
    got = load_file(str(out / "model.safetensors"))
    for e, name in enumerate(("code", "maths", "poems", "chat")):
        src = load_file(str(models[name] / "model.safetensors"))
        for p, w in (("gate_proj", "w1"), ("down_proj", "w2"), ("up_proj", "w3")):
            assert torch.equal(
                got[f"model.layers.1.block_sparse_moe.experts.{e}.{w}.weight"], src[f"model.layers.1.mlp.{p}.weight"]
            )
    base = load_file(str(models["base"] / "model.safetensors"))
    assert torch.equal(got["model.layers.0.self_attn.q_proj.weight"], base["model.layers.0.self_attn.q_proj.weight"])
    # mergekit's cheap_embed: normalised sum of the prompts' (bos + prompt) token embeddings, minus the negatives'
    tok = AutoTokenizer.from_pretrained(models["base"])
    emb = base["model.embed_tokens.weight"]

    def vec(prompts):
        ids = [i for p in prompts for i in tok(tok.bos_token + p, add_special_tokens=False)["input_ids"]]
        v = emb[ids].sum(0)
        return v / v.norm()

    want = vec(["code and bugs", "the lazy dog"]) - vec(["poems"])
    want = want / want.norm()
    for layer in (0, 1):
        assert torch.allclose(got[f"model.layers.{layer}.block_sparse_moe.gate.weight"][0], want, atol=1e-6)


@pytest.mark.parametrize("gate", ["hidden", "hidden_avg"])
def test_hidden_routers_are_the_bases_hidden_states(capsys, models, tmp_path, gate):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    out, _ = build(capsys, tmp_path, recipe(models, gate))
    got = load_file(str(out / "model.safetensors"))
    tok = AutoTokenizer.from_pretrained(models["base"])
    base = AutoModelForCausalLM.from_pretrained(models["base"])
    with torch.no_grad():
        hs = [
            torch.stack(
                base(
                    **tok(tok.bos_token + p, add_special_tokens=False, return_tensors="pt"), output_hidden_states=True
                ).hidden_states[:-1]
            )[:, 0]
            for p in ("maths, numbers", "the lazy dog")
        ]
    per = [h[:, -1] if gate == "hidden" else h.mean(1) for h in hs]
    want = (per[0] + per[1]) / 2
    want = want / want.norm(dim=-1, keepdim=True)
    for layer in (0, 1):
        assert torch.allclose(got[f"model.layers.{layer}.block_sparse_moe.gate.weight"][1], want[layer], atol=1e-5)
    loads_and_generates(out)


@pytest.mark.parametrize("gate", ["hidden", "hidden_avg"])
def test_hidden_routers_walk_the_base_one_layer_at_a_time(capsys, models, tmp_path, monkeypatch, gate):
    """The CLI's hidden routers come from the calibration engine's layer walk: the base is never loaded
    whole (from_pretrained refuses here), at every layer the parameters resident are the embeddings, norm and
    head plus that one layer, and the routers equal the whole-model path's (transformers' hidden states)."""
    import transformers
    import yaml

    from modelsurgeon.ops.calibrate.model import LayerwiseModel
    from modelsurgeon.ops.merge.moe import gate_vectors, plan_moe
    from modelsurgeon.recipes.merge import MoEConfig

    text = recipe(models, gate)
    with plan_moe(MoEConfig.from_recipe(yaml.safe_load(text), "moe.yml", device="cpu")) as plan:
        whole = gate_vectors(plan)  # no layer walk given: the base runs whole in transformers

    resident: list[tuple[int, int, int]] = []  # (layer, bytes resident, that layer's bytes)
    layer = LayerwiseModel.layer

    def watched(self, i):
        with layer(self, i) as mod:
            params = [*self.model.parameters(), *(p for m in self._originals for p in m.parameters())]
            on = sum(p.numel() * p.element_size() for p in params if p.device.type != "meta")
            resident.append((i, on, sum(p.numel() * p.element_size() for p in mod.parameters())))
            yield mod

    import contextlib

    monkeypatch.setattr(LayerwiseModel, "layer", contextlib.contextmanager(watched))

    def refuse(*a, **k):
        raise AssertionError("the base was loaded whole")

    monkeypatch.setattr(transformers.AutoModelForCausalLM, "from_pretrained", refuse)
    out, _ = build(capsys, tmp_path, text)
    got = load_file(str(out / "model.safetensors"))
    for i in range(2):
        assert torch.allclose(got[f"model.layers.{i}.block_sparse_moe.gate.weight"], whole[i], atol=1e-6, rtol=0)
    sd = load_file(str(models["base"] / "model.safetensors"))
    total = sum(v.numel() * v.element_size() for v in sd.values())
    outside = sum(v.numel() * v.element_size() for k, v in sd.items() if ".layers." not in k)
    assert [i for i, _, _ in resident] == [0, 1]
    for _, on, this_layer in resident:
        assert on == outside + this_layer < total


def test_qwen_moe_with_a_shared_expert_and_random_gates(capsys, models, tmp_path):
    out, r = build(capsys, tmp_path, recipe(models, "random", arch="Qwen MoE", shared=True), "--seed", "3")
    assert r["architecture"] == "qwen" and r["shared_experts"] == [str(models["chat"])]
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["model_type"] == "qwen2_moe" and cfg["num_experts"] == 4
    got = load_file(str(out / "model.safetensors"))
    chat = load_file(str(models["chat"] / "model.safetensors"))
    assert torch.equal(
        got["model.layers.0.mlp.shared_expert.down_proj.weight"], chat["model.layers.0.mlp.down_proj.weight"] * 0.5
    )
    assert torch.equal(got["model.layers.0.self_attn.q_proj.bias"], torch.zeros(32))
    g = got["model.layers.0.mlp.gate.weight"]
    assert g.shape == (4, 32) and 0.5 < float(g.std()) < 1.5  # standard normal rows
    loads_and_generates(out)


def test_bad_moe_recipes(capsys, models, tmp_path):
    out = tmp_path / "never"
    same = (
        recipe(models, "cheap_embed")
        .replace(str(models["maths"]), str(models["code"]))
        .replace(str(models["poems"]), str(models["code"]))
        .replace(str(models["chat"]), str(models["code"]))
    )
    (tmp_path / "same.yml").write_text(same)
    code, _, err = run(capsys, "merge", str(tmp_path / "same.yml"), "-o", str(out))
    assert code == 2 and "every expert is the same model" in err and "--i-understand-this-is-not-useful-without-training" in err
    (tmp_path / "k.yml").write_text(recipe(models, "cheap_embed").replace("experts_per_token: 2", "experts_per_token: 5"))
    code, _, err = run(capsys, "merge", str(tmp_path / "k.yml"), "-o", str(out))
    assert code == 2 and "experts_per_token is 5 but there are only 4 experts" in err
    assert not out.exists()
