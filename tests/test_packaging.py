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
