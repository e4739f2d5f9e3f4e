"""The one scoring function: restricted a/b/c/d logits at the answer position, shared by eval and predict."""

import numpy as np
import pytest
import torch
from transformers import AutoModelForImageTextToText, TrainingArguments

from collator import MCVQACollator, option_letter_ids
from mcvqa.metrics import metrics_from_logits
from mcvqa.scoring import answer_logits, letter_logits, predict_probs, score_batch
from mcvqa.trainer import MCVQATrainer, TrainingDiverged, make_compute_metrics
from mcvqa.tta import identity


@pytest.fixture(scope="module")
def model(tiny_model):
    torch.manual_seed(0)
    return AutoModelForImageTextToText.from_pretrained(tiny_model).eval()


@pytest.fixture(scope="module")
def rows(easy_vqa_dir):
    from mcvqa.data import load_split

    return load_split(easy_vqa_dir, "train").to_dict("records")[:12]


def test_answer_logits_equal_the_full_forward_at_that_position(model, processor, rows):
    batch = MCVQACollator(processor, 56 * 56, 56 * 56)(rows[:4])
    at = int(batch["answer_index"][0])
    with torch.no_grad():
        kept = answer_logits(model, batch)[:, 0]
        full = model(**{k: batch[k] for k in ("input_ids", "attention_mask", "pixel_values", "image_grid_thw",
                                              "mm_token_type_ids")}).logits[:, at]
    assert torch.allclose(kept, full, atol=1e-5)


def test_letter_logits_fold_variants_by_logsumexp():
    logits = torch.zeros(1, 10)
    logits[0, 3] = 2.0
    logits[0, 7] = 2.0
    out = letter_logits(logits, [[1], [3, 7], [5], [9]])
    assert torch.allclose(out[0, 1], torch.logsumexp(torch.tensor([2.0, 2.0]), 0))
    assert out.argmax().item() == 1


def test_letter_logits_and_targets_match_the_per_letter_reference_with_gradients():
    """The cached (4, W) index with a -inf mask (no list indexing per batch, which syncs a GPU) is exact."""
    from mcvqa.scoring import target_letters

    torch.manual_seed(0)
    ids = [[4], [7, 2, 11], [0, 9], [5]]  # variant lists of different lengths
    with torch.inference_mode():  # the cache is first filled while scoring (predict.py) in the same process
        letter_logits(torch.zeros(1, 12), ids)
    for dtype in (torch.float32, torch.bfloat16):
        logits = (torch.randn(6, 12) * 5).to(dtype).requires_grad_()
        reference = torch.stack([torch.logsumexp(logits[:, v].float(), dim=-1) for v in ids], dim=-1)
        out = letter_logits(logits, ids)
        assert torch.equal(out, reference)
        grad, = torch.autograd.grad(out.sum(), logits)
        ref_grad, = torch.autograd.grad(reference.sum(), logits)
        assert torch.equal(grad, ref_grad) and torch.isfinite(grad.float()).all()
    labels = torch.full((5, 4), -100)
    labels[:, 2] = torch.tensor([2, 9, 5, 3, 7])  # 3 is no letter's token
    batch = {"input_ids": torch.zeros(5, 4, dtype=torch.long), "labels": labels, "answer_index": torch.ones(5)}
    assert target_letters(batch, ids).tolist() == [1, 2, 3, -100, 1]
    assert target_letters(dict(batch, answer_position=1), ids).tolist() == [1, 2, 3, -100, 1]


def test_the_collator_hands_the_answer_position_and_width_to_the_host(processor, rows):
    train = MCVQACollator(processor, 56 * 56, 56 * 56, supervise_eos=True)(rows[:3])
    at = int(train["answer_index"][0])
    assert train["answer_position"] == at and isinstance(train["answer_position"], int)
    assert train["answer_width"] == int((train["labels"][:, at + 1:] != -100).any(0).sum()) == 2
    scoring = MCVQACollator(processor, 56 * 56, 56 * 56, train=False)(rows[:3])
    assert scoring["answer_position"] == scoring["input_ids"].shape[1] - 1 and scoring["answer_width"] == 0


def test_training_and_scoring_batches_score_identically(model, processor, rows):
    """The letter read after the prompt is the same whether the answer follows it (training) or not (predict)."""
    letters = option_letter_ids(processor.tokenizer)
    with torch.no_grad():
        train_side = score_batch(model, MCVQACollator(processor, 56 * 56, 56 * 56)(rows[:6]), letters)
        predict_side = score_batch(model, MCVQACollator(processor, 56 * 56, 56 * 56, train=False)(rows[:6]), letters)
    assert torch.allclose(train_side, predict_side, atol=1e-4)


def test_predict_probs_equal_trainer_evaluation(model, processor, rows, tmp_path):
    from mcvqa.data import to_dataset
    import pandas as pd

    letters = option_letter_ids(processor.tokenizer)
    collator = MCVQACollator(processor, 56 * 56, 56 * 56)
    args = TrainingArguments(output_dir=str(tmp_path), per_device_eval_batch_size=5, remove_unused_columns=False,
                             report_to="none", use_cpu=True)
    trainer = MCVQATrainer(model=model, args=args, data_collator=collator, letter_ids=letters,
                           compute_metrics=make_compute_metrics())
    pred = trainer.predict(to_dataset(pd.DataFrame(rows)))
    trainer_probs = torch.softmax(torch.tensor(pred.predictions), -1).numpy()
    ours = predict_probs(model, MCVQACollator(processor, 56 * 56, 56 * 56, train=False), rows, letters,
                         {"identity": identity}, batch_size=4, progress=False)["identity"]
    assert np.allclose(trainer_probs, ours, atol=1e-5)
    assert np.allclose(ours.sum(1), 1.0)
    assert list(pred.label_ids) == ["abcd".index(r["answer"]) for r in rows]
    assert pred.predictions.shape == (len(rows), 4), "evaluation must not keep full-vocabulary logits"


def test_metrics_accuracy_logloss_and_by_type():
    logits = np.log(np.array([[0.7, 0.1, 0.1, 0.1], [0.1, 0.7, 0.1, 0.1], [0.25, 0.25, 0.25, 0.25]]))
    m = metrics_from_logits(logits, np.array([0, 0, 2]), ["yes/no", "colour", "colour"])
    assert m["accuracy_yes_no"] == 1.0 and m["accuracy_colour"] == 0.0
    assert m["accuracy"] == pytest.approx(1 / 3)
    assert m["log_loss"] == pytest.approx(-(np.log(0.7) + np.log(0.1) + np.log(0.25)) / 3)


def test_restricted_loss_and_label_smoothing(model, processor, rows, tmp_path):
    letters = option_letter_ids(processor.tokenizer)
    batch = MCVQACollator(processor, 56 * 56, 56 * 56)(rows[:4])
    losses = {}
    for restricted in (False, True):
        for smoothing in (0.0, 0.1):
            args = TrainingArguments(output_dir=str(tmp_path), report_to="none", use_cpu=True,
                                     label_smoothing_factor=smoothing)
            trainer = MCVQATrainer(model=model, args=args, letter_ids=letters, restricted_loss=restricted)
            with torch.no_grad():
                losses[(restricted, smoothing)] = trainer.compute_loss(model, dict(batch)).item()
    with torch.no_grad():
        four = score_batch(model, batch, letters)
    target = torch.tensor(["abcd".index(r["answer"]) for r in rows[:4]])
    assert losses[(True, 0.0)] == pytest.approx(torch.nn.functional.cross_entropy(four, target).item(), rel=1e-5)
    assert losses[(False, 0.0)] > losses[(True, 0.0)], "full-vocabulary loss spreads mass over more tokens"
    assert losses[(False, 0.1)] != losses[(False, 0.0)]


def test_nan_loss_stops_with_advice_for_its_precision_naming_the_last_good_checkpoint(model, processor, tmp_path):
    args = TrainingArguments(output_dir=str(tmp_path), report_to="none", use_cpu=True)
    trainer = MCVQATrainer(model=model, args=args, letter_ids=option_letter_ids(processor.tokenizer))
    trainer._check_finite(torch.tensor(1.0))  # step 0 is checked at once: a finite loss passes
    with pytest.raises(TrainingDiverged) as fp32:
        trainer._check_finite(torch.tensor(float("nan")))
    assert "(fp32)" in str(fp32.value) and "--learning_rate" in str(fp32.value)
    assert "known Qwen-VL fp16 overflow" not in str(fp32.value) and "No checkpoint had been saved" in str(fp32.value)

    good = tmp_path / "checkpoint-150"
    good.mkdir()
    from safetensors.torch import save_file

    save_file({"w": torch.ones(4)}, str(good / "model.safetensors"))
    (good / "trainer_state.json").write_text("{}")
    trainer.args.fp16 = True  # the T4 case; set after construction, as a CPU cannot build fp16 arguments
    with pytest.raises(TrainingDiverged) as fp16:
        trainer._check_finite(torch.tensor(float("inf")))
    assert "became inf" in str(fp16.value) and "known Qwen-VL fp16 overflow" in str(fp16.value) and "--precision bf16" in str(fp16.value)
    assert f"The last good checkpoint is {good}" in str(fp16.value)


def test_time_budget_schedule_warms_up_then_decays_with_the_clock_and_stops_at_the_deadline():
    from types import SimpleNamespace

    from transformers import TrainerControl

    from mcvqa.trainer import TimeBudget, time_schedule

    budget = TimeBudget(minutes=1)
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    sched = time_schedule(opt, budget, warmup_steps=4, kind="cosine")
    factor = sched.lr_lambdas[0]
    assert factor(0) == pytest.approx(0.25) and factor(3) == pytest.approx(1.0)
    args = SimpleNamespace(device=torch.device("cpu"), eval_strategy="steps")
    budget.on_train_begin(args, None, None)
    budget.started -= 30  # half the budget spent
    control = budget.on_step_end(args, None, TrainerControl())
    assert budget.fraction == pytest.approx(0.5, abs=0.01) and not control.should_training_stop
    assert factor(100) == pytest.approx(0.5, abs=0.02)
    budget.started -= 30
    control = budget.on_step_end(args, None, TrainerControl())
    assert control.should_training_stop and control.should_save and factor(100) == pytest.approx(0.0)
    assert time_schedule(opt, budget, 0, "linear").lr_lambdas[0](7) == pytest.approx(0.0)
    # The epochs ending before the clock: the planned steps finish the decay.
    early = TimeBudget(minutes=60)
    by_steps = time_schedule(opt, early, 0, "linear", total_steps=10).lr_lambdas[0]
    assert by_steps(5) == pytest.approx(0.5) and by_steps(10) == pytest.approx(0.0)


def test_weight_ema_averages_only_trainable_weights_and_installs_the_average_at_the_end():
    from types import SimpleNamespace

    from mcvqa.averaging import WeightEMA

    model = torch.nn.Linear(2, 1)
    model.bias.requires_grad_(False)
    ema = WeightEMA(decay=0.5)
    ema.on_train_begin(None, None, None, model=model)
    start = model.weight.detach().clone()
    with torch.no_grad():
        model.weight.fill_(1.0)
    ema.on_step_end(None, SimpleNamespace(), None)
    with torch.no_grad():
        model.weight.fill_(3.0)
    ema.on_step_end(None, SimpleNamespace(), None)
    bias = model.bias.detach().clone()
    ema.on_train_end(None, None, None)
    # 0.5 * (0.5 * start + 0.5 * 1) + 0.5 * 3
    torch.testing.assert_close(model.weight.detach(), 0.25 * start + 0.25 + 1.5)
    torch.testing.assert_close(model.bias.detach(), bias)
