"""Config and spec of ``samba``: layer-wise Mamba -> MLP -> sliding-window attention -> MLP (torch-free).

Layer ``i`` mixes tokens with Mamba when ``i`` is even and with sliding-window attention (RoPE, window ``window``)
when ``i`` is odd; every layer ends with a SwiGLU MLP, so two layers are one Samba block (§2). The
attention's decoding state is a ring buffer of the last ``window`` keys and values: Samba's memory stays constant
however long the sequence (Mamba's state is constant too).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any, ClassVar

from edifice import ArchSpec, Paper, field
from edifice.sequence import sequence_inputs, sequence_outputs
from edifice_ssm.configs.mamba import MambaConfig

__all__ = ["SPECS", "SambaConfig"]


@dataclasses.dataclass(kw_only=True)
class SambaConfig(MambaConfig):
    """Samba: alternating Mamba and sliding-window-attention layers, each followed by a SwiGLU MLP."""

    arch: str = field("samba", "Registry name of the architecture this config builds.")
    schema_version: int = field(2, "Version of this config's schema; bumped when fields change meaning.")

    #: Schema 2 made ``d_ff=None`` mean the released configs' 8/3 d_model; earlier files meant 4 d_model.
    schema_changes: ClassVar[Mapping[int, Mapping[str, Any]]] = {
        2: {"d_ff": lambda saved: 4 * saved["d_model"] if saved.get("d_ff") is None else saved["d_ff"]}
    }
    n_layers: int = field(4, "Number of layers: even ones are Mamba + MLP, odd ones SWA + MLP (2 per Samba block).")
    n_heads: int = field(4, "Query heads of the sliding-window attention.")
    n_kv_heads: int | None = field(None, "Key/value heads (grouped-query attention); None means n_heads.")
    head_dim: int | None = field(None, "Attention head size; None means d_model // n_heads.")
    window: int = field(2048, "Sliding window: each query attends its own and the previous window - 1 positions.")
    rope_theta: float = field(10000.0, "RoPE base of the sliding-window attention.")
    d_ff: int | None = field(
        None, "Hidden width of the SwiGLU MLPs; None means 8/3 * d_model rounded up to 8 (the released configs)."
    )

    aliases: ClassVar[Mapping[str, str]] = {
        **MambaConfig.aliases,
        "window_size": "window",
        "mlp_dim": "d_ff",
        "intermediate_size": "d_ff",
        "rope_base": "rope_theta",
    }

    def validate(self) -> None:
        """Check the attention heads, window and MLP width."""
        super().validate()
        self.check_positive("n_heads", "n_kv_heads", "head_dim", "window", "d_ff")
        self.check_divides("n_kv_heads", "n_heads")
        if self.head_dim is None:
            self.check_divides("n_heads", "d_model")
        if self.attn_head_dim % 2:
            self.fail("head_dim" if self.head_dim is not None else "n_heads", "must give an even head size for RoPE")
        if not self.rope_theta > 1.0:
            self.fail("rope_theta", "must be > 1")

    @staticmethod
    def is_attention(index: int) -> bool:
        """Whether layer ``index`` is a sliding-window attention layer (odd) rather than Mamba (even)."""
        return index % 2 == 1

    @property
    def attn_head_dim(self) -> int:
        """The resolved attention head size (``head_dim`` or ``d_model // n_heads``)."""
        return self.head_dim if self.head_dim is not None else self.d_model // self.n_heads

    @property
    def ffn_dim(self) -> int:
        """The resolved MLP width: ``d_ff``, else ``⌈(8/3)·d_model / 8⌉·8``.

        The released Samba configs set ``intermediate_size = 8/3 · d_model`` (421M: 1536 -> 4096, 1.3B: 2304 -> 6144,
        3.8B: 3072 -> 8192); rounding up to a multiple of 8 keeps those and gives every other width an integer.
        """
        return self.d_ff if self.d_ff is not None else 8 * -(-self.d_model // 3)


REN = Paper(
    "Samba: Simple Hybrid State Space Models for Efficient Unlimited Context Language Modeling",
    "Ren, Liu, Lu, Shen, Liang, Chen",
    2024,
    "2406.07522",
)

SPECS = (
    ArchSpec(
        name="samba",
        family="ssm",
        distribution="edifice-ssm",
        summary="Samba: layer-wise Mamba -> SwiGLU -> sliding-window attention (RoPE) -> SwiGLU, constant-size state.",
        paper=REN,
        config="edifice_ssm.configs.samba:SambaConfig",
        model="edifice_ssm.samba:Samba",
        inputs=sequence_inputs(),
        outputs=sequence_outputs(),
        tiny={
            "d_model": 16,
            "n_layers": 2,
            "d_in": 6,
            "d_state": 4,
            "d_conv": 3,
            "n_heads": 2,
            "window": 3,
            "d_ff": 32,
        },
        verification="oracle:Samba §2 layer stack (Mamba eqs. 2a-2b/4, SWA softmax over the last window, RoPE, "
        "SwiGLU), naive fp64 loops; the window bounds the receptive field",
        causal=True,
        stateful=True,
        variable_length=True,
    ),
)
