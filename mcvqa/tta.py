"""Test-time augmentation views: named pure functions row -> row, each undone before averaging.

A view may reorder the options (it records `_order`: `_order[j]` is the original index of the option
shown at position j), scale the pixel budget (`_scale`) or mirror the image (`_flip`). `to_original`
maps probabilities over the shown positions back to a/b/c/d, so averaging over the four cyclic shifts
cancels the model's preference for a position.
"""

import re
from functools import partial

import numpy as np

from mcvqa import LETTERS
from mcvqa.errors import UserError
from mcvqa.metrics import SPACES, average_probs

# Mirroring changes the answer to questions about sides or text.
_NO_FLIP = re.compile(r"\b(left|right|text|word|letter|read|written|number|digit|왼쪽|오른쪽|글자|글씨|숫자)\b",
                      re.IGNORECASE)


def identity(row):
    return row


def permute(row, order):
    """Show option `order[j]` at position j; the answer letter follows its option."""
    out = dict(row)
    previous = row.get("_order", list(range(4)))
    for j, src in enumerate(order):
        out[LETTERS[j]] = row[LETTERS[src]]
    out["_order"] = [previous[src] for src in order]
    if row.get("answer"):
        out["answer"] = LETTERS[order.index(LETTERS.index(row["answer"]))]
    return out


def shift(row, k):
    """Cyclic shift by k: position j shows the option that was at (j + k) % 4."""
    return permute(row, [(j + k) % 4 for j in range(4)])


def scale(row, factor):
    out = dict(row)
    out["_scale"] = row.get("_scale", 1.0) * factor
    return out


def hflip(row):
    """Mirror the image, except for questions whose answer a mirror would change."""
    if _NO_FLIP.search(row.get("question", "")):
        return row
    out = dict(row)
    out["_flip"] = not row.get("_flip", False)
    return out


def to_original(probs, order):
    """Probabilities over shown positions (n, 4) -> probabilities over the original a/b/c/d."""
    probs = np.asarray(probs)
    out = np.empty_like(probs)
    out[:, list(order)] = probs
    return out


def view_order(row_after_view):
    return row_after_view.get("_order", list(range(4)))


def named_views(tta=False, scales=(0.9, 1.0, 1.1), shifts=True, flip=False):
    """The views to score, by name: just `identity` without TTA."""
    if not tta:
        return {"identity": identity}
    views = {}
    for s in scales:
        for k in range(4) if shifts else (0,):
            name = f"scale{s:g}_shift{k}"
            views[name] = _compose(partial(scale, factor=s), partial(shift, k=k))
    if flip:
        views["flip"] = hflip
    return views


def _compose(*fns):
    def view(row):
        for fn in fns:
            row = fn(row)
        return row
    return view


def average(prob_list, space="prob"):
    """Average per-view probabilities already mapped to a/b/c/d: in probability or log-probability space."""
    if space not in SPACES:
        raise UserError(f"--tta_space must be 'prob' or 'logprob', not {space!r}")
    return average_probs(prob_list, space=space)
