"""Speed paths must not change results: batched vision attention and cached M-RoPE positions."""

import pytest
import torch
from transformers import AutoModelForImageTextToText

from collator import MCVQACollator, rope_positions
from mcvqa.fast_vision import patch_vision_attention

KEYS = ("input_ids", "attention_mask", "pixel_values", "image_grid_thw", "mm_token_type_ids")


@pytest.fixture(scope="module")
def rows(easy_vqa_dir):
    from mcvqa.data import load_split

    return load_split(easy_vqa_dir, "train").to_dict("records")[:6]


def _setup(tiny_models, arch, pixels):
    from mcvqa.modeling import load_processor

    processor = load_processor(tiny_models[arch], pixels, pixels)
    model = AutoModelForImageTextToText.from_pretrained(tiny_models[arch]).eval()
    return processor, model


@pytest.mark.parametrize("arch,pixels", [("qwen2_vl", 56 * 56), ("qwen2_5_vl", 224 * 224), ("qwen3_vl", 64 * 64)])
def test_batched_vision_attention_is_exact_and_makes_one_call_per_layer(tiny_models, rows, arch, pixels, monkeypatch):
    processor, model = _setup(tiny_models, arch, pixels)
    batch = MCVQACollator(processor, pixels, pixels)(rows)
    calls = []
    real = torch.nn.functional.scaled_dot_product_attention
    monkeypatch.setattr(torch.nn.functional, "scaled_dot_product_attention",
                        lambda *a, **k: calls.append(1) or real(*a, **k))
    with torch.no_grad():
        ref = model(**{k: batch[k] for k in KEYS}).logits
        before = len(calls)
        assert patch_vision_attention(model) == model.config.vision_config.depth
        calls.clear()
        out = model(**{k: batch[k] for k in KEYS}).logits
    assert torch.allclose(out, ref, atol=1e-5)
    layers = model.config.vision_config.depth + model.config.text_config.num_hidden_layers
    assert len(calls) == layers < before


@pytest.mark.parametrize("arch,pixels", [("qwen2_vl", 56 * 56), ("qwen2_5_vl", 56 * 56), ("qwen3_vl", 64 * 64)])
def test_cached_positions_equal_the_models_own(tiny_models, rows, arch, pixels):
    processor, model = _setup(tiny_models, arch, pixels)
    collator = MCVQACollator(processor, pixels, pixels)
    plain = collator(rows)
    collator.position_fn = rope_positions(model, collator.image_token_id)
    cached = collator(rows)
    assert cached["position_ids"].shape == (3, *cached["input_ids"].shape)
    with torch.no_grad():
        ref = model(**{k: plain[k] for k in KEYS}).logits
        out = model(**{k: cached[k] for k in KEYS + ("position_ids",)}).logits
        wrong = model(**{**{k: cached[k] for k in KEYS}, "position_ids": cached["position_ids"] * 0 + 3}).logits
    assert torch.allclose(out, ref, atol=1e-5)
    assert not torch.allclose(wrong, ref, atol=1e-3), "the model must actually read the positions passed"
