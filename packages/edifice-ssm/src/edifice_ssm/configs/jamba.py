"""Config and spec of ``jamba``: Mamba layers, one attention layer per period, MoE every other layer (torch-free).

The layer schedule is the paper's Jamba block (§2, Fig. 1): layer ``i`` is attention when
``i % attn_layer_period == attn_layer_offset`` (else Mamba) and its MLP is a mixture of experts when
``i % expert_layer_period == expert_layer_offset`` (and ``n_experts > 1``). The defaults are one Jamba block of the
released model: ``l = 8`` layers, ``a : m = 1 : 7``, MoE every ``e = 2`` layers, ``n = 16`` experts, top ``K = 2``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import ClassVar

from edifice import ArchSpec, Converter, Paper, field
from edifice.sequence import sequence_inputs, sequence_outputs
from edifice_ssm.configs.mamba import MambaConfig

__all__ = ["CONVERTERS", "SPECS", "JambaConfig"]

#: Activations of the gated MLPs (names of ``edifice.blocks.activations``).
_ACTIVATIONS = ("silu", "gelu", "gelu_tanh", "relu")


@dataclasses.dataclass(kw_only=True)
class JambaConfig(MambaConfig):
    """Jamba: interleaved Mamba (with RMSNorm on Δ, B, C) and attention layers, MoE MLPs, no positional encoding."""

    arch: str = field("jamba", "Registry name of the architecture this config builds.")
    n_layers: int = field(8, "Number of layers (a Jamba block is 8: one attention and seven Mamba layers).")
    n_heads: int = field(4, "Attention query heads.")
    n_kv_heads: int | None = field(2, "Key/value heads (grouped-query attention); None means n_heads.")
    head_dim: int | None = field(None, "Attention head size; None means d_model // n_heads.")
    attn_layer_period: int = field(8, "One attention layer in every this many layers (the rest are Mamba).")
    attn_layer_offset: int = field(4, "Index within each period of the attention layer.")
    expert_layer_period: int = field(2, "One mixture-of-experts MLP in every this many layers (the rest are dense).")
    expert_layer_offset: int = field(1, "Index within each period of the MoE layer.")
    n_experts: int = field(16, "Experts per MoE layer; 1 makes every MLP dense.")
    top_k: int = field(2, "Experts each token is routed to (unused when n_experts = 1).")
    d_ff: int | None = field(None, "Hidden width of each (expert) MLP; None means 3.5 * d_model as the released model.")
    activation: str = field("silu", "Activation of the gated MLPs (SwiGLU with 'silu').")
    norm_topk_prob: bool = field(False, "Renormalise the top-k router weights (Jamba keeps the raw softmax weights).")
    aux_loss_coef: float = field(0.001, "Weight of the MoE load-balancing loss returned as aux_loss.")
    norm_eps: float = field(1e-6, "Epsilon of every RMSNorm (block norms and the inner Δ, B, C norms).")

    aliases: ClassVar[Mapping[str, str]] = {
        **MambaConfig.aliases,
        "attention_every": "attn_layer_period",
        "num_experts": "n_experts",
        "num_experts_per_tok": "top_k",
        "intermediate_size": "d_ff",
        "router_aux_loss_coef": "aux_loss_coef",
    }

    def validate(self) -> None:
        """Check the layer schedule, heads and experts fit together."""
        super().validate()
        self.check_positive("n_heads", "n_kv_heads", "head_dim", "attn_layer_period", "expert_layer_period")
        self.check_positive("n_experts", "top_k", "d_ff")
        self.check_positive("attn_layer_offset", "expert_layer_offset", "aux_loss_coef", allow_zero=True)
        self.check_choice("activation", _ACTIVATIONS)
        if self.attn_layer_offset >= self.attn_layer_period:
            self.fail("attn_layer_offset", f"must be < attn_layer_period={self.attn_layer_period}")
        if self.expert_layer_offset >= self.expert_layer_period:
            self.fail("expert_layer_offset", f"must be < expert_layer_period={self.expert_layer_period}")
        if self.n_experts > 1 and self.top_k > self.n_experts:
            self.fail("top_k", f"must be <= n_experts={self.n_experts}")
        self.check_divides("n_kv_heads", "n_heads")
        if self.head_dim is None:
            self.check_divides("n_heads", "d_model")

    def is_attention(self, index: int) -> bool:
        """Whether layer ``index`` is an attention layer (else Mamba)."""
        return index % self.attn_layer_period == self.attn_layer_offset

    def is_moe(self, index: int) -> bool:
        """Whether layer ``index`` has a mixture-of-experts MLP (else a dense gated MLP)."""
        return self.n_experts > 1 and index % self.expert_layer_period == self.expert_layer_offset

    @property
    def ffn_dim(self) -> int:
        """The resolved MLP width (``d_ff`` or ``3.5 * d_model``)."""
        return self.d_ff if self.d_ff is not None else int(3.5 * self.d_model)


LIEBER = Paper(
    "Jamba: A Hybrid Transformer-Mamba Language Model",
    "Lieber, Lenz, Bata, Cohen, Osin, Dalmedigos, Safahi, Meirom, Belinkov, Shalev-Shwartz, Abend, Alon, Asida, "
    "Bergman, Glozman, Gokhman, Manevich, Ratner, Rozen, Shwartz, Zusman, Shoham",
    2024,
    "2403.19887",
)

SPECS = (
    ArchSpec(
        name="jamba",
        family="ssm",
        distribution="edifice-ssm",
        summary="Jamba: Mamba layers (RMSNorm on Δ, B, C) with one attention layer per period and top-2 MoE MLPs.",
        paper=LIEBER,
        config="edifice_ssm.configs.jamba:JambaConfig",
        model="edifice_ssm.jamba:Jamba",
        inputs=sequence_inputs(),
        outputs=sequence_outputs(aux_loss_when="n_experts > 1 and expert_layer_offset < n_layers"),
        tiny={
            "d_model": 16,
            "n_layers": 2,
            "d_in": 6,
            "d_state": 4,
            "d_conv": 3,
            "n_heads": 2,
            "n_kv_heads": 1,
            "attn_layer_period": 2,
            "attn_layer_offset": 1,
            "expert_layer_period": 2,
            "expert_layer_offset": 1,
            "n_experts": 4,
            "d_ff": 24,
        },
        verification="parity:transformers.JambaForCausalLM",
        interop=("transformers.JambaModel", "transformers.JambaForCausalLM"),
        causal=True,
        stateful=True,
        variable_length=True,
    ),
)

CONVERTERS = (
    Converter(
        "transformers.JambaForCausalLM",
        "jamba",
        "edifice_ssm.convert_jamba:from_jamba",
        "transformers JambaForCausalLM (with its LM head) onto jamba.",
    ),
    Converter(
        "transformers.JambaModel",
        "jamba",
        "edifice_ssm.convert_jamba:from_jamba",
        "transformers JambaModel weights onto jamba (the LM head is tied to the embedding).",
    ),
)
