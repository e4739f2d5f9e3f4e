#!/usr/bin/env bash
# Rescore finished demo runs with other TTA settings, without retraining (run from the repository root):
#   bash bench/raw/cpu_demo_seeds_2026-12-07_night/rescore_tta.sh RUN_ROOT...   (e.g. runs/demo_s3 runs/demo_s4)
# Each run's fold folder is copied to /tmp first (predict.py rewrites test_probs.csv), then scored three ways:
# the demo's four cyclic option orders, plus a mirrored image (--tta_flip), and averaged in log space.
set -eu
here=$(dirname "$0")
for run in "$@"; do
  name=$(basename "$run"); work=/tmp/rescore_tta/$name
  rm -rf "$work"; mkdir -p "$work"; cp -r "$run"/easy_vqa_base/fold1 "$work"/fold1
  for v in "demo:" "flip:--tta_flip true" "logprob:--tta_space logprob"; do
    tag=${v%%:*}
    HF_HUB_OFFLINE=1 OMP_NUM_THREADS=2 .venv/bin/python predict.py --data_dir data/easy_vqa --output_dir "$work" \
      --tta --tta_scales 1.0 --batch_size 256 --progress false --score_oof false ${v#*:} > "$work/$tag.log" 2>&1
    cp "$work"/fold1/test_probs.csv "$work/$tag.csv"
  done
  .venv/bin/python "$here"/summarise.py "$work"/demo.csv "$work"/flip.csv "$work"/logprob.csv
done
