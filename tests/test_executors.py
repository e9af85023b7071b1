"""Sweep points as submitit jobs (mae.executors): the SLURM submission, requeue after a
preemption signal, and the errors a user can make."""

import json
import os
import signal
import stat
import subprocess
import sys
import time

import pytest

from conftest import needs_cifar
from mae import ConfigError, MAEConfig
from mae.executors import slurm_options, submit_sweeps
from test_ablate import ROOT, ablate, project_copy

submitit = pytest.importorskip("submitit")  # the dev extras install it; mae[cluster] for users


def test_a_sweep_is_submitted_as_one_slurm_job_array(tmp_path, monkeypatch):
    """Without a cluster: a stand-in sbatch records the array script submitit writes."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    sbatch = bin_dir / "sbatch"
    sbatch.write_text(f"#!/bin/sh\ncp \"$1\" {tmp_path}/submitted.sh\necho Submitted batch job 4242\n")
    (bin_dir / "srun").write_text("#!/bin/sh\n")  # submitit looks for srun to detect SLURM
    for tool in bin_dir.iterdir():
        tool.chmod(tool.stat().st_mode | stat.S_IEXEC)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    lines = []
    failed, jobs = submit_sweeps(["decoder_depth"], "gpu-quick", results=tmp_path / "results",
                                 root=ROOT, partition="learnlab", account="mae",
                                 array_parallelism=2, log=lines.append)
    assert failed == 0 and [j.job_id for j in jobs] == ["4242_0", "4242_1", "4242_2", "4242_3"]
    script = (tmp_path / "submitted.sh").read_text()
    for line in ("#SBATCH --array=0-3%2", "#SBATCH --partition=learnlab", "#SBATCH --account=mae",
                 "#SBATCH --gpus-per-node=1", "#SBATCH --signal=USR2@"):
        assert line in script, line
    assert "submitted gpu-quick/cifar10/decoder_layers=1/seed0: job 4242_0" in lines[0]
    assert "when they are done, `mae report`" in lines[-1]  # no waiting on a real cluster


def test_job_resources_are_checked_before_anything_is_submitted():
    with pytest.raises(ConfigError, match="trains each point on 8 GPUs.*--gpus-per-node 8"):
        slurm_options({"name": "paper", "nproc": 8, "slurm": {"gpus_per_node": 8}},
                      {"gpus_per_node": 4})
    with pytest.raises(ConfigError, match="unknown slurm: key.*gpus"):
        slurm_options({"name": "gpu", "slurm": {"gpus": 1}}, {})
    with pytest.raises(ConfigError, match="--timeout-min must be at least 1"):
        slurm_options({"name": "gpu"}, {"timeout_min": 0})
    assert slurm_options({"name": "paper", "nproc": 8, "slurm": {"gpus_per_node": 8}},
                         {"partition": "p"})["gpus_per_node"] == 8


@pytest.mark.slow
def test_executor_flags_in_the_wrong_place_are_clear_errors(monkeypatch):
    for args, message in ((["--cluster", "local"], "need --executor slurm"),
                          (["--partition", "x"], "need --executor slurm"),
                          (["--executor", "slurm", "--jobs", "2"], "--array-parallelism caps")):
        run = ablate("decoder_depth", "--tier", "smoke", *args)
        assert run.returncode == 2 and message in run.stderr and "Traceback" not in run.stderr
    run = ablate("decoder_depth", "--tier", "smoke", "--executor", "slurm")
    assert run.returncode == 2 and "no SLURM on this machine" in run.stderr
    assert "--cluster local" in run.stderr
    monkeypatch.setitem(sys.modules, "submitit", None)  # as if mae[cluster] were not installed
    with pytest.raises(ConfigError, match=r"pip install 'mae\[cluster\]'"):
        submit_sweeps(["decoder_depth"], "smoke", root=ROOT)


@pytest.mark.slow
@needs_cifar
def test_a_preempted_job_is_requeued_and_ends_with_the_uninterrupted_metrics(tmp_path,
                                                                              monkeypatch):
    """SIGUSR2 is what SLURM sends a job before preempting it or at its time limit (submitit
    asks for it with --signal). The job stops its kernel mid-training and is requeued; the rerun
    resumes from the run folder's checkpoint and ends with the metrics of an uninterrupted run."""
    import psutil

    root = project_copy(tmp_path)
    tiers = root / "ablations" / "tiers.yaml"
    text = tiers.read_text()
    assert "train_subset: 512, epochs: 1," in text
    tiers.write_text(text.replace("train_subset: 512, epochs: 1,",
                                  "train_subset: 2048, epochs: 3,"))  # 48 steps, a checkpoint every 2
    (root / "ablations" / "one.yaml").write_text(
        "title: One point\nparameter: mask_ratio\nvalues: [0.75]\ntiers: [smoke]\n")
    monkeypatch.setenv("OMP_NUM_THREADS", "1")  # the same threads for both runs
    inline = ablate("one", "--tier", "smoke", "--results", str(tmp_path / "a"), cwd=root,
                    env={**os.environ})
    assert inline.returncode == 0, inline.stdout[-2000:] + inline.stderr[-2000:]

    failed, (job,) = submit_sweeps(["one"], "smoke", results=tmp_path / "b", root=root,
                                   cluster="local", wait=False, log=lambda line: None)
    run_dir = tmp_path / "b" / "runs" / "smoke" / "cifar10" / "default" / "seed0"
    deadline = time.time() + 300
    while not (run_dir / "train" / "checkpoint.pt").is_file() and time.time() < deadline:
        assert not job.done(), job.stderr()
        time.sleep(0.05)
    (task,) = psutil.Process(job._process.pid).children()  # the job, under submitit's controller
    task.send_signal(signal.SIGUSR2)
    assert job.result() == 0, job.stderr()
    assert "this job is preempted" in job.stdout() and "Requeued job" in job.stdout()
    assert (run_dir / "job.log").read_text().count("started on") == 2
    trained = json.loads((run_dir / "train" / "pretrain_metrics.json").read_text())
    assert 0 < trained["resumed_at_step"] < trained["steps"] == 48
    record = json.loads((run_dir / "metrics.json").read_text())
    assert record["resumed_at_step"] == trained["resumed_at_step"]
    # The point's times include the attempt before the requeue, as its pre-training record's do
    # (this process's clocks alone would start at the resume).
    assert record["metrics"]["pretrain_wall_time_s"] >= trained["wall_time_s"] > 0
    assert record["metrics"]["pretrain_cpu_time_s"] >= trained["cpu_time_s"] * 0.95
    assert record["wall_time_s"] > record["metrics"]["pretrain_wall_time_s"]
    a = json.loads((tmp_path / "a" / run_dir.relative_to(tmp_path / "b") / "metrics.json")
                   .read_text())["metrics"]
    b = json.loads((run_dir / "metrics.json").read_text())["metrics"]
    for key in ("probe_top1", "knn_top1", "pretrain_final_loss"):
        assert a[key] == b[key], key


@pytest.mark.slow
@needs_cifar
def test_the_debug_cluster_runs_a_job_in_this_process(tmp_path):
    failed, (job,) = submit_sweeps(["random_init"], "smoke", seeds=[0], results=tmp_path,
                                   root=ROOT, cluster="debug", log=lambda line: None)
    run_dir = tmp_path / "runs" / "smoke" / "cifar10" / "random_init" / "seed0"
    assert failed == 0 and job.job_id.startswith("DEBUG_")
    assert json.loads((run_dir / "metrics.json").read_text())["pretrain"] is False
    assert f"[job {job.job_id}] started on" in (run_dir / "job.log").read_text()


@pytest.mark.slow
@needs_cifar
def test_a_pretraining_job_of_two_tasks_trains_as_one_process(tmp_path):
    """mae pretrain --executor slurm: one task per rank, torch.distributed set up from the job's
    environment by submitit (here 2 CPU tasks, gloo) == one process, as under torchrun."""
    import subprocess

    from mae.checkpoint import load_checkpoint
    from test_train import assert_same_training, cli, train_flags

    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    flags = train_flags(epochs=0.5, checkpoint_every=0)  # 4 steps
    subprocess.run(cli(*flags, f"--out={tmp_path / 'single'}"), check=True, env=env,
                   capture_output=True, cwd=ROOT)
    run = subprocess.run(cli(*flags, f"--out={tmp_path / 'job'}", "--executor", "slurm",
                             "--cluster", "local", "--tasks-per-node", "2"),
                         env=env, capture_output=True, text=True, cwd=ROOT)
    assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-2000:]
    assert "submitted pre-training on 1 x 2 tasks" in run.stdout
    assert json.loads(run.stdout[run.stdout.index("{"):])["world_size"] == 2
    a = load_checkpoint(tmp_path / "single" / "checkpoint.pt")
    b = load_checkpoint(tmp_path / "job" / "checkpoint.pt")
    assert a["step"] == b["step"] == 4
    assert_same_training(a, b)
    again = subprocess.run(cli(*flags, f"--out={tmp_path / 'job'}", "--executor", "slurm",
                               "--cluster", "local"), env=env, capture_output=True, text=True,
                           cwd=ROOT)
    assert again.returncode == 2 and "already holds a run" in again.stderr


def test_a_seed_given_twice_is_refused():
    from mae.ablate import sweep_points

    with pytest.raises(ConfigError, match="--seeds 0 0 names seed 0 more than once"):
        sweep_points(ROOT, "random_init", "smoke", seeds=[0, 0])
    run = ablate("random_init", "--tier", "smoke", "--seeds", "0", "1", "0")
    assert run.returncode == 2 and "names seed 0 more than once" in run.stderr
    assert "Traceback" not in run.stderr


@pytest.mark.slow
@needs_cifar
def test_local_workers_that_ran_nothing_do_not_report_the_points_complete(tmp_path):
    """As after a killed `ablate --executor local`: its orphaned workers still hold the points'
    folder locks. The new workers skip those points, and the sweep is not called complete."""
    import fcntl

    root = project_copy(tmp_path)
    run_dir = root / "results" / "runs" / "smoke" / "cifar10" / "random_init" / "seed0"
    run_dir.mkdir(parents=True)
    with open(run_dir / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # as the orphaned worker holds it
        run = ablate("random_init", "--tier", "smoke", "--results", str(root / "results"),
                     "--executor", "local", "--jobs", "2", cwd=root)
    assert run.returncode == 1, run.stdout[-2000:] + run.stderr[-2000:]
    assert "0 of 1 points complete" in run.stdout and "1 of 1" not in run.stdout
    assert "1 not finished" in run.stdout
    assert not (run_dir / "metrics.json").exists()


def test_a_failed_job_is_one_line_naming_its_error(tmp_path):
    from mae.executors import executor_for, job_failure

    executor = executor_for(tmp_path, "local", "fails", slurm_options({"name": "x"}, {}))
    job = executor.submit(MAEConfig.from_dict, {"mask_ration": 0.5})
    with pytest.raises(submitit.core.utils.FailedJobError) as error:
        job.result()
    line = job_failure(job, error.value)
    assert "\n" not in line and "ConfigError: unknown MAEConfig key 'mask_ration'" in line
    assert line.startswith(f"job {job.job_id} failed: ") and str(job.paths.stderr) in line


@pytest.mark.slow
@needs_cifar
def test_a_failed_pretraining_job_ends_in_one_line(tmp_path):
    from test_train import cli, train_flags

    run = subprocess.run(cli(*train_flags(), f"--out={tmp_path / 'job'}", "--executor", "slurm",
                             "--cluster", "local", f"--data-root={tmp_path / 'nodata'}"),
                         capture_output=True, text=True, cwd=ROOT)
    assert run.returncode == 2 and "Traceback" not in run.stderr, run.stderr[-3000:]
    (line,) = run.stderr.strip().splitlines()
    assert line.startswith("error: job ") and "DataError: cifar10" in line and "not found" in line


def test_a_point_that_fails_in_its_job_is_named_with_its_error(tmp_path):
    root = project_copy(tmp_path)
    (root / "notebooks" / "ablation.ipynb").unlink()  # papermill fails in the job
    lines = []
    failed, (job,) = submit_sweeps(["random_init"], "smoke", results=tmp_path / "results",
                                   root=root, cluster="local", log=lines.append)
    assert failed == 1
    (line,) = [line for line in lines if "failed" in line]
    assert f"job {job.job_id} (" in line and "random_init/seed0" in line
    assert "No such file" in line or "FileNotFoundError" in line
    assert lines[-1] == "0 of 1 jobs complete"


def test_a_refused_pretraining_submission_leaves_no_run_folder(tmp_path):
    """Options are checked before --out is made: a refused submission leaves nothing behind."""
    from mae.executors import submit_pretrain
    from mae.recipe import TrainConfig

    out = tmp_path / "run"
    with pytest.raises(ConfigError, match="--nodes and --tasks-per-node must be at least 1"):
        submit_pretrain(MAEConfig.preset("micro"), TrainConfig(), out, cluster="local", nodes=0)
    assert not out.exists()
