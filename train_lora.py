"""Fine-tune a Qwen-VL model on one fold of a multiple-choice VQA data folder (LoRA, QLoRA or full).

    accelerate launch train_lora.py --fold 1
    accelerate launch --config_file accelerate_configs/dual_t4.yaml train_lora.py --fold 1 \
        --model_name_or_path Qwen/Qwen2.5-VL-3B-Instruct --quantization 4bit
    python train_lora.py --config configs/cpu_tiny.yaml --fold 1          # CPU smoke run on the tiny model
    python train_lora.py --fold -1                                        # all rows, no out-of-fold file

Writes OUTPUT_DIR/fold{K}/ (OUTPUT_DIR defaults to runs/<model short name>): the adapter (peft format)
or full model, train_config.json, metrics.json, oof.csv (id,a,b,c,d,answer,pred for the fold's rows),
trainer_state.json and checkpoints/. Folds count from 1 and are assigned once, in OUTPUT_DIR/folds.csv.
Every transformers TrainingArguments flag passes through (--learning_rate, --num_train_epochs, ...).
"""

import dataclasses
import os
import sys
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import transformers
from transformers import TrainingArguments

from mcvqa.cli import parse_args
from mcvqa.modeling import short_name
from mcvqa.prompts import parse_templates
from mcvqa.errors import UserError, argument_errors, collect, report_user_errors

# --gradient_checkpointing stays this tool's flag; transformers 5 warns that it is an alias on every run.
warnings.filterwarnings("ignore", message="`(is_)?gradient_checkpointing", category=FutureWarning)


@dataclass
class ModelArguments:
    model_name_or_path: str = field(default="Qwen/Qwen2.5-VL-7B-Instruct",
                                    metadata={"help": "Hub id or local folder of a Qwen2/2.5/3-VL model."})
    quantization: str = field(default="none", metadata={
        "help": "4bit (QLoRA, nf4 + double quantisation), 8bit or none. Needs CUDA and bitsandbytes.",
        "choices": ["4bit", "8bit", "none"]})
    precision: str = field(default="auto", metadata={
        "help": "auto: bf16 where the GPU has it, fp16 autocast with fp32 trainable weights otherwise (T4), "
                "fp32 on CPU.", "choices": ["auto", "bf16", "fp16", "fp32"]})
    attn_implementation: str = field(default="auto", metadata={
        "help": "auto (flash_attention_2 when installed and supported, else sdpa), sdpa, eager, flash_attention_2."})
    full_finetune: bool = field(default=False, metadata={"help": "Train all weights instead of LoRA."})
    lora_r: int = field(default=16, metadata={"help": "LoRA rank."})
    lora_alpha: int = field(default=32, metadata={"help": "LoRA scaling alpha."})
    lora_dropout: float = field(default=0.05, metadata={"help": "LoRA dropout."})
    lora_vision: bool = field(default=False, metadata={"help": "Also put LoRA on the vision tower's linear layers."})
    min_pixels: int = field(default=112 * 112, metadata={"help": "Images smaller than this are upscaled."})
    max_pixels: int = field(default=448 * 448, metadata={
        "help": "Pixel budget per image (the main memory knob); the same in training and prediction."})
    trust_remote_code: bool = field(default=False, metadata={"help": "Allow code from the model folder to run."})


@dataclass
class DataArguments:
    data_dir: str = field(default="data", metadata={"help": "Folder with train.csv, test.csv, sample_submission.csv."})
    fold: int = field(default=1, metadata={"help": "Validation fold, counted from 1; -1 trains on all rows."})
    full_train: bool = field(default=False, metadata={"help": "Same as --fold -1."})
    n_folds: int = field(default=5, metadata={"help": "Number of folds (assigned once, stored in folds.csv)."})
    max_length: int = field(default=2048, metadata={"help": "Longest sequence; longer rows are refused, never cut."})
    shuffle_choices: bool = field(default=False, metadata={
        "help": "Augmentation: show the options in a random order each time (the answer follows)."})
    supervise_eos: bool = field(default=False, metadata={"help": "Also supervise <|im_end|> after the letter."})
    restricted_loss: bool = field(default=False, metadata={
        "help": "Cross-entropy over the four option letters only, instead of the whole vocabulary."})
    prompt_template: str = field(default=None, metadata={
        "help": "User-turn format with {question}, {options}, {instruction}; default: question, options, instruction."})
    templates_by_type: str = field(default=None, metadata={
        "help": "JSON or YAML mapping question_type -> template (overrides --prompt_template for that type)."})
    early_stopping_patience: int = field(default=3, metadata={"help": "Evaluations without improvement before stopping; 0 = off."})
    resume: bool = field(default=False, metadata={"help": "Continue from the fold's last complete checkpoint."})
    report: bool = field(default=False, metadata={"help": "Write PNG plots and report.md for the fold."})
    max_train_samples: int = field(default=None, metadata={"help": "Use only this many training rows (quick runs)."})
    max_eval_samples: int = field(default=None, metadata={"help": "Evaluate during training on at most this many rows."})
    time_budget_minutes: float = field(default=None, metadata={
        "help": "Stop training after this many minutes (then evaluate and save as usual): fits Kaggle's limits."})
    ema_decay: float = field(default=None, metadata={
        "help": "Keep an exponential moving average of the trainable weights (e.g. 0.999) and save and score it "
                "instead of the last weights; replaces best-checkpoint reloading (--load_best_model_at_end false)."})
    oversample: str = field(default=None, metadata={
        "help": "Repeat the training rows of some question types, e.g. 'colour=3,shape=3' (the type column, "
                "or the type inferred from the question): rare, hard types get more steps; validation is unchanged."})
    oversample_by: str = field(default="question_type", metadata={
        "help": "The train.csv column whose values --oversample names, e.g. a finer group column than the type."})
    blank_images: bool = field(default=False, metadata={
        "help": "Ablation: replace every image by a grey one, to measure what the text alone allows."})


# Defaults for this task; a YAML --config or the command line overrides each of them.
TRAINING_DEFAULTS = dict(
    output_dir=None, learning_rate=1e-4, num_train_epochs=3, per_device_train_batch_size=8,
    per_device_eval_batch_size=16, gradient_accumulation_steps=1, lr_scheduler_type="cosine", warmup_steps=0.03,
    weight_decay=0.0, label_smoothing_factor=0.1, logging_steps=10, eval_strategy="epoch", save_strategy="epoch",
    save_total_limit=2, load_best_model_at_end=True, metric_for_best_model="accuracy", greater_is_better=True,
    remove_unused_columns=False, gradient_checkpointing=True,
    gradient_checkpointing_kwargs={"use_reentrant": False}, ddp_find_unused_parameters=False, seed=42,
    report_to="none", disable_tqdm=False,
)


def check_args(model_args, data_args, args):
    """Every argument problem at once, before anything is loaded or written."""
    import importlib.util

    import torch

    problems = []
    if data_args.n_folds < 2:
        problems.append(f"--n_folds {data_args.n_folds}: needs at least 2")
    elif data_args.fold not in (-1,) and not 1 <= data_args.fold <= data_args.n_folds:
        problems.append(f"--fold {data_args.fold} is out of range: folds count from 1 to {data_args.n_folds}, "
                        "or -1 for all rows")
    if model_args.lora_r <= 0 and not model_args.full_finetune:
        problems.append(f"--lora_r {model_args.lora_r}: must be positive")
    if data_args.ema_decay is not None:
        if not 0.0 < data_args.ema_decay < 1.0:
            problems.append(f"--ema_decay {data_args.ema_decay}: must be between 0 and 1, e.g. 0.999")
        if data_args.fold != -1 and args.load_best_model_at_end:
            problems.append("--ema_decay saves the averaged weights, not the best checkpoint: add "
                            "--load_best_model_at_end false (or drop --ema_decay)")
    if model_args.min_pixels > model_args.max_pixels:
        problems.append(f"--min_pixels {model_args.min_pixels} is above --max_pixels {model_args.max_pixels}")
    if model_args.quantization != "none":
        if not torch.cuda.is_available():
            problems.append(f"--quantization {model_args.quantization} needs a CUDA GPU; use --quantization none on CPU")
        elif importlib.util.find_spec("bitsandbytes") is None:
            problems.append(f"--quantization {model_args.quantization} needs bitsandbytes: pip install bitsandbytes")
        if model_args.full_finetune:
            problems.append("--full_finetune cannot train quantised weights: drop --quantization")
    if model_args.precision in ("bf16", "fp16") and not torch.cuda.is_available():
        problems.append(f"--precision {model_args.precision} needs a CUDA GPU; use auto or fp32 on CPU")
    collect(problems, "invalid arguments:")


def oversample_factors(spec, values, column="question_type"):
    """`--oversample 'colour=3,shape=1.5'` -> {value: factor}, checked against the training rows' `column`."""
    factors, problems = {}, []
    known = sorted(set(map(str, values)))
    for item in [x.strip() for x in spec.split(",") if x.strip()]:
        name, _, value = (x.strip() for x in item.partition("="))
        try:
            factors[name] = float(value)
        except ValueError:
            problems.append(f"--oversample {item!r}: expected type=factor, e.g. colour=3")
            continue
        if name not in known:
            what = "question type" if column == "question_type" else f"{column!r} value"
            problems.append(f"--oversample: no {what} {name!r} in the training rows (values: {', '.join(known)})")
        elif factors[name] < 1:
            problems.append(f"--oversample {item!r}: the factor must be at least 1")
    collect(problems, "invalid arguments:")
    return factors


def oversample(df, factors, seed, column="question_type"):
    """Rows of each named `column` value repeated `factor` times (a fraction adds a random share), shuffled."""
    import pandas as pd

    parts = [df]
    for name, factor in factors.items():
        rows = df[df[column] == name]
        whole, rest = int(factor) - 1, factor - int(factor)
        parts += [rows] * whole + [rows.sample(frac=rest, random_state=seed)] * (rest > 0)
    return pd.concat(parts).sample(frac=1.0, random_state=seed)


def check_writable(output_root):
    """Refuse an output folder that cannot be created or written, before anything is written."""
    parent = Path(output_root).absolute()
    while not parent.exists():
        parent = parent.parent
    if not parent.is_dir():
        raise UserError(f"--output_dir {output_root}: cannot create it, {parent} is a file")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise UserError(f"--output_dir {output_root}: {parent} is not writable (choose another --output_dir)")


def load_full_checkpoint(model, checkpoint):
    """Put a full fine-tune checkpoint's weights into `model` before the Trainer resumes from it.

    The Trainer's own reload matches almost no key of a full Qwen-VL checkpoint (saved under the hub's
    names) and would silently resume from the base weights; from_pretrained does the key renaming.
    """
    from transformers import AutoModelForImageTextToText

    state = AutoModelForImageTextToText.from_pretrained(checkpoint, dtype="auto", use_safetensors=True).state_dict()
    missing, unexpected = model.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise RuntimeError(f"checkpoint {checkpoint} does not match the model: {missing[:3]} {unexpected[:3]}")


@report_user_errors
def main(argv=None):
    import numpy as np
    import pandas as pd
    from accelerate import PartialState
    from transformers import EarlyStoppingCallback

    from collator import MCVQACollator, option_letter_ids, rope_positions
    from mcvqa import LETTERS
    from mcvqa.data import assign_folds, load_split, to_dataset
    from mcvqa.io import write_csv, write_json
    from mcvqa.modeling import check_model_folder, load_model, load_processor
    from mcvqa.scoring import metrics_from_logits, softmax
    from mcvqa.trainer import (FoldProgress, MCVQATrainer, TimeBudget, WeightEMA, last_complete_checkpoint,
                               make_compute_metrics)

    started = time.time()
    # ---- Arguments -------------------------------------------------------------------------------
    with argument_errors():
        model_args, data_args, args, given = parse_args(
            (ModelArguments, DataArguments, TrainingArguments), argv, defaults=TRAINING_DEFAULTS)
    if data_args.full_train:
        data_args.fold = -1
    check_args(model_args, data_args, args)
    output_root = Path(args.output_dir if "output_dir" in given else Path("runs") / short_name(model_args.model_name_or_path))
    fold_name = "full" if data_args.fold == -1 else f"fold{data_args.fold}"
    fold_dir = output_root / fold_name
    check_writable(output_root)
    templates = parse_templates(data_args.templates_by_type)

    # ---- Data ------------------------------------------------------------------------------------
    check_model_folder(model_args.model_name_or_path, model_args.trust_remote_code)
    train_df = load_split(data_args.data_dir, "train")
    factors = None
    if data_args.oversample:
        if data_args.oversample_by not in train_df.columns:
            columns = ", ".join(c for c in train_df.columns if c not in ("image", "question", *LETTERS))
            raise UserError(f"--oversample_by {data_args.oversample_by!r}: no such column in "
                            f"{Path(data_args.data_dir) / 'train.csv'} (columns: {columns})")
        factors = oversample_factors(data_args.oversample, train_df[data_args.oversample_by], data_args.oversample_by)
    state = PartialState()
    with state.main_process_first():
        folds = assign_folds(train_df, data_args.n_folds, args.seed, output_root)
    is_val = (folds == data_args.fold).to_numpy()
    fit_df, val_df = train_df[~is_val], train_df[is_val]
    if data_args.max_train_samples:
        fit_df = fit_df.sample(n=min(len(fit_df), data_args.max_train_samples), random_state=args.seed)
    if factors:
        fit_df = oversample(fit_df, factors, args.seed, data_args.oversample_by)
    eval_df = val_df
    if data_args.max_eval_samples and len(val_df) > data_args.max_eval_samples:
        eval_df = val_df.sample(n=data_args.max_eval_samples, random_state=args.seed)

    # ---- Model -----------------------------------------------------------------------------------
    # Seeded before the model is built: LoRA's initial weights come from the global RNG.
    transformers.set_seed(args.seed)
    processor = load_processor(model_args.model_name_or_path, model_args.min_pixels, model_args.max_pixels,
                               model_args.trust_remote_code)
    model, precision = load_model(
        model_args.model_name_or_path, precision=model_args.precision, quantization=model_args.quantization,
        attn_implementation=model_args.attn_implementation, full_finetune=model_args.full_finetune,
        lora_r=model_args.lora_r, lora_alpha=model_args.lora_alpha, lora_dropout=model_args.lora_dropout,
        lora_vision=model_args.lora_vision, gradient_checkpointing=args.gradient_checkpointing,
        trust_remote_code=model_args.trust_remote_code, device_index=state.local_process_index)
    letter_ids = option_letter_ids(processor.tokenizer)
    collator_kwargs = dict(min_pixels=model_args.min_pixels, max_pixels=model_args.max_pixels,
                           supervise_eos=data_args.supervise_eos, template=data_args.prompt_template,
                           templates_by_type=templates, max_length=data_args.max_length, seed=args.seed,
                           blank_images=data_args.blank_images)
    train_collator = MCVQACollator(processor, shuffle_choices=data_args.shuffle_choices, **collator_kwargs)
    eval_collator = MCVQACollator(processor, **collator_kwargs)
    eval_collator.images = train_collator.images  # one image cache for both
    train_collator.position_fn = eval_collator.position_fn = rope_positions(model, train_collator.image_token_id)
    train_collator.prepare(fit_df.to_dict("records"))
    eval_collator.prepare(val_df.to_dict("records"))

    # ---- Trainer ---------------------------------------------------------------------------------
    reload_best = args.load_best_model_at_end and data_args.fold != -1
    args = configure_training_args(args, fold_dir, precision, has_eval=data_args.fold != -1,
                                   full_finetune=model_args.full_finetune,
                                   run_name=run_name(model_args.model_name_or_path, fold_name, argv))
    callbacks = [FoldProgress()]
    budget = TimeBudget(data_args.time_budget_minutes) if data_args.time_budget_minutes else None
    if budget:
        callbacks.append(budget)
    if data_args.ema_decay is not None:
        callbacks.append(WeightEMA(data_args.ema_decay))
    if data_args.fold != -1 and data_args.early_stopping_patience > 0 and args.eval_strategy != "no":
        callbacks.append(EarlyStoppingCallback(early_stopping_patience=data_args.early_stopping_patience))
    trainer = MCVQATrainer(
        model=model, args=args, data_collator=train_collator, eval_collator=eval_collator,
        train_dataset=to_dataset(fit_df), eval_dataset=to_dataset(eval_df) if data_args.fold != -1 else None,
        compute_metrics=make_compute_metrics(eval_df["question_type"].tolist()), letter_ids=letter_ids,
        restricted_loss=data_args.restricted_loss, callbacks=callbacks, time_budget=budget,
    )

    # ---- Train -----------------------------------------------------------------------------------
    resume_from = last_complete_checkpoint(args.output_dir) if data_args.resume else None
    if data_args.resume and resume_from is None and state.is_main_process:
        print(f"--resume: no complete checkpoint in {args.output_dir}; starting from the beginning", file=sys.stderr)
    if resume_from and model_args.full_finetune:
        load_full_checkpoint(trainer.model, resume_from)
    train_result = trainer.train(resume_from_checkpoint=resume_from)
    best = trainer.state.best_model_checkpoint
    if model_args.full_finetune and reload_best and best and Path(best).is_dir():
        # Same renaming problem as on resume: the Trainer cannot reload a full Qwen-VL checkpoint itself.
        load_full_checkpoint(trainer.model, best)
        print(f"loaded the best checkpoint {best}", file=sys.stderr)

    # ---- Save ------------------------------------------------------------------------------------
    trainer.save_model(str(fold_dir))
    metrics = dict(train_result.metrics)
    # The Trainer's samples/s counts the planned epochs; a time budget or early stop ends sooner.
    metrics["samples_seen"] = (trainer.state.global_step * args.per_device_train_batch_size
                               * args.gradient_accumulation_steps * args.world_size)
    metrics["samples_per_s"] = metrics["samples_seen"] / max(metrics.get("train_runtime", 0.0), 1e-9)
    oof = None
    if data_args.fold != -1:
        pred = trainer.predict(to_dataset(val_df))
        probs = softmax(pred.predictions)
        labels = np.array([LETTERS.index(a) for a in val_df["answer"]])
        scores = metrics_from_logits(pred.predictions, labels, val_df["question_type"].tolist())
        metrics.update({f"oof_{k}": v for k, v in scores.items()})
        oof = pd.DataFrame({"id": val_df["id"].to_numpy(), **{l: probs[:, i] for i, l in enumerate(LETTERS)},
                            "answer": val_df["answer"].to_numpy(),
                            "pred": [LETTERS[i] for i in probs.argmax(1)],
                            "question_type": val_df["question_type"].to_numpy()})
    if trainer.is_world_process_zero():
        minutes = (time.time() - started) / 60
        metrics.update(minutes=minutes, precision=precision, n_train=len(fit_df), n_val=len(val_df))
        write_json(fold_dir / "train_config.json", {
            "model": dataclasses.asdict(model_args), "data": dataclasses.asdict(data_args),
            "training": args.to_dict(), "fold_dir": str(fold_dir)})
        trainer.state.save_to_json(str(fold_dir / "trainer_state.json"))
        write_json(fold_dir / "metrics.json", metrics)
        summary = f"{fold_name.replace('fold', 'fold ')} | {minutes:.0f}m"
        if oof is not None:
            write_csv(fold_dir / "oof.csv", oof)
            summary = (f"fold {data_args.fold} | acc {metrics['oof_accuracy']:.3f} | "
                       f"logloss {metrics['oof_log_loss']:.3f} | {minutes:.0f}m")
        if data_args.report:
            from mcvqa.report import write_fold_report

            print(f"report: {write_fold_report(fold_dir)}")
        print(summary, flush=True)
    return metrics


def run_name(model_name_or_path, fold_name, argv=None):
    """`<model>-<fold>[-<preset>]`: what TensorBoard and other loggers show for this run."""
    argv = list(sys.argv[1:] if argv is None else argv)
    preset = next((Path(a.split("=", 1)[1] if "=" in a else argv[i + 1]).stem for i, a in enumerate(argv)
                   if a.startswith("--config") and ("=" in a or i + 1 < len(argv))), None)
    return "-".join(x for x in (short_name(model_name_or_path), fold_name, preset) if x)


def configure_training_args(args, fold_dir, precision, has_eval, run_name, full_finetune=False):
    """Point the Trainer at the fold folder and apply the resolved precision and evaluation plan."""
    import importlib.util

    import torch

    # The resolved precision wins over an accelerate config's mixed_precision (e.g. fp16 on the T4 config).
    os.environ["ACCELERATE_MIXED_PRECISION"] = {"bf16": "bf16", "fp16": "fp16"}.get(precision, "no")
    updates = dict(output_dir=str(fold_dir / "checkpoints"), bf16=precision == "bf16", fp16=precision == "fp16",
                   run_name=args.run_name or run_name)
    if not has_eval:
        updates.update(eval_strategy="no", load_best_model_at_end=False)
    elif full_finetune and args.load_best_model_at_end:
        # The Trainer reloads a full Qwen-VL checkpoint without its key renaming (weights silently kept
        # as they are); main() reloads the best one through load_full_checkpoint instead.
        updates.update(load_best_model_at_end=False, save_strategy=args.eval_strategy)
    if args.report_to in (None, [], ["none"], "none") and importlib.util.find_spec("tensorboard") is not None:
        updates["report_to"] = ["tensorboard"]
    if args.use_cpu or not torch.cuda.is_available():
        updates["dataloader_pin_memory"] = False
    args = dataclasses.replace(args, **updates)
    if args.n_gpu > 1:
        # One process that sees several GPUs makes the Trainer wrap the model in nn.DataParallel, whose
        # replicas break Qwen-VL (StopIteration on visual.dtype). Data parallel goes through accelerate.
        print(f"{args.n_gpu} GPUs visible to one process: training on one. For data parallel use "
              "accelerate launch --config_file accelerate_configs/dual_t4.yaml train_lora.py ...", file=sys.stderr)
        args._n_gpu = 1
    return args


if __name__ == "__main__":
    main()
