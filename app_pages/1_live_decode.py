"""Live decode: type a prompt, pick a method and budget, watch real speculative decoding round by round."""

import pandas as pd
import streamlit as st

from dtree import figures, ui
from dtree.engine import DEFAULT_BUDGET, MAX_BUDGET, DecodeConfig
from dtree.models import dtype_advice
from dtree.records import METHODS, VARIANT_BASES

st.title("Live decode")
st.caption("A real target (SmolLM2-135M-Instruct by default) verifies the drafter's tree in one forward per round. "
           "Output is identical to plain decoding at temperature 0; each round commits tau tokens.")

with st.sidebar:
    dtype = st.selectbox("dtype", ["float32", "bfloat16"], key="dtype",
                         help="float32: exact; bfloat16 may break near-ties differently. Here: " + dtype_advice())
ui.store_box()  # where runs are logged

# method settings outside the form, so the budget and the tree options follow the chosen method at once
c1, c2, c3, c4, c5, c6 = st.columns([2.5, 3, 2, 3, 2.5, 2], vertical_alignment="bottom")  # labels uncut at 1400 px
method = c1.selectbox("Method", METHODS, index=METHODS.index("caddtree"), key="method",
                      help="ar: plain decoding; chain: DFlash block; ddtree: fixed node budget; "
                           "caddtree: budget chosen per round from the cost model")
tree_method = method in VARIANT_BASES
if method == "caddtree":  # its own box: CaDDTree picks each round's budget, this only caps it (engine default 256)
    budget = c2.number_input("Max budget (nodes)", 0, MAX_BUDGET, DEFAULT_BUDGET["caddtree"], key="budget_caddtree",
                             help="caddtree: the largest tree it may build; it chooses each round's budget from the "
                                  "cost model below this cap")
else:
    budget = c2.number_input("Budget B (nodes)", 0, MAX_BUDGET, 16, key="budget", disabled=not tree_method,
                             help="ddtree: node budget; unused for ar/chain")
spine = c3.checkbox("top-1 spine", key="spine", disabled=not tree_method,
                    help="spine guarantee (ddtree/caddtree): the drafter's top-1 chain is always in the tree, up to "
                         "the budget")
PROBS = {"drafter": "drafter's own", "cal": "calibrated (fitted once)", "adapt": "calibrated during the run"}
probs = c4.selectbox("Path probabilities", list(PROBS), key="probs", format_func=PROBS.get, disabled=not tree_method,
                     help="ddtree/caddtree: rank nodes (and, for caddtree, predict Phi(n)) by the drafter's path "
                          "probabilities, or by probabilities corrected for how often the target really accepts: "
                          "-cal uses a calibration fitted once on demo prompts (the first use takes about a minute), "
                          "-adapt learns it from this run's own earlier rounds")
calibrated, adaptive = probs == "cal", probs == "adapt"
raw_cv = c5.checkbox("measured Cv", key="rawcv", disabled=method != "caddtree",
                     help="caddtree: stop the greedy rule on the measured verify cost Cv(n; L) instead of its convex "
                          "fit (the fit keeps theta(n) unimodal but misprices small trees where the measured cost is "
                          "concave, as on CPUs; see the Cost model page). Plain caddtree already does so when the fit "
                          "is more than 10% off the profile; then this box changes nothing")
fallback = c6.checkbox("AR fallback", key="fallback", disabled=method != "caddtree",
                       help="caddtree: after a round whose best tree is predicted slower than a plain target step "
                            "(theta(n*) < 1/Cv(0; L)), skip the drafter for 1, then 2, 4, ... up to 16 rounds "
                            "(plain target steps) until a drafted round pays again (dtree's extension, "
                            "method suffix -fallback)")

with st.expander("Cost weights (caddtree)", expanded=False):
    st.caption("Scale this machine's profiled costs before CaDDTree chooses each round's budget: e.g. a larger Cv "
               "scale or tree-node factor (dearer verify) gives smaller trees. The weighted cost model is stored with "
               "the run; the Cost model page shows the curves and fits these scales to logged runs.")
    weights = ui.cost_weight_widgets(None, "ld", analytic_override=False, disabled=method != "caddtree")

with st.form("decode"):
    prompt = st.text_area("Prompt", key="prompt", value="Natalia sold clips to 48 of her friends in April, and then she sold half as many "
                          "clips in May. How many clips did Natalia sell altogether in April and May?", height=100)
    c1, c2 = st.columns(2)
    max_new = c1.number_input("Max new tokens", 1, 1024, 64, key="max_new")
    temperature = c2.number_input("Temperature", 0.0, 2.0, 0.0, step=0.1, help="0 = greedy", key="temperature")
    run_clicked = st.form_submit_button("Run", type="primary")

if run_clicked:
    try:
        backend = ui.get_backend("embedded", dtype)
        cfg = DecodeConfig(method=method, budget=int(budget) if tree_method else None, max_new_tokens=int(max_new),
                           temperature=float(temperature), spine=spine and tree_method,
                           calibrated=calibrated and tree_method, adaptive=adaptive and tree_method,
                           raw_cv=raw_cv and method == "caddtree", fallback=fallback and method == "caddtree")
        backend.prepare(prompt, cfg)  # bad input: st.error, nothing stored
        store = ui.get_store()
        if store is not None:
            store.check_writable()  # a damaged or read-only store fails here, before decoding, with nothing stored
        with ui.model_slot():  # one decode/profile at a time per server; later requests wait
            bar = st.progress(0.0, text="decoding...")
            live = st.empty()
            if cfg.calibrated:  # the cached calibration, or a fit on the first calibrated run (only then a spinner)
                with st.spinner("Calibrating the drafter on a few demo prompts (first calibrated run only, about a "
                                "minute)..."):
                    backend.calibration(progress=lambda d, t: bar.progress(d / t, text=f"calibration: prompt {d}/{t}"))

            def on_round(rnd, n_done):
                bar.progress(min(1.0, n_done / cfg.max_new_tokens), text=f"round {rnd.index}: tau {rnd.tau}, "
                                                                          f"budget {rnd.budget}")

            def on_profile(done, total):
                bar.progress(done / total, text=f"profiling this machine's cost model (first caddtree run only): "
                                                f"{done}/{total}")

            run = backend.decode(prompt, cfg, store=store, on_round=on_round, cost_progress=on_profile,
                                 cost_weights=weights if method == "caddtree" and not weights.is_identity else None)
            bar.empty()
            live.empty()
        st.session_state["live_run"] = run
        st.session_state["live_store"] = None if store is None else str(store.path)  # the store it was logged to
        # a disturbed first-use cost profile: caddtree's budgets came from it; say so beside the run
        st.session_state["live_cost_warning"] = backend.cost_model_warning if method == "caddtree" else None
    except Exception as e:  # shown, app keeps running
        ui.show_error(e)

run = st.session_state.get("live_run")
if run is not None:
    if st.session_state.get("live_cost_warning"):
        st.warning("Cost model: " + st.session_state["live_cost_warning"])
    backend = ui.get_backend("embedded", run.dtype)
    decode = ui.decode_token_fn(backend.target.tokenizer)
    m = st.columns(5)
    m[0].metric("tokens/s", f"{run.tokens_per_s:.2f}")
    m[1].metric("mean tau (tokens/round)", f"{run.mean_tau:.2f}")
    m[2].metric("mean budget (nodes)", f"{run.mean_budget:.1f}")
    m[3].metric("rounds", len(run.rounds))
    m[4].metric("new tokens", run.n_new_tokens)
    st.subheader("Output (background = round that committed the token)")
    st.html(figures.output_html(run, decode))
    st.plotly_chart(figures.rounds_figure(run), width="stretch")

    if run.method != "ar" and run.rounds:
        st.subheader("Tree of a round")
        idx = st.slider("Round", 0, len(run.rounds) - 1, 0) if len(run.rounds) > 1 else 0
        rnd = run.rounds[idx]
        st.caption(f"Round {rnd.index} at context length L = {rnd.start}: {rnd.budget_reason}. "
                   f"Timings: draft {rnd.draft_ms:.1f} ms, build {rnd.build_ms:.1f} ms, verify {rnd.verify_ms:.1f} ms, "
                   f"commit {rnd.commit_ms:.1f} ms.")
        st.plotly_chart(figures.tree_figure(rnd, decode), width="stretch")
        if run.run_id is not None:
            st.page_link("app_pages/2_tree_explorer.py", label=f"Open round {rnd.index} in the Tree explorer",
                         query_params={"run": run.run_id, "round": rnd.index}, icon="🔎")
        if len(rnd.tree.theta_curve):
            st.plotly_chart(figures.theta_figure(rnd.tree), width="stretch")

    st.subheader("Per-round stats")
    st.dataframe(pd.DataFrame([{
        "round": r.index, "L (context)": r.start, "tau": r.tau, "budget": r.budget, "draft ms": round(r.draft_ms, 1),
        "build ms": round(r.build_ms, 2), "verify ms": round(r.verify_ms, 1), "commit ms": round(r.commit_ms, 1),
        "committed": "".join(decode(t) for t in r.committed), "bonus": decode(r.bonus), "why this budget": r.budget_reason,
    } for r in run.rounds]), hide_index=True)
    if run.run_id is not None:
        st.caption(f"Logged as run #{run.run_id} in the trace store ({st.session_state.get('live_store')}).")
