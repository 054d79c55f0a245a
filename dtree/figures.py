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


def tree_layout(tree: DraftTree, keep: set[int] | None = None) -> dict[int, tuple[float, float]]:
    """Tidy left-to-right layout: x = depth, leaves on consecutive rows ordered by rank, parents centred on children.

    ``keep``: lay out only these nodes (must be closed under parents, root included); None = all nodes.
    """
    g = tree_graph(tree)
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
    pos = tree_layout(tree, set(keep) if pruned else None)
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
    last = rnd.accepted[-1]
    if last <= n_show and last in pos:
        bx, by = pos[last][0] + 1, pos[last][1]
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
    fig.update_layout(
        title=title or default_title,
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
        label = "greedy stop (chosen budget)" if tree.method == "caddtree" else "chosen budget"
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
