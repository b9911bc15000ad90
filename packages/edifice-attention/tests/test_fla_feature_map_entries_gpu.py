"""GPU parity: ``flash_linear_attention`` and ``based`` mixers against flash-linear-attention's Triton layers.

On CPU the signature tests check these mixers against fla's pure-PyTorch paths (the layer's modules with
``naive_recurrent_linear_attn``; ``BasedLinearAttention.forward_reference``); here fla's kernels themselves are the
reference: ``LinearAttention`` in its chunk, fused_chunk and fused_recurrent modes with learned feature maps, and
``BasedLinearAttention`` in its parallel, chunk and fused_chunk modes. Run on the GPU machine with ``pytest -m gpu``.
"""

from __future__ import annotations

import warnings
from typing import Any

import pytest
import torch

import edifice

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device (fla's layers run on Triton)"),
]

D, H = 64, 2


def fla_layers() -> Any:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return pytest.importorskip("fla.layers")


def compare(case: str, layer: Any, mixer: Any, tuple_out: bool) -> None:
    """fp32 against fla's fp32 kernels (relative error 1e-3), bf16 within the contract's 2e-2; T = 100 > 64."""
    with torch.no_grad():
        for p in layer.parameters():  # unit gains and identity maps would hide a wrong mapping
            p.add_(0.1 * torch.randn_like(p))
    mixer.load_state_dict(
        {key.replace("norm.weight", "o_norm.weight"): v for key, v in layer.state_dict().items()}, strict=True
    )
    x = torch.randn(2, 100, D, device="cuda", generator=torch.Generator(device="cuda").manual_seed(1))
    for dtype, tol in ((torch.float32, 1e-3), (torch.bfloat16, 2e-2)):
        with torch.no_grad():
            out = layer.to(dtype)(x.to(dtype))
            want = (out[0] if tuple_out else out).float()
            got = mixer(x.float())
        err = float((got - want).norm() / want.norm())
        assert err <= tol, f"{case} ({dtype}): relative error {err:.2e} > {tol}"


@pytest.mark.parametrize("mode", ["chunk", "fused_chunk", "fused_recurrent"])
@pytest.mark.parametrize("feature_map", ["elementwise_product", "hedgehog", "t2r"])
def test_flash_linear_attention_matches_fla_layer_on_gpu(feature_map: str, mode: str) -> None:
    torch.manual_seed(0)
    layer = fla_layers().LinearAttention(hidden_size=D, num_heads=H, feature_map=feature_map, mode=mode, norm_eps=1e-5)
    model: Any = edifice.build(
        "flash_linear_attention", d_model=D, n_heads=H, n_layers=1, feature_map=feature_map, norm_eps=1e-5
    )
    compare(
        f"flash_linear_attention/{feature_map}/{mode}", layer.cuda().eval(), model.layers[0].mixer.cuda().eval(), True
    )


@pytest.mark.parametrize("mode", ["parallel", "chunk", "fused_chunk"])
def test_based_matches_fla_layer_on_gpu(mode: str) -> None:
    torch.manual_seed(0)
    layer = fla_layers().BasedLinearAttention(D, feature_dim=16, num_heads=H, num_key_value_heads=H, mode=mode)
    model: Any = edifice.build("based", d_model=D, n_heads=H, n_layers=1, feature_dim=16, layer_pattern=("based",))
    compare(f"based/{mode}", layer.cuda().eval(), model.layers[0].mixer.cuda().eval(), False)
