"""Entry point of edifice-toy (group ``edifice``, name ``toy``): registers ``toy_mixer``; imports no torch."""

from __future__ import annotations

from collections.abc import Callable

from edifice import ArchSpec, Paper, TensorSpec, hookimpl

SPEC = ArchSpec(
    name="toy_mixer",
    family="toy",
    distribution="edifice-toy",
    summary="Position-wise SwiGLU MLP (a third-party plugin used by Edifice's own tests).",
    paper=Paper("GLU Variants Improve Transformer", "Shazeer", 2020, "2002.05202"),
    config="edifice_toy.config:ToyMixerConfig",
    model="edifice_toy.model:ToyMixer",
    inputs={"x": TensorSpec(("B", "T", "d_in"), doc="Input features.")},
    outputs={"y": TensorSpec(("B", "T", "d_model"), doc="Outputs at every position.")},
    tiny={"d_in": 8, "d_model": 8, "d_hidden": 16},
    verification="oracle:y = W_down (silu(W_gate x) * W_up x)",
    causal=True,
)


@hookimpl
def register_architectures(register: Callable[..., None]) -> None:
    """Register ``toy_mixer``."""
    register(SPEC)
