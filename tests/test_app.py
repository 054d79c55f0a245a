"""Streamlit AppTest of the pages on the real embedded model (tiny settings)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from streamlit.testing.v1 import AppTest

from dtree.drafter import DrafterConfig, default_drafter_path
from dtree.records import RunRecord

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture()
def store_env(tmp_path, monkeypatch):
    path = tmp_path / "app.sqlite"
    monkeypatch.setenv("DTREE_STORE", str(path))
    import dtree.ui

    monkeypatch.setattr(dtree.ui, "DEFAULT_STORE", str(path))
    return path


def _store_box(at: AppTest):
    """The sidebar's trace-store text box."""
    return next(t for t in at.sidebar.text_input if t.label == "Trace store (SQLite file)")


def _live(at_timeout: int = 240) -> AppTest:
    # through app.py (its default page is Live decode), so the navigation and page links resolve
    at = AppTest.from_file(str(ROOT / "app.py"), default_timeout=at_timeout)
    return at.run()


def test_app_navigation_loads():
    at = AppTest.from_file(str(ROOT / "app.py"), default_timeout=120).run()
    assert not at.exception
    assert any("Live decode" in t.value for t in at.title)


def test_no_legacy_pages_folder_beside_the_entrypoint():
    """A ``pages/`` folder next to app.py switches on Streamlit's legacy page discovery, which can list raw file
    names (``app``, ``1 live decode``) in the sidebar until ``st.navigation`` first runs; every page st.Page names
    lives in ``app_pages/``."""
    assert not (ROOT / "pages").exists()
    entry = (ROOT / "app.py").read_text()
    named = set(re.findall(r'st\.Page\("([^"]+)"', entry))
    assert named == {f"app_pages/{p.name}" for p in (ROOT / "app_pages").glob("*.py")}


def test_live_decode_runs_and_draws_tree(store_env):
    at = _live()
    assert not at.exception
    at.text_area(key="prompt").input("What is 6 times 7?")
    at.selectbox(key="method").select("ddtree").run()  # ddtree's budget box replaces caddtree's cap
    at.number_input(key="budget").set_value(4)
    at.number_input(key="max_new").set_value(12)
    at.button[0].click().run()
    assert not at.exception, at.exception
    assert not at.error, [e.value for e in at.error]
    charts = at.get("plotly_chart")
    assert len(charts) >= 2  # rounds strip + tree
    df = at.dataframe[0].value
    assert len(df) >= 1 and (df["tau"] >= 1).all() and (df["budget"] <= 4).all()
    assert store_env.exists()


def test_live_decode_bad_input_shows_error_and_stores_nothing(store_env):
    at = _live()
    at.text_area(key="prompt").input("   ")
    at.button[0].click().run()
    assert not at.exception
    assert at.error and "prompt" in at.error[0].value
    assert not at.get("plotly_chart")


def test_live_decode_on_a_damaged_store_fails_before_decoding_and_changes_nothing(tmp_path, monkeypatch):
    """Only the rounds table is damaged (runs still insert): the page probes the store (a run, a round and a node
    insert, rolled back) before decoding, so the file gets the damaged-store message and stays byte for byte as it was
    (before, a 'failed' run row was written into it at the first round)."""
    import dtree.ui
    from dtree.store import TraceStore

    from .conftest import damage_table_root

    damaged_store = tmp_path / "rounds-damaged.sqlite"
    with TraceStore(damaged_store) as store:
        for i in range(20):
            store.save_run(RunRecord(method="ar", params={"i": i}, target="t", drafter=None, dtype="float32",
                                     device="cpu", prompt="p" * 500, prompt_ids=list(range(100)),
                                     rounds=[]))
    damage_table_root(damaged_store, "rounds")
    monkeypatch.setenv("DTREE_STORE", str(damaged_store))
    monkeypatch.setattr(dtree.ui, "DEFAULT_STORE", str(damaged_store))
    before = damaged_store.read_bytes()
    at = _live()
    at.text_area(key="prompt").input("What is 6 times 7?")
    at.selectbox(key="method").select("ddtree").run()
    at.number_input(key="budget").set_value(2)
    at.number_input(key="max_new").set_value(4)
    at.button[0].click().run()
    assert not at.exception, at.exception
    assert any("damaged" in e.value for e in at.error), [e.value for e in at.error]
    assert not at.get("plotly_chart")
    with TraceStore(damaged_store) as store:  # the runs table is readable: still the 20 runs, no failed one added
        assert len(store.list_runs()) == 20
    assert damaged_store.read_bytes() == before


def test_live_decode_variant_spine(store_env, tiny_cost):
    """caddtree with the spine guarantee (tiny cost model, 8 tokens): the run is stored as caddtree-spine."""
    from dtree.store import TraceStore

    at = _live()
    at.selectbox(key="method").select("ar").run()
    assert at.checkbox(key="spine").disabled and at.selectbox(key="probs").disabled  # tree methods only
    assert at.number_input(key="budget").disabled
    at.selectbox(key="method").select("caddtree").run()
    assert not at.checkbox(key="spine").disabled and not at.selectbox(key="probs").disabled
    at.text_area(key="prompt").input("What is 6 times 7?")
    at.checkbox(key="spine").check()
    assert at.number_input(key="budget_caddtree").value == 256  # caddtree's cap defaults to the engine's
    at.number_input(key="budget_caddtree").set_value(8)
    at.number_input(key="max_new").set_value(8)
    at.button[0].click().run()
    assert not at.exception, at.exception
    assert not at.error, [e.value for e in at.error]
    assert len(at.get("plotly_chart")) >= 2  # rounds strip + tree
    df = at.dataframe[0].value
    assert len(df) >= 1 and (df["budget"] <= 8).all()
    assert df["why this budget"].str.startswith("spine first").all()
    with TraceStore(store_env) as s:
        runs = s.list_runs()
    assert runs["method"].tolist() == ["caddtree-spine"] and runs["status"].tolist() == ["complete"]


def _run_ddtree4(probs: str):
    """Live decode of "What is 6 times 7?" with ddtree B=4, 8 tokens and the given path probabilities; checks that
    it ran without exception or error and returns the AppTest."""
    at = _live()
    at.selectbox(key="method").select("ddtree").run()
    at.text_area(key="prompt").input("What is 6 times 7?")
    at.selectbox(key="probs").select(probs)
    at.number_input(key="budget").set_value(4)
    at.number_input(key="max_new").set_value(8)
    at.button[0].click().run()
    assert not at.exception, at.exception
    assert not at.error, [e.value for e in at.error]
    return at


def test_live_decode_calibrated_fits_once(store_env, fake_calibration):
    """ddtree with calibrated probabilities: the first run fits the calibration (stand-in fit, with progress), the
    second reuses it; both are stored as ddtree-cal."""
    from dtree.store import TraceStore

    at = _run_ddtree4(probs="cal")
    assert fake_calibration == [(1, 2), (2, 2)]
    assert at.dataframe[0].value["why this budget"].str.startswith("calibrated").all()
    at.button[0].click().run()
    assert not at.exception, at.exception
    assert fake_calibration == [(1, 2), (2, 2)]  # not fitted again
    with TraceStore(store_env) as s:
        runs = s.list_runs()
        assert runs["method"].tolist() == ["ddtree-cal", "ddtree-cal"]
        assert "calibration" in s.load_run(int(runs["id"].iloc[0])).params


def _live_caddtree_option(key: str) -> AppTest:
    """Live decode: the caddtree-only checkbox ``key`` is off for ddtree and on for caddtree; decode 6 tokens with it
    checked (no exception, no error shown) and return the page."""
    at = _live()
    at.selectbox(key="method").select("ddtree").run()
    assert at.checkbox(key=key).disabled
    at.selectbox(key="method").select("caddtree").run()
    assert not at.checkbox(key=key).disabled
    at.text_area(key="prompt").input("What is 6 times 7?")
    at.checkbox(key=key).check()
    at.number_input(key="max_new").set_value(6)
    at.button[0].click().run()
    assert not at.exception, at.exception
    assert not at.error, [e.value for e in at.error]
    return at


def test_live_decode_measured_cv(store_env, tiny_cost):
    """caddtree with "measured Cv": stored as caddtree-rawcv with the measured curve in its cost model; the option is
    off for other methods."""
    from dtree.store import TraceStore

    at = _live_caddtree_option("rawcv")
    assert at.dataframe[0].value["why this budget"].str.startswith("measured Cv").all()
    with TraceStore(store_env) as s:
        runs = s.list_runs()
        assert runs["method"].tolist() == ["caddtree-rawcv"]
        assert s.load_run(int(runs["id"].iloc[0])).cost_model["curve"] == "measured"


def test_live_decode_ar_fallback(store_env, tiny_cost, monkeypatch):
    """caddtree with "AR fallback": stored as caddtree-fallback (its params say so), every round is either drafted or
    a plain target step saying why; the option is off for other methods. A disturbed first-use cost profile in use is
    said beside the run."""
    from dtree.store import TraceStore

    monkeypatch.setattr(tiny_cost, "cost_model_warning", "the automatic cost profile looks disturbed (test)")
    at = _live_caddtree_option("fallback")
    assert any("looks disturbed (test)" in w.value for w in at.warning)
    with TraceStore(store_env) as s:
        runs = s.list_runs()
        assert runs["method"].tolist() == ["caddtree-fallback"]
        run = s.load_run(int(runs["id"].iloc[0]))
    assert run.params["fallback"] and run.rounds[0].drafted
    assert all(r.drafted or r.budget_reason.startswith("fallback: plain target step") for r in run.rounds)


def test_live_decode_cost_weights_reach_the_run(store_env, tiny_cost):
    """The Cost weights sliders apply to caddtree only: a steep Cv (scale 5, tree-node factor 5) is stored with the
    run and keeps its trees no larger than the unweighted run's on the same prompt; other methods ignore them."""
    from dtree.store import TraceStore

    at = _live()
    at.selectbox(key="method").select("ddtree").run()
    assert at.slider(key="ld_cv_scale").disabled
    at.selectbox(key="method").select("caddtree").run()
    assert not at.slider(key="ld_cv_scale").disabled
    at.text_area(key="prompt").input("What is 6 times 7?")
    at.number_input(key="max_new").set_value(8)
    at.button[0].click().run()
    at.slider(key="ld_cv_scale").set_value(5.0)
    at.slider(key="ld_node_factor").set_value(5.0)
    at.button[0].click().run()
    assert not at.exception, at.exception
    assert not at.error, [e.value for e in at.error]
    with TraceStore(store_env) as s:
        ids = s.list_runs().sort_values("id")["id"].tolist()
        plain, steep = (s.load_run(int(i)) for i in ids)
    assert plain.cost_model.get("weights") is None
    w = steep.cost_model["weights"]
    assert (w["cv_scale"], w["cv_tree_scale"]) == (5.0, 25.0) and w["cd_scale"] == 1.0
    assert max(r.budget for r in steep.rounds) <= max(r.budget for r in plain.rounds)
    mean = [sum(r.budget for r in run.rounds) / len(run.rounds) for run in (plain, steep)]
    assert mean[1] < mean[0]


def test_live_decode_adaptive_calibration(store_env, fake_calibration):
    """ddtree with probabilities calibrated during the run: no calibration is fitted beforehand, the run is stored as
    ddtree-adapt with its online settings, and every round's reason says how many earlier rounds calibrated it."""
    from dtree.store import TraceStore

    at = _run_ddtree4(probs="adapt")
    assert fake_calibration == []  # nothing fitted up front
    why = at.dataframe[0].value["why this budget"]
    assert why.iloc[0].startswith("calibrated on this run's 0 earlier rounds")
    assert why.str.startswith("calibrated on this run's").all()
    with TraceStore(store_env) as s:
        runs = s.list_runs()
        assert runs["method"].tolist() == ["ddtree-adapt"]
        params = s.load_run(int(runs["id"].iloc[0])).params
        gamma = DrafterConfig.from_json(default_drafter_path() / "config.json").gamma
        assert params["adaptive_calibration"]["depths"] == gamma and "calibration" not in params


def test_live_decode_logs_to_the_chosen_store_and_names_it(store_env):
    """The sidebar of Live decode (and Learn) shows the store box; a run goes to the chosen store and the caption
    names that store, not the default one. The choice follows the user across pages."""
    from dtree.store import TraceStore

    other = store_env.parent / "other.sqlite"
    at = _live()
    assert _store_box(at).value == str(store_env)
    _store_box(at).input(str(other)).run()
    at.selectbox(key="method").select("ar").run()
    at.text_area(key="prompt").input("What is 6 times 7?")
    at.number_input(key="max_new").set_value(3)
    at.button[0].click().run()
    assert not at.exception, at.exception
    assert not at.error, [e.value for e in at.error]
    with TraceStore(other) as s:
        run_id = int(s.list_runs()["id"].iloc[0])
    assert not store_env.exists()
    logged = [c.value for c in at.caption if c.value.startswith("Logged as run")]
    assert logged == [f"Logged as run #{run_id} in the trace store ({other})."]
    at.switch_page("app_pages/7_learn.py").run()
    assert not at.exception, at.exception
    assert _store_box(at).value == str(other)  # Learn shows the same store
    at.switch_page("app_pages/6_runs.py").run()
    assert not at.exception, at.exception
    assert _store_box(at).value == str(other)
    assert at.dataframe[0].value["id"].tolist() == [run_id]
