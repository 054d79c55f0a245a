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


def test_verify_widths_upper_bound_and_cli_checks_before_loading(monkeypatch, capsys):
    """A huge width is refused (it would allocate the padded mask), and the CLI says so before any model load."""
    from dtree import backend, cli
    from dtree.models import MAX_VERIFY_WIDTH, default_verify_widths

    monkeypatch.setenv("DTREE_VERIFY_WIDTHS", str(MAX_VERIFY_WIDTH + 1))
    with pytest.raises(InputError, match=f"2..{MAX_VERIFY_WIDTH}"):
        default_verify_widths(torch.device("cpu"), torch.float32)
    monkeypatch.setenv("DTREE_VERIFY_WIDTHS", "999999999999")

    def no_load(*a, **k):
        raise AssertionError("the model must not load with a bad DTREE_VERIFY_WIDTHS")

    monkeypatch.setattr(backend, "load_target", no_load)  # what the CLI's Backend calls
    assert cli.main(["decode", "--prompt", "hi", "--method", "ddtree:2", "--max-new-tokens", "4", "--no-store"]) == 2
    assert "DTREE_VERIFY_WIDTHS" in capsys.readouterr().err


def test_cpu_bf16_flags_read_from_cpuinfo(tmp_path):
    from dtree.models import cpu_bf16_flags

    info = tmp_path / "cpuinfo"
    info.write_text("processor\t: 0\nflags\t\t: fpu sse avx512f amx_bf16 avx512_bf16 avx2\n\nprocessor\t: 1\n"
                    "flags\t\t: fpu\n")
    assert cpu_bf16_flags(info) == ["avx512_bf16", "amx_bf16"]  # first CPU's line, in BF16_CPU_FLAGS order
    info.write_text("processor\t: 0\nflags\t\t: fpu sse avx512f avx2\n")
    assert cpu_bf16_flags(info) == []
    assert cpu_bf16_flags(tmp_path / "missing") == []


def test_dtype_advice_follows_the_flags(monkeypatch):
    from dtree import models

    monkeypatch.setattr(models, "cpu_bf16_flags", lambda: ["avx512_bf16"])
    assert "avx512_bf16" in models.dtype_advice() and "bfloat16" in models.dtype_advice()
    monkeypatch.setattr(models, "cpu_bf16_flags", lambda: [])
    assert "no bf16 instructions" in models.dtype_advice()


def test_unusable_cache_folder_is_an_input_error_naming_dtree_cache(tmp_path, monkeypatch):
    """DTREE_CACHE pointing at a file: the embedded model's first conversion cannot write its copy; an InputError
    naming DTREE_CACHE (the CLI's rc 2) instead of a NotADirectoryError traceback, and the file is untouched. (Not
    through the CLI: within a test session the target is already loaded and cached in the process.)"""
    from dtree.models import embedded_folder

    blocker = tmp_path / "not-a-folder"
    blocker.write_text("keep me")
    monkeypatch.setenv("DTREE_CACHE", str(blocker))
    with pytest.raises(InputError, match=r"DTREE_CACHE: cannot write the embedded model's converted copy under .*"
                                         r"set DTREE_CACHE to a writable folder") as err:
        embedded_folder()
    assert err.value.field == "DTREE_CACHE"
    assert blocker.read_text() == "keep me"
