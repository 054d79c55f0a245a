"""dtree: see and tune block-diffusion draft trees. Start with `./dev app`."""

import streamlit as st

st.set_page_config(page_title="dtree", page_icon="🌳", layout="wide")

pages = [
    st.Page("app_pages/1_live_decode.py", title="Live decode", icon="▶️", default=True),
    st.Page("app_pages/2_tree_explorer.py", title="Tree explorer", icon="🌲"),
    st.Page("app_pages/3_cost_model.py", title="Cost model", icon="⏱️"),
    st.Page("app_pages/4_budget_lab.py", title="Budget lab", icon="🧪"),
    st.Page("app_pages/5_speedup_arena.py", title="Speedup arena", icon="🏁"),
    st.Page("app_pages/6_runs.py", title="Runs", icon="🗂️"),
    st.Page("app_pages/7_learn.py", title="Learn", icon="🎓"),
]
st.navigation(pages).run()
