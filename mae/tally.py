"""The numbers of a results table: a sweep's runs gathered into one row per point (mean and sample
std over seeds), each row's difference from the default point, and the spread rule that says
whether a difference is more than the seeds' own spread. `mae.report` writes them as tables and
figures; `mae.compare` sets two tiers' rows side by side."""

from __future__ import annotations

from typing import Any

from .ablate import Point, slug, stale_keys, sweep_points


SPREAD_RULE = (
    "A setting differs from the default *beyond the spread* when the difference of their means is "
    "more than twice the larger of their sample standard deviations over seeds (a setting run "
    "with one seed is given the default point's); the default needs at least two seeds."
)


LENT = "\u2020"
LENT_NOTE = (f"{LENT} One seed, so no spread of its own: the verdict uses the spread of the point "
             "it is compared with, and a second seed can overturn it.")


def lent(seeds: int, verdicts) -> str:
    """`LENT` where a verdict stands on one seed (its bar borrowed from the reference), else ''."""
    return LENT if seeds == 1 and any(v is not None for v in verdicts) else ""


def lent_note(lines) -> list[str]:
    """`LENT_NOTE`, as a list of one line, where some line of a table carries `LENT`; else []."""
    return [LENT_NOTE] if any(LENT in line for line in lines) else []


def spread_bar(stat, seeds: int, ref, ref_seeds: int) -> float | None:
    """How far apart two means must be to differ beyond the spread (`SPREAD_RULE`): twice the
    larger std. None where the rule cannot be applied."""
    if stat is None or ref is None or ref_seeds < 2 or seeds < 1:
        return None
    return 2 * max(stat[1] if seeds > 1 else ref[1], ref[1])


def beyond_spread(stat, seeds: int, ref, ref_seeds: int) -> bool | None:
    """The stated rule (`SPREAD_RULE`) for one metric: None where it cannot be applied."""
    bar = spread_bar(stat, seeds, ref, ref_seeds)
    return None if bar is None else abs(stat[0] - ref[0]) > bar


def signed(value: float) -> str:
    """'+1.2', '-0.4', and '0.0' for what rounds to zero (never '-0.0')."""
    return "0.0" if round(value, 1) == 0 else f"{value:+.1f}"


def cell(stat, digits: int = 1) -> str:
    """'50.8 ± 0.6' (the mean alone when the std is 0, '' for no value). Non-breaking spaces: a
    narrow table column wraps between a cell's words, never inside '50.8 ± 0.6'."""
    if stat is None:
        return ""
    mean, std = stat
    return f"{mean:.{digits}f}" if std == 0 else f"{mean:.{digits}f}\u00a0±\u00a0{std:.{digits}f}"


def stats(values: list[float]) -> tuple[float, float]:
    n = len(values)
    mean = sum(values) / n
    std = (sum((v - mean) ** 2 for v in values) / (n - 1)) ** 0.5 if n > 1 else 0.0
    return mean, std


def sweep_rows(root, sweep, tier, dataset, runs, results, log=print):
    """One row per point of a sweep at a tier and dataset (its runs, and per metric the mean and
    sample std over seeds), and one flat row per run for the provenance table."""
    rows, run_rows = [], []
    # Every seed that ran counts, not only the tier's: `ablate --seeds 1 2` adds seeds to a point.
    prefix = f"runs/{tier}/{slug(dataset)}/"
    seeds = {int(key.rsplit("/seed", 1)[1]) for key in runs if key.startswith(prefix)}
    seeds |= {p.seed for p in sweep_points(root, sweep, tier, dataset, results=results)}
    for point in sweep_points(root, sweep, tier, dataset, seeds=sorted(seeds), results=results):
        key = point.run_dir.relative_to(results).as_posix()
        if not any(r["label"] == point.label for r in rows):
            rows.append({"label": point.label, "value": point.value, "point": point.name,
                         "paper": point.paper, "runs": []})
        if key in runs and stale_keys(point, runs[key]):
            log(f"{key}: left out, run with other configs than its tier now resolves to "
                f"({'; '.join(stale_keys(point, runs[key])[:3])}); rerun it with --rerun-stale")
        elif key in runs:
            next(r for r in rows if r["label"] == point.label)["runs"].append(runs[key])
            run_rows.append(flatten(key, point, runs[key]))
    for row in rows:
        row["seeds"] = len(row["runs"])
        for metric in ("probe_top1", "knn_top1", "finetune_top1", "pretrain_wall_time_s",
                       "pretrain_final_loss"):
            values = [r["metrics"][metric] for r in row["runs"] if metric in r["metrics"]]
            row[metric] = stats(values) if values else None
        # CPU time of the whole point (pre-training and evaluation), where the run recorded it.
        cpu = [r["cpu_time_s"] for r in row["runs"] if "cpu_time_s" in r]
        row["cpu_time_s"] = stats(cpu) if cpu else None
    return rows, run_rows


def compare_with_default(rows: list[dict[str, Any]]) -> None:
    """Each row's difference from the default point and the rule's verdict, per metric."""
    ref = next((r for r in rows if r["point"] == "default" and r["seeds"]), None)
    for row in rows:
        for metric in ("probe_top1", "knn_top1"):
            stat = row[metric]
            ok = ref is not None and row is not ref and stat is not None and ref[metric]
            row[f"d_{metric}"] = stat[0] - ref[metric][0] if ok else None
            row[f"beyond_{metric}"] = (beyond_spread(stat, row["seeds"], ref[metric], ref["seeds"])
                                       if ok else None)
            row[f"bar_{metric}"] = (spread_bar(stat, row["seeds"], ref[metric], ref["seeds"])
                                    if ok else None)


def flatten(key: str, point: Point, run: dict[str, Any]) -> dict[str, Any]:
    flat = {"run": key, "label": point.label, "seed": run["seed"]}
    for name, value in sorted(run["metrics"].items()):
        flat[name] = round(value, 4) if isinstance(value, float) else value
    prov = run["provenance"]
    flat.update({"git_commit": prov["git_commit"], "git_dirty": prov["git_dirty"],
                 "utc_time": prov["utc_time"], "device": prov["device_name"],
                 "data_sha256": run["data"]["train"]["sha256"],
                 "wall_time_s": round(run["wall_time_s"], 1)})
    flat.update({f"v_{k}": v for k, v in sorted(prov["versions"].items())})
    for section in ("model", "train", "eval"):
        flat.update({f"{section}.{k}": v for k, v in sorted(run["config"][section].items())})
    return flat
