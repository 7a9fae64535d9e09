#!/usr/bin/env bash
# Every GPU figure of docs/benchmarks.md and docs/results/gpu/ in one call of about 9 minutes,
# from a source checkout (no install needed: the checkout is put on PYTHONPATH):
#
#   bash docs/gpu_checks.sh DATA_ROOT OUT_DIR [SECONDS]
#
#   1. the CUDA sync test (no synchronising CUDA call between logging steps);
#   2. the fast path, docs/gpu_fast_vgg16_bn.sh (VGG16-BN, bf16, data on the GPU);
#   3. cvexp-bench's small-net framework overhead, with its profile, on the GPU;
#   4. the CPU presets' recipe (quarter-width VGG16), six variants at once, 15 epochs;
#   5. the full-size BN-vs-no-BN sweep (sweep=bn_vs_nobn, 2 seeds), its epochs sized to the
#      time left, then cvexp-compare on it.
#
# SECONDS (default 560) is the budget of the whole script. OUT_DIR receives log.txt, the
# compare outputs (gpu_results.md/.csv, gpu_convergence.png), bench_gpu.json, and runs.tar.gz
# (every run folder without its checkpoints). EXTRA_OVERRIDES, appended to each training
# command, is for a local dry run, e.g. "trainer.accelerator=cpu trainer.precision=32-true
# data.on_device=false trainer.limit_train_batches=2 trainer.limit_val_batches=2
# trainer.limit_test_batches=2".
set -uo pipefail
data_root=$(realpath "$1")
out=$(realpath -m "$2")
budget=${3:-560}
extra=${EXTRA_OVERRIDES:-}
mkdir -p "$out"
exec > >(tee -a "$out/log.txt") 2>&1
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
# conf/ is the package cvexp.conf once installed; in a bare source checkout, link it there
python3 -c "import cvexp.conf" 2>/dev/null || ln -sfn ../conf cvexp/conf
left() { echo $((budget - SECONDS)); }
section() { echo; echo "=== [$SECONDS s] $*"; }

section "machine"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
python3 -c "import torch, lightning, timm, hydra, omegaconf; print('torch', torch.__version__, \
'lightning', lightning.__version__, 'timm', timm.__version__, 'hydra', hydra.__version__)"

section "1. CUDA sync test"
timeout 120 python3 -m pytest -q -p no:cacheprovider tests/test_step_syncs.py \
  tests/test_classifier_metrics.py -o addopts="" 2>&1 | tail -15

section "2. fast path"
# shellcheck disable=SC2086
EXTRA_OVERRIDES="$extra" timeout 330 bash docs/gpu_fast_vgg16_bn.sh "$data_root" 2>&1 \
  | grep -v -E "Warning|warn\(|^\s*$"

section "3. cvexp-bench figures on the GPU"
timeout 150 python3 - "$data_root" "$out/bench_gpu.json" <<'PY'
import json, sys, time
from pathlib import Path

import torch

from cvexp.benchmarks import framework_overhead
from cvexp.benchmarks.report import SETTINGS, machine

device = "cuda" if torch.cuda.is_available() else "cpu"
results = {"machine": machine(torch.device(device))}
workdir = framework_overhead.make_workdir()
start = time.time()
small = framework_overhead.measure(
    data_root=Path(sys.argv[1]), workdir=workdir, model_overrides=framework_overhead.SMALL_NET,
    options=(), device=device, breakdown=True, **SETTINGS["full"]["fit_small"],
)["framework_overhead"]
results["framework_overhead_small"] = {**small, "wall_s": round(time.time() - start, 1)}
print("small-net overhead:", {k: small[k] for k in ("ratio", "ratio_steps_only", "plain_step_ms")})
print("breakdown (ms per step):", json.dumps(small.get("breakdown_ms_per_step"), indent=1))
Path(sys.argv[2]).write_text(json.dumps(results, indent=1, default=str))
PY

section "4. the CPU presets' recipe, checked on the GPU (quarter-width VGG16, 6 runs at once)"
# which recipe gets the small presets furthest in the epochs a laptop CPU can afford
mkdir -p outputs/small_recipes
small() {
  local name=$1; shift
  # shellcheck disable=SC2086
  timeout 150 python3 -m cvexp.cli.train "$@" trainer=gpu data.on_device=true \
    trainer.max_epochs="$small_epochs" hydra.run.dir="outputs/small_recipes/$name" \
    "data.root=$data_root" trainer.enable_progress_bar=false callbacks.progress_bar=null \
    callbacks.feature_maps=null $extra >"outputs/small_recipes/$name.log" 2>&1
}
small_epochs=${SMALL_EPOCHS:-15}
pids=()
small bn_lr0.1_drop0.5 experiment=small_vgg16_bn & pids+=($!)
small bn_lr0.1_drop0 experiment=small_vgg16_bn model.net.dropout=0.0 & pids+=($!)
small bn_lr0.2_drop0 experiment=small_vgg16_bn model.net.dropout=0.0 model.optimizer.lr=0.2 &
pids+=($!)
small bn_lr0.2_drop0_ls0.1 experiment=small_vgg16_bn model.net.dropout=0.0 \
  model.optimizer.lr=0.2 model.label_smoothing=0.1 & pids+=($!)
small nobn_lr0.02_drop0 experiment=small_vgg16 model.net.dropout=0.0 & pids+=($!)
small bn_lr0.02_drop0 experiment=small_vgg16_bn_same_lr model.net.dropout=0.0 & pids+=($!)
wait "${pids[@]}"  # these jobs only: a plain wait would also wait for the log's tee
python3 - <<'PY'
import json
from pathlib import Path

for run in sorted(Path("outputs/small_recipes").iterdir()):
    if run.is_dir() and (run / "summary.json").exists():
        s = json.loads((run / "summary.json").read_text())
        print(f"{run.name:24s} {s.get('status')} epochs {s.get('epochs_run')} "
              f"best val {s.get('best_val_acc')} test {s.get('test_acc')} "
              f"train s {s.get('train_seconds')}")
PY

section "5. full-size BN vs no-BN, 2 seeds"
if (( $(left) < 150 )); then
  echo "skipped: $(left) s left"
else
# epochs from the time left: 4 jobs, about 20 s of start and test each, and an epoch at batch
# 128 taken as 2.5 times the fast path's batch-512 epoch (more, smaller steps)
per_epoch=$(python3 -c "import json; s=json.load(open('outputs/gpu_fast/summary.json')); \
print(max(s['train_seconds'] / max(s['epochs_run'] or 1, 1) * 2.5, 1.0))" 2>/dev/null || echo 10)
per_job=$(( ($(left) - 60) / 4 - 20 ))
per_job=$(( per_job < 30 ? 30 : per_job ))
epochs=$(python3 -c "print(max(3, min(40, int($per_job / $per_epoch))))")
echo "seconds left: $(left); per job: $per_job s; estimated s/epoch: $per_epoch; epochs: $epochs"
# shellcheck disable=SC2086
timeout $(( $(left) - 45 )) python3 -m cvexp.cli.train sweep=bn_vs_nobn "hydra.sweeper.params.seed='1,2'" \
  trainer=gpu data.on_device=true model.channels_last=true trainer.max_epochs="$epochs" \
  "trainer.max_time=$(printf '00:00:%02d:%02d' $((per_job / 60)) $((per_job % 60)))" \
  callbacks.feature_maps.every_n_epochs=1000 trainer.enable_progress_bar=false \
  callbacks.progress_bar=null "data.root=$data_root" hydra.sweep.dir=outputs/gpu_bn_vs_nobn \
  $extra 2>&1 | grep -v -E "Warning|warn\(|^\s*$" | tail -40
python3 -m cvexp.cli.compare outputs/gpu_bn_vs_nobn --out outputs/gpu_compare && {
  cp outputs/gpu_compare/results.md "$out/gpu_results.md"
  cp outputs/gpu_compare/results.csv "$out/gpu_results.csv"
  cp outputs/gpu_compare/convergence.png "$out/gpu_convergence.png"
}
fi

section "packing"
tar --exclude='*.ckpt' -czf "$out/runs.tar.gz" outputs
ls -la "$out"
echo "done in $SECONDS s"
