#!/usr/bin/env bash
# Two-GPU data parallel: the same training with one process and with two (accelerate launch --multi_gpu);
# samples/s = steps * batch * processes / train_runtime.   (on nvidia-h200-x2; writes $OUT/ddp_<model>.json)
#   bash bench/ddp_scaling.sh                      tiny Qwen2.5-VL, full fine-tune, batch 64 per GPU, 300 steps
#   MODEL=qwen2.5-vl-3b bash bench/ddp_scaling.sh  3B-shaped random model saved as a model folder (the path a user's
#                                                  checkpoint takes), LoRA r16, bf16, 448 px, checkpointing, batch 8
set -u
source bench/gpu_env.sh
export OMP_NUM_THREADS=4 NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1
MODEL=${MODEL:-tiny}
if [ "$MODEL" = tiny ]; then
  BATCH=64; DATA=/tmp/evqa
  [ -f $DATA/train.csv ] || python3 data/prepare_easy_vqa.py --out $DATA --n_train 24000 --n_test 200 >/dev/null || exit 1
  python3 tools/make_tiny_model.py --arch qwen2_5_vl --out /tmp/m256 --hidden_size 256 --num_layers 4 \
      --vision_hidden_size 128 --vision_depth 4 >/dev/null 2>&1 || exit 1
  args="--config bench/learning.yaml --data_dir $DATA --model_name_or_path /tmp/m256 --max_steps 300 \
    --learning_rate 3e-4 --max_pixels 12544 --min_pixels 12544"
else
  BATCH=8; DATA=/tmp/evqa_small; STEPS=${STEPS:-60}
  [ -f $DATA/train.csv ] || python3 data/prepare_easy_vqa.py --out $DATA --n_train 2000 --n_test 200 >/dev/null || exit 1
  [ -f /tmp/big_$MODEL/config.json ] || python3 bench/benchmark.py --model $MODEL --save_model /tmp/big_$MODEL || exit 1
  args="--data_dir $DATA --model_name_or_path /tmp/big_$MODEL --max_steps $STEPS --per_device_train_batch_size $BATCH \
    --per_device_eval_batch_size 32 --learning_rate 1e-4 --lora_r 16 --lora_alpha 32 --min_pixels 200704 \
    --max_pixels 200704 --gradient_checkpointing true --precision bf16 --logging_steps 10 --report_to none"
fi
args="$args --fold 1 --n_folds 5 --eval_strategy no --save_strategy no"
R=/tmp/runs_ddp_$MODEL
[ -f $R/one/fold1/metrics.json ] || CUDA_VISIBLE_DEVICES=0 python3 train_lora.py $args --output_dir $R/one > $OUT/ddp_${MODEL}_one.log 2>&1
[ -f $R/two/fold1/metrics.json ] || accelerate launch --multi_gpu --num_processes 2 --num_machines 1 --mixed_precision no --dynamo_backend no \
  train_lora.py $args --output_dir $R/two > $OUT/ddp_${MODEL}_two.log 2>&1
R=$R BATCH=$BATCH MODEL=$MODEL python3 - <<'PY'
import json, os, pandas as pd
R, batch, model = os.environ["R"], int(os.environ["BATCH"]), os.environ["MODEL"]
out = {"model": model, "per_device_batch": batch}
for name, n in (("one", 1), ("two", 2)):
    m = json.load(open(f"{R}/{name}/fold1/metrics.json"))
    st = json.load(open(f"{R}/{name}/fold1/trainer_state.json"))
    oof = pd.read_csv(f"{R}/{name}/fold1/oof.csv")
    folds = pd.read_csv(f"{R}/{name}/folds.csv")
    out[name] = {"processes": n, "steps": st["global_step"], "runtime_s": m["train_runtime"],
                 "samples_per_s": st["global_step"] * batch * n / m["train_runtime"],
                 "oof_rows": len(oof), "oof_ids_unique": bool(oof.id.is_unique),
                 "oof_ids_equal_fold": set(oof.id) == set(folds[folds.fold == 1].id), "oof_accuracy": m.get("oof_accuracy")}
out["ddp_2gpu_scaling"] = out["two"]["samples_per_s"] / out["one"]["samples_per_s"]
import torch; out["device"] = torch.cuda.get_device_name(0) + f" x{torch.cuda.device_count()}"
json.dump(out, open(os.environ["OUT"] + f"/ddp_{model}.json", "w"), indent=2); print(json.dumps(out, indent=2))
PY
grep -E "rror|Trace" $OUT/ddp_${MODEL}_*.log | head -5
