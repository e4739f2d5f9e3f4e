"""Prefix-shared scoring of the option orders equals scoring every view in full (fp32, <= 1e-5)."""

import numpy as np
import pytest
import torch
from PIL import Image
from transformers import AutoModelForImageTextToText

import mcvqa.prefix_scoring as prefix_scoring
from collator import MCVQACollator, option_letter_ids, rope_positions
from mcvqa.prompts import user_text
from mcvqa.scoring import predict_probs, score_batch
from mcvqa.tta import named_views

# A budget that gives the differently sized images below different numbers of image tokens.
MIN_PIXELS, MAX_PIXELS = 56 * 56, 160 * 160
PIXELS = {"qwen2_vl": 56 * 56, "qwen2_5_vl": 56 * 56, "qwen3_vl": 64 * 64}


@pytest.fixture(scope="module")
def rows(easy_vqa_dir, tmp_path_factory):
    """Rows of different prompt lengths and image sizes; one whose options repeat (two shifts show the same text)."""
    from mcvqa.data import load_split

    rows = load_split(easy_vqa_dir, "train").to_dict("records")
    rows = sorted(rows, key=lambda r: len(r["question"]))
    rows = [rows[0], rows[-1], rows[len(rows) // 2], rows[1], rows[-2], rows[len(rows) // 3]]
    out = tmp_path_factory.mktemp("sized_images")
    for i, (w, h) in enumerate([(64, 64), (150, 60), (40, 120), (128, 128), (90, 70), (64, 64)]):
        path = out / f"{i}.png"
        with Image.open(rows[i]["image"]) as im:
            im.convert("RGB").resize((w, h)).save(path)
        rows[i] = {**rows[i], "image": str(path)}
    # Option lines of a different length in every row: the suffixes of any batch differ in length.
    for i in range(1, len(rows)):
        rows[i] = {**rows[i], "b": " or ".join([rows[i]["b"]] * (i + 1))}
    rows[5] = {**rows[5], "c": rows[5]["a"], "d": rows[5]["b"]}
    return rows


def _model(tiny_models, arch):
    from mcvqa.modeling import load_processor

    processor = load_processor(tiny_models[arch], PIXELS[arch], PIXELS[arch])
    torch.manual_seed(0)
    return processor, AutoModelForImageTextToText.from_pretrained(tiny_models[arch]).eval()


def _spy(monkeypatch):
    """Record the batches the shared path scores (the real function still runs)."""
    seen = []
    real = prefix_scoring.score_shared

    def recording(model, batch, letter_ids):
        seen.append(batch)
        return real(model, batch, letter_ids)

    monkeypatch.setattr(prefix_scoring, "score_shared", recording)
    return seen


def _max_diff(a, b):
    assert a.keys() == b.keys()
    return max(float(np.abs(a[k] - b[k]).max()) for k in a)


@pytest.mark.parametrize("arch", ["qwen2_vl", "qwen2_5_vl", "qwen3_vl"])
def test_every_tta_view_matches_full_scoring(tiny_models, rows, arch, monkeypatch):
    processor, model = _model(tiny_models, arch)
    collator = MCVQACollator(processor, MIN_PIXELS, MAX_PIXELS, train=False)
    collator.position_fn = rope_positions(model, collator.image_token_id)
    letters = option_letter_ids(processor.tokenizer)
    views = named_views(tta=True, flip=True)
    full = predict_probs(model, collator, rows, letters, views, batch_size=4, progress=False, share_prefix=False)
    seen = _spy(monkeypatch)
    # A stale rope_deltas from an earlier generate() must not move the suffixes' positions.
    model.model.rope_deltas = torch.full((1, 1), 7)
    shared = predict_probs(model, collator, rows, letters, views, batch_size=4, progress=False)
    assert _max_diff(shared, full) <= 1e-5
    # The three scales each went through the shared path (two batches each); the mirror view alone in full.
    assert len(seen) == 6 and all(b["views"] == 4 for b in seen)
    # Some batch mixes image sizes, left pads its prefixes and pads between prefix and suffix.
    assert any((b["prefix"]["attention_mask"] == 0).any()
               and len({tuple(g.tolist()) for g in b["prefix"]["image_grid_thw"]}) > 1
               and (b["suffix"]["attention_mask"][:, b["prefix"]["input_ids"].shape[1]:] == 0).any() for b in seen)
    # The views really differ: equality above is not that of four copies of one number.
    assert np.abs(full["scale1_shift0"] - full["scale1_shift1"]).max() > 1e-4


@pytest.mark.parametrize("arch", ["qwen2_vl", "qwen3_vl"])
def test_suffix_positions_are_read_and_continue_after_the_prefix(tiny_models, rows, arch):
    """The shared batch scores each view as its full forward does; shifted suffix positions would not."""
    processor, model = _model(tiny_models, arch)
    collator = MCVQACollator(processor, MIN_PIXELS, MAX_PIXELS, train=False)
    letters = option_letter_ids(processor.tokenizer)
    views = named_views(tta=True)
    group = [views[f"scale1_shift{k}"] for k in range(4)]
    # No position_fn on the collator: the positions come from the model's own get_rope_index.
    batch = prefix_scoring.shared_batch(collator, rows, group, rope_positions(model, collator.image_token_id))
    with torch.no_grad():
        shared = prefix_scoring.score_shared(model, batch, letters)
        full = torch.stack([score_batch(model, collator(rows, view=v), letters) for v in group], 1)
        batch["suffix"]["position_ids"] = batch["suffix"]["position_ids"] + 1
        shifted = prefix_scoring.score_shared(model, batch, letters)
    assert shared.shape == (len(rows), 4, 4)
    assert (shared - full).abs().max() <= 1e-5
    assert (shifted - full).abs().max() > 1e-4
    # One row whose suffixes are equally long: no padding anywhere, the mask is all ones.
    alone = prefix_scoring.shared_batch(collator, rows[:1], group, rope_positions(model, collator.image_token_id))
    assert alone["suffix"]["attention_mask"].all()
    with torch.no_grad():
        shared = prefix_scoring.score_shared(model, alone, letters)
        full = torch.stack([score_batch(model, collator(rows[:1], view=v), letters) for v in group], 1)
    assert (shared - full).abs().max() <= 1e-5


def test_options_before_the_question_still_share_the_image(tiny_models, rows, monkeypatch):
    processor, model = _model(tiny_models, "qwen2_5_vl")
    collator = MCVQACollator(processor, MIN_PIXELS, MAX_PIXELS, train=False,
                             template="{options}\n{question}\n{instruction}")
    letters = option_letter_ids(processor.tokenizer)
    views = named_views(tta=True, scales=(1.0,))
    full = predict_probs(model, collator, rows, letters, views, batch_size=3, progress=False, share_prefix=False)
    seen = _spy(monkeypatch)
    shared = predict_probs(model, collator, rows, letters, views, batch_size=3, progress=False)
    assert len(seen) == 2
    assert _max_diff(shared, full) <= 1e-5


class ImageAfterText(MCVQACollator):
    """A prompt layout with the options (and question) before the image: nothing exact to share."""

    def text_ids(self, row, with_answer, cache=True):
        text = user_text(row["question"], [row[k] for k in "abcd"])
        return self._render([{"role": "user", "content": [{"type": "text", "text": text}, {"type": "image"}]}],
                            True), []


def test_image_after_the_options_falls_back_to_full_scoring(tiny_models, rows, monkeypatch):
    processor, model = _model(tiny_models, "qwen2_5_vl")
    collator = ImageAfterText(processor, MIN_PIXELS, MAX_PIXELS, train=False)
    letters = option_letter_ids(processor.tokenizer)
    views = named_views(tta=True, scales=(1.0,))
    assert prefix_scoring.shared_batch(collator, rows, list(views.values()),
                                       rope_positions(model, collator.image_token_id)) is None
    seen = _spy(monkeypatch)
    shared = predict_probs(model, collator, rows, letters, views, batch_size=4, progress=False)
    full = predict_probs(model, collator, rows, letters, views, batch_size=4, progress=False, share_prefix=False)
    assert seen == []
    assert _max_diff(shared, full) <= 1e-5


@pytest.mark.parametrize("arch", ["qwen2_5_vl", "qwen3_vl"])
def test_lora_wrapped_model_matches(tiny_models, rows, arch, monkeypatch):
    from mcvqa.modeling import load_model, load_processor

    processor = load_processor(tiny_models[arch], PIXELS[arch], PIXELS[arch])
    model, _ = load_model(tiny_models[arch], precision="fp32", attn_implementation="sdpa")
    torch.manual_seed(1)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:  # zero at initialisation: make the adapter change the output
                p.normal_(0, 0.5)
    collator = MCVQACollator(processor, MIN_PIXELS, MAX_PIXELS, train=False)
    collator.position_fn = rope_positions(model, collator.image_token_id)
    letters = option_letter_ids(processor.tokenizer)
    views = named_views(tta=True, scales=(1.0,))
    full = predict_probs(model, collator, rows, letters, views, batch_size=4, progress=False, share_prefix=False)
    seen = _spy(monkeypatch)
    shared = predict_probs(model, collator, rows, letters, views, batch_size=4, progress=False)
    assert len(seen) == 2
    assert _max_diff(shared, full) <= 1e-5
    with model.disable_adapter():
        base = predict_probs(model, collator, rows, letters, views, batch_size=4, progress=False)
    assert _max_diff(base, full) > 1e-4, "the adapter must take part in the scores compared"


def test_groups_hold_the_option_orders_of_one_image_view(rows):
    views = named_views(tta=True, flip=True)
    groups = prefix_scoring.option_order_groups(views, rows)
    assert groups == [[f"scale{s}_shift{k}" for k in range(4)] for s in ("0.9", "1", "1.1")] + [["flip"]]
    # A mirror that leaves some rows alone still differs from the unmirrored views on the others.
    sided = [{**rows[0], "question": "what is on the left?"}, rows[1]]
    assert ["flip"] in prefix_scoring.option_order_groups(views, sided)
    # On rows it leaves alone everywhere, it is the unshifted view of scale 1 and may share with its shifts.
    only_sided = [{**r, "question": "what is on the left?"} for r in rows[:2]]
    assert ["scale1_shift0", "scale1_shift1", "scale1_shift2", "scale1_shift3", "flip"] in \
        prefix_scoring.option_order_groups(views, only_sided)
    assert all(len(g) == 1 for g in prefix_scoring.option_order_groups(named_views(tta=True, shifts=False), rows))
