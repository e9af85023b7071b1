"""Tables that set two tiers side by side (``ablations/comparisons.yaml``): the same points run
under two recipes that differ in one respect, e.g. bf16 against float32 pre-training, or 50 against
8 epochs. Each point's probe and kNN in both tiers, its difference between the tiers with the
spread rule's verdict, and, for a sweep, each setting's difference from its tier's default in both
tiers: does the verdict change with the recipe? Written as ``results/tables/compare-<name>.{csv,md}``
once the second tier has a run of the comparison's points."""

from __future__ import annotations

import csv
import io
from pathlib import Path
from typing import Any

from .ablate import load_tier, load_yaml, sweep_names
from .config import ConfigError, unknown_key_error
from .figures import comparison_figure
from .files import write_text_atomic
from .tally import (beyond_spread, cell, compare_with_default, lent, lent_note, signed,
                    sweep_rows)

METRICS = ("probe_top1", "knn_top1")
WORDS = {True: "yes", False: "no", None: "n/a"}


def comparison_rows(rows_by_tier: dict[str, list[dict[str, Any]]], base: str,
                    other: str) -> list[dict[str, Any]]:
    """One row per point run in both tiers (the report's rows of one sweep, compared with their
    defaults already): means, the other tier minus the base, and both tiers' differences from
    their own default, each with the spread rule's verdict."""
    by_label = {r["label"]: r for r in rows_by_tier[other] if r["seeds"]}
    out = []
    for a in rows_by_tier[base]:
        b = by_label.get(a["label"])
        if not a["seeds"] or b is None or a.get("baseline"):
            continue
        row = {"setting": a["label"], "point": a["point"], "seeds": (a["seeds"], b["seeds"])}
        for m in METRICS:
            row[m] = (a[m], b[m])
            row[f"{m}_change"] = b[m][0] - a[m][0]
            row[f"{m}_change_beyond"] = beyond_spread(b[m], b["seeds"], a[m], a["seeds"])
            row[f"{m}_vs_default"] = (a.get(f"d_{m}"), b.get(f"d_{m}"))
            row[f"{m}_vs_default_beyond"] = (a.get(f"beyond_{m}"), b.get(f"beyond_{m}"))
            row[f"{m}_vs_default_bar"] = (a.get(f"bar_{m}"), b.get(f"bar_{m}"))
        out.append(row)
    return out


def write_comparison(results: Path, name: str, spec: dict[str, Any],
                     sections: dict[str, list[dict[str, Any]]]) -> list[Path]:
    """``compare-<name>.csv`` and ``.md`` from the rows of each sweep (`comparison_rows`)."""
    base, other = spec["base"], spec["other"]
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["sweep", "setting", f"seeds_{base}", f"seeds_{other}"]
               + [f"{m}_{t}" for m in METRICS for t in (base, other)]
               + [f"{m}_{k}" for m in METRICS for k in ("change", "change_beyond_spread")]
               + [f"{m}_minus_default_{t}" for m in METRICS for t in (base, other)]
               + [f"{m}_minus_default_{t}_beyond_spread" for m in METRICS for t in (base, other)])
    lines = [f"### {spec['title']}", "", spec.get("description", "").strip(), "",
             f"| sweep | setting | seeds | probe {base} | probe {other} | kNN {base} | "
             f"kNN {other} | {other} − {base} (beyond?) | vs default, {base} | "
             f"vs default, {other} |", "|" + "---|" * 10]
    for sweep, rows in sections.items():
        for r in rows:
            # 4 decimals, as the runs tables: a reader rounding the csv to one decimal gets
            # the markdown's figure (2 decimals made 2.945 into 2.95, then 3.0 against 2.9)
            w.writerow([sweep, r["setting"], *r["seeds"]]
                       + [round(r[m][i][0], 4) for m in METRICS for i in (0, 1)]
                       + [x for m in METRICS for x in (round(r[f"{m}_change"], 4),
                                                       r[f"{m}_change_beyond"])]
                       + ["" if d is None else round(d, 4)
                          for m in METRICS for d in r[f"{m}_vs_default"]]
                       + ["" if v is None else v
                          for m in METRICS for v in r[f"{m}_vs_default_beyond"]])
            change = " / ".join(signed(r[f"{m}_change"]) for m in METRICS) + " (" + " / ".join(
                WORDS[r[f"{m}_change_beyond"]] for m in METRICS) + ")" + lent(
                r["seeds"][1], [r[f"{m}_change_beyond"] for m in METRICS])
            vs = []
            for i in (0, 1):
                if r["point"] == "default":
                    vs.append("(reference)")
                    continue
                diffs = " / ".join("–" if r[f"{m}_vs_default"][i] is None
                                   else signed(r[f"{m}_vs_default"][i]) for m in METRICS)
                words = " / ".join(WORDS[r[f"{m}_vs_default_beyond"][i]] for m in METRICS)
                vs.append(f"{diffs} ({words})" + lent(
                    r["seeds"][i], [r[f"{m}_vs_default_beyond"][i] for m in METRICS]))
            lines.append(f"| {sweep} | {r['setting']} | {r['seeds'][0]} / {r['seeds'][1]} | "
                         + " | ".join(cell(r[m][i]) for m in METRICS for i in (0, 1))
                         + f" | {change} | {vs[0]} | {vs[1]} |")
    lines += ["", "Probe / kNN top-1 %, mean ± sample std over seeds. Differences are probe / kNN "
              "points, with the spread rule's verdict in brackets (the report's rule: beyond the "
              "spread when the difference of means exceeds twice the larger std)."]
    lines += lent_note(lines) + [""]
    tables = results / "tables"
    tables.mkdir(parents=True, exist_ok=True)
    paths = [tables / f"compare-{name}.csv", tables / f"compare-{name}.md"]
    write_text_atomic(paths[0], buf.getvalue())
    write_text_atomic(paths[1], "\n".join(lines))
    return paths


KEYS = ("title", "description", "base", "other", "sweeps", "dataset")


def comparisons(root: Path) -> dict[str, dict[str, Any]]:
    """ablations/comparisons.yaml, checked: each entry names two tiers and its sweeps."""
    path = root / "ablations" / "comparisons.yaml"
    specs = (load_yaml(path) or {}) if path.is_file() else {}
    for name, spec in specs.items():
        if not isinstance(spec, dict) or not {"title", "base", "other", "sweeps"} <= set(spec):
            raise ConfigError(f"{path}: comparison {name!r} needs title:, base:, other: (two "
                              f"tiers) and sweeps: (a list), got {spec!r}.")
        for key in spec:
            if key not in KEYS:
                raise unknown_key_error(key, list(KEYS), f"comparisons.yaml {name!r} key")
        for tier in (spec["base"], spec["other"]):
            load_tier(root, tier)  # an unknown tier is named, with the nearest one
        for sweep in spec["sweeps"]:
            if sweep not in sweep_names(root):
                raise unknown_key_error(sweep, sweep_names(root), f"sweep of comparison {name!r}")
    return specs


def write_comparisons(root, results, tier_runs, log=print) -> list[Path]:
    """The tables of ablations/comparisons.yaml whose two tiers both have runs (``tier_runs``:
    each tier's runs as `mae.runfolders.collect_runs` gives them)."""
    written = []
    for name, spec in comparisons(root).items():
        if spec["other"] not in tier_runs or spec["base"] not in tier_runs:
            continue
        sections = {}
        for sweep in spec["sweeps"]:
            rows = {}
            for tier in (spec["base"], spec["other"]):
                rows[tier] = sweep_rows(root, sweep, tier, spec.get("dataset", "cifar10"),
                                        tier_runs[tier], results, log)[0]
                compare_with_default(rows[tier])
            sections[sweep] = comparison_rows(rows, spec["base"], spec["other"])
        if any(sections.values()):
            written += write_comparison(results, name, spec, sections)
            if any(r["point"] != "default" for rows in sections.values() for r in rows):
                written.append(comparison_figure(results / "figures" / f"compare-{name}.png",
                                                 spec, sections))
            log(f"compare-{name}: {sum(len(r) for r in sections.values())} settings")
    return written
