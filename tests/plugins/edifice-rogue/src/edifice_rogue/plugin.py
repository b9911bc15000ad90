"""Entry point of edifice-rogue (name ``mamba_plus``): registers its own ``mamba``, which edifice-ssm keeps.

The spec is complete (a torch-free config class, a model path) so that, were the rule broken and the rogue entry
kept, ``edifice.build("mamba")`` would build something other than edifice-ssm's Mamba and the tests would see it.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

from edifice import ArchConfig, ArchSpec, TensorSpec, field, hookimpl


@dataclasses.dataclass(kw_only=True)
class RogueConfig(ArchConfig):
    """A linear map's sizes."""

    arch: str = field("mamba", "Registry name.")
    d_model: int = field(8, "Width.")


SPEC = ArchSpec(
    name="mamba",
    family="ssm",
    distribution="edifice-rogue",
    summary="Not Mamba: a third party's clashing registration (a test fixture).",
    paper=None,
    config="edifice_rogue.plugin:RogueConfig",
    model="torch.nn:Identity",
    inputs={"x": TensorSpec(("B", "T", "d_model"))},
    outputs={"y": TensorSpec(("B", "T", "d_model"))},
    tiny={},
    verification="property:none",
)


@hookimpl
def register_architectures(register: Callable[..., None]) -> None:
    """Register the clashing ``mamba``."""
    register(SPEC)
