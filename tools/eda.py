"""Know the data before a long run: answer balance, question types, duplicates, images, text and token lengths.

    python tools/eda.py --data_dir data --out runs/eda
    python tools/eda.py --data_dir data --out runs/eda \
        --model_name_or_path Qwen/Qwen2.5-VL-7B-Instruct --max_pixels 200704 --max_length 1024
    python tools/eda.py --config my_eda.yaml              # keys are the flag names below

Writes OUT/report.md (tables and what to do about them), OUT/summary.json (every number) and PNG plots.
The folder is read through the data contract (mcvqa.data.load_split), so it is validated exactly as for
training. Text statistics use every row; image statistics and token lengths use a seeded sample of
--max_rows rows per split, so a large folder stays quick. With --model_name_or_path, each sampled row
is tokenised by the training collator (MCVQACollator.encode) under --min_pixels/--max_pixels, so the
token counts are the ones training sees; a table then shows the lengths under other pixel budgets
(text tokens do not depend on the budget; image tokens follow Qwen's resize rule). Each statistic is
compared between train.csv and test.csv (shift: Kolmogorov-Smirnov D for numbers, total variation
distance for categories).
"""

import hashlib
import math
import sys
from dataclasses import dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from mcvqa.cli import parse_args  # noqa: E402
from mcvqa.errors import argument_errors, collect, report_user_errors  # noqa: E402

# Pixel budgets of the length table: 224^2, 448^2 (the default), 672^2, 896^2, 1344^2.
BUDGETS = (224 * 224, 448 * 448, 672 * 672, 896 * 896, 1344 * 1344)
# Qwen2/2.5-VL: 14-pixel patches merged 2x2; used for image tokens when no model is given.
DEFAULT_FACTOR = 28
EXIF_ORIENTATION = 274
SHIFT_D, SHIFT_P, SHIFT_TVD = 0.1, 0.01, 0.1


@dataclass
class EDAArguments:
    data_dir: str = field(default="data", metadata={"help": "Folder with train.csv (and test.csv for the shift)."})
    out: str = field(default="runs/eda", metadata={"help": "Where report.md, summary.json and the plots go."})
    model_name_or_path: str = field(default=None, metadata={
        "help": "Qwen-VL model (hub id or folder) whose processor counts tokens per row; none: no token lengths."})
    min_pixels: int = field(default=112 * 112, metadata={"help": "Pixel floor, as train_lora.py --min_pixels."})
    max_pixels: int = field(default=448 * 448, metadata={"help": "Pixel budget, as train_lora.py --max_pixels."})
    max_length: int = field(default=2048, metadata={"help": "train_lora.py --max_length: rows above it are counted."})
    prompt_template: str = field(default=None, metadata={"help": "train_lora.py --prompt_template, if you use one."})
    max_rows: int = field(default=2000, metadata={
        "help": "Rows sampled per split for image statistics and token lengths (0 = all rows)."})
    seed: int = field(default=0, metadata={"help": "Seed of the row sample."})
    trust_remote_code: bool = field(default=False, metadata={"help": "Allow code from the model folder to run."})


# ----------------------------------------------------------------------------------------- statistics


def describe(values):
    """count, mean and percentiles of a numeric sequence (None where empty)."""
    import numpy as np

    v = np.asarray([x for x in values if x is not None and not (isinstance(x, float) and math.isnan(x))], float)
    if not len(v):
        return {"count": 0}
    p = np.percentile(v, [0, 50, 90, 99, 100])
    return {"count": int(len(v)), "mean": float(v.mean()), "min": float(p[0]), "p50": float(p[1]),
            "p90": float(p[2]), "p99": float(p[3]), "max": float(p[4])}


def shares(values):
    """{category: share} of a sequence, most frequent first."""
    import pandas as pd

    s = pd.Series(list(values), dtype=object).astype(str).value_counts(normalize=True)
    return {str(k): float(v) for k, v in s.items()}


def numeric_shift(train, test):
    """Two-sample Kolmogorov-Smirnov D and p-value, with both medians."""
    from scipy.stats import ks_2samp

    train, test = [x for x in train if x is not None], [x for x in test if x is not None]
    if not train or not test:
        return None
    import warnings

    import numpy as np

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # "exact calculation unsuccessful": it falls back by itself
        result = ks_2samp(train, test)

    return {"train_median": float(np.median(train)), "test_median": float(np.median(test)),
            "ks_d": float(result.statistic), "p_value": float(result.pvalue),
            "shifted": bool(result.statistic >= SHIFT_D and result.pvalue < SHIFT_P)}


def categorical_shift(train, test):
    """Total variation distance between two category distributions (0 = same, 1 = disjoint), with the
    chi-square test of independence, so that a small test set's noise is not called a shift."""
    import pandas as pd
    from scipy.stats import chi2_contingency

    train, test = [str(x) for x in train], [str(x) for x in test]
    if not train or not test:
        return None
    p, q = shares(train), shares(test)
    tvd = 0.5 * sum(abs(p.get(k, 0.0) - q.get(k, 0.0)) for k in set(p) | set(q))
    table = pd.crosstab(pd.Series(["train"] * len(train) + ["test"] * len(test)), pd.Series(train + test))
    p_value = float(chi2_contingency(table.to_numpy()).pvalue) if table.shape[1] > 1 else 1.0
    return {"train": p, "test": q, "tvd": float(tvd), "p_value": p_value,
            "shifted": bool(tvd >= SHIFT_TVD and p_value < SHIFT_P)}


def answer_texts(train):
    """The text of each row's right option (the option its answer letter names)."""
    import numpy as np
    import pandas as pd

    from mcvqa import LETTERS

    index = train["answer"].map(LETTERS.index).to_numpy()
    options = train[list(LETTERS)].to_numpy()
    return pd.Series(options[np.arange(len(train)), index], index=train.index)


def answer_balance(train):
    """Letter counts overall and per question type, a chi-square test against uniform, answer texts per type."""
    from scipy.stats import chisquare

    from mcvqa import LETTERS

    counts = {l: int((train["answer"] == l).sum()) for l in LETTERS}
    by_type = {t: {l: int((g["answer"] == l).sum()) for l in LETTERS} for t, g in train.groupby("question_type")}
    texts = {}
    for t, g in train.assign(_text=answer_texts(train)).groupby("question_type"):
        top = g["_text"].str.lower().value_counts(normalize=True).head(5)
        texts[t] = {str(k): float(v) for k, v in top.items()}
    return {"counts": counts, "majority_share": max(counts.values()) / max(sum(counts.values()), 1),
            "chi2_p_value": float(chisquare(list(counts.values())).pvalue) if sum(counts.values()) else None,
            "by_type": by_type, "answer_texts_by_type": texts}


def duplicates(df, split):
    """Repeated questions, repeated (image, question) pairs and, in train, pairs whose answer text disagrees."""
    out = {"rows": len(df), "distinct_questions": int(df["question"].nunique()),
           "rows_with_repeated_question": int(df["question"].duplicated(keep=False).sum()),
           "top_questions": {str(k): int(v) for k, v in df["question"].value_counts().head(5).items() if v > 1},
           "distinct_images": int(df["image"].nunique()),
           "rows_per_image": describe(df["image"].value_counts().tolist()),
           "rows_with_repeated_image_question": int(df.duplicated(["image", "question"], keep=False).sum())}
    if split == "train":
        pairs = df.assign(_text=answer_texts(df).str.strip().str.lower()).groupby(["image", "question"])["_text"].nunique()
        conflicts = pairs[pairs > 1]
        out["conflicting_pairs"] = int(len(conflicts))
        out["conflict_examples"] = [{"image": i, "question": q} for i, q in list(conflicts.index)[:5]]
    return out


def cross_split(train, test):
    """How much of test.csv already appears in train.csv (text on all rows, image paths on all rows)."""
    train_q, train_img = set(train["question"]), set(train["image"])
    train_pairs = set(zip(train["image"], train["question"]))
    n = max(len(test), 1)
    return {"test_questions_in_train": float(test["question"].isin(train_q).sum() / n),
            "test_images_in_train": float(test["image"].isin(train_img).sum() / n),
            "test_image_question_pairs_in_train": float(
                sum((i, q) in train_pairs for i, q in zip(test["image"], test["question"])) / n)}


def text_lengths(df):
    from mcvqa import LETTERS

    options = df[list(LETTERS)]
    return {"question_chars": df["question"].str.len().tolist(),
            "question_words": df["question"].str.split().str.len().tolist(),
            "longest_option_chars": options.apply(lambda col: col.str.len()).max(axis=1).tolist()}


def image_facts(paths):
    """Per distinct image: size as shown (EXIF orientation applied), mode, format, EXIF orientation, bytes and
    content hash. Only the header is decoded; the bytes are read once for the hash."""
    from PIL import Image

    facts = {}
    for path in paths:
        if path in facts:
            continue
        data = Path(path).read_bytes()
        with Image.open(path) as im:
            try:
                orientation = int(im.getexif().get(EXIF_ORIENTATION, 1))
            except Exception:  # noqa: BLE001 - a damaged EXIF block reads as "no orientation"
                orientation = 1
            # Orientations 5-8 turn the image by 90 degrees: a viewer (and Qwen's own loader) shows it W and H swapped.
            width, height = (im.height, im.width) if orientation in (5, 6, 7, 8) else (im.width, im.height)
            facts[path] = {"width": width, "height": height, "mode": im.mode, "format": im.format or "?",
                           "orientation": orientation, "bytes": len(data),
                           "md5": hashlib.md5(data).hexdigest()}
    return facts


def image_tokens(width, height, factor, min_pixels, max_pixels):
    """Image tokens of one image after Qwen's resize: (resized area) / factor^2."""
    from collator import fit_pixels

    h, w = fit_pixels(height, width, factor, min_pixels, max_pixels)
    return (h * w) // (factor * factor)


def image_summary(facts, factor, min_pixels, max_pixels):
    values = list(facts.values())
    by_hash = {}
    for path, f in facts.items():
        by_hash.setdefault(f["md5"], []).append(path)
    return {
        "distinct_images": len(values),
        "width": describe(f["width"] for f in values), "height": describe(f["height"] for f in values),
        "megapixels": describe(f["width"] * f["height"] / 1e6 for f in values),
        "aspect_ratio": describe(f["width"] / f["height"] for f in values),
        "modes": shares(f["mode"] for f in values), "formats": shares(f["format"] for f in values),
        "exif_orientation": shares(f["orientation"] for f in values),
        "rotated_by_exif": int(sum(f["orientation"] not in (0, 1) for f in values)),
        "upscaled": int(sum(f["width"] * f["height"] < min_pixels for f in values)),
        "downscaled": int(sum(f["width"] * f["height"] > max_pixels for f in values)),
        "image_tokens": describe(image_tokens(f["width"], f["height"], factor, min_pixels, max_pixels)
                                 for f in values),
        "identical_content_groups": sum(len(p) > 1 for p in by_hash.values()),
        "paths_in_identical_groups": sum(len(p) for p in by_hash.values() if len(p) > 1),
    }


def token_lengths(collator, rows):
    """Token counts per row, exactly as the training collator builds the row: (total, image, text, prompt).

    `prompt` leaves out the supervised answer tokens a train row ends with, so train and test compare alike.
    """
    totals, images, texts, prompts = [], [], [], []
    for row in rows:
        encoded = collator.encode(row)
        n = len(encoded.input_ids)
        n_image = sum(1 for t in encoded.input_ids if t == collator.image_token_id)
        totals.append(n)
        images.append(n_image)
        texts.append(n - n_image)
        prompts.append(next((i for i, label in enumerate(encoded.labels) if label != -100), n))
    return totals, images, texts, prompts


def budget_table(text_tokens, sizes, factor, min_pixels, budgets):
    """Tokens per row under other pixel budgets: the row's text tokens plus its image's tokens at that budget."""
    table = []
    for budget in budgets:
        lo = min(min_pixels, budget)
        totals = [t + image_tokens(w, h, factor, lo, budget) for t, (w, h) in zip(text_tokens, sizes)]
        d = describe(totals)
        table.append({"max_pixels": budget, "side": int(round(math.sqrt(budget))), "p50": d["p50"],
                      "p99": d["p99"], "max": d["max"]})
    return table


def suggest_max_length(longest):
    """The smallest multiple of 64 that leaves >= 8 tokens of headroom over the longest row."""
    return int(math.ceil((longest + 8) / 64) * 64)


# ----------------------------------------------------------------------------------------- plots


def plots(out, summary, series):
    """One PNG per topic (train and test overlaid where both exist); returns their file names."""
    import matplotlib.pyplot as plt

    from mcvqa import LETTERS
    from mcvqa.report import save_figure

    written = []
    colours = {"train": "tab:blue", "test": "tab:orange"}

    def save(fig, name):
        save_figure(fig, Path(out) / name)
        written.append(name)

    balance = summary["answers"]["by_type"]
    fig, ax = plt.subplots(figsize=(6, 3.5))
    width = 0.8 / max(len(balance), 1)
    for i, (qtype, counts) in enumerate(sorted(balance.items())):
        ax.bar([j + i * width for j in range(4)], [counts[l] for l in LETTERS], width, label=qtype)
    ax.set_xticks([j + 0.4 - width / 2 for j in range(4)], LETTERS)
    ax.set_ylabel("train rows")
    ax.set_title("Answer letter by question type")
    ax.legend(fontsize=8)
    save(fig, "answers.png")

    types = summary["question_types"]
    names = sorted(set(types["train"]) | set(types.get("test") or {}))
    fig, ax = plt.subplots(figsize=(6, 3.5))
    for i, split in enumerate(s for s in ("train", "test") if types.get(s)):
        ax.bar([j + i * 0.4 for j in range(len(names))], [types[split].get(n, 0.0) for n in names], 0.4,
               label=split, color=colours[split])
    ax.set_xticks([j + 0.2 for j in range(len(names))], names, rotation=20)
    ax.set_ylabel("share of rows")
    ax.set_title("Question types")
    ax.legend()
    save(fig, "question_types.png")

    fig, axes = plt.subplots(1, 2, figsize=(10, 3.8))
    for split, s in series.items():
        axes[0].scatter(s["width"], s["height"], s=8, alpha=0.5, label=split, color=colours[split])
        axes[1].hist([math.log2(r) for r in s["aspect"]], bins=30, alpha=0.5, density=True, label=split,
                     color=colours[split])
    axes[0].set_xlabel("width (px)")
    axes[0].set_ylabel("height (px)")
    axes[0].set_title("Image sizes (sampled, distinct images)")
    axes[1].set_xlabel("log2(width / height)")
    axes[1].set_title("Aspect ratios")
    for ax in axes:
        ax.legend()
    save(fig, "images.png")

    fig, axes = plt.subplots(1, 2, figsize=(10, 3.8))
    for split, s in series.items():
        axes[0].hist(s["question_words"], bins=30, alpha=0.5, density=True, label=split, color=colours[split])
        axes[1].hist(s["longest_option_chars"], bins=30, alpha=0.5, density=True, label=split, color=colours[split])
    axes[0].set_xlabel("words per question")
    axes[1].set_xlabel("characters in the longest option")
    for ax in axes:
        ax.legend()
    fig.suptitle("Text lengths (all rows)")
    save(fig, "text_lengths.png")

    if summary.get("tokens"):
        fig, ax = plt.subplots(figsize=(6, 3.5))
        for split, s in series.items():
            ax.hist(s["tokens"], bins=30, alpha=0.5, label=split, color=colours[split])
        limit = summary["tokens"]["max_length"]
        if limit <= 1.5 * max(max(s["tokens"]) for s in series.values()):
            ax.axvline(limit, color="red", linestyle="--", label=f"--max_length {limit}")
        ax.set_xlabel(f"tokens per row (max_pixels {summary['tokens']['max_pixels']})")
        ax.set_ylabel("sampled rows")
        ax.set_title("Sequence lengths as training builds them")
        ax.legend()
        save(fig, "token_lengths.png")
    return written


# ----------------------------------------------------------------------------------------- report


def _fmt(x, digits=3):
    if x is None:
        return "-"
    if isinstance(x, float) and x.is_integer() and abs(x) < 1e15:
        return str(int(x))
    if isinstance(x, float):
        return f"{x:.{digits}f}" if abs(x) < 1e4 else f"{x:,.0f}"
    return str(x)


def _table(header, rows):
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(_fmt(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def render_report(summary, pngs):
    from mcvqa import LETTERS

    s, a = summary, summary["answers"]
    has_test = s["rows"].get("test") is not None
    if has_test:
        rows = (f"train.csv: {s['rows']['train']} rows; test.csv: {s['rows']['test']} rows. Image statistics and "
                f"token lengths use a seeded sample of {s['sampled']['train']} train / {s['sampled']['test']} test rows")
    else:
        rows = (f"train.csv: {s['rows']['train']} rows; no test.csv, so no train/test comparison. Image statistics "
                f"and token lengths use a seeded sample of {s['sampled']['train']} rows")
    out = [f"# Data report: {s['data_dir']}", "", rows + "; text statistics use every row.", ""]

    out += ["## Answer letters (train)", "",
            _table(["", *LETTERS, "majority share"],
                   [["all", *[a["counts"][l] for l in LETTERS], a["majority_share"]]]
                   + [[t, *[c[l] for l in LETTERS], max(c.values()) / max(sum(c.values()), 1)]
                      for t, c in sorted(a["by_type"].items())]), "",
            f"Chi-square against a uniform a-d: p = {_fmt(a['chi2_p_value'], 4)}. A letter much above 25 % is a "
            "position prior the model can learn instead of the image; `--shuffle_choices` removes it in training.", "",
            "Most frequent answer texts per question type (a text prior the model can learn without the image):", ""]
    for t, texts in sorted(a["answer_texts_by_type"].items()):
        out.append(f"- {t}: " + ", ".join(f"{k!r} {v:.0%}" for k, v in texts.items()))
    out.append("")

    qt = s["question_types"]
    out += ["## Question types", "",
            _table(["type", "train share"] + ["test share"] * has_test,
                   [[t, qt["train"].get(t, 0.0)] + ([qt["test"].get(t, 0.0)] if has_test else [])
                    for t in sorted(set(qt["train"]) | set(qt.get("test") or {}))]), ""]

    out += ["## Duplicates", ""]
    rows = []
    for split in ("train", "test"):
        d = s["duplicates"].get(split)
        if d:
            rows.append([split, d["rows"], d["distinct_questions"], d["rows_with_repeated_question"],
                         d["distinct_images"], d["rows_per_image"].get("max"),
                         d["rows_with_repeated_image_question"], d.get("conflicting_pairs")])
    out += [_table(["split", "rows", "distinct questions", "rows with a repeated question", "distinct images",
                    "most rows on one image", "rows repeating an (image, question)",
                    "(image, question) with different answers"], rows), ""]
    if s["duplicates"]["train"].get("conflict_examples"):
        out.append("Conflicting labels (same image and question, different answer text), first ones: "
                   + "; ".join(f"{e['image']} / {e['question']!r}" for e in s["duplicates"]["train"]["conflict_examples"]))
        out.append("")
    if s.get("cross_split"):
        c = s["cross_split"]
        out += [f"test rows whose question text is in train: {c['test_questions_in_train']:.1%}; whose image path "
                f"is in train: {c['test_images_in_train']:.1%}; whose (image, question) pair is in train: "
                f"{c['test_image_question_pairs_in_train']:.1%}. Identical image files (by content) among the "
                f"sampled images of both splits: {s['images_shared_by_content']} (a lower bound: only sampled "
                "images are hashed).", ""]

    out += ["## Images (sampled, distinct)", ""]
    rows = []
    for split in ("train", "test"):
        im = s["images"].get(split)
        if im:
            rows.append([split, im["distinct_images"], f"{_fmt(im['width']['p50'], 0)}x{_fmt(im['height']['p50'], 0)}",
                         im["width"]["min"], im["width"]["max"], im["height"]["min"], im["height"]["max"],
                         im["aspect_ratio"]["p50"], ", ".join(f"{k} {v:.0%}" for k, v in im["modes"].items()),
                         im["rotated_by_exif"], im["identical_content_groups"]])
    out += [_table(["split", "images", "median WxH", "min W", "max W", "min H", "max H", "median W/H", "modes",
                    "EXIF-rotated", "groups of identical files"], rows), ""]
    im = s["images"]["train"]
    out += [f"Under --min_pixels {s['min_pixels']} / --max_pixels {s['max_pixels']} (factor {s['factor']}): "
            f"{im['upscaled']} train images are upscaled, {im['downscaled']} downscaled; image tokens per image "
            f"p50 {_fmt(im['image_tokens']['p50'], 0)}, max {_fmt(im['image_tokens']['max'], 0)}. "
            "Sizes are as a viewer shows the images (EXIF orientation applied); EXIF-rotated images are stored "
            "sideways and need that rotation applied when read. Modes other than RGB are converted to RGB.", ""]

    out += ["## Text lengths (all rows)", "",
            _table(["split", "question words p50", "p99", "max", "longest option chars p50", "p99", "max"],
                   [[split, t["question_words"]["p50"], t["question_words"]["p99"], t["question_words"]["max"],
                     t["longest_option_chars"]["p50"], t["longest_option_chars"]["p99"],
                     t["longest_option_chars"]["max"]] for split, t in s["text"].items()]), ""]

    tok = s.get("tokens")
    if tok:
        out += [f"## Tokens per row ({tok['model']}, max_pixels {tok['max_pixels']})", "",
                "Counted by the training collator (MCVQACollator.encode): prompt, image tokens and, for train "
                "rows, the answer.", "",
                _table(["split", "p50", "p90", "p99", "max", "image tokens p50", "text tokens p50",
                        f"rows over --max_length {tok['max_length']}"],
                       [[split, d["total"]["p50"], d["total"]["p90"], d["total"]["p99"], d["total"]["max"],
                         d["image"]["p50"], d["text"]["p50"], d["over_max_length"]]
                        for split, d in tok["splits"].items()]), "",
                f"Suggested `--max_length {tok['suggested_max_length']}` (the longest sampled row plus headroom). "
                "Tokens per row under other pixel budgets (train sample; text tokens plus the image's tokens):", "",
                _table(["--max_pixels", "about", "p50", "p99", "max"],
                       [[b["max_pixels"], f"{b['side']}x{b['side']}", b["p50"], b["p99"], b["max"]]
                        for b in tok["budgets"]]), ""]

    shift = s.get("shift")
    if shift:
        out += ["## Train/test shift", "",
                f"Numbers: Kolmogorov-Smirnov D (shifted when D >= {SHIFT_D} and p < {SHIFT_P}); categories: total "
                f"variation distance (shifted when >= {SHIFT_TVD}). A shifted feature means the OOF score may not "
                "predict the test score.", "",
                _table(["feature", "train", "test", "statistic", "p", "shifted"],
                       [[k, v.get("train_median"), v.get("test_median"),
                         v.get("ks_d", v.get("tvd")), _fmt(v.get("p_value"), 4), "yes" if v["shifted"] else "no"]
                        for k, v in shift.items() if v]), ""]
    out += ["## Plots", ""] + [f"![{p}]({p})" for p in pngs] + [""]
    return "\n".join(out)


# ----------------------------------------------------------------------------------------- main


def sample(df, max_rows, seed):
    return df if not max_rows or len(df) <= max_rows else df.sample(n=max_rows, random_state=seed)


def check_args(args):
    problems = []
    if args.max_rows < 0:
        problems.append(f"--max_rows {args.max_rows}: must be 0 (all rows) or positive")
    if args.min_pixels <= 0 or args.max_pixels <= 0:
        problems.append("--min_pixels and --max_pixels must be positive")
    elif args.min_pixels > args.max_pixels:
        problems.append(f"--min_pixels {args.min_pixels} is above --max_pixels {args.max_pixels}")
    if args.max_length <= 0:
        problems.append(f"--max_length {args.max_length}: must be positive")
    out = Path(args.out)
    if out.exists() and not out.is_dir():
        problems.append(f"--out {out}: exists and is not a folder")
    collect(problems, "invalid arguments:")


def analyse(args):
    """Every statistic of the report as one JSON-able dict, plus the per-row series the plots need."""
    from mcvqa.data import load_split

    data_dir = Path(args.data_dir)
    splits = {"train": load_split(data_dir, "train")}
    if (data_dir / "test.csv").exists():
        splits["test"] = load_split(data_dir, "test")
    sampled = {k: sample(df, args.max_rows, args.seed) for k, df in splits.items()}

    collator = None
    factor = DEFAULT_FACTOR
    if args.model_name_or_path:
        from collator import MCVQACollator, resize_factor
        from mcvqa.modeling import check_model_folder, load_processor

        check_model_folder(args.model_name_or_path, args.trust_remote_code)
        processor = load_processor(args.model_name_or_path, args.min_pixels, args.max_pixels, args.trust_remote_code)
        factor = resize_factor(processor.image_processor)
        # No image cache: a 2,000-row sample at 448x448 would hold gigabytes of pixel tensors.
        collator = MCVQACollator(processor, min_pixels=args.min_pixels, max_pixels=args.max_pixels,
                                 template=args.prompt_template, cache_images=False)

    summary = {"data_dir": str(data_dir), "rows": {"train": len(splits["train"]), "test": None},
               "sampled": {k: len(v) for k, v in sampled.items()}, "min_pixels": args.min_pixels,
               "max_pixels": args.max_pixels, "factor": factor,
               "answers": answer_balance(splits["train"]),
               "question_types": {k: shares(df["question_type"]) for k, df in splits.items()},
               "duplicates": {k: duplicates(df, k) for k, df in splits.items()},
               "images": {}, "text": {}}
    series = {}
    facts = {}
    for split, df in splits.items():
        summary["rows"][split] = len(df)
        facts[split] = image_facts(sampled[split]["image"])
        summary["images"][split] = image_summary(facts[split], factor, args.min_pixels, args.max_pixels)
        lengths = text_lengths(df)
        summary["text"][split] = {k: describe(v) for k, v in lengths.items()}
        values = list(facts[split].values())
        series[split] = {**lengths, "width": [f["width"] for f in values], "height": [f["height"] for f in values],
                         "aspect": [f["width"] / f["height"] for f in values],
                         "pixels": [f["width"] * f["height"] for f in values],
                         "mode": [f["mode"] for f in values], "orientation": [f["orientation"] for f in values]}

    if collator is not None:
        tokens = {"model": args.model_name_or_path, "max_pixels": args.max_pixels, "max_length": args.max_length,
                  "splits": {}}
        for split, df in sampled.items():
            # Train rows carry their answer (as training sees them); test rows end at the generation prompt.
            collator.train = split == "train"
            totals, images, texts, prompts = token_lengths(collator, df.to_dict("records"))
            series[split].update(tokens=totals, text_tokens=texts, prompt_tokens=prompts)
            tokens["splits"][split] = {"total": describe(totals), "image": describe(images), "text": describe(texts),
                                       "over_max_length": int(sum(t > args.max_length for t in totals))}
        longest = max(d["total"]["max"] for d in tokens["splits"].values())
        tokens["suggested_max_length"] = suggest_max_length(longest)
        train_sizes = [(facts["train"][p]["width"], facts["train"][p]["height"]) for p in sampled["train"]["image"]]
        budgets = sorted(set(BUDGETS) | {args.max_pixels})
        tokens["budgets"] = budget_table(series["train"]["text_tokens"], train_sizes, factor, args.min_pixels, budgets)
        summary["tokens"] = tokens

    if "test" in splits:
        train, test = splits["train"], splits["test"]
        summary["cross_split"] = cross_split(train, test)
        train_hashes = {f["md5"] for f in facts["train"].values()}
        summary["images_shared_by_content"] = int(sum(f["md5"] in train_hashes for f in facts["test"].values()))
        st, ss = series["train"], series["test"]
        shift = {"question_type": categorical_shift(train["question_type"], test["question_type"])}
        for key in ("question_words", "question_chars", "longest_option_chars", "width", "height", "aspect",
                    "pixels", "prompt_tokens"):
            if key in st and key in ss:
                shift[key] = numeric_shift(st[key], ss[key])
        shift["image_mode"] = categorical_shift(st["mode"], ss["mode"])
        shift["exif_orientation"] = categorical_shift(st["orientation"], ss["orientation"])
        summary["shift"] = shift
    return summary, series


@report_user_errors
def main(argv=None):
    """Run the analysis and write OUT/report.md, OUT/summary.json and the PNGs; returns the summary."""
    from mcvqa.io import write_json, write_text

    with argument_errors():
        args, _given = parse_args(EDAArguments, argv)
    check_args(args)
    summary, series = analyse(args)
    out = Path(args.out)
    pngs = plots(out, summary, series)
    summary["plots"] = pngs
    write_json(out / "summary.json", summary)
    write_text(out / "report.md", render_report(summary, pngs))
    tok = summary.get("tokens")
    line = f"eda: {summary['rows']['train']} train rows"
    if summary["rows"].get("test") is not None:
        shifted = [k for k, v in summary.get("shift", {}).items() if v and v["shifted"]]
        line += f", {summary['rows']['test']} test rows; shifted: {', '.join(shifted) or 'nothing'}"
    if tok:
        longest = max(d["total"]["max"] for d in tok["splits"].values())
        line += f"; longest row {longest:.0f} tokens (suggested --max_length {tok['suggested_max_length']})"
    print(line)
    print(f"report: {out / 'report.md'}")
    return summary


if __name__ == "__main__":
    main()
