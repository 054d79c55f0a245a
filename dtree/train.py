"""Self-distillation training of the DFlash drafter (spec 1.8), readable top to bottom.

Stages (each cached on disk, so a rerun skips what is done):

1. ``generate``: the target answers training prompts greedily (batched, left padding, bf16 by default); every answer
   is appended to ``<data>/responses.jsonl`` and the target features of the whole sequence (the hidden states of the
   drafter's ``target_layer_ids``, collected during generation, no second pass) go to ``<data>/features/*.pt``.
2. ``train``: random anchors inside each response, one parallel drafter forward per batch with the DFlash training
   mask (context strictly before the anchor, block bidirectional), position-decayed cross-entropy (DFlash arXiv
   2602.06036 Eq. 4: ``w_k = exp(-(k-1)/gamma_w)``), AdamW + warmup + cosine, a resumable state every few minutes.
3. ``eval`` (inside train): held-out acceptance length: a teacher-forced simulation of chain decoding (spec 1.7) on
   the target's own greedy continuation of held-out TRAIN prompts; under greedy decoding it equals the real chain tau.

Run ``python -m dtree.train --help`` (or ``python -m dtree train-drafter``).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import sys
import time
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

import torch

GSM8K_TRAIN = "/work/shared/datasets/gsm8k/train.jsonl"


@dataclass
class TrainConfig:
    """Every knob of a training run (CLI flags have the same names with dashes)."""

    # data
    target: str = "embedded"
    prompts: str = GSM8K_TRAIN          # JSONL with a "question" (or "prompt") field; GSM8K TRAIN only
    data_dir: str = "data/drafter"      # scratch folder (git-ignored): responses.jsonl, features/, state.pt
    n_prompts: int = 3000               # prompts to answer (the first n_heldout of the shuffled order are held out)
    n_heldout: int = 48
    max_new_tokens: int = 192
    gen_batch: int = 48
    gen_dtype: str = "bfloat16"
    num_target_feats: int = 5           # k target layers (spec 1.2 formula) when target_layer_ids is not given
    target_layer_ids: str = ""          # comma list overriding the formula
    # model
    num_layers: int = 1
    block_size: int = 16
    intermediate_size: int = 0          # 0 = the target's
    qk_norm: bool = False               # Qwen3 per-head q/k RMSNorm (z-lab layout); off lets layers start as Llama's
    init_from_target: bool = True       # copy the target's last decoder layer(s) into the drafter layers
    draft_vocab: str = "responses"      # "responses" (ids seen in the answers + specials) or "full"
    # optimisation
    steps: int = 4000
    batch_seqs: int = 8                 # sequences per step
    anchors_per_seq: int = 32           # random anchors per sequence (spec 1.8)
    lr: float = 1e-3
    min_lr: float = 1e-4
    warmup: int = 50
    weight_decay: float = 0.01
    grad_clip: float = 1.0
    gamma_w: float = 7.0                # loss decay (Eq. 4): 7 for bs=16, 5 for bs=10, 4 for bs=8
    # bookkeeping
    out: str = ""                       # shipped checkpoint folder (written when held-out tau improves)
    eval_every: int = 100
    state_every_s: float = 180.0
    time_limit_min: float = 0.0         # stop training after this many minutes (0 = no limit)
    threads: int = 2
    seed: int = 0
    phase: str = "all"                  # gen | train | all


# ----------------------------------------------------------------------------------------------------------------
# 1. data: prompts -> greedy responses + target features


def load_prompts(path: str, n: int, seed: int) -> list[tuple[int, str]]:
    """(line index, question) of the first ``n`` prompts of a seeded shuffle of the JSONL file."""
    rows = []
    with open(path) as f:
        for i, line in enumerate(f):
            if line.strip():
                d = json.loads(line)
                rows.append((i, d.get("question") or d.get("prompt")))
    random.Random(seed).shuffle(rows)
    return rows[:n]


def layer_ids_for(cfg: TrainConfig, n_target_layers: int) -> list[int]:
    from .drafter import default_target_layer_ids

    if cfg.target_layer_ids:
        return [int(x) for x in cfg.target_layer_ids.split(",")]
    return default_target_layer_ids(n_target_layers, cfg.num_target_feats)


def features_dir(cfg: TrainConfig, layer_ids: list[int]) -> Path:
    return Path(cfg.data_dir) / ("features_L" + "-".join(map(str, layer_ids)))


def read_responses(data_dir: str | Path) -> dict[int, dict]:
    """idx -> {"idx", "prompt_ids", "response_ids", "shard"} from ``responses.jsonl`` (last line wins)."""
    out: dict[int, dict] = {}
    p = Path(data_dir) / "responses.jsonl"
    if p.exists():
        with open(p) as f:
            for line in f:
                try:
                    d = json.loads(line)
                except json.JSONDecodeError:  # a line cut by a kill
                    continue
                out[d["idx"]] = d
    return out


@torch.no_grad()
def generate(cfg: TrainConfig) -> None:
    """Answer prompts greedily with the target and store responses + features (resumable; skips done prompts).

    Features of a sequence ``prompt + response`` cover every token that was fed to the target, i.e. all but the last
    response token: shape ``[len(prompt) + len(response) - 1, k*H]``, bf16. They come from the same forward passes
    that generate the answer (prefill hidden states, then one row per decoding step).
    """
    from .models import load_target

    torch.set_num_threads(cfg.threads)
    target = load_target(cfg.target, dtype=cfg.gen_dtype, device="cpu")
    model, tok = target.model, target.tokenizer
    layer_ids = layer_ids_for(cfg, target.n_layers)
    fdir = features_dir(cfg, layer_ids)
    fdir.mkdir(parents=True, exist_ok=True)
    done = {i for i, d in read_responses(cfg.data_dir).items() if (fdir / d["shard"]).exists()}
    todo = [(i, q) for i, q in load_prompts(cfg.prompts, cfg.n_prompts, cfg.seed) if i not in done]
    eos = sorted(target.eos_ids)
    pad = tok.pad_token_id if tok.pad_token_id is not None else eos[0]
    print(f"[gen] {len(done)} done, {len(todo)} to go; layers {layer_ids}; batch {cfg.gen_batch}", flush=True)
    from tqdm import tqdm

    bar = tqdm(total=len(todo), desc="generate", unit="prompt", mininterval=10)
    t0, n_tok = time.perf_counter(), 0
    for b0 in range(0, len(todo), cfg.gen_batch):
        batch = todo[b0:b0 + cfg.gen_batch]
        enc = [target.encode_prompt(q) for _, q in batch]
        P = max(map(len, enc))
        ids = torch.full((len(enc), P), pad, dtype=torch.long)
        mask = torch.zeros((len(enc), P), dtype=torch.long)
        for r, e in enumerate(enc):
            ids[r, P - len(e):] = torch.tensor(e)
            mask[r, P - len(e):] = 1
        out = model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=cfg.max_new_tokens, do_sample=False,
                             eos_token_id=eos, pad_token_id=pad, output_hidden_states=True,
                             return_dict_in_generate=True, top_p=None, top_k=None, temperature=None)
        hs = out.hidden_states  # tuple over steps of tuple over layers: step 0 [B, P, H], step t [B, 1, H]
        feats_steps = [torch.cat([h[j + 1] for j in layer_ids], dim=-1).to(torch.bfloat16) for h in hs]
        prompt_f = feats_steps[0]  # [B, P, kH]
        gen_f = torch.cat(feats_steps[1:], dim=1) if len(feats_steps) > 1 else prompt_f[:, :0]  # [B, T-1, kH]
        seqs = out.sequences[:, P:]
        shard = f"shard_{batch[0][0]:05d}_{int(time.time())}.pt"
        rows, feats = [], []
        for r, ((idx, _), e) in enumerate(zip(batch, enc)):
            resp = seqs[r].tolist()
            n = len(resp)
            for k, t in enumerate(resp):  # cut at the first EOS (kept); the rest is padding
                if t in eos:
                    n = k + 1
                    break
            resp = resp[:n]
            f = torch.cat([prompt_f[r, P - len(e):], gen_f[r, :n - 1]], dim=0).contiguous()
            assert f.shape[0] == len(e) + n - 1
            feats.append(f)
            rows.append({"idx": idx, "prompt_ids": e, "response_ids": resp, "shard": shard})
            n_tok += n
        torch.save({"idx": [r["idx"] for r in rows], "feats": feats}, fdir / (shard + ".tmp"))
        os.replace(fdir / (shard + ".tmp"), fdir / shard)
        with open(Path(cfg.data_dir) / "responses.jsonl", "a") as fo:
            for r in rows:
                fo.write(json.dumps(r) + "\n")
        bar.update(len(batch))
        dt = time.perf_counter() - t0
        print(f"[gen] {b0 + len(batch)}/{len(todo)} prompts, {n_tok} tokens, {n_tok / dt:.0f} tok/s", flush=True)
    bar.close()


# ----------------------------------------------------------------------------------------------------------------
# CLI


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add one ``--flag`` per :class:`TrainConfig` field (same names, dashes for underscores)."""
    for f in fields(TrainConfig):
        flag = "--" + f.name.replace("_", "-")
        if f.type in ("bool", bool):
            parser.add_argument(flag, type=lambda s: s.lower() in ("1", "true", "yes", "on"), default=f.default,
                                metavar="BOOL", help=f"(default {f.default})")
        else:
            typ = {"int": int, "float": float, "str": str}.get(f.type if isinstance(f.type, str) else f.type.__name__)
            parser.add_argument(flag, type=typ, default=f.default, help=f"(default {f.default!r})")


def config_from_args(args: argparse.Namespace) -> TrainConfig:
    return TrainConfig(**{f.name: getattr(args, f.name) for f in fields(TrainConfig) if hasattr(args, f.name)})


def run(args: argparse.Namespace) -> int:
    """Run the stages named by ``--phase``; returns a process exit code (0 ok, 2 bad input)."""
    from .errors import InputError

    cfg = config_from_args(args)
    try:
        if cfg.phase in ("gen", "all"):
            generate(cfg)
        if cfg.phase in ("train", "all"):
            train(cfg)
    except InputError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    ap = argparse.ArgumentParser(prog="python -m dtree.train", description=__doc__.splitlines()[0])
    add_arguments(ap)
    sys.exit(run(ap.parse_args()))
