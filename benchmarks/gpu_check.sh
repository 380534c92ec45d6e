#!/usr/bin/env bash
# GPU check: the speed table of docs/speed.md and a short real LA training and test, sized to finish in under
# 8 minutes on one H100.
#
#   bash benchmarks/gpu_check.sh                      # on a CUDA machine
#   DRY_RUN=1 bash benchmarks/gpu_check.sh            # any machine, seconds: only checks that every command's flags
#                                                     # parse (python -m benchmarks.flag_check); add TINY=1 for the
#                                                     # reduced form's commands
#   DEVICE=cpu TINY=1 bash benchmarks/gpu_check.sh    # the reduced form on a CPU: minutes on 2 cores
#
# What it runs and prints, each step stamped with the seconds since the start:
#   1. python -m benchmarks.bench: SS-Net training s/iteration and peak memory (torch.cuda.max_memory_allocated)
#      on the LA and ACDC shapes and the LA test-volume time, official vs default vs fast, ratios to official,
#      the largest LA batch that fits $FITS_GB GiB (default 24; 2..8 tried) and the projected full LA run.
#      Table printed; JSON in $OUT/bench_gpu.json, log in $OUT/bench_gpu.log.
#   2. the same, fast mode only, with torch.compile (compile cost and gain): $OUT/bench_gpu_compile.json / .log.
#   3. train_la.py: a 300-iteration SS-Net training on the cases under $DATA, evaluated every 100 iterations,
#      fast options (bf16, channels-last, fused SGD); its last lines and evaluation lines printed, its log in
#      $OUT/train_log.txt.
#   4. test_la.py on that run's best checkpoint in fp32 and in bf16: both mean metrics printed (they agree within
#      the tolerance of docs/speed.md), the summaries in $OUT/test_off_summary.json and $OUT/test_bf16_summary.json.
# Checkpoints and TensorBoard files stay in $WORK (default /tmp/gpu_check_work); $OUT (default /tmp/gpu_check_out)
# gets only the small files named above.
#
# Steps 3-4 need LA cases in the h5 layout under $DATA (default .device_data/LA, git-ignored); a few are enough,
# e.g. 4 training and 4 test cases copied from ./data/LA (docs/data.md), or the tests' subset (~18 MB):
#     python ../shared/data/restore.py .device_data --dataset LA --limit 4
# Without them steps 3-4 are skipped with a message. Python packages: torch with CUDA, h5py, scipy, tensorboard,
# tqdm; not medpy or nibabel (the metrics are computed with scipy; nibabel is imported only for --save_predictions).
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-/tmp/gpu_check_out}
WORK=${WORK:-/tmp/gpu_check_work}
DEVICE=${DEVICE:-cuda}
TINY=${TINY:-0}
DATA=${DATA:-.device_data/LA}
DRY_RUN=${DRY_RUN:-0}
mkdir -p "$OUT" "$WORK"
PY=${PYTHON:-python3}
start=$(date +%s)
stamp() { echo "[$(( $(date +%s) - start )) s] $*"; }
COMMANDS="$WORK/commands.txt"
: > "$COMMANDS"
# a project command: run it, or under DRY_RUN=1 note it for the flag check at the end
project() {
    if [ "$DRY_RUN" = 1 ]; then printf '%q ' "$@" >> "$COMMANDS"; echo >> "$COMMANDS"; else $PY "$@"; fi
}

stamp "environment"
if [ "$DRY_RUN" = 1 ]; then
    stamp "   dry run: the commands are listed, then their flags checked; nothing is run"
else
    if [ "$DEVICE" = cuda ]; then nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv || true; fi
    $PY -c "import torch, sys; print('python', sys.version.split()[0], 'torch', torch.__version__, 'cuda', \
torch.version.cuda, 'available', torch.cuda.is_available())"
fi

if [ "$TINY" = 1 ]; then
    BENCH=(--tiny --threads 1)
    FITS=()
    TRAIN=(--patch_size 32,32,32 --base_filters 4 --stride 16,16,16 --eval_stride 32,32,32 --max_iteration 4
           --eval_every 2 --eval_start 2 --num_workers 0)
    TEST=(--batch_size 4)
else
    # 3 modes x (LA, ACDC) x (3 + 5 iterations) + 3 x 3 test volumes + 3 x 4 --fits_gb processes: ~3 minutes
    BENCH=(--iterations 5 --warmup 3 --volumes 2 --eval_batch_size 8)
    FITS=(--fits_gb "${FITS_GB:-24}" --fits_max_batch 8)
    # 300 iterations, evaluation on the test cases present every 100 from 100 (the paper protocol's
    # procedure on fewer cases), coarse evaluation stride, fast options
    TRAIN=(--max_iteration 300 --eval_every 100 --eval_start 100 --eval_stride 56,56,40 --num_workers 6
           --eval_batch_size 8 --deterministic 0)
    TEST=(--batch_size 8)
fi

stamp "1. bench: official vs default (fp32, memory-saving step, folded BatchNorm) vs fast (bf16, channels-last, fused SGD)"
project -m benchmarks.bench --device "$DEVICE" "${BENCH[@]}" ${FITS[@]+"${FITS[@]}"} --eval_stride 56,56,40 \
    --output "$OUT/bench_gpu.json" \
    2>&1 | tee "$OUT/bench_gpu.log"

stamp "2. bench: fast mode with torch.compile"
COMPILE=(-m benchmarks.bench --device "$DEVICE" "${BENCH[@]}" --modes fast --compile 1 --eval_stride 56,56,40
         --output "$OUT/bench_gpu_compile.json")
if [ "$TINY" = 1 ]; then
    stamp "   (skipped in the reduced CPU form: inductor needs minutes on a CPU)"
elif [ "$DRY_RUN" = 1 ]; then
    project "${COMPILE[@]}"
else
    timeout 150 $PY "${COMPILE[@]}" 2>&1 | tee "$OUT/bench_gpu_compile.log" \
        || stamp "   compile bench did not finish (timeout or error); see bench_gpu_compile.log"
fi

stamp "3. short real LA training with periodic evaluation"
LISTS="$WORK/lists"
if [ "$DRY_RUN" != 1 ]; then
    if [ ! -d "$DATA/2018LA_Seg_Training Set" ]; then
        stamp "no LA data at $DATA: see the header for how to get a few cases; skipping the training run"
        exit 0
    fi
    mkdir -p "$LISTS"
    # lists of the cases present, in the official order; train: 2 labeled + the rest unlabeled
    $PY - "$DATA" "$LISTS" <<'EOF'
import sys
from pathlib import Path
data, lists = Path(sys.argv[1]), Path(sys.argv[2])
present = {p.name for p in (data / "2018LA_Seg_Training Set").iterdir()}
for name in ("train", "test"):
    ids = [i for i in (data / f"{name}.list").read_text().split() if i in present]
    (lists / f"{name}.list").write_text("\n".join(ids) + "\n")
    print(name, len(ids), "cases")
(lists / "val.list").write_text("")
EOF
fi
# what reads the run's outputs (nothing to read in a dry run)
outputs() { [ "$DRY_RUN" = 1 ] || "$@"; }
project train_la.py --root_path "$DATA" --lists_dir "$LISTS" --labelnum 2 --select test --device "$DEVICE" \
    --run_dir "$WORK/run" --amp bf16 --channels_last 1 --optimizer_impl fused --no_progress "${TRAIN[@]}" \
    2>&1 | tail -n 40
outputs cp "$WORK/run/log.txt" "$OUT/train_log.txt"
outputs grep -E "mean Dice|done in" "$WORK/run/log.txt" || true

stamp "4. test the best checkpoint: fp32 (official path) vs bf16 (fast path)"
for amp in off bf16; do
    channels_last=$([ "$amp" = off ] && echo 0 || echo 1)
    stamp "   test_la.py --amp $amp"
    project test_la.py --checkpoint "$WORK/run/best_model.pth" \
        --root_path "$DATA" --list "$LISTS/test.list" --device "$DEVICE" --output_dir "$WORK/test_$amp" \
        --amp "$amp" --channels_last "$channels_last" --no_progress "${TEST[@]}"
    outputs cp "$WORK/test_$amp/summary.json" "$OUT/test_${amp}_summary.json"
done
if [ "$DRY_RUN" = 1 ]; then
    stamp "dry run: the flags of every command above"
    $PY -m benchmarks.flag_check "$COMMANDS"
    exit $?
fi
$PY - "$OUT" <<'EOF'
import json, sys
from pathlib import Path
out = Path(sys.argv[1])
means = {amp: json.loads((out / f"test_{amp}_summary.json").read_text())["mean"] for amp in ("off", "bf16")}
print("mean metrics fp32:", means["off"])
print("mean metrics bf16:", means["bf16"])
EOF
stamp "done"
