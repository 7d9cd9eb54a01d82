"""``modules:`` recipes (multi-module models: a vision-language model's text decoder, vision tower and
projector) against mergekit 0.1.5's own output (tests/data/mergekit/modules.json, made by make.py with
mergekit-yaml): TIES with per-module models, slices (the text decoder restacked to three layers) and
per-module parameters, on a tiny Mistral3 (LLaVA-style prefixes) and a tiny Qwen2.5-VL (the projector
under ``visual.merger.``). The output equals mergekit's tensor for tensor, config.json's text layer count
follows the slices, and transformers loads it with every weight present. Then what is refused before a
tensor is read."""

from __future__ import annotations

import base64
import json
from pathlib import Path

import pytest
import torch
from builders import write_checkpoint
from helpers import run_json
from safetensors.torch import load_file

from modelsurgeon.ops.core.errors import PlanError
from modelsurgeon.ops.merge.plan import plan_merge
from modelsurgeon.recipes.merge import MergeConfig
from modelsurgeon.recipes.mergekit import parse_recipe

DATA = json.loads((Path(__file__).resolve().parents[2] / "data" / "mergekit" / "modules.json").read_text())


def unpack(packed: dict) -> dict[str, torch.Tensor]:
    return {
        k: torch.frombuffer(bytearray(base64.b64decode(b64)), dtype=torch.float32).reshape(shape)
        for k, (shape, b64) in packed.items()
    }


@pytest.fixture(scope="module", params=sorted(DATA["cases"]))
def vlm(request, tmp_path_factory):
    """(kind, {name: folder}) for one model type's base and fine-tunes."""
    case = DATA["cases"][request.param]
    root = tmp_path_factory.mktemp(request.param)
    return request.param, {n: write_checkpoint(root / n, unpack(sd), case["config"]) for n, sd in case["models"].items()}


def recipe_for(folders: dict[str, Path], text: str = DATA["recipe"]) -> str:
    for n, p in folders.items():
        text = text.replace(f"'{{{n}}}'", str(p))
    return text


def test_modules_recipe_equals_mergekit_and_loads(capsys, tmp_path, vlm):
    import transformers

    kind, folders = vlm
    case = DATA["cases"][kind]
    (folders["base"] / "processor_config.json").write_text('{"processor_class": "test"}')
    (tmp_path / "r.yml").write_text(recipe_for(folders))
    out = tmp_path / "out"
    res = run_json(capsys, "merge", str(tmp_path / "r.yml"), "-o", str(out), "-q", "--device", "cpu")
    ours = load_file(str(out / "model.safetensors"))
    theirs = unpack(case["tensors"])
    assert set(ours) == set(theirs)
    assert res["tensors"] == len(theirs)
    for k, want in theirs.items():
        assert torch.equal(ours[k], want), (k, float((ours[k] - want).abs().max()))
    # the restacked text decoder: three layers, and config.json says so, as in mergekit's
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["text_config"]["num_hidden_layers"] == case["out_config"]["text_config"]["num_hidden_layers"] == 3
    assert cfg["vision_config"] == case["config"]["vision_config"]
    assert (out / "processor_config.json").read_text() == '{"processor_class": "test"}'  # the processor comes along
    # modules really differ: the vision tower is not the text decoder's merge (density 0.8 vs 0.5), and the
    # projector took its module's weight (0.1): base + 0.1 * trimmed task vector of b, not 0.5
    cls = {
        "mistral3": transformers.Mistral3ForConditionalGeneration,
        "qwen2_5_vl": transformers.Qwen2_5_VLForConditionalGeneration,
    }
    model, info = cls[kind].from_pretrained(out, output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"]
    with torch.no_grad():
        logits = model(input_ids=torch.tensor([[1, 2, 3, 4]])).logits
    assert logits.shape == (1, 4, cfg["text_config"]["vocab_size"]) and torch.isfinite(logits).all()


def test_models_recipe_on_a_vlm_counts_layers_per_module_as_mergekit(capsys, tmp_path, vlm):
    """models: (no modules:) on a VLM whose vision tower has 3 layers and text decoder 2: a gradient t runs
    over each module's own layers, as in mergekit (slerp, so every t shows in the output)."""
    kind, folders = vlm
    (tmp_path / "r.yml").write_text(recipe_for(folders, DATA["models_recipe"]))
    run_json(capsys, "merge", str(tmp_path / "r.yml"), "-o", str(tmp_path / "out"), "-q", "--device", "cpu")
    ours = load_file(str(tmp_path / "out" / "model.safetensors"))
    theirs = unpack(DATA["cases"][kind]["models_tensors"])
    assert set(ours) == set(theirs)
    for k, want in theirs.items():
        rel = float((ours[k].double() - want.double()).abs().max() / want.double().abs().max())
        assert rel <= 1e-6, (k, rel)


def test_module_parameters_take_effect(capsys, tmp_path, vlm):
    """Changing one module's parameters changes that module's tensors only."""
    kind, folders = vlm
    base = recipe_for(folders)
    changed = base.replace("parameters: {weight: 0.1}", "parameters: {weight: 0.7}")
    assert changed != base
    outs = []
    for i, text in enumerate((base, changed)):
        (tmp_path / f"r{i}.yml").write_text(text)
        run_json(capsys, "merge", str(tmp_path / f"r{i}.yml"), "-o", str(tmp_path / f"o{i}"), "-q", "--device", "cpu")
        outs.append(load_file(str(tmp_path / f"o{i}" / "model.safetensors")))
    diff = {k for k in outs[0] if not torch.equal(outs[0][k], outs[1][k])}
    projector = ("multi_modal_projector.",) if kind == "mistral3" else ("visual.merger.",)
    assert diff and all(k.startswith(projector) for k in diff)


def test_a_module_left_out_is_copied_from_the_base(capsys, tmp_path, vlm):
    """mergekit leaves an unnamed module's tensors out of its output; we copy them from the reference
    model (the base) and say so, so the checkpoint loads whole."""
    kind, folders = vlm
    text = recipe_for(folders)
    text = text[: text.index("  multi_modal_projector:")]
    (tmp_path / "r.yml").write_text(text)
    res = run_json(capsys, "merge", str(tmp_path / "r.yml"), "-o", str(tmp_path / "out"), "-q", "--device", "cpu")
    assert any("merges no multi_modal_projector" in w and "copied" in w for w in res["warnings"])
    ours = load_file(str(tmp_path / "out" / "model.safetensors"))
    base = load_file(str(folders["base"] / "model.safetensors"))
    projector = ("multi_modal_projector.",) if kind == "mistral3" else ("visual.merger.",)
    copied = [k for k in ours if k.startswith(projector)]
    assert copied and all(torch.equal(ours[k], base[k]) for k in copied)
    assert len(ours) == len(unpack(DATA["cases"][kind]["tensors"]))


def _plan_problems(text: str) -> list[str]:
    cfg = MergeConfig(recipe=parse_recipe(text, "r.yml"))
    with pytest.raises(PlanError) as e:
        plan_merge(cfg).close()
    return e.value.problems


def test_refused_before_any_tensor_is_read(vlm, tmp_path, monkeypatch):
    """An unknown module name (the model's modules listed), slices on a module without layers, a layer
    range past the module's own layers, and top-level slices on a multi-module model: all at plan time,
    with no tensor data read."""
    from modelsurgeon.ops.io import checkpoint

    def no_read(*a, **k):
        raise AssertionError("a tensor was read")

    for method in ("get", "iter_chunks", "iter_tensors"):
        monkeypatch.setattr(checkpoint.Checkpoint, method, no_read)
    _, f = vlm
    probs = _plan_problems(
        f"merge_method: linear\nmodules:\n  text_decodr:\n    models: [{{model: {f['a']}}}, {{model: {f['b']}}}]\n"
    )
    assert len(probs) == 1 and "no module 'text_decodr'" in probs[0] and "text_decoder" in probs[0]
    assert "vision_tower" in probs[0] and "multi_modal_projector" in probs[0]
    probs = _plan_problems(
        "merge_method: linear\nmodules:\n  multi_modal_projector:\n    slices:\n"
        f"      - sources: [{{model: {f['a']}, layer_range: [0, 1]}}, {{model: {f['b']}, layer_range: [0, 1]}}]\n"
        "  text_decoder:\n    slices:\n"
        f"      - sources: [{{model: {f['a']}, layer_range: [0, 3]}}, {{model: {f['b']}, layer_range: [0, 3]}}]\n"
    )
    assert any("multi_modal_projector has no layers to slice" in p for p in probs)
    assert any("layer_range [0, 3]" in p and "its 2 layers" in p for p in probs)
    probs = _plan_problems(
        f"merge_method: linear\nslices:\n  - sources: [{{model: {f['a']}, layer_range: [0, 2]}}, {{model: {f['b']}, layer_range: [0, 2]}}]\n"
    )
    assert len(probs) == 1 and "multi-module model" in probs[0] and "modules:" in probs[0]


def test_modules_on_a_one_module_model_is_refused(tmp_path):
    from builders import make_tiny_llama

    a, b = make_tiny_llama(tmp_path / "a", seed=0), make_tiny_llama(tmp_path / "b", seed=1)
    with pytest.raises(Exception) as e:
        plan_merge(
            MergeConfig(
                recipe=parse_recipe(
                    f"merge_method: linear\nmodules:\n  text_decoder:\n    models: [{{model: {a}}}, {{model: {b}}}]\n"
                )
            )
        ).close()
    assert "one-module model" in str(e.value) and "use models: or slices:" in str(e.value)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("merge_method: linear\nmodels: [a]\nmodules: {x: {models: [a]}}\n", "give only one of models:, slices: or modules:"),
        ("merge_method: linear\nmodules: {x: {parameters: {weight: 1}}}\n", "give models: or slices: (one of them)"),
        ("merge_method: linear\nmodules: {x: {models: [a], slices: []}}\n", "give models: or slices: (one of them)"),
        (
            "merge_method: linear\nmodules: {x: {models: [a], layers: 2}}\n",
            "unknown key; known keys here: models, slices, parameters",
        ),
        ("merge_method: linear\nmodules: []\n", "expected a mapping of module name"),
    ],
)
def test_modules_syntax_errors_name_the_line(text, message):
    with pytest.raises(PlanError) as e:
        parse_recipe(text, "r.yml")
    assert any(message in p and "r.yml line" in p for p in e.value.problems), e.value.problems


def test_modules_recipe_round_trips_and_names_its_models():
    r = parse_recipe(DATA["recipe"].replace("'{base}'", "base").replace("'{a}'", "a").replace("'{b}'", "b"))
    assert [str(m) for m in r.referenced_models()] == ["base", "a", "b"]
    again = parse_recipe(r.to_yaml())
    assert again.modules == r.modules and again.parameters == r.parameters
    assert set(r.modules) == {"text_decoder", "vision_tower", "multi_modal_projector"}
    assert len(r.modules["text_decoder"].slices) == 2 and r.modules["vision_tower"].parameters["density"] == 0.8


def test_a_misspelt_module_parameter_is_refused_with_its_line(vlm):
    _, f = vlm
    text = (
        f"merge_method: ties\nbase_model: {f['base']}\nmodules:\n  vision_tower:\n    parameters: {{desnity: 0.5}}\n"
        f"    models: [{{model: {f['a']}}}]\n  text_decoder:\n    models: [{{model: {f['a']}, parameters: {{weight: 2, densty: 1}}}}]\n"
    )
    probs = _plan_problems(text)
    assert any("line 5" in p and "unknown parameter 'desnity'" in p and "did you mean density" in p for p in probs), probs
    assert any("line 8" in p and "unknown parameter 'densty'" in p for p in probs), probs
