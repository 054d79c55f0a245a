"""AppTest of the Speedup arena and Learn pages on the real embedded model (tiny: 1 prompt, 8 tokens, ar + ddtree:4).

The Learn page runs ddtree with a small hand-written cost model given to the cached backend, so section 3 has real
theta(n) numbers without profiling this machine.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from streamlit.testing.v1 import AppTest

from .charts import charts as _charts
from .charts import n_tree_markers as _n_tree_markers
from .charts import title as _title

ROOT = Path(__file__).resolve().parent.parent
ARENA = str(ROOT / "app_pages" / "5_speedup_arena.py")
APP = str(ROOT / "app.py")
TIMEOUT = 240


@pytest.fixture()
def store_env(tmp_path, monkeypatch):
    path = tmp_path / "arena.sqlite"
    import dtree.ui

    monkeypatch.setattr(dtree.ui, "DEFAULT_STORE", str(path))
    return path


def _ok(at: AppTest) -> None:
    assert not at.exception, at.exception
    assert not at.error, [e.value for e in at.error]




def _arena(methods=("ar", "ddtree:4"), n=1, source="demo") -> AppTest:
    at = AppTest.from_file(ARENA, default_timeout=TIMEOUT).run()
    assert not at.exception, at.exception
    at.selectbox(key="arena_set").select(source)
    at.number_input(key="arena_n").set_value(n)
    at.multiselect(key="arena_methods").set_value(list(methods))
    at.number_input(key="arena_max_new").set_value(8)
    return at


def test_arena_runs_bench_table_charts_and_past(store_env):
    from dtree.store import TraceStore

    at = _arena(methods=("ar", "ddtree:4", "ddtree:8"))
    at.button[0].click().run()
    _ok(at)
    df = at.dataframe[0].value
    assert df["method"].tolist() == ["ar", "ddtree:4", "ddtree:8"]
    fixed = df[df["method"] != "ar"]
    best = fixed.loc[fixed["tok_s"].idxmax(), "method"]  # two fixed budgets: the faster is named the oracle
    assert [i.value for i in at.info if i.value.startswith(
        f"On this bench's prompts, the best fixed budget (the oracle, among ddtree:4, ddtree:8): {best} at")], [
        i.value for i in at.info]
    ar = df.loc[df["method"] == "ar", "tok_s"].iloc[0]
    for _, r in df.iterrows():
        assert r["speedup_vs_ar"] == pytest.approx(r["tok_s"] / ar, rel=2e-3)
    assert df["speedup_ci90"].tolist() == ["", "", ""]  # one prompt: no interval
    figs = _charts(at)
    speed = next(f for f in figs if _title(f).startswith("Speedup vs AR"))
    bars = {t["x"][0]: t["y"][0] for t in speed["data"] if t["type"] == "bar" and t["xaxis"] == "x"}
    assert bars == pytest.approx(dict(zip(df["method"], df["speedup_vs_ar"])))
    assert any("round time" in _title(f) for f in figs)
    assert any(_title(f).startswith("Past benches") for f in figs)  # this bench, read back from the store
    with TraceStore(store_env) as s:
        runs = s.list_runs()
    assert len(runs) == 3 and runs["tag"].nunique() == 1 and runs["tag"].iloc[0].startswith("bench:")
    past = at.dataframe[-1].value  # past-bench summary rebuilt from the store equals the live one
    assert past["speedup_vs_ar"].tolist() == df["speedup_vs_ar"].tolist()


def test_arena_offers_and_runs_variants(store_env, tiny_cost, fake_calibration, monkeypatch):
    """The -spine / -cal variants are offered; a bench of two runs them (the calibration fitted once, first)."""
    from dtree.records import VARIANTS, parse_method
    from dtree.store import TraceStore

    # as if this process's first-use profile had looked disturbed: the bench says so beside its table
    monkeypatch.setattr(tiny_cost, "cost_model_warning", "the automatic cost profile looks disturbed (test)")
    at = _arena(methods=["ar", "ddtree-spine:16", "caddtree-cal-spine"])
    offered = at.multiselect(key="arena_methods").options
    assert {"caddtree-spine", "caddtree-cal", "caddtree-cal-spine", "ddtree-spine:16", "ddtree-cal:16"} <= set(offered)
    assert {parse_method(m.partition(":")[0]).name for m in offered} >= set(VARIANTS)  # every variant is offered
    at.button[0].click().run()
    _ok(at)
    assert at.dataframe[0].value["method"].tolist() == ["ar", "ddtree-spine:16", "caddtree-cal-spine"]
    assert fake_calibration == [(1, 2), (2, 2)]  # fitted once, before the bench, with progress
    assert any("looks disturbed (test)" in w.value for w in at.warning)
    with TraceStore(store_env) as s:
        runs = s.list_runs()
    assert sorted(runs["method"]) == ["ar", "caddtree-cal-spine", "ddtree-spine"]
    assert (runs["status"] == "complete").all()


@pytest.mark.parametrize("case", ["typed-empty", "zero-prompts", "no-ar", "no-file", "binary-file"])
def test_arena_bad_input_shows_error(store_env, case):
    from dtree.store import TraceStore

    if case == "typed-empty":
        at = _arena(source="typed prompts (one per line)")
        at.text_area(key="arena_typed").input("  \n ")
        want = "empty"
    elif case == "zero-prompts":  # a prompt file that holds no prompt (the number input itself stops at 1)
        (store_env.parent / "empty.jsonl").write_text("\n")
        at = _arena(source="JSONL file (upload or path)")
        at.text_input(key="arena_path").input(str(store_env.parent / "empty.jsonl"))
        want = "no prompts"
    elif case == "no-ar":
        at = _arena(methods=["chain"])
        want = "ar"
    elif case == "binary-file":  # e.g. a trace store given as the prompt file: one line, not a UnicodeDecodeError
        binary = store_env.parent / "some.sqlite"
        binary.write_bytes(b"SQLite format 3\x00" + bytes(range(256)) * 8)
        at = _arena(source="JSONL file (upload or path)")
        at.text_input(key="arena_path").input(str(binary))
        want = "Invalid input — dataset: "
    else:
        at = _arena(source="JSONL file (upload or path)")
        at.text_input(key="arena_path").input(str(store_env.parent / "missing.jsonl"))
        want = "file not found"
    at.button[0].click().run()
    assert not at.exception, at.exception
    assert at.error and want in at.error[0].value, [e.value for e in at.error]
    assert not store_env.exists() or len(TraceStore(store_env).list_runs()) == 0


def test_prompt_helpers_reject_zero_and_empty():
    from dtree import bench
    from dtree.errors import InputError

    assert len(bench.load_prompt_set("demo", 3)) == 3
    with pytest.raises(InputError, match="limit"):
        bench.load_prompt_set("demo", 0)
    with pytest.raises(InputError, match="empty"):
        bench.prompts_from_lines(" \n", 2)
    with pytest.raises(InputError, match="no prompt"):
        bench.load_prompts_bytes(b'{"x": 1}\n', "mine.jsonl", 2)


def _learn() -> AppTest:
    # through app.py, so the navigation resolves the page link to the Tree explorer
    at = AppTest.from_file(APP, default_timeout=TIMEOUT).run()
    return at.switch_page("app_pages/7_learn.py").run()


def test_app_lists_arena_and_learn():
    at = AppTest.from_file(APP, default_timeout=TIMEOUT).run()
    assert not at.exception
    at.switch_page("app_pages/5_speedup_arena.py").run()
    assert not at.exception, at.exception
    assert any("Speedup arena" in t.value for t in at.title)


def test_learn_walks_one_round(store_env, tiny_cost):
    at = _learn()
    assert not at.exception, at.exception
    at.selectbox(key="learn_method").select("ddtree")
    at.number_input(key="learn_budget").set_value(4)
    at.number_input(key="learn_tokens").set_value(8)
    at.button[0].click().run()
    _ok(at)
    assert len(at.latex) >= 8
    assert any("q(u_" in x.value for x in at.latex)  # the live product of marginals
    assert any(r"\theta(" in x.value and "tokens/s" in x.value for x in at.latex)  # live theta(n) with numbers
    figs = _charts(at)
    titles = [_title(f) for f in figs]
    assert any("attention mask" in t for t in titles), titles
    assert any("drafter marginals" in t for t in titles), titles
    assert any("theta" in t for t in titles), titles
    tree = next(f for f in figs if any(t.get("name") == "root (anchor)" for t in f["data"]))
    assert _n_tree_markers(tree) == 5  # root + 4 nodes
    mask = next(f for f in figs if "attention mask" in _title(f))
    z = np.array(mask["data"][0]["z"])
    assert z.shape == (5, 5) and (np.diag(z) == 1).all() and (z[0, 1:] == 0).all()
    step = next(s for s in at.slider if s.label.startswith("Heap step"))
    step.set_value(2).run()
    _ok(at)
    tree = next(f for f in _charts(at) if any(t.get("name") == "root (anchor)" for t in f["data"]))
    assert "heap step 2/4" in _title(tree)
    assert _n_tree_markers(tree) == 3
    walk = at.dataframe[-1].value
    assert walk["step"].tolist() == list(range(len(walk)))


def test_learn_bad_prompt_shows_error(store_env):
    at = _learn()
    at.text_area(key="learn_prompt").input("   ")
    at.button[0].click().run()
    assert not at.exception, at.exception
    assert at.error and "prompt" in at.error[0].value
    assert not at.get("plotly_chart")
