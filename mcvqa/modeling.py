"""Loading a Qwen-VL processor and model the same way for a hub id and a local folder."""

import contextlib
import importlib.util
import re
import warnings

from mcvqa.errors import UserError


def load_processor(name_or_path, min_pixels=None, max_pixels=None, trust_remote_code=False):
    """AutoProcessor, with the pixel budget applied and checked, and a clean path without torchvision.

    transformers 5.x Qwen-VL processors build a video processor that needs torchvision; images never
    need it, so without torchvision we build the family's processor with no video processor.
    """
    from transformers import AutoProcessor, AutoTokenizer, AutoConfig

    kwargs = {"trust_remote_code": trust_remote_code}
    if importlib.util.find_spec("torchvision") is not None:
        processor = AutoProcessor.from_pretrained(name_or_path, **kwargs)
    else:
        import transformers
        from transformers import Qwen2VLImageProcessorPil

        config = AutoConfig.from_pretrained(name_or_path, **kwargs)
        cls_name = {"qwen2_vl": "Qwen2VLProcessor", "qwen2_5_vl": "Qwen2_5_VLProcessor",
                    "qwen3_vl": "Qwen3VLProcessor", "qwen3_vl_moe": "Qwen3VLProcessor"}.get(config.model_type)
        if cls_name is None:
            raise UserError(f"{name_or_path}: model type '{config.model_type}' is not a Qwen-VL model "
                            f"(expected one of {', '.join(QWEN_VL_TYPES)})")
        image_processor = Qwen2VLImageProcessorPil.from_pretrained(name_or_path, **kwargs)
        tokenizer = AutoTokenizer.from_pretrained(name_or_path, **kwargs)
        processor = _without_video(getattr(transformers, cls_name))(
            image_processor=image_processor, tokenizer=tokenizer, video_processor=None,
            chat_template=tokenizer.chat_template)
    set_pixel_budget(processor, min_pixels, max_pixels)
    return processor


def set_pixel_budget(processor, min_pixels=None, max_pixels=None):
    """Set min/max pixels on the image processor where resizing actually reads them, and check it took."""
    ip = processor.image_processor
    size = dict(getattr(ip, "size", None) or {})
    if min_pixels:
        size["shortest_edge"] = int(min_pixels)
    if max_pixels:
        size["longest_edge"] = int(max_pixels)
    ip.size = size
    if (min_pixels and ip.size.get("shortest_edge") != int(min_pixels)) or (
            max_pixels and ip.size.get("longest_edge") != int(max_pixels)):
        raise RuntimeError(f"the image processor ignored the pixel budget: size is {ip.size}")
    return ip.size


def _without_video(processor_cls):
    """The family's processor class, accepting `video_processor=None` (images only, no torchvision)."""

    class ImageOnlyProcessor(processor_cls):
        def check_argument_for_proper_class(self, attribute_name, arg):
            if arg is None and attribute_name == "video_processor":
                return None
            return super().check_argument_for_proper_class(attribute_name, arg)

    ImageOnlyProcessor.__name__ = processor_cls.__name__
    return ImageOnlyProcessor


# qwen3_vl_moe: Qwen3-VL-30B-A3B / 235B-A22B, Qwen3-VL's vision tower and processor over a mixture-of-experts LM.
QWEN_VL_TYPES = ("qwen2_vl", "qwen2_5_vl", "qwen3_vl", "qwen3_vl_moe")


def short_name(name_or_path):
    """`Qwen/Qwen2.5-VL-7B-Instruct` -> `Qwen2.5-VL-7B-Instruct`: the default run folder name."""
    return str(name_or_path).rstrip("/").split("/")[-1] or "model"


def check_model_folder(name_or_path, trust_remote_code=False):
    """Refuse early (before any weights load) a folder that is not a Qwen-VL model."""
    import os
    from pathlib import Path

    from transformers import AutoConfig

    path = Path(os.path.expanduser(str(name_or_path)))
    looks_local = path.is_absolute() or str(name_or_path).startswith((".", "~")) or len(path.parts) > 2
    if not path.exists() and looks_local:
        raise UserError(f"--model_name_or_path {name_or_path}: folder not found")
    if path.exists() and not path.is_dir():
        raise UserError(f"--model_name_or_path {name_or_path}: is a file; expected a model folder or a hub id")
    if path.is_dir() and not (path / "config.json").is_file():
        raise UserError(f"--model_name_or_path {name_or_path}: no config.json in this folder (not a saved model)")
    try:
        config = AutoConfig.from_pretrained(name_or_path, trust_remote_code=trust_remote_code)
    except (OSError, ValueError) as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        if not path.exists() and os.environ.get("HF_HUB_OFFLINE", "0") not in ("", "0", "false", "False"):
            first = "not a local folder, and not in the Hugging Face cache while HF_HUB_OFFLINE is set"
        raise UserError(f"--model_name_or_path {name_or_path}: cannot load a model config ({first})") from None
    if config.model_type not in QWEN_VL_TYPES:
        raise UserError(f"--model_name_or_path {name_or_path}: model type '{config.model_type}' is not a Qwen-VL "
                        f"model (expected one of {', '.join(QWEN_VL_TYPES)})")
    if path.is_dir() and not any(path.glob("*.safetensors")):
        legacy = sorted(p.name for p in path.glob("*.bin")) + sorted(p.name for p in path.glob("*.pt*"))
        found = f" (found only {', '.join(legacy[:3])})" if legacy else ""
        raise UserError(f"--model_name_or_path {name_or_path}: no .safetensors weights{found}. Only safetensors are "
                        "loaded (pickled .bin files can run code); convert it once with save_pretrained("
                        "safe_serialization=True) in a trusted environment")
    return config


def resolve_precision(precision, full_finetune=False):
    """(resolved precision, weight dtype) for `--precision auto|bf16|fp16|fp32`.

    auto resolves to bf16 where the GPU supports it, fp16 on GPUs without bf16 (T4; autocast with fp32
    trainable weights), fp32 on CPU. A full fine-tune keeps fp32 weights under bf16/fp16 autocast.
    """
    import torch

    if precision == "auto":
        if not torch.cuda.is_available():
            precision = "fp32"
        elif torch.cuda.is_bf16_supported():
            precision = "bf16"
        else:
            precision = "fp16"
    weight_dtype = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}[precision]
    if full_finetune and precision != "fp32":
        # Full fine-tuning keeps fp32 master weights and autocasts; pure half weights lose small updates.
        weight_dtype = torch.float32
    return precision, weight_dtype


def attention_implementation(requested, dtype):
    import torch

    if requested != "auto":
        return requested
    if (torch.cuda.is_available() and dtype in (torch.float16, torch.bfloat16)
            and importlib.util.find_spec("flash_attn") is not None):
        return "flash_attention_2"
    return "sdpa"


def language_lora_targets(lora_vision=False):
    """Regex for peft: the language model's linear layers, plus the vision tower's with `lora_vision`."""
    lm = r".*language_model\..*\.(q_proj|k_proj|v_proj|o_proj|gate_proj|up_proj|down_proj)"
    if not lora_vision:
        return lm
    vision = r".*visual\.blocks\..*\.(qkv|proj|fc1|fc2|gate_proj|up_proj|down_proj|linear_fc1|linear_fc2)"
    return f"({lm})|({vision})"


def keep_frozen_vision_out_of_backward(model):
    """Stop checkpointing from sending gradients through a frozen vision tower.

    With gradient checkpointing, transformers calls `enable_input_require_grads`, which hooks every input
    embedding it finds, the vision tower's patch embedding included: with LoRA on the language model only,
    the frozen vision tower then runs a full backward pass (and a recomputation) whose gradients nobody
    uses, ~30 % of a 7B training step at 448 px. Hiding the vision tower's input embedding from that search
    leaves the language model's hook in place. Returns whether a vision tower was found.
    """
    visual = getattr(getattr(model, "model", model), "visual", None)
    if visual is None:
        return False
    visual.get_input_embeddings = lambda: None
    return True


def attach_lora(model, lora_r=16, lora_alpha=32, lora_dropout=0.05, lora_vision=False, gradient_checkpointing=True):
    """LoRA on the language model's linear layers (and the vision tower's with `lora_vision`), with the input
    gradients checkpointing needs and a frozen vision tower kept out of the backward pass."""
    from peft import LoraConfig, get_peft_model

    if not lora_vision:
        keep_frozen_vision_out_of_backward(model)
    if gradient_checkpointing:
        model.enable_input_require_grads()
    config = LoraConfig(r=lora_r, lora_alpha=lora_alpha, lora_dropout=lora_dropout,
                        target_modules=language_lora_targets(lora_vision), task_type="CAUSAL_LM")
    with peft_quietly():
        return get_peft_model(model, config)


@contextlib.contextmanager
def peft_quietly():
    """peft reads transformers 5's deprecated `is_gradient_checkpointing` on every adapter it wraps or loads:
    a FutureWarning about peft's code, not the user's, shown on every run. Only that warning is hidden."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="`is_gradient_checkpointing` is deprecated", category=FutureWarning)
        yield


DEVICE_MAPS = ("auto", "balanced", "balanced_low_0", "sequential")
_SIZE = re.compile(r"^\s*(\d+(?:\.\d*)?)\s*(TiB|GiB|MiB|KiB|TB|GB|MB|KB|B)?\s*$", re.IGNORECASE)
_UNITS = {"tib": 2 ** 40, "gib": 2 ** 30, "mib": 2 ** 20, "kib": 2 ** 10, "tb": 10 ** 12, "gb": 10 ** 9,
          "mb": 10 ** 6, "kb": 10 ** 3, "b": 1}


def parse_max_memory(spec, gpus=None):
    """`--max_memory '0=14GiB,1=14GiB,cpu=30GiB'` -> ({0: bytes, 1: bytes, "cpu": bytes}, problems).

    A key is a GPU index (of the GPUs this process sees; `gpus`: how many, default torch's count) or cpu; a size
    is a number with B, KB, MB, GB, TB or KiB, MiB, GiB, TiB. Disk offload is not offered: a model that only fits
    with part of it on disk is too slow to score a test set.
    """
    if gpus is None:
        import torch

        gpus = torch.cuda.device_count() if torch.cuda.is_available() else 0
    out, problems = {}, []
    where = f"--max_memory {spec!r}"
    items = [x.strip() for x in str(spec).split(",") if x.strip()]
    if not items:
        return {}, [f"{where}: expected device=size pairs such as 0=14GiB,1=14GiB,cpu=30GiB"]
    for item in items:
        key, eq, size = (x.strip() for x in item.partition("="))
        m = _SIZE.match(size)
        if not eq or not m:
            problems.append(f"{where}: {item!r} is not device=size, e.g. 0=14GiB or cpu=30GiB")
            continue
        if key.lower() == "cpu":
            device = "cpu"
        elif key.isdigit():
            device = int(key)
            if device >= gpus:
                seen = f"GPUs 0-{gpus - 1}" if gpus > 1 else "GPU 0" if gpus == 1 else "no GPU"
                problems.append(f"{where}: GPU {device} is not visible to this process (it sees {seen})")
                continue
        else:
            problems.append(f"{where}: {key!r} is not a device: a GPU index (0, 1, ...) or cpu")
            continue
        if device in out:
            problems.append(f"{where}: {key} is given twice")
            continue
        out[device] = int(float(m.group(1)) * _UNITS[(m.group(2) or "b").lower()])
        if out[device] <= 0:
            problems.append(f"{where}: {item!r}: the size must be positive")
    return out, problems


def placement_problems(device_map, max_memory, processes=1, training=False):
    """What is wrong with `--device_map` / `--max_memory` (a list of lines, empty when nothing is).

    `processes`: how many processes `accelerate launch` started; a model spread over the GPUs by one process
    cannot also be copied to each GPU by several (DDP, FSDP, prediction shards).
    """
    problems = []
    if max_memory and not device_map:
        problems.append(f"--max_memory {max_memory!r} caps what --device_map places on each device: add "
                        "--device_map auto")
    if max_memory:
        problems += parse_max_memory(max_memory)[1]
    if device_map and processes > 1:
        what = "train" if training else "score"
        problems.append(f"--device_map {device_map} spreads one model over the GPUs from one process, but accelerate "
                        f"started {processes}: {what} with one process (python {'train_lora' if training else 'predict'}"
                        ".py ...), or drop --device_map to put a whole copy on each GPU")
    return problems


def placement(model):
    """{device: number of placed modules} of a model loaded with a device map ({} when it was not)."""
    counts = {}
    for device in (getattr(model, "hf_device_map", None) or {}).values():
        counts[device] = counts.get(device, 0) + 1
    return counts


def placement_summary(model):
    """`cuda:0 (14 modules), cuda:1 (17 modules)`: where --device_map put the model."""
    model = model.get_base_model() if hasattr(model, "get_base_model") else model
    where = placement(model)
    if not where:  # transformers records a map only when it spreads the model over several devices
        return f"the whole model on {next(model.parameters()).device}"
    return ", ".join(f"{f'cuda:{d}' if isinstance(d, int) else d} ({n} module{'s' * (n != 1)})"
                     for d, n in sorted(where.items(), key=lambda x: str(x[0])))


def load_model(name_or_path, precision="auto", quantization="none", attn_implementation="auto",
               full_finetune=False, lora_r=16, lora_alpha=32, lora_dropout=0.05, lora_vision=False,
               gradient_checkpointing=True, adapter_path=None, trust_remote_code=False, device_index=None,
               batched_vision_attention=True, liger="auto", device_map=None, max_memory=None, training=False):
    """AutoModelForImageTextToText (+ bitsandbytes quantisation) (+ LoRA or a saved adapter).

    liger: auto|true|false, Liger's fused kernels (mcvqa.kernels.apply_liger), applied before the model is
    built; whether they were is recorded as `model.mcvqa_liger`.
    device_map (auto, balanced, balanced_low_0, sequential) with max_memory ('0=14GiB,1=14GiB,cpu=30GiB'):
    one model spread over several GPUs (then the CPU) in one process, each layer whole on one device
    (transformers' big-model placement; `training`: refused where a layer would leave the GPUs).
    """
    import torch
    from transformers import AutoConfig, AutoModelForImageTextToText

    from mcvqa.kernels import apply_liger

    precision, dtype = resolve_precision(precision, full_finetune)
    model_type = AutoConfig.from_pretrained(name_or_path, trust_remote_code=trust_remote_code).model_type
    liger_applied = apply_liger(model_type, liger, quantization)
    kwargs = {"dtype": dtype, "attn_implementation": attention_implementation(attn_implementation, dtype),
              "trust_remote_code": trust_remote_code, "use_safetensors": True}
    if quantization != "none":
        from transformers import BitsAndBytesConfig

        compute = torch.bfloat16 if precision == "bf16" else torch.float16
        kwargs["quantization_config"] = BitsAndBytesConfig(
            load_in_4bit=quantization == "4bit", load_in_8bit=quantization == "8bit",
            bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True, bnb_4bit_compute_dtype=compute,
            # The vision tower overflows in low bit and the head scores the answer: both stay unquantised.
            llm_int8_skip_modules=["visual", "lm_head"],
        )
        # Under DDP every rank holds its own copy on its own GPU; "auto" would collapse DDP to one process.
        kwargs["device_map"] = {"": device_index or 0}
    if device_map:
        kwargs["device_map"] = device_map
        if max_memory:
            kwargs["max_memory"] = parse_max_memory(max_memory)[0]
            if quantization != "none" and "cpu" in kwargs["max_memory"]:
                # bitsandbytes keeps layers placed on the CPU unquantised (fp32) instead of refusing them.
                kwargs["quantization_config"].llm_int8_enable_fp32_cpu_offload = True
    try:
        model = AutoModelForImageTextToText.from_pretrained(name_or_path, **kwargs)
    except ValueError as err:
        if device_map and ("offload" in str(err) or "disk" in str(err)):
            raise UserError(f"--device_map {device_map} --max_memory {max_memory}: the model does not fit the memory "
                            "given (part of it would go to disk): raise the sizes, add cpu=..., or use --quantization "
                            "4bit") from None
        raise
    where = placement(model)
    if device_map and "disk" in where:
        raise UserError(f"--device_map {device_map} --max_memory {max_memory}: the model does not fit the memory given "
                        "(part of it would go to disk): raise the sizes, add cpu=..., or use --quantization 4bit")
    if device_map and training and torch.cuda.is_available() and "cpu" in where:
        raise UserError(f"--device_map {device_map} --max_memory {max_memory}: {where['cpu']} part(s) of the model "
                        "would sit on the CPU, where training cannot update them: give the GPUs more memory "
                        "(--max_memory), use --quantization 4bit, or more GPUs")
    model.mcvqa_liger = liger_applied
    if batched_vision_attention:
        from mcvqa.fast_vision import cache_vision_indices, patch_patch_embed, patch_vision_attention

        patch_vision_attention(model)
        patch_patch_embed(model)
        cache_vision_indices()
    if quantization != "none":
        from peft import prepare_model_for_kbit_training

        model = prepare_model_for_kbit_training(
            model, use_gradient_checkpointing=gradient_checkpointing,
            gradient_checkpointing_kwargs={"use_reentrant": False})
    from mcvqa.kernels import pad_vision_mlp

    if adapter_path is not None:
        from peft import PeftModel

        with peft_quietly():
            model = PeftModel.from_pretrained(model, adapter_path, is_trainable=False)
        pad_vision_mlp(model)  # exact; frozen vision MLPs only (speed: bench/RESULTS.md, issue 14)
        return model, precision
    if full_finetune:
        return model, precision
    model = attach_lora(model, lora_r, lora_alpha, lora_dropout, lora_vision, gradient_checkpointing)
    pad_vision_mlp(model)
    if precision == "fp16":
        # GradScaler refuses fp16 gradients: the trainable weights stay fp32 under fp16 autocast.
        for p in model.parameters():
            if p.requires_grad:
                p.data = p.data.float()
    return model, precision
