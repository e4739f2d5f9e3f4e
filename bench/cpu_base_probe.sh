#!/usr/bin/env bash
# Issue 17 item 3 on the GPU: which small pretrained base learns the letter format from LoRA within the rows a
# 2-core CPU trains in ~7 minutes (~150-350k rows at 56x56 with no system turn, by the shape; measured here on
# the CPU). Bases are pretrained PRE (8) minutes each, side by side; each then gets LoRA (configs/cpu_lora_demo.yaml,
# batch 64 as on the CPU) for STEPS steps with a fold-1 evaluation every 500 steps (32k rows), at two rates.
#   setsid nohup bash bench/cpu_base_probe.sh > /dev/null 2>&1 < /dev/null &     # progress in /tmp/p3/master.log
set -u
cd "$(dirname "$0")/.."
R=/tmp/p3
mkdir -p $R/logs
exec >> $R/master.log 2>&1
source bench/gpu_env.sh || { echo "installing the carried wheels failed"; exit 1; }
PRE=${PRE:-8}
STEPS=${STEPS:-4000}
echo "start $(date -u +%H:%M:%S) PRE=$PRE STEPS=$STEPS"
[ -f $R/evqa/train.csv ] || python data/prepare_easy_vqa.py --out $R/evqa --n_train 0 --n_test 2000 --seed 0 > $R/logs/prepare.log 2>&1
BASES=${BASES:-h64l2t h64l2 h64l3t h64l2t112 h128l2t}
declare -A SHAPE=(
  [h64l2t]="--hidden_size 64 --num_layers 2 --heads 2 --text_loss_weight 1"
  [h64l2]="--hidden_size 64 --num_layers 2 --heads 2"
  [h64l3t]="--hidden_size 64 --num_layers 3 --heads 2 --text_loss_weight 1"
  [h64l2t112]="--hidden_size 64 --num_layers 2 --heads 2 --text_loss_weight 1 --pixels 12544"
  [h128l2t]="--hidden_size 128 --num_layers 2 --heads 4 --text_loss_weight 1"
)
pixels() { case $1 in *112) echo 12544 ;; *) echo 3136 ;; esac; }
for b in $BASES; do
  python bench/pretrain_tiny.py --data_dir $R/evqa --out $R/bases/$b --device cuda --minutes $PRE --batch_size 128 \
    --workers 2 --seed 1 --tf32 --pixels 3136 --vision_hidden_size 64 --vision_depth 2 --system_prompt false \
    --learning_rate 1e-3 ${SHAPE[$b]} > $R/logs/pretrain_$b.log 2>&1 &
done
wait
echo "pretrained $(date -u +%H:%M:%S)"
for b in $BASES; do
  for lr in $([ $b = h64l2t ] && echo 1e-3 3e-3 || echo 1e-3); do
    python train_lora.py --config configs/cpu_lora_demo.yaml --model_name_or_path $R/bases/$b --data_dir $R/evqa \
      --output_dir $R/runs/${b}_$lr --fold 1 --learning_rate $lr --max_steps $STEPS \
      --min_pixels $(pixels $b) --max_pixels $(pixels $b) --time_budget_minutes 60 \
      --eval_strategy steps --eval_steps 500 --dataloader_num_workers 1 > $R/logs/lora_${b}_$lr.log 2>&1 \
      && python predict.py --data_dir $R/evqa --output_dir $R/runs/${b}_$lr --score_oof false --batch_size 256 \
        --progress false > $R/logs/predict_${b}_$lr.log 2>&1 &
  done
done
wait
echo "trained $(date -u +%H:%M:%S)"
python - $R <<'PY'
import glob, sys, pandas as pd
R = sys.argv[1]
df = pd.read_csv(f"{R}/evqa/test.csv").merge(pd.read_csv(f"{R}/evqa/test_answers.csv"), on="id")
for f in sorted(glob.glob(f"{R}/runs/*/*/test_probs.csv")):
    d = df.merge(pd.read_csv(f).rename(columns=dict(a="pa", b="pb", c="pc", d="pd")), on="id")
    ok = d[["pa", "pb", "pc", "pd"]].idxmax(axis=1).str[1] == d.answer
    print(f, round(ok.mean(), 4), ok.groupby(d.type).mean().round(3).to_dict())
PY
touch $R/DONE
