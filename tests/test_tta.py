"""TTA views are pure, and each is undone before averaging."""

import itertools

import numpy as np
import pytest

from mcvqa.tta import average, hflip, identity, named_views, permute, scale, shift, to_original, view_order

ROW = {"id": "1", "image": "x.png", "question": "what color is the shape?", "a": "red", "b": "blue",
       "c": "green", "d": "teal", "answer": "c"}


def shown_options(row):
    return [row[k] for k in "abcd"]


def first_position_scorer(row):
    """A model that always prefers whatever is shown first."""
    return np.array([[0.7, 0.1, 0.1, 0.1]])


def true_option_scorer(row):
    """A model that reads the right option wherever it is shown."""
    p = np.full((1, 4), 0.05)
    p[0, [row[k] for k in "abcd"].index(ROW[ROW["answer"]])] = 0.85
    return p


def score_under(views, scorer, row=ROW):
    return [to_original(scorer(v(row)), view_order(v(row))) for v in views.values()]


def test_position_bias_cancels_under_the_four_shifts():
    views = named_views(True, scales=(1.0,))
    assert len(views) == 4
    mean = average(score_under(views, first_position_scorer))
    assert np.allclose(mean, 0.25)


def test_true_option_stays_right_under_every_view():
    views = named_views(True, scales=(0.9, 1.0, 1.1), flip=True)
    for probs in score_under(views, true_option_scorer):
        assert probs.argmax() == "abcd".index(ROW["answer"])
    assert average(score_under(views, true_option_scorer)).argmax() == 2


@pytest.mark.parametrize("order", list(itertools.permutations(range(4))))
def test_every_permutation_is_undone(order):
    row = permute(ROW, list(order))
    assert row[row["answer"]] == ROW[ROW["answer"]]
    probs_shown = np.array([[0.1, 0.2, 0.3, 0.4]])
    back = to_original(probs_shown, view_order(row))
    for j, src in enumerate(order):
        assert back[0, src] == probs_shown[0, j]


def test_views_are_pure_and_compose():
    before = dict(ROW)
    twice = shift(shift(ROW, 1), 3)
    assert ROW == before
    assert shown_options(twice) == shown_options(ROW) and view_order(twice) == [0, 1, 2, 3]
    assert scale(scale(ROW, 0.5), 2.0)["_scale"] == 1.0
    assert identity(ROW) is ROW


def test_flip_skipped_for_left_right_and_text_questions():
    assert hflip(ROW)["_flip"] is True
    assert "_flip" not in hflip({**ROW, "question": "what is on the left?"})
    assert "_flip" not in hflip({**ROW, "question": "what text is written?"})


def test_average_in_log_space():
    p1, p2 = np.array([[0.9, 0.1, 0.0, 0.0]]), np.array([[0.1, 0.9, 0.0, 0.0]])
    assert np.allclose(average([p1, p2], "prob"), [[0.5, 0.5, 0, 0]])
    logmean = average([p1, p2], "logprob")
    assert np.allclose(logmean.sum(), 1) and logmean[0, 0] == pytest.approx(logmean[0, 1])


def test_without_tta_only_identity():
    assert list(named_views(False)) == ["identity"]
