#!/usr/bin/env bash
# train_lora.py with 4-bit QLoRA in fp16 (the T4 path) and in bf16, a few steps each on the GPU:
#   bash bench/qlora_smoke.sh MODEL_DIR DATA_DIR      (logs to $OUT/qlora_*.log)
set -u
for p in fp16 bf16; do
  python3 train_lora.py --model_name_or_path $1 --data_dir $2 --output_dir /tmp/runs/qlora_$p --fold 1 \
    --quantization 4bit --precision $p --max_steps 30 --max_train_samples 2000 --max_eval_samples 200 \
    --per_device_train_batch_size 8 --eval_strategy steps --eval_steps 15 --save_strategy steps --save_steps 15 --logging_steps 5 \
    --learning_rate 2e-4 --disable_tqdm true --early_stopping_patience 0 > $OUT/qlora_$p.log 2>&1 &
done
wait
for p in fp16 bf16; do echo "== qlora $p"; grep -E "trainable|'loss'|eval acc|^fold|rror" $OUT/qlora_$p.log | tail -5; done
