"""The collator: chat-template inputs, masked labels (decoded), image tokens, caching, left padding."""

import pytest
import torch
from PIL import Image

from collator import ImageEncoder, MCVQACollator, answer_index, fit_pixels, option_letter_ids
from mcvqa.errors import UserError
from mcvqa.prompts import conversation
from mcvqa.tta import shift


@pytest.fixture
def rows(easy_vqa_dir):
    from mcvqa.data import load_split

    return load_split(easy_vqa_dir, "train").to_dict("records")


def supervised_text(tokenizer, batch, i):
    labels = batch["labels"][i]
    return tokenizer.decode(labels[labels != -100])


@pytest.mark.parametrize("arch", ["qwen2_vl", "qwen2_5_vl", "qwen3_vl"])
def test_only_the_answer_letter_is_supervised(tiny_models, rows, arch):
    from mcvqa.modeling import load_processor

    processor = load_processor(tiny_models[arch], 56 * 56, 56 * 56)
    batch = MCVQACollator(processor, 56 * 56, 56 * 56)(rows[:6])
    for i, row in enumerate(rows[:6]):
        assert supervised_text(processor.tokenizer, batch, i) == row["answer"]
        assert int((batch["labels"][i] != -100).sum()) == 1


def test_supervise_eos_adds_the_end_of_turn_token(processor, rows):
    batch = MCVQACollator(processor, 56 * 56, 56 * 56, supervise_eos=True)(rows[:3])
    for i, row in enumerate(rows[:3]):
        assert supervised_text(processor.tokenizer, batch, i) == row["answer"] + "<|im_end|>"


def test_answer_index_points_just_before_the_letter(processor, rows):
    batch = MCVQACollator(processor, 56 * 56, 56 * 56)(rows[:5])
    at = int(batch["answer_index"][0])
    assert (batch["answer_index"] == at).all()
    letters = processor.tokenizer.batch_decode(batch["input_ids"][:, at + 1: at + 2])
    assert letters == [r["answer"] for r in rows[:5]]
    # What precedes the answer is exactly the generation prompt: the scoring input.
    prompt = processor.apply_chat_template(conversation(rows[0]["question"], [rows[0][k] for k in "abcd"]),
                                           tokenize=False, add_generation_prompt=True)
    assert processor.tokenizer.decode(batch["input_ids"][0, : at + 1][batch["attention_mask"][0, : at + 1] == 1]
                                      ).endswith(prompt.split("<|vision_end|>")[-1])


def test_image_pad_count_matches_grid(processor, rows):
    batch = MCVQACollator(processor, 56 * 56, 112 * 112)(rows[:4])
    image_id = processor.tokenizer.convert_tokens_to_ids(processor.image_token)
    merge = processor.image_processor.merge_size
    for i in range(4):
        assert int((batch["input_ids"][i] == image_id).sum()) == int(batch["image_grid_thw"][i].prod()) // merge**2
    assert batch["pixel_values"].shape[0] == int(batch["image_grid_thw"].prod(-1).sum())


def test_same_ids_as_the_processor_itself(processor, rows):
    """Token-space image expansion gives exactly what `processor(text, images)` gives."""
    collator = MCVQACollator(processor, 56 * 56, 56 * 56, train=False)
    row = rows[0]
    ours = collator([row])
    text = processor.apply_chat_template(conversation(row["question"], [row[k] for k in "abcd"]),
                                         tokenize=False, add_generation_prompt=True)
    image = collator.images.load(row["image"])
    ref = processor(text=[text], images=[image], return_tensors="pt", do_resize=False)
    assert ours["input_ids"].tolist() == ref["input_ids"].tolist()
    assert torch.equal(ours["image_grid_thw"], ref["image_grid_thw"])
    assert torch.allclose(ours["pixel_values"], ref["pixel_values"])
    if "mm_token_type_ids" in ref:
        assert torch.equal(ours["mm_token_type_ids"], ref["mm_token_type_ids"])


def test_left_padding_and_masks(processor, rows):
    batch = MCVQACollator(processor, 56 * 56, 56 * 56)(rows[:8])
    lengths = batch["attention_mask"].sum(1)
    assert lengths.min() < lengths.max(), "the sample should have rows of different lengths"
    for i in range(8):
        pad = batch["input_ids"].shape[1] - int(lengths[i])
        assert batch["attention_mask"][i, :pad].sum() == 0 and batch["attention_mask"][i, pad:].all()
        assert (batch["labels"][i, :pad] == -100).all()
    assert batch["attention_mask"][:, -1].all()


def test_mm_token_type_ids_present_for_models_that_need_it(processor, rows):
    batch = MCVQACollator(processor, 56 * 56, 56 * 56)(rows[:2])
    image_id = processor.tokenizer.convert_tokens_to_ids(processor.image_token)
    assert torch.equal(batch["mm_token_type_ids"], (batch["input_ids"] == image_id).long())


def test_scoring_batch_has_no_labels_and_ends_with_the_prompt(processor, rows):
    batch = MCVQACollator(processor, 56 * 56, 56 * 56, train=False)(rows[:3])
    assert "labels" not in batch
    assert (batch["answer_index"] == batch["input_ids"].shape[1] - 1).all()
    assert processor.tokenizer.decode(batch["input_ids"][0, -4:]).endswith("assistant\n")


def test_images_decoded_once_per_view(processor, rows, monkeypatch):
    encoder = ImageEncoder(processor.image_processor, 56 * 56, 56 * 56)
    calls = []
    original = encoder.load
    monkeypatch.setattr(encoder, "load", lambda *a: calls.append(a) or original(*a))
    for _ in range(3):
        encoder(rows[0]["image"])
    assert len(calls) == 1
    encoder(rows[0]["image"], 0.9)
    assert len(calls) == 2, "another view is another entry"


def test_resize_respects_factor_and_budget(processor):
    factor = 28
    for h, w in [(64, 64), (480, 640), (30, 1000), (1000, 1000)]:
        rh, rw = fit_pixels(h, w, factor, 56 * 56, 448 * 448)
        assert rh % factor == 0 and rw % factor == 0
        assert 56 * 56 <= rh * rw <= 448 * 448


def test_qwen3_uses_factor_32(tiny_models):
    from mcvqa.modeling import load_processor

    p = load_processor(tiny_models["qwen3_vl"], 64 * 64, 64 * 64)
    encoder = ImageEncoder(p.image_processor, 64 * 64, 64 * 64)
    assert encoder.factor == 32


def test_shuffle_choices_keeps_the_answer_with_its_option(processor, rows):
    collator = MCVQACollator(processor, 56 * 56, 56 * 56, shuffle_choices=True, seed=1)
    seen_letters = set()
    for _ in range(5):
        for row in rows[:8]:
            enc = collator.encode(row)
            text = processor.tokenizer.decode(enc.input_ids)
            letter = processor.tokenizer.decode([i for i, l in zip(enc.input_ids, enc.labels) if l != -100])
            shown = dict(line.split(". ", 1) for line in text.split("\n") if line[:3] in ("a. ", "b. ", "c. ", "d. "))
            assert shown[letter] == row[row["answer"]]
            seen_letters.add((row["id"], letter))
    assert len(seen_letters) > 8, "options were never shuffled"


def test_too_long_sample_is_refused_not_truncated(processor, rows):
    with pytest.raises(UserError, match="exceed --max_length 20"):
        MCVQACollator(processor, 56 * 56, 56 * 56, max_length=20)(rows[:1])


def test_korean_text_round_trips(processor, tmp_path):
    img = tmp_path / "k.png"
    Image.new("RGB", (64, 64), (10, 200, 10)).save(img)
    row = {"id": "k1", "image": str(img), "question": "도형의 색깔은 무엇입니까?", "a": "빨간색", "b": "초록색",
           "c": "파란색", "d": "회색", "answer": "b"}
    batch = MCVQACollator(processor, 56 * 56, 56 * 56)([row])
    text = processor.tokenizer.decode(batch["input_ids"][0])
    assert "도형의 색깔은 무엇입니까?" in text and "b. 초록색" in text
    assert supervised_text(processor.tokenizer, batch, 0) == "b"


def test_option_letter_ids_come_from_the_tokenizer(processor):
    ids = option_letter_ids(processor.tokenizer)
    for letter, variants in zip("abcd", ids):
        assert processor.tokenizer.decode(variants[:1]) == letter
        assert all(processor.tokenizer.decode([v]).strip().lower() == letter for v in variants)


def test_view_rows_flow_through_the_collator(processor, rows):
    collator = MCVQACollator(processor, 56 * 56, 56 * 56, train=False)
    plain = processor.tokenizer.decode(collator([rows[0]])["input_ids"][0])
    shifted = processor.tokenizer.decode(collator([rows[0]], view=lambda r: shift(r, 1))["input_ids"][0])
    assert f"a. {rows[0]['b']}" in shifted and f"a. {rows[0]['a']}" in plain


def test_answer_index_rejects_right_padding():
    labels = torch.tensor([[-100, -100, 5, -100], [-100, 5, -100, -100]])
    with pytest.raises(RuntimeError, match="left padded"):
        answer_index(labels)
