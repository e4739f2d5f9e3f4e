"""Score test.csv with every trained fold: restricted a/b/c/d probabilities, one forward pass per view.

    python predict.py --tta                                 # every fold under runs/, with test-time augmentation
    python predict.py --output_dir runs/Qwen2.5-VL-7B-Instruct --folds 1 2
    accelerate launch predict.py --tta                      # each GPU scores a shard, rank 0 writes
    python predict.py --merge_and_save merged/ --folds 1    # fold 1's adapter merged into a standalone model

For each fold folder (fold<K> or full with train_config.json, at any depth under --output_dir: mcvqa.runs)
it writes fold{K}/test_probs.csv (id,a,b,c,d; rows sum to 1). With --tta it also re-scores the fold's
out-of-fold rows under the same views (oof_tta.csv) so the ensemble calibrates what it blends;
--keep_views keeps one file per view in fold{K}/views/. Each file's provenance (the weights and data file
it came from) goes into fold{K}/artefacts.json, which ensemble.py checks. The console goes into
OUTPUT_DIR/predict.log (one file for every fold scored; mcvqa.logfile).
No generate(): the model reads the a/b/c/d logits after the generation prompt (mcvqa.scoring).
"""

import os
import sys
from dataclasses import dataclass, field
from pathlib import Path

from mcvqa.args import device_map_field, max_memory_field
from mcvqa.cli import parse_args
from mcvqa.errors import UserError, argument_errors, collect, report_user_errors
from mcvqa.logfile import captured, keep


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
    share_prefix: bool = field(default=True, metadata={
        "help": "Score the option orders of one image scale together over their shared prefix (system turn, image, "
                "question) with the KV cache: exact, ~3x fewer tokens under --tta; false: one full pass per view."})
    keep_views: bool = field(default=False, metadata={"help": "Also write one probabilities file per view."})
    score_oof: bool = field(default=None, metadata={
        "help": "Re-score the fold's validation rows with the same views (default: on with --tta)."})
    precision: str = field(default="auto", metadata={
        "help": "auto, bf16, fp16 or fp32 for scoring.", "choices": ["auto", "bf16", "fp16", "fp32"]})
    liger: str = field(default="auto", metadata={
        "help": "Liger-Kernel's fused kernels for scoring: auto (on with liger-kernel installed, CUDA, an unquantised "
                "base), true or false.", "choices": ["auto", "true", "false"]})
    compile_layers: bool = field(default=False, metadata={
        "help": "Regional torch.compile of each decoder layer for scoring (CUDA; every image scale and batch width "
                "compiles once, so it pays off on large test sets)."})
    device_map: str = device_map_field()
    max_memory: str = max_memory_field()
    merge_and_save: str = field(default=None, metadata={
        "help": "Merge the (single) selected fold's LoRA adapter into its base model and save it here, then exit."})
    progress: bool = field(default=True, metadata={"help": "Show a progress bar."})


def find_folds(output_dir, only=None):
    """Fold folders under a run folder or a folder of runs (mcvqa.runs.find_folds), each with a usable record."""
    from mcvqa.runs import find_folds as find

    root = Path(output_dir)
    if not root.is_dir():
        raise UserError(f"--output_dir {root}: folder not found; train first: accelerate launch train_lora.py --fold 1")
    found = find(root, only)
    if not found:
        what = f" matching --folds {' '.join(only)}" if only else ""
        raise UserError(f"--output_dir {root}: no trained fold{what} (a fold folder is fold<K> or full and holds "
                        "train_config.json); train first: accelerate launch train_lora.py --fold 1")
    return found


def load_fold(fold_dir, precision, liger="auto", compile_layers=False, device_map=None, max_memory=None):
    """(run record, processor, model, collator) of a trained fold, set up exactly as in training."""
    from mcvqa.runs import RunRecord, build, check_weights

    record = RunRecord.load(fold_dir)
    check_weights(fold_dir, record)
    built = build(record, fold_dir, precision=precision, liger=liger, compile_layers=compile_layers,
                  device_map=device_map, max_memory=max_memory)
    return record, built


@report_user_errors
@captured("predict.py")  # the console into OUTPUT_DIR/predict.log (mcvqa.logfile)
def main(argv=None):
    import pandas as pd
    import torch
    from accelerate import PartialState

    from mcvqa import LETTERS
    from mcvqa.data import load_split
    from mcvqa.metrics import accuracy, indices_to_letters, letters_to_indices
    from mcvqa.modeling import placement_summary, resolve_precision
    from mcvqa.scoring import predict_probs
    from mcvqa.tta import average, named_views

    with argument_errors():
        (args, _given) = parse_args((PredictArguments,), argv)
    # ---- Arguments and data: all checked before a model loads or a file is written ------------------
    problems = []
    try:
        scales = tuple(float(s) for s in args.tta_scales.split(","))
        if any(not 0 < s < 100 for s in scales):
            raise ValueError
    except ValueError:
        problems.append(f"--tta_scales {args.tta_scales!r}: expected positive numbers such as 0.9,1.0,1.1")
        scales = (1.0,)
    if args.batch_size < 1:
        problems.append(f"--batch_size {args.batch_size}: must be at least 1")
    from mcvqa.modeling import placement_problems

    problems += placement_problems(args.device_map, args.max_memory, int(os.environ.get("WORLD_SIZE", "1")))
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
    data_files = {"test": Path(args.data_dir) / "test.csv", "oof": Path(args.data_dir) / "train.csv"}

    for fold_dir in folds:
        # ---- Model -----------------------------------------------------------------------------------
        record, built = load_fold(fold_dir, args.precision, args.liger, args.compile_layers, args.device_map,
                                  args.max_memory)
        if args.device_map:
            # Placed layer by layer over the devices: the batches go where the embeddings are, accelerate's hooks
            # carry the activations on from device to device.
            model, device = built.model, built.model.get_input_embeddings().weight.device
            print(f"{fold_dir}: placed {placement_summary(model)}", file=sys.stderr, flush=True)
        else:
            model, device = built.model.to(state.device), state.device
        jobs = [("test", test_df)]
        oof_ids = held_out_ids(fold_dir, record, args.data_dir) if score_oof else None
        if oof_ids is not None:
            jobs.append(("oof", train_df[train_df["id"].isin(oof_ids)]))
        # ---- Score -----------------------------------------------------------------------------------
        for kind, df in jobs:
            rows = df.to_dict("records")
            shard = list(range(state.process_index, len(rows), state.num_processes))
            try:
                per_view = predict_probs(model, built.collator, [rows[i] for i in shard], built.letter_ids, views,
                                         batch_size=args.batch_size, device=device, dtype=autocast,
                                         progress=args.progress and state.is_main_process,
                                         desc=f"{fold_dir.name} {kind}", share_prefix=args.share_prefix)
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
                    out["pred"] = indices_to_letters(p.argmax(1))
                    out["question_type"] = df["question_type"].to_numpy()
                return out

            name = "test_probs" if kind == "test" else "oof_tta"
            written = []
            if args.keep_views:
                for view_name, p in per_view.items():
                    written.append((f"views/{name}.{view_name}.csv", frame(p), [view_name]))
            probs = average(list(per_view.values()), args.tta_space)
            written.append((f"{name}.csv", frame(probs), list(views)))
            keep(Path(args.output_dir) / "predict.log")  # at the first file written: a refusal writes no log
            for rel, table, view_names in written:
                save_artefact(fold_dir, rel, table, data_files[kind], view_names, record.weights)
            if kind == "oof":
                acc = accuracy(probs, letters_to_indices(df["answer"]))
                print(f"{fold_dir}: oof accuracy with {len(views)} view(s) {acc:.3f}", flush=True)
        if state.is_main_process:
            print(f"{fold_dir}: wrote test_probs.csv ({len(test_df)} rows, {len(views)} view(s))", flush=True)
        del model, built
        if torch.cuda.is_available():
            torch.cuda.empty_cache()


def held_out_ids(fold_dir, record, data_dir):
    """The ids of a fold's held-out rows: from its oof.csv (checked to be this model's, on this train.csv), or,
    when training stopped before writing it, from the run's folds.csv the fold was trained with; None for `full`."""
    import pandas as pd

    from mcvqa.runs import check_artefact, file_fingerprint, fold_number

    if (fold_dir / "oof.csv").is_file():
        check_artefact(fold_dir, "oof.csv", data_dir, record)
        return set(pd.read_csv(fold_dir / "oof.csv", dtype=str, keep_default_na=False)["id"])
    k, folds_csv = fold_number(fold_dir), fold_dir.parent / "folds.csv"
    if k is None or k < 1 or not folds_csv.is_file():
        return None
    if record.data_files.get("folds.csv") != file_fingerprint(folds_csv):
        raise UserError(f"{folds_csv}: not the split {fold_dir} was trained with (changed since); cannot tell its "
                        "held-out rows: retrain the fold")
    folds = pd.read_csv(folds_csv, dtype=str, keep_default_na=False)
    return set(folds.loc[folds["fold"] == str(k), "id"])


def save_artefact(fold_dir, name, table, data_file, views, weights):
    """Write one probabilities file and its provenance entry; a full or read-only disk is one clear line."""
    from mcvqa.io import write_csv
    from mcvqa.runs import record_artefact

    try:
        write_csv(fold_dir / name, table)
        record_artefact(fold_dir, name, data_file=data_file, views=views, weights=weights)
    except OSError as err:
        raise UserError(f"{fold_dir / name}: cannot write ({err.strerror or err}); the previous file, if any, is "
                        "unchanged: free space or make the folder writable, then run predict.py again") from None


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
    record, built = load_fold(fold_dir, "fp32" if args.precision == "auto" else args.precision, liger="false")
    model = built.model
    if record.model.quantization != "none":
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
    base = record.model.model_name_or_path
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
        lo, hi = int(record.model.min_pixels), int(record.model.max_pixels)
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
