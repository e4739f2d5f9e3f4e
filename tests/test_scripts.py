"""End-to-end CPU smoke tests of the three scripts on the tiny Qwen2.5-VL model.

train_lora.py (fold 1 full fine-tune, fold 2 LoRA, --fold -1, --resume after a finished run, a 2-process
CPU DDP run), predict.py --tta, ensemble.py, and a Korean data folder from training to prediction.
"""

import json
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
LETTERS = list("abcd")
from conftest import SMALL_TRAINING as SMALL  # noqa: E402,F401
from conftest import train_fold as train  # noqa: E402


def read(path):
    return pd.read_csv(path, dtype={"id": str}, keep_default_na=False)


def assert_probabilities(df):
    p = df[LETTERS].to_numpy(dtype=float)
    assert np.isfinite(p).all() and (p >= 0).all() and (p <= 1).all()
    np.testing.assert_allclose(p.sum(1), 1.0, atol=1e-5)


def fold_ids(out, k):
    folds = read(Path(out) / "folds.csv")
    return set(folds.loc[folds["fold"].astype(int) == k, "id"])


# ----------------------------------------------------------------------------------------- one run, two folds


@pytest.fixture(scope="module")
def run(trained_run):
    """ROOT/tiny/fold1 (full fine-tune) and ROOT/tiny/fold2 (LoRA), then predict --tta over both."""
    return trained_run


@pytest.mark.parametrize("k", [1, 2])
def test_train_writes_a_complete_fold(run, k):
    _, out, metrics = run
    fold = out / f"fold{k}"
    for name in ("oof.csv", "metrics.json", "train_config.json", "trainer_state.json"):
        assert (fold / name).is_file(), name
    oof = read(fold / "oof.csv")
    assert list(oof.columns[:7]) == ["id", "a", "b", "c", "d", "answer", "pred"]
    assert_probabilities(oof)
    assert oof["id"].is_unique and set(oof["id"]) == fold_ids(out, k)
    assert (oof["pred"] == [LETTERS[i] for i in oof[LETTERS].to_numpy().argmax(1)]).all()
    saved = json.loads((fold / "metrics.json").read_text())
    assert 0 <= saved["oof_accuracy"] <= 1 and saved["n_val"] == len(oof) and metrics[k]["n_val"] == len(oof)
    config = json.loads((fold / "train_config.json").read_text())
    assert config["data"]["fold"] == k and config["model"]["trust_remote_code"] is False
    assert config["schema_version"] == 2 and config["weights"].startswith("weights:")
    assert json.loads((fold / "trainer_state.json").read_text())["global_step"] > 0


def test_folds_partition_the_training_rows(run, easy_vqa_dir):
    _, out, _ = run
    train_ids = set(read(easy_vqa_dir / "train.csv")["id"])
    one, two = fold_ids(out, 1), fold_ids(out, 2)
    assert one | two == train_ids and not one & two


def test_full_finetune_saves_a_model_and_lora_an_adapter(run):
    _, out, _ = run
    assert (out / "fold1" / "model.safetensors").is_file() and not (out / "fold1" / "adapter_config.json").exists()
    assert (out / "fold2" / "adapter_config.json").is_file()
    assert (out / "fold2" / "adapter_model.safetensors").is_file()
    assert not list(out.rglob("*.bin")) or all(p.name == "training_args.bin" for p in out.rglob("*.bin"))


@pytest.mark.parametrize("k", [1, 2])
def test_predict_tta_writes_test_and_oof_probabilities(run, easy_vqa_dir, k):
    _, out, _ = run
    fold = out / f"fold{k}"
    probs = read(fold / "test_probs.csv")
    assert list(probs.columns) == ["id", *LETTERS]
    assert probs["id"].tolist() == read(easy_vqa_dir / "test.csv")["id"].tolist()
    assert_probabilities(probs)
    oof_tta = read(fold / "oof_tta.csv")
    assert set(oof_tta["id"]) == set(read(fold / "oof.csv")["id"]) and oof_tta["id"].is_unique
    assert_probabilities(oof_tta)


def test_ensemble_writes_a_submission_matching_the_sample(run, easy_vqa_dir):
    import ensemble

    root, _, _ = run
    ensemble.cli(["--output_dir", str(root), "--data_dir", str(easy_vqa_dir)])
    sub, sample = read(root / "submission.csv"), read(easy_vqa_dir / "sample_submission.csv")
    assert list(sub.columns) == list(sample.columns)
    assert sub["id"].tolist() == sample["id"].tolist()
    assert set(sub["answer"]) <= set(LETTERS)
    assert_probabilities(read(root / "ensemble_probs.csv"))


def test_resume_after_a_finished_run(run, tiny_model, easy_vqa_dir, tmp_path):
    """--resume on a finished fold trains no further step and reproduces the same OOF file."""
    _, out, _ = run
    copy = tmp_path / "tiny"
    shutil.copytree(out, copy, ignore=shutil.ignore_patterns("fold1"))
    before = json.loads((out / "fold2" / "trainer_state.json").read_text())["global_step"]
    train(tiny_model, easy_vqa_dir, copy, 2, "--resume")
    assert json.loads((copy / "fold2" / "trainer_state.json").read_text())["global_step"] == before
    a, b = read(out / "fold2" / "oof.csv"), read(copy / "fold2" / "oof.csv")
    assert a["id"].tolist() == b["id"].tolist()
    assert np.abs(a[LETTERS].to_numpy() - b[LETTERS].to_numpy()).max() <= 1e-5


def test_fold_minus_1_trains_on_all_rows_without_oof(tiny_model, easy_vqa_dir, tmp_path):
    out = tmp_path / "all"
    metrics = train(tiny_model, easy_vqa_dir, out, -1, "--max_train_samples", "16")
    full = out / "full"
    assert not (full / "oof.csv").exists()
    assert (full / "metrics.json").is_file() and (full / "adapter_model.safetensors").is_file()
    assert metrics["n_val"] == 0 and metrics["n_train"] == 16


# ----------------------------------------------------------------------------------------- Korean data


def korean_data(root):
    from PIL import Image, ImageDraw

    colours = {"빨간색": (220, 30, 30), "파란색": (30, 60, 220), "초록색": (30, 170, 60), "노란색": (230, 210, 30)}
    names = list(colours)
    (root / "images").mkdir(parents=True)
    rows = []
    for i in range(20):
        colour = names[i % 4]
        img = Image.new("RGB", (56, 56), (255, 255, 255))
        ImageDraw.Draw(img).ellipse((8, 8, 48, 48), fill=colours[colour])
        img.save(root / "images" / f"그림_{i}.png")
        shift = i // 4 % 4
        options = names[shift:] + names[:shift]
        rows.append({"id": f"한글_{i:02d}", "path": f"images/그림_{i}.png",
                     "question": "이 그림에 있는 도형은 무슨 색입니까?", **dict(zip(LETTERS, options)),
                     "answer": LETTERS[options.index(colour)]})
    df = pd.DataFrame(rows)
    df.iloc[:16].to_csv(root / "train.csv", index=False, encoding="utf-8")
    df.iloc[16:].drop(columns=["answer"]).to_csv(root / "test.csv", index=False, encoding="utf-8")
    df.iloc[16:][["id"]].assign(answer="a").to_csv(root / "sample_submission.csv", index=False)
    return root


def test_korean_data_trains_and_predicts(tiny_model, tmp_path):
    import predict

    data = korean_data(tmp_path / "데이터")
    out = tmp_path / "runs" / "tiny"
    train(tiny_model, data, out, 1)
    oof = read(out / "fold1" / "oof.csv")
    assert set(oof["id"]) == fold_ids(out, 1) and oof["id"].str.startswith("한글_").all()
    assert (oof["question_type"] == "colour").all()  # 색 in the question: the Korean colour pattern
    assert_probabilities(oof)
    predict.main(["--output_dir", str(out), "--data_dir", str(data), "--progress", "false"])
    probs = read(out / "fold1" / "test_probs.csv")
    assert probs["id"].tolist() == ["한글_16", "한글_17", "한글_18", "한글_19"]
    assert_probabilities(probs)


# ----------------------------------------------------------------------------------------- CPU DDP


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_process_cpu_ddp_writes_one_consistent_set_of_outputs(tiny_model, easy_vqa_dir, tmp_path):
    out = tmp_path / "ddp"
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--cpu", "--num_processes", "2", "--num_machines", "1",
           "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", str(free_port()),
           "train_lora.py", "--model_name_or_path", str(tiny_model), "--data_dir", str(easy_vqa_dir),
           "--output_dir", str(out), "--fold", "1", *SMALL, "--per_device_train_batch_size", "4",
           "--max_train_samples", "32", "--per_device_eval_batch_size", "7",
           # The clock, not the epochs, ends this run: every rank must stop at the same step or DDP hangs.
           "--num_train_epochs", "200", "--time_budget_minutes", "0.1", "--lr_scheduler_type", "cosine",
           "--eval_strategy", "no", "--save_strategy", "no"]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=400)
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert proc.stdout.count("fold 1 | acc") == 1, proc.stdout  # one summary: only rank 0 reports
    assert proc.stdout.count("note: --time_budget_minutes 0.1 stopped training at step ") == 1, proc.stdout
    oof = read(out / "fold1" / "oof.csv")
    assert len(oof) == len(fold_ids(out, 1)) and set(oof["id"]) == fold_ids(out, 1) and oof["id"].is_unique
    assert_probabilities(oof)
    metrics = json.loads((out / "fold1" / "metrics.json").read_text())
    assert metrics["n_val"] == len(oof)
    assert 0 < json.loads((out / "fold1" / "trainer_state.json").read_text())["global_step"] < 200 * 4
    assert abs(metrics["oof_accuracy"] - (oof["pred"] == oof["answer"]).mean()) < 1e-9
    assert sorted(p.name for p in out.iterdir()) == ["fold1", "folds.csv", "folds.json"]
    assert not [p for p in out.rglob("*.tmp")]


def test_two_process_predict_shards_and_matches_one_process(run, easy_vqa_dir, tmp_path):
    """Under accelerate each rank scores a shard; rank 0 writes the same file one process writes."""
    import shutil

    _, out, _ = run
    copy = tmp_path / "tiny"
    shutil.copytree(out, copy)
    one = read(out / "fold1" / "test_probs.csv")
    (copy / "fold1" / "test_probs.csv").unlink()
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--cpu", "--num_processes", "2", "--num_machines", "1",
           "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", str(free_port()),
           "predict.py", "--output_dir", str(copy), "--data_dir", str(easy_vqa_dir), "--folds", "1",
           "--tta", "--tta_scales", "1.0", "--score_oof", "false", "--progress", "false"]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=400)
    assert proc.returncode == 0, proc.stderr[-4000:]
    two = read(copy / "fold1" / "test_probs.csv")
    assert list(two["id"]) == list(one["id"])
    assert (two[list("abcd")] - one[list("abcd")]).abs().max().max() < 1e-6


def test_oversample_repeats_the_named_types_only(easy_vqa_dir):
    from mcvqa.data import load_split
    from mcvqa.errors import UserError
    from train_lora import oversample, oversample_factors

    df = load_split(easy_vqa_dir, "train")
    counts = df["question_type"].value_counts()
    out = oversample(df, oversample_factors("colour=3, shape=1.5", df["question_type"]), seed=0)
    new = out["question_type"].value_counts()
    assert new["colour"] == 3 * counts["colour"] and new["yes/no"] == counts["yes/no"]
    assert new["shape"] == counts["shape"] + round(0.5 * counts["shape"])
    assert set(out["id"]) == set(df["id"])
    with pytest.raises(UserError) as err:
        oversample_factors("color=2,shape=x,colour=0.5", df["question_type"])
    msg = str(err.value)
    assert "'color'" in msg and "colour, shape, yes/no" in msg and "shape=x" in msg and "at least 1" in msg


def test_ema_run_saves_the_averaged_adapter(tiny_model, easy_vqa_dir, tmp_path):
    from safetensors.torch import load_file

    common = ["--max_train_samples", "24", "--load_best_model_at_end", "false", "--save_strategy", "no",
              "--eval_strategy", "no", "--lora_dropout", "0", "--learning_rate", "5e-3"]
    train(tiny_model, easy_vqa_dir, tmp_path / "last", 1, *common)
    metrics = train(tiny_model, easy_vqa_dir, tmp_path / "ema", 1, *common, "--ema_decay", "0.5")
    last = load_file(tmp_path / "last" / "fold1" / "adapter_model.safetensors")
    ema = load_file(tmp_path / "ema" / "fold1" / "adapter_model.safetensors")
    assert last.keys() == ema.keys()
    # Same seed and data: only the averaging differs, and it changes the trained (lora_B) weights.
    assert any(not torch.equal(last[k], ema[k]) for k in last if "lora_B" in k)
    oof = read(tmp_path / "ema" / "fold1" / "oof.csv")
    assert len(oof) == metrics["n_val"] and set(oof["id"]) == fold_ids(tmp_path / "ema", 1)
    assert_probabilities(oof)
