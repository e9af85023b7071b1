#!/usr/bin/env bash
# The GPU acceptance script (under 8 minutes on one H100/H200-class card):
#   bash benchmarks/gpu.sh              # 1. the benchmark at ViT-B/16, 224 px, bf16 autocast, fused
#                                       #    (SDPA) attention: mae vs transformers vs vit-pytorch,
#                                       #    with and without torch.compile, images/s, model-FLOPs
#                                       #    utilisation against this card's measured bf16 matmul
#                                       #    rate, peak memory; the ViT-L visible-only vs mask-token
#                                       #    encoder speedup -> results/benchmarks/cuda-*.{csv,md}
#                                       # 2. the gpu-quick tier's default point (the point both main
#                                       #    sweeps share) end to end: pre-training with
#                                       #    torch.compile, probe and kNN on the GPU -> a run folder
#                                       #    with provenance under results/runs/gpu-quick/
#   bash benchmarks/gpu.sh --dry-run    # every step of it on CPU with toy shapes (the smoke tier
#                                       # for step 2), into $OUT (default /tmp/mae-gpu-dry-run)
# Extra arguments go to benchmarks/bench.py (e.g. --repeats 30). GPU_DATASET picks the dataset of
# step 2 (default cifar10; imagenette is the one small enough to copy to a machine without MAE_DATA).
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-python}"
[ -x .venv/bin/python ] && [ -z "${PYTHON:-}" ] && PY=.venv/bin/python
DATASET="${GPU_DATASET:-cifar10}"

BENCH=(--configs vit-b --compile both --warmup 3 --repeats 20)
if [ "${1:-}" = "--dry-run" ]; then
    shift
    OUTDIR="${OUT:-/tmp/mae-gpu-dry-run}"
    echo "== 1/2 benchmark (dry run: CPU, toy shapes) -> $OUTDIR"
    "$PY" benchmarks/bench.py --device cpu --smoke "${BENCH[@]}" --out "$OUTDIR" "$@"
    echo "== 2/2 default point end to end (dry run: smoke tier, CPU) -> $OUTDIR/results"
    "$PY" -m mae ablate default --tier smoke --dataset "$DATASET" --results "$OUTDIR/results"
    "$PY" benchmarks/gpu_summary.py "$OUTDIR/results" smoke "$DATASET" "$OUTDIR"
    exit 0
fi
"$PY" - <<'PY'
import sys, torch
if not torch.cuda.is_available():
    sys.exit("benchmarks/gpu.sh needs a CUDA GPU: torch.cuda.is_available() is False here. "
             "Run `bash benchmarks/gpu.sh --dry-run` to check the script on CPU.")
PY
echo "== 1/2 benchmark -> results/benchmarks/cuda-*"
timeout 330 "$PY" benchmarks/bench.py --device cuda "${BENCH[@]}" "$@"
echo "== 2/2 gpu-quick default point end to end -> results/runs/gpu-quick/$DATASET/default"
timeout 300 "$PY" -m mae ablate default --tier gpu-quick --dataset "$DATASET"
"$PY" benchmarks/gpu_summary.py results gpu-quick "$DATASET" results/benchmarks
