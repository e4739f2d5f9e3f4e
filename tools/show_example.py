"""Print one training example exactly as the model receives it: the fastest way to see what is masked.

    python tools/show_example.py --data_dir data/easy_vqa --model_name_or_path models/easy_vqa_base
    python tools/show_example.py --data_dir data --model_name_or_path Qwen/Qwen2.5-VL-7B-Instruct --row 12
    python tools/show_example.py --data_dir data --model_name_or_path Qwen/Qwen2.5-VL-7B-Instruct --row 12 \\
        --shuffle_choices --seed 3 --max_pixels 200704 --prompt_template $'{question}\\n{options}'

Row N of DATA_DIR/train.csv (counted from 0) goes through the training collator (collator.MCVQACollator,
train=True) with the processor every script uses (mcvqa.modeling.load_processor). Printed: the decoded
tokens with the run of image tokens collapsed to a count (`<|image_pad|> x64`) and the supervised
token(s) inside [[...]], the option order shown (with --shuffle_choices, one random order as training draws
them), the answer position (the one position whose logits training and scoring read), the token ids of
the four letters that scoring compares, and the last tokens one per line with their labels.
Only the tokenizer, the image processor and the config are loaded, not the weights.
"""

import sys
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from mcvqa.errors import UserError, argument_errors, report_user_errors  # noqa: E402

MARK = ("[[", "]]")


@dataclass
class ShowArguments:
    data_dir: str = field(default="data", metadata={"help": "Folder with train.csv (see data/README.md)."})
    model_name_or_path: str = field(default="Qwen/Qwen2.5-VL-7B-Instruct", metadata={
        "help": "Hub id or local folder of a Qwen2/2.5/3-VL model: its tokenizer, chat template and image processor."})
    row: int = field(default=0, metadata={"help": "Which train.csv row, counted from 0 (CSV line N + 2)."})
    shuffle_choices: bool = field(default=False, metadata={
        "help": "Show the options in one random order, as train_lora.py --shuffle_choices does each epoch."})
    seed: int = field(default=0, metadata={"help": "Seed of the random option order (--shuffle_choices)."})
    min_pixels: int = field(default=112 * 112, metadata={"help": "Image pixel floor, as train_lora.py --min_pixels."})
    max_pixels: int = field(default=448 * 448, metadata={"help": "Image pixel budget, as train_lora.py --max_pixels."})
    prompt_template: str = field(default=None, metadata={
        "help": "User-turn format with {question}, {options}, {instruction}, as train_lora.py --prompt_template."})
    templates_by_type: str = field(default=None, metadata={
        "help": "JSON or YAML mapping question_type -> template, as train_lora.py --templates_by_type."})
    supervise_eos: bool = field(default=False, metadata={
        "help": "Also supervise <|im_end|> after the letter, as train_lora.py --supervise_eos."})
    tail: int = field(default=8, metadata={"help": "How many of the last tokens to list one per line."})
    trust_remote_code: bool = field(default=False, metadata={"help": "Allow code from the model folder to run."})


def render(tokenizer, ids, labels, image_token_id):
    """Decoded text; each run of image tokens as `<token> xN`, supervised tokens inside [[ ]]."""
    parts, i = [], 0
    image_token = tokenizer.convert_ids_to_tokens(image_token_id)
    while i < len(ids):
        j = i
        if ids[i] == image_token_id:
            while j < len(ids) and ids[j] == image_token_id:
                j += 1
            parts.append(f"{image_token} x{j - i}")
        elif labels[i] != -100:
            while j < len(ids) and labels[j] != -100 and ids[j] != image_token_id:
                j += 1
            parts.append(MARK[0] + tokenizer.decode(ids[i:j]) + MARK[1])
        else:
            while j < len(ids) and labels[j] == -100 and ids[j] != image_token_id:
                j += 1
            parts.append(tokenizer.decode(ids[i:j]))
        i = j
    return "".join(parts)


def describe(args):
    """The text printed for one row (also returned by main, for tests)."""
    import random

    from collator import MCVQACollator, option_letter_ids
    from mcvqa import LETTERS
    from mcvqa.data import load_split
    from mcvqa.modeling import check_model_folder, load_processor
    from mcvqa.prompts import parse_templates
    from mcvqa.tta import identity, permute, view_order

    check_model_folder(args.model_name_or_path, args.trust_remote_code)
    df = load_split(args.data_dir, "train")
    if not 0 <= args.row < len(df):
        raise UserError(f"--row {args.row}: {Path(args.data_dir) / 'train.csv'} has {len(df)} rows (0 to {len(df) - 1})")
    row = df.iloc[args.row].to_dict()
    processor = load_processor(args.model_name_or_path, args.min_pixels, args.max_pixels, args.trust_remote_code)
    collator = MCVQACollator(processor, args.min_pixels, args.max_pixels, train=True, supervise_eos=args.supervise_eos,
                             template=args.prompt_template, templates_by_type=parse_templates(args.templates_by_type))
    view = identity
    if args.shuffle_choices:
        # The collator's own shuffle is the same permutation applied inside encode(); drawn here so the order is known.
        view = partial(permute, order=random.Random(args.seed).sample(range(4), 4))
    batch = collator([row], view=view)
    shown = view(row)
    ids, labels = batch["input_ids"][0].tolist(), batch["labels"][0].tolist()
    at = int(batch["answer_index"][0])
    supervised = [k for k, label in enumerate(labels) if label != -100]
    tok = processor.tokenizer
    grid = batch["image_grid_thw"][0].tolist()
    n_image = ids.count(collator.image_token_id)
    order = view_order(shown)
    letters = option_letter_ids(tok)

    lines = [
        f"model:     {args.model_name_or_path} ({type(processor).__name__})",
        f"row:       {args.row} of {Path(args.data_dir) / 'train.csv'} (id {row['id']}, question type "
        f"{row['question_type']})",
        f"image:     {row['image']} -> grid {grid[0]}x{grid[1]}x{grid[2]} patches, {n_image} image tokens",
        "options:   " + "  ".join(f"{LETTERS[j]}. {shown[LETTERS[j]]}" for j in range(4)),
        "order:     " + ("as in train.csv" if order == [0, 1, 2, 3] else
                         "shown " + " ".join(f"{LETTERS[j]}={LETTERS[src]}" for j, src in enumerate(order))
                         + " (shown letter = train.csv letter)"),
        f"answer:    train.csv '{row['answer']}' ({row[row['answer']]}) -> shown as '{shown['answer']}'",
        f"sequence:  {len(ids)} tokens; answer position {at}: its logits are read for the letters, "
        f"supervised token(s) at {', '.join(map(str, supervised))}",
        "scored:    " + "  ".join(f"{LETTERS[k]}={v}" for k, v in enumerate(letters))
        + "  (token ids folded per letter)",
        "",
        "--- as the model receives it (supervised tokens inside double square brackets) ---",
        render(tok, ids, labels, collator.image_token_id),
        "",
        f"--- last {min(args.tail, len(ids))} tokens ---",
        f"{'index':>6} {'id':>7}  {'label':>7}  token",
    ]
    for k in range(max(0, len(ids) - args.tail), len(ids)):
        note = "  <- answer position" if k == at else ""
        lines.append(f"{k:>6} {ids[k]:>7}  {labels[k] if labels[k] != -100 else '-':>7}  {tok.decode([ids[k]])!r}{note}")
    return "\n".join(lines)


@report_user_errors
def main(argv=None):
    from mcvqa.cli import parse_args

    with argument_errors():
        args, _given = parse_args(ShowArguments, argv)
    text = describe(args)
    print(text)
    return text


if __name__ == "__main__":
    main()
