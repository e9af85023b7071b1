#!/usr/bin/env bash
# The GPU comparison in one command (under 8 minutes on an H100/H200-class card):
#   bash benchmarks/gpu.sh              # ViT-B/16 at 224 px, bf16 autocast, fused (SDPA) attention,
#                                       # mae vs transformers vs vit-pytorch, with and without
#                                       # torch.compile; images/s and model-FLOPs utilisation
#                                       # against this card's measured bf16 matmul rate; plus the
#                                       # ViT-L visible-only vs mask-token encoder speedup.
#   bash benchmarks/gpu.sh --dry-run    # the same script on CPU with toy shapes (seconds), to check it
# Extra arguments go to benchmarks/bench.py (e.g. --repeats 30). Results: results/benchmarks/cuda-*.{csv,md}
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-python}"
[ -x .venv/bin/python ] && [ -z "${PYTHON:-}" ] && PY=.venv/bin/python

ARGS=(--configs vit-b --compile both --warmup 3 --repeats 20)
if [ "${1:-}" = "--dry-run" ]; then
    shift
    exec "$PY" benchmarks/bench.py --device cpu --smoke "${ARGS[@]}" --out "${OUT:-/tmp/mae-bench-dry-run}" "$@"
fi
"$PY" - <<'PY'
import sys, torch
if not torch.cuda.is_available():
    sys.exit("benchmarks/gpu.sh needs a CUDA GPU: torch.cuda.is_available() is False here. "
             "Run `bash benchmarks/gpu.sh --dry-run` to check the script on CPU.")
PY
exec timeout 600 "$PY" benchmarks/bench.py --device cuda "${ARGS[@]}" "$@"
