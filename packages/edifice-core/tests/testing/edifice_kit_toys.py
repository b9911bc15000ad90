"""Toy architectures for the contract kit's self-tests: one correct model and mutants that each break one rule.

``ToyRecurrent`` is a tiny causal, stateful, stochastic sequence model with one learned parameter per mechanism:

    u_t = W_in (s ⊙ x_t) + c_in              input projection, s a persistent buffer (input scale)
    a   = sigmoid(λ)                         learned per-channel decay
    h_t = a ⊙ h_{t-1} + (1 - a) ⊙ u_t        edifice.ops.linear_recurrence
    y_t = W_out h_t + c_out + d ⊙ u_t        output projection and learned skip gain d

Each mutant subclass (and, where needed, its spec flags) breaks exactly one contract rule, so that exactly one check
fails. The conftest loads this file as the module ``edifice_kit_toys`` so that spec import strings can name it.
"""

from __future__ import annotations

import dataclasses
import itertools
import time
from typing import Any

import torch
from torch import nn

import edifice
from edifice import ArchConfig, ArchSpec, TensorSpec, field
from edifice.model import Model
from edifice.outputs import model_output

MODULE = "edifice_kit_toys"


@dataclasses.dataclass(kw_only=True)
class ToyConfig(ArchConfig):
    """Config of the toy recurrent model."""

    arch: str = field("kit_toy", "Registry name.")
    d_in: int = field(3, "Feature size of x.")
    d_model: int = field(8, "Width of the recurrent state.")

    def validate(self) -> None:
        """Sizes are positive."""
        self.check_positive("d_in", "d_model")


@model_output
class ToyState:
    """The recurrent state: the last h."""

    h: torch.Tensor  # (B, D)


class ToyRecurrent(Model):
    """The correct toy: see the module docstring for its equations."""

    config_class = ToyConfig
    input_scale: torch.Tensor

    def __init__(self, config: ToyConfig) -> None:
        super().__init__(config)
        self.config: ToyConfig = config
        self.in_proj = nn.Linear(config.d_in, config.d_model)
        self.decay_logit = nn.Parameter(torch.empty(config.d_model))
        self.skip = nn.Parameter(torch.empty(config.d_model))
        self.out_proj = nn.Linear(config.d_model, config.d_model)
        self.register_buffer("input_scale", torch.ones(config.d_in))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Default linear init; decays a = sigmoid(λ) in (0.73, 0.95); skip gains around 1."""
        self.in_proj.reset_parameters()
        self.out_proj.reset_parameters()
        with torch.no_grad():
            self.decay_logit.uniform_(1.0, 3.0)
            self.skip.normal_(1.0, 0.1)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """u = W_in (s ⊙ x) + c_in: (B, T, d_in) -> (B, T, D)."""
        u: torch.Tensor = self.in_proj(x * self.input_scale)
        return u

    def decay(self) -> torch.Tensor:
        """a = sigmoid(λ): (D,)."""
        return torch.sigmoid(self.decay_logit)

    def mix(self, x: torch.Tensor, initial: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
        """Outputs and final state for x (B, T, d_in) from state ``initial`` (B, D)."""
        u = self.features(x)  # (B, T, D)
        a = self.decay().expand_as(u)
        h = edifice.ops.linear_recurrence(a, (1 - a) * u, initial)  # (B, T, D)
        y = self.out_proj(h) + self.skip * u
        return y, h[:, -1]

    def forward(self, x: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        """y for every position; padded positions (mask False) give zeros."""
        self.check_inputs(x=x, attention_mask=attention_mask)
        y, _ = self.mix(x, None)
        if attention_mask is not None:
            y = y * attention_mask.unsqueeze(-1)
        return y

    def init_state(
        self,
        batch_size: int,
        *,
        max_len: int | None = None,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> ToyState:
        """h = 0 (constant size: ``max_len`` changes nothing)."""
        ref = self.decay_logit
        return ToyState(
            torch.zeros(batch_size, self.config.d_model, device=device or ref.device, dtype=dtype or ref.dtype)
        )

    def step(self, x: torch.Tensor, state: ToyState) -> tuple[torch.Tensor, ToyState]:
        """Advance by the t >= 1 positions of x (B, t, d_in)."""
        y, h = self.mix(x, state.h)
        return y, ToyState(h)

    def loss(self, batch: dict[str, torch.Tensor], *, generator: torch.Generator | None = None) -> torch.Tensor:
        """A denoising-style objective: the mean square output on inputs corrupted by noise from ``generator``."""
        x = batch["x"]
        noise = torch.randn(x.shape, generator=generator, dtype=x.dtype).to(x.device)
        y, _ = self.mix(x + 0.1 * noise, None)
        return y.square().mean()

    def sample(self, batch_size: int, *, steps: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """Outputs on a Gaussian input sequence of ``steps`` positions drawn from ``generator``."""
        ref = self.decay_logit
        x = torch.randn(batch_size, steps, self.config.d_in, generator=generator, dtype=ref.dtype)
        y: torch.Tensor = self(x.to(ref.device))
        return y


def toy_spec(name: str = "kit_toy", model: str = "ToyRecurrent", **changes: Any) -> ArchSpec:
    """The toy's spec under ``name`` with the model class ``model`` of this module, and ``changes`` applied."""
    base: dict[str, Any] = {
        "name": name,
        "family": "toy",
        "distribution": "edifice-core-tests",
        "summary": "Toy diagonal linear recurrence for the contract kit's self-tests.",
        "paper": None,
        "config": f"{MODULE}:ToyConfig",
        "model": f"{MODULE}:{model}",
        "inputs": {
            "x": TensorSpec(("B", "T", "d_in"), doc="Input features."),
            "attention_mask": TensorSpec(("B", "T"), dtype="bool", domain="bool", optional=True, doc="Padding."),
        },
        "outputs": {"y": TensorSpec(("B", "T", "d_model"), doc="Outputs.")},
        "tiny": {"d_in": 3, "d_model": 8},
        "verification": "property:decay",
        "causal": True,
        "stateful": True,
        "variable_length": True,
        "stochastic": True,
    }
    return ArchSpec(**{**base, **changes})


# -- mutants ------------------------------------------------------------------------------------------------------
class NotOnMeta(ToyRecurrent):
    """build: the constructor reads a parameter's value, which the meta device cannot give."""

    def __init__(self, config: ToyConfig) -> None:
        super().__init__(config)
        self.initial_gain = float(self.skip.detach().abs().mean())


class Hangs(ToyRecurrent):
    """every check: its forward sleeps (a stand-in for a deadlock), so only the hang guard ends the check."""

    def features(self, x: torch.Tensor) -> torch.Tensor:
        time.sleep(30)
        return super().features(x)


class NanOnZeros(ToyRecurrent):
    """forward: normalises x by its norm without an epsilon, so zero inputs give NaN."""

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return super().features(x / x.norm(dim=-1, keepdim=True))


class CountsCalls(ToyRecurrent):
    """forward: an eval forward increments a buffer."""

    calls: torch.Tensor

    def __init__(self, config: ToyConfig) -> None:
        super().__init__(config)
        self.register_buffer("calls", torch.zeros((), dtype=torch.int64))

    def forward(self, x: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        self.calls.add_(1)
        return super().forward(x, attention_mask)


class DetachedSkip(ToyRecurrent):
    """gradients: the skip gain is used through .detach(), so it never gets a gradient."""

    def mix(self, x: torch.Tensor, initial: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
        u = self.features(x)
        a = self.decay().expand_as(u)
        h = edifice.ops.linear_recurrence(a, (1 - a) * u, initial)
        return self.out_proj(h) + self.skip.detach() * u, h[:, -1]


class MixesBatch(ToyRecurrent):
    """batch_independence: adds the batch mean to every sample."""

    def mix(self, x: torch.Tensor, initial: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
        y, h = super().mix(x, initial)
        return y + 0.1 * y.mean(dim=0, keepdim=True), h


class UnsavedScale(ToyRecurrent):
    """save_load: the input scale is a random non-persistent buffer, so a loaded model draws another one."""

    def __init__(self, config: ToyConfig) -> None:
        super().__init__(config)
        del self.input_scale
        self.register_buffer("input_scale", 1.0 + torch.rand(config.d_in), persistent=False)


class Unchecked(ToyRecurrent):
    """bad_inputs: never validates its inputs, and quietly casts and flattens what it gets."""

    def forward(self, x: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        x = x.float().reshape(x.shape[0], x.shape[1], -1)[..., : self.config.d_in]
        y, _ = self.mix(x, None)
        return y


class PeeksAhead(ToyRecurrent):
    """causality: every output also sees the next position's features."""

    def mix(self, x: torch.Tensor, initial: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
        y, h = super().mix(x, initial)
        u = self.features(x)
        ahead = torch.cat([u[:, 1:], torch.zeros_like(u[:, :1])], dim=1)
        return y + 0.1 * ahead, h


class DriftingStep(ToyRecurrent):
    """stateful: step uses a slightly different decay from forward."""

    def step(self, x: torch.Tensor, state: ToyState) -> tuple[torch.Tensor, ToyState]:
        u = self.features(x)
        a = (self.decay() * 0.999).expand_as(u)
        h = edifice.ops.linear_recurrence(a, (1 - a) * u, state.h)
        return self.out_proj(h) + self.skip * u, ToyState(h[:, -1])


class GraphBreak(ToyRecurrent):
    """bf16_and_compile: data-dependent Python control flow, a graph break under fullgraph=True."""

    def features(self, x: torch.Tensor) -> torch.Tensor:
        u = super().features(x)
        if float(u.detach().abs().max()) > 1e6:
            u = u.clamp(-1e6, 1e6)
        return u


class GlobalRandomSample(ToyRecurrent):
    """stochastic: sample() ignores its generator and draws from the global RNG."""

    def sample(self, batch_size: int, *, steps: int, generator: torch.Generator | None = None) -> torch.Tensor:
        y: torch.Tensor = self(torch.randn(batch_size, steps, self.config.d_in))
        return y


class NanGradient(ToyRecurrent):
    """gradients: adds 0 * sqrt(d - d): finite outputs, but a NaN gradient for d."""

    def mix(self, x: torch.Tensor, initial: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
        y, h = super().mix(x, initial)
        return y + 0 * torch.sqrt(self.skip - self.skip), h


class ZeroGradient(ToyRecurrent):
    """gradients: the skip gain is multiplied by zero, so its gradient is zero everywhere."""

    def mix(self, x: torch.Tensor, initial: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
        u = self.features(x)
        a = self.decay().expand_as(u)
        h = edifice.ops.linear_recurrence(a, (1 - a) * u, initial)
        return self.out_proj(h) + (0 * self.skip) * u, h[:, -1]


class NoStep(ToyRecurrent):
    """stateful: claims to be stateful but has no step()."""

    step = None  # type: ignore[assignment]


@model_output
class GrowingCache:
    """A state that keeps every input feature seen (a KV-cache-like state)."""

    h: torch.Tensor  # (B, D)
    seen: torch.Tensor  # (B, t, D)


class GrowingState(ToyRecurrent):
    """stateful: the state grows with every step even when ``max_len`` is given (it must then be static)."""

    def init_state(  # type: ignore[override]
        self,
        batch_size: int,
        *,
        max_len: int | None = None,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> GrowingCache:
        h = super().init_state(batch_size, device=device, dtype=dtype).h
        return GrowingCache(h, h.new_zeros(batch_size, 0, self.config.d_model))

    def step(self, x: torch.Tensor, state: GrowingCache) -> tuple[torch.Tensor, GrowingCache]:  # type: ignore[override]
        y, h = self.mix(x, state.h)
        return y, GrowingCache(h, torch.cat([state.seen, self.features(x)], dim=1))


class Packed(ToyRecurrent):
    """Also takes packed sequences: ``cu_seqlens`` offsets along T of a batch of one; each sequence starts at h = 0."""

    def forward(
        self, x: torch.Tensor, attention_mask: torch.Tensor | None = None, cu_seqlens: torch.Tensor | None = None
    ) -> torch.Tensor:
        if cu_seqlens is None:
            return super().forward(x, attention_mask)
        self.check_inputs(x=x, cu_seqlens=cu_seqlens)
        bounds = cu_seqlens.tolist()  # a host sync: packing is not on the compiled path of this toy
        pieces = [self.mix(x[:, s:e], None)[0] for s, e in itertools.pairwise(bounds)]
        return torch.cat(pieces, dim=1)


class IgnoresPacking(Packed):
    """stateful (packed): runs packed sequences as one, carrying state across the sequence boundary."""

    def forward(
        self, x: torch.Tensor, attention_mask: torch.Tensor | None = None, cu_seqlens: torch.Tensor | None = None
    ) -> torch.Tensor:
        self.check_inputs(x=x, attention_mask=attention_mask, cu_seqlens=cu_seqlens)
        y, _ = self.mix(x, None)
        return y


class Bf16Fragile(ToyRecurrent):
    """bf16_and_compile: adds and removes a large offset, which bf16 cannot represent finely enough."""

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return (super().features(x) + 1000.0) - 1000.0


class IgnoresGenerator(ToyRecurrent):
    """stochastic: sample() is deterministic, whatever the generator."""

    def sample(self, batch_size: int, *, steps: int, generator: torch.Generator | None = None) -> torch.Tensor:
        y: torch.Tensor = self(torch.ones(batch_size, steps, self.config.d_in))
        return y


# -- correct variants that exercise the other flags ------------------------------------------------------------------
class Fitted(ToyRecurrent):
    """needs_fit: ``prepare`` sets the input scale to 1 / std of the data; forward refuses before it."""

    fitted: torch.Tensor

    def __init__(self, config: ToyConfig) -> None:
        super().__init__(config)
        self.register_buffer("fitted", torch.zeros((), dtype=torch.bool))

    def prepare(self, x: torch.Tensor, attention_mask: torch.Tensor | None = None) -> None:
        """Fit the input scale on data."""
        with torch.no_grad():
            self.input_scale.copy_(1.0 / x.flatten(0, 1).std(dim=0).clamp(min=1e-3))
            self.fitted.fill_(True)

    def forward(self, x: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        if not torch.compiler.is_compiling() and not bool(self.fitted):
            raise RuntimeError("call prepare() first")
        return super().forward(x, attention_mask)


@model_output
class PairOutput:
    """Per-sample outputs and a batch-coupled similarity matrix."""

    y: torch.Tensor  # (B, T, D)
    similarity: torch.Tensor  # (B, B)


class Contrastive(ToyRecurrent):
    """batch_coupled: also returns the [B, B] similarity of the samples' final outputs."""

    def forward(self, x: torch.Tensor, attention_mask: torch.Tensor | None = None) -> PairOutput:  # type: ignore[override]
        y = super().forward(x, attention_mask)
        last = y[:, -1]  # (B, D)
        return PairOutput(y, last @ last.T)


class NoisyInEval(ToyRecurrent):
    """stochastic_eval: adds Gaussian noise drawn from ``generator`` even in eval."""

    def sample(self, batch_size: int, *, steps: int, generator: torch.Generator | None = None) -> torch.Tensor:
        x = torch.randn(batch_size, steps, self.config.d_in, generator=generator)
        y: torch.Tensor = self(x, generator=generator)
        return y

    def forward(
        self, x: torch.Tensor, attention_mask: torch.Tensor | None = None, generator: torch.Generator | None = None
    ) -> torch.Tensor:
        y = super().forward(x, attention_mask)
        noise = torch.randn(y.shape, generator=generator, dtype=y.dtype).to(y.device)
        return y + 0.01 * noise


@model_output
class ToyOutput:
    """Outputs and an auxiliary loss."""

    y: torch.Tensor  # (B, T, D)
    aux_loss: torch.Tensor  # ()


class WithAux(ToyRecurrent):
    """aux_loss: returns an L2 penalty on the skip gains, already weighted, beside the outputs."""

    def forward(self, x: torch.Tensor, attention_mask: torch.Tensor | None = None) -> ToyOutput:  # type: ignore[override]
        return ToyOutput(super().forward(x, attention_mask), 1e-3 * self.skip.square().sum())

    def step(self, x: torch.Tensor, state: ToyState) -> tuple[ToyOutput, ToyState]:  # type: ignore[override]
        y, state = super().step(x, state)
        return ToyOutput(y, 1e-3 * self.skip.square().sum()), state


class Tied(ToyRecurrent):
    """Tied weights: a second output projection shares the first one's weight."""

    def __init__(self, config: ToyConfig) -> None:
        super().__init__(config)
        self.out_proj_copy = nn.Linear(config.d_model, config.d_model, bias=False)
        self.out_proj_copy.weight = self.out_proj.weight

    def mix(self, x: torch.Tensor, initial: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
        y, h = super().mix(x, initial)
        return y + 0.5 * self.out_proj_copy(y.tanh()), h


class WithUnused(ToyRecurrent):
    """grad_exempt: an extra parameter that no output uses (exempted with a reason in the spec)."""

    def __init__(self, config: ToyConfig) -> None:
        super().__init__(config)
        self.spare = nn.Parameter(torch.zeros(2))


class VagueError(ToyRecurrent):
    """bad_inputs: validates by hand and raises InputError without the standard message."""

    def forward(self, x: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        if x.dim() != 3 or x.shape[-1] != self.config.d_in or not x.is_floating_point():
            raise edifice.InputError("bad x")
        y, _ = self.mix(x, None)
        return y


class ReturnsTuple(ToyRecurrent):
    """Outputs with more than one tensor must be a dataclass, never a bare tuple."""

    def forward(self, x: torch.Tensor, attention_mask: torch.Tensor | None = None) -> Any:
        y = super().forward(x, attention_mask)
        return y, y


# -- graph layout: a sample is a graph ------------------------------------------------------------------------------
@dataclasses.dataclass(kw_only=True)
class GraphToyConfig(ArchConfig):
    """Config of the toy graph layer."""

    arch: str = field("kit_graph", "Registry name.")
    d_in: int = field(3, "Node feature size.")
    d_model: int = field(8, "Output width.")


class GraphToy(Model):
    """One mean-aggregation message-passing layer: h_i = W x_i + mean_{j -> i} V x_j."""

    config_class = GraphToyConfig

    def __init__(self, config: GraphToyConfig) -> None:
        super().__init__(config)
        self.self_proj = nn.Linear(config.d_in, config.d_model)
        self.neighbour_proj = nn.Linear(config.d_in, config.d_model, bias=False)

    def aggregate(self, messages: torch.Tensor, edge_index: torch.Tensor, batch: torch.Tensor) -> torch.Tensor:
        """Mean of the messages arriving at each node: (N, D)."""
        src, dst = edge_index
        total = torch.zeros_like(messages).index_add_(0, dst, messages[src])
        count = torch.zeros_like(messages[:, :1]).index_add_(0, dst, torch.ones_like(messages[src, :1]))
        return total / count.clamp(min=1)

    def forward(self, x: torch.Tensor, edge_index: torch.Tensor, batch: torch.Tensor) -> torch.Tensor:
        """Node outputs (N, d_model)."""
        self.check_inputs(x=x, edge_index=edge_index, batch=batch)
        h: torch.Tensor = self.self_proj(x) + self.aggregate(self.neighbour_proj(x), edge_index, batch)
        return h


class GraphLeaks(GraphToy):
    """batch_independence: also adds the mean over every node of every graph."""

    def aggregate(self, messages: torch.Tensor, edge_index: torch.Tensor, batch: torch.Tensor) -> torch.Tensor:
        return super().aggregate(messages, edge_index, batch) + messages.mean(dim=0, keepdim=True)


def graph_spec(model: str = "GraphToy", **changes: Any) -> ArchSpec:
    """The graph toy's spec (layout ``graph``) with the model class ``model`` of this module."""
    base: dict[str, Any] = {
        "name": "kit_graph",
        "family": "toy",
        "distribution": "edifice-core-tests",
        "summary": "Toy message-passing layer for the contract kit's self-tests.",
        "paper": None,
        "config": f"{MODULE}:GraphToyConfig",
        "model": f"{MODULE}:{model}",
        "layout": "graph",
        "inputs": {
            "x": TensorSpec(("N", "d_in"), doc="Node features."),
            "edge_index": TensorSpec((2, "E"), dtype="int64", domain="int[0, N)", doc="Edges (source, target)."),
            "batch": TensorSpec(("N",), dtype="int64", domain="int[0, B)", doc="Graph of each node."),
        },
        "outputs": {"h": TensorSpec(("N", "d_model"), doc="Node outputs.")},
        "tiny": {"d_in": 3, "d_model": 8},
        "verification": "property:mean aggregation",
    }
    return ArchSpec(**{**base, **changes})
