"""Tree figure geometry: every drawn node, and the bonus token, has a place of its own."""

import numpy as np
import pytest

from dtree.figures import BONUS_SLOT, tree_figure, tree_layout
from dtree.records import RoundRecord

from .builders import draft_tree

ANCHOR = 7
NODE_TRACES = ("root (anchor)", "accepted", "rejected")
BONUS_TRACE = "bonus token (target's choice)"


def _round(nodes, accepted: list[int], bonus: int = 99) -> RoundRecord:
    tree = draft_tree([(p, tok, rank, 0.5) for p, tok, rank in nodes], ANCHOR)  # (parent, token, rank) per node
    return RoundRecord(index=0, start=10, anchor=ANCHOR, marg_tokens=np.zeros((3, 3), np.int64),
                       marg_logprobs=np.zeros((3, 3), np.float32), tree=tree, budget=tree.n_nodes,
                       budget_reason="test", accepted=accepted, bonus=bonus,
                       committed=[int(tree.tokens[j]) for j in accepted])


def _points(fig) -> tuple[list[tuple[float, float]], list[tuple[float, float]]]:
    nodes, bonus = [], []
    for tr in fig.data:
        if tr.name in NODE_TRACES:
            nodes += list(zip(tr.x, tr.y))
        elif tr.name == BONUS_TRACE:
            bonus += list(zip(tr.x, tr.y))
    return nodes, bonus


# The last accepted node (1, token 10) has 1, 2 or 3 rejected children: with an odd count the middle child sits on
# its parent's row, where the bonus used to be drawn.
CASES = {
    "one rejected child": ([(0, 10, 0), (1, 20, 0), (0, 11, 1)], [0, 1]),
    "two rejected children": ([(0, 10, 0), (1, 20, 0), (1, 21, 1), (0, 11, 1)], [0, 1]),
    "three rejected children": ([(0, 10, 0), (1, 20, 0), (1, 21, 1), (1, 22, 2), (0, 11, 1), (5, 30, 0)], [0, 1]),
    "leaf accepted": ([(0, 10, 0), (1, 20, 0), (0, 11, 1), (3, 21, 0)], [0, 1, 2]),
    "nothing accepted": ([(0, 10, 0), (0, 11, 1), (0, 12, 2)], [0]),
}


@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("collapse", [False, True])
def test_bonus_token_never_covers_a_drafted_node(case, collapse):
    nodes, accepted = CASES[case]
    rnd = _round(nodes, accepted)
    fig = tree_figure(rnd, str, collapse_rejected=collapse)
    drawn, bonus = _points(fig)
    assert len(bonus) == 1
    (bx, by), last = bonus[0], accepted[-1]
    assert bx == rnd.tree.depths[last] + 1
    assert all(abs(by - y) >= 0.5 for x, y in drawn if x == bx), (bonus, drawn)
    assert len(set(drawn)) == len(drawn)  # nor do two drafted nodes share a place


def test_layout_keeps_node_positions_distinct_and_bonus_optional():
    rnd = _round(*CASES["three rejected children"])
    plain = tree_layout(rnd.tree)
    with_bonus = tree_layout(rnd.tree, bonus_after=1)
    assert BONUS_SLOT not in plain and set(with_bonus) == set(plain) | {BONUS_SLOT}
    assert len(set(with_bonus.values())) == len(with_bonus)
    # a hidden last node gets no bonus slot
    assert BONUS_SLOT not in tree_layout(rnd.tree, keep={0, 4}, bonus_after=1)


def test_heap_replay_shows_bonus_only_once_the_accepted_path_is_drawn():
    rnd = _round(*CASES["two rejected children"])
    assert _points(tree_figure(rnd, str, upto=0))[1] == []
    full = tree_figure(rnd, str)
    early = tree_figure(rnd, str, upto=1)
    assert _points(early)[1] == _points(full)[1]
    # positions do not move while the heap replay grows the picture
    assert set(_points(early)[0]) <= set(_points(full)[0])
