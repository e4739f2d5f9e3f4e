"""mcvqa.kernels: when Liger is applied (never on CPU, never imported there), the exact vision-MLP padding and the
per-layer checkpointing switch, on the tiny models."""

import sys

import pytest
import torch

from mcvqa.errors import UserError
from mcvqa.kernels import apply_liger, checkpoint_every, decoder_layers, pad_vision_mlp


@pytest.fixture
def fake_liger(tmp_path, monkeypatch):
    """A stand-in liger_kernel package on sys.path that records each patch call; `poison` makes importing it fail."""
    pkg = tmp_path / "liger_kernel"
    (pkg / "transformers").mkdir(parents=True)
    (pkg / "__init__.py").write_text("import os\nif os.environ.get('FAKE_LIGER_POISON'):\n"
                                     "    raise RuntimeError('liger_kernel was imported')\ncalls = []\n")
    names = ["apply_liger_kernel_to_qwen2_vl", "apply_liger_kernel_to_qwen2_5_vl", "apply_liger_kernel_to_qwen3_vl"]
    (pkg / "transformers" / "__init__.py").write_text("from liger_kernel import calls\n" + "".join(
        f"def {n}(**kw):\n    calls.append(({n!r}, kw))\n" for n in names))
    monkeypatch.syspath_prepend(str(tmp_path))
    for mod in [m for m in sys.modules if m.startswith("liger_kernel")]:
        monkeypatch.delitem(sys.modules, mod)
    yield pkg
    for mod in [m for m in sys.modules if m.startswith("liger_kernel")]:
        del sys.modules[mod]


def test_auto_is_off_on_cpu_and_never_imports_liger(fake_liger, monkeypatch):
    monkeypatch.setenv("FAKE_LIGER_POISON", "1")  # importing it would raise
    for arch in ("qwen2_vl", "qwen2_5_vl", "qwen3_vl"):
        assert apply_liger(arch, "auto", device="cpu") is False
        assert apply_liger(arch, "auto", quantization="4bit", device="cuda") is False
        assert apply_liger(arch, "false", device="cuda") is False
    assert apply_liger("llava", "auto", device="cuda") is False
    assert not any(m.startswith("liger_kernel") for m in sys.modules)


def test_true_where_it_cannot_apply_is_a_clear_user_error(fake_liger):
    with pytest.raises(UserError, match="--liger true: .*CUDA"):
        apply_liger("qwen2_5_vl", "true", device="cpu")
    with pytest.raises(UserError, match="quantised"):
        apply_liger("qwen2_5_vl", "true", quantization="8bit", device="cuda")
    with pytest.raises(UserError, match="model type 'llava'"):
        apply_liger("llava", "true", device="cuda")
    with pytest.raises(UserError, match="--liger must be one of auto, true, false"):
        apply_liger("qwen2_5_vl", "yes", device="cuda")
    assert not any(m.startswith("liger_kernel") for m in sys.modules)


def test_missing_liger_is_off_under_auto_and_an_error_under_true(monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "liger_kernel" else real(name, *a))
    assert apply_liger("qwen2_5_vl", "auto", device="cuda") is False
    with pytest.raises(UserError, match="liger-kernel is not installed"):
        apply_liger("qwen2_5_vl", "true", device="cuda")


def test_on_cuda_only_the_elementwise_kernels_are_patched(fake_liger):
    assert apply_liger("qwen2_5_vl", "auto", device="cuda:0") is True
    assert apply_liger("qwen3_vl", "true", device=torch.device("cuda")) is True
    assert apply_liger("qwen2_vl", "auto", device="cuda") is True
    import liger_kernel

    (n25, kw25), (n3, kw3), (n2, kw2) = liger_kernel.calls
    assert (n25, n3, n2) == ("apply_liger_kernel_to_qwen2_5_vl", "apply_liger_kernel_to_qwen3_vl",
                             "apply_liger_kernel_to_qwen2_vl")
    for kw in (kw25, kw3, kw2):  # never the (fused linear) cross-entropy: Liger #827
        assert kw["cross_entropy"] is False and kw["fused_linear_cross_entropy"] is False
        assert kw["rope"] is True and kw["rms_norm"] is True
    assert kw25["swiglu"] is True and kw3["swiglu"] is False and kw2["layer_norm"] is False


def test_load_model_records_liger_off_on_cpu(tiny_model):
    from mcvqa.modeling import load_model

    model, _ = load_model(tiny_model, precision="fp32", gradient_checkpointing=False)
    assert model.mcvqa_liger is False
    with pytest.raises(UserError, match="--liger true"):
        load_model(tiny_model, precision="fp32", liger="true")


def test_padded_vision_mlp_is_exact_and_saves_the_original_shapes(tiny_models):
    from transformers import AutoModelForImageTextToText

    for arch in ("qwen2_vl", "qwen2_5_vl"):
        model = AutoModelForImageTextToText.from_pretrained(tiny_models[arch], dtype=torch.float32).eval()
        visual = model.model.visual
        assert pad_vision_mlp(model, multiple=96) == 0  # trainable (a full fine-tune): zero rows would not stay 0
        model.requires_grad_(False)
        before = {k: v.clone() for k, v in model.state_dict().items()}
        cfg = model.config.vision_config
        patch = 3 * cfg.temporal_patch_size * cfg.patch_size ** 2
        grid = torch.tensor([[1, 4, 4]])
        pixels = torch.randn(16, patch, generator=torch.Generator().manual_seed(0))
        with torch.no_grad():
            ref = visual(pixels, grid_thw=grid)
            ref = getattr(ref, "pooler_output", ref)
            # The tiny width (2 x vision hidden) is already a multiple of 64: pad to 96 to exercise it.
            padded = pad_vision_mlp(model, multiple=96)
            out = visual(pixels, grid_thw=grid)
            out = getattr(out, "pooler_output", out)
        if arch == "qwen2_vl":  # its vision MLP is fc1/fc2 (not gated): left alone
            assert padded == 0
            continue
        assert padded == cfg.depth
        assert visual.blocks[0].mlp.gate_proj.out_features % 96 == 0
        assert torch.equal(out, ref)
        after = model.state_dict()
        assert set(after) == set(before) and all(torch.equal(after[k], before[k]) for k in before)


def test_checkpoint_every_other_layer(tiny_models):
    from transformers import AutoModelForImageTextToText

    model = AutoModelForImageTextToText.from_pretrained(tiny_models["qwen3_vl"], dtype=torch.float32)
    layers = decoder_layers(model)
    assert layers and len(layers) == model.config.text_config.num_hidden_layers
    model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    assert checkpoint_every(model, 2) == (len(layers) + 1) // 2
    assert [bool(layer.gradient_checkpointing) for layer in layers] == [i % 2 == 0 for i in range(len(layers))]


def test_load_model_pads_the_frozen_vision_mlp_only(tiny_model, monkeypatch):
    import mcvqa.kernels
    from mcvqa.modeling import load_model

    # The tiny width (2 x vision hidden) is already a multiple of 64: pad to 96 to exercise it.
    monkeypatch.setattr(mcvqa.kernels.pad_vision_mlp, "__defaults__", (96,))
    lora, _ = load_model(tiny_model, precision="fp32", gradient_checkpointing=False)
    vision_lora, _ = load_model(tiny_model, precision="fp32", gradient_checkpointing=False, lora_vision=True)
    full, _ = load_model(tiny_model, precision="fp32", full_finetune=True, gradient_checkpointing=False)
    width = full.config.vision_config.intermediate_size
    mlp = lambda m: next(x for n, x in m.named_modules() if n.endswith("visual.blocks.0.mlp"))  # noqa: E731
    assert mlp(full).gate_proj.out_features == width  # trains: never padded
    assert type(mlp(vision_lora).gate_proj) is not torch.nn.Linear  # LoRA-wrapped: left alone
    assert mlp(lora).gate_proj.out_features == -(-width // 96) * 96 > width
