"""Drafter diagnostics: per-depth top-1 agreement and q calibration, on hand-built rounds (answers worked out by hand
in the comments), on real runs of the embedded model, through the CLI and on the Runs page."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from streamlit.testing.v1 import AppTest

from dtree import diagnostics, figures
from dtree.cli import main
from dtree.errors import InputError
from dtree.records import RoundRecord, RunRecord
from dtree.trees import DraftTree, root_only_tree

from .builders import draft_tree
from .charts import charts as _charts
from .charts import title as _title

ROOT = Path(__file__).resolve().parent.parent
RUNS_PAGE = str(ROOT / "app_pages" / "6_runs.py")
ANCHOR = 7


def _tree(nodes: list[tuple[int, int, int, float]]) -> DraftTree:
    """A draft tree from ``(parent, token, rank, drafter prob)`` per non-root node, in insertion order."""
    return draft_tree(nodes, ANCHOR)


def _round(i: int, marg: list[list[tuple[int, float]]], nodes, accepted: list[int], bonus: int) -> RoundRecord:
    tree = _tree(nodes)
    return RoundRecord(index=i, start=10 + i, anchor=ANCHOR,
                       marg_tokens=np.array([[t for t, _ in row] for row in marg], np.int64),
                       marg_logprobs=np.log(np.array([[p for _, p in row] for row in marg], np.float32)),
                       tree=tree, budget=tree.n_nodes, budget_reason="test", accepted=accepted, bonus=bonus,
                       committed=[int(tree.tokens[j]) for j in accepted])


# gamma = 3, top-2 marginals per depth; every round verifies the top-1 chain 10 -> 20 -> 30.
MARG = [[(10, 0.6), (11, 0.4)], [(20, 0.5), (21, 0.3)], [(30, 0.9), (31, 0.1)]]
CHAIN = [(0, 10, 0, 0.6), (1, 20, 0, 0.5), (2, 30, 0, 0.9)]  # q = 0.6, 0.3, 0.27


def chain_rounds() -> list[RoundRecord]:
    return [
        _round(0, MARG, CHAIN, [0, 1, 2], bonus=31),  # target: 10, 20, then 31 (drafter said 30): m = 2
        _round(1, MARG, CHAIN, [0], bonus=11),  # target: 11 at depth 1: m = 0
        _round(2, MARG, CHAIN, [0, 1, 2, 3], bonus=99),  # target: 10, 20, 30, then 99 beyond gamma: m = 3
    ]


def test_hand_built_chain_rounds():
    d = diagnostics.diagnose_rounds(chain_rounds())
    a = d.agreement
    # depth 1: all 3 rounds, top-1 10 matches in rounds 0 and 2 (11 in round 1 is rank 1, so in the top-2)
    # depth 2: rounds with m >= 1 (0 and 2), both 20; depth 3: rounds 0 and 2, 30 matches in round 2 only
    assert a["depth"].tolist() == [1, 2, 3]
    assert a["rounds"].tolist() == [3, 2, 2]
    assert a["agree"].tolist() == [2, 2, 1]
    assert a["in_topk"].tolist() == [3, 2, 2]
    assert a["rate"].tolist() == pytest.approx([2 / 3, 1.0, 0.5])
    assert a["reach"].tolist() == pytest.approx([2 / 3, 2 / 3, 1 / 3])
    # chain-equivalent tau = 1 + 2/3 + 2/3 * 1 + 2/3 * 1 * 1/2 = 8/3 = mean tau (3 + 1 + 4) / 3
    assert d.summary["chain_equivalent_tau"] == pytest.approx(8 / 3)
    assert d.summary["mean_tau"] == pytest.approx(8 / 3)
    # calibration, 10 log bins from 1e-4: q = 0.6 in bin 9 [0.398, 1): 3 nodes, accepted in rounds 0 and 2;
    # q = 0.3 and 0.27 in bin 8 [0.158, 0.398): 6 nodes, accepted 2 + 1
    cal = d.calibration
    assert cal["bin"].tolist() == [8, 9]
    assert cal["nodes"].tolist() == [6, 3] and cal["accepted"].tolist() == [3, 2]
    assert cal["mean_q"].tolist() == pytest.approx([0.285, 0.6])
    assert cal["rate"].tolist() == pytest.approx([0.5, 2 / 3])
    assert cal["q_lo"].iloc[1] == pytest.approx(10 ** -0.4) and cal["q_hi"].iloc[1] == 1.0
    assert d.summary["ece"] == pytest.approx((6 * 0.215 + 3 * (2 / 3 - 0.6)) / 9)
    byd = d.calibration_by_depth.groupby("depth")[["nodes", "accepted"]].sum()
    assert byd["nodes"].tolist() == [3, 3, 3] and byd["accepted"].tolist() == [2, 2, 1]
    assert d.summary["mean_phi"] == pytest.approx(0.6 + 0.3 + 0.27)  # Phi(3) of each round
    assert d.summary["mean_accepted_drafts"] == pytest.approx(5 / 3)
    assert d.summary["n_nodes"] == 9 and d.summary["n_rounds"] == 3


def test_hand_built_tree_round_and_ar_rounds_skipped():
    marg = [[(10, 0.7), (11, 0.3)], [(20, 0.6), (21, 0.4)]]  # gamma = 2
    nodes = [(0, 10, 0, 0.7), (0, 11, 1, 0.3), (1, 20, 0, 0.6), (2, 20, 0, 0.6)]  # q = 0.7, 0.3, 0.42, 0.18
    tree_round = _round(0, marg, nodes, [0, 2, 4], bonus=55)  # target took 11 (rank 1), then 20; m = 2 = gamma
    ar = RoundRecord(1, 13, 5, np.zeros((0, 0), np.int64), np.zeros((0, 0), np.float32), root_only_tree(5), 0, "AR",
                     [0], 6, [5])
    d = diagnostics.diagnose_rounds([tree_round, ar], n_bins=4, q_min=0.01)
    # depth 1: top-1 is 10, target 11 -> disagree (but in top-2); depth 2: reached through the rank-1 node, 20 agrees
    assert d.agreement["agree"].tolist() == [0, 1] and d.agreement["rounds"].tolist() == [1, 1]
    assert d.agreement["in_topk"].tolist() == [1, 1]
    # the chain would stop at depth 1: chain-equivalent tau 1, while the tree got tau 3
    assert d.summary["chain_equivalent_tau"] == 1.0 and d.summary["mean_tau"] == 3.0
    # 4 bins with edges 0, 0.0316, 0.1, 0.316, 1: q 0.18 and 0.3 in bin 2 (both accepted), 0.42 and 0.7 in bin 3 (none)
    assert d.calibration["bin"].tolist() == [2, 3]
    assert d.calibration["accepted"].tolist() == [2, 0] and d.calibration["nodes"].tolist() == [2, 2]
    assert d.calibration["mean_q"].tolist() == pytest.approx([0.24, 0.56])
    assert d.summary["n_rounds"] == 1  # the AR round is skipped
    with pytest.raises(InputError, match="no speculative round"):
        diagnostics.diagnose_rounds([ar])


def test_formula_and_bad_input():
    alpha, gamma = 0.7, 5  # constant rate: Leviathan et al. Eq. 1
    assert diagnostics.chain_equivalent_tau([alpha] * gamma) == pytest.approx((1 - alpha ** (gamma + 1)) / (1 - alpha))
    assert diagnostics.chain_equivalent_tau([1.0, float("nan"), 1.0]) == 2.0  # depth 2 never reached
    with pytest.raises(InputError):
        diagnostics.chain_equivalent_tau([1.2])
    with pytest.raises(InputError, match="n_bins"):
        diagnostics.calibration_table(chain_rounds(), n_bins=0)
    with pytest.raises(InputError, match="q_min"):
        diagnostics.calibration_table(chain_rounds(), q_min=1.0)


def test_json_round_trip_and_figures(tmp_path):
    d = diagnostics.diagnose_rounds(chain_rounds(), meta={"dataset": "hand"})
    path = d.save(tmp_path / "sub" / "diagnostics.json")
    back = diagnostics.load(path)
    assert back.to_dict() == d.to_dict()
    assert back.meta["dataset"] == "hand"
    (tmp_path / "x.json").write_text('{"a": 1}')
    with pytest.raises(InputError, match="not a dtree diagnostics"):
        diagnostics.load(tmp_path / "x.json")
    with pytest.raises(InputError, match="no diagnostics file"):
        diagnostics.load(tmp_path / "missing.json")
    fa, fc = figures.depth_agreement_figure(d), figures.calibration_figure(d)
    assert "chain-equivalent tau 2.67" in fa.layout.title.text
    assert fa.layout.xaxis.title.text.startswith("depth") and fa.layout.yaxis.title.text
    assert list(fa.data[0].y) == pytest.approx([2 / 3, 1.0, 0.5])
    diag_line = next(t for t in fc.data if t.name.startswith("y = x"))
    assert np.allclose(diag_line.x, diag_line.y)
    assert fc.layout.xaxis.type == "log" and "probability" in fc.layout.xaxis.title.text
    assert "observed" in fc.layout.yaxis.title.text


# ------------------------------------------------------------------------------------- real runs of the embedded model

PROMPT = "What is 12 + 30? Answer briefly."


@pytest.fixture(scope="module")
def real_runs(tmp_path_factory, target32, drafter32):
    """One prompt decoded with chain, ddtree:4 and ar (12 new tokens each), logged to a store."""
    from dtree import engine
    from dtree.engine import DecodeConfig
    from dtree.store import TraceStore

    path = tmp_path_factory.mktemp("diag") / "runs.sqlite"
    runs = {}
    with TraceStore(path) as store:
        for method, budget in (("chain", None), ("ddtree", 4), ("ar", None)):
            runs[method] = engine.generate(target32, target32.encode_prompt(PROMPT), DecodeConfig(
                method, budget=budget, max_new_tokens=12), drafter=drafter32, sink=store, prompt_text=PROMPT)
    return path, runs


def _check_consistent(d: diagnostics.Diagnostics, runs: list[RunRecord]) -> None:
    rounds = [r for run in runs for r in run.rounds]
    a = d.agreement
    assert a["rounds"].iloc[0] == len(rounds)  # every round knows the target's depth-1 token
    assert (np.diff(a["rounds"]) <= 0).all() and (a["agree"] <= a["in_topk"]).all()
    assert (a["in_topk"] <= a["rounds"]).all()
    rates = a["rate"].dropna()
    assert ((rates >= 0) & (rates <= 1)).all()
    cal = d.calibration
    assert ((cal["rate"] >= 0) & (cal["rate"] <= 1)).all() and ((cal["mean_q"] > 0) & (cal["mean_q"] <= 1)).all()
    assert cal["nodes"].sum() == sum(r.budget for r in rounds)  # every drafted node counted once
    assert cal["accepted"].sum() == sum(r.tau - 1 for r in rounds)  # the accepted drafts
    assert d.calibration_by_depth["nodes"].sum() == cal["nodes"].sum()


def test_real_chain_run_tau_matches_agreement(real_runs):
    _, runs = real_runs
    chain = runs["chain"]
    d = diagnostics.diagnose_runs([chain])
    _check_consistent(d, [chain])
    # for a chain, acceptance at depth d == top-1 agreement at depths 1..d, so the rates telescope to the mean tau
    assert d.summary["chain_equivalent_tau"] == pytest.approx(chain.mean_tau, abs=1e-12)
    # agreement per depth recomputed straight from the chain's nodes: node d accepted <=> top-1 at d matched
    for row in d.agreement.itertuples():
        reached = [r for r in chain.rounds if r.tau - 1 >= row.depth - 1]
        assert row.rounds == len(reached)
        assert row.agree == sum(r.tau - 1 >= row.depth for r in reached)


def test_real_tree_run_and_store_round_trip(real_runs):
    from dtree.store import TraceStore

    path, runs = real_runs
    tree = runs["ddtree"]
    d = diagnostics.diagnose_runs([tree])
    _check_consistent(d, [tree])
    with TraceStore(path) as store:
        stored = diagnostics.diagnose_store(store, [tree.run_id, runs["ar"].run_id])  # AR rounds skipped
        both = diagnostics.diagnose_store(store, [runs["chain"].run_id, tree.run_id])
        with pytest.raises(InputError, match="no speculative round") as err:
            diagnostics.diagnose_store(store, [runs["ar"].run_id])
        assert err.value.field == "run"  # the CLI prints it as --run
        with pytest.raises(InputError):
            diagnostics.diagnose_store(store, [10_000])
    assert stored.agreement.equals(d.agreement) and stored.calibration.equals(d.calibration)
    _check_consistent(both, [runs["chain"], tree])
    assert both.summary["n_runs"] == 2


def test_cli_diagnose_stored_runs_and_bad_input(real_runs, tmp_path, capsys):
    path, runs = real_runs
    out = tmp_path / "d.json"
    ids = f"{runs['chain'].run_id},{runs['ddtree'].run_id}"
    assert main(["diagnose", "--run", ids, "--store", str(path), "--out", str(out), "--bins", "5"]) == 0
    text = capsys.readouterr().out
    assert "chain-equivalent tau" in text
    d = diagnostics.load(out)
    # the printed per-depth table lists the depths some round reached; the rest are named in one line, no NaN rows
    reached = d.agreement[d.agreement["rounds"] > 0]
    table = text.split("\n\n")[0].splitlines()
    assert len(table) == 1 + len(reached) + (len(reached) < len(d.agreement)) and "NaN" not in text.split("\n\n")[0]
    assert [int(line.split()[0]) for line in table[1:1 + len(reached)]] == reached["depth"].tolist()
    assert d.meta["run_ids"] == [runs["chain"].run_id, runs["ddtree"].run_id]
    assert d.calibration["bin"].max() <= 4
    _check_consistent(d, [runs["chain"], runs["ddtree"]])
    store = tmp_path / "new.sqlite"
    for args in (["--method", "ar"], ["--method", "ddtree:x"], ["--method", "chain,ddtree:4"], ["--limit", "0"],
                 ["--dataset", "nope"], ["--out", "d.csv"], ["--out", str(tmp_path)], ["--bins", "0"],
                 ["--max-new-tokens", "0"], ["--run", str(runs["chain"].run_id), "--store", str(path), "--out",
                                             str(tmp_path)],
                 ["--run", "1", "--store", str(tmp_path / "missing.sqlite")], ["--run", "x"]):
        assert main(["diagnose", "--store", str(store), *args]) == 2, args
        assert "error:" in capsys.readouterr().err
    assert not store.exists()
    assert main(["diagnose", "--run", str(runs["ar"].run_id), "--store", str(path)]) == 2


def test_cli_diagnose_decodes_a_jsonl_set(target32, drafter32, tmp_path, capsys):
    prompts = tmp_path / "p.jsonl"
    prompts.write_text(json.dumps({"question": PROMPT}) + "\n")
    out = tmp_path / "ck" / "diagnostics.json"
    assert main(["diagnose", "--dataset", str(prompts), "--limit", "1", "--max-new-tokens", "8", "--dtype", "float32",
                 "--device", "cpu", "--no-store", "--out", str(out), "--json"]) == 0
    printed = json.loads(capsys.readouterr().out)
    d = diagnostics.load(out)
    assert printed == d.to_dict()
    assert d.meta["method"] == "chain" and d.meta["n_prompts"] == 1 and d.meta["max_new_tokens"] == 8
    assert d.summary["chain_equivalent_tau"] == pytest.approx(d.summary["mean_tau"])


def test_runs_page_shows_diagnostics(real_runs, tmp_path, monkeypatch):
    import shutil

    import dtree.ui

    src, runs = real_runs
    path = tmp_path / "runs.sqlite"
    shutil.copy(src, path)  # this test deletes a run
    monkeypatch.setattr(dtree.ui, "DEFAULT_STORE", str(path))
    shipped = diagnostics.diagnose_rounds(chain_rounds(), meta={"dataset": "hand-built", "n_prompts": 3})
    monkeypatch.setattr(diagnostics, "shipped_path", lambda: shipped.save(tmp_path / "ck" / "diagnostics.json"))
    at = AppTest.from_file(RUNS_PAGE, default_timeout=180).run()
    assert not at.exception and not at.error, (at.exception, [e.value for e in at.error])
    pick = at.multiselect[0]
    assert len(pick.options) == 2 and not any("· ar ·" in o for o in pick.options) and len(pick.value) == 1
    titles = [_title(f) for f in _charts(at)]
    assert any(t.startswith("Drafter top-1 vs target per depth") for t in titles), titles
    assert any(t.startswith("Calibration of path probability q") for t in titles), titles
    assert len(titles) == 5  # phase shares, the selected run's two figures, the shipped checkpoint's two
    assert sum("chain-equivalent tau 2.67 (logged mean tau 2.67, 3 rounds)" in t for t in titles) == 1
    pick.set_value([runs["chain"].run_id, runs["ddtree"].run_id]).run()
    assert not at.exception
    n = len(runs["chain"].rounds) + len(runs["ddtree"].rounds)
    assert any(f"{n} rounds" in t for t in (_title(f) for f in _charts(at))), n
    assert any("chain-equivalent tau" in c.value for c in at.caption)
    # deleting a diagnosed run: the section goes on with the runs that are left
    next(s for s in at.selectbox if s.label == "Run to delete").select(runs["chain"].run_id).run()
    at.checkbox[0].check().run()
    next(b for b in at.button if b.label == "Delete run").click().run()
    assert not at.exception and not at.error, (at.exception, [e.value for e in at.error])
    assert at.multiselect[0].value == [runs["ddtree"].run_id]
    n = len(runs["ddtree"].rounds)
    assert any(f"{n} rounds" in t for t in (_title(f) for f in _charts(at))), n
