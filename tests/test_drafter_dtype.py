"""The drafter's dtype next to a bf16 target on CPU: chosen by timing (dtree.backend.load_drafter_fastest)."""

from __future__ import annotations

import re

import pytest
import torch

from dtree.backend import default_cost_model_path, drafter_dtype_setting, load_drafter_fastest
from dtree.drafter import default_drafter_path
from dtree.errors import InputError


@pytest.fixture(scope="module")
def target16(monkeypatch_module):
    from dtree.models import load_target

    monkeypatch_module.setenv("DTREE_LINEAR_KERNELS", "off")  # no 35 s kernel tuning for this dtype in the suite
    return load_target("embedded", dtype="bfloat16", device="cpu", cache=False)


@pytest.fixture(scope="module")
def monkeypatch_module():
    mp = pytest.MonkeyPatch()
    yield mp
    mp.undo()


def _dtype(d) -> torch.dtype:
    return next(d.parameters()).dtype


def test_setting_reads_env_and_rejects_junk(monkeypatch):
    monkeypatch.delenv("DTREE_DRAFTER_DTYPE", raising=False)
    assert drafter_dtype_setting() == "auto"
    assert drafter_dtype_setting(" BFloat16 ") == "bfloat16"
    with pytest.raises(InputError, match="drafter_dtype"):
        drafter_dtype_setting("bf16")
    monkeypatch.setenv("DTREE_DRAFTER_DTYPE", "float32")
    assert drafter_dtype_setting() == "float32"
    assert drafter_dtype_setting("auto") == "auto"  # an explicit value wins over the environment
    monkeypatch.setenv("DTREE_DRAFTER_DTYPE", "int8")
    with pytest.raises(InputError, match="DTREE_DRAFTER_DTYPE"):
        drafter_dtype_setting()
    with pytest.raises(InputError, match="got 'fp64'"):
        drafter_dtype_setting("fp64")


def test_auto_keeps_the_faster_measured_dtype(target16, monkeypatch):
    monkeypatch.delenv("DTREE_DRAFTER_DTYPE", raising=False)
    d = load_drafter_fastest(default_drafter_path(), target16, repeats=3)
    chosen = {torch.bfloat16: "bfloat16", torch.float32: "float32"}[_dtype(d)]
    ms = dict(re.findall(r"([\d.]+) ms in (\w+)", d.dtype_note)[i][::-1] for i in range(2))
    assert set(ms) == {"bfloat16", "float32"}, d.dtype_note
    assert d.dtype_note.startswith(chosen)
    assert float(ms[chosen]) <= min(float(v) for v in ms.values())


def test_explicit_and_fp32_target(target16, target32, drafter32):
    d = load_drafter_fastest(default_drafter_path(), target16, "float32")
    assert _dtype(d) == torch.float32 and "asked for" in d.dtype_note
    d32 = load_drafter_fastest(default_drafter_path(), target32, "auto")
    assert _dtype(d32) == torch.float32 and "target's dtype" in d32.dtype_note
    with pytest.raises(InputError, match="drafter_dtype"):
        load_drafter_fastest(default_drafter_path(), target16, "half-ish")


def test_cost_models_are_cached_per_drafter_dtype(target16):
    a = load_drafter_fastest(default_drafter_path(), target16, "float32")
    b = load_drafter_fastest(default_drafter_path(), target16, "bfloat16")
    for d in (a, b):
        d.name, d.fingerprint = "x", "y"
    assert default_cost_model_path(target16, a) != default_cost_model_path(target16, b)


def test_drafts_agree_across_dtypes(target16):
    """Same top-1 draft from a float32 and a bf16 copy of the drafter on the same features (its output is float32
    either way); the dtype changes speed, not what is drafted, up to bf16 rounding at near-ties."""
    from dtree.engine import prefill
    from transformers import DynamicCache

    ids = target16.encode_prompt("Write a Python function that returns the sum of a list of numbers.")
    cache = DynamicCache(config=target16.model.config)
    _, hidden = prefill(target16.model, ids, cache, want_hidden=True)
    tops = []
    for name in ("float32", "bfloat16"):
        d = load_drafter_fastest(default_drafter_path(), target16, name)
        feats = d.extract_features(hidden)
        logp = d.draft_logits(target16.model, d.new_cache(), feats[:, :-1], ids[-1], len(ids) - 1)
        assert logp.dtype == torch.float32
        tops.append(logp.argmax(-1))
    assert (tops[0] == tops[1]).float().mean() >= 0.7
