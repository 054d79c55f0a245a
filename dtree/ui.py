"""Streamlit glue shared by the pages: cached backend and store, a decode lock, error display.

Pages stay thin: widgets and figures only; everything else is a call into the package.
"""

from __future__ import annotations

import contextlib
import threading
from pathlib import Path

import streamlit as st

from .errors import InputError
from .records import parse_method
from .store import default_store_path

DEFAULT_STORE = default_store_path()  # read once at server start: $DTREE_STORE, else runs/dtree.sqlite


@st.cache_resource(show_spinner="Loading the target and the drafter (once per server; the first time on a machine "
                                "it also times this CPU's matmul kernels, about 35 s)...")
def get_backend(target: str = "embedded", dtype: str | None = None):
    """One :class:`dtree.backend.Backend` per (target, dtype) per server process."""
    from .backend import Backend

    return Backend(target, dtype)


@st.cache_resource
def decode_lock() -> threading.Lock:
    """One decode at a time per server: model forwards are not re-entrant on the shared caches and 2 CPU cores."""
    return threading.Lock()


@contextlib.contextmanager
def model_slot():
    """Hold the server's model for one decode or profile; a second request waits (with a spinner) until it is free."""
    lock = decode_lock()
    if not lock.acquire(blocking=False):
        with st.spinner("Another decode or profile is running on this server; queued until it finishes..."):
            lock.acquire()
    try:
        yield
    finally:
        lock.release()


def get_store(path: str | None = None):
    """The trace store at ``path`` (default: the sidebar's choice, else ``$DTREE_STORE`` or runs/dtree.sqlite); None
    with an st.error if unusable (corrupted or foreign file)."""
    from .store import TraceStore

    try:
        return TraceStore(Path(path or current_store_path()).expanduser())
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


STORE_KEY = "dtree_store_path"  # the chosen store's path: the one source of truth, shared by every page
_STORE_BOX = "dtree_store_box"  # the sidebar text box's widget key (its value is copied to STORE_KEY on Enter)


def current_store_path() -> str:
    """The trace store the pages read and log to: the sidebar's choice, else ``$DTREE_STORE`` or runs/dtree.sqlite."""
    return st.session_state.get(STORE_KEY) or DEFAULT_STORE


def _store_box_changed() -> None:
    path = st.session_state[_STORE_BOX].strip() or DEFAULT_STORE  # an emptied box means the default store
    st.session_state[STORE_KEY] = path
    st.session_state[_STORE_BOX] = path


def store_box() -> str:
    """The sidebar text box of the trace-store path (same on every page); returns the current store path.

    The box is drawn from :data:`STORE_KEY` on every run and writes it back on Enter (``on_change``), so each Enter
    switches the store and the choice survives page changes.
    """
    st.session_state[_STORE_BOX] = current_store_path()
    st.sidebar.text_input("Trace store (SQLite file)", key=_STORE_BOX, on_change=_store_box_changed,
                          help="The file the Live decode page and `python -m dtree decode` log to; default "
                               f"{DEFAULT_STORE} (env DTREE_STORE)")
    return current_store_path()


def store_picker():
    """Sidebar text input for the trace-store path, shared by the pages; returns an open TraceStore or None.

    None comes with a message: ``st.info`` when no store file exists there yet (nothing is created), ``st.error`` when
    the file is not a usable dtree store (corrupted, another application's SQLite file, a directory...).
    """
    p = Path(store_box()).expanduser()
    if not p.exists():
        st.info(f"No trace store at `{p}` yet: run a decode first (Live decode page, or `python -m dtree decode`), "
                "or give the path of an existing store in the sidebar.")
        return None
    return get_store(str(p))


def store_widget_key(name: str, store) -> str:
    """Key of a widget whose options are ``store``'s runs: one widget per store, so after a store switch it starts
    afresh and its state can never hold another store's run ids (or show their labels)."""
    return f"{name}@{store.path}"


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
    """``?name=N`` from the page URL as an int; None when absent, or not an integer (then with an st.warning naming
    the link's value: the page falls back to its default)."""
    value = st.query_params.get(name)
    try:
        return int(value) if value is not None else None
    except ValueError:
        st.warning(f"The link's {name} {value!r} is not a {name} number; ignored.")
        return None


# ------------------------------------------------------------------------------------------- cost model and budget lab

def is_speculative(method) -> bool:
    """True for chain / ddtree / caddtree and every variant name (any combination of modifiers, e.g.
    ``caddtree-adapt-spine-rawcv``); False for ar and unknown names."""
    try:
        return parse_method(str(method)).base != "ar"
    except InputError:
        return False


def query_store_or_stop(query):
    """The sidebar's trace store and ``query(store)`` (e.g. ``lambda s: s.list_runs()``); stops the page with the
    store picker's st.info when there is no store, or with st.error when the store cannot be read (corrupted)."""
    store = store_picker()
    if store is None:
        st.stop()
    try:
        return store, query(store)
    except Exception as e:  # corrupted store: message, app keeps running
        show_error(e)
        st.stop()


def speculative_rows(runs):
    """The rows of a ``TraceStore.list_runs`` frame whose runs logged drafter marginals (chain / ddtree / caddtree and
    variants, with rounds), re-indexed from 0."""
    if runs.empty:
        return runs
    return runs[runs["method"].map(is_speculative) & (runs["n_rounds"] > 0)].reset_index(drop=True)


def pick_speculative_runs(empty_hint: str):
    """Sidebar store + its runs that carry drafter marginals (chain / ddtree / caddtree with rounds, newest first)
    and their labels for a selectbox; stops the page when the store is missing, unreadable or has no such run
    (``empty_hint`` says what to do then).

    Returns ``(store, runs DataFrame, {run id: label})``.
    """
    store, runs = query_store_or_stop(lambda s: s.list_runs())
    runs = speculative_rows(runs)
    if runs.empty:
        st.info(empty_hint)
        st.stop()
    return store, runs, {int(r["id"]): run_label(r) for _, r in runs.iterrows()}


def cost_model_from_bytes(data: bytes, name: str = "uploaded file"):
    """A :class:`dtree.cost.CostModel` from the bytes of a cost-model JSON file (as written by ``CostModel.save``).

    Raises:
        InputError: not JSON, wrong format or version, invalid contents (the message names the file).
    """
    import json

    from .cost import CostModel

    try:
        d = json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise InputError("cost_model", f"{name} is not a cost-model JSON file ({e})") from None
    return CostModel.from_dict(d)


def stored_cost_model(cost_dict):
    """The PROFILE of a run's stored cost model (``RunRecord.cost_model``, weights dropped); None if absent or
    unreadable."""
    from .cost import CostModel

    if not cost_dict:
        return None
    try:
        return CostModel.from_dict(cost_dict).weighted(None)
    except (InputError, TypeError, ValueError):
        return None


def cost_weight_widgets(cost, key: str, analytic_override: bool = True, disabled: bool = False):
    """Bounded widgets for :class:`dtree.cost.CostWeights` (Cd and Cv scales, a tree-node factor on what the nodes
    add to the verify cost, the optional analytic Cv override a + b n + c n^2 in ms); returns the weights. ``key`` prefixes the widget keys (one set per page).

    The analytic override's defaults approximate ``cost``'s fitted curve at its smallest context (a = Cv(0), b = mean
    slope up to the largest profiled n, c = 0). ``analytic_override=False`` leaves that option out (then ``cost`` may
    be None, e.g. before the first profile); ``disabled`` greys the widgets out.
    """
    from .cost import CostWeights

    c = st.columns(3)
    cd_scale = c[0].slider("Cd scale (drafter cost multiplier)", 0.1, 5.0, 1.0, 0.05, key=f"{key}_cd_scale",
                           disabled=disabled, help="Cd' = scale x the profiled drafter cost per round")
    cv_scale = c[1].slider("Cv scale (verify cost multiplier)", 0.1, 5.0, 1.0, 0.05, key=f"{key}_cv_scale",
                           disabled=disabled, help="Cv'(n; L) = scale x the verify cost (profiled or analytic)")
    node_factor = c[2].slider("Tree-node factor (extra on what the nodes add)", 0.1, 5.0, 1.0, 0.05,
                              key=f"{key}_node_factor", disabled=disabled,
                              help="Multiplies what the tree adds to a root-only verify, Cv(n; L) - Cv(0; L), on top "
                                   "of the Cv scale (cv_tree_scale = Cv scale x factor). Live loops pay more per node "
                                   "than a profile of bare forwards: 'Fit and set the scales' measures it")
    tree = None if node_factor == 1.0 else cv_scale * node_factor
    analytic = analytic_override and st.checkbox(
        "Analytic verify cost instead of the profile: Cv(n) = a + b n + c n² (ignores L)", key=f"{key}_analytic",
        disabled=disabled)
    if not analytic:
        return CostWeights(cd_scale=cd_scale, cv_scale=cv_scale, cv_tree_scale=tree)
    L0 = int(cost.contexts[0])
    n_hi = max(1, int(cost.nodes[-1]))
    a0 = float(cost.cv(0, L0)) * 1e3
    b0 = max(0.0, (float(cost.cv(n_hi, L0)) * 1e3 - a0) / n_hi)
    c = st.columns(3)
    a = c[0].number_input("a (ms)", 0.0, 10_000.0, round(a0, 3), 0.1, format="%.3f", key=f"{key}_cv_a",
                          help="Fixed verify cost per round (one target forward with only the root)")
    b = c[1].number_input("b (ms/node)", 0.0, 1_000.0, round(b0, 4), 0.01, format="%.4f", key=f"{key}_cv_b",
                          help="Marginal verify cost of each node")
    cc = c[2].number_input("c (ms/node²)", 0.0, 100.0, 0.0, 0.0001, format="%.5f", key=f"{key}_cv_c",
                           help="Curvature: attention over the tree grows with n²")
    return CostWeights(cd_scale=cd_scale, cv_scale=cv_scale, cv_a=a / 1e3, cv_b=b / 1e3, cv_c=cc / 1e3,
                       cv_tree_scale=tree)
