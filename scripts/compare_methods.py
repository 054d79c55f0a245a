"""Side-by-side tokens/s and tau of AR, chain, ddtree and caddtree on the first GSM8K test questions.

Methods are interleaved per prompt so machine drift hits all alike. Reproduces the numbers in the README:
    .venv/bin/python scripts/compare_methods.py --limit 5 --max-new-tokens 128 --dtype bfloat16
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from dtree.backend import Backend  # noqa: E402
from dtree.engine import DecodeConfig  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--prompts", default=str(ROOT.parent / "shared" / "datasets" / "gsm8k" / "test.jsonl"))
    ap.add_argument("--limit", type=int, default=5)
    ap.add_argument("--max-new-tokens", type=int, default=128)
    ap.add_argument("--dtype", default="bfloat16")
    ap.add_argument("--device", default=None)
    ap.add_argument("--methods", default="ar,chain,ddtree:16,caddtree")
    ap.add_argument("--store", default=None, help="trace store to log the runs to (default: none)")
    args = ap.parse_args()

    with open(args.prompts) as f:
        prompts = [json.loads(line)["question"] for _, line in zip(range(args.limit), f)]
    backend = Backend("embedded", args.dtype, args.device)
    store = None
    if args.store:
        from dtree.store import TraceStore

        store = TraceStore(args.store)
    methods = [(m.split(":")[0], int(m.split(":")[1]) if ":" in m else None) for m in args.methods.split(",")]
    if any(m == "caddtree" for m, _ in methods):
        backend.cost_model(progress=lambda d, t: print(f"\rprofiling cost model {d}/{t}", end="", file=sys.stderr))
        print(file=sys.stderr)
    stats: dict[str, dict[str, list[float]]] = {}
    for i, prompt in enumerate(prompts):
        ref = None
        for method, budget in methods:
            run = backend.decode(prompt, DecodeConfig(method, budget=budget, max_new_tokens=args.max_new_tokens),
                                 store=store)
            key = method if budget is None else f"{method}:{budget}"
            s = stats.setdefault(key, {"tok_s": [], "tau": [], "budget": [], "same": []})
            s["tok_s"].append(run.tokens_per_s)
            s["tau"].append(run.mean_tau)
            s["budget"].append(run.mean_budget)
            ref = run.output_ids if ref is None else ref
            s["same"].append(float(run.output_ids == ref))
            print(f"prompt {i} {key:12s} {run.tokens_per_s:7.2f} tok/s  tau {run.mean_tau:5.2f}  "
                  f"budget {run.mean_budget:6.1f}  tokens {run.n_new_tokens}", file=sys.stderr)
    base = statistics.median(stats[next(iter(stats))]["tok_s"])
    print(f"{'method':12s} {'tok/s(med)':>10s} {'speedup':>8s} {'tau':>6s} {'budget':>7s} {'same-as-first':>13s}")
    for key, s in stats.items():
        med = statistics.median(s["tok_s"])
        print(f"{key:12s} {med:10.2f} {med / base:8.2f} {statistics.mean(s['tau']):6.2f} "
              f"{statistics.mean(s['budget']):7.1f} {statistics.mean(s['same']):13.2f}")


if __name__ == "__main__":
    main()
