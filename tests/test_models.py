"""dtree.models: load-time settings of the target."""

from __future__ import annotations

import pytest
import torch

from dtree.errors import InputError


def test_min_verify_tokens_defaults_and_override(monkeypatch):
    from dtree.models import CPU_FP32_MIN_VERIFY_TOKENS, min_verify_tokens

    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    monkeypatch.delenv("DTREE_VERIFY_MIN_TOKENS", raising=False)
    assert min_verify_tokens(cpu, torch.float32) == CPU_FP32_MIN_VERIFY_TOKENS == 5
    assert min_verify_tokens(cpu, torch.bfloat16) == 1 and min_verify_tokens(cuda, torch.float32) == 1
    monkeypatch.setenv("DTREE_VERIFY_MIN_TOKENS", "1")
    assert min_verify_tokens(cpu, torch.float32) == 1
    for bad in ("0", "-2", "five"):
        monkeypatch.setenv("DTREE_VERIFY_MIN_TOKENS", bad)
        with pytest.raises(InputError, match="DTREE_VERIFY_MIN_TOKENS"):
            min_verify_tokens(cpu, torch.float32)
