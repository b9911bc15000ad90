"""Config of ``nerf``: Neural Radiance Fields (Mildenhall et al. 2020), torch-free.

The model is :mod:`edifice_vision.nerf`: the positional encoding (eq. 4), the MLP ``F_Θ: (γ(x), γ(d)) -> (c, σ)``
with its skip connection and view-direction branch (Fig. 7), and the volume renderer (eqs. 1-3) with stratified
(eq. 2) and hierarchical (eq. 5, §5.2) sampling through a coarse and a fine network.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import ClassVar

from edifice import ArchSpec, Paper, field
from edifice.config import ArchConfig
from edifice.spec import TensorSpec

__all__ = ["MILDENHALL_2020", "SPECS", "NeRFConfig"]

MILDENHALL_2020 = Paper(
    "NeRF: Representing Scenes as Neural Radiance Fields for View Synthesis",
    "Mildenhall, Srinivasan, Tancik, Barron, Ramamoorthi & Ng",
    2020,
    "2003.08934",
)


@dataclasses.dataclass(kw_only=True)
class NeRFConfig(ArchConfig):
    """NeRF: γ(x) through ``n_layers`` ReLU layers (re-injected after ``skip_layer``), then σ and RGB heads."""

    arch: str = field("nerf", "Registry name of the architecture this config builds.")
    coord_dim: int = field(3, "Dimensions of a point x.")
    dir_dim: int = field(3, "Dimensions of a viewing direction d.")
    d_model: int = field(256, "Width of the trunk layers (256 in the paper).")
    n_layers: int = field(8, "Fully connected ReLU layers of the trunk (8 in the paper).")
    skip_layer: int | None = field(
        4, "Concatenate γ(x) to this trunk layer's output (0-based; 4 = the 5th); None: no skip."
    )
    num_frequencies: int = field(10, "L of γ(x) (eq. 4): frequencies 2^0..2^(L-1) (10 in the paper).")
    dir_frequencies: int = field(4, "L of γ(d) (4 in the paper).")
    include_input: bool = field(True, "Prepend p itself to γ(p) (the authors' code does).")
    density_activation: str = field("relu", "σ = act(raw): 'relu' (the paper) or 'softplus' (mip-NeRF; never dead).")
    use_viewdir: bool = field(True, "Colour depends on the viewing direction (the 128-wide branch); else on x only.")
    fine_network: bool = field(True, "A second, fine network for hierarchical sampling (§5.2).")
    n_samples: int = field(64, "Stratified samples per ray, N_c (eq. 2).")
    n_importance: int = field(128, "Extra samples per ray drawn from the coarse weights, N_f (needs fine_network).")

    aliases: ClassVar[Mapping[str, str]] = {"hidden_size": "d_model", "num_layers": "n_layers"}

    def validate(self) -> None:
        """Positive sizes; the skip layer inside the trunk; importance samples only with a fine network."""
        super().validate()
        self.check_choice("density_activation", ("relu", "softplus"))
        self.check_positive("coord_dim", "dir_dim", "d_model", "n_layers", "n_samples")
        self.check_positive("num_frequencies", "dir_frequencies", "n_importance", allow_zero=True)
        if self.skip_layer is not None and not 0 <= self.skip_layer < self.n_layers - 1:
            self.fail("skip_layer", f"must lie in [0, n_layers - 1) = [0, {self.n_layers - 1}) or be None")
        if self.n_importance and not self.fine_network:
            self.fail("n_importance", "needs fine_network=True (the fine samples are evaluated by the fine network)")


_FINE = "fine_network"

SPECS = (
    ArchSpec(
        name="nerf",
        family="vision",
        distribution="edifice-vision",
        summary="NeRF: positional encoding, MLP radiance field with skip and view branch, volume rendering of rays.",
        paper=MILDENHALL_2020,
        config="edifice_vision.configs.nerf:NeRFConfig",
        model="edifice_vision.nerf:NeRF",
        inputs={
            "coordinates": TensorSpec(("B", "coord_dim"), doc="Points x in the scene."),
            "directions": TensorSpec(
                ("B", "dir_dim"), when="use_viewdir", doc="Viewing directions d (normalised inside)."
            ),
        },
        outputs={
            "rgb": TensorSpec(("B", 3), doc="Emitted colour c in [0, 1] (coarse network)."),
            "sigma": TensorSpec(("B",), doc="Volume density σ >= 0 (coarse network)."),
            "rgb_fine": TensorSpec(("B", 3), when=_FINE, doc="Colour from the fine network."),
            "sigma_fine": TensorSpec(("B",), when=_FINE, doc="Density from the fine network."),
        },
        tiny={
            "d_model": 16,
            "n_layers": 2,
            "skip_layer": 0,
            "num_frequencies": 4,
            "dir_frequencies": 2,
            "n_samples": 8,
            "n_importance": 8,
            # ReLU'd densities of a random tiny net sit at the kink (0 vs 7e-5 under bf16 fails a relative check).
            "density_activation": "softplus",
        },
        verification="oracle:volume rendering eq. 3 of an analytic density field = closed-form transmittance (fp64)",
    ),
)
