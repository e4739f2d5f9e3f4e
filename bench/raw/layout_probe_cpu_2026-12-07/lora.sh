#!/usr/bin/env bash
# The CPU LoRA runs of RESULTS.md's layout probe: BASE=... MINUTES=... TAG=... lora.sh NAME [train_lora flags]
# (2026-12-07, two runs at once, one thread each):
#   BASE=/tmp/cpux/base  MINUTES=9  TAG=  lora.sh default  &  ... lora.sh optfirst --prompt_template $'{options}\n{question}'
#   BASE=/tmp/cpux/base2 MINUTES=18 TAG=2 lora.sh default  &  ... lora.sh optfirst --prompt_template $'{options}\n{question}'
# and of "Item 3 on the CPU with a 0.999 base" (bench/raw/cpu_lora_gpu_base_2026-12-07/output.txt), one run at a time
# on call 36's seed-2 base (base_seed2.tgz) and data/prepare_easy_vqa.py --out /tmp/cpu3/evqa --n_train 0 --n_test 2000:
#   W=/tmp/cpu3 THREADS=2 BASE=/tmp/bases/seed2 MINUTES=9 lora.sh s2_9min --prompt_template $'{options}\n{question}' --logging_steps 10
#   ... lora.sh s2_lr3e-3_b16 --prompt_template $'{options}\n{question}' --logging_steps 10 --learning_rate 3e-3 \
#       --per_device_train_batch_size 16 --lr_scheduler_type constant_with_warmup
cd /work/main
W=${W:-/tmp/cpux}
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 TOKENIZERS_PARALLELISM=false OMP_NUM_THREADS=${THREADS:-1}
name=$1; shift
mkdir -p $W/logs
.venv/bin/python train_lora.py --config bench/learning_lora.yaml --model_name_or_path $BASE --data_dir $W/evqa \
  --fold -1 --time_budget_minutes $MINUTES --seed 1 --dataloader_num_workers 0 --output_dir $W/run${TAG:-}_$name \
  --oversample colour=3,shape=3 --shuffle_choices true --restricted_loss true --learning_rate 1e-3 --label_smoothing_factor 0 \
  --lora_r 64 --lora_alpha 64 --per_device_train_batch_size 32 --eval_strategy no --save_strategy no --logging_steps 20 \
  --warmup_steps 20 --use_cpu true "$@" > $W/logs/train${TAG:-}_$name.log 2>&1
.venv/bin/python predict.py --data_dir $W/evqa --output_dir $W/run${TAG:-}_$name --score_oof false --batch_size 64 \
  --progress false > $W/logs/predict${TAG:-}_$name.log 2>&1
