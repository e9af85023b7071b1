"""The tier and sweep files (mae.specs): every key known, a misspelt one refused by name."""

import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from mae import ConfigError
from mae.ablate import load_sweep, load_tier, sweep_names, sweep_points

ROOT = Path(__file__).resolve().parents[1]


def test_every_tier_and_sweep_of_the_repository_loads():
    tiers = yaml.safe_load((ROOT / "ablations" / "tiers.yaml").read_text())
    for name in tiers:
        assert load_tier(ROOT, name)["name"] == name
    for sweep in sweep_names(ROOT):
        for tier in load_sweep(ROOT, sweep)["tiers"]:
            assert sweep_points(ROOT, sweep, tier), (sweep, tier)


@pytest.fixture
def project(tmp_path):
    shutil.copytree(ROOT / "ablations", tmp_path / "ablations")
    return tmp_path


def edit(path: Path, old: str, new: str) -> None:
    text = path.read_text()
    assert old in text
    path.write_text(text.replace(old, new, 1))


@pytest.mark.parametrize("old, new, nearest", [
    ("  train: {train_subset: 512,", "  trian: {train_subset: 512,", "train"),
    ("  eval: {probe_epochs: 5,", "  evl: {probe_epochs: 5,", "eval"),
    ("  eval_test_subset: 256", "  eval_tset_subset: 256", "eval_test_subset"),
])
def test_a_misspelt_tier_key_is_refused_with_the_nearest_one(project, old, new, nearest):
    edit(project / "ablations" / "tiers.yaml", old, new)
    with pytest.raises(ConfigError, match=f"tier 'smoke' key .*Did you mean '{nearest}'"):
        load_tier(project, "smoke")
    with pytest.raises(ConfigError, match=f"Did you mean '{nearest}'"):
        sweep_points(project, "mask_ratio", "smoke")
    assert load_tier(project, "cpu")["name"] == "cpu"  # the other tiers are not affected


def test_a_tier_without_its_preset_or_not_a_mapping_is_refused(project):
    (project / "ablations" / "tiers.yaml").write_text(
        "a: {seeds: [0], datasets: {cifar10: {}}}\nb: [micro]\n")
    with pytest.raises(ConfigError, match="tier 'a' lacks preset"):
        load_tier(project, "a")
    with pytest.raises(ConfigError, match="tier 'b' must be a mapping"):
        load_tier(project, "b")


@pytest.mark.parametrize("old, new, nearest", [
    ("paper:            #", "papr:            #", "paper"),
    ("tiers: [smoke", "teirs: [smoke", "tiers"),
    ("  0.5: {lin: 69.9,", "  0.5: {lni: 69.9,", "lin"),
])
def test_a_misspelt_sweep_key_is_refused_with_the_nearest_one(project, old, new, nearest):
    edit(project / "ablations" / "mask_ratio.yaml", old, new)
    with pytest.raises(ConfigError, match=f"mask_ratio.yaml.*Did you mean '{nearest}'"):
        load_sweep(project, "mask_ratio")


def test_a_misspelt_point_key_is_refused_with_the_nearest_one(project):
    edit(project / "ablations" / "mask_sampling.yaml", "  - {label: block 50%, set:",
         "  - {label: block 50%, sett: {}, set:")
    with pytest.raises(ConfigError, match="mask_sampling.yaml point 1 key 'sett'.*Did you mean "
                                          "'set'"):
        load_sweep(project, "mask_sampling")
    edit(project / "ablations" / "mask_sampling.yaml", "sett: {}, ", "")
    edit(project / "ablations" / "mask_sampling.yaml", "paper: {lin: 72.3,", "papr: {lin: 72.3,")
    with pytest.raises(ConfigError, match="point 1 key 'papr'.*Did you mean 'paper'"):
        load_sweep(project, "mask_sampling")


def test_the_paper_numbers_of_a_value_not_swept_are_refused(project):
    edit(project / "ablations" / "mask_ratio.yaml", "  0.5: {lin: 69.9,", "  0.3: {lin: 69.9,")
    with pytest.raises(ConfigError, match=r"paper: has 0.3, which is not one of values: "):
        load_sweep(project, "mask_ratio")


def test_the_cli_names_a_misspelt_key_in_one_line(project):
    edit(project / "ablations" / "tiers.yaml", "  train: {train_subset: 512,",
         "  trian: {train_subset: 512,")
    run = subprocess.run([sys.executable, "-m", "mae", "ablate", "random_init", "--tier", "smoke",
                          "--results", str(project / "results")], cwd=project,
                         capture_output=True, text=True)
    assert run.returncode == 2 and "Traceback" not in run.stderr, run.stderr
    assert run.stderr.startswith("error: unknown tiers.yaml tier 'smoke' key 'trian'.")
    assert not (project / "results").exists()
