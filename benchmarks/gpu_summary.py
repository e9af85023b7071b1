"""The last step of benchmarks/gpu.sh: what the default point's run folders recorded, as a table.

    python benchmarks/gpu_summary.py RESULTS TIER DATASET OUT

reads RESULTS/runs/TIER/DATASET/default/seed*/metrics.json and writes
OUT/<device>-<tier>-default.md (beside the benchmark's own files), and prints it. Exits 1 when no
seed finished.
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from mae.provenance import write_text_atomic  # noqa: E402


def rows(results: Path, tier: str, dataset: str) -> list[dict]:
    found = []
    for path in sorted((results / "runs" / tier / dataset / "default").glob("seed*/metrics.json")):
        record = json.loads(path.read_text())
        m, prov = record["metrics"], record["provenance"]
        pre = path.parent / "train" / "pretrain_metrics.json"  # the precision autocast resolved to
        precision = json.loads(pre.read_text())["precision"] if pre.is_file() else "?"
        found.append({
            "run": path.parent.relative_to(results).as_posix(),
            "device": prov["device_name"], "precision": precision,
            "compile": record["config"]["train"]["compile"],
            "images/s": m["pretrain_images_per_s"], "pre-train s": m["pretrain_wall_time_s"],
            "eval s": m["eval_wall_time_s"], "probe": m["probe_top1"], "kNN": m["knn_top1"],
            "commit": prov["git_commit"][:7] + (" (dirty)" if prov["git_dirty"] else ""),
        })
    return found


def table(found: list[dict]) -> str:
    cols = list(found[0])
    fmt = {"images/s": "{:.0f}", "pre-train s": "{:.1f}", "eval s": "{:.1f}", "probe": "{:.1f}",
           "kNN": "{:.1f}"}
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for r in found:
        lines.append("| " + " | ".join(fmt.get(c, "{}").format(r[c]) for c in cols) + " |")
    return "\n".join(lines)


def main(argv: list[str]) -> int:
    if len(argv) != 4:
        print(__doc__.strip().splitlines()[2].strip(), file=sys.stderr)
        return 2
    results, tier, dataset, out_dir = Path(argv[0]), argv[1], argv[2], Path(argv[3])
    found = rows(results, tier, dataset)
    if not found:
        print(f"error: no finished run under {results}/runs/{tier}/{dataset}/default: "
              f"see the ablate output above.", file=sys.stderr)
        return 1
    device = re.sub(r"[^a-z0-9]+", "-", found[0]["device"].lower()).strip("-")
    text = (f"# The {tier} tier's default point on {found[0]['device']}\n\n"
            f"Written by `benchmarks/gpu.sh` (step 2): pre-training, linear probe and kNN of the "
            f"point both main sweeps share, {dataset}, from the run folders' metrics.json.\n\n"
            + table(found) + "\n")
    out = out_dir / f"{device}-{tier}-default.md"
    write_text_atomic(out, text)
    print(text + f"\n-> {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
