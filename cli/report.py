"""`surgeon report MODEL`: what a checkpoint holds, how sparse it is, and how it differs from another."""

from __future__ import annotations

from typing import Annotated

import typer

from ._options import JsonOpt, QuietOpt, RevisionOpt, WideOpt
from ._output import REL_L2, RichProgress, fmt_bytes, fmt_count, fmt_float, fmt_pct, fmt_rel_l2, print_lines, render, settings

EPILOG = """Examples:

  surgeon report minilm

  surgeon report pruned/ --compare org/base --top 10

  surgeon report pruned/ --filter 'layers?\\.\\d+\\..*weight$' --json | jq .sparsity

  surgeon report pruned/ --filter 'layers?\\.\\d+\\..*(proj|query|key|value|dense)\\.weight$' --require 'sparsity>=0.5'
"""


def report(
    model: Annotated[str, typer.Argument(help="A .safetensors file, a model folder, a Hub id (org/name[@rev]) or 'minilm'.")],
    compare: Annotated[str | None, typer.Option("--compare", help="Another checkpoint to compare each tensor against.")] = None,
    name_filter: Annotated[
        str | None, typer.Option("--filter", help="Only tensors whose name matches this regex (totals too).")
    ] = None,
    top: Annotated[
        int | None, typer.Option("--top", min=1, help="List only the N largest tensors (most changed with --compare).")
    ] = None,
    require: Annotated[
        list[str] | None,
        typer.Option("--require", help="A gate such as 'sparsity>=0.5'; repeatable. Exit 1 if one fails."),
    ] = None,
    revision: RevisionOpt = None,
    wide: WideOpt = False,
    as_json: JsonOpt = False,
    quiet: QuietOpt = False,
) -> int:
    """Tensor-by-tensor statistics and totals; optionally compared with another checkpoint."""
    settings.wide = wide
    from modelsurgeon import api
    from modelsurgeon.ops.core.errors import SurgeonError
    from modelsurgeon.recipes.report import ReportConfig

    cfg = ReportConfig(compare=compare, filter=name_filter, top=top, require=tuple(require or ()))
    with RichProgress(quiet) as bar:
        result = api.report(model, cfg, revision=revision, progress=bar)
    render(result, as_json, _print_table)
    if not result.ok:
        raise SurgeonError(f"requirement failed: {'; '.join(result.failures)}")
    return 0


def _print_table(r: dict) -> None:
    from ._output import Col, out_console, print_table, status

    console = out_console()
    cmp = "compare" in r
    # the name, shape, params and nonzero always show; the others go, highest `drop` first, when the names
    # would get narrower than MIN_NAME (--wide shows all)
    cols = [Col("tensor", "left"), Col("shape", "left"), Col("dtype", "left", drop=3), Col("params"), Col("nonzero")]
    if cmp:
        cols += [Col(REL_L2), Col("cosine", drop=2), Col("changed", drop=4), Col("same sign", drop=5)]
    else:
        cols += [Col("2:4", "center", drop=4), Col("mean|w|", drop=1), Col("std", drop=2), Col("min", drop=6), Col("max", drop=5)]
    rows = []
    for row in r["tensors"]:
        cells = [
            row["name"],
            "x".join(map(str, row["shape"])) or "()",
            row["dtype"] + (f" <- {row['stored']['scheme']}" if row.get("stored") else ""),
            fmt_count(row["numel"]),
            fmt_pct(1 - row["sparsity"]),
        ]
        if cmp:
            cells += [
                fmt_rel_l2(row["rel_l2"]),
                fmt_float(row["cosine"], 5),
                fmt_pct(row["changed_fraction"]),
                fmt_pct(row["sign_agreement"]),
            ]
        else:
            cells += [
                {True: "yes", False: "no", None: "-"}[row["nm_2_4"]],
                fmt_float(row["mean_abs"], 3),
                fmt_float(row["std"], 3),
                fmt_float(row["min"], 3),
                fmt_float(row["max"], 3),
            ]
        rows.append(cells)
    legend = (
        "rel L2 = |a-b|/|a| (a = this model); changed: share of values that differ; same sign: share of values whose sign agrees"
        if cmp
        else "2:4: every group of 4 consecutive weights along a row holds at most 2 nonzeros"
    )
    title = f"{r['model']}" + (f"  vs  {r['compare']['other']}" if cmp else "")
    from rich.text import Text

    print_table(cols, rows, title=title, console=console, legend=legend)
    shown = f" (showing top {r['top']})" if r.get("top") else ""
    lines = [
        f"tensors {r['num_tensors']}{shown}   params {fmt_count(r['total_params'])} ({r['total_params']:,})   "
        f"nonzero {fmt_count(r['nonzero_params'])}   sparsity {fmt_pct(r['sparsity'])}",
        f"on disk {fmt_bytes(r['bytes_on_disk'])} in {len(r['files'])} file(s), {r['format']}   dtypes "
        + ", ".join(f"{k} {fmt_count(v)}" for k, v in r["dtypes"].items()),
    ]
    if r.get("filter"):
        lines.append(f"filter '{r['filter']}': totals cover the matching tensors only")
    prov = r.get("provenance")
    if prov:
        lines.append(f"made by modelsurgeon {prov.get('version', '?')}: {prov.get('command', '?')}")
        if prov.get("run"):
            steps = ", ".join(next(iter(s)) for s in prov["run"].get("steps", []))
            lines.append(f"run recipe (version {prov['run'].get('version')}): {steps}; in full: --json | jq .provenance.run")
    if r.get("quantization_config"):
        q = r["quantization_config"]
        lines.append(f"quantization: {q.get('quant_method', '?')} {q.get('format', '')}".rstrip())
    if r.get("source_format"):
        n = sum(1 for row in r["tensors"] if row.get("stored"))
        lines.append(
            f"stored as {r['source_format']} ({fmt_bytes(r['stored_bytes'])} of tensors); "
            f"the statistics describe the dequantized values of {n} tensor(s) listed with '<- scheme'"
        )
    if cmp:
        c = r["compare"]
        lines.append(
            f"compared {c['compared_tensors']} tensors: max {REL_L2} {fmt_rel_l2(c['max_rel_l2'])}, mean {fmt_rel_l2(c['mean_rel_l2'])}, "
            f"min cosine {fmt_float(c['min_cosine'])}, changed {fmt_pct(c['changed_fraction'])}"
        )
        for key, label in (("missing_tensors", "missing from other"), ("extra_tensors", "only in other")):
            if c[key]:
                lines.append(f"{label} ({len(c[key])}): " + ", ".join(c[key][:8]) + (" ..." if len(c[key]) > 8 else ""))
        for s in c["shape_changed_tensors"][:8]:
            lines.append(f"shape changed: {s['name']} {s['shape']} -> {s['other_shape']}")
    for req in r.get("requirements", []):
        lines.append(Text.assemble(f"require {req['require']}: ", status(req["ok"]), f" ({fmt_float(req['value'], 6)})"))
    print_lines(lines, console)
