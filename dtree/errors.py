"""Errors raised for bad user input.

Every user-facing check raises :class:`InputError` with a message that names the field and the allowed range.
The CLI turns it into exit code 2; pages show it with ``st.error``.
"""

from __future__ import annotations

import math
import os
import tempfile
from pathlib import Path


class InputError(ValueError):
    """Bad user input. ``field`` names the offending parameter."""

    def __init__(self, field: str, message: str):
        super().__init__(f"{field}: {message}")
        self.field = field

    def as_option(self, args) -> str:
        """The message with its field written as the command-line option the user typed (``limit: ...`` becomes
        ``--limit: ...``) when ``args`` (an argparse namespace) has an option of that name; other fields (a JSON
        key, a run's status) stay as they are."""
        text = str(self)
        if not (self.field.isidentifier() and text.startswith(f"{self.field}: ")):
            return text
        option = self.field if hasattr(args, self.field) else _OPTION_OF.get(self.field)
        if option is None or not hasattr(args, option):
            return text
        return "--" + option.replace("_", "-") + text[len(self.field):]


# fields whose command-line option has another name (the store's ``run_id`` is ``--run`` of replay and diagnose; a
# prompt set, ``dataset`` (bench's ``--dataset``), is ``--show`` of the prompts command; each weight of
# :class:`dtree.cost.CostWeights` is a key of ``--cost-weights``). Used only where args lacks an option of the field's
# own name.
_OPTION_OF = {"run_id": "run", "dataset": "show",
              **{w: "cost_weights" for w in ("cd_scale", "cv_scale", "cv_tree_scale", "cv_a", "cv_b", "cv_c", "cd_s")}}


def check_int(field: str, value, lo: int | None = None, hi: int | None = None) -> int:
    """Return ``value`` as int, or raise :class:`InputError` if it is not an integer in ``[lo, hi]``."""
    if isinstance(value, bool) or not isinstance(value, (int,)) and not (isinstance(value, float) and value.is_integer()):
        raise InputError(field, f"must be an integer, got {value!r}")
    v = int(value)
    if (lo is not None and v < lo) or (hi is not None and v > hi):
        raise InputError(field, f"must be {_range_text(lo, hi)}, got {v}")
    return v


def check_float(field: str, value, lo: float | None = None, hi: float | None = None) -> float:
    """Return ``value`` as a finite float in ``[lo, hi]`` or raise :class:`InputError` (NaN and inf are rejected)."""
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise InputError(field, f"must be a number, got {value!r}") from None
    if not math.isfinite(v):
        raise InputError(field, f"must be a finite number, got {value!r}")
    if (lo is not None and v < lo) or (hi is not None and v > hi):
        raise InputError(field, f"must be {_range_text(lo, hi)}, got {v}")
    return v


def split_items(field: str, text) -> list[str]:
    """Split a comma-separated option value (``"ar,chain,ddtree:16"``) into its items, stripped of spaces.

    Raises :class:`InputError` naming ``field`` for a value with no items or with an empty item (``"ar,"``,
    ``"ar,,chain"``): a stray comma usually means an item was left out, so it is not skipped silently.
    """
    text = "" if text is None else str(text)
    items = [part.strip() for part in text.split(",")]
    if not text.strip():
        raise InputError(field, "no item given (expected a comma-separated list)")
    if not all(items):
        raise InputError(field, f"empty item in {text!r}: remove the stray comma or fill in the missing item")
    return items


def int_items(field: str, text, distinct: bool = False) -> list[int]:
    """A comma list of integers (``"64,512"`` -> ``[64, 512]``), at least one. Raises :class:`InputError` naming
    ``field`` for no item, a stray comma (:func:`split_items`), an item that is not an integer, or (``distinct``) an
    integer given twice (run ids: a run named twice would be counted twice)."""
    items = split_items(field, text)  # its own message for a stray comma (InputError is a ValueError: not below)
    try:
        values = [int(v) for v in items]
    except ValueError:
        raise InputError(field, f"must be a comma-separated list of integers, got {text!r}") from None
    if distinct:
        twice = sorted({v for v in values if values.count(v) > 1})
        if twice:
            raise InputError(field, f"{', '.join(map(str, twice))} given more than once in {text!r}: name each once")
    return values


def _range_text(lo, hi) -> str:
    """``">= lo"``, ``"<= hi"`` or ``"in [lo, hi]"``: the allowed range in words (an open end is not printed)."""
    if hi is None:
        return f">= {lo}"
    if lo is None:
        return f"<= {hi}"
    return f"in [{lo}, {hi}]"


def check_output_file(field: str, text, suffixes: tuple[str, ...] = ()) -> Path:
    """A file path that a command will write at its end, checked before any work: not empty, ending in one of
    ``suffixes`` (when given; compared lower-case), not a directory, and its folder writable (or, when the folder does
    not exist yet, the nearest existing folder above it, where it will be created). ``~`` is expanded. Writes nothing.

    Raises:
        InputError (``field``): empty, wrong suffix, a directory, a path through a file, or a folder that cannot be
            written (read-only file system or no permission).
    """
    raw = "" if text is None else str(text).strip()
    if not raw:
        raise InputError(field, "give a file path to write to")
    p = Path(raw).expanduser()
    if p.is_dir():
        raise InputError(field, f"{raw!r} is a directory: give a file path inside it")
    if raw.endswith(("/", os.sep)):
        raise InputError(field, f"{raw!r} ends in {raw[-1]!r}, which names a folder: give a file path (drop the "
                                f"trailing {raw[-1]!r}, or add a file name after it)")
    if suffixes and p.suffix.lower() not in suffixes:
        raise InputError(field, f"must end in {' or '.join(suffixes)}, got {raw!r}")
    check_writable_below(field, f"cannot write {raw!r}", p.parent)
    return p


def check_writable_below(field: str, what: str, folder: Path) -> None:
    """``folder``, or when it does not exist yet the nearest existing folder above it (where it will be created), is a
    folder files can be created in. Raises InputError(``field``, "<what>: ...") naming that folder and why not."""
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    if not folder.is_dir():
        raise InputError(field, f"{what}: {str(folder)!r} is a file, not a folder")
    why = folder_write_problem(folder)
    if why:
        raise InputError(field, f"{what}: the folder {str(folder)!r} is not writable ({why})")


def folder_write_problem(folder: Path) -> str | None:
    """Why files cannot be created in the existing folder ``folder``: ``"read-only file system"``, ``"no permission
    to write there"``, or None when they can."""
    if hasattr(os, "statvfs") and os.statvfs(folder).f_flag & getattr(os, "ST_RDONLY", 1):
        return "read-only file system"
    if not os.access(folder, os.W_OK | os.X_OK):
        return "no permission to write there"
    try:  # the flags above miss some places (a root user in /proc or /sys): create and remove a file to be sure
        fd, probe = tempfile.mkstemp(dir=folder, prefix=".dtree-write-probe-")
    except OSError as e:
        return f"cannot create a file there: {e.strerror or e}"
    os.close(fd)
    os.unlink(probe)
    return None


def check_output_folder(field: str, text) -> Path:
    """A folder a command will write into (created when missing), checked before any work: not empty, not an existing
    file, and writable (or, when missing, the nearest existing folder above it, where it will be created). ``~`` is
    expanded. Leaves nothing behind.

    Raises:
        InputError (``field``): empty, an existing file, a path through a file, or a folder that cannot be written.
    """
    raw = "" if text is None else str(text).strip()
    if not raw:
        raise InputError(field, "give a folder to write to")
    p = Path(raw).expanduser()
    if p.exists() and not p.is_dir():
        raise InputError(field, f"{raw!r} is a file, not a folder")
    check_writable_below(field, f"cannot write into {raw!r}", p)
    return p
