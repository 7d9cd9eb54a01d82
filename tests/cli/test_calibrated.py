"""The calibrated methods through the CLI on a tiny Llama: exact counts, outputs the real consumers load (and whose
weights equal the dense form of the same run), `surgeon eval` against a direct transformers computation, the
dry-run plan, and bad input (one line, an exit code, nothing written)."""

from __future__ import annotations

import json
import math

import pytest
import torch
from builders import add_byte_level_tokenizer, make_tiny_llama
from helpers import assert_one_line_error, run, run_json
from safetensors.torch import load_file

from modelsurgeon.ops.quantize.formats.gguf import permute_rows

VOCAB = 300
TEXT = (__import__("pathlib").Path(__file__).resolve().parent.parent / "data" / "pride_and_prejudice.txt").read_text()
CAL = ("--calib-samples", "4", "--calib-seqlen", "32")


@pytest.fixture(scope="module")
def llama(tmp_path_factory):
    folder = make_tiny_llama(tmp_path_factory.mktemp("calibrated") / "tiny", vocab_size=VOCAB)
    add_byte_level_tokenizer(folder, VOCAB, TEXT)
    return folder


@pytest.fixture(scope="module")
def calib(tmp_path_factory):
    p = tmp_path_factory.mktemp("cal") / "cal.jsonl"
    p.write_text("\n".join(json.dumps({"text": TEXT[i : i + 300]}) for i in range(0, len(TEXT), 300)) + "\n")
    return p


def _prune(capsys, llama, out, *args):
    return run_json(capsys, "prune", llama, "-o", out, *args, *CAL, "-q")


@pytest.mark.parametrize("method", ["wanda", "sparsegpt"])
def test_prune_counts_are_exact_and_transformers_loads_it(capsys, tmp_path, llama, calib, method):
    from transformers import AutoModelForCausalLM

    r = _prune(capsys, llama, tmp_path / "o", "--method", method, "--sparsity", "0.5", "--calib", calib)
    assert r["method"] == method and r["num_targets"] == 14
    assert r["calibration"]["calibration"]["source"] == str(calib) and r["calibration"]["layers"] == 2
    out = load_file(tmp_path / "o" / "model.safetensors")
    src = load_file(llama / "model.safetensors")
    for t in r["tensors"]:
        w = out[t["name"]]
        if method == "wanda":  # per row, exactly half of every row
            assert ((w == 0).sum(1) == w.shape[1] // 2).all(), t["name"]
        assert t["pruned"] == t["numel"] // 2 == t["zeros"], t["name"]
    assert set(out) == set(src)
    for name in src:  # what is not a target passes through untouched
        if name not in {t["name"] for t in r["tensors"]}:
            assert torch.equal(out[name], src[name]), name
    if method == "wanda":  # Wanda changes no kept weight
        for t in r["tensors"]:
            kept = out[t["name"]] != 0
            assert torch.equal(out[t["name"]][kept], src[t["name"]][kept])
    model = AutoModelForCausalLM.from_pretrained(tmp_path / "o")
    assert torch.isfinite(model(torch.arange(20)[None]).logits).all()
    assert (tmp_path / "o" / "prune_recipe.yaml").read_text().count(method) == 1


@pytest.mark.parametrize("method", ["wanda", "sparsegpt"])
def test_two_of_four(capsys, tmp_path, llama, method):
    r = _prune(capsys, llama, tmp_path / "o", "--method", method, "--pattern", "2:4")
    assert r["nm_compliant"] is True and r["pruned"] == r["target_params"] // 2


def test_owl_moves_layer_sparsities_and_keeps_each_count_exact(capsys, tmp_path, llama):
    r = _prune(capsys, llama, tmp_path / "o", "--method", "wanda", "--sparsity", "0.5", "--owl")
    owl = r["calibration"]["owl"]
    assert len(owl["layer_sparsity"]) == 2 and owl["layer_sparsity"][0] != owl["layer_sparsity"][1]
    assert sum(owl["layer_sparsity"]) / 2 == pytest.approx(0.5)
    for t in r["tensors"]:
        layer = int(t["name"].split(".")[2])
        s = owl["layer_sparsity"][layer]
        assert t["sparsity_target"] == s
        rows, cols = t["shape"]
        assert t["pruned"] == math.floor(s * cols + 0.5) * rows


def test_dry_run_prints_the_plan_and_writes_nothing(capsys, tmp_path, llama):
    r = _prune(capsys, llama, tmp_path / "o", "--method", "sparsegpt", "--sparsity", "0.5", "--dry-run")
    c = r["calibration"]
    assert r["dry_run"] and c["layers"] == 2 and c["linears_per_layer"] == 7
    assert c["calibration"]["tokens"] == 4 * 32 and c["memory"]["statistics"] == 64 * 64 * 4 + 128 * 128 * 4
    assert c["memory"]["activations"] == 4 * 32 * 64 * 4 * 2
    assert not (tmp_path / "o").exists()
    code, out, err = run(
        capsys, "quantize", llama, "-o", tmp_path / "q", "--scheme", "w4a16", "-g", "32", "--method", "gptq", *CAL, "--dry-run"
    )
    assert code == 0 and "gptq: LlamaForCausalLM, 2 layers x 7 linears" in out and "dry run" in out
    assert not (tmp_path / "q").exists()


@pytest.mark.parametrize("method", ["gptq", "awq"])
def test_quantize_compressed_tensors_loads_and_equals_the_dense_run(capsys, tmp_path, llama, method):
    from transformers import AutoModelForCausalLM

    args = ("--scheme", "w4a16", "-g", "32", "--method", method, *CAL)
    r = run_json(capsys, "quantize", llama, "-o", tmp_path / "ct", *args, "-q")
    assert r["method"] == method and r["quantized_tensors"] == 14 and r["calibration"]["method"] == method
    run_json(capsys, "quantize", llama, "-o", tmp_path / "dense", *args, "--format", "dense", "-q")
    q = AutoModelForCausalLM.from_pretrained(tmp_path / "ct")
    d = AutoModelForCausalLM.from_pretrained(tmp_path / "dense")
    ids = torch.randint(0, VOCAB, (2, 24), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert torch.equal(q(ids).logits, d(ids).logits)  # the first forward decompresses
    sq = q.state_dict()
    for name, t in d.state_dict().items():
        assert torch.equal(sq[name], t), name
    src = load_file(llama / "model.safetensors")
    dense = load_file(tmp_path / "dense" / "model.safetensors")
    changed = [n for n in src if not torch.equal(src[n], dense[n])]
    if method == "awq":  # AWQ folds its scales into the norms
        assert any("layernorm" in n for n in changed)
    else:
        assert all(n.endswith("proj.weight") for n in changed)


def test_gptq_gguf_blocks_equal_the_dense_run(capsys, tmp_path, llama):
    import gguf

    args = ("--scheme", "q4_0", "--method", "gptq", *CAL)
    run_json(capsys, "quantize", llama, "-o", tmp_path / "m.gguf", *args, "--pre-tokenizer", "gpt-2", "-q")  # a toy tokenizer
    run_json(capsys, "quantize", llama, "-o", tmp_path / "dense", *args, "--format", "dense", "-q")
    want = load_file(tmp_path / "dense" / "model.safetensors")
    tensors = {t.name: t for t in gguf.GGUFReader(tmp_path / "m.gguf").tensors}
    for hf, g, heads in [
        ("self_attn.q_proj", "attn_q", 4),
        ("self_attn.k_proj", "attn_k", 2),
        ("mlp.down_proj", "ffn_down", None),
    ]:
        t = tensors[f"blk.1.{g}.weight"]
        ref = want[f"model.layers.1.{hf}.weight"]
        got = torch.from_numpy(gguf.quants.dequantize(t.data, t.tensor_type)).reshape(ref.shape)
        assert torch.equal(got, permute_rows(ref, heads) if heads else ref), hf


@pytest.mark.parametrize("method", ["gptq", "awq"])
def test_llama_cpp_runs_the_calibrated_gguf_as_the_dense_run(capsys, tmp_path, llama, method):
    """llama.cpp loads the GPTQ/AWQ GGUF file and computes the logits transformers computes from --format dense."""
    llama_cpp = pytest.importorskip("llama_cpp", reason="llama-cpp-python is not installed")
    import numpy as np
    from transformers import AutoModelForCausalLM

    args = ("--scheme", "q8_0", "--method", method, *CAL)
    run_json(capsys, "quantize", llama, "-o", tmp_path / "m.gguf", *args, "--pre-tokenizer", "gpt-2", "-q")  # a toy tokenizer
    run_json(capsys, "quantize", llama, "-o", tmp_path / "dense", *args, "--format", "dense", "-q")
    llm = llama_cpp.Llama(model_path=str(tmp_path / "m.gguf"), n_ctx=64, n_threads=1, logits_all=True, verbose=False)
    ids = llm.tokenize(TEXT[:120].encode(), add_bos=False)[:48]
    llm.eval(ids)
    got = np.asarray(llm.scores[: len(ids)])
    with torch.no_grad():
        want = AutoModelForCausalLM.from_pretrained(tmp_path / "dense")(torch.tensor([ids])).logits[0].numpy()
    # llama.cpp quantizes activations to 8 bits on the fly: about 1%; a wrong layout or a lost AWQ scale is ~100%
    rel = float(np.linalg.norm(got - want) / np.linalg.norm(want))
    assert rel < 0.03, rel


def test_eval_perplexity_equals_transformers(capsys, tmp_path, llama):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    text = tmp_path / "t.txt"
    text.write_text(TEXT)
    model = AutoModelForCausalLM.from_pretrained(llama).eval()
    ids = AutoTokenizer.from_pretrained(llama)(TEXT, return_tensors="pt").input_ids
    n = ids.shape[1]
    r = run_json(capsys, "eval", llama, "--text", text, "--context", "128", "--stride", "64", "-q")
    # the sliding window by hand: windows of 128 every 64 tokens, each scoring what no earlier window did
    nll, count, prev = 0.0, 0, 0
    with torch.no_grad():
        for begin in range(0, n - 1, 64):
            end = min(begin + 128, n)
            logp = torch.log_softmax(model(ids[:, begin:end]).logits[0].float(), -1)
            for j in range(max(begin + 1, prev), end):
                nll -= float(logp[j - 1 - begin, ids[0, j]])
                count += 1
            prev = end
            if end == n:
                break
    m = r["models"][0]
    assert m["tokens"] == count == n - 1
    assert m["perplexity"] == pytest.approx(math.exp(nll / count), rel=1e-5)
    r = run_json(capsys, "eval", llama, "--reference", llama, "--text", text, "--context", "64", "-q", "--require", "kld<=0.0001")
    assert r["ok"] and r["models"][0]["kld"] == pytest.approx(0, abs=1e-6) and r["models"][0]["top1"] == 1.0


def test_eval_compare_and_a_failing_gate(capsys, tmp_path, llama):
    text = tmp_path / "t.txt"
    text.write_text(TEXT)
    run_json(capsys, "prune", llama, "-o", tmp_path / "mag", "--sparsity", "0.7", "-q")
    code, out, err = run(capsys, "eval", llama, "--compare", tmp_path / "mag", "--reference", llama, "--text", text,
                         "--context", "64", "--json", "-q", "--require", "kld<=0.0001")  # fmt: skip
    assert code == 1, err
    r = json.loads(out)
    assert [m["gates"][0]["ok"] for m in r["models"]] == [True, False] and r["ok"] is False
    assert r["models"][1]["kld"] > 0 and r["models"][1]["top1"] < 1
    code, out, err = run(capsys, "eval", llama, "--compare", tmp_path / "mag", "--text", text, "--context", "64", "-q")
    assert code == 0 and "perplexity" in out and "mag" in out


def test_bad_input_is_one_line_and_writes_nothing(capsys, tmp_path, llama):
    out = tmp_path / "o"
    empty = tmp_path / "empty.txt"
    empty.write_text("  \n")
    short = tmp_path / "short.txt"
    short.write_text("only a few words")
    cases = [
        (["prune", llama, "-o", out, "--method", "wanda", "--sparsity", "0.5", "--calib", empty, *CAL], 1, "is empty"),
        (
            ["prune", llama, "-o", out, "--method", "wanda", "--sparsity", "0.5", "--calib", short, *CAL],
            1,
            "shorter than one sequence",
        ),
        (
            ["prune", llama, "-o", out, "--method", "wanda", "--sparsity", "0.5", "--calib", tmp_path / "nope.txt", *CAL],
            1,
            "does not exist",
        ),
        (["quantize", llama, "-o", out, "--scheme", "nf4", "--method", "gptq"], 2, "cannot produce scheme nf4"),
        (["quantize", llama, "-o", out, "--scheme", "w4a16", "--method", "gptq", "--optimizer", "hqq"], 2, "mutually exclusive"),
        (["prune", llama, "-o", out, "--sparsity", "0.5", "--owl"], 2, "--owl applies to the calibrated methods"),
        (["prune", llama, "-o", out, "--method", "wanda", "--sparsity", "0.5", "--scope", "global", *CAL], 2, "--scope global"),
        (["prune", llama, "-o", out, "--method", "wanda", "--sparsity", "0.5", "--include", "lm_head", *CAL], 1, "not one"),
        (["eval", llama, "--text", tmp_path / "nope.txt"], 1, "does not exist"),
        (["eval", llama, "--text", short, "--require", "kld<0.1"], 2, "needs --reference"),
    ]
    for args, code_, needle in cases:
        code, o, err = run(capsys, *args)
        assert_one_line_error(code, o, err, code_, needle)
        assert not out.exists()
    no_tok = tmp_path / "no-tok"
    no_tok.mkdir()
    for f in ("config.json", "model.safetensors"):
        (no_tok / f).write_bytes((llama / f).read_bytes())
    code, o, err = run(capsys, "prune", no_tok, "-o", out, "--method", "wanda", "--sparsity", "0.5", *CAL)
    assert_one_line_error(code, o, err, 1, "tokenizer")
    cfg = json.loads((llama / "config.json").read_text())
    cfg["model_type"] = "mystery"
    (no_tok / "config.json").write_text(json.dumps(cfg))
    code, o, err = run(capsys, "quantize", no_tok, "-o", out, "--scheme", "w4a16", "-g", "32", "--method", "awq", *CAL)
    assert_one_line_error(code, o, err, 1, "does not know model_type 'mystery'")
    assert not out.exists()


@pytest.mark.gpu
@pytest.mark.parametrize("method", ["wanda", "sparsegpt", "gptq", "awq"])
def test_cuda_gives_the_cpu_result(capsys, tmp_path, llama, calib, method):
    """On CUDA the engine writes what it writes on the CPU: the same masks and exact counts (pruning), weights
    within float32 reordering error, and `surgeon eval`'s perplexity to 1e-4."""
    if method in ("wanda", "sparsegpt"):
        args = ("prune", llama, "--method", method, "--sparsity", "0.5", "--calib", calib, *CAL, "-q")
    else:
        args = ("quantize", llama, "--scheme", "w4a16", "-g", "32", "--format", "dense", "--method", method, "--calib", calib)
        args = (*args, *CAL, "-q")
    outs = {}
    for dev in ("cpu", "cuda"):
        run_json(capsys, *args[:2], "-o", tmp_path / dev, *args[2:], "--device", dev)
        outs[dev] = load_file(tmp_path / dev / "model.safetensors")
    for name, w in outs["cpu"].items():
        g = outs["cuda"][name]
        if method == "wanda":
            assert torch.equal(g == 0, w == 0), name
        if method in ("wanda", "sparsegpt"):
            assert (g == 0).sum() == (w == 0).sum(), name
        # GPTQ/AWQ: a code may flip where float32 sums in another order land on a rounding boundary
        assert (g - w).abs().gt(1e-3 * w.abs().max()).float().mean() < 0.01, name
    ppl = {}
    for dev in ("cpu", "cuda"):
        r = run_json(capsys, "eval", tmp_path / "cpu", "--text", calib, "--context", "64", "--device", dev, "-q")
        ppl[dev] = r["models"][0]["perplexity"]
    assert ppl["cuda"] == pytest.approx(ppl["cpu"], rel=1e-4)
