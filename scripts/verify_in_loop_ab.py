"""A/B: does a tree verify take longer inside the decoding loop than in the profiler's back-to-back timing?

Loads the embedded target and the shipped drafter (fp32, CPU), fills a KV cache of L random tokens, then for each
node count n times one random-tree verify forward under four conditions, interleaved in a random order per repeat
(so drift of a shared machine hits every condition alike):

- ``b2b``: back to back, logits only (what ``dtree profile`` times);
- ``b2b+hidden``: back to back, also returning hidden states (as the engine's verify does);
- ``after-draft``: right after a drafter forward (as in a real round: the drafter's work comes between verifies);
- ``after-sleep``: after a 20 ms pause (caches and thread pools go cold as between interactive steps).

Prints the median ms per (condition, n). Usage: ``.venv/bin/python scripts/verify_in_loop_ab.py [--context 160]
[--nodes 0,2,4,8,16,32] [--repeats 12]``
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from dtree.backend import Backend, DraftStepTimer  # noqa: E402
from dtree.trees import random_tree, tree_attention_inputs  # noqa: E402

CONDITIONS = ("b2b", "b2b+hidden", "after-draft", "after-sleep")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--context", type=int, default=160)
    ap.add_argument("--nodes", default="0,2,4,8,16,32")
    ap.add_argument("--repeats", type=int, default=12)
    args = ap.parse_args()
    nodes = [int(v) for v in args.nodes.split(",")]
    backend = Backend("embedded", "float32", "cpu")
    model, drafter, target = backend.target.model, backend.drafter, backend.target
    from transformers import DynamicCache

    rng = np.random.default_rng(0)
    gen = torch.Generator().manual_seed(0)
    vocab = int(model.get_input_embeddings().num_embeddings)
    L = args.context
    cache = DynamicCache(config=model.config)
    draft = DraftStepTimer(target, drafter, context=L)  # about tau new context rows, then one block, as in a round
    with torch.inference_mode():
        model(input_ids=torch.randint(0, vocab, (1, L), generator=gen), cache=cache, use_cache=True)

        def verify(n: int, hidden: bool) -> float:
            ids, pos, mask = tree_attention_inputs(random_tree(n, rng, vocab), L, target.dtype, target.device)
            t0 = time.perf_counter()
            model(input_ids=ids, attention_mask=mask, position_ids=pos, cache=cache, use_cache=True,
                  output_hidden_states=hidden)
            dt = time.perf_counter() - t0
            cache.crop(-(n + 1))
            return dt

        for _ in range(2):  # warm-up: every shape once
            for n in nodes:
                verify(n, True)
                draft()
        ms: dict[tuple[str, int], list[float]] = {}
        for _ in range(args.repeats):
            for c in rng.permutation(len(CONDITIONS)):
                cond = CONDITIONS[c]
                for j in rng.permutation(len(nodes)):
                    n = nodes[j]
                    if cond == "after-draft":
                        draft()
                    elif cond == "after-sleep":
                        time.sleep(0.02)
                    ms.setdefault((cond, n), []).append(1e3 * verify(n, cond != "b2b"))
    print(f"median verify ms over {args.repeats} repeats, L = {L}, {torch.get_num_threads()} threads")
    print(f"{'condition':>12s} | " + " ".join(f"n={n:<6d}" for n in nodes))
    for cond in CONDITIONS:
        print(f"{cond:>12s} | " + " ".join(f"{np.median(ms[(cond, n)]):<8.1f}" for n in nodes))


if __name__ == "__main__":
    main()
