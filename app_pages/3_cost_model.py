"""Cost model: profile the verify cost of this machine (or load a file), see Cv(n; L) and Cd, move the cost weights and
watch a logged round's theta(n) curve and chosen budget follow."""

import streamlit as st

from dtree import figures, ui
from dtree.backend import cost_model_mismatch, profile_cost_model
from dtree.cost import FIT_GAP_WARN
from dtree.engine import auto_cv_curve
from dtree.models import dtype_advice, verify_widths_from_env
from dtree.replay import round_marginals
from dtree.trees import best_path_logprobs, theta_curve_for, uses_argmax_stop

st.title("Cost model")
st.caption("CaDDTree predicts a round's throughput theta(n) = (1 + Phi(n)) / (Cd + Cv(n; L)) tokens/s and keeps adding "
           "nodes while theta rises. Cd = drafter time per round, Cv(n; L) = one target forward verifying n nodes over "
           "L cached tokens. Profile them here, then tune the cost weights to model other hardware or load.")

with st.sidebar:
    dtype = st.selectbox("dtype", ["float32", "bfloat16"], key="dtype",
                         help="The target's dtype: a cost model is only valid for the dtype it was measured with. "
                              "Here: " + dtype_advice())

CONTEXTS = [32, 64, 128, 256, 512, 1024, 2048]
NODE_CAPS = [8, 16, 32, 64, 128, 256]
sources = ["This server's current model", "Profile now", "Load a file"]
source = st.radio("Cost model to use", sources, horizontal=True, key="cm_source")
try:
    backend = ui.get_backend("embedded", dtype)
except Exception as e:  # models unavailable: the page still shows files and stored models
    ui.show_error(e)
    backend = None

cost, label = None, ""
if source == sources[0] and backend is not None:
    cost = backend.current_cost_model()
    label = "this server's current model"
    if cost is None:
        st.info("No cost model has been profiled on this machine for this target and dtype yet: choose "
                "**Profile now** (or run caddtree on the Live decode page, which profiles on first use).")
elif source == sources[1] and backend is not None:
    with st.form("profile"):
        c = st.columns(3)
        contexts = c[0].multiselect("Context lengths L (tokens)", CONTEXTS, default=[64, 256], max_selections=5,
                                    key="cm_contexts", help="One curve per L; longer contexts take longer to profile")
        max_nodes = c[1].select_slider("Max nodes n", NODE_CAPS, value=64, key="cm_max_nodes",
                                       help="Node counts 0, 1, 2, 4, ... up to this")
        repeats = c[2].number_input("Repeats per point", 1, 9, 3, key="cm_repeats", help="Median over repeats")
        clicked = st.form_submit_button("Profile", type="primary")
    if clicked:
        if not contexts:
            st.error("Context lengths: pick at least one.")
        else:
            nodes = [0] + [2 ** i for i in range(max_nodes.bit_length()) if 2 ** i <= max_nodes]
            try:
                with ui.model_slot():  # one decode/profile at a time per server; later requests wait
                    bar = st.progress(0.0, text="measuring Cd and Cv(n; L)...")
                    st.session_state["cm_profiled"] = profile_cost_model(
                        backend.target, backend.drafter, contexts=sorted(contexts), nodes=nodes, repeats=int(repeats),
                        progress=lambda done, total: bar.progress(done / total, text=f"verify forwards: {done}/{total}"))
                    bar.empty()
            except Exception as e:
                ui.show_error(e)
    cost, label = st.session_state.get("cm_profiled"), "profiled on this page"
    if cost is None:
        st.info("Set the grid and press **Profile** (about a second per context on the embedded model).")
elif source == sources[2]:
    c = st.columns(2)
    upload = c[0].file_uploader("Cost-model file (JSON)", type=["json"], key="cm_upload")
    path = c[1].text_input("...or its path on the server", key="cm_path", max_chars=500).strip()
    try:
        if upload is not None:
            cost, label = ui.cost_model_from_bytes(upload.getvalue(), upload.name), upload.name
        elif path:
            from dtree.cost import CostModel

            cost, label = CostModel.load(path), path
    except Exception as e:  # corrupted, wrong format or version
        st.error(f"Cannot use this cost-model file — {e}")
        cost = None

if cost is not None:
    if cost.weights is not None:
        st.caption(f"The file carried cost weights {cost.weights.to_dict()}; the sliders below apply to its profile.")
        cost = cost.weighted(None)
    if backend is not None and (why := cost_model_mismatch(cost, backend.target, backend.drafter)):
        st.warning("This cost model may not describe the loaded models: " + "; ".join(why) + ". Proceeding anyway: "
                   "predictions will be off by that difference.")
    st.session_state["cost_model_page"] = (cost, label)  # the Budget lab offers it too

    st.subheader("Cost weights")
    with st.expander("Fit the scales to logged runs (live round timings of this machine)"):
        st.caption("A profile is a snapshot of this machine: a shared or throttled machine's speed drifts (the dev "
                   "VM's by 2.6x within two hours), so live runs often cost something else, and each round adds tree "
                   "build and KV compaction. This fit keeps the profile's curves and sets Cd scale = logged (draft + build + "
                   "commit) / Cd, and fits the logged verify time as Cv scale x the root-only Cv(0; L) + Cv scale x "
                   "tree-node factor x what the nodes add, Cv(n; L) - Cv(0; L) (one Cv scale, factor 1, when the runs "
                   "have a single tree size), over the chosen runs' rounds (`python -m dtree fit-cost` does the same). "
                   "Runs should come from this machine and dtype.")
        import pandas as pd
        from pathlib import Path

        fit_store, fit_runs = None, pd.DataFrame()
        fit_path = Path(ui.current_store_path()).expanduser()  # the sidebar's store (its box is drawn below)
        if fit_path.exists():
            try:
                fit_store = ui.get_store(str(fit_path))
                fit_runs = fit_store.list_runs(status="complete")
            except Exception as e:  # unreadable store: say so, keep the page
                ui.show_error(e)
        fit_runs = ui.speculative_rows(fit_runs)
        if not fit_runs.empty:
            want = cost.meta.get("dtype")
            if want:
                fit_runs = fit_runs[fit_runs["dtype"] == want]
        if fit_runs.empty:
            st.info(f"No complete chain / ddtree / caddtree run in {cost.meta.get('dtype') or 'any dtype'} in the "
                    "trace store yet: decode or bench some first.")
        else:
            fit_labels = {int(r["id"]): ui.run_label(r) for _, r in fit_runs.iterrows()}
            chosen = st.multiselect("Runs to fit on", list(fit_labels), default=list(fit_labels)[:20],
                                    format_func=fit_labels.get, key=ui.store_widget_key("cm_fit_runs", fit_store))

            def _fit(ids=tuple(chosen), store=fit_store, profile=cost):
                from dtree.replay import live_weights_from_runs

                try:
                    if not ids:
                        raise ValueError("choose at least one run")
                    fit = live_weights_from_runs([store.load_run(i) for i in ids], profile)
                except Exception as e:  # deleted meanwhile, no rounds, bad timings
                    st.session_state["cm_fit"] = e
                    return
                st.session_state["cm_fit"] = fit
                st.session_state["cm_analytic"] = False
                st.session_state["cm_cd_scale"] = min(5.0, max(0.1, round(fit.weights.cd_scale / 0.05) * 0.05))
                st.session_state["cm_cv_scale"] = min(5.0, max(0.1, round(fit.weights.cv_scale / 0.05) * 0.05))
                factor = fit.weights.tree_scale / fit.weights.cv_scale if fit.weights.cv_scale > 0 else 1.0
                st.session_state["cm_node_factor"] = min(5.0, max(0.1, round(factor / 0.05) * 0.05))

            st.button("Fit and set the scales", key="cm_fit_button", on_click=_fit)
            fit = st.session_state.get("cm_fit")
            if isinstance(fit, Exception):
                ui.show_error(fit)
            elif fit is not None:
                fw = fit.weights
                tree = ("" if fw.cv_tree_scale is None else
                        f" on the root-only forward and {fw.cv_tree_scale:.3f} on what the tree's nodes add "
                        f"(tree-node factor {fw.tree_scale / max(fw.cv_scale, 1e-12):.2f})")
                st.success(f"{fit.n_rounds} rounds: fixed cost per round {fit.live_cd_ms:.2f} ms live vs Cd "
                           f"{fit.model_cd_ms:.2f} ms profiled -> Cd scale {fw.cd_scale:.3f}; verify "
                           f"{fit.live_cv_ms:.2f} ms live vs {fit.model_cv_ms:.2f} ms profiled -> Cv scale "
                           f"{fw.cv_scale:.3f}{tree} (per-round ratio quartiles {fit.cv_ratio_p25:.2f} / "
                           f"{fit.cv_ratio_p50:.2f} / {fit.cv_ratio_p75:.2f}). The sliders below are set to them "
                           "(rounded to 0.05).")
    weights = ui.cost_weight_widgets(cost, "cm")
    weighted = cost.weighted(weights)
    m = st.columns(4)
    m[0].metric("Cd profiled (ms/round)", f"{cost.cd_s * 1e3:.2f}")
    m[1].metric("Cd used (ms/round)", f"{weighted.cd_s * 1e3:.2f}")
    m[2].metric("Cv(0; smallest L) used (ms)", f"{float(weighted.cv(0, int(cost.contexts[0]))) * 1e3:.2f}")
    m[3].metric("contexts x node counts", f"{len(cost.contexts)} x {len(cost.nodes)}")
    meta = cost.meta
    st.caption(f"Source: {label}. Measured for target {meta.get('target', '?')!r}, "
               f"drafter {meta.get('drafter', '?')!r}, dtype {meta.get('dtype', '?')}, on {meta.get('hardware', '?')}, "
               f"{meta.get('date', '?')}, {meta.get('repeats', '?')} repeats.")
    st.plotly_chart(figures.cost_curves_figure(cost, weighted), width="stretch")
    gap = cost.fit_gap()
    if gap["rel_gap"] > FIT_GAP_WARN:
        st.warning(f"The measured Cv(n; L) is not convex in n on this machine: the convex fit is "
                   f"{100 * gap['rel_gap']:.0f}% off at n = {gap['n']}, L = {gap['context']} "
                   f"({gap['fit_s'] * 1e3:.1f} ms fitted vs {gap['raw_s'] * 1e3:.1f} ms measured). No convex curve "
                   "fits such a profile, and CaDDTree's greedy stop under the fit misprices small trees (on CPUs the "
                   "first extra nodes cost more than the fit says). The measured-curve variants (caddtree-rawcv, "
                   "the 'measured Cv' box in Live decode) use the measured medians instead; compare both in the "
                   "Speedup arena.", icon="⚠️")
    with st.expander("Table of measured and fitted costs"):
        st.dataframe(figures.cost_table(cost, weighted), hide_index=True)

    c = st.columns([3, 1])
    save_path = c[0].text_input("Save the weighted model as (path on the server)", "runs/cost-model.json",
                                key="cm_save_path", max_chars=500).strip()
    use = c[1].checkbox("and use it for caddtree on this server", key="cm_use",
                        help="Live decode and the Budget lab's live check then use this model")
    if st.button("Save as", key="cm_save"):
        try:
            saved = weighted.save(save_path)
            if use and backend is not None:
                backend.cost_model(path=saved)
            st.success(f"Saved to {saved}" + (" and set as this server's cost model." if use else "."))
        except Exception as e:
            ui.show_error(e)
else:
    weighted = None

if backend is not None:
    from dtree.kernels import installed_table

    if getattr(backend.drafter, "dtype_note", None):
        st.caption(f"Drafter dtype: {backend.drafter.dtype_note}. It sets Cd, so cost profiles are kept per drafter "
                   "dtype; DTREE_DRAFTER_DTYPE (or the CLI's --drafter-dtype) fixes it.")
    with st.expander("Matmul kernels of this machine (few-row products of decode and verify steps)"):
        table = installed_table(backend.target.model)
        if table is None:
            st.caption(f"Off for this target ({backend.target.linear_kernels}): dtree tunes them on CPU "
                       "unless DTREE_LINEAR_KERNELS=off. Every linear layer runs F.linear.")
        else:
            st.caption("A decode step multiplies every weight by 1 row (AR) or n + 1 rows (a tree verify). The first "
                       "load on this machine timed whole verify forwards with each of these algebraically equal "
                       "kernels and installed the fastest per width (in the target and the drafter). Verifies are "
                       f"padded to the widths {', '.join(map(str, backend.target.verify_widths)) or 'none'} (tokens)"
                       + (": the cheapest measured width at or above their size" if not
                          verify_widths_from_env() else " (set by DTREE_VERIFY_WIDTHS)")
                       + f". Cost profiles are kept per kernel table ({backend.target.linear_kernels}): a new "
                       "table means a new profile.")
            try:
                st.plotly_chart(figures.kernels_figure(table), width="stretch")
            except ValueError as e:
                st.caption(str(e))

st.subheader("A logged round under these weights")
store, runs, labels = ui.pick_speculative_runs(
    "The trace store has no chain, ddtree or caddtree run yet: run one on the Live decode page.")
run_id = st.selectbox("Run", list(labels), format_func=labels.get, key="cm_run")
row = runs[runs["id"] == run_id].iloc[0]
n_rounds = int(row["n_rounds"])
idx = st.slider("Round", 0, n_rounds - 1, 0, key="cm_round") if n_rounds > 1 else 0
if weighted is None:  # no model chosen above: the run's own
    base = ui.stored_cost_model(row["cost_model"])
    if base is None:
        st.info("Choose a cost model above: this run stored none.")
        st.stop()
    weighted = base.weighted(ui.cost_weight_widgets(base, "cm"))
    st.caption("Using the cost model stored with this run (no model chosen above).")
curve_why = auto_cv_curve(weighted)  # the curve plain caddtree would read for these weights (as the Budget lab does)
if curve_why is not None:
    weighted = weighted.with_curve("measured")
try:
    rnd = store.load_round(run_id, idx)
    marg = round_marginals(rnd)
    curve = theta_curve_for(best_path_logprobs(marg, marg.width), weighted, rnd.start)
except Exception as e:  # deleted in another tab, unreadable
    ui.show_error(e)
    st.stop()
best, stop = figures.theta_choices(curve)
if uses_argmax_stop(weighted):  # a measured (non-convex) Cv: CaDDTree keeps the best prefix, not the first drop
    stop, rule = best, "argmax stop (measured Cv)"
else:
    rule = "greedy stop"
m = st.columns(4)
m[0].metric(f"chosen budget: {rule} (nodes)", stop)
m[1].metric("theta at the stop (tokens/s)", f"{curve[stop]:.2f}")
m[2].metric("argmax of theta (nodes)", best)
m[3].metric("logged budget (nodes)", rnd.budget)
st.plotly_chart(figures.theta_weights_figure(curve, rnd.budget), width="stretch")
st.caption(f"Round {rnd.index} at context L = {rnd.start} tokens. Phi(n) sums the n best path probabilities from the "
           f"drafter's logged top-{marg.width} marginals, so the curve stops at n = {marg.width} (ranks beyond the "
           "logged top-k are unknown)."
           + (f" The chosen budget is plain caddtree's under these weights: it reads the {curve_why}."
              if curve_why else ""))
