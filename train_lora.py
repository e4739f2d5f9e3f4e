"""Fine-tune a Qwen-VL model on one fold of a multiple-choice VQA data folder (LoRA, QLoRA or full).

    accelerate launch train_lora.py --fold 1
    accelerate launch --config_file accelerate_configs/dual_t4.yaml train_lora.py --fold 1 \
        --model_name_or_path Qwen/Qwen2.5-VL-3B-Instruct --quantization 4bit
    python train_lora.py --config configs/cpu_tiny.yaml --fold 1          # CPU smoke run on the tiny model
    python train_lora.py --fold -1                                        # all rows, no out-of-fold file

Writes OUTPUT_DIR/fold{K}/ (OUTPUT_DIR defaults to runs/<model short name>; the layout is mcvqa.runs'):
the adapter (peft format) or full model, train_config.json (the run record, with the weights' fingerprint),
metrics.json, oof.csv (id,a,b,c,d,answer,pred,question_type for the fold's rows), artefacts.json (what
oof.csv was made from), trainer_state.json, train.log (the console, timestamped: mcvqa.logfile) and
checkpoints/. Folds count from 1 and are assigned once, in OUTPUT_DIR/folds.csv. Every transformers
TrainingArguments flag passes through (--learning_rate, ...).
"""

import dataclasses
import json
import os
import sys
import time
import warnings
from pathlib import Path

import transformers

from mcvqa.args import parse_train_args
from mcvqa.errors import UserError, argument_errors, collect, report_user_errors
from mcvqa.logfile import captured, keep
from mcvqa.modeling import short_name
from mcvqa.prompts import parse_templates, template_problem

# --gradient_checkpointing stays this tool's flag; transformers 5 warns that it is an alias on every run.
warnings.filterwarnings("ignore", message="`(is_)?gradient_checkpointing", category=FutureWarning)


def check_args(model_args, data_args, run_args, args, given=()):
    """Every argument problem at once, before anything is loaded or written."""
    import importlib.util

    import torch

    problems = []
    # `accelerate launch` with an FSDP config says so through the environment, before any process group exists.
    fsdp = os.environ.get("ACCELERATE_USE_FSDP", "false").lower() in ("1", "true")
    if data_args.n_folds < 2:
        problems.append(f"--n_folds {data_args.n_folds}: needs at least 2")
    elif data_args.fold not in (-1,) and not 1 <= data_args.fold <= data_args.n_folds:
        problems.append(f"--fold {data_args.fold} is out of range: folds count from 1 to {data_args.n_folds}, "
                        "or -1 for all rows")
    if data_args.prompt_template is not None:
        problems.append(template_problem(data_args.prompt_template))
    try:
        parse_templates(data_args.templates_by_type)
    except UserError as err:
        problems.append(str(err))
    for name, value in (("max_train_samples", data_args.max_train_samples),
                        ("max_eval_samples", data_args.max_eval_samples)):
        if value is not None and value < 1:
            problems.append(f"--{name} {value}: must be at least 1 (or left out for all rows)")
    if not 0 <= args.seed < 2 ** 32:
        problems.append(f"--seed {args.seed}: must be between 0 and 2**32 - 1")
    if run_args.time_budget_minutes is not None and not run_args.time_budget_minutes > 0:
        problems.append(f"--time_budget_minutes {run_args.time_budget_minutes}: must be positive")
    ignored = sorted(k for k in given if k in ("lora_r", "lora_alpha", "lora_dropout", "lora_vision"))
    if model_args.full_finetune and ignored:
        # A LoRA preset reused for a full fine-tune is legitimate; say what does not apply rather than refuse.
        print(f"note: --full_finetune trains every weight: {', '.join('--' + k for k in ignored)} do not apply",
              file=sys.stderr)
    if model_args.lora_r <= 0 and not model_args.full_finetune:
        problems.append(f"--lora_r {model_args.lora_r}: must be positive")
    if run_args.ema_decay is not None:
        if not 0.0 < run_args.ema_decay < 1.0:
            problems.append(f"--ema_decay {run_args.ema_decay}: must be between 0 and 1, e.g. 0.999")
        if data_args.fold != -1 and args.load_best_model_at_end:
            problems.append("--ema_decay saves the averaged weights, not the best checkpoint: add "
                            "--load_best_model_at_end false (or drop --ema_decay)")
    from mcvqa.second_round import argument_problems

    problems += argument_problems(data_args, run_args, args)
    if model_args.min_pixels > model_args.max_pixels:
        problems.append(f"--min_pixels {model_args.min_pixels} is above --max_pixels {model_args.max_pixels}")
    if model_args.quantization != "none":
        if not torch.cuda.is_available():
            problems.append(f"--quantization {model_args.quantization} needs a CUDA GPU; use --quantization none on CPU")
        elif importlib.util.find_spec("bitsandbytes") is None:
            problems.append(f"--quantization {model_args.quantization} needs bitsandbytes: pip install bitsandbytes")
        if model_args.full_finetune:
            problems.append("--full_finetune cannot train quantised weights: drop --quantization")
        if fsdp:
            problems.append(f"--quantization {model_args.quantization} does not run under FSDP (this accelerate "
                            "config): for QLoRA on several GPUs use DDP (accelerate_configs/dual_t4.yaml or "
                            "multi_gpu_bf16.yaml)")
    if fsdp and not torch.cuda.is_available():
        problems.append("FSDP (this accelerate config) needs CUDA GPUs: without them accelerate starts independent "
                        "single-process runs that overwrite each other; use accelerate_configs/cpu.yaml")
    if model_args.precision in ("bf16", "fp16") and not torch.cuda.is_available():
        problems.append(f"--precision {model_args.precision} needs a CUDA GPU; use auto or fp32 on CPU")
    from mcvqa.modeling import placement_problems

    problems += placement_problems(model_args.device_map, model_args.max_memory,
                                   int(os.environ.get("WORLD_SIZE", "1")), training=True)
    collect([p for p in problems if p], "invalid arguments:")


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
        elif not 1 <= factors[name] <= 1000:
            problems.append(f"--oversample {item!r}: the factor must be at least 1 (and at most 1000)")
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


def fsdp_version(model):
    """2 or 1 when FSDP holds `model`'s parameters as shards (FSDP2: DTensors; FSDP1: wrapper modules), else 0."""
    from torch.distributed.fsdp import FSDPModule, FullyShardedDataParallel

    modules = list(model.modules())
    return 2 if any(isinstance(m, FSDPModule) for m in modules) else \
        1 if any(isinstance(m, FullyShardedDataParallel) for m in modules) else 0


def load_full_checkpoint(model, checkpoint):
    """Put a full fine-tune checkpoint's weights into `model`: before the Trainer resumes from it, or the best
    one after training. A checkpoint that does not match leaves the model untouched.

    The Trainer's own reload matches almost no key of a full Qwen-VL checkpoint (saved under the hub's
    names) and would silently resume from the base weights; from_pretrained does the key renaming.
    Under FSDP each rank holds only shards, which a plain load_state_dict cannot copy into: rank 0 reads
    the checkpoint (one copy in CPU memory, not one per rank) and torch's distributed state-dict API
    broadcasts it into every rank's shards.
    """
    import torch.distributed as dist
    from transformers import AutoModelForImageTextToText

    fsdp = fsdp_version(model)
    sharded = fsdp > 0
    state, problem = {}, None
    if not sharded or dist.get_rank() == 0:
        try:
            state = AutoModelForImageTextToText.from_pretrained(checkpoint, dtype="auto",
                                                                use_safetensors=True).state_dict()
            # FSDP1's state_dict() is a collective (rank 0 alone would hang in it); its load below checks the
            # names itself. FSDP2's is local and keeps the model's own names.
            expected = set(state) if fsdp == 1 else set(model.state_dict(keep_vars=True))
            missing, unexpected = sorted(expected - set(state)), sorted(set(state) - expected)
            if missing or unexpected:
                problem = f"checkpoint {checkpoint} does not match the model: missing {missing[:3]}, unexpected {unexpected[:3]}"
        except Exception as err:  # every rank must hear of it, or the others wait in the broadcast forever
            problem = f"checkpoint {checkpoint} cannot be read: {type(err).__name__}: {err}"
    if sharded:
        box = [problem]
        dist.broadcast_object_list(box, src=0)
        problem = box[0]
    if problem:
        raise RuntimeError(problem)
    if sharded:
        from torch.distributed.checkpoint.state_dict import StateDictOptions, set_model_state_dict

        set_model_state_dict(model, state, options=StateDictOptions(full_state_dict=True, broadcast_from_rank0=True))
    else:
        model.load_state_dict(state)
    import logging

    logging.getLogger("transformers.trainer").addFilter(_trainer_key_report)


def _trainer_key_report(record):
    """Drop the Trainer's "missing/unexpected keys" report of its own reload of a full checkpoint: it lists every
    key (hub names against the model's) and changes nothing, the weights being already in (load_full_checkpoint)."""
    return not record.getMessage().startswith(("There were missing keys in the checkpoint model loaded",
                                               "There were unexpected keys in the checkpoint model loaded"))


@report_user_errors
@captured("train_lora.py")  # the console into fold{K}/train.log (mcvqa.logfile)
def main(argv=None):
    import pandas as pd
    from accelerate import PartialState
    from transformers import EarlyStoppingCallback

    from mcvqa import LETTERS
    from mcvqa.data import assign_folds, load_split, to_dataset
    from mcvqa.averaging import weight_average
    from mcvqa.io import write_csv, write_json
    from mcvqa.metrics import indices_to_letters, letters_to_indices, metrics_from_logits, softmax
    from mcvqa.runs import (RunRecord, build, file_fingerprint, fold_name, record_artefact, weights_fingerprint,
                            writing)
    from mcvqa.trainer import CheckpointRecord, FoldProgress, MCVQATrainer, TimeBudget, make_compute_metrics

    started = time.time()
    # ---- Arguments -------------------------------------------------------------------------------
    with argument_errors():
        model_args, data_args, run_args, args, given = parse_train_args(argv)
    if data_args.full_train:
        data_args.fold = -1
    check_args(model_args, data_args, run_args, args, given)
    output_root = Path(args.output_dir if "output_dir" in given else Path("runs") / short_name(model_args.model_name_or_path))
    fold_dir = output_root / fold_name(data_args.fold)
    check_writable(output_root)
    if fold_dir.exists() and not fold_dir.is_dir():
        raise UserError(f"{fold_dir} is a file, not a fold folder: move it away or choose another --output_dir")

    # ---- Data ------------------------------------------------------------------------------------
    from mcvqa.modeling import check_model_folder

    check_model_folder(model_args.model_name_or_path, model_args.trust_remote_code)
    train_df = load_split(data_args.data_dir, "train")
    try:  # predict.py's check of test.csv, now rather than after hours of training
        load_split(data_args.data_dir, "test")
    except UserError as err:
        if int(os.environ.get("RANK", "0")) == 0:
            first, *rest = str(err).splitlines()
            print("\n".join([f"warning: {first.rstrip(':')} (predict.py will refuse test.csv until this is fixed; "
                             "training continues)", *(f"  {line.strip()}" for line in rest)]),
                  file=sys.stderr, flush=True)
    factors = None
    if data_args.oversample:
        if data_args.oversample_by not in train_df.columns:
            columns = ", ".join(c for c in train_df.columns if c not in ("image", "question", *LETTERS))
            raise UserError(f"--oversample_by {data_args.oversample_by!r}: no such column in "
                            f"{Path(data_args.data_dir) / 'train.csv'} (columns: {columns})")
        factors = oversample_factors(data_args.oversample, train_df[data_args.oversample_by], data_args.oversample_by)
    record = RunRecord(model_args, data_args, run_args, training=args.to_dict(), fold_dir=str(fold_dir))
    checkpoints = fold_dir / "checkpoints"
    from mcvqa import second_round

    second = second_round.prepare(data_args, train_df, output_root, record)
    resume_from = resume_checkpoint(checkpoints, record) if run_args.resume else None
    state = PartialState()
    with state.main_process_first():
        folds = assign_folds(train_df, data_args.n_folds, args.seed, output_root)
    is_val = (folds == data_args.fold).to_numpy()
    fit_df, val_df = train_df[~is_val], train_df[is_val]
    if fit_df.empty or (data_args.fold != -1 and val_df.empty):
        empty = "training" if fit_df.empty else "validation"
        raise UserError(f"{output_root / 'folds.csv'}: fold {data_args.fold} leaves the {empty} set empty "
                        f"(folds.csv edited?); delete folds.csv and folds.json to split again")
    if data_args.max_train_samples:
        fit_df = fit_df.sample(n=min(len(fit_df), data_args.max_train_samples), random_state=args.seed)
    # Only the training rows: validation (and so oof.csv) stays over train.csv's rows of the fold.
    fit_df = second.training_rows(fit_df)
    if factors:
        fit_df = oversample(fit_df, factors, args.seed, data_args.oversample_by)
    eval_df = val_df
    if data_args.max_eval_samples and len(val_df) > data_args.max_eval_samples:
        eval_df = val_df.sample(n=data_args.max_eval_samples, random_state=args.seed)

    # Input accepted: train.log opens here, with the lines held since the start (a refusal writes no log).
    keep(fold_dir / "train.log", resumed=run_args.resume)

    # ---- Model -----------------------------------------------------------------------------------
    # Seeded before the model is built: LoRA's initial weights come from the global RNG.
    transformers.set_seed(args.seed)
    built = build(record, train=True, gradient_checkpointing=args.gradient_checkpointing,
                  device_index=state.local_process_index)
    model, precision = built.model, built.precision
    if model_args.device_map:
        from mcvqa.modeling import placement_summary

        print(f"--device_map {model_args.device_map}: placed {placement_summary(model)}", file=sys.stderr, flush=True)
    built.train_collator.prepare(fit_df.to_dict("records"))
    built.collator.prepare(val_df.to_dict("records"))

    # ---- Trainer ---------------------------------------------------------------------------------
    reload_best = args.load_best_model_at_end and data_args.fold != -1
    args = configure_training_args(args, fold_dir, precision, has_eval=data_args.fold != -1,
                                   full_finetune=model_args.full_finetune, given=given,
                                   run_name=run_name(model_args.model_name_or_path, fold_dir.name, argv),
                                   device_map=model_args.device_map)
    record.training, record.precision = args.to_dict(), precision
    record.liger_applied = bool(getattr(model, "mcvqa_liger", False))
    callbacks = [FoldProgress(), CheckpointRecord(record)]
    budget = TimeBudget(run_args.time_budget_minutes) if run_args.time_budget_minutes else None
    if budget:
        callbacks.append(budget)
    average = weight_average(run_args)
    if average is not None:
        callbacks.append(average)
    if data_args.fold != -1 and run_args.early_stopping_patience > 0 and args.eval_strategy != "no":
        callbacks.append(EarlyStoppingCallback(early_stopping_patience=run_args.early_stopping_patience))
    trainer = MCVQATrainer(
        model=model, args=args, data_collator=built.train_collator, eval_collator=built.collator,
        train_dataset=to_dataset(fit_df), eval_dataset=to_dataset(eval_df) if data_args.fold != -1 else None,
        compute_metrics=make_compute_metrics(eval_df["question_type"].tolist()), letter_ids=built.letter_ids,
        restricted_loss=data_args.restricted_loss, callbacks=callbacks,
        time_budget=budget,
        distill=(data_args.distill_alpha, data_args.distill_temperature) if second.distill else None,
    )

    # ---- Train -----------------------------------------------------------------------------------
    if resume_from and model_args.full_finetune:
        load_full_checkpoint(trainer.model, resume_from)
    # The Trainer's own best-checkpoint reload (LoRA) waits until the last weights are saved (below).
    trainer_reload, trainer._load_best_model = trainer._load_best_model, lambda: None
    train_result = trainer.train(resume_from_checkpoint=resume_from)
    planned = trainer.state.max_steps
    if budget and budget.fraction >= 1 and trainer.state.global_step < planned and trainer.is_world_process_zero():
        # A run cut short by the clock learns less than its config promises: say so where its result is read.
        print(f"note: --time_budget_minutes {run_args.time_budget_minutes:g} stopped training at step "
              f"{trainer.state.global_step} of {planned} (a slower or busier machine trains less)", flush=True)

    # ---- Save ------------------------------------------------------------------------------------
    # The trained weights and the run record naming them come first; whatever can still fail (the best
    # checkpoint's reload, OOF scoring, the report) comes after, so a failure there never loses the training.
    train_csv = Path(data_args.data_dir) / "train.csv"

    def save_weights():
        trainer.save_model(str(fold_dir))
        if trainer.is_world_process_zero():
            record.weights = weights_fingerprint(fold_dir)
            record.data_files = {"train.csv": file_fingerprint(train_csv),
                                 "folds.csv": file_fingerprint(output_root / "folds.csv")}
            with writing(fold_dir / "train_config.json", "free space and train the fold again (--resume continues "
                                                         "from its last checkpoint)"):
                record.save(fold_dir)

    def failed(step, saved, finish=None):
        oof = " --score_oof" if data_args.fold != -1 else ""
        finish = finish or (f"python predict.py --output_dir {output_root} --folds {fold_dir.name.replace('fold', '')}"
                            f"{oof} scores the test set{' and the held-out rows' if oof else ''} with them")
        return RuntimeError(f"{step} failed (the error above); {saved} saved in {fold_dir} with its run record, "
                            f"so the training is not lost: {finish}")

    save_weights()
    best, step = trainer.state.best_model_checkpoint, trainer.state.global_step
    # A best checkpoint of the last step holds the weights just saved.
    if reload_best and best and Path(best).is_dir() and Path(best).name != f"checkpoint-{step}":
        try:
            if model_args.full_finetune:
                # Same renaming problem as on resume: the Trainer cannot reload a full Qwen-VL checkpoint itself.
                load_full_checkpoint(trainer.model, best)
            else:
                trainer_reload()
        except Exception as err:
            raise failed(f"reloading the best checkpoint {best}", f"the last weights (step {step}) are") from err
        save_weights()
        if trainer.is_world_process_zero():
            print(f"loaded the best checkpoint {best}", file=sys.stderr)
    metrics = dict(train_result.metrics)
    # The Trainer's samples/s counts the planned epochs; a time budget or early stop ends sooner.
    metrics["samples_seen"] = (trainer.state.global_step * args.per_device_train_batch_size
                               * args.gradient_accumulation_steps * args.world_size)
    metrics["samples_per_s"] = metrics["samples_seen"] / max(metrics.get("train_runtime", 0.0), 1e-9)
    oof = None
    if data_args.fold != -1:
        try:
            pred = trainer.predict(to_dataset(val_df))
        except Exception as err:
            raise failed("scoring the out-of-fold rows", "the trained weights are") from err
        probs = softmax(pred.predictions)
        scores = metrics_from_logits(pred.predictions, letters_to_indices(val_df["answer"]),
                                     val_df["question_type"].tolist())
        metrics.update({f"oof_{k}": v for k, v in scores.items()})
        oof = pd.DataFrame({"id": val_df["id"].to_numpy(), **{l: probs[:, i] for i, l in enumerate(LETTERS)},
                            "answer": val_df["answer"].to_numpy(), "pred": indices_to_letters(probs.argmax(1)),
                            "question_type": val_df["question_type"].to_numpy()})
    if trainer.is_world_process_zero():
        minutes = (time.time() - started) / 60
        metrics.update(minutes=minutes, precision=precision, n_train=len(fit_df), n_val=len(val_df))
        folds_flag = fold_dir.name.replace("fold", "")
        with writing(fold_dir, "the trained weights are saved there; free space, then python predict.py "
                               f"--output_dir {output_root} --folds {folds_flag} --score_oof scores them"):
            trainer.state.save_to_json(str(fold_dir / "trainer_state.json"))
            write_json(fold_dir / "metrics.json", metrics)
            if oof is not None:
                write_csv(fold_dir / "oof.csv", oof)
                record_artefact(fold_dir, "oof.csv", data_file=train_csv, views=["identity"],
                                weights=record.weights)
        summary = f"{fold_dir.name.replace('fold', 'fold ')} | {minutes:.0f}m"
        if oof is not None:
            summary = (f"fold {data_args.fold} | acc {metrics['oof_accuracy']:.3f} | "
                       f"logloss {metrics['oof_log_loss']:.3f} | {minutes:.0f}m")
        if run_args.report:
            from mcvqa.report import write_fold_report

            try:
                print(f"report: {write_fold_report(fold_dir)}")
            except UserError:
                raise
            except Exception as err:
                raise failed("writing the report", "the weights, metrics.json and any oof.csv are",
                             "python -c \"from mcvqa.report import write_fold_report as w; "
                             f"w('{fold_dir}')\" writes it again") from err
        print(summary, flush=True)
    return metrics


def resume_checkpoint(checkpoints, record):
    """The checkpoint --resume continues: the newest one whose files all load, written with the same settings."""
    from mcvqa.runs import check_resumable
    from mcvqa.trainer import last_complete_checkpoint

    skipped = []
    found = last_complete_checkpoint(checkpoints, skipped)
    for line in skipped:
        print(f"--resume: skipped {line}", file=sys.stderr)
    if found is None:
        print(f"--resume: no complete checkpoint in {checkpoints}; starting from the beginning", file=sys.stderr)
        return None
    check_resumable(found, record)
    step = json.loads((Path(found) / "trainer_state.json").read_text(encoding="utf-8")).get("global_step")
    print(f"--resume: continuing from {found} (step {step})", file=sys.stderr)
    return found


def run_name(model_name_or_path, fold_name, argv=None):
    """`<model>-<fold>[-<preset>]`: what TensorBoard and other loggers show for this run."""
    argv = list(sys.argv[1:] if argv is None else argv)
    preset = next((Path(a.split("=", 1)[1] if "=" in a else argv[i + 1]).stem for i, a in enumerate(argv)
                   if a.startswith("--config") and ("=" in a or i + 1 < len(argv))), None)
    return "-".join(x for x in (short_name(model_name_or_path), fold_name, preset) if x)


def configure_training_args(args, fold_dir, precision, has_eval, run_name, full_finetune=False, given=(),
                            device_map=None):
    """Point the Trainer at the fold folder and apply the resolved precision and evaluation plan.

    `given`: the flag names the user set (command line or --config); an explicit --report_to is kept as given.
    `device_map`: the model is spread over the GPUs (--device_map), which the Trainer then leaves where they are.
    """
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
    if ("report_to" not in given and args.report_to in (None, [], ["none"], "none")
            and importlib.util.find_spec("tensorboard") is not None):
        updates["report_to"] = ["tensorboard"]
    if args.use_cpu or not torch.cuda.is_available():
        updates["dataloader_pin_memory"] = False
    args = dataclasses.replace(args, **updates)
    if args.n_gpu > 1 and device_map:
        args._n_gpu = 1  # the GPUs hold one model between them, not one replica each
    elif args.n_gpu > 1:
        # One process that sees several GPUs makes the Trainer wrap the model in nn.DataParallel, whose
        # replicas break Qwen-VL (StopIteration on visual.dtype). Data parallel goes through accelerate.
        print(f"{args.n_gpu} GPUs visible to one process: training on one. For data parallel use "
              "accelerate launch --config_file accelerate_configs/dual_t4.yaml train_lora.py ...", file=sys.stderr)
        args._n_gpu = 1
    return args


if __name__ == "__main__":
    main()
