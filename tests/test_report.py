"""Tests for mcvqa/report.py: fold and ensemble reports from synthetic inputs."""

import json

import numpy as np
import pandas as pd
import pytest

from mcvqa import LETTERS
from mcvqa import metrics, report
from mcvqa.errors import UserError

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _probs(rng, labels, strength=2.0):
    logits = rng.normal(size=(len(labels), 4))
    logits[np.arange(len(labels)), labels] += strength
    p = np.exp(logits)
    return p / p.sum(axis=1, keepdims=True)


def _write_oof(path, n=60, seed=0, question_type=True):
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 4, size=n)
    p = _probs(rng, labels)
    df = pd.DataFrame(p, columns=list(LETTERS))
    df.insert(0, "id", [f"r{i}" for i in range(n)])
    df["answer"] = [LETTERS[i] for i in labels]
    df["pred"] = [LETTERS[i] for i in p.argmax(axis=1)]
    if question_type:
        df["question_type"] = np.array(["color", "shape", "count"])[rng.integers(0, 3, size=n)]
    path.parent.mkdir(parents=True, exist_ok=True)
    df.to_csv(path, index=False)
    return df


def _trainer_state(path):
    history = []
    for step in range(10, 110, 10):
        history.append({"loss": 1.4 - step / 200, "learning_rate": 1e-4, "epoch": step / 100, "step": step})
        if step % 50 == 0:
            history.append({"eval_loss": 1.2 - step / 300, "eval_accuracy": 0.4 + step / 400,
                            "eval_log_loss": 1.2 - step / 300, "epoch": step / 100, "step": step})
    path.write_text(json.dumps({"log_history": history, "global_step": 100, "epoch": 1.0}))


def _assert_pngs(folder, names):
    for name in names:
        data = (folder / name).read_bytes()
        assert data.startswith(PNG_MAGIC), name
        assert len(data) > 1000, name
    assert not [p.name for p in folder.iterdir() if ".tmp" in p.name]


def test_fold_report_full(tmp_path):
    fold = tmp_path / "runs" / "model" / "fold1"
    _write_oof(fold / "oof.csv")
    _trainer_state(fold / "trainer_state.json")
    md = report.write_fold_report(fold)
    assert md == fold / "report" / "report.md"
    pngs = ["confusion.png", "reliability.png", "accuracy_by_type.png", "training_curves.png"]
    _assert_pngs(fold / "report", pngs)
    text = md.read_text()
    for name in pngs:
        assert f"]({name})" in text
    assert "accuracy" in text and "log-loss" in text and "best eval loss" in text
    assert "| color |" in text


def test_fold_report_without_trainer_state_or_types(tmp_path):
    fold = tmp_path / "fold2"
    _write_oof(fold / "oof.csv", question_type=False)
    md = report.write_fold_report(fold)
    _assert_pngs(fold / "report", ["confusion.png", "reliability.png"])
    assert not (fold / "report" / "training_curves.png").exists()
    assert not (fold / "report" / "accuracy_by_type.png").exists()
    assert "training_curves.png" not in md.read_text()


def test_fold_report_without_oof_is_user_error(tmp_path):
    with pytest.raises(UserError, match="oof.csv"):
        report.write_fold_report(tmp_path)


def test_ensemble_report(tmp_path):
    rng = np.random.default_rng(3)
    n = 80
    labels = rng.integers(0, 4, size=n)
    before = _probs(rng, labels, strength=4.0)  # over-confident
    logp = np.log(before) / 2.0
    after = np.exp(logp) / np.exp(logp).sum(axis=1, keepdims=True)
    scores = {
        "Qwen2.5-VL-7B": {"folds": 2, "accuracy": 0.8, "log_loss": 0.6, "log_loss_calibrated": 0.5,
                          "temperature": 1.7, "weight": 0.7},
        "Qwen2.5-VL-3B": {"folds": 2, "accuracy": 0.7, "log_loss": 0.8, "log_loss_calibrated": 0.75,
                          "temperature": 1.2, "weight": 0.3},
    }
    qtypes = np.array(["color", "shape"])[rng.integers(0, 2, size=n)]
    out = tmp_path / "ensemble_report"
    md = report.write_ensemble_report(out, [f"r{i}" for i in range(n)], labels, before, after,
                                      question_types=qtypes, per_model_scores=scores)
    assert md == out / "report.md"
    pngs = ["confusion.png", "reliability.png", "accuracy_by_type.png", "models.png"]
    _assert_pngs(out, pngs)
    text = md.read_text()
    for name in pngs:
        assert f"]({name})" in text
    assert "Qwen2.5-VL-7B" in text and "blend accuracy" in text


def test_ensemble_report_minimal(tmp_path):
    rng = np.random.default_rng(4)
    labels = rng.integers(0, 4, size=20)
    p = _probs(rng, labels)
    md = report.write_ensemble_report(tmp_path / "r", list(range(20)), labels, p, p)
    _assert_pngs(tmp_path / "r", ["confusion.png", "reliability.png"])
    assert md.is_file()


def test_reliability_bins_perfect_calibration():
    probs = np.array([[1.0, 0, 0, 0]] * 10)
    labels = np.zeros(10, dtype=int)
    _, acc, count, ece = metrics.reliability_bins(probs, labels)
    assert count.sum() == 10 and ece == pytest.approx(0.0)


def test_save_figure_failure_leaves_no_temp(tmp_path, monkeypatch):
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots()
    ax.plot([0, 1])

    def boom(*a, **k):
        raise OSError("disk full")

    monkeypatch.setattr(fig, "savefig", boom)
    with pytest.raises(OSError):
        report.save_figure(fig, tmp_path / "x.png")
    assert list(tmp_path.iterdir()) == []
