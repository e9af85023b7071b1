"""Command line: ``python -m mae pretrain | probe | knn | finetune | visualize | ablate | report``.

Configs come from a named preset plus ``--set key=value`` overrides for the model, and one flag per
training / evaluation field; all of them go through the same ``from_dict`` validation as the API.
"""

from __future__ import annotations

import argparse
import sys

from .checkpoint import CHECKPOINT
from .commands import (
    cmd_ablate, cmd_export, cmd_finetune, cmd_frozen, cmd_pretrain, cmd_report, cmd_visualize,
)
from .config import PRESETS, MAEError
from .flags import add_dataclass_flags, eval_fields
from .recipe import PRECISIONS, EvalConfig, TrainConfig


# ----- parser ---------------------------------------------------------------------------------
def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m mae",
        description="Masked Autoencoders: pre-train, evaluate and look at reconstructions.",
        epilog=f"Data is read from $MAE_DATA (or --data-root). Model presets: {', '.join(PRESETS)}.",
    )
    parser.add_argument("--debug", action="store_true",
                        help="show the Python traceback of an error (also: MAE_DEBUG=1)")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def data_flags(p):
        p.add_argument("--data-root", help="dataset folder (default: $MAE_DATA)")
        p.add_argument("--download", action="store_true", help="download missing data")

    def model_flags(p, default: str | None = "micro"):
        p.add_argument("--preset", default=default, choices=sorted(PRESETS),
                       help="model preset (default: micro)")
        p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                       help="override a model config field, e.g. --set mask_ratio=0.5 (repeatable)")

    def subset_flags(p):
        p.add_argument("--train-subset", type=int, default=0, metavar="N",
                       help="evaluate with the first N training images only (default 0: all)")
        p.add_argument("--test-subset", type=int, default=0, metavar="N",
                       help="score on the first N test images only (default 0: all)")

    def init_flags(p):
        p.add_argument("--checkpoint", help=f"pre-trained {CHECKPOINT}, its run folder, or a "
                                            "trained model's name (python -m mae export --list); "
                                            "omit for the random-init baseline of --preset / --set")
        model_flags(p, default=None)
        p.add_argument("--init-seed", type=int, default=None,
                       help="seed of the random initialisation (that of pretrain --seed; "
                            "default 0)")

    def slurm_flags(p, defaults: str):
        g = p.add_argument_group(f"--executor slurm (defaults: {defaults})")
        g.add_argument("--cluster", choices=("slurm", "local", "debug"),
                       help="where submitit runs the jobs: slurm (default), or its local / debug "
                            "stand-ins on this machine, to try a submission without SLURM")
        g.add_argument("--wait", action="store_true",
                       help="block until the jobs end and report them (always on local / debug)")
        g.add_argument("--gpus-per-node", type=int, help="GPUs per node of a job")
        g.add_argument("--cpus-per-task", type=int, help="CPU cores per task")
        g.add_argument("--timeout-min", type=int,
                       help="time limit of a job in minutes; a job past it is requeued and resumes")
        g.add_argument("--partition", help="SLURM partition")
        g.add_argument("--account", help="SLURM account")

    p = sub.add_parser("pretrain", help="pre-train an MAE; resumable",
                       description=f"Pre-train an MAE. Writes {CHECKPOINT}, history.csv/json and "
                                   "pretrain_metrics.json into --out.")
    model_flags(p, default=None)
    p.add_argument("--config", help="a JSON / YAML file with the run's model and train configs "
                                    "(what mae ablate passes to torchrun); flags override it")
    add_dataclass_flags(p, TrainConfig, "training recipe")
    p.add_argument("--out", required=True, help="run folder for checkpoints and history")
    p.add_argument("--resume", action="store_true", help=f"continue from --out/{CHECKPOINT}")
    p.add_argument("--overwrite", action="store_true",
                   help="replace the run --out holds (without it, a folder with a run is refused)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--executor", choices=("inline", "slurm"), default="inline",
                   help="inline: in this process (or under torchrun) (default); slurm: one "
                        "SLURM job of --nodes x --gpus-per-node tasks through submitit, one rank "
                        "per GPU, requeued and resumed when preempted or out of time")
    slurm_flags(p, "1 node, no GPU, 2 CPU cores per task, 60 min")
    p.add_argument("--nodes", type=int, default=1, help="--executor slurm: nodes (default 1)")
    p.add_argument("--tasks-per-node", type=int,
                   help="--executor slurm: ranks per node (default: --gpus-per-node, or 1)")
    data_flags(p)
    p.set_defaults(func=cmd_pretrain)

    frozen_help = "dataset (default: the one it was pre-trained on)"
    for name, text, dataset_help, func in (
            ("probe", "linear probe (BatchNorm without affine + linear) on frozen features",
             frozen_help, cmd_frozen),
            ("knn", "weighted kNN classifier on frozen features", frozen_help, cmd_frozen),
            ("frozen", "linear probe and kNN on the same frozen features (extracted once)",
             frozen_help, cmd_frozen),
            ("finetune", "fine-tune the encoder end to end (from a checkpoint or random init)",
             "dataset (default: the pre-training one, or cifar10)", cmd_finetune)):
        p = sub.add_parser(name, help=text, description=text.capitalize() + ".")
        init_flags(p)
        p.add_argument("--dataset", help=dataset_help)
        subset_flags(p)
        add_dataclass_flags(p, EvalConfig, "evaluation", eval_fields(name))
        p.add_argument("--out", help="also write the metrics JSON here")
        p.add_argument("--no-progress", action="store_true", help="no progress bar")
        if name == "finetune":
            p.add_argument("--curve-every", type=int, default=0, metavar="STEPS",
                           help="every STEPS steps and at the end, record the training loss and "
                                "top-1 on the test set and on clean training images "
                                "(finetune_curve; default 0: none)")
        data_flags(p)
        p.set_defaults(func=func)

    p = sub.add_parser("visualize", help="draw reconstructions of test images to a PNG",
                       description="Draw original / masked / reconstruction for test images.")
    p.add_argument("--checkpoint", required=True,
                   help=f"{CHECKPOINT}, its run folder, or a trained model's name")
    p.add_argument("--out", required=True, help="PNG file to write")
    p.add_argument("--num", type=int, default=6, help="number of images (default: 6)")
    p.add_argument("--mask-ratio", type=float, help="mask ratio (default: the model's)")
    p.add_argument("--seed", type=int, default=0, help="which images and masks (default: 0)")
    p.add_argument("--dataset", help="dataset (default: the pre-training one)")
    p.add_argument("--device", default="auto",
                   help="auto (CUDA when present, else the CPU), cpu, cuda or cuda:N")
    p.add_argument("--precision", default="auto", choices=PRECISIONS,
                   help="autocast: auto (the policy of pretrain), fp32, bf16 or fp16")
    data_flags(p)
    p.set_defaults(func=cmd_visualize)

    p = sub.add_parser("export", help="a pre-training run's weights as a small file to share",
                       description="Write the weights, configs and data fingerprint of a "
                                   "pre-training run (no optimizer state) to --out, and its record "
                                   "(pretrain_metrics.json, sha256) beside it as JSON. --list "
                                   "names the trained models mae.pretrained.load knows.")
    p.add_argument("run", nargs="?", help=f"the run folder (or its {CHECKPOINT})")
    p.add_argument("--out", help="the .pt file to write; its record goes to the same name .json")
    p.add_argument("--overwrite", action="store_true",
                   help="replace an existing --out file and its .json record")
    p.add_argument("--list", action="store_true", help="list the registered trained models")
    p.set_defaults(func=cmd_export)

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
    p.add_argument("--rerun-stale", action="store_true",
                   help="rerun finished points whose recorded configs differ from the sweep and "
                        "tier now (without it they are refused by name); old folders are kept")
    p.add_argument("--executor", choices=("inline", "local", "slurm"), default="inline",
                   help="inline: one point after another in this process (default); local: "
                        "--jobs worker processes on this machine share the points (each point's "
                        "folder lock keeps two from running it), each on its own GPU "
                        "(CUDA_VISIBLE_DEVICES) or its share of the CPU cores; slurm: one "
                        "SLURM job per point and seed through submitit, as a job array, "
                        "requeued and resumed when preempted or out of time")
    p.add_argument("--jobs", type=int, default=1,
                   help="worker processes for --executor local (default 1)")
    slurm_flags(p, "the tier's slurm: entry in ablations/tiers.yaml")
    p.add_argument("--array-parallelism", type=int,
                   help="--executor slurm: most jobs of the array running at once (default 16)")
    p.set_defaults(func=cmd_ablate)

    p = sub.add_parser("report", help="tables and figures from the run folders",
                       description="Turn results/runs/ into results/tables/*.csv, *.md and "
                                   "results/figures/*.png (byte-identical on a rerun).")
    p.add_argument("--results", help="results folder (default: results/)")
    p.set_defaults(func=cmd_report)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run a command; a user's mistake (or the machine's: a full disk, a read-only folder, a
    diverged run) ends in one line ``error: ...`` and exit status 2, the traceback only with
    --debug (or MAE_DEBUG=1)."""
    import os
    import re

    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except (MAEError, OSError) as e:
        if args.debug or os.environ.get("MAE_DEBUG") == "1":
            raise
        text = re.sub(r"\x1b\[[0-9;]*m", "", str(e))  # no terminal colour codes from torch
        if isinstance(e, OSError) and e.filename:
            text = f"{e.strerror or e} ({e.filename})"
        print(f"error: {text}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
