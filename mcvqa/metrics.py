"""The one definition of every score over a/b/c/d: used by the trainer, OOF writing, predict.py, the
ensemble and the reports. Labels are ints 0-3 for the letters a-d (`mcvqa.LETTERS`); probabilities are
(n, 4) arrays over a/b/c/d. Where scikit-learn has the function, it is scikit-learn's.
"""

import math

import numpy as np
from scipy.special import softmax as _softmax
from sklearn import metrics as skm

from mcvqa import LETTERS
from mcvqa.errors import UserError

# Probabilities are clipped here before a log is taken (blending in log space, temperature scaling).
EPS = 1e-12
SPACES = ("prob", "logprob")
N_BINS = 10  # confidence bins of the calibration error and the reliability diagram


def letters_to_indices(letters):
    """Letters a-d (any case, surrounding spaces ignored) -> ints 0-3; anything else is a UserError."""
    lookup = {letter: i for i, letter in enumerate(LETTERS)}
    try:
        return np.array([lookup[str(x).strip().lower()] for x in letters], dtype=int)
    except KeyError as err:
        raise UserError(f"answer {err.args[0]!r} is not one of {', '.join(LETTERS)}") from None


def indices_to_letters(indices):
    return [LETTERS[int(i)] for i in indices]


def softmax(logits):
    """Row-wise softmax of (n, 4) logits, in float64."""
    return _softmax(np.asarray(logits, dtype=np.float64), axis=1)


def accuracy(probs, labels):
    """Share of rows whose most probable letter is the answer (nan for no rows)."""
    labels = np.asarray(labels, dtype=int)
    return prediction_accuracy(labels, np.asarray(probs).argmax(1) if len(labels) else labels)


def prediction_accuracy(labels, preds):
    """Share of predictions (indices or letters) equal to the labels (nan for no rows)."""
    if len(labels) == 0:
        return math.nan
    return float(skm.accuracy_score(np.asarray(labels), np.asarray(preds)))


def log_loss(probs, labels):
    """Mean negative log-likelihood of the answers (scikit-learn's log_loss over the four letters)."""
    labels = np.asarray(labels, dtype=int)
    if len(labels) == 0:
        return math.nan
    return float(skm.log_loss(labels, np.asarray(probs, dtype=np.float64), labels=list(range(len(LETTERS)))))


def type_key(question_type):
    """A question type as a metric-name suffix: `yes/no` -> `yes_no`."""
    return str(question_type).replace("/", "_").replace(" ", "_")


def accuracy_by_type(question_types, labels, preds):
    """Per question type: accuracy and row count (a DataFrame indexed by type, sorted by type)."""
    import pandas as pd

    df = pd.DataFrame({"type": np.asarray(question_types, dtype=object).astype(str),
                       "ok": np.asarray(labels) == np.asarray(preds)})
    return df.groupby("type")["ok"].agg(accuracy="mean", rows="size").sort_index()


def reliability_bins(probs, labels, n_bins=N_BINS):
    """Per confidence bin (top probability): (mean confidence, accuracy, count) arrays, and the ECE."""
    probs, labels = np.asarray(probs, dtype=float), np.asarray(labels, dtype=int)
    conf, correct = probs.max(1), (probs.argmax(1) == labels).astype(float)
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    which = np.clip(np.digitize(conf, edges[1:-1], right=True), 0, n_bins - 1)
    count = np.bincount(which, minlength=n_bins)
    with np.errstate(invalid="ignore"):
        mean_conf = np.bincount(which, weights=conf, minlength=n_bins) / count
        acc = np.bincount(which, weights=correct, minlength=n_bins) / count
    ece = float(np.nansum(np.abs(acc - mean_conf) * count) / max(len(labels), 1))
    return mean_conf, acc, count, ece


def expected_calibration_error(probs, labels, n_bins=N_BINS):
    """|accuracy - confidence| averaged over confidence bins, weighted by the rows in each bin."""
    return reliability_bins(probs, labels, n_bins)[3]


def scores(probs, labels, question_types=None):
    """accuracy, log_loss and accuracy_<type> for each question type (rows whose label is < 0 are ignored)."""
    probs, labels = np.asarray(probs, dtype=np.float64), np.asarray(labels, dtype=int)
    keep = labels >= 0
    out = {"accuracy": accuracy(probs[keep], labels[keep]), "log_loss": log_loss(probs[keep], labels[keep])}
    if question_types is not None and len(question_types) == len(keep) and keep.any():
        types = np.asarray(question_types, dtype=object)[keep]
        table = accuracy_by_type(types, labels[keep], probs[keep].argmax(1))
        out.update({f"accuracy_{type_key(t)}": float(a) for t, a in table["accuracy"].items()})
    return out


def metrics_from_logits(logits, labels, question_types=None):
    """`scores` of the softmax of (n, 4) letter logits: what the Trainer's evaluation reports."""
    logits = np.asarray(logits, dtype=np.float64)
    return scores(softmax(logits) if len(logits) else logits.reshape(0, len(LETTERS)), labels, question_types)


def average_probs(list_of_probs, weights=None, space="prob"):
    """Weighted average of probability arrays: arithmetic mean (`prob`) or normalised geometric mean
    (`logprob`). Averages TTA views (mcvqa.tta) and blends models (mcvqa.ensemble)."""
    if space not in SPACES:
        raise UserError(f"unknown averaging space {space!r} (choose from {', '.join(SPACES)})")
    stack = np.stack([np.asarray(p, dtype=np.float64) for p in list_of_probs])
    w = np.full(len(stack), 1.0 / len(stack)) if weights is None else np.asarray(weights, dtype=np.float64)
    if w.shape != (len(stack),):
        raise ValueError(f"{len(stack)} probability arrays but {w.size} weights")
    w = w / w.sum()
    if space == "prob":
        out = np.tensordot(w, stack, axes=1)
        return out / out.sum(axis=1, keepdims=True)
    return _softmax(np.tensordot(w, np.log(np.clip(stack, EPS, 1.0)), axes=1), axis=1)
