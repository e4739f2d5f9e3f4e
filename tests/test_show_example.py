"""tools/show_example.py: one training row as the model receives it, the supervised token marked."""

import re

import pytest

from tools.show_example import main

PIX = ["--min_pixels", "3136", "--max_pixels", "3136"]


@pytest.fixture(scope="module")
def train_rows(easy_vqa_dir):
    from mcvqa.data import load_split

    return load_split(easy_vqa_dir, "train")


def show(tiny_model, easy_vqa_dir, *extra):
    return main(["--data_dir", str(easy_vqa_dir), "--model_name_or_path", str(tiny_model), *PIX, *extra])


def shown_options(text):
    body = text.split("--- as the model receives it")[1]
    return dict(line.split(". ", 1) for line in body.splitlines() if line[:3] in ("a. ", "b. ", "c. ", "d. "))


def test_the_marked_token_is_the_answer_letter(tiny_model, easy_vqa_dir, train_rows):
    for n in (0, 5):
        text = show(tiny_model, easy_vqa_dir, "--row", str(n))
        row = train_rows.iloc[n]
        assert re.findall(r"\[\[(.*?)\]\]", text) == [row["answer"]]
        assert f"(id {row['id']}," in text and "order:     as in train.csv" in text
        assert shown_options(text) == {k: row[k] for k in "abcd"}
        # 56x56 pixels, patch 14 x merge 2: one run of 4 image tokens, shown as a count.
        assert "<|image_pad|> x4<|vision_end|>" in text and "<|image_pad|><|image_pad|>" not in text
        # The answer position is the token just before the supervised one, and the tail table says so.
        at = int(re.search(r"answer position (\d+)", text).group(1))
        assert re.search(rf"supervised token\(s\) at {at + 1}\n", text)
        assert re.search(rf"^ +{at} +\d+ +- +'.*'  <- answer position$", text, re.M)
        assert re.search(rf"^ +{at + 1} +(\d+) +\1 +'{row['answer']}'$", text, re.M)


def test_shuffled_options_mark_the_letter_the_answer_moved_to(tiny_model, easy_vqa_dir, train_rows):
    row = train_rows.iloc[2]
    moved = set()
    for seed in range(4):
        text = show(tiny_model, easy_vqa_dir, "--row", "2", "--shuffle_choices", "--seed", str(seed))
        [letter] = re.findall(r"\[\[(.*?)\]\]", text)
        assert shown_options(text)[letter] == row[row["answer"]]
        assert f"-> shown as '{letter}'" in text
        moved.add((letter, text.split("order:")[1].splitlines()[0]))
    assert len(moved) > 1, "the option order never changed"


def test_supervise_eos_marks_the_end_of_turn_too(tiny_model, easy_vqa_dir, train_rows):
    text = show(tiny_model, easy_vqa_dir, "--row", "1", "--supervise_eos")
    assert re.findall(r"\[\[(.*?)\]\]", text) == [train_rows.iloc[1]["answer"] + "<|im_end|>"]


def test_a_row_out_of_range_is_one_error_line(tiny_model, easy_vqa_dir, capsys):
    with pytest.raises(SystemExit) as exit_:
        show(tiny_model, easy_vqa_dir, "--row", "500")
    assert exit_.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"error: --row 500: {easy_vqa_dir / 'train.csv'} has 120 rows (0 to 119)"]
