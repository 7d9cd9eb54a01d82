"""Reading mergekit YAML: structure, values, gradients, filters, and errors with line and column."""

from __future__ import annotations

import pytest

from modelsurgeon.ops.core.errors import PlanError, SurgeonError, UsageError
from modelsurgeon.recipes.merge import Conditions, Gradient, ModelRef, evaluate
from modelsurgeon.recipes.mergekit import parse_recipe, parse_stages

TIES = """\
merge_method: ties
base_model: org/base@main
models:
  - model: org/a
    parameters:
      weight: 0.5
      density: [1, 0.7, 0.1]
  - model: org/b+my/adapter
    parameters:
      weight:
        - filter: self_attn
          value: [0, 1]
        - value: 0.3
parameters:
  normalize: true
  int8_mask: true
dtype: bfloat16
out_dtype: float16
tokenizer_source: base
"""

SLERP = """\
slices:
  - sources:
      - model: a
        layer_range: [0, 16]
      - model: b
        layer_range: [8, 24]
merge_method: slerp
base_model: a
parameters:
  t:
    - filter: mlp
      value: [1, 0.5, 0]
    - value: 0.5
"""


def test_reads_a_ties_recipe():
    r = parse_recipe(TIES, "ties.yml")
    assert r.merge_method == "ties" and r.base_model == ModelRef("org/base@main")
    assert [str(m.model) for m in r.models] == ["org/a", "org/b+my/adapter"]
    assert r.models[1].model.lora == "my/adapter"
    assert r.models[0].parameters["density"] == Gradient((1, 0.7, 0.1))
    assert isinstance(r.models[1].parameters["weight"], Conditions)
    assert dict(r.parameters) == {"normalize": True, "int8_mask": True}
    assert (r.dtype, r.out_dtype, r.tokenizer_source) == ("bfloat16", "float16", "base")
    assert r.text == TIES and r.locate("models[0].parameters.weight") == "ties.yml line 6, column 15"


def test_reads_slices():
    r = parse_recipe(SLERP)
    assert r.models is None and len(r.slices) == 1
    assert [s.layer_range for s in r.slices[0].sources] == [(0, 16), (8, 24)]


def test_gradients_interpolate_across_layers_and_filters_pick_the_first_match():
    g = Gradient((1, 0.7, 0.1))
    assert evaluate(g, "x", 0.0) == 1 and evaluate(g, "x", 1.0) == pytest.approx(0.1)
    assert evaluate(g, "x", 0.25) == pytest.approx(0.85) and evaluate(g, "x", 0.75) == pytest.approx(0.4)
    r = parse_recipe(TIES)
    w = r.models[1].parameters["weight"]
    assert evaluate(w, "model.layers.3.self_attn.q_proj.weight", 0.5) == pytest.approx(0.5)
    assert evaluate(w, "model.layers.3.mlp.up_proj.weight", 0.5) == 0.3
    only = Conditions(parse_recipe(SLERP).parameters["t"].items[:1])
    assert evaluate(only, "attn", 0.5) is None  # no condition matches: not set at this level


def test_to_yaml_round_trips():
    r = parse_recipe(TIES)
    again = parse_recipe(r.to_yaml())
    assert again.models == r.models and again.parameters == r.parameters and again.base_model == r.base_model
    s = parse_recipe(SLERP)
    assert parse_recipe(s.to_yaml()).slices == s.slices


def test_invalid_yaml_gives_line_and_column():
    with pytest.raises(SurgeonError, match=r"bad.yml is not valid YAML at line 3, column 1"):
        parse_recipe("merge_method: ties\nmodels: [a, b\n", "bad.yml")


def test_every_structural_problem_at_once():
    text = "merge_methd: ties\nmodels: [a]\nslices: 3\ndtype: f8\nparameters: {t: []}\n"
    with pytest.raises(PlanError) as e:
        parse_recipe(text, "r.yml")
    msg = str(e.value)
    assert "r.yml line 1, column 1: merge_methd: unknown key; known keys here: merge_method" in msg
    assert "did you mean merge_method?" in msg
    assert "merge_method is missing" in msg
    assert "line 3, column 9: slices: give only one of models:, slices: or modules:" in msg
    assert "line 4, column 8: dtype: unknown dtype 'f8'" in msg
    assert "line 5, column 17: parameters.t: is an empty list" in msg
    assert len(e.value.problems) == 5


@pytest.mark.parametrize(
    "text,needle",
    [
        ("merge_method: x\nmodels: [a]\nmodules: {}\n", "modules: give only one of models:, slices: or modules:"),
        ("merge_method: x\nmodules: {}\n", "modules: expected a mapping of module name: {models or slices, parameters}"),
        (
            "merge_method: x\nmodels: [a]\nchat_template: chatlm\n",
            "unknown chat template 'chatlm'; use auto, Jinja text, or one of: alpaca, chatml, exaone, llama3, mistral (did you mean chatml?)",
        ),
        ("merge_method: x\nmodels: [a]\nchat_template: '{% if %}'\n", "the Jinja template does not parse"),
        (
            "merge_method: x\nmodels: [a]\ntokenizer:\n  tokens:\n    <t>: {source: {kind: model_token, model: a}}\n",
            "give exactly one of token or token_id",
        ),
        (
            "merge_method: x\nmodels: [a]\ntokenizer:\n  tokens:\n    <t>: {source: {kind: nope}}\n",
            "kind must be model_token or zero",
        ),
        ("merge_method: x\nmodels: [a]\ntokenizer:\n  tokens:\n    <t>: {force: true}\n", "force needs a source"),
        ("merge_method: x\nmodels: [a]\ntokenizer:\n  pad_to_multiple_of: 0\n", "expected a whole number >= 1"),
        ("merge_method: x\nslices:\n  - sources:\n      - model: a\n", "a slice source needs layer_range"),
        (
            "merge_method: x\nslices:\n  - sources:\n      - {model: a, layer_range: [4, 2]}\n",
            "end is exclusive and must exceed start",
        ),
        (
            "merge_method: x\nslices:\n  - sources:\n      - {model: a, layer_range: [0, 2]}\n      - {model: b, layer_range: [0, 3]}\n",
            "all sources of a slice need the same number of layers, got [2, 3]",
        ),
        (
            "merge_method: x\nmodels:\n  - model: a\n    weight: 1\n",
            "models[0].weight: unknown key; known keys here: model, parameters",
        ),
        ("merge_method: x\nmodels: [a]\nmodels: [b]\n", "models: appears twice"),
        ("merge_method: x\nmodels: []\n", "expected a non-empty list of models"),
        ("merge_method: x\nmodels: [a]\nparameters: {w: [1, {value: 2}]}\n", "a list must hold only numbers"),
        ("merge_method: x\nmodels: [a]\nparameters: {w: .nan}\n", "nan is not a usable value"),
    ],
)
def test_rejects(text, needle):
    with pytest.raises(PlanError, match=None) as e:
        parse_recipe(text, "r.yml")
    assert needle in str(e.value), str(e.value)


def test_empty_and_multi_document_files():
    with pytest.raises(SurgeonError, match="is empty"):
        parse_recipe("# nothing\n")
    with pytest.raises(SurgeonError, match="2 YAML documents"):
        parse_recipe("merge_method: a\nmodels: [x]\n---\nmerge_method: b\nmodels: [y]\n")
    stages = parse_stages("name: one\nmerge_method: a\nmodels: [x]\n---\nmerge_method: b\nmodels: [one]\n")
    assert [s.name for s in stages] == ["one", None] and stages[1].models[0].model.model == "one"
    assert stages[0].text == "name: one\nmerge_method: a\nmodels: [x]\n"


def test_tokenizer_block_and_chat_template():
    r = parse_recipe("merge_method: linear\nmodels: [a]\ntokenizer:\n  source: a\nchat_template: '{{ x }}'\n")
    assert r.tokenizer_source == "a" and r.chat_template == "{{ x }}"
    r = parse_recipe("merge_method: linear\nmodels: [a]\nchat_template: auto\n")
    assert r.chat_template == "auto"
    r = parse_recipe("merge_method: linear\nmodels: [a]\ntokenizer:\n  tokens: {<t>: {source: a}}\n")
    assert r.tokenizer_source == "union" and r.tokens["<t>"].source.model.model == "a"  # mergekit's default source


# --- the configs


def test_merge_config_lays_flags_over_a_recipe_file(tmp_path):
    from modelsurgeon.recipes.merge import MergeConfig

    path = tmp_path / "ties.yml"
    path.write_text(TIES)
    cfg = MergeConfig.build(path, seed=3, dtype="fp32", tokenizer_source=None)
    assert cfg.KIND == "merge" and cfg.seed == 3 and cfg.device == "auto"
    assert cfg.recipe.dtype == "float32" and cfg.recipe.out_dtype == "float16"  # the flag wins, the rest stays
    assert cfg.recipe.tokenizer_source == "base" and cfg.recipe.text == TIES  # the file itself stays verbatim
    again = MergeConfig.from_dict(cfg.to_dict())
    assert again.recipe.models == cfg.recipe.models and again.recipe.dtype == "float32" and again.seed == 3
    assert "merge_method: ties" in cfg.to_yaml()


def test_merge_config_takes_a_ready_recipe_and_checks_its_flags():
    from modelsurgeon.recipes.merge import MergeConfig, MergeRecipe

    fold = MergeConfig.build(MergeRecipe.fold_lora("org/base", "my/adapter"))
    assert fold.recipe.merge_method == "passthrough" and fold.recipe.models[0].model == ModelRef("org/base", "my/adapter")
    with pytest.raises(UsageError, match=r"--dtype 'int3' is not a dtype: use float32"):
        MergeConfig(recipe=parse_recipe(TIES), dtype="int3")
    with pytest.raises(UsageError, match="--seed must be a"):
        MergeConfig(recipe=parse_recipe(TIES), seed="7")
    with pytest.raises(UsageError, match="a merge needs a recipe"):
        MergeConfig()


@pytest.mark.parametrize(
    "settings,needle",
    [
        ({"base": "b", "rank": 4}, "--extract-lora needs the fine-tuned model"),
        ({"finetune": "ft", "rank": 4}, "--extract-lora needs --base"),
        ({"finetune": "ft", "base": "b"}, "--extract-lora needs --rank"),
        ({"finetune": "ft", "base": "b", "rank": 0}, "--rank must be a >= 1 integer, got 0"),
        ({"finetune": "ft", "base": "b", "rank": 4, "include": "q_proj("}, "--include 'q_proj(' is not a valid regular"),
        ({"finetune": "ft", "base": "b", "rank": 4, "out_dtype": "int8"}, "--out-dtype 'int8' is not a dtype"),
    ],
)
def test_extract_config_is_checked_before_anything_is_opened(settings, needle):
    from modelsurgeon.recipes.merge import ExtractConfig

    with pytest.raises(UsageError) as e:
        ExtractConfig(**settings)
    assert needle in str(e.value)
    ok = ExtractConfig(finetune="ft", base="b", rank=4, out_dtype="bf16")
    assert ok.out_dtype == "bfloat16" and ok.to_dict()["rank"] == 4
