"""Summarise the learning proof (bench/learning.sh) into learning.json: accuracies on held-out test rows."""

import argparse
import json
from pathlib import Path

import numpy as np
import pandas as pd


def accuracy_by_type(probs_csv, answers, types):
    probs = pd.read_csv(probs_csv, dtype={"id": str}).set_index("id").loc[answers.index]
    pred = np.array(list("abcd"))[probs[list("abcd")].to_numpy().argmax(1)]
    right = pred == answers.to_numpy()
    return float(right.mean()), {t: float(right[types.to_numpy() == t].mean()) for t in sorted(set(types))}


def main():
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--data_dir", required=True)
    ap.add_argument("--runs", required=True)
    ap.add_argument("--plain", required=True, help="fold 1 test probabilities without TTA")
    ap.add_argument("--out", required=True)
    a = ap.parse_args()
    import torch

    data, runs = Path(a.data_dir), Path(a.runs)
    answers = pd.read_csv(data / "test_answers.csv", dtype=str).set_index("id")["answer"]
    types = pd.read_csv(data / "test.csv", dtype=str).set_index("id").loc[answers.index, "type"]
    acc, by_type = accuracy_by_type(a.plain, answers, types)
    acc_tta, by_type_tta = accuracy_by_type(runs / "tiny/full/test_probs.csv", answers, types)
    blank, blank_by_type = accuracy_by_type(runs / "blank/full/test_probs.csv", answers, types)
    sub = pd.read_csv(runs / "tiny/submission.csv", dtype=str).set_index("id").loc[answers.index, "answer"]
    right = (sub == answers).to_numpy()
    ens_by_type = {t: float(right[types.to_numpy() == t].mean()) for t in sorted(set(types))}
    metrics = json.loads((runs / "tiny/full/metrics.json").read_text())
    state = json.loads((runs / "tiny/full/trainer_state.json").read_text())
    config = json.loads((runs / "tiny/full/train_config.json").read_text())
    fold1 = json.loads((runs / "tiny/fold1/metrics.json").read_text())
    result = {
        "accuracy": acc, "accuracy_by_type": by_type, "blank_image_accuracy": blank,
        "blank_image_accuracy_by_type": blank_by_type, "accuracy_tta": acc_tta, "accuracy_tta_by_type": by_type_tta,
        "accuracy_ensemble": float(right.mean()), "accuracy_ensemble_by_type": ens_by_type,
        "minutes": metrics["train_runtime"] / 60,
        # The Trainer's own samples/s counts the planned epochs, not the steps a time budget allowed.
        "samples_per_s": state["global_step"] * config["training"]["per_device_train_batch_size"] / metrics["train_runtime"],
        "concurrent_runs_on_the_gpu": 5,
        "n_test": int(len(answers)), "n_train_fold": metrics["n_train"], "oof_accuracy_fold1": fold1.get("oof_accuracy"), "oof_accuracy_by_type_fold1": {k[13:]: v for k, v in fold1.items() if k.startswith("oof_accuracy_")},
        "device": torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu",
        "note": "accuracy: the model trained on all 38,575 train questions (--fold -1), on held-out easy-VQA test "
                "questions, no TTA; accuracy_tta: the same with 12 TTA views; accuracy_ensemble: mean of folds 1, 2 and "
                "the all-rows model, with TTA; blank: the all-rows run with every image grey",
        "command": "COMPARE=1 bash bench/learning.sh 5",
    }
    compare = runs / "compare/full/test_probs.csv"
    if compare.is_file():
        result["compare_112px_accuracy"], result["compare_112px_accuracy_by_type"] = accuracy_by_type(compare, answers, types)
    Path(a.out).write_text(json.dumps(result, indent=2))
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
