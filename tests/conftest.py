"""Shared fixtures: tiny offline Qwen-VL models (built once per session) and a small easy-VQA folder."""

import os
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
# Nothing in the tests may reach a model hub.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


@pytest.fixture(scope="session")
def tiny_models(tmp_path_factory):
    """{arch: folder} for qwen2_vl, qwen2_5_vl and qwen3_vl, each a few hundred thousand random weights."""
    from tools.make_tiny_model import make_tiny_model

    root = tmp_path_factory.mktemp("tiny_models")
    return {arch: make_tiny_model(arch, root / arch, max_pixels=56 * 56, min_pixels=56 * 56)
            for arch in ("qwen2_vl", "qwen2_5_vl", "qwen3_vl")}


@pytest.fixture(scope="session")
def tiny_model(tiny_models):
    return tiny_models["qwen2_5_vl"]


@pytest.fixture(scope="session")
def easy_vqa_dir(tmp_path_factory):
    """A data folder from the easy-VQA package: 120 train rows, 24 test rows (images referenced)."""
    from data.prepare_easy_vqa import main as prepare

    out = tmp_path_factory.mktemp("easy_vqa")
    prepare(["--out", str(out), "--n_train", "120", "--n_test", "24", "--seed", "0"])
    return out


@pytest.fixture(scope="session")
def processor(tiny_model):
    from mcvqa.modeling import load_processor

    return load_processor(tiny_model, 56 * 56, 56 * 56)


SMALL_TRAINING = ["--n_folds", "2", "--num_train_epochs", "1", "--per_device_train_batch_size", "8",
                  "--per_device_eval_batch_size", "16", "--min_pixels", "3136", "--max_pixels", "3136",
                  "--disable_tqdm", "true", "--report_to", "none", "--logging_steps", "50", "--seed", "0"]


def train_fold(model, data, out, fold, *extra):
    """train_lora.main on the tiny model with the small settings every script test uses."""
    import train_lora

    return train_lora.main(["--model_name_or_path", str(model), "--data_dir", str(data), "--output_dir", str(out),
                            "--fold", str(fold), *SMALL_TRAINING, *extra])


@pytest.fixture(scope="session")
def trained_run(tiny_model, easy_vqa_dir, tmp_path_factory):
    """(ROOT, ROOT/tiny, metrics): fold1 a full fine-tune, fold2 LoRA, both predicted with --tta (scale 1.0).

    Tests that change a run work on a copy (shutil.copytree) of ROOT/tiny.
    """
    import predict

    root = tmp_path_factory.mktemp("scripts")
    out = root / "tiny"
    metrics = {1: train_fold(tiny_model, easy_vqa_dir, out, 1, "--full_finetune"),
               2: train_fold(tiny_model, easy_vqa_dir, out, 2)}
    predict.main(["--output_dir", str(out), "--data_dir", str(easy_vqa_dir), "--tta", "--tta_scales", "1.0",
                  "--progress", "false"])
    return root, out, metrics


def stamp(fold, *names):
    """Make `fold` a fold folder as train_lora.py and predict.py leave it: a run record naming its weights, and a
    provenance entry for each file in `names` (made from those weights)."""
    from mcvqa.args import DataArguments, ModelArguments, RunArguments
    from mcvqa.runs import RECORD, RunRecord, record_artefact

    fold = Path(fold)
    if not (fold / RECORD).is_file():
        RunRecord(ModelArguments(model_name_or_path="m"), DataArguments(), RunArguments(),
                  weights="weights:test").save(fold)
    for name in names:
        record_artefact(fold, name, weights="weights:test")
    return fold


def snapshot(root):
    """{relative path: (size, mtime_ns)} of every file under root; None when root does not exist."""
    root = Path(root)
    if not root.exists():
        return None
    return {str(p.relative_to(root)): (p.stat().st_size, p.stat().st_mtime_ns)
            for p in sorted(root.rglob("*")) if p.is_file()}
