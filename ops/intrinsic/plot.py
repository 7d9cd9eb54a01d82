"""``--plot PATH``: a PNG of the metric against d (every run, the mean curve, the threshold, the baseline
and d_int), drawn from the result's JSON with matplotlib (Agg, no display) and written atomically."""

from __future__ import annotations

from pathlib import Path


def write_plot(out: dict, path: str | Path, force: bool = False, inputs=()) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from modelsurgeon import __version__
    from modelsurgeon.ops.io.output import PNG_SOFTWARE, OutputFile

    fig, ax = plt.subplots(figsize=(6.4, 4.0), dpi=120)
    runs = [r for r in out["records"] if r["d"] is not None]
    ax.scatter([r["d"] for r in runs], [r["metric"] for r in runs], s=14, alpha=0.6, label="runs")
    curve = out["curve"]
    ax.plot([c["d"] for c in curve], [c["mean"] for c in curve], "-", lw=1, label="mean")
    ax.axhline(out["threshold_value"], ls="--", color="tab:red", lw=1, label=f"{out['threshold']:g} x baseline")
    ax.axhline(out["baseline"]["value"], ls=":", color="gray", lw=1, label="baseline")
    if out["d_int"]:
        ax.axvline(out["d_int"], color="tab:green", lw=1, label=f"{out['d_int_name']} = {out['d_int']:,}")
    if len({r["d"] for r in runs}) > 1 and min(r["d"] for r in runs) > 0:
        ax.set_xscale("log", base=2)
    ax.set_xlabel("subspace dimension d")
    ax.set_ylabel(out["metric"])
    ax.set_title(f"{out['model']} on {out['task']['spec']} (D = {out['D']:,})", fontsize=9)
    ax.legend(fontsize=7)
    fig.tight_layout()
    try:
        with OutputFile(path, force, inputs) as f:
            fig.savefig(str(f.path), format="png", metadata={"Software": f"{PNG_SOFTWARE} {__version__}"})
            f.commit()
    finally:
        plt.close(fig)
