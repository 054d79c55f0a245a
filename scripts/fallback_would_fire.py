"""How often the -fallback rule would have fired in logged caddtree runs, and the acceptance of those rounds.

For every drafted round of the selected runs: did its tree promise less than a plain target step
(theta(n*) < 1 / Cv(0; L) under the run's stored cost model, dtree.engine.fallback_decision's test)? Prints, per
method and prompt set, the rounds checked, the share that would have fallen back and their mean logged tau.

Usage: .venv/bin/python scripts/fallback_would_fire.py [--store docs/bench/measure.sqlite] [--sets TAG1,TAG2]
(each of --sets is a substring of the bench tags, e.g. a whole tag ``bench:20261130T080933.273083Z:humaneval``)
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from dtree.cost import CostModel
from dtree.store import TraceStore


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--store", default="docs/bench/measure.sqlite")
    ap.add_argument("--sets", default="humaneval,gsm8k", help="substrings of the bench tags (default humaneval,gsm8k)")
    ap.add_argument("--methods", default="caddtree,caddtree-adapt-rawcv")
    a = ap.parse_args()
    if not Path(a.store).is_file():
        sys.exit(f"error: store: no trace store at {a.store!r} (benches write one with --store)")
    with TraceStore(a.store) as st:
        runs = st.list_runs()
        for tag in a.sets.split(","):
            for method in a.methods.split(","):
                sel = runs[(runs.method == method) & runs.tag.fillna("").str.contains(tag, regex=False)]
                checked, taus = 0, []
                for rid in sel.id:
                    run = st.load_run(int(rid))
                    cm = CostModel.from_dict(run.cost_model)
                    for r in run.rounds:
                        n = r.tree.n_nodes
                        if not r.drafted or len(r.tree.theta_curve) <= n:
                            continue
                        checked += 1
                        if r.tree.theta_curve[n] < 1.0 / float(cm.cv(0, r.start)):
                            taus.append(r.tau)
                share = len(taus) / checked if checked else float("nan")
                print(f"{tag} {method:22s} runs {len(sel):3d}  rounds {checked:5d}  would fall back "
                      f"{len(taus):5d} ({share:.1%})  mean tau there {np.mean(taus) if taus else float('nan'):.2f}")


if __name__ == "__main__":
    main()
