"""The reliability pass (issue 10): every case the adversarial pass found, as a test. Nothing the user owns
is lost, no file chooses code to run, no input hangs or exhausts memory, bad data gives the right answer or
one line."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch
from builders import make_tiny_llama, write_checkpoint
from helpers import assert_one_line_error, run, run_json

from modelsurgeon.ops.core.errors import SurgeonError

ROOT = Path(__file__).resolve().parents[1]


def snapshot(folder: Path) -> dict[str, str]:
    """Every file under ``folder`` (hidden ones included) with the sha256 of its bytes."""
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.rglob("*")) if p.is_file()
    }


def refused(code: int, out: str, err: str, expected: int, *needles: str) -> None:
    """Refused before any output with the given exit code: what ``assert_one_line_error`` checks, except that
    a plan's list of problems may take several lines."""
    assert code == expected and out == "" and "Traceback" not in err and err.startswith("error: "), (code, err)
    for n in needles:
        assert n in err, (n, err)


def no_temp(folder: Path) -> None:
    left = [p.name for p in folder.iterdir() if ".tmp-" in p.name or ".old-" in p.name]
    assert left == [], left


@pytest.fixture
def models(tmp_path) -> Path:
    """d/models/llama with a sibling model and a user file: what `-o d/models --force` used to delete."""
    root = tmp_path / "d" / "models"
    make_tiny_llama(root / "llama")
    make_tiny_llama(root / "other", seed=1)
    (root / "notes.txt").write_text("mine\n")
    return root


# ------------------------------------------------------------------------------------------
# 1. an output that can never destroy input or user data


@pytest.mark.parametrize(
    "command",
    [["prune", "--sparsity", "0.5"], ["quantize", "--scheme", "w8a16", "--group-size", "32"]],
    ids=["prune", "quantize"],
)
def test_force_onto_the_folder_holding_the_input_is_refused(capsys, models, command):
    before = snapshot(models.parent)
    c, out, err = run(capsys, command[0], models / "llama", "-o", models, "--force", *command[1:])
    assert_one_line_error(c, out, err, 1, "contains the input")
    assert snapshot(models.parent) == before


@pytest.mark.parametrize("command", ["prune", "merge"])
def test_force_onto_the_input_itself_is_refused(capsys, models, command):
    src = models / "llama"
    (src / "thesis.tex").write_text("years of work\n")
    before = snapshot(models)
    if command == "prune":
        c, out, err = run(capsys, "prune", src, "-o", src, "--force", "--sparsity", "0.5")
    else:
        c, out, err = run(capsys, "merge", "--method", "linear", src, models / "other", "-o", src, "--force")
    assert_one_line_error(c, out, err, 1, "is the input")
    assert snapshot(models) == before


def test_gguf_onto_a_weight_file_of_the_input_is_refused(capsys, models):
    from builders import make_llama_with_tokenizer

    src = make_llama_with_tokenizer(models / "llama-tok", "the quick brown fox")
    before = snapshot(models)
    # the tiny tokenizer's check-text hash is not one llama.cpp lists: name its pre-tokenizer, as a user must
    pre = ("--pre-tokenizer", "gpt-2")
    c, out, err = run(capsys, "quantize", src, "-o", src / "model.safetensors", "--scheme", "q8_0", *pre, "--force")
    assert_one_line_error(c, out, err, 1, "is the input")
    assert snapshot(models) == before


def test_force_refuses_a_folder_modelsurgeon_did_not_write(capsys, tmp_path, small_ckpt):
    home = tmp_path / "home"
    (home / ".ssh").mkdir(parents=True)
    (home / ".ssh" / "id_ed25519").write_text("key\n")
    (home / "thesis.tex").write_text("years of work\n")
    before = snapshot(home)
    c, out, err = run(capsys, "prune", small_ckpt, "-o", home, "--force", "--sparsity", "0.5")
    assert_one_line_error(c, out, err, 1, "--force would delete", ".ssh/", "thesis.tex")
    assert snapshot(home) == before
    # a foreign weight file is not ours either
    other = tmp_path / "theirs"
    write_checkpoint(other, {"w": torch.ones(2)})
    c, out, err = run(capsys, "prune", small_ckpt, "-o", other, "--force", "--sparsity", "0.5")
    assert_one_line_error(c, out, err, 1, "--force would delete", "model.safetensors")


def test_force_replaces_an_earlier_output_and_an_empty_folder(capsys, tmp_path, small_ckpt):
    out = tmp_path / "out"
    run_json(capsys, "prune", small_ckpt, "-o", out, "--sparsity", "0.5", "--method", "random", "--seed", "1")
    first = snapshot(out)
    run_json(capsys, "prune", small_ckpt, "-o", out, "--sparsity", "0.5", "--method", "random", "--seed", "2", "--force")
    assert snapshot(out) != first and (out / "model.safetensors").is_file()
    no_temp(tmp_path)
    (tmp_path / "empty").mkdir()
    run_json(capsys, "prune", small_ckpt, "-o", tmp_path / "empty", "--sparsity", "0.5", "--force")
    # a GGUF of ours is replaced; a file of someone else's is not
    from builders import make_llama_with_tokenizer

    llama = make_llama_with_tokenizer(tmp_path / "llama", "the quick brown fox")
    gguf = tmp_path / "m.gguf"
    pre = ("--pre-tokenizer", "gpt-2")  # the tiny tokenizer's check-text hash is not one llama.cpp lists
    assert run(capsys, "quantize", llama, "-o", gguf, "--scheme", "q8_0", *pre)[0] == 0
    assert run(capsys, "quantize", llama, "-o", gguf, "--scheme", "q8_0", *pre, "--force")[0] == 0
    foreign = tmp_path / "x.gguf"
    foreign.write_bytes(b"GGUF not ours")
    c, out_, err = run(capsys, "quantize", llama, "-o", foreign, "--scheme", "q8_0", *pre, "--force")
    assert_one_line_error(c, out_, err, 1, "--force would delete")
    assert foreign.read_bytes() == b"GGUF not ours"


def test_an_output_that_appears_during_the_run_is_not_replaced(tmp_path):
    from modelsurgeon.ops.io.output import OutputDir, OutputFile

    target = tmp_path / "out"
    with OutputDir(target) as o:
        (o.path / "a.txt").write_text("new\n")
        target.mkdir()
        (target / "precious.txt").write_text("appeared meanwhile\n")
        with pytest.raises(SurgeonError, match="appeared while this run was writing"):
            o.commit()
    assert (target / "precious.txt").read_text() == "appeared meanwhile\n"
    no_temp(tmp_path)
    f = tmp_path / "plot.png"
    with OutputFile(f) as o:
        o.path.write_bytes(b"new")
        f.write_bytes(b"someone else's")
        with pytest.raises(SurgeonError, match="appeared while this run was writing"):
            o.commit()
    assert f.read_bytes() == b"someone else's"


def test_the_old_output_goes_only_once_the_new_one_is_in_place(tmp_path, monkeypatch):
    from modelsurgeon.ops.io.output import OutputDir

    target = tmp_path / "out"
    with OutputDir(target) as o:
        (o.path / "model.safetensors").write_bytes(b"x")
    # an earlier output of ours: the rename of the new one fails -> the old one is back, unharmed
    write_checkpoint(target, {"w": torch.ones(2)})
    from safetensors.torch import save_file

    save_file({"w": torch.ones(2)}, str(target / "model.safetensors"), metadata={"modelsurgeon_version": "0"})
    before = snapshot(target)
    real_rename = os.rename

    def failing(a, b):
        if Path(a).name.startswith(".out.tmp-"):
            raise OSError(5, "I/O error")
        return real_rename(a, b)

    with OutputDir(target, force=True) as o:
        (o.path / "model.safetensors").write_bytes(b"new")
        monkeypatch.setattr(os, "rename", failing)
        with pytest.raises(OSError):
            o.commit()
        monkeypatch.setattr(os, "rename", real_rename)
    assert snapshot(target) == before
    no_temp(tmp_path)


HOLD_LOCK = """
import sys, time
from modelsurgeon.ops.io.output import output_lock
with output_lock(sys.argv[1]):
    print("locked", flush=True)
    time.sleep(60)
"""


def test_a_concurrent_run_to_the_same_output_fails_at_once(capsys, tmp_path, small_ckpt):
    from modelsurgeon.ops.io.output import output_lock

    out = tmp_path / "out"
    holder = subprocess.Popen([sys.executable, "-c", HOLD_LOCK, str(out)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        t = time.monotonic()
        c, stdout, err = run(capsys, "prune", small_ckpt, "-o", out, "--sparsity", "0.5")
        assert_one_line_error(c, stdout, err, 1, "another surgeon run", f"pid {holder.pid}")
        assert time.monotonic() - t < 30 and not out.exists()
    finally:
        holder.kill()
        holder.wait()
    # the lock is released by the holder's death: the next run works
    run_json(capsys, "prune", small_ckpt, "-o", out, "--sparsity", "0.5")
    with output_lock(out), output_lock(out):  # re-entrant within one process
        pass


def dead_pid() -> int:
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()
    return p.pid


def test_a_temp_folder_left_by_a_killed_run_is_removed_with_a_note(capsys, tmp_path, small_ckpt):
    from modelsurgeon.ops.io.output import MARKER

    out = tmp_path / "out"
    stale = tmp_path / f".out.tmp-{dead_pid()}-abcdef"
    stale.mkdir()
    (stale / MARKER).write_text(json.dumps({"pid": dead_pid(), "target": "out"}))
    (stale / "model.safetensors").write_bytes(b"partial")
    unmarked = tmp_path / ".out.tmp-1-ffffff"  # no marker: not ours, left alone
    unmarked.mkdir()
    c, stdout, err = run(capsys, "prune", small_ckpt, "-o", out, "--sparsity", "0.5")
    assert c == 0, err
    assert not stale.exists() and unmarked.exists()
    assert "note: removed" in err and "killed" in err


def test_output_root_dot_and_bad_shard_size(capsys, tmp_path, small_ckpt, monkeypatch):
    c, out, err = run(capsys, "prune", small_ckpt, "-o", "/", "--force", "--sparsity", "0.5")
    assert_one_line_error(c, out, err, 1, "root of the file system")
    monkeypatch.chdir(small_ckpt)
    c, out, err = run(capsys, "prune", small_ckpt, "-o", ".", "--force", "--sparsity", "0.5")
    assert_one_line_error(c, out, err, 1, "is the input")
    for bad in ("-1", "lots", "0"):
        c, out, err = run(capsys, "prune", small_ckpt, "-o", tmp_path / "o", "--sparsity", "0.5", "--max-shard-size", bad)
        assert c in (1, 2) and "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    assert not (tmp_path / "o").exists()


def test_not_enough_space_is_one_line_before_any_work(tmp_path, monkeypatch):
    from modelsurgeon.ops.io import output

    class Full:
        f_bavail, f_frsize, f_flag = 1, 4096, 0

    monkeypatch.setattr(output.os, "statvfs", lambda p: Full())
    with pytest.raises(SurgeonError, match="not enough free space"):
        output.Output.of(tmp_path / "o").check(expected_bytes=10**9)


# ------------------------------------------------------------------------------------------
# 2. signals


SLOW_WRITE = """
import sys, time
from modelsurgeon.ops.io import writer
real = writer.ShardedWriter.write
def slow(self, name, tensor):
    real(self, name, tensor)
    print("writing", flush=True)
    time.sleep(60)
writer.ShardedWriter.write = slow
from modelsurgeon.cli.main import entry
sys.argv = ["surgeon", *sys.argv[1:]]
entry()
"""


@pytest.mark.parametrize(
    "sig,code,word", [(signal.SIGTERM, 143, "SIGTERM"), (signal.SIGHUP, 129, "SIGHUP"), (signal.SIGINT, 130, "interrupted")]
)
def test_a_signal_during_the_write_removes_the_temp_and_says_so(tmp_path, small_ckpt, sig, code, word):
    out = tmp_path / "out"
    p = subprocess.Popen(
        [sys.executable, "-c", SLOW_WRITE, "prune", str(small_ckpt), "-o", str(out), "--sparsity", "0.5", "-q"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert p.stdout.readline().strip() == "writing"
        assert any(".out.tmp-" in q.name for q in tmp_path.iterdir())
        p.send_signal(sig)
        _, err = p.communicate(timeout=30)
    finally:
        p.kill()
    assert p.returncode == code, err
    assert word in err and "nothing was written" in err and "Traceback" not in err
    assert not out.exists()
    no_temp(tmp_path)
    assert not (tmp_path / ".out.lock").exists()


SIGNAL_AT_START = """
import os, signal, sys, time
import modelsurgeon.cli.main as m
def main(argv=None):  # entry() has installed its handlers; the commands are not imported yet
    assert "typer" not in sys.modules and "torch" not in sys.modules
    os.kill(os.getpid(), signal.SIGINT)
    time.sleep(30)
m.main = main
m.entry()
"""


def test_ctrl_c_in_the_first_instant_is_not_swallowed():
    p = subprocess.run([sys.executable, "-c", SIGNAL_AT_START], capture_output=True, text=True, timeout=60)
    assert p.returncode == 130 and p.stderr == "interrupted; nothing was written\n", p.stderr


# ------------------------------------------------------------------------------------------
# 3. no code from data


def test_a_subspace_file_cannot_choose_code_to_run(capsys, tmp_path):
    from safetensors import safe_open
    from safetensors.torch import save_file

    sub = tmp_path / "s.safetensors"
    c, out, err = run(capsys, "intrinsic-dim", "--task", "toy", "--grid", "10", "--save-subspace", sub, "-q", "--json")
    assert c == 0, err
    with safe_open(str(sub), "pt") as f:
        meta, tensors = f.metadata(), {k: f.get_tensor(k) for k in f.keys()}
    key = "modelsurgeon.subspace"
    rec = json.loads(meta[key])
    rec["source"] = {"kind": "module", "task": "builtins:breakpoint"}
    meta[key] = json.dumps(rec)
    evil = tmp_path / "evil.safetensors"
    save_file(tensors, str(evil), metadata=meta)
    p = subprocess.run(
        [sys.executable, "-m", "modelsurgeon", "expand-subspace", str(evil), "-o", str(tmp_path / "x")],
        capture_output=True,
        text=True,
        stdin=subprocess.DEVNULL,
        timeout=120,
        env={**os.environ, "PYTHONBREAKPOINT": "0"},
    )
    assert p.returncode == 1 and "(Pdb)" not in p.stdout
    assert "runs code only when you name it on the command line" in p.stderr and len(p.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "x").exists()


def test_a_tampered_subspace_is_refused_even_with_the_norm_kept(capsys, tmp_path):
    from safetensors import safe_open
    from safetensors.torch import save_file

    sub = tmp_path / "s.safetensors"
    c, out, err = run(capsys, "intrinsic-dim", "--task", "toy", "--grid", "10", "--save-subspace", sub, "-q", "--json")
    assert c == 0, err
    with safe_open(str(sub), "pt") as f:
        meta, tensors = f.metadata(), {k: f.get_tensor(k) for k in f.keys()}
    theta = tensors["theta_d"].clone()
    tensors["theta_d"] = theta.flip(0)  # the same norm, other values
    assert torch.linalg.vector_norm(tensors["theta_d"]) == torch.linalg.vector_norm(theta)
    save_file(tensors, str(tmp_path / "t.safetensors"), metadata=meta)
    c, out, err = run(capsys, "expand-subspace", tmp_path / "t.safetensors", "-o", tmp_path / "x")
    assert_one_line_error(c, out, err, 1, "theta_d", "sha256")


# ------------------------------------------------------------------------------------------
# 4/5. bounds before allocation, regexes that cannot hang


def test_a_huge_token_id_is_refused_before_allocation(capsys, tmp_path):
    from builders import make_llama_with_tokenizer

    src = make_llama_with_tokenizer(tmp_path / "m", "the quick brown fox")
    tok = json.loads((src / "tokenizer.json").read_text())
    tok["model"]["vocab"]["huge"] = 10**9
    (src / "tokenizer.json").write_text(json.dumps(tok))
    c, out, err = run(capsys, "quantize", src, "-o", tmp_path / "m.gguf", "--scheme", "q8_0")
    assert_one_line_error(c, out, err, 1, "token id 1000000000", "embedding rows")


@pytest.mark.parametrize("flag", ["--filter", "--include", "--ignore"])
def test_a_catastrophic_regex_ends_in_one_line_quickly(capsys, tmp_path, flag):
    name = "a" * 40 + "!"
    src = write_checkpoint(tmp_path / "m", {name: torch.ones(4, 8), "b.weight": torch.ones(4, 8)})
    t = time.monotonic()
    if flag == "--filter":
        c, out, err = run(capsys, "report", src, "--filter", "(a+)+$")
    elif flag == "--include":
        c, out, err = run(capsys, "prune", src, "-o", tmp_path / "o", "--sparsity", "0.5", "--include", "(a+)+$")
    else:
        c, out, err = run(capsys, "quantize", src, "-o", tmp_path / "o", "--scheme", "w8a16", "--ignore", "(a+)+$")
    assert time.monotonic() - t < 30
    assert_one_line_error(c, out, err, c, "(a+)+$")
    assert c in (1, 2) and not (tmp_path / "o").exists()


def test_a_huge_label_is_refused_before_allocation(capsys, tmp_path):
    import numpy as np

    data = tmp_path / "d.npz"
    np.savez(data, x=np.random.default_rng(0).normal(size=(20, 4)).astype("float32"), y=np.array([0, 1] * 9 + [0, 300_000_000]))
    c, out, err = run(capsys, "intrinsic-dim", "--task", f"npz:{data}", "--grid", "4", "-q")
    assert_one_line_error(c, out, err, c, "300000000")
    assert c in (1, 2)


def test_non_finite_training_data_is_refused(capsys, tmp_path):
    import numpy as np

    x = np.random.default_rng(0).normal(size=(20, 4)).astype("float32")
    x[3, 1] = np.nan
    data = tmp_path / "d.npz"
    np.savez(data, x=x, y=np.array([0, 1] * 10))
    c, out, err = run(capsys, "intrinsic-dim", "--task", f"npz:{data}", "--grid", "4", "-q")
    assert_one_line_error(c, out, err, c, "NaN")
    assert c in (1, 2)


# ------------------------------------------------------------------------------------------
# 6. right answers on bad data


def test_compare_with_nan_reports_nan_and_fails_the_gate(capsys, tmp_path):
    a = torch.randn(8, 8, generator=torch.Generator().manual_seed(0))
    b = a.clone()
    b[2, 3] = float("nan")
    ma = write_checkpoint(tmp_path / "a", {"w": a})
    mb = write_checkpoint(tmp_path / "b", {"w": b})
    for x, y in ((ma, mb), (mb, ma)):  # the NaN in the other model, then in the model itself
        r = run_json(capsys, "report", x, "--compare", y)
        assert r["compare"]["max_rel_l2"] == r["compare"]["mean_rel_l2"] == r["compare"]["min_cosine"] == "nan", r["compare"]
        for gate in ("max_rel_l2<0.1", "mean_rel_l2<0.1", "min_cosine>0.9"):
            c, out, err = run(capsys, "report", x, "--compare", y, "--require", gate)
            assert c == 1, (gate, out, err)


def test_every_safetensors_dtype_is_reported(capsys, tmp_path):
    tensors = {
        "f8": torch.tensor([1.0, -2.0, 0.0, 448.0]).to(torch.float8_e4m3fn),
        "f8b": torch.tensor([1.0, 0.0]).to(torch.float8_e5m2),
        "u16": torch.tensor([0, 65535], dtype=torch.uint16),
        "u32": torch.tensor([0, 2**32 - 1], dtype=torch.uint32),
        "u64": torch.tensor([1, 2**63 - 1], dtype=torch.uint64),
        "b": torch.tensor([True, False]),
    }
    src = write_checkpoint(tmp_path / "m", tensors)
    r = run_json(capsys, "report", src, "--compare", src)
    assert r["compare"]["max_rel_l2"] == 0.0
    rows = {t["name"]: t for t in r["tensors"]}
    assert rows["u16"]["max"] == 65535 and rows["u32"]["max"] == 2**32 - 1
    assert rows["f8"]["max"] == 448.0


def test_finite_extremes_are_not_called_non_finite(capsys, tmp_path):
    big = torch.randn(8, 32, generator=torch.Generator().manual_seed(0))
    big[0, 0] = 1e38
    src = write_checkpoint(tmp_path / "big", {"l.weight": big})
    c, out, err = run(
        capsys, "quantize", src, "-o", tmp_path / "o", "--scheme", "w8a16", "--group-size", "32", "--format", "dense"
    )
    assert c == 0 and "NaN" not in err, err
    half = torch.randn(8, 32, generator=torch.Generator().manual_seed(0)).half()
    half[0, 0] = 65504
    src = write_checkpoint(tmp_path / "half", {"l.weight": half})
    c, out, err = run(capsys, "quantize", src, "-o", tmp_path / "o2", "--scheme", "fp8", "--format", "dense")
    assert c == 0 and "NaN" not in err, err
    nan = big.clone()
    nan[1, 1] = float("inf")
    src = write_checkpoint(tmp_path / "inf", {"l.weight": nan})
    c, out, err = run(capsys, "quantize", src, "-o", tmp_path / "o3", "--scheme", "w8a16", "--group-size", "32")
    assert_one_line_error(c, out, err, 1, "l.weight", "NaN or infinite")


def test_extracting_lora_from_non_finite_weights_is_refused(capsys, tmp_path):
    base = make_tiny_llama(tmp_path / "base")
    ft = make_tiny_llama(tmp_path / "ft", seed=1)
    from safetensors.torch import load_file, save_file

    w = load_file(str(ft / "model.safetensors"))
    name = next(n for n in w if n.endswith("q_proj.weight"))
    w[name][0, 0] = float("inf")
    save_file(w, str(ft / "model.safetensors"), metadata={"format": "pt"})
    c, out, err = run(capsys, "merge", "--extract-lora", ft, "--base", base, "--rank", "2", "-o", tmp_path / "lora")
    assert_one_line_error(c, out, err, 1, "NaN or infinite")
    assert not (tmp_path / "lora").exists()


# ------------------------------------------------------------------------------------------
# 7. one line for malformed inputs


def write_header(path: Path, header: dict, data: bytes = b"") -> Path:
    raw = json.dumps(header).encode()
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(len(raw).to_bytes(8, "little") + raw + data)
    return path


@pytest.mark.parametrize(
    "header,data",
    [
        ({"a": {"dtype": "F32", "shape": [2**63, 0], "data_offsets": [0, 0]}}, b""),
        (
            {
                "a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]},
                "b": {"dtype": "F32", "shape": [1], "data_offsets": [12, 16]},
            },
            bytes(16),
        ),
        ({"a": {"dtype": "F32", "shape": [2**40], "data_offsets": [0, 2**42]}}, bytes(8)),
        ({"a": {"dtype": "Q9", "shape": [2], "data_offsets": [0, 8]}}, bytes(8)),
    ],
    ids=["shape-2**63", "gap", "beyond-file", "unknown-dtype"],
)
def test_bad_safetensors_headers_are_one_line(capsys, tmp_path, header, data):
    write_header(tmp_path / "m" / "model.safetensors", header, data)
    c, out, err = run(capsys, "report", tmp_path / "m")
    assert_one_line_error(c, out, err, 1)


def test_duplicate_names_in_a_header_are_refused(capsys, tmp_path):
    raw = b'{"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]},"a":{"dtype":"F32","shape":[1],"data_offsets":[4,8]}}'
    p = tmp_path / "m" / "model.safetensors"
    p.parent.mkdir()
    p.write_bytes(len(raw).to_bytes(8, "little") + raw + bytes(8))
    c, out, err = run(capsys, "report", tmp_path / "m")
    assert_one_line_error(c, out, err, 1, "a")


@pytest.mark.parametrize(
    "config", ["[1, 2]", '{"vocab_size": null, "model_type": "llama"}', '{"model_type": "llama", "hidden_size": 1e300}']
)
def test_bad_config_json_is_one_line(capsys, tmp_path, config):
    src = make_tiny_llama(tmp_path / "m")
    (src / "config.json").write_text(config)
    for args in (["report", src], ["quantize", src, "-o", tmp_path / "m.gguf", "--scheme", "q8_0"]):
        c, out, err = run(capsys, *args)
        assert c == 0 or (c in (1, 2) and "Traceback" not in err and len(err.strip().splitlines()) == 1), err


def test_zero_element_linear_weights(capsys, tmp_path):
    src = write_checkpoint(tmp_path / "m", {"l.weight": torch.ones(0, 8), "k.weight": torch.ones(4, 8)})
    for args in (
        ["prune", src, "-o", tmp_path / "p", "--sparsity", "0.5"],
        ["quantize", src, "-o", tmp_path / "q", "--scheme", "w8a16"],
    ):
        c, out, err = run(capsys, *args)
        assert c == 0 or (c in (1, 2) and "Traceback" not in err and len(err.strip().splitlines()) == 1), err


def test_plot_and_save_subspace_paths_are_checked_before_the_search(capsys, tmp_path):
    same = tmp_path / "x.png"
    t = time.monotonic()
    c, out, err = run(capsys, "intrinsic-dim", "--task", "toy", "--grid", "8", "--plot", same, "--save-subspace", same)
    assert c in (1, 2) and "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    (tmp_path / "taken.png").write_bytes(b"not ours")
    c, out, err = run(capsys, "intrinsic-dim", "--task", "toy", "--grid", "8", "--plot", tmp_path / "taken.png", "--force")
    assert_one_line_error(c, out, err, 1, "--force would delete")
    assert time.monotonic() - t < 60


# ------------------------------------------------------------------------------------------
# smaller: one rule for seeds and for duplicate recipe keys


def test_seed_minus_one_is_refused_by_every_command(capsys, tmp_path, small_ckpt):
    llama = make_tiny_llama(tmp_path / "a")
    c, out, err = run(capsys, "prune", small_ckpt, "-o", tmp_path / "p", "--sparsity", "0.5", "--seed", "-1")
    assert_one_line_error(c, out, err, 2, "--seed")
    c, out, err = run(capsys, "merge", "--method", "linear", llama, llama, "-o", tmp_path / "m", "--seed", "-1")
    assert_one_line_error(c, out, err, 2, "--seed")


def test_duplicate_recipe_keys_are_refused_by_every_command(capsys, tmp_path, small_ckpt):
    rp = tmp_path / "p.yaml"
    rp.write_text("sparsity: 0.5\nsparsity: 0.3\n")
    c, out, err = run(capsys, "prune", small_ckpt, "-o", tmp_path / "p", "--recipe", rp)
    assert_one_line_error(c, out, err, c, "sparsity")
    assert c in (1, 2)
    llama = make_tiny_llama(tmp_path / "a")
    rm = tmp_path / "m.yaml"
    rm.write_text(
        textwrap.dedent(
            f"""\
            merge_method: linear
            merge_method: ties
            models:
              - model: {llama}
              - model: {llama}
            """
        )
    )
    c, out, err = run(capsys, "merge", rm, "-o", tmp_path / "m")
    refused(c, out, err, c, "merge_method", "appears twice")
    assert c in (1, 2)


def test_readme_states_the_output_rules():
    text = (ROOT / "README.md").read_text()
    section = text[text.index("## Outputs") : text.index("## Conventions")]
    for promise in ("may not be an input", "only an earlier", "lock", "removed only after"):
        assert promise in section.replace("\n", " "), promise


# ------------------------------------------------------------------------------------------
# 4. intrinsic-dim: the doubling stops where memory ends, and Ctrl-C is heard at once


def test_the_search_stops_doubling_when_the_next_run_would_not_fit(capsys, monkeypatch):
    from modelsurgeon.ops.intrinsic import search
    from modelsurgeon.ops.intrinsic.projections import estimate_bytes

    free = int(estimate_bytes("dense", 1000, 4) / search.HEADROOM) + 1  # toy: D = 1000; d = 4 fits, 8 does not
    monkeypatch.setattr(search, "available_bytes", lambda: free)
    c, out, err = run(capsys, "intrinsic-dim", "--task", "toy", "--projection", "dense", "--d-start", "2", "--json", "-q")
    assert c == 0, err
    r = json.loads(out)
    stop = r["search"]["memory_stop"]
    assert stop["d"] == 8 and stop["need_bytes"] > search.HEADROOM * free
    assert max(x["d"] for x in r["records"] if x["kind"] == "subspace") == 4
    assert "the search stopped at d = 8" in out + err


@pytest.mark.slow
def test_ctrl_c_stops_the_search_within_seconds(tmp_path):
    p = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "modelsurgeon",
            "intrinsic-dim",
            "--task",
            "digits",
            "--epochs",
            "50",
            "--plot",
            str(tmp_path / "p.png"),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 120
        line = ""
        while not line.startswith("intrinsic-dim:") and time.monotonic() < deadline:  # the plan: training starts
            line = p.stderr.readline()
            if not line:
                break
        time.sleep(3)
        t = time.monotonic()
        p.send_signal(signal.SIGINT)
        _, err = p.communicate(timeout=30)
        waited = time.monotonic() - t
    finally:
        p.kill()
    assert p.returncode == 130 and "interrupted" in err, err
    assert waited < 10, waited  # a second on an idle machine; slack for a loaded CI runner
    assert not (tmp_path / "p.png").exists()
    no_temp(tmp_path)


# ------------------------------------------------------------------------------------------
# 7. a full disk or a read-only place is one line


def test_a_full_disk_while_writing_is_one_line(capsys, tmp_path, small_ckpt, monkeypatch):
    import errno

    from modelsurgeon.ops.io import writer

    def full(self, name, tensor):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(writer.ShardedWriter, "write", full)
    c, out, err = run(capsys, "prune", small_ckpt, "-o", tmp_path / "o", "--sparsity", "0.5")
    assert_one_line_error(c, out, err, 1, "space")
    assert not (tmp_path / "o").exists()
    no_temp(tmp_path)


def test_a_read_only_place_is_refused_before_the_work(capsys, tmp_path, small_ckpt, monkeypatch):
    from modelsurgeon.ops.io import output

    real = os.statvfs

    class ReadOnly:
        def __init__(self, st):
            self.f_bavail, self.f_frsize, self.f_flag = st.f_bavail, st.f_frsize, st.f_flag | os.ST_RDONLY

    monkeypatch.setattr(output.os, "statvfs", lambda p: ReadOnly(real(p)))
    for args in (
        ["prune", small_ckpt, "-o", tmp_path / "o", "--sparsity", "0.5"],
        ["intrinsic-dim", "--task", "toy", "--grid", "10", "--save-subspace", tmp_path / "s.safetensors"],
        ["intrinsic-dim", "--task", "toy", "--grid", "10", "--plot", tmp_path / "p.png"],
    ):
        c, out, err = run(capsys, *args)
        assert_one_line_error(c, out, err, 1, "read-only")


# ------------------------------------------------------------------------------------------
# 6. merging quantized checkpoints merges their values, not their codes


@pytest.mark.slow
def test_merging_two_w8a8_checkpoints_merges_the_dequantized_weights(capsys, tmp_path):
    from safetensors.torch import load_file

    q = []
    for seed in (0, 1):
        src = make_tiny_llama(tmp_path / f"m{seed}", seed=seed)
        run_json(capsys, "quantize", src, "-o", tmp_path / f"q{seed}", "--scheme", "w8a8", "-q")
        run_json(capsys, "dequantize", tmp_path / f"q{seed}", "-o", tmp_path / f"d{seed}", "-q")
        q.append(tmp_path / f"q{seed}")
    run_json(capsys, "merge", "--method", "linear", *q, "-o", tmp_path / "from-q", "-q")
    run_json(capsys, "merge", "--method", "linear", tmp_path / "d0", tmp_path / "d1", "-o", tmp_path / "from-d", "-q")
    a, b = load_file(str(tmp_path / "from-q" / "model.safetensors")), load_file(str(tmp_path / "from-d" / "model.safetensors"))
    assert a.keys() == b.keys() and not any(k.endswith(("weight_scale", "weight_packed")) for k in a)
    for k in a:
        assert a[k].is_floating_point() and torch.equal(a[k], b[k]), k
