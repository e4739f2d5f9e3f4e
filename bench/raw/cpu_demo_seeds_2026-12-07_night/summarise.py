"""Accuracy by question type of demo outputs (run from the repository root):

    .venv/bin/python bench/raw/cpu_demo_seeds_2026-12-07_night/summarise.py runs/demo_s3 FILE.csv ...

A run root is scored by its submission.csv (id, answer); a .csv file as predict.py's test_probs.csv (id, then one
probability column per letter a-d), its answer the most probable letter.
"""
import sys
from pathlib import Path

import numpy as np
import pandas as pd

test = pd.read_csv("data/easy_vqa/test.csv").drop(columns=list("abcd"))
test = test.merge(pd.read_csv("data/easy_vqa/test_answers.csv"), on="id")


def predictions(path):
    if Path(path).is_dir():
        return pd.read_csv(Path(path) / "submission.csv").rename(columns={"answer": "pred"})
    probs = pd.read_csv(path)
    probs = probs.rename(columns={c: c[-1] for c in probs.columns if c != "id"})
    return pd.DataFrame({"id": probs["id"], "pred": np.array(list("abcd"))[probs[list("abcd")].to_numpy().argmax(1)]})


for path in sys.argv[1:]:
    rows = test.merge(predictions(path), on="id")
    ok = rows["answer"] == rows["pred"]
    print(f"{path}: test accuracy {ok.mean():.3f} {ok.groupby(rows['type']).mean().round(3).to_dict()}")
