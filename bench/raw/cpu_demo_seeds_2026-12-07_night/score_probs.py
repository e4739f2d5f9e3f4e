"""Accuracy by question type of test_probs.csv files (predict.py's columns: id, then one per letter a-d):

    .venv/bin/python bench/raw/cpu_demo_seeds_2026-12-07_night/score_probs.py FILE...
"""
import sys

import numpy as np
import pandas as pd

test = pd.read_csv("data/easy_vqa/test.csv").drop(columns=list("abcd"))
test = test.merge(pd.read_csv("data/easy_vqa/test_answers.csv"), on="id")
for path in sys.argv[1:]:
    probs = pd.read_csv(path)
    probs = probs.rename(columns={c: c[-1] for c in probs.columns if c != "id"})
    rows = test.merge(probs, on="id")
    ok = np.array(list("abcd"))[rows[list("abcd")].to_numpy().argmax(1)] == rows["answer"].to_numpy()
    print(f"{path}: {ok.mean():.3f} {pd.Series(ok).groupby(rows['type'].to_numpy()).mean().round(3).to_dict()}")
