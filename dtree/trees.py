"""Draft trees: the one tree type and the builders (chain, DDTree, CaDDTree). Pure functions, no model.

Node 0 is the root (the anchor token); nodes are stored in insertion order, so a node's index is its insertion order
and parents always precede children.

Contents:
    :class:`Marginals`, :func:`topk_marginals`: the drafter's top-k marginals per depth (spec 2.2 step 1).
    :func:`build_chain` (DFlash), :func:`build_ddtree` (DDTree best-first heap, spec 2.2),
    :func:`build_caddtree` (CaDDTree greedy stop, spec 3.2), :func:`root_only_tree` (AR). The two heap builders take
    two options: ``spine=True`` (the top-1 chain is always in the tree, spec 5 item 12) and ``calibration=`` (the
    heap and Phi(n) use calibrated path probabilities, :mod:`dtree.calibration`).
    :func:`best_first_order`, :func:`best_path_logprobs`, :func:`theta_curve_for`: theta(n) for any n, for replay
    (spec 3.1).
    :func:`visibility`, :func:`tree_attention_inputs`: ancestor-only tree attention for the verify (spec 2.3-2.4).
    :func:`child_maps`, :func:`walk`: following the target's choices down the tree (spec 2.6).
    :func:`random_tree`: random prefix trees for profiling and tests.
"""

from __future__ import annotations

import heapq
import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, NamedTuple

import numpy as np
import torch

from .errors import InputError, check_int

if TYPE_CHECKING:  # cost.py imports this module (the profiler builds tree masks)
    from .calibration import Calibration
    from .cost import CostModel


@dataclass
class DraftTree:
    """A draft tree of ``n_nodes`` non-root nodes plus the root, in insertion order.

    Arrays have length ``n_nodes + 1``; index 0 is the root (anchor):
        tokens: int64 token ids (root = anchor token).
        parents: int64 parent index, -1 for the root.
        depths: int64 depth, 0 for the root.
        ranks: int64 rank of the token in the depth's sorted drafter marginal (0 = top-1), -1 for the root.
        logprobs: float64 drafter log-prob of the node's token at its depth (natural log), 0 for the root.
        path_logprobs: float64 log q(u), the sum of ``logprobs`` along the root-to-node path (DDTree Eq. 7), 0 root.
        node_costs: float64 marginal verify cost c_n = Cv(n; L) - Cv(n-1; L) in seconds of inserting node n
            (root: Cv(0; L)); NaN when no cost model was given.
        thetas: float64 predicted throughput theta(n) in tokens/s after inserting node n (root: theta(0)); NaN when no
            cost model was given. Phi(n) sums the probabilities the builder ranked by: q(u), or the calibrated
            q~(u) of :mod:`dtree.calibration` for a calibrated build.
    Per tree:
        method: the builder, "ar", "chain", "ddtree" or "caddtree" (the spine / calibrated variants of a run are in
            its :class:`~dtree.records.RunRecord`'s ``method``; the tree keeps the builder's name).
        theta_curve: float64 ``[m]``, theta(n) for n = 0..m-1 as evaluated by the builder (for CaDDTree it includes the
            first rejected candidate, i.e. the point where the greedy rule stopped); empty without a cost model.
    """

    tokens: np.ndarray
    parents: np.ndarray
    depths: np.ndarray
    ranks: np.ndarray
    logprobs: np.ndarray
    path_logprobs: np.ndarray
    node_costs: np.ndarray
    thetas: np.ndarray
    method: str = "ddtree"
    theta_curve: np.ndarray = field(default_factory=lambda: np.zeros(0))

    @property
    def n_nodes(self) -> int:
        """Number of non-root nodes (the budget actually used)."""
        return int(len(self.tokens) - 1)


# ----------------------------------------------------------------------------------------------------------------------
# Drafter marginals
# ----------------------------------------------------------------------------------------------------------------------


@dataclass
class Marginals:
    """The drafter's top-k marginals for one round, depth 1 first.

    Attributes:
        tokens: ``[gamma, K]`` int64 token ids; row ``d`` holds the K most likely tokens of q_{d+1}.
        logprobs: ``[gamma, K]`` float64 natural-log probabilities matching ``tokens``, sorted descending along each
            row (``-inf`` allowed for zero probability, NaN and ``+inf`` not).

    Raises:
        ValueError: on shapes that are not 2-D and equal, on NaN/``+inf``/positive log-probs, or on rows not sorted
            descending.
    """

    tokens: np.ndarray
    logprobs: np.ndarray

    def __post_init__(self) -> None:
        self.tokens = np.asarray(self.tokens, dtype=np.int64)
        self.logprobs = np.asarray(self.logprobs, dtype=np.float64)
        if self.tokens.ndim != 2 or self.tokens.shape != self.logprobs.shape:
            raise ValueError(
                f"Marginals: tokens and logprobs must both be [gamma, K]; got {self.tokens.shape} and {self.logprobs.shape}"
            )
        if np.isnan(self.logprobs).any() or (self.logprobs > _LOGPROB_TOL).any():
            raise ValueError("Marginals: logprobs must be log-probabilities (<= 0, no NaN)")
        if self.logprobs.shape[1] > 1 and (np.diff(self.logprobs, axis=1) > _LOGPROB_TOL).any():
            raise ValueError("Marginals: logprobs must be sorted in descending order along each depth")
        # Rounding in log_softmax can give +1e-7 for a certain token; clip so that path scores never increase.
        self.logprobs = np.minimum(self.logprobs, 0.0)

    @property
    def gamma(self) -> int:
        """Number of drafted depths (the horizon, block size - 1)."""
        return int(self.tokens.shape[0])

    @property
    def width(self) -> int:
        """K, the number of ranked candidates stored per depth."""
        return int(self.tokens.shape[1])


_LOGPROB_TOL = 1e-5


def topk_marginals(logits: torch.Tensor, k: int) -> Marginals:
    """Top-``k`` tokens and log-probs of each depth's drafter distribution (spec 2.2 step 1).

    Args:
        logits: ``[gamma, V]`` drafter logits (any float dtype, any device); row ``d`` is depth ``d + 1``.
        k: candidates kept per depth, ``1 <= k``; values above V are reduced to V.

    Returns:
        :class:`Marginals` with ``[gamma, min(k, V)]`` int64 ids and float64 log-probs. The log-softmax is taken in
        fp32 on the logits' device, then both arrays come to the host in one device->host copy.

    Raises:
        InputError: ``k`` is not an integer >= 1.
        ValueError: ``logits`` is not 2-D or contains NaN.
    """
    k = check_int("k", k, lo=1)
    if logits.dim() != 2:
        raise ValueError(f"logits must be [gamma, V], got shape {tuple(logits.shape)}")
    k = min(k, int(logits.shape[1]))
    with torch.no_grad():
        lp = torch.log_softmax(logits.float(), dim=-1)
        vals, idx = torch.topk(lp, k, dim=-1)
        # One transfer: ids < 2**53 are exact in float64.
        both = torch.stack([vals.double(), idx.double()]).cpu().numpy()
    if np.isnan(both[0]).any():
        raise ValueError("logits contain NaN")
    return Marginals(tokens=both[1].astype(np.int64), logprobs=both[0])


# ----------------------------------------------------------------------------------------------------------------------
# Tree assembly helpers
# ----------------------------------------------------------------------------------------------------------------------


class _TreeBuffer:
    """Growing per-node lists; node 0 is the root."""

    def __init__(self, anchor: int):
        self.tokens = [int(anchor)]
        self.parents = [-1]
        self.depths = [0]
        self.ranks = [-1]
        self.logprobs = [0.0]
        self.path_logprobs = [0.0]

    def add(self, parent: int, depth: int, rank: int, token: int, logprob: float, path_logprob: float) -> int:
        self.tokens.append(int(token))
        self.parents.append(int(parent))
        self.depths.append(int(depth))
        self.ranks.append(int(rank))
        self.logprobs.append(float(logprob))
        self.path_logprobs.append(float(path_logprob))
        return len(self.tokens) - 1

    def truncate(self, n_nodes: int) -> None:
        """Keep the root and the first ``n_nodes`` inserted nodes (in place; a best-first prefix is a valid tree)."""
        for lst in (self.tokens, self.parents, self.depths, self.ranks, self.logprobs, self.path_logprobs):
            del lst[n_nodes + 1:]

    def finish(self, method: str, cost: CostModel | None, context_len: int, theta_curve: np.ndarray | None = None,
               score_lp: list[float] | None = None) -> DraftTree:
        n1 = len(self.tokens)
        path_lp = np.asarray(self.path_logprobs, dtype=np.float64)
        score = path_lp if score_lp is None else np.asarray(score_lp, dtype=np.float64)
        if cost is None:
            node_costs = np.full(n1, np.nan)
            thetas = np.full(n1, np.nan)
            curve = np.zeros(0)
        else:
            cv = np.asarray(cost.cv(np.arange(n1), context_len), dtype=np.float64)
            node_costs = np.concatenate([cv[:1], np.diff(cv)])
            phi = np.concatenate([[0.0], np.cumsum(np.exp(score[1:]))])
            thetas = (1.0 + phi) / (cost.cd_s + cv)
            curve = thetas.copy() if theta_curve is None else np.asarray(theta_curve, dtype=np.float64)
        return DraftTree(
            tokens=np.asarray(self.tokens, dtype=np.int64),
            parents=np.asarray(self.parents, dtype=np.int64),
            depths=np.asarray(self.depths, dtype=np.int64),
            ranks=np.asarray(self.ranks, dtype=np.int64),
            logprobs=np.asarray(self.logprobs, dtype=np.float64),
            path_logprobs=path_lp,
            node_costs=node_costs,
            thetas=thetas,
            method=method,
            theta_curve=curve,
        )


def _check_context(context_len) -> int:
    return check_int("context_len", context_len, lo=0)


def root_only_tree(anchor: int, method: str = "ar", cost: CostModel | None = None, context_len: int = 0) -> DraftTree:
    """A tree with only the root (the anchor): what AR decoding verifies each round.

    With a cost model, ``node_costs[0] = Cv(0; L)`` s and ``thetas[0] = 1 / (Cd + Cv(0; L))`` tokens/s.
    """
    return _TreeBuffer(anchor).finish(method, cost, _check_context(context_len))


def build_chain(marg: Marginals, anchor: int, cost: CostModel | None = None, context_len: int = 0) -> DraftTree:
    """Vanilla DFlash: the top-1 token at every depth 1..gamma, as one chain (spec 1.7).

    Args:
        marg: drafter marginals ``[gamma, K]``.
        anchor: root token id.
        cost: optional cost model; fills ``node_costs`` (s), ``thetas`` and ``theta_curve`` (tokens/s, CaDDTree
            section 3.1 formula theta(n) = (1 + Phi(n)) / (Cd + Cv(n; L)) with Phi the chain's path probabilities).
        context_len: L, tokens in the target cache before the round.

    Returns:
        A :class:`DraftTree` with ``gamma`` non-root nodes, node i at depth i and rank 0, ``method="chain"``.

    Raises:
        InputError: ``context_len`` < 0.
    """
    context_len = _check_context(context_len)
    buf = _TreeBuffer(anchor)
    path = 0.0
    for d in range(marg.gamma):
        lp = float(marg.logprobs[d, 0])
        path = path + lp
        buf.add(parent=d, depth=d + 1, rank=0, token=int(marg.tokens[d, 0]), logprob=lp, path_logprob=path)
    return buf.finish("chain", cost, context_len)


class _Candidate(NamedTuple):
    neg_score: float
    rank_path: tuple
    parent: int
    depth: int
    rank: int


class _Frontier:
    """Lazy best-first enumeration of the ranked product lattice (DDTree, spec 2.2).

    ``pop()`` returns the best prefix not yet in the tree: non-increasing score, ties broken by the lexicographically
    smallest rank tuple. ``accept(cand)`` inserts it into the tree and pushes its next sibling (rank + 1, same
    parent) and its first child (rank 0, next depth). A node's score is its parent's score plus the node's step
    score, so equal prefixes get bit-identical scores.

    Scores: without ``step`` the step score is the drafter log-prob and the score is log q(u) (DDTree Eq. 7). With
    ``step`` (float64 ``[2, gamma, K]``, from :meth:`dtree.calibration.Calibration.step_logprobs`) the step score of
    rank r at depth d is ``step[c, d - 1, r]`` with c = 1 when the parent's path has a rank > 0 (off the spine), else
    0. Lazy enumeration returns the exact top-n prefixes as long as every step score is <= 0 (children never beat
    their parent) and non-increasing in rank (a sibling never beats its elder); calibration tables guarantee both.
    """

    def __init__(self, marg: Marginals, k: int, buf: _TreeBuffer, step: np.ndarray | None = None):
        self.marg, self.k, self.buf, self.step = marg, k, buf, step
        # with raw scores the score list IS the path log-prob list (one source, bit-identical to DDTree)
        self.scores: list[float] = buf.path_logprobs if step is None else [0.0]
        self.off = [False]  # per node: its root-to-node path has a rank > 0 (its children are off the spine)
        self.heap: list[_Candidate] = []
        if k > 0 and marg.gamma > 0:
            self.heap.append(_Candidate(-self._step(0, 0, 0), (0,), 0, 1, 0))

    def _step(self, parent: int, d0: int, rank: int) -> float:
        """Step score of the rank-``rank`` token at depth ``d0 + 1`` under node ``parent``."""
        if self.step is None:
            return float(self.marg.logprobs[d0, rank])
        return float(self.step[1 if self.off[parent] else 0, d0, rank])

    def pop(self) -> _Candidate | None:
        return heapq.heappop(self.heap) if self.heap else None

    def accept(self, c: _Candidate, push_child: bool = True) -> int:
        lp, tok = self.marg.logprobs, self.marg.tokens
        score = -c.neg_score
        own = float(lp[c.depth - 1, c.rank])
        if self.step is None:
            idx = self.buf.add(c.parent, c.depth, c.rank, int(tok[c.depth - 1, c.rank]), own, score)
        else:
            idx = self.buf.add(c.parent, c.depth, c.rank, int(tok[c.depth - 1, c.rank]), own,
                               self.buf.path_logprobs[c.parent] + own)
            self.scores.append(score)
        self.off.append(self.off[c.parent] or c.rank > 0)
        if c.rank + 1 < self.k:
            sib = self.scores[c.parent] + self._step(c.parent, c.depth - 1, c.rank + 1)
            heapq.heappush(self.heap, _Candidate(-sib, c.rank_path[:-1] + (c.rank + 1,), c.parent, c.depth, c.rank + 1))
        if push_child and c.depth < self.marg.gamma:
            child = score + self._step(idx, c.depth, 0)
            heapq.heappush(self.heap, _Candidate(-child, c.rank_path + (0,), idx, c.depth + 1, 0))
        return idx

    def accept_spine(self, s: int) -> None:
        """Insert the top-1 chain of ``s`` nodes (rank 0 at depths 1..s) as nodes 1..s, before any other node.

        Each spine node pushes its rank-1 sibling; only the last one pushes its child (the others' children are the
        next spine nodes, inserted directly). Call on a fresh frontier, with ``1 <= s <= gamma`` and ``k >= 1``.
        """
        cand = self.heap.pop()  # the seed (depth 1, rank 0), the only entry
        for d in range(1, s + 1):
            idx = self.accept(cand, push_child=d == s)
            if d < s:
                cand = _Candidate(-(self.scores[idx] + self._step(idx, d, 0)), (0,) * (d + 1), idx, d + 1, 0)


def _step_table(marg: Marginals, calibration: Calibration | None) -> np.ndarray | None:
    if calibration is None:
        return None
    step = np.asarray(calibration.step_logprobs(marg), dtype=np.float64)
    if step.shape != (2, marg.gamma, marg.width):
        raise ValueError(f"calibration.step_logprobs must return [2, gamma, K] = {(2, marg.gamma, marg.width)}, got "
                         f"{step.shape}")
    return step


def _best_first(marg: Marginals, anchor: int, budget: int, spine: bool,
                calibration: Calibration | None) -> tuple[_TreeBuffer, list[float]]:
    """The DDTree heap (optionally spine-first and/or calibrated) up to ``budget`` nodes; returns (buffer, scores)."""
    buf = _TreeBuffer(anchor)
    frontier = _Frontier(marg, min(budget, marg.width), buf, _step_table(marg, calibration))
    s = min(marg.gamma, budget) if spine and frontier.heap else 0
    if s:
        frontier.accept_spine(s)
    for _ in range(budget - s):
        cand = frontier.pop()
        if cand is None:
            break
        frontier.accept(cand)
    return buf, frontier.scores


def build_ddtree(
    marg: Marginals, anchor: int, budget: int, cost: CostModel | None = None, context_len: int = 0,
    spine: bool = False, calibration: Calibration | None = None,
) -> DraftTree:
    """DDTree: the top-``budget`` prefixes by path probability q(u), built best-first (spec 2.2).

    The prefix set maximises the surrogate E[accepted drafts] = sum_u q(u) (DDTree arXiv 2604.12989, Eq. 7/8,
    Prop. 1) under ``|T| <= budget`` and is prefix-closed (Prop. 2). Nodes come out in non-increasing q(u); ties are
    broken by the lexicographic order of the path's rank tuple, so the result is deterministic. Only ranks
    ``< K = min(budget, marg.width)`` are used, which is exact when ``marg.width >= budget``.

    Spine guarantee (``spine=True``, spec 5 item 12): nodes 1..s, s = min(gamma, budget), are the top-1 chain (the
    rank-0 token at depths 1..s, i.e. :func:`build_chain` cut to s nodes); the remaining ``budget - s`` nodes are the
    best prefixes outside the spine, in best-first order. The tree is then the surrogate-optimal tree of ``budget``
    nodes among those that contain the first s spine nodes, and it is still prefix-closed. With ``budget <= gamma``
    it is exactly the chain of ``budget`` nodes.

    Calibration (``calibration=``, :class:`dtree.calibration.Calibration`): the heap ranks prefixes by the calibrated
    path probability q~(u) = prod over the path of min(1, f(c, d, r) q_d(u_d)) instead of q(u); ``path_logprobs``
    still hold the drafter's log q(u), ``thetas`` use q~.

    Args:
        marg: drafter marginals ``[gamma, K]``.
        anchor: root token id.
        budget: B, the number of non-root nodes (0 gives the root only). Fewer nodes are returned when the lattice
            has fewer than B prefixes (``sum_d K**d``).
        cost: optional cost model; fills ``node_costs`` (s), ``thetas`` and ``theta_curve`` (tokens/s, CaDDTree 3.1).
        context_len: L, tokens in the target cache before the round.
        spine: put the top-1 chain first (see above).
        calibration: rank by calibrated path probabilities (see above).

    Returns:
        :class:`DraftTree` with ``method="ddtree"``, nodes in insertion order (spine first when ``spine``, then
        popping order).

    Raises:
        InputError: ``budget`` < 0 or ``context_len`` < 0.
        ValueError: a calibration whose step table does not have shape ``[2, gamma, K]``.
    """
    budget = check_int("budget", budget, lo=0)
    context_len = _check_context(context_len)
    buf, scores = _best_first(marg, anchor, budget, bool(spine), calibration)
    return buf.finish("ddtree", cost, context_len, score_lp=None if calibration is None else scores)


def best_first_order(marg: Marginals, n_max: int, spine: bool = False,
                     calibration: Calibration | None = None) -> tuple[DraftTree, np.ndarray]:
    """The insertion order of :func:`build_ddtree` with ``budget = n_max`` and the scores it ranked by (for replay).

    Returns:
        ``(tree, scores)``: the tree (anchor 0, no costs) and float64 ``[n + 1]``, the log of the surrogate
        probability of every node (root 0): log q(u), or log q~(u) with ``calibration``. For any B <= n_max the
        B-node tree of the same options is the first B nodes of this order (spine: s = min(gamma, B) spine nodes
        first either way), so delta_n = exp(scores[n]) and Phi(n) = sum of the first n (CaDDTree spec 3.1).

    Raises:
        InputError: ``n_max`` < 0.
    """
    n_max = check_int("n_max", n_max, lo=0)
    buf, scores = _best_first(marg, 0, n_max, bool(spine), calibration)
    return buf.finish("ddtree", None, 0), np.asarray(scores, dtype=np.float64)


def build_caddtree(marg: Marginals, anchor: int, cost: CostModel, context_len: int, max_budget: int,
                   spine: bool = False, calibration: Calibration | None = None) -> DraftTree:
    """CaDDTree: the DDTree heap with a cost-aware greedy stop (CaDDTree arXiv 2606.01813, spec 3.1-3.2).

    Throughput of a round with n nodes: theta(n) = (1 + Phi(n)) / (Cd + Cv(n; L)) tokens/s, where Phi(n) is the sum
    of the n inserted path probabilities (DDTree Prop. 1). Starting from theta(0) = 1 / (Cd + Cv(0; L)), each popped
    candidate of probability delta is inserted only if theta(n+1) = (1 + Phi + delta) / (Cd + Cv(n+1; L)) is strictly
    greater than theta(n); the first non-improving candidate stops the build. When Cv is non-decreasing and convex in
    n (as :class:`~dtree.cost.CostModel` fits it) theta is unimodal and this stop is the global argmax over n of
    theta (spec 3.3).

    A cost model that reads its measured Cv curve (:func:`uses_argmax_stop`; not convex, so theta may have local
    maxima) gets the global argmax explicitly instead: candidates are inserted past non-improvements while a bound
    says a larger prefix could still win (:func:`_no_larger_prefix_wins`), and the tree is the best prefix. On a
    convex curve both rules give the same tree.

    Options (as :func:`build_ddtree`):
        spine: the first s = min(gamma, max_budget) nodes are the top-1 chain, inserted whatever theta does (Phi and
            theta still count them); the greedy rule then runs on the remaining candidates from n = s, so the
            build stops at the argmax of theta(n) over n in [s, max_budget] (the deltas after the spine are
            non-increasing, so spec 3.3's unimodality argument holds from s on).
        calibration: delta = q~(u), the calibrated path probability, both for the heap order and for Phi(n). The
            calibrated steps are <= 1 and non-increasing in rank, so the deltas still come out non-increasing and
            the stop is still the argmax (spec 3.3).

    Args:
        marg: drafter marginals ``[gamma, K]``.
        anchor: root token id.
        cost: the cost model (Cd in s, Cv(n; L) in s).
        context_len: L, tokens in the target cache before the round.
        max_budget: ceiling on the number of non-root nodes (official default 1024); ``K = min(max_budget, width)``.
        spine: guarantee the top-1 chain (see above).
        calibration: a :class:`dtree.calibration.Calibration` (see above).

    Returns:
        :class:`DraftTree` with ``method="caddtree"``. ``theta_curve`` holds theta(0..n) followed by theta(n+1) of the
        first rejected candidate when the rule stopped (length n+2); when the build ended at ``max_budget`` or ran out
        of candidates it has length n+1. Under the argmax stop it holds theta(0..m) of every prefix scanned (m >= n;
        length n+1 when theta was highest at the last prefix scanned).

    Raises:
        InputError: ``max_budget`` < 0 or ``context_len`` < 0.
        ValueError: ``cost`` is None, or a calibration step table of the wrong shape.
    """
    max_budget = check_int("max_budget", max_budget, lo=0)
    context_len = _check_context(context_len)
    if cost is None:
        raise ValueError("build_caddtree needs a cost model")
    cv = np.asarray(cost.cv_curve(context_len, max_budget), dtype=np.float64)
    cd = float(cost.cd_s)
    buf = _TreeBuffer(anchor)
    phi = 0.0
    theta_prev = 1.0 / (cd + cv[0])
    curve = [theta_prev]
    frontier = _Frontier(marg, min(max_budget, marg.width), buf, _step_table(marg, calibration))
    s = min(marg.gamma, max_budget) if spine and frontier.heap else 0
    if s:
        frontier.accept_spine(s)
        for n in range(s):  # forced: Phi and theta count the spine, the rule does not judge it
            delta = math.exp(frontier.scores[n + 1])
            theta_prev = (1.0 + phi + delta) / (cd + cv[n + 1])
            curve.append(theta_prev)
            phi += delta
    argmax = uses_argmax_stop(cost)
    best_n, best_theta = s, theta_prev
    for n in range(s, max_budget):
        cand = frontier.pop()
        if cand is None:
            break
        delta = math.exp(-cand.neg_score)
        theta_new = (1.0 + phi + delta) / (cd + cv[n + 1])
        curve.append(theta_new)
        if not argmax and not theta_new > best_theta:
            break  # the paper's greedy stop: the first candidate that does not raise theta
        frontier.accept(cand)
        phi += delta
        if theta_new > best_theta:
            best_n, best_theta = n + 1, theta_new
        elif _no_larger_prefix_wins(cv, cd, n + 1, max_budget, phi, delta, best_theta):
            break
    buf.truncate(best_n)  # the argmax stop may have inserted nodes past its best prefix
    if calibration is not None:
        del frontier.scores[best_n + 1:]
    return buf.finish("caddtree", cost, context_len, theta_curve=np.asarray(curve),
                      score_lp=None if calibration is None else frontier.scores)


def uses_argmax_stop(cost) -> bool:
    """Whether :func:`build_caddtree` takes the global argmax of theta over the best-first prefixes instead of the
    paper's first-non-improvement stop: when ``cost`` reads its measured Cv curve (``cost.curve == "measured"``: the
    ``-rawcv`` variants, and plain caddtree where :func:`dtree.engine.auto_cv_curve` found the convex fit off).

    Why: the greedy stop is the argmax only when Cv is convex in n (spec 3.3). A measured CPU curve is concave with
    steps (verify padding widths, matmul kernels per width) and noise, so theta(n) has local maxima: on the session-18
    machine (bf16) caddtree stopped at a mean 4.3 nodes on GSM8K, where ddtree:16 ran 1.08x faster.
    """
    return getattr(cost, "curve", "convex") != "convex"


def _no_larger_prefix_wins(cv: np.ndarray, cd: float, m: int, max_budget: int, phi: float, delta: float,
                           best_theta: float) -> bool:
    """The argmax stop's exact early end (:func:`build_caddtree`): after m nodes with Phi(m) = ``phi`` and last step
    ``delta``, later steps are <= delta (best-first order, DDTree Prop. 1), so for every m' in (m, max_budget]
    theta(m') <= (1 + Phi(m) + (m' - m) delta) / (Cd + Cv(m'; L)). True when that bound never exceeds ``best_theta``
    (no larger prefix can beat the best one), so the argmax over all prefixes up to ``max_budget`` is already known.
    ``cv``: Cv(0..max_budget; L) in seconds."""
    if m >= max_budget:
        return False
    later = np.arange(1, max_budget - m + 1, dtype=np.float64)  # m' - m for m' = m + 1 .. max_budget
    return float(np.max((1.0 + phi + later * delta) / (cd + cv[m + 1: max_budget + 1]))) <= best_theta


# ----------------------------------------------------------------------------------------------------------------------
# Throughput curves (for replay and what-if)
# ----------------------------------------------------------------------------------------------------------------------


def best_path_logprobs(marg: Marginals, n_max: int) -> np.ndarray:
    """The ``n_max`` largest path log-probs log q(u) over all prefixes, sorted descending (float64 ``[<= n_max]``).

    delta_n = exp of the n-th entry is the n-th best prefix probability, so Phi*(n) = sum of the first n (CaDDTree
    section 3.1 decomposition). Shorter than ``n_max`` when the lattice has fewer prefixes.

    Raises:
        InputError: ``n_max`` < 0.
    """
    n_max = check_int("n_max", n_max, lo=0)
    return build_ddtree(marg, 0, n_max).path_logprobs[1:].copy()


def theta_curve_for(path_logprobs_sorted_desc: np.ndarray, cost: CostModel, context_len: int) -> np.ndarray:
    """theta(n) = (1 + Phi(n)) / (Cd + Cv(n; L)) in tokens/s for n = 0..m (CaDDTree arXiv 2606.01813, spec 3.1).

    Args:
        path_logprobs_sorted_desc: float64 ``[m]``, natural-log path probabilities of the prefixes in the order they
            would be inserted (for DDTree's best-first order: non-increasing; e.g. :func:`best_path_logprobs` or a
            tree's ``path_logprobs[1:]``). Phi(n) is the sum of the first n probabilities (DDTree Prop. 1).
        cost: the cost model (Cd, Cv in seconds).
        context_len: L, tokens in the target cache before the round.

    Returns:
        float64 ``[m + 1]``; entry n is theta(n). The DDTree-optimal budget under the cost model is its argmax.

    Raises:
        ValueError: input not 1-D or containing NaN. InputError: ``context_len`` < 0.
    """
    context_len = _check_context(context_len)
    lp = np.asarray(path_logprobs_sorted_desc, dtype=np.float64)
    if lp.ndim != 1 or np.isnan(lp).any():
        raise ValueError("path_logprobs_sorted_desc must be a 1-D array without NaN")
    phi = np.concatenate([[0.0], np.cumsum(np.exp(lp))])
    cv = np.asarray(cost.cv(np.arange(len(lp) + 1), context_len), dtype=np.float64)
    return (1.0 + phi) / (float(cost.cd_s) + cv)


# ----------------------------------------------------------------------------------------------------------------------
# Verify inputs (tree attention) and the walk
# ----------------------------------------------------------------------------------------------------------------------


def _check_tree(tree: DraftTree) -> int:
    n1 = len(tree.tokens)
    if n1 < 1 or len(tree.parents) != n1 or len(tree.depths) != n1:
        raise ValueError("DraftTree arrays must have equal length n_nodes + 1 >= 1")
    if tree.parents[0] != -1 or (n1 > 1 and not (tree.parents[1:] < np.arange(1, n1)).all()):
        raise ValueError("DraftTree: root must have parent -1 and every parent must precede its child")
    return n1


def visibility(tree: DraftTree) -> np.ndarray:
    """Ancestor-only attention pattern of the tree (spec 2.3).

    Returns:
        bool ``[n + 1, n + 1]``: entry ``[i, j]`` is True iff node j is node i itself or one of its ancestors (the
        root included). Row i is row parent(i) plus column i, built in insertion order.

    Raises:
        ValueError: malformed tree (a parent that does not precede its child).
    """
    n1 = _check_tree(tree)
    vis = np.zeros((n1, n1), dtype=bool)
    vis[0, 0] = True
    for i in range(1, n1):
        vis[i, :i] = vis[tree.parents[i], :i]
        vis[i, i] = True
    return vis


def verify_width(n_tokens: int, widths=()) -> int:
    """Tokens in the forward that verifies ``n_tokens`` (root + nodes): the smallest of ``widths`` (the widths the
    matmul library runs fast, :data:`dtree.models.CPU_FP32_VERIFY_WIDTHS`) that is >= ``n_tokens``; ``n_tokens``
    itself when it is above them all, or 1 (a single-token forward runs the matrix-vector path, the cheapest of all,
    and is never padded)."""
    if n_tokens < 2:
        return n_tokens
    return min((w for w in widths if w >= n_tokens), default=n_tokens)


def tree_attention_inputs(
    tree: DraftTree, start: int, dtype: torch.dtype, device: torch.device | str | None = None, width: int | None = None
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Inputs of the one target forward that verifies the whole tree over a cache of ``start`` tokens (spec 2.4).

    Args:
        tree: the draft tree (root = anchor, not yet in the cache).
        start: L, number of tokens already in the target's KV cache; the root sits at position ``start``.
        dtype: floating dtype of the target (the mask's dtype).
        device: where to put the tensors.
        width: pad the forward to this many tokens W (None or <= n + 1: no padding). Pad tokens repeat the root
            token at the root's position, see the context and themselves only, and no tree node sees them, so the
            first n + 1 outputs are exactly the unpadded ones; their n + 1 .. W - 1 cache entries must be cropped
            after the forward (:func:`dtree.engine.verify_tree` does). Used where a wider matmul is faster than a
            narrower one (fp32 on CPU: 2-4 tokens cost more than 5, :data:`dtree.models.CPU_FP32_VERIFY_WIDTHS`).

    Returns:
        ``input_ids`` long ``[1, W]`` (the node tokens, then the pads), ``position_ids`` long ``[1, W]`` =
        ``start + depth`` (positions follow depth, not index), and ``attention_mask`` ``[1, 1, W, start + W]``
        additive in ``dtype``: 0 where visible, ``torch.finfo(dtype).min`` where hidden, with W = max(n + 1,
        width). All ``start`` context columns are visible; the tree block is :func:`visibility`. Pass them with
        the ``cache=`` of length ``start``.

    Raises:
        InputError: ``start`` < 0 or ``width`` < 1. ValueError: ``dtype`` not floating or a malformed tree.
    """
    start = check_int("start", start, lo=0)
    if not dtype.is_floating_point:
        raise ValueError(f"dtype must be a floating dtype, got {dtype}")
    vis_np = visibility(tree)
    n1 = vis_np.shape[0]
    w = n1 if width is None else max(n1, check_int("width", width, lo=1))
    tokens, depths = np.asarray(tree.tokens, dtype=np.int64), np.asarray(tree.depths, dtype=np.int64)
    if w > n1:  # pads: copies of the root, each seeing only itself in the block
        tokens = np.concatenate([tokens, np.full(w - n1, tokens[0])])
        depths = np.concatenate([depths, np.zeros(w - n1, np.int64)])
        padded = np.zeros((w, w), dtype=bool)
        padded[:n1, :n1] = vis_np
        padded[np.arange(n1, w), np.arange(n1, w)] = True
        vis_np = padded
    vis = torch.from_numpy(vis_np).to(device)
    ids = torch.from_numpy(tokens).view(1, w).to(device)
    pos = (torch.from_numpy(depths) + start).view(1, w).to(device)
    # Built on the target device: only the [W, W] visibility bits cross from the host.
    mask = torch.zeros((1, 1, w, start + w), dtype=dtype, device=vis.device)
    mask[0, 0, :, start:].masked_fill_(~vis, torch.finfo(dtype).min)
    return ids, pos, mask


def child_maps(tree: DraftTree) -> list[dict[int, int]]:
    """One dict per node (index 0 = root): child token id -> child node index (spec 2.2 step 3).

    Raises:
        ValueError: malformed tree, or two siblings with the same token.
    """
    n1 = _check_tree(tree)
    maps: list[dict[int, int]] = [{} for _ in range(n1)]
    for i in range(1, n1):
        tok = int(tree.tokens[i])
        m = maps[int(tree.parents[i])]
        if tok in m:
            raise ValueError(f"DraftTree: node {i} repeats token {tok} of its sibling {m[tok]}")
        m[tok] = i
    return maps


def walk(tree: DraftTree, target_tokens: np.ndarray) -> tuple[list[int], int]:
    """Follow the target's choices down the verified tree (spec 2.6).

    Args:
        tree: the verified draft tree.
        target_tokens: int ``[n + 1]``, the target's token at each node (argmax, or a sample, of that node's logits).

    Returns:
        ``(accepted, bonus)``: ``accepted`` lists node indices from the root (always ``[0, ...]``); each next node is
        the child whose token equals the target's token at the current node. ``bonus`` is the target's token at the
        last accepted node, the next round's anchor. ``tau = len(accepted)``.

    Raises:
        ValueError: ``target_tokens`` does not have shape ``[n + 1]``.
    """
    n1 = _check_tree(tree)
    post = np.asarray(target_tokens)
    if post.shape != (n1,):
        raise ValueError(f"target_tokens must have shape [{n1}], got {post.shape}")
    maps = child_maps(tree)
    cur = 0
    accepted = [0]
    nxt = int(post[0])
    while nxt in maps[cur]:
        cur = maps[cur][nxt]
        accepted.append(cur)
        nxt = int(post[cur])
    return accepted, nxt


def random_tree(n_nodes: int, rng: np.random.Generator, vocab_size: int, max_depth: int | None = None) -> DraftTree:
    """A random prefix tree with ``n_nodes`` non-root nodes (for profiling the verify cost and for tests).

    Each new node picks a uniformly random parent among the nodes whose depth is below ``max_depth`` and a random
    token that none of its siblings has. Log-probs are random (``-Exp(1)``), path log-probs consistent.

    Raises:
        InputError: ``n_nodes`` < 0, ``vocab_size`` < 2, or ``max_depth`` < 1.
    """
    n_nodes = check_int("n_nodes", n_nodes, lo=0)
    vocab_size = check_int("vocab_size", vocab_size, lo=2)
    if max_depth is not None:
        max_depth = check_int("max_depth", max_depth, lo=1)
    buf = _TreeBuffer(int(rng.integers(vocab_size)))
    used: list[set[int]] = [set()]
    open_nodes = [0]
    for _ in range(n_nodes):
        if not open_nodes:
            raise InputError("n_nodes", f"no tree of {n_nodes} nodes fits vocab_size={vocab_size}, max_depth={max_depth}")
        parent = open_nodes[int(rng.integers(len(open_nodes)))]
        tok = int(rng.integers(vocab_size))
        while tok in used[parent]:
            tok = int(rng.integers(vocab_size))
        used[parent].add(tok)
        lp = -float(rng.exponential())
        depth = buf.depths[parent] + 1
        idx = buf.add(parent, depth, len(used[parent]) - 1, tok, lp, buf.path_logprobs[parent] + lp)
        used.append(set())
        if len(used[parent]) >= vocab_size:
            open_nodes.remove(parent)
        if max_depth is None or depth < max_depth:
            open_nodes.append(idx)
    return buf.finish("ddtree", None, 0)
