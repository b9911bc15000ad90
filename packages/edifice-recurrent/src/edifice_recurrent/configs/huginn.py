"""Config and spec of ``huginn``: Geiping et al.'s recurrent-depth transformer (torch-free).

A prelude ``P`` embeds the input, a weight-shared core block ``R`` is iterated ``r`` times on a latent state that
starts from noise and re-reads the embedding at every iteration, and a coda ``C`` decodes the final state. ``n_layers``
is the depth of the core block (``core_layers``); ``prelude_layers`` and ``coda_layers`` give the other two. See
:mod:`edifice_recurrent.huginn` and docs/design/huginn.md.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from typing import ClassVar, Literal

from edifice import ArchSpec, Paper, field
from edifice.sequence import SequenceConfig, sequence_inputs, sequence_outputs

__all__ = ["GEIPING", "SPECS", "HuginnConfig"]

GEIPING = Paper(
    "Scaling up Test-Time Compute with Latent Reasoning: A Recurrent Depth Approach",
    "Geiping, McLeish, Jain, Kirchenbauer, Singh, Bartoldson, Kailkhura, Bhatele & Goldstein",
    2025,
    "2502.05171",
)

StateInit = Literal["normal", "zero"]


@dataclasses.dataclass(kw_only=True)
class HuginnConfig(SequenceConfig):
    """Prelude -> core block iterated ``num_iterations`` times on a noise-initialised state -> coda (§3)."""

    arch: str = field("huginn", "Registry name of the architecture this config builds.")
    n_layers: int = field(4, "Layers of the weight-shared recurrent core block R (the paper's l_R = 4).")
    prelude_layers: int = field(2, "Layers of the prelude P that embeds the input (the paper's l_P = 2).")
    coda_layers: int = field(2, "Layers of the coda C that decodes the final state (the paper's l_C = 2).")
    n_heads: int = field(4, "Attention heads of every layer.")
    head_dim: int | None = field(None, "Size of each attention head; None means d_model // n_heads.")
    d_ff: int | None = field(None, "Hidden size of each layer's SwiGLU MLP; None means 4 * d_model.")
    num_iterations: int = field(
        32, "Iterations r of the core block: the mean r of training and the r of evaluation (paper: 32)."
    )
    backprop_depth: int | None = field(
        8, "Truncated backprop: in training, gradients flow through only the last k iterations (paper: 8); None: all."
    )
    iteration_sampling: Literal["lognormal_poisson", "fixed"] = field(
        "lognormal_poisson",
        "Training-time r: drawn per forward from the paper's log-normal Poisson around num_iterations, or fixed.",
    )
    state_init: StateInit = field("normal", "Training-time s_0: 'normal' (truncated N(0, state_std^2)) or 'zero'.")
    eval_state_init: StateInit = field(
        "zero",
        "Eval-time s_0: 'zero' (deterministic; step equals forward) or 'normal' (draw as in training; the released "
        "code's default, init_scale=1).",
    )
    state_std: float = field(math.sqrt(2 / 5), "Standard deviation sigma of s_0 (truncated to +-3 sigma).")
    rope_base: float = field(50000.0, "RoPE base of every attention layer (paper: 50000).")
    norm_eps: float = field(1e-6, "Epsilon of the RMSNorms.")
    scale_embeddings: bool = field(True, "Multiply token embeddings by sqrt(d_model) (the released model does).")
    init_std: float | None = field(
        None, "Std of the truncated-normal weight init; None means sqrt(2 / (5 d_model)) (small init)."
    )

    aliases: ClassVar[Mapping[str, str]] = {
        **SequenceConfig.aliases,
        "core_layers": "n_layers",
        "mlp_dim": "d_ff",
        "intermediate_size": "d_ff",
        "mean_recurrence": "num_iterations",
        "mean_backprop_depth": "backprop_depth",
        "rope_theta": "rope_base",
    }

    def validate(self) -> None:
        """Check head sizes, layer counts, iteration counts and the state-init choices."""
        super().validate()
        self.check_positive("n_heads", "head_dim", "d_ff", "backprop_depth", "state_std", "rope_base", "norm_eps")
        if not self.rope_base > 1:
            self.fail("rope_base", "must be > 1 (RoPE's frequencies base^(-2i/d) must decrease)")
        self.check_positive("init_std")
        self.check_positive("prelude_layers", "coda_layers", "num_iterations", allow_zero=True)
        self.check_choice("iteration_sampling", ("lognormal_poisson", "fixed"))
        self.check_choice("state_init", ("normal", "zero"))
        self.check_choice("eval_state_init", ("normal", "zero"))
        if self.head_dim is None and self.d_model % self.n_heads:
            self.fail("n_heads", f"must divide d_model={self.d_model} (or set head_dim)")
        if self.head_size % 2:
            self.fail("head_dim", f"must be even for RoPE, got head size {self.head_size}")

    @property
    def head_size(self) -> int:
        """The resolved head size."""
        return self.head_dim if self.head_dim is not None else self.d_model // self.n_heads

    @property
    def ffn_hidden(self) -> int:
        """The resolved MLP hidden size."""
        return 4 * self.d_model if self.d_ff is None else self.d_ff

    @property
    def effective_depth(self) -> int:
        """Layers a token passes through at the mean recurrence: ``l_P + r * l_R + l_C`` (sets the output init)."""
        return self.prelude_layers + self.num_iterations * self.n_layers + self.coda_layers


SPECS = (
    ArchSpec(
        name="huginn",
        family="recurrent",
        distribution="edifice-recurrent",
        summary="Recurrent-depth transformer: prelude, weight-shared core iterated r times from noise, coda.",
        paper=GEIPING,
        config="edifice_recurrent.configs.huginn:HuginnConfig",
        model="edifice_recurrent.huginn:Huginn",
        inputs=sequence_inputs(),
        outputs=sequence_outputs(),
        # Two iterations of a one-layer core and a one-layer coda: the compile check traces every layer *call*
        # (l_P + r l_R + l_C of them), so the prelude is left out here; the tests cover it.
        tiny={
            "d_model": 16,
            "n_heads": 2,
            "d_ff": 32,
            "prelude_layers": 0,
            "n_layers": 1,
            "coda_layers": 1,
            "num_iterations": 2,
            "backprop_depth": 1,
        },
        verification=(
            "property:weight-shared core iterated r times (forward and KV-cached step equal an fp64 unrolled oracle "
            "of one block applied r times; r changes outputs, r=0 gives coda(s_0))"
        ),
        causal=True,
        stateful=True,
        variable_length=True,
        stochastic=True,
        reasons={
            "stochastic": "training draws s_0 ~ N(0, sigma^2) and r from forward's generator; eval is deterministic "
            "by default (eval_state_init='zero')",
        },
    ),
)
