"""QuantizeConfig: every setting checked on construction, torch-free, and the scheme rules it checks them
against are the implementation's (ops/quantize/schemes.py registers the same names and facts)."""

from __future__ import annotations

import subprocess
import sys

import pytest

from modelsurgeon.ops.core.errors import SurgeonError, UsageError
from modelsurgeon.recipes.quantize import SCHEME_RULES, HQQConfig, QuantizeConfig, SchemeRules


def test_building_and_checking_a_config_imports_no_torch():
    code = (
        "import sys\n"
        "from modelsurgeon.recipes.quantize import QuantizeConfig\n"
        "from modelsurgeon.ops.quantize.schemes import schemes\n"
        "QuantizeConfig(scheme='w4a16', optimizer='hqq', ignore='lm_head')\n"
        "assert [s.name for s in schemes()][0] == 'w4a16'\n"
        "heavy = [m for m in ('torch', 'numpy', 'triton') if m in sys.modules]\n"
        "assert not heavy, heavy\n"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr


def test_rules_are_the_registered_schemes():
    from dataclasses import fields

    from modelsurgeon.ops.quantize.schemes import schemes

    assert [s.name for s in schemes()] == list(SCHEME_RULES)
    for s in schemes():
        assert {f.name: getattr(s, f.name) for f in fields(SchemeRules)} == vars(SCHEME_RULES[s.name])


@pytest.mark.parametrize("settings,needles", [
    ({"scheme": "int3"}, ["unknown quantization scheme 'int3'", "w4a16", "q5_1"]),
    ({}, ["no quantization scheme given", "--scheme"]),
    ({"scheme": "nf4", "format": "compressed-tensors"}, ["--format compressed-tensors cannot hold scheme nf4"]),
    ({"scheme": "w4a16", "format": "gguf"}, ["cannot hold scheme w4a16", "gguf holds q8_0, q4_0, q4_1, q5_0, q5_1"]),
    ({"scheme": "q4_0", "asym": True}, ["--asym does not apply to q4_0", "q4_1 or q5_1"]),
    ({"scheme": "nf4", "asym": True}, ["--asym does not apply to nf4", "w4a16, w8a16, w8a8"]),
    ({"scheme": "fp8", "group_size": 64}, ["--group-size does not apply to fp8", "one scale per channel"]),
    ({"scheme": "binary", "optimizer": "hqq"}, ["--optimizer hqq does not apply to binary"]),
    ({"scheme": "w4a16", "group_size": -2}, ["--group-size -2 is invalid"]),
    ({"scheme": "w4a16", "group_size": True}, ["--group-size True is invalid"]),
    ({"scheme": "w4a16", "include": "[a"}, ["--include '[a' is not a valid regular expression"]),
    ({"scheme": "w4a16", "hqq": {"iters": -1}}, ["hqq.iters must be a non-negative integer"]),
    ({"scheme": "w4a16", "hqq": {"beta": 0}}, ["hqq.beta must be a positive number"]),
    ({"scheme": "w4a16", "hqq": {"iter": 3}}, ["hqq has unknown keys: iter", "did you mean iters?"]),
])  # fmt: skip
def test_bad_settings_are_usage_errors(settings, needles):
    with pytest.raises(UsageError) as e:
        QuantizeConfig(**settings)
    for n in needles:
        assert n in str(e.value), (n, str(e.value))


def test_resolved_values():
    cfg = QuantizeConfig(scheme=" Q4_1 ")
    assert cfg.scheme == "q4_1" and cfg.output_format == "gguf" and not cfg.symmetric
    cfg = QuantizeConfig(scheme="w8a8", asym=True, format="dense")
    assert cfg.output_format == "dense" and not cfg.symmetric
    assert QuantizeConfig(scheme="w4a16").output_format == "compressed-tensors"


def test_round_trip_and_recipe(tmp_path):
    cfg = QuantizeConfig(scheme="w4a16", optimizer="hqq", hqq={"iters": 5}, ignore=r"mlp\.down_proj", group_size=64)
    assert cfg.hqq == HQQConfig(iters=5)
    assert QuantizeConfig.from_dict(cfg.to_dict()) == cfg
    recipe = tmp_path / "q.yaml"
    recipe.write_text(cfg.to_yaml())
    built = QuantizeConfig.build(recipe, group_size=32)  # a flag replaces the recipe's value
    assert built == cfg.replace(group_size=32)
    recipe.write_text("quantize:\n  scheme: w4a61\n")
    with pytest.raises(UsageError, match="unknown quantization scheme 'w4a61'"):
        QuantizeConfig.build(recipe)
    recipe.write_text("schema: w4a16\n")
    with pytest.raises(SurgeonError, match="did you mean scheme"):
        QuantizeConfig.build(recipe)
