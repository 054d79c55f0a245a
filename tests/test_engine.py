"""Engine tests on the real embedded model: tree attention, KV compaction, losslessness (greedy and sampled)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy import stats
from transformers import DynamicCache

from dtree import engine, trees
from dtree.engine import DecodeConfig

from .conftest import dataset_prompts


def _random_tree(seed: int, gamma: int = 5, k: int = 4, budget: int = 24, vocab: int = 49152) -> trees.DraftTree:
    rng = np.random.default_rng(seed)
    logits = torch.tensor(rng.normal(size=(gamma, vocab)) * 3, dtype=torch.float32)
    marg = trees.topk_marginals(logits, k)
    return trees.build_ddtree(marg, anchor=int(rng.integers(100, 5000)), budget=budget)


def _plain_logits(model, ids: list[int]) -> torch.Tensor:
    with torch.inference_mode():
        return model(input_ids=torch.tensor([ids], device=model.device)).logits[0, -1]


def test_tree_attention_equals_plain_sequences(target32):
    model = target32.model
    prompt = target32.encode_prompt("Name three primes.")
    tree = _random_tree(0)
    assert tree.n_nodes == 24 and tree.depths.max() >= 3  # a real branching, multi-level tree
    cache = DynamicCache(config=model.config)
    engine.prefill(model, prompt, cache, want_hidden=False)
    logits, _ = engine.verify_tree(model, tree, len(prompt), cache, target32.dtype)
    for i in range(tree.n_nodes + 1):
        path, j = [], i
        while j >= 0:
            path.append(int(tree.tokens[j]))
            j = int(tree.parents[j])
        ref = _plain_logits(model, prompt + path[::-1])
        assert torch.allclose(logits[i], ref, atol=1e-4, rtol=0), f"node {i}: max diff {(logits[i] - ref).abs().max()}"


def test_tree_verify_skips_the_kv_expansion_and_equals_transformers_sdpa(target32, monkeypatch):
    """Targets load with dtree's attention: a CPU tree verify passes the UNexpanded K/V (H_kv heads) with
    enable_gqa, and gives the same logits as transformers' own sdpa path (which expands K/V to every head)."""
    from dtree.models import TREE_ATTENTION

    model = target32.model
    assert model.config._attn_implementation == TREE_ATTENTION
    calls = []
    real = torch.nn.functional.scaled_dot_product_attention

    def spy(q, k, v, *a, **kw):
        calls.append((q.shape[1], k.shape[1], kw.get("enable_gqa", False), kw.get("attn_mask") is not None))
        return real(q, k, v, *a, **kw)

    monkeypatch.setattr(torch.nn.functional, "scaled_dot_product_attention", spy)
    prompt = target32.encode_prompt("Name three primes.")
    tree = _random_tree(1)
    logits = {}
    try:
        for impl in (TREE_ATTENTION, "sdpa"):
            model.set_attn_implementation(impl)
            cache = DynamicCache(config=model.config)
            engine.prefill(model, prompt, cache, want_hidden=False)
            calls.clear()
            logits[impl], _ = engine.verify_tree(model, tree, len(prompt), cache, target32.dtype)
            heads, kv_heads = model.config.num_attention_heads, model.config.num_key_value_heads
            assert len(calls) == model.config.num_hidden_layers
            want = (heads, kv_heads, True, True) if impl == TREE_ATTENTION else (heads, heads, False, True)
            assert set(calls) == {want}, (impl, set(calls))
    finally:
        model.set_attn_implementation(TREE_ATTENTION)
    assert kv_heads < heads  # the embedded target is a GQA model, so the two paths really differ
    torch.testing.assert_close(logits[TREE_ATTENTION], logits["sdpa"], rtol=0, atol=1e-4)


def test_compaction_then_continue_equals_plain(target32):
    model = target32.model
    prompt = target32.encode_prompt("Count to five.")
    tree = _random_tree(1)
    # accept a deep path that is not the first nodes in order, so compaction really moves rows
    leaf = int(np.argmax(tree.depths * 1000 + np.arange(tree.n_nodes + 1)))
    path = []
    j = leaf
    while j >= 0:
        path.append(j)
        j = int(tree.parents[j])
    accepted = path[::-1]
    assert accepted != list(range(len(accepted)))
    start = len(prompt)
    cache = DynamicCache(config=model.config)
    engine.prefill(model, prompt, cache, want_hidden=False)
    engine.verify_tree(model, tree, start, cache, target32.dtype)
    engine.compact_cache(cache, start, tree.n_nodes + 1, accepted)
    assert cache.get_seq_length() == start + len(accepted)
    seq = prompt + [int(tree.tokens[i]) for i in accepted]
    token = 42
    for step in range(4):
        logits = engine.decode_one_token(model, token, len(seq), cache)
        seq.append(token)
        ref = _plain_logits(model, seq)
        assert torch.allclose(logits, ref, atol=1e-4, rtol=0), f"step {step}: {(logits - ref).abs().max()}"
        token = int(ref.argmax())


@pytest.mark.parametrize("prompt", dataset_prompts(2)[:5])
def test_greedy_output_identical_to_ar(backend32, small_cost, prompt):
    """fp32, 64 new tokens: chain, ddtree B in {1, 4, 32} and caddtree reproduce AR greedy token for token."""
    ar = backend32.decode(prompt, DecodeConfig("ar", max_new_tokens=64))
    assert len(ar.output_ids) >= 8
    for method, budget in [("chain", None), ("ddtree", 1), ("ddtree", 4), ("ddtree", 32), ("caddtree", 64)]:
        run = backend32.decode(prompt, DecodeConfig(method, budget=budget, max_new_tokens=64))
        assert run.output_ids == ar.output_ids, f"{method} B={budget} diverged from AR"
        assert sum(r.tau for r in run.rounds) >= len(run.output_ids) - 1
        assert all(1 <= r.tau <= r.budget + 1 for r in run.rounds)


def test_sampling_first_two_tokens_match_target_distribution(backend32):
    """T > 0: the joint law of the first two tokens under ddtree equals the target's exact law (chi-square).

    The exact law comes from the target itself: p(t1) from the prompt's logits, p(t2 | t1) from one more forward. A
    walk that accepted drafter tokens without the target's agreement (or mis-sampled) shifts these frequencies.
    """
    target = backend32.target
    temperature = 0.7
    prompt = "Name a color."  # first two tokens spread over ~5 likely pairs (0.16, 0.14, 0.12, 0.04, ...)
    ids = target.encode_prompt(prompt)
    with torch.inference_mode():
        p1 = torch.softmax(target.model(input_ids=torch.tensor([ids], device=target.device)).logits[0, -1] / temperature, -1)
    top1 = torch.topk(p1, 4).indices.tolist()
    exact: dict[tuple, float] = {}
    for t1 in top1:
        with torch.inference_mode():
            p2 = torch.softmax(target.model(input_ids=torch.tensor([ids + [t1]], device=target.device)).logits[0, -1] / temperature, -1)
        for t2 in torch.topk(p2, 3).indices.tolist():
            exact[(t1, t2)] = float(p1[t1] * p2[t2])
    n = 150
    counts = dict.fromkeys(exact, 0)
    other = 0
    for seed in range(n):
        run = backend32.decode(prompt, DecodeConfig("ddtree", budget=8, max_new_tokens=2, temperature=temperature,
                                                    seed=seed))
        key = tuple(run.output_ids[:2])
        if key in counts:
            counts[key] += 1
        else:
            other += 1
    keys = sorted(exact, key=exact.get, reverse=True)
    obs, exp = [], []
    rest_p = 1.0
    for kk in keys:
        if exact[kk] * n >= 5:
            obs.append(counts[kk])
            exp.append(exact[kk] * n)
            rest_p -= exact[kk]
        else:
            other += counts[kk]
    obs.append(other)
    exp.append(rest_p * n)
    assert len(obs) >= 3, "the test prompt must spread probability over several token pairs"
    chi2, p = stats.chisquare(obs, exp)
    assert p > 0.001, f"chi-square p={p:.2g}: observed {obs} vs expected {np.round(exp, 1).tolist()}"


def test_sampling_is_reproducible_with_seed(backend32):
    cfg = DecodeConfig("ddtree", budget=4, max_new_tokens=12, temperature=0.8, seed=7)
    a = backend32.decode("Tell me a fact.", cfg)
    b = backend32.decode("Tell me a fact.", cfg)
    assert a.output_ids == b.output_ids


def test_rounds_are_consistent(backend32, small_cost):
    run = backend32.decode("What is 12 times 7?", DecodeConfig("caddtree", budget=32, max_new_tokens=40))
    committed = [t for r in run.rounds for t in r.committed]
    assert run.output_ids == (committed + [run.rounds[-1].bonus])[: len(run.output_ids)]
    for prev, nxt in zip(run.rounds, run.rounds[1:]):
        assert nxt.start == prev.start + prev.tau and nxt.anchor == prev.bonus
    for r in run.rounds:
        assert r.marg_tokens.shape[0] == backend32.drafter.config.block_size - 1
        assert r.tree.method == "caddtree" and 0 <= r.budget <= 32
        assert np.isfinite(r.tree.thetas).all() and len(r.tree.theta_curve) >= r.budget + 1
        assert r.draft_ms > 0 and r.verify_ms > 0


def test_run_logged_round_by_round_and_interruption_kept(backend32, tmp_store, capsys):
    """Each round reaches the store as it completes; a run stopped mid-way stays readable, marked interrupted."""
    cfg = DecodeConfig("ddtree", budget=4, max_new_tokens=48)
    done = backend32.decode("List the planets.", cfg, store=tmp_store)
    back = tmp_store.load_run(done.run_id)
    assert back.status == "complete" and back.output_ids == done.output_ids
    assert [r.tau for r in back.rounds] == [r.tau for r in done.rounds]
    np.testing.assert_array_equal(back.rounds[0].tree.tokens, done.rounds[0].tree.tokens)

    seen = []

    def stop_after_two(rnd, n):
        seen.append(rnd.index)
        if len(seen) == 2:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        backend32.decode("List the planets.", cfg, store=tmp_store, on_round=stop_after_two)
    runs = tmp_store.list_runs()
    cut = runs[runs["status"] == "interrupted"]
    assert len(cut) == 1
    part = tmp_store.load_run(int(cut["id"].iloc[0]))
    assert len(part.rounds) == 2
    assert [r.committed for r in part.rounds] == [r.committed for r in done.rounds[:2]]
    # replaying it says that it stopped part-way instead of printing a 0 tok/s "recorded" figure
    from dtree.cli import main

    assert main(["replay", "--run", str(part.run_id), "--budgets", "1,2", "--store", str(tmp_store.path)]) == 0
    out, err = capsys.readouterr()
    assert f"note: run {part.run_id} is interrupted" in err and "2 logged round(s)" in err
    assert "recorded: mean tau" in out and "0.00 tok/s" not in out


# ------------------------------------------------------------------------------------------------------ -fallback


class _Curve:
    """A stand-in cost model for :func:`engine.fallback_decision`: Cv(0; L) = ``cv0`` seconds."""

    def __init__(self, cv0: float):
        self.cv0 = cv0

    def cv(self, n, L):
        return self.cv0 + 0.001 * n


def test_fallback_decision_compares_theta_with_a_plain_step_and_doubles_the_backoff():
    tree = trees.root_only_tree(5)
    tree.theta_curve = np.array([8.0, 9.5, 9.0])
    # a plain step of 0.1 s gives 10 tok/s > 8: skip; the back-off doubles and is capped
    assert engine.fallback_decision(tree, _Curve(0.1), 64, 1)[:2] == (1, 2)
    assert engine.fallback_decision(tree, _Curve(0.1), 64, 4)[:2] == (4, 8)
    skip, nxt, note = engine.fallback_decision(tree, _Curve(0.1), 64, engine.FALLBACK_MAX_SKIP)
    assert (skip, nxt) == (engine.FALLBACK_MAX_SKIP, engine.FALLBACK_MAX_SKIP)
    assert "8.00 < a plain step's 10.00 tok/s" in note and note.startswith("; ")
    # a plain step of 0.2 s gives 5 tok/s < 8: draft again next round, back-off reset
    assert engine.fallback_decision(tree, _Curve(0.2), 64, 8) == (0, 1, "")


def test_fallback_is_lossless_and_skips_the_drafter_with_a_doubling_backoff(backend32, small_cost):
    """caddtree-fallback, fp32 greedy: the output equals AR's whatever it decides. With a drafter step priced at 1 s
    no tree pays, so the rounds run drafted, 1 plain step, drafted, 2 plain, drafted, 4, 8, 16, 16...; with a free
    drafter step every tree pays (theta(n*) >= theta(0) = a plain step's) and no round is skipped."""
    from dtree.cost import CostWeights

    prompt = dataset_prompts(1)[1]  # HumanEval/0
    ids = backend32.target.encode_prompt(prompt)
    ar = backend32.decode_ids(ids, DecodeConfig("ar", max_new_tokens=48))
    dear = small_cost.weighted(CostWeights(cd_s=1.0))
    for method in ("caddtree-fallback", "caddtree-adapt-rawcv-fallback"):
        run = backend32.decode_ids(ids, DecodeConfig(method, max_new_tokens=48), cost=dear)
        assert run.method == method and run.params["fallback"]
        assert run.output_ids == ar.output_ids, f"{method} diverged from AR"
        drafted = [bool(r.marg_tokens.size) for r in run.rounds]
        gaps, n = [], 0
        for d in drafted[1:]:
            if d:
                gaps.append(n)
                n = 0
            else:
                n += 1
        assert drafted[0] and gaps[:4] == [1, 2, 4, 8], "".join("D" if d else "." for d in drafted)
        for r in run.rounds:
            if not r.marg_tokens.size:
                assert r.budget == 0 and r.tau == 1 and r.draft_ms == 0 and r.verify_ms > 0
                assert r.budget_reason.startswith("fallback: plain target step")
            else:
                assert "skips the drafter" in r.budget_reason or "skip the drafter" in r.budget_reason
        for prev, nxt in zip(run.rounds, run.rounds[1:]):
            assert nxt.start == prev.start + prev.tau and nxt.anchor == prev.bonus
    free = backend32.decode_ids(ids, DecodeConfig("caddtree-fallback", max_new_tokens=48),
                                cost=small_cost.weighted(CostWeights(cd_s=0.0)))
    assert free.output_ids == ar.output_ids
    assert all(r.marg_tokens.size for r in free.rounds)


def test_fallback_applies_to_caddtree_only(backend32):
    from dtree.errors import InputError

    with pytest.raises(InputError) as e:
        backend32.decode("Hi", DecodeConfig("ddtree", budget=4, fallback=True, max_new_tokens=4))
    assert e.value.field == "fallback"


@pytest.mark.parametrize("n_nodes", [1, 3, 5])
def test_padded_verify_equals_unpadded(target32, n_nodes):
    """A verify padded to the next of (5, 8) (the CPU fp32 default) gives the unpadded logits and hidden states and
    leaves exactly n + 1 new cache entries, which then hold the same keys as after the unpadded verify."""
    model = target32.model
    prompt = target32.encode_prompt("Name three primes.")
    tree = trees.random_tree(n_nodes, np.random.default_rng(n_nodes), 49152)
    out = {}
    for widths in ((), (5, 8)):
        cache = DynamicCache(config=model.config)
        engine.prefill(model, prompt, cache, want_hidden=False)
        logits, hidden = engine.verify_tree(model, tree, len(prompt), cache, target32.dtype, widths)
        assert cache.get_seq_length() == len(prompt) + n_nodes + 1
        assert logits.shape[0] == n_nodes + 1 and all(h.shape[1] == n_nodes + 1 for h in hidden)
        out[widths] = (logits, hidden[-1], cache.layers[-1].keys.clone())
    for a, b in zip(out[()], out[(5, 8)]):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-4)


def test_decode_pads_small_verifies_and_stays_lossless(backend32, monkeypatch):
    """ddtree:1/2/6 runs (2, 3, 7 token verifies) go through the padded forward and still reproduce AR; the run
    records the padding it used."""
    widths = []
    real = trees.tree_attention_inputs

    def spy(tree, start, dtype, device=None, width=None):
        out = real(tree, start, dtype, device, width)
        widths.append((tree.n_nodes + 1, out[0].shape[1]))
        return out

    monkeypatch.setattr(trees, "tree_attention_inputs", spy)
    monkeypatch.setattr(backend32.target, "verify_widths", (5, 8))  # the kernel table's widths vary per machine
    prompt = "What is 7 times 8?"
    ar = backend32.decode(prompt, DecodeConfig("ar", max_new_tokens=24))
    for budget in (1, 2, 6):
        widths.clear()
        run = backend32.decode(prompt, DecodeConfig("ddtree", budget=budget, max_new_tokens=24))
        assert run.output_ids == ar.output_ids
        assert run.params["verify_widths"] == [5, 8]
        assert widths and all(w == (5 if n <= 5 else 8) for n, w in widths if n >= 2) and any(n >= 2 for n, _ in widths)


def test_caddtree_reads_the_measured_cv_when_the_convex_fit_is_off(backend32):
    """A concave profile (like a CPU's with the few-row kernels) makes plain caddtree stop on the measured Cv, says
    so in the run's params, the stored cost model and every drafted round's reason, and stays lossless; a profile the
    convex fit describes, a model already on the measured curve and analytic weights keep their curve."""
    from dtree.cost import CostModel, CostWeights
    from dtree.engine import auto_cv_curve

    nodes = [0, 1, 2, 4, 8, 16, 32]  # the session-11 CPU profile at L = 64 (ms): concave beyond 8 nodes
    concave = CostModel.from_measurements(0.014, [64], nodes, np.array([[31, 30, 37, 45, 70, 92, 121]]) * 1e-3)
    convex = CostModel.from_measurements(0.014, [64], nodes, np.array([[30, 31, 33, 37, 45, 61, 93]]) * 1e-3)
    assert convex.fit_gap()["rel_gap"] <= 0.1 and auto_cv_curve(convex) is None
    why = auto_cv_curve(concave)
    assert why is not None and why.startswith("measured: the convex fit of Cv is")
    assert auto_cv_curve(concave.with_curve("measured")) is None
    assert auto_cv_curve(concave.weighted(CostWeights(cv_a=0.03, cv_b=0.001))) is None
    assert auto_cv_curve(None) is None

    ids = backend32.target.encode_prompt("What is 7 times 8?")
    ar = backend32.decode_ids(ids, DecodeConfig("ar", max_new_tokens=16))
    run = backend32.decode_ids(ids, DecodeConfig("caddtree", max_new_tokens=16), cost=concave)
    assert run.output_ids == ar.output_ids
    assert run.params["cv_curve"] == why and run.cost_model["curve"] == "measured"
    drafted = [r for r in run.rounds if r.marg_tokens.size]
    assert drafted and all("measured Cv" in r.budget_reason for r in drafted)
    # on the measured (non-convex) curve the builder takes theta's argmax over the prefixes, not the first drop
    assert all("argmax stop" in r.budget_reason or "maximum budget" in r.budget_reason for r in drafted)
    kept = backend32.decode_ids(ids, DecodeConfig("caddtree", max_new_tokens=16), cost=convex)
    assert kept.output_ids == ar.output_ids
    assert "cv_curve" not in kept.params and kept.cost_model.get("curve", "convex") == "convex"
    assert not any("measured Cv" in r.budget_reason or "argmax" in r.budget_reason for r in kept.rounds)
    # replay follows the same rule, so each run's own trees come back round for round
    from dtree.replay import replay_as_logged, sweep_budgets, sweep_weights, unimodal_summary

    for r in (run, kept):
        s = replay_as_logged(r)
        assert (s.taus == s.recorded_taus).all()
        assert list(s.n_nodes) == [x.budget for x in r.rounds]  # the same stop rule picks the same budgets
        # and so do a budget sweep's caddtree row and the weight grid at weights 1 (Budget lab, `replay`)
        sweep = sweep_budgets(r, [1, 2])
        assert list(sweep.attrs["caddtree_budgets"]) == [x.budget for x in r.rounds]
        grid = sweep_weights(r, [1.0], [1.0])
        assert grid["mean_budget"].iloc[0] == pytest.approx(np.mean([x.budget for x in r.rounds]))
    summary = unimodal_summary([run, kept])
    assert summary["n_runs"] == 1 and sorted(g["measured_cv"] for g in summary["groups"]) == [False, True]
    assert summary["n_rounds"] == len(kept.rounds)  # only the run on the convex fit is pooled


def test_chain_and_ddtree_runs_store_the_cached_cost_model(backend32, monkeypatch, tmp_path, tmp_store):
    """A chain / ddtree decode in a fresh process (no cost model loaded yet) stores this machine's cached auto-profile
    with the run, so replay and verify_vs_model can price it; with no cached profile it stores none and profiles
    nothing (only caddtree needs one)."""
    import numpy as np

    import dtree.backend
    from dtree.cost import CostModel
    from dtree.engine import DecodeConfig

    nodes = np.array([0, 2, 4, 8, 16])
    cm = CostModel.from_measurements(0.01, [0, 1024], nodes, np.array([[0.03 + 2e-3 * n for n in nodes]] * 2))
    cached = tmp_path / "costs" / "cost-test.json"
    monkeypatch.setattr(dtree.backend, "default_cost_model_path", lambda target, drafter: cached)
    monkeypatch.setattr(dtree.backend, "profile_cost_model", lambda *a, **k: pytest.fail("must not profile"))
    monkeypatch.setattr(backend32, "_cost_model", None)
    run = backend32.decode("Count to three.", DecodeConfig("ddtree", budget=2, max_new_tokens=4), store=tmp_store)
    assert run.cost_model is None and tmp_store.load_run(run.run_id).cost_model is None
    cached.parent.mkdir(parents=True)
    cm.save(cached)
    for method in ("chain", "ddtree"):
        monkeypatch.setattr(backend32, "_cost_model", None)  # as in a new CLI process
        run = backend32.decode("Count to three.", DecodeConfig(method, budget=2, max_new_tokens=4), store=tmp_store)
        stored = tmp_store.load_run(run.run_id).cost_model
        assert stored is not None and stored["cd_s"] == pytest.approx(0.01), method
