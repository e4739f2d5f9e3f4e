"""One attention call per vision layer instead of one per image (or window), the vision tower's index
arithmetic done once per batch shape instead of once per image and step, and the patch embedding as one matmul.

Without flash-attention, transformers' Qwen-VL vision towers split the packed patch sequence at
`cu_seqlens` and call SDPA once per image, and Qwen2.5-VL once per window: 14,520 calls in one training
step of a 7B model at batch 16, each a kernel launch plus Python. When every chunk has the same length
(a fixed image size, the usual case in a competition), the chunks are a batch: reshape and make one call.
Other cases fall through to the original code, so results never change, only the number of launches.

The towers also rebuild, every forward, integer tensors that depend on nothing but the images' patch grids
(`grid_thw`): rotary position ids and Qwen2.5-VL's window order, in a Python loop of ~27 ops an image (about
7,000 of the 10,565 ops of a tiny model's step at batch 256: bench/count_ops.py). `cache_vision_indices`
keeps the last few results per grid, so a batch of the same shapes reuses them.
"""

import functools
import importlib
import sys
from collections import OrderedDict

import torch
import torch.nn.functional as F

_PATCHED = "_mcvqa_original_forward"


def _batched_forward(self, hidden_states, cu_seqlens, rotary_pos_emb=None, position_embeddings=None, **kwargs):
    impl = getattr(self.config, "_attn_implementation", "sdpa")
    lengths = (cu_seqlens[1:] - cu_seqlens[:-1]).tolist()
    seq = hidden_states.shape[0]
    if impl != "sdpa" or len(set(lengths)) != 1 or position_embeddings is None:
        return getattr(self, _PATCHED)(hidden_states, cu_seqlens, rotary_pos_emb=rotary_pos_emb,
                                       position_embeddings=position_embeddings, **kwargs)
    n, length = len(lengths), lengths[0]
    q, k, v = self.qkv(hidden_states).reshape(seq, 3, self.num_heads, -1).permute(1, 0, 2, 3).unbind(0)
    cos, sin = position_embeddings
    q, k = sys.modules[type(self).__module__].apply_rotary_pos_emb_vision(q, k, cos, sin)
    q, k, v = (t.reshape(n, length, self.num_heads, -1).transpose(1, 2) for t in (q, k, v))
    out = F.scaled_dot_product_attention(q, k, v, scale=getattr(self, "scaling", None))
    return self.proj(out.transpose(1, 2).reshape(seq, -1))


def patch_vision_attention(model):
    """Switch every Qwen-VL vision attention module of `model` to the batched forward; returns how many."""
    count = 0
    for module in model.modules():
        name = type(module).__name__
        if name.endswith("VisionAttention") and hasattr(module, "qkv") and not hasattr(module, _PATCHED):
            setattr(module, _PATCHED, module.forward)
            module.forward = _batched_forward.__get__(module)
            count += 1
    return count


def _linear_patch_embed(self, hidden_states):
    # A Conv3d whose kernel is its stride and covers the whole (C, T, P, P) patch is a matmul over each flattened
    # patch, in the order the processor flattened it; CPU conv3d is the slower kernel for it (bench/patch_embed_cpu.py).
    weight = self.proj.weight
    return F.linear(hidden_states.to(weight.dtype).reshape(-1, weight[0].numel()), weight.reshape(weight.shape[0], -1),
                    self.proj.bias)


def patch_patch_embed(model):
    """Switch every Qwen-VL vision patch embedding of `model` to the matmul forward; returns how many."""
    count = 0
    for module in model.modules():
        proj = getattr(module, "proj", None)
        if (type(module).__name__.endswith("PatchEmbed") and isinstance(proj, torch.nn.Conv3d)
                and list(proj.kernel_size) == list(proj.stride) and proj.padding == (0, 0, 0)
                and proj.groups == 1 and not hasattr(module, _PATCHED)):
            setattr(module, _PATCHED, module.forward)
            module.forward = _linear_patch_embed.__get__(module)
            count += 1
    return count


# transformers.vision_utils' per-image loops, as each Qwen-VL modeling module imported them (5.17 and 5.25 alike),
# and the kwargs through which a caller may hand their results in (then the original runs: it pops them).
_INDEX_FUNCTIONS = {"get_vision_position_ids": ("position_ids",),
                    "get_vision_window_index": ("window_index", "cu_window_seqlens")}
_FAMILIES = ("qwen2_vl", "qwen2_5_vl", "qwen3_vl", "qwen3_vl_moe")
_UNCACHED = "_mcvqa_uncached"  # where a memoised function keeps the original


def _memoised(fn, precomputed, size=16):
    results = OrderedDict()

    @functools.wraps(fn)
    def cached(grid_thw, *args, kwargs=None, **named):
        settings = args + tuple(sorted(named.items()))
        if (kwargs is not None and any(k in kwargs for k in precomputed)) or any(
                not isinstance(v, (int, bool, str)) for v in args + tuple(named.values())):
            return fn(grid_thw, *args, kwargs=kwargs, **named)
        key = (str(grid_thw.device), tuple(grid_thw.flatten().tolist()), settings)
        if key in results:
            results.move_to_end(key)
        else:
            # Normal tensors even when first made under predict's or evaluation's inference_mode: a training step
            # that reuses them saves the window order for backward (mcvqa.scoring.letter_index does the same).
            with torch.inference_mode(False):
                grid = grid_thw.clone() if grid_thw.is_inference() else grid_thw
                results[key] = fn(grid, *args, kwargs=kwargs, **named)
            if len(results) > size:
                results.popitem(last=False)
        return results[key]

    setattr(cached, _UNCACHED, fn)
    return cached


def cache_vision_indices(enable=True):
    """Memoise the vision towers' grid-only index functions in every Qwen-VL modeling module (process-wide:
    they are module functions); `enable=False` restores the originals. Returns the functions changed."""
    changed = []
    for family in _FAMILIES:
        try:
            module = importlib.import_module(f"transformers.models.{family}.modeling_{family}")
        except ImportError:
            continue
        for name, precomputed in _INDEX_FUNCTIONS.items():
            current = getattr(module, name, None)
            if current is None:
                continue
            if enable == hasattr(current, _UNCACHED):
                continue
            original = getattr(current, _UNCACHED, current)
            setattr(module, name, _memoised(original, precomputed) if enable else original)
            changed.append(f"{family}.{name}")
    return changed
