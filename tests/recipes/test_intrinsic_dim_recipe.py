"""IntrinsicDimConfig: values checked on their own before any I/O, recipes round-trip, unset settings are
filled from the task's defaults without overriding what the user gave."""

from __future__ import annotations

import pytest

from modelsurgeon.ops.core.errors import SurgeonError, UsageError
from modelsurgeon.recipes.intrinsic_dim import DEFAULTS, IntrinsicDimConfig

TOY = {"optimizer": "lbfgs", "epochs": 3, "lr": 1.0, "baseline_lr": 1.0}


def test_flags_as_typed_are_parsed():
    cfg = IntrinsicDimConfig.build(task="toy", grid="10, 8,9", baseline="auto", said=None)
    assert cfg.grid == (8, 9, 10) and cfg.baseline is None and cfg.said is False
    assert IntrinsicDimConfig(baseline="1.5", grid=[4, 2]).baseline == 1.5
    assert IntrinsicDimConfig(grid=[4, 2]).grid == (4, 2)


@pytest.mark.parametrize(
    "kw,needle",
    [
        ({"threshold": 0}, "--threshold 0 is outside (0, 1]"),
        ({"baseline": "high"}, "--baseline 'high' is neither auto nor a number"),
        ({"grid": "10,x"}, "not a comma-separated list"),
        ({"grid": (0, 4)}, "--grid values must be positive integers"),
        ({"projection": "gaussian"}, "--projection 'gaussian' is not one of"),
        ({"optimizer": "rmsprop"}, "--optimizer 'rmsprop' is not one of"),
        ({"epochs": 0}, "--epochs must be at least 1"),
        ({"d_start": "32"}, "--d-start must be at least 1"),
        ({"rel_tol": 1.0}, "--rel-tol must be in (0, 1)"),
        ({"include": "("}, "--include '(' is not a valid regular expression"),
        ({"task": "mnist"}, "unknown task 'mnist'"),
        ({"task": "npz:"}, "needs a path after the colon"),
    ],
)
def test_each_value_is_checked(kw, needle):
    with pytest.raises(UsageError) as e:
        IntrinsicDimConfig(**kw)
    assert needle in e.value.message


def test_task_defaults_fill_only_what_is_unset():
    filled = IntrinsicDimConfig(task="toy", epochs=30).with_task_defaults(TOY)
    assert filled.epochs == 30  # given, even though it equals the general default
    assert filled.optimizer == "lbfgs" and filled.lr == 1.0 and filled.baseline_lr == 1.0
    assert filled.d_start == DEFAULTS["d_start"] and filled.arch == "fc" and filled.threshold_from == "zero"
    plain = IntrinsicDimConfig().with_task_defaults({})
    assert plain.baseline_lr is None  # depends on the model: the plan fills it
    assert all(getattr(plain, k) == v for k, v in DEFAULTS.items())


def test_given_names_the_flags_that_were_set():
    cfg = IntrinsicDimConfig(arch="lenet", depth=3)
    assert cfg.given("arch", "width", "depth") == ["--arch", "--depth"]
    assert cfg.with_task_defaults({}).given("width") == ["--width"]


def test_recipe_round_trip(tmp_path):
    (tmp_path / "r.yaml").write_text("intrinsic-dim:\n  task: toy\n  grid: [9, 10]\n  seeds: 2\n")
    cfg = IntrinsicDimConfig.build(recipe=tmp_path / "r.yaml", seeds=3)
    assert cfg.task == "toy" and cfg.grid == (9, 10) and cfg.seeds == 3
    data = cfg.to_dict()
    assert list(data)[:3] == ["version", "task", "threshold"] and data["grid"] == [9, 10] and data["d_start"] is None
    assert IntrinsicDimConfig.from_dict(data) == cfg
    (tmp_path / "back.yaml").write_text(cfg.to_yaml())
    assert IntrinsicDimConfig.build(recipe=tmp_path / "back.yaml") == cfg
    (tmp_path / "bad.yaml").write_text("task: toy\nepoch: 3\n")
    with pytest.raises(SurgeonError, match="did you mean epochs"):
        IntrinsicDimConfig.build(recipe=tmp_path / "bad.yaml")
