"""A base model's accuracy before any fine-tuning: restricted a/b/c/d scoring of test.csv, zero-shot.

    python tools/zero_shot.py --model_name_or_path /tmp/base --data_dir data/easy_vqa --config bench/learning_lora.yaml
    python tools/zero_shot.py --model_name_or_path Qwen/Qwen2.5-VL-7B-Instruct --data_dir data --answers my_answers.csv

The starting point a fine-tune has to beat. The rows are rendered and scored exactly as train_lora.py and
predict.py would (the same --config and flags: prompt template, pixel budget; `mcvqa.runs.build` with no
weights trained, `mcvqa.scoring.predict_probs`). Prints `zero-shot accuracy: X` when the answers are known
(DATA_DIR/test_answers.csv or --answers), and writes the probabilities with --out.
"""

import sys
import warnings
from dataclasses import dataclass, field, replace
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from mcvqa.args import TRAIN_ARGUMENT_TYPES, TRAINING_DEFAULTS  # noqa: E402
from mcvqa.errors import UserError, report_user_errors  # noqa: E402

# The training flags are read as train_lora.py reads them, and so warned about as it is not (see train_lora.py).
warnings.filterwarnings("ignore", message="`(is_)?gradient_checkpointing", category=FutureWarning)


@dataclass
class ZeroShotArguments:
    answers: str = field(default=None, metadata={
        "help": "id,answer file to score against (default: DATA_DIR/test_answers.csv when it exists)."})
    out: str = field(default=None, metadata={"help": "Also write the probabilities (id,a,b,c,d) here."})
    batch_size: int = field(default=64, metadata={"help": "Rows per forward pass."})


@report_user_errors
def main(argv=None):
    import numpy as np
    import pandas as pd
    import torch

    from mcvqa import LETTERS, metrics
    from mcvqa.cli import parse_args
    from mcvqa.data import load_split
    from mcvqa.io import write_csv
    from mcvqa.modeling import resolve_precision
    from mcvqa.runs import RunRecord, build
    from mcvqa.scoring import predict_probs
    from mcvqa.tta import identity

    model_args, data_args, run_args, training_args, zs, _ = parse_args(
        (*TRAIN_ARGUMENT_TYPES, ZeroShotArguments), argv, defaults=TRAINING_DEFAULTS)
    # No adapter: the base exactly as loaded (full_finetune builds it without LoRA layers).
    record = RunRecord(model=replace(model_args, full_finetune=True), data=data_args, run=run_args,
                       training=training_args.to_dict())
    answers_file = Path(zs.answers) if zs.answers else Path(data_args.data_dir) / "test_answers.csv"
    if zs.answers and not answers_file.is_file():
        raise UserError(f"--answers {answers_file}: file not found")
    test = load_split(data_args.data_dir, "test")
    built = build(record)
    device = torch.device("cuda" if torch.cuda.is_available() and not training_args.use_cpu else "cpu")
    # As predict.py scores: half precision as autocast over the loaded weights.
    autocast = resolve_precision(model_args.precision)[1] if built.precision in ("bf16", "fp16") else None
    probs = predict_probs(built.model.to(device), built.collator, test.to_dict("records"), built.letter_ids,
                          {"identity": identity}, batch_size=zs.batch_size, device=device, dtype=autocast,
                          progress=False)["identity"]
    if zs.out:
        write_csv(zs.out, pd.DataFrame({"id": test["id"], **{k: probs[:, i] for i, k in enumerate(LETTERS)}}))
    if answers_file.is_file():
        truth = pd.read_csv(answers_file, dtype=str, keep_default_na=False).set_index("id")["answer"]
        missing = set(test["id"]) - set(truth.index)
        if missing:
            raise UserError(f"{answers_file}: no answer for {len(missing)} test id(s), e.g. {sorted(missing)[0]!r}")
        pred = metrics.indices_to_letters(np.asarray(probs).argmax(1))
        acc = metrics.prediction_accuracy(truth.loc[test["id"]].str.lower().to_numpy(), pred)
        print(f"zero-shot accuracy: {acc:.3f} ({len(test)} questions, {Path(model_args.model_name_or_path).name})")
        return acc
    return None


if __name__ == "__main__":
    main()
