"""Bench: end to end on real prompts, its speedup column, losslessness check, and bad input."""

from __future__ import annotations

import json

import pytest

from dtree import bench, trees
from dtree.cli import main
from dtree.errors import InputError


@pytest.fixture()
def two_prompts(tmp_path):
    path = tmp_path / "p.jsonl"
    path.write_text("\n".join(json.dumps({"question": q}) for q in ["What is 5 + 7?", "Name two oceans."]) + "\n")
    return path


def test_bench_end_to_end_speedup_is_ratio_of_timings(backend32, two_prompts, tmp_store):
    methods = bench.parse_methods("ar,chain,ddtree:4")
    prompts = bench.load_prompts(str(two_prompts), 2)
    stats = bench.run_bench(backend32, prompts, methods, max_new_tokens=16, store=tmp_store)
    rows = {r["method"]: r for r in bench.summary_rows(stats)}
    assert set(rows) == {"ar", "chain", "ddtree:4"}
    for key, r in rows.items():
        assert r["speedup_vs_ar"] == pytest.approx(r["tok_s"] / rows["ar"]["tok_s"], rel=2e-3)
        assert r["mismatches"] == 0
        assert len(stats[key].run_ids) == 2
        if key == "ar":
            assert r["speedup_ci90"] is None
        else:  # paired bootstrap over the 2 prompts: brackets the point estimate
            lo, hi = r["speedup_ci90"]
            assert lo - 1e-3 <= r["speedup_vs_ar"] <= hi + 1e-3
            assert (lo, hi) == pytest.approx(tuple(bench.ratio_interval(stats[key], stats["ar"])), abs=1e-3)
    assert len(tmp_store.list_runs()) == 6


def test_bench_flags_a_corrupted_walk(backend32, two_prompts, monkeypatch):
    real_walk = trees.walk

    def greedy_walk_one_too_far(tree, target_tokens):
        accepted, bonus = real_walk(tree, target_tokens)
        kids = [i for i in range(1, tree.n_nodes + 1) if tree.parents[i] == accepted[-1]]
        if kids:  # accept the first child although the target chose otherwise
            accepted = accepted + [kids[0]]
            bonus = int(target_tokens[kids[0]])
        return accepted, bonus

    monkeypatch.setattr(trees, "walk", greedy_walk_one_too_far)
    stats = bench.run_bench(backend32, bench.load_prompts(str(two_prompts), 2),
                            bench.parse_methods("ar,ddtree:4"), max_new_tokens=16)
    rows = {r["method"]: r for r in bench.summary_rows(stats)}
    assert rows["ar"]["mismatches"] == 0
    assert rows["ddtree:4"]["mismatches"] >= 1


def test_losslessness_reference_without_ar():
    """Without AR every method is checked against the first one; at temperature > 0 nothing is checked (None)."""
    def stats_for(outputs_per_prompt):
        stats = {k: bench.MethodStats(tok_s=[1.0], tpot_ms=[1.0], tau=[1.0], budget=[1.0])
                 for k in outputs_per_prompt[0]}
        for i, outs in enumerate(outputs_per_prompt):
            bench._check_outputs(stats, i, outs)
        return stats

    stats = stats_for([{"ddtree:4": [1, 2], "caddtree": [1, 2], "ddtree:8": [1, 3]},
                       {"ddtree:4": [5], "caddtree": [6], "ddtree:8": [5]}])
    rows = {r["method"]: r for r in bench.summary_rows(stats)}
    assert {k: (r["mismatches"], r["reference"]) for k, r in rows.items()} == {
        "ddtree:4": (0, "ddtree:4"), "caddtree": (1, "ddtree:4"), "ddtree:8": (1, "ddtree:4")}
    assert stats["caddtree"].mismatches == [1] and stats["ddtree:8"].mismatches == [0]
    stats = stats_for([{"chain": [1], "ar": [2]}])  # AR is the reference wherever it stands
    assert stats["chain"].mismatches == [0] and stats["ar"].mismatches == [] and stats["ar"].reference == "ar"
    unchecked = {"ar": bench.MethodStats(tok_s=[1.0], tpot_ms=[1.0], tau=[1.0], budget=[1.0])}
    assert bench.summary_rows(unchecked)[0]["mismatches"] is None


def test_ratio_with_interval_matches_medians_and_handles_missing_methods():
    base = bench.MethodStats(tok_s=[10.0, 20.0, 30.0, 12.0], prompts=[0, 1, 2, 3])
    var = bench.MethodStats(tok_s=[11.0, 23.0, 33.0, 12.0], prompts=[0, 1, 2, 3])
    stats = {"caddtree": base, "caddtree-rawcv": var, "empty": bench.MethodStats()}
    r, ci = bench.ratio_with_interval(stats, "caddtree-rawcv", "caddtree")
    assert r == round((12.0 + 23.0) / 2 / ((12.0 + 20.0) / 2), 3)  # ratio of medians, not median of ratios
    assert ci[0] <= ci[1] and ci[0] >= 1.0  # every prompt ran at least as fast with the variant
    assert bench.ratio_with_interval(stats, "caddtree-rawcv", None) == (None, None)
    assert bench.ratio_with_interval(stats, "caddtree-rawcv", "ddtree:64") == (None, None)
    assert bench.ratio_with_interval(stats, "empty", "caddtree") == (None, None)


@pytest.mark.parametrize("spec", ["beam", "ddtree", "ddtree:x", "chain:4", "ddtree:-1", "ddtree:5000", ""])
def test_bad_methods(spec):
    with pytest.raises(InputError):
        bench.parse_methods(spec)


def test_bad_datasets(tmp_path):
    with pytest.raises(InputError, match="unknown dataset"):
        bench.load_prompts("no-such-set", 5)
    for path in ("/x.jsonl", str(tmp_path / "gone.jsonl.gz"), "sub/prompts"):  # names that look like paths
        with pytest.raises(InputError, match="^dataset: file not found: "):
            bench.load_prompts(path, 5)
    with pytest.raises(InputError, match="is a directory"):
        bench.load_prompts(str(tmp_path), 5)
    binary = tmp_path / "store.sqlite"
    binary.write_bytes(b"SQLite format 3\x00" + bytes(range(256)) * 8)
    with pytest.raises(InputError, match="^dataset: .*store.sqlite is not a UTF-8 text file"):
        bench.load_prompts(str(binary), 3)
    with pytest.raises(InputError, match="^dataset: .*store.sqlite is not a UTF-8 text file"):  # uploaded: its name
        bench.load_prompts_bytes(binary.read_bytes(), "store.sqlite", 3)
    with pytest.raises(InputError, match="limit"):
        bench.load_prompts("gsm8k", 0)
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"answer": "42"}) + "\n")
    with pytest.raises(InputError, match="no prompt field"):
        bench.load_prompts(str(bad), 3)


def test_bench_cli_bad_input_exits_2_and_stores_nothing(tmp_path, capsys):
    store = tmp_path / "b.sqlite"
    for args in (["--methods", "ddtree:abc"], ["--dataset", "nope"], ["--limit", "0"], ["--out", "x.txt"]):
        assert main(["bench", "--store", str(store), *args]) == 2
        assert "error:" in capsys.readouterr().err
    assert not store.exists()
