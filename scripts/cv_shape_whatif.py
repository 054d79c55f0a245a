"""What-if: how much CaDDTree loses to the convex fit of Cv(n; L) when the measured curve is not convex.

On the 2-core dev CPU the profiled verify cost is concave at small n (a 1-token forward is cheap, the first extra
rows cost 5-7 ms each, later ones 1.5-2.5 ms), so the least-squares monotone convex fit (spec 3.4 step 3, required
for the unimodality of theta(n), spec 3.3) overestimates Cv(0..2) and underestimates Cv(4..16). This script replays
the CaDDTree runs of a bench (exact taus at temperature 0, :mod:`dtree.replay`) and scores every budget choice
against a "measured" cost: the profile's raw medians made non-decreasing (no convexity), rescaled by the fit-cost
weights of the same bench (so its level is the live one). Rows:

- ``ddtree:B``: fixed budgets (the oracle is the best of them);
- ``caddtree <fit> greedy`` / ``argmax``: CaDDTree's choice under the cost model ``<fit>`` (``convex``: what dtree
  uses; ``relative``: convex fit of relative instead of absolute errors; ``raw``: the measured curve itself), with
  the greedy stop or the global argmax of theta(n), scored against the measured cost.

Usage: ``.venv/bin/python scripts/cv_shape_whatif.py --store docs/bench/measure.sqlite --tag TAG [--adapt]``
(``--adapt``: node order and Phi(n) from the ``-adapt`` per-round calibrations). Prints a table; needs no model.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from dtree.cost import CostModel, fit_monotone_convex  # noqa: E402
from dtree.replay import (  # noqa: E402
    _caddtree_choice,
    _cost_tables,
    _theta_table,
    live_weights_from_runs,
    prepare,
    run_cost_model,
)
from dtree.store import TraceStore  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--store", required=True)
    ap.add_argument("--tag", required=True, help="bench tag (its caddtree runs are replayed; all runs fit the weights)")
    ap.add_argument("--max-budget", type=int, default=32)
    ap.add_argument("--adapt", action="store_true", help="order nodes by the -adapt per-round calibrations")
    args = ap.parse_args()
    with TraceStore(args.store) as st:
        df = st.list_runs()
        ids = df.loc[df["tag"] == args.tag, "id"].tolist()
        runs = [st.load_run(int(i)) for i in ids]
    runs = [r for r in runs if r.status == "complete"]
    cad = [r for r in runs if r.method == "caddtree"]
    if not cad:
        sys.exit(f"no complete caddtree run under tag {args.tag!r}")
    prof = run_cost_model(cad[0]).with_curve("convex")  # the stored model may read its measured curve (auto-cv)
    w = live_weights_from_runs(runs).weights
    nodes = prof.nodes.astype(np.float64)
    measured = prof.weighted(w).with_curve("measured")
    relative = np.stack([fit_monotone_convex(r, nodes, sigma=r) for r in prof.cv_raw_s])
    fits = {"convex": prof.weighted(w),
            "relative": CostModel(prof.profiled_cd_s, prof.contexts, prof.nodes, prof.cv_raw_s, relative,
                                  dict(prof.meta), w),
            "raw": measured}
    M = args.max_budget
    p = prepare(cad, M, prof, adaptive=args.adapt)
    rows = np.arange(len(p.starts))
    cd_m, cv_m = _cost_tables(p, [measured] * len(p.costs), M)

    def score(n: np.ndarray) -> float:
        return float(p.tau_at[rows, n].sum() / (cd_m + cv_m[rows, n]).sum())

    cap = np.minimum(p.n_avail, M)
    out = [(f"ddtree:{b}", score(np.minimum(b, cap)), float(b)) for b in (1, 2, 4, 8, 16, 32) if b <= M]
    for name, model in fits.items():
        cd, cv = _cost_tables(p, [model] * len(p.costs), M)
        g = _caddtree_choice(p, cd, cv, M, stop="greedy")
        th = _theta_table(p, cd, cv, M)
        th = np.where(np.arange(M + 1)[None, :] <= cap[:, None], th, -np.inf)
        a = th.argmax(axis=1)
        out += [(f"caddtree {name} greedy", score(g), float(g.mean())),
                (f"caddtree {name} argmax", score(a), float(a.mean()))]
    oracle = max(v for k, v, _ in out if k.startswith("ddtree"))
    print(f"tag {args.tag}: {len(cad)} caddtree runs, {len(rows)} rounds; weights cd x{w.cd_scale:.3f} "
          f"cv x{w.cv_scale:.3f}; order {'-adapt' if args.adapt else 'plain'}")
    print(f"profile L={int(prof.contexts[0])}: raw   " + " ".join(f"{v * 1e3:6.1f}" for v in prof.cv_raw_s[0]))
    print(f"{'':>{len(str(int(prof.contexts[0]))) + 10}}fit   " + " ".join(f"{v * 1e3:6.1f}" for v in prof.cv_fit_s[0]))
    print(f"{'choice':28s} {'tok/s (measured cost)':>22s} {'/ oracle':>9s} {'mean n':>7s}")
    for k, v, n in out:
        print(f"{k:28s} {v:22.2f} {v / oracle:9.3f} {n:7.1f}")


if __name__ == "__main__":
    main()
