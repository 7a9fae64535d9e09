#!/usr/bin/env bash
# Reproduce the CPU results of docs/results/ with the project's own commands:
#
#   bash docs/results/reproduce.sh /path/to/cifar10 [WORK_DIR]
#
# About two hours on 2 CPU cores: the BN-vs-no-BN sweep (6 runs), the ViT of the CNN-vs-ViT
# sweep (its CNN is the BN sweep's seed-1 small_vgg16_bn, the identical job), the three
# ResNet-26 variants of the conv-vs-attention sweep (about an hour of it), then cvexp-compare
# and cvexp-visualize. Runs go to WORK_DIR (default ./results_runs); a sweep folder that is
# already there is reused, not trained again. The tables and figures are then copied into
# docs/results/, over the committed ones (git shows what changed).
set -euo pipefail
data=$(realpath "$1")
work=$(realpath -m "${2:-results_runs}")
results=$(cd "$(dirname "$0")" && pwd)
bn=multirun/bn_vs_nobn
vit=multirun/cnn_vs_vit
attention=multirun/conv_vs_attention
mkdir -p "$work"
cd "$work"

if [[ ! -f $bn/multirun.yaml ]]; then
  start=$SECONDS
  cvexp-train sweep=small_bn_vs_nobn "data.root=$data" hydra.sweep.dir=$bn
  echo "small_bn_vs_nobn took $((SECONDS - start)) s"
fi
if [[ ! -f $vit/multirun.yaml ]]; then
  start=$SECONDS
  cvexp-train sweep=small_cnn_vs_vit hydra.sweeper.params.experiment=small_vit \
    "data.root=$data" hydra.sweep.dir=$vit
  echo "small_cnn_vs_vit (the ViT job) took $((SECONDS - start)) s"
fi
if [[ ! -f $attention/multirun.yaml ]]; then
  start=$SECONDS
  cvexp-train sweep=small_conv_vs_attention "data.root=$data" hydra.sweep.dir=$attention
  echo "small_conv_vs_attention took $((SECONDS - start)) s"
fi

best() { python -c "import json, sys; print(json.load(open(sys.argv[1]))['best_model_path'])" "$1/summary.json"; }
one() { compgen -G "$1" | head -n 1; }  # the one job folder a pattern names
vgg_bn=$(one "$bn/*_experiment-small_vgg16_bn+seed-1")
vgg=$(one "$bn/*_experiment-small_vgg16+seed-1")
vit_run=$(one "$vit/*_experiment-small_vit+seed-1")

stamp=$(date +%Y%m%d_%H%M%S)  # cvexp-compare writes only into new folders
cvexp-compare $bn --out "compare_bn_vs_nobn_$stamp"
# a same-budget comparison: against training time as well as epochs
cvexp-compare "$vgg_bn" "$vit_run" --x both --out "compare_cnn_vs_vit_$stamp"
cvexp-compare $attention --x both --out "compare_conv_vs_attention_$stamp"
for name in bn_vs_nobn cnn_vs_vit conv_vs_attention; do
  mkdir -p "$results/$name"
  cp "compare_${name}_$stamp"/{convergence.png,results.md,results.csv} "$results/$name/"
done
for name in cnn_vs_vit conv_vs_attention; do
  cp "compare_${name}_$stamp/convergence_time.png" "$results/$name/"
done

mkdir -p "$results/feature_maps"
for pair in "vgg16_bn:$vgg_bn" "vgg16:$vgg"; do
  name=${pair%%:*} run=${pair#*:}
  cvexp-visualize "ckpt_path=$(best "$run")" "data.root=$data" test_index=7000 \
    "hydra.run.dir=viz_$stamp/$name"
  cp "viz_$stamp/$name/filters/layer00.png" "$results/feature_maps/${name}_filters_layer00.png"
  cp "viz_$stamp/$name/overview.png" "$results/feature_maps/${name}_overview.png"
done
for index in 7000 8021 9003; do
  cvexp-visualize "ckpt_path=$(best "$vit_run")" "data.root=$data" "test_index=$index" \
    "hydra.run.dir=viz_$stamp/vit_$index"
  cp "viz_$stamp/vit_$index/attention/rollout.png" "$results/cnn_vs_vit/attention_test$index.png"
done
cp "viz_$stamp/vit_7000/vit_pipeline.png" "$results/cnn_vs_vit/vit_pipeline.png"
echo "updated $results; the runs are in $work"
