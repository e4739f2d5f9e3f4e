#!/usr/bin/env bash
# Two machines, proven on one host: each "machine" is its own `accelerate launch` with --num_machines 2,
# --machine_rank 0|1 and the same --main_process_ip/--main_process_port, one GPU each (CUDA_VISIBLE_DEVICES).
# Every variant runs twice, as one node with two processes and as two nodes with one process each, then the
# check: every fold-1 row of folds.csv in oof.csv exactly once, the same rows from both layouts, the model and
# run record saved, two processes really trained (samples seen = steps x batch x 2). Writes $OUT/multinode.json.
#   bash bench/multinode.sh                 the 2-GPU machine: ddp_lora (multi_gpu_bf16.yaml) and fsdp_full
#                                           (fsdp_full_finetune.yaml: best-checkpoint reload under FSDP2)
#   DEVICE=cpu OUT=bench/raw/multinode_cpu bash bench/multinode.sh
#                                           a CPU host over gloo: ddp_lora and ddp_full (accelerate runs FSDP
#                                           only on GPUs); `accelerate launch --cpu` starts one process whatever
#                                           --num_processes says, so this uses --multi_gpu with ACCELERATE_USE_CPU
set -u
DEVICE=${DEVICE:-gpu}
PY=${PYTHON:-python3}
if [ "$DEVICE" = gpu ]; then
  source bench/gpu_env.sh
  export OMP_NUM_THREADS=4 NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1
else
  export OMP_NUM_THREADS=1 HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false ACCELERATE_USE_CPU=true
fi
OUT=${OUT:-/tmp/out}
W=${WORK:-/tmp/multinode}
PORT=${PORT:-29571}
mkdir -p "$OUT" "$W"
MODEL=$W/tiny_qwen2_5_vl DATA=$W/data
[ -f $DATA/train.csv ] || $PY data/prepare_easy_vqa.py --out $DATA --n_train 120 --n_test 24 --seed 0 >/dev/null || exit 1
[ -f $MODEL/config.json ] || $PY tools/make_tiny_model.py --arch qwen2_5_vl --out $MODEL >/dev/null 2>&1 || exit 1
# Eight steps, an evaluation and a checkpoint every four, the best one reloaded at the end.
args="--model_name_or_path $MODEL --data_dir $DATA --fold 1 --n_folds 2 --per_device_train_batch_size 4
  --per_device_eval_batch_size 16 --max_steps 8 --eval_strategy steps --eval_steps 4 --save_strategy steps
  --save_steps 4 --load_best_model_at_end true --learning_rate 1e-3 --min_pixels 3136 --max_pixels 3136
  --gradient_checkpointing false --report_to none --disable_tqdm true --logging_steps 50 --seed 0"

if [ "$DEVICE" = gpu ]; then
  VARIANTS="ddp_lora fsdp_full"
else
  VARIANTS="ddp_lora ddp_full"
  args="$args --use_cpu true"
fi
launcher() {  # the accelerate launch flags of a variant (before the per-layout ones)
  case $1 in
    ddp_lora) [ "$DEVICE" = gpu ] && echo "--config_file accelerate_configs/multi_gpu_bf16.yaml" \
                                  || echo "--multi_gpu --mixed_precision no --dynamo_backend no" ;;
    ddp_full) echo "--multi_gpu --mixed_precision no --dynamo_backend no" ;;
    fsdp_full) echo "--config_file accelerate_configs/fsdp_full_finetune.yaml" ;;
  esac
}
extra() { case $1 in *_full) echo "--full_finetune" ;; *) echo "" ;; esac; }

for v in $VARIANTS; do
  rm -rf $W/$v
  start=$(date +%s)
  accelerate launch $(launcher $v) --num_machines 1 --num_processes 2 --main_process_port $PORT \
    train_lora.py $args $(extra $v) --output_dir $W/$v/one > $OUT/${v}_one_node.log 2>&1
  echo "$v one node: rc=$? $(( $(date +%s) - start ))s"
  PORT=$((PORT + 1)); start=$(date +%s)
  for r in 0 1; do
    # One GPU per machine, which cannot see the other's (no peer-to-peer copies, as between two hosts; NCCL
    # goes through host memory); on a CPU host both "machines" share the cores.
    visible=$([ "$DEVICE" = gpu ] && echo "CUDA_VISIBLE_DEVICES=$r NCCL_P2P_DISABLE=1" || echo "ACCELERATE_USE_CPU=true")
    env $visible accelerate launch $(launcher $v) --num_machines 2 --num_processes 2 --machine_rank $r \
      --main_process_ip 127.0.0.1 --main_process_port $PORT \
      train_lora.py $args $(extra $v) --output_dir $W/$v/two > $OUT/${v}_two_nodes_rank$r.log 2>&1 &
  done
  wait
  echo "$v two nodes: $(( $(date +%s) - start ))s"
  PORT=$((PORT + 1))
done

W=$W OUT=$OUT VARIANTS="$VARIANTS" DEVICE=$DEVICE $PY - <<'PY'
import json, os, sys
from pathlib import Path

import pandas as pd

sys.path.insert(0, str(Path.cwd() / "bench"))
from fold_check import fold_checks

W, out = Path(os.environ["W"]), {"device": os.environ["DEVICE"], "variants": {}}
if out["device"] == "gpu":
    import torch
    out["device"] = f"{torch.cuda.get_device_name(0)} x{torch.cuda.device_count()}"
for v in os.environ["VARIANTS"].split():
    row = {layout: fold_checks(W / v / layout) for layout in ("one", "two")}
    one, two = row["one"], row["two"]
    ok = one["complete"] and two["complete"]
    row["same_ids"] = ok and set(pd.read_csv(W / v / "one/fold1/oof.csv", dtype={"id": str})["id"]) == \
        set(pd.read_csv(W / v / "two/fold1/oof.csv", dtype={"id": str})["id"])
    if ok:
        a = pd.read_csv(W / v / "one/fold1/oof.csv", dtype={"id": str}).set_index("id")[list("abcd")]
        b = pd.read_csv(W / v / "two/fold1/oof.csv", dtype={"id": str}).set_index("id")[list("abcd")].reindex(a.index)
        row["max_prob_diff"] = float((a - b).abs().max().max())  # information: all-reduce order may differ
    row["ok"] = bool(ok and row["same_ids"] and all(
        row[x]["oof_ids_once"] and row[x]["weights_recorded"] is True and row[x]["processes"] == 2 for x in ("one", "two")))
    out["variants"][v] = row
out["multinode_ok"] = all(r["ok"] for r in out["variants"].values())
text = json.dumps(out, indent=2, default=str)
(Path(os.environ.get("OUT", "/tmp/out")) / "multinode.json").write_text(text + "\n")
print(text)
PY
grep -hE "Error|Traceback" $OUT/*_one_node.log $OUT/*_two_nodes_rank*.log | sort | uniq -c | head -5
