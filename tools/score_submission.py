"""Accuracy of a submission against the true answers (easy-VQA's test_answers.csv): prints `test accuracy: 0.xxx`.

    python tools/score_submission.py --submission runs/demo/submission.csv --answers data/easy_vqa/test_answers.csv

Both files have an `id` column and an answer column (`answer`, or the only other column). Every id of the
answers file must be in the submission.
"""

import argparse
import sys
from pathlib import Path

import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from mcvqa.errors import UserError, report_user_errors  # noqa: E402
from mcvqa.metrics import prediction_accuracy  # noqa: E402


def read(path, what):
    path = Path(path)
    if not path.is_file():
        raise UserError(f"--{what} {path}: file not found")
    df = pd.read_csv(path, dtype=str, keep_default_na=False)
    others = [c for c in df.columns if c != "id"]
    if "id" not in df.columns or not others:
        raise UserError(f"--{what} {path}: expected columns id and answer (found {', '.join(df.columns)})")
    col = "answer" if "answer" in others else others[0]
    return df.set_index("id")[col].str.strip().str.lower()


def score(submission, answers):
    missing = answers.index.difference(submission.index)
    if len(missing):
        raise UserError(f"the submission lacks {len(missing)} id(s) of the answers file, e.g. {', '.join(missing[:5])}")
    return prediction_accuracy(answers.to_numpy(), submission.loc[answers.index].to_numpy())


@report_user_errors
def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--submission", required=True, help="submission CSV written by ensemble.py")
    p.add_argument("--answers", required=True, help="CSV of true answers (id,answer)")
    args = p.parse_args(argv)
    acc = score(read(args.submission, "submission"), read(args.answers, "answers"))
    print(f"test accuracy: {acc:.3f}")
    return acc


if __name__ == "__main__":
    main()
