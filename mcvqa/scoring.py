"""The one scoring function: a/b/c/d logits at the answer position, shared by Trainer evaluation,
out-of-fold writing and predict.py. No `generate()`, no full-vocabulary logits over the sequence.
"""

import math
import sys

import numpy as np
import torch

from mcvqa.tta import to_original, view_order

MODEL_KEYS = ("input_ids", "attention_mask", "pixel_values", "image_grid_thw", "mm_token_type_ids", "position_ids")


def answer_logits(model, batch, n_positions=1):
    """Vocabulary logits at the answer position (and the `n_positions - 1` after it): (B, n_positions, V).

    The language-model head runs only there (`logits_to_keep`); the model is called through its own
    forward so DDP, peft and gradient checkpointing see an ordinary call.
    """
    start = int(batch["answer_index"][0])
    keep = torch.arange(start, start + n_positions, device=batch["input_ids"].device)
    inputs = {k: batch[k] for k in MODEL_KEYS if k in batch}
    return model(**inputs, logits_to_keep=keep, use_cache=False).logits


def letter_logits(logits, letter_ids):
    """(B, V) vocabulary logits -> (B, 4): each option letter's variants folded by log-sum-exp."""
    return torch.stack([torch.logsumexp(logits[:, ids].float(), dim=-1) for ids in letter_ids], dim=-1)


def target_letters(batch, letter_ids):
    """The supervised answer as 0-3 per row, or -100 where a row has no answer."""
    if "labels" not in batch:
        return torch.full((batch["input_ids"].shape[0],), -100, dtype=torch.long, device=batch["input_ids"].device)
    at = int(batch["answer_index"][0]) + 1
    token = batch["labels"][:, at]
    out = torch.full_like(token, -100)
    for k, ids in enumerate(letter_ids):
        out[torch.isin(token, torch.tensor(ids, device=token.device))] = k
    return out


def score_batch(model, batch, letter_ids):
    """(B, 4) letter logits for a batch; the shared scoring step."""
    return letter_logits(answer_logits(model, batch)[:, 0], letter_ids)


def softmax(x):
    x = np.asarray(x, dtype=np.float64)
    e = np.exp(x - x.max(1, keepdims=True))
    return e / e.sum(1, keepdims=True)


def _move(batch, device):
    return {k: v.to(device, non_blocking=True) if torch.is_tensor(v) else v for k, v in batch.items()}


def predict_probs(model, collator, rows, letter_ids, views, batch_size=16, device=None, dtype=None,
                  progress=True, desc="scoring"):
    """Probabilities over a/b/c/d (original order) for each view: {view name: (n, 4) array}.

    Rows are scored in batches sorted by length (little padding); the next batch is collated on a
    background thread while the GPU scores this one (image decoding and resizing release the GIL); on
    CUDA out-of-memory the batch size halves and the batch is retried.
    """
    from concurrent.futures import ThreadPoolExecutor

    from tqdm.auto import tqdm

    device = device or next(model.parameters()).device
    lengths = [len(collator.encode(r).input_ids) for r in rows]
    order = np.argsort(lengths, kind="stable")
    results = {}
    total = len(views) * len(rows)
    bar = tqdm(total=total, desc=desc, disable=not progress, file=sys.stderr, dynamic_ncols=True)
    model.eval()
    pin = device.type == "cuda"

    def prepared(chunk, view):
        batch = collator(chunk, view=view)
        # Pinned host memory: the copy to the GPU is asynchronous instead of waiting for the GPU to drain.
        return {k: v.pin_memory() if pin and torch.is_tensor(v) else v for k, v in batch.items()}

    with ThreadPoolExecutor(max_workers=1) as pool:
        def collate(view, start, size):
            idx = order[start: start + size]
            return start, size, idx, pool.submit(prepared, [rows[j] for j in idx], view)

        for name, view in views.items():
            probs = np.zeros((len(rows), 4))
            i = 0
            job = collate(view, 0, batch_size)
            while i < len(rows):
                if job is None or job[:2] != (i, batch_size):  # the batch size changed after an OOM
                    job = collate(view, i, batch_size)
                _, _, idx, future = job
                batch = future.result()
                following = i + len(idx)
                job = collate(view, following, batch_size) if following < len(rows) else None
                try:
                    batch = _move(batch, device)
                    if dtype is not None and "pixel_values" in batch:
                        batch["pixel_values"] = batch["pixel_values"].to(dtype)
                    with torch.inference_mode(), torch.autocast(device.type, dtype=dtype or torch.float32,
                                                                enabled=dtype is not None and device.type == "cuda"):
                        shown = torch.softmax(score_batch(model, batch, letter_ids), -1).cpu().numpy()
                except torch.cuda.OutOfMemoryError:
                    if batch_size == 1:
                        raise
                    batch = None  # its GPU copy must go before the cache is emptied
                    batch_size = max(1, batch_size // 2)
                    torch.cuda.empty_cache()
                    print(f"out of memory: retrying with --batch_size {batch_size}", file=sys.stderr)
                    continue
                for r, j in enumerate(idx):
                    probs[j] = to_original(shown[r: r + 1], view_order(view(rows[j])))[0]
                i = following
                bar.update(len(idx))
            results[name] = probs
    bar.close()
    return results


def log_loss(probs, labels):
    probs = np.clip(np.asarray(probs, dtype=np.float64), 1e-15, 1.0)
    return float(-np.mean(np.log(probs[np.arange(len(labels)), labels])))


def metrics_from_logits(logits, labels, question_types=None):
    """Accuracy and log-loss over a/b/c/d (rows without an answer ignored), and accuracy per question type."""
    logits = np.asarray(logits)
    labels = np.asarray(labels)
    keep = labels >= 0
    probs = softmax(logits[keep])
    labels = labels[keep]
    pred = probs.argmax(1)
    out = {"accuracy": float((pred == labels).mean()) if len(labels) else math.nan,
           "log_loss": log_loss(probs, labels) if len(labels) else math.nan}
    if question_types is not None and len(question_types) == len(keep):
        types = np.asarray(question_types)[keep]
        for t in sorted(set(types)):
            m = types == t
            out[f"accuracy_{t.replace('/', '_').replace(' ', '_')}"] = float((pred[m] == labels[m]).mean())
    return out
