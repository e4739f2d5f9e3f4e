"""The one scoring function: a/b/c/d logits at the answer position, shared by Trainer evaluation,
out-of-fold writing and predict.py. No `generate()`, no full-vocabulary logits over the sequence.
"""

import sys

import numpy as np
import torch

from mcvqa.tta import to_original, view_order

MODEL_KEYS = ("input_ids", "attention_mask", "pixel_values", "image_grid_thw", "mm_token_type_ids", "position_ids")


def answer_position(batch):
    """The answer index shared by the batch's rows, as an int: the collator's host copy when there is one (reading
    the device tensor makes the host wait for every queued kernel), else from `answer_index`."""
    at = batch.get("answer_position")
    return int(batch["answer_index"][0]) if at is None else int(at)


def answer_logits(model, batch, n_positions=1):
    """Vocabulary logits at the answer position (and the `n_positions - 1` after it): (B, n_positions, V).

    The language-model head runs only there (`logits_to_keep`); the model is called through its own
    forward so DDP, peft and gradient checkpointing see an ordinary call.
    """
    start = answer_position(batch)
    # The answer sits within the last few positions (left padding; at most the letter and <|im_end|> follow it):
    # keeping the tail by count computes one or two positions more than needed, but passes no index tensor, which
    # a model placed over several GPUs (--device_map) would move to the first GPU and use on the last one's states.
    inputs = {k: batch[k] for k in MODEL_KEYS if k in batch}
    tail = batch["input_ids"].shape[1] - start
    return model(**inputs, logits_to_keep=tail, use_cache=False).logits[:, :n_positions]


_LETTER_INDEX = {}


def letter_index(letter_ids, device):
    """(4, W) token ids of each letter's variants (repeated to the widest) and a (4, W) 0/-inf mask, on `device`,
    made once: indexing with a Python list copies it to the GPU from pageable memory, a stream sync per batch."""
    key = (tuple(tuple(v) for v in letter_ids), str(device))
    found = _LETTER_INDEX.get(key)
    if found is None:
        width = max(len(v) for v in letter_ids)
        # Normal tensors even when first made under predict's inference_mode: training saves the index for backward.
        with torch.inference_mode(False):
            index = torch.tensor([list(v) + [v[0]] * (width - len(v)) for v in letter_ids], dtype=torch.long)
            mask = torch.tensor([[0.0] * len(v) + [float("-inf")] * (width - len(v)) for v in letter_ids])
            found = _LETTER_INDEX[key] = (index.to(device), mask.to(device))
    return found


def letter_logits(logits, letter_ids):
    """(B, V) vocabulary logits -> (B, 4): each option letter's variants folded by log-sum-exp."""
    index, mask = letter_index(letter_ids, logits.device)
    return torch.logsumexp(logits[:, index].float() + mask, dim=-1)


def target_letters(batch, letter_ids):
    """The supervised answer as 0-3 per row, or -100 where a row has no answer."""
    if "labels" not in batch:
        return torch.full((batch["input_ids"].shape[0],), -100, dtype=torch.long, device=batch["input_ids"].device)
    token = batch["labels"][:, answer_position(batch) + 1]
    index, _ = letter_index(letter_ids, token.device)
    hit = token[:, None, None] == index  # (B, 4, W)
    return torch.where(hit.any(-1).any(-1), hit.any(-1).long().argmax(-1), torch.full_like(token, -100))


def score_batch(model, batch, letter_ids):
    """(B, 4) letter logits for a batch; the shared scoring step."""
    return letter_logits(answer_logits(model, batch)[:, 0], letter_ids)


def _move(batch, device):
    return {k: v.to(device, non_blocking=True) if torch.is_tensor(v) else v for k, v in batch.items()}


def predict_probs(model, collator, rows, letter_ids, views, batch_size=16, device=None, dtype=None,
                  progress=True, desc="scoring", share_prefix=True):
    """Probabilities over a/b/c/d (original order) for each view: {view name: (n, 4) array}.

    Rows are scored in batches sorted by length (little padding); the next batch is collated on a
    background thread while the GPU scores this one (image decoding and resizing release the GIL); on
    CUDA out-of-memory the batch size halves and the batch is retried. With `share_prefix`, views that
    differ only in the option order are scored together, one forward over their common prefix and one over
    their suffixes (`mcvqa.prefix_scoring`, exact); a batch where that does not apply is scored view by view.
    """
    from concurrent.futures import ThreadPoolExecutor

    from tqdm.auto import tqdm

    from mcvqa.prefix_scoring import option_order_groups, score_shared, shared_batch

    device = device or next(model.parameters()).device
    lengths = [len(collator.encode(r).input_ids) for r in rows]
    order = np.argsort(lengths, kind="stable")
    groups = option_order_groups(views, rows) if share_prefix else [[name] for name in views]
    position_fn = None
    if collator.position_fn is None and any(len(g) > 1 for g in groups):
        from collator import rope_positions

        position_fn = rope_positions(model, collator.image_token_id)
    results = {name: np.zeros((len(rows), 4)) for name in views}
    total = len(views) * len(rows)
    bar = tqdm(total=total, desc=desc, disable=not progress, file=sys.stderr, dynamic_ncols=True)
    model.eval()
    pin = device.type == "cuda"

    def pinned(batch):
        # Pinned host memory: the copy to the GPU is asynchronous instead of waiting for the GPU to drain.
        return {k: pinned(v) if isinstance(v, dict) else v.pin_memory() if pin and torch.is_tensor(v) else v
                for k, v in batch.items()}

    def prepared(chunk, names):
        fns = [views[n] for n in names]
        shared = shared_batch(collator, chunk, fns, position_fn) if len(fns) > 1 else None
        return [pinned(shared)] if shared is not None else [pinned(collator(chunk, view=v)) for v in fns]

    def on_device(batch):
        batch = {k: on_device(v) if isinstance(v, dict) else v for k, v in _move(batch, device).items()}
        if dtype is not None and "pixel_values" in batch:
            batch["pixel_values"] = batch["pixel_values"].to(dtype)
        return batch

    def scored(batches):
        """(B, K, 4) probabilities over the shown positions, one column per view of the group."""
        if "prefix" in batches[0]:
            logits = score_shared(model, batches[0], letter_ids)
        else:
            logits = torch.stack([score_batch(model, b, letter_ids) for b in batches], 1)
        return torch.softmax(logits, -1).cpu().numpy()

    with ThreadPoolExecutor(max_workers=1) as pool:
        def collate(names, start, size):
            idx = order[start: start + size]
            return start, size, idx, pool.submit(prepared, [rows[j] for j in idx], names)

        for names in groups:
            i = 0
            job = collate(names, 0, batch_size)
            while i < len(rows):
                if job is None or job[:2] != (i, batch_size):  # the batch size changed after an OOM
                    job = collate(names, i, batch_size)
                _, _, idx, future = job
                batches = future.result()
                following = i + len(idx)
                job = collate(names, following, batch_size) if following < len(rows) else None
                try:
                    batches = [on_device(b) for b in batches]
                    with torch.inference_mode(), torch.autocast(device.type, dtype=dtype or torch.float32,
                                                                enabled=dtype is not None and device.type == "cuda"):
                        shown = scored(batches)
                except torch.cuda.OutOfMemoryError:
                    if batch_size == 1:
                        raise
                    batches = None  # its GPU copy must go before the cache is emptied
                    batch_size = max(1, batch_size // 2)
                    torch.cuda.empty_cache()
                    print(f"out of memory: retrying with --batch_size {batch_size}", file=sys.stderr)
                    continue
                for k, name in enumerate(names):
                    for r, j in enumerate(idx):
                        results[name][j] = to_original(shown[r: r + 1, k], view_order(views[name](rows[j])))[0]
                i = following
                bar.update(len(idx) * len(names))
    bar.close()
    return results
