"""The vision patch embedding as a matmul (mcvqa.fast_vision.patch_patch_embed) against transformers' Conv3d, on the
CPU: one vision-tower forward of the demo's batch (64 easy-VQA images at 112x112, models/easy_vqa_base), timed in
alternating rounds.
    OMP_NUM_THREADS=2 python bench/patch_embed_cpu.py
"""

import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from collator import MCVQACollator  # noqa: E402
from mcvqa.data import load_split  # noqa: E402
from mcvqa.fast_vision import _PATCHED, patch_patch_embed  # noqa: E402
from mcvqa.modeling import load_model, load_processor  # noqa: E402

BASE, PIXELS = "models/easy_vqa_base", 112 * 112
processor = load_processor(BASE, PIXELS, PIXELS)
model, _ = load_model(BASE, precision="fp32", attn_implementation="sdpa", full_finetune=True, liger="false")
model.eval()
rows = load_split("data/easy_vqa", "train").to_dict("records")[:64]
batch = MCVQACollator(processor, PIXELS, PIXELS)(rows)
embed = next(m for m in model.modules() if type(m).__name__.endswith("PatchEmbed"))
patched, original = embed.forward, getattr(embed, _PATCHED)
visual = model.model.visual


def tower():
    return visual(batch["pixel_values"], grid_thw=batch["image_grid_thw"])


def timed(forward, n=20):
    embed.forward = forward
    with torch.no_grad():
        tower()
        start = time.perf_counter()
        for _ in range(n):
            tower()
    return (time.perf_counter() - start) / n * 1000


with torch.no_grad():
    embed.forward = original
    ref = tower().pooler_output if hasattr(tower(), "pooler_output") else tower()
    embed.forward = patched
    out = tower().pooler_output if hasattr(tower(), "pooler_output") else tower()
print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {len(rows)} images, "
      f"{batch['pixel_values'].shape[0]} patches; max |difference| {(out - ref).abs().max().item():.2e}")
conv, matmul = [], []
for _ in range(5):
    conv.append(timed(original))
    matmul.append(timed(patched))
print(f"vision tower forward, median of 5 rounds of 20: Conv3d {statistics.median(conv):.1f} ms, "
      f"matmul {statistics.median(matmul):.1f} ms")
