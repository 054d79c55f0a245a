"""Replay / what-if (dtree.replay) and cost weights (dtree.cost.CostWeights).

Exactness is checked on real logged runs of the embedded target (fp32) with a randomly initialised 1-layer drafter,
and on self-consistent synthetic traces whose acceptance comes from dtree.trees.walk (not from replay's matching).
"""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from dtree.cost import CostModel, CostWeights
from dtree.errors import InputError
from dtree.records import RunRecord
from dtree.replay import (
    matched_depths,
    oracle_budget,
    replay_round,
    replay_run,
    round_marginals,
    sweep_budgets,
    sweep_weights,
    synthetic_run,
)
from dtree.trees import build_caddtree, build_ddtree, walk

NODES = np.array([0, 1, 2, 4, 8, 16, 32, 64, 128, 256])


def cost_model(cd=0.005, a=0.02, b=1e-4, c=0.0, contexts=(64, 1024)) -> CostModel:
    rows = np.stack([(a + b * NODES + c * NODES**2) * (1 + i) for i in range(len(contexts))])
    return CostModel.from_measurements(cd, list(contexts), NODES, rows, {"target": "t", "dtype": "float32"})


# ----------------------------------------------------------------------------------------------------------------------
# cost weights
# ----------------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("kw, field", [({"cd_scale": -1}, "cd_scale"), ({"cv_scale": float("nan")}, "cv_scale"),
                                       ({"cv_a": -0.1}, "cv_a"), ({"cv_b": float("inf")}, "cv_b"),
                                       ({"cv_c": -1e-9}, "cv_c"), ({"cd_s": float("nan")}, "cd_s")])
def test_weights_reject_negative_and_nan(kw, field):
    with pytest.raises(InputError) as e:
        CostWeights(**kw)
    assert e.value.field == field


@pytest.mark.parametrize("text, field", [("cd=-1", "cd_scale"), ("cv=nan", "cv_scale"), ("cv_b=-2", "cv_b"),
                                         ("cd=x", "cost_weights"), ("foo=1", "cost_weights"), ("cd", "cost_weights"),
                                         ("cd=1,cd_scale=2", "cost_weights")])
def test_weights_parse_errors_name_the_field(text, field):
    with pytest.raises(InputError) as e:
        CostWeights.parse(text)
    assert e.value.field == field


def test_weighted_cost_model_scales_overrides_and_round_trips(tmp_path):
    cm = cost_model()
    w = cm.weighted(CostWeights.parse("cd=1.5,cv=0.8"))
    assert w.cd_s == pytest.approx(1.5 * cm.cd_s)
    n = np.arange(0, 300, 7)
    np.testing.assert_allclose(w.cv(n, 500), 0.8 * cm.cv(n, 500))
    # weights apply to the profile, not on top of earlier weights
    again = w.weighted(CostWeights(cd_scale=2.0))
    assert again.cd_s == pytest.approx(2.0 * cm.cd_s)
    np.testing.assert_allclose(again.cv(n, 500), cm.cv(n, 500))
    # analytic override: a + b n + c n^2, independent of L, times cv_scale
    an = cm.weighted(CostWeights.parse("cv_a=0.05,cv_b=0.002,cv_c=1e-5,cv=2,cd_s=0.004"))
    assert an.cd_s == 0.004
    np.testing.assert_allclose(an.cv(n, 10), 2 * (0.05 + 0.002 * n + 1e-5 * n**2))
    np.testing.assert_allclose(an.cv(n, 5000), an.cv(n, 10))
    # stored with the model: to_dict / save / load keep the weights and the profile
    d = an.to_dict()
    assert d["weights"]["cv_b"] == 0.002 and d["cd_s"] == cm.cd_s
    back = CostModel.load(an.save(tmp_path / "w.json"))
    assert back.cd_s == an.cd_s and back.weights == an.weights
    np.testing.assert_allclose(back.cv(n, 700), an.cv(n, 700))
    np.testing.assert_allclose(back.cv_fit_s, cm.cv_fit_s)
    assert json.loads((tmp_path / "w.json").read_text())["weights"]["cd_s"] == 0.004
    # identity weights leave no trace
    assert cm.weighted(CostWeights()).weights is None and cm.to_dict()["weights"] is None


# ----------------------------------------------------------------------------------------------------------------------
# synthetic traces (fast)
# ----------------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("method, budget", [("ddtree", 1), ("ddtree", 16), ("ddtree", 64), ("chain", None),
                                            ("caddtree", 48)])
def test_replay_at_logged_budget_reproduces_synthetic_taus(method, budget):
    cm = cost_model(b=3e-4)
    run = synthetic_run(60, np.random.default_rng(7), k=64, method=method, budget=budget or 0, cost=cm)
    s = replay_run(run, method, budget, cm)
    np.testing.assert_array_equal(s.taus, [r.tau for r in run.rounds])
    np.testing.assert_array_equal(s.n_nodes, [r.budget for r in run.rounds])
    assert s.exact and s.mean_tau == pytest.approx(run.mean_tau)
    assert len(set(s.taus.tolist())) > 1  # the trace is not trivial


def test_budget_prefix_property_and_sweep_monotone():
    cm = cost_model()
    run = synthetic_run(40, np.random.default_rng(3), k=64, budget=64, cost=cm)
    for rnd in run.rounds[:10]:
        marg = round_marginals(rnd)
        big = build_ddtree(marg, rnd.anchor, 64)
        for b in (1, 5, 17, 40):
            small = build_ddtree(marg, rnd.anchor, b)
            np.testing.assert_array_equal(small.tokens, big.tokens[: b + 1])
            np.testing.assert_array_equal(small.parents, big.parents[: b + 1])
    df = sweep_budgets(run, range(1, 65), cm)
    dd = df[df.method == "ddtree"]
    assert list(dd.budget) == list(range(1, 65))
    assert (np.diff(dd.mean_tau.to_numpy()) >= 0).all()
    assert dd.mean_tau.iloc[-1] > dd.mean_tau.iloc[0]
    # every sweep entry equals a direct per-round replay with the builders
    g_stream = [t for r in run.rounds for t in r.committed] + [run.rounds[-1].bonus]
    for b in (1, 7, 33):
        taus, off = [], 0
        for rnd in run.rounds:
            rr = replay_round(rnd, g_stream[off: off + 16], "ddtree", b, cm)
            taus.append(rr.tau)
            off += rnd.tau
        assert dd[dd.budget == b].mean_tau.item() == pytest.approx(np.mean(taus))
    best = oracle_budget(df)
    assert best.pred_tok_s == dd.pred_tok_s.max()
    assert oracle_budget(df, budgets=[4, 8]).budget in (4, 8)


def test_caddtree_vectorised_choice_matches_builder_and_cost_extremes():
    run = synthetic_run(30, np.random.default_rng(11), k=64, budget=64)
    for cm in (cost_model(b=2e-4), cost_model(b=0, c=3e-6), cost_model(cd=0.001, b=5e-3)):
        s = replay_run(run, "caddtree", 64, cm)
        direct = [build_caddtree(round_marginals(r), r.anchor, cm, r.start, 64).n_nodes for r in run.rounds]
        np.testing.assert_array_equal(s.n_nodes, direct)
    flat = cost_model(b=0.0)
    s = replay_run(run, "caddtree", 64, flat)
    assert (s.n_nodes == 64).all()
    steep = cost_model(cd=0.0, a=0.001, b=0.5)
    s = replay_run(run, "caddtree", 64, steep)
    assert (s.n_nodes <= 1).all()


def test_caddtree_argmax_choice_on_measured_cv_matches_builder():
    """On a measured, stepped (non-convex) Cv the builder takes the argmax of theta; replay's vectorised choice must
    pick the same node count per round, and must differ from the paper's greedy stop somewhere on this curve."""
    from dtree.replay import _caddtree_choice, _cost_tables, prepare

    run = synthetic_run(30, np.random.default_rng(13), k=64, budget=64)
    steps = np.where(NODES >= 2, 0.012, 0.0) + np.where(NODES >= 16, 0.004, 0.0) + 1e-5 * NODES
    rows = np.stack([(0.03 + steps) * (1 + i) for i in range(2)])
    cm = CostModel.from_measurements(0.004, [64, 1024], NODES, rows, {"target": "t", "dtype": "float32"})
    measured = cm.with_curve("measured")
    s = replay_run(run, "caddtree-rawcv", 64, cm)
    direct = [build_caddtree(round_marginals(r), r.anchor, measured, r.start, 64).n_nodes for r in run.rounds]
    np.testing.assert_array_equal(s.n_nodes, direct)
    p = prepare(run, 64, cm, raw_cv=True)
    cd, cv = _cost_tables(p)
    greedy = _caddtree_choice(p, cd, cv, 64, stop="greedy")
    assert (greedy != s.n_nodes).any() and (greedy <= s.n_nodes).all()
    np.testing.assert_array_equal(_caddtree_choice(p, cd, cv, 64, stop="argmax"), s.n_nodes)
    with pytest.raises(ValueError, match="stop"):
        _caddtree_choice(p, cd, cv, 64, stop="best")


def test_predicted_time_and_tokens_per_second():
    cm = cost_model()
    run = synthetic_run(20, np.random.default_rng(5), k=32, budget=8, cost=cm)
    s = replay_run(run, "ddtree", 8, cm)
    expect = np.array([cm.cd_s + cm.cv(8, r.start) for r in run.rounds])
    np.testing.assert_allclose(s.round_s, expect)
    assert s.pred_tok_s == pytest.approx(s.taus.sum() / expect.sum())
    with_overhead = replay_run(run, "ddtree", 8, cm, overhead=True)
    np.testing.assert_allclose(with_overhead.round_s, expect + 0.7e-3)


def test_budgets_above_logged_topk_are_dropped():
    cm = cost_model()
    run = synthetic_run(10, np.random.default_rng(2), k=8, budget=8, cost=cm)
    df = sweep_budgets(run, [1, 4, 8, 9, 64], cm)
    assert list(df[df.method == "ddtree"].budget) == [1, 4, 8]
    assert df.attrs["dropped_budgets"] == [9, 64] and df.attrs["budget_cap"] == 8
    cad = df[df.method == "caddtree"].iloc[0]
    assert cad.mean_budget <= 8


def test_sweep_weights_grid():
    cm = cost_model(b=3e-4)
    run = synthetic_run(30, np.random.default_rng(9), k=64, budget=16, cost=cm)
    df = sweep_weights(run, [0.5, 1.0, 4.0], [0.25, 1.0, 4.0], cm, max_budget=64)
    assert len(df) == 9
    # more expensive verification -> fewer nodes; more expensive drafting -> more nodes
    for cd in (0.5, 1.0, 4.0):
        mb = df[df.cd_scale == cd].sort_values("cv_scale").mean_budget.to_numpy()
        assert (np.diff(mb) <= 0).all()
    one = df[(df.cd_scale == 1.0) & (df.cv_scale == 1.0)].iloc[0]
    s = replay_run(run, "caddtree", 64, cm)
    assert one.pred_tok_s == pytest.approx(s.pred_tok_s) and one.pred_tok_s_base == pytest.approx(s.pred_tok_s)
    with pytest.raises(InputError):
        sweep_weights(run, [-1.0], [1.0], cm)


def test_empty_and_bad_traces_raise():
    cm = cost_model()
    with pytest.raises(InputError):
        replay_run([], "ddtree", 4, cm)
    empty = RunRecord("ddtree", {}, "t", "d", "float32", "cpu", "", [1, 2])
    with pytest.raises(InputError):
        replay_run(empty, "ddtree", 4, cm)
    with pytest.raises(InputError):
        sweep_budgets([empty], [1, 2], cm)
    run = synthetic_run(5, np.random.default_rng(0), k=16, budget=4)
    with pytest.raises(InputError):
        replay_run(run, "beam", 4, cm)
    with pytest.raises(InputError):
        replay_run(run, "caddtree", 4)  # no cost model anywhere
    with pytest.raises(InputError):
        sweep_budgets(run, [0], cm)


def test_matched_depths_against_walk():
    run = synthetic_run(15, np.random.default_rng(4), k=16, budget=16)
    for rnd in run.rounds:
        g = np.array(rnd.committed + [rnd.bonus] + [-1] * 16)
        md = matched_depths(rnd.tree, g)
        post = g[np.minimum(rnd.tree.depths + 1, len(g) - 1)]
        acc, _ = walk(rnd.tree, post)
        assert 1 + md.max() == len(acc) == rnd.tau


# ----------------------------------------------------------------------------------------------------------------------
# real logged runs (embedded target, fp32, random 1-layer drafter)
# ----------------------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def rand_drafter(target32, tmp_path_factory):
    from dtree.drafter import (
        DFlashDrafter,
        DrafterConfig,
        init_from_target,
        load_drafter,
        save_drafter,
    )

    d = DFlashDrafter(DrafterConfig(num_hidden_layers=1, qk_norm=False))
    init_from_target(d, target32.model)
    path = save_drafter(d, tmp_path_factory.mktemp("drafter") / "rand", dtype=None)
    d = load_drafter(path, target32)
    d.name = "rand"
    return d


def test_replay_of_real_logged_runs_reproduces_recorded_taus(target32, rand_drafter, tmp_store):
    from dtree.engine import DecodeConfig, generate

    cm = cost_model(cd=0.01, b=1e-3)
    ids = target32.encode_prompt("List the numbers from 1 to 20, separated by commas.")
    for method, budget in (("chain", None), ("ddtree", 8), ("caddtree", 16)):
        live = generate(target32, ids, DecodeConfig(method, budget=budget, max_new_tokens=12, topk_log=16),
                        drafter=rand_drafter, cost_model=cm, sink=tmp_store)
        run = tmp_store.load_run(live.run_id)
        s = replay_run(run, method, budget)  # the cost model stored with the run
        np.testing.assert_array_equal(s.taus, [r.tau for r in live.rounds])
        np.testing.assert_array_equal(s.n_nodes, [r.budget for r in live.rounds])
        assert s.exact
        # the replayed stream is the run's output
        stream = [t for r in run.rounds for t in r.committed] + [run.rounds[-1].bonus]
        assert stream[: len(run.output_ids)] == run.output_ids
        if method == "ddtree":
            df = sweep_budgets(run, [1, 2, 4, 8, 16])
            assert df[(df.method == "ddtree") & (df.budget == 8)].mean_tau.item() == pytest.approx(live.mean_tau)
            assert (np.diff(df[df.method == "ddtree"].mean_tau.to_numpy()) >= 0).all()
            assert math.isfinite(df.pred_tok_s.iloc[0])


# ----------------------------------------------------------------------------------------------------------------------
# variants (-cal, -spine) and the unimodality check
# ----------------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("method, budget", [("ddtree-spine", 8), ("ddtree-cal", 16), ("ddtree-cal-spine", 24),
                                            ("caddtree-spine", 48), ("caddtree-cal", 48), ("caddtree-cal-spine", 20)])
def test_variant_replay_equals_per_round_builders(method, budget):
    from dtree.calibration import fit_calibration

    cm = cost_model(b=3e-4)
    run = synthetic_run(40, np.random.default_rng(21), k=64, budget=16, cost=cm)
    cal = fit_calibration([run])
    s = replay_run(run, method, budget, cm, calibration=cal)
    stream = [t for r in run.rounds for t in r.committed] + [run.rounds[-1].bonus]
    taus, nodes, off = [], [], 0
    for rnd in run.rounds:
        rr = replay_round(rnd, stream[off: off + 16], method, budget, cm, calibration=cal)
        taus.append(rr.tau)
        nodes.append(rr.n_nodes)
        off += rnd.tau
        if "spine" in method:
            k = min(rnd.marg_tokens.shape[0], budget)
            np.testing.assert_array_equal(rr.tree.tokens[1: k + 1], rnd.marg_tokens[:k, 0])
    np.testing.assert_array_equal(s.taus, taus)
    np.testing.assert_array_equal(s.n_nodes, nodes)
    assert s.method == method and s.exact
    with pytest.raises(InputError):
        replay_run(run, method.replace("-spine", "") + "-cal", budget, cm)  # no calibration anywhere


def test_sweep_variant_rows_and_spine_guarantee_gain():
    cm = cost_model(b=1e-4)
    run = synthetic_run(60, np.random.default_rng(22), k=64, budget=16, cost=cm, p_top1=0.9)
    df = sweep_budgets(run, [4, 8, 16], cm, variants=["ddtree-spine:8", "ddtree-spine:200", "caddtree-spine"])
    spine = df[df.method == "ddtree-spine"]
    assert list(spine.budget) == [8]  # 200 is above the logged top-k: dropped with a note
    assert any("ddtree-spine:200 dropped" in n for n in df.attrs["notes"])
    assert spine.mean_tau.item() == pytest.approx(replay_run(run, "ddtree-spine", 8, cm).mean_tau)
    # the spine tree contains the chain, so it never accepts less than the chain in any round (spec 5 item 13's
    # "never fewer tokens than the chain"); plain DDTree of the same size gives no such guarantee
    chain = replay_run(run, "chain", None, cm)
    assert (replay_run(run, "ddtree-spine", 32, cm).taus >= chain.taus).all()
    assert (replay_run(run, "ddtree-spine", 15, cm).taus == chain.taus).all()  # budget gamma: it IS the chain


def test_check_unimodal_convex_cost_and_a_stepped_cost():
    from dtree.replay import check_unimodal
    from dtree.trees import best_path_logprobs, theta_curve_for

    run = synthetic_run(30, np.random.default_rng(23), k=64, budget=16)
    convex = cost_model(b=2e-4, c=1e-6)
    df = check_unimodal(run, convex, 64)
    assert df.attrs["share_unimodal"] == 1.0 and df.attrs["share_greedy_argmax"] == 1.0 and df["cv_convex"].all()
    assert len(df) == 30 and df.attrs["offending"] == []
    # a measured-looking step (flat, a jump at n = 6, flat), which CostModel's convex fit would never produce: theta
    # falls at the jump and rises again after it. Any object with cd_s and cv(n, L) serves as a cost model here.

    class SteppedCost:
        cd_s = 0.005

        def cv(self, n, L):
            return np.where(np.asarray(n) < 6, 0.02, 0.03)

    cm = SteppedCost()
    df = check_unimodal(run, cm, 64)
    assert not df["cv_convex"].any()
    for _, row in df.iterrows():  # brute force: the round's theta(n) over n = 0..64 along the DDTree order
        rnd = run.rounds[int(row["round"])]
        theta = theta_curve_for(best_path_logprobs(round_marginals(rnd), 64), cm, rnd.start)
        d = np.diff(theta) / theta.max()
        falls = np.flatnonzero(d < -1e-9)
        expect = not (falls.size and (d[falls[0]:] > 1e-9).any())
        assert row["unimodal"] == expect
        assert row["peak_n"] == int(np.argmax(theta))
    assert df.attrs["share_unimodal"] < 1
    assert len(df.attrs["offending"]) == int((~df["unimodal"]).sum())
    with pytest.raises(InputError):
        check_unimodal(run, cm, 64, method="chain")


# ----------------------------------------------------------------------------------------------------------------------
# replay vs live, oracle and the issue-4 report (scripts/issue4_report.py) on synthetic benches (no model)
# ----------------------------------------------------------------------------------------------------------------------


def _bench_runs(factors: dict[str, float], n_prompts: int = 2, seed: int = 31) -> list[RunRecord]:
    """Synthetic bench: an AR run and ddtree:4 / ddtree:8 / caddtree runs per prompt, each speculative run's measured
    decode time set so that its live tokens/s is ``factors[key]`` x its replayed prediction."""
    from dtree.replay import replay_as_logged

    cm = cost_model(b=3e-4)
    rng = np.random.default_rng(seed)
    runs = []
    for i in range(n_prompts):
        ar = RunRecord(method="ar", params={"method": "ar", "budget": None, "seed": i, "temperature": 0.0,
                                            "max_new_tokens": 64}, target="synthetic", drafter=None, dtype="float32",
                       device="cpu", prompt=f"p{i}", prompt_ids=list(range(10)), output_ids=list(range(40)),
                       status="complete", decode_s=2.0)
        runs.append(ar)
        for key, (method, budget) in {"ddtree:4": ("ddtree", 4), "ddtree:8": ("ddtree", 8),
                                      "caddtree": ("caddtree", 256)}.items():
            run = synthetic_run(12, rng, k=64, method=method, budget=budget, cost=cm)
            run.params.update(seed=i, max_new_tokens=64)
            run.prompt = f"p{i}"
            pred = replay_as_logged(run).pred_tok_s
            run.decode_s = len(run.output_ids) / (factors[key] * pred)
            runs.append(run)
    return runs


def test_logged_method_reads_variants_and_defaults():
    from dtree.replay import logged_method, replay_as_logged

    run = synthetic_run(5, np.random.default_rng(30), k=32, budget=8)
    assert logged_method(run) == ("ddtree", 8)
    run.params.update(spine=True)  # the engine stores the base method plus flags; the run's name carries them too
    assert logged_method(run) == ("ddtree-spine", 8)
    run.method, run.params = "caddtree-spine-cal", {"method": "caddtree", "budget": None}
    assert logged_method(run) == ("caddtree-cal-spine", 256)
    run.method, run.params = "chain", {"budget": 5}
    assert logged_method(run) == ("chain", None)
    cm = cost_model()
    run = synthetic_run(20, np.random.default_rng(30), k=64, method="caddtree", budget=40, cost=cm)
    s = replay_as_logged(run)  # the stored cost model and the logged maximum budget
    np.testing.assert_array_equal(s.taus, s.recorded_taus)
    np.testing.assert_array_equal(s.n_nodes, [r.budget for r in run.rounds])
    assert s.budget == 40 and s.exact


def test_replay_vs_live_errors_pooled_ratios_and_tau_match():
    from dtree.bench import stored_method_key
    from dtree.replay import replay_vs_live

    runs = _bench_runs({"ddtree:4": 1.0, "ddtree:8": 1.1, "caddtree": 0.5})
    nocost = synthetic_run(6, np.random.default_rng(32), k=64, method="ddtree", budget=4, cost=None)
    nocost.decode_s = 1.0
    per_run, per_method = replay_vs_live(runs + [nocost], key=lambda r: stored_method_key(r.method, r.params))
    assert "ar" not in set(per_run["method"]) and len(per_run) == 7
    m = per_method.set_index("method")
    assert m.loc["ddtree:4", "median_rel_err"] == pytest.approx(0.0, abs=1e-9)
    assert m.loc["ddtree:8", "median_rel_err"] == pytest.approx(0.1 / 1.1)
    assert m.loc["caddtree", "median_rel_err"] == pytest.approx(1.0)  # live is half the prediction
    # pooled: sum(pred tokens) / sum(pred s) over sum(live tokens) / sum(live s); live tokens include the bonus token
    g = per_run[(per_run.method == "caddtree")]
    assert m.loc["caddtree", "pooled_ratio"] == pytest.approx(
        (g.pred_tokens.sum() / g.pred_s.sum()) / (g.live_tokens.sum() / g.live_s.sum()))
    assert 1.5 < m.loc["caddtree", "pooled_ratio"] < 2.5
    assert list(m["within_tol"]) == [True, True, False]
    assert per_method.attrs["n_within"] == 2 and per_method.attrs["n_methods"] == 3
    assert (m["tau_match_share"] == 1.0).all() and per_method.attrs["tau_match_share"] == 1.0
    assert m.loc[["ddtree:8", "caddtree"], "exact"].all()
    # the ddtree:4 run without a cost model: its taus count, its time cannot be predicted (not exact, not in errors)
    assert (m.loc["ddtree:4", "n_runs"], m.loc["ddtree:4", "n_replayed"], m.loc["ddtree:4", "exact"]) == (3, 2, False)
    assert (m["pooled_pred_tok_s_overhead"] < m["pooled_pred_tok_s"]).all()  # logged build + commit time added
    # a run without any cost model: tau still replayed, no predicted time; with a fallback model it is timed
    assert per_run.iloc[-1]["cost_source"] == "none" and math.isnan(per_run.iloc[-1]["pred_tok_s"])
    per_run2, _ = replay_vs_live([nocost], fallback_cost=cost_model(b=3e-4))
    assert per_run2.iloc[0]["cost_source"] == "fallback" and per_run2.iloc[0]["pred_tok_s"] > 0
    # a caddtree run without a cost model cannot be replayed: listed with the reason
    bad = synthetic_run(4, np.random.default_rng(33), k=64, method="caddtree", budget=64, cost=cost_model())
    bad.cost_model = None
    per_run3, pm3 = replay_vs_live([bad])
    assert "cost_model" in per_run3.iloc[0]["error"] and pm3.iloc[0]["n_replayed"] == 0
    assert not pm3.iloc[0]["within_tol"]


def test_unimodal_summary_groups_caddtree_runs():
    from dtree.replay import unimodal_summary

    cm = cost_model(b=2e-4, c=1e-6)
    rng = np.random.default_rng(34)
    a = synthetic_run(10, rng, k=64, method="caddtree", budget=256, cost=cm)
    b = synthetic_run(8, rng, k=64, method="caddtree", budget=32, cost=cm)
    d = synthetic_run(8, rng, k=64, method="ddtree", budget=8, cost=cm)
    u = unimodal_summary([a, b, d])
    assert u["n_runs"] == 2 and u["n_rounds"] == 18 and u["share_unimodal"] == 1.0 and u["errors"] == []
    assert [(g["method"], g["max_budget"], g["checked_up_to"]) for g in u["groups"]] == [("caddtree", 256, 64),
                                                                                        ("caddtree", 32, 32)]
    assert math.isnan(unimodal_summary([d])["share_unimodal"])
    # a -rawcv run (measured cost curve) is checked in its own group but not pooled into the fitted-model figure
    import copy

    r = copy.deepcopy(a)
    r.method = "caddtree-rawcv"
    r.cost_model = {**r.cost_model, "curve": "measured"}
    u2 = unimodal_summary([a, b, r])
    assert [g["method"] for g in u2["groups"]] == ["caddtree", "caddtree", "caddtree-rawcv"]
    assert (u2["n_runs"], u2["n_rounds"]) == (2, 18) and u2["groups"][2]["n_rounds"] == 10


def test_oracle_comparison_picks_best_fixed_budget():
    from dtree.bench import oracle_comparison

    rows = [{"method": "ar", "tok_s": 10.0}, {"method": "ddtree:4", "tok_s": 14.0},
            {"method": "ddtree:16", "tok_s": 16.0}, {"method": "ddtree:64", "tok_s": 12.0},
            {"method": "ddtree:12", "tok_s": 30.0},  # not an oracle candidate (B not in 4..128 powers of two)
            {"method": "ddtree-spine:32", "tok_s": 40.0},  # variants are not the fixed-budget baseline
            {"method": "caddtree", "tok_s": 18.0}, {"method": "caddtree-cal", "tok_s": 8.0}]
    o = oracle_comparison(rows)
    assert o["oracle"] == {"method": "ddtree:16", "budget": 16, "tok_s": 16.0}
    assert o["candidates"] == ["ddtree:4", "ddtree:16", "ddtree:64"]
    assert o["reference"] == {"method": "ddtree:64", "tok_s": 12.0}
    assert o["ratios"] == [{"method": "caddtree", "tok_s": 18.0, "vs_oracle": 1.125, "vs_reference": 1.5},
                           {"method": "caddtree-cal", "tok_s": 8.0, "vs_oracle": 0.5, "vs_reference": 0.667}]
    o = oracle_comparison(rows, budgets=None)  # every plain fixed budget benched, ddtree:12 included
    assert o["oracle"] == {"method": "ddtree:12", "budget": 12, "tok_s": 30.0}
    assert o["candidates"] == ["ddtree:4", "ddtree:12", "ddtree:16", "ddtree:64"]
    o = oracle_comparison([{"method": "caddtree", "tok_s": 5.0}])
    assert o["oracle"] is None and o["ratios"][0]["vs_oracle"] is None and o["reference"]["tok_s"] is None


def test_oracle_summary_names_the_best_fixed_budget_benched():
    from dtree.bench import oracle_summary

    rows = [{"method": "ar", "tok_s": 10.0, "speedup_vs_ar": 1.0},
            {"method": "ddtree:8", "tok_s": 14.0, "speedup_vs_ar": 1.4},
            {"method": "ddtree:12", "tok_s": 17.0, "speedup_vs_ar": 1.7},  # any budget benched is a candidate
            {"method": "ddtree:64", "tok_s": 12.0, "speedup_vs_ar": 1.2},
            {"method": "ddtree-spine:16", "tok_s": 40.0, "speedup_vs_ar": 4.0},  # a variant is not a fixed budget
            {"method": "caddtree", "tok_s": 18.7, "speedup_vs_ar": 1.87}]
    rep, line = oracle_summary(rows)
    assert rep["oracle"]["method"] == "ddtree:12" and rep["oracle_speedup_vs_ar"] == 1.7
    assert rep["ratios"] == [{"method": "caddtree", "tok_s": 18.7, "vs_oracle": round(18.7 / 17.0, 3)}]
    assert set(rep) == {"oracle", "oracle_speedup_vs_ar", "candidates", "ratios"}  # no ddtree:64 reference here
    assert line.startswith("best fixed budget (the oracle, among ddtree:8, ddtree:12, ddtree:64): ddtree:12 at 17.00")
    assert "(1.70x AR)" in line and f"caddtree {18.7 / 17.0:.3f}x of it" in line
    no_ar = [{k: (None if k == "speedup_vs_ar" else v) for k, v in r.items()} for r in rows if r["method"] != "ar"]
    rep, line = oracle_summary(no_ar)
    assert rep["oracle_speedup_vs_ar"] is None and "x AR" not in line
    # one fixed budget is no choice: nothing to report
    assert oracle_summary([r for r in rows if r["method"] not in ("ddtree:8", "ddtree:12")]) == (None, None)
    assert oracle_summary([{"method": "ar", "tok_s": 10.0, "speedup_vs_ar": 1.0}]) == (None, None)


def test_ratio_interval_is_paired_over_prompts():
    from dtree.bench import MethodStats, ratio_interval

    rng = np.random.default_rng(3)
    hard = rng.uniform(5.0, 20.0, size=40)  # per-prompt speed varies 4x; a paired ratio must not see it
    base = MethodStats(tok_s=list(hard), prompts=list(range(40)))
    faster = MethodStats(tok_s=list(1.1 * hard[::-1]), prompts=list(range(40))[::-1])  # other order, same pairs
    assert ratio_interval(faster, base) == pytest.approx((1.1, 1.1))
    noisy = MethodStats(tok_s=list(1.1 * hard * rng.lognormal(0.0, 0.05, 40)), prompts=list(range(40)))
    lo, hi = ratio_interval(noisy, base)
    point = np.median(noisy.tok_s) / np.median(base.tok_s)
    assert lo < point < hi and 1.0 < lo and hi < 1.2
    lo99, hi99 = ratio_interval(noisy, base, level=0.99)
    assert lo99 <= lo and hi <= hi99
    assert ratio_interval(MethodStats(tok_s=[1.0], prompts=[0]), base) is None  # one shared prompt
    assert ratio_interval(MethodStats(tok_s=[1.0, 2.0], prompts=[50, 51]), base) is None  # none shared
    with pytest.raises(ValueError):
        ratio_interval(noisy, base, level=1.0)


def _report_module():
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parent.parent / "scripts" / "issue4_report.py"
    spec = importlib.util.spec_from_file_location("issue4_report", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_issue4_report_end_to_end_on_a_synthetic_bench(tmp_path, capsys):
    from dtree.bench import new_bench_tag
    from dtree.store import TraceStore

    report = _report_module()
    path = tmp_path / "runs.sqlite"
    tag = new_bench_tag("synthetic")
    with TraceStore(path) as store:
        for run in _bench_runs({"ddtree:4": 1.0, "ddtree:8": 1.05, "caddtree": 0.5}):
            store.save_run(run, tag=tag)
        ar_only = new_bench_tag("ar-only")
        store.save_run(RunRecord(method="ar", params={"method": "ar", "seed": 0}, target="t", drafter=None,
                                 dtype="float32", device="cpu", prompt="p", prompt_ids=[1, 2], output_ids=[3],
                                 status="complete", decode_s=0.1), tag=ar_only)
    out = tmp_path / "r.json"
    assert report.main(["--store", str(path), "--tag", tag, "--out", str(out)]) == 0
    text = capsys.readouterr().out
    assert "| caddtree |" in text and "**2 of 3 methods** within 15%" in text and "**100.0%** of 72 rounds" in text
    rep = json.loads(out.read_text())
    assert rep["tag"] == tag and rep["bench"]["n_prompts"] == 2
    assert [m["method"] for m in rep["methods"]] == ["ar", "ddtree:4", "ddtree:8", "caddtree"]
    assert rep["oracle"]["oracle"]["method"] in ("ddtree:4", "ddtree:8")
    cad = rep["oracle"]["ratios"][0]
    lo, hi = cad["vs_oracle_ci90"]
    assert cad["method"] == "caddtree" and lo <= cad["vs_oracle"] <= hi and cad["vs_reference_ci90"] is None
    assert "vs_caddtree" not in cad  # plain CaDDTree is the base of that column
    with TraceStore(path) as store:  # paired: median over the 2 prompts of each prompt's own tokens/s ratio
        runs = [store.load_run(int(i)) for i in store.list_runs().query("tag == @tag")["id"]]
    speed = {(r.method if r.method != "ddtree" else f"ddtree:{r.params['budget']}", r.params["seed"]): r.tokens_per_s
             for r in runs}
    best = rep["oracle"]["oracle"]["method"]
    want = sum(speed[("caddtree", i)] / speed[(best, i)] for i in (0, 1)) / 2
    assert cad["vs_oracle_paired"] == pytest.approx(want, abs=2e-3)
    assert [m["speedup_paired"] is None for m in rep["methods"]] == [True, False, False, False]
    with TraceStore(path) as store:
        rep_all = report.build_report(store, tag, oracle_budgets="all")
        assert rep_all["oracle"]["candidates"] == rep["oracle"]["candidates"] == ["ddtree:4", "ddtree:8"]
        with pytest.raises(InputError, match="oracle-budgets"):
            report.build_report(store, tag, oracle_budgets="some")
    pm = {m["method"]: m for m in rep["replay_vs_live"]["per_method"]}
    assert pm["ddtree:4"]["median_rel_err"] == pytest.approx(0.0, abs=1e-9) and not pm["caddtree"]["within_tol"]
    assert rep["replay_vs_live"]["tau_match_share"] == 1.0 and len(rep["replay_vs_live"]["per_run"]) == 6
    assert rep["unimodal"]["n_rounds"] == 24 and rep["unimodal"]["share_unimodal"] == 1.0
    # --latest is the newest bench (the AR-only one here), which has nothing to replay
    assert report.main(["--store", str(path), "--latest"]) == 2
    assert "no complete speculative run" in capsys.readouterr().err
    assert report.main(["--store", str(path), "--tag", "bench:nope"]) == 2
    assert "no bench tagged 'bench:nope'" in capsys.readouterr().err
    assert report.main(["--store", str(tmp_path / "missing.sqlite"), "--latest"]) == 2
    assert "no trace store" in capsys.readouterr().err
    assert not (tmp_path / "missing.sqlite").exists()
    assert report.main(["--store", str(path), "--latest", "--out", str(tmp_path / "r.csv")]) == 2


def test_replay_of_a_fallback_run_keeps_its_plain_steps(target32, rand_drafter, tmp_store):
    """A -fallback run mixes drafted rounds and plain target steps (no marginals). Replay at the logged config
    reproduces every tau and budget (the -adapt calibrations see the plain steps' tokens as the engine did), prices a
    plain step at Cv(0; L) without Cd under every method, and the budget sweep, the unimodality check and the live
    weight fit skip the plain steps instead of reading their empty marginals."""
    from dtree.engine import DecodeConfig, generate
    from dtree.replay import check_unimodal, live_weights_from_runs, replay_as_logged

    cm = cost_model(cd=0.5, b=1e-3)  # a drafter step dearer than any tree of 16 nodes can pay for
    ids = target32.encode_prompt("List the numbers from 1 to 20, separated by commas.")
    for method in ("caddtree-fallback", "caddtree-adapt-fallback"):
        live = generate(target32, ids, DecodeConfig(method, budget=16, max_new_tokens=24, topk_log=16),
                        drafter=rand_drafter,
                        cost_model=cm, sink=tmp_store)
        run = tmp_store.load_run(live.run_id)
        plain = np.array([r.marg_tokens.size == 0 for r in run.rounds])
        assert plain.any() and not plain.all(), [r.budget_reason for r in run.rounds]
        s = replay_as_logged(run)
        np.testing.assert_array_equal(s.taus, [r.tau for r in live.rounds])
        np.testing.assert_array_equal(s.n_nodes, [r.budget for r in live.rounds])
        assert any("plain target steps" in n for n in s.notes) and s.exact
        starts = np.array([r.start for r in run.rounds])
        expect = np.where(plain, 0.0, cm.cd_s) + np.array([float(cm.cv(int(n), int(L)))
                                                           for n, L in zip(s.n_nodes, starts)])
        np.testing.assert_allclose(s.round_s, expect)
        for other, b in (("ddtree", 4), ("chain", None), ("ar", None)):
            o = replay_run(run, other, b)
            assert (o.taus[plain] == 1).all() and (o.n_nodes[plain] == 0).all()
            np.testing.assert_allclose(o.round_s[plain], [float(cm.cv(0, int(L))) for L in starts[plain]])
        df = sweep_budgets(run, [1, 2, 4, 8])
        assert df[df.method == "ddtree"]["exact"].all() and len(df[df.method == "ddtree"]) == 4
        u = check_unimodal(run, method=method.removesuffix("-fallback"))
        assert u.attrs["n_rounds"] == int((~plain).sum())
        assert live_weights_from_runs(run).n_rounds == int((~plain).sum())


def test_replay_reads_the_methods_curve_not_the_runs():
    """A -rawcv run stores its cost model with the measured curve; replaying it as plain caddtree reads the convex
    fit (so that row is the paper's CaDDTree), as -rawcv it reads the measured curve."""
    from dtree.replay import prepare

    cm = cost_model(cd=0.01, b=1e-3)
    run = synthetic_run(10, np.random.default_rng(5), k=16, method="caddtree", budget=16, cost=cm)
    run.cost_model = cm.with_curve("measured").to_dict()
    assert prepare(run, 8).costs[0].curve == "convex"
    assert prepare(run, 8, raw_cv=True).costs[0].curve == "measured"
