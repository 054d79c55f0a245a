"""Streamlit glue shared by the pages: cached backend and store, a decode lock, error display.

Pages stay thin: widgets and figures only; everything else is a call into the package.
"""

from __future__ import annotations

import os
import threading
from pathlib import Path

import streamlit as st

from .errors import InputError

DEFAULT_STORE = os.environ.get("DTREE_STORE", "runs/dtree.sqlite")


@st.cache_resource(show_spinner="Loading the target and the drafter (once per server)...")
def get_backend(target: str = "embedded", dtype: str | None = None):
    """One :class:`dtree.backend.Backend` per (target, dtype) per server process."""
    from .backend import Backend

    return Backend(target, dtype)


@st.cache_resource
def decode_lock() -> threading.Lock:
    """One decode at a time per server: model forwards are not re-entrant on the shared caches and 2 CPU cores."""
    return threading.Lock()


def get_store(path: str | None = None):
    """The trace store at ``path`` (default ``$DTREE_STORE`` or runs/dtree.sqlite); None with an st.error if unusable."""
    from .store import TraceStore

    try:
        return TraceStore(Path(path or DEFAULT_STORE))
    except InputError as e:
        st.error(f"Trace store unusable: {e}")
        return None


def show_error(e: Exception) -> None:
    """Show a user error (InputError) or an unexpected one without stopping the app."""
    if isinstance(e, InputError):
        st.error(f"Invalid input — {e}")
    else:
        st.error(f"{type(e).__name__}: {e}")


def decode_token_fn(tokenizer):
    """token id -> display text (special tokens kept visible)."""
    cache: dict[int, str] = {}

    def decode(tok: int) -> str:
        if tok not in cache:
            cache[tok] = tokenizer.decode([int(tok)], skip_special_tokens=False)
        return cache[tok]

    return decode
