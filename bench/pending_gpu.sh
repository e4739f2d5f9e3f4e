#!/usr/bin/env bash
# What the open issues still owe the GPU, in one unattended run per machine kind (bench/RESULTS.md says why each):
#   one H200 (~23 device-minutes):
#     setsid nohup bash bench/pending_gpu.sh h200 > /dev/null 2>&1 < /dev/null &
#       1. issue 18: bench/distill.sh, the distilled student against the plain one (~11 min; teacher from
#          pretrain_tiny's 2-minute base, 3-minute folds, 800 student steps)
#       2. issue 14: record7b and record8b with the current tree (the host-sync removal of 2026-11-30 and the
#          all-rows warm-up of 2026-12-04 are not in the recorded runs; ~5 + ~6 min)
#   nvidia-h200-x2 (~5 device-minutes):
#     setsid nohup bash bench/pending_gpu.sh x2 > /dev/null 2>&1 < /dev/null &
#       issue 15: bench/distributed.sh (its device_map row has not yet passed on two GPUs)
# Everything goes under /tmp/res (progress in /tmp/res/master.log; /tmp/res/DONE at the end). The device tool
# takes back a machine left idle for 30 s between calls, with all of it: poll with back-to-back calls
# (`sleep 240; tail -3 /tmp/res/master.log`) and fetch in each poll (`tar czf $OUT/res.tgz -C /tmp res`).
set -u
KIND=${1:-h200}
case $KIND in h200|x2) ;; *) echo "usage: bash bench/pending_gpu.sh h200|x2"; exit 2 ;; esac
cd "$(dirname "$0")/.."
R=/tmp/res
mkdir -p $R
exec >> $R/master.log 2>&1
source bench/gpu_env.sh || { echo "installing the carried wheels failed"; exit 1; }
echo "start $KIND $(date -u +%H:%M:%S)"
case $KIND in
  h200)
    OUT=$R/distill WORK=/tmp/distill TEACHER_PRE=2 TEACHER_MIN=3 STUDENT_STEPS=800 STUDENT_ARCH="64 2 64 2" \
      WORKERS=4 bash bench/distill.sh > $R/distill.log 2>&1
    echo "distill rc $? $(date -u +%H:%M:%S)"
    OUT=$R/o14 bash bench/issue14.sh record7b record8b > $R/issue14.log 2>&1
    echo "issue14 rc $? $(date -u +%H:%M:%S)" ;;
  x2)
    OUT=$R/distributed bash bench/distributed.sh > $R/distributed.log 2>&1
    echo "distributed rc $? $(date -u +%H:%M:%S)" ;;
esac
touch $R/DONE
echo "done $(date -u +%H:%M:%S)"
