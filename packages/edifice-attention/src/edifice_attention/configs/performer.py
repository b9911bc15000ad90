"""Config of ``performer``: FAVOR+ attention with positive orthogonal random features (torch-free)."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from typing import ClassVar

from edifice import ArchSpec, Paper, field
from edifice.sequence import sequence_inputs, sequence_outputs
from edifice_attention.configs._encoder import MIN_POSITIONS
from edifice_attention.configs._linear_attention import MixerStackConfig

__all__ = ["SPECS", "PerformerConfig"]

CHOROMANSKI = Paper("Rethinking Attention with Performers", "Choromanski et al.", 2021, "2009.14794")


@dataclasses.dataclass(kw_only=True)
class PerformerConfig(MixerStackConfig):
    """Performer (Choromanski et al. 2021): pre-norm blocks of FAVOR+ softmax-kernel attention and an MLP."""

    arch: str = field("performer", "Registry name of the architecture this config builds.")
    n_heads: int = field(4, "Number of attention heads (d_model must divide by it).")
    num_features: int | None = field(
        None, "Random features m per head; None: the authors' default round(D log D) for head size D."
    )
    orthogonal: bool = field(True, "Orthogonal random features (blocks of D orthogonal rows, §2.4); False: i.i.d.")
    causal: bool = field(
        False, "Unidirectional FAVOR+ (prefix sums, §2.6) with a decoding state; False: bidirectional."
    )
    feature_redraw_interval: int | None = field(
        None,
        "In training, redraw the features every this many forward calls (§4.2); None: only by redraw_features().",
    )
    bias: bool = field(True, "Biases in the q/k/v/o projections.")
    max_len: int | None = field(1024, "Rows of a learned absolute position table added to the input; None: none.")
    norm: str = field("layernorm", "Norm of the pre-norm blocks and the final norm: 'layernorm' or 'rmsnorm'.")
    norm_eps: float = field(1e-5, "Epsilon of every norm.")
    ffn: str = field("mlp", "Feed-forward kind (the paper's Transformer: 'mlp' with GELU).")

    aliases: ClassVar[Mapping[str, str]] = {**MixerStackConfig.aliases, "nb_features": "num_features"}

    def validate(self) -> None:
        """Heads divide the width; feature count, redraw interval and position table are positive."""
        super().validate()
        self.check_positive("n_heads", "num_features", "feature_redraw_interval", "max_len")
        self.check_divides("n_heads", "d_model")
        if self.max_len is not None and self.max_len < MIN_POSITIONS:
            self.fail("max_len", f"must be >= {MIN_POSITIONS} or None: the learned position table bounds the length")

    def default_d_ff(self) -> int:
        """4 · d_model."""
        return 4 * self.d_model

    @property
    def features(self) -> int:
        """The resolved number of random features per head."""
        head = self.d_model // self.n_heads
        return self.num_features if self.num_features is not None else max(1, round(head * math.log(head)))


SPECS = (
    ArchSpec(
        name="performer",
        family="attention",
        distribution="edifice-attention",
        summary="Performer: FAVOR+ (positive orthogonal random features) approximating softmax attention in O(T); "
        "bidirectional (config causal=True: prefix sums with a decoding state).",
        paper=CHOROMANSKI,
        config="edifice_attention.configs.performer:PerformerConfig",
        model="edifice_attention.performer:Performer",
        inputs=sequence_inputs(),
        outputs=sequence_outputs(),
        tiny={"d_model": 16, "n_layers": 2, "n_heads": 2, "d_ff": 32, "d_in": 6, "num_features": 12, "max_len": 32},
        verification="property:favor_error_falls_with_features (fp64, vs exact softmax attention)",
        causal=False,
        stateful=False,
        variable_length=True,
        reasons={
            "causal": "the registered entry is the bidirectional Performer (causal=True gives the unidirectional one, "
            "tested for causality and step == forward in test_performer.py)",
            "stateful": "bidirectional: no left-to-right decoding state (causal=True has init_state/step)",
        },
    ),
)
