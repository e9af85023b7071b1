"""bench.py's report: the run's header, the ratio lines and the .csv / .md tables (speedups.py
shares the output folder and the device's file name)."""

from __future__ import annotations

import csv
import datetime as dt
import io
import re
import sys
import tempfile
from importlib import metadata
from pathlib import Path

import torch

from common import MATCHED, ROOT, VITL, paired_ratio
from mae.provenance import device_name, git_state, versions, write_text_atomic

RESULTS = ROOT / "results" / "benchmarks"
# Smoke runs (numbers meaningless) stay out of the committed results.
SMOKE_OUT = Path(tempfile.gettempdir()) / "mae-bench-smoke"


def output_folder(out: Path | None, smoke: bool) -> Path:
    """The folder a run writes to: ``--out`` if given, else results/benchmarks (smoke runs: a
    temporary folder)."""
    return out if out is not None else SMOKE_OUT if smoke else RESULTS


def device_slug(device: torch.device) -> str:
    if device.type == "cuda":
        return "cuda-" + re.sub(r"[^a-z0-9]+", "-", torch.cuda.get_device_name(device).lower()).strip("-")
    return f"cpu-{torch.get_num_threads()}threads"


def write_markdown(lines: list[str], out: Path | None, smoke: bool, device: torch.device,
                   kind: str) -> Path:
    """Write a benchmark's lines to ``<device>[-smoke]-<kind>.md`` in its folder (see
    `output_folder`) and say where."""
    slug = device_slug(device) + ("-smoke" if smoke else "")
    path = output_folder(out, smoke) / f"{slug}-{kind}.md"
    write_text_atomic(path, "\n".join(lines) + "\n")
    print(f"wrote {path}")
    return path


def run_header(device: torch.device, amps: list[torch.dtype | None], impls: list[str],
               argv: list[str] | None) -> dict:
    """Machine, precisions, date, versions, git commit and command of this run."""
    v = versions()
    return {
        "machine": device_name(str(device)),
        "device": str(device),
        "precision": ", ".join("bf16 autocast" if a == torch.bfloat16
                               else str(a or torch.float32).replace("torch.", "") for a in amps),
        "date": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "versions": ", ".join(f"{k} {v[k]}" for k in ("python", "torch", "mae") if k in v)
        + "".join(f", {m} {metadata.version(m)}" for m in ("transformers", "vit-pytorch")
                  if m in impls),
        "git commit": "{git_commit}{dirty}".format(
            **git_state(), dirty=" (uncommitted changes)" if git_state()["git_dirty"] else ""),
        "command": "python benchmarks/bench.py " + " ".join(argv if argv is not None else sys.argv[1:]),
    }


# ----------------------------------------------------------------------------- ratios
def ratio_line(ours: dict, peer: dict, note: str | None = None) -> tuple[str, bool, bool]:
    """ours / peer in images/s, whether it is above 1 by more than its spread, and whether it is
    below 1 by more than its spread.
    With a ``note`` the line is for information: the note replaces the verdict.

    The steps were interleaved, so round i holds one step of each: the ratio is the median of
    the per-round ratios (a slow drift of the machine's speed cancels within a round) and its
    spread the half interquartile range of those ratios. Without per-round times (rows read
    back from a file) it falls back to the ratio of medians with both spreads added.
    """
    a, b = ours.get("step_times"), peer.get("step_times")
    if a and b and len(a) == len(b):
        r, spread = paired_ratio(a, b)
        how = "paired per round"
    else:
        r = ours["images_per_s"] / peer["images_per_s"]
        spread = r * (ours["spread"] / ours["images_per_s"] + peer["spread"] / peer["images_per_s"])
        how = "both spreads added"
    ahead, slower = r - 1 > spread, 1 - r > spread
    verdict = (f" ({note})" if note else "" if ahead else
               "  <- slower by more than the spread" if slower else
               "  <- not ahead by more than the spread")
    return (f"{ours['shape']}: {ours['impl']} / {peer['impl']} = {r:.2f}x (+/- {spread:.2f}, "
            f"{how}){verdict}"), ahead, slower


def ratio_lines(rows: list[dict], shapes: list[str], impls: list[str],
                compile_modes: list[bool], pipe: dict | None) -> list[str]:
    """The report's closing lines: mae over each peer at its architecture and equal precision, the
    same at each library's default, the achieved share of the matmul rate and the step's overhead
    over its own matmuls, the mask-token encoder's cost, the data pipeline's headroom."""
    ratios, ahead_all, not_slower = [], True, True
    precisions = list(dict.fromkeys(r["precision"] for r in rows if r["section"] == "train_step"))
    by = {(r["section"], r["shape"], r["impl"], r.get("precision")): r for r in rows}
    for prec in precisions:
        for name in shapes:
            for comp in compile_modes:
                suffix = " +compile" if comp else ""
                for peer in [i for i in impls if i != "mae"] if "mae" in impls else []:
                    ours = by.get(("train_step", name, MATCHED[peer] + suffix, prec))
                    other = by.get(("train_step", name, peer + suffix, prec))
                    if ours and other:
                        line, ahead, slower = ratio_line(ours, other)
                        ratios.append(f"[{prec}] {line}")
                        ahead_all &= ahead
                        not_slower &= not slower
                ours = by.get(("train_step", name, "mae" + suffix, prec))
                other = by.get(("train_step", name, "vit-pytorch" + suffix, prec))
                if ours and other:  # for information: not the same architecture
                    ratios.append(f"[{prec}] " + ratio_line(
                        ours, other, "mae with its CLS token: one more token per sequence than "
                        "vit-pytorch; not counted")[0])
    for name in shapes:  # what a user gets without flags (rows from different rounds)
        defaults = {r["impl"]: r for r in rows if r.get("library_default") and r["shape"] == name}
        for peer in [i for i in impls if i != "mae"]:
            ours, other = defaults.get(MATCHED[peer]), defaults.get(peer)
            if ours and other:
                line = ratio_line(unpaired(ours), unpaired(other), "each library's default: "
                                  f"mae {ours['precision']}, {peer} {other['precision']}")[0]
                ratios.append(f"[defaults] {line}")
    for prec in precisions:
        for name in shapes:
            r = by.get(("train_step", name, "mae", prec))
            if r:
                ratios.append(f"[{prec}] {name}: achieved {r['achieved_gflops']:.1f} GFLOP/s = "
                              f"{r['pct_of_peak']:.1f}% of the {prec} matmul rate measured between "
                              f"its steps ({r['peak_gflops']:.0f} GFLOP/s)")
            c = by.get(("matmul_ceiling", name, "mae", prec))
            if r and c:
                ratios.append(f"[{prec}] {name}: its own matmuls alone run at "
                              f"{c['achieved_gflops']:.1f} GFLOP/s = {c['pct_of_peak']:.1f}% of the "
                              f"matmul rate (the ceiling); the step takes {c['overhead']:.2f}x the "
                              f"time of its matmuls (overhead)")
    vis = next((r for r in rows if r["section"] == "encoder_variant"
                and r["impl"] == "mae visible-only"), None)
    tok = next((r for r in rows if r["section"] == "encoder_variant"
                and r["impl"] == "mae mask tokens"), None)
    if vis and tok:
        ratios.append(f"{VITL.name}: visible-only / mask-token encoder step = "
                      f"{vis['images_per_s'] / tok['images_per_s']:.2f}x wall clock; analytic "
                      f"FLOPs ratio {tok['step_gflop_per_image'] / vis['step_gflop_per_image']:.2f}x "
                      f"(step), {tok['encoder_gflop_per_image'] / vis['encoder_gflop_per_image']:.2f}x "
                      f"(encoder)")
    if pipe:
        for name in shapes:
            r = by.get(("train_step", name, "mae", precisions[0] if precisions else None))
            if r:
                ratios.append(f"data pipeline / {name} train step = "
                              f"{pipe['images_per_s'] / r['images_per_s']:.0f}x")
    if len(impls) > 1:
        ratios.append("mae ahead of every peer by more than the spread: "
                      + ("yes" if ahead_all else "NO"))
        ratios.append("mae not slower than any peer by more than the spread, at equal precision: "
                      + ("yes" if not_slower else "NO"))
    return ratios


def unpaired(row: dict) -> dict:
    """A row without its per-round times: rows measured in different rounds are not paired."""
    return {k: v for k, v in row.items() if k != "step_times"}


# ----------------------------------------------------------------------------- tables
COLUMNS = ["section", "shape", "impl", "precision", "library_default", "batch", "params",
           "images_per_s", "spread", "step_gflop_per_image", "encoder_gflop_per_image",
           "achieved_gflops", "peak_gflops", "pct_of_peak", "overhead", "peak_mem_mib"]


def fmt(value, digits: int = 1) -> str:
    if value is None or value == "":
        return ""
    if isinstance(value, float):
        return f"{value:,.{digits}f}"
    if isinstance(value, int):
        return f"{value:,}"
    return str(value)


def write_report(rows: list[dict], ratios: list[str], header: dict, out_dir: Path, slug: str) -> Path:
    out_dir.mkdir(parents=True, exist_ok=True)
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=COLUMNS, extrasaction="ignore", lineterminator="\n")
    w.writeheader()
    for r in rows:
        w.writerow({k: (round(v, 4) if isinstance(v, float) else v) for k, v in r.items()})
    write_text_atomic(out_dir / f"{slug}.csv", buf.getvalue())

    lines = [f"# Benchmarks: {header['machine']}", ""]
    lines += [f"- {k}: {v}" for k, v in header.items() if k != "machine"]
    lines += [""] + """\
Images/s are medians of repeated steps (implementations interleaved, one step of
each per round, the order rotating from round to round); +/- is half the
interquartile range. A ratio below is the median of the per-round ratios of step
times, +/- half their interquartile range. vit-pytorch's MAE has no CLS token: it is
compared with `mae no-CLS`, mae built the same way (`cls_token=False`); transformers
with `mae`. GFLOP/image are analytic, for the architecture the row builds (`mae.flops`:
a step = 3 forward passes, counted as mae's training step runs them: the decoder's last
block and pixel head on hidden patches only, its first block's mask-token projection
once per batch); % of peak compares the achieved rate with the median rate of a matmul
of the peak's size and precision timed between the rounds of the same steps. A ceiling
row is mae's step reduced to its own matrix products (captured at their shapes and
strides, attention's as batched matmuls, replayed alone): the most a step of this shape
could reach if everything else took no time; "step / its matmuls" is the step's time over
theirs, its overhead. "(default)" marks what each library gives without flags (mae's
precision auto, the peers' float32). Peak MiB (first precision only): on CPU, the resident memory
that two train steps add in a fresh process beyond the model and the batch
(activations, gradients, optimizer state); on CUDA, the caching allocator's peak.
""".splitlines() + [""]
    lines += md_tables(rows)
    lines += ["", "## Ratios", ""] + [f"- {r}" for r in ratios] + [""]
    md = out_dir / f"{slug}.md"
    write_text_atomic(md, "\n".join(lines))
    return md


# Each table of the .md: its title, the rows' sections, and (heading, cell) columns.
TABLES = [
    ("Train steps", ("train_step",), [
        ("shape", lambda r: r["shape"]), ("precision", lambda r: r["precision"]),
        ("impl", lambda r: r["impl"] + (" (default)" if r.get("library_default") else "")),
        ("batch", lambda r: fmt(r.get("batch"))), ("images/s", lambda r: fmt(r["images_per_s"])),
        ("+/-", lambda r: fmt(r["spread"])), ("GFLOP/s", lambda r: fmt(r["achieved_gflops"])),
        ("% of peak", lambda r: fmt(r["pct_of_peak"])),
        ("peak MiB", lambda r: fmt(r.get("peak_mem_mib"), 0))]),
    ("Models and FLOPs", ("train_step",), [
        ("shape", lambda r: r["shape"]), ("impl", lambda r: r["impl"]),
        ("trainable params", lambda r: fmt(r.get("params"))),
        ("GFLOP/image", lambda r: fmt(r.get("step_gflop_per_image"), 3))]),
    ("Matmul peak and ceiling", ("matmul_peak", "matmul_ceiling"), [
        ("row", lambda r: r["section"].replace("matmul_", "")), ("shape", lambda r: r["shape"]),
        ("precision", lambda r: r["precision"]),
        ("matmul GFLOP/s", lambda r: fmt(r["achieved_gflops"])),
        ("% of peak", lambda r: fmt(r["pct_of_peak"])),
        ("step / its matmuls", lambda r: fmt(r.get("overhead"), 2))]),
    ("Encoder variants and data pipeline", ("encoder_variant", "data_pipeline"), [
        ("shape", lambda r: r["shape"]), ("impl", lambda r: r["impl"]),
        ("batch", lambda r: fmt(r.get("batch"))), ("images/s", lambda r: fmt(r["images_per_s"])),
        ("+/-", lambda r: fmt(r["spread"])),
        ("GFLOP/image", lambda r: fmt(r.get("step_gflop_per_image"), 3)),
        ("% of peak", lambda r: fmt(r.get("pct_of_peak"))),
        ("peak MiB", lambda r: fmt(r.get("peak_mem_mib"), 0))]),
]


def md_tables(rows: list[dict]) -> list[str]:
    """The rows as a few narrow tables (at most 9 columns: they fit a book page)."""
    lines = []
    for title, sections, cols in TABLES:
        picked = [r for r in rows if r["section"] in sections]
        if title == "Models and FLOPs":  # one line per architecture, not per precision
            picked = list({(r["shape"], r["impl"]): r for r in picked}.values())
        if not picked:
            continue
        lines += [f"### {title}", "", "| " + " | ".join(c for c, _ in cols) + " |",
                  "|" + "---|" * len(cols)]
        lines += ["| " + " | ".join(cell(r) for _, cell in cols) + " |" for r in picked]
        lines.append("")
    return lines
