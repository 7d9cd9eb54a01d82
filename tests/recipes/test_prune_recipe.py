"""PruneConfig: every value checked before any file is opened, flags over a recipe, and the round trip."""

from __future__ import annotations

import pytest

from modelsurgeon.ops.core.errors import SurgeonError, UsageError
from modelsurgeon.recipes.prune import METHODS, PruneConfig, SparsityOverride


def test_method_is_checked_against_the_criteria_names():
    with pytest.raises(UsageError, match=r"unknown pruning method 'magnitud'.*did you mean magnitude\?"):
        PruneConfig(sparsity=0.5, method="magnitud")
    assert PruneConfig(sparsity=0.5, method="random").method == "random"


def test_the_names_match_the_registry():
    from modelsurgeon.ops.prune.criteria import CRITERIA

    assert list(METHODS) == list(CRITERIA) == ["magnitude", "random"]


def test_flags_over_a_recipe(tmp_path):
    r = tmp_path / "r.yaml"
    r.write_text("sparsity: 0.3\nscope: layer\nexclude: 'layer\\.0\\.'\n")
    assert PruneConfig.build(r, sparsity=0.6).sparsity == 0.6
    cfg = PruneConfig.build(r, pattern="2:4")  # a pattern flag drops the recipe's sparsity
    assert (cfg.pattern, cfg.sparsity, cfg.exclude) == ("2:4", None, "layer\\.0\\.")
    r.write_text("pattern: '2:4'\n")
    cfg = PruneConfig.build(r, sparsity=0.4)  # and a sparsity flag the recipe's pattern
    assert (cfg.pattern, cfg.sparsity) == (None, 0.4)
    with pytest.raises(UsageError, match="contradicts"):
        PruneConfig.build(r, sparsity=0.4, pattern="2:4")


def test_round_trip_and_sidecar_header(tmp_path):
    cfg = PruneConfig.build(None, sparsity=0.5, scope="global", overrides=[{"match": "^a", "sparsity": 0.0}])
    assert cfg.overrides == (SparsityOverride("^a", 0.0),)
    d = cfg.to_dict()
    assert d == {
        "version": 2,
        "sparsity": 0.5,
        "method": "magnitude",
        "scope": "global",
        "overrides": [{"match": "^a", "sparsity": 0.0}],
        "seed": 0,
    }
    assert PruneConfig.from_dict(d) == cfg
    text = cfg.to_yaml()
    assert text.startswith("# modelsurgeon prune recipe: surgeon prune MODEL -o OUT --recipe THIS_FILE\n")
    (tmp_path / "r.yaml").write_text(text)
    assert PruneConfig.build(tmp_path / "r.yaml") == cfg


def test_recipe_shape_errors(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("sparsity: 0.5\noverrides: [{match: x}]\n")
    with pytest.raises(SurgeonError, match="sets nothing"):
        PruneConfig.build(bad)
    bad.write_text("sparsity: 0.5\noverrides: [{pattern: x, sparsity: 0.1}]\n")  # version 1's key in a version 2 file
    with pytest.raises(SurgeonError, match="version 1 used.*put version: 1"):
        PruneConfig.build(bad)
    bad.write_text("version: 1\nsparsity: 0.5\noverrides: [{pattern: x}]\n")
    with pytest.raises(SurgeonError, match="version 1 recipe's overrides must be"):
        PruneConfig.build(bad)
    bad.write_text("- 0.5\n")
    with pytest.raises(SurgeonError, match="must be a mapping of settings.*prune_example.yaml"):
        PruneConfig.build(bad)
    bad.write_text("prune: {sparsity: 0.5, scope: row}\n")  # nested under the command's name
    assert PruneConfig.build(bad).scope == "row"
    with pytest.raises(UsageError, match=r"overrides\[0\] match '\(' is not a valid regular expression"):
        PruneConfig(sparsity=0.5, overrides=({"match": "(", "sparsity": 0.1},))
    with pytest.raises(UsageError, match="override 'a' sparsity"):
        PruneConfig(sparsity=0.5, overrides=({"match": "a", "sparsity": 1.5},))


def test_the_last_matching_override_wins_and_version_1_keeps_its_meaning(tmp_path):
    over = [{"match": "q_proj", "sparsity": 0.3}, {"match": r"layers\.0\.", "sparsity": 0.0}]
    cfg = PruneConfig(sparsity=0.5, overrides=over)
    assert cfg.sparsity_for("model.layers.0.self_attn.q_proj.weight") == 0.0  # both match: the later one
    assert cfg.sparsity_for("model.layers.1.self_attn.q_proj.weight") == 0.3
    assert cfg.sparsity_for("model.layers.1.mlp.up_proj.weight") == 0.5
    v1 = tmp_path / "v1.yaml"  # version 1: the first match won; read as version 2 with the list reversed
    v1.write_text(
        "version: 1\nsparsity: 0.5\noverrides:\n  - {pattern: q_proj, sparsity: 0.3}\n  - {pattern: 'layers\\.0\\.', sparsity: 0.0}\n"
    )
    old = PruneConfig.build(v1)
    assert old.version == 2 and old.sparsity_for("model.layers.0.self_attn.q_proj.weight") == 0.3
    assert old.sparsity_for("model.layers.0.mlp.up_proj.weight") == 0.0
    assert [o.match for o in old.overrides] == [r"layers\.0\.", "q_proj"]
