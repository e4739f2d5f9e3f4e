#!/usr/bin/env bash
# BASE=... MINUTES=... THREADS=... lora.sh NAME [train_lora flags]
# RESULTS.md, "Call 36": call 36's seed-2 base (fetched as base_seed2.tgz) on this 2-core machine, one run at a time:
#   BASE=/tmp/bases/seed2 MINUTES=9 lora.sh s2_9min
#   BASE=/tmp/bases/seed2 MINUTES=9 lora.sh s2_lr3e-3_b16 --learning_rate 3e-3 --per_device_train_batch_size 16 --lr_scheduler_type constant_with_warmup
# (data: data/prepare_easy_vqa.py --out /tmp/cpu3/evqa --n_train 0 --n_test 2000, the rows of the GPU runs)
cd /work/main
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 TOKENIZERS_PARALLELISM=false OMP_NUM_THREADS=${THREADS:-2}
name=$1; shift
.venv/bin/python train_lora.py --config bench/learning_lora.yaml --model_name_or_path $BASE --data_dir /tmp/cpu3/evqa \
  --fold -1 --time_budget_minutes $MINUTES --seed 1 --dataloader_num_workers 0 --output_dir /tmp/cpu3/run_$name \
  --oversample colour=3,shape=3 --shuffle_choices true --restricted_loss true --learning_rate 1e-3 --label_smoothing_factor 0 \
  --lora_r 64 --lora_alpha 64 --per_device_train_batch_size 32 --eval_strategy no --save_strategy no --logging_steps 10 \
  --warmup_steps 20 --use_cpu true --prompt_template $'{options}\n{question}' "$@" > /tmp/cpu3/logs/train_$name.log 2>&1
.venv/bin/python predict.py --data_dir /tmp/cpu3/evqa --output_dir /tmp/cpu3/run_$name --score_oof false --batch_size 64 \
  --progress false > /tmp/cpu3/logs/predict_$name.log 2>&1
