"""The book builds with warnings as errors, and the build checker finds what it should."""

import ast
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import nbformat
import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tools"))
from check_book import check, parse  # noqa: E402


@pytest.mark.slow
def test_book_builds_and_links_resolve(tmp_path):
    jb = Path(sys.executable).with_name("jupyter-book")
    run = subprocess.run([str(jb), "build", str(ROOT), "--path-output", str(tmp_path),
                          "--warningiserror", "--nitpick"], capture_output=True, text=True)
    assert run.returncode == 0, run.stdout[-4000:] + run.stderr[-2000:]
    html = tmp_path / "_build" / "html"
    assert check(html) == []
    # The checker notices a missing chapter page, a broken link and a missing image.
    broken = tmp_path / "broken"
    shutil.copytree(html, broken)
    (broken / "notebooks" / "03_loss.html").unlink()
    figure = parse(broken / "notebooks" / "01_patchify.html").images[0]  # its first figure
    (broken / "notebooks" / figure).unlink()
    (broken / "mathjax" / "tex-svg.js").unlink()  # the maths would need a CDN again
    problems = check(broken)
    assert any("theory.html: MathJax should load once, from the book itself" in p
               for p in problems)
    assert any("'notebooks/03_loss' produced no page" in p for p in problems)
    assert any("broken link" in p and "03_loss.html" in p for p in problems)
    assert any(f"01_patchify.html: image {figure} does not exist" in p for p in problems)
    # Where a Chromium is installed: every page at 1280 and 400 px, laid out without sideways
    # scrolling or a cut-off table, its maths typeset; and the check notices a page that is not.
    if shutil.which("chromium") or shutil.which("chromium-browser"):
        layout = subprocess.run([sys.executable, str(ROOT / "tools" / "check_layout.py"),
                                 str(html)], capture_output=True, text=True)
        assert layout.returncode == 0, layout.stdout[-3000:] + layout.stderr[-2000:]
        assert "theory.html @ 400px: ok" in layout.stdout
        wide = broken / "book" / "theory.html"
        wide.write_text(wide.read_text().replace(
            '<article class="bd-article">', '<article class="bd-article"><div style="width: 900px; '
            'height: 1px"></div><p>left $x^2$ raw</p>', 1))
        layout = subprocess.run([sys.executable, str(ROOT / "tools" / "check_layout.py"),
                                 str(broken), "--widths", "400"], capture_output=True, text=True)
        assert "theory.html @ 400px: the page scrolls sideways" in layout.stdout
        assert "maths left untypeset" in layout.stdout and layout.returncode == 1


def test_chapter_code_fits_the_page_and_every_chapter_ends_with_exercises():
    """88 columns fit the article at 1280 px (the book's CSS); each chapter closes with a summary
    and 3-5 exercises."""
    import json

    for path in sorted((ROOT / "notebooks").glob("0*.ipynb")):
        cells = json.loads(path.read_text())["cells"]
        for cell in cells:
            if cell["cell_type"] == "code":
                for line in "".join(cell["source"]).splitlines():
                    assert len(line) <= 88, f"{path.name}: {len(line)} columns: {line}"
        text = "".join("".join(c["source"]) for c in cells if c["cell_type"] == "markdown")
        assert "## Summary" in text and "## Exercises" in text, path.name
        exercises = text.split("## Exercises", 1)[1]
        assert 3 <= len(re.findall(r"^\d+\. ", exercises, flags=re.M)) <= 5, path.name


def chapter_figures() -> dict[str, set[str]]:
    """The book/figures/*.png each chapter's markdown shows, by chapter file name."""
    import json
    import re

    shown = {}
    for path in sorted((ROOT / "notebooks").glob("0*.ipynb")):
        cells = json.loads(path.read_text())["cells"]
        text = "".join("".join(c["source"]) for c in cells if c["cell_type"] == "markdown")
        shown[path.stem] = set(re.findall(r"\]\(\.\./book/figures/([\w-]+\.png)\)", text))
    return shown


def test_mechanics_figures_exist_and_are_the_ones_the_chapters_show():
    """tools/draw_mechanics.py names every figure it writes; each exists, is small, and is shown
    by a chapter; chapters 1-5 each show one; every figure a chapter names exists and is drawn
    by the tool."""
    import draw_mechanics

    drawn = {f"{name}.png" for name in draw_mechanics.FIGURES}
    shown = chapter_figures()
    everything = set().union(*shown.values())
    for name in sorted(drawn):
        path = ROOT / "book" / "figures" / name
        assert path.is_file(), f"{name}: run tools/draw_mechanics.py"
        assert path.stat().st_size < 150_000, f"{name}: {path.stat().st_size} bytes"
        assert name in everything, f"{name} is drawn but no chapter shows it"
    for stem in ("01_patchify", "02_masking", "03_loss", "04_encoder", "05_decoder"):
        assert shown[stem] & drawn, f"{stem} shows no drawing of its mechanics"
    for stem, names in shown.items():
        for name in sorted(names):
            assert (ROOT / "book" / "figures" / name).is_file(), f"{stem}: {name} is missing"
            assert name in drawn, f"{stem}: {name} is not drawn by tools/draw_mechanics.py"


def test_readme_trained_models_table_is_generated_from_the_records():
    """README's table of trained models is tools/readme_models.py's output (no placeholder left),
    one row per shipped checkpoint, and the download mirror's variable is documented."""
    import readme_models

    readme = (ROOT / "README.md").read_text()
    table = readme_models.table()
    assert table in readme, "README's trained-models table is stale: run tools/readme_models.py"
    assert "_LINE" not in readme
    names = sorted(p.stem for p in (ROOT / "checkpoints").glob("*.pt"))
    assert [line.split("`")[1] for line in table.splitlines()[2:]] == names
    assert "MAE_CHECKPOINT_URL" in readme


HINT = re.compile(r"^   :::\{dropdown\} Hint \(cost: (?:CPU|GPU) (?:~|< )\d+(?:\.\d+)? (?:s|min|h)\)\n"
                  r"(?P<body>.*?)^   :::$", flags=re.M | re.S)


def test_every_exercise_has_a_collapsed_hint_with_the_expected_result_and_a_cost():
    """Each chapter's exercises each end with one collapsed dropdown (sphinx-design, closed unless
    `:open:`) titled with a cost tag such as "cost: CPU ~2 h", whose body gives a hint and the
    expected result; no exercise in any chapter lacks one."""
    import json

    for path in sorted((ROOT / "notebooks").glob("0*.ipynb")):
        cells = json.loads(path.read_text())["cells"]
        text = "\n".join("".join(c["source"]) for c in cells if c["cell_type"] == "markdown")
        assert text.count("## Exercises") == 1, path.name
        section = text.split("## Exercises", 1)[1]
        items = re.split(r"^(?=\d+\. )", section, flags=re.M)[1:]
        assert items, path.name
        for number, item in enumerate(items, 1):
            hints = list(HINT.finditer(item))
            assert len(hints) == 1, f"{path.name}: exercise {number} needs one hint with a cost"
            body = hints[0]["body"]
            assert ":open:" not in body, f"{path.name}: exercise {number}'s hint is not collapsed"
            hint, _, expected = body.partition("**Expected:**")
            assert hint.strip() and expected.strip(), \
                f"{path.name}: exercise {number}'s hint needs a hint and an expected result"
        assert section.count(":::{dropdown}") == len(items), path.name


def test_every_chapter_states_the_running_time_its_execution_record_gives():
    """The running-time line under each chapter's title is written from the cells' execution
    timestamps (tools/runtime_lines.py), so it cannot drift from the outputs shown."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("runtime_lines", ROOT / "tools" / "runtime_lines.py")
    tool = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tool)
    assert tool.main(["--check"]) == 0
    for path in tool.chapters():
        nb = nbformat.read(path, as_version=4)
        first = next(c for c in nb.cells if c.cell_type == "markdown").source
        assert first.splitlines()[2] == tool.line(nb), path.name  # right under the title
    record = {"execution": {"iopub.status.busy": "2026-01-01T00:00:00.000Z",
                            "iopub.status.idle": "2026-01-01T00:02:30.000Z"}}
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_markdown_cell("# T\n\nText."),
                                         nbformat.v4.new_code_cell("1", metadata=record)])
    assert "2.5 minutes" in tool.line(nb)
    assert tool.updated("# T\n\nText.", tool.line(nb)).splitlines()[2] == tool.line(nb)


TROUBLESHOOTING = ROOT / "book" / "troubleshooting.md"
# A ```python block, and the ```text block of what it prints when one follows it.
PYTHON_BLOCK = re.compile(r"^```python\n(.*?)^```\n(?:\n```text\n(.*?)^```\n)?",
                          re.DOTALL | re.MULTILINE)


def python_blocks(page: Path) -> list[tuple[str, str | None]]:
    """The ```python blocks of a MyST page: (source, the output shown under it or None)."""
    text = page.read_text()
    blocks = [(m.group(1), m.group(2)) for m in PYTHON_BLOCK.finditer(text)]
    assert len(blocks) == text.count("```python"), f"{page.name}: a python block is not closed"
    return blocks


def test_troubleshooting_is_in_the_book_and_its_python_compiles():
    """The page follows the pitfalls in "Reproducing the paper"; each of its questions has a
    python block and a pointer to more in the book, and every python block parses and fits
    the page (88 columns)."""
    import yaml

    toc = yaml.safe_load((ROOT / "_toc.yml").read_text())
    part = next(p for p in toc["parts"] if p["caption"] == "Reproducing the paper")
    files = [chapter["file"] for chapter in part["chapters"]]
    assert files.index("book/troubleshooting") == files.index("book/pitfalls") + 1
    questions = TROUBLESHOOTING.read_text().split("\n## ")[1:]
    assert len(questions) >= 6
    for question in questions:
        title = question.splitlines()[0]
        assert "```python" in question, f"{title}: no python block"
        assert "**More:**" in question and "{doc}`" in question, f"{title}: no pointer"
    blocks = python_blocks(TROUBLESHOOTING)
    for n, (source, _) in enumerate(blocks, 1):
        ast.parse(source, filename=f"troubleshooting.md, python block {n}")
        for line in source.splitlines():
            assert len(line) <= 88, f"python block {n}: {len(line)} columns: {line}"


RUN_BLOCKS = """
import contextlib, io, json, sys
printed = []
for n, source in enumerate(json.load(sys.stdin), 1):
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        exec(compile(source, f"<python block {n}>", "exec"), {"__name__": "__main__"})
    printed.append(out.getvalue())
json.dump(printed, sys.__stdout__)
"""


def check_python_blocks_print_what_the_page_shows(page: Path, tmp_path: Path) -> None:
    """Every python block of ``page`` runs as it is, without data or network, in one fresh
    process, and prints exactly the output shown under it."""
    blocks = python_blocks(page)
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1",
           "MPLBACKEND": "Agg", "TMPDIR": str(tmp_path), "MAE_CACHE": str(tmp_path / "cache"),
           "MAE_CHECKPOINT_URL": "http://127.0.0.1:9/"}  # a download would fail at once
    env.pop("MAE_DATA", None)
    run = subprocess.run([sys.executable, "-c", RUN_BLOCKS], cwd=tmp_path, env=env,
                         input=json.dumps([source for source, _ in blocks]),
                         capture_output=True, text=True, timeout=300, check=False)
    assert run.returncode == 0, run.stderr[-4000:]
    printed = json.loads(run.stdout)
    assert len(printed) == len(blocks)
    for n, ((_, shown), out) in enumerate(zip(blocks, printed), 1):
        if shown is not None:
            assert out == shown, (f"{page.name}, python block {n} printed:\n{out}\n"
                                  f"the page shows:\n{shown}")


def test_troubleshooting_python_runs_offline_and_prints_what_the_page_shows(tmp_path):
    """Every python block of the page runs as it is, without data or network, in one fresh
    process (about 5 CPU-seconds on one thread), and prints exactly the output shown under it."""
    check_python_blocks_print_what_the_page_shows(TROUBLESHOOTING, tmp_path)


TRAINING_LOOP = ROOT / "book" / "training_loop.md"
LITERALINCLUDE = re.compile(r"```\{literalinclude\} \.\./(\S+)\n:pyobject: (\S+)\n")
# The production machinery of pre-training (issue 31, item 2): the appendix page shows it, the
# chapters do not. Modules whose code the chapters must not render, and names their code cells
# must not call.
MACHINERY_MODULES = ("mae/hidden.py", "mae/train.py", "mae/pretrain_setup.py", "mae/resume.py",
                     "mae/streaming.py")
MACHINERY_NAMES = ("draw_batch", "BatchSource", "micro_batches", "hidden_patch_loss",
                   "HiddenPatchLoss", "decode_hidden", "run_steps", "resume_run")


def rendered_code(text: str) -> set[tuple[str, str]]:
    """The (file, pyobject) pairs that the {literalinclude} directives of MyST text render."""
    assert text.count("{literalinclude}") == len(LITERALINCLUDE.findall(text))
    return set(LITERALINCLUDE.findall(text))


def test_chapters_5_and_6_render_no_production_internals_and_the_appendix_does():
    """Chapters 5 and 6 show the minimal idea (the loss from the parts; one training step written
    out and checked against the library) and render none of the batch machinery or the
    hidden-patch shortcut, in markdown or in code; the appendix page "How the training loop is
    built" renders them, from the package's real code, and is in the Appendix part."""
    import yaml

    for stem in ("05_decoder", "06_pretraining"):
        cells = json.loads((ROOT / "notebooks" / f"{stem}.ipynb").read_text())["cells"]
        text = "\n".join("".join(c["source"]) for c in cells if c["cell_type"] == "markdown")
        for path, name in rendered_code(text):
            assert path not in MACHINERY_MODULES, f"{stem} renders {path}: {name}"
            assert name not in MACHINERY_NAMES, f"{stem} renders {name}"
        code = "\n".join("".join(c["source"]) for c in cells if c["cell_type"] == "code")
        for name in MACHINERY_NAMES:
            assert not re.search(rf"\b{name}\b", code), f"{stem}'s code uses {name}"
        assert "{doc}`../book/training_loop`" in text, f"{stem} does not point to the appendix"
    shown = rendered_code(TRAINING_LOOP.read_text())
    for name in ("pretrain", "Schedule", "set_up", "run_steps", "train_step", "BatchSource",
                 "draw_batch", "micro_batches", "resume_run", "loss_network",
                 "hidden_patch_loss", "decode_hidden"):
        assert name in {obj for _, obj in shown}, f"the appendix does not render {name}"
    assert all((ROOT / path).is_file() for path, _ in shown)
    toc = yaml.safe_load((ROOT / "_toc.yml").read_text())
    part = next(p for p in toc["parts"] if p["caption"] == "Appendix")
    assert "book/training_loop" in [chapter["file"] for chapter in part["chapters"]]
    # No speed saving that the measurement does not show.
    page = TRAINING_LOOP.read_text()
    assert "0.94 to 1.13" in page and "claims no speed-up" in page
    for path in (ROOT / "notebooks").glob("0*.ipynb"):
        assert "4-13 %" not in path.read_text(), path.name


def test_training_loop_python_runs_offline_and_prints_what_the_page_shows(tmp_path):
    """The appendix's python blocks (a batch split over micro-batches and ranks, the shortcut's
    loss and gradients against the full forward in float64, the FLOPs it saves) fit the page,
    run without data or network in one fresh process, and print what the page shows."""
    blocks = python_blocks(TRAINING_LOOP)
    assert len(blocks) >= 3
    for n, (source, _) in enumerate(blocks, 1):
        for line in source.splitlines():
            assert len(line) <= 88, f"python block {n}: {len(line)} columns: {line}"
    check_python_blocks_print_what_the_page_shows(TRAINING_LOOP, tmp_path)


def test_the_pages_commands_and_code_fit_the_page():
    """Commands and code in the book's pages fit the 88 columns that show at 1280 px: a comment
    wrapped onto the next line would read as another command (outputs, ```text, may wrap)."""
    long = []
    for path in sorted((ROOT / "book").glob("*.md")):
        for block in re.findall(r"^```(?:bash|python|shell)\n(.*?)^```", path.read_text(),
                                re.DOTALL | re.MULTILINE):
            long += [f"{path.name}: {line}" for line in block.splitlines() if len(line) > 88]
    assert long == []
