#!/usr/bin/env bash
# Two-GPU data parallel: the same training (tiny Qwen2.5-VL, full fine-tune, batch 64 per GPU, 300 steps)
# with one process and with two (accelerate launch --multi_gpu); samples/s = steps * 64 * processes / runtime.
#   bash bench/ddp_scaling.sh       (on nvidia-h200-x2; writes $OUT/ddp.json)
set -u
source bench/gpu_env.sh
export OMP_NUM_THREADS=4 NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1
[ -f /tmp/evqa/train.csv ] || python3 data/prepare_easy_vqa.py --out /tmp/evqa --n_train 24000 --n_test 200 >/dev/null || exit 1
python3 tools/make_tiny_model.py --arch qwen2_5_vl --out /tmp/m256 --hidden_size 256 --num_layers 4 \
    --vision_hidden_size 128 --vision_depth 4 >/dev/null 2>&1 || exit 1
args="--config bench/learning.yaml --data_dir /tmp/evqa --model_name_or_path /tmp/m256 --fold 1 --n_folds 5 \
  --max_steps 300 --eval_strategy no --save_strategy no --learning_rate 3e-4 --max_pixels 12544 --min_pixels 12544"
[ -f /tmp/runs/one/fold1/metrics.json ] || CUDA_VISIBLE_DEVICES=0 python3 train_lora.py $args --output_dir /tmp/runs/one > $OUT/ddp_one.log 2>&1
[ -f /tmp/runs/two/fold1/metrics.json ] || accelerate launch --multi_gpu --num_processes 2 --num_machines 1 --mixed_precision no --dynamo_backend no \
  train_lora.py $args --output_dir /tmp/runs/two > $OUT/ddp_two.log 2>&1
python3 - <<'PY'
import json, os, pandas as pd
out = {}
for name, n in (("one", 1), ("two", 2)):
    m = json.load(open(f"/tmp/runs/{name}/fold1/metrics.json"))
    st = json.load(open(f"/tmp/runs/{name}/fold1/trainer_state.json"))
    oof = pd.read_csv(f"/tmp/runs/{name}/fold1/oof.csv")
    folds = pd.read_csv(f"/tmp/runs/{name}/folds.csv")
    out[name] = {"processes": n, "steps": st["global_step"], "runtime_s": m["train_runtime"],
                 "samples_per_s": st["global_step"] * 64 * n / m["train_runtime"],
                 "oof_rows": len(oof), "oof_ids_unique": bool(oof.id.is_unique),
                 "oof_ids_equal_fold": set(oof.id) == set(folds[folds.fold == 1].id), "oof_accuracy": m.get("oof_accuracy")}
out["ddp_2gpu_scaling"] = out["two"]["samples_per_s"] / out["one"]["samples_per_s"]
import torch; out["device"] = torch.cuda.get_device_name(0) + f" x{torch.cuda.device_count()}"
json.dump(out, open(os.environ["OUT"] + "/ddp.json", "w"), indent=2); print(json.dumps(out, indent=2))
PY
grep -E "rror|Trace" $OUT/ddp_*.log | head -5
