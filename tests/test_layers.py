"""The import layers hold: core <- io <- families <- api <- run (surgeon run) <- cli; recipes import only core (and each other);
kernels import only public names of their references; families never import each other. A new cycle
fails here, function-local imports included. And nothing points at files outside the repository."""

from __future__ import annotations

import ast
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
FAMILIES = {"prune", "quantize", "merge", "intrinsic", "report", "calibrate", "eval", "dequantize"}
SOURCE_DIRS = ("ops", "cli", "recipes", "kernels", "modelsurgeon")


def _module_of(path: Path) -> str:
    rel = path.relative_to(ROOT).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(["modelsurgeon", *parts] if parts[0] != "modelsurgeon" else parts)


def _imports(path: Path) -> list[tuple[str, list[str]]]:
    """(module, imported names) for every import of modelsurgeon code in the file, nested ones too."""
    mod = _module_of(path)
    pkg = mod if path.name == "__init__.py" else mod.rsplit(".", 1)[0]
    out = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = pkg.split(".")
                base = base[: len(base) - (node.level - 1)]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            names = [a.name for a in node.names]
            if target.startswith("modelsurgeon"):
                if not node.module or target == pkg:  # from . import x: x is a module
                    out += [(f"{target}.{n}", []) for n in names]
                else:
                    out.append((target, names))
        elif isinstance(node, ast.Import):
            out += [(a.name, []) for a in node.names if a.name.startswith("modelsurgeon")]
    return out


def _layer(mod: str) -> tuple[str, str | None]:
    parts = mod.split(".")
    if parts[:2] == ["modelsurgeon", "ops"] and len(parts) > 2:
        return ("family", parts[2]) if parts[2] in FAMILIES else (parts[2], None)
    if len(parts) > 1 and parts[1] in ("pipeline", "fused"):  # surgeon run: composes the families and api's runners
        return "run", None
    if len(parts) > 1 and parts[1] in ("cli", "recipes", "kernels", "api"):
        return parts[1], None
    return "top", None


ALLOWED = {
    "core": {"core"},
    "io": {"core", "io"},
    "recipes": {"core", "recipes"},
    "family": {"core", "io", "recipes", "kernels", "family", "top"},
    "kernels": {"kernels", "family", "core"},
    "api": {"core", "io", "recipes", "family", "top"},
    "run": {"core", "io", "recipes", "family", "top", "api", "run"},
    "cli": {"core", "io", "recipes", "family", "api", "run", "cli", "top", "kernels"},
    "top": {"top", "api", "core", "cli"},
}


def _sources():
    for d in SOURCE_DIRS:
        yield from sorted((ROOT / d).rglob("*.py"))


def test_import_layers():
    bad = []
    for path in _sources():
        me = _module_of(path)
        layer, family = _layer(me)
        for target, names in _imports(path):
            t_layer, t_family = _layer(target)
            if target == "modelsurgeon" and names == ["__version__"]:
                continue  # the version may be read from anywhere
            where = f"{path.relative_to(ROOT)} imports {target}"
            if t_layer not in ALLOWED[layer]:
                bad.append(f"{where}: {layer} may not import {t_layer}")
            elif layer == "family" and t_layer == "family" and t_family != family:
                bad.append(f"{where}: the {family} family may not import the {t_family} family (share through core or io)")
            elif layer == "kernels" and t_layer == "family":
                private = [n for n in names if n.startswith("_")]
                if private:
                    bad.append(f"{where}: a kernel imports only public names of its reference, not {private}")
    assert not bad, "\n".join(bad)


def test_kernels_pair_with_a_reference_of_the_same_name():
    refs = {p.stem: p for p in (ROOT / "ops").rglob("*.py")}
    missing = [k.name for k in (ROOT / "kernels").glob("*.py") if k.stem != "__init__" and k.stem not in refs]
    assert not missing, f"kernels without an ops/<family>/<same name>.py reference: {missing}"


def test_no_pointer_outside_the_repository():
    pattern = re.compile(r"\.\./shared|(?<![\w.])/work/|shared/notes")
    bad = [
        f"{p.relative_to(ROOT)}:{i}"
        for p in [*_sources(), *(ROOT / "tests").rglob("*.py"), *(ROOT / "benchmarks").glob("*.py")]
        if p.name != "test_layers.py"
        for i, line in enumerate(p.read_text().splitlines(), 1)
        if pattern.search(line)
    ]
    assert not bad, f"comments or docstrings pointing outside the repository (copy what matters into docs/): {bad}"
