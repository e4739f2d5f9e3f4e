#!/usr/bin/env bash
# Model/optimiser sweep for the learning proof: several tiny random-init Qwen2.5-VL runs share one GPU,
# each for a fixed time budget on fold 1 of the full easy-VQA train set; per-type eval accuracy is logged.
#   bash bench/learning_sweep.sh MINUTES        (on a GPU machine; logs to $OUT/sweep_*.log)
# Runs: "name:model:extra flags;..." in $RUNS; models m256 (hidden 256 x 4, vision 128 x 4), m384 (384 x 6,
# vision 192 x 4), m256v (hidden 256 x 4, vision 256 x 4), m256d (hidden 256 x 6, vision 128 x 4).
# WORKERS: DataLoader workers per run (default 3).
set -u
source bench/gpu_env.sh
MIN=${1:-6}
RUNS=${RUNS:-"A:m256:--per_device_train_batch_size 256 --learning_rate 1e-3;B:m256:--per_device_train_batch_size 512 --learning_rate 2e-3;C:m384:--per_device_train_batch_size 256 --learning_rate 1e-3;D:m256v:--per_device_train_batch_size 256 --learning_rate 1e-3"}
export OMP_NUM_THREADS=2
python3 data/prepare_easy_vqa.py --out /tmp/evqa --n_train 0 --n_test 2000 >/dev/null || exit 1
mk() { python3 tools/make_tiny_model.py --arch qwen2_5_vl --out /tmp/$1 --hidden_size $2 --num_layers $3 --vision_hidden_size $4 --vision_depth $5 >/dev/null 2>&1; }
mk m256 256 4 128 4 & mk m384 384 6 192 4 & mk m256v 256 4 256 4 & mk m256d 256 6 128 4 & wait
common="--config bench/learning.yaml --data_dir /tmp/evqa --fold 1 --time_budget_minutes $MIN --oversample colour=3,shape=3 --adam_beta2 0.95 --dataloader_num_workers ${WORKERS:-3} --eval_steps 150 --save_steps 150 --logging_steps 50"
run() { name=$1; model=$2; shift 2; python3 train_lora.py $common --model_name_or_path /tmp/$model --output_dir /tmp/runs/$name "$@" > $OUT/sweep_$name.log 2>&1; }
IFS=';' read -ra rs <<< "$RUNS"
for r in "${rs[@]}"; do IFS=':' read -r name model flags <<< "$r"; run $name $model $flags & done
wait
for f in $OUT/sweep_*.log; do echo "== $f"; grep -E "eval acc|^fold|Error|error" $f | tail -30; grep -o "'eval_accuracy_[a-z/_]*': '[0-9.]*'" $f | tail -3 | tr '\n' ' '; grep -o "'train_samples_per_second': '[0-9.]*'" $f; echo; done
