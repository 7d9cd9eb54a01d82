"""`surgeon run RECIPE -o OUT`: the steps equal their commands run one after another, byte for byte; two runs
write the same bytes into any two folders; the shipped recipes run and their outputs load in the real
consumers; every problem of a recipe is reported, with its line and column, before any work."""

from __future__ import annotations

import contextlib
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from builders import add_byte_level_tokenizer, make_tiny_llama
from helpers import run

import modelsurgeon.recipes as R
from modelsurgeon.ops.core.errors import PlanError, UsageError
from modelsurgeon.recipes.run import RunConfig

SHIPPED = Path(R.__file__).parent
VOCAB = 300
TEXT = "the quick brown fox jumps over the lazy dog"
MERGE = (
    "merge_method: ties\nbase_model: base\nmodels:\n"
    "  - model: a\n    parameters: {weight: 0.6, density: 0.5}\n"
    "  - model: b\n    parameters: {weight: 0.4, density: 0.5}\n"
    "dtype: float32\n"
)


def _perturb(folder: Path, seed: int) -> None:
    from safetensors.torch import load_file, save_file

    path = folder / "model.safetensors"
    sd = load_file(str(path))
    g = torch.Generator().manual_seed(seed)
    for k, v in sd.items():
        if v.is_floating_point() and v.dim() == 2:
            sd[k] = v + 0.01 * torch.randn(v.shape, generator=g, dtype=v.dtype)
    save_file(sd, str(path), metadata={"format": "pt"})


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    """base/, a/ and b/ (two fine-tunes of base) in one folder, tiny Llamas with a tokenizer."""
    root = tmp_path_factory.mktemp("run")
    for name, seed in (("base", 0), ("a", 1), ("b", 2)):
        f = make_tiny_llama(root / name, seed=0, hidden_size=128, intermediate_size=256, vocab_size=VOCAB)
        add_byte_level_tokenizer(f, VOCAB, TEXT)
        if name != "base":
            _perturb(f, seed)
    return root


@pytest.fixture
def here(models, tmp_path, monkeypatch):
    """A scratch folder holding the models, as the working directory (recipes name them relatively)."""
    for name in ("base", "a", "b"):
        shutil.copytree(models / name, tmp_path / name)
    monkeypatch.chdir(tmp_path)
    return tmp_path


def _ok(capsys, *args):
    code, out, err = run(capsys, *map(str, args), "-q")
    assert code == 0, err
    return out


def _tensors(folder: Path) -> tuple[dict, dict, dict]:
    """(tensor name -> raw bytes, the header without its metadata, the metadata) of a one-file checkpoint."""
    path = folder / "model.safetensors"
    raw = path.read_bytes()
    n = int.from_bytes(raw[:8], "little")
    header = json.loads(raw[8 : 8 + n])
    meta = header.pop("__metadata__")
    data = raw[8 + n :]
    return {k: data[v["data_offsets"][0] : v["data_offsets"][1]] for k, v in header.items()}, header, meta


def _leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.startswith("."))


# --------------------------------------------------------------------------------------------
# the checks of the issue


def test_merge_prune_quantize_equals_the_three_commands(capsys, here):
    (here / "merge.yaml").write_text(MERGE)
    _ok(capsys, "merge", "merge.yaml", "-o", "m1")
    _ok(capsys, "prune", "m1", "-o", "m2", "--pattern", "2:4")
    _ok(capsys, "quantize", "m2", "-o", "by-hand", "--scheme", "w4a16")
    steps = "\n".join("      " + line for line in MERGE.splitlines())
    (here / "run.yaml").write_text(
        f"version: 1\nsteps:\n  - merge:\n{steps}\n  - prune: {{pattern: '2:4'}}\n  - quantize: {{scheme: w4a16}}\n"
    )
    with _reads() as reads:
        r = json.loads(_ok(capsys, "run", "run.yaml", "-o", "by-run", "--json"))
    assert r["pass_steps"] == [[1, 2, 3]]  # one streaming pass
    _each_input_byte_once(reads, [here / m for m in ("base", "a", "b")])
    t_hand, h_hand, m_hand = _tensors(here / "by-hand")
    t_run, h_run, m_run = _tensors(here / "by-run")
    assert h_run == h_hand  # the same tensors, dtypes, shapes and offsets
    assert t_run == t_hand  # byte for byte
    # the metadata differs only in the command (the run's names no path) and the run's own recipe
    assert m_run.pop("modelsurgeon_command") == "surgeon run (step 3 of 3: quantize)"
    m_hand.pop("modelsurgeon_command")  # the command line as typed
    assert json.loads(m_run.pop("modelsurgeon_run")) == RunConfig.read("run.yaml").to_dict()
    assert m_run == m_hand
    assert json.loads((here / "by-run/config.json").read_text()) == json.loads((here / "by-hand/config.json").read_text())
    assert _leftovers(here) == []  # the work folder is gone


@contextlib.contextmanager
def _reads():
    """Every read of tensor data through the lazy reader (``Checkpoint._read``): (file, offset, bytes)."""
    from modelsurgeon.ops.io.checkpoint import Checkpoint

    seen: list[tuple[Path, int, int]] = []
    real = Checkpoint._read

    def counted(self, path, offset, count):
        seen.append((Path(path).resolve(), offset, count))
        return real(self, path, offset, count)

    Checkpoint._read = counted
    try:
        yield seen
    finally:
        Checkpoint._read = real


def _each_input_byte_once(reads: list, inputs: list[Path]) -> None:
    """Every byte of every input's tensor data read exactly once, and nothing else read (no intermediate)."""
    from modelsurgeon.ops.io.checkpoint import open_checkpoint

    by_file: dict[Path, list[tuple[int, int]]] = {}
    for path, offset, count in reads:
        by_file.setdefault(path, []).append((offset, offset + count))
    expected = {}
    for folder in inputs:
        with open_checkpoint(folder) as ck:
            for info in ck.infos():
                expected.setdefault(info.file.resolve(), []).append((info.start, info.end))
    assert set(by_file) == set(expected), sorted(map(str, set(by_file) ^ set(expected)))
    for path, spans in by_file.items():
        spans.sort()
        assert all(a[1] <= b[0] for a, b in zip(spans, spans[1:])), f"{path}: a byte read twice"
        want = sorted(expected[path])
        assert sum(e - b for b, e in spans) == sum(e - b for b, e in want) == want[-1][1] - want[0][0], path


def test_unfused_runs_read_their_intermediates(capsys, here):
    """The counting above can fail: with --keep-intermediate every step writes its output and the next reads it."""
    steps = "\n".join("      " + line for line in MERGE.splitlines())
    (here / "run.yaml").write_text(
        f"version: 1\nsteps:\n  - merge:\n{steps}\n  - prune: {{pattern: '2:4'}}\n  - quantize: {{scheme: w4a16}}\n"
    )
    with _reads() as reads:
        r = json.loads(_ok(capsys, "run", "run.yaml", "-o", "out", "--keep-intermediate", "--json"))
    assert r["pass_steps"] == [[1], [2], [3]]
    with pytest.raises(AssertionError):
        _each_input_byte_once(reads, [here / m for m in ("base", "a", "b")])
    assert any(".run-" in str(p) for p, _, _ in reads)  # the intermediates, read back from the work folder


FUSED = {
    # global magnitude: its statistics passes read the input; its pruned tensors stream into quantize
    "global-w8a16": ("  - prune: {sparsity: 0.5, scope: global}\n  - quantize: {scheme: w8a16}\n", [[1, 2]], "out"),
    "overrides": (
        "  - prune: {sparsity: 0.3, overrides: [{match: 'mlp', sparsity: 0.6}]}\n"
        "  - quantize: {scheme: w4a16, overrides: [{match: 'down_proj', scheme: w8a16}]}\n",
        [[1, 2]],
        "out",
    ),
    "2of4-gguf": (
        "  - prune: {pattern: '2:4'}\n  - quantize: {scheme: q4_0, format: gguf, pre_tokenizer: gpt-2}\n",
        [[1, 2]],
        "out.gguf",
    ),
    # --target-bpw measures every target before it chooses: a pass of its own, through a temporary folder
    "target-bpw": ("  - prune: {pattern: '2:4'}\n  - quantize: {scheme: w4a16, target_bpw: 6}\n", [[1], [2]], "out"),
}


@pytest.mark.slow
@pytest.mark.parametrize("case", sorted(FUSED))
def test_fused_passes_equal_the_steps_written_one_by_one(capsys, here, case):
    """Each recipe run fused against the same recipe with every step written (--keep-intermediate runs the
    steps one pass each, as the three commands above): the same bytes."""
    body, passes, out = FUSED[case]
    (here / "r.yaml").write_text("model: base\nsteps:\n" + body)
    r = json.loads(_ok(capsys, "run", "r.yaml", "-o", out, "--json"))
    assert r["pass_steps"] == passes, r["passes"]
    if len(passes) > 1:
        assert "a pass of its own: --target-bpw measures every target" in r["passes"][1]
    ref = "ref" + Path(out).suffix
    r2 = json.loads(_ok(capsys, "run", "r.yaml", "-o", ref, "--json", "--keep-intermediate"))
    assert r2["pass_steps"] == [[1], [2]]
    if out.endswith(".gguf"):
        assert (here / out).read_bytes() == (here / ref).read_bytes()
    else:
        got, want = _tensors(here / out), _tensors(here / ref)
        assert got[0] == want[0] and got[1] == want[1]
    assert r["steps"][0]["tensors"] == r2["steps"][0]["tensors"]  # prune's own result, row by row


@pytest.mark.slow
def test_a_calibrated_step_runs_as_its_command_in_a_pass_of_its_own(capsys, here):
    wanda = ("--method", "wanda", "--sparsity", "0.5", "--calib-samples", "4", "--calib-seqlen", "32")
    _ok(capsys, "prune", "base", "-o", "by-hand", *wanda)
    (here / "r.yaml").write_text(
        "model: base\nsteps:\n  - prune: {method: wanda, sparsity: 0.5, calib: {samples: 4, seqlen: 32}}\n"
        "  - quantize: {scheme: w8a16}\n"
    )
    r = json.loads(_ok(capsys, "run", "r.yaml", "-o", "out", "--json", "--keep-intermediate"))
    assert r["pass_steps"] == [[1], [2]] and r["steps"][0]["calibration"]["method"] == "wanda"
    assert _tensors(here / "out.steps/01-prune")[0] == _tensors(here / "by-hand")[0]
    r = json.loads(_ok(capsys, "run", "r.yaml", "-o", "fused", "--json", "--dry-run"))
    assert r["pass_steps"] == [[1], [2]]  # wanda runs the model layer by layer: its output is written


def test_two_runs_and_the_recorded_recipe_give_the_same_bytes(capsys, here):
    shutil.copy(SHIPPED / "run_2of4_w4a16_vllm.yaml", here / "r.yaml")
    _ok(capsys, "run", "r.yaml", "--model", "base", "-o", "one")
    _ok(capsys, "run", "r.yaml", "--model", "base", "-o", "sub/two")
    _ok(capsys, "run", "one/surgeon_run.yaml", "-o", "three")  # the recipe the output records, model included
    for other in ("sub/two", "three"):
        for f in (here / "one").glob("*.safetensors"):
            assert f.read_bytes() == (here / other / f.name).read_bytes(), (other, f.name)
    recorded = RunConfig.read(here / "one/surgeon_run.yaml")
    assert recorded.model == "base" and [s.kind for s in recorded.steps] == ["prune", "quantize", "report"]
    rep = json.loads(_ok(capsys, "report", "one", "--json"))
    assert rep["provenance"]["run"] == recorded.to_dict()
    assert rep["provenance"]["command"] == "surgeon run (step 2 of 3: quantize)"
    code, table, err = run(capsys, "report", "one", "-q")
    assert code == 0 and "run recipe (version 1): prune, quantize, report" in table


def test_keep_intermediate_and_a_failed_gate(capsys, here):
    (here / "r.yaml").write_text(
        "model: base\nsteps:\n  - prune: {sparsity: 0.5}\n  - report: {require: ['sparsity>=0.9']}\n  - quantize: {scheme: w8a16}\n"
    )
    code, out, err = run(capsys, "run", "r.yaml", "-o", "out", "-q")
    assert code == 1 and "step 2 of 3 (report): requirement failed: sparsity>=0.9" in err
    assert not (here / "out").exists() and _leftovers(here) == []
    code, out, err = run(capsys, "run", "r.yaml", "-o", "out", "-q", "--keep-intermediate")
    assert code == 1 and not (here / "out").exists()
    assert sorted(p.name for p in (here / "out.steps").iterdir()) == ["01-prune"]  # kept to look at
    (here / "r.yaml").write_text("model: base\nsteps:\n  - prune: {sparsity: 0.5}\n  - quantize: {scheme: w8a16}\n")
    r = json.loads(_ok(capsys, "run", "r.yaml", "-o", "out2", "--keep-intermediate", "--json"))
    assert r["intermediate"] == "out2.steps" and (here / "out2.steps/01-prune/model.safetensors").exists()
    assert [s["output"] for s in r["steps"]] == ["out2.steps/01-prune", "out2"]
    assert r["steps"][0]["target_sparsity"] == pytest.approx(0.5)


def test_dry_run_writes_nothing(capsys, here):
    shutil.copy(SHIPPED / "run_2of4_w4a16_vllm.yaml", here / "r.yaml")
    r = json.loads(_ok(capsys, "run", "r.yaml", "--model", "base", "-o", "out", "--dry-run", "--json"))
    assert r["dry_run"] is True and not (here / "out").exists() and _leftovers(here) == []
    assert [s["kind"] for s in r["steps"]] == ["prune", "quantize", "report"]
    assert r["steps"][1] == {"step": 2, "kind": "quantize", "targets": 14, "format": "compressed-tensors", "schemes": ["w4a16"]}
    assert r["pass_steps"] == [[1, 2], [3]]  # prune 2:4 and w4a16 fused into one pass; the report reads its output
    assert r["passes"] == [
        "pass 1 of 2 (steps 1-2): prune -> quantize: one streaming pass, each tensor read once from the model "
        "and written once into out",
        "pass 2 of 2 (step 3): report: reads the model so far; requires nm_2_4_fraction==1",
    ]


# --------------------------------------------------------------------------------------------
# the shipped recipes, loaded by their consumers


def test_shipped_2of4_w4a16_loads_in_transformers(capsys, here):
    from transformers import AutoModelForCausalLM

    _ok(capsys, "run", SHIPPED / "run_2of4_w4a16_vllm.yaml", "--model", "base", "-o", "out")
    qc = json.loads((here / "out/config.json").read_text())["quantization_config"]
    assert qc["config_groups"]["group_0"]["weights"]["num_bits"] == 4
    # the 2:4 structure is recorded as llm-compressor records it (stored dense, inside the int4 codes)
    sc = qc["sparsity_config"]
    assert sc["format"] == "dense" and sc["sparsity_structure"] == "2:4" and len(sc["targets"]) == 14
    assert 0.3 < sc["global_sparsity"] < 0.5  # half of the linears' weights, of all the model's
    from compressed_tensors.config import SparsityCompressionConfig

    assert SparsityCompressionConfig.load_from_registry("dense", **sc).sparsity_structure == "2:4"
    _ok(capsys, "quantize", "base", "-o", "dense", "--scheme", "w4a16")  # a dense input: no sparsity_config
    assert json.loads((here / "dense/config.json").read_text())["quantization_config"]["sparsity_config"] == {}
    model = AutoModelForCausalLM.from_pretrained(here / "out")
    ids = torch.randint(0, VOCAB, (1, 12), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert torch.isfinite(model(ids).logits).all()
    w = model.model.layers[0].mlp.up_proj.weight  # decompressed by the first forward
    assert int((w.reshape(-1, 4) != 0).sum(-1).max()) <= 2  # 2:4 survived quantization


def test_shipped_gguf_recipe_loads_in_llama_cpp(capsys, here):
    gguf = pytest.importorskip("gguf")
    # the tiny tokenizer's check-text hash is not one llama.cpp lists: the recipe names its pre-tokenizer
    recipe = here / "run_gguf_llama_cpp.yaml"
    shipped = (SHIPPED / "run_gguf_llama_cpp.yaml").read_text()
    recipe.write_text(shipped.replace("      format: gguf\n", "      format: gguf\n      pre_tokenizer: gpt-2\n"))
    _ok(capsys, "run", recipe, "--model", "base", "-o", "m.gguf")
    reader = gguf.GGUFReader(str(here / "m.gguf"))
    types = {t.name: t.tensor_type.name for t in reader.tensors}
    assert types["blk.0.ffn_down.weight"] == "Q8_0" and types["blk.0.ffn_up.weight"] == "Q4_0"
    run_json = reader.fields["modelsurgeon.run"].contents()
    assert json.loads(run_json) == RunConfig.read(recipe, "base").to_dict()
    rep = json.loads(_ok(capsys, "report", "m.gguf", "--json"))
    assert rep["provenance"]["command"] == "surgeon run (step 2 of 2: quantize)"
    llama_cpp = pytest.importorskip("llama_cpp", reason="llama-cpp-python is not installed")
    llm = llama_cpp.Llama(model_path=str(here / "m.gguf"), n_ctx=64, n_threads=1, logits_all=True, verbose=False)
    ids = llm.tokenize(TEXT.encode(), add_bos=False)
    llm.eval(ids)
    assert np.isfinite(np.asarray(llm.scores[: len(ids)])).all()


def test_shipped_ties_merge_8bit(capsys, here, monkeypatch):
    from transformers import AutoModelForCausalLM

    for src, dst in (("base", "org/base"), ("a", "org/a"), ("b", "org/b")):  # the recipe's placeholder names
        (here / dst).parent.mkdir(exist_ok=True)
        shutil.copytree(here / src, here / dst)
    r = json.loads(_ok(capsys, "run", SHIPPED / "run_ties_merge_8bit.yaml", "-o", "out", "--json"))
    assert [s["kind"] for s in r["steps"]] == ["merge", "quantize"] and r["steps"][1]["scheme"] == "w8a16"
    model = AutoModelForCausalLM.from_pretrained(here / "out")
    assert model.model.layers[0].mlp.up_proj.quantization_scheme.weights.num_bits == 8


# --------------------------------------------------------------------------------------------
# bad input: every problem at once, with line and column, nothing written


def test_unknown_step_and_keys_name_the_closest_with_line_and_column(tmp_path):
    r = tmp_path / "r.yaml"
    r.write_text("version: 1\nmodle: x\nsteps:\n  - prun: {sparsity: 0.5}\n  - quantize: {schem: w4a16}\n  - report: {}\n")
    with pytest.raises(PlanError) as e:
        RunConfig.read(r)
    msg = str(e.value)
    assert f"{r} line 2, column 1: unknown key 'modle' (did you mean model?)" in msg
    assert f"{r} line 4, column 5: step 1: unknown step 'prun' (did you mean prune?)" in msg
    assert f"{r} line 5, column 16: step 2 (quantize): unknown key 'schem' (did you mean scheme?)" in msg


def test_bad_values_and_an_impossible_order_are_all_reported(tmp_path):
    r = tmp_path / "r.yaml"
    r.write_text(
        "model: x\nsteps:\n"
        "  - quantize: {scheme: q4_0}\n"  # GGUF
        "  - prune: {sparsity: 1.5}\n"  # a bad value, and after a GGUF step
        "  - merge: {merge_method: linear, models: [{model: a, parameters: {weight: 1}}]}\n"
    )
    with pytest.raises(PlanError) as e:
        RunConfig.read(r)
    msg = str(e.value)
    assert "line 4, column 5: step 2 (prune): --sparsity must be a number in [0, 1)" in msg
    r.write_text(
        "model: x\nsteps:\n  - quantize: {scheme: q4_0}\n  - prune: {sparsity: 0.5}\n"
        "  - merge: {merge_method: linear, models: [{model: a, parameters: {weight: 1}}]}\n"
    )
    with pytest.raises(PlanError) as e:
        RunConfig.read(r)
    msg = str(e.value)
    assert "line 4, column 5: step 2 (prune) follows a GGUF step" in msg
    assert "line 5, column 5: step 3 (merge) must be the first step" in msg
    r.write_text("steps:\n  - prune: {sparsity: 0.5}\n")
    with pytest.raises(PlanError, match="has no input: give model:"):
        RunConfig.read(r)
    r.write_text("version: 2\nsteps: []\n")
    with pytest.raises(UsageError, match="newer than this modelsurgeon understands"):
        RunConfig.read(r)


def test_merge_step_errors_keep_the_files_lines(tmp_path):
    r = tmp_path / "r.yaml"
    r.write_text("steps:\n  - merge:\n      merge_method: ties\n      modles: [a]\n  - prune: {sparsity: 0.5}\n")
    with pytest.raises(PlanError) as e:
        RunConfig.read(r)
    assert "line 4, column 7" in str(e.value) and "modles" in str(e.value)


def test_cli_errors_are_reported_before_any_work(capsys, here):
    (here / "bad.yaml").write_text("steps:\n  - prune: {sparsity: [0.5\n")
    code, out, err = run(capsys, "run", "bad.yaml", "-o", "out")
    assert code == 1 and "not valid YAML at line 3, column 1" in err, err
    (here / "r.yaml").write_text(
        "model: base\nsteps:\n  - prune: {sparsity: 0.5}\n  - quantize: {scheme: w4a16, group_size: 96}\n"
    )
    code, out, err = run(capsys, "run", "r.yaml", "-o", "base")  # the output is the input, and a group that cannot fit
    assert code == 1 and "would overwrite the input base" in err and "step 2 of 2 (quantize)" in err
    assert "not a multiple of the group size 96" in err and "already exists" in err
    code, out, err = run(capsys, "run", "r.yaml", "--model", "missing", "-o", "out")
    assert code == 1 and "missing" in err
    assert not (here / "out").exists() and _leftovers(here) == []
    code, out, err = run(capsys, "run", "r.yaml", "-o", "out.gguf")
    assert code == 1 and "does not write GGUF" in err
