"""AppTest of the Tree explorer and Runs pages on trace stores written by the real engine (embedded target, fp32).

The drafter is a 1-layer DFlash drafter initialised from the target (untrained): its acceptances are short but real,
which is all these pages need. The cost model is a hand-written convex Cv(n; L) so CaDDTree's greedy rule stops early.
"""

from __future__ import annotations

import json
import shutil
import sqlite3
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pytest
from streamlit.testing.v1 import AppTest

from .charts import charts as _charts
from .charts import n_tree_markers as _n_tree_markers
from .charts import title as _title

ROOT = Path(__file__).resolve().parent.parent
EXPLORER = str(ROOT / "app_pages" / "2_tree_explorer.py")
RUNS = str(ROOT / "app_pages" / "6_runs.py")
TIMEOUT = 180


@pytest.fixture(scope="module")
def logged_store(tmp_path_factory, target32):
    """A store with one run of each method: ddtree (256 nodes), caddtree, chain, ar. Returns (path, {method: id})."""
    import torch

    from dtree import engine
    from dtree.cost import CostModel
    from dtree.drafter import DFlashDrafter, DrafterConfig, init_from_target
    from dtree.engine import DecodeConfig
    from dtree.store import TraceStore

    torch.manual_seed(0)
    d = DFlashDrafter(DrafterConfig(num_hidden_layers=1, qk_norm=False))
    init_from_target(d, target32.model)
    d.eval()
    d.name = "random"
    nodes = np.array([0, 8, 32, 128, 256])
    cv = np.array([[0.02 + 2e-4 * n + 2e-6 * n * n for n in nodes]] * 2)
    cost = CostModel.from_measurements(0.01, [0, 1024], nodes, cv)
    path = tmp_path_factory.mktemp("pages") / "runs.sqlite"
    store = TraceStore(path)
    ids = {}
    prompt = "What is 2+2?"
    for method, budget, n_new in [("ddtree", 256, 4), ("caddtree", 64, 6), ("chain", None, 4), ("ar", None, 3)]:
        run = engine.generate(target32, target32.encode_prompt(prompt), DecodeConfig(method, budget=budget,
                              max_new_tokens=n_new), drafter=d, cost_model=cost if method != "ar" else None,
                              sink=store, prompt_text=prompt)
        ids[method] = run.run_id
    store.close()
    return path, ids, (d, cost)


@pytest.fixture()
def store_copy(logged_store, tmp_path, monkeypatch):
    """A private copy of the logged store, set as the app's default store."""
    src, ids, _ = logged_store
    path = tmp_path / "runs.sqlite"
    shutil.copy(src, path)
    import dtree.ui

    monkeypatch.setattr(dtree.ui, "DEFAULT_STORE", str(path))
    return path, ids




def _sel(at: AppTest, label: str):
    return next(s for s in at.selectbox if s.label == label)


def _ok(at: AppTest) -> None:
    assert not at.exception, at.exception
    assert not at.error, [e.value for e in at.error]


def _store_box(at: AppTest):
    """The sidebar's trace-store text box."""
    return next(t for t in at.sidebar.text_input if t.label == "Trace store (SQLite file)")


def _explorer(run: str, round_: str | None = None) -> AppTest:
    """The Tree explorer opened by a link ``?run=RUN[&round=ROUND]`` (values as the URL gives them), after one run."""
    at = AppTest.from_file(EXPLORER, default_timeout=TIMEOUT)
    at.query_params["run"] = run
    if round_ is not None:
        at.query_params["round"] = round_
    return at.run()


def _heap_step(at: AppTest):
    """The Tree explorer's heap-step slider."""
    return next(s for s in at.slider if s.label.startswith("Heap step"))


def test_explorer_tree_heatmap_theta_and_heap_replay(store_copy):
    _, ids = store_copy
    at = _explorer(str(ids["caddtree"]), "0")
    _ok(at)
    figs = _charts(at)
    titles = [_title(f) for f in figs]
    assert any(t.startswith("Round 0:") and "nodes" in t for t in titles), titles
    assert any("theta" in t for t in titles), titles
    assert any("drafter marginals" in t for t in titles), titles
    assert any(f["data"][0]["type"] == "heatmap" for f in figs)
    full = _n_tree_markers(figs[0])
    step = _heap_step(at)
    assert full == step.value + 1  # every node and the root
    step.set_value(1).run()
    _ok(at)
    figs = _charts(at)
    assert _n_tree_markers(figs[0]) == 2  # root + first popped node
    theta = next(f for f in figs if "theta" in _title(f))
    assert any(t.get("name", "").startswith("heap step n = 1") for t in theta["data"])


def test_explorer_shows_the_calibration_an_adapt_round_used(store_copy, logged_store, target32):
    """An -adapt run: the expander lists the factors of the calibration fitted on the earlier rounds (identity at
    round 0), the same as dtree.replay.adaptive_calibrations gives."""
    from dtree.replay import adaptive_calibrations
    from dtree.store import TraceStore

    from dtree import engine
    from dtree.engine import DecodeConfig

    path, ids = store_copy
    drafter, cost = logged_store[2]
    with TraceStore(path) as s:
        run = engine.generate(target32, target32.encode_prompt("What is 2+2?"),
                              DecodeConfig("caddtree-adapt", budget=64, max_new_tokens=8), drafter=drafter,
                              cost_model=cost, sink=s)
        ids = {**ids, "caddtree-adapt": run.run_id}
        run = s.load_run(run.run_id)
    assert len(run.rounds) >= 2
    cals = adaptive_calibrations(run)
    for idx in (0, len(run.rounds) - 1):
        at = _explorer(str(ids["caddtree-adapt"]), str(idx))
        _ok(at)
        df = at.dataframe[-1].value
        assert df["depth"].tolist() == list(range(1, cals[idx].depths + 1))
        np.testing.assert_allclose(df["spine r0"].to_numpy(), np.round(cals[idx].factors[0, :, 0], 3))
        if idx == 0:
            assert (df["spine r0"] == 1).all()
    assert cals[-1].predicted.sum() > 0


def test_explorer_256_node_tree_collapses_and_switches_round(store_copy):
    _, ids = store_copy
    at = _explorer(str(ids["ddtree"]))
    _ok(at)
    collapse = at.checkbox[0]
    assert collapse.value  # on by default above 120 nodes
    assert collapse.label == "Collapse rejected" and "subtrees" in collapse.help  # short label fits its column
    fig = _charts(at)[0]
    assert "256 nodes" in _title(fig) and "hidden" in _title(fig)
    collapse.uncheck().run()
    _ok(at)
    assert _n_tree_markers(_charts(at)[0]) == 257
    rounds = next(s for s in at.slider if s.label == "Round")
    rounds.set_value(1).run()
    _ok(at)
    assert _title(_charts(at)[0]).startswith("Round 1:")
    assert at.query_params["round"] in ("1", ["1"])  # the URL names the round shown


def test_explorer_each_round_opens_whole(store_copy):
    """Heap step / depth / collapse set on one round do not follow to another round or run (chain rounds all have the
    same node count and depth, where Streamlit would otherwise keep the widget's state)."""
    _, ids = store_copy
    at = _explorer(str(ids["chain"]), "0")
    _ok(at)
    step = _heap_step(at)
    n_nodes = step.max
    assert n_nodes >= 2 and step.value == n_nodes
    step.set_value(1).run()
    assert "heap step 1/" in _title(_charts(at)[0])
    rounds = next(s for s in at.slider if s.label == "Round")
    assert rounds.max >= 1
    rounds.set_value(1).run()
    _ok(at)
    step = _heap_step(at)
    assert step.max == n_nodes and step.value == n_nodes
    assert _title(_charts(at)[0]).startswith("Round 1:") and "heap step" not in _title(_charts(at)[0])
    _sel(at, "Run").set_value(ids["caddtree"]).run()
    _ok(at)
    step = _heap_step(at)
    assert step.value == step.max


def test_explorer_other_runs_and_bad_links(store_copy):
    _, ids = store_copy
    for method in ("chain", "ar"):
        at = _explorer(str(ids[method]))
        _ok(at)
        assert at.get("plotly_chart")
    at = _explorer("999", "zz")
    assert not at.exception
    assert at.error and "999" in at.error[0].value  # the missing run is named, another run is shown
    assert at.get("plotly_chart")


def test_explorer_round_deleted_in_another_tab(store_copy):
    from dtree.store import TraceStore

    path, ids = store_copy
    at = _explorer(str(ids["chain"]))
    _ok(at)
    with TraceStore(path) as s:
        s.delete_run(ids["chain"])
    at.run()
    assert not at.exception
    assert at.error and f"#{ids['chain']}" in at.error[0].value


def test_explorer_round_of_a_damaged_rounds_table_names_the_damage(store_copy):
    """The runs table reads, the rounds table is damaged: the page says the round cannot be read and why (the
    store's damaged-file message), not that it was deleted in another tab."""
    from .conftest import damage_table_root

    path, ids = store_copy
    damage_table_root(path, "rounds")
    at = _explorer(str(ids["chain"]))
    assert not at.exception
    assert at.error and "cannot be read" in at.error[0].value and "damaged" in at.error[0].value
    assert "deleted in another tab" not in at.error[0].value


def test_runs_filters_compare_export_delete(store_copy):
    from dtree.store import TraceStore

    path, ids = store_copy
    at = AppTest.from_file(RUNS, default_timeout=TIMEOUT).run()
    _ok(at)
    assert len(at.dataframe[0].value) == 4
    _sel(at, "Method").select("ddtree").run()
    _ok(at)
    assert at.dataframe[0].value["method"].tolist() == ["ddtree"]
    _sel(at, "Method").select("(all)").run()
    _sel(at, "Status").select("failed").run()
    _ok(at)
    assert len(at.dataframe[0].value) == 0
    _sel(at, "Status").select("(all)").run()
    tomorrow = datetime.now(UTC).date() + timedelta(days=1)
    at.date_input[0].set_value(tomorrow).run()
    _ok(at)
    assert len(at.dataframe[0].value) == 0
    at.date_input[0].set_value(None).run()

    # compare: the chain and ddtree runs decode the same prompt greedily in fp32, so outputs agree on their prefix
    _sel(at, "Run A").select(ids["ddtree"]).run()
    _sel(at, "Run B").select(ids["chain"]).run()
    _ok(at)
    table = at.dataframe[1].value
    assert list(table.columns) == ["quantity", f"run #{ids['ddtree']}", f"run #{ids['chain']}"]
    assert "tokens/s (decode)" in table["quantity"].tolist()
    assert at.success and "identical" in at.success[0].value  # same prompt, 4 new tokens, greedy fp32
    shares = next(f for f in _charts(at) if "phase" in _title(f))
    assert {t["name"] for t in shares["data"]} == {"prefill", "draft", "build", "verify", "commit"}
    assert len(at.get("download_button")) == 2

    # delete: needs the confirmation; only that run goes
    with TraceStore(path) as s:
        before = {i: s.export_run(i) for i in ids.values() if i != ids["caddtree"]}
    _sel(at, "Run to delete").select(ids["caddtree"]).run()
    delete = next(b for b in at.button if b.label == "Delete run")
    assert delete.disabled
    at.checkbox[0].check().run()
    next(b for b in at.button if b.label == "Delete run").click().run()
    _ok(at)
    assert at.success and f"Deleted run #{ids['caddtree']}" in at.success[0].value
    assert sorted(at.dataframe[0].value["id"]) == sorted(before)
    with TraceStore(path) as s:
        assert sorted(s.list_runs()["id"]) == sorted(before)
        assert {i: s.export_run(i) for i in before} == before  # everything else untouched


def test_runs_export_contents(store_copy):
    """The page's export buttons serve store.export_run (JSON) and figures.rounds_table (CSV); check both."""
    import io

    import pandas as pd

    from dtree import figures
    from dtree.store import TraceStore

    path, ids = store_copy
    with TraceStore(path) as s:
        blob = json.dumps(s.export_run(ids["caddtree"]))
        run = s.load_run(ids["caddtree"])
    back = json.loads(blob)
    assert back["run"]["id"] == ids["caddtree"] and len(back["rounds"]) == len(run.rounds)
    csv = pd.read_csv(io.StringIO(figures.rounds_table(run).to_csv(index=False)))
    assert csv["tau (tokens)"].tolist() == [r.tau for r in run.rounds]


def test_explorer_bad_run_and_round_links_warn(store_copy):
    _, ids = store_copy
    at = _explorer("abc")
    _ok(at)
    assert at.warning and "'abc'" in at.warning[0].value  # not silently another run
    assert at.get("plotly_chart")
    at = _explorer(str(ids["ddtree"]), "99")
    _ok(at)
    assert at.warning and "Round 99" in at.warning[0].value and "out of range" in at.warning[0].value
    assert next(s for s in at.slider if s.label == "Round").value == 0  # falls back to the first round
    assert _title(_charts(at)[0]).startswith("Round 0:")


def _store_variants(src, tmp_path, ids):
    """Two more copies of the store: r1 without the chain and ar runs, r2 without the caddtree run."""
    from dtree.store import TraceStore

    r1, r2 = tmp_path / "r1.sqlite", tmp_path / "r2.sqlite"
    for path, gone in [(r1, ("chain", "ar")), (r2, ("caddtree",))]:
        shutil.copy(src, path)
        with TraceStore(path) as s:
            for m in gone:
                s.delete_run(ids[m])
    return r1, r2


def test_store_box_switches_on_every_enter(store_copy, tmp_path):
    """Each Enter in the sidebar's store box switches the store (it used to revert every second change)."""
    path, ids = store_copy
    r1, r2 = _store_variants(path, tmp_path, ids)
    at = AppTest.from_file(RUNS, default_timeout=TIMEOUT).run()
    _ok(at)
    assert _store_box(at).value == str(path) and len(at.dataframe[0].value) == 4
    for store, want in [(r1, {"ddtree", "caddtree"}), (r2, {"ddtree", "chain", "ar"}), (r1, {"ddtree", "caddtree"}),
                        (path, {"ddtree", "caddtree", "chain", "ar"})]:
        _store_box(at).input(str(store)).run()
        _ok(at)
        assert _store_box(at).value == str(store)
        assert set(at.dataframe[0].value["method"]) == want, store
    _store_box(at).input("  ").run()  # emptied: the default store
    _ok(at)
    assert _store_box(at).value == str(path) and len(at.dataframe[0].value) == 4


def test_runs_selections_do_not_follow_into_another_store(store_copy, tmp_path):
    """The diagnose multiselect and the delete confirmation belong to one store: after a switch they start afresh and
    never hold (or show) another store's runs."""
    path, ids = store_copy
    _, r2 = _store_variants(path, tmp_path, ids)
    twin = tmp_path / "twin.sqlite"  # same runs, another file: its selectboxes keep their choice
    shutil.copy(path, twin)
    at = AppTest.from_file(RUNS, default_timeout=TIMEOUT).run()
    _ok(at)
    at.multiselect[0].set_value([ids["caddtree"], ids["ddtree"]]).run()
    _ok(at)
    _store_box(at).input(str(r2)).run()  # r2 has no caddtree run
    _ok(at)
    pick = at.multiselect[0]
    assert pick.value == [ids["chain"]]  # r2's default (its newest speculative run), not what was picked in the other
    assert all("caddtree" not in o for o in pick.options)
    at.checkbox[0].check().run()  # used to raise TypeError at the multiselect after a switch
    _ok(at)
    assert at.multiselect[0].value == [ids["chain"]]

    _store_box(at).input(str(path)).run()
    _sel(at, "Run to delete").select(ids["chain"]).run()
    at.checkbox[0].check().run()
    assert not next(b for b in at.button if b.label == "Delete run").disabled
    _store_box(at).input(str(twin)).run()
    _ok(at)
    assert _sel(at, "Run to delete").value == ids["chain"]
    assert not at.checkbox[0].value  # the confirmation given for the other store's run #N does not carry over
    assert next(b for b in at.button if b.label == "Delete run").disabled


@pytest.mark.parametrize("page", [EXPLORER, RUNS])
def test_bad_and_empty_stores(page, tmp_path, monkeypatch):
    import dtree.ui

    junk = tmp_path / "junk.sqlite"
    junk.write_bytes(b"this is not a database" * 100)
    foreign = tmp_path / "foreign.sqlite"
    with sqlite3.connect(foreign) as c:
        c.execute("CREATE TABLE people (name TEXT)")
    c.close()
    empty = tmp_path / "empty.sqlite"
    from dtree.store import TraceStore

    TraceStore(empty).close()
    for path, kind in [(junk, "error"), (foreign, "error"), (empty, "info"), (tmp_path / "missing.sqlite", "info")]:
        monkeypatch.setattr(dtree.ui, "DEFAULT_STORE", str(path))
        at = AppTest.from_file(page, default_timeout=TIMEOUT).run()
        assert not at.exception, (path, at.exception)
        assert getattr(at, kind), (path, kind)
        assert not at.get("plotly_chart")
    assert not (tmp_path / "missing.sqlite").exists()  # looking does not create a store


def test_app_navigation_lists_the_pages():
    at = AppTest.from_file(str(ROOT / "app.py"), default_timeout=TIMEOUT).run()
    assert not at.exception
    at.switch_page("app_pages/6_runs.py").run()
    assert not at.exception
    assert any("Runs" in t.value for t in at.title)
    assert any("`python -m dtree decode`" in c.value for c in at.caption)
    assert not any("`dtree run`" in c.value for c in at.caption)  # not a command
