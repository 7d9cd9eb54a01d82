"""`surgeon eval MODEL --text FILE`: perplexity, and KL divergence / top-1 agreement against a reference."""

from __future__ import annotations

from typing import Annotated

import typer

from ._options import DeviceOpt, JsonOpt, QuietOpt, RevisionOpt
from ._output import RichProgress, fmt_float, fmt_pct, render

EPILOG = """Examples:

  surgeon eval model/ --text held-out.txt

  surgeon eval wanda-50/ --reference model/ --text held-out.txt --require "kld<=0.5"

  surgeon eval model/ wanda-50/ owl-60/ --reference model/ --text held-out.txt --json

  surgeon eval model/ --compare wanda-50/ --compare owl-60/ --reference model/ --text held-out.txt

  surgeon eval minilm-50 --reference minilm --text held-out.txt --require "cosine>=0.5"
"""


def evaluate(
    models: Annotated[
        list[str],
        typer.Argument(help="Model folders (config.json, tokenizer, weights) or Hub ids: one table, scored in this order."),
    ],
    text: Annotated[
        str | None, typer.Option("--text", "-t", help="Evaluation text: plain text or JSONL with a 'text' field.")
    ] = None,
    reference: Annotated[
        str | None,
        typer.Option(
            "--reference", "-r", help="Compare with this model: per-token KL divergence and top-1 agreement (encoders: cosine)."
        ),
    ] = None,
    compare: Annotated[
        list[str] | None, typer.Option("--compare", help="One more model for the same table (repeatable; after the MODELs).")
    ] = None,
    context: Annotated[
        int | None, typer.Option("--context", help="Window length in tokens (default min(2048, the model's)).")
    ] = None,
    stride: Annotated[int | None, typer.Option("--stride", help="Tokens between window starts (default context/2).")] = None,
    max_tokens: Annotated[int | None, typer.Option("--max-tokens", help="Evaluate the first N tokens of the text only.")] = None,
    batch_size: Annotated[
        int | None, typer.Option("--batch-size", help="Windows run through a layer at once (default 4).")
    ] = None,
    require: Annotated[
        list[str] | None,
        typer.Option("--require", help="Gate KEY OP NUMBER for every model, e.g. 'kld<=0.05' (exit 1 when one fails)."),
    ] = None,
    device: DeviceOpt = "auto",
    revision: RevisionOpt = None,
    as_json: JsonOpt = False,
    quiet: QuietOpt = False,
) -> int:
    """Score causal LMs on a text (perplexity; with --reference, KL divergence and top-1 agreement), one layer at a time."""
    from modelsurgeon import api
    from modelsurgeon.recipes.eval import EvalConfig

    cfg = EvalConfig.build(
        None,
        text=text,
        reference=reference,
        context=context,
        stride=stride,
        max_tokens=max_tokens,
        batch_size=batch_size,
        require=tuple(require) if require else None,
        device=device,
    )
    with RichProgress(quiet) as bar:
        result = api.evaluate([*models, *(compare or [])], cfg, revision=revision, progress=bar)
    render(result, as_json, _print)
    return 0 if result.ok else 1


LEGEND = {  # what the headers that are not plain words mean (recipes/eval.py's GATE_KEYS, shorter)
    "ppl_ratio": "perplexity / the reference's",
    "kld": "mean KL(reference || model) per token (nats)",
    "kld_p99": "its 99th percentile",
    "top1": "tokens whose most likely next token is the reference's",
    "cosine_min": "the lowest sentence cosine similarity",
}


def _print(r: dict) -> None:
    """One row per model, its path shortened from the left to fit (never wrapped); at a narrow width the
    columns go in a stated order: kld_p99, ppl_ratio, the minimum cosine, then the gates (ok, or FAILED and
    the requirements that failed)."""
    from rich.text import Text

    from ._output import Col, out_console, print_table, shorten_path, status

    console = out_console()
    encoder = all(m["kind"] != "causal" for m in r["models"])
    what = f"{r['tokens']} sentences" if encoder else f"{r['tokens']} tokens, context {r['context']}, stride {r['stride']}"
    keys = ["cosine", "cosine_min"] if encoder else ["perplexity", "ppl_ratio", "kld", "kld_p99", "top1"]
    if r["reference"] is None:
        keys = [c for c in keys if c == "perplexity"]
    drop = {"kld_p99": 4, "ppl_ratio": 3, "cosine_min": 2, "gates": 1}
    gated = any(m.get("gates") for m in r["models"])
    cols = [Col("model", "left"), *(Col(k, drop=drop.get(k, 0)) for k in keys)] + (
        [Col("gates", "left", drop=1)] if gated else []
    )
    models = (
        [dict(r["reference"], model=r["reference"]["model"] + " (reference)", reference=True)] if r["reference"] else []
    ) + r["models"]
    rows = []
    for m in models:
        failed = [g["require"] for g in m.get("gates") or [] if not g["ok"]]
        if m.get("reference") or not m.get("gates"):
            gates = Text("")
        else:
            gates = Text.assemble(status(not failed, no="FAILED"), f" {' '.join(failed)}" if failed else "")
        rows.append([m["model"], *[(fmt_pct if c == "top1" else fmt_float)(m.get(c)) for c in keys]] + ([gates] if gated else []))
    legend = "; ".join(f"{k}: {LEGEND[k]}" for k in keys if k in LEGEND) or None
    print_table(cols, rows, title=f"eval on {r['text']} ({what})", console=console, legend=legend, shorten=shorten_path)
    if not r["ok"]:
        console.print("a --require gate failed", highlight=False)
