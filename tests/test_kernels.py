"""Few-row matmul kernels (dtree.kernels): equal results to F.linear, dispatch rules, the table, padding widths."""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F

from dtree.errors import InputError
from dtree.kernels import (KERNELS, KernelTable, install_linear_kernels, installed_table, kernels_mode, load_or_tune,
                           remove_linear_kernels, table_path, tune_linear_kernels)


def uniform(model, kernel: str, rows: int = 16) -> KernelTable:
    shapes = {f"{m.weight.shape[0]}x{m.weight.shape[1]}" for m in model.modules() if isinstance(m, torch.nn.Linear)}
    return KernelTable(choice={s: [kernel] * rows for s in shapes})


@pytest.mark.parametrize("kernel", KERNELS)
def test_each_kernel_gives_linear_results_on_the_real_target(target32, kernel):
    """A whole forward of the embedded target with every linear layer on one kernel equals the plain F.linear
    forward (float rounding only) at 1, 2, 5 and 16 rows; taking the kernels out restores the plain forward exactly."""
    model = target32.model
    before = installed_table(model)
    ids = torch.as_tensor([target32.encode_prompt("Name three primes.")])
    try:
        remove_linear_kernels(model)
        with torch.inference_mode():
            plain = model(input_ids=ids).logits
            install_linear_kernels(model, uniform(model, kernel))
            assert installed_table(model) is not None
            for rows in (1, 2, 5, 16):
                got = model(input_ids=ids[:, :rows]).logits
                torch.testing.assert_close(got, plain[:, :rows], rtol=0, atol=2e-4)
                assert torch.equal(got.argmax(-1), plain[:, :rows].argmax(-1))
            remove_linear_kernels(model)
            assert installed_table(model) is None
            assert torch.equal(model(input_ids=ids).logits, plain)
    finally:
        remove_linear_kernels(model)
        if before is not None:
            install_linear_kernels(model, before)


def test_dispatch_rules():
    """The table's kernel runs only for rows it covers; more rows, autograd or a dtype mismatch take F.linear; the
    bias is added; the output keeps the input's leading shape."""
    torch.manual_seed(0)
    lin = torch.nn.Linear(8, 6)
    calls = []
    real_mm = torch.mm

    table = KernelTable(choice={"6x8": ["w_xt2", "w_xt"], "*": ["linear"]})
    assert table.kernel("6x8", 1) == "w_xt2" and table.kernel("6x8", 2) == "w_xt"
    assert table.kernel("6x8", 3) == "linear"
    assert table.kernel("9x9", 1) == "linear" and table.kernel("9x9", 2) == "linear"
    assert table.kernel("6x8", 0) == "linear" and KernelTable(choice={"*": ["w_xt"]}).kernel("9x9", 1) == "w_xt"
    install_linear_kernels(lin, table)
    x = torch.randn(1, 2, 8)
    with torch.no_grad():
        torch.mm = lambda *a: calls.append((tuple(a[0].shape), tuple(a[1].shape))) or real_mm(*a)
        try:
            y1 = lin(x[:, :1])
            y = lin(x)
            y3 = lin(torch.randn(3, 8))
        finally:
            torch.mm = real_mm
        assert y.shape == (1, 2, 6) and y1.shape == (1, 1, 6)
        torch.testing.assert_close(y, F.linear(x, lin.weight, lin.bias))
        torch.testing.assert_close(y1, F.linear(x[:, :1], lin.weight, lin.bias))
        assert y.is_contiguous() and y1.is_contiguous()
        # 1 row: W @ [x; x]^T (two columns); 2 rows: W @ x^T; 3 rows: F.linear, no torch.mm
        assert calls == [((6, 8), (8, 2)), ((6, 8), (8, 2))]
        assert y3.shape == (3, 6)
    # autograd: the plain path, so gradients reach the weight
    x1 = torch.randn(1, 8)
    lin(x1).sum().backward()
    assert lin.weight.grad is not None and torch.allclose(lin.weight.grad, x1.expand(6, 8))
    assert remove_linear_kernels(lin) == 1 and "forward" not in lin.__dict__


def test_verify_widths_from_forward_times():
    """Widths >= 2 that no wider measured forward beats by more than 3%: 3 -> 4, 7 -> 8, 10-15 -> 16."""
    forward = [50, 30, 45, 40, 48, 58, 66, 60, 80, 88, 97, 97, 104, 105, 108, 84]
    table = KernelTable(choice={}, forward_ms=forward)
    assert table.verify_widths() == (2, 4, 5, 6, 8, 9, 16)
    # within the margin: 2 % cheaper is not worth padding, 4 % is
    assert KernelTable(choice={}, forward_ms=[50, 50, 49]).verify_widths() == (2, 3)
    assert KernelTable(choice={}, forward_ms=[50, 50, 48]).verify_widths() == (3,)
    assert KernelTable(choice={}, forward_ms=[40]).verify_widths() == ()


def test_table_json_round_trip_and_errors():
    table = KernelTable(choice={"6x8": ["w_xt", "linear"]}, meta={"machine": "m"}, forward_ms=[1.5, 2.5])
    again = KernelTable.from_json(json.loads(json.dumps(table.to_json())))
    assert again.choice == table.choice and again.forward_ms == table.forward_ms
    assert again.fingerprint == table.fingerprint and len(table.fingerprint) == 10
    assert KernelTable(choice={"6x8": ["linear", "linear"]}).fingerprint != table.fingerprint
    with pytest.raises(InputError, match="unknown kernels"):
        KernelTable.from_json({"choice": {"6x8": ["fast"]}})
    with pytest.raises(InputError, match="malformed"):
        KernelTable.from_json({"choices": {}})
    with pytest.raises(InputError, match="forward_ms"):
        KernelTable.from_json({"choice": {}, "forward_ms": ["x"]})


def test_kernels_mode_env(monkeypatch, capsys):
    monkeypatch.delenv("DTREE_LINEAR_KERNELS", raising=False)
    assert kernels_mode() == "auto"
    monkeypatch.setenv("DTREE_LINEAR_KERNELS", "OFF")
    assert kernels_mode() == "off"
    monkeypatch.setenv("DTREE_LINEAR_KERNELS", "fastest")
    with pytest.raises(InputError, match="DTREE_LINEAR_KERNELS"):
        kernels_mode()
    from dtree import backend, cli

    def no_load(*a, **k):
        raise AssertionError("the model must not load with a bad DTREE_LINEAR_KERNELS")

    monkeypatch.setattr(backend, "load_target", no_load)  # what the CLI's Backend calls
    assert cli.main(["decode", "--prompt", "hi", "--method", "ar", "--max-new-tokens", "2", "--no-store"]) == 2
    assert "DTREE_LINEAR_KERNELS" in capsys.readouterr().err


def test_tune_measures_and_restores(target32):
    """A small real tuning run: every width gets a kernel and a forward time, the fastest kernel's; the target keeps
    the kernels it had."""
    before = installed_table(target32.model)
    table = tune_linear_kernels(target32.model, max_rows=3, reps=1, context=16)
    assert installed_table(target32.model) is before
    assert len(table.forward_ms) == 3 and all(t > 0 for t in table.forward_ms)
    assert list(table.choice) == ["*"] and len(table.choice["*"]) == 3 and set(table.choice["*"]) <= set(KERNELS)
    assert table.kernel("123x45", 2) == table.choice["*"][1]  # one kernel per width, every shape
    runs = table.timings_ms["forward"]
    for w in range(3):
        assert table.forward_ms[w] == pytest.approx(min(runs[k][w] for k in KERNELS))
    with pytest.raises(InputError):
        tune_linear_kernels(target32.model, max_rows=0)


def test_load_or_tune_replaces_a_corrupt_cache(target32, tmp_path, monkeypatch, capsys):
    from dtree import kernels

    monkeypatch.setenv("DTREE_CACHE", str(tmp_path))
    monkeypatch.setattr(kernels, "MAX_SPREAD", float("inf"))  # cache even if this busy test machine disturbs it
    path = table_path(target32.model, "probe", max_rows=2)
    path.parent.mkdir(parents=True)
    path.write_text("{not json")
    table = load_or_tune(target32.model, "probe", max_rows=2)
    assert json.loads(path.read_text())["choice"] == table.choice
    passes = [line for line in capsys.readouterr().err.splitlines() if "kernel timing pass" in line]
    assert passes and passes[-1].endswith(f"{len(passes)}/{len(passes)}")  # a count per timing pass on stderr
    assert load_or_tune(target32.model, "probe", max_rows=2).choice == table.choice  # read back, not re-tuned


def test_target_and_runs_record_the_kernels(target32, backend32):
    from dtree.backend import cost_model_mismatch
    from dtree.engine import DecodeConfig

    table = installed_table(target32.model)
    assert table is not None and target32.linear_kernels == f"tuned:{table.fingerprint}"
    assert target32.verify_widths == table.verify_widths()
    run = backend32.decode("What is 2 + 3?", DecodeConfig("ddtree", budget=3, max_new_tokens=6))
    assert run.params["linear_kernels"] == target32.linear_kernels
    assert run.params["verify_widths"] == list(target32.verify_widths)

    class Cost:
        meta = {"linear_kernels": "off"}

    assert any("linear_kernels" in line for line in cost_model_mismatch(Cost(), target32))


def test_kernels_figure():
    from dtree.figures import kernels_figure

    runs = {"linear": [60.0, 90.0, 110.0, 88.0], "w_xt": [58.0, 31.0, 43.0, 41.0], "w_xt2": [32.0, 31.0, 43.0, 41.0]}
    table = KernelTable(choice={"*": ["w_xt2", "w_xt", "w_xt", "w_xt"]}, timings_ms={"forward": runs},
                        forward_ms=[32.0, 31.0, 43.0, 41.0])
    fig = kernels_figure(table)
    assert [t.name for t in fig.data][-1] == "installed (fastest per width)"
    assert len(fig.data) == len(runs) + 1
    assert list(fig.data[-1].text) == ["w_xt2", "w_xt", "w_xt", "w_xt"]
    assert len(fig.layout.shapes) == len(table.verify_widths()) == 2  # widths 2 and 4 (3 pads to 4)
    with pytest.raises(ValueError, match="no forward timings"):
        kernels_figure(KernelTable(choice={"*": ["linear"]}))


def test_a_disturbed_tuning_is_cached_as_provisional_and_retuned_a_bounded_number_of_times(target32, tmp_path,
                                                                                          monkeypatch, capsys):
    """Timings whose repeats vary too much (another job on the CPU) are used, announced on stderr and cached as
    provisional: later loads tune again and keep the steadier table, MAX_TUNES tunings at most; then the cached table is
    used without tuning. A steady tuning ends the retries at once."""
    from dtree import kernels

    monkeypatch.setenv("DTREE_CACHE", str(tmp_path))
    path = table_path(target32.model, "probe-noisy", max_rows=1)
    spreads = iter([kernels.MAX_SPREAD + 0.5, kernels.MAX_SPREAD + 0.2, kernels.MAX_SPREAD + 0.9, 0.01])
    calls = []

    def fake_tune(*a, **k):
        s = next(spreads)
        calls.append(s)
        return KernelTable(choice={"*": ["linear" if s > kernels.MAX_SPREAD else "w_xt2"]}, meta={"spread": s})

    monkeypatch.setattr(kernels, "tune_linear_kernels", fake_tune)
    first = load_or_tune(target32.model, "probe-noisy", max_rows=1)
    err = capsys.readouterr().err
    assert "timing this CPU's matmul kernels" in err and "disturbed" in err and "tuning again" in err
    assert first.meta["provisional"] is True and first.meta["tunes"] == 1
    assert json.loads(path.read_text())["meta"]["provisional"] is True
    second = load_or_tune(target32.model, "probe-noisy", max_rows=1)  # tunes again: steadier (0.2 over) is kept
    assert len(calls) == 2 and second.meta["spread"] == calls[1] and second.meta["tunes"] == 2
    third = load_or_tune(target32.model, "probe-noisy", max_rows=1)  # noisier than the cached one: cached kept
    assert len(calls) == 3 and third.meta["spread"] == calls[1] and third.meta["tunes"] == kernels.MAX_TUNES
    assert "from now on" in capsys.readouterr().err
    fourth = load_or_tune(target32.model, "probe-noisy", max_rows=1)  # bounded: no fourth tuning
    assert len(calls) == kernels.MAX_TUNES and fourth.meta["spread"] == calls[1] and fourth.choice == {"*": ["linear"]}

    path.unlink()  # a steady tuning right after a provisional one is cached as final
    spreads = iter([kernels.MAX_SPREAD + 0.5, 0.01, 0.5])
    load_or_tune(target32.model, "probe-noisy", max_rows=1)
    steady = load_or_tune(target32.model, "probe-noisy", max_rows=1)
    assert steady.meta["provisional"] is False and steady.choice == {"*": ["w_xt2"]}
    assert load_or_tune(target32.model, "probe-noisy", max_rows=1).choice == {"*": ["w_xt2"]}
    assert len(calls) == 5  # the third load read the cache


def test_product_kernels_tuning_dispatch_and_errors():
    """tune_product_kernels measures every candidate at the asked row count and picks the fastest median; the table
    covers only that weight's shape (linear below the measured width); product_kernel gives F.linear's result (float
    rounding only) with each kernel and plain F.linear without a table, for another shape or width, or under autograd."""
    from dtree.kernels import product_kernel, tune_product_kernels

    torch.manual_seed(0)
    w = torch.randn(300, 40)
    table = tune_product_kernels(w, rows=3, reps=2)
    med = table.timings_ms["product"]
    assert set(med) == {"linear", "w_xt"}  # w_xt2 is w_xt except on one row
    assert table.choice == {"300x40": ["linear", "linear", min(med, key=med.get)]}
    assert set(tune_product_kernels(w, rows=1, reps=1).timings_ms["product"]) == set(KERNELS)
    x = torch.randn(3, 40)
    for kernel in KERNELS:
        got = product_kernel(KernelTable(choice={"300x40": [kernel] * 3}), w, x)
        torch.testing.assert_close(got, F.linear(x, w), rtol=0, atol=1e-4)
        assert got.is_contiguous() and got.shape == (3, 300)
    calls = []
    real_mm = torch.mm

    def spy(*a):
        calls.append(a)
        return real_mm(*a)

    w_table = KernelTable(choice={"300x40": ["w_xt"] * 3})
    torch.mm = spy
    try:
        product_kernel(w_table, w, x)
        assert len(calls) == 1  # the table's kernel ran
        assert torch.equal(product_kernel(None, w, x), F.linear(x, w))
        assert torch.equal(product_kernel(KernelTable(choice={"9x9": ["w_xt"] * 3}), w, x), F.linear(x, w))
        measured_at_3 = KernelTable(choice={"300x40": ["linear", "linear", "w_xt"]})
        assert torch.equal(product_kernel(measured_at_3, w, x[:2]), F.linear(x[:2], w))  # width 2: linear
        xg = x.clone().requires_grad_(True)
        assert torch.equal(product_kernel(w_table, w, xg), F.linear(xg, w))
        assert len(calls) == 1  # none of those took the w_xt path
    finally:
        torch.mm = real_mm
    with pytest.raises(InputError, match="rows and reps"):
        tune_product_kernels(w, rows=0)
    with pytest.raises(InputError, match="2-D"):
        tune_product_kernels(w[0], rows=1)


def test_product_kernels_are_cached_and_retuned_only_when_disturbed(tmp_path, monkeypatch, capsys):
    from dtree import kernels

    monkeypatch.setenv("DTREE_CACHE", str(tmp_path))
    spreads = iter([kernels.MAX_SPREAD + 0.4, 0.01, 0.02])
    calls = []

    def fake(weight, rows):
        s = next(spreads)
        calls.append(s)
        return KernelTable(choice={"30x4": ["linear"] * (rows - 1) + ["w_xt"]}, meta={"spread": s})

    monkeypatch.setattr(kernels, "tune_product_kernels", fake)
    w = torch.zeros(30, 4)
    first = kernels.load_or_tune_product(w, 7, "probe head")
    assert first.meta["provisional"] is True and "probe head" in capsys.readouterr().err
    second = kernels.load_or_tune_product(w, 7, "probe head")  # disturbed before: measured again, now steady
    assert second.meta["provisional"] is False and len(calls) == 2
    third = kernels.load_or_tune_product(w, 7, "probe head")  # read from the cache
    assert len(calls) == 2 and third.choice == {"30x4": ["linear"] * 6 + ["w_xt"]}
    assert len(list((tmp_path / "kernels").glob("product-*.json"))) == 1
    kernels.load_or_tune_product(w.double(), 7, "probe head")  # another dtype is another measurement
    assert len(calls) == 3


def test_the_drafter_head_runs_its_measured_kernel(target32, drafter32, backend32):
    """load_drafter on a CPU target with tuned kernels measures the head's kernel at gamma rows; the draft round's
    marginals with it equal those of plain F.linear (same top ids, log-probs within float rounding); runs record the
    head kernel and the cost model's mismatch check compares it."""
    from dtree.backend import cost_model_mismatch
    from dtree.drafter import drafter_head_kernel
    from dtree.engine import DecodeConfig

    table = drafter32.head_kernels
    assert table is not None
    (key, picks), = table.choice.items()
    assert key == "x".join(str(s) for s in drafter32.head_weight(target32.model).shape)
    assert len(picks) == drafter32.block_size - 1 and picks[-1] in KERNELS
    assert drafter_head_kernel(drafter32) == picks[-1]
    g = torch.Generator().manual_seed(3)
    width = drafter32.fc.weight.shape[1]
    feats = torch.randn(1, 40, width, generator=g)
    outs = []
    for head in (KernelTable(choice={key: ["w_xt"] * len(picks)}), None):
        drafter32.head_kernels = head
        try:
            cache = drafter32.new_cache()
            with torch.inference_mode():
                outs.append(drafter32.draft_marginals(target32.model, cache, feats, 17, 40, 8))
        finally:
            drafter32.head_kernels = table
    assert (outs[0].tokens[:, :3] == outs[1].tokens[:, :3]).all()
    torch.testing.assert_close(torch.as_tensor(outs[0].logprobs), torch.as_tensor(outs[1].logprobs), rtol=0,
                               atol=1e-4)
    run = backend32.decode("What is 2 + 3?", DecodeConfig("ddtree", budget=3, max_new_tokens=6))
    assert run.params["drafter_head_kernel"] == drafter_head_kernel(backend32.drafter)

    class Cost:
        meta = {"drafter_head_kernel": "no-such-kernel"}

    assert any("drafter_head_kernel" in line for line in cost_model_mismatch(Cost(), target32, backend32.drafter))
