"""Turn the easy-VQA dataset (PyPI package `easy-vqa`, bundled offline) into an mcvqa data folder.

    python data/prepare_easy_vqa.py --out data/easy_vqa --n_train 2000 --n_test 500 --seed 0

Writes OUT/train.csv, OUT/test.csv (no answers), OUT/sample_submission.csv (id,answer = "a") and
OUT/test_answers.csv (id,answer), with columns id, path, question, a, b, c, d, answer, type.
train.csv also has `group`, the type split finer for `--oversample_by group`: yes/no questions become
"yes/no-colour-plain-present", "yes/no-shape-negated-absent", ...: whether it asks about a colour or a
shape, whether it is negated ("is there not a ..."), and whether the thing asked about is in the image.
The answer is (present XOR negated), and the wording alone makes most of them predictable: 7 of 8
"is there a red shape?" are "no". Oversampling the plain-present rows gives the model questions where
only the image can tell.
`--n_train 0` / `--n_test 0` (the default) keep every question (38,575 train / 9,673 test).
Image paths are absolute paths into the installed package, or with --copy_images the images are
copied to OUT/images/{train,test}/ and the CSVs use paths relative to OUT.

Options (4 per question; the right answer sits at a seeded, balanced position a-d):
  yes/no questions: yes and no, plus 2 distractors drawn from the shapes and colours;
  shape questions:  the right shape, the 2 other shapes (there are only 3), plus 1 random colour;
  colour questions: the right colour plus 3 other colours.
"""

import argparse
import os
import shutil
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from mcvqa import LETTERS  # noqa: E402
from mcvqa.errors import UserError, report_user_errors  # noqa: E402
from mcvqa.io import write_csv  # noqa: E402

YES_NO = ("yes", "no")
SHAPES = ("circle", "rectangle", "triangle")


def question_type(answer):
    return "yes/no" if answer in YES_NO else "shape" if answer in SHAPES else "colour"


def question_group(question, answer, colours):
    """The type, and for yes/no whether it asks about a colour or a shape and whether that is in the image."""
    kind = question_type(answer)
    if kind != "yes/no":
        return kind
    words = question.rstrip("?").split()
    subject = "colour" if any(w in colours for w in words) else "shape"
    negated = "not" in words or words[:2] == ["is", "no"]
    present = (answer == "yes") != negated
    return f"yes/no-{subject}-{'negated' if negated else 'plain'}-{'present' if present else 'absent'}"


def make_options(answer, colours, rng, position):
    """Four options with `answer` at index `position` (see the module docstring for the distractors)."""
    kind = question_type(answer)
    if kind == "yes/no":
        other = "no" if answer == "yes" else "yes"
        pool = list(SHAPES) + list(colours)
        distractors = [other] + list(rng.choice(pool, size=2, replace=False))
    elif kind == "shape":
        distractors = [s for s in SHAPES if s != answer] + [str(rng.choice(colours))]
    else:
        distractors = list(rng.choice([c for c in colours if c != answer], size=3, replace=False))
    distractors = [str(d) for d in rng.permutation(distractors)]
    return distractors[:position] + [answer] + distractors[position:]


def build_split(split, questions, answers, image_ids, image_paths, n, rng, colours, out, copy_images):
    """DataFrame in the mcvqa layout (with `answer` and `type`) for a seeded sample of n questions."""
    total = len(questions)
    if n < 0 or n > total:
        raise UserError(f"--n_{split} {n} is out of range: easy-VQA {split} has {total} questions (0 = all)")
    idx = np.arange(total) if n == 0 else np.sort(rng.choice(total, size=n, replace=False))
    positions = rng.permutation(np.arange(len(idx)) % len(LETTERS))  # balanced over a-d
    rows = []
    for i, pos in zip(idx, positions):
        answer = answers[i]
        src = image_paths[image_ids[i]]
        if copy_images:
            rel = f"images/{split}/{os.path.basename(src)}"
            dst = out / rel
            if not dst.exists():
                dst.parent.mkdir(parents=True, exist_ok=True)
                tmp = dst.with_name(f".{dst.name}.tmp")
                shutil.copyfile(src, tmp)
                os.replace(tmp, dst)
            path = rel
        else:
            path = os.path.abspath(src)
        opts = make_options(answer, colours, rng, int(pos))
        rows.append(
            {
                "id": f"{split}_{i:05d}",
                "path": path,
                "question": questions[i],
                **dict(zip(LETTERS, opts)),
                "answer": LETTERS[int(pos)],
                "type": question_type(answer),
                "group": question_group(questions[i], answer, colours),
            }
        )
    return pd.DataFrame(rows, columns=["id", "path", "question", *LETTERS, "answer", "type", "group"])


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", required=True, help="output data folder")
    p.add_argument("--n_train", type=int, default=0, help="train questions to sample (0 = all 38,575)")
    p.add_argument("--n_test", type=int, default=0, help="test questions to sample (0 = all 9,673)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--copy_images", action="store_true", help="copy images into OUT/images, relative paths")
    return p.parse_args(argv)


@report_user_errors
def main(argv=None):
    args = parse_args(argv)
    try:
        import easy_vqa
    except ImportError:
        raise UserError("the easy-vqa package is not installed: pip install easy-vqa") from None

    out = Path(args.out)
    if out.exists() and not out.is_dir():
        raise UserError(f"--out {out} exists and is not a folder")
    vocab = [str(a) for a in easy_vqa.get_answers()]
    colours = [a for a in vocab if a not in YES_NO and a not in SHAPES]
    rng_train, rng_test = (np.random.default_rng(s) for s in np.random.SeedSequence(args.seed).spawn(2))

    train = build_split(
        "train", *easy_vqa.get_train_questions(), easy_vqa.get_train_image_paths(),
        args.n_train, rng_train, colours, out, args.copy_images,
    )
    test = build_split(
        "test", *easy_vqa.get_test_questions(), easy_vqa.get_test_image_paths(),
        args.n_test, rng_test, colours, out, args.copy_images,
    )
    write_csv(out / "train.csv", train)
    # The group tells present from absent, which with the question gives the answer away.
    test = test.drop(columns=["group"])
    write_csv(out / "test.csv", test.drop(columns=["answer"]))
    write_csv(out / "sample_submission.csv", pd.DataFrame({"id": test["id"], "answer": "a"}))
    write_csv(out / "test_answers.csv", test[["id", "answer"]])
    print(
        f"wrote {out}: train.csv ({len(train)} rows), test.csv + sample_submission.csv + test_answers.csv "
        f"({len(test)} rows); answers a-d: {train['answer'].value_counts().sort_index().to_dict()}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
