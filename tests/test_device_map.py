"""Model parallelism in one process (--device_map/--max_memory) and the tiny Qwen3-VL MoE model.

On a CPU host the only device --max_memory can name is the CPU, so what is proven here is what does not
depend on GPUs: the flags reach transformers' placement (hf_device_map), a placed model scores exactly as an
unplaced one (Qwen2.5-VL and the Qwen3-VL mixture-of-experts family), LoRA trains a placed MoE model, and
every bad value is one `error:` line with exit 2 before anything is written. Also here: the FSDP config,
read as `accelerate launch` reads it, wraps the blocks of every family, the MoE's included. The split over two GPUs (a
model on both, the same probabilities as on one) is bench/distributed.sh's device_map_ok on the GPU machine.
"""

import json
import sys
from pathlib import Path

import pandas as pd
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
from conftest import snapshot, train_fold  # noqa: E402

QUICK = ["--max_steps", "2", "--eval_strategy", "no", "--save_strategy", "no", "--load_best_model_at_end", "false",
         "--gradient_checkpointing", "false"]


@pytest.fixture(scope="module")
def tiny_moe(tmp_path_factory):
    from tools.make_tiny_model import make_tiny_model

    return make_tiny_model("qwen3_vl_moe", tmp_path_factory.mktemp("moe") / "qwen3_vl_moe",
                           min_pixels=64 * 64, max_pixels=64 * 64)


@pytest.fixture(scope="module")
def runs(tiny_moe, tiny_models, easy_vqa_dir, tmp_path_factory):
    """{arch: run folder}: fold 1 of the tiny MoE trained with LoRA on a placed model, and of Qwen2.5-VL unplaced."""
    root = tmp_path_factory.mktemp("device_map")
    out = {"qwen3_vl_moe": root / "moe", "qwen2_5_vl": root / "q25"}
    train_fold(tiny_moe, easy_vqa_dir, out["qwen3_vl_moe"], 1, *QUICK, "--min_pixels", "4096", "--max_pixels",
               "4096", "--device_map", "auto", "--max_memory", "cpu=2GiB")
    train_fold(tiny_models["qwen2_5_vl"], easy_vqa_dir, out["qwen2_5_vl"], 1, *QUICK)
    return out


def test_tiny_moe_is_a_mixture_of_experts(tiny_moe):
    from transformers import AutoModelForImageTextToText

    config = json.loads((tiny_moe / "config.json").read_text())
    assert config["model_type"] == "qwen3_vl_moe"
    assert config["architectures"] == ["Qwen3VLMoeForConditionalGeneration"]
    assert config["text_config"]["num_experts_per_tok"] == 2
    model = AutoModelForImageTextToText.from_pretrained(tiny_moe)
    experts = [m for m in model.modules() if type(m).__name__ == "Qwen3VLMoeTextExperts"]
    assert len(experts) == config["text_config"]["num_hidden_layers"] and experts[0].num_experts == 4
    # The same processor and chat template as Qwen3-VL.
    from mcvqa.modeling import load_processor

    assert type(load_processor(tiny_moe)).__name__ == "Qwen3VLProcessor"
    assert (tiny_moe / "chat_template.jinja").read_text().startswith("{%- if tools %}")


def test_lora_trains_a_placed_moe_model_and_records_the_placement(runs):
    fold = runs["qwen3_vl_moe"] / "fold1"
    record = json.loads((fold / "train_config.json").read_text())
    assert record["model"]["device_map"] == "auto" and record["model"]["max_memory"] == "cpu=2GiB"
    assert (fold / "adapter_model.safetensors").is_file()
    state = json.loads((fold / "trainer_state.json").read_text())
    assert state["global_step"] == 2
    oof = pd.read_csv(fold / "oof.csv", dtype={"id": str})
    folds = pd.read_csv(runs["qwen3_vl_moe"] / "folds.csv", dtype={"id": str})
    assert oof["id"].is_unique and set(oof["id"]) == set(folds.loc[folds["fold"] == 1, "id"])


@pytest.mark.parametrize("arch", ["qwen3_vl_moe", "qwen2_5_vl"])
def test_a_placed_model_scores_as_an_unplaced_one(runs, easy_vqa_dir, arch, capfd):
    import predict

    run = runs[arch]
    common = ["--output_dir", str(run), "--data_dir", str(easy_vqa_dir), "--folds", "1", "--progress", "false"]
    predict.main(common)
    plain = pd.read_csv(run / "fold1" / "test_probs.csv", dtype={"id": str})
    capfd.readouterr()
    predict.main([*common, "--device_map", "auto", "--max_memory", "cpu=1.5GiB"])
    assert "placed the whole model on cpu" in capfd.readouterr().err
    placed = pd.read_csv(run / "fold1" / "test_probs.csv", dtype={"id": str})
    assert list(placed["id"]) == list(plain["id"]) and len(plain) == 24
    assert (placed[list("abcd")] - plain[list("abcd")]).abs().to_numpy().max() <= 1e-5


@pytest.mark.parametrize("flags,says", [
    (["--device_map", "auto", "--max_memory", "cpu=lots"], "'cpu=lots' is not device=size"),
    (["--device_map", "auto", "--max_memory", "0=14GiB,cpu=30GiB"], "GPU 0 is not visible to this process"),
    (["--device_map", "auto", "--max_memory", "gpu0=14GiB"], "'gpu0' is not a device"),
    (["--max_memory", "cpu=30GiB"], "add --device_map auto"),
    (["--device_map", "everywhere"], "invalid choice"),
])
def test_bad_placement_is_one_line_and_exit_2(runs, easy_vqa_dir, flags, says, capfd):
    import predict

    run = runs["qwen2_5_vl"]
    before = snapshot(run)
    capfd.readouterr()
    with pytest.raises(SystemExit) as exit_:
        predict.main(["--output_dir", str(run), "--data_dir", str(easy_vqa_dir), "--progress", "false", *flags])
    err = capfd.readouterr().err
    assert exit_.value.code == 2 and says in err
    assert [line for line in err.splitlines() if line.startswith("error:")] and "Traceback" not in err
    assert snapshot(run) == before


def test_a_model_too_large_for_the_memory_given_is_one_line(runs, easy_vqa_dir, capfd):
    import predict

    capfd.readouterr()
    with pytest.raises(SystemExit) as exit_:
        predict.main(["--output_dir", str(runs["qwen2_5_vl"]), "--data_dir", str(easy_vqa_dir), "--progress", "false",
                      "--device_map", "auto", "--max_memory", "cpu=64KiB"])
    err = capfd.readouterr().err
    assert exit_.value.code == 2 and "does not fit the memory given" in err and "Traceback" not in err


def test_several_processes_are_refused_before_loading(tiny_moe, easy_vqa_dir, tmp_path, monkeypatch, capfd):
    monkeypatch.setenv("WORLD_SIZE", "2")  # as under accelerate launch --num_processes 2
    capfd.readouterr()
    with pytest.raises(SystemExit) as exit_:
        train_fold(tiny_moe, easy_vqa_dir, tmp_path / "run", 1, *QUICK, "--device_map", "auto")
    err = capfd.readouterr().err
    assert exit_.value.code == 2 and "accelerate started 2" in err and "python train_lora.py" in err
    assert not (tmp_path / "run").exists()


def test_the_fsdp_config_wraps_every_family(tiny_models, tiny_moe, monkeypatch):
    """accelerate_configs/fsdp_full_finetune.yaml, read as `accelerate launch` reads it, wraps each decoder layer and
    vision block of every family (a fixed class list would refuse the families it does not name)."""
    from accelerate.commands.launch import _validate_launch_command, launch_command_parser
    from accelerate.utils import FullyShardedDataParallelPlugin
    from accelerate.utils.fsdp_utils import fsdp2_prepare_auto_wrap_policy
    from accelerate.utils.launch import prepare_multi_gpu_env
    from transformers import AutoModelForImageTextToText

    from conftest import REPO

    args = launch_command_parser().parse_args(["--config_file", str(REPO / "accelerate_configs/fsdp_full_finetune.yaml"),
                                               "--num_processes", "2", "train_lora.py"])
    env = prepare_multi_gpu_env(_validate_launch_command(args)[0])
    assert env["FSDP_VERSION"] == "2" and env["FSDP_AUTO_WRAP_POLICY"] == "TRANSFORMER_BASED_WRAP"
    for key, value in env.items():
        if key.startswith(("FSDP_", "ACCELERATE_USE_FSDP")):
            monkeypatch.setenv(key, value)
    blocks = {"qwen2_vl": ("Qwen2VLDecoderLayer", "Qwen2VLVisionBlock"),
              "qwen2_5_vl": ("Qwen2_5_VLDecoderLayer", "Qwen2_5_VLVisionBlock"),
              "qwen3_vl": ("Qwen3VLTextDecoderLayer", "Qwen3VLVisionBlock"),
              "qwen3_vl_moe": ("Qwen3VLMoeTextDecoderLayer", "Qwen3VLMoeVisionBlock")}
    for arch, path in {**tiny_models, "qwen3_vl_moe": tiny_moe}.items():
        model = AutoModelForImageTextToText.from_pretrained(path)
        policy = fsdp2_prepare_auto_wrap_policy(FullyShardedDataParallelPlugin(), model)
        wrapped = sorted({type(m).__name__ for m in model.modules() if policy(m)})
        assert wrapped == sorted(blocks[arch]), arch
        assert sum(policy(m) for m in model.modules()) == (model.config.text_config.num_hidden_layers
                                                            + model.config.vision_config.depth)
