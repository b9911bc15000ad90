"""``reservoir``: an echo state network (ESN) -- a fixed random recurrent reservoir and a trained linear readout.

Jaeger, 2001, "The “echo state” approach to analysing and training recurrent neural networks", GMD Report 148
(https://www.ai.rug.nl/minds/uploads/EchoStatesTechRep.pdf), with the leaky-integrator units of Jaeger, Lukoševičius,
Popovici & Siewert, 2007, "Optimization and applications of echo state networks with leaky-integrator neurons",
Neural Networks 20(3), https://doi.org/10.1016/j.neunet.2007.04.016, written as in Lukoševičius, 2012, "A Practical
Guide to Applying Echo State Networks" (eqs. 2-4 and 9)::

    x̃(n) = tanh(W_in [1; u(n)] + W x(n-1))              (2)   x(0) = 0
    x(n) = (1 - a) x(n-1) + a x̃(n)                       (3)   leak rate a (a = 1: Jaeger 2001, eq. 1 without feedback)
    y(n) = W_out [1; u(n); x(n)]                          (4)   ([1; x(n)] with readout_input=False)
    W_out = Y X^T (X X^T + β I)^{-1}                      (9)   ridge regression over the collected [1; u; x]

``W`` is sparse (each weight non-zero with probability ``1 - sparsity``, non-zeros ``~ U(-1, 1)``) and rescaled so
that its spectral radius ``max |eig(W)|`` is exactly ``spectral_radius`` (computed in fp64); ``W_in ~ U(-s, s)``
with ``s = input_scaling`` (``bias_scaling`` for the bias column). Both are drawn from ``seed`` with their own
generator and kept as buffers: the reservoir is never trained. Only the readout ``W_out`` (an ``nn.Linear``) is a
parameter, fitted in closed form by :meth:`Reservoir.fit` (``washout`` initial steps of each sequence ignored) or by
gradients like any other layer.

Padding (``attention_mask``): a pad step leaves the state unchanged and outputs zeros, so each sequence's valid
steps see exactly the unpadded run. ``step`` continues from a :class:`ReservoirState` and equals ``forward``.

Deviations: no output feedback ``W_back y(n-1)`` (Jaeger's eq. 1 allows it; it needs teacher forcing while fitting);
the reservoir runs in fp32 (the fit solves in fp64); the ridge penalty also covers the readout's bias, as in (9).
"""

from __future__ import annotations

from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from edifice.config import ArchConfig
from edifice.dtypes import upcast
from edifice.model import Model
from edifice.outputs import model_output
from edifice_recurrent.configs.reservoir import ReservoirConfig

__all__ = ["Reservoir", "ReservoirState", "draw_reservoir"]


@model_output
class ReservoirState:
    """Decoding state of the reservoir, updated in place by ``step``."""

    h: Tensor
    """Reservoir state ``x(n)`` ``[B, reservoir_size]``, fp32."""


def draw_reservoir(
    d_in: int,
    size: int,
    *,
    spectral_radius: float,
    input_scaling: float,
    bias_scaling: float,
    sparsity: float,
    seed: int,
) -> tuple[Tensor, Tensor, Tensor]:
    """``(W_in [N, d_in], bias [N], W [N, N])`` in fp64 on the CPU, drawn from ``seed`` (see the module docstring).

    ``W`` is rescaled to spectral radius exactly ``spectral_radius``; a draw whose spectral radius is zero (every
    eigenvalue zero, possible for tiny very sparse reservoirs) is drawn again.
    """
    g = torch.Generator(device="cpu").manual_seed(seed)
    f64 = torch.float64
    w_in = (torch.rand(size, d_in, generator=g, dtype=f64, device="cpu") * 2 - 1) * input_scaling
    bias = (torch.rand(size, generator=g, dtype=f64, device="cpu") * 2 - 1) * bias_scaling
    for _ in range(100):
        keep = torch.rand(size, size, generator=g, dtype=f64, device="cpu") >= sparsity
        w = (torch.rand(size, size, generator=g, dtype=f64, device="cpu") * 2 - 1) * keep
        radius = float(torch.linalg.eigvals(w).abs().max())
        if radius > 1e-8:
            return w_in, bias, w * (spectral_radius / radius)
    raise ValueError(
        f"draw_reservoir: 100 draws of a {size}x{size} reservoir with sparsity={sparsity} all had spectral radius 0; "
        "use a larger reservoir_size or a lower sparsity"
    )


class Reservoir(Model):
    """``reservoir``: leaky ESN ``x [B, T, d_in] -> y [B, T, d_out]`` with a fixed reservoir and a linear readout."""

    config_class: ClassVar[type[ArchConfig]] = ReservoirConfig
    config: ReservoirConfig
    w_in: Tensor
    b_in: Tensor
    w: Tensor

    def __init__(self, config: ReservoirConfig) -> None:
        super().__init__(config)
        n = config.reservoir_size
        self.register_buffer("w_in", torch.empty(n, config.d_in))  # W_in without its bias column
        self.register_buffer("b_in", torch.empty(n))  # the bias column of W_in
        self.register_buffer("w", torch.empty(n, n))  # W, spectral radius = config.spectral_radius
        self.readout = nn.Linear(config.n_features, config.d_out)  # W_out, its bias the weight of the constant 1
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Draw the reservoir from ``seed`` (rescaled to the spectral radius) and re-initialise the readout."""
        self.readout.reset_parameters()
        if self.w.device.type == "meta":
            return
        c = self.config
        w_in, bias, w = draw_reservoir(
            c.d_in,
            c.reservoir_size,
            spectral_radius=c.spectral_radius,
            input_scaling=c.input_scaling,
            bias_scaling=c.bias_scaling,
            sparsity=c.sparsity,
            seed=c.seed,
        )
        with torch.no_grad():
            for buffer, value in ((self.w_in, w_in), (self.b_in, bias), (self.w, w)):
                buffer.copy_(value.to(buffer.device, buffer.dtype))

    # -- the reservoir -------------------------------------------------------------------------------------------
    def states(self, x: Tensor, h: Tensor | None = None, mask: Tensor | None = None) -> Tensor:
        """States ``x(n)`` ``[B, T, N]`` (fp32; fp64 for an fp64 model) for ``x [B, T, d_in]`` from ``h`` (None: zeros).

        ``mask [B, T]`` marks valid steps; a pad step keeps the state. ``h`` is not modified.
        """
        a = self.config.leak_rate
        w = upcast(self.w)
        drive = F.linear(upcast(x).to(w.dtype), upcast(self.w_in), upcast(self.b_in))  # (B, T, N): W_in [1; u(n)]
        h = drive.new_zeros(x.shape[0], w.shape[0]) if h is None else h.to(drive.dtype)
        out = []
        for t in range(x.shape[1]):
            new = (1 - a) * h + a * torch.tanh(drive[:, t] + h @ w.T)  # eqs. (2)-(3)
            h = new if mask is None else torch.where(mask[:, t, None], new, h)
            out.append(h)
        return torch.stack(out, 1)

    def features(self, x: Tensor, states: Tensor) -> Tensor:
        """The readout's inputs ``[u(n); x(n)]`` (or ``x(n)``) ``[B, T, n_features]`` (its bias is the 1)."""
        return torch.cat([x.to(states.dtype), states], -1) if self.config.readout_input else states

    def _readout(self, x: Tensor, states: Tensor, mask: Tensor | None) -> Tensor:
        """``y(n) = W_out [1; u(n); x(n)]`` ``[B, T, d_out]``, zero at pad steps."""
        feats = self.features(x, states).to(self.readout.weight.dtype)
        y: Tensor = self.readout(feats)
        if mask is not None:
            y = y.masked_fill(~mask.unsqueeze(-1), 0.0)
        return y.to(x.dtype)

    def forward(self, x: Tensor, attention_mask: Tensor | None = None) -> Tensor:
        """``x [B, T, d_in]`` -> ``y [B, T, d_out]`` (pooled to ``[B, d_out]`` by ``output``)."""
        self.check_inputs(x=x, attention_mask=attention_mask)
        y = self._readout(x, self.states(x, mask=attention_mask), attention_mask)
        return _pool(y, attention_mask, self.config.output)

    # -- stepping --------------------------------------------------------------------------------------------------
    def init_state(
        self,
        batch_size: int,
        *,
        max_len: int | None = None,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> ReservoirState:
        """``x(0) = 0`` ``[B, N]`` in fp32 (fp64 for an fp64 model), constant size whatever ``max_len``."""
        device = self.w.device if device is None else device
        work = torch.float64 if (dtype or self.w.dtype) == torch.float64 else torch.float32
        return ReservoirState(h=torch.zeros(batch_size, self.config.reservoir_size, device=device, dtype=work))

    def step(
        self, x: Tensor, state: ReservoirState, *, attention_mask: Tensor | None = None
    ) -> tuple[Tensor, ReservoirState]:
        """Advance by the ``t >= 1`` steps of ``x [B, t, d_in]``: ``(y [B, t, d_out], state)``, ``state`` in place."""
        self.check_inputs(x=x, attention_mask=attention_mask)
        states = self.states(x, state.h, attention_mask)  # (B, t, N)
        state.h.copy_(states[:, -1])
        return self._readout(x, states, attention_mask), state

    # -- the closed-form readout -----------------------------------------------------------------------------------
    @torch.no_grad()
    def fit(
        self,
        x: Tensor,
        y: Tensor,
        attention_mask: Tensor | None = None,
        *,
        ridge: float | None = None,
        washout: int | None = None,
    ) -> Reservoir:
        """Fit the readout by ridge regression, eq. (9), on inputs ``x [B, T, d_in]`` and targets ``y``.

        ``y`` is ``[B, T, d_out]`` for ``output="all"`` (every valid step from ``washout`` on is a sample), else
        ``[B, d_out]`` (the pooled features of each sequence are one sample). ``ridge`` and ``washout`` default to
        the config's. Returns the model.
        """
        c = self.config
        self.check_inputs(x=x, attention_mask=attention_mask)
        beta = c.ridge if ridge is None else ridge
        skip = c.washout if washout is None else washout
        B, T = x.shape[:2]
        valid = torch.ones(B, T, dtype=torch.bool, device=x.device) if attention_mask is None else attention_mask
        position = valid.long().cumsum(1) - 1  # index of each step among the valid ones
        used = valid & (position >= skip)  # (B, T)
        feats = self.features(x, self.states(x, mask=attention_mask)).double()  # (B, T, F)
        expected = (B, T, c.d_out) if c.output == "all" else (B, c.d_out)
        if tuple(y.shape) != expected:
            raise ValueError(
                f"{c.arch}: fit expected targets y of shape {list(expected)} (output={c.output!r}), got {list(y.shape)}"
            )
        if c.output == "all":
            phi, target = feats[used], y.double()[used]  # (M, F), (M, d_out)
        else:
            phi = _pool(feats.masked_fill(~used.unsqueeze(-1), 0.0), used, c.output)  # (B, F)
            target = y.double()
        if phi.shape[0] == 0:
            raise ValueError(f"{c.arch}: fit has no samples left (washout={skip} skips every valid step)")
        phi = torch.cat([phi.new_ones(phi.shape[0], 1), phi], -1)  # [1; u; x]
        gram = phi.T @ phi + beta * torch.eye(phi.shape[1], dtype=phi.dtype, device=phi.device)
        w_out = torch.linalg.solve(gram, phi.T @ target)  # (1 + F, d_out): W_out^T
        self.readout.bias.copy_(w_out[0].to(self.readout.bias.dtype))
        self.readout.weight.copy_(w_out[1:].T.to(self.readout.weight.dtype))
        return self


def _pool(y: Tensor, mask: Tensor | None, mode: str) -> Tensor:
    """``y [B, T, d]`` as ``output`` asks: every step, the last valid one, or the masked mean."""
    if mode == "all":
        return y
    if mode == "last":
        if mask is None:
            return y[:, -1]
        last = y.shape[1] - 1 - mask.flip(-1).to(torch.int32).argmax(-1)  # (B,) index of the last valid step
        return y[torch.arange(y.shape[0], device=y.device), last]
    if mask is None:
        return y.mean(dim=1)
    weights = mask.to(y.dtype).unsqueeze(-1)  # (B, T, 1)
    return (y * weights).sum(dim=1) / weights.sum(dim=1).clamp(min=1.0)
