#!/usr/bin/env bash
# The GPU fast path in one short run (measured on one H200: see docs/benchmarks.md): VGG16-BN
# with bf16, channels_last and the dataset on the device, then the per-epoch curve.
#
#   bash docs/gpu_fast_vgg16_bn.sh [DATA_ROOT]      # DATA_ROOT holds CIFAR-10 in any format
#
# DATA_ROOT defaults to .device/data/ (an ignored folder: put a CIFAR-10 copy there on a
# remote GPU machine). Results go to outputs/gpu_fast/. EXTRA_OVERRIDES is appended to the
# training command; PYTHON names the interpreter (default python3).
set -euo pipefail
data_root=${1:-.device/data}
python=${PYTHON:-python3}
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader || true
# shellcheck disable=SC2086
$python -m cvexp.cli.train experiment=vgg16_bn_gpu_fast "data.root=$data_root" \
  hydra.run.dir=outputs/gpu_fast trainer.enable_progress_bar=false callbacks.progress_bar=null \
  ${EXTRA_OVERRIDES:-}
$python - <<'PY'
import json
from pathlib import Path

from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

run = Path("outputs/gpu_fast")
summary = json.loads((run / "summary.json").read_text())
events = EventAccumulator(str(run / "tensorboard"))
events.Reload()
curve = [(e.step, round(e.value, 4)) for e in events.Scalars("val/acc")]
epochs = summary["epochs_run"] or 1
print(json.dumps({k: summary.get(k) for k in ("status", "best_val_acc", "test_acc", "epochs_run", "train_seconds", "device")}))
print(f"seconds per epoch: {summary['train_seconds'] / epochs:.2f}; "
      f"train images per second: {45000 * epochs / summary['train_seconds']:.0f}")
print("val/acc per epoch (step, acc):", curve)
PY
