"""Summarise the distillation comparison (bench/distill.sh) into distill.json: the teacher's out-of-fold and test
scores, both students' test scores (accuracy, log-loss, per question type) and the distilled minus the plain."""

import argparse
import json
import sys
from pathlib import Path

import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from mcvqa import LETTERS, metrics  # noqa: E402
from mcvqa.ensemble import read_probs  # noqa: E402
from mcvqa.runs import RunRecord  # noqa: E402


def score(probs, answers, types):
    """metrics.scores of the rows of `answers` (id -> letter), probabilities by id."""
    probs = probs.set_index("id").loc[answers.index, list(LETTERS)].to_numpy(dtype=float)
    return metrics.scores(probs, metrics.letters_to_indices(answers), types.loc[answers.index].to_numpy())


def teacher_oof(folds, train):
    """The teacher's folds' oof.csv together: every train row exactly once, or an error."""
    oof = pd.concat([read_probs(f / "oof.csv") for f in folds], ignore_index=True)
    counts = oof["id"].value_counts()
    missing = sorted(set(train.index) - set(oof["id"]))
    if missing or (counts > 1).any():
        sys.exit(f"error: the teacher's oof.csv files cover {len(set(oof['id']))} of {len(train)} train rows "
                 f"({len(missing)} missing, {int((counts > 1).sum())} twice)")
    return score(oof, train["answer"], train["question_type"])


def student(fold, answers, types):
    state = json.loads((fold / "trainer_state.json").read_text())
    run = json.loads((fold / "metrics.json").read_text())
    record = RunRecord.load(fold)
    curve = [[e["step"], round(e["eval_accuracy"], 4)] for e in state["log_history"] if "eval_accuracy" in e]
    losses = [e["loss"] for e in state["log_history"] if "loss" in e]
    return {
        "test": score(read_probs(fold / "test_probs.csv"), answers, types),
        "oof_fold1": {k[4:]: v for k, v in run.items() if k.startswith("oof_")},
        "steps": state["global_step"], "train_minutes": run["train_runtime"] / 60,
        "last_logged_train_loss": losses[-1] if losses else None,
        "eval_accuracy_by_step": curve, "n_train_rows": run["n_train"],
        "teacher": record.teacher,  # what --teacher_probs read and checked (None for the plain student)
    }


def main():
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--data_dir", required=True)
    ap.add_argument("--runs", required=True, help="folder holding teacher/, plain/ and distilled/")
    ap.add_argument("--out", required=True)
    ap.add_argument("--commands", help="the commands run, one a line")
    ap.add_argument("--timings", help="'stage seconds' lines (bench/distill.sh: 'call' = one whole call)")
    ap.add_argument("--command", default="bash bench/distill.sh")
    ap.add_argument("--setting", nargs="*", default=[], help="key=value pairs recorded as the settings")
    a = ap.parse_args()
    import torch

    data, runs = Path(a.data_dir), Path(a.runs)
    answers = pd.read_csv(data / "test_answers.csv", dtype=str).set_index("id")["answer"]
    types = pd.read_csv(data / "test.csv", dtype=str).set_index("id")["type"]
    train = pd.read_csv(data / "train.csv", dtype=str).set_index("id").rename(columns={"type": "question_type"})

    teacher_folds = sorted((runs / "teacher").glob("fold[0-9]*"))
    fold_test = [read_probs(f / "test_probs.csv").set_index("id").loc[answers.index, list(LETTERS)]
                 for f in teacher_folds]
    mean = metrics.average_probs([p.to_numpy(dtype=float) for p in fold_test])
    teacher_test = pd.DataFrame(mean, columns=list(LETTERS)).assign(id=answers.index.to_numpy())
    teacher = {
        "oof": teacher_oof(teacher_folds, train),
        "test_mean_of_folds": score(teacher_test, answers, types),
        "folds": {f.name: {"test": score(read_probs(f / "test_probs.csv"), answers, types),
                           "steps": json.loads((f / "trainer_state.json").read_text())["global_step"],
                           "train_minutes": json.loads((f / "metrics.json").read_text())["train_runtime"] / 60}
                  for f in teacher_folds},
    }
    plain, distilled = (student(runs / name / "fold1", answers, types) for name in ("plain", "distilled"))
    if plain["steps"] != distilled["steps"]:
        sys.exit(f"error: the students ran {plain['steps']} and {distilled['steps']} steps; the comparison needs the same")
    diff = {k: distilled["test"][k] - plain["test"][k] for k in plain["test"] if k in distilled["test"]}

    def value(v):
        try:
            return json.loads(v)
        except ValueError:
            return v

    timings = []  # [stage, seconds] in the order run; a resumed run lists the stages of each call
    if a.timings and Path(a.timings).is_file():
        timings = [[k, int(v)] for k, v in (line.split() for line in Path(a.timings).read_text().splitlines() if line)]
    result = {
        "distilled_minus_plain_test": diff,
        "teacher": teacher, "plain_student": plain, "distilled_student": distilled,
        "settings": {k: value(v) for k, v in (s.split("=", 1) for s in a.setting)},
        "n_test": int(len(answers)), "n_train": int(len(train)),
        "device": torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu",
        "wall_seconds": timings,
        "command": a.command,
        "commands": Path(a.commands).read_text().splitlines() if a.commands and Path(a.commands).is_file() else [],
        "note": "test: held-out easy-VQA test questions, no TTA; the teacher's test score is the mean of its two "
                "folds' probabilities; its oof covers every train row once (each fold's oof.csv). Both students: the "
                "same model, fold 1 of the teacher's folds.csv, seed and steps, last weights. oof_fold1 of the "
                "distilled student is optimistic (its teacher's probabilities for fold-2 rows come from the teacher "
                "fold trained on fold 1's labels); the test scores are the comparison.",
    }
    Path(a.out).write_text(json.dumps(result, indent=2, default=float))
    brief = {"teacher_oof_accuracy": teacher["oof"]["accuracy"],
             "teacher_test_accuracy": teacher["test_mean_of_folds"]["accuracy"],
             **{f"{n}_test_{k}": s["test"][k] for n, s in (("plain", plain), ("distilled", distilled))
                for k in ("accuracy", "log_loss")},
             "distilled_minus_plain_accuracy": diff["accuracy"], "distilled_minus_plain_log_loss": diff["log_loss"],
             "student_steps": plain["steps"]}
    print(json.dumps(brief, indent=2))
    print(f"wrote {a.out}")


if __name__ == "__main__":
    main()
