"""Tables that fit: every command's tensor table at 80, 100, 120 and 200 columns shows each tensor's name on
one line (shortened in the middle, keeping the layer index and the leaf), never wider than the terminal;
numeric columns go first, in each command's stated order; --wide shows everything; and once through a real
pseudo-terminal (and tmux where it is installed), the way a user sees `surgeon report minilm`."""

from __future__ import annotations

import io
import os
import re
import shutil
import subprocess
import sys
import time

import pytest
from builders import make_tiny_llama
from helpers import run, run_json
from rich.console import Console

from modelsurgeon.cli import _output, prune, quantize, report
from modelsurgeon.cli._output import shorten_middle

WIDTHS = (80, 100, 120, 200)
ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]|\x1b\][^\x07]*\x07")


def matches(shown: str, name: str) -> bool:
    """``shown`` is ``name`` with zero or more middle pieces replaced by "…"."""
    pattern = ".*".join(re.escape(piece) for piece in shown.split("…"))
    return re.fullmatch(pattern, name) is not None


def rendered(table_fn, data: dict, width: int, wide: bool = False, top: int | None = None) -> list[str]:
    console = Console(width=width, file=io.StringIO(), color_system=None, force_terminal=False)
    _output.settings.console, _output.settings.wide, _output.settings.top = console, wide, top
    try:
        table_fn(data)
    finally:
        _output.settings.console = None
        _output.settings.reset()
    return console.file.getvalue().splitlines()


def body(lines: list[str]) -> tuple[str, list[str]]:
    """The header line and the rows of the first table in ``lines``."""
    rule = next(i for i, line in enumerate(lines) if line.strip().startswith("─"))
    rows = []
    for line in lines[rule + 1 :]:
        if not line.strip():
            break
        rows.append(line)
    return lines[rule - 1], rows


def check_fits(lines: list[str], names: list[str], width: int, headers: list[str]) -> list[str]:
    """Every line within the width; one row per name, in order, each showing its name (maybe shortened) on
    that one line with the layer index and the leaf kept; every header shown whole. Returns the headers shown."""
    header, rows = body(lines)
    table = lines[: lines.index(rows[-1]) + 1] if rows else lines
    assert all(len(line.rstrip()) <= width for line in table), "\n".join(lines)
    assert len(rows) == len(names), (len(rows), len(names), "\n".join(lines))
    for line, name in zip(rows, names):
        shown = line.split()[0]
        assert matches(shown, name), (shown, name)
        index = re.search(r"\.(\d+)\.", name)
        if index and len(shown) > 12:
            assert f"{index.group(1)}." in shown, (shown, name)
        assert shown.endswith(name.rsplit(".", 1)[-1]), (shown, name)
    assert "…" not in header, header
    shown_headers = [h for h in headers if h in header]
    assert headers[0] in shown_headers
    return shown_headers


@pytest.fixture(scope="module")
def minilm_report(minilm_dir) -> dict:
    from modelsurgeon import api

    return api.report(str(minilm_dir)).to_dict()


@pytest.fixture(scope="module")
def llama(tmp_path_factory):
    return make_tiny_llama(tmp_path_factory.mktemp("w") / "tiny-llama-with-a-long-folder-name", hidden_size=64)


def test_shorten_middle_keeps_the_layer_index_and_the_leaf():
    name = "model.layers.12.self_attn.q_proj.weight"
    assert shorten_middle(name, 60) == name
    assert shorten_middle(name, 30) == "…layers.12.…q_proj.weight"
    for width in range(12, len(name)):
        short = shorten_middle(name, width)
        assert len(short) <= width and matches(short, name), (width, short)
        if width >= 18:
            assert "12." in short and short.endswith("q_proj.weight"), short
    assert shorten_middle("embeddings.word_embeddings.weight", 24) == "…word_embeddings.weight"


def test_report_table_fits_every_width(minilm_report):
    data = minilm_report
    names = [t["name"] for t in data["tensors"]]
    headers = ["tensor", "shape", "dtype", "params", "nonzero", "2:4", "mean|w|", "std", "min", "max"]
    seen = {}
    for width in WIDTHS:
        lines = rendered(report._print_table, data, width)
        seen[width] = check_fits(lines, names, width, headers)
        # the columns that always show, show
        assert {"tensor", "shape", "params", "nonzero"} <= set(seen[width])
        hidden = [h for h in headers if h not in seen[width]]
        assert bool(hidden) == any("not shown at this width" in line for line in lines)
    assert len(seen[80]) <= len(seen[100]) <= len(seen[120]) <= len(seen[200]) == len(headers)
    # 200 columns: every name whole
    _, rows = body(rendered(report._print_table, data, 200))
    assert [row.split()[0] for row in rows] == names
    # the stated order: min goes first, then max
    assert "min" not in seen[100] or "max" in seen[100]
    # --wide at 80 columns: everything, whole, however wide
    lines = rendered(report._print_table, data, 80, wide=True)
    header, rows = body(lines)
    assert [row.split()[0] for row in rows] == names
    assert all(h in header for h in headers)


def test_report_compare_table_fits(capsys, minilm_dir):
    data = run_json(capsys, "report", str(minilm_dir), "--compare", str(minilm_dir), "--top", "30")
    names = [t["name"] for t in data["tensors"]]
    for width in WIDTHS:
        shown = check_fits(
            rendered(report._print_table, data, width),
            names,
            width,
            ["tensor", "shape", "dtype", "params", "nonzero", "rel L2", "cosine", "changed", "same sign"],
        )
        assert "rel L2" in shown


def test_prune_tables_fit(capsys, minilm_dir, tmp_path):
    plan = run_json(capsys, "prune", str(minilm_dir), "-o", str(tmp_path / "p"), "--sparsity", "0.5", "--dry-run")
    done = run_json(capsys, "prune", str(minilm_dir), "-o", str(tmp_path / "p"), "--sparsity", "0.5", "-q")
    for data, headers in (
        (plan, ["tensor", "shape", "params", "target", "pruned"]),
        (done, ["tensor", "shape", "params", "target", "pruned", "zeros before", "sparsity"]),
    ):
        names = [t["name"] for t in data["tensors"]]
        for width in WIDTHS:
            check_fits(rendered(prune._print, data, width), names, width, headers)
    # --top 3: the three largest, largest first
    lines = rendered(prune._print, done, 120, top=3)
    biggest = sorted(done["tensors"], key=lambda t: -t["numel"])[:3]
    check_fits(lines, [t["name"] for t in biggest], 120, ["tensor"])
    assert "top 3 of" in " ".join(lines[:3])


def test_quantize_table_fits(capsys, llama, tmp_path):
    data = run_json(capsys, "quantize", str(llama), "-o", str(tmp_path / "q"), "--scheme", "w4a16", "-g", "32", "-q")
    names = [t["name"] for t in data["tensors"] if t["scheme"]]
    headers = ["tensor", "shape", "bits/w", "before", "after", "SQNR dB", "rel L2"]
    for width in WIDTHS:
        shown = check_fits(rendered(quantize._print_table, data, width), names, width, headers)
        assert {"SQNR dB", "rel L2"} <= set(shown)


def test_top_and_wide_flags(capsys, minilm_dir, tmp_path):
    code, out, err = run(capsys, "prune", str(minilm_dir), "-o", str(tmp_path / "p"), "--sparsity", "0.5", "--top", "2")
    assert code == 0, err
    assert "top 2 of 37" in out
    code, out, err = run(capsys, "report", str(minilm_dir), "--wide", "--top", "3")
    assert code == 0, err
    assert "embeddings.word_embeddings.weight" in out


def _surgeon_in_a_terminal(args: list[str], columns: int) -> str:
    """Run surgeon in a pseudo-terminal ``columns`` wide; return what the terminal got, escapes removed."""
    import fcntl
    import pty
    import struct
    import termios

    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 60, columns, 0, 0))
    env = {k: v for k, v in os.environ.items() if k not in ("COLUMNS", "LINES", "NO_COLOR", "TERM")}
    env["TERM"] = "xterm-256color"
    code = "from modelsurgeon.cli.main import entry; entry()"
    proc = subprocess.Popen([sys.executable, "-c", code, *args], stdin=slave, stdout=slave, stderr=slave, env=env)
    os.close(slave)
    chunks = []
    while True:
        try:
            chunk = os.read(master, 65536)
        except OSError:  # EIO: the child closed the terminal
            break
        if not chunk:
            break
        chunks.append(chunk)
    os.close(master)
    assert proc.wait(timeout=120) == 0
    return ANSI.sub("", b"".join(chunks).decode()).replace("\r", "")


@pytest.mark.slow
def test_report_minilm_in_an_80_column_terminal(minilm_report):
    """`surgeon report minilm` in a real (pseudo-)terminal 80 columns wide: every tensor name on its line."""
    names = [t["name"] for t in minilm_report["tensors"]]
    text = _surgeon_in_a_terminal(["report", "minilm"], 80)
    lines = [line for line in text.splitlines() if "━" not in line]
    assert "nonzero" in text, text[:2000]  # the table came, with colour codes stripped
    check_fits(lines, names, 80, ["tensor", "shape", "params", "nonzero"])


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("tmux") is None, reason="tmux is not installed")
def test_report_minilm_in_an_80_column_tmux_pane(minilm_report, tmp_path):
    names = [t["name"] for t in minilm_report["tensors"]]
    sock = str(tmp_path / "tmux.sock")
    cmd = f"{sys.executable} -c 'from modelsurgeon.cli.main import entry; entry()' report minilm -q; echo done-$?"
    tmux = ["tmux", "-S", sock, "-f", "/dev/null"]
    env = {k: v for k, v in os.environ.items() if k not in ("COLUMNS", "LINES", "TMUX")}
    subprocess.run([*tmux, "new-session", "-d", "-x", "80", "-y", "200", cmd + "; sleep 60"], check=True, env=env)
    try:
        text = ""
        for _ in range(240):
            text = subprocess.run([*tmux, "capture-pane", "-p", "-J", "-S", "-"], capture_output=True, text=True).stdout
            if "done-" in text:
                break
            time.sleep(0.5)
        assert "done-0" in text, text
    finally:
        subprocess.run([*tmux, "kill-server"], capture_output=True)
    lines = text.splitlines()
    check_fits(lines, names, 80, ["tensor", "shape", "params", "nonzero"])


def test_piped_output_keeps_whole_names(capsys, minilm_dir, monkeypatch):
    """Piped (no COLUMNS), a table keeps whole names for grep; with COLUMNS it fits that width."""
    monkeypatch.delenv("COLUMNS", raising=False)
    code, out, err = run(capsys, "report", str(minilm_dir), "--top", "40", "-q")
    assert code == 0, err
    _, rows = body(out.splitlines())
    assert len(rows) == 40 and "…" not in out and max(len(line) for line in rows) > 80
    monkeypatch.setenv("COLUMNS", "80")
    code, out, err = run(capsys, "report", str(minilm_dir), "--top", "40", "-q")
    _, rows = body(out.splitlines())
    assert len(rows) == 40 and max(len(line) for line in rows) <= 80


@pytest.mark.slow
def test_nothing_empty_on_a_piped_stderr(minilm_dir):
    """stderr that is not a terminal gets no bar and no blank line: a clean run leaves it empty."""
    env = {k: v for k, v in os.environ.items() if k not in ("COLUMNS", "LINES")}
    code = "from modelsurgeon.cli.main import entry; entry()"
    out = subprocess.run(
        [sys.executable, "-c", code, "report", str(minilm_dir), "--top", "3"], capture_output=True, text=True, env=env
    )
    assert out.returncode == 0, out.stderr
    assert out.stderr == ""
    assert "embeddings.word_embeddings.weight" in out.stdout
