"""Tests of the cost model (dtree/cost.py): monotone-convex fit, lookup rules, JSON persistence, real profiling."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from scipy.optimize import minimize

from dtree.cost import FORMAT, VERSION, CostModel, CostWeights, fit_monotone_convex, is_monotone_convex, profile_verify
from dtree.errors import InputError

NODES = np.array([0, 1, 2, 4, 8, 16, 32, 64])


def slopes(y, x):
    return np.diff(y) / np.diff(x)


def assert_monotone_convex(y, x, tol=1e-12):
    s = slopes(np.asarray(y, float), np.asarray(x, float))
    scale = max(np.max(np.abs(y)), 1e-12)
    assert (s >= -tol * scale).all(), s
    assert (np.diff(s) >= -tol * scale).all(), np.diff(s)


def random_convex(rng, x):
    """Non-decreasing convex function sampled on x: a + b x + c max(0, x - knot)^2 style mixture."""
    knot = rng.uniform(0, x[-1])
    return rng.uniform(0.02, 0.1) + rng.uniform(0, 1e-3) * x + rng.uniform(0, 1e-5) * np.maximum(0, x - knot) ** 2


def model_from_rows(rows, contexts, nodes=NODES, cd=0.01):
    rows = np.asarray(rows, float)
    return CostModel(cd, contexts, nodes, rows, rows, {"source": "test"})


# ----------------------------------------------------------------------------------------------------------------------
# fit
# ----------------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("seed", range(15))
def test_fit_is_monotone_convex_and_optimal(seed):
    rng = np.random.default_rng(seed)
    x = NODES.astype(float) if seed % 2 else np.arange(12.0)
    truth = random_convex(rng, x)
    y = truth * np.exp(rng.normal(0, 0.15, size=len(x)))  # 15% multiplicative noise, like a shared machine
    fit = fit_monotone_convex(y, x)
    assert fit.shape == y.shape and fit.dtype == np.float64
    assert_monotone_convex(fit, x, tol=1e-9)
    assert is_monotone_convex(fit, x)
    # Projection onto a convex set that contains the truth is non-expansive: the fit is no farther from the truth
    # than the raw data (the unconstrained least-squares fit, which is the data itself).
    assert np.linalg.norm(fit - truth) <= np.linalg.norm(y - truth) + 1e-12
    # Optimality against an independent solver (SLSQP on the difference constraints).
    dx = np.diff(x)
    cons = [
        {"type": "ineq", "fun": lambda b: np.diff(b) / dx},
        {"type": "ineq", "fun": lambda b: np.diff(np.diff(b) / dx)},
    ]
    sc = y.max()
    ref = minimize(lambda b: 0.5 * np.sum((y / sc - b) ** 2), x0=np.full(len(y), y.mean() / sc),
                   jac=lambda b: b - y / sc, constraints=cons, method="SLSQP", options={"ftol": 1e-14, "maxiter": 500})
    assert np.sum((y - fit) ** 2) <= np.sum((y - ref.x * sc) ** 2) * (1 + 1e-6) + 1e-18


def test_fit_with_sigma_weights_relative_errors():
    """sigma = y fits relative errors: on concave data the small values move closer than in the plain fit; the result
    is still monotone convex; sigma of ones is the plain fit; bad sigma is rejected."""
    x = NODES.astype(float)
    y = 0.078 + 0.03 * np.sqrt(x / 64) + 0.0015 * x
    plain = fit_monotone_convex(y, x)
    rel = fit_monotone_convex(y, x, sigma=y)
    assert_monotone_convex(rel, x, tol=1e-9)
    assert abs(rel[0] - y[0]) / y[0] < abs(plain[0] - y[0]) / y[0]
    assert np.sum(((rel - y) / y) ** 2) <= np.sum(((plain - y) / y) ** 2) + 1e-15
    np.testing.assert_allclose(fit_monotone_convex(y, x, sigma=np.ones_like(y)), plain, rtol=1e-9)
    for bad in (np.zeros_like(y), -y, y[:-1], np.full_like(y, np.nan)):
        with pytest.raises(ValueError):
            fit_monotone_convex(y, x, sigma=bad)


def test_fit_keeps_convex_data_and_flattens_decreasing_data():
    x = NODES.astype(float)
    y = 0.05 + 1e-4 * x + 1e-6 * x**2
    np.testing.assert_allclose(fit_monotone_convex(y, x), y, rtol=1e-9)
    dec = np.linspace(1.0, 0.5, 6)
    np.testing.assert_allclose(fit_monotone_convex(dec), np.full(6, dec.mean()), rtol=1e-9)
    np.testing.assert_array_equal(fit_monotone_convex(np.array([0.3])), [0.3])
    # the fp32 anomaly of cpu-feasibility.md: n = 2-3 slower than n = 4-8
    bumpy = np.array([61, 106, 84, 92, 109, 147, 216, 340.0]) / 1e3
    fit = fit_monotone_convex(bumpy, np.array([0, 1, 2, 4, 8, 16, 32, 64.0]))
    assert_monotone_convex(fit, np.array([0, 1, 2, 4, 8, 16, 32, 64.0]), tol=1e-9)


def test_fit_rejects_bad_input():
    with pytest.raises(ValueError):
        fit_monotone_convex(np.array([1.0, np.nan]))
    with pytest.raises(ValueError):
        fit_monotone_convex(np.array([]))
    with pytest.raises(ValueError):
        fit_monotone_convex(np.array([1.0, 2.0]), np.array([1.0, 1.0]))


def test_from_measurements_fits_every_context():
    rng = np.random.default_rng(1)
    raw = np.stack([random_convex(rng, NODES.astype(float)) * np.exp(rng.normal(0, 0.2, len(NODES))) for _ in range(3)])
    cm = CostModel.from_measurements(0.02, [64, 256, 1024], NODES, raw, {"model": "x"})
    np.testing.assert_array_equal(cm.cv_raw_s, raw)
    for row_raw, row_fit in zip(raw, cm.cv_fit_s):
        np.testing.assert_allclose(row_fit, fit_monotone_convex(row_raw, NODES))
        assert_monotone_convex(row_fit, NODES, tol=1e-9)
    assert cm.meta["model"] == "x" and "date" in cm.meta and "version" in cm.meta


def test_constructor_validation():
    row = (0.01 + 1e-4 * NODES)[None, :]
    with pytest.raises(InputError) as e:
        CostModel(0.01, [10], NODES + 1, row, row)
    assert e.value.field == "nodes"
    with pytest.raises(InputError):
        CostModel(0.01, [10, 5], NODES, np.vstack([row, row]), np.vstack([row, row]))
    with pytest.raises(InputError):
        CostModel(-1.0, [10], NODES, row, row)
    with pytest.raises(InputError):
        CostModel(0.01, [10], NODES, row[:, :-1], row)
    with pytest.raises(InputError):
        CostModel(0.01, [10], NODES, row, row[:, ::-1])  # fit not monotone
    with pytest.raises(InputError):
        CostModel(0.01, [10], NODES, row * np.nan, row)


# ----------------------------------------------------------------------------------------------------------------------
# lookup
# ----------------------------------------------------------------------------------------------------------------------


def test_cv_interpolation_in_n_and_L():
    rng = np.random.default_rng(2)
    rows = np.stack([random_convex(rng, NODES.astype(float)) for _ in range(3)])
    rows = np.maximum.accumulate(rows, axis=0)  # cost grows with L
    cm = model_from_rows(rows, [64, 256, 1024])
    for ci, L in enumerate([64, 256, 1024]):
        np.testing.assert_allclose(cm.cv(NODES, L), rows[ci], rtol=1e-12)
        # linear between grid points in n
        assert cm.cv(12, L) == pytest.approx((rows[ci][4] + rows[ci][5]) / 2)
    # linear in L between contexts
    assert cm.cv(8, 160) == pytest.approx((rows[0][4] + rows[1][4]) / 2)
    np.testing.assert_allclose(cm.cv(NODES, 640), (rows[1] + rows[2]) / 2, rtol=1e-12)
    # below the smallest context: the smallest context's curve
    np.testing.assert_allclose(cm.cv(NODES, 0), rows[0])
    # scalar in, float out; array in, array of the same shape out
    assert isinstance(cm.cv(3, 100), float)
    assert cm.cv(np.arange(6).reshape(2, 3), 100).shape == (2, 3)
    assert cm.cv_curve(100, 10).shape == (11,)
    np.testing.assert_allclose(cm.cv_curve(100, 10), cm.cv(np.arange(11), 100))


def test_cv_extrapolation_beyond_largest_n_uses_last_slope():
    rng = np.random.default_rng(3)
    rows = np.stack([random_convex(rng, NODES.astype(float)) for _ in range(2)])
    rows = np.maximum.accumulate(rows, axis=0)
    cm = model_from_rows(rows, [100, 200])
    for L in (100, 150, 200):
        last = cm.cv(64, L)
        slope = cm.cv(64, L) - cm.cv(63, L)  # last segment 32..64 is linear, so this is its slope
        for n in (65, 100, 1024):
            assert cm.cv(n, L) == pytest.approx(last + slope * (n - 64), rel=1e-12)
        curve = cm.cv_curve(L, 300)
        assert_monotone_convex(curve, np.arange(301.0), tol=1e-9)
        assert curve[300] > curve[64]  # no clamp in n


def test_cv_extrapolation_beyond_largest_L():
    n = NODES.astype(float)
    contexts = np.array([100, 200, 400])
    # Cost that is exactly linear in L for every n: a + b n + c n L (the shape spec 3.5 reports) + d L
    exact = lambda L: 0.03 + 2e-4 * n + 1e-7 * n * L + 1e-6 * L  # noqa: E731
    cm = model_from_rows(np.stack([exact(L) for L in contexts]), contexts)
    for L in (500, 800, 4000):
        np.testing.assert_allclose(cm.cv(NODES, L), exact(L), rtol=1e-10)
    # Rows that do not keep growing with L: never below the last context, and still monotone convex in n.
    rows = np.stack([exact(400) * 1.2, exact(400)])
    rows[1, -1] += 0.01  # last slope grows, the others shrink
    cm2 = model_from_rows(rows, [300, 400])
    for L in (450, 1000, 10000):
        curve = cm2.cv(NODES, L)
        assert (curve >= rows[1] - 1e-15).all()
        assert_monotone_convex(curve, n, tol=1e-9)
        assert_monotone_convex(cm2.cv_curve(L, 200), np.arange(201.0), tol=1e-9)
    # Slopes that grow with L faster at small n than at large n: plain linear extrapolation of the values would bend
    # the curve concave; the extrapolated curve must stay monotone convex and above the last context.
    dx = np.diff(n)
    s_lo = np.array([0.0, 1.0, 2.0, 3.0, 4.0, 5.0, 6.0]) * 1e-4
    s_hi = np.array([2.0, 2.1, 2.2, 3.3, 4.4, 5.5, 6.6]) * 1e-4
    rows = np.stack([0.05 + np.r_[0.0, np.cumsum(s * dx)] for s in (s_lo, s_hi)])
    cm3 = model_from_rows(rows, [100, 200])
    for L in (300, 500, 5000):
        curve = cm3.cv(NODES, L)
        assert (curve >= rows[1] - 1e-15).all()
        assert_monotone_convex(curve, n, tol=1e-9)
    # a single-context model uses its only curve for every L
    one = model_from_rows(exact(100)[None, :], [100])
    np.testing.assert_allclose(one.cv(NODES, 5000), exact(100))


def test_cv_rejects_bad_arguments():
    cm = model_from_rows((0.01 + 1e-4 * NODES)[None, :], [10])
    with pytest.raises(ValueError):
        cm.cv(-1, 10)
    with pytest.raises(ValueError):
        cm.cv(np.array([1.0, np.nan]), 10)
    with pytest.raises(ValueError):
        cm.cv(1, -5)
    with pytest.raises(InputError):
        cm.cv_curve(10, -1)


@pytest.mark.parametrize("text", ["cd=0,cv=0", "cd_s=0,cv=0", "cd=0,cv_a=0,cv_b=0.002", "cd_s=0,cv_a=0"])
def test_weights_that_make_a_round_free_are_rejected(text):
    with pytest.raises(InputError) as e:
        CostWeights.parse(text)
    assert e.value.field == "cost_weights" and "both 0" in str(e.value)


@pytest.mark.parametrize("text", ["cd=2,", "cd=2,,cv=1", ",cv=1"])
def test_weights_with_a_stray_comma_are_rejected(text):
    with pytest.raises(InputError, match="empty item") as e:
        CostWeights.parse(text)
    assert e.value.field == "cost_weights"


@pytest.mark.parametrize("text,field,typed", [("cd=-1", "cd_scale", "cd (= cd_scale)"),
                                               ("cv=nan", "cv_scale", "cv (= cv_scale)"),
                                               ("cd_scale=-2", "cd_scale", "cd_scale must be in [0.0, 1000.0]"),
                                               ("cv=1e308", "cv_scale", "cv (= cv_scale) must be in [0.0, 1000.0]"),
                                               ("cv_a=2000", "cv_a", "cv_a must be in [0.0, 1000.0]")])
def test_weight_errors_name_the_key_as_typed(text, field, typed):
    with pytest.raises(InputError) as e:
        CostWeights.parse(text)
    assert e.value.field == field and str(e.value).startswith(f"{field}: {typed}")


def test_weights_with_one_zero_cost_are_allowed():
    cm = model_from_rows((0.01 + 1e-4 * NODES)[None, :], [10], cd=0.004)
    assert cm.weighted(CostWeights.parse("cd=0")).cv(3, 10) > 0  # free drafting, paid verify
    assert cm.weighted(CostWeights.parse("cv=0")).cd_s == pytest.approx(0.004)  # free verify, paid drafting
    assert cm.weighted(CostWeights.parse("cd=0,cv_a=0.01")).cv(0, 10) == pytest.approx(0.01)


def test_with_weights():
    cm = model_from_rows((0.01 + 1e-4 * NODES)[None, :], [10], cd=0.004)
    w = cm.with_weights(cd_scale=2.0, cv_scale=0.5)
    assert w.cd_s == pytest.approx(0.008)
    np.testing.assert_allclose(w.cv(NODES, 10), 0.5 * cm.cv(NODES, 10))
    assert cm.with_weights(cd_s=0.1).cd_s == 0.1
    with pytest.raises(InputError):
        cm.with_weights(cv_scale=-1)


def test_tree_scale_weighs_what_the_tree_adds_to_the_root_only_forward(tmp_path):
    """Cv' = cv_scale * Cv(0; L) + cv_tree_scale * (Cv(n; L) - Cv(0; L)) on the profile and on the analytic
    override; stays monotone and convex; None means cv_scale; stored with the model; old weight dicts still load."""
    rows = np.stack([0.05 + 1e-3 * NODES + 2e-6 * NODES ** 2, 0.08 + 2e-3 * NODES])
    cm = model_from_rows(rows, [64, 1024])
    for L in (10, 64, 500, 1024, 4000):
        base = cm.cv(NODES, L)
        w = cm.weighted(CostWeights.parse("cv=1.1,cv_tree=1.5"))
        np.testing.assert_allclose(w.cv(NODES, L), 1.1 * base[0] + 1.5 * (base - base[0]))
        assert is_monotone_convex(w.cv(NODES, L), NODES.astype(float))
    same = cm.weighted(CostWeights(cv_scale=1.3, cv_tree_scale=1.3))
    np.testing.assert_allclose(same.cv(NODES, 300), 1.3 * cm.cv(NODES, 300))
    assert CostWeights(cv_scale=1.3).tree_scale == 1.3 and CostWeights(cv_tree_scale=1.0).is_identity
    assert not CostWeights(cv_tree_scale=2.0).is_identity
    ana = cm.weighted(CostWeights(cv_a=0.05, cv_b=0.002, cv_c=1e-5, cv_scale=2.0, cv_tree_scale=0.5))
    n = NODES.astype(float)
    np.testing.assert_allclose(ana.cv(NODES, 77), 2.0 * 0.05 + 0.5 * (0.002 * n + 1e-5 * n * n))
    back = CostModel.load(w.save(tmp_path / "t.json"))
    assert back.weights == w.weights and back.weights.cv_tree_scale == 1.5
    old = {k: v for k, v in CostWeights(cd_scale=1.2).to_dict().items() if k != "cv_tree_scale"}
    assert CostWeights.from_dict(old) == CostWeights(cd_scale=1.2)
    with pytest.raises(InputError) as e:
        CostWeights.parse("cv_tree=-0.5")
    assert e.value.field == "cv_tree_scale" and "cv_tree (= cv_tree_scale)" in str(e.value)


def test_measured_curve_reads_the_raw_medians_made_non_decreasing(tmp_path):
    """curve="measured": Cv on the grid is the running maximum of the raw row (concave data kept concave, a dip
    flattened), interpolated in L like the fit, weighted, stored and restored with the model; the convex default is
    untouched, and an unknown curve is rejected."""
    x = NODES.astype(float)
    concave = 0.078 + 0.03 * np.sqrt(x) / np.sqrt(64) + 0.0015 * x  # a jump at small n, as on the dev CPU
    concave[3] -= 0.01  # a dip (noise): the running max keeps it flat
    raw = np.stack([concave, concave * 1.5])
    cm = CostModel.from_measurements(0.01, [64, 1024], NODES, raw)
    assert not is_monotone_convex(raw[0], x)
    m = cm.with_curve("measured")
    assert (m.curve, cm.curve) == ("measured", "convex")
    np.testing.assert_allclose(m.cv(NODES, 64), np.maximum.accumulate(raw[0]))
    np.testing.assert_allclose(m.cv(NODES, 1024), np.maximum.accumulate(raw[1]))
    np.testing.assert_allclose(m.cv(NODES, 544), np.maximum.accumulate(raw[0] * 1.25))  # halfway in L
    np.testing.assert_allclose(cm.cv(NODES, 64), cm.cv_fit_s[0])  # default unchanged
    assert m.cv(0, 64) < cm.cv(0, 64)  # the convex fit lifts the 1-token forward
    w = m.with_weights(cv_scale=0.5)
    assert w.curve == "measured"
    np.testing.assert_allclose(w.cv(NODES, 64), 0.5 * m.cv(NODES, 64))
    back = CostModel.load(w.save(tmp_path / "m.json"))
    assert back.curve == "measured" and back.weights == w.weights
    np.testing.assert_allclose(back.cv(NODES, 300), w.cv(NODES, 300))
    assert "curve" not in cm.to_dict() and m.to_dict()["curve"] == "measured"
    assert m.with_curve("convex").cv(5, 64) == cm.cv(5, 64)
    with pytest.raises(InputError) as e:
        cm.with_curve("wiggly")
    assert e.value.field == "curve"


def test_fit_gap_flags_a_concave_profile_only():
    x = NODES.astype(float)
    convex = np.stack([0.08 + 1e-3 * x + 2e-6 * x * x, 0.1 + 2e-3 * x])
    g = CostModel.from_measurements(0.01, [64, 1024], NODES, convex).fit_gap()
    assert g["rel_gap"] < 1e-6
    concave = 0.078 + 0.03 * np.sqrt(x) / np.sqrt(64) + 0.0015 * x  # a jump at small n, as on the dev CPU
    cm = CostModel.from_measurements(0.01, [64, 1024], NODES, np.stack([concave, convex[1]]))
    g = cm.fit_gap()
    rel = np.abs(cm.cv_fit_s - cm.cv_raw_s) / cm.cv_raw_s
    assert g["context"] == 64 and g["rel_gap"] == pytest.approx(rel.max()) and g["rel_gap"] > 0.05
    j = list(NODES).index(g["n"])
    assert (g["raw_s"], g["fit_s"]) == (pytest.approx(concave[j]), pytest.approx(cm.cv_fit_s[0, j]))
    small = cm.fit_gap(n_max=2)
    assert small["n"] <= 2 and small["rel_gap"] == pytest.approx(rel[:, :3].max())
    assert cm.with_weights(cv_scale=3.0).fit_gap() == g  # a property of the profile, not of the weights
    with pytest.raises(InputError):
        cm.fit_gap(n_max=-1)


# ----------------------------------------------------------------------------------------------------------------------
# persistence
# ----------------------------------------------------------------------------------------------------------------------


def test_json_round_trip(tmp_path):
    rng = np.random.default_rng(4)
    raw = np.stack([random_convex(rng, NODES.astype(float)) * np.exp(rng.normal(0, 0.1, len(NODES))) for _ in range(2)])
    cm = CostModel.from_measurements(0.0123, [64, 512], NODES, raw, {"model": "m", "dtype": "float32"})
    path = cm.save(tmp_path / "sub" / "cost.json")
    d = json.loads(path.read_text())
    assert d["format"] == FORMAT and d["version"] == VERSION
    assert path.stat().st_mode & 0o777 == 0o644  # a plain readable file, not mkstemp's 0600
    assert not list(path.parent.glob("*.tmp"))
    back = CostModel.load(path)
    assert back.cd_s == cm.cd_s and back.meta == cm.meta
    for name in ("contexts", "nodes", "cv_raw_s", "cv_fit_s"):
        np.testing.assert_array_equal(getattr(back, name), getattr(cm, name))
    np.testing.assert_array_equal(back.cv_curve(300, 100), cm.cv_curve(300, 100))
    assert CostModel.from_dict(cm.to_dict()).to_dict() == cm.to_dict()


def test_save_checks_the_path_and_names_it_in_errors(tmp_path, monkeypatch):
    cm = model_from_rows((0.01 + 1e-4 * NODES)[None, :], [10])
    monkeypatch.chdir(tmp_path)
    for bad in ("", "   ", ".", str(tmp_path), f"{tmp_path}/"):  # "" used to raise OSError [Errno 16] on '.'
        with pytest.raises(InputError, match="^path: ") as e:
            cm.save(bad)
        assert "\n" not in str(e.value)
    assert str(cm.save("plain")) == "plain.json"  # .json added
    assert CostModel.load(tmp_path / "plain.json").to_dict() == cm.to_dict()
    assert cm.save(tmp_path / "a.json") == tmp_path / "a.json"
    (tmp_path / "file").write_text("x")
    with pytest.raises(InputError, match="file/c.json") as e:  # parent is a file: cannot write
        cm.save(tmp_path / "file" / "c.json", "out")
    assert e.value.field == "out"

    def failing_replace(src, dst):
        raise PermissionError(13, "Permission denied", src)

    monkeypatch.setattr("dtree.cost.os.replace", failing_replace)
    with pytest.raises(InputError, match="Permission denied") as e:
        cm.save(tmp_path / "ro.json")
    assert "ro.json" in str(e.value) and ".tmp" not in str(e.value)  # the user's path, not the temp file
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.json", "file", "plain.json"]  # temp file removed


def test_load_rejects_wrong_or_corrupt_files(tmp_path):
    cm = model_from_rows((0.01 + 1e-4 * NODES)[None, :], [10])
    good = cm.to_dict()
    cases = {
        "wrong_format": {**good, "format": "something-else"},
        "wrong_version": {**good, "version": VERSION + 1},
        "missing_key": {k: v for k, v in good.items() if k != "cv_fit_s"},
        "bad_shape": {**good, "cv_raw_s": [[0.1, 0.2]]},
        "not_object": [1, 2, 3],
    }
    for name, content in cases.items():
        p = tmp_path / f"{name}.json"
        p.write_text(json.dumps(content))
        with pytest.raises(InputError):
            CostModel.load(p)
    truncated = tmp_path / "truncated.json"
    truncated.write_text(json.dumps(good)[:40])
    with pytest.raises(InputError) as e:
        CostModel.load(truncated)
    assert e.value.field == "cost_model"
    binary = tmp_path / "binary.json"
    binary.write_bytes(b"\xff\xfe\x00garbage")
    with pytest.raises(InputError):
        CostModel.load(binary)
    with pytest.raises(InputError):
        CostModel.load(tmp_path / "missing.json")


# ----------------------------------------------------------------------------------------------------------------------
# profiling on the real embedded model
# ----------------------------------------------------------------------------------------------------------------------


def test_profile_verify_on_embedded_model():
    from dtree.models import load_target

    target = load_target("embedded", dtype="float32", device="cpu")
    calls, between = [], []
    out = profile_verify(target.model, (0, 16), (0, 3), 2, torch.float32, "cpu",
                         progress=lambda done, total: calls.append((done, total)),
                         between=lambda: between.append(len(calls)))
    assert out.shape == (2, 2) and out.dtype == np.float64
    assert np.isfinite(out).all() and (out > 0).all()
    assert calls[-1] == (8, 8) and len(calls) == 8
    assert between == list(range(8))  # once after every timed forward (before its progress call)
    cm = CostModel.from_measurements(0.01, (0, 16), (0, 3), out, {"model": "embedded"})
    assert cm.cv(1, 8) > 0
    with pytest.raises(InputError):
        profile_verify(target.model, (16, 0), (0, 3), 1, torch.float32, "cpu")
    with pytest.raises(InputError):
        profile_verify(target.model, (16,), (0, 3), 0, torch.float32, "cpu")


def test_profile_cost_model_times_cd_between_the_verify_forwards(backend32, monkeypatch):
    """Cd is the median of drafter steps interleaved with the timed verifies (one after each), not a separate run."""
    import dtree.backend as backend_mod

    events = []

    class FakeStep:
        times = iter([0.005, 0.009, 0.007, 0.100])

        def __init__(self, *a, **k):
            pass

        def __call__(self):
            events.append("draft")
            return next(self.times)

    real = backend_mod.DraftStepTimer
    monkeypatch.setattr(backend_mod, "DraftStepTimer", FakeStep)
    cm = backend_mod.profile_cost_model(backend32.target, backend32.drafter, contexts=(32,), nodes=(0, 2), repeats=2,
                                        progress=lambda d, t: events.append("verify"))
    assert events == ["draft", "verify"] * 4
    assert cm.cd_s == pytest.approx(0.008) and cm.meta["cd_samples"] == 4
    # the real step: a drafter round of a few ms to a second on any machine
    monkeypatch.setattr(backend_mod, "DraftStepTimer", real)
    cm = backend_mod.profile_cost_model(backend32.target, backend32.drafter, contexts=(32,), nodes=(0, 2), repeats=2)
    assert cm.meta["cd_samples"] == 4 and 1e-4 < cm.cd_s < 1.0


def test_disturbances_flag_a_profile_measured_beside_another_job():
    """A quiet CPU-shaped profile (concave at small n, rising with L) passes; a profile whose root-only verify is
    cheaper at a longer context (208 ms at L=64, 43 ms at L=256, as one auto-profile beside a CI run measured) is
    flagged, as is one no convex curve comes within 100% of (a 40 ms root then 400 ms)."""
    nodes = np.array([0, 1, 2, 4, 8, 16])
    quiet = np.array([[77.9, 84.8, 92.2, 105.7, 118.2, 138.7], [90.0, 97.0, 105.0, 118.0, 131.0, 152.0]]) / 1e3
    assert CostModel.from_measurements(0.02, [64, 512], nodes, quiet).disturbances() == []
    noisy = np.array([[208.0, 300.0, 290.0, 310.0, 280.0, 320.0], [43.0, 45.0, 260.0, 48.0, 50.0, 55.0]]) / 1e3
    problems = CostModel.from_measurements(0.02, [64, 256], nodes, noisy).disturbances()
    assert len(problems) == 1 and "Cv(0; L=256) = 43.0 ms" in problems[0]
    jump = np.array([[40.0, 400.0, 420.0, 440.0, 460.0, 480.0]]) / 1e3
    problems = CostModel.from_measurements(0.02, [64], nodes, jump).disturbances()
    assert len(problems) == 1 and "convex fit is" in problems[0]


def test_backend_does_not_cache_a_disturbed_auto_profile(backend32, tmp_path, monkeypatch, capsys):
    """First use: a disturbed profile is measured once more; still disturbed, it is used with a warning and not
    cached; a quiet one is cached."""
    from dtree import backend as backend_mod

    nodes = np.array([0, 1, 2, 4])
    noisy = CostModel.from_measurements(0.02, [64, 256], nodes, np.array([[0.2, 0.3, 0.29, 0.31],
                                                                          [0.04, 0.045, 0.26, 0.05]]))
    quiet = CostModel.from_measurements(0.02, [64, 256], nodes, np.array([[0.08, 0.085, 0.09, 0.1],
                                                                          [0.09, 0.095, 0.1, 0.11]]))
    monkeypatch.setenv("DTREE_CACHE", str(tmp_path))
    monkeypatch.setattr(backend32, "_cost_model", None)
    queue = [noisy, noisy]
    monkeypatch.setattr(backend_mod, "profile_cost_model", lambda *a, **k: queue.pop(0))
    auto = backend_mod.default_cost_model_path(backend32.target, backend32.drafter)
    assert backend32.cost_model() is noisy
    assert queue == [] and not auto.exists()
    assert "looks disturbed" in backend32.cost_model_warning and "not cached" in backend32.cost_model_warning
    # the CLI says it as a one-line warning, not as a Python warning with a source location
    from dtree.cli import _print_cost_model_warning
    _print_cost_model_warning(backend32)
    err = capsys.readouterr().err
    assert err.startswith("warning: the automatic cost profile looks disturbed") and "UserWarning" not in err
    monkeypatch.setattr(backend32, "_cost_model", None)
    queue = [noisy, quiet]
    assert backend32.cost_model() is quiet and queue == [] and auto.exists()
    assert backend32.cost_model_warning is None
    monkeypatch.setattr(backend32, "_cost_model", None)


def test_profile_verify_pads_like_the_engine(monkeypatch):
    """With widths the profile times the padded forwards the engine runs (2-5 tokens -> 5, 6-8 -> 8, 1 unpadded)
    and crops the pads again (each context's cache is back at L after every forward)."""
    import dtree.trees as trees_mod
    from dtree.models import load_target

    target = load_target("embedded", dtype="float32", device="cpu")
    widths, real = [], trees_mod.tree_attention_inputs

    def spy(tree, start, dtype, device=None, width=None):
        out = real(tree, start, dtype, device, width)
        widths.append((tree.n_nodes, start, out[0].shape[1]))
        return out

    monkeypatch.setattr(trees_mod, "tree_attention_inputs", spy)
    out = profile_verify(target.model, (8,), (0, 1, 3, 5, 8), 1, torch.float32, "cpu", widths=(5, 8))
    assert out.shape == (1, 5) and (out > 0).all()
    assert {n: w for n, _, w in widths} == {0: 1, 1: 5, 3: 5, 5: 8, 8: 9}
    assert {s for _, s, _ in widths} == {8}  # every forward starts from the same L: pads were cropped
    with pytest.raises(InputError):
        profile_verify(target.model, (8,), (0, 1), 1, torch.float32, "cpu", widths=(1, 5))
