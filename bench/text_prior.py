"""How much of a run's yes/no accuracy the question's wording alone explains (easy-VQA, issue 17 item 3).

    python bench/text_prior.py --data_dir data/easy_vqa --probs runs/demo/easy_vqa_base/fold1/test_probs.csv ...

The text prior answers each yes/no test question with the answer its exact wording has most often in train.csv
(7 of 8 "is there a red shape?" are "no"). For each test_probs.csv it prints the run's yes/no accuracy and how
often its answer is the prior's: agreement 1.0 means the run reads the wording, not the image.
"""

import argparse

import pandas as pd


def answer_words(df, letters):
    return df.apply(lambda r: r[r[letters]], axis=1)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data_dir", required=True, help="prepare_easy_vqa.py output (train.csv, test.csv, test_answers.csv)")
    p.add_argument("--probs", nargs="*", default=[], help="test_probs.csv files (id,a,b,c,d) to compare")
    a = p.parse_args(argv)
    train = pd.read_csv(f"{a.data_dir}/train.csv")
    test = pd.read_csv(f"{a.data_dir}/test.csv").merge(pd.read_csv(f"{a.data_dir}/test_answers.csv"), on="id")
    train, test = train[train.type == "yes/no"], test[test.type == "yes/no"].copy()
    prior = train.assign(word=answer_words(train, "answer")).groupby("question").word.agg(lambda s: s.mode()[0])
    test["word"], test["prior"] = answer_words(test, "answer"), test.question.map(prior)
    print(f"text prior on {len(test)} yes/no test questions: {(test.prior == test.word).mean():.4f} "
          f"({test.prior.isna().sum()} wordings unseen in train)")
    for f in a.probs:
        d = test.merge(pd.read_csv(f).rename(columns=dict(a="pa", b="pb", c="pc", d="pd")), on="id")
        d["pred"] = d[["pa", "pb", "pc", "pd"]].idxmax(axis=1).str[1]
        said = answer_words(d, "pred")
        print(f"{f}: yes/no accuracy {(said == d.word).mean():.4f}, agrees with the text prior {(said == d.prior).mean():.4f}")


if __name__ == "__main__":
    main()
