"""The Trainer subclass: loss at the answer position only, a/b/c/d metrics, a guard against NaN/inf."""

import json
import math
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from transformers import Trainer, TrainerCallback
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR

from mcvqa.errors import UserError
from mcvqa.metrics import metrics_from_logits
from mcvqa.scoring import answer_logits, answer_position, letter_logits, target_letters
from mcvqa.second_round import BATCH_KEYS as SECOND_ROUND_KEYS, second_round_loss


def divergence_advice(value, step, precision, checkpoint):
    """What to do when the loss is NaN/inf: the cause differs by precision, and so does the cure."""
    if precision == "fp16":
        cause = ("This is the known Qwen-VL fp16 overflow on GPUs without bf16 (T4), or a too high learning rate. "
                 "Try: --precision bf16 on a GPU that has it, or --precision fp32; a lower --learning_rate "
                 "(e.g. half); a smaller --max_pixels.")
    else:
        cause = (f"In {precision} (no fp16 overflow) this is a too high learning rate. Try a lower --learning_rate "
                 "(e.g. half) or more --warmup_steps" + ("; --precision fp32 if it persists." if precision == "bf16"
                                                        else "."))
    saved = (f"The last good checkpoint is {checkpoint}; nothing after it was saved (--resume would continue it "
             "with its own learning-rate schedule)." if checkpoint else "No checkpoint had been saved.")
    return f"the loss became {value} at step {step} ({precision}). {cause} {saved}"


def checkpoint_problem(checkpoint):
    """Why a Trainer checkpoint folder cannot be resumed (interrupted or damaged while saving), or None."""
    from mcvqa.runs import safetensors_problem

    checkpoint = Path(checkpoint)
    state = checkpoint / "trainer_state.json"
    if not state.is_file():
        return "no trainer_state.json (interrupted while saving)"
    try:
        json.loads(state.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError):
        return "trainer_state.json is truncated or unreadable"
    weights = sorted(checkpoint.glob("*.safetensors"))
    if not weights:
        return "no weights (*.safetensors)"
    for path in weights:
        problem = safetensors_problem(path)
        if problem:
            return f"{path.name} is {problem}"
    return None


def last_complete_checkpoint(checkpoints_dir, skipped=None):
    """The newest checkpoint whose files all load, or None; `skipped` collects 'name: why' for newer ones."""
    ckpts = sorted(Path(checkpoints_dir).glob(f"{PREFIX_CHECKPOINT_DIR}-*"),
                   key=lambda p: int(p.name.split("-")[-1]) if p.name.split("-")[-1].isdigit() else -1)
    for ckpt in reversed(ckpts):
        problem = checkpoint_problem(ckpt)
        if problem is None:
            return str(ckpt)
        if skipped is not None:
            skipped.append(f"{ckpt.name}: {problem}")
    return None


class CheckpointRecord(TrainerCallback):
    """The run record that goes into every checkpoint, so --resume can refuse one written with other settings.

    MCVQATrainer writes it when a checkpoint starts, before the weights: the Trainer writes trainer_state.json
    last, and that file is what marks a checkpoint complete (`checkpoint_problem`). Written after it (on_save),
    a kill -9 in between left a complete-looking checkpoint that --resume refused for lack of a record.
    """

    def __init__(self, record):
        self.record = record

    def write(self, checkpoint):
        from mcvqa.io import write_json
        from mcvqa.runs import CHECKPOINT_RECORD

        checkpoint.mkdir(parents=True, exist_ok=True)
        write_json(checkpoint / CHECKPOINT_RECORD, self.record.to_dict())


class TrainingDiverged(UserError):
    """The loss is NaN or infinite: stop with advice instead of training garbage."""


class MCVQATrainer(Trainer):
    """HF Trainer whose loss and evaluation read the language-model head only at the answer position.

    - training loss: cross-entropy at the answer letter (and `<|im_end|>` when it is supervised) with
      `label_smoothing_factor`, over the whole vocabulary or (`restricted_loss`) over the four letters;
    - evaluation returns (B, 4) letter logits and the 0-3 answer, never full-vocabulary logits;
    - `eval_collator` (no option shuffling) replaces the training collator for evaluation/prediction.
    """

    def __init__(self, *args, letter_ids, restricted_loss=False, eval_collator=None, nan_check_steps=4,
                 time_budget=None, distill=None, **kwargs):
        super().__init__(*args, **kwargs)
        self.distill = distill or (0.0, 1.0)  # (--distill_alpha, --distill_temperature)
        self.time_budget = time_budget
        self.letter_ids = letter_ids
        self.restricted_loss = restricted_loss
        self.eval_collator = eval_collator
        self.nan_check_steps = nan_check_steps
        self._recent_losses = []
        # The loss is a per-batch mean; let the Trainer divide by gradient accumulation itself.
        self.model_accepts_loss_kwargs = False

    # A full or read-only disk while saving is one clear line (mcvqa.runs.writing); the checkpoint it cut
    # short has no trainer_state.json (written last) or a truncated file, so --resume passes over it.
    _DISK_FIX = ("free space (fewer checkpoints: --save_total_limit 1) or choose another --output_dir, then run "
                 "again with --resume: it continues from the last complete checkpoint")

    def _save_checkpoint(self, *args, **kwargs):
        from mcvqa.runs import writing

        checkpoint = Path(self.args.output_dir) / f"{PREFIX_CHECKPOINT_DIR}-{self.state.global_step}"
        with writing(checkpoint, self._DISK_FIX):
            if self.args.should_save:
                for callback in self.callback_handler.callbacks:
                    if isinstance(callback, CheckpointRecord):
                        callback.write(checkpoint)
            return super()._save_checkpoint(*args, **kwargs)

    def save_model(self, output_dir=None, _internal_call=False):
        from mcvqa.runs import writing

        with writing(output_dir or self.args.output_dir, self._DISK_FIX):
            return super().save_model(output_dir, _internal_call)

    def create_scheduler(self, num_training_steps, optimizer=None):
        kind = str(getattr(self.args.lr_scheduler_type, "value", self.args.lr_scheduler_type))
        if self.time_budget is None or kind not in ("cosine", "linear") or self.lr_scheduler is not None:
            return super().create_scheduler(num_training_steps, optimizer)
        self.lr_scheduler = time_schedule(optimizer or self.optimizer, self.time_budget,
                                          self.args.get_warmup_steps(num_training_steps), kind, num_training_steps)
        self._created_lr_scheduler = True
        return self.lr_scheduler

    def _with_eval_collator(self, fn, *args):
        train_collator = self.data_collator
        if self.eval_collator is not None:
            self.data_collator = self.eval_collator
        try:
            return fn(*args)
        finally:
            self.data_collator = train_collator

    def get_eval_dataloader(self, eval_dataset=None):
        return self._with_eval_collator(super().get_eval_dataloader, eval_dataset)

    def get_test_dataloader(self, test_dataset):
        return self._with_eval_collator(super().get_test_dataloader, test_dataset)

    def _loss_and_letters(self, model, inputs):
        labels = inputs["labels"]
        at = answer_position(inputs)
        width = inputs.get("answer_width")
        n = (int((labels[:, at + 1:] != -100).any(0).sum()) if width is None else width) or 1
        logits = answer_logits(model, inputs, n_positions=n)
        targets = labels[:, at + 1: at + 1 + n]
        letters = letter_logits(logits[:, 0], self.letter_ids)
        smoothing = self.args.label_smoothing_factor
        if any(k in inputs for k in SECOND_ROUND_KEYS):  # soft pseudo-labels or a teacher (mcvqa.second_round)
            return second_round_loss(logits, targets, letters, inputs, self.letter_ids, self.restricted_loss,
                                     smoothing, *self.distill), letters
        if self.restricted_loss:
            loss = F.cross_entropy(letters, target_letters(inputs, self.letter_ids), label_smoothing=smoothing)
        else:
            loss = F.cross_entropy(logits.float().flatten(0, 1), targets.flatten(), ignore_index=-100,
                                   label_smoothing=smoothing)
        return loss, letters

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        loss, letters = self._loss_and_letters(model, inputs)
        if model.training:
            self._check_finite(loss)
        return (loss, letters) if return_outputs else loss

    def _check_finite(self, loss):
        # One device sync every few steps, not every step.
        self._recent_losses.append(loss.detach())
        if len(self._recent_losses) >= self.nan_check_steps or self.state.global_step == 0:
            window = torch.stack(self._recent_losses)
            self._recent_losses = []
            if not torch.isfinite(window).all():
                bad = window[~torch.isfinite(window)][0].item()
                precision = "fp16" if self.args.fp16 else "bf16" if self.args.bf16 else "fp32"
                raise TrainingDiverged(divergence_advice(bad, self.state.global_step + 1, precision,
                                                         last_complete_checkpoint(self.args.output_dir)))

    def prediction_step(self, model, inputs, prediction_loss_only, ignore_keys=None):
        inputs = self._prepare_inputs(inputs)
        with torch.no_grad(), self.compute_loss_context_manager():
            if "labels" in inputs:
                loss, letters = self._loss_and_letters(model, inputs)
                loss = loss.detach()
            else:
                loss, letters = None, letter_logits(answer_logits(model, inputs)[:, 0], self.letter_ids)
        if prediction_loss_only:
            return loss, None, None
        return loss, letters.float().detach(), target_letters(inputs, self.letter_ids)


def make_compute_metrics(question_types=None):
    """`compute_metrics` over the (N, 4) letter logits the trainer returns; per-type accuracy when known."""

    def compute_metrics(eval_pred):
        logits, labels = eval_pred.predictions, eval_pred.label_ids
        types = question_types if question_types is not None and len(question_types) == len(labels) else None
        return metrics_from_logits(logits, labels, types)

    return compute_metrics


class FoldProgress(TrainerCallback):
    """Print eval results as one short line per evaluation (the progress bar shows the rest)."""

    def on_evaluate(self, args, state, control, metrics=None, **kwargs):
        if state.is_world_process_zero and metrics:
            acc, ll = metrics.get("eval_accuracy"), metrics.get("eval_log_loss")
            if acc is not None:
                print(f"  epoch {state.epoch:.2f} | eval acc {acc:.3f} | logloss {ll:.3f}", flush=True)


class TimeBudget(TrainerCallback):
    """Stop after a wall-clock budget; the Trainer then evaluates and saves as at a normal end.

    `fraction` (0 at the first step, 1 at the deadline) is what a time-following learning-rate schedule
    reads. Under DDP every rank must stop at the same step and use the same learning rate, so the
    elapsed time is the maximum over ranks (one tiny all-reduce per step), never a rank's own clock.
    """

    def __init__(self, minutes):
        self.seconds = 60 * minutes
        self.started = None
        self.fraction = 0.0

    def on_train_begin(self, args, state, control, **kwargs):
        self.started = time.time()

    def on_step_end(self, args, state, control, **kwargs):
        if self.started is None:
            return control
        elapsed = time.time() - self.started
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            shared = torch.tensor([elapsed], dtype=torch.float64, device=args.device)
            torch.distributed.all_reduce(shared, op=torch.distributed.ReduceOp.MAX)
            elapsed = float(shared.item())
        self.fraction = min(1.0, elapsed / self.seconds)
        if self.fraction >= 1.0:
            control.should_training_stop = True
            control.should_evaluate = args.eval_strategy != "no"
            control.should_save = True
        return control


def time_schedule(optimizer, budget, warmup_steps, kind, total_steps=None):
    """Warm up over `warmup_steps` steps, then decay by the share of the run done: of the time budget or of
    the planned steps, whichever is further along.

    With a time budget the number of steps is unknown beforehand; a step-based cosine planned for the
    epochs would still be near its peak learning rate when the clock stops the run, and a clock-based one
    would never reach zero when the epochs end first.
    """
    def factor(step):
        warm = min(1.0, (step + 1) / warmup_steps) if warmup_steps > 0 else 1.0
        f = max(budget.fraction, step / total_steps if total_steps else 0.0)
        f = min(f, 1.0)
        decay = 0.5 * (1.0 + math.cos(math.pi * f)) if kind == "cosine" else 1.0 - f
        return warm * max(decay, 0.0)

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
