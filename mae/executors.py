"""Where a sweep's points run: in this process, in N local workers, or as SLURM jobs (submitit).

Every executor runs a point the same way, :func:`mae.ablate.run_sweep` executing the template
notebook into the point's run folder, so they all write the same folders, ``mae report`` reads
them alike, finished points are skipped and a point's folder lock keeps it from running twice.

``--executor slurm`` submits one job per unfinished (point, seed) through submitit, as one job
array with at most ``array_parallelism`` jobs running at once; GPUs, CPUs, time limit, partition
and account come from flags, else from the tier's ``slurm:`` entry in ablations/tiers.yaml. When
SLURM preempts a job or its time runs out, submitit signals it and calls
:meth:`PointJob.checkpoint`: the point's notebook kernel is stopped and the job requeued; the
requeued job runs the point again and its training resumes from the checkpoint in the run
folder (``pretrain(resume=True)``), so an interrupted point ends with the metrics of an
uninterrupted one. submitit's ``local`` and ``debug`` clusters run the same jobs on a machine
without SLURM (the tests use ``local``).

``mae pretrain --executor slurm --nodes N --gpus-per-node G`` runs one pre-training on N x G
GPUs: one task per GPU, torch.distributed initialised from the SLURM environment by submitit's
``TorchDistributedEnvironment`` (the paper tier, across nodes), requeued and resumed likewise.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from .ablate import check_stale, load_tier, project_root, resolved_configs, run_sweep, sweep_points
from .config import ConfigError, MAEConfig, MAEError
from .provenance import write_json_atomic
from .recipe import TrainConfig
from .train import PretrainResult

CLUSTERS = ("slurm", "local", "debug")
SLURM_KEYS = ("gpus_per_node", "cpus_per_task", "mem_gb", "timeout_min", "partition", "account",
              "array_parallelism")


def pretrain_run(model_config: MAEConfig, train_config: TrainConfig, out_dir: Path,
                 nproc: int = 1, dataset=None) -> PretrainResult:
    """Pre-train in this process, or with ``torchrun --nproc_per_node=nproc`` (multi-GPU tiers),
    which reads the configs from a file in ``out_dir``. Resumes from ``out_dir`` when it holds a
    checkpoint."""
    from .train import pretrain

    if nproc <= 1:
        return pretrain(model_config, train_config, out_dir, resume=True, progress=False,
                        dataset=dataset)
    from .checkpoint import load_pretrained

    out_dir = Path(out_dir)
    config_file = write_json_atomic(out_dir / "run_config.json", {
        "model": model_config.to_dict(), "train": train_config.to_dict()})
    subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone",
                    f"--nproc_per_node={nproc}", "-m", "mae", "pretrain", "--no-progress",
                    "--resume", f"--config={config_file}", f"--out={out_dir}"], check=True)
    model, _ = load_pretrained(out_dir)
    return PretrainResult(model, json.loads((out_dir / "pretrain_metrics.json").read_text()),
                          json.loads((out_dir / "history.json").read_text()))


def run_local_jobs(argv: list[str], jobs: int, run_dirs: list[Path]) -> int:
    """``--executor local --jobs N``: N copies of the ablate command ``argv``, each an inline
    runner. They walk the same points; a point's folder lock lets only one of them run it, the
    others go on to the next. Each worker gets its own GPU where there are N of them, else its
    share of the CPU cores as its thread count. Exit status 1 if any worker had a failed point,
    or if any of the points (``run_dirs``) is not finished when the workers are: a point whose
    lock another process held (e.g. a worker of an earlier, killed ablate) was skipped."""
    import torch

    gpus = torch.cuda.device_count()
    threads = max(1, (os.cpu_count() or 1) // jobs)
    workers = []
    for job in range(jobs):
        env = {**os.environ, "MAE_ABLATE_JOB": str(job)}
        if gpus >= jobs:
            env["CUDA_VISIBLE_DEVICES"] = str(job)
        else:
            env.update(OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
        workers.append(subprocess.Popen(argv, env=env))
    codes = [w.wait() for w in workers]
    run_dirs = list(dict.fromkeys(run_dirs))  # the default point is shared by the sweeps
    left = [d for d in run_dirs if not (d / "metrics.json").is_file()]
    print(f"{jobs} local jobs finished, exit status {codes}: {len(run_dirs) - len(left)} of "
          f"{len(run_dirs)} points complete"
          + (f", {len(left)} not finished (failed, or run by another process: see the lines "
             f"above), e.g. {left[0]}" if left else ""), flush=True)
    return 1 if any(codes) or left else 0


def job_failure(job, error: Exception) -> str:
    """One line for a submitit job that raised: its exception (the last line of the traceback
    submitit hands back), or why it ended without a result; and where its log is."""
    from submitit.core.utils import FailedJobError

    text = str(error).strip()
    parts = text.split("-" * 22 + "\n")
    if isinstance(error, FailedJobError) and len(parts) >= 3:
        reason = parts[1].strip().splitlines()[-1]
    else:  # "Job 12 (task: 0) with path ...\nhas not produced any output (state: ...)"
        lines = text.splitlines()
        reason = next((line for line in lines if "has not produced any output" in line),
                      lines[0] if lines else type(error).__name__)
    return f"job {job.job_id} failed: {reason} (log: {job.paths.stderr})"


class JobError(MAEError, RuntimeError):
    """A submitted job failed; the message is :func:`job_failure`'s one line."""


@dataclass
class PointJob:
    """One (point, seed) of a sweep as a submitit job. submitit pickles it, runs it on a node,
    and on preemption or time-out calls :meth:`checkpoint` (its checkpointing hook, the protocol
    of ``submitit.helpers.Checkpointable``) to get what to requeue."""

    sweep: str
    tier: str
    dataset: str | None
    seed: int
    run_dir: Path
    results: Path
    root: Path

    def __call__(self) -> int:
        """Run the point; the number of failed points (0 or 1, details in its error.json)."""
        import submitit

        env = submitit.JobEnvironment()
        self.run_dir.mkdir(parents=True, exist_ok=True)

        def log(line: str) -> None:  # the job's stdout, and the run folder's job.log
            print(line, flush=True)
            with open(self.run_dir / "job.log", "a") as f:
                f.write(f"{time.strftime('%Y-%m-%dT%H:%M:%S')} [job {env.job_id}] {line}\n")

        log(f"started on {env.hostname}: {self.sweep} at tier {self.tier}, seed {self.seed}")
        return run_sweep(self.sweep, self.tier, self.dataset, [self.seed], self.results,
                         self.root, log=log, only=self.run_dir)

    def checkpoint(self) -> Any:
        """Stop the point's kernel (and any torchrun under it) and requeue the same job: the
        run folder holds the training checkpoint the rerun resumes from."""
        import psutil
        import submitit

        children = psutil.Process().children(recursive=True)
        for child in children:
            child.terminate()
        _, alive = psutil.wait_procs(children, timeout=10)
        for child in alive:
            child.kill()
        return submitit.helpers.DelayedSubmission(self)


@dataclass
class PretrainJob:
    """One pre-training as a submitit job of ``nodes x tasks_per_node`` tasks, one rank each."""

    model: dict[str, Any]
    train: dict[str, Any]
    out: Path
    data_root: str | None = None
    resume: bool = False
    overwrite: bool = False

    def __call__(self) -> dict[str, Any]:
        import submitit

        from .train import pretrain

        dist = submitit.helpers.TorchDistributedEnvironment().export(
            set_cuda_visible_devices=False)  # rank r uses cuda:LOCAL_RANK (mae.runtime)
        log = print if dist.rank == 0 else (lambda line: None)
        log(f"rank 0 of {dist.world_size} ({dist.world_size // dist.local_world_size} nodes), "
            f"master {dist.master_addr}:{dist.master_port}")
        return pretrain(self.model, self.train, self.out, resume=self.resume, progress=False,
                        data_root=self.data_root, overwrite=self.overwrite, log=log).metrics

    def checkpoint(self) -> Any:
        """Requeue as a resumption of this run (never as an overwrite of it)."""
        import submitit

        return submitit.helpers.DelayedSubmission(replace(self, resume=True, overwrite=False))


def executor_for(folder: Path, cluster: str, name: str, options: dict[str, Any],
                 nodes: int = 1, tasks_per_node: int = 1):
    """A submitit executor for ``cluster`` with the job resources ``options``."""
    try:
        import submitit
    except ImportError:
        raise ConfigError("--executor slurm needs submitit: pip install 'mae[cluster]'.") from None
    if cluster not in CLUSTERS:
        raise ConfigError(f"--cluster must be one of {', '.join(CLUSTERS)}, got {cluster!r}.")
    try:
        executor = submitit.AutoExecutor(  # a job past its time limit is requeued up to 20 times
            folder=folder, cluster=cluster, slurm_max_num_timeout=20, local_max_num_timeout=20)
    except RuntimeError as e:  # submitit's check for srun
        raise ConfigError(f"no SLURM on this machine ({e}): submit from a login node of the "
                          f"cluster, or try the jobs here with --cluster local.") from None
    executor.update_parameters(
        name=name, timeout_min=options["timeout_min"], nodes=nodes,
        tasks_per_node=tasks_per_node, gpus_per_node=options["gpus_per_node"],
        cpus_per_task=options["cpus_per_task"], mem_gb=options.get("mem_gb"),
        slurm_partition=options.get("partition"), slurm_account=options.get("account"),
        slurm_array_parallelism=options.get("array_parallelism", 1))
    return executor


def submit_pretrain(model_config: MAEConfig, train_config: TrainConfig, out: Path,
                    cluster: str = "slurm", wait: bool | None = None, nodes: int = 1,
                    tasks_per_node: int | None = None, resume: bool = False,
                    overwrite: bool = False, data_root: str | None = None, log=print,
                    **flags: Any) -> tuple[dict[str, Any] | None, Any]:
    """Submit one pre-training on ``nodes`` nodes, one task per GPU (``tasks_per_node`` on a
    CPU cluster); returns (its metrics when waited for, the job)."""
    from .checkpoint import refuse_existing_run
    from .provenance import check_writable

    options = slurm_options({"name": "pretrain"}, flags)  # refused options leave no folder
    tasks = tasks_per_node or max(1, options["gpus_per_node"])
    if nodes < 1 or tasks < 1:
        raise ConfigError(f"--nodes and --tasks-per-node must be at least 1, got {nodes} and "
                          f"{tasks}.")
    out = Path(out).resolve()
    check_writable(out, "--out folder")
    refuse_existing_run(out, resume, overwrite)
    executor = executor_for(out / "submitit", cluster, f"mae-pretrain-{out.name}", options,
                            nodes, tasks)
    job = executor.submit(PretrainJob(model_config.to_dict(), train_config.to_dict(), out,
                                      data_root, resume, overwrite))
    log(f"submitted pre-training on {nodes} x {tasks} tasks: job {job.job_id} (log "
        f"{job.paths.stdout})")
    if wait is None:
        wait = cluster != "slurm"
    if not wait:
        return None, job
    from submitit.core.utils import UncompletedJobError

    try:
        return job.results()[0], job  # rank 0's metrics
    except UncompletedJobError as e:
        raise JobError(job_failure(job, e)) from None


def slurm_options(tier: dict[str, Any], flags: dict[str, Any]) -> dict[str, Any]:
    """The job resources: the flags given, else the tier's ``slurm:`` entry, else defaults."""
    spec = tier.get("slurm") or {}
    unknown = sorted(set(spec) - set(SLURM_KEYS))
    if unknown:
        raise ConfigError(f"tier {tier['name']!r} has unknown slurm: key(s) {', '.join(unknown)}; "
                          f"known: {', '.join(SLURM_KEYS)}.")
    options = {"gpus_per_node": 0, "cpus_per_task": 2, "timeout_min": 60,
               "array_parallelism": 16, **spec, **{k: v for k, v in flags.items() if v is not None}}
    nproc = int(tier.get("nproc", 1))
    if nproc > 1 and options["gpus_per_node"] < nproc:
        raise ConfigError(f"tier {tier['name']!r} trains each point on {nproc} GPUs (nproc), "
                          f"but a job would get {options['gpus_per_node']}: pass "
                          f"--gpus-per-node {nproc}.")
    for key in ("cpus_per_task", "timeout_min", "array_parallelism"):
        if options[key] < 1:
            raise ConfigError(f"--{key.replace('_', '-')} must be at least 1, got {options[key]}.")
    return options


def submit_sweeps(
    sweeps: list[str], tier: str, dataset: str | None = None, seeds: list[int] | None = None,
    results: Path | None = None, root: Path | None = None, cluster: str = "slurm",
    wait: bool | None = None, log=print, **flags: Any,
) -> tuple[int, list]:
    """Submit the unfinished points of ``sweeps`` as submitit jobs; returns (failed points,
    jobs). Waits for the jobs when ``wait`` (default: on the local and debug clusters only)."""
    root = root or project_root()
    results = Path(results or root / "results").resolve()
    options = slurm_options(load_tier(root, tier), flags)
    todo: dict[Path, PointJob] = {}
    for sweep in sweeps:
        points = sweep_points(root, sweep, tier, dataset, seeds, results)
        for point in points:  # every point's configs, before anything is submitted
            resolved_configs(point.parameters)
        check_stale(points, sweep, tier, rerun_stale=False)
        for point in points:
            if not (point.run_dir / "metrics.json").is_file():
                todo.setdefault(point.run_dir, PointJob(sweep, tier, dataset, point.seed,
                                                        point.run_dir, results, root))
    executor = executor_for(results / "submitit", cluster, f"mae-{tier}", options)
    if not todo:
        log(f"every point of {', '.join(sweeps)} at tier {tier} is done: nothing to submit")
        return 0, []
    if cluster == "slurm":
        with executor.batch():  # one job array
            jobs = [executor.submit(job) for job in todo.values()]
    else:  # no scheduler on this machine: keep at most array_parallelism jobs running
        jobs = []
        for job in todo.values():
            while sum(not j.done() for j in jobs) >= options["array_parallelism"]:
                time.sleep(0.5)
            jobs.append(executor.submit(job))
    for job, point in zip(jobs, todo.values()):
        log(f"submitted {point.run_dir.relative_to(results / 'runs')}: job {job.job_id} "
            f"(log {job.paths.stdout})")
    if wait is None:
        wait = cluster != "slurm"
    if not wait:
        log(f"{len(jobs)} jobs submitted; when they are done, `mae report` tabulates them")
        return 0, jobs
    failed = 0
    for job, point in zip(jobs, todo.values()):
        try:
            point_failed = job.result()
        except Exception as e:  # noqa: BLE001 - a job that died is reported, the others waited for
            failed += 1
            log(job_failure(job, e).replace(" failed:", f" ({point.run_dir}) failed:", 1))
            continue
        failed += point_failed
        record = point.run_dir / "error.json"
        if point_failed and record.is_file():  # its notebook failed: run_sweep recorded why
            error = json.loads(record.read_text())["error"]
            log(f"job {job.job_id} ({point.run_dir}) failed: {error} (log: {job.paths.stdout})")
    log(f"{len(jobs) - failed} of {len(jobs)} jobs complete")
    return failed, jobs
