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
    cfg = PruneConfig.build(None, sparsity=0.5, scope="global", overrides=[{"pattern": "^a", "sparsity": 0.0}])
    assert cfg.overrides == (SparsityOverride("^a", 0.0),)
    d = cfg.to_dict()
    assert d == {
        "version": 1,
        "sparsity": 0.5,
        "method": "magnitude",
        "scope": "global",
        "overrides": [{"pattern": "^a", "sparsity": 0.0}],
        "seed": 0,
    }
    assert PruneConfig.from_dict(d) == cfg
    text = cfg.to_yaml()
    assert text.startswith("# modelsurgeon prune recipe: surgeon prune MODEL -o OUT --recipe THIS_FILE\n")
    (tmp_path / "r.yaml").write_text(text)
    assert PruneConfig.build(tmp_path / "r.yaml") == cfg


def test_recipe_shape_errors(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("sparsity: 0.5\noverrides: [{pattern: x}]\n")
    with pytest.raises(SurgeonError, match="overrides must be a list of"):
        PruneConfig.build(bad)
    bad.write_text("- 0.5\n")
    with pytest.raises(SurgeonError, match="must be a mapping of settings.*prune_example.yaml"):
        PruneConfig.build(bad)
    bad.write_text("prune: {sparsity: 0.5, scope: row}\n")  # nested under the command's name
    assert PruneConfig.build(bad).scope == "row"
    with pytest.raises(UsageError, match="override pattern"):
        PruneConfig(sparsity=0.5, overrides=({"pattern": "(", "sparsity": 0.1},))
