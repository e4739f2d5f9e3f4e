"""Rows of the data contract -> Qwen-VL model inputs with masked labels.

    from collator import MCVQACollator
    collator = MCVQACollator(processor, min_pixels=112 * 112, max_pixels=448 * 448)
    batch = collator([dataset[0], dataset[1]])   # input_ids, attention_mask, pixel_values, image_grid_thw,
                                                 # mm_token_type_ids (when the model wants it), labels, answer_index

Each row is rendered with `processor.apply_chat_template` (user: image, question, `a. ...` option lines,
instruction; assistant: the answer letter). Only the answer letter is supervised (and `<|im_end|>` after
it with `supervise_eos=True`); every other label is -100.

Sequences are padded on the LEFT, so every row of a batch ends with the same tokens: the position whose
logits predict the answer is the same index for all rows (`answer_index`), and both training and scoring
read the language-model head only there (`mcvqa.scoring`). A scoring batch (no answer) ends with the
generation prompt, so its answer index is the last position.

What never changes between epochs is computed once and cached: each image is decoded, resized and
normalised once per view (easy-VQA shows an image under ~10 questions); the chat template is rendered
once and each row's user turn substituted into it (every shuffled option order is new text to tokenise,
not a new template rendering); M-RoPE positions are cached per row layout. Only tokenising a shuffled
prompt, the image-token expansion, padding and stacking happen per batch.
"""

import math
import random
from dataclasses import dataclass

import torch
from PIL import Image, ImageOps

from mcvqa import LETTERS
from mcvqa.errors import UserError
from mcvqa.images import read_image
from mcvqa.prompts import conversation, user_text
from mcvqa.second_round import target_tensors
from mcvqa.tta import identity, permute


def resize_factor(image_processor):
    """28 for Qwen2/2.5-VL (patch 14 x merge 2), 32 for Qwen3-VL (patch 16 x merge 2)."""
    return image_processor.patch_size * image_processor.merge_size


def fit_pixels(height, width, factor, min_pixels, max_pixels):
    """Qwen's smart resize: sides multiples of `factor`, area within [min_pixels, max_pixels], aspect kept."""
    if max(height, width) / min(height, width) > 200:
        raise ValueError(f"aspect ratio of {width}x{height} is over 200")
    h = max(factor, round(height / factor) * factor)
    w = max(factor, round(width / factor) * factor)
    if h * w > max_pixels:
        beta = math.sqrt(height * width / max_pixels)
        h = max(factor, math.floor(height / beta / factor) * factor)
        w = max(factor, math.floor(width / beta / factor) * factor)
    elif h * w < min_pixels:
        beta = math.sqrt(min_pixels / (height * width))
        h = math.ceil(height * beta / factor) * factor
        w = math.ceil(width * beta / factor) * factor
    return h, w


class ImageEncoder:
    """Open, resize within the pixel budget and normalise an image once per (path, scale, flip)."""

    def __init__(self, image_processor, min_pixels, max_pixels, cache=True, blank=False):
        self.image_processor = image_processor
        self.blank = blank
        self.factor = resize_factor(image_processor)
        self.min_pixels = int(min_pixels)
        self.max_pixels = int(max_pixels)
        self.cache = {} if cache else None

    def load(self, path, scale=1.0, flip=False):
        """The resized PIL image a view sees (scale multiplies the pixel budget)."""
        image = read_image(path)
        if flip:
            image = ImageOps.mirror(image)
        h, w = fit_pixels(image.height * math.sqrt(scale), image.width * math.sqrt(scale), self.factor,
                          self.min_pixels * scale, self.max_pixels * scale)
        if self.blank:
            # Ablation: the same number of image tokens, no information in them.
            return Image.new("RGB", (w, h), (128, 128, 128))
        return image.resize((w, h), Image.BICUBIC) if (h, w) != (image.height, image.width) else image

    def __call__(self, path, scale=1.0, flip=False):
        key = (path, scale, flip)
        if self.cache is not None and key in self.cache:
            return self.cache[key]
        image = self.load(path, scale, flip)
        # Already a multiple of the factor within budget: the processor must not resize a second time.
        out = self.image_processor(images=[image], do_resize=False, return_tensors="pt")
        encoded = (out["pixel_values"], out["image_grid_thw"][0])
        if self.cache is not None:
            self.cache[key] = encoded
        return encoded


@dataclass
class Encoded:
    input_ids: list
    labels: list
    pixel_values: torch.Tensor
    grid_thw: torch.Tensor
    position_ids: torch.Tensor = None
    order: list = None  # original option index shown at each position (None: a-d as given)


class MCVQACollator:
    """A callable for `DataLoader(collate_fn=...)` over rows with id, image, question, a-d[, answer]."""

    def __init__(self, processor, min_pixels, max_pixels, train=True, supervise_eos=False, shuffle_choices=False,
                 template=None, templates_by_type=None, max_length=None, mm_token_type_ids=None, seed=0,
                 cache_images=True, blank_images=False, position_fn=None):
        self.processor = processor
        self.tokenizer = processor.tokenizer
        self.images = ImageEncoder(processor.image_processor, min_pixels, max_pixels, cache=cache_images,
                                   blank=blank_images)
        self.merge = processor.image_processor.merge_size
        self.train = train
        self.supervise_eos = supervise_eos
        self.shuffle_choices = shuffle_choices
        self.template = template
        self.templates_by_type = templates_by_type or {}
        self.max_length = max_length
        self.image_token_id = self.tokenizer.convert_tokens_to_ids(processor.image_token)
        self.pad_id = self.tokenizer.pad_token_id
        if mm_token_type_ids is None:
            mm_token_type_ids = "mm_token_type_ids" in getattr(processor, "model_input_names", [])
        self.with_mm_token_type_ids = mm_token_type_ids
        self.rng = random.Random(seed)
        self._text_cache = {}
        self._frames = {}
        self._answer_ids = {}
        # M-RoPE positions depend only on a row's layout: computed once per layout (see rope_positions, encode).
        self.position_fn = position_fn
        self._position_cache = {}

    # -- text ---------------------------------------------------------------------------------------
    def _template_for(self, row):
        return self.templates_by_type.get(row.get("question_type"), self.template)

    def _render(self, messages, add_generation_prompt):
        text = self.processor.apply_chat_template(messages, tokenize=False, add_generation_prompt=add_generation_prompt)
        return self.tokenizer(text, add_special_tokens=False)["input_ids"]

    def text_ids(self, row, with_answer, cache=True):
        """(prompt ids with one image placeholder, supervised ids after the prompt); cached per option order."""
        options = [row[k] for k in LETTERS]
        template = self._template_for(row)
        answer = row.get("answer") if with_answer else None
        key = (row["question"], tuple(options), answer, template)
        cached = self._text_cache.get(key)
        if cached is not None:
            return cached
        found = self._substituted_ids(row["question"], options, answer, template)
        if found is None:
            found = self._rendered_ids(row["question"], options, answer, template)
        if cache:
            self._text_cache[key] = found
        return found

    def _rendered_ids(self, question, options, answer, template):
        """The reference path: the chat template rendered for this exact row."""
        prompt = self._render(conversation(question, options, template=template), True)
        answer_ids = []
        if answer is not None:
            full = self._render(conversation(question, options, answer=answer, template=template), False)
            if full[: len(prompt)] != prompt:
                raise RuntimeError("the chat template's generation prompt is not a prefix of the answered "
                                   "conversation; cannot locate the answer token")
            # The letter, then the end-of-turn token; what follows it is never needed.
            answer_ids = full[len(prompt): len(prompt) + 2]
            letter = self.tokenizer.decode(answer_ids[:1]).strip().lower()
            if letter != answer:
                raise RuntimeError(f"answer '{answer}' tokenised as {letter!r}: the letter is not one token")
            self._answer_ids.setdefault((template, answer), answer_ids)
        return prompt, answer_ids

    def _substituted_ids(self, question, options, answer, template):
        """The same ids without running the chat template: its rendered text around the user turn is fixed.

        With --shuffle_choices every epoch shows a new option order, and rendering the template twice per
        row dominated the collator's time. The frame (text before and after the user turn) is rendered once
        per template and checked once against the reference path; a template that does not insert the user
        text verbatim keeps the reference path. None when this path does not apply (yet).
        """
        frame = self._frames.get(template)
        if frame is None:
            frame = self._frames[template] = self._make_frame(question, options, answer, template)
        if frame is False or (answer is not None and (template, answer) not in self._answer_ids):
            return None
        prompt = self._framed_ids(frame, question, options, template)
        return prompt, (list(self._answer_ids[(template, answer)]) if answer is not None else [])

    def _framed_ids(self, frame, question, options, template):
        before, after = frame
        return self.tokenizer(before + user_text(question, options, template) + after,
                              add_special_tokens=False)["input_ids"]

    def _make_frame(self, question, options, answer, template):
        marker = "\x00mcvqa-user-text\x00"
        text = self.processor.apply_chat_template(conversation(marker, [""] * 4, template="{question}"),
                                                  tokenize=False, add_generation_prompt=True)
        if text.count(marker) != 1:
            return False
        frame = tuple(text.split(marker))
        reference, _ = self._rendered_ids(question, options, answer, template)
        return frame if self._framed_ids(frame, question, options, template) == reference else False

    # -- one row ------------------------------------------------------------------------------------
    def encode(self, row, view=identity):
        """One row under one view -> token ids with the image placeholder expanded, labels and image tensors."""
        row = view(row)
        with_answer = self.train and bool(row.get("answer"))
        if with_answer and self.shuffle_choices:
            order = list(range(4))
            self.rng.shuffle(order)
            row = permute(row, order)
        # A shuffled order is seldom seen twice: not kept, or the cache would grow by 24 entries per question.
        prompt, answer_ids = self.text_ids(row, with_answer, cache=not (with_answer and self.shuffle_choices))
        pixel_values, grid = self.images(row["image"], row.get("_scale", 1.0), row.get("_flip", False))
        n_image = int(grid.prod()) // (self.merge ** 2)
        at = prompt.index(self.image_token_id)
        # The processor expands `<|image_pad|>` to one token per merged patch; same ids, done in token space.
        ids = prompt[:at] + [self.image_token_id] * n_image + prompt[at + 1:]
        labels = [-100] * len(ids)
        if answer_ids:
            supervised = answer_ids if self.supervise_eos else answer_ids[:1]
            ids = ids + answer_ids
            labels = labels + supervised + [-100] * (len(answer_ids) - len(supervised))
        if self.max_length and len(ids) > self.max_length:
            raise UserError(f"row id {row.get('id')}: {len(ids)} tokens exceed --max_length {self.max_length}; "
                            "it would cut into the image or the answer: lower --max_pixels or raise --max_length")
        positions = None
        if self.position_fn is not None:
            # M-RoPE positions depend only on where the image tokens sit and on the length (one image per row),
            # so every option order of a row shares one entry.
            key = (len(ids), at, n_image, tuple(grid.tolist()))
            positions = self._position_cache.get(key)
            if positions is None:
                positions = self._position_cache[key] = self.position_fn(ids, grid)
        return Encoded(ids, labels, pixel_values, grid, positions, row.get("_order"))

    def prepare(self, rows, views=(identity,)):
        """Warm the caches (images decoded and resized, prompts tokenised) before training forks workers."""
        for row in rows:
            for view in views:
                self.encode(row, view)

    # -- a batch ------------------------------------------------------------------------------------
    def __call__(self, rows, view=identity):
        encoded = [self.encode(row, view) for row in rows]
        width = max(len(e.input_ids) for e in encoded)
        input_ids = torch.full((len(encoded), width), self.pad_id, dtype=torch.long)
        labels = torch.full((len(encoded), width), -100, dtype=torch.long)
        attention = torch.zeros((len(encoded), width), dtype=torch.long)
        for i, e in enumerate(encoded):
            n = len(e.input_ids)
            input_ids[i, width - n:] = torch.tensor(e.input_ids)
            labels[i, width - n:] = torch.tensor(e.labels)
            attention[i, width - n:] = 1
        batch = {
            "input_ids": input_ids,
            "attention_mask": attention,
            "pixel_values": torch.cat([e.pixel_values for e in encoded]),
            "image_grid_thw": torch.stack([e.grid_thw for e in encoded]),
        }
        if self.with_mm_token_type_ids:
            batch["mm_token_type_ids"] = (input_ids == self.image_token_id).long()
        if self.position_fn is not None:
            # Left padding: padded slots hold 1, as the model's own get_rope_index leaves them.
            positions = torch.ones((3, len(encoded), width), dtype=torch.long)
            for i, e in enumerate(encoded):
                positions[:, i, width - len(e.input_ids):] = e.position_ids
            batch["position_ids"] = positions
        batch["answer_index"] = answer_index(labels)
        # The same index and the count of supervised positions after it as host integers: read from the device
        # tensors at every step, they would make the host wait for the GPU (a stream sync per batch).
        at = int(batch["answer_index"][0])
        batch["answer_position"] = at
        batch["answer_width"] = int((labels[:, at + 1:] != -100).any(0).sum())
        if self.train:
            # Soft pseudo-labels and teacher probabilities, permuted like the options each row shows.
            batch.update(target_tensors(rows, [e.order for e in encoded]))
        if (labels != -100).any():
            batch["labels"] = labels
        return batch


def answer_index(labels):
    """Index of the position whose logits predict the answer letter: shared by every row (left padding).

    For a scoring batch (no supervised token) that is the last position, where the generation prompt ends.
    """
    width = labels.shape[1]
    supervised = labels != -100
    if not supervised.any():
        return torch.full((labels.shape[0],), width - 1, dtype=torch.long)
    first = supervised.float().argmax(dim=1)
    if not torch.all(first == first[0]):
        raise RuntimeError("answer positions differ between rows; sequences must be left padded")
    return first - 1


def option_letter_ids(tokenizer):
    """Token ids for a-d: the canonical single-token letter first, then variants the tokenizer makes distinct.

    Returns a list of four lists. Scoring folds the variants of a letter together (log-sum-exp).
    """
    ids = []
    for letter in LETTERS:
        variants = []
        for text in (letter, letter.upper(), " " + letter, " " + letter.upper()):
            toks = tokenizer.encode(text, add_special_tokens=False)
            if len(toks) == 1 and toks[0] not in variants:
                variants.append(toks[0])
        if not variants or tokenizer.encode(letter, add_special_tokens=False) != variants[:1]:
            raise RuntimeError(f"the tokenizer has no single token for the option letter '{letter}'")
        ids.append(variants)
    flat = [i for v in ids for i in v]
    if len(set(flat)) != len(flat):
        raise RuntimeError("option letters share tokens in this tokenizer")
    return ids


def rope_positions(model, image_token_id):
    """A function (ids, grid) -> (3, L) M-RoPE positions, computed by the model's own `get_rope_index`.

    The model would otherwise recompute them for every batch with a Python loop over rows (many small
    device operations and syncs per step); a row's positions never change, so the collator caches them.
    Returns None when the model has no `get_rope_index`.
    """
    import inspect

    inner = model.get_base_model() if hasattr(model, "get_base_model") else model
    inner = getattr(inner, "model", inner)
    fn = getattr(inner, "get_rope_index", None)
    if fn is None:
        return None
    accepted = inspect.signature(fn).parameters

    def positions(ids, grid):
        ids_t = torch.tensor([ids])
        kwargs = {"input_ids": ids_t, "image_grid_thw": grid.view(1, 3), "attention_mask": torch.ones_like(ids_t)}
        if "mm_token_type_ids" in accepted:
            kwargs["mm_token_type_ids"] = (ids_t == image_token_id).long()
        with torch.no_grad():
            pos, _ = fn(**kwargs)
        return pos[:, 0].cpu()

    return positions
