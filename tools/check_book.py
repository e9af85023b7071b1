"""Check a built book: every _toc.yml entry has a page, every image exists, no broken links,
the maths typesets offline (MathJax from the book itself, once per page) and one search field.

    python tools/check_book.py [_build/html]
"""

from __future__ import annotations

import sys
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import unquote, urlsplit

import yaml

ROOT = Path(__file__).resolve().parents[1]


class Page(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.links: list[str] = []
        self.images: list[str] = []
        self.scripts: list[str] = []
        self.search_fields = 0
        self.has_math = False
        self.ids: set[str] = set()

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if attrs.get("id"):
            self.ids.add(attrs["id"])
        if tag == "a" and attrs.get("href"):
            self.links.append(attrs["href"])
        if tag == "img" and attrs.get("src"):
            self.images.append(attrs["src"])
        if tag == "script" and attrs.get("src"):
            self.scripts.append(attrs["src"])
        classes = (attrs.get("class") or "").split()
        if tag == "button" and "search-button-field" in classes:
            self.search_fields += 1
        if tag in ("span", "div") and "math" in classes:
            self.has_math = True


def toc_files(toc: dict) -> list[str]:
    files = [toc["root"]]

    def walk(entries):
        for entry in entries or []:
            if "file" in entry:
                files.append(entry["file"])
            walk(entry.get("sections"))

    for part in toc.get("parts", []):
        walk(part.get("chapters"))
    walk(toc.get("chapters"))
    return files


def parse(path: Path) -> Page:
    page = Page()
    page.feed(path.read_text(encoding="utf-8"))
    return page


def check(html: Path) -> list[str]:
    problems = []
    toc = yaml.safe_load((ROOT / "_toc.yml").read_text())
    for entry in toc_files(toc):
        if not (html / f"{entry}.html").is_file():
            problems.append(f"_toc.yml entry {entry!r} produced no page ({entry}.html)")
    pages = {p: parse(p) for p in html.rglob("*.html") if "_static" not in p.parts}
    for path, page in pages.items():
        where = path.relative_to(html)
        mathjax = [src for src in page.scripts if "mathjax" in src.lower()]
        if (page.has_math or mathjax) and (len(mathjax) != 1 or urlsplit(mathjax[0]).scheme or not (
                path.parent / unquote(urlsplit(mathjax[0]).path)).resolve().is_file()):
            problems.append(f"{where}: MathJax should load once, from the book itself "
                            f"(mathjax_path in _config.yml), not {mathjax}")
        if page.search_fields > 1:
            problems.append(f"{where}: {page.search_fields} search fields (one expected)")
        for src in page.images:
            if urlsplit(src).scheme in ("http", "https", "data"):
                continue
            if not (path.parent / unquote(urlsplit(src).path)).resolve().is_file():
                problems.append(f"{where}: image {src} does not exist")
        for href in page.links:
            parts = urlsplit(href)
            if parts.scheme or href.startswith(("mailto:", "javascript:")):
                continue
            target = (path.parent / unquote(parts.path)).resolve() if parts.path else path
            if target.is_dir():
                target = target / "index.html"
            if not target.is_file():
                problems.append(f"{where}: broken link {href}")
                continue
            if parts.fragment and target in pages and parts.fragment not in pages[target].ids:
                problems.append(f"{where}: link {href} points to a missing anchor")
    return problems


def main() -> int:
    html = Path(sys.argv[1]) if len(sys.argv) > 1 else ROOT / "_build" / "html"
    problems = check(html)
    for problem in problems:
        print(problem)
    pages = len(list(html.rglob("*.html")))
    print(f"checked {pages} pages in {html}: {len(problems)} problem(s)")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
