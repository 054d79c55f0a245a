"""Calibrated surrogate (dtree.calibration) and the -cal / -spine method variants, from hand-built rounds to real runs.

Expected counts come from brute force over the ranked lattice, expected factors from the shrinkage formula written
out here, and the end-to-end checks compare every variant's greedy output with AR on the real embedded model (fp32).
"""

from __future__ import annotations

import itertools
import json

import numpy as np
import pytest

from dtree import bench
from dtree.calibration import Calibration, OnlineCalibration, count_round, fit_calibration, fit_from_counts
from dtree.engine import DecodeConfig
from dtree.errors import InputError
from dtree.records import RoundRecord, RunRecord, parse_method, parse_method_key
from dtree.trees import Marginals, build_chain


def make_run(rounds_spec) -> RunRecord:
    """A run from hand-built rounds ``(marg, path)``, ``path = [anchor, t_1, .., t_gamma, bonus]``: each round commits
    its whole drawn path, so the run's stream (what calibration reads) is exactly the drawn target paths."""
    rounds, start = [], 50
    for i, (marg, path) in enumerate(rounds_spec):
        tau = len(path) - 1
        rounds.append(RoundRecord(index=i, start=start, anchor=int(path[0]), marg_tokens=marg.tokens,
                                  marg_logprobs=marg.logprobs.astype(np.float32), tree=build_chain(marg, int(path[0])),
                                  budget=marg.gamma, budget_reason="test", accepted=list(range(tau)),
                                  bonus=int(path[-1]), committed=[int(t) for t in path[:-1]]))
        start += tau
    return RunRecord("chain", {"temperature": 0.0}, "t", "d", "float32", "cpu", "", [1], rounds=rounds)


def drawn_rounds(rng, n_rounds, gamma, k, vocab, draw_target):
    """Rounds with random drafter marginals (top-k of Dirichlet draws) and target paths from ``draw_target(full
    [gamma, vocab] probabilities, marg) -> [gamma] tokens``; each round's anchor is the previous round's bonus."""
    spec = []
    anchor = int(rng.integers(vocab))
    for _ in range(n_rounds):
        full = rng.dirichlet(np.full(vocab, 0.3), size=gamma)
        order = np.argsort(-full, axis=1, kind="stable")[:, :k]
        lp = np.log(np.take_along_axis(full, order, axis=1)).astype(np.float32).astype(np.float64)
        marg = Marginals(order, lp)
        path = [anchor] + [int(t) for t in draw_target(full, marg)] + [int(rng.integers(vocab))]
        spec.append((marg, path))
        anchor = path[-1]
    return spec


# ----------------------------------------------------------------------------------------------------------------------
# counting and fitting on hand-built rounds
# ----------------------------------------------------------------------------------------------------------------------


def brute_counts(marg: Marginals, path, R: int, G: int) -> tuple[np.ndarray, np.ndarray]:
    """Every lattice node whose parent's token path is the target's prefix is one trial (class: an earlier rank > 0)."""
    O, P = np.zeros((2, G, R)), np.zeros((2, G, R))
    for depth in range(1, min(marg.gamma, len(path) - 1, G) + 1):
        for ranks in itertools.product(range(marg.width), repeat=depth):
            toks = [int(marg.tokens[d, r]) for d, r in enumerate(ranks)]
            if toks[:-1] != [int(t) for t in path[1:depth]]:
                continue
            c = 1 if any(r > 0 for r in ranks[:-1]) else 0
            b = min(ranks[-1], R - 1)
            P[c, depth - 1, b] += np.exp(marg.logprobs[depth - 1, ranks[-1]])
            O[c, depth - 1, b] += float(toks[-1] == int(path[depth]))
    return O, P


@pytest.mark.parametrize("seed", range(8))
def test_count_round_equals_brute_force_over_the_lattice(seed):
    rng = np.random.default_rng(seed)
    gamma, k, vocab = 4, 3, 6
    for _ in range(6):
        toks = np.stack([rng.permutation(vocab)[:k] for _ in range(gamma)])
        lp = np.log(np.sort(rng.dirichlet(np.ones(vocab)))[::-1][:k])[None].repeat(gamma, 0)
        marg = Marginals(toks, lp)
        # target path: mostly inside the top-k (rank 0, 1 or 2), sometimes outside, sometimes cut short
        path = [7] + [int(toks[d, rng.integers(k)]) if rng.random() < 0.8 else 99 for d in range(gamma)]
        path = path[: int(rng.integers(2, gamma + 2))]
        for R, G in ((1, gamma), (2, gamma), (4, gamma), (2, 2)):
            O, P = np.zeros((2, G, R)), np.zeros((2, G, R))
            count_round(marg, path, O, P)
            bO, bP = brute_counts(marg, path, R, G)
            np.testing.assert_allclose(O, bO)
            np.testing.assert_allclose(P, bP, rtol=1e-12)


def test_fit_shrinkage_formula_and_rank_monotonicity():
    rng = np.random.default_rng(3)
    P = rng.uniform(0.5, 30, size=(2, 5, 4))
    O = np.floor(P * np.array([1.6, 0.7, 0.5, 0.2])[None, None, :] * rng.uniform(0.9, 1.1, size=P.shape))
    m = 3.0
    cal = fit_from_counts(O, P, m)
    pooled = (O.sum(1) + m) / (P.sum(1) + m)
    raw = (O + m * pooled[:, None, :]) / (P + m)
    # where the raw rates already fall with rank, the factors are exactly the shrunk rates
    ok = (np.diff(raw, axis=2) <= 0).all(axis=2)
    assert ok.any()
    np.testing.assert_allclose(cal.factors[ok], raw[ok], rtol=1e-12)
    assert (np.diff(cal.factors, axis=2) <= 1e-12).all()
    # rows that violate it are the weighted least-squares non-increasing fit: check against every block partition
    Q = np.array([[1.0, 2.0, 0.5, 0.1]])[None].repeat(2, 0)  # raw rises at rank 1: must be pooled
    cal2 = fit_from_counts(Q * 10, np.full_like(Q, 10.0), 1.0)
    pooled2 = ((Q * 10).sum(1) + 1.0) / (np.full_like(Q, 10.0).sum(1) + 1.0)
    y = ((Q * 10 + pooled2[:, None, :]) / 11.0)[0, 0]
    w = np.full(4, 11.0)
    best, best_err = None, np.inf
    for cuts in itertools.product((0, 1), repeat=3):
        blocks, cur = [], [0]
        for i, c in enumerate(cuts, 1):
            if c:
                blocks.append(cur)
                cur = [i]
            else:
                cur.append(i)
        blocks.append(cur)
        fit = np.empty(4)
        for b in blocks:
            fit[b] = np.average(y[b], weights=w[b])
        if (np.diff(fit) <= 1e-12).all():
            err = float((w * (fit - y) ** 2).sum())
            if err < best_err:
                best, best_err = fit, err
    np.testing.assert_allclose(cal2.factors[0, 0], best, rtol=1e-10)


def test_calibrated_drafter_gives_factors_near_one():
    """Targets drawn from the drafter's own marginals, independently per depth: acceptance / q -> 1 in every cell."""
    rng = np.random.default_rng(11)
    gamma, k, vocab = 4, 5, 30

    def draw(full, marg):
        return [int(rng.choice(vocab, p=full[d])) for d in range(gamma)]

    run = make_run(drawn_rounds(rng, 3000, gamma, k, vocab, draw))
    cal = fit_calibration([run], rank_bins=3, prior_strength=2.0)
    big = cal.predicted >= 100
    assert big[0].sum() >= 6 and big[1].sum() >= 3
    assert np.abs(cal.factors[big] - 1).max() < 0.35
    for c in (0, 1):
        ratio = cal.observed[c].sum() / cal.predicted[c].sum()
        assert abs(ratio - 1) < 0.08
    assert cal.meta["rounds"] == 3000


def test_drafter_right_only_on_its_spine_gets_small_off_spine_factors():
    """Spec 5 item 1's pattern: after a non-top-1 token the next marginals are wrong -> off-spine factors near 0."""
    rng = np.random.default_rng(12)
    gamma, k, vocab = 5, 4, 40

    def draw(full, marg):
        out, off = [], False
        for d in range(gamma):
            if off:
                out.append(vocab + 1)  # never among the top-k
            elif rng.random() < 0.75:
                out.append(int(marg.tokens[d, 0]))
            else:
                r = int(rng.integers(1, k))
                out.append(int(marg.tokens[d, r]))
                off = True
        return out

    run = make_run(drawn_rounds(rng, 1500, gamma, k, vocab, draw))
    cal = fit_calibration([run])
    assert cal.observed[1].sum() == 0 and cal.predicted[1].sum() > 50
    assert (cal.factors[1] < 0.2).all()
    # spine rank 0: shrunk towards the pooled rate, close to the raw rate where there is data
    raw = cal.observed[0, :, 0] / cal.predicted[0, :, 0]
    np.testing.assert_allclose(cal.factors[0, :2, 0], raw[:2], rtol=0.1)
    assert (cal.factors[0, :, 0] > cal.factors[1, :, 0]).all()


def test_save_load_round_trip_and_validation(tmp_path):
    rng = np.random.default_rng(4)
    O = rng.integers(0, 20, size=(2, 3, 4)).astype(float)
    cal = fit_from_counts(O, O + rng.uniform(1, 5, size=O.shape), 2.5, meta={"note": "x"})
    path = cal.save(tmp_path / "cal.json")
    back = Calibration.load(path)
    np.testing.assert_array_equal(back.factors, cal.factors)
    np.testing.assert_array_equal(back.observed, cal.observed)
    np.testing.assert_array_equal(back.predicted, cal.predicted)
    assert back.prior_strength == 2.5 and back.meta == {"note": "x"}
    d = json.loads(path.read_text())
    assert d["format"] == "dtree-calibration" and d["version"] == 1 and d["rank_bins"] == 4 and d["depths"] == 3
    bad = [dict(d, format="nope"), dict(d, version=2), {k: v for k, v in d.items() if k != "factors"},
           dict(d, factors=[[[1.0, 2.0]], [[1.0, 0.5]]], observed=[[[0, 0]], [[0, 0]]],
                predicted=[[[0, 0]], [[0, 0]]]),  # grows with rank
           dict(d, factors=(-np.asarray(d["factors"])).tolist()), dict(d, factors=[[1.0]]), "not a dict"]
    for b in bad:
        with pytest.raises(InputError) as e:
            Calibration.from_dict(b)
        assert e.value.field == "calibration"
    (tmp_path / "junk.json").write_text("{oops")
    (tmp_path / "cost.json").write_text(json.dumps({"format": "dtree-cost-model"}))  # valid JSON, another format
    for p in (tmp_path / "junk.json", tmp_path / "missing.json", tmp_path / "cost.json"):
        with pytest.raises(InputError) as e:
            Calibration.load(p)
        assert e.value.field == "calibration" and p.name in str(e.value)  # the message names the file


def test_step_logprobs_clip_bins_and_depth_extension():
    cal = Calibration(np.array([[[2.0, 0.5]], [[0.3, 0.1]]]), np.zeros((2, 1, 2)), np.zeros((2, 1, 2)))
    lp = np.log(np.array([[0.7, 0.2, 0.1], [0.4, 0.3, 0.05]]))
    step = cal.step_logprobs(Marginals(np.arange(6).reshape(2, 3), lp))
    assert step.shape == (2, 2, 3)
    expect = np.minimum(0.0, np.log(np.array([[2.0, 0.5, 0.5], [0.3, 0.1, 0.1]]))[:, None, :] + lp[None])
    np.testing.assert_allclose(step, expect)  # depth 2 reuses the table's only depth; ranks >= 1 share bin 1
    assert step[0, 0, 0] == 0.0  # 2 * 0.7 clipped to probability 1
    assert (np.diff(step, axis=2) <= 0).all()


def test_fit_errors():
    with pytest.raises(InputError):
        fit_calibration([])
    ar = RunRecord("ar", {}, "t", None, "float32", "cpu", "", [1])
    with pytest.raises(InputError):
        fit_calibration([ar])
    with pytest.raises(InputError) as e:
        fit_calibration([make_run([])])
    a, b = make_run([]), make_run([])
    b.drafter = "other-drafter"
    with pytest.raises(InputError, match="mix 2 setups") as e:  # one calibration per drafter, not a blend of two
        fit_calibration([a, b])
    assert e.value.field == "run" and "other-drafter" in str(e.value)
    # one drafter path whose weights changed between runs (retrained in place): refused too
    a, b = make_run([]), make_run([])
    a.params = {**a.params, "drafter_weights": "aaaa11112222"}
    b.params = {**b.params, "drafter_weights": "bbbb33334444"}
    with pytest.raises(InputError, match="different weights") as e:
        fit_calibration([a, b])
    assert "aaaa11112222" in str(e.value) and "retrained" in str(e.value)


def test_check_one_setup_matches_runs_without_a_weights_record():
    """Runs stored before the weights fingerprint was recorded match any; two fingerprints never do."""
    from dtree.records import check_one_setup

    a, b, old = make_run([]), make_run([]), make_run([])
    a.params = {**a.params, "drafter_weights": "aaaa"}
    b.params = {**b.params, "drafter_weights": "aaaa"}
    check_one_setup([a, b, old], ("target", "drafter"), "calibration")  # no error
    b.params["drafter_weights"] = "bbbb"
    with pytest.raises(InputError, match="different weights"):
        check_one_setup([a, b, old], ("target", "drafter"), "calibration")
    check_one_setup([a, b], ("target", "dtype"), "fit")  # no drafter among the keys: weights not compared


def test_fit_from_counts_errors():
    with pytest.raises(InputError) as e:
        fit_from_counts(np.zeros((2, 1, 1)), np.zeros((2, 1, 1)), -1)
    assert e.value.field == "prior_strength"


# ----------------------------------------------------------------------------------------------------------------------
# method names
# ----------------------------------------------------------------------------------------------------------------------


def test_method_names_and_keys():
    assert parse_method("caddtree-spine-cal").name == "caddtree-cal-spine"
    assert parse_method("ddtree-cal") == parse_method("ddtree-cal")
    assert parse_method_key("ddtree-spine:16") == ("ddtree-spine", 16)
    assert parse_method_key("caddtree-cal") == ("caddtree-cal", None)
    assert parse_method("caddtree-spine-adapt").name == "caddtree-adapt-spine"
    assert parse_method("caddtree-rawcv-spine-adapt").name == "caddtree-adapt-spine-rawcv"
    assert parse_method("caddtree-rawcv").raw_cv and not parse_method("caddtree").raw_cv
    assert parse_method("caddtree-fallback-rawcv-adapt").name == "caddtree-adapt-rawcv-fallback"
    assert parse_method("caddtree-fallback").fallback and not parse_method("caddtree-rawcv").fallback
    assert parse_method("ddtree-adapt").uses_calibration and not parse_method("ddtree-spine").uses_calibration
    for bad in ("chain-spine", "ar-cal", "caddtree-cal-cal", "caddtree-fast", "ddtree-spine", "caddtree-", "beam",
                "caddtree-cal-adapt", "chain-adapt", "ddtree-adapt", "ddtree-rawcv:8", "chain-rawcv",
                "caddtree-rawcv-rawcv", "ddtree-fallback:8", "chain-fallback", "caddtree-fallback-fallback"):
        with pytest.raises(InputError):
            parse_method_key(bad)
    with pytest.raises(InputError) as e:  # an unknown base: the message gives the grammar, not a partial list
        parse_method("beam")
    assert all(w in str(e.value) for w in ("ar, chain, ddtree or caddtree", "-cal or -adapt", "-spine", "-rawcv",
                                           "-fallback"))
    assert bench.parse_methods("ar,caddtree-cal,caddtree-spine:64,ddtree-cal-spine:8") == [
        ("ar", None), ("caddtree-cal", None), ("caddtree-spine", 64), ("ddtree-cal-spine", 8)]
    assert bench.parse_methods("caddtree-spine-adapt,ddtree-adapt:8") == [("caddtree-adapt-spine", None),
                                                                         ("ddtree-adapt", 8)]
    assert bench.stored_method_key("caddtree-cal", {"budget": 256}) == "caddtree-cal"
    assert bench.stored_method_key("ddtree-spine", {"budget": 8}) == "ddtree-spine:8"
    cfg = DecodeConfig("caddtree-spine", budget=32).validated(10_000, 10, 16)
    assert (cfg.method, cfg.spine, cfg.calibrated, cfg.name) == ("caddtree", True, False, "caddtree-spine")
    assert DecodeConfig("ddtree", 4, spine=True, calibrated=True).name == "ddtree-cal-spine"
    cfg = DecodeConfig("caddtree-adapt").validated(10_000, 10, 16)
    assert (cfg.method, cfg.adaptive, cfg.calibrated, cfg.name) == ("caddtree", True, False, "caddtree-adapt")
    with pytest.raises(InputError) as e:
        DecodeConfig("caddtree-adapt", calibrated=True).validated(10_000, 10, 16)
    assert e.value.field == "adaptive"
    with pytest.raises(InputError) as e:
        DecodeConfig("chain", spine=True).validated(10_000, 10, 16)
    assert e.value.field == "spine"


def test_short_row_pava_equals_scipy_isotonic_regression():
    """The in-house pool-adjacent-violators for short rank rows gives scipy's weighted non-increasing fit."""
    from scipy.optimize import isotonic_regression

    from dtree.calibration import _isotonic_decreasing, _pava_decreasing

    rng = np.random.default_rng(2)
    for n in (1, 2, 3, 4, 7, 16):
        for _ in range(200):
            y = rng.normal(1.0, 0.5, n) if rng.random() < 0.7 else rng.integers(0, 3, n).astype(float)
            w = rng.uniform(0.01, 50.0, n)
            ref = isotonic_regression(y, weights=w, increasing=False).x
            np.testing.assert_allclose(_pava_decreasing(y, w), ref, rtol=1e-12, atol=1e-12)
            np.testing.assert_allclose(_isotonic_decreasing(y, w), ref, rtol=1e-12, atol=1e-12)
    y = rng.normal(size=40)  # long rows go to scipy
    np.testing.assert_allclose(_isotonic_decreasing(y, np.ones(40)), isotonic_regression(y, increasing=False).x)


def test_online_calibration_is_the_offline_fit_of_the_past_rounds():
    """-adapt: round i's calibration is the offline fit (count_round + fit_from_counts) of rounds 0..i-1 with the
    target's choices known up to round i's anchor; after the last round it equals fit_calibration of the whole run;
    later rounds never change an earlier round's calibration; replay rebuilds the same sequence."""
    from dtree.replay import adaptive_calibrations, known_path

    rng = np.random.default_rng(5)
    gamma, k, vocab = 5, 4, 10

    def draw(full, marg):  # mostly the drafter's own top-1, sometimes another ranked token, sometimes outside
        out = []
        for d in range(gamma):
            u = rng.random()
            out.append(int(marg.tokens[d, 0]) if u < 0.55 else int(marg.tokens[d, rng.integers(1, k)]) if u < 0.85
                       else int(rng.integers(vocab)))
        return out

    spec = drawn_rounds(rng, 14, gamma, k, vocab, draw)
    # commit a random prefix of each drawn path (as a real round would), the next token being the bonus
    cut = []
    anchor = spec[0][1][0]
    for marg, path in spec:
        a = int(rng.integers(0, gamma + 1))
        p = [anchor] + path[1: a + 1] + [path[a + 1]]
        cut.append((marg, p))
        anchor = p[-1]
    run = make_run(cut)
    settings = {"depths": gamma, "rank_bins": 3, "prior_strength": 2.0}
    cals = adaptive_calibrations(run, settings)
    stream, offsets = known_path(run)
    assert len(cals) == len(run.rounds)
    np.testing.assert_array_equal(cals[0].factors, 1.0)  # nothing observed yet: the uncalibrated drafter
    n_trials = []
    for i in range(len(run.rounds)):
        O, P = np.zeros((2, gamma, 3)), np.zeros((2, gamma, 3))
        for j in range(i):
            count_round(round_marg(run.rounds[j]), stream[offsets[j]: offsets[i] + 1], O, P)
        ref = fit_from_counts(O, P, 2.0)
        np.testing.assert_allclose(cals[i].observed, O)
        np.testing.assert_allclose(cals[i].predicted, P)
        np.testing.assert_allclose(cals[i].factors, ref.factors)
        n_trials.append(P.sum())
    assert n_trials[-1] > n_trials[1] > 0 and sorted(n_trials) == n_trials
    assert np.abs(cals[-1].factors - 1).max() > 0.05  # it did learn something
    online = OnlineCalibration(**settings)
    for r in run.rounds:
        online.observe_round(round_marg(r), r.committed, r.bonus)
    full = fit_calibration([run], rank_bins=3, prior_strength=2.0)
    np.testing.assert_allclose(online.calibration().observed, full.observed)
    np.testing.assert_allclose(online.calibration().factors, full.factors)
    # causality: the first i + 1 calibrations of a truncated trace are the same
    short = make_run(cut[:6])
    for a, b in zip(adaptive_calibrations(short, settings), cals[:6]):
        np.testing.assert_array_equal(a.factors, b.factors)
    with pytest.raises(InputError) as e:
        online.observe_round(round_marg(run.rounds[0]), [run.rounds[0].anchor + 1], 3)
    assert e.value.field == "committed"
    with pytest.raises(InputError):
        OnlineCalibration(depths=0)


def round_marg(r):
    return Marginals(r.marg_tokens, r.marg_logprobs.astype(np.float64))


# ----------------------------------------------------------------------------------------------------------------------
# real model: fit from real runs, every variant lossless, replay reproduces them, CLI
# ----------------------------------------------------------------------------------------------------------------------

PROMPTS = ["What is 12 times 7? Answer briefly.", "Name three primary colors."]


@pytest.fixture(scope="module")
def real_logged(backend32, tmp_path_factory):
    from dtree.store import TraceStore

    path = tmp_path_factory.mktemp("cal") / "runs.sqlite"
    store = TraceStore(path)
    runs = [backend32.decode(p, DecodeConfig("ddtree", budget=8, max_new_tokens=32), store=store) for p in PROMPTS]
    yield path, store, runs
    store.close()


def test_fit_on_real_runs_is_sensible(real_logged):
    _, _, runs = real_logged
    cal = fit_calibration(runs)
    assert cal.meta["rounds"] == sum(len(r.rounds) for r in runs)
    assert np.isfinite(cal.factors).all() and (cal.factors >= 0).all() and (cal.factors < 5).all()
    # depth 1 on the spine is observed every round: its factors are near the raw acceptance / q
    raw = cal.observed[0, 0].sum() / cal.predicted[0, 0].sum()
    assert cal.predicted[0, 0].sum() > 1 and 0.2 < raw < 5
    # observed acceptances at depth 1 (spine class): the rounds whose target token at depth 1 (the second committed
    # token, or the bonus when only the anchor was committed) is among the logged top-k
    n_in = sum(int((r.committed + [r.bonus])[1] in r.marg_tokens[0].tolist()) for run in runs for r in run.rounds)
    assert cal.observed[0, 0].sum() == n_in


def test_variants_lossless_spine_kept_and_replayed(backend32, small_cost, real_logged, monkeypatch):
    from dtree.engine import auto_cv_curve
    from dtree.replay import replay_run

    _, store, runs = real_logged
    cal = fit_calibration(runs)
    monkeypatch.setattr(backend32, "_calibration", cal)
    variants = [("caddtree-cal", 32), ("caddtree-spine", 32), ("caddtree-cal-spine", 32), ("ddtree-spine", 4),
                ("ddtree-cal", 8), ("caddtree-adapt", 32), ("ddtree-adapt-spine", 8), ("caddtree-rawcv", 32),
                ("caddtree-adapt-rawcv", 32)]
    for prompt in PROMPTS:
        ar = backend32.decode(prompt, DecodeConfig("ar", max_new_tokens=48))
        for name, budget in variants:
            run = backend32.decode(prompt, DecodeConfig(name, budget=budget, max_new_tokens=48, topk_log=32),
                                   store=store)
            assert run.method == name and run.output_ids == ar.output_ids, f"{name} diverged from AR"
            assert (run.params.get("calibration") is not None) == ("-cal" in name)
            assert (run.params.get("adaptive_calibration") is not None) == ("-adapt" in name)
            measured = "-rawcv" in name or (name.startswith("caddtree") and auto_cv_curve(small_cost) is not None)
            assert run.cost_model.get("curve", "convex") == ("measured" if measured else "convex")
            if "spine" in name:
                for r in run.rounds:  # the top-1 chain is in every tree, as nodes 1..s
                    s = min(r.marg_tokens.shape[0], budget)
                    np.testing.assert_array_equal(r.tree.tokens[1: s + 1], r.marg_tokens[:s, 0])
                    assert r.budget >= s
            back = store.load_run(run.run_id)
            s = replay_run(back, back.method, budget)  # stored cost model and calibration
            np.testing.assert_array_equal(s.taus, [r.tau for r in run.rounds])
            np.testing.assert_array_equal(s.n_nodes, [r.budget for r in run.rounds])
            assert s.exact
    with pytest.raises(InputError) as e:
        from dtree.engine import generate

        generate(backend32.target, backend32.target.encode_prompt("hi"), DecodeConfig("caddtree-cal", 8, 4),
                 drafter=backend32.drafter, cost_model=small_cost)
    assert e.value.field == "calibration"


def test_cli_calibrate_and_replay_report(real_logged, tmp_path, capsys):
    from dtree.cli import main

    path, _, runs = real_logged
    out = tmp_path / "cal.json"
    assert main(["calibrate", "--from-store", str(path), "--out", str(out)]) == 0
    cal = Calibration.load(out)
    assert cal.meta["rounds"] >= sum(len(r.rounds) for r in runs)
    capsys.readouterr()
    ids = ",".join(str(r.run_id) for r in runs)
    cost = tmp_path / "cost.json"
    from dtree.cost import CostModel

    NODES = np.array([0, 1, 2, 4, 8, 16, 32])
    CostModel.from_measurements(0.01, [64, 512], NODES, np.stack([0.02 + 4e-4 * NODES, 0.03 + 6e-4 * NODES]),
                                {}).save(cost)
    assert main(["replay", "--run", ids, "--store", str(path), "--budgets", "1,2,4,8", "--cost-model", str(cost),
                 "--variants", "caddtree-cal,ddtree-spine:4,caddtree-spine", "--calibration", str(out),
                 "--check-unimodal", "--json"]) == 0
    rep = json.loads(capsys.readouterr().out)
    methods = [r["method"] for r in rep["rows"]]
    assert {"caddtree-cal", "ddtree-spine", "caddtree-spine", "caddtree"} <= set(methods)
    by = {u["method"]: u for u in rep["unimodal"]}
    assert set(by) == {"caddtree", "caddtree-cal", "caddtree-spine"}
    for u in by.values():  # a fitted (monotone, convex) cost model: theta is unimodal on every round
        assert u["share_unimodal"] == 1.0 and u["share_greedy_argmax"] == 1.0 and u["offending"] == []
        assert u["n_rounds"] == sum(len(r.rounds) for r in runs)
    assert main(["calibrate", "--from-store", str(tmp_path / "none.sqlite"), "--out", str(out)]) == 2
    capsys.readouterr()
    assert main(["calibrate", "--from-store", str(path), "--out", str(tmp_path)]) == 2  # a folder: named, and the
    err = capsys.readouterr().err  # suggested file name is a calibration's
    assert "is a directory" in err and "calibration.json" in err and "cost-model.json" not in err
    assert main(["replay", "--run", ids, "--store", str(path), "--variants", "chain-spine"]) == 2
    # the same variant named twice (modifiers in another order), or plain caddtree (a row every replay has): one row
    capsys.readouterr()
    assert main(["replay", "--run", ids, "--store", str(path), "--budgets", "1,2", "--cost-model", str(cost),
                 "--variants", "caddtree-spine-rawcv,caddtree-rawcv-spine,caddtree,caddtree:256,ddtree-spine:4,"
                 "caddtree-spine-rawcv:256", "--json"]) == 0  # 256: the replay's default maximum, the same rows
    methods = [r["method"] for r in json.loads(capsys.readouterr().out)["rows"]]
    assert methods.count("caddtree") == 1 and methods.count("caddtree-spine-rawcv") == 1
    assert methods.count("ddtree-spine") == 1
    # a profile of another dtype than the runs': replayed as asked (a what-if), with a note naming the difference
    other = tmp_path / "bf16-cost.json"
    CostModel.from_measurements(0.01, [64, 512], NODES, np.stack([0.02 + 4e-4 * NODES, 0.03 + 6e-4 * NODES]),
                                {"dtype": "bfloat16" if runs[0].dtype != "bfloat16" else "float32"}).save(other)
    assert main(["replay", "--run", ids, "--store", str(path), "--budgets", "1,2", "--cost-model", str(other)]) == 0
    assert "was profiled for dtype" in capsys.readouterr().err
    assert main(["replay", "--run", ids, "--store", str(path), "--budgets", "1,2", "--cost-model", str(cost)]) == 0
    assert "profiled for" not in capsys.readouterr().err


def test_bench_with_variants_reports_build_share(backend32, small_cost, monkeypatch, real_logged):
    """Bench rows of variants: lossless vs AR, and the share of round time spent building trees (+ cost lookups)."""
    monkeypatch.setattr(backend32, "_calibration", fit_calibration(real_logged[2]))
    stats = bench.run_bench(backend32, PROMPTS[1:], bench.parse_methods("ar,caddtree-cal:16,ddtree-spine:4"),
                            max_new_tokens=16)
    rows = {r["method"]: r for r in bench.summary_rows(stats)}
    assert set(rows) == {"ar", "caddtree-cal:16", "ddtree-spine:4"}
    for key, r in rows.items():
        assert r["mismatches"] == 0
        st = stats[key]
        total = sum(st.phase_ms.values())
        assert r["build_share_%"] == pytest.approx(100 * st.phase_ms["build"] / total, abs=0.051)
        assert r["build_ms_per_round"] == pytest.approx(st.phase_ms["build"] / st.rounds, abs=5e-4)
    assert rows["ar"]["build_ms_per_round"] == 0.0 and rows["caddtree-cal:16"]["build_ms_per_round"] > 0


def test_backend_auto_calibration_is_fitted_once_and_cached(backend32, tmp_path, monkeypatch):
    import functools

    from dtree import backend as backend_mod

    monkeypatch.setenv("DTREE_CACHE", str(tmp_path))
    monkeypatch.setattr(backend32, "_calibration", None)
    real_fit = backend_mod.fit_warmup_calibration
    calls = []

    def tiny_fit(*a, **kw):  # the real warm-up, with tiny settings
        calls.append(1)
        return functools.partial(real_fit, n_prompts=1, max_new_tokens=12)(*a, **kw)

    monkeypatch.setattr(backend_mod, "fit_warmup_calibration", tiny_fit)
    cal = backend32.calibration()
    path = backend_mod.default_calibration_path(backend32.target, backend32.drafter)
    assert calls == [1] and path.exists() and "warm-up" in cal.meta["source"]
    monkeypatch.setattr(backend32, "_calibration", None)
    again = backend32.calibration()  # from the cache: no second warm-up
    assert calls == [1]
    np.testing.assert_array_equal(again.factors, cal.factors)
    other = tmp_path / "given.json"
    Calibration.identity(4, 2).save(other)
    assert backend32.calibration(path=other).depths == 4


def test_cli_decode_with_a_variant(real_logged, tmp_path, capsys):
    from dtree.cli import main

    out = tmp_path / "cal.json"
    fit_calibration(real_logged[2]).save(out)
    store = tmp_path / "s.sqlite"
    base = ["decode", "--prompt", "What is 3 + 4?", "--dtype", "float32", "--device", "cpu", "--store", str(store)]
    assert main([*base, "--method", "ddtree-cal-spine", "--budget", "8", "--max-new-tokens", "16",
                 "--calibration", str(out), "--compare-ar", "--json"]) == 0
    got = json.loads(capsys.readouterr().out)
    assert got["method"] == "ddtree-cal-spine" and got["identical_to_ar"] is True
    (tmp_path / "bad.json").write_text("{}")
    bad = tmp_path / "bad.sqlite"
    for args, field in ((["--method", "caddtree-cal", "--calibration", str(tmp_path / "bad.json")], "calibration"),
                        (["--method", "chain-spine"], "method")):
        assert main([*base[:-1], str(bad), *args]) == 2
        assert f"{field}:" in capsys.readouterr().err
    assert not bad.exists()
