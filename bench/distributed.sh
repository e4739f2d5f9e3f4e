#!/usr/bin/env bash
# Issue 15's record: distributed training that survives its own end, on the 2-GPU machine, unattended, writing
# $OUT/distributed.json (and every sub-run's log under $OUT/logs/).
#   per family (qwen2_vl qwen2_5_vl qwen3_vl, and the MoE qwen3_vl_moe): a full fine-tune under FSDP2
#     (accelerate_configs/fsdp_full_finetune.yaml as shipped, 2 processes) of a tiny model, 8 steps, an evaluation
#     and a checkpoint every 4, load_best_model_at_end -> fsdp_ok, best_reload_ok (the saved model is the best
#     checkpoint's, not the last one's); then the run is cut back to checkpoint-4 (as if it died there) and
#     --resume continues it to step 8 -> resume_ok; oof_rows (every fold-1 row of folds.csv exactly once);
#     predict.py scores the saved model.safetensors (test rows and, with --score_oof, the held-out rows).
#   multinode_ok: bench/multinode.sh (two `accelerate launch` "machines" of one GPU each), its multinode.json.
#   device_map_ok: the tiny qwen3_vl_moe in ONE process over both GPUs (--device_map auto --max_memory
#     0=...,1=...): LoRA training, then predict.py; hf_device_map shows both GPUs and the probabilities equal
#     those of the whole model on one GPU (fp32: <= 1e-4; bf16 recorded).
# Every sub-run is timed out and recorded (false, with its log tail) on failure; the script never stops early.
# The families, multinode.sh and the device-map runs share the two GPUs at once (tiny models): ~3 minutes.
#   bash bench/distributed.sh                        # nvidia-h200-x2; OUT defaults to /tmp/out
#   DEVICE=cpu OUT=/tmp/dist_cpu bash bench/distributed.sh
#       a CPU host: DDP over gloo instead of FSDP (accelerate runs FSDP only on GPUs), one family
#       (FAMILIES=... for more), no multinode.sh (MULTINODE=1 to run it), device_map on the CPU only.
set -u
export DEVICE=${DEVICE:-gpu}
PY=${PYTHON:-python3}
if [ "$DEVICE" = gpu ]; then
  source bench/gpu_env.sh
  export OMP_NUM_THREADS=4 NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1
  FAMILIES=${FAMILIES:-"qwen2_vl qwen2_5_vl qwen3_vl qwen3_vl_moe"}
  MULTINODE=${MULTINODE:-1}
else
  export OMP_NUM_THREADS=1 HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false PYTHONUNBUFFERED=1 PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}
  FAMILIES=${FAMILIES:-"qwen2_5_vl"}
  MULTINODE=${MULTINODE:-0}
fi
OUT=${OUT:-/tmp/out}
W=${WORK:-/tmp/distributed}
LIMIT=${LIMIT:-150}  # seconds per sub-run (a tiny run takes well under one minute)
started=$(date +%s)
rm -rf "$W" "$OUT/logs" "$OUT/parts"
mkdir -p "$OUT/logs" "$OUT/parts" "$W"
L=$OUT/logs

if [ "$MULTINODE" = 1 ]; then
  # Started first: it installs the carried wheels again (gpu_env.sh), which must be over before other Pythons
  # import from them; its first log appears after that and its own data/model preparation.
  ( OUT=$OUT/multinode WORK=$W/multinode PORT=29571 DEVICE=$DEVICE timeout 420 bash bench/multinode.sh \
      > $L/multinode.log 2>&1; echo "multinode.sh rc=$?" >> $L/multinode.log ) &
  for _ in $(seq 120); do [ -f $OUT/multinode/ddp_lora_one_node.log ] && break; sleep 1; done
fi

DATA=$W/data
$PY data/prepare_easy_vqa.py --out $DATA --n_train 120 --n_test 24 --seed 0 > $L/data.log 2>&1 || echo "data preparation failed" >&2

# A learning rate so small that the evaluations at steps 4 and 8 tie: the best checkpoint is the first of equals
# (checkpoint-4), not the last, so the best reload really runs; the weights still move (fp32 masters), so the
# reloaded model is told apart from the last one.
ARGS="--data_dir $DATA --fold 1 --n_folds 2 --per_device_train_batch_size 4 --per_device_eval_batch_size 16
  --max_steps 8 --eval_strategy steps --eval_steps 4 --save_strategy steps --save_steps 4
  --load_best_model_at_end true --early_stopping_patience 0 --learning_rate 1e-8 --lr_scheduler_type constant
  --max_eval_samples 8 --min_pixels 3136 --max_pixels 3136 --report_to none --disable_tqdm true
  --logging_steps 50 --seed 0 --full_finetune"
if [ "$DEVICE" = gpu ]; then
  LAUNCH="--config_file accelerate_configs/fsdp_full_finetune.yaml --num_processes 2"
  VISIBLE=""
else
  # accelerate runs FSDP only on GPUs and `--cpu` starts one process: two CPU processes need --multi_gpu.
  LAUNCH="--multi_gpu --num_processes 2 --mixed_precision no --dynamo_backend no"
  VISIBLE="ACCELERATE_USE_CPU=true"
  ARGS="$ARGS --use_cpu true --gradient_checkpointing false"
fi
echo "$LAUNCH" > $W/launch.txt; echo "$ARGS" > $W/args.txt

family() {  # $1 family, $2 port: train, check, cut back, resume, check, predict, check
  local f=$1 port=$2 model=$W/models/$1 run=$W/runs/$1
  timeout $LIMIT $PY tools/make_tiny_model.py --arch $f --out $model > $L/$f.make.log 2>&1
  env $VISIBLE timeout $LIMIT accelerate launch $LAUNCH --main_process_port $port train_lora.py \
    --model_name_or_path $model $ARGS --output_dir $run > $L/$f.train.log 2>&1
  echo $? > $W/$f.train.rc
  $PY $W/check.py train $f $run $L/$f.train.log $(cat $W/$f.train.rc) > $OUT/parts/$f.train.json 2> $L/$f.check.log
  # As if the run had died after its first checkpoint: the later checkpoint and the fold's outputs go.
  rm -rf $run/fold1/checkpoints/checkpoint-8
  rm -f $run/fold1/model.safetensors $run/fold1/oof.csv $run/fold1/metrics.json $run/fold1/trainer_state.json \
    $run/fold1/artefacts.json
  env $VISIBLE timeout $LIMIT accelerate launch $LAUNCH --main_process_port $((port + 1)) train_lora.py \
    --model_name_or_path $model $ARGS --output_dir $run --resume > $L/$f.resume.log 2>&1
  echo $? > $W/$f.resume.rc
  env $([ "$DEVICE" = gpu ] && echo CUDA_VISIBLE_DEVICES=0) timeout $LIMIT $PY predict.py --output_dir $run \
    --data_dir $DATA --folds 1 --score_oof --progress false > $L/$f.predict.log 2>&1
  echo $? > $W/$f.predict.rc
  $PY $W/check.py resume $f $run $L/$f.resume.log $(cat $W/$f.resume.rc) $L/$f.predict.log $(cat $W/$f.predict.rc) \
    > $OUT/parts/$f.resume.json 2>> $L/$f.check.log
}

device_map() {  # the tiny MoE in one process over both GPUs (on a CPU host: the CPU), against the whole model
  local model=$W/models/moe_placed run=$W/runs/moe_placed mm
  timeout $LIMIT $PY tools/make_tiny_model.py --arch qwen3_vl_moe --out $model --hidden_size 256 --num_layers 4 \
    > $L/device_map.make.log 2>&1
  if [ "$DEVICE" = gpu ]; then
    mm="0=1GiB,1=1GiB"  # no cpu: every layer on a GPU; transformers' auto balances the layers over both
    ALL="CUDA_VISIBLE_DEVICES=0,1" ONE="CUDA_VISIBLE_DEVICES=0"
  else
    mm="cpu=2GiB" ALL="ACCELERATE_USE_CPU=true" ONE="ACCELERATE_USE_CPU=true"
  fi
  echo "$mm" > $W/max_memory.txt
  env $ALL timeout $LIMIT $PY train_lora.py --model_name_or_path $model --data_dir $DATA --output_dir $run --fold 1 \
    --n_folds 2 --max_steps 4 --per_device_train_batch_size 4 --eval_strategy no --save_strategy no \
    --load_best_model_at_end false --min_pixels 3136 --max_pixels 3136 --report_to none --disable_tqdm true \
    --device_map auto --max_memory $mm > $L/device_map.train.log 2>&1
  echo $? > $W/device_map.train.rc
  for v in one_fp32 split_fp32 one_bf16 split_bf16; do
    [ "$DEVICE" = cpu ] && [ "${v#*_}" = bf16 ] && continue
    cp -r $run $W/runs/moe_$v 2>/dev/null
    flags="--precision ${v#*_}"
    case $v in split_*) flags="$flags --device_map auto --max_memory $mm"; visible=$ALL ;; *) visible=$ONE ;; esac
    ( env $visible timeout $LIMIT $PY predict.py --output_dir $W/runs/moe_$v --data_dir $DATA --folds 1 \
        --progress false $flags > $L/device_map.$v.log 2>&1; echo $? > $W/device_map.$v.rc ) &
  done
  wait
  $PY $W/check.py device_map $W/runs $L > $OUT/parts/device_map.json 2> $L/device_map.check.log
  # Information for the 30B-A3B arithmetic (README): what --quantization 4bit makes of a MoE model's weights.
  [ "$DEVICE" = gpu ] && env $ALL timeout $LIMIT $PY $W/check.py moe_4bit $model $mm > $OUT/parts/moe_4bit.json \
    2> $L/moe_4bit.log
}

cat > $W/check.py <<'PY'
"""The checks of bench/distributed.sh: one JSON object per sub-run on stdout; never raises."""
import json, os, re, sys, traceback
from pathlib import Path

import pandas as pd


def tail(log, n=25):
    try:
        return Path(log).read_text(errors="replace").splitlines()[-n:]
    except OSError as err:
        return [f"no log: {err}"]


def weights_diff(a, b):
    """Largest absolute difference between two safetensors files (None when either is missing)."""
    from safetensors.torch import load_file

    if not (Path(a).is_file() and Path(b).is_file()):
        return None
    x, y = load_file(str(a)), load_file(str(b))
    if set(x) != set(y):
        return float("inf")
    return max(float((x[k].float() - y[k].float()).abs().max()) for k in x)


def fold_checks(run):
    """bench/fold_check.py's checks of fold 1, plus the files of the checkpoint the best reload should pick."""
    sys.path.insert(0, str(Path.cwd() / "bench"))
    from fold_check import fold_checks as checks

    r = checks(run)
    best = Path(run) / "fold1" / "checkpoints" / "checkpoint-4"
    if r["complete"]:
        r["checkpoint_files"] = sorted(p.name for p in best.iterdir()) if best.is_dir() else []
    return r


def train(family, run, log, rc):
    fold = Path(run) / "fold1"
    r = {"rc": int(rc), **fold_checks(run)}
    r["fsdp_ok"] = bool(r["rc"] == 0 and r["complete"] and r["oof_ids_once"] and r["weights_recorded"] is True
                        and r["processes"] == 2 and r["steps"] == 8)
    if r["complete"]:
        best, last = fold / "checkpoints" / r["best_checkpoint"], fold / "checkpoints" / "checkpoint-8"
        r["best_reload_ran"] = best.name != last.name and "loaded the best checkpoint" in Path(log).read_text()
        r["saved_vs_best_max_diff"] = weights_diff(fold / "model.safetensors", best / "model.safetensors")
        r["saved_vs_last_max_diff"] = weights_diff(fold / "model.safetensors", last / "model.safetensors")
        r["best_reload_ok"] = bool(r["best_reload_ran"] and r["saved_vs_best_max_diff"] == 0
                                   and (r["saved_vs_last_max_diff"] or 0) > 0)
    else:
        r["best_reload_ok"] = False
    if not (r["fsdp_ok"] and r["best_reload_ok"]):
        r["log_tail"] = tail(log)
    return r


def resume(family, run, log, rc, predict_log, predict_rc):
    text = Path(log).read_text(errors="replace") if Path(log).is_file() else ""
    m = re.search(r"--resume: continuing from (\S+) \(step (\d+)\)", text)
    r = {"rc": int(rc), "resumed_from": Path(m.group(1)).name if m else None, **fold_checks(run)}
    r["resume_ok"] = bool(r["rc"] == 0 and r["resumed_from"] == "checkpoint-4" and r["complete"]
                          and r["oof_ids_once"] and r["weights_recorded"] is True and r["steps"] == 8)
    fold = Path(run) / "fold1"
    p = {"rc": int(predict_rc)}
    if p["rc"] == 0 and (fold / "oof_tta.csv").is_file() and (fold / "oof.csv").is_file():
        test = pd.read_csv(fold / "test_probs.csv", dtype={"id": str})
        a = pd.read_csv(fold / "oof.csv", dtype={"id": str}).set_index("id")[list("abcd")]
        b = pd.read_csv(fold / "oof_tta.csv", dtype={"id": str}).set_index("id")[list("abcd")].reindex(a.index)
        # The Trainer's OOF (bf16 autocast under FSDP) against predict.py's scoring of the saved model.
        p.update(test_rows=len(test), oof_rescored_max_diff=float((a - b).abs().max().max()))
        p["ok"] = bool(len(test) == 24 and p["oof_rescored_max_diff"] <= 0.02)
    else:
        p["ok"] = False
        p["log_tail"] = tail(predict_log)
    r["predict"] = p
    if not r["resume_ok"]:
        r["log_tail"] = tail(log)
    return r


def device_map(runs, logs):
    runs, logs, out = Path(runs), Path(logs), {}
    rc = int((runs.parent / "device_map.train.rc").read_text().strip() or 1)
    train_log = (logs / "device_map.train.log").read_text(errors="replace")
    placed = re.search(r"placed (.*)", train_log)
    out["train"] = {"rc": rc, "placed": placed.group(1) if placed else None,
                    "oof": (runs / "moe_placed/fold1/oof.csv").is_file()}
    if rc != 0:
        out["train"]["log_tail"] = tail(logs / "device_map.train.log")
    probs = {}
    for v in ("one_fp32", "split_fp32", "one_bf16", "split_bf16"):
        log = logs / f"device_map.{v}.log"
        if not log.is_file():
            continue
        rc_file = runs.parent / f"device_map.{v}.rc"
        entry = {"rc": int(rc_file.read_text().strip() or 1) if rc_file.is_file() else None}
        placed = re.search(r"placed (.*)", log.read_text(errors="replace"))
        entry["placed"] = placed.group(1) if placed else None
        f = runs / f"moe_{v}/fold1/test_probs.csv"
        if entry["rc"] == 0 and f.is_file():
            probs[v] = pd.read_csv(f, dtype={"id": str}).set_index("id")[list("abcd")]
        else:
            entry["log_tail"] = tail(log)
        out[v] = entry
    for prec in ("fp32", "bf16"):
        if f"one_{prec}" in probs and f"split_{prec}" in probs:
            a, b = probs[f"one_{prec}"], probs[f"split_{prec}"].reindex(probs[f"one_{prec}"].index)
            out[f"{prec}_max_prob_diff"] = float((a - b).abs().max().max())
    gpu = os.environ.get("DEVICE", "gpu") == "gpu"
    split = out.get("split_fp32", {}).get("placed") or ""
    out["both_gpus"] = ("cuda:0" in split and "cuda:1" in split and "cpu" not in split) if gpu else None
    out["device_map_ok"] = bool(rc == 0 and out["train"]["oof"] and (out["both_gpus"] or not gpu)
                                and out.get("fp32_max_prob_diff", 1.0) <= (1e-4 if gpu else 1e-5)
                                and (not gpu or out.get("bf16_max_prob_diff", 1.0) <= 2e-2))
    return out


def moe_4bit(model_dir, max_memory):
    """Which weights of a Qwen3-VL MoE model bitsandbytes 4-bit quantises (mcvqa's --quantization 4bit loading)."""
    import torch

    from mcvqa.modeling import load_model, placement_summary

    model, _ = load_model(model_dir, quantization="4bit", full_finetune=True, device_map="auto", max_memory=max_memory)
    params = dict(model.named_parameters())
    experts = {n: p for n, p in params.items() if ".mlp.experts." in n}
    linear4 = [n for n, m in model.named_modules() if type(m).__name__ == "Linear4bit"]
    return {"placed": placement_summary(model), "linear4bit_modules": len(linear4),
            "linear4bit_examples": linear4[:4],
            "expert_tensors": {n: [str(p.dtype), list(p.shape)] for n, p in list(experts.items())[:2]},
            "expert_params": sum(p.numel() for p in experts.values()),
            "expert_params_quantised": any(p.dtype == torch.uint8 for p in experts.values()),
            "footprint_bytes": model.get_memory_footprint()}


def summary(out_dir, work, families, started):
    import accelerate, torch, transformers

    out_dir, work = Path(out_dir), Path(work)
    parts = out_dir / "parts"

    def part(name):
        try:
            return json.loads((parts / f"{name}.json").read_text())
        except (OSError, ValueError) as err:
            return {"error": f"{name}: {err}"}

    gpu = os.environ.get("DEVICE", "gpu") == "gpu"
    device = (f"{torch.cuda.get_device_name(0)} x{torch.cuda.device_count()}" if gpu and torch.cuda.is_available()
              else "cpu")
    result = {"device": device, "versions": {"torch": torch.__version__, "transformers": transformers.__version__,
                                             "accelerate": accelerate.__version__},
              "mode": "FSDP2 (accelerate_configs/fsdp_full_finetune.yaml)" if gpu else "DDP over gloo (CPU)",
              "families": {}}
    for f in families.split():
        t, r = part(f"{f}.train"), part(f"{f}.resume")
        result["families"][f] = {
            "fsdp_ok": t.get("fsdp_ok", False), "best_reload_ok": t.get("best_reload_ok", False),
            "resume_ok": r.get("resume_ok", False), "oof_rows": r.get("oof_rows"), "fold_rows": r.get("fold_rows"),
            "oof_ids_once": bool(t.get("oof_ids_once") and r.get("oof_ids_once")),
            "predict_ok": r.get("predict", {}).get("ok", False), "train": t, "resumed": r}
    mn = out_dir / "multinode" / "multinode.json"
    if os.environ.get("MULTINODE") == "1":
        try:
            m = json.loads(mn.read_text())
            result["multinode_ok"], result["multinode"] = bool(m.get("multinode_ok")), m
        except (OSError, ValueError) as err:
            result["multinode_ok"] = False
            result["multinode"] = {"error": str(err), "log_tail": tail(out_dir / "logs" / "multinode.log")}
    else:
        result["multinode_ok"] = None  # not run (MULTINODE=0)
    dm = part("device_map")
    result["device_map_ok"], result["device_map"] = dm.get("device_map_ok", False), dm
    if (parts / "moe_4bit.json").is_file():
        result["moe_4bit"] = part("moe_4bit")
    launch, args = (work / "launch.txt").read_text().split(), (work / "args.txt").read_text().split()
    result["commands"] = {
        "train": f"accelerate launch {' '.join(launch)} train_lora.py --model_name_or_path M {' '.join(args)} "
                 "--output_dir RUN",
        "resume": "the same, after deleting checkpoint-8 and the fold's outputs, with --resume",
        "predict": "python predict.py --output_dir RUN --data_dir D --folds 1 --score_oof",
        "multinode": "bash bench/multinode.sh",
        "device_map": f"python train_lora.py ... --device_map auto --max_memory {(work / 'max_memory.txt').read_text().strip()}"
                      " ; python predict.py ... --device_map auto --max_memory (same)",
    }
    rows = [v[k] for v in result["families"].values() for k in ("fsdp_ok", "best_reload_ok", "resume_ok", "predict_ok")]
    rows += [result["device_map_ok"]] + ([result["multinode_ok"]] if result["multinode_ok"] is not None else [])
    result["all_ok"] = bool(rows and all(x is True for x in rows))
    import time

    result["wall_s"] = round(time.time() - float(started))
    text = json.dumps(result, indent=2, default=str)
    (out_dir / "distributed.json").write_text(text + "\n")
    return {k: result[k] for k in ("device", "multinode_ok", "device_map_ok", "all_ok", "wall_s")} | {
        f: {k: v[k] for k in ("fsdp_ok", "best_reload_ok", "resume_ok", "predict_ok", "oof_rows", "fold_rows")}
        for f, v in result["families"].items()}


if __name__ == "__main__":
    mode, *rest = sys.argv[1:]
    try:
        print(json.dumps({"train": train, "resume": resume, "device_map": device_map, "moe_4bit": moe_4bit,
                                 "summary": summary}[mode](*rest),
                         indent=1, default=str))
    except Exception:  # noqa: BLE001 - a failed check is a recorded false, not a stopped script
        print(json.dumps({"error": traceback.format_exc().splitlines()[-3:]}))
PY

port=29601
for f in $FAMILIES; do
  family $f $port &
  port=$((port + 10))
done
device_map &
wait
OUT=$OUT DEVICE=$DEVICE MULTINODE=$MULTINODE $PY $W/check.py summary $OUT $W "$FAMILIES" $started
