"""Figure functions (plotly), shared by the pages and any report. No Streamlit, no model, no SQL here.

Colours follow the Okabe-Ito palette, which stays distinguishable for colour-blind readers: accepted path blue,
bonus token orange, rejected nodes grey, root black. Shapes differ too (root square, bonus diamond), so colour is never
the only cue.
"""

from __future__ import annotations

import html
from collections.abc import Callable

import networkx as nx
import numpy as np
import plotly.graph_objects as go

from .records import RoundRecord, RunRecord
from .trees import DraftTree

ACCEPTED = "#0072B2"
BONUS = "#E69F00"
REJECTED = "#BBBBBB"
ROOT = "#000000"
ROUND_COLOURS = ["#DCEBFA", "#FCE9CF", "#D9F2E6", "#F6DDEB", "#EFEFD0", "#E4E0F5"]


def tree_graph(tree: DraftTree) -> nx.DiGraph:
    """The tree as a networkx DiGraph (node = insertion index, edge parent -> child, attributes from the arrays)."""
    g = nx.DiGraph()
    for i in range(tree.n_nodes + 1):
        g.add_node(i, token=int(tree.tokens[i]), depth=int(tree.depths[i]), rank=int(tree.ranks[i]))
        if tree.parents[i] >= 0:
            g.add_edge(int(tree.parents[i]), i)
    return g


def tree_layout(tree: DraftTree) -> dict[int, tuple[float, float]]:
    """Tidy left-to-right layout: x = depth, leaves on consecutive rows ordered by rank, parents centred on children."""
    g = tree_graph(tree)
    y: dict[int, float] = {}
    next_row = [0.0]

    def place(u: int) -> float:
        kids = sorted(g.successors(u), key=lambda v: g.nodes[v]["rank"])
        if not kids:
            y[u] = next_row[0]
            next_row[0] += 1.0
        else:
            y[u] = float(np.mean([place(v) for v in kids]))
        return y[u]

    place(0)
    return {u: (float(g.nodes[u]["depth"]), -y[u]) for u in g.nodes}


def _token_label(decode: Callable[[int], str], tok: int) -> str:
    text = decode(tok)
    return text.replace("\n", "\\n") if text.strip() else repr(text)


def tree_figure(rnd: RoundRecord, decode: Callable[[int], str], title: str | None = None,
                upto: int | None = None) -> go.Figure:
    """Draw one round's draft tree.

    Args:
        rnd: the round (its tree, accepted path and bonus token).
        decode: token id -> text.
        upto: draw only nodes ``0..upto`` (insertion order), to replay the heap step by step; None = all.
    Hover shows token, depth, rank, drafter prob q_d(token), path prob q(u), marginal verify cost (ms), theta after
    insertion (tok/s) and whether the target accepted the node. The bonus token is drawn after the accepted path.
    """
    tree = rnd.tree
    n_show = tree.n_nodes if upto is None else max(0, min(upto, tree.n_nodes))
    pos = tree_layout(tree)
    accepted = set(rnd.accepted)
    show = range(n_show + 1)
    big = n_show > 120

    ex, ey = [], []
    for i in show:
        p = int(tree.parents[i])
        if p >= 0:
            ex += [pos[p][0], pos[i][0], None]
            ey += [pos[p][1], pos[i][1], None]
    ax, ay = [], []
    for a, b in zip(rnd.accepted, rnd.accepted[1:]):
        if b <= n_show:
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
        return (f"<b>{html.escape(_token_label(decode, int(tree.tokens[i])))}</b> (id {int(tree.tokens[i])})<br>"
                f"node {i} (insertion order), depth {int(tree.depths[i])}, rank {int(tree.ranks[i])}<br>"
                f"drafter prob q_d = {np.exp(tree.logprobs[i]):.3f}<br>path prob q(u) = {np.exp(tree.path_logprobs[i]):.4f}<br>"
                f"marginal verify cost = {cost * 1e3:.2f} ms<br>theta after insertion = {theta:.2f} tok/s<br>"
                + ("<b>accepted by the target</b>" if i in accepted else "rejected"))

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
    last = rnd.accepted[-1]
    if last <= n_show:
        bx, by = pos[last][0] + 1, pos[last][1]
        fig.add_trace(go.Scatter(x=[pos[last][0], bx], y=[pos[last][1], by], mode="lines",
                                 line=dict(color=BONUS, width=2, dash="dot"), hoverinfo="skip", showlegend=False))
        fig.add_trace(go.Scatter(
            x=[bx], y=[by], mode="markers+text", name="bonus token (target's choice)",
            marker=dict(color=BONUS, size=18, symbol="diamond", line=dict(color="#333", width=0.5)),
            text=[_token_label(decode, rnd.bonus)[:10]], textposition="top center",
            hovertext=[f"<b>bonus</b> {html.escape(_token_label(decode, rnd.bonus))} (id {rnd.bonus})<br>"
                       "the target's own token after the accepted path; next round's anchor"], hoverinfo="text"))
    fig.update_layout(
        title=title or f"Round {rnd.index}: {tree.n_nodes} nodes, tau = {rnd.tau} (accepted {rnd.tau - 1} drafts + bonus)",
        xaxis=dict(title="depth (tokens after the anchor)", dtick=1, zeroline=False),
        yaxis=dict(title="branches (ordered by drafter rank)", showticklabels=False, zeroline=False),
        height=max(320, min(1400, 22 * (len(set(round(p[1], 3) for p in pos.values())) + 4))),
        legend=dict(orientation="h", y=-0.15), margin=dict(l=40, r=20, t=50, b=40), hovermode="closest")
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


def theta_figure(tree: DraftTree) -> go.Figure:
    """theta(n) = (1 + Phi(n)) / (Cd + Cv(n; L)) in tok/s against n, the chosen budget marked (CaDDTree, spec 3.1)."""
    curve = np.asarray(tree.theta_curve)
    fig = go.Figure()
    fig.add_trace(go.Scatter(x=np.arange(len(curve)), y=curve, mode="lines+markers", name="theta(n)",
                             line=dict(color=ACCEPTED)))
    if len(curve) > tree.n_nodes:
        fig.add_trace(go.Scatter(x=[tree.n_nodes], y=[curve[tree.n_nodes]], mode="markers", name="chosen budget",
                                 marker=dict(color=BONUS, size=14, symbol="star")))
    fig.update_layout(title="Predicted throughput theta(n)", xaxis_title="nodes n",
                      yaxis_title="theta (tokens/s)", height=300, margin=dict(l=40, r=20, t=50, b=40))
    return fig


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
