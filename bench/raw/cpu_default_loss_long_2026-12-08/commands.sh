# The runs of this folder, from the repository root on the 2-core machine (commit 79cd89d's tree). Seed 3 ran alone
# on both cores; seeds 1 and 4 ran side by side, one thread each (DEMO_THREADS=1, a 90-minute guard).
make demo DEMO_RUNS=runs/fv_s3_long DEMO_TRAIN_FLAGS="--restricted_loss false --label_smoothing_factor 0.1 --seed 3 --max_steps 6900 --time_budget_minutes 40"
make demo DEMO_THREADS=1 DEMO_RUNS=runs/fv_s4_long DEMO_TRAIN_FLAGS="--restricted_loss false --label_smoothing_factor 0.1 --seed 4 --max_steps 6900 --time_budget_minutes 90"
make demo DEMO_THREADS=1 DEMO_RUNS=runs/fv_s1_long DEMO_TRAIN_FLAGS="--restricted_loss false --label_smoothing_factor 0.1 --seed 1 --max_steps 6900 --time_budget_minutes 90"
# the demo's own recipe (restricted loss) on its two worst seeds, the same 6,900 steps, each alone on both cores
make demo DEMO_RUNS=runs/rs_s4_long DEMO_TRAIN_FLAGS="--seed 4 --max_steps 6900 --time_budget_minutes 40"
make demo DEMO_RUNS=runs/rs_s3_long DEMO_TRAIN_FLAGS="--seed 3 --max_steps 6900 --time_budget_minutes 40"
# scoring (summary.txt)
.venv/bin/python bench/raw/cpu_demo_seeds_2026-12-07_night/summarise.py runs/rs_s3_long runs/rs_s4_long runs/fv_s1_long runs/fv_s3_long runs/fv_s4_long
# (rs_s4_long, then rs_s3_long, ran alone on both cores after the three default-loss runs)
