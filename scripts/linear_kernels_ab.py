"""A/B: the per-machine few-row matmul kernels (dtree.kernels) against plain ``F.linear``, side by side.

Two measurements, each interleaved so drift of a shared machine hits both arms alike:

1. ``forward``: one random-tree verify forward of the embedded target (float32, CPU) over ``--context`` cached
   tokens for each width ``T = n + 1`` in ``--widths`` (unpadded), with the kernels off and on, in a random order per
   repeat; median ms per (width, arm). This is also the table the CPU verify padding widths are read from.
2. ``decode``: the first ``--limit`` prompts of ``--dataset`` decoded greedily with ``--methods`` (AR and fixed
   budgets), arm ``off`` (plain F.linear, verifies padded to ``--pad-off``) and arm ``on`` (tuned kernels, padded to
   ``--pad-on``), the arm order alternating per prompt. Reports per method and arm the median tokens/s, the on / off
   ratio of per-prompt medians, whether each arm's outputs equal its own AR's (losslessness) and how many outputs are
   the same in both arms (they may differ where float rounding flips a near-tie of the target itself).

Usage: ``.venv/bin/python scripts/linear_kernels_ab.py [--context 200] [--widths 1,...,17] [--repeats 7]
[--dataset humaneval] [--limit 6] [--methods ar,ddtree:4,ddtree:8] [--max-new-tokens 64] [--pad-off 5,8]
[--pad-on 5,8] [--skip-forward] [--skip-decode] [--out FILE.json]``
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
from dtree.kernels import install_linear_kernels, load_or_tune, remove_linear_kernels  # noqa: E402
from dtree.cost import timed_tree_verify  # noqa: E402


def set_arm(target, table, on: bool, widths: tuple[int, ...]) -> None:
    if on:
        install_linear_kernels(target.model, table)
        target.linear_kernels = f"tuned:{table.fingerprint}"
    else:
        remove_linear_kernels(target.model)
        target.linear_kernels = "off"
    target.verify_widths = widths


def forward_ab(target, table, context: int, widths: list[int], repeats: int) -> dict:
    from transformers import DynamicCache

    model = target.model
    rng = np.random.default_rng(0)
    vocab = int(model.get_input_embeddings().num_embeddings)
    cache = DynamicCache(config=model.config)
    samples: dict[tuple[int, bool], list[float]] = {}
    arms = [(t, on) for t in widths for on in (False, True)]
    with torch.inference_mode():
        model(input_ids=torch.as_tensor(rng.integers(0, vocab, (1, context))), cache=cache, use_cache=True)
        for rep in range(repeats + 1):  # pass 0 warms every shape up, untimed
            for j in rng.permutation(len(arms)):
                t, on = arms[j]
                set_arm(target, table, on, ())
                dt = timed_tree_verify(model, cache, t - 1, context, rng, target.dtype, target.device,
                                       hidden_states=True)
                if rep:
                    samples.setdefault((t, on), []).append(dt)
    rows = []
    for t in widths:
        off, on = (statistics.median(samples[(t, a)]) * 1e3 for a in (False, True))
        rows.append({"width": t, "off_ms": round(off, 2), "on_ms": round(on, 2), "speedup": round(off / on, 3)})
        print(f"width {t:3d}: off {off:7.1f} ms   on {on:7.1f} ms   {off / on:5.2f}x", flush=True)
    return {"context": context, "repeats": repeats, "rows": rows}


def decode_ab(backend, table, prompts, methods, max_new_tokens: int, pad_off, pad_on) -> dict:
    target = backend.target
    tok_s: dict[tuple[str, bool], list[float]] = {}
    texts: dict[tuple[str, bool], list[list[int]]] = {}
    for i, prompt in enumerate(prompts):
        order = (False, True) if i % 2 == 0 else (True, False)
        for on in order:
            set_arm(target, table, on, pad_on if on else pad_off)
            for method, budget in methods:
                key = f"{method}:{budget}" if budget is not None else method
                run = backend.decode(prompt, DecodeConfig(method, budget=budget, max_new_tokens=max_new_tokens,
                                                          seed=i))
                tok_s.setdefault((key, on), []).append(len(run.output_ids) / run.decode_s)
                texts.setdefault((key, on), []).append(list(run.output_ids))
        print(f"prompt {i + 1}/{len(prompts)} done", flush=True)
    out = []
    names = list(dict.fromkeys(k for k, _ in tok_s))
    for name in names:
        off, on = (statistics.median(tok_s[(name, a)]) for a in (False, True))
        ratios = [b / a for a, b in zip(tok_s[(name, False)], tok_s[(name, True)])]
        same = sum(a == b for a, b in zip(texts[(name, False)], texts[(name, True)]))
        lossless = {arm: sum(a == b for a, b in zip(texts[(name, on_)], texts[("ar", on_)]))
                    for arm, on_ in (("off", False), ("on", True))} if ("ar", False) in texts else {}
        out.append({"method": name, "off_tok_s": round(off, 2), "on_tok_s": round(on, 2),
                    "on_over_off": round(on / off, 3), "median_pair_ratio": round(statistics.median(ratios), 3),
                    "same_in_both_arms": f"{same}/{len(ratios)}", "equal_to_own_ar": lossless})
        print(f"{name:12s} off {off:6.2f} tok/s  on {on:6.2f} tok/s  on/off {on / off:5.2f}x  "
              f"(median pair ratio {statistics.median(ratios):.2f})  same output in both arms {same}/{len(ratios)}  "
              f"= own AR {lossless}", flush=True)
    ar = {a: statistics.median(tok_s[("ar", a)]) for a in (False, True)} if ("ar", False) in tok_s else None
    if ar:
        for name in names:
            if name != "ar":
                print(f"{name:12s} vs AR: off {statistics.median(tok_s[(name, False)]) / ar[False]:.2f}x   "
                      f"on {statistics.median(tok_s[(name, True)]) / ar[True]:.2f}x", flush=True)
    return {"methods": out}


def ints(text: str) -> tuple[int, ...]:
    return tuple(int(v) for v in text.split(",") if v.strip()) if text and text != "none" else ()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--context", type=int, default=200)
    ap.add_argument("--widths", default=",".join(str(i) for i in range(1, 18)))
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--dataset", default="humaneval")
    ap.add_argument("--limit", type=int, default=6)
    ap.add_argument("--methods", default="ar,ddtree:4,ddtree:8")
    ap.add_argument("--max-new-tokens", type=int, default=64)
    ap.add_argument("--pad-off", default="5,8", help="verify padding widths of the 'off' arm ('none' for none)")
    ap.add_argument("--pad-on", default="5,8", help="verify padding widths of the 'on' arm ('none' for none)")
    ap.add_argument("--skip-forward", action="store_true")
    ap.add_argument("--skip-decode", action="store_true")
    ap.add_argument("--out", default="")
    args = ap.parse_args()

    backend = Backend("embedded", "float32", "cpu")
    target = backend.target
    table = load_or_tune(target.model, target.name)
    result = {"machine": table.meta.get("machine"), "kernel_table": table.to_json()}
    if not args.skip_forward:
        result["forward"] = forward_ab(target, table, args.context, list(ints(args.widths)), args.repeats)
    if not args.skip_decode:
        prompts = load_prompts(args.dataset, args.limit)
        methods = parse_methods(args.methods)
        result["decode"] = decode_ab(backend, table, prompts, methods, args.max_new_tokens, ints(args.pad_off),
                                     ints(args.pad_on))
        result["decode"].update({"dataset": args.dataset, "limit": args.limit, "max_new_tokens": args.max_new_tokens,
                                 "pad_off": list(ints(args.pad_off)), "pad_on": list(ints(args.pad_on))})
    if args.out:
        Path(args.out).write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
