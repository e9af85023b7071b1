"""benchmarks/: the smoke modes run every section and write the report (speed is not tested here)."""

import csv
import json
import importlib
import os
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import needs_cifar

ROOT = Path(__file__).resolve().parents[1]


def load(name: str):
    """A module of benchmarks/ (they import each other by their bare names, so benchmarks/ is
    on sys.path while it is imported)."""
    sys.path.insert(0, str(ROOT / "benchmarks"))
    try:
        return importlib.import_module(name)
    finally:
        sys.path.remove(str(ROOT / "benchmarks"))


@pytest.mark.slow
def test_smoke_run_writes_every_section(tmp_path):
    out = subprocess.run([sys.executable, "benchmarks/bench.py", "--smoke", "--threads", "1",
                          "--out", str(tmp_path)], cwd=ROOT, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr[-2000:]
    (md,) = tmp_path.glob("*-smoke.md")
    rows = list(csv.DictReader(md.with_suffix(".csv").open()))
    sections = {r["section"] for r in rows}
    assert {"matmul_peak", "train_step", "encoder_variant", "matmul_ceiling"} <= sections
    if os.environ.get("MAE_DATA"):
        assert "data_pipeline" in sections
    impls = {(r["shape"], r["impl"]) for r in rows if r["section"] == "train_step"}
    for shape in ("micro", "tiny", "vit-b-d4"):
        assert {(shape, i) for i in ("mae", "mae no-CLS", "transformers", "vit-pytorch")} <= impls
    assert any(r["peak_mem_mib"] for r in rows)
    text = md.read_text()
    assert "## Ratios" in text and "mae / transformers" in text
    assert "mae no-CLS / vit-pytorch" in text and "mae / vit-pytorch" in text
    assert "its own matmuls alone run at" in text
    last = out.stdout.rstrip().splitlines()
    assert last[-2].startswith("mae ahead of every peer")
    assert last[-1].startswith("mae not slower than any peer by more than the spread, at equal")
    # each library's default (mae's precision auto, the peers' float32) and the step's overhead
    assert "[defaults] micro: mae / transformers" in text
    assert "the step takes" in text and "x the time of its matmuls (overhead)" in text
    from mae.runtime import cpu_has_native_bf16
    precisions = {r["precision"] for r in rows if r["section"] == "train_step"}
    assert precisions == ({"fp32", "bf16"} if cpu_has_native_bf16() else {"fp32"})
    assert all(float(r["overhead"]) > 0 for r in rows if r["section"] == "matmul_ceiling")


@pytest.mark.slow
@needs_cifar
def test_gpu_script_dry_run(tmp_path):
    out = subprocess.run(["bash", "benchmarks/gpu.sh", "--dry-run", "--compile", "off",
                          "--no-memory", "--no-speedup", "--threads", "1"], cwd=ROOT,
                         capture_output=True, text=True, env={**os.environ, "OUT": str(tmp_path),
                                                              "PYTHON": sys.executable})
    assert out.returncode == 0, out.stderr[-2000:]
    rows = list(csv.DictReader(next(tmp_path.glob("cpu-*threads*.csv")).open()))
    assert {r["shape"] for r in rows if r["section"] == "train_step"} == {"vit-b"}
    # step 2: the default point end to end (smoke tier), its run folder and the summary table
    metrics = tmp_path / "results" / "runs" / "smoke" / "cifar10" / "default" / "seed0" / "metrics.json"
    record = json.loads(metrics.read_text())
    assert {"probe_top1", "knn_top1", "pretrain_images_per_s"} <= set(record["metrics"])
    summary = next(tmp_path.glob("*-smoke-default.md")).read_text()
    assert "| smoke/cifar10/default/seed0 |" in summary.replace("runs/", "")
    assert f"{record['metrics']['probe_top1']:.1f}" in summary


def test_same_architecture_in_every_implementation():
    """Parameter counts agree: ours and transformers' exactly, vit-pytorch's within its extras
    (learned positions, two patch-embedding norms, no CLS token)."""
    common = load("common")
    import torch

    config = common.shape_config("micro", smoke=False)
    counts = {i: sum(p.numel() for p in common.build(i, config, torch.device("cpu"))[0].parameters()
                  if p.requires_grad)  # transformers keeps its fixed sin-cos tables as parameters
              for i in (*common.IMPLS, common.NO_CLS)}
    assert counts["mae"] == counts["transformers"]
    assert counts[common.NO_CLS] == counts["mae"] - config.encoder_dim  # only the CLS token
    assert abs(counts["vit-pytorch"] - counts["mae"]) / counts["mae"] < 0.03


def test_mae_loss_with_and_without_the_shortcut():
    """build's mae loss: hidden_patch_loss (as mae.train) by default, the full forward with
    shortcut=False; the two agree."""
    common = load("common")
    import torch

    config = common.shape_config("micro", smoke=True)
    x = torch.randn(2, config.in_chans, config.img_size, config.img_size)
    noise = torch.rand(2, config.num_patches)
    losses = [common.build("mae", config, torch.device("cpu"), shortcut)[1](x, noise)
              for shortcut in (True, False)]
    torch.testing.assert_close(losses[0], losses[1])


def test_smoke_output_stays_out_of_the_results():
    report = load("report")
    assert report.output_folder(None, smoke=False) == ROOT / "results" / "benchmarks"
    assert report.output_folder(None, smoke=True) != ROOT / "results" / "benchmarks"
    assert report.output_folder(Path("x"), smoke=True) == Path("x")


def test_ratio_counts_the_spread():
    report, common = load("report"), load("common")
    ours = dict(shape="s", impl="mae", images_per_s=110.0, spread=1.0)
    close = dict(shape="s", impl="peer", images_per_s=100.0, spread=10.0)
    far = dict(shape="s", impl="peer", images_per_s=100.0, spread=1.0)
    assert report.ratio_line(ours, close)[1] is False
    assert report.ratio_line(ours, far)[1] is True
    rate, spread = common.summary([1.0, 1.0, 2.0, 0.5, 1.0], batch=10)
    assert rate == 10.0 and spread > 0


@pytest.mark.slow
def test_speedups_smoke_run_writes_its_table(tmp_path):
    out = subprocess.run([sys.executable, "benchmarks/speedups.py", "--smoke", "--threads", "1",
                          "--configs", "micro", "--out", str(tmp_path)], cwd=ROOT,
                         capture_output=True, text=True)
    assert out.returncode == 0, out.stderr[-2000:]
    (md,) = tmp_path.glob("*-speedups.md")
    text = md.read_text()
    for variant in ("mae", "every prediction", "for-loop AdamW"):
        # in one shared process, and each in its own
        assert text.count(f"| micro | {variant} |") == 2
    assert "Each variant in a process of its own" in text


def test_bf16_smoke_run_writes_both_tables(tmp_path):
    env = {**os.environ, "MAE_CPU_BF16": "1"}  # the measurement runs wherever bf16 is forced
    out = subprocess.run([sys.executable, "benchmarks/bf16.py", "--smoke", "--threads", "1",
                          "--out", str(tmp_path)], cwd=ROOT, capture_output=True, text=True,
                         env=env)
    assert out.returncode == 0, out.stderr[-2000:]
    (md,) = tmp_path.glob("*-bf16.md")
    text = md.read_text()
    for shape in ("micro", "tiny", "vit-b-d4"):
        for part in ("encoder", "decoder"):
            assert text.count(f"| {shape} {part} |") == 2  # bf16 and fp32
    assert "| 128 |" in text and "CPU_BF16_MIN_WIDTH at this commit" in text


def test_bf16_benchmark_refuses_a_cpu_without_native_bf16(tmp_path):
    out = subprocess.run([sys.executable, "benchmarks/bf16.py", "--smoke", "--out", str(tmp_path)],
                         cwd=ROOT, capture_output=True, text=True,
                         env={**os.environ, "MAE_CPU_BF16": "0"})
    assert out.returncode == 2 and "no native bf16" in out.stderr
    assert len(out.stderr.strip().splitlines()) == 1 and not list(tmp_path.iterdir())


def test_ceiling_captures_every_product_of_a_step():
    """The products captured from one train step carry the FLOPs mae.flops counts analytically
    (linears, and attention's as batched matmuls), forward and backward."""
    common, ceiling = load("common"), load("ceiling")
    import torch
    from mae.flops import mae_flops

    for overrides in ({}, {"encoder_mask_tokens": True}, {"cls_token": False}):
        config = common.shape_config("micro", smoke=False, **overrides)
        stepper = common.Stepper("mae", config, 4, torch.device("cpu"), None)
        products = ceiling.capture(stepper)
        captured = sum(ceiling.flops(p) * n for p, n in products.items())
        analytic = mae_flops(config)["train_step"] * 4
        assert abs(captured / analytic - 1) < 0.01, (overrides, captured, analytic)
        assert {p[0] for p in products} == {"mm", "bmm"}
