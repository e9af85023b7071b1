"""The run folders ``mae report`` reads (``results/runs/<tier>/<dataset>/<point>/seed<k>/``)
and the files it owns: what is a run, what is skipped and named, what is removed."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from .ablate import slug


# What a run's metrics.json must hold for its table rows (mae.report._flatten reads these).
RECORD = {"metrics": (), "config": ("model", "train", "eval"), "data": ("train",),
          "provenance": ("git_commit", "git_dirty", "utc_time", "device_name", "versions"),
          "seed": None, "wall_time_s": None}


def collect_runs(results: Path, tier: dict[str, Any], log=print) -> tuple[dict, dict, list]:
    """metrics.json of every complete run of a tier by run folder (relative, POSIX); the tier's
    datasets by folder name; and the folders skipped, each named in the log: a dataset folder
    that is not one of the tier's, a run folder not named ``seed<k>`` (a copy), a metrics.json
    that cannot be read or lacks what a table needs. Folders moved aside (``stale-*``) and runs
    without metrics.json (failed, or not finished) are not runs, and not skipped."""
    datasets = {slug(name): name for name in tier["datasets"]}
    runs, skipped = {}, []

    def skip(folder: Path, why: str) -> None:
        log(f"{folder}: skipped, {why}")
        skipped.append(folder)

    for folder in sorted(p for p in (results / "runs" / tier["name"]).iterdir() if p.is_dir()):
        if folder.name not in datasets:
            skip(folder, f"not a dataset of tier {tier['name']!r} ({', '.join(datasets)})")
            continue
        for path in sorted(folder.glob("*/*/metrics.json")):
            if re.fullmatch(r"stale-seed\d+-[0-9T]+", path.parent.name):
                continue
            if not re.fullmatch(r"seed(0|[1-9][0-9]*)", path.parent.name):
                skip(path.parent, "a run folder is named seed<k> (is this a copy?)")
                continue
            try:
                record = json.loads(path.read_text())
            except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
                skip(path.parent, f"its metrics.json cannot be read ({e})")
                continue
            missing = [k for k, sub in RECORD.items() if not isinstance(record, dict)
                       or k not in record or not all(isinstance(record[k], dict) and s in record[k]
                                                     for s in sub or ())]
            if missing:
                skip(path.parent, f"its metrics.json lacks {', '.join(missing)}")
                continue
            runs[path.parent.relative_to(results).as_posix()] = with_earlier_attempts(
                record, path.parent / "train" / "pretrain_metrics.json")
    return runs, datasets, skipped


def with_earlier_attempts(record: dict[str, Any], train_record: Path) -> dict[str, Any]:
    """A point that was stopped and resumed, recorded before ablation.ipynb counted the attempts
    before its last resume (its metrics.json has no ``resumed_at_step``): its training record
    does count them, so its pre-training time is taken from there and the point's totals grow by
    the difference. Other records are returned as they are."""
    if "resumed_at_step" in record or not train_record.is_file():
        return record
    try:
        train = json.loads(train_record.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return record
    if not isinstance(train, dict) or not train.get("resumed_at_step"):
        return record
    metrics, record = dict(record["metrics"]), dict(record)
    for key in ("wall_time_s", "cpu_time_s"):
        own, carried = metrics.get(f"pretrain_{key}"), train.get(key)
        if own is None or carried is None or carried <= own:
            continue
        metrics[f"pretrain_{key}"] = carried
        if key in record:
            record[key] += carried - own
    record["metrics"] = metrics
    return record


def remove_others(results: Path, sweeps: list[str], written: list[Path], log=print) -> None:
    """Remove the report's files (``<sweep>-*`` tables and figures) it did not write now."""
    for folder, suffixes in (("tables", (".csv", ".md")), ("figures", (".png",))):
        if not (results / folder).is_dir():
            continue
        for path in sorted((results / folder).iterdir()):
            if (path.is_file() and path.suffix in suffixes and path not in written
                    and any(path.name.startswith(f"{sweep}-") for sweep in sweeps)):
                path.unlink()
                log(f"{path}: removed, its runs are gone or stale")
