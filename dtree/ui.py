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
    """The trace store at ``path`` (default: the sidebar's choice, else ``$DTREE_STORE`` or runs/dtree.sqlite); None
    with an st.error if unusable (corrupted or foreign file)."""
    from .store import TraceStore

    try:
        return TraceStore(Path(path or st.session_state.get(STORE_KEY) or DEFAULT_STORE).expanduser())
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


STORE_KEY = "dtree_store_path"


def store_picker():
    """Sidebar text input for the trace-store path, shared by the pages; returns an open TraceStore or None.

    None comes with a message: ``st.info`` when no store file exists there yet (nothing is created), ``st.error`` when
    the file is not a usable dtree store (corrupted, another application's SQLite file, a directory...).
    """
    current = st.session_state.get(STORE_KEY, DEFAULT_STORE)
    path = st.sidebar.text_input("Trace store (SQLite file)", current,
                                 help="The file the Live decode page and `python -m dtree decode` log to; default "
                                      f"{DEFAULT_STORE} (env DTREE_STORE)").strip()
    st.session_state[STORE_KEY] = path or DEFAULT_STORE
    p = Path(path or DEFAULT_STORE).expanduser()
    if not p.exists():
        st.info(f"No trace store at `{p}` yet: run a decode first (Live decode page, or `python -m dtree decode`), "
                "or give the path of an existing store in the sidebar.")
        return None
    return get_store(str(p))


@st.cache_resource(show_spinner="Loading the tokenizer...")
def _tokenizer(target: str):
    from transformers import AutoTokenizer

    from .models import resolve_target

    return AutoTokenizer.from_pretrained(resolve_target(target))


def token_decoder(target: str):
    """token id -> text for a logged run's target (tokenizer only, cached per server); ``<id N>`` if unavailable."""
    try:
        return decode_token_fn(_tokenizer(target))
    except Exception as e:  # a run of a model that is not on this machine: still browsable
        st.caption(f"Tokenizer of {target!r} not available here ({type(e).__name__}); tokens shown as ids.")
        return lambda tok: f"<id {int(tok)}>"


def run_label(row) -> str:
    """One line naming a run for select boxes: ``#id · method · date · prompt start`` (row of TraceStore.list_runs)."""
    prompt = " ".join(str(row["prompt"]).split())
    prompt = prompt[:40] + ("…" if len(prompt) > 40 else "")
    return f"#{row['id']} · {row['method']} · {row['created']:%Y-%m-%d %H:%M} · {prompt}"


def int_query_param(name: str) -> int | None:
    """``?name=N`` from the page URL as an int; None when absent or not an integer (a bad link is ignored)."""
    value = st.query_params.get(name)
    try:
        return int(value) if value is not None else None
    except ValueError:
        return None
