"""bench/benchmark.py runs end to end on the tiny model on CPU and writes every results.json key."""

import importlib.util
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))

KEYS = ["train_speedup_vs_trl", "train_act_mem_ratio_vs_trl", "train_peak_mem_ratio_vs_trl", "train_mfu",
        "infer_speedup_vs_generate", "infer_mfu", "qlora_fp16_3b_peak_gib", "qlora_fp16_7b_peak_gib",
        "liger_prob_max_abs_diff", "tta12_cost_vs_one_view"]

def test_benchmark_tiny_cpu(tmp_path):
    import benchmark

    has_trl = importlib.util.find_spec("trl") is not None
    parts = "train,trl,infer,tta,liger_check" if has_trl else "train,infer,tta,liger_check"
    out = tmp_path / "results.json"
    benchmark.main(["--model", "tiny", "--device", "cpu", "--out", str(out), "--parts", parts, "--qlora",
                    "--warmup_steps", "1", "--train_steps", "2", "--batch_size", "2", "--infer_rows", "4",
                    "--infer_batch_size", "4", "--generate_rows", "1", "--generate_tokens", "3",
                    "--ckpt_every", "2", "--pad_vision_mlp"])
    res = json.loads(out.read_text())
    for key in ("device", "versions", "command", "config", "train", "infer", "qlora", "summary", "skipped"):
        assert key in res, key
    assert res["device"] == "cpu"
    assert set(res["versions"]) >= {"torch", "transformers", "peft", "trl"}
    for key in KEYS:
        assert key in res["summary"], key
    ours = res["train"]["ours_ckpt"]
    assert ours["samples_per_s"] > 0 and len(ours["step_s_all"]) == 3
    assert res["summary"]["infer_speedup_vs_generate"] > 0
    # No CUDA here: memory figures and MFU are null, the QLoRA stand-in is skipped with its reason.
    assert res["summary"]["train_mfu"] is None and res["summary"]["qlora_fp16_7b_peak_gib"] is None
    assert "CUDA" in res["skipped"]["qlora_fp16_7b_peak_gib"]
    if has_trl:
        assert res["summary"]["train_speedup_vs_trl"] > 0
        assert res["train"]["trl_ckpt"]["collator"] == "DataCollatorForVisionLanguageModeling"
    # Selective checkpointing: every other decoder layer recomputes, and only those count as recomputed FLOPs.
    assert ours["checkpointed_layers"] == (ours["decoder_layers"] + 1) // 2
    assert ours["flop_factor"] == 4 + 2 * ours["checkpointed_layers"] / ours["decoder_layers"]
    assert res["train"]["ours_no_ckpt"]["flop_factor"] == 4
    # Liger needs CUDA: the agreement check is skipped with its reason and the run is unpatched.
    assert res["summary"]["liger_applied"] is False and "CUDA" in res["skipped"]["liger_check"]
    # The 12 TTA views cost more than one view on the same rows, and every view was scored.
    tta = res["tta"]
    assert tta["full_tta12_views"] == 12 and tta["full_one_view_views"] == 1
    assert res["summary"]["tta12_cost_vs_one_view"] > 1
    # Sharing the prefix leaves less than twelve views' FLOPs (the four orders of a scale share image and question),
    # more than three (three scales, each at least one whole view's prefix).
    if tta["share_prefix_available"]:
        assert 3 < res["summary"]["tta12_flops_vs_one_view"] < 12
        assert tta["shared_tta12_tokens"]["suffix"] > 0
