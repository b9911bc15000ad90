"""GPU parity: the ``retnet`` and ``gla`` mixers against flash-linear-attention's own layers (Triton), weights mapped.

fla's layers run only on CUDA, so this is where the independent pip implementation itself is checked; on CPU the
signature tests check the same mixers against fla's naive references. Run on the GPU machine with ``pytest -m gpu``.
"""

from __future__ import annotations

import warnings
from typing import Any

import pytest
import torch
from torch import nn

from edifice_attention._linear_attention import LinearAttentionMixer
from edifice_attention.configs.gla import GLAConfig
from edifice_attention.configs.retnet import RetNetConfig
from edifice_attention.gla import GatedLinearAttention
from edifice_attention.retnet import MultiScaleRetention

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device (fla's layers run on Triton)"),
]

D, H = 64, 2
# name: (fla layer class, its modes, our mixer built from the entry's config with fla's layer defaults)
CASES: dict[str, tuple[str, tuple[str, ...], Any]] = {
    "retnet": (
        "MultiScaleRetention",
        ("chunk", "fused_recurrent", "parallel"),
        lambda: MultiScaleRetention(RetNetConfig(d_model=D, n_heads=H, output_norm="rmsnorm", norm_eps=1e-5)),
    ),
    "gla": (
        "GatedLinearAttention",
        ("chunk", "fused_recurrent"),
        lambda: GatedLinearAttention(GLAConfig(d_model=D, n_heads=H, norm_eps=1e-5)),
    ),
}


def load_from_fla(mixer: LinearAttentionMixer, layer: nn.Module) -> None:
    """Copy an fla layer's weights into ``mixer`` (names match except the gated output norm's)."""
    source = layer.state_dict()
    mixer.load_state_dict(
        {name: source.get(name, source.get("g_norm_swish_gate.weight")) for name in mixer.state_dict()}
    )


@pytest.mark.parametrize(("case", "mode"), [(c, m) for c, (_, modes, _) in CASES.items() for m in modes])
def test_mixer_matches_fla_layer_on_gpu(case: str, mode: str) -> None:
    """fp32 against fla's fp32 kernels (relative error), and bf16 inputs within the contract's bf16 tolerance."""
    cls_name, _, build = CASES[case]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        layers = pytest.importorskip("fla.layers")
    torch.manual_seed(0)
    layer = getattr(layers, cls_name)(hidden_size=D, num_heads=H, mode=mode).cuda().eval()
    mixer = build().cuda().eval()
    load_from_fla(mixer, layer)
    x = torch.randn(2, 100, D, device="cuda", generator=torch.Generator(device="cuda").manual_seed(1))
    for dtype, tol in ((torch.float32, 1e-3), (torch.bfloat16, 2e-2)):
        with torch.no_grad():
            want = layer.to(dtype)(x.to(dtype))[0].float()  # T = 100 > 64: fla runs the mode asked for
            got = mixer(x.float())
        err = float((got - want).norm() / want.norm())
        assert err <= tol, f"{case} ({mode}, {dtype}): relative error {err:.2e} > {tol}"
