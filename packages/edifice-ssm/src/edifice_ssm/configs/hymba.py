"""Config and spec of ``hymba``: parallel attention and SSM heads in every layer, plus learnable meta tokens.

Torch-free; the model is :mod:`edifice_ssm.hymba` and the equations are in ``docs/design/hymba.md``.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from typing import Any, ClassVar

from edifice import ArchSpec, Paper, field
from edifice.sequence import SequenceConfig, sequence_inputs, sequence_outputs

__all__ = ["SPECS", "HymbaConfig"]

DONG_ET_AL = Paper(
    "Hymba: A Hybrid-head Architecture for Small Language Models",
    "Dong, Fu, Diao, Byeon, Chen, Mahabaleshwarkar, Liu, Van Keirsbilck, Chen, Suhara, Lin, Kautz & Molchanov",
    2024,
    "2411.13676",
)


@dataclasses.dataclass(kw_only=True)
class HymbaConfig(SequenceConfig):
    """Hymba: pre-norm blocks of a hybrid-head mixer (attention and Mamba heads in parallel) and a SwiGLU MLP."""

    arch: str = field("hymba", "Registry name of the architecture this config builds.")
    schema_version: int = field(2, "Version of this config's schema; bumped when fields change meaning.")

    #: Schema 2 added cross-layer KV sharing (earlier files share nothing) and moved the default middle global layer
    #: from ``n_layers // 2`` to ``(n_layers - 1) // 2`` (earlier files keep theirs, written out).
    schema_changes: ClassVar[Mapping[int, Mapping[str, Any]]] = {
        2: {
            "kv_reuse_groups": (),
            "global_layers": lambda saved: (
                sorted({0, saved["n_layers"] // 2, saved["n_layers"] - 1})
                if saved.get("global_layers") is None
                else saved["global_layers"]
            ),
        }
    }
    n_heads: int = field(4, "Attention heads (each query/key head has head_dim, each value head d_inner / n_heads).")
    n_kv_heads: int | None = field(None, "Key/value heads (grouped-query attention); None means n_heads.")
    head_dim: int | None = field(None, "Query/key head size; None means d_model / n_heads.")
    expand: int = field(2, "Inner width d_inner = expand * d_model of both branches (SSM channels, attention values).")
    d_state: int = field(16, "SSM state size N per channel of the Mamba heads.")
    d_conv: int = field(4, "Kernel size of the Mamba heads' causal depthwise convolution.")
    dt_rank: int | None = field(None, "Rank of the Δ projection; None means ceil(d_model / 16).")
    n_meta_tokens: int = field(128, "Learnable meta tokens prepended to every sequence (0 disables them).")
    window: int | None = field(1024, "Sliding window of the local attention layers; None makes every layer global.")
    global_layers: tuple[int, ...] | None = field(
        None,
        "Layers with global attention; None means the first, middle ((n_layers - 1) // 2) and last layer (the "
        "paper's choice; the released 32-layer config's [0, 15, 31]).",
    )
    kv_reuse_groups: tuple[tuple[int, ...], ...] | None = field(
        None,
        "Cross-layer KV sharing (§2.3): groups of layers whose first computes the keys/values that the others reuse "
        "(they project queries only and keep no cache); None means consecutive local layers in pairs, a run of odd "
        "length opening with a group of three, global layers alone (the released config); () shares nothing.",
    )
    d_ff: int | None = field(None, "Hidden size of the SwiGLU MLP; None means 4 * d_model; 0 removes the MLP.")
    rope_base: float = field(10000.0, "Base of the rotary position embedding of the attention heads.")
    norm_eps: float = field(1e-6, "Epsilon of every RMSNorm.")
    dt_min: float = field(0.001, "Smallest initial Δ of the Mamba heads (log-uniform in [dt_min, dt_max]).")
    dt_max: float = field(0.1, "Largest initial Δ of the Mamba heads.")
    init_std: float = field(0.02, "Standard deviation of the normal initialisation of the token embedding.")

    aliases: ClassVar[Mapping[str, str]] = {
        **SequenceConfig.aliases,
        "state_size": "d_state",
        "expand_factor": "expand",
        "conv_size": "d_conv",
        "num_meta_tokens": "n_meta_tokens",
        "window_size": "window",
    }

    def validate(self) -> None:
        """Check sizes, head divisibility, the window and the global layer indices."""
        super().validate()
        self.check_positive("n_heads", "n_kv_heads", "head_dim", "expand", "d_state", "d_conv", "dt_rank", "window")
        self.check_positive("rope_base", "norm_eps", "dt_min", "dt_max", "init_std")
        if not self.rope_base > 1:
            self.fail("rope_base", "must be > 1 (RoPE's frequencies base^(-2i/d) must decrease)")
        self.check_positive("n_meta_tokens", "d_ff", allow_zero=True)
        if self.head_dim is None:
            self.check_divides("n_heads", "d_model")
        if self.n_kv_heads is not None:
            self.check_divides("n_kv_heads", "n_heads")
        if self.d_inner % self.n_heads:
            self.fail("n_heads", f"must divide d_inner = expand * d_model = {self.d_inner} (the value heads)")
        if self.qk_head_dim % 2:
            self.fail("head_dim", f"must be even for the rotary embedding, got {self.qk_head_dim}")
        for index in self.global_layers or ():
            if not 0 <= index < self.n_layers:
                self.fail("global_layers", f"must hold layer indices in [0, n_layers={self.n_layers})")
        seen: set[int] = set()
        for group in self.kv_reuse_groups or ():
            if len(group) < 2 or list(group) != sorted(set(group)):
                self.fail("kv_reuse_groups", f"each group must list >= 2 increasing layer indices, got {group}")
            if not all(0 <= index < self.n_layers for index in group) or seen & set(group):
                self.fail("kv_reuse_groups", f"must hold disjoint layer indices in [0, n_layers={self.n_layers})")
            seen |= set(group)
        if self.dt_min > self.dt_max:
            self.fail("dt_min", f"must be <= dt_max={self.dt_max}")

    @property
    def d_inner(self) -> int:
        """Inner width of both branches, ``expand * d_model``."""
        return self.expand * self.d_model

    @property
    def qk_head_dim(self) -> int:
        """The resolved query/key head size."""
        return self.head_dim if self.head_dim is not None else self.d_model // self.n_heads

    @property
    def ffn_dim(self) -> int:
        """The resolved MLP hidden size (0: no MLP)."""
        return 4 * self.d_model if self.d_ff is None else self.d_ff

    @property
    def time_step_rank(self) -> int:
        """The resolved rank of the Mamba heads' Δ projection."""
        return self.dt_rank if self.dt_rank is not None else math.ceil(self.d_model / 16)

    def layer_window(self, index: int) -> int | None:
        """The attention window of layer ``index``: None for a global layer."""
        if self.window is None:
            return None
        chosen = self.global_layers
        if chosen is None:
            chosen = (0, (self.n_layers - 1) // 2, self.n_layers - 1)
        return None if index in chosen else self.window

    @property
    def kv_groups(self) -> tuple[tuple[int, ...], ...]:
        """The resolved KV-sharing groups: ``kv_reuse_groups``, or the released config's rule (field doc)."""
        if self.kv_reuse_groups is not None:
            return self.kv_reuse_groups
        groups: list[tuple[int, ...]] = []
        run: list[int] = []  # consecutive local layers
        for index in [*range(self.n_layers), None]:
            if index is not None and self.layer_window(index) is not None:
                run.append(index)
                continue
            if len(run) >= 2:
                first = 3 if len(run) % 2 else 2  # [16, 17, 18] in the released 32-layer config
                groups.append(tuple(run[:first]))
                groups += [tuple(run[i : i + 2]) for i in range(first, len(run), 2)]
            run = []
        return tuple(groups)


SPECS = (
    ArchSpec(
        name="hymba",
        family="ssm",
        distribution="edifice-ssm",
        summary="Hymba: attention and Mamba heads in parallel in every layer (normalised, averaged), meta tokens, SWA.",
        paper=DONG_ET_AL,
        config="edifice_ssm.configs.hymba:HymbaConfig",
        model="edifice_ssm.hymba:Hymba",
        inputs=sequence_inputs(),
        outputs=sequence_outputs(),
        # One local-attention layer keeps the compile check inside its 2 s time budget; the tests stack global ones.
        tiny={
            "d_model": 16,
            "n_layers": 1,
            "d_in": 6,
            "n_heads": 2,
            "n_kv_heads": 1,
            "d_state": 4,
            "d_conv": 3,
            "n_meta_tokens": 2,
            "window": 4,
            "global_layers": (),
            "d_ff": 24,
        },
        verification="property:hybrid_heads (mean of the normalised attention and SSM heads; meta tokens attended)",
        causal=True,
        stateful=True,
        variable_length=True,
    ),
)
