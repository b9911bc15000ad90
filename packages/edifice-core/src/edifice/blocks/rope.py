"""Rotary position embedding (RoPE) with partial rotation and context-extension scalings.

Su et al. (2021), "RoFormer: Enhanced Transformer with Rotary Position Embedding", https://arxiv.org/abs/2104.09864.
Features are rotated in pairs by the angle ``m θ_i`` (eq. 34) with ``θ_i = base^(-2i/d)``, ``i = 0 .. d/2 - 1``
(eq. 15). Pairs use the *rotate-half* layout -- feature ``i`` pairs with ``i + d/2`` -- as GPT-NeoX and transformers'
Llama do, so their weights map with no permutation. With ``rotary_dim < head_dim`` only the first ``rotary_dim``
features rotate (GPT-NeoX / Phi partial rotary) and ``d = rotary_dim`` in θ_i.

Scalings (:class:`RopeScaling`, ``kind``):

* ``"linear"`` -- position interpolation, ``θ_i / s`` (Chen et al. 2023, https://arxiv.org/abs/2306.15595, eq. 4).
* ``"ntk"`` -- NTK-aware base change ``b' = b · s^(d/(d-2))`` (Peng et al. 2023, YaRN paper eq. 16).
* ``"dynamic_ntk"`` -- the same with ``s`` grown from the current length ``L`` (positions' max + 1):
  ``b' = b · (s L / L_orig - (s - 1))^(d/(d-2))`` once ``L > L_orig``, as transformers' "dynamic" type. The angles
  then depend on the longest position in the call, so a KV cache built at another length sees other angles.
* ``"yarn"`` -- Peng et al. (2023), "YaRN: Efficient Context Window Extension of Large Language Models",
  https://arxiv.org/abs/2309.00071: per frequency, blend interpolation ``θ_i / s`` and extrapolation ``θ_i`` by a ramp
  (eqs. 18-20, α = ``beta_slow``, β = ``beta_fast`` rotations over ``L_orig``), and scale cos/sin by the attention
  temperature ``sqrt(1/t) = 0.1 ln(s) + 1`` (eq. 22). Deviation from the paper's text: the ramp is linear in the
  feature index between the indices where ``r = β`` and ``r = α`` (floored/ceiled), as in the authors' reference code
  and transformers, rather than linear in ``r``.
* ``"llama3"`` -- Llama 3.1's frequency-dependent interpolation: wavelengths above ``L_orig / low_freq_factor`` are
  divided by ``s``, those below ``L_orig / high_freq_factor`` kept, and the band between blended smoothly.

Angles are computed in fp32 on the fly from the positions (no buffer), so they stay exact on the meta device, after
``load_state_dict(assign=True)`` and when the model is cast to bf16.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from typing import Any, Literal

import torch
from torch import nn

from edifice._text import did_you_mean

__all__ = ["RopeScaling", "RotaryEmbedding", "apply_rotary", "rotate_half"]

ScalingKind = Literal["none", "linear", "ntk", "dynamic_ntk", "yarn", "llama3"]
_KINDS: tuple[str, ...] = ("none", "linear", "ntk", "dynamic_ntk", "yarn", "llama3")
# transformers' `rope_type` names of the same scalings.
_KIND_ALIASES = {"default": "none", "dynamic": "dynamic_ntk"}
_NEEDS_ORIGINAL = ("dynamic_ntk", "yarn", "llama3")


@dataclasses.dataclass(frozen=True)
class RopeScaling:
    """How RoPE is stretched past its training length; torch-free and JSON-native (configs store it as a dict)."""

    kind: ScalingKind = "none"
    """Which scaling: none, linear, ntk, dynamic_ntk, yarn or llama3."""
    factor: float = 1.0
    """Context-extension factor s (new length / original length)."""
    original_max_position_embeddings: int | None = None
    """Training context length L_orig (needed by dynamic_ntk, yarn and llama3)."""
    beta_fast: float = 32.0
    """YaRN β: frequencies with more than β rotations over L_orig are extrapolated (kept)."""
    beta_slow: float = 1.0
    """YaRN α: frequencies with fewer than α rotations over L_orig are interpolated (divided by s)."""
    attention_factor: float | None = None
    """YaRN cos/sin scale; None derives 0.1 ln(s) + 1 (eq. 22) or the mscale ratio."""
    mscale: float | None = None
    """DeepSeek-style YaRN: numerator mscale of the attention factor (with mscale_all_dim)."""
    mscale_all_dim: float | None = None
    """DeepSeek-style YaRN: denominator mscale of the attention factor (with mscale)."""
    truncate: bool = True
    """YaRN: round the ramp's ends to whole feature indices (floor/ceil), as the reference code does."""
    low_freq_factor: float = 1.0
    """Llama 3: wavelengths above L_orig / low_freq_factor are fully interpolated."""
    high_freq_factor: float = 4.0
    """Llama 3: wavelengths below L_orig / high_freq_factor are kept."""

    def __post_init__(self) -> None:
        if self.kind not in _KINDS:
            raise ValueError(
                f"RopeScaling: unknown kind {self.kind!r}; valid kinds: {', '.join(_KINDS)}."
                + did_you_mean(self.kind, _KINDS)
            )
        if self.kind != "none" and not self.factor >= 1.0:
            raise ValueError(f"RopeScaling({self.kind!r}): factor must be >= 1, got {self.factor}")
        if self.kind in _NEEDS_ORIGINAL and not (self.original_max_position_embeddings or 0) > 0:
            raise ValueError(f"RopeScaling({self.kind!r}): original_max_position_embeddings must be a positive int")
        if self.kind == "llama3" and not self.high_freq_factor > self.low_freq_factor > 0:
            raise ValueError(
                "RopeScaling('llama3'): need high_freq_factor > low_freq_factor > 0, got "
                f"{self.high_freq_factor} and {self.low_freq_factor}"
            )

    @classmethod
    def parse(cls, value: RopeScaling | Mapping[str, Any] | None) -> RopeScaling:
        """Accept a :class:`RopeScaling`, ``None`` or a dict (``kind``, or transformers' ``rope_type``/``type``)."""
        if value is None:
            return cls()
        if isinstance(value, RopeScaling):
            return value
        if not isinstance(value, Mapping):
            raise TypeError(f"RoPE scaling must be a RopeScaling, a dict or None, got {type(value).__name__}")
        fields = {f.name for f in dataclasses.fields(cls)}
        args = dict(value)
        for key in ("rope_type", "type"):
            if key in args:
                args.setdefault("kind", args.pop(key))
        if "kind" in args:
            args["kind"] = _KIND_ALIASES.get(args["kind"], args["kind"])
        unknown = sorted(set(args) - fields)
        if unknown:
            raise ValueError(
                f"RoPE scaling: unknown key(s) {', '.join(map(repr, unknown))}; valid: {', '.join(sorted(fields))}"
            )
        return cls(**args)

    def attention_scaling(self) -> float:
        """The factor cos and sin are multiplied by (YaRN's temperature; 1 for the other kinds)."""
        if self.kind != "yarn":
            return 1.0
        if self.attention_factor is not None:
            return self.attention_factor
        if self.mscale and self.mscale_all_dim:
            return _yarn_mscale(self.factor, self.mscale) / _yarn_mscale(self.factor, self.mscale_all_dim)
        return _yarn_mscale(self.factor)


def _yarn_mscale(factor: float, mscale: float = 1.0) -> float:
    # YaRN eq. 22: sqrt(1/t) = 0.1 ln(s) + 1 (DeepSeek generalises the 0.1 to 0.1 * mscale).
    return 1.0 if factor <= 1.0 else 0.1 * mscale * math.log(factor) + 1.0


def _yarn_ramp_bounds(scaling: RopeScaling, dim: int, base: float) -> tuple[float, float]:
    """Feature indices where the frequency completes β (low) and α (high) rotations over L_orig (YaRN eqs. 17-19)."""
    original = scaling.original_max_position_embeddings
    assert original is not None  # checked by RopeScaling

    def index_for(rotations: float) -> float:
        # Solve L_orig / λ_i = rotations for i, with λ_i = 2π base^(2i/d).
        return dim * math.log(original / (rotations * 2 * math.pi)) / (2 * math.log(base))

    low, high = index_for(scaling.beta_fast), index_for(scaling.beta_slow)
    if scaling.truncate:
        low, high = math.floor(low), math.ceil(high)
    return max(low, 0), min(high, dim - 1)


class RotaryEmbedding(nn.Module):
    """Computes RoPE's ``(cos, sin)`` tables in fp32 for integer positions ``[T]`` or ``[B, T]``."""

    def __init__(
        self,
        head_dim: int,
        *,
        rotary_dim: int | None = None,
        base: float = 10000.0,
        scaling: RopeScaling | Mapping[str, Any] | None = None,
    ) -> None:
        super().__init__()
        rotary_dim = head_dim if rotary_dim is None else rotary_dim
        if not 0 < rotary_dim <= head_dim or rotary_dim % 2:
            raise ValueError(
                f"RotaryEmbedding: rotary_dim must be even and in (0, head_dim={head_dim}], got {rotary_dim}"
            )
        if not base > 1.0:
            raise ValueError(f"RotaryEmbedding: base must be > 1, got {base}")
        self.head_dim = head_dim
        self.rotary_dim = rotary_dim
        self.base = float(base)
        self.scaling = RopeScaling.parse(scaling)
        self.attention_scaling = self.scaling.attention_scaling()
        if self.scaling.kind in ("ntk", "dynamic_ntk") and rotary_dim <= 2:
            raise ValueError(f"RotaryEmbedding: {self.scaling.kind} scaling needs rotary_dim > 2, got {rotary_dim}")

    def reset_parameters(self) -> None:
        """Nothing to initialise: RoPE has no parameters and no buffers."""

    def inv_freq(self, device: torch.device | None = None, seq_len: torch.Tensor | None = None) -> torch.Tensor:
        """The scaled inverse frequencies θ_i, ``[rotary_dim // 2]`` fp32 (``seq_len`` drives dynamic_ntk)."""
        d, s = self.rotary_dim, self.scaling
        exponent = torch.arange(0, d, 2, device=device, dtype=torch.float32) / d  # 2i/d
        base: float | torch.Tensor = self.base
        if s.kind == "ntk":
            base = self.base * s.factor ** (d / (d - 2))
        elif s.kind == "dynamic_ntk" and seq_len is not None:
            original = float(s.original_max_position_embeddings or 0)
            length = seq_len.float().clamp(min=original)
            base = self.base * (s.factor * length / original - (s.factor - 1)) ** (d / (d - 2))
        inv_freq = 1.0 / base**exponent  # θ_i, eq. 15
        if s.kind == "linear":
            return inv_freq / s.factor
        if s.kind == "yarn":
            low, high = _yarn_ramp_bounds(s, d, self.base)
            if low == high:
                high += 0.001  # a one-index ramp would divide by zero
            index = torch.arange(d // 2, device=device, dtype=torch.float32)
            # γ = 1 keeps (extrapolates) high frequencies, γ = 0 interpolates low ones (eq. 20).
            gamma = 1.0 - ((index - low) / (high - low)).clamp(0.0, 1.0)
            return inv_freq / s.factor * (1.0 - gamma) + inv_freq * gamma
        if s.kind == "llama3":
            return self._llama3(inv_freq)
        return inv_freq

    def _llama3(self, inv_freq: torch.Tensor) -> torch.Tensor:
        s = self.scaling
        original = float(s.original_max_position_embeddings or 0)
        wavelen = 2 * math.pi / inv_freq
        # Smooth blend between θ/s (long wavelengths) and θ (short ones) across the middle band.
        smooth = ((original / wavelen - s.low_freq_factor) / (s.high_freq_factor - s.low_freq_factor)).clamp(0.0, 1.0)
        return (1.0 - smooth) * inv_freq / s.factor + smooth * inv_freq

    def forward(self, positions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``positions [T]`` or ``[B, T]`` -> fp32 ``(cos, sin)``, each ``[T, rotary_dim]`` or ``[B, T, rotary_dim]``.

        The tables already carry the scaling's attention factor (YaRN).
        """
        if positions.dim() not in (1, 2) or positions.dtype == torch.bool or positions.is_complex():
            raise ValueError(
                f"RotaryEmbedding: positions must be a real tensor [T] or [B, T], got {positions.dtype} "
                f"{list(positions.shape)}"
            )
        seq_len = positions.max() + 1 if self.scaling.kind == "dynamic_ntk" and positions.numel() else None
        inv_freq = self.inv_freq(positions.device, seq_len)
        angles = positions.float().unsqueeze(-1) * inv_freq  # (..., T, d/2): m θ_i
        angles = torch.cat((angles, angles), dim=-1)  # rotate-half layout: feature i and i + d/2 share θ_i
        cos, sin = angles.cos(), angles.sin()
        if self.attention_scaling != 1.0:
            cos, sin = cos * self.attention_scaling, sin * self.attention_scaling
        return cos, sin

    def extra_repr(self) -> str:
        kind = self.scaling.kind
        extra = "" if kind == "none" else f", scaling={kind}(factor={self.scaling.factor})"
        return f"head_dim={self.head_dim}, rotary_dim={self.rotary_dim}, base={self.base}{extra}"


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    """``[x1, x2] -> [-x2, x1]`` over the last dimension (the rotate-half pairing)."""
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((-x2, x1), dim=-1)


def apply_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate the first ``rotary_dim`` features of ``x [B, H, T, D]`` by ``cos/sin [T, R]`` or ``[B, T, R]``.

    Computes ``x cos + rotate_half(x) sin`` (RoFormer eq. 34 in rotate-half layout) in fp32 and casts back.
    """
    if x.dim() != 4:
        raise ValueError(f"apply_rotary: expected x [B, H, T, D], got {list(x.shape)}")
    if cos.shape != sin.shape or cos.dim() not in (2, 3):
        raise ValueError(
            "apply_rotary: cos and sin must share a shape [T, R] or [B, T, R], got "
            f"{list(cos.shape)} and {list(sin.shape)}"
        )
    rotary_dim = cos.shape[-1]
    if rotary_dim > x.shape[-1] or rotary_dim % 2 or cos.shape[-2] != x.shape[-2]:
        raise ValueError(
            f"apply_rotary: cos/sin {list(cos.shape)} do not fit x {list(x.shape)}: need T={x.shape[-2]} and an "
            f"even R <= D={x.shape[-1]}"
        )
    if cos.dim() == 3:  # (B, T, R) -> (B, 1, T, R), shared by every head
        cos, sin = cos.unsqueeze(1), sin.unsqueeze(1)
    rot = x[..., :rotary_dim].float()
    out = (rot * cos + rotate_half(rot) * sin).to(x.dtype)
    if rotary_dim == x.shape[-1]:
        return out
    return torch.cat((out, x[..., rotary_dim:]), dim=-1)
