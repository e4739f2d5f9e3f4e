"""Averages of the trainable weights over training: an exponential moving average (`--ema_decay`) and
stochastic weight averaging (`--swa_start`). Either replaces the last weights when training ends, so
what is saved and scored out of fold is the average.

The average is fp32 and covers only what trains (LoRA adapters: a few MB; a full fine-tune: a second
copy of the model). Every DDP rank holds identical weights after each step, so every rank keeps an
identical average. It is written into each checkpoint (`weight_average.safetensors`, beside the
Trainer's files) and read back when --resume continues that checkpoint, so a resumed run continues
the average instead of restarting it.
"""

import sys
from pathlib import Path

import torch
from transformers import TrainerCallback
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR

AVERAGE_FILE = "weight_average.safetensors"


class WeightAverage(TrainerCallback):
    """The shared machinery: which tensors are averaged, checkpointing of the average, the final swap."""

    kind = "average"

    def __init__(self):
        self.params, self.names, self.shadow = [], [], []
        self.count = 0  # updates folded into the average (SWA's weight 1/(count+1); informative for EMA)

    def update(self, state):
        raise NotImplementedError

    def on_train_begin(self, args, state, control, model=None, **kwargs):
        named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
        self.names, self.params = [n for n, _ in named], [p for _, p in named]
        self.shadow = [p.detach().float().clone() for p in self.params]
        self.count = 0
        if state is not None and state.global_step > 0:
            # The Trainer restored checkpoint-<global_step> before this call: continue its average.
            self.load(Path(args.output_dir) / f"{PREFIX_CHECKPOINT_DIR}-{state.global_step}")

    @torch.no_grad()
    def on_step_end(self, args, state, control, **kwargs):
        if self.params:
            self.update(state)

    def on_save(self, args, state, control, **kwargs):
        checkpoint = Path(args.output_dir) / f"{PREFIX_CHECKPOINT_DIR}-{state.global_step}"
        if state.is_world_process_zero and checkpoint.is_dir() and self.params:
            self.save(checkpoint)

    def save(self, checkpoint):
        import os

        from safetensors.torch import save

        tensors = {n: s.contiguous() for n, s in zip(self.names, self.shadow)}
        path = Path(checkpoint) / AVERAGE_FILE
        # Written whole or not at all: checkpoint_problem would otherwise skip the checkpoint on --resume.
        tmp = path.with_name(f".{path.name}.tmp")
        tmp.write_bytes(save(tensors, metadata={"kind": self.kind, "count": str(self.count)}))
        os.replace(tmp, path)

    def load(self, checkpoint):
        from safetensors import safe_open

        path = Path(checkpoint) / AVERAGE_FILE
        if not path.is_file():
            print(f"--resume: {checkpoint} holds no {AVERAGE_FILE} (written by an older mcvqa): the {self.kind} "
                  "restarts from the restored weights", file=sys.stderr)
            return
        with safe_open(str(path), framework="pt") as fh:
            meta = fh.metadata() or {}
            if meta.get("kind") != self.kind or set(fh.keys()) != set(self.names):
                raise RuntimeError(f"{path}: not the {self.kind} of this model's trainable weights")
            self.shadow = [fh.get_tensor(n).float() for n in self.names]
            self.count = int(meta.get("count", 0))

    @torch.no_grad()
    def on_train_end(self, args, state, control, **kwargs):
        if self.count == 0 and self.kind == "swa":
            print("--swa_start: training ended before the averaging started; the last weights are kept",
                  file=sys.stderr)
        else:
            for p, s in zip(self.params, self.shadow):
                p.copy_(s.to(p.dtype))
        self.params, self.names, self.shadow = [], [], []


class WeightEMA(WeightAverage):
    """Exponential moving average of the trainable weights (decay per optimizer step)."""

    kind = "ema"

    def __init__(self, decay):
        super().__init__()
        self.decay = decay

    def update(self, state):
        torch._foreach_lerp_(self.shadow, [p.detach().float() for p in self.params], 1.0 - self.decay)
        self.count += 1


class WeightSWA(WeightAverage):
    """Stochastic weight averaging: the equal-weight mean of the weights after every optimizer step from
    `start` (a fraction of the planned steps) on, as torch.optim.swa_utils.AveragedModel keeps it. No
    batch norm in Qwen-VL, so no update_bn pass afterwards."""

    kind = "swa"

    def __init__(self, start):
        super().__init__()
        self.start = start

    def update(self, state):
        if state.global_step <= self.start * state.max_steps:
            return
        current = [p.detach().float() for p in self.params]
        if self.count == 0:
            torch._foreach_copy_(self.shadow, current)
        else:
            torch._foreach_lerp_(self.shadow, current, 1.0 / (self.count + 1))
        self.count += 1


def weight_average(run_args):
    """The callback for --ema_decay or --swa_start (the caller refuses both at once), or None."""
    if run_args.ema_decay is not None:
        return WeightEMA(run_args.ema_decay)
    if getattr(run_args, "swa_start", None) is not None:
        return WeightSWA(run_args.swa_start)
    return None
