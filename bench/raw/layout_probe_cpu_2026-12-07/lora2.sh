#!/usr/bin/env bash
# name, extra flags...
cd /work/main
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 TOKENIZERS_PARALLELISM=false OMP_NUM_THREADS=1
name=$1; shift
.venv/bin/python train_lora.py --config bench/learning_lora.yaml --model_name_or_path /tmp/cpux/base2 --data_dir /tmp/cpux/evqa \
  --fold -1 --time_budget_minutes 18 --seed 1 --dataloader_num_workers 0 --output_dir /tmp/cpux/run2_$name \
  --oversample colour=3,shape=3 --shuffle_choices true --restricted_loss true --learning_rate 1e-3 --label_smoothing_factor 0 \
  --lora_r 64 --lora_alpha 64 --per_device_train_batch_size 32 --eval_strategy no --save_strategy no --logging_steps 20 \
  --warmup_steps 20 --use_cpu true "$@" > /tmp/cpux/logs/train2_$name.log 2>&1
.venv/bin/python predict.py --data_dir /tmp/cpux/evqa --output_dir /tmp/cpux/run2_$name --score_oof false --batch_size 64 \
  --progress false > /tmp/cpux/logs/predict2_$name.log 2>&1
echo done > /tmp/cpux/logs/done2_$name
