#!/usr/bin/env bash
# The escape study's gpu scale, as far as a time budget allows, on one CUDA device.
#
#   scripts/gpu-escape.sh [OUT] [BUDGET_SECONDS] [SCALE]     (defaults: runs/escape-gpu 540 gpu)
#
# The gpu scale is Ahn et al.'s setting up to the network: 16 000 CIFAR-10 training images (all that
# ../shared/data holds; the paper uses 50 000), 2 000 test images, a GroupNorm ResNet-18 (width 64),
# the confusion set of 10 copies, SGD at lr 0.1 and batch 128. Building the bad minimizer (pre-training
# on 160 000 random-label images to 99.99%) takes far longer than one budget: the stages run in the
# order below, each under what is left of the budget, and a stopped stage resumes on the next call
# with the same OUT. SCALE=smoke runs the same path in seconds on a CPU.
set -euo pipefail
OUT=${1:-runs/escape-gpu}
BUDGET=${2:-540}
SCALE=${3:-gpu}
start=$(date +%s)
left() { echo $((BUDGET - ($(date +%s) - start))); }
python -c "import torch, sys; print('torch', torch.__version__, '|', torch.cuda.get_device_name(0) if torch.cuda.is_available() else 'cpu', file=sys.stderr)"
for stage in random-init-s0 finetune sgd-s0; do
  t=$(left)
  if [ "$t" -le 10 ]; then echo "budget spent before $stage" >&2; break; fi
  # SIGINT after the budget: the run directory keeps every finished measurement and resumes later
  timeout --signal=INT "$t" sharpscope reproduce escape --scale "$SCALE" --out "$OUT" --only "$stage" \
    || { echo "$stage stopped at the budget (resumable)" >&2; break; }
done
# what finished, for the record (no training here: reads the run directories)
python - "$OUT" <<'PY'
import json, sys
from pathlib import Path
out = Path(sys.argv[1])
rows = {}
for run in sorted(p for p in out.iterdir() if (p / "config.json").is_file()):
    summary = run / "summary.json"
    metrics = (run / "metrics.jsonl").read_text().splitlines() if (run / "metrics.jsonl").is_file() else []
    last = json.loads(metrics[-1]) if metrics else {}
    rows[run.name] = {"finished": summary.is_file(), "measurements": len(metrics),
                      **{k: last.get(k) for k in ("step", "train_acc", "test_acc", "train_loss")}}
print(json.dumps(rows, indent=1))
(out / "gpu-progress.json").write_text(json.dumps(rows, indent=1) + "\n")
PY
