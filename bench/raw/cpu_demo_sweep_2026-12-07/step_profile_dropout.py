"""Where a CPU LoRA step of the demo goes, with and without LoRA dropout (torch.profiler, 2 threads).

    OMP_NUM_THREADS=2 .venv/bin/python bench/raw/cpu_demo_sweep_2026-12-07/step_profile_dropout.py DROPOUT RANK [BASE]
(run from the repository root with data/easy_vqa prepared; 2026-12-07: dropout 0.05 -> 201 ms a step of 64 rows,
24% of it aten::bernoulli_; dropout 0 -> 140 ms)
"""
import sys, time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[3]
sys.path[:0] = [str(ROOT), str(ROOT / "bench")]
import torch
from collator import MCVQACollator, rope_positions
from mcvqa.data import load_split
from mcvqa.modeling import load_model, load_processor
base, data = sys.argv[3] if len(sys.argv) > 3 else "models/easy_vqa_base", "data/easy_vqa"
torch.set_num_threads(2)
processor = load_processor(base)
model, _ = load_model(base, precision="fp32", attn_implementation="sdpa", full_finetune=False, lora_r=int(sys.argv[2]), lora_alpha=int(sys.argv[2]), lora_dropout=float(sys.argv[1]),
                      gradient_checkpointing=False, liger="false", training=True)
model.train()
rows = load_split(data, "train").head(64).to_dict("records")
image_token = processor.tokenizer.convert_tokens_to_ids(processor.image_token)
coll = MCVQACollator(processor, 12544, 12544, train=True, template="{options}\n{question}",
                     position_fn=rope_positions(model, image_token))
batch = coll(rows)
print({k: tuple(v.shape) for k, v in batch.items() if hasattr(v, "shape")})
visual = model.base_model.model.model.visual
vt = [0.0]
orig = visual.forward
def timed(*a, **k):
    t = time.perf_counter(); out = orig(*a, **k); vt[0] += time.perf_counter() - t; return out
visual.forward = timed
keys = [k for k in batch if k not in ("labels", "answer_position", "answer_width", "answer_index") and not k.startswith("target")]
print(keys)
def step():
    out = model(**{k: batch[k] for k in keys}, logits_to_keep=1, use_cache=False)
    out.logits[:, -1].float().logsumexp(-1).mean().backward()
step(); vt[0] = 0.0
t = time.perf_counter(); n = 10
for _ in range(n): step()
total = (time.perf_counter() - t) / n
print(f"step of 64 rows: {total*1000:.0f} ms ({64/total:.0f} rows/s); vision {vt[0]/n*1000:.0f} ms; tokens {batch['input_ids'].shape[1]}")
t = time.perf_counter()
for _ in range(n): coll(rows)
print(f"collate {(time.perf_counter()-t)/n*1000:.0f} ms")
from torch.profiler import profile, ProfilerActivity
with profile(activities=[ProfilerActivity.CPU]) as p:
    for _ in range(3): step()
print(p.key_averages().table(sort_by="self_cpu_time_total", row_limit=25))
