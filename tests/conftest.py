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
