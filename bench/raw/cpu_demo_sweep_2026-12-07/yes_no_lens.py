"""Logit lens on a base: at which layer the final position of an easy-VQA yes/no row decides yes or no,
for the bare question, the demo layout (options, then the question) and the question first.

    .venv/bin/python bench/raw/cpu_demo_sweep_2026-12-07/yes_no_lens.py [BASE]
"""
import sys
from pathlib import Path

import pandas as pd
import torch

ROOT = str(Path(__file__).resolve().parents[3])
sys.path.insert(0, ROOT)
from mcvqa.modeling import load_processor, load_model
from mcvqa.data import load_split
from collator import MCVQACollator
torch.manual_seed(0)
base = sys.argv[1] if len(sys.argv) > 1 else ROOT + "/models/easy_vqa_base"
proc = load_processor(base, 12544, 12544)
model = load_model(base, precision="fp32", full_finetune=True)[0].eval()
df = load_split(ROOT + "/data/easy_vqa", "test")
ans = pd.read_csv(ROOT + "/data/easy_vqa/test_answers.csv")
df = df.merge(ans, on="id")
yn = df[df.question_type == "yes/no"].head(400)
tok = proc.tokenizer
yes_id, no_id = tok.convert_tokens_to_ids("yes"), tok.convert_tokens_to_ids("no")
print("ids", yes_id, no_id, tok.convert_ids_to_tokens([yes_id, no_id]))
truth = torch.tensor([row[row.answer] == "yes" for _, row in yn.iterrows()])
lm = model.model.language_model if hasattr(model.model, "language_model") else model.model
for name, tmpl in [("open", "{question}"), ("mc", "{options}\n{question}"), ("mc_q_first", "{question}\n{options}")]:
    col = MCVQACollator(proc, 12544, 12544, train=False, template=tmpl)
    rows = [dict(r) for r in yn.drop(columns=["answer"]).to_dict("records")]
    with torch.no_grad():
        b = col(rows)
        b = {k: v for k, v in b.items() if k in ("input_ids", "attention_mask", "pixel_values", "image_grid_thw", "position_ids", "mm_token_type_ids")}
        out = model(**b, output_hidden_states=True)
        accs = []
        for h in out.hidden_states[1:]:
            lg = model.lm_head(lm.norm(h[:, -1]))
            accs.append(round(((lg[:, yes_id] > lg[:, no_id]) == truth).float().mean().item(), 3))
        # the last hidden state already has the norm applied in HF models; compare with final logits
        fl = out.logits[:, -1]
        print(name, "layers", accs, "final", round(((fl[:, yes_id] > fl[:, no_id]) == truth).float().mean().item(), 3))
