"""Cost weights fitted to logged round timings (dtree.cost.fit_live_weights, dtree.replay.live_weights_from_runs,
replay_vs_live(timing_cost=...), replay_vs_live_crossfit) and the ``fit-cost`` CLI. No model: synthetic runs."""

from __future__ import annotations

import json

import numpy as np
import pytest

from dtree.cost import CostModel, CostWeights, fit_live_weights
from dtree.errors import InputError
from dtree.records import RunRecord
from dtree.replay import live_weights_from_runs, replay_vs_live, replay_vs_live_crossfit, synthetic_run

NODES = np.array([0, 1, 2, 4, 8, 16, 32, 64, 128, 256])


def profile(cd=0.005, a=0.02, b=3e-4) -> CostModel:
    rows = np.stack([(a + b * NODES) * (1 + i) for i in range(2)])
    return CostModel.from_measurements(cd, [64, 1024], NODES, rows, {"target": "t", "dtype": "float32"})


def timed_run(rng, cost: CostModel, cd_scale: float, cv_scale: float, prompt: str, budget: int = 8,
              noise: float = 0.0, overhead_ms: float = 0.0) -> RunRecord:
    """A synthetic ddtree run whose logged phase times are the profile scaled by (cd_scale, cv_scale), with
    multiplicative noise, and whose decode_s is the sum of its logged round times."""
    run = synthetic_run(15, rng, k=64, method="ddtree", budget=budget, cost=cost)
    run.prompt = prompt
    for r in run.rounds:
        jitter = np.exp(rng.normal(0.0, noise, 2)) if noise else (1.0, 1.0)
        r.draft_ms = cost.cd_s * 1e3 * cd_scale * jitter[0] - overhead_ms
        r.build_ms, r.commit_ms = overhead_ms / 2, overhead_ms / 2
        r.verify_ms = cost.cv(r.budget, r.start) * 1e3 * cv_scale * jitter[1]
    run.decode_s = sum(r.round_ms for r in run.rounds) / 1e3
    return run


def test_fit_recovers_known_scales_exactly():
    cm = profile()
    rng = np.random.default_rng(0)
    n = rng.integers(0, 200, 50)
    L = rng.integers(10, 3000, 50)
    cv = np.array([cm.cv(int(a), int(b)) for a, b in zip(n, L)]) * 1e3
    fit = fit_live_weights(cm, n, L, np.full(50, cm.cd_s * 1e3 * 1.3 - 0.4), cv * 1.7, np.full(50, 0.4))
    assert fit.weights.cd_scale == pytest.approx(1.3) and fit.weights.cv_scale == pytest.approx(1.7)
    assert fit.cv_ratio_p25 == pytest.approx(1.7) and fit.cv_ratio_p75 == pytest.approx(1.7)
    assert fit.n_rounds == 50 and fit.live_cv_ms == pytest.approx(cv.mean() * 1.7)
    # the weighted model reproduces the pooled logged time
    w = cm.weighted(fit.weights)
    pred = sum(w.cd_s + w.cv(int(a), int(b)) for a, b in zip(n, L)) * 1e3
    assert pred == pytest.approx((cm.cd_s * 1e3 * 1.3) * 50 + cv.sum() * 1.7)


def test_fit_ignores_weights_already_on_the_profile():
    cm = profile()
    n, L = [4, 8, 16], [100, 100, 100]
    d = [cm.cd_s * 2e3] * 3
    v = [cm.cv(x, 100) * 3e3 for x in n]
    a = fit_live_weights(cm, n, L, d, v)
    b = fit_live_weights(cm.with_weights(cd_scale=5.0, cv_scale=0.1), n, L, d, v)
    assert a.weights == b.weights and a.weights.cd_scale == pytest.approx(2.0)


@pytest.mark.parametrize("kw, field", [
    ({"n_nodes": []}, "rounds"),
    ({"verify_ms": [1.0, 2.0]}, "rounds"),
    ({"draft_ms": [1.0, float("nan"), 1.0]}, "draft_ms"),
    ({"context": [1, -5, 3]}, "context"),
])
def test_fit_rejects_bad_timings(kw, field):
    args = {"n_nodes": [1, 2, 3], "context": [10, 20, 30], "draft_ms": [5.0] * 3, "verify_ms": [20.0] * 3}
    args.update(kw)
    if kw.get("n_nodes") == []:
        args.update(context=[], draft_ms=[], verify_ms=[])
    with pytest.raises(InputError) as e:
        fit_live_weights(profile(), **args)
    assert e.value.field == field


def test_fit_rejects_a_zero_profile():
    zero = CostModel.from_measurements(0.0, [64], NODES, np.zeros((1, len(NODES))), {})
    with pytest.raises(InputError, match="nothing to scale"):
        fit_live_weights(zero, [1], [10], [5.0], [20.0])


def test_weights_from_runs_skip_ar_and_need_a_profile():
    cm = profile()
    rng = np.random.default_rng(1)
    runs = [timed_run(rng, cm, 1.2, 1.4, "p0"), timed_run(rng, cm, 1.2, 1.4, "p1", overhead_ms=0.6)]
    ar = RunRecord(method="ar", params={"method": "ar"}, target="t", drafter=None, dtype="float32", device="cpu",
                   prompt="p", prompt_ids=[1], output_ids=[2], status="complete", decode_s=1.0)
    fit = live_weights_from_runs(runs + [ar])
    assert fit.weights.cd_scale == pytest.approx(1.2) and fit.weights.cv_scale == pytest.approx(1.4)
    assert fit.n_rounds == 30
    with pytest.raises(InputError, match="no logged speculative round"):
        live_weights_from_runs([ar])
    bare = timed_run(rng, cm, 1.0, 1.0, "p2")
    bare.cost_model = None
    with pytest.raises(InputError, match="stored no cost model"):
        live_weights_from_runs([bare])
    assert live_weights_from_runs([bare], cm).weights.cv_scale == pytest.approx(1.0)


def two_size_runs(cm: CostModel, rng, root_scale: float = 1.0, tree_scale: float = 1.5, prompts: int = 4):
    """ddtree:2 and ddtree:32 runs per prompt whose verify costs root_scale x the profiled root-only forward plus
    tree_scale x the profiled tree increment (drafting exactly Cd)."""
    runs = []
    for i in range(prompts):
        for b in (2, 32):
            run = timed_run(rng, cm, 1.0, 1.0, f"p{i}", budget=b)
            for r in run.rounds:
                root = cm.cv(0, r.start) * 1e3
                r.verify_ms = root_scale * root + tree_scale * (cm.cv(r.budget, r.start) * 1e3 - root)
            run.decode_s = sum(r.round_ms for r in run.rounds) / 1e3
            runs.append(run)
    return runs


def test_fit_cost_cli_fits_and_reports_the_tree_scale(tmp_path, capsys):
    from dtree.cli import main
    from dtree.store import TraceStore

    cm = profile()
    path = tmp_path / "runs.sqlite"
    with TraceStore(path) as store:
        for run in two_size_runs(cm, np.random.default_rng(9)):
            store.save_run(run, tag="bench:x:two")
    out = tmp_path / "fitted.json"
    assert main(["fit-cost", "--store", str(path), "--out", str(out)]) == 0
    text = capsys.readouterr().out
    assert "cv_scale 1.000 on the root-only forward" in text and "cv_tree_scale 1.500" in text
    w = CostModel.load(out).weights
    assert w.cv_scale == pytest.approx(1.0, rel=1e-6) and w.cv_tree_scale == pytest.approx(1.5, rel=1e-6)
    runs = two_size_runs(cm, np.random.default_rng(9))
    per_run, _ = replay_vs_live(runs, timing_cost=CostModel.load(out))
    np.testing.assert_allclose(per_run["pred_s"], [r.decode_s for r in runs], rtol=1e-6)  # every run's time exact
    rounds = [r for run in runs for r in run.rounds]
    one = sum(r.verify_ms for r in rounds) / sum(cm.cv(r.budget, r.start) * 1e3 for r in rounds)  # ratio of sums
    per_run1, _ = replay_vs_live(runs, timing_cost=cm.with_weights(cv_scale=one))
    assert np.abs(per_run1["pred_s"] / [r.decode_s for r in runs] - 1).max() > 0.05  # the best single scale is not


def test_timing_cost_keeps_trees_and_changes_only_the_predicted_time():
    cm = profile()
    run = timed_run(np.random.default_rng(2), cm, 1.5, 2.0, "p")
    _, plain = replay_vs_live([run])
    per_run, timed = replay_vs_live([run], timing_cost=cm.with_weights(cd_scale=1.5, cv_scale=2.0))
    expect = sum(cm.cd_s * 1.5 + 2.0 * cm.cv(r.budget, r.start) for r in run.rounds)
    assert per_run["pred_s"].iloc[0] == pytest.approx(expect)
    assert per_run["tau_match"].iloc[0] == len(run.rounds)  # same trees as logged
    # the profile alone is ~1.9x too optimistic here; the scaled timing model is not
    assert plain["pooled_ratio"].iloc[0] > 1.8
    assert timed["pooled_ratio"].iloc[0] == pytest.approx(sum(r.tau for r in run.rounds) / run.n_new_tokens)


def test_crossfit_predicts_each_fold_from_the_other_folds_only():
    cm = profile()
    rng = np.random.default_rng(3)
    runs = [timed_run(rng, cm, 1.25, 1.25, f"p{i}", budget=b) for i in range(4) for b in (4, 16)]
    per_run, per_method, fits = replay_vs_live_crossfit(runs, folds=2)
    assert len(fits) == 2 and all(f["n_prompts_fit"] == 2 for f in fits)
    assert all(f["weights"]["cv_scale"] == pytest.approx(1.25) for f in fits)
    assert per_method["within_tol"].all() and len(per_run) == len(runs)
    # an explicit profile replaces the stored one: Cd twice as large -> half the fitted cd_scale, same predictions
    pr_p, _, fits_p = replay_vs_live_crossfit(runs, folds=2, profile=profile(cd=0.01))
    assert all(f["weights"]["cd_scale"] == pytest.approx(0.625) for f in fits_p)
    np.testing.assert_allclose(pr_p["pred_s"], per_run["pred_s"])
    # prompts p1, p3 (fold 1) run twice as slow: fold 0 is predicted with fold 1's weights and vice versa
    rng = np.random.default_rng(3)
    runs2 = [timed_run(rng, cm, *((1.25, 1.25) if i % 2 == 0 else (2.5, 2.5)), f"p{i}", budget=b)
             for i in range(4) for b in (4, 16)]
    pr2, pm2, fits2 = replay_vs_live_crossfit(runs2, folds=2)
    assert fits2[0]["weights"]["cv_scale"] == pytest.approx(2.5)
    assert fits2[1]["weights"]["cv_scale"] == pytest.approx(1.25)
    order = [r for r in runs2 if int(r.prompt[1:]) % 2 == 0] + [r for r in runs2 if int(r.prompt[1:]) % 2 == 1]
    ratio = (pr2["pred_s"] / pr2["live_s"]).to_numpy()
    np.testing.assert_allclose(ratio, [2.0 if int(r.prompt[1:]) % 2 == 0 else 0.5 for r in order], rtol=1e-6)
    assert not pm2["within_tol"].any()


def test_crossfit_reads_times_from_the_measured_curve():
    """On a profile whose measured Cv is concave (so the convex fit is off), rounds that cost 1.2x the MEASURED
    curve are predicted exactly by default and not with curve="convex"; the trees stay the logged ones."""
    x = NODES.astype(float)
    concave = 0.07 + 0.03 * np.sqrt(x) / np.sqrt(64) + 0.0015 * x
    cm = CostModel.from_measurements(0.005, [64, 1024], NODES, np.stack([concave, 1.5 * concave]),
                                     {"target": "t", "dtype": "float32"})
    measured = cm.with_curve("measured")
    rng = np.random.default_rng(8)
    runs = []
    for i in range(4):
        for b in (1, 4, 16, 64):  # more sizes than the two verify scales can bend a wrong curve to
            run = synthetic_run(12, rng, k=64, method="ddtree", budget=b, cost=cm)
            run.prompt = f"p{i}"
            for r in run.rounds:
                r.draft_ms, r.build_ms, r.commit_ms = cm.cd_s * 1e3, 0.0, 0.0
                r.verify_ms = 1.2 * measured.cv(r.budget, r.start) * 1e3
            run.decode_s = sum(r.round_ms for r in run.rounds) / 1e3
            runs.append(run)
    per_run, per_method, fits = replay_vs_live_crossfit(runs, folds=2)
    np.testing.assert_allclose(per_run["pred_s"], per_run["live_s"], rtol=1e-6)
    assert all(f["weights"]["cv_scale"] == pytest.approx(1.2) for f in fits)
    assert (per_run["tau_match"] == per_run["n_rounds"]).all()
    pr_c, _, _ = replay_vs_live_crossfit(runs, folds=2, curve="convex")
    assert np.abs(pr_c["pred_s"] / pr_c["live_s"] - 1).max() > 0.02
    with pytest.raises(InputError) as e:
        replay_vs_live_crossfit(runs, folds=2, curve="wiggly")
    assert e.value.field == "curve"


def test_crossfit_needs_enough_prompts():
    cm = profile()
    runs = [timed_run(np.random.default_rng(4), cm, 1.0, 1.0, "same")]
    with pytest.raises(InputError) as e:
        replay_vs_live_crossfit(runs, folds=2)
    assert e.value.field == "folds"
    with pytest.raises(InputError):
        replay_vs_live_crossfit(runs, folds=1)


def test_fit_cost_cli_writes_a_weighted_model_and_rejects_bad_input(tmp_path, capsys):
    from dtree.cli import main
    from dtree.store import TraceStore

    cm = profile()
    rng = np.random.default_rng(5)
    path = tmp_path / "runs.sqlite"
    with TraceStore(path) as store:
        for i in range(4):
            store.save_run(timed_run(rng, cm, 1.1, 1.3, f"p{i}", noise=0.05), tag="bench:x:synthetic")
    out = tmp_path / "fitted.json"
    assert main(["fit-cost", "--store", str(path), "--out", str(out)]) == 0
    text = capsys.readouterr().out
    assert "cv_scale 1.3" in text and "2-fold by prompt" in text
    fitted = CostModel.load(out)
    assert fitted.weights is not None and fitted.weights.cv_scale == pytest.approx(1.3, rel=0.05)
    assert fitted.meta["live_fit"]["n_rounds"] == 60 and len(fitted.meta["live_fit"]["runs"]) == 4
    np.testing.assert_allclose(fitted.cv_fit_s, cm.cv_fit_s)  # the profile itself is kept
    assert main(["fit-cost", "--store", str(path), "--out", str(out), "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert len(doc["cross_fit"]) == 1 and doc["cross_fit"][0]["median_rel_err"] < 0.15
    # bad input: clear message, exit 2, the earlier output untouched
    before = out.read_bytes()
    assert main(["fit-cost", "--store", str(path), "--tag", "nope", "--out", str(out)]) == 2
    assert "no run tagged 'nope'" in capsys.readouterr().err
    assert main(["fit-cost", "--store", str(path), "--drafter", "nope", "--out", str(out)]) == 2
    err = capsys.readouterr().err  # names the drafters that have runs (the stored names are not otherwise shown)
    assert "no run of drafter 'nope'" in err and "drafters with runs: synthetic" in err
    assert main(["fit-cost", "--store", str(tmp_path / "missing.sqlite"), "--out", str(out)]) == 2
    assert "no trace store" in capsys.readouterr().err and not (tmp_path / "missing.sqlite").exists()
    assert main(["fit-cost", "--store", str(path), "--out", str(tmp_path)]) == 2
    assert main(["fit-cost", "--store", str(path), "--run", "999", "--out", str(out)]) == 2
    with TraceStore(path) as store:
        store.save_run(RunRecord(method="ar", params={"method": "ar"}, target="t", drafter=None, dtype="float32",
                                 device="cpu", prompt="p", prompt_ids=[1], output_ids=[2], status="complete",
                                 decode_s=1.0))
        ar_id = int(store.list_runs(method="ar")["id"].iloc[0])
        sampled = timed_run(rng, cm, 1.0, 1.0, "p7")
        sampled.params = {**sampled.params, "temperature": 0.7}
        sampled_id = store.save_run(sampled)
    assert main(["fit-cost", "--store", str(path), "--out", str(out), "--run", str(sampled_id)]) == 2
    assert "temperature 0.7)" in capsys.readouterr().err  # why it is not usable, though complete with rounds
    for argv, msg in ((["--run", str(ar_id)], f"run {ar_id} is an AR run"),
                      (["--run", "1", "--tag", "bench:x:synthetic"], "either --run or --tag"),
                      (["--run", ","], "empty item in ','"),  # a stray comma, named as such
                      (["--tag", "bench:nope"], "newest bench tags: bench:x:synthetic")):
        assert main(["fit-cost", "--store", str(path), "--out", str(out), *argv]) == 2
        assert msg in capsys.readouterr().err
    assert out.read_bytes() == before
    # runs of another drafter (or dtype) in the selection: one fit cannot describe both setups, so it is refused
    with TraceStore(path) as store:
        other = timed_run(rng, cm, 2.0, 2.0, "p9")
        other.drafter = "my-drafter"
        store.save_run(other, tag="bench:y:synthetic")
        bf16 = timed_run(rng, cm, 2.0, 2.0, "p8")
        bf16.dtype = "bfloat16"
        store.save_run(bf16, tag="bench:z:synthetic")
    assert main(["fit-cost", "--store", str(path), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "mix 3 setups" in err and "my-drafter" in err and "bfloat16" in err and "--drafter" in err
    assert out.read_bytes() == before
    assert main(["fit-cost", "--store", str(path), "--tag", "bench:x:synthetic", "--out", str(out)]) == 0
    capsys.readouterr()
    # one prompt only: fitted and saved, the skipped 2-fold check is said
    assert main(["fit-cost", "--store", str(path), "--run", "1", "--out", str(tmp_path / "one.json")]) == 0
    assert "2-fold check skipped" in capsys.readouterr().err
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"format": "something-else"}))
    assert main(["fit-cost", "--store", str(path), "--cost-model", str(bad), "--out", str(out)]) == 2
    assert "bad.json" in capsys.readouterr().err
    # a profile of another dtype than the runs': its weights would describe neither setup, so it is refused
    other_dtype = tmp_path / "bf16-profile.json"
    CostModel.from_measurements(cm.cd_s, [64, 1024], NODES, np.stack([cm.cv_raw_s[0], cm.cv_raw_s[1]]),
                                {"dtype": "bfloat16", "device": "cpu"}).save(other_dtype)
    assert main(["fit-cost", "--store", str(path), "--tag", "bench:x:synthetic", "--cost-model", str(other_dtype),
                 "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "profiled for dtype 'bfloat16' (the runs: 'float32')" in err and "--dtype float32" in err
    other_drafter = tmp_path / "other-drafter-profile.json"
    CostModel.from_measurements(cm.cd_s, [64, 1024], NODES, np.stack([cm.cv_raw_s[0], cm.cv_raw_s[1]]),
                                {"dtype": "float32", "device": "cpu", "drafter": "my-drafter"}).save(other_drafter)
    assert main(["fit-cost", "--store", str(path), "--tag", "bench:x:synthetic", "--cost-model", str(other_drafter),
                 "--out", str(out)]) == 2
    assert "drafter 'my-drafter' (the runs: 'synthetic')" in capsys.readouterr().err
    # runs decoded with another dtype's profile (decode / bench warn and store it): their stored profile is refused
    bf16_cm = CostModel.from_measurements(cm.cd_s, [64, 1024], NODES, np.stack([cm.cv_raw_s[0], cm.cv_raw_s[1]]),
                                          {"dtype": "bfloat16", "device": "cpu"})
    with TraceStore(path) as store:
        for i in range(2):
            run = timed_run(rng, bf16_cm, 1.0, 1.0, f"q{i}")
            store.save_run(run, tag="bench:w:synthetic")
    assert main(["fit-cost", "--store", str(path), "--tag", "bench:w:synthetic", "--out", str(out)]) == 2
    assert "the cost model stored with the runs was profiled for dtype 'bfloat16'" in capsys.readouterr().err
    same = tmp_path / "fp32-profile.json"
    CostModel.from_measurements(cm.cd_s, [64, 1024], NODES, np.stack([cm.cv_raw_s[0], cm.cv_raw_s[1]]),
                                {"dtype": "float32", "device": "cpu"}).save(same)
    assert main(["fit-cost", "--store", str(path), "--tag", "bench:x:synthetic", "--cost-model", str(same),
                 "--out", str(tmp_path / "same.json")]) == 0
    assert CostWeights.from_dict(fitted.to_dict()["weights"]) == fitted.weights


def test_replay_vs_live_names_methods_like_the_bench():
    """caddtree at its default maximum budget is 'caddtree' (was listed as 'caddtree:256'); other maxima and every
    ddtree budget keep ':B'."""
    cm = profile()
    rng = np.random.default_rng(5)
    runs = [synthetic_run(6, rng, method="caddtree", budget=256, cost=cm),
            synthetic_run(6, rng, method="caddtree", budget=32, cost=cm),
            synthetic_run(6, rng, method="ddtree", budget=8, cost=cm)]
    per_run, per_method = replay_vs_live(runs)
    assert list(per_run["method"]) == ["caddtree", "caddtree:32", "ddtree:8"]
    assert set(per_method["method"]) == {"caddtree", "caddtree:32", "ddtree:8"}


def _root_tree_ms(cm, n, L):
    root = np.array([cm.cv(0, int(b)) for b in L]) * 1e3
    full = np.array([cm.cv(int(a), int(b)) for a, b in zip(n, L)]) * 1e3
    return root, full - root


def test_fit_separates_root_and_tree_verify_scales():
    """Rounds of several tree sizes whose verify costs 1.05x the profiled root-only forward plus 1.4x the profiled
    tree increment: the fit recovers both scales, and the weighted model predicts every round (a single scale
    cannot: it over-prices small trees and under-prices large ones)."""
    cm = profile()
    rng = np.random.default_rng(7)
    n = rng.choice([1, 2, 4, 8, 32, 64], 120)
    L = rng.integers(10, 3000, 120)
    root, tree = _root_tree_ms(cm, n, L)
    verify = 1.05 * root + 1.4 * tree
    fit = fit_live_weights(cm, n, L, np.full(120, cm.cd_s * 1e3), verify)
    w = fit.weights
    assert w.cv_scale == pytest.approx(1.05, rel=1e-6) and w.cv_tree_scale == pytest.approx(1.4, rel=1e-6)
    wm = cm.weighted(w)
    pred = np.array([wm.cv(int(a), int(b)) for a, b in zip(n, L)]) * 1e3
    np.testing.assert_allclose(pred, verify, rtol=1e-6)
    one = cm.with_weights(cv_scale=float(verify.sum() / (root + tree).sum()))
    pred1 = np.array([one.cv(int(a), int(b)) for a, b in zip(n, L)]) * 1e3
    assert np.abs(pred1 / verify - 1).max() > 0.05  # what the single scale got wrong


def test_fit_keeps_one_verify_scale_for_one_tree_size():
    """Chain rounds or one fixed budget cannot tell the root part from the tree part: one ratio-of-sums scale."""
    cm = profile()
    n = np.array([8] * 30 + [2, 4])  # only one size with >= MIN_ROUNDS_PER_SIZE rounds
    L = np.arange(100, 132)
    root, tree = _root_tree_ms(cm, n, L)
    verify = 1.05 * root + 1.4 * tree
    w = fit_live_weights(cm, n, L, np.full(32, cm.cd_s * 1e3), verify).weights
    assert w.cv_tree_scale is None and w.tree_scale == w.cv_scale
    assert w.cv_scale == pytest.approx(verify.sum() / (root + tree).sum())


def test_live_weights_from_runs_fits_the_tree_scale_of_caddtree_rounds():
    cm = profile()
    rng = np.random.default_rng(11)
    runs = []
    for i in range(3):
        run = synthetic_run(20, rng, k=64, method="caddtree", budget=256, cost=cm)
        run.prompt = f"p{i}"
        for r in run.rounds:
            r.draft_ms, r.build_ms, r.commit_ms = cm.cd_s * 1e3, 0.0, 0.0
            root = cm.cv(0, r.start) * 1e3
            r.verify_ms = 0.9 * root + 2.0 * (cm.cv(r.budget, r.start) * 1e3 - root)
        runs.append(run)
    sizes = {r.budget for run in runs for r in run.rounds}
    assert len(sizes) >= 2  # caddtree budgets vary from round to round
    w = live_weights_from_runs(runs).weights
    assert w.cv_scale == pytest.approx(0.9, rel=1e-6) and w.cv_tree_scale == pytest.approx(2.0, rel=1e-6)
