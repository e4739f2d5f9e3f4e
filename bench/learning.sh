#!/usr/bin/env bash
# The learning proof, one command on one GPU (H100/H200):  bash bench/learning.sh [MINUTES]
# Recorded (bench/learning_issue3_seed42.json, 0.9725 after 15 minutes): the same settings as today's learning.yaml in the call
#   MAIN="--dataloader_num_workers 5" VARIANTS="lr2e-3:--dataloader_num_workers 5 --learning_rate 2e-3" bash bench/learning.sh 15
# (its blank twin was re-run alone with --max_steps of the main run: bench/RESULTS.md has the command).
# A tiny random-init Qwen2.5-VL (hidden 256, 4 layers; vision tower 128 wide, 4 blocks; 5.3M parameters) is fully
# fine-tuned on the whole easy-VQA train set (38,575 questions; --fold -1) for MINUTES of training, with the learning
# rate following the clock (cosine over the time budget). Runs share the GPU: `main` (the recorded run), its
# blank-image twin (every image grey: what the text alone allows; BLANK=0 leaves it out), and the variants in $VARIANTS
# ("name:extra flags;name:extra flags"). predict.py scores 2,000 held-out easy-VQA test questions for every run and
# bench/learning_report.py writes $OUT/learning.json (issue 3's record: bench/learning_issue3_seed42.json).
set -u
source bench/gpu_env.sh
MIN=${1:-8}
MAIN=${MAIN:-}
VARIANTS=${VARIANTS:-}
export OMP_NUM_THREADS=2
python3 data/prepare_easy_vqa.py --out /tmp/evqa --n_train 0 --n_test 2000 >/dev/null || exit 1
python3 tools/make_tiny_model.py --arch qwen2_5_vl --out /tmp/m256 --hidden_size 256 --num_layers 4 \
    --vision_hidden_size 128 --vision_depth 4 >/dev/null 2>&1 || exit 1
train() { name=$1; shift; python3 train_lora.py --config bench/learning.yaml --data_dir /tmp/evqa \
    --model_name_or_path /tmp/m256 --fold -1 --time_budget_minutes $MIN --output_dir /tmp/runs/$name "$@" \
    > $OUT/train_$name.log 2>&1; }
start=$(date +%s)
train main $MAIN &
[ "${BLANK:-1}" = 1 ] && train blank $MAIN --blank_images &
IFS=';' read -ra vs <<< "$VARIANTS"
for v in "${vs[@]}"; do [ -n "$v" ] && train "${v%%:*}" ${v#*:} & done
wait
echo "training wall time: $(( $(date +%s) - start )) s"
for run in /tmp/runs/*; do
  python3 predict.py --data_dir /tmp/evqa --output_dir $run --score_oof false --batch_size 256 --progress false \
    > $OUT/predict_$(basename $run).log 2>&1 &
done
wait
python3 bench/learning_report.py --data_dir /tmp/evqa --runs /tmp/runs --main main --blank blank \
    --command "bash bench/learning.sh $MIN" --out $OUT/learning.json
for f in $OUT/train_*.log; do echo "== $f"; grep -E "^full|rror" $f | tail -2; done
