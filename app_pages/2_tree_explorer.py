"""Tree explorer: any logged round's draft tree, the best-first heap replayed node by node, theta(n) and the marginals.

Open a round directly with ``?run=ID&round=R`` (the Live decode page links here that way).
"""

import math

import streamlit as st

from dtree import figures, ui

st.title("Tree explorer")
st.caption("Pick a logged run and round. Blue = the path the target accepted, orange diamond = the bonus token "
           "(the target's own next token), grey = rejected drafts. A round deleted in another tab shows a message here "
           "instead of a tree; choose another run.")

store, runs = ui.query_store_or_stop(lambda s: s.list_runs())
runs = runs[runs["n_rounds"] > 0].reset_index(drop=True)
if runs.empty:
    st.info("The trace store has no run with rounds yet: run a decode first (Live decode page).")
    st.stop()

labels = {int(r["id"]): ui.run_label(r) for _, r in runs.iterrows()}
ids = list(labels)
qp_run, qp_round = ui.int_query_param("run"), ui.int_query_param("round")
if qp_run is not None and qp_run not in labels:
    st.error(f"Run #{qp_run} (from the link) is not in this store: it may have been deleted. Showing another run.")
by_interest = [i for want in (("ddtree", "caddtree"), ("chain",)) for i, m in zip(ids, runs["method"]) if m in want]
default_id = qp_run if qp_run in labels else (by_interest + ids)[0]  # newest tree run first
run_id = st.selectbox("Run", ids, index=ids.index(default_id), format_func=labels.get)
n_rounds = int(runs.loc[runs["id"] == run_id, "n_rounds"].iloc[0])
start = qp_round if (qp_round is not None and run_id == qp_run and 0 <= qp_round < n_rounds) else 0
if qp_round is not None and run_id == qp_run and start != qp_round:
    st.warning(f"Round {qp_round} (from the link) is out of range: run #{run_id} has rounds 0..{n_rounds - 1}. "
               "Showing round 0.")
idx = st.slider("Round", 0, n_rounds - 1, start) if n_rounds > 1 else 0
st.query_params.update(run=str(run_id), round=str(idx))

try:
    rnd = store.load_round(run_id, idx)
except Exception as e:
    if getattr(e, "field", None) == "store":  # the file itself (damaged, unreadable): its own message says which
        st.error(f"Run #{run_id}, round {idx} cannot be read: {e}")
    else:
        st.error(f"Run #{run_id}, round {idx} is no longer in the trace store (deleted in another tab?): {e}")
    st.stop()
target = runs.loc[runs["id"] == run_id, "target"].iloc[0]
decode = ui.token_decoder(target)
tree = rnd.tree

m = st.columns(7)
m[0].metric("L (context, tokens)", rnd.start)
m[1].metric("tau (tokens)", rnd.tau)
m[2].metric("budget (nodes)", rnd.budget)
m[3].metric("draft (ms)", f"{rnd.draft_ms:.1f}")
m[4].metric("build (ms)", f"{rnd.build_ms:.2f}")
m[5].metric("verify (ms)", f"{rnd.verify_ms:.1f}")
m[6].metric("commit (ms)", f"{rnd.commit_ms:.1f}")
st.caption(f"Why this budget: {rnd.budget_reason}. Tree method: {tree.method}. Committed: "
           f"{''.join(decode(t) for t in rnd.committed)!r}, bonus {decode(rnd.bonus)!r}.")

st.subheader("The tree, grown by the best-first heap")
c1, c2, c3 = st.columns([4, 2, 3], vertical_alignment="bottom")
view = f"{run_id}_{idx}"  # every round opens in its default view (whole tree), whatever was set on another one
step = c1.slider("Heap step (nodes inserted, in insertion order)", 0, tree.n_nodes, tree.n_nodes, key=f"step_{view}",
                 help="Replays the heap: node k is the k-th best path probability popped") if tree.n_nodes else 0
max_depth = c2.number_input("Max depth shown", 1, max(1, int(tree.depths.max())), max(1, int(tree.depths.max())),
                            key=f"depth_{view}", help="Hide nodes deeper than this (tokens after the anchor)")
collapse = c3.checkbox("Collapse rejected", tree.n_nodes > 120, key=f"collapse_{view}",
                       help="Collapse rejected subtrees: keep the accepted path and its direct alternatives; hidden "
                            "counts are in the hovers")
left, right = st.columns([2, 1])
left.plotly_chart(figures.tree_figure(rnd, decode, upto=step, collapse_rejected=collapse,
                                      max_depth=None if max_depth >= tree.depths.max() else int(max_depth)),
                  width="stretch")
if len(tree.theta_curve):
    right.plotly_chart(figures.theta_figure(tree, step=step), width="stretch")
elif not rnd.drafted:
    right.info("A plain target step: nothing was drafted this round (an AR run, or a -fallback run skipping the "
               "drafter), so there is no tree to grow and no theta(n) curve.")
else:
    right.info("No theta(n) curve: this round was built without a cost model.")
if step:
    right.caption(f"Step {step}: node {decode(int(tree.tokens[step]))!r} at depth {int(tree.depths[step])}, "
                  f"rank {int(tree.ranks[step])}, path prob {math.exp(tree.path_logprobs[step]):.4f}.")

method = str(runs.loc[runs["id"] == run_id, "method"].iloc[0])
if "-cal" in method or "-adapt" in method:
    with st.expander("Calibration factors this round was built with"):
        from dtree.calibration import run_calibration
        from dtree.replay import adaptive_calibrations

        try:
            full = store.load_run(run_id)
            cal = adaptive_calibrations(full)[idx] if "-adapt" in method else run_calibration(full)
        except Exception as e:
            st.error(f"Cannot rebuild the calibration of run #{run_id}: {e}")
        else:
            st.caption("Each drafted step's probability q becomes min(1, f q). Rows: depth; columns: factor f by the "
                       "node's rank (r3+ = rank 3 and beyond), for nodes whose path so far is the drafter's top-1 "
                       "(spine) or has left it (off-spine); acc / pred: observed acceptances and the drafter's "
                       "expected ones behind the factors. "
                       + (f"-adapt: fitted on this run's rounds 0..{idx - 1} only." if "-adapt" in method and idx else
                          "-adapt: round 0 has seen nothing yet, so every factor is 1." if "-adapt" in method else
                          "-cal: one calibration fitted before the run."))
            st.dataframe(cal.table().round(3), hide_index=True)

st.subheader("What the drafter predicted")
st.plotly_chart(figures.marginals_heatmap(rnd, decode), width="stretch")
st.caption("One drafter forward gives a distribution per depth; the tree picks cells of this table (DDTree uses "
           "only these per-position marginals, so one cell can extend several parents).")
