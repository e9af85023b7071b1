"""The report's figures: one per sweep (ours beside the paper's, each on its own axes) and one
summary per tier and dataset (every setting's difference from the default, with the spread
rule's bar and the paper's difference beside it). Drawn on a `Figure` with an Agg canvas, not
pyplot, so that the caller's matplotlib backend and figures are left alone; saved without
metadata, so that a rerun gives the same bytes."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

from .files import write_bytes_atomic

OURS = (("probe_top1", "linear probe", "o", "C0"), ("knn_top1", "kNN", "s", "C1"),
        ("finetune_top1", "fine-tune", "^", "C2"))


def _new_figure(width: float, height: float, panels: int = 1, **kw):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height))
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, panels, squeeze=False, **kw)[0]
    return fig, axes


def _save(fig, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    png = io.BytesIO()
    fig.savefig(png, dpi=100, format="png", metadata={"Software": None})
    return write_bytes_atomic(path, png.getvalue())


def _short(label: Any) -> str:
    return str(label).split("=")[-1]


def sweep_figure(path: Path, spec: dict[str, Any], tier: str, dataset: str,
                 rows: list[dict[str, Any]]) -> Path:
    """Ours (probe, kNN, fine-tune; mean with the seeds' std as error bars; the random-init
    baseline as a dotted line with its std as a band) on the left, the paper's numbers on their
    own axes on the right. A numeric sweep is drawn with lines on a numeric axis (log 2 where the
    values double), a categorical one (sampling, target) as dots."""
    done = [r for r in rows if r["seeds"] and not r.get("baseline")]
    baseline = next((r for r in rows if r.get("baseline")), None)
    numeric = all(isinstance(r["value"], (int, float)) and not isinstance(r["value"], bool)
                  for r in done)
    x = [r["value"] for r in done] if numeric else list(range(len(done)))
    paper = [(i, r["paper"]) for i, r in zip(x, done) if r["paper"].get("lin") is not None]
    fig, axes = _new_figure(8.5 if paper else 5.5, 3.8, 2 if paper else 1)
    ax = axes[0]
    for k, (metric, name, marker, color) in enumerate(OURS):
        pts = [(i, r[metric]) for i, r in zip(x, done) if r[metric]]
        if not pts:
            continue
        shift = 0 if numeric else (k - 0.5) * 0.12  # categorical: side by side, not on top
        ax.errorbar([p[0] + shift for p in pts], [p[1][0] for p in pts], color=color,
                    yerr=[p[1][1] for p in pts], marker=marker, capsize=3, label=name,
                    ls="-" if numeric else "none")
        if baseline and baseline[metric]:  # random init: a line, its seeds' std a band
            mean, std = baseline[metric]
            ax.axhline(mean, color=color, ls=":", lw=1.2,
                       label=f"{name}, random init ({baseline['seeds']} seeds)")
            ax.axhspan(mean - std, mean + std, color=color, alpha=0.08, lw=0)
    _x_axis(ax, x, done, numeric, spec)
    ax.set_ylabel(f"top-1 on {dataset} test (%)")
    ax.set_title(f"ours: {tier} tier, {dataset}", fontsize=9)
    ax.legend(fontsize=7, frameon=False)
    if paper:
        pax = axes[1]
        for key, name, marker, color in (("lin", "linear probe", "x", "k"),
                                         ("ft", "fine-tune", "+", "0.5")):
            pts = [(i, p[key]) for i, p in paper if p.get(key) is not None]
            if pts:
                pax.plot([p[0] for p in pts], [p[1] for p in pts], marker=marker, color=color,
                         ls="--" if numeric else "none", label=name)
        _x_axis(pax, x, done, numeric, spec)
        pax.set_ylabel("ImageNet-1K top-1 (%)")
        pax.set_title("paper: " + spec.get("paper_source", "").split(";")[0], fontsize=8)
        pax.legend(fontsize=7, frameon=False)
    fig.suptitle(spec["title"], fontsize=10)
    fig.tight_layout()
    return _save(fig, path)


def _x_axis(ax, x, done, numeric: bool, spec: dict[str, Any]) -> None:
    if numeric and all(isinstance(v, int) and v > 0 for v in x) and max(x) >= 8 * min(x):
        ax.set_xscale("log", base=2)  # depths / widths that double
        ax.minorticks_off()
    ax.set_xticks(x)
    ax.set_xticklabels([_short(r["label"]) for r in done], fontsize=8)
    ax.set_xlabel(spec.get("parameter", "setting"))
    if not numeric:
        ax.set_xlim(-0.5, len(x) - 0.5)


def summary_figure(path: Path, tier: str, dataset: str,
                   sweeps: list[tuple[dict[str, Any], list[dict[str, Any]]]]) -> Path:
    """One line per setting of every sweep (and random init): its difference from the default
    in probe and kNN points, the error bar the spread rule's bar (twice the larger std: a bar
    that does not reach zero is a difference beyond the spread), and the paper's linear-probe
    difference between the same two settings (ImageNet-1K, ViT-L) as a cross."""
    lines = []  # (label, row, paper difference or None)
    for spec, rows in sweeps:
        ref = next((r for r in rows if r["point"] == "default"), None)
        ref_lin = (ref or {}).get("paper", {}).get("lin")
        for r in rows:
            if r["point"] == "default" or r["d_probe_top1"] is None:
                continue
            if r.get("baseline"):
                if any(line[0] == "random init" for line in lines):
                    continue
                lines.append(("random init", r, None))
                continue
            lin = r["paper"].get("lin")
            lines.append((f"{spec['title'].lower()}: {_short(r['label'])}", r,
                          None if lin is None or ref_lin is None else lin - ref_lin))
    lines.sort(key=lambda line: line[0] == "random init")  # the baseline last, apart
    fig, (ax,) = _new_figure(7.5, 0.32 * len(lines) + 2.0)
    y = list(range(len(lines)))[::-1]
    for k, (metric, name, marker, color) in enumerate(OURS[:2]):
        pts = [(yy, r[f"d_{metric}"], r[f"bar_{metric}"]) for yy, (_, r, _) in zip(y, lines)
               if r[f"d_{metric}"] is not None]
        ax.errorbar([p[1] for p in pts], [p[0] + (0.5 - k) * 0.3 for p in pts],
                    xerr=[p[2] or 0 for p in pts], marker=marker, color=color, ls="none",
                    capsize=2, ms=4, label=f"ours, {name} (bar: the spread rule)")
    paper = [(yy, d) for yy, (_, _, d) in zip(y, lines) if d is not None]
    if paper:
        ax.plot([p[1] for p in paper], [p[0] for p in paper], "kx", ms=6,
                label="paper, linear probe (ImageNet-1K, ViT-L)")
    ax.axvline(0, color="k", lw=0.8)
    ax.set_yticks(y)
    ax.set_yticklabels([label for label, _, _ in lines], fontsize=8)
    ax.set_xlabel("difference from the default setting (top-1 points)")
    ax.set_title(f"Every setting against the default: {tier} tier, {dataset}", fontsize=10)
    handles, labels = ax.get_legend_handles_labels()
    fig.legend(handles, labels, fontsize=7, frameon=False, loc="lower center", ncol=2)
    fig.tight_layout(rect=(0, 0.5 / fig.get_figheight(), 1, 1))  # room for the legend below
    return _save(fig, path)


def comparison_figure(path: Path, spec: dict[str, Any],
                      sections: dict[str, list[dict[str, Any]]]) -> Path:
    """Two tiers side by side (`mae.compare`): each setting's difference from its own tier's
    default in both tiers, one panel per metric. The error bar is the spread rule's bar (twice
    the larger std): a point whose bar does not reach zero differs beyond the spread."""
    import textwrap

    settings = [r for rows in sections.values() for r in rows if r["point"] != "default"]
    fig, axes = _new_figure(max(5.0, 1.1 * len(settings) + 2), 3.6, 2, sharey=True)
    for ax, (metric, name, _, _) in zip(axes, OURS):
        for i, tier in enumerate((spec["base"], spec["other"])):
            pts = [(j + (i - 0.5) * 0.25, r[f"{metric}_vs_default"][i],
                    r[f"{metric}_vs_default_bar"][i])
                   for j, r in enumerate(settings) if r[f"{metric}_vs_default"][i] is not None]
            if pts:
                ax.errorbar([p[0] for p in pts], [p[1] for p in pts], capsize=3, ls="none",
                            yerr=[p[2] or 0 for p in pts], marker="os"[i], color=f"C{i}",
                            label=tier)
        ax.axhline(0, color="k", lw=0.8)
        ax.set_xticks(range(len(settings)))
        # "decoder\nlayers\n8": narrow enough for three or more settings side by side
        ax.set_xticklabels([r["setting"].replace("=", "\n").replace("_", "\n") for r in settings],
                           fontsize=8)
        ax.set_title(name, fontsize=10)
    axes[0].set_ylabel("difference from the tier's default (points)")
    axes[0].legend(fontsize=8, frameon=False)
    fig.suptitle(textwrap.fill(spec["title"], int(fig.get_figwidth() * 11)), fontsize=10)
    fig.tight_layout()
    return _save(fig, path)
