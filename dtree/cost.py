"""The verify/draft cost model of CaDDTree: profile Cv(n; L) on a real target, fit it monotone and convex, look it up.

CaDDTree (arXiv 2606.01813; spec 3.1-3.4) predicts a round's throughput as
theta(n) = (1 + Phi(n)) / (Cd + Cv(n; L)) tokens/s. Here:

- ``Cd`` (s) is the drafter's cost per round, measured by the caller (the engine owns the drafter).
- ``Cv(n; L)`` (s) is one target forward that verifies a tree of ``n`` non-root nodes, i.e. ``n + 1`` tokens (the
  root included), over a KV cache of ``L`` tokens. :func:`profile_verify` measures it with tree-shaped masks; the
  official code measured ``n`` chain tokens (spec 3.4 step 5 notes the off-by-one; we count like the builders).
- The fit (:func:`fit_monotone_convex`) is the least-squares curve that is non-decreasing and convex in n, which
  makes theta unimodal so CaDDTree's greedy stop is the global optimum (spec 3.3).

Pure numpy/scipy except :func:`profile_verify`, which runs the target model.
"""

from __future__ import annotations

import datetime as _dt
import json
import math
import os
import platform
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
from scipy.optimize import lsq_linear

from .errors import InputError, check_float, check_int, check_writable_below, split_items

FORMAT = "dtree-cost-model"
VERSION = 1
CURVES = ("convex", "measured")  # CostModel.curve: the table Cv(n; L) is read from
DISTURBED_FIT_GAP = 1.0  # CostModel.disturbances: a convex fit this far off the medians means a disturbed profile
DISTURBED_CONTEXT_DROP = 0.25  # ... as does Cv(0; L) falling by more than this share from one context to a longer one
FIT_GAP_WARN = 0.1  # CostModel.fit_gap above this (well beyond a profile's noise): the measured Cv is not convex
MIN_ROUNDS_PER_SIZE = 5  # fit_live_weights: tree sizes with this many rounds identify the root and tree verify scales


# ----------------------------------------------------------------------------------------------------------------------
# Fit
# ----------------------------------------------------------------------------------------------------------------------


def fit_monotone_convex(y: np.ndarray, x: np.ndarray | None = None, sigma: np.ndarray | None = None) -> np.ndarray:
    """Least-squares fit of ``y`` by a curve that is non-decreasing and convex in ``x`` (spec 3.4 step 3).

    Solves min ||y - beta||^2 subject to: the slopes (beta[i+1] - beta[i]) / (x[i+1] - x[i]) are >= 0 and
    non-decreasing. The official code states this as a QP with difference constraints; we write beta on a hinge
    (cumulative-sum of slope increments) basis, beta = a + sum_j b_j * max(0, x - x_j) with b_j >= 0, and solve the
    bounded least-squares problem with ``scipy.optimize.lsq_linear`` (BVLS).

    Args:
        y: float ``[N]`` measurements (e.g. seconds), finite.
        x: float ``[N]`` strictly increasing abscissae (e.g. node counts); default ``0..N-1``.
        sigma: optional float ``[N]`` > 0, each point's error scale: minimises sum(((y - beta) / sigma)^2) instead
            (``sigma=y`` fits relative errors); default: unweighted.

    Returns:
        float64 ``[N]`` fitted values on ``x``; piecewise-linear interpolation through them is monotone and convex.

    Raises:
        ValueError: ``y`` not 1-D, empty, not finite, or ``x`` of a different length or not strictly increasing.
    """
    y = np.asarray(y, dtype=np.float64)
    if y.ndim != 1 or len(y) == 0 or not np.isfinite(y).all():
        raise ValueError("fit_monotone_convex: y must be a non-empty 1-D array of finite numbers")
    n = len(y)
    x = np.arange(n, dtype=np.float64) if x is None else np.asarray(x, dtype=np.float64)
    if x.shape != y.shape or not np.isfinite(x).all() or (np.diff(x) <= 0).any():
        raise ValueError("fit_monotone_convex: x must have y's shape and be strictly increasing")
    sg = np.ones(n) if sigma is None else np.asarray(sigma, dtype=np.float64)
    if sg.shape != y.shape or not np.isfinite(sg).all() or (sg <= 0).any():
        raise ValueError("fit_monotone_convex: sigma must have y's shape and be finite and > 0")
    w = 1.0 / sg
    if n == 1:
        return y.copy()
    xs = (x - x[0]) / (x[-1] - x[0])  # scale to [0, 1] for conditioning
    scale = float(np.max(np.abs(y))) or 1.0
    basis = np.empty((n, n))
    basis[:, 0] = 1.0
    for j in range(n - 1):
        basis[:, j + 1] = np.maximum(0.0, xs - xs[j])
    lower = np.r_[-np.inf, np.zeros(n - 1)]
    res = lsq_linear(basis * w[:, None], y * w / scale, bounds=(lower, np.full(n, np.inf)), method="bvls", tol=1e-12)
    coef = res.x.copy()
    coef[1:] = np.maximum(coef[1:], 0.0)
    return basis @ coef * scale


def is_monotone_convex(y: np.ndarray, x: np.ndarray | None = None, rtol: float = 1e-9) -> bool:
    """True iff piecewise-linear ``y(x)`` is non-decreasing and convex up to ``rtol * max|y|``."""
    y = np.asarray(y, dtype=np.float64)
    x = np.arange(len(y), dtype=np.float64) if x is None else np.asarray(x, dtype=np.float64)
    if len(y) < 2:
        return True
    tol = rtol * max(float(np.max(np.abs(y))), 1e-300)
    slopes = np.diff(y) / np.diff(x)
    stol = tol / float(np.min(np.diff(x)))
    return bool((slopes >= -stol).all() and (np.diff(slopes) >= -2 * stol).all())


# ----------------------------------------------------------------------------------------------------------------------
# The model
# ----------------------------------------------------------------------------------------------------------------------


def _as_grid(name: str, values, integer: bool) -> np.ndarray:
    arr = np.asarray(values, dtype=np.float64)
    if arr.ndim != 1 or len(arr) == 0 or not np.isfinite(arr).all():
        raise InputError(name, "must be a non-empty list of finite numbers")
    if (arr < 0).any() or (np.diff(arr) <= 0).any():
        raise InputError(name, "must be non-negative and strictly increasing")
    if integer:
        if (arr != np.round(arr)).any():
            raise InputError(name, "must be integers")
        return arr.astype(np.int64)
    return arr


def _as_table(name: str, values, shape: tuple[int, int]) -> np.ndarray:
    try:
        arr = np.asarray(values, dtype=np.float64)
    except (TypeError, ValueError):
        raise InputError(name, f"must be a {shape[0]}x{shape[1]} table of numbers") from None
    if arr.shape != shape:
        raise InputError(name, f"must have shape [contexts, nodes] = {list(shape)}, got {list(arr.shape)}")
    if not np.isfinite(arr).all() or (arr < 0).any():
        raise InputError(name, "must hold finite, non-negative seconds")
    return arr


_WEIGHT_KEYS = {"cd": "cd_scale", "cv": "cv_scale", "cd_scale": "cd_scale", "cv_scale": "cv_scale", "cv_a": "cv_a",
                "cv_b": "cv_b", "cv_c": "cv_c", "cd_s": "cd_s", "cv_tree": "cv_tree_scale",
                "cv_tree_scale": "cv_tree_scale"}

MAX_WEIGHT = 1000.0
"""Largest cost weight accepted (a scale, or seconds for ``cv_a``, ``cv_b``, ``cv_c`` and ``cd_s``)."""


@dataclass(frozen=True)
class CostWeights:
    """User cost weights (DESIGN "cost weights"): model other hardware or serving pressure on top of a profile.

    The weighted costs are (see :meth:`CostModel.weighted`):

    - ``Cd' = cd_s`` when the override is given, else ``cd_scale * Cd`` (seconds);
    - ``Cv'(n; L) = cv_scale * C(0; L) + cv_tree_scale * (C(n; L) - C(0; L))`` (seconds), where ``C`` is the
      analytic ``cv_a + cv_b * n + cv_c * n**2`` when any of ``cv_a, cv_b, cv_c`` is given (the override replaces
      the profiled curve and ignores L; missing coefficients are 0), else the profiled Cv(n; L). ``cv_scale``
      scales the root-only forward, ``cv_tree_scale`` what the tree's n nodes add to it; without
      ``cv_tree_scale`` (None) both parts take ``cv_scale``, i.e. ``Cv' = cv_scale * C(n; L)``.

    All values must be finite, >= 0 and <= :data:`MAX_WEIGHT` (a scale of 1000 or a cost of 1000 s per round is
    already far outside any hardware; beyond it theta only prints as 0); with a, b, c >= 0 the analytic Cv is non-decreasing and convex in n >= 0, the
    condition under which CaDDTree's greedy stop is optimal (spec 3.3); a non-negative ``cv_tree_scale`` keeps a
    non-decreasing convex curve so (the part it scales is itself non-decreasing, convex and 0 at n = 0).

    Attributes:
        cd_scale: multiplier on the profiled drafter cost Cd (default 1).
        cv_scale: multiplier on the verify cost Cv (default 1); with ``cv_tree_scale`` set, on its root-only part
            C(0; L) only.
        cv_a, cv_b, cv_c: analytic Cv coefficients in s, s/node, s/node^2; None = use the profile.
        cd_s: Cd override in seconds; None = ``cd_scale`` times the profile.
        cv_tree_scale: multiplier on what the tree adds to the verify cost, C(n; L) - C(0; L); None = ``cv_scale``.
            Live loops pay more per tree node than a profile of bare forwards says (``dtree fit-cost`` fits it).

    Raises (on construction):
        InputError: a value that is negative, NaN or infinite, naming the field; weights under which Cd and Cv(0)
            are both 0 (field ``cost_weights``: a free round makes theta undefined).
    """

    cd_scale: float = 1.0
    cv_scale: float = 1.0
    cv_a: float | None = None
    cv_b: float | None = None
    cv_c: float | None = None
    cd_s: float | None = None
    cv_tree_scale: float | None = None

    def __post_init__(self) -> None:
        for name in ("cd_scale", "cv_scale"):
            object.__setattr__(self, name, check_float(name, getattr(self, name), lo=0.0, hi=MAX_WEIGHT))
        for name in ("cv_a", "cv_b", "cv_c", "cd_s", "cv_tree_scale"):
            v = getattr(self, name)
            if v is not None:
                object.__setattr__(self, name, check_float(name, v, lo=0.0, hi=MAX_WEIGHT))
        if self.analytic:
            for name in ("cv_a", "cv_b", "cv_c"):
                if getattr(self, name) is None:
                    object.__setattr__(self, name, 0.0)
        cd_zero = self.cd_s == 0.0 if self.cd_s is not None else self.cd_scale == 0.0
        cv0_zero = self.cv_scale == 0.0 or (self.analytic and self.cv_a == 0.0)
        if cd_zero and cv0_zero:
            raise InputError("cost_weights", "Cd and Cv(0) are both 0 under these weights: a round would cost nothing "
                                             "and theta = (1 + Phi(n)) / (Cd + Cv(n)) is undefined; keep Cd or Cv "
                                             "positive")

    @property
    def analytic(self) -> bool:
        """True when Cv is the analytic ``cv_a + cv_b n + cv_c n^2`` instead of the profile."""
        return any(getattr(self, k) is not None for k in ("cv_a", "cv_b", "cv_c"))

    @property
    def is_identity(self) -> bool:
        """True when the weights change nothing."""
        return (self.cd_scale == 1.0 and self.cv_scale == 1.0 and not self.analytic and self.cd_s is None
                and self.tree_scale == 1.0)

    @property
    def tree_scale(self) -> float:
        """The multiplier in effect on C(n; L) - C(0; L): ``cv_tree_scale``, or ``cv_scale`` when it is None."""
        return self.cv_scale if self.cv_tree_scale is None else self.cv_tree_scale

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict of the seven fields (None for unset overrides)."""
        return {"cd_scale": self.cd_scale, "cv_scale": self.cv_scale, "cv_a": self.cv_a, "cv_b": self.cv_b,
                "cv_c": self.cv_c, "cd_s": self.cd_s, "cv_tree_scale": self.cv_tree_scale}

    @classmethod
    def from_dict(cls, d: Any) -> "CostWeights":
        """Inverse of :meth:`to_dict` (unknown keys rejected; missing keys take their defaults, so files written
        before ``cv_tree_scale`` existed load unchanged). Raises InputError."""
        if not isinstance(d, dict):
            raise InputError("cost_weights", "must be a JSON object")
        bad = sorted(set(d) - set(cls.__dataclass_fields__))
        if bad:
            raise InputError("cost_weights", f"unknown keys {bad}")
        return cls(**d)

    @classmethod
    def parse(cls, text: str | None) -> "CostWeights":
        """Parse the CLI form ``"cd=1.5,cv=0.8"``, ``"cd=1.4,cv=1.0,cv_tree=1.3"`` or
        ``"cv_a=0.05,cv_b=0.002,cv_c=0,cd_s=0.004"``.

        Keys: ``cd`` (= cd_scale), ``cv`` (= cv_scale), ``cv_tree`` (= cv_tree_scale), the three long names,
        ``cv_a``, ``cv_b``, ``cv_c`` (seconds), ``cd_s`` (seconds). Empty or None -> identity weights.

        Raises:
            InputError: field ``cost_weights`` for syntax errors or unknown keys; the weight's own field for a
                negative, NaN or infinite value, its message naming the key as typed (``cd (= cd_scale) must be
                in [0.0, 1000.0], got -1.0``, ``cv_a must be in [0.0, 1000.0], got -2.0``).
        """
        if text is None or not str(text).strip():
            return cls()
        kw: dict[str, float] = {}
        typed: dict[str, str] = {}  # field name -> the key the user wrote, for error messages
        for part in split_items("cost_weights", text):  # a stray comma ("cd=2,") is an error, not skipped
            key, sep, val = part.partition("=")
            key = key.strip()
            if not sep or key not in _WEIGHT_KEYS:
                raise InputError("cost_weights", f"expected KEY=VALUE pairs with KEY in {sorted(_WEIGHT_KEYS)}, "
                                                 f"got {part.strip()!r}")
            name = _WEIGHT_KEYS[key]
            if name in kw:
                raise InputError("cost_weights", f"{name} given twice")
            try:
                kw[name] = float(val)
            except ValueError:
                raise InputError("cost_weights", f"{key}: must be a number, got {val.strip()!r}") from None
            typed[name] = key
        try:
            return cls(**kw)
        except InputError as e:
            key = typed.get(e.field)
            if key is None:
                raise
            # name the key as typed ("cd"), not only the internal field it maps to ("cd_scale"); the message names
            # it even when the two agree, as the CLI shows it after --cost-weights (dtree.errors._OPTION_OF)
            named = key if key == e.field else f"{key} (= {e.field})"
            raise InputError(e.field, f"{named} {str(e).split(': ', 1)[1]}") from None


@dataclass
class CostModel:
    """Fitted per-round costs of one target (+ drafter) on one machine (CaDDTree spec 3.4).

    Attributes:
        cd_s: Cd, drafter cost per round in seconds.
        contexts: int64 ``[C]`` profiled context lengths L (tokens in the KV cache), strictly increasing.
        nodes: int64 ``[N]`` profiled node counts n, strictly increasing, starting at 0 (a verify forward is n + 1
            tokens: the root plus n nodes).
        cv_raw_s: float64 ``[C, N]`` measured medians of Cv(n; L) in seconds.
        cv_fit_s: float64 ``[C, N]`` the fit: per context, non-decreasing and convex in n (:func:`fit_monotone_convex`).
        meta: free-form provenance (model, dtype, device, hardware, date, version, ...); JSON-serialisable.
        weights: optional :class:`CostWeights`. The constructor's ``cd_s`` and tables are the PROFILED values; with
            weights, the attribute ``cd_s`` becomes the weighted Cd (``profiled_cd_s`` keeps the profile) and
            :meth:`cv` returns the weighted Cv. ``cv_raw_s``/``cv_fit_s`` always stay the profile.
        curve: which table :meth:`cv` interpolates: ``"convex"`` (default: ``cv_fit_s``, the paper's model, under
            which theta(n) is unimodal, spec 3.3) or ``"measured"`` (ours: ``cv_raw_s`` made non-decreasing in n by a
            running maximum, no convexity; on CPUs the measured Cv is concave at small n, where the convex fit
            misprices small trees; ``scripts/cv_shape_whatif.py``). Used by the ``caddtree-rawcv`` methods.

    Raises (on construction):
        InputError: grids not increasing / not starting at n = 0, tables of the wrong shape, NaN or negative costs.
    """

    cd_s: float
    contexts: np.ndarray
    nodes: np.ndarray
    cv_raw_s: np.ndarray
    cv_fit_s: np.ndarray
    meta: dict[str, Any] = field(default_factory=dict)
    weights: CostWeights | None = None
    curve: str = "convex"

    def __post_init__(self) -> None:
        self.cd_s = check_float("cd_s", self.cd_s, lo=0.0)
        if self.weights is not None and not isinstance(self.weights, CostWeights):
            raise InputError("weights", "must be a CostWeights")
        if self.weights is not None and self.weights.is_identity:
            self.weights = None
        self.profiled_cd_s = self.cd_s
        if self.weights is not None:
            w = self.weights
            self.cd_s = w.cd_s if w.cd_s is not None else self.cd_s * w.cd_scale
        self.contexts = _as_grid("contexts", self.contexts, integer=True)
        self.nodes = _as_grid("nodes", self.nodes, integer=True)
        if self.nodes[0] != 0:
            raise InputError("nodes", f"must start at 0 (the root-only verify), got {int(self.nodes[0])}")
        shape = (len(self.contexts), len(self.nodes))
        self.cv_raw_s = _as_table("cv_raw_s", self.cv_raw_s, shape)
        self.cv_fit_s = _as_table("cv_fit_s", self.cv_fit_s, shape)
        for row in self.cv_fit_s:
            if not is_monotone_convex(row, self.nodes, rtol=1e-6):
                raise InputError("cv_fit_s", "every row must be non-decreasing and convex in n")
        if not isinstance(self.meta, dict):
            raise InputError("meta", "must be a dict")
        if self.curve not in CURVES:
            raise InputError("curve", f"must be one of {', '.join(CURVES)}, got {self.curve!r}")
        # the table cv() interpolates: the convex fit, or the measured medians made non-decreasing in n
        self._table = self.cv_fit_s if self.curve == "convex" else np.maximum.accumulate(self.cv_raw_s, axis=1)
        n = self.nodes.astype(np.float64)
        dn = np.diff(n)
        self._slopes = np.diff(self._table, axis=1) / dn if len(n) > 1 else np.zeros((shape[0], 0))

    # -- construction ------------------------------------------------------------------------------------------------

    @classmethod
    def from_measurements(
        cls,
        cd_s: float,
        contexts: Sequence[int] | np.ndarray,
        nodes: Sequence[int] | np.ndarray,
        cv_raw_s: np.ndarray,
        meta: dict[str, Any] | None = None,
    ) -> "CostModel":
        """Fit each context's measured row with :func:`fit_monotone_convex` and build the model.

        Args: as the attributes; ``cv_raw_s`` is ``[C, N]`` seconds. ``meta`` gains ``date`` and ``version`` when
        absent.

        Raises:
            InputError: as the constructor.
        """
        contexts_a = _as_grid("contexts", contexts, integer=True)
        nodes_a = _as_grid("nodes", nodes, integer=True)
        raw = _as_table("cv_raw_s", cv_raw_s, (len(contexts_a), len(nodes_a)))
        fit = np.stack([np.maximum(fit_monotone_convex(row, nodes_a), 0.0) for row in raw])
        meta = dict(meta or {})
        meta.setdefault("date", _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"))
        meta.setdefault("version", _package_version())
        return cls(cd_s=cd_s, contexts=contexts_a, nodes=nodes_a, cv_raw_s=raw, cv_fit_s=fit, meta=meta)

    def weighted(self, weights: CostWeights | None) -> "CostModel":
        """A copy of this profile with ``weights`` applied (see :class:`CostWeights` for the formulas).

        Weights always apply to the PROFILE, never on top of earlier weights: ``m.weighted(a).weighted(b)`` equals
        ``m.weighted(b)``; ``weighted(None)`` gives the unweighted profile. The weights travel with the model
        (``to_dict()["weights"]``), so every run stores the cost model it actually used.
        """
        return CostModel(self.profiled_cd_s, self.contexts.copy(), self.nodes.copy(), self.cv_raw_s.copy(),
                         self.cv_fit_s.copy(), dict(self.meta), weights, self.curve)

    def with_curve(self, curve: str) -> "CostModel":
        """A copy (same profile and weights) whose :meth:`cv` interpolates ``curve`` (``"convex"`` or
        ``"measured"``, see the class docstring). Raises InputError for another name."""
        return CostModel(self.profiled_cd_s, self.contexts.copy(), self.nodes.copy(), self.cv_raw_s.copy(),
                         self.cv_fit_s.copy(), dict(self.meta), self.weights, curve)

    def with_weights(self, cd_scale: float = 1.0, cv_scale: float = 1.0, cd_s: float | None = None) -> "CostModel":
        """Shorthand for ``weighted(CostWeights(cd_scale=..., cv_scale=..., cd_s=...))``.

        Raises:
            InputError: a scale or ``cd_s`` that is negative, NaN or infinite.
        """
        return self.weighted(CostWeights(cd_scale=cd_scale, cv_scale=cv_scale, cd_s=cd_s))

    def disturbances(self) -> list[str]:
        """Signs that the profile was measured on a disturbed machine (another job on the cores), one line each.

        Two checks on the measured medians, both far beyond a quiet profile's noise (a few %) and beyond the CPU's
        concave shape at small n (quiet profiles here: up to 43%): the convex fit is more than
        :data:`DISTURBED_FIT_GAP` (100%) off them
        somewhere, or the root-only verify Cv(0; L) of a longer context is more than :data:`DISTURBED_CONTEXT_DROP`
        (25%) below a shorter one's (attention over more tokens cannot be that much cheaper). An empty list: nothing
        looks wrong.
        """
        out = []
        gap = self.fit_gap()
        if gap["rel_gap"] > DISTURBED_FIT_GAP:
            out.append(f"the convex fit is {100 * gap['rel_gap']:.0f}% off the measured Cv at n={gap['n']}, "
                       f"L={gap['context']}")
        root = self.cv_raw_s[:, 0]
        for i in range(1, len(root)):
            if root[i] < (1.0 - DISTURBED_CONTEXT_DROP) * root[:i].max():
                out.append(f"Cv(0; L={int(self.contexts[i])}) = {root[i] * 1e3:.1f} ms is below a shorter context's "
                           f"{root[:i].max() * 1e3:.1f} ms")
                break
        return out

    def fit_gap(self, n_max: int | None = None) -> dict[str, Any]:
        """How far the convex fit is from the measured medians (profile values, no weights), over nodes <= ``n_max``.

        Returns ``{"rel_gap", "context", "n", "raw_s", "fit_s"}``: the largest ``|fit - raw| / raw`` over the table
        (0 for a profile that is itself monotone and convex), and the context L, node count n and the two values in
        seconds where it occurs. A gap well above the profile's noise (a few %) means the measured curve is not
        convex (CPUs: concave at small n), so no convex curve fits it and the greedy stop under the fit misprices
        small trees; the ``-rawcv`` methods use the measured curve instead.

        Raises:
            InputError: ``n_max`` negative.
        """
        keep = np.ones(len(self.nodes), dtype=bool)
        if n_max is not None:
            keep = self.nodes <= check_int("n_max", n_max, 0)
        raw, fit = self.cv_raw_s[:, keep], self.cv_fit_s[:, keep]
        rel = np.abs(fit - raw) / np.maximum(raw, 1e-12)
        c, j = np.unravel_index(int(np.argmax(rel)), rel.shape)
        return {"rel_gap": float(rel[c, j]), "context": int(self.contexts[c]), "n": int(self.nodes[keep][j]),
                "raw_s": float(raw[c, j]), "fit_s": float(fit[c, j])}

    # -- lookup ------------------------------------------------------------------------------------------------------

    def _curve_at(self, L: float) -> tuple[np.ndarray, float]:
        """Table values (fitted, or measured for ``curve="measured"``) on ``self.nodes`` at context ``L`` and the slope
        used beyond the last node (s/node)."""
        c = self.contexts.astype(np.float64)
        f = self._table
        last_slope = self._slopes[:, -1] if self._slopes.shape[1] else np.zeros(len(c))
        if len(c) == 1 or L <= c[0]:
            return f[0], float(last_slope[0])
        if L <= c[-1]:
            i = int(np.searchsorted(c, L))  # c[i-1] < L <= c[i]
            w = (L - c[i - 1]) / (c[i] - c[i - 1])
            return (1 - w) * f[i - 1] + w * f[i], float((1 - w) * last_slope[i - 1] + w * last_slope[i])
        # Beyond the largest profiled context: extrapolate the value at n=0 and every segment slope linearly in L
        # from the last two contexts, never below the last context; a running max keeps the slopes non-decreasing
        # (for the measured curve this convexifies it beyond the largest profiled context).
        t = (L - c[-1]) / (c[-1] - c[-2])
        v0 = f[-1, 0] + t * max(0.0, f[-1, 0] - f[-2, 0])
        if self._slopes.shape[1] == 0:
            return np.array([v0]), 0.0
        s = self._slopes[-1] + t * np.maximum(0.0, self._slopes[-1] - self._slopes[-2])
        s = np.maximum.accumulate(s)
        vals = v0 + np.r_[0.0, np.cumsum(s * np.diff(self.nodes.astype(np.float64)))]
        return vals, float(s[-1])

    def cv(self, n, L) -> np.ndarray | float:
        """Verify cost Cv(n; L) in seconds of a tree with ``n`` non-root nodes over a cache of ``L`` tokens.

        Lookup rules (spec 3.4 step 4, with our choices beyond the profiled ranges):
        - in n: linear interpolation on the grid ``nodes`` of the fitted table (``curve="measured"``: of the measured
          one); beyond the largest profiled n, linear
          extrapolation with the last fitted slope (no clamp; keeps convexity);
        - in L: linear interpolation between the two bracketing profiled contexts; below the smallest context the
          smallest context's curve; beyond the largest, linear extrapolation from the last two contexts of the value
          at n = 0 and of each segment slope, each never below the last context's (so Cv never drops with L and the
          curve stays non-decreasing and convex in n);
        - with weights, the weighted Cv of :class:`CostWeights` (scales, analytic override, tree scale).

        Args:
            n: int or float scalar or array (any shape) of node counts >= 0.
            L: context length in tokens, scalar >= 0.

        Returns:
            float (for scalar n) or float64 array of n's shape, seconds.

        Raises:
            ValueError: n negative or NaN; L negative, NaN or infinite.
        """
        L = float(L)
        if not math.isfinite(L) or L < 0:
            raise ValueError(f"context length L must be a finite number >= 0, got {L}")
        n_arr = np.asarray(n, dtype=np.float64)
        if np.isnan(n_arr).any() or (n_arr < 0).any():
            raise ValueError("node count n must be >= 0 (no NaN)")
        w = self.weights
        if w is not None and w.analytic:
            out = w.cv_a + w.cv_b * n_arr + w.cv_c * n_arr * n_arr
            root = w.cv_a
        else:
            curve, slope = self._curve_at(L)
            grid = self.nodes.astype(np.float64)
            out = np.interp(n_arr, grid, curve)
            beyond = n_arr > grid[-1]
            out = np.where(beyond, curve[-1] + slope * (n_arr - grid[-1]), out)
            root = float(curve[0])  # nodes start at 0: the root-only forward
        if w is not None and w.tree_scale != w.cv_scale:
            out = w.cv_scale * root + w.tree_scale * (out - root)
        elif w is not None and w.cv_scale != 1.0:
            out = out * w.cv_scale
        return float(out) if np.ndim(n) == 0 else out

    def cv_curve(self, L, n_max: int) -> np.ndarray:
        """Cv(n; L) in seconds for n = 0..n_max: float64 ``[n_max + 1]``.

        Raises:
            InputError: ``n_max`` < 0. ValueError: bad ``L`` (see :meth:`cv`).
        """
        n_max = check_int("n_max", n_max, lo=0)
        return self.cv(np.arange(n_max + 1), L)

    def theta(self, phi, n, L) -> np.ndarray | float:
        """Predicted throughput (1 + phi) / (Cd + Cv(n; L)) in tokens/s (CaDDTree spec 3.1)."""
        return (1.0 + np.asarray(phi, dtype=np.float64)) / (self.cd_s + self.cv(n, L))

    # -- persistence -------------------------------------------------------------------------------------------------

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict: ``{"format": "dtree-cost-model", "version": 1, "cd_s", "contexts", "nodes", "cv_raw_s",
        "cv_fit_s", "meta", "weights"}`` (seconds, tokens, nodes; tables as nested lists ``[C][N]``). ``cd_s`` and the
        tables are the profile; ``weights`` is None or :meth:`CostWeights.to_dict`, and ``cd_s_weighted`` is the
        weighted Cd when weights are set; ``curve`` is present when it is not ``"convex"``."""
        d = {
            "format": FORMAT,
            "version": VERSION,
            "cd_s": float(self.profiled_cd_s),
            "contexts": [int(v) for v in self.contexts],
            "nodes": [int(v) for v in self.nodes],
            "cv_raw_s": self.cv_raw_s.tolist(),
            "cv_fit_s": self.cv_fit_s.tolist(),
            "meta": self.meta,
            "weights": None if self.weights is None else self.weights.to_dict(),
        }
        if self.weights is not None:
            d["cd_s_weighted"] = float(self.cd_s)
        if self.curve != "convex":
            d["curve"] = self.curve
        return d

    @classmethod
    def from_dict(cls, d: Any) -> "CostModel":
        """Inverse of :meth:`to_dict`.

        Raises:
            InputError: not a dict, wrong ``format`` or ``version``, missing keys, or invalid arrays (as the
                constructor).
        """
        if not isinstance(d, dict):
            raise InputError("cost_model", "must be a JSON object")
        if d.get("format") != FORMAT:
            raise InputError("cost_model", f"format must be {FORMAT!r}, got {d.get('format')!r}")
        if d.get("version") != VERSION:
            raise InputError("cost_model", f"version {d.get('version')!r} is not supported (this dtree reads version {VERSION})")
        missing = [k for k in ("cd_s", "contexts", "nodes", "cv_raw_s", "cv_fit_s") if k not in d]
        if missing:
            raise InputError("cost_model", f"missing keys {missing}")
        weights = CostWeights.from_dict(d["weights"]) if d.get("weights") is not None else None
        return cls(d["cd_s"], d["contexts"], d["nodes"], d["cv_raw_s"], d["cv_fit_s"], dict(d.get("meta") or {}),
                   weights, d.get("curve", "convex"))

    def save(self, path: str | os.PathLike, field_name: str = "path") -> Path:
        """Write the model as versioned JSON to ``path`` (atomically: temp file then rename). Returns the path written:
        ``path`` checked by :func:`json_output_path` (``.json`` appended when missing).

        Raises:
            InputError (``field_name``): empty path, a directory, or the file cannot be written (names ``path``).
        """
        return save_json(self.to_dict(), path, field_name)

    @classmethod
    def load(cls, path: str | os.PathLike) -> "CostModel":
        """Read a model written by :meth:`save`.

        Raises:
            InputError: (field ``path``) missing or unreadable file, or not JSON; (field ``cost_model`` etc.) wrong
                format/version or invalid contents.
        """
        path = Path(path)
        try:
            data = path.read_bytes()
        except OSError as e:
            raise InputError("cost_model", f"cannot read cost model file {str(path)!r}: {e.strerror or e}") from None
        try:
            d = json.loads(data.decode("utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise InputError("cost_model", f"{str(path)!r} is not a valid cost model JSON file ({e})") from None
        try:
            return cls.from_dict(d)
        except InputError as e:  # name the file in the message
            msg = str(e).split(": ", 1)[-1]
            raise InputError(e.field, f"{msg} (in {str(path)!r})") from None


@dataclass(frozen=True)
class LiveFit:
    """Cost weights fitted to the phase timings that live runs logged (see :func:`fit_live_weights`).

    Attributes:
        weights: :class:`CostWeights` with the fitted ``cd_scale``, ``cv_scale`` and, when the rounds had trees of
            several sizes, ``cv_tree_scale`` (apply with :meth:`CostModel.weighted`).
        n_rounds: speculative rounds used.
        live_cd_ms: mean logged fixed cost per round (draft + build + commit), ms.
        live_cv_ms: mean logged verify time per round, ms.
        model_cd_ms: the profile's Cd, ms. model_cv_ms: mean profiled Cv(n_i; L_i) over the same rounds, ms.
        cv_ratio_p25, cv_ratio_p50, cv_ratio_p75: quartiles of the per-round ratio verify_ms / Cv(n_i; L_i) (how
            uniform the correction is).
    """

    weights: CostWeights
    n_rounds: int
    live_cd_ms: float
    live_cv_ms: float
    model_cd_ms: float
    model_cv_ms: float
    cv_ratio_p25: float
    cv_ratio_p50: float
    cv_ratio_p75: float

    def to_dict(self) -> dict[str, Any]:
        d = {k: getattr(self, k) for k in ("n_rounds", "live_cd_ms", "live_cv_ms", "model_cd_ms", "model_cv_ms",
                                            "cv_ratio_p25", "cv_ratio_p50", "cv_ratio_p75")}
        d["weights"] = self.weights.to_dict()
        return d


def fit_live_weights(cost: CostModel, n_nodes, context, draft_ms, verify_ms, other_ms=None) -> LiveFit:
    """Fit cost weights so the profiled cost model reproduces the round times live runs logged.

    A profile is a snapshot of the machine (spec 3.4); live runs often cost something else, and each round has a
    small fixed overhead (tree build, KV compaction). In the session-6 benches on the shared 2-core dev VM the gap was
    not uniform in n: a verify of 0-2 nodes ran at about its profiled time, one of 4-64 nodes 1.1-1.15x, i.e. each
    tree node cost 1.2-1.5x its profiled increment. The loop itself is not the cause (``scripts/verify_in_loop_ab.py``:
    back to back, with hidden states, after a drafter step or a pause, within about 10%); the machine's speed drifts
    (2.6x within two hours there). This fit keeps the profile's curves and rescales them:

    - ``cd_scale = sum(draft_ms + other_ms) / (R * Cd)``: every cost that does not grow with the tree is charged to
      the fixed per-round cost, as CaDDTree's Cd is (spec 3.1);
    - when the rounds verified trees of at least two sizes (each in >= :data:`MIN_ROUNDS_PER_SIZE` rounds): two
      verify scales, ``cv_scale`` on the root-only part C0_i = Cv(0; L_i) and ``cv_tree_scale`` on the tree's part
      T_i = Cv(n_i; L_i) - C0_i, by non-negative least squares on RELATIVE residuals,
      min sum_i ((verify_i - cv_scale C0_i - cv_tree_scale T_i) / verify_i)^2 (``scipy.optimize.nnls``): round
      times span 3-4x, and what replay must get right is each run's tokens/s, a relative quantity;
    - otherwise (one tree size, e.g. chain or a single fixed budget, where the two parts cannot be told apart): one
      scale, ``cv_scale = sum(verify_ms) / sum(Cv(n_i; L_i))`` (ratio of sums: pooled predicted = pooled logged
      time), and ``cv_tree_scale`` None.

    Measured on the issue-4 50-prompt benches (docs/bench/issue4-*50-v4-report.md, 2-fold by prompt, 8 methods):
    replay's tokens/s within 15% (median relative error) for 8 / 8 methods on GSM8K and 7 / 8 on HumanEval with two
    scales on the convex fit (one scale: 8 / 8 and 5 / 8), 8 / 8 on both when the times are also read from the
    measured curve (:func:`dtree.replay.replay_vs_live_crossfit`'s default). The relative residuals make the
    predictions a few % optimistic on the pooled time (pooled predicted / live tokens/s 1.03-1.08, 1.13-1.21 for
    64-node trees). These choices were made on those two benches.

    Weights apply to the profile (:meth:`CostModel.weighted`), so the scales are fitted against the UNWEIGHTED
    profile of ``cost`` whatever weights it carries.

    Args:
        cost: the profiled cost model the rounds are compared with.
        n_nodes: int ``[R]`` non-root nodes verified per round (the budget).
        context: int ``[R]`` context length L of each round (tokens committed before it).
        draft_ms, verify_ms: float ``[R]`` logged phase times, ms.
        other_ms: float ``[R]`` logged build + commit times, ms (default zeros).

    Returns:
        :class:`LiveFit`.

    Raises:
        InputError: no rounds, arrays of different lengths, NaN / negative values, or a profile with Cd = 0 or
            Cv = 0 on every round (nothing to scale).
    """
    arrays = {}
    for name, v in (("n_nodes", n_nodes), ("context", context), ("draft_ms", draft_ms), ("verify_ms", verify_ms),
                    ("other_ms", other_ms)):
        if v is None:
            continue
        a = np.asarray(v, dtype=np.float64).reshape(-1)
        if not np.isfinite(a).all() or (a < 0).any():
            raise InputError(name, "must be finite numbers >= 0")
        arrays[name] = a
    r = len(arrays["n_nodes"])
    if r == 0:
        raise InputError("rounds", "no speculative round to fit the cost weights on")
    if any(len(a) != r for a in arrays.values()):
        raise InputError("rounds", "n_nodes, context and the phase times must have one value per round")
    other = arrays.get("other_ms", np.zeros(r))
    base = cost.weighted(None)
    cd_ms = base.cd_s * 1e3
    cv_ms = np.array([base.cv(n, L) for n, L in zip(arrays["n_nodes"], arrays["context"])]) * 1e3
    if cd_ms <= 0 or cv_ms.sum() <= 0:
        raise InputError("cost_model", "the profile has Cd = 0 or Cv = 0 on these rounds: nothing to scale")
    fixed = arrays["draft_ms"] + other
    verify = arrays["verify_ms"]
    ratio = verify / np.maximum(cv_ms, 1e-12)
    p25, p50, p75 = (float(v) for v in np.percentile(ratio, [25, 50, 75]))
    cd_scale = float(fixed.sum() / (r * cd_ms))
    root_ms = np.array([base.cv(0, L) for L in arrays["context"]]) * 1e3
    tree_ms = cv_ms - root_ms
    _, counts = np.unique(arrays["n_nodes"], return_counts=True)  # rounds per tree size
    two = (int((counts >= MIN_ROUNDS_PER_SIZE).sum()) >= 2 and tree_ms.max() > 0 and root_ms.min() > 0
           and verify.min() > 0)
    w = None
    if two:
        from scipy.optimize import nnls

        inv = 1.0 / verify
        (s_root, s_tree), _ = nnls(np.c_[root_ms * inv, tree_ms * inv], np.ones(r))
        if np.isfinite([s_root, s_tree]).all() and s_root > 0:
            w = CostWeights(cd_scale=cd_scale, cv_scale=float(s_root), cv_tree_scale=float(s_tree))
    if w is None:
        w = CostWeights(cd_scale=cd_scale, cv_scale=float(verify.sum() / cv_ms.sum()))
    return LiveFit(weights=w, n_rounds=r, live_cd_ms=float(fixed.mean()), live_cv_ms=float(arrays["verify_ms"].mean()),
                   model_cd_ms=float(cd_ms), model_cv_ms=float(cv_ms.mean()), cv_ratio_p25=p25, cv_ratio_p50=p50,
                   cv_ratio_p75=p75)


def save_json(data: dict, path: str | os.PathLike, field_name: str = "path", example: str = "cost-model.json") -> Path:
    """Write ``data`` as JSON to ``path`` checked by :func:`json_output_path`, atomically (temp file beside it, then
    rename: an existing file is never left half-written). Returns the path written.

    Raises:
        InputError (``field_name``): empty path, a directory, or the file cannot be written (names ``path``, not the
        temp file).
    """
    path = json_output_path(path, field_name, example)
    return write_text_atomic(path, json.dumps(data, indent=1, allow_nan=False, default=str), field_name)


def write_text_atomic(path: str | os.PathLike, text: str, field_name: str = "path") -> Path:
    """Write ``text`` to ``path`` atomically: a temp file beside it (mode 0644), then a rename, so an existing file is
    never left half-written. Missing parent folders are created. Returns ``path`` as a Path.

    Raises:
        InputError (``field_name``): the file or its folder cannot be written (names ``path``, not the temp file).
    """
    path = Path(path)
    tmp = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name, suffix=".tmp")
        with os.fdopen(fd, "w") as fh:
            fh.write(text)
        os.chmod(tmp, 0o644)  # mkstemp makes the file 0600; outputs are plain files
        os.replace(tmp, path)
    except BaseException as e:
        if tmp is not None and os.path.exists(tmp):
            os.unlink(tmp)
        if isinstance(e, OSError):
            raise InputError(field_name, f"cannot write {str(path)!r}: {e.strerror or e}") from None
        raise
    return path


def json_output_path(path: str | os.PathLike, field_name: str = "path", example: str = "cost-model.json") -> Path:
    """``path`` checked as a JSON file to write: not empty, not a directory; ``~`` expanded and ``.json`` appended when
    the name lacks it; its folder writable (or, when missing, the nearest existing folder above it, where it will be
    created). ``example`` is the file name the messages suggest. Writes nothing.

    Raises:
        InputError (``field_name``): empty, a directory (or a path ending in ``/``), a path through a file, or a
            folder that cannot be written.
    """
    text = str(path).strip()
    if not text:
        raise InputError(field_name, f"give a file path to save to, e.g. runs/{example}")
    p = Path(text).expanduser()
    if not p.name or p.is_dir():
        raise InputError(field_name, f"{text!r} is a directory: give a file path such as "
                                     f"{str(p / example)!r}")
    if text.endswith(("/", os.sep)):
        raise InputError(field_name, f"{text!r} ends in {text[-1]!r}, which names a folder: give a file path such as "
                                     f"{str(p / example)!r}")
    if p.suffix.lower() != ".json":
        p = p.with_name(p.name + ".json")
        if p.is_dir():
            raise InputError(field_name, f"{str(p)!r} is a directory: give another file name")
    check_writable_below(field_name, f"cannot write {text!r}", p.parent)
    return p


def _package_version() -> str:
    try:
        from . import __version__

        return str(__version__)
    except Exception:  # pragma: no cover
        return "unknown"


# ----------------------------------------------------------------------------------------------------------------------
# Profiling on a real target
# ----------------------------------------------------------------------------------------------------------------------


def hardware_description(device) -> str:
    """One line naming the machine: the CUDA device name, or the CPU and its thread count."""
    import torch

    device = torch.device(device) if device is not None else torch.device("cpu")
    if device.type == "cuda" and torch.cuda.is_available():
        return torch.cuda.get_device_name(device)
    cpu = platform.processor() or platform.machine()
    return f"CPU {cpu}, {torch.get_num_threads()} threads"


def timed_tree_verify(model, cache, n_nodes: int, context: int, rng: np.random.Generator, dtype, device,
                      width: int | None = None, hidden_states: bool = False, sync: Callable[[], None] | None = None
                      ) -> float:
    """Seconds of one target forward verifying a random draft tree, as the engine's verify runs it.

    Builds a random tree of ``n_nodes`` nodes (:func:`dtree.trees.random_tree`, token ids from ``rng`` below the
    model's vocabulary size) over the ``context`` tokens ``cache`` holds, with its tree-attention mask and depth
    positions (:func:`dtree.trees.tree_attention_inputs`, padded to ``width`` tokens when given), times one forward
    of ``n_nodes + 1`` (or ``width``) tokens with ``time.perf_counter`` (``sync()`` before and after, e.g.
    ``torch.cuda.synchronize``), then crops the cache back to ``context`` entries. ``hidden_states`` asks the model
    for every layer's output as the engine's speculative verify does. Call it under ``torch.inference_mode()``.
    Shared by :func:`profile_verify`, :func:`dtree.kernels.tune_linear_kernels` and the A/B scripts.
    """
    from .trees import random_tree, tree_attention_inputs

    vocab = int(model.get_input_embeddings().num_embeddings)
    ids, pos, mask = tree_attention_inputs(random_tree(int(n_nodes), rng, vocab), context, dtype, device, width=width)
    if sync is not None:
        sync()
    t0 = time.perf_counter()
    model(input_ids=ids, attention_mask=mask, position_ids=pos, cache=cache, use_cache=True,
          output_hidden_states=hidden_states)
    if sync is not None:
        sync()
    dt = time.perf_counter() - t0
    cache.crop(-ids.shape[1])
    return dt


def profile_verify(
    model,
    contexts: Sequence[int],
    nodes: Sequence[int],
    repeats: int,
    dtype,
    device,
    progress: Callable[[int, int], None] | None = None,
    seed: int = 0,
    between: Callable[[], Any] | None = None,
    widths=(),
) -> np.ndarray:
    """Measure Cv(n; L): seconds of one target forward verifying a random tree of n nodes over L cached tokens.

    For each L: prefill L random token ids into a ``transformers.DynamicCache`` once (chunks of <= 2048), run
    untimed warm-up verifies (every n at the first context, the largest n at the others), then for ``repeats`` passes
    over the node counts in a fresh random order (interleaving, so drifts of a shared machine hit every n alike) run
    one forward of ``n + 1`` tokens with a random tree-shaped additive mask and depth positions from
    :func:`dtree.trees.tree_attention_inputs`, timed with ``perf_counter`` (``torch.cuda.synchronize`` before and
    after on CUDA), then ``cache.crop(-(n + 1))`` back to L. Reports the median
    over repeats (spec 3.4 step 1, with tree masks instead of chain masks).

    Args:
        model: a Hugging Face causal LM (eval mode) accepting ``cache=``, ``attention_mask`` (4-D float),
            ``position_ids``.
        contexts: context lengths L >= 0, strictly increasing.
        nodes: node counts n >= 0, strictly increasing (a forward has n + 1 tokens).
        repeats: timed forwards per (L, n), >= 1.
        dtype: the model's floating dtype (torch dtype or name), used for the mask.
        device: the model's device.
        progress: called as ``progress(done, total)`` after each timed forward.
        seed: seeds the random tokens and trees.
        between: called (untimed here) after each timed forward, e.g. to time a drafter step in the same minutes
            (:func:`dtree.backend.profile_cost_model` does, for Cd).
        widths: pad forwards as the engine does (:func:`dtree.trees.verify_width`,
            :attr:`dtree.models.Target.verify_widths`), so Cv(n; L) is the time of the forward the engine runs
            for n nodes.

    Returns:
        float64 ``[len(contexts), len(nodes)]`` median seconds.

    Raises:
        InputError: bad grids or ``repeats``; ``dtype`` not one of float32/bfloat16/float16.
    """
    import torch
    from transformers import DynamicCache

    from .trees import verify_width

    contexts_a = _as_grid("contexts", contexts, integer=True)
    nodes_a = _as_grid("nodes", nodes, integer=True)
    repeats = check_int("repeats", repeats, lo=1)
    widths = tuple(check_int("widths", w, lo=2) for w in widths)
    if isinstance(dtype, str):
        names = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
        if dtype not in names:
            raise InputError("dtype", f"must be one of {sorted(names)}, got {dtype!r}")
        dtype = names[dtype]
    device = torch.device(device) if device is not None else next(model.parameters()).device
    vocab = int(model.get_input_embeddings().num_embeddings)
    rng = np.random.default_rng(seed)
    gen = torch.Generator().manual_seed(seed)
    on_cuda = device.type == "cuda"

    def sync() -> None:
        if on_cuda:
            torch.cuda.synchronize(device)

    def verify(cache, L: int, n: int) -> float:
        return timed_tree_verify(model, cache, n, L, rng, dtype, device, width=verify_width(n + 1, widths),
                                 sync=sync)

    total = len(contexts_a) * len(nodes_a) * repeats
    done = 0
    out = np.zeros((len(contexts_a), len(nodes_a)))
    with torch.inference_mode():
        for ci, L in enumerate(int(v) for v in contexts_a):
            cache = DynamicCache(config=model.config)
            for s in range(0, L, 2048):
                chunk = torch.randint(0, vocab, (1, min(2048, L - s)), generator=gen).to(device)
                model(input_ids=chunk, cache=cache, use_cache=True)
            # Untimed warm-up: every node count once at the first context (first calls of a shape are slow), the
            # largest one at later contexts.
            for n in nodes_a if ci == 0 else nodes_a[-1:]:
                verify(cache, L, int(n))
            samples = np.zeros((len(nodes_a), repeats))
            for r in range(repeats):
                for j in rng.permutation(len(nodes_a)):
                    samples[j, r] = verify(cache, L, int(nodes_a[j]))
                    if between is not None:
                        between()
                    done += 1
                    if progress is not None:
                        progress(done, total)
            out[ci] = np.median(samples, axis=1)
            del cache
    return out


def cost_model_from_profile(model, cd_s: float, raw: np.ndarray, contexts: Sequence[int], nodes: Sequence[int],
                            repeats: int, dtype, device, meta: dict[str, Any] | None = None) -> CostModel:
    """Fit a measured profile (``raw`` ``[len(contexts), len(nodes)]`` seconds from :func:`profile_verify`, ``cd_s``
    seconds) into a :class:`CostModel`; ``meta`` gains ``model``, ``dtype``, ``device``, ``hardware``, ``repeats``.

    Raises:
        InputError: as :meth:`CostModel.from_measurements`.
    """
    cd_s = check_float("cd_s", cd_s, lo=0.0)
    meta = dict(meta or {})
    meta.setdefault("model", getattr(getattr(model, "config", None), "_name_or_path", "") or type(model).__name__)
    meta.setdefault("dtype", str(dtype).replace("torch.", ""))
    meta.setdefault("device", str(device))
    meta.setdefault("hardware", hardware_description(device))
    meta.setdefault("repeats", int(repeats))
    return CostModel.from_measurements(cd_s, contexts, nodes, raw, meta)
