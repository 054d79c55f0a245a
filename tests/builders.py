"""Hand-made records for tests that need an exact tree shape rather than a decoded one."""

from __future__ import annotations

import math

import numpy as np

from dtree.trees import DraftTree


def draft_tree(nodes: list[tuple[int, int, int, float]], anchor: int) -> DraftTree:
    """A draft tree rooted at ``anchor`` from ``(parent, token, rank, drafter prob)`` per non-root node, in insertion
    order; depths and path log-probabilities follow from the parents, costs and thetas are NaN (no cost model)."""
    parents, tokens, ranks, lps, depths, paths = [-1], [anchor], [-1], [0.0], [0], [0.0]
    for p, tok, rank, prob in nodes:
        parents.append(p)
        tokens.append(tok)
        ranks.append(rank)
        lps.append(math.log(prob))
        depths.append(depths[p] + 1)
        paths.append(paths[p] + math.log(prob))
    n = len(tokens)
    return DraftTree(np.array(tokens), np.array(parents), np.array(depths), np.array(ranks), np.array(lps),
                     np.array(paths), np.full(n, np.nan), np.full(n, np.nan), method="ddtree")
