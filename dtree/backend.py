"""The small facade the CLI and the pages call: load the models once, get a cost model, run a decode.

Pages and the CLI never touch model internals: they build a :class:`Backend` and call :meth:`Backend.decode`.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from pathlib import Path

import numpy as np
import torch

from . import engine
from .cost import cost_model_from_profile, hardware_description, profile_verify
from .drafter import drafter_dtype_name, drafter_head_kernel
from .errors import InputError
from .models import Target, cache_dir, dtype_name, load_target
from .records import RunRecord

QUICK_CONTEXTS = (64, 256, 1024)
QUICK_NODES = (0, 1, 2, 3, 4, 5, 6, 7, 8, 12, 16, 32, 64, 128)
"""Node counts of the automatic profile: every n up to 8, where on CPUs the verify time steps with the width (the
matmul kernels and padding widths of :mod:`dtree.kernels`, e.g. 5 nodes 59 ms but 7 nodes 65 ms and 8 nodes 79 ms in
session 11's live rounds), then a coarser grid."""


class DraftStepTimer:
    """Times one steady-state drafter round: ingest ``new_tokens`` new context features (about tau, as in a real
    round, not a full re-ingest: spec 3.4's note on the official profiler), draft one block and take the top-32
    marginals, exactly like the engine's draft phase. Calling the object runs one such step and returns its seconds.

    The drafter's cache starts with ``context`` random feature rows; once it holds 64 more, it is rebuilt (untimed),
    so every timed step sees a context of ``context`` .. ``context + 64`` rows.
    """

    def __init__(self, target: Target, drafter, context: int = 256, new_tokens: int = 3, seed: int = 0):
        self.target, self.drafter, self.context, self.new_tokens = target, drafter, context, new_tokens
        self.gen = torch.Generator().manual_seed(seed)
        zeros = tuple(torch.zeros(1, 1, target.hidden_size, dtype=target.dtype, device=target.device)
                      for _ in range(target.n_layers + 1))
        self.width = drafter.extract_features(zeros).shape[-1]
        self._reset()

    @torch.inference_mode()
    def _reset(self) -> None:
        feats = torch.randn(1, self.context, self.width, generator=self.gen).to(self.target.device, self.target.dtype)
        self.cache = self.drafter.new_cache()
        self.drafter.draft_logits(self.target.model, self.cache, feats, 1, self.context)
        self.start = self.context

    @torch.inference_mode()
    def __call__(self) -> float:
        if self.start + self.new_tokens > self.context + 64:
            self._reset()
        new = torch.randn(1, self.new_tokens, self.width, generator=self.gen).to(self.target.device, self.target.dtype)
        self.start += self.new_tokens
        engine._sync(self.target.device)
        t0 = time.perf_counter()
        self.drafter.draft_marginals(self.target.model, self.cache, new, 1, self.start, 32)
        engine._sync(self.target.device)
        return time.perf_counter() - t0


def default_cost_model_path(target: Target, drafter) -> Path:
    """Where the auto-profiled cost model of this (target, drafter, dtype, device) is cached."""
    key = json.dumps([target.name, getattr(drafter, "name", ""), getattr(drafter, "fingerprint", ""),
                      dtype_name(target.dtype), str(target.device), drafter_dtype_name(drafter),
                      hardware_description(target.device),
                      getattr(target.model.config, "_attn_implementation", None),  # the verify kernel path
                      list(target.verify_widths),  # verifies padded alike
                      getattr(target, "linear_kernels", "off"),  # and run with the same matmul kernels
                      drafter_head_kernel(drafter),  # the drafter head's kernel sets much of Cd on CPU
                      list(QUICK_CONTEXTS), list(QUICK_NODES)])  # on the current default grid
    return cache_dir() / "costs" / f"cost-{hashlib.sha1(key.encode()).hexdigest()[:12]}.json"


def default_calibration_path(target: Target, drafter) -> Path:
    """Where the auto-fitted calibration (:meth:`Backend.calibration`) of this (target, drafter, dtype) is cached."""
    key = json.dumps([target.name, getattr(drafter, "name", ""), getattr(drafter, "fingerprint", ""),
                      dtype_name(target.dtype)])
    return cache_dir() / "calibrations" / f"cal-{hashlib.sha1(key.encode()).hexdigest()[:12]}.json"


def fit_warmup_calibration(target: Target, drafter, n_prompts: int = 6, max_new_tokens: int = 64, budget: int = 16,
                           progress=None):
    """Calibrate the drafter on this target from scratch: decode the first ``n_prompts`` built-in demo prompts
    greedily with ``ddtree:budget`` (nothing stored) and fit :func:`dtree.calibration.fit_calibration` on the rounds.
    ``progress(done, total)`` is called per prompt. Returns a Calibration whose ``meta["source"]`` says how."""
    from .calibration import fit_calibration
    from .errors import check_int
    from .prompts import DEMO_PROMPTS

    n_prompts = check_int("n_prompts", n_prompts, 1, len(DEMO_PROMPTS))
    runs = []
    for i, prompt in enumerate(DEMO_PROMPTS[:n_prompts]):
        ids = target.encode_prompt(prompt)
        runs.append(engine.generate(target, ids, engine.DecodeConfig("ddtree", budget, max_new_tokens),
                                    drafter=drafter, prompt_text=prompt))
        if progress is not None:
            progress(i + 1, n_prompts)
    return fit_calibration(runs, meta={"source": f"warm-up: {n_prompts} demo prompts x {max_new_tokens} tokens, "
                                                 f"ddtree:{budget}, temperature 0",
                                       "target": target.name, "drafter": getattr(drafter, "name", None),
                                       "dtype": dtype_name(target.dtype)})


def profile_cost_model(target: Target, drafter, contexts=QUICK_CONTEXTS, nodes=QUICK_NODES, repeats: int = 3,
                       progress=None):
    """Measure Cd and Cv(n; L) (tree-shaped masks) on this machine and fit the cost model (monotone convex in n).

    Cd is the median of one :class:`DraftStepTimer` step run after EVERY timed verify forward of
    :func:`dtree.cost.profile_verify` (as drafting alternates with verifying in a real round), so Cd and Cv are sampled
    over the same minutes: a shared machine whose speed drifts while the profile runs shifts both alike and their
    ratio, which CaDDTree's budget rule weighs, stays right. ``progress`` is an optional callable ``(done, total)``.
    Returns a CostModel (``meta["cd_samples"]``: how many steps Cd is the median of).
    """
    step = DraftStepTimer(target, drafter)
    cd_times: list[float] = []
    raw = profile_verify(target.model, contexts, nodes, repeats, target.dtype, target.device, progress=progress,
                         between=lambda: cd_times.append(step()), widths=target.verify_widths)
    meta = {"target": target.name, "drafter": getattr(drafter, "name", None), "dtype": dtype_name(target.dtype),
            "drafter_dtype": drafter_dtype_name(drafter),
            "drafter_head_kernel": drafter_head_kernel(drafter),
            "cd_samples": len(cd_times), "verify_widths": list(target.verify_widths),
            "linear_kernels": target.linear_kernels}
    return cost_model_from_profile(target.model, float(np.median(cd_times)), raw, contexts, nodes, repeats,
                                   target.dtype, target.device, meta)


def drafter_run_name(drafter: str | Path | None) -> str:
    """The drafter name runs store (and ``fit-cost`` / ``calibrate --drafter`` select by, and fits group runs by):
    the shipped checkpoint's folder name for ``None`` or any path to that folder (``dtree/checkpoints/x/`` and
    ``./dtree/checkpoints/x`` are the same drafter), else the folder's absolute path (a relative one would depend
    on the working directory)."""
    from .drafter import default_drafter_path

    if drafter is None or Path(drafter).resolve() == default_drafter_path().resolve():
        return default_drafter_path().name
    return str(Path(drafter).resolve())


def cost_model_mismatch(cost, target: Target, drafter=None) -> list[str]:
    """Reasons why ``cost`` (a CostModel) may not describe this target/drafter/dtype/machine, one line each.

    Compares the model's ``meta`` (``target``, ``drafter``, ``dtype``, ``hardware``, ``verify_widths``,
    ``linear_kernels``, ``drafter_head_kernel``, as written by
    :func:`profile_cost_model`) with the loaded models; keys missing from ``meta`` are not compared. An empty list
    means nothing looks wrong. The caller warns and lets the user proceed.
    """
    meta = getattr(cost, "meta", None) or {}
    here = {"target": target.name, "dtype": dtype_name(target.dtype), "hardware": hardware_description(target.device),
            "verify_widths": list(target.verify_widths), "linear_kernels": target.linear_kernels}
    if drafter is not None and getattr(drafter, "name", None):
        here["drafter"] = drafter.name
    if drafter is not None:
        here["drafter_dtype"] = drafter_dtype_name(drafter)
        here["drafter_head_kernel"] = drafter_head_kernel(drafter)
    from .records import meta_mismatches

    return [f"cost model was measured for {key} {theirs!r}, this run uses {mine!r}"
            for key, theirs, mine in meta_mismatches(meta, here)]


DRAFTER_DTYPE_ENV = "DTREE_DRAFTER_DTYPE"


def drafter_dtype_setting(value: str | None = None) -> str:
    """The drafter dtype asked for: ``value`` if given, else ``DTREE_DRAFTER_DTYPE``, else ``"auto"``.

    Returns ``"auto"`` or a canonical dtype name (``float32`` / ``bfloat16`` / ``float16``).
    Raises:
        InputError: any other value (field ``drafter_dtype``, or ``DTREE_DRAFTER_DTYPE`` when it came from there).
    """
    from .models import parse_dtype

    field = "drafter_dtype" if value is not None else DRAFTER_DTYPE_ENV
    raw = value if value is not None else os.environ.get(DRAFTER_DTYPE_ENV, "")
    v = (raw or "").strip().lower() or "auto"
    if v == "auto":
        return v
    try:
        return dtype_name(parse_dtype(v))
    except InputError:
        raise InputError(field, f"must be 'auto', 'float32', 'bfloat16' or 'float16', got {raw!r}") from None


def load_drafter_fastest(path: str | Path, target: Target, drafter_dtype: str | None = None, repeats: int = 7):
    """Load the drafter at ``path`` for ``target`` in the dtype that drafts faster on this machine.

    ``drafter_dtype`` (:func:`drafter_dtype_setting`): a dtype name loads it in that dtype. ``"auto"``: on CUDA, or
    next to a float32 target, the target's dtype; on CPU next to a bf16/fp16 target both float32 and the target's
    dtype are loaded and ``repeats`` interleaved steady-state draft steps (:class:`DraftStepTimer`, about 10-25 ms
    each) are timed per dtype; the one with the lower median is kept. Which wins depends on the CPU: on the 2-core
    machines of sessions 1-17 (no bf16 instructions) float32 drafted about 1.5-2x faster (Cd 15 vs 22 ms); on one
    with AVX512-BF16 bf16 drafted 2.7x faster (7.4 vs 20.3 ms, session 18). The drafter's output is float32 either
    way (features and embeddings are cast on the way in), so the choice changes speed, not the tree.

    The returned drafter carries ``dtype_note`` (what was chosen and why, for the CLI and the pages).
    Raises:
        InputError: as :func:`dtree.drafter.load_drafter`, or a bad ``drafter_dtype``.
    """
    from .drafter import load_drafter

    setting = drafter_dtype_setting(drafter_dtype)
    same = dtype_name(target.dtype)
    if setting != "auto":
        d = load_drafter(path, target, dtype=setting)
        d.dtype_note = f"{setting} (asked for)"
        return d
    if target.device.type != "cpu" or same == "float32":
        d = load_drafter(path, target)
        d.dtype_note = f"{same} (the target's dtype)"
        return d
    cands = {name: load_drafter(path, target, dtype=name) for name in (same, "float32")}
    timers = {name: DraftStepTimer(target, d) for name, d in cands.items()}
    times: dict[str, list[float]] = {name: [] for name in cands}
    for name, timer in timers.items():  # warm-up step each, untimed
        timer()
    for _ in range(repeats):
        for name, timer in timers.items():
            times[name].append(timer())
    med = {name: float(np.median(v)) * 1e3 for name, v in times.items()}
    best = min(med, key=med.get)
    other = next(n for n in med if n != best)
    d = cands[best]
    d.dtype_note = (f"{best} (auto: a draft step took {med[best]:.1f} ms in {best}, "
                    f"{med[other]:.1f} ms in {other} on this machine)")
    return d


def early_drafter_check(cfg, target: str | None) -> None:
    """Check a drafter config (:class:`dtree.drafter.DrafterConfig`) against the target's ``config.json`` alone
    (:func:`dtree.drafter.check_drafter_shape`), so that a drafter made for another model is refused in a second,
    not after the target's weights load.

    Raises:
        InputError: field ``"drafter"`` for a mismatch; field ``"target"`` for a target path that does not exist or a
            config that cannot be read (a hub id neither cached nor reachable, an unknown architecture), in the words
            :func:`dtree.models.load_target` would use.
    """
    from transformers import AutoConfig

    from .drafter import check_drafter_shape
    from .models import resolve_target

    where = resolve_target(target)
    try:
        tcfg = AutoConfig.from_pretrained(where)
    except (OSError, ValueError) as e:  # load_target would fail alike, after trying the network again
        raise InputError("target", f"cannot load {target!r}: {e}") from e
    tcfg = getattr(tcfg, "text_config", None) or tcfg
    if hasattr(tcfg, "hidden_size") and hasattr(tcfg, "num_hidden_layers"):
        check_drafter_shape(cfg, tcfg)


class Backend:
    """Target + drafter + cost model, loaded once (per Streamlit server via ``st.cache_resource``, or per CLI run).

    Args:
        target: ``"embedded"``, a HF model folder or hub id.
        dtype: ``"float32"`` / ``"bfloat16"`` / ``"float16"``; default float32 on CPU, bfloat16 on CUDA.
        device: default CUDA when available.
        drafter: path of a drafter checkpoint; default the shipped one for the embedded target.
        drafter_dtype: the drafter's dtype, ``"auto"`` (default; also ``DTREE_DRAFTER_DTYPE``) or a dtype name; see
            :func:`load_drafter_fastest`.
    Raises:
        InputError: a model or checkpoint that cannot be loaded or does not match the target.
    """

    def __init__(self, target: str = "embedded", dtype: str | None = None, device: str | None = None,
                 drafter: str | None = None, drafter_dtype: str | None = None):
        from .drafter import default_drafter_path, read_drafter_config

        if drafter:  # a mistyped or mismatched --drafter fails before the (slow) target load and kernel tuning
            early_drafter_check(read_drafter_config(drafter), target)
        self.target = load_target(target, dtype, device)
        if drafter is None and target not in ("embedded", None, ""):
            self.drafter = None  # a user target needs its own drafter checkpoint
        else:
            path = Path(drafter) if drafter else default_drafter_path()
            self.drafter = load_drafter_fastest(path, self.target, drafter_dtype)
            self.drafter.name = drafter_run_name(drafter)
            # a retrained checkpoint changes Cd: the auto-profiled cost model is cached per weights file
            self.drafter.fingerprint = hashlib.sha1((path / "model.safetensors").read_bytes()).hexdigest()[:12]
        self._cost_model = None
        self.cost_model_warning: str | None = None  # set while the cost model in use is a disturbed auto-profile
        self._calibration = None
        self.cost_weights = None  # optional dtree.cost.CostWeights applied to every run's cost model

    def cost_model(self, progress=None, path: str | Path | None = None):
        """The cost model used by caddtree: ``path`` if given, else the cached auto-profile (profiled on first use).

        A first-use profile that looks disturbed (:meth:`dtree.cost.CostModel.disturbances`) is measured once more;
        if it still does, it is used for this process and not cached, and :attr:`cost_model_warning` says so (the
        CLI prints it, the pages show it)."""
        from .cost import CostModel

        if path is not None:
            self._cost_model = CostModel.load(path)
            self.cost_model_warning = None
            return self._cost_model
        if self.current_cost_model() is None:  # none loaded, none cached (or the cached file is unusable): profile
            cm = profile_cost_model(self.target, self.drafter, progress=progress)
            problems = cm.disturbances()
            if problems:  # another job on the cores: measure once more
                cm = profile_cost_model(self.target, self.drafter, progress=progress)
                problems = cm.disturbances()
            self._cost_model = cm
            self.cost_model_warning = None
            if problems:  # used for this process only: a later run profiles afresh instead of inheriting it
                self.cost_model_warning = (
                    "the automatic cost profile looks disturbed (another job using the CPU?): " + "; ".join(problems)
                    + ". It is used in this process but not cached; profile an idle machine with "
                    "`python -m dtree profile`.")
            else:
                auto = default_cost_model_path(self.target, self.drafter)
                auto.parent.mkdir(parents=True, exist_ok=True)
                cm.save(auto)
        return self._cost_model

    def calibration(self, path: str | Path | None = None, progress=None):
        """The calibration used by ``-cal`` methods: ``path`` if given (loaded and kept), else the one loaded before,
        else this (target, drafter)'s cached auto-calibration (:func:`default_calibration_path`), else a fresh
        warm-up fit (:func:`fit_warmup_calibration`, ``progress(done, total)`` per prompt), cached for next time.

        Raises:
            InputError: an unreadable or invalid ``path``; no drafter.
        """
        from .calibration import Calibration

        if path is not None:
            self._calibration = Calibration.load(path)
            return self._calibration
        if self._calibration is None:
            if self.drafter is None:
                raise InputError("drafter", "calibrated methods need a drafter")
            auto = default_calibration_path(self.target, self.drafter)
            if auto.exists():
                try:
                    self._calibration = Calibration.load(auto)
                except InputError:
                    self._calibration = None
            if self._calibration is None:
                self._calibration = fit_warmup_calibration(self.target, self.drafter, progress=progress)
                self._calibration.save(auto)
        return self._calibration

    def prepare(self, prompt: str, cfg: engine.DecodeConfig, chat: bool = True) -> tuple[list[int], engine.DecodeConfig]:
        """Encode ``prompt`` (chat template) and validate ``cfg`` against this target; raise InputError on bad input.

        Call this before opening a store or profiling, so a rejected run leaves nothing behind.
        """
        prompt_ids = self.target.encode_prompt(prompt, chat=chat)
        if engine.parse_method(cfg.method).base != "ar" and self.drafter is None:
            raise InputError("drafter", "this target has no drafter: pass --drafter PATH or use --method ar")
        block = self.drafter.config.block_size if self.drafter is not None else 1
        return prompt_ids, cfg.validated(self.target.max_context, len(prompt_ids), block)

    def decode(self, prompt: str, cfg: engine.DecodeConfig, store=None, on_round=None, chat: bool = True,
               cost_progress=None, cost_weights=None) -> RunRecord:
        """Encode, validate and decode ``prompt`` with ``cfg``; see :func:`dtree.engine.generate`.

        The cost model is attached for display to every speculative run once one exists, and profiled on first use by
        caddtree (``cost_progress(done, total)`` reports that). ``cost_weights`` (a :class:`dtree.cost.CostWeights`,
        default ``self.cost_weights``) is applied to the profile (:meth:`dtree.cost.CostModel.weighted`); the
        weighted model is the one the run uses and stores.
        """
        prompt_ids, cfg = self.prepare(prompt, cfg, chat)
        weights = cost_weights if cost_weights is not None else self.cost_weights
        cost = None
        # cfg.method is the base method here (prepare -> validated). caddtree needs a cost model (profiled on first
        # use); chain / ddtree runs store this machine's cached one, if any, so replay and verify_vs_model can price them
        if cfg.method == "caddtree" or (cfg.method != "ar" and self.current_cost_model() is not None):
            cost = self.cost_model(progress=cost_progress)
            if weights is not None:
                cost = cost.weighted(weights)
        return engine.generate(self.target, prompt_ids, cfg, drafter=self.drafter if cfg.method != "ar" else None,
                               cost_model=cost, sink=store, on_round=on_round, prompt_text=prompt,
                               calibration=self.calibration() if cfg.calibrated else None)

    def current_cost_model(self):
        """The cost model caddtree would use now, WITHOUT profiling: the one loaded or profiled in this process, else
        this machine's cached auto-profile (:func:`default_cost_model_path`) when it exists; None when there is none.
        """
        from .cost import CostModel

        if self._cost_model is None:
            auto = default_cost_model_path(self.target, self.drafter)
            if auto.exists():
                try:
                    self._cost_model = CostModel.load(auto)
                except InputError:
                    return None
        return self._cost_model

    def decode_ids(self, prompt_ids: list[int], cfg: engine.DecodeConfig, store=None, on_round=None, cost=None,
                   prompt_text: str = "") -> RunRecord:
        """Decode already-encoded ``prompt_ids`` (e.g. a logged run's, to re-run exactly the same prompt).

        ``cost`` (a :class:`dtree.cost.CostModel`, used as given, weights included) replaces the backend's cost model
        for this run; without it, caddtree uses :meth:`cost_model` and the other methods the current one if any (for
        display). See :func:`dtree.engine.generate`; raises InputError on bad input (nothing is stored then).
        """
        if engine.parse_method(cfg.method).base != "ar" and self.drafter is None:
            raise InputError("drafter", "this target has no drafter: use method ar")
        cfg = cfg.validated(self.target.max_context, len(prompt_ids),
                            self.drafter.config.block_size if self.drafter is not None else 1)
        if cost is None and cfg.method != "ar":
            cost = self.cost_model() if cfg.method == "caddtree" else self.current_cost_model()
        return engine.generate(self.target, list(prompt_ids), cfg, drafter=self.drafter if cfg.method != "ar" else None,
                               cost_model=cost if cfg.method != "ar" else None, sink=store, on_round=on_round,
                               prompt_text=prompt_text, calibration=self.calibration() if cfg.calibrated else None)
