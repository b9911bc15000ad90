"""Absolute position encodings and the diffusion timestep embedding.

* Sinusoidal: Vaswani et al. (2017), "Attention Is All You Need", https://arxiv.org/abs/1706.03762, §3.5:
  ``PE(pos, 2i) = sin(pos / 10000^(2i/d))``, ``PE(pos, 2i+1) = cos(pos / 10000^(2i/d))`` (interleaved).
* Learned: one trained vector per position (GPT, BERT), up to ``max_len`` positions.
* Timestep: Ho et al. (2020), "Denoising Diffusion Probabilistic Models", https://arxiv.org/abs/2006.11239 (App. B)
  and Dhariwal & Nichol (2021), "Diffusion Models Beat GANs on Image Synthesis", https://arxiv.org/abs/2105.05233:
  sinusoidal features of a (float) timestep, ``[sin(t ω_j), cos(t ω_j)]`` with
  ``ω_j = max_period^(-j / (half - downscale_freq_shift))``, then a two-layer MLP. ``flip_sin_to_cos`` puts the cosines
  first (ADM/DiT); DDPM uses ``downscale_freq_shift=1``. The options, the layout and the MLP's parameter names
  (``linear_1``, ``linear_2``) match diffusers' ``Timesteps`` + ``TimestepEmbedding``.

Frequencies and angles are computed in fp32 on the fly, so they stay exact on the meta device and under bf16 casts.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from edifice.blocks.activations import get_activation
from edifice.graphs import is_capturing

__all__ = ["LearnedPositionalEmbedding", "SinusoidalPositionalEmbedding", "TimestepEmbedding", "timestep_features"]


def _angles(positions: torch.Tensor, half: int, max_period: float, denominator: float) -> torch.Tensor:
    """``positions[..., None] * ω_j`` with ``ω_j = max_period^(-j / denominator)``, ``j < half``; fp32."""
    exponent = torch.arange(half, device=positions.device, dtype=torch.float32) / denominator
    return positions.float().unsqueeze(-1) * torch.exp(-math.log(max_period) * exponent)


class SinusoidalPositionalEmbedding(nn.Module):
    """The fixed sinusoidal encoding of Vaswani et al. (2017, §3.5): positions ``[...]`` -> ``[..., dim]`` fp32."""

    def __init__(self, dim: int, *, base: float = 10000.0) -> None:
        super().__init__()
        if dim <= 0 or dim % 2:
            raise ValueError(f"SinusoidalPositionalEmbedding: dim must be even and > 0, got {dim}")
        self.dim = dim
        self.base = base

    def reset_parameters(self) -> None:
        """Nothing to initialise: the encoding is fixed."""

    def forward(self, positions: torch.Tensor) -> torch.Tensor:
        """Encode ``positions`` (any shape, integer or float) as ``[..., dim]`` fp32 with sin/cos interleaved."""
        # pos / 10000^(2i/d) = pos * exp(-ln(10000) * i / (d/2)), i < d/2
        angles = _angles(positions, self.dim // 2, self.base, self.dim / 2)
        return torch.stack((angles.sin(), angles.cos()), dim=-1).flatten(-2)  # (..., d): [sin, cos] per pair

    def extra_repr(self) -> str:
        return f"{self.dim}, base={self.base}"


class LearnedPositionalEmbedding(nn.Embedding):
    """A trained vector per absolute position ``0 .. max_len - 1``; positions past the table raise a ValueError."""

    def __init__(self, max_len: int, dim: int) -> None:
        if max_len <= 0 or dim <= 0:
            raise ValueError(f"LearnedPositionalEmbedding: max_len and dim must be > 0, got {max_len} and {dim}")
        super().__init__(max_len, dim)
        self.max_len = max_len

    def reset_parameters(self) -> None:
        """``N(0, 0.02²)``, as GPT-2 and BERT initialise position tables."""
        nn.init.normal_(self.weight, std=0.02)

    def forward(self, positions: torch.Tensor) -> torch.Tensor:
        """``positions [...]`` (integers in ``[0, max_len)``) -> ``[..., dim]``."""
        self._check_range(positions)
        return super().forward(positions)

    def _check_range(self, positions: torch.Tensor) -> None:
        if positions.dtype.is_floating_point or positions.dtype == torch.bool:
            raise TypeError(f"LearnedPositionalEmbedding: positions must be integers, got {positions.dtype}")
        # The range check reads two numbers back from the device: skip it where that is impossible (compiled graphs,
        # CUDA-graph capture) or meaningless (meta tensors); the embedding lookup still fails there on a bad index.
        if positions.numel() == 0 or positions.is_meta or torch.compiler.is_compiling():
            return
        if positions.is_cuda and is_capturing():
            return
        low, high = int(positions.min()), int(positions.max())
        if low < 0 or high >= self.max_len:
            raise ValueError(
                f"LearnedPositionalEmbedding: positions must lie in [0, {self.max_len}) (max_len={self.max_len}), "
                f"got values in [{low}, {high}]"
            )

    def extra_repr(self) -> str:
        return f"max_len={self.max_len}, dim={self.embedding_dim}"


def timestep_features(
    timesteps: torch.Tensor,
    dim: int,
    *,
    flip_sin_to_cos: bool = False,
    downscale_freq_shift: float = 1.0,
    scale: float = 1.0,
    max_period: float = 10000.0,
) -> torch.Tensor:
    """Sinusoidal features of ``timesteps [B]`` (float or int) -> ``[B, dim]`` fp32 (odd ``dim``: a zero column last).

    ``[sin(s t ω_j), cos(s t ω_j)]_j`` with ``ω_j = max_period^(-j / (dim//2 - downscale_freq_shift))``; the two
    halves swap with ``flip_sin_to_cos``.
    """
    if timesteps.dim() != 1:
        raise ValueError(f"timestep_features: expected timesteps [B], got {list(timesteps.shape)}")
    half = dim // 2
    if half < 1 or half - downscale_freq_shift <= 0:
        raise ValueError(f"timestep_features: need dim >= 2 and dim // 2 > downscale_freq_shift, got dim={dim}")
    angles = scale * _angles(timesteps, half, max_period, half - downscale_freq_shift)  # (B, half)
    sin, cos = angles.sin(), angles.cos()
    features = torch.cat((cos, sin) if flip_sin_to_cos else (sin, cos), dim=-1)  # (B, 2 half)
    if dim % 2:
        features = torch.nn.functional.pad(features, (0, 1))
    return features


class TimestepEmbedding(nn.Module):
    """Diffusion timestep embedding: sinusoidal features of ``t`` then ``linear_2(act(linear_1(·)))``.

    Defaults follow ADM/DiT (cosines first, no frequency shift, 256 features, SiLU).
    """

    def __init__(
        self,
        embed_dim: int,
        *,
        frequency_dim: int = 256,
        out_dim: int | None = None,
        activation: str = "silu",
        flip_sin_to_cos: bool = True,
        downscale_freq_shift: float = 0.0,
        scale: float = 1.0,
        max_period: float = 10000.0,
    ) -> None:
        super().__init__()
        if embed_dim <= 0 or frequency_dim < 2 or (out_dim is not None and out_dim <= 0):
            raise ValueError(
                f"TimestepEmbedding: need embed_dim > 0, frequency_dim >= 2 and out_dim > 0, got {embed_dim}, "
                f"{frequency_dim} and {out_dim}"
            )
        self.frequency_dim = frequency_dim
        self.flip_sin_to_cos = flip_sin_to_cos
        self.downscale_freq_shift = downscale_freq_shift
        self.scale = scale
        self.max_period = max_period
        self.linear_1 = nn.Linear(frequency_dim, embed_dim)
        self.act = get_activation(activation)
        self.linear_2 = nn.Linear(embed_dim, out_dim or embed_dim)

    def reset_parameters(self) -> None:
        """PyTorch's default ``nn.Linear`` initialisation (diffusers' default); models may re-initialise."""
        self.linear_1.reset_parameters()
        self.linear_2.reset_parameters()

    def forward(self, timesteps: torch.Tensor) -> torch.Tensor:
        """``timesteps [B]`` -> ``[B, out_dim]`` in the parameters' dtype."""
        features = timestep_features(
            timesteps,
            self.frequency_dim,
            flip_sin_to_cos=self.flip_sin_to_cos,
            downscale_freq_shift=self.downscale_freq_shift,
            scale=self.scale,
            max_period=self.max_period,
        )
        y: torch.Tensor = self.linear_2(self.act(self.linear_1(features.to(self.linear_1.weight.dtype))))
        return y
