"""Throughput of the streaming loader (mae.streaming) at 224 px, and what it means for planning.

    python benchmarks/loader.py            # -> results/benchmarks/loader-cpu.md
    python benchmarks/loader.py --smoke    # seconds, into a temporary folder

Generates an ImageFolder of JPEGs at ImageNet's typical size (500 x 375, quality 90, smooth
synthetic content rather than noise, which would decode slower than photographs), then times
`stream_batches` as pre-training uses it: read, decode, random-resized crop (scale 0.2-1,
bicubic to 224 px), flip, collate; with the decoding in this process (one core) and with worker
processes. The report sets the rate per worker against what one GPU's train step consumes, from
the official code's published training time, and says how many workers a GPU needs.
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from mae import MAEConfig  # noqa: E402
from mae.data import load_dataset  # noqa: E402
from mae.flops import mae_flops  # noqa: E402
from mae.provenance import device_name, git_state, versions, write_text_atomic  # noqa: E402
from mae.streaming import stream_batches  # noqa: E402
from mae.train import epoch_order  # noqa: E402

# Official MAE, PRETRAIN.md: ViT-L/16, 800 epochs of ImageNet-1K (1,281,167 images), "~42h in
# 64 V100 GPUs". Per GPU: images seen / (hours * 3600) / 64.
VITL_V100 = 1_281_167 * 800 / (42 * 3600) / 64
SOURCE = ("facebookresearch/mae PRETRAIN.md: ViT-L/16 800 epochs ~42 h on 64 V100 "
          "(1.28 M images x 800 / 42 h / 64)")


def make_folder(root: Path, n: int) -> Path:
    from PIL import Image

    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:375, 0:500].astype(np.float32)
    for i in range(n):
        d = root / "train" / f"c{i % 4}"
        d.mkdir(parents=True, exist_ok=True)
        f = rng.uniform(0.005, 0.05, size=(3, 2))
        img = np.stack([127 + 100 * np.sin(f[c, 0] * xx + f[c, 1] * yy + i) for c in range(3)],
                       axis=-1)
        img += rng.normal(0, 12, size=img.shape)  # some texture
        Image.fromarray(img.clip(0, 255).astype(np.uint8)).save(d / f"{i}.JPEG", quality=90)
    return root


def rate(data, workers: int, steps: int, batch: int) -> float:
    """images/s over ``steps`` batches, after one warm-up batch (worker start-up excluded)."""
    it = stream_batches(data, lambda e: epoch_order(len(data), 0, e), batch, 1, 0, 0, steps + 1,
                        max(1, len(data) // batch), 0, 1, workers=workers)
    next(it)
    t = time.perf_counter()
    for _ in range(steps):
        next(it)
    return steps * batch / (time.perf_counter() - t)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--smoke", action="store_true", help="a few batches, into a temporary folder")
    p.add_argument("--workers", type=int, nargs="+", default=[0, 2],
                   help="worker counts to time (0: decoding in this process; default 0 2)")
    p.add_argument("--repeats", type=int, default=3, help="timed runs per setting (median)")
    p.add_argument("--out", type=Path, help="output folder (default results/benchmarks)")
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    n, steps, batch = (64, 2, 16) if args.smoke else (512, 12, 32)
    out = args.out or (Path(tempfile.gettempdir()) / "mae-bench-smoke" if args.smoke
                       else ROOT / "results" / "benchmarks")
    with tempfile.TemporaryDirectory() as tmp:
        folder = make_folder(Path(tmp), n)
        data = load_dataset(f"folder:{folder}", "train", img_size=224, loader="stream")
        rows = []
        for workers in args.workers:
            rates = [rate(data, workers, steps, batch) for _ in range(args.repeats)]
            med = statistics.median(rates)
            rows.append((workers, med, (max(rates) - min(rates)) / 2, med / max(1, workers)))
            print(f"workers {workers}: {med:.0f} images/s", flush=True)
    per_worker = rows[0][3]  # the first setting's rate per worker (default: one core's)
    vitb = VITL_V100 * mae_flops(MAEConfig.preset("large"))["train_step"] / mae_flops(
        MAEConfig.preset("base"))["train_step"]
    v, g = versions(), git_state()
    lines = [
        "# Streaming loader throughput (224 px)", "",
        f"- machine: {device_name('cpu')}, {os.cpu_count()} cores; torch threads 1 per process",
        f"- date: {dt.datetime.now(dt.timezone.utc):%Y-%m-%d %H:%M UTC}",
        f"- versions: python {v['python']}, torch {v['torch']}, mae {v['mae']}",
        f"- git commit: {g['git_commit']}{' (uncommitted changes)' if g['git_dirty'] else ''}",
        f"- command: python benchmarks/loader.py {' '.join(argv if argv is not None else sys.argv[1:])}",
        f"- data: {n} generated JPEGs, 500 x 375, quality 90; batches of {batch}, {steps} timed "
        f"after a warm-up batch, median of {args.repeats} runs (spread: half the range)", "",
        "| workers | images/s | spread | images/s per worker |", "| --- | --- | --- | --- |",
        *[f"| {w if w else '0 (in process)'} | {r:.0f} | {s:.0f} | {pw:.0f} |"
          for w, r, s, pw in rows], "",
        "What one GPU's pre-training step consumes, and the workers it needs at the rate of one "
        f"core here ({per_worker:.0f} images/s):", "",
        "| model | images/s per GPU | source | workers per GPU |", "| --- | --- | --- | --- |",
        f"| ViT-L/16 (paper tier) | {VITL_V100:.0f} on a V100 | {SOURCE} | "
        f"{VITL_V100 / per_worker:.1f} |",
        f"| ViT-B/16 | {vitb:.0f} on a V100 (estimate) | the ViT-L figure x the ratio of train-"
        f"step FLOPs (mae.flops: {mae_flops(MAEConfig.preset('large'))['train_step'] / 1e9:.0f} / "
        f"{mae_flops(MAEConfig.preset('base'))['train_step'] / 1e9:.0f} GFLOP an image) | "
        f"{vitb / per_worker:.1f} |", "",
        "A GPU k times faster than a V100 (bf16 on an H100-class part) needs k times the workers; "
        "the official code runs 10 per GPU (`--num_workers 10`), which is what the paper tier "
        "sets (`num_workers: 10`).", ""]
    out.mkdir(parents=True, exist_ok=True)
    path = write_text_atomic(out / ("loader-cpu-smoke.md" if args.smoke else "loader-cpu.md"),
                             "\n".join(lines))
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
