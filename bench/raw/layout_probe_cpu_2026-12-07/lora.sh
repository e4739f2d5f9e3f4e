#!/usr/bin/env bash
# The CPU LoRA runs of RESULTS.md's layout probe: BASE=... MINUTES=... TAG=... lora.sh NAME [train_lora flags]
# (2026-12-07, two runs at once, one thread each):
#   BASE=/tmp/cpux/base  MINUTES=9  TAG=  lora.sh default  &  ... lora.sh optfirst --prompt_template $'{options}\n{question}'
#   BASE=/tmp/cpux/base2 MINUTES=18 TAG=2 lora.sh default  &  ... lora.sh optfirst --prompt_template $'{options}\n{question}'
cd /work/main
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 TOKENIZERS_PARALLELISM=false OMP_NUM_THREADS=1
name=$1; shift
.venv/bin/python train_lora.py --config bench/learning_lora.yaml --model_name_or_path $BASE --data_dir /tmp/cpux/evqa \
  --fold -1 --time_budget_minutes $MINUTES --seed 1 --dataloader_num_workers 0 --output_dir /tmp/cpux/run${TAG}_$name \
  --oversample colour=3,shape=3 --shuffle_choices true --restricted_loss true --learning_rate 1e-3 --label_smoothing_factor 0 \
  --lora_r 64 --lora_alpha 64 --per_device_train_batch_size 32 --eval_strategy no --save_strategy no --logging_steps 20 \
  --warmup_steps 20 --use_cpu true "$@" > /tmp/cpux/logs/train${TAG}_$name.log 2>&1
.venv/bin/python predict.py --data_dir /tmp/cpux/evqa --output_dir /tmp/cpux/run${TAG}_$name --score_oof false --batch_size 64 \
  --progress false > /tmp/cpux/logs/predict${TAG}_$name.log 2>&1
