"""Budget lab: replay logged rounds at every DDTree budget and under CaDDTree's cost-aware rule, move the cost weights,
then check the prediction with a live run on the same prompts."""

import numpy as np
import streamlit as st

from dtree import figures, ui
from dtree.engine import DecodeConfig
from dtree.replay import oracle_budget, replay_run, sweep_budgets

st.title("Budget lab")
st.caption("Replays the drafter marginals logged in past runs: each round's tree is rebuilt at another budget and its "
           "acceptance read off the committed tokens (exact at temperature 0); the cost model turns rounds into "
           "predicted tokens/s. Then run the best configurations live to see how close the prediction is.")

store, runs, labels = ui.pick_speculative_runs(
    "The trace store has no chain, ddtree or caddtree run to replay yet: run one on the Live decode page.")
sel = st.multiselect("Logged runs to replay (their rounds are pooled)", list(labels), default=list(labels)[:1],
                     format_func=labels.get, max_selections=50, key=ui.store_widget_key("bl_runs", store))
if not sel:
    st.info("Pick at least one run.")
    st.stop()
try:
    logged = [store.load_run(i) for i in sel]
except Exception as e:  # deleted in another tab, unreadable
    ui.show_error(e)
    st.stop()

models = {}
if "cost_model_page" in st.session_state:
    cm, cm_label = st.session_state["cost_model_page"]
    models[f"from the Cost model page ({cm_label})"] = cm
for r in logged:
    if (cm := ui.stored_cost_model(r.cost_model)) is not None:
        models[f"stored with run #{r.run_id} ({r.dtype}, {cm.meta.get('hardware', '?')})"] = cm
if not models:
    st.info("None of these runs stored a cost model: profile one on the Cost model page, or pick a caddtree run.")
    st.stop()
base = models[st.selectbox("Cost model (profile)", list(models), key="bl_cost")]
weights = ui.cost_weight_widgets(base, "bl")
cost = base.weighted(weights)

c = st.columns(3)
max_b = c[0].number_input("Largest DDTree budget swept (nodes)", 1, 1024, 256, key="bl_max_b",
                          help="Budgets above the logged top-k are dropped (ranks beyond k are unknown)")
cad_max = c[1].number_input("CaDDTree maximum budget (nodes)", 1, 1024, 256, key="bl_cad_max")
overhead = c[2].checkbox("Add logged build + commit time", True, key="bl_overhead",
                         help="The paper's theta counts draft + verify only; the measured tokens/s include both")
try:
    df = sweep_budgets(logged, range(1, int(max_b) + 1), cost=cost, caddtree_max_budget=int(cad_max),
                       overhead=overhead)
    oracle = oracle_budget(df)
except Exception as e:
    ui.show_error(e)
    st.stop()
b_star = int(oracle["budget"])
cad = df[df["method"] == "caddtree"].iloc[0]
chain = df[df["method"] == "chain"].iloc[0]
m = st.columns(5)
m[0].metric("oracle fixed budget B* (nodes)", b_star)
m[1].metric("ddtree at B*: predicted tokens/s", f"{oracle['pred_tok_s']:.2f}")
m[2].metric("caddtree: predicted tokens/s", f"{cad['pred_tok_s']:.2f}",
            f"{100 * (cad['pred_tok_s'] / oracle['pred_tok_s'] - 1):+.1f}% vs B*")
m[3].metric("caddtree mean budget (nodes)", f"{cad['mean_budget']:.1f}")
m[4].metric("chain: predicted tokens/s", f"{chain['pred_tok_s']:.2f}")
left, right = st.columns(2)
left.plotly_chart(figures.sweep_figure(df, "mean_tau", b_star), width="stretch")
right.plotly_chart(figures.sweep_figure(df, "pred_tok_s", b_star), width="stretch")
left.plotly_chart(figures.budget_histogram_figure(df.attrs["caddtree_budgets"], b_star), width="stretch")
right.dataframe(figures.sweep_table(df), hide_index=True, height=360)
notes = [f"Replayed {df.attrs['n_rounds']} rounds of {len(logged)} run(s). Limits: **position bias** — every "
         "replayed round starts where the logged run's round started, so a whole counterfactual run is approximated "
         "(exact per round, not across rounds); **budgets are capped at the logged top-k** "
         f"({df.attrs['budget_cap']} here: log with a larger top-k to study larger budgets)."]
if not weights.is_identity:
    notes.append("The cost weights model other hardware or load: predictions are for that machine, not this one.")
st.info(" ".join(notes + df.attrs["notes"]))

st.subheader("Check live")
c = st.columns(2)
n_prompts = c[0].slider("Prompts (from the selected runs)", 1, len(logged), len(logged), key="bl_n_prompts") \
    if len(logged) > 1 else 1
max_new = c[1].number_input("Max new tokens per prompt", 1, 512, int(min(64, max(r.n_new_tokens for r in logged))),
                            key="bl_max_new")
st.caption(f"Runs ddtree at the oracle budget B* = {b_star} and caddtree (max {int(cad_max)}) with the current cost "
           "weights on the same prompts, logs them in the trace store, and sets the measured tokens/s beside the "
           "replay's prediction for those prompts.")
if st.button("Check live", type="primary", key="bl_check_live"):
    subset = logged[:n_prompts]
    try:
        backend = ui.get_backend("embedded", subset[0].dtype)
        if any(r.target != backend.target.name for r in subset):
            raise ValueError(f"these runs were logged with target {subset[0].target!r}; this server runs "
                             f"{backend.target.name!r}")
        configs = [(f"ddtree B*={b_star} (oracle)", DecodeConfig("ddtree", b_star, int(max_new)), None),
                   (f"caddtree max {int(cad_max)} (these weights)",
                    DecodeConfig("caddtree", int(cad_max), int(max_new)), cost)]
        with ui.model_slot():  # one decode/profile at a time per server; later requests wait
            bar = st.progress(0.0, text="decoding live...")
            checks, total, done = [], len(configs) * len(subset) * int(max_new), 0
            for label, cfg, cfg_cost in configs:
                live = []
                for r in subset:
                    cfg.topk_log = int(r.params.get("topk_log", cfg.topk_log))
                    live.append(backend.decode_ids(
                        r.prompt_ids, cfg, store=store, cost=cfg_cost or cost, prompt_text=r.prompt,
                        on_round=lambda rnd, n, lab=label, d0=done: bar.progress(
                            min(1.0, (d0 + n) / total), text=f"{lab}: {n} tokens")))
                    done += int(max_new)
                predicted = replay_run(subset, cfg.method, cfg.budget, cost=cost, overhead=overhead)
                checks.append((label, predicted, live))
            bar.empty()
        st.session_state["bl_check"] = (figures.prediction_check_table(checks), sorted(sel[:n_prompts]))
    except Exception as e:
        ui.show_error(e)
if "bl_check" in st.session_state:
    table, prompts_of = st.session_state["bl_check"]
    st.plotly_chart(figures.prediction_check_figure(table), width="stretch")
    st.dataframe(table, hide_index=True)
    worst = float(np.nanmax(np.abs(table["difference (%)"]))) if len(table) else float("nan")
    st.caption(f"Prompts of runs {', '.join(f'#{i}' for i in prompts_of)}. Largest gap {worst:.0f}%: differences "
               "come from position bias, timing noise on a shared machine, and costs the model leaves out.")
