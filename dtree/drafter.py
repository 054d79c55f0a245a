"""DFlash block-diffusion drafter: configuration, model, KV cache, checkpoint I/O (own implementation).

Architecture (DFlash, arXiv 2602.06036; ``research/spec.md`` section 1):

* target features: the outputs of ``k`` target decoder layers (``target_layer_ids``; id ``j`` = element ``j+1`` of
  the HF ``hidden_states`` tuple), concatenated to ``[.., k*H]`` (spec 1.2);
* fusion: ``ctx = hidden_norm(fc(features))``, bias-free ``k*H -> H`` (spec 1.3); the fused rows are only ever used
  as keys/values ("KV injection"), shared by every drafter layer;
* the noise block ``[anchor, MASK x (bs-1)]`` is embedded with the TARGET's ``embed_tokens`` (spec 1.4);
* ``num_hidden_layers`` pre-norm Qwen3/Llama decoder layers whose attention is NON-causal: queries are the block
  rows, keys/values are ``[context ; block]`` projected by the same ``k_proj``/``v_proj``, RoPE at absolute positions,
  optional per-head q/k RMSNorm (Qwen3, ``qk_norm``) (spec 1.5);
* final ``norm`` then the TARGET's ``lm_head``; block index ``i`` (1..bs-1) predicts the token at ``start+i``.

The drafter KV cache holds context entries only; after every call it holds exactly ``start`` entries (spec 1.6).

Mask token. SmolLM2 (the embedded target) has no mask token, and adding a row to the target's embedding matrix would
change the target. So when ``dflash_config.mask_token_id`` is null the drafter owns a learned vector
``mask_embedding`` [H] that is used for every MASK row of the block. Checkpoints that name a ``mask_token_id``
(the z-lab drafters, e.g. 151669 ``<|MASK|>`` of Qwen3) embed that id with the target's embeddings instead and have
no ``mask_embedding`` parameter.

Draft vocabulary. An optional int64 buffer ``draft_vocab`` [Vd] (sorted target token ids, saved in the checkpoint)
restricts the output layer to those rows of the target ``lm_head`` (gathered once per target weight), like EAGLE-3's
reduced vocabulary: it cuts the drafter's training cost and its per-round cost Cd. Logits are mapped back to target
ids; tokens outside the draft vocabulary get log-probability ``-inf``. Absent = full vocabulary (z-lab compatible).
"""

from __future__ import annotations

import json
import math
import os
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from .errors import InputError
from .kernels import product_kernel

CHECKPOINT_NAME = "smollm2-135m-dflash"


def default_drafter_path() -> Path:
    """Folder of the drafter shipped for the embedded SmolLM2-135M-Instruct target (inside the package)."""
    return Path(__file__).resolve().parent / "checkpoints" / CHECKPOINT_NAME


def default_target_layer_ids(num_target_layers: int, k: int) -> list[int]:
    """Target layers whose outputs feed the drafter (spec 1.2, z-lab ``build_target_layer_ids``).

    ``k == 1`` -> ``[N // 2]``; otherwise ``round(1 + i * (N - 4) / (k - 1))`` for ``i = 0..k-1`` (Python rounding,
    half to even), evenly spread from the 2nd layer to the 3rd-from-last. SmolLM2 (N=30, k=5): [1, 8, 14, 20, 27];
    Qwen3-8B (N=36, k=5): [1, 9, 17, 25, 33].
    """
    if k <= 1:
        return [num_target_layers // 2]
    return [int(round(1 + i * (num_target_layers - 4) / (k - 1))) for i in range(k)]


# ----------------------------------------------------------------------------------------------------------------
# configuration


@dataclass
class DrafterConfig:
    """Drafter hyper-parameters; field names follow the z-lab DFlash/Qwen3 ``config.json`` (see
    ``research/dflash-checkpoint-layout.md``).

    ``num_hidden_layers`` counts DRAFTER layers; ``num_target_layers`` the target's. ``dflash_config`` holds
    ``mask_token_id`` (int, or None = learned ``mask_embedding``) and ``target_layer_ids`` (list; None = spec 1.2
    formula with ``k = num_hidden_layers``). ``qk_norm`` (dtree field, default True as in Qwen3/z-lab) switches the
    per-head q/k RMSNorm; off, a layer has exactly the shapes of a Llama decoder layer. ``vocab_size`` is the target
    vocabulary the checkpoint was built for (checked at load when given).
    """

    hidden_size: int = 576
    intermediate_size: int = 1536
    num_attention_heads: int = 9
    num_key_value_heads: int = 3
    head_dim: int = 64
    rms_norm_eps: float = 1e-5
    rope_theta: float = 100000.0
    attention_bias: bool = False
    num_hidden_layers: int = 1
    block_size: int = 16
    num_target_layers: int = 30
    vocab_size: int | None = None
    qk_norm: bool = True
    max_position_embeddings: int = 8192
    dflash_config: dict = field(default_factory=lambda: {"mask_token_id": None, "target_layer_ids": None})

    @property
    def target_layer_ids(self) -> list[int]:
        ids = (self.dflash_config or {}).get("target_layer_ids")
        if ids is None:
            return default_target_layer_ids(self.num_target_layers, self.num_hidden_layers)
        return [int(i) for i in ids]

    @property
    def mask_token_id(self) -> int | None:
        m = (self.dflash_config or {}).get("mask_token_id")
        return None if m is None else int(m)

    @property
    def gamma(self) -> int:
        """Drafted positions per round, ``block_size - 1``."""
        return self.block_size - 1

    def to_dict(self) -> dict:
        d = asdict(self)
        d["dflash_config"] = {"mask_token_id": self.mask_token_id, "target_layer_ids": self.target_layer_ids}
        d["architectures"] = ["DFlashDraftModel"]
        d["model_type"] = "dflash"
        d["layer_types"] = ["full_attention"] * self.num_hidden_layers
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "DrafterConfig":
        """Build from a ``config.json`` dict (dtree or z-lab style; unknown keys are ignored).

        A z-lab config has no ``qk_norm`` key (Qwen3 always has q/k norms), hence the default True. ``rope_theta``
        may also come as ``rope_parameters.rope_theta`` (transformers 5). Raises InputError for sliding-window layers
        (not supported), a missing required field, or a field of the wrong type (sizes and counts must be positive
        integers, ``rms_norm_eps`` / ``rope_theta`` positive numbers, ``qk_norm`` / ``attention_bias`` booleans,
        ``dflash_config`` an object whose ``target_layer_ids`` is a list of integers and ``mask_token_id`` an
        integer, each possibly null).
        """
        if not isinstance(d, dict):
            raise InputError("drafter", f"config.json must hold a JSON object, got {type(d).__name__}")
        kw = {k: d[k] for k in cls.__dataclass_fields__ if k in d}
        if "rope_theta" not in d and isinstance(d.get("rope_parameters"), dict) and "rope_theta" in d["rope_parameters"]:
            kw["rope_theta"] = d["rope_parameters"]["rope_theta"]
        if "head_dim" not in d and "hidden_size" in d and "num_attention_heads" in d:
            kw["head_dim"] = d["hidden_size"] // d["num_attention_heads"]
        if any(t != "full_attention" for t in d.get("layer_types") or []):
            raise InputError("drafter", "sliding-window drafter layers (layer_types) are not supported")
        for req in ("hidden_size", "num_hidden_layers", "num_target_layers"):
            if req not in d:
                raise InputError("drafter", f"config.json lacks the field {req!r}")
        def is_int(v) -> bool:
            return isinstance(v, int) and not isinstance(v, bool)

        for k in ("hidden_size", "intermediate_size", "num_attention_heads", "num_key_value_heads", "head_dim",
                  "num_hidden_layers", "block_size", "num_target_layers", "max_position_embeddings", "vocab_size"):
            if k in kw and not (k == "vocab_size" and kw[k] is None) and not (is_int(kw[k]) and kw[k] > 0):
                raise InputError("drafter", f"config.json field {k!r} must be a positive integer, got {kw[k]!r}")
        for k in ("rms_norm_eps", "rope_theta"):
            if k in kw and not (isinstance(kw[k], (int, float)) and not isinstance(kw[k], bool) and kw[k] > 0):
                raise InputError("drafter", f"config.json field {k!r} must be a positive number, got {kw[k]!r}")
        for k in ("qk_norm", "attention_bias"):
            if k in kw and not isinstance(kw[k], bool):
                raise InputError("drafter", f"config.json field {k!r} must be true or false, got {kw[k]!r}")
        if d.get("dflash_config") is not None and not isinstance(d["dflash_config"], dict):
            raise InputError("drafter", "config.json field 'dflash_config' must be an object")
        dc = dict(d.get("dflash_config") or {})
        ids, mask = dc.get("target_layer_ids"), dc.get("mask_token_id")
        if ids is not None and not (isinstance(ids, list) and ids and all(is_int(i) for i in ids)):
            raise InputError("drafter", f"dflash_config.target_layer_ids must be a list of integers, got {ids!r}")
        if mask is not None and not is_int(mask):
            raise InputError("drafter", f"dflash_config.mask_token_id must be an integer or null, got {mask!r}")
        kw["dflash_config"] = {"mask_token_id": dc.get("mask_token_id"), "target_layer_ids": dc.get("target_layer_ids")}
        return cls(**kw)

    @classmethod
    def from_json(cls, path: str | Path) -> "DrafterConfig":
        with open(path) as f:
            return cls.from_dict(json.load(f))

    def to_json(self, path: str | Path) -> None:
        with open(path, "w") as f:
            json.dump(self.to_dict(), f, indent=2)
            f.write("\n")


# ----------------------------------------------------------------------------------------------------------------
# building blocks


class RMSNorm(nn.Module):
    """``x / sqrt(mean(x^2) + eps) * weight``, computed in float32 (Llama/Qwen3 RMSNorm)."""

    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        dt = x.dtype
        x = x.float()
        x = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * x.to(dt)


def rope_cos_sin(positions: torch.Tensor, head_dim: int, theta: float, dtype: torch.dtype):
    """cos/sin tables ``[..., head_dim]`` for integer ``positions`` (RoFormer RoPE, HF half-split layout)."""
    inv = 1.0 / (theta ** (torch.arange(0, head_dim, 2, device=positions.device, dtype=torch.float32) / head_dim))
    ang = positions.to(torch.float32)[..., None] * inv
    ang = torch.cat([ang, ang], dim=-1)
    return ang.cos().to(dtype), ang.sin().to(dtype)


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate ``x [..., T, d]`` with ``cos/sin`` broadcastable to it (rotate-half convention of HF Llama/Qwen3)."""
    h = x.shape[-1] // 2
    rot = torch.cat([-x[..., h:], x[..., :h]], dim=-1)
    return x * cos + rot * sin


class Attention(nn.Module):
    """Non-causal GQA attention of a drafter layer (spec 1.5). Parameter names as in Qwen3."""

    def __init__(self, cfg: DrafterConfig):
        super().__init__()
        H, nh, nkv, d = cfg.hidden_size, cfg.num_attention_heads, cfg.num_key_value_heads, cfg.head_dim
        self.nh, self.nkv, self.d = nh, nkv, d
        self.q_proj = nn.Linear(H, nh * d, bias=cfg.attention_bias)
        self.k_proj = nn.Linear(H, nkv * d, bias=cfg.attention_bias)
        self.v_proj = nn.Linear(H, nkv * d, bias=cfg.attention_bias)
        self.o_proj = nn.Linear(nh * d, H, bias=cfg.attention_bias)
        if cfg.qk_norm:
            self.q_norm = RMSNorm(d, cfg.rms_norm_eps)
            self.k_norm = RMSNorm(d, cfg.rms_norm_eps)
        else:
            self.q_norm = self.k_norm = None

    def project_kv(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor):
        """Keys/values of rows ``x [B, T, H]`` at the positions of ``cos/sin [B or 1, T, d]``: two ``[B, nkv, T, d]``."""
        B, T, _ = x.shape
        k = self.k_proj(x).view(B, T, self.nkv, self.d).transpose(1, 2)
        v = self.v_proj(x).view(B, T, self.nkv, self.d).transpose(1, 2)
        if self.k_norm is not None:
            k = self.k_norm(k)
        return apply_rope(k, cos[:, None], sin[:, None]), v

    def project_q(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        B, T, _ = x.shape
        q = self.q_proj(x).view(B, T, self.nh, self.d).transpose(1, 2)
        if self.q_norm is not None:
            q = self.q_norm(q)
        return apply_rope(q, cos[:, None], sin[:, None])


def block_attention(q, kc, vc, kb, vb, ctx_visible=None):
    """Joint softmax over context keys and the block's own keys (DFlash training/inference mask, spec 1.5/1.8).

    Shapes: ``q [B, nh, N, bs, d]`` (N blocks of bs queries), context ``kc, vc [B, nkv, S, d]``, block
    ``kb, vb [B, nkv, N, bs, d]``; ``ctx_visible`` bool ``[B, N, S]`` (True = block n may see context row j, i.e.
    ``j < anchor_n``; None = all visible). A block sees no other block; within a block attention is bidirectional.
    Returns ``[B, nh, N, bs, d]``. Every block must see at least one key (its own rows always qualify).
    """
    B, nh, N, bs, d = q.shape
    nkv, S = kc.shape[1], kc.shape[2]
    g = nh // nkv
    qg = q.reshape(B, nkv, g, N, bs, d)
    scale = 1.0 / math.sqrt(d)
    s_ctx = torch.matmul(qg.reshape(B, nkv, g * N * bs, d), kc.transpose(-1, -2)).view(B, nkv, g, N, bs, S) * scale
    if ctx_visible is not None:
        s_ctx = s_ctx.masked_fill(~ctx_visible[:, None, None, :, None, :], float("-inf"))
    s_blk = torch.matmul(qg, kb[:, :, None].transpose(-1, -2)) * scale  # [B, nkv, g, N, bs, bs]
    p = torch.softmax(torch.cat([s_ctx, s_blk], dim=-1).float(), dim=-1).to(q.dtype)
    out = torch.matmul(p[..., :S].reshape(B, nkv, g * N * bs, S), vc).view(B, nkv, g, N, bs, d)
    out = out + torch.matmul(p[..., S:], vb[:, :, None])
    return out.reshape(B, nh, N, bs, d)


class MLP(nn.Module):
    """SwiGLU MLP ``down(silu(gate(x)) * up(x))``."""

    def __init__(self, cfg: DrafterConfig):
        super().__init__()
        self.gate_proj = nn.Linear(cfg.hidden_size, cfg.intermediate_size, bias=False)
        self.up_proj = nn.Linear(cfg.hidden_size, cfg.intermediate_size, bias=False)
        self.down_proj = nn.Linear(cfg.intermediate_size, cfg.hidden_size, bias=False)

    def forward(self, x):
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


class DecoderLayer(nn.Module):
    """Pre-norm layer: ``x += Attn(norm(x), ctx); x += MLP(norm(x))`` (spec 1.5)."""

    def __init__(self, cfg: DrafterConfig):
        super().__init__()
        self.self_attn = Attention(cfg)
        self.mlp = MLP(cfg)
        self.input_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.post_attention_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)

    def forward(self, x, kc, vc, cos_b, sin_b, ctx_visible=None):
        """``x [B, N, bs, H]`` block rows; ``kc, vc [B, nkv, S, d]`` this layer's context K/V; ``cos_b/sin_b
        [B, N*bs, d]`` RoPE of the block positions. Returns the new ``x``."""
        B, N, bs, H = x.shape
        a = self.self_attn
        h = self.input_layernorm(x).reshape(B, N * bs, H)
        q = a.project_q(h, cos_b, sin_b).view(B, a.nh, N, bs, a.d)
        kb, vb = a.project_kv(h, cos_b, sin_b)
        kb, vb = kb.view(B, a.nkv, N, bs, a.d), vb.view(B, a.nkv, N, bs, a.d)
        o = block_attention(q, kc, vc, kb, vb, ctx_visible)  # [B, nh, N, bs, d]
        o = o.permute(0, 2, 3, 1, 4).reshape(B, N, bs, a.nh * a.d)
        x = x + a.o_proj(o)
        return x + self.mlp(self.post_attention_layernorm(x))


class DrafterCache:
    """The drafter's KV cache of CONTEXT rows (spec 1.6): per layer keys/values ``[1, nkv, length, d]``.

    ``length`` = number of context positions held (positions ``0..length-1``); ``crop(n)`` keeps the first ``n``.
    """

    def __init__(self, n_layers: int):
        self.keys: list[torch.Tensor | None] = [None] * n_layers
        self.values: list[torch.Tensor | None] = [None] * n_layers
        self.length = 0

    def crop(self, n: int) -> None:
        """Keep the first ``n`` context entries (``0 <= n <= length``; raises ValueError otherwise)."""
        if not 0 <= n <= self.length:
            raise ValueError(f"cannot crop a drafter cache of length {self.length} to {n}")
        for i in range(len(self.keys)):
            if self.keys[i] is not None:
                self.keys[i] = self.keys[i][:, :, :n]
                self.values[i] = self.values[i][:, :, :n]
        self.length = n


# ----------------------------------------------------------------------------------------------------------------
# the drafter


class DFlashDrafter(nn.Module):
    """DFlash block-diffusion drafter (DFlash arXiv 2602.06036; spec 1.2-1.6). See the module docstring.

    Parameters: ``fc.weight [H, k*H]``, ``hidden_norm.weight [H]``, ``layers.i.*`` (Qwen3 names), ``norm.weight [H]``,
    and ``mask_embedding [H]`` when ``mask_token_id`` is None. Buffer ``draft_vocab`` (int64 ``[Vd]``) when a draft
    vocabulary is used. The target's ``embed_tokens`` and ``lm_head`` are passed in at call time, never stored.
    """

    def __init__(self, cfg: DrafterConfig, draft_vocab: torch.Tensor | None = None):
        super().__init__()
        self.config = cfg
        H, k = cfg.hidden_size, len(cfg.target_layer_ids)
        self.fc = nn.Linear(k * H, H, bias=False)
        self.hidden_norm = RMSNorm(H, cfg.rms_norm_eps)
        self.layers = nn.ModuleList([DecoderLayer(cfg) for _ in range(cfg.num_hidden_layers)])
        self.norm = RMSNorm(H, cfg.rms_norm_eps)
        self.mask_embedding = nn.Parameter(torch.zeros(H)) if cfg.mask_token_id is None else None
        if draft_vocab is not None:
            self.register_buffer("draft_vocab", torch.as_tensor(draft_vocab, dtype=torch.long).clone())
        else:
            self.draft_vocab = None
        self._head_key = None
        self._head = None
        self._vocab_np = None
        # dtree.kernels.KernelTable choosing the output head's matmul kernel (None: F.linear); set by load_drafter on CPU
        self.head_kernels = None
        self.reset_parameters()

    def reset_parameters(self, std: float = 0.02) -> None:
        """Normal(0, std) linear weights, zero biases, unit norms, zero mask vector."""
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.normal_(m.weight, std=std)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, RMSNorm):
                nn.init.ones_(m.weight)

    # -- pieces ---------------------------------------------------------------------------------------------------

    @property
    def target_layer_ids(self) -> list[int]:
        return self.config.target_layer_ids

    @property
    def block_size(self) -> int:
        return self.config.block_size

    def extract_features(self, hidden_states) -> torch.Tensor:
        """Concatenate the target features the drafter reads (spec 1.2).

        Args: ``hidden_states``: the HF tuple from ``output_hidden_states=True`` (element 0 = embedding output,
        element ``j+1`` = output of decoder layer ``j``), each ``[B, T, H]``.
        Returns ``[B, T, k*H]`` in the hidden states' dtype (layer id ``j`` -> ``hidden_states[j+1]``).
        """
        return torch.cat([hidden_states[j + 1] for j in self.target_layer_ids], dim=-1)

    def fuse(self, features: torch.Tensor) -> torch.Tensor:
        """``hidden_norm(fc(features))``: ``[B, T, k*H] -> [B, T, H]`` (spec 1.3)."""
        return self.hidden_norm(self.fc(features.to(self.fc.weight.dtype)))

    def block_embeddings(self, target_model, anchors: torch.Tensor) -> torch.Tensor:
        """Embeddings of the noise blocks ``[anchor, MASK x (bs-1)]`` (spec 1.4).

        ``anchors``: int64 ``[B, N]`` token ids. Returns ``[B, N, bs, H]`` in the drafter's dtype: row 0 = the
        target's embedding of the anchor; MASK rows = ``mask_embedding`` or the target embedding of ``mask_token_id``.
        """
        emb = target_model.get_input_embeddings()
        wdt = self.fc.weight.dtype
        a = emb(anchors).to(wdt)  # [B, N, H]
        if self.mask_embedding is not None:
            m = self.mask_embedding.to(wdt)
        else:
            m = emb(torch.tensor([self.config.mask_token_id], device=anchors.device))[0].to(wdt)
        B, N = anchors.shape
        masks = m.expand(B, N, self.block_size - 1, m.shape[-1])
        return torch.cat([a[:, :, None], masks], dim=2)

    def head_weight(self, target_model) -> torch.Tensor:
        """Rows of the target's ``lm_head`` for the draft vocabulary ``[Vd, H]`` (all rows ``[V, H]`` without one).

        Gathered once per (target weight, dtype) and cached; frozen (no gradient flows into the target).
        """
        w = target_model.get_output_embeddings().weight
        key = (w.data_ptr(), w.dtype, self.fc.weight.dtype, None if self.draft_vocab is None else self.draft_vocab.data_ptr())
        if self._head_key != key:
            hw = w.detach() if self.draft_vocab is None else w.detach().index_select(0, self.draft_vocab.to(w.device))
            self._head = hw.to(self.fc.weight.dtype)
            self._head_key = key
        return self._head

    def run_layers(self, x, ctx, ctx_pos, block_pos, ctx_visible=None, cache: DrafterCache | None = None):
        """Run the drafter layers on block rows.

        ``x [B, N, bs, H]`` block embeddings; ``ctx [B, S_new, H]`` fused NEW context rows at positions
        ``ctx_pos [B, S_new]``; ``block_pos [B, N, bs]`` absolute positions of the block rows; ``ctx_visible``
        bool ``[B, N, S]`` over ALL context rows (cached + new); ``cache``: when given (B must be 1) the new context
        K/V are appended to it and attention runs over the cached rows too. Returns final-normed ``[B, N, bs, H]``.
        """
        B, N, bs, H = x.shape
        d = self.config.head_dim
        cos_c, sin_c = rope_cos_sin(ctx_pos, d, self.config.rope_theta, x.dtype)
        cos_b, sin_b = rope_cos_sin(block_pos.reshape(B, N * bs), d, self.config.rope_theta, x.dtype)
        for i, layer in enumerate(self.layers):
            kc, vc = layer.self_attn.project_kv(ctx, cos_c, sin_c)
            if cache is not None:
                if cache.keys[i] is not None:
                    kc = torch.cat([cache.keys[i], kc], dim=2)
                    vc = torch.cat([cache.values[i], vc], dim=2)
                cache.keys[i], cache.values[i] = kc, vc
            x = layer(x, kc, vc, cos_b, sin_b, ctx_visible)
        if cache is not None:
            cache.length += ctx.shape[1]
        return self.norm(x)

    # -- inference API used by the engine ---------------------------------------------------------------------------

    def new_cache(self) -> DrafterCache:
        """An empty drafter KV cache (``length == 0``)."""
        return DrafterCache(len(self.layers))

    @torch.no_grad()
    def draft_logits(self, target_model, cache: DrafterCache, new_features: torch.Tensor, anchor: int,
                     start: int) -> torch.Tensor:
        """One draft round (spec 1.6-1.7): per-depth log-probabilities of the next ``gamma = bs-1`` tokens.

        Args:
            target_model: the HF causal LM whose ``embed_tokens``/``lm_head`` the drafter uses.
            cache: this sequence's :class:`DrafterCache`; holds context positions ``[0, cache.length)``.
            new_features: ``[1, start - cache.length, k*H]`` target features (see :meth:`extract_features`) of the
                positions ``[cache.length, start)``, any float dtype.
            anchor: token id at position ``start`` (the last token the target chose; its KV is not in any cache).
            start: number of committed tokens = position of the anchor.
        Returns:
            float32 ``[gamma, V_target]`` log-probabilities; row ``i-1`` is the marginal for position ``start+i``
            (``i = 1..gamma``). Tokens outside the draft vocabulary get ``-inf``.
        Side effect: the cache then holds exactly ``start`` context entries (block K/V are never stored).
        Raises ValueError when the feature count does not match ``start - cache.length``.
        """
        logp = torch.log_softmax(self._draft_head_logits(target_model, cache, new_features, anchor, start), dim=-1)
        if self.draft_vocab is None:
            return logp
        V = target_model.get_output_embeddings().weight.shape[0]
        full = torch.full((logp.shape[0], V), float("-inf"), device=logp.device)
        full[:, self.draft_vocab.to(logp.device)] = logp
        return full

    @torch.no_grad()
    def draft_marginals(self, target_model, cache: DrafterCache, new_features: torch.Tensor, anchor: int, start: int,
                        k: int):
        """One draft round straight to its top-``k`` marginals: what ``dtree.trees.topk_marginals(draft_logits(...),
        k)`` gives (same ids and log-probs, up to the order of exactly tied candidates), without spreading the draft
        vocabulary's log-probs over the whole target vocabulary first (a ``[gamma, V]`` fill, scatter, second softmax
        and top-k over V rows the drafter can never pick). Arguments as :meth:`draft_logits`; ``k`` >= 1, capped at
        the draft vocabulary's size. Returns a :class:`dtree.trees.Marginals` ``[gamma, k]`` with target token ids.
        """
        from .trees import Marginals, topk_marginals

        marg = topk_marginals(self._draft_head_logits(target_model, cache, new_features, anchor, start), k)
        if self.draft_vocab is None:
            return marg
        if self._vocab_np is None or len(self._vocab_np) != len(self.draft_vocab):
            self._vocab_np = self.draft_vocab.cpu().numpy()  # host copy, once (the buffer never changes in serving)
        return Marginals(tokens=self._vocab_np[marg.tokens], logprobs=marg.logprobs)

    def _draft_head_logits(self, target_model, cache: DrafterCache, new_features: torch.Tensor, anchor: int,
                           start: int) -> torch.Tensor:
        """Float32 logits ``[gamma, Vd]`` over the draft vocabulary (``[gamma, V]`` without one); updates ``cache``."""
        T_new = new_features.shape[1]
        if new_features.dim() != 3 or new_features.shape[0] != 1 or cache.length + T_new != start:
            raise ValueError(f"new_features {tuple(new_features.shape)} must be [1, start - cache.length, k*H] "
                             f"(start={start}, cache.length={cache.length})")
        dev = self.fc.weight.device
        ctx = self.fuse(new_features.to(dev))
        ctx_pos = torch.arange(cache.length, start, device=dev)[None]
        block_pos = torch.arange(start, start + self.block_size, device=dev)[None, None]
        x = self.block_embeddings(target_model, torch.tensor([[anchor]], device=dev))
        h = self.run_layers(x, ctx, ctx_pos, block_pos, None, cache)[0, 0, 1:]  # [gamma, H]
        return product_kernel(self.head_kernels, self.head_weight(target_model), h).float()


# ----------------------------------------------------------------------------------------------------------------
# checkpoint I/O


def init_from_target(drafter: DFlashDrafter, target_model, layer_ids: list[int] | None = None) -> None:
    """Copy target decoder layers into the drafter layers (same names/shapes when ``qk_norm`` is off and the sizes
    match); ``norm`` and ``hidden_norm`` start from the target's final norm / first copied layer's input norm; the mask
    vector starts at the mean target embedding. Default ``layer_ids``: the target's last ``num_hidden_layers``.
    """
    tl = target_model.model.layers
    n = len(drafter.layers)
    layer_ids = layer_ids if layer_ids is not None else list(range(len(tl) - n, len(tl)))
    with torch.no_grad():
        for dl, j in zip(drafter.layers, layer_ids):
            src = tl[j].state_dict()
            own = dl.state_dict()
            for name, t in src.items():
                if name in own and own[name].shape == t.shape:
                    own[name].copy_(t.to(own[name].dtype))
        drafter.norm.weight.copy_(target_model.model.norm.weight.to(drafter.norm.weight.dtype))
        drafter.hidden_norm.weight.copy_(tl[layer_ids[0]].input_layernorm.weight.to(drafter.norm.weight.dtype))
        if drafter.mask_embedding is not None:
            drafter.mask_embedding.copy_(target_model.get_input_embeddings().weight.float().mean(0).to(
                drafter.mask_embedding.dtype))


def save_drafter(drafter: DFlashDrafter, path: str | Path, dtype: torch.dtype | None = torch.bfloat16) -> Path:
    """Write ``config.json`` and ``model.safetensors`` (weights in ``dtype``, ``draft_vocab`` as int64) to the
    folder ``path`` (created), each file replaced atomically. Returns the folder."""
    from safetensors.torch import save_file

    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    sd = {}
    for k, v in drafter.state_dict().items():
        v = v.detach().cpu()
        if v.is_floating_point() and dtype is not None:
            v = v.to(dtype)
        sd[k] = v.contiguous()
    fd, tmp = tempfile.mkstemp(dir=path, suffix=".tmp")
    os.close(fd)
    save_file(sd, tmp, metadata={"format": "pt"})
    os.chmod(tmp, 0o644)
    os.replace(tmp, path / "model.safetensors")
    fd, tmp = tempfile.mkstemp(dir=path, suffix=".tmp")
    os.close(fd)
    drafter.config.to_json(tmp)
    os.chmod(tmp, 0o644)
    os.replace(tmp, path / "config.json")
    return path


def drafter_dtype_name(drafter) -> str | None:
    """The dtype name (``float32`` / ``bfloat16`` / ``float16``) of a drafter's weights; None without a drafter or
    parameters. It sets Cd, so runs record it and cost profiles are kept per it."""
    from .models import dtype_name

    p = None if drafter is None else next(iter(drafter.parameters()), None)
    return None if p is None else dtype_name(p.dtype)


def drafter_head_kernel(drafter) -> str:
    """The matmul kernel of a drafter's output head in a draft step (:mod:`dtree.kernels` name; ``linear`` without a
    measured choice). It sets much of Cd on CPU, so runs record it and cost profiles are kept per it."""
    table = getattr(drafter, "head_kernels", None)
    if table is None:
        return "linear"
    picks = next(iter(table.choice.values()), [])
    return picks[-1] if picks else "linear"


def read_drafter_config(path: str | Path) -> DrafterConfig:
    """The :class:`DrafterConfig` of a drafter folder, read without loading any weights (cheap: callers check a
    user's ``--drafter`` with it before loading the target).

    Raises :class:`dtree.errors.InputError` (field ``"drafter"``) when ``path`` is not a folder holding
    ``config.json`` and ``model.safetensors``, or when ``config.json`` cannot be read or lacks a required field.
    """
    path = Path(path)
    if not (path / "config.json").is_file() or not (path / "model.safetensors").is_file():
        raise InputError("drafter", f"{str(path)!r} must be a folder with config.json and model.safetensors")
    try:
        return DrafterConfig.from_json(path / "config.json")
    except (json.JSONDecodeError, TypeError, ValueError, OSError) as e:
        if isinstance(e, InputError):
            raise
        raise InputError("drafter", f"cannot read {path / 'config.json'}: {e}") from e


def check_drafter_shape(cfg: DrafterConfig, target_config) -> None:
    """Check that a drafter config fits a target's config (a ``transformers`` ``PretrainedConfig``, or any object
    with ``hidden_size`` and ``num_hidden_layers``) before any weights are loaded: the hidden size, the number of
    target layers and the ``target_layer_ids`` the drafter reads its context features from. (The vocabulary is
    checked by :func:`load_drafter` against the loaded output embeddings, whose row count a config may not state.)

    Raises:
        InputError (field ``"drafter"``): a mismatch, with both values in the message.
    """
    nt = int(target_config.num_hidden_layers)
    if cfg.hidden_size != int(target_config.hidden_size):
        raise InputError("drafter", f"hidden_size {cfg.hidden_size} does not match the target's "
                                    f"{target_config.hidden_size}")
    if cfg.num_target_layers != nt:
        raise InputError("drafter", f"num_target_layers {cfg.num_target_layers} does not match the target's {nt} layers")
    if any(not 0 <= j < nt for j in cfg.target_layer_ids):
        raise InputError("drafter", f"target_layer_ids {cfg.target_layer_ids} must lie in [0, {nt - 1}]")


def load_drafter(path: str | Path, target, dtype: torch.dtype | str | None = None) -> DFlashDrafter:
    """Load a drafter folder (``config.json`` + ``model.safetensors``) for ``target`` (a :class:`dtree.models.Target`
    or an HF causal LM), on the target's device, in the target's dtype unless ``dtype`` is given, eval mode, no
    gradients, with the target's few-row matmul kernels when it has them (:mod:`dtree.kernels`). (Which dtype drafts
    faster next to a bf16 target depends on the CPU: :func:`dtree.backend.load_drafter_fastest` times both; features
    and embeddings are cast on the way in, the output is float32 either way.)

    Accepts dtree and z-lab layouts (a leading ``model.`` in parameter names is stripped).
    Raises :class:`dtree.errors.InputError` (field ``"drafter"``) when the folder or a file is missing or corrupt,
    when parameters are missing/unexpected/mis-shaped, or when the checkpoint does not fit the target: hidden size,
    number of target layers, ``target_layer_ids`` out of range, ``vocab_size``, ``mask_token_id`` or ``draft_vocab``
    ids outside the target vocabulary.
    """
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    model = getattr(target, "model", target)
    tcfg = model.config
    path = Path(path)
    cfg = read_drafter_config(path)
    V = int(model.get_output_embeddings().weight.shape[0])
    check_drafter_shape(cfg, tcfg)
    if cfg.vocab_size is not None and cfg.vocab_size != V:
        raise InputError("drafter", f"vocab_size {cfg.vocab_size} does not match the target's vocabulary of {V}")
    if cfg.mask_token_id is not None and not 0 <= cfg.mask_token_id < V:
        raise InputError("drafter", f"mask_token_id {cfg.mask_token_id} is outside the target vocabulary [0, {V})")
    try:
        sd = load_file(str(path / "model.safetensors"))
    except (SafetensorError, OSError, ValueError) as e:
        raise InputError("drafter", f"cannot read {path / 'model.safetensors'}: {e}") from e
    sd = {(k[6:] if k.startswith("model.") else k): v for k, v in sd.items()}
    dv = sd.pop("draft_vocab", None)
    if dv is not None:
        if dv.dim() != 1 or dv.numel() == 0 or int(dv.min()) < 0 or int(dv.max()) >= V:
            raise InputError("drafter", f"draft_vocab ids must be in [0, {V}) (target vocabulary)")
    drafter = DFlashDrafter(cfg, draft_vocab=dv)
    own = drafter.state_dict()
    own.pop("draft_vocab", None)
    missing = sorted(set(own) - set(sd))
    unexpected = sorted(set(sd) - set(own))
    if missing or unexpected:
        raise InputError("drafter", f"checkpoint parameters do not match its config: missing {missing[:5]}, "
                                    f"unexpected {unexpected[:5]}")
    for k, v in sd.items():
        if tuple(v.shape) != tuple(own[k].shape):
            raise InputError("drafter", f"parameter {k} has shape {tuple(v.shape)}, config implies {tuple(own[k].shape)}")
    drafter.load_state_dict(sd, strict=False)
    p = model.get_output_embeddings().weight
    if dtype is not None:
        from .models import parse_dtype

        dtype = parse_dtype(dtype)
    drafter.to(device=p.device, dtype=dtype or p.dtype)
    if drafter.draft_vocab is not None:
        drafter.draft_vocab = drafter.draft_vocab.to(device=p.device, dtype=torch.long)
    drafter.eval()
    for q in drafter.parameters():
        q.requires_grad_(False)
    from .kernels import install_linear_kernels, installed_table, load_or_tune_product

    table = installed_table(model)
    if table is not None:  # the target's few-row kernels (dtree.kernels) serve the drafter's layers too,
        install_linear_kernels(drafter, table)
        # and its output head, the largest product of a draft step, gets its own measured kernel
        drafter.head_kernels = load_or_tune_product(drafter.head_weight(model), drafter.block_size - 1, "drafter head")
    return drafter
