#!/usr/bin/env bash
# Where bench/pretrain_tiny.py's time goes when six bases share one GPU (issue 17's learning_seeds.sh): the same
# 50-second pretraining with six processes in fp32, six with --tf32, and one alone in fp32. Steps per process tell
# whether the shared GPU's fp32 matmuls (TF32 off by default in torch) or the processes' overhead set the pace.
#   bash bench/probe_tf32.sh        (on the GPU machine; writes $OUT/probe_tf32.txt)
set -u
source bench/gpu_env.sh || exit 1
W=/tmp/probe; mkdir -p $W
python3 data/prepare_easy_vqa.py --out $W/evqa --n_train 0 --n_test 200 > /dev/null || exit 1
F="--data_dir $W/evqa --device cuda --minutes 0.83 --batch_size 256 --workers 3 --eval_rows 64 --heads 4 --hidden_size 256 --vision_hidden_size 128 --vision_depth 4 --learning_rate 1e-3"
phase() {  # name count extra-flags
  for i in $(seq 1 $2); do python3 bench/pretrain_tiny.py $F --seed $i --out $W/$1_$i $3 > $W/$1_$i.log 2>&1 & done; wait
  for i in $(seq 1 $2); do echo "$1 process $i: $(grep -o 'wrote.*' $W/$1_$i.log)"; done
}
{ nvidia-smi --query-gpu=name --format=csv,noheader
  phase fp32x6 6 ""; phase tf32x6 6 "--tf32"; phase fp32x1 1 ""; } | tee $OUT/probe_tf32.txt
