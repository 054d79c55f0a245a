"""Benchmark: replay sweep speed (goal < 2 s for 1000 rounds x 64 budgets) and a 256-node tree figure (goal < 300 ms).

Usage: ``.venv/bin/python scripts/bench_replay.py [--rounds 1000] [--budgets 64] [--store FILE --run ID]``.
Uses synthetic self-consistent rounds (dtree.replay.synthetic_run) unless a logged run is given. Prints medians of
``--repeats`` timings; the goals are printed next to them, never asserted.
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import argparse
import statistics
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from dtree.cost import CostModel
from dtree.replay import sweep_budgets, synthetic_run


def timed(fn, repeats: int) -> tuple[float, object]:
    times, out = [], None
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times), out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--rounds", type=int, default=1000)
    ap.add_argument("--budgets", type=int, default=64, help="sweep budgets 1..N")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--store", default=None)
    ap.add_argument("--run", type=int, default=None)
    args = ap.parse_args()

    nodes = np.array([0, 1, 2, 4, 8, 16, 32, 64, 128, 256])
    cost = CostModel.from_measurements(0.005, [64, 1024, 4096], nodes,
                                       np.stack([(0.02 + 1e-4 * nodes) * s for s in (1.0, 1.3, 2.0)]))
    if args.store and args.run is not None:
        from dtree.store import TraceStore

        with TraceStore(args.store) as s:
            runs = [s.load_run(args.run)]
        src = f"logged run {args.run} ({len(runs[0].rounds)} rounds)"
    else:
        rng = np.random.default_rng(0)
        t0 = time.perf_counter()
        runs = [synthetic_run(args.rounds, rng, k=max(64, args.budgets), budget=16, cost=cost)]
        src = f"{args.rounds} synthetic rounds (generated in {time.perf_counter() - t0:.2f} s)"

    budgets = range(1, args.budgets + 1)
    t_sweep, df = timed(lambda: sweep_budgets(runs, budgets, cost), args.repeats)
    n_rounds = sum(len(r.rounds) for r in runs)
    print(f"replay sweep: {src} x {len(budgets)} budgets (+ chain + caddtree): {t_sweep:.3f} s median "
          f"(goal < 2 s; {t_sweep / n_rounds * 1e6:.0f} us/round)")
    best = df[df.method == "ddtree"].sort_values("pred_tok_s").iloc[-1]
    print(f"  oracle ddtree budget {int(best.budget)}: tau {best.mean_tau:.2f}, {best.pred_tok_s:.1f} tok/s predicted")

    from dtree.figures import tree_figure

    big = synthetic_run(1, np.random.default_rng(1), k=256, budget=256, cost=cost).rounds[0]

    def decode(t: int) -> str:
        return f"tok{t}"

    t_fig, _ = timed(lambda: tree_figure(big, decode), args.repeats)
    t_json, _ = timed(lambda: tree_figure(big, decode).to_json(), args.repeats)
    print(f"tree_figure: {big.tree.n_nodes}-node tree built in {t_fig * 1e3:.0f} ms median, "
          f"{t_json * 1e3:.0f} ms with to_json (goal < 300 ms)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
