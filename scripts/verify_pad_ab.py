"""A/B: padding tree verifies to the widths CPU float32 runs fast (2-5 tokens to 5, 6-8 to 8), side by side.

Two measurements, each interleaved (so drift of a shared machine hits both arms alike):

1. ``forward``: one random-tree verify forward of the embedded target over ``--context`` cached tokens for each
   width ``T = n + 1`` in ``--widths``, unpadded and padded to the next of ``--pad-widths`` (dtree's default on CPU
   fp32: 5,8), in a random order per repeat; median ms per (width, arm).
2. ``decode``: the first ``--limit`` prompts of ``--dataset``, each decoded greedily with ``--methods`` (fixed
   budgets, so both arms build the same trees and only the verify width differs) once with
   ``Target.verify_widths = ()`` and once with ``--pad-widths``, the arm order alternating per prompt. Reports
   per arm the median tokens/s, the padded / unpadded ratio of per-prompt medians and whether every output is the
   same in both arms (it must be: padding is exact).

Usage: ``.venv/bin/python scripts/verify_pad_ab.py [--context 200] [--widths 1,2,3,4,5,6,7,8,9] [--repeats 9]
[--pad-widths 5,8] [--dataset humaneval] [--limit 6] [--methods ddtree:1,ddtree:2,ddtree:3,ddtree:5,ddtree:6]
[--max-new-tokens 64] [--out FILE.json]``
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from dtree.backend import Backend  # noqa: E402
from dtree.bench import load_prompts, parse_methods  # noqa: E402
from dtree.engine import DecodeConfig  # noqa: E402
from dtree.cost import timed_tree_verify  # noqa: E402
from dtree.trees import verify_width  # noqa: E402


def forward_ab(target, context: int, widths: list[int], pad: tuple[int, ...], repeats: int) -> dict:
    from transformers import DynamicCache

    model = target.model
    rng = np.random.default_rng(0)
    vocab = int(model.get_input_embeddings().num_embeddings)
    cache = DynamicCache(config=model.config)
    samples: dict[tuple[int, int], list[float]] = {}
    arms = [(t, m) for t in widths for m in ((), pad)]
    with torch.inference_mode():
        model(input_ids=torch.as_tensor(rng.integers(0, vocab, (1, context))), cache=cache, use_cache=True)
        for rep in range(repeats + 1):  # pass 0 warms every shape up, untimed
            for j in rng.permutation(len(arms)):
                t, m = arms[j]
                dt = timed_tree_verify(model, cache, t - 1, context, rng, target.dtype, target.device,
                                       width=verify_width(t, m), hidden_states=True)
                if rep:
                    samples.setdefault((t, m), []).append(dt * 1e3)
    rows = []
    for t in widths:
        plain, padded = statistics.median(samples[(t, ())]), statistics.median(samples[(t, pad)])
        rows.append({"tokens": t, "forward_tokens_padded": verify_width(t, pad), "unpadded_ms": round(plain, 1),
                     "padded_ms": round(padded, 1), "padded_over_unpadded": round(padded / plain, 3)})
    return {"context": context, "repeats": repeats, "rows": rows}


def decode_ab(backend, prompts: list[str], methods, pad: tuple[int, ...], max_new_tokens: int) -> dict:
    target = backend.target
    tps: dict[tuple[str, int], list[float]] = {}
    same = {}
    for i, prompt in enumerate(prompts):
        for name, budget in methods:
            key = f"{name}:{budget}" if budget is not None else name
            outs = {}
            for m in (((), pad) if i % 2 == 0 else (pad, ())):
                target.verify_widths = m
                run = backend.decode(prompt, DecodeConfig(name, budget=budget, max_new_tokens=max_new_tokens,
                                                          seed=i))
                tps.setdefault((key, m), []).append(len(run.output_ids) / run.decode_s)
                outs[m] = run.output_ids
            same[key] = same.get(key, True) and outs[()] == outs[pad]
            print(f"prompt {i + 1}/{len(prompts)} {key}: unpadded {tps[(key, ())][-1]:.2f} tok/s, "
                  f"padded {tps[(key, pad)][-1]:.2f} tok/s", flush=True)
    rows = []
    for key in same:
        plain, padded = statistics.median(tps[(key, ())]), statistics.median(tps[(key, pad)])
        rows.append({"method": key, "unpadded_tok_s": round(plain, 2), "padded_tok_s": round(padded, 2),
                     "padded_over_unpadded": round(padded / plain, 3), "outputs_identical": same[key]})
    return {"prompts": len(prompts), "max_new_tokens": max_new_tokens, "rows": rows}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--context", type=int, default=200, help="cached tokens before each timed forward (default 200)")
    ap.add_argument("--widths", default="1,2,3,4,5,6,7,8,9",
                    help="forward widths (tokens = nodes + 1) timed in part 1 (default 1,...,9)")
    ap.add_argument("--repeats", type=int, default=9, help="timed passes over the widths in part 1 (default 9)")
    ap.add_argument("--pad-widths", default="5,8",
                    help="the padded arm pads to the next of these widths (default 5,8, dtree's CPU fp32 default)")
    ap.add_argument("--dataset", default="humaneval", help="prompt set of part 2, as for bench (default humaneval)")
    ap.add_argument("--limit", type=int, default=6, help="prompts decoded in part 2; 0 skips it (default 6)")
    ap.add_argument("--methods", default="ddtree:1,ddtree:2,ddtree:3,ddtree:5,ddtree:6",
                    help="fixed-budget methods decoded in both arms in part 2")
    ap.add_argument("--max-new-tokens", type=int, default=64, help="new tokens per decode in part 2 (default 64)")
    ap.add_argument("--out", default=None, help="also write the results as JSON to this file")
    args = ap.parse_args()
    pad = tuple(sorted(int(v) for v in args.pad_widths.split(",")))
    backend = Backend("embedded", "float32", "cpu")
    result = {"forward": forward_ab(backend.target, args.context, [int(v) for v in args.widths.split(",")],
                                    pad, args.repeats)}
    print("forward (ms, median):")
    for r in result["forward"]["rows"]:
        print(f"  {r['tokens']} tokens: unpadded {r['unpadded_ms']:6.1f}  padded to {r['forward_tokens_padded']}: "
              f"{r['padded_ms']:6.1f}  ratio {r['padded_over_unpadded']:.3f}")
    methods = parse_methods(args.methods)
    if args.limit > 0 and methods:
        prompts = load_prompts(args.dataset, args.limit)
        result["decode"] = decode_ab(backend, prompts, methods, pad, args.max_new_tokens)
        print("decode (tokens/s, median over prompts):")
        for r in result["decode"]["rows"]:
            print(f"  {r['method']}: unpadded {r['unpadded_tok_s']:.2f}  padded {r['padded_tok_s']:.2f}  "
                  f"ratio {r['padded_over_unpadded']:.3f}  outputs identical: {r['outputs_identical']}")
    if args.out:
        Path(args.out).write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
