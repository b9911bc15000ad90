"""Config and spec of ``titans``: a neural long-term memory learned at test time, beside sliding-window attention.

The model is :mod:`edifice_recurrent.titans` (Titans MAC, MAG or MAL: memory as context, as a gate, as a layer;
torch-free module).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from typing import Any, ClassVar, Literal

from edifice import ArchSpec, Paper, field
from edifice.sequence import SequenceConfig, sequence_inputs, sequence_outputs

__all__ = ["SPECS", "TitansConfig"]


@dataclasses.dataclass(kw_only=True)
class TitansConfig(SequenceConfig):
    """Titans (Behrouz et al. 2025): attention beside a deep memory trained by surprise (MAC, MAG or MAL)."""

    arch: str = field("titans", "Registry name of the architecture this config builds.")
    schema_version: int = field(2, "Version of this config's schema; bumped when fields change meaning.")

    #: Schema 2 added §4.4's ``output_gate`` (on by default); earlier files had none.
    schema_changes: ClassVar[Mapping[int, Mapping[str, Any]]] = {2: {"output_gate": False}}
    variant: Literal["mac", "mag", "mal"] = field(
        "mag", "How the memory meets the attention: 'mac' (as context, §4.1), 'mag' (a gate, §4.2), 'mal' (a layer)."
    )
    n_heads: int = field(4, "Heads of the attention and of the memory (one memory per head).")
    head_dim: int | None = field(None, "Features per head; None means d_model // n_heads.")
    memory_depth: int = field(2, "Layers L_M of the memory MLP: 1 is a linear memory, 2 a two-layer MLP.")
    memory_size: int | None = field(None, "Hidden units of the memory MLP (memory_depth=2); None means 4 * head_dim.")
    memory_norm: bool = field(
        True, "Memory as x + LN(MLP(x)) (TTT/MIRAS' residual and LayerNorm); False is the paper's bare MLP (§3.1)."
    )
    momentum: bool = field(True, "Carry past surprise with a data-dependent momentum η_t (eqs. 10, 14).")
    memory_lr: float = field(1.0, "Scale of the learning rate θ_t = memory_lr σ(x w_θ) / head_dim.")
    mini_batch_size: int = field(16, "Tokens per chunk whose gradients are taken at one memory state (§3.2).")
    n_persistent: int = field(4, "Persistent memory tokens prepended to the sequence (§3.3).")
    window_size: int = field(64, "Window of the sliding-window attention (MAG, MAL); MAC's segment length.")
    conv_size: int = field(4, "Kernel size of the depthwise convolutions after the memory's q, k, v projections.")
    rope: bool = field(True, "Rotary position embedding in the attention branch (persistent tokens are not rotated).")
    rope_theta: float = field(10000.0, "RoPE base.")
    d_ff: int | None = field(
        None, "Hidden size of each block's SwiGLU FFN; None means 8/3·d_model rounded up to 8; 0 none."
    )
    norm_eps: float = field(1e-6, "Epsilon of the RMSNorms and of the memory's LayerNorm.")
    init_std: float = field(0.02, "Standard deviation of the normal initialisation of linear weights and of M_0.")
    output_gate: bool = field(
        True, "§4.4: normalise and gate the mixer's output by SiLU(x W_G), a linear layer of its input, before W_O."
    )

    aliases: ClassVar[Mapping[str, str]] = {
        **SequenceConfig.aliases,
        "chunk_size": "mini_batch_size",
        "num_persistent": "n_persistent",
        "intermediate_size": "d_ff",
    }

    def validate(self) -> None:
        """Check sizes are positive and heads divide the width."""
        super().validate()
        self.check_choice("variant", ("mac", "mag", "mal"))
        self.check_choice("memory_depth", (1, 2))
        self.check_positive("n_heads", "head_dim", "memory_size", "memory_lr", "mini_batch_size", "window_size")
        self.check_positive("conv_size", "rope_theta", "norm_eps", "init_std")
        self.check_positive("n_persistent", "d_ff", allow_zero=True)
        if self.head_dim is None and self.d_model % self.n_heads:
            self.fail("n_heads", f"must divide d_model={self.d_model} (or set head_dim)")
        if self.rope and self.head_size % 2:
            self.fail("head_dim", "must be even with rope=True (RoPE rotates feature pairs)")
        if self.rope and not self.rope_theta > 1:
            self.fail("rope_theta", "must be > 1")
        if self.variant == "mac" and self.n_heads * self.head_size != self.d_model:
            self.fail("head_dim", f"must give n_heads * head_dim == d_model={self.d_model} with variant='mac'")
        if self.variant == "mac" and self.window_size % self.mini_batch_size:
            self.fail("window_size", f"must be a multiple of mini_batch_size={self.mini_batch_size} with variant='mac'")

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


BEHROUZ = Paper("Titans: Learning to Memorize at Test Time", "Behrouz, Zhong & Mirrokni", 2025, "2501.00663")

SPECS = (
    ArchSpec(
        name="titans",
        family="recurrent",
        distribution="edifice-recurrent",
        summary="Titans (MAC, MAG, MAL): a deep neural memory updated at test time by surprise (the gradient of an "
        "associative loss, with momentum and forgetting) serves as context for, gates, or feeds attention with "
        "persistent tokens.",
        paper=BEHROUZ,
        config="edifice_recurrent.configs.titans:TitansConfig",
        model="edifice_recurrent.titans:Titans",
        inputs=sequence_inputs(),
        outputs=sequence_outputs(),
        tiny={  # one layer: torch.compile traces every chunk of the inner loop (the package tests stack two)
            "d_model": 16,
            "n_layers": 1,
            "n_heads": 2,
            "memory_size": 16,
            "mini_batch_size": 10,  # the 2 persistent tokens and T = 8 in one chunk (the tests cross boundaries)
            "n_persistent": 2,
            "window_size": 6,
            # A bare linear memory and no FFN keep the compile check well inside its 2 s budget; the package tests cover
            # the memory's MLP and LayerNorm.
            "memory_depth": 1,
            "memory_norm": False,
            "d_ff": 0,
            "d_in": 6,
        },
        verification="oracle:Behrouz et al. 2025 eqs. 8-14 (surprise with momentum and forgetting, gradients by "
        "autograd at each chunk's memory, §3.2) and MAC (§4.1), MAG (§4.2) or MAL (§4.3) with persistent memory "
        "(§3.3), fp64",
        causal=True,
        stateful=True,
        variable_length=True,
    ),
)
