"""The ablation suite: sweeps as data, one papermill run per point and seed, resumable.

A sweep (``ablations/<name>.yaml``) lists points: model-field overrides, with the paper's numbers
where it has them. A tier (``ablations/tiers.yaml``) fixes the model preset, the training recipe
and the evaluation. Each (tier, dataset, point, seed) has one run folder,
``results/runs/<tier>/<dataset>/<point>/seed<k>/``, named by the point's differences from the
tier's model, so sweeps share their common point (e.g. 75% masking with the default decoder).
A run is done when its ``metrics.json`` exists; the template notebook writes that file last,
atomically, so an interrupted run is simply run again (its training resumes from its checkpoint).
"""

from __future__ import annotations

import json
import os
import re
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .config import PRESETS, ConfigError, MAEConfig, unknown_key_error
from .recipe import EVAL_EXECUTION_KEYS, EXECUTION_KEYS, EvalConfig, TrainConfig
from .provenance import write_json_atomic
from .specs import check_sweep, check_tier

TEMPLATE = Path("notebooks") / "ablation.ipynb"
SWEPT = ("mask_ratio", "mask_sampling", "decoder_layers", "decoder_dim", "norm_pix_loss",
         "encoder_mask_tokens")


def project_root() -> Path:
    """The repository root: where ablations/ lives (the working directory, or mae's parent)."""
    for candidate in (Path.cwd(), Path(__file__).resolve().parents[1]):
        if (candidate / "ablations" / "tiers.yaml").is_file():
            return candidate
    raise FileNotFoundError("ablations/tiers.yaml not found: run from the repository root.")


def load_yaml(path: Path) -> Any:
    import yaml

    if not path.is_file():
        raise ConfigError(f"{path} does not exist.")
    try:
        return yaml.safe_load(path.read_text())
    except yaml.YAMLError as e:
        raise ConfigError(f"{path} is not valid YAML: {e}") from e


def sweep_names(root: Path) -> list[str]:
    return sorted(p.stem for p in (root / "ablations").glob("*.yaml") if p.stem not in ("tiers", "comparisons"))


def load_tier(root: Path, name: str) -> dict[str, Any]:
    path = root / "ablations" / "tiers.yaml"
    tiers = load_yaml(path)
    if not isinstance(tiers, dict):
        raise ConfigError(f"{path} must be a mapping of tier names to tiers, not a "
                          f"{type(tiers).__name__}.")
    if name not in tiers:
        raise unknown_key_error(name, list(tiers), "tier")
    check_tier(path, name, tiers[name])
    return {"name": name, **tiers[name]}


def load_sweep(root: Path, name: str) -> dict[str, Any]:
    names = sweep_names(root)
    if name not in names:
        raise unknown_key_error(name, names, "sweep")
    path = root / "ablations" / f"{name}.yaml"
    spec = load_yaml(path)
    check_sweep(path, spec, SWEPT)
    spec.setdefault("paper_source", "")
    if "points" not in spec:  # shorthand: one parameter, a list of values
        spec["points"] = [{"label": f"{spec['parameter']}={fmt(v)}", "set": {spec["parameter"]: v},
                           "paper": (spec.get("paper") or {}).get(v, {}), "value": v}
                          for v in spec["values"]]
    for point in spec["points"]:
        point.setdefault("value", point["label"])
        point["paper"] = point.get("paper") or {}
    return spec


def fmt(value: Any) -> str:
    if isinstance(value, bool):
        return str(value).lower()
    return f"{value:g}" if isinstance(value, float) else str(value)


def slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.=,-]+", "_", text).strip("_")


@dataclass
class Point:
    sweep: str
    label: str
    value: Any
    paper: dict[str, float]
    model: dict[str, Any]  # the full resolved model config
    name: str  # folder name: "default" or the differences from the tier's model
    seed: int
    run_dir: Path
    parameters: dict[str, Any] = field(default_factory=dict)


def tier_model(tier: dict[str, Any], dataset: str) -> dict[str, Any]:
    datasets = tier.get("datasets", {})
    if dataset not in datasets:
        raise unknown_key_error(dataset, list(datasets), f"dataset of tier {tier['name']!r}")
    return {**PRESETS[tier["preset"]], **tier.get("model", {}), **(datasets[dataset] or {})}


def sweep_points(
    root: Path, sweep: str, tier_name: str, dataset: str | None = None,
    seeds: list[int] | None = None, results: Path | None = None,
) -> list[Point]:
    """Every (point, seed) of a sweep at a tier, with its run folder and notebook parameters."""
    repeated = sorted({s for s in seeds or [] if seeds.count(s) > 1})
    if repeated:
        raise ConfigError(f"--seeds {' '.join(map(str, seeds))} names seed "
                          f"{', '.join(map(str, repeated))} more than once: give each seed once.")
    spec = load_sweep(root, sweep)
    if tier_name not in spec["tiers"]:
        raise ConfigError(f"sweep {sweep!r} has no {tier_name!r} tier; its tiers: "
                          f"{', '.join(spec['tiers'])}.")
    tier = load_tier(root, tier_name)
    dataset = dataset or next(iter(tier["datasets"]))
    base = MAEConfig.from_dict(tier_model(tier, dataset)).to_dict()
    results = results or root / "results"
    points = []
    for p in spec["points"]:
        model = {**base, **p["set"]}  # validated by the notebook, through papermill
        diffs = {k: v for k, v in sorted(p["set"].items()) if base.get(k) != v}
        name = ",".join(f"{k}={fmt(v)}" for k, v in diffs.items()) or "default"
        if not spec.get("pretrain", True):  # a baseline without pre-training has its own folder
            name = "random_init" + ("" if name == "default" else f",{name}")
        shared = name in ("default", "random_init")  # the points every sweep is read against
        point_seeds = seeds or (tier.get("default_seeds", tier["seeds"]) if shared
                                else tier["seeds"])
        for seed in point_seeds:
            run_dir = results / "runs" / tier_name / slug(dataset) / slug(name) / f"seed{seed}"
            point = Point(sweep, p["label"], p["value"], p["paper"], model, name, seed, run_dir)
            point.parameters = notebook_parameters(tier, dataset, model, seed, run_dir, name)
            point.parameters["pretrain"] = bool(spec.get("pretrain", True))
            points.append(point)
    return points


def notebook_parameters(tier: dict[str, Any], dataset: str, model: dict[str, Any], seed: int,
                        run_dir: Path, name: str) -> dict[str, Any]:
    """Literal parameters for the template's ``parameters`` cell."""
    preset = PRESETS[tier["preset"]]
    return {
        "run_name": f"{tier['name']}/{dataset}/{name}/seed{seed}",
        "tier": tier["name"], "preset": tier["preset"], "dataset": os.path.expandvars(dataset),
        **{k: model[k] for k in SWEPT},
        "model_extra": {k: v for k, v in model.items() if k not in SWEPT and preset.get(k) != v},
        "train": dict(tier.get("train", {})), "evaluation": dict(tier.get("eval", {})),
        "eval_train_subset": tier.get("eval_train_subset", 0),
        "eval_test_subset": tier.get("eval_test_subset", 0),
        "finetune": bool(tier.get("finetune", False)), "nproc": int(tier.get("nproc", 1)),
        "seed": seed, "out_dir": str(run_dir), "smoke": tier["name"] == "smoke",
    }


def resolved_configs(parameters: dict[str, Any]) -> dict[str, Any]:
    """The configs a point's notebook will run with, validated as the notebook does, so that a
    bad sweep or tier fails here, before any kernel starts or run folder is made."""
    model = MAEConfig.preset(parameters["preset"], **{k: parameters[k] for k in SWEPT},
                             **parameters["model_extra"])
    return {
        "model": model.to_dict(),
        "train": TrainConfig.from_dict({**parameters["train"], "dataset": parameters["dataset"],
                                        "seed": parameters["seed"]}).to_dict(),
        "eval": EvalConfig.from_dict({**parameters["evaluation"],
                                      "seed": parameters["seed"]}).to_dict(),
        **{k: parameters[k] for k in ("eval_train_subset", "eval_test_subset", "finetune",
                                      "nproc", "pretrain")},
    }


def stale_keys(point: Point, record: dict[str, Any]) -> list[str]:
    """How a finished run's recorded configs differ from what its point resolves to now. A key
    the record lacks (added to a config since) counts as its default, so adding an option whose
    default is the old behaviour leaves finished runs valid."""
    now = resolved_configs(point.parameters)
    found = {**record.get("config", {}), "pretrain": record.get("pretrain", True)}
    diffs = []
    for section, cls in (("model", MAEConfig), ("train", TrainConfig), ("eval", EvalConfig)):
        old = {**cls().to_dict(), **found.get(section, {})}
        for key in sorted(set(old) | set(now[section])):
            if key in {"train": EXECUTION_KEYS, "eval": EVAL_EXECUTION_KEYS}.get(section, ()):
                continue
            if old.get(key) != now[section].get(key):
                diffs.append(f"{section}.{key}: run {old.get(key)!r}, now {now[section][key]!r}")
    for key in ("eval_train_subset", "eval_test_subset", "finetune", "nproc", "pretrain"):
        if found.get(key) != now[key]:
            diffs.append(f"{key}: run {found.get(key)!r}, now {now[key]!r}")
    return diffs


def run_sweep(
    sweep: str, tier: str, dataset: str | None = None, seeds: list[int] | None = None,
    results: Path | None = None, root: Path | None = None, log=print, rerun_stale: bool = False,
    only: Path | None = None,
) -> int:
    """Execute every missing point with papermill; returns the number of failed points.

    A finished point whose recorded configs differ from what the sweep and tier resolve to now
    is refused by name (its differing keys listed) unless ``rerun_stale``, which moves its
    folder aside (``stale-seed<k>-<time>``) and runs it again. A point another process is
    running (its folder locked) is left to that process. ``only``: run just the point with this
    run folder (what a cluster job does, see :mod:`mae.executors`).
    """
    import fcntl

    root = root or project_root()
    points = [p for p in sweep_points(root, sweep, tier, dataset, seeds, results)
              if only is None or p.run_dir == Path(only)]
    for point in points:  # every point's configs, before anything runs
        resolved_configs(point.parameters)
    try:  # after the files are checked: a misspelt key is named even where papermill is missing
        import papermill
    except ImportError:
        raise ConfigError("mae ablate runs its notebooks with papermill, which is not installed: "
                          "pip install 'mae[book]' (make install does).") from None
    stale = check_stale(points, sweep, tier, rerun_stale)
    failed = elsewhere = 0
    for i, point in enumerate(points, 1):
        head = f"[{i}/{len(points)}] {sweep} {point.label} seed {point.seed}"
        metrics_file = point.run_dir / "metrics.json"
        if point.run_dir in stale:
            aside = point.run_dir.with_name(
                f"stale-{point.run_dir.name}-{time.strftime('%Y%m%dT%H%M%S')}")
            point.run_dir.rename(aside)
            log(f"{head}: stale ({'; '.join(stale[point.run_dir][:2])}), moved to {aside}")
        if metrics_file.is_file():
            log(f"{head}: done before, skipped ({point.run_dir})")
            continue
        point.run_dir.mkdir(parents=True, exist_ok=True)
        lock = open(point.run_dir / ".lock", "w")  # held while this process runs the point
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            lock.close()
            elsewhere += 1
            log(f"{head}: running in another process, skipped ({point.run_dir})")
            continue
        if metrics_file.is_file():  # finished by another process while we looked
            lock.close()
            log(f"{head}: done before, skipped ({point.run_dir})")
            continue
        (point.run_dir / "error.json").unlink(missing_ok=True)
        log(f"{head}: running -> {point.run_dir}")
        t0 = time.perf_counter()
        try:
            papermill.execute_notebook(
                str(root / TEMPLATE), str(point.run_dir / "ablation.ipynb"),
                parameters=point.parameters, kernel_name="python3", progress_bar=False,
                cwd=str(root),
            )
        except Exception as e:  # noqa: BLE001 - every failure is recorded, the sweep goes on
            release(lock)
            failed += 1
            message = f"{getattr(e, 'ename', type(e).__name__)}: {getattr(e, 'evalue', e)}"
            write_json_atomic(point.run_dir / "error.json", {
                "run_name": point.parameters["run_name"], "error": message,
                "traceback": traceback.format_exc(limit=3)[-4000:],
            })
            log(f"{head}: FAILED after {time.perf_counter() - t0:.0f} s: {message}")
            continue
        release(lock)
        metrics = json.loads(metrics_file.read_text())
        summary = ", ".join(f"{k} {metrics['metrics'][k]:.1f}"
                            for k in ("probe_top1", "knn_top1", "finetune_top1")
                            if k in metrics["metrics"])
        log(f"{head}: done in {time.perf_counter() - t0:.0f} s ({summary})")
    done = sum((p.run_dir / "metrics.json").is_file() for p in points)
    log(f"{sweep} at tier {tier}: {done} of {len(points)} points complete"
        + (f", {failed} failed (see error.json in their folders)" if failed else "")
        + (f", {len(points) - done - failed} left to another process" if elsewhere else ""))
    return failed


def check_stale(points: list[Point], sweep: str, tier: str, rerun_stale: bool) -> dict:
    """The finished points whose recorded configs differ from what they resolve to now, with the
    differences; refused (ConfigError) unless ``rerun_stale``."""
    stale = {}
    for point in points:
        if (point.run_dir / "metrics.json").is_file():
            diffs = stale_keys(point, json.loads((point.run_dir / "metrics.json").read_text()))
            if diffs:
                stale[point.run_dir] = diffs
    if stale and not rerun_stale:
        first, diffs = next(iter(stale.items()))
        raise ConfigError(
            f"{len(stale)} finished point(s) of {sweep} were run with other configs than "
            f"{tier} resolves to now, e.g. {first}: {'; '.join(diffs[:4])}. Restore the old "
            f"settings, or rerun those points with --rerun-stale (their folders are kept aside).")
    return stale


def release(lock) -> None:
    """Drop a point's lock file (the run folder is committed; the lock is not part of it)."""
    Path(lock.name).unlink(missing_ok=True)
    lock.close()
