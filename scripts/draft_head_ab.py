"""A/B: the drafter head's measured matmul kernel (``DFlashDrafter.head_kernels``) against plain ``F.linear``.

Two measurements, each interleaved so drift of a shared machine hits both arms alike:

1. ``step``: ``--steps`` steady-state draft steps per arm (:class:`dtree.backend.DraftStepTimer`, the step Cd is
   the median of), the arms alternating step by step; median and minimum ms per arm.
2. ``decode`` (with ``--limit N`` > 0): the first N prompts of ``--dataset`` decoded greedily with ``--methods``, arm
   ``linear`` (head on ``F.linear``) and arm ``tuned`` (the kernel chosen at load), the arm order alternating per
   prompt; per method and arm the median tokens/s and the tuned / linear ratio of the per-prompt medians, and how
   many outputs equal AR's of the same arm (lossless: all of them in float32).

Usage: ``.venv/bin/python scripts/draft_head_ab.py [--dtype float32] [--steps 25] [--dataset gsm8k] [--limit 0]
[--methods ar,ddtree:4] [--max-new-tokens 64] [--out FILE.json]``
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from dtree.backend import Backend, DraftStepTimer  # noqa: E402
from dtree.bench import load_prompts, method_key, parse_methods  # noqa: E402
from dtree.drafter import drafter_head_kernel  # noqa: E402
from dtree.engine import DecodeConfig  # noqa: E402


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--dtype", default="float32")
    ap.add_argument("--steps", type=int, default=25, help="draft steps per arm (default 25)")
    ap.add_argument("--dataset", default="gsm8k")
    ap.add_argument("--limit", type=int, default=0, help="prompts for the decode A/B (default 0: step A/B only)")
    ap.add_argument("--methods", default="ar,ddtree:4")
    ap.add_argument("--max-new-tokens", type=int, default=64)
    ap.add_argument("--out", default=None, help="write the results as JSON")
    args = ap.parse_args(argv)

    backend = Backend(dtype=args.dtype)
    drafter = backend.drafter
    tuned = drafter.head_kernels
    if tuned is None:
        print("no measured head kernel (not on CPU, or DTREE_LINEAR_KERNELS=off): nothing to compare", file=sys.stderr)
        return 1
    arms = {"tuned": tuned, "linear": None}
    out = {"head_kernel": drafter_head_kernel(drafter), "head_timings_ms": tuned.timings_ms, "dtype": args.dtype}

    timer = DraftStepTimer(backend.target, drafter)
    steps = {arm: [] for arm in arms}
    for arm, table in arms.items():  # one untimed warm-up step each
        drafter.head_kernels = table
        timer()
    for _ in range(args.steps):
        for arm, table in arms.items():
            drafter.head_kernels = table
            steps[arm].append(timer() * 1e3)
    drafter.head_kernels = tuned
    out["step_ms"] = {arm: {"median": round(statistics.median(v), 2), "min": round(min(v), 2)}
                      for arm, v in steps.items()}
    print(f"head kernel chosen: {out['head_kernel']} ({tuned.timings_ms})")
    for arm, v in out["step_ms"].items():
        print(f"draft step, head {arm}: median {v['median']:.2f} ms, min {v['min']:.2f} ms ({args.steps} steps)")

    if args.limit > 0:
        methods = parse_methods(args.methods)
        prompts = load_prompts(args.dataset, args.limit)
        tok_s = {(method_key(*m), arm): [] for m in methods for arm in arms}
        lossless = {arm: 0 for arm in arms}
        for i, prompt in enumerate(prompts):
            order = list(arms) if i % 2 == 0 else list(arms)[::-1]
            for arm in order:
                drafter.head_kernels = arms[arm]
                texts = {}
                for name, budget in methods:
                    run = backend.decode(prompt, DecodeConfig(name, budget, args.max_new_tokens))
                    tok_s[(method_key(name, budget), arm)].append(run.tokens_per_s)
                    texts[method_key(name, budget)] = run.output_ids
                ref = next(iter(texts.values()))
                lossless[arm] += all(t == ref for t in texts.values())
            print(f"prompt {i + 1}/{len(prompts)} done", file=sys.stderr)
        drafter.head_kernels = tuned
        rows = []
        for key in (method_key(*m) for m in methods):
            med = {arm: statistics.median(tok_s[(key, arm)]) for arm in arms}
            rows.append({"method": key, **{f"tok_s_{a}": round(v, 3) for a, v in med.items()},
                         "tuned_vs_linear": round(med["tuned"] / med["linear"], 3)})
            print(f"{rows[-1]['method']:10s} tok/s linear {med['linear']:.2f}, tuned {med['tuned']:.2f}: "
                  f"{rows[-1]['tuned_vs_linear']:.3f}x")
        out["decode"] = {"dataset": args.dataset, "limit": args.limit, "max_new_tokens": args.max_new_tokens,
                         "rows": rows, "prompts_all_methods_equal": lossless}
        print(f"prompts whose every method's output equals the first method's: {lossless}")
    if args.out:
        Path(args.out).write_text(json.dumps(out, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
