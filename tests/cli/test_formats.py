"""One format per quantity across commands (issue 16): sizes in decimal units with three significant digits,
percentages with two decimals, the relative error always "rel L2" with three significant digits, seconds with
one decimal. Checked twice so it cannot drift: on what the commands print (quantize, prune, report --compare,
dequantize, merge --extract-lora, and a --dry-run plan), against the same runs' --json numbers; and on the code,
where no f-string formats a size, a percentage or a duration by hand."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest
from builders import make_tiny_llama
from helpers import run

from modelsurgeon.ops.core.units import fmt_bytes, fmt_count, fmt_pct, fmt_rel_l2, fmt_seconds

ROOT = Path(__file__).resolve().parents[2]
SIZE = re.compile(r"(?<![\w.])(\d+(?:\.\d+)?) ?(B|KB|MB|GB|TB|PB|KiB|MiB|GiB|TiB|bytes)\b")
SIZE_OK = re.compile(r"\d{1,3} B|\d\.\d\d [KMGTP]B|\d\d\.\d [KMGTP]B|\d{3} [KMGTP]B")
PCT = re.compile(r"(?<![\w.])[<>]?\d+(?:\.\d+)?%")
PCT_OK = re.compile(r"[<>]?\d{1,3}\.\d\d%")


def test_the_formatters():
    assert [fmt_bytes(n) for n in (0, 999, 1000, 1234, 12_345, 123_456, 999_499, 999_500, 5e9, 2 << 30)] == [
        "0 B", "999 B", "1.00 KB", "1.23 KB", "12.3 KB", "123 KB", "999 KB", "1.00 MB", "5.00 GB", "2.15 GB",
    ]  # fmt: skip
    assert [fmt_count(n) for n in (7, 22_713_216, 1.5e9)] == ["7", "22.7M", "1.50B"]
    assert [fmt_pct(v) for v in (0, 0.5, 1, 1e-6, 0.99999)] == ["0.00%", "50.00%", "100.00%", "<0.01%", ">99.99%"]
    assert (fmt_rel_l2(0.012345), fmt_rel_l2(0.5), fmt_seconds(3.25)) == ("0.0123", "0.5", "3.2 s")


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    root = tmp_path_factory.mktemp("formats")
    return make_tiny_llama(root / "base"), make_tiny_llama(root / "ft", seed=1), root


def _text(capsys, *args) -> str:
    code, out, err = run(capsys, *args)
    assert code == 0, err
    return out


def _json(capsys, *args) -> dict:
    import json

    return json.loads(_text(capsys, *args, "--json", "-q"))


def test_every_command_prints_sizes_percentages_and_errors_one_way(capsys, models):
    base, ft, root = models
    q = ["quantize", base, "-o", root / "q", "--scheme", "w4a16", "--group-size", "32", "--force"]
    p = ["prune", base, "-o", root / "p", "--sparsity", "0.5", "--force"]
    outs = {
        "quantize": _text(capsys, *q, "-q"),
        "quantize --dry-run": _text(capsys, *q, "--dry-run", "-q"),
        "prune": _text(capsys, *p, "-q"),
        "report --compare": _text(capsys, "report", root / "p", "--compare", base),
        "dequantize": _text(capsys, "dequantize", root / "q", "-o", root / "d", "--force", "-q"),
        "merge --extract-lora": _text(capsys, "merge", "--extract-lora", ft, "--base", base, "--rank", "2", "-o", root / "a", "--force", "-q"),
    }  # fmt: skip
    for what, out in outs.items():
        for m in SIZE.finditer(out):
            assert SIZE_OK.fullmatch(m.group(0)), (what, m.group(0))
        for m in PCT.finditer(out):
            assert PCT_OK.fullmatch(m.group(0)), (what, m.group(0))
        assert "relative error" not in out and "rel error" not in out, what
    assert all("rel L2" in outs[k] for k in ("quantize", "report --compare", "merge --extract-lora"))
    assert all(SIZE.search(outs[k]) for k in ("quantize", "report --compare", "dequantize", "merge --extract-lora"))

    # the same runs' --json numbers, rendered by the formatters, are what the tables said
    r = _json(capsys, *q)
    assert f"size {fmt_bytes(r['bytes_before'])} -> {fmt_bytes(r['bytes_after'])}" in outs["quantize"]
    assert f"rel L2 {fmt_rel_l2(r['rel_l2'])}" in outs["quantize"]
    row = next(t for t in r["tensors"] if t["scheme"])
    assert re.search(rf"{re.escape(row['name'])} .* {re.escape(fmt_rel_l2(row['rel_l2']))}\s*$", outs["quantize"], re.M)
    r = _json(capsys, "report", root / "p", "--compare", base)
    assert f"max rel L2 {fmt_rel_l2(r['compare']['max_rel_l2'])}" in outs["report --compare"]
    assert f"sparsity {fmt_pct(r['sparsity'])}" in outs["report --compare"]
    r = _json(capsys, "merge", "--extract-lora", ft, "--base", base, "--rank", "2", "-o", root / "a", "--force")
    assert re.search(rf"mean rel L2 +{re.escape(fmt_rel_l2(r['mean_rel_error']))}\b", outs["merge --extract-lora"])


# ------------------------------------------------------------------------------------------------
# the code: sizes, percentages and durations are formatted only in ops/core/units.py

BINARY_UNIT = re.compile(r"(?<![A-Za-z])[KMGT]iB\b")
INPUT_SYNTAX = ("5GB, 500MB, 2GiB",)  # --max-shard-size accepts binary units: its help and error say so
SIZE_DIVISORS = {1e3, 1e6, 1e9, 1e12, 1024, 2**20, 2**30, 2**40}


def _sources():
    for d in ("cli", "ops", "recipes", "modelsurgeon"):
        for path in sorted((ROOT / d).rglob("*.py")):
            if path.relative_to(ROOT).as_posix() != "ops/core/units.py":
                yield path


def _docstrings(tree) -> set[int]:
    out = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)) and node.body:
            first = node.body[0]
            if isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant):
                out.add(id(first.value))
    return out


def _constant(node):
    """The value of a constant expression like ``1e9``, ``2**30`` or ``1 << 20`` (None for anything else)."""
    if isinstance(node, ast.Constant) and isinstance(node.value, (int, float)):
        return node.value
    if isinstance(node, ast.BinOp):
        a, b = _constant(node.left), _constant(node.right)
        ops = {ast.Pow: lambda: a**b, ast.Mult: lambda: a * b, ast.LShift: lambda: a << b}
        if a is not None and b is not None and type(node.op) in ops:
            return ops[type(node.op)]()
    return None


def test_no_size_percentage_or_duration_is_formatted_by_hand():
    bad = []
    for path in _sources():
        tree = ast.parse(path.read_text())
        docs = _docstrings(tree)
        rel = path.relative_to(ROOT).as_posix()
        for node in ast.walk(tree):
            if isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in docs:
                text = node.value
                if BINARY_UNIT.search(text) and not any(s in text for s in INPUT_SYNTAX):
                    bad.append(f"{rel}:{node.lineno}: a binary size unit in {text!r} (use fmt_bytes)")
                if re.search(r"\brel(ative)? error\b", text):
                    bad.append(f"{rel}:{node.lineno}: {text!r} (the relative error is shown as REL_L2, 'rel L2')")
            if isinstance(node, ast.FormattedValue):
                spec = ast.unparse(node.format_spec) if node.format_spec else ""
                if "%" in spec:
                    bad.append(f"{rel}:{node.lineno}: a percentage formatted by hand (use fmt_pct)")
                v = node.value
                if isinstance(v, ast.BinOp) and isinstance(v.op, ast.Div):
                    if _constant(v.right) in SIZE_DIVISORS:
                        bad.append(f"{rel}:{node.lineno}: a size scaled by hand (use fmt_bytes)")
        for i, line in enumerate(path.read_text().splitlines(), 1):
            if re.search(r"\{[^{}]*seconds[^{}]*:\.\d+f\}", line):
                bad.append(f"{rel}:{i}: seconds formatted by hand (use fmt_seconds)")
    assert not bad, "\n".join(bad)
