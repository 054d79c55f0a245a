"""Self-distillation training of the DFlash drafter (spec 1.8), readable top to bottom.

Stages (each cached on disk, so a rerun skips what is done):

1. ``generate``: the target answers training prompts greedily (batched, left padding, float32: on the 2-core dev
   machine without bf16 instructions a bf16 prefill was 2x slower); every answer
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
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import torch
import torch.nn.functional as F

# the shared prompt sets beside the checkout (training data only; the product never needs them)
GSM8K_TRAIN = str(Path(__file__).resolve().parents[2] / "shared" / "datasets" / "gsm8k" / "train.jsonl")


@dataclass
class TrainConfig:
    """Every knob of a training run (CLI flags have the same names with dashes)."""

    # data
    target: str = "embedded"
    prompts: str = GSM8K_TRAIN          # JSONL, one prompt per row read as bench reads it (never evaluation prompts); a
                                        # --data-dir that has a source.json keeps the prompts it was generated from
    data_dir: str = "data/drafter"      # scratch folder (git-ignored): responses.jsonl, features/, state.pt
    n_prompts: int = 3000               # prompts to answer (the first n_heldout of the shuffled order are held out)
    n_heldout: int = 48
    gen_skip: int = 0                   # --phase gen: skip this many prompts after the held-out ones (e.g. answered
                                        # by an earlier run whose data folder is gone) and answer the ones after them
    extra_data: str = ""                # comma list of further data folders, each made by --phase gen with its own
                                        # --prompts (read back from <folder>/source.json); trained on together
    extra_share: float = 0.3            # share of each step's sequences drawn from the extra folders (when given)
    max_new_tokens: int = 192
    gen_batch: int = 192
    gen_dtype: str = "float32"
    soft_topk: int = 8                  # --phase gen: also store the target's top-k next-token log-probs per answer
                                        # token (about 48 bytes per token; 0 = none), for --soft-weight
    num_target_feats: int = 5           # k target layers (spec 1.2 formula) when target_layer_ids is not given
    target_layer_ids: str = ""          # comma list overriding the formula
    # model
    num_layers: int = 2
    block_size: int = 16
    intermediate_size: int = 0          # 0 = the target's
    qk_norm: bool = True                # Qwen3 per-head q/k RMSNorm (z-lab layout); off lets layers start as Llama's
    init_from_target: bool = False      # copy the target's last decoder layer(s) into the drafter layers (needs
                                        # qk_norm off; measured no better than random init after 50 steps)
    grow_from: str = ""                 # a state.pt, or a checkpoint folder (e.g. the shipped drafter's), of a
                                        # drafter with as many or fewer layers: copy its weights and draft vocab,
                                        # append any extra layers as identities (zero o_proj/down_proj), then train
                                        # them all (a fresh optimizer)
    draft_vocab: str = "responses+questions"  # "responses" (ids in the answers + EOS), "responses+questions" (also
                                        # ids seen >= vocab_min_count times in the training questions) or "full"
    vocab_min_count: int = 5
    # optimisation
    steps: int = 4000
    batch_seqs: int = 8                 # sequences per step
    anchors_per_seq: int = 16           # random anchors per sequence (spec 1.8)
    lr: float = 1e-3
    min_lr: float = 1e-4
    warmup: int = 50
    weight_decay: float = 0.01
    grad_clip: float = 1.0
    gamma_w: float = 7.0                # loss decay (Eq. 4): 7 for bs=16, 5 for bs=10, 4 for bs=8
    soft_weight: float = 0.0            # share of the loss taken by cross-entropy against the target's stored top-k
                                        # distribution (knowledge distillation) instead of its greedy token, in [0, 1];
                                        # answers generated without --soft-topk count their greedy token as that
                                        # distribution
    # bookkeeping
    out: str = ""                       # checkpoint folder, written when held-out tau improves (default
                                        # <data_dir>/checkpoint)
    state: str = ""                     # resumable training state (default <data_dir>/state.pt)
    eval_every: int = 200
    state_every_s: float = 180.0
    time_limit_min: float = 0.0         # stop training after this many minutes (0 = no limit)
    threads: int = 2
    seed: int = 0
    phase: str = "all"                  # gen | train | all


# ----------------------------------------------------------------------------------------------------------------
# 1. data: prompts -> greedy responses + target features


def load_prompts(path: str, n: int, seed: int) -> list[tuple[int, str]]:
    """(line index, question) of the first ``n`` prompts of a seeded shuffle of the JSONL file.

    The prompt of a row is read as ``bench`` reads JSONL files (:func:`dtree.bench.prompt_of`): the first non-empty
    "question", "prompt", "instruction", "input" or "text" field, else the first of MT-Bench's "turns".

    Raises InputError when the file is missing, or a line is not JSON or has no prompt text."""
    from .bench import PROMPT_FIELDS, prompt_of
    from .errors import InputError

    fields_said = ", ".join(f'"{f}"' for f in PROMPT_FIELDS) + ' or "turns"'
    if not Path(path).is_file():
        raise InputError("prompts", f"{path} is not a file (a JSONL file with a {fields_said} field)")
    rows = []
    with open(path) as f:
        for i, line in enumerate(f):
            if line.strip():
                try:
                    d = json.loads(line)
                except json.JSONDecodeError as e:
                    raise InputError("prompts", f"{path} line {i + 1} is not JSON ({e.msg})") from None
                q = prompt_of(d) if isinstance(d, dict) else None
                if q is None:
                    raise InputError("prompts", f"{path} line {i + 1} has no prompt text (a {fields_said} field)")
                rows.append((i, q))
    random.Random(seed).shuffle(rows)
    return rows[:n]


def layer_ids_for(cfg: TrainConfig, n_target_layers: int) -> list[int]:
    from .drafter import default_target_layer_ids

    if cfg.target_layer_ids:
        ids = parse_layer_ids(cfg.target_layer_ids)
        if max(ids) >= n_target_layers:
            from .errors import InputError

            raise InputError("target_layer_ids", f"layer {max(ids)} does not exist: the target has {n_target_layers} "
                                                 f"layers (0..{n_target_layers - 1})")
        return ids
    return default_target_layer_ids(n_target_layers, cfg.num_target_feats)


def parse_layer_ids(text: str) -> list[int]:
    """``"1,8,14"`` -> ``[1, 8, 14]``. Raises InputError (``target_layer_ids``) for a stray comma, a non-integer or a
    negative index. Indices past the target's last layer are caught once the target is loaded (:func:`layer_ids_for`)."""
    from .errors import check_int, int_items

    return [check_int("target_layer_ids", v, 0) for v in int_items("target_layer_ids", text)]


def out_dir_of(cfg: TrainConfig) -> Path:
    """The checkpoint folder: ``--out``, else ``<data_dir>/checkpoint``."""
    return Path(cfg.out or Path(cfg.data_dir) / "checkpoint")


def run_config(cfg: TrainConfig) -> dict:
    """``cfg`` as a dict for ``best_checkpoint.json``: without the generation-only options (a training run never
    reads them; each folder's own are under ``sources``), with the main folder's ``prompts`` and ``n_heldout`` as its
    ``source.json`` records them (training reads them from there, whatever the command line said) and that folder's
    shuffle seed as ``data_seed`` (``seed`` stays the training seed)."""
    out = {k: v for k, v in asdict(cfg).items() if k not in _GEN_ONLY}  # generation settings: in "sources"
    src = read_source(cfg.data_dir)
    if src is not None:
        out.update(prompts=src[1], n_heldout=src[3], data_seed=src[2])
    return out


def source_record(d: "DataSet") -> dict:
    """A data folder as ``best_checkpoint.json`` names it: folder, prompts file and the generation runs that filled
    it (``source.json``'s ``gen_runs``: target, prompt count, skip, max new tokens, batch, dtype, top-k stored;
    absent for folders generated before they were recorded)."""
    out = {"data_dir": str(d.data_dir), "prompts": d.prompts}
    runs = (source_meta(d.data_dir) or {}).get("gen_runs")
    if runs:
        out["gen_runs"] = runs
    return out


def state_path_of(cfg: TrainConfig) -> Path:
    """The resumable training-state file: ``--state``, else ``<data_dir>/state.pt``."""
    return Path(cfg.state or Path(cfg.data_dir) / "state.pt")


def features_dir(cfg: TrainConfig, layer_ids: list[int]) -> Path:
    return Path(cfg.data_dir) / ("features_L" + "-".join(map(str, layer_ids)))


_RESPONSE_KEYS = ("idx", "prompt_ids", "response_ids", "shard")


def read_responses(data_dir: str | Path, field: str = "data_dir") -> dict[int, dict]:
    """idx -> {"idx", "prompt_ids", "response_ids", "shard"} from ``responses.jsonl`` (last line wins). A line that
    is not JSON (cut by a kill mid-write) is skipped.

    Raises:
        InputError (``field``): a JSON line that is not an answer record of ``--phase gen`` (not an object, or
            missing one of those keys): the folder was not made by ``--phase gen``.
    """
    from .errors import InputError

    out: dict[int, dict] = {}
    p = Path(data_dir) / "responses.jsonl"
    if p.exists():
        with open(p) as f:
            for n, line in enumerate(f, 1):
                try:
                    d = json.loads(line)
                except json.JSONDecodeError:  # a line cut by a kill
                    continue
                missing = [k for k in _RESPONSE_KEYS if k not in d] if isinstance(d, dict) else list(_RESPONSE_KEYS)
                if missing:
                    raise InputError(field, f"{p} line {n} is not an answer written by --phase gen (no "
                                            f"{', '.join(missing)}): give a folder made by --phase gen")
                out[d["idx"]] = d
    return out


@torch.no_grad()
def greedy_batch(model, prompts: list[list[int]], max_new: int, eos: set[int], pad: int, layer_ids: list[int],
                 soft_topk: int = 0):
    """Greedy answers to a batch of prompts, with the target features of every token fed to the model.

    Left-padded prefill, then one decoding step per token; finished rows (EOS or ``max_new``) leave the batch (their
    cache rows are dropped), so stragglers do not cost the whole batch. Only the last position goes through
    ``lm_head``. Returns per prompt ``(response_ids, feats, soft)`` with ``feats`` bf16 ``[len(prompt)+len(response)-1,
    k*H]`` (layer id j = output of decoder layer j = ``hidden_states[j+1]``, spec 1.2) and ``soft`` None, or with
    ``soft_topk`` K > 0 the target's K most likely next tokens at every response position: ``(ids int32 [R, K],
    logp float16 [R, K])`` (natural-log probabilities of the full softmax; row j is the distribution the greedy
    response token j was the argmax of).
    """
    from transformers import DynamicCache

    B, P = len(prompts), max(map(len, prompts))
    ids = torch.full((B, P), pad, dtype=torch.long)
    mask = torch.zeros((B, P), dtype=torch.long)
    for r, e in enumerate(prompts):
        ids[r, P - len(e):] = torch.tensor(e)
        mask[r, P - len(e):] = 1
    pos = (mask.cumsum(-1) - 1).clamp(min=0)
    cache = DynamicCache()
    base, head = model.model, model.get_output_embeddings()

    def step(x, m, p):
        o = base(input_ids=x, attention_mask=m, position_ids=p, cache=cache, use_cache=True, output_hidden_states=True)
        f = torch.cat([o.hidden_states[j + 1] for j in layer_ids], dim=-1).to(torch.bfloat16)
        logits = head(o.last_hidden_state[:, -1])
        top = None
        if soft_topk > 0:
            lp, ti = torch.log_softmax(logits.float(), dim=-1).topk(soft_topk, dim=-1)
            top = (ti.to(torch.int32), lp.to(torch.float16))
        return logits.argmax(-1), f, top

    def keep_top(rows, top):
        if top is not None:
            for br, r in enumerate(rows):
                soft[r].append((top[0][br], top[1][br]))

    soft: list[list] = [[] for _ in range(B)]
    nxt, f, top = step(ids, mask, pos)
    feats = [[f[r, P - len(e):]] for r, e in enumerate(prompts)]
    resp = [[] for _ in range(B)]
    alive = list(range(B))  # original row of each batch row
    keep_top(alive, top)
    last_pos = pos[:, -1]
    while True:
        keep = []
        for br, r in enumerate(alive):
            t = int(nxt[br])
            resp[r].append(t)
            if t not in eos and len(resp[r]) < max_new:
                keep.append(br)
        if not keep:
            break
        if len(keep) < len(alive):
            kt = torch.tensor(keep)
            cache.batch_select_indices(kt)
            mask, last_pos, nxt = mask[kt], last_pos[kt], nxt[kt]
            alive = [alive[i] for i in keep]
        mask = torch.cat([mask, torch.ones(len(alive), 1, dtype=torch.long)], dim=1)
        last_pos = last_pos + 1
        nxt, f, top = step(nxt[:, None], mask, last_pos[:, None])
        keep_top(alive, top)
        for br, r in enumerate(alive):
            feats[r].append(f[br])
    out = []
    for r in range(B):
        sr = None
        if soft_topk > 0:
            sr = (torch.stack([a for a, _ in soft[r]]), torch.stack([b for _, b in soft[r]]))
        out.append((resp[r], torch.cat(feats[r], dim=0).contiguous(), sr))
    return out


def batch_by_length(todo: list[tuple[int, str]], encode, first: set[int], batch: int, window: int = 8
                    ) -> list[tuple[int, str]]:
    """Reorder prompts so each generation batch holds prompts of similar length.

    A batch is left-padded to its longest prompt, and every decoding step reads the whole padded KV cache: with code
    prompts of 30-340 tokens (mean 122) the cache of a batch was about 3x what its prompts need. The prompts whose
    index is in ``first`` (the held-out ones) stay in front in their order; the others are sorted by encoded length
    (``len(encode(q))``) within consecutive windows of ``window * batch`` prompts, so the data arriving early is still
    a shuffled sample of the whole file. Returns the same ``(index, prompt)`` pairs, reordered."""
    head = [x for x in todo if x[0] in first]
    rest = [x for x in todo if x[0] not in first]
    out, w = list(head), max(1, window * batch)
    for s in range(0, len(rest), w):
        chunk = rest[s:s + w]
        lengths = [len(encode(q)) for _, q in chunk]
        out.extend(x for _, x in sorted(zip(lengths, chunk), key=lambda t: t[0]))
    return out


def gen_order(cfg: TrainConfig, rows: list[tuple[int, str]]) -> list[tuple[int, str]]:
    """The prompts ``--phase gen`` is asked to answer, from ``rows`` (the file's whole seeded shuffle,
    :func:`load_prompts`): the ``n_heldout`` held-out ones (always answered), then, after skipping ``gen_skip``, the
    next ``n_prompts - n_heldout``."""
    rows = rows[:cfg.n_prompts + cfg.gen_skip]
    return rows[:cfg.n_heldout] + rows[cfg.n_heldout + cfg.gen_skip:]


def answered(cfg: TrainConfig, fdir: Path) -> set[int]:
    """Prompt line indices with a stored answer in ``cfg.data_dir`` whose features shard exists in ``fdir``."""
    return {i for i, d in read_responses(cfg.data_dir).items() if (fdir / d["shard"]).exists()}


def prompts_left(cfg: TrainConfig, rows: list[tuple[int, str]] | None = None) -> int | None:
    """How many of the prompts ``--phase gen`` is asked for have no stored answer yet in ``cfg.data_dir``, found
    without loading the model (the target's layer count, which names the features folder, is read from its
    config). ``rows``: the prompts file's seeded shuffle when already read. None when that config cannot be read
    cheaply (then :func:`generate` loads the model and counts)."""
    try:
        from transformers import AutoConfig

        from .models import resolve_target

        n_layers = AutoConfig.from_pretrained(resolve_target(cfg.target)).num_hidden_layers
    except Exception:  # a hub id that is not cached, an unusual config: fall back to the full path
        return None
    done = answered(cfg, features_dir(cfg, layer_ids_for(cfg, n_layers)))
    rows = load_prompts(cfg.prompts, sys.maxsize, cfg.seed) if rows is None else rows
    return sum(i not in done for i, _ in gen_order(cfg, rows))


@torch.no_grad()
def generate(cfg: TrainConfig) -> None:
    """Answer prompts greedily with the target and store responses + features (resumable; skips done prompts).

    Features of a sequence ``prompt + response`` cover every token that was fed to the target, i.e. all but the last
    response token: shape ``[len(prompt) + len(response) - 1, k*H]``, bf16, from the same forward passes that
    generate the answer (no second pass). Batches are big (default 192): on 2 CPU cores a decoding step over 48 rows
    costs about as much as over 128 (matmuls are memory-bound at small batch).
    """
    from tqdm import tqdm

    from .models import load_target

    from .errors import InputError

    src = {"prompts": str(Path(cfg.prompts).resolve()), "seed": cfg.seed, "n_heldout": cfg.n_heldout}
    meta = source_meta(cfg.data_dir)
    old = None if meta is None else (meta["prompts"], int(meta["seed"]), int(meta["n_heldout"]))
    if old is not None and old != (src["prompts"], src["seed"], src["n_heldout"]):
        # answers are keyed by line number in the prompts file: another file, seed or held-out count would mix them
        raise InputError("data_dir", f"{cfg.data_dir} was generated from --prompts {old[0]} --seed {old[1]} "
                                     f"--n-heldout {old[2]}: continue with those, or use another --data-dir")
    if cfg.gen_skip < 0:
        raise InputError("gen_skip", f"must be >= 0, got {cfg.gen_skip}")
    rows = load_prompts(cfg.prompts, sys.maxsize, cfg.seed)  # read once; a bad prompts file fails before the model
    left = prompts_left(cfg, rows)
    if left == 0:  # nothing to answer: say so without loading the model (minutes for a large hub target)
        print(f"[gen] every prompt asked for is already answered in {cfg.data_dir}: nothing to do (raise "
              f"--n-prompts to answer more)", flush=True)
        return
    torch.set_num_threads(cfg.threads)
    target = load_target(cfg.target, dtype=cfg.gen_dtype, device="cpu")
    tok = target.tokenizer
    layer_ids = layer_ids_for(cfg, target.n_layers)
    fdir = features_dir(cfg, layer_ids)
    fdir.mkdir(parents=True, exist_ok=True)
    # how each generation run into this folder answered (the held-out split above is what must never change)
    src["gen_runs"] = (meta or {}).get("gen_runs", []) + [{k: getattr(cfg, k) for k in ("target", *_GEN_ONLY)}]
    (Path(cfg.data_dir) / "source.json").write_text(json.dumps(src, indent=1))
    done = answered(cfg, fdir)
    order = gen_order(cfg, rows)
    todo = batch_by_length([(i, q) for i, q in order if i not in done], target.encode_prompt,
                           {i for i, _ in order[:cfg.n_heldout]}, cfg.gen_batch)
    eos = set(target.eos_ids)
    pad = tok.pad_token_id if tok.pad_token_id is not None else min(eos)
    if len(rows) < cfg.n_prompts + cfg.gen_skip:
        print(f"[gen] {cfg.prompts} holds {len(rows)} prompts, fewer than --n-prompts {cfg.n_prompts}"
              f"{f' + --gen-skip {cfg.gen_skip}' if cfg.gen_skip else ''}: answering the {len(order)} there are",
              flush=True)
    print(f"[gen] {len(done)} done, {len(todo)} to go; layers {layer_ids}; batch {cfg.gen_batch}", flush=True)
    bar = tqdm(total=len(todo), desc="generate", unit="prompt", mininterval=10)
    t0, n_tok = time.perf_counter(), 0
    for b0 in range(0, len(todo), cfg.gen_batch):
        batch = todo[b0:b0 + cfg.gen_batch]
        enc = [target.encode_prompt(q) for _, q in batch]
        res = greedy_batch(target.model, enc, cfg.max_new_tokens, eos, pad, layer_ids, cfg.soft_topk)
        shard = f"shard_{batch[0][0]:05d}_{int(time.time())}.pt"
        rows = []
        for (idx, _), e, (r, f, _) in zip(batch, enc, res):
            assert f.shape[0] == len(e) + len(r) - 1
            rows.append({"idx": idx, "prompt_ids": e, "response_ids": r, "shard": shard})
            n_tok += len(r)
        blob = {"idx": [r["idx"] for r in rows], "feats": [f for _, f, _ in res]}
        if cfg.soft_topk > 0:  # the target's top-k next-token distribution per response token (--soft-weight)
            blob["top_ids"] = [sr[0] for _, _, sr in res]
            blob["top_logp"] = [sr[1] for _, _, sr in res]
        torch.save(blob, fdir / (shard + ".tmp"))
        os.replace(fdir / (shard + ".tmp"), fdir / shard)
        with open(Path(cfg.data_dir) / "responses.jsonl", "a") as fo:
            for r in rows:
                fo.write(json.dumps(r) + "\n")
        bar.update(len(batch))
        dt = time.perf_counter() - t0
        print(f"[gen] {b0 + len(batch)}/{len(todo)} prompts, {n_tok} tokens, {n_tok / dt:.0f} tok/s", flush=True)
    bar.close()

# ----------------------------------------------------------------------------------------------------------------
# 2. dataset (token ids in RAM, target features memory-mapped from their shards)


@dataclass
class Sample:
    """One sequence: ``tokens`` int64 [L] (prompt + response), ``feats`` bf16 [L-1, k*H] (features of tokens[:-1]),
    ``prompt_len`` P (the first response token sits at position P); ``soft`` None or the target's top-k next-token
    distribution at every response token, ``(ids int32 [L-P, K], logp float16 [L-P, K])`` (row j: token ``P+j``)."""

    idx: int
    tokens: torch.Tensor
    feats: torch.Tensor
    prompt_len: int
    soft: tuple[torch.Tensor, torch.Tensor] | None = None


def load_samples(cfg: TrainConfig, layer_ids: list[int], skip_shards: set[str] | None = None,
                 data_dir: str | Path | None = None) -> list[Sample]:
    """Generated sequences with features on disk in ``data_dir`` (default ``cfg.data_dir``), except those in
    ``skip_shards`` (shard file names; the names of the shards read are added to it, so a later call only picks up
    new data)."""
    data_dir = Path(data_dir or cfg.data_dir)
    rows = read_responses(data_dir)
    fdir = data_dir / features_dir(cfg, layer_ids).name
    by_shard: dict[str, list[dict]] = {}
    for d in rows.values():
        by_shard.setdefault(d["shard"], []).append(d)
    out = []
    for shard, ds in by_shard.items():
        if not (fdir / shard).exists() or (skip_shards is not None and shard in skip_shards):
            continue
        if skip_shards is not None:
            skip_shards.add(shard)
        # memory-mapped: the features stay file-backed pages the OS can drop and re-read, so folders together larger
        # than RAM (session 22: 19 GB of features on a 24 GB machine) train without running out of memory
        blob = torch.load(fdir / shard, mmap=True)
        pos = {i: r for r, i in enumerate(blob["idx"])}
        for d in ds:
            if d["idx"] not in pos or len(d["response_ids"]) < 2:
                continue
            toks = torch.tensor(d["prompt_ids"] + d["response_ids"], dtype=torch.long)
            j = pos[d["idx"]]
            soft = (blob["top_ids"][j], blob["top_logp"][j]) if "top_ids" in blob else None
            out.append(Sample(d["idx"], toks, blob["feats"][j], len(d["prompt_ids"]), soft))
    return out


@dataclass
class DataSet:
    """One folder of generated data: training sequences and held-out ones (the first ``n_heldout`` prompts of the
    folder's seeded shuffle, never trained on)."""

    name: str
    data_dir: Path
    prompts: str
    held_idx: set[int]
    trn: list[Sample]
    held: list[Sample]
    shards: set[str]
    n_tok: int = 0

    def refresh(self, cfg: TrainConfig, layer_ids: list[int]) -> int:
        """Add the sequences of shards written since the last call (a generator running alongside); returns how many
        training sequences were added."""
        new = load_samples(cfg, layer_ids, self.shards, self.data_dir)
        self.held.extend(s for s in new if s.idx in self.held_idx)
        add = [s for s in new if s.idx not in self.held_idx]
        self.trn.extend(add)
        self.n_tok += sum(s.tokens.shape[0] - s.prompt_len for s in add)
        return len(add)


def source_meta(folder: str | Path) -> dict | None:
    """The ``source.json`` that ``--phase gen`` wrote in ``folder`` (prompts file, seed, n_heldout, gen_runs), or None
    when the folder has none."""
    src = Path(folder) / "source.json"
    return json.loads(src.read_text()) if src.exists() else None


def read_source(folder: str | Path) -> tuple[Path, str, int, int] | None:
    """``(folder, prompts file, seed, n_heldout)`` from the folder's :func:`source_meta`, or None when it has none."""
    meta = source_meta(folder)
    if meta is None:
        return None
    return Path(folder), meta["prompts"], int(meta["seed"]), int(meta["n_heldout"])


def extra_folders(cfg: TrainConfig) -> list[str]:
    """The ``--extra-data`` folders in order (none when it is empty). Raises InputError for a stray comma."""
    from .errors import split_items

    return split_items("extra_data", cfg.extra_data) if cfg.extra_data.strip() else []


def check_share(name: str, share: float) -> None:
    """Raises InputError(name) unless ``share`` is in [0, 1] (NaN is not): ``extra_share``, ``soft_weight``."""
    from .errors import InputError

    if not 0.0 <= share <= 1.0:
        raise InputError(name, f"must be in [0, 1], got {share}")


def check_extra_data(cfg: TrainConfig) -> None:
    """Raises InputError for an ``extra_share`` outside [0, 1], a stray comma in ``extra_data`` or an ``extra_data``
    folder that is missing or has no ``source.json`` (cheap: no data is read)."""
    from .errors import InputError

    check_share("extra_share", cfg.extra_share)
    for folder in extra_folders(cfg):
        if not Path(folder).is_dir():
            raise InputError("extra_data", f"{folder} is not a folder (one made by --phase gen --data-dir "
                                           f"{folder} --prompts FILE)")
        if not (Path(folder) / "source.json").is_file():
            raise InputError("extra_data", f"{folder} has no source.json: generate it with --phase gen "
                                           f"--data-dir {folder} --prompts FILE first")


def open_datasets(cfg: TrainConfig, layer_ids: list[int]) -> list[DataSet]:
    """``cfg.data_dir`` followed by every ``cfg.extra_data`` folder. A folder's prompts file, seed and held-out count
    (hence its held-out set) are read from the ``source.json`` its generation wrote; only ``cfg.data_dir`` may lack
    one (data generated before it existed: ``cfg.prompts``, ``cfg.seed`` and ``cfg.n_heldout`` are used).

    Raises InputError for an extra folder without ``source.json``, a folder named twice or a bad ``extra_share``.
    """
    from .errors import InputError

    check_extra_data(cfg)
    # the prompts a folder was generated from decide its held-out set, not --prompts; only the main folder may
    # predate source.json
    specs = [read_source(cfg.data_dir) or (Path(cfg.data_dir), cfg.prompts, cfg.seed, cfg.n_heldout)]
    for folder in extra_folders(cfg):
        spec = read_source(folder)
        if any(Path(folder).resolve() == f.resolve() for f, *_ in specs):
            raise InputError("extra_data", f"{folder} is named twice (as --data-dir or in --extra-data)")
        specs.append(spec)
    sets = []
    for folder, prompts, seed, n_held in specs:
        held_idx = {i for i, _ in load_prompts(prompts, n_held, seed)}
        name = folder.name if sum(f.name == folder.name for f, *_ in specs) == 1 else str(folder)  # unique labels
        d = DataSet(name, folder, prompts, held_idx, [], [], set())
        d.refresh(cfg, layer_ids)
        sets.append(d)
    return sets


def draw_batch(sets: list[DataSet], n: int, extra_share: float, gen: torch.Generator) -> list[Sample]:
    """``n`` training sequences: each from the extra folders (``sets[1:]``, pooled) with probability
    ``extra_share``, else from the main folder; uniform within the chosen pool (the other pool when one is empty)."""
    main = sets[0].trn
    extra = [s for d in sets[1:] for s in d.trn]
    out = []
    for u in torch.rand(n, generator=gen).tolist():
        pool = extra if (u < extra_share and extra) or not main else main
        out.append(pool[int(torch.randint(len(pool), (1,), generator=gen))])
    return out


def build_draft_vocab(samples: list[Sample], extra: set[int]) -> torch.Tensor:
    """Sorted int64 ids of every token in the responses (plus ``extra``, e.g. EOS ids): the draft vocabulary."""
    ids = set(extra)
    for s in samples:
        ids.update(s.tokens[s.prompt_len:].tolist())
    return torch.tensor(sorted(ids), dtype=torch.long)


def question_tokens(tokenizer, path: str, exclude: set[int], min_count: int) -> set[int]:
    """Token ids that occur at least ``min_count`` times in the prompts file (lines in ``exclude`` skipped): words a
    response may copy from its question (names, units) that the generated answers happen not to contain."""
    from collections import Counter

    c: Counter = Counter()
    for i, q in load_prompts(path, sys.maxsize, 0):  # every row, read as generation read it (any prompt field)
        if i not in exclude:
            c.update(tokenizer(q, add_special_tokens=False)["input_ids"])
    return {t for t, n in c.items() if n >= min_count}


def make_batch(samples: list[Sample], n_anchors: int, bs: int, gen: torch.Generator):
    """Random anchors (spec 1.8) for a list of sequences.

    Returns ``feats [B, S, k*H]`` (float32, zero padded), ``tokens [B, S+1]``, ``anchors [B, N]`` (positions inside
    the response, ``P <= a <= L-2``), ``anchor_ok [B, N]`` bool, ``labels [B, N, bs-1]`` (token at ``a+k``, -1 past the
    end). Context visible to anchor ``a``: rows ``j < a`` (strictly before: the anchor's own feature does not exist yet
    at inference).
    """
    B = len(samples)
    S = max(s.feats.shape[0] for s in samples)
    feats = torch.zeros(B, S, samples[0].feats.shape[1])
    tokens = torch.zeros(B, S + 1, dtype=torch.long)
    anchors = torch.zeros(B, n_anchors, dtype=torch.long)
    ok = torch.zeros(B, n_anchors, dtype=torch.bool)
    for b, s in enumerate(samples):
        L = s.tokens.shape[0]
        feats[b, :L - 1] = s.feats.float()
        tokens[b, :L] = s.tokens
        cand = torch.arange(s.prompt_len, L - 1)
        pick = cand[torch.randperm(len(cand), generator=gen)[:n_anchors]]
        anchors[b, :len(pick)] = pick
        ok[b, :len(pick)] = True
    lengths = torch.tensor([s.tokens.shape[0] for s in samples])
    k = torch.arange(1, bs)
    lab_pos = anchors[:, :, None] + k  # [B, N, bs-1]
    labels = torch.gather(tokens, 1, lab_pos.clamp(max=S).view(B, -1)).view(B, n_anchors, bs - 1)
    valid = (lab_pos < lengths[:, None, None]) & ok[:, :, None]
    labels = torch.where(valid, labels, torch.full_like(labels, -1))
    return feats, tokens, anchors, ok, labels


def soft_targets(samples: list[Sample], anchors: torch.Tensor, labels: torch.Tensor
                 ) -> tuple[torch.Tensor, torch.Tensor]:
    """The target's stored next-token distribution at every label of a :func:`make_batch` batch.

    ``anchors [B, N]`` and ``labels [B, N, bs-1]`` as make_batch returns them. Returns ``ids`` int64 ``[B, N, bs-1, K]``
    (target ids, -1 where none) and ``p`` float32 of the same shape: the stored top-K probabilities of the token at
    ``a+k`` (K = the widest stored; 1 when no sample has any). A sample generated without them, or a label past the
    end, gets its greedy token with probability 1 (or nothing, for padding labels -1), so mixing folders with and
    without stored distributions trains the latter on their greedy tokens only.
    """
    B, N, G = labels.shape
    K = max([s.soft[0].shape[1] for s in samples if s.soft is not None] or [1])
    ids = torch.full((B, N, G, K), -1, dtype=torch.long)
    p = torch.zeros(B, N, G, K)
    ids[..., 0] = labels
    p[..., 0] = (labels >= 0).float()
    k = torch.arange(1, G + 1)
    for b, s in enumerate(samples):
        if s.soft is None:
            continue
        R = s.soft[0].shape[0]
        j = anchors[b][:, None] + k - s.prompt_len  # response index of each label [N, G]
        ok = (labels[b] >= 0) & (j >= 0) & (j < R)
        jj = j.clamp(0, R - 1)
        kk = s.soft[0].shape[1]
        ids[b, :, :, :kk] = torch.where(ok[..., None], s.soft[0][jj].long(), ids[b, :, :, :kk])
        p[b, :, :, :kk] = torch.where(ok[..., None], s.soft[1][jj].float().exp(), p[b, :, :, :kk])
    return ids, p


def drafter_hidden(drafter, target_model, feats, tokens, anchors):
    """Parallel training forward over many blocks: ``[B, N, bs, H]`` final-normed block states (spec 1.8 mask)."""
    B, S, _ = feats.shape
    bs = drafter.block_size
    ctx = drafter.fuse(feats)
    a_tok = torch.gather(tokens, 1, anchors)
    x = drafter.block_embeddings(target_model, a_tok)
    ctx_pos = torch.arange(S)[None].expand(B, S)
    block_pos = anchors[:, :, None] + torch.arange(bs)
    visible = torch.arange(S)[None, None, :] < anchors[:, :, None]  # [B, N, S]
    return drafter.run_layers(x, ctx, ctx_pos, block_pos, visible)


def to_draft_ids(labels: torch.Tensor, lookup: torch.Tensor) -> torch.Tensor:
    """Map target ids to draft-vocab indices (-1 for padding or tokens outside the draft vocabulary)."""
    out = lookup[labels.clamp(min=0)]
    return torch.where(labels < 0, torch.full_like(out, -1), out)


def decayed_ce(drafter, target_model, h, labels_d, gamma_w: float, soft=None, soft_weight: float = 0.0):
    """Position-decayed cross-entropy (DFlash Eq. 4): weighted mean of CE at depths k=1..bs-1 with
    ``w_k = exp(-(k-1)/gamma_w)`` over valid labels. ``h [B, N, bs, H]``, ``labels_d [B, N, bs-1]`` draft ids.

    With ``soft = (ids_d, p)`` (:func:`soft_targets` mapped to draft ids, ``[B, N, bs-1, K]``) and ``soft_weight``
    alpha > 0, the per-label loss is ``(1 - alpha) CE(greedy token) + alpha H(p~, q)``: the cross-entropy of the
    drafter's distribution q against the target's stored top-K distribution p~ restricted to the draft vocabulary and
    renormalised there (standard knowledge distillation, Hinton et al. 2015, at temperature 1; the DFlash paper trains
    on the greedy token alone). A label whose stored tokens all fall outside the draft vocabulary uses its greedy token.
    """
    bs = h.shape[2]
    w = torch.exp(-torch.arange(bs - 1, dtype=torch.float32) / gamma_w)
    hh = h[:, :, 1:].reshape(-1, h.shape[-1])
    y = labels_d.reshape(-1)
    keep = y >= 0
    logits = F.linear(hh[keep], drafter.head_weight(target_model))
    logq = torch.log_softmax(logits.float(), dim=-1)
    ce = -logq.gather(1, y[keep][:, None])[:, 0]
    if soft is not None and soft_weight > 0:
        ids_d, p = (t.reshape(-1, t.shape[-1])[keep] for t in soft)
        p = torch.where(ids_d >= 0, p, torch.zeros_like(p))
        mass = p.sum(-1, keepdim=True)
        p = torch.where(mass > 0, p / mass.clamp(min=1e-12), F.one_hot(torch.zeros_like(y[keep]), p.shape[-1]).float())
        ids_d = torch.where(mass > 0, ids_d, y[keep][:, None].expand_as(ids_d))
        h_soft = -(p * logq.gather(1, ids_d.clamp(min=0))).sum(-1)
        ce = (1 - soft_weight) * ce + soft_weight * h_soft
    wk = w.expand_as(labels_d).reshape(-1)[keep]
    return (ce * wk).sum() / wk.sum()


def train_step(drafter, target_model, opt, feats, tokens, anchors, labels_d, gamma_w: float, grad_clip: float,
               soft=None, soft_weight: float = 0.0):
    """One optimisation step on a :func:`make_batch` batch: :func:`drafter_hidden`, :func:`decayed_ce` (with the
    optional soft targets), backward, gradient clipping to ``grad_clip`` (global norm), ``opt.step()``. Returns the
    loss tensor (detached use only)."""
    h = drafter_hidden(drafter, target_model, feats, tokens, anchors)
    loss = decayed_ce(drafter, target_model, h, labels_d, gamma_w, soft, soft_weight)
    opt.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(drafter.parameters(), grad_clip)
    opt.step()
    return loss


# ----------------------------------------------------------------------------------------------------------------
# 3. held-out acceptance: teacher-forced chain decoding (spec 1.7)


@torch.no_grad()
def heldout_tau(drafter, target_model, samples: list[Sample], max_new: int = 128, chunk: int = 4) -> dict:
    """Mean acceptance length of chain decoding, simulated on the target's greedy continuations.

    For every response position ``s`` the drafter drafts from context ``< s`` and anchor ``tokens[s]``; ``a(s)`` =
    number of leading depths whose argmax equals ``tokens[s+1..]``. Chain decoding starts at ``s = P`` and moves by
    ``tau = a(s) + 1`` until ``max_new`` response tokens are covered; under greedy decoding this is the real chain
    tau (up to the numerics of batched features). Returns ``{"tau": tokens/rounds over all prompts, "acc": per-depth
    top-1 match rate over all positions}``.
    """
    bs = drafter.block_size
    rounds = toks = 0
    hits = torch.zeros(bs - 1)
    cnt = torch.zeros(bs - 1)
    for c0 in range(0, len(samples), chunk):
        ss = []
        for s in samples[c0:c0 + chunk]:
            L = min(s.tokens.shape[0], s.prompt_len + max_new)
            ss.append(Sample(s.idx, s.tokens[:L], s.feats[:L - 1], s.prompt_len))
        n_max = max(s.tokens.shape[0] - 1 - s.prompt_len for s in ss)
        B = len(ss)
        S = max(s.feats.shape[0] for s in ss)
        feats = torch.zeros(B, S, ss[0].feats.shape[1])
        tokens = torch.zeros(B, S + 1, dtype=torch.long)
        anchors = torch.zeros(B, n_max, dtype=torch.long)
        for b, s in enumerate(ss):
            L = s.tokens.shape[0]
            feats[b, :L - 1] = s.feats.float()
            tokens[b, :L] = s.tokens
            n = L - 1 - s.prompt_len
            anchors[b, :n] = torch.arange(s.prompt_len, L - 1)
            anchors[b, n:] = s.prompt_len
        h = drafter_hidden(drafter, target_model, feats, tokens, anchors)[:, :, 1:]
        pred_d = F.linear(h, drafter.head_weight(target_model)).argmax(-1)  # [B, N, bs-1]
        pred = pred_d if drafter.draft_vocab is None else drafter.draft_vocab[pred_d]
        for b, s in enumerate(ss):
            L = s.tokens.shape[0]
            n = L - 1 - s.prompt_len
            lab_pos = anchors[b, :n, None] + torch.arange(1, bs)
            valid = lab_pos < L
            match = (pred[b, :n] == tokens[b][lab_pos.clamp(max=L - 1)]) & valid
            hits += match.sum(0)
            cnt += valid.sum(0)
            lead = torch.cumprod(match.int(), dim=1).sum(1)  # accepted drafts at each anchor
            pos = s.prompt_len
            end = L  # positions P..L-1 are the response tokens to produce
            while pos < end:
                t = int(lead[pos - s.prompt_len]) + 1 if pos - s.prompt_len < n else 1
                t = min(t, end - pos)
                rounds += 1
                toks += t
                pos += t
    return {"tau": toks / max(rounds, 1), "acc": (hits / cnt.clamp(min=1)).tolist(), "rounds": rounds}


def drafter_lookup(drafter, target_model) -> torch.Tensor:
    """Target id -> draft-vocab index (-1 when outside) as an int64 table of size V_target."""
    V = target_model.get_output_embeddings().weight.shape[0]
    if drafter.draft_vocab is None:
        return torch.arange(V)
    lk = torch.full((V,), -1, dtype=torch.long)
    lk[drafter.draft_vocab] = torch.arange(len(drafter.draft_vocab))
    return lk


# ----------------------------------------------------------------------------------------------------------------
# 4. the training loop


def build_drafter(cfg: TrainConfig, target, draft_vocab):
    from .drafter import DFlashDrafter, DrafterConfig, init_from_target

    tc = target.model.config
    dcfg = DrafterConfig(
        hidden_size=target.hidden_size, intermediate_size=cfg.intermediate_size or int(tc.intermediate_size),
        num_attention_heads=int(tc.num_attention_heads), num_key_value_heads=int(tc.num_key_value_heads),
        head_dim=int(getattr(tc, "head_dim", None) or target.hidden_size // tc.num_attention_heads),
        rms_norm_eps=float(tc.rms_norm_eps),
        rope_theta=float(getattr(tc, "rope_theta", None) or (getattr(tc, "rope_parameters", None) or {}).get("rope_theta", 10000.0)),
        attention_bias=False, num_hidden_layers=cfg.num_layers, block_size=cfg.block_size,
        num_target_layers=target.n_layers, vocab_size=target.vocab_size, qk_norm=cfg.qk_norm,
        dflash_config={"mask_token_id": None, "target_layer_ids": layer_ids_for(cfg, target.n_layers)})
    drafter = DFlashDrafter(dcfg, draft_vocab=draft_vocab)
    if cfg.init_from_target:
        init_from_target(drafter, target.model)
    return drafter


def grow(drafter, src_state: dict) -> None:
    """Start a deeper drafter from a trained shallower one: copy every matching tensor; each layer the source lacks
    gets zero ``o_proj``/``down_proj`` so it starts as the identity (the drafter's function is unchanged)."""
    own = drafter.state_dict()
    n_src = len({k.split(".")[1] for k in src_state if k.startswith("layers.")})
    with torch.no_grad():
        for k, v in src_state.items():
            if k in own and own[k].shape == v.shape:
                own[k].copy_(v)
        for layer in drafter.layers[n_src:]:
            layer.self_attn.o_proj.weight.zero_()
            layer.mlp.down_proj.weight.zero_()
    print(f"[train] grown from {n_src} to {len(drafter.layers)} layers", flush=True)


def grow_source(path: str, target) -> dict:
    """What ``--grow-from`` starts from, as ``{"model": state_dict, "draft_vocab": ids or None}``: a training state
    (``state.pt``) as saved, or a drafter checkpoint folder loaded for ``target`` in float32 (e.g. the shipped
    drafter, to train it further on new data).

    Raises:
        InputError("grow_from"): a checkpoint folder that does not fit the target (:func:`dtree.drafter.load_drafter`).
    """
    from .errors import InputError

    if Path(path).is_dir():
        from .drafter import load_drafter

        try:
            d = load_drafter(path, target, dtype=torch.float32)
        except InputError as e:
            raise InputError("grow_from", str(e)) from None
        sd = {k: v.detach().clone() for k, v in d.state_dict().items()}
        vocab = getattr(d, "draft_vocab", None)
        return {"model": sd, "draft_vocab": None if vocab is None else vocab.clone()}
    return torch.load(path, weights_only=False)


def lr_at(cfg: TrainConfig, step: int, progress: float) -> float:
    """Linear warmup for ``warmup`` steps, then cosine from ``lr`` to ``min_lr`` over ``progress`` in [0, 1]."""
    if step < cfg.warmup:
        return cfg.lr * (step + 1) / cfg.warmup
    p = min(max(progress, 0.0), 1.0)
    return cfg.min_lr + 0.5 * (cfg.lr - cfg.min_lr) * (1 + math.cos(math.pi * p))


def improves(best_per_set: dict[str, float], per_set: dict[str, float], best_mean: float = -1.0) -> bool:
    """Whether an evaluation's held-out tau per data folder (``per_set``) beats the best so far (``best_per_set``).

    The mean is compared over the folders both evaluations have: a folder whose held-out answers appeared since the
    best (a generator writing it alongside training) joins the comparison from the next evaluation on, instead of
    pulling a mean of different folders below the old one (or above it). No folder in common (or no best yet) counts
    as an improvement; an empty ``per_set`` never does. ``best_mean`` is the only record of a state saved before
    per-folder bests were kept: with an empty ``best_per_set`` the plain mean is compared with it.
    """
    if not per_set:
        return False
    if not best_per_set:
        return sum(per_set.values()) / len(per_set) > best_mean
    common = [k for k in per_set if k in best_per_set]
    if not common:
        return True
    return sum(per_set[k] for k in common) > sum(best_per_set[k] for k in common)


def train(cfg: TrainConfig) -> dict:
    """Train (or resume) the drafter on the generated data; returns the final log dict."""
    from tqdm import tqdm

    from .drafter import save_drafter
    from .models import load_target

    torch.set_num_threads(cfg.threads)
    torch.manual_seed(cfg.seed)
    target = load_target(cfg.target, dtype="float32", device="cpu")
    layer_ids = layer_ids_for(cfg, target.n_layers)
    sets = open_datasets(cfg, layer_ids)
    trn = [s for d in sets for s in d.trn]
    if not sets[0].trn:
        from .errors import InputError
        raise InputError("data_dir", f"no generated training data in {cfg.data_dir}: run --phase gen first")
    state_path = state_path_of(cfg)
    state = torch.load(state_path, weights_only=False) if state_path.exists() else None
    if state is not None and state["cfg"]["num_layers"] == cfg.num_layers and state["cfg"]["qk_norm"] == cfg.qk_norm:
        draft_vocab = state["draft_vocab"]
    else:
        state = None
        draft_vocab = None if cfg.draft_vocab == "full" else build_draft_vocab(trn, target.eos_ids)
    src = grow_source(cfg.grow_from, target) if (state is None and cfg.grow_from) else None
    if src is not None:
        draft_vocab = src["draft_vocab"]
    if cfg.draft_vocab == "full":
        draft_vocab = None
    elif cfg.draft_vocab == "responses+questions" and draft_vocab is not None:  # may widen a resumed vocabulary
        # (a draft vocabulary only indexes rows of the target's lm_head: widening it adds no parameters)
        q_ids: set[int] = set()
        for d in sets:
            q_ids |= question_tokens(target.tokenizer, d.prompts, d.held_idx, cfg.vocab_min_count)
        wide = torch.tensor(sorted(set(build_draft_vocab(trn, target.eos_ids).tolist()) | q_ids |
                                   set(draft_vocab.tolist() if draft_vocab is not None else [])), dtype=torch.long)
        if draft_vocab is None or len(wide) > len(draft_vocab):
            draft_vocab = wide
    drafter = build_drafter(cfg, target, draft_vocab)
    if src is not None:
        grow(drafter, src["model"])
    opt = torch.optim.AdamW([p for p in drafter.parameters() if p.requires_grad], lr=cfg.lr,
                            weight_decay=cfg.weight_decay, betas=(0.9, 0.95))
    step, train_s, best = 0, 0.0, -1.0
    best_per: dict[str, float] = {}  # held-out tau per data folder at the best evaluation
    if state is not None:
        missing, unexpected = drafter.load_state_dict(
            {k: v for k, v in state["model"].items() if k != "draft_vocab"}, strict=False)
        assert set(missing) <= {"draft_vocab"} and not unexpected, (missing, unexpected)
        opt.load_state_dict(state["opt"])
        step, train_s, best = state["step"], state["train_s"], state["best_tau"]
        best_per = dict(state.get("best_per_set") or {})
        if state.get("best_sets", [sets[0].name]) != [d.name for d in sets]:  # best = mean over other folders
            print(f"[train] data folders differ from the saved state's ({state.get('best_sets')}): best held-out "
                  f"tau {best:.3f} is not comparable, reset", flush=True)
            best, best_per = -1.0, {}
        print(f"[train] resumed at step {step} ({train_s / 60:.1f} min trained, best held-out tau {best:.3f})")
        if step >= cfg.steps or (cfg.time_limit_min and train_s >= cfg.time_limit_min * 60):
            print(f"[train] the saved state is already past --steps {cfg.steps} / --time-limit-min "
                  f"{cfg.time_limit_min:g}: no training step will run (raise them to train on)", flush=True)
    lookup = drafter_lookup(drafter, target.model)
    for d in sets:
        soft = ""
        if cfg.soft_weight > 0 and not any(s.soft is not None for s in d.trn):
            soft = "; no stored target distribution (generated with --soft-topk 0): its greedy tokens only"
        print(f"[train] {d.name}: {len(d.trn)} train sequences ({d.n_tok} response tokens), {len(d.held)} held out"
              f"{soft}", flush=True)
    print(f"[train] draft vocab {'full' if draft_vocab is None else len(draft_vocab)}; "
          f"{sum(p.numel() for p in drafter.parameters())/1e6:.2f}M params", flush=True)
    gen = torch.Generator().manual_seed(cfg.seed + step)
    out_dir = out_dir_of(cfg)
    limit_s = cfg.time_limit_min * 60

    def save_state():
        tmp = state_path.with_suffix(".tmp")
        torch.save({"model": drafter.state_dict(), "opt": opt.state_dict(), "step": step, "train_s": train_s,
                    "best_tau": best, "best_per_set": best_per, "best_sets": [d.name for d in sets],
                    "cfg": asdict(cfg),
                    "draft_vocab": draft_vocab}, tmp)
        os.replace(tmp, state_path)

    def refresh():  # pick up shards written by a generator running alongside (draft vocab stays fixed)
        for d in sets:
            n = d.refresh(cfg, layer_ids)
            if n:
                print(f"[train] {d.name}: +{n} new sequences: {len(d.trn)} ({d.n_tok} response tokens)", flush=True)

    def evaluate():
        nonlocal best, best_per
        refresh()
        drafter.eval()
        rs = {d.name: heldout_tau(drafter, target.model, d.held) for d in sets if d.held}
        drafter.train()
        score = sum(r["tau"] for r in rs.values()) / len(rs) if rs else float("nan")
        per_set = {k: r["tau"] for k, r in rs.items()}
        improved = improves(best_per, per_set, best)
        if improved:
            best, best_per = score, per_set
            if out_dir is not None:
                drafter.config.vocab_size = target.vocab_size
                save_drafter(drafter, out_dir)
                meta = {"heldout_tau": best, "heldout_tau_per_set": {k: r["tau"] for k, r in rs.items()},
                        "step": step, "train_minutes": train_s / 60,
                        "train_sequences": {d.name: len(d.trn) for d in sets},
                        "train_response_tokens": {d.name: d.n_tok for d in sets},
                        "heldout_prompts": {d.name: len(d.held) for d in sets},
                        "sources": {d.name: source_record(d) for d in sets},
                        "acc_per_depth": {k: r["acc"] for k, r in rs.items()}, "config": run_config(cfg)}
                (out_dir / "best_checkpoint.json").write_text(json.dumps(meta, indent=1))
        per = " ".join(f"{k} {r['tau']:.3f}" for k, r in rs.items())
        acc = next(iter(rs.values()))["acc"][:4] if rs else []
        print(f"[eval] step {step} held-out tau {score:.3f} ({per}; best {best:.3f}"
              f"{', saved' if improved and out_dir else ''}) acc@1..4 {' '.join(f'{a:.2f}' for a in acc)}", flush=True)
        return {"tau": score, "tau_per_set": {k: r["tau"] for k, r in rs.items()}}

    stop = []  # SIGTERM/SIGINT: finish the step, save the state, exit cleanly (resume later)
    import signal

    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.append(1))
    drafter.train()
    bar = tqdm(total=cfg.steps, initial=step, desc="train", unit="step", mininterval=30)
    last_state, ema = time.perf_counter(), None
    if src is not None:  # the starting point's held-out tau (a continued run must beat it to save a checkpoint)
        evaluate()
    while step < cfg.steps and not (limit_s and train_s >= limit_s) and not stop:
        t0 = time.perf_counter()
        progress = train_s / limit_s if limit_s else step / cfg.steps
        lr = lr_at(cfg, step, progress)
        for g in opt.param_groups:
            g["lr"] = lr
        batch = draw_batch(sets, cfg.batch_seqs, cfg.extra_share, gen)
        feats, tokens, anchors, ok, labels = make_batch(batch, cfg.anchors_per_seq, cfg.block_size, gen)
        soft = None
        if cfg.soft_weight > 0:
            s_ids, s_p = soft_targets(batch, anchors, labels)
            soft = (to_draft_ids(s_ids, lookup), s_p)
        loss = train_step(drafter, target.model, opt, feats, tokens, anchors, to_draft_ids(labels, lookup),
                          cfg.gamma_w, cfg.grad_clip, soft, cfg.soft_weight)
        step += 1
        train_s += time.perf_counter() - t0
        ema = loss.item() if ema is None else 0.95 * ema + 0.05 * loss.item()
        bar.update(1)
        if step % 10 == 0:
            print(f"[train] step {step} loss {loss.item():.3f} (ema {ema:.3f}) lr {lr:.2e} "
                  f"{train_s / step:.2f} s/step {train_s / 60:.1f} min", flush=True)
        if step % cfg.eval_every == 0:
            evaluate()
        if time.perf_counter() - last_state > cfg.state_every_s:
            save_state()
            last_state = time.perf_counter()
    bar.close()
    if stop:
        save_state()
        print(f"[train] stopped at step {step}; state saved to {state_path}", flush=True)
        return {"step": step, "loss": ema, "train_s": train_s}
    r = evaluate()
    save_state()
    if out_dir is not None and not (out_dir / "model.safetensors").exists():
        print(f"[train] no checkpoint written to {out_dir}: no evaluation of this run beat the saved state's best "
              f"held-out tau {best:.3f} (its checkpoint went to the --out of the run that reached it)", flush=True)
    return {"step": step, "loss": ema, "train_s": train_s, **r}


# ----------------------------------------------------------------------------------------------------------------
# CLI


_CHOICES = {"phase": ["gen", "train", "all"], "draft_vocab": ["responses", "responses+questions", "full"],
            "gen_dtype": ["float32", "bfloat16", "float16"]}


def _field_help() -> dict[str, str]:
    """The trailing comments of :class:`TrainConfig` (one source of truth for the CLI help)."""
    import inspect
    import re

    helps: dict[str, str] = {}
    last = None
    for line in inspect.getsource(TrainConfig).splitlines():
        m = re.match(r"\s+(\w+): [^=]+=[^#]*(?:#\s*(.*))?$", line)
        if m:
            last = m.group(1)
            helps[last] = m.group(2) or ""
        elif last and line.strip().startswith("#") and len(line) - len(line.lstrip()) > 8:  # continuation
            helps[last] += " " + line.strip()[1:].strip()
        elif line.strip().startswith("#"):  # a section comment ("# model") ends the previous field's help
            last = None
    return helps


_TRUE, _FALSE = ("1", "true", "yes", "on"), ("0", "false", "no", "off")


def parse_bool(text: str) -> bool:
    """``--qk-norm true`` and the like: one of 1/true/yes/on or 0/false/no/off (any case). Raises
    argparse.ArgumentTypeError otherwise (exit 2 naming the option), so a typo like ``ture`` does not flip a switch."""
    t = str(text).strip().lower()
    if t in _TRUE or t in _FALSE:
        return t in _TRUE
    raise argparse.ArgumentTypeError(f"expected one of {'/'.join(_TRUE)} or {'/'.join(_FALSE)}, got {text!r}")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add one ``--flag`` per :class:`TrainConfig` field (same names, dashes for underscores)."""
    helps = _field_help()
    for f in fields(TrainConfig):
        flag = "--" + f.name.replace("_", "-")
        h = helps.get(f.name, "")
        if "(default" not in h:  # a field whose comment names its own default ("<data_dir>/...") keeps only that
            h = f"{h} (default {f.default!r})"
        h = h.strip().replace("%", "%%")
        if f.type in ("bool", bool):
            parser.add_argument(flag, type=parse_bool, default=f.default, metavar="BOOL", help=h)
        else:
            typ = {"int": int, "float": float, "str": str}.get(f.type if isinstance(f.type, str) else f.type.__name__)
            parser.add_argument(flag, type=typ, default=f.default, help=h, choices=_CHOICES.get(f.name))


def config_from_args(args: argparse.Namespace) -> TrainConfig:
    return TrainConfig(**{f.name: getattr(args, f.name) for f in fields(TrainConfig) if hasattr(args, f.name)})


def check_paths(cfg: TrainConfig) -> None:
    """Fail fast, before the target loads, on folders and files the run would only look for later.

    Raises InputError: a ``--data-dir`` that exists but is not a folder; ``--phase train`` with a ``--data-dir`` that
    is not a folder or holds no ``responses.jsonl``; ``--phase gen``/``all`` with a prompts file that is missing, bad,
    or has no more prompts than ``--n-heldout``; an ``--out`` that is an existing file or a ``--state`` that is an
    existing folder, or either where no file can be created (checked by creating and removing one, so a run does not
    train for an hour and then fail at its first save); an ``--extra-data`` folder that is missing or has no
    ``source.json``; an option only the other phase reads changed from its default (:data:`_GEN_ONLY` with ``--phase
    train``, :data:`_TRAIN_ONLY` with ``--phase gen``, e.g. ``--extra-data``: gen only answers into ``--data-dir``);
    a ``--grow-from`` that is not a file; an ``--extra-share`` outside [0, 1].
    """
    from .errors import InputError, check_output_file, check_output_folder

    if Path(cfg.data_dir).exists() and not Path(cfg.data_dir).is_dir():
        raise InputError("data_dir", f"{cfg.data_dir} is a file, not a folder (where generated answers go)")
    if cfg.phase in ("gen", "all"):
        n_rows = len(load_prompts(cfg.prompts, sys.maxsize, cfg.seed))  # reads the file: a bad one fails here
        if n_rows == 0:
            raise InputError("prompts", f"{cfg.prompts} holds no prompts: give a JSONL file with one prompt per line")
        if n_rows <= cfg.n_heldout:
            raise InputError("n_heldout", f"{cfg.prompts} has {n_rows} prompts and --n-heldout {cfg.n_heldout} holds "
                                          f"them all out, leaving none to train on: lower --n-heldout")
    if cfg.phase in ("train", "all"):
        out = out_dir_of(cfg)
        if out.exists() and not out.is_dir():
            raise InputError("out", f"{out} is a file; --out names the folder the checkpoint is written to")
        state = state_path_of(cfg)
        if state.is_dir():
            raise InputError("state", f"{state} is a folder; --state names the training-state file (state.pt)")
        check_output_folder("out", out)  # writable (or creatable) now, not at the first save after minutes of work
        check_output_file("state", state)
        check_state_shape(cfg, state)
    if cfg.phase == "train" and not Path(cfg.data_dir).is_dir():
        raise InputError("data_dir", f"{cfg.data_dir} is not a folder: generate data with --phase gen first")
    if cfg.phase == "train" and not (Path(cfg.data_dir) / "responses.jsonl").is_file():
        raise InputError("data_dir", f"{cfg.data_dir} holds no generated answers (responses.jsonl): run --phase gen "
                                     f"with this --data-dir first")
    if cfg.phase == "train":  # every answer record readable now, before the target loads
        read_responses(cfg.data_dir)
        for folder in extra_folders(cfg):
            read_responses(folder, "extra_data")
    src = read_source(cfg.data_dir) if cfg.phase == "train" else None
    if src is not None and cfg.prompts != TrainConfig().prompts and str(Path(cfg.prompts).resolve()) != src[1]:
        raise InputError("prompts", f"{cfg.data_dir} was generated from {src[1]}, and --phase train reads its prompts "
                                    f"(and held-out split) from there: drop --prompts")
    # an option the phase never reads, changed from its default, is a typo or a wrong phase: said now, not after an
    # hour of generation or training that ignored it
    only = {"gen": _TRAIN_ONLY, "train": _GEN_ONLY}.get(cfg.phase, ())
    default = TrainConfig()
    for name in only:
        if getattr(cfg, name) != getattr(default, name):
            other = "train (and all)" if cfg.phase == "gen" else "gen (and all)"
            raise InputError(name, f"is read by --phase {other}, not by --phase {cfg.phase}: drop "
                                   f"--{name.replace('_', '-')}, or run the phase that uses it")
    if cfg.phase in ("train", "all"):
        check_extra_data(cfg)
        if cfg.grow_from and not (Path(cfg.grow_from).is_file() or (Path(cfg.grow_from) / "config.json").is_file()):
            raise InputError("grow_from", f"{cfg.grow_from} is neither a file (a training state.pt to start from) nor "
                                          "a drafter checkpoint folder (config.json, model.safetensors)")


# options that shape the drafter's weights: a saved state resumes only under the same values
_SHAPE_FIELDS = ("num_layers", "qk_norm", "intermediate_size", "num_target_feats", "target_layer_ids")


def check_state_shape(cfg: TrainConfig, state: Path) -> None:
    """Refuse, before the target loads, a saved training state (``state``) whose drafter has another shape than
    ``cfg`` asks for (:data:`_SHAPE_FIELDS`): resuming cannot load it, and starting afresh would overwrite hours of
    training at the first save. Growing that very state (``--grow-from`` naming the same file) is allowed.

    Raises:
        InputError: naming the first differing option, the state's value and this command's.
    """
    from .errors import InputError

    if not state.is_file() or (cfg.grow_from and Path(cfg.grow_from).resolve() == state.resolve()):
        return
    try:
        saved = torch.load(state, weights_only=False, map_location="cpu", mmap=True)["cfg"]  # cfg only: no full read
    except Exception as e:  # noqa: BLE001 -- a damaged or foreign file: say which and why
        raise InputError("state", f"{state} is not a readable training state ({type(e).__name__}: {e}): move it "
                                  f"away or name another --state") from None
    for name in _SHAPE_FIELDS:
        if name in saved and saved[name] != getattr(cfg, name):
            raise InputError(name, f"the training state {state} has {name.replace('_', '-')} {saved[name]!r}, this "
                                   f"command {getattr(cfg, name)!r}: resume it with the same value, start a new run "
                                   f"with another --state (or --data-dir), or grow it with --grow-from {state}")


# options only one phase reads (check_paths refuses them, when changed from their defaults, in the other phase)
_GEN_ONLY = ("n_prompts", "gen_skip", "max_new_tokens", "gen_batch", "gen_dtype", "soft_topk")
_TRAIN_ONLY = ("extra_data", "extra_share", "num_layers", "block_size", "intermediate_size", "qk_norm",
               "init_from_target", "grow_from", "draft_vocab", "vocab_min_count", "steps", "batch_seqs",
               "anchors_per_seq", "lr", "min_lr", "warmup", "weight_decay", "grad_clip", "gamma_w", "soft_weight",
               "out", "state", "eval_every", "state_every_s", "time_limit_min")

_LOWER_BOUNDS = {  # field: (bound, inclusive) -- the smallest value a run can work with
    "n_prompts": (1, True), "n_heldout": (0, True), "gen_skip": (0, True), "max_new_tokens": (1, True),
    "gen_batch": (1, True), "num_target_feats": (1, True), "num_layers": (1, True), "block_size": (2, True),
    "intermediate_size": (0, True), "vocab_min_count": (1, True), "steps": (1, True), "batch_seqs": (1, True),
    "anchors_per_seq": (1, True), "lr": (0, False), "min_lr": (0, True), "warmup": (0, True),
    "weight_decay": (0, True), "grad_clip": (0, False), "gamma_w": (0, False), "eval_every": (1, True),
    "state_every_s": (0, False), "time_limit_min": (0, True), "threads": (1, True), "soft_topk": (0, True)}


def check_numbers(cfg: TrainConfig) -> None:
    """Fail fast, before the target loads, on a numeric option no run can use (0 threads, a batch of 0, negative
    steps or token counts, a non-finite or non-positive learning rate, ...).

    Raises InputError naming the option and its allowed range (:data:`_LOWER_BOUNDS`; ``extra_share`` and
    ``soft_weight`` in [0, 1] for every phase, ``soft_topk`` at most 1024), or ``n_heldout`` when it leaves no
    prompt to train on.
    """
    from .errors import InputError, check_float, check_int

    for name, (bound, inclusive) in _LOWER_BOUNDS.items():
        v = getattr(cfg, name)
        if isinstance(v, float):  # finite and >= bound (check_float), then strictly above it where needed
            check_float(name, v, bound)
            if not inclusive and v == bound:
                raise InputError(name, f"must be > {bound}, got {v}")
        else:
            check_int(name, v, bound)
    check_share("extra_share", cfg.extra_share)  # every phase: a wrong value is a typo whichever phase runs
    check_share("soft_weight", cfg.soft_weight)
    if cfg.soft_topk > 1024:
        raise InputError("soft_topk", f"must be <= 1024 (the top-k stored per answer token), got {cfg.soft_topk}")
    if cfg.target_layer_ids:
        parse_layer_ids(cfg.target_layer_ids)
    if cfg.phase in ("gen", "all") and cfg.n_heldout >= cfg.n_prompts:
        raise InputError("n_heldout", f"{cfg.n_heldout} held-out prompts leave none of --n-prompts {cfg.n_prompts} "
                                      "to train on")


def run(args: argparse.Namespace) -> int:
    """Run the stages named by ``--phase``; returns a process exit code (0 ok, 2 bad input)."""
    from .errors import InputError

    cfg = config_from_args(args)
    try:
        check_numbers(cfg)
        check_paths(cfg)
        if cfg.phase in ("gen", "all"):
            generate(cfg)
        if cfg.phase in ("train", "all"):
            train(cfg)
    except InputError as e:
        print(f"error: {e.as_option(args)}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    ap = argparse.ArgumentParser(prog="python -m dtree.train", description=__doc__.splitlines()[0])
    add_arguments(ap)
    sys.exit(run(ap.parse_args()))
