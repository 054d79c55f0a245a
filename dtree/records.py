"""Typed records shared by the engine, the trace store, replay and the pages.

One record type per concept (DESIGN.md section 2): :class:`RoundRecord` for a decoding round and :class:`RunRecord`
for a whole run. The tree type is :class:`dtree.trees.DraftTree`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .errors import InputError, check_int
from .trees import DraftTree

METHODS = ("ar", "chain", "ddtree", "caddtree")
# Variants of the heap builders (dtree.trees): "-cal" ranks by calibrated path probabilities (dtree.calibration, a
# calibration fitted beforehand), "-adapt" by path probabilities calibrated online from the run's own earlier rounds
# (dtree.calibration.OnlineCalibration), "-spine" always puts the top-1 chain in the tree (spec 5 item 12);
# caddtree only: "-rawcv" runs the greedy stop on the measured Cv(n; L) instead of its convex fit (CostModel.curve),
# "-fallback" skips drafting (plain target steps, with a doubling back-off) after a round whose best tree is predicted
# slower than a plain target step (dtree.engine). Canonical order: base, -cal or -adapt, -spine, -rawcv, -fallback.
VARIANT_BASES = ("ddtree", "caddtree")
VARIANTS = tuple(f"{b}{v}" for b in VARIANT_BASES
                 for v in ("-cal", "-spine", "-cal-spine", "-adapt", "-adapt-spine")) + (
    "caddtree-rawcv", "caddtree-adapt-rawcv", "caddtree-fallback", "caddtree-adapt-fallback",
    "caddtree-rawcv-fallback", "caddtree-adapt-rawcv-fallback")
ALL_METHODS = METHODS + VARIANTS


@dataclass(frozen=True)
class MethodSpec:
    """A method name split into its builder and options: ``caddtree-cal-spine`` -> ``("caddtree", True, True)``."""

    base: str
    calibrated: bool = False
    spine: bool = False
    adaptive: bool = False
    raw_cv: bool = False
    fallback: bool = False

    @property
    def name(self) -> str:
        """The canonical name: base, then ``-cal`` or ``-adapt``, then ``-spine``, then ``-rawcv``, then
        ``-fallback``."""
        return (self.base + ("-cal" if self.calibrated else "") + ("-adapt" if self.adaptive else "")
                + ("-spine" if self.spine else "") + ("-rawcv" if self.raw_cv else "")
                + ("-fallback" if self.fallback else ""))

    @property
    def uses_calibration(self) -> bool:
        """True when nodes are ranked by calibrated path probabilities (``-cal`` or ``-adapt``)."""
        return self.calibrated or self.adaptive


def parse_method(name: str, field: str = "method") -> MethodSpec:
    """Split a method name (``ar``, ``chain``, ``ddtree``, ``caddtree``, or ``ddtree``/``caddtree`` followed by
    ``-cal`` or ``-adapt`` and/or ``-spine`` in any order, and ``caddtree`` also by ``-rawcv`` and ``-fallback``)
    into a :class:`MethodSpec`.

    Raises:
        InputError (``field``): a comma in the name, unknown base, unknown or repeated modifier, ``-cal`` with ``-adapt``, ``-rawcv`` or
            ``-fallback`` on ddtree, or a modifier on ar / chain.
    """
    if "," in str(name):
        raise InputError(field, f"{name!r}: one method here, without a comma (a comma-separated list of methods is "
                                "what bench --methods takes)")
    parts = str(name).strip().split("-")
    base, mods = parts[0], parts[1:]
    if base not in METHODS:
        raise InputError(field, f"unknown method {name!r}: use {', '.join(METHODS[:-1])} or {METHODS[-1]}, ddtree and "
                                "caddtree optionally followed by -cal or -adapt and -spine, caddtree also by -rawcv "
                                "and -fallback, and a node budget as :B (e.g. ddtree:16, ddtree-spine:8, "
                                "caddtree-adapt-rawcv-fallback)")
    if mods and base not in VARIANT_BASES:
        raise InputError(field, f"{base} takes no modifier ({name!r}); -cal, -adapt and -spine apply to ddtree and "
                                "caddtree, -rawcv and -fallback to caddtree")
    if any(m not in ("cal", "adapt", "spine", "rawcv", "fallback") for m in mods) or len(set(mods)) != len(mods):
        raise InputError(field, f"unknown method {name!r}: modifiers are -cal or -adapt, -spine and (caddtree) "
                                "-rawcv and -fallback, each at most once")
    if "rawcv" in mods and base != "caddtree":
        raise InputError(field, f"{name!r}: -rawcv changes CaDDTree's cost curve; ddtree does not use one")
    if "fallback" in mods and base != "caddtree":
        raise InputError(field, f"{name!r}: -fallback compares CaDDTree's predicted throughput with a plain target "
                                "step; ddtree predicts none")
    if "cal" in mods and "adapt" in mods:
        raise InputError(field, f"{name!r}: use -cal (a calibration fitted beforehand) or -adapt (calibrated "
                                "during the run), not both")
    return MethodSpec(base, "cal" in mods, "spine" in mods, "adapt" in mods, "rawcv" in mods, "fallback" in mods)


def parse_method_key(item: str, field: str = "methods", max_budget: int = 1024) -> tuple[str, int | None]:
    """``"ddtree-spine:16"`` -> ``("ddtree-spine", 16)``; ``"caddtree-cal"`` -> ``("caddtree-cal", None)``.

    The name is any of :data:`ALL_METHODS` (modifiers in any order, returned canonical); ``:B`` is the ddtree budget
    (required for ddtree and its variants) or the caddtree maximum budget (optional), ``0 <= B <= max_budget``.

    Raises:
        InputError (``field``): unknown name, a budget on ar / chain, a malformed (``ddtree:x``, ``caddtree:``) or
            out-of-range budget, or a ddtree without budget.
    """
    item = str(item).strip()
    name, colon, b = item.partition(":")
    spec = parse_method(name, field)
    if colon and spec.base not in VARIANT_BASES:
        raise InputError(field, f"{spec.base} takes no budget ({item!r})")
    if colon and not b.isdigit():  # "caddtree:" too: a colon with nothing after it is a budget left out
        raise InputError(field, f"malformed budget in {item!r}: expected {spec.name}:B with B an integer in "
                                f"0..{max_budget}")
    if b and int(b) > max_budget:
        raise InputError(field, f"budget {int(b)} in {item!r} is too large: B must be an integer in 0..{max_budget}")
    budget = int(b) if b else None
    if spec.base == "ddtree" and budget is None:
        raise InputError(field, f"{spec.name} needs a budget: {spec.name}:B")
    return spec.name, budget


def meta_mismatches(meta: dict, here: dict, normalize=None) -> list[tuple[str, object, object]]:
    """``(key, theirs, ours)`` for each key of ``here`` whose value differs from ``meta``'s: how a cost model's
    ``meta`` (what it was profiled for) differs from a setup (the loaded models, or a stored run's). Keys either side
    leaves out (None) are not compared; values compare as strings, after ``normalize(key, value)`` when given (e.g. a
    device by its type)."""
    norm = normalize or (lambda key, value: str(value))
    return [(k, meta[k], v) for k, v in here.items()
            if meta.get(k) is not None and v is not None and norm(k, meta[k]) != norm(k, v)]


def check_one_setup(runs, keys: tuple[str, ...], what: str) -> None:
    """Refuse runs of different setups for a fit that describes one (a cost-weight fit: target, drafter, dtype and
    device; a calibration: target and drafter): a fit over a mix describes none of them.

    ``runs``: objects with the attributes in ``keys`` (:class:`RunRecord`).

    With ``"drafter"`` among ``keys``, runs that recorded their drafter's weights (``params["drafter_weights"]``, a
    hash of the weights file) must also agree on them: a checkpoint retrained at one path is another drafter.

    Raises:
        InputError("run"): the runs differ in any of ``keys`` or in their drafter's weights; the message lists each
            setup with its run count.
    """
    from collections import Counter

    groups = Counter(tuple(getattr(r, k) for k in keys) for r in runs)
    if len(groups) > 1:
        parts = "; ".join(" / ".join(str(v) for v in k) + f": {n} run{'s' * (n != 1)}" for k, n in groups.items())
        raise InputError("run", f"the runs mix {len(groups)} setups ({' / '.join(keys)}): {parts}. One {what} "
                                f"describes one setup: choose runs of one (CLI: --drafter, --tag or --run)")
    if "drafter" in keys:  # one drafter path, retrained between runs: its weights differ (runs that predate the
        # record carry no fingerprint and match any)
        weights = Counter(r.params.get("drafter_weights") for r in runs if (r.params or {}).get("drafter_weights"))
        if len(weights) > 1:
            parts = "; ".join(f"weights {w}: {n} run{'s' * (n != 1)}" for w, n in weights.items())
            raise InputError("run", f"the runs' drafter {runs[0].drafter} had different weights ({parts}): the "
                                    f"checkpoint at that path was retrained between them. One {what} describes one "
                                    f"drafter: choose runs of one (CLI: --tag or --run)")


@dataclass
class RoundRecord:
    """Everything logged for one decoding round.

    Attributes:
        index: round number within the run, from 0.
        start: context length L before the round (tokens committed so far, prompt included; the anchor sits at
            position ``start`` and its KV is not yet in the target cache).
        anchor: token id of the anchor (the previous round's bonus token; the tree root).
        marg_tokens: ``[gamma, k]`` int64, the drafter's top-k token ids per depth (depth 1 first), sorted by
            descending probability. Shape ``[0, 0]`` for AR rounds.
        marg_logprobs: ``[gamma, k]`` float32 natural-log drafter probabilities matching ``marg_tokens``.
        tree: the draft tree that was verified (root only for AR).
        budget: number of non-root nodes verified (``tree.n_nodes``).
        budget_reason: one line saying why this budget (fixed, chain length, or CaDDTree's greedy stop).
        accepted: node indices of the accepted path, root (0) first; ``tau == len(accepted)``.
        bonus: the target's token after the accepted path: the next round's anchor.
        committed: token ids committed this round (the tokens of the accepted nodes, anchor first).
        draft_ms, build_ms, verify_ms, commit_ms: wall-clock per phase in milliseconds (CUDA-synchronised).
    """

    index: int
    start: int
    anchor: int
    marg_tokens: np.ndarray
    marg_logprobs: np.ndarray
    tree: DraftTree
    budget: int
    budget_reason: str
    accepted: list[int]
    bonus: int
    committed: list[int]
    draft_ms: float = 0.0
    build_ms: float = 0.0
    verify_ms: float = 0.0
    commit_ms: float = 0.0

    @property
    def tau(self) -> int:
        """Acceptance length: tokens committed this round (accepted drafts + 1), in ``[1, gamma + 1]``."""
        return len(self.accepted)

    @property
    def drafted(self) -> bool:
        """True when the drafter ran this round (marginals logged); False for AR rounds and the plain target steps of
        a ``-fallback`` run."""
        return self.marg_tokens is not None and np.size(self.marg_tokens) > 0

    @property
    def round_ms(self) -> float:
        return self.draft_ms + self.build_ms + self.verify_ms + self.commit_ms


@dataclass
class RunRecord:
    """One decoding run: its parameters, identity of the models, output and summary timings.

    ``status`` is one of ``running``, ``complete``, ``failed``, ``interrupted``. Times are in seconds unless the name
    ends in ``_ms``. ``decode_s`` excludes prefill (as the papers' TPOT does, spec 2.9).
    """

    method: str
    params: dict[str, Any]
    target: str
    drafter: str | None
    dtype: str
    device: str
    prompt: str
    prompt_ids: list[int]
    output_ids: list[int] = field(default_factory=list)
    output_text: str = ""
    status: str = "running"
    prefill_ms: float = 0.0
    decode_s: float = 0.0
    cost_model: dict[str, Any] | None = None
    rounds: list[RoundRecord] = field(default_factory=list)
    run_id: int | None = None
    created: str | None = None
    error: str | None = None

    @property
    def n_new_tokens(self) -> int:
        return len(self.output_ids)

    @property
    def tokens_per_s(self) -> float:
        """Decode throughput in tokens/s (prefill excluded); 0 when nothing was decoded."""
        return self.n_new_tokens / self.decode_s if self.decode_s > 0 else 0.0

    @property
    def mean_tau(self) -> float:
        return float(np.mean([r.tau for r in self.rounds])) if self.rounds else 0.0

    @property
    def mean_budget(self) -> float:
        return float(np.mean([r.budget for r in self.rounds])) if self.rounds else 0.0
