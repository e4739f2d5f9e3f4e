"""What a finished fold folder holds, for the device scripts that check their own runs (bench/multinode.sh,
bench/distributed.sh): OOF ids against folds.csv, steps, processes that trained, the recorded weights."""

import json
from pathlib import Path

import pandas as pd

# A fold is complete when training got through its last files; weights are model.safetensors (full fine-tune) or
# adapter_model.safetensors (LoRA).
FINAL_FILES = ("oof.csv", "metrics.json", "trainer_state.json", "train_config.json")


def fold_checks(run, fold=1, per_device_batch=4):
    """A dict that never raises on a finished fold; `complete: False` (with the files found) on an unfinished one.

    `processes` is samples seen / (steps x per-device batch): 2 when two processes really trained.
    """
    from mcvqa.runs import RunRecord, check_weights

    folder = Path(run) / f"fold{fold}"
    r = {"complete": all((folder / n).is_file() for n in FINAL_FILES) and any(folder.glob("*.safetensors"))}
    if not r["complete"]:
        r["files"] = sorted(p.name for p in folder.iterdir()) if folder.is_dir() else []
        return r
    oof = pd.read_csv(folder / "oof.csv", dtype={"id": str})
    folds = pd.read_csv(Path(run) / "folds.csv", dtype={"id": str})
    want = set(folds.loc[folds["fold"] == fold, "id"])
    state = json.loads((folder / "trainer_state.json").read_text())
    metrics = json.loads((folder / "metrics.json").read_text())
    try:
        check_weights(folder, RunRecord.load(folder))
        recorded = True
    except Exception as err:  # noqa: BLE001 - recorded, not raised
        recorded = str(err)
    r.update(oof_rows=len(oof), fold_rows=len(want), oof_ids_once=bool(oof["id"].is_unique and set(oof["id"]) == want),
             steps=state["global_step"],
             processes=metrics["samples_seen"] // max(state["global_step"] * per_device_batch, 1),
             best_checkpoint=Path(state.get("best_model_checkpoint") or "-").name, weights_recorded=recorded,
             oof_accuracy=metrics.get("oof_accuracy"), oof_log_loss=metrics.get("oof_log_loss"))
    return r
