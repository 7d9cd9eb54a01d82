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
from modelsurgeon.cli import eval as eval_cmd
from modelsurgeon.cli import intrinsic_dim as intrinsic_cmd
from modelsurgeon.cli import merge as merge_cmd
from modelsurgeon.cli._output import shorten_middle, shorten_path

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


def test_shorten_path_keeps_the_model_name():
    name = "some/rather/long/directory/of/models/llama-3-8b-instruct"
    assert shorten_path(name, 80) == name
    assert shorten_path(name, 40) == "…/of/models/llama-3-8b-instruct"
    assert shorten_path(name, 22) == "…/llama-3-8b-instruct"
    short = shorten_path(name, 15)
    assert len(short) == 15 and short.startswith("…/") and matches(short, name)


def _cells(line: str) -> list[str]:
    return re.split(r"\s{2,}", line.strip())


def test_eval_table_fits_every_width():
    """Model paths shortened from the left, one row per model on one line; kld_p99, ppl_ratio, the gates go first."""
    from modelsurgeon.ops.calibrate.evaluate import EvalResult, ModelScore, _gates
    from modelsurgeon.recipes.eval import EvalConfig

    folder = "some/rather/long/directory/of/models/"
    names = [folder + "llama-3-8b-instruct-base", folder + "llama-3-8b-instruct-finetuned-on-my-data"]
    ref = ModelScore(names[0], "causal", 537, perplexity=304.5)
    scores = [
        ModelScore(names[0], "causal", 537, perplexity=304.5, kld=0.0, kld_p99=0.0, top1=1.0, ppl_ratio=1.0),
        ModelScore(names[1], "causal", 537, perplexity=296.7, kld=0.026, kld_p99=0.031, top1=0.25, ppl_ratio=0.9745),
    ]
    for s in scores:
        _gates(EvalConfig(text="t.txt", reference="ref", require=("kld<=0.01", "top1>=0.5")), s)
    data = EvalResult("t.txt", 64, 32, 537, ref, scores).to_dict()
    headers = ["model", "perplexity", "ppl_ratio", "kld", "kld_p99", "top1", "gates"]
    shown = {}
    for width in WIDTHS:
        lines = rendered(eval_cmd._print, data, width)
        header, rows = body(lines)
        assert all(len(line.rstrip()) <= width for line in lines[: lines.index(rows[-1]) + 1]), "\n".join(lines)
        assert len(rows) == 3, "\n".join(lines)
        for row, name in zip(rows, [names[0] + " (reference)", *names]):
            cell = _cells(row)[0]
            assert matches(cell, name) and len(cell.rsplit("…", 1)[-1]) >= 8, (cell, name)  # the end of the name stays
            assert cell == name or width < 200
        shown[width] = [h for h in headers if re.search(rf"(^|\s){re.escape(h)}(\s|$)", header)]
        assert {"model", "perplexity", "kld", "top1"} <= set(shown[width])
    assert shown[200] == headers and "FAILED kld<=0.01 top1>=0.5" in "\n".join(rendered(eval_cmd._print, data, 200))
    assert "kld_p99" not in shown[80] and ("gates" not in shown[100] or "ppl_ratio" in shown[100])


def test_intrinsic_dim_and_merge_tables_fit(capsys, llama, tmp_path):
    from modelsurgeon import api

    data = api.intrinsic_dim(task="toy", grid=(9, 10), device="cpu").to_dict()
    merged = run_json(capsys, "merge", "--method", "linear", str(llama), str(llama), "-o", str(tmp_path / "m"), "-q")
    for width in WIDTHS:
        lines = rendered(intrinsic_cmd._print_summary, data, width)
        header, rows = body(lines)
        assert all(len(line.rstrip()) <= width for line in lines[: lines.index(rows[-1]) + 1]), "\n".join(lines)
        assert len(rows) == len(data["records"]) and all(h in header for h in ("run", "d", "seed", "time", "pass"))
        lines = rendered(merge_cmd._print_plan, merged, width)
        assert all(len(line.rstrip()) <= width for line in lines), "\n".join(lines)
        labels = [line.split("  ")[0].strip() for line in lines if line.startswith(" ") and not line.startswith("  ")]
        assert {"method", "models", "output", "bytes written"} <= set(labels), lines


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
