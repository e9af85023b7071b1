"""mae report on run folders made here (no notebook runs)."""

import json
from pathlib import Path

from mae.ablate import resolved_configs, sweep_points
from mae.report import report

ROOT = Path(__file__).resolve().parents[1]


def fake_run(results: Path, sweep: str, point_name: str, seed: int = 0, probe: float = 30.0):
    """A finished run of a smoke-tier point, recorded with the configs it resolves to now."""
    (point,) = [p for p in sweep_points(ROOT, sweep, "smoke", seeds=[seed], results=results)
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
