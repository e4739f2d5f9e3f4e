#!/usr/bin/env bash
# Where bench/pretrain_tiny.py's time goes when bases share one GPU (issue 17's learning_seeds.sh runs six):
# each PHASE (name:processes:flags) runs that many identical 50-second pretrainings at once, one phase after
# another; the steps each process made are printed and written to $OUT/probe_steps.txt.
#   bash bench/probe_steps.sh          (on the GPU machine) default phases: load_model's vision fast paths
#       (batched attention + index cache) on, then off, six processes each; then on with --tf32; then one alone
#   bash bench/probe_steps.sh "fp32x6:6:" "tf32x6:6:--tf32" "fp32x1:1:"      call 31's TF32 probe (before the
#       index cache existed; written then as probe_tf32.txt)
set -u
source bench/gpu_env.sh || exit 1
W=/tmp/probe; mkdir -p $W
python3 data/prepare_easy_vqa.py --out $W/evqa --n_train 0 --n_test 200 > /dev/null || exit 1
F="--data_dir $W/evqa --device cuda --minutes 0.83 --batch_size 256 --workers 3 --eval_rows 64 --heads 4 --hidden_size 256 --vision_hidden_size 128 --vision_depth 4 --learning_rate 1e-3"
phase() {  # name:count:extra-flags
  IFS=: read -r name count extra <<< "$1"
  for i in $(seq 1 $count); do python3 bench/pretrain_tiny.py $F --seed $i --out $W/${name}_$i $extra > $W/${name}_$i.log 2>&1 & done; wait
  for i in $(seq 1 $count); do echo "$name process $i: $(grep -o 'wrote.*' $W/${name}_$i.log || tail -1 $W/${name}_$i.log)"; done
}
[ $# = 0 ] && set -- "fastx6:6:" "slowx6:6:--batched_vision_attention false" "fast_tf32x6:6:--tf32" "fastx1:1:"
{ nvidia-smi --query-gpu=name --format=csv,noheader
  for p in "$@"; do phase "$p"; done; } | tee $OUT/probe_steps.txt
