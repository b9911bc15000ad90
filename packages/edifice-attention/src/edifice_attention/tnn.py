"""TNN: the Toeplitz Neural Network, token mixing by a learned Toeplitz matrix applied with an FFT.

Paper: Qin, Han, Sun, Li, Kong, Li & Zhong (2023), "Toeplitz Neural Network for Sequence Modeling", ICLR 2023,
https://arxiv.org/abs/2305.04749.

Implemented (per channel ``c`` of the GTU width ``d1``):

* §3.2, the Toeplitz neural operator: ``y = T v`` with ``T_ij = t_{i-j}`` (eq. 3-4), the product computed in
  ``O(n log n)`` by embedding ``T`` in a circulant matrix and using the FFT (§3.2, eq. 6) --
  :func:`edifice.ops.long_conv` (the causal convolution with kernel ``t_0 .. t_{n-1}``, zero-padded so nothing
  wraps around);
* §3.3, the relative position encoder: ``t_k = RPE(k)``, a small MLP of the (raw, un-normalised) offset ``k``:
  ``Linear(1, rpe_dim)``, ``rpe_layers`` × [LayerNorm, act, ``Linear(rpe_dim, rpe_dim)``], then [LayerNorm, act,
  ``Linear(rpe_dim, d1)``] -- one coefficient per channel, so any length extrapolates;
* §3.4, the exponential decay bias: ``t_k <- γ^{|k|} t_k`` (``γ = 0.99``), keeping distant tokens' weight bounded;
* §3.5, the Gated Toeplitz Unit: ``u, v = act(x W_uv)`` split in two, ``y = Norm(u ⊙ T v) W_o``; blocks are
  pre-norm residual GTU + GLU (``act(x W_1) ⊙ x W_2 W_3``, hidden ``d_model``), RMSNorm.

Causal model (the registered entry): ``T`` lower triangular, ``y_i = Σ_{j<=i} t_{i-j} v_j``. The kernel spans the
whole history, so the decoding state is a buffer of every past ``v`` (``max_len`` positions, fixed shape) and a
step re-applies the kernel to the buffer and reads the new positions (the spec's ``reasons['stateful']`` says so).
``causal=False`` gives the two-sided operator (``t_{-k} = γ^k RPE(-k)``) and has no ``step``.

Deviations: the norms are RMSNorm with a gain where the authors' code uses a gain-free "SimpleRMSNorm"; heads are
not modelled (the authors' ``h`` heads share one encoder whose ``h · d`` outputs are the same per-channel kernels).
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from edifice import ops
from edifice.blocks.activations import get_activation
from edifice.blocks.ffn import get_ffn
from edifice.blocks.norms import get_norm
from edifice.config import ArchConfig
from edifice.outputs import model_output
from edifice_attention._linear_attention import MixerStackBackbone
from edifice_attention.configs.tnn import TNNConfig

__all__ = ["TNN", "GatedToeplitzUnit", "RelativePositionEncoder", "ToeplitzState"]


@model_output
class ToeplitzState:
    """Decoding state of one GTU: every past input of the Toeplitz operator (the kernel spans the history)."""

    history: Tensor
    """``[B, max_len, d1]``: the GTU's ``v`` at each absolute position written so far (zeros elsewhere)."""


class RelativePositionEncoder(nn.Module):
    """§3.3: offset ``k`` (a float) -> one Toeplitz coefficient per channel, ``[n] -> [n, d1]``."""

    def __init__(self, config: TNNConfig) -> None:
        super().__init__()
        c = config
        self.pos_proj = nn.Linear(1, c.rpe_dim, bias=c.bias)

        def block(out: int) -> nn.Sequential:
            act = get_activation(c.rpe_activation)
            return nn.Sequential(nn.LayerNorm(c.rpe_dim), act, nn.Linear(c.rpe_dim, out, bias=c.bias))

        self.layers = nn.ModuleList(block(c.rpe_dim) for _ in range(c.rpe_layers))
        self.out = block(c.inner_dim)

    def forward(self, index: Tensor) -> Tensor:
        h = self.pos_proj(index[:, None])
        for layer in self.layers:
            h = layer(h)
        out: Tensor = self.out(h)
        return out


class GatedToeplitzUnit(nn.Module):
    """§3.5: ``Norm(u ⊙ T v) W_o`` with ``u, v = act(x W_uv)`` and ``T`` the Toeplitz operator of the module doc."""

    def __init__(self, config: TNNConfig) -> None:
        super().__init__()
        c = self.config = config
        self.uv_proj = nn.Linear(c.d_model, 2 * c.inner_dim, bias=c.bias)
        self.act = get_activation(c.activation)
        self.rpe = RelativePositionEncoder(c)
        self.norm = get_norm(c.norm, c.inner_dim, eps=c.norm_eps)
        self.o_proj = nn.Linear(c.inner_dim, c.d_model, bias=c.bias)

    def coefficients(self, n: int, *, sign: int = 1, device: torch.device | None = None) -> Tensor:
        """``t_{sign·k}`` for ``k = 0 .. n-1`` as ``[d1, n]`` (fp32 or the parameters' wider dtype): RPE × decay."""
        w = self.rpe.pos_proj.weight
        dtype = torch.promote_types(w.dtype, torch.float32)
        k = torch.arange(n, device=w.device if device is None else device, dtype=dtype)
        t: Tensor = self.rpe(sign * k.to(w.dtype)).to(dtype)  # (n, d1)
        if self.config.use_decay:
            t = t * (self.config.gamma**k)[:, None]  # γ^{|k|}
        return t.T

    def toeplitz(self, v: Tensor) -> Tensor:
        """``T v`` for a whole sequence ``v [B, T, d1]`` (causal, or two-sided when ``causal=False``)."""
        n = v.shape[1]
        y = ops.long_conv(v, self.coefficients(n))  # Σ_{j<=i} t_{i-j} v_j
        if not self.config.causal and n > 1:
            neg = self.coefficients(n, sign=-1)[:, 1:]  # t_{-1} .. t_{-(n-1)}
            back = ops.long_conv(v.flip(1)[:, :-1], neg)  # Σ_{j>i} t_{i-j} v_j, read from the reversed sequence
            y = y + torch.cat([back.flip(1), torch.zeros_like(v[:, :1])], 1)
        return y

    def init_state(
        self,
        batch_size: int,
        *,
        max_len: int | None = None,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> ToeplitzState:
        """A zero buffer of ``max_len`` (default ``config.max_len``) past inputs."""
        if not self.config.causal:
            raise ValueError("tnn: causal=False (two-sided Toeplitz) has no decoding state")
        w = self.o_proj.weight
        n = self.config.max_len if max_len is None else max_len
        history = torch.zeros(
            batch_size, n, self.config.inner_dim, device=w.device if device is None else device, dtype=dtype or w.dtype
        )
        return ToeplitzState(history=history)

    def forward(
        self,
        x: Tensor,
        *,
        mask: Tensor | None = None,
        positions: Tensor | None = None,
        state: ToeplitzState | None = None,
    ) -> Tensor:
        """``x [B, T, d_model]`` -> ``[B, T, d_model]``; padded positions (``mask`` False) feed zeros to ``T``."""
        u, v = self.act(self.uv_proj(x)).chunk(2, dim=-1)
        if mask is not None:
            v = v * mask[..., None].to(v.dtype)  # a pad contributes nothing; offsets between real tokens are kept
        if state is None:
            y = self.toeplitz(v)
        else:
            assert positions is not None, "tnn: a decoding step needs the absolute positions"
            buf = state.history
            n = buf.shape[1]
            valid = positions >= 0 if mask is None else mask & (positions >= 0)
            slot = positions.clamp(0, n - 1)[..., None].expand_as(v)  # (B, t, d1)
            old = buf.gather(1, slot)
            buf.scatter_(1, slot, torch.where(valid[..., None], v.to(buf.dtype), old))
            y = ops.long_conv(buf, self.coefficients(n)).gather(1, slot).to(v.dtype)
        out: Tensor = self.o_proj(self.norm(u * y))
        return out


class TNN(MixerStackBackbone):
    """TNN sequence backbone: pre-norm residual blocks of a Gated Toeplitz Unit and a GLU."""

    config_class: ClassVar[type[ArchConfig]] = TNNConfig
    config: TNNConfig

    def build_mixer(self, index: int) -> nn.Module:
        """The GTU (the same at every depth)."""
        return GatedToeplitzUnit(self.config)

    def build_ffn(self) -> nn.Module:
        """The paper's GLU: ``(act(x W_1) ⊙ x W_2) W_3`` with the model's activation (other kinds as configured)."""
        c = self.config
        options: dict[str, Any] = {"activation": c.activation} if c.ffn in ("glu", "mlp") else {}
        return get_ffn(c.ffn, c.d_model, c.ffn_hidden, bias=c.bias, **options)
