"""What the drafter's shape costs: draft cost Cd and training step time per shape, and what block size 8 would lose.

Three of issue 3's recipe ideas are questions of cost as much as of quality; this script measures the cost side on
this machine, side by side in one process (shapes interleaved per repeat, so drift hits all alike):

1. serving: one draft round (``DFlashDrafter.draft_marginals``: fuse the new context rows, run the layers over the
   block, the head over the draft vocabulary, top-k) for drafters of 1, 2 and 3 layers, block size 8 and 16, and a
   draft-vocabulary head vs the full 49,152-row ``lm_head``; weights are random (the cost does not depend on them);
2. training: one optimisation step (``drafter_hidden`` + ``decayed_ce`` forward and backward, AdamW) on a synthetic
   batch shaped like ``dtree.train``'s (8 sequences x ``--seq-len`` tokens x 16 anchors), same shapes;
3. from logged chain runs in a trace store (optional ``--store``): the acceptance length tau each round would have
   had if the drafter proposed only 7 tokens (block size 8): ``min(tau, 8)``, an upper bound for a block-8 drafter
   with the same per-depth agreement.

Usage: .venv/bin/python scripts/drafter_shape_costs.py [--repeats 30] [--threads 1] [--store docs/bench/measure.sqlite
       --tags TAG1,TAG2] [--out FILE.json]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

SHAPES = [  # (name, drafter layers, block size, draft-vocabulary head?); ratios are printed against the first
    ("2 layers, bs 16, draft vocab (v1-v7)", 2, 16, True),
    ("1 layer, bs 16, draft vocab", 1, 16, True),
    ("3 layers, bs 16, draft vocab", 3, 16, True),
    ("2 layers, bs 8, draft vocab (v8)", 2, 8, True),
    ("2 layers, bs 16, full vocab", 2, 16, False),
]


def build(shape, shipped):
    """A random-init float32 drafter of ``shape`` with the shipped drafter's config and draft vocabulary otherwise."""
    from dtree.drafter import DFlashDrafter, DrafterConfig

    _, layers, bs, sub = shape
    cfg = DrafterConfig.from_dict({**shipped.config.to_dict(), "num_hidden_layers": layers, "block_size": bs})
    d = DFlashDrafter(cfg, shipped.draft_vocab if sub else None)
    return d.float().eval()


def serve_costs(target, drafters, repeats, ctx_len, new_rows):
    """Median ms of one draft round per drafter: cache holding ``ctx_len`` rows, ``new_rows`` new feature rows."""
    import torch

    model = target.model
    k_h = drafters[0].fc.weight.shape[1]
    g = torch.Generator().manual_seed(0)
    ctx = torch.randn(1, ctx_len + new_rows, k_h, generator=g)
    caches = []
    for d in drafters:  # fill each cache with ctx_len context rows once
        c = d.new_cache()
        d.draft_marginals(model, c, ctx[:, :ctx_len], 7, ctx_len, 8)
        caches.append(c)
    times = [[] for _ in drafters]
    for r in range(repeats + 3):
        for i, (d, c) in enumerate(zip(drafters, caches)):
            c.crop(ctx_len)
            t0 = time.perf_counter()
            d.draft_marginals(model, c, ctx[:, ctx_len:], 7, ctx_len + new_rows, 8)
            if r >= 3:  # warm-up repeats dropped
                times[i].append((time.perf_counter() - t0) * 1e3)
    return [statistics.median(t) for t in times]


def train_costs(target, drafters, repeats, seq_len):
    """Median seconds of one training step (:func:`dtree.train.train_step`, clipping at 1.0 as the default) per
    drafter on a synthetic batch (8 x seq_len, 16 anchors)."""
    import torch

    from dtree.train import TrainConfig, drafter_lookup, to_draft_ids, train_step

    model = target.model
    g = torch.Generator().manual_seed(0)
    V = model.get_output_embeddings().weight.shape[0]
    B, N = 8, 16
    k_h = drafters[0].fc.weight.shape[1]
    feats = torch.randn(B, seq_len, k_h, generator=g)
    vocab = drafters[0].draft_vocab
    tokens = vocab[torch.randint(len(vocab), (B, seq_len + 1), generator=g)] if vocab is not None \
        else torch.randint(V, (B, seq_len + 1), generator=g)
    anchors = torch.randint(seq_len // 2, seq_len - 2, (B, N), generator=g)
    setups = []
    for d in drafters:
        d.train()
        bs = d.block_size
        lab_pos = (anchors[:, :, None] + torch.arange(1, bs)).clamp(max=seq_len)
        labels = torch.gather(tokens, 1, lab_pos.view(B, -1)).view(B, N, bs - 1)
        setups.append((d, to_draft_ids(labels, drafter_lookup(d, model)),
                       torch.optim.AdamW(d.parameters(), lr=1e-5, betas=(0.9, 0.95), weight_decay=0.01)))
    times = [[] for _ in drafters]
    for r in range(repeats + 1):
        for i, (d, labels_d, opt) in enumerate(setups):
            t0 = time.perf_counter()
            train_step(d, model, opt, feats, tokens, anchors, labels_d, 7.0 if d.block_size == 16 else 4.0,
                       TrainConfig.grad_clip)
            if r >= 1:
                times[i].append(time.perf_counter() - t0)
    for d in drafters:
        d.eval()
    return [statistics.median(t) for t in times]


BS16_DRAFTS = 15  # positions a block-16 drafter proposes per round (gamma = block size - 1)


def bs8_from_store(path: str, tags: list[str]) -> list[dict]:
    """Per tag: mean tau of its logged chain rounds, and with every round capped at 8 (7 drafts + bonus).

    Raises:
        SystemExit: a tag with no chain rounds, or whose rounds did not draft 15 positions (a block-8 drafter's
            runs, e.g. v8's: capping them at 8 would change nothing and their tau is not a block-16 tau).
    """
    from dtree.store import TraceStore

    out = []
    with TraceStore(path) as st:
        runs = st.list_runs()
        for tag in tags:
            sel = runs[(runs.method == "chain") & runs.tag.fillna("").str.contains(tag, regex=False)]
            rounds = [r for rid in sel.id for r in st.load_run(int(rid)).rounds if r.drafted]
            if not rounds:
                raise SystemExit(f"error: --tags: no chain rounds in bench tags containing {tag!r}")
            depths = sorted({int(r.marg_tokens.shape[0]) for r in rounds})
            if depths != [BS16_DRAFTS]:
                # min(tau, 8) only says what block size 8 would lose when the logged rounds could accept 15 drafts
                raise SystemExit(f"error: --tags: the chain rounds of {tag!r} drafted {depths} positions, not "
                                 f"{BS16_DRAFTS}: only runs of a block-16 drafter can be capped to block size 8")
            taus = [r.tau for r in rounds]
            capped = [min(t, 8) for t in taus]
            out.append({"tag": tag, "runs": int(len(sel)), "rounds": len(taus),
                        "tau_bs16": statistics.fmean(taus), "tau_capped_bs8": statistics.fmean(capped),
                        "rounds_over_8": sum(t > 8 for t in taus) / len(taus)})
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=30, help="timed repeats per shape (default 30)")
    ap.add_argument("--train-repeats", type=int, default=6, help="timed training steps per shape (default 6)")
    ap.add_argument("--threads", type=int, default=1, help="torch threads (training ran on 1; default 1)")
    ap.add_argument("--ctx-len", type=int, default=200, help="context rows already in the drafter cache (default 200)")
    ap.add_argument("--new-rows", type=int, default=3, help="new context rows per round (~ tau; default 3)")
    ap.add_argument("--seq-len", type=int, default=300, help="tokens per training sequence (default 300)")
    ap.add_argument("--store", default="", help="trace store with chain runs for the block-size-8 cap (optional)")
    ap.add_argument("--tags", default="", help="comma list of substrings of bench tags (with --store)")
    ap.add_argument("--out", default="", help="write the results as JSON here")
    a = ap.parse_args()
    for name in ("repeats", "train_repeats", "threads", "ctx_len", "new_rows", "seq_len"):
        if getattr(a, name) <= 0:
            sys.exit(f"error: --{name.replace('_', '-')}: must be > 0, got {getattr(a, name)}")
    if a.seq_len < 5:
        sys.exit(f"error: --seq-len: must be >= 5 (anchors lie in its second half), got {a.seq_len}")
    if a.store and not Path(a.store).is_file():
        sys.exit(f"error: --store: no trace store at {a.store!r}")
    if a.store and not a.tags:
        sys.exit("error: --tags: give the bench tags to read chain runs from (with --store)")
    if a.tags and not a.store:
        sys.exit("error: --tags: needs --store (the trace store holding those benches)")
    if a.out and not Path(a.out).resolve().parent.is_dir():
        sys.exit(f"error: --out: folder {str(Path(a.out).resolve().parent)!r} does not exist")
    bs8 = bs8_from_store(a.store, a.tags.split(",")) if a.store else None  # bad tags fail before the timing

    import torch

    from dtree.drafter import default_drafter_path, load_drafter
    from dtree.models import load_target

    torch.set_num_threads(a.threads)
    target = load_target(dtype="float32")
    shipped = load_drafter(default_drafter_path(), target, dtype=torch.float32)
    with torch.no_grad():
        drafters = [build(s, shipped) for s in SHAPES]
        serve = serve_costs(target, drafters, a.repeats, a.ctx_len, a.new_rows)
    train = train_costs(target, drafters, a.train_repeats, a.seq_len)
    rows = []
    print(f"threads {a.threads}; draft round: cache {a.ctx_len} rows + {a.new_rows} new; training step: 8 x "
          f"{a.seq_len} tokens, 16 anchors")
    print(f"{'shape':42s} {'params':>8s} {'Cd ms':>7s} {'vs row 1':>10s} {'train s/step':>12s} {'vs row 1':>10s}")
    for s, d, cd, ts in zip(SHAPES, drafters, serve, train):
        n = sum(p.numel() for p in d.parameters())
        rows.append({"shape": s[0], "layers": s[1], "block_size": s[2], "draft_vocab": s[3], "params": n,
                     "cd_ms": cd, "train_s_per_step": ts})
        print(f"{s[0]:42s} {n / 1e6:7.2f}M {cd:7.2f} {cd / serve[0]:9.2f}x {ts:12.2f} {ts / train[0]:9.2f}x")
    result = {"threads": a.threads, "ctx_len": a.ctx_len, "new_rows": a.new_rows, "seq_len": a.seq_len,
              "repeats": a.repeats, "shapes": rows}
    if bs8 is not None:
        result["bs8_cap"] = bs8
        for r in result["bs8_cap"]:
            print(f"chain rounds in {r['tag']!r}: {r['rounds']} rounds, tau {r['tau_bs16']:.3f} with 15 drafts, "
                  f"{r['tau_capped_bs8']:.3f} capped at 7 drafts ({r['rounds_over_8']:.1%} of rounds accepted more)")
    if a.out:
        Path(a.out).write_text(json.dumps(result, indent=1) + "\n")


if __name__ == "__main__":
    main()
