"""The trace store: every run and every round in one SQLite file (DESIGN.md section 4, "The trace").

:class:`TraceStore` persists :class:`dtree.records.RunRecord`, :class:`dtree.records.RoundRecord` and
:class:`dtree.trees.DraftTree` with the standard library's ``sqlite3`` (no ORM) and reads them back exactly.

Layout (schema version :data:`SCHEMA_VERSION`, kept in ``PRAGMA user_version``; the file is marked as a dtree store
with ``PRAGMA application_id`` = :data:`APPLICATION_ID`)::

    runs    one row per run: identity, parameters (JSON), output, status, summary numbers, writer pid.
    rounds  one row per (run_id, idx): scalars, JSON lists, and numpy arrays as little-endian BLOBs:
              theta_curve    float64 [m]         theta(n) in tokens/s for n = 0..m-1
              marg_tokens    int32   [gamma, k]  drafter top-k token ids per depth (read back as int64)
              marg_logprobs  float32 [gamma, k]  natural-log drafter probabilities
    nodes   one row per (run_id, round_idx, node_idx): the draft tree, root (node 0) included.

Deleting a run cascades to its rounds and nodes (foreign keys, ``ON DELETE CASCADE``). Every table's primary key
starts with the run id, so those keys are the run-id indexes.

Concurrency: the file uses WAL journaling and a 30 s busy timeout; every write is one ``BEGIN IMMEDIATE`` transaction,
so several processes (each with its own :class:`TraceStore`) can write different runs at once, readers never block
writers, and a writer killed mid-run leaves every round it committed readable. One :class:`TraceStore` may be shared
by threads (one connection guarded by a lock); after ``fork`` the child opens its own connection.

A run whose stored status is ``running`` but whose writer process (pid, start time and host are stored) no longer
exists reads back as ``interrupted``; :meth:`TraceStore.recover_interrupted` writes that status back.

Exactness: integer fields and arrays round-trip exactly; float node columns are stored as 8-byte IEEE values (the
columns are declared without a type so SQLite keeps -0.0), except that NaN is stored as SQL NULL and read back as the
canonical quiet NaN (``np.nan``); NaN payload bits are not preserved there. BLOB arrays keep every bit.
"""

from __future__ import annotations

import json
import math
import os
import socket
import sqlite3
import threading
import weakref
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterator

import numpy as np

from .errors import InputError, folder_write_problem
from .records import RoundRecord, RunRecord
from .trees import DraftTree

SCHEMA_VERSION = 1
APPLICATION_ID = 0x64747265  # b"dtre"
STATUSES = ("running", "complete", "failed", "interrupted")
BUSY_TIMEOUT_S = 30.0
_SQLITE_MAGIC = b"SQLite format 3\x00"
DEFAULT_STORE_PATH = "runs/dtree.sqlite"
_HOST = socket.gethostname()

# Float node columns carry no declared type on purpose: a REAL column would store -0.0 as the integer 0.
_SCHEMA = """
CREATE TABLE IF NOT EXISTS runs (
    id            INTEGER PRIMARY KEY AUTOINCREMENT,
    created       TEXT NOT NULL,              -- ISO 8601, UTC
    method        TEXT NOT NULL,
    params        TEXT NOT NULL,              -- JSON object
    target        TEXT NOT NULL,
    drafter       TEXT,
    dtype         TEXT NOT NULL,
    device        TEXT NOT NULL,
    prompt        TEXT NOT NULL,
    prompt_ids    TEXT NOT NULL,              -- JSON list of token ids
    output_ids    TEXT NOT NULL DEFAULT '[]', -- JSON list of new token ids
    output_text   TEXT NOT NULL DEFAULT '',
    status        TEXT NOT NULL CHECK (status IN ('running', 'complete', 'failed', 'interrupted')),
    prefill_ms    REAL NOT NULL DEFAULT 0,    -- ms
    decode_s      REAL NOT NULL DEFAULT 0,    -- s, prefill excluded
    n_new_tokens  INTEGER NOT NULL DEFAULT 0, -- tokens
    tokens_per_s  REAL NOT NULL DEFAULT 0,    -- tokens/s over decode_s
    mean_tau      REAL NOT NULL DEFAULT 0,    -- tokens per round
    mean_budget   REAL NOT NULL DEFAULT 0,    -- nodes per round
    n_rounds      INTEGER NOT NULL DEFAULT 0,
    cost_model    TEXT,                       -- JSON object or NULL
    error         TEXT,
    pid           INTEGER,                    -- writer process id
    pid_start     INTEGER,                    -- writer start time (Linux clock ticks since boot) or NULL
    host          TEXT,                       -- writer host name
    tag           TEXT
);
CREATE INDEX IF NOT EXISTS runs_created ON runs(created);
CREATE INDEX IF NOT EXISTS runs_method ON runs(method);

CREATE TABLE IF NOT EXISTS rounds (
    run_id        INTEGER NOT NULL REFERENCES runs(id) ON DELETE CASCADE,
    idx           INTEGER NOT NULL,
    start         INTEGER NOT NULL,           -- context length L before the round, tokens
    anchor        INTEGER NOT NULL,           -- token id
    budget        INTEGER NOT NULL,           -- non-root nodes verified
    budget_reason TEXT NOT NULL,
    tau           INTEGER NOT NULL,           -- tokens committed this round
    bonus         INTEGER NOT NULL,           -- token id
    committed     TEXT NOT NULL,              -- JSON list of token ids
    accepted      TEXT NOT NULL,              -- JSON list of node indices, root first
    draft_ms      REAL NOT NULL,
    build_ms      REAL NOT NULL,
    verify_ms     REAL NOT NULL,
    commit_ms     REAL NOT NULL,
    tree_method   TEXT NOT NULL,
    n_nodes       INTEGER NOT NULL,           -- non-root nodes in the tree
    theta_curve   BLOB NOT NULL,              -- float64 [m], little-endian
    gamma         INTEGER NOT NULL,
    k             INTEGER NOT NULL,
    marg_tokens   BLOB NOT NULL,              -- int32 [gamma, k], C order, little-endian
    marg_logprobs BLOB NOT NULL,              -- float32 [gamma, k], C order, little-endian
    PRIMARY KEY (run_id, idx)
);

CREATE TABLE IF NOT EXISTS nodes (
    run_id        INTEGER NOT NULL,
    round_idx     INTEGER NOT NULL,
    node_idx      INTEGER NOT NULL,           -- insertion order, 0 = root
    parent        INTEGER NOT NULL,           -- -1 for the root
    depth         INTEGER NOT NULL,
    rank          INTEGER NOT NULL,           -- -1 for the root
    token         INTEGER NOT NULL,
    logprob,                                  -- float64, natural log
    path_logprob,                             -- float64, log q(u)
    node_cost,                                -- float64, s (NULL = NaN)
    theta,                                    -- float64, tokens/s (NULL = NaN)
    PRIMARY KEY (run_id, round_idx, node_idx),
    FOREIGN KEY (run_id, round_idx) REFERENCES rounds(run_id, idx) ON DELETE CASCADE
) WITHOUT ROWID;
"""
_TABLES = ("nodes", "rounds", "runs")

_RUN_COLS = (
    "id", "created", "method", "params", "target", "drafter", "dtype", "device", "prompt", "prompt_ids",
    "output_ids", "output_text", "status", "prefill_ms", "decode_s", "n_new_tokens", "tokens_per_s", "mean_tau",
    "mean_budget", "n_rounds", "cost_model", "error", "pid", "pid_start", "host", "tag",
)
_ROUND_COLS = (
    "idx", "start", "anchor", "budget", "budget_reason", "tau", "bonus", "committed", "accepted", "draft_ms",
    "build_ms", "verify_ms", "commit_ms", "tree_method", "n_nodes", "theta_curve", "gamma", "k", "marg_tokens",
    "marg_logprobs",
)
_NODE_COLS = ("round_idx", "node_idx", "parent", "depth", "rank", "token", "logprob", "path_logprob", "node_cost",
              "theta")
_TREE_INT = ("tokens", "parents", "depths", "ranks")
_TREE_FLOAT = ("logprobs", "path_logprobs", "node_costs", "thetas")


# ----------------------------------------------------------------------------------------------------------- helpers
def _schema_statements() -> list[str]:
    """Split :data:`_SCHEMA` into statements (``executescript`` would commit the open transaction)."""
    out, buf = [], ""
    for line in _SCHEMA.splitlines(keepends=True):
        buf += line
        if sqlite3.complete_statement(buf):
            out.append(buf.strip())
            buf = ""
    assert not buf.strip(), "unterminated statement in _SCHEMA"
    return out


def _now_iso() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="microseconds")


def _json_default(obj: Any) -> Any:
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"object of type {type(obj).__name__} is not JSON serialisable")


def _dumps(field: str, value: Any) -> str:
    try:
        return json.dumps(value, default=_json_default)
    except (TypeError, ValueError) as e:
        raise InputError(field, f"must be JSON-serialisable (dicts, lists, str, numbers, None): {e}") from None


def _int_list(field: str, values: Any) -> list[int]:
    try:
        out = [int(v) for v in values]
    except (TypeError, ValueError):
        raise InputError(field, f"must be a list of integers, got {values!r}") from None
    return out


def _finite_or_none(obj: Any) -> Any:
    """Recursively replace NaN/inf floats by None so the result is strict JSON."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: _finite_or_none(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_finite_or_none(v) for v in obj]
    return obj


def _blob(arr: np.ndarray, dtype: str) -> bytes:
    return np.ascontiguousarray(arr, dtype=np.dtype(dtype)).tobytes()


def _unblob(b: bytes, dtype: str, native: Any, shape: tuple[int, ...] | None = None) -> np.ndarray:
    a = np.frombuffer(b, dtype=np.dtype(dtype)).astype(native)  # astype copies: writable, native byte order
    return a.reshape(shape) if shape is not None else a


def _proc_state(pid: int) -> tuple[str, int] | None:
    """(state letter, start time in clock ticks) of a Linux process, or None when /proc has no such entry."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            data = f.read()
    except OSError:
        return None
    try:
        rest = data[data.rindex(b")") + 2:].split()
        return rest[0].decode(), int(rest[19])
    except (ValueError, IndexError):
        return None


def _own_start() -> int | None:
    st = _proc_state(os.getpid())
    return st[1] if st else None


def _writer_alive(pid: int | None, pid_start: int | None, host: str | None) -> bool:
    """False only when it is certain that the writer process is gone (same host, pid absent, zombie or reused)."""
    if pid is None or (host is not None and host != _HOST) or os.name == "nt":
        return True  # cannot tell: keep the stored status
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # exists, owned by someone else
    except OSError:
        return True
    st = _proc_state(pid)
    if st is None:
        return not os.path.isdir("/proc/self")  # Linux: no entry means gone; elsewhere: os.kill said it exists
    state, start = st
    if state in ("Z", "X"):
        return False
    if pid_start is not None and start != pid_start:
        return False  # pid reused by another process
    return True


def default_store_path() -> str:
    """The trace store used when none is given: ``$DTREE_STORE`` when set (and not empty), else
    :data:`DEFAULT_STORE_PATH` (relative to the working directory). The CLI's ``--store`` defaults and the app's sidebar
    both start from it."""
    return os.environ.get("DTREE_STORE") or DEFAULT_STORE_PATH


# ------------------------------------------------------------------------------------------------------------- store
class _RollBack(Exception):
    """Raised inside a write transaction to undo it (:meth:`TraceStore.check_writable`)."""


def check_store_file(path: str | Path) -> None:
    """Check, without creating or writing anything, that ``path`` can be opened as a trace store: missing, an empty file
    or database, or a dtree store of this or an older schema (``":memory:"`` always can). Lets commands refuse a bad
    ``--store`` before loading a model.

    Raises:
        InputError("store", ...): ``path`` is a directory, not a SQLite file, another application's database, or a
            store of a newer schema.
    """
    if str(path) == ":memory:":
        return
    p = Path(path)
    if p.is_dir():
        raise InputError("store", f"{p} is a directory; give a database file path")
    if not p.exists() or p.stat().st_size == 0:
        return
    if _open_in_this_process(p):
        # Never through a plain file handle then: closing ANY handle to a database file drops every POSIX lock this
        # process holds on it, SQLite's included, and another process closing the store next would take itself for
        # its last user and delete the -wal/-shm files still in use here. SQLite's own read-only connection below is
        # safe (it shares the process's lock state on the file).
        head = _SQLITE_MAGIC
    else:
        try:
            with open(p, "rb") as f:
                head = f.read(100)  # the SQLite file header: magic, then (bytes 18-19) the journal mode
        except OSError as e:
            raise InputError("store", f"cannot read {p}: {e}") from None
    if head[:len(_SQLITE_MAGIC)] != _SQLITE_MAGIC:
        raise InputError("store", f"{p} is not a SQLite database (no SQLite header); choose another file or "
                                  "move this one away")
    had = _wal_siblings(p)
    try:
        ro = sqlite3.connect(f"{p.resolve().as_uri()}?mode=ro", uri=True, timeout=BUSY_TIMEOUT_S)
    except sqlite3.Error as e:
        _remove_new_siblings(p, had)
        raise InputError("store", _unreadable_message(p, head, e, f"cannot open {p} read-only: {e}")) from None
    try:
        app_id = ro.execute("PRAGMA application_id").fetchone()[0]
        version = ro.execute("PRAGMA user_version").fetchone()[0]
        tables = [r[0] for r in ro.execute(
            "SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%' ORDER BY name")]
    except sqlite3.Error as e:
        ro.close()
        _remove_new_siblings(p, had)  # a WAL-mode file read read-only gets -wal/-shm files even when it fails
        raise InputError("store", _unreadable_message(p, head, e)) from None
    ro.close()
    if app_id == APPLICATION_ID:
        if version > SCHEMA_VERSION:
            raise InputError("store", f"{p} has trace-store schema version {version}, newer than this dtree's "
                                      f"{SCHEMA_VERSION}; upgrade dtree to read it")
        return
    if app_id == 0 and not tables:
        return  # an empty SQLite database: ours to initialise
    what = f"tables {', '.join(tables)}" if tables else f"application id {app_id:#x}"
    raise InputError("store", f"{p} is a SQLite database of another application ({what}), not a dtree trace "
                              "store; choose another file")


def _wal_siblings(p: Path) -> set[Path]:
    """The ``-wal`` / ``-shm`` files that exist beside ``p`` now."""
    return {q for q in (Path(f"{p}-wal"), Path(f"{p}-shm")) if q.exists()}


def _remove_new_siblings(p: Path, had: set[Path]) -> None:
    """After a failed open, remove the ``-wal`` / ``-shm`` files SQLite created beside ``p`` (not in ``had``): a
    refused file is left as it was found. A ``-wal`` with content is kept (it could hold commits)."""
    for q in _wal_siblings(p) - had:
        try:
            if q.name.endswith("-shm") or q.stat().st_size == 0:
                q.unlink()
        except OSError:
            pass


_LIVE_STORES: "weakref.WeakSet[TraceStore]" = weakref.WeakSet()
"""File-backed stores of this process (their connection may be open); see :func:`_open_in_this_process`."""


def _open_in_this_process(p: Path) -> bool:
    """Whether a TraceStore of this process has a connection open on the file ``p`` (same device and inode)."""
    try:
        st = p.stat()
    except OSError:
        return False
    for store in list(_LIVE_STORES):
        if store._conn is None or store._conn_pid != os.getpid():
            continue
        try:
            other = store.path.stat()
        except OSError:
            continue
        if (other.st_dev, other.st_ino) == (st.st_dev, st.st_ino):
            return True
    return False


def _unreadable_message(p: Path, header: bytes, e: Exception, otherwise: str | None = None) -> str:
    """Why a file with a SQLite header could not be read. A WAL-mode database (header bytes 18-19 = 2, the store's
    mode) in a folder that cannot be written cannot be opened at all, even read-only: SQLite must create its
    ``-shm`` file beside it. Said so, instead of calling the file unreadable (or ``otherwise``, when given)."""
    folder = p.resolve().parent
    wal = len(header) >= 20 and header[18] == 2 and header[19] == 2
    why = folder_write_problem(folder) if wal else None
    if why:
        return (f"cannot open {p}: it is a WAL-mode SQLite file in a folder that cannot be written "
                f"({why}), and SQLite must create "
                f"{p.name}-shm beside it even to read it ({e}); copy it to a writable folder or make {folder} writable")
    return otherwise or f"{p} is not a readable SQLite database: {e}"


class TraceStore:
    """SQLite store of runs, rounds and draft trees (DESIGN.md section 4).

    Args:
        path: the database file; ``":memory:"`` gives a private in-memory store. The parent directory is created if
            missing. A new or empty file is initialised with the dtree schema.

    Raises:
        InputError("store", ...): the file is not a SQLite database, is a SQLite database of another application
            (foreign tables), or was written by a newer dtree (higher schema version). The file is left untouched.

    Use as a context manager or call :meth:`close`. Units: ``*_ms`` in milliseconds, ``decode_s`` in seconds,
    ``tokens_per_s`` in tokens/s, budgets in nodes, tau in tokens.
    """

    def __init__(self, path: str | Path = DEFAULT_STORE_PATH):
        self.memory = str(path) == ":memory:"
        self.path = Path(path) if not self.memory else Path(":memory:")
        self._lock = threading.RLock()
        self._conn: sqlite3.Connection | None = None
        self._conn_pid = -1
        if not self.memory:
            try:
                self.path.parent.mkdir(parents=True, exist_ok=True)
            except OSError as e:
                raise InputError("store", f"cannot create the directory {self.path.parent}: {e}") from None
            if self.path.is_dir():
                raise InputError("store", f"{self.path} is a directory; give a database file path")
            self._check_foreign()
            _LIVE_STORES.add(self)
        self._connect()

    # -------------------------------------------------------------------------------------------- opening & schema
    def _check_foreign(self) -> None:
        """Refuse, without writing, a file that is not an empty/new file or a dtree store."""
        check_store_file(self.path)

    def _connect(self) -> sqlite3.Connection:
        try:
            conn = sqlite3.connect(str(self.path), timeout=BUSY_TIMEOUT_S, isolation_level=None,
                                   check_same_thread=False)
        except sqlite3.Error as e:  # e.g. a folder where files cannot be created (/sys, /proc, no write permission)
            raise InputError("store", f"cannot open or create {self.path}: {e}") from None
        try:
            conn.execute(f"PRAGMA busy_timeout = {int(BUSY_TIMEOUT_S * 1000)}")
            conn.execute("PRAGMA foreign_keys = ON")
            if not self.memory:
                conn.execute("PRAGMA journal_mode = WAL")
                conn.execute("PRAGMA synchronous = NORMAL")  # WAL: commits survive a process crash
            self._conn, self._conn_pid = conn, os.getpid()
            self._init_schema(conn)
        except (sqlite3.DatabaseError, InputError) as e:
            conn.close()
            self._conn = None
            if isinstance(e, InputError):
                raise
            raise InputError("store", f"cannot open {self.path} as a trace store: {e}") from None
        return conn

    def _init_schema(self, conn: sqlite3.Connection) -> None:
        conn.execute("BEGIN IMMEDIATE")
        try:
            app_id = conn.execute("PRAGMA application_id").fetchone()[0]
            version = conn.execute("PRAGMA user_version").fetchone()[0]
            if app_id == APPLICATION_ID and version == SCHEMA_VERSION:
                conn.execute("COMMIT")
                return
            if app_id not in (0, APPLICATION_ID) or version > SCHEMA_VERSION:  # raced with another writer
                raise InputError("store", f"{self.path} changed while opening and is not a dtree trace store")
            for stmt in _schema_statements():
                conn.execute(stmt)
            conn.execute(f"PRAGMA application_id = {APPLICATION_ID}")
            conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
            conn.execute("COMMIT")
        except BaseException:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise

    def _get_conn(self) -> sqlite3.Connection:
        if self._conn is None:
            raise InputError("store", "this TraceStore is closed")
        if self._conn_pid != os.getpid():  # forked child: never use the parent's connection
            self._conn = None
            return self._connect()
        return self._conn

    @contextmanager
    def _write(self) -> Iterator[sqlite3.Connection]:
        """One write transaction (BEGIN IMMEDIATE ... COMMIT), rolled back on any error."""
        with self._lock, self._corruption_as_input_error(writing=True):
            conn = self._get_conn()
            conn.execute("BEGIN IMMEDIATE")
            try:
                yield conn
            except BaseException:
                if conn.in_transaction:
                    try:
                        conn.execute("ROLLBACK")
                    except sqlite3.DatabaseError:
                        pass  # a damaged file may refuse even that; SQLite undoes the transaction on close
                raise
            conn.execute("COMMIT")

    @contextmanager
    def _read(self) -> Iterator[sqlite3.Connection]:
        """One read transaction: a consistent snapshot across several SELECTs."""
        with self._lock, self._corruption_as_input_error():
            conn = self._get_conn()
            conn.execute("BEGIN")
            try:
                yield conn
            finally:
                if conn.in_transaction:
                    conn.execute("COMMIT")

    @contextmanager
    def _corruption_as_input_error(self, writing: bool = False) -> Iterator[None]:
        """A damaged database file (SQLite's plain ``DatabaseError``, e.g. "database disk image is malformed", raised
        only when a damaged page is touched) becomes an :class:`InputError` naming the file (and, for a write
        transaction, saying it was undone); locks, constraint and programming errors (``DatabaseError`` subclasses)
        pass through unchanged."""
        try:
            yield
        except sqlite3.DatabaseError as e:
            if type(e) is not sqlite3.DatabaseError:
                raise
            raise self._damaged(f"{e}", "this write was undone" if writing else "") from None

    def _damaged(self, detail: str, outcome: str) -> InputError:
        """The damaged-file error: ``detail`` what SQLite said, ``outcome`` what became of the write (may be empty)."""
        return InputError("store", f"{self.path} is damaged ({detail}){'; ' + outcome if outcome else ''}. Choose "
                                   "another file (the sidebar's trace-store box, --store or DTREE_STORE), or try "
                                   "`sqlite3 FILE .recover` on a copy")

    def close(self) -> None:
        """Close the connection (idempotent). Further calls raise InputError."""
        with self._lock:
            if self._conn is not None and self._conn_pid == os.getpid():
                self._conn.close()
            self._conn = None

    def __enter__(self) -> "TraceStore":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"TraceStore({str(self.path)!r})"

    # ------------------------------------------------------------------------------------------------------ writes
    def _insert_run(self, conn: sqlite3.Connection, run: RunRecord, tag: str | None) -> int:
        if not isinstance(run.method, str) or not run.method:
            raise InputError("method", f"must be a non-empty string, got {run.method!r}")
        if not isinstance(run.params, dict):
            raise InputError("params", f"must be a dict, got {type(run.params).__name__}")
        created = _now_iso()
        cur = conn.execute(
            "INSERT INTO runs (created, method, params, target, drafter, dtype, device, prompt, prompt_ids, "
            "status, cost_model, pid, pid_start, host, tag) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, 'running', ?, ?, ?, "
            "?, ?)",
            (created, run.method, _dumps("params", run.params), str(run.target), run.drafter, str(run.dtype),
             str(run.device), str(run.prompt), _dumps("prompt_ids", _int_list("prompt_ids", run.prompt_ids)),
             None if run.cost_model is None else _dumps("cost_model", run.cost_model), os.getpid(), _own_start(),
             _HOST, tag),
        )
        run_id = int(cur.lastrowid)
        run.run_id, run.created, run.status = run_id, created, "running"
        return run_id

    def check_writable(self) -> None:
        """SQLite's ``PRAGMA quick_check`` over the whole file, then insert a run row, one round row and one node row
        for it, and roll them back: fails now, before any decoding (and before ``bench`` prints its tag), when any
        page of the file is damaged (a store whose other runs can no longer be read is not written to) or the file
        cannot be written. Stores nothing. The check reads the whole file (here 0.7 s for a 520 MB store in the OS
        cache, 25 s from a cold disk).

        Raises:
            InputError("store", ...): the file is damaged (names it) or cannot be written.
        """
        with self._read() as conn:
            problems = [row[0] for row in conn.execute("PRAGMA quick_check(3)")]
        if problems != ["ok"]:  # e.g. "*** in database main ***\nPage 6: btreeInitPage() returns error code 11\n..."
            found = [ln.strip() for p in problems for ln in p.splitlines() if ln.strip() and not ln.startswith("***")]
            raise self._damaged(f"SQLite's quick_check: {'; '.join(found[:3])}", "nothing was written to it")
        probe = RunRecord(method="probe", params={}, target="", drafter=None, dtype="", device="", prompt="",
                          prompt_ids=[])
        try:
            with self._write() as conn:
                run_id = self._insert_run(conn, probe, None)
                conn.execute(f"INSERT INTO rounds (run_id, {', '.join(_ROUND_COLS)}) VALUES "
                             f"({', '.join('?' * (len(_ROUND_COLS) + 1))})",
                             (run_id, 0, 0, 0, 0, "probe", 0, 0, "[]", "[]", 0.0, 0.0, 0.0, 0.0, "probe", 0, b"", 0, 0,
                              b"", b""))
                conn.execute(f"INSERT INTO nodes (run_id, {', '.join(_NODE_COLS)}) VALUES "
                             f"({', '.join('?' * (len(_NODE_COLS) + 1))})", (run_id, 0, 0, -1, 0, -1, 0, 0.0, 0.0,
                                                                             None, None))
                raise _RollBack
        except _RollBack:
            pass
        except sqlite3.OperationalError as e:  # read-only file or folder, disk full, or held by another writer
            if "locked" in str(e) or "busy" in str(e):
                raise InputError("store", f"{self.path} is busy: another process held its write lock for over "
                                          f"{BUSY_TIMEOUT_S:g} s ({e}); try again or choose another file") from None
            raise InputError("store", f"cannot write to {self.path}: {e}") from None

    def begin_run(self, run: RunRecord, tag: str | None = None) -> int:
        """Insert ``run`` with status ``running`` (rounds are written by :meth:`add_round`) and return its id.

        Sets ``run.run_id``, ``run.created`` (ISO 8601 UTC) and ``run.status``. The calling process's pid is stored so
        that a run whose writer dies reads back as ``interrupted``. ``tag`` is a free label for grouping runs.

        Raises:
            InputError: ``method`` empty, ``params``/``cost_model`` not JSON-serialisable, ``prompt_ids`` not ints.
        """
        with self._write() as conn:
            return self._insert_run(conn, run, tag)

    def _insert_round(self, conn: sqlite3.Connection, run_id: int, rnd: RoundRecord) -> None:
        t = rnd.tree
        if not isinstance(t, DraftTree):
            raise InputError("round.tree", f"must be a DraftTree, got {type(t).__name__}")
        n1 = len(t.tokens)
        if n1 < 1:
            raise InputError("round.tree", "must have at least the root node")
        arrs = {}
        for name in _TREE_INT + _TREE_FLOAT:
            a = np.asarray(getattr(t, name))
            if a.shape != (n1,):
                raise InputError(f"round.tree.{name}", f"must have shape ({n1},) like tokens, got {a.shape}")
            arrs[name] = a.astype(np.int64 if name in _TREE_INT else np.float64, copy=False)
        mt, ml = np.asarray(rnd.marg_tokens), np.asarray(rnd.marg_logprobs)
        if mt.ndim != 2 or ml.shape != mt.shape:
            raise InputError("round.marg_tokens", f"marg_tokens and marg_logprobs must be 2-D [gamma, k] of the same "
                                                  f"shape, got {mt.shape} and {ml.shape}")
        ii = np.iinfo(np.int32)
        if mt.size and (mt.min() < ii.min or mt.max() > ii.max):
            raise InputError("round.marg_tokens", "token ids must fit in int32")
        accepted = _int_list("round.accepted", rnd.accepted)
        row = conn.execute("SELECT status FROM runs WHERE id = ?", (run_id,)).fetchone()
        if row is None:
            raise InputError("run_id", f"no run with id {run_id}")
        if row[0] != "running":
            raise InputError("run_id", f"run {run_id} is {row[0]}; rounds can only be added while it is running")
        idx = int(rnd.index)
        if conn.execute("SELECT 1 FROM rounds WHERE run_id = ? AND idx = ?", (run_id, idx)).fetchone():
            raise InputError("round.index", f"run {run_id} already has round {idx}")
        tau = len(accepted)
        conn.execute(
            f"INSERT INTO rounds (run_id, {', '.join(_ROUND_COLS)}) VALUES ({', '.join('?' * (len(_ROUND_COLS) + 1))})",
            (run_id, idx, int(rnd.start), int(rnd.anchor), int(rnd.budget), str(rnd.budget_reason), tau,
             int(rnd.bonus), json.dumps(_int_list("round.committed", rnd.committed)), json.dumps(accepted),
             float(rnd.draft_ms), float(rnd.build_ms), float(rnd.verify_ms), float(rnd.commit_ms), str(t.method),
             n1 - 1, _blob(np.asarray(t.theta_curve).reshape(-1), "<f8"), int(mt.shape[0]), int(mt.shape[1]),
             _blob(mt, "<i4"), _blob(ml, "<f4")),
        )
        node_arrays = ("parents", "depths", "ranks", "tokens") + _TREE_FLOAT  # the order of _NODE_COLS[2:]
        cols = [[idx] * n1, list(range(n1))] + [arrs[n].tolist() for n in node_arrays]
        conn.executemany(
            f"INSERT INTO nodes (run_id, {', '.join(_NODE_COLS)}) VALUES ({', '.join('?' * (len(_NODE_COLS) + 1))})",
            [(run_id, *r) for r in zip(*cols)],  # NaN floats are bound as NULL by SQLite
        )
        # Running summary (exact: tau and budget are integers, so mean * n recovers the integer sum).
        conn.execute(
            "UPDATE runs SET mean_tau = (ROUND(mean_tau * n_rounds) + ?) / (n_rounds + 1.0), "
            "mean_budget = (ROUND(mean_budget * n_rounds) + ?) / (n_rounds + 1.0), n_rounds = n_rounds + 1 "
            "WHERE id = ?",
            (tau, int(rnd.budget), run_id),
        )

    def add_round(self, run_id: int, rnd: RoundRecord) -> None:
        """Write one round and all its tree nodes (root included) in one transaction.

        Stored arrays: ``marg_tokens`` as int32 ``[gamma, k]`` (ids must fit in int32), ``marg_logprobs`` as float32
        ``[gamma, k]``, ``tree.theta_curve`` as float64 ``[m]``; tree node arrays (length ``n_nodes + 1``) as rows of
        ``nodes``. Also updates the run's ``n_rounds``, ``mean_tau`` and ``mean_budget``.

        Raises:
            InputError: no such run, the run is not ``running``, the round index already exists, or the record is
                malformed (tree arrays of different lengths, marginals not 2-D of equal shapes). Nothing is written.
        """
        with self._write() as conn:
            self._insert_round(conn, int(run_id), rnd)

    def _finish(self, conn: sqlite3.Connection, run_id: int, run: RunRecord, status: str) -> None:
        if status not in ("complete", "failed", "interrupted"):
            raise InputError("status", f"must be one of complete, failed, interrupted; got {status!r}")
        out = _int_list("output_ids", run.output_ids)
        agg = conn.execute("SELECT COUNT(*), COALESCE(AVG(tau), 0), COALESCE(AVG(budget), 0) FROM rounds "
                           "WHERE run_id = ?", (run_id,)).fetchone()
        decode_s = float(run.decode_s)
        sets = ("output_ids = ?, output_text = ?, status = ?, prefill_ms = ?, decode_s = ?, n_new_tokens = ?, "
                "tokens_per_s = ?, n_rounds = ?, mean_tau = ?, mean_budget = ?, error = ?")
        args: list[Any] = [json.dumps(out), str(run.output_text), status, float(run.prefill_ms), decode_s, len(out),
                           len(out) / decode_s if decode_s > 0 else 0.0, agg[0], float(agg[1]), float(agg[2]),
                           run.error]
        if run.cost_model is not None:
            sets += ", cost_model = ?"
            args.append(_dumps("cost_model", run.cost_model))
        cur = conn.execute(f"UPDATE runs SET {sets} WHERE id = ?", (*args, run_id))
        if cur.rowcount == 0:
            raise InputError("run_id", f"no run with id {run_id}")
        run.run_id, run.status = run_id, status

    def finish_run(self, run_id: int, run: RunRecord, status: str = "complete") -> None:
        """Store the run's outputs and summary, and set its final ``status`` (complete, failed or interrupted).

        Writes ``output_ids``, ``output_text``, ``prefill_ms`` (ms), ``decode_s`` (s), ``n_new_tokens`` (tokens),
        ``tokens_per_s`` (tokens/s over ``decode_s``), ``error`` and, if set, ``cost_model``. ``n_rounds``,
        ``mean_tau`` (tokens) and ``mean_budget`` (nodes) are computed from the rounds stored for the run, so
        ``run.rounds`` need not be filled. Rounds are not written here (see :meth:`add_round`, :meth:`save_run`).

        Raises:
            InputError: unknown ``status`` or run id, ``output_ids`` not integers.
        """
        with self._write() as conn:
            self._finish(conn, int(run_id), run, status)

    def save_run(self, run: RunRecord, status: str | None = None, tag: str | None = None) -> int:
        """Write a whole run (``begin_run`` + every ``run.rounds`` + ``finish_run``) in one transaction; return its id.

        ``status`` defaults to ``run.status`` when that is final, else ``complete``. All or nothing.
        """
        st = status or (run.status if run.status in ("complete", "failed", "interrupted") else "complete")
        with self._write() as conn:
            run_id = self._insert_run(conn, run, tag)
            for rnd in run.rounds:
                self._insert_round(conn, run_id, rnd)
            self._finish(conn, run_id, run, st)
        return run_id

    def mark_failed(self, run_id: int, error: str, status: str = "failed") -> None:
        """Set a run's status to ``failed`` (or ``interrupted``) with an error message; its rounds stay readable.

        Raises:
            InputError: unknown run id or a status other than failed/interrupted.
        """
        if status not in ("failed", "interrupted"):
            raise InputError("status", f"must be failed or interrupted, got {status!r}")
        with self._write() as conn:
            cur = conn.execute("UPDATE runs SET status = ?, error = ? WHERE id = ?", (status, str(error), int(run_id)))
            if cur.rowcount == 0:
                raise InputError("run_id", f"no run with id {run_id}")

    def delete_run(self, run_id: int) -> None:
        """Delete one run with its rounds and nodes (cascade); other runs are untouched.

        Raises:
            InputError: no run with this id.
        """
        with self._write() as conn:
            cur = conn.execute("DELETE FROM runs WHERE id = ?", (int(run_id),))
            if cur.rowcount == 0:
                raise InputError("run_id", f"no run with id {run_id}")

    def recover_interrupted(self) -> list[int]:
        """Rewrite as ``interrupted`` every ``running`` run whose writer process is gone; return their ids."""
        with self._write() as conn:
            rows = conn.execute("SELECT id, pid, pid_start, host FROM runs WHERE status = 'running'").fetchall()
            dead = [r[0] for r in rows if not _writer_alive(r[1], r[2], r[3])]
            conn.executemany("UPDATE runs SET status = 'interrupted', error = COALESCE(error, ?) WHERE id = ?",
                             [("writer process ended before the run finished", i) for i in dead])
        return dead

    # ------------------------------------------------------------------------------------------------------- reads
    @staticmethod
    def _effective_status(status: str, pid: int | None, pid_start: int | None, host: str | None) -> str:
        if status == "running" and not _writer_alive(pid, pid_start, host):
            return "interrupted"
        return status

    def list_runs(self, method: str | None = None, status: str | None = None, target: str | None = None,
                  since: str | datetime | None = None) -> "pandas.DataFrame":  # noqa: F821
        """Runs as a DataFrame, newest first, one row per run (no rounds).

        Filters (all optional, combined with AND): ``method``, ``status`` (the status as read back, so ``running`` runs
        of dead writers match ``interrupted``), ``target``, ``since`` (runs created at or after this time: ISO string or
        datetime; naive means UTC).

        Columns: id, created (UTC timestamp), status, method, target, drafter, dtype, device, n_rounds,
        n_new_tokens (tokens), tokens_per_s, mean_tau (tokens/round), mean_budget (nodes/round), prefill_ms (ms),
        decode_s (s), prompt, params (dict), cost_model (dict or None), error, tag, pid. For running runs n_rounds,
        mean_tau and mean_budget cover the rounds written so far.

        Raises:
            InputError: unknown ``status`` or unparseable ``since``.
        """
        import pandas as pd

        if status is not None and status not in STATUSES:
            raise InputError("status", f"must be one of {', '.join(STATUSES)}; got {status!r}")
        where, args = [], []
        if method is not None:
            where.append("method = ?")
            args.append(method)
        if target is not None:
            where.append("target = ?")
            args.append(target)
        if since is not None:
            where.append("created >= ?")
            args.append(self._since_iso(since))
        if status is not None:
            where.append("status IN ('running', 'interrupted')" if status in ("running", "interrupted")
                         else "status = ?")
            if status not in ("running", "interrupted"):
                args.append(status)
        cols = ["id", "created", "status", "method", "target", "drafter", "dtype", "device", "n_rounds",
                "n_new_tokens", "tokens_per_s", "mean_tau", "mean_budget", "prefill_ms", "decode_s", "prompt",
                "params", "cost_model", "error", "tag", "pid", "pid_start", "host"]
        sql = f"SELECT {', '.join(cols)} FROM runs"
        if where:
            sql += " WHERE " + " AND ".join(where)
        sql += " ORDER BY created DESC, id DESC"
        with self._read() as conn:
            rows = conn.execute(sql, args).fetchall()
        df = pd.DataFrame(rows, columns=cols)
        if len(df):
            df["status"] = [self._effective_status(s, p, ps, h)
                            for s, p, ps, h in zip(df["status"], df["pid"], df["pid_start"], df["host"])]
            # From the raw rows: pandas 3 turns None into NaN in a column of strings.
            df["params"] = pd.Series([json.loads(r[cols.index("params")]) for r in rows], dtype=object)
            df["cost_model"] = pd.Series([None if r[cols.index("cost_model")] is None
                                          else json.loads(r[cols.index("cost_model")]) for r in rows], dtype=object)
            if status is not None:
                df = df[df["status"] == status].reset_index(drop=True)
        df["created"] = pd.to_datetime(df["created"], utc=True, format="ISO8601")
        return df.drop(columns=["pid_start", "host"])

    @staticmethod
    def _since_iso(since: str | datetime) -> str:
        if isinstance(since, str):
            try:
                since = datetime.fromisoformat(since)
            except ValueError:
                raise InputError("since", f"must be an ISO 8601 date/time like 2025-01-31 or 2025-01-31T12:00, "
                                          f"got {since!r}") from None
        if not isinstance(since, datetime):  # pandas.Timestamp is a datetime subclass
            raise InputError("since", f"must be an ISO string or datetime, got {type(since).__name__}")
        if since.tzinfo is None:
            since = since.replace(tzinfo=timezone.utc)
        return since.astimezone(timezone.utc).isoformat(timespec="microseconds")

    def _run_row(self, conn: sqlite3.Connection, run_id: int) -> dict[str, Any]:
        row = conn.execute(f"SELECT {', '.join(_RUN_COLS)} FROM runs WHERE id = ?", (int(run_id),)).fetchone()
        if row is None:
            raise InputError("run_id", f"no run with id {run_id} in {self.path}")
        d = dict(zip(_RUN_COLS, row))
        d["status"] = self._effective_status(d["status"], d["pid"], d["pid_start"], d["host"])
        return d

    @staticmethod
    def _rounds_from_rows(round_rows: list[tuple], node_rows: list[tuple], where: str) -> list[RoundRecord]:
        """Rebuild RoundRecords from sorted ``rounds`` rows (``_ROUND_COLS``) and ``nodes`` rows (``_NODE_COLS``)."""
        if node_rows:
            ncols = list(zip(*node_rows))
            ridx = np.asarray(ncols[0], dtype=np.int64)
            nidx = np.asarray(ncols[1], dtype=np.int64)
            ints = [np.asarray(c, dtype=np.int64) for c in ncols[2:6]]
            flts = [np.asarray(c, dtype=np.float64) for c in ncols[6:10]]  # None (NULL) -> NaN
        else:
            ridx = nidx = np.zeros(0, dtype=np.int64)
            ints, flts = [ridx] * 4, [np.zeros(0)] * 4
        out = []
        for r in round_rows:
            d = dict(zip(_ROUND_COLS, r))
            lo, hi = np.searchsorted(ridx, d["idx"], "left"), np.searchsorted(ridx, d["idx"], "right")
            n1 = d["n_nodes"] + 1
            if hi - lo != n1 or not np.array_equal(nidx[lo:hi], np.arange(n1)):
                raise InputError("store", f"{where}, round {d['idx']}: stored nodes are inconsistent "
                                          f"({hi - lo} rows for {n1} nodes)")
            parents_, depths_, ranks_, tokens_ = (a[lo:hi].copy() for a in ints)
            tree = DraftTree(
                tokens=tokens_, parents=parents_, depths=depths_, ranks=ranks_,
                logprobs=flts[0][lo:hi].copy(), path_logprobs=flts[1][lo:hi].copy(),
                node_costs=flts[2][lo:hi].copy(), thetas=flts[3][lo:hi].copy(),
                method=d["tree_method"], theta_curve=_unblob(d["theta_curve"], "<f8", np.float64),
            )
            shape = (d["gamma"], d["k"])
            out.append(RoundRecord(
                index=d["idx"], start=d["start"], anchor=d["anchor"],
                marg_tokens=_unblob(d["marg_tokens"], "<i4", np.int64, shape),
                marg_logprobs=_unblob(d["marg_logprobs"], "<f4", np.float32, shape),
                tree=tree, budget=d["budget"], budget_reason=d["budget_reason"],
                accepted=json.loads(d["accepted"]), bonus=d["bonus"], committed=json.loads(d["committed"]),
                draft_ms=d["draft_ms"], build_ms=d["build_ms"], verify_ms=d["verify_ms"], commit_ms=d["commit_ms"],
            ))
        return out

    def _load_rounds(self, conn: sqlite3.Connection, run_id: int, idx: int | None = None) -> list[RoundRecord]:
        cond, args = ("run_id = ?", (run_id,)) if idx is None else ("run_id = ? AND idx = ?", (run_id, idx))
        rrows = conn.execute(f"SELECT {', '.join(_ROUND_COLS)} FROM rounds WHERE {cond} ORDER BY idx", args).fetchall()
        ncond = cond.replace("idx", "round_idx")
        nrows = conn.execute(f"SELECT {', '.join(_NODE_COLS)} FROM nodes WHERE {ncond} ORDER BY round_idx, node_idx",
                             args).fetchall()
        return self._rounds_from_rows(rrows, nrows, f"run {run_id}")

    def load_run(self, run_id: int, with_rounds: bool = True) -> RunRecord:
        """Read a run back as a :class:`RunRecord` (with its RoundRecords and DraftTrees unless ``with_rounds=False``).

        ``status`` is the status as read back (``interrupted`` when a ``running`` run's writer is gone). Arrays come
        back with the documented dtypes: tree ints int64, tree floats float64, ``marg_tokens`` int64,
        ``marg_logprobs`` float32.

        Raises:
            InputError: no run with this id.
        """
        with self._read() as conn:
            d = self._run_row(conn, run_id)
            rounds = self._load_rounds(conn, int(run_id)) if with_rounds else []
        return RunRecord(
            method=d["method"], params=json.loads(d["params"]), target=d["target"], drafter=d["drafter"],
            dtype=d["dtype"], device=d["device"], prompt=d["prompt"], prompt_ids=json.loads(d["prompt_ids"]),
            output_ids=json.loads(d["output_ids"]), output_text=d["output_text"], status=d["status"],
            prefill_ms=d["prefill_ms"], decode_s=d["decode_s"],
            cost_model=None if d["cost_model"] is None else json.loads(d["cost_model"]),
            rounds=rounds, run_id=d["id"], created=d["created"], error=d["error"],
        )

    def load_round(self, run_id: int, idx: int) -> RoundRecord:
        """Read one round (with its DraftTree) of a run.

        Raises:
            InputError: no such run or no round ``idx`` in it.
        """
        with self._read() as conn:
            self._run_row(conn, run_id)
            rounds = self._load_rounds(conn, int(run_id), int(idx))
        if not rounds:
            raise InputError("round", f"run {run_id} has no round {idx}")
        return rounds[0]

    def n_rounds(self, run_id: int) -> int:
        """Number of rounds stored for a run (counts rounds written so far for running/interrupted runs)."""
        with self._read() as conn:
            self._run_row(conn, run_id)
            return conn.execute("SELECT COUNT(*) FROM rounds WHERE run_id = ?", (int(run_id),)).fetchone()[0]

    def export_run(self, run_id: int) -> dict[str, Any]:
        """A run with all its rounds as a strict-JSON-serialisable dict (NaN/inf become None, arrays become lists).

        Keys: ``schema_version``, ``run`` (every ``runs`` column; params/cost_model parsed; status as read back), and
        ``rounds``: list of dicts with the RoundRecord fields plus ``tau``; ``marg_tokens``/``marg_logprobs`` as
        ``[gamma][k]`` lists; ``tree`` as a dict of per-node lists (length ``n_nodes + 1``), ``method`` and
        ``theta_curve``.

        Raises:
            InputError: no run with this id.
        """
        with self._read() as conn:
            d = self._run_row(conn, run_id)
            rounds = self._load_rounds(conn, int(run_id))
        run = {k: v for k, v in d.items() if k not in ("pid_start", "host")}
        for key in ("params", "cost_model", "prompt_ids", "output_ids"):
            run[key] = None if run[key] is None else json.loads(run[key])
        rows = []
        for r in rounds:
            t = r.tree
            tree = {name: getattr(t, name).tolist() for name in _TREE_INT + _TREE_FLOAT}
            tree.update(method=t.method, n_nodes=t.n_nodes, theta_curve=t.theta_curve.tolist())
            rows.append(dict(
                index=r.index, start=r.start, anchor=r.anchor, budget=r.budget, budget_reason=r.budget_reason,
                tau=r.tau, accepted=r.accepted, bonus=r.bonus, committed=r.committed, draft_ms=r.draft_ms,
                build_ms=r.build_ms, verify_ms=r.verify_ms, commit_ms=r.commit_ms,
                marg_tokens=r.marg_tokens.tolist(), marg_logprobs=r.marg_logprobs.astype(np.float64).tolist(),
                tree=tree,
            ))
        return _finite_or_none({"schema_version": SCHEMA_VERSION, "run": run, "rounds": rows})
