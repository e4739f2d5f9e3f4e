#!/usr/bin/env bash
# Distillation on easy-VQA (issue 18): a smaller student trained on a stronger teacher's out-of-fold
# probabilities beside the letters (--teacher_probs), against the same student without the teacher: same rows
# (fold 1 of one folds.csv), same seed, same --max_steps. Scored on held-out easy-VQA test questions.
#   OUT=/tmp/out bash bench/distill.sh          one H200 (shared with other jobs is fine), ~12 minutes
#   DEVICE=cpu PYTHON=.venv/bin/python OUT=/tmp/distill_cpu bash bench/distill.sh
#                                               the same steps at toy scale on a CPU (a smoke test, ~2 minutes)
# Writes $OUT/distill.json (bench/distill_report.py), one log per step, the commands run (commands.txt) and
# the wall time of each stage (timings.txt) in $OUT. Work files go to $WORK (default /tmp/distill), logs first to
# $WORK/logs. Re-running the same command resumes: a run whose oof.csv exists is kept, an unfinished one starts
# again (a call cut short loses only the runs in flight). UNTIL=teacher stops after step 2, so that two calls
# under a 10-minute limit each finish what they start:
#   UNTIL=teacher OUT=/tmp/out bash bench/distill.sh; then (same machine, same WORK) OUT=/tmp/out bash bench/distill.sh
#
# 1. data: easy-VQA train split (N_TRAIN questions, 0 = all 38,575), N_TEST held-out test questions.
# 2. teacher: the learning proof's model (hidden 256 x 4 layers, vision 128 x 4, random init, full fine-tune with
#    bench/learning.yaml: fp32, lr 1e-3, restricted loss, --shuffle_choices, colour/shape oversampled 6x, 112 px),
#    2 folds side by side, TEACHER_MIN minutes each: its folds' oof.csv cover every train row out of fold.
#    Meanwhile the plain student (it needs no teacher) trains on fold 1 of the same folds.csv.
# 3. the distilled student: the same student, fold, seed and steps, plus --teacher_probs <the teacher's run folder>
#    (the checked form: each fold's oof.csv against its weights and folds.csv) --distill_alpha ALPHA
#    --distill_temperature TEMP.
# 4. predict.py scores the test questions with every fold (the teacher's two folds are averaged in the report).
# Both students keep their last weights (--load_best_model_at_end false), so both are scored after exactly
# STUDENT_STEPS steps. The held-out test score is the comparison: the students' fold-1 OOF scores are reported
# too, but the distilled student's is optimistic (its teacher probabilities for fold-2 rows come from the teacher
# fold that trained on fold 1's labels).
set -u
DEVICE=${DEVICE:-gpu}
PY=${PYTHON:-python3}
if [ "$DEVICE" = gpu ]; then
  source bench/gpu_env.sh
  export OMP_NUM_THREADS=2
  N_TRAIN=${N_TRAIN:-0} N_TEST=${N_TEST:-2000} TEACHER_MIN=${TEACHER_MIN:-5} STUDENT_STEPS=${STUDENT_STEPS:-1200}
  TEACHER_ARCH=${TEACHER_ARCH:-"256 4 128 4"} STUDENT_ARCH=${STUDENT_ARCH:-"128 2 128 2"}
  # Three runs share the machine while the teacher trains; at most 4 workers each (one worker renders ~3,700
  # rows/s, a run consumes ~2,500), fewer when `taskset`/cgroups leave fewer cores (nproc counts what we may use).
  WORKERS=${WORKERS:-$(( $(nproc) / 3 - 1 ))}
  [ "$WORKERS" -gt 4 ] && WORKERS=4
  [ "$WORKERS" -lt 1 ] && WORKERS=1
  SCALE=""
else
  export OMP_NUM_THREADS=1 HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 TOKENIZERS_PARALLELISM=false PYTHONUNBUFFERED=1
  export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}
  N_TRAIN=${N_TRAIN:-96} N_TEST=${N_TEST:-32} TEACHER_MIN=${TEACHER_MIN:-0.25} STUDENT_STEPS=${STUDENT_STEPS:-4}
  TEACHER_ARCH=${TEACHER_ARCH:-"128 2 64 2"} STUDENT_ARCH=${STUDENT_ARCH:-"64 1 64 1"}
  WORKERS=${WORKERS:-0}
  # Toy scale: small batches, an evaluation and a checkpoint every 2 steps.
  SCALE="--per_device_train_batch_size 16 --per_device_eval_batch_size 32 --max_eval_samples 16 --warmup_steps 1
    --eval_steps 2 --save_steps 2 --logging_steps 1 --use_cpu true"
fi
SEED=${SEED:-0} ALPHA=${ALPHA:-0.5} TEMP=${TEMP:-2}
# TEACHER_PRE=M: the teacher starts from bench/pretrain_tiny.py's open-ended base (M minutes on the GPU, 4 layers x
# 128, 4 heads) instead of random weights: from random weights 5 minutes of folds stay at the text prior (issue 17).
TEACHER_PRE=${TEACHER_PRE:-0}
PLAIN_WITH_TEACHER=${PLAIN_WITH_TEACHER:-1}
OUT=${OUT:-/tmp/out}
W=${WORK:-/tmp/distill}
UNTIL=${UNTIL:-all}
DATA=$W/data RUNS=$W/runs LOGS=$W/logs
mkdir -p "$OUT" "$W" "$RUNS" "$LOGS"
# Resuming with other settings would mix runs: the settings a WORK folder was started with must match.
settings="$DEVICE $N_TRAIN $N_TEST $TEACHER_MIN $STUDENT_STEPS $TEACHER_ARCH $STUDENT_ARCH $SEED $ALPHA $TEMP $TEACHER_PRE"
if [ -f $W/settings ] && [ "$(cat $W/settings)" != "$settings" ]; then
  echo "error: $W holds runs made with other settings ($(cat $W/settings)); now: $settings." \
       "Remove it (rm -rf $W) or choose another WORK"; exit 2
fi
echo "$settings" > $W/settings
# Every call leaves all the logs so far in its $OUT (a resumed call's $OUT may be a fresh folder).
trap 'cp $LOGS/* "$OUT"/ 2>/dev/null' EXIT

# run NAME CMD...: CMD with its output in NAME.log, the command line (shell-quoted) in commands.txt.
run() { local name=$1; shift; { printf '%q ' "$@"; echo; } >> $LOGS/commands.txt; "$@" > $LOGS/$name.log 2>&1; }
done_run() { [ -f "$RUNS/$1/fold$2/oof.csv" ]; }
fresh() { rm -rf "$RUNS/$1/fold$2"; }  # an unfinished run starts again (its time budget would not resume)
# stage NAME START: the stage's wall time, recorded when it ran anything (ran=1; a resumed call skips what is done).
# Each stage also copies the logs so far to $OUT: a machine lost between stages keeps what was fetched (call 24 lost
# both trained students' logs to a machine taken back during predict.py).
stage() { local s=$(( $(date +%s) - $2 )); [ $ran = 1 ] && echo "$1 $s" >> $LOGS/timings.txt; echo "$1: $s s"; ran=0
  cp $LOGS/* "$OUT"/ 2>/dev/null; }
fail() { echo "error: $1 (see $OUT/$2.log):"; tail -5 "$LOGS/$2.log"; exit 1; }
t0=$(date +%s) ran=0

# ---- 1. data, models, one folds.csv for every run
t=$(date +%s)
if [ ! -f $DATA/test_answers.csv ]; then
  ran=1; run prepare $PY data/prepare_easy_vqa.py --out $DATA --n_train $N_TRAIN --n_test $N_TEST --seed $SEED \
    || fail "preparing easy-VQA" prepare
fi
mk() {  # mk NAME "hidden layers vision_hidden vision_depth"
  set -- $1 $2
  run make_$1 $PY tools/make_tiny_model.py --arch qwen2_5_vl --out $W/$1 --hidden_size $2 --num_layers $3 \
    --vision_hidden_size $4 --vision_depth $5 --seed $SEED
}
if [ "$TEACHER_PRE" != 0 ]; then
  [ -f $W/teacher_model/pretraining.json ] || { ran=1; run pretrain_teacher $PY bench/pretrain_tiny.py --data_dir $DATA \
    --out $W/teacher_model --minutes $TEACHER_PRE --batch_size 256 --workers $WORKERS --seed $SEED \
    --device $([ $DEVICE = gpu ] && echo cuda || echo cpu) & }
else
  [ -f $W/teacher_model/config.json ] || { ran=1; mk teacher_model "$TEACHER_ARCH" & }
fi
[ -f $W/student_model/config.json ] || { ran=1; mk student_model "$STUDENT_ARCH" & }
wait
[ -f $W/teacher_model/config.json ] || fail "building the teacher model" make_teacher_model
[ -f $W/student_model/config.json ] || fail "building the student model" make_student_model
if [ ! -f $RUNS/teacher/folds.csv ]; then
  # Written once before the teacher's folds start side by side (each would otherwise race to write it); the
  # students get copies, so all runs split the rows alike.
  ran=1; run folds $PY -c "import sys; from mcvqa.data import assign_folds, load_split; \
assign_folds(load_split(sys.argv[1], 'train'), 2, int(sys.argv[3]), sys.argv[2])" $DATA $RUNS/teacher $SEED \
    || fail "assigning folds" folds
  for s in plain distilled; do mkdir -p $RUNS/$s && cp $RUNS/teacher/folds.csv $RUNS/teacher/folds.json $RUNS/$s/; done
fi
stage setup $t

common="--config bench/learning.yaml --data_dir $DATA --n_folds 2 --seed $SEED --dataloader_num_workers $WORKERS
  --load_best_model_at_end false --report_to none $SCALE"
student="$common --model_name_or_path $W/student_model --fold 1 --max_steps $STUDENT_STEPS"
distill="--teacher_probs $RUNS/teacher --distill_alpha $ALPHA --distill_temperature $TEMP"
plain_now() {  # the plain student needs no teacher: it trains beside the teacher unless PLAIN_WITH_TEACHER=0
  [ "$1" = "$PLAIN_WITH_TEACHER" ] && ! done_run plain 1 || return 0
  ran=1; fresh plain 1
  run train_plain $PY train_lora.py $student --output_dir $RUNS/plain &
}

# ---- 2. the teacher's two folds (and the plain student) side by side
t=$(date +%s)
for k in 1 2; do
  done_run teacher $k || { ran=1; fresh teacher $k; run train_teacher_fold$k $PY train_lora.py $common \
    --model_name_or_path $W/teacher_model --fold $k --time_budget_minutes $TEACHER_MIN --output_dir $RUNS/teacher & }
done
plain_now 1
wait
for k in 1 2; do done_run teacher $k || fail "teacher fold $k did not finish" train_teacher_fold$k; done
stage teacher $t
if [ "$UNTIL" = teacher ]; then
  echo "call $(( $(date +%s) - t0 ))" >> $LOGS/timings.txt
  echo "UNTIL=teacher: stopping; the same command without UNTIL (same WORK) continues"; exit 0
fi

# ---- 3. the distilled student (and the plain one, if it did not run beside the teacher)
t=$(date +%s)
done_run distilled 1 || { ran=1; fresh distilled 1; run train_distilled $PY train_lora.py $student $distill \
  --output_dir $RUNS/distilled & }
plain_now 0
wait
done_run plain 1 || fail "the plain student did not finish" train_plain
done_run distilled 1 || fail "the distilled student did not finish" train_distilled
stage students $t

# ---- 4. every fold scores the test questions; the report
t=$(date +%s) ran=1
run predict $PY predict.py --data_dir $DATA --output_dir $RUNS --score_oof false --batch_size 256 --progress false \
  || fail "predict.py" predict
stage predict $t
echo "call $(( $(date +%s) - t0 ))" >> $LOGS/timings.txt
run report $PY bench/distill_report.py --data_dir $DATA --runs $RUNS --out $OUT/distill.json \
  --commands $LOGS/commands.txt --timings $LOGS/timings.txt \
  --setting device_kind=$DEVICE n_train=$N_TRAIN n_test=$N_TEST seed=$SEED teacher_minutes=$TEACHER_MIN \
    student_steps=$STUDENT_STEPS teacher_pretrain_minutes=$TEACHER_PRE teacher_arch="$TEACHER_ARCH" student_arch="$STUDENT_ARCH" distill_alpha=$ALPHA \
    distill_temperature=$TEMP dataloader_workers=$WORKERS plain_beside_teacher=$PLAIN_WITH_TEACHER \
  --command "$(for v in DEVICE N_TRAIN N_TEST TEACHER_PRE TEACHER_MIN STUDENT_STEPS STUDENT_ARCH ALPHA TEMP SEED; do printf '%s=%q ' $v "${!v}"; done)bash bench/distill.sh" \
  || fail "the report" report
cp $OUT/distill.json $W/
cat $LOGS/report.log
