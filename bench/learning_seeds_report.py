"""Summarise bench/learning_seeds.sh: every seed's run, its blank-image twin, the mean and the minimum.

Writes OUT/learning.json (issue 17 item 1: from random weights, pretraining then the full fine-tune on one clock
when FULL ran, else pretraining then LoRA) and OUT/learning_lora.json (item 2: the base's zero-shot letter
accuracy, then what train_lora.py's LoRA made of it).
"""

import argparse
import json
import re
import sys
from pathlib import Path

import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parent))
from learning_report import describe  # noqa: E402  (it puts the repository on the path)

TARGET, TYPE_TARGET, MARGIN = 0.95, 0.90, 0.25


def zero_shot(log):
    found = re.search(r"zero-shot accuracy: ([0-9.]+)", log.read_text()) if log.is_file() else None
    return float(found.group(1)) if found else None


def run_entry(work, out, stage, base_name, answers, types):
    """One run of learning_seeds.sh: its base's pretraining, the base's zero-shot letter accuracy and, once
    scored, the second stage (`stage` "" = LoRA, "full_" = full fine-tune) on the held-out questions."""
    run = work / "runs" / (stage + base_name)
    entry = {"finished": (run / "full/test_probs.csv").is_file()}
    base = work / "bases" / base_name / "pretraining.json"
    if base.is_file():
        p = json.loads(base.read_text())
        entry["pretraining"] = {k: p[k] for k in ("minutes", "steps", "rows_seen", "final_loss",
                                                   "open_ended_test_accuracy",
                                                   "open_ended_test_accuracy_by_type", "command")}
    entry["zero_shot_letter_accuracy"] = zero_shot(out / f"zero_shot_{base_name}.log")
    if entry["finished"]:
        entry["stage"] = describe(run, answers, types)
        entry["accuracy"] = entry["stage"]["accuracy"]
        entry["minutes_total"] = entry["stage"]["minutes"] + entry.get("pretraining", {}).get("minutes", 0)
    return entry


def seed_summary(runs, stage, seed):
    """A seed's run of one stage against its blank-image twin, and whether it meets issue 17's targets."""
    main_run, blank = runs[f"{stage}seed{seed}"], runs[f"{stage}blank{seed}"]
    acc, blank_acc = main_run.get("accuracy"), blank.get("accuracy")
    by_type = main_run["stage"]["accuracy_by_type"] if main_run["finished"] else {}
    return {
        "seed": int(seed), "accuracy": acc, "accuracy_by_type": by_type,
        "blank_image_accuracy": blank_acc,
        "blank_image_accuracy_by_type": blank["stage"]["accuracy_by_type"] if blank["finished"] else None,
        "margin_over_blank": None if acc is None or blank_acc is None else acc - blank_acc,
        "minutes_total": main_run.get("minutes_total"),
        "base_zero_shot_letter_accuracy": main_run["zero_shot_letter_accuracy"],
        "base_open_ended_accuracy": main_run.get("pretraining", {}).get("open_ended_test_accuracy"),
        "meets_targets": acc is not None and acc >= TARGET and all(v >= TYPE_TARGET for v in by_type.values())
        and blank_acc is not None and acc - blank_acc >= MARGIN,
    }


def headline_accuracy(seeds, summary):
    """`summary` (min, mean) of the seeds' accuracies: the minimum only when every seed finished."""
    done = [s["accuracy"] for s in seeds if s["accuracy"] is not None]
    if not done or (summary is min and len(done) < len(seeds)):
        return None
    return summary(done)


def headline(seeds):
    """Every seed's accuracy summarised: the minimum (None unless every seed finished), the mean, the verdict."""
    return {"minimum_accuracy": headline_accuracy(seeds, min),
            "mean_accuracy": headline_accuracy(seeds, lambda accs: sum(accs) / len(accs)),
            "every_seed_meets_targets": all(s["meets_targets"] for s in seeds)}


def main():
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--work", required=True, help="learning_seeds.sh's work folder (evqa/, bases/, runs/)")
    ap.add_argument("--seeds", nargs="+", required=True)
    ap.add_argument("--pre", type=float, required=True, help="pretraining minutes per run")
    ap.add_argument("--lora", type=float, required=True, help="LoRA minutes per run")
    ap.add_argument("--full", type=float, default=0, help="full fine-tune minutes per run (0: that stage did not run)")
    ap.add_argument("--base", default="", help="learning_seeds.sh's BASE: the one committed base every run fine-tuned "
                    "(empty: each run pretrained its own)")
    ap.add_argument("--command", required=True)
    ap.add_argument("--alt_flags", default="", help="ALT_FLAGS of the variant LoRA stage (alt_*), empty if none")
    ap.add_argument("--out", required=True, help="folder for learning.json and learning_lora.json")
    a = ap.parse_args()
    import torch

    work, out = Path(a.work), Path(a.out)
    answers = pd.read_csv(work / "evqa/test_answers.csv", dtype=str).set_index("id")["answer"]
    types = pd.read_csv(work / "evqa/test.csv", dtype=str).set_index("id").loc[answers.index, "type"]
    if not a.lora and not a.full:
        sys.exit("learning_seeds_report.py: --lora 0 and --full 0: no second stage ran")
    runs = {}
    stages = tuple(stage for stage, minutes in (("", a.lora), ("full_", a.full)) if minutes)
    for seed in a.seeds:
        for stage in stages:
            for base_name in (f"seed{seed}", f"blank{seed}"):
                runs[stage + base_name] = run_entry(work, out, stage, base_name, answers, types)
    summaries = {stage: [seed_summary(runs, stage, seed) for seed in a.seeds] for stage in stages}
    common = {
        "n_test": int(len(answers)), "seeds_run": [int(s) for s in a.seeds],
        "device": torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu",
        "concurrent_runs_on_the_gpu": len(runs), "command": a.command,
        "targets": f"accuracy >= {TARGET}, every question type >= {TYPE_TARGET}, >= {MARGIN:.2f} over the blank twin",
    }
    # Item 1 (from random weights): pretraining then the full fine-tune when FULL ran, else pretraining then LoRA.
    item1 = "full_" if a.full else ""
    second = (f"{a.full:g} min full fine-tune (train_lora.py, bench/learning.yaml)" if a.full else
              f"{a.lora:g} min LoRA (train_lora.py, bench/learning_lora.yaml)")
    learning = {**common, **headline(summaries[item1]), "pretrain_minutes": a.pre, "lora_minutes": a.lora,
                "full_minutes": a.full, "seeds": summaries[item1], "runs": runs,
                "recipe": (f"the committed base {a.base} (bench/pretrain_tiny.py; blank twins fine-tune it on grey "
                           f"images) -> {second}" if a.base else
                           f"random init -> {a.pre:g} min open-ended pretraining (bench/pretrain_tiny.py) -> {second}")
                          + " on one clock; every run shared one GPU with the others"}
    if a.lora:  # LORA=0: the full fine-tune alone (REUSE=1 on an earlier run's bases), no item-2 record
        lora = {**common, **headline(summaries[""]), "lora_minutes": a.lora,
                "note": "the base: bench/pretrain_tiny.py's open-ended model (never saw options or letters); "
                        "zero-shot: its restricted a-d accuracy before LoRA (tools/zero_shot.py); then train_lora.py with "
                        "bench/learning_lora.yaml and the command's LORA_FLAGS (LoRA on the language model, frozen "
                        "vision tower; the loss and rate as LORA_FLAGS set them)",
                "seeds": [{k: s[k] for k in ("seed", "base_zero_shot_letter_accuracy", "base_open_ended_accuracy",
                                             "accuracy", "accuracy_by_type", "blank_image_accuracy", "margin_over_blank",
                                             "meets_targets")} | {"lora_minutes_run": runs[f"seed{s['seed']}"].get(
                                                 "stage", {}).get("minutes")} for s in summaries[""]]}
        if a.alt_flags:
            alt = []
            for seed in a.seeds:
                entry = run_entry(work, out, "alt_", f"seed{seed}", answers, types)
                runs[f"alt_seed{seed}"] = entry
                alt.append({"seed": int(seed), "accuracy": entry.get("accuracy"),
                            "accuracy_by_type": entry.get("stage", {}).get("accuracy_by_type"),
                            "lora_minutes_run": entry.get("stage", {}).get("minutes")})
            lora["variant"] = {"flags": a.alt_flags, "note": "a second LoRA stage on the same image bases, 1 loader "
                               "worker, beside the recipe's", "seeds": alt,
                               "minimum_accuracy": headline_accuracy(alt, min), "mean_accuracy": headline_accuracy(
                                   alt, lambda accs: sum(accs) / len(accs))}
    (out / "learning.json").write_text(json.dumps(learning, indent=2) + "\n")
    if a.lora:
        (out / "learning_lora.json").write_text(json.dumps(lora, indent=2) + "\n")
    print(json.dumps({k: v for k, v in learning.items() if k != "runs"}, indent=2))


if __name__ == "__main__":
    main()
