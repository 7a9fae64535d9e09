#!/usr/bin/env bash
# The CPU recipe ablation of docs/results/recipes/: experiment=small_vgg16_bn (VGG16-BN at a
# quarter of the width, 15 epochs) with one change at a time, seeds 1 and 2, every run also
# tested with the horizontal flip (tta=flip, reported as test/acc_tta beside test/acc), then
# one cvexp-compare table over all of them:
#
#   bash docs/results/recipes/reproduce.sh /path/to/cifar10 [WORK_DIR]
#
# Each change is a 2-seed sweep into WORK_DIR/<change> (default ./recipe_runs); a sweep
# folder that is already there is reused. About 8 minutes a run on 2 CPU cores with bf16, so
# about 65 minutes for all. (The committed table ran each change's two seeds side by side,
# one torch thread each, OMP_NUM_THREADS=1: the same runs, about 1.4 times the throughput.)
set -euo pipefail
data=$(realpath "$1")
work=$(realpath -m "${2:-recipe_runs}")
mkdir -p "$work"
declare -A changes=(
  [base]=""
  [label_smoothing_0.2]="model.label_smoothing=0.2"
  [batch512_lr0.4]="data.batch_size=512 model.optimizer.lr=0.4"
  [ema]="callbacks=ema"
)
for name in base label_smoothing_0.2 batch512_lr0.4 ema; do
  [[ -f $work/$name/multirun.yaml ]] && continue
  # shellcheck disable=SC2086
  cvexp-train -m experiment=small_vgg16_bn tta=flip seed=1,2 ${changes[$name]} \
    "data.root=$data" "hydra.sweep.dir=$work/$name"
done
cvexp-compare "$work"/base "$work"/label_smoothing_0.2 "$work"/batch512_lr0.4 "$work"/ema \
  --x both --out "$work/compare_$(date +%Y%m%d_%H%M%S)"
