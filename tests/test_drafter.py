"""Drafter (dtree.drafter) and its training loop (dtree.train) on the real embedded SmolLM2 target, fp32."""

from __future__ import annotations

import json
import re

import pytest
import torch

from dtree.drafter import (DFlashDrafter, DrafterConfig, default_drafter_path, default_target_layer_ids,
                           load_drafter, save_drafter)
from dtree.errors import InputError
from dtree.models import load_target
from dtree import train as T


@pytest.fixture(scope="module")
def target():
    torch.set_num_threads(2)
    return load_target("embedded", dtype="float32", device="cpu")


def small_drafter(target, draft_vocab=None, seed=0, qk_norm=True) -> DFlashDrafter:
    torch.manual_seed(seed)
    cfg = T.TrainConfig(num_layers=1, qk_norm=qk_norm, init_from_target=not qk_norm)
    return T.build_drafter(cfg, target, draft_vocab).eval()


@pytest.fixture(scope="module")
def sequence(target):
    """A prompt and its greedy answer (24 tokens) with features, made by the training data generator."""
    prompt = target.encode_prompt("A farmer has 12 cows and buys 7 more. How many cows does he have now?")
    layer_ids = default_target_layer_ids(target.n_layers, 5)
    (resp, feats, soft), = T.greedy_batch(target.model, [prompt], 24, target.eos_ids, 2, layer_ids, soft_topk=8)
    return T.Sample(0, torch.tensor(prompt + resp), feats, len(prompt), soft)


def test_stored_target_distribution_matches_the_greedy_answer(target, sequence):
    """--soft-topk: row j of the stored top-k is the target's distribution whose argmax is response token j, sorted,
    a sub-distribution; a plain forward over prompt + answer gives the same probabilities (up to batching numerics)."""
    s = sequence
    ids, logp = s.soft
    R = s.tokens.shape[0] - s.prompt_len
    assert ids.shape == (R, 8) and logp.shape == (R, 8) and ids.dtype == torch.int32
    assert torch.equal(ids[:, 0].long(), s.tokens[s.prompt_len:])
    assert (logp[:, :-1] >= logp[:, 1:]).all() and (logp.float().exp().sum(-1) <= 1.001).all()
    with torch.no_grad():
        full = torch.log_softmax(target.model(input_ids=s.tokens[None, :-1]).logits[0, s.prompt_len - 1:].float(), -1)
    assert torch.allclose(full.gather(1, ids.long()), logp.float(), atol=0.02)
    (_, _, none), = T.greedy_batch(target.model, [s.tokens[:s.prompt_len].tolist()], 3, target.eos_ids, 2,
                                  default_target_layer_ids(target.n_layers, 5))
    assert none is None  # soft_topk 0: nothing stored


def test_soft_targets_and_the_distillation_loss(target, sequence):
    """soft_targets picks the stored row of every label (greedy token first); a sample without stored rows gets its
    greedy token with probability 1; soft weight 0, or soft weight 1 on one-hot targets, is the plain decayed CE; real
    soft targets change the loss, and training on them lowers it."""
    s = sequence
    plain = T.Sample(s.idx, s.tokens, s.feats, s.prompt_len)
    torch.manual_seed(0)
    d = small_drafter(target, draft_vocab=T.build_draft_vocab([s], target.eos_ids), qk_norm=False).train()
    bs = d.block_size
    gen = torch.Generator().manual_seed(0)
    feats, tokens, anchors, ok, labels = T.make_batch([s, plain], 6, bs, gen)
    ids, p = T.soft_targets([s, plain], anchors, labels)
    assert ids.shape == (2, 6, bs - 1, 8) and p.shape == ids.shape
    assert torch.equal(ids[..., 0], labels)  # the greedy token is the target's argmax
    for n in range(6):
        for k in range(1, bs):
            if labels[0, n, k - 1] >= 0:
                j = int(anchors[0, n]) + k - s.prompt_len
                assert torch.equal(ids[0, n, k - 1], s.soft[0][j].long())
                assert torch.allclose(p[0, n, k - 1], s.soft[1][j].float().exp())
            else:
                assert p[0, n, k - 1].sum() == 0
    assert (ids[1, ..., 1:] == -1).all() and torch.equal(p[1, ..., 0], (labels[1] >= 0).float())
    lookup = T.drafter_lookup(d, target.model)
    labels_d = T.to_draft_ids(labels, lookup)
    soft = (T.to_draft_ids(ids, lookup), p)
    h = T.drafter_hidden(d, target.model, feats, tokens, anchors)
    hard = T.decayed_ce(d, target.model, h, labels_d, 4.0)
    assert torch.allclose(T.decayed_ce(d, target.model, h, labels_d, 4.0, soft, 0.0), hard)
    one_hot = (T.to_draft_ids(ids[..., :1], lookup), p[..., :1])
    assert torch.allclose(T.decayed_ce(d, target.model, h, labels_d, 4.0, one_hot, 1.0), hard, atol=1e-5)
    mixed = T.decayed_ce(d, target.model, h, labels_d, 4.0, soft, 0.5)
    assert not torch.allclose(mixed, hard)
    opt = torch.optim.AdamW([q for q in d.parameters() if q.requires_grad], lr=1e-3)
    losses = [T.train_step(d, target.model, opt, feats, tokens, anchors, labels_d, 4.0, 1.0, soft, 0.5).item()
              for _ in range(8)]
    assert losses[-1] < 0.8 * losses[0], losses


def test_target_layer_ids_formula():
    assert default_target_layer_ids(30, 5) == [1, 8, 14, 20, 27]
    assert default_target_layer_ids(36, 5) == [1, 9, 17, 25, 33]  # released Qwen3-4B/8B drafters (spec 1.2)
    assert default_target_layer_ids(30, 1) == [15]
    assert DrafterConfig(num_hidden_layers=3, num_target_layers=30).target_layer_ids == [1, 14, 27]
    cfg = DrafterConfig(dflash_config={"mask_token_id": None, "target_layer_ids": [2, 5]})
    assert cfg.target_layer_ids == [2, 5]


def test_zlab_style_config_is_read():
    d = {"architectures": ["DFlashDraftModel"], "hidden_size": 2560, "intermediate_size": 9728,
         "num_attention_heads": 32, "num_key_value_heads": 8, "head_dim": 128, "rms_norm_eps": 1e-6,
         "rope_theta": 1000000, "attention_bias": False, "num_hidden_layers": 5, "block_size": 16,
         "num_target_layers": 36, "layer_types": ["full_attention"] * 5, "sliding_window": None,
         "vocab_size": 151936, "dflash_config": {"mask_token_id": 151669, "target_layer_ids": [1, 9, 17, 25, 33]}}
    cfg = DrafterConfig.from_dict(d)
    assert cfg.qk_norm and cfg.mask_token_id == 151669 and cfg.target_layer_ids == [1, 9, 17, 25, 33]
    assert DrafterConfig.from_dict(cfg.to_dict()) == cfg
    m = DFlashDrafter(DrafterConfig.from_dict({**d, "hidden_size": 64, "intermediate_size": 96, "head_dim": 16,
                                                "num_attention_heads": 4, "num_key_value_heads": 2}))
    names = set(m.state_dict())
    assert m.mask_embedding is None
    assert {"fc.weight", "hidden_norm.weight", "norm.weight", "layers.4.self_attn.q_norm.weight",
            "layers.0.mlp.down_proj.weight", "layers.0.post_attention_layernorm.weight"} <= names
    assert m.fc.weight.shape == (64, 5 * 64)


def test_cache_holds_start_entries_and_incremental_equals_fresh(target, sequence):
    d = small_drafter(target)
    toks = sequence.tokens.tolist()
    feats = sequence.feats[None].float()
    P = sequence.prompt_len
    cache = d.new_cache()
    lp0 = d.draft_logits(target.model, cache, feats[:, :P], toks[P], P)
    assert cache.length == P and lp0.shape == (15, target.vocab_size) and lp0.dtype == torch.float32
    assert torch.allclose(lp0.exp().sum(-1), torch.ones(15), atol=1e-4)
    s2 = P + 4  # the next round: 4 tokens accepted
    lp1 = d.draft_logits(target.model, cache, feats[:, P:s2], toks[s2], s2)
    assert cache.length == s2 and all(k.shape[2] == s2 for k in cache.keys)
    fresh = d.new_cache()
    lp2 = d.draft_logits(target.model, fresh, feats[:, :s2], toks[s2], s2)
    assert (lp1 - lp2).abs().max().item() < 1e-4
    with pytest.raises(ValueError):
        d.draft_logits(target.model, cache, feats[:, s2:s2 + 1], toks[s2], s2 + 3)


def test_training_forward_equals_inference(target, sequence):
    """The parallel training mask (context strictly before the anchor, spec 1.8) reproduces draft_logits."""
    d = small_drafter(target, draft_vocab=torch.arange(0, target.vocab_size, 2), qk_norm=False)
    s = sequence
    anchors = torch.tensor([[s.prompt_len, s.prompt_len + 5]])
    with torch.no_grad():
        h = T.drafter_hidden(d, target.model, s.feats[None].float(), s.tokens[None], anchors)
        lg = torch.log_softmax(torch.nn.functional.linear(h[0, :, 1:], d.head_weight(target.model)), -1)
    for n, a in enumerate(anchors[0].tolist()):
        lp = d.draft_logits(target.model, d.new_cache(), s.feats[None, :a].float(), int(s.tokens[a]), a)
        assert torch.isinf(lp[:, 1::2]).all()
        assert (lp[:, 0::2] - lg[n]).abs().max().item() < 1e-4


def test_heldout_tau_equals_real_chain(target, sequence):
    """Teacher-forced tau equals chain decoding run round by round through draft_logits (spec 1.7, greedy)."""
    d = small_drafter(target, qk_norm=False)  # initialised from the target's last layer: some drafts hit
    s = sequence
    r = T.heldout_tau(d, target.model, [s], max_new=128)
    toks, P, L = s.tokens.tolist(), s.prompt_len, s.tokens.shape[0]
    cache, start, rounds = d.new_cache(), P, 0
    while start < L:
        lp = d.draft_logits(target.model, cache, s.feats[None, cache.length:start].float(), toks[start], start)
        a = 0
        while a < 15 and start + a + 1 < L and int(lp[a].argmax()) == toks[start + a + 1]:
            a += 1
        start += a + 1
        rounds += 1
    assert r["rounds"] == rounds and abs(r["tau"] - (L - P) / rounds) < 1e-9


def test_save_load_roundtrip_identical(target, sequence, tmp_path):
    d = small_drafter(target, draft_vocab=torch.arange(100, 20000))
    with torch.no_grad():
        d.mask_embedding.normal_()
    save_drafter(d, tmp_path / "ck", dtype=None)
    d2 = load_drafter(tmp_path / "ck", target)
    assert torch.equal(d2.draft_vocab, d.draft_vocab)
    s = sequence
    a = s.prompt_len + 3
    x = d.draft_logits(target.model, d.new_cache(), s.feats[None, :a].float(), int(s.tokens[a]), a)
    y = d2.draft_logits(target.model, d2.new_cache(), s.feats[None, :a].float(), int(s.tokens[a]), a)
    assert torch.equal(x, y)
    cfg = json.loads((tmp_path / "ck" / "config.json").read_text())
    assert cfg["dflash_config"]["mask_token_id"] is None and cfg["dflash_config"]["target_layer_ids"] == [1, 8, 14, 20, 27]


def test_mismatched_checkpoints_raise_input_error(target, tmp_path):
    d = small_drafter(target)
    ck = save_drafter(d, tmp_path / "ok")
    for field, value in [("hidden_size", 512), ("num_target_layers", 36), ("vocab_size", 151936)]:
        bad = tmp_path / field
        bad.mkdir()
        (bad / "model.safetensors").write_bytes((ck / "model.safetensors").read_bytes())
        cfg = json.loads((ck / "config.json").read_text())
        cfg[field] = value
        (bad / "config.json").write_text(json.dumps(cfg))
        with pytest.raises(InputError, match=field):
            load_drafter(bad, target)
    # draft vocabulary with ids outside the target vocabulary
    d.draft_vocab = None
    dv = DFlashDrafter(d.config, draft_vocab=torch.tensor([5, 60000]))
    save_drafter(dv, tmp_path / "vocab")
    with pytest.raises(InputError, match="draft_vocab"):
        load_drafter(tmp_path / "vocab", target)
    with pytest.raises(InputError, match="config.json"):
        load_drafter(tmp_path / "missing", target)
    (tmp_path / "corrupt").mkdir()
    (tmp_path / "corrupt" / "config.json").write_text((ck / "config.json").read_text())
    (tmp_path / "corrupt" / "model.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(InputError, match="drafter"):
        load_drafter(tmp_path / "corrupt", target)


def test_backend_refuses_a_mismatched_drafter_before_loading_the_target(tmp_path, monkeypatch):
    import dtree.backend as backend_mod
    from dtree.drafter import default_drafter_path, read_drafter_config

    def no_target_load(*args, **kwargs):
        raise AssertionError("the target was loaded before the drafter config was checked")

    monkeypatch.setattr(backend_mod, "load_target", no_target_load)
    ck = default_drafter_path()
    backend_mod.early_drafter_check(read_drafter_config(ck), "embedded")  # the shipped drafter fits
    for field, value in [("hidden_size", 512), ("num_target_layers", 36), ("target_layer_ids", [1, 30])]:
        bad = tmp_path / field
        bad.mkdir()
        (bad / "model.safetensors").write_bytes(b"never read")
        cfg = json.loads((ck / "config.json").read_text())
        if field == "target_layer_ids":
            cfg.setdefault("dflash_config", {})[field] = value
        else:
            cfg[field] = value
        (bad / "config.json").write_text(json.dumps(cfg))
        with pytest.raises(InputError, match=field) as err:
            backend_mod.Backend("embedded", "float32", drafter=str(bad))
        assert err.value.field == "drafter"


def test_few_training_steps_lower_the_loss(target, sequence):
    torch.manual_seed(0)
    d = small_drafter(target, draft_vocab=T.build_draft_vocab([sequence], target.eos_ids), qk_norm=False).train()
    lookup = T.drafter_lookup(d, target.model)
    gen = torch.Generator().manual_seed(0)
    feats, tokens, anchors, ok, labels = T.make_batch([sequence], 12, d.block_size, gen)
    assert ((anchors >= sequence.prompt_len) | ~ok).all()
    opt = torch.optim.AdamW([p for p in d.parameters() if p.requires_grad], lr=1e-3)
    losses = []
    for _ in range(8):
        h = T.drafter_hidden(d, target.model, feats, tokens, anchors)
        loss = T.decayed_ce(d, target.model, h, T.to_draft_ids(labels, lookup), 7.0)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.8 * losses[0], losses


def test_shipped_checkpoint_loads_for_embedded_target(target, sequence):
    d = load_drafter(default_drafter_path(), target)
    assert d.block_size == 8 and d.config.num_target_layers == target.n_layers  # v8, v9 (MODEL_CARD.md)
    s = sequence
    lp = d.draft_logits(target.model, d.new_cache(), s.feats[None, :s.prompt_len].float(), int(s.tokens[s.prompt_len]),
                        s.prompt_len)
    assert lp.shape == (7, target.vocab_size) and torch.isfinite(lp.max(-1).values).all()


def test_draft_marginals_equal_topk_of_draft_logits(target32, drafter32):
    """The engine's direct top-k over the draft vocabulary gives the ids and log-probs of the full-vocabulary path,
    and leaves the cache in the same state."""
    import numpy as np

    from dtree.trees import topk_marginals

    t, d = target32, drafter32
    ids = t.encode_prompt("What is 12 times 7? Explain.")
    with torch.inference_mode():
        out = t.model(input_ids=torch.tensor([ids]), output_hidden_states=True)
    feats = d.extract_features(out.hidden_states)
    P = len(ids) - 1
    for k in (1, 8, 64):
        c1, c2 = d.new_cache(), d.new_cache()
        a = topk_marginals(d.draft_logits(t.model, c1, feats[:, :P], ids[P], P), k)
        b = d.draft_marginals(t.model, c2, feats[:, :P], ids[P], P, k)
        assert b.tokens.shape == (d.block_size - 1, k)
        assert (a.tokens == b.tokens).all()
        np.testing.assert_allclose(a.logprobs, b.logprobs, atol=1e-5)
        assert c1.length == c2.length == P
        assert set(b.tokens.ravel().tolist()) <= set(d.draft_vocab.tolist())


@pytest.mark.parametrize("bad, words", [
    ([1, 2], "JSON object"),
    ("str", "JSON object"),
    ({"hidden_size": "abc"}, "'hidden_size' must be a positive integer"),
    ({"num_hidden_layers": 0}, "'num_hidden_layers' must be a positive integer"),
    ({"block_size": True}, "'block_size' must be a positive integer"),
    ({"rope_theta": "big"}, "'rope_theta' must be a positive number"),
    ({"qk_norm": "yes"}, "'qk_norm' must be true or false"),
    ({"dflash_config": [1]}, "'dflash_config' must be an object"),
    ({"dflash_config": {"target_layer_ids": "1,2"}}, "target_layer_ids must be a list of integers"),
    ({"dflash_config": {"mask_token_id": 1.5}}, "mask_token_id must be an integer or null"),
])
def test_config_of_the_wrong_shape_or_type_is_an_input_error(bad, words):
    good = {"hidden_size": 576, "num_hidden_layers": 2, "num_target_layers": 30, "vocab_size": None}
    DrafterConfig.from_dict(good)  # the base is fine
    with pytest.raises(InputError, match=re.escape(words)):
        DrafterConfig.from_dict({**good, **bad} if isinstance(bad, dict) else bad)
