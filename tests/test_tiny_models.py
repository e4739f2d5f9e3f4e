"""The offline tiny models load through the Auto classes, as a hub model would, and run a forward pass."""

import json

import pytest
import torch
from PIL import Image
from transformers import AutoConfig, AutoModelForImageTextToText, AutoTokenizer

from mcvqa.modeling import load_processor
from mcvqa.prompts import conversation

FAMILY = {"qwen2_vl": (14, "Qwen2VLProcessor"), "qwen2_5_vl": (14, "Qwen2_5_VLProcessor"),
          "qwen3_vl": (16, "Qwen3VLProcessor")}
SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|vision_start|>", "<|vision_end|>", "<|image_pad|>"]


@pytest.mark.parametrize("arch", sorted(FAMILY))
def test_loads_through_auto_classes_and_runs_a_forward_pass(tiny_models, arch):
    path = tiny_models[arch]
    patch, processor_class = FAMILY[arch]
    assert AutoConfig.from_pretrained(path).model_type == arch
    processor = load_processor(path, 56 * 56, 112 * 112)
    assert type(processor).__name__ == processor_class
    assert processor.image_processor.patch_size == patch and processor.image_processor.merge_size == 2
    tokenizer = AutoTokenizer.from_pretrained(path)
    for token in SPECIALS:
        assert tokenizer.convert_tokens_to_ids(token) != tokenizer.unk_token_id
        assert tokenizer.convert_ids_to_tokens(tokenizer.convert_tokens_to_ids(token)) == token
    text = processor.apply_chat_template(conversation("도형의 색깔은? what color is the shape?",
                                                      ["red", "blue", "green", "teal"]),
                                         tokenize=False, add_generation_prompt=True)
    assert "<|vision_start|><|image_pad|><|vision_end|>" in text and text.endswith("<|im_start|>assistant\n")
    inputs = processor(text=[text], images=[Image.new("RGB", (64, 64), (200, 30, 30))], return_tensors="pt")
    assert "mm_token_type_ids" in inputs
    model = AutoModelForImageTextToText.from_pretrained(path)
    with torch.no_grad():
        logits = model(**inputs).logits
    assert logits.shape == (1, inputs["input_ids"].shape[1], model.config.text_config.vocab_size)
    assert torch.isfinite(logits).all()
    assert tokenizer.decode(tokenizer.encode("도형의 색깔")) == "도형의 색깔"


def test_weights_are_safetensors_only(tiny_model):
    files = {p.name for p in tiny_model.iterdir()}
    assert "model.safetensors" in files and not any(f.endswith(".bin") for f in files)
    assert json.loads((tiny_model / "config.json").read_text())["vision_config"]["patch_size"] == 14
