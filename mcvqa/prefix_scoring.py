"""Prefix-shared scoring: views that differ only in the option order share one forward pass over their prefix.

The four cyclic shifts of one image scale see the same system turn, image and question; only the option lines
(and what follows them) differ. So a row's K views are scored as one forward over their longest common token
prefix, whose KV cache is repeated K times, then one forward over the K suffixes against that cache. The
suffixes are left padded *between* prefix and suffix, so every one ends at the same last position, where the
letter logits are read exactly as in full scoring (`mcvqa.scoring.score_batch`).

Exact by construction: the prefix is the common prefix of the views' own token ids, its positions and image
are checked to be the same for every view, and each suffix token gets the M-RoPE position it has in the full
sequence. A batch where that does not hold (the image after the options, different pixels) is scored in full.
"""

import inspect

import torch

from mcvqa import LETTERS
from mcvqa.scoring import MODEL_KEYS, letter_logits

# What a view may change without changing the shared prefix: the option order (the answer letter follows it).
_ORDER_KEYS = frozenset(LETTERS) | {"answer", "_order"}


def _layout(row):
    """Everything a row shows but the option order, hashed: equal for views that can share a prefix.

    Only a grouping: `shared_batch` checks the tokens, image and positions it shares, so a collision or an
    unexpected field costs speed, never exactness.
    """
    fixed = {k: v for k, v in row.items() if k not in _ORDER_KEYS}
    fixed["_scale"] = row.get("_scale", 1.0)
    fixed["_flip"] = row.get("_flip", False)
    options = sorted(repr(row.get(k)) for k in LETTERS)
    return hash(repr((sorted((k, repr(v)) for k, v in fixed.items()), options)))


def option_order_groups(views, rows):
    """View names grouped so that, on every row, the views of a group differ only in the option order.

    A view that mirrors only some rows (`hflip` leaves questions about sides alone) shares a group only with
    views that agree with it on every row.
    """
    signature = {name: tuple(_layout(view(row)) for row in rows) for name, view in views.items()}
    groups = {}
    for name in views:
        groups.setdefault(signature[name], []).append(name)
    return list(groups.values())


def _common_prefix(lists):
    first = lists[0]
    n = min(len(ids) for ids in lists) - 1  # at least one token of every view stays in its suffix
    for ids in lists[1:]:
        m = 0
        while m < n and ids[m] == first[m]:
            m += 1
        n = m
    return n


def shared_batch(collator, rows, views, position_fn=None):
    """Model inputs for scoring `rows` under the K `views` with one shared prefix per row, or None when a row's
    views do not share the whole image (then score the views in full).

    Returns {"prefix": inputs for B rows, "suffix": inputs for K*B suffixes (row-major: row i, view k at
    i*K + k), "views": K}. `position_fn` gives M-RoPE positions when the collator has none of its own.
    """
    position_fn = collator.position_fn or position_fn
    if position_fn is None or len(views) < 2:
        return None
    k_views = len(views)
    prefixes, suffixes = [], []
    for row in rows:
        encoded = [collator.encode(row, view) for view in views]
        ids = [e.input_ids for e in encoded]
        first = encoded[0]
        n = _common_prefix(ids)
        image_at = [j for j, t in enumerate(first.input_ids) if t == collator.image_token_id]
        if not image_at or image_at[-1] >= n:
            return None  # the image is not inside the shared prefix: nothing exact to share
        if not all(torch.equal(e.grid_thw, first.grid_thw) and
                   (e.pixel_values is first.pixel_values or torch.equal(e.pixel_values, first.pixel_values))
                   for e in encoded[1:]):
            return None
        positions = [e.position_ids if e.position_ids is not None else position_fn(e.input_ids, e.grid_thw)
                     for e in encoded]
        if not all(torch.equal(p[:, :n], positions[0][:, :n]) for p in positions[1:]):
            return None
        prefixes.append((first.input_ids[:n], positions[0][:, :n], first.pixel_values, first.grid_thw))
        suffixes.extend((e.input_ids[n:], p[:, n:]) for e, p in zip(encoded, positions))

    width = max(len(p[0]) for p in prefixes)
    b = len(rows)
    prefix_ids = torch.full((b, width), collator.pad_id, dtype=torch.long)
    prefix_mask = torch.zeros((b, width), dtype=torch.long)
    # Padded slots hold position 1, as the model's own get_rope_index leaves them (and the collator does).
    prefix_pos = torch.ones((3, b, width), dtype=torch.long)
    for i, (ids, pos, _, _) in enumerate(prefixes):
        prefix_ids[i, width - len(ids):] = torch.tensor(ids)
        prefix_mask[i, width - len(ids):] = 1
        prefix_pos[:, i, width - len(ids):] = pos
    prefix = {"input_ids": prefix_ids, "attention_mask": prefix_mask, "position_ids": prefix_pos,
              "pixel_values": torch.cat([p[2] for p in prefixes]),
              "image_grid_thw": torch.stack([p[3] for p in prefixes])}

    span = max(len(s[0]) for s in suffixes)
    n_suffix = len(suffixes)
    suffix_ids = torch.full((n_suffix, span), collator.pad_id, dtype=torch.long)
    suffix_mask = torch.zeros((n_suffix, span), dtype=torch.long)
    suffix_pos = torch.ones((3, n_suffix, span), dtype=torch.long)
    for i, (ids, pos) in enumerate(suffixes):
        suffix_ids[i, span - len(ids):] = torch.tensor(ids)
        suffix_mask[i, span - len(ids):] = 1
        suffix_pos[:, i, span - len(ids):] = pos
    # Each suffix sees its row's prefix (with that row's left padding), then the padding that aligns the
    # suffixes' ends, then itself: the last position is every suffix's answer position.
    suffix = {"input_ids": suffix_ids,
              "attention_mask": torch.cat([prefix_mask.repeat_interleave(k_views, 0), suffix_mask], 1),
              "position_ids": suffix_pos}
    if collator.with_mm_token_type_ids:
        prefix["mm_token_type_ids"] = (prefix_ids == collator.image_token_id).long()
        suffix["mm_token_type_ids"] = torch.zeros_like(suffix_ids)
    return {"prefix": prefix, "suffix": suffix, "views": k_views}


def _cache_argument(model):
    """The keyword the model's forward takes its KV cache by: `cache` (transformers >= 5.2x) or `past_key_values`."""
    inner = model.get_base_model() if hasattr(model, "get_base_model") else model
    return "cache" if "cache" in inspect.signature(inner.forward).parameters else "past_key_values"


def _cache_of(output):
    cache = getattr(output, "cache", None)
    return cache if cache is not None else output.past_key_values


def score_shared(model, batch, letter_ids):
    """(B, K, 4) letter logits for a `shared_batch`: one forward over the prefixes, one over the suffixes.

    Positions are always passed explicitly, so the `rope_deltas` the model keeps between calls is neither read
    nor written (a stale one cannot shift the suffixes' positions).
    """
    prefix, suffix, k_views = batch["prefix"], batch["suffix"], batch["views"]
    # logits_to_keep=1: the prefix forward is for its cache; the head runs at one position only.
    out = model(**{k: prefix[k] for k in MODEL_KEYS if k in prefix}, use_cache=True, logits_to_keep=1)
    cache = _cache_of(out)
    del out
    cache.batch_repeat_interleave(k_views)
    logits = model(**{k: suffix[k] for k in MODEL_KEYS if k in suffix}, **{_cache_argument(model): cache},
                   use_cache=True, logits_to_keep=1).logits
    return letter_logits(logits[:, -1], letter_ids).view(-1, k_views, len(letter_ids))
