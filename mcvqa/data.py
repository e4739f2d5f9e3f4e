"""The data contract: read and validate a data folder, build datasets, assign and reuse CV folds.

A data folder holds ``train.csv``, ``test.csv`` and ``sample_submission.csv`` (see data/README.md).
Every loader checks the whole input first and raises ONE ``UserError`` listing every problem found,
each naming the file, the column and the rows (CSV line numbers or ids).
"""

import csv
import io
import json
import os
import re
import sys
from pathlib import Path

import pandas as pd

from mcvqa import LETTERS
from mcvqa.errors import UserError, collect
from mcvqa.images import REASONS as IMAGE_REASONS, image_problem
from mcvqa.io import write_csv, write_json

SPLITS = ("train", "test")
OPTION_COLUMNS = LETTERS
IMAGE_COLUMNS = ("path", "image")
TYPE_COLUMNS = ("question_type", "type")  # first one present wins
FOLDS_CSV = "folds.csv"
FOLDS_JSON = "folds.json"
SHOW = 5  # rows listed in a message before "(and N more)"

_COLOUR_RE = re.compile(r"colou?r|색깔|색상|무슨\s*색|어떤\s*색", re.IGNORECASE)
_SHAPE_RE = re.compile(r"shape|모양|도형", re.IGNORECASE)
_ICONV = "iconv -f cp949 -t utf-8 {p} > {p}.utf8.csv"


# ----------------------------------------------------------------------------------------- helpers


def _listing(items, show=SHOW):
    """'x, y, z' with at most `show` items, then '(and N more)'."""
    items = list(items)
    text = ", ".join(str(i) for i in items[:show])
    if len(items) > show:
        text += f" (and {len(items) - show} more)"
    return text


def _plural(n, one, many=None):
    return f"{n} {one if n == 1 else (many or one + 's')}"


def _raise(problems, header):
    """One UserError: the problem itself when there is one, else `header` and a bulleted list."""
    if len(problems) == 1:
        raise UserError(problems[0])
    collect(problems, header)


def _decode(path, raw):
    """bytes -> str: UTF-8 (BOM optional), else cp949 with a warning, else UserError."""
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError:
        pass
    try:
        text = raw.decode("cp949")
    except UnicodeDecodeError:
        raise UserError(
            f"{path}: cannot decode the file: it is neither UTF-8 nor cp949/euc-kr. "
            f"Save it as UTF-8 (for a Korean cp949 file: {_ICONV.format(p=path)})"
        ) from None
    if text.startswith("\ufeff"):
        text = text[1:]
    print(
        f"warning: {path} is not UTF-8; read it as cp949 (euc-kr). "
        f"To convert it once: {_ICONV.format(p=path)}",
        file=sys.stderr,
        flush=True,
    )
    return text


def _read_csv(path):
    """Read a CSV as all-string columns (no NA conversion), with CSV line numbers.

    Returns (df, problems). df has a column '_line' (the CSV line each record starts on) and is
    None when the file cannot be used at all (missing, undecodable, empty, header-only, ragged).
    """
    path = Path(path)
    if not path.exists():
        return None, [f"{path}: file not found"]
    if path.is_dir():
        return None, [f"{path}: is a directory, expected a CSV file"]
    try:
        raw = path.read_bytes()
    except OSError as err:
        return None, [f"{path}: cannot read the file ({err.strerror or err})"]
    try:
        text = _decode(path, raw)
    except UserError as err:
        return None, [str(err)]
    if not text.strip():
        return None, [f"{path}: the file is empty (expected a header line and data rows)"]

    reader = csv.reader(io.StringIO(text, newline=""))
    header, rows, lines, ragged = None, [], [], []
    try:
        while True:
            start = reader.line_num + 1
            try:
                record = next(reader)
            except StopIteration:
                break
            if not record or (len(record) == 1 and not record[0].strip()):
                continue  # blank line
            if header is None:
                header = [h.strip() for h in record]
                continue
            if len(record) != len(header):
                ragged.append(f"line {start} ({len(record)} fields)")
                continue
            rows.append(record)
            lines.append(start)
    except csv.Error as err:
        return None, [f"{path}: not a valid CSV file: {err} (near line {reader.line_num})"]

    problems = []
    if header is None:
        return None, [f"{path}: the file is empty (expected a header line and data rows)"]
    dup_cols = sorted({h for h in header if header.count(h) > 1})
    if dup_cols:
        problems.append(f"{path}: header has duplicate column names: {_listing(map(repr, dup_cols))}")
    if "" in header:
        problems.append(f"{path}: header has an empty column name (column {header.index('') + 1})")
    if ragged:
        problems.append(
            f"{path}: {_plural(len(ragged), 'row does', 'rows do')} not have {len(header)} fields like the header: "
            f"{_listing(ragged)}"
        )
    if not rows and not ragged:
        problems.append(f"{path}: the file has a header line but no data rows")
    if problems:
        return None, problems
    df = pd.DataFrame(rows, columns=header, dtype=str)
    df = df.apply(lambda col: col.str.strip())
    df["_line"] = lines
    return df, []


def _rows_where(df, mask, value_col=None):
    """['line 4', ...] or ["line 4 ('e')", ...] for the rows where mask holds."""
    sub = df.loc[mask]
    if value_col is None:
        return [f"line {ln}" for ln in sub["_line"]]
    return [f"line {ln} ({v!r})" for ln, v in zip(sub["_line"], sub[value_col])]


def _check_images(csv_path, col, df):
    """One problem line per kind of image failure; each unique path is checked once."""
    first_line = {}
    for ln, p, raw in zip(df["_line"], df["image"], df[col]):
        if p and p not in first_line:
            first_line[p] = (ln, raw)
    bad = {}
    for p, (ln, raw) in first_line.items():
        problem = image_problem(p)
        if problem:
            reason, detail = problem
            shown = f"{raw!r}" if raw == p else f"{raw!r} -> {p}"
            bad.setdefault(reason, []).append(f"line {ln} ({shown}{f', {detail}' if detail else ''})")
    return [
        f"{csv_path}: column {col!r}: {len(items)} {IMAGE_REASONS[reason][len(items) > 1]}: {_listing(items)}"
        for reason, items in bad.items()
    ]


def infer_question_type(question, options):
    """'yes/no' when the options include both yes and no, else 'colour'/'shape' from the wording, else 'other'."""
    opts = {str(o).strip().lower() for o in options}
    if {"yes", "no"} <= opts:
        return "yes/no"
    if _COLOUR_RE.search(question):
        return "colour"
    if _SHAPE_RE.search(question):
        return "shape"
    return "other"


# ----------------------------------------------------------------------------------------- loaders


def load_split(data_dir, split, check_images=True):
    """Read and validate DATA_DIR/{split}.csv; return the normalised DataFrame.

    Columns: id, image (absolute path), question, a, b, c, d, answer (train only, lower-case),
    question_type, then any extra columns. Raises one UserError listing every problem.
    """
    if split not in SPLITS:
        raise UserError(f"unknown split {split!r}: expected one of {', '.join(SPLITS)}")
    data_dir = Path(data_dir)
    if not data_dir.is_dir():
        raise UserError(f"{data_dir}: data folder not found (expected train.csv, test.csv, sample_submission.csv)")
    csv_path = data_dir / f"{split}.csv"
    df, problems = _read_csv(csv_path)
    if df is None:
        _raise(problems, f"{csv_path}: cannot use this file:")

    # --- columns
    required = ["id", "question", *OPTION_COLUMNS] + (["answer"] if split == "train" else [])
    missing = [c for c in required if c not in df.columns]
    if missing:
        problems.append(
            f"{csv_path}: missing {'column' if len(missing) == 1 else 'columns'} {', '.join(map(repr, missing))} "
            f"(found: {', '.join(repr(c) for c in df.columns if c != '_line')})"
        )
    image_cols = [c for c in IMAGE_COLUMNS if c in df.columns]
    image_col = image_cols[0] if len(image_cols) == 1 else None
    if not image_cols:
        problems.append(f"{csv_path}: no image column: add a column 'path' or 'image' (image file paths)")
    elif len(image_cols) > 1:
        problems.append(
            f"{csv_path}: both 'path' and 'image' columns are present: keep only one image column "
            "(or rename the other)"
        )

    # --- values
    if "id" in df.columns:
        mask = df["id"] == ""
        if mask.any():
            problems.append(
                f"{csv_path}: column 'id': {_plural(int(mask.sum()), 'row')} with an empty id: "
                f"{_listing(_rows_where(df, mask))}"
            )
        dup = df["id"].duplicated(keep=False) & ~mask
        if dup.any():
            groups = df.loc[dup].groupby("id", sort=False)["_line"].apply(list)
            items = [f"{i!r} (lines {', '.join(map(str, lns))})" for i, lns in groups.items()]
            problems.append(f"{csv_path}: column 'id': {_plural(len(items), 'duplicate id')}: {_listing(items)}")
    for col in ("question", *OPTION_COLUMNS):
        if col in df.columns:
            mask = df[col] == ""
            if mask.any():
                problems.append(
                    f"{csv_path}: column {col!r}: {_plural(int(mask.sum()), 'row is', 'rows are')} empty or whitespace-only: "
                    f"{_listing(_rows_where(df, mask))}"
                )
    if split == "train" and "answer" in df.columns:
        df["answer"] = df["answer"].str.lower()
        mask = ~df["answer"].isin(LETTERS)
        if mask.any():
            n = int(mask.sum())
            problems.append(
                f"{csv_path}: column 'answer': {_plural(n, 'row has', 'rows have')} an answer outside a-d: "
                f"{_listing(_rows_where(df, mask, 'answer'))}"
            )
    if image_col is not None:
        df["image"] = [
            "" if not v else v if os.path.isabs(v) else os.path.abspath(os.path.join(data_dir, v))
            for v in df[image_col]
        ]
        mask = df["image"] == ""
        if mask.any():
            problems.append(
                f"{csv_path}: column {image_col!r}: {_plural(int(mask.sum()), 'row')} without an image path: "
                f"{_listing(_rows_where(df, mask))}"
            )
        if check_images:
            problems += _check_images(csv_path, image_col, df)

    _raise(problems, f"{csv_path}: {_plural(len(problems), 'problem')} found:")

    # --- normalise
    if image_col == "path":
        df = df.drop(columns=["path"])
    type_col = next((c for c in TYPE_COLUMNS if c in df.columns), None)
    inferred = [
        infer_question_type(q, opts)
        for q, opts in zip(df["question"], zip(*(df[c] for c in OPTION_COLUMNS)))
    ]
    if type_col is not None:
        df["question_type"] = [t if t else i for t, i in zip(df[type_col], inferred)]
    else:
        df["question_type"] = inferred
    core = ["id", "image", "question", *OPTION_COLUMNS] + (["answer"] if split == "train" else []) + ["question_type"]
    extras = [c for c in df.columns if c not in core and c != "_line"]
    return df[core + extras].reset_index(drop=True)


def load_submission_template(data_dir):
    """Read and validate DATA_DIR/sample_submission.csv.

    Needs an `id` column and one answer column (named 'answer', or the only other column); the
    answer column's name is in `df.attrs["answer_column"]`. Returns all columns as strings.
    """
    data_dir = Path(data_dir)
    csv_path = data_dir / "sample_submission.csv"
    df, problems = _read_csv(csv_path)
    if df is None:
        _raise(problems, f"{csv_path}: cannot use this file:")
    cols = [c for c in df.columns if c != "_line"]
    answer_col = None
    if "id" not in cols:
        problems.append(f"{csv_path}: missing column 'id' (found: {', '.join(map(repr, cols))})")
    others = [c for c in cols if c != "id"]
    if "answer" in others:
        answer_col = "answer"
    elif len(others) == 1:
        answer_col = others[0]
    elif not others:
        problems.append(f"{csv_path}: no answer column: expected 'id' and one answer column (e.g. 'id,answer')")
    else:
        problems.append(
            f"{csv_path}: cannot tell which column holds the answer among {', '.join(map(repr, others))}: "
            "name it 'answer'"
        )
    if "id" in cols:
        dup = df["id"].duplicated(keep=False)
        if dup.any():
            groups = df.loc[dup].groupby("id", sort=False)["_line"].apply(list)
            items = [f"{i!r} (lines {', '.join(map(str, lns))})" for i, lns in groups.items()]
            problems.append(f"{csv_path}: column 'id': {_plural(len(items), 'duplicate id')}: {_listing(items)}")
    _raise(problems, f"{csv_path}: {_plural(len(problems), 'problem')} found:")
    df = df.drop(columns=["_line"]).reset_index(drop=True)
    df.attrs["answer_column"] = answer_col
    return df


def to_dataset(df):
    """DataFrame -> datasets.Dataset with every column as a string."""
    import datasets

    df = df.reset_index(drop=True).fillna("").astype(str)
    features = datasets.Features({c: datasets.Value("string") for c in df.columns})
    return datasets.Dataset.from_pandas(df, features=features, preserve_index=False)


# ----------------------------------------------------------------------------------------- folds


def _reuse_folds(train_df, n_folds, seed, out):
    csv_path, json_path = out / FOLDS_CSV, out / FOLDS_JSON
    fix = f"delete {csv_path} and {json_path} to split again, or pass the matching --n_folds/--seed"
    try:
        meta = json.loads(json_path.read_text(encoding="utf-8"))
        saved_n, saved_seed = int(meta["n_folds"]), int(meta["seed"])
    except FileNotFoundError:
        raise UserError(f"{csv_path} exists but {json_path} is missing, so its n_folds/seed are unknown: {fix}") from None
    except (ValueError, KeyError, TypeError) as err:
        raise UserError(f"{json_path}: unreadable ({err}): {fix}") from None
    saved, problems = _read_csv(csv_path)
    if saved is None:
        collect(problems + [fix], f"{csv_path}: cannot reuse the saved folds:")
    if saved_n != int(n_folds) or saved_seed != int(seed):
        problems.append(
            f"{csv_path} was made with n_folds={saved_n}, seed={saved_seed} but n_folds={n_folds}, seed={seed} "
            "was requested"
        )
    if not {"id", "fold"} <= set(saved.columns):
        problems.append(f"{csv_path}: expected columns 'id,fold'")
    else:
        saved_ids, want_ids = set(saved["id"]), set(train_df["id"].astype(str))
        if saved_ids != want_ids or len(saved) != len(train_df):
            extra, lacking = sorted(saved_ids - want_ids), sorted(want_ids - saved_ids)
            detail = []
            if lacking:
                detail.append(f"{len(lacking)} train ids not in it: {_listing(map(repr, lacking))}")
            if extra:
                detail.append(f"{len(extra)} ids not in train: {_listing(map(repr, extra))}")
            if not detail:
                detail.append(f"it has {len(saved)} rows, train has {len(train_df)}")
            problems.append(f"{csv_path} does not match the training ids ({'; '.join(detail)})")
        bad = ~saved["fold"].isin([str(k) for k in range(1, saved_n + 1)])
        if bad.any():
            problems.append(f"{csv_path}: column 'fold': values outside 1..{saved_n}: {_listing(_rows_where(saved, bad, 'fold'))}")
    if problems:
        collect(problems + [f"folds are never re-split silently: {fix}"], "cannot reuse the saved folds:")
    folds = dict(zip(saved["id"], saved["fold"].astype(int)))
    return pd.Series([folds[i] for i in train_df["id"].astype(str)], index=train_df.index, name="fold", dtype=int)


def assign_folds(train_df, n_folds, seed, output_dir):
    """Stratified (by answer) 1-based folds, stored in OUTPUT_DIR/folds.csv and reused afterwards.

    Returns a Series of fold numbers 1..n_folds aligned to train_df's index. A saved folds.csv made
    with another n_folds/seed or for other ids raises UserError (never re-split silently).
    Nothing is written (not even output_dir) unless every check passes.
    """
    try:
        n_folds = int(n_folds)
    except (TypeError, ValueError):
        raise UserError(f"--n_folds {n_folds!r} is not a whole number") from None
    if n_folds < 2:
        raise UserError(f"--n_folds {n_folds}: need at least 2 folds (or use --fold -1 to train on all rows)")
    missing = [c for c in ("id", "answer") if c not in train_df.columns]
    if missing:
        raise UserError(f"cannot assign folds: training data lacks {', '.join(map(repr, missing))}")
    out = Path(output_dir)
    if (out / FOLDS_CSV).exists():
        return _reuse_folds(train_df, n_folds, seed, out)

    ids = train_df["id"].astype(str)
    if ids.duplicated().any():
        raise UserError(f"cannot assign folds: duplicate ids: {_listing(map(repr, ids[ids.duplicated()].unique()))}")
    y = train_df["answer"].astype(str).str.lower()
    counts = y.value_counts().sort_index()
    small = counts[counts < n_folds]
    if len(small):
        raise UserError(
            f"cannot split {len(train_df)} rows into {n_folds} stratified folds: every answer needs at least "
            f"{n_folds} rows, but {', '.join(f'{k!r} has {v}' for k, v in small.items())} "
            f"(counts: {', '.join(f'{k}={v}' for k, v in counts.items())}). Use fewer --n_folds or more data"
        )
    from sklearn.model_selection import StratifiedKFold

    fold = [0] * len(y)
    skf = StratifiedKFold(n_splits=n_folds, shuffle=True, random_state=int(seed))
    for k, (_, held_out) in enumerate(skf.split([[0]] * len(y), y.to_numpy()), start=1):
        for i in held_out:
            fold[i] = k
    folds = pd.Series(fold, index=train_df.index, name="fold", dtype=int)
    write_json(out / FOLDS_JSON, {"n_folds": n_folds, "seed": int(seed), "n_rows": len(train_df)})
    write_csv(out / FOLDS_CSV, pd.DataFrame({"id": ids.to_numpy(), "fold": folds.to_numpy()}))
    return folds
