"""Data pipeline vs model: images/s of load + augmentation against images/s of a train step.

    python benchmarks/data_pipeline.py [--preset micro] [--dataset cifar10] [--smoke]

Both are measured in this one process, interleaved, as medians of repeated timings; the ratio
(pipeline / train step) is printed last. The pipeline is what `mae.train` runs per step: draw
the step's crops, flips and masks, gather the batch from the in-memory uint8 tensor, augment.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from mae import MAE, MAEConfig
from mae.config import TrainConfig
from mae.data import load_dataset
from mae.runtime import Dist
from mae.train import draw_batch, epoch_order, param_groups


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="micro")
    parser.add_argument("--dataset", default="cifar10")
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--smoke", action="store_true", help="seconds-long check that it runs")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    repeats = 2 if args.smoke else args.repeats
    config = MAEConfig.preset(args.preset)
    tc = TrainConfig(dataset=args.dataset, batch_size=args.batch_size)
    data = load_dataset(args.dataset, "train",
                        img_size=None if args.dataset.startswith("cifar") else config.img_size)
    order = epoch_order(len(data), 0, 0)
    model = MAE(config)
    opt = torch.optim.AdamW(param_groups(model, 0.05), lr=1e-4, betas=(0.9, 0.95))
    B = args.batch_size

    def pipeline(i: int):
        start = (i * B) % (len(data) - B)
        return draw_batch(data, order, start, B, config.img_size, config, tc, i, Dist())

    def train_step(batch):
        loss = model(batch[0], noise=batch[1]).loss
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    batch = pipeline(0)
    train_step(batch)  # warm-up
    pipe_times, step_times = [], []
    for i in range(repeats):  # interleaved, so machine noise hits both alike
        t = time.perf_counter()
        batch = pipeline(i + 1)
        pipe_times.append(time.perf_counter() - t)
        t = time.perf_counter()
        train_step(batch)
        step_times.append(time.perf_counter() - t)
    pipe = B / statistics.median(pipe_times)
    step = B / statistics.median(step_times)
    spread = (B / min(pipe_times) - B / max(pipe_times)) / 2
    print(f"device cpu, {torch.get_num_threads()} threads, torch {torch.__version__}, "
          f"{args.dataset}, preset {args.preset}, batch {B}, {repeats} repeats")
    print(f"data pipeline (gather + crop/flip/resize + masks): {pipe:9.0f} images/s (+/- {spread:.0f})")
    print(f"train step (forward + backward + AdamW):           {step:9.0f} images/s")
    print(f"ratio pipeline / train step: {pipe / step:.1f}x")


if __name__ == "__main__":
    main()
