#!/usr/bin/env bash
# Every GPU figure of docs/benchmarks.md and docs/results/gpu/ in one call of about 9 minutes,
# from a source checkout (no install needed: the checkout is put on PYTHONPATH):
#
#   bash docs/gpu_checks.sh DATA_ROOT OUT_DIR [SECONDS]
#
#   1. the CUDA sync test (no synchronising CUDA call between logging steps);
#   2. the fast path, docs/gpu_fast_vgg16_bn.sh: experiment=vgg16_bn_gpu_fast, the fast trainers'
#      recipe (batch 512, peak lr 0.4, no dropout, label smoothing 0.2, torch.compile, flip
#      TTA reported as test/acc_tta beside test/acc); goal 93% within 2 minutes of training;
#   3. the small-net framework overhead (ours / a plain eager loop), with its profile: eager,
#      then with the step's kernels replayed as CUDA graphs (model.compile=true
#      model.compile_mode=reduce-overhead); goal 0.9 or better;
#   4. the default full-size recipes once, side by side on the card: cvexp-train (VGG16-BN),
#      model=vgg16 and experiment=vit_cifar, their epochs sized to the time left (the same
#      recipe otherwise), then cvexp-compare on them;
#   5. with time left, the conv vs self-attention sweep at full width (sweep=conv_vs_attention,
#      one seed, epochs sized to the time left).
#
# SECONDS (default 560) is the budget of the whole script. OUT_DIR receives log.txt, the
# compare outputs (gpu_results.md/.csv, gpu_convergence.png, and attention_* for step 5),
# bench_gpu.json, and runs.tar.gz (every run folder without its checkpoints). EXTRA_OVERRIDES, appended to each training
# command, is for a local dry run, e.g. "trainer.accelerator=cpu trainer.precision=32-true
# data.on_device=false trainer.limit_train_batches=2 trainer.limit_val_batches=2
# trainer.limit_test_batches=2 model.compile=false"; COMPILE_OVERRIDES replaces step 3's
# "model.compile=true model.compile_mode=reduce-overhead" (a dry run on a CPU: "").
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

section "3. small-net framework overhead on the GPU: eager, then CUDA graphs"
timeout 240 python3 - "$data_root" "$out/bench_gpu.json" \
  "${COMPILE_OVERRIDES-model.compile=true model.compile_mode=reduce-overhead}" <<'PY'
import json, sys, time
from pathlib import Path

import torch

from cvexp.benchmarks import framework_overhead
from cvexp.benchmarks.report import SETTINGS, machine

device = "cuda" if torch.cuda.is_available() else "cpu"
results = {"machine": machine(torch.device(device))}
graphs = tuple(sys.argv[3].split())
for name, extra in (("framework_overhead_small", ()), ("framework_overhead_small_graphs", graphs)):
    workdir = framework_overhead.make_workdir()
    start = time.time()
    small = framework_overhead.measure(
        data_root=Path(sys.argv[1]), workdir=workdir,
        model_overrides=(*framework_overhead.SMALL_NET, *extra), options=(), device=device,
        breakdown=True, **SETTINGS["full"]["fit_small"],
    )["framework_overhead"]
    results[name] = {**small, "overrides": list(extra), "wall_s": round(time.time() - start, 1)}
    print(name, extra, {k: small[k] for k in ("ratio", "ratio_steps_only", "plain_step_ms")})
    print("breakdown (ms per step):", json.dumps(small.get("breakdown_ms_per_step"), indent=1))
Path(sys.argv[2]).write_text(json.dumps(results, indent=1, default=str))
PY

# seconds per epoch of a batch-128 recipe, from the fast path's batch-512 epochs (more,
# smaller steps: 2.5 times as long), times the jobs sharing the card
per_epoch() {
  python3 -c "import json; s=json.load(open('outputs/gpu_fast/summary.json')); \
print(max(s['train_seconds'] / max(s['epochs_run'] or 1, 1) * 2.5 * $1, 1.0))" 2>/dev/null \
    || echo $((10 * $1))
}
hms() { printf '00:00:%02d:%02d' $(($1 / 60)) $(($1 % 60)); }
compare() {  # compare RUNS_DIR NAME: cvexp-compare, its table and figure into OUT_DIR
  python3 -m cvexp.cli.compare "$1" --out "outputs/$2_compare" && {
    cp "outputs/$2_compare/results.md" "$out/$2_results.md"
    cp "outputs/$2_compare/results.csv" "$out/$2_results.csv"
    cp "outputs/$2_compare/convergence.png" "$out/$2_convergence.png"
  }
}

section "4. the default full-size recipes, epochs sized to the time left"
if (( $(left) < 150 )); then
  echo "skipped: $(left) s left"
else
  seconds=$(( $(left) - 120 ))  # per job (they run at once), leaving time for 5's check
  (( seconds > 240 )) && seconds=240
  epoch_s=$(per_epoch 3)
  epochs=$(python3 -c "print(max(3, min(60, int(($seconds - 30) / $epoch_s))))")
  echo "seconds per job: $seconds; estimated s/epoch: $epoch_s; epochs: $epochs"
  mkdir -p outputs/gpu_defaults
  pids=()
  for recipe in model=vgg16_bn model=vgg16 experiment=vit_cifar; do
    # shellcheck disable=SC2086
    timeout $((seconds + 60)) python3 -m cvexp.cli.train "$recipe" trainer=gpu \
      data.on_device=true trainer.max_epochs="$epochs" "trainer.max_time=$(hms "$seconds")" \
      callbacks.feature_maps.every_n_epochs=1000 trainer.enable_progress_bar=false \
      callbacks.progress_bar=null "data.root=$data_root" tta=flip \
      "hydra.run.dir=outputs/gpu_defaults/${recipe#*=}" $extra \
      >"outputs/gpu_defaults/${recipe#*=}.log" 2>&1 &
    pids+=($!)
  done
  wait "${pids[@]}"  # these jobs only: a plain wait would also wait for the log's tee
  tail -n 3 outputs/gpu_defaults/*.log
  compare outputs/gpu_defaults gpu
fi

section "5. conv vs self-attention at full width, one seed"
if (( $(left) < 200 )); then
  echo "skipped: $(left) s left (it needs about 200 s for even 3 epochs)"
else
  seconds=$(( ($(left) - 60) / 3 ))
  # shellcheck disable=SC2086
  timeout $(( $(left) - 30 )) python3 -m cvexp.cli.train sweep=conv_vs_attention \
    "hydra.sweeper.params.seed=1" trainer=gpu data.on_device=true trainer.max_epochs=10 \
    "trainer.max_time=$(hms "$seconds")" callbacks.feature_maps.every_n_epochs=1000 \
    trainer.enable_progress_bar=false callbacks.progress_bar=null "data.root=$data_root" \
    hydra.sweep.dir=outputs/gpu_conv_vs_attention $extra 2>&1 \
    | grep -v -E "Warning|warn\(|^\s*$" | tail -20
  compare outputs/gpu_conv_vs_attention attention
fi

section "packing"
tar --exclude='*.ckpt' -czf "$out/runs.tar.gz" outputs
ls -la "$out"
echo "done in $SECONDS s"
