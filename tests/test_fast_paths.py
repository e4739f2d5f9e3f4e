"""Speed paths must not change results: batched vision attention, the patch embedding as a matmul and cached
M-RoPE positions."""

import pytest
import torch
from transformers import AutoModelForImageTextToText

from collator import MCVQACollator, rope_positions
from mcvqa.fast_vision import cache_vision_indices, patch_patch_embed, patch_vision_attention

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


@pytest.mark.parametrize("arch,pixels", [("qwen2_vl", 56 * 56), ("qwen2_5_vl", 224 * 224), ("qwen3_vl", 64 * 64)])
def test_patch_embedding_as_matmul_is_exact_with_its_gradients(tiny_models, rows, arch, pixels):
    processor, model = _setup(tiny_models, arch, pixels)
    batch = MCVQACollator(processor, pixels, pixels)(rows)
    proj = next(m.proj for m in model.modules() if type(m).__name__.endswith("PatchEmbed"))

    def run():
        model.zero_grad()
        logits = model(**{k: batch[k] for k in KEYS}).logits
        logits.float().square().mean().backward()
        return logits.detach(), proj.weight.grad.clone()

    ref, ref_grad = run()
    assert patch_patch_embed(model) == 1
    assert patch_patch_embed(model) == 0, "patched twice"
    out, grad = run()
    assert torch.allclose(out, ref, atol=1e-5)
    assert torch.allclose(grad, ref_grad, atol=1e-6, rtol=1e-4)


@pytest.fixture
def uncached(monkeypatch):
    """The index functions as transformers has them (load_model caches them process-wide), restored afterwards."""
    import importlib

    modules = {}
    for family in ("qwen2_vl", "qwen2_5_vl", "qwen3_vl", "qwen3_vl_moe"):
        module = modules[family] = importlib.import_module(f"transformers.models.{family}.modeling_{family}")
        for name in ("get_vision_position_ids", "get_vision_window_index"):
            if hasattr(module, name):
                current = getattr(module, name)
                monkeypatch.setattr(module, name, getattr(current, "_mcvqa_uncached", current))
    return modules


@pytest.mark.parametrize("arch,pixels", [("qwen2_vl", 56 * 56), ("qwen2_5_vl", 224 * 224), ("qwen3_vl", 64 * 64)])
def test_cached_vision_indices_are_exact_and_computed_once_per_grid(tiny_models, rows, arch, pixels, uncached,
                                                                    monkeypatch):
    from mcvqa.modeling import load_processor

    module = uncached[arch]
    computed = []
    for name in ("get_vision_position_ids", "get_vision_window_index"):
        if hasattr(module, name):
            real = getattr(module, name)
            monkeypatch.setattr(module, name, lambda *a, _real=real, _name=name, **k: computed.append(_name) or _real(*a, **k))
    model = _setup(tiny_models, arch, pixels)[1]
    # Two image sizes: a cached result must never serve a grid it was not computed for.
    batches = [MCVQACollator(load_processor(tiny_models[arch], p, p), p, p)(rows) for p in (pixels, 4 * pixels)]
    with torch.no_grad():
        refs = [model(**{k: b[k] for k in KEYS}).logits for b in batches]
        per_forward = len(computed)
        assert per_forward >= 2
        assert cache_vision_indices(), "nothing was cached"
        computed.clear()
        try:
            outs = [model(**{k: b[k] for k in KEYS}).logits for b in batches for _ in range(3)]
        finally:
            cache_vision_indices(False)
    assert len(computed) == per_forward  # once per grid, not once per forward
    for i, out in enumerate(outs):
        assert torch.equal(out, refs[i // 3])


def test_cached_vision_indices_first_made_for_prediction_serve_training(tiny_models, rows, uncached):
    """predict's and evaluation's inference_mode must not leave inference tensors that a training step saves."""
    from mcvqa.modeling import load_processor

    processor, model = _setup(tiny_models, "qwen2_5_vl", 56 * 56)
    collator = MCVQACollator(processor, 56 * 56, 56 * 56)
    cache_vision_indices()
    try:
        with torch.inference_mode():
            model(**{k: collator(rows)[k] for k in KEYS})
        model.train()
        model(**{k: collator(rows)[k] for k in KEYS}).logits.sum().backward()  # the window order is saved here
    finally:
        cache_vision_indices(False)
    assert model.model.visual.patch_embed.proj.weight.grad is not None


def test_cached_vision_indices_hand_precomputed_values_through(uncached):
    m = uncached["qwen2_5_vl"]
    grid = torch.tensor([[1, 4, 4]])
    cache_vision_indices()
    try:
        given = torch.arange(32).reshape(16, 2)
        kwargs = {"position_ids": given, "other": 1}
        assert m.get_vision_position_ids(grid, 2, kwargs=kwargs) is given
        assert kwargs == {"other": 1}  # popped, as the original does, so the blocks never see it
        first = m.get_vision_position_ids(grid, 2)
        assert m.get_vision_position_ids(grid, 2) is first
        assert m.get_vision_position_ids(grid, 1) is not first  # another setting, another entry
    finally:
        cache_vision_indices(False)
    assert not hasattr(m.get_vision_position_ids, "_mcvqa_uncached")


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


@pytest.mark.parametrize("arch", ["qwen2_5_vl", "qwen3_vl"])
@pytest.mark.parametrize("lora_vision", [False, True])
def test_frozen_vision_tower_runs_no_backward_under_checkpointed_lora(tiny_models, rows, arch, lora_vision):
    from mcvqa.modeling import load_model, load_processor

    pixels = 56 * 56 if arch == "qwen2_5_vl" else 64 * 64
    processor = load_processor(tiny_models[arch], pixels, pixels)
    model, _ = load_model(tiny_models[arch], precision="fp32", attn_implementation="sdpa", lora_vision=lora_vision,
                          gradient_checkpointing=True)
    model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    model.train()
    seen = []
    model.base_model.model.model.visual.merger.register_forward_hook(lambda m, i, o: seen.append(o.requires_grad))
    batch = MCVQACollator(processor, pixels, pixels, train=True)(rows[:2])
    out = model(**{k: batch[k] for k in KEYS if k in batch})
    out.logits[:, -1].float().logsumexp(-1).sum().backward()
    assert seen == [lora_vision]  # the vision output needs a gradient only when the vision tower trains
    grads = {n: p.grad for n, p in model.named_parameters() if p.requires_grad}
    assert grads and all(g is not None for n, g in grads.items() if "language_model" in n)
    assert any(g is not None and g.abs().sum() > 0 for n, g in grads.items() if "language_model" in n)
    if lora_vision:
        assert any(g is not None and g.abs().sum() > 0 for n, g in grads.items() if "visual" in n)


@pytest.mark.parametrize("arch", ["qwen2_vl", "qwen2_5_vl", "qwen3_vl"])
@pytest.mark.parametrize("template", [None, "{question}\n{options}"])
def test_shuffled_rows_get_the_chat_templates_own_ids(tiny_models, rows, arch, template):
    """The substituted user turn (no template rendering per row) equals rendering the template, every order."""
    import itertools

    from mcvqa.modeling import load_processor
    from mcvqa.tta import permute

    processor = load_processor(tiny_models[arch], 56 * 56, 56 * 56)
    collator = MCVQACollator(processor, 56 * 56, 56 * 56, template=template)
    for row in rows[:3]:
        for order in itertools.permutations(range(4)):
            shown = permute(row, list(order))
            options = [shown[k] for k in "abcd"]
            fast = collator.text_ids(shown, with_answer=True, cache=False)
            assert collator._frames[template] is not False
            assert fast == collator._rendered_ids(shown["question"], options, shown["answer"], template)


def test_a_template_that_rewrites_the_user_text_keeps_the_rendering_path(tiny_models, rows):
    from mcvqa.modeling import load_processor

    processor = load_processor(tiny_models["qwen2_5_vl"], 56 * 56, 56 * 56)
    processor.chat_template = processor.chat_template.replace("content['text']", "content['text'] | upper")
    collator = MCVQACollator(processor, 56 * 56, 56 * 56)
    ids, _ = collator.text_ids(rows[0], with_answer=True)
    assert collator._frames[None] is False
    assert processor.tokenizer.decode(ids).count(rows[0]["question"].upper()) == 1


@pytest.mark.parametrize("arch", ["qwen2_vl", "qwen2_5_vl", "qwen3_vl"])
def test_one_cached_position_entry_serves_every_option_order(tiny_models, rows, arch):
    processor, model = _setup(tiny_models, arch, 56 * 56 if arch != "qwen3_vl" else 64 * 64)
    pixels = 56 * 56 if arch != "qwen3_vl" else 64 * 64
    collator = MCVQACollator(processor, pixels, pixels, shuffle_choices=True, seed=3)
    collator.position_fn = rope_positions(model, collator.image_token_id)
    fresh = rope_positions(model, collator.image_token_id)
    for _ in range(6):
        enc = collator.encode(rows[0])
        assert torch.equal(enc.position_ids, fresh(enc.input_ids, enc.grid_thw))
    assert len(collator._position_cache) == 1
