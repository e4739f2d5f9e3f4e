"""Accuracy by question type of each demo run kept beside this script (run from the repository root after the runs):

    .venv/bin/python bench/raw/cpu_demo_seeds_2026-12-07_night/summarise.py runs/demo_s3 runs/demo_fv_s3 ...
"""
import sys

import pandas as pd

test = pd.read_csv("data/easy_vqa/test.csv").merge(pd.read_csv("data/easy_vqa/test_answers.csv"), on="id")
for run in sys.argv[1:]:
    sub = pd.read_csv(f"{run}/submission.csv").rename(columns={"answer": "pred"})
    rows = test.merge(sub, on="id")
    ok = rows["answer"] == rows["pred"]
    by_type = ok.groupby(rows["type"]).mean().round(3).to_dict()
    print(f"{run}: test accuracy {ok.mean():.3f} {by_type}")
