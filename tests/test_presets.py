"""Every YAML preset in configs/, and bench/learning.yaml, parses into train_lora.py's arguments and builds
the Trainer's arguments.

No model is loaded: this checks the keys (exactly the flag names), the values' types and choices, and
that TrainingArguments accepts the combination, as `accelerate launch train_lora.py --config ...` would.
"""

import dataclasses
import inspect
from pathlib import Path

import pytest
import yaml

import train_lora
from mcvqa.args import TRAIN_ARGUMENT_TYPES, TRAINING_DEFAULTS
from mcvqa.cli import parse_args
from mcvqa.errors import UserError

REPO = Path(__file__).resolve().parents[1]
PRESETS = sorted((REPO / "configs").glob("*.yaml")) + [REPO / "bench" / "learning.yaml"]
ACCELERATE_CONFIGS = sorted((REPO / "accelerate_configs").glob("*.yaml"))
TYPES = TRAIN_ARGUMENT_TYPES
EXPECTED_PRESETS = {"cpu_tiny.yaml", "t4x2_qwen2.5vl_3b_qlora.yaml", "t4x2_qwen2.5vl_7b_qlora.yaml",
                    "a100_qwen2.5vl_7b_bf16.yaml", "h100_qwen3vl_8b_bf16.yaml"}


def parse(preset, *extra):
    return parse_args(TYPES, ["--config", str(preset), "--fold", "1", *extra], defaults=TRAINING_DEFAULTS)


def test_the_documented_presets_exist():
    assert EXPECTED_PRESETS <= {p.name for p in PRESETS}
    assert {"cpu.yaml", "single_gpu.yaml", "dual_t4.yaml", "multi_gpu_bf16.yaml",
            "fsdp_full_finetune.yaml"} <= {p.name for p in ACCELERATE_CONFIGS}


@pytest.mark.parametrize("preset", PRESETS, ids=lambda p: p.name)
def test_preset_parses_and_builds_training_arguments(preset, tmp_path):
    values = yaml.safe_load(preset.read_text())
    model_args, data_args, run_args, args, given = parse(preset)
    assert set(values) <= given
    # Every key landed on the dataclass that owns it, with the YAML's value.
    for key, value in values.items():
        owner = next(obj for obj in (model_args, data_args, run_args, args) if hasattr(obj, key))
        got = getattr(owner, key)
        if key == "report_to":
            assert got == value or got == [value]
        elif key == "optim":
            assert str(getattr(got, "value", got)) == value
        elif key == "lr_scheduler_type":
            assert str(getattr(got, "value", got)) == value
        elif key in ("eval_strategy", "save_strategy"):
            assert str(getattr(got, "value", got)) == value
        else:
            assert got == value, key
    assert model_args.min_pixels <= model_args.max_pixels
    # A YAML value bypasses argparse's `choices`: check the preset's values against them here.
    for obj in (model_args, data_args, run_args):
        for f in dataclasses.fields(obj):
            # An optional flag (default None, e.g. --device_map) the preset does not set is not a value to check.
            if "choices" in f.metadata and not (f.default is None and getattr(obj, f.name) is None):
                assert getattr(obj, f.name) in f.metadata["choices"], f"{preset.name}: {f.name}"
    # Precision as resolved on this CPU machine (bf16/fp16 TrainingArguments need a GPU).
    precision = "fp32"
    fold_dir = tmp_path / "run" / "fold1"
    extra = {}
    if "full_finetune" in inspect.signature(train_lora.configure_training_args).parameters:
        extra["full_finetune"] = model_args.full_finetune
    built = train_lora.configure_training_args(args, fold_dir, precision, has_eval=True, run_name="x-fold1", **extra)
    assert built.output_dir == str(fold_dir / "checkpoints")
    assert built.remove_unused_columns is False
    assert built.per_device_train_batch_size >= 1
    if built.load_best_model_at_end:
        assert str(getattr(built.save_strategy, "value", built.save_strategy)) == \
            str(getattr(built.eval_strategy, "value", built.eval_strategy))
    # All rows (--fold -1): no evaluation, nothing to pick the best checkpoint by.
    all_rows = train_lora.configure_training_args(args, tmp_path / "run" / "full", precision, has_eval=False,
                                                  run_name="x-full")
    assert str(getattr(all_rows.eval_strategy, "value", all_rows.eval_strategy)) == "no"
    assert all_rows.load_best_model_at_end is False
    assert not fold_dir.exists(), "building the arguments must not write anything"


@pytest.mark.parametrize("preset", [p for p in PRESETS if not p.name.startswith("cpu_")], ids=lambda p: p.name)
def test_gpu_presets_name_a_real_qwen_vl_model(preset):
    model_args, data_args, run_args, args, _ = parse(preset)
    assert model_args.model_name_or_path.startswith("Qwen/") and "-VL-" in model_args.model_name_or_path
    if model_args.quantization == "4bit":
        assert args.gradient_checkpointing  # QLoRA on a 16 GB T4 needs it
        assert args.per_device_train_batch_size <= 2


def test_command_line_overrides_a_preset():
    model_args, _, _, args, _ = parse(REPO / "configs" / "cpu_tiny.yaml", "--learning_rate", "0.5", "--lora_r", "4")
    assert args.learning_rate == 0.5 and model_args.lora_r == 4


def test_unknown_key_fails(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text((REPO / "configs" / "cpu_tiny.yaml").read_text() + "lerning_rate: 1.0e-4\n")
    with pytest.raises(UserError, match="lerning_rate"):
        parse(bad)


def test_abbreviated_flags_are_refused():
    with pytest.raises(UserError, match="--learning_r"):
        parse(REPO / "configs" / "cpu_tiny.yaml", "--learning_r", "0.5")


def test_wrong_type_fails(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("lora_r: sixteen\n")
    with pytest.raises((SystemExit, UserError, ValueError, TypeError)):
        parse(bad)


@pytest.mark.parametrize("config", ACCELERATE_CONFIGS, ids=lambda p: p.name)
def test_accelerate_configs_load(config):
    from accelerate.commands.config.config_args import load_config_from_file

    loaded = load_config_from_file(str(config))
    assert loaded.num_processes >= 1
    assert config.read_text().startswith("#"), "each accelerate config starts with a comment saying when to use it"


def test_yaml_value_outside_a_flags_choices_fails(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("quantization: 3bit\nprecision: fp8\n")
    with pytest.raises(UserError) as err:
        parse(bad)
    assert "quantization: '3bit' is not one of 4bit, 8bit, none" in str(err.value)
    assert "precision: 'fp8'" in str(err.value)


def test_run_name_says_model_fold_and_preset():
    argv = ["--config", "configs/t4x2_qwen2.5vl_7b_qlora.yaml", "--fold", "1"]
    assert train_lora.run_name("Qwen/Qwen2.5-VL-7B-Instruct", "fold1", argv) == \
        "Qwen2.5-VL-7B-Instruct-fold1-t4x2_qwen2.5vl_7b_qlora"
    assert train_lora.run_name("tiny_models/x", "full", []) == "x-full"
