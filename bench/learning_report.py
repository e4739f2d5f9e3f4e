"""Summarise the learning proof (bench/learning.sh) into learning.json: accuracies on held-out test rows."""

import argparse
import json
import sys
from pathlib import Path

import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from mcvqa import metrics  # noqa: E402
from mcvqa.runs import RunRecord  # noqa: E402


def accuracy_by_type(probs_csv, answers, types):
    probs = pd.read_csv(probs_csv, dtype={"id": str}).set_index("id").loc[answers.index]
    pred = metrics.indices_to_letters(probs[list("abcd")].to_numpy().argmax(1))
    table = metrics.accuracy_by_type(types.to_numpy(), answers.to_numpy(), pred)
    return metrics.prediction_accuracy(answers.to_numpy(), pred), table["accuracy"].to_dict()


def describe(run, answers, types):
    """Test accuracy (overall, by type) and the run's own training figures."""
    metrics = json.loads((run / "full/metrics.json").read_text())
    state = json.loads((run / "full/trainer_state.json").read_text())
    record = RunRecord.load(run / "full")
    acc, by_type = accuracy_by_type(run / "full/test_probs.csv", answers, types)
    flags = {k: v for part in (record.data, record.run, record.model) for k, v in vars(part).items()
             if k in ("oversample", "blank_images", "min_pixels", "max_pixels")}
    return {"accuracy": acc, "accuracy_by_type": by_type, "minutes": metrics["train_runtime"] / 60,
            "steps": state["global_step"], "epochs": state.get("epoch"),
            # The Trainer's own samples/s counts the planned epochs, not the steps a time budget allowed.
            "samples_per_s": metrics.get("samples_per_s"), "learning_rate": record.training["learning_rate"],
            "n_train_rows": metrics["n_train"], **flags}


def main():
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--data_dir", required=True)
    ap.add_argument("--runs", required=True, help="folder of run folders, each with full/test_probs.csv")
    ap.add_argument("--main", default="main", help="the run the headline keys describe")
    ap.add_argument("--blank", default="blank", help="its blank-image twin")
    ap.add_argument("--command", default="bash bench/learning.sh")
    ap.add_argument("--out", required=True)
    ap.add_argument("--device", default=None, help="the GPU the runs used, when summarising them elsewhere "
                                                     "(default: this machine's)")
    ap.add_argument("--concurrent", type=int, default=None,
                    help="runs that shared the GPU with the main run (default: the run folders counted)")
    a = ap.parse_args()
    import torch

    data, runs = Path(a.data_dir), Path(a.runs)
    answers = pd.read_csv(data / "test_answers.csv", dtype=str).set_index("id")["answer"]
    types = pd.read_csv(data / "test.csv", dtype=str).set_index("id").loc[answers.index, "type"]
    trained = sorted(r for r in runs.iterdir() if r.is_dir())  # every run that shared the GPU, finished or not
    every = {r.name: describe(r, answers, types) for r in trained if (r / "full/test_probs.csv").is_file()}
    if a.main not in every:
        sys.exit(f"error: {runs / a.main}: no full/test_probs.csv (the run did not finish; see its train log); "
                 f"scored runs: {', '.join(every) or 'none'}")
    main_run = every[a.main]
    concurrent = a.concurrent or len(trained)
    blank = every.get(a.blank, {"accuracy": None, "accuracy_by_type": None})  # BLANK=0: no twin this time
    result = {
        "accuracy": main_run["accuracy"], "accuracy_by_type": main_run["accuracy_by_type"],
        "blank_image_accuracy": blank["accuracy"], "blank_image_accuracy_by_type": blank["accuracy_by_type"],
        "margin_over_blank": None if blank["accuracy"] is None else main_run["accuracy"] - blank["accuracy"],
        "minutes": main_run["minutes"], "samples_per_s": main_run["samples_per_s"],
        "concurrent_runs_on_the_gpu": concurrent, "n_test": int(len(answers)),
        "device": a.device or (torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu"),
        "runs": every, "command": a.command,
        "note": "every run: a tiny random-init Qwen2.5-VL trained on all 38,575 easy-VQA train questions (--fold -1), "
                "scored without TTA on held-out easy-VQA test questions; blank: the main run's settings with every "
                "image grey" + ("; the runs shared one GPU, so samples_per_s is per run" if concurrent > 1 else ""),
    }
    Path(a.out).write_text(json.dumps(result, indent=2))
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
