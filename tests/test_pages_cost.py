"""AppTest of the Cost model and Budget lab pages on the real embedded target (fp32) and the shipped drafter.

One module fixture profiles a tiny real cost model (contexts 32, 64; nodes up to 8; 1 repeat) and logs a ddtree, a
caddtree and a chain run of a few tokens each; every test works on a private copy of that store.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from streamlit.testing.v1 import AppTest

ROOT = Path(__file__).resolve().parent.parent
COST = str(ROOT / "app_pages" / "3_cost_model.py")
LAB = str(ROOT / "app_pages" / "4_budget_lab.py")
TIMEOUT = 180


@pytest.fixture(scope="module")
def logged(tmp_path_factory, target32):
    """(store path, cost-model file path, {method: run id}) written by the real engine and profiler."""
    from dtree import engine
    from dtree.backend import profile_cost_model
    from dtree.drafter import default_drafter_path, load_drafter
    from dtree.engine import DecodeConfig
    from dtree.store import TraceStore

    drafter = load_drafter(default_drafter_path(), target32)
    drafter.name = default_drafter_path().name  # as the app's backend names it
    cost = profile_cost_model(target32, drafter, contexts=(32, 64), nodes=(0, 1, 2, 4, 8), repeats=1)
    folder = tmp_path_factory.mktemp("cost_pages")
    cost_path = cost.save(folder / "cost.json")
    store_path = folder / "runs.sqlite"
    ids = {}
    prompt = "What is 6 times 7?"
    with TraceStore(store_path) as store:
        for method, budget in [("ddtree", 8), ("caddtree", 32), ("chain", None)]:
            run = engine.generate(target32, target32.encode_prompt(prompt), DecodeConfig(method, budget=budget,
                                  max_new_tokens=6), drafter=drafter, cost_model=cost, sink=store, prompt_text=prompt)
            ids[method] = run.run_id
    return store_path, cost_path, ids


@pytest.fixture()
def env(logged, tmp_path, monkeypatch):
    """A private copy of the logged store set as the app's store; returns (store, cost file, ids, tmp folder)."""
    src, cost_path, ids = logged
    path = tmp_path / "runs.sqlite"
    shutil.copy(src, path)
    monkeypatch.setenv("DTREE_STORE", str(path))
    import dtree.ui

    monkeypatch.setattr(dtree.ui, "DEFAULT_STORE", str(path))
    return path, cost_path, ids, tmp_path


def _app(page: str) -> AppTest:
    at = AppTest.from_file(page, default_timeout=TIMEOUT)
    at.session_state["dtype"] = "float32"  # the runs and the cost model are fp32
    return at


def _ok(at: AppTest) -> None:
    assert not at.exception, at.exception
    assert not at.error, [e.value for e in at.error]


def _titles(at: AppTest) -> list[str]:
    return [json.loads(c.proto.spec)["layout"]["title"]["text"] for c in at.get("plotly_chart")]


def _fig(at: AppTest, start: str) -> dict:
    return next(f for f in (json.loads(c.proto.spec) for c in at.get("plotly_chart"))
                if f["layout"]["title"]["text"].startswith(start))


def _metric(at: AppTest, label: str) -> str:
    return next(m.value for m in at.metric if m.label == label)


def _load_file(at: AppTest, path) -> AppTest:
    at.radio(key="cm_source").set_value("Load a file").run()
    return at.text_input(key="cm_path").input(str(path)).run()


def test_cost_page_file_curves_and_weights_move_theta(env):
    _, cost_path, ids, _ = env
    at = _app(COST).run()
    assert not at.exception, at.exception
    _load_file(at, cost_path)
    _ok(at)
    # same target, drafter, dtype and machine: no mismatch warning; the non-convex-Cv warning iff the fit is > 10% off
    from dtree.cost import CostModel

    gap = CostModel.load(cost_path).fit_gap()
    warnings = [w.value for w in at.warning]
    if gap["rel_gap"] > 0.1:
        assert len(warnings) == 1 and f"the convex fit is {100 * gap['rel_gap']:.0f}% off" in warnings[0], warnings
    else:
        assert not warnings, warnings
    curves = _fig(at, "Verify cost")
    names = [t["name"] for t in curves["data"]]
    assert {"L = 32: measured median", "L = 64: fit"} <= set(names) and any(n.startswith("Cd") for n in names)
    assert len(at.dataframe[0].value) == 2 * 5  # (L, n) table
    at.selectbox(key="cm_run").select(ids["caddtree"]).run()
    theta = _metric(at, "theta at the stop (tokens/s)")
    at.slider(key="cm_cd_scale").set_value(3.0).run()
    _ok(at)
    assert _metric(at, "theta at the stop (tokens/s)") != theta  # the curve follows the weights at once
    at.checkbox(key="cm_analytic").check().run()
    at.number_input(key="cm_cv_b").set_value(0.0).run()
    _ok(at)
    free = int(_metric(at, "chosen budget: greedy stop (nodes)"))
    assert free == 32  # nodes cost nothing: theta rises up to the logged top-k
    at.number_input(key="cm_cv_b").set_value(1000.0).run()
    _ok(at)
    assert int(_metric(at, "chosen budget: greedy stop (nodes)")) == 0  # one second per node: stop at the root
    fig = _fig(at, "Predicted throughput theta(n)")
    assert any(t["name"].startswith("greedy stop n = 0") for t in fig["data"])
    assert any(t["name"].startswith("argmax n = ") for t in fig["data"])


def test_cost_page_shows_this_machines_kernel_table(env, target32):
    """The kernels expander names the padding widths of the installed table and draws its per-kernel forward times."""
    from dtree.kernels import installed_table

    at = _app(COST).run()
    _ok(at)
    table = installed_table(target32.model)
    assert table is not None  # CPU float32: tuned at load
    box = next(e for e in at.expander if e.label.startswith("Matmul kernels of this machine"))
    text = " ".join(c.value for c in box.caption)
    assert f"padded to the widths {', '.join(map(str, target32.verify_widths))} (tokens)" in text
    assert target32.linear_kernels in text
    fig = _fig(at, "One verify forward per matmul kernel")
    names = [t["name"] for t in fig["data"]]
    assert "F.linear (default)" in names and "installed (fastest per width)" in names
    installed = next(t for t in fig["data"] if t["name"] == "installed (fastest per width)")
    assert installed["y"] == table.forward_ms


def test_cost_page_warns_when_the_measured_cv_is_not_convex(env):
    from dtree.cost import CostModel

    _, cost_path, ids, tmp = env
    real = CostModel.load(cost_path)
    x = real.nodes.astype(float)
    for name, row, warned in [("concave", 0.07 + 0.02 * np.sqrt(x), True), ("convex", 0.07 + 1e-3 * x * x, False)]:
        m = CostModel.from_measurements(real.cd_s, real.contexts, real.nodes, np.stack([row] * len(real.contexts)),
                                        dict(real.meta))
        path = m.save(tmp / f"{name}.json")
        at = _load_file(_app(COST).run(), path)
        _ok(at)
        flagged = [w.value for w in at.warning if "not convex" in w.value]
        assert bool(flagged) == warned, (name, [w.value for w in at.warning])
        if warned:
            gap = m.fit_gap()
            assert f"{100 * gap['rel_gap']:.0f}% off at n = {gap['n']}, L = {gap['context']}" in flagged[0]
            assert "caddtree-rawcv" in flagged[0]
        # a logged round's chosen budget is plain caddtree's: on the measured curve (argmax stop) iff the fit is off
        at.selectbox(key="cm_run").select(ids["caddtree"]).run()
        _ok(at)
        labels = [mt.label for mt in at.metric]
        rule = "argmax stop (measured Cv)" if warned else "greedy stop"
        assert f"chosen budget: {rule} (nodes)" in labels, labels
        said = any("reads the measured: the convex fit of Cv is" in c.value for c in at.caption)
        assert said == warned


def test_cost_page_fits_the_scales_to_logged_runs(env):
    from dtree.cost import CostModel
    from dtree.replay import live_weights_from_runs
    from dtree.store import TraceStore

    store_path, cost_path, ids, _ = env
    at = _load_file(_app(COST).run(), cost_path)
    _ok(at)
    key = next(m.key for m in at.multiselect if m.key and m.key.startswith("cm_fit_runs"))
    assert sorted(at.multiselect(key=key).value) == sorted(ids.values())
    at.multiselect(key=key).set_value([ids["ddtree"], ids["chain"]]).run()
    at.button(key="cm_fit_button").click().run()
    _ok(at)
    with TraceStore(store_path) as store:
        want = live_weights_from_runs([store.load_run(ids["ddtree"]), store.load_run(ids["chain"])],
                                      CostModel.load(cost_path)).weights
    assert at.success and f"Cv scale {want.cv_scale:.3f}" in at.success[0].value
    factor = want.tree_scale / want.cv_scale
    for name, v in (("cm_cd_scale", want.cd_scale), ("cm_cv_scale", want.cv_scale), ("cm_node_factor", factor)):
        assert at.slider(key=name).value == pytest.approx(min(5.0, max(0.1, round(v / 0.05) * 0.05)))
    if want.cv_tree_scale is not None:  # two tree sizes (ddtree's budget, chain's 15): root and tree scales
        assert f"{want.cv_tree_scale:.3f} on what the tree's nodes add" in at.success[0].value
    at.multiselect(key=key).set_value([]).run()
    at.button(key="cm_fit_button").click().run()
    assert not at.exception and at.error and "at least one run" in at.error[0].value


def test_cost_page_foreign_and_corrupted_files(env):
    _, cost_path, _, tmp = env
    d = json.loads(Path(cost_path).read_text())
    d["meta"]["dtype"] = "float16"
    foreign = tmp / "fp16.json"
    foreign.write_text(json.dumps(d))
    at = _load_file(_app(COST).run(), foreign)
    _ok(at)
    assert at.warning and "dtype 'float16'" in at.warning[0].value and "float32" in at.warning[0].value
    assert any(t.startswith("Verify cost") for t in _titles(at))  # the user can proceed
    broken = tmp / "broken.json"
    broken.write_bytes(b"\x00{not json")
    at.text_input(key="cm_path").input(str(broken)).run()
    assert not at.exception and at.error and "broken.json" in at.error[0].value
    d["version"] = 99
    at.file_uploader(key="cm_upload").set_value(("v99.json", json.dumps(d).encode(), "application/json")).run()
    assert not at.exception and at.error and "version 99" in at.error[0].value


def test_cost_page_profiles_with_progress_and_saves(env):
    _, _, _, tmp = env
    at = _app(COST).run()
    at.radio(key="cm_source").set_value("Profile now").run()
    _ok(at)
    at.multiselect(key="cm_contexts").set_value([32, 64])
    at.select_slider(key="cm_max_nodes").set_value(8)
    at.number_input(key="cm_repeats").set_value(1)
    at.button[0].click().run()  # the form's Profile button
    _ok(at)
    assert len(at.dataframe[0].value) == 2 * 5  # nodes 0, 1, 2, 4, 8 at two contexts
    out = tmp / "saved" / "cost.json"
    at.text_input(key="cm_save_path").input(str(out)).run()
    at.button(key="cm_save").click().run()
    _ok(at)
    from dtree.cost import CostModel

    assert at.success and CostModel.load(out).nodes.tolist() == [0, 1, 2, 4, 8]


def test_cost_page_save_as_checks_the_path(env, monkeypatch):
    _, cost_path, _, tmp = env
    monkeypatch.chdir(tmp)
    at = _load_file(_app(COST).run(), cost_path)
    _ok(at)
    (tmp / "afile").write_text("x")
    for bad, want in [("", "give a file path"), (str(tmp), "is a directory"),
                      (str(tmp / "afile" / "c.json"), str(tmp / "afile" / "c.json"))]:
        at.text_input(key="cm_save_path").input(bad).run()
        at.button(key="cm_save").click().run()
        assert not at.exception, at.exception  # was OSError: [Errno 16] Device or resource busy ... -> '.'
        assert at.error and at.error[0].value.startswith("Invalid input — path: ") and want in at.error[0].value
        assert ".tmp" not in at.error[0].value
    at.text_input(key="cm_save_path").input(str(tmp / "mine")).run()
    at.button(key="cm_save").click().run()
    _ok(at)
    assert at.success and str(tmp / "mine.json") in at.success[0].value and (tmp / "mine.json").is_file()


def test_budget_lab_sweep_oracle_weights_and_live_check(env):
    from dtree.store import TraceStore

    path, _, ids, _ = env
    at = _app(LAB).run()
    _ok(at)
    at.multiselect[0].set_value([ids["ddtree"], ids["caddtree"], ids["chain"]]).run()
    _ok(at)
    table = at.dataframe[0].value
    dd = table[table["method"] == "ddtree"]
    assert len(dd) == 32 and set(table["method"]) == {"ddtree", "chain", "caddtree"}  # budgets 1..32 (logged top-k)
    speed = _fig(at, "Replay: predicted throughput")
    star = [t for t in speed["data"] if t["name"].startswith("oracle fixed budget B* =")]
    assert star and int(_metric(at, "oracle fixed budget B* (nodes)")) == star[0]["x"][0]
    assert _fig(at, "CaDDTree's chosen budgets")["data"][0]["type"] == "histogram"
    assert any("position bias" in i.value and "top-k" in i.value for i in at.info)
    before = _metric(at, "caddtree: predicted tokens/s")
    at.slider(key="bl_cv_scale").set_value(4.0).run()
    _ok(at)
    assert _metric(at, "caddtree: predicted tokens/s") != before

    at.slider(key="bl_n_prompts").set_value(1)
    at.number_input(key="bl_max_new").set_value(3)
    at.button(key="bl_check_live").click().run()
    _ok(at)
    check = at.dataframe[1].value
    assert len(check) == 2 and check["configuration"].str.startswith("ddtree B*=").iloc[0]
    assert (check["measured tokens/s"] > 0).all() and (check["predicted tokens/s"] > 0).all()
    assert "difference (%)" in check.columns
    bars = _fig(at, "Predicted vs measured")
    assert {t["name"] for t in bars["data"]} == {"predicted (replay)", "measured (live)"}
    with TraceStore(path) as s:
        assert len(s.list_runs()) == 3 + 2  # the two live runs are logged
    at.run()  # the new runs join the options; the selection and the check stay
    _ok(at)
    assert sorted(at.multiselect[0].value) == sorted(ids.values())
    assert len(at.dataframe[1].value) == 2


def test_pages_on_empty_and_corrupted_stores(tmp_path, monkeypatch):
    import dtree.ui
    from dtree.store import TraceStore

    empty = tmp_path / "empty.sqlite"
    TraceStore(empty).close()
    bad = tmp_path / "bad.sqlite"
    bad.write_bytes(b"not a database at all" * 100)
    for path, expect in ((empty, "info"), (bad, "error"), (tmp_path / "missing.sqlite", "info")):
        monkeypatch.setattr(dtree.ui, "DEFAULT_STORE", str(path))
        for page in (COST, LAB):
            at = _app(page)
            if page == COST:
                at.session_state["cm_source"] = "Load a file"  # no model needed to reach the store part
            at.run()
            assert not at.exception, (page, path, at.exception)
            assert getattr(at, expect), (page, path, expect)


def test_pages_are_in_the_navigation(env):
    at = AppTest.from_file(str(ROOT / "app.py"), default_timeout=TIMEOUT).run()
    assert not at.exception
    for page, title in (("app_pages/3_cost_model.py", "Cost model"), ("app_pages/4_budget_lab.py", "Budget lab")):
        at.switch_page(page).run()
        assert not at.exception, at.exception
        assert any(t.value == title for t in at.title)
