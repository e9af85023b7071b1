"""What each ``python -m mae`` command does (the parser and the error handling are `mae.cli`).

Configs come from a named preset plus ``--set key=value`` overrides for the model, and one flag per
training / evaluation field; all of them go through the same ``from_dict`` validation as the API.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any

from .config import ConfigError, MAEConfig
from .flags import collect, parse_overrides
from .provenance import CpuClock, check_writable, provenance, write_text_atomic
from .recipe import EvalConfig, TrainConfig


def write_json(path: str | None, payload: dict[str, Any]) -> None:
    text = json.dumps(payload, indent=1, sort_keys=True, default=str)
    print(text)
    if path:
        write_text_atomic(path, text + "\n")


def datasets_for(args, train_config: dict[str, Any], img_size: int):
    from .data import load_dataset

    name = args.dataset or train_config.get("dataset", "cifar10")
    size = None if name.startswith("cifar") else img_size
    train = load_dataset(name, "train", args.data_root, size, args.download)
    test = load_dataset(name, "test", args.data_root, size, args.download)
    for flag, n in (("--train-subset", getattr(args, "train_subset", 0)),
                    ("--test-subset", getattr(args, "test_subset", 0))):
        if n < 0:
            raise ConfigError(f"{flag} must be 0 (all images) or a positive count, got {n}.")
    if getattr(args, "train_subset", 0):
        train = train.subset(args.train_subset)
    if getattr(args, "test_subset", 0):
        test = test.subset(args.test_subset)
    return train, test


MAX_IMAGES = 64  # visualize --num: rows of one figure


# ----- commands -------------------------------------------------------------------------------
def cmd_pretrain(args) -> int:
    from .train import pretrain

    if args.config:  # a run's configs from a file ({"model": ..., "train": ...}), flags on top
        from .ablate import load_yaml

        if args.preset:
            raise ConfigError("--preset and --config both name a model: give one of them.")
        path = Path(args.config)
        try:  # JSON as written by mae ablate; YAML 1.1 would read 1e-06 as a string
            spec = json.loads(path.read_text()) if path.suffix == ".json" else load_yaml(path)
        except (OSError, json.JSONDecodeError) as e:
            raise ConfigError(f"cannot read --config {path}: {e}") from e
        if not isinstance(spec, dict) or set(spec) != {"model", "train"}:
            raise ConfigError(f"{args.config} must hold two sections, model and train.")
        model_config = MAEConfig.from_dict(spec["model"]).replace(**parse_overrides(args.set))
        train_config = TrainConfig.from_dict({**spec["train"], **collect(args, TrainConfig)})
    else:
        model_config = MAEConfig.preset(args.preset or "micro", **parse_overrides(args.set))
        train_config = TrainConfig.from_dict(collect(args, TrainConfig))
    flags = slurm_args(args, "tasks_per_node")
    if args.executor == "slurm":
        from .executors import submit_pretrain

        if args.download:
            raise ConfigError("--download does not reach a SLURM job (its node may have no "
                              "network): fetch the data first (e.g. pretrain --download "
                              "--max-steps 1 into a scratch --out), then submit without it.")

        metrics, _ = submit_pretrain(model_config, train_config, Path(args.out),
                                     args.cluster or "slurm", args.wait or None, args.nodes,
                                     resume=args.resume, overwrite=args.overwrite,
                                     data_root=args.data_root, log=print, **flags)
        if metrics is not None:
            write_json(None, metrics)
        return 0
    if args.nodes != 1:
        raise ConfigError("--nodes needs --executor slurm.")
    result = pretrain(model_config, train_config, args.out, resume=args.resume,
                      progress=not args.no_progress, data_root=args.data_root,
                      download=args.download, overwrite=args.overwrite,
                      log=lambda line: print(line, file=sys.stderr))
    write_json(None, result.metrics)  # pretrain wrote it to --out/pretrain_metrics.json
    return 0


def model_for(args):
    """From --checkpoint, or the random initialisation of --preset / --set with --init-seed.
    Checks first that the metrics file --out can be written, before minutes of evaluation."""
    if args.out:
        if Path(args.out).is_dir():
            raise ConfigError(f"--out {args.out} is a folder: name the JSON file to write.")
        check_writable(Path(args.out).parent, "--out folder")
    if args.checkpoint:
        from .checkpoint import load_pretrained
        from .pretrained import resolve

        if args.set or args.preset or args.init_seed is not None:
            used = "--set" if args.set else "--preset" if args.preset else "--init-seed"
            raise ConfigError(f"{used} cannot apply with --checkpoint: the model is the one the "
                              f"checkpoint holds. Drop {used}, or drop --checkpoint to evaluate a "
                              f"random initialisation.")
        return load_pretrained(resolve(args.checkpoint))
    from .model import init_model

    config = MAEConfig.preset(args.preset or "micro", **parse_overrides(args.set))
    return init_model(config, 0 if args.init_seed is None else args.init_seed), {}


def trained_for(args) -> dict[str, Any]:
    """How far the evaluated model was pre-trained: steps and epochs (0 for a random init)."""
    if not args.checkpoint:
        return {"pretrain_steps": 0, "pretrain_epochs": 0.0}
    from .checkpoint import load_checkpoint, run_checkpoint
    from .pretrained import resolve

    ckpt = load_checkpoint(run_checkpoint(resolve(args.checkpoint)))
    images = (ckpt.get("data") or {}).get("num_images")
    batch = ckpt.get("config", {}).get("train", {}).get("batch_size")
    per_epoch = images // batch if images and batch else 0
    return {"pretrain_steps": ckpt.get("step"),
            "pretrain_epochs": round(ckpt["step"] / per_epoch, 3) if per_epoch else None}


def placed(model, device_name: str, precision: str):
    """The model moved to its device (auto: CUDA when present), and the autocast dtype the
    precision policy gives it there (`mae.runtime.autocast_dtype`)."""
    from .runtime import autocast_dtype, pick_device

    device = pick_device(device_name)
    return model.to(device), device, autocast_dtype(precision, device, model.config.encoder_dim)


def where(device, amp) -> dict[str, str]:
    """What an evaluation records of where and how it ran."""
    from .runtime import precision_name

    return {"device": str(device), "precision": precision_name(amp)}


def cmd_frozen(args) -> int:
    from .evaluate import (
        check_pool, check_train_size, extract_features, knn_classify, linear_probe,
    )

    model, configs = model_for(args)
    ec = EvalConfig.from_dict(collect(args, EvalConfig))
    check_pool(model.config, ec.features)
    model, device, amp = placed(model, ec.device, ec.precision)
    clock = CpuClock()
    train, test = datasets_for(args, configs.get("train", {}), model.config.img_size)
    check_train_size(len(train), ec.probe_batch_size if args.command != "knn" else None,
                     ec.knn_k if args.command != "probe" else None)
    tr = extract_features(model, train, ec.features, ec.batch_size, amp,
                          progress=not args.no_progress)
    te = extract_features(model, test, ec.features, ec.batch_size, amp,
                          progress=not args.no_progress)
    metrics = {}
    if args.command in ("probe", "frozen"):
        metrics.update(linear_probe(tr, te, train.num_classes, ec))
    if args.command in ("knn", "frozen"):
        metrics.update(knn_classify(tr, te, train.num_classes, ec.knn_k, ec.knn_temperature))
    write_json(args.out, {**metrics, "checkpoint": args.checkpoint or "random-init",
                          "model": model.config.to_dict(), "eval": ec.to_dict(),
                          "data": train.fingerprint(), **trained_for(args), **where(device, amp),
                          "time": clock.elapsed(), "provenance": provenance(str(device))})
    return 0


def cmd_finetune(args) -> int:
    from .evaluate import finetune
    from .runtime import pick_device

    model, configs = model_for(args)
    ec = EvalConfig.from_dict(collect(args, EvalConfig))
    config, state = model.config, model.encoder.state_dict()
    device = pick_device(ec.device)
    clock = CpuClock()
    train, test = datasets_for(args, configs.get("train", {}), config.img_size)
    metrics = finetune(config, train, test, state, ec, device, progress=not args.no_progress,
                       curve_every=args.curve_every)
    write_json(args.out, {**metrics, "checkpoint": args.checkpoint or "random-init",
                          "model": config.to_dict(), "eval": ec.to_dict(),
                          "data": train.fingerprint(), **trained_for(args),
                          "time": clock.elapsed(), "provenance": provenance(str(device))})
    return 0


def cmd_visualize(args) -> int:
    import torch

    from .checkpoint import load_pretrained
    from .pretrained import resolve
    from .visualize import dataset_images, plot_reconstructions, reconstruct

    out = Path(args.out)
    formats = (".png", ".jpg", ".jpeg", ".pdf", ".svg")
    if out.suffix.lower() not in formats:
        raise ConfigError(f"--out {out} names no image format: end it in one of "
                          f"{', '.join(formats)} (e.g. {out.with_suffix('.png')}).")
    if not 1 <= args.num <= MAX_IMAGES:
        raise ConfigError(f"--num must be 1 to {MAX_IMAGES} (images to draw, one row each in "
                          f"one figure), got {args.num}.")
    check_writable(out.parent, "--out folder")
    from .runtime import autocast

    model, configs = load_pretrained(resolve(args.checkpoint))
    model, device, amp = placed(model.eval(), args.device, args.precision)
    _, test = datasets_for(args, configs["train"], model.config.img_size)
    if args.num > len(test):
        raise ConfigError(f"--num {args.num} exceeds the {len(test)} test images: ask for fewer.")
    images = dataset_images(test, args.num, args.seed)
    with autocast(device, amp):
        rec = reconstruct(model, images, test.mean, test.std, args.mask_ratio,
                          generator=torch.Generator().manual_seed(args.seed))
    rec = type(rec)(*(t.float() for t in rec))  # bf16 under autocast: matplotlib draws float32
    ratio = model.config.mask_ratio if args.mask_ratio is None else args.mask_ratio
    fig = plot_reconstructions(rec, f"{Path(args.checkpoint).name}: {ratio:.0%} masked")
    fig.savefig(out, dpi=120)
    print(out)
    return 0


def cmd_export(args) -> int:
    from . import pretrained

    if args.list:
        if args.run or args.out:
            raise ConfigError("--list only lists the registered models: drop the run folder and "
                              "--out, or drop --list to export the run.")
        for name in pretrained.names():
            entry = pretrained.REGISTRY[name]
            print(f"{name}: {entry.description} ({entry.file})")
        return 0
    if not args.run or not args.out:
        raise ConfigError("export needs a run folder and --out FILE.pt (or --list).")
    record = pretrained.export(args.run, args.out, args.overwrite)
    if "note" in record["pretrain"]:
        print(f"note: {record['pretrain']['note']}")
    print(f"{args.out}: {record['bytes'] / 1e6:.1f} MB, sha256 {record['sha256']}")
    return 0


def slurm_args(args, *more: str) -> dict:
    """The job resource flags given (None: not given); refused without --executor slurm."""
    flags = {k: getattr(args, k) for k in ("gpus_per_node", "cpus_per_task", "timeout_min",
                                           "partition", "account", *more)}
    if args.executor != "slurm" and (args.cluster or args.wait or any(
            v is not None for v in flags.values())):
        raise ConfigError("--cluster, --wait and the job resource flags (--gpus-per-node, "
                          "--partition, ...) need --executor slurm.")
    return flags


def cmd_ablate(args) -> int:
    from .ablate import project_root, run_sweep, sweep_names, sweep_points

    if args.jobs < 1:
        raise ConfigError(f"--jobs must be at least 1, got {args.jobs}.")
    if args.executor != "local" and args.jobs > 1:
        raise ConfigError(f"--jobs needs --executor local ({args.executor} runs "
                          + ("one point at a time)." if args.executor == "inline" else
                             "one job per point; --array-parallelism caps how many at once)."))
    slurm_flags = slurm_args(args, "array_parallelism")
    root = project_root()
    sweeps = sweep_names(root) if args.sweep == "all" else [args.sweep]
    results = Path(args.results) if args.results else None
    if args.executor == "slurm":
        from .executors import submit_sweeps

        if args.rerun_stale:
            raise ConfigError("--rerun-stale moves folders aside: run it inline, then submit "
                              "the rest with --executor slurm.")
        failed, _ = submit_sweeps(sweeps, args.tier, args.dataset, args.seeds, results, root,
                                  args.cluster or "slurm", args.wait or None,
                                  log=lambda line: print(line, flush=True), **slurm_flags)
        return 1 if failed else 0
    if args.executor == "local" and args.jobs > 1:
        from .executors import run_local_jobs

        if args.rerun_stale:
            raise ConfigError("--rerun-stale moves folders aside: run it with one job, then add "
                              "--executor local --jobs N for the rest.")
        argv = [sys.executable, "-m", "mae", "ablate", args.sweep, "--tier", args.tier]
        if args.dataset:
            argv += ["--dataset", args.dataset]
        if args.seeds:
            argv += ["--seeds", *map(str, args.seeds)]
        if args.results:
            argv += ["--results", args.results]
        run_dirs = [p.run_dir for sweep in sweeps for p in sweep_points(
            root, sweep, args.tier, args.dataset, args.seeds, results)]
        return run_local_jobs(argv, args.jobs, run_dirs)
    failed = 0
    prefix = f"[job {os.environ['MAE_ABLATE_JOB']}] " if "MAE_ABLATE_JOB" in os.environ else ""
    for sweep in sweeps:
        failed += run_sweep(sweep, args.tier, args.dataset, args.seeds, results, root,
                            log=lambda line: print(prefix + line, flush=True),
                            rerun_stale=args.rerun_stale)
    return 1 if failed else 0


def cmd_report(args) -> int:
    from .report import report

    paths = report(Path(args.results) if args.results else None)
    print(f"wrote {len(paths)} files")
    return 0
