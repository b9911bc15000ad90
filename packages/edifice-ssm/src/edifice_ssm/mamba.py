"""Mamba: a stack of selective state-space mixers, with no attention and no MLP block.

Each layer is a pre-norm residual Mamba block (Fig. 3): the input is projected to two branches of width
``E = expand * d_model``; one goes through a causal depthwise convolution, SiLU and the selective SSM whose ``Δ``,
``B`` and ``C`` are functions of the input (§3.2, Algorithm 2); the other, after SiLU, gates the result, which is
projected back to ``d_model``. ``mamba``, ``mamba_cumsum`` and ``mamba_hillis_steele`` are this one class: the
registry name only fixes ``config.scan``, the algorithm of the selective scan, and all three compute the same thing.

Paper: Albert Gu and Tri Dao, "Mamba: Linear-Time Sequence Modeling with Selective State Spaces", 2023,
https://arxiv.org/abs/2312.00752.

Equations (per channel ``d`` and state index ``n``; computed by ``edifice.ops.selective_scan``)::

    (x, z)       = in_proj(u)                                  E channels each
    x            = SiLU(causal_conv1d(x))                      kernel d_conv
    (δ, B, C)    = x_proj(x);   Δ = softplus(dt_proj(δ))       Algorithm 2, steps 3-5 (s_Δ = Linear_1 then Linear_E)
    Ā = exp(Δ A),  B̄ = Δ B                                     eq. 4 (zero-order hold; B̄ simplified as in §3.5.2)
    h_t = Ā_t h_{t-1} + B̄_t x_t,   y_t = C_t h_t + D x_t       eqs. 2a, 2b
    out = out_proj(y * SiLU(z))

Initialisation (§3.6 and Appendix: S4D-real ``A = -(1..N)`` stored as ``A_log``; ``Δ`` log-uniform in
``[dt_min, dt_max]`` through the inverse softplus of ``dt_proj``'s bias; ``D = 1``; output projections scaled by
``1/sqrt(n_layers)`` as GPT-2 does, as the reference implementation does).

Decoding: the state of a layer is its last ``d_conv - 1`` convolution inputs and its ``[E, N]`` SSM state, a
constant size. Padding (``attention_mask``) zeroes the convolution's input (after ``in_proj``, so its bias cannot
leak) and sets ``Δ = 0`` at padded positions, so the SSM state passes through them unchanged (``Ā = 1``, ``B̄ = 0``);
left-padded prompts give the unpadded result. (transformers' ``MambaMixer`` zeroes the input *before* ``in_proj``:
with ``use_bias=True`` its padded outputs differ from its unpadded ones; see ``docs/parity.md``.)

Deviation: none in the mathematics. The ``mamba_ssm`` fused CUDA path recomputes in a single kernel; here each part
is an ``edifice.ops`` op with a pure-PyTorch reference (overridable by kernels).
"""

from __future__ import annotations

import math
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from edifice import ops
from edifice.blocks.backbone import SequenceBackbone
from edifice.blocks.norms import get_norm
from edifice.blocks.transformer import TransformerBlock
from edifice.config import ArchConfig
from edifice.ops.selective_scan import SCAN_ALGORITHMS
from edifice.outputs import model_output
from edifice_ssm.configs.mamba import MambaConfig

__all__ = ["Mamba", "MambaMixer", "MambaState", "SelectiveMixer", "check_mixer_args", "dt_bias_init", "reset_ends"]


@model_output
class MambaState:
    """Decoding state of one :class:`MambaMixer`: constant size, updated in place by each step."""

    conv: Tensor
    """``[B, E, d_conv - 1]``: the last inputs of the causal convolution (oldest first)."""
    ssm: Tensor
    """``[B, E, N]`` fp32: the selective SSM's state ``h``."""


def _saved_copy(state: Tensor) -> Tensor:
    """The state tensor to compute with: a copy while autograd records, since the layer then overwrites the state.

    Writing a state in place after autograd saved it would fail the backward pass of a forward that carries the
    state across chunks (bimamba's ``chunk_size``); decoding (no autograd) reads it directly, allocating nothing.
    """
    return state.clone() if torch.is_grad_enabled() else state


def dt_bias_init(n: int, dt_min: float, dt_max: float, floor: float, device: torch.device) -> Tensor:
    """``softplus^{-1}(Δ)`` with ``Δ`` log-uniform in ``[dt_min, dt_max]`` (floored): Mamba's Δ initialisation."""
    lo, hi = math.log(dt_min), math.log(dt_max)
    dt = torch.exp(torch.rand(n, device=device) * (hi - lo) + lo).clamp(min=floor)
    return dt + torch.log(-torch.expm1(-dt))


def check_mixer_args(name: str, d_model: int, d_state: int, expand: int, d_conv: int, scan: str, dt_init: str) -> None:
    """Raise a ``ValueError`` naming the bad argument of a Mamba mixer ``name``."""
    if min(d_model, d_state, expand, d_conv) <= 0:
        raise ValueError(
            f"{name}: d_model, d_state, expand and d_conv must be > 0, got {d_model}, {d_state}, {expand}, {d_conv}"
        )
    if scan not in SCAN_ALGORITHMS:
        raise ValueError(f"{name}: scan must be one of {SCAN_ALGORITHMS}, got {scan!r}")
    if dt_init not in ("random", "constant"):
        raise ValueError(f"{name}: dt_init must be 'random' or 'constant', got {dt_init!r}")


class SelectiveMixer(nn.Module):
    """The Mamba block's body (Fig. 3) with hooks: subclasses say how the projections, ``Δ``, ``B`` and ``C`` are made.

    :class:`MambaMixer` is the paper's; the hybrids' variants (Jamba's normalised ``Δ, B, C``, Zamba's per-head
    projections, Mixture-of-Mamba's per-modality ones) and ``gated_ssm``'s recurrence override single hooks.
    ``route`` is whatever a variant needs per token (a modality id); the paper's mixer ignores it.
    """

    d_model: int
    d_inner: int
    d_state: int
    d_conv: int
    scan: str
    conv1d: nn.Conv1d

    def in_projection(self, u: Tensor, route: Any) -> Tensor:
        """``u [B, T, d_model] -> [B, T, 2E]`` (x then z)."""
        raise NotImplementedError

    def selective_inputs(self, x: Tensor, route: Any) -> tuple[Tensor, Tensor, Tensor]:
        """``x [B, T, E]`` -> (pre-softplus ``Δ [B, T, E]`` fp32, ``B``, ``C`` as ``[B, T, N]`` or ``[B, T, G, N]``)."""
        raise NotImplementedError

    def decay(self) -> Tensor:
        """``A = -exp(A_log)`` as ``[E, N]`` fp32."""
        raise NotImplementedError

    def skip(self) -> Tensor:
        """The skip ``D`` as ``[E]``."""
        raise NotImplementedError

    def out_projection(self, y: Tensor, route: Any) -> Tensor:
        """``y [B, T, E] -> [B, T, d_model]``."""
        raise NotImplementedError

    def init_state(
        self,
        batch_size: int,
        *,
        max_len: int | None = None,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> MambaState:
        """A zero state: ``conv [B, E, d_conv - 1]`` in ``dtype`` and ``ssm [B, E, N]`` in fp32 (``max_len`` unused)."""
        weight = self.conv1d.weight
        device = weight.device if device is None else device
        dtype = weight.dtype if dtype is None else dtype
        return MambaState(
            conv=torch.zeros(batch_size, self.d_inner, self.d_conv - 1, device=device, dtype=dtype),
            ssm=torch.zeros(batch_size, self.d_inner, self.d_state, device=device, dtype=torch.float32),
        )

    def mix(self, u: Tensor, *, mask: Tensor | None, state: MambaState | None, route: Any = None) -> Tensor:
        """``u [B, T, d_model] -> [B, T, d_model]``; ``mask [B, T]`` (True = valid); ``state`` updated in place."""
        keep = None if mask is None else mask.unsqueeze(-1).to(u.dtype)  # (B, T, 1)
        xs, z = self.in_projection(u, route).chunk(2, dim=-1)  # (B, T, E) each
        if keep is not None:
            # After the projection, not before it: a zeroed input would still carry in_proj's bias into the
            # convolution's window and from there into the state.
            xs = xs * keep
        conv_state = None if state is None else _saved_copy(state.conv)
        weight = self.conv1d.weight.squeeze(1)  # (E, K)
        x = F.silu(ops.causal_conv1d(xs, weight, self.conv1d.bias, initial_state=conv_state))  # (B, T, E)
        if state is not None:
            state.conv.copy_(ops.causal_conv1d_state(xs, conv_state, self.d_conv))
        if keep is not None:
            x = x * keep
        dt, B, C = self.selective_inputs(x, route)
        delta = F.softplus(dt)  # (B, T, E) fp32, Algorithm 2 step 5
        if keep is not None:
            delta = delta * keep  # Δ = 0 at padding: Ā = 1, B̄ = 0, the state skips the position
        return self.out_projection(self.state_space(x, delta, B, C, z, state), route)

    def state_space(
        self, x: Tensor, delta: Tensor, B: Tensor, C: Tensor, z: Tensor, state: MambaState | None
    ) -> Tensor:
        """The gated SSM ``y = (C h + D x) * SiLU(z)`` over ``h_t = exp(Δ_t A) h_{t-1} + Δ_t B_t x_t`` (eqs. 2a, 2b, 4).

        ``x, delta, z [B, T, E]`` (``delta`` after softplus, zero at padding), ``B, C [B, T, (G,) N]``; continues
        from and updates ``state.ssm``. Variants with another recurrence (``gated_ssm``) override this.
        """
        y, h = ops.selective_scan(
            x,
            delta,
            self.decay(),
            B,
            C,
            self.skip(),
            z,
            delta_softplus=False,
            initial_state=None if state is None else _saved_copy(state.ssm),
            return_final_state=True,
            algorithm=self.scan,
        )
        if state is not None:
            state.ssm.copy_(h)
        return y  # type: ignore[no-any-return]

    def forward(
        self,
        x: Tensor,
        *,
        mask: Tensor | None = None,
        positions: Tensor | None = None,
        state: MambaState | None = None,
    ) -> Tensor:
        """``x [B, T, d_model] -> [B, T, d_model]``; ``mask [B, T]`` (True = valid); ``state`` updated in place."""
        return self.mix(x, mask=mask, state=state)


class MambaMixer(SelectiveMixer):
    """The Mamba block's token mixer (Fig. 3): ``[B, T, d_model] -> [B, T, d_model]``, stateful and causal."""

    def __init__(
        self,
        d_model: int,
        *,
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
        check_mixer_args("MambaMixer", d_model, d_state, expand, d_conv, scan, dt_init)
        self.d_model, self.d_state, self.d_conv = d_model, d_state, d_conv
        self.d_inner = expand * d_model
        self.dt_rank = dt_rank if dt_rank is not None else math.ceil(d_model / 16)
        self.dt_min, self.dt_max, self.dt_init_floor = dt_min, dt_max, dt_init_floor
        self.dt_scale, self.dt_init, self.scan = dt_scale, dt_init, scan
        E, N, R = self.d_inner, d_state, self.dt_rank
        self.in_proj = nn.Linear(d_model, 2 * E, bias=bias)
        # Depthwise conv weights in nn.Conv1d's layout [E, 1, K] (as in Mamba checkpoints); run by ops.causal_conv1d.
        self.conv1d = nn.Conv1d(E, E, d_conv, groups=E, bias=conv_bias, padding=d_conv - 1)
        self.x_proj = nn.Linear(E, R + 2 * N, bias=False)
        self.dt_proj = nn.Linear(R, E, bias=True)
        self.A_log = nn.Parameter(torch.empty(E, N))
        self.D = nn.Parameter(torch.empty(E))
        self.out_proj = nn.Linear(E, d_model, bias=bias)
        self.reset_parameters()

    @classmethod
    def from_config(cls, config: MambaConfig) -> MambaMixer:
        """The mixer a :class:`MambaConfig` describes."""
        return cls(
            config.d_model,
            d_state=config.d_state,
            expand=config.expand,
            d_conv=config.d_conv,
            dt_rank=config.time_step_rank,
            conv_bias=config.conv_bias,
            bias=config.bias,
            dt_min=config.dt_min,
            dt_max=config.dt_max,
            dt_init_floor=config.dt_init_floor,
            dt_scale=config.dt_scale,
            dt_init=config.dt_init,
            scan=config.scan,
        )

    @torch.no_grad()
    def reset_parameters(self) -> None:
        """The paper's initialisation: S4D-real ``A = -(1..N)``, log-uniform ``Δ``, ``D = 1``; default Linear/conv."""
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
        # Δ = softplus(bias) log-uniform in [dt_min, dt_max]: bias = softplus^{-1}(Δ) = Δ + log(1 - exp(-Δ)).
        self.dt_proj.bias.copy_(dt_bias_init(self.d_inner, self.dt_min, self.dt_max, self.dt_init_floor, self.D.device))
        # S4D-real: A[:, n] = -(n + 1), stored as log(-A) so that A = -exp(A_log) stays negative (a decay).
        n = torch.arange(1, self.d_state + 1, dtype=torch.float32, device=self.A_log.device)
        self.A_log.copy_(n.log().expand(self.d_inner, -1))
        nn.init.ones_(self.D)

    def in_projection(self, u: Tensor, route: Any) -> Tensor:
        """``in_proj``: ``u [B, T, d_model] -> [B, T, 2E]`` (x then z)."""
        return self.in_proj(u)  # type: ignore[no-any-return]

    def selective_inputs(self, x: Tensor, route: Any) -> tuple[Tensor, Tensor, Tensor]:
        """``(δ, B, C) = x_proj(x)`` and ``dt_proj(δ)`` in fp32 (Algorithm 2, steps 3-5 before the softplus)."""
        dt, B, C = self.x_proj(x).split([self.dt_rank, self.d_state, self.d_state], dim=-1)  # (B, T, R|N|N)
        return F.linear(dt, self.dt_proj.weight).float() + self.dt_proj.bias.float(), B, C

    def decay(self) -> Tensor:
        """``A = -exp(A_log)``, ``[E, N]`` fp32 (negative: a decay)."""
        return -torch.exp(self.A_log.float())

    def skip(self) -> Tensor:
        """``D``, ``[E]``."""
        return self.D

    def out_projection(self, y: Tensor, route: Any) -> Tensor:
        """``out_proj``: ``[B, T, E] -> [B, T, d_model]``."""
        return self.out_proj(y)  # type: ignore[no-any-return]


@torch.no_grad()
def reset_ends(model: SequenceBackbone) -> None:
    """Mamba's init of a backbone's ends: the final norm; embeddings and an untied head ``N(0, init_std²)``.

    A feature input projection is reset as ``nn.Linear`` does (``mamba_ssm``'s ``_init_weights``).
    """
    config: Any = model.config
    model.norm.reset_parameters()  # type: ignore[operator]
    if model.embed_tokens is not None:
        nn.init.normal_(model.embed_tokens.weight, std=config.init_std)
    if isinstance(model.input_proj, nn.Linear):
        model.input_proj.reset_parameters()
    if model.lm_head is not None and not config.tie_embeddings:
        nn.init.normal_(model.lm_head.weight, std=config.init_std)


class Mamba(SequenceBackbone):
    """Mamba language/sequence model: ``n_layers`` pre-norm residual :class:`MambaMixer` blocks and a final RMSNorm."""

    config_class: ClassVar[type[ArchConfig]] = MambaConfig
    config: MambaConfig

    def __init__(self, config: MambaConfig) -> None:
        super().__init__(config)
        self.reset_parameters()

    def build_layer(self, index: int) -> nn.Module:
        """A mixer-only pre-norm residual block: ``h + Mixer(RMSNorm(h))``."""
        c = self.config
        mixer = MambaMixer.from_config(c)
        return TransformerBlock(c.d_model, mixer, None, norm="rmsnorm", norm_eps=c.norm_eps, dropout=c.dropout)

    def build_norm(self) -> nn.Module:
        """The final RMSNorm (``norm_f``)."""
        return get_norm("rmsnorm", self.config.d_model, eps=self.config.norm_eps)

    @torch.no_grad()
    def reset_parameters(self) -> None:
        """Each layer's own init, embeddings N(0, init_std), and out_proj scaled by 1/sqrt(n_layers) (GPT-2 style)."""
        for layer in self.layers:
            assert isinstance(layer, TransformerBlock) and isinstance(layer.mixer, MambaMixer)
            layer.reset_parameters()
            layer.mixer.out_proj.weight.div_(math.sqrt(self.config.n_layers))
        reset_ends(self)
