"""The Mamba-1 mixers of edifice-ssm's hybrids: one selective-scan body, and what each paper changes around it.

Every variant computes Mamba's block (Gu & Dao 2023, https://arxiv.org/abs/2312.00752, Fig. 3 and Algorithm 2)::

    (x, z) = in_proj(u);   x = SiLU(causal_conv1d(x))                 E = expand * d_model channels each
    (δ, B, C) = x_proj(x);   Δ = softplus(dt_proj(δ))                  Algorithm 2, steps 3-5
    h_t = exp(Δ_t A) h_{t-1} + Δ_t B_t x_t,   y_t = C_t h_t + D x_t    eqs. 2a, 2b and 4 (ZOH), ops.selective_scan
    out = out_proj(y * SiLU(z))

and differs in how ``(Δ, B, C)`` and the projections are parameterised:

* :class:`JambaMambaMixer` (Lieber et al. 2024, arXiv:2403.19887, §6.4, stabilising Mamba at scale): RMSNorm on the
  inner activations ``δ`` (before ``dt_proj``), ``B`` and ``C``, which stabilised training at scale.
* :class:`ZambaMambaMixer` (Glorioso et al. 2024, arXiv:2405.16712, as released and as transformers'
  ``ZambaMambaMixer``): the ``E`` channels are split into ``n_mamba_heads`` heads of ``P = E / heads`` channels, each
  with its own ``x_proj`` and ``dt_proj`` and hence its own ``B`` and ``C`` (groups of the selective scan).
* :class:`MixtureOfMambaMixer` (Liang et al. 2025, arXiv:2501.16295): ``in_proj``, ``x_proj``,
  ``dt_proj`` (with its bias) and ``out_proj`` are modality-specific, chosen per token by ``modality [B, T]``; the
  convolution, ``A`` and ``D`` are shared.

Padding zeroes the mixer's input and sets ``Δ = 0`` at padded positions (as :class:`edifice_ssm.mamba.MambaMixer`), so
the SSM state passes through them unchanged. The decoding state is :class:`edifice_ssm.mamba.MambaState`.

Legend: B batch, T time, E inner channels, N state size, R rank of Δ, h Mamba heads, P channels per head, M modalities.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from edifice.blocks.backbone import SequenceBackbone
from edifice.blocks.norms import get_norm
from edifice.graphs import is_capturing
from edifice_ssm.mamba import MambaMixer, MambaState, SelectiveMixer, check_mixer_args, dt_bias_init

__all__ = [
    "JambaMambaMixer",
    "MixtureOfMambaMixer",
    "ModalityLinear",
    "ModalityRoute",
    "ZambaMambaMixer",
    "positions_from_mask",
    "run_layers",
]


# -- Jamba ---------------------------------------------------------------------------------------------------------
class JambaMambaMixer(MambaMixer):
    """Jamba's Mamba mixer: :class:`~edifice_ssm.mamba.MambaMixer` with RMSNorm on ``δ``, ``B`` and ``C`` (§6.4)."""

    def __init__(self, d_model: int, *, norm_eps: float = 1e-6, **kwargs: Any) -> None:
        super().__init__(d_model, **kwargs)
        self.dt_layernorm = get_norm("rmsnorm", self.dt_rank, eps=norm_eps)
        self.b_layernorm = get_norm("rmsnorm", self.d_state, eps=norm_eps)
        self.c_layernorm = get_norm("rmsnorm", self.d_state, eps=norm_eps)

    @torch.no_grad()
    def reset_parameters(self) -> None:
        """Mamba's initialisation (S4D-real A, log-uniform Δ, D = 1) and unit gains on the inner norms."""
        super().reset_parameters()
        for name in ("dt_layernorm", "b_layernorm", "c_layernorm"):
            norm = getattr(self, name, None)  # absent while MambaMixer.__init__ runs its own reset
            if norm is not None:
                norm.reset_parameters()

    def selective_inputs(self, x: Tensor, route: Any) -> tuple[Tensor, Tensor, Tensor]:
        """``(δ, B, C) = x_proj(x)``, each RMS-normalised, then ``dt_proj(norm(δ))`` (bias in fp32)."""
        dt, B, C = self.x_proj(x).split([self.dt_rank, self.d_state, self.d_state], dim=-1)  # (B, T, R|N|N)
        dt, B, C = self.dt_layernorm(dt), self.b_layernorm(B), self.c_layernorm(C)
        return F.linear(dt, self.dt_proj.weight).float() + self.dt_proj.bias.float(), B, C


# -- Zamba ---------------------------------------------------------------------------------------------------------
class ZambaMambaMixer(SelectiveMixer):
    """Zamba's multi-head Mamba-1 mixer: ``n_mamba_heads`` heads with their own ``x_proj``/``dt_proj`` (B, C, Δ).

    Parameters keep transformers' layout: ``x_proj_weight [h, R + 2N, P]``, ``dt_proj_weight [h, P, R]``,
    ``dt_proj_bias [h, P]``, ``A_log [h, P, N]``, ``D [h, P]``; ``in_proj`` gives ``(x, z)`` as two contiguous halves
    (transformers interleaves them; its converter de-interleaves). One head is Mamba exactly.
    """

    def __init__(
        self,
        d_model: int,
        *,
        n_mamba_heads: int = 1,
        d_state: int = 16,
        expand: int = 2,
        d_conv: int = 4,
        dt_rank: int | None = None,
        conv_bias: bool = True,
        bias: bool = False,
        dt_min: float = 0.001,
        dt_max: float = 0.1,
        dt_init_floor: float = 1e-4,
        dt_scale: float = 1.0,
        dt_init: str = "random",
        scan: str = "chunked",
    ) -> None:
        super().__init__()
        check_mixer_args("ZambaMambaMixer", d_model, d_state, expand, d_conv, scan, dt_init)
        E = expand * d_model
        if n_mamba_heads <= 0 or E % n_mamba_heads:
            raise ValueError(f"ZambaMambaMixer: n_mamba_heads={n_mamba_heads} must be > 0 and divide E={E}")
        self.d_model, self.d_inner, self.d_state, self.d_conv = d_model, E, d_state, d_conv
        self.n_heads, self.head_dim = n_mamba_heads, E // n_mamba_heads
        self.dt_rank = dt_rank if dt_rank is not None else math.ceil(d_model / 16)
        self.dt_min, self.dt_max, self.dt_init_floor = dt_min, dt_max, dt_init_floor
        self.dt_scale, self.dt_init, self.scan = dt_scale, dt_init, scan
        h, P, N, R = n_mamba_heads, self.head_dim, d_state, self.dt_rank
        self.in_proj = nn.Linear(d_model, 2 * E, bias=bias)
        self.conv1d = nn.Conv1d(E, E, d_conv, groups=E, bias=conv_bias, padding=d_conv - 1)
        self.x_proj_weight = nn.Parameter(torch.empty(h, R + 2 * N, P))
        self.dt_proj_weight = nn.Parameter(torch.empty(h, P, R))
        self.dt_proj_bias = nn.Parameter(torch.empty(h, P))
        self.A_log = nn.Parameter(torch.empty(h, P, N))
        self.D = nn.Parameter(torch.empty(h, P))
        self.out_proj = nn.Linear(E, d_model, bias=bias)
        self.reset_parameters()

    @torch.no_grad()
    def reset_parameters(self) -> None:
        """Mamba's initialisation per head: S4D-real A, log-uniform Δ, ``dt_proj`` ``U(±R^-0.5)``, ``D = 1``."""
        for module in (self.in_proj, self.conv1d, self.out_proj):
            module.reset_parameters()
        for linear in (self.in_proj, self.out_proj):
            if linear.bias is not None:
                nn.init.zeros_(linear.bias)
        bound = self.head_dim**-0.5  # nn.Linear's default bound 1/sqrt(fan_in) for each head's x_proj
        nn.init.uniform_(self.x_proj_weight, -bound, bound)
        std = self.dt_rank**-0.5 * self.dt_scale
        if self.dt_init == "constant":
            nn.init.constant_(self.dt_proj_weight, std)
        else:
            nn.init.uniform_(self.dt_proj_weight, -std, std)
        bias = dt_bias_init(self.d_inner, self.dt_min, self.dt_max, self.dt_init_floor, self.D.device)
        self.dt_proj_bias.copy_(bias.view(self.n_heads, self.head_dim))
        n = torch.arange(1, self.d_state + 1, dtype=torch.float32, device=self.A_log.device)
        self.A_log.copy_(n.log().expand_as(self.A_log))
        nn.init.ones_(self.D)

    def in_projection(self, u: Tensor, route: Any) -> Tensor:
        """The shared ``in_proj``."""
        return self.in_proj(u)  # type: ignore[no-any-return]

    def selective_inputs(self, x: Tensor, route: Any) -> tuple[Tensor, Tensor, Tensor]:
        """Per head: ``(δ, B, C) = x_proj_h(x_h)``, ``Δ_h = dt_proj_h(δ_h)``; B and C as ``[B, T, h, N]`` groups."""
        Bsz, T, _ = x.shape
        xh = x.view(Bsz, T, self.n_heads, self.head_dim)  # (B, T, h, P)
        params = torch.einsum("bthp,hkp->bthk", xh, self.x_proj_weight)  # (B, T, h, R + 2N)
        dt, B, C = torch.split(params, [self.dt_rank, self.d_state, self.d_state], dim=-1)
        dt = torch.einsum("bthr,hpr->bthp", dt, self.dt_proj_weight).float() + self.dt_proj_bias.float()
        return dt.reshape(Bsz, T, self.d_inner), B, C  # Δ (B, T, E); B, C (B, T, h, N)

    def decay(self) -> Tensor:
        """``A = -exp(A_log)`` with the heads flattened into channels, ``[E, N]``."""
        return -torch.exp(self.A_log.float()).reshape(self.d_inner, self.d_state)

    def skip(self) -> Tensor:
        """``D`` flattened, ``[E]``."""
        return self.D.reshape(self.d_inner)

    def out_projection(self, y: Tensor, route: Any) -> Tensor:
        """The shared ``out_proj``."""
        return self.out_proj(y)  # type: ignore[no-any-return]

    def extra_repr(self) -> str:
        return f"n_mamba_heads={self.n_heads}, head_dim={self.head_dim}, d_state={self.d_state}"


# -- Mixture-of-Mamba ----------------------------------------------------------------------------------------------
class ModalityRoute:
    """Which modality each token has, and (in eager mode) the tokens sorted by modality for sparse dispatch."""

    def __init__(self, modality: Tensor, n_modalities: int) -> None:
        self.modality = modality.reshape(-1)  # (n,) int64
        self.n_modalities = n_modalities
        self.order: Tensor | None = None
        self.sizes: list[int] | None = None
        if n_modalities > 1 and not (torch.compiler.is_compiling() or modality.is_meta or is_capturing()):
            self.order = self.modality.argsort(stable=True)  # tokens grouped by modality
            self.sizes = torch.bincount(self.modality, minlength=n_modalities).tolist()  # one host sync per call


class ModalityLinear(nn.Module):
    """``n_modalities`` linear maps ``[out, in]`` stored as ``weight [M, out, in]``; each token uses its modality's.

    In eager mode the tokens are grouped by modality and each map runs once on its group (the paper's sparse
    compute); under ``torch.compile``, CUDA-graph capture and on the meta device every map runs on every token and
    the token's own result is gathered (static shapes, same values). ``M = 1`` is an ordinary shared ``nn.Linear``.
    """

    def __init__(self, n_modalities: int, in_features: int, out_features: int, *, bias: bool = True) -> None:
        super().__init__()
        if min(n_modalities, in_features, out_features) <= 0:
            raise ValueError(
                f"ModalityLinear: n_modalities, in_features and out_features must be > 0, got {n_modalities}, "
                f"{in_features}, {out_features}"
            )
        self.n_modalities, self.in_features, self.out_features = n_modalities, in_features, out_features
        self.weight = nn.Parameter(torch.empty(n_modalities, out_features, in_features))
        self.bias = nn.Parameter(torch.empty(n_modalities, out_features)) if bias else None
        self.reset_parameters()

    @torch.no_grad()
    def reset_parameters(self) -> None:
        """``nn.Linear``'s initialisation for each modality: weight and bias ``U(±1/sqrt(in_features))``."""
        bound = self.in_features**-0.5
        nn.init.uniform_(self.weight, -bound, bound)
        if self.bias is not None:
            nn.init.uniform_(self.bias, -bound, bound)

    def forward(self, x: Tensor, route: ModalityRoute) -> Tensor:
        """``x [..., in] -> [..., out]``, token ``i`` through map ``route.modality[i]`` (ignored when ``M = 1``)."""
        if self.n_modalities == 1:
            return F.linear(x, self.weight[0], None if self.bias is None else self.bias[0])
        lead = x.shape[:-1]
        tokens = x.reshape(-1, self.in_features)  # (n, in)
        if route.order is not None and route.sizes is not None:
            groups = torch.split(tokens[route.order], route.sizes)  # per modality: (n_m, in)
            outs = [
                F.linear(group, self.weight[m], None if self.bias is None else self.bias[m])
                for m, group in enumerate(groups)
            ]
            grouped = torch.cat(outs)  # (n, out), sorted by modality (its dtype follows autocast)
            y = grouped.new_zeros(tokens.shape[0], self.out_features).index_copy(0, route.order, grouped)
        else:
            every = torch.einsum("ni,moi->mno", tokens, self.weight)  # (M, n, out)
            if self.bias is not None:
                every = every + self.bias[:, None, :]
            index = route.modality.view(1, -1, 1).expand(1, -1, self.out_features)
            y = every.gather(0, index).squeeze(0)  # (n, out)
        return y.reshape(*lead, self.out_features)

    def extra_repr(self) -> str:
        bias = self.bias is not None
        return f"n_modalities={self.n_modalities}, in={self.in_features}, out={self.out_features}, bias={bias}"


class MixtureOfMambaMixer(SelectiveMixer):
    """Mixture-of-Mamba's mixer: modality-specific ``in_proj``, ``x_proj``, ``dt_proj`` and ``out_proj``.

    ``split`` names the projections that are decoupled (all four in the paper; the others are shared, as in its
    ablations). The convolution ``conv1d``, ``A_log`` and ``D`` are always shared. With one modality this is
    :class:`~edifice_ssm.mamba.MambaMixer` (same parameters with a leading modality axis of 1).
    """

    PROJECTIONS = ("in_proj", "x_proj", "dt_proj", "out_proj")

    def __init__(
        self,
        d_model: int,
        *,
        n_modalities: int = 2,
        split: Sequence[str] = PROJECTIONS,
        d_state: int = 16,
        expand: int = 2,
        d_conv: int = 4,
        dt_rank: int | None = None,
        conv_bias: bool = True,
        bias: bool = False,
        dt_min: float = 0.001,
        dt_max: float = 0.1,
        dt_init_floor: float = 1e-4,
        dt_scale: float = 1.0,
        dt_init: str = "random",
        scan: str = "chunked",
    ) -> None:
        super().__init__()
        check_mixer_args("MixtureOfMambaMixer", d_model, d_state, expand, d_conv, scan, dt_init)
        if n_modalities <= 0:
            raise ValueError(f"MixtureOfMambaMixer: n_modalities must be > 0, got {n_modalities}")
        unknown = sorted(set(split) - set(self.PROJECTIONS))
        if unknown:
            raise ValueError(f"MixtureOfMambaMixer: unknown projections {unknown} in split; valid: {self.PROJECTIONS}")
        E = expand * d_model
        self.d_model, self.d_inner, self.d_state, self.d_conv = d_model, E, d_state, d_conv
        self.n_modalities = n_modalities
        self.split = tuple(p for p in self.PROJECTIONS if p in split)
        self.dt_rank = dt_rank if dt_rank is not None else math.ceil(d_model / 16)
        self.dt_min, self.dt_max, self.dt_init_floor = dt_min, dt_max, dt_init_floor
        self.dt_scale, self.dt_init, self.scan = dt_scale, dt_init, scan
        N, R = d_state, self.dt_rank

        def count(name: str) -> int:
            return n_modalities if name in self.split else 1

        self.in_proj = ModalityLinear(count("in_proj"), d_model, 2 * E, bias=bias)
        self.conv1d = nn.Conv1d(E, E, d_conv, groups=E, bias=conv_bias, padding=d_conv - 1)
        self.x_proj = ModalityLinear(count("x_proj"), E, R + 2 * N, bias=False)
        self.dt_proj = ModalityLinear(count("dt_proj"), R, E, bias=True)
        self.A_log = nn.Parameter(torch.empty(E, N))
        self.D = nn.Parameter(torch.empty(E))
        self.out_proj = ModalityLinear(count("out_proj"), E, d_model, bias=bias)
        self.reset_parameters()

    @torch.no_grad()
    def reset_parameters(self) -> None:
        """Mamba's initialisation for every modality's projections; S4D-real A and ``D = 1`` shared."""
        for module in (self.in_proj, self.conv1d, self.x_proj, self.out_proj):
            module.reset_parameters()
        for linear in (self.in_proj, self.out_proj):
            if linear.bias is not None:
                nn.init.zeros_(linear.bias)
        std = self.dt_rank**-0.5 * self.dt_scale
        if self.dt_init == "constant":
            nn.init.constant_(self.dt_proj.weight, std)
        else:
            nn.init.uniform_(self.dt_proj.weight, -std, std)
        assert self.dt_proj.bias is not None
        for m in range(self.dt_proj.n_modalities):  # each modality draws its own Δ, as the reference does
            self.dt_proj.bias[m].copy_(
                dt_bias_init(self.d_inner, self.dt_min, self.dt_max, self.dt_init_floor, self.D.device)
            )
        n = torch.arange(1, self.d_state + 1, dtype=torch.float32, device=self.A_log.device)
        self.A_log.copy_(n.log().expand(self.d_inner, -1))
        nn.init.ones_(self.D)

    def in_projection(self, u: Tensor, route: Any) -> Tensor:
        """``in_proj`` of each token's modality."""
        return self.in_proj(u, route)  # type: ignore[no-any-return]

    def selective_inputs(self, x: Tensor, route: Any) -> tuple[Tensor, Tensor, Tensor]:
        """``(δ, B, C) = x_proj_m(x)`` and ``dt_proj_m(δ)`` (with its bias) with ``m`` each token's modality."""
        dt, B, C = self.x_proj(x, route).split([self.dt_rank, self.d_state, self.d_state], dim=-1)
        return self.dt_proj(dt, route).float(), B, C

    def decay(self) -> Tensor:
        """The shared ``A = -exp(A_log)``, ``[E, N]``."""
        return -torch.exp(self.A_log.float())

    def skip(self) -> Tensor:
        """The shared ``D``, ``[E]``."""
        return self.D

    def out_projection(self, y: Tensor, route: Any) -> Tensor:
        """``out_proj`` of each token's modality."""
        return self.out_proj(y, route)  # type: ignore[no-any-return]

    def forward(
        self,
        x: Tensor,
        *,
        modality: Tensor | None = None,
        mask: Tensor | None = None,
        positions: Tensor | None = None,
        state: MambaState | None = None,
    ) -> Tensor:
        """``x [B, T, d_model]`` and int ``modality [B, T]`` in ``[0, M)`` -> ``[B, T, d_model]``; ``state`` in place.

        ``modality`` may be omitted only when every projection is shared or ``M = 1``.
        """
        if modality is None:
            if self.n_modalities > 1 and self.split:
                raise ValueError(
                    f"MixtureOfMambaMixer: modality [B, T] (ints in [0, {self.n_modalities})) is required with "
                    f"{self.n_modalities} modalities"
                )
            modality = torch.zeros(x.shape[:2], dtype=torch.long, device=x.device)
        if modality.shape != x.shape[:2]:
            raise ValueError(
                f"MixtureOfMambaMixer: modality must be [B, T] = {list(x.shape[:2])}, got {list(modality.shape)}"
            )
        return self.mix(x, mask=mask, state=state, route=ModalityRoute(modality, self.n_modalities))

    def extra_repr(self) -> str:
        return f"n_modalities={self.n_modalities}, split={self.split}, d_state={self.d_state}"


# -- backbone helpers ------------------------------------------------------------------------------------------------
def positions_from_mask(mask: Tensor) -> Tensor:
    """Index of each position among the valid ones, ``cumsum(mask) - 1`` (as :class:`SequenceBackbone` numbers them)."""
    return mask.to(torch.long).cumsum(dim=-1) - 1


def run_layers(
    model: SequenceBackbone,
    h: Tensor,
    *,
    mask: Tensor | None,
    positions: Tensor | None,
    states: Sequence[Any] | None = None,
    **context: Any,
) -> tuple[Tensor, Tensor | None]:
    """The backbone's layer loop for layers that also read ``context`` (embeddings, modalities): ``(h, aux_loss)``.

    Gradient checkpointing applies as in :meth:`SequenceBackbone.forward` (never while stepping with ``states``).
    """
    aux: Tensor | None = None
    for index, layer in enumerate(model.layers):
        if states is None and model.grad_checkpointing and model.training and torch.is_grad_enabled():
            out = checkpoint(layer, h, mask=mask, positions=positions, use_reentrant=False, **context)
        else:
            state = None if states is None else states[index]
            out = layer(h, mask=mask, positions=positions, state=state, **context)
        h, layer_aux = out if isinstance(out, tuple) else (out, None)
        if layer_aux is not None:
            aux = layer_aux if aux is None else aux + layer_aux
    return h, aux
