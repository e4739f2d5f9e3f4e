"""Fused GPU kernels (Liger-Kernel) for the Qwen-VL families, applied only where they are known to be exact.

Liger replaces classes and functions inside transformers' modelling modules, so it must run before the model
is built, and it stays applied for the rest of the process. Only the element-wise kernels are used (rotary
embedding, RMSNorm, SwiGLU): the cross-entropy patches are never applied, because the loss here reads the
head at the answer position only and Liger's fused linear cross-entropy was reported to hurt Qwen2.5-VL at
equal loss (Liger #827). Agreement with the unpatched model in bf16 is measured by
`bench/benchmark.py --parts liger_check` (bench/RESULTS.md).
"""

import importlib.util

from mcvqa.errors import UserError

CHOICES = ("auto", "true", "false")

# model_type -> (Liger's public patch function, the keyword arguments beyond rope/rms_norm).
# Qwen2-VL's vision LayerNorm patch is left off (never checked here); Qwen3-VL's SwiGLU patch is a no-op
# for its MLP (Liger #956) and is left off too.
PATCHES = {
    "qwen2_vl": ("apply_liger_kernel_to_qwen2_vl", {"swiglu": True, "layer_norm": False}),
    "qwen2_5_vl": ("apply_liger_kernel_to_qwen2_5_vl", {"swiglu": True}),
    "qwen3_vl": ("apply_liger_kernel_to_qwen3_vl", {"swiglu": False}),
}


def _device_type(device):
    if device is None:
        import torch

        return "cuda" if torch.cuda.is_available() else "cpu"
    return getattr(device, "type", None) or str(device).split(":")[0]


def liger_blockers(model_type, quantization="none", device=None):
    """Why Liger cannot be applied here (empty when it can)."""
    reasons = []
    if model_type not in PATCHES:
        reasons.append(f"no Liger kernels are wired for model type {model_type!r} "
                       f"(supported: {', '.join(sorted(PATCHES))})")
    if _device_type(device) != "cuda":
        reasons.append("Liger's Triton kernels need a CUDA device")
    if quantization in ("4bit", "8bit"):
        reasons.append(f"the base is quantised ({quantization}); Liger is not known to work with bitsandbytes")
    if importlib.util.find_spec("liger_kernel") is None:
        reasons.append("liger-kernel is not installed (pip install -r requirements-gpu.txt)")
    return reasons


def apply_liger(model_type, enabled="auto", quantization="none", device=None):
    """Apply Liger's rotary, RMSNorm and SwiGLU kernels for `model_type` (a transformers config's model_type).

    enabled: "auto" applies them when liger-kernel is installed, the device is CUDA and the base is not
    4-bit/8-bit; "true" demands them (UserError naming the reason otherwise); "false" leaves the model alone.
    Call before the model is built. Returns whether the kernels were applied. liger_kernel is imported only
    after every check has passed, so CPU runs never import it.
    """
    choice = str(enabled).strip().lower()
    if choice not in CHOICES:
        raise UserError(f"--liger must be one of {', '.join(CHOICES)}, not {enabled!r}")
    if choice == "false":
        return False
    reasons = liger_blockers(model_type, quantization, device)
    if reasons:
        if choice == "true":
            raise UserError(f"--liger true: {'; '.join(reasons)} (use --liger auto or --liger false)")
        return False
    import liger_kernel.transformers as liger

    name, extra = PATCHES[model_type]
    getattr(liger, name)(rope=True, rms_norm=True, cross_entropy=False, fused_linear_cross_entropy=False, **extra)
    return True


def decoder_layers(model):
    """The language model's decoder layers (through any peft wrapping), or an empty list."""
    for name, module in model.named_modules():
        if name.endswith("language_model.layers"):
            return list(module)
    return []


def checkpoint_every(model, every=1):
    """Keep gradient checkpointing on every `every`-th decoder layer only (1: all of them); the others keep
    their activations. Call after checkpointing was enabled (the Trainer enables it when training starts).
    Returns the number of layers still checkpointed."""
    layers = decoder_layers(model)
    for i, layer in enumerate(layers):
        if getattr(layer, "gradient_checkpointing", False) and i % every:
            layer.gradient_checkpointing = False
    return sum(bool(getattr(layer, "gradient_checkpointing", False)) for layer in layers)


def compile_decoder_layers(model, dynamic=None):
    """Regional torch.compile: each decoder layer is compiled on its own (the layers share one compiled graph),
    which fuses the element-wise work between the matrix products and removes most kernel launches.
    Returns the number of layers compiled."""
    import torch

    layers = decoder_layers(model)
    # Each batch width and each layer can cost a guard miss; the default limit (8) would silently fall back
    # to eager for the rest.
    torch._dynamo.config.cache_size_limit = max(torch._dynamo.config.cache_size_limit, 64)
    torch._dynamo.config.accumulated_cache_size_limit = max(torch._dynamo.config.accumulated_cache_size_limit, 512)
    for layer in layers:
        layer.compile(dynamic=dynamic)
    return len(layers)


def _grown(linear, rows=0, cols=0):
    """A copy of `linear` with `rows` zero output rows and `cols` zero input columns appended."""
    import torch

    w = linear.weight
    out = torch.nn.Linear(linear.in_features + cols, linear.out_features + rows, bias=linear.bias is not None,
                          device=w.device, dtype=w.dtype)
    with torch.no_grad():
        out.weight.zero_()
        out.weight[: linear.out_features, : linear.in_features] = w
        if linear.bias is not None:
            out.bias.zero_()
            out.bias[: linear.out_features] = linear.bias
    out.weight.requires_grad_(w.requires_grad)
    if out.bias is not None:
        out.bias.requires_grad_(linear.bias.requires_grad)
    return out


def pad_vision_mlp(model, multiple=64):
    """Pad the vision tower's gated MLP width to a multiple of `multiple` with zeros (exact: the padded gate and
    up rows give act(0) * 0 = 0 and the padded down-projection columns are zero).

    Qwen2/2.5-VL's vision MLP is 3,420 wide; rows of 3,420 bf16 values are not 16-byte aligned, so cuBLAS falls
    back to slower Ampere-era kernels for its three products. Only frozen MLPs are padded: one that trains
    (full fine-tune) or carries LoRA (`--lora_vision`) is left alone, since its zero rows would not stay zero.
    `state_dict()` still returns the original shapes, so a saved or merged model is unchanged.
    Returns the number of MLPs padded.
    """
    import torch

    count = 0
    for name, module in model.named_modules():
        if "visual" not in name:
            continue
        gate, up, down = (getattr(module, n, None) for n in ("gate_proj", "up_proj", "down_proj"))
        if not all(type(x) is torch.nn.Linear for x in (gate, up, down)):  # peft's LoRA Linear is another type
            continue
        if any(p.requires_grad for x in (gate, up, down) for p in x.parameters()):
            continue
        width = gate.out_features
        extra = -width % multiple
        if not extra or up.out_features != width or down.in_features != width:
            continue
        module.gate_proj, module.up_proj = _grown(gate, rows=extra), _grown(up, rows=extra)
        module.down_proj = _grown(down, cols=extra)
        module._register_state_dict_hook(_trim_hook(width))
        count += 1
    return count


def _trim_hook(width):
    def hook(module, state, prefix, local_metadata):
        for key in ("gate_proj.weight", "gate_proj.bias", "up_proj.weight", "up_proj.bias"):
            if prefix + key in state:
                state[prefix + key] = state[prefix + key][:width]
        if prefix + "down_proj.weight" in state:
            state[prefix + "down_proj.weight"] = state[prefix + "down_proj.weight"][:, :width]
        return state

    return hook
