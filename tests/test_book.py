"""The book builds with warnings as errors, and the build checker finds what it should."""

import shutil
import subprocess
import sys
from pathlib import Path

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


def test_chapter_code_fits_the_page_and_every_chapter_ends_with_exercises():
    """88 columns fit the article at 1280 px (the book's CSS); each chapter closes with a summary
    and 3-5 exercises."""
    import json
    import re

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
