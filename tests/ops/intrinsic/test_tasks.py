"""Each task spec loads into the class for its data, and each class answers the protocol the training loop
and the plan use (batches, loss, metric, evaluation batch size, which model reads it)."""

from __future__ import annotations

import textwrap

import numpy as np
import pytest
import torch

from modelsurgeon.ops.core.errors import SurgeonError
from modelsurgeon.ops.intrinsic.tasks import TASKS, load_task, task_kind
from modelsurgeon.ops.intrinsic.tasks.csv_file import TextClassificationTask
from modelsurgeon.ops.intrinsic.tasks.labelled import FeatureTask, TokenTask
from modelsurgeon.ops.intrinsic.tasks.module import ModuleTask
from modelsurgeon.ops.intrinsic.tasks.text import LanguageModelTask
from modelsurgeon.ops.intrinsic.tasks.toy import ToyTask


@pytest.fixture
def files(tmp_path):
    g = np.random.default_rng(0)
    X = g.normal(size=(50, 4)).astype(np.float32)
    np.savez(tmp_path / "f.npz", X=X, y=(X[:, 0] > 0).astype(np.int64))
    np.savez(tmp_path / "r.npz", X=X, y=X[:, 0] * 2)
    np.savez(tmp_path / "t.npz", X=g.integers(0, 30, (20, 6)), y=g.integers(0, 2, 20))
    (tmp_path / "t.csv").write_text("text,label\n" + "".join(f"row {i},{'ab'[i % 2]}\n" for i in range(12)))
    (tmp_path / "n.csv").write_text("a,b,label\n" + "".join(f"{i},{i * 2},{i % 2}\n" for i in range(12)))
    (tmp_path / "notes.txt").write_text("some words " * 20)
    (tmp_path / "mytask.py").write_text(
        textwrap.dedent("""
        import torch
        def make():
            X = torch.randn(30, 3, generator=torch.Generator().manual_seed(0))
            return {"model": torch.nn.Linear(3, 2), "train": (X, (X[:, 0] > 0).long())}
        """)
    )
    return tmp_path


@pytest.mark.parametrize(
    "spec,cls,problem,metric",
    [
        ("toy", ToyTask, "toy", "solved"),
        ("digits", FeatureTask, "classification", "accuracy"),
        ("npz:{tmp}/f.npz", FeatureTask, "classification", "accuracy"),
        ("npz:{tmp}/r.npz", FeatureTask, "regression", "r2"),
        ("npz:{tmp}/t.npz", TokenTask, "classification", "accuracy"),
        ("csv:{tmp}/n.csv", FeatureTask, "classification", "accuracy"),
        ("csv:{tmp}/t.csv", TextClassificationTask, "classification", "accuracy"),
        ("text:{tmp}/notes.txt", LanguageModelTask, "lm", "token_prob"),
        ("{tmp}/mytask.py:make", ModuleTask, "classification", "accuracy"),
    ],
)
def test_each_spec_loads_into_its_class(files, spec, cls, problem, metric):
    task = load_task(spec.format(tmp=files))
    assert type(task) is cls
    assert task.problem == problem and task.metric_name == metric
    assert task.needs_tokenizer == (cls in (TextClassificationTask, LanguageModelTask))
    assert not hasattr(task, "kind")  # behaviour lives in the class, not in a type code


def test_registry_knows_every_form_and_which_refuses_a_model():
    assert set(TASKS) == {"toy", "digits", "npz", "csv", "text", "module"}
    assert task_kind("toy").refuses_model and task_kind("pkg.mod:make").name == "module"
    assert task_kind("npz:x.npz").refuses_model is None


def test_features_evaluate_in_large_batches_and_weigh_batches_by_share(files):
    task = load_task(f"npz:{files}/f.npz")
    assert task.eval_batch_size(16) == 256 and load_task(f"npz:{files}/t.npz").eval_batch_size(16) == 16
    b = next(task.batches("train", 10))
    assert b.args[0].shape == (10, 4) and task.batch_weight(b) == 10 / task.n_train
    toy = load_task("toy")
    assert toy.batch_weight(next(toy.batches("train", 1))) == 1.0
    assert toy.describe()["n_train"] is None and task.describe()["n_train"] == 40


def test_transformers_class_follows_the_data(files):
    assert load_task(f"text:{files}/notes.txt").transformers_class() == ("AutoModelForCausalLM", {})
    name, kw = load_task(f"csv:{files}/t.csv").transformers_class()
    assert name == "AutoModelForSequenceClassification" and kw["id2label"] == {0: "a", 1: "b"}
    assert load_task(f"npz:{files}/t.npz").transformers_class()[1] == {"num_labels": 2}
    with pytest.raises(SurgeonError, match="gives feature vectors"):
        load_task("digits").transformers_class()
    with pytest.raises(SurgeonError, match="holds token ids, which a built-in --arch cannot read"):
        load_task(f"npz:{files}/t.npz").builtin_model(None)
    with pytest.raises(SurgeonError, match="holds text"):
        load_task(f"csv:{files}/t.csv").builtin_model(None)


def test_regression_metric_is_r2_on_the_eval_split(files):
    task = load_task(f"npz:{files}/r.npz")
    y = task.test["y"]
    metric, loss = task.evaluate(lambda b: b.args[0][:, :1] * 2, 256)  # the exact answer
    assert metric == pytest.approx(1.0) and loss == pytest.approx(0.0, abs=1e-10)
    metric, _ = task.evaluate(lambda b: torch.full((b.target.shape[0], 1), float(y.mean())), 256)
    assert metric == pytest.approx(0.0, abs=1e-6)
