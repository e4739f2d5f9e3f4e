"""Tests for mcvqa/ensemble.py and the ensemble.py script (CPU, synthetic data, a few seconds)."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from conftest import stamp
from mcvqa import LETTERS
from mcvqa import ensemble as ens
from mcvqa.errors import UserError

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
import ensemble as ensemble_script  # noqa: E402


# ---------------------------------------------------------------------------------------------
# helpers
# ---------------------------------------------------------------------------------------------


def probs_frame(ids, probs, **extra):
    df = pd.DataFrame(np.asarray(probs), columns=list(LETTERS))
    df.insert(0, "id", [str(i) for i in ids])
    for k, v in extra.items():
        df[k] = v
    return df


def synthetic_probs(rng, labels, strength, temperature=1.0):
    """Probabilities whose true class gets `strength` extra logit, softened/sharpened by `temperature`."""
    logits = rng.normal(size=(len(labels), 4))
    logits[np.arange(len(labels)), labels] += strength
    z = logits / temperature
    z -= z.max(axis=1, keepdims=True)
    p = np.exp(z)
    return p / p.sum(axis=1, keepdims=True)


def write_probs(path, ids, probs, **extra):
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    probs_frame(ids, probs, **extra).to_csv(path, index=False)
    return path


def make_runs(tmp_path, n_train=80, n_test=30, models=(("good", 3.0), ("weak", 0.5)), folds=2, seed=0):
    """runs/<model>/fold{k}/{oof.csv,test_probs.csv} + data/sample_submission.csv."""
    rng = np.random.default_rng(seed)
    data = tmp_path / "data"
    data.mkdir()
    test_ids = [f"t{i:03d}" for i in range(n_test)]
    pd.DataFrame({"id": test_ids, "answer": ["a"] * n_test}).to_csv(data / "sample_submission.csv", index=False)
    train_ids = np.array([f"r{i:03d}" for i in range(n_train)])
    labels = rng.integers(0, 4, size=n_train)
    test_labels = rng.integers(0, 4, size=n_test)
    qtypes = np.array(["color", "shape", "count", "yes/no"])[rng.integers(0, 4, size=n_train)]
    runs = tmp_path / "runs"
    for name, strength in models:
        for k in range(1, folds + 1):
            fold = runs / name / f"fold{k}"
            rows = np.arange(n_train) % folds == (k - 1)
            p = synthetic_probs(rng, labels[rows], strength)
            write_probs(fold / "oof.csv", train_ids[rows], p,
                        answer=[LETTERS[i] for i in labels[rows]],
                        pred=[LETTERS[i] for i in p.argmax(axis=1)],
                        question_type=qtypes[rows])
            tp = synthetic_probs(rng, test_labels, strength)
            order = rng.permutation(n_test)  # test rows shuffled: alignment must fix the order
            write_probs(fold / "test_probs.csv", np.array(test_ids)[order], tp[order])
            stamp(fold, "oof.csv", "test_probs.csv")
    return runs, data, test_ids


def args(runs, data, **kw):
    return ensemble_script.EnsembleArguments(output_dir=str(runs), data_dir=str(data), **kw)


# ---------------------------------------------------------------------------------------------
# reading + alignment
# ---------------------------------------------------------------------------------------------


def test_align_shuffled_rows(tmp_path):
    rng = np.random.default_rng(1)
    ids = [f"x{i}" for i in range(20)]
    p = rng.dirichlet(np.ones(4), size=20)
    order = rng.permutation(20)
    path = write_probs(tmp_path / "m" / "fold1" / "test_probs.csv", np.array(ids)[order], p[order])
    (aligned,) = ens.align([ens.read_probs(path)], ids)
    np.testing.assert_allclose(aligned, p, atol=1e-12)


@pytest.mark.parametrize("case", ["missing", "extra", "duplicate"])
def test_align_errors_name_file_and_ids(tmp_path, case):
    ids = [f"x{i}" for i in range(10)]
    p = np.full((10, 4), 0.25)
    good = write_probs(tmp_path / "good.csv", ids, p)
    if case == "missing":
        bad_ids, bad_p, expect = ids[:-1], p[:-1], "x9"
    elif case == "extra":
        bad_ids, bad_p, expect = ids + ["zz_extra"], np.vstack([p, p[:1]]), "zz_extra"
    else:
        bad_ids, bad_p, expect = ids + ["x3"], np.vstack([p, p[:1]]), "x3"
    bad = write_probs(tmp_path / "bad_file.csv", bad_ids, bad_p)
    frames = [ens.read_probs(good)]
    with pytest.raises(UserError) as err:
        frames.append(ens.read_probs(bad))  # duplicates are caught on reading already
        ens.align(frames, ids)
    msg = str(err.value)
    assert "bad_file.csv" in msg and expect in msg
    assert "good.csv" not in msg
    # align() itself also refuses duplicates (frames built in memory)
    if case == "duplicate":
        df = probs_frame(bad_ids, bad_p)
        with pytest.raises(UserError, match="x3"):
            ens.align({"mem.csv": df}, ids)


@pytest.mark.parametrize("bad_value,match", [(1.5, "outside"), (-0.2, "outside"), (0.9, "sum to 1"), ("", "non-numeric")])
def test_read_probs_rejects_bad_probabilities(tmp_path, bad_value, match):
    df = probs_frame(["x0", "x1"], np.full((2, 4), 0.25)).astype(object)
    df.loc[1, "a"] = bad_value
    path = tmp_path / "weird.csv"
    df.to_csv(path, index=False)
    with pytest.raises(UserError, match=match) as err:
        ens.read_probs(path)
    assert "weird.csv" in str(err.value) and "x1" in str(err.value)


# ---------------------------------------------------------------------------------------------
# calibration, weights, vote
# ---------------------------------------------------------------------------------------------


def test_fit_temperature_recovers_known_temperature():
    rng = np.random.default_rng(2)
    labels = rng.integers(0, 4, size=4000)
    logits = rng.normal(size=(4000, 4))
    logits[np.arange(4000), labels] += 1.5
    calibrated = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    # sample labels from the calibrated model so that T=1 is the truth for `calibrated`
    u = rng.random(4000)[:, None]
    labels = (u > np.cumsum(calibrated, axis=1)).sum(axis=1).clip(0, 3)
    overconfident = ens.apply_temperature(calibrated, 1 / 2.5)  # sharpened by T=0.4
    t = ens.fit_temperature(overconfident, labels)
    assert t > 1
    assert abs(t - 2.5) / 2.5 < 0.15
    recovered = ens.apply_temperature(overconfident, t)
    assert ens.log_loss(recovered, labels) < ens.log_loss(overconfident, labels)
    # probabilities that are already calibrated stay near T=1
    assert 0.85 < ens.fit_temperature(calibrated, labels) < 1.15


def test_apply_temperature_one_is_identity():
    p = np.random.default_rng(3).dirichlet(np.ones(4), size=10)
    np.testing.assert_allclose(ens.apply_temperature(p, 1.0), p, atol=1e-9)


@pytest.mark.parametrize("space", ["prob", "logprob"])
def test_fit_weights_favours_good_model(space):
    rng = np.random.default_rng(4)
    labels = rng.integers(0, 4, size=500)
    good = synthetic_probs(rng, labels, 3.0)
    noise = rng.dirichlet(np.ones(4), size=500)
    w = ens.fit_weights([noise, good], labels, space=space)
    assert w.shape == (2,)
    assert (w >= 0).all() and abs(w.sum() - 1) < 1e-9
    assert w[1] > 0.8
    blended = ens.blend([noise, good], w, space)
    assert ens.log_loss(blended, labels) <= ens.log_loss(ens.blend([noise, good], None, space), labels) + 1e-9


def test_weights_ignore_test_probabilities(tmp_path, capsys):
    """Same OOF, wildly different test probabilities: identical weights."""
    runs, data, _ = make_runs(tmp_path)
    first = ensemble_script.main(args(runs, data, submission=str(tmp_path / "s1.csv")))
    for tp in runs.glob("*/fold*/test_probs.csv"):
        df = pd.read_csv(tp, dtype={"id": str})
        df[list(LETTERS)] = np.random.default_rng(5).dirichlet(np.ones(4) * 0.1, size=len(df))
        df.to_csv(tp, index=False)
        stamp(tp.parent, tp.name)
    second = ensemble_script.main(args(runs, data, submission=str(tmp_path / "s2.csv")))
    assert first.summary["weights"] == second.summary["weights"]
    assert first.summary["temperatures"] == second.summary["temperatures"]


def test_blend_rows_sum_to_one():
    rng = np.random.default_rng(6)
    ps = [rng.dirichlet(np.ones(4), size=7) for _ in range(3)]
    for space in ("prob", "logprob"):
        out = ens.blend(ps, [0.2, 0.3, 0.5], space)
        np.testing.assert_allclose(out.sum(axis=1), 1.0)


def test_vote_majority_and_ties():
    a = np.array([[0.6, 0.2, 0.1, 0.1], [0.4, 0.5, 0.05, 0.05], [0.1, 0.1, 0.7, 0.1]])
    b = np.array([[0.5, 0.3, 0.1, 0.1], [0.7, 0.1, 0.1, 0.1], [0.1, 0.1, 0.1, 0.7]])
    c = np.array([[0.1, 0.8, 0.05, 0.05], [0.3, 0.6, 0.05, 0.05], [0.1, 0.1, 0.6, 0.2]])
    # row0: a,a,b -> a; row1: b,a,b -> b; row2: c,d,c -> c
    assert ens.vote([a, b, c]).tolist() == [0, 1, 2]
    # two models, a tie in every row: the letter with the higher mean probability wins
    x = np.array([[0.55, 0.45, 0, 0], [0.0, 0.0, 0.9, 0.1]])
    y = np.array([[0.30, 0.70, 0, 0], [0.0, 0.0, 0.45, 0.55]])
    # row0: votes a,b; mean a=.425 b=.575 -> b. row1: votes c,d; mean c=.675 -> c
    assert ens.vote([x, y]).tolist() == [1, 2]


# ---------------------------------------------------------------------------------------------
# submission validation
# ---------------------------------------------------------------------------------------------


def _template():
    return pd.DataFrame({"id": ["q1", "q2", "q3"], "answer": ["a", "a", "a"]})


def test_validate_submission_accepts_good():
    sub = ens.make_submission(_template(), [0, 3, 2])
    assert ens.validate_submission(sub, _template())["answer"].tolist() == ["a", "d", "c"]


@pytest.mark.parametrize(
    "mutate,match",
    [
        (lambda s: s.iloc[[1, 0, 2]].reset_index(drop=True), "order"),
        (lambda s: s.iloc[:2], "missing"),
        (lambda s: pd.concat([s, s.iloc[:1]], ignore_index=True), "duplicated"),
        (lambda s: s.rename(columns={"answer": "label"}), "columns"),
        (lambda s: s[["answer", "id"]], "columns"),
        (lambda s: s.assign(answer=["a", "e", "b"]), "not one of"),
        (lambda s: s.assign(id=["q1", "q2", "zz"]), "zz"),
    ],
)
def test_validate_submission_rejects(mutate, match):
    sub = mutate(ens.make_submission(_template(), [0, 1, 2]))
    with pytest.raises(UserError, match=match):
        ens.validate_submission(sub, _template())


# ---------------------------------------------------------------------------------------------
# script: end to end, atomic writes, errors
# ---------------------------------------------------------------------------------------------


def test_main_end_to_end(tmp_path, capsys):
    runs, data, test_ids = make_runs(tmp_path)
    result = ensemble_script.main(args(runs, data, report=True))
    out = capsys.readouterr().out
    sub = pd.read_csv(runs / "submission.csv", dtype=str, keep_default_na=False)
    template = pd.read_csv(data / "sample_submission.csv", dtype=str, keep_default_na=False)
    assert list(sub.columns) == list(template.columns)
    assert sub["id"].tolist() == test_ids
    assert sub["answer"].isin(LETTERS).all()
    probs = pd.read_csv(runs / "ensemble_probs.csv", dtype={"id": str})
    assert probs["id"].tolist() == test_ids
    np.testing.assert_allclose(probs[list(LETTERS)].sum(axis=1), 1.0, atol=1e-6)
    assert (sub["answer"].to_numpy() == np.array(LETTERS)[probs[list(LETTERS)].to_numpy().argmax(axis=1)]).all()
    summary = json.loads((runs / "ensemble.json").read_text())
    assert summary["method"] == "weights"
    assert summary["weights"]["good"] > summary["weights"]["weak"]
    assert abs(sum(summary["weights"].values()) - 1) < 1e-9
    assert set(summary["temperatures"]) == {"good", "weak"}
    assert "oof_blend" in summary
    # per-model and blend scores printed
    for name in ("good", "weak"):
        line = next(line for line in out.splitlines() if line.strip().startswith(f"{name}:"))
        assert "2 fold(s)" in line and "accuracy" in line and "log-loss" in line
    assert "blend" in out and "accuracy" in out
    assert (runs / "ensemble_report" / "report.md").is_file()
    assert result.submission.equals(sub)
    assert not [p for p in runs.iterdir() if p.name.endswith(".tmp")]


@pytest.mark.parametrize("method", ["mean", "vote", "weights"])
def test_main_methods(tmp_path, method, capsys):
    runs, data, test_ids = make_runs(tmp_path)
    ensemble_script.main(args(runs, data, method=method, temperature=False, space="logprob"))
    sub = pd.read_csv(runs / "submission.csv", dtype=str)
    assert sub["id"].tolist() == test_ids and sub["answer"].isin(LETTERS).all()
    assert json.loads((runs / "ensemble.json").read_text())["method"] == method


def test_main_prefers_oof_tta_and_handles_models_without_oof(tmp_path, capsys):
    runs, data, _ = make_runs(tmp_path)
    # oof_tta.csv beside oof.csv is preferred
    tta = runs / "good" / "fold1" / "oof_tta.csv"
    (runs / "good" / "fold1" / "oof.csv").rename(tta)
    write_probs(runs / "good" / "fold1" / "oof.csv", ["junk"], [[1, 0, 0, 0]], answer=["a"], pred=["a"])
    stamp(runs / "good" / "fold1", "oof.csv", "oof_tta.csv")
    # a full-data model with no OOF: auto falls back to mean
    full = runs / "full_model" / "full"
    full.mkdir(parents=True)
    (full / "test_probs.csv").write_bytes((runs / "good" / "fold1" / "test_probs.csv").read_bytes())
    stamp(full, "test_probs.csv")
    result = ensemble_script.main(args(runs, data))
    out = capsys.readouterr().out
    assert result.summary["method"] == "mean"
    assert "full_model: 1 fold(s), no OOF" in out
    assert str(tta) in result.per_model_scores["good"]["oof_files"]
    # --method weights refuses when a model has no OOF
    with pytest.raises(SystemExit) as exc:
        ensemble_script.main(args(runs, data, method="weights"))
    assert exc.value.code == 2
    assert "full_model" in capsys.readouterr().err


def test_main_explicit_files(tmp_path, capsys):
    runs, data, test_ids = make_runs(tmp_path)
    files = [str(p) for p in sorted(runs.glob("good/fold*/test_probs.csv"))]
    out_sub = tmp_path / "elsewhere" / "sub.csv"
    result = ensemble_script.main(args(runs, data, files=files, submission=str(out_sub)))
    assert result.summary["models"] == ["good"]
    assert pd.read_csv(out_sub, dtype=str)["id"].tolist() == test_ids
    assert (out_sub.parent / "ensemble.json").is_file()


def test_main_bad_test_file_is_user_error(tmp_path, capsys):
    runs, data, _ = make_runs(tmp_path)
    bad = runs / "weak" / "fold2" / "test_probs.csv"
    df = pd.read_csv(bad, dtype={"id": str})
    df.iloc[:-2].to_csv(bad, index=False)  # two ids missing
    stamp(bad.parent, bad.name)
    with pytest.raises(SystemExit) as exc:
        ensemble_script.main(args(runs, data))
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("error:") and "weak/fold2/test_probs.csv" in err and "missing" in err
    assert not (runs / "submission.csv").exists()


def test_atomic_write_failure_keeps_old_submission(tmp_path, monkeypatch, capsys):
    runs, data, _ = make_runs(tmp_path)
    old = "id,answer\nold,a\n"
    (runs / "submission.csv").write_text(old)

    real_to_csv = pd.DataFrame.to_csv

    def failing_to_csv(self, path_or_buf=None, *a, **kw):
        if hasattr(path_or_buf, "write") and "answer" in self.columns:
            path_or_buf.write("id,answer\nt000,")  # half a file, then the disk "fills up"
            raise OSError(28, "No space left on device")
        return real_to_csv(self, path_or_buf, *a, **kw)

    monkeypatch.setattr(pd.DataFrame, "to_csv", failing_to_csv)
    with pytest.raises(SystemExit) as exc:
        ensemble_script.main(args(runs, data))
    assert exc.value.code == 2
    assert "No space left" in capsys.readouterr().err
    assert (runs / "submission.csv").read_text() == old
    leftovers = [p.name for p in runs.iterdir() if p.name.startswith(".") or p.name.endswith(".tmp")]
    assert leftovers == []

    # and when there was no old submission, none appears
    (runs / "submission.csv").unlink()
    with pytest.raises(SystemExit):
        ensemble_script.main(args(runs, data))
    assert not (runs / "submission.csv").exists()
    assert [p.name for p in runs.iterdir() if p.name.endswith(".tmp")] == []


def test_no_test_probs_is_user_error(tmp_path, capsys):
    runs, data, _ = make_runs(tmp_path)
    for p in runs.glob("*/fold*/test_probs.csv"):
        p.unlink()
    with pytest.raises(SystemExit) as exc:
        ensemble_script.main(args(runs, data))
    assert exc.value.code == 2
    assert "predict.py" in capsys.readouterr().err


def test_cli_config_yaml(tmp_path, capsys):
    runs, data, _ = make_runs(tmp_path)
    cfg = tmp_path / "ens.yaml"
    cfg.write_text(f"output_dir: {runs}\ndata_dir: {data}\nmethod: vote\ntemperature: false\n")
    result = ensemble_script.cli(["--config", str(cfg), "--method", "mean"])
    assert result.summary["method"] == "mean"  # CLI overrides YAML
    assert result.summary["temperature_scaling"] is False  # YAML overrides default
    cfg.write_text("not_a_flag: 1\n")
    with pytest.raises(SystemExit) as exc:
        ensemble_script.cli(["--config", str(cfg)])
    assert exc.value.code == 2
    assert "not_a_flag" in capsys.readouterr().err


def test_subprocess_missing_output_dir(tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    pd.DataFrame({"id": ["t1"], "answer": ["a"]}).to_csv(data / "sample_submission.csv", index=False)
    proc = subprocess.run(
        [sys.executable, str(REPO / "ensemble.py"), "--output_dir", str(tmp_path / "nope"), "--data_dir", str(data)],
        capture_output=True, text=True, cwd=tmp_path, timeout=60,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )
    assert proc.returncode == 2
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:")
    assert "predict.py" in lines[0] and "Traceback" not in proc.stderr


def test_discover_models_groups_folds(tmp_path):
    for rel in ["m7b/fold1", "m7b/fold2", "m7b/fold10", "m3b/full", "m3b/fold1", "grp/m2/fold1"]:
        d = tmp_path / rel
        d.mkdir(parents=True)
        (d / "test_probs.csv").write_text("id,a,b,c,d\n")
        stamp(d, "test_probs.csv")
    # Named like nothing train_lora.py writes, or inside a fold folder: not fold folders.
    for rel in ["m7b/notafold", "m3b/fold_full", "m7b/fold1/checkpoints/fold1"]:
        (tmp_path / rel).mkdir(parents=True)
        (tmp_path / rel / "test_probs.csv").write_text("id,a,b,c,d\n")
    (tmp_path / "m7b" / "fold2" / "oof.csv").write_text("")
    (tmp_path / "m7b" / "fold2" / "oof_tta.csv").write_text("")
    stamp(tmp_path / "m7b" / "fold2", "oof.csv", "oof_tta.csv")
    models = {m.name: m for m in ens.discover_models(tmp_path)}
    assert sorted(models) == ["grp/m2", "m3b", "m7b"]
    assert [p.parent.name for p in models["m7b"].test_files] == ["fold1", "fold2", "fold10"]
    assert [p.name for p in models["m7b"].oof_files] == ["oof_tta.csv"]
    assert [p.parent.name for p in models["m3b"].test_files] == ["fold1", "full"] and models["m3b"].oof_files == []


def test_a_trained_fold_without_predictions_is_refused(tmp_path):
    (tmp_path / "m" / "fold1").mkdir(parents=True)
    (tmp_path / "m" / "fold1" / "test_probs.csv").write_text("id,a,b,c,d\n")
    stamp(tmp_path / "m" / "fold1", "test_probs.csv")
    stamp(tmp_path / "m" / "fold2")
    with pytest.raises(UserError, match="folds 2 are trained but not predicted: python predict.py"):
        ens.discover_models(tmp_path)


# ---------------------------------------------------------------------------------------------
# stacking (--method stack, and auto's choice between stack and weights)
# ---------------------------------------------------------------------------------------------


def complementary_probs(rng, labels, good_letters, strength=4.0):
    """A model that knows the answer only on rows whose answer is one of `good_letters` (noise elsewhere)."""
    logits = rng.normal(size=(len(labels), 4))
    good = np.isin(labels, good_letters)
    logits[np.flatnonzero(good), labels[good]] += strength
    p = np.exp(logits)
    return p / p.sum(axis=1, keepdims=True)


def make_complementary_runs(tmp_path, n_train=320, n_test=40, folds=2, seed=0):
    """Two runs, `ab` good on rows answered a/b and `cd` on rows answered c/d: a stacker can learn whom to
    trust per letter, a blend cannot. Same layout as make_runs; returns (runs, data, test_ids, test_labels)."""
    rng = np.random.default_rng(seed)
    data = tmp_path / "data"
    data.mkdir()
    test_ids = [f"t{i:03d}" for i in range(n_test)]
    pd.DataFrame({"id": test_ids, "answer": ["a"] * n_test}).to_csv(data / "sample_submission.csv", index=False)
    train_ids = np.array([f"r{i:03d}" for i in range(n_train)])
    labels = rng.permutation(np.arange(n_train) % 4)
    test_labels = rng.integers(0, 4, size=n_test)
    runs = tmp_path / "runs"
    for name, good in (("ab", [0, 1]), ("cd", [2, 3])):
        for k in range(1, folds + 1):
            fold = runs / name / f"fold{k}"
            rows = np.arange(n_train) % folds == (k - 1)
            p = complementary_probs(rng, labels[rows], good)
            write_probs(fold / "oof.csv", train_ids[rows], p, answer=[LETTERS[i] for i in labels[rows]],
                        pred=[LETTERS[i] for i in p.argmax(axis=1)])
            write_probs(fold / "test_probs.csv", test_ids, complementary_probs(rng, test_labels, good))
            stamp(fold, "oof.csv", "test_probs.csv")
    return runs, data, test_ids, test_labels


def test_stack_beats_mean_on_complementary_models():
    rng = np.random.default_rng(10)
    labels = rng.permutation(np.arange(600) % 4)
    ab, cd = complementary_probs(rng, labels, [0, 1]), complementary_probs(rng, labels, [2, 3])
    stacked = ens.nested_stack([ab, cd], labels)
    mean = ens.blend([ab, cd])
    # honest (nested) stacker vs the mean, which is not even fitted: still clearly better
    assert ens.log_loss(stacked, labels) < ens.log_loss(mean, labels) - 0.2
    assert ens.accuracy(stacked, labels) >= ens.accuracy(mean, labels) - 0.01
    np.testing.assert_allclose(stacked.sum(axis=1), 1.0, atol=1e-9)
    # it learnt whom to trust per letter: a's logit leans on ab's log p(a), c's on cd's log p(c)
    model = ens.fit_stacker(ens.stack_features([ab, cd]), labels)[0]
    assert model.coef_[0, 0] > model.coef_[0, 4] and model.coef_[2, 6] > model.coef_[2, 2]


def test_nested_cv_never_sees_a_rows_own_label():
    """Labels unrelated to the probabilities: the nested estimate is chance, a fit scored in-sample is not."""
    rng = np.random.default_rng(11)
    labels = rng.permutation(np.arange(160) % 4)  # balanced: always guessing one letter scores exactly 0.25
    noise = [rng.dirichlet(np.ones(4), size=len(labels)) for _ in range(4)]
    nested = ens.nested_stack(noise, labels)
    assert ens.accuracy(nested, labels) < 0.33
    assert ens.log_loss(nested, labels) > np.log(4) - 0.02
    x = ens.stack_features(noise)
    in_sample = ens.fit_stacker(x, labels, cs=(100.0,))[0]
    assert ens.accuracy(ens.stack_predict(in_sample, x), labels) > ens.accuracy(nested, labels) + 0.1
    # the weights' rival estimate is honest too
    assert ens.log_loss(ens.nested_weights(noise, labels), labels) > np.log(4) - 0.02


def test_main_stack_end_to_end(tmp_path, capsys):
    runs, data, test_ids, test_labels = make_complementary_runs(tmp_path)
    result = ensemble_script.main(args(runs, data, method="stack", report=True))
    out = capsys.readouterr().out
    sub = pd.read_csv(runs / "submission.csv", dtype=str, keep_default_na=False)
    template = pd.read_csv(data / "sample_submission.csv", dtype=str, keep_default_na=False)
    assert list(sub.columns) == list(template.columns) and sub["id"].tolist() == test_ids
    assert sub["answer"].isin(LETTERS).all()
    probs = pd.read_csv(runs / "ensemble_probs.csv", dtype={"id": str})
    p = probs[list(LETTERS)].to_numpy()
    np.testing.assert_allclose(p.sum(axis=1), 1.0, atol=1e-6)
    assert (sub["answer"].to_numpy() == np.array(LETTERS)[p.argmax(axis=1)]).all()
    assert ens.accuracy(p, test_labels) > 0.8  # the test rows are stacked with the OOF-fitted regression
    summary = json.loads((runs / "ensemble.json").read_text())
    assert summary["method"] == "stack" and summary["weights"] is None
    stack = summary["stack"]
    nested = stack["nested_cv"]
    assert nested["rows"] == 320 and nested["outer_folds"] == ens.STACK_FOLDS
    assert nested["stack"]["log_loss"] < nested["weights"]["log_loss"]
    assert stack["C"] in ens.STACK_CS and set(stack["cv_log_loss_by_C"]) == {str(c) for c in ens.STACK_CS}
    assert stack["features"] == [f"{m}:{x}" for m in ("ab", "cd") for x in LETTERS]
    assert set(stack["coefficients"]) == set(LETTERS) and set(stack["intercepts"]) == set(LETTERS)
    assert set(stack["coefficients"]["a"]) == set(stack["features"])
    # the OOF score reported is the nested one, not the stacker scoring its own training rows
    assert summary["oof_blend"]["log_loss"] == pytest.approx(nested["stack"]["log_loss"])
    assert "nested CV" in out and "stacker: multinomial logistic regression" in out
    assert (runs / "ensemble_report" / "report.md").is_file()
    assert result.submission.equals(sub)


def test_auto_chooses_stack_only_when_its_nested_log_loss_is_lower(tmp_path, capsys, monkeypatch):
    runs, data, _, _ = make_complementary_runs(tmp_path)
    summary = ensemble_script.main(args(runs, data)).summary
    out = capsys.readouterr().out
    nested = summary["stack"]["nested_cv"]
    assert nested["stack"]["log_loss"] < nested["weights"]["log_loss"]
    assert summary["method"] == "stack"
    assert f"method: auto -> stack (nested-CV OOF log-loss: stack {nested['stack']['log_loss']:.4f} < weights" in out

    # ordinary models (one good, one weak, same on every letter): whichever wins is the one chosen
    other = tmp_path / "other"
    other.mkdir()
    runs2, data2, _ = make_runs(other, n_train=200)
    summary = ensemble_script.main(args(runs2, data2)).summary
    nested = summary["stack"]["nested_cv"]
    assert summary["method"] == ("stack" if nested["stack"]["log_loss"] < nested["weights"]["log_loss"] else "weights")

    # a stacker that does worse than the weights under the same folds is not chosen
    monkeypatch.setattr(ens, "nested_stack", lambda probs, labels: np.full((len(labels), 4), 0.25))
    summary = ensemble_script.main(args(runs, data)).summary
    out = capsys.readouterr().out
    assert summary["method"] == "weights" and summary["weights"]["ab"] > 0
    assert summary["stack"]["nested_cv"]["stack"]["log_loss"] == pytest.approx(np.log(4))
    assert "method: auto -> weights (nested-CV OOF log-loss: stack 1.3863 >= weights" in out


def test_stack_refused_or_skipped_with_one_line(tmp_path, capsys):
    # 60 rows: fewer than 20 of some letter
    runs, data, _ = make_runs(tmp_path, n_train=60)
    with pytest.raises(SystemExit) as exc:
        ensemble_script.main(args(runs, data, method="stack"))
    assert exc.value.code == 2
    err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(err) == 1 and err[0].startswith("error: --method stack: stacking needs >= 20 common OOF rows")
    assert not (runs / "submission.csv").exists()
    # auto falls back to the weights and says why, once
    summary = ensemble_script.main(args(runs, data)).summary
    out = capsys.readouterr().out
    assert summary["method"] == "weights" and "refused" in summary["stack"]
    assert [line for line in out.splitlines() if line.startswith("method:")] == [
        f"method: auto -> weights ({summary['stack']['refused']})"]

    # a single model: refused by --method stack, plain mean under auto (as before)
    files = [str(p) for p in sorted(runs.glob("good/fold*/test_probs.csv"))]
    with pytest.raises(SystemExit) as exc:
        ensemble_script.main(args(runs, data, files=files, method="stack"))
    assert exc.value.code == 2
    err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(err) == 1 and "stacking needs >= 2 models" in err[0]
    assert ensemble_script.main(args(runs, data, files=files)).summary["method"] == "mean"
    assert "stack" not in json.loads((runs / "ensemble.json").read_text())


def test_stack_cli_choice(tmp_path, capsys):
    runs, data, test_ids, _ = make_complementary_runs(tmp_path, n_train=160)
    result = ensemble_script.cli(["--output_dir", str(runs), "--data_dir", str(data), "--method", "stack",
                                  "--no_temperature"])
    assert result.summary["method"] == "stack" and result.summary["temperature_scaling"] is False
    assert pd.read_csv(runs / "submission.csv", dtype=str)["id"].tolist() == test_ids
