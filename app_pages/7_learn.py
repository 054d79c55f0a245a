"""Learn: a guided walk through one real decoding round (drafter marginals, heap, greedy stop, one-pass verify)."""

import math

import pandas as pd
import streamlit as st

from dtree import bench, figures, ui
from dtree.cost import CostModel
from dtree.engine import DecodeConfig
from dtree.models import dtype_advice
from dtree.trees import uses_argmax_stop

st.title("Learn: one round, step by step")
st.caption("Everything below comes from a real round decoded just now on the embedded models (offline): the drafter "
           "proposes, the best-first heap builds the draft tree, the target verifies it in one forward pass and keeps "
           "the longest path it agrees with.")

with st.sidebar:
    dtype = st.selectbox("dtype", ["float32", "bfloat16"], key="learn_dtype",
                         help="float32 is exact. Here: " + dtype_advice())
ui.store_box()  # where runs are logged

with st.form("learn"):
    prompt = st.text_area("Prompt", key="learn_prompt", height=80, value="Ben has 3 bags with 12 apples each. He "
                          "gives 10 apples to a friend. How many apples does he have left?")
    c = st.columns(3)
    method = c[0].selectbox("Tree method", ["caddtree", "ddtree"], key="learn_method",
                            help="caddtree: budget chosen per round from this machine's cost model (profiled once, "
                                 "with a progress bar); ddtree: fixed budget B")
    budget = c[1].number_input("Budget B / max budget (nodes)", 1, 256, 32, key="learn_budget",
                               help="ddtree: the node budget; caddtree: the largest budget the greedy rule may reach")
    n_tokens = c[2].number_input("Tokens to decode", 1, 64, 12, key="learn_tokens",
                                 help="A few tokens give a few rounds; pick the one to study below")
    clicked = st.form_submit_button("Decode one round", type="primary")

if clicked:
    try:
        backend = ui.get_backend("embedded", dtype)
        cfg = DecodeConfig(method=method, budget=int(budget), max_new_tokens=int(n_tokens))
        backend.prepare(prompt, cfg)  # bad input: st.error, nothing stored
        store = ui.get_store()
        if store is not None:
            store.check_writable()  # a damaged or read-only store fails here, before decoding, with nothing stored
        with ui.model_slot():  # one decode/profile at a time per server; later requests wait
            bar = st.progress(0.0, text="decoding...")
            run = backend.decode(prompt, cfg, store=None if store is None else bench.TaggedStore(store, "learn"),
                                 cost_progress=lambda d, t: bar.progress(d / t, text="profiling this machine's cost "
                                                                         f"model (first time only): {d}/{t}"))
            bar.empty()
        st.session_state["learn_run"] = run
        st.session_state["learn_store"] = None if store is None else str(store.path)  # the store it was logged to
        st.session_state["learn_nonce"] = st.session_state.get("learn_nonce", 0) + 1  # fresh sliders per decode
    except Exception as e:  # shown, app keeps running
        ui.show_error(e)

run = st.session_state.get("learn_run")
if run is None:
    st.info("Type a prompt and press **Decode one round**.")
    st.stop()
if not run.rounds:
    st.error("The decode produced no round (the prompt ended at once); try another prompt.")
    st.stop()

decode = ui.decode_token_fn(ui.get_backend("embedded", run.dtype).target.tokenizer)
idx = st.slider("Round to study", 0, len(run.rounds) - 1, min(1, len(run.rounds) - 1),
                key=f"learn_round_{st.session_state.get('learn_nonce', 0)}") if len(run.rounds) > 1 else 0
rnd = run.rounds[idx]
tree = rnd.tree
L = rnd.start


def tok(t) -> str:
    """Token id -> readable text (newlines shown as \\n, blanks quoted)."""
    return figures._token_label(decode, int(t))


m = st.columns(5)
m[0].metric("context length L (tokens)", L)
m[1].metric("anchor (root)", tok(rnd.anchor))
m[2].metric("budget n (nodes)", rnd.budget)
m[3].metric("tau (tokens committed)", rnd.tau)
m[4].metric("bonus token", tok(rnd.bonus))
st.caption(f"Method {run.method}, {run.dtype} on {run.device}. This round: draft {rnd.draft_ms:.1f} ms, build "
           f"{rnd.build_ms:.2f} ms, verify {rnd.verify_ms:.1f} ms, commit {rnd.commit_ms:.1f} ms."
           + (f" Logged as run #{run.run_id} in the trace store ({st.session_state.get('learn_store')})."
              if run.run_id is not None else ""))
if run.run_id is not None:
    st.page_link("app_pages/2_tree_explorer.py", label="Open this round in the Tree explorer",
                 query_params={"run": run.run_id, "round": rnd.index}, icon="🔎")

# ---------------------------------------------------------------------------------------------------------- 1
st.header("1 · What the drafter predicts")
gamma = rnd.marg_tokens.shape[0]
st.markdown(f"The drafter reads the target's features of the context and one block `[anchor, MASK × {gamma}]`. "
            f"**One** forward gives a distribution per depth d = 1..γ (γ = {gamma}), each over the whole vocabulary: "
            "the per-position marginals.")
st.latex(r"q_d(v) = P_{\text{drafter}}\big(x_{L+d} = v \mid \text{context},\ \text{anchor}\big),\qquad d = 1,\dots,"
         + str(gamma))
top1 = math.exp(float(rnd.marg_logprobs[0, 0]))
st.latex(r"\text{here, top-1 at depth 1: } q_1(" + figures.latex_text(tok(rnd.marg_tokens[0, 0])[:12])
         + f") = {top1:.3f}")
st.dataframe(figures.top_marginals_table(rnd, decode, k=5), hide_index=True)
st.plotly_chart(figures.marginals_heatmap(rnd, decode), width="stretch")
st.caption("The marginals ignore each other: depth 3's distribution does not know which token was chosen at depth 2. "
           "That is why one cell can extend several parents in the tree.")

# ---------------------------------------------------------------------------------------------------------- 2
st.header("2 · How the heap grows the tree")
st.markdown("DDTree scores a prefix u (a path from the root) by the product of its marginals (DDTree Eq. 7) and keeps "
            "the n best prefixes. Their sum Φ(n) is the expected number of accepted drafts under this surrogate "
            "(Prop. 1). A heap pops prefixes best first; popping u pushes its next sibling (rank + 1) and its first "
            "child (rank 0 one depth deeper), so q(u) never increases along the pops and parents come first.")
st.latex(r"q(u) = \prod_{i=1}^{|u|} q_i(u_i), \qquad \Phi(n) = \sum_{j=1}^{n} q(u_j), \qquad "
         r"q(u_1) \ge q(u_2) \ge \dots")
if tree.n_nodes == 0:
    st.info("This round's tree has only the root (budget 0).")
else:
    step = st.slider("Heap step k (nodes popped so far)", 1, tree.n_nodes, tree.n_nodes,
                     key=f"learn_step_{st.session_state.get('learn_nonce', 0)}_{idx}", help="Replays the best-first pops in insertion order"
                     ) if tree.n_nodes > 1 else 1
    left, right = st.columns([3, 2])
    left.plotly_chart(figures.tree_figure(rnd, decode, upto=step, collapse_rejected=tree.n_nodes > 120),
                      width="stretch")
    right.markdown(f"**Node {step}** popped at step {step}: token {tok(tree.tokens[step])!r}, depth "
                   f"{int(tree.depths[step])}, rank {int(tree.ranks[step])}.")
    right.latex(figures.path_product_latex(tree, step, decode))
    phi = float(sum(math.exp(v) for v in tree.path_logprobs[1:step + 1]))
    right.latex(rf"\Phi({step}) = {phi:.3f}\ \text{{expected accepted drafts}}")
    right.dataframe(pd.DataFrame({
        "node": range(1, step + 1), "token": [tok(t) for t in tree.tokens[1:step + 1]],
        "depth": tree.depths[1:step + 1], "rank": tree.ranks[1:step + 1],
        "q(u)": [round(math.exp(v), 4) for v in tree.path_logprobs[1:step + 1]]}).tail(40), hide_index=True,
        height=260)

# ---------------------------------------------------------------------------------------------------------- 3
st.header("3 · Why CaDDTree stops where it does")
st.markdown("More nodes raise Φ(n) but also the verify cost. CaDDTree predicts the round's throughput with the "
            "drafter cost Cd and the profiled verify cost Cv(n; L), and keeps adding the heap's next node while "
            "that raises θ. Because q(u) only falls and Cv is convex in n, θ rises then falls: the first "
            "non-improving node is the best stop (CaDDTree, spec 3.1-3.3).")
st.latex(r"\theta(n) = \frac{1 + \Phi(n)}{C_d + C_v(n;\,L)} \qquad \text{(tokens/s)}")
st.latex(r"\text{add node } n{+}1 \iff q(u_{n+1}) > \theta(n)\cdot c_{n+1},\qquad "
         r"c_{n+1} = C_v(n{+}1;\,L) - C_v(n;\,L)")
cost = None
if run.cost_model:
    try:
        cost = CostModel.from_dict(run.cost_model)
    except Exception as e:
        ui.show_error(e)
g = figures.greedy_stop_numbers(tree, cost, L) if cost is not None else None
if g is None:
    st.info("This run had no cost model, so there is no θ(n) to show: choose **caddtree** above (it profiles this "
            "machine's verify cost once, with a progress bar); after that, ddtree rounds show it too.")
else:
    n = g["n"]
    st.latex(rf"\theta({n}) = \frac{{1 + {g['phi_n']:.3f}}}{{{1e3 * g['cd_s']:.2f}\,\text{{ms}} + "
             rf"{1e3 * g['cv_n_s']:.2f}\,\text{{ms}}}} = {g['theta_n']:.2f}\ \text{{tokens/s}}")
    if g["stopped"]:
        verdict = r"\le" if g["delta_next"] <= g["threshold"] else ">"
        st.latex(rf"q(u_{{{n + 1}}}) = {g['delta_next']:.4f}\ {verdict}\ \theta({n})\cdot c_{{{n + 1}}} = "
                 rf"{g['theta_n']:.2f}\,\text{{tokens/s}} \times {1e3 * g['c_next_s']:.3f}\,\text{{ms}} = "
                 rf"{g['threshold']:.4f}")
        if tree.method == "caddtree" and uses_argmax_stop(cost):
            st.caption("This run's cost model reads the measured Cv(n; L), which is not convex on this CPU (padding "
                       "widths, kernel steps), so θ(n) can dip and rise again. dtree then keeps the best n over all "
                       "prefixes (the argmax stop) instead of the first node that does not raise θ; on a convex Cv "
                       "both give the same tree.")
        who = "CaDDTree stopped" if tree.method == "caddtree" else \
            f"With this cost model CaDDTree would have stopped inside this fixed-budget tree (B = {tree.n_nodes})"
        st.success(f"{who} at n = {n}: node {n + 1} would change θ from {g['theta_n']:.2f} to "
                   f"{g['theta_next']:.2f} tokens/s, since its path probability is below θ(n) × its marginal "
                   "verify cost.")
    else:
        st.info(f"θ(n) still rose at the last node: the build ended at the budget n = {n}, not at a greedy stop.")
    st.plotly_chart(figures.theta_figure(tree, step=n), width="stretch")
    st.caption(f"Cd = {1e3 * g['cd_s']:.2f} ms per round and Cv(n; L = {L}) come from this machine's cost model"
               + (" (with the cost weights applied)." if cost.weights is not None else "."))

# ---------------------------------------------------------------------------------------------------------- 4
st.header("4 · How the target verifies in one pass")
st.markdown(f"All {tree.n_nodes + 1} tree tokens (root + nodes) go through the target in **one** forward. Each node "
            "sits at the position of its depth and may attend only to the committed context, its ancestors and "
            "itself, so its logits equal what plain decoding would compute after its path.")
st.latex(r"\text{pos}(i) = L + \text{depth}(i), \qquad M_{ij} = \begin{cases} 0 & j = i \text{ or } j \text{ an "
         r"ancestor of } i \\ -\infty & \text{otherwise} \end{cases}")
st.plotly_chart(figures.visibility_figure(rnd, decode, max_nodes=40), width="stretch")
if tree.n_nodes + 1 > 40:
    st.caption(f"First 40 of {tree.n_nodes + 1} tree tokens shown (a prefix in insertion order is itself a tree).")
st.markdown("Then the walk: start at the root, take the target's own token there; if a child carries it, accept "
            "that child and repeat; otherwise that token is the **bonus** and the round ends.")
st.latex(rf"\tau = 1 + \text{{accepted drafts}} = 1 + {rnd.tau - 1} = {rnd.tau}")
st.dataframe(figures.walk_table(rnd, decode), hide_index=True)
st.success(f"Committed {''.join(decode(t) for t in rnd.committed)!r} ({rnd.tau} token(s)); the bonus "
           f"{decode(rnd.bonus)!r} becomes the next round's anchor at position {L + rnd.tau}.")
