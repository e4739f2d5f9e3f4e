"""Tests for the data contract (mcvqa/data.py) and data/prepare_easy_vqa.py. CPU only, fast."""

import csv
import importlib.util
import json
from pathlib import Path

import pandas as pd
import pytest
from PIL import Image

from mcvqa.data import (
    assign_folds,
    load_split,
    load_submission_template,
    to_dataset,
)
from mcvqa.errors import UserError, report_user_errors

REPO = Path(__file__).resolve().parents[1]
HEADER = ["id", "path", "question", "a", "b", "c", "d", "answer"]


# ----------------------------------------------------------------------------------------- helpers


def make_png(path, color=(255, 0, 0)):
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (4, 4), color).save(path)
    return path


def write_rows(path, header, rows, encoding="utf-8"):
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", encoding=encoding, newline="") as fh:
        w = csv.writer(fh)
        w.writerow(header)
        w.writerows(rows)
    return path


def good_rows(n=8, image="img/0.png"):
    answers = "abcd"
    return [
        [f"q{i}", image, f"what color is shape {i}?", "red", "blue", "green", "teal", answers[i % 4]]
        for i in range(n)
    ]


@pytest.fixture
def data_dir(tmp_path):
    """A valid data folder: 8 train rows, 4 test rows, one shared image."""
    d = tmp_path / "data"
    make_png(d / "img" / "0.png")
    write_rows(d / "train.csv", HEADER, good_rows())
    write_rows(d / "test.csv", HEADER[:-1], [r[:-1] for r in good_rows(4)])
    write_rows(d / "sample_submission.csv", ["id", "answer"], [[f"q{i}", "a"] for i in range(4)])
    return d


def error_of(fn, *args, **kwargs):
    with pytest.raises(UserError) as exc:
        fn(*args, **kwargs)
    return str(exc.value)


# ----------------------------------------------------------------------------------------- happy path


def test_valid_folder_loads(data_dir):
    df = load_split(data_dir, "train")
    assert list(df.columns) == ["id", "image", "question", "a", "b", "c", "d", "answer", "question_type"]
    assert len(df) == 8
    assert df["image"][0] == str((data_dir / "img" / "0.png").resolve())
    assert set(df["question_type"]) == {"colour"}
    te = load_split(data_dir, "test")
    assert "answer" not in te.columns and len(te) == 4
    sub = load_submission_template(data_dir)
    assert list(sub.columns) == ["id", "answer"] and sub.attrs["answer_column"] == "answer"


def test_answer_case_folded_and_whitespace_stripped(data_dir):
    rows = good_rows(4)
    rows[0][7], rows[1][7], rows[2][7] = "A", " B ", "c "
    rows[3][2] = "  what shape is it?  "
    write_rows(data_dir / "train.csv", HEADER, rows)
    df = load_split(data_dir, "train")
    assert list(df["answer"]) == ["a", "b", "c", "d"]
    assert df["question"][3] == "what shape is it?"


def test_image_column_detection_and_relative_vs_absolute(data_dir):
    absolute = make_png(data_dir.parent / "elsewhere" / "x.png").resolve()
    rows = good_rows(2)
    rows[1][1] = str(absolute)
    write_rows(data_dir / "train.csv", ["id", "image", *HEADER[2:]], rows)
    df = load_split(data_dir, "train")
    assert "path" not in df.columns
    assert df["image"][0] == str((data_dir / "img/0.png").resolve())
    assert df["image"][1] == str(absolute)


def test_path_relative_to_data_dir_not_cwd(data_dir, monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)
    df = load_split(Path("data"), "train")  # relative data_dir, paths relative to it
    assert Path(df["image"][0]).is_absolute() and Path(df["image"][0]).exists()


def test_both_and_neither_image_columns(data_dir):
    write_rows(data_dir / "train.csv", ["id", "path", "image", *HEADER[2:]], [r[:2] + [r[1]] + r[2:] for r in good_rows(2)])
    msg = error_of(load_split, data_dir, "train")
    assert "train.csv" in msg and "both 'path' and 'image'" in msg
    write_rows(data_dir / "train.csv", ["id", *HEADER[2:]], [r[:1] + r[2:] for r in good_rows(2)])
    msg = error_of(load_split, data_dir, "train")
    assert "no image column" in msg and "'path'" in msg and "'image'" in msg


def test_extra_columns_kept_and_type_column_used(data_dir):
    rows = [r + ["x", "shape"] for r in good_rows(2)]
    write_rows(data_dir / "train.csv", HEADER + ["source", "type"], rows)
    df = load_split(data_dir, "train")
    assert list(df["source"]) == ["x", "x"]
    assert list(df["question_type"]) == ["shape", "shape"]
    assert "type" in df.columns


def test_question_type_inference(data_dir):
    rows = [
        ["q0", "img/0.png", "is there a circle?", "Yes", "NO", "red", "blue", "a"],
        ["q1", "img/0.png", "what colour is it?", "red", "blue", "green", "teal", "b"],
        ["q2", "img/0.png", "what shape is it?", "circle", "triangle", "rectangle", "red", "c"],
        ["q3", "img/0.png", "how many?", "1", "2", "3", "4", "d"],
        ["q4", "img/0.png", "도형의 색깔은 무엇입니까?", "빨강", "파랑", "초록", "검정", "a"],
    ]
    write_rows(data_dir / "train.csv", HEADER, rows)
    df = load_split(data_dir, "train")
    assert list(df["question_type"]) == ["yes/no", "colour", "shape", "other", "colour"]


def test_none_and_na_options_stay_text(data_dir):
    rows = good_rows(2)
    rows[0][3:7] = ["None", "NA", "null", "N/A"]
    write_rows(data_dir / "train.csv", HEADER, rows)
    df = load_split(data_dir, "train")
    assert list(df.loc[0, ["a", "b", "c", "d"]]) == ["None", "NA", "null", "N/A"]


def test_utf8_bom(data_dir):
    write_rows(data_dir / "train.csv", HEADER, good_rows(4), encoding="utf-8-sig")
    assert (data_dir / "train.csv").read_bytes().startswith(b"\xef\xbb\xbf")
    df = load_split(data_dir, "train")
    assert df.columns[0] == "id" and df["id"][0] == "q0"


KOREAN = ["k1", "img/0.png", "도형은 무슨 색입니까?", "빨간색", "파란색", "초록색", "검은색", "b"]


def test_korean_round_trip_to_dataset(data_dir):
    write_rows(data_dir / "train.csv", HEADER, [KOREAN] + good_rows(2))
    ds = to_dataset(load_split(data_dir, "train"))
    assert ds[0]["question"] == "도형은 무슨 색입니까?"
    assert [ds[0][k] for k in "abcd"] == ["빨간색", "파란색", "초록색", "검은색"]
    assert all(str(f.dtype) == "string" for f in ds.features.values())


def test_cp949_korean_decoded_with_warning(data_dir, capsys):
    write_rows(data_dir / "train.csv", HEADER, [KOREAN], encoding="cp949")
    with pytest.raises(UnicodeDecodeError):
        (data_dir / "train.csv").read_bytes().decode("utf-8")
    df = load_split(data_dir, "train")
    assert df["question"][0] == "도형은 무슨 색입니까?" and df["a"][0] == "빨간색"
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1
    assert "train.csv" in err[0] and "cp949" in err[0] and "iconv -f cp949 -t utf-8" in err[0]


def test_undecodable_file(data_dir):
    (data_dir / "train.csv").write_bytes(b"id,path\n\xff\xfe\xff\xff\n")
    msg = error_of(load_split, data_dir, "train")
    assert "train.csv" in msg and "UTF-8" in msg and "iconv" in msg


# ----------------------------------------------------------------------------------------- bad inputs


def test_missing_file(data_dir):
    (data_dir / "train.csv").unlink()
    msg = error_of(load_split, data_dir, "train")
    assert "train.csv" in msg and "not found" in msg


def test_missing_column(data_dir):
    write_rows(data_dir / "train.csv", [h for h in HEADER if h != "c"], [r[:5] + r[6:] for r in good_rows(2)])
    msg = error_of(load_split, data_dir, "train")
    assert "train.csv" in msg and "missing column" in msg and "'c'" in msg


def test_test_split_does_not_need_answer(data_dir):
    assert "answer" not in load_split(data_dir, "test").columns
    write_rows(data_dir / "train.csv", HEADER[:-1], [r[:-1] for r in good_rows(2)])
    assert "'answer'" in error_of(load_split, data_dir, "train")


def test_whitespace_option(data_dir):
    rows = good_rows(8)
    rows[1][4] = "   "
    rows[5][4] = ""
    write_rows(data_dir / "train.csv", HEADER, rows)
    msg = error_of(load_split, data_dir, "train")
    assert "train.csv" in msg and "column 'b'" in msg and "2 rows" in msg
    assert "line 3" in msg and "line 7" in msg  # header is line 1


def test_empty_question(data_dir):
    rows = good_rows(3)
    rows[2][2] = ""
    write_rows(data_dir / "train.csv", HEADER, rows)
    msg = error_of(load_split, data_dir, "train")
    assert "train.csv" in msg and "column 'question'" in msg and "line 4" in msg


def test_answer_outside_a_to_d(data_dir):
    rows = good_rows(12)
    rows[2][7], rows[7][7], rows[10][7] = "e", "x", ""
    write_rows(data_dir / "train.csv", HEADER, rows)
    msg = error_of(load_split, data_dir, "train")
    assert "train.csv: column 'answer': 3 rows have an answer outside a-d" in msg
    assert "line 4 ('e'), line 9 ('x'), line 12 ('')" in msg


def test_many_bad_rows_shows_first_five_and_count(data_dir):
    rows = good_rows(9)
    for r in rows:
        r[7] = "z"
    write_rows(data_dir / "train.csv", HEADER, rows)
    msg = error_of(load_split, data_dir, "train")
    assert "9 rows have" in msg and "line 6 ('z')" in msg and "line 7 ('z')" not in msg and "(and 4 more)" in msg


def test_duplicate_ids(data_dir):
    rows = good_rows(5)
    rows[3][0] = "q0"
    write_rows(data_dir / "train.csv", HEADER, rows)
    msg = error_of(load_split, data_dir, "train")
    assert "train.csv" in msg and "column 'id'" in msg and "duplicate" in msg
    assert "'q0'" in msg and "lines 2, 5" in msg


def test_empty_csv(data_dir):
    (data_dir / "train.csv").write_bytes(b"")
    msg = error_of(load_split, data_dir, "train")
    assert "train.csv" in msg and "empty" in msg


def test_header_only_csv(data_dir):
    write_rows(data_dir / "train.csv", HEADER, [])
    msg = error_of(load_split, data_dir, "train")
    assert "train.csv" in msg and "no data rows" in msg


def test_ragged_row(data_dir):
    rows = good_rows(3)
    rows[1] = rows[1][:5]
    write_rows(data_dir / "train.csv", HEADER, rows)
    msg = error_of(load_split, data_dir, "train")
    assert "train.csv" in msg and "line 3" in msg and "fields" in msg


def test_image_missing(data_dir):
    rows = good_rows(3)
    rows[1][1] = "img/nope.png"
    write_rows(data_dir / "train.csv", HEADER, rows)
    msg = error_of(load_split, data_dir, "train")
    assert "train.csv" in msg and "column 'path'" in msg and "does not exist" in msg
    assert "line 3" in msg and "img/nope.png" in msg
    assert len(load_split(data_dir, "train", check_images=False)) == 3  # check can be skipped


def test_zero_byte_image(data_dir):
    (data_dir / "img" / "empty.png").write_bytes(b"")
    rows = good_rows(3)
    rows[2][1] = "img/empty.png"
    write_rows(data_dir / "train.csv", HEADER, rows)
    msg = error_of(load_split, data_dir, "train")
    assert "column 'path'" in msg and "0 bytes" in msg and "line 4" in msg


def test_not_an_image(data_dir):
    (data_dir / "img" / "fake.png").write_text("hello, not a png")
    rows = good_rows(3)
    rows[0][1] = "img/fake.png"
    write_rows(data_dir / "train.csv", HEADER, rows)
    msg = error_of(load_split, data_dir, "train")
    assert "column 'path'" in msg and "not a readable image" in msg and "line 2" in msg


def test_image_path_is_directory(data_dir):
    rows = good_rows(3)
    rows[0][1] = "img"
    write_rows(data_dir / "train.csv", HEADER, rows)
    msg = error_of(load_split, data_dir, "train")
    assert "column 'path'" in msg and "is a directory" in msg and "line 2" in msg


def test_all_problems_reported_together(data_dir):
    rows = good_rows(6)
    rows[0][7] = "e"  # bad answer
    rows[1][3] = ""  # empty option a
    rows[4][1] = "img/missing.png"  # missing image
    write_rows(data_dir / "train.csv", HEADER, rows)
    msg = error_of(load_split, data_dir, "train")
    assert "3 problems" in msg
    assert "column 'answer'" in msg and "column 'a'" in msg and "does not exist" in msg
    assert msg.count("\n  - ") == 3


def test_submission_template_problems(data_dir):
    (data_dir / "sample_submission.csv").unlink()
    assert "sample_submission.csv" in error_of(load_submission_template, data_dir)
    write_rows(data_dir / "sample_submission.csv", ["ID", "answer"], [["q0", "a"], ["q0", "a"]])
    assert "missing column 'id'" in error_of(load_submission_template, data_dir)
    write_rows(data_dir / "sample_submission.csv", ["id", "label"], [["q0", "a"], ["q0", "a"]])
    msg = error_of(load_submission_template, data_dir)
    assert "duplicate" in msg and "'q0'" in msg
    write_rows(data_dir / "sample_submission.csv", ["id", "label"], [["q0", "a"], ["q1", "a"]])
    assert load_submission_template(data_dir).attrs["answer_column"] == "label"


# ----------------------------------------------------------------------------------------- folds


def fold_df(n_per_class=10):
    return pd.DataFrame(
        {"id": [f"r{i}" for i in range(4 * n_per_class)], "answer": list("abcd") * n_per_class}
    )


def test_folds_stratified_one_based_and_reused(tmp_path):
    df = fold_df(10)
    out = tmp_path / "run"
    folds = assign_folds(df, 5, 0, out)
    assert list(folds.index) == list(df.index)
    assert sorted(folds.unique()) == [1, 2, 3, 4, 5]
    counts = pd.crosstab(folds, df["answer"])
    assert (counts == 2).all().all()  # 10 per class / 5 folds
    saved = pd.read_csv(out / "folds.csv", dtype=str)
    assert list(saved.columns) == ["id", "fold"] and len(saved) == 40
    assert json.loads((out / "folds.json").read_text()) == {"n_folds": 5, "seed": 0, "n_rows": 40}
    # second call reuses the file, even for a shuffled frame
    before = (out / "folds.csv").read_bytes()
    shuffled = df.sample(frac=1, random_state=1)
    again = assign_folds(shuffled, 5, 0, out)
    assert (again == folds.loc[shuffled.index]).all()
    assert (out / "folds.csv").read_bytes() == before


def test_folds_mismatch_n_folds(tmp_path):
    df, out = fold_df(10), tmp_path / "run"
    assign_folds(df, 5, 0, out)
    before = (out / "folds.csv").read_bytes()
    msg = error_of(assign_folds, df, 4, 0, out)
    assert "folds.csv" in msg and "n_folds=5" in msg and "n_folds=4" in msg
    assert "delete" in msg and "--n_folds" in msg
    msg = error_of(assign_folds, df, 5, 1, out)
    assert "seed=0" in msg and "seed=1" in msg
    msg = error_of(assign_folds, fold_df(11), 5, 0, out)
    assert "does not match the training ids" in msg
    assert (out / "folds.csv").read_bytes() == before


def test_folds_too_few_rows_per_class(tmp_path):
    df = pd.DataFrame({"id": [f"r{i}" for i in range(13)], "answer": list("aaaaabbbbbccd")})
    out = tmp_path / "run"
    msg = error_of(assign_folds, df, 5, 0, out)
    assert "'c' has 2" in msg and "'d' has 1" in msg and "a=5" in msg
    assert not out.exists()


def test_folds_n_folds_below_two(tmp_path):
    out = tmp_path / "run"
    assert "at least 2" in error_of(assign_folds, fold_df(), 1, 0, out)
    assert not out.exists()


# ----------------------------------------------------------------------------------------- errors -> exit 2


def test_report_user_errors_exit_code_two(capsys):
    @report_user_errors
    def main():
        raise UserError("data/train.csv: something is wrong")

    with pytest.raises(SystemExit) as exc:
        main()
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert err.splitlines() == ["error: data/train.csv: something is wrong"]


# ----------------------------------------------------------------------------------------- easy-VQA


def _load_prepare():
    spec = importlib.util.spec_from_file_location("prepare_easy_vqa", REPO / "data" / "prepare_easy_vqa.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.fixture(scope="module")
def easy_dir(tmp_path_factory):
    pytest.importorskip("easy_vqa")
    out = tmp_path_factory.mktemp("easy")
    assert _load_prepare().main(["--out", str(out), "--n_train", "200", "--n_test", "50", "--seed", "0"]) == 0
    return out


def test_prepare_easy_vqa_valid(easy_dir):
    train = load_split(easy_dir, "train")
    test = load_split(easy_dir, "test")
    sub = load_submission_template(easy_dir)
    answers = pd.read_csv(easy_dir / "test_answers.csv", dtype=str)
    assert len(train) == 200 and len(test) == 50
    assert list(sub["id"]) == list(test["id"]) == list(answers["id"])
    assert set(sub["answer"]) == {"a"} and set(answers["answer"]) <= set("abcd")
    assert set(train["question_type"]) <= {"yes/no", "shape", "colour"}
    assert train["id"].str.match(r"train_\d{5}$").all()
    assert set(train["answer"].value_counts()) == {50}  # balanced over a-d
    folds = assign_folds(train, 5, 0, easy_dir / "run")
    assert sorted(folds.unique()) == [1, 2, 3, 4, 5]


def test_prepare_easy_vqa_options(easy_dir):
    import easy_vqa

    qs, ans, _ = easy_vqa.get_train_questions()
    train = load_split(easy_dir, "train")
    for row in train.itertuples():
        opts = [row.a, row.b, row.c, row.d]
        assert len(set(opts)) == 4
        right = ans[int(row.id.split("_")[1])]
        assert getattr(row, row.answer) == right  # the right answer is among the options, at `answer`
        if row.question_type == "yes/no":
            assert {"yes", "no"} <= set(opts)
        elif row.question_type == "shape":
            assert {"circle", "rectangle", "triangle"} <= set(opts)
        else:
            assert not {"yes", "no"} & set(opts)


def test_prepare_easy_vqa_copy_images_and_seed(tmp_path):
    pytest.importorskip("easy_vqa")
    prep = _load_prepare()
    out = tmp_path / "copy"
    prep.main(["--out", str(out), "--n_train", "20", "--n_test", "5", "--copy_images", "--seed", "3"])
    raw = pd.read_csv(out / "train.csv", dtype=str)
    assert raw["path"].str.startswith("images/train/").all()
    assert len(load_split(out, "train")) == 20
    out2 = tmp_path / "copy2"
    prep.main(["--out", str(out2), "--n_train", "20", "--n_test", "5", "--seed", "3"])
    raw2 = pd.read_csv(out2 / "train.csv", dtype=str)
    assert list(raw2["id"]) == list(raw["id"]) and list(raw2["answer"]) == list(raw["answer"])
    assert Path(raw2["path"][0]).is_absolute()


def test_prepare_easy_vqa_bad_n_train(tmp_path, capsys):
    pytest.importorskip("easy_vqa")
    with pytest.raises(SystemExit) as exc:
        _load_prepare().main(["--out", str(tmp_path / "x"), "--n_train", "99999999"])
    assert exc.value.code == 2
    assert "--n_train 99999999 is out of range" in capsys.readouterr().err


def test_prepare_easy_vqa_group_says_whether_the_asked_thing_is_in_the_image(easy_dir):
    """`group` checked against the image's own colour and shape, read off its colour/shape questions."""
    import easy_vqa

    qs, ans, image_ids = easy_vqa.get_train_questions()
    colour_of, shape_of = {}, {}
    for q, a, img in zip(qs, ans, image_ids):
        if "color" in q:
            colour_of[img] = a
        elif "shape" in q and a in ("circle", "rectangle", "triangle"):
            shape_of[img] = a
    train = pd.read_csv(easy_dir / "train.csv", dtype=str)
    assert "group" not in pd.read_csv(easy_dir / "test.csv", dtype=str).columns
    checked = 0
    for row in train.itertuples():
        if row.type != "yes/no":
            assert row.group == row.type
            continue
        img = image_ids[int(row.id.split("_")[1])]
        words = row.question.rstrip("?").split()
        asked_colour = next((w for w in words if w in set(colour_of.values())), None)
        truth = colour_of.get(img) if asked_colour else shape_of.get(img)
        if truth is None:
            continue
        asked = asked_colour or next(w for w in words if w in ("circle", "rectangle", "triangle"))
        subject = "colour" if asked_colour else "shape"
        negated = "not" in words or words[:2] == ["is", "no"]
        present = asked == truth
        assert row.group == f"yes/no-{subject}-{'negated' if negated else 'plain'}-{'present' if present else 'absent'}"
        assert (row.answer and getattr(row, row.answer)) == ("yes" if present != negated else "no"), row.question
        checked += 1
    assert checked > 50


def test_oversample_by_another_column(easy_dir):
    from mcvqa.errors import UserError
    from train_lora import oversample, oversample_factors

    df = load_split(easy_dir, "train")
    counts = df["group"].value_counts()
    out = oversample(df, oversample_factors("yes/no-colour-plain-present=4", df["group"], "group"), 0, "group")
    assert out["group"].value_counts()["yes/no-colour-plain-present"] == 4 * counts["yes/no-colour-plain-present"]
    assert len(out) == len(df) + 3 * counts["yes/no-colour-plain-present"]
    with pytest.raises(UserError, match="no 'group' value 'yes/no-present'"):
        oversample_factors("yes/no-present=2", df["group"], "group")
