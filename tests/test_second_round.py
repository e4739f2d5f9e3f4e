"""Second-round training on CPU (tiny Qwen2.5-VL, easy-VQA): pseudo-labels (--pseudo_labels), distillation
(--teacher_probs) and weight averages kept across --resume (--swa_start, --ema_decay).

What each test holds the code to: test rows never reach oof.csv and never change a fold's validation rows;
a pseudo-labelled row is supervised with its letter (and its soft target follows its options) under
--shuffle_choices; the distillation loss is the formula, and an oracle teacher reaches it on the supervised
letter through train_lora.main; in-fold teacher predictions are refused; a run
resumed from a checkpoint ends with the same averaged weights as an uninterrupted one.
"""

import json
import math
import shutil

import numpy as np
import pandas as pd
import pytest
import torch

from conftest import SMALL_TRAINING, stamp, train_fold
from mcvqa.errors import UserError

LETTERS = list("abcd")
QUICK = ["--max_train_samples", "16", "--per_device_train_batch_size", "4", "--eval_strategy", "no",
         "--save_strategy", "no", "--load_best_model_at_end", "false", "--early_stopping_patience", "0"]


def read(path):
    return pd.read_csv(path, dtype={"id": str}, keep_default_na=False)


def probs_file(path, ids, seed=0, concentration=0.5):
    """A valid id,a,b,c,d file with random (Dirichlet) rows: some confident, some not."""
    p = np.random.default_rng(seed).dirichlet([concentration] * 4, size=len(ids))
    pd.DataFrame({"id": list(ids), **{l: p[:, i] for i, l in enumerate(LETTERS)}}).to_csv(path, index=False)
    return path


def exit_message(argv, capsys):
    import train_lora

    with pytest.raises(SystemExit) as info:
        train_lora.main(argv)
    assert info.value.code == 2
    return capsys.readouterr().err


def base_argv(model, data, out, fold=1, *extra):
    return ["--model_name_or_path", str(model), "--data_dir", str(data), "--output_dir", str(out),
            "--fold", str(fold), *SMALL_TRAINING, *extra]


# ----------------------------------------------------------------------------------------- pseudo-labels


def test_pseudo_labelled_rows_join_training_only(tiny_model, easy_vqa_dir, tmp_path):
    """Both folds with pseudo-labels: oof.csv holds exactly the fold's train.csv validation rows (folds.csv as
    a plain run makes it), no test id; the record names the file, its fingerprint and the rows added."""
    from mcvqa.data import assign_folds, load_split
    from mcvqa.runs import RunRecord, file_fingerprint

    test = read(easy_vqa_dir / "test.csv")
    pseudo = probs_file(tmp_path / "ensemble_probs.csv", test["id"])
    top = read(pseudo)[LETTERS].to_numpy(dtype=float).max(1)
    expected_rows = int((top >= 0.6).sum())
    assert 0 < expected_rows < len(test)
    out = tmp_path / "run"
    for k in (1, 2):
        metrics = train_fold(tiny_model, easy_vqa_dir, out, k, *QUICK, "--max_steps", "2",
                             "--pseudo_labels", str(pseudo), "--pseudo_min_prob", "0.6")
        assert metrics["n_train"] == 16 + expected_rows
        record = RunRecord.load(out / f"fold{k}")
        assert record.pseudo_labels["rows_added"] == expected_rows
        assert record.pseudo_labels["file"] == str(pseudo)
        assert record.pseudo_labels["fingerprint"] == file_fingerprint(pseudo)
        assert record.pseudo_labels["test.csv"] == file_fingerprint(easy_vqa_dir / "test.csv")

    plain = assign_folds(load_split(easy_vqa_dir, "train"), 2, 0, tmp_path / "plain")
    assert read(out / "folds.csv").equals(read(tmp_path / "plain" / "folds.csv")), "pseudo-labels changed the folds"
    folds = read(out / "folds.csv")
    oof_ids = []
    for k in (1, 2):
        oof = read(out / f"fold{k}" / "oof.csv")
        assert set(oof["id"]) == set(folds.loc[folds["fold"].astype(str) == str(k), "id"])
        oof_ids += oof["id"].tolist()
    assert not set(oof_ids) & set(test["id"]), "a test id reached oof.csv"
    assert sorted(oof_ids) == sorted(folds["id"]) and len(plain) == len(folds)


def test_pseudo_labels_refuse_train_ids_and_foreign_ids(tiny_model, easy_vqa_dir, tmp_path, capsys):
    train_ids = read(easy_vqa_dir / "train.csv")["id"]
    test_ids = read(easy_vqa_dir / "test.csv")["id"]
    clash = probs_file(tmp_path / "clash.csv", [*test_ids[:5], train_ids[0]])
    err = exit_message(base_argv(tiny_model, easy_vqa_dir, tmp_path / "a", 1, *QUICK, "--pseudo_labels", str(clash),
                                 "--pseudo_min_prob", "0.5"), capsys)
    assert "1 id(s) are also train.csv ids" in err and repr(train_ids[0]) in err
    foreign = probs_file(tmp_path / "foreign.csv", [*test_ids[:5], "elsewhere_1"])
    err = exit_message(base_argv(tiny_model, easy_vqa_dir, tmp_path / "b", 1, *QUICK, "--pseudo_labels",
                                 str(foreign), "--pseudo_min_prob", "0.5"), capsys)
    assert "are not rows of" in err and "'elsewhere_1'" in err
    err = exit_message(base_argv(tiny_model, easy_vqa_dir, tmp_path / "c", 1, *QUICK, "--pseudo_labels",
                                 str(foreign)), capsys)
    assert "--pseudo_labels needs --pseudo_min_prob" in err
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()


@pytest.mark.parametrize("soft", [False, True])
def test_pseudo_rows_are_supervised_with_their_letter_under_shuffled_choices(processor, easy_vqa_dir, tmp_path,
                                                                            soft):
    """Through the training collator with --shuffle_choices: the supervised token of a pseudo row is the letter
    of the position showing the argmax option, and its soft target follows the options to their positions."""
    from collator import MCVQACollator
    from mcvqa.second_round import pseudo_label_rows

    test = read(easy_vqa_dir / "test.csv")
    pseudo = read(probs_file(tmp_path / "p.csv", test["id"]))
    rows, record = pseudo_label_rows(tmp_path / "p.csv", easy_vqa_dir, 0.5, soft, read(easy_vqa_dir / "train.csv")["id"])
    assert record["rows_added"] == len(rows) > 3
    by_id = pseudo.set_index("id")[LETTERS]
    collator = MCVQACollator(processor, 3136, 3136, shuffle_choices=True, seed=1)
    letter_of = {processor.tokenizer.convert_tokens_to_ids(l): l for l in LETTERS}
    from mcvqa.data import to_dataset

    dataset_rows = list(to_dataset(rows))  # the strings the Trainer hands the collator
    orders = set()
    for _ in range(6):
        batch = collator(dataset_rows)
        at = int(batch["answer_index"][0]) + 1
        assert ("soft_targets" in batch) == soft and "teacher_probs" not in batch
        for i, row in enumerate(dataset_rows):
            original = by_id.loc[row["id"]].to_numpy(dtype=float)
            shown = letter_of[int(batch["labels"][i, at])]
            # The option text at the supervised position is the most probable option of the file.
            best = LETTERS[int(original.argmax())]
            text_shown = batch_option_text(processor, batch["input_ids"][i], shown)
            assert text_shown == row[best], (row["id"], shown, text_shown, row[best])
            if soft:
                target = batch["soft_targets"][i].numpy()
                # Each position's target is the probability of the option shown there.
                for j, letter in enumerate(LETTERS):
                    k = LETTERS.index(next(l for l in LETTERS if row[l] == batch_option_text(
                        processor, batch["input_ids"][i], letter)))
                    assert target[j] == pytest.approx(original[k] / original.sum(), abs=1e-7)
                assert batch["soft_mask"][i]
            orders.add(tuple(batch_option_text(processor, batch["input_ids"][i], l) for l in LETTERS))
    assert len(orders) > len(dataset_rows), "--shuffle_choices never reordered the options"


def batch_option_text(processor, ids, letter):
    """The text of option `letter` in a rendered prompt ('a. text' lines)."""
    text = processor.tokenizer.decode([int(t) for t in ids if int(t) != processor.tokenizer.pad_token_id])
    for line in text.splitlines():
        if line.startswith(f"{letter}. "):
            return line[3:].strip()
    raise AssertionError(f"no option line {letter!r} in {text!r}")


# ----------------------------------------------------------------------------------------- distillation


def formula(letters, targets, teacher, has_teacher, alpha, t):
    """(1 - A) * CE + A * T^2 * KL(teacher_T || student_T) per row, written out in float64 numpy."""
    z = letters.astype(np.float64)
    logq = z - np.log(np.exp(z).sum(1, keepdims=True))
    ce = -logq[np.arange(len(z)), targets]
    pt = np.exp(np.log(teacher) / t)
    pt /= pt.sum(1, keepdims=True)
    zt = z / t
    logqt = zt - np.log(np.exp(zt).sum(1, keepdims=True))
    kl = (pt * (np.log(pt) - logqt)).sum(1)
    return np.where(has_teacher, (1 - alpha) * ce + alpha * t * t * kl, ce).mean()


def test_distillation_loss_equals_the_formula_on_a_hand_made_batch():
    from mcvqa.second_round import second_round_loss

    g = torch.Generator().manual_seed(0)
    letters = torch.randn(5, 4, generator=g) * 3
    targets = torch.tensor([0, 3, 1, 2, 2])
    teacher = torch.softmax(torch.randn(5, 4, generator=g), -1)
    has = torch.tensor([True, True, False, True, True])
    letter_ids = [[10], [11], [12], [13]]
    labels = torch.full((5, 3), -100)
    labels[:, 2] = torch.tensor([letter_ids[k][0] for k in targets])
    inputs = {"labels": labels, "answer_index": torch.full((5,), 1), "input_ids": torch.zeros((5, 3), dtype=torch.long),
              "teacher_probs": teacher, "teacher_mask": has}
    for alpha, t in ((0.5, 1.0), (0.3, 2.0), (1.0, 4.0)):
        got = second_round_loss(None, None, letters, inputs, letter_ids, True, 0.0, alpha, t)
        want = formula(letters.numpy(), targets.numpy(), teacher.numpy(), has.numpy(), alpha, t)
        assert got.item() == pytest.approx(want, rel=1e-5)
    # The full-vocabulary objective: a row's CE is over the vocabulary at the letter position.
    vocab = torch.randn(5, 1, 20, generator=g)
    vocab_letters = vocab[:, 0, [10, 11, 12, 13]]
    got = second_round_loss(vocab, labels[:, 2:], vocab_letters, inputs, letter_ids, False, 0.0, 0.4, 2.0)
    ce = torch.nn.functional.cross_entropy(vocab[:, 0], labels[:, 2], reduction="none").numpy()
    lt = vocab_letters.numpy() / 2.0
    logqt = lt - np.log(np.exp(lt).sum(1, keepdims=True))
    pt = teacher.numpy() ** 0.5 / (teacher.numpy() ** 0.5).sum(1, keepdims=True)
    kl = (pt * (np.log(pt) - logqt)).sum(1)
    want = np.where(has.numpy(), 0.6 * ce + 0.4 * 4.0 * kl, ce).mean()
    assert got.item() == pytest.approx(want, rel=1e-5)
    # Soft targets: the row's cross-entropy against the distribution, over the four letters.
    soft = torch.softmax(torch.randn(5, 4, generator=g), -1)
    plain = {k: v for k, v in inputs.items() if not k.startswith("teacher")}
    got = second_round_loss(None, None, letters, {**plain, "soft_targets": soft, "soft_mask": has}, letter_ids, True,
                            0.0, 0.0, 1.0)
    logq = torch.log_softmax(letters.double(), -1)
    rows = torch.where(has, -(soft.double() * logq).sum(-1), -logq[torch.arange(5), targets])
    assert got.item() == pytest.approx(rows.mean().item(), rel=1e-6)


def test_the_trainer_applies_the_distillation_loss_to_a_collated_batch(tiny_model, processor, easy_vqa_dir,
                                                                     tmp_path):
    """MCVQATrainer's loss on a real batch (tiny model, shuffled options): the formula with the teacher
    probabilities moved to the positions their options are shown at; rows without a teacher: plain CE."""
    from transformers import TrainingArguments

    from collator import MCVQACollator, option_letter_ids
    from mcvqa.data import load_split, to_dataset
    from mcvqa.modeling import load_model
    from mcvqa.second_round import TEACHER_COLUMN, attach_teacher
    from mcvqa.trainer import MCVQATrainer

    rows = load_split(easy_vqa_dir, "train").head(6)
    teacher = read(probs_file(tmp_path / "t.csv", rows["id"][:4], seed=3)).set_index("id")[LETTERS]
    record = {}
    rows = attach_teacher(rows, teacher, record)
    assert record == {"rows_covered": 4, "rows_without_teacher": 2}
    assert (rows[TEACHER_COLUMN] == "").sum() == 2
    model, _ = load_model(str(tiny_model), precision="fp32")
    model.eval()
    collator = MCVQACollator(processor, 3136, 3136, shuffle_choices=True, seed=5)
    letter_ids = option_letter_ids(processor.tokenizer)
    args = TrainingArguments(output_dir=str(tmp_path / "t"), use_cpu=True, report_to="none",
                             label_smoothing_factor=0.0)
    trainer = MCVQATrainer(model=model, args=args, letter_ids=letter_ids, restricted_loss=True, distill=(0.3, 2.0))
    batch = collator(list(to_dataset(rows)))
    with torch.no_grad():
        loss, letters = trainer._loss_and_letters(model, batch)
    encoded_orders = []
    for i, row in enumerate(to_dataset(rows)):
        texts = [batch_option_text(processor, batch["input_ids"][i], l) for l in LETTERS]
        encoded_orders.append([next(k for k, l in enumerate(LETTERS) if row[l] == t) for t in texts])
    shown_teacher = np.array([teacher.loc[i].to_numpy()[order] if i in teacher.index else np.full(4, 0.25)
                              for i, order in zip(rows["id"], encoded_orders)])
    np.testing.assert_allclose(batch["teacher_probs"].numpy()[:4], shown_teacher[:4] / shown_teacher[:4].sum(1, keepdims=True),
                               rtol=1e-6)
    targets = np.array([order.index(LETTERS.index(a)) for a, order in zip(rows["answer"], encoded_orders)])
    want = formula(letters.numpy(), targets, shown_teacher, batch["teacher_mask"].numpy(), 0.3, 2.0)
    assert loss.item() == pytest.approx(want, rel=1e-5)
    assert batch["teacher_mask"].tolist() == [True] * 4 + [False] * 2


def fake_teacher_run(root, easy_vqa_dir, covering):
    """A teacher run folder as train_lora.py leaves it (folds.csv, fold folders with a run record and a
    provenance-stamped oof.csv); `covering(fold, folds)` picks each fold's oof.csv ids."""
    from mcvqa.data import assign_folds, load_split

    folds = assign_folds(load_split(easy_vqa_dir, "train"), 2, 0, root)
    table = pd.DataFrame({"id": load_split(easy_vqa_dir, "train")["id"].astype(str), "fold": folds})
    for k in (1, 2):
        fold = root / f"fold{k}"
        fold.mkdir(parents=True)
        probs_file(fold / "oof.csv", covering(k, table), seed=k)
        stamp(fold, "oof.csv")
    return root


def test_teacher_with_in_fold_predictions_is_refused(tiny_model, easy_vqa_dir, tmp_path, capsys):
    from mcvqa.second_round import read_teacher

    train_ids = read(easy_vqa_dir / "train.csv")["id"]
    test_ids = read(easy_vqa_dir / "test.csv")["id"]
    # fold1's "oof.csv" scored every train row: the fold-2 rows are ones fold1's model trained on.
    leaky = fake_teacher_run(tmp_path / "leaky", easy_vqa_dir, lambda k, t: t["id"])
    student = tmp_path / "student"
    student.mkdir()
    shutil.copy(leaky / "folds.csv", student / "folds.csv")
    shutil.copy(leaky / "folds.json", student / "folds.json")
    n_fold2 = int((read(leaky / "folds.csv")["fold"].astype(str) == "2").sum())
    err = exit_message(base_argv(tiny_model, easy_vqa_dir, student, 2, *QUICK, "--teacher_probs",
                                 str(leaky / "fold1" / "oof.csv"), "--distill_alpha", "0.5"), capsys)
    assert f"in-fold predictions for {n_fold2} train.csv row(s)" in err
    assert f"{n_fold2} of them validation rows of this fold" in err
    assert not (student / "fold2").exists()
    with pytest.raises(UserError, match="in-fold predictions"):
        read_teacher(leaky, train_ids, test_ids, easy_vqa_dir)  # the run folder holding it: refused too
    # A full/ run trained on every row: any train row it covers is in-fold.
    full = tmp_path / "leaky" / "full"
    full.mkdir()
    probs_file(full / "scores.csv", train_ids[:3])
    stamp(full)
    with pytest.raises(UserError, match="in-fold predictions for 3 train.csv row"):
        read_teacher(full / "scores.csv", train_ids, test_ids, easy_vqa_dir)

    # Each fold scoring only its own validation rows is out-of-fold: accepted, file by file or as a run folder.
    honest = fake_teacher_run(tmp_path / "honest", easy_vqa_dir, lambda k, t: t.loc[t["fold"] == k, "id"])
    probs, record = read_teacher(honest / "fold1" / "oof.csv", train_ids, test_ids, easy_vqa_dir)
    assert record["checked"] == "fold folder fold1" and len(probs) == int((read(honest / "folds.csv")["fold"].astype(str) == "1").sum())
    probs, record = read_teacher(honest, train_ids, test_ids, easy_vqa_dir)
    assert set(probs.index) == set(train_ids) and record["fingerprint"].startswith("files:")
    # A file outside any fold folder cannot be checked: accepted, and said so.
    loose = probs_file(tmp_path / "loose.csv", train_ids)
    _, record = read_teacher(loose, train_ids, test_ids, easy_vqa_dir)
    assert record["checked"] is None and "cannot be checked" in capsys.readouterr().err
    # A changed OOF file no longer matches its provenance record.
    probs_file(honest / "fold2" / "oof.csv", read(honest / "fold2" / "oof.csv")["id"], seed=9)
    with pytest.raises(UserError, match="changed since it was written"):
        read_teacher(honest, train_ids, test_ids, easy_vqa_dir)


def test_distilled_student_trains_from_an_out_of_fold_teacher(tiny_model, easy_vqa_dir, tmp_path):
    """A full student run with a teacher run folder, soft pseudo-labels and SWA: every training row is covered
    (train rows by the teacher's OOF, pseudo rows by its test probabilities), the record says so."""
    from mcvqa.runs import RunRecord

    test_ids = read(easy_vqa_dir / "test.csv")["id"]
    teacher = fake_teacher_run(tmp_path / "teacher", easy_vqa_dir, lambda k, t: t.loc[t["fold"] == k, "id"])
    for k in (1, 2):
        probs_file(teacher / f"fold{k}" / "test_probs.csv", test_ids, seed=10 + k)
        stamp(teacher / f"fold{k}", "test_probs.csv")
    pseudo = probs_file(tmp_path / "ensemble_probs.csv", test_ids, seed=4)
    out = tmp_path / "student"
    metrics = train_fold(tiny_model, easy_vqa_dir, out, 1, *QUICK, "--max_steps", "3", "--shuffle_choices",
                         "--teacher_probs", str(teacher), "--distill_alpha", "0.5", "--distill_temperature", "2",
                         "--pseudo_labels", str(pseudo), "--pseudo_min_prob", "0.5", "--pseudo_soft",
                         "--swa_start", "0.3")
    record = RunRecord.load(out / "fold1")
    assert record.teacher["rows_covered"] == metrics["n_train"] and record.teacher["rows_without_teacher"] == 0
    assert record.pseudo_labels["soft"] and record.pseudo_labels["rows_added"] == metrics["n_train"] - 16
    assert math.isfinite(metrics["train_loss"])
    oof = read(out / "fold1" / "oof.csv")
    assert not set(oof["id"]) & set(test_ids)


def test_an_oracle_teacher_reaches_the_loss_on_the_supervised_letter(tiny_model, easy_vqa_dir, tmp_path,
                                                                    monkeypatch):
    """End to end through train_lora.main, with shuffled options, oversampled rows and a dataloader worker: a
    teacher that puts 0.97 on each row's answer arrives in every training batch with its argmax on the letter
    the labels supervise (a misaligned row, batch or option order would show as disagreement)."""
    import mcvqa.trainer
    from mcvqa.scoring import target_letters

    rows = read(easy_vqa_dir / "train.csv")
    p = np.full((len(rows), 4), 0.01)
    p[np.arange(len(rows)), rows["answer"].map(LETTERS.index)] = 0.97
    oracle = tmp_path / "oracle.csv"
    pd.DataFrame({"id": rows["id"], **{l: p[:, i] for i, l in enumerate(LETTERS)}}).to_csv(oracle, index=False)
    agreement, loss = [], mcvqa.trainer.second_round_loss

    def spy(logits, targets, letters, inputs, letter_ids, *args):
        taught = inputs["teacher_probs"].argmax(-1) == target_letters(inputs, letter_ids)
        agreement.append(taught[inputs["teacher_mask"]].tolist())
        return loss(logits, targets, letters, inputs, letter_ids, *args)

    monkeypatch.setattr(mcvqa.trainer, "second_round_loss", spy)
    train_fold(tiny_model, easy_vqa_dir, tmp_path / "student", 1, "--max_steps", "6", "--eval_strategy", "no",
               "--save_strategy", "no", "--load_best_model_at_end", "false", "--early_stopping_patience", "0",
               "--shuffle_choices", "--oversample", "colour=3,shape=2", "--dataloader_num_workers", "1",
               "--teacher_probs", str(oracle), "--distill_alpha", "0.5", "--restricted_loss", "true")
    assert len(agreement) == 6 and all(len(batch) == 8 for batch in agreement)
    assert all(all(batch) for batch in agreement)


def test_flag_combinations_are_checked(tiny_model, easy_vqa_dir, tmp_path, capsys):
    base = base_argv(tiny_model, easy_vqa_dir, tmp_path / "x", 1)
    err = exit_message([*base, "--swa_start", "0.5"], capsys)
    assert "--swa_start saves the averaged weights" in err and "--load_best_model_at_end false" in err
    err = exit_message([*base, "--swa_start", "1.5", "--ema_decay", "0.9", "--load_best_model_at_end", "false"], capsys)
    assert "--swa_start 1.5: must be a fraction" in err and "choose one" in err
    err = exit_message([*base, "--teacher_probs", "t.csv"], capsys)
    assert "--teacher_probs needs --distill_alpha" in err
    err = exit_message([*base, "--distill_alpha", "0.5", "--distill_temperature", "0"], capsys)
    assert "--distill_alpha needs --teacher_probs" in err and "--distill_temperature 0.0: must be positive" in err
    assert not (tmp_path / "x").exists()


# ----------------------------------------------------------------------------------------- averages and --resume


def test_swa_is_the_mean_of_the_weights_after_its_start():
    from types import SimpleNamespace

    from mcvqa.averaging import WeightSWA

    model = torch.nn.Linear(2, 1)
    swa = WeightSWA(start=0.5)
    swa.on_train_begin(None, SimpleNamespace(global_step=0), None, model=model)
    seen = []
    for step in range(1, 7):
        with torch.no_grad():
            model.weight.fill_(float(step * step))
        swa.on_step_end(None, SimpleNamespace(global_step=step, max_steps=6), None)
        if step > 3:
            seen.append(float(step * step))
    swa.on_train_end(None, None, None)
    torch.testing.assert_close(model.weight.detach(), torch.full((1, 2), sum(seen) / len(seen)))


RESUME = [*QUICK[:4], "--eval_strategy", "no", "--save_strategy", "steps", "--save_steps", "3",
          "--load_best_model_at_end", "false", "--early_stopping_patience", "0", "--max_steps", "6",
          "--save_total_limit", "3", "--lora_dropout", "0", "--learning_rate", "5e-3"]


@pytest.mark.parametrize("average", [["--swa_start", "0.2"], ["--ema_decay", "0.6"]], ids=["swa", "ema"])
def test_the_average_survives_resume(tiny_model, easy_vqa_dir, tmp_path, average):
    """Run 6 steps with checkpoints at 3 and 6; copy the run, drop everything after checkpoint 3 and --resume:
    the saved (averaged) adapter equals the uninterrupted one. Resuming with the average's file removed from
    checkpoint 3 (an average restarted at the resume, as before) gives other weights: the state is what matters."""
    from safetensors.torch import load_file

    from mcvqa.averaging import AVERAGE_FILE

    whole = tmp_path / "whole"
    train_fold(tiny_model, easy_vqa_dir, whole, 1, *RESUME, *average)
    ckpts = whole / "fold1" / "checkpoints"
    assert (ckpts / "checkpoint-3" / AVERAGE_FILE).is_file() and (ckpts / "checkpoint-6" / AVERAGE_FILE).is_file()
    reference = load_file(whole / "fold1" / "adapter_model.safetensors")

    def resumed(name, keep_average=True):
        copy = tmp_path / name
        shutil.copytree(whole, copy)
        shutil.rmtree(copy / "fold1" / "checkpoints" / "checkpoint-6")
        for f in ("adapter_model.safetensors", "oof.csv", "train_config.json"):
            (copy / "fold1" / f).unlink()
        if not keep_average:
            (copy / "fold1" / "checkpoints" / "checkpoint-3" / AVERAGE_FILE).unlink()
        train_fold(tiny_model, easy_vqa_dir, copy, 1, *RESUME, *average, "--resume")
        state = json.loads((copy / "fold1" / "trainer_state.json").read_text())
        assert state["global_step"] == 6
        return load_file(copy / "fold1" / "adapter_model.safetensors")

    again = resumed("resumed")
    assert again.keys() == reference.keys()
    diff = max((again[k] - reference[k]).abs().max().item() for k in reference)
    assert diff <= 1e-6, f"resumed average differs by {diff:.3g}"
    restarted = resumed("restarted", keep_average=False)
    gap = max((restarted[k] - reference[k]).abs().max().item() for k in reference if "lora_B" in k)
    print(f"{average[0]}: resumed vs uninterrupted max abs diff {diff:.3g}; restarted average differs by {gap:.3g}")
    assert gap > 1e-4, "restarting the average changed nothing: the test would not see a lost state"


def test_resume_refuses_a_checkpoint_made_from_another_pseudo_label_file(tiny_model, easy_vqa_dir, tmp_path, capsys):
    test_ids = read(easy_vqa_dir / "test.csv")["id"]
    pseudo = probs_file(tmp_path / "ensemble_probs.csv", test_ids, seed=1)
    args = [*QUICK[:4], "--eval_strategy", "no", "--save_strategy", "steps", "--save_steps", "2", "--max_steps", "2",
            "--load_best_model_at_end", "false", "--pseudo_labels", str(pseudo), "--pseudo_min_prob", "0.5"]
    train_fold(tiny_model, easy_vqa_dir, tmp_path / "run", 1, *args)
    probs_file(pseudo, test_ids, seed=2)  # same path, other probabilities
    err = exit_message(base_argv(tiny_model, easy_vqa_dir, tmp_path / "run", 1, *args, "--resume"), capsys)
    assert "was written by a run with other settings (pseudo_labels_fingerprint" in err
