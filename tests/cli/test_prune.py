"""`surgeon prune` through the real entry point: exact sparsity (checked with `surgeon report`), N:M,
loading in transformers, tied weights, recipes, dry runs and every bad input from the issue."""

from __future__ import annotations

import json

import pytest
import torch
from builders import make_tiny_llama, write_checkpoint
from helpers import assert_one_line_error, run, run_json
from safetensors.torch import load_file

# the default targets of MiniLM: the 36 encoder linear weights and the pooler
MINILM_TARGETS = (
    r"encoder\.layer\.\d+\.(attention\.self\.(query|key|value)|attention\.output\.dense|intermediate\.dense|output\.dense)\.weight$"
    r"|pooler\.dense\.weight$"
)
MINILM_OTHERS = r"embeddings|LayerNorm|bias"


def prune_json(capsys, *args) -> dict:
    code, out, err = run(capsys, "prune", *map(str, args), "-q", "--json")
    assert code == 0, err
    assert "Traceback" not in err
    return json.loads(out)


def report(capsys, folder, rx=MINILM_TARGETS, *extra) -> dict:
    return run_json(capsys, "report", folder, "--filter", rx, "-q", *extra)


@pytest.mark.parametrize("scope", ["layer", "row", "global"])
def test_minilm_magnitude_half_is_exactly_half(capsys, tmp_path, minilm_dir, scope):
    out = tmp_path / f"m-{scope}"
    r = prune_json(capsys, minilm_dir, "-o", out, "--sparsity", "0.5", "--scope", scope)
    assert r["num_targets"] == 37 and r["target_params"] == 10_764_288
    assert r["pruned"] == r["zeros"] == 10_764_288 // 2 and r["zeros_before"] == 0
    rep = report(capsys, out)
    assert rep["num_tensors"] == 37
    assert rep["total_params"] - rep["nonzero_params"] == 10_764_288 // 2
    assert rep["sparsity"] == 0.5
    if scope != "global":  # per tensor too
        assert all(t["sparsity"] == 0.5 for t in rep["tensors"]), [t["name"] for t in rep["tensors"] if t["sparsity"] != 0.5]
    else:
        assert len({round(t["sparsity"], 3) for t in rep["tensors"]}) > 1  # one threshold: tensors differ
        assert r["threshold"] > 0
    # everything that is not a target is byte-identical to the source
    same = run_json(capsys, "report", out, "--compare", minilm_dir, "--filter", MINILM_OTHERS, "-q")
    assert same["compare"]["changed_fraction"] == 0 and same["compare"]["missing"] == 0
    if scope == "row":
        w = load_file(out / "model.safetensors")["encoder.layer.0.intermediate.dense.weight"]
        assert ((w == 0).sum(1) == w.shape[1] // 2).all()


def test_minilm_2_4_every_group_compliant(capsys, tmp_path, minilm_dir):
    out = tmp_path / "m24"
    r = prune_json(capsys, minilm_dir, "-o", out, "--pattern", "2:4")
    assert r["nm_compliant"] is True and r["sparsity"] == 0.5
    code, stdout, err = run(
        capsys, "report", out, "--filter", MINILM_TARGETS, "-q", "--require", "nm_2_4_fraction==1", "--require", "sparsity==0.5"
    )
    assert code == 0, err
    rep = report(capsys, out)
    assert all(t["nm_2_4"] for t in rep["tensors"])


def minilm_embeddings(folder, sentences):
    from transformers import AutoModel, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(folder)
    model = AutoModel.from_pretrained(folder).eval()
    batch = tok(sentences, padding=True, return_tensors="pt")
    with torch.no_grad():
        h = model(**batch).last_hidden_state
    mask = batch["attention_mask"].unsqueeze(-1).float()
    return torch.nn.functional.normalize((h * mask).sum(1) / mask.sum(1), dim=-1)


def test_pruned_minilm_loads_in_transformers_and_embeds(capsys, tmp_path, minilm_dir):
    sentences = ["A man is playing a guitar.", "The new movie is awful.", "Sparse networks can be small and accurate."]
    dense = minilm_embeddings(minilm_dir, sentences)
    mean_cos = {}
    # measured: global 30% ~0.94, 2:4 ~0.6-0.7, random 50% ~0.05-0.3
    for tag, args, floor in (
        ("global30", ["--sparsity", "0.3", "--scope", "global"], 0.9),
        ("2:4", ["--pattern", "2:4"], 0.5),
        ("random50", ["--sparsity", "0.5", "--method", "random"], -1.0),
    ):
        out = tmp_path / tag.replace(":", "-")
        prune_json(capsys, minilm_dir, "-o", out, *args)
        emb = minilm_embeddings(out, sentences)
        assert torch.isfinite(emb).all()
        cos = (emb * dense).sum(-1)
        assert bool((cos > floor).all()), (tag, cos.tolist())
        mean_cos[tag] = float(cos.mean())
        # the sentence-transformers files came along
        assert (out / "modules.json").exists() and (out / "tokenizer.json").exists() and (out / "prune_recipe.yaml").exists()
    assert mean_cos["2:4"] > mean_cos["random50"] + 0.2, mean_cos  # magnitude keeps what matters; random does not


def test_tiny_llama_end_to_end(capsys, tmp_path):
    from transformers import AutoModelForCausalLM

    src = make_tiny_llama(tmp_path / "llama")
    out = tmp_path / "llama-pruned"
    r = prune_json(capsys, src, "-o", out, "--sparsity", "0.6", "--scope", "global", "--max-shard-size", "200KB")
    assert r["num_targets"] == 14 and r["target_params"] == 73_728
    assert r["zeros"] == round(0.6 * 73_728) == 44_237  # round(S x N), halves up
    assert (out / "model.safetensors.index.json").exists()
    rep = report(capsys, out, r"layers\.\d+\.(self_attn|mlp)\.\w+_proj\.weight$")
    assert rep["total_params"] - rep["nonzero_params"] == round(0.6 * rep["total_params"])
    model = AutoModelForCausalLM.from_pretrained(out)
    logits = model(torch.tensor([[1, 2, 3, 4, 5]])).logits
    assert torch.isfinite(logits).all()
    from safetensors import safe_open

    shards = sorted(out.glob("model-*.safetensors"))
    assert len(shards) > 1
    with safe_open(shards[0], "pt") as f:
        recipe = json.loads(f.metadata()["modelsurgeon_recipe"])
    assert recipe == {"version": 2, "sparsity": 0.6, "method": "magnitude", "scope": "global", "seed": 0}


def test_tied_weights_stay_identical(capsys, tmp_path):
    g = torch.Generator().manual_seed(0)
    emb = torch.randn(32, 16, generator=g)
    tensors = {
        "model.embed_tokens.weight": emb,
        "model.layers.0.mlp.up_proj.weight": torch.randn(24, 16, generator=g),
        "lm_head.weight": emb.clone(),
    }
    src = write_checkpoint(tmp_path / "tied", tensors, {"model_type": "llama", "tie_word_embeddings": True})
    out = tmp_path / "tied-pruned"
    r = prune_json(capsys, src, "-o", out, "--sparsity", "0.5", "--include", "lm_head|proj", "--scope", "global")
    names = {t["name"]: t for t in r["tensors"]}
    assert set(names) == {"model.embed_tokens.weight", "model.layers.0.mlp.up_proj.weight"}
    assert names["model.embed_tokens.weight"]["aliases"] == ["lm_head.weight"]
    w = load_file(out / "model.safetensors")
    assert torch.equal(w["lm_head.weight"], w["model.embed_tokens.weight"])
    assert (
        int((w["lm_head.weight"] == 0).sum()) + int((w["model.layers.0.mlp.up_proj.weight"] == 0).sum())
        == (32 * 16 + 24 * 16) // 2
    )


def test_random_is_seeded_and_reproducible(capsys, tmp_path, small_ckpt):
    outs = []
    for i, seed in enumerate((5, 5, 6)):
        out = tmp_path / f"r{i}"
        prune_json(capsys, small_ckpt, "-o", out, "--sparsity", "0.5", "--method", "random", "--seed", seed)
        outs.append(load_file(out / "model.safetensors"))
    name = "layers.0.linear.weight"
    assert torch.equal(outs[0][name], outs[1][name]) and not torch.equal(outs[0][name], outs[2][name])
    assert int((outs[0][name] == 0).sum()) == 64
    assert torch.equal(outs[0]["embed.weight"], outs[2]["embed.weight"])  # not a target


def test_recipe_overrides_dry_run_and_sidecar(capsys, tmp_path, minilm_dir):
    from pathlib import Path

    import modelsurgeon.recipes as R

    example = Path(R.__file__).parent / "prune_example.yaml"
    out = tmp_path / "never"
    r = prune_json(capsys, minilm_dir, "-o", out, "--recipe", example, "--dry-run")
    assert not out.exists() and r["dry_run"] is True
    t = {x["name"]: x for x in r["tensors"]}
    assert t["encoder.layer.0.intermediate.dense.weight"]["sparsity_target"] == 0
    assert t["encoder.layer.0.attention.self.query.weight"]["sparsity_target"] == 0  # block 0 stays dense, as it says
    assert t["encoder.layer.3.attention.self.query.weight"]["sparsity_target"] == 0.3
    assert t["encoder.layer.3.attention.self.value.weight"]["sparsity_target"] == 0.5
    assert t["encoder.layer.3.attention.self.value.weight"]["pruned"] == 384 * 384 // 2
    # the table form of the plan, and a real run whose sidecar reproduces it
    code, table, err = run(capsys, "prune", minilm_dir, "--recipe", example, "--dry-run", "--sparsity", "0.4")
    assert code == 0 and "plan:" in table and "nothing was written" in table and not err
    a = tmp_path / "a"
    prune_json(capsys, minilm_dir, "-o", a, "--recipe", example)
    b = tmp_path / "b"
    prune_json(capsys, minilm_dir, "-o", b, "--recipe", a / "prune_recipe.yaml")
    wa, wb = load_file(a / "model.safetensors"), load_file(b / "model.safetensors")
    assert all(torch.equal(wa[n], wb[n]) for n in wa)
    assert int((wa["encoder.layer.0.intermediate.dense.weight"] == 0).sum()) == 0
    assert int((wa["encoder.layer.0.attention.self.query.weight"] == 0).sum()) == 0


def test_table_output(capsys, tmp_path, small_ckpt):
    code, out, err = run(capsys, "prune", small_ckpt, "-o", tmp_path / "o", "--sparsity", "0.25", "-q")
    assert code == 0, err
    assert "layers.0.linear.weight" in out and "25.00%" in out and "sparsity" in out


def test_existing_zeros_policy(capsys, tmp_path):
    w = torch.tensor([[0.0, 3.0, 0.0, -1.0, 0.0, 2.0, 0.0, 5.0]])
    src = write_checkpoint(tmp_path / "z", {"a.weight": w})
    r = prune_json(capsys, src, "-o", tmp_path / "o1", "--sparsity", "0.25")
    assert r["zeros_before"] == 4 and r["pruned"] == 2 and r["zeros"] == 4  # more zeros than k: unchanged
    r = prune_json(capsys, src, "-o", tmp_path / "o2", "--sparsity", "0.625")
    assert r["pruned"] == r["zeros"] == 5


# ------------------------------------------------------------------------------------------
# bad input: one line, the exit code, and nothing written


def no_output(tmp_path, keep=()):
    left = sorted(p.name for p in tmp_path.iterdir() if p.name not in keep)
    assert left == [], left


@pytest.mark.parametrize(
    "args,code,needle",
    [
        (["--sparsity", "1.0"], 2, "[0, 1)"),
        (["--sparsity", "-0.1"], 2, "[0, 1)"),
        (["--sparsity", "nan"], 2, "[0, 1)"),
        (["--pattern", "4:4"], 2, "0 < N < M"),
        (["--pattern", "2-4"], 2, "N:M"),
        (["--pattern", "2:4", "--scope", "row"], 2, "mutually exclusive"),
        (["--pattern", "2:4", "--sparsity", "0.3"], 2, "contradicts"),
        (["--sparsity", "0.5", "--scope", "diagonal"], 2, "--scope"),
        (["--sparsity", "0.5", "--method", "wanda-typo"], 2, "known pruning methods: magnitude, random"),
        (["--sparsity", "0.5", "--include", "no-such-tensor"], 1, "matches no"),
        (["--sparsity", "0.5", "--exclude", "("], 2, "regular expression"),
        ([], 2, "no sparsity"),
    ],
)
def test_bad_input(capsys, tmp_path, small_ckpt, args, code, needle):
    out = tmp_path / "out"
    c, stdout, err = run(capsys, "prune", small_ckpt, "-o", out, *args)
    assert_one_line_error(c, stdout, err, code, needle)
    no_output(tmp_path, keep=("small",))


def test_no_prunable_tensor(capsys, tmp_path):
    src = write_checkpoint(tmp_path / "norms", {"norm.weight": torch.ones(8), "x.bias": torch.zeros(8), "ids": torch.arange(4)})
    c, stdout, err = run(capsys, "prune", src, "-o", tmp_path / "out", "--sparsity", "0.5")
    assert_one_line_error(c, stdout, err, 1, "no tensor to prune", "--include")
    no_output(tmp_path, keep=("norms",))


def test_row_not_divisible_by_m_names_the_tensor(capsys, tmp_path):
    src = write_checkpoint(tmp_path / "odd", {"ok.weight": torch.randn(4, 8), "odd.weight": torch.randn(4, 6)})
    c, stdout, err = run(capsys, "prune", src, "-o", tmp_path / "out", "--pattern", "2:4")
    assert_one_line_error(c, stdout, err, 1, "odd.weight", "6 values", "M=4")
    no_output(tmp_path, keep=("odd",))


def test_missing_output_existing_output_and_bad_recipe(capsys, tmp_path, small_ckpt):
    c, stdout, err = run(capsys, "prune", small_ckpt, "--sparsity", "0.5")
    assert_one_line_error(c, stdout, err, 2, "-o OUT")
    (tmp_path / "taken").mkdir()
    c, stdout, err = run(capsys, "prune", small_ckpt, "-o", tmp_path / "taken", "--sparsity", "0.5")
    assert_one_line_error(c, stdout, err, 1, "already exists", "--force")
    assert list((tmp_path / "taken").iterdir()) == []
    bad = tmp_path / "bad.yaml"
    bad.write_text("sparsity: 0.5\nmethd: random\n")
    c, stdout, err = run(capsys, "prune", small_ckpt, "-o", tmp_path / "o", "--recipe", bad)
    assert_one_line_error(c, stdout, err, 1, "unknown keys: methd")
    assert not (tmp_path / "o").exists()


# ------------------------------------------------------------------------------------------
# GPU: the Triton path end to end, and 2:4 weights that the sparse tensor cores accept


@pytest.mark.gpu
def test_cuda_output_equals_cpu_output(capsys, tmp_path):
    src = make_tiny_llama(tmp_path / "llama")
    for args in (
        ["--sparsity", "0.5"],
        ["--sparsity", "0.5", "--scope", "global"],
        ["--sparsity", "0.3", "--scope", "row"],
        ["--pattern", "2:4"],
    ):
        outs = []
        for dev in ("cpu", "cuda"):
            out = tmp_path / f"{dev}-{'-'.join(args).replace(':', '')}"
            prune_json(capsys, src, "-o", out, "--device", dev, *args)
            outs.append(load_file(out / "model.safetensors"))
        assert all(torch.equal(outs[0][n], outs[1][n]) for n in outs[0]), args


@pytest.mark.gpu
def test_2_4_output_converts_to_semi_structured(capsys, tmp_path):
    from torch.sparse import to_sparse_semi_structured

    src = make_tiny_llama(
        tmp_path / "llama", hidden_size=128, intermediate_size=256, num_attention_heads=4, num_key_value_heads=4
    )
    out = tmp_path / "llama-24"
    r = prune_json(capsys, src, "-o", out, "--pattern", "2:4", "--device", "cuda")
    assert r["nm_compliant"]
    weights = load_file(out / "model.safetensors")
    x = torch.randn(64, 128, dtype=torch.float16, device="cuda")
    for t in r["tensors"]:
        w = weights[t["name"]].to("cuda", torch.float16).contiguous()
        sparse = to_sparse_semi_structured(w)
        assert torch.equal(sparse.to_dense(), w), t["name"]
        if w.shape[1] == 128:
            torch.testing.assert_close(
                torch.nn.functional.linear(x, sparse), torch.nn.functional.linear(x, w), rtol=1e-2, atol=1e-2
            )


# ------------------------------------------------------------------------------------------
# flags are checked before anything is opened or downloaded


def test_misspelt_method_or_pattern_fails_before_the_hub_is_asked(tmp_path):
    """The method name and the pattern are checked while the flags are read: an uncached Hub id with
    HF_HUB_OFFLINE=1 reports the mistake (exit 2), not the cache miss it would hit next, and torch is
    never imported."""
    import os
    import subprocess
    import sys

    cache = tmp_path / "hub"
    cache.mkdir()
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HUB_CACHE": str(cache), "HF_HOME": str(cache)}
    code = (
        "import sys\n"
        "from modelsurgeon.cli.main import main\n"
        "rc = main(sys.argv[1:])\n"
        "assert rc != 2 or 'torch' not in sys.modules, 'torch was imported before the flags were checked'\n"
        "sys.exit(rc)\n"
    )
    out = tmp_path / "out"
    base = [sys.executable, "-c", code, "prune", "org/not-cached", "-o", str(out)]
    for args, needles in (
        (["--sparsity", "0.5", "--method", "magnitud"], ["unknown pruning method 'magnitud'", "did you mean magnitude?"]),
        (["--pattern", "2-4"], ["'2-4' is not of the form N:M"]),
    ):
        r = subprocess.run([*base, *args], capture_output=True, text=True, env=env)
        assert_one_line_error(r.returncode, r.stdout, r.stderr, 2, *needles)
        assert "cache" not in r.stderr
    # the same command with a known method goes on to the Hub and misses the cache: the check above came first
    r = subprocess.run([*base, "--sparsity", "0.5"], capture_output=True, text=True, env=env)
    assert_one_line_error(r.returncode, r.stdout, r.stderr, 1, "not in the local Hugging Face cache")
    assert not out.exists()
