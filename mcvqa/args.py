"""The argument types of training, read by train_lora.py, predict.py (through the run record), the
benchmark and the tools: what the model is (`ModelArguments`), what it learns from and how a row is
shown (`DataArguments`), and how the run is controlled (`RunArguments`); plus transformers'
`TrainingArguments` with this task's defaults (`TRAINING_DEFAULTS`).
"""

from dataclasses import dataclass, field

from transformers import TrainingArguments

LIGER_CHOICES = ("auto", "true", "false")
DEVICE_MAP_CHOICES = ("auto", "balanced", "balanced_low_0", "sequential")  # transformers' placement strategies


# One model over several GPUs in one process: train_lora.py's ModelArguments and predict.py's own flags.
def device_map_field():
    return field(default=None, metadata={
        "help": "Model parallelism in one process, for a model larger than one GPU: auto spreads its layers over the "
                "visible GPUs (each layer whole on one GPU, evenly; then the CPU), capped by --max_memory. One "
                "process only (python, not accelerate launch with several); training refuses layers left on the CPU. "
                "Default: the whole model on each process's GPU.", "choices": list(DEVICE_MAP_CHOICES)})


def max_memory_field():
    return field(default=None, metadata={
        "help": "With --device_map: the most each device may hold, e.g. '0=14GiB,1=14GiB,cpu=30GiB' (a GPU index or "
                "cpu = a size in B/KB/MB/GB or KiB/MiB/GiB); leave room for activations (README: A model larger "
                "than one GPU)."})


@dataclass
class ModelArguments:
    model_name_or_path: str = field(default="Qwen/Qwen2.5-VL-7B-Instruct",
                                    metadata={"help": "Hub id or local folder of a Qwen2/2.5/3-VL model."})
    quantization: str = field(default="none", metadata={
        "help": "4bit (QLoRA, nf4 + double quantisation), 8bit or none. Needs CUDA and bitsandbytes.",
        "choices": ["4bit", "8bit", "none"]})
    precision: str = field(default="auto", metadata={
        "help": "auto: bf16 where the GPU has it, fp16 autocast with fp32 trainable weights otherwise (T4), "
                "fp32 on CPU.", "choices": ["auto", "bf16", "fp16", "fp32"]})
    attn_implementation: str = field(default="auto", metadata={
        "help": "auto (flash_attention_2 when installed and supported, else sdpa), sdpa, eager, flash_attention_2."})
    liger: str = field(default="auto", metadata={
        "help": "Liger-Kernel's fused RoPE/RMSNorm/SwiGLU kernels: auto (on when liger-kernel is installed, the "
                "device is CUDA and the base is not 4/8-bit), true or false.", "choices": list(LIGER_CHOICES)})
    compile_layers: bool = field(default=False, metadata={
        "help": "Regional torch.compile of each decoder layer (CUDA): fuses the work between the matrix products. "
                "7B on an H200 with checkpointing: 0.30-0.34 MFU against 0.20-0.25 eager (bench/RESULTS.md); each new "
                "batch shape compiles once (~12 s)."})
    full_finetune: bool = field(default=False, metadata={"help": "Train all weights instead of LoRA."})
    lora_r: int = field(default=16, metadata={"help": "LoRA rank."})
    lora_alpha: int = field(default=32, metadata={"help": "LoRA scaling alpha."})
    lora_dropout: float = field(default=0.05, metadata={"help": "LoRA dropout."})
    lora_vision: bool = field(default=False, metadata={"help": "Also put LoRA on the vision tower's linear layers."})
    min_pixels: int = field(default=112 * 112, metadata={"help": "Images smaller than this are upscaled."})
    max_pixels: int = field(default=448 * 448, metadata={
        "help": "Pixel budget per image (the main memory knob); the same in training and prediction."})
    trust_remote_code: bool = field(default=False, metadata={"help": "Allow code from the model folder to run."})
    device_map: str = device_map_field()
    max_memory: str = max_memory_field()


@dataclass
class DataArguments:
    data_dir: str = field(default="data", metadata={"help": "Folder with train.csv, test.csv, sample_submission.csv."})
    fold: int = field(default=1, metadata={"help": "Validation fold, counted from 1; -1 trains on all rows."})
    full_train: bool = field(default=False, metadata={"help": "Same as --fold -1."})
    n_folds: int = field(default=5, metadata={"help": "Number of folds (assigned once, stored in folds.csv)."})
    max_length: int = field(default=2048, metadata={"help": "Longest sequence; longer rows are refused, never cut."})
    shuffle_choices: bool = field(default=False, metadata={
        "help": "Augmentation: show the options in a random order each time (the answer follows)."})
    supervise_eos: bool = field(default=False, metadata={"help": "Also supervise <|im_end|> after the letter."})
    restricted_loss: bool = field(default=False, metadata={
        "help": "Cross-entropy over the four option letters only, instead of the whole vocabulary."})
    prompt_template: str = field(default=None, metadata={
        "help": "User-turn format with {question}, {options}, {instruction}; default: question, options, instruction."})
    templates_by_type: str = field(default=None, metadata={
        "help": "JSON or YAML mapping question_type -> template (overrides --prompt_template for that type)."})
    oversample: str = field(default=None, metadata={
        "help": "Repeat the training rows of some question types, e.g. 'colour=3,shape=3' (the type column, "
                "or the type inferred from the question): rare, hard types get more steps; validation is unchanged."})
    oversample_by: str = field(default="question_type", metadata={
        "help": "The train.csv column whose values --oversample names, e.g. a finer group column than the type."})
    max_train_samples: int = field(default=None, metadata={"help": "Use only this many training rows (quick runs)."})
    max_eval_samples: int = field(default=None, metadata={"help": "Evaluate during training on at most this many rows."})
    pseudo_labels: str = field(default=None, metadata={
        "help": "Second round: an ensemble_probs.csv (id,a,b,c,d over test.csv's rows, e.g. ensemble.py's); the test "
                "rows whose top probability reaches --pseudo_min_prob join the TRAINING rows of the fold (never its "
                "validation rows; oof.csv stays over train.csv's rows). Their ids must not be train.csv ids."})
    pseudo_min_prob: float = field(default=None, metadata={
        "help": "With --pseudo_labels: the top probability a test row needs to be added (e.g. 0.9)."})
    pseudo_soft: bool = field(default=False, metadata={
        "help": "With --pseudo_labels: train the added rows on their four probabilities (cross-entropy against "
                "the soft distribution over the letter logits) instead of their most probable letter."})
    teacher_probs: str = field(default=None, metadata={
        "help": "Distillation: the teacher's probabilities (id,a,b,c,d), or a teacher run folder (its folds' "
                "oof.csv / oof_tta.csv, and the mean of their test_probs.csv for pseudo-labelled rows). For "
                "train.csv rows they MUST be out-of-fold. Checked: a run folder (each fold's OOF file against its "
                "weights, refused if it covers rows that fold trained on, per its folds.csv) or a file inside a "
                "fold folder (refused if it covers rows that fold trained on; full/ trained on all). A file "
                "elsewhere (e.g. an ensemble's blend) is not checked, only warned about. Training rows the teacher does not cover get the plain loss (counted in the run "
                "record); validation rows never see the teacher."})
    distill_alpha: float = field(default=None, metadata={
        "help": "With --teacher_probs: loss = (1 - A) * CE(letter) + A * T^2 * KL(teacher_T || student_T) over the "
                "four letter logits, e.g. 0.5."})
    distill_temperature: float = field(default=1.0, metadata={
        "help": "T of --distill_alpha's loss: teacher_T = softmax(log p / T), student_T = softmax(logits / T)."})


@dataclass
class RunArguments:
    resume: bool = field(default=False, metadata={
        "help": "Continue from the fold's last complete checkpoint (only one written with the same settings)."})
    early_stopping_patience: int = field(default=3, metadata={
        "help": "Evaluations without improvement before stopping; 0 = off."})
    time_budget_minutes: float = field(default=None, metadata={
        "help": "Stop training after this many minutes (then evaluate and save as usual): fits Kaggle's limits."})
    ema_decay: float = field(default=None, metadata={
        "help": "Keep an exponential moving average of the trainable weights (e.g. 0.999) and save and score it "
                "instead of the last weights; replaces best-checkpoint reloading (--load_best_model_at_end false). "
                "Kept in each checkpoint, so --resume continues it."})
    swa_start: float = field(default=None, metadata={
        "help": "Stochastic weight averaging: from this fraction of the planned steps on (e.g. 0.75), average the "
                "trainable weights after every step with equal weights, and save and score the average instead of "
                "the last weights (with --load_best_model_at_end false; not with --ema_decay). Like --ema_decay's "
                "average it is kept in each checkpoint, so --resume continues it."})
    report: bool = field(default=False, metadata={"help": "Write PNG plots and report.md for the fold."})
    blank_images: bool = field(default=False, metadata={
        "help": "Ablation: replace every image by a grey one, to measure what the text alone allows."})


# This task's defaults where they differ from transformers'; a YAML --config or the command line overrides each.
TRAINING_DEFAULTS = dict(
    output_dir=None,                    # resolved by train_lora.py: runs/<model short name>
    learning_rate=1e-4,                 # LoRA on a pretrained VLM (transformers: 5e-5, tuned for full fine-tunes)
    num_train_epochs=3,                 # one answer token per row: a few passes suffice and 3 is the common LoRA recipe
    per_device_train_batch_size=8,      # rows of ~300 tokens at 448 px fit a T4 with QLoRA at 8 (transformers: 8)
    per_device_eval_batch_size=16,      # scoring keeps no activations: twice the training batch
    gradient_accumulation_steps=1,
    lr_scheduler_type="cosine",         # (transformers: linear) decays gently and ends at 0
    warmup_steps=0.03,                  # a fraction of the steps: LoRA's B starts at 0, a short warm-up suffices
    weight_decay=0.0,
    label_smoothing_factor=0.1,         # (transformers: 0) one-token targets make the model over-confident;
                                        # smoothing keeps the letter probabilities usable for the ensemble
    logging_steps=10,                   # (transformers: 500) short runs would log nothing
    eval_strategy="epoch",              # (transformers: no) evaluation picks the best checkpoint and stops early
    save_strategy="epoch",              # must match eval_strategy for load_best_model_at_end
    save_total_limit=2,                 # the best and the last: a 7B full checkpoint is 15 GB
    load_best_model_at_end=True,        # (transformers: False) OOF and test scores come from the best epoch
    metric_for_best_model="accuracy",   # the task's metric on the a/b/c/d logits (not the smoothed loss)
    greater_is_better=True,
    remove_unused_columns=False,        # the collator needs image paths and option columns the model never sees
    gradient_checkpointing=True,        # (transformers: False) a 7B with 448 px images does not fit a T4 without it
    gradient_checkpointing_kwargs={"use_reentrant": False},  # reentrant + LoRA + DDP: "marked ready twice"
    ddp_find_unused_parameters=False,   # the frozen vision tower gets no gradient: DDP must not wait for it
    seed=42,
    report_to="none",                   # train_lora.py picks TensorBoard when installed; no hub logins by default
    disable_tqdm=False,
)

TRAIN_ARGUMENT_TYPES = (ModelArguments, DataArguments, RunArguments, TrainingArguments)


def parse_train_args(argv=None):
    """(model_args, data_args, run_args, training_args, given) from `argv` and an optional `--config` YAML."""
    from mcvqa.cli import parse_args

    return parse_args(TRAIN_ARGUMENT_TYPES, argv, defaults=TRAINING_DEFAULTS)
