"""`python predict.py --merge_and_save DIR`: a fold's LoRA adapter merged into a standalone model folder.

The merged folder must load with plain transformers (AutoModelForImageTextToText) and mcvqa's processor
loader, and score the same rows as base model + adapter, within floating-point tolerance.
"""

import numpy as np
import pytest
import torch
from transformers import AutoModelForImageTextToText

import predict
import train_lora
from collator import MCVQACollator, option_letter_ids
from mcvqa.data import load_split
from mcvqa.modeling import load_processor
from mcvqa.scoring import predict_probs
from mcvqa.tta import named_views

PIXELS = 56 * 56


@pytest.fixture(scope="module")
def run(tiny_model, easy_vqa_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("export_run")
    train_lora.main([
        "--model_name_or_path", str(tiny_model), "--data_dir", str(easy_vqa_dir), "--output_dir", str(out),
        "--fold", "1", "--num_train_epochs", "1", "--max_train_samples", "16", "--per_device_train_batch_size", "8",
        # A high rate so the adapter moves the scores far from the base model's: a merge that dropped the
        # adapter would be caught.
        "--learning_rate", "5e-2", "--lora_vision", "true", "--min_pixels", str(PIXELS), "--max_pixels", str(PIXELS),
        "--gradient_checkpointing", "false", "--eval_strategy", "no", "--save_strategy", "no",
        "--load_best_model_at_end", "false", "--early_stopping_patience", "0", "--report_to", "none",
        "--disable_tqdm", "true",
    ])
    return out


@pytest.fixture(scope="module")
def merged(run, tmp_path_factory):
    out = tmp_path_factory.mktemp("export") / "merged"
    predict.main(["--merge_and_save", str(out), "--folds", "1", "--output_dir", str(run)])
    return out


def score(model, processor, rows, views):
    collator = MCVQACollator(processor, PIXELS, PIXELS, train=False)
    return predict_probs(model, collator, rows, option_letter_ids(processor.tokenizer), views, batch_size=8,
                         device=torch.device("cpu"), progress=False)


def test_merged_folder_scores_like_base_plus_adapter(run, merged, easy_vqa_dir, tiny_model):
    assert (run / "fold1" / "adapter_config.json").is_file()
    assert (merged / "model.safetensors").is_file() and (merged / "config.json").is_file()
    assert not (merged / "adapter_config.json").exists()
    rows = load_split(easy_vqa_dir, "train").to_dict("records")[:12]
    views = named_views(True, scales=(1.0,), shifts=True)  # identity order plus the 3 other cyclic shifts

    _, built = predict.load_fold(run / "fold1", "fp32")
    adapter_processor, adapter_model = built.processor, built.model
    with_adapter = score(adapter_model.eval(), adapter_processor, rows, views)

    model = AutoModelForImageTextToText.from_pretrained(merged).eval()
    processor = load_processor(merged, PIXELS, PIXELS)
    assert option_letter_ids(processor.tokenizer) == option_letter_ids(adapter_processor.tokenizer)
    standalone = score(model, processor, rows, views)

    base = score(AutoModelForImageTextToText.from_pretrained(tiny_model).eval(), processor, rows, views)
    for name in views:
        np.testing.assert_allclose(standalone[name], with_adapter[name], atol=1e-4, rtol=0)
        np.testing.assert_allclose(standalone[name].sum(1), 1.0, atol=1e-6)
    # The adapter did change the model: the merge carried it over (not just the base weights).
    assert max(np.abs(base[n] - with_adapter[n]).max() for n in views) > 1e-3


def test_merged_folder_keeps_the_folds_pixel_budget(merged):
    import json

    prep = json.loads((merged / "preprocessor_config.json").read_text())
    assert prep["size"] == {"shortest_edge": PIXELS, "longest_edge": PIXELS}
    # Without arguments the processor reads the budget the fold was trained with.
    processor = load_processor(merged)
    assert processor.image_processor.size["longest_edge"] == PIXELS


def test_merge_refuses_a_non_empty_folder(run, tmp_path, capsys):
    (tmp_path / "taken.txt").write_text("x")
    with pytest.raises(SystemExit) as exit_info:
        predict.main(["--merge_and_save", str(tmp_path), "--folds", "1", "--output_dir", str(run)])
    assert exit_info.value.code == 2
    assert "not empty" in capsys.readouterr().err
