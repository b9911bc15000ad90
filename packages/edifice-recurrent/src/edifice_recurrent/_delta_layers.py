"""The delta-rule token mixer and backbone shared by ``delta_net``, ``gated_delta_net`` and ``delta_product``.

One mixer covers the three papers; they differ only in how many delta-rule steps a token takes and whether the
state decays (see each entry's module for its equations)::

    q = SiLU(Conv(x W_q)), k_j = SiLU(Conv(x W_k^j)), v_j = SiLU(Conv(x W_v^j))     short convolutions, j = 1..n_h
    q, k_j <- q / ||q||, k_j / ||k_j||                                             per head (L2 norm)
    β_j = σ(x W_β^j)  (x2 when negative eigenvalues are allowed)                   write strengths
    g = -exp(A_log) · softplus(x W_α + dt_bias)  (gated entries; α = exp(g))      Mamba2-style decay
    S <- α (I - β_1 k_1 k_1ᵀ) S + β_1 k_1 v_1ᵀ;  S <- (I - β_j k_j k_jᵀ) S + β_j k_j v_jᵀ for j = 2..n_h
    o = RMSNorm(Sᵀ q / sqrt(d_k)) [⊙ SiLU(x W_g)] W_o

The ``n_h`` steps of a token run as ``n_h`` consecutive steps of :func:`edifice.ops.delta_rule` (or
:func:`~edifice.ops.gated_delta_rule`) over an interleaved sequence of length ``T·n_h`` whose query is zero except at
each token's last step and whose decay is applied at its first step; so one chunked WY kernel serves all three.

Padding: positions where ``mask`` is False are fed as zero input with ``β = 0`` and ``g = 0``, an exact identity
update of the state, and the short convolutions see zeros there, as they do before the first token. A left- or
right-padded sequence therefore gives exactly the unpadded result at its valid positions.
"""

from __future__ import annotations

import math
from typing import ClassVar, cast

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from edifice import ops
from edifice.blocks.backbone import SequenceBackbone
from edifice.blocks.conv import CausalDepthwiseConv1d
from edifice.blocks.ffn import get_ffn
from edifice.blocks.transformer import TransformerBlock
from edifice.config import ArchConfig
from edifice.outputs import model_output
from edifice_recurrent.configs.delta_net import DeltaNetConfig

__all__ = ["DeltaBackbone", "DeltaMixer", "DeltaState", "l2_normalize"]

#: Epsilon of the q/k L2 normalisation (flash-linear-attention's ``l2norm``: x / sqrt(sum x² + eps)).
L2_EPS = 1e-6


def l2_normalize(x: Tensor, eps: float = L2_EPS) -> Tensor:
    """``x / sqrt(Σ x² + eps)`` over the last dim, in fp32, returned in x's dtype."""
    x32 = x.float()
    return (x32 * torch.rsqrt(x32.square().sum(-1, keepdim=True) + eps)).to(x.dtype)


@model_output
class DeltaState:
    """Decoding state of one delta-rule mixer: constant size, updated in place by each step."""

    conv: list[Tensor]
    """The q, k and v short-convolution histories ``[B, C, conv_size - 1]`` (empty without short convolutions)."""
    recurrent: Tensor
    """The fast-weight state ``S`` ``[B, n_heads, head_dim, head_v_dim]`` in fp32."""


class DeltaMixer(nn.Module):
    """The delta-rule token mixer ``[B, T, d_model] -> [B, T, d_model]`` of the module doc, with ``init_state``."""

    def __init__(
        self,
        d_model: int,
        n_heads: int,
        head_dim: int,
        head_v_dim: int,
        *,
        n_householder: int = 1,
        gated: bool = False,
        use_gate: bool = False,
        use_short_conv: bool = True,
        conv_size: int = 4,
        conv_bias: bool = False,
        allow_neg_eigval: bool = False,
        norm_eps: float = 1e-5,
        chunk_size: int = 64,
    ) -> None:
        super().__init__()
        self.n_heads, self.head_dim, self.head_v_dim = n_heads, head_dim, head_v_dim
        self.n_householder = n_householder
        self.gated = gated
        self.allow_neg_eigval = allow_neg_eigval
        self.norm_eps = norm_eps
        self.chunk_size = chunk_size
        key_dim, value_dim = n_heads * head_dim, n_heads * head_v_dim
        n = n_householder
        self.q_proj = nn.Linear(d_model, key_dim, bias=False)
        self.k_proj = nn.Linear(d_model, n * key_dim, bias=False)  # n_h keys per token, laid out (n, h, d)
        self.v_proj = nn.Linear(d_model, n * value_dim, bias=False)
        self.b_proj = nn.Linear(d_model, n * n_heads, bias=False)
        self.a_proj = nn.Linear(d_model, n_heads, bias=False) if gated else None
        self.A_log = nn.Parameter(torch.empty(n_heads)) if gated else None
        self.dt_bias = nn.Parameter(torch.empty(n_heads)) if gated else None
        self.convs = (
            nn.ModuleList(
                CausalDepthwiseConv1d(c, conv_size, bias=conv_bias) for c in (key_dim, n * key_dim, n * value_dim)
            )
            if use_short_conv
            else None
        )
        self.g_proj = nn.Linear(d_model, value_dim, bias=False) if use_gate else None
        self.o_norm_weight = nn.Parameter(torch.empty(head_v_dim))
        self.o_proj = nn.Linear(value_dim, d_model, bias=False)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Unit output-norm gain; decay parameters as Mamba2 / Gated DeltaNet: A ~ U(0, 16), dt ~ logU(1e-3, 0.1)."""
        nn.init.ones_(self.o_norm_weight)
        if self.A_log is not None and self.dt_bias is not None:
            with torch.no_grad():
                self.A_log.copy_(torch.empty_like(self.A_log).uniform_(1e-4, 16).log())
                dt = torch.exp(torch.rand_like(self.dt_bias) * (math.log(0.1) - math.log(1e-3)) + math.log(1e-3))
                dt = dt.clamp(min=1e-4)
                self.dt_bias.copy_(dt + torch.log(-torch.expm1(-dt)))  # softplus⁻¹(dt)

    # -- decoding state ---------------------------------------------------------------------------------------------
    def init_state(
        self,
        batch_size: int,
        *,
        max_len: int | None = None,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> DeltaState:
        """Zero conv histories (in ``dtype``) and a zero fp32 state; constant size, so ``max_len`` is not needed."""
        device = self.o_proj.weight.device if device is None else device
        conv = [c.init_state(batch_size, device=device, dtype=dtype) for c in self._convs()]
        S = torch.zeros(batch_size, self.n_heads, self.head_dim, self.head_v_dim, device=device, dtype=torch.float32)
        return DeltaState(conv=conv, recurrent=S)

    # -- forward ----------------------------------------------------------------------------------------------------
    def _features(self, x: Tensor, state: DeltaState | None) -> tuple[Tensor, Tensor, Tensor]:
        """q ``[B, T, H·K]``, k ``[B, T, n·H·K]``, v ``[B, T, n·H·V]`` after the short convolutions and SiLU."""
        feats = [self.q_proj(x), self.k_proj(x), self.v_proj(x)]
        convs = self._convs()
        if convs:
            if state is None:
                feats = [conv(f) for conv, f in zip(convs, feats, strict=True)]
            else:
                for i, (conv, f) in enumerate(zip(convs, feats, strict=True)):
                    feats[i], history = conv.step(f, state.conv[i])
                    state.conv[i].copy_(history)
        q, k, v = (F.silu(f) for f in feats)
        return q, k, v

    def forward(
        self, x: Tensor, *, mask: Tensor | None = None, positions: Tensor | None = None, state: DeltaState | None = None
    ) -> Tensor:
        """``x [B, T, d_model]`` -> ``[B, T, d_model]``; ``mask [B, T]`` marks valid positions; ``state`` is updated."""
        B, T, _ = x.shape
        H, K, V, n = self.n_heads, self.head_dim, self.head_v_dim, self.n_householder
        valid = None if mask is None else mask.to(x.dtype)[..., None]  # (B, T, 1)
        if valid is not None:
            x = x * valid  # pads become zero input: the short convolutions see what they see before the first token
        q, k, v = self._features(x, state)
        q = l2_normalize(q.view(B, T, H, K))
        k = l2_normalize(k.view(B, T, n, H, K))
        v = v.view(B, T, n, H, V)
        beta = torch.sigmoid(self.b_proj(x)).view(B, T, n, H)
        if self.allow_neg_eigval:
            beta = beta * 2.0  # eigenvalue 1 - β of I - β k kᵀ spans (-1, 1) (Grazzi et al. 2024)
        if valid is not None:
            beta = beta * valid[..., None]  # β = 0: a padded position writes nothing
        g = self._log_decay(x, valid)  # (B, T, H) or None
        # Interleave the n_h steps of every token: (B, T, n, ...) -> (B, T·n, ...). The query is zero except at a
        # token's last step (it reads once, after all n_h writes); the decay acts once, before the first write.
        q_steps = F.pad(q.unsqueeze(2), (0, 0, 0, 0, n - 1, 0))  # (B, T, n, H, K)
        initial = None if state is None else state.recurrent
        args = (q_steps.flatten(1, 2), k.flatten(1, 2), v.flatten(1, 2), beta.flatten(1, 2))
        if g is None:
            o, final = ops.delta_rule(*args, initial_state=initial, chunk_size=self.chunk_size)
        else:
            g_steps = F.pad(g.unsqueeze(2), (0, 0, 0, n - 1))  # (B, T, n, H)
            o, final = ops.gated_delta_rule(
                *args, g_steps.flatten(1, 2), initial_state=initial, chunk_size=self.chunk_size
            )
        if state is not None:
            state.recurrent.copy_(final)
        o = o.view(B, T, n, H, V)[:, :, -1]  # (B, T, H, V)
        out: Tensor = self.o_proj(self._output_norm(o, x).flatten(2))
        return out

    def _convs(self) -> list[CausalDepthwiseConv1d]:
        """The q, k and v short convolutions (empty without them)."""
        return [] if self.convs is None else [cast(CausalDepthwiseConv1d, c) for c in self.convs]

    def _log_decay(self, x: Tensor, valid: Tensor | None) -> Tensor | None:
        """``g = -exp(A_log) softplus(x W_α + dt_bias)`` ``[B, T, H]`` in fp32 (Gated DeltaNet eq. 10's log α_t)."""
        if self.a_proj is None or self.A_log is None or self.dt_bias is None:
            return None
        g = -self.A_log.float().exp() * F.softplus(self.a_proj(x).float() + self.dt_bias.float())
        return g if valid is None else g * valid.float()  # g = 0 (α = 1) at padded positions

    def _output_norm(self, o: Tensor, x: Tensor) -> Tensor:
        """Per-head RMSNorm of the read-out, times ``SiLU(x W_g)`` when the output is gated."""
        y = ops.rms_norm(o, self.o_norm_weight, self.norm_eps)  # (B, T, H, V)
        if self.g_proj is not None:
            gate = self.g_proj(x).view(*o.shape)
            y = (y.float() * F.silu(gate.float())).to(o.dtype)
        return y


class DeltaBackbone(SequenceBackbone):
    """A pre-norm stack of delta-rule mixers, each followed by a SwiGLU FFN (flash-linear-attention's block)."""

    config_class: ClassVar[type[ArchConfig]] = DeltaNetConfig
    config: DeltaNetConfig

    def __init__(self, config: DeltaNetConfig) -> None:
        super().__init__(config)
        self.reset_parameters()

    def mixer_options(self) -> dict[str, object]:
        """Keyword arguments of :class:`DeltaMixer` that set the entry's mechanism: Householder steps and gating."""
        return {"n_householder": 1, "gated": False}

    def build_layer(self, index: int) -> nn.Module:
        """One pre-norm residual block: RMSNorm -> delta-rule mixer, RMSNorm -> SwiGLU FFN (if ``d_ff != 0``)."""
        c = self.config
        mixer = DeltaMixer(
            c.d_model,
            c.n_heads,
            c.head_size,
            c.head_v_size,
            use_gate=c.use_gate,
            use_short_conv=c.use_short_conv,
            conv_size=c.conv_size,
            conv_bias=c.conv_bias,
            allow_neg_eigval=c.allow_neg_eigval,
            norm_eps=c.norm_eps,
            chunk_size=c.chunk_size,
            **self.mixer_options(),  # type: ignore[arg-type]
        )
        ffn = get_ffn("swiglu", c.d_model, c.ffn_hidden) if c.ffn_hidden else None
        return TransformerBlock(c.d_model, mixer, ffn, norm="rmsnorm", norm_eps=c.norm_eps, dropout=c.dropout)

    def reset_parameters(self) -> None:
        """Normal(0, ``init_std``) linear, embedding and short-convolution weights, zero biases (fla's
        ``_init_weights``, which treats the convolutions as it does the linears), then each mixer's own parameters."""
        super().reset_parameters()
        std = self.config.init_std
        for module in self.modules():
            if isinstance(module, nn.Linear | nn.Embedding | CausalDepthwiseConv1d):
                nn.init.normal_(module.weight, mean=0.0, std=std)
            if isinstance(module, nn.Linear | CausalDepthwiseConv1d) and module.bias is not None:
                nn.init.zeros_(module.bias)
