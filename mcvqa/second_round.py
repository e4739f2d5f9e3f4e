"""Second-round training: pseudo-labelled test rows (`--pseudo_labels`) and distillation from a teacher's
probabilities (`--teacher_probs`), both kept honest for the out-of-fold estimates.

- Pseudo-labels: the test rows of an ensemble_probs.csv (id,a,b,c,d) whose top probability reaches
  --pseudo_min_prob join the TRAINING rows of the fold, never its validation rows; the OOF file stays
  over train.csv's rows. Hard letters (the most probable one) by default; with --pseudo_soft the row's
  loss is the cross-entropy against the four probabilities instead.
- Distillation: per training row the loss is (1 - alpha) * CE(letter) + alpha * T^2 * KL(teacher_T ||
  student_T) over the four letter logits, where teacher_T is the teacher's distribution sharpened or
  flattened by T (softmax(log p / T)) and student_T = softmax(letter logits / T). The teacher's
  probability for a train.csv row must be out of fold (its model never trained on that row): checked
  where the file says which model made it (a fold folder's artefact, or a run folder), refused when not.

Rows carry their distributions through the dataset as strings (`SOFT_COLUMN`, `TEACHER_COLUMN`: four
numbers over the ORIGINAL a/b/c/d, empty for rows without); the collator turns them into tensors in the
order the options are shown (`target_tensors`, following --shuffle_choices' `_order`), and the trainer's
loss reads them (`second_round_loss`).
"""

import hashlib
import sys
from pathlib import Path

import pandas as pd
import torch
import torch.nn.functional as F

from mcvqa import LETTERS
from mcvqa.errors import UserError

SOFT_COLUMN = "_soft_target"
TEACHER_COLUMN = "_teacher"
BATCH_KEYS = ("soft_targets", "teacher_probs")
SHOW = 5


def _few(ids):
    ids = sorted(map(str, ids))
    return ", ".join(map(repr, ids[:SHOW])) + (f" (and {len(ids) - SHOW} more)" if len(ids) > SHOW else "")


def argument_problems(data_args, run_args, args):
    """The flag problems of second-round training (checked with the others, before anything is read)."""
    problems = []
    given = data_args.pseudo_labels is not None
    if not given and (data_args.pseudo_soft or data_args.pseudo_min_prob is not None):
        problems.append("--pseudo_min_prob and --pseudo_soft need --pseudo_labels FILE")
    if given:
        if data_args.pseudo_min_prob is None:
            problems.append("--pseudo_labels needs --pseudo_min_prob P (the top probability a test row needs to "
                            "be added, e.g. 0.9)")
        elif not 0.25 <= data_args.pseudo_min_prob <= 1.0:
            problems.append(f"--pseudo_min_prob {data_args.pseudo_min_prob}: must be between 0.25 and 1")
    if data_args.teacher_probs is None:
        if data_args.distill_alpha is not None:
            problems.append("--distill_alpha needs --teacher_probs FILE")
    else:
        alpha = data_args.distill_alpha
        if alpha is None:
            problems.append("--teacher_probs needs --distill_alpha A (the teacher's share of the loss, e.g. 0.5)")
        elif not 0.0 < alpha <= 1.0:
            problems.append(f"--distill_alpha {alpha}: must be in (0, 1]")
    if not data_args.distill_temperature > 0:
        problems.append(f"--distill_temperature {data_args.distill_temperature}: must be positive")
    swa = run_args.swa_start
    if swa is not None:
        if not 0.0 <= swa < 1.0:
            problems.append(f"--swa_start {swa}: must be a fraction of training in [0, 1), e.g. 0.75")
        if run_args.ema_decay is not None:
            problems.append("--swa_start and --ema_decay each replace the last weights by an average: choose one")
        if data_args.fold != -1 and args.load_best_model_at_end:
            problems.append("--swa_start saves the averaged weights, not the best checkpoint: add "
                            "--load_best_model_at_end false (or drop --swa_start)")
    return problems


# ---------------------------------------------------------------------------------------------------------------
# Pseudo-labels
# ---------------------------------------------------------------------------------------------------------------


def encode_probs(values):
    """Four probabilities -> the string a dataset column carries (repr: exact round trip)."""
    return " ".join(repr(float(v)) for v in values)


def decode_probs(text):
    return [float(v) for v in text.split()] if isinstance(text, str) and text.strip() else None


def pseudo_label_rows(path, data_dir, min_prob, soft, train_ids):
    """(rows, record): the test.csv rows whose top probability in `path` is >= min_prob, answered by their
    most probable letter (and with SOFT_COLUMN when `soft`), and what the run record states about them."""
    from mcvqa.data import load_split
    from mcvqa.ensemble import read_probs
    from mcvqa.runs import file_fingerprint

    probs = read_probs(path)
    test_csv = Path(data_dir) / "test.csv"
    clash = sorted(set(probs["id"]) & set(map(str, train_ids)))
    if clash:
        raise UserError(f"--pseudo_labels {path}: {len(clash)} id(s) are also train.csv ids ({_few(clash)}): a "
                        "pseudo-labelled row would replace or shadow a labelled one; give the test rows their own ids")
    test = load_split(data_dir, "test")
    unknown = sorted(set(probs["id"]) - set(test["id"].astype(str)))
    if unknown:
        raise UserError(f"--pseudo_labels {path}: {len(unknown)} id(s) are not rows of {test_csv} ({_few(unknown)}): "
                        "the file was made for another data folder")
    by_id = probs.set_index("id")[list(LETTERS)]
    test = test[test["id"].astype(str).isin(by_id.index)].copy()
    values = by_id.loc[test["id"].astype(str)].to_numpy(dtype=float)
    keep = values.max(1) >= min_prob
    rows = test[keep].copy()
    rows["answer"] = [LETTERS[i] for i in values[keep].argmax(1)]
    if soft:
        rows[SOFT_COLUMN] = [encode_probs(v / v.sum()) for v in values[keep]]
    record = {"file": str(path), "fingerprint": file_fingerprint(path), "test.csv": file_fingerprint(test_csv),
              "min_prob": float(min_prob), "soft": bool(soft), "rows_in_file": int(len(probs)),
              "rows_added": int(keep.sum()),
              "letters": {l: int((rows["answer"] == l).sum()) for l in LETTERS}}
    return rows, record


# ---------------------------------------------------------------------------------------------------------------
# Teacher probabilities
# ---------------------------------------------------------------------------------------------------------------


def _fold_trained_ids(fold_dir, train_ids):
    """The train.csv ids fold folder `fold_dir`'s model was trained on (a superset: --max_train_samples is not
    taken into account), or None when its run folder's folds.csv is missing."""
    from mcvqa.runs import fold_number

    k = fold_number(fold_dir)
    if k == -1:
        return set(map(str, train_ids))
    folds_csv = Path(fold_dir).parent / "folds.csv"
    if not folds_csv.is_file():
        return None
    folds = pd.read_csv(folds_csv, dtype=str, keep_default_na=False)
    return set(folds.loc[folds["fold"] != str(k), "id"])


def _from_fold_file(path, train_ids, data_dir):
    """(probs, in-fold train ids) of a file inside a fold folder, provenance checked where it has one."""
    from mcvqa.ensemble import read_probs
    from mcvqa.runs import artefact_entry, check_artefact

    fold_dir = path.parent
    if artefact_entry(fold_dir, path.name) is not None:
        check_artefact(fold_dir, path.name, data_dir=data_dir)
    probs = read_probs(path)
    trained = _fold_trained_ids(fold_dir, train_ids)
    if trained is None:
        return probs, None
    return probs, sorted(set(probs["id"]) & trained)


def _from_run_folder(root, train_ids, data_dir):
    """The out-of-fold probabilities of every fold of one run folder (each fold's oof_tta.csv or oof.csv,
    checked against its weights), plus the mean of the folds' test_probs.csv for test rows."""
    from mcvqa.ensemble import read_probs
    from mcvqa.metrics import average_probs
    from mcvqa.runs import check_artefact, find_folds, fold_number, oof_file

    folds = [f for f in find_folds(root) if fold_number(f) != -1]
    parents = {f.parent for f in folds}
    if not folds or len(parents) > 1:
        what = "no fold folder" if not folds else f"the fold folders of {len(parents)} runs"
        raise UserError(f"--teacher_probs {root}: {what} found; point at one run folder (holding fold1/, fold2/, "
                        "... with oof.csv) or at a probability file")
    parts, in_fold, tests, files = [], [], [], []
    for fold in folds:
        oof = oof_file(fold)
        if oof is None:
            raise UserError(f"--teacher_probs {root}: {fold} has no oof.csv; finish training that fold")
        check_artefact(fold, oof.name, data_dir=data_dir)
        part = read_probs(oof)[["id", *LETTERS]]
        trained = _fold_trained_ids(fold, train_ids) or set()
        in_fold += sorted(set(part["id"]) & trained)
        parts.append(part)
        files.append(oof)
        if (fold / "test_probs.csv").is_file():
            check_artefact(fold, "test_probs.csv", data_dir=data_dir)
            tests.append(read_probs(fold / "test_probs.csv")[["id", *LETTERS]].set_index("id").sort_index())
            files.append(fold / "test_probs.csv")
    probs = pd.concat(parts, ignore_index=True)
    dup = probs["id"][probs["id"].duplicated()]
    if len(dup) and not in_fold:  # in-fold rows are the clearer refusal (read_teacher)
        raise UserError(f"--teacher_probs {root}: {len(dup)} train id(s) in more than one fold's OOF file "
                        f"({_few(dup)}): the folds were not trained on one folds.csv")
    if tests and all(t.index.equals(tests[0].index) for t in tests):
        mean = average_probs([t.to_numpy() for t in tests])
        probs = pd.concat([probs, pd.DataFrame(mean, columns=list(LETTERS)).assign(id=tests[0].index)],
                          ignore_index=True)
    return probs, in_fold, files


def read_teacher(path, train_ids, test_ids, data_dir, val_ids=()):
    """(probs by id: DataFrame indexed by id with a-d, record) for --teacher_probs `path`.

    Refused: a file whose ids are neither train.csv nor test.csv rows; a file whose predictions for
    train.csv rows are detectably in-fold (made by a model trained on those rows): a fold folder's
    artefact covering rows its fold trained on (any fold folder: fold K's run folder's folds.csv says which
    rows it trained on; `full/` trained on all). A file outside any fold folder cannot be checked.
    """
    from mcvqa.ensemble import read_probs
    from mcvqa.runs import file_fingerprint, is_fold_dir

    path = Path(path)
    files = [path]
    if path.is_dir():
        probs, in_fold, files = _from_run_folder(path, train_ids, data_dir)
        checked = "run folder: out-of-fold files of its folds"
    elif path.is_file() and is_fold_dir(path.parent):
        probs, in_fold = _from_fold_file(path, train_ids, data_dir)
        checked = f"fold folder {path.parent.name}" if in_fold is not None else None
    else:
        probs, in_fold, checked = read_probs(path), None, None
    if in_fold:
        val = sorted(set(in_fold) & set(map(str, val_ids)))
        note = f", {len(val)} of them validation rows of this fold ({_few(val)})" if val else ""
        raise UserError(f"--teacher_probs {path}: in-fold predictions for {len(in_fold)} train.csv row(s) "
                        f"({_few(in_fold)}{note}): the model that made them trained on those rows, so distilling "
                        "from them teaches the labels and inflates the out-of-fold score; use the teacher's "
                        "out-of-fold files (its run folder, or the oof.csv of each of its folds)")
    known = set(map(str, train_ids)) | set(map(str, test_ids))
    unknown = sorted(set(probs["id"]) - known)
    if unknown:
        raise UserError(f"--teacher_probs {path}: {len(unknown)} id(s) are neither train.csv nor test.csv rows "
                        f"({_few(unknown)}): the file was made for another data folder")
    if checked is None:
        print(f"--teacher_probs {path}: not a fold folder's file nor a run folder, so whether its train.csv "
              "rows are out-of-fold cannot be checked; it must hold out-of-fold predictions", file=sys.stderr)
    h = hashlib.sha256("".join(f"{f}={file_fingerprint(f)};" for f in files).encode()).hexdigest()
    fingerprint = file_fingerprint(path) if path.is_file() else f"files:{h[:32]}"
    record = {"file": str(path), "fingerprint": fingerprint, "checked": checked,
              "files": [str(f) for f in files] if path.is_dir() else None}
    return probs.set_index("id")[list(LETTERS)], record


def attach_teacher(fit_df, teacher, record):
    """fit_df with TEACHER_COLUMN for the rows the teacher covers; counts go into `record`. Rows the teacher
    does not cover keep the plain loss (and are counted, never dropped)."""
    ids = fit_df["id"].astype(str)
    covered = ids.isin(teacher.index)
    out = fit_df.copy()
    values = teacher.reindex(ids[covered]).to_numpy(dtype=float)
    out[TEACHER_COLUMN] = ""
    out.loc[covered.to_numpy(), TEACHER_COLUMN] = [encode_probs(v / v.sum()) for v in values]
    record.update(rows_covered=int(covered.sum()), rows_without_teacher=int((~covered).sum()))
    if (~covered).any():
        print(f"--teacher_probs: {int((~covered).sum())} of {len(ids)} training rows have no teacher "
              f"probabilities ({_few(ids[~covered])}); they are trained with the plain loss", file=sys.stderr)
    return out


# ---------------------------------------------------------------------------------------------------------------
# Batches and loss
# ---------------------------------------------------------------------------------------------------------------


def target_tensors(rows, orders):
    """{'soft_targets', 'soft_mask', 'teacher_probs', 'teacher_mask'} for a batch whose rows carry them, in the
    order the options are shown (`orders[i][j]`: the original index shown at position j; None = a-d)."""
    out = {}
    for column, key in ((SOFT_COLUMN, "soft_targets"), (TEACHER_COLUMN, "teacher_probs")):
        values = [decode_probs(r.get(column)) for r in rows]
        if not any(v is not None for v in values):
            continue
        probs = torch.zeros((len(rows), len(LETTERS)), dtype=torch.float32)
        for i, (v, order) in enumerate(zip(values, orders)):
            if v is not None:
                probs[i] = torch.tensor([v[j] for j in (order or range(len(LETTERS)))])
        out[key] = probs
        out[key.split("_")[0] + "_mask"] = torch.tensor([v is not None for v in values])
    return out


def distillation_term(letters, teacher, temperature):
    """Per row KL(teacher_T || student_T) over the four letters: teacher_T = softmax(log p / T)."""
    t = float(temperature)
    teacher_t = torch.softmax(torch.log(teacher.float().clamp_min(1e-12)) / t, dim=-1)
    return F.kl_div(torch.log_softmax(letters.float() / t, dim=-1), teacher_t, reduction="none").sum(-1)


def second_round_loss(logits, targets, letters, inputs, letter_ids, restricted, smoothing, alpha, temperature):
    """The batch loss when some rows carry soft targets or teacher probabilities: per row, the plain loss
    (as MCVQATrainer computes it), replaced by the soft cross-entropy for soft rows, then mixed with the
    distillation term for rows with a teacher; averaged over the rows."""
    from mcvqa.scoring import target_letters

    if restricted:
        loss = F.cross_entropy(letters.float(), target_letters(inputs, letter_ids), label_smoothing=smoothing,
                               reduction="none")
    else:
        tokens = F.cross_entropy(logits.float().flatten(0, 1), targets.flatten(), ignore_index=-100,
                                 label_smoothing=smoothing, reduction="none").view(targets.shape)
        valid = (targets != -100).float()
        loss = (tokens * valid).sum(1) / valid.sum(1).clamp_min(1.0)
    if "soft_targets" in inputs:
        soft = -(inputs["soft_targets"].float() * torch.log_softmax(letters.float(), dim=-1)).sum(-1)
        loss = torch.where(inputs["soft_mask"], soft, loss)
    if "teacher_probs" in inputs and alpha:
        kd = distillation_term(letters, inputs["teacher_probs"], temperature)
        mixed = (1.0 - alpha) * loss + alpha * float(temperature) ** 2 * kd
        loss = torch.where(inputs["teacher_mask"], mixed, loss)
    return loss.mean()


# ---------------------------------------------------------------------------------------------------------------
# What train_lora.py calls
# ---------------------------------------------------------------------------------------------------------------


class SecondRound:
    """The pseudo-labelled rows and the teacher of one fold's training, read and checked up front."""

    def __init__(self, pseudo_rows=None, teacher=None, teacher_record=None):
        self.pseudo_rows, self.teacher, self.teacher_record = pseudo_rows, teacher, teacher_record

    @property
    def distill(self):
        return self.teacher is not None

    def training_rows(self, fit_df):
        """The fold's training rows plus the pseudo-labelled rows, with the teacher's probabilities attached."""
        if self.pseudo_rows is not None and len(self.pseudo_rows):
            fit_df = pd.concat([fit_df, self.pseudo_rows], ignore_index=True)
        if self.teacher is not None:
            fit_df = attach_teacher(fit_df, self.teacher, self.teacher_record)
        return fit_df


def prepare(data_args, train_df, output_root, record):
    """Read --pseudo_labels and --teacher_probs against train.csv (and the run's folds.csv when it exists, to
    name this fold's validation rows in a refusal); note both in the run record. Before --resume's check, so
    that a checkpoint made from other files is not continued."""
    from mcvqa.data import load_split

    if data_args.pseudo_labels is None and data_args.teacher_probs is None:
        return SecondRound()
    train_ids = train_df["id"].astype(str)
    out = SecondRound()
    if data_args.pseudo_labels is not None:
        out.pseudo_rows, record.pseudo_labels = pseudo_label_rows(
            data_args.pseudo_labels, data_args.data_dir, data_args.pseudo_min_prob, data_args.pseudo_soft, train_ids)
        print(f"--pseudo_labels: {record.pseudo_labels['rows_added']} of {record.pseudo_labels['rows_in_file']} "
              f"test rows added to the training rows (top probability >= {data_args.pseudo_min_prob})",
              file=sys.stderr)
    if data_args.teacher_probs is not None:
        folds_csv = Path(output_root) / "folds.csv"
        val_ids = ()
        if folds_csv.is_file() and data_args.fold != -1:
            folds = pd.read_csv(folds_csv, dtype=str, keep_default_na=False)
            val_ids = folds.loc[folds["fold"] == str(data_args.fold), "id"].tolist()
        test_ids = load_split(data_args.data_dir, "test", check_images=False)["id"].astype(str)
        out.teacher, record.teacher = read_teacher(data_args.teacher_probs, train_ids, test_ids, data_args.data_dir,
                                                   val_ids)
        out.teacher_record = record.teacher
    return out
