#!/usr/bin/env bash
# Model/optimiser sweep for the learning proof: several tiny random-init Qwen2.5-VL runs share one GPU,
# each for a fixed time budget on fold 1 of the full easy-VQA train set; per-type eval accuracy is logged.
#   bash bench/learning_sweep.sh MINUTES        (on a GPU machine; logs to $OUT/sweep_*.log)
set -u
source bench/gpu_env.sh
MIN=${1:-6}
python3 data/prepare_easy_vqa.py --out /tmp/evqa --n_train 0 --n_test 2000 || exit 1
mk() { python3 tools/make_tiny_model.py --arch qwen2_5_vl --out /tmp/$1 --hidden_size $2 --num_layers $3 --vision_hidden_size $4 --vision_depth $5 >/dev/null 2>&1; }
mk m256 256 4 128 4 & mk m384 384 6 192 4 & wait
common="--config bench/learning.yaml --data_dir /tmp/evqa --fold 1 --time_budget_minutes $MIN"
run() { name=$1; shift; python3 train_lora.py $common --output_dir /tmp/runs/$name "$@" > $OUT/sweep_$name.log 2>&1; }
run A --model_name_or_path /tmp/m256 --learning_rate 1e-3 &
run B --model_name_or_path /tmp/m256 --learning_rate 3e-4 &
run C --model_name_or_path /tmp/m384 --min_pixels 50176 --max_pixels 50176 --learning_rate 5e-4 &
run D --model_name_or_path /tmp/m256 --learning_rate 1e-3 --blank_images &
wait
for f in $OUT/sweep_*.log; do echo "== $f"; grep -E "epoch .* eval acc|^fold|Error|error" $f | tail -4; grep -o "'eval_accuracy_[a-z_]*': '[0-9.]*'" $f | tail -3 | tr '\n' ' '; grep -o "'train_samples_per_second': '[0-9.]*'" $f; echo; done
