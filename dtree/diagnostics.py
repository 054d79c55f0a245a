"""Drafter diagnostics from logged rounds: per-depth top-1 agreement with the target, and calibration of the
DDTree path probability q(u) against observed acceptance.

Both read only what every speculative round logs (:class:`dtree.records.RoundRecord`): the drafter's top-k marginals
per depth, the verified tree (per node: depth, path log-prob), the accepted path, the committed tokens and the bonus
token. No model is needed, so they work on any stored run (:func:`diagnose_store`) as well as on fresh ones
(:func:`run_diagnostics`, ``python -m dtree diagnose``). The shipped drafter's checkpoint folder holds a
``diagnostics.json`` written by ``python -m dtree diagnose --dataset gsm8k ... --out <checkpoint>/diagnostics.json``
(:func:`load`); the Runs page draws the same figures for any selected runs.

**The target's token at depth d.** A round accepts ``m = tau - 1`` drafted tokens: ``committed[1..m]`` are the target's
tokens at depths 1..m and the bonus token is its token at depth m + 1. So the target's token at depth d is known
exactly in the rounds with ``m >= d - 1`` (at temperature 0 it is the target's argmax; when sampling, its sample),
and unknown beyond. AR rounds (no marginals) are skipped.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from .errors import InputError, check_float, check_int
from .records import RoundRecord, RunRecord

FORMAT_VERSION = 1
AGREEMENT_COLUMNS = ["depth", "rounds", "agree", "rate", "in_topk", "topk_rate", "reach"]
CALIBRATION_COLUMNS = ["bin", "q_lo", "q_hi", "nodes", "accepted", "mean_q", "rate"]


# what diagnostics say when no round has drafter marginals (depth_agreement over rounds, diagnose_store over run ids)
_NO_SPECULATIVE_ROUND = "no speculative round (chain / ddtree / caddtree) to diagnose: AR runs log no drafter marginals"


def _speculative(rounds: list[RoundRecord]) -> list[RoundRecord]:
    return [r for r in rounds if r.drafted]


def target_tokens(rnd: RoundRecord) -> list[int]:
    """The target's token at depths 1..min(m + 1, gamma) of one round (``m = tau - 1`` accepted drafts):
    ``committed[1..m]`` then the bonus token. Element ``d - 1`` is depth ``d``; gamma = ``marg_tokens.shape[0]``."""
    gamma = int(rnd.marg_tokens.shape[0])
    return [int(t) for t in (list(rnd.committed[1:]) + [int(rnd.bonus)])[:gamma]]


def depth_agreement(rounds: list[RoundRecord]) -> pd.DataFrame:
    """Per-depth top-1 agreement between drafter and target, conditional on reaching the depth.

    For each depth d = 1..gamma: ``rounds`` = rounds in which the target's tokens at depths 1..d-1 were all accepted
    (so its token t_d at depth d is known, see the module doc); ``agree`` = those where the drafter's top-1 marginal at
    depth d equals t_d; ``rate`` = agree / rounds, the conditional acceptance rate a_d a top-1 chain would have there
    (NaN when ``rounds`` is 0); ``in_topk`` / ``topk_rate``: t_d among the drafter's logged top-k at depth d (what a
    tree could catch with rank < k); ``reach`` = prod_{j<=d} a_j, the chain's probability of accepting depth d.

    Args:
        rounds: logged rounds (AR rounds are skipped; rounds of drafters with different gamma may be mixed).
    Returns:
        DataFrame with :data:`AGREEMENT_COLUMNS`, one row per depth 1..max gamma; ``rounds`` is non-increasing in depth.
    Raises:
        InputError: no round with drafter marginals.
    """
    spec = _speculative(rounds)
    if not spec:
        raise InputError("runs", _NO_SPECULATIVE_ROUND)
    gamma = max(int(r.marg_tokens.shape[0]) for r in spec)
    n, agree, topk = np.zeros(gamma, int), np.zeros(gamma, int), np.zeros(gamma, int)
    for r in spec:
        for d, t in enumerate(target_tokens(r)):
            n[d] += 1
            agree[d] += int(r.marg_tokens[d, 0] == t)
            topk[d] += int(t in r.marg_tokens[d])
    with np.errstate(invalid="ignore", divide="ignore"):
        rate, topk_rate = agree / n, topk / n
    reach = np.cumprod(np.nan_to_num(rate, nan=0.0))
    return pd.DataFrame({"depth": np.arange(1, gamma + 1), "rounds": n, "agree": agree, "rate": rate,
                         "in_topk": topk, "topk_rate": topk_rate, "reach": reach})


def chain_equivalent_tau(rates) -> float:
    """Expected acceptance length of a top-1 chain with conditional per-depth acceptance rates a_1..a_gamma.

    E[tau] = sum_{d>=0} P(tau > d) = 1 + sum_{d=1}^{gamma} prod_{j<=d} a_j (the tail-sum formula for a positive integer
    variable, with P(tau > d) = prod_{j<=d} a_j by the chain rule: depth d is accepted only if 1..d-1 were). With
    a_j = alpha for every j this is Leviathan et al. 2023 ("Fast Inference from Transformers via Speculative
    Decoding"), Eq. 1: (1 - alpha^(gamma+1)) / (1 - alpha). NaN rates (depth never reached) count as 0.

    For a logged chain run the empirical rates telescope and this equals the run's mean tau exactly. For tree runs
    it is an estimate: the rates are conditioned on the tree (not the chain) having reached depth d - 1.
    """
    a = np.nan_to_num(np.asarray(rates, dtype=float), nan=0.0)
    if np.any((a < 0) | (a > 1)):
        raise InputError("rates", "acceptance rates must lie in [0, 1]")
    return float(1.0 + np.cumprod(a).sum())


def _node_table(rounds: list[RoundRecord]) -> pd.DataFrame:
    """Every drafted (non-root) node of every speculative round: depth, q = exp(path log-prob), accepted (0/1)."""
    depth, q, acc = [], [], []
    for r in _speculative(rounds):
        t = r.tree
        on_path = np.zeros(t.n_nodes + 1, bool)
        on_path[list(r.accepted)] = True
        depth.append(np.asarray(t.depths[1:], int))
        q.append(np.exp(np.asarray(t.path_logprobs[1:], float)))
        acc.append(on_path[1:].astype(int))
    if not depth:
        return pd.DataFrame({"depth": np.zeros(0, int), "q": np.zeros(0), "accepted": np.zeros(0, int)})
    return pd.DataFrame({"depth": np.concatenate(depth), "q": np.concatenate(q), "accepted": np.concatenate(acc)})


def _bin_edges(n_bins: int, q_min: float) -> np.ndarray:
    edges = np.logspace(math.log10(q_min), 0.0, n_bins + 1)
    edges[0] = 0.0  # the first bin also holds every q below q_min
    return edges


def calibration_table(rounds: list[RoundRecord], n_bins: int = 10, q_min: float = 1e-4,
                      by_depth: bool = False) -> pd.DataFrame:
    """Calibration of the path probability q(u) (DDTree Eq. 7 surrogate) against observed acceptance.

    Every drafted node u of every round is one sample: predicted q(u) = exp(path log-prob), observed 1 if u is on the
    round's accepted path. Under the surrogate q(u) is u's acceptance probability and sum_u q(u) = Phi(n) the expected
    accepted drafts (DDTree Prop. 1), so a calibrated drafter has ``rate`` close to ``mean_q`` in every bin (spec 6,
    item 7, "surrogate mis-calibration"). Bins are log-spaced in q: edges 10^linspace(log10 q_min, 0, n_bins + 1),
    the first bin extended down to 0.

    Args:
        rounds: logged rounds (AR rounds skipped).
        n_bins: number of bins, 1..100.
        q_min: the lowest edge above 0, in [1e-12, 0.999]; nodes with q below it fall in the first bin.
        by_depth: one set of bins per node depth (adds a ``depth`` column first).
    Returns:
        DataFrame with :data:`CALIBRATION_COLUMNS` (``bin`` index from 0; ``q_lo``/``q_hi`` its edges; ``nodes``;
        ``accepted`` nodes; ``mean_q``; observed ``rate`` = accepted / nodes), empty bins left out.
    Raises:
        InputError: bad ``n_bins`` or ``q_min``.
    """
    n_bins = check_int("n_bins", n_bins, 1, 100)
    q_min = check_float("q_min", q_min, 1e-12, 0.999)
    nodes = _node_table(rounds)
    edges = _bin_edges(n_bins, q_min)
    nodes["bin"] = np.clip(np.searchsorted(edges, nodes["q"].to_numpy(), side="right") - 1, 0, n_bins - 1)
    keys = ["depth", "bin"] if by_depth else ["bin"]
    g = nodes.groupby(keys, sort=True).agg(nodes=("q", "size"), accepted=("accepted", "sum"), mean_q=("q", "mean"))
    g = g.reset_index()
    g["q_lo"], g["q_hi"] = edges[g["bin"]], edges[g["bin"] + 1]
    g["rate"] = g["accepted"] / g["nodes"]
    cols = (["depth"] if by_depth else []) + CALIBRATION_COLUMNS
    return g[cols].astype({"nodes": int, "accepted": int})


def expected_calibration_error(table: pd.DataFrame) -> float:
    """ECE = sum_b (nodes_b / N) |mean_q_b - rate_b| over a :func:`calibration_table` (Naeini et al. 2015); NaN when
    empty."""
    n = table["nodes"].sum()
    return float((table["nodes"] * (table["mean_q"] - table["rate"]).abs()).sum() / n) if n else float("nan")


@dataclass
class Diagnostics:
    """Diagnostics of a set of logged rounds.

    Attributes:
        agreement: :func:`depth_agreement` table.
        calibration: :func:`calibration_table` (all depths pooled).
        calibration_by_depth: :func:`calibration_table` with ``by_depth=True``.
        summary: n_runs, n_rounds, mean_tau (tokens/round, logged), chain_equivalent_tau (tokens/round,
            :func:`chain_equivalent_tau` of the agreement rates), mean_phi (sum of q over a round's nodes = expected
            accepted drafts, per round), mean_accepted_drafts (observed, per round), ece, n_nodes.
        meta: free-form provenance (dataset, method, models, run ids, created ...).
    """

    agreement: pd.DataFrame
    calibration: pd.DataFrame
    calibration_by_depth: pd.DataFrame
    summary: dict[str, float]
    meta: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict (NaN written as null)."""
        def rows(df):
            return json.loads(df.to_json(orient="records"))

        clean = {k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in self.summary.items()}
        return {"format": "dtree-diagnostics", "version": FORMAT_VERSION, "meta": self.meta, "summary": clean,
                "agreement": rows(self.agreement), "calibration": rows(self.calibration),
                "calibration_by_depth": rows(self.calibration_by_depth)}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Diagnostics:
        """Inverse of :meth:`to_dict`. Raises InputError for a dict that is not a dtree diagnostics file."""
        if not isinstance(d, dict) or d.get("format") != "dtree-diagnostics":
            raise InputError("diagnostics", "not a dtree diagnostics file (written by `python -m dtree diagnose`)")
        if d.get("version") != FORMAT_VERSION:
            raise InputError("diagnostics", f"format version {d.get('version')!r}, this dtree reads {FORMAT_VERSION}")
        cal_cols = ["depth"] + CALIBRATION_COLUMNS
        summary = {k: (float("nan") if v is None else v) for k, v in d["summary"].items()}
        return cls(pd.DataFrame(d["agreement"], columns=AGREEMENT_COLUMNS).astype({"rate": float, "topk_rate": float}),
                   pd.DataFrame(d["calibration"], columns=CALIBRATION_COLUMNS),
                   pd.DataFrame(d["calibration_by_depth"], columns=cal_cols), summary, d.get("meta", {}))

    def save(self, path: str | Path) -> Path:
        """Write :meth:`to_dict` as indented JSON, atomically (:func:`dtree.cost.write_text_atomic`; parent folders
        created).

        Raises:
            InputError ("out"): the file cannot be written.
        """
        from .cost import write_text_atomic

        return write_text_atomic(path, json.dumps(self.to_dict(), indent=1) + "\n", "out")


def shipped_path() -> Path:
    """``diagnostics.json`` in the shipped drafter's checkpoint folder (:func:`dtree.drafter.default_drafter_path`),
    written there by ``python -m dtree diagnose ... --out``; it may be absent."""
    from .drafter import default_drafter_path

    return default_drafter_path() / "diagnostics.json"


def load(path: str | Path) -> Diagnostics:
    """Read a diagnostics JSON file (e.g. a checkpoint's ``diagnostics.json``). Raises InputError when it is missing
    or not a diagnostics file."""
    try:
        d = json.loads(Path(path).read_text())
    except FileNotFoundError:
        raise InputError("diagnostics", f"no diagnostics file at {path}") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise InputError("diagnostics", f"{path} is not JSON: {e}") from None
    return Diagnostics.from_dict(d)


def diagnose_rounds(rounds: list[RoundRecord], n_bins: int = 10, q_min: float = 1e-4, n_runs: int = 1,
                    meta: dict[str, Any] | None = None) -> Diagnostics:
    """:class:`Diagnostics` of pooled ``rounds`` (see :func:`depth_agreement`, :func:`calibration_table`).

    Raises InputError when there is no speculative round, or for bad bins.
    """
    agree = depth_agreement(rounds)
    spec = _speculative(rounds)
    cal = calibration_table(spec, n_bins, q_min)
    cal_d = calibration_table(spec, n_bins, q_min, by_depth=True)
    phi = [float(np.exp(r.tree.path_logprobs[1:]).sum()) for r in spec]
    summary = {"n_runs": int(n_runs), "n_rounds": len(spec), "n_nodes": int(cal["nodes"].sum()),
               "mean_tau": float(np.mean([r.tau for r in spec])),
               "chain_equivalent_tau": chain_equivalent_tau(agree["rate"]),
               "mean_phi": float(np.mean(phi)), "mean_accepted_drafts": float(np.mean([r.tau - 1 for r in spec])),
               "ece": expected_calibration_error(cal)}
    return Diagnostics(agree, cal, cal_d, summary, dict(meta or {}))


def diagnose_runs(runs: list[RunRecord], n_bins: int = 10, q_min: float = 1e-4,
                  meta: dict[str, Any] | None = None) -> Diagnostics:
    """:class:`Diagnostics` of the pooled rounds of ``runs`` (RunRecords with rounds, e.g. from
    :meth:`dtree.store.TraceStore.load_run`). ``meta`` gets run_ids, methods, target and drafters added.

    Raises InputError when no run has a speculative round."""
    rounds = [r for run in runs for r in run.rounds]
    info = {"run_ids": [run.run_id for run in runs], "methods": sorted({run.method for run in runs}),
            "target": sorted({run.target for run in runs}), "drafter": sorted({str(run.drafter) for run in runs})}
    return diagnose_rounds(rounds, n_bins, q_min, n_runs=len(runs), meta={**info, **(meta or {})})


def diagnose_store(store, run_ids: list[int], n_bins: int = 10, q_min: float = 1e-4) -> Diagnostics:
    """:func:`diagnose_runs` of stored runs ``run_ids`` of a :class:`dtree.store.TraceStore`.

    Raises InputError for an unknown id, an empty list, or no speculative round among them."""
    if not run_ids:
        raise InputError("run", "give at least one run id")
    runs = [store.load_run(int(i)) for i in run_ids]
    if not any(_speculative(r.rounds) for r in runs):  # named after the option the ids came from (--run)
        raise InputError("run", f"run(s) {', '.join(str(i) for i in run_ids)} have {_NO_SPECULATIVE_ROUND}")
    return diagnose_runs(runs, n_bins, q_min)


def run_diagnostics(backend, prompts: list[str], cfg, store=None, progress=None, n_bins: int = 10,
                    q_min: float = 1e-4, meta: dict[str, Any] | None = None) -> tuple[Diagnostics, list[RunRecord]]:
    """Decode every prompt with ``cfg`` (a :class:`dtree.engine.DecodeConfig` of a speculative method) through
    ``backend`` (:class:`dtree.backend.Backend`), logging to ``store`` if given, and diagnose the pooled rounds.

    ``progress(done, total)`` is called after each prompt. Returns ``(diagnostics, runs)``; ``meta`` is extended with
    the method, its budget, max_new_tokens, temperature, dtype, device and a UTC ``created`` time.
    Raises InputError for AR (no drafter marginals) or bad input to the decode.
    """
    if cfg.method == "ar":
        raise InputError("method", "diagnostics need drafter marginals: use chain, ddtree:B or caddtree")
    runs = []
    for i, p in enumerate(prompts):
        runs.append(backend.decode(p, cfg, store=store))
        if progress is not None:
            progress(i + 1, len(prompts))
    info = {"method": cfg.method, "budget": cfg.budget, "max_new_tokens": cfg.max_new_tokens,
            "temperature": cfg.temperature, "n_prompts": len(prompts), "dtype": runs[0].dtype,
            "device": runs[0].device, "created": datetime.now(UTC).isoformat(timespec="seconds")}
    return diagnose_runs(runs, n_bins, q_min, meta={**info, **(meta or {})}), runs
