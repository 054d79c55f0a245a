"""Bench: end to end on real prompts, its speedup column, losslessness check, and bad input."""

from __future__ import annotations

import json
import re

import pytest

from dtree import bench, trees
from dtree.cli import main
from dtree.errors import InputError


@pytest.fixture()
def two_prompts(tmp_path):
    path = tmp_path / "p.jsonl"
    path.write_text("\n".join(json.dumps({"question": q}) for q in ["What is 5 + 7?", "Name two oceans."]) + "\n")
    return path


def test_bench_end_to_end_speedup_is_ratio_of_timings(backend32, two_prompts, tmp_store):
    methods = bench.parse_methods("ar,chain,ddtree:4")
    prompts = bench.load_prompts(str(two_prompts), 2)
    stats = bench.run_bench(backend32, prompts, methods, max_new_tokens=16, store=tmp_store)
    rows = {r["method"]: r for r in bench.summary_rows(stats)}
    assert set(rows) == {"ar", "chain", "ddtree:4"}
    for key, r in rows.items():
        assert r["speedup_vs_ar"] == pytest.approx(r["tok_s"] / rows["ar"]["tok_s"], rel=2e-3)
        assert r["mismatches"] == 0
        assert len(stats[key].run_ids) == 2
        if key == "ar":
            assert r["speedup_ci90"] is None
        else:  # paired bootstrap over the 2 prompts: brackets the point estimate
            lo, hi = r["speedup_ci90"]
            assert lo - 1e-3 <= r["speedup_vs_ar"] <= hi + 1e-3
            assert (lo, hi) == pytest.approx(tuple(bench.ratio_interval(stats[key], stats["ar"])), abs=1e-3)
    assert len(tmp_store.list_runs()) == 6
    # each drafted run records which weights drafted it (a checkpoint retrained at one path is another setup)
    for key in ("chain", "ddtree:4"):
        run = tmp_store.load_run(stats[key].run_ids[0])
        assert run.params["drafter_weights"] == backend32.drafter.fingerprint and len(run.params["drafter_weights"]) == 12
    assert "drafter_weights" not in tmp_store.load_run(stats["ar"].run_ids[0]).params


def test_bench_flags_a_corrupted_walk(backend32, two_prompts, monkeypatch):
    real_walk = trees.walk

    def greedy_walk_one_too_far(tree, target_tokens):
        accepted, bonus = real_walk(tree, target_tokens)
        kids = [i for i in range(1, tree.n_nodes + 1) if tree.parents[i] == accepted[-1]]
        if kids:  # accept the first child although the target chose otherwise
            accepted = accepted + [kids[0]]
            bonus = int(target_tokens[kids[0]])
        return accepted, bonus

    monkeypatch.setattr(trees, "walk", greedy_walk_one_too_far)
    stats = bench.run_bench(backend32, bench.load_prompts(str(two_prompts), 2),
                            bench.parse_methods("ar,ddtree:4"), max_new_tokens=16)
    rows = {r["method"]: r for r in bench.summary_rows(stats)}
    assert rows["ar"]["mismatches"] == 0
    assert rows["ddtree:4"]["mismatches"] >= 1


def test_losslessness_reference_without_ar():
    """Without AR every method is checked against the first one; at temperature > 0 nothing is checked (None)."""
    def stats_for(outputs_per_prompt):
        stats = {k: bench.MethodStats(tok_s=[1.0], tpot_ms=[1.0], tau=[1.0], budget=[1.0])
                 for k in outputs_per_prompt[0]}
        for i, outs in enumerate(outputs_per_prompt):
            bench._check_outputs(stats, i, outs)
        return stats

    stats = stats_for([{"ddtree:4": [1, 2], "caddtree": [1, 2], "ddtree:8": [1, 3]},
                       {"ddtree:4": [5], "caddtree": [6], "ddtree:8": [5]}])
    rows = {r["method"]: r for r in bench.summary_rows(stats)}
    assert {k: (r["mismatches"], r["reference"]) for k, r in rows.items()} == {
        "ddtree:4": (0, "ddtree:4"), "caddtree": (1, "ddtree:4"), "ddtree:8": (1, "ddtree:4")}
    assert stats["caddtree"].mismatches == [1] and stats["ddtree:8"].mismatches == [0]
    stats = stats_for([{"chain": [1], "ar": [2]}])  # AR is the reference wherever it stands
    assert stats["chain"].mismatches == [0] and stats["ar"].mismatches == [] and stats["ar"].reference == "ar"
    unchecked = {"ar": bench.MethodStats(tok_s=[1.0], tpot_ms=[1.0], tau=[1.0], budget=[1.0])}
    assert bench.summary_rows(unchecked)[0]["mismatches"] is None


def test_ratio_with_interval_matches_medians_and_handles_missing_methods():
    base = bench.MethodStats(tok_s=[10.0, 20.0, 30.0, 12.0], prompts=[0, 1, 2, 3])
    var = bench.MethodStats(tok_s=[11.0, 23.0, 33.0, 12.0], prompts=[0, 1, 2, 3])
    stats = {"caddtree": base, "caddtree-rawcv": var, "empty": bench.MethodStats()}
    r, ci = bench.ratio_with_interval(stats, "caddtree-rawcv", "caddtree")
    assert r == round((12.0 + 23.0) / 2 / ((12.0 + 20.0) / 2), 3)  # ratio of medians, not median of ratios
    assert ci[0] <= ci[1] and ci[0] >= 1.0  # every prompt ran at least as fast with the variant
    assert bench.ratio_with_interval(stats, "caddtree-rawcv", None) == (None, None)
    assert bench.ratio_with_interval(stats, "caddtree-rawcv", "ddtree:64") == (None, None)
    assert bench.ratio_with_interval(stats, "empty", "caddtree") == (None, None)


@pytest.mark.parametrize("spec", ["beam", "ddtree", "ddtree:x", "chain:4", "ddtree:-1", "ddtree:5000", "", " ",
                                  "ar,", "ar,,chain", ",chain", "ar, ,chain"])
def test_bad_methods(spec):
    with pytest.raises(InputError) as e:
        bench.parse_methods(spec)
    assert e.value.field == "methods"


def test_stray_comma_is_named_not_skipped():
    with pytest.raises(InputError, match="empty item in 'ar,'"):
        bench.parse_methods("ar,")
    assert bench.parse_methods(" ar , ddtree:4 ") == [("ar", None), ("ddtree", 4)]  # spaces around items are fine


def test_a_method_listed_twice_is_refused():
    with pytest.raises(InputError, match=r"methods: ar, ddtree:4 listed more than once in 'ar,ddtree:4,ar,ddtree:4'"):
        bench.parse_methods("ar,ddtree:4,ar,ddtree:4")
    assert bench.parse_methods("ddtree:4,ddtree:8") == [("ddtree", 4), ("ddtree", 8)]  # other budgets are other rows


def test_bad_datasets(tmp_path):
    with pytest.raises(InputError, match="unknown dataset"):
        bench.load_prompts("no-such-set", 5)
    for path in ("/x.jsonl", str(tmp_path / "gone.jsonl.gz"), "sub/prompts"):  # names that look like paths
        with pytest.raises(InputError, match="^dataset: file not found: "):
            bench.load_prompts(path, 5)
    with pytest.raises(InputError, match="is a directory"):
        bench.load_prompts(str(tmp_path), 5)
    binary = tmp_path / "store.sqlite"
    binary.write_bytes(b"SQLite format 3\x00" + bytes(range(256)) * 8)
    with pytest.raises(InputError, match="^dataset: .*store.sqlite is not a UTF-8 text file"):
        bench.load_prompts(str(binary), 3)
    with pytest.raises(InputError, match="^dataset: .*store.sqlite is not a UTF-8 text file"):  # uploaded: its name
        bench.load_prompts_bytes(binary.read_bytes(), "store.sqlite", 3)
    with pytest.raises(InputError, match="limit"):
        bench.load_prompts("gsm8k", 0)
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"answer": "42"}) + "\n")
    with pytest.raises(InputError, match="no prompt field"):
        bench.load_prompts(str(bad), 3)
    for row, shown in (({"question": "  "}, 'question: "  "'), ({"prompt": 7}, "prompt: 7"), ({"turns": []}, "turns: []")):
        bad.write_text(json.dumps({"id": 1, **row}) + "\n")
        with pytest.raises(InputError, match=r"bad\.jsonl:1 has an empty or non-text prompt field \(" + re.escape(shown)):
            bench.load_prompts(str(bad), 3)


def test_bench_cli_bad_input_exits_2_and_stores_nothing(tmp_path, capsys):
    store = tmp_path / "b.sqlite"
    corrupt = tmp_path / "cm.json"
    corrupt.write_text("{not json")
    blocker = tmp_path / "afile"
    blocker.write_text("x")
    for args in (["--methods", "ddtree:abc"], ["--dataset", "nope"], ["--limit", "0"], ["--out", "x.txt"],
                 ["--out", str(tmp_path)], ["--out", str(blocker / "s.json")],
                 ["--cost-weights", "cd=-1"], ["--cost-weights", "cv=nan"], ["--cost-model", str(tmp_path / "no.json")],
                 ["--cost-model", str(corrupt)]):
        assert main(["bench", "--store", str(store), *args]) == 2
        assert "error:" in capsys.readouterr().err
    assert not store.exists()


def _cost_run(cost_model, rounds):
    from dtree.records import RunRecord

    run = RunRecord(method="caddtree", params={"seed": 0}, target="t", drafter="d", dtype="float32", device="cpu",
                    prompt="p", prompt_ids=[1, 2, 3], cost_model=None if cost_model is None else cost_model.to_dict())
    run.rounds = rounds
    return run


def test_verify_vs_model_is_logged_verify_time_over_the_stored_models_cv():
    """The ratio reads each round's budget n and start L in the run's own (weighted) cost model; AR-like rounds (no
    marginals) and runs without a cost model give nothing."""
    import numpy as np

    from dtree.cost import CostModel, CostWeights
    from dtree.records import RoundRecord

    nodes = np.array([0, 4, 8, 16])
    cv = np.array([[0.02 + 1e-3 * n for n in nodes], [0.04 + 1e-3 * n for n in nodes]])  # linear: the fit is exact
    cm = CostModel.from_measurements(0.01, [0, 1000], nodes, cv).weighted(CostWeights(cv_scale=2.0))
    marg = (np.zeros((3, 2), np.int64), np.zeros((3, 2), np.float32))

    def rnd(i, start, n, verify_ms, drafted=True):
        m = marg if drafted else (np.zeros((0, 0), np.int64), np.zeros((0, 0), np.float32))
        return RoundRecord(index=i, start=start, anchor=5, marg_tokens=m[0], marg_logprobs=m[1],
                           tree=trees.root_only_tree(5), budget=n, budget_reason="test", accepted=[0], bonus=6,
                           committed=[5], verify_ms=verify_ms)

    # predicted (weighted, ms): L=500 is halfway, Cv = 2 * (30 + n); the logged verifies take 1.5x that
    r0 = rnd(0, 500, 8, 1.5 * 2 * (30 + 8))
    r1 = rnd(1, 1000, 0, 1.5 * 2 * 40)
    ar_like = rnd(2, 1001, 0, 999.0, drafted=False)
    assert bench.verify_vs_model(_cost_run(cm, [r0, r1, ar_like])) == pytest.approx(1.5, rel=1e-3)
    assert bench.verify_vs_model(_cost_run(cm, [ar_like])) is None
    assert bench.verify_vs_model(_cost_run(None, [r0, r1])) is None
    s = bench.MethodStats()
    s.add(_cost_run(cm, [r0, r1]))
    s.add(_cost_run(None, [r0]))
    assert s.verify_vs_model == [pytest.approx(1.5, rel=1e-3)]
    assert bench.summary_rows({"caddtree": s})[0]["verify_vs_model"] == pytest.approx(1.5, abs=1e-3)
    # drafted_%: the share of rounds that ran the drafter (a -fallback run's plain steps do not)
    fb = bench.MethodStats()
    fb.add(_cost_run(cm, [r0, r1, ar_like, ar_like]))
    rows = bench.summary_rows({"caddtree": s, "caddtree-fallback": fb})
    assert [r["drafted_%"] for r in rows] == [100.0, 50.0]


def test_drift_note_only_outside_the_band():
    from dtree.cli import DRIFT_BAND, _drift_note

    class CM:
        meta = {"date": "2026-11-29T23:25:13+00:00"}

    assert _drift_note([], CM()) is None
    assert _drift_note([DRIFT_BAND[0], 1.0, DRIFT_BAND[1]], CM()) is None
    slow = _drift_note([1.6, 1.7, 0.9], CM(), store_path="s.sqlite", tag="bench:x")
    assert "1.60x" in slow and "2026-11-29" in slow and "--tag bench:x" in slow and "dtree profile" in slow
    assert "0.50x" in _drift_note([0.5], None)
    # judged as printed: a median that rounds to the band's edge gets no note that contradicts the band
    assert _drift_note([DRIFT_BAND[1] + 0.004], CM()) is None and _drift_note([DRIFT_BAND[0] - 0.004], CM()) is None
    assert "1.26x" in _drift_note([DRIFT_BAND[1] + 0.006], CM())
    assert "speed has changed" in slow and "something else used the CPU" not in slow
    both = _drift_note([1.6], CM(), disturbed=True)  # a disturbed first-use profile: blamed, not the machine
    assert "something else used the CPU" in both and "speed has changed" not in both


def test_bench_cli_uses_the_given_cost_model_and_weights(backend32, two_prompts, tmp_path, monkeypatch, capsys):
    """--cost-model FILE and --cost-weights reach caddtree: the stored run carries that profile with those weights
    (and so does the JSON summary); the backend's auto-profile is never used."""
    import numpy as np

    import dtree.backend
    from dtree.cost import CostModel
    from dtree.store import TraceStore

    nodes = np.array([0, 2, 4, 8, 16])
    cm = CostModel.from_measurements(0.01, [0, 1024], nodes,
                                     np.array([[0.02 + 2e-3 * n + 4e-4 * n * n for n in nodes]] * 2),
                                     meta={"model": "test profile"})
    path = cm.save(tmp_path / "cm.json")
    monkeypatch.setattr(dtree.backend, "Backend", lambda *a, **k: backend32)
    monkeypatch.setattr(backend32, "_cost_model", None)
    monkeypatch.setattr(backend32, "cost_weights", None)
    monkeypatch.setattr(dtree.backend, "profile_cost_model", lambda *a, **k: pytest.fail("must not profile"))
    store, out = tmp_path / "b.sqlite", tmp_path / "b.json"
    assert main(["bench", "--dataset", str(two_prompts), "--limit", "1", "--methods", "caddtree:8",
                 "--max-new-tokens", "8", "--cost-model", str(path), "--cost-weights", "cd=2,cv_tree=3",
                 "--store", str(store), "--out", str(out)]) == 0
    with TraceStore(store) as s:
        (run_id,) = s.list_runs()["id"].tolist()
        run = s.load_run(int(run_id))
    used = CostModel.from_dict(run.cost_model)
    assert used.meta["model"] == "test profile"
    assert (used.weights.cd_scale, used.weights.cv_tree_scale) == (2.0, 3.0)
    assert used.cd_s == pytest.approx(0.02)
    summary = json.loads(out.read_text())
    assert summary["cost_model"] == str(path) and summary["cost_weights"]["cd_scale"] == 2.0
    assert summary["summary"][0]["verify_vs_model"] > 0
    assert (summary["target"], summary["drafter"]) == (run.target, run.drafter)  # which models the figures are of


def test_bench_cli_damaged_store_fails_before_the_tag_line_and_changes_nothing(backend32, two_prompts, damaged_store,
                                                                               monkeypatch, capsys):
    """A store with a valid header but damaged pages opens; the bench probes a run insert right away, so it exits 2
    with one error line before saying where runs go and before any decoding; the file is unchanged."""
    import dtree.backend

    store = damaged_store
    before = store.read_bytes()
    monkeypatch.setattr(dtree.backend, "Backend", lambda *a, **k: backend32)
    monkeypatch.setattr(dtree.bench, "run_bench", lambda *a, **k: pytest.fail("must not decode"))
    assert main(["bench", "--dataset", str(two_prompts), "--limit", "1", "--methods", "ar",
                 "--max-new-tokens", "4", "--store", str(store)]) == 2
    err = capsys.readouterr().err
    assert "error: --store: " in err and "is damaged" in err and "runs are stored in" not in err
    assert store.read_bytes() == before


def test_bench_cli_table_shows_dash_for_columns_empty_throughout(backend32, two_prompts, monkeypatch, capsys):
    """An AR-only bench has no cost model and no interval anywhere: those columns print "-" as in a mixed table,
    never "None"."""
    import dtree.backend

    monkeypatch.setattr(dtree.backend, "Backend", lambda *a, **k: backend32)
    assert main(["bench", "--dataset", str(two_prompts), "--limit", "1", "--methods", "ar",
                 "--max-new-tokens", "4", "--no-store"]) == 0
    table = capsys.readouterr().out
    header, row = table.splitlines()[:2]
    assert "verify_vs_model" in header and "speedup_ci90" in header
    assert "None" not in table and row.split()[0] == "ar" and "-" in row.split()


def test_bench_rotates_the_method_order_per_prompt_and_keeps_the_reference():
    """Prompt i starts with method i mod M; every method runs once per prompt; the losslessness reference stays the
    first method (no AR here) whatever order a prompt ran in."""
    from dtree.records import RunRecord

    calls = []

    class Recorder:
        def decode(self, prompt, cfg, store=None):
            calls.append((prompt, cfg.method, cfg.budget))
            out = [1, 2, 3] if (cfg.method, prompt) != ("chain", "p1") else [1, 2, 9]
            return RunRecord(method=cfg.method, params={"seed": cfg.seed, "budget": cfg.budget}, target="t",
                             drafter=None, dtype="float32", device="cpu", prompt=prompt, prompt_ids=[0],
                             output_ids=out, status="complete", decode_s=1.0)

    methods = bench.parse_methods("ddtree:4,chain,caddtree")
    stats = bench.run_bench(Recorder(), ["p0", "p1", "p2", "p3"], methods, max_new_tokens=3)
    firsts = [calls[3 * i][1:] for i in range(4)]
    assert firsts == [("ddtree", 4), ("chain", None), ("caddtree", None), ("ddtree", 4)]
    for i in range(4):
        assert sorted(map(str, calls[3 * i:3 * i + 3])) == sorted(str((f"p{i}",) + m) for m in methods)
    assert all(s.reference == "ddtree:4" for s in stats.values())
    assert stats["chain"].mismatches == [1] and stats["ddtree:4"].mismatches == [] == stats["caddtree"].mismatches


def test_paired_speedup_compares_each_prompt_with_itself():
    """Two methods equally fast on every prompt: the paired median is 1.0 although the ratio of medians is not."""
    ar = bench.MethodStats(tok_s=[10.0, 20.0, 40.0, 30.0], tpot_ms=[1.0] * 4, tau=[1.0] * 4, budget=[0.0] * 4,
                           prompts=[0, 1, 2, 3])
    # same speed as AR on prompts 0 and 3, twice AR on 1 and 2: ratios 1, 2, 2, 1 -> median 1.5
    a = bench.MethodStats(tok_s=[10.0, 40.0, 80.0, 30.0], tpot_ms=[1.0] * 4, tau=[1.0] * 4, budget=[1.0] * 4,
                          prompts=[0, 1, 2, 3])
    assert bench.paired_ratio(a, ar) == pytest.approx(1.5)
    assert bench.paired_ratio(ar, ar) == pytest.approx(1.0)
    # prompt order does not matter: pairs go by prompt index
    b = bench.MethodStats(tok_s=[30.0, 10.0], tpot_ms=[1.0] * 2, tau=[1.0] * 2, budget=[1.0] * 2, prompts=[3, 0])
    assert bench.paired_ratio(b, ar) == pytest.approx(1.0)
    rows = {r["method"]: r for r in bench.summary_rows({"ar": ar, "ddtree:4": a})}
    assert rows["ddtree:4"]["speedup_paired"] == pytest.approx(1.5)
    assert rows["ddtree:4"]["speedup_vs_ar"] == pytest.approx(35.0 / 25.0, abs=1e-3)  # ratio of medians
    assert rows["ar"]["speedup_paired"] is None
    assert bench.paired_ratio(bench.MethodStats(tok_s=[1.0], prompts=[7]), ar) is None  # nothing shared


def test_bench_cli_says_when_the_set_is_smaller_than_limit(backend32, two_prompts, monkeypatch, capsys):
    import dtree.backend

    monkeypatch.setattr(dtree.backend, "Backend", lambda *a, **k: backend32)
    assert main(["bench", "--dataset", str(two_prompts), "--limit", "5", "--methods", "ar", "--max-new-tokens", "2",
                 "--no-store"]) == 0
    assert "holds 2 prompt(s), fewer than --limit 5: benching those" in capsys.readouterr().err
    assert main(["bench", "--dataset", str(two_prompts), "--limit", "2", "--methods", "ar", "--max-new-tokens", "2",
                 "--no-store"]) == 0
    assert "fewer than --limit" not in capsys.readouterr().err


def test_bench_cli_names_the_oracle_fixed_budget(backend32, two_prompts, monkeypatch, capsys, tmp_path):
    """With two or more fixed budgets benched, the bench says which was fastest (issue 3's oracle) and writes the
    same into its JSON; the named budget is the summary row of highest median tokens/s among them."""
    import dtree.backend

    monkeypatch.setattr(dtree.backend, "Backend", lambda *a, **k: backend32)
    out = tmp_path / "b.json"
    assert main(["bench", "--dataset", str(two_prompts), "--limit", "2", "--methods", "ar,ddtree:1,ddtree:3",
                 "--max-new-tokens", "6", "--no-store", "--out", str(out)]) == 0
    summary = json.loads(out.read_text())
    fixed = [r for r in summary["summary"] if r["method"].startswith("ddtree:")]
    best = max(fixed, key=lambda r: r["tok_s"])
    assert summary["oracle"]["oracle"] == {"method": best["method"], "budget": int(best["method"][7:]),
                                           "tok_s": best["tok_s"]}
    assert summary["oracle"]["oracle_speedup_vs_ar"] == best["speedup_vs_ar"]
    assert f"best fixed budget (the oracle, among ddtree:1, ddtree:3): {best['method']}" in capsys.readouterr().out
    assert main(["bench", "--dataset", str(two_prompts), "--limit", "1", "--methods", "ar,ddtree:1",
                 "--max-new-tokens", "2", "--no-store", "--out", str(out)]) == 0
    assert json.loads(out.read_text())["oracle"] is None and "oracle" not in capsys.readouterr().out
