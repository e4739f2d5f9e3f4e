#!/usr/bin/env bash
# What the open issues still owe the GPU, one unattended run per line (bench/RESULTS.md says why each):
#   one H200, ~27 device-minutes (nearly a session's budget), issue 17 item 2:
#     setsid nohup bash bench/pending_gpu.sh h200 > /dev/null 2>&1 < /dev/null &
#       bench/learning_seeds.sh 1 2 3 with call 27's recipe (bases pretrained 12 minutes, LoRA 10 minutes, a
#       blank-image twin per seed) -> learning_lora.json. Six runs share the GPU where call 27's 0.93 base shared
#       it with four, so each base gets fewer steps per minute: hence 12 minutes, not 6 (the issue bounds the LoRA
#       stage at 10 minutes, not the pretraining). Call 29 ran it with an ALT_FLAGS stage beside it (train_lora.py's
#       own loss, which did not learn) and was lost at minute ~29, before scoring: the whole run needs ~27 minutes
#       of a fresh machine, so start it first thing in a session and never let the polls lapse. Call 30 ran
#       CLOCK="PRE=8 LORA=6" after failed starts (min 0.704: the shorter pretraining makes weaker bases). Since
#       then pretrain_tiny.py has load_model's vision fast paths (2,113 ops a step, not 19,785): compare the
#       steps in each base's pretraining.json with calls 29-30's ~145 a minute
#   one H200, ~20 device-minutes, issue 17 items 1 and 2 from the same bases:
#     setsid nohup bash bench/pending_gpu.sh scratch > /dev/null 2>&1 < /dev/null &
#       PRE=8 FULL=7 LORA=10: item 1's 15 minutes from random weights are 8 of open-ended pretraining and 7 of
#       full fine-tuning (learning.json); beside it the LoRA stage on the same, shorter-trained bases
#       (learning_lora.json, likely capped lower than h200's); twelve second-stage runs share the GPU and its 16
#       cores (2 loader workers each)
#   one H200, ~11 device-minutes:
#     setsid nohup bash bench/pending_gpu.sh records > /dev/null 2>&1 < /dev/null &
#       issue 14: record7b and record8b with the current tree (the host-sync removal of 2026-11-30 and the
#       all-rows warm-up of 2026-12-04 are not in the recorded runs)
#   nvidia-h200-x2, ~5 device-minutes:
#     setsid nohup bash bench/pending_gpu.sh x2 > /dev/null 2>&1 < /dev/null &
#       issue 15: bench/distributed.sh (its device_map row has not yet passed on two GPUs)
# CLOCK overrides h200's and scratch's minutes (call 30: CLOCK="PRE=8 LORA=6" when failed machine starts had
# spent a quarter of the budget). Everything goes under /tmp/res, the learning runs' work folder (bases, run
# folders) included (progress in /tmp/res/master.log; /tmp/res/DONE at the end). The device tool takes back a
# machine left idle for 30 s between calls, with all of it: poll with back-to-back calls
# (`sleep 230; tail -3 /tmp/res/master.log`) and fetch in each poll, weights left out:
#   tar czf $OUT/res.tgz --exclude='*.safetensors' --exclude='checkpoint-*' -C /tmp res
# so that a machine lost after prediction still leaves every run's test_probs.csv and each base's
# pretraining.json here for bench/learning_seeds_report.py.
set -u
KIND=${1:-h200}
case $KIND in h200|scratch|records|x2) ;; *) echo "usage: bash bench/pending_gpu.sh h200|scratch|records|x2"; exit 2 ;; esac
cd "$(dirname "$0")/.."
R=/tmp/res
mkdir -p $R
exec >> $R/master.log 2>&1
source bench/gpu_env.sh || { echo "installing the carried wheels failed"; exit 1; }
echo "start $KIND $(date -u +%H:%M:%S)"
case $KIND in
  h200|scratch)
    if [ $KIND = h200 ]; then clock=${CLOCK:-"PRE=12 LORA=10"}; else clock=${CLOCK:-"PRE=8 FULL=7 LORA=10 WORKERS=2"}; fi
    env OUT=$R/learning WORK=$R/learn $clock bash bench/learning_seeds.sh 1 2 3 > $R/learning.log 2>&1
    echo "learning ($clock) rc $? $(date -u +%H:%M:%S)" ;;
  records)
    OUT=$R/o14 bash bench/issue14.sh record7b record8b > $R/issue14.log 2>&1
    echo "issue14 rc $? $(date -u +%H:%M:%S)" ;;
  x2)
    OUT=$R/distributed bash bench/distributed.sh > $R/distributed.log 2>&1
    echo "distributed rc $? $(date -u +%H:%M:%S)" ;;
esac
touch $R/DONE
echo "done $(date -u +%H:%M:%S)"
