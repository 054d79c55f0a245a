"""Figure functions (plotly), shared by the pages and any report. No Streamlit, no model, no SQL here.

Colours follow the Okabe-Ito palette, which stays distinguishable for colour-blind readers: accepted path blue,
bonus token orange, rejected nodes grey, root black. Shapes differ too (root square, bonus diamond), so colour is never
the only cue. Sequential data (the marginals heatmap) uses the cividis scale; per-phase bars use Okabe-Ito too.

Also here: the small tables the pages and reports show next to the figures (:func:`rounds_table`,
:func:`compare_table`), built with pandas.
"""

from __future__ import annotations

import html
from collections.abc import Callable
from typing import Any

import networkx as nx
import numpy as np
import plotly.graph_objects as go

from .records import RoundRecord, RunRecord
from .trees import DraftTree

ACCEPTED = "#0072B2"
BONUS = "#E69F00"
REJECTED = "#BBBBBB"
ROOT = "#000000"
VERMILION = "#D55E00"
ROUND_COLOURS = ["#DCEBFA", "#FCE9CF", "#D9F2E6", "#F6DDEB", "#EFEFD0", "#E4E0F5"]


def tree_graph(tree: DraftTree) -> nx.DiGraph:
    """The tree as a networkx DiGraph (node = insertion index, edge parent -> child, attributes from the arrays)."""
    g = nx.DiGraph()
    for i in range(tree.n_nodes + 1):
        g.add_node(i, token=int(tree.tokens[i]), depth=int(tree.depths[i]), rank=int(tree.ranks[i]))
        if tree.parents[i] >= 0:
            g.add_edge(int(tree.parents[i]), i)
    return g


BONUS_SLOT = -1
"""Key of the bonus token's position in :func:`tree_layout`'s result (node indices are >= 0)."""


def tree_layout(tree: DraftTree, keep: set[int] | None = None,
                bonus_after: int | None = None) -> dict[int, tuple[float, float]]:
    """Tidy left-to-right layout: x = depth, leaves on consecutive rows ordered by rank, parents centred on children.

    ``keep``: lay out only these nodes (must be closed under parents, root included); None = all nodes.
    ``bonus_after``: the last accepted node; the bonus token then gets a row of its own as that node's first child
    (key :data:`BONUS_SLOT`, depth + 1), so it never covers a drafted sibling. Ignored when the node is not laid out.
    """
    g = tree_graph(tree)
    if bonus_after is not None and (keep is None or bonus_after in keep):
        g.add_node(BONUS_SLOT, depth=int(tree.depths[bonus_after]) + 1, rank=-1)
        g.add_edge(bonus_after, BONUS_SLOT)
        keep = None if keep is None else keep | {BONUS_SLOT}
    y: dict[int, float] = {}
    next_row = [0.0]

    def place(u: int) -> float:
        kids = sorted((v for v in g.successors(u) if keep is None or v in keep), key=lambda v: g.nodes[v]["rank"])
        if not kids:
            y[u] = next_row[0]
            next_row[0] += 1.0
        else:
            y[u] = float(np.mean([place(v) for v in kids]))
        return y[u]

    place(0)
    return {u: (float(g.nodes[u]["depth"]), -y[u]) for u in y}


def visible_nodes(rnd: RoundRecord, max_depth: int | None = None, collapse_rejected: bool = False) -> list[int]:
    """Node indices (insertion order) kept when drawing a large tree.

    Args:
        max_depth: keep nodes of depth <= max_depth (tokens after the anchor); None = no limit.
        collapse_rejected: keep the accepted path and each accepted node's direct children only; the subtrees under
            rejected children are hidden (their size is shown in the hover of the rejected child).
    """
    tree = rnd.tree
    accepted = set(rnd.accepted)
    keep = []
    for i in range(tree.n_nodes + 1):
        p = int(tree.parents[i])
        if max_depth is not None and tree.depths[i] > max_depth:
            continue
        if collapse_rejected and i > 0 and p not in accepted:
            continue
        keep.append(i)
    return keep


def subtree_sizes(tree: DraftTree) -> np.ndarray:
    """int64 ``[n_nodes + 1]``: number of descendants of each node (itself excluded). Parents precede children."""
    size = np.zeros(tree.n_nodes + 1, dtype=np.int64)
    for i in range(tree.n_nodes, 0, -1):
        size[tree.parents[i]] += size[i] + 1
    return size


def _token_label(decode: Callable[[int], str], tok: int) -> str:
    text = decode(tok)
    return text.replace("\n", "\\n") if text.strip() else repr(text)


def tree_figure(rnd: RoundRecord, decode: Callable[[int], str], title: str | None = None,
                upto: int | None = None, max_depth: int | None = None, collapse_rejected: bool = False) -> go.Figure:
    """Draw one round's draft tree.

    Args:
        rnd: the round (its tree, accepted path and bonus token).
        decode: token id -> text.
        upto: draw only nodes ``0..upto`` (insertion order), to replay the heap step by step; None = all. Node
            positions do not depend on ``upto``, so a replay grows the final picture.
        max_depth, collapse_rejected: hide deep nodes / the subtrees under rejected children (see
            :func:`visible_nodes`) to keep 256-node trees readable; hidden counts are in the title and hovers.
    Hover shows token, depth, rank, drafter prob q_d(token), path prob q(u), marginal verify cost (ms), theta after
    insertion (tok/s) and whether the target accepted the node. The bonus token is drawn after the accepted path.
    """
    tree = rnd.tree
    n_show = tree.n_nodes if upto is None else max(0, min(upto, tree.n_nodes))
    pruned = max_depth is not None or collapse_rejected
    keep = visible_nodes(rnd, max_depth, collapse_rejected) if pruned else None
    last = rnd.accepted[-1]
    pos = tree_layout(tree, set(keep) if pruned else None, bonus_after=last)
    accepted = set(rnd.accepted)
    show = [i for i in (keep if pruned else range(tree.n_nodes + 1)) if i <= n_show]
    hidden_below = subtree_sizes(tree) if pruned else None
    kids_shown = np.bincount([int(tree.parents[j]) for j in show if j > 0], minlength=tree.n_nodes + 1)
    big = len(show) > 120

    ex, ey = [], []
    for i in show:
        p = int(tree.parents[i])
        if p >= 0:
            ex += [pos[p][0], pos[i][0], None]
            ey += [pos[p][1], pos[i][1], None]
    ax, ay = [], []
    for a, b in zip(rnd.accepted, rnd.accepted[1:]):
        if b <= n_show and b in pos:
            ax += [pos[a][0], pos[b][0], None]
            ay += [pos[a][1], pos[b][1], None]
    fig = go.Figure()
    fig.add_trace(go.Scatter(x=ex, y=ey, mode="lines", line=dict(color=REJECTED, width=1), hoverinfo="skip",
                             showlegend=False))
    fig.add_trace(go.Scatter(x=ax, y=ay, mode="lines", line=dict(color=ACCEPTED, width=3), hoverinfo="skip",
                             showlegend=False))

    def hover(i: int) -> str:
        if i == 0:
            return (f"<b>root (anchor)</b> {html.escape(_token_label(decode, int(tree.tokens[0])))}<br>"
                    f"id {int(tree.tokens[0])}, position {rnd.start}")
        cost = tree.node_costs[i]
        theta = tree.thetas[i]
        n_hidden = int(hidden_below[i]) if hidden_below is not None and kids_shown[i] == 0 else 0
        return (f"<b>{html.escape(_token_label(decode, int(tree.tokens[i])))}</b> (id {int(tree.tokens[i])})<br>"
                f"node {i} (insertion order), depth {int(tree.depths[i])}, rank {int(tree.ranks[i])}<br>"
                f"drafter prob q_d = {np.exp(tree.logprobs[i]):.3f}<br>path prob q(u) = {np.exp(tree.path_logprobs[i]):.4f}<br>"
                f"marginal verify cost = {cost * 1e3:.2f} ms<br>theta after insertion = {theta:.2f} tok/s<br>"
                + ("<b>accepted by the target</b>" if i in accepted else "rejected")
                + (f"<br>{n_hidden} descendants hidden" if n_hidden else ""))

    groups = [("root (anchor)", [0], ROOT, "square"),
              ("accepted", [i for i in show if i in accepted and i > 0], ACCEPTED, "circle"),
              ("rejected", [i for i in show if i not in accepted], REJECTED, "circle")]
    for name, idx, colour, symbol in groups:
        if not idx:
            continue
        fig.add_trace(go.Scatter(
            x=[pos[i][0] for i in idx], y=[pos[i][1] for i in idx], mode="markers" if big else "markers+text",
            marker=dict(color=colour, size=9 if big else 16, symbol=symbol, line=dict(color="#333", width=0.5)),
            text=[_token_label(decode, int(tree.tokens[i]))[:10] for i in idx], textposition="top center",
            textfont=dict(size=10), hovertext=[hover(i) for i in idx], hoverinfo="text", name=name))
    if last <= n_show and BONUS_SLOT in pos:
        bx, by = pos[BONUS_SLOT]
        fig.add_trace(go.Scatter(x=[pos[last][0], bx], y=[pos[last][1], by], mode="lines",
                                 line=dict(color=BONUS, width=2, dash="dot"), hoverinfo="skip", showlegend=False))
        fig.add_trace(go.Scatter(
            x=[bx], y=[by], mode="markers+text", name="bonus token (target's choice)",
            marker=dict(color=BONUS, size=18, symbol="diamond", line=dict(color="#333", width=0.5)),
            text=[_token_label(decode, rnd.bonus)[:10]], textposition="top center",
            hovertext=[f"<b>bonus</b> {html.escape(_token_label(decode, rnd.bonus))} (id {rnd.bonus})<br>"
                       "the target's own token after the accepted path; next round's anchor"], hoverinfo="text"))
    default_title = f"Round {rnd.index}: {tree.n_nodes} nodes, tau = {rnd.tau} (accepted {rnd.tau - 1} drafts + bonus)"
    if upto is not None and n_show < tree.n_nodes:
        default_title += f" — heap step {n_show}/{tree.n_nodes}"
    if pruned and len(keep) < tree.n_nodes + 1:
        default_title += f" — {tree.n_nodes + 1 - len(keep)} nodes hidden"
    height = max(320, min(1400, 22 * (len(set(round(p[1], 3) for p in pos.values())) + 4)))
    fig.update_layout(
        title=title or default_title,
        xaxis=dict(title="depth (tokens after the anchor)", dtick=1, zeroline=False),
        yaxis=dict(title="branches (ordered by drafter rank)", showticklabels=False, zeroline=False),
        height=height, margin=dict(l=40, r=20, t=50, b=100), hovermode="closest",
        # legend 60 px under the plot area, below the depth axis's tick labels and title whatever the height
        legend=dict(orientation="h", yanchor="top", y=-60 / (height - 150)))
    return fig


def rounds_figure(run: RunRecord) -> go.Figure:
    """Per-round strip: acceptance length tau (bars) and verified budget (line), both in tokens/nodes."""
    idx = [r.index for r in run.rounds]
    fig = go.Figure()
    fig.add_trace(go.Bar(x=idx, y=[r.tau for r in run.rounds], name="tau (tokens committed)", marker_color=ACCEPTED))
    fig.add_trace(go.Scatter(x=idx, y=[r.budget for r in run.rounds], name="budget n (nodes verified)",
                             mode="lines+markers", line=dict(color=BONUS)))
    fig.update_layout(title=f"Per round: tau and budget ({run.method})", xaxis_title="round",
                      yaxis_title="tokens / nodes", height=300, legend=dict(orientation="h", y=-0.3),
                      margin=dict(l=40, r=20, t=50, b=40))
    return fig


def theta_figure(tree: DraftTree, step: int | None = None) -> go.Figure:
    """theta(n) = (1 + Phi(n)) / (Cd + Cv(n; L)) in tok/s against n, the chosen budget marked (CaDDTree, spec 3.1).

    ``step``: also mark the heap replay's current node count n = step (a vertical dashed line and a marker), as drawn by
    ``tree_figure(..., upto=step)``. For CaDDTree the chosen budget is where the greedy rule stopped (the next node
    would lower theta); for DDTree and chain it is the fixed budget.
    """
    curve = np.asarray(tree.theta_curve)
    fig = go.Figure()
    fig.add_trace(go.Scatter(x=np.arange(len(curve)), y=curve, mode="lines+markers", name="theta(n)",
                             line=dict(color=ACCEPTED), marker=dict(size=4)))
    if len(curve) > tree.n_nodes:
        label = "CaDDTree's stop (chosen budget)" if tree.method == "caddtree" else "chosen budget"
        fig.add_trace(go.Scatter(x=[tree.n_nodes], y=[curve[tree.n_nodes]], mode="markers", name=label,
                                 marker=dict(color=BONUS, size=14, symbol="star")))
    if step is not None and len(curve):
        k = int(max(0, min(step, len(curve) - 1)))
        fig.add_vline(x=k, line=dict(color=VERMILION, dash="dash", width=1))
        fig.add_trace(go.Scatter(x=[k], y=[curve[k]], mode="markers", name=f"heap step n = {k}",
                                 marker=dict(color=VERMILION, size=11, symbol="circle-open", line=dict(width=2))))
    fig.update_layout(title="Predicted throughput theta(n)", xaxis_title="nodes n",
                      yaxis_title="theta (tokens/s)", height=300, margin=dict(l=40, r=20, t=50, b=40),
                      legend=dict(orientation="h", y=-0.3))
    return fig


def marginals_heatmap(rnd: RoundRecord, decode: Callable[[int], str]) -> go.Figure:
    """The drafter's logged top-k marginals as a heatmap: depth (rows) x rank (columns), colour = probability q_d.

    Hover gives the token text, id and probability. The round's tree nodes are marked on their (rank, depth) cell:
    filled blue circles for the accepted path, open grey circles for the other nodes (hover: how many tree nodes use
    that cell, since one drafter candidate can extend several parents). Nodes whose rank is beyond the logged k are
    counted in the title. Colours: the cividis scale (readable with colour-vision deficiency).
    """
    toks = np.asarray(rnd.marg_tokens)
    probs = np.exp(np.asarray(rnd.marg_logprobs, dtype=np.float64))
    fig = go.Figure()
    if toks.size == 0:
        fig.update_layout(title=f"Round {rnd.index}: no drafter marginals (autoregressive round)",
                          xaxis_title="rank (0 = drafter's top-1)", yaxis_title="depth (tokens after the anchor)",
                          height=250)
        return fig
    gamma, k = toks.shape
    depths = np.arange(1, gamma + 1)
    text = [[html.escape(_token_label(decode, int(t))) for t in row] for row in toks]
    fig.add_trace(go.Heatmap(
        z=probs, x=np.arange(k), y=depths, colorscale="cividis", zmin=0.0, zmax=float(max(probs.max(), 1e-9)),
        customdata=np.stack([np.asarray(text, dtype=object), toks.astype(object)], axis=-1),
        hovertemplate="depth %{y}, rank %{x}<br><b>%{customdata[0]}</b> (id %{customdata[1]})<br>"
                      "q_d = %{z:.4f}<extra></extra>",
        colorbar=dict(title="drafter prob q_d"), name="drafter marginal"))
    tree = rnd.tree
    cells: dict[tuple[int, int], list[int]] = {}
    beyond = 0
    for i in range(1, tree.n_nodes + 1):
        d, r = int(tree.depths[i]), int(tree.ranks[i])
        if 1 <= d <= gamma and 0 <= r < k:
            cells.setdefault((d, r), []).append(i)
        else:
            beyond += 1
    accepted = set(rnd.accepted)
    for name, want, style in (
            ("tree node", False, dict(color="rgba(0,0,0,0)", size=11, line=dict(color=REJECTED, width=2))),
            ("accepted node", True, dict(color=ACCEPTED, size=11, line=dict(color="#FFFFFF", width=1.5)))):
        pts = [(c, ids) for c, ids in cells.items() if any(i in accepted for i in ids) == want]
        if not pts:
            continue
        fig.add_trace(go.Scatter(
            x=[c[1] for c, _ in pts], y=[c[0] for c, _ in pts], mode="markers", name=name, marker=style,
            hovertext=[f"{len(ids)} tree node(s) here: {', '.join(map(str, ids[:8]))}{' ...' if len(ids) > 8 else ''}"
                       + (" (accepted)" if want else "") for _, ids in pts], hoverinfo="text"))
    title = f"Round {rnd.index}: drafter marginals (top-{k} per depth) and the tree's nodes"
    if beyond:
        title += f" — {beyond} nodes beyond the logged top-{k}"
    fig.update_layout(title=title, xaxis=dict(title="rank (0 = drafter's top-1)", dtick=max(1, k // 16)),
                      yaxis=dict(title="depth (tokens after the anchor)", autorange="reversed", dtick=1),
                      height=max(300, 30 * gamma + 140), legend=dict(orientation="h", y=-0.2),
                      margin=dict(l=40, r=20, t=50, b=40))
    return fig


# ----------------------------------------------------------------------------------------------------------------------
# Cost model and budget lab
# ----------------------------------------------------------------------------------------------------------------------

OKABE_ITO = ["#E69F00", "#56B4E9", "#009E73", "#0072B2", "#D55E00", "#CC79A7", "#000000", "#F0E442"]
GREEN = "#009E73"
SKY = "#56B4E9"


def cost_curves_figure(cost: "CostModel", weighted: "CostModel | None" = None) -> go.Figure:  # noqa: F821
    """Verify cost Cv(n; L) in ms against the node count n, one Okabe-Ito colour per profiled context L.

    Measured medians are markers, the monotone-convex fit (CaDDTree spec 3.4) solid lines. With ``weighted`` (the same
    profile with :class:`dtree.cost.CostWeights`, see ``CostModel.weighted``) the weighted Cv that the tree builders
    would use is drawn dotted (a single black line when the analytic override ignores L). The drafter cost Cd is a
    dashed horizontal line (the weighted Cd when ``weighted`` is given).
    """
    fig = go.Figure()
    nodes = np.asarray(cost.nodes)
    fine = np.arange(int(nodes[-1]) + 1)
    w = weighted.weights if weighted is not None else None
    for i, L in enumerate(int(v) for v in cost.contexts):
        colour = OKABE_ITO[i % len(OKABE_ITO)]
        fig.add_trace(go.Scatter(x=nodes, y=cost.cv_raw_s[i] * 1e3, mode="markers", name=f"L = {L}: measured median",
                                 legendgroup=f"L{L}", marker=dict(color=colour, size=8, symbol="circle-open",
                                                                  line=dict(width=2))))
        fig.add_trace(go.Scatter(x=nodes, y=cost.cv_fit_s[i] * 1e3, mode="lines", name=f"L = {L}: fit",
                                 legendgroup=f"L{L}", line=dict(color=colour, width=2)))
        if w is not None and not w.analytic:
            fig.add_trace(go.Scatter(x=fine, y=np.asarray(weighted.cv(fine, L)) * 1e3, mode="lines",
                                     name=f"L = {L}: weighted (used)", legendgroup=f"L{L}",
                                     line=dict(color=colour, width=2, dash="dot")))
    if w is not None and w.analytic:
        fig.add_trace(go.Scatter(x=fine, y=np.asarray(weighted.cv(fine, 0)) * 1e3, mode="lines",
                                 name="analytic Cv (used, any L)", line=dict(color="#000000", width=2, dash="dot")))
    cd = (weighted if weighted is not None else cost).cd_s * 1e3
    fig.add_hline(y=cd, line=dict(color=VERMILION, dash="dash", width=1.5))
    fig.add_trace(go.Scatter(x=[nodes[0], nodes[-1]], y=[cd, cd], mode="lines", hoverinfo="skip",
                             name=f"Cd (drafter, per round) = {cd:.1f} ms", line=dict(color=VERMILION, dash="dash")))
    fig.update_layout(title="Verify cost Cv(n; L) per context length L, and the draft cost Cd",
                      xaxis_title="nodes n verified (non-root)",
                      yaxis=dict(title="time per round (ms)", rangemode="tozero"),
                      height=420, legend=dict(orientation="v", x=1.02, y=1), margin=dict(l=40, r=20, t=50, b=40))
    return fig


def kernels_figure(table) -> go.Figure:
    """One verify forward's time (ms) against its width in tokens, one line per matmul kernel of a
    :class:`dtree.kernels.KernelTable` (``timings_ms["forward"]``), with the kernel installed per width (the fastest)
    as filled markers and the verify padding widths (:meth:`dtree.kernels.KernelTable.verify_widths`) as dotted
    vertical lines. Raises ValueError for a table without forward timings.
    """
    runs = (table.timings_ms or {}).get("forward") or {}
    if not runs or not table.forward_ms:
        raise ValueError("this kernel table has no forward timings (made by an older dtree?)")
    names = {"linear": "F.linear (default)", "w_xt": "(W x^T)^T",
             "w_xt2": "(W x^T)^T, one row as two"}
    fig = go.Figure()
    for i, (kernel, ms) in enumerate(runs.items()):
        widths = np.arange(1, len(ms) + 1)
        fig.add_trace(go.Scatter(x=widths, y=ms, mode="lines", name=names.get(kernel, kernel),
                                 line=dict(color=OKABE_ITO[i % len(OKABE_ITO)], width=2)))
    widths = np.arange(1, len(table.forward_ms) + 1)
    picks = [table.kernel("*", int(w)) for w in widths]
    fig.add_trace(go.Scatter(x=widths, y=table.forward_ms, mode="markers", name="installed (fastest per width)",
                             text=picks, hovertemplate="%{x} tokens: %{y:.1f} ms with %{text}<extra></extra>",
                             marker=dict(color="#000000", size=8)))
    for w in table.verify_widths():
        fig.add_vline(x=w, line=dict(color="#999999", dash="dot", width=1))
    fig.update_layout(title="One verify forward per matmul kernel (dotted: widths verifies are padded to)",
                      xaxis_title="tokens in the forward (nodes + 1)",
                      yaxis=dict(title="ms per forward", rangemode="tozero"), height=380,
                      margin=dict(l=40, r=20, t=50, b=40))
    return fig


def cost_table(cost: "CostModel", weighted: "CostModel | None" = None) -> "pandas.DataFrame":  # noqa: F821
    """One row per profiled (L, n): measured median, fit and (with ``weighted``) weighted Cv, all in ms."""
    import pandas as pd

    rows = []
    for i, L in enumerate(int(v) for v in cost.contexts):
        for j, n in enumerate(int(v) for v in cost.nodes):
            row = {"L (context, tokens)": L, "n (nodes)": n, "measured median Cv (ms)": cost.cv_raw_s[i, j] * 1e3,
                   "fitted Cv (ms)": cost.cv_fit_s[i, j] * 1e3}
            if weighted is not None:
                row["weighted Cv (ms)"] = float(weighted.cv(n, L)) * 1e3
            rows.append(row)
    return pd.DataFrame(rows)


def theta_choices(curve: np.ndarray) -> tuple[int, int]:
    """``(argmax, greedy_stop)`` of a theta(n) curve (n = 0..m): the best budget for this round, and CaDDTree's greedy
    stop, the first n where adding node n + 1 does not raise theta (spec 3.2; equal when theta is unimodal)."""
    curve = np.asarray(curve, dtype=np.float64)
    if len(curve) == 0:
        return 0, 0
    worse = np.flatnonzero(curve[1:] <= curve[:-1])
    return int(np.argmax(curve)), int(worse[0]) if len(worse) else len(curve) - 1


def theta_weights_figure(curve: np.ndarray, logged_budget: int | None = None, title: str | None = None) -> go.Figure:
    """A round's theta(n) = (1 + Phi(n)) / (Cd + Cv(n; L)) in tokens/s under a (weighted) cost model, with its
    argmax and the greedy stop marked (see :func:`theta_choices`) and, if given, the budget the logged run used."""
    curve = np.asarray(curve, dtype=np.float64)
    best, stop = theta_choices(curve)
    fig = go.Figure()
    fig.add_trace(go.Scatter(x=np.arange(len(curve)), y=curve, mode="lines+markers", name="theta(n)",
                             line=dict(color=ACCEPTED), marker=dict(size=4)))
    if len(curve):
        fig.add_trace(go.Scatter(x=[best], y=[curve[best]], mode="markers", name=f"argmax n = {best}",
                                 marker=dict(color=VERMILION, size=16, symbol="diamond-open", line=dict(width=2.5))))
        fig.add_trace(go.Scatter(x=[stop], y=[curve[stop]], mode="markers", name=f"greedy stop n = {stop} (CaDDTree)",
                                 marker=dict(color=BONUS, size=14, symbol="star")))
    if logged_budget is not None and 0 <= logged_budget < len(curve):
        fig.add_trace(go.Scatter(x=[logged_budget], y=[curve[logged_budget]], mode="markers",
                                 name=f"logged budget n = {logged_budget}",
                                 marker=dict(color="#000000", size=10, symbol="x")))
    fig.update_layout(title=title or f"Predicted throughput theta(n): greedy stop at n = {stop}, argmax n = {best}",
                      xaxis_title="nodes n (budget)", yaxis_title="theta (tokens/s)", height=360,
                      legend=dict(orientation="h", y=-0.25), margin=dict(l=40, r=20, t=50, b=40))
    return fig


def _sweep_parts(df: "pandas.DataFrame"):  # noqa: F821
    dd = df[df["method"] == "ddtree"]
    return dd, df[df["method"] == "chain"], df[df["method"] == "caddtree"]


def sweep_figure(df: "pandas.DataFrame", metric: str, oracle_b: int | None = None) -> go.Figure:  # noqa: F821
    """DDTree replayed at every budget (a :func:`dtree.replay.sweep_budgets` table), ``metric`` ``"mean_tau"``
    (tokens/round) or ``"pred_tok_s"`` (predicted tokens/s) against the budget B; chain and CaDDTree as single
    points at their mean budget; the oracle fixed budget ``oracle_b`` marked (a star and a dashed line)."""
    names = {"mean_tau": ("acceptance length tau", "mean tau (tokens/round)"),
             "pred_tok_s": ("predicted throughput", "predicted tokens/s")}
    what, ylab = names[metric]
    dd, chain, cad = _sweep_parts(df)
    fig = go.Figure()
    fig.add_trace(go.Scatter(x=dd["budget"].astype(float), y=dd[metric], mode="lines+markers", name="ddtree, budget B",
                             line=dict(color=ACCEPTED), marker=dict(size=4)))
    for part, name, colour, symbol in ((chain, "chain (DFlash)", GREEN, "square"),
                                       (cad, "caddtree (at its mean budget)", BONUS, "triangle-up")):
        if len(part):
            fig.add_trace(go.Scatter(x=part["mean_budget"], y=part[metric], mode="markers", name=name,
                                     marker=dict(color=colour, size=13, symbol=symbol,
                                                 line=dict(color="#333", width=1))))
    if metric == "mean_tau" and "recorded_mean_tau" in df.attrs:
        fig.add_hline(y=df.attrs["recorded_mean_tau"], line=dict(color="#666666", dash="dot", width=1),
                      annotation_text="logged mean tau", annotation_position="bottom right")
    if oracle_b is not None:
        row = dd[dd["budget"] == oracle_b]
        if len(row):
            fig.add_vline(x=oracle_b, line=dict(color=VERMILION, dash="dash", width=1))
            fig.add_trace(go.Scatter(x=[oracle_b], y=[float(row[metric].iloc[0])], mode="markers",
                                     name=f"oracle fixed budget B* = {oracle_b}",
                                     marker=dict(color=VERMILION, size=16, symbol="star")))
    fig.update_layout(title=f"Replay: {what} vs budget", xaxis_title="budget B (nodes per round)", yaxis_title=ylab,
                      height=360, legend=dict(orientation="h", y=-0.25), margin=dict(l=40, r=20, t=50, b=40))
    return fig


def budget_histogram_figure(budgets: np.ndarray, oracle_b: int | None = None) -> go.Figure:
    """Histogram of CaDDTree's replayed per-round budgets (nodes), the oracle fixed budget marked."""
    budgets = np.asarray(budgets)
    fig = go.Figure()
    fig.add_trace(go.Histogram(x=budgets, xbins=dict(size=1), name="caddtree budget per round",
                               marker=dict(color=BONUS, line=dict(color="#333", width=0.5))))
    if oracle_b is not None:
        fig.add_vline(x=oracle_b, line=dict(color=VERMILION, dash="dash", width=2))
        fig.add_trace(go.Scatter(x=[oracle_b, oracle_b], y=[0, 0], mode="lines", name=f"oracle fixed budget B* = "
                                 f"{oracle_b}", line=dict(color=VERMILION, dash="dash", width=2), hoverinfo="skip"))
    mean = f", mean {budgets.mean():.1f}" if len(budgets) else ""
    fig.update_layout(title=f"CaDDTree's chosen budgets over {len(budgets)} replayed rounds{mean}",
                      xaxis_title="budget n (nodes in the round)", yaxis_title="rounds", bargap=0.05, height=360,
                      legend=dict(orientation="h", y=-0.25), margin=dict(l=40, r=20, t=50, b=40))
    return fig


def sweep_table(df: "pandas.DataFrame") -> "pandas.DataFrame":  # noqa: F821
    """A :func:`dtree.replay.sweep_budgets` table with unit-bearing column names, for display."""
    out = df.rename(columns={"budget": "budget B (nodes; caddtree: max)", "mean_budget": "mean budget (nodes/round)",
                             "mean_tau": "mean tau (tokens/round)", "pred_s": "predicted time (s)",
                             "pred_tok_s": "predicted tokens/s", "n_rounds": "rounds",
                             "exact": "exact (within top-k)", "capped_rounds": "rounds at the top-k cap"})
    out.attrs = {}  # the sweep's arrays are not for display
    return out


def prediction_check_table(checks: list[tuple[str, Any, list[RunRecord]]]) -> "pandas.DataFrame":  # noqa: F821
    """Predicted (replay) vs measured (live) throughput, one row per configuration.

    Args:
        checks: ``(label, summary, live_runs)``: a :class:`dtree.replay.ReplaySummary` of the logged rounds and the
            live runs of the same configuration on the same prompts. Measured tokens/s = sum of new tokens / sum of
            decode seconds (prefill excluded); difference = (measured - predicted) / predicted in %.
    """
    import pandas as pd

    rows = []
    for label, s, live in checks:
        n_tok = sum(r.n_new_tokens for r in live)
        secs = sum(r.decode_s for r in live)
        measured = n_tok / secs if secs > 0 else float("nan")
        rounds = [x for r in live for x in r.rounds]
        rows.append({"configuration": label, "predicted tokens/s": s.pred_tok_s, "measured tokens/s": measured,
                     "difference (%)": 100.0 * (measured - s.pred_tok_s) / s.pred_tok_s if s.pred_tok_s > 0
                     else float("nan"),
                     "predicted mean tau": s.mean_tau,
                     "measured mean tau": float(np.mean([x.tau for x in rounds])) if rounds else float("nan"),
                     "predicted mean budget (nodes)": s.mean_budget,
                     "measured mean budget (nodes)": float(np.mean([x.budget for x in rounds])) if rounds
                     else float("nan"),
                     "live runs": " ".join(f"#{r.run_id}" for r in live)})
    return pd.DataFrame(rows)


def prediction_check_figure(table: "pandas.DataFrame") -> go.Figure:  # noqa: F821
    """Grouped bars of :func:`prediction_check_table`: predicted (hatched sky blue) vs measured (vermilion) tokens/s."""
    fig = go.Figure()
    fig.add_trace(go.Bar(x=table["configuration"], y=table["predicted tokens/s"], name="predicted (replay)",
                         marker=dict(color=SKY, pattern=dict(shape="/"))))
    fig.add_trace(go.Bar(x=table["configuration"], y=table["measured tokens/s"], name="measured (live)",
                         marker=dict(color=VERMILION), text=[f"{d:+.0f}%" for d in table["difference (%)"]],
                         textposition="outside"))
    fig.update_layout(barmode="group", title="Predicted vs measured throughput on the same prompts",
                      xaxis_title="configuration", yaxis_title="tokens/s (decode, prefill excluded)", height=380,
                      legend=dict(orientation="h", y=-0.25), margin=dict(l=40, r=20, t=50, b=40))
    return fig


PHASES = ("prefill", "draft", "build", "verify", "commit")
PHASE_COLOURS = {"prefill": "#CC79A7", "draft": "#56B4E9", "build": "#009E73", "verify": "#0072B2",
                 "commit": "#E69F00"}


def phase_times_ms(run: RunRecord) -> dict[str, float]:
    """Total milliseconds per phase of a run (prefill from the run, the others summed over its rounds)."""
    return {"prefill": float(run.prefill_ms), "draft": float(sum(r.draft_ms for r in run.rounds)),
            "build": float(sum(r.build_ms for r in run.rounds)), "verify": float(sum(r.verify_ms for r in run.rounds)),
            "commit": float(sum(r.commit_ms for r in run.rounds))}


def phase_shares_figure(runs: list[RunRecord], labels: list[str] | None = None) -> go.Figure:
    """Horizontal stacked bars: each run's wall time split into prefill/draft/build/verify/commit, in % of the total.

    Hover gives the phase's milliseconds. ``labels``: one bar label per run (default ``#id method``).
    """
    labels = labels or [f"#{r.run_id} {r.method}" for r in runs]
    times = [phase_times_ms(r) for r in runs]
    fig = go.Figure()
    for ph in PHASES:
        ms = [t[ph] for t in times]
        share = [100.0 * m / max(sum(t.values()), 1e-12) for m, t in zip(ms, times)]
        fig.add_trace(go.Bar(y=labels, x=share, name=ph, orientation="h", marker_color=PHASE_COLOURS[ph],
                             customdata=ms, hovertemplate=f"{ph}: %{{x:.1f}}% (%{{customdata:.1f}} ms)<extra></extra>"))
    fig.update_layout(barmode="stack", title="Where the time goes: share of wall time per phase",
                      xaxis=dict(title="share of run time (%)", range=[0, 100]), yaxis=dict(title="run"),
                      height=150 + 60 * len(runs), legend=dict(orientation="h", y=-0.35, traceorder="normal"),
                      margin=dict(l=40, r=20, t=50, b=40))
    return fig


def rounds_table(run: RunRecord, decode: Callable[[int], str] | None = None) -> "pandas.DataFrame":  # noqa: F821
    """One row per round: index, context length, tau, budget, per-phase ms, committed/bonus tokens, budget reason.

    Token columns hold ids, plus their text when ``decode`` is given. Used for the runs page's CSV export.
    """
    import pandas as pd

    rows = []
    for r in run.rounds:
        row = {"round": r.index, "L (context, tokens)": r.start, "tau (tokens)": r.tau, "budget (nodes)": r.budget,
               "draft ms": r.draft_ms, "build ms": r.build_ms, "verify ms": r.verify_ms, "commit ms": r.commit_ms,
               "committed ids": " ".join(map(str, r.committed)), "bonus id": r.bonus, "why this budget": r.budget_reason}
        if decode is not None:
            row["committed text"] = "".join(decode(t) for t in r.committed)
            row["bonus text"] = decode(r.bonus)
        rows.append(row)
    return pd.DataFrame(rows)


def compare_table(a: RunRecord, b: RunRecord) -> "pandas.DataFrame":  # noqa: F821
    """Two runs side by side: method, models, budget, tokens/s, tau, rounds, timings (units in the row names)."""
    import pandas as pd

    def col(r: RunRecord) -> dict[str, Any]:
        return {"method": r.method, "target": r.target, "drafter": r.drafter or "-", "dtype / device":
                f"{r.dtype} / {r.device}", "status": r.status, "budget param (nodes)": r.params.get("budget"),
                "tokens/s (decode)": round(r.tokens_per_s, 2), "mean tau (tokens/round)": round(r.mean_tau, 2),
                "mean budget (nodes/round)": round(r.mean_budget, 1), "rounds": len(r.rounds),
                "new tokens": r.n_new_tokens, "decode time (s)": round(r.decode_s, 3),
                "prefill (ms)": round(r.prefill_ms, 1), "created (UTC)": r.created}

    ca, cb = col(a), col(b)
    return pd.DataFrame({"quantity": list(ca), f"run #{a.run_id}": [str(v) for v in ca.values()],
                         f"run #{b.run_id}": [str(v) for v in cb.values()]})


def first_difference(a: list[int], b: list[int]) -> int | None:
    """Index of the first token where two outputs differ (the shorter length if one is a prefix); None if equal."""
    for i, (x, y) in enumerate(zip(a, b)):
        if x != y:
            return i
    return None if len(a) == len(b) else min(len(a), len(b))


def output_html(run: RunRecord, decode: Callable[[int], str]) -> str:
    """The output text with each token's background coloured by the round that committed it (hover: round, tau)."""
    spans = []
    n_out = len(run.output_ids)
    i = 0
    for rnd in run.rounds:
        colour = ROUND_COLOURS[rnd.index % len(ROUND_COLOURS)]
        for tok in rnd.committed:
            if i >= n_out:
                break
            spans.append(f'<span title="round {rnd.index}, tau {rnd.tau}" style="background:{colour};'
                         f'border-radius:3px">{html.escape(decode(tok))}</span>')
            i += 1
    for tok in run.output_ids[i:]:
        spans.append(f'<span title="final bonus token" style="border-bottom:2px solid {BONUS}">'
                     f'{html.escape(decode(tok))}</span>')
    return '<div style="white-space:pre-wrap;line-height:1.7;font-family:monospace">' + "".join(spans) + "</div>"


# ------------------------------------------------------------------------------------------ Speedup arena and Learn

OKABE_ITO = ["#000000", "#E69F00", "#56B4E9", "#009E73", "#0072B2", "#D55E00", "#CC79A7", "#F0E442"]
BENCH_PHASES = ("draft", "build", "verify", "commit")


def _method_colours(methods: list[str]) -> dict[str, str]:
    """One Okabe-Ito colour per method key; AR is always black."""
    others = [c for c in OKABE_ITO if c != "#000000"]
    out, i = {}, 0
    for m in methods:
        if m == "ar":
            out[m] = "#000000"
        else:
            out[m] = others[i % len(others)]
            i += 1
    return out


def speedup_figure(rows: list[dict], title: str | None = None) -> go.Figure:
    """Three bar panels per method from :func:`dtree.bench.summary_rows`: speedup vs AR (ratio of median tokens/s,
    dashed line at 1), mean tau (tokens/round) and mean budget (nodes/round). One colour per method (Okabe-Ito)."""
    from plotly.subplots import make_subplots

    methods = [r["method"] for r in rows]
    colours = _method_colours(methods)
    fig = make_subplots(rows=1, cols=3, horizontal_spacing=0.09, subplot_titles=(
        "speedup vs AR (x)", "mean tau (tokens/round)", "mean budget (nodes/round)"))
    for col, key, fmt in ((1, "speedup_vs_ar", "x{:.2f}"), (2, "mean_tau", "{:.2f}"), (3, "mean_budget", "{:.1f}")):
        for r in rows:
            v = r.get(key)
            fig.add_trace(go.Bar(
                x=[r["method"]], y=[v if v is not None else 0.0], name=r["method"], legendgroup=r["method"],
                showlegend=col == 1, marker_color=colours[r["method"]],
                text=[fmt.format(v) if v is not None else "n/a"], textposition="outside",
                hovertemplate=(f"<b>{html.escape(r['method'])}</b><br>{key}: %{{y:.3f}}<br>median tokens/s: "
                               f"{r.get('tok_s', float('nan')):.2f}<extra></extra>")), row=1, col=col)
    fig.add_hline(y=1.0, line=dict(color=VERMILION, dash="dash", width=1), row=1, col=1)
    fig.update_yaxes(title_text="speedup (x, AR = 1)", row=1, col=1, rangemode="tozero")
    fig.update_yaxes(title_text="tokens per round", row=1, col=2, rangemode="tozero")
    fig.update_yaxes(title_text="nodes per round", row=1, col=3, rangemode="tozero")
    fig.update_xaxes(title_text="method")
    fig.update_layout(title=title or "Speedup vs AR (ratio of median tokens/s), acceptance length and budget",
                      height=380, legend=dict(orientation="h", y=-0.3, title="method"),
                      margin=dict(l=50, r=20, t=80, b=40), bargap=0.3)
    return fig


def bench_phase_figure(rows: list[dict]) -> go.Figure:
    """Stacked horizontal bars: each method's round time split into draft / build / verify / commit (% of the round
    time summed over all its prompts; prefill excluded), from :func:`dtree.bench.summary_rows`."""
    fig = go.Figure()
    labels = [r["method"] for r in rows]
    for ph in BENCH_PHASES:
        fig.add_trace(go.Bar(y=labels, x=[r.get(f"{ph}_share_%", 0.0) for r in rows], name=ph, orientation="h",
                             marker_color=PHASE_COLOURS[ph], hovertemplate=f"{ph}: %{{x:.1f}}%<extra></extra>"))
    fig.update_layout(barmode="stack", title="Where the round time goes, per method (prefill excluded)",
                      xaxis=dict(title="share of round time (%)", range=[0, 100]),
                      yaxis=dict(title="method", autorange="reversed"), height=170 + 45 * len(rows),
                      legend=dict(orientation="h", y=-0.3, traceorder="normal", title="phase"),
                      margin=dict(l=40, r=20, t=50, b=40))
    return fig


def bench_compare_figure(benches: dict[str, list[dict]]) -> go.Figure:
    """Grouped bars: speedup vs AR per method, one bar colour per bench (``{bench label: summary rows}``)."""
    fig = go.Figure()
    methods = list(dict.fromkeys(r["method"] for rows in benches.values() for r in rows))
    for i, (label, rows) in enumerate(benches.items()):
        by = {r["method"]: r for r in rows}
        ys = [by[m]["speedup_vs_ar"] if m in by and by[m]["speedup_vs_ar"] is not None else None for m in methods]
        fig.add_trace(go.Bar(x=methods, y=ys, name=label, marker_color=OKABE_ITO[(i + 1) % len(OKABE_ITO)],
                             text=[f"x{y:.2f}" if y is not None else "" for y in ys], textposition="outside",
                             hovertemplate=f"{html.escape(label)}<br>%{{x}}: x%{{y:.3f}}<extra></extra>"))
    fig.add_hline(y=1.0, line=dict(color=VERMILION, dash="dash", width=1))
    fig.update_layout(barmode="group", title="Past benches: speedup vs AR per method",
                      xaxis_title="method", yaxis=dict(title="speedup (x, AR = 1)", rangemode="tozero"),
                      height=380, legend=dict(orientation="h", y=-0.3, title="bench"),
                      margin=dict(l=50, r=20, t=50, b=40))
    return fig


def top_marginals_table(rnd: RoundRecord, decode: Callable[[int], str], k: int = 5) -> "pandas.DataFrame":  # noqa: F821
    """The drafter's top-``k`` tokens per depth as text with probabilities: one row per depth d (position L + d)."""
    import pandas as pd

    toks = np.asarray(rnd.marg_tokens)
    probs = np.exp(np.asarray(rnd.marg_logprobs, dtype=np.float64))
    rows = []
    for d in range(toks.shape[0]):
        row = {"depth d": d + 1, "position": rnd.start + d + 1}
        for r in range(min(k, toks.shape[1])):
            row[f"rank {r}"] = f"{_token_label(decode, int(toks[d, r]))!s} ({probs[d, r]:.3f})"
        rows.append(row)
    return pd.DataFrame(rows)


def latex_text(text: str) -> str:
    """``\\text{...}`` for st.latex with LaTeX's special characters escaped (token text is arbitrary)."""
    s = str(text)
    for a, b in (("\\", "\x00"), ("{", r"\{"), ("}", r"\}"), ("_", r"\_"), ("^", r"\textasciicircum{}"),
                 ("$", r"\$"), ("&", r"\&"), ("#", r"\#"), ("%", r"\%"), ("~", r"\textasciitilde{}"),
                 ("\x00", r"\textbackslash{}")):
        s = s.replace(a, b)
    return r"\text{" + s + "}"


def path_product_latex(tree: DraftTree, node: int, decode: Callable[[int], str]) -> str:
    """LaTeX of node ``node``'s path probability as the product of its drafter marginals (DDTree Eq. 7), with the
    live numbers: ``q(u) = q_1(a) q_2(b) ... = 0.81 x 0.42 = 0.340``."""
    path = []
    i = int(node)
    while i > 0:
        path.append(i)
        i = int(tree.parents[i])
    path.reverse()
    if not path:
        return r"q(\text{root}) = 1"

    def tex_tok(t: int) -> str:
        return latex_text(_token_label(decode, t)[:12])

    symbols = r"\,".join(f"q_{{{int(tree.depths[j])}}}({tex_tok(int(tree.tokens[j]))})" for j in path)
    values = r" \times ".join(f"{np.exp(tree.logprobs[j]):.4f}" for j in path)
    total = f"{np.exp(tree.path_logprobs[node]):.4f}"
    return f"q(u_{{{node}}}) = {symbols} = {values}" + (f" = {total}" if len(path) > 1 else "")


def greedy_stop_numbers(tree: DraftTree, cost, context_len: int) -> dict[str, Any] | None:
    """The numbers of CaDDTree's greedy stop for a logged tree (CaDDTree spec 3.1-3.2), in seconds and tokens/s.

    For a ``caddtree`` tree: n = its node count; the first rejected candidate's probability delta_{n+1} is recovered
    from ``theta_curve[n+1]`` = (1 + Phi(n) + delta_{n+1}) / (Cd + Cv(n+1; L)). For a ``ddtree`` or ``chain`` tree
    (nodes in best-first order) n = the first node count whose next node would not raise theta, i.e. where CaDDTree
    would have stopped inside this tree. Returns None without a cost model.

    Keys: method, n, stopped (False when the build hit its budget while theta still rose), cd_s, cv_n_s, phi_n,
    theta_n, and when stopped: delta_next, cv_next_s, c_next_s (marginal verify cost of node n+1), theta_next,
    threshold (= theta(n) * c_{n+1}, the probability node n+1 needed).
    """
    if cost is None or not len(tree.theta_curve):
        return None
    L = int(context_len)
    cd = float(cost.cd_s)
    phi = np.concatenate([[0.0], np.cumsum(np.exp(tree.path_logprobs[1:]))])
    if tree.method == "caddtree":
        n = tree.n_nodes
        stopped = len(tree.theta_curve) > n + 1
        theta_next = float(tree.theta_curve[n + 1]) if stopped else None
        cv_next = float(cost.cv(n + 1, L)) if stopped else None
        delta_next = theta_next * (cd + cv_next) - 1.0 - float(phi[n]) if stopped else None
    else:
        th = np.asarray(tree.thetas, dtype=np.float64)
        drops = np.nonzero(th[1:] <= th[:-1])[0]
        stopped = len(drops) > 0
        n = int(drops[0]) if stopped else tree.n_nodes
        theta_next = float(th[n + 1]) if stopped else None
        cv_next = float(cost.cv(n + 1, L)) if stopped else None
        delta_next = float(np.exp(tree.path_logprobs[n + 1])) if stopped else None
    cv_n = float(cost.cv(n, L))
    theta_n = (1.0 + float(phi[n])) / (cd + cv_n)
    out = {"method": tree.method, "n": n, "stopped": stopped, "cd_s": cd, "cv_n_s": cv_n, "phi_n": float(phi[n]),
           "theta_n": theta_n}
    if stopped:
        c_next = cv_next - cv_n
        out.update(delta_next=max(0.0, delta_next), cv_next_s=cv_next, c_next_s=c_next, theta_next=theta_next,
                   threshold=theta_n * c_next)
    return out


def walk_table(rnd: RoundRecord, decode: Callable[[int], str]) -> "pandas.DataFrame":  # noqa: F821
    """The walk down the verified tree (DDTree spec 2.6), one row per accepted node: its token and position, the
    target's own choice there (the next accepted token, or the bonus at the end) and whether a child matched it."""
    import pandas as pd

    tree = rnd.tree
    rows = []
    for s, i in enumerate(rnd.accepted):
        last = s == len(rnd.accepted) - 1
        choice = rnd.bonus if last else int(tree.tokens[rnd.accepted[s + 1]])
        n_kids = int((tree.parents == i).sum())
        rows.append({"step": s, "node": i, "token": _token_label(decode, int(tree.tokens[i])),
                     "position (L + depth)": rnd.start + int(tree.depths[i]),
                     "target's choice after it": _token_label(decode, choice),
                     "children drafted": n_kids,
                     "result": ("no child matches: bonus token, round ends" if last
                                else f"matches child node {rnd.accepted[s + 1]}: accepted")})
    return pd.DataFrame(rows)


def visibility_figure(rnd: RoundRecord, decode: Callable[[int], str], max_nodes: int = 40) -> go.Figure:
    """Ancestor-only attention mask of the verify forward (DDTree spec 2.3) as a heatmap, query node (row) x key node
    (column), for the first ``max_nodes`` nodes in insertion order (a prefix of a tree is a tree: parents come first).

    Visible cells are blue (the target may attend: the node itself and its ancestors), hidden cells white; the
    accepted path's rows are labelled with a check mark. Every node also sees all L committed context tokens (not
    drawn). Axis labels: ``index:token``.
    """
    from .trees import visibility

    tree = rnd.tree
    m = min(tree.n_nodes + 1, max(1, int(max_nodes)))
    vis = visibility(tree)[:m, :m]
    accepted = set(rnd.accepted)
    labels = [f"{i}:{_token_label(decode, int(tree.tokens[i]))[:8]}" for i in range(m)]
    row_labels = [("✓ " if i in accepted else "") + lab for i, lab in enumerate(labels)]
    pos = [rnd.start + int(tree.depths[i]) for i in range(m)]
    hover = [[f"query node {i} (position {pos[i]}) {'sees' if vis[i, j] else 'does not see'} key node {j}"
              for j in range(m)] for i in range(m)]
    fig = go.Figure(go.Heatmap(
        z=vis.astype(int).tolist(), x=labels, y=row_labels, zmin=0, zmax=1, xgap=1, ygap=1,
        colorscale=[[0.0, "#FFFFFF"], [0.5, "#FFFFFF"], [0.5, ACCEPTED], [1.0, ACCEPTED]],
        colorbar=dict(title="mask", tickvals=[0.25, 0.75], ticktext=["hidden (-inf)", "visible (0)"], len=0.5),
        hovertext=hover, hoverinfo="text", name="visibility"))
    title = f"Round {rnd.index}: tree attention mask (ancestor-only), {m} of {tree.n_nodes + 1} tree tokens"
    fig.update_layout(title=title, xaxis=dict(title="key node j (index:token)", side="bottom", tickangle=-60),
                      yaxis=dict(title="query node i (index:token; ✓ = accepted)", autorange="reversed"),
                      height=max(360, 16 * m + 200), margin=dict(l=60, r=20, t=50, b=60))
    return fig


# ------------------------------------------------------------------------------------------------ Drafter diagnostics


def depth_agreement_figure(diag) -> go.Figure:
    """Per-depth top-1 agreement of a :class:`dtree.diagnostics.Diagnostics`: the conditional rate a_d (bars, with
    agree/rounds as text), the target's token within the logged top-k (dotted) and the chain's reach prod_{j<=d} a_j
    (dashed), all fractions of rounds in [0, 1] against depth d; the title gives the chain-equivalent tau."""
    a = diag.agreement
    fig = go.Figure()
    fig.add_trace(go.Bar(x=a["depth"], y=a["rate"], name="top-1 agreement a_d (given depths < d accepted)",
                         marker_color=ACCEPTED, text=[f"{g}/{n}" for g, n in zip(a["agree"], a["rounds"])],
                         textposition="outside", hovertemplate="depth %{x}: a_d = %{y:.3f} (%{text} rounds)"))
    fig.add_trace(go.Scatter(x=a["depth"], y=a["topk_rate"], mode="lines+markers", name="target token in logged top-k",
                             line=dict(color=GREEN, dash="dot"), marker=dict(symbol="square", size=6)))
    fig.add_trace(go.Scatter(x=a["depth"], y=a["reach"], mode="lines+markers", name="chain reaches depth d (prod a_j)",
                             line=dict(color=BONUS, dash="dash"), marker=dict(symbol="diamond", size=7)))
    s = diag.summary
    fig.update_layout(title=f"Drafter top-1 vs target per depth: chain-equivalent tau {s['chain_equivalent_tau']:.2f}"
                            f" (logged mean tau {s['mean_tau']:.2f}, {s['n_rounds']} rounds)",
                      xaxis=dict(title="depth d (tokens after the anchor)", dtick=1),
                      yaxis=dict(title="fraction of rounds", range=[0, 1.12]), height=380,
                      legend=dict(orientation="h", y=-0.25), margin=dict(l=40, r=20, t=50, b=40))
    return fig


def calibration_figure(diag) -> go.Figure:
    """Reliability curve of a :class:`dtree.diagnostics.Diagnostics`: observed acceptance rate of drafted nodes
    against their mean path probability q per log-spaced bin (marker area ~ node count), the per-depth totals as
    labelled diamonds, and the y = x diagonal of perfect calibration. x is log-scaled (probability), y linear."""
    cal, byd = diag.calibration, diag.calibration_by_depth
    fig = go.Figure()
    lo = max(1e-6, float(cal["mean_q"].min())) if len(cal) else 1e-4
    diag_x = np.logspace(np.log10(lo), 0, 60)
    fig.add_trace(go.Scatter(x=diag_x, y=diag_x, mode="lines", name="y = x (perfectly calibrated)",
                             line=dict(color="#666666", dash="dash", width=1), hoverinfo="skip"))
    if len(cal):
        size = 8 + 22 * np.sqrt(cal["nodes"] / cal["nodes"].max())
        fig.add_trace(go.Scatter(
            x=cal["mean_q"], y=cal["rate"], mode="lines+markers", name="all depths, per q bin",
            line=dict(color=ACCEPTED), marker=dict(size=size, color=ACCEPTED, line=dict(color="#FFFFFF", width=1)),
            customdata=np.stack([cal["nodes"], cal["accepted"], cal["q_lo"], cal["q_hi"]], axis=1),
            hovertemplate="q in [%{customdata[2]:.2g}, %{customdata[3]:.2g}): mean q %{x:.3g}, accepted %{y:.3f} "
                          "(%{customdata[1]}/%{customdata[0]} nodes)<extra></extra>"))
    if len(byd):
        d = byd.assign(sum_q=byd["mean_q"] * byd["nodes"]).groupby("depth", as_index=False)[
            ["nodes", "accepted", "sum_q"]].sum()
        fig.add_trace(go.Scatter(
            x=d["sum_q"] / d["nodes"], y=d["accepted"] / d["nodes"], mode="markers+text", name="per depth (all bins)",
            text=[f"d{int(v)}" for v in d["depth"]], textposition="top center",
            marker=dict(symbol="diamond", size=9, color=BONUS, line=dict(color="#333", width=1)),
            customdata=np.stack([d["depth"], d["nodes"], d["accepted"]], axis=1),
            hovertemplate="depth %{customdata[0]}: mean q %{x:.3g}, accepted %{y:.3f} "
                          "(%{customdata[2]}/%{customdata[1]} nodes)<extra></extra>"))
    s = diag.summary
    fig.update_layout(title=f"Calibration of path probability q: {s['n_nodes']} nodes, ECE {s['ece']:.3f}, "
                            f"Phi {s['mean_phi']:.2f} vs {s['mean_accepted_drafts']:.2f} accepted drafts per round",
                      xaxis=dict(title="drafter path probability q (log scale)", type="log"),
                      yaxis=dict(title="observed acceptance rate (fraction of nodes)", range=[-0.03, 1.05]),
                      height=400, legend=dict(orientation="h", y=-0.25), margin=dict(l=40, r=20, t=50, b=40))
    return fig
