"""Config of ``decoder_only``: a causal transformer stack, Llama-style by default (torch-free).

The same fields describe the ``attention`` (Vaswani) and ``gqa`` (Ainslie) entries, which share the model class and
only change defaults (see :mod:`edifice_attention.configs.attention` and :mod:`edifice_attention.configs.gqa`).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from typing import Any, ClassVar

from edifice import field
from edifice.sequence import SequenceConfig

__all__ = ["DecoderOnlyConfig"]

_FFNS = ("mlp", "swiglu", "geglu", "reglu")
_NORMS = ("rmsnorm", "layernorm")
_POSITIONALS = ("rope", "sinusoidal", "none")


@dataclasses.dataclass(kw_only=True)
class DecoderOnlyConfig(SequenceConfig):
    """A causal transformer: GQA, RoPE, gated FFN, pre-norm RMSNorm, optional MoE (Llama / Mixtral)."""

    arch: str = field("decoder_only", "Registry name of the architecture this config builds.")
    n_heads: int = field(4, "Number of query heads.")
    n_kv_heads: int | None = field(None, "Number of key/value heads (divides n_heads); None means n_heads (MHA).")
    head_dim: int | None = field(None, "Size of each attention head; None means d_model // n_heads.")
    d_ff: int | None = field(
        None, "Hidden size of the FFN (and of each expert); None means 4*d_model (mlp) or 8/3*d_model rounded up to 8."
    )
    ffn: str = field("swiglu", "Feed-forward kind: 'mlp', 'swiglu', 'geglu' or 'reglu'.")
    activation: str = field("gelu", "Activation of the 'mlp' feed-forward (the gated kinds fix their own).")
    norm: str = field("rmsnorm", "Normalisation: 'rmsnorm' or 'layernorm'.")
    norm_eps: float = field(1e-6, "Epsilon of every norm.")
    norm_position: str = field("pre", "'pre' (x + f(norm(x)), with a final norm) or 'post' (norm(x + f(x))).")
    attention_bias: bool = field(False, "Biases on the q/k/v/o projections.")
    ffn_bias: bool = field(False, "Biases on the feed-forward projections.")
    qk_norm: bool = field(False, "RMS-normalise queries and keys per head before RoPE (OLMo-2/Qwen3 style).")
    positional: str = field("rope", "Position information: 'rope', 'sinusoidal' (added to the input) or 'none'.")
    rope_base: float = field(10000.0, "RoPE base θ (transformers' rope_theta).")
    rotary_dim: int | None = field(None, "Rotate only the first rotary_dim features of each head; None means all.")
    rope_scaling: dict[str, Any] | None = field(
        None, "RoPE context extension, e.g. {'kind': 'yarn', 'factor': 4.0, 'original_max_position_embeddings': 64}."
    )
    window: int | None = field(None, "Sliding window: a query attends to the last `window` positions, itself included.")
    softcap: float | None = field(None, "Soft-cap attention logits to softcap * tanh(logits / softcap) (Gemma 2).")
    attention_dropout: float = field(0.0, "Dropout on the attention probabilities.")
    scale_embeddings: bool = field(False, "Multiply token embeddings by sqrt(d_model) (Vaswani et al. §3.4).")
    n_experts: int = field(0, "Mixture-of-experts FFN with this many experts; 0 means a dense FFN.")
    moe_top_k: int = field(2, "Experts per token when n_experts > 0.")
    moe_aux_loss_coef: float = field(0.01, "Weight of each MoE layer's load-balancing loss (summed into aux_loss).")
    init_std: float = field(0.02, "Standard deviation of the normal initialisation of linear and embedding weights.")

    aliases: ClassVar[Mapping[str, str]] = {
        **SequenceConfig.aliases,
        "intermediate_size": "d_ff",
        "rope_theta": "rope_base",
        "window_size": "window",
        "sliding_window": "window",
        "num_experts": "n_experts",
        "num_experts_per_tok": "moe_top_k",
    }

    def validate(self) -> None:
        """Check head, FFN, RoPE and MoE sizes agree and the choices are known."""
        super().validate()
        self.check_positive("n_heads", "n_kv_heads", "head_dim", "d_ff", "rotary_dim", "window", "softcap")
        self.check_positive("norm_eps", "rope_base", "init_std", "moe_top_k")
        self.check_activation("activation")
        if not self.rope_base > 1:
            self.fail("rope_base", "must be > 1 (RoPE's frequencies base^(-2i/d) must decrease)")
        self.check_positive("n_experts", "moe_aux_loss_coef", allow_zero=True)
        self.check_range("attention_dropout", 0.0, 0.999)
        self.check_choice("ffn", _FFNS)
        self.check_choice("norm", _NORMS)
        self.check_choice("norm_position", ("pre", "post"))
        self.check_choice("positional", _POSITIONALS)
        self.check_divides("n_kv_heads", "n_heads")
        if self.head_dim is None and self.d_model % self.n_heads:
            self.fail("n_heads", f"must divide d_model={self.d_model} (or set head_dim)")
        if self.rotary_dim is not None:
            if self.positional != "rope":
                self.fail("rotary_dim", "only applies with positional='rope'")
            if self.rotary_dim > self.head_size or self.rotary_dim % 2:
                self.fail("rotary_dim", f"must be even and <= head_dim={self.head_size}")
        if self.positional == "rope" and self.head_size % 2:
            self.fail("head_dim", "must be even for RoPE (features rotate in pairs)")
        if self.rope_scaling is not None and self.positional != "rope":
            self.fail("rope_scaling", "only applies with positional='rope'")
        if self.positional == "sinusoidal" and self.d_model % 2:
            self.fail("d_model", "must be even for the sinusoidal encoding")
        if self.n_experts and self.moe_top_k > self.n_experts:
            self.fail("moe_top_k", f"must be <= n_experts={self.n_experts}")

    @property
    def head_size(self) -> int:
        """The resolved head size (``head_dim`` or ``d_model // n_heads``)."""
        return self.head_dim if self.head_dim is not None else self.d_model // self.n_heads

    @property
    def kv_heads(self) -> int:
        """The resolved number of key/value heads (``n_kv_heads`` or ``n_heads``)."""
        return self.n_kv_heads if self.n_kv_heads is not None else self.n_heads

    @property
    def ffn_hidden(self) -> int:
        """The resolved FFN hidden size: ``d_ff``, else 4·d_model for an MLP and ⌈(8/3)·d_model / 8⌉·8 gated.

        The gated default keeps the parameter count of a 4·d_model MLP with three matrices instead of two
        (Shazeer 2020, §2; Llama's "2/3 4d").
        """
        if self.d_ff is not None:
            return self.d_ff
        if self.ffn == "mlp":
            return 4 * self.d_model
        return 8 * math.ceil(8 * self.d_model / 3 / 8)
