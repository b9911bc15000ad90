"""GPU parity: ``linear_transformer``, ``hgrn`` and ``hgrn_v2`` mixers against flash-linear-attention's own layers.

fla's layers run only through Triton, so this is where the independent pip implementation itself is checked (on CPU
the signature tests check the same mixers against fla's naive references). ``lightning_attention`` has no fla layer
(its CPU reference is transformers' ``MiniMaxLightningAttention``). Run on the GPU machine with ``pytest -m gpu``.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from typing import Any

import pytest
import torch
from torch import nn

from edifice_attention.configs.hgrn import HGRNConfig
from edifice_attention.configs.hgrn_v2 import HGRN2Config
from edifice_attention.configs.linear_transformer import LinearTransformerConfig
from edifice_attention.hgrn import HGRU
from edifice_attention.hgrn_v2 import HGRN2Attention
from edifice_attention.linear_transformer import NormalizedLinearAttention

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device (fla's layers run on Triton)"),
]

D, H = 64, 2
# name: (fla layer class, its keyword arguments, its modes, our mixer, fla's parameter name for each of ours)
CASES: dict[str, tuple[str, dict[str, Any], tuple[str, ...], Callable[[], nn.Module], dict[str, str]]] = {
    "linear_transformer": (
        "LinearAttention",
        {"num_heads": H, "feature_map": "elu", "output_norm": "identity", "do_feature_map_norm": True},
        ("chunk", "fused_chunk", "fused_recurrent"),
        lambda: NormalizedLinearAttention(LinearTransformerConfig(d_model=D, n_heads=H)),
        {},
    ),
    "hgrn_v2": (
        "HGRN2Attention",
        {"num_heads": H, "expand_ratio": None},
        ("chunk", "fused_recurrent"),  # fla 0.6 removed fused_chunk_gla, which HGRN-2's fused_chunk mode called
        lambda: HGRN2Attention(HGRN2Config(d_model=D, n_heads=H, norm_eps=1e-5)),
        {"k_proj.weight": "f_proj.weight", "v_proj.weight": "i_proj.weight", "o_norm.weight": "g_norm.weight"},
    ),
    "hgrn": (
        "HGRNAttention",
        {"expand_ratio": 1},
        ("chunk", "fused_recurrent"),
        lambda: HGRU(HGRNConfig(d_model=D, norm_eps=1e-5)),
        {"o_norm.weight": "g_norm.weight"},
    ),
}


@pytest.mark.parametrize(("case", "mode"), [(c, m) for c, (_, _, modes, _, _) in CASES.items() for m in modes])
def test_mixer_matches_fla_layer_on_gpu(case: str, mode: str) -> None:
    """fp32 against fla's fp32 kernels (relative error), and bf16 inputs within the contract's bf16 tolerance."""
    cls_name, kwargs, _, build, rename = CASES[case]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        layers = pytest.importorskip("fla.layers")
    torch.manual_seed(0)
    layer = getattr(layers, cls_name)(hidden_size=D, mode=mode, **kwargs).cuda().eval()
    with torch.no_grad():
        for p in layer.parameters():  # unit norm gains would hide a wrong mapping
            p.add_(0.1 * torch.randn_like(p))
    mixer = build().cuda().eval()
    source = layer.state_dict()
    mixer.load_state_dict({name: source[rename.get(name, name)] for name in mixer.state_dict()})
    x = torch.randn(2, 100, D, device="cuda", generator=torch.Generator(device="cuda").manual_seed(1))
    # fp32: Triton's tl.dot multiplies fp32 in TF32 (10-bit mantissa) unless told otherwise, and fla's chunked kernels
    # do: 2e-3 relative error over T = 100 is TF32's (an H100 measured 1.4e-3 for fused_chunk).
    for dtype, tol in ((torch.float32, 2e-3), (torch.bfloat16, 2e-2)):
        with torch.no_grad():
            want = layer.to(dtype)(x.to(dtype))[0].float()  # T = 100 > 64: fla runs the mode asked for
            got = mixer(x.float())
        err = float((got - want).norm() / want.norm())
        assert err <= tol, f"{case} ({mode}, {dtype}): relative error {err:.2e} > {tol}"
