#!/usr/bin/env bash
# One full reproduction cell on one GPU in one device call (issue 26, item 5): LA, 8 labeled scans, SS-Net, the
# official 15,000 iterations with the paper's in-training evaluation and selection (--select test, every 200
# iterations from 2,000, stride 18,18,4), then test_la.py on the 20 test scans with the selected checkpoint.
# The fastest settings that keep the math: bf16 autocast, channels-last, fused SGD, cuDNN autotuning, evaluation
# windows batched 8 per forward (same windows, same cadence: the selection protocol is unchanged);
# COMPILE=1 adds torch.compile (pays only when the run is long enough to amortise its minutes of compilation).
#
#     bash benchmarks/gpu_cell.sh                       # on the GPU machine; DATA = the full LA layout
#     DEVICE=cpu TINY=1 DATA=<synthetic LA> bash benchmarks/gpu_cell.sh   # tiny shapes, a test runs this
#
# Resumable: the run folder is $CELL/run (.gpu_cell/ in the repository, git-ignored, kept on a warm device
# machine between calls); running the script again continues the run from its newest resume checkpoint (saved
# every $SAVE_EVERY iterations) and skips what is done. Outputs in $RESULTS (results/gpu/cell_LA_8_ss_net/ by
# default) and, when $OUT is set, copied there: log.txt, config.json, result.json, the test table (test_table.txt),
# summary.json, metrics.csv and timing.json (seconds of training and testing, the device).
# Time: `python reproduce.py --dataset LA --dry-run --timing results/gpu/gpu_check.json` projects it from the step
# and window costs gpu_check.sh measured.
# Data: the 100 LA scans (~450 MB as h5) exceed what travels to a device machine (64 MiB); restore them there from
# the packed set when it travels (shared/data/restore.py), or point DATA at a copy already on the machine.
set -euo pipefail
cd "$(dirname "$0")/.."
DEVICE=${DEVICE:-cuda}
TINY=${TINY:-0}
DATA=${DATA:-.device_data/LA_full/LA}
CELL=${CELL:-.gpu_cell}
RESULTS=${RESULTS:-results/gpu/cell_LA_8_ss_net}
SAVE_EVERY=${SAVE_EVERY:-500}
PY=${PYTHON:-python3}
start=$(date +%s)
stamp() { echo "[$(( $(date +%s) - start )) s] $*"; }

if [ ! -d "$DATA/2018LA_Seg_Training Set" ] && [ -f shared/data/restore.py ] && [ "$TINY" != 1 ]; then
    stamp "restoring LA into $(dirname "$DATA")"
    $PY shared/data/restore.py "$(dirname "$DATA")" --dataset LA
fi
if [ ! -d "$DATA/2018LA_Seg_Training Set" ]; then
    echo "gpu_cell.sh: no LA data at DATA=$DATA (expected '$DATA/2018LA_Seg_Training Set/'); restore it with" \
         "python ../shared/data/restore.py <dir> --dataset LA and pass DATA=<dir>/LA" >&2
    exit 2
fi

if [ "$TINY" = 1 ]; then
    CELL_FLAGS=(--labelnum 2 --lists_dir "$DATA" --patch_size 32,32,32 --base_filters 4 --stride 16,16,16
                --max_iteration 6 --eval_every 2 --eval_start 2 --num_workers 0 --save_every 2)
    TEST_FLAGS=(--list "$DATA/test.list" --batch_size 4)
else
    CELL_FLAGS=(--labelnum 8 --save_every "$SAVE_EVERY" --compile "${COMPILE:-0}")
    TEST_FLAGS=(--batch_size 8)
fi
mkdir -p "$CELL" "$RESULTS"

stamp "train: LA-8 SS-Net, paper protocol (--select test), fast settings; resumes from $CELL/run when cut off"
train_start=$(date +%s)
if [ -f "$CELL/run/result.json" ]; then
    stamp "   already trained ($CELL/run/result.json)"
else
    $PY train_la.py --root_path "$DATA" --select test --device "$DEVICE" --run_dir "$CELL/run" --no_progress \
        --amp bf16 --channels_last 1 --optimizer_impl fused --deterministic 0 --eval_batch_size 8 \
        "${CELL_FLAGS[@]}" 2>&1 | grep -v "^\[.*\] iteration [0-9]*: " || true
    [ -f "$CELL/run/result.json" ] || { echo "gpu_cell.sh: training did not finish; run the script again" >&2; exit 1; }
fi
train_s=$(( $(date +%s) - train_start ))

stamp "test: test_la.py on the test scans with the selected checkpoint"
test_start=$(date +%s)
$PY test_la.py --checkpoint "$CELL/run/best_model.pth" --root_path "$DATA" --device "$DEVICE" \
    --output_dir "$CELL/test" --amp bf16 --channels_last 1 --no_progress "${TEST_FLAGS[@]}" \
    | tee "$CELL/test_table.txt"
test_s=$(( $(date +%s) - test_start ))

for file in run/log.txt run/config.json run/result.json test/summary.json test/metrics.csv test_table.txt; do
    cp "$CELL/$file" "$RESULTS/$(basename "$file")"
done
$PY - "$RESULTS/timing.json" "$train_s" "$test_s" "$DEVICE" <<'EOF'
import json, sys
import torch
path, train_s, test_s, device = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
name = torch.cuda.get_device_name(0) if device.startswith("cuda") else "cpu"
record = {"device": device, "device_name": name, "train_seconds_this_call": train_s, "test_seconds": test_s,
          "note": "train_seconds_this_call is 0 when the run was already trained; result.json holds the run's time"}
open(path, "w").write(json.dumps(record, indent=2) + "\n")
EOF
if [ -n "${OUT:-}" ]; then mkdir -p "$OUT" && cp "$RESULTS"/* "$OUT"/; fi
stamp "done: $RESULTS"
