"""Merge the issue-5 benchmark's parts (one device session) into bench/results.json with targets and verdicts.

    python3 bench/merge_results.py --main results_7b.json --qlora qlora.json --ddp ddp_qwen2.5-vl-3b.json \
        [--profile profile_7b.json] --out bench/results.json
"""

import argparse
import json
from pathlib import Path

# key: (target, "min" = at least / "max" = at most)
TARGETS = {
    "train_speedup_vs_trl": (2.0, "min"), "train_act_mem_ratio_vs_trl": (0.5, "max"),
    "train_mfu": (0.35, "min"), "infer_speedup_vs_generate": (20.0, "min"), "infer_mfu": (0.50, "min"),
    "qlora_fp16_3b_peak_gib": (8.0, "max"), "qlora_fp16_7b_peak_gib": (15.0, "max"),
    "ddp_2gpu_scaling": (1.85, "min"),
}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--main", required=True, help="benchmark.py output with train, trl and infer")
    ap.add_argument("--qlora", required=True, help="benchmark.py --parts qlora --qlora output")
    ap.add_argument("--ddp", required=True, help="bench/ddp_scaling.sh output (MODEL=qwen2.5-vl-3b or 7b)")
    ap.add_argument("--profile", default=None, help="benchmark.py --profile output")
    ap.add_argument("--out", required=True)
    a = ap.parse_args(argv)
    main_run = json.loads(Path(a.main).read_text())
    qlora = json.loads(Path(a.qlora).read_text())
    ddp = json.loads(Path(a.ddp).read_text())
    out = dict(main_run)
    out["qlora"] = qlora["qlora"]
    out["ddp"] = ddp
    out["commands"] = {"main": main_run["command"], "qlora": qlora["command"],
                       "ddp": f"MODEL={ddp['model']} bash bench/ddp_scaling.sh (on {ddp['device']})"}
    summary = dict(main_run["summary"])
    for key in ("qlora_fp16_3b_peak_gib", "qlora_fp16_3b_max_pixels_15gib", "qlora_fp16_7b_peak_gib",
                "qlora_fp16_7b_max_pixels_15gib"):
        summary[key] = qlora["summary"][key]
    summary["ddp_2gpu_scaling"] = ddp["ddp_2gpu_scaling"]
    summary["ddp_model"] = ddp["model"]
    out["skipped"] = {k: v for k, v in {**main_run.get("skipped", {}), **qlora.get("skipped", {})}.items()
                      if summary.get(k) is None}
    if a.profile:
        prof = json.loads(Path(a.profile).read_text())
        out["profile"] = {"command": prof["command"], "config": prof["config"],
                          "train_ours_ckpt": (prof["train"].get("ours_ckpt") or {}).get("profile"),
                          "train_ours_ckpt_samples_per_s": (prof["train"].get("ours_ckpt") or {}).get("samples_per_s"),
                          "infer_one_batch": ((prof.get("infer") or {}).get("scoring") or {}).get("profile_one_batch")}
    out["summary"] = summary
    out["targets"] = {k: {"target": t, "kind": kind, "value": summary.get(k),
                          "met": None if summary.get(k) is None else
                          (summary[k] >= t if kind == "min" else summary[k] <= t)}
                      for k, (t, kind) in TARGETS.items()}
    Path(a.out).write_text(json.dumps(out, indent=2))
    for k, v in out["targets"].items():
        print(f"{k:<30} {v['value'] if v['value'] is None else round(v['value'], 3)!s:>10}  target "
              f"{'>=' if v['kind'] == 'min' else '<='} {v['target']}  {'met' if v['met'] else 'NOT met'}")


if __name__ == "__main__":
    main()
