"""Config and spec of ``ttt``: TTT-Linear and TTT-MLP layers, RNNs whose hidden state is a model (torch-free).

The model is :mod:`edifice_recurrent.ttt`.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from typing import ClassVar, Literal

from edifice import ArchSpec, Paper, field
from edifice.sequence import SequenceConfig, sequence_inputs, sequence_outputs

__all__ = ["SPECS", "TTTConfig"]


@dataclasses.dataclass(kw_only=True)
class TTTConfig(SequenceConfig):
    """TTT (Sun et al. 2024): residual blocks of a TTT layer (per-head inner models trained at test time) and an FFN."""

    arch: str = field("ttt", "Registry name of the architecture this config builds.")
    variant: Literal["linear", "mlp"] = field("linear", "Inner model: 'linear' (TTT-Linear) or 'mlp' (TTT-MLP).")
    n_heads: int = field(4, "Number of heads, each with its own inner model on head_dim features.")
    head_dim: int | None = field(None, "Features per head; None means d_model // n_heads.")
    inner_size: int | None = field(None, "Hidden units of TTT-MLP's inner model; None means 4 * head_dim.")
    mini_batch_size: int = field(16, "Tokens per inner mini-batch b: their gradients are taken at one state (§2.5).")
    ttt_base_lr: float = field(1.0, "η_base of the learnable inner learning rate η(x) = η_base σ(θ_lr x) / head_dim.")
    backbone: Literal["mamba", "transformer"] = field(
        "mamba", "'mamba': shared q/k projection with causal convolutions (the paper's Mamba backbone); else separate."
    )
    output_gate: bool = field(True, "Gate the TTT output with GELU(x W_g), as the Mamba backbone does.")
    conv_size: int = field(4, "Kernel size of the causal convolutions on q and k (Mamba backbone).")
    rope: bool = field(True, "Rotary position embedding on q and k, with positions counted inside each mini-batch.")
    rope_theta: float = field(10000.0, "RoPE base.")
    d_ff: int | None = field(
        None, "Hidden size of each block's SwiGLU FFN; None means 8/3·d_model rounded up to 8; 0 none."
    )
    norm_eps: float = field(1e-6, "Epsilon of the RMSNorms, the inner LayerNorm and the output LayerNorm.")
    init_std: float = field(0.02, "Standard deviation of the normal initialisation of linear, embedding and W_0.")

    aliases: ClassVar[Mapping[str, str]] = {
        **SequenceConfig.aliases,
        "ttt_layer_type": "variant",
        "use_gate": "output_gate",
        "conv_kernel": "conv_size",
        "intermediate_size": "d_ff",
    }

    def validate(self) -> None:
        """Check sizes are positive, heads divide the width and the choices are known."""
        super().validate()
        self.check_choice("variant", ("linear", "mlp"))
        self.check_choice("backbone", ("mamba", "transformer"))
        self.check_positive("n_heads", "head_dim", "inner_size", "mini_batch_size", "ttt_base_lr", "conv_size")
        self.check_positive("rope_theta", "norm_eps", "init_std")
        self.check_positive("d_ff", allow_zero=True)
        if self.head_dim is None and self.d_model % self.n_heads:
            self.fail("n_heads", f"must divide d_model={self.d_model} (or set head_dim)")
        if self.rope and self.head_size % 2:
            self.fail("head_dim", f"gives {self.head_size} (of d_model={self.d_model}); it must be even with rope=True")
        if self.rope and not self.rope_theta > 1:
            self.fail("rope_theta", "must be > 1")

    @property
    def head_size(self) -> int:
        """The resolved features per head."""
        return self.head_dim if self.head_dim is not None else self.d_model // self.n_heads

    @property
    def inner_hidden(self) -> int:
        """The resolved hidden size of TTT-MLP's inner model."""
        return self.inner_size if self.inner_size is not None else 4 * self.head_size

    @property
    def ffn_hidden(self) -> int:
        """The resolved FFN hidden size (0: no FFN): ``d_ff``, else ⌈(8/3)·d_model / 8⌉·8."""
        return self.d_ff if self.d_ff is not None else 8 * math.ceil(8 * self.d_model / 3 / 8)


SUN = Paper("Learning to (Learn at Test Time): RNNs with Expressive Hidden States", "Sun et al.", 2024, "2407.04620")

SPECS = (
    ArchSpec(
        name="ttt",
        family="recurrent",
        distribution="edifice-recurrent",
        summary="TTT-Linear / TTT-MLP: the hidden state is an inner model trained by mini-batch GD on a "
        "self-supervised reconstruction loss at test time (dual form), in a Mamba-style backbone.",
        paper=SUN,
        config="edifice_recurrent.configs.ttt:TTTConfig",
        model="edifice_recurrent.ttt:TTT",
        inputs=sequence_inputs(),
        outputs=sequence_outputs(),
        # One layer, no FFN and one mini-batch over the contract's T = 8: torch.compile traces every chunk of the
        # inner loop, which kept the compile check near its 2 s budget (the package tests stack two layers with their
        # FFNs and cross mini-batch boundaries in forward and step).
        tiny={
            "d_model": 16,
            "n_layers": 1,
            "n_heads": 2,
            "variant": "mlp",
            "inner_size": 16,
            "mini_batch_size": 8,
            "d_ff": 0,
            "d_in": 6,
        },
        verification="oracle:Sun et al. 2024 §2.5-2.7 mini-batch TTT, every inner gradient by autograd (fp64); "
        "the op's TTT-Linear dual form matches fla.ops.ttt.naive.chunk_ttt_linear_ref",
        causal=True,
        stateful=True,
        variable_length=True,
    ),
)
