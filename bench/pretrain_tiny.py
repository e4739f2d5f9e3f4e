"""Pretrain a tiny Qwen2.5-VL into a base model that answers easy-VQA questions with a word, never a letter.

    python data/prepare_easy_vqa.py --out data/easy_vqa_full --n_train 0 --n_test 1000 --seed 0
    python bench/pretrain_tiny.py --data_dir data/easy_vqa_full --out /tmp/base --minutes 12
    python bench/pretrain_tiny.py --data_dir /tmp/evqa --out /tmp/base --device cuda --minutes 4 --batch_size 256

The stand-in for a user's pretrained VLM (issue 17): it can look at an image and answer "red", "circle" or
"yes", but it has never seen the multiple-choice format (options, letters) that train_lora.py teaches. The
user turn is the image and the question alone; the one supervised token is the answer word (every easy-VQA
answer is one token of the tiny models' tokenizer), under full-vocabulary cross-entropy. Rows come from
DATA_DIR/train.csv only (easy-VQA's train split, which prepare_easy_vqa.py keeps apart from its test split);
colour and shape questions (~13 % each) are sampled as often as yes/no ones, since each is a different
circuit of the image.

The rows are rendered by the project's own collator (collator.MCVQACollator with the template "{question}"
and the answer word in place of a letter), so images are read and resized exactly as in fine-tuning and
prediction. The folder written is a normal model folder (from_pretrained) plus pretraining.json: the command,
seed, data, settings and the base's open-ended accuracy on DATA_DIR/test.csv's questions.
"""

import argparse
import json
import random
import re
import shlex
import sys
import time
from pathlib import Path
from types import SimpleNamespace

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from transformers.hf_argparser import string_to_bool  # noqa: E402

from collator import MCVQACollator, rope_positions  # noqa: E402
from mcvqa.data import load_split  # noqa: E402
from mcvqa.modeling import load_model, load_processor  # noqa: E402
from mcvqa.scoring import MODEL_KEYS, answer_logits, answer_position  # noqa: E402
from mcvqa.trainer import time_schedule  # noqa: E402
from tools.make_tiny_model import make_tiny_model  # noqa: E402

OPEN_TEMPLATE = "{question}"


def with_heads(folder, heads, seed, tie=False):
    """Rebuild the tiny model's random weights with `heads` query and key/value heads (M-RoPE sections to match),
    and with `tie` one matrix for the input embeddings and the output head (as Qwen2.5-VL-3B has)."""
    from transformers import AutoConfig, AutoModelForImageTextToText, GenerationConfig

    config = AutoConfig.from_pretrained(folder)
    text = config.text_config
    if text.hidden_size % heads:
        raise SystemExit(f"error: --heads {heads} does not divide the width {text.hidden_size}")
    half = text.hidden_size // heads // 2
    text.num_attention_heads = text.num_key_value_heads = heads
    text.rope_parameters["mrope_section"] = [half - 2 * (3 * half // 8), 3 * half // 8, 3 * half // 8]
    config.tie_word_embeddings = text.tie_word_embeddings = tie
    torch.manual_seed(seed)
    model = AutoModelForImageTextToText.from_config(config)
    model.generation_config = GenerationConfig.from_pretrained(folder)  # make_tiny_model's pad/eos ids
    model.save_pretrained(folder, safe_serialization=True)


def open_ended(df, answers=None):
    """Rows for the collator with the answer word (the text of the right option) as the answer."""
    rows = df.to_dict("records")
    for row in rows:
        letter = row["answer"] if answers is None else answers[row["id"]]
        row["answer"] = row[letter]
    return rows


class InContext(torch.utils.data.Dataset):
    """Rows with up to `k` other questions about the same image, each followed by its answer word, written before
    the question (0 to k of them, drawn afresh each time): text before the question, as a pretrained VLM has seen in
    conversations, so that an answer does not hang on the question being the prompt's only text."""

    def __init__(self, rows, k, seed):
        self.rows, self.k, self.seed, self.rng, self.worker = rows, k, seed, random.Random(seed), None
        self.by_image = {}
        for i, row in enumerate(rows):
            self.by_image.setdefault(row["image"], []).append(i)

    def __len__(self):
        return len(self.rows)

    def __getitem__(self, i):
        info = torch.utils.data.get_worker_info()
        if info is not None and self.worker != info.id:
            # Each worker process starts from a copy of the parent's generator: without its own seed, the workers
            # would draw the same context counts for their rows.
            self.worker, self.rng = info.id, random.Random(self.seed * 1000 + info.id)
        row = dict(self.rows[i])
        others = [j for j in self.by_image[row["image"]] if j != i]
        picked = self.rng.sample(others, min(len(others), self.rng.randint(0, self.k)))
        if picked:
            lines = [f"{self.rows[j]['question']} {self.rows[j]['answer']}" for j in picked]
            row["question"] = "\n".join([*lines, row["question"]])
        return row


class BalancedSampler(torch.utils.data.Sampler):
    """Endless row indices in which every question type is drawn equally often (the loop stops on the clock)."""

    def __init__(self, rows, seed):
        self.by_type = {}
        for i, row in enumerate(rows):
            self.by_type.setdefault(row["question_type"], []).append(i)
        self.rng = random.Random(seed)

    def __iter__(self):
        per_type = max(len(v) for v in self.by_type.values())
        while True:
            order = [idx[self.rng.randrange(len(idx))] for idx in self.by_type.values() for _ in range(per_type)]
            self.rng.shuffle(order)
            yield from order


def answer_token_ids(tokenizer, words):
    ids = {}
    for w in words:
        tok = tokenizer.encode(w, add_special_tokens=False)
        if len(tok) != 1:
            raise SystemExit(f"error: answer {w!r} is {len(tok)} tokens; the pretraining supervises one token")
        ids[w] = tok[0]
    return ids


@torch.no_grad()
def open_accuracy(model, collator, rows, words, word_ids, device, batch_size):
    """Accuracy of the argmax over the answer words at the answer position, overall and by question type."""
    model.eval()
    ids = torch.tensor([word_ids[w] for w in words], device=device)
    hits, types = [], []
    for s in range(0, len(rows), batch_size):
        chunk = [dict(r, answer=None) for r in rows[s: s + batch_size]]
        batch = {k: v.to(device) if torch.is_tensor(v) else v for k, v in collator(chunk).items()}
        pred = answer_logits(model, batch)[:, 0, ids].argmax(-1).tolist()
        hits += [words[p] == r["answer"] for p, r in zip(pred, rows[s: s + batch_size])]
        types += [r["question_type"] for r in rows[s: s + batch_size]]
    model.train()
    table = pd.DataFrame({"hit": hits, "type": types})
    return float(np.mean(hits)), table.groupby("type")["hit"].mean().round(4).to_dict()


def open_ended_loss(model, batch, text_weight=0.0, image_token=None):
    """Cross-entropy of the answer word's first token over the whole vocabulary, at the answer position; with
    `text_weight`, plus that weight times the next-token cross-entropy over every other text token of the rows (the
    chat markup and the question; image and padding positions excluded), as a language model is pretrained."""
    at = answer_position(batch)
    if not text_weight:
        return F.cross_entropy(answer_logits(model, batch)[:, 0].float(), batch["labels"][:, at + 1])
    logits = model(**{k: batch[k] for k in MODEL_KEYS if k in batch}, use_cache=False).logits.float()
    answer = F.cross_entropy(logits[:, at], batch["labels"][:, at + 1])
    target = batch["input_ids"][:, 1:]
    # both ends real: a left-padded row's first token is not predicted from the padding before it
    mask = batch["attention_mask"].bool()
    keep = mask[:, 1:] & mask[:, :-1] & (target != image_token)
    keep[:, at] = False
    return answer + text_weight * F.cross_entropy(logits[:, :-1][keep], target[keep])


def drop_default_system_turn(folder):
    """Rewrite the folder's chat template without the default system turn that Qwen2.5-VL's inserts (16 of a
    row's ~60 tokens with the tiny tokenizer): a base that never saw it costs a CPU fine-tune a quarter less per row."""
    path = Path(folder) / "chat_template.jinja"
    text = path.read_text()
    default = re.search(r"\{% if loop\.first and message\['role'\] != 'system' %\}.*?\{% endif %\}", text, re.S)
    if default is None:
        raise SystemExit(f"error: {path} has no default system turn to drop")
    path.write_text(text[: default.start()] + text[default.end():])


def build_parser():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data_dir", required=True, help="prepare_easy_vqa.py output: train.csv to learn from, "
                                                        "test.csv + test_answers.csv to report on")
    ap.add_argument("--out", required=True, help="model folder to write")
    ap.add_argument("--minutes", type=float, default=12.0, help="training time budget (wall clock)")
    ap.add_argument("--max_steps", type=int, default=None, help="stop after this many steps (before the budget)")
    ap.add_argument("--batch_size", type=int, default=64)
    ap.add_argument("--learning_rate", type=float, default=2e-3)
    ap.add_argument("--warmup_steps", type=int, default=50)
    ap.add_argument("--weight_decay", type=float, default=0.01)
    ap.add_argument("--seed", type=int, default=0, help="seed of the random weights and of the row order")
    ap.add_argument("--hidden_size", type=int, default=128)
    ap.add_argument("--num_layers", type=int, default=4)
    ap.add_argument("--heads", type=int, default=4, help="attention heads, each with its own key/value head "
                    "(make_tiny_model's 128-wide default is 2 query heads sharing 1 key/value head)")
    ap.add_argument("--vision_hidden_size", type=int, default=64)
    ap.add_argument("--vision_depth", type=int, default=2)
    ap.add_argument("--pixels", type=int, default=112 * 112, help="min = max pixels (112x112: 16 image tokens)")
    ap.add_argument("--system_prompt", type=string_to_bool, default=True,
                    help="false: the base's chat template has no default system turn (shorter rows for a CPU fine-tune)")
    ap.add_argument("--text_loss_weight", type=float, default=0.0,
                    help="also learn to predict the question's and chat markup's tokens, at this weight against the "
                         "answer word's (0: the answer word alone)")
    ap.add_argument("--context_questions", type=int, default=0,
                    help="up to this many other questions about the same image, with their answers, before the question "
                         "(a random 0..K each time; never options or letters): robust to text before the question")
    ap.add_argument("--blank_images", action="store_true",
                    help="every image grey (the blank-image twin: what the question text alone allows)")
    ap.add_argument("--freeze_head", action="store_true",
                    help="keep the output head at its random initialisation: the rows of tokens never answered here "
                         "(the letters a-d) are not pushed out of reach, as they are not in a general pretrained model")
    ap.add_argument("--tie_embeddings", action="store_true",
                    help="one matrix for input embeddings and output head: an answer copied from the prompt (a letter "
                         "of an option line) lands on its own output row")
    ap.add_argument("--workers", type=int, default=0, help="DataLoader worker processes building batches")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=None, help="CPU threads (default: torch's)")
    ap.add_argument("--batched_vision_attention", type=string_to_bool, default=True,
                    help="load_model's vision fast paths (mcvqa.fast_vision; exact): one attention call per vision "
                         "layer for the whole batch, not one per image, and the grid-only index arithmetic done once "
                         "per grid: the ops bench/learning_seeds.sh's tiny bases spent their steps on "
                         "(bench/count_ops.py)")
    ap.add_argument("--tf32", action="store_true",
                    help="TF32 tensor cores for fp32 matmuls and convolutions on CUDA (10-bit mantissa products, fp32 sums)")
    ap.add_argument("--eval_rows", type=int, default=1000, help="test questions for the final report")
    ap.add_argument("--log_every", type=int, default=50)
    return ap


def main(argv=None):
    a = build_parser().parse_args(argv)
    if a.threads:
        torch.set_num_threads(a.threads)
    if a.tf32:
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True
    random.seed(a.seed)
    torch.manual_seed(a.seed)
    out = Path(a.out)
    make_tiny_model("qwen2_5_vl", out, hidden_size=a.hidden_size, num_layers=a.num_layers,
                    vision_hidden_size=a.vision_hidden_size, vision_depth=a.vision_depth,
                    min_pixels=a.pixels, max_pixels=a.pixels, seed=a.seed)
    with_heads(out, a.heads, a.seed, a.tie_embeddings)
    if not a.system_prompt:
        drop_default_system_turn(out)
    processor = load_processor(out)
    model, _ = load_model(out, precision="fp32", attn_implementation="sdpa", full_finetune=True, liger="false",
                          batched_vision_attention=a.batched_vision_attention)
    model.to(a.device).train()

    train = open_ended(load_split(a.data_dir, "train"))
    test_df = load_split(a.data_dir, "test")
    answers = pd.read_csv(Path(a.data_dir) / "test_answers.csv", dtype=str).set_index("id")["answer"].to_dict()
    test = open_ended(test_df, answers)[: a.eval_rows]
    words = sorted({r["answer"] for r in train})
    word_ids = answer_token_ids(processor.tokenizer, words)
    image_token = processor.tokenizer.convert_tokens_to_ids(processor.image_token)
    collator = MCVQACollator(processor, a.pixels, a.pixels, train=True, template=OPEN_TEMPLATE,
                             position_fn=rope_positions(model, image_token), blank_images=a.blank_images)
    data = InContext(train, a.context_questions, a.seed) if a.context_questions else train
    loader = iter(torch.utils.data.DataLoader(data, batch_size=a.batch_size, sampler=BalancedSampler(train, a.seed),
                                              collate_fn=collator, num_workers=a.workers,
                                              persistent_workers=a.workers > 0, pin_memory=a.device != "cpu"))

    if a.freeze_head:
        model.lm_head.weight.requires_grad_(False)
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=a.learning_rate, weight_decay=a.weight_decay,
                            betas=(0.9, 0.95))
    # The project's warm-up + cosine over the share of the clock (or of --max_steps) spent (mcvqa.trainer).
    clock = SimpleNamespace(fraction=0.0)
    schedule = time_schedule(opt, clock, a.warmup_steps, "cosine", a.max_steps)
    step, start, seen, losses = 0, time.time(), 0, []
    budget = 60 * a.minutes
    while True:
        elapsed = time.time() - start
        if elapsed >= budget or (a.max_steps is not None and step >= a.max_steps):
            break
        clock.fraction = min(1.0, elapsed / budget)
        lr = schedule.get_last_lr()[0]
        batch = {k: v.to(a.device, non_blocking=True) if torch.is_tensor(v) else v for k, v in next(loader).items()}
        loss = open_ended_loss(model, batch, a.text_loss_weight, image_token)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        schedule.step()
        step += 1
        seen += len(batch["input_ids"])
        losses.append(loss.detach())
        if step % a.log_every == 0:
            print(f"step {step}  {time.time() - start:6.0f} s  loss {torch.stack(losses[-a.log_every:]).mean().item():.4f}  "
                  f"lr {lr:.2e}", flush=True)
    minutes = (time.time() - start) / 60
    acc, by_type = open_accuracy(model, collator, test, words, word_ids, a.device, 2 * a.batch_size)
    print(f"open-ended accuracy on {len(test)} test questions: {acc:.4f} {by_type}")
    model.save_pretrained(out, safe_serialization=True)
    record = {
        "command": "python bench/pretrain_tiny.py " + " ".join(shlex.quote(x) for x in (argv or sys.argv[1:])),
        "settings": vars(a), "torch": torch.__version__, "steps": step, "rows_seen": seen,
        "minutes": round(minutes, 2), "final_loss": torch.stack(losses[-a.log_every:]).mean().item() if losses else None,
        "train_rows": len(train), "train_file": str(Path(a.data_dir) / "train.csv"),
        "blank_images": a.blank_images, "data": "easy-VQA train split only (prepare_easy_vqa.py); options and letters never shown",
        "open_ended_test_accuracy": acc, "open_ended_test_accuracy_by_type": by_type, "test_rows": len(test),
    }
    (out / "pretraining.json").write_text(json.dumps(record, indent=2) + "\n")
    print(f"wrote {out} ({sum(p.numel() for p in model.parameters()) / 1e6:.2f}M parameters, {step} steps, "
          f"{minutes:.1f} min)")


if __name__ == "__main__":
    main()
