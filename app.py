"""dtree: see and tune block-diffusion draft trees. Start with `./dev app`."""

import streamlit as st

st.set_page_config(page_title="dtree", page_icon="🌳", layout="wide")

pages = [
    st.Page("pages/1_live_decode.py", title="Live decode", icon="▶️", default=True),
    st.Page("pages/2_tree_explorer.py", title="Tree explorer", icon="🌲"),
    st.Page("pages/6_runs.py", title="Runs", icon="🗂️"),
]
st.navigation(pages).run()
