"""MIRAS: Moneta, Yaad and Memora, deep-memory RNNs chosen by their attentional bias and retention gate.

Behrouz, Razaviyayn, Zhong & Mirrokni (2025), "It's All Connected: A Journey Through Test-Time Memorization,
Attentional Bias, Retention, and Online Optimization", https://arxiv.org/abs/2504.13173. MIRAS reads a sequence model
as an associative memory ``M`` learned online by four choices -- memory architecture, attentional bias (the inner
loss), retention gate and learning algorithm -- and builds three models from them (§5), each a per-head two-layer MLP
memory ``M(x) = x + LN(W_2 σ(W_1 x))`` (expansion 4, GELU) trained by gradient descent at test time::

    Moneta  ℓ(W; k, v) = ‖M(k) - v‖_p^p                  ℓ_p attentional bias (§3, eq. 10; p = p_norm)
            A_t = α_t A_{t-1} - η_t ∇ℓ(W_{t-1}; k_t, v_t),  W_t = A_t / ‖A_t‖_q^{q-2}   ℓ_q retention (§5.1)
    Yaad    W_t = α_t W_{t-1} - η_t ∇ℓ₂(W_{t-1})        if ‖M(k_t) - v_t‖ <= δ_t     Huber bias, "coping" with
                               - η_t δ_t ∇ℓ₁(W_{t-1})   otherwise                   outliers (§3, §5.2)
    Memora  W_t = c · Softmax(α_t log W_{t-1} - η_t ∇ℓ₂(W_{t-1}))                   KL retention (§4, §5.3)

with data-dependent per-head gates: learning rate ``η_t = memory_lr σ(x_t w_η) / head_dim``, retention
``α_t = σ(x_t w_α)`` and (Yaad) threshold ``δ_t = softplus(x_t w_δ)``. All three run through
:func:`edifice.ops.memory_gd` -- its ``loss`` ("lp", "huber", "l2") and ``readout`` ("lq", "identity", "softmax")
keywords are exactly these choices; Memora's softmax update is the op's linear retention on the logits ``A``
(``α log W + const = α A + const`` and the softmax ignores the constant), read out as ``W = c·softmax(A)`` over each
weight's input axis (the per-slice normalisation of §4). ``|x|`` in the ℓ_p bias is smoothed as ``sqrt(x² + ε)``
(§3's smooth approximations), which also smooths ``Sign``.

Training is chunked as §5.4: the gradients of a chunk of ``mini_batch_size`` tokens are all taken at the memory of
the chunk's start, and the retention recurrences are linear in them. Where the read-out is non-linear (Moneta with
``q != 2``, Memora) the op applies it to every token's accumulated state exactly, instead of the paper's
linearisation inside chunks (its lag-token approximation): the chunked and recurrent forms then agree exactly, and
``step`` continues a prompt token by token from a constant-size state.

Each block follows §5.4's macro design (Llama-like, as Gated DeltaNet): ``x + MIRAS(RMSNorm(x))`` then
``x + SwiGLU(RMSNorm(x))``; the layer projects q, k, v, applies a depthwise causal convolution and SiLU, ℓ2-normalises
q and k, reads the memory, RMS-normalises each head and gates it with ``σ(x W_g)`` before the output projection.

Padding: valid tokens are moved to the front of each sequence before the layer (and back after), so chunks start at
the first valid token as without padding; ``step`` skips padded tokens.

Initialisation (not given by the paper): linear weights ``N(0, 0.02²)``; the memory ``W_0 ~ N(0, 1/D_in)`` (fan-in
scaling: q and k have unit norm, and with smaller weights the memory's inner LayerNorm sees a near-constant input and
amplifies every step); Memora's logits ``A_0 ~ N(0, 1)``, so that ``c·softmax(A_0)`` is not the degenerate uniform
memory; Moneta's ``A_0`` rescaled to ``‖A_0‖_q = 1`` per head, so that ``W_0 = A_0`` and the normaliser starts at 1
(rather than multiplying the first steps by ``‖A_0‖_q^{2-q}``); gate biases ``η: σ(-3) ≈ 0.047``, ``α: σ(4) ≈ 0.98``
(strong retention; Moneta ``σ(7) ≈ 0.999``), ``δ: softplus⁻¹(1)``; ``memory_lr = 0.1`` (at 1 the ℓ_p and Huber
memories take steps as large as their weights at initialisation, and the untrained model is chaotic).

The two gate biases keep the untrained inner optimisation stable over long sequences, where a chaotic one leaves the
forward pass finite but makes the backward through thousands of inner steps grow geometrically (measured on the tiny
config, fp32, gradient at the first input of a loss on every output: Yaad at ``η: σ(0)`` reaches 1e10 at T = 256 and
NaN by T = 1024). Yaad's ℓ₁ branch takes steps of constant size ``η δ`` that never shrink as the memory fits, so the
step must start small: ``σ(-3)`` (the learnable gate can still raise it to ``memory_lr / head_dim``). Moneta's read-out
``A / ‖A‖_q^{q-2}`` grows as retention shrinks ``A`` (``q = 4``: ``W ∝ 1/‖A‖``), so it starts at ``α ≈ 0.999``
(at 0.98 its gradient reaches NaN by T = 1536). Both hold at T = 4096 in bf16 (``tests/test_numerics.py``).

Deviations: the gates are per-head scalars (the paper's are channel-wise through low-rank projections);
``momentum=True`` adds the "GD with momentum" learning algorithm the framework allows but none of the three models
uses. Yaad's ℓ₁ branch keeps the exact ``Sign(e)`` of eq. 26, so its update is discontinuous where an error crosses 0.
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from edifice.blocks.norms import get_norm
from edifice.config import ArchConfig
from edifice.outputs import model_output
from edifice_recurrent._test_time import (
    FastWeightBackbone,
    FastWeightMemory,
    FastWeightState,
    ShortConvs,
    compact,
    inverse_softplus,
    l2_normalize,
    restore,
)
from edifice_recurrent.configs.miras import VARIANTS, MirasConfig

__all__ = ["Miras", "MirasLayer", "MirasState"]

#: Initial bias of the learning-rate gate: η = memory_lr σ(-3) / head_dim ≈ 0.047 memory_lr / head_dim (module doc).
LR_BIAS = -3.0
#: Initial bias of the retention gate: α = σ(4) ≈ 0.982; Moneta σ(7) ≈ 0.999, as its ℓ_q read-out amplifies decay.
RETAIN_BIAS = {"moneta": 7.0, "yaad": 4.0, "memora": 4.0}
#: Standard deviation of Memora's initial logits A_0: W_0 = c·softmax(A_0) is then a random column-stochastic
#: matrix; near-zero logits would give the uniform one, whose hidden units are all equal.
MEMORA_LOGIT_STD = 1.0


@model_output
class MirasState:
    """Decoding state of a :class:`MirasLayer`: constant size, updated in place by each step."""

    conv: Tensor
    """The q, k, v convolution history ``[B, 3·H·D, conv_size - 1]``."""
    memory: FastWeightState
    """The memory's accumulated state at the chunk start and now (and its momentum), tokens seen."""


class MirasLayer(nn.Module):
    """A Moneta / Yaad / Memora token mixer ``[B, T, d_model] -> [B, T, d_model]`` (module doc), with ``init_state``."""

    def __init__(
        self,
        d_model: int,
        n_heads: int,
        head_dim: int,
        *,
        variant: str = "moneta",
        memory_depth: int = 2,
        memory_hidden: int | None = None,
        p_norm: float = 3.0,
        q_norm: float = 4.0,
        kl_scale: float = 1.0,
        momentum: bool = False,
        memory_lr: float = 0.1,
        mini_batch_size: int = 16,
        conv_size: int = 4,
        norm_eps: float = 1e-6,
        init_std: float = 0.02,
    ) -> None:
        super().__init__()
        if variant not in VARIANTS:
            raise ValueError(f"MirasLayer: variant must be one of {', '.join(VARIANTS)}, got {variant!r}")
        width = n_heads * head_dim
        self.variant, self.n_heads, self.head_dim, self.width = variant, n_heads, head_dim, width
        self.momentum, self.memory_lr, self.init_std, self.q_norm = momentum, memory_lr, init_std, q_norm
        self.qkv = nn.Linear(d_model, 3 * width, bias=False)
        self.convs = ShortConvs([3 * width], conv_size)  # one depthwise convolution over q, k and v
        n_gates = 3 + (1 if variant == "yaad" else 0)  # η | α | momentum | δ
        self.gate_proj = nn.Linear(d_model, n_gates * n_heads, bias=True)
        rules: dict[str, dict[str, Any]] = {
            "moneta": {"loss": "lp", "p": p_norm, "readout": "lq", "readout_q": q_norm},
            "yaad": {"loss": "huber"},
            "memora": {"loss": "l2", "readout": "softmax", "readout_scale": kl_scale},
        }
        rule = rules[variant]
        self.memory = FastWeightMemory(
            n_heads,
            head_dim,
            head_dim,
            depth=memory_depth,
            hidden=memory_hidden,
            bias=False,
            activation="gelu",
            norm=True,
            residual=True,
            norm_eps=norm_eps,
            init_std=MEMORA_LOGIT_STD if variant == "memora" else None,  # N(0, 1/D_in): keys have unit norm
            chunk_size=mini_batch_size,
            momentum=momentum,
            **rule,
        )
        self.out_norm = get_norm("rmsnorm", head_dim, eps=norm_eps)
        self.g_proj = nn.Linear(d_model, width, bias=False)
        self.o_proj = nn.Linear(width, d_model, bias=False)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Gate biases ``η: LR_BIAS``, ``α: RETAIN_BIAS``, ``momentum: 0``, ``δ: softplus⁻¹(1)``; the memory's own init
        (Moneta: rescaled to unit ℓ_q norm)."""
        H = self.n_heads
        with torch.no_grad():
            bias = self.gate_proj.bias
            bias.zero_()
            bias[:H] = LR_BIAS
            bias[H : 2 * H] = RETAIN_BIAS[self.variant]
            if self.variant == "yaad":
                bias[3 * H :] = inverse_softplus(1.0)
        self.memory.reset_parameters()
        if self.variant == "moneta":  # ‖A_0‖_q = 1 per head: W_0 = A_0 and the ℓ_q normaliser starts at 1
            with torch.no_grad():
                for weight in (self.memory.W1, self.memory.W2):
                    if weight is not None:
                        weight.div_(weight.abs().pow(self.q_norm).sum((-2, -1), keepdim=True).pow(1 / self.q_norm))

    def memory_inputs(self, x: Tensor, conv_state: Tensor | None = None, valid: Tensor | None = None) -> dict[str, Any]:
        """q, k, v ``[B, T, H, D]`` and the op's gates ``[B, T, H]`` for ``x [B, T, d_model]``."""
        B, T, _ = x.shape
        H, D = self.n_heads, self.head_dim
        (qkv,) = self.convs([self.qkv(x)], conv_state, valid)
        q, k, v = qkv.chunk(3, dim=-1)
        q, k, v = (F.silu(t).view(B, T, H, D) for t in (q, k, v))
        q, k = l2_normalize(q), l2_normalize(k)
        work = torch.promote_types(x.dtype, torch.float32)
        gates = self.gate_proj(x).to(work).split(H, dim=-1)  # (B, T, H) each
        lr = self.memory_lr * torch.sigmoid(gates[0]) / D
        if self.variant == "memora":
            lr = 2.0 * lr  # ℓ₂ = ‖M(k) - v‖²: the op's loss is ½‖·‖²
        out: dict[str, Any] = {"q": q, "k": k, "v": v, "lr": lr, "retain": torch.sigmoid(gates[1])}
        if self.momentum:
            out["momentum"] = torch.sigmoid(gates[2])
        if self.variant == "yaad":
            out["delta"] = F.softplus(gates[3])
        return out

    def init_state(
        self,
        batch_size: int,
        *,
        max_len: int | None = None,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> MirasState:
        """Zero convolution histories (in ``dtype``) and the memory at ``W_0`` (fp32); ``max_len`` unused."""
        return MirasState(
            conv=self.convs.init_state(batch_size, device=device, dtype=dtype),
            memory=self.memory.init_state(batch_size, device=device),
        )

    def forward(
        self, x: Tensor, *, mask: Tensor | None = None, positions: Tensor | None = None, state: MirasState | None = None
    ) -> Tensor:
        """``x [B, T, d_model]`` -> ``[B, T, d_model]``; ``mask [B, T]`` marks valid tokens; ``state`` is updated."""
        B, T, _ = x.shape
        if state is None:
            xs, order = compact(x, mask)  # valid tokens first, so chunks start at each sequence's first token
            inputs = self.memory_inputs(xs)
            if mask is not None and order is not None:
                inputs["lr"] = inputs["lr"] * torch.gather(mask, 1, order)[..., None]
            o = self.memory(**inputs)
        else:
            xs, order = x, None
            o = self.memory.step(state.memory, **self.memory_inputs(x, state.conv, mask), valid=mask)
        y = self.out_norm(o.to(x.dtype)).reshape(B, T, self.width) * torch.sigmoid(self.g_proj(xs))
        out: Tensor = self.o_proj(y)
        return restore(out, order)

    def extra_repr(self) -> str:
        return f"variant={self.variant}, heads={self.n_heads}x{self.head_dim}"


class Miras(FastWeightBackbone):
    """Moneta / Yaad / Memora: ``n_layers`` blocks ``x + MIRAS(RMSNorm(x))``, ``x + SwiGLU(RMSNorm(x))``."""

    config_class: ClassVar[type[ArchConfig]] = MirasConfig
    config: MirasConfig

    def build_mixer(self, index: int) -> nn.Module:
        """The :class:`MirasLayer` of every layer."""
        c = self.config
        return MirasLayer(
            c.d_model,
            c.n_heads,
            c.head_size,
            variant=c.variant,
            memory_depth=c.memory_depth,
            memory_hidden=c.memory_hidden,
            p_norm=c.p_norm,
            q_norm=c.q_norm,
            kl_scale=c.kl_scale,
            momentum=c.momentum,
            memory_lr=c.memory_lr,
            mini_batch_size=c.mini_batch_size,
            conv_size=c.conv_size,
            norm_eps=c.norm_eps,
            init_std=c.init_std,
        )
