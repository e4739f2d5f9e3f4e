import sys, torch, pandas as pd
sys.path.insert(0, "."); sys.path.insert(0, "bench")
from collator import MCVQACollator, rope_positions
from mcvqa.data import load_split
from mcvqa.modeling import load_model, load_processor
from mcvqa.scoring import answer_logits
base = sys.argv[1]
proc = load_processor(base)
model, _ = load_model(base, precision="fp32", attn_implementation="sdpa", full_finetune=True, liger="false"); model.eval()
df = load_split("data/easy_vqa", "test"); ans = pd.read_csv("data/easy_vqa/test_answers.csv")
df = df.merge(ans, on="id"); df = df[df.type == "yes/no"].head(400)
tok = proc.tokenizer
y, n = tok.convert_tokens_to_ids("yes") if "yes" in tok.get_vocab() else tok.encode("yes")[0], tok.encode("no")[0]
print("ids", tok.encode("yes"), tok.encode("no"))
image = tok.convert_tokens_to_ids(proc.image_token)
for name, tpl in [("open", "{question}"), ("opts_first", "{options}\n{question}"), ("q_first", "{question}\n{options}")]:
    c = MCVQACollator(proc, 12544, 12544, train=False, template=tpl, position_fn=rope_positions(model, image))
    ok = 0
    rows = df.to_dict("records")
    for i in range(0, len(rows), 100):
        b = c(rows[i:i+100])
        with torch.no_grad():
            lg = answer_logits(model, b)[:, 0]
        truth = [r[r["answer"]] for r in rows[i:i+100]]
        pred = ["yes" if a > bb else "no" for a, bb in zip(lg[:, tok.encode("yes")[0]], lg[:, tok.encode("no")[0]])]
        ok += sum(p == t for p, t in zip(pred, truth))
    print(name, ok / len(rows))
