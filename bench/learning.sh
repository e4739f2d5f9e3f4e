#!/usr/bin/env bash
# The learning proof, one command on one GPU (H100/H200):  bash bench/learning.sh [MINUTES]
# A tiny random-init Qwen2.5-VL (hidden 256, 4 layers; vision 128 x 4) is fully fine-tuned on the whole
# easy-VQA train set (38,575 questions; --fold -1), folds 1 and 2 of 5 are trained beside it on the same GPU
# for the fold ensemble, a blank-image twin of the all-rows run measures what the text alone allows, predict.py scores 2,000 held-out
# easy-VQA test questions with and without TTA, ensemble.py blends the folds, and
# bench/learning_report.py writes $OUT/learning.json (copy it to bench/learning.json).
set -u
source bench/gpu_env.sh
MIN=${1:-6}
PIXELS=${PIXELS:-50176}   # 64 px images upscaled to 224x224: 64 image tokens, each 14 px patch ~4 source pixels
LR=${LR:-3e-4}
export OMP_NUM_THREADS=3
python3 data/prepare_easy_vqa.py --out /tmp/evqa --n_train 0 --n_test 2000 || exit 1
python3 tools/make_tiny_model.py --arch qwen2_5_vl --out /tmp/m256 --hidden_size 256 --num_layers 4 \
    --vision_hidden_size 128 --vision_depth 4 --max_pixels $PIXELS --min_pixels $PIXELS || exit 1
train() { out=$1; fold=$2; shift 2; python3 train_lora.py --config bench/learning.yaml --data_dir /tmp/evqa \
    --model_name_or_path /tmp/m256 --learning_rate $LR --min_pixels $PIXELS --max_pixels $PIXELS --fold $fold \
    --time_budget_minutes $MIN \
    --output_dir $out "$@" > $OUT/train_$(basename $out)_$fold.log 2>&1; }
if [ -n "${PROBE:-}" ]; then  # single-process throughput, nothing else on the GPU: samples/s = steps*64/runtime
  python3 train_lora.py --config bench/learning.yaml --data_dir /tmp/evqa --model_name_or_path /tmp/m256 \
    --min_pixels $PIXELS --max_pixels $PIXELS --fold -1 --max_steps 300 --output_dir /tmp/runs/probe \
    --max_train_samples 20000 > $OUT/probe.log 2>&1; grep -o "'train_runtime': '[0-9.]*'" $OUT/probe.log
fi
(sleep 100; bash bench/qlora_smoke.sh /tmp/m256 /tmp/evqa) &
start=$(date +%s)
train /tmp/runs/tiny -1 & train /tmp/runs/tiny 1 & train /tmp/runs/tiny 2 & train /tmp/runs/blank -1 --blank_images &
[ -n "${COMPARE:-}" ] && train /tmp/runs/compare -1 --min_pixels 12544 --max_pixels 12544 &
wait
echo "training wall time: $(( $(date +%s) - start )) s"
predict() { python3 predict.py --data_dir /tmp/evqa --score_oof false --batch_size 256 --progress false "$@"; }
predict --output_dir /tmp/runs/tiny --folds full && cp /tmp/runs/tiny/full/test_probs.csv /tmp/full_plain.csv
predict --output_dir /tmp/runs/blank
[ -n "${COMPARE:-}" ] && predict --output_dir /tmp/runs/compare
predict --output_dir /tmp/runs/tiny --tta
python3 ensemble.py --output_dir /tmp/runs/tiny --data_dir /tmp/evqa --submission /tmp/runs/tiny/submission.csv
python3 bench/learning_report.py --data_dir /tmp/evqa --runs /tmp/runs --plain /tmp/full_plain.csv --out $OUT/learning.json
wait
for f in $OUT/train_*.log; do echo "== $f"; grep -E "eval acc|^fold|rror" $f | tail -3; done
