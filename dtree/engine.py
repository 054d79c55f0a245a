"""The decoding engine: prefill -> draft -> build tree -> verify -> walk -> commit, one record per round.

Read top to bottom like gpt-fast: one small function per step, state passed explicitly. :func:`generate` runs one
prompt with one method (``ar``, ``chain``, ``ddtree``, ``caddtree``, or a variant of the last two: ``-cal``,
``-adapt``, ``-spine``, and for caddtree ``-rawcv`` and ``-fallback``, whose plain target steps skip the drafter) and
returns a :class:`~dtree.records.RunRecord`; every round goes to an optional sink (the trace store) as soon
as it completes.

Losslessness: the tree is fixed before the target runs; the target then draws one token per node (argmax at
temperature 0, a sample from softmax(logits / T) otherwise) and the walk follows the child whose token matches. Every
committed token is therefore a draw from the target's own conditional given the committed prefix (DDTree, spec 2.6).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch
from transformers import DynamicCache

from . import trees
from .errors import InputError, check_float, check_int
from .records import (  # noqa: F401
    ALL_METHODS,
    METHODS,
    MethodSpec,
    RoundRecord,
    RunRecord,
    parse_method,
)
from .trees import DraftTree

MAX_BUDGET = 1024
FALLBACK_MAX_SKIP = 16  # -fallback: the longest run of plain target steps between two drafted rounds
DEFAULT_BUDGET = {"chain": None, "ddtree": 16, "caddtree": 256, "ar": None}


@dataclass
class DecodeConfig:
    """Parameters of one decoding run.

    Attributes:
        method: ``ar`` (plain target decoding), ``chain`` (DFlash: the drafter's top-1 block), ``ddtree`` (best-first
            tree with a fixed node budget) or ``caddtree`` (per-round greedy budget from the cost model); ddtree and
            caddtree also accept the variant names ``<base>-cal``, ``<base>-adapt``, ``<base>-spine``,
            ``<base>-cal-spine`` and ``<base>-adapt-spine``, and caddtree ``-rawcv`` and ``-fallback`` combined with
            those (:func:`dtree.records.parse_method`), which :meth:`validated` turns into the base method plus the flags.
        budget: ddtree: node budget B (non-root nodes, 0..1024; default 16). caddtree: the largest budget the greedy
            rule may reach (default 256). Ignored for ar and chain.
        max_new_tokens: tokens to generate (>= 1; prompt + new tokens + one block must fit the model's context).
        temperature: 0 = greedy; > 0 samples from softmax(logits / T) (lossless, spec 2.6).
        seed: seed of the sampling generator (used only when temperature > 0).
        topk_log: k of the drafter's top-k marginals logged per depth (1..1024); ddtree runs log at least ``budget``
            ranks so that replay at their own budget is exact.
        spine: ddtree / caddtree: the top-1 chain is always in the tree (``build_ddtree(spine=True)``, spec 5 item 12).
        calibrated: ddtree / caddtree: rank nodes and compute Phi(n) with calibrated path probabilities (needs a
            :class:`dtree.calibration.Calibration` passed to :func:`generate`).
        adaptive: ddtree / caddtree: rank nodes and compute Phi(n) with path probabilities calibrated during the run
            from its own earlier rounds (:class:`dtree.calibration.OnlineCalibration`; no calibration needed).
        raw_cv: caddtree: the greedy stop uses the measured verify cost (the profile's medians made non-decreasing)
            instead of its convex fit (``CostModel.with_curve("measured")``); the run stores that cost model.
        fallback: caddtree: after a drafted round whose chosen tree is predicted slower than a plain target step
            (theta(n*) < 1 / Cv(0; L), both from the run's cost model), skip drafting for the next k rounds (plain
            target steps, logged as root-only rounds without marginals), k = 1, 2, 4, ... up to
            :data:`FALLBACK_MAX_SKIP` while consecutive drafted rounds keep failing, back to 1 once one pays. A dtree
            extension (not in the CaDDTree paper): the greedy rule may stop at "no draft" as well as at n nodes.
    """

    method: str = "caddtree"
    budget: int | None = None
    max_new_tokens: int = 128
    temperature: float = 0.0
    seed: int = 0
    topk_log: int = 32
    spine: bool = False
    calibrated: bool = False
    adaptive: bool = False
    raw_cv: bool = False
    fallback: bool = False

    @property
    def name(self) -> str:
        """The method's full name, e.g. ``caddtree-cal-spine`` (what runs and bench rows are labelled with)."""
        spec = parse_method(self.method)
        if spec.base in ("ddtree", "caddtree"):
            return MethodSpec(spec.base, spec.calibrated or bool(self.calibrated), spec.spine or bool(self.spine),
                              spec.adaptive or bool(self.adaptive), spec.raw_cv or bool(self.raw_cv),
                              spec.fallback or bool(self.fallback)).name
        return spec.base

    def validated(self, max_context: int | None, prompt_len: int, block_size: int) -> DecodeConfig:
        """Return a copy with defaults filled in and ``method`` reduced to its base (the variant's options moved to
        ``spine`` / ``calibrated`` / ``adaptive`` / ``raw_cv`` / ``fallback``); raise :class:`InputError` naming the
        bad field and its range. ``max_context`` None (model not loaded yet) checks ``max_new_tokens`` >= 1 only."""
        spec = parse_method(self.method)
        method = spec.base
        spine = spec.spine or bool(self.spine)
        calibrated = spec.calibrated or bool(self.calibrated)
        adaptive = spec.adaptive or bool(self.adaptive)
        if (spine or calibrated or adaptive) and method not in ("ddtree", "caddtree"):
            raise InputError("spine" if spine else "calibrated" if calibrated else "adaptive",
                             f"applies to ddtree and caddtree only, not {method}")
        if calibrated and adaptive:
            raise InputError("adaptive", "use a fitted calibration (-cal) or one learnt during the run (-adapt), not "
                                         "both")
        raw_cv = spec.raw_cv or bool(self.raw_cv)
        if raw_cv and method != "caddtree":
            raise InputError("raw_cv", f"applies to caddtree only (its cost curve), not {method}")
        fallback = spec.fallback or bool(self.fallback)
        if fallback and method != "caddtree":
            raise InputError("fallback", f"applies to caddtree only (its predicted throughput), not {method}")
        budget = self.budget if self.budget is not None else DEFAULT_BUDGET[method]
        if budget is not None:
            budget = check_int("budget", budget, 0, MAX_BUDGET)
        room = None if max_context is None else max_context - prompt_len - block_size
        if room is not None and room < 1:
            raise InputError("prompt", f"is {prompt_len} tokens; with one block of {block_size} it must stay below "
                                       f"the model's context of {max_context} tokens")
        if room is not None and isinstance(self.max_new_tokens, int) and self.max_new_tokens > room:
            raise InputError("max_new_tokens", f"must be in [1, {room}], got {self.max_new_tokens}: the prompt is "
                                               f"{prompt_len} tokens, so with one block of {block_size} only {room} "
                                               f"more fit the model's context of {max_context} (shorten the prompt or "
                                               "ask fewer tokens)")
        max_new = check_int("max_new_tokens", self.max_new_tokens, 1, room)
        temperature = check_float("temperature", self.temperature, 0.0, 100.0)
        seed = check_int("seed", self.seed, 0, 2**63 - 1)
        topk = check_int("topk_log", self.topk_log, 1, MAX_BUDGET)
        return DecodeConfig(method, budget, max_new, temperature, seed, topk, spine, calibrated, adaptive, raw_cv,
                            fallback)


# ----------------------------------------------------------------------------------------------------------- steps


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def sample_tokens(logits: torch.Tensor, temperature: float, generator: torch.Generator | None) -> torch.Tensor:
    """One target token per row: argmax at temperature 0, else a draw from softmax(logits / T).

    Args: logits ``[n, V]`` (any float dtype). Returns ``[n]`` int64 on the logits' device.
    """
    if temperature <= 0.0:
        return logits.argmax(dim=-1)
    probs = torch.softmax(logits.float() / temperature, dim=-1)
    return torch.multinomial(probs, 1, generator=generator).squeeze(-1)


@torch.inference_mode()
def prefill(model, prompt_ids: list[int], cache: DynamicCache, want_hidden: bool):
    """Run the target over the prompt, filling ``cache``.

    Returns ``(last_logits [V], hidden_states)`` where ``hidden_states`` is the HF tuple (embeddings + one entry per
    layer, each ``[1, P, H]``) or None when ``want_hidden`` is False.
    """
    ids = torch.tensor([prompt_ids], device=model.device)
    out = model(input_ids=ids, cache=cache, use_cache=True, output_hidden_states=want_hidden, logits_to_keep=1)
    return out.logits[0, -1], (out.hidden_states if want_hidden else None)


@torch.inference_mode()
def decode_one_token(model, token: int, position: int, cache: DynamicCache) -> torch.Tensor:
    """AR step: the target's logits ``[V]`` for the token after ``token`` placed at ``position``."""
    ids = torch.tensor([[token]], device=model.device)
    pos = torch.tensor([[position]], device=model.device)
    out = model(input_ids=ids, position_ids=pos, cache=cache, use_cache=True)
    return out.logits[0, -1]


@torch.inference_mode()
def verify_tree(model, tree: DraftTree, start: int, cache: DynamicCache, dtype: torch.dtype, widths=()):
    """ONE target forward over the whole tree with tree attention.

    Token ids are ``[anchor, node tokens...]``, positions ``start + depth`` and an additive float mask (0 where a node
    may attend: all context and its ancestors and itself; ``finfo(dtype).min`` elsewhere) (DDTree, spec 2.4).
    A forward of 2 or more tokens is padded to the next of ``widths`` with inert tokens
    (:func:`dtree.trees.verify_width`, :func:`dtree.trees.tree_attention_inputs` ``width``), whose cache entries are
    cropped again here: where the matmul library is slower on some narrow widths than on wider ones (fp32 on CPU,
    :attr:`dtree.models.Target.verify_widths`), the padded forward is faster and gives the same logits.
    Appends ``n_nodes + 1`` entries to ``cache``.

    Returns ``(logits [n+1, V], hidden_states)`` (HF tuple of ``[1, n+1, H]``).
    """
    n1 = tree.n_nodes + 1
    ids, pos, mask = trees.tree_attention_inputs(tree, start, dtype, model.device, width=trees.verify_width(n1, widths))
    out = model(input_ids=ids, position_ids=pos, attention_mask=mask, cache=cache, use_cache=True,
                output_hidden_states=True)
    pad = ids.shape[1] - n1
    if pad > 0:
        cache.crop(-pad)
        return out.logits[0, :n1], tuple(h[:, :n1] for h in out.hidden_states)
    return out.logits[0], out.hidden_states


@torch.inference_mode()
def compact_cache(cache: DynamicCache, start: int, n_verified: int, accepted: list[int]) -> None:
    """Keep only the accepted nodes' K/V after a tree verify (spec 2.7).

    Before: the cache holds ``start + n_verified`` entries (the verified tree after the committed context). After:
    ``start + len(accepted)`` entries, the accepted nodes in path order. Accepted node i has depth i, so its RoPE
    position already equals its new slot. No copy is made when the path is the tree's first nodes in order.
    """
    keep = len(accepted)
    if accepted != list(range(keep)):
        idx = torch.tensor(accepted, device=cache.layers[0].keys.device) + start
        for layer in cache.layers:
            layer.keys[:, :, start:start + keep] = layer.keys.index_select(2, idx)
            layer.values[:, :, start:start + keep] = layer.values.index_select(2, idx)
    drop = n_verified - keep
    if drop > 0:
        cache.crop(-drop)


def build_tree(method: str, marg: trees.Marginals, anchor: int, budget: int | None, cost_model, start: int,
               spine: bool = False, calibration=None):
    """Dispatch to the tree builder of ``method``; returns ``(tree, reason)``, the reason a one-line explanation.

    ``spine`` and ``calibration`` (a :class:`dtree.calibration.Calibration` or None) are passed to the ddtree and
    caddtree builders (:func:`dtree.trees.build_ddtree`).
    """
    if calibration is None:
        opts = ""
    elif (getattr(calibration, "meta", None) or {}).get("source") == "online":
        n = int(calibration.meta.get("rounds", 0))
        opts = f"calibrated on this run's {n} earlier round{'s' if n != 1 else ''}, "
    else:
        opts = "calibrated, "
    opts += "spine first, " if spine else ""
    if method == "caddtree" and getattr(cost_model, "curve", "convex") == "measured":
        opts += "measured Cv, "
    if method == "chain":
        tree = trees.build_chain(marg, anchor, cost=cost_model, context_len=start)
        return tree, f"chain: the drafter's top-1 token at each of the {tree.n_nodes} depths"
    if method == "ddtree":
        tree = trees.build_ddtree(marg, anchor, budget, cost=cost_model, context_len=start, spine=spine,
                                  calibration=calibration)
        return tree, f"{opts}fixed budget B={budget}"
    if method == "caddtree":
        tree = trees.build_caddtree(marg, anchor, cost_model, start, budget, spine=spine, calibration=calibration)
        n = tree.n_nodes
        s = min(marg.gamma, budget) if spine else 0
        scanned = len(tree.theta_curve) - 1
        if n >= budget and s >= budget:
            why = f"the {s} spine nodes fill the maximum budget {budget}"
        elif n >= budget:
            why = f"reached the maximum budget {budget} while theta(n) still rose"
        elif trees.uses_argmax_stop(cost_model):
            why = (f"argmax stop: theta({n}) = {tree.theta_curve[n]:.2f} tok/s is the highest for n in {s}..{budget} "
                   f"(prefixes scanned up to n = {scanned}; no larger one can win). The measured Cv is not convex, so "
                   f"theta may have local maxima" if scanned > n else f"argmax stop at n={n} (no more candidates)")
        else:
            why = (f"greedy stop: adding node {n + 1} would lower theta from {tree.theta_curve[n]:.2f} "
                   f"to {tree.theta_curve[n + 1]:.2f} tok/s" if len(tree.theta_curve) > n + 1
                   else f"greedy stop at n={n} (no more candidates)")
        if s and n == s:
            why = f"{why} (the {s} spine nodes are always kept)"
        return tree, opts + why
    raise InputError("method", f"no tree builder for {method!r}")


def fallback_decision(tree: DraftTree, cost_model, start: int, skip_next: int) -> tuple[int, int, str]:
    """The ``-fallback`` rule after a drafted round: draft again next round, or take plain target steps first.

    A plain target step commits one token in Cv(0; L) seconds, i.e. theta_AR = 1 / Cv(0; L) tokens/s; the round's
    tree promised theta(n*) = (1 + Phi(n*)) / (Cd + Cv(n*; L)) (CaDDTree, spec 3.2, with the probabilities the method
    ranks by). When theta(n*) < theta_AR no tree of this round paid for its draft, and the drafter is skipped for
    ``skip_next`` rounds; the next back-off doubles (capped at :data:`FALLBACK_MAX_SKIP`). When the tree pays the
    back-off returns to 1.

    Args:
        tree: the round's caddtree (``theta_curve`` filled by :func:`dtree.trees.build_caddtree`).
        cost_model: the run's cost model (its ``cv`` in seconds).
        start: context length L of the round.
        skip_next: the back-off in force (rounds to skip if this round fails).
    Returns:
        ``(skip, next_skip_next, note)``: plain steps to take now (0 or ``skip_next``), the back-off for the next
        failure, and a clause for the round's budget reason (starts with ``"; "``).
    """
    theta_tree = float(tree.theta_curve[tree.n_nodes])
    theta_ar = 1.0 / float(cost_model.cv(0, start))
    if theta_tree < theta_ar:
        return (skip_next, min(2 * skip_next, FALLBACK_MAX_SKIP),
                f"; theta {theta_tree:.2f} < a plain step's {theta_ar:.2f} tok/s: "
                + ("the next round skips the drafter" if skip_next == 1 else
                   f"the next {skip_next} rounds skip the drafter"))
    return 0, 1, ""


# ------------------------------------------------------------------------------------------------------- generate


@dataclass
class _Clock:
    device: torch.device
    t: float = field(default_factory=time.perf_counter)

    def lap(self) -> float:
        """Milliseconds since the previous lap (device work finished first)."""
        _sync(self.device)
        now = time.perf_counter()
        ms, self.t = (now - self.t) * 1e3, now
        return ms


def _finish_output(tokens: list[int], max_new: int, eos_ids: set[int]) -> list[int]:
    """Trim generated tokens to ``max_new`` and after the first EOS (kept)."""
    out = tokens[:max_new]
    for i, t in enumerate(out):
        if t in eos_ids:
            return out[: i + 1]
    return out


def auto_cv_curve(cost_model) -> str | None:
    """Whether plain caddtree should read the measured Cv(n; L) instead of its convex fit, and why (None: keep the fit).

    The paper's greedy stop assumes Cv convex in n (CaDDTree spec 3.3-3.4), which holds on GPUs. On a CPU with the
    few-row kernels of :mod:`dtree.kernels` the measured curve is concave (session 11, 2-core machine: 31 ms for the
    root alone, 37 / 45 / 70 / 92 ms for 2 / 4 / 8 / 16 nodes at L = 64), no convex curve fits it (the fit said 43 ms
    for the root) and caddtree under the fit ran at 0.84x the best fixed budget on GSM8K, against 1.01x with the
    measured curve (20 prompts, side by side). So when :meth:`dtree.cost.CostModel.fit_gap` exceeds
    :data:`dtree.cost.FIT_GAP_WARN`, caddtree uses the measured medians (made non-decreasing in n), as the ``-rawcv``
    variants always do; a profile the fit describes keeps the fit. Cost models that are not table-based, already read
    the measured curve, or carry analytic weights (which replace the table) are left alone.
    """
    from .cost import FIT_GAP_WARN

    if cost_model is None or not hasattr(cost_model, "fit_gap") or getattr(cost_model, "curve", None) != "convex":
        return None
    weights = getattr(cost_model, "weights", None)
    if weights is not None and getattr(weights, "analytic", False):
        return None
    gap = cost_model.fit_gap()
    if gap["rel_gap"] <= FIT_GAP_WARN:
        return None
    return (f"measured: the convex fit of Cv is {100 * gap['rel_gap']:.0f}% off the profile at n = {gap['n']}, "
            f"L = {gap['context']} ({1e3 * gap['fit_s']:.1f} vs {1e3 * gap['raw_s']:.1f} ms)")


def generate(target, prompt_ids: list[int], cfg: DecodeConfig, drafter=None, cost_model=None,
             sink=None, on_round: Callable[[RoundRecord, int], None] | None = None, prompt_text: str = "",
             cost_model_dict: dict | None = None, calibration=None) -> RunRecord:
    """Decode ``prompt_ids`` with one method and return the run record (rounds included).

    Args:
        target: a :class:`dtree.models.Target`.
        prompt_ids: prompt token ids (already chat-templated).
        cfg: the run's parameters (validated here).
        drafter: a DFlash drafter (required for chain / ddtree / caddtree).
        cost_model: a :class:`dtree.cost.CostModel` (required for caddtree; optional otherwise, then node costs and
            theta are filled in for display).
        sink: optional trace store (``begin_run`` / ``add_round`` / ``finish_run`` / ``mark_failed``); each round is
            written in its own transaction as soon as it completes. Time spent in the sink is not counted.
        on_round: optional callback ``(round, n_tokens_so_far)`` for progress bars and live pages.
        calibration: a :class:`dtree.calibration.Calibration`, required by calibrated methods (``-cal``); stored in the
            run's ``params["calibration"]`` so replay can rebuild the same trees. Adaptive methods (``-adapt``) learn
            theirs during the run (:class:`dtree.calibration.OnlineCalibration`, its settings stored in
            ``params["adaptive_calibration"]``) and ignore this argument.
    Returns:
        The :class:`RunRecord`; its ``method`` is the full name (e.g. ``caddtree-cal-spine``), its ``params`` hold the
        validated config (base ``method`` plus ``spine`` / ``calibrated`` / ``adaptive``).
    Raises:
        InputError: bad parameters (nothing is written to the sink then).
    """
    if not prompt_ids:
        raise InputError("prompt", "must not be empty")
    block = drafter.config.block_size if drafter is not None else 1
    cfg = cfg.validated(target.max_context, len(prompt_ids), block)
    if cfg.method != "ar" and drafter is None:
        raise InputError("drafter", f"method {cfg.method} needs a drafter")
    if cfg.method == "caddtree" and cost_model is None:
        raise InputError("cost_model", "caddtree needs a cost model")
    cv_curve = None
    if cfg.method == "caddtree" and not cfg.raw_cv:
        cv_curve = auto_cv_curve(cost_model)
    if cfg.raw_cv or cv_curve is not None:  # the greedy stop on the measured Cv; the run stores the model it used
        cost_model = cost_model.with_curve("measured")
        if cost_model_dict is not None:
            cost_model_dict = {**cost_model_dict, "curve": "measured"}
    if cfg.calibrated and calibration is None:
        raise InputError("calibration", f"{cfg.name} needs a calibration (fit one with python -m dtree calibrate)")
    if not cfg.calibrated:
        calibration = None
    if cfg.adaptive:
        from .calibration import OnlineCalibration

        calibration = OnlineCalibration(depths=block - 1)

    from .models import dtype_name

    params = cfg.__dict__.copy()
    params["verify_widths"] = list(target.verify_widths)  # how its verifies were padded
    params["linear_kernels"] = getattr(target, "linear_kernels", "off")  # which matmul kernels ran them
    if drafter is not None and cfg.method != "ar":  # its dtype sets Cd (dtree.backend.load_drafter_fastest)
        from .drafter import drafter_dtype_name, drafter_head_kernel

        params["drafter_dtype"] = drafter_dtype_name(drafter)
        params["drafter_head_kernel"] = drafter_head_kernel(drafter)
        if getattr(drafter, "fingerprint", None):  # its weights file (sha1 prefix): a retrained checkpoint at one path
            params["drafter_weights"] = drafter.fingerprint  # is another setup for a fit (records.check_one_setup)
    if cv_curve is not None:
        params["cv_curve"] = cv_curve  # why plain caddtree read the measured Cv
    if cfg.adaptive:
        params["adaptive_calibration"] = calibration.settings()
    elif calibration is not None:
        params["calibration"] = calibration.to_dict()
    run = RunRecord(method=cfg.name, params=params, target=target.name,
                    drafter=getattr(drafter, "name", None) if cfg.method != "ar" else None,
                    dtype=dtype_name(target.dtype), device=str(target.device), prompt=prompt_text,
                    prompt_ids=list(prompt_ids),
                    cost_model=cost_model_dict if cost_model_dict is not None else (
                        cost_model.to_dict() if cost_model is not None and hasattr(cost_model, "to_dict") else None))
    if sink is not None:
        sink.begin_run(run)
    try:
        _decode(target, prompt_ids, cfg, drafter, cost_model, run, sink, on_round, calibration)
    except BaseException as e:  # keep what was logged; mark the run
        run.status = "interrupted" if isinstance(e, KeyboardInterrupt) else "failed"
        run.error = f"{type(e).__name__}: {e}"
        if sink is not None:
            sink.mark_failed(run.run_id, run.error, status=run.status)
        raise
    run.status = "complete"
    if sink is not None:
        sink.finish_run(run.run_id, run, "complete")
    return run


def _decode(target, prompt_ids, cfg: DecodeConfig, drafter, cost_model, run: RunRecord, sink, on_round,
            calibration=None) -> None:
    model, device, eos = target.model, target.device, target.eos_ids
    gen = torch.Generator(device=device).manual_seed(cfg.seed) if cfg.temperature > 0 else None
    cache = DynamicCache(config=model.config)
    speculative = cfg.method != "ar"

    clock = _Clock(device)
    last_logits, hidden = prefill(model, prompt_ids, cache, want_hidden=speculative)
    anchor = int(sample_tokens(last_logits[None], cfg.temperature, gen)[0])
    if speculative:
        new_features = drafter.extract_features(hidden)
        dcache = drafter.new_cache()
    run.prefill_ms = clock.lap()

    start = len(prompt_ids)
    generated: list[int] = []
    sink_s = 0.0
    skip_left, skip_next, skip_why = 0, 1, ""  # -fallback: plain target steps still to take, the next back-off
    t_decode = time.perf_counter()
    done = False
    while len(generated) < cfg.max_new_tokens and not done:
        clock.lap()
        if speculative and skip_left > 0:
            # -fallback: a plain target step (root-only verify); its features feed the drafter's next round
            tree = trees.root_only_tree(anchor)
            logits, hidden = verify_tree(model, tree, start, cache, target.dtype)
            bonus = int(sample_tokens(logits, cfg.temperature, gen)[0])
            verify_ms = clock.lap()
            feats = drafter.extract_features(hidden)
            new_features = torch.cat([new_features, feats[:, :1].to(new_features.dtype)], dim=1)
            commit_ms = clock.lap()
            skip_left -= 1
            if cfg.adaptive:  # the plain step's token extends the path the earlier rounds are scored against
                calibration.observe_round(None, [anchor], bonus)
            rnd = RoundRecord(index=len(run.rounds), start=start, anchor=anchor,
                              marg_tokens=np.zeros((0, 0), np.int64), marg_logprobs=np.zeros((0, 0), np.float32),
                              tree=tree, budget=0, budget_reason=skip_why, accepted=[0], bonus=bonus,
                              committed=[anchor], verify_ms=verify_ms, commit_ms=commit_ms)
        elif not speculative:
            logits = decode_one_token(model, anchor, start, cache)
            bonus = int(sample_tokens(logits[None], cfg.temperature, gen)[0])
            verify_ms = clock.lap()
            rnd = RoundRecord(index=len(run.rounds), start=start, anchor=anchor,
                              marg_tokens=np.zeros((0, 0), np.int64), marg_logprobs=np.zeros((0, 0), np.float32),
                              tree=trees.root_only_tree(anchor), budget=0, budget_reason="AR: one target token per step",
                              accepted=[0], bonus=bonus, committed=[anchor], verify_ms=verify_ms)
        else:
            # draft: one drafter forward gives the per-depth marginals q_1..q_gamma
            marg = drafter.draft_marginals(model, dcache, new_features, anchor, start,
                                           max(cfg.topk_log, cfg.budget or 1, 1))
            draft_ms = clock.lap()
            # -adapt: the calibration of the rounds so far (fitted here, so its cost counts as build time)
            cal = calibration.calibration() if cfg.adaptive else calibration
            tree, reason = build_tree(cfg.method, marg, anchor, cfg.budget, cost_model, start, cfg.spine, cal)
            build_ms = clock.lap()
            logits, hidden = verify_tree(model, tree, start, cache, target.dtype, target.verify_widths)
            verify_ms = clock.lap()
            post = sample_tokens(logits, cfg.temperature, gen).cpu().numpy()
            accepted, bonus = trees.walk(tree, post)
            compact_cache(cache, start, tree.n_nodes + 1, accepted)
            feats = drafter.extract_features(hidden)
            new_features = feats[:, torch.tensor(accepted, device=feats.device)]
            commit_ms = clock.lap()
            # log at least the ranks a fixed-budget tree could use, so replay of this run is exact at its own budget
            kl = min(max(cfg.topk_log, cfg.budget if cfg.method.startswith("ddtree") else 0), marg.tokens.shape[1])
            rnd = RoundRecord(index=len(run.rounds), start=start, anchor=anchor,
                              marg_tokens=marg.tokens[:, :kl].copy(),
                              marg_logprobs=marg.logprobs[:, :kl].astype(np.float32),
                              tree=tree, budget=tree.n_nodes, budget_reason=reason, accepted=list(accepted),
                              bonus=int(bonus), committed=[int(tree.tokens[i]) for i in accepted],
                              draft_ms=draft_ms, build_ms=build_ms, verify_ms=verify_ms, commit_ms=commit_ms)
            if cfg.adaptive:  # counted from the logged marginals, as a replay of this run will
                calibration.observe_round(trees.Marginals(rnd.marg_tokens, rnd.marg_logprobs), rnd.committed, rnd.bonus)
            if cfg.fallback:
                skip_left, skip_next, note = fallback_decision(tree, cost_model, start, skip_next)
                rnd.budget_reason += note
                skip_why = f"fallback: plain target step ({note[2:]})" if skip_left else ""
        run.rounds.append(rnd)
        generated.extend(rnd.committed)
        start += rnd.tau
        anchor = rnd.bonus
        done = any(t in eos for t in rnd.committed)
        t_sink = time.perf_counter()
        if sink is not None:
            sink.add_round(run.run_id, rnd)
        if on_round is not None:
            on_round(rnd, len(generated))
        sink_s += time.perf_counter() - t_sink
    # the pending bonus token is a real target token: keep it when there is room
    generated.append(anchor)
    _sync(device)
    run.decode_s = time.perf_counter() - t_decode - sink_s
    run.output_ids = _finish_output(generated, cfg.max_new_tokens, eos)
    run.output_text = target.decode(run.output_ids)
