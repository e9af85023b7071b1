"""Results tables and figures from the ablation run folders: ``python -m mae report``.

Each sweep at each tier and dataset becomes ``results/tables/<sweep>-<tier>[-<dataset>].csv``
and ``.md`` (mean and sample std over seeds, the paper's numbers beside), a ``-runs.csv`` with
every run's provenance, and ``results/figures/<sweep>-<tier>[-<dataset>].png``. Deterministic: a
rerun on the same run folders gives byte-identical files.
"""

from __future__ import annotations

import io
from pathlib import Path

from .ablate import load_sweep, load_tier, load_yaml, project_root, sweep_names
from .compare import write_comparisons
from .config import ConfigError
from .figures import summary_figure, sweep_figure
from .provenance import write_text_atomic
from .runfolders import collect_runs, remove_others
from .tally import (SPREAD_RULE, beyond_spread, cell, compare_with_default, lent, lent_note,
                    signed, sweep_rows)

__all__ = ["SPREAD_RULE", "beyond_spread", "report"]


def report(results: Path | None = None, root: Path | None = None, log=print) -> list[Path]:
    """Turn run folders into ``results/tables/<sweep>-<tier>.{csv,md}`` (+ ``-runs.csv``) and
    ``results/figures/<sweep>-<tier>.png``; deterministic, so a rerun gives identical bytes.

    The tables and figures of a sweep (files named ``<sweep>-*``) whose runs are gone or stale
    are removed, so that every file there is what the runs give now. A sweep or tier file that
    cannot be read, or a malformed run folder, is named and skipped; the rest is written, then
    ConfigError says what was skipped (and while a file cannot be read, nothing is removed)."""
    root = root or project_root()
    results = Path(results) if results else root / "results"
    if not (results / "runs").is_dir():
        raise ConfigError(f"{results} " + ("holds no runs/ folder" if results.is_dir() else
                                           "does not exist")
                          + ": pass --results the folder `mae ablate --results` wrote to "
                            "(the one holding runs/; default results/).")
    written, failed, skipped, tier_runs, summaries = [], [], [], {}, {}
    known = load_yaml(root / "ablations" / "tiers.yaml") or {}
    for tier_dir in sorted(p for p in (results / "runs").iterdir() if p.is_dir()):
        tier = tier_dir.name
        if tier not in known:  # e.g. runs/reader/: records of other commands, not a tier's runs
            if any(tier_dir.glob("*/*/seed*/metrics.json")):
                log(f"{tier_dir}: skipped, not a tier of ablations/tiers.yaml")
                skipped.append(tier_dir)
            continue
        try:
            runs, datasets, bad = collect_runs(results, load_tier(root, tier), log)
        except ConfigError as e:
            log(f"tier {tier}: skipped, {e}")
            failed.append(f"tier {tier}")
            continue
        skipped += bad
        tier_runs[tier] = runs
        for sweep in sweep_names(root):
            try:
                spec = load_sweep(root, sweep)
            except ConfigError as e:  # one broken sweep file does not stop the others
                log(f"{sweep}: skipped, {e}")
                failed.append(sweep)
                continue
            if tier not in spec["tiers"]:
                continue
            for folder in sorted({r.split("/")[2] for r in runs}):
                dataset = datasets[folder]
                rows, run_rows = sweep_rows(root, sweep, tier, dataset, runs, results, log)
                # A sweep gets a table where one of its own points ran, not only the shared ones.
                if not any(r["seeds"] for r in rows if r["point"] != "default"):
                    continue
                if sweep != "random_init" and "random_init" in sweep_names(root) and tier in \
                        load_sweep(root, "random_init")["tiers"]:
                    base, base_runs = sweep_rows(root, "random_init", tier, dataset, runs,
                                                  results, log)
                    if base and base[0]["seeds"]:  # the baseline, as the table's last row
                        rows.append({**base[0], "baseline": True})
                        run_rows += base_runs
                compare_with_default(rows)
                stem = f"{sweep}-{tier}" + ("" if folder == "cifar10" else f"-{folder}")
                written += _write_tables(results, stem, spec, tier, dataset, rows, run_rows)
                written.append(sweep_figure(results / "figures" / f"{stem}.png", spec, tier,
                                            dataset, rows))
                summaries.setdefault((tier, folder, dataset), []).append((spec, rows))
                log(f"{stem}: {sum(r['seeds'] for r in rows)} runs")
    for (tier, folder, dataset), sweeps in summaries.items():  # every sweep's settings at once
        stem = f"summary-{tier}" + ("" if folder == "cifar10" else f"-{folder}")
        written.append(summary_figure(results / "figures" / f"{stem}.png", tier, dataset, sweeps))
    written += write_comparisons(root, results, tier_runs, log)
    if not failed:
        remove_others(results, [*sweep_names(root), "compare", "summary"], written, log)
    if failed or skipped:  # the others are written; say which were not
        raise ConfigError(
            f"{len(written)} files written, but "
            + (f"{', '.join(sorted(set(failed)))} could not be read" if failed else "")
            + (" and " if failed and skipped else "")
            + (f"{len(skipped)} run folder{'s were' if len(skipped) > 1 else ' was'} skipped "
               f"(e.g. {skipped[0]})" if skipped else "")
            + " (see above): fix or move them and run report again.")
    return written


def _verdict(row) -> str:
    """'-6.3 / -6.5 (yes / yes)': the differences from the default and the rule's verdicts."""
    if row["d_probe_top1"] is None:
        return "–" if row["point"] != "default" else "(reference)"
    words = {True: "yes", False: "no", None: "n/a"}
    diffs = " / ".join("–" if row[f"d_{m}"] is None else signed(row[f"d_{m}"])
                       for m in ("probe_top1", "knn_top1"))
    verdicts = (row["beyond_probe_top1"], row["beyond_knn_top1"])
    return (f"{diffs} ({words[verdicts[0]]} / {words[verdicts[1]]})"
            + lent(row["seeds"], verdicts))


def _write_tables(results, stem, spec, tier, dataset, rows, run_rows) -> list[Path]:
    import csv

    tables = results / "tables"
    tables.mkdir(parents=True, exist_ok=True)
    has_ft = any(r["finetune_top1"] for r in rows)
    header = ["setting", "seeds", "probe_top1_mean", "probe_top1_std", "knn_top1_mean",
              "knn_top1_std"] + (["finetune_top1_mean", "finetune_top1_std"] if has_ft else []) \
        + ["pretrain_minutes", "cpu_minutes", "final_loss", "probe_minus_default",
           "knn_minus_default", "probe_beyond_spread", "knn_beyond_spread", "paper_lin",
           "paper_ft"]
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(header)

    def number(value, digits=2):
        return "" if value is None else f"{value:.{digits}f}"

    def pair(stat):
        return [f"{stat[0]:.2f}", f"{stat[1]:.2f}"] if stat else ["", ""]

    for r in rows:
        writer.writerow(
            [r["label"], r["seeds"], *pair(r["probe_top1"]), *pair(r["knn_top1"])]
            + (pair(r["finetune_top1"]) if has_ft else [])
            + [number(r["pretrain_wall_time_s"] and r["pretrain_wall_time_s"][0] / 60, 1),
               number(r["cpu_time_s"] and r["cpu_time_s"][0] / 60, 1),
               number(r["pretrain_final_loss"] and r["pretrain_final_loss"][0], 4),
               number(r["d_probe_top1"]), number(r["d_knn_top1"]),
               {True: "yes", False: "no", None: ""}[r["beyond_probe_top1"]],
               {True: "yes", False: "no", None: ""}[r["beyond_knn_top1"]],
               r["paper"].get("lin", ""), r["paper"].get("ft", "")])
    csv_path = tables / f"{stem}.csv"
    write_text_atomic(csv_path, buf.getvalue())

    runs_buf = io.StringIO()
    fields = sorted({k for row in run_rows for k in row}, key=lambda k: (k not in (
        "run", "label", "seed"), k))
    writer = csv.DictWriter(runs_buf, fieldnames=fields, lineterminator="\n")
    writer.writeheader()
    writer.writerows(run_rows)
    runs_path = tables / f"{stem}-runs.csv"
    write_text_atomic(runs_path, runs_buf.getvalue())

    all_runs = [r for row in rows for r in row["runs"]]
    commits = sorted({r["provenance"]["git_commit"][:10]
                      + ("+dirty" if r["provenance"]["git_dirty"] else "") for r in all_runs})
    devices = sorted({r["provenance"]["device_name"] for r in all_runs})
    lines = [f"### {spec['title']} ({tier} tier, {dataset})", "",
             "| setting | seeds | probe (%) | kNN (%) | "
             + ("fine-tune (%) | " if has_ft else "")
             + "− default: probe / kNN (beyond?) | minutes: pre-train / CPU | paper: lin / ft |",
             "|---|---|---|---|" + ("---|" if has_ft else "") + "---|---|---|"]
    for r in rows:
        wall, cpu = r["pretrain_wall_time_s"], r["cpu_time_s"]
        wall_text = f"{wall[0] / 60:.1f}" if wall else ("none" if r.get("baseline") else "–")
        cpu_text = f"{cpu[0] / 60:.1f}" if cpu else "–"
        lines.append(
            f"| {r['label']} | {r['seeds']} | {cell(r['probe_top1'])} | {cell(r['knn_top1'])} | "
            + (f"{cell(r['finetune_top1'])} | " if has_ft else "")
            + f"{_verdict(r)} | {wall_text} / {cpu_text} "
            + f"| {r['paper'].get('lin', '–')} / {r['paper'].get('ft', '–')} |")
    baseline = any(r.get("baseline") for r in rows)
    lines += ["", f"Ours: mean ± sample std over seeds; probe = linear probe, − default = "
              f"difference from the default point, with the rule's verdict. {SPREAD_RULE}"
              + (" The last row is the same encoder at its random initialisation, evaluated "
                 "the same way, without pre-training." if baseline else "")
              + " Minutes: wall-clock minutes of pre-training / CPU-minutes of the whole point "
                "(pre-training and evaluation, mean over the seeds that recorded it).",
              *lent_note(lines),
              f"Paper: {spec['paper_source'].strip().rstrip('.')}.",
              f"Runs: {len(all_runs)} (per-run provenance in `{runs_path.name}`), "
              f"commits {', '.join(commits)}; {'; '.join(devices)}.", ""]
    md_path = tables / f"{stem}.md"
    write_text_atomic(md_path, "\n".join(lines))
    return [csv_path, runs_path, md_path]
