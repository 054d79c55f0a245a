"""Side-by-side benchmark: every method on the same prompts in one process, methods interleaved per prompt.

Interleaving means machine drift (other load, thermal state) hits all methods alike. Speedup vs AR is the ratio of
per-prompt medians of tokens/s. Greedy runs also check losslessness: every method's output must equal AR's token for
token (exact in float32; bfloat16 kernels may break near-ties differently for tree and plain shapes, spec 6 item 8).
"""

from __future__ import annotations

import gzip
import json
import statistics
from dataclasses import dataclass, field
from pathlib import Path

from .engine import MAX_BUDGET, DecodeConfig
from .errors import InputError, check_int

SHARED = Path(__file__).resolve().parent.parent.parent / "shared" / "datasets"
NAMED = {
    "gsm8k": SHARED / "gsm8k" / "test.jsonl",
    "math500": SHARED / "math500" / "test.jsonl",
    "humaneval": SHARED / "humaneval" / "HumanEval.jsonl.gz",
    "mt-bench": SHARED / "mt_bench" / "question.jsonl",
}
PROMPT_FIELDS = ("question", "prompt", "instruction", "input", "text")


def _prompt_of(row: dict) -> str | None:
    for f in PROMPT_FIELDS:
        if isinstance(row.get(f), str) and row[f].strip():
            return row[f]
    turns = row.get("turns")
    if isinstance(turns, list) and turns and isinstance(turns[0], str):
        return turns[0]  # MT-Bench: first turn
    return None


def load_prompts(dataset: str, limit: int) -> list[str]:
    """The first ``limit`` prompts of a named set (gsm8k, math500, humaneval, mt-bench) or of a JSONL(.gz) file.

    A row's prompt is its first non-empty field among question / prompt / instruction / input / text, or the first of
    its ``turns``. Raises InputError for an unknown name, a missing file, ``limit <= 0`` or rows without a prompt.
    """
    limit = check_int("limit", limit, 1, 100_000)
    path = NAMED.get(dataset, Path(dataset))
    if dataset in NAMED and not path.exists():
        raise InputError("dataset", f"{dataset!r} is not available offline here ({path} missing); give a JSONL file")
    if dataset not in NAMED and not path.exists():
        raise InputError("dataset", f"unknown dataset {dataset!r}: use one of {', '.join(NAMED)} or a JSONL file path")
    opener = gzip.open if str(path).endswith(".gz") else open
    prompts = []
    with opener(path, "rt") as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                raise InputError("dataset", f"{path}:{n} is not JSON: {e}") from None
            p = _prompt_of(row) if isinstance(row, dict) else None
            if p is None:
                raise InputError("dataset", f"{path}:{n} has no prompt field (one of {', '.join(PROMPT_FIELDS)}, "
                                            "or turns)")
            prompts.append(p)
            if len(prompts) == limit:
                break
    if not prompts:
        raise InputError("dataset", f"{path} holds no prompts")
    return prompts


def parse_methods(spec: str) -> list[tuple[str, int | None]]:
    """``"ar,chain,ddtree:16,caddtree"`` -> ``[("ar", None), ("chain", None), ("ddtree", 16), ("caddtree", None)]``.

    ``caddtree:B`` sets caddtree's maximum budget. Raises InputError for unknown methods or malformed budgets.
    """
    out = []
    for item in [s.strip() for s in spec.split(",") if s.strip()]:
        name, _, b = item.partition(":")
        if name not in ("ar", "chain", "ddtree", "caddtree"):
            raise InputError("methods", f"unknown method {name!r} (ar, chain, ddtree:B, caddtree[:B])")
        if b and name not in ("ddtree", "caddtree"):
            raise InputError("methods", f"{name} takes no budget ({item!r})")
        if b and not b.isdigit():
            raise InputError("methods", f"malformed budget in {item!r}: expected ddtree:B with B in 0..{MAX_BUDGET}")
        budget = check_int("methods", int(b), 0, MAX_BUDGET) if b else None
        if name == "ddtree" and budget is None:
            raise InputError("methods", "ddtree needs a budget: ddtree:B")
        out.append((name, budget))
    if not out:
        raise InputError("methods", "no method given")
    return out


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
    mismatches: list[int] = field(default_factory=list)
    run_ids: list[int] = field(default_factory=list)


def run_bench(backend, prompts: list[str], methods: list[tuple[str, int | None]], max_new_tokens: int = 128,
              temperature: float = 0.0, store=None, progress=None) -> dict[str, MethodStats]:
    """Run every method on every prompt, interleaved per prompt. ``progress(done, total)`` is called per run.

    Returns ``{method_key: MethodStats}``. With temperature 0 and "ar" among the methods, a prompt whose output differs
    from AR's is recorded in ``mismatches`` (prompt indices).
    """
    stats = {method_key(m, b): MethodStats() for m, b in methods}
    total, done = len(prompts) * len(methods), 0
    for i, prompt in enumerate(prompts):
        ref = None
        outputs = {}
        for name, budget in methods:
            run = backend.decode(prompt, DecodeConfig(name, budget=budget, max_new_tokens=max_new_tokens,
                                                      temperature=temperature, seed=i), store=store)
            s = stats[method_key(name, budget)]
            s.tok_s.append(run.tokens_per_s)
            s.tpot_ms.append(1e3 * run.decode_s / max(1, run.n_new_tokens))
            s.tau.append(run.mean_tau)
            s.budget.append(run.mean_budget)
            for ph in s.phase_ms:
                s.phase_ms[ph] += sum(getattr(r, f"{ph}_ms") for r in run.rounds)
            if run.run_id is not None:
                s.run_ids.append(run.run_id)
            outputs[method_key(name, budget)] = run.output_ids
            if name == "ar":
                ref = run.output_ids
            done += 1
            if progress is not None:
                progress(done, total)
        if ref is not None and temperature == 0.0:
            for key, out in outputs.items():
                if out != ref:
                    stats[key].mismatches.append(i)
    return stats


def summary_rows(stats: dict[str, MethodStats]) -> list[dict]:
    """One row per method: median tokens/s, TPOT (ms/token), speedup vs AR (ratio of medians), mean tau, mean budget,
    phase shares (% of round time) and the number of lossless mismatches."""
    base = statistics.median(stats["ar"].tok_s) if "ar" in stats else None
    rows = []
    for key, s in stats.items():
        med = statistics.median(s.tok_s)
        tot = sum(s.phase_ms.values()) or 1.0
        rows.append({
            "method": key, "tok_s": round(med, 3), "tpot_ms": round(statistics.median(s.tpot_ms), 2),
            "speedup_vs_ar": round(med / base, 3) if base else None, "mean_tau": round(statistics.mean(s.tau), 3),
            "mean_budget": round(statistics.mean(s.budget), 2),
            **{f"{ph}_share_%": round(100 * v / tot, 1) for ph, v in s.phase_ms.items()},
            "mismatches_vs_ar": len(s.mismatches),
        })
    return rows
