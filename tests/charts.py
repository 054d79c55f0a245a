"""Helpers for reading the plotly figures an AppTest page rendered."""

from __future__ import annotations

import json

from streamlit.testing.v1 import AppTest


def charts(at: AppTest) -> list[dict]:
    """Every plotly chart on the page as its JSON figure dict."""
    return [json.loads(c.proto.spec) for c in at.get("plotly_chart")]


def title(fig: dict) -> str:
    return fig["layout"]["title"]["text"]


def n_tree_markers(fig: dict) -> int:
    """Tree nodes drawn (root, accepted and rejected markers; the bonus token is not a tree node)."""
    return sum(len(t["x"]) for t in fig["data"] if t.get("mode", "").startswith("markers") and t.get("name") in
               ("root (anchor)", "accepted", "rejected"))
