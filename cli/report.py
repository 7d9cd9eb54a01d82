"""`surgeon report MODEL`: what a checkpoint holds, how sparse it is, and how it differs from another."""

from __future__ import annotations

from typing import Annotated

import typer

from ._options import JsonOpt, QuietOpt, RevisionOpt
from ._output import RichProgress, fmt_bytes, fmt_count, fmt_float, render

EPILOG = """Examples:

  surgeon report minilm

  surgeon report pruned/ --compare org/base --top 10

  surgeon report pruned/ --filter 'layers?\\.\\d+\\.mlp' --json | jq .sparsity

  surgeon report pruned/ --filter 'proj\\.weight$' --require 'sparsity>=0.5'
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
    as_json: JsonOpt = False,
    quiet: QuietOpt = False,
) -> int:
    """Tensor-by-tensor statistics and totals; optionally compared with another checkpoint."""
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
    from rich import box
    from rich.table import Table

    from ._output import out_console

    console = out_console()
    cmp = "compare" in r
    t = Table(
        title=f"{r['model']}" + (f"  vs  {r['compare']['other']}" if cmp else ""),
        title_justify="left",
        box=box.SIMPLE_HEAD,
        pad_edge=False,
    )
    t.add_column("tensor", overflow="fold", ratio=1, min_width=20)
    t.add_column("shape", no_wrap=True)
    t.add_column("dtype", no_wrap=True)
    t.add_column("params", justify="right", no_wrap=True)
    t.add_column("nonzero", justify="right", no_wrap=True)
    if cmp:
        for c in ("rel L2", "cosine", "changed", "sign="):
            t.add_column(c, justify="right", no_wrap=True)
    else:
        t.add_column("2:4", justify="center", no_wrap=True)
        for c in ("mean|w|", "std", "min", "max"):
            t.add_column(c, justify="right", no_wrap=True)
    for row in r["tensors"]:
        cells = [
            row["name"],
            "x".join(map(str, row["shape"])) or "()",
            row["dtype"] + (f" <- {row['stored']['scheme']}" if row.get("stored") else ""),
            fmt_count(row["numel"]),
            f"{1 - row['sparsity']:.1%}",
        ]
        if cmp:
            pct = lambda v: "-" if v is None else f"{v:.1%}"  # noqa: E731
            cells += [
                fmt_float(row["rel_l2"], 3),
                fmt_float(row["cosine"], 5),
                pct(row["changed_fraction"]),
                pct(row["sign_agreement"]),
            ]
        else:
            nm = {True: "yes", False: "no", None: "-"}[row["nm_2_4"]]
            cells += [
                nm,
                fmt_float(row["mean_abs"], 3),
                fmt_float(row["std"], 3),
                fmt_float(row["min"], 3),
                fmt_float(row["max"], 3),
            ]
        t.add_row(*cells)
    console.print(t)
    shown = f" (showing top {r['top']})" if r.get("top") else ""
    lines = [
        f"tensors {r['num_tensors']}{shown}   params {fmt_count(r['total_params'])} ({r['total_params']:,})   "
        f"nonzero {fmt_count(r['nonzero_params'])}   sparsity {r['sparsity']:.2%}",
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
            f"compared {c['compared_tensors']} tensors: max rel L2 {fmt_float(c['max_rel_l2'])}, mean {fmt_float(c['mean_rel_l2'])}, "
            f"min cosine {fmt_float(c['min_cosine'])}, changed {c['changed_fraction']:.2%}"
        )
        for key, label in (("missing_tensors", "missing from other"), ("extra_tensors", "only in other")):
            if c[key]:
                lines.append(f"{label} ({len(c[key])}): " + ", ".join(c[key][:8]) + (" ..." if len(c[key]) > 8 else ""))
        for s in c["shape_changed_tensors"][:8]:
            lines.append(f"shape changed: {s['name']} {s['shape']} -> {s['other_shape']}")
    for req in r.get("requirements", []):
        lines.append(f"require {req['require']}: {'ok' if req['ok'] else 'FAILED'} ({fmt_float(req['value'], 6)})")
    for line in lines:
        console.print(line, highlight=False, soft_wrap=True)
