"""The definition of a run folder: what a fold folder is called and holds, how folds are found, which
out-of-fold file a consumer reads, the typed run record (train_config.json), and the provenance of every
artefact a later step consumes.

    OUTPUT_DIR/                 a run folder (one model); may sit at any depth under a folder of runs
      folds.csv, folds.json     the folds, assigned once
      fold{K}/ or full/         a fold folder: train_config.json (the run record) + weights, and
        oof.csv                 written by train_lora.py
        test_probs.csv          written by predict.py
        oof_tta.csv             written by predict.py --tta / --score_oof
        views/                  written by predict.py --keep_views
        artefacts.json          provenance: for each file above, the weights and data it came from
        checkpoints/            the Trainer's; each checkpoint-N/ also holds run_record.json

Provenance: each artefact's entry in artefacts.json names the fingerprint of the fold's weights (the one
the run record holds), of the data file it scored (train.csv or test.csv) and of the artefact itself.
`check_artefact` refuses (UserError, exit 2) an artefact whose entry no longer matches: the fold was
retrained, the data file changed, or the file was replaced; the message names the command that
refreshes it.
"""

import contextlib
import dataclasses
import errno
import hashlib
import json
import os
import re
import shutil
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from mcvqa.args import DataArguments, ModelArguments, RunArguments
from mcvqa.errors import UserError
from mcvqa.io import write_json

SCHEMA_VERSION = 2
RECORD = "train_config.json"
ARTEFACTS = "artefacts.json"
CHECKPOINT_RECORD = "run_record.json"
CHECKPOINTS = "checkpoints"
FOLD_RE = re.compile(r"^(?:fold(\d+)|full)$")
# The ensemble calibrates on the OOF rows scored the way the test rows were (predict.py's views) when
# predict.py re-scored them, else on train_lora.py's own OOF file.
OOF_FILES = ("oof_tta.csv", "oof.csv")
# Files larger than this are fingerprinted from samples (size, head, tail, 32 spread blocks), not read whole:
# a 15 GB full fine-tune would take a minute to hash, and retraining changes every block anyway.
FULL_HASH_LIMIT = 256 * 2 ** 20
_BLOCK = 2 ** 20


# ---------------------------------------------------------------------------------------------------------------
# Names and discovery
# ---------------------------------------------------------------------------------------------------------------


def fold_name(fold):
    """`fold{K}` for a validation fold K (from 1), `full` for the all-rows run (-1)."""
    return "full" if int(fold) == -1 else f"fold{int(fold)}"


def fold_number(fold_dir):
    """K for fold{K}, -1 for full, None for a folder that is not a fold folder's name."""
    m = FOLD_RE.match(Path(fold_dir).name)
    return None if m is None else (int(m.group(1)) if m.group(1) else -1)


def is_fold_dir(path):
    path = Path(path)
    return fold_number(path) is not None and (path / RECORD).is_file()


def find_folds(root, only=None):
    """Every fold folder under `root` (a fold, a run folder or a folder of runs, at any depth), sorted.

    A fold folder is named fold{K} or full and holds train_config.json. Only the Trainer's own
    checkpoint folders inside a fold are not searched; a parent folder may have any name.
    `only`: fold names or numbers to keep (e.g. ["1", "full"]).
    """
    root = Path(root)
    found = []
    if is_fold_dir(root):
        found = [root]
    else:
        for here, dirs, _ in os.walk(root):
            here = Path(here)
            if is_fold_dir(here):
                found.append(here)
                dirs[:] = []
            else:
                dirs.sort()
    if only:
        wanted = {str(f) if str(f) == "full" or str(f).startswith("fold") else f"fold{f}" for f in only}
        found = [p for p in found if p.name in wanted]
    return sorted(found, key=lambda p: (str(p.parent), fold_sort_key(p)))


def fold_sort_key(fold_dir):
    k = fold_number(fold_dir)
    return (1, 0) if k == -1 else (0, k if k is not None else 0)


def oof_file(fold_dir):
    """The out-of-fold file a consumer (ensemble, report) reads: oof_tta.csv when present, else oof.csv."""
    return next((Path(fold_dir) / n for n in OOF_FILES if (Path(fold_dir) / n).is_file()), None)


# ---------------------------------------------------------------------------------------------------------------
# The run record
# ---------------------------------------------------------------------------------------------------------------


def _from_dict(cls, values):
    names = {f.name for f in dataclasses.fields(cls)}
    return cls(**{k: v for k, v in (values or {}).items() if k in names})


@dataclass
class RunRecord:
    """What a fold was trained with and what it produced; saved as fold{K}/train_config.json."""

    model: ModelArguments
    data: DataArguments
    run: RunArguments
    training: dict = field(default_factory=dict)  # TrainingArguments.to_dict()
    fold_dir: str = ""
    weights: str = None  # fingerprint of the saved weights (`weights_fingerprint`)
    data_files: dict = field(default_factory=dict)  # name -> fingerprint of the data files it was trained on
    precision: str = None  # the resolved precision (auto -> bf16/fp16/fp32)
    liger_applied: bool = None  # whether Liger's kernels ran (--liger auto resolves per machine)
    # --pseudo_labels: {file, fingerprint, test.csv, min_prob, soft, rows_in_file, rows_added, letters}
    pseudo_labels: dict = None
    # --teacher_probs: {file, fingerprint, checked, files, rows_covered, rows_without_teacher}
    teacher: dict = None
    schema_version: int = SCHEMA_VERSION

    @property
    def seed(self):
        return int(self.training.get("seed", 42))

    def to_dict(self):
        return {"schema_version": self.schema_version, "model": dataclasses.asdict(self.model),
                "data": dataclasses.asdict(self.data), "run": dataclasses.asdict(self.run),
                "training": self.training, "fold_dir": self.fold_dir, "weights": self.weights,
                "data_files": self.data_files, "precision": self.precision,
                "liger_applied": self.liger_applied, "pseudo_labels": self.pseudo_labels, "teacher": self.teacher}

    def save(self, fold_dir):
        return write_json(Path(fold_dir) / RECORD, self.to_dict())

    @classmethod
    def from_dict(cls, d):
        # Version 1 (no schema_version) kept run control (resume, report, ema_decay, ...) under "data": each key
        # goes to the dataclass that owns it now.
        flat = {**(d.get("data") or {}), **(d.get("run") or {})}
        return cls(model=_from_dict(ModelArguments, d.get("model")), data=_from_dict(DataArguments, flat),
                   run=_from_dict(RunArguments, flat), training=dict(d.get("training") or {}),
                   fold_dir=d.get("fold_dir", ""), weights=d.get("weights"), data_files=d.get("data_files") or {},
                   precision=d.get("precision"), liger_applied=d.get("liger_applied"),
                   pseudo_labels=d.get("pseudo_labels"), teacher=d.get("teacher"),
                   schema_version=int(d.get("schema_version", 1)))

    @classmethod
    def load(cls, fold_dir):
        path = Path(fold_dir) / RECORD
        d = _read_json(path, "retrain the fold (train_lora.py --fold K) or restore the file")
        if not isinstance(d, dict) or not isinstance(d.get("model"), dict) or "model_name_or_path" not in d["model"]:
            raise UserError(f"{path}: not a run record (no model section); retrain the fold or restore the file")
        if int(d.get("schema_version", 1)) > SCHEMA_VERSION:
            raise UserError(f"{path}: written by a newer mcvqa (record version {d['schema_version']}); update mcvqa")
        return cls.from_dict(d)


def _read_json(path, fix):
    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise UserError(f"{path}: file not found; {fix}") from None
    except (OSError, UnicodeDecodeError, ValueError) as err:
        first = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise UserError(f"{path}: unreadable or truncated ({first}); {fix}") from None


# Settings that change what a resumed run would learn: a checkpoint written with other values is not resumed.
# Run control (time budget, logging, evaluation batch, reporting) may change between sessions.
RESUME_TRAINING_KEYS = ("learning_rate", "lr_scheduler_type", "warmup_steps", "warmup_ratio", "weight_decay",
                        "label_smoothing_factor", "per_device_train_batch_size", "gradient_accumulation_steps",
                        "num_train_epochs", "max_steps", "seed", "optim", "adam_beta1", "adam_beta2", "adam_epsilon",
                        "max_grad_norm")
RESUME_FREE = {"model": {"liger", "attn_implementation", "trust_remote_code", "device_map", "max_memory"},
               "data": {"max_eval_samples"}}


def resume_settings(record):
    """The settings two runs must share for one to resume the other's checkpoint: {name: value}."""
    out = {}
    for part in ("model", "data"):
        for k, v in dataclasses.asdict(getattr(record, part)).items():
            if k not in RESUME_FREE.get(part, ()):
                out[k] = v
    out["blank_images"] = record.run.blank_images
    out["ema_decay"] = record.run.ema_decay
    out["swa_start"] = record.run.swa_start
    # The files' contents, not only their names: a changed pseudo-label or teacher file is another run.
    for key in ("pseudo_labels", "teacher"):
        if getattr(record, key):
            out[f"{key}_fingerprint"] = getattr(record, key).get("fingerprint")
    for k in RESUME_TRAINING_KEYS:
        if k in record.training:
            out[k] = record.training[k]
    return out


def check_resumable(checkpoint, record):
    """Refuse to resume a checkpoint that a run with other settings wrote (UserError naming the differences)."""
    path = Path(checkpoint) / CHECKPOINT_RECORD
    fix = "train without --resume (or with the settings it was written with)"
    if not path.is_file():
        raise UserError(f"--resume: {checkpoint} has no {CHECKPOINT_RECORD} (written by an older mcvqa or another "
                        f"tool), so its settings cannot be checked; {fix}")
    saved = RunRecord.from_dict(_read_json(path, fix))
    before, now = resume_settings(saved), resume_settings(record)
    diffs = [f"{k} {before.get(k)!r} there, {now.get(k)!r} now" for k in sorted(set(before) | set(now))
             if _norm(before.get(k)) != _norm(now.get(k))]
    if diffs:
        shown = "; ".join(diffs[:4]) + (f"; and {len(diffs) - 4} more" if len(diffs) > 4 else "")
        raise UserError(f"--resume: {checkpoint} was written by a run with other settings ({shown}); {fix}")


def _norm(v):
    return json.loads(json.dumps(v, default=str))


# ---------------------------------------------------------------------------------------------------------------
# Fingerprints and provenance
# ---------------------------------------------------------------------------------------------------------------


def file_fingerprint(path):
    """sha256 of a file's bytes; for files over FULL_HASH_LIMIT, of its size and sampled blocks."""
    path = Path(path)
    size = path.stat().st_size
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        if size <= FULL_HASH_LIMIT:
            for block in iter(lambda: fh.read(_BLOCK), b""):
                h.update(block)
            return "sha256:" + h.hexdigest()
        h.update(str(size).encode())
        for i in range(34):
            fh.seek(min(size - _BLOCK, i * (size - _BLOCK) // 33))
            h.update(fh.read(_BLOCK))
    return "sampled-sha256:" + h.hexdigest()


def weight_files(fold_dir):
    return sorted(p for p in Path(fold_dir).glob("*.safetensors") if p.is_file())


def weights_fingerprint(fold_dir):
    """One fingerprint over a fold folder's saved weights (adapter or full model, every shard)."""
    files = weight_files(fold_dir)
    if not files:
        return None
    h = hashlib.sha256()
    for p in files:
        h.update(f"{p.name}={file_fingerprint(p)};".encode())
    return "weights:" + h.hexdigest()[:32]


def safetensors_problem(path):
    """Why a .safetensors file cannot be loaded whole (unreadable, truncated, bad header), or None."""
    path = Path(path)
    try:
        size = path.stat().st_size
        with open(path, "rb") as fh:
            head = fh.read(8)
            if len(head) < 8:
                return "empty or truncated"
            n = int.from_bytes(head, "little")
            if n <= 0 or 8 + n > size:
                return "truncated (header runs past the end of the file)"
            header = json.loads(fh.read(n))
    except OSError as err:
        return f"unreadable ({err.strerror or err})"
    except ValueError:
        return "damaged header"
    ends = [t["data_offsets"][1] for k, t in header.items() if k != "__metadata__" and isinstance(t, dict)
            and "data_offsets" in t]
    if 8 + n + max(ends, default=0) > size:
        return f"truncated ({size} bytes, {8 + n + max(ends)} expected)"
    return None


def check_weights(fold_dir, record):
    """Refuse a fold whose weights are missing, damaged or not the ones its run record names."""
    fold_dir = Path(fold_dir)
    files = weight_files(fold_dir)
    if not files:
        raise UserError(f"{fold_dir}: no weights (adapter_model.safetensors or model.safetensors); "
                        "retrain the fold (train_lora.py --fold K)")
    for p in files:
        problem = safetensors_problem(p)
        if problem:
            raise UserError(f"{p}: {problem}; retrain the fold or restore the file")
    if record.weights and weights_fingerprint(fold_dir) != record.weights:
        raise UserError(f"{fold_dir}: the weights are not the ones {RECORD} records (replaced or copied over "
                        "from another run); retrain the fold or restore its folder whole")


# How a full or read-only disk shows: OSError from Python's own writes, "(os error N)" in safetensors' message,
# and for torch.save a zip-writer failure that names no cause (observed: "unexpected pos 61504 vs 61392").
_WRITE_ERRNOS = {errno.ENOSPC: "no space left on the disk", errno.EDQUOT: "disk quota exceeded",
                 errno.EROFS: "read-only file system", errno.EACCES: "permission denied",
                 errno.EPERM: "permission denied"}
_TORCH_WRITER = ("inline_container.cc", "PytorchStreamWriter", "file write failed")


def write_failure(err):
    """Why a write failed, when the cause is the disk (full, over quota, read-only, not permitted), else None."""
    if isinstance(err, OSError) and err.errno in _WRITE_ERRNOS:
        return _WRITE_ERRNOS[err.errno]
    text = str(err)
    for code, why in _WRITE_ERRNOS.items():
        if f"(os error {code})" in text:
            return why
    if isinstance(err, RuntimeError) and any(s in text for s in _TORCH_WRITER):
        return "the write was cut short, as on a full disk"
    return None


@contextlib.contextmanager
def writing(path, fix):
    """Turn a disk problem while writing `path` (write_failure) into one UserError naming it, with the free
    space left and `fix`; any other error passes through."""
    try:
        yield
    except Exception as err:
        why = write_failure(err)
        if why is None:
            raise
        where = Path(path).absolute()
        while not where.exists() and where != where.parent:
            where = where.parent
        try:
            free = f" ({shutil.disk_usage(where).free / 2 ** 20:.0f} MB free on its disk)"
        except OSError:
            free = ""
        raise UserError(f"{path}: cannot write: {why}{free}; {fix}") from None


def refresh_command(fold_dir, name):
    """The command that rewrites artefact `name` of a fold folder."""
    run, fold = Path(fold_dir).parent, Path(fold_dir).name
    if name == "oof.csv":
        return f"accelerate launch train_lora.py --output_dir {run} --fold {-1 if fold == 'full' else fold[4:]} ..."
    k = fold.replace("fold", "")
    flags = {"oof_tta.csv": " --score_oof"}.get(name, "")
    return f"python predict.py --output_dir {run} --folds {k}{flags} [--tta, as you blend it]"


def record_artefact(fold_dir, name, data_file=None, views=None, weights=None):
    """Note in fold_dir/artefacts.json what `name` (a path relative to the fold folder) was made from."""
    fold_dir = Path(fold_dir)
    path = fold_dir / ARTEFACTS
    entries = {}
    if path.is_file():
        try:
            entries = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            entries = {}  # a damaged record is rebuilt: every artefact it named will be refused as unrecorded
    entries[name] = {
        "sha256": file_fingerprint(fold_dir / name),
        "weights": weights or RunRecord.load(fold_dir).weights,
        "data_file": Path(data_file).name if data_file else None,
        "data": file_fingerprint(data_file) if data_file else None,
        "views": list(views) if views is not None else None,
        "written": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "by": Path(sys.argv[0]).name if sys.argv and sys.argv[0] else None,
    }
    write_json(path, entries)
    return entries[name]


def artefact_entry(fold_dir, name):
    path = Path(fold_dir) / ARTEFACTS
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text(encoding="utf-8")).get(name)
    except (OSError, ValueError, AttributeError):
        return None


def check_artefact(fold_dir, name, data_dir=None, record=None):
    """The provenance entry of fold_dir/name if the file is what it says and still matches the fold's weights
    and (given `data_dir`) the data folder; otherwise a UserError naming the file and the refreshing command."""
    fold_dir = Path(fold_dir)
    target = fold_dir / name
    fix = f"refresh it: {refresh_command(fold_dir, name)}"
    entry = artefact_entry(fold_dir, name)
    if entry is None:
        raise UserError(f"{target}: no provenance record in {fold_dir / ARTEFACTS} (written by an older mcvqa or "
                        f"copied in by hand), so it cannot be checked against the fold's weights; {fix}")
    if not target.is_file():
        raise UserError(f"{target}: missing; {fix}")
    record = record or RunRecord.load(fold_dir)
    if entry.get("weights") != record.weights:
        raise UserError(f"{target}: stale, made from other weights than the fold's model (the fold was retrained "
                        f"after it was written); {fix}")
    if entry.get("sha256") != file_fingerprint(target):
        if target.stat().st_size == 0:
            raise UserError(f"{target}: empty (0 bytes: cut short by a full disk or an interrupted copy); {fix}")
        raise UserError(f"{target}: changed since it was written (edited or replaced by hand); {fix}")
    if data_dir is not None and entry.get("data_file"):
        data_file = Path(data_dir) / entry["data_file"]
        if data_file.is_file() and file_fingerprint(data_file) != entry.get("data"):
            raise UserError(f"{target}: stale, made from another {entry['data_file']} than {data_file} (the data "
                            f"changed since); {fix}")
    return entry


# ---------------------------------------------------------------------------------------------------------------
# Processor, model and collators from a run record
# ---------------------------------------------------------------------------------------------------------------


@dataclass
class Built:
    processor: object
    model: object
    precision: str  # resolved: bf16, fp16 or fp32
    collator: object  # scoring/evaluation collator: options in their given order
    train_collator: object = None  # training collator (shuffled options with --shuffle_choices); train=True only
    letter_ids: list = None


def build(record, weights_dir=None, *, train=False, precision=None, gradient_checkpointing=False,
          device_index=None, liger=None, compile_layers=None, device_map=None, max_memory=None):
    """Processor, model and collator(s) exactly as the run record says; the one place they are built.

    `weights_dir=None` (training): the base model of the record, with fresh LoRA unless a full fine-tune.
    `weights_dir=fold folder` (prediction): the fold's saved adapter on its base model, or its full model.
    `precision`, `liger` and `compile_layers` override the record's (predict.py's own flags).
    `device_map`, `max_memory`: where a prediction places the model (the machine's, not the training's); a
    training run places it as its record says.
    """
    from collator import option_letter_ids
    from mcvqa.modeling import check_model_folder, load_model, load_processor

    m = record.model
    base = m.model_name_or_path
    try:
        check_model_folder(base, m.trust_remote_code)
    except UserError as err:
        if weights_dir is None:
            raise
        raise UserError(f"{Path(weights_dir) / RECORD}: the fold's base model: {err}") from None
    processor = load_processor(base, m.min_pixels, m.max_pixels, m.trust_remote_code)
    is_adapter = weights_dir is not None and (Path(weights_dir) / "adapter_config.json").is_file()
    compiling = m.compile_layers if compile_layers is None else compile_layers
    liger = liger or m.liger
    if compiling and liger == "auto":
        liger = "false"  # measured no faster under compile (it cannot trace Liger's kernels), slower on the 8B
    common = dict(precision=precision or m.precision, quantization=m.quantization,
                  attn_implementation=m.attn_implementation, trust_remote_code=m.trust_remote_code,
                  gradient_checkpointing=gradient_checkpointing, device_index=device_index,
                  liger=liger, training=weights_dir is None,
                  device_map=m.device_map if weights_dir is None else device_map,
                  max_memory=m.max_memory if weights_dir is None else max_memory)
    if weights_dir is None:
        model, resolved = load_model(base, full_finetune=m.full_finetune, lora_r=m.lora_r, lora_alpha=m.lora_alpha,
                                     lora_dropout=m.lora_dropout, lora_vision=m.lora_vision, **common)
    else:
        model, resolved = _load_fold_weights(weights_dir, base, is_adapter, load_model, common)
    if compiling:
        from mcvqa.kernels import compile_decoder_layers

        compile_decoder_layers(model)
    collator, train_collator = make_collators(record, processor, model, train=train)
    return Built(processor, model, resolved, collator, train_collator, option_letter_ids(processor.tokenizer))


def make_collators(record, processor, model, train=False):
    """(scoring collator, training collator or None) as the run record says, M-RoPE positions from `model`;
    with `train` both share one decoded-image cache."""
    from collator import MCVQACollator, rope_positions
    from mcvqa.prompts import parse_templates

    m, d, r = record.model, record.data, record.run
    image_token_id = processor.tokenizer.convert_tokens_to_ids(processor.image_token)
    kwargs = dict(min_pixels=m.min_pixels, max_pixels=m.max_pixels, supervise_eos=d.supervise_eos,
                  template=d.prompt_template, templates_by_type=parse_templates(d.templates_by_type),
                  max_length=d.max_length, seed=record.seed, blank_images=r.blank_images,
                  position_fn=rope_positions(model, image_token_id))
    collator = MCVQACollator(processor, train=train, **kwargs)
    train_collator = None
    if train:
        train_collator = MCVQACollator(processor, shuffle_choices=d.shuffle_choices, **kwargs)
        collator.images = train_collator.images  # one decoded-image cache for training and evaluation
    return collator, train_collator


def _load_fold_weights(fold_dir, base, is_adapter, load_model, common):
    """A fold's model; a saved adapter that does not fit its base model is one clear line, not peft's traceback."""
    try:
        if is_adapter:
            return load_model(base, full_finetune=False, adapter_path=str(fold_dir), **common)
        return load_model(str(fold_dir), full_finetune=True, **common)
    except (RuntimeError, ValueError, KeyError) as err:
        text = str(err)
        if "size mismatch" in text or "shape" in text or "Error(s) in loading" in text:
            what = f"its base model {base}" if is_adapter else "the model class of its config"
            # torch's first line only names the class; the first mismatch says what differs.
            lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
            detail = next((line for line in lines if line.startswith("size mismatch")), lines[0])
            raise UserError(f"{fold_dir}: the saved weights do not fit {what} (the base folder now holds another "
                            f"model?): {detail[:300]}") from None
        raise
