"""Harvest HumanEval-style code prompts (function header + docstring) from Python source files, for drafter training.

Drafter v4 was trained on GSM8K answers only and accepted little on code (issue 3); v5 added answers to these prompts.
This script turns documented top-level functions of the Python standard library (and optionally other source trees) into prompts
shaped like HumanEval's: imports the header needs, ``def name(args) -> ret:`` and the docstring, nothing else. The
target then writes the body (``python -m dtree.train --phase gen --prompts <out>``): self-distillation data for code.

No evaluation prompt is used: HumanEval's problems are hand-written and not in the standard library; when the shared
HumanEval file is beside the checkout, functions whose name equals a HumanEval entry point are skipped anyway.

    python scripts/code_prompts.py --out data/code/prompts.jsonl [--roots DIR,DIR] [--limit N] [--seed 0]
                                   [--exclude data/code/prompts.jsonl]

``--exclude`` drops every prompt already in the given JSONL files (e.g. a second prompt set for new answers, harvested
from more source trees, that must not repeat the first).

Writes one JSON object per line: ``{"prompt": ..., "source": "module:function"}``.
"""

from __future__ import annotations

import argparse
import ast
import gzip
import json
import random
import sys
import sysconfig
from pathlib import Path

HUMANEVAL = Path(__file__).resolve().parents[2] / "shared" / "datasets" / "humaneval" / "HumanEval.jsonl.gz"


def humaneval_names() -> set[str]:
    """Entry-point names of HumanEval's problems (empty when the shared file is absent)."""
    if not HUMANEVAL.exists():
        return set()
    with gzip.open(HUMANEVAL, "rt") as f:
        return {json.loads(line)["entry_point"] for line in f if line.strip()}


def header(fn: ast.FunctionDef) -> str | None:
    """``def name(args) -> ret:`` of a function, or None when it is not a plain public function worth a prompt."""
    if fn.name.startswith("_") or fn.decorator_list or isinstance(fn, ast.AsyncFunctionDef):
        return None
    a = fn.args
    n_args = len(a.posonlyargs) + len(a.args) + len(a.kwonlyargs)
    if n_args == 0 or n_args > 5:
        return None
    sig = ast.unparse(a)
    ret = f" -> {ast.unparse(fn.returns)}" if fn.returns is not None else ""
    return f"def {fn.name}({sig}){ret}:"


def docstring_block(doc: str) -> str | None:
    """The docstring re-indented under a function header, or None when it is too short, too long or odd."""
    doc = doc.strip()
    if not (40 <= len(doc) <= 700) or '"""' in doc or "\\" in doc:
        return None
    lines = doc.splitlines()
    body = "\n".join(("    " + ln) if ln.strip() else "" for ln in lines[1:])
    return f'    """ {lines[0]}\n{body}\n    """\n' if len(lines) > 1 else f'    """ {lines[0]}\n    """\n'


def typing_imports(text: str) -> str:
    """``from typing import ...`` for the typing names a header uses (as HumanEval's prompts do)."""
    names = [n for n in ("Any", "Callable", "Dict", "Iterable", "Iterator", "List", "Optional", "Sequence", "Set",
                         "Tuple", "Union") if f"{n}[" in text or f" {n}" in text or f"({n}" in text]
    return f"from typing import {', '.join(names)}\n\n\n" if names else ""


def harvest(roots: list[Path], skip: set[str]) -> list[dict]:
    """Every documented public top-level function under ``roots`` as a prompt (sorted, duplicates removed)."""
    out, seen = [], set()
    for root in roots:
        for path in sorted(root.rglob("*.py")):
            if any(p in ("test", "tests", "idlelib", "lib2to3", "site-packages") or p.startswith("test_")
                   for p in path.relative_to(root).parts):
                continue
            try:
                tree = ast.parse(path.read_text(encoding="utf-8"))
            except (SyntaxError, UnicodeDecodeError, ValueError):
                continue
            mod = ".".join(path.relative_to(root).with_suffix("").parts)
            for node in tree.body:
                if not isinstance(node, ast.FunctionDef) or node.name in skip:
                    continue
                doc = ast.get_docstring(node)
                h = header(node)
                block = docstring_block(doc) if doc and h else None
                if not block:
                    continue
                text = typing_imports(h) + h + "\n" + block
                if text in seen:
                    continue
                seen.add(text)
                out.append({"prompt": text, "source": f"{mod}:{node.name}"})
    return out


def read_exclude(names: list[str], out: str) -> set[str]:
    """Every prompt of the JSONL files ``names`` (this script's or ``chat_prompts.py``'s output: a ``"prompt"`` field
    per row), for ``--exclude``; also used by ``chat_prompts.py``.

    Raises:
        ValueError: a file that is also ``out`` (writing the new set would overwrite it), one that does not exist, or
            a row that is not a JSON object with a ``"prompt"`` field; the message names it.
    """
    known: set[str] = set()
    for name in names:
        path = Path(name)
        if path.resolve() == Path(out).resolve():
            raise ValueError(f"--exclude: {name} is also --out: writing the new set would overwrite the prompts it "
                             "must leave out; write the new set to another file")
        if not path.is_file():
            raise ValueError(f"--exclude: {name} is not a file")
        with open(path) as f:
            for i, line in enumerate(f, 1):
                if line.strip():
                    try:
                        known.add(json.loads(line)["prompt"])
                    except (ValueError, KeyError, TypeError):
                        raise ValueError(f"--exclude: {name} line {i} is not a JSON object with a 'prompt' "
                                         "field") from None
    return known


def write_prompts(rows: list[dict], out: str) -> None:
    """Write ``rows`` to ``out`` as JSONL (its folder made when missing) and say how many; also used by
    ``chat_prompts.py``."""
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    with open(out, "w") as f:
        for r in rows:
            f.write(json.dumps(r) + "\n")
    print(f"{len(rows)} prompts -> {out}")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", required=True, help="JSONL file to write")
    ap.add_argument("--roots", default="", help="comma list of source folders (default: this Python's stdlib)")
    ap.add_argument("--limit", type=int, default=0, help="keep at most N prompts (seeded shuffle; 0 = all)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--exclude", default="", help="comma list of JSONL prompt files whose prompts are left out")
    args = ap.parse_args(argv)
    roots = [Path(r) for r in args.roots.split(",") if r] or [Path(sysconfig.get_paths()["stdlib"])]
    for r in roots:
        if not r.is_dir():
            print(f"error: --roots: {r} is not a folder", file=sys.stderr)
            return 2
    if args.limit < 0:
        print("error: --limit must be >= 0", file=sys.stderr)
        return 2
    try:
        known = read_exclude([ex for ex in args.exclude.split(",") if ex], args.out)
    except (OSError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    rows = harvest(roots, humaneval_names())
    random.Random(args.seed).shuffle(rows)
    rows = [r for r in rows if r["prompt"] not in known]  # after the shuffle: the order does not depend on --exclude
    if args.limit:
        rows = rows[:args.limit]
    if not rows:
        print("error: no documented public functions found" + (" that --exclude leaves" if known else ""),
              file=sys.stderr)
        return 2
    write_prompts(rows, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
