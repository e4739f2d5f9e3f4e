"""tools/eda.py: the numbers of the report on a folder whose properties are known, token lengths as the
training collator counts them (checked against the processor itself), sampling, and user errors."""

import json

import pandas as pd
import pytest
from PIL import Image

from tools import eda

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def write_csv(path, rows):
    pd.DataFrame(rows).to_csv(path, index=False)


@pytest.fixture(scope="module")
def known_dir(tmp_path_factory):
    """5 train rows (all answered 'a', one conflicting label, one image copied under a second name, an L-mode
    image, an EXIF-rotated JPEG) and 2 test rows (one question and one image shared with train)."""
    root = tmp_path_factory.mktemp("eda_known")
    Image.new("RGB", (40, 20), (200, 0, 0)).save(root / "wide.png")
    (root / "copy.png").write_bytes((root / "wide.png").read_bytes())
    Image.new("L", (20, 40), 128).save(root / "tall.png")
    exif = Image.Exif()
    exif[eda.EXIF_ORIENTATION] = 6  # stored 30x10, shown 10x30
    Image.new("RGB", (30, 10), (0, 0, 200)).save(root / "rotated.jpg", exif=exif)
    Image.new("RGB", (64, 64), (0, 200, 0)).save(root / "test.png")
    colour = "what color is the shape?"
    write_csv(root / "train.csv", [
        dict(id="t1", path="wide.png", question=colour, a="red", b="blue", c="green", d="black", answer="a"),
        dict(id="t2", path="wide.png", question=colour, a="blue", b="red", c="green", d="black", answer="a"),
        dict(id="t3", path="tall.png", question="what shape is it?", a="circle", b="square", c="star", d="red",
             answer="a"),
        dict(id="t4", path="copy.png", question="is there a circle?", a="yes", b="no", c="red", d="blue", answer="a"),
        dict(id="t5", path="rotated.jpg", question=colour, a="blue", b="red", c="green", d="teal", answer="a"),
    ])
    write_csv(root / "test.csv", [
        dict(id="s1", path="tall.png", question="what shape is it?", a="circle", b="square", c="star", d="red"),
        dict(id="s2", path="test.png", question="is there a square?", a="yes", b="no", c="red", d="blue"),
    ])
    write_csv(root / "sample_submission.csv", [dict(id="s1", answer="a"), dict(id="s2", answer="a")])
    return root


@pytest.fixture(scope="module")
def known(known_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("eda_known_out")
    summary = eda.main(["--data_dir", str(known_dir), "--out", str(out)])
    return out, summary


def test_answer_balance_and_question_types(known):
    _, s = known
    assert s["answers"]["counts"] == {"a": 5, "b": 0, "c": 0, "d": 0}
    assert s["answers"]["majority_share"] == 1.0 and s["answers"]["chi2_p_value"] < 0.01
    # colour rows answered red, blue, blue: the text prior is visible per type.
    assert s["answers"]["answer_texts_by_type"]["colour"] == pytest.approx({"blue": 2 / 3, "red": 1 / 3})
    assert s["question_types"]["train"] == pytest.approx({"colour": 0.6, "shape": 0.2, "yes/no": 0.2})
    assert s["question_types"]["test"] == pytest.approx({"shape": 0.5, "yes/no": 0.5})


def test_duplicates_conflicts_and_cross_split_overlap(known):
    _, s = known
    train = s["duplicates"]["train"]
    assert train["rows_with_repeated_image_question"] == 2 and train["conflicting_pairs"] == 1
    assert train["conflict_examples"][0]["question"] == "what color is the shape?"
    assert train["distinct_images"] == 4 and train["rows_with_repeated_question"] == 3
    assert s["cross_split"] == {"test_questions_in_train": 0.5, "test_images_in_train": 0.5,
                                "test_image_question_pairs_in_train": 0.5}
    assert s["images_shared_by_content"] == 1  # tall.png is in both splits


def test_image_sizes_modes_and_exif(known):
    _, s = known
    im = s["images"]["train"]
    assert im["distinct_images"] == 4
    assert im["identical_content_groups"] == 1 and im["paths_in_identical_groups"] == 2  # wide.png == copy.png
    assert im["rotated_by_exif"] == 1 and im["exif_orientation"] == pytest.approx({"1": 0.75, "6": 0.25})
    assert im["modes"] == pytest.approx({"RGB": 0.75, "L": 0.25})
    # rotated.jpg is stored 30x10 and shown 10x30: sizes are as shown.
    assert (im["width"]["min"], im["width"]["max"], im["height"]["min"], im["height"]["max"]) == (10, 40, 20, 40)
    assert im["aspect_ratio"]["min"] == pytest.approx(1 / 3) and im["aspect_ratio"]["max"] == 2.0
    # Every image is below the default 112x112 floor: all are upscaled, none downscaled.
    assert im["upscaled"] == 4 and im["downscaled"] == 0


def test_writes_report_summary_and_plots(known):
    out, s = known
    assert json.loads((out / "summary.json").read_text())["answers"]["counts"]["a"] == 5
    report = (out / "report.md").read_text()
    for heading in ("## Answer letters", "## Question types", "## Duplicates", "## Images", "## Text lengths",
                    "## Train/test shift"):
        assert heading in report
    assert "tokens" not in s  # no model given
    assert s["plots"] and all((out / p).read_bytes()[:8] == PNG_MAGIC for p in s["plots"])
    assert {"answers.png", "question_types.png", "images.png", "text_lengths.png"} <= set(s["plots"])


def test_samples_images_but_counts_text_on_every_row(known_dir, tmp_path):
    s = eda.main(["--data_dir", str(known_dir), "--out", str(tmp_path), "--max_rows", "2", "--seed", "1"])
    assert s["sampled"] == {"train": 2, "test": 2}
    assert s["images"]["train"]["distinct_images"] <= 2
    assert s["text"]["train"]["question_words"]["count"] == 5


def test_a_folder_without_test_csv_gets_a_train_only_report(known_dir, tmp_path):
    import shutil

    data = tmp_path / "data"
    shutil.copytree(known_dir, data)
    (data / "test.csv").unlink()
    s = eda.main(["--data_dir", str(data), "--out", str(tmp_path / "out")])
    assert s["rows"] == {"train": 5, "test": None} and "shift" not in s and "cross_split" not in s
    report = (tmp_path / "out" / "report.md").read_text()
    assert "no test.csv" in report and "## Train/test shift" not in report and "test share" not in report


def test_token_lengths_match_training_and_the_processor(tiny_model, easy_vqa_dir, processor, tmp_path):
    from collator import MCVQACollator
    from mcvqa.data import load_split
    from mcvqa.prompts import conversation

    pix = ["--min_pixels", "3136", "--max_pixels", "3136"]
    s = eda.main(["--data_dir", str(easy_vqa_dir), "--out", str(tmp_path), "--model_name_or_path", str(tiny_model),
                  "--max_rows", "20", *pix])
    tok = s["tokens"]
    assert tok["splits"]["train"]["total"]["count"] == 20 and tok["splits"]["train"]["over_max_length"] == 0
    assert tok["suggested_max_length"] % 64 == 0 and tok["suggested_max_length"] >= tok["splits"]["train"]["total"]["max"] + 8
    # The budget table's formula (text tokens + Qwen's resize) agrees with the collator at the chosen budget.
    chosen = next(b for b in tok["budgets"] if b["max_pixels"] == 3136)
    assert (chosen["p50"], chosen["max"]) == (tok["splits"]["train"]["total"]["p50"],
                                              tok["splits"]["train"]["total"]["max"])
    assert "token_lengths.png" in s["plots"]

    # Independently: the processor's own chat template + image expansion gives the same prompt length.
    rows = load_split(easy_vqa_dir, "test").head(3).to_dict("records")
    collator = MCVQACollator(processor, min_pixels=3136, max_pixels=3136, train=False)
    totals, _, _, prompts = eda.token_lengths(collator, rows)
    for row, total, prompt in zip(rows, totals, prompts):
        text = processor.apply_chat_template(conversation(row["question"], [row[k] for k in "abcd"]),
                                             tokenize=False, add_generation_prompt=True)
        with Image.open(row["image"]) as im:
            ids = processor(text=[text], images=[im.convert("RGB")], return_tensors="pt")["input_ids"][0]
        assert total == prompt == len(ids)

    over = eda.main(["--data_dir", str(easy_vqa_dir), "--out", str(tmp_path / "short"), "--model_name_or_path",
                     str(tiny_model), "--max_rows", "5", "--max_length", "10", *pix])
    assert over["tokens"]["splits"]["train"]["over_max_length"] == 5


def test_user_errors_exit_2_with_one_line(tmp_path, known_dir, capsys):
    with pytest.raises(SystemExit) as exit_info:
        eda.main(["--data_dir", str(tmp_path / "nowhere"), "--out", str(tmp_path / "out")])
    assert exit_info.value.code == 2
    assert capsys.readouterr().err.startswith("error: ") and not (tmp_path / "out").exists()

    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "train.csv").write_text("id,path,question,a,b,c,d,answer\n1,missing.png,q?,x,y,z,w,e\n")
    with pytest.raises(SystemExit):
        eda.main(["--data_dir", str(bad), "--out", str(tmp_path / "out")])
    err = capsys.readouterr().err
    assert "train.csv" in err and "'answer'" in err and "Traceback" not in err

    with pytest.raises(SystemExit):
        eda.main(["--data_dir", str(known_dir), "--out", str(tmp_path / "out"), "--max_rows", "-1"])
    assert "--max_rows -1" in capsys.readouterr().err
