"""Shared fixtures: the real embedded target (fp32 for exact-equality tests), the shipped drafter, prompt sets."""

from __future__ import annotations

import os

# torch threads busy-wait for each other by default; on a shared 2-core machine that makes them ~30x slower when
# anything else runs. Must be set before torch is imported.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import gzip
import json
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parent.parent
DATASETS = ROOT.parent / "shared" / "datasets"
DEVICE = os.environ.get("DTREE_TEST_DEVICE", "cpu")  # scripts/gpu_check.sh sets cuda

torch.set_num_threads(max(1, min(2, torch.get_num_threads())))


def dataset_prompts(n_per_set: int = 2) -> list[str]:
    """Real prompts from ../shared/datasets: GSM8K test, HumanEval, MT-Bench first turns."""
    out = []
    with open(DATASETS / "gsm8k" / "test.jsonl") as f:
        out += [json.loads(line)["question"] for _, line in zip(range(n_per_set), f)]
    with gzip.open(DATASETS / "humaneval" / "HumanEval.jsonl.gz", "rt") as f:
        out += [json.loads(line)["prompt"] for _, line in zip(range(n_per_set), f)]
    with open(DATASETS / "mt_bench" / "question.jsonl") as f:
        out += [json.loads(line)["turns"][0] for _, line in zip(range(n_per_set), f)]
    return out


@pytest.fixture(scope="session")
def target32():
    from dtree.models import load_target

    return load_target("embedded", dtype="float32", device=DEVICE)


@pytest.fixture(scope="session")
def drafter32(target32):
    from dtree.drafter import default_drafter_path, load_drafter

    # DTREE_TEST_DRAFTER points the suite at another checkpoint (e.g. one being trained); default: the shipped one
    d = load_drafter(os.environ.get("DTREE_TEST_DRAFTER") or default_drafter_path(), target32)
    d.name = "test-drafter"
    return d


@pytest.fixture(scope="session")
def backend32(target32, drafter32):
    from dtree.backend import Backend

    b = Backend("embedded", "float32", DEVICE, drafter=os.environ.get("DTREE_TEST_DRAFTER"))
    assert b.drafter is not None
    return b


@pytest.fixture()
def tmp_store(tmp_path):
    from dtree.store import TraceStore

    s = TraceStore(tmp_path / "runs.sqlite")
    yield s
    s.close()


@pytest.fixture()
def tiny_cost(monkeypatch):
    """The app's cached backend (float32, the pages' default) with a small convex cost model: caddtree runs on the
    pages without profiling this machine."""
    import numpy as np

    from dtree import ui
    from dtree.cost import CostModel

    backend = ui.get_backend("embedded", "float32")
    nodes = np.array([0, 2, 4, 8, 16])
    cv = np.array([[0.02 + 2e-3 * n + 4e-4 * n * n for n in nodes]] * 2)
    monkeypatch.setattr(backend, "_cost_model", CostModel.from_measurements(0.01, [0, 1024], nodes, cv))
    return backend


@pytest.fixture()
def fake_calibration(monkeypatch, tmp_path):
    """The app's cached backend (float32) with no calibration yet and a fast stand-in for the warm-up fit (two progress
    steps, identity factors), cached under tmp_path. Returns the list of progress calls the fit received."""
    import dtree.backend
    from dtree import ui
    from dtree.calibration import Calibration

    calls = []

    def fit(target, drafter, progress=None, **kw):
        for i in (1, 2):
            calls.append((i, 2))
            if progress is not None:
                progress(i, 2)
        return Calibration.identity()

    monkeypatch.setattr(ui.get_backend("embedded", "float32"), "_calibration", None)
    monkeypatch.setattr(dtree.backend, "fit_warmup_calibration", fit)
    monkeypatch.setattr(dtree.backend, "default_calibration_path", lambda target, drafter: tmp_path / "cal.json")
    return calls


def pytest_configure(config):
    config.addinivalue_line("markers", "browser: real-browser test of the app (headless Chromium via Playwright; "
                                       "select with -m browser, skip with -m 'not browser')")


@pytest.fixture(scope="module")
def small_cost(backend32):
    """A real (tiny, quick) measured cost model so caddtree runs without the full auto-profile."""
    from dtree.backend import profile_cost_model

    cm = profile_cost_model(backend32.target, backend32.drafter, contexts=(64, 512), nodes=(0, 1, 2, 4, 8, 16, 32),
                            repeats=1)
    backend32._cost_model = cm
    return cm


def damage_table_root(path: Path, table: str, seed: int = 2) -> None:
    """Overwrite the root page of ``table`` in the SQLite file ``path`` (checkpointed first) with random bytes: the
    other tables stay readable and writable, and SQLite fails only when that table is touched."""
    import sqlite3

    import numpy as np

    con = sqlite3.connect(path)
    con.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    page_size = con.execute("PRAGMA page_size").fetchone()[0]
    root = con.execute("SELECT rootpage FROM sqlite_master WHERE type = 'table' AND name = ?", (table,)).fetchone()[0]
    con.close()
    data = bytearray(path.read_bytes())
    data[(root - 1) * page_size:root * page_size] = np.random.default_rng(seed).integers(
        0, 256, page_size, dtype=np.uint8).tobytes()
    path.write_bytes(bytes(data))


@pytest.fixture()
def damaged_store(tmp_path) -> Path:
    """A trace store whose SQLite header is intact but whose pages after the second were overwritten with random bytes:
    it opens, and SQLite fails only when a damaged page is touched (any read of the runs, any run insert)."""
    import numpy as np

    from dtree.records import RunRecord
    from dtree.store import TraceStore

    path = tmp_path / "dmg.sqlite"
    with TraceStore(path) as s:
        for i in range(40):
            s.save_run(RunRecord(method="ar", params={"i": i}, target="t" * 500, drafter=None, dtype="float32",
                                 device="cpu", prompt="p" * 2000, prompt_ids=list(range(200))))
    data = bytearray(path.read_bytes())
    assert len(data) >= 8 * 4096
    data[2 * 4096:] = np.random.default_rng(1).integers(0, 256, len(data) - 2 * 4096, dtype=np.uint8).tobytes()
    path.write_bytes(bytes(data))
    return path
