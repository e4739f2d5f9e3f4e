"""Ensembling logic behind ensemble.py: read and align probability files, calibrate, blend, vote, validate.

Every function here is pure (numpy / pandas in, numpy / pandas out) except the few that read files
(`read_probs`, `read_oof`, `discover_models`, `load_models`) and `run_ensemble`, which ties the steps
together for the script. Labels are ints 0-3 for the letters a-d (`mcvqa.LETTERS`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
from scipy.optimize import minimize, minimize_scalar
from scipy.special import log_softmax, softmax

from mcvqa import LETTERS
from mcvqa.errors import UserError, collect
from mcvqa.metrics import EPS, SPACES, accuracy, average_probs, letters_to_indices, log_loss
from mcvqa.runs import fold_sort_key

SUM_TOL = 1e-3  # rows of probabilities must sum to 1 within this
RANGE_TOL = 1e-6  # probabilities may stray outside [0, 1] by this much (float noise)
SHOW_IDS = 5  # how many offending ids an error message names
TEMPERATURE_BOUNDS = (0.05, 20.0)
METHODS = ("auto", "mean", "weights", "vote", "stack")


# --------------------------------------------------------------------------------------------------
# Reading and aligning probability files
# --------------------------------------------------------------------------------------------------


def _few(ids, n=SHOW_IDS):
    ids = list(ids)
    shown = ", ".join(repr(str(i)) for i in ids[:n])
    return shown + (f" (and {len(ids) - n} more)" if len(ids) > n else "")


def read_probs(path, extra_columns=()):
    """Read a probability CSV (`id,a,b,c,d[,...]`) and validate it.

    Checks: the file exists and parses, has the columns id and a-d (plus `extra_columns`), ids are
    non-empty and unique, every probability is a number in [0, 1] and every row sums to ~1.
    Returns a DataFrame (id as str, a-d as float) with `attrs["path"]` set to the file path.
    """
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: file not found")
    try:
        df = pd.read_csv(path, dtype=str, keep_default_na=False)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError, OSError) as err:
        raise UserError(f"{path}: could not read as CSV: {err}") from None
    needed = ["id", *LETTERS, *extra_columns]
    missing = [c for c in needed if c not in df.columns]
    if missing:
        raise UserError(f"{path}: missing column(s) {', '.join(missing)} (has {', '.join(map(str, df.columns))})")

    problems = []
    df["id"] = df["id"].str.strip()
    if (df["id"] == "").any():
        problems.append(f"{int((df['id'] == '').sum())} row(s) with an empty id")
    dup = df["id"][df["id"].duplicated()].unique()
    if len(dup):
        problems.append(f"{len(dup)} duplicated id(s): {_few(dup)}")
    for letter in LETTERS:
        df[letter] = pd.to_numeric(df[letter], errors="coerce")
    values = df[list(LETTERS)].to_numpy(dtype=float)
    bad = ~np.isfinite(values).all(axis=1)
    if bad.any():
        problems.append(f"{int(bad.sum())} row(s) with a missing or non-numeric probability, e.g. ids {_few(df['id'][bad])}")
    ok = ~bad
    out_of_range = ok & ((values < -RANGE_TOL) | (values > 1 + RANGE_TOL)).any(axis=1)
    if out_of_range.any():
        problems.append(f"{int(out_of_range.sum())} row(s) with probabilities outside [0, 1], e.g. ids {_few(df['id'][out_of_range])}")
    sums = np.where(ok, np.nan_to_num(values).sum(axis=1), 1.0)
    off = ok & (np.abs(sums - 1.0) > SUM_TOL)
    if off.any():
        problems.append(
            f"{int(off.sum())} row(s) whose a-d probabilities do not sum to 1 "
            f"(e.g. ids {_few(df['id'][off])}; sums {', '.join(f'{s:.4f}' for s in sums[off][:3])})"
        )
    collect(problems, f"{path}: invalid probabilities")
    df[list(LETTERS)] = np.clip(values, 0.0, 1.0)
    df.attrs["path"] = str(path)
    return df


def read_oof(path):
    """Read an OOF file (`id,a,b,c,d,answer,pred[,question_type]`): `read_probs` plus letter answers."""
    df = read_probs(path, extra_columns=("answer",))
    answers = df["answer"].str.strip().str.lower()
    bad = ~answers.isin(LETTERS)
    if bad.any():
        raise UserError(
            f"{path}: {int(bad.sum())} row(s) whose answer is not one of {', '.join(LETTERS)}, "
            f"e.g. ids {_few(df['id'][bad])}"
        )
    df["answer"] = answers
    return df


def _name(frame, index):
    return frame.attrs.get("path", f"file #{index + 1}")


def align(frames, ids):
    """Reorder each probability frame to `ids`, returning a list of (len(ids), 4) float arrays.

    `frames` is a list of DataFrames (named in errors by `attrs["path"]`) or a dict name -> DataFrame.
    Any id of `ids` missing from a file, any id in a file but not in `ids`, or any id appearing twice
    raises one UserError naming each offending file and a few of its ids, never a silent NaN.
    """
    ids = pd.Index([str(i) for i in ids])
    if ids.has_duplicates:
        raise UserError(f"the reference ids contain duplicates: {_few(ids[ids.duplicated()].unique())}")
    items = list(frames.items()) if isinstance(frames, dict) else [(_name(f, i), f) for i, f in enumerate(frames)]
    problems, out = [], []
    for name, df in items:
        file_ids = pd.Index(df["id"].astype(str))
        file_problems = []
        dup = file_ids[file_ids.duplicated()].unique()
        if len(dup):
            file_problems.append(f"{len(dup)} duplicated id(s): {_few(dup)}")
        missing = ids.difference(file_ids, sort=False)
        if len(missing):
            file_problems.append(f"{len(missing)} id(s) of sample_submission.csv missing: {_few(missing)}")
        extra = file_ids.unique().difference(ids, sort=False)
        if len(extra):
            file_problems.append(f"{len(extra)} id(s) not in sample_submission.csv: {_few(extra)}")
        if file_problems:
            problems.append(f"{name}: " + "; ".join(file_problems))
            continue
        pos = file_ids.get_indexer(ids)
        out.append(df[list(LETTERS)].to_numpy(dtype=float)[pos])
    collect(problems, "probability files do not match the ids of sample_submission.csv:")
    return out


# --------------------------------------------------------------------------------------------------
# Metrics, calibration, blending
# --------------------------------------------------------------------------------------------------


def apply_temperature(probs, temperature):
    """softmax(log p / T): T > 1 softens over-confident probabilities, T < 1 sharpens them."""
    logp = np.log(np.clip(np.asarray(probs, dtype=float), EPS, 1.0))
    return softmax(logp / float(temperature), axis=1)


def fit_temperature(probs, labels, bounds=TEMPERATURE_BOUNDS):
    """The temperature T minimising the NLL of softmax(log p / T) on (probs, labels)."""
    logp = np.log(np.clip(np.asarray(probs, dtype=float), EPS, 1.0))
    labels = np.asarray(labels, dtype=int)
    if len(labels) == 0:
        return 1.0
    rows = np.arange(len(labels))

    def nll(log_t):
        return -np.mean(log_softmax(logp / math.exp(log_t), axis=1)[rows, labels])

    res = minimize_scalar(nll, bounds=(math.log(bounds[0]), math.log(bounds[1])), method="bounded",
                          options={"xatol": 1e-6})
    temperature = float(math.exp(res.x))
    return temperature if nll(res.x) <= nll(0.0) else 1.0


def blend(list_of_probs, weights=None, space="prob"):
    """Weighted blend of probability arrays: `mcvqa.metrics.average_probs` (the TTA average too)."""
    return average_probs(list_of_probs, weights, space)


def fit_weights(list_of_oof_probs, labels, space="prob"):
    """Non-negative weights summing to 1 that minimise the log-loss of `blend(...)` on OOF rows.

    Pass only out-of-fold probabilities (all aligned to the same rows as `labels`): test
    probabilities must never influence the weights.
    """
    k = len(list_of_oof_probs)
    if k == 0:
        raise ValueError("no probability arrays to weight")
    if k == 1:
        return np.ones(1)
    labels = np.asarray(labels, dtype=int)
    stack = np.stack([np.asarray(p, dtype=float) for p in list_of_oof_probs])
    if space not in SPACES:
        raise UserError(f"unknown blending space {space!r} (choose from {', '.join(SPACES)})")
    rows = np.arange(len(labels))
    if space == "prob":
        true_p = stack[:, rows, labels]  # (k, n): only the true-class probability matters

        def loss(w):
            return -np.mean(np.log(np.clip(w @ true_p, EPS, None)))

        def grad(w):
            return -(true_p / np.clip(w @ true_p, EPS, None)).mean(axis=1)
    else:
        logs = np.log(np.clip(stack, EPS, 1.0))

        def loss(w):
            return -np.mean(log_softmax(np.tensordot(w, logs, axes=1), axis=1)[rows, labels])

        grad = None

    w0 = np.full(k, 1.0 / k)
    res = minimize(loss, w0, jac=grad, method="SLSQP", bounds=[(0.0, 1.0)] * k,
                   constraints=[{"type": "eq", "fun": lambda w: w.sum() - 1.0}],
                   options={"ftol": 1e-10, "maxiter": 500})
    w = np.clip(res.x, 0.0, None)
    if not np.isfinite(w).all() or w.sum() <= 0:
        return w0
    w[w < 1e-9 * w.sum()] = 0.0  # optimiser dust such as 5e-17 reads better as 0
    w = w / w.sum()
    return w if loss(w) <= loss(w0) + 1e-12 else w0


def vote(list_of_probs, weights=None):
    """Majority vote of each model's argmax; ties go to the tied letter with the highest mean probability.

    Returns int labels 0-3. `weights` (optional) weight the votes and the tie-break mean.
    """
    stack = np.stack([np.asarray(p, dtype=float) for p in list_of_probs])
    k, n, c = stack.shape
    w = np.ones(k) if weights is None else np.asarray(weights, dtype=float)
    votes = np.zeros((n, c))
    for m in range(k):
        votes[np.arange(n), stack[m].argmax(axis=1)] += w[m]
    mean = np.tensordot(w / w.sum(), stack, axes=1)
    top = np.isclose(votes, votes.max(axis=1, keepdims=True))
    return np.where(top, mean, -np.inf).argmax(axis=1)


# --------------------------------------------------------------------------------------------------
# Stacking: a multinomial logistic regression over the models' log-probabilities
# --------------------------------------------------------------------------------------------------

STACK_MIN_PER_LETTER = 20  # fewer common OOF rows of some answer letter: no stacking
STACK_FOLDS = 5  # outer folds of the nested CV, and inner folds choosing C
STACK_CS = (0.001, 0.01, 0.1, 1.0, 10.0, 100.0)  # regularisation strengths tried, strongest first
STACK_SEED = 0


def stack_features(list_of_probs):
    """(n, 4 * models) features of the stacker: log p of each model's four letters, models side by side."""
    return np.hstack([np.log(np.clip(np.asarray(p, dtype=float), EPS, 1.0)) for p in list_of_probs])


def stack_refusal(labels, n_models):
    """Why these common OOF rows cannot be stacked (one line), or None when they can."""
    if n_models < 2:
        return f"stacking needs >= 2 models with OOF probabilities (got {n_models})"
    counts = np.bincount(np.asarray(labels, dtype=int), minlength=len(LETTERS))
    if counts.min() < STACK_MIN_PER_LETTER:
        short = ", ".join(f"{LETTERS[i]}={counts[i]}" for i in range(len(LETTERS)) if counts[i] < STACK_MIN_PER_LETTER)
        return (f"stacking needs >= {STACK_MIN_PER_LETTER} common OOF rows per answer letter "
                f"({len(labels)} rows; too few: {short})")
    return None


def _folds(labels, n_splits=STACK_FOLDS):
    from sklearn.model_selection import StratifiedKFold

    n_splits = int(min(n_splits, np.bincount(labels, minlength=len(LETTERS)).min()))
    return list(StratifiedKFold(n_splits, shuffle=True, random_state=STACK_SEED).split(np.zeros(len(labels)), labels))


def _logistic(C):
    from sklearn.linear_model import LogisticRegression

    # lbfgs over >= 3 classes is the multinomial (softmax) loss in every scikit-learn this project accepts.
    return LogisticRegression(C=C, max_iter=2000, warm_start=True)


def fit_stacker(features, labels, cs=STACK_CS):
    """A multinomial logistic regression predicting the answer letter from `stack_features`, with C chosen
    by a stratified inner CV (mean log-loss) on these rows only, then refitted on all of them.

    The letters are four positions shared by every row, so besides how far to trust each model (and each
    model's confidence) the regression can learn letter biases, e.g. that `d` is the answer less often
    than the models think. Returns (fitted LogisticRegression, chosen C, inner CV log-loss per C).
    """
    from threadpoolctl import threadpool_limits

    x, y = np.asarray(features, dtype=float), np.asarray(labels, dtype=int)
    folds = _folds(y)
    cv_loss = np.zeros(len(cs))
    # These fits are small (a few features): BLAS/OpenMP threads cost more than they save, up to 10x
    # on a busy machine.
    with threadpool_limits(1):
        for train, held in folds:
            model = _logistic(cs[0])
            for i, c in enumerate(cs):  # strongest penalty first: each fit warm-starts from the previous
                model.set_params(C=c).fit(x[train], y[train])
                cv_loss[i] += log_loss(stack_predict(model, x[held]), y[held])
        best = int(np.argmin(cv_loss))
        model = _logistic(cs[best]).fit(x, y)
    return model, float(cs[best]), {float(c): float(v) for c, v in zip(cs, cv_loss / len(folds))}


def stack_predict(model, features):
    """(n, 4) letter probabilities of a fitted stacker (a letter it never saw as an answer gets 0)."""
    out = np.zeros((len(features), len(LETTERS)))
    out[:, model.classes_] = model.predict_proba(np.asarray(features, dtype=float))
    return out


def nested_stack(list_of_oof_probs, labels):
    """Honest (n, 4) OOF probabilities of the stacker: each outer fold's rows are predicted by a stacker
    fitted (C from its own inner CV) on the other outer folds only, so no row's label shapes its prediction.
    The temperatures scaling the inputs (run_ensemble) are fitted on all OOF rows beforehand: one scalar per
    model, the same for the weights this is compared with (`nested_weights`).
    """
    y = np.asarray(labels, dtype=int)
    x = stack_features(list_of_oof_probs)
    out = np.zeros((len(y), len(LETTERS)))
    for train, held in _folds(y):
        out[held] = stack_predict(fit_stacker(x[train], y[train])[0], x[held])
    return out


def nested_weights(list_of_oof_probs, labels, space="prob"):
    """`nested_stack`'s outer folds for the fitted weights: each fold blended with weights fitted on the
    others, so the two are compared on equal terms (the weights' in-sample log-loss is optimistic)."""
    y = np.asarray(labels, dtype=int)
    out = np.zeros((len(y), len(LETTERS)))
    for train, held in _folds(y):
        w = fit_weights([p[train] for p in list_of_oof_probs], y[train], space=space)
        out[held] = blend([p[held] for p in list_of_oof_probs], w, space)
    return out


# --------------------------------------------------------------------------------------------------
# Submission
# --------------------------------------------------------------------------------------------------


def template_columns(template):
    """(id column, answer column) of a sample_submission-like frame."""
    cols = list(template.columns)
    id_col = "id" if "id" in cols else cols[0]
    others = [c for c in cols if c != id_col]
    answer_col = template.attrs.get("answer_column") or ("answer" if "answer" in others else None)
    if answer_col is None and len(others) == 1:
        answer_col = others[0]
    if answer_col not in others:
        raise UserError(
            f"sample_submission.csv: cannot tell the answer column (columns: {', '.join(map(str, cols))}); "
            "expected id and one answer column"
        )
    return id_col, answer_col


def make_submission(template, pred_labels):
    """A copy of `template` whose answer column holds the letters of `pred_labels` (same order as template)."""
    _, answer_col = template_columns(template)
    sub = template.copy()
    sub[answer_col] = [LETTERS[int(i)] for i in pred_labels]
    return sub


def validate_submission(sub, template):
    """Raise UserError unless `sub` has template's columns, every template id exactly once in order, letters only."""
    problems = []
    if list(sub.columns) != list(template.columns):
        problems.append(f"columns are {list(sub.columns)}, sample_submission.csv has {list(template.columns)}")
        collect(problems, "the submission is invalid:")
    id_col, answer_col = template_columns(template)
    sub_ids = sub[id_col].astype(str).tolist()
    tpl_ids = template[id_col].astype(str).tolist()
    if len(sub_ids) != len(tpl_ids):
        problems.append(f"{len(sub_ids)} rows, sample_submission.csv has {len(tpl_ids)}")
    dup = pd.Index(sub_ids)[pd.Index(sub_ids).duplicated()].unique()
    if len(dup):
        problems.append(f"duplicated id(s): {_few(dup)}")
    missing = sorted(set(tpl_ids) - set(sub_ids))
    if missing:
        problems.append(f"id(s) of sample_submission.csv missing: {_few(missing)}")
    extra = sorted(set(sub_ids) - set(tpl_ids))
    if extra:
        problems.append(f"id(s) not in sample_submission.csv: {_few(extra)}")
    if not problems and sub_ids != tpl_ids:
        problems.append("rows are not in the order of sample_submission.csv")
    answers = sub[answer_col].astype(str)
    bad = ~answers.isin(LETTERS)
    if bad.any():
        problems.append(f"{int(bad.sum())} answer(s) not one of {', '.join(LETTERS)}, e.g. {_few(answers[bad].unique())}")
    collect(problems, "the submission is invalid:")
    return sub


# --------------------------------------------------------------------------------------------------
# Run folders (their layout is mcvqa.runs')
# --------------------------------------------------------------------------------------------------

@dataclass
class Model:
    """One run folder: its folds' test_probs files and (where present) OOF files."""

    name: str
    test_files: list = field(default_factory=list)
    oof_files: list = field(default_factory=list)
    test_probs: np.ndarray | None = None  # mean over folds, aligned to the template ids
    oof: pd.DataFrame | None = None  # concatenated OOF rows (id, a-d, answer[, question_type])

    @property
    def n_folds(self):
        return len(self.test_files)


def discover_models(output_dir, files=None, data_dir=None, log=print):
    """Group test_probs files into models (one per run folder), each checked against its fold's provenance.

    Without `files`: every fold folder under OUTPUT_DIR (`mcvqa.runs.find_folds`: any depth) with its
    test_probs.csv; a run with some folds predicted and others not is refused, a run with none is skipped.
    With `files`: those files; a file inside a fold folder belongs to that fold's run, any other file is a
    model by itself (and has no provenance to check). Each fold's OOF file is `mcvqa.runs.oof_file`.
    Files in fold folders that no longer match the fold's weights or `data_dir` raise UserError.
    Returns a list of `Model` sorted by name.
    """
    from mcvqa.runs import find_folds, is_fold_dir

    output_dir = Path(output_dir)
    if files:
        missing = [str(f) for f in files if not Path(f).is_file()]
        collect([f"{f} not found" for f in missing], "some --files do not exist (run predict.py first?):")
        paths = [Path(f) for f in files]
    else:
        if not output_dir.is_dir():
            raise UserError(
                f"output folder {output_dir} does not exist: run train_lora.py and predict.py first "
                f"(or pass --output_dir / --files)"
            )
        by_run = {}
        for fold in find_folds(output_dir):
            by_run.setdefault(fold.parent, []).append(fold)
        paths, problems = [], []
        for run, folds in by_run.items():
            done = [f for f in folds if (f / "test_probs.csv").is_file()]
            if not done:
                log(f"skipped {run}: no fold has test_probs.csv (python predict.py --output_dir {run})")
            elif len(done) < len(folds):
                lacking = " ".join(f.name.replace("fold", "") for f in folds if f not in done)
                problems.append(f"{run}: folds {lacking} are trained but not predicted: python predict.py "
                                f"--output_dir {run} --folds {lacking} (or move those folds away)")
            paths += [f / "test_probs.csv" for f in done]
        collect(problems, "some trained folds have no test probabilities:")
        if not paths:
            raise UserError(
                f"no test_probs.csv found in the fold folders under {output_dir}: run predict.py first "
                f"(or pass --files)"
            )
    groups = {}
    for p in paths:
        if is_fold_dir(p.parent):
            run = p.parent.parent
            try:
                name = run.resolve().relative_to(output_dir.resolve()).as_posix()
            except ValueError:
                name = run.as_posix()
            if name == ".":
                name = run.resolve().name
        else:
            name = p.as_posix()
        model = groups.setdefault(name, Model(name=name))
        if p not in model.test_files:
            model.test_files.append(p)
    models = [groups[name] for name in sorted(groups)]
    problems = []
    for model in models:
        model.test_files.sort(key=lambda p: fold_sort_key(p.parent))
        for tp in model.test_files:
            if not is_fold_dir(tp.parent):
                continue
            try:
                oof = checked_fold_files(tp, data_dir)
            except UserError as err:
                problems.append(str(err))
                continue
            if oof is not None:
                model.oof_files.append(oof)
    collect(problems, "stale or unverifiable fold files (nothing was written):")
    return models


def checked_fold_files(test_file, data_dir=None):
    """Check a fold's test_probs file and the OOF file it is calibrated on; returns that OOF file (or None)."""
    from mcvqa.runs import RunRecord, check_artefact, oof_file

    fold_dir = test_file.parent
    record = RunRecord.load(fold_dir)
    test_entry = check_artefact(fold_dir, test_file.name, data_dir, record)
    oof = oof_file(fold_dir)
    if oof is not None:
        oof_entry = check_artefact(fold_dir, oof.name, data_dir, record)
        if oof.name == "oof_tta.csv" and oof_entry.get("views") != test_entry.get("views"):
            raise UserError(f"{oof}: scored with other views ({len(oof_entry.get('views') or [])}) than "
                            f"{test_file} ({len(test_entry.get('views') or [])}), so calibrating on it would not fit "
                            f"what is blended; refresh both with the same flags: python predict.py --output_dir "
                            f"{fold_dir.parent} --folds {fold_dir.name.replace('fold', '')} --score_oof [--tta ...]")
    return oof


def load_models(models, template_ids):
    """Fill each model's `test_probs` (fold mean, aligned to `template_ids`) and `oof` (concatenated folds)."""
    problems = []
    frames = {}
    for model in models:
        for path in model.test_files:
            try:
                frames[str(path)] = read_probs(path)
            except UserError as err:
                problems.append(str(err))
    collect(problems, "invalid test probability files:")
    aligned = dict(zip(frames, align(frames, template_ids)))
    for model in models:
        model.test_probs = np.mean([aligned[str(p)] for p in model.test_files], axis=0)

    problems = []
    for model in models:
        if not model.oof_files:
            continue
        parts = []
        for path in model.oof_files:
            try:
                parts.append(read_oof(path))
            except UserError as err:
                problems.append(str(err))
        if len(parts) != len(model.oof_files):
            continue
        oof = pd.concat(parts, ignore_index=True)
        dup = oof["id"][oof["id"].duplicated()].unique()
        if len(dup):
            problems.append(
                f"{model.name}: OOF files {', '.join(str(p) for p in model.oof_files)} share "
                f"{len(dup)} id(s) (each row must be out-of-fold exactly once): {_few(dup)}"
            )
            continue
        model.oof = oof
    collect(problems, "invalid OOF files:")

    # The same id must carry the same answer in every model's OOF.
    answers = {}
    problems = []
    for model in models:
        if model.oof is None:
            continue
        for i, a in zip(model.oof["id"], model.oof["answer"]):
            if answers.setdefault(i, (a, model.name))[0] != a:
                problems.append(f"id {i!r}: answer {a!r} in {model.name} but {answers[i][0]!r} in {answers[i][1]}")
    collect(problems[:SHOW_IDS] + ([f"... and {len(problems) - SHOW_IDS} more"] if len(problems) > SHOW_IDS else []),
            "OOF files disagree on the true answers:")
    return models


def common_oof(models):
    """(ids, labels, [probs per model], question_types or None) on the ids present in every model's OOF."""
    with_oof = [m for m in models if m.oof is not None]
    if not with_oof:
        return [], np.zeros(0, int), [], None
    ids = pd.Index(with_oof[0].oof["id"])
    for m in with_oof[1:]:
        ids = ids.intersection(pd.Index(m.oof["id"]), sort=False)
    first = with_oof[0].oof.set_index("id")
    labels = letters_to_indices(first.loc[ids, "answer"]) if len(ids) else np.zeros(0, int)
    qtypes = None
    for m in with_oof:
        if "question_type" in m.oof.columns:
            qtypes = m.oof.set_index("id").loc[ids, "question_type"].astype(str).to_numpy()
            break
    probs = [m.oof.set_index("id").loc[ids, list(LETTERS)].to_numpy(dtype=float) for m in with_oof]
    return list(ids), labels, probs, qtypes


# --------------------------------------------------------------------------------------------------
# The whole pipeline (used by ensemble.py)
# --------------------------------------------------------------------------------------------------


@dataclass
class EnsembleResult:
    submission: pd.DataFrame
    probs: pd.DataFrame  # id, a, b, c, d (template order)
    summary: dict  # what goes into ensemble.json
    oof_ids: list
    oof_labels: np.ndarray
    oof_before: np.ndarray | None  # blend of uncalibrated OOF probs (same weights)
    oof_after: np.ndarray | None  # blend of calibrated OOF probs (the ensemble as submitted)
    oof_question_types: np.ndarray | None
    per_model_scores: dict


def run_ensemble(models, template, method="auto", temperature=True, space=None, log=print):
    """Calibrate, weight and blend loaded `models`; returns an `EnsembleResult` (nothing written).

    `method`: auto (with >= 2 models all with OOF: stack where its nested-CV OOF log-loss beats the
    weights' under the same folds, else weights; otherwise mean), mean, weights, vote or stack.
    `space`: prob (arithmetic mean, default) or logprob (geometric mean); stack ignores it.
    Temperatures (one per model, fitted on its OOF) scale the inputs of every method, stack included.
    """
    if method not in METHODS:
        raise UserError(f"unknown --method {method!r} (choose from {', '.join(METHODS)})")
    space = space or "prob"
    if space not in SPACES:
        raise UserError(f"unknown --space {space!r} (choose from {', '.join(SPACES)})")
    id_col, _ = template_columns(template)
    template_ids = template[id_col].astype(str).tolist()

    all_oof = all(m.oof is not None for m in models)
    auto = method == "auto"
    if method == "auto":
        method = "weights" if len(models) >= 2 and all_oof else "mean"
        if method == "weights" and not common_oof(models)[0]:
            method = "mean"
            log("method: auto -> mean (the models' OOF files share no ids to fit weights on)")
        elif method == "mean":  # weights vs stack is decided once the OOF rows are read
            log(f"method: auto -> mean ({len(models)} model(s){'' if all_oof else ', not all with OOF'})")
    if method in ("weights", "stack") and not all_oof:
        lacking = [m.name for m in models if m.oof is None]
        raise UserError(
            f"--method {method} needs OOF probabilities (oof.csv) for every model; none for: {', '.join(lacking)}"
            " (use --method mean, or train with k-fold)"
        )

    per_model, temps = {}, {}
    log(f"{len(models)} model(s), {len(template_ids)} test rows:")
    for m in models:
        scores = {"folds": m.n_folds, "oof_files": [str(p) for p in m.oof_files]}
        temps[m.name] = 1.0
        if m.oof is not None:
            labels = letters_to_indices(m.oof["answer"])
            probs = m.oof[list(LETTERS)].to_numpy(dtype=float)
            scores.update(oof_rows=len(labels), accuracy=accuracy(probs, labels), log_loss=log_loss(probs, labels))
            line = (f"  {m.name}: {m.n_folds} fold(s), OOF {len(labels)} rows, "
                    f"accuracy {scores['accuracy']:.4f}, log-loss {scores['log_loss']:.4f}")
            if temperature:
                t = fit_temperature(probs, labels)
                temps[m.name] = t
                scores["log_loss_calibrated"] = log_loss(apply_temperature(probs, t), labels)
                line += f", temperature {t:.3f} -> log-loss {scores['log_loss_calibrated']:.4f}"
        else:
            line = f"  {m.name}: {m.n_folds} fold(s), no OOF (no temperature, no OOF score)"
        scores["temperature"] = temps[m.name]
        per_model[m.name] = scores
        log(line)

    ids, labels, oof_raw, qtypes = common_oof(models) if all_oof else ([], np.zeros(0, int), [], None)
    oof_cal = [apply_temperature(p, temps[m.name]) for p, m in zip(oof_raw, models)]
    if all_oof and not ids:
        log("warning: the models' OOF files share no ids; no blend OOF score")
        if method in ("weights", "stack"):
            raise UserError(f"--method {method}: the models' OOF files share no ids to fit on")

    stack_summary, stack_oof = None, None
    if method == "stack" or (auto and method == "weights"):
        refusal = stack_refusal(labels, len(oof_cal))
        if refusal and method == "stack":
            raise UserError(f"--method stack: {refusal}; use --method weights or mean")
        if refusal:
            log(f"method: auto -> weights ({refusal})")
            stack_summary = {"refused": refusal}
        else:
            stack_oof = nested_stack(oof_cal, labels)
            weights_oof = nested_weights(oof_cal, labels, space)
            nested = {name: {"accuracy": accuracy(p, labels), "log_loss": log_loss(p, labels)}
                      for name, p in (("stack", stack_oof), ("weights", weights_oof))}
            stack_summary = {"nested_cv": {"rows": len(labels), "outer_folds": len(_folds(labels)), **nested}}
            s, w = nested["stack"]["log_loss"], nested["weights"]["log_loss"]
            if auto:
                method = "stack" if s < w else "weights"
                log(f"method: auto -> {method} (nested-CV OOF log-loss: stack {s:.4f} "
                    f"{'<' if s < w else '>='} weights {w:.4f})")
            log(f"nested CV ({stack_summary['nested_cv']['outer_folds']} outer folds, {len(labels)} rows): "
                f"stack accuracy {nested['stack']['accuracy']:.4f}, log-loss {s:.4f}; "
                f"weights accuracy {nested['weights']['accuracy']:.4f}, log-loss {w:.4f}")

    if method == "weights":
        weights = fit_weights(oof_cal, labels, space=space)
    else:
        weights = np.full(len(models), 1.0 / len(models))
    for m, w in zip(models, weights):
        if method != "stack":  # the stacker has coefficients (in summary["stack"]), no weight per model
            per_model[m.name]["weight"] = float(w)

    test_cal = [apply_temperature(m.test_probs, temps[m.name]) for m in models]
    if method == "vote":
        test_blend = blend(test_cal, weights, space)
        pred = vote(test_cal, weights)
    elif method == "stack":
        stacker, c, cv_by_c = fit_stacker(stack_features(oof_cal), labels)
        test_blend = stack_predict(stacker, stack_features(test_cal))
        pred = test_blend.argmax(axis=1)
        features = [f"{m.name}:{letter}" for m in models for letter in LETTERS]
        coef = np.zeros((len(LETTERS), len(features)))
        coef[stacker.classes_] = stacker.coef_
        intercept = np.zeros(len(LETTERS))
        intercept[stacker.classes_] = stacker.intercept_
        stack_summary.update(
            C=c, cv_log_loss_by_C=cv_by_c, features=features,
            coefficients={LETTERS[i]: dict(zip(features, map(float, coef[i]))) for i in range(len(LETTERS))},
            intercepts={LETTERS[i]: float(intercept[i]) for i in range(len(LETTERS))},
        )
    else:
        test_blend = blend(test_cal, weights, space)
        pred = test_blend.argmax(axis=1)

    summary = {
        "method": method,
        "space": space,
        "temperature_scaling": bool(temperature),
        "models": [m.name for m in models],
        "weights": None if method == "stack" else {m.name: float(w) for m, w in zip(models, weights)},
        "temperatures": temps,
        "per_model": per_model,
        "test_rows": len(template_ids),
    }
    if stack_summary is not None:
        summary["stack"] = stack_summary
    oof_before = oof_after = None
    if ids and method == "stack":
        # Nested-CV probabilities: the stacker fitted on all rows would score itself in-sample.
        oof_after = stack_oof
        oof_before = nested_stack(oof_raw, labels) if temperature else stack_oof
    elif ids:
        oof_before = blend(oof_raw, weights, space)
        oof_after = blend(oof_cal, weights, space)
    if ids:
        if method == "vote":
            voted = vote(oof_cal, weights)
            blend_acc = float(np.mean(voted == labels))
        else:
            blend_acc = accuracy(oof_after, labels)
        blend_scores = {"rows": len(ids), "accuracy": blend_acc, "log_loss": log_loss(oof_after, labels),
                        "log_loss_uncalibrated": log_loss(oof_before, labels)}
        summary["oof_blend"] = blend_scores
        note = {"weights": " (weights fitted on these rows: slightly optimistic)",
                "stack": " (nested CV: each row predicted by a stacker fitted without it)"}.get(method, "")
        log(f"blend ({method}{'' if method == 'stack' else ', ' + space}) on {len(ids)} common OOF rows: "
            f"accuracy {blend_acc:.4f}, log-loss {blend_scores['log_loss']:.4f}{note}")
    if method == "stack":
        log(f"stacker: multinomial logistic regression on {len(features)} log-probabilities, C={c:g} "
            "(coefficients in ensemble.json)")
    else:
        log("weights: " + ", ".join(f"{m.name}={w:.3f}" for m, w in zip(models, weights)))

    sub = validate_submission(make_submission(template, pred), template)
    probs_df = pd.DataFrame(test_blend, columns=list(LETTERS))
    probs_df.insert(0, "id", template_ids)
    counts = sub[template_columns(template)[1]].value_counts()
    summary["predicted_letters"] = {letter: int(counts.get(letter, 0)) for letter in LETTERS}
    return EnsembleResult(sub, probs_df, summary, ids, labels, oof_before, oof_after, qtypes, per_model)


def load_template(data_dir):
    """sample_submission.csv of `data_dir`, validated by the data contract."""
    from mcvqa.data import load_submission_template

    return load_submission_template(data_dir)
