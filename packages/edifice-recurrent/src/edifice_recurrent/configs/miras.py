"""Config and spec of ``miras``: Moneta, Yaad and Memora, the MIRAS framework's deep-memory RNNs (torch-free).

The model is :mod:`edifice_recurrent.miras`; ``variant`` picks the attentional bias and retention gate.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from typing import ClassVar, Literal

from edifice import ArchSpec, Paper, field
from edifice.sequence import SequenceConfig, sequence_inputs, sequence_outputs

__all__ = ["SPECS", "VARIANTS", "MirasConfig"]

#: The MIRAS models: ℓ_p bias + ℓ_q retention, Huber bias + ℓ2 retention, ℓ2 bias + KL retention.
VARIANTS = ("moneta", "yaad", "memora")


@dataclasses.dataclass(kw_only=True)
class MirasConfig(SequenceConfig):
    """MIRAS (Behrouz et al. 2025): blocks of a deep memory trained at test time by its attentional bias, and an FFN."""

    arch: str = field("miras", "Registry name of the architecture this config builds.")
    variant: Literal["moneta", "yaad", "memora"] = field(
        "moneta", "'moneta' (ℓ_p loss, ℓ_q retention), 'yaad' (Huber loss) or 'memora' (KL retention)."
    )
    n_heads: int = field(4, "Heads, each with its own memory on head_dim features.")
    head_dim: int | None = field(None, "Features per head; None means d_model // n_heads.")
    memory_depth: int = field(2, "Layers of the memory MLP (the paper's is 2); 1 is a linear memory.")
    memory_size: int | None = field(None, "Hidden units of the memory MLP; None means 4 * head_dim (expansion 4).")
    p_norm: float = field(3.0, "Moneta: p of the ℓ_p attentional bias ‖M(k) - v‖_p^p.")
    q_norm: float = field(4.0, "Moneta: q of the ℓ_q retention, W = A / ‖A‖_q^(q-2).")
    kl_scale: float = field(1.0, "Memora: c in W = c · softmax(A) (the mass of each weight column).")
    momentum: bool = field(False, "Learning algorithm: gradient descent (False, the paper's) or GD with momentum.")
    memory_lr: float = field(
        0.1, "Scale of the inner learning rate η_t = memory_lr σ(x w_η) / head_dim (larger makes the start chaotic)."
    )
    mini_batch_size: int = field(16, "Tokens per chunk whose gradients are taken at one memory state (§5.4).")
    conv_size: int = field(4, "Kernel size of the depthwise convolutions after the q, k, v projections.")
    d_ff: int | None = field(
        None, "Hidden size of each block's SwiGLU FFN; None means 8/3·d_model rounded up to 8; 0 none."
    )
    norm_eps: float = field(1e-6, "Epsilon of the RMSNorms and of the memory's LayerNorm.")
    init_std: float = field(0.02, "Standard deviation of the normal initialisation of linear weights and of W_0.")

    aliases: ClassVar[Mapping[str, str]] = {
        **SequenceConfig.aliases,
        "chunk_size": "mini_batch_size",
        "p": "p_norm",
        "q": "q_norm",
        "intermediate_size": "d_ff",
    }

    def validate(self) -> None:
        """Check the variant is known, the norms are valid exponents and the sizes positive."""
        super().validate()
        self.check_choice("variant", VARIANTS)
        self.check_choice("memory_depth", (1, 2))
        self.check_positive("n_heads", "head_dim", "memory_size", "kl_scale", "memory_lr", "mini_batch_size")
        self.check_positive("conv_size", "norm_eps", "init_std")
        self.check_positive("d_ff", allow_zero=True)
        if self.p_norm < 1:
            self.fail("p_norm", "must be >= 1 (ℓ_p with p < 1 is not a norm)")
        if self.q_norm <= 1:
            self.fail("q_norm", "must be > 1")
        if self.head_dim is None and self.d_model % self.n_heads:
            self.fail("n_heads", f"must divide d_model={self.d_model} (or set head_dim)")

    @property
    def head_size(self) -> int:
        """The resolved features per head."""
        return self.head_dim if self.head_dim is not None else self.d_model // self.n_heads

    @property
    def memory_hidden(self) -> int:
        """The resolved hidden size of the memory MLP."""
        return self.memory_size if self.memory_size is not None else 4 * self.head_size

    @property
    def ffn_hidden(self) -> int:
        """The resolved FFN hidden size (0: no FFN): ``d_ff``, else ⌈(8/3)·d_model / 8⌉·8."""
        return self.d_ff if self.d_ff is not None else 8 * math.ceil(8 * self.d_model / 3 / 8)


MIRAS = Paper(
    "It's All Connected: A Journey Through Test-Time Memorization, Attentional Bias, Retention, and Online "
    "Optimization",
    "Behrouz, Razaviyayn, Zhong & Mirrokni",
    2025,
    "2504.13173",
)

SPECS = (
    ArchSpec(
        name="miras",
        family="recurrent",
        distribution="edifice-recurrent",
        summary="MIRAS models (Moneta / Yaad / Memora): a deep MLP memory trained at test time by gradient steps on "
        "an ℓ_p, Huber or ℓ2 attentional bias with ℓ_q, ℓ2 or KL retention, in chunks.",
        paper=MIRAS,
        config="edifice_recurrent.configs.miras:MirasConfig",
        model="edifice_recurrent.miras:Miras",
        inputs=sequence_inputs(),
        outputs=sequence_outputs(),
        # One layer and no FFN: torch.compile traces every chunk of the inner loop (the package tests stack two
        # layers with their FFNs).
        tiny={
            "d_model": 16,
            "n_layers": 1,
            "n_heads": 2,
            "memory_size": 16,
            "mini_batch_size": 4,
            "d_ff": 0,
            "d_in": 6,
        },
        verification="oracle:Behrouz et al. 2025 (MIRAS) Moneta, Yaad and Memora update rules (§5.1-5.3) with "
        "chunk-start gradients (§5.4), every gradient by autograd, fp64",
        causal=True,
        stateful=True,
        variable_length=True,
    ),
)
