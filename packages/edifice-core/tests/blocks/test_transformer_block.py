"""TransformerBlock: pre-/post-norm residual structure, cross-attention, MoE aux loss, mixer state pass-through."""

from __future__ import annotations

from typing import Any

import pytest
import torch
from torch import nn

from edifice.blocks.attention import CrossAttention
from edifice.blocks.moe import MoEFeedForward
from edifice.blocks.transformer import TransformerBlock
from edifice.testing.tol import FP32, assert_close

D, B, T = 8, 2, 5


class ToyMixer(nn.Module):
    """A position-wise linear map that records what the block passed it."""

    def __init__(self) -> None:
        super().__init__()
        self.proj = nn.Linear(D, D)
        self.seen: dict[str, Any] = {}

    def forward(self, x: torch.Tensor, *, mask: Any = None, positions: Any = None, state: Any = None) -> torch.Tensor:
        self.seen = {"mask": mask, "positions": positions, "state": state}
        return self.proj(x)

    def init_state(self, batch_size: int, **kwargs: Any) -> dict[str, Any]:
        return {"batch_size": batch_size, **kwargs}


def _rms(x: torch.Tensor, w: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps) * w


def _ln(x: torch.Tensor, norm: nn.LayerNorm) -> torch.Tensor:
    mu, var = x.mean(-1, keepdim=True), x.var(-1, unbiased=False, keepdim=True)
    return (x - mu) / torch.sqrt(var + norm.eps) * norm.weight + norm.bias


def _block(norm_position: str, norm: str = "rmsnorm") -> TransformerBlock:
    torch.manual_seed(0)
    ffn = nn.Sequential(nn.Linear(D, 2 * D), nn.ReLU(), nn.Linear(2 * D, D))
    block = TransformerBlock(D, ToyMixer(), ffn, norm=norm, norm_position=norm_position).eval()
    with torch.no_grad():
        for p in block.parameters():
            p.add_(0.1 * torch.randn(p.shape))
    return block


def test_pre_norm_residuals() -> None:
    block = _block("pre")
    x = torch.randn(B, T, D, generator=torch.Generator().manual_seed(1))
    mixer, ffn = block.mixer, block.ffn
    assert isinstance(mixer, ToyMixer)
    assert ffn is not None
    h = x + mixer.proj(_rms(x, block.mixer_norm.weight))
    expected = h + ffn(_rms(h, block.ffn_norm.weight))  # type: ignore[union-attr]
    y, aux = block(x)
    assert aux is None
    assert_close(y, expected, FP32)


def test_post_norm_residuals_vaswani() -> None:
    block = _block("post", norm="layernorm")
    x = torch.randn(B, T, D, generator=torch.Generator().manual_seed(2))
    mixer, ffn = block.mixer, block.ffn
    assert isinstance(mixer, ToyMixer)
    assert ffn is not None
    h = _ln(x + mixer.proj(x), block.mixer_norm)  # type: ignore[arg-type]
    expected = _ln(h + ffn(h), block.ffn_norm)  # type: ignore[arg-type]
    assert_close(block(x)[0], expected, FP32)


def test_mixer_receives_mask_positions_and_state() -> None:
    block = _block("pre")
    mask, positions = torch.ones(B, T, dtype=torch.bool), torch.arange(T)
    state = block.init_state(B, max_len=9)
    assert state == {"batch_size": B, "max_len": 9}
    block(torch.zeros(B, T, D), mask=mask, positions=positions, state=state)
    seen = block.mixer.seen  # type: ignore[union-attr]
    assert seen["mask"] is mask
    assert seen["positions"] is positions
    assert seen["state"] is state


def test_cross_attention_sublayer_and_missing_context() -> None:
    torch.manual_seed(3)
    cross = CrossAttention(D, 2, d_context=6)
    block = TransformerBlock(D, ToyMixer(), None, cross_attn=cross).eval()
    x = torch.randn(B, T, D)
    context, context_mask = torch.randn(B, 4, 6), torch.tensor([[True] * 4, [True, False, True, False]])
    h = x + block.mixer.proj(_rms(x, block.mixer_norm.weight))  # type: ignore[union-attr]
    expected = h + cross(_rms(h, block.cross_norm.weight), context, context_mask=context_mask)  # type: ignore[union-attr]
    assert_close(block(x, context=context, context_mask=context_mask)[0], expected, FP32)
    with pytest.raises(ValueError, match="needs context"):
        block(x)


def test_moe_ffn_aux_loss_is_returned_and_padding_left_out() -> None:
    torch.manual_seed(4)
    moe = MoEFeedForward(D, 12, n_experts=4, top_k=2)
    block = TransformerBlock(D, ToyMixer(), moe).eval()
    x = torch.randn(B, T, D)
    mask = torch.ones(B, T, dtype=torch.bool)
    mask[1, :2] = False
    y, aux = block(x, mask=mask)
    h = x + block.mixer.proj(_rms(x, block.mixer_norm.weight))  # type: ignore[union-attr]
    expected_y, expected_aux = moe(_rms(h, block.ffn_norm.weight), mask)  # type: ignore[union-attr]
    assert aux is not None
    assert_close(y, h + expected_y, FP32)
    assert_close(aux, expected_aux, FP32)


def test_residual_dropout_only_in_training() -> None:
    torch.manual_seed(5)
    block = TransformerBlock(D, ToyMixer(), None, dropout=0.5)
    x = torch.randn(B, T, D)
    block.eval()
    assert torch.equal(block(x)[0], block(x)[0])
    block.train()
    assert not torch.equal(block(x)[0], block(x)[0])


def test_bad_options_raise() -> None:
    with pytest.raises(ValueError, match="norm_position"):
        TransformerBlock(D, ToyMixer(), norm_position="sandwich")
    with pytest.raises(ValueError, match="dropout"):
        TransformerBlock(D, ToyMixer(), dropout=1.0)
    with pytest.raises(TypeError, match="no init_state"):
        TransformerBlock(D, nn.Identity()).init_state(B)
