#!/usr/bin/env bash
# predict.py on two GPUs: each rank scores a shard, rank 0 writes one file that must equal the one-GPU file.
#   bash bench/predict_shards.sh      (on nvidia-h200-x2; writes $OUT/predict_shards.json)
set -u
source bench/gpu_env.sh
export OMP_NUM_THREADS=4 NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1
python3 data/prepare_easy_vqa.py --out /tmp/ps --n_train 2000 --n_test 1000 >/dev/null || exit 1
python3 tools/make_tiny_model.py --arch qwen2_5_vl --out /tmp/ps_model --hidden_size 256 --num_layers 4 \
    --vision_hidden_size 128 --vision_depth 4 >/dev/null 2>&1 || exit 1
CUDA_VISIBLE_DEVICES=0 python3 train_lora.py --config bench/learning.yaml --data_dir /tmp/ps --model_name_or_path /tmp/ps_model \
    --fold 1 --max_steps 150 --eval_strategy no --save_strategy no --learning_rate 5e-4 --output_dir /tmp/ps_run \
    > $OUT/ps_train.log 2>&1 || { tail -20 $OUT/ps_train.log; exit 1; }
flags="--output_dir /tmp/ps_run --data_dir /tmp/ps --folds 1 --tta --score_oof true --progress false --batch_size 128"
start=$(date +%s.%N)
CUDA_VISIBLE_DEVICES=0 python3 predict.py $flags > $OUT/ps_one.log 2>&1 || { tail -20 $OUT/ps_one.log; exit 1; }
mid=$(date +%s.%N)
mkdir -p /tmp/ps_one && cp /tmp/ps_run/fold1/test_probs.csv /tmp/ps_run/fold1/oof_tta.csv /tmp/ps_one/
rm /tmp/ps_run/fold1/test_probs.csv /tmp/ps_run/fold1/oof_tta.csv
accelerate launch --multi_gpu --num_processes 2 --num_machines 1 --mixed_precision no --dynamo_backend no \
    predict.py $flags > $OUT/ps_two.log 2>&1 || { tail -20 $OUT/ps_two.log; exit 1; }
end=$(date +%s.%N)
START=$start MID=$mid END=$end python3 - <<'PY'
import json, os, pandas as pd, torch
out = {"device": torch.cuda.get_device_name(0) + f" x{torch.cuda.device_count()}",
       "one_gpu_s": float(os.environ["MID"]) - float(os.environ["START"]),
       "two_gpu_s": float(os.environ["END"]) - float(os.environ["MID"])}
for name in ("test_probs.csv", "oof_tta.csv"):
    one = pd.read_csv(f"/tmp/ps_one/{name}", dtype={"id": str})
    two = pd.read_csv(f"/tmp/ps_run/fold1/{name}", dtype={"id": str})
    out[name] = {"rows": len(one), "same_ids_same_order": list(one["id"]) == list(two["id"]),
                 "max_abs_diff": float((one[list("abcd")] - two[list("abcd")]).abs().max().max())}
json.dump(out, open(os.environ["OUT"] + "/predict_shards.json", "w"), indent=2); print(json.dumps(out, indent=2))
PY
