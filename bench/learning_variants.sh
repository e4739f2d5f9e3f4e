#!/usr/bin/env bash
# Issue 17, the search before the seeds (one GPU, every run sharing it): which base shape and which LoRA settings
# teach the multiple-choice format fastest. Bases from bench/pretrain_tiny.py (PRE minutes, seed 1), then LoRA
# variants of train_lora.py (LORA minutes each, bench/learning_lora.yaml + the flags named), scored on 2,000
# held-out test questions. Writes $OUT/variants.json (accuracy by type per variant) and the logs.
#   PRE=2.5 LORA=4 bash bench/learning_variants.sh             call 21's set: head counts, depth, rates, losses
#   SET=tied PRE=2.5 LORA=4 bash bench/learning_variants.sh    tied input/output embeddings, LoRA rank 64
#   SET=fullrate bash bench/learning_variants.sh               LoRA with the full fine-tune's loss and rate
#                                                              (restricted, lr 1e-3, no smoothing); the base kept in OUT
#   SET=bigbase PRE=6 bash bench/learning_variants.sh          the learning proof's shape as a base (hidden 256, vision
#                                                              128 x 4) at two pretraining rates, then fullrate's LoRA
set -u
PRE=${PRE:-2.5} LORA=${LORA:-4} W=${WORK:-/tmp/variants} SET=${SET:-call21}
case $SET in call21|tied|fullrate|bigbase) ;; *) echo "error: SET=$SET: expected call21, tied, fullrate or bigbase"; exit 2 ;; esac
source bench/gpu_env.sh
export OMP_NUM_THREADS=1
mkdir -p $W/bases $W/runs "$OUT"
python3 data/prepare_easy_vqa.py --out $W/evqa --n_train 0 --n_test 2000 >/dev/null || exit 1
base() { name=$1; shift; python3 bench/pretrain_tiny.py --data_dir $W/evqa --out $W/bases/$name --device cuda \
    --minutes $PRE --batch_size 256 --workers 3 --seed 1 --log_every 200 "$@" > $OUT/pretrain_$name.log 2>&1; }
if [ $SET = tied ]; then
  # Tied embeddings (as Qwen2.5-VL-3B): copying a letter from its option line lands on that letter's output row.
  base h4t --heads 4 --tie_embeddings &
  base h4 --heads 4 &
elif [ $SET = fullrate ]; then
  base h4 --heads 4 &
elif [ $SET = bigbase ]; then
  BIG="--heads 4 --hidden_size 256 --vision_hidden_size 128 --vision_depth 4"
  base b256 $BIG &
  base b256_lr1e-3 $BIG --learning_rate 1e-3 &
else
  base h2 --heads 2 &   # make_tiny_model's own 2 query heads (1 key/value head would need GQA: 2 = 2 kv heads here)
  base h4 --heads 4 &
  base h4l6 --heads 4 --num_layers 6 &
fi
wait
OS="--oversample colour=3,shape=3 --shuffle_choices true"
FR="--restricted_loss true --learning_rate 1e-3 --label_smoothing_factor 0"  # the full fine-tune's loss and rate
lora() { name=$1 b=$2; shift 2; python3 train_lora.py --config bench/learning_lora.yaml --model_name_or_path $W/bases/$b \
    --data_dir $W/evqa --fold -1 --time_budget_minutes $LORA --seed 1 --dataloader_num_workers 1 \
    --output_dir $W/runs/$name "$@" > $OUT/train_$name.log 2>&1 && python3 predict.py --data_dir $W/evqa \
    --output_dir $W/runs/$name --score_oof false --batch_size 256 --progress false > $OUT/predict_$name.log 2>&1; }
if [ $SET = tied ]; then
  lora h4t_default h4t $OS &
  lora h4t_r64 h4t $OS --lora_r 64 --lora_alpha 128 &
  lora h4_r64 h4 $OS --lora_r 64 --lora_alpha 128 &
  lora h4t_restricted h4t $OS --learning_rate 5e-3 --restricted_loss true &
elif [ $SET = fullrate ]; then
  lora h4_restricted_1e-3 h4 $OS $FR &
  lora h4_restricted_1e-3_r64 h4 $OS $FR --lora_r 64 --lora_alpha 64 &
  # the base comes back with the logs, for bench/letter_margin.py on the CPU
  cp -r $W/bases "$OUT/" &
elif [ $SET = bigbase ]; then
  lora b256_r64 b256 $OS $FR --lora_r 64 --lora_alpha 64 &
  lora b256_lr1e-3_r64 b256_lr1e-3 $OS $FR --lora_r 64 --lora_alpha 64 &
  cp -r $W/bases "$OUT/" &
else
  lora h2_lr2e-3 h2 $OS &
  lora h2_lr5e-3 h2 $OS --learning_rate 5e-3 &
  lora h4_lr2e-3 h4 $OS &
  lora h4_lr5e-3 h4 $OS --learning_rate 5e-3 &
  lora h4l6_lr5e-3 h4l6 $OS --learning_rate 5e-3 &
  lora h4_restricted h4 $OS --learning_rate 5e-3 --restricted_loss true &
  lora h4_full h4 $OS --full_finetune true --restricted_loss true --learning_rate 1e-3 --label_smoothing_factor 0 &
fi
wait
python3 - "$W" "$OUT" <<'PY'
import json, sys
from pathlib import Path
import pandas as pd
w, out = Path(sys.argv[1]), Path(sys.argv[2])
ans = pd.read_csv(w / "evqa/test_answers.csv", dtype=str).set_index("id")["answer"]
typ = pd.read_csv(w / "evqa/test.csv", dtype=str).set_index("id").loc[ans.index, "type"]
res = {}
for run in sorted((w / "runs").iterdir()):
    f = run / "full/test_probs.csv"
    if not f.is_file():
        res[run.name] = None
        continue
    p = pd.read_csv(f, dtype={"id": str}).set_index("id").loc[ans.index]
    hit = pd.Series(p[list("abcd")].to_numpy().argmax(1), index=ans.index).map(dict(enumerate("abcd"))) == ans
    state = json.loads((run / "full/trainer_state.json").read_text())
    evals = [(h["step"], round(h["eval_accuracy"], 3)) for h in state["log_history"] if "eval_accuracy" in h]
    res[run.name] = {"accuracy": hit.mean(), "by_type": hit.groupby(typ).mean().round(3).to_dict(),
                     "steps": state["global_step"], "evals": evals}
for b in sorted((w / "bases").iterdir()):
    p = json.loads((b / "pretraining.json").read_text())
    res["base_" + b.name] = {k: p[k] for k in ("open_ended_test_accuracy", "open_ended_test_accuracy_by_type", "steps")}
(out / "variants.json").write_text(json.dumps(res, indent=1))
print(json.dumps(res, indent=1))
PY
