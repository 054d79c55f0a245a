"""Calibrated surrogate: how much more (or less) often the target accepts a drafted token than the drafter says.

DDTree and CaDDTree rank tree nodes by the drafter's path probability q(u) = prod_i q_i(u_i) (DDTree Eq. 7) and
CaDDTree's greedy rule sums them into Phi(n) (spec 3.1). Practitioners measured that block-diffusion marginals are
effectively conditioned on the drafter's own argmax path: after a non-top-1 token the next depth's marginal is right
far less often than its probability says (spec section 5, item 1: 22% against 65-84% on the spine). This module
learns that correction from logged rounds and applies it per step.

Model (ours). A node u at depth d with own rank r has a *class* c: 0 when its parent is the root or on the spine
(every ancestor has rank 0), 1 when some ancestor has rank > 0. Its calibrated step probability is
``min(1, f[c, d, b(r)] * q_d(r))`` with rank bin ``b(r) = min(r, R - 1)`` (the last bin holds ranks >= R - 1), and
the calibrated path probability q~(u) is the product of the steps along the path.

Fit. At temperature 0 the target's choice at every depth of a logged round is known (the committed output, spec
section 4 of DESIGN.md), so for every depth d whose parent prefix of the target's path lies in the logged top-k
lattice, each of the k candidates at depth d is one trial: predicted probability q_d(r), observed 1 if it is the
target's token. Summed per cell: O[c, d, b] (observed acceptances) and P[c, d, b] (predicted). These are conditional
rates (given the parent was accepted), which is what a product of steps needs, and they use the target's path, not
the logged tree, so they are free of spec section 5 item 2's position bias of tree counterfactuals.

Shrinkage (empirical Bayes, ours): with m = ``prior_strength`` (pseudo-observations measured in expected
acceptances), the pooled factor of (c, b) over depths is ``g[c, b] = (sum_d O + m) / (sum_d P + m)`` (shrunk toward 1,
the uncalibrated drafter), and ``f[c, d, b] = (O + m g[c, b]) / (P + m)``. Finally each row f[c, d, :] is projected
onto non-increasing sequences in rank (weighted isotonic regression, weights P + m): together with the clip at 1
this keeps every calibrated step <= 1 and non-increasing in rank, so q~ never grows along a path, the top-n prefix
set by q~ stays prefix-closed and the best-first heap of :mod:`dtree.trees` stays exact (DDTree Prop. 2's argument).

Stored as versioned JSON (``format: dtree-calibration``, ``version: 1``), like cost models.
"""

from __future__ import annotations

import datetime as _dt
import json
import os
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .errors import InputError, check_float, check_int
from .records import check_one_setup

FORMAT = "dtree-calibration"
VERSION = 1
DEFAULT_RANK_BINS = 4
DEFAULT_PRIOR_STRENGTH = 4.0
CLASSES = ("spine", "off-spine")


def _isotonic_decreasing(y: np.ndarray, w: np.ndarray) -> np.ndarray:
    """Weighted least-squares projection of ``y`` onto non-increasing sequences (scipy's pool adjacent violators;
    rows of a few rank bins use :func:`_pava_decreasing`, the same algorithm without scipy's call overhead, which
    matters to ``-adapt`` methods that refit every round)."""
    if len(y) <= 16:
        return _pava_decreasing(y, w)
    from scipy.optimize import isotonic_regression

    return np.asarray(isotonic_regression(y, weights=w, increasing=False).x, dtype=np.float64)


def _pava_decreasing(y, w) -> np.ndarray:
    """Pool adjacent violators for a non-increasing fit: blocks (weighted mean, weight, length) are merged while a
    block's mean is above its predecessor's. ``w`` > 0. Returns float64 of ``len(y)``."""
    means: list[float] = []
    weights: list[float] = []
    sizes: list[int] = []
    for v, wt in zip(np.asarray(y, dtype=np.float64).tolist(), np.asarray(w, dtype=np.float64).tolist()):
        means.append(v)
        weights.append(wt)
        sizes.append(1)
        while len(means) > 1 and means[-1] > means[-2]:
            m2, w2, n2 = means.pop(), weights.pop(), sizes.pop()
            wsum = weights[-1] + w2
            means[-1] = (means[-1] * weights[-1] + m2 * w2) / wsum
            weights[-1] = wsum
            sizes[-1] += n2
    return np.repeat(np.asarray(means), sizes)


def _table(name: str, values, shape: tuple | None = None) -> np.ndarray:
    try:
        a = np.asarray(values, dtype=np.float64)
    except (TypeError, ValueError):
        raise InputError("calibration", f"{name} must be a numeric [2][depths][rank bins] table") from None
    if a.ndim != 3 or a.shape[0] != 2 or a.shape[1] < 1 or a.shape[2] < 1:
        raise InputError("calibration", f"{name} must have shape [2, depths >= 1, rank bins >= 1], got {a.shape}")
    if shape is not None and a.shape != shape:
        raise InputError("calibration", f"{name} has shape {a.shape}, expected {shape}")
    if not np.isfinite(a).all() or (a < 0).any():
        raise InputError("calibration", f"{name} must be finite and >= 0")
    return a


@dataclass
class Calibration:
    """Per-step calibration factors of the drafter's marginals (see the module docstring for the model and the fit).

    Attributes:
        factors: float64 ``[2, G, R]``, f[c, d - 1, b]: class c (0 spine, 1 off-spine), depth d = 1..G, rank bin b
            (ranks >= R - 1 share the last bin). Finite, >= 0 and non-increasing along the rank axis.
        observed: float64 ``[2, G, R]``, acceptances counted in the fit (0 for a hand-made table).
        predicted: float64 ``[2, G, R]``, the matching sums of q (expected acceptances).
        prior_strength: m of the shrinkage, in expected acceptances.
        meta: provenance (runs, rounds, target, drafter, date, ...); JSON-serialisable.

    Raises:
        InputError (field ``calibration``): tables of the wrong shape, negative or non-finite, or factors that grow
            with rank.
    """

    factors: np.ndarray
    observed: np.ndarray
    predicted: np.ndarray
    prior_strength: float = DEFAULT_PRIOR_STRENGTH
    meta: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.factors = _table("factors", self.factors)
        self.observed = _table("observed", self.observed, self.factors.shape)
        self.predicted = _table("predicted", self.predicted, self.factors.shape)
        self.prior_strength = check_float("prior_strength", self.prior_strength, 0.0, 1e9)
        if (np.diff(self.factors, axis=2) > 1e-12 * np.maximum(1.0, self.factors[:, :, :-1])).any():
            raise InputError("calibration", "factors must be non-increasing in rank (else the best-first heap is not "
                                            "exact)")

    @property
    def depths(self) -> int:
        """G, the number of depths in the table (deeper depths use the last row)."""
        return int(self.factors.shape[1])

    @property
    def rank_bins(self) -> int:
        """R, the number of rank bins (the last holds ranks >= R - 1)."""
        return int(self.factors.shape[2])

    @classmethod
    def identity(cls, depths: int = 15, rank_bins: int = DEFAULT_RANK_BINS) -> Calibration:
        """All factors 1: calibrated trees equal the plain ones (q~ = q, since q <= 1)."""
        depths = check_int("depths", depths, 1, 4096)
        rank_bins = check_int("rank_bins", rank_bins, 1, 1024)
        z = np.zeros((2, depths, rank_bins))
        return cls(np.ones_like(z), z, z.copy(), meta={"source": "identity"})

    def step_logprobs(self, marg) -> np.ndarray:
        """Calibrated log step probabilities of a round's candidates.

        Args:
            marg: :class:`dtree.trees.Marginals` ``[gamma, K]`` (natural-log probabilities, sorted descending).

        Returns:
            float64 ``[2, gamma, K]``: entry [c, d - 1, r] = min(0, log f[c, d, b(r)] + log q_d(r)) for a node of
            class c (0: parent on the spine, 1: off it). Depths beyond the table use its last row. Non-increasing in
            r and <= 0, as :class:`dtree.trees._Frontier` needs; a zero factor gives ``-inf``.
        """
        lp = np.asarray(marg.logprobs, dtype=np.float64)
        gamma, k = lp.shape
        d_idx = np.minimum(np.arange(gamma), self.depths - 1)
        r_idx = np.minimum(np.arange(k), self.rank_bins - 1)
        with np.errstate(divide="ignore"):
            logf = np.log(self.factors)
        return np.minimum(0.0, logf[:, d_idx][:, :, r_idx] + lp[None])

    def path_logprobs(self, tree, marg) -> np.ndarray:
        """log q~(u) of every node of ``tree`` (root 0), float64 ``[n + 1]``, with the builders' arithmetic."""
        step = self.step_logprobs(marg)
        n1 = len(tree.tokens)
        out = np.zeros(n1)
        off = np.zeros(n1, dtype=bool)
        for i in range(1, n1):
            p, d, r = int(tree.parents[i]), int(tree.depths[i]), int(tree.ranks[i])
            out[i] = float(out[p]) + float(step[1 if off[p] else 0, d - 1, r])
            off[i] = off[p] or r > 0
        return out

    def table(self):
        """The factors as a DataFrame: one row per depth, columns ``spine r0, spine r1, ..., off-spine r{R-1}+`` and the
        matching observed/predicted counts as ``n_obs`` / ``n_pred`` columns per class."""
        import pandas as pd

        R = self.rank_bins
        names = [f"r{b}" if b < R - 1 else f"r{b}+" for b in range(R)]
        cols: dict[str, Any] = {"depth": np.arange(1, self.depths + 1)}
        for c, cname in enumerate(CLASSES):
            for b, bname in enumerate(names):
                cols[f"{cname} {bname}"] = self.factors[c, :, b]
            cols[f"{cname} acc"] = self.observed[c].sum(axis=1)
            cols[f"{cname} pred"] = self.predicted[c].sum(axis=1)
        return pd.DataFrame(cols)

    # -- persistence -------------------------------------------------------------------------------------------------

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict: ``{"format": "dtree-calibration", "version": 1, "factors", "observed", "predicted"
        ([2][G][R] nested lists), "prior_strength", "rank_bins", "depths", "meta"}``."""
        return {"format": FORMAT, "version": VERSION, "factors": self.factors.tolist(),
                "observed": self.observed.tolist(), "predicted": self.predicted.tolist(),
                "prior_strength": float(self.prior_strength), "rank_bins": self.rank_bins, "depths": self.depths,
                "meta": self.meta}

    @classmethod
    def from_dict(cls, d: Any) -> Calibration:
        """Inverse of :meth:`to_dict`. Raises InputError (field ``calibration``) on a wrong format, version or table."""
        if not isinstance(d, dict):
            raise InputError("calibration", "must be a JSON object")
        if d.get("format") != FORMAT:
            raise InputError("calibration", f"format must be {FORMAT!r}, got {d.get('format')!r}")
        if d.get("version") != VERSION:
            raise InputError("calibration", f"version {d.get('version')!r} is not supported (this dtree reads "
                                            f"version {VERSION})")
        missing = [k for k in ("factors", "observed", "predicted") if k not in d]
        if missing:
            raise InputError("calibration", f"missing keys {missing}")
        return cls(d["factors"], d["observed"], d["predicted"], d.get("prior_strength", DEFAULT_PRIOR_STRENGTH),
                   dict(d.get("meta") or {}))

    def save(self, path: str | os.PathLike, field_name: str = "out") -> Path:
        """Write the calibration as versioned JSON (atomically; ``.json`` appended when missing). Returns the path.

        Raises:
            InputError (``field_name``): empty path, a directory, or the file cannot be written.
        """
        from .cost import save_json

        return save_json(self.to_dict(), path, field_name, "calibration.json")

    @classmethod
    def load(cls, path: str | os.PathLike) -> Calibration:
        """Read a file written by :meth:`save`. Raises InputError (field ``calibration``) when it is missing,
        unreadable, not JSON, or invalid."""
        path = Path(path)
        try:
            data = path.read_bytes()
        except OSError as e:
            raise InputError("calibration", f"cannot read calibration file {str(path)!r}: {e.strerror or e}") from None
        try:
            d = json.loads(data.decode("utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise InputError("calibration", f"{str(path)!r} is not a valid calibration JSON file ({e})") from None
        try:
            return cls.from_dict(d)
        except InputError as e:  # name the file: "format must be ..." alone does not say which one
            raise InputError("calibration", f"{str(path)!r}: {str(e).split(': ', 1)[-1]}") from None


# ----------------------------------------------------------------------------------------------------------------------
# Fit
# ----------------------------------------------------------------------------------------------------------------------


class _PendingWalk:
    """One round's walk down the target's path through its logged top-k lattice (the trials of :func:`count_round`);
    :class:`OnlineCalibration` keeps it pending and advances it as the target's choices become known."""

    __slots__ = ("tokens", "q", "offset", "depth", "cls", "alive", "seen")

    def __init__(self, marg, offset: int):
        self.tokens = np.asarray(marg.tokens, dtype=np.int64)
        self.q = np.exp(np.asarray(marg.logprobs, dtype=np.float64))
        self.offset = offset      # index of the round's anchor in the committed stream
        self.depth = 0            # next depth to observe, 0-based (d0 of count_round)
        self.cls = 0              # 0 while the target's path stays on the drafter's spine
        self.alive = True
        self.seen = 0             # depths observed so far (the last may be the miss that ended the walk)

    def advance(self, stream, observed: np.ndarray, predicted: np.ndarray) -> None:
        """Count every depth whose target token ``stream[offset + depth + 1]`` is known, until a miss or depth G."""
        G, R = observed.shape[1], observed.shape[2]
        gamma, k = self.tokens.shape
        bins = np.minimum(np.arange(k), R - 1)
        last = min(gamma, G)
        while self.alive and self.depth < last and self.offset + self.depth + 1 < len(stream):
            d0 = self.depth
            hit = self.tokens[d0] == stream[self.offset + d0 + 1]
            np.add.at(predicted[self.cls, d0], bins, self.q[d0])
            np.add.at(observed[self.cls, d0], bins, hit.astype(np.float64))
            self.seen += 1
            where = np.flatnonzero(hit)
            if where.size == 0:
                self.alive = False
            else:
                self.depth += 1
                if where[0] > 0:
                    self.cls = 1
        if self.depth >= last:
            self.alive = False


def count_round(marg, target_path, observed: np.ndarray, predicted: np.ndarray) -> int:
    """Add one round's trials to ``observed`` / ``predicted`` (float64 ``[2, G, R]``, modified in place).

    Args:
        marg: the round's :class:`dtree.trees.Marginals` ``[gamma, K]``.
        target_path: the target's choices from the anchor, ``[anchor, t_1, t_2, ...]`` (the committed output from the
            round's start at temperature 0); depths past its end are not observed.
        observed, predicted: the accumulators; depths beyond G are not counted.

    Returns:
        The number of depths observed (the walk down the target's path stops at the first depth whose target token is
        not among the logged top-k).
    """
    walk = _PendingWalk(marg, 0)
    walk.advance(np.asarray(target_path, dtype=np.int64), observed, predicted)
    return walk.seen


def fit_from_counts(observed: np.ndarray, predicted: np.ndarray, prior_strength: float = DEFAULT_PRIOR_STRENGTH,
                    meta: dict | None = None) -> Calibration:
    """Shrunk, rank-monotone factors from count tables (module docstring: Shrinkage).

    Raises:
        InputError: ``prior_strength`` < 0, or no trial at all with ``prior_strength`` 0.
    """
    O = _table("observed", observed)
    P = _table("predicted", predicted, O.shape)
    m = check_float("prior_strength", prior_strength, 0.0, 1e9)
    if m == 0 and (P == 0).any():
        raise InputError("prior_strength", "must be > 0 when some cell has no trials")
    pooled = (O.sum(axis=1) + m) / (P.sum(axis=1) + m)  # [2, R], shrunk toward 1
    raw = (O + m * pooled[:, None, :]) / (P + m)
    f = raw.copy()  # rows already non-increasing are their own projection
    for c, d in zip(*np.nonzero((np.diff(raw, axis=2) > 0).any(axis=2))):
        f[c, d] = _isotonic_decreasing(raw[c, d], P[c, d] + m)
    return Calibration(f, O, P, m, dict(meta or {}))


def fit_calibration(runs: Iterable, rank_bins: int = DEFAULT_RANK_BINS,
                    prior_strength: float = DEFAULT_PRIOR_STRENGTH, meta: dict | None = None) -> Calibration:
    """Fit a :class:`Calibration` from logged speculative runs (their rounds' top-k marginals and committed output).

    Args:
        runs: :class:`dtree.records.RunRecord` objects of speculative methods (chain / ddtree / caddtree and
            variants) with rounds. Use temperature-0 runs: then the committed output is the target's choice (exact);
            at temperature > 0 it is one sample and the factors measure sample-and-match acceptance.
        rank_bins: R, rank bins per depth (1..64; default 4: ranks 0, 1, 2 and 3+).
        prior_strength: m of the shrinkage, in expected acceptances (default 4).
        meta: extra provenance merged into ``meta`` (which also gets runs, rounds, trials, target, drafter, date).

    Returns:
        The fitted :class:`Calibration` with G = the largest logged horizon.

    Raises:
        InputError: no runs, an AR run, runs of more than one target or drafter
            (:func:`dtree.records.check_one_setup`), a run without rounds or with an incomplete trace, bad
            ``rank_bins`` or ``prior_strength``, or no observable depth at all.
    """
    from .replay import known_path, round_marginals

    R = check_int("rank_bins", rank_bins, 1, 64)
    check_float("prior_strength", prior_strength, 0.0, 1e9)
    runs = list(runs)
    if not runs:
        raise InputError("runs", "no runs to calibrate from")
    for run in runs:
        if run.method == "ar":
            raise InputError("runs", f"run {run.run_id} is an AR run: it logged no drafter marginals")
    check_one_setup(runs, ("target", "drafter"), "calibration")
    G = max((int(np.shape(r.marg_tokens)[0]) for run in runs for r in run.rounds if np.ndim(r.marg_tokens) == 2),
            default=0)
    if G == 0:
        raise InputError("runs", "the runs have no rounds with drafter marginals")
    O = np.zeros((2, G, R))
    P = np.zeros((2, G, R))
    n_rounds = 0
    for run in runs:
        stream, offsets = known_path(run)
        for rnd, off in zip(run.rounds, offsets):
            if not rnd.drafted:  # a plain target step of a -fallback run: nothing was drafted
                continue
            marg = round_marginals(rnd)
            n_rounds += 1
            count_round(marg, stream[off: off + marg.gamma + 1], O, P)
    if P.sum() == 0:
        raise InputError("runs", "no observable depth in these runs")
    info = {"runs": [r.run_id for r in runs], "rounds": n_rounds, "trials_spine_depth1": float(P[0, 0].sum()),
            "targets": sorted({str(r.target) for r in runs}), "drafters": sorted({str(r.drafter) for r in runs}),
            "temperatures": sorted({float(r.params.get("temperature", 0.0) or 0.0) for r in runs}),
            "date": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds")}
    info.update(meta or {})
    return fit_from_counts(O, P, prior_strength, info)


def run_calibration(run, calibration: Calibration | None = None) -> Calibration:
    """``calibration`` if given, else the one stored with ``run`` (``params["calibration"]``, written by the engine
    for calibrated methods). Raises InputError (field ``calibration``) when there is none."""
    if calibration is not None:
        return calibration
    stored = run.params.get("calibration") if isinstance(run.params, dict) else None
    if stored:
        return Calibration.from_dict(stored)
    raise InputError("calibration", f"run {run.run_id} stored no calibration; pass one (--calibration FILE, fitted "
                                    "with python -m dtree calibrate)")


# ----------------------------------------------------------------------------------------------------------------------
# Online (adaptive) calibration: learnt during the run from its own rounds
# ----------------------------------------------------------------------------------------------------------------------


class OnlineCalibration:
    """A :class:`Calibration` learnt during one run from the run's own rounds (the ``-adapt`` method variants; ours).

    The fit is the one of :func:`fit_calibration` (same trials, same shrinkage toward the uncalibrated drafter with
    ``prior_strength`` m, same rank-monotone projection), applied to the rounds decoded so far: each round is one set of
    trials per depth, and a depth is counted as soon as the target's choice there is known, i.e. committed by this or a
    later round (at temperature 0 the committed output is the target's path, DESIGN.md section 4). So round i is built
    with a calibration of rounds 0..i-1 only, and a replay of the logged run can rebuild exactly the same sequence of
    calibrations (:func:`dtree.replay.adaptive_calibrations`). Early in a run the factors stay near 1 (the shrinkage);
    on a prompt where the drafter is over-confident they fall below 1 within a few rounds, which shrinks CaDDTree's
    budgets; where it is well calibrated they stay near 1 and the trees stay the plain ones.

    Args:
        depths: G, depths of the table (the drafter's horizon gamma = block size - 1).
        rank_bins: R, rank bins (default 4).
        prior_strength: m of the shrinkage, in expected acceptances (default 4).

    Raises:
        InputError: ``depths`` outside 1..4096, ``rank_bins`` outside 1..64, ``prior_strength`` not in [0, 1e9].
    """

    def __init__(self, depths: int, rank_bins: int = DEFAULT_RANK_BINS,
                 prior_strength: float = DEFAULT_PRIOR_STRENGTH):
        G = check_int("depths", depths, 1, 4096)
        R = check_int("rank_bins", rank_bins, 1, 64)
        self.prior_strength = check_float("prior_strength", prior_strength, 1e-9, 1e9)
        self.observed = np.zeros((2, G, R))
        self.predicted = np.zeros((2, G, R))
        self._stream: list[int] = []
        self._pending: list[_PendingWalk] = []
        self._rounds = 0
        self._current: Calibration | None = None

    def settings(self) -> dict[str, Any]:
        """``{"depths", "rank_bins", "prior_strength"}``: what a replay needs to rebuild the same calibrations."""
        return {"depths": int(self.observed.shape[1]), "rank_bins": int(self.observed.shape[2]),
                "prior_strength": float(self.prior_strength)}

    def observe_round(self, marg, committed, bonus: int) -> None:
        """Record one finished round.

        Args:
            marg: the round's :class:`dtree.trees.Marginals` ``[gamma, K]`` as logged (the replay rebuilds the same
                counts from the logged marginals, so pass those); None for a round that drafted nothing (a plain
                target step of the ``-fallback`` variants): its tokens extend the known path, it adds no trials.
            committed: the tokens the round committed, its anchor first (``RoundRecord.committed``).
            bonus: the target's token after them (the next round's anchor).

        Raises:
            InputError: ``committed`` empty or not starting where the previous round's bonus said.
        """
        committed = [int(t) for t in committed]
        if not committed:
            raise InputError("committed", "a round commits at least its anchor")
        if self._stream and self._stream[-1] != committed[0]:
            raise InputError("committed", "does not start with the previous round's bonus token")
        if self._stream:
            self._stream.pop()  # the bonus placeholder: the round's anchor is the same token
        if marg is not None:
            self._pending.append(_PendingWalk(marg, len(self._stream)))
        self._stream.extend(committed)
        self._stream.append(int(bonus))
        self._rounds += 1
        self._current = None

    def calibration(self) -> Calibration:
        """The calibration fitted on the rounds observed so far (identity before the first; cached until the next
        :meth:`observe_round`)."""
        if self._current is None:
            for w in self._pending:
                w.advance(self._stream, self.observed, self.predicted)
            self._pending = [w for w in self._pending if w.alive]
            self._current = fit_from_counts(self.observed.copy(), self.predicted.copy(), self.prior_strength,
                                            {"source": "online", "rounds": self._rounds})
        return self._current
