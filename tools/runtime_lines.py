"""Each chapter's running time, written from its own execution record so that it cannot drift.

    python tools/runtime_lines.py           # rewrite the line in every chapter (make book does)
    python tools/runtime_lines.py --check   # exit 1 naming each chapter whose line is stale

A chapter's first markdown cell carries one line, right under its title, of the form

    *Running time: 42 s at its last execution (first code cell started to last cell ended).*

computed from the execution timestamps that `jupyter execute` (nbclient) records in each code
cell's metadata. A chapter with no such record says so instead of a number. Only that line is
touched; the outputs are not.
"""

from __future__ import annotations

import argparse
import datetime as dt
import re
import sys
from pathlib import Path

import nbformat

ROOT = Path(__file__).resolve().parents[1]
PREFIX = "*Running time: "
LINE = re.compile(r"^\*Running time: .*\*$", re.MULTILINE)


def seconds(nb) -> float | None:
    """From the first code cell's start to the last one's end, None without a record."""
    stamps = [c.metadata.get("execution", {}) for c in nb.cells if c.cell_type == "code"]
    if not stamps or not all("iopub.status.busy" in s and "iopub.status.idle" in s
                             for s in stamps):
        return None

    def at(text: str) -> dt.datetime:
        return dt.datetime.fromisoformat(text.replace("Z", "+00:00"))

    return (max(at(s["iopub.status.idle"]) for s in stamps)
            - min(at(s["iopub.status.busy"]) for s in stamps)).total_seconds()


def line(nb) -> str:
    took = seconds(nb)
    if took is None:
        return (PREFIX + "not recorded (run `make book EXECUTE=1`, which executes the chapters "
                "and writes this line).*")
    shown = f"{took:.0f} s" if took < 90 else f"{took / 60:.1f} minutes"
    return (PREFIX + f"{shown} at its last execution (first code cell started to last cell "
            f"ended), with the outputs shown below.*")


def updated(source: str, text: str) -> str:
    """The first markdown cell with its runtime line set: replaced, or put under the title."""
    if LINE.search(source):
        return LINE.sub(lambda _: text, source, count=1)
    title, _, rest = source.partition("\n")
    return f"{title}\n\n{text}\n{rest}" if rest.startswith("\n") else f"{title}\n\n{text}\n\n{rest}"


def chapters() -> list[Path]:
    return sorted((ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb"))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--check", action="store_true", help="only check; exit 1 if a line is stale")
    args = p.parse_args(argv)
    stale = []
    for path in chapters():
        nb = nbformat.read(path, as_version=4)
        first = next(c for c in nb.cells if c.cell_type == "markdown")
        new = updated(first.source, line(nb))
        if new == first.source:
            continue
        stale.append(path.name)
        if not args.check:
            first.source = new
            nbformat.write(nb, path)
    if args.check and stale:
        print(f"stale running-time lines in {', '.join(stale)}: run python tools/runtime_lines.py",
              file=sys.stderr)
        return 1
    if stale and not args.check:
        print(f"updated {', '.join(stale)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
