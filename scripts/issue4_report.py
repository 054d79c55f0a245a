"""Issue 4's figures for ONE bench (every run sharing a bench tag in a trace store), as markdown and JSON.

Usage::

    .venv/bin/python scripts/issue4_report.py --store runs/dtree.sqlite --latest [--out report.json]
    .venv/bin/python scripts/issue4_report.py --store runs/dtree.sqlite --tag 'bench:...:gsm8k' --out report.json

Sections (no model is loaded; everything comes from the stored runs):

(a) per method: live tokens/s (median over prompts, as ``dtree.bench.summary_rows``), mean tau, mean budget and
    build share of round time;
(b) the oracle fixed budget: the ``ddtree:B`` row with the highest live tokens/s (B in 4, 8, 16, 32, 64, 128, among
    those benched; ``--oracle-budgets all``: any B benched, e.g. issue 3's ddtree:3), and caddtree (and its variants)
    over the oracle and over ``ddtree:64``;
(c) replay vs live: every speculative run replayed under its own method, budget, stored cost model and stored
    calibration (``dtree.replay.replay_vs_live``); per method the median relative error of the predicted tokens/s
    (Cd + Cv per round, as the paper's model) against the measured one, the pooled ratio sum(pred tokens) / sum(pred
    time) over sum(live tokens) / sum(live time), how many methods fall within 15%, and the share of replayed
    rounds whose tau equals the logged tau (100% expected at temperature 0 within the logged top-k);
(d) unimodality of theta(n) (spec 3.3) over every caddtree run of the bench (``dtree.replay.check_unimodal``).

Benches come from ``python -m dtree bench`` or the Speedup arena (runs tagged ``bench:<time>:<set>``). Bad input
(missing store, unknown tag, a bench without speculative runs) exits with code 2 and a one-line message.
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import argparse
import json
import math
import re
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from dtree.errors import InputError

TOL = 0.15


def resolve_tag(store, tag: str | None, latest: bool) -> str:
    """The bench tag to report: ``tag`` if the store has it, else the newest bench with ``latest``."""
    from dtree.bench import list_benches

    benches = list_benches(store)
    if benches.empty:
        raise InputError("tag", "this store holds no bench (runs tagged bench:...): run python -m dtree bench first")
    if latest:
        return str(benches["tag"].iloc[0])
    if tag not in set(benches["tag"]):
        known = ", ".join(map(repr, benches["tag"].head(5)))
        raise InputError("tag", f"no bench tagged {tag!r} in this store; newest: {known}")
    return tag


def build_report(store, tag: str, tol: float = TOL, oracle_budgets: str = "issue4") -> dict:
    """Every figure of the report as a JSON-ready dict (see the module docstring). ``oracle_budgets``: ``"issue4"``
    (the oracle is picked among B in 4..128, powers of two) or ``"all"`` (among every plain ddtree:B benched)."""
    from dtree.bench import (
        ORACLE_BUDGETS,
        bench_runs,
        oracle_comparison,
        paired_ratio,
        ratio_with_interval,
        stats_from_runs,
        stored_method_key,
        summary_rows,
    )
    from dtree.records import parse_method
    from dtree.replay import prompt_key, replay_vs_live, replay_vs_live_crossfit, unimodal_summary

    runs = bench_runs(store, tag)

    def base(run):
        try:
            return parse_method(run.method).base
        except InputError:
            return None

    spec = [r for r in runs if base(r) in ("chain", "ddtree", "caddtree") and r.rounds]
    if not spec:
        raise InputError("tag", f"bench {tag!r} has no complete speculative run (chain / ddtree / caddtree) to "
                                "replay: bench at least one of them")
    stats = stats_from_runs(runs)
    rows = summary_rows(stats)
    methods = [{k: r[k] for k in ("method", "tok_s", "speedup_vs_ar", "speedup_paired", "mean_tau", "mean_budget", "build_share_%",
                                  "build_ms_per_round", "mismatches", "reference")} for r in rows]
    if oracle_budgets not in ("issue4", "all"):
        raise InputError("oracle-budgets", f"must be 'issue4' or 'all', got {oracle_budgets!r}")
    oracle = oracle_comparison(rows, ORACLE_BUDGETS if oracle_budgets == "issue4" else None)
    for r in oracle["ratios"]:  # 90% paired-bootstrap intervals over prompts (the oracle's method held fixed)
        _, r["vs_oracle_ci90"] = ratio_with_interval(stats, r["method"], (oracle["oracle"] or {}).get("method"))
        best = (oracle["oracle"] or {}).get("method")  # median over prompts of each prompt's own ratio
        r["vs_oracle_paired"] = (None if best not in stats or r["method"] not in stats else
                                 (lambda v: None if v is None else round(v, 3))(paired_ratio(stats[r["method"]],
                                                                                             stats[best])))
        _, r["vs_reference_ci90"] = ratio_with_interval(stats, r["method"], oracle["reference"]["method"])
        if r["method"] != "caddtree":  # variants against plain CaDDTree (the "+5%" figure)
            r["vs_caddtree"], r["vs_caddtree_ci90"] = ratio_with_interval(stats, r["method"], "caddtree")
    key = lambda run: stored_method_key(run.method, run.params)  # noqa: E731
    per_run, per_method = replay_vs_live(spec, key=key, fallback_cost=_fallback_cost(spec), tol=tol)
    cross = None
    if len({prompt_key(r) for r in spec}) >= 2:
        c_run, c_method, fits = replay_vs_live_crossfit(spec, key=key, fallback_cost=_fallback_cost(spec), tol=tol)
        cross = {"tol": tol, "n_within": c_method.attrs["n_within"], "n_methods": c_method.attrs["n_methods"],
                 "fits": fits, "per_method": _records(c_method), "per_run": _records(c_run)}
    unimodal = unimodal_summary(spec)
    first = runs[0]
    return {
        "tag": tag,
        "bench": {"n_runs": len(runs), "n_prompts": len({int(r.params.get("seed", 0)) for r in runs}),
                  "max_new_tokens": first.params.get("max_new_tokens"), "temperature": first.params.get("temperature"),
                  "dtype": first.dtype, "device": first.device, "target": first.target,
                  "drafter": next((r.drafter for r in spec if r.drafter), None),
                  "topk_log": sorted({int(r.params.get("topk_log", 0)) for r in spec})},
        "methods": methods,
        "oracle": oracle,
        "replay_vs_live": {"tol": tol, "n_within": per_method.attrs["n_within"],
                           "n_methods": per_method.attrs["n_methods"],
                           "tau_match_share": per_method.attrs["tau_match_share"],
                           "n_rounds": per_method.attrs["n_rounds"],
                           "per_method": _records(per_method), "per_run": _records(per_run)},
        "replay_vs_live_crossfit": cross,
        "unimodal": unimodal,
    }


def _fallback_cost(runs):
    """The first stored cost model of the bench, for runs that stored none (ddtree / chain benched without caddtree
    and without a loaded cost model); None when no run stored one."""
    from dtree.cost import CostModel

    stored = next((r.cost_model for r in runs if r.cost_model), None)
    return CostModel.from_dict(stored) if stored else None


def _clean(v):
    if hasattr(v, "item"):
        v = v.item()
    if isinstance(v, float) and not math.isfinite(v):
        return None
    return v


def jsonable(obj):
    """``obj`` with numpy scalars as Python ones and NaN / inf as None, recursively (strict JSON)."""
    if isinstance(obj, dict):
        return {str(k): jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [jsonable(v) for v in obj]
    return _clean(obj)


def _records(df) -> list[dict]:
    return [{k: _clean(v) for k, v in row.items()} for row in df.to_dict(orient="records")]


def _f(v, fmt="{:.2f}", none="–") -> str:
    return none if v is None or (isinstance(v, float) and not math.isfinite(v)) else fmt.format(v)


def _pct(v) -> str:
    return _f(None if v is None else 100 * v, "{:.1f}%")


def _table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    return "\n".join(lines + ["| " + " | ".join(r) + " |" for r in rows])


def markdown(rep: dict) -> str:
    b = rep["bench"]
    out = [f"# Issue 4 report: `{rep['tag']}`", "",
           (f"{b['n_runs']} runs, {b['n_prompts']} prompts, max_new_tokens {b['max_new_tokens']}, temperature "
            f"{b['temperature']}, {b['target']} {b['dtype']} on {b['device']}, drafter {b['drafter']}, logged top-k "
            f"{', '.join(map(str, b['topk_log']))}"), "",
           "## (a) Live results per method", "",
           _table(["method", "tok/s (median)", "speedup vs AR", "paired", "mean tau", "mean budget", "build share",
                   "build ms/round", f"outputs ≠ {rep['methods'][0]['reference'] or 'reference'}'s"],
                  [[m["method"], _f(m["tok_s"]), _f(m["speedup_vs_ar"], "{:.3f}"), _f(m.get("speedup_paired"), "{:.3f}"),
                    _f(m["mean_tau"], "{:.3f}"),
                    _f(m["mean_budget"]), _f(m["build_share_%"], "{:.1f}%"), _f(m["build_ms_per_round"], "{:.3f}"),
                    str(m["mismatches"])] for m in rep["methods"]]), "",
           "## (b) Oracle fixed budget", ""]
    o = rep["oracle"]
    ref = o["reference"]
    if o["oracle"]:
        out.append(f"Oracle: **{o['oracle']['method']}** at {_f(o['oracle']['tok_s'])} tok/s (best live tokens/s "
                   f"among {', '.join(o['candidates'])}).")
    else:
        out.append("Oracle: none (no ddtree:B with B in 4, 8, 16, 32, 64, 128 in this bench).")
    out.append("")
    if o["ratios"]:
        def ci(v):
            return "–" if not v else f"{v[0]:.3f}–{v[1]:.3f}"

        out.append(_table(["method", "tok/s", "/ oracle", "90% CI", "/ oracle, paired", f"/ {ref['method']}", "90% CI", "/ caddtree",
                           "90% CI"],
                          [[r["method"], _f(r["tok_s"]), _f(r["vs_oracle"], "{:.3f}"), ci(r.get("vs_oracle_ci90")),
                            _f(r.get("vs_oracle_paired"), "{:.3f}"),
                            _f(r["vs_reference"], "{:.3f}"), ci(r.get("vs_reference_ci90")),
                            _f(r.get("vs_caddtree"), "{:.3f}"), ci(r.get("vs_caddtree_ci90"))] for r in o["ratios"]]))
        out.append("\n(90% CI: paired bootstrap over prompts of the ratio of median tokens/s, the oracle's budget "
                   "held fixed. Paired: the median over prompts of each prompt's own tokens/s ratio; the ratio of "
                   "medians (\"speedup vs AR\", \"/ oracle\") is the issues' definition.)")
        if ref["tok_s"] is None:
            out.append(f"\n({ref['method']} not in this bench.)")
    else:
        out.append("No caddtree run in this bench.")
    rv = rep["replay_vs_live"]
    out += ["", "## (c) Replay vs live (each run under its own method, budget, stored cost model and calibration)", "",
            _table(["method", "runs", "rounds", "live tok/s", "pred tok/s", "median rel. err", "pooled live",
                    "pooled pred", "pooled ratio", "pooled pred + build/commit", "within 15%", "tau match", "exact"],
                   [[m["method"], f"{m['n_replayed']}/{m['n_runs']}", str(m["n_rounds"]), _f(m["live_tok_s"]),
                     _f(m["pred_tok_s"]), _pct(m["median_rel_err"]), _f(m["pooled_live_tok_s"]),
                     _f(m["pooled_pred_tok_s"]), _f(m["pooled_ratio"], "{:.3f}"),
                     _f(m["pooled_pred_tok_s_overhead"]), "yes" if m["within_tol"] else "no",
                     _pct(m["tau_match_share"]), "yes" if m["exact"] else "no"] for m in rv["per_method"]]), "",
            (f"**{rv['n_within']} of {rv['n_methods']} methods** within {100 * rv['tol']:.0f}% (median relative "
             "error of predicted vs measured tokens/s). Replayed tau equals the logged tau in "
             f"**{_pct(rv['tau_match_share'])}** of {rv['n_rounds']} rounds (sanity check: 100% expected at "
             "temperature 0 within the logged top-k).")]
    errs = [r for r in rv["per_run"] if r["error"]]
    for r in errs:
        out.append(f"\n- run {r['run_id']} ({r['method']}) not replayed: {r['error']}")
    fb = sorted({r["method"] for r in rv["per_run"] if r["cost_source"] == "fallback"})
    if fb:
        out.append(f"\n- no stored cost model, timed with the bench's first stored one: {', '.join(fb)}")
    notes: dict[str, dict[str, list[int]]] = {}  # method -> note with its leading count as {n} -> counts per run
    for r in rv["per_run"]:
        for n in r.get("notes") or []:
            m = re.match(r"(\d+) (.*)", n)
            text, count = (m.group(2), int(m.group(1))) if m else (n, None)
            notes.setdefault(r["method"], {}).setdefault(text, []).append(count)
    for method, ns in notes.items():
        for text, counts in list(ns.items())[:5]:
            if counts[0] is None:
                out.append(f"\n- {method}: {text}")
            else:  # e.g. "55 logged plain target steps ..." from each run: one line with the total
                out.append(f"\n- {method}: {sum(counts)} (over {len(counts)} runs) {text}")
    out.append("\nPredicted time is Cd + Cv(n; L) per round (the paper's model: no drafting-loop, build or commit "
               "overhead); the 'pooled pred + build/commit' column adds the logged build and commit time. Predicted "
               "tokens are the replayed taus (not trimmed to max_new_tokens).")
    cf = rep.get("replay_vs_live_crossfit")
    out += ["", "## (c2) Replay vs live with cost weights fitted to logged timings (2-fold by prompt)", ""]
    if cf:
        out.append(_table(["method", "runs", "live tok/s", "pred tok/s", "median rel. err", "pooled ratio",
                           "within 15%"],
                          [[m["method"], f"{m['n_replayed']}/{m['n_runs']}", _f(m["live_tok_s"]), _f(m["pred_tok_s"]),
                            _pct(m["median_rel_err"]), _f(m["pooled_ratio"], "{:.3f}"),
                            "yes" if m["within_tol"] else "no"] for m in cf["per_method"]]))
        def _tree(w):
            t = w.get("cv_tree_scale")
            return "" if t is None else f", cv_tree_scale {t:.3f}"

        fits = "; ".join(f"fold {f['fold']}: cd_scale {f['weights']['cd_scale']:.3f}, cv_scale "
                         f"{f['weights']['cv_scale']:.3f}{_tree(f['weights'])} ({f['n_rounds']} rounds of "
                         f"{f['n_prompts_fit']} prompts)" for f in cf["fits"])
        out += ["", f"**{cf['n_within']} of {cf['n_methods']} methods** within {100 * cf['tol']:.0f}%. The profile's "
                "curves are kept and rescaled (`python -m dtree fit-cost`, `dtree.cost.fit_live_weights`): cd_scale "
                "charges the logged draft + build + commit time to Cd; the verify time is fitted as cv_scale x the "
                "profiled root-only forward Cv(0; L) + cv_tree_scale x what the tree adds, Cv(n; L) - Cv(0; L) "
                "(non-negative least squares on relative residuals; one ratio-of-sums cv_scale when the rounds have "
                "a single tree size), on the other half of the prompts, so no run's own timings enter its "
                "prediction. Times are read from the profile's measured Cv medians, not its convex fit (the trees "
                f"are still the logged ones). Fits: {fits}."]
    else:
        out.append("Fewer than 2 prompts: no cross-fit.")
    u = rep["unimodal"]
    out += ["", "## (d) Unimodality of theta(n) over the bench's caddtree runs", ""]
    if u["groups"]:
        out.append(_table(["method", "max budget (checked up to)", "runs", "rounds", "Cv curve", "unimodal",
                           "greedy at argmax", "Cv convex"],
                          [[g["method"], f"{g['max_budget']} ({g['checked_up_to']})", str(g["n_runs"]),
                            str(g["n_rounds"]), "measured" if g.get("measured_cv") else "convex fit",
                            _pct(g["share_unimodal"]), _pct(g["share_greedy_argmax"]),
                            _pct(g["share_cv_convex"])] for g in u["groups"]]))
        if u["n_rounds"]:
            out.append(f"\nAll caddtree rounds under the fitted (convex) cost model: **{_pct(u['share_unimodal'])} "
                       f"unimodal** ({u['n_rounds']} rounds; runs that read the measured curve, -rawcv or caddtree "
                       "whose profile the convex fit missed, are listed above but not pooled).")
        else:
            out.append("\nNo caddtree round used the convex fit here (every run read the measured Cv curve, which need "
                       "not make theta(n) unimodal; the table above gives the share that was).")
    else:
        out.append("No caddtree run in this bench.")
    out += [f"\n- not checked: {e}" for e in u["errors"]]
    return "\n".join(out) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="Issue 4's figures for one bench of a trace store (markdown + JSON).")
    ap.add_argument("--store", required=True, help="trace store file (e.g. runs/dtree.sqlite)")
    which = ap.add_mutually_exclusive_group(required=True)
    which.add_argument("--tag", help="bench tag (bench:<time>:<set>, as the Speedup arena lists it)")
    which.add_argument("--latest", action="store_true", help="the newest bench in the store")
    ap.add_argument("--out", default=None, help="also write the report as JSON to this file")
    ap.add_argument("--oracle-budgets", choices=("issue4", "all"), default="issue4",
                    help="fixed budgets the oracle is picked from: issue4 = B in 4, 8, ..., 128 (default); "
                         "all = every plain ddtree:B of the bench")
    args = ap.parse_args(argv)
    try:
        if not Path(args.store).is_file():
            raise InputError("store", f"no trace store at {args.store!r}")
        if args.out and Path(args.out).suffix != ".json":
            raise InputError("out", f"must end in .json, got {args.out!r}")
        from dtree.store import TraceStore

        with TraceStore(args.store) as store:
            tag = resolve_tag(store, args.tag, args.latest)
            rep = build_report(store, tag, oracle_budgets=args.oracle_budgets)
    except InputError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(markdown(rep))
    if args.out:
        out = Path(args.out)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(jsonable(rep), indent=2, allow_nan=False))
        print(f"report written to {out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
