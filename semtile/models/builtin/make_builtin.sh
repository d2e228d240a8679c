#!/usr/bin/env bash
# Re-create the built-in model shipped in semtile/models/builtin/ with semtile's own commands.
# Usage, from the repository root with semtile installed:
#   bash semtile/models/builtin/make_builtin.sh [WORKDIR [OUTDIR]]
# OUTDIR defaults to this folder (the shipped model).
# About 45 minutes on a 2-core CPU. Training is seeded; float reductions depend on
# the thread count, so weights match the shipped ones closely, not bit for bit.
set -euo pipefail
work=${1:-build/builtin-train}
out=${2:-$(dirname "$0")}
mkdir -p "$out"
semtile synth "$work" --per-label 20 --labels 16 --size 480x640 --truth sqrt --seed 1
# Segmenter of the paper's shape (c=32, d=4, n=2, N=1). The synthetic surfaces come
# with their true masks, so it is trained supervised on them (--masks).
semtile --log-json train segmenter "$work" --masks "$work/masks" --c 32 --d 4 --n 2 --N 1 \
  --crop 128 --batch-size 8 --epochs 24 --steps-per-epoch 50 --lr 2e-3 --seed 0 --threads 1 \
  --out "$out/segmenter.pt" 2> "$work/segmenter.log"
# Small classifier on whole 256-pixel tiles (the inference tile size).
semtile --log-json train classifier "$work" --c 16 --d 4 --n 2 --N 1 \
  --crop 256 --batch-size 8 --epochs 48 --steps-per-epoch 50 --lr 2e-3 --seed 0 --threads 2 \
  --out "$out/classifier.pt" 2> "$work/classifier.log"
