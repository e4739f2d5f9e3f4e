"""Where a CPU LoRA step of the recipe goes on a 0.999 base: the whole step against the frozen vision tower's part.

    OMP_NUM_THREADS=2 .venv/bin/python bench/raw/cpu_lora_gpu_base_2026-12-07/step_profile.py BASE DATA_DIR
(BASE: call 36's seed-2 base from base_seed2.tgz; DATA_DIR: prepare_easy_vqa.py's rows; output in output.txt)
"""
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[3]
sys.path[:0] = [str(ROOT), str(ROOT / "bench")]
import torch
from collator import MCVQACollator, rope_positions
from mcvqa.data import load_split
from mcvqa.modeling import load_model, load_processor
base, data = sys.argv[1], sys.argv[2]
torch.set_num_threads(2)
processor = load_processor(base)
model, _ = load_model(base, precision="fp32", attn_implementation="sdpa", full_finetune=False, lora_r=64, lora_alpha=64,
                      gradient_checkpointing=False, liger="false", training=True)
model.train()
rows = load_split(data, "train").head(32).to_dict("records")
image_token = processor.tokenizer.convert_tokens_to_ids(processor.image_token)
coll = MCVQACollator(processor, 12544, 12544, train=True, template="{options}\n{question}",
                     position_fn=rope_positions(model, image_token))
batch = coll(rows)
print({k: tuple(v.shape) for k, v in batch.items() if hasattr(v, "shape")})
visual = model.base_model.model.model.visual if hasattr(model, "base_model") else model.model.visual
vt = [0.0]
orig = visual.forward
def timed(*a, **k):
    t = time.perf_counter(); out = orig(*a, **k); vt[0] += time.perf_counter() - t; return out
visual.forward = timed
keys = [k for k in batch if k not in ("labels",)]
def step():
    out = model(**{k: batch[k] for k in keys})
    out.logits[:, -1].float().logsumexp(-1).mean().backward()
step(); vt[0] = 0.0
t = time.perf_counter(); n = 5
for _ in range(n): step()
total = (time.perf_counter() - t) / n
print(f"step of 32 rows: {total*1000:.0f} ms ({32/total:.0f} rows/s); vision tower forward {vt[0]/n*1000:.0f} ms "
      f"({vt[0]/n/total:.0%}); tokens per row {batch['input_ids'].shape[1]} (padded)")
with torch.no_grad():
    t = time.perf_counter()
    for _ in range(n): model(**{k: batch[k] for k in keys})
    print(f"forward alone: {(time.perf_counter()-t)/n*1000:.0f} ms")
