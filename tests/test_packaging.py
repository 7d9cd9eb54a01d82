"""Every source package is installed: pyproject.toml lists each folder with an __init__.py under cli/, ops/,
kernels/ and recipes/ (setuptools' package-dir maps them to modelsurgeon.*; a missing entry works in an editable
install and breaks a normal one)."""

from __future__ import annotations

from pathlib import Path

import pytest

tomllib = pytest.importorskip("tomllib")  # Python 3.11+

ROOT = Path(__file__).resolve().parents[1]
TOP = {"cli": "modelsurgeon.cli", "ops": "modelsurgeon.ops", "kernels": "modelsurgeon.kernels", "recipes": "modelsurgeon.recipes"}


def test_every_package_is_listed():
    listed = set(tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"])
    found = {"modelsurgeon"}
    for folder, name in TOP.items():
        for init in (ROOT / folder).rglob("__init__.py"):
            rel = init.parent.relative_to(ROOT / folder)
            found.add(".".join([name, *rel.parts]))
    assert found <= listed, f"add to [tool.setuptools] packages in pyproject.toml: {sorted(found - listed)}"
    assert listed <= found, f"listed but missing: {sorted(listed - found)}"


def _project() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]


def test_default_install_is_light():
    """No triton in the default dependencies (1 GB a CPU-only machine cannot run; CUDA torch brings its own);
    the extras that optional features ask for exist, and the tests' interpreter keeps triton."""
    project = _project()
    assert not [d for d in project["dependencies"] if d.lower().startswith("triton")]
    extras = project["optional-dependencies"]
    assert any(d.startswith("matplotlib") for d in extras["plot"])
    assert any(d.startswith("scikit-learn") for d in extras["tasks"])
    assert any(d.startswith("triton") for d in extras["gpu"])
    assert any(d.startswith("triton") for d in extras["test"])
    assert extras["all"] == ["modelsurgeon[plot,tasks,gpu]"]


@pytest.mark.parametrize(("module", "extra"), [("ops/intrinsic/plan.py", "plot"), ("ops/intrinsic/tasks/digits.py", "tasks")])
def test_errors_name_the_extra(module, extra):
    assert f"pip install 'modelsurgeon[{extra}]'" in (ROOT / module).read_text()
