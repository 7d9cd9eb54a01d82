"""`surgeon intrinsic-dim`: the toy's exact answer, digits near the measured 272, every task form, the real
MiniLM checkpoint, and one-line errors for bad input."""

from __future__ import annotations

import csv
import json
import math
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
from builders import make_llama_with_tokenizer
from helpers import assert_one_line_error, run, run_json
from safetensors import safe_open
from safetensors.torch import load_file, save_file


@pytest.fixture(autouse=True)
def one_thread():
    """Training runs are many small ops: on a shared 2-core machine two spinning OpenMP threads are several
    times slower than one. The CLI itself asks for passive waiting before importing torch; in-process, torch
    is already loaded, so the tests use one thread instead."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


# --------------------------------------------------------------------------------------------
# the two reference measurements


def test_toy_gives_exactly_ten(capsys):
    out = run_json(capsys, "intrinsic-dim", "--task", "toy", "-q")
    assert out["D"] == 1000
    assert out["d_int"] == out["d_int90"] == 10
    assert out["bracket"] == [9, 10]
    assert out["compression"] == 100.0
    assert out["baseline"]["value"] == 1.0 and out["baseline"]["how"].startswith("direct training")
    assert out["theta0_metric"] == 0.0
    by_d = {r["d"]: r for r in out["records"] if r["kind"] == "subspace"}
    assert by_d[9]["metric"] == 0.0 and by_d[9]["loss"] > 1  # 9 constraints cannot meet 10 targets
    assert by_d[10]["metric"] == 1.0 and by_d[10]["loss"] < 1e-6
    assert len(out["records"]) <= 8  # baseline + doubling + bisection, not a grid


def test_toy_with_fastfood_and_seeds(capsys):
    out = run_json(capsys, "intrinsic-dim", "--task", "toy", "--projection", "fastfood", "--seeds", "2", "-q")
    assert out["d_int"] == 10
    assert out["projection"]["kind"] == "fastfood" and out["projection"]["L"] == 1024
    assert out["projection"]["seeds"] == [0, 1]
    ten = next(c for c in out["curve"] if c["d"] == 10)
    assert ten["runs"] == 2 and ten["mean"] == 1.0


@pytest.mark.slow
def test_digits_fc_lands_near_272():
    """The paper's FC network (64-200-200-10 here) on sklearn's digits: the note measured d_int90 ~ 272
    (bracket 256-272). Over seeds 0-3 this implementation measured 296, 280, 288 and 256; the search must
    land within about 20 % of 272, in about 10 trainings. Run as a user runs it, in a fresh process."""
    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "modelsurgeon",
            "intrinsic-dim",
            "--task",
            "digits",
            "--arch",
            "fc",
            "--width",
            "200",
            "--depth",
            "2",
            "--json",
            "-q",
        ],
        capture_output=True,
        text=True,
        env={**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "2")},
    )
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    assert out["D"] == 55_210
    assert out["baseline"]["value"] > 0.95
    assert 220 <= out["d_int"] <= 330, (out["d_int"], out["bracket"])
    lo, hi = out["bracket"]
    assert hi == out["d_int"] and hi - lo <= max(1, int(0.05 * hi))
    assert out["search"]["runs"] <= 13
    assert out["projection"]["kind"] == "sparse" and out["projection"]["nonzeros_per_column"] == 235
    assert out["compression"] == pytest.approx(55_210 / out["d_int"])
    for rec in out["records"]:
        assert set(rec) >= {"d", "seed", "metric", "loss", "seconds"}


# --------------------------------------------------------------------------------------------
# output forms


def test_table_chart_and_plot(capsys, tmp_path):
    png = tmp_path / "curve.png"
    code, out, err = run(capsys, "intrinsic-dim", "--task", "toy", "--grid", "8,9,10,12", "--plot", str(png), "-q")
    assert code == 0, err
    assert "d_int90 = 10" in out and "bracket (9, 10]" in out
    assert "<- d_int" in out and "█" in out  # the terminal chart
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_plot_without_matplotlib_names_the_pip_command(capsys, monkeypatch, tmp_path):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "matplotlib" else real(name, *a))
    code, out, err = run(capsys, "intrinsic-dim", "--task", "toy", "--plot", str(tmp_path / "p.png"))
    assert_one_line_error(code, out, err, 1, "--plot needs matplotlib", "pip install")


def test_grid_and_threshold_from_init(capsys):
    out = run_json(
        capsys, "intrinsic-dim", "--task", "toy", "--grid", "9,10", "--baseline", "1", "--threshold-from", "init", "-q"
    )
    assert out["search"]["mode"] == "grid" and out["baseline"]["how"] == "given (--baseline)"
    assert out["threshold_from"] == "init" and out["threshold_value"] == pytest.approx(0.9)
    assert [r["d"] for r in out["records"]] == [9, 10] and out["d_int"] == 10


# --------------------------------------------------------------------------------------------
# task forms


def _blobs(n=200, k=3, dim=6, seed=0):
    g = np.random.default_rng(seed)
    y = g.integers(0, k, n)
    X = g.normal(size=(n, dim)) * 0.5 + np.eye(k, dim)[y] * 3
    return X.astype(np.float32), y.astype(np.int64)


def test_npz_task_with_fc(capsys, tmp_path):
    X, y = _blobs()
    np.savez(tmp_path / "d.npz", X=X, y=y)
    out = run_json(
        capsys,
        "intrinsic-dim",
        "--task",
        f"npz:{tmp_path / 'd.npz'}",
        "--width",
        "16",
        "--depth",
        "1",
        "--grid",
        "4,32",
        "--epochs",
        "30",
        "--batch-size",
        "16",
        "-q",
    )
    assert out["D"] == 6 * 16 + 16 + 16 * 3 + 3
    assert out["task"]["n_train"] == 160 and out["task"]["n_eval"] == 40 and out["task"]["n_classes"] == 3
    assert out["records"][0]["kind"] == "direct" and out["baseline"]["value"] > 0.9
    np.savez(tmp_path / "t.npz", X=X[:150], y=y[:150], X_test=X[150:], y_test=y[150:])
    out = run_json(
        capsys,
        "intrinsic-dim",
        "--task",
        f"npz:{tmp_path / 't.npz'}",
        "--width",
        "16",
        "--depth",
        "1",
        "--grid",
        "4",
        "--epochs",
        "2",
        "--baseline",
        "1",
        "-q",
    )
    assert out["task"]["eval_split"] == "given" and out["task"]["n_eval"] == 50


def test_csv_features_and_lenet(capsys, tmp_path):
    X, y = _blobs(n=60, dim=64)
    with open(tmp_path / "d.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow([f"f{i}" for i in range(64)] + ["label"])
        for xi, yi in zip(X, y):
            w.writerow([f"{v:.4f}" for v in xi] + [["a", "b", "c"][yi]])
    out = run_json(
        capsys,
        "intrinsic-dim",
        "--task",
        f"csv:{tmp_path / 'd.csv'}",
        "--arch",
        "lenet",
        "--grid",
        "16",
        "--epochs",
        "2",
        "--baseline",
        "1",
        "-q",
    )
    # LeNet on 8x8 (padded convolutions): 156 + 2416 + 64*120+120 + 120*84+84 + 84*3+3
    assert out["D"] == 156 + 2416 + 7800 + 10164 + 255
    assert out["model"] == "lenet on (1, 8, 8)"


def test_module_function_task_and_checkpoint_weights(capsys, tmp_path):
    (tmp_path / "mytask.py").write_text(
        textwrap.dedent("""
        import torch
        def make():
            g = torch.Generator().manual_seed(0)
            X = torch.randn(100, 4, generator=g)
            y = (X[:, 0] > 0).long()
            torch.manual_seed(0)
            model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.Tanh(), torch.nn.Linear(8, 2))
            return {"model": model, "train": (X, y), "metric": "accuracy"}
    """)
    )
    spec = f"{tmp_path / 'mytask.py'}:make"
    out = run_json(capsys, "intrinsic-dim", "--task", spec, "--grid", "2,8", "--epochs", "3", "-q")
    assert out["D"] == 4 * 8 + 8 + 8 * 2 + 2 and out["metric"] == "accuracy"
    assert out["model_source"] == {"kind": "module", "task": spec}
    # MODEL given: its tensors become theta_0 of the module's model, matched by name
    torch.manual_seed(1)
    sd = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.Tanh(), torch.nn.Linear(8, 2)).state_dict()
    (tmp_path / "ck").mkdir()
    save_file(sd, str(tmp_path / "ck" / "model.safetensors"))
    out = run_json(
        capsys, "intrinsic-dim", str(tmp_path / "ck"), "--task", spec, "--grid", "2", "--epochs", "1", "--baseline", "1", "-q"
    )
    assert out["model_source"]["checkpoint"]["files"]["model.safetensors"]
    sd["2.weight"] = torch.zeros(3, 8)
    save_file(sd, str(tmp_path / "ck" / "model.safetensors"))
    code, o, e = run(capsys, "intrinsic-dim", str(tmp_path / "ck"), "--task", spec, "--grid", "2")
    assert_one_line_error(code, o, e, 1, "tensors do not match the model", "2.weight is [3, 8]")


@pytest.fixture
def llama_and_text(tmp_path):
    import random

    rnd = random.Random(0)
    words = "the cat sat on a mat and the dog ran to the park while birds sang in trees".split()
    text = " ".join(rnd.choice(words) for _ in range(1500))
    (tmp_path / "notes.txt").write_text(text)
    return make_llama_with_tokenizer(tmp_path / "llama", text), tmp_path / "notes.txt"


def test_text_task_on_a_causal_lm(capsys, llama_and_text, tmp_path):
    folder, text = llama_and_text
    out = run_json(
        capsys,
        "intrinsic-dim",
        str(folder),
        "--task",
        f"text:{text}",
        "--max-tokens",
        "64",
        "--grid",
        "16,512",
        "--epochs",
        "3",
        "--baseline-lr",
        "1e-2",
        "--lr",
        "0.1",
        "--save-subspace",
        str(tmp_path / "lm.safetensors"),
        "-q",
    )
    assert out["metric"] == "token_prob" and out["threshold_from"] == "init"
    assert out["baseline"]["value"] > out["theta0_metric"] > 0
    for r in out["records"]:
        assert r["perplexity"] == pytest.approx(math.exp(r["loss"]))
    assert out["task"]["eval_split"].startswith("last ")
    assert out["D"] == sum(p.numel() for p in load_file(str(folder / "model.safetensors")).values())


# --------------------------------------------------------------------------------------------
# the real pretrained checkpoint: MiniLM fine-tuned in a subspace, then expanded and loaded by transformers


def _reviews_csv(path: Path, n: int = 40) -> Path:
    pos = ["great", "wonderful", "excellent", "lovely", "fantastic", "superb"]
    neg = ["awful", "terrible", "horrible", "dreadful", "poor", "bad"]
    things = ["film", "meal", "book", "hotel", "concert", "game"]
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["text", "label"])
        for i in range(n):
            lab = i % 2
            w.writerow([f"the {things[i % 6]} was {(pos if lab else neg)[(i // 2) % 6]}", "positive" if lab else "negative"])
    return path


@pytest.mark.slow
def test_minilm_subspace_finetune_expands_to_a_loadable_checkpoint(capsys, tmp_path, minilm_dir):
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from modelsurgeon.ops.intrinsic.tasks import load_task

    data = _reviews_csv(tmp_path / "reviews.csv")
    sub = tmp_path / "minilm.safetensors"
    out = run_json(
        capsys,
        "intrinsic-dim",
        str(minilm_dir),
        "--task",
        f"csv:{data}",
        "--exclude",
        "word_embeddings",
        "--projection",
        "sparse",
        "--grid",
        "8",
        "--epochs",
        "2",
        "--batch-size",
        "16",
        "--lr",
        "0.5",
        "--baseline",
        "0.3",
        "--threshold",
        "1",
        "--save-subspace",
        str(sub),
        "-q",
    )
    with safe_open(str(minilm_dir / "model.safetensors"), "pt") as f:
        base = {k: f.get_tensor(k) for k in f.keys()}
    floats = sum(t.numel() for t in base.values() if t.is_floating_point())
    D = floats - base["embeddings.word_embeddings.weight"].numel() + 384 * 2 + 2  # + the new 2-class head
    assert out["D"] == D == 10_993_538
    assert out["frozen_params"] == 11_720_448
    assert out["projection"]["kind"] == "sparse" and out["projection"]["nonzeros_per_column"] == round(math.sqrt(D))
    assert out["d_int"] == 8 and out["subspace_file"] == str(sub)
    metric = out["records"][0]["metric"]

    code, o, e = run(capsys, "expand-subspace", str(sub), "-o", str(tmp_path / "ft"), "--json")
    assert code == 0, e
    summary = json.loads(o)
    assert summary["bit_exact"] and summary["d"] == 8 and summary["D"] == D

    model = AutoModelForSequenceClassification.from_pretrained(str(tmp_path / "ft"), local_files_only=True).eval()
    assert model.config.id2label == {0: "negative", 1: "positive"}
    tok = AutoTokenizer.from_pretrained(str(tmp_path / "ft"), local_files_only=True)
    ft = load_file(str(tmp_path / "ft" / "model.safetensors"))
    assert torch.equal(ft["bert.embeddings.word_embeddings.weight"], base["embeddings.word_embeddings.weight"])  # frozen
    q = "bert.encoder.layer.0.attention.self.query.weight"
    moved = (ft[q] - base[q[len("bert.") :]]).abs()
    assert 0 < float(moved.max()) < 0.5  # theta_0 + P theta_d: the checkpoint, nudged
    task = load_task(f"csv:{data}")
    (_, _), (texts, labels) = task.texts
    enc = tok(texts, padding=True, truncation=True, max_length=128, return_tensors="pt")
    with torch.no_grad():
        pred = model(**enc).logits.argmax(-1)
    assert float((pred == labels).float().mean()) == pytest.approx(metric)


# --------------------------------------------------------------------------------------------
# bad input: one line, an exit code


@pytest.mark.parametrize("value", ["0", "1.5", "-0.2", "nan"])
def test_threshold_outside_unit_interval(capsys, value):
    code, out, err = run(capsys, "intrinsic-dim", "--task", "toy", "--threshold", value)
    assert_one_line_error(code, out, err, 2, "--threshold", "outside (0, 1]")


def test_d_larger_than_D(capsys):
    code, out, err = run(capsys, "intrinsic-dim", "--task", "toy", "--grid", "10,5000")
    assert_one_line_error(code, out, err, 2, "--grid 5000 is larger than D = 1,000")


def test_unknown_task(capsys):
    code, out, err = run(capsys, "intrinsic-dim", "--task", "mnist")
    assert_one_line_error(code, out, err, 2, "unknown task 'mnist'", "npz:PATH")


@pytest.mark.parametrize(
    "spec,needle",
    [
        ("npz:{tmp}/missing.npz", "no such file"),
        ("npz:{tmp}/garbage.npz", "is not a .npz file"),
        ("npz:{tmp}/nox.npz", "needs arrays X and y"),
        ("csv:{tmp}/ragged.csv", "row 3 has 1 fields"),
        ("nosuchmodule_xyz:make", "cannot import nosuchmodule_xyz"),
        ("{tmp}/broken.py:make", "make() raised ZeroDivisionError"),
    ],
)
def test_task_that_does_not_load(capsys, tmp_path, spec, needle):
    (tmp_path / "garbage.npz").write_bytes(b"not a zip at all")
    np.savez(tmp_path / "nox.npz", a=np.zeros(3))
    (tmp_path / "ragged.csv").write_text("a,b,label\n1,2,0\n3\n")
    (tmp_path / "broken.py").write_text("def make():\n    return 1 / 0\n")
    spec = spec.format(tmp=tmp_path)
    code, out, err = run(capsys, "intrinsic-dim", "--task", spec)
    assert_one_line_error(code, out, err, 1, f"task {spec}", needle)


def test_model_whose_tensors_do_not_match_its_config(capsys, tiny_llama, tmp_path):
    cfg = json.loads((tiny_llama / "config.json").read_text())
    cfg["intermediate_size"] = 96  # the weights were saved with 128
    (tiny_llama / "config.json").write_text(json.dumps(cfg))
    (tmp_path / "t.txt").write_text("hello world " * 50)
    code, out, err = run(capsys, "intrinsic-dim", str(tiny_llama), "--task", f"text:{tmp_path / 't.txt'}")
    assert_one_line_error(
        code, out, err, 1, "tensors do not match its config.json", "mlp.down_proj.weight is [64, 128] in the weights but [64, 96]"
    )


def test_checkpoint_without_config(capsys, tmp_path):
    (tmp_path / "ck").mkdir()
    save_file({"w": torch.zeros(2, 2)}, str(tmp_path / "ck" / "model.safetensors"))
    (tmp_path / "t.txt").write_text("hello")
    code, out, err = run(capsys, "intrinsic-dim", str(tmp_path / "ck"), "--task", f"text:{tmp_path / 't.txt'}")
    assert_one_line_error(code, out, err, 1, "has no config.json")


@pytest.mark.parametrize(
    "args,code_,needle",
    [
        (["minilm", "--task", "digits", "--arch", "lenet"], 2, "--arch describe a built-in network"),
        (["--task", "digits", "--grid", "10", "--d-start", "8"], 2, "--grid replaces the search"),
        (["--task", "toy", "--said", "--grid", "1"], 2, "--said spends 1 of d"),
        (["--task", "toy", "--projection", "gaussian"], 2, "--projection 'gaussian' is not one of"),
        (["--task", "toy", "--baseline", "high"], 2, "--baseline 'high' is neither auto nor a number"),
        (["--task", "digits", "--grid", "10,x"], 2, "not a comma-separated list"),
        (["--task", "digits", "--device", "cuda:7"], 2, "--device"),
    ],
)
def test_bad_flags(capsys, args, code_, needle):
    if "cuda:7" in args and torch.cuda.device_count() > 7:
        pytest.skip("this machine has 8 GPUs")
    code, out, err = run(capsys, "intrinsic-dim", *args)
    assert_one_line_error(code, out, err, code_, needle)


def test_feature_task_with_a_transformers_model(capsys, minilm_dir):
    code, out, err = run(capsys, "intrinsic-dim", str(minilm_dir), "--task", "digits")
    assert_one_line_error(code, out, err, 1, "gives feature vectors", "text column")


def test_save_subspace_refuses_to_overwrite(capsys, tmp_path):
    (tmp_path / "s.safetensors").write_bytes(b"x")
    code, out, err = run(capsys, "intrinsic-dim", "--task", "toy", "--save-subspace", str(tmp_path / "s.safetensors"))
    assert_one_line_error(code, out, err, 1, "already exists", "--force")


@pytest.mark.parametrize(
    "args,needle",
    [
        (["--task", "digits", "--projection", "gaussian"], "--projection 'gaussian' is not one of"),
        (["--task", "csv:r.csv", "--optimizer", "rmsprop"], "--optimizer 'rmsprop' is not one of"),
        (["--task", "mnist"], "unknown task 'mnist'"),
        (["--task", "digits", "--include", "("], "--include '(' is not a valid regular expression"),
        (["--task", "digits", "--arch", "lenet"], "--arch describe a built-in network"),
        (["--task", "digits", "--grid", "8", "--rel-tol", "0.1"], "--grid replaces the search"),
    ],
)
def test_bad_settings_fail_before_the_hub_model_is_looked_up(capsys, tmp_path, monkeypatch, args, needle):
    import huggingface_hub.constants as c

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(c, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(c, "HF_HUB_CACHE", str(tmp_path))
    code, out, err = run(capsys, "intrinsic-dim", "org/not-cached", *args)
    assert_one_line_error(code, out, err, 2, needle)
    # the same command with good settings gets as far as the model, which is not cached
    code, out, err = run(capsys, "intrinsic-dim", "org/not-cached", "--task", "digits")
    assert_one_line_error(code, out, err, 1, "org/not-cached")


def test_settings_that_clash_are_reported_together(capsys, tmp_path):
    code, out, err = run(capsys, "intrinsic-dim", str(tmp_path), "--task", "toy", "--width", "8", "--grid", "4", "--d-max", "7")
    assert code == 2 and out == "" and "Traceback" not in err
    assert "3 problems with the settings" in err
    for needle in ("--width describe a built-in network", "--task toy has its own D = 1000 model", "--grid replaces the search"):
        assert needle in err
