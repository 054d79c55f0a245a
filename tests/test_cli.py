"""CLI: a real decode logged to the store, and every bad input exits 2 with nothing written."""

from __future__ import annotations

import json
import sqlite3

import pytest

from dtree.cli import main


def _n_runs(path) -> int:
    if not path.exists():
        return 0
    with sqlite3.connect(path) as c:
        return c.execute("select count(*) from runs").fetchone()[0]


def test_decode_json_with_compare_ar(tmp_path, capsys, backend32):
    store = tmp_path / "s.sqlite"
    rc = main(["decode", "--prompt", "What is 3 + 4?", "--method", "ddtree", "--budget", "4", "--max-new-tokens", "16",
               "--dtype", "float32", "--device", "cpu", "--compare-ar", "--json", "--store", str(store)])
    assert rc == 0
    out = json.loads(capsys.readouterr().out)
    assert out["method"] == "ddtree" and out["new_tokens"] >= 1 and out["identical_to_ar"] is True
    assert out["speedup_vs_ar"] == pytest.approx(out["tokens_per_s"] / out["ar"]["tokens_per_s"], rel=1e-2)
    assert _n_runs(store) == 2


@pytest.mark.parametrize("args, field", [
    (["--prompt", "   "], "prompt"),
    (["--prompt", "hi", "--budget", "-1", "--method", "ddtree"], "budget"),
    (["--prompt", "hi", "--budget", "5000", "--method", "ddtree"], "budget"),
    (["--prompt", "hi", "--max-new-tokens", "0"], "max_new_tokens"),
    (["--prompt", "hi", "--max-new-tokens", "100000"], "max_new_tokens"),
    (["--prompt", "hi", "--temperature", "-0.5"], "temperature"),
    (["--prompt", "hi", "--temperature", "nan"], "temperature"),
    (["--prompt", "hi", "--method", "beam"], "method"),
    (["--prompt", "hi", "--target", "./no/such/model"], "target"),
    (["--prompt", "word " * 9000], "prompt"),
    (["--prompt", "hi", "--device", "tpu"], "device"),
    (["--prompt", "hi", "--topk-log", "0"], "topk_log"),
])
def test_bad_input_exits_2_and_stores_nothing(tmp_path, capsys, backend32, args, field):
    store = tmp_path / "s.sqlite"
    rc = main(["decode", "--dtype", "float32", "--device", "cpu", "--store", str(store), *args])
    err = capsys.readouterr().err
    assert rc == 2
    assert f"{field}:" in err
    assert _n_runs(store) == 0
