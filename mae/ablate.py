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

import io
import json
import os
import re
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .config import PRESETS, ConfigError, MAEConfig, unknown_key_error
from .provenance import write_bytes_atomic, write_json_atomic, write_text_atomic

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
    return sorted(p.stem for p in (root / "ablations").glob("*.yaml") if p.stem != "tiers")


def load_tier(root: Path, name: str) -> dict[str, Any]:
    tiers = load_yaml(root / "ablations" / "tiers.yaml")
    if name not in tiers:
        raise unknown_key_error(name, list(tiers), "tier")
    return {"name": name, **tiers[name]}


def load_sweep(root: Path, name: str) -> dict[str, Any]:
    names = sweep_names(root)
    if name not in names:
        raise unknown_key_error(name, names, "sweep")
    spec = load_yaml(root / "ablations" / f"{name}.yaml")
    if "points" not in spec:  # shorthand: one parameter, a list of values
        spec["points"] = [{"label": f"{spec['parameter']}={fmt(v)}", "set": {spec["parameter"]: v},
                           "paper": (spec.get("paper") or {}).get(v, {}), "value": v}
                          for v in spec["values"]]
    for i, point in enumerate(spec["points"]):
        point.setdefault("value", point["label"])
        point.setdefault("paper", {})
        for key in point["set"]:
            if key not in SWEPT:
                raise unknown_key_error(key, list(SWEPT), f"swept field in {name}.yaml point {i}")
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


def run_sweep(
    sweep: str, tier: str, dataset: str | None = None, seeds: list[int] | None = None,
    results: Path | None = None, root: Path | None = None, log=print,
) -> int:
    """Execute every missing point with papermill; returns the number of failed points."""
    import papermill

    root = root or project_root()
    points = sweep_points(root, sweep, tier, dataset, seeds, results)
    failed = 0
    for i, point in enumerate(points, 1):
        head = f"[{i}/{len(points)}] {sweep} {point.label} seed {point.seed}"
        metrics_file = point.run_dir / "metrics.json"
        if metrics_file.is_file():
            log(f"{head}: done before, skipped ({point.run_dir})")
            continue
        point.run_dir.mkdir(parents=True, exist_ok=True)
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
            failed += 1
            message = f"{getattr(e, 'ename', type(e).__name__)}: {getattr(e, 'evalue', e)}"
            write_json_atomic(point.run_dir / "error.json", {
                "run_name": point.parameters["run_name"], "error": message,
                "traceback": traceback.format_exc(limit=3)[-4000:],
            })
            log(f"{head}: FAILED after {time.perf_counter() - t0:.0f} s: {message}")
            continue
        metrics = json.loads(metrics_file.read_text())
        summary = ", ".join(f"{k} {metrics['metrics'][k]:.1f}"
                            for k in ("probe_top1", "knn_top1", "finetune_top1")
                            if k in metrics["metrics"])
        log(f"{head}: done in {time.perf_counter() - t0:.0f} s ({summary})")
    log(f"{sweep} at tier {tier}: {len(points) - failed} of {len(points)} points complete"
        + (f", {failed} failed (see error.json in their folders)" if failed else ""))
    return failed


def pretrain_run(model_config: MAEConfig, train_config, out_dir: Path, nproc: int = 1,
                 dataset=None):
    """Pre-train in this process, or with ``torchrun --nproc_per_node=nproc`` (multi-GPU tiers).
    Resumes from ``out_dir`` when it holds a checkpoint. Returns (model, metrics)."""
    from .train import pretrain

    if nproc <= 1:
        metrics = pretrain(model_config, train_config, out_dir, resume=True, progress=False,
                           dataset=dataset)
        return metrics.pop("model"), metrics
    import subprocess
    import sys

    from .cli import load_model

    command = [sys.executable, "-m", "torch.distributed.run", "--standalone",
               f"--nproc_per_node={nproc}", "-m", "mae", "pretrain", "--no-progress", "--resume",
               f"--out={out_dir}"]
    command += [f"--set={k}={v}" for k, v in model_config.to_dict().items()]
    command += [f"--{k.replace('_', '-')}={v}" for k, v in train_config.to_dict().items()
                if not isinstance(v, bool)]
    command += [f"--{'' if v else 'no-'}{k.replace('_', '-')}"
                for k, v in train_config.to_dict().items() if isinstance(v, bool)]
    subprocess.run(command, check=True)
    metrics = json.loads((Path(out_dir) / "pretrain_metrics.json").read_text())
    metrics["history"] = json.loads((Path(out_dir) / "history.json").read_text())
    model, _ = load_model(str(out_dir))
    return model, metrics


# ----- report ---------------------------------------------------------------------------------
def collect_runs(results: Path, tier: str) -> dict[str, dict[str, Any]]:
    """metrics.json of every complete run of a tier, by run folder (relative, POSIX)."""
    runs = {}
    for path in sorted((results / "runs" / tier).glob("*/*/seed*/metrics.json")):
        runs[path.parent.relative_to(results).as_posix()] = json.loads(path.read_text())
    return runs


def _stats(values: list[float]) -> tuple[float, float]:
    n = len(values)
    mean = sum(values) / n
    std = (sum((v - mean) ** 2 for v in values) / (n - 1)) ** 0.5 if n > 1 else 0.0
    return mean, std


def report(results: Path | None = None, root: Path | None = None, log=print) -> list[Path]:
    """Turn run folders into ``results/tables/<sweep>-<tier>.{csv,md}`` (+ ``-runs.csv``) and
    ``results/figures/<sweep>-<tier>.png``; deterministic, so a rerun gives identical bytes."""
    root = root or project_root()
    results = results or root / "results"
    written = []
    tiers = sorted(p.name for p in (results / "runs").iterdir() if p.is_dir()) \
        if (results / "runs").is_dir() else []
    for tier in tiers:
        runs = collect_runs(results, tier)
        for sweep in sweep_names(root):
            spec = load_sweep(root, sweep)
            if tier not in spec["tiers"]:
                continue
            for dataset in sorted({r.split("/")[2] for r in runs}):
                rows, run_rows = _sweep_rows(root, sweep, tier, dataset, runs, results)
                if not any(r["seeds"] for r in rows):
                    continue
                stem = f"{sweep}-{tier}" + ("" if dataset == "cifar10" else f"-{dataset}")
                written += _write_tables(results, stem, spec, tier, dataset, rows, run_rows)
                written.append(_write_figure(results, stem, spec, tier, dataset, rows))
                log(f"{stem}: {sum(r['seeds'] for r in rows)} runs")
    return written


def _sweep_rows(root, sweep, tier, dataset, runs, results):
    rows, run_rows = [], []
    for point in sweep_points(root, sweep, tier, dataset, results=results):
        key = point.run_dir.relative_to(results).as_posix()
        if not any(r["label"] == point.label for r in rows):
            rows.append({"label": point.label, "value": point.value, "point": point.name,
                         "paper": point.paper, "runs": []})
        if key in runs:
            next(r for r in rows if r["label"] == point.label)["runs"].append(runs[key])
            run_rows.append(_flatten(key, point, runs[key]))
    for row in rows:
        row["seeds"] = len(row["runs"])
        for metric in ("probe_top1", "knn_top1", "finetune_top1", "pretrain_wall_time_s",
                       "pretrain_final_loss"):
            values = [r["metrics"][metric] for r in row["runs"] if metric in r["metrics"]]
            row[metric] = _stats(values) if values else None
    return rows, run_rows


def _flatten(key: str, point: Point, run: dict[str, Any]) -> dict[str, Any]:
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


def _cell(stat, digits=1):
    if stat is None:
        return ""
    mean, std = stat
    return f"{mean:.{digits}f}" if std == 0 else f"{mean:.{digits}f} ± {std:.{digits}f}"


def _write_tables(results, stem, spec, tier, dataset, rows, run_rows) -> list[Path]:
    import csv

    tables = results / "tables"
    tables.mkdir(parents=True, exist_ok=True)
    has_ft = any(r["finetune_top1"] for r in rows)
    header = ["setting", "seeds", "probe_top1_mean", "probe_top1_std", "knn_top1_mean",
              "knn_top1_std"] + (["finetune_top1_mean", "finetune_top1_std"] if has_ft else []) \
        + ["pretrain_minutes", "final_loss", "paper_lin", "paper_ft"]
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(header)
    for r in rows:
        def pair(stat):
            return [f"{stat[0]:.2f}", f"{stat[1]:.2f}"] if stat else ["", ""]
        writer.writerow([r["label"], r["seeds"], *pair(r["probe_top1"]), *pair(r["knn_top1"])]
                        + (pair(r["finetune_top1"]) if has_ft else [])
                        + [f"{r['pretrain_wall_time_s'][0] / 60:.1f}" if r["pretrain_wall_time_s"] else "",
                           f"{r['pretrain_final_loss'][0]:.4f}" if r["pretrain_final_loss"] else "",
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

    commits = sorted({r["provenance"]["git_commit"][:10] + ("+dirty" if r["provenance"]["git_dirty"] else "")
                      for row in rows for r in row["runs"]})
    devices = sorted({r["provenance"]["device_name"] for row in rows for r in row["runs"]})
    lines = [f"### {spec['title']} ({tier} tier, {dataset})", "",
             "| setting | seeds | linear probe top-1 (%) | kNN top-1 (%) | "
             + ("fine-tune top-1 (%) | " if has_ft else "")
             + "pre-training (min) | paper lin | paper ft |",
             "|---|---|---|---|" + ("---|" if has_ft else "") + "---|---|---|"]
    for r in rows:
        lines.append(
            f"| {r['label']} | {r['seeds']} | {_cell(r['probe_top1'])} | {_cell(r['knn_top1'])} | "
            + (f"{_cell(r['finetune_top1'])} | " if has_ft else "")
            + (f"{r['pretrain_wall_time_s'][0] / 60:.1f}" if r["pretrain_wall_time_s"] else "")
            + f" | {r['paper'].get('lin', '–')} | {r['paper'].get('ft', '–')} |")
    lines += ["", f"Ours: mean ± sample std over seeds. Paper: {spec['paper_source'].strip()}",
              f"Runs: {sum(r['seeds'] for r in rows)} (per-run provenance in `{runs_path.name}`), "
              f"commits {', '.join(commits)}; {'; '.join(devices)}.", ""]
    md_path = tables / f"{stem}.md"
    write_text_atomic(md_path, "\n".join(lines))
    return [csv_path, runs_path, md_path]


def _write_figure(results, stem, spec, tier, dataset, rows) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figures = results / "figures"
    figures.mkdir(parents=True, exist_ok=True)
    done = [r for r in rows if r["seeds"]]
    # A numeric sweep (mask ratio, depth, width) on a numeric axis; anything else categorical.
    numeric = all(isinstance(r["value"], (int, float)) and not isinstance(r["value"], bool)
                  for r in done)
    x = [r["value"] for r in done] if numeric else list(range(len(done)))
    fig, ax = plt.subplots(figsize=(6, 4))
    for metric, name, marker in (("probe_top1", "linear probe (ours)", "o"),
                                 ("knn_top1", "kNN (ours)", "s"),
                                 ("finetune_top1", "fine-tune (ours)", "^")):
        pts = [(i, r[metric]) for i, r in zip(x, done) if r[metric]]
        if pts:
            ax.errorbar([p[0] for p in pts], [p[1][0] for p in pts],
                        yerr=[p[1][1] for p in pts], marker=marker, capsize=3, label=name)
    if numeric and all(isinstance(v, int) and v > 0 for v in x) and max(x) >= 8 * min(x):
        ax.set_xscale("log", base=2)  # depths / widths that double
        ax.minorticks_off()
    ax.set_xticks(x)
    ax.set_xticklabels([str(r["label"]).split("=")[-1] for r in done])
    ax.set_xlabel(spec.get("parameter", "setting"))
    ax.set_ylabel(f"top-1 on {dataset} test (%)")
    paper = [(i, r["paper"]["lin"]) for i, r in zip(x, done) if "lin" in r["paper"]]
    if paper:
        twin = ax.twinx()
        twin.plot([p[0] for p in paper], [p[1] for p in paper], "k--", marker="x",
                  label="paper linear probe (ImageNet, ViT-L)")
        twin.set_ylabel("paper: ImageNet top-1 (%)")
    handles, labels = ax.get_legend_handles_labels()
    if paper:
        more = twin.get_legend_handles_labels()
        handles, labels = handles + more[0], labels + more[1]
    # Below the axes, so that no point hides behind it.
    fig.legend(handles, labels, fontsize=7, loc="lower center", ncol=max(1, len(labels)),
               frameon=False)
    ax.set_title(f"{spec['title']} — {tier} tier, {dataset}", fontsize=10)
    fig.tight_layout(rect=(0, 0.06, 1, 1))
    png = io.BytesIO()
    fig.savefig(png, dpi=100, format="png", metadata={"Software": None})
    plt.close(fig)
    return write_bytes_atomic(figures / f"{stem}.png", png.getvalue())
