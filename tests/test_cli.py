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
    assert out["ar"]["verify_vs_model"] is None  # AR runs store no cost model
    assert out["verify_vs_model"] is None or out["verify_vs_model"] > 0  # ddtree: only when a profile exists here
    # the JSON carries the run's knobs exactly as the store keeps them
    with sqlite3.connect(store) as c:
        stored = json.loads(c.execute("select params from runs where id = ?", (out["run_id"],)).fetchone()[0])
    assert out["params"] == stored and out["params"]["budget"] == 4
    assert out["params"]["verify_widths"] and out["dtype"] == "float32" and out["drafter"]
    # the budget may also ride on the method key, as in bench (ddtree-adapt:4 == --method ddtree-adapt --budget 4)
    rc = main(["decode", "--prompt", "What is 3 + 4?", "--method", "ddtree-adapt:4", "--max-new-tokens", "8",
               "--dtype", "float32", "--device", "cpu", "--json", "--store", str(store)])
    assert rc == 0
    out = json.loads(capsys.readouterr().out)
    assert (out["method"], out["budget"], out["mean_budget"]) == ("ddtree-adapt", 4, 4.0)


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
    (["--prompt", "hi", "--method", "ddtree:abc"], "method"),
    (["--prompt", "hi", "--method", "caddtree-adapt:-1"], "method"),
    (["--prompt", "hi", "--method", "ddtree:8", "--budget", "4"], "budget"),
    (["--prompt", "hi", "--method", "chain", "--budget", "8"], "budget"),  # ran as a plain chain, budget ignored
    (["--prompt", "hi", "--method", "ar", "--budget", "8"], "budget"),
    (["--prompt", "hi", "--method", "caddtree:"], "method"),  # ran as caddtree while ddtree: was refused
])
def test_bad_input_exits_2_and_stores_nothing(tmp_path, capsys, backend32, args, field):
    store = tmp_path / "s.sqlite"
    rc = main(["decode", "--dtype", "float32", "--device", "cpu", "--store", str(store), *args])
    err = capsys.readouterr().err
    assert rc == 2
    assert f"error: --{field.replace('_', '-')}:" in err  # the option as the user typed it
    assert _n_runs(store) == 0


def test_store_defaults_follow_dtree_store(tmp_path, monkeypatch, capsys):
    """Every --store default is $DTREE_STORE when set (as in the app), else runs/dtree.sqlite; --help says so."""
    from dtree.cli import build_parser
    from dtree.store import default_store_path

    env = tmp_path / "env.sqlite"
    monkeypatch.setenv("DTREE_STORE", str(env))
    assert default_store_path() == str(env)
    parser = build_parser()
    for argv in (["decode", "--prompt", "hi"], ["bench"], ["diagnose"], ["replay", "--run", "1"],
                 ["calibrate", "--out", "c.json"]):
        assert parser.parse_args(argv).store == str(env), argv
    with pytest.raises(SystemExit):
        parser.parse_args(["replay", "--help"])
    assert "DTREE_STORE" in capsys.readouterr().out
    assert main(["replay", "--run", "1"]) == 2  # uses it: names the missing env store
    assert str(env) in capsys.readouterr().err
    monkeypatch.delenv("DTREE_STORE")
    assert build_parser().parse_args(["bench"]).store == "runs/dtree.sqlite"


def test_bench_out_records_the_dtype_used(tmp_path, capsys, target32):
    prompts = tmp_path / "p.jsonl"
    prompts.write_text(json.dumps({"question": "What is 2 + 2?"}) + "\n")
    out = tmp_path / "bench.json"
    rc = main(["bench", "--dataset", str(prompts), "--limit", "1", "--methods", "ar", "--max-new-tokens", "2",
               "--device", "cpu", "--no-store", "--out", str(out)])
    assert rc == 0
    assert json.loads(out.read_text())["dtype"] == "float32"  # the CPU default; was recorded as bfloat16
    assert json.loads(out.read_text())["tag"] is None  # --no-store
    assert json.loads(out.read_text())["drafter_dtype"] == "float32"
    assert json.loads(out.read_text())["drafter_dtype_note"] == "float32 (the target's dtype)"


def test_drafter_dtype_flag_is_validated_and_used(tmp_path, capsys, monkeypatch, target32):
    from dtree.cli import build_parser

    with pytest.raises(SystemExit) as e:
        build_parser().parse_args(["bench", "--drafter-dtype", "int8"])
    assert e.value.code == 2 and "--drafter-dtype" in capsys.readouterr().err
    prompts = tmp_path / "p.jsonl"
    prompts.write_text(json.dumps({"question": "What is 2 + 2?"}) + "\n")
    out = tmp_path / "bench.json"
    rc = main(["bench", "--dataset", str(prompts), "--limit", "1", "--methods", "ar,chain", "--max-new-tokens", "4",
               "--device", "cpu", "--no-store", "--drafter-dtype", "bfloat16", "--out", str(out)])
    assert rc == 0
    assert json.loads(out.read_text())["drafter_dtype"] == "bfloat16"
    assert json.loads(out.read_text())["drafter_dtype_note"] == "bfloat16 (asked for)"
    assert "drafter dtype: bfloat16 (asked for)" in capsys.readouterr().err
    assert json.loads(out.read_text())["summary"][1]["mismatches"] == 0  # fp32 target: still lossless
    monkeypatch.setenv("DTREE_DRAFTER_DTYPE", "bf16")  # a bad environment value fails before any model loads
    assert main(["bench", "--dataset", str(prompts), "--limit", "1", "--methods", "ar", "--no-store",
                 "--out", str(tmp_path / "never.json")]) == 2
    assert "DTREE_DRAFTER_DTYPE" in capsys.readouterr().err and not (tmp_path / "never.json").exists()


def test_bench_out_and_stdout_name_the_store_tag(tmp_path, capsys, target32):
    from dtree.store import TraceStore

    prompts = tmp_path / "p.jsonl"
    prompts.write_text(json.dumps({"question": "What is 2 + 2?"}) + "\n")
    out, db = tmp_path / "bench.json", tmp_path / "runs.sqlite"
    rc = main(["bench", "--dataset", str(prompts), "--limit", "1", "--methods", "ar", "--max-new-tokens", "2",
               "--device", "cpu", "--store", str(db), "--out", str(out)])
    assert rc == 0
    summary = json.loads(out.read_text())
    with TraceStore(db) as st:
        tags = set(st.list_runs()["tag"])
    assert summary["store"] == str(db) and tags == {summary["tag"]} and summary["tag"].startswith("bench:")
    assert f"under tag {summary['tag']}" in capsys.readouterr().out


@pytest.mark.parametrize("kind", ["binary", "missing-path", "bad-gzip"])
def test_bench_bad_dataset_files_exit_2_in_one_line(tmp_path, capsys, kind):
    store = tmp_path / "b.sqlite"
    if kind == "binary":  # e.g. a trace store given by mistake: was a UnicodeDecodeError traceback
        path = tmp_path / "some.sqlite"
        path.write_bytes(b"SQLite format 3\x00" + bytes(range(256)) * 8)
        want = "not a UTF-8 text file"
    elif kind == "bad-gzip":
        path = tmp_path / "p.jsonl.gz"
        path.write_bytes(b"not gzip at all")
        want = "cannot read"
    else:
        path = tmp_path / "x.jsonl"
        want = f"file not found: '{path}'"  # was: unknown dataset
    assert main(["bench", "--dataset", str(path), "--store", str(store)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: --dataset: ") and want in err and err.count("\n") == 1
    assert not store.exists()


def test_diagnose_names_the_method_field(tmp_path, capsys):
    assert main(["diagnose", "--method", "foo", "--store", str(tmp_path / "s.sqlite")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: --method: ") and "methods" not in err


@pytest.mark.parametrize("cmd", ["decode", "bench"])
def test_missing_drafter_folder_fails_before_the_target_loads(tmp_path, capsys, monkeypatch, cmd):
    import dtree.backend as B

    def no_load(*a, **k):  # the check must come first: loading the target and tuning kernels takes minutes
        raise AssertionError("the target was loaded before --drafter was checked")

    monkeypatch.setattr(B, "load_target", no_load)
    store = tmp_path / "s.sqlite"
    extra = ["--prompt", "hi"] if cmd == "decode" else ["--limit", "1"]
    rc = main([cmd, "--drafter", str(tmp_path / "no_such_drafter"), "--store", str(store), *extra])
    err = capsys.readouterr().err
    assert rc == 2 and "drafter:" in err and "no_such_drafter" in err
    (tmp_path / "half").mkdir()
    (tmp_path / "half" / "config.json").write_text("{not json")
    (tmp_path / "half" / "model.safetensors").write_bytes(b"")
    rc = main([cmd, "--drafter", str(tmp_path / "half"), "--store", str(store), *extra])
    assert rc == 2 and "cannot read" in capsys.readouterr().err
    assert _n_runs(store) == 0


@pytest.mark.parametrize("args, field", [
    (["--phase", "train", "--data-dir", "{tmp}/none"], "data_dir"),
    (["--phase", "train", "--data-dir", "{tmp}/empty"], "data_dir"),
    (["--phase", "train", "--data-dir", "{tmp}", "--extra-data", "{tmp}/none"], "extra_data"),
    (["--phase", "train", "--data-dir", "{tmp}", "--grow-from", "{tmp}/none.pt"], "grow_from"),
    (["--phase", "train", "--data-dir", "{tmp}", "--extra-share", "2"], "extra_share"),
    (["--phase", "gen", "--data-dir", "{tmp}/d", "--prompts", "{tmp}/none.jsonl"], "prompts"),
    (["--phase", "gen", "--data-dir", "{tmp}/d", "--threads", "0"], "threads"),
    (["--phase", "gen", "--data-dir", "{tmp}/d", "--gen-batch", "0"], "gen_batch"),
    (["--phase", "gen", "--data-dir", "{tmp}/d", "--max-new-tokens", "-3"], "max_new_tokens"),
    (["--phase", "gen", "--data-dir", "{tmp}/d", "--n-prompts", "0"], "n_prompts"),
    (["--phase", "gen", "--data-dir", "{tmp}/d", "--n-prompts", "10", "--n-heldout", "10"], "n_heldout"),
    (["--phase", "all", "--data-dir", "{tmp}/d", "--steps", "-5"], "steps"),
    (["--phase", "all", "--data-dir", "{tmp}/d", "--lr", "nan"], "lr"),
    (["--phase", "all", "--data-dir", "{tmp}/d", "--lr", "0"], "lr"),
    (["--phase", "all", "--data-dir", "{tmp}/d", "--block-size", "1"], "block_size"),
    (["--phase", "gen", "--data-dir", "{tmp}/file.txt"], "data_dir"),  # a file where the answers' folder goes
    (["--phase", "all", "--data-dir", "{tmp}/d", "--out", "{tmp}/file.txt"], "out"),
    (["--phase", "train", "--data-dir", "{tmp}", "--state", "{tmp}/empty"], "state"),
    (["--phase", "gen", "--data-dir", "{tmp}/d", "--prompts", "{tmp}/two.jsonl"], "n_heldout"),  # 48 held out of 2
    (["--phase", "gen", "--data-dir", "{tmp}/d", "--prompts", "{tmp}/responses.jsonl", "--n-heldout", "0"],
     "prompts"),  # an empty file: 'holds no prompts', not 'lower --n-heldout'
    (["--phase", "gen", "--data-dir", "{tmp}/d", "--target-layer-ids", "1,x"], "target_layer_ids"),
    (["--phase", "gen", "--data-dir", "{tmp}/d", "--target-layer-ids", "1,"], "target_layer_ids"),
    (["--phase", "gen", "--data-dir", "{tmp}/d", "--target-layer-ids", "-1"], "target_layer_ids"),
    # places no file can be created in (as root too): refused now, not after training at the first save
    (["--phase", "train", "--data-dir", "{tmp}", "--out", "/proc/dtree-ck"], "out"),
    (["--phase", "train", "--data-dir", "{tmp}", "--state", "/proc/dtree-state.pt"], "state"),
    (["--phase", "all", "--data-dir", "{tmp}/d", "--out", "{tmp}/file.txt/ck"], "out"),
    # training options given to --phase gen: a typo or a wrong phase, said before the target loads
    (["--phase", "gen", "--data-dir", "{tmp}/d", "--extra-share", "1.5"], "extra_share"),
    (["--phase", "gen", "--data-dir", "{tmp}/d", "--extra-data", "{tmp}/none"], "extra_data"),
    (["--phase", "train", "--data-dir", "{tmp}", "--soft-weight", "1.5"], "soft_weight"),
    (["--phase", "train", "--data-dir", "{tmp}", "--soft-weight", "nan"], "soft_weight"),
    (["--phase", "gen", "--data-dir", "{tmp}/d", "--soft-topk", "-1"], "soft_topk"),
    (["--phase", "gen", "--data-dir", "{tmp}/d", "--soft-topk", "5000"], "soft_topk"),
    # an option only the other phase reads, changed from its default: refused, not silently ignored
    (["--phase", "gen", "--data-dir", "{tmp}/d", "--soft-weight", "0.5"], "soft_weight"),
    (["--phase", "gen", "--data-dir", "{tmp}/d", "--extra-share", "0.5"], "extra_share"),
    (["--phase", "gen", "--data-dir", "{tmp}/d", "--time-limit-min", "30"], "time_limit_min"),
    (["--phase", "train", "--data-dir", "{tmp}", "--soft-topk", "4"], "soft_topk"),
    (["--phase", "train", "--data-dir", "{tmp}", "--gen-dtype", "bfloat16"], "gen_dtype"),
    (["--phase", "train", "--data-dir", "{tmp}", "--max-new-tokens", "8"], "max_new_tokens"),
    (["--phase", "gen", "--data-dir", "{tmp}/d", "--lr", "0.5"], "lr"),
    (["--phase", "gen", "--data-dir", "{tmp}/d", "--num-layers", "3"], "num_layers"),
    (["--phase", "gen", "--data-dir", "{tmp}/d", "--out", "{tmp}/ck"], "out"),
])
def test_train_drafter_bad_paths_and_numbers_fail_before_the_target_loads(tmp_path, capsys, monkeypatch, args, field):
    import dtree.models as M

    def no_load(*a, **k):
        raise AssertionError("the target was loaded before the paths were checked")

    monkeypatch.setattr(M, "load_target", no_load)
    (tmp_path / "empty").mkdir()
    (tmp_path / "responses.jsonl").write_text("")  # {tmp} itself passes the data_dir checks
    (tmp_path / "file.txt").write_text("not a folder")
    (tmp_path / "two.jsonl").write_text('{"question": "a?"}\n{"question": "b?"}\n')
    rc = main(["train-drafter", *[a.replace("{tmp}", str(tmp_path)) for a in args]])
    assert rc == 2 and f"error: --{field.replace('_', '-')}:" in capsys.readouterr().err  # the option as typed
    assert not (tmp_path / "d").exists()


def test_train_drafter_refuses_a_data_folder_not_made_by_gen_before_the_target_loads(tmp_path, capsys, monkeypatch):
    """A ``responses.jsonl`` whose lines are JSON but not answer records crashed with ``KeyError: 'idx'`` after the
    target had loaded."""
    import dtree.models as M

    def no_load(*a, **k):
        raise AssertionError("the target was loaded before the data folder was read")

    monkeypatch.setattr(M, "load_target", no_load)
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "responses.jsonl").write_text('{"x": 1}\n')
    rc = main(["train-drafter", "--phase", "train", "--data-dir", str(bad), "--out", str(tmp_path / "ck")])
    err = capsys.readouterr().err
    assert rc == 2 and "error: --data-dir:" in err and "line 1 is not an answer written by --phase gen" in err
    assert "no idx, prompt_ids, response_ids, shard" in err and "Traceback" not in err
    assert not (tmp_path / "ck").exists()


class _Stream:
    def __init__(self, tty: bool):
        self.tty, self.parts = tty, []

    def isatty(self) -> bool:
        return self.tty

    def write(self, s: str) -> int:
        self.parts.append(s)
        return len(s)

    def flush(self) -> None:
        pass


@pytest.mark.parametrize("value", ["maybe", "ture", "", "2"])
def test_train_drafter_bool_options_refuse_anything_but_yes_or_no(capsys, value):
    """``--qk-norm maybe`` used to mean False (any text not in the true list), silently flipping the switch."""
    from dtree.cli import build_parser
    from dtree.train import parse_bool

    with pytest.raises(SystemExit) as e:
        build_parser().parse_args(["train-drafter", "--qk-norm", value])
    assert e.value.code == 2 and "--qk-norm" in capsys.readouterr().err
    assert [parse_bool(v) for v in ("1", "True", "yes", "ON", "0", "false", "No", "off")] == [True] * 4 + [False] * 4
    assert build_parser().parse_args(["train-drafter", "--init-from-target", "on"]).init_from_target is True


def test_count_line_rewrites_one_line_on_a_terminal_and_logs_quarters_elsewhere():
    from dtree.cli import count_line

    tty = _Stream(True)
    progress = count_line("profiling", tty)
    for d in range(1, 41):
        progress(d, 40)
    text = "".join(tty.parts)
    assert text.count("\r") == 40 and text.endswith("\rprofiling 40/40\n") and text.count("\n") == 1

    log = _Stream(False)
    progress = count_line("profiling", log)
    for d in range(1, 41):
        progress(d, 40)
    lines = "".join(log.parts).splitlines()
    assert "\r" not in "".join(log.parts)
    assert lines == ["profiling 1/40", "profiling 10/40", "profiling 20/40", "profiling 30/40", "profiling 40/40"]


@pytest.mark.parametrize("cmd", [
    ["decode", "--prompt", "hi", "--method", "chain"],
    ["bench", "--dataset", "gsm8k", "--limit", "1", "--methods", "ar,chain"],
    ["diagnose", "--dataset", "gsm8k", "--limit", "1", "--method", "chain"],
])
@pytest.mark.parametrize("kind", ["folder", "text", "foreign"])
def test_a_bad_store_fails_before_the_model_loads_and_is_left_untouched(tmp_path, capsys, monkeypatch, cmd, kind):
    import dtree.backend as B

    def no_load(*a, **k):
        raise AssertionError("the model was loaded before the store was checked")

    monkeypatch.setattr(B.Backend, "__init__", no_load)
    store = tmp_path / "s.sqlite"
    if kind == "folder":
        store.mkdir()
    elif kind == "text":
        store.write_text("not a database\n")
    else:
        con = sqlite3.connect(store)
        con.execute("CREATE TABLE users (id INTEGER)")
        con.commit()
        con.close()
    before = None if kind == "folder" else store.read_bytes()
    rc = main([*cmd, "--store", str(store)])
    err = capsys.readouterr().err
    assert rc == 2 and "store:" in err and str(store) in err
    if before is not None:
        assert store.read_bytes() == before


def test_a_bad_dtree_store_is_named_as_the_variable_not_as_store(tmp_path, capsys, monkeypatch):
    import dtree.backend as B

    def no_load(*a, **k):
        raise AssertionError("the model was loaded before the store was checked")

    monkeypatch.setattr(B.Backend, "__init__", no_load)
    store = tmp_path / "s.sqlite"
    store.write_text("not a database\n")
    monkeypatch.setenv("DTREE_STORE", str(store))
    assert main(["decode", "--prompt", "hi"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: DTREE_STORE (the store used when --store is not given): ") and str(store) in err
    assert "--store:" not in err
    assert main(["decode", "--prompt", "hi", "--store", str(store)]) == 2  # typed: named as the option
    assert capsys.readouterr().err.startswith("error: --store: ")
    assert store.read_text() == "not a database\n"


def test_drafter_run_name_is_one_name_per_checkpoint(tmp_path, monkeypatch):
    """Runs store one name per drafter folder however it was typed, so fit-cost / calibrate group them as one setup:
    the shipped folder by any path is the shipped name; another folder by its absolute path (not cwd-relative)."""
    from dtree.backend import drafter_run_name
    from dtree.drafter import default_drafter_path

    d = default_drafter_path()
    assert drafter_run_name(None) == d.name == drafter_run_name(str(d)) == drafter_run_name(str(d) + "/")
    monkeypatch.chdir(d.parent)
    assert drafter_run_name(d.name) == d.name
    other = tmp_path / "ck"
    other.mkdir()
    monkeypatch.chdir(tmp_path)
    assert drafter_run_name("ck") == drafter_run_name(str(other) + "/") == str(other.resolve())


def test_read_only_commands_refuse_an_empty_store_file_and_leave_it_empty(tmp_path, capsys):
    """replay / calibrate / fit-cost / diagnose --run on a 0-byte file: 'empty', exit 2, and the file stays 0 bytes
    (opening it used to write a fresh schema into it and then report a missing run)."""
    empty = tmp_path / "empty.sqlite"
    empty.touch()
    for argv in (["replay", "--store", str(empty), "--run", "1"],
                 ["calibrate", "--store", str(empty), "--out", str(tmp_path / "cal.json")],
                 ["fit-cost", "--store", str(empty), "--out", str(tmp_path / "fit.json")],
                 ["diagnose", "--store", str(empty), "--run", "1"]):
        assert main(argv) == 2, argv
        assert "is an empty file" in capsys.readouterr().err, argv
        assert empty.stat().st_size == 0 and sorted(p.name for p in tmp_path.iterdir()) == ["empty.sqlite"], argv
