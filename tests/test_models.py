"""dtree.models: load-time settings of the target."""

from __future__ import annotations

import pytest
import torch

from dtree.errors import InputError


def test_verify_widths_defaults_and_override(monkeypatch):
    from dtree.models import CPU_FP32_VERIFY_WIDTHS, default_verify_widths

    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    monkeypatch.delenv("DTREE_VERIFY_WIDTHS", raising=False)
    assert default_verify_widths(cpu, torch.float32) == CPU_FP32_VERIFY_WIDTHS == (5, 8)
    assert default_verify_widths(cpu, torch.bfloat16) == () and default_verify_widths(cuda, torch.float32) == ()
    for text, want in (("none", ()), ("NONE", ()), ("8,5", (5, 8)), ("12", (12,)), ("", (5, 8))):
        monkeypatch.setenv("DTREE_VERIFY_WIDTHS", text)
        assert default_verify_widths(cpu, torch.float32) == want, text
    for bad in ("0", "1,5", "-2", "five", "5,,8"):
        monkeypatch.setenv("DTREE_VERIFY_WIDTHS", bad)
        with pytest.raises(InputError, match="DTREE_VERIFY_WIDTHS"):
            default_verify_widths(cpu, torch.float32)
