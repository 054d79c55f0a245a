"""CLI: ``profile`` writes a loadable cost model; ``decode --cost-weights`` stores the weighted model with the run and
warns about a cost model measured for another dtype; ``replay`` prints the sweep; bad input exits 2, writing nothing."""

from __future__ import annotations

import json

import numpy as np
import pytest

from dtree.cli import main, profile_nodes
from dtree.cost import CostModel


@pytest.fixture(scope="module")
def drafter_dir(target32, tmp_path_factory):
    from dtree.drafter import (
        DFlashDrafter,
        DrafterConfig,
        init_from_target,
        save_drafter,
    )

    d = DFlashDrafter(DrafterConfig(num_hidden_layers=1, qk_norm=False))
    init_from_target(d, target32.model)
    return str(save_drafter(d, tmp_path_factory.mktemp("drafter") / "rand", dtype=None))


BASE = ["--dtype", "float32", "--device", "cpu"]


def test_profile_nodes_grid():
    assert profile_nodes(4) == [0, 1, 2, 3, 4]
    g = profile_nodes(256)
    assert g[0] == 0 and g[-1] == 256 and {1, 2, 4, 8, 16, 32, 64, 128, 256} <= set(g) and 96 in g
    assert profile_nodes(100)[-1] == 100


def test_profile_writes_a_loadable_cost_model(tmp_path, capsys, drafter_dir):
    out = tmp_path / "cm.json"
    rc = main(["profile", *BASE, "--drafter", drafter_dir, "--contexts", "32,64", "--max-nodes", "4", "--repeats", "1",
               "--out", str(out)])
    cap = capsys.readouterr()
    assert rc == 0, cap.err
    cm = CostModel.load(out)
    assert list(cm.contexts) == [32, 64] and list(cm.nodes) == [0, 1, 2, 3, 4]
    assert cm.cd_s > 0 and (cm.cv_raw_s > 0).all()
    assert cm.meta["dtype"] == "float32" and cm.meta["target"] == "embedded"
    assert str(out) in cap.out and "raw/fit" in cap.out
    # the table prints the stored values in ms
    assert f"{cm.cv_fit_s[0, 4] * 1e3:8.2f}" in cap.out
    # a profile up to 4 nodes says caddtree's default maximum (256) lies beyond it; --out is not the default model
    assert "profiled up to n = 4 nodes, caddtree's default maximum budget is 256" in cap.out
    assert "default cost model" not in cap.out


@pytest.mark.parametrize("args, field", [
    (["--max-nodes", "0"], "max_nodes"),
    (["--max-nodes", "2000"], "max_nodes"),
    (["--contexts", "0,64"], "contexts"),
    (["--contexts", "64,x"], "contexts"),
    (["--contexts", "100000"], "contexts"),
    (["--contexts", "32,"], "contexts"),
    (["--repeats", "0"], "repeats"),
])
def test_profile_bad_input_exits_2_and_writes_nothing(tmp_path, capsys, drafter_dir, args, field):
    out = tmp_path / "cm.json"
    rc = main(["profile", *BASE, "--drafter", drafter_dir, "--contexts", "32", "--max-nodes", "4", "--repeats", "1",
               "--out", str(out), *args])
    assert rc == 2
    err = capsys.readouterr().err
    assert f"error: --{field.replace('_', '-')}:" in err  # the option as typed
    if args[-1].endswith(","):  # a stray comma is named as such
        assert "empty item" in err
    assert not out.exists()


@pytest.mark.parametrize("weights, said", [("cd=-1", "--cost-weights: cd (= cd_scale) must be in [0.0, 1000.0]"),
                                           ("cv=nan", "--cost-weights: cv (= cv_scale) must be a finite number"),
                                           ("cv_c=-0.1", "--cost-weights: cv_c must be in [0.0, 1000.0]"),
                                           ("speed=2", "--cost-weights: ")])
def test_decode_bad_cost_weights_exit_2(tmp_path, capsys, weights, said):
    store = tmp_path / "s.sqlite"
    rc = main(["decode", *BASE, "--prompt", "hi", "--cost-weights", weights, "--store", str(store)])
    assert rc == 2 and f"error: {said}" in capsys.readouterr().err  # the option, then the key as typed
    assert not store.exists()


def test_decode_with_weights_warns_on_foreign_cost_model_then_replay(tmp_path, capsys, drafter_dir, target32):
    nodes = np.array([0, 1, 2, 4, 8, 16])
    cm = CostModel.from_measurements(0.01, [32, 512], nodes, np.stack([0.02 + 1e-3 * nodes, 0.03 + 2e-3 * nodes]),
                                     {"target": "embedded", "dtype": "bfloat16"})
    path = cm.save(tmp_path / "bf16.json")
    store = tmp_path / "s.sqlite"
    rc = main(["decode", *BASE, "--drafter", drafter_dir, "--prompt", "Count to ten.", "--method", "caddtree",
               "--budget", "8", "--max-new-tokens", "6", "--topk-log", "8", "--cost-model", str(path),
               "--cost-weights", "cd=2,cv=0.5", "--store", str(store), "--json"])
    cap = capsys.readouterr()
    assert rc == 0, cap.err
    assert "warning" in cap.err and "dtype 'bfloat16'" in cap.err
    assert "extrapolated" not in cap.err  # budget 8 <= the 16 profiled nodes
    run_id = json.loads(cap.out)["run_id"]
    # trees built beyond the profiled nodes are said (a flat 3-node profile: extra nodes look free, so caddtree fills
    # its cap); weights on a fixed-budget method are said to change no tree
    flat = CostModel.from_measurements(0.01, [32, 512], [0, 1, 2], np.full((2, 3), 0.05),
                                       {"target": "embedded", "dtype": "float32"}).save(tmp_path / "flat.json")
    for extra, said in ((["--method", "caddtree", "--budget", "12", "--cost-model", str(flat)],
                         "profiled up to n = 2 nodes, caddtree built trees of up to 12 nodes"),
                        (["--method", "ddtree", "--budget", "4", "--cost-weights", "cd=2"], "tree size does not "
                                                                                             "depend on them")):
        rc = main(["decode", *BASE, "--drafter", drafter_dir, "--prompt", "Count to ten.", "--max-new-tokens", "2",
                   "--no-store", *extra])
        cap = capsys.readouterr()
        assert rc == 0 and said in cap.err, cap.err

    from dtree.store import TraceStore

    with TraceStore(store) as s:
        run = s.load_run(run_id)
    stored = CostModel.from_dict(run.cost_model)
    assert stored.weights.cd_scale == 2.0 and stored.weights.cv_scale == 0.5
    assert stored.cd_s == pytest.approx(0.02)
    np.testing.assert_allclose(stored.cv(nodes, 100), 0.5 * cm.cv(nodes, 100))

    rc = main(["replay", "--run", str(run_id), "--store", str(store), "--budgets", "1,2,4,8", "--json"])
    cap = capsys.readouterr()
    assert rc == 0, cap.err
    out = json.loads(cap.out)
    rows = out["rows"]
    assert [r["budget"] for r in rows if r["method"] == "ddtree"] == [1, 2, 4, 8]
    cad = next(r for r in rows if r["method"] == "caddtree")
    assert cad["mean_tau"] == pytest.approx(run.mean_tau) and cad["mean_budget"] == pytest.approx(run.mean_budget)

    rc = main(["replay", "--run", str(run_id), "--store", str(store), "--budgets", "1,4"])
    cap = capsys.readouterr()
    assert rc == 0 and "ddtree" in cap.out and "oracle" in cap.out and "position bias" in cap.err

    for bad, field in ((["--run", "999"], "error: --run: no run with id 999 in"), (["--run", "x"], "run"), (["--budgets", "0"], "budgets"),
                       (["--cost-weights", "cv=-1"], "--cost-weights: cv (= cv_scale) must"), (["--store", str(tmp_path / "none.sqlite")], "store"),
                       (["--run", f"{run_id},{run_id}"], "run"),  # was replayed twice: every round counted double
                       (["--budgets", ""], "budgets"), (["--budgets", " "], "budgets")):  # meant the default 1..256
        argv = ["replay", "--run", str(run_id), "--store", str(store), *bad]
        assert main(argv) == 2
        assert (field if " " in field else f"{field}:") in capsys.readouterr().err
