"""``dino_v3``: parity with transformers' ``DINOv3ViTModel`` -- 2-D RoPE on the patch grid, registers, no key bias.

The signature is parity on redrawn weights (MLP and SwiGLU) at the training size and at non-square sizes, where only
the RoPE of the patch centres carries position; replacing the RoPE by none, or rotating the prefix tokens, fails it.
"""

from __future__ import annotations

from typing import Any

import pytest
import torch

import edifice
from edifice.testing import redraw_parameters, signature
from edifice_vision._vit_blocks import grid_rope

transformers = pytest.importorskip("transformers")
Config, Model = transformers.DINOv3ViTConfig, transformers.DINOv3ViTModel
COMMON = {"hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 4, "image_size": 16, "patch_size": 4}


def hf_model(**kwargs: Any) -> Any:
    torch.manual_seed(0)
    return redraw_parameters(Model(Config(**COMMON, **kwargs)), seed=1).eval()


@signature("dino_v3")
@pytest.mark.parametrize(
    "options",
    [
        {"intermediate_size": 64, "num_register_tokens": 2},
        {"intermediate_size": 48, "use_gated_mlp": True, "hidden_act": "silu", "num_register_tokens": 4},
    ],
    ids=["mlp", "swiglu"],
)
def test_matches_transformers_dinov3(options: dict[str, Any], vit_helpers: Any) -> None:
    hf = hf_model(**options)
    ours = edifice.convert("transformers.DINOv3ViTModel", hf)
    assert ours.stages[0].attn.k_proj.bias is None
    for size in [(16, 16), (24, 12), (8, 20)]:
        x = vit_helpers.images(2, 3, *size)
        with torch.no_grad():
            out = hf(pixel_values=x)
            torch.testing.assert_close(ours.forward_features(x), out.last_hidden_state, atol=1e-5, rtol=1e-5)
            torch.testing.assert_close(ours(x), out.pooler_output, atol=1e-5, rtol=1e-5)
            maps = ours.forward_intermediates(x, intermediates_only=True)
            assert maps[-1].shape == (2, 32, size[0] // 4, size[1] // 4)


def test_rope_leaves_prefix_tokens_and_rotates_patches_by_their_centres() -> None:
    cos, sin = grid_rope((2, 3), 8, 100.0, 3, device=torch.device("cpu"))
    assert cos.shape == (3 + 6, 8)
    assert torch.all(cos[:3] == 1) and torch.all(sin[:3] == 0)
    # patch (row 1, col 2): y = 2 * 1.5 / 2 - 1 = 0.5, x = 2 * 2.5 / 3 - 1 = 2/3; periods 100^(-4k/8), k = 0, 1
    omega = torch.tensor([1.0, 100.0**-0.5])
    want = torch.cat([0.5 * omega, 2 / 3 * omega]) * 2 * torch.pi
    torch.testing.assert_close(cos[3 + 5, :4], want.cos())
    torch.testing.assert_close(sin[3 + 5, :4], want.sin())
    torch.testing.assert_close(cos[:, :4], cos[:, 4:])


def test_rope_box_jitter_only_while_training() -> None:
    from edifice_vision.configs.vit import TINY

    model = edifice.build("dino_v3", **TINY, rope_rescale=2.0, layer_scale=1.0)
    x = torch.randn(1, 3, 16, 16)
    model.eval()
    with torch.no_grad():
        torch.testing.assert_close(model(x), model(x))
        model.train()
        torch.manual_seed(0)
        a = model(x)
        torch.manual_seed(1)
        b = model(x)
    assert not torch.allclose(a, b)
    with pytest.raises(ValueError, match="rope_rescale"):
        edifice.config("dino_v3", rope_rescale=0.5)
