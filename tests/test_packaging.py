"""The project's packaging: pyproject and environment.yml agree; importing mae is cheap and silent."""

import json
import re
import subprocess
import sys
import tomllib
from pathlib import Path

import yaml
from packaging.requirements import Requirement

ROOT = Path(__file__).resolve().parents[1]
CONDA_NAMES = {"pytorch": "torch"}  # conda package name -> PyPI name


def pyproject_requirements() -> dict[str, str]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    reqs = list(project["dependencies"])
    for extra in project["optional-dependencies"].values():
        reqs += extra
    return {Requirement(r).name.lower(): str(Requirement(r).specifier) for r in reqs}


def conda_requirements() -> dict[str, str]:
    env = yaml.safe_load((ROOT / "environment.yml").read_text())
    out = {}
    for dep in env["dependencies"]:
        if not isinstance(dep, str) or dep.split("=")[0].split(">")[0] in ("python", "pip"):
            continue
        req = Requirement(re.sub(r"^([\w.-]+)", lambda m: CONDA_NAMES.get(m[1], m[1]), dep))
        out[req.name.lower()] = str(req.specifier)
    return out


def test_environment_yml_matches_pyproject():
    assert conda_requirements() == pyproject_requirements()


def test_environment_yml_installs_the_package_itself():
    env = yaml.safe_load((ROOT / "environment.yml").read_text())
    pip = next(d["pip"] for d in env["dependencies"] if isinstance(d, dict))
    assert any(line.split("#")[0].strip() == "-e ." for line in pip)


def test_import_is_silent_light_and_fast():
    code = (
        "import sys, time, torch\n"
        "before = set(sys.modules)\n"
        "t = time.perf_counter()\n"
        "import mae\n"
        "dt = time.perf_counter() - t\n"
        "new = {m.split('.')[0] for m in set(sys.modules) - before}\n"
        "heavy = sorted({'torchvision', 'transformers', 'matplotlib', 'pandas', 'papermill',"
        " 'yaml', 'tqdm'} & new)\n"
        "sys.stderr.write(f'{dt:.3f} {heavy}')\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            check=True)
    assert result.stdout == ""
    seconds, heavy = result.stderr.split(" ", 1)
    assert heavy == "[]", f"import mae pulled in {heavy}"
    assert float(seconds) < 1.0, f"import mae took {seconds} s beyond torch"


def test_ci_runs_the_readme_test_command():
    readme = (ROOT / "README.md").read_text()
    ci = (ROOT / ".ci" / "run").read_text()
    assert "make test" in readme and "make test" in ci


def test_headline_example_is_the_same_everywhere():
    """The README's example is shown in the intro and run, verbatim, by chapter 5."""
    readme = (ROOT / "README.md").read_text()
    example = readme.split("## The package\n\n```python\n", 1)[1].split("```", 1)[0]
    assert "model = MAE(config)" in example
    assert example in (ROOT / "book" / "intro.md").read_text()
    chapter = json.loads((ROOT / "notebooks" / "05_decoder.ipynb").read_text())
    sources = ["".join(c["source"]) for c in chapter["cells"] if c["cell_type"] == "code"]
    assert any(s.startswith(example) for s in sources), "chapter 5 no longer runs the example"
    assert max(len(line) for line in example.splitlines()) <= 80
