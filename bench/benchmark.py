"""Issue-5 benchmark: our training and scoring path against TRL's SFTTrainer VLM recipe and generate-and-parse.

    python3 bench/benchmark.py --model qwen2.5-vl-7b --out $OUT/results.json            # one GPU
    python3 bench/benchmark.py --model qwen2.5-vl-7b --parts qlora --qlora --out $OUT/qlora.json
    python3 bench/benchmark.py --model tiny --device cpu --out /tmp/bench.json          # CPU check, ~1 minute

Models are built from the published configs with random weights directly on the device (bf16; weights do
not matter for speed), with the tiny tokenizer and processor of tools/make_tiny_model.py (its token ids lie
below the real vocabulary). Rows are easy-VQA questions (the `easy-vqa` package), images resized to
--pixels (448x448 by default); every contender sees the same rows, batch, LoRA settings and precision.

Contenders (training):
  ours  MCVQATrainer + MCVQACollator (cached images and prompts, cached M-RoPE positions) +
        patch_vision_attention + LoRA r=16 on the language model, loss at the answer position only;
  trl   TRL's documented VLM recipe: SFTTrainer(model, SFTConfig(max_length=None), dataset of
        {"messages": [user: image + text, assistant: letter], "images": [PIL]}, peft_config=LoraConfig(...)),
        its own DataCollatorForVisionLanguageModeling (processor per batch) and loss.
each with gradient checkpointing on and off. Step time: wall time between consecutive `on_step_end`s
(CUDA synchronised, so data loading and collation count), median over --train_steps after --warmup_steps.

Memory: `held` = memory allocated at the end of step 1 (weights + adapters + optimizer state; gradients are
freed by zero_grad); `peak` = max allocated over the run; `activation` = peak - held.

FLOPs (MFU; the attention score term and the LM head are left out, the same formula for every contender):
  train  k x N_lm x text_tokens + 2 x N_vision x patches, k = 4 for LoRA (2 forward + 2 backward to the
         activations; the weight gradients of the frozen base are not computed), +2 with checkpointing
         (the forward is recomputed); the frozen vision tower's useful work is its forward only (a
         contender that also runs its backward, `vision_backward` true, does that work on top);
  infer  2 x (N_lm x text_tokens + N_vision x patches) (prefill).
N_lm = decoder-layer parameters of the language model (no embedding, no head), N_vision = vision tower
parameters, text_tokens = non-padding tokens (image tokens included), patches = vision patches before merging.
Peak dense bf16: 989e12 on H100/H200 (by torch.cuda.get_device_name), 312e12 on A100; otherwise MFU is null.
"""

import argparse
import contextlib
import gc
import importlib.util
import json
import math
import re
import shutil
import statistics
import sys
import tempfile
import time
import warnings
from functools import partial
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

import torch  # noqa: E402

# transformers 5 renames gradient_checkpointing to activation_checkpointing and warns on every Trainer.
warnings.filterwarnings("ignore", message=".*(gradient|activation)_checkpointing", category=FutureWarning)

ARCH = {"qwen2.5-vl-3b": "qwen2_5_vl", "qwen2.5-vl-7b": "qwen2_5_vl", "qwen3-vl-8b": "qwen3_vl", "tiny": "qwen2_5_vl",
        "tiny-qwen3": "qwen3_vl"}

QWEN25_VISION = dict(depth=32, hidden_size=1280, intermediate_size=3420, num_heads=16, patch_size=14,
                     spatial_merge_size=2, temporal_patch_size=2, window_size=112,
                     fullatt_block_indexes=[7, 15, 23, 31], hidden_act="silu")
SPECS = {
    "qwen2.5-vl-3b": dict(
        text=dict(hidden_size=2048, intermediate_size=11008, num_hidden_layers=36, num_attention_heads=16,
                  num_key_value_heads=2, vocab_size=151936, max_position_embeddings=128000, rms_norm_eps=1e-6,
                  rope_parameters={"rope_type": "default", "rope_theta": 1_000_000.0, "mrope_section": [16, 24, 24]}),
        vision=dict(QWEN25_VISION, out_hidden_size=2048), tie=True),
    "qwen2.5-vl-7b": dict(
        text=dict(hidden_size=3584, intermediate_size=18944, num_hidden_layers=28, num_attention_heads=28,
                  num_key_value_heads=4, vocab_size=152064, max_position_embeddings=128000, rms_norm_eps=1e-6,
                  rope_parameters={"rope_type": "default", "rope_theta": 1_000_000.0, "mrope_section": [16, 24, 24]}),
        vision=dict(QWEN25_VISION, out_hidden_size=3584), tie=False),
    "qwen3-vl-8b": dict(
        text=dict(hidden_size=4096, intermediate_size=12288, num_hidden_layers=36, num_attention_heads=32,
                  num_key_value_heads=8, head_dim=128, vocab_size=151936, max_position_embeddings=262144,
                  rms_norm_eps=1e-6,
                  rope_parameters={"rope_type": "default", "rope_theta": 5_000_000.0, "mrope_section": [24, 20, 20],
                                   "mrope_interleaved": True}),
        vision=dict(depth=27, hidden_size=1152, intermediate_size=4304, num_heads=16, out_hidden_size=4096,
                    patch_size=16, spatial_merge_size=2, temporal_patch_size=2, num_position_embeddings=2304,
                    deepstack_visual_indexes=[8, 16, 24], hidden_act="gelu_pytorch_tanh"), tie=False),
}
TINY_PIXELS = 112 * 112
PEAK_BF16 = (("H100", 989e12), ("H200", 989e12), ("A100", 312e12))
GIB = 1024 ** 3


# ------------------------------------------------------------------------------------------- setup

def build_config(name, tok):
    from transformers import Qwen2_5_VLConfig, Qwen3VLConfig

    if name.startswith("tiny"):
        from tools.make_tiny_model import build_config as tiny_config

        return tiny_config(ARCH[name], tok, 128, 2, 64, 2)
    spec = SPECS[name]
    ids = {key: tok.convert_tokens_to_ids(token) for key, token in [
        ("image_token_id", "<|image_pad|>"), ("video_token_id", "<|video_pad|>"),
        ("vision_start_token_id", "<|vision_start|>"), ("vision_end_token_id", "<|vision_end|>")]}
    text = dict(spec["text"], bos_token_id=tok.convert_tokens_to_ids("<|endoftext|>"), eos_token_id=tok.eos_token_id,
                pad_token_id=tok.pad_token_id, tie_word_embeddings=spec["tie"])
    cls = Qwen3VLConfig if ARCH[name] == "qwen3_vl" else Qwen2_5_VLConfig
    config = cls(text_config=text, vision_config=dict(spec["vision"]), tie_word_embeddings=spec["tie"], **ids)
    assert max(ids.values()) < config.text_config.vocab_size
    return config


def build_model(name, tok, device, dtype, attn):
    """Random weights, created on `device` in `dtype` (a 7B model never exists on the CPU)."""
    from transformers import AutoModelForImageTextToText

    torch.manual_seed(0)
    config = build_config(name, tok)
    with torch.device(device):
        model = AutoModelForImageTextToText.from_config(config, dtype=dtype, attn_implementation=attn)
    model.generation_config.pad_token_id = tok.pad_token_id
    model.generation_config.eos_token_id = [tok.eos_token_id, tok.pad_token_id]
    return model


def param_counts(model):
    n_lm = n_vis = n_all = 0
    for name, p in model.named_parameters():
        n_all += p.numel()
        if "visual" in name:
            n_vis += p.numel()
        elif "language_model" in name and ".layers." in name:
            n_lm += p.numel()
    return {"params_total": n_all, "params_lm_layers": n_lm, "params_vision": n_vis}


def forward_flops(counts, tokens, patches):
    """A forward pass's FLOPs: 2 x (decoder-layer parameters x tokens + vision parameters x patches)."""
    return 2 * (counts["params_lm_layers"] * tokens + counts["params_vision"] * patches)


def make_rows(n, seed=0):
    """n easy-VQA training questions in the data contract (id, image path, question, a-d, answer)."""
    from data.prepare_easy_vqa import main as prepare
    from mcvqa.data import load_split

    folder = Path(tempfile.mkdtemp(prefix="bench_evqa_"))
    with contextlib.redirect_stdout(sys.stderr):
        prepare(["--out", str(folder), "--n_train", str(n), "--n_test", "4", "--seed", str(seed)])
    return load_split(folder, "train")


def bench_record(pixels):
    """The run record of every contender's rows: this pixel budget, the default prompt, no shuffling."""
    from mcvqa.args import DataArguments, ModelArguments, RunArguments
    from mcvqa.runs import RunRecord

    return RunRecord(ModelArguments(min_pixels=pixels, max_pixels=pixels), DataArguments(max_length=None),
                     RunArguments())


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def free(device):
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)


def peak_flops(device):
    if device.type != "cuda":
        return None, "cpu"
    name = torch.cuda.get_device_name(device)
    return next((f for key, f in PEAK_BF16 if key in name), None), name


# ------------------------------------------------------------------------------------------- training

class Counting:
    """Wraps a data collator: records the non-padding tokens and vision patches of each batch."""

    def __init__(self, collate):
        self.collate = collate
        self.tokens, self.patches, self.widths = [], [], []

    def __call__(self, rows):
        batch = self.collate(rows)
        self.tokens.append(int(batch["attention_mask"].sum()))
        self.widths.append(int(batch["attention_mask"].shape[1]))
        self.patches.append(int(batch["pixel_values"].shape[0]) if "pixel_values" in batch else 0)
        return batch


def step_timer(device):
    from transformers import TrainerCallback

    class StepTimer(TrainerCallback):
        """Synchronised wall time between consecutive step ends (data loading included); memory after step 1."""

        def __init__(self):
            self.ends, self.held = [], None

        def on_train_begin(self, args, state, control, **kwargs):
            sync(device)
            if device.type == "cuda":  # building random weights peaks on its own: not the trainer's memory
                torch.cuda.reset_peak_memory_stats(device)
            self.ends.append(time.perf_counter())

        def on_step_end(self, args, state, control, **kwargs):
            sync(device)
            self.ends.append(time.perf_counter())
            if state.global_step == 1 and device.type == "cuda":
                self.held = torch.cuda.memory_allocated(device)

    return StepTimer()


def profiler_callback(device, start_step, steps):
    """Profiles `steps` training steps from `start_step`: where the wall time goes (GPU busy share, top kernels)."""
    from torch.profiler import ProfilerActivity, profile
    from transformers import TrainerCallback

    class Profiled(TrainerCallback):
        def __init__(self):
            self.prof, self.t0, self.summary = None, None, None

        def on_step_begin(self, args, state, control, **kwargs):
            if state.global_step == start_step and self.prof is None:
                sync(device)
                self.prof = profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA])
                self.prof.__enter__()
                self.t0 = time.perf_counter()

        def on_step_end(self, args, state, control, **kwargs):
            if self.prof is not None and self.summary is None and state.global_step == start_step + steps:
                sync(device)
                wall = time.perf_counter() - self.t0
                self.prof.__exit__(None, None, None)
                self.summary = profile_summary(self.prof, wall, steps)

    return Profiled()


def profile_summary(prof, wall, steps):
    """GPU kernel time against wall time, and the operators that take it (ms per step)."""
    events = prof.key_averages()
    kernels = sum(e.self_device_time_total for e in events if e.device_type.name == "CUDA") / 1e3
    top = sorted(events, key=lambda e: e.self_device_time_total, reverse=True)[:12]
    cpu_top = sorted(events, key=lambda e: e.self_cpu_time_total, reverse=True)[:8]
    return {"wall_ms_per_step": 1e3 * wall / steps, "gpu_kernel_ms_per_step": kernels / steps,
            "gpu_busy": kernels / (1e3 * wall),
            "top_gpu_ms_per_step": {e.key[:90]: round(e.self_device_time_total / 1e3 / steps, 2) for e in top},
            "top_cpu_ms_per_step": {e.key[:90]: round(e.self_cpu_time_total / 1e3 / steps, 2) for e in cpu_top}}


def watch_vision(model):
    """Records, per forward, whether the vision tower's output requires grad (i.e. it will run a backward)."""
    seen = []
    for module in model.modules():
        if type(module).__name__.endswith("PatchMerger"):
            module.register_forward_hook(lambda m, i, o: seen.append(bool(getattr(o, "requires_grad", False))))
            break
    return seen


def training_args(cls, out, a, device, checkpointing, **extra):
    bf16 = device.type == "cuda"
    kwargs = dict(output_dir=out, per_device_train_batch_size=a.batch_size, max_steps=a.warmup_steps + a.train_steps,
                  learning_rate=1e-4, lr_scheduler_type="constant", warmup_steps=0, weight_decay=0.0,
                  label_smoothing_factor=0.0, logging_steps=10_000, save_strategy="no", eval_strategy="no",
                  report_to="none", disable_tqdm=True, dataloader_num_workers=0, seed=0, bf16=bf16, fp16=False,
                  gradient_checkpointing=checkpointing, gradient_checkpointing_kwargs={"use_reentrant": False},
                  use_cpu=device.type != "cuda", dataloader_pin_memory=False)
    return cls(**dict(kwargs, **extra))


def loss_recorder():
    from transformers import TrainerCallback

    class Losses(TrainerCallback):
        def __init__(self):
            self.losses = []

        def on_log(self, args, state, control, logs=None, **kwargs):
            if logs and "loss" in logs:
                self.losses.append(float(logs["loss"]))

    return Losses()


def speed_callback(a):
    """Selective checkpointing, applied once the Trainer has enabled checkpointing on every layer."""
    from transformers import TrainerCallback

    from mcvqa.kernels import checkpoint_every

    class Selective(TrainerCallback):
        def __init__(self):
            self.checkpointed = None

        def on_train_begin(self, args, state, control, model=None, **kwargs):
            if args.gradient_checkpointing:
                self.checkpointed = checkpoint_every(model, a.ckpt_every)

    return Selective()


def lora_config():
    from peft import LoraConfig

    from mcvqa.modeling import language_lora_targets

    return LoraConfig(r=16, lora_alpha=32, lora_dropout=0.05, target_modules=language_lora_targets(),
                      task_type="CAUSAL_LM")


def summarise(timer, counter, a, counts, device, checkpointing, peak, extra=None, ckpt_fraction=None):
    intervals = [t1 - t0 for t0, t1 in zip(timer.ends[:-1], timer.ends[1:])]
    timed = intervals[a.warmup_steps:]
    step = statistics.median(timed)
    n = len(intervals)
    tokens = statistics.mean(counter.tokens[:n][a.warmup_steps:] or counter.tokens)
    patches = statistics.mean(counter.patches[:n][a.warmup_steps:] or counter.patches)
    # Recomputation counted only for the layers that do it (selective checkpointing recomputes a fraction).
    k = 4 + 2 * (float(checkpointing) if ckpt_fraction is None else ckpt_fraction)
    flops = k * counts["params_lm_layers"] * tokens + 2 * counts["params_vision"] * patches
    out = {"step_s_median": step, "samples_per_s": a.batch_size / step, "tokens_per_s": tokens / step,
           "tokens_per_step": tokens, "padded_width_mean": statistics.mean(counter.widths),
           "patches_per_step": patches, "flops_per_step": flops, "flop_factor": k,
           "mfu": flops / step / peak if peak else None, "step_s_all": intervals}
    if device.type == "cuda":
        held = timer.held
        top = torch.cuda.max_memory_allocated(device)
        out.update(peak_mem_gib=top / GIB, held_mem_gib=held / GIB if held is not None else None,
                   act_mem_gib=(top - held) / GIB if held is not None else None,
                   peak_reserved_gib=torch.cuda.max_memory_reserved(device) / GIB)
    else:
        out.update(peak_mem_gib=None, held_mem_gib=None, act_mem_gib=None, peak_reserved_gib=None)
    out.update(extra or {})
    return out


def train_ours(a, tok_dir, processor, df, device, dtype, attn, checkpointing, peak, seed=0, losses=False):
    from collator import option_letter_ids
    from mcvqa.runs import make_collators
    from mcvqa.data import to_dataset
    from mcvqa.fast_vision import patch_vision_attention
    from mcvqa.kernels import compile_decoder_layers, decoder_layers, pad_vision_mlp
    from mcvqa.modeling import attach_lora
    from mcvqa.trainer import MCVQATrainer
    from transformers import TrainingArguments

    free(device)
    model = build_model(a.model, processor.tokenizer, device, dtype, attn)
    counts = param_counts(model)
    patched = patch_vision_attention(model)
    model = attach_lora(model, gradient_checkpointing=checkpointing)  # what load_model does for train_lora.py
    padded = pad_vision_mlp(model) if a.pad_vision_mlp else 0  # after LoRA: only a frozen vision MLP is padded
    compiled = compile_decoder_layers(model) if a.compile else 0
    vision_grad = watch_vision(model)
    _, collate = make_collators(bench_record(a.pixels), processor, model, train=True)
    rows = df.to_dict("records")
    collate.prepare(rows)  # what train_lora.py does before training: images and prompts cached
    counter, timer = Counting(collate), step_timer(device)
    profiled = profiler_callback(device, a.warmup_steps + a.train_steps - 3, 3) if a.profile and not losses else None
    recorder, selective = loss_recorder(), speed_callback(a)
    extra = {"seed": seed, "logging_steps": 1} if losses else {}
    with tempfile.TemporaryDirectory() as out:
        trainer = MCVQATrainer(model=model, args=training_args(TrainingArguments, out, a, device, checkpointing,
                                                               remove_unused_columns=False, **extra),
                               data_collator=counter, train_dataset=to_dataset(df),
                               letter_ids=option_letter_ids(processor.tokenizer),
                               callbacks=[timer, recorder, selective] + ([profiled] if profiled else []))
        trainer.train()
    n_layers = len(decoder_layers(model))
    ckpt_fraction = (selective.checkpointed / n_layers if selective.checkpointed is not None and n_layers else
                     float(checkpointing))
    result = summarise(timer, counter, a, counts, device, checkpointing, peak,
                       {"vision_attention_patched": patched, "vision_backward": any(vision_grad),
                        "profile": profiled.summary if profiled else None, "liger": a.liger_applied,
                        "compiled_layers": compiled, "padded_vision_mlps": padded, "checkpointed_layers": selective.checkpointed,
                        "decoder_layers": n_layers, "losses": recorder.losses if losses else None,
                        "trainable_params": sum(p.numel() for p in model.parameters() if p.requires_grad)},
                       ckpt_fraction=ckpt_fraction)
    trainer.accelerator.free_memory()
    del trainer, model
    free(device)
    return result, counts


def trl_dataset(df):
    """TRL's conversational VLM format: messages (image placeholder + text; assistant letter) and images."""
    import datasets
    from PIL import Image

    from mcvqa import LETTERS
    from mcvqa.prompts import conversation

    records = []
    for row in df.to_dict("records"):
        with Image.open(row["image"]) as im:
            image = im.convert("RGB")
        records.append({"messages": conversation(row["question"], [row[k] for k in LETTERS], answer=row["answer"]),
                        "images": [image]})
    return datasets.Dataset.from_list(records)


def train_trl(a, processor, df, device, dtype, attn, checkpointing, peak):
    from trl import SFTConfig, SFTTrainer

    free(device)
    model = build_model(a.model, processor.tokenizer, device, dtype, attn)
    counts = param_counts(model)
    vision_grad = watch_vision(model)
    timer = step_timer(device)
    with tempfile.TemporaryDirectory() as out:
        args = training_args(SFTConfig, out, a, device, checkpointing, max_length=None)
        trainer = SFTTrainer(model=model, args=args, train_dataset=trl_dataset(df), processing_class=processor,
                             peft_config=lora_config(), callbacks=[timer])
        counter = Counting(trainer.data_collator)
        trainer.data_collator = counter
        trainer.train()
    result = summarise(timer, counter, a, counts, device, checkpointing, peak,
                       {"collator": type(counter.collate).__name__, "vision_backward": any(vision_grad),
                        "trainable_params": sum(p.numel() for p in trainer.model.parameters() if p.requires_grad)})
    trainer.accelerator.free_memory()
    del trainer, model
    free(device)
    return result


# ------------------------------------------------------------------------------------------- inference

FIRST_LETTER = re.compile(r"\b([abcd])\b|^([abcd])", re.IGNORECASE)


def parse_letter(text):
    m = FIRST_LETTER.search(text.strip())
    return (m.group(1) or m.group(2)).lower() if m else None


def infer(a, processor, df, device, dtype, attn, peak):
    import inspect

    from PIL import Image

    from collator import option_letter_ids
    from mcvqa.runs import make_collators
    from mcvqa import LETTERS
    from mcvqa.fast_vision import patch_vision_attention
    from mcvqa.prompts import conversation
    from mcvqa.scoring import predict_probs
    from mcvqa.tta import identity

    free(device)
    model = build_model(a.model, processor.tokenizer, device, dtype, attn).eval()
    counts = param_counts(model)
    patch_vision_attention(model)
    speedups(model, a)
    rows = df.to_dict("records")[: a.infer_rows]
    collate, _ = make_collators(bench_record(a.pixels), processor, model)
    letter_ids = option_letter_ids(processor.tokenizer)
    auto = dtype if device.type == "cuda" else None
    # One view: nothing to share (the prefix-shared path is timed by the tta part).
    single = {"share_prefix": False} if "share_prefix" in inspect.signature(predict_probs).parameters else {}
    score = lambda rs: predict_probs(model, collate, rs, letter_ids, {"plain": identity},  # noqa: E731
                                     batch_size=a.infer_batch_size, device=device, dtype=auto, progress=False,
                                     **single)
    # Warm-up over every row (kernels, allocator, a cuDNN attention plan per sequence length); the collator's
    # caches are emptied, so the timed call reads and renders every image again.
    score(rows)
    collate.images.cache.clear()
    collate._text_cache.clear()
    collate._position_cache.clear()
    sync(device)
    t0 = time.perf_counter()
    score(rows)
    sync(device)
    ours_s = time.perf_counter() - t0
    profiled = None
    if a.profile:
        from torch.profiler import ProfilerActivity, profile

        sync(device)
        t0 = time.perf_counter()
        with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
            score(rows[: a.infer_batch_size])
            sync(device)
        profiled = profile_summary(prof, time.perf_counter() - t0, 1)
    cold, _ = make_collators(bench_record(a.pixels), processor, model)
    t0 = time.perf_counter()
    for i in range(0, len(rows), a.infer_batch_size):
        cold(rows[i: i + a.infer_batch_size])
    collate_s = time.perf_counter() - t0
    tokens = sum(len(collate.encode(r).input_ids) for r in rows)
    patches = sum(int(collate.images(r["image"])[1].prod()) for r in rows)
    flops = forward_flops(counts, tokens, patches)

    # generate-and-parse: processor per sample, greedy generate, first a-d letter of the decoded text.
    def generate(row, new_tokens):
        with Image.open(row["image"]) as im:
            image = im.convert("RGB")
        text = processor.apply_chat_template(conversation(row["question"], [row[k] for k in LETTERS]),
                                             tokenize=False, add_generation_prompt=True)
        inputs = processor(text=[text], images=[image], return_tensors="pt").to(device)
        if "pixel_values" in inputs:
            inputs["pixel_values"] = inputs["pixel_values"].to(dtype)
        with torch.inference_mode():
            out = model.generate(**inputs, max_new_tokens=new_tokens, do_sample=False)
        new = out[0, inputs["input_ids"].shape[1]:]
        return parse_letter(processor.tokenizer.decode(new, skip_special_tokens=True)), len(new)

    gen_rows = rows[: a.generate_rows]
    for module in model.modules():  # generate-and-parse is the plain transformers baseline: never compiled
        module._compiled_call_impl = None
    generate(gen_rows[0], 2)  # warm-up
    gen = {}
    for new_tokens in (a.generate_tokens, 2):
        sync(device)
        t0 = time.perf_counter()
        outs = [generate(r, new_tokens) for r in gen_rows]
        sync(device)
        secs = time.perf_counter() - t0
        gen[new_tokens] = {"max_new_tokens": new_tokens, "rows": len(gen_rows), "seconds": secs,
                           "samples_per_s": len(gen_rows) / secs,
                           "new_tokens_mean": statistics.mean(n for _, n in outs),
                           "parsed_fraction": sum(p is not None for p, _ in outs) / len(outs)}
    ours = {"rows": len(rows), "batch_size": a.infer_batch_size, "seconds": ours_s, "collate_cold_s": collate_s, "profile_one_batch": profiled,
            "samples_per_s": len(rows) / ours_s, "tokens": tokens, "patches": patches, "flops": flops,
            "mfu": flops / ours_s / peak if peak else None}
    model = None  # freed on return with the closure above
    free(device)
    return {"scoring": ours, "generate": gen[a.generate_tokens], "generate_2tok": gen[2]}


# ------------------------------------------------------------------------------------------- Liger agreement

def speedups(model, a):
    """The inference-side options under test: padded vision MLP, compiled decoder layers."""
    from mcvqa.kernels import compile_decoder_layers, pad_vision_mlp

    if a.pad_vision_mlp:
        model.requires_grad_(False)  # scoring only; a trainable MLP would be left unpadded
        pad_vision_mlp(model)
    if a.compile:
        compile_decoder_layers(model)


def weights_fingerprint(model):
    """A few sums over the weights: two builds from the same seed must match exactly."""
    with torch.no_grad():
        return [float(p.float().sum()) for _, p in list(model.named_parameters())[:: 97]]


def score_rows(a, model, processor, rows, device, dtype, views=None, **kwargs):
    from collator import option_letter_ids
    from mcvqa.runs import make_collators
    from mcvqa.scoring import predict_probs
    from mcvqa.tta import identity

    collate, _ = make_collators(bench_record(a.pixels), processor, model)
    auto = dtype if device.type == "cuda" else None
    return predict_probs(model, collate, rows, option_letter_ids(processor.tokenizer), views or {"plain": identity},
                         batch_size=a.infer_batch_size, device=device, dtype=auto, progress=False, **kwargs)


def liger_check(a, tok_dir, processor, df, device, dtype, peak):
    """Liger against the same random weights without it: letter probabilities of --infer_rows rows (bf16) and a
    --loss_steps LoRA loss curve from the same seed, next to the curve of another seed (the noise scale).
    Runs first: Liger's patches stay applied for the rest of the process."""
    import argparse

    import numpy as np

    from mcvqa.fast_vision import patch_vision_attention
    from mcvqa.kernels import apply_liger

    rows = df.to_dict("records")[: a.infer_rows]
    warm = min(10, max(a.loss_steps - 1, 0))
    steps = argparse.Namespace(**dict(vars(a), warmup_steps=warm, train_steps=a.loss_steps - warm, profile=False,
                                      compile=False, pad_vision_mlp=False, ckpt_every=1))

    def probs_and_fingerprint(references=False):
        """bf16 probabilities at --infer_batch_size; with `references` also at half that batch (bf16 noise:
        other kernels, other padding) and in fp32 on the same (bf16-valued) weights."""
        free(device)
        model = build_model(a.model, processor.tokenizer, device, dtype, a.attn).eval()
        patch_vision_attention(model)
        fingerprint = weights_fingerprint(model)
        probs = score_rows(a, model, processor, rows, device, dtype)["plain"]
        refs = {}
        if references:
            half = argparse.Namespace(**dict(vars(a), infer_batch_size=max(1, a.infer_batch_size // 2)))
            refs["bf16_half_batch"] = score_rows(half, model, processor, rows, device, dtype)["plain"]
            model.float()
            refs["fp32"] = score_rows(a, model, processor, rows, device, None)["plain"]
        del model
        free(device)
        return probs, fingerprint, refs

    def diffs(x, y):
        return {"max_abs_diff": float(np.abs(x - y).max()), "mean_abs_diff": float(np.abs(x - y).mean()),
                "argmax_agreement": float((x.argmax(1) == y.argmax(1)).mean())}

    out = {"rows": len(rows), "loss_steps": a.loss_steps}
    print("[bench] liger_check: without", file=sys.stderr, flush=True)
    p0, f0, refs = probs_and_fingerprint(references=True)
    runs = {}
    steps.liger_applied = False
    if a.loss_steps:
        for name, seed in (("without_seed0", 0), ("without_seed1", 1)):
            runs[name], _ = train_ours(steps, tok_dir, processor, df, device, dtype, a.attn, True, peak, seed=seed,
                                       losses=True)
    module = importlib.import_module(f"transformers.models.{ARCH[a.model]}.modeling_{ARCH[a.model]}")
    before = dict(vars(module))
    applied = apply_liger(ARCH[a.model], "true", device=device)
    print("[bench] liger_check: with", file=sys.stderr, flush=True)
    p1, f1, _ = probs_and_fingerprint()
    steps.liger_applied = applied
    if a.loss_steps:
        runs["with_seed0"], _ = train_ours(steps, tok_dir, processor, df, device, dtype, a.attn, True, peak,
                                           seed=0, losses=True)
    # Liger's patches are names replaced in the modelling module: put the originals back, so that the rest of
    # the run follows --liger.
    for key in set(vars(module)) - set(before):
        delattr(module, key)
    for key, value in before.items():
        setattr(module, key, value)
    out["references"] = {"with_vs_without": diffs(p1, p0),
                         "without_bf16_batch_vs_half_batch": diffs(p0, refs["bf16_half_batch"]),
                         "without_bf16_vs_fp32": diffs(p0, refs["fp32"]), "with_bf16_vs_fp32": diffs(p1, refs["fp32"])}
    out.update(same_weights=f0 == f1, prob_max_abs_diff=float(np.abs(p0 - p1).max()),
               prob_mean_abs_diff=float(np.abs(p0 - p1).mean()),
               argmax_agreement=float((p0.argmax(1) == p1.argmax(1)).mean()),
               top2_margin_min=float((np.sort(p0, 1)[:, -1] - np.sort(p0, 1)[:, -2]).min()),
               probs_without=p0.round(6).tolist(), probs_with=p1.round(6).tolist(),
               probs_fp32=refs["fp32"].round(6).tolist())
    if not a.loss_steps:
        return out
    l0, l0b, l1 = (np.array(runs[k]["losses"]) for k in ("without_seed0", "without_seed1", "with_seed0"))
    n = min(len(l0), len(l0b), len(l1))
    out.update(
        loss_max_abs_diff_same_seed=float(np.abs(l0[:n] - l1[:n]).max()),
        loss_mean_abs_diff_same_seed=float(np.abs(l0[:n] - l1[:n]).mean()),
        loss_max_abs_diff_other_seed=float(np.abs(l0[:n] - l0b[:n]).max()),
        loss_mean_abs_diff_other_seed=float(np.abs(l0[:n] - l0b[:n]).mean()),
        losses={k: r["losses"] for k, r in runs.items()},
        samples_per_s={k: r["samples_per_s"] for k, r in runs.items()},
        act_mem_gib={k: r["act_mem_gib"] for k, r in runs.items()})
    return out


# ------------------------------------------------------------------------------------------- TTA cost

def tta_cost(a, processor, df, device, dtype):
    """Wall time of predict_probs over the 12 TTA views against one view, same rows and batch size; with and
    without prefix sharing when predict_probs offers it."""
    import argparse
    import inspect

    from mcvqa.fast_vision import patch_vision_attention
    from mcvqa.scoring import predict_probs
    from mcvqa.tta import identity, named_views

    free(device)
    model = build_model(a.model, processor.tokenizer, device, dtype, a.attn).eval()
    patch_vision_attention(model)
    # Not compiled: the prefix-shared path runs the layers with a KV cache, a second set of graphs per layer.
    speedups(model, argparse.Namespace(**dict(vars(a), compile=False)))
    rows = df.to_dict("records")[: a.infer_rows]
    shared = "share_prefix" in inspect.signature(predict_probs).parameters
    settings = [("full", {"share_prefix": False} if shared else {})] + ([("shared", {"share_prefix": True})] if shared
                                                                       else [])
    out = {"rows": len(rows), "batch_size": a.infer_batch_size, "share_prefix_available": shared}
    views12 = named_views(tta=True)
    for label, kwargs in settings:
        for name, views in (("one_view", {"identity": identity}), ("tta12", views12)):
            # Warmed on every row, not one batch: each new sequence length costs a cuDNN attention plan and new
            # kernel choices (call 23: the 7B's first pass over 128 rows took 8.4 s, the same pass warm 2.7 s).
            score_rows(a, model, processor, rows, device, dtype, views=views, **kwargs)
            sync(device)
            t0 = time.perf_counter()
            probs = score_rows(a, model, processor, rows, device, dtype, views=views, **kwargs)
            sync(device)
            out[f"{label}_{name}_s"] = time.perf_counter() - t0
            out[f"{label}_{name}_views"] = len(probs)
        out[f"{label}_cost_vs_one_view"] = out[f"{label}_tta12_s"] / out[f"{label}_one_view_s"]
    if shared:
        out.update(tta_flops(a, model, processor, rows, views12))
    if a.profile and device.type == "cuda":
        from torch.profiler import ProfilerActivity, profile

        # One batch of rows, one view and the twelve: where the twelve views' time goes beyond their FLOPs.
        for label, views, kwargs in (("one_view", {"identity": identity}, settings[0][1]),
                                     ("tta12", views12, settings[-1][1])):
            sync(device)
            t0 = time.perf_counter()
            with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
                score_rows(a, model, processor, rows[: a.infer_batch_size], device, dtype, views=views, **kwargs)
                sync(device)
            out[f"profile_{label}_one_batch"] = profile_summary(prof, time.perf_counter() - t0, 1)
    del model
    free(device)
    return out


def tta_flops(a, model, processor, rows, views):
    """The twelve views' FLOPs against one view's, as the prefix-shared path computes them (the same count as the
    infer part: 2 x (N_lm x tokens + N_vision x patches)): the floor of `tta12_cost_vs_one_view` at equal MFU."""
    from collator import rope_positions
    from mcvqa.prefix_scoring import option_order_groups, shared_batch
    from mcvqa.runs import make_collators

    counts = param_counts(model)
    collate, _ = make_collators(bench_record(a.pixels), processor, model)
    position_fn = collate.position_fn or rope_positions(model, collate.image_token_id)
    flops = partial(forward_flops, counts)
    one_flops = shared_flops = 0
    tokens = {"prefix": 0, "suffix": 0}
    groups = option_order_groups(views, rows)
    for start in range(0, len(rows), a.infer_batch_size):  # batch by batch: 128 rows of pixels at once are ~0.6 GB
        chunk = rows[start: start + a.infer_batch_size]
        one = collate(chunk)
        one_flops += flops(int(one["attention_mask"].sum()), int(one["pixel_values"].shape[0]))
        for names in groups:
            batch = shared_batch(collate, chunk, [views[n] for n in names], position_fn) if len(names) > 1 else None
            if batch is None:  # scored in full
                for n in names:
                    full = collate(chunk, view=views[n])
                    shared_flops += flops(int(full["attention_mask"].sum()), int(full["pixel_values"].shape[0]))
                continue
            prefix, suffix = batch["prefix"], batch["suffix"]
            n_prefix = int(prefix["attention_mask"].sum())
            n_suffix = int(suffix["attention_mask"][:, prefix["input_ids"].shape[1]:].sum())
            tokens["prefix"] += n_prefix
            tokens["suffix"] += n_suffix
            shared_flops += flops(n_prefix + n_suffix, int(prefix["pixel_values"].shape[0]))
    return {"one_view_flops": one_flops, "shared_tta12_flops": shared_flops, "shared_tta12_tokens": tokens,
            "shared_flops_vs_one_view": shared_flops / one_flops}


# ------------------------------------------------------------------------------------------- QLoRA

def qlora_peak(name, a, processor, df, device):
    """Peak GPU memory of 4-bit QLoRA training in fp16 at batch 1 with checkpointing (the T4 path).

    One model load, then a few steps at each image size of --qlora_sides (square, pixels = side^2), smallest
    first; a size that runs out of memory ends the sweep. `fits_15gib` compares the allocator's reserved peak
    (what must fit on the card, fragmentation included) with 15 GiB, a 16 GB T4's usable memory.
    """
    from collator import option_letter_ids
    from mcvqa.runs import make_collators
    from mcvqa.data import to_dataset
    from mcvqa.modeling import load_model
    from mcvqa.trainer import MCVQATrainer
    from transformers import TrainingArguments

    free(device)
    with tempfile.TemporaryDirectory(dir=a.tmp) as folder:
        model = build_model(name, processor.tokenizer, device, torch.bfloat16, "sdpa")
        model.save_pretrained(folder, safe_serialization=True)
        del model
        free(device)
        model, _ = load_model(folder, precision="fp16", quantization="4bit", attn_implementation="sdpa",
                              gradient_checkpointing=True)
    weights = torch.cuda.memory_allocated(device)
    steps = max(3, min(a.train_steps, 6))
    sizes = {}
    for side in a.qlora_sides:
        pixels = side * side
        free(device)
        _, collate = make_collators(bench_record(pixels), processor, model, train=True)
        timer = step_timer(device)
        try:
            with tempfile.TemporaryDirectory() as out:
                args = TrainingArguments(output_dir=out, per_device_train_batch_size=1, max_steps=steps,
                                         learning_rate=1e-4, fp16=True, bf16=False, gradient_checkpointing=True,
                                         gradient_checkpointing_kwargs={"use_reentrant": False}, save_strategy="no",
                                         eval_strategy="no", report_to="none", disable_tqdm=True,
                                         logging_steps=10_000, remove_unused_columns=False, dataloader_num_workers=0)
                trainer = MCVQATrainer(model=model, args=args, data_collator=collate, train_dataset=to_dataset(df),
                                       letter_ids=option_letter_ids(processor.tokenizer), callbacks=[timer])
                trainer.train()
                trainer.accelerator.free_memory()
                del trainer
        except torch.OutOfMemoryError:
            sizes[str(side)] = {"pixels": pixels, "oom": True, "fits_15gib": False}
            break
        intervals = [t1 - t0 for t0, t1 in zip(timer.ends[:-1], timer.ends[1:])]
        reserved = torch.cuda.max_memory_reserved(device) / GIB
        sizes[str(side)] = {"pixels": pixels, "image_tokens": pixels // (28 * 28),
                            "peak_mem_gib": torch.cuda.max_memory_allocated(device) / GIB,
                            "peak_reserved_gib": reserved, "fits_15gib": reserved <= 15.0,
                            "held_mem_gib": timer.held / GIB if timer.held is not None else None,
                            "steps": steps, "step_s_all": intervals}
    first = sizes[str(a.qlora_sides[0])]
    fitting = [v["pixels"] for v in sizes.values() if v.get("fits_15gib")]
    result = {"weights_mem_gib": weights / GIB, "pixels": first["pixels"], "peak_mem_gib": first.get("peak_mem_gib"),
              "peak_reserved_gib": first.get("peak_reserved_gib"), "by_side": sizes,
              "max_pixels_fit_15gib": max(fitting) if fitting else None}
    del model
    free(device)
    return result


# ------------------------------------------------------------------------------------------- main

def guarded(results, key, fn, *args):
    """One part's failure is recorded under `skipped` (traceback on stderr); the other parts still run."""
    try:
        return fn(*args)
    except Exception as err:  # noqa: BLE001 - recorded, and the results still get written
        import traceback

        traceback.print_exc()
        results["skipped"][key] = f"{type(err).__name__}: {err}"
        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
        return None


def ratio(x, y):
    return x / y if x is not None and y not in (None, 0) else None


def versions():
    out = {}
    for pkg in ("torch", "transformers", "peft", "trl", "accelerate", "bitsandbytes", "datasets"):
        try:
            out[pkg] = __import__(pkg).__version__
        except Exception:  # noqa: BLE001 - absent or broken: recorded as null
            out[pkg] = None
    return out


def fmt(x, spec):
    return "-" if x is None else format(x, spec)


def table(results):
    lines = [f"issue-5 benchmark | model {results['model']} | device {results['device']} | "
             f"batch {results['config']['batch_size']} | {results['config']['pixels']} px"]
    lines.append(f"{'contender':<22} {'samples/s':>10} {'tokens/s':>10} {'step ms':>9} {'peak GiB':>9} "
                 f"{'held GiB':>9} {'act GiB':>8} {'MFU':>6}")
    for key, r in results["train"].items():
        if r.get("skipped"):
            lines.append(f"{key:<22} skipped: {r['skipped']}")
            continue
        lines.append(f"{key:<22} {r['samples_per_s']:>10.2f} {r['tokens_per_s']:>10.0f} {1000 * r['step_s_median']:>9.1f} "
                     f"{fmt(r['peak_mem_gib'], '9.2f'):>9} {fmt(r['held_mem_gib'], '9.2f'):>9} "
                     f"{fmt(r['act_mem_gib'], '8.2f'):>8} {fmt(r['mfu'], '6.3f'):>6}")
    inf = results.get("infer")
    if inf:
        lines.append(f"{'infer scoring b' + str(inf['scoring']['batch_size']):<22} {inf['scoring']['samples_per_s']:>10.2f}"
                     f"{'':>31}{'':>28} {fmt(inf['scoring']['mfu'], '6.3f'):>6}")
        for key in ("generate", "generate_2tok"):
            g = inf[key]
            lines.append(f"{'generate ' + str(g['max_new_tokens']) + ' tok b1':<22} {g['samples_per_s']:>10.2f}")
    lines.append("key results:")
    for k, v in results["summary"].items():
        lines.append(f"  {k:<34} {fmt(v, '.3f') if isinstance(v, float) or v is None else v}")
    return "\n".join(lines)


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", choices=sorted(ARCH), default="qwen2.5-vl-7b")
    p.add_argument("--out", default="results.json", help="results JSON path")
    p.add_argument("--device", default=None, help="cuda (default when available) or cpu")
    p.add_argument("--parts", default="train,trl,infer",
                   help="comma list of train, trl, infer, qlora, liger_check, tta")
    p.add_argument("--liger", default="auto", choices=["auto", "true", "false"],
                   help="Liger kernels for our training and scoring (mcvqa.kernels.apply_liger); TRL runs first, "
                        "without them")
    p.add_argument("--compile", action="store_true", help="regional torch.compile of the decoder layers (ours)")
    p.add_argument("--pad_vision_mlp", action="store_true",
                   help="zero-pad the vision MLP width to a multiple of 64 (mcvqa.kernels.pad_vision_mlp; exact)")
    p.add_argument("--ckpt_every", type=int, default=1,
                   help="with checkpointing, recompute every N-th decoder layer only (1: all)")
    p.add_argument("--loss_steps", type=int, default=None, help="liger_check LoRA steps (default 50 on GPU, 4 on CPU)")
    p.add_argument("--qlora", action="store_true", help="also run the 4-bit QLoRA fp16 T4 stand-in (3B and 7B)")
    p.add_argument("--checkpointing", default="on,off", help="gradient checkpointing settings to time: on,off")
    p.add_argument("--batch_size", type=int, default=None, help="training batch (default 8 on GPU, 2 on CPU)")
    p.add_argument("--warmup_steps", type=int, default=None, help="untimed steps (default 10 on GPU, 1 on CPU)")
    p.add_argument("--train_steps", type=int, default=None, help="timed steps (default 20 on GPU, 2 on CPU)")
    p.add_argument("--infer_rows", type=int, default=None, help="rows scored (default 128 on GPU, 8 on CPU)")
    p.add_argument("--infer_batch_size", type=int, default=32)
    p.add_argument("--generate_rows", type=int, default=None, help="rows generated (default 16 on GPU, 2 on CPU)")
    p.add_argument("--generate_tokens", type=int, default=10, help="max_new_tokens of generate-and-parse")
    p.add_argument("--pixels", type=int, default=None,
                   help="min = max pixels per image (default 448*448 = 200704; tiny: 112*112)")
    p.add_argument("--attn", default="sdpa", help="attention implementation for every contender")
    p.add_argument("--cudnn_sdp", default="on", choices=["on", "off"],
                   help="off: torch.backends.cuda.enable_cudnn_sdp(False), so masked SDPA (the prefix-shared "
                        "suffix pass) takes another backend; on: torch's default")
    p.add_argument("--qlora_sides", default="448,672,896,1120,1344,1792",
                   help="square image sides (pixels = side^2) of the QLoRA sweep; the first gives the *_peak_gib keys")
    p.add_argument("--profile", action="store_true",
                   help="profile 3 steps of our training and one scoring batch (GPU busy share, top kernels)")
    p.add_argument("--save_model", default=None,
                   help="only build --model with random weights and save it, with the tokenizer and processor, as a "
                        "model folder train_lora.py loads (bench/ddp_scaling.sh); no benchmark")
    p.add_argument("--tmp", default=None, help="folder for the QLoRA model save (needs ~17 GB for 7B)")
    a = p.parse_args(argv)
    a.device = a.device or ("cuda" if torch.cuda.is_available() else "cpu")
    gpu = a.device.startswith("cuda")
    defaults = dict(batch_size=(8, 2), warmup_steps=(10, 1), train_steps=(20, 2), infer_rows=(128, 8),
                    generate_rows=(16, 2), loss_steps=(50, 4))
    for key, (g, c) in defaults.items():
        if getattr(a, key) is None:
            setattr(a, key, g if gpu else c)
    if a.pixels is None:
        a.pixels = TINY_PIXELS if a.model.startswith("tiny") else 448 * 448
    a.parts = [x for x in a.parts.split(",") if x]
    if a.qlora and "qlora" not in a.parts:
        a.parts.append("qlora")
    a.qlora_sides = [int(x) for x in a.qlora_sides.split(",") if x]
    a.checkpointing = [x == "on" for x in a.checkpointing.split(",") if x]
    return a


def main(argv=None):
    from mcvqa.modeling import load_processor
    from tools.make_tiny_model import make_tiny_model

    a = parse_args(argv)
    device = torch.device(a.device)
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    if a.cudnn_sdp == "off":
        torch.backends.cuda.enable_cudnn_sdp(False)
    peak, device_name = peak_flops(device)
    started = time.time()
    arch = ARCH[a.model]
    tok_dir = Path(tempfile.mkdtemp(prefix="bench_tok_"))
    make_tiny_model(arch, tok_dir, min_pixels=a.pixels, max_pixels=a.pixels)
    processor = load_processor(tok_dir, a.pixels, a.pixels)
    if a.save_model:
        model = build_model(a.model, processor.tokenizer, device, dtype, a.attn)
        model.save_pretrained(a.save_model, safe_serialization=True)
        for f in tok_dir.iterdir():  # tokenizer, chat template and processor settings of the same family
            if f.name not in ("config.json", "generation_config.json", "model.safetensors"):
                shutil.copy(f, Path(a.save_model) / f.name)
        print(f"saved {a.model} ({sum(p.numel() for p in model.parameters()) / 1e9:.2f}B random weights) to "
              f"{a.save_model}")
        return None
    n_rows = max(a.batch_size * max(a.warmup_steps + a.train_steps, a.loss_steps), a.infer_rows, a.generate_rows)
    df = make_rows(n_rows)
    results = {"model": a.model, "device": device_name, "peak_flops_bf16": peak, "versions": versions(),
               "command": " ".join([sys.executable, *sys.argv]) if argv is None else
               " ".join(["bench/benchmark.py", *argv]),
               "config": {"batch_size": a.batch_size, "warmup_steps": a.warmup_steps, "train_steps": a.train_steps,
                          "pixels": a.pixels, "dtype": str(dtype), "attn": a.attn, "lora": "r=16 alpha=32 dropout=0.05",
                          "rows": len(df), "infer_rows": a.infer_rows, "infer_batch_size": a.infer_batch_size,
                          "generate_rows": a.generate_rows, "generate_tokens": a.generate_tokens,
                          "liger": a.liger, "compile": a.compile, "ckpt_every": a.ckpt_every,
                          "pad_vision_mlp": a.pad_vision_mlp},
               "flop_formula": "train: (4, +2 with checkpointing) x N_lm_layers x text_tokens + 2 x N_vision x patches; "
                               "infer: 2 x (same); attention scores and LM head left out",
               "train": {}, "infer": None, "qlora": None, "liger_check": None, "tta": None, "skipped": {}}

    # Liger patches transformers' modules for the rest of the process: TRL's recipe (which does not use it)
    # and the unpatched half of liger_check run before it is applied.
    for ckpt in a.checkpointing:
        tag = "ckpt" if ckpt else "no_ckpt"
        if "trl" in a.parts:
            if importlib.util.find_spec("trl") is None:
                results["train"][f"trl_{tag}"] = {"skipped": "trl is not installed"}
            else:
                print(f"[bench] trl {tag}", file=sys.stderr, flush=True)
                results["train"][f"trl_{tag}"] = guarded(results, f"trl_{tag}", train_trl, a, processor, df, device,
                                                         dtype, a.attn, ckpt, peak) or {"skipped": "failed"}
    if "liger_check" in a.parts:
        if device.type != "cuda" or importlib.util.find_spec("liger_kernel") is None:
            results["skipped"]["liger_check"] = "needs CUDA and liger-kernel"
        else:
            results["liger_check"] = guarded(results, "liger_check", liger_check, a, tok_dir, processor, df, device,
                                             dtype, peak)
    from mcvqa.kernels import apply_liger

    a.liger_applied = apply_liger(arch, a.liger, device=device)
    results["liger_applied"] = a.liger_applied
    for ckpt in a.checkpointing:
        tag = "ckpt" if ckpt else "no_ckpt"
        if "train" in a.parts:
            print(f"[bench] ours {tag}", file=sys.stderr, flush=True)
            results["train"][f"ours_{tag}"], counts = train_ours(a, tok_dir, processor, df, device, dtype, a.attn,
                                                                  ckpt, peak)
            results["params"] = counts
    if "infer" in a.parts:
        print("[bench] inference", file=sys.stderr, flush=True)
        results["infer"] = guarded(results, "infer", infer, a, processor, df, device, dtype, a.attn, peak)
    if "tta" in a.parts:
        print("[bench] tta cost", file=sys.stderr, flush=True)
        results["tta"] = guarded(results, "tta", tta_cost, a, processor, df, device, dtype)
    if "qlora" in a.parts:
        results["qlora"] = {}
        reason = None
        if device.type != "cuda":
            reason = "needs CUDA"
        elif importlib.util.find_spec("bitsandbytes") is None:
            reason = "bitsandbytes is not installed"
        for name in ("qwen2.5-vl-3b", "qwen2.5-vl-7b"):
            if reason:
                results["qlora"][name] = {"skipped": reason}
                continue
            print(f"[bench] qlora {name}", file=sys.stderr, flush=True)
            try:
                results["qlora"][name] = qlora_peak(name, a, processor, df, device)
            except Exception as err:  # noqa: BLE001 - recorded, the other results still get written
                results["qlora"][name] = {"skipped": f"{type(err).__name__}: {err}"}

    train = results["train"]

    def get(key, field):
        r = train.get(key) or {}
        return r.get(field)

    summary = {}
    for tag, suffix in (("ckpt", ""), ("no_ckpt", "_no_ckpt")):
        summary[f"train_speedup_vs_trl{suffix}"] = ratio(get(f"ours_{tag}", "samples_per_s"),
                                                         get(f"trl_{tag}", "samples_per_s"))
        summary[f"train_act_mem_ratio_vs_trl{suffix}"] = ratio(get(f"ours_{tag}", "act_mem_gib"),
                                                               get(f"trl_{tag}", "act_mem_gib"))
        summary[f"train_peak_mem_ratio_vs_trl{suffix}"] = ratio(get(f"ours_{tag}", "peak_mem_gib"),
                                                                get(f"trl_{tag}", "peak_mem_gib"))
        summary[f"train_mfu{suffix}"] = get(f"ours_{tag}", "mfu")
        summary[f"train_samples_per_s{suffix}"] = get(f"ours_{tag}", "samples_per_s")
        summary[f"train_act_mem_gib{suffix}"] = get(f"ours_{tag}", "act_mem_gib")
    inf = results["infer"]
    summary["infer_speedup_vs_generate"] = ratio(inf["scoring"]["samples_per_s"], inf["generate"]["samples_per_s"]) \
        if inf else None
    summary["infer_speedup_vs_generate_2tok"] = ratio(inf["scoring"]["samples_per_s"],
                                                      inf["generate_2tok"]["samples_per_s"]) if inf else None
    summary["infer_mfu"] = inf["scoring"]["mfu"] if inf else None
    lc = results["liger_check"] or {}
    summary["liger_prob_max_abs_diff"] = lc.get("prob_max_abs_diff")
    summary["liger_argmax_agreement"] = lc.get("argmax_agreement")
    summary["liger_loss_max_abs_diff_same_seed"] = lc.get("loss_max_abs_diff_same_seed")
    summary["liger_loss_max_abs_diff_other_seed"] = lc.get("loss_max_abs_diff_other_seed")
    tta = results["tta"] or {}
    # Twelve views (prefix-shared where available) against one view scored the ordinary way.
    summary["tta12_cost_vs_one_view"] = ratio(tta.get("shared_tta12_s", tta.get("full_tta12_s")),
                                              tta.get("full_one_view_s"))
    summary["tta12_cost_vs_one_view_full"] = tta.get("full_cost_vs_one_view")
    summary["tta12_flops_vs_one_view"] = tta.get("shared_flops_vs_one_view")
    summary["liger_applied"] = a.liger_applied
    q = results["qlora"] or {}
    for name, key in (("qwen2.5-vl-3b", "qlora_fp16_3b_peak_gib"), ("qwen2.5-vl-7b", "qlora_fp16_7b_peak_gib")):
        summary[key] = (q.get(name) or {}).get("peak_mem_gib")
        summary[key.replace("peak_gib", "max_pixels_15gib")] = (q.get(name) or {}).get("max_pixels_fit_15gib")
        if (q.get(name) or {}).get("skipped"):
            results["skipped"][key] = q[name]["skipped"]
        elif name not in q:
            results["skipped"][key] = "not run (add --qlora)"
    results["summary"] = summary
    results["wall_s"] = time.time() - started
    out = Path(a.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2, default=lambda x: None if isinstance(x, float) and math.isnan(x)
                              else str(x)))
    print(table(results))
    print(f"wrote {out} ({results['wall_s']:.0f} s)")
    return results


if __name__ == "__main__":
    # Quiet for the command line only: main() called in-process (tests) leaves transformers' logging as it was.
    import transformers

    transformers.logging.set_verbosity_error()
    main()
