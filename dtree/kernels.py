"""Per-machine choice of the matrix-product kernel for linear layers on few rows (decode and verify steps).

A decode step multiplies each weight ``W [out, in]`` by only a few rows ``x [M, in]`` (M = 1 for plain decoding, M =
n + 1 for a verify of an n-node tree). On the 2-core dev CPU (torch 2.13, MKL) ``torch.nn.functional.linear`` is far
from the memory-bandwidth bound there: a SmolLM2-135M forward of 2-8 tokens took 88-117 ms and one of 1 token 58 ms,
although all of them read the same 540 MB of weights. Algebraically equal ways to form ``y = x W^T`` call the
library with the operands in other roles, and one is much faster on few rows:

* ``linear``: ``F.linear(x, W)`` (the default path);
* ``w_xt``: ``(W @ x^T)^T`` (copied back to row-major) -- the weight is the left operand, x^T the small right one;
* ``w_xt2``: ``w_xt``, but a single row is run as two copies of it: on the dev CPU the library's matrix-vector path
  for one row is slower than its path for two columns.

Which one wins depends on M and the machine, so dtree measures it: :func:`tune_linear_kernels` times whole verify
forwards of the model with each kernel for M = 1 .. ``max_rows`` and keeps the fastest per M;
:func:`install_linear_kernels` makes every ``nn.Linear`` of a model dispatch on its row count (more rows than the
table covers, autograd, or a dtype mismatch: ``linear``). The table is cached per machine (:func:`load_or_tune`), and
its forward times give the CPU verify padding widths (:meth:`KernelTable.verify_widths`). Measured on the dev CPU
(session 11, ``scripts/linear_kernels_ab.py``): one token 58 -> 32 ms (``w_xt2``), 2-5 tokens 88-110 -> 31-50 ms
(``w_xt``), 8 tokens 91 -> 61 ms, 16 tokens 108 -> 84 ms. Results differ from ``linear`` only by float rounding (a
different summation order); the engine's losslessness is defined against plain decoding with the same kernels.

One big product that a step runs on its own, the drafter's output head, is timed by itself instead
(:func:`tune_product_kernels`, :func:`load_or_tune_product`, :func:`product_kernel`): on the AVX2 CPU of session 33,
float32, 7 rows through its 26,134 x 576 weight took 35 ms with ``linear`` and 13 ms with ``w_xt``.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import statistics
import sys
import types
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F

from .errors import InputError

KERNELS = ("linear", "w_xt", "w_xt2")
"""Candidates of the tuner. (``x @ W_t`` with a stored transposed copy of every weight was measured too, session 11:
it never beat these by more than the noise and would double the weights' memory, so it is not offered.)"""
DEFAULT_MAX_ROWS = 16
"""Rows the tuner covers by default: verifies of up to 15 nodes; wider forwards use ``linear`` (within a few % of the
best there on the dev CPU)."""

ENV = "DTREE_LINEAR_KERNELS"
MAX_SPREAD = 0.25
"""A tuning whose samples of one (kernel, width) typically range over more than this fraction of their median was
disturbed (on the idle dev CPU the range is a few %; with another job on the other core, 50-300%): it is cached as
provisional and tuned again on later loads (:func:`load_or_tune`)."""
MAX_TUNES = 3
"""Tunings of one table, at most, while they keep coming out disturbed (:func:`load_or_tune`); the steadiest is kept."""
PAD_MARGIN = 0.03
"""A verify is padded to a wider measured width only when that forward is at least this much (relative) cheaper: the
pad rows' attention and cache work is not free, and nearby widths differ by less than the measurement noise."""


def kernels_mode() -> str:
    """``DTREE_LINEAR_KERNELS``: ``auto`` (default: tune and install on CPU) or ``off`` (plain ``F.linear``).

    Raises:
        InputError: any other value.
    """
    value = os.environ.get(ENV, "").strip().lower() or "auto"
    if value not in ("auto", "off"):
        raise InputError(ENV, f"must be 'auto' or 'off', got {os.environ.get(ENV)!r}")
    return value


def _shape_key(weight: torch.Tensor) -> str:
    return f"{weight.shape[0]}x{weight.shape[1]}"


@dataclass
class KernelTable:
    """Fastest kernel per weight shape and row count.

    Attributes:
        choice: ``{"OUTxIN": [kernel for M = 1, 2, ..., max_rows]}``, kernels from :data:`KERNELS`; the key ``"*"``
            covers every other shape (:func:`tune_linear_kernels` writes only that key: one kernel per width).
        timings_ms: ``{"forward": {kernel: [median ms for M = 1 ..]}}``: one whole forward of M tokens with that
            kernel in every layer (:func:`tune_linear_kernels`).
        forward_ms: median ms of one whole tree-verify forward of the model, kernels installed, for widths 1, 2, ...
            (tokens): the fastest kernel's median per width, or empty when not measured.
        meta: where and how it was measured (cpu, torch version, threads, dtype, reps).
    """

    choice: dict[str, list[str]]
    timings_ms: dict[str, dict[str, list[float]]] = field(default_factory=dict)
    meta: dict = field(default_factory=dict)
    forward_ms: list[float] = field(default_factory=list)

    def verify_widths(self, margin: float = PAD_MARGIN) -> tuple[int, ...]:
        """Padding widths read from :attr:`forward_ms` (:attr:`dtree.models.Target.verify_widths`): every width w >= 2
        for which no wider measured forward is more than ``margin`` (relative) cheaper. A verify of n tokens is padded
        to the smallest of them >= n (:func:`dtree.trees.verify_width`), so it runs at the cheapest measured width,
        e.g. 12-15 tokens as 16 where 16 rows hit a faster kernel. Empty when nothing was measured.
        """
        f = self.forward_ms
        if len(f) < 2:
            return ()
        return tuple(w for w in range(2, len(f) + 1) if not any(f[v - 1] < (1.0 - margin) * f[w - 1]
                                                                  for v in range(w + 1, len(f) + 1)))

    def kernel(self, shape_key: str, rows: int) -> str:
        """The kernel for ``rows`` rows through a weight of ``shape_key`` (``linear`` outside the table)."""
        picks = self.choice.get(shape_key, self.choice.get("*"))
        if picks is None or rows < 1 or rows > len(picks):
            return "linear"
        return picks[rows - 1]

    @property
    def fingerprint(self) -> str:
        """Short hash of the choices (goes into cost-model cache keys and run params)."""
        return hashlib.sha1(json.dumps(self.choice, sort_keys=True).encode()).hexdigest()[:10]

    def to_json(self) -> dict:
        return {"choice": self.choice, "timings_ms": self.timings_ms, "meta": self.meta, "forward_ms": self.forward_ms}

    @classmethod
    def from_json(cls, d: dict) -> "KernelTable":
        """Raises InputError for a malformed table (unknown kernel names, wrong types)."""
        try:
            choice = {str(k): [str(x) for x in v] for k, v in d["choice"].items()}
        except (KeyError, TypeError, AttributeError) as e:
            raise InputError("kernel table", f"is malformed ({e})") from None
        bad = sorted({x for v in choice.values() for x in v} - set(KERNELS))
        if bad:
            raise InputError("kernel table", f"names unknown kernels {bad} (known: {', '.join(KERNELS)})")
        try:
            forward = [float(v) for v in d.get("forward_ms") or []]
        except (TypeError, ValueError) as e:
            raise InputError("kernel table", f"has a malformed forward_ms ({e})") from None
        return cls(choice=choice, timings_ms=d.get("timings_ms") or {}, meta=d.get("meta") or {}, forward_ms=forward)


def _median_spread(sample_lists) -> float:
    """Median over the sample lists of (max - min) / median: how much repeated timings of one thing varied (0 when
    no list has two samples). :data:`MAX_SPREAD` judges it."""
    spreads = [(max(v) - min(v)) / statistics.median(v) for v in sample_lists if len(v) > 1]
    return statistics.median(spreads) if spreads else 0.0


def _run_kernel(kernel: str, x2: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    if kernel == "w_xt2" and x2.shape[0] == 1:  # one row run as two (the library's 2-column path beats its gemv)
        return torch.mm(weight, torch.cat([x2, x2]).t())[:, :1].t().contiguous()
    if kernel in ("w_xt", "w_xt2"):  # made row-major again: later ops and layers see the usual layout
        return torch.mm(weight, x2.t()).t().contiguous()
    return F.linear(x2, weight)


def linear_modules(model: torch.nn.Module) -> list[torch.nn.Linear]:
    """All ``nn.Linear`` modules of ``model`` (including a tied ``lm_head``)."""
    return [m for m in model.modules() if isinstance(m, torch.nn.Linear)]


def machine_description() -> str:
    """CPU model, torch version and intra-op threads: what a kernel table is valid for."""
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{cpu} | torch {torch.__version__} | {torch.get_num_threads()} threads"


@torch.inference_mode()
def tune_linear_kernels(model: torch.nn.Module, max_rows: int = DEFAULT_MAX_ROWS, reps: int = 5, context: int = 128,
                        progress=None, seed: int = 0) -> KernelTable:
    """Time whole verify forwards of ``model`` with each kernel of :data:`KERNELS` and keep the fastest per width.

    For each kernel (the same kernel in every linear layer: measured on the dev CPU, a kernel chosen per layer shape
    from isolated products lost up to 15 ms per forward to layout changes between layers) and each width M = 1 ..
    ``max_rows`` tokens, one sample is one forward with a random tree of M - 1 nodes and its tree-attention mask over
    ``context`` cached random tokens (:func:`dtree.trees.tree_attention_inputs`), as in the engine's verify. Each of
    ``reps`` passes (after one untimed warm-up pass) runs the kernels in a random order and the widths in a random
    order within each, so a shared machine's drift hits all alike; the median decides. The fastest medians become
    :attr:`KernelTable.forward_ms`. About 25 s for SmolLM2-135M at ``max_rows`` = 16 on the dev CPU.
    ``progress(done, total)`` is called per pass. The model is left with the kernels it had before.

    Raises:
        InputError: ``max_rows`` or ``reps`` < 1, or a model without linear layers.
    """
    import numpy as np
    from transformers import DynamicCache

    from .cost import timed_tree_verify

    if max_rows < 1 or reps < 1:
        raise InputError("tune_linear_kernels", f"max_rows and reps must be >= 1, got {max_rows} and {reps}")
    if not linear_modules(model):
        raise InputError("tune_linear_kernels", "the model has no nn.Linear layers")
    rng = np.random.default_rng(seed)
    vocab = int(model.get_input_embeddings().num_embeddings)
    param = next(model.parameters())
    cache = DynamicCache(config=model.config)
    model(input_ids=torch.as_tensor(rng.integers(0, vocab, (1, context)), device=param.device), cache=cache,
          use_cache=True)
    uniform = {k: KernelTable(choice={"*": [k] * max_rows}) for k in KERNELS}
    previous = installed_table(model)
    samples = {(k, w): [] for k in KERNELS for w in range(1, max_rows + 1)}
    try:
        for rep in range(reps + 1):  # pass 0 warms every (kernel, width) up, untimed
            for ki in rng.permutation(len(KERNELS)):
                kernel = KERNELS[int(ki)]
                install_linear_kernels(model, uniform[kernel])
                for w in rng.permutation(max_rows) + 1:
                    if kernel == "w_xt2" and w > 1:
                        continue  # the same products as w_xt there
                    dt = timed_tree_verify(model, cache, int(w) - 1, context, rng, param.dtype, param.device,
                                           hidden_states=True)
                    if rep:
                        samples[(kernel, int(w))].append(dt)
            if progress is not None:
                progress(rep + 1, reps + 1)
    finally:
        remove_linear_kernels(model)
        if previous is not None:
            install_linear_kernels(model, previous)  # leave the model as it was
    for w in range(2, max_rows + 1):
        samples[("w_xt2", w)] = samples[("w_xt", w)]
    med = {key: statistics.median(v) * 1e3 for key, v in samples.items()}
    best = [min(KERNELS, key=lambda k: med[(k, w)]) for w in range(1, max_rows + 1)]
    timings = {k: [round(med[(k, w)], 3) for w in range(1, max_rows + 1)] for k in KERNELS}
    spread = _median_spread(samples.values())
    meta = {"machine": machine_description(), "dtype": str(param.dtype).replace("torch.", ""), "reps": reps,
            "context": context, "method": "whole verify forwards, one kernel in every layer",
            "spread": round(float(spread), 4)}
    return KernelTable(choice={"*": best}, timings_ms={"forward": timings}, meta=meta,
                       forward_ms=[round(med[(best[w - 1], w)], 3) for w in range(1, max_rows + 1)])


def _dispatching_forward(self: torch.nn.Linear, x: torch.Tensor) -> torch.Tensor:
    table: KernelTable = self._dtree_kernels
    rows = x.numel() // x.shape[-1] if x.shape[-1] else 0
    if rows == 0 or torch.is_grad_enabled() and (x.requires_grad or self.weight.requires_grad):
        return F.linear(x, self.weight, self.bias)
    kernel = table.kernel(self._dtree_shape, rows)
    if kernel == "linear" or x.dtype != self.weight.dtype:
        return F.linear(x, self.weight, self.bias)
    y = _run_kernel(kernel, x.reshape(rows, x.shape[-1]), self.weight)
    if self.bias is not None:
        y = y + self.bias
    return y.reshape(*x.shape[:-1], y.shape[-1])


def install_linear_kernels(model: torch.nn.Module, table: KernelTable) -> int:
    """Make every ``nn.Linear`` of ``model`` use ``table``'s kernel for its row count; returns how many were patched.

    Idempotent; undo with :func:`remove_linear_kernels`. No weight is copied or changed.
    """
    n = 0
    for mod in linear_modules(model):
        mod._dtree_kernels = table
        mod._dtree_shape = _shape_key(mod.weight)
        mod.forward = types.MethodType(_dispatching_forward, mod)
        n += 1
    return n


def remove_linear_kernels(model: torch.nn.Module) -> int:
    """Undo :func:`install_linear_kernels` (plain ``F.linear`` again); returns how many layers it restored."""
    n = 0
    for mod in linear_modules(model):
        if "forward" in mod.__dict__:
            del mod.forward
            n += 1
        for attr in ("_dtree_kernels", "_dtree_shape"):
            if attr in mod.__dict__:
                delattr(mod, attr)
    return n


def installed_table(model: torch.nn.Module) -> KernelTable | None:
    """The table installed on ``model`` (None when plain ``F.linear``)."""
    for mod in linear_modules(model):
        table = mod.__dict__.get("_dtree_kernels")
        if table is not None:
            return table
    return None


def table_path(model: torch.nn.Module, name: str, max_rows: int = DEFAULT_MAX_ROWS) -> Path:
    """Cache file of the kernel table of this model (name, weight shapes, dtype) on this machine."""
    from .models import cache_dir

    shapes = sorted({(_shape_key(m.weight), str(m.weight.dtype)) for m in linear_modules(model)})
    key = json.dumps([name, shapes, machine_description(), max_rows])
    return cache_dir() / "kernels" / f"kernels-{hashlib.sha1(key.encode()).hexdigest()[:12]}.json"


def load_or_tune(model: torch.nn.Module, name: str, max_rows: int = DEFAULT_MAX_ROWS, progress=None) -> KernelTable:
    """The cached table for this model and machine (:func:`table_path`), tuning and caching it on first use.

    Tuning says so on stderr. A tuning whose repeated forwards varied too much (median relative range over all
    (kernel, width) samples above :data:`MAX_SPREAD`: another job was using the CPU) is cached as *provisional*
    (``meta["provisional"]``, with ``meta["tunes"]`` counting the tunings so far): the next loads tune again and keep
    the steadier table (the lower spread), until a steady tuning or :data:`MAX_TUNES` tunings in all; from then on the
    cached table is used as it is. So a machine that is always busy pays the tuning (35 s idle, minutes when loaded)
    at most :data:`MAX_TUNES` times, not on every load. Delete ``$DTREE_CACHE/kernels/*.json`` to re-measure by hand.

    A cache file that cannot be read is re-tuned and overwritten (it holds nothing but measurements).
    ``progress(done, total)`` is called per timing pass (:func:`tune_linear_kernels`); default a
    ``dtree: kernel timing pass k/N`` line on stderr.
    """
    if progress is None:  # a count on stderr: on a loaded machine the tuning takes minutes
        def progress(done: int, total: int) -> None:
            print(f"dtree: kernel timing pass {done}/{total}", file=sys.stderr, flush=True)
    return _cached_or_tuned(
        table_path(model, name, max_rows), lambda: tune_linear_kernels(model, max_rows=max_rows, progress=progress),
        "dtree: timing this CPU's matmul kernels for few-row products (once per machine and dtype, about 35 s on "
        "an idle 2-core machine; see README 'Few-row matmul kernels')...", "kernel timings")


def _cached_or_tuned(path: Path, tune, announce: str, what: str) -> KernelTable:
    """The table cached at ``path``, or ``tune()``'s (announced on stderr) with the provisional rule of
    :func:`load_or_tune`: a disturbed tuning (``meta["spread"]`` above :data:`MAX_SPREAD`) is cached as provisional
    and measured again on later calls, the steadier one kept, until a steady one or :data:`MAX_TUNES` in all."""
    cached = None
    if path.exists():
        try:
            cached = KernelTable.from_json(json.loads(path.read_text()))
        except (OSError, ValueError, InputError):
            cached = None
    tunes_before = 0
    if cached is not None:
        tunes_before = int(cached.meta.get("tunes", 1)) if cached.meta.get("provisional") else 0
        if not cached.meta.get("provisional") or tunes_before >= MAX_TUNES:
            return cached
    print(announce, file=sys.stderr, flush=True)
    table = tune()
    spread = float(table.meta.get("spread", 0.0))
    if spread > MAX_SPREAD and cached is not None and float(cached.meta.get("spread", 0.0)) <= spread:
        table = cached  # the earlier provisional table was steadier: keep it
    tunes = tunes_before + 1
    provisional = float(table.meta.get("spread", 0.0)) > MAX_SPREAD
    table.meta = {**table.meta, "provisional": provisional, "tunes": tunes}
    if provisional:
        left = MAX_TUNES - tunes
        print(f"dtree: the {what} were disturbed (repeated timings varied by {100 * spread:.0f}% across "
              "passes: another job is using the CPU); using the steadiest tuning so far"
              + (f", and tuning again on the next {left} load(s)" if left > 0 else ", from now on (tuned "
                 f"{tunes} times; delete {path} to measure again)"), file=sys.stderr, flush=True)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f".tmp{os.getpid()}")
    tmp.write_text(json.dumps(table.to_json()))
    tmp.replace(path)
    return table


@torch.inference_mode()
def tune_product_kernels(weight: torch.Tensor, rows: int, reps: int = 9, seed: int = 0) -> KernelTable:
    """Time ``x W^T`` for ``x`` of ``rows`` random rows with each kernel of :data:`KERNELS` and keep the fastest.

    For one big product that a step runs on its own, such as a drafter's output head over its draft vocabulary
    (``W [Vd, H]``, ``rows`` = the block's gamma = block_size - 1 positions): on the AVX2 CPU of session 33, float32,
    ``W`` 26,134 x 576 and 7 rows, ``F.linear`` took about 39 ms and ``(W x^T)^T`` about 14 ms, most of a draft step.
    Each of ``reps`` passes (after one untimed warm-up pass) runs the kernels in a random order; the median decides.

    Returns a :class:`KernelTable` whose ``choice`` has only ``W``'s shape key: ``linear`` for 1 .. rows - 1 (not
    measured) and the winner at ``rows``; ``timings_ms["product"]`` the median ms per kernel; ``meta["spread"]`` as in
    :func:`tune_linear_kernels`.

    Raises:
        InputError: ``rows`` or ``reps`` < 1, or ``weight`` not 2-D.
    """
    import time

    import numpy as np

    if rows < 1 or reps < 1:
        raise InputError("tune_product_kernels", f"rows and reps must be >= 1, got {rows} and {reps}")
    if weight.dim() != 2:
        raise InputError("tune_product_kernels", f"weight must be 2-D [out, in], got shape {tuple(weight.shape)}")
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(rows, weight.shape[1], generator=gen).to(weight.device, weight.dtype)
    kernels = [k for k in KERNELS if k != "w_xt2" or rows == 1]  # w_xt2 differs from w_xt only on one row
    rng = np.random.default_rng(seed)
    samples: dict[str, list[float]] = {k: [] for k in kernels}
    for rep in range(reps + 1):  # pass 0 warms every kernel up, untimed
        for ki in rng.permutation(len(kernels)):
            k = kernels[int(ki)]
            if weight.device.type == "cuda":
                torch.cuda.synchronize(weight.device)
            t0 = time.perf_counter()
            _run_kernel(k, x, weight)
            if weight.device.type == "cuda":
                torch.cuda.synchronize(weight.device)
            if rep:
                samples[k].append(time.perf_counter() - t0)
    med = {k: statistics.median(v) * 1e3 for k, v in samples.items()}
    best = min(kernels, key=med.get)
    spread = _median_spread(samples.values())
    meta = {"machine": machine_description(), "dtype": str(weight.dtype).replace("torch.", ""), "reps": reps,
            "rows": rows, "method": "isolated products x W^T", "spread": round(float(spread), 4)}
    return KernelTable(choice={_shape_key(weight): ["linear"] * (rows - 1) + [best]},
                       timings_ms={"product": {k: round(v, 3) for k, v in med.items()}}, meta=meta)


def load_or_tune_product(weight: torch.Tensor, rows: int, name: str) -> KernelTable:
    """:func:`tune_product_kernels` for ``weight`` at ``rows`` rows, cached per (name, shape, dtype, rows, machine)
    under ``$DTREE_CACHE/kernels`` with :func:`load_or_tune`'s provisional rule (about 1 s on the dev CPU)."""
    from .models import cache_dir

    key = json.dumps([name, _shape_key(weight), str(weight.dtype), int(rows), machine_description()])
    path = cache_dir() / "kernels" / f"product-{hashlib.sha1(key.encode()).hexdigest()[:12]}.json"
    return _cached_or_tuned(path, lambda: tune_product_kernels(weight, rows),
                            f"dtree: timing this CPU's kernels for the {name} ({_shape_key(weight)}, {rows} rows; "
                            "once per machine and dtype, about a second)...", f"{name} timings")


def product_kernel(table: KernelTable | None, weight: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """``x W^T`` (``x [M, in]``, ``W [out, in]`` -> ``[M, out]``) with ``table``'s kernel for ``W``'s shape at M rows;
    plain ``F.linear`` without a table, with autograd on, or for a dtype mismatch (as :func:`install_linear_kernels`)."""
    if table is None or torch.is_grad_enabled() and (x.requires_grad or weight.requires_grad) \
            or x.dtype != weight.dtype or x.dim() != 2:
        return F.linear(x, weight)
    return _run_kernel(table.kernel(_shape_key(weight), x.shape[0]), x, weight)
