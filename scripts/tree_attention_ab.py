"""A/B: tree-verify forward time with transformers' ``sdpa`` attention vs dtree's ``dtree_sdpa`` (no K/V expansion).

Loads the embedded target (fp32, CPU), fills a KV cache of L random tokens, then for each node count n verifies the
same random tree alternately under both implementations (``repeats`` rounds, switching per forward so drift hits both
alike) and prints the median ms, the saving, and the largest logit difference. Needs no drafter.

Usage: ``.venv/bin/python scripts/tree_attention_ab.py [--contexts 64,512,1024] [--nodes 1,4,8,16,32] [--repeats 12]``
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from dtree.models import TREE_ATTENTION, load_target  # noqa: E402
from dtree.trees import random_tree, tree_attention_inputs  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--contexts", default="64,512,1024")
    ap.add_argument("--nodes", default="1,4,8,16,32")
    ap.add_argument("--repeats", type=int, default=12)
    args = ap.parse_args()
    from transformers import DynamicCache

    target = load_target("embedded", "float32", "cpu")
    model = target.model
    modes = ("sdpa", TREE_ATTENTION)
    rng = np.random.default_rng(0)
    gen = torch.Generator().manual_seed(0)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; median ms of {args.repeats} forwards each")
    print(f"{'L':>5} {'n':>3} {'sdpa':>8} {TREE_ATTENTION:>10} {'saving':>7} {'max |dlogit|':>13}")
    with torch.inference_mode():
        for L in (int(v) for v in args.contexts.split(",")):
            cache = DynamicCache(config=model.config)
            model(input_ids=torch.randint(0, target.vocab_size, (1, L), generator=gen), cache=cache, use_cache=True)
            for n in (int(v) for v in args.nodes.split(",")):
                ids, pos, mask = tree_attention_inputs(random_tree(n, rng, target.vocab_size), L, torch.float32, "cpu")
                times = {m: [] for m in modes}
                logits = {}
                for _ in range(args.repeats):
                    for m in modes:
                        model.set_attn_implementation(m)
                        t0 = time.perf_counter()
                        logits[m] = model(input_ids=ids, attention_mask=mask, position_ids=pos, cache=cache,
                                          use_cache=True).logits
                        times[m].append(time.perf_counter() - t0)
                        cache.crop(-(n + 1))
                a, b = (1e3 * float(np.median(times[m])) for m in modes)
                diff = float((logits[modes[0]] - logits[modes[1]]).abs().max())
                print(f"{L:5d} {n:3d} {a:8.1f} {b:10.1f} {100 * (a - b) / a:6.1f}% {diff:13.2e}", flush=True)
    model.set_attn_implementation(TREE_ATTENTION)


if __name__ == "__main__":
    main()
