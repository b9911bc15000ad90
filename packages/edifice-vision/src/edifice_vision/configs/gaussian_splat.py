"""Config of ``gaussian_splat``: 3D Gaussian Splatting's differentiable rasterizer (Kerbl et al. 2023), torch-free.

The model is :mod:`edifice_vision.gaussian_splat`: a scene of ``num_gaussians`` anisotropic 3-D Gaussians (means,
scales, rotation quaternions, opacities, spherical-harmonic colours) rendered for a camera by projecting each to 2-D
with the EWA Jacobian (eqs. 5-6), sorting by depth and alpha-compositing front to back (eqs. 2-3).
"""

from __future__ import annotations

import dataclasses

from edifice import ArchSpec, Paper, field
from edifice.config import ArchConfig
from edifice.spec import TensorSpec

__all__ = ["KERBL_2023", "SPECS", "GaussianSplatConfig"]

KERBL_2023 = Paper(
    "3D Gaussian Splatting for Real-Time Radiance Field Rendering",
    "Kerbl, Kopanas, Leimkühler & Drettakis",
    2023,
    "2308.04079",
)


@dataclasses.dataclass(kw_only=True)
class GaussianSplatConfig(ArchConfig):
    """A scene of 3-D Gaussians and a pinhole camera of ``image_size`` pixels square with field of view ``fov``."""

    arch: str = field("gaussian_splat", "Registry name of the architecture this config builds.")
    num_gaussians: int = field(1024, "Number of 3-D Gaussians in the scene.")
    sh_degree: int = field(0, "Degree of the spherical-harmonic colours: 0 (view-independent) to 3 (the paper's).")
    image_size: int = field(64, "Side of the rendered (square) image in pixels.")
    fov: float = field(60.0, "Field of view of the camera in degrees (both axes).")
    near_plane: float = field(
        0.2, "Gaussians whose centre is nearer than this (camera z) are culled (the authors' 0.2)."
    )
    background: float = field(0.0, "Grey level behind the Gaussians (0 black, 1 white).")
    init_extent: float = field(1.0, "Means start uniform in [-extent, extent]^3 (the paper's random initialisation).")
    pixel_chunk: int = field(4096, "Pixels composited at once (bounds memory: chunk x num_gaussians per camera).")

    def validate(self) -> None:
        """Positive sizes, a supported SH degree, a field of view in (0, 180)."""
        super().validate()
        self.check_positive("num_gaussians", "image_size", "near_plane", "init_extent", "pixel_chunk")
        self.check_choice("sh_degree", (0, 1, 2, 3))
        if not 0.0 < self.fov < 180.0:
            self.fail("fov", "must lie in (0, 180) degrees")
        self.check_range("background", 0.0, 1.0)


SPECS = (
    ArchSpec(
        name="gaussian_splat",
        family="vision",
        distribution="edifice-vision",
        summary="3D Gaussian Splatting: EWA projection of 3-D Gaussians, depth sort, differentiable alpha compositing.",
        paper=KERBL_2023,
        config="edifice_vision.configs.gaussian_splat:GaussianSplatConfig",
        model="edifice_vision.gaussian_splat:GaussianSplat",
        inputs={
            "view_matrix": TensorSpec(
                ("B", 4, 4), doc="World-to-camera transforms (camera looks along +z, x right, y down)."
            ),
        },
        outputs={
            "image": TensorSpec(("B", 3, "image_size", "image_size"), doc="Rendered colours."),
            "alpha": TensorSpec(("B", "image_size", "image_size"), doc="Accumulated opacity 1 - T_final."),
        },
        tiny={"num_gaussians": 32, "image_size": 8, "init_extent": 1.0},
        verification="oracle:front-to-back compositing (eq. 3) of EWA-projected Gaussians, hand-computed pixel (fp64)",
    ),
)
