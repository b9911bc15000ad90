"""The pluggable denoiser networks and the base class of every denoising entry.

:class:`MLPDenoiser` is a time-embedded residual MLP for vectors ``[B, C]`` (what the toy 2-D distributions and flat
latents need). Images use the ``unet`` block that edifice-vision registers (the DDPM U-Net of Ho et al. 2020),
fetched by name through :func:`edifice.blocks.get` so that this distribution imports nothing of edifice-vision; the
specs declare ``requires_blocks=("unet",)``. :class:`DenoisingModel` wraps either one: ``forward(x, timestep,
class_labels)`` is the network's prediction, and subclasses add the paper's ``loss`` and ``sample``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

import edifice
from edifice.blocks.positional import TimestepEmbedding
from edifice.config import ArchConfig
from edifice.model import Model
from edifice_generative.configs._denoising import DenoisingConfig

__all__ = ["DenoisingModel", "MLPDenoiser"]


class _ResidualLayer(nn.Module):
    """``h + fc2(SiLU(fc1(SiLU(h)) + emb_proj(e)))``: one residual layer conditioned on the time embedding."""

    def __init__(self, width: int) -> None:
        super().__init__()
        self.fc1, self.emb_proj, self.fc2 = nn.Linear(width, width), nn.Linear(width, width), nn.Linear(width, width)

    def forward(self, h: Tensor, emb: Tensor) -> Tensor:
        out: Tensor = h + self.fc2(F.silu(self.fc1(F.silu(h)) + self.emb_proj(emb)))
        return out


class MLPDenoiser(nn.Module):
    """A time-embedded residual MLP: ``(x [B, C], t [B], class_labels [B] | None) -> [B, C]``.

    The time embedding is core's sinusoid + MLP (:class:`~edifice.blocks.positional.TimestepEmbedding`); a class
    embedding is added to it when ``num_classes > 0`` (as in the U-Net of Ho et al.'s code and ADM).
    """

    def __init__(self, channels: int, width: int, n_layers: int, *, num_classes: int = 0) -> None:
        super().__init__()
        self.time_embed = TimestepEmbedding(width, frequency_dim=width)
        self.class_embed = nn.Embedding(num_classes, width) if num_classes > 0 else None
        self.proj_in = nn.Linear(channels, width)
        self.layers = nn.ModuleList(_ResidualLayer(width) for _ in range(n_layers))
        self.proj_out = nn.Linear(width, channels)

    def forward(self, x: Tensor, timestep: Tensor, class_labels: Tensor | None = None) -> Tensor:
        emb = self.time_embed(timestep)
        if self.class_embed is not None and class_labels is not None:
            emb = emb + self.class_embed(class_labels)
        h = self.proj_in(x)
        for layer in self.layers:
            h = layer(h, emb)
        out: Tensor = self.proj_out(F.silu(h))
        return out


class DenoisingModel(Model):
    """A network ``f(x_t, t[, class]) -> prediction`` on vectors (MLP) or images (U-Net); subclasses add the
    training loss and the sampler. ``timestep`` is multiplied by :attr:`time_scale` before the sinusoidal embedding
    (flows map ``t ∈ [0, 1]`` onto the diffusion range ``[0, 1000]``)."""

    config_class: ClassVar[type[ArchConfig]] = DenoisingConfig
    config: DenoisingConfig
    #: Factor applied to ``timestep`` before the network's sinusoidal time embedding.
    time_scale: ClassVar[float] = 1.0

    def __init__(self, config: DenoisingConfig) -> None:
        # Fetched by name before anything is built: MissingDependency with the install line without edifice-vision.
        unet = edifice.blocks.get("unet") if config.denoiser == "unet" else None
        super().__init__(config)
        c = config
        self.net: nn.Module
        if unet is not None:
            self.net = unet(
                c.channels,
                base_features=c.hidden_size,
                channel_mults=c.channel_mults,
                layers_per_block=c.layers_per_block,
                attention_levels=c.attention_levels,
                num_heads=c.num_heads,
                dropout=c.dropout,
                norm_groups=c.norm_groups,
                num_classes=c.num_classes,
            )
        else:
            self.net = MLPDenoiser(c.channels, c.hidden_size, c.n_layers, num_classes=c.num_classes)

    def forward(self, x: Tensor, timestep: Tensor, class_labels: Tensor | None = None) -> Tensor:
        """The denoiser's prediction at noisy samples ``x`` and times ``timestep [B]``."""
        self.check_inputs(x=x, timestep=timestep, class_labels=class_labels)
        return self._denoise(x, timestep, class_labels)

    def _denoise(self, x: Tensor, timestep: Tensor, class_labels: Tensor | None) -> Tensor:
        out: Tensor = self.net(x, timestep * self.time_scale, class_labels)
        return out

    # -- helpers the losses and samplers share ------------------------------------------------------------------
    def sample_shape(self, batch_size: int) -> tuple[int, ...]:
        """The shape of ``batch_size`` samples: ``[B, channels]`` (MLP) or ``[B, channels, S, S]`` (U-Net)."""
        c = self.config
        if c.denoiser == "unet":
            return (batch_size, c.channels, c.image_size, c.image_size)
        return (batch_size, c.channels)

    @property
    def _device_dtype(self) -> tuple[torch.device, torch.dtype]:
        p = next(self.parameters())
        return p.device, p.dtype

    def _labels(self, batch_size: int, class_labels: Tensor | None) -> Tensor | None:
        """Check the sampler's ``class_labels``: required (``[batch_size]``) when the model is class-conditional."""
        if self.config.num_classes == 0:
            if class_labels is not None:
                raise ValueError(f"{self.arch}: class_labels given but the model is unconditional (num_classes=0)")
            return None
        if class_labels is None or tuple(class_labels.shape) != (batch_size,):
            raise ValueError(f"{self.arch}: sample needs class_labels of shape [{batch_size}] (num_classes > 0)")
        return class_labels

    def _data(self, batch: Mapping[str, Any]) -> tuple[Tensor, Tensor | None]:
        """The clean samples ``batch['x']`` and ``batch.get('class_labels')``, checked against the spec."""
        if "x" not in batch:
            raise ValueError(f"{self.arch}: loss needs batch['x'] (clean samples); got keys {sorted(batch)}")
        x, labels = batch["x"], batch.get("class_labels")
        t = torch.zeros(x.shape[0], device=x.device, dtype=x.dtype)
        self.check_inputs(x=x, timestep=t, class_labels=labels)
        return x, labels
