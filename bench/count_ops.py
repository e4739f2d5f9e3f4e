"""How many torch operations one training step of a tiny base dispatches: on a GPU each is a kernel launch
and its Python, which is what six tiny bases sharing one card spend their steps on (bench/RESULTS.md, call 31).
Runs on the CPU; counts, not timings, so the figures are the same on any machine with the same versions.

    python bench/pretrain_tiny.py --data_dir D --out B --minutes 0.1 --heads 4 --hidden_size 256 \\
        --vision_hidden_size 128 --vision_depth 4          # any base of the recipe's shape
    python bench/count_ops.py --base B --data_dir D --rows 256
"""

import argparse
import sys
import traceback
from collections import Counter
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE.parent), str(HERE)]

from torch.utils._python_dispatch import TorchDispatchMode  # noqa: E402

from collator import MCVQACollator, rope_positions  # noqa: E402
from mcvqa.data import load_split  # noqa: E402
from mcvqa.fast_vision import cache_vision_indices  # noqa: E402
from mcvqa.modeling import load_model, load_processor  # noqa: E402
from pretrain_tiny import OPEN_TEMPLATE, open_ended, open_ended_loss  # noqa: E402


class Ops(TorchDispatchMode):
    """Counts every dispatched op, and where in transformers or this project it was called from."""

    def __init__(self):
        super().__init__()
        self.total, self.sdpa, self.sites = 0, 0, Counter()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.total += 1
        self.sdpa += "scaled_dot_product" in str(func)
        frames = [f for f in traceback.extract_stack()[:-1] if "/torch/" not in f.filename
                  and ("transformers" in f.filename or str(HERE.parent) in f.filename)]
        if frames:
            f = frames[-1]
            # An op whose innermost frame is this script's own runs in the autograd engine (no Python frame).
            site = "backward" if f.filename == __file__ else f"{Path(f.filename).name}:{f.lineno} {f.name}"
            self.sites[site] += 1
        return func(*args, **(kwargs or {}))


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--base", required=True, help="a pretrain_tiny.py model folder")
    ap.add_argument("--data_dir", required=True, help="prepare_easy_vqa.py output")
    ap.add_argument("--rows", type=int, default=256, help="batch size of the step")
    ap.add_argument("--pixels", type=int, default=112 * 112, help="the base's min = max pixels")
    ap.add_argument("--top", type=int, default=8, help="call sites to list")
    a = ap.parse_args(argv)
    processor = load_processor(a.base)
    rows = open_ended(load_split(a.data_dir, "train"))[: a.rows]
    for name, batched, cached in (("per-image vision attention", False, False),
                                  ("batched vision attention", True, False),
                                  ("batched vision attention + cached vision indices", True, True)):
        model, _ = load_model(a.base, precision="fp32", attn_implementation="sdpa", full_finetune=True,
                              liger="false", batched_vision_attention=batched)
        cache_vision_indices(cached)
        image_token = processor.tokenizer.convert_tokens_to_ids(processor.image_token)
        batch = MCVQACollator(processor, a.pixels, a.pixels, train=True, template=OPEN_TEMPLATE,
                              position_fn=rope_positions(model, image_token))(rows)
        # The first step of a shape fills the cache: count a later one, as training runs.
        open_ended_loss(model, batch).backward()
        with Ops() as ops:
            open_ended_loss(model, batch).backward()
        print(f"batch {len(rows)}, {name}: {ops.total} ops per forward + backward, {ops.sdpa} of them attention")
        for site, n in ops.sites.most_common(a.top):
            print(f"  {n:6d}  {site}")


if __name__ == "__main__":
    main()
