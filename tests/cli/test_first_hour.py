"""The first hour at a terminal: errors as typed, bare `surgeon`, a clean stderr, colour only on a terminal,
one percentage format, shell completion, the generated CLI reference, and a warning for a poor LoRA."""

from __future__ import annotations

import io
from pathlib import Path

import pytest
import torch
from builders import make_tiny_llama
from helpers import assert_one_line_error, run, run_json
from rich.console import Console

from modelsurgeon.cli import _output
from modelsurgeon.cli._docs import cli_markdown
from modelsurgeon.cli._output import fmt_pct

DOCS = Path(__file__).resolve().parents[2] / "docs" / "cli.md"


def test_docs_cli_md_is_generated_from_the_app():
    """docs/cli.md is what `python -m modelsurgeon.cli._docs` prints now: regenerate it when a flag changes."""
    assert DOCS.read_text() == cli_markdown(), "docs/cli.md is stale: python -m modelsurgeon.cli._docs > docs/cli.md"


def test_docs_cli_md_lists_every_option():
    import typer

    from modelsurgeon.cli.main import app

    text = DOCS.read_text()
    for name, command in typer.main.get_command(app).commands.items():
        assert f"## `surgeon {name}`" in text
        for p in command.params:
            for opt in getattr(p, "opts", []):
                if opt.startswith("-"):
                    assert f"`{opt}" in text, (name, opt)


@pytest.mark.parametrize(
    ("args", "typed"),
    [
        (["prune", "minilm", "-o", "x", "--sparsity", "0.5", "--exclude", r"layers\.99\."], r"--exclude 'layers\.99\.'"),
        (["report", "minilm", "--filter", r"layers\.99\."], r"--filter 'layers\.99\.'"),
        (["quantize", "minilm", "-o", "x", "--scheme", "w8a16", "--ignore", r"mlp\.nothing"], r"--ignore 'mlp\.nothing'"),
        (["prune", "minilm", "-o", "x", "--sparsity", "0.5", "--include", r"\d+("], r"--include '\d+('"),
    ],
)
def test_regexes_appear_as_typed(capsys, tmp_path, monkeypatch, args, typed):
    monkeypatch.chdir(tmp_path)
    code, out, err = run(capsys, *args)
    assert code in (1, 2)
    assert_one_line_error(code, out, err, code, typed)
    assert "\\\\" not in err  # no doubled backslash
    assert not (tmp_path / "x").exists()


def test_bare_surgeon_shows_the_help_and_exits_0(capsys):
    code, out, err = run(capsys)
    assert code == 0
    assert "Usage" in out and "report" in out and "quantize" in out
    assert err == ""


def test_usage_error_has_a_message(capsys):
    code, out, err = run(capsys, "report")
    assert_one_line_error(code, out, err, 2, "Missing argument", "surgeon report --help")


def test_stderr_has_no_empty_line_when_not_a_terminal(capsys, minilm_dir, tmp_path):
    """Under capsys stderr is not a terminal: no progress bar, so nothing but the notes (no blank lines)."""
    code, out, err = run(capsys, "prune", str(minilm_dir), "-o", str(tmp_path / "p"), "--sparsity", "0.5", "--top", "2")
    assert code == 0, err
    assert err.strip() and all(line.strip() for line in err.splitlines()), repr(err)
    assert "wrote" in err and "wrote" not in out


def test_status_is_coloured_only_on_a_terminal(monkeypatch):
    from rich.text import Text

    def show(console) -> str:
        console.print(Text.assemble("require x: ", _output.status(False)))
        return console.file.getvalue()

    tty = Console(file=io.StringIO(), force_terminal=True, color_system="standard")
    assert "\x1b[" in show(tty) and "FAILED" in show(tty)
    piped = Console(file=io.StringIO(), force_terminal=False)
    assert show(piped) == "require x: FAILED\n"
    monkeypatch.setenv("NO_COLOR", "1")
    no_color = Console(file=io.StringIO(), force_terminal=True, color_system="standard")
    assert "\x1b[31" not in show(no_color) and "FAILED" in show(no_color)


def test_warnings_print_plain_when_piped(capsys):
    _output.warn(r"pattern 'a\.b' kept as typed [not markup]")
    err = capsys.readouterr().err
    assert err == "warning: pattern 'a\\.b' kept as typed [not markup]\n"


def test_one_percentage_format():
    assert fmt_pct(0.5) == "50.00%"
    assert fmt_pct(0.123456) == "12.35%"
    assert fmt_pct(0) == "0.00%" and fmt_pct(1) == "100.00%"
    assert fmt_pct(1 - 1e-6) == ">99.99%" and fmt_pct(1e-6) == "<0.01%"
    assert fmt_pct(None) == "-"


def test_shell_completion(capsys):
    code, out, err = run(capsys, "--show-completion", "bash")
    assert code == 0, (code, out[-500:], err[-2000:])
    assert "_surgeon_completion" in out or "complete" in out, (out[-500:], err[-2000:])


def test_merge_prints_a_summary_table(capsys, tmp_path):
    a = make_tiny_llama(tmp_path / "a", seed=0, hidden_size=32, intermediate_size=64)
    b = make_tiny_llama(tmp_path / "b", seed=1, hidden_size=32, intermediate_size=64)
    code, out, err = run(capsys, "merge", "--method", "linear", str(a), str(b), "-o", str(tmp_path / "m"), "-q")
    assert code == 0, err
    rows = [line.split(None, 1) for line in out.splitlines() if line.strip()]
    table = {r[0]: r[1].strip() for r in rows if len(r) == 2}
    assert table["method"] == "linear"
    assert "output" in out and str(tmp_path / "m") in out


def test_poor_lora_extraction_warns(capsys, tmp_path):
    """A fine-tune whose change is random noise (full rank) extracted at rank 1: the adapter says little of it."""
    from safetensors.torch import load_file, save_file

    base = make_tiny_llama(tmp_path / "base", seed=0, hidden_size=32, intermediate_size=64)
    ft = make_tiny_llama(tmp_path / "ft", seed=0, hidden_size=32, intermediate_size=64)
    sd = load_file(str(ft / "model.safetensors"))
    g = torch.Generator().manual_seed(3)
    for k, v in sd.items():
        if v.dim() == 2 and "proj" in k:
            sd[k] = v + 0.05 * torch.randn(v.shape, generator=g)
    save_file(sd, str(ft / "model.safetensors"), metadata={"format": "pt"})
    code, out, err = run(
        capsys, "merge", "--extract-lora", str(ft), "--base", str(base), "--rank", "1", "-o", str(tmp_path / "ad")
    )
    assert code == 0, err
    assert "warning: the rank-1 adapter reproduces the fine-tune poorly" in err
    assert "higher --rank" in err
    # a faithful extraction (rank as large as the weights) says nothing
    data = run_json(
        capsys, "merge", "--extract-lora", str(ft), "--base", str(base), "--rank", "64", "-o", str(tmp_path / "ad64"), "-q"
    )
    assert data["mean_rel_error"] < 0.5


def test_missing_optional_package_names_the_extra(capsys, monkeypatch):
    """Without scikit-learn, --task digits says which extra installs it, on one line, before any work."""
    import sys

    monkeypatch.setitem(sys.modules, "sklearn", None)  # `import sklearn...` now raises ImportError
    monkeypatch.setitem(sys.modules, "sklearn.datasets", None)
    code, out, err = run(capsys, "intrinsic-dim", "--task", "digits", "--grid", "8", "--epochs", "1")
    assert_one_line_error(code, out, err, 1, "scikit-learn", "pip install 'modelsurgeon[tasks]'")


def test_a_folded_lora_is_labelled_as_such():
    from modelsurgeon.cli import merge

    console = Console(width=100, file=io.StringIO(), force_terminal=False)
    _output.settings.console = console
    try:
        merge._print_plan({"method": "passthrough", "models": ["org/base+my-adapter/"], "output": "folded/", "dry_run": False})
    finally:
        _output.settings.console = None
    text = console.file.getvalue()
    assert "fold LoRA" in text and "org/base+my-adapter/" in text
