"""Score test.csv with every trained fold: restricted a/b/c/d probabilities, one forward pass per view.

    python predict.py --tta                                 # every fold under runs/, with test-time augmentation
    python predict.py --output_dir runs/Qwen2.5-VL-7B-Instruct --folds 1 2
    accelerate launch predict.py --tta                      # each GPU scores a shard, rank 0 writes
    python predict.py --merge_and_save merged/ --folds 1    # fold 1's adapter merged into a standalone model

For each fold folder (one with train_config.json) it writes fold{K}/test_probs.csv (id,a,b,c,d; rows sum
to 1). With --tta it also re-scores the fold's out-of-fold rows under the same views (oof_tta.csv) so the
ensemble calibrates what it blends; --keep_views keeps one file per view in fold{K}/views/.
No generate(): the model reads the a/b/c/d logits after the generation prompt (mcvqa.scoring).
"""

import sys
from dataclasses import dataclass, field
from pathlib import Path

from mcvqa.cli import parse_args
from mcvqa.errors import UserError, argument_errors, collect, report_user_errors


@dataclass
class PredictArguments:
    data_dir: str = field(default="data", metadata={"help": "Folder with test.csv (and train.csv for OOF re-scoring)."})
    output_dir: str = field(default="runs", metadata={
        "help": "A run folder (runs/<model>) or a folder of run folders; every fold found in it is scored."})
    folds: list[str] = field(default=None, metadata={"help": "Only these folds (e.g. 1 2 or full)."})
    batch_size: int = field(default=16, metadata={"help": "Rows per forward pass; halves on out-of-memory."})
    tta: bool = field(default=False, metadata={"help": "Test-time augmentation: image scales x cyclic option shifts."})
    tta_scales: str = field(default="0.9,1.0,1.1", metadata={"help": "Pixel-budget scales of the TTA views."})
    tta_shifts: bool = field(default=True, metadata={"help": "The four cyclic shifts of a-d (cancels position bias)."})
    tta_flip: bool = field(default=False, metadata={
        "help": "Add a mirrored view (skipped for questions about text or left/right)."})
    tta_space: str = field(default="prob", metadata={
        "help": "Average views in probability or log-probability space.", "choices": ["prob", "logprob"]})
    keep_views: bool = field(default=False, metadata={"help": "Also write one probabilities file per view."})
    score_oof: bool = field(default=None, metadata={
        "help": "Re-score the fold's validation rows with the same views (default: on with --tta)."})
    precision: str = field(default="auto", metadata={
        "help": "auto, bf16, fp16 or fp32 for scoring.", "choices": ["auto", "bf16", "fp16", "fp32"]})
    merge_and_save: str = field(default=None, metadata={
        "help": "Merge the (single) selected fold's LoRA adapter into its base model and save it here, then exit."})
    progress: bool = field(default=True, metadata={"help": "Show a progress bar."})


def find_folds(output_dir, only=None):
    """Fold folders (with train_config.json and saved weights) under a run folder or a folder of runs."""
    root = Path(output_dir)
    if not root.is_dir():
        raise UserError(f"--output_dir {root}: folder not found; train first: accelerate launch train_lora.py --fold 1")
    found = sorted(p.parent for p in root.glob("**/train_config.json") if "checkpoints" not in p.parts)
    if only:
        wanted = {f if f == "full" or f.startswith("fold") else f"fold{f}" for f in only}
        found = [p for p in found if p.name in wanted]
    if not found:
        what = f" matching --folds {' '.join(only)}" if only else ""
        raise UserError(f"--output_dir {root}: no trained fold{what} (a fold folder holds train_config.json); "
                        "train first: accelerate launch train_lora.py --fold 1")
    missing = [str(p) for p in found if not any(p.glob("*.safetensors"))]
    collect([f"{p}: no weights (adapter_model.safetensors or model.safetensors)" for p in missing])
    return found


def load_fold(fold_dir, precision):
    """Processor and model of a trained fold, set up exactly as in training."""
    import json

    from mcvqa.modeling import check_model_folder, load_model, load_processor

    config = json.loads((fold_dir / "train_config.json").read_text())
    m = config["model"]
    try:
        check_model_folder(m["model_name_or_path"], m["trust_remote_code"])
    except UserError as err:
        raise UserError(f"{fold_dir / 'train_config.json'}: the fold's base model: {err}") from None
    processor = load_processor(m["model_name_or_path"], m["min_pixels"], m["max_pixels"], m["trust_remote_code"])
    is_adapter = (fold_dir / "adapter_config.json").is_file()
    model, _ = load_model(
        m["model_name_or_path"] if is_adapter else str(fold_dir), precision=precision,
        quantization=m["quantization"], attn_implementation=m["attn_implementation"], full_finetune=not is_adapter,
        gradient_checkpointing=False, adapter_path=str(fold_dir) if is_adapter else None,
        trust_remote_code=m["trust_remote_code"])
    return config, processor, model


@report_user_errors
def main(argv=None):
    import numpy as np
    import pandas as pd
    import torch
    from accelerate import PartialState

    from collator import MCVQACollator, option_letter_ids, rope_positions
    from mcvqa import LETTERS
    from mcvqa.data import load_split
    from mcvqa.io import write_csv
    from mcvqa.modeling import resolve_precision
    from mcvqa.prompts import parse_templates
    from mcvqa.scoring import predict_probs
    from mcvqa.tta import average, named_views

    with argument_errors():
        (args, _given) = parse_args((PredictArguments,), argv)
    # ---- Arguments and data: all checked before a model loads or a file is written ------------------
    problems = []
    try:
        scales = tuple(float(s) for s in args.tta_scales.split(","))
        if any(s <= 0 for s in scales):
            raise ValueError
    except ValueError:
        problems.append(f"--tta_scales {args.tta_scales!r}: expected positive numbers such as 0.9,1.0,1.1")
        scales = (1.0,)
    if args.batch_size < 1:
        problems.append(f"--batch_size {args.batch_size}: must be at least 1")
    collect(problems, "invalid arguments:")
    folds = find_folds(args.output_dir, args.folds)
    if args.merge_and_save:
        return merge_and_save(folds, args)
    test_df = load_split(args.data_dir, "test")
    score_oof = args.tta if args.score_oof is None else args.score_oof
    train_df = load_split(args.data_dir, "train") if score_oof else None
    views = named_views(args.tta, scales=scales, shifts=args.tta_shifts, flip=args.tta_flip)
    precision, dtype = resolve_precision(args.precision)
    autocast = dtype if precision in ("bf16", "fp16") else None
    state = PartialState()

    for fold_dir in folds:
        # ---- Model -----------------------------------------------------------------------------------
        config, processor, model = load_fold(fold_dir, args.precision)
        model.to(state.device)
        m, d = config["model"], config["data"]
        collator = MCVQACollator(processor, min_pixels=m["min_pixels"], max_pixels=m["max_pixels"], train=False,
                                 template=d["prompt_template"], max_length=d["max_length"],
                                 blank_images=d.get("blank_images", False),
                                 templates_by_type=parse_templates(d["templates_by_type"]))
        collator.position_fn = rope_positions(model, collator.image_token_id)
        letter_ids = option_letter_ids(processor.tokenizer)
        jobs = [("test", test_df)]
        if score_oof and (fold_dir / "oof.csv").is_file():
            oof_ids = set(pd.read_csv(fold_dir / "oof.csv", dtype=str, keep_default_na=False)["id"])
            jobs.append(("oof", train_df[train_df["id"].isin(oof_ids)]))
        # ---- Score -----------------------------------------------------------------------------------
        for kind, df in jobs:
            rows = df.to_dict("records")
            shard = list(range(state.process_index, len(rows), state.num_processes))
            try:
                per_view = predict_probs(model, collator, [rows[i] for i in shard], letter_ids, views,
                                         batch_size=args.batch_size, device=state.device, dtype=autocast,
                                         progress=args.progress and state.is_main_process,
                                         desc=f"{fold_dir.name} {kind}")
            except torch.cuda.OutOfMemoryError:
                raise UserError(f"{fold_dir}: out of memory even at --batch_size 1: use --precision bf16 (or fp16 "
                                "on a T4), a GPU with more memory, or a fold trained with a smaller --max_pixels") from None
            per_view = gather_shards(per_view, shard, len(rows), state)
            if not state.is_main_process:
                continue
            # ---- Save --------------------------------------------------------------------------------
            def frame(p):
                out = pd.DataFrame({"id": df["id"].to_numpy(), **{l: p[:, i] for i, l in enumerate(LETTERS)}})
                if kind == "oof":
                    out["answer"] = df["answer"].to_numpy()
                    out["pred"] = [LETTERS[i] for i in p.argmax(1)]
                    out["question_type"] = df["question_type"].to_numpy()
                return out

            name = "test_probs" if kind == "test" else "oof_tta"
            if args.keep_views:
                for view_name, p in per_view.items():
                    write_csv(fold_dir / "views" / f"{name}.{view_name}.csv", frame(p))
            probs = average(list(per_view.values()), args.tta_space)
            write_csv(fold_dir / f"{name}.csv", frame(probs))
            if kind == "oof":
                acc = float((probs.argmax(1) == np.array([LETTERS.index(a) for a in df["answer"]])).mean())
                print(f"{fold_dir}: oof accuracy with {len(views)} view(s) {acc:.3f}", flush=True)
        if state.is_main_process:
            print(f"{fold_dir}: wrote test_probs.csv ({len(test_df)} rows, {len(views)} view(s))", flush=True)
        del model
        if torch.cuda.is_available():
            torch.cuda.empty_cache()


def gather_shards(per_view, shard, n, state):
    """Reassemble each rank's rows in the original order (a no-op on one process)."""
    import numpy as np

    if state.num_processes == 1:
        return per_view
    import torch.distributed as dist

    parts = [None] * state.num_processes
    dist.all_gather_object(parts, (shard, per_view))
    out = {name: np.zeros((n, 4)) for name in per_view}
    for idx, views in parts:
        for name, p in views.items():
            out[name][idx] = p
    return out


def merge_and_save(folds, args):
    """Merge a fold's LoRA adapter into the base weights; save a folder any Qwen-VL loader reads."""
    if len(folds) != 1:
        raise UserError(f"--merge_and_save needs exactly one fold; pass --folds (found {len(folds)})")
    fold_dir = folds[0]
    out = Path(args.merge_and_save)
    if out.exists() and any(out.iterdir()):
        raise UserError(f"--merge_and_save {out}: folder exists and is not empty")
    config, processor, model = load_fold(fold_dir, "fp32" if args.precision == "auto" else args.precision)
    if config["model"]["quantization"] != "none":
        raise UserError(f"{fold_dir}: trained on a quantised base; merging needs the unquantised weights "
                        "(re-train without --quantization, or serve base + adapter)")
    if hasattr(model, "merge_and_unload"):
        model = model.merge_and_unload()
    import json
    import shutil

    tmp = out.with_name(out.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)  # leftovers of an interrupted merge
    model.save_pretrained(tmp, safe_serialization=True)
    # The processor: the base model's own tokenizer/processor files (processor.save_pretrained fails for the
    # images-only processor built without torchvision), with the fold's pixel budget written into them.
    base = config["model"]["model_name_or_path"]
    patterns = ["tokenizer*", "vocab.json", "merges.txt", "special_tokens_map.json", "added_tokens.json",
                "chat_template.json", "chat_template.jinja", "preprocessor_config.json", "processor_config.json",
                "video_preprocessor_config.json"]
    if Path(base).is_dir():
        base_dir = Path(base)
    else:
        from huggingface_hub import snapshot_download

        base_dir = Path(snapshot_download(base, allow_patterns=patterns))
    for pattern in patterns:
        for f in base_dir.glob(pattern):
            if f.is_file() and not (tmp / f.name).exists():
                shutil.copyfile(f, tmp / f.name)
    prep_path = tmp / "preprocessor_config.json"
    if prep_path.is_file():
        prep = json.loads(prep_path.read_text(encoding="utf-8"))
        lo, hi = int(config["model"]["min_pixels"]), int(config["model"]["max_pixels"])
        prep["size"] = {**(prep.get("size") or {}), "shortest_edge": lo, "longest_edge": hi}
        prep.update({k: v for k, v in (("min_pixels", lo), ("max_pixels", hi)) if k in prep})
        prep_path.write_text(json.dumps(prep, indent=2), encoding="utf-8")
    if out.exists():
        out.rmdir()  # empty: checked above
    tmp.replace(out)
    print(f"merged {fold_dir} into {out}", file=sys.stderr)
    return out


if __name__ == "__main__":
    main()
