#!/usr/bin/env bash
# The studies' gpu scale, as far as a time budget allows, on one CUDA device (an H100/H200 in ~10 min).
#
#   scripts/gpu-evidence.sh [OUT] [BUDGET_SECONDS] [SCALE]     (defaults: runs/gpu 540 gpu)
#
# Each study gets a share of the budget and runs its stages in the order below; a stage stopped at
# its share resumes on the next call with the same OUT (run directories are crash-safe). At the end
# OUT/gpu-progress.json lists every run directory with its last measurement, and the device and
# torch version. SCALE=smoke runs the same path on a CPU in seconds (to test the script).
#
# What the gpu scales are (and how they differ from the papers):
#   eos          Cohen et al.'s E1: the first 5 000 CIFAR-10 images, fc-tanh 200-200, MSE, full-batch GD,
#                eta = 2/50, 2/100, 2/200, stop at 99% train accuracy (the paper's setting).
#   escape       a GroupNorm ResNet-18 on the 16 000 CIFAR-10 images of cifar10_train16k.npz (the paper: 50 000).
#                Building the bad minimizer alone takes far longer than one budget: it resumes.
#   sam-flatness a BatchNorm-free CNN (64-128-256) on 16 000 images; Foret et al. use WideResNets on 50 000
#                with augmentation.
#
# The data files come from the data root $SHARPSCOPE_DATA (docs/data.md); when it is unset, this script
# uses the shared/data folder beside the repository if there is one.
set -euo pipefail
sibling_data="$(cd "$(dirname "$0")/../.." && pwd)/shared/data"
if [ -z "${SHARPSCOPE_DATA:-}" ] && [ -d "$sibling_data" ]; then export SHARPSCOPE_DATA="$sibling_data"; fi
OUT=${1:-runs/gpu}
BUDGET=${2:-540}
SCALE=${3:-gpu}
start=$(date +%s)
left() { echo $((BUDGET - ($(date +%s) - start))); }
run_stages() {  # STUDY SHARE_SECONDS STAGE...
  local study=$1 share=$2; shift 2
  local until=$(( $(date +%s) + share ))
  for stage in "$@"; do
    local t=$(( until - $(date +%s) )); local l; l=$(left); [ "$l" -lt "$t" ] && t=$l
    if [ "$t" -le 10 ]; then echo "$study: share spent before $stage" >&2; return 0; fi
    # SIGINT at the share: the run directory keeps every finished measurement and resumes later
    timeout --signal=INT "$t" sharpscope reproduce "$study" --scale "$SCALE" --out "$OUT/$study" --only "$stage" \
      || { echo "$study/$stage stopped at its share (resumable)" >&2; return 0; }
  done
}
run_stages eos $((BUDGET * 3 / 10)) gd-lr0.04 gd-lr0.02 gd-lr0.01
run_stages escape $((BUDGET * 4 / 10)) random-init-s0 finetune sgd-s0
run_stages sam-flatness $((BUDGET * 3 / 10)) sgd-s0 sam-s0 asam-s0
python - "$OUT" <<'PY'
import json, sys
from pathlib import Path
import torch
out = Path(sys.argv[1])
rows = {"device": torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu", "torch": torch.__version__}
for run in sorted(p for p in out.glob("*/*") if (p / "config.json").is_file()):
    lines = (run / "metrics.jsonl").read_text().splitlines() if (run / "metrics.jsonl").is_file() else []
    last = json.loads(lines[-1]) if lines else {}
    rows[f"{run.parent.name}/{run.name}"] = {
        "finished": (run / "summary.json").is_file(), "records": len(lines),
        **{k: last.get(k) for k in ("step", "eigenvalues", "train_acc", "test_acc", "train_loss")}}
print(json.dumps(rows, indent=1))
(out / "gpu-progress.json").write_text(json.dumps(rows, indent=1) + "\n")
PY
