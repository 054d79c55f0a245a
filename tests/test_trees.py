"""Tests of the tree builders, visibility, tree attention inputs and the walk (dtree/trees.py).

Expected results come from brute force (enumerating every prefix of small lattices), never from hard-coded outputs.
"""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import torch

from dtree.cost import CostModel
from dtree.errors import InputError
from dtree.trees import (
    DraftTree,
    Marginals,
    best_path_logprobs,
    build_caddtree,
    build_chain,
    build_ddtree,
    child_maps,
    random_tree,
    root_only_tree,
    theta_curve_for,
    topk_marginals,
    tree_attention_inputs,
    uses_argmax_stop,
    visibility,
    walk,
)

# ----------------------------------------------------------------------------------------------------------------------
# helpers
# ----------------------------------------------------------------------------------------------------------------------


def random_marginals(rng: np.random.Generator, gamma: int, k: int, vocab: int = 50, alpha: float = 1.0) -> Marginals:
    """Sorted top-k of random full distributions over ``vocab`` tokens (so rows sum to < 1 like real top-k)."""
    toks = np.zeros((gamma, k), dtype=np.int64)
    lps = np.zeros((gamma, k))
    for d in range(gamma):
        p = rng.dirichlet(np.full(vocab, alpha))
        order = np.argsort(-p, kind="stable")[:k]
        toks[d] = order
        lps[d] = np.log(p[order])
    return Marginals(toks, lps)


def all_prefixes(marg: Marginals) -> list[tuple[float, tuple[int, ...]]]:
    """Every prefix of the ranked lattice as (path log-prob, rank tuple), sorted best first (ties: rank tuple)."""
    out = []
    for depth in range(1, marg.gamma + 1):
        for ranks in itertools.product(range(marg.width), repeat=depth):
            lp = 0.0
            for d, r in enumerate(ranks):
                lp = lp + float(marg.logprobs[d, r])
            out.append((lp, ranks))
    out.sort(key=lambda t: (-t[0], t[1]))
    return out


def rank_tuples(tree: DraftTree) -> list[tuple[int, ...]]:
    """Rank path of every non-root node, in insertion order."""
    paths: list[tuple[int, ...]] = [()]
    for i in range(1, tree.n_nodes + 1):
        paths.append(paths[tree.parents[i]] + (int(tree.ranks[i]),))
    return paths[1:]


def ancestors(tree: DraftTree, i: int) -> set[int]:
    out = set()
    while i != -1:
        out.add(i)
        i = int(tree.parents[i])
    return out


def cost_from_curve(cv: np.ndarray, cd_s: float, context: int = 100) -> CostModel:
    """A one-context cost model whose fitted curve is exactly ``cv`` on the grid 0..len(cv)-1."""
    cv = np.asarray(cv, dtype=np.float64)[None, :]
    return CostModel(cd_s, [context], np.arange(cv.shape[1]), cv, cv, {"source": "test"})


def random_convex_cv(rng: np.random.Generator, m: int) -> np.ndarray:
    """Random non-decreasing convex curve on 0..m (seconds): flat start, then growing slopes."""
    flat = int(rng.integers(0, m // 2 + 1))
    incr = np.sort(rng.exponential(1.0, size=m)) * rng.uniform(1e-4, 5e-3)
    incr[:flat] = 0.0
    return rng.uniform(0.01, 0.1) + np.r_[0.0, np.cumsum(incr)]


def check_tree_invariants(tree: DraftTree, marg: Marginals, anchor: int) -> None:
    n1 = tree.n_nodes + 1
    for name in ("tokens", "parents", "depths", "ranks", "logprobs", "path_logprobs", "node_costs", "thetas"):
        assert len(getattr(tree, name)) == n1, name
    assert tree.tokens[0] == anchor and tree.parents[0] == -1 and tree.depths[0] == 0 and tree.ranks[0] == -1
    assert tree.logprobs[0] == 0 and tree.path_logprobs[0] == 0
    for i in range(1, n1):
        p = tree.parents[i]
        assert 0 <= p < i  # parents precede children
        assert tree.depths[i] == tree.depths[p] + 1
        d, r = tree.depths[i] - 1, tree.ranks[i]
        assert tree.tokens[i] == marg.tokens[d, r]
        assert tree.logprobs[i] == marg.logprobs[d, r]
        assert math.isclose(tree.path_logprobs[i], tree.path_logprobs[p] + tree.logprobs[i], rel_tol=0, abs_tol=1e-12)
    # prefix-closed: the parent of every rank path is in the tree (the root's children have the empty parent path)
    paths = set(rank_tuples(tree))
    assert all(p[:-1] in paths or len(p) == 1 for p in paths)
    assert len(paths) == tree.n_nodes
    child_maps(tree)  # siblings have distinct tokens


# ----------------------------------------------------------------------------------------------------------------------
# marginals
# ----------------------------------------------------------------------------------------------------------------------


def test_topk_marginals_matches_numpy_softmax():
    gen = torch.Generator().manual_seed(0)
    logits = torch.randn(5, 40, generator=gen, dtype=torch.float64) * 3
    for k in (1, 7, 40, 100):
        m = topk_marginals(logits.to(torch.bfloat16), k)
        x = logits.to(torch.bfloat16).float().double().numpy()
        lse = np.log(np.exp(x - x.max(1, keepdims=True)).sum(1, keepdims=True)) + x.max(1, keepdims=True)
        ref = x - lse
        kk = min(k, 40)
        assert m.tokens.shape == (5, kk) and m.tokens.dtype == np.int64 and m.logprobs.dtype == np.float64
        assert (np.diff(m.logprobs, axis=1) <= 0).all()
        np.testing.assert_allclose(m.logprobs, np.take_along_axis(ref, m.tokens, 1), atol=1e-5)
        np.testing.assert_allclose(m.logprobs, -np.sort(-ref, axis=1)[:, :kk], atol=1e-5)


def test_marginals_validation():
    ok_lp = np.log([[0.5, 0.3], [0.6, 0.1]])
    Marginals(np.zeros((2, 2)), ok_lp)
    with pytest.raises(ValueError):
        Marginals(np.zeros((2, 3)), ok_lp)
    with pytest.raises(ValueError):
        Marginals(np.zeros((2, 2)), np.array([[np.nan, -1.0], [-1.0, -2.0]]))
    with pytest.raises(ValueError):
        Marginals(np.zeros((2, 2)), ok_lp[:, ::-1])  # ascending
    with pytest.raises(ValueError):
        Marginals(np.zeros((2, 2)), -ok_lp)  # positive log-probs
    with pytest.raises(InputError):
        topk_marginals(torch.zeros(2, 5), 0)
    with pytest.raises(ValueError):
        topk_marginals(torch.zeros(5), 2)


# ----------------------------------------------------------------------------------------------------------------------
# chain and DDTree
# ----------------------------------------------------------------------------------------------------------------------


def test_chain_is_top1_spine():
    rng = np.random.default_rng(1)
    for _ in range(10):
        gamma, k = int(rng.integers(1, 8)), int(rng.integers(1, 5))
        marg = random_marginals(rng, gamma, k)
        tree = build_chain(marg, 99)
        check_tree_invariants(tree, marg, 99)
        assert tree.method == "chain" and tree.n_nodes == gamma
        np.testing.assert_array_equal(tree.tokens[1:], marg.tokens[:, 0])
        np.testing.assert_array_equal(tree.parents[1:], np.arange(gamma))
        np.testing.assert_array_equal(tree.ranks[1:], 0)
        np.testing.assert_allclose(tree.path_logprobs[1:], np.cumsum(marg.logprobs[:, 0]))
        assert np.isnan(tree.thetas).all() and len(tree.theta_curve) == 0


@pytest.mark.parametrize("seed", range(30))
def test_ddtree_equals_brute_force_top_b(seed):
    rng = np.random.default_rng(100 + seed)
    gamma, k = int(rng.integers(3, 5)), int(rng.integers(3, 5))
    marg = random_marginals(rng, gamma, k, vocab=int(rng.integers(k, 30)), alpha=float(rng.uniform(0.1, 2)))
    brute = all_prefixes(marg)
    total = len(brute)
    budgets = range(total + 3) if total <= 120 else sorted({0, 1, 2, total - 1, total, total + 2,
                                                             *rng.integers(0, total, 25).tolist()})
    for b in budgets:
        tree = build_ddtree(marg, 7, b)
        assert tree.method == "ddtree"
        assert tree.n_nodes == min(b, total)
        check_tree_invariants(tree, marg, 7)
        got = rank_tuples(tree)
        assert set(got) == {r for _, r in brute[: min(b, total)]}
        # insertion order is best-first: exactly the brute-force order
        assert got == [r for _, r in brute[: min(b, total)]]
        assert (np.diff(tree.path_logprobs[1:]) <= 0).all()


def test_ddtree_ties_are_broken_by_rank_tuple():
    # Uniform marginals: every prefix of a depth ties; order must be (depth, lexicographic ranks).
    k, gamma = 3, 3
    marg = Marginals(np.arange(gamma * k).reshape(gamma, k), np.full((gamma, k), math.log(1 / 4)))
    tree = build_ddtree(marg, 0, 39)
    got = rank_tuples(tree)
    assert got == sorted(got, key=lambda r: (len(r), r))
    again = build_ddtree(marg, 0, 39)
    np.testing.assert_array_equal(tree.tokens, again.tokens)


def test_ddtree_budget_edges():
    rng = np.random.default_rng(3)
    marg = random_marginals(rng, 4, 3)
    root = build_ddtree(marg, 5, 0)
    assert root.n_nodes == 0 and root.tokens.tolist() == [5] and root.parents.tolist() == [-1]
    one = build_ddtree(marg, 5, 1)
    assert one.tokens[1] == marg.tokens[0, 0] and one.depths[1] == 1
    with pytest.raises(InputError) as e:
        build_ddtree(marg, 5, -1)
    assert e.value.field == "budget"
    with pytest.raises(InputError):
        build_ddtree(marg, 5, 3, context_len=-2)


def test_cost_fields_filled_and_consistent():
    rng = np.random.default_rng(4)
    marg = random_marginals(rng, 5, 4)
    cost = cost_from_curve(random_convex_cv(rng, 40), cd_s=0.02)
    L = 100
    for tree in (build_chain(marg, 1, cost, L), build_ddtree(marg, 1, 12, cost, L), root_only_tree(1, "ar", cost, L)):
        n = tree.n_nodes
        cv = cost.cv_curve(L, n)
        np.testing.assert_allclose(np.cumsum(tree.node_costs), cv, rtol=1e-12)
        assert tree.node_costs[0] == pytest.approx(cost.cv(0, L))
        phi = np.r_[0.0, np.cumsum(np.exp(tree.path_logprobs[1:]))]
        np.testing.assert_allclose(tree.thetas, (1 + phi) / (cost.cd_s + cv), rtol=1e-12)
        assert tree.thetas[0] == pytest.approx(1 / (cost.cd_s + cost.cv(0, L)))
        np.testing.assert_allclose(tree.theta_curve, tree.thetas)
        np.testing.assert_allclose(theta_curve_for(tree.path_logprobs[1:], cost, L), tree.thetas, rtol=1e-12)
    tree = build_ddtree(marg, 1, 12)
    assert np.isnan(tree.node_costs).all() and np.isnan(tree.thetas).all() and tree.theta_curve.size == 0


# ----------------------------------------------------------------------------------------------------------------------
# CaDDTree
# ----------------------------------------------------------------------------------------------------------------------


def check_caddtree_is_best_prefix(marg: Marginals, brute: list, cost: CostModel, L: int, max_budget: int):
    """Build caddtree (anchor 3) and check it is the best-first prefix with the highest theta(n) by brute force over
    ``brute`` (:func:`all_prefixes`); returns ``(tree, theta [n_lim + 1], best n)``."""
    n_lim = min(max_budget, len(brute))
    phi = np.r_[0.0, np.cumsum(np.exp([lp for lp, _ in brute[:n_lim]]))]
    theta = (1 + phi) / (cost.cd_s + np.array([cost.cv(n, L) for n in range(n_lim + 1)]))
    tree = build_caddtree(marg, 3, cost, L, max_budget)
    assert tree.method == "caddtree"
    best = int(np.argmax(theta))
    if tree.n_nodes != best:
        # only a floating-point tie may move the pick (a depth-4 path can have q(u) ~ 1e-20, below 1 ulp of theta)
        assert theta[tree.n_nodes] == pytest.approx(theta[best], rel=1e-12), (max_budget, theta)
        best = tree.n_nodes
    check_tree_invariants(tree, marg, 3)
    assert rank_tuples(tree) == [r for _, r in brute[:best]]
    return tree, theta, best


@pytest.mark.parametrize("seed", range(25))
def test_caddtree_budget_is_argmax_theta_for_convex_cost(seed):
    rng = np.random.default_rng(500 + seed)
    gamma, k = int(rng.integers(3, 5)), int(rng.integers(3, 5))
    marg = random_marginals(rng, gamma, k, vocab=int(rng.integers(k, 20)), alpha=float(rng.uniform(0.1, 2)))
    brute = all_prefixes(marg)
    m = len(brute)
    cost = cost_from_curve(random_convex_cv(rng, m + 5), cd_s=float(rng.uniform(0.001, 0.05)))
    L = 100
    for max_budget in (0, 1, 3, m // 2, m, m + 4):
        n_lim = min(max_budget, m)
        tree, theta, best = check_caddtree_is_best_prefix(marg, brute, cost, L, max_budget)
        # the curve holds theta(0..n) and, when the rule stopped, the first rejected point
        curve = tree.theta_curve
        np.testing.assert_allclose(curve[: best + 1], theta[: best + 1], rtol=1e-10)
        np.testing.assert_allclose(curve[: best + 1], tree.thetas, rtol=1e-10)
        if best < n_lim:
            assert len(curve) == best + 2 and curve[-1] <= curve[-2]
            assert curve[-1] == pytest.approx(theta[best + 1], rel=1e-10)
        else:
            assert len(curve) == best + 1


def test_caddtree_flat_cost_grows_to_max_budget():
    rng = np.random.default_rng(6)
    marg = random_marginals(rng, 6, 8)
    flat = cost_from_curve(np.full(10, 0.05), cd_s=0.01)  # Cv constant: every node with q(u) > 0 is worth it
    for max_budget in (0, 1, 17, 200):
        tree = build_caddtree(marg, 0, flat, 500, max_budget)
        assert tree.n_nodes == max_budget
        ref = build_ddtree(marg, 0, max_budget)
        np.testing.assert_array_equal(tree.tokens, ref.tokens)
        np.testing.assert_array_equal(tree.parents, ref.parents)
        assert (np.diff(tree.theta_curve) > 0).all()


def test_caddtree_steep_cost_stops_at_root_or_first_chain_node():
    rng = np.random.default_rng(7)
    marg = random_marginals(rng, 5, 4)
    cd, cv0 = 0.01, 0.04
    # Steep from the first node: inserting node 1 pays off iff q1 > c1 / (Cd + Cv(0)) (spec 3.2 closed form); with
    # c1 / (Cd + Cv(0)) >= 1 >= q1 nothing is ever inserted.
    steep = cost_from_curve(cv0 + (cd + cv0) * np.arange(20), cd_s=cd)
    tree = build_caddtree(marg, 4, steep, 0, 64)
    assert tree.n_nodes == 0 and tree.tokens.tolist() == [4]
    assert len(tree.theta_curve) == 2 and tree.theta_curve[1] <= tree.theta_curve[0]
    # Free first node, then steep: exactly one node, the top-1 token at depth 1 (the chain's first node).
    one = cost_from_curve(np.r_[cv0, cv0 + (cd + cv0) * np.arange(19)], cd_s=cd)
    tree = build_caddtree(marg, 4, one, 0, 64)
    assert tree.n_nodes == 1
    assert tree.tokens[1] == build_chain(marg, 4).tokens[1] and tree.depths[1] == 1
    # The threshold is exact: a slope just below q1 * (Cd + Cv(0)) accepts node 1, just above rejects it.
    q1 = math.exp(marg.logprobs[0, 0])
    for factor, expect_at_least_one in ((0.999, True), (1.001, False)):
        c1 = factor * q1 * (cd + cv0)
        cm = cost_from_curve(cv0 + c1 * np.arange(3), cd_s=cd)
        got = build_caddtree(marg, 4, cm, 0, 1)
        assert (got.n_nodes >= 1) == expect_at_least_one


def test_caddtree_validation():
    rng = np.random.default_rng(8)
    marg = random_marginals(rng, 3, 3)
    cost = cost_from_curve(np.linspace(0.01, 0.02, 5), 0.01)
    with pytest.raises(InputError):
        build_caddtree(marg, 0, cost, 10, -1)
    with pytest.raises(ValueError):
        build_caddtree(marg, 0, None, 10, 4)  # type: ignore[arg-type]


def test_best_path_logprobs_and_theta_curve_for():
    rng = np.random.default_rng(9)
    marg = random_marginals(rng, 3, 4)
    brute = all_prefixes(marg)
    for n in (0, 5, len(brute), len(brute) + 3):
        np.testing.assert_allclose(best_path_logprobs(marg, n), [lp for lp, _ in brute[:n]])
    cost = cost_from_curve(random_convex_cv(rng, 30), 0.003)
    lps = best_path_logprobs(marg, 20)
    curve = theta_curve_for(lps, cost, 77)
    assert curve.shape == (21,)
    tree = build_caddtree(marg, 0, cost, 77, 20)
    assert tree.n_nodes == int(np.argmax(curve))
    with pytest.raises(ValueError):
        theta_curve_for(np.array([np.nan]), cost, 0)


# ----------------------------------------------------------------------------------------------------------------------
# visibility, attention inputs
# ----------------------------------------------------------------------------------------------------------------------


def test_visibility_rows_are_ancestors():
    rng = np.random.default_rng(10)
    trees = [random_tree(int(rng.integers(0, 30)), rng, 30, max_depth=int(rng.integers(1, 6))) for _ in range(20)]
    trees.append(build_ddtree(random_marginals(rng, 4, 4), 0, 30))
    for tree in trees:
        vis = visibility(tree)
        n1 = tree.n_nodes + 1
        assert vis.shape == (n1, n1) and vis.dtype == bool
        for i in range(n1):
            assert set(np.flatnonzero(vis[i]).tolist()) == ancestors(tree, i)


def test_tree_attention_inputs_shapes_and_values():
    rng = np.random.default_rng(11)
    tree = random_tree(12, rng, 100)
    vis = visibility(tree)
    for dtype in (torch.float32, torch.bfloat16):
        for start in (0, 5):
            ids, pos, mask = tree_attention_inputs(tree, start, dtype, "cpu")
            n1 = tree.n_nodes + 1
            assert ids.shape == (1, n1) and ids.dtype == torch.long
            assert ids[0].tolist() == tree.tokens.tolist()
            assert pos.dtype == torch.long and pos[0].tolist() == (start + tree.depths).tolist()
            assert mask.shape == (1, 1, n1, start + n1) and mask.dtype == dtype
            assert (mask[0, 0, :, :start] == 0).all()
            block = mask[0, 0, :, start:]
            assert torch.equal(block == 0, torch.from_numpy(vis))
            assert (block[~torch.from_numpy(vis)] == torch.finfo(dtype).min).all()
    with pytest.raises(InputError):
        tree_attention_inputs(tree, -1, torch.float32, "cpu")
    with pytest.raises(ValueError):
        tree_attention_inputs(tree, 0, torch.int64, "cpu")


def test_tree_verify_on_real_model_matches_sequential_paths():
    """Each node's logits from one tree-masked forward equal those of its root path run as a plain sequence."""
    from transformers import DynamicCache

    from dtree.models import load_target

    model = load_target("embedded", dtype="float32", device="cpu").model
    rng = np.random.default_rng(12)
    vocab = model.get_input_embeddings().num_embeddings
    ctx = torch.as_tensor(rng.integers(0, vocab, size=(1, 6)))
    tree = random_tree(7, rng, vocab, max_depth=3)
    with torch.inference_mode():
        cache = DynamicCache(config=model.config)
        model(input_ids=ctx, cache=cache, use_cache=True)
        ids, pos, mask = tree_attention_inputs(tree, ctx.shape[1], torch.float32, "cpu")
        tree_logits = model(input_ids=ids, attention_mask=mask, position_ids=pos, cache=cache, use_cache=True).logits[0]
        for i in range(tree.n_nodes + 1):
            path = sorted(ancestors(tree, i))  # ancestors have smaller indices, so sorted = root-to-node order
            seq = torch.cat([ctx, torch.as_tensor(tree.tokens[path]).view(1, -1)], dim=1)
            ref = model(input_ids=seq).logits[0, -1]
            torch.testing.assert_close(tree_logits[i], ref, atol=2e-4, rtol=1e-4)


# ----------------------------------------------------------------------------------------------------------------------
# child maps and the walk
# ----------------------------------------------------------------------------------------------------------------------


def hand_tree() -> DraftTree:
    """root(5) -> a(1) -> c(3); root -> b(2)."""
    n = 4
    return DraftTree(
        tokens=np.array([5, 1, 2, 3]), parents=np.array([-1, 0, 0, 1]), depths=np.array([0, 1, 1, 2]),
        ranks=np.array([-1, 0, 1, 0]), logprobs=np.zeros(n), path_logprobs=np.zeros(n),
        node_costs=np.full(n, np.nan), thetas=np.full(n, np.nan),
    )


def test_walk_hand_cases():
    tree = hand_tree()
    assert child_maps(tree) == [{1: 1, 2: 2}, {3: 3}, {}, {}]
    assert walk(tree, np.array([1, 3, 0, 7])) == ([0, 1, 3], 7)  # full path, bonus from the leaf
    assert walk(tree, np.array([2, 3, 9, 7])) == ([0, 2], 9)  # other branch, bonus from node b
    assert walk(tree, np.array([1, 8, 0, 7])) == ([0, 1], 8)  # mismatch at depth 2
    assert walk(tree, np.array([4, 3, 3, 3])) == ([0], 4)  # nothing accepted: the target's own token is the bonus
    with pytest.raises(ValueError):
        walk(tree, np.array([1, 3, 0]))


def brute_walk(tree: DraftTree, post: np.ndarray) -> tuple[list[int], int]:
    """Deepest node whose every edge token equals the target's token at the edge's parent."""
    best = 0
    for v in range(1, tree.n_nodes + 1):
        path = sorted(ancestors(tree, v))
        if all(tree.tokens[c] == post[p] for p, c in zip(path[:-1], path[1:])):
            if tree.depths[v] > tree.depths[best]:
                best = v
    path = sorted(ancestors(tree, best))
    return path, int(post[best])


def test_walk_random_vs_brute_force():
    rng = np.random.default_rng(13)
    for _ in range(200):
        vocab = int(rng.integers(2, 6))
        max_depth = int(rng.integers(1, 7))
        capacity = sum(vocab**d for d in range(1, max_depth + 1))
        tree = random_tree(min(int(rng.integers(0, 25)), capacity), rng, vocab, max_depth=max_depth)
        post = rng.integers(0, vocab, size=tree.n_nodes + 1)
        assert walk(tree, post) == brute_walk(tree, post)


def test_child_maps_rejects_duplicate_sibling_tokens():
    tree = hand_tree()
    tree.tokens[2] = 1
    with pytest.raises(ValueError):
        child_maps(tree)


# ----------------------------------------------------------------------------------------------------------------------
# Spine guarantee and calibrated builders (spec 5 items 1 and 12; dtree.calibration)
# ----------------------------------------------------------------------------------------------------------------------


def random_calibration(rng: np.random.Generator, gamma: int, rank_bins: int):
    """Random factors in [0.05, 3], sorted non-increasing in rank (what the fit guarantees)."""
    from dtree.calibration import Calibration

    f = -np.sort(-rng.uniform(0.05, 3.0, size=(2, gamma, rank_bins)), axis=2)
    z = np.zeros_like(f)
    return Calibration(f, z, z.copy())


def brute_scores(marg: Marginals, cal=None) -> list[tuple[float, tuple[int, ...]]]:
    """Every prefix with its surrogate log-score by definition: sum over the path of log q, or with ``cal`` of
    min(0, log f[class, d, bin(r)] + log q_d(r)), class 1 once an earlier step had rank > 0. Sorted best first."""
    out = []
    for depth in range(1, marg.gamma + 1):
        for ranks in itertools.product(range(marg.width), repeat=depth):
            s = 0.0
            for d, r in enumerate(ranks):
                lq = float(marg.logprobs[d, r])
                if cal is not None:
                    c = 1 if any(x > 0 for x in ranks[:d]) else 0
                    f = float(cal.factors[c, min(d, cal.depths - 1), min(r, cal.rank_bins - 1)])
                    lq = min(0.0, (math.log(f) if f > 0 else -math.inf) + lq)
                s = s + lq
            out.append((s, ranks))
    out.sort(key=lambda t: (-t[0], t[1]))
    return out


def spine_order(brute: list[tuple[float, tuple[int, ...]]], gamma: int, budget: int) -> list[tuple[int, ...]]:
    """The spine tree by definition: the top-1 chain of s = min(gamma, budget) nodes, then the best other prefixes."""
    s = min(gamma, budget)
    spine = [(0,) * d for d in range(1, s + 1)]
    rest = [r for _, r in brute if r not in set(spine)]
    return spine + rest[: max(0, budget - s)]


@pytest.mark.parametrize("seed", range(12))
def test_spine_ddtree_is_chain_plus_best_others(seed):
    rng = np.random.default_rng(900 + seed)
    gamma, k = int(rng.integers(2, 5)), int(rng.integers(2, 4))
    # peaked marginals: the plain DDTree often drops deep spine nodes, so the guarantee is really exercised
    marg = random_marginals(rng, gamma, k, vocab=int(rng.integers(k, 12)), alpha=float(rng.uniform(0.05, 1.0)))
    brute = brute_scores(marg)
    total = len(brute)
    for b in range(total + 2):
        tree = build_ddtree(marg, 5, b, spine=True)
        check_tree_invariants(tree, marg, 5)  # valid, prefix-closed, parents first
        assert tree.n_nodes == min(b, total)
        s = min(gamma, b)
        np.testing.assert_array_equal(tree.tokens[1: s + 1], build_chain(marg, 5).tokens[1: s + 1])  # the spine
        assert rank_tuples(tree) == spine_order(brute, gamma, b)[: tree.n_nodes]
        # never worse than the chain of the same size on the surrogate, never better than the unconstrained top-b
        score = {r: sc for sc, r in brute}
        mass = sum(math.exp(score[r]) for r in rank_tuples(tree))
        assert mass <= sum(math.exp(sc) for sc, _ in brute[:b]) + 1e-12
        assert mass >= sum(math.exp(score[(0,) * d]) for d in range(1, s + 1)) - 1e-12


def test_spine_is_missing_from_plain_ddtree_somewhere():
    """The guarantee matters: with a confident depth-1 sibling, plain DDTree drops the deep spine nodes."""
    lp = np.log(np.array([[0.5, 0.45, 0.05], [0.4, 0.3, 0.3], [0.4, 0.3, 0.3]]))
    marg = Marginals(np.arange(9).reshape(3, 3), lp)
    plain = build_ddtree(marg, 0, 3)
    assert (0, 0, 0) not in rank_tuples(plain)
    spine = build_ddtree(marg, 0, 3, spine=True)
    assert rank_tuples(spine) == [(0,), (0, 0), (0, 0, 0)]


@pytest.mark.parametrize("seed", range(15))
def test_caddtree_spine_stops_at_argmax_after_the_spine(seed):
    rng = np.random.default_rng(1300 + seed)
    gamma, k = int(rng.integers(2, 5)), int(rng.integers(2, 4))
    marg = random_marginals(rng, gamma, k, vocab=int(rng.integers(k, 15)), alpha=float(rng.uniform(0.1, 1.5)))
    brute = brute_scores(marg)
    m = len(brute)
    cost = cost_from_curve(random_convex_cv(rng, m + 5), cd_s=float(rng.uniform(0.001, 0.05)))
    L = 100
    score = {r: sc for sc, r in brute}
    for max_budget in (0, 1, 2, gamma, m // 2, m, m + 3):
        order = spine_order(brute, gamma, max_budget)
        s = min(gamma, max_budget)
        phi = np.r_[0.0, np.cumsum([math.exp(score[r]) for r in order])]
        theta = (1 + phi) / (cost.cd_s + np.array([cost.cv(n, L) for n in range(len(order) + 1)]))
        tree = build_caddtree(marg, 3, cost, L, max_budget, spine=True)
        check_tree_invariants(tree, marg, 3)
        assert tree.n_nodes >= s  # the spine is always kept
        best = s + int(np.argmax(theta[s:]))
        if tree.n_nodes != best:
            assert theta[tree.n_nodes] == pytest.approx(theta[best], rel=1e-12)
            best = tree.n_nodes
        assert rank_tuples(tree) == order[:best]
        np.testing.assert_allclose(tree.theta_curve[: best + 1], theta[: best + 1], rtol=1e-10)
        np.testing.assert_allclose(tree.thetas, theta[: best + 1], rtol=1e-10)


@pytest.mark.parametrize("seed", range(15))
def test_calibrated_builders_equal_brute_force(seed):
    rng = np.random.default_rng(1700 + seed)
    gamma, k = int(rng.integers(2, 5)), int(rng.integers(2, 4))
    marg = random_marginals(rng, gamma, k, vocab=int(rng.integers(k, 15)), alpha=float(rng.uniform(0.1, 1.5)))
    cal = random_calibration(rng, gamma=int(rng.integers(1, gamma + 2)), rank_bins=int(rng.integers(1, 4)))
    brute = brute_scores(marg, cal)
    total = len(brute)
    score = {r: sc for sc, r in brute}
    for b in sorted({0, 1, 2, total // 3, total // 2, total, total + 2}):
        tree = build_ddtree(marg, 4, b, calibration=cal)
        check_tree_invariants(tree, marg, 4)  # path_logprobs stay the drafter's log q(u)
        assert rank_tuples(tree) == [r for _, r in brute[: min(b, total)]]
        both = build_ddtree(marg, 4, b, spine=True, calibration=cal)
        check_tree_invariants(both, marg, 4)
        assert rank_tuples(both) == spine_order(brute, gamma, b)[: both.n_nodes]
        np.testing.assert_allclose(cal.path_logprobs(tree, marg)[1:], [score[r] for r in rank_tuples(tree)],
                                   rtol=0, atol=1e-12)
    # CaDDTree with calibration: Phi(n) sums q~, the stop is the argmax of that theta (convex cost)
    cost = cost_from_curve(random_convex_cv(rng, total + 5), cd_s=float(rng.uniform(0.001, 0.05)))
    deltas = np.exp([sc for sc, _ in brute])
    theta = (1 + np.r_[0.0, np.cumsum(deltas)]) / (cost.cd_s + np.array([cost.cv(n, 50) for n in range(total + 1)]))
    tree = build_caddtree(marg, 4, cost, 50, total, calibration=cal)
    best = int(np.argmax(theta))
    if tree.n_nodes != best:
        assert theta[tree.n_nodes] == pytest.approx(theta[best], rel=1e-12)
        best = tree.n_nodes
    assert rank_tuples(tree) == [r for _, r in brute[:best]]
    np.testing.assert_allclose(tree.thetas, theta[: best + 1], rtol=1e-10)


def test_identity_calibration_gives_the_plain_trees():
    from dtree.calibration import Calibration

    rng = np.random.default_rng(21)
    marg = random_marginals(rng, 6, 8)
    cost = cost_from_curve(random_convex_cv(rng, 80), 0.01)
    ident = Calibration.identity(depths=3, rank_bins=2)
    for spine in (False, True):
        a = build_ddtree(marg, 1, 40, cost, 70, spine=spine)
        b = build_ddtree(marg, 1, 40, cost, 70, spine=spine, calibration=ident)
        c = build_caddtree(marg, 1, cost, 70, 60, spine=spine)
        d = build_caddtree(marg, 1, cost, 70, 60, spine=spine, calibration=ident)
        for x, y in ((a, b), (c, d)):
            np.testing.assert_array_equal(x.tokens, y.tokens)
            np.testing.assert_array_equal(x.parents, y.parents)
            np.testing.assert_array_equal(x.thetas, y.thetas)
            np.testing.assert_array_equal(x.theta_curve, y.theta_curve)


def test_verify_width_pads_to_the_next_listed_width():
    from dtree.trees import verify_width

    assert [verify_width(n, (5, 8)) for n in range(1, 11)] == [1, 5, 5, 5, 5, 8, 8, 8, 9, 10]  # 1 token: never padded
    assert [verify_width(n, ()) for n in range(1, 4)] == [1, 2, 3]
    assert [verify_width(n, (8, 5)) for n in (2, 6)] == [5, 8]  # any order


def test_tree_attention_inputs_padding_is_inert():
    """Pads repeat the root at the root's position, see the context and themselves only, and no node sees them."""
    rng = np.random.default_rng(5)
    tree = random_tree(2, rng, 100)
    n1, start, w = tree.n_nodes + 1, 4, 7
    ref_ids, ref_pos, ref_mask = tree_attention_inputs(tree, start, torch.float32, "cpu")
    ids, pos, mask = tree_attention_inputs(tree, start, torch.float32, "cpu", width=w)
    assert ids.shape == (1, w) and pos.shape == (1, w) and mask.shape == (1, 1, w, start + w)
    assert torch.equal(ids[:, :n1], ref_ids) and torch.equal(pos[:, :n1], ref_pos)
    assert (ids[0, n1:] == tree.tokens[0]).all() and (pos[0, n1:] == start).all()
    assert torch.equal(mask[0, 0, :n1, :start + n1], ref_mask[0, 0])  # the tree's own rows are unchanged...
    hidden = torch.finfo(torch.float32).min
    assert (mask[0, 0, :n1, start + n1:] == hidden).all()  # ...and never see a pad
    for i in range(n1, w):  # a pad sees all context and itself, nothing else
        row = mask[0, 0, i]
        visible = set(torch.nonzero(row == 0).flatten().tolist())
        assert visible == set(range(start)) | {start + i}
    for narrow in (None, 1, n1):  # no padding asked, or not narrower than the tree
        assert torch.equal(tree_attention_inputs(tree, start, torch.float32, "cpu", width=narrow)[2], ref_mask)
    with pytest.raises(InputError):
        tree_attention_inputs(tree, start, torch.float32, "cpu", width=0)


# ----------------------------------------------------------------------------------------------------------------------
# CaDDTree on a measured (non-convex) Cv: the argmax stop
# ----------------------------------------------------------------------------------------------------------------------


def stepped_cv(rng: np.random.Generator, m: int) -> np.ndarray:
    """A non-decreasing, non-convex curve on 0..m (seconds): near-flat runs broken by jumps, like a CPU verify's
    padding widths."""
    jumps = rng.random(m) < 0.3
    incr = np.where(jumps, rng.uniform(1e-3, 8e-3, m), rng.uniform(0.0, 1e-4, m))
    return 0.03 + np.r_[0.0, np.cumsum(incr)]


def measured_cost(cv: np.ndarray, cd_s: float, context: int = 100) -> CostModel:
    """A one-context cost model that reads the measured curve ``cv`` (its convex fit, required by CostModel, is the
    straight line between the ends and is not read)."""
    raw = np.asarray(cv, dtype=np.float64)[None, :]
    fit = np.linspace(raw[0, 0], raw[0, -1], raw.shape[1])[None, :]
    return CostModel(cd_s, [context], np.arange(raw.shape[1]), raw, fit, {"source": "test"}).with_curve("measured")


def first_drop(theta: np.ndarray) -> int:
    """The paper's greedy stop on a theta curve: the last n before the first non-improvement."""
    drops = np.flatnonzero(~(theta[1:] > theta[:-1]))
    return int(drops[0]) if drops.size else len(theta) - 1


@pytest.mark.parametrize("seed", range(12))
def test_caddtree_argmax_stop_on_measured_cv_is_the_best_prefix(seed):
    rng = np.random.default_rng(900 + seed)
    gamma, k = int(rng.integers(3, 5)), int(rng.integers(2, 4))
    marg = random_marginals(rng, gamma, k, vocab=int(rng.integers(k, 12)), alpha=float(rng.uniform(0.1, 1)))
    brute = all_prefixes(marg)
    m = len(brute)
    cost = measured_cost(stepped_cv(rng, m + 5), cd_s=float(rng.uniform(0.001, 0.02)))
    assert uses_argmax_stop(cost) and not uses_argmax_stop(cost.with_curve("convex"))
    L = 100
    for max_budget in (0, 1, 3, m // 2, m, m + 4):
        n_lim = min(max_budget, m)
        tree, theta, best = check_caddtree_is_best_prefix(marg, brute, cost, L, max_budget)
        np.testing.assert_allclose(tree.thetas, theta[: best + 1], rtol=1e-10)
        curve = tree.theta_curve  # every prefix scanned, the kept one included
        assert best + 1 <= len(curve) <= n_lim + 1
        np.testing.assert_allclose(curve, theta[: len(curve)], rtol=1e-10)
        assert theta[first_drop(theta)] <= theta[best] * (1 + 1e-12)


def test_caddtree_argmax_stop_passes_a_local_maximum():
    """Greedy stops at the first drop of theta; on a curve with one step the argmax goes past it."""
    lp = np.log(np.array([[0.9, 0.05], [0.85, 0.1], [0.8, 0.1], [0.8, 0.1]]))
    marg = Marginals(np.array([[1, 2], [3, 4], [5, 6], [7, 8]]), lp)
    cv = np.array([0.030, 0.030, 0.060, 0.060, 0.060, 0.060, 0.060, 0.060, 0.060])  # one jump, at n = 2
    cost = measured_cost(cv, cd_s=0.005)
    tree = build_caddtree(marg, 0, cost, 100, 8)
    theta = theta_curve_for(best_path_logprobs(marg, 8), cost, 100)
    assert first_drop(theta) == 1  # theta(1) = 1.9 / 0.035 = 54.3 > theta(2) = 2.665 / 0.065 = 41.0
    assert tree.n_nodes == int(np.argmax(theta)) > 1 and theta[tree.n_nodes] > theta[1]
    np.testing.assert_array_equal(tree.tokens, build_ddtree(marg, 0, tree.n_nodes).tokens)
