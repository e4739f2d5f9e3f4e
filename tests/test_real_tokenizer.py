"""Masking, scoring and TTA on the real Qwen tokenizer (tools/make_tiny_model.py --tokenizer qwen).

The toy tokenizer of the other tests has its own ids and merges; here the letters are Qwen's (a=64 ... d=67,
"A"=32, " a"=264), the prompts have their real lengths, the chat templates are the released Qwen2.5-VL one
(default system turn) and Qwen3-VL one (none), and Korean text goes through the real byte-level merges.
Also: every tiny model folder loads the way the README and the tool's docstring say, on the installed
transformers (a new transformers that refuses them fails here, not in a user's first run).
"""

import hashlib
import importlib.util

import numpy as np
import pytest
import torch
from PIL import Image

from collator import MCVQACollator, option_letter_ids
from mcvqa.prompts import conversation
from mcvqa.scoring import answer_logits, predict_probs, score_batch, target_letters
from mcvqa.tta import named_views, shift, to_original, view_order

PIX = 56 * 56
ARCHS = ("qwen2_5_vl", "qwen3_vl")
# Qwen's ids: a-d, A-D, " a"-" d", " A"-" D" (byte-level BPE: "!" is 0, so a letter is its ASCII code - 33).
REAL_LETTER_IDS = [[64, 32, 264, 362], [65, 33, 293, 425], [66, 34, 272, 356], [67, 35, 294, 422]]
IM_END, IMAGE_PAD = 151645, 151655
# SHA-256 of the released chat templates (Qwen2.5-VL-7B-Instruct's chat_template.json, Qwen3-VL-8B-Instruct's).
TEMPLATE_SHA256 = {"qwen2_5_vl": "a0bc6f6fc7a29a80017a433e8f03a1cc1236e838a944a2d034295a60c4f2fddb",
                   "qwen3_vl": "3636d0f0bd6bef02654cdffdc447b79cb2cef8ab02cc75267345946291a489e4"}
KOREAN = [("도형의 색깔은 무엇입니까?", ["빨간색", "초록색", "파란색", "회색"], "b"),
          ("이미지에 원이 있습니까?", ["예", "아니오", "삼각형", "노란색"], "a"),
          ("이 도형은 무슨 모양입니까? 정답의 알파벳만 답하세요.", ["원", "사각형", "삼각형", "갈색"], "d")]


@pytest.fixture(scope="module")
def real_models(tmp_path_factory):
    from tools.make_tiny_model import make_tiny_model

    root = tmp_path_factory.mktemp("real_tokenizer")
    return {arch: make_tiny_model(arch, root / arch, hidden_size=32, min_pixels=PIX, max_pixels=PIX, tokenizer="qwen")
            for arch in ARCHS}


@pytest.fixture(scope="module")
def processors(real_models):
    from mcvqa.modeling import load_processor

    return {arch: load_processor(path, PIX, PIX) for arch, path in real_models.items()}


@pytest.fixture(scope="module")
def models(real_models):
    from transformers import AutoModelForImageTextToText

    return {arch: AutoModelForImageTextToText.from_pretrained(path).eval() for arch, path in real_models.items()}


@pytest.fixture(scope="module")
def rows(easy_vqa_dir, tmp_path_factory):
    """8 easy-VQA rows and 3 Korean ones (their images drawn here)."""
    from mcvqa.data import load_split

    english = load_split(easy_vqa_dir, "train").to_dict("records")[:8]
    folder = tmp_path_factory.mktemp("korean")
    korean = []
    for i, (question, options, answer) in enumerate(KOREAN):
        path = folder / f"k{i}.png"
        Image.new("RGB", (64 + 16 * i, 64), (30 * i, 200, 10)).save(path)
        korean.append({"id": f"k{i}", "image": str(path), "question": question, **dict(zip("abcd", options)),
                       "answer": answer})
    return english + korean


def supervised(batch, i):
    labels = batch["labels"][i]
    return labels[labels != -100].tolist()


def test_the_tokenizer_and_config_are_qwens(real_models, processors):
    from transformers import AutoConfig

    for arch in ARCHS:
        tok = processors[arch].tokenizer
        assert AutoConfig.from_pretrained(real_models[arch]).text_config.vocab_size == 151_936
        assert len(tok) == 151_643 + (22 if arch == "qwen2_5_vl" else 26)
        assert [tok.convert_tokens_to_ids(t) for t in ("<|endoftext|>", "<|im_start|>", "<|im_end|>",
                                                        "<|vision_start|>", "<|image_pad|>")] == [
            151643, 151644, IM_END, 151652, IMAGE_PAD]
        assert option_letter_ids(tok) == REAL_LETTER_IDS
        assert tok.decode(tok.encode(KOREAN[0][0])) == KOREAN[0][0]


def test_the_chat_templates_are_the_released_ones(processors):
    for arch in ARCHS:
        template = processors[arch].chat_template
        assert hashlib.sha256(template.encode()).hexdigest() == TEMPLATE_SHA256[arch]
        text = processors[arch].apply_chat_template(conversation("q?", list("wxyz")), tokenize=False,
                                                    add_generation_prompt=True)
        system = "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"
        assert text.startswith(system + "<|im_start|>user\n" if arch == "qwen2_5_vl" else "<|im_start|>user\n")
        assert text.endswith("<|im_end|>\n<|im_start|>assistant\n")


@pytest.mark.parametrize("arch", ARCHS)
def test_only_the_real_letter_id_is_supervised(processors, rows, arch):
    processor = processors[arch]
    batch = MCVQACollator(processor, PIX, PIX)(rows)
    for i, row in enumerate(rows):
        assert supervised(batch, i) == [64 + "abcd".index(row["answer"])]
        assert processor.tokenizer.decode(supervised(batch, i)) == row["answer"]
    with_eos = MCVQACollator(processor, PIX, PIX, supervise_eos=True)(rows[:3])
    assert [supervised(with_eos, i) for i in range(3)] == [[64 + "abcd".index(r["answer"]), IM_END] for r in rows[:3]]
    letters = option_letter_ids(processor.tokenizer)
    assert target_letters(batch, letters).tolist() == ["abcd".index(r["answer"]) for r in rows]


@pytest.mark.parametrize("arch", ARCHS)
def test_collator_ids_equal_the_processors_korean_included(processors, rows, arch):
    """Token-space image expansion and the template frame give what `processor(text, images)` gives."""
    processor = processors[arch]
    collator = MCVQACollator(processor, PIX, PIX)
    for row in rows[:2] + rows[-3:]:
        options = [row[k] for k in "abcd"]
        for train, messages in ((False, conversation(row["question"], options)),
                                (True, conversation(row["question"], options, answer=row["answer"]))):
            collator.train = train
            ours = collator([row])
            text = processor.apply_chat_template(messages, tokenize=False, add_generation_prompt=not train)
            ref = processor(text=[text], images=[collator.images.load(row["image"])], return_tensors="pt",
                            do_resize=False)
            expected = ref["input_ids"][0].tolist()
            if train:  # the answered conversation ends "<|im_end|>\n": the collator stops after <|im_end|>
                assert expected[-3:] == [64 + "abcd".index(row["answer"]), IM_END, 198]
                expected = expected[:-1]
            assert ours["input_ids"][0].tolist() == expected
            assert torch.equal(ours["image_grid_thw"], ref["image_grid_thw"])
            assert torch.allclose(ours["pixel_values"], ref["pixel_values"])
            assert torch.equal(ours["mm_token_type_ids"][0], ref["mm_token_type_ids"][0][: len(expected)])
            assert int((ours["input_ids"][0] == IMAGE_PAD).sum()) == int(ref["image_grid_thw"].prod()) // 4


@pytest.mark.parametrize("arch", ARCHS)
def test_shuffled_orders_keep_the_fast_path_and_the_rendered_ids(processors, rows, arch):
    """The once-rendered template frame with the user turn substituted tokenises exactly as the full rendering,
    with the real merges across the frame's edges (Korean included)."""
    collator = MCVQACollator(processors[arch], PIX, PIX, shuffle_choices=True, seed=3)
    seen = set()
    for _ in range(4):
        for row in rows:
            enc = collator.encode(row)
            text = collator.tokenizer.decode(enc.input_ids)
            letter_id = [t for t, l in zip(enc.input_ids, enc.labels) if l != -100]
            letter = "abcd"[letter_id[0] - 64]
            shown = dict(line.split(". ", 1) for line in text.split("\n") if line[:3] in ("a. ", "b. ", "c. ", "d. "))
            assert shown[letter] == row[row["answer"]]
            options = [shown[k] for k in "abcd"]
            reference, answer_ids = collator._rendered_ids(row["question"], options, letter, None)
            n_image = enc.input_ids.count(IMAGE_PAD)
            at = reference.index(IMAGE_PAD)
            assert enc.input_ids == reference[:at] + [IMAGE_PAD] * n_image + reference[at + 1:] + answer_ids
            seen.add((row["id"], letter))
    assert all(frame is not False for frame in collator._frames.values()), "the fast path must apply"
    assert len(seen) > len(rows)


@pytest.mark.parametrize("arch", ARCHS)
def test_answer_logits_and_the_train_and_predict_sides_agree(processors, models, rows, arch):
    processor, model = processors[arch], models[arch]
    letters = option_letter_ids(processor.tokenizer)
    batch = MCVQACollator(processor, PIX, PIX)(rows)
    at = int(batch["answer_index"][0])
    assert (batch["input_ids"][:, at + 1] == batch["labels"][:, at + 1]).all()
    with torch.no_grad():
        kept = answer_logits(model, batch)[:, 0]
        full = model(**{k: batch[k] for k in ("input_ids", "attention_mask", "pixel_values", "image_grid_thw",
                                              "mm_token_type_ids")}).logits[:, at]
        assert kept.shape[-1] == 151_936
        assert torch.allclose(kept, full, atol=1e-5)
        train_side = score_batch(model, batch, letters)
        predict_side = score_batch(model, MCVQACollator(processor, PIX, PIX, train=False)(rows), letters)
    assert torch.allclose(train_side, predict_side, atol=1e-4)
    # The four letter logits are the folded real variants: a with A, " a", " A".
    assert torch.allclose(train_side[:, 0], torch.logsumexp(kept[:, [64, 32, 264, 362]], -1), atol=1e-5)


@pytest.mark.parametrize("arch", ARCHS)
def test_tta_views_are_scored_with_real_letters_and_mapped_back(processors, models, rows, arch):
    processor, model = processors[arch], models[arch]
    letters = option_letter_ids(processor.tokenizer)
    collator = MCVQACollator(processor, PIX, PIX, train=False)
    views = named_views(True, scales=(1.0,))
    probs = predict_probs(model, collator, rows, letters, views, batch_size=4, progress=False)
    for name, view in views.items():
        shown_rows = [view(r) for r in rows]
        text = processor.tokenizer.decode(collator(shown_rows[-1:])["input_ids"][0])
        assert f"a. {shown_rows[-1]['a']}\n" in text
        with torch.no_grad():
            shown = torch.softmax(score_batch(model, collator(rows, view=view), letters), -1).numpy()
        for i, r in enumerate(shown_rows):
            np.testing.assert_allclose(probs[name][i], to_original(shown[i: i + 1], view_order(r))[0], atol=1e-5)
    # A shifted training row supervises the letter its answer moved to, as its real id.
    train = MCVQACollator(processor, PIX, PIX)
    for row in rows:
        moved = shift(row, 1)
        assert supervised(train([moved]), 0) == [64 + "abcd".index(moved["answer"])]
        assert moved[moved["answer"]] == row[row["answer"]]


def test_every_tiny_folder_loads_as_documented_on_this_transformers(tiny_models, real_models, rows):
    """load_processor (what the scripts use) builds the family's processor; plain AutoProcessor works where
    torchvision is installed and, without it, fails only for the documented reason (its video processor),
    never for something in our files; the tokenizer and image processor load through their Auto classes."""
    from transformers import AutoImageProcessor, AutoProcessor, AutoTokenizer

    from mcvqa.modeling import load_processor

    family = {"qwen2_vl": "Qwen2VLProcessor", "qwen2_5_vl": "Qwen2_5_VLProcessor", "qwen3_vl": "Qwen3VLProcessor"}
    row = rows[-1]
    folders = [(arch, path) for arch, path in tiny_models.items()] + [(arch, path) for arch, path in real_models.items()]
    for arch, path in folders:
        ours = load_processor(path, PIX, PIX)
        assert type(ours).__name__ == family[arch]
        assert AutoTokenizer.from_pretrained(path).encode(row["question"]) == ours.tokenizer.encode(row["question"])
        assert AutoImageProcessor.from_pretrained(path).patch_size == ours.image_processor.patch_size
        text = ours.apply_chat_template(conversation(row["question"], [row[k] for k in "abcd"]), tokenize=False,
                                        add_generation_prompt=True)
        image = Image.open(row["image"]).convert("RGB").resize((56, 56))
        expected = ours(text=[text], images=[image], return_tensors="pt")
        try:
            plain = AutoProcessor.from_pretrained(path)
        except ImportError as err:
            assert importlib.util.find_spec("torchvision") is None and "Torchvision" in str(err), f"{path}: {err}"
            continue
        assert type(plain).__name__ == family[arch]
        plain.image_processor.size = dict(ours.image_processor.size)
        got = plain(text=[text], images=[image], return_tensors="pt")
        assert got["input_ids"].tolist() == expected["input_ids"].tolist()
        assert torch.allclose(got["pixel_values"], expected["pixel_values"])
