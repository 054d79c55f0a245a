"""Tests of the SQLite trace store (dtree/store.py) on real SQLite files: round trips, crashes, concurrency, bad files."""

from __future__ import annotations

import dataclasses
import json
import multiprocessing as mp
import os
import sqlite3
import subprocess
import sys
import threading
from datetime import datetime, timedelta, timezone
from pathlib import Path

import numpy as np
import pytest

from dtree.errors import InputError
from dtree.records import RoundRecord, RunRecord
from dtree.store import TraceStore, check_store_file
from dtree.trees import DraftTree

from .conftest import damage_table_root

REPO = Path(__file__).resolve().parents[1]


# ------------------------------------------------------------------------------------------------------- builders
def make_tree(kind: str, seed: int) -> DraftTree:
    """A hand-built tree: 'root' (AR), 'chain' (4 nodes) or 'branch' (6 nodes, two branches)."""
    rng = np.random.default_rng(seed)
    if kind == "root":
        parents, depths, ranks = [-1], [0], [-1]
    elif kind == "chain":
        parents, depths, ranks = [-1, 0, 1, 2, 3], [0, 1, 2, 3, 4], [-1, 0, 0, 0, 0]
    else:
        parents, depths, ranks = [-1, 0, 0, 1, 1, 2, 3], [0, 1, 1, 2, 2, 2, 3], [-1, 0, 1, 0, 1, 0, 0]
    n1 = len(parents)
    tokens = rng.integers(0, 2**40, n1, dtype=np.int64)  # beyond int32 on purpose: tree tokens are int64
    logprobs = -rng.random(n1)
    logprobs[0] = 0.0
    path = np.zeros(n1)
    for i in range(1, n1):
        path[i] = path[parents[i]] + logprobs[i]
    path[0] = -0.0  # the sign of zero must survive
    if kind == "branch":  # no cost model: NaN costs and thetas, empty curve
        costs, thetas, curve = np.full(n1, np.nan), np.full(n1, np.nan), np.zeros(0)
    else:
        costs = rng.random(n1) * 1e-3
        thetas = 100.0 + rng.random(n1)
        curve = np.concatenate([thetas, [np.nan, np.inf, -0.0, 5e-324]])
    return DraftTree(
        tokens=tokens, parents=np.array(parents, np.int64), depths=np.array(depths, np.int64),
        ranks=np.array(ranks, np.int64), logprobs=logprobs, path_logprobs=path, node_costs=costs, thetas=thetas,
        method={"root": "ar", "chain": "chain", "branch": "ddtree"}[kind], theta_curve=curve,
    )


def make_round(index: int, seed: int, kind: str | None = None) -> RoundRecord:
    kind = kind or ("root", "chain", "branch")[index % 3]
    rng = np.random.default_rng(seed * 1000 + index)
    tree = make_tree(kind, seed * 1000 + index)
    gamma, k = (0, 0) if kind == "root" else (4, 3)
    marg_tokens = rng.integers(0, 2**31 - 1, (gamma, k), dtype=np.int64)
    marg_logprobs = np.log(rng.dirichlet(np.ones(k), gamma).astype(np.float32)) if gamma else np.zeros((0, 0), np.float32)
    accepted = [0] if kind == "root" else [0, 1, 3]
    return RoundRecord(
        index=index, start=17 + 3 * index, anchor=int(tree.tokens[0]), marg_tokens=marg_tokens,
        marg_logprobs=marg_logprobs.astype(np.float32), tree=tree, budget=tree.n_nodes,
        budget_reason=f"round {index}: fixed budget ({kind})", accepted=accepted, bonus=int(rng.integers(0, 50000)),
        committed=[int(tree.tokens[i]) for i in accepted], draft_ms=1.25 + index, build_ms=0.1 * index,
        verify_ms=7.5, commit_ms=float(rng.random()),
    )


def make_run(seed: int = 0, method: str = "ddtree", target: str = "smollm2-135m", n_rounds: int = 3) -> RunRecord:
    return RunRecord(
        method=method, params={"budget": 7, "k": 3, "temperature": 0.0, "seed": seed, "nested": {"a": [1, 2]}},
        target=target, drafter="dflash-tiny", dtype="float32", device="cpu", prompt=f"Once upon a time {seed}",
        prompt_ids=[1, 2, 3, seed], output_ids=[11, 12, 13, 14, 15], output_text=" there was a dog",
        prefill_ms=12.5, decode_s=0.75, cost_model={"cd_s": 0.01, "cv": [0.02, 1e-4]},
        rounds=[make_round(i, seed) for i in range(n_rounds)],
    )


# ------------------------------------------------------------------------------------------------------ comparisons
def assert_array_exact(a: np.ndarray, b: np.ndarray, what: str) -> None:
    assert isinstance(b, np.ndarray), what
    assert a.dtype == b.dtype, f"{what}: dtype {a.dtype} != {b.dtype}"
    assert a.shape == b.shape, f"{what}: shape {a.shape} != {b.shape}"
    assert a.tobytes() == b.tobytes(), f"{what}: bytes differ"


def assert_round_equal(got: RoundRecord, want: RoundRecord) -> None:
    for f in dataclasses.fields(RoundRecord):
        g, w = getattr(got, f.name), getattr(want, f.name)
        if f.name == "tree":
            for tf in dataclasses.fields(DraftTree):
                tg, tw = getattr(g, tf.name), getattr(w, tf.name)
                if isinstance(tw, np.ndarray):
                    assert_array_exact(tg, tw, f"round {want.index} tree.{tf.name}")
                else:
                    assert tg == tw, f"tree.{tf.name}"
        elif f.name == "marg_tokens":
            assert_array_exact(g, w.astype(np.int64), "marg_tokens")
        elif f.name == "marg_logprobs":
            assert_array_exact(g, w.astype(np.float32), "marg_logprobs")
        else:
            assert g == w and type(g) is type(w), f"round {want.index} field {f.name}: {g!r} != {w!r}"
    assert got.tau == want.tau


def assert_run_equal(got: RunRecord, want: RunRecord, status: str, identity: bool = True) -> None:
    """Compare every field; ``identity=False`` skips run_id/created (for a ``want`` rebuilt after the write)."""
    for f in dataclasses.fields(RunRecord):
        if not identity and f.name in ("run_id", "created"):
            continue
        if f.name == "rounds":
            assert len(got.rounds) == len(want.rounds)
            for g, w in zip(got.rounds, want.rounds):
                assert_round_equal(g, w)
        elif f.name == "status":
            assert got.status == status
        else:
            assert getattr(got, f.name) == getattr(want, f.name), f"run field {f.name}"


# ------------------------------------------------------------------------------------------------------------ tests
def test_round_trip_three_rounds(tmp_path):
    path = tmp_path / "sub" / "dir" / "t.sqlite"  # parent directories are created
    want = make_run(seed=5)
    with TraceStore(path) as store:
        run_id = store.begin_run(want, tag="rt")
        assert want.run_id == run_id and want.status == "running"
        assert datetime.fromisoformat(want.created).tzinfo is not None
        for rnd in want.rounds:
            store.add_round(run_id, rnd)
        store.finish_run(run_id, want, "complete")
    with TraceStore(path) as store:  # a fresh connection reads it from disk
        got = store.load_run(run_id)
        assert_run_equal(got, want, "complete")
        assert_round_equal(store.load_round(run_id, 2), want.rounds[2])
        assert store.load_run(run_id, with_rounds=False).rounds == []
        df = store.list_runs()
        row = df.iloc[0]
        assert (row["id"], row["status"], row["n_rounds"], row["tag"]) == (run_id, "complete", 3, "rt")
        assert row["mean_tau"] == pytest.approx(want.mean_tau) and row["mean_budget"] == pytest.approx(want.mean_budget)
        assert row["tokens_per_s"] == pytest.approx(5 / 0.75) and row["n_new_tokens"] == 5
        assert row["params"] == want.params
        exported = store.export_run(run_id)
        text = json.dumps(exported, allow_nan=False)  # strict JSON
        back = json.loads(text)
        assert back["run"]["status"] == "complete" and len(back["rounds"]) == 3
        assert back["rounds"][1]["tree"]["tokens"] == want.rounds[1].tree.tokens.tolist()
        assert back["rounds"][2]["tree"]["node_costs"][1] is None  # NaN -> null
        with pytest.raises(InputError):
            store.load_run(run_id + 100)
        with pytest.raises(InputError):
            store.load_round(run_id, 3)
    # save_run writes the same content in one transaction
    with TraceStore(path) as store:
        other = make_run(seed=5)
        rid2 = store.save_run(other)
        assert_run_equal(store.load_run(rid2), other, "complete")


def test_bad_round_is_rejected_and_nothing_written(tmp_path):
    with TraceStore(tmp_path / "t.sqlite") as store:
        run = make_run(n_rounds=0)
        rid = store.begin_run(run)
        bad = make_round(1, 0)
        bad.tree.thetas = bad.tree.thetas[:-1]
        with pytest.raises(InputError, match="thetas"):
            store.add_round(rid, bad)
        store.add_round(rid, make_round(0, 0))
        with pytest.raises(InputError, match="already has round 0"):
            store.add_round(rid, make_round(0, 0))
        with pytest.raises(InputError):
            store.add_round(rid + 1, make_round(0, 0))
        assert len(store.load_run(rid).rounds) == 1
        store.finish_run(rid, run)
        with pytest.raises(InputError, match="complete"):
            store.add_round(rid, make_round(1, 0))
        with pytest.raises(InputError):
            store.finish_run(rid, run, status="done")


_CRASH_SCRIPT = """
import os, sys
from tests.test_store import make_run
from dtree.store import TraceStore, check_store_file
store = TraceStore({path!r})
run = make_run(seed=3, n_rounds=2)
rid = store.begin_run(run)
for rnd in run.rounds:
    store.add_round(rid, rnd)
print(rid, flush=True)
os._exit(1)  # dies without finishing the run or closing the store
"""


def test_run_killed_midway_reads_back_interrupted(tmp_path):
    path = tmp_path / "t.sqlite"
    with TraceStore(path) as store:
        live = store.begin_run(make_run(seed=9, n_rounds=0))  # this process is alive: stays running
    proc = subprocess.run([sys.executable, "-c", _CRASH_SCRIPT.format(path=str(path))],
                          cwd=REPO, capture_output=True, text=True, timeout=60,
                          env={**os.environ, "PYTHONPATH": str(REPO)})
    assert proc.returncode == 1, proc.stderr
    rid = int(proc.stdout.split()[0])
    with TraceStore(path) as store:
        got = store.load_run(rid)
        assert got.status == "interrupted"
        want = make_run(seed=3, n_rounds=2)
        assert len(got.rounds) == 2
        for g, w in zip(got.rounds, want.rounds):
            assert_round_equal(g, w)
        assert store.load_run(live).status == "running"
        df = store.list_runs(status="interrupted")
        assert df["id"].tolist() == [rid] and df["n_rounds"].tolist() == [2]
        assert store.list_runs(status="running")["id"].tolist() == [live]
        assert store.recover_interrupted() == [rid]
        assert store.recover_interrupted() == []
    raw = sqlite3.connect(path)
    assert dict(raw.execute("SELECT id, status FROM runs").fetchall()) == {live: "running", rid: "interrupted"}
    raw.close()


def _writer(path: str, seed: int, n_rounds: int, barrier) -> None:
    store = TraceStore(path)
    run = make_run(seed=seed, n_rounds=n_rounds)
    barrier.wait(timeout=30)
    rid = store.begin_run(run, tag=f"w{seed}")
    for rnd in run.rounds:
        store.add_round(rid, rnd)
    store.finish_run(rid, run)
    store.close()


def test_two_processes_write_concurrently(tmp_path):
    path = str(tmp_path / "t.sqlite")
    TraceStore(path).close()  # also works when the writers race to create it, but keep the test about writing
    ctx = mp.get_context("fork" if "fork" in mp.get_all_start_methods() else "spawn")
    barrier = ctx.Barrier(2)
    procs = [ctx.Process(target=_writer, args=(path, seed, 30, barrier)) for seed in (101, 202)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
    assert [p.exitcode for p in procs] == [0, 0]
    with TraceStore(path) as store:
        df = store.list_runs()
        assert sorted(df["tag"]) == ["w101", "w202"] and set(df["status"]) == {"complete"}
        for _, row in df.iterrows():
            seed = int(row["tag"][1:])
            got = store.load_run(int(row["id"]))
            assert got.run_id == row["id"]
            assert_run_equal(got, make_run(seed=seed, n_rounds=30), "complete", identity=False)
    raw = sqlite3.connect(path)
    assert raw.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    assert raw.execute("PRAGMA foreign_key_check").fetchall() == []
    assert raw.execute("SELECT COUNT(*) FROM rounds").fetchone()[0] == 60
    raw.close()


def test_threads_share_one_store(tmp_path):
    store = TraceStore(tmp_path / "t.sqlite")
    errors = []

    def work(seed):
        try:
            run = make_run(seed=seed, n_rounds=3)
            rid = store.begin_run(run)
            for rnd in run.rounds:
                store.add_round(rid, rnd)
            store.finish_run(rid, run)
        except Exception as e:  # pragma: no cover - reported below
            errors.append(e)

    threads = [threading.Thread(target=work, args=(s,)) for s in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert sorted(store.list_runs()["n_rounds"]) == [3, 3, 3, 3]
    store.close()


def _bytes_and_siblings(p: Path):
    return p.read_bytes(), sorted(x.name for x in p.parent.iterdir())


def test_foreign_and_corrupt_files_rejected_unchanged(tmp_path):
    text = tmp_path / "notes.sqlite"
    text.write_text("just some text, not a database\n" * 50)
    corrupt = tmp_path / "corrupt.sqlite"
    corrupt.write_bytes(b"SQLite format 3\x00" + bytes(range(256)) * 8)
    foreign = tmp_path / "foreign.sqlite"
    con = sqlite3.connect(foreign)
    con.execute("CREATE TABLE customers (id INTEGER PRIMARY KEY, name TEXT)")
    con.execute("INSERT INTO customers (name) VALUES ('ada')")
    con.commit()
    con.close()
    for p, pattern in ((text, "not a SQLite database"), (corrupt, "not a readable SQLite"),
                       (foreign, "another application")):
        before = _bytes_and_siblings(p)
        with pytest.raises(InputError, match=pattern) as ei:
            TraceStore(p)
        assert ei.value.field == "store"
        assert _bytes_and_siblings(p) == before, p.name
    # a dtree store written by a newer schema
    newer = tmp_path / "newer.sqlite"
    TraceStore(newer).close()
    con = sqlite3.connect(newer)
    con.execute("PRAGMA user_version = 99")
    con.close()
    before = newer.read_bytes()
    with pytest.raises(InputError, match="newer"):
        TraceStore(newer)
    assert newer.read_bytes() == before
    # an empty file is initialised
    empty = tmp_path / "empty.sqlite"
    empty.touch()
    with TraceStore(empty) as store:
        assert len(store.list_runs()) == 0


def test_truncated_store_is_refused_and_left_without_new_wal_files(tmp_path):
    """A dtree store cut short (a copy interrupted half-way) is refused with a clear error by every opener, and the
    read-only check leaves no -wal / -shm files beside it (SQLite creates them when reading a WAL-mode file)."""
    p = tmp_path / "cut.sqlite"
    with TraceStore(p) as store:
        for seed in range(12):
            store.save_run(make_run(seed=seed))
    size = p.stat().st_size
    with open(p, "r+b") as f:
        f.truncate(size // 2)
    before = _bytes_and_siblings(p)
    for opener in (check_store_file, TraceStore):
        with pytest.raises(InputError, match="not a readable SQLite") as ei:
            opener(p)
        assert ei.value.field == "store"
        assert _bytes_and_siblings(p) == before, opener
    assert sorted(q.name for q in tmp_path.iterdir()) == ["cut.sqlite"]


def test_damaged_pages_inside_a_valid_store_give_input_error_and_change_nothing(damaged_store):
    """A store whose header is intact but whose pages were overwritten opens fine; SQLite only fails when a damaged
    page is read. Every read and write then raises InputError("store", "... damaged ...") -- not a raw
    sqlite3.DatabaseError -- and the file is left byte for byte as it was."""
    p = damaged_store
    before = _bytes_and_siblings(p)
    store = TraceStore(p)
    for op, writes in ((store.list_runs, False), (lambda: store.load_run(1), False),
                       (lambda: store.save_run(make_run(seed=9)), True), (store.check_writable, None)):
        with pytest.raises(InputError, match="damaged") as ei:
            op()
        assert ei.value.field == "store"
        if writes is not None:  # a read wrote nothing, so it says nothing undone (check_writable: quick_check first)
            assert ("this write was undone" in str(ei.value)) == writes
    store.close()
    assert _bytes_and_siblings(p) == before


@pytest.mark.parametrize("table", ["rounds", "nodes"])
def test_check_writable_probes_the_round_and_node_tables_too(tmp_path, table):
    """Only the ``rounds`` (or ``nodes``) table's root page is damaged: run rows still insert, so a probe of the run
    table alone passed and a decode then wrote its run row before failing at its first round. The probe now inserts
    a round and a node too, fails with the damaged-file message, and the file stays byte for byte as it was."""
    p = tmp_path / "part.sqlite"
    with TraceStore(p) as store:
        for i in range(30):
            store.save_run(make_run(seed=i, n_rounds=4))
    damage_table_root(p, table)
    before = _bytes_and_siblings(p)
    store = TraceStore(p)
    assert len(store.list_runs()) == 30  # the runs table is intact
    with pytest.raises(InputError, match=r"is damaged .*(this write was undone|nothing was written)") as ei:
        store.check_writable()
    assert ei.value.field == "store"
    store.close()
    assert _bytes_and_siblings(p) == before


def test_check_writable_stores_nothing_and_a_path_sqlite_cannot_create_is_an_input_error(tmp_path):
    p = tmp_path / "w.sqlite"
    with TraceStore(p) as store:
        first = store.save_run(make_run(seed=1))
        store.check_writable()
        store.check_writable()
        assert list(store.list_runs()["id"]) == [first]  # the probe row was rolled back
        assert store.save_run(make_run(seed=2)) == first + 1  # and took no id
    # /proc exists (so the folder check passes) but no file can be created in it: was a raw sqlite3.OperationalError
    with pytest.raises(InputError, match=r"cannot open or create /proc/dtree-test\.sqlite") as ei:
        TraceStore("/proc/dtree-test.sqlite")
    assert ei.value.field == "store"


def test_check_writable_names_a_store_another_writer_holds(tmp_path, monkeypatch):
    import dtree.store

    monkeypatch.setattr(dtree.store, "BUSY_TIMEOUT_S", 0.2)  # the wait for a lock, so the test stays short
    p = tmp_path / "busy.sqlite"
    store = TraceStore(p)
    other = sqlite3.connect(p, isolation_level=None)
    other.execute("BEGIN IMMEDIATE")  # another process's write transaction, begun after the store was opened
    try:
        with pytest.raises(InputError, match="is busy: another process held its write lock") as ei:
            store.check_writable()
        assert ei.value.field == "store"
    finally:
        other.execute("ROLLBACK")
        other.close()
    store.check_writable()  # free again
    store.close()


def test_delete_run_leaves_other_runs_intact(tmp_path):
    with TraceStore(tmp_path / "t.sqlite") as store:
        runs = [make_run(seed=s) for s in (1, 2, 3)]
        ids = [store.save_run(r) for r in runs]
        store.delete_run(ids[1])
        with pytest.raises(InputError):
            store.load_run(ids[1])
        with pytest.raises(InputError):
            store.delete_run(ids[1])
        for i in (0, 2):
            assert_run_equal(store.load_run(ids[i]), runs[i], "complete")
        assert sorted(store.list_runs()["id"]) == [ids[0], ids[2]]
    raw = sqlite3.connect(tmp_path / "t.sqlite")
    for table in ("rounds", "nodes"):
        counts = dict(raw.execute(f"SELECT run_id, COUNT(*) FROM {table} GROUP BY run_id").fetchall())
        assert set(counts) == {ids[0], ids[2]}, table
    raw.close()


def test_list_runs_filters(tmp_path):
    path = tmp_path / "t.sqlite"
    with TraceStore(path) as store:
        a = store.save_run(make_run(seed=1, method="ddtree", target="m1"))
        b = store.save_run(make_run(seed=2, method="caddtree", target="m1"))
        c = store.save_run(make_run(seed=3, method="ddtree", target="m2"))
        d = store.begin_run(make_run(seed=4, method="ar", target="m2", n_rounds=0))
        store.mark_failed(c, "out of memory")
    raw = sqlite3.connect(path)
    raw.execute("UPDATE runs SET created = '2020-01-01T00:00:00.000000+00:00' WHERE id = ?", (a,))
    raw.commit()
    raw.close()
    with TraceStore(path) as store:
        ids = lambda **kw: sorted(store.list_runs(**kw)["id"])  # noqa: E731
        assert ids() == [a, b, c, d]
        assert ids(method="ddtree") == [a, c]
        assert ids(target="m2") == [c, d]
        assert ids(status="failed") == [c]
        assert ids(status="complete") == [a, b]
        assert ids(status="running") == [d]
        assert ids(status="interrupted") == []
        assert ids(method="ddtree", status="complete") == [a]
        assert ids(since="2021-06-01") == [b, c, d]
        assert ids(since=datetime.now(timezone.utc) - timedelta(days=1)) == [b, c, d]
        assert ids(since=datetime.now(timezone.utc) + timedelta(days=1)) == []
        assert store.list_runs()["id"].tolist()[-1] == a  # newest first
        assert store.load_run(c).error == "out of memory"
        with pytest.raises(InputError):
            store.list_runs(status="done")
        with pytest.raises(InputError):
            store.list_runs(since="yesterday")


def test_wal_store_in_an_unwritable_folder_is_named_as_such(tmp_path, monkeypatch):
    """SQLite cannot open a WAL-mode file whose folder cannot be written, even read-only (it must create the -shm
    file). The message says that, not 'not a readable SQLite database'. Root ignores folder permissions, so the
    unwritable folder and SQLite's refusal are simulated; the header check is real."""
    import dtree.store

    p = tmp_path / "ro.sqlite"
    with TraceStore(p) as store:
        store.save_run(make_run(seed=1))
    real_connect = sqlite3.connect

    def refuse_read_only(target, *a, **k):
        if "mode=ro" in str(target):
            raise sqlite3.OperationalError("unable to open database file")
        return real_connect(target, *a, **k)

    monkeypatch.setattr(dtree.store.sqlite3, "connect", refuse_read_only)
    with pytest.raises(InputError, match="cannot open .* read-only"):  # folder writable: the plain message
        dtree.store.check_store_file(p)
    monkeypatch.setattr(dtree.store.os, "access", lambda path, mode: False)
    with pytest.raises(InputError, match=r"WAL-mode SQLite file in a folder that cannot be written "
                                         r"\(no permission to write there\)"
                                         r".*ro\.sqlite-shm") as err:
        dtree.store.check_store_file(p)
    assert err.value.field == "store"


def test_check_writable_refuses_a_store_damaged_away_from_where_inserts_go(tmp_path):
    """Pages in the middle of the file overwritten (a fresh-user check's 40 kB of junk): inserts touch only the last
    pages of each table, so a run still saved into the file whose older runs could no longer be read. check_writable
    now runs SQLite's quick_check first: refused with the damaged-file message, the file left byte for byte."""
    import numpy as np

    p = tmp_path / "mid.sqlite"
    with TraceStore(p) as store:
        for i in range(40):
            store.save_run(make_run(seed=i, n_rounds=6))
    con = sqlite3.connect(p)
    con.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    page_size, n_pages = (con.execute(f"PRAGMA {k}").fetchone()[0] for k in ("page_size", "page_count"))
    con.close()
    assert n_pages > 40
    data = bytearray(p.read_bytes())
    mid = n_pages // 2
    data[mid * page_size:(mid + 4) * page_size] = np.random.default_rng(3).integers(
        0, 256, 4 * page_size, dtype=np.uint8).tobytes()
    p.write_bytes(bytes(data))
    copy = tmp_path / "copy.sqlite"
    copy.write_bytes(bytes(data))
    with TraceStore(copy) as other:  # what a write did before: it went in
        other.save_run(make_run(seed=99, n_rounds=2))
    before = _bytes_and_siblings(p)
    store = TraceStore(p)
    with pytest.raises(InputError, match=r"is damaged \(SQLite's quick_check: .+\); nothing was written") as ei:
        store.check_writable()
    assert ei.value.field == "store" and "\n" not in str(ei.value)
    store.close()
    assert _bytes_and_siblings(p) == before


def test_checking_an_open_store_keeps_this_process_sqlite_locks(tmp_path):
    """Closing any handle to a database file drops every POSIX lock this process holds on it, SQLite's included; a
    second TraceStore on a file this process already has open (the app does that on every page rerun) must not read
    it through a plain file handle. If it did, another process that closes the store next would take itself for its
    last user and delete the -wal and -shm files this process is still using (writes lost, store corrupted)."""
    path = tmp_path / "s.sqlite"
    first = TraceStore(path)
    first._conn.execute("SELECT count(*) FROM runs").fetchone()
    wal, shm = Path(f"{path}-wal"), Path(f"{path}-shm")
    assert wal.exists() and shm.exists()
    second = TraceStore(path)  # checks the file again while `first` holds it
    check_store_file(path)
    other = ("import sqlite3, sys; c = sqlite3.connect(sys.argv[1]); c.execute('SELECT count(*) FROM runs').fetchone();"
             " c.close()")
    subprocess.run([sys.executable, "-c", other, str(path)], check=True)
    assert wal.exists() and shm.exists(), "another process's close removed the WAL files this process still uses"
    second.close()
    first.close()
