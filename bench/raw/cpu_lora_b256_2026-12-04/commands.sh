# 2026-12-04, this 2-core CPU machine: LoRA (call 27 recipe) on call 27 b256_lr1e-3 base (fetched from the device to /tmp/r27), 8-minute budget, batch 32
set -x
cd /work/main
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 TOKENIZERS_PARALLELISM=false
.venv/bin/python data/prepare_easy_vqa.py --out /tmp/cpu17/data --n_train 6000 --n_test 1000 --seed 0
date
.venv/bin/python train_lora.py --config bench/learning_lora.yaml --model_name_or_path /tmp/r27/b256_lr1e-3 --data_dir /tmp/cpu17/data \
  --fold -1 --time_budget_minutes 8 --seed 1 --dataloader_num_workers 0 --output_dir /tmp/cpu17/run \
  --oversample colour=3,shape=3 --shuffle_choices true --restricted_loss true --learning_rate 1e-3 --label_smoothing_factor 0 \
  --lora_r 64 --lora_alpha 64 --per_device_train_batch_size 32 --eval_strategy no --save_strategy no --logging_steps 20 --warmup_steps 20
date
.venv/bin/python predict.py --data_dir /tmp/cpu17/data --output_dir /tmp/cpu17/run --score_oof false --batch_size 64 --progress false
date
