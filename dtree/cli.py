"""Command line: ``python -m dtree {decode,train-drafter} ...``.

Bad input exits with code 2 and a one-line message naming the field; nothing is written to the trace store then.
"""

from __future__ import annotations

import argparse
import json
import sys

from .errors import InputError


def _add_model_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--target", default="embedded",
                   help="'embedded' (SmolLM2-135M-Instruct, offline), a HF model folder or hub id")
    p.add_argument("--drafter", default=None, help="drafter checkpoint folder (default: the shipped one)")
    p.add_argument("--dtype", default=None, choices=["float32", "bfloat16", "float16"],
                   help="weights dtype (default bfloat16: faster on CPU; use float32 for exact-equality checks)")
    p.add_argument("--device", default=None, help="cpu or cuda (default: cuda when available)")


def _add_decode_args(p: argparse.ArgumentParser) -> None:
    _add_model_args(p)
    p.add_argument("--prompt", required=True, help="user message (the chat template is applied)")
    p.add_argument("--method", default="caddtree", help="ar | chain | ddtree | caddtree (default caddtree)")
    p.add_argument("--budget", type=int, default=None,
                   help="ddtree: node budget B (default 16); caddtree: maximum budget (default 256); 0..1024")
    p.add_argument("--max-new-tokens", type=int, default=128, help="tokens to generate (default 128)")
    p.add_argument("--temperature", type=float, default=0.0, help="0 = greedy (default); > 0 samples losslessly")
    p.add_argument("--seed", type=int, default=0, help="sampling seed (temperature > 0)")
    p.add_argument("--topk-log", type=int, default=32, help="drafter top-k marginals logged per depth (default 32)")
    p.add_argument("--cost-model", default=None, help="cost-model JSON file for caddtree (default: auto-profiled)")
    p.add_argument("--compare-ar", action="store_true", help="also run AR on the same prompt and report the speedup")
    p.add_argument("--json", action="store_true", help="print a JSON summary instead of text")
    p.add_argument("--store", default="runs/dtree.sqlite", help="trace store file (default runs/dtree.sqlite)")
    p.add_argument("--no-store", action="store_true", help="do not log the run")


def _summary(run) -> dict:
    return {"run_id": run.run_id, "method": run.method, "budget": run.params.get("budget"),
            "new_tokens": run.n_new_tokens, "rounds": len(run.rounds), "tokens_per_s": round(run.tokens_per_s, 3),
            "mean_tau": round(run.mean_tau, 3), "mean_budget": round(run.mean_budget, 2),
            "decode_s": round(run.decode_s, 3), "prefill_ms": round(run.prefill_ms, 1),
            "phase_ms": {ph: round(sum(getattr(r, f"{ph}_ms") for r in run.rounds), 1)
                         for ph in ("draft", "build", "verify", "commit")}}


def cmd_decode(args) -> int:
    from tqdm import tqdm

    from .backend import Backend
    from .engine import DecodeConfig

    cfg = DecodeConfig(method=args.method, budget=args.budget, max_new_tokens=args.max_new_tokens,
                       temperature=args.temperature, seed=args.seed, topk_log=args.topk_log)
    backend = Backend(args.target, args.dtype, args.device, args.drafter)
    backend.prepare(args.prompt, cfg)  # reject bad input before anything is profiled or stored
    if args.cost_model:
        backend.cost_model(path=args.cost_model)
    store = None
    if not args.no_store:
        from .store import TraceStore

        store = TraceStore(args.store)

    def run_one(c: DecodeConfig):
        bar = tqdm(total=c.max_new_tokens, desc=c.method, unit="tok", file=sys.stderr, leave=False)

        def on_round(rnd, n_done):
            bar.update(min(n_done, c.max_new_tokens) - bar.n)

        try:
            return backend.decode(args.prompt, c, store=store, on_round=on_round,
                                  cost_progress=lambda d, t: bar.set_postfix_str(f"profiling cost model {d}/{t}"))
        finally:
            bar.close()

    run = run_one(cfg)
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
        print(f"{run.method}: {run.n_new_tokens} tokens in {run.decode_s:.2f} s = {run.tokens_per_s:.2f} tok/s, "
              f"mean tau {run.mean_tau:.2f}, mean budget {run.mean_budget:.1f}, {len(run.rounds)} rounds"
              + (f", run #{run.run_id} in {args.store}" if run.run_id else ""), file=sys.stderr)
        if "ar" in out:
            print(f"ar: {out['ar']['tokens_per_s']:.2f} tok/s; speedup {out['speedup_vs_ar']}x; "
                  f"identical output: {out['identical_to_ar']}", file=sys.stderr)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m dtree", description="dtree: block-diffusion draft trees")
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("decode", help="decode one prompt with ar / chain / ddtree / caddtree and log it")
    _add_decode_args(p)
    p.set_defaults(func=cmd_decode)
    try:
        from . import train
    except ImportError:  # pragma: no cover - train.py is part of the package
        train = None
    if train is not None:
        t = sub.add_parser("train-drafter", help="train a DFlash drafter for a target by self-distillation")
        train.add_arguments(t)
        t.set_defaults(func=train.run)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except InputError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted (the run is kept in the store, marked interrupted)", file=sys.stderr)
        return 130
