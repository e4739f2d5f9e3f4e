"""The yes/no analysis of bench/RESULTS.md's calls 34-35: which option text each wrong yes/no answer picked.

    python bench/raw/call35_full_pre5_full5_h100/yes_no_errors.py WORK RUN...   (WORK: /tmp/res/learn of the calls,
    its evqa/ data and runs/RUN/full/test_probs.csv, from the polls' res.tgz)
"""
import sys

import pandas as pd

work, runs = sys.argv[1], sys.argv[2:]
rows = pd.read_csv(f"{work}/evqa/test.csv").merge(pd.read_csv(f"{work}/evqa/test_answers.csv"), on="id")
for run in runs:
    probs = pd.read_csv(f"{work}/runs/{run}/full/test_probs.csv").rename(columns=lambda c: "p_" + c if c != "id" else c)
    d = rows.merge(probs, on="id")
    d["pred"] = d[["p_a", "p_b", "p_c", "p_d"]].idxmax(axis=1).str[-1]
    d["chosen"] = [r[r["pred"]] for _, r in d.iterrows()]
    wrong = d[(d["type"] == "yes/no") & (d["pred"] != d["answer"])]
    flips = wrong["chosen"].isin(["yes", "no"]).sum()
    print(f"{run}: accuracy {(d['pred'] == d['answer']).mean():.4f}; yes/no wrong {len(wrong)}, "
          f"of them the other yes/no word {flips}; chosen {wrong['chosen'].value_counts().to_dict()}")
