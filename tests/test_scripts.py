"""Every script under scripts/ starts from a clean checkout the way its docstring says (``.venv/bin/python
scripts/X.py``, no PYTHONPATH): ``--help`` exits 0 and prints its usage (a script that cannot import dtree fails)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SCRIPTS = sorted(p.name for p in (ROOT / "scripts").glob("*.py"))


@pytest.mark.parametrize("name", SCRIPTS)
def test_script_answers_help_without_pythonpath(name, tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    r = subprocess.run([sys.executable, str(ROOT / "scripts" / name), "--help"], cwd=tmp_path, env=env,
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr[-2000:]
    assert "usage" in r.stdout.lower(), r.stdout[:500]


# ------------------------------------------------------------------ drafter_shape_costs: the block-size-8 cap
def _chain_run(gamma: int, taus: list[int], seed: int):
    """A stored-shape chain run: one round per tau, each drafting ``gamma`` positions (a block of gamma + 1)."""
    import numpy as np

    from dtree.records import RoundRecord, RunRecord
    from dtree.trees import Marginals, build_chain

    rng = np.random.default_rng(seed)
    rounds = []
    for i, tau in enumerate(taus):
        probs = np.sort(rng.dirichlet(np.ones(3), gamma), axis=1)[:, ::-1]
        marg = Marginals(tokens=rng.integers(0, 1000, (gamma, 3)), logprobs=np.log(probs))
        tree = build_chain(marg, anchor=int(rng.integers(0, 1000)))
        accepted = list(range(tau))  # a chain accepts a prefix: root, node 1, ..., node tau - 1
        rounds.append(RoundRecord(
            index=i, start=10 + 20 * i, anchor=int(tree.tokens[0]), marg_tokens=marg.tokens,
            marg_logprobs=marg.logprobs.astype(np.float32), tree=tree, budget=tree.n_nodes, budget_reason="chain",
            accepted=accepted, bonus=7, committed=[int(tree.tokens[j]) for j in accepted]))
    return RunRecord(method="chain", params={}, target="t", drafter="d", dtype="float32", device="cpu",
                     prompt="p", prompt_ids=[1, 2], output_ids=[3] * sum(taus), rounds=rounds)


def test_block8_cap_reads_block16_chain_runs_and_refuses_other_block_sizes(tmp_path):
    import importlib.util

    from dtree.store import TraceStore

    spec = importlib.util.spec_from_file_location("drafter_shape_costs", ROOT / "scripts" / "drafter_shape_costs.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)

    path = tmp_path / "s.sqlite"
    with TraceStore(path) as st:
        st.save_run(_chain_run(15, [1, 4, 12, 16], seed=0), status="complete", tag="bench:x:gsm8k")
        st.save_run(_chain_run(15, [9, 2], seed=1), status="complete", tag="bench:x:gsm8k")
        st.save_run(_chain_run(7, [3, 8], seed=2), status="complete", tag="bench:y:humaneval")
    (row,) = mod.bs8_from_store(str(path), ["x:gsm8k"])
    taus = [1, 4, 12, 16, 9, 2]
    assert row["runs"] == 2 and row["rounds"] == 6
    assert row["tau_bs16"] == pytest.approx(sum(taus) / 6)
    assert row["tau_capped_bs8"] == pytest.approx(sum(min(t, 8) for t in taus) / 6)
    assert row["rounds_over_8"] == pytest.approx(3 / 6)
    with pytest.raises(SystemExit, match=r"drafted \[7\] positions, not 15"):  # a block-8 drafter's runs
        mod.bs8_from_store(str(path), ["y:humaneval"])
    with pytest.raises(SystemExit, match="no chain rounds"):
        mod.bs8_from_store(str(path), ["nothing-like-this"])


# ------------------------------------------------------------------ chat_prompts: a second set without the first
def test_chat_prompts_exclude_leaves_out_an_earlier_set_and_refuses_a_bad_file(tmp_path):
    def run(*args):
        return subprocess.run([sys.executable, str(ROOT / "scripts" / "chat_prompts.py"), *args], cwd=tmp_path,
                              capture_output=True, text=True, timeout=120)

    def prompts(path):
        import json

        return [json.loads(line)["prompt"] for line in path.read_text().splitlines()]

    first, second, every = tmp_path / "first.jsonl", tmp_path / "second.jsonl", tmp_path / "all.jsonl"
    assert run("--out", str(every)).returncode == 0
    assert run("--out", str(first), "--limit", "300").returncode == 0
    r = run("--out", str(second), "--exclude", str(first))
    assert r.returncode == 0, r.stderr
    a, b, c = prompts(first), prompts(second), prompts(every)
    assert len(a) == 300 and not set(a) & set(b)  # nothing repeated
    assert set(a) | set(b) == set(c) and len(b) == len(c) - 300  # nothing else lost
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"question": "no prompt field"}\n')
    for path, msg in ((bad, "line 1 is not a JSON object with a 'prompt' field"), (tmp_path / "nope.jsonl",
                                                                                   "is not a file")):
        r = run("--out", str(tmp_path / "x.jsonl"), "--exclude", str(path))
        assert r.returncode == 2 and msg in r.stderr
        assert not (tmp_path / "x.jsonl").exists()
    # --out naming an --exclude file would overwrite it; a stray comma; a set that leaves nothing: refused, unwritten
    before = first.read_bytes()
    for args, msg in ((["--out", str(first), "--exclude", str(first)], "is also --out"),
                      (["--out", str(tmp_path / "x.jsonl"), "--exclude", f"{first},"], "empty item"),
                      (["--out", str(tmp_path / "x.jsonl"), "--exclude", f"{first},{second}"], "leaves no prompt")):
        r = run(*args)
        assert r.returncode == 2 and msg in r.stderr, (args, r.stderr)
    assert first.read_bytes() == before and not (tmp_path / "x.jsonl").exists()


def test_code_prompts_refuses_an_out_that_is_an_exclude_file(tmp_path):
    first = tmp_path / "first.jsonl"
    first.write_text('{"prompt": "def f():\\n    \\"\\"\\" Do f. \\"\\"\\"\\n"}\n')
    before = first.read_bytes()
    r = subprocess.run([sys.executable, str(ROOT / "scripts" / "code_prompts.py"), "--roots", str(tmp_path),
                        "--out", str(first), "--exclude", str(first)], cwd=tmp_path, capture_output=True, text=True,
                       timeout=120)
    assert r.returncode == 2 and "is also --out" in r.stderr and first.read_bytes() == before
