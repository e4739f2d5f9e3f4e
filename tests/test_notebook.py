"""notebooks/kaggle_2xT4.ipynb runs end to end on a CPU (nbclient, a real Jupyter kernel), over two "sessions".

Session 1 builds a (here empty) wheels folder, installs from it with no index, trains fold 1 of 2 and
leaves fold 2 for the next session, predicts with TTA and writes a submission. Session 2 starts from
session 1's output (as a Kaggle user attaches the previous version), keeps fold 1 and its predictions,
trains and scores fold 2, and ensembles both (the ensemble checks the carried files' provenance). The parameters are overridden the way CI and papermill do, through MCVQA_NOTEBOOK_PARAMS.
"""

import json
from pathlib import Path

import pandas as pd
import pytest

REPO = Path(__file__).resolve().parents[1]
NOTEBOOK = REPO / "notebooks" / "kaggle_2xT4.ipynb"
CPU_TRAINING = ["--num_train_epochs", "1", "--per_device_train_batch_size", "8", "--per_device_eval_batch_size", "32",
                "--min_pixels", "3136", "--max_pixels", "3136", "--disable_tqdm", "true", "--report_to", "none",
                "--logging_steps", "50"]


def execute(params, monkeypatch, workdir):
    import nbformat
    from nbclient import NotebookClient

    nb = nbformat.read(NOTEBOOK, as_version=4)
    monkeypatch.setenv("MCVQA_NOTEBOOK_PARAMS", json.dumps(params))
    workdir.mkdir(parents=True, exist_ok=True)
    NotebookClient(nb, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(workdir)}}).execute()
    return "".join(out.get("text", "") for cell in nb.cells if cell.cell_type == "code" for out in cell.outputs)


def test_the_notebook_has_one_parameters_cell_with_every_knob():
    import nbformat

    nb = nbformat.read(NOTEBOOK, as_version=4)
    nbformat.validate(nb)
    tagged = [c for c in nb.cells if "parameters" in c.metadata.get("tags", [])]
    assert len(tagged) == 1 and nb.cells.index(tagged[0]) == 1
    names = {line.split("=")[0].strip() for line in tagged[0].source.splitlines() if line[:1].isupper()}
    later = "".join(c.source for c in nb.cells[2:] if c.cell_type == "code")
    # Every parameter is used, and nothing after the parameters cell assigns a parameter's value.
    assert all(name in later for name in names)
    assert not [n for n in names if f"\n{n} = " in "\n" + later]
    assert not any(c.outputs for c in nb.cells if c.cell_type == "code"), "commit the notebook without outputs"


def test_two_sessions_train_predict_with_tta_ensemble_and_submit(tiny_model, easy_vqa_dir, tmp_path, monkeypatch):
    session1, session2, wheels = tmp_path / "session1", tmp_path / "session2", tmp_path / "wheels"
    common = dict(
        DATA_DIR=str(easy_vqa_dir), MODEL_DIR=str(tiny_model), CODE_DIR=str(REPO),
        REQUIREMENTS=["requirements.txt"], PIP_ARGS=["--no-index"], RUN_NAME="tiny",
        TRAIN_CONFIG="configs/cpu_tiny.yaml", ACCELERATE_CONFIG="accelerate_configs/cpu.yaml",
        LAUNCH_ARGS=["--num_cpu_threads_per_process", "2"], N_FOLDS=2, FOLDS=[1, 2], TRAIN_ARGS=CPU_TRAINING,
        SESSION_HOURS=1.0, RESERVE_MINUTES=5, FOLD_OVERHEAD_MINUTES=5, FOLD_MINUTES=2, MIN_FOLD_MINUTES=1,
        PREDICT_ARGS=["--batch_size", "32", "--tta_scales", "1.0", "--progress", "false"],
    )
    sample = pd.read_csv(easy_vqa_dir / "sample_submission.csv", dtype=str)

    # Session 1: the wheels cell on an image that lacks nothing (no index: offline), then one fold.
    out = execute({**common, "WORK_DIR": str(session1), "SUBMISSION": str(session1 / "submission.csv"),
                   "BUILD_WHEELS": True, "WHEELS_OUT": str(wheels), "WHEELS_DIR": str(wheels),
                   "MAX_FOLDS_PER_SESSION": 1}, monkeypatch, session1)
    assert "0 package(s) this image lacks" in out and wheels.is_dir()
    assert "fold 1: training for at most 2 min" in out and "fold 1 | acc" in out
    assert "fold 2: next session" in out and "for the next session: [2]" in out
    assert "--resume: no complete checkpoint" in out, "an unfinished fold is launched with --resume"
    assert (session1 / "runs/tiny/fold1/test_probs.csv").is_file() and not (session1 / "runs/tiny/fold2").exists()
    first = pd.read_csv(session1 / "submission.csv", dtype=str)
    assert first["id"].tolist() == sample["id"].tolist() and set(first["answer"]) <= set("abcd")

    # Session 2: the previous output attached, fold 1 kept, fold 2 trained, both predicted and ensembled.
    out = execute({**common, "WORK_DIR": str(session2), "SUBMISSION": str(session2 / "submission.csv"),
                   "INSTALL": False, "PREVIOUS_OUTPUT_DIR": str(session1)}, monkeypatch, session2)
    assert "fold 1: finished in an earlier session" in out and "fold 2 | acc" in out
    assert "finished folds: [1, 2]; trained now: [2]; for the next session: none" in out
    assert "scoring folds [2]; kept from an earlier session: [1]" in out
    for k in (1, 2):
        fold = session2 / "runs/tiny" / f"fold{k}"
        assert (fold / "test_probs.csv").is_file() and (fold / "oof_tta.csv").is_file()
    for name in ("metrics.json", "test_probs.csv", "oof_tta.csv"):  # fold 1 carried over as it was
        assert (session1 / "runs/tiny/fold1" / name).read_bytes() == (session2 / "runs/tiny/fold1" / name).read_bytes()
    second = pd.read_csv(session2 / "submission.csv", dtype=str)
    assert second["id"].tolist() == sample["id"].tolist() and set(second["answer"]) <= set("abcd")
    probs = pd.read_csv(session2 / "ensemble_probs.csv")
    assert probs[list("abcd")].sum(axis=1).round(6).eq(1.0).all()
    assert f"{session2 / 'submission.csv'}: {len(sample)} rows from folds [1, 2]" in out


@pytest.fixture(autouse=True)
def _no_hub(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
