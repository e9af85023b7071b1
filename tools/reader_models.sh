#!/usr/bin/env bash
# The two reader models of the book (issue 28), trained with the package's own CLI on a CPU.
# Resumable: run it again after a stop and every stage continues where it was (pretrain --resume,
# finished evaluations are kept). One long job at a time; run it under nohup:
#
#   RUNS=/work/runs nohup bash tools/reader_models.sh cifar > /work/runs/cifar.log 2>&1 &
#   RUNS=/work/runs nohup bash tools/reader_models.sh imagenette > /work/runs/imagenette.log 2>&1 &
#   bash tools/reader_models.sh pilot     # ~2 min: images/s of both recipes on this CPU
#   CIFAR_EPOCHS=64 CIFAR_SNAPSHOTS=8,16,32,64 bash tools/reader_models.sh cifar   # wide-cifar10
#   IMAGENETTE_EPOCHS=200 IMAGENETTE_SNAPSHOTS=25,50,100,200 bash tools/reader_models.sh imagenette
#
# The recipes (why: the issue's pilot on an AMD EPYC with native bf16, 2 threads, cpu tier's
# 8 epochs: a 256-d x 8 encoder reached probe 57.2 (mean-pooled) / 52.6 (CLS) against micro's
# 50.8 (CLS), at 175 images/s float32 and 293 bf16; width pays at once, and micro's CLS probe
# flattens by 50 epochs):
# - cifar: 256-d x 8 encoder (4 heads), 128-d x 2 decoder, 4 x 4 patches at 32 px (64 tokens),
#   norm-pix target, 200 epochs (warm-up 10), batch 256, base_lr 1e-3 (the cpu tier's), snapshots
#   at 25, 50, 100 and 200 epochs for the schedule figure. About 10 CPU-hours at ~290 images/s.
# - imagenette: the same encoder and decoder on Imagenette at 128 px with 16 x 16 patches (the
#   same 64 tokens), raw-pixel target (as the official "visualize" checkpoints), 400 epochs
#   (warm-up 20): 3.8 M images, about 4-6 CPU-hours at 175-290 images/s.
# precision auto: bf16 on a CPU with native bf16 (encoders >= 192 wide), float32 elsewhere; the
# run records which it used. The evaluation records go to results/runs/reader/<name>/.
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-.venv/bin/python}"
RUNS="${RUNS:-$(cd .. && pwd)/runs}"
MODEL=(--preset micro --set encoder_dim=256 --set encoder_layers=8 --set encoder_heads=4
       --set decoder_dim=128 --set decoder_heads=4)
# CIFAR_EPOCHS sizes the CIFAR run to a session (the pilot prints what HOURS buy); warm-up 1/20 of it
CIFAR_EPOCHS="${CIFAR_EPOCHS:-200}"
CIFAR_SNAPSHOTS="${CIFAR_SNAPSHOTS:-25,50,100,200}"
CIFAR=(--dataset cifar10 --epochs "$CIFAR_EPOCHS" --warmup-epochs "$(( (CIFAR_EPOCHS + 19) / 20 ))"
       --batch-size 256 --base-lr 1e-3 --snapshot-epochs "$CIFAR_SNAPSHOTS" --checkpoint-every 200)
# IMAGENETTE_EPOCHS likewise (the issue asks 400; a 3-hour session on 2 cores buys about 200)
IMAGENETTE_EPOCHS="${IMAGENETTE_EPOCHS:-400}"
IMAGENETTE_SNAPSHOTS="${IMAGENETTE_SNAPSHOTS:-50,100,200,400}"
IMAGENETTE=(--dataset imagenette --set img_size=128 --set patch_size=16 --set norm_pix_loss=false
            --epochs "$IMAGENETTE_EPOCHS" --warmup-epochs "$(( (IMAGENETTE_EPOCHS + 19) / 20 ))"
            --batch-size 256 --base-lr 1e-3 --snapshot-epochs "$IMAGENETTE_SNAPSHOTS"
            --checkpoint-every 100)

pretrain() {  # name, recipe...: resume if the folder holds a run
    local out="$RUNS/$1"; shift
    local again=(); [ -f "$out/checkpoint.pt" ] && again=(--resume)
    "$PY" -m mae pretrain "${MODEL[@]}" "$@" --out "$out" "${again[@]}"
}

case "${1:-}" in
    pilot)
        pretrain pilot-cifar "${CIFAR[@]}" --max-steps 100 --snapshot-epochs ""
        pretrain pilot-imagenette "${IMAGENETTE[@]}" --max-steps 40 --snapshot-epochs ""
        # images/s of each recipe, and what a session of HOURS (default 2.5) of training buys
        for r in "pilot-cifar 50000 200" "pilot-imagenette 9469 400"; do
            set -- $r
            "$PY" - "$RUNS/$1/pretrain_metrics.json" "$1" "$2" "$3" "${HOURS:-2.5}" <<'PYEOF'
import json, sys
from mae.runtime import cpu_has_native_bf16
m = json.load(open(sys.argv[1]))
name, n, epochs, hours = sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), float(sys.argv[5])
rate = m["images_per_s"]
print(f"{name}: {rate:.0f} images/s, {m['precision']}, {m['provenance']['device_name']}",
      f"(native bf16: {cpu_has_native_bf16()}); the recipe's {epochs} epochs take",
      f"{n * epochs / rate / 3600:.1f} h; {hours:g} h buy {hours * 3600 * rate / n:.0f} epochs")
PYEOF
        done ;;
    cifar)
        pretrain cifar-256x8 "${CIFAR[@]}"
        "$PY" -m mae frozen --checkpoint "$RUNS/cifar-256x8" --features mean ;;
    imagenette)
        pretrain imagenette-pixels-128 "${IMAGENETTE[@]}" ;;
    *)
        echo "usage: bash tools/reader_models.sh pilot|cifar|imagenette (RUNS=folder, default ../runs)" >&2
        exit 2 ;;
esac
