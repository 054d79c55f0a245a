"""Runs: the trace store as a table; filter, compare two runs, diagnose the drafter on selected runs, export one as
JSON/CSV, delete one."""

import json

import streamlit as st

from dtree import diagnostics, figures, ui
from dtree.store import STATUSES

st.title("Runs")
st.caption("Every decode logged in the trace store (Live decode page, `python -m dtree decode`, `python -m dtree "
           "bench`). Times: tokens/s over the decode (prefill excluded); tau = tokens committed per round.")

if msg := st.session_state.pop("runs_flash", None):
    st.success(msg)
store, everything = ui.query_store_or_stop(lambda s: s.list_runs())
if everything.empty:
    st.info("This trace store is empty: run a decode first (Live decode page, or `python -m dtree decode`).")
    st.stop()

ALL = "(all)"
f = st.columns(4)
method = f[0].selectbox("Method", [ALL] + sorted(everything["method"].unique()))
target = f[1].selectbox("Target model", [ALL] + sorted(everything["target"].unique()))
status = f[2].selectbox("Status", [ALL, *STATUSES])
since = f[3].date_input("Created since (UTC)", value=None, help="Empty = any date")
try:
    runs = store.list_runs(method=None if method == ALL else method, target=None if target == ALL else target,
                           status=None if status == ALL else status, since=None if since is None else since.isoformat())
except Exception as e:
    ui.show_error(e)
    st.stop()
st.dataframe(runs[["id", "created", "status", "method", "target", "drafter", "dtype", "device", "n_rounds",
                   "n_new_tokens", "tokens_per_s", "mean_tau", "mean_budget", "prompt"]], hide_index=True,
             column_config={"created": st.column_config.DatetimeColumn("created (UTC)", format="YYYY-MM-DD HH:mm:ss"),
                            "n_new_tokens": "new tokens", "tokens_per_s": st.column_config.NumberColumn(
                                "tokens/s", format="%.2f"),
                            "mean_tau": st.column_config.NumberColumn("mean tau (tokens/round)", format="%.2f"),
                            "mean_budget": st.column_config.NumberColumn("mean budget (nodes)", format="%.1f")})
st.caption(f"{len(runs)} of {len(everything)} runs shown.")
if runs.empty:
    st.stop()
labels = {int(r["id"]): ui.run_label(r) for _, r in runs.iterrows()}
ids = list(labels)

st.subheader("Compare two runs")
c = st.columns(2)
a_id = c[0].selectbox("Run A", ids, index=0, format_func=labels.get)
b_id = c[1].selectbox("Run B", ids, index=min(1, len(ids) - 1), format_func=labels.get)
try:
    a, b = store.load_run(a_id), store.load_run(b_id)
except Exception as e:  # e.g. deleted in another tab
    ui.show_error(e)
    st.stop()
if a_id == b_id:
    st.caption("Pick two different runs to compare.")
st.dataframe(figures.compare_table(a, b), hide_index=True)
diff = figures.first_difference(a.output_ids, b.output_ids)
if diff is None:
    st.success(f"Outputs identical ({len(a.output_ids)} tokens).")
else:
    same_setting = (a.prompt_ids == b.prompt_ids and a.target == b.target and a.dtype == b.dtype
                    and float(a.params.get("temperature", 0)) == 0.0 == float(b.params.get("temperature", 0)))
    msg = (f"Outputs first differ at new token {diff} (lengths {len(a.output_ids)} and {len(b.output_ids)} tokens).")
    if same_setting:
        st.warning(msg + " Same prompt, target and dtype at temperature 0: they should be equal (in bfloat16, "
                         "kernels may break near-ties differently).")
    else:
        st.caption(msg + " The runs differ in prompt, target, dtype or temperature, so different outputs are expected.")
st.plotly_chart(figures.phase_shares_figure([a, b]), width="stretch")

st.subheader("Drafter diagnostics")
spec_ids = [i for i in ids if runs.loc[runs["id"] == i, "method"].iloc[0] != "ar"]
diag_key = ui.store_widget_key("diag_runs", store)
if diag_key in st.session_state:  # drop runs deleted or filtered out since
    st.session_state[diag_key] = [i for i in st.session_state[diag_key] if i in spec_ids]
picked = st.multiselect("Runs to diagnose (their rounds are pooled; AR runs have no drafter marginals)", spec_ids,
                        default=None if diag_key in st.session_state else spec_ids[:1], format_func=labels.get,
                        max_selections=50, key=diag_key)
if picked:
    try:
        diag = diagnostics.diagnose_store(store, picked)
    except Exception as e:  # deleted in another tab, no speculative round
        ui.show_error(e)
    else:
        c = st.columns(2)
        c[0].plotly_chart(figures.depth_agreement_figure(diag), width="stretch")
        c[1].plotly_chart(figures.calibration_figure(diag), width="stretch")
        st.caption("Left: a_d = how often the drafter's top-1 at depth d equals the target's token, among rounds whose "
                   "depths 1..d-1 were accepted; chain-equivalent tau = 1 + sum_d prod_{j<=d} a_j (equals the mean tau "
                   "of chain runs). Right: drafted nodes binned by path probability q; on the dashed diagonal the "
                   "surrogate q is calibrated. `python -m dtree diagnose` writes the same as JSON (for the shipped "
                   "drafter: its checkpoint's `diagnostics.json`, shown below when present).")
if (shipped := diagnostics.shipped_path()).exists():
    with st.expander("The shipped drafter's diagnostics (its checkpoint's diagnostics.json)"):
        try:
            ref = diagnostics.load(shipped)
        except Exception as e:  # unreadable file: say so, keep the page
            ui.show_error(e)
        else:
            st.caption(f"From `python -m dtree diagnose` on {ref.meta.get('dataset', '?')} "
                       f"({ref.meta.get('n_prompts', '?')} prompts, {ref.meta.get('method', '?')}).")
            c = st.columns(2)
            c[0].plotly_chart(figures.depth_agreement_figure(ref), width="stretch", key="diag_shipped_a")
            c[1].plotly_chart(figures.calibration_figure(ref), width="stretch", key="diag_shipped_c")

st.subheader("Export or delete a run")
c = st.columns(2)
ex_id = c[0].selectbox("Run to export", ids, format_func=labels.get)
c[0].download_button("Download run as JSON", lambda: json.dumps(store.export_run(ex_id), indent=1),
                     file_name=f"dtree-run-{ex_id}.json", mime="application/json", on_click="ignore")
c[0].download_button("Download its rounds as CSV", lambda: figures.rounds_table(store.load_run(ex_id)).to_csv(
    index=False), file_name=f"dtree-run-{ex_id}-rounds.csv", mime="text/csv", on_click="ignore")
del_id = c[1].selectbox("Run to delete", ids, format_func=labels.get)
sure = c[1].checkbox(f"Yes, delete run #{del_id} and its rounds (nothing else is touched)",
                     key=ui.store_widget_key(f"sure_{del_id}", store))  # never carried to another store's run
if c[1].button("Delete run", type="primary", disabled=not sure):
    try:
        store.delete_run(del_id)
        st.session_state["runs_flash"] = f"Deleted run #{del_id}."
        st.rerun()
    except Exception as e:
        ui.show_error(e)
