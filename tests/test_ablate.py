"""The papermill ablation suite, end to end at the smoke tier."""

import filecmp
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import needs_cifar
from mae import ConfigError
from mae.ablate import load_sweep, sweep_names, sweep_points

ROOT = Path(__file__).resolve().parents[1]
pytestmark = needs_cifar


def ablate(*args, cwd=ROOT, **kwargs):
    return subprocess.run([sys.executable, "-m", "mae", "ablate", *args], cwd=cwd,
                          capture_output=True, text=True, **kwargs)


def test_specs_are_valid_and_share_the_default_point():
    names = sweep_names(ROOT)
    assert {"mask_ratio", "decoder_depth", "decoder_width", "target", "mask_sampling",
            "mask_tokens"} <= set(names)
    assert [p.value for p in sweep_points(ROOT, "mask_ratio", "cpu")] == [
        0.1, 0.25, 0.5, 0.75, 0.75, 0.75, 0.9]  # 3 seeds at the shared default point
    shared = {p.run_dir for p in sweep_points(ROOT, "mask_ratio", "cpu") if p.name == "default"}
    assert shared == {p.run_dir for p in sweep_points(ROOT, "decoder_depth", "cpu")
                      if p.name == "default"}
    for name in names:
        spec = load_sweep(ROOT, name)
        assert {"smoke", "cpu", "gpu-quick", "gpu"} <= set(spec["tiers"]), name
        for tier in spec["tiers"]:
            if tier != "paper":
                assert sweep_points(ROOT, name, tier)
    with pytest.raises(ConfigError, match="Did you mean 'mask_ratio'"):
        load_sweep(ROOT, "mask_ration")
    with pytest.raises(ConfigError, match="sweep 'mask_ratio' has no 'cpuu' tier; its tiers: smoke"):
        sweep_points(ROOT, "mask_ratio", "cpuu")


@pytest.mark.slow
def test_every_sweep_at_smoke_tier_then_report_is_reproducible(tmp_path):
    results = tmp_path / "results"
    run = ablate("all", "--tier", "smoke", "--results", str(results))
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    for name in sweep_names(ROOT):
        for point in sweep_points(ROOT, name, "smoke", results=results):
            record = json.loads((point.run_dir / "metrics.json").read_text())
            assert 0 <= record["metrics"]["probe_top1"] <= 100
            assert record["config"]["model"]["mask_ratio"] == point.model["mask_ratio"]
            assert record["provenance"]["git_commit"] and record["data"]["train"]["sha256"]
            assert (point.run_dir / "ablation.ipynb").is_file()
            assert (point.run_dir / "reconstructions.png").is_file()
            assert record["cpu_time_s"] > 0 and record["other_load"] >= 0
            # The baseline is not pre-trained: no training folder, no pre-training metrics.
            assert record["pretrain"] is (name != "random_init")
            assert (point.run_dir / "train").is_dir() is record["pretrain"]
            # The smoke tier logs pre-training for TensorBoard, as the GPU tiers do.
            assert (point.run_dir / "train" / "tensorboard").is_dir() is record["pretrain"]
            assert ("pretrain_steps" in record["metrics"]) is record["pretrain"]
    assert [p.name for p in sweep_points(ROOT, "random_init", "cpu")] == ["random_init"] * 3
    # A second run executes nothing.
    again = ablate("all", "--tier", "smoke", "--results", str(results))
    assert again.returncode == 0 and "running" not in again.stdout
    report = subprocess.run([sys.executable, "-m", "mae", "report", "--results", str(results)],
                            cwd=ROOT, capture_output=True, text=True)
    assert report.returncode == 0, report.stderr
    tables = results / "tables"
    assert (tables / "mask_ratio-smoke.md").is_file() and (tables / "mask_ratio-smoke.csv").is_file()
    # Every sweep's table ends with the random-init baseline and applies the stated rule.
    table = (tables / "mask_ratio-smoke.md").read_text()
    assert table.splitlines()[-5].startswith("| random init | 1 |") and "(reference)" in table
    assert "beyond the spread" in table
    assert (results / "figures" / "decoder_depth-smoke.png").is_file()
    copy = tmp_path / "first"
    shutil.copytree(results / "tables", copy / "tables")
    shutil.copytree(results / "figures", copy / "figures")
    shutil.rmtree(results / "tables")
    subprocess.run([sys.executable, "-m", "mae", "report", "--results", str(results)], cwd=ROOT,
                   check=True, capture_output=True)
    for sub in ("tables", "figures"):
        cmp = filecmp.dircmp(copy / sub, results / sub)
        assert not cmp.left_only and not cmp.right_only
        for name in cmp.common_files:
            assert (copy / sub / name).read_bytes() == (results / sub / name).read_bytes(), name


@pytest.mark.slow
def test_a_sweep_on_imagenette(tmp_path):
    results = tmp_path / "results"
    run = ablate("target", "--tier", "smoke", "--dataset", "imagenette", "--results", str(results))
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    metrics = sorted((results / "runs" / "smoke" / "imagenette").glob("*/seed0/metrics.json"))
    assert len(metrics) == 2
    record = json.loads(metrics[0].read_text())
    assert record["data"]["train"]["name"] == "imagenette"
    assert record["data"]["train"]["num_classes"] == 10
    report = subprocess.run([sys.executable, "-m", "mae", "report", "--results", str(results)],
                            cwd=ROOT, capture_output=True, text=True)
    assert report.returncode == 0, report.stderr
    tables = results / "tables"
    assert (tables / "target-smoke-imagenette.md").is_file()
    # The shared default point alone does not make a table for the sweeps that did not run there.
    assert not (tables / "mask_ratio-smoke-imagenette.md").exists()


@pytest.mark.slow
def test_killed_sweep_reruns_only_missing_points(tmp_path):
    results = tmp_path / "results"
    proc = subprocess.Popen([sys.executable, "-m", "mae", "ablate", "decoder_depth", "--tier",
                             "smoke", "--results", str(results)], cwd=ROOT,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    points = sweep_points(ROOT, "decoder_depth", "smoke", results=results)
    deadline = time.time() + 300
    while time.time() < deadline and not points[1].run_dir.is_dir():
        time.sleep(0.1)
    time.sleep(3)  # well into the second point's notebook
    os.killpg(proc.pid, signal.SIGKILL)  # the runner and its kernel
    proc.wait()
    assert (points[0].run_dir / "metrics.json").is_file()
    assert not (points[1].run_dir / "metrics.json").is_file()
    first_mtime = (points[0].run_dir / "metrics.json").stat().st_mtime_ns
    rerun = ablate("decoder_depth", "--tier", "smoke", "--results", str(results))
    assert rerun.returncode == 0, rerun.stdout[-3000:]
    lines = [line for line in rerun.stdout.splitlines() if line.startswith("[")]
    assert "skipped" in lines[0]
    assert sum("running" in line for line in lines) == len(points) - 1
    assert (points[0].run_dir / "metrics.json").stat().st_mtime_ns == first_mtime
    assert all((p.run_dir / "metrics.json").is_file() for p in points)


def project_copy(tmp_path):
    root = tmp_path / "project"
    shutil.copytree(ROOT / "ablations", root / "ablations")
    (root / "notebooks").mkdir()
    shutil.copy(ROOT / "notebooks" / "ablation.ipynb", root / "notebooks")
    return root


def test_a_bad_parameter_is_refused_before_any_kernel_starts(tmp_path):
    root = project_copy(tmp_path)
    (root / "ablations" / "broken.yaml").write_text(
        "name: broken\ntitle: Broken\npaper_source: none\nparameter: mask_ratio\n"
        "values: [0.5, 1.5, 0.9]\ntiers: [smoke]\n")
    run = ablate("broken", "--tier", "smoke", "--results", str(root / "results"), cwd=root)
    assert run.returncode == 2
    assert "mask_ratio must be in [0, 1)" in run.stderr and "1.5" in run.stderr
    assert not (root / "results" / "runs").exists()  # no stray run folders


@pytest.mark.slow
def test_a_point_finished_with_other_settings_is_refused_by_name(tmp_path):
    root = project_copy(tmp_path)
    results = root / "results"
    assert ablate("random_init", "--tier", "smoke", "--results", str(results),
                  cwd=root).returncode == 0
    tiers = root / "ablations" / "tiers.yaml"
    tiers.write_text(tiers.read_text().replace("eval: {probe_epochs: 5,", "eval: {probe_epochs: 6,"))
    again = ablate("random_init", "--tier", "smoke", "--results", str(results), cwd=root)
    assert again.returncode == 2 and "running" not in again.stdout
    assert "were run with other configs" in again.stderr
    assert "eval.probe_epochs: run 5, now 6" in again.stderr and "--rerun-stale" in again.stderr
    report = subprocess.run([sys.executable, "-m", "mae", "report", "--results", str(results)],
                            cwd=root, capture_output=True, text=True)
    assert report.returncode == 0 and "left out, run with other configs" in report.stdout
    rerun = ablate("random_init", "--tier", "smoke", "--results", str(results), "--rerun-stale",
                   cwd=root)
    assert rerun.returncode == 0, rerun.stdout[-2000:]
    runs = results / "runs" / "smoke" / "cifar10" / "random_init"
    record = json.loads((runs / "seed0" / "metrics.json").read_text())
    assert record["config"]["eval"]["probe_epochs"] == 6
    assert [p.name[:12] for p in runs.iterdir() if p.name.startswith("stale-")] == ["stale-seed0-"]


def test_a_point_another_process_runs_is_not_run_twice(tmp_path):
    import fcntl

    root = project_copy(tmp_path)
    run_dir = root / "results" / "runs" / "smoke" / "cifar10" / "random_init" / "seed0"
    run_dir.mkdir(parents=True)
    with open(run_dir / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # as the other ablate process holds it
        run = ablate("random_init", "--tier", "smoke", "--results", str(root / "results"),
                     cwd=root)
    assert run.returncode == 0 and "running in another process, skipped" in run.stdout
    assert "0 of 1 points complete, 1 left to another process" in run.stdout
    assert not (run_dir / "metrics.json").exists()


@pytest.mark.slow
def test_a_malformed_sweep_file_is_named_and_does_not_stop_the_report(tmp_path):
    root = project_copy(tmp_path)
    (root / "ablations" / "listed.yaml").write_text("- 0.5\n- 0.9\n")
    (root / "ablations" / "novalues.yaml").write_text("title: X\nparameter: mask_ratio\ntiers: [smoke]\n")
    for name, message in (("listed", "must be a mapping"), ("novalues", "lacks its points")):
        run = ablate(name, "--tier", "smoke", "--results", str(root / "results"), cwd=root)
        assert run.returncode == 2 and message in run.stderr and "Traceback" not in run.stderr
    assert ablate("random_init", "--tier", "smoke", "--results", str(root / "results"),
                  cwd=root).returncode == 0
    report = subprocess.run([sys.executable, "-m", "mae", "report", "--results",
                             str(root / "results")], cwd=root, capture_output=True, text=True)
    assert report.returncode == 2 and "listed, novalues could not be read" in report.stderr
    assert (root / "results" / "tables" / "random_init-smoke.md").is_file()


def test_the_spread_rule():
    from mae.report import beyond_spread

    default = (50.8, 0.6)
    assert beyond_spread((49.0, 0.0), 1, default, 3) is True  # 1.8 > 2 x 0.6
    assert beyond_spread((50.0, 0.0), 1, default, 3) is False  # 0.8 < 1.2
    assert beyond_spread((49.0, 1.0), 3, default, 3) is False  # 1.8 < 2 x 1.0: the larger std
    assert beyond_spread((49.0, 0.0), 1, (50.8, 0.0), 1) is None  # no spread to judge by
    assert beyond_spread(None, 0, default, 3) is None


@pytest.mark.slow
@needs_cifar
def test_local_and_submitit_executors_give_the_inline_metrics(tmp_path):
    """--executor local --jobs 2: two workers share a sweep's points through the folder locks;
    --executor slurm --cluster local: one submitit job per point. Every point runs once and the
    metrics are those of an inline run (same thread count)."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    inline = ablate("decoder_depth", "--tier", "smoke", "--results", str(tmp_path / "a"), env=env)
    assert inline.returncode == 0, inline.stdout[-2000:] + inline.stderr[-2000:]
    local = ablate("decoder_depth", "--tier", "smoke", "--results", str(tmp_path / "b"),
                   "--executor", "local", "--jobs", "2", env=env)
    assert local.returncode == 0, local.stdout[-2000:] + local.stderr[-2000:]
    ran = [line for line in local.stdout.splitlines() if ": running ->" in line]
    points = sweep_points(ROOT, "decoder_depth", "smoke", results=tmp_path / "b")
    assert len(ran) == len(points)  # each point run by exactly one of the two workers
    assert {line.split("]")[0] for line in ran} == {"[job 0", "[job 1"}  # both worked
    jobs = ablate("decoder_depth", "--tier", "smoke", "--results", str(tmp_path / "c"),
                  "--executor", "slurm", "--cluster", "local", "--array-parallelism", "2", env=env)
    assert jobs.returncode == 0, jobs.stdout[-2000:] + jobs.stderr[-2000:]
    assert jobs.stdout.count("submitted smoke/cifar10/") == len(points)
    assert f"{len(points)} of {len(points)} jobs complete" in jobs.stdout
    for point in points:
        a_dir = tmp_path / "a" / point.run_dir.relative_to(tmp_path / "b")
        a = json.loads((a_dir / "metrics.json").read_text())["metrics"]
        for other in ("b", "c"):
            b_dir = tmp_path / other / point.run_dir.relative_to(tmp_path / "b")
            b = json.loads((b_dir / "metrics.json").read_text())["metrics"]
            for key in ("probe_top1", "knn_top1", "pretrain_final_loss"):
                assert a[key] == b[key], (other, point.name, key)
    again = ablate("decoder_depth", "--tier", "smoke", "--results", str(tmp_path / "c"),
                   "--executor", "slurm", "--cluster", "local", env=env)
    assert again.returncode == 0 and "nothing to submit" in again.stdout


def test_jobs_without_the_local_executor_is_a_clear_error():
    run = ablate("decoder_depth", "--tier", "smoke", "--jobs", "2")
    assert run.returncode == 2 and "--jobs needs --executor local" in run.stderr
    assert "Traceback" not in run.stderr


def test_without_papermill_the_runner_says_what_to_install(monkeypatch):
    from mae.ablate import run_sweep

    monkeypatch.setitem(sys.modules, "papermill", None)  # as in an environment without mae[book]
    with pytest.raises(ConfigError, match=r"papermill, which is not installed: .*'mae\[book\]'"):
        run_sweep("random_init", "smoke")



def test_where_a_point_ran_does_not_make_it_stale():
    """The evaluation's device, like training's, is where a run ran, not what it computed."""
    from mae.ablate import stale_keys

    point = sweep_points(ROOT, "mask_ratio", "cpu")[0]
    record = json.loads((ROOT / point.run_dir / "metrics.json").read_text())
    assert stale_keys(point, record) == []
    moved = json.loads(json.dumps(record))
    moved["config"]["eval"]["device"] = "cuda:3"
    moved["config"]["train"]["device"] = "cuda:3"
    assert stale_keys(point, moved) == []
    moved["config"]["eval"]["precision"] = "bf16"  # a different computation: stale
    assert stale_keys(point, moved) == ["eval.precision: run 'bf16', now 'auto'"]
