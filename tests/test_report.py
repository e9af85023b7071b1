"""mae report on run folders made here (no notebook runs): tables follow their runs, a malformed
run folder is named and skipped, the caller's matplotlib backend is left alone."""

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from mae import ConfigError
from mae.ablate import resolved_configs, sweep_points
from mae.report import report

ROOT = Path(__file__).resolve().parents[1]


def fake_run(results: Path, sweep: str, point_name: str, seed: int = 0, probe: float = 30.0,
             tier: str = "smoke", dataset: str | None = None):
    """A finished run of a point, recorded with the configs it resolves to now."""
    (point,) = [p for p in sweep_points(ROOT, sweep, tier, dataset, [seed], results)
                if p.name == point_name]
    config = resolved_configs(point.parameters)
    record = {
        "config": config, "pretrain": config["pretrain"], "seed": seed, "wall_time_s": 12.0,
        "metrics": {"probe_top1": probe, "knn_top1": probe - 5, "pretrain_wall_time_s": 6.0,
                    "pretrain_final_loss": 0.5},
        "provenance": {"git_commit": "0123456789abcdef", "git_dirty": False, "device_name": "cpu",
                       "utc_time": "2024-01-01T00:00:00Z", "versions": {"torch": "2"}},
        "data": {"train": {"sha256": "ab"}},
    }
    point.run_dir.mkdir(parents=True)
    (point.run_dir / "metrics.json").write_text(json.dumps(record))
    return point.run_dir


def mae_report(results: Path):
    return subprocess.run([sys.executable, "-m", "mae", "report", "--results", str(results)],
                          cwd=ROOT, capture_output=True, text=True)


STEMS = ("tables/mask_ratio-smoke.csv", "tables/mask_ratio-smoke.md",
         "tables/mask_ratio-smoke-runs.csv", "figures/mask_ratio-smoke.png")


def test_a_table_and_its_figure_go_with_their_runs(tmp_path):
    results = tmp_path / "results"
    fake_run(results, "mask_ratio", "default")
    ratio = fake_run(results, "mask_ratio", "mask_ratio=0.1", probe=20.0)
    depth = fake_run(results, "decoder_depth", "decoder_layers=1")
    (results / "tables").mkdir(parents=True)
    (results / "tables" / "notes.txt").write_text("not the report's")
    report(results, ROOT, log=lambda line: None)
    assert all((results / stem).is_file() for stem in STEMS)
    depth_md = (results / "tables" / "decoder_depth-smoke.md").read_bytes()

    # Stale: the run now resolves to other configs; its table is removed, not left as it was.
    record = json.loads((ratio / "metrics.json").read_text())
    record["config"]["eval"]["probe_epochs"] += 1
    (ratio / "metrics.json").write_text(json.dumps(record))
    lines = []
    report(results, ROOT, log=lines.append)
    assert not any((results / stem).exists() for stem in STEMS)
    assert any("mask_ratio-smoke.md: removed" in line for line in lines)
    assert (results / "tables" / "decoder_depth-smoke.md").read_bytes() == depth_md
    assert (results / "tables" / "notes.txt").is_file()  # not one of the report's files

    shutil.rmtree(ratio)  # removed: the same
    fake_run(results, "mask_ratio", "mask_ratio=0.1", probe=20.0)
    report(results, ROOT, log=lambda line: None)
    assert all((results / stem).is_file() for stem in STEMS)
    shutil.rmtree(depth.parent)
    report(results, ROOT, log=lambda line: None)
    assert not (results / "tables" / "decoder_depth-smoke.md").exists()
    assert not (results / "figures" / "decoder_depth-smoke.png").exists()
    assert all((results / stem).is_file() for stem in STEMS)


def test_a_missing_results_folder_is_an_error(tmp_path):
    run = mae_report(tmp_path / "nowhere")
    assert run.returncode == 2 and "Traceback" not in run.stderr
    (line,) = run.stderr.strip().splitlines()
    assert line.startswith("error: ") and "nowhere" in line and "does not exist" in line
    (tmp_path / "empty").mkdir()
    with pytest.raises(ConfigError, match="no runs/ folder"):
        report(tmp_path / "empty", ROOT)


def test_a_malformed_run_folder_is_named_and_the_rest_is_written(tmp_path):
    results = tmp_path / "results"
    fake_run(results, "mask_ratio", "default")
    fake_run(results, "mask_ratio", "mask_ratio=0.1", probe=20.0)
    half = fake_run(results, "mask_ratio", "mask_ratio=0.5", probe=25.0)
    text = (half / "metrics.json").read_text()
    (half / "metrics.json").write_text(text[:len(text) // 2])  # truncated
    copy = half.parent.parent / "mask_ratio=0.1" / "seed0_copy"
    shutil.copytree(half.parent.parent / "mask_ratio=0.1" / "seed0", copy)
    stray = results / "runs" / "smoke" / "cifar100" / "default" / "seed0"
    shutil.copytree(half.parent.parent / "default" / "seed0", stray)
    empty = fake_run(results, "mask_ratio", "mask_ratio=0.9")
    (empty / "metrics.json").write_text("{}")  # no metrics, no configs
    old_tier = results / "runs" / "smoke-old"
    shutil.copytree(results / "runs" / "smoke", old_tier)  # a tier since renamed
    (results / "runs" / "reader").mkdir()  # records of other commands: not runs, not skipped
    (results / "runs" / "reader" / "frozen.json").write_text("{}")
    run = mae_report(results)
    assert run.returncode == 2 and "Traceback" not in run.stderr, run.stderr[-3000:]
    for folder in (half, copy, stray.parent.parent, empty, old_tier):
        assert f"{folder}: skipped" in run.stdout, (folder, run.stdout)
    assert "reader" not in run.stdout
    (line,) = run.stderr.strip().splitlines()
    assert line.startswith("error: ") and "5 run folders were skipped" in line
    table = (results / "tables" / "mask_ratio-smoke.md").read_text()
    assert "| mask_ratio=0.1 | 1 | 20.0 |" in table and "| mask_ratio=0.5 | 0 |" in table


def test_the_report_leaves_the_callers_matplotlib_backend_alone(tmp_path):
    import matplotlib

    results = tmp_path / "results"
    fake_run(results, "mask_ratio", "default")
    fake_run(results, "mask_ratio", "mask_ratio=0.1")
    before = matplotlib.get_backend()
    try:
        matplotlib.use("pdf")
        report(results, ROOT, log=lambda line: None)
        assert matplotlib.get_backend() == "pdf"
        assert (results / "figures" / "mask_ratio-smoke.png").read_bytes()[:4] == b"\x89PNG"
    finally:
        matplotlib.use(before)


def test_a_dataset_folder_is_read_as_the_tier_dataset_it_was_named_for(tmp_path):
    results = tmp_path / "results"  # paper-dry's dataset folder:$IMAGENET has folder_IMAGENET
    fake_run(results, "mask_ratio", "default", tier="paper-dry", dataset="folder:$IMAGENET")
    run = fake_run(results, "mask_ratio", "mask_ratio=0.5", tier="paper-dry",
                   dataset="folder:$IMAGENET")
    assert run.parts[-3] == "folder_IMAGENET"
    report(results, ROOT, log=lambda line: None)
    table = (results / "tables" / "mask_ratio-paper-dry-folder_IMAGENET.md").read_text()
    assert "(paper-dry tier, folder:$IMAGENET)" in table and "| mask_ratio=0.5 | 1 |" in table


def test_two_tiers_side_by_side_with_the_spread_rule(tmp_path):
    """comparisons.yaml's schedule table: each decoder depth at 8 and at 50 epochs, the change
    between the tiers and each tier's difference from its own default, with verdicts."""
    results = tmp_path / "results"
    for seed, (short, long) in enumerate([(50.0, 55.0), (51.0, 56.0), (49.0, 54.0)]):
        fake_run(results, "decoder_depth", "default", seed, short, tier="cpu")
        fake_run(results, "decoder_depth", "default", seed, long, tier="cpu-long")
        fake_run(results, "decoder_depth", "decoder_layers=8", seed, short + 0.5, tier="cpu")
        fake_run(results, "decoder_depth", "decoder_layers=8", seed, long + 4, tier="cpu-long")
    report(results, ROOT, log=lambda _: None)
    md = (results / "tables" / "compare-schedule.md").read_text()
    assert "| decoder_depth | decoder_layers=2 | 3 / 3 |" in md
    rows = [line for line in md.splitlines() if "| decoder_depth | decoder_layers=8" in line]
    assert len(rows) == 1
    # 50 - 8 epochs: +8.5 beyond the spread; vs default: +0.5 (within) at 8, +4.0 (beyond) at 50
    assert "+8.5 / +8.5 (yes / yes) | +0.5 / +0.5 (no / no) | +4.0 / +4.0 (yes / yes) |" in rows[0]
    import csv
    with open(results / "tables" / "compare-schedule.csv") as f:
        frame = {row["setting"]: row for row in csv.DictReader(f)}
    deep = frame["decoder_layers=8"]  # the csv carries the same verdicts, for the chapter
    assert (deep["probe_top1_minus_default_cpu"], deep["probe_top1_minus_default_cpu-long"]) == (
        "0.5", "4.0")
    assert deep["probe_top1_minus_default_cpu_beyond_spread"] == "False"
    assert deep["knn_top1_minus_default_cpu-long_beyond_spread"] == "True"
    assert frame["decoder_layers=2"]["probe_top1_minus_default_cpu_beyond_spread"] == ""
    assert not (results / "tables" / "compare-precision.md").exists()  # no cpu-bf16 runs
    assert (results / "figures" / "compare-schedule.png").stat().st_size > 10_000
    (results / "runs" / "cpu-long").rename(tmp_path / "aside")  # its runs gone: so is the table
    report(results, ROOT, log=lambda _: None)
    assert not (results / "tables" / "compare-schedule.md").exists()
    assert not (results / "figures" / "compare-schedule.png").exists()


def test_the_comparison_csv_rounds_to_the_markdown_figure(tmp_path):
    """A change of 2.945 points is +2.9 in the markdown table; the csv, read and printed to one
    decimal as chapter 8 does, must say the same (rounded twice, it said +3.0)."""
    import csv

    results = tmp_path / "results"
    for seed, (short, long) in enumerate([(50.0, 52.945), (51.0, 53.945), (49.0, 51.945)]):
        fake_run(results, "decoder_depth", "default", seed, short, tier="cpu")
        fake_run(results, "decoder_depth", "default", seed, long, tier="cpu-long")
    report(results, ROOT, log=lambda _: None)
    md = (results / "tables" / "compare-schedule.md").read_text()
    assert "| +2.9 / +2.9 (yes / yes) |" in md
    with open(results / "tables" / "compare-schedule.csv") as f:
        (row,) = [r for r in csv.DictReader(f) if r["setting"] == "decoder_layers=2"]
    assert f"{float(row['probe_top1_change']):+.1f}" == "+2.9"


def test_the_comparison_table_never_prints_minus_zero(tmp_path):
    """A setting 0.04 points below its default is '0.0' in the schedule table, as in the
    sweep tables, not '-0.0' (which reads as a loss)."""
    results = tmp_path / "results"
    for seed, value in enumerate([50.0, 51.0, 49.0]):
        fake_run(results, "decoder_depth", "default", seed, value, tier="cpu")
        fake_run(results, "decoder_depth", "decoder_layers=8", seed, value - 0.04, tier="cpu")
        fake_run(results, "decoder_depth", "default", seed, value + 3, tier="cpu-long")
    fake_run(results, "decoder_depth", "decoder_layers=8", 0, 53.96, tier="cpu-long")
    report(results, ROOT, log=lambda _: None)
    md = (results / "tables" / "compare-schedule.md").read_text()
    (row,) = [line for line in md.splitlines() if "| decoder_layers=8 |" in line]
    assert "-0.0" not in row and "| 0.0 / 0.0 (no / no) |" in row, row


def test_a_verdict_on_one_seed_is_marked_where_it_is_read(tmp_path):
    """A one-seed setting has no spread of its own: its verdict uses the default's, and both the
    sweep table and the schedule table mark it (with a footnote saying so), not the others."""
    from mae.tally import LENT, LENT_NOTE

    results = tmp_path / "results"
    for seed, value in enumerate([50.0, 51.0, 49.0]):
        for tier, shift in (("cpu", 0), ("cpu-long", 3)):
            fake_run(results, "decoder_depth", "default", seed, value + shift, tier=tier)
        fake_run(results, "decoder_depth", "decoder_layers=1", seed, value, tier="cpu")
    fake_run(results, "decoder_depth", "decoder_layers=1", 0, 57.0, tier="cpu-long")
    report(results, ROOT, log=lambda _: None)
    sweep = (results / "tables" / "decoder_depth-cpu-long.md").read_text()
    (row,) = [line for line in sweep.splitlines() if line.startswith("| decoder_layers=1 |")]
    assert f"| +4.0 / +4.0 (yes / yes){LENT} |" in row, row
    assert LENT_NOTE in sweep.splitlines()
    schedule = (results / "tables" / "compare-schedule.md").read_text()
    (row,) = [line for line in schedule.splitlines() if "| decoder_layers=1 |" in line]
    assert row.endswith(f"| 0.0 / 0.0 (no / no) | +4.0 / +4.0 (yes / yes){LENT} |"), row
    assert LENT_NOTE in schedule.splitlines()
    # Three seeds at the cpu tier: nothing marked, no footnote.
    assert LENT not in (results / "tables" / "decoder_depth-cpu.md").read_text()


def test_the_comparison_figure_bars_are_the_spread_rule():
    from mae.tally import beyond_spread, spread_bar

    default = (50.8, 0.6)
    assert spread_bar((49.0, 0.0), 1, default, 3) == pytest.approx(1.2)  # one seed: default's std
    assert spread_bar((49.0, 1.0), 3, default, 3) == pytest.approx(2.0)  # the larger std
    assert spread_bar((49.0, 1.0), 3, (50.8, 0.0), 1) is None
    for stat, seeds in (((49.0, 0.0), 1), ((49.0, 1.0), 3), ((50.0, 0.1), 2)):
        bar = spread_bar(stat, seeds, default, 3)
        assert beyond_spread(stat, seeds, default, 3) is (abs(stat[0] - default[0]) > bar)


def test_a_comparison_names_two_tiers_and_known_keys(tmp_path):
    from mae.compare import comparisons

    root = tmp_path / "root"
    shutil.copytree(ROOT / "ablations", root / "ablations")
    assert set(comparisons(root)) >= {"precision", "schedule"}
    path = root / "ablations" / "comparisons.yaml"
    path.write_text(path.read_text().replace("  sweeps: [default]", "  sweps: [default]"))
    with pytest.raises(ConfigError, match="needs title:, base:, other:"):
        comparisons(root)
    path.write_text("x: {title: t, base: cpu, other: cpu-lng, sweeps: [default]}\n")
    with pytest.raises(ConfigError, match="Did you mean 'cpu-long'"):
        comparisons(root)


def test_the_summary_figure_holds_every_swept_setting_and_goes_with_its_runs(tmp_path):
    """figures/summary-<tier>.png: every setting of every sweep against the default (one line
    each, beside the paper's difference); it goes when the tier's sweeps have no runs left."""
    from mae.figures import summary_figure
    from mae.tally import compare_with_default

    results = tmp_path / "results"
    fake_run(results, "mask_ratio", "default")
    ratio = fake_run(results, "mask_ratio", "mask_ratio=0.1", probe=20.0)
    report(results, ROOT, log=lambda line: None)
    png = results / "figures" / "summary-smoke.png"
    assert png.read_bytes()[:4] == b"\x89PNG"
    shutil.rmtree(ratio)
    report(results, ROOT, log=lambda line: None)
    assert not png.exists()  # only the default left: no sweep table, no summary

    # One line per non-default setting, random init last; the paper's difference is taken
    # between the same two settings (the setting's lin minus the lin at our default setting).
    def row(point, label, probe, paper, seeds=3, baseline=False):
        return {"point": point, "label": label, "paper": paper, "seeds": seeds,
                "probe_top1": (probe, 0.5), "knn_top1": (probe - 5, 0.5), "baseline": baseline}
    rows = [row("default", "decoder_layers=2", 50.0, {"lin": 70.0}),
            row("decoder_layers=1", "decoder_layers=1", 49.0, {"lin": 65.5}),
            row("random_init", "random init", 44.0, {}, baseline=True)]
    compare_with_default(rows)
    import matplotlib.axes

    drawn = {}
    original = matplotlib.axes.Axes.set_yticklabels
    matplotlib.axes.Axes.set_yticklabels = lambda self, labels, **kw: drawn.setdefault(
        "labels", list(labels)) and original(self, labels, **kw)
    plotted = []
    plot = matplotlib.axes.Axes.plot
    matplotlib.axes.Axes.plot = lambda self, *a, **kw: plotted.append(a) or plot(self, *a, **kw)
    try:
        summary_figure(tmp_path / "s.png", "cpu", "cifar10", [({"title": "Decoder depth"}, rows)])
    finally:
        matplotlib.axes.Axes.set_yticklabels, matplotlib.axes.Axes.plot = original, plot
    assert drawn["labels"] == ["decoder depth: 1", "random init"]
    assert plotted[0][0] == [pytest.approx(-4.5)]  # 65.5 - 70.0, the paper's same comparison


def test_a_resumed_point_recorded_before_the_fix_gets_its_training_records_time(tmp_path):
    """Its metrics.json timed only the last attempt; train/pretrain_metrics.json timed them all."""
    from mae.runfolders import collect_runs
    from mae.ablate import load_tier

    results = tmp_path / "results"
    run_dir = fake_run(results, "mask_ratio", "default")  # 6 s of pre-training, 12 s in all
    (run_dir / "train").mkdir()
    train = {"resumed_at_step": 8, "wall_time_s": 100.0, "cpu_time_s": 150.0}
    (run_dir / "train" / "pretrain_metrics.json").write_text(json.dumps(train))
    runs, _, _ = collect_runs(results, load_tier(ROOT, "smoke"), log=lambda _: None)
    (record,) = runs.values()
    assert record["metrics"]["pretrain_wall_time_s"] == 100.0 and record["wall_time_s"] == 106.0
    record_file = json.loads((run_dir / "metrics.json").read_text())
    assert record_file["metrics"]["pretrain_wall_time_s"] == 6.0  # the file is left as it was
    record_file["resumed_at_step"] = 8  # recorded by the fixed notebook: taken as it is
    (run_dir / "metrics.json").write_text(json.dumps(record_file))
    runs, _, _ = collect_runs(results, load_tier(ROOT, "smoke"), log=lambda _: None)
    assert next(iter(runs.values()))["metrics"]["pretrain_wall_time_s"] == 6.0
