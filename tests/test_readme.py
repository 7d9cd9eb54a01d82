"""Every `surgeon ...` line in the README's bash blocks runs as shown.

The test works in a scratch folder where the README's placeholder names exist as small real inputs:
`org/model`, `org/base`, `org/a`, `org/b`, `model/`, `a/ b/ c/ base/` are tiny Llamas, `held-out.txt` a text (a relative path
that exists wins over a Hub id; `model/`, the GGUF examples' input, has SmolLM2's real tokenizer, whose
pre-tokenizer llama.cpp knows, and tied embeddings), `recipe.yaml` is a mergekit recipe over them, `my-adapter/` a PEFT
adapter made by peft (`other-adapter/` a second one of the same base and modules), `finetuned/` a fine-tune of
`org/base`, `pruned/` a 2:4-pruned `org/base`, `stages.yaml` a two-stage mergekit-multi recipe and `moe.yaml`
a mergekit-moe recipe over them.
`| jq .key` becomes "stdout parses as JSON and has that key". A line is skipped only for a reason
listed in SKIP (a GPU, or a user's dataset that a quick test cannot stand in for).
"""

from __future__ import annotations

import json
import re
import shlex
import shutil
from pathlib import Path

import pytest
import torch
from builders import add_byte_level_tokenizer, add_smollm2_tokenizer, make_tiny_llama, write_legacy_imatrix
from helpers import run

README = Path(__file__).resolve().parents[1] / "README.md"

SKIP = {
    "--device cuda": "needs a CUDA device",
    "npz:mnist.npz": "needs the user's MNIST arrays; the npz task is covered in tests/cli/test_intrinsic_dim.py",
    "csv:reviews.csv": "a full search fine-tuning MiniLM takes minutes; covered with small settings in test_intrinsic_dim.py",
    "/new/place/of/the/base": "an absolute placeholder path; --base is covered in tests/cli/test_expand_subspace.py",
}


def readme_commands() -> list[str]:
    text = README.read_text()
    lines = []
    for block in re.findall(r"```bash\n(.*?)```", text, re.S):
        for line in block.splitlines():
            line = re.sub(r"\s+#.*$", "", line).strip()
            if line.startswith("surgeon "):
                lines.append(line)
    return lines


def help_commands() -> list[str]:
    """Every `surgeon ...` example in the commands' --help epilogs, as the user sees them."""
    import typer

    from modelsurgeon.cli.main import app

    lines = []
    for command in typer.main.get_command(app).commands.values():
        for line in (command.epilog or "").splitlines():
            line = re.sub(r"\s+#.*$", "", line).strip()
            if line.startswith("surgeon "):
                lines.append(line)
    return lines


def _make_inputs(root: Path, smollm2_gguf: Path) -> None:
    for i, name in enumerate(["org/base", "org/model", "org/a", "org/b", "base", "a", "b", "c"]):
        # all share one random init (seed 0); a/ b/ c/ org/a org/b are then perturbed like fine-tunes
        seed = 0
        folder = make_tiny_llama(root / name, seed=seed, hidden_size=128, intermediate_size=256, vocab_size=300)
        add_byte_level_tokenizer(folder, 300)
        if name in ("org/a", "org/b", "a", "b", "c"):
            _perturb(folder, seed=i)
    model = make_tiny_llama(root / "model", hidden_size=256, intermediate_size=512, vocab_size=49152, tie_word_embeddings=True)
    add_smollm2_tokenizer(model, smollm2_gguf)
    # what llama-imatrix writes for it: one mean squared activation per input column of every linear weight
    g = torch.Generator().manual_seed(0)
    columns = {"attn_q": 256, "attn_k": 256, "attn_v": 256, "attn_output": 256, "ffn_gate": 256, "ffn_up": 256, "ffn_down": 512}
    entries = {f"blk.{i}.{n}.weight": torch.rand(c, generator=g) + 0.1 for i in range(2) for n, c in columns.items()}
    write_legacy_imatrix(root / "imatrix.dat", entries, ncalls=10, dataset="notes.txt")
    (root / "recipe.yaml").write_text(
        "merge_method: ties\nbase_model: org/base\nmodels:\n"
        "  - model: org/a\n    parameters: {weight: 0.6, density: 0.5}\n"
        "  - model: org/b\n    parameters: {weight: 0.4, density: 0.5}\n"
        "dtype: float32\n"
    )
    shutil.copytree(root / "org/base", root / "finetuned")
    _perturb(root / "finetuned", seed=99)
    _make_adapter(root / "org/base", root / "my-adapter")
    torch.manual_seed(1)
    _make_adapter(root / "org/base", root / "other-adapter")
    (root / "stages.yaml").write_text(
        "name: blend\nmerge_method: slerp\nbase_model: a\nmodels:\n  - model: a\n  - model: b\nparameters: {t: 0.5}\n"
        "---\nmerge_method: ties\nbase_model: base\nmodels:\n  - model: blend\n    parameters: {weight: 0.5, density: 0.5}\n"
        "  - model: c\n    parameters: {weight: 0.5, density: 0.5}\n"
    )
    (root / "moe.yaml").write_text(
        "base_model: base\ngate_mode: cheap_embed\nexperts_per_token: 2\nexperts:\n"
        "  - source_model: a\n    positive_prompts: ['the quick brown fox']\n"
        "  - source_model: b\n    positive_prompts: ['hello world']\n"
    )
    shutil.copytree(README.parent / "recipes", root / "recipes")  # the examples run from the repository root
    shutil.copyfile(README.parent / "tests" / "data" / "pride_and_prejudice_ch1-5.txt", root / "held-out.txt")


def _perturb(folder: Path, seed: int) -> None:
    from safetensors.torch import load_file, save_file

    path = folder / "model.safetensors"
    sd = load_file(str(path))
    g = torch.Generator().manual_seed(seed)
    for k, v in sd.items():
        if v.is_floating_point() and v.dim() == 2:
            sd[k] = v + 0.01 * torch.randn(v.shape, generator=g, dtype=v.dtype)
    save_file(sd, str(path), metadata={"format": "pt"})


def _make_adapter(base: Path, out: Path) -> None:
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(base)
    peft_model = get_peft_model(
        model, LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], init_lora_weights=False)
    )
    peft_model.save_pretrained(out)


@pytest.fixture(scope="module")
def workdir(tmp_path_factory, smollm2_gguf):
    root = tmp_path_factory.mktemp("readme")
    _make_inputs(root, smollm2_gguf)
    return root


def _prepare(line: str, root: Path) -> tuple[list[str], str | None]:
    jq = None
    m = re.search(r"\s*\|\s*jq\s+\.(\w+)\s*$", line)
    if m:
        jq, line = m.group(1), line[: m.start()]
    args = shlex.split(line)[1:]
    if "-o" in args:  # re-running an example replaces its earlier output, as a user would
        out = root / args[args.index("-o") + 1]
        if out.exists():
            shutil.rmtree(out) if out.is_dir() else out.unlink()
    return args, jq


def test_readme_shows_commands():
    lines = readme_commands()
    commands = {shlex.split(line)[1] for line in lines}
    assert {"report", "prune", "quantize", "dequantize", "merge", "eval", "intrinsic-dim", "expand-subspace", "run"} <= commands


def test_every_readme_command_runs(capsys, workdir, monkeypatch):
    monkeypatch.chdir(workdir)
    # `pruned/` is what the report examples inspect: org/base pruned 2:4
    code, _, err = run(capsys, "prune", "org/base", "-o", "pruned", "--pattern", "2:4", "-q")
    assert code == 0, err
    ran, skipped = [], []
    for line in readme_commands():
        reason = next((why for key, why in SKIP.items() if key in line), None)
        if reason is None and "expand-subspace" in line and not (workdir / "s.safetensors").exists():
            # the example that writes s.safetensors is skipped above: make one the quick way
            (workdir / "notes.txt").write_text("the quick brown fox jumps over the lazy dog. " * 40)
            code, _, err = run(
                capsys,
                "intrinsic-dim",
                "org/base",
                "--task",
                "text:notes.txt",
                "--grid",
                "8",
                "--epochs",
                "1",
                "--threshold-from",
                "zero",
                "--threshold",
                "0.1",
                "--save-subspace",
                "s.safetensors",
                "-q",
            )
            assert code == 0, err
        if reason:
            skipped.append((line, reason))
            continue
        args, jq = _prepare(line, workdir)
        code, out, err = run(capsys, *args)
        assert code == 0, f"README line failed ({code}): {line}\n{err}"
        if jq:
            assert jq in json.loads(out), (line, out[:500])
        ran.append(line)
    assert len(ran) >= 20, ran
    print("\n".join(f"skipped: {line}  ({why})" for line, why in skipped))


def test_readme_python_blocks(tmp_path, monkeypatch):
    """Python blocks that start with `import modelsurgeon` run whole (in a scratch folder); in the others,
    which show a fragment of user code, every modelsurgeon import line runs."""
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(), re.S)
    assert blocks, "the README shows no Python"
    monkeypatch.chdir(tmp_path)
    for block in blocks:
        if block.startswith("import modelsurgeon"):
            exec(compile(block, "README.md", "exec"), {})  # noqa: S102 - our own README
        else:
            for line in block.splitlines():
                if re.match(r"(from|import) modelsurgeon", line):
                    exec(line, {})  # noqa: S102 - our own README


def _ensure_outputs_of_earlier_examples(capsys, root: Path) -> None:
    """What the README's own examples write before later ones read it (for a test run on its own)."""
    makes = {
        "pruned": ("prune", "org/base", "-o", "pruned", "--pattern", "2:4"),
        # the README makes these two with --method wanda; a magnitude prune stands in when run on its own
        "wanda-50": ("prune", "model/", "-o", "wanda-50", "--sparsity", "0.5"),
        "owl-60": ("prune", "model/", "-o", "owl-60", "--sparsity", "0.6"),
        "model-q4_0.gguf": ("quantize", "model/", "-o", "model-q4_0.gguf", "--scheme", "q4_0"),
        "model-fp8-block": ("quantize", "model-q4_0.gguf", "-o", "model-fp8-block/", "--scheme", "fp8-block"),
    }
    for path, args in makes.items():
        if not (root / path).exists():
            code, _, err = run(capsys, *args, "-q")
            assert code == 0, err


def test_every_help_example_runs(capsys, workdir, monkeypatch):
    """The --help epilogs' examples run on the same stand-ins (those the README shows too ran above)."""
    monkeypatch.chdir(workdir)
    _ensure_outputs_of_earlier_examples(capsys, workdir)
    shown = set(readme_commands())
    ran = []
    for line in help_commands():
        if line in shown or any(key in line for key in SKIP):
            continue
        if "s.safetensors" in line and not (workdir / "s.safetensors").exists():
            continue  # made by the README test; expand-subspace's examples are all in the README
        args, jq = _prepare(line, workdir)
        code, out, err = run(capsys, *args)
        assert code == 0, f"--help example failed ({code}): {line}\n{err}"
        if jq:
            assert jq in json.loads(out), (line, out[:500])
        ran.append(line)
    assert len(ran) >= 3, ran
    assert len(help_commands()) >= 25


PATTERN_FLAGS = ("--filter", "--exclude", "--ignore", "--include")


def test_example_patterns_match_both_model_families(workdir, minilm_dir):
    """A regex in an example matches a tensor of the built-in model (MiniLM, BERT names) and of a Llama,
    unless the example runs on minilm alone; so no example exits 1 with "matches no tensor"."""
    from safetensors import safe_open

    def names(folder: Path) -> list[str]:
        with safe_open(str(folder / "model.safetensors"), "pt") as f:
            return list(f.keys())

    families = {"minilm": names(minilm_dir), "llama": names(workdir / "org/base")}
    checked = 0
    for line in readme_commands() + help_commands():
        args = shlex.split(re.sub(r"\s*\|\s*jq.*$", "", line))
        if args[1] == "intrinsic-dim":
            continue  # its --include/--exclude name module parameters, checked by its own tests
        for flag in PATTERN_FLAGS:
            if flag not in args:
                continue
            pattern = re.compile(args[args.index(flag) + 1])
            wanted = ["minilm"] if args[2] == "minilm" else list(families)
            for family in wanted:
                assert any(pattern.search(n) for n in families[family]), (line, family)
            checked += 1
    assert checked >= 5


def test_report_help_and_readme_show_the_same_filters():
    readme = {line for line in readme_commands() if line.startswith("surgeon report") and "--filter" in line}
    helps = [line for line in help_commands() if line.startswith("surgeon report") and "--filter" in line]
    filters = lambda lines: {shlex.split(line)[shlex.split(line).index("--filter") + 1] for line in lines}  # noqa: E731
    assert filters(helps) <= filters(readme), (helps, readme)
