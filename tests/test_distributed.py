"""The end of a run (weights saved before anything that can still fail) and the FSDP best-checkpoint reload.

FSDP through train_lora.py cannot run on a CPU: accelerate (1.15) makes a run FSDP only on GPUs; with the
FSDP config and no GPU it starts independent single-process runs (which train_lora.py refuses). So the
end-to-end FSDP run (`accelerate launch --config_file accelerate_configs/fsdp_full_finetune.yaml ...`) is
proven on the GPU machine (bench/distributed.json). What does run here, in two real processes over gloo:
torch's FSDP2 `fully_shard` on the tiny models, exactly as accelerate applies it (one unit per decoder layer
and vision block, then the root), and `load_full_checkpoint` putting a saved checkpoint into those shards,
where the plain `load_state_dict` of the old reload fails with the GPU run's "mixed torch.Tensor and DTensor".
Also here: the end of a run with a failure patched into the best reload and into OOF scoring (the weights are
saved first), and bench/multinode.sh's two-machine launch of a full fine-tune with DDP over gloo.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from conftest import REPO, SMALL_TRAINING  # noqa: E402

WRAP = ("Qwen2VLDecoderLayer", "Qwen2VLVisionBlock", "Qwen2_5_VLDecoderLayer", "Qwen2_5_VLVisionBlock",
        "Qwen3VLTextDecoderLayer", "Qwen3VLVisionBlock")


def fsdp_worker(model_dir, checkpoint, other_family, out):
    """One rank: shard the base model with FSDP2, reload `checkpoint` into it, report what every shard holds."""
    import torch.distributed as dist
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard
    from transformers import AutoModelForImageTextToText

    from train_lora import fsdp_version, load_full_checkpoint

    dist.init_process_group("gloo")
    rank = dist.get_rank()
    model = AutoModelForImageTextToText.from_pretrained(model_dir, dtype=torch.float32)
    mesh = init_device_mesh("cpu", (dist.get_world_size(),))
    for module in list(model.modules()):
        if type(module).__name__ in WRAP:
            fully_shard(module, mesh=mesh)
    fully_shard(model, mesh=mesh)

    def full():
        return get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))

    report = {"fsdp_version": fsdp_version(model),
              "sharded": all(type(p).__name__ == "DTensor" for p in model.parameters())}
    try:  # what the reload did before: the GPU run's crash
        model.load_state_dict(AutoModelForImageTextToText.from_pretrained(checkpoint).state_dict())
        report["plain_load"] = "ok"
    except RuntimeError as err:
        report["plain_load"] = str(err)[-300:]
    before = full()
    try:  # a checkpoint of another model family: refused on every rank (none left waiting), nothing changed
        load_full_checkpoint(model, other_family)
        report["mismatch"] = "loaded"
    except RuntimeError as err:
        report["mismatch"] = str(err)
    after_refusal = full()
    load_full_checkpoint(model, checkpoint)
    loaded = full()
    # The sharded model still computes with what it was given: one forward pass on every rank.
    ids = torch.tensor([[1, 2, 3, 4]])
    report["logits_finite"] = bool(torch.isfinite(model(input_ids=ids).logits).all())
    if rank == 0:
        expected = AutoModelForImageTextToText.from_pretrained(checkpoint, dtype=torch.float32).state_dict()
        report["keys_match"] = set(loaded) == set(expected)
        report["max_diff_to_checkpoint"] = max((loaded[k] - expected[k]).abs().max().item() for k in expected)
        report["max_diff_to_base"] = max((before[k] - expected[k]).abs().max().item() for k in expected)
        report["unchanged_by_refusal"] = all(torch.equal(before[k], after_refusal[k]) for k in before)
    Path(out, f"rank{rank}.json").write_text(json.dumps(report))
    dist.barrier()
    dist.destroy_process_group()
    # Once in ~30 runs on the 2-core CI machine a rank aborted after its report, at interpreter teardown
    # ("terminate called without an active exception": gloo's worker threads outliving Python, pytorch#179291's
    # finalization crash). The report is written and the group destroyed: leave without that teardown.
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


def free_port():
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.parametrize("arch", ["qwen2_vl", "qwen2_5_vl", "qwen3_vl"])
def test_fsdp2_reload_puts_the_checkpoint_into_every_rank_shards(tiny_models, arch, tmp_path):
    from transformers import AutoModelForImageTextToText

    base = tiny_models[arch]
    # A checkpoint as the Trainer writes one (save_pretrained: the hub's key names), with other weights.
    model = AutoModelForImageTextToText.from_pretrained(base, dtype=torch.float32)
    torch.manual_seed(0)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.1)
    checkpoint = tmp_path / "checkpoint-2"
    model.save_pretrained(checkpoint)
    other = tiny_models["qwen3_vl" if arch != "qwen3_vl" else "qwen2_vl"]
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", str(free_port()),
           __file__, str(base), str(checkpoint), str(other), str(tmp_path)]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(REPO)}
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-4000:]
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]
    for r in ranks:
        assert r["fsdp_version"] == 2 and r["sharded"]
        assert "DTensor" in r["plain_load"]  # the crash the GPU run hit
        assert r["mismatch"].startswith(f"checkpoint {other} does not match the model")
        assert r["logits_finite"]
    assert ranks[0]["keys_match"] and ranks[0]["unchanged_by_refusal"]
    assert ranks[0]["max_diff_to_base"] > 0.01
    assert ranks[0]["max_diff_to_checkpoint"] == 0.0


# ------------------------------------------------------------------------ the end of a run, in order


def weights(folder, name):
    from safetensors.torch import load_file

    return load_file(str(Path(folder) / name))


def train(tiny_model, easy_vqa_dir, out, *extra):
    import train_lora

    # Four steps, a checkpoint and an evaluation every two: checkpoint-2 and checkpoint-4.
    return train_lora.main(["--model_name_or_path", str(tiny_model), "--data_dir", str(easy_vqa_dir),
                            "--output_dir", str(out), "--fold", "1", *SMALL_TRAINING, "--max_train_samples", "32",
                            "--per_device_train_batch_size", "8", "--max_steps", "4", "--eval_strategy", "steps",
                            "--eval_steps", "2", "--save_strategy", "steps", "--save_steps", "2",
                            "--load_best_model_at_end", "true", "--early_stopping_patience", "0", *extra])


def assert_saved_and_recorded(fold, name):
    from mcvqa.runs import RunRecord, check_weights, weights_fingerprint

    assert (fold / name).is_file()
    record = RunRecord.load(fold)
    assert record.weights == weights_fingerprint(fold)
    check_weights(fold, record)  # what predict.py checks before it scores a fold


# --learning_rate 0: every evaluation ties, so the first checkpoint stays the best one and is not the last.
@pytest.mark.parametrize("kind", ["full", "lora"])
def test_a_failing_best_reload_leaves_the_last_weights_saved(tiny_model, easy_vqa_dir, tmp_path, monkeypatch, kind):
    import train_lora
    from transformers import Trainer

    def broken(*args, **kwargs):
        raise RuntimeError("reload broke")

    if kind == "full":
        monkeypatch.setattr(train_lora, "load_full_checkpoint", broken)
    else:
        monkeypatch.setattr(Trainer, "_load_best_model", broken)
    extra = ["--full_finetune"] if kind == "full" else []
    with pytest.raises(RuntimeError) as info:
        train(tiny_model, easy_vqa_dir, tmp_path / "run", "--learning_rate", "0", *extra)
    fold = tmp_path / "run" / "fold1"
    message = str(info.value)
    assert message.startswith(f"reloading the best checkpoint {fold / 'checkpoints' / 'checkpoint-2'} failed")
    assert f"the last weights (step 4) are saved in {fold}" in message
    assert f"python predict.py --output_dir {tmp_path / 'run'} --folds 1" in message
    assert str(info.value.__cause__) == "reload broke"
    assert_saved_and_recorded(fold, "model.safetensors" if kind == "full" else "adapter_model.safetensors")
    assert not (fold / "oof.csv").exists()
    last = weights(fold / "checkpoints" / "checkpoint-4",
                   "model.safetensors" if kind == "full" else "adapter_model.safetensors")
    saved = weights(fold, "model.safetensors" if kind == "full" else "adapter_model.safetensors")
    assert set(saved) == set(last) and all(torch.equal(saved[k], last[k]) for k in last)


def test_a_failing_oof_scoring_leaves_the_trained_weights_saved(tiny_model, easy_vqa_dir, tmp_path, monkeypatch):
    from mcvqa.trainer import MCVQATrainer

    def broken(*args, **kwargs):
        raise RuntimeError("scoring broke")

    monkeypatch.setattr(MCVQATrainer, "predict", broken)
    with pytest.raises(RuntimeError) as info:
        train(tiny_model, easy_vqa_dir, tmp_path / "run", "--full_finetune")
    fold = tmp_path / "run" / "fold1"
    assert str(info.value).startswith("scoring the out-of-fold rows failed")
    assert f"the trained weights are saved in {fold}" in str(info.value)
    assert_saved_and_recorded(fold, "model.safetensors")
    assert not (fold / "oof.csv").exists()


def test_the_saved_full_model_is_the_best_checkpoint(tiny_model, easy_vqa_dir, tmp_path, capsys):
    # A learning rate this high on a random model makes the evaluations differ; whichever checkpoint wins,
    # the fold's weights are that checkpoint's.
    train(tiny_model, easy_vqa_dir, tmp_path / "run", "--full_finetune", "--learning_rate", "1e-2")
    fold = tmp_path / "run" / "fold1"
    state = json.loads((fold / "trainer_state.json").read_text())
    best = Path(state["best_model_checkpoint"])
    assert best.parent == fold / "checkpoints"
    assert_saved_and_recorded(fold, "model.safetensors")
    saved, kept = weights(fold, "model.safetensors"), weights(best, "model.safetensors")
    assert set(saved) == set(kept) and all(torch.equal(saved[k], kept[k]) for k in kept)
    assert (fold / "oof.csv").is_file()


# ------------------------------------------------------------------------ two machines, two processes


def test_two_machines_on_cpu_train_one_fold_and_keep_the_best_checkpoint(tiny_model, easy_vqa_dir, tmp_path):
    """bench/multinode.sh's launch on a CPU: two `accelerate launch` processes, --num_machines 2 and a machine
    rank each, over gloo. (`accelerate launch --cpu` starts one process whatever --num_processes says; a CPU
    process group needs --multi_gpu with ACCELERATE_USE_CPU.) A full fine-tune: the best checkpoint reload
    runs in both processes after the last weights are saved."""
    out, port = tmp_path / "run", free_port()
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false",
           "ACCELERATE_USE_CPU": "true"}
    procs = [subprocess.Popen(
        [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--mixed_precision", "no",
         "--dynamo_backend", "no", "--num_machines", "2", "--num_processes", "2", "--machine_rank", str(rank),
         "--main_process_ip", "127.0.0.1", "--main_process_port", str(port),
         "train_lora.py", "--model_name_or_path", str(tiny_model), "--data_dir", str(easy_vqa_dir),
         "--output_dir", str(out), "--fold", "1", *SMALL_TRAINING, "--max_train_samples", "32",
         "--per_device_train_batch_size", "4", "--max_steps", "8", "--eval_strategy", "steps", "--eval_steps", "4",
         "--save_strategy", "steps", "--save_steps", "4", "--load_best_model_at_end", "true",
         "--early_stopping_patience", "0", "--full_finetune", "--learning_rate", "1e-3", "--use_cpu", "true"],
        cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for rank in (0, 1)]
    results = [p.communicate(timeout=400) for p in procs]
    for p, (_, err) in zip(procs, results):
        assert p.returncode == 0, err[-4000:]
    assert sum(o.count("fold 1 | acc") for o, _ in results) == 1  # one summary: only process 0 writes
    import pandas as pd

    fold = out / "fold1"
    folds = pd.read_csv(out / "folds.csv", dtype={"id": str})
    oof = pd.read_csv(fold / "oof.csv", dtype={"id": str})
    assert oof["id"].is_unique and set(oof["id"]) == set(folds[folds["fold"] == 1]["id"])
    metrics = json.loads((fold / "metrics.json").read_text())
    state = json.loads((fold / "trainer_state.json").read_text())
    assert state["global_step"] == 8 and metrics["samples_seen"] == 8 * 4 * 2  # two processes trained
    assert_saved_and_recorded(fold, "model.safetensors")
    best = Path(state["best_model_checkpoint"])
    saved, kept = weights(fold, "model.safetensors"), weights(best, "model.safetensors")
    assert all(torch.equal(saved[k], kept[k]) for k in kept)


# --------------------------------------------------------------------------------------- refusals


def test_fsdp_refusals_come_before_anything_is_loaded(tiny_model, easy_vqa_dir, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("ACCELERATE_USE_FSDP", "true")
    with pytest.raises(SystemExit) as info:
        train(tiny_model, easy_vqa_dir, tmp_path / "run", "--quantization", "4bit")
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert "--quantization 4bit does not run under FSDP" in err
    if not torch.cuda.is_available():
        assert "FSDP (this accelerate config) needs CUDA GPUs" in err
    assert "Traceback" not in err and not (tmp_path / "run").exists()


if __name__ == "__main__":
    fsdp_worker(*sys.argv[1:5])
