"""The README's table of trained models, generated from the records that ship with them.

Each row comes from ``checkpoints/<name>.json`` (the model, the run that trained it, the file's
size) and, where the model was evaluated, from ``results/runs/reader/<name>/frozen.json`` and
``frozen-mean.json`` (linear probe and kNN on frozen CLS features and on the mean of the patch
tokens, the full test set). ``python tools/readme_models.py``
rewrites the table in README.md; ``tests/test_book.py`` checks it is up to date.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
HEADER = ("| name | model | trained | time | frozen features (test set) | size | what for |\n"
          "| --- | --- | --- | --- | --- | --- | --- |\n")
# What each model is for in the book: the one column no record holds.
USE = {"micro-cifar10": "chapters 6-7: features",
       "wide-cifar10": "chapter 7: features, a wider encoder trained longer",
       "wide-imagenette-pixels": "chapters 6 and 9, the released-weights page: pictures",
       "micro-imagenette-pixels": "chapter 6: the first picture model, for comparison"}
DATASETS = {"cifar10": "CIFAR-10", "imagenette": "Imagenette"}


def row(name: str) -> str:
    record = json.loads((ROOT / "checkpoints" / f"{name}.json").read_text())
    model, run = record["config"]["model"], record["pretrain"]
    patch, side = model["patch_size"], model["img_size"]
    target = "norm-pix target" if model["norm_pix_loss"] else "pixel target"
    what = (f"encoder {model['encoder_dim']}-d x {model['encoder_layers']}, decoder "
            f"{model['decoder_dim']}-d x {model['decoder_layers']}, {patch} x {patch} patches "
            f"of {side} px images, {target}")
    data = run["data"]
    trained = (f"{run['epochs']:.0f} epochs of {DATASETS.get(data['name'], data['name'])} "
               f"({data['num_images']:,} images), {run['steps']:,} steps of "
               f"{record['config']['train']['batch_size']}, final loss {run['final_loss']:.3f}")
    time = (f"{run['wall_time_s'] / 60:.0f} min wall, {run['cpu_time_s'] / 60:.0f} CPU-min on "
            f"{run['provenance']['device_name']}")
    scored = []
    for file in ("frozen.json", "frozen-mean.json"):
        found = ROOT / "results" / "runs" / "reader" / name / file
        if found.is_file():
            scores = json.loads(found.read_text())
            tested_on = DATASETS.get(scores["data"]["name"], scores["data"]["name"])
            scored.append(f"linear probe {scores['probe_top1']:.1f} %, kNN "
                          f"{scores['knn_top1']:.1f} % ({scores['eval']['features'].upper()} "
                          f"features, {tested_on})")
    features = "; ".join(scored) or "not evaluated"
    size = f"{record['bytes'] / 1e6:.1f} MB"
    return f"| `{name}` | {what} | {trained} | {time} | {features} | {size} | {USE[name]} |\n"


def table() -> str:
    names = sorted(p.stem for p in (ROOT / "checkpoints").glob("*.json"))
    return HEADER + "".join(row(name) for name in names)


def main() -> int:
    text = README.read_text()
    start = text.index(HEADER)
    end = text.index("\n\n", start) + 1
    README.write_text(text[:start] + table() + text[end:])
    return 0


if __name__ == "__main__":
    sys.exit(main())
