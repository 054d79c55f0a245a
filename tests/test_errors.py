"""Input checks: messages name the field and the allowed range in words (no 'inf' bounds)."""

from __future__ import annotations

import pytest

from dtree.engine import DecodeConfig
from dtree.errors import InputError, check_float, check_int


@pytest.mark.parametrize("call, message", [
    (lambda: check_int("limit", 0, lo=1), "limit: must be >= 1, got 0"),
    (lambda: check_int("depth", 9, hi=8), "depth: must be <= 8, got 9"),
    (lambda: check_int("budget", 300, 0, 256), "budget: must be in [0, 256], got 300"),
    (lambda: check_float("cd_scale", -0.5, lo=0.0), "cd_scale: must be >= 0.0, got -0.5"),
    (lambda: check_float("cd_scale", float("nan"), lo=0.0), "cd_scale: must be a finite number, got nan"),
    (lambda: check_int("seed", True), "seed: must be an integer, got True"),
])
def test_range_messages(call, message):
    with pytest.raises(InputError) as err:
        call()
    assert str(err.value) == message


def test_config_check_before_the_model_loads_states_no_made_up_upper_bound():
    with pytest.raises(InputError) as err:
        DecodeConfig("ddtree", budget=4, max_new_tokens=0).validated(None, 0, 1)
    assert str(err.value) == "max_new_tokens: must be >= 1, got 0"
    assert DecodeConfig("ddtree", budget=4, max_new_tokens=10**9).validated(None, 0, 1).max_new_tokens == 10**9
    with pytest.raises(InputError, match=r"max_new_tokens: must be in \[1, 100\]"):  # a loaded model's room
        DecodeConfig("ddtree", budget=4, max_new_tokens=200).validated(120, 4, 16)


def test_method_budget_too_large_names_the_budget():
    from dtree.records import parse_method_key

    with pytest.raises(InputError) as err:
        parse_method_key("ddtree:2000", "method")
    assert str(err.value) == "method: budget 2000 in 'ddtree:2000' is too large: B must be an integer in 0..1024"
    assert parse_method_key("ddtree:1024", "method") == ("ddtree", 1024)


def test_one_method_with_a_trailing_comma_points_at_bench_methods():
    from dtree.records import parse_method, parse_method_key

    for call in (lambda: parse_method("caddtree,"), lambda: parse_method_key("caddtree,", "method")):
        with pytest.raises(InputError, match=r"method: 'caddtree,': one method here, without a comma .*bench --methods"):
            call()
    assert parse_method("caddtree").base == "caddtree"


def test_diagnose_run_refuses_decode_options(capsys, tmp_path):
    """`diagnose --run` reads stored runs: a --dataset (or --limit/--method/--max-new-tokens) given with it would be
    silently ignored, so it is an error that names them."""
    from dtree import cli

    rc = cli.main(["diagnose", "--run", "1", "--dataset", "humaneval", "--limit", "3",
                   "--store", str(tmp_path / "none.sqlite")])
    assert rc == 2
    err = capsys.readouterr().err
    assert "--dataset, --limit only apply when decoding fresh prompts" in err
    assert not (tmp_path / "none.sqlite").exists()


def test_check_output_file_refuses_before_any_work(tmp_path, monkeypatch):
    import os
    from types import SimpleNamespace

    import dtree.errors
    from dtree.errors import check_output_file

    assert check_output_file("out", str(tmp_path / "new" / "deeper" / "s.json"), (".json",)).name == "s.json"
    assert not (tmp_path / "new").exists()  # checked, not created
    blocker = tmp_path / "afile"
    blocker.write_text("x")
    cases = [("", "give a file path"), (str(tmp_path), "is a directory"), (str(tmp_path) + "/", "is a directory"),
             (str(tmp_path / "s.txt"), r"must end in \.csv or \.json"),
             (str(blocker / "s.json"), "is a file, not a folder"),
             (str(tmp_path / "gone.json") + "/", r"ends in '/', which names a folder: give a file path")]
    for text, msg in cases:
        with pytest.raises(InputError, match=msg) as err:
            check_output_file("out", text, (".csv", ".json"))
        assert err.value.field == "out"
    real = os.statvfs
    monkeypatch.setattr(dtree.errors.os, "statvfs", lambda p: SimpleNamespace(f_flag=os.ST_RDONLY))
    with pytest.raises(InputError, match=r"folder .* is not writable \(read-only file system\)"):
        check_output_file("out", str(tmp_path / "s.json"))
    monkeypatch.setattr(dtree.errors.os, "statvfs", real)
    monkeypatch.setattr(dtree.errors.os, "access", lambda p, mode: False)
    with pytest.raises(InputError, match=r"not writable \(no permission to write there\)"):
        check_output_file("out", str(tmp_path / "s.json"))


def test_output_checks_create_a_file_to_be_sure_and_leave_nothing(tmp_path):
    """A root user passes the permission flags in /proc, where no file can be created: ``bench --out /proc/x.json``
    ran the whole bench and then failed to write. The check now creates (and removes) a probe file."""
    from dtree.errors import check_output_file, check_output_folder

    for check, path in ((check_output_file, "/proc/dtree-x.json"), (check_output_folder, "/proc/dtree-ck"),
                        (check_output_folder, "/proc/dtree-ck/deeper")):
        with pytest.raises(InputError, match=r"not writable \(cannot create a file there") as err:
            check(check.__name__, path)
        assert err.value.field == check.__name__
    assert check_output_folder("out", str(tmp_path / "ck" / "deeper")) == tmp_path / "ck" / "deeper"
    assert check_output_file("out", str(tmp_path / "s.json"), (".json",)) == tmp_path / "s.json"
    assert list(tmp_path.iterdir()) == []  # probes removed, nothing created
    (tmp_path / "f").write_text("x")
    for text, msg in (("", "give a folder"), (str(tmp_path / "f"), "is a file, not a folder"),
                      (str(tmp_path / "f" / "ck"), "is a file, not a folder")):
        with pytest.raises(InputError, match=msg):
            check_output_folder("out", text)


def test_run_id_lists_refuse_an_id_given_twice():
    from dtree.errors import int_items

    assert int_items("run", "3,4,5", distinct=True) == [3, 4, 5]
    assert int_items("budgets", "4,4") == [4, 4]  # only where asked
    with pytest.raises(InputError, match=r"6 given more than once in '6,7,6'") as err:
        int_items("run", "6,7,6", distinct=True)
    assert err.value.field == "run"


def test_json_output_path_names_a_path_through_a_file_and_a_trailing_slash(tmp_path):
    """``fit-cost --out <a file>/fit.json`` said only "File exists" (from the write at the end); ``--out new.json/``
    said "is a directory" of a folder that did not exist."""
    from dtree.cost import json_output_path

    blocker = tmp_path / "afile"
    blocker.write_text("x")
    with pytest.raises(InputError, match=r"^out: cannot write .*afile/fit.json'.*afile' is a file, not a folder"):
        json_output_path(str(blocker / "fit.json"), "out")
    with pytest.raises(InputError, match=r"^out: '.*new.json/' ends in '/', which names a folder"):
        json_output_path(str(tmp_path / "new.json") + "/", "out")
    assert json_output_path(str(tmp_path / "sub" / "fit"), "out") == tmp_path / "sub" / "fit.json"
    assert not (tmp_path / "sub").exists()  # checked, not created


def test_as_option_writes_a_cost_weight_as_the_cost_weights_option():
    from argparse import Namespace
    from dataclasses import fields

    from dtree.cost import CostWeights
    from dtree.errors import _OPTION_OF

    # every weight is mapped (the list in dtree.errors is written out: dtree.cost imports dtree.errors)
    assert {f.name: "cost_weights" for f in fields(CostWeights)}.items() <= _OPTION_OF.items()
    for text, typed in [("cd=-1", "cd (= cd_scale)"), ("cv=nan", "cv (= cv_scale)"), ("cv_a=-2", "cv_a")]:
        with pytest.raises(InputError) as e:
            CostWeights.parse(text)
        message = e.value.as_option(Namespace(cost_weights=text))
        assert message.startswith(f"--cost-weights: {typed} "), message
        assert e.value.as_option(Namespace(limit=1)) == str(e.value)  # a command without the option keeps the field


def test_as_option_writes_run_id_as_the_run_option():
    from argparse import Namespace

    e = InputError("run_id", "no run with id 7")
    assert e.as_option(Namespace(run="7")) == "--run: no run with id 7"
    assert e.as_option(Namespace(limit=3)) == "run_id: no run with id 7"  # no such option: the field stays
    assert InputError("limit", "must be >= 1").as_option(Namespace(limit=0)) == "--limit: must be >= 1"
