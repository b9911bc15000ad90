"""The extension point of the softmax-attention variants: :class:`VariantAttention`, a causal self-attention mixer.

The variants of the ``attention`` family built on ``decoder_only`` (``gated_attention``, ``sigmoid_attention``,
``ssmax``, ``softpick``, ``fox``, ``laser``, ``diff_transformer``) keep its projections, RoPE, qk-norm, grouped
key/value heads, KV cache and residual stack, and change only how the attention weights are formed or what is done
with the heads' output. :class:`VariantAttention` is core's :class:`~edifice.blocks.attention.Attention` with:

* a normaliser and value transform, run by :func:`edifice.ops.variant_attention` where softmax attention is not
  enough (``normalizer="sigmoid"|"softpick"``, ``logit_bias``, ``exp_values``), else by :func:`edifice.ops.sdpa`;
* an optional head-specific elementwise sigmoid output gate ``Y' = Y ⊙ σ(X W_θ)`` after attention and before
  ``o_proj`` (Qiu et al. 2025, arXiv:2505.06708, §2.2 position G1, eq. 5); fla's FoX and Qwen3-Next use the same;
* the hook :meth:`VariantAttention.attend` (``q, k, v`` and the masking keywords -> the heads' output), which
  entries whose mechanism lives in the scores (SSMax's ``s log n``, FoX's gate bias) override.

Each entry's model is :class:`~edifice_attention.decoder_only.DecoderOnly` with ``build_mixer`` returning its mixer
built from the decoder's shared ``attention_kwargs()``; see ``docs/design/attention_variants.md``.
"""

from __future__ import annotations

from typing import Any

from torch import Tensor, nn

from edifice import ops
from edifice.blocks.attention import Attention
from edifice.blocks.kv_cache import KVCache

__all__ = ["VariantAttention"]


class VariantAttention(Attention):
    """Causal (grouped-query) self-attention with a pluggable normaliser, exp-value transform and output gate."""

    def __init__(
        self,
        *args: Any,
        normalizer: str = "softmax",
        logit_bias: float = 0.0,
        exp_values: bool = False,
        output_gate: bool = False,
        **kwargs: Any,
    ) -> None:
        super().__init__(*args, **kwargs)
        if normalizer != "softmax" and self.softcap is not None:
            raise ValueError(f"{type(self).__name__}: softcap applies to softmax attention only")
        self.normalizer = normalizer
        self.logit_bias = float(logit_bias)
        self.exp_values = exp_values
        # G1 gate: one sigmoid per output channel of every head, from the block's input (Qiu et al. eq. 5).
        self.g_proj = nn.Linear(self.d_model, self.n_heads * self.head_dim, bias=False) if output_gate else None

    def reset_parameters(self) -> None:
        """PyTorch's default linear initialisation (architectures apply their scheme on top)."""
        super().reset_parameters()
        if self.g_proj is not None:
            self.g_proj.reset_parameters()

    @property
    def plain_softmax(self) -> bool:
        """Whether :meth:`attend` is ordinary softmax attention (``ops.sdpa``, its fast paths included)."""
        return self.normalizer == "softmax" and not self.exp_values and self.logit_bias == 0.0

    def attend(self, q: Tensor, k: Tensor, v: Tensor, **masking: Any) -> Tensor:
        """The heads' output ``[B, Hq, T, Dv]`` from q ``[B, Hq, T, D]``, k/v ``[B, Hk, L, D]`` and sdpa's masking."""
        if self.plain_softmax:
            out: Tensor = ops.sdpa(
                q,
                k,
                v,
                scale=self.scale,
                softcap=self.softcap,
                dropout_p=self.dropout if self.training else 0.0,
                **masking,
            )
            return out
        out = ops.variant_attention(
            q,
            k,
            v,
            normalizer=self.normalizer,
            logit_bias=self.logit_bias,
            exp_values=self.exp_values,
            scale=self.scale,
            **masking,
        )
        return out

    def finish(self, out: Tensor, x: Tensor) -> Tensor:
        """Output gate (when on) and ``o_proj``: heads ``[B, Hq, T, Dv]`` and the input ``x`` -> ``[B, T, d_model]``."""
        if self.g_proj is not None:
            B, H, T, Dv = out.shape
            gate = self.g_proj(x).view(B, T, H, Dv).transpose(1, 2).sigmoid()  # (B, Hq, T, Dv)
            out = out * gate
        return self._merge_heads(out)

    def forward(
        self,
        x: Tensor,
        *,
        mask: Tensor | None = None,
        positions: Tensor | None = None,
        state: KVCache | None = None,
    ) -> Tensor:
        """As :meth:`Attention.forward <edifice.blocks.attention.Attention.forward>`, through :meth:`attend`."""
        q, k, v = self._qkv(x, mask=mask, positions=positions, state=state)
        k, v, masking = self._fetch(k, v, mask=mask, positions=positions, state=state)
        return self.finish(self.attend(q, k, v, **masking), x)

    def extra_repr(self) -> str:
        extra = f", normalizer={self.normalizer!r}" if self.normalizer != "softmax" else ""
        extra += f", logit_bias={self.logit_bias:.4g}" if self.logit_bias else ""
        extra += ", exp_values=True" if self.exp_values else ""
        extra += ", output_gate=True" if self.g_proj is not None else ""
        return super().extra_repr() + extra
