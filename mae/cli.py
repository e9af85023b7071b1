"""Command line: ``python -m mae pretrain | probe | knn | finetune | visualize | ablate | report``.

Configs come from a named preset plus ``--set key=value`` overrides for the model, and one flag per
training / evaluation field; all of them go through the same ``from_dict`` validation as the API.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from pathlib import Path
from typing import Any

from .config import PRESETS, ConfigError, MAEConfig
from .recipe import EvalConfig, TrainConfig
from .provenance import write_text_atomic


def parse_overrides(items: list[str]) -> dict[str, Any]:
    """``["mask_ratio=0.5", "norm_pix_loss=false"]`` -> typed dict (YAML scalars)."""
    import yaml

    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"--set expects key=value, got {item!r} (e.g. --set mask_ratio=0.5).")
        parsed = yaml.safe_load(value)
        if isinstance(parsed, str):  # YAML 1.1 reads "1e-06" as a string
            try:
                parsed = float(parsed)
            except ValueError:
                pass
        out[key.strip()] = parsed
    return out


def add_dataclass_flags(parser: argparse.ArgumentParser, cls: type, title: str) -> None:
    group = parser.add_argument_group(title)
    for f in dataclasses.fields(cls):
        flag = "--" + f.name.replace("_", "-")
        help_text = f"{f.metadata.get('help', '')} (default: {f.default!r})"
        if f.type == "bool":
            group.add_argument(flag, dest=f.name, action=argparse.BooleanOptionalAction,
                               default=None, help=help_text)
        else:
            kind = {"int": int, "float": float, "str": str}[f.type]
            group.add_argument(flag, dest=f.name, type=kind, default=None, help=help_text)


def collect(args: argparse.Namespace, cls: type) -> dict[str, Any]:
    return {f.name: getattr(args, f.name) for f in dataclasses.fields(cls)
            if getattr(args, f.name, None) is not None}


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
    return train, test


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
    result = pretrain(model_config, train_config, args.out, resume=args.resume,
                      progress=not args.no_progress, data_root=args.data_root,
                      download=args.download)
    write_json(None, result.metrics)  # pretrain wrote it to --out/pretrain_metrics.json
    return 0


def model_for(args):
    """From --checkpoint, or the random initialisation of --preset / --set with --init-seed."""
    if args.checkpoint:
        from .checkpoint import load_pretrained

        return load_pretrained(args.checkpoint)
    from .train import init_model

    config = MAEConfig.preset(args.preset, **parse_overrides(args.set))
    return init_model(config, args.init_seed), {}


def cmd_frozen(args) -> int:
    from .evaluate import extract_features, knn_classify, linear_probe

    model, configs = model_for(args)
    ec = EvalConfig.from_dict(collect(args, EvalConfig))
    train, test = datasets_for(args, configs.get("train", {}), model.config.img_size)
    tr = extract_features(model, train, ec.features, ec.batch_size)
    te = extract_features(model, test, ec.features, ec.batch_size)
    if args.command == "probe":
        metrics = linear_probe(tr, te, train.num_classes, ec)
    else:
        metrics = knn_classify(tr, te, train.num_classes, ec.knn_k, ec.knn_temperature)
    write_json(args.out, {**metrics, "checkpoint": args.checkpoint or "random-init",
                          "model": model.config.to_dict(), "eval": ec.to_dict(),
                          "data": train.fingerprint()})
    return 0


def cmd_finetune(args) -> int:
    from .evaluate import finetune

    model, configs = model_for(args)
    ec = EvalConfig.from_dict(collect(args, EvalConfig))
    config, state = model.config, model.encoder.state_dict()
    train, test = datasets_for(args, configs.get("train", {}), config.img_size)
    metrics = finetune(config, train, test, state, ec, progress=not args.no_progress)
    write_json(args.out, {**metrics, "checkpoint": args.checkpoint or "random-init",
                          "model": config.to_dict(), "eval": ec.to_dict(),
                          "data": train.fingerprint()})
    return 0


def cmd_visualize(args) -> int:
    import torch

    from .visualize import dataset_images, plot_reconstructions, reconstruct

    from .checkpoint import load_pretrained

    model, configs = load_pretrained(args.checkpoint)
    model.eval()
    _, test = datasets_for(args, configs["train"], model.config.img_size)
    images = dataset_images(test, args.num, args.seed)
    rec = reconstruct(model, images, test.mean, test.std, args.mask_ratio,
                      generator=torch.Generator().manual_seed(args.seed))
    ratio = model.config.mask_ratio if args.mask_ratio is None else args.mask_ratio
    fig = plot_reconstructions(rec, f"{Path(args.checkpoint).name}: {ratio:.0%} masked")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(args.out, dpi=120)
    print(args.out)
    return 0


def cmd_ablate(args) -> int:
    from .ablate import project_root, run_sweep, sweep_names

    root = project_root()
    sweeps = sweep_names(root) if args.sweep == "all" else [args.sweep]
    results = Path(args.results) if args.results else None
    failed = 0
    for sweep in sweeps:
        failed += run_sweep(sweep, args.tier, args.dataset, args.seeds, results, root,
                            log=lambda line: print(line, flush=True))
    return 1 if failed else 0


def cmd_report(args) -> int:
    from .report import report

    paths = report(Path(args.results) if args.results else None)
    print(f"wrote {len(paths)} files")
    return 0


# ----- parser ---------------------------------------------------------------------------------
def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m mae",
        description="Masked Autoencoders: pre-train, evaluate and look at reconstructions.",
        epilog=f"Data is read from $MAE_DATA (or --data-root). Model presets: {', '.join(PRESETS)}.",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def data_flags(p):
        p.add_argument("--data-root", help="dataset folder (default: $MAE_DATA)")
        p.add_argument("--download", action="store_true", help="download missing data")

    def model_flags(p, default: str | None = "micro"):
        p.add_argument("--preset", default=default, choices=sorted(PRESETS),
                       help="model preset (default: micro)")
        p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                       help="override a model config field, e.g. --set mask_ratio=0.5 (repeatable)")

    def init_flags(p):
        p.add_argument("--checkpoint", help="pre-trained checkpoint.pt or its run folder; omit "
                                            "for the random-init baseline of --preset / --set")
        model_flags(p)
        p.add_argument("--init-seed", type=int, default=0,
                       help="seed of the random initialisation (that of pretrain --seed)")

    p = sub.add_parser("pretrain", help="pre-train an MAE; resumable",
                       description="Pre-train an MAE. Writes checkpoint.pt, history.csv/json and "
                                   "pretrain_metrics.json into --out.")
    model_flags(p, default=None)
    p.add_argument("--config", help="a JSON / YAML file with the run's model and train configs "
                                    "(what mae ablate passes to torchrun); flags override it")
    add_dataclass_flags(p, TrainConfig, "training recipe")
    p.add_argument("--out", required=True, help="run folder for checkpoints and history")
    p.add_argument("--resume", action="store_true", help="continue from --out/checkpoint.pt")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    data_flags(p)
    p.set_defaults(func=cmd_pretrain)

    for name, text in (("probe", "linear probe (BatchNorm without affine + linear) on frozen "
                                 "features"),
                       ("knn", "weighted kNN classifier on frozen features")):
        p = sub.add_parser(name, help=text, description=text.capitalize() + ".")
        init_flags(p)
        p.add_argument("--dataset", help="dataset (default: the one it was pre-trained on)")
        add_dataclass_flags(p, EvalConfig, "evaluation")
        p.add_argument("--out", help="also write the metrics JSON here")
        data_flags(p)
        p.set_defaults(func=cmd_frozen)

    p = sub.add_parser("finetune", help="fine-tune end to end (from a checkpoint or random init)",
                       description="Fine-tune the encoder end to end and report test top-1.")
    init_flags(p)
    p.add_argument("--dataset", help="dataset (default: the pre-training one, or cifar10)")
    add_dataclass_flags(p, EvalConfig, "evaluation")
    p.add_argument("--out", help="also write the metrics JSON here")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    data_flags(p)
    p.set_defaults(func=cmd_finetune)

    p = sub.add_parser("visualize", help="draw reconstructions of test images to a PNG",
                       description="Draw original / masked / reconstruction for test images.")
    p.add_argument("--checkpoint", required=True, help="checkpoint.pt or its run folder")
    p.add_argument("--out", required=True, help="PNG file to write")
    p.add_argument("--num", type=int, default=6, help="number of images (default: 6)")
    p.add_argument("--mask-ratio", type=float, help="mask ratio (default: the model's)")
    p.add_argument("--seed", type=int, default=0, help="which images and masks (default: 0)")
    p.add_argument("--dataset", help="dataset (default: the pre-training one)")
    data_flags(p)
    p.set_defaults(func=cmd_visualize)
    p = sub.add_parser("ablate", help="run a sweep of ablation/*.yaml with papermill",
                       description="Execute notebooks/ablation.ipynb with papermill once per "
                                   "point and seed of a sweep. Finished points are skipped; a "
                                   "failing point is recorded (error.json) and the others still "
                                   "run; the exit status is 1 if any point failed.")
    p.add_argument("sweep", help="sweep name (a file in ablations/), or 'all'")
    p.add_argument("--tier", required=True,
                   help="smoke, cpu, gpu-quick, gpu or paper (see ablations/tiers.yaml)")
    p.add_argument("--dataset", help="a dataset of the tier (default: its first, cifar10)")
    p.add_argument("--seeds", type=int, nargs="+", help="seeds (default: the tier's)")
    p.add_argument("--results", help="results folder (default: results/)")
    p.set_defaults(func=cmd_ablate)

    p = sub.add_parser("report", help="tables and figures from the run folders",
                       description="Turn results/runs/ into results/tables/*.csv, *.md and "
                                   "results/figures/*.png (byte-identical on a rerun).")
    p.add_argument("--results", help="results folder (default: results/)")
    p.set_defaults(func=cmd_report)
    return parser


def main(argv: list[str] | None = None) -> int:
    from .checkpoint import CheckpointError
    from .data import DataError

    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except (ConfigError, DataError, CheckpointError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
