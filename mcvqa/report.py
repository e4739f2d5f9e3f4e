"""PNG plots + a short markdown summary for one fold (OOF + training curves) or for the ensemble.

matplotlib runs with the Agg backend (no display needed). Every PNG is written atomically: saved to a
temporary file in the same folder, then renamed over the final name.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from mcvqa import LETTERS  # noqa: E402
from mcvqa.errors import UserError  # noqa: E402
from mcvqa.io import write_text  # noqa: E402
from mcvqa.metrics import (N_BINS, accuracy, accuracy_by_type, expected_calibration_error, letters_to_indices,  # noqa: E402
                           log_loss, reliability_bins)


# --------------------------------------------------------------------------------------------------
# Plot writers (each returns the PNG path)
# --------------------------------------------------------------------------------------------------


def save_figure(fig, path):
    """Save `fig` as PNG atomically (temp file in the same folder, then os.replace) and close it."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp.png", dir=path.parent)
    os.close(fd)
    try:
        fig.savefig(tmp, format="png", dpi=110, bbox_inches="tight")
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    finally:
        plt.close(fig)
    return path


def plot_confusion(labels, preds, path, title="Confusion matrix"):
    from sklearn.metrics import confusion_matrix

    m = confusion_matrix(labels, preds, labels=list(range(len(LETTERS))))
    fig, ax = plt.subplots(figsize=(4.6, 4))
    im = ax.imshow(m, cmap="Blues")
    ax.set_xticks(range(len(LETTERS)), LETTERS)
    ax.set_yticks(range(len(LETTERS)), LETTERS)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true answer")
    acc = np.trace(m) / max(m.sum(), 1)
    ax.set_title(f"{title}\naccuracy {acc:.3f} on {m.sum()} rows")
    threshold = m.max() / 2 if m.max() else 0.5
    for i in range(m.shape[0]):
        for j in range(m.shape[1]):
            ax.text(j, i, str(m[i, j]), ha="center", va="center", color="white" if m[i, j] > threshold else "black")
    fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04)
    return save_figure(fig, path)


def plot_reliability(curves, labels, path, title="Reliability diagram"):
    """`curves`: dict name -> probs (n, 4). One line per curve plus the diagonal and a count histogram."""
    fig, (ax, axh) = plt.subplots(2, 1, figsize=(5, 5.6), gridspec_kw={"height_ratios": [3, 1]}, sharex=True)
    ax.plot([0, 1], [0, 1], ls="--", color="grey", lw=1, label="perfectly calibrated")
    width = 1.0 / N_BINS / max(len(curves), 1)
    for k, (name, probs) in enumerate(curves.items()):
        mean_conf, acc, count, ece = reliability_bins(probs, labels)
        filled = count > 0
        line, = ax.plot(mean_conf[filled], acc[filled], alpha=0.8,
                        label=f"{name} (ECE {ece:.3f}, log-loss {log_loss(probs, labels):.3f})")
        # marker area grows with the bin's row count: sparse bins are visibly less trustworthy
        ax.scatter(mean_conf[filled], acc[filled], s=15 + 150 * np.sqrt(count[filled] / count.max()),
                   color=line.get_color(), alpha=0.8, zorder=3)
        centers = (np.arange(N_BINS) + 0.5) / N_BINS
        axh.bar(centers - 0.5 / N_BINS + (k + 0.5) * width, count, width=width, alpha=0.7, label=name)
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1.02)
    ax.set_ylabel("accuracy")
    ax.set_title(title)
    ax.legend(fontsize=7, loc="upper left")
    axh.set_xlabel("confidence (max probability)")
    axh.set_ylabel("rows")
    return save_figure(fig, path)


def plot_accuracy_by_type(question_types, labels, preds, path, title="Accuracy by question type"):
    table = accuracy_by_type(question_types, labels, preds).sort_values("accuracy")
    fig, ax = plt.subplots(figsize=(6, 0.45 * len(table) + 1.5))
    bars = ax.barh([str(t) for t in table.index], table["accuracy"], color="tab:blue")
    for bar, (acc, n) in zip(bars, table.itertuples(index=False)):
        ax.text(min(bar.get_width() + 0.01, 0.9), bar.get_y() + bar.get_height() / 2, f"{acc:.3f} (n={n})",
                va="center", fontsize=8)
    overall = float(np.mean(np.asarray(labels) == np.asarray(preds)))
    ax.axvline(overall, color="grey", ls="--", lw=1, label=f"overall {overall:.3f}")
    ax.set_xlim(0, 1.05)
    ax.set_xlabel("accuracy")
    ax.set_title(title)
    ax.legend(fontsize=8, loc="lower right")
    return save_figure(fig, path)


def plot_training_curves(log_history, path, title="Training curves"):
    """Train loss and eval loss vs step (left), eval accuracy / log-loss vs step (right). None if nothing to plot."""

    def series(key):
        pts = [(e["step"], e[key]) for e in log_history if key in e and "step" in e and e[key] is not None]
        return ([s for s, _ in pts], [v for _, v in pts]) if pts else None

    loss, eval_loss = series("loss"), series("eval_loss")
    eval_acc, eval_ll = series("eval_accuracy"), series("eval_log_loss")
    if not any([loss, eval_loss, eval_acc, eval_ll]):
        return None
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 3.8))
    if loss:
        ax1.plot(*loss, label="train loss", alpha=0.8)
    if eval_loss:
        ax1.plot(*eval_loss, marker="o", label="eval loss")
    ax1.set_xlabel("step")
    ax1.set_ylabel("loss")
    ax1.set_title("loss")
    ax1.legend(fontsize=8)
    if eval_acc:
        ax2.plot(*eval_acc, marker="o", color="tab:green", label="eval accuracy")
        ax2.set_ylabel("accuracy")
    if eval_ll:
        ax2b = ax2.twinx()
        ax2b.plot(*eval_ll, marker="s", color="tab:red", alpha=0.7, label="eval log-loss")
        ax2b.set_ylabel("log-loss")
        ax2b.legend(fontsize=8, loc="upper right")
    if eval_acc:
        ax2.legend(fontsize=8, loc="lower right")
    ax2.set_xlabel("step")
    ax2.set_title("evaluation")
    fig.suptitle(title)
    return save_figure(fig, path)


def plot_model_scores(per_model_scores, path, title="Per-model OOF scores"):
    names = [n for n, s in per_model_scores.items() if s.get("accuracy") is not None]
    if not names:
        return None
    acc = [per_model_scores[n]["accuracy"] for n in names]
    ll = [per_model_scores[n].get("log_loss", np.nan) for n in names]
    ll_cal = [per_model_scores[n].get("log_loss_calibrated", np.nan) for n in names]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 0.5 * len(names) + 2))
    y = np.arange(len(names))
    labels = [f"{n}\n(w={per_model_scores[n]['weight']:.2f})" if "weight" in per_model_scores[n] else n for n in names]
    ax1.barh(y, acc, color="tab:blue")
    for yi, a in zip(y, acc):
        ax1.text(a + 0.01, yi, f"{a:.3f}", va="center", fontsize=8)
    ax1.set_yticks(y, labels, fontsize=8)
    ax1.set_xlim(0, 1.1)
    ax1.set_xlabel("OOF accuracy (higher is better)")
    h = 0.4
    ax2.barh(y - h / 2, ll, height=h, color="tab:orange", label="raw")
    if not np.all(np.isnan(ll_cal)):
        ax2.barh(y + h / 2, ll_cal, height=h, color="tab:green", label="temperature-scaled")
    ax2.set_yticks(y, [""] * len(names))
    ax2.set_xlabel("OOF log-loss (lower is better)")
    ax2.legend(fontsize=8)
    fig.suptitle(title)
    return save_figure(fig, path)


# --------------------------------------------------------------------------------------------------
# Reports
# --------------------------------------------------------------------------------------------------


def _md_image(title, path, out_dir):
    return f"### {title}\n\n![{title}]({Path(path).relative_to(out_dir).as_posix()})\n"


def _type_table(question_types, labels, preds):
    table = accuracy_by_type(question_types, labels, preds)
    lines = ["| question type | rows | accuracy |", "|---|---:|---:|"]
    lines += [f"| {t} | {int(r['rows'])} | {r['accuracy']:.4f} |" for t, r in table.iterrows()]
    return "\n".join(lines) + "\n"


def write_fold_report(fold_dir) -> Path:
    """Plots + report.md for one fold from its out-of-fold file (`mcvqa.runs.oof_file`: the same one the
    ensemble reads) and trainer_state.json.

    Writes fold_dir/report/{confusion,reliability,accuracy_by_type,training_curves}.png (the last two only when
    there is a question_type column / a trainer_state.json with logs) and report.md; returns report.md's path.
    """
    fold_dir = Path(fold_dir)
    from mcvqa.runs import oof_file

    oof_path = oof_file(fold_dir)
    if oof_path is None:
        raise UserError(f"{fold_dir}: no oof.csv to report on (train the fold with a validation split: "
                        "train_lora.py --fold K, not --fold -1)")
    df = pd.read_csv(oof_path, dtype={"id": str, "answer": str, "question_type": str}, keep_default_na=False)
    missing = [c for c in ("id", *LETTERS, "answer") if c not in df.columns]
    if missing:
        raise UserError(f"{oof_path}: missing column(s) {', '.join(missing)}")
    try:
        labels = letters_to_indices(df["answer"])
    except UserError as err:
        raise UserError(f"{oof_path}: {err}") from None
    probs = df[list(LETTERS)].to_numpy(dtype=float)
    preds = probs.argmax(axis=1)
    out = fold_dir / "report"
    out.mkdir(parents=True, exist_ok=True)

    acc, ll = accuracy(probs, labels), log_loss(probs, labels)
    ece = expected_calibration_error(probs, labels)
    sections = [_md_image("Confusion matrix", plot_confusion(labels, preds, out / "confusion.png",
                                                             title=f"{fold_dir.parent.name}/{fold_dir.name}"), out)]
    sections.append(_md_image("Reliability", plot_reliability({"OOF": probs}, labels, out / "reliability.png"), out))
    if "question_type" in df.columns:
        png = plot_accuracy_by_type(df["question_type"], labels, preds, out / "accuracy_by_type.png")
        sections.append(_md_image("Accuracy by question type", png, out) + "\n" +
                        _type_table(df["question_type"], labels, preds))

    train_lines = []
    state_path = fold_dir / "trainer_state.json"
    if state_path.is_file():
        try:
            state = json.loads(state_path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as err:
            raise UserError(f"{state_path}: could not read: {err}") from None
        history = state.get("log_history") or []
        png = plot_training_curves(history, out / "training_curves.png",
                                   title=f"{fold_dir.parent.name}/{fold_dir.name}")
        if png:
            sections.append(_md_image("Training curves", png, out))
        evals = [e for e in history if "eval_loss" in e]
        if evals:
            best = min(evals, key=lambda e: e["eval_loss"])
            train_lines.append(f"- best eval loss {best['eval_loss']:.4f} at step {best.get('step')}"
                               + (f" (eval accuracy {best['eval_accuracy']:.4f})" if "eval_accuracy" in best else ""))
        if state.get("global_step") is not None:
            train_lines.append(f"- trained {state['global_step']} steps, {state.get('epoch', 0):.2f} epochs")

    dist_true = np.bincount(labels, minlength=len(LETTERS))
    dist_pred = np.bincount(preds, minlength=len(LETTERS))
    summary = [
        f"# Fold report: {fold_dir.parent.name}/{fold_dir.name}",
        "",
        f"Source: `{oof_path.name}` ({len(df)} rows)",
        "",
        f"- accuracy **{acc:.4f}**",
        f"- log-loss **{ll:.4f}**",
        f"- expected calibration error {ece:.4f}",
        "- answers (true): " + ", ".join(f"{l}={n}" for l, n in zip(LETTERS, dist_true)),
        "- answers (predicted): " + ", ".join(f"{l}={n}" for l, n in zip(LETTERS, dist_pred)),
        *train_lines,
        "",
    ]
    return write_text(out / "report.md", "\n".join(summary) + "\n" + "\n".join(sections))


def write_ensemble_report(out_dir, ids, labels, probs_before, probs_after, question_types=None,
                          per_model_scores=None) -> Path:
    """Plots + report.md for the ensemble's OOF blend; returns report.md's path.

    `probs_before` / `probs_after`: (n, 4) blend of the OOF rows `ids` without / with temperature scaling;
    `labels`: ints 0-3; `per_model_scores`: name -> {accuracy, log_loss[, log_loss_calibrated, temperature, weight]}.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    labels = np.asarray(labels, dtype=int)
    before = np.asarray(probs_before, dtype=float)
    after = np.asarray(probs_after, dtype=float)
    if not (len(ids) == len(labels) == len(before) == len(after)):
        raise ValueError("ids, labels, probs_before and probs_after must have the same length")
    preds = after.argmax(axis=1)
    sections = [
        _md_image("Confusion matrix (blend, OOF)", plot_confusion(labels, preds, out / "confusion.png",
                                                                  title="Ensemble (OOF)"), out),
        _md_image("Reliability before / after temperature scaling",
                  plot_reliability({"before temperature": before, "after temperature": after}, labels,
                                   out / "reliability.png"), out),
    ]
    if question_types is not None:
        png = plot_accuracy_by_type(question_types, labels, preds, out / "accuracy_by_type.png",
                                    title="Ensemble accuracy by question type (OOF)")
        sections.append(_md_image("Accuracy by question type", png, out) + "\n" +
                        _type_table(question_types, labels, preds))
    model_lines = []
    if per_model_scores:
        png = plot_model_scores(per_model_scores, out / "models.png")
        if png:
            sections.append(_md_image("Per-model OOF scores", png, out))
        model_lines = ["| model | folds | OOF accuracy | OOF log-loss | temperature | calibrated log-loss | weight |",
                       "|---|---:|---:|---:|---:|---:|---:|"]

        def fmt(v, spec=".4f"):
            return "" if v is None else format(v, spec)

        for name, s in per_model_scores.items():
            model_lines.append(f"| {name} | {s.get('folds', '')} | {fmt(s.get('accuracy'))} | {fmt(s.get('log_loss'))} | "
                               f"{fmt(s.get('temperature'), '.3f')} | {fmt(s.get('log_loss_calibrated'))} | "
                               f"{fmt(s.get('weight'), '.3f')} |")
        model_lines.append("")
    summary = [
        "# Ensemble report",
        "",
        f"Out-of-fold rows common to all models: {len(ids)}",
        "",
        f"- blend accuracy **{accuracy(after, labels):.4f}**",
        f"- blend log-loss **{log_loss(after, labels):.4f}** (before temperature scaling {log_loss(before, labels):.4f})",
        f"- expected calibration error {expected_calibration_error(after, labels):.4f} "
        f"(before {expected_calibration_error(before, labels):.4f})",
        "",
        *model_lines,
    ]
    return write_text(out / "report.md", "\n".join(summary) + "\n" + "\n".join(sections))
