"""Issue 17's user path on the CPU: bench/pretrain_tiny.py (an open-ended base that never sees options or letters)
and tools/zero_shot.py (a base's restricted-letter accuracy before any fine-tuning)."""

import json
import sys
from pathlib import Path

import pandas as pd
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))

PIX = ["--min_pixels", "3136", "--max_pixels", "3136"]


@pytest.fixture(scope="module")
def base(easy_vqa_dir, tmp_path_factory):
    from pretrain_tiny import main

    out = tmp_path_factory.mktemp("base") / "tiny_base"
    main(["--data_dir", str(easy_vqa_dir), "--out", str(out), "--max_steps", "3", "--batch_size", "8",
          "--pixels", "3136", "--hidden_size", "64", "--num_layers", "2", "--heads", "2", "--eval_rows", "16",
          "--log_every", "1", "--freeze_head"])
    return out


def test_the_base_sees_image_and_question_and_answers_with_the_word(easy_vqa_dir):
    from collator import MCVQACollator
    from mcvqa.data import load_split
    from mcvqa.modeling import load_processor
    from pretrain_tiny import OPEN_TEMPLATE, open_ended
    from tools.make_tiny_model import make_tiny_model

    df = load_split(easy_vqa_dir, "train")
    rows = open_ended(df)
    assert [r["answer"] for r in rows] == [r[letter] for r, letter in zip(df.to_dict("records"), df["answer"])]
    folder = make_tiny_model("qwen2_5_vl", Path(easy_vqa_dir).parent / "tok_only", min_pixels=3136, max_pixels=3136)
    processor = load_processor(folder)
    collator = MCVQACollator(processor, 3136, 3136, train=True, template=OPEN_TEMPLATE)
    batch = collator(rows[:4])
    tok = processor.tokenizer
    for i, row in enumerate(rows[:4]):
        text = tok.decode(batch["input_ids"][i])
        assert row["question"] in text
        # No option line, no option letter, no instruction: the multiple-choice format is never shown.
        assert "\na. " not in text and "letter" not in text
        supervised = batch["labels"][i][batch["labels"][i] != -100]
        assert tok.decode(supervised).strip() == row["answer"]


def test_pretraining_writes_a_model_folder_and_its_record(base, easy_vqa_dir):
    from transformers import AutoModelForImageTextToText

    record = json.loads((base / "pretraining.json").read_text())
    assert record["steps"] == 3 and record["settings"]["freeze_head"] is True
    assert record["train_rows"] == len(pd.read_csv(Path(easy_vqa_dir) / "train.csv"))
    assert 0.0 <= record["open_ended_test_accuracy"] <= 1.0
    config = json.loads((base / "config.json").read_text())["text_config"]
    assert config["num_attention_heads"] == config["num_key_value_heads"] == 2
    AutoModelForImageTextToText.from_pretrained(base)  # a normal model folder


def test_zero_shot_scores_the_base_as_prediction_would(base, easy_vqa_dir, tmp_path, capsys):
    from tools.zero_shot import main

    out = tmp_path / "zs.csv"
    acc = main(["--model_name_or_path", str(base), "--data_dir", str(easy_vqa_dir), "--out", str(out), *PIX])
    assert f"zero-shot accuracy: {acc:.3f}" in capsys.readouterr().out
    probs = pd.read_csv(out, dtype={"id": str})
    test = pd.read_csv(Path(easy_vqa_dir) / "test.csv", dtype={"id": str})
    assert list(probs["id"]) == list(test["id"])
    assert probs[list("abcd")].sum(axis=1).sub(1).abs().max() < 1e-5
    answers = pd.read_csv(Path(easy_vqa_dir) / "test_answers.csv", dtype=str).set_index("id")["answer"]
    pred = probs.set_index("id")[list("abcd")].idxmax(axis=1)
    assert acc == pytest.approx((pred == answers.loc[pred.index]).mean())


def test_zero_shot_refuses_a_missing_answers_file(base, easy_vqa_dir, tmp_path, capsys):
    from tools.zero_shot import main

    with pytest.raises(SystemExit) as exit_:
        main(["--model_name_or_path", str(base), "--data_dir", str(easy_vqa_dir), "--answers",
              str(tmp_path / "nope.csv"), *PIX])
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert "nope.csv: file not found" in err and "Traceback" not in err


def test_letter_margin_scores_the_bases_answer_word_per_layout(base, easy_vqa_dir, capsys):
    """The open-ended layout reproduces pretrain_tiny.py's own report on the same rows; every layout is scored."""
    from letter_margin import main

    record = json.loads((base / "pretraining.json").read_text())
    main(["--base", str(base), "--data_dir", str(easy_vqa_dir), "--rows", "16", "--pixels", "3136",
          "--template", "{options}\\n{question}"])
    lines = {ln.split(":")[0]: ln for ln in capsys.readouterr().out.splitlines()}
    for layout in ("open-ended", "default", "--template"):
        assert f"answer-word accuracy, {layout} layout" in lines
    open_acc = float(lines["answer-word accuracy, open-ended layout"].split(": ")[1].split()[0])
    assert open_acc == pytest.approx(record["open_ended_test_accuracy"], abs=1e-4)


def test_letter_margin_refuses_a_template_it_cannot_fill(base, easy_vqa_dir, capsys):
    from letter_margin import main

    with pytest.raises(SystemExit) as exit_:
        main(["--base", str(base), "--data_dir", str(easy_vqa_dir), "--template", "{question} {opts}"])
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert "unknown placeholder(s) {opts}" in err and "Traceback" not in err


@pytest.fixture(scope="module")
def short_base(easy_vqa_dir, tmp_path_factory):
    """A base pretrained with --system_prompt false --text_loss_weight 1 (the CPU demo's recipe), 2 steps."""
    from pretrain_tiny import main

    out = tmp_path_factory.mktemp("short") / "base"
    main(["--data_dir", str(easy_vqa_dir), "--out", str(out), "--max_steps", "2", "--batch_size", "4",
          "--pixels", "3136", "--hidden_size", "64", "--num_layers", "2", "--heads", "2", "--eval_rows", "8",
          "--system_prompt", "false", "--text_loss_weight", "1"])
    return out


def test_a_base_without_the_default_system_turn_renders_rows_without_it(short_base, easy_vqa_dir):
    from collator import MCVQACollator
    from mcvqa.data import load_split
    from mcvqa.modeling import load_processor

    record = json.loads((short_base / "pretraining.json").read_text())
    assert record["settings"]["system_prompt"] is False and record["settings"]["text_loss_weight"] == 1.0
    processor = load_processor(short_base)
    row = load_split(easy_vqa_dir, "train").iloc[0].to_dict()
    text = processor.tokenizer.decode(MCVQACollator(processor, 3136, 3136, train=False)([row])["input_ids"][0])
    assert "system" not in text and "helpful assistant" not in text
    assert text.startswith("<|im_start|>user\n<|vision_start|>") and text.endswith("<|im_start|>assistant\n")


def test_the_text_loss_is_next_token_cross_entropy_over_each_rows_own_text(short_base, easy_vqa_dir):
    """The batched loss (left padding, one mask) equals the answer loss plus the weight times the mean next-token
    cross-entropy over every row's text tokens, each row run alone without padding (image and answer excluded)."""
    import torch
    import torch.nn.functional as F

    from collator import MCVQACollator, rope_positions
    from mcvqa.data import load_split
    from mcvqa.modeling import load_model, load_processor
    from mcvqa.scoring import MODEL_KEYS, answer_position
    from pretrain_tiny import OPEN_TEMPLATE, open_ended, open_ended_loss

    processor = load_processor(short_base)
    model, _ = load_model(short_base, precision="fp32", attn_implementation="eager", full_finetune=True, liger="false")
    model.eval()
    image = processor.tokenizer.convert_tokens_to_ids(processor.image_token)
    collator = MCVQACollator(processor, 3136, 3136, train=True, template=OPEN_TEMPLATE,
                             position_fn=rope_positions(model, image))
    rows = open_ended(load_split(easy_vqa_dir, "train"))[:6]
    batch = collator(rows)
    assert (batch["attention_mask"] == 0).any()  # the rows differ in length: padding is exercised
    with torch.no_grad():
        answer_only = open_ended_loss(model, batch)
        both = open_ended_loss(model, batch, 0.5, image)
        total, count = 0.0, 0
        for row in rows:
            one = collator([row])
            at = answer_position(one)
            logits = model(**{k: one[k] for k in MODEL_KEYS if k in one}).logits[0].float()
            target = one["input_ids"][0, 1:]
            keep = target != image
            keep[at] = False
            total += F.cross_entropy(logits[:-1][keep], target[keep], reduction="sum").item()
            count += int(keep.sum())
    assert both.item() == pytest.approx(answer_only.item() + 0.5 * total / count, rel=1e-5)


DEMO_BASE = Path(__file__).resolve().parents[1] / "models" / "easy_vqa_base"


def test_the_demo_base_is_small_and_records_how_it_was_made():
    """`make demo` fine-tunes models/easy_vqa_base: at most ~10 MB, and its pretraining.json holds the command,
    seed and data split (the train split only) that made it, which pretrain_tiny.py's parser still reads to the
    recorded settings (options added since at their defaults)."""
    import shlex

    from pretrain_tiny import build_parser

    size = sum(f.stat().st_size for f in DEMO_BASE.iterdir())
    assert size <= 10 * 2**20
    record = json.loads((DEMO_BASE / "pretraining.json").read_text())
    command = shlex.split(record["command"])
    assert command[:2] == ["python", "bench/pretrain_tiny.py"]
    parser = build_parser()
    parsed = vars(parser.parse_args(command[2:]))
    assert {k: parsed[k] for k in record["settings"]} == record["settings"]
    # options added after the base was made are at their defaults: the command still makes the same base
    assert all(parsed[k] == parser.get_default(k) for k in parsed.keys() - record["settings"].keys())
    assert record["settings"]["seed"] == 1 and record["train_file"].endswith("train.csv")
    assert "train split only" in record["data"]
    card = (DEMO_BASE / "README.md").read_text()
    assert "prepare_easy_vqa.py" in card and record["command"] in card


def test_the_demo_base_loads_and_renders_rows_as_it_was_pretrained(easy_vqa_dir):
    import yaml

    from collator import MCVQACollator
    from mcvqa.data import load_split
    from mcvqa.modeling import load_model, load_processor

    record = json.loads((DEMO_BASE / "pretraining.json").read_text())
    config = yaml.safe_load((DEMO_BASE.parents[1] / "configs" / "cpu_lora_demo.yaml").read_text())
    pixels = record["settings"]["pixels"]
    assert config["min_pixels"] == config["max_pixels"] == pixels
    processor = load_processor(DEMO_BASE)
    model, _ = load_model(DEMO_BASE, precision="fp32", attn_implementation="sdpa", full_finetune=True, liger="false")
    row = load_split(easy_vqa_dir, "train").iloc[0].to_dict()
    batch = MCVQACollator(processor, pixels, pixels, train=False, template=config["prompt_template"])([row])
    text = processor.tokenizer.decode(batch["input_ids"][0])
    assert "system" not in text and row["question"] in text
    assert (batch["input_ids"][0] == processor.tokenizer.convert_tokens_to_ids(processor.image_token)).sum() == \
        pixels // (28 * 28)
    assert model.config.text_config.hidden_size == record["settings"]["hidden_size"]


def test_context_questions_are_other_questions_of_the_same_image_with_their_answers(easy_vqa_dir):
    from mcvqa.data import load_split
    from pretrain_tiny import InContext, open_ended

    rows = open_ended(load_split(easy_vqa_dir, "train"))
    data = InContext(rows, 2, seed=0)
    same_image = {}
    for row in rows:
        same_image.setdefault(row["image"], set()).add(f"{row['question']} {row['answer']}")
    counts = set()
    for i in range(len(rows)):
        row = data[i]
        *context, question = row["question"].split("\n")
        assert question == rows[i]["question"] and row["answer"] == rows[i]["answer"]
        assert set(context) <= same_image[rows[i]["image"]] - {f"{rows[i]['question']} {rows[i]['answer']}"}
        counts.add(len(context))
    assert counts == {0, 1, 2}
    assert rows[0]["question"] == load_split(easy_vqa_dir, "train").iloc[0]["question"]  # the rows are not changed
