"""How far below its own answer a base puts the option letters, at the answer position of multiple-choice prompts.

    python bench/letter_margin.py --base /tmp/variants/bases/h4 --data_dir /tmp/evqa --rows 64
    python bench/letter_margin.py --base B --data_dir D --rows 1000 --template "{options}\n{question}"

Prints the mean gap between the best letter's logit and the top logit, the letters' median rank in the vocabulary,
and the output head's row norms for a-d against the median row (issue 17: why LoRA on a tiny open-ended base does
not learn the letter format). Then, per prompt layout, the base's answer-word accuracy at the answer position
(argmax over easy-VQA's answer words, as bench/pretrain_tiny.py scores its open-ended prompt): how much of the
base's own answer is still computed where the letter will have to be read once options stand in the prompt. Layouts:
the open-ended prompt the base learned, train_lora.py's default (question, options, instruction) and --template.
"""

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import pandas as pd  # noqa: E402
import torch  # noqa: E402

from bench.pretrain_tiny import OPEN_TEMPLATE, answer_token_ids, open_accuracy, open_ended  # noqa: E402
from collator import MCVQACollator, option_letter_ids  # noqa: E402
from mcvqa.data import load_split  # noqa: E402
from mcvqa.modeling import load_processor  # noqa: E402
from mcvqa.prompts import template_problem  # noqa: E402
from mcvqa.scoring import answer_logits  # noqa: E402


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--base", required=True, help="model folder (e.g. bench/pretrain_tiny.py's output)")
    ap.add_argument("--data_dir", required=True, help="a data folder with test.csv")
    ap.add_argument("--rows", type=int, default=64)
    ap.add_argument("--pixels", type=int, default=112 * 112)
    ap.add_argument("--template", default=None,
                    help="a --prompt_template to score beside the default layout (e.g. '{options}\\n{question}')")
    a = ap.parse_args(argv)
    if a.template:
        a.template = a.template.replace("\\n", "\n")
        problem = template_problem(a.template, "--template")
        if problem:
            print(f"error: {problem}", file=sys.stderr)
            sys.exit(2)
    from transformers import AutoModelForImageTextToText

    processor = load_processor(a.base)
    model = AutoModelForImageTextToText.from_pretrained(a.base).eval()
    table = load_split(a.data_dir, "test").iloc[: a.rows]
    batch = MCVQACollator(processor, a.pixels, a.pixels, train=False)(table.to_dict("records"))
    with torch.no_grad():
        logits = answer_logits(model, batch)[:, 0]
    letters = [v[0] for v in option_letter_ids(processor.tokenizer)]
    best_letter = logits[:, letters].max(-1, keepdim=True).values
    head = model.lm_head.weight
    print(f"best letter - top logit, mean over {len(table)} rows: "
          f"{(best_letter[:, 0] - logits.max(-1).values).mean().item():.2f}")
    print(f"best letter's rank, median: {(logits > best_letter).sum(-1).float().median().item():.0f} "
          f"of {logits.shape[1]} tokens")
    print(f"head row norms: a-d {[round(x, 2) for x in head[letters].norm(dim=-1).tolist()]}, "
          f"median of all {head.norm(dim=-1).median().item():.2f}")
    answers = pd.read_csv(Path(a.data_dir) / "test_answers.csv", dtype=str).set_index("id")["answer"].to_dict()
    words = sorted(set(table[list("abcd")].to_numpy().ravel()))
    word_ids = answer_token_ids(processor.tokenizer, words)
    layouts = {"open-ended": OPEN_TEMPLATE, "default": None}
    if a.template:
        layouts["--template"] = a.template
    for name, template in layouts.items():
        collator = MCVQACollator(processor, a.pixels, a.pixels, train=True, template=template)
        acc, by_type = open_accuracy(model, collator, open_ended(table, answers), words, word_ids, "cpu", 64)
        print(f"answer-word accuracy, {name} layout: {acc:.4f} {by_type}")


if __name__ == "__main__":
    main()
