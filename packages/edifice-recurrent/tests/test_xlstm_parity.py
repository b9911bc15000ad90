"""Signature tests of xlstm, mlstm and slstm: parity with transformers' xLSTMModel and equation oracles.

* mlstm -- transformers ``xLSTMModel`` (xLSTM 7B's mLSTM blocks) with random weights mapped by the converter;
* slstm -- the sLSTM equations 8-14 of Beck et al. (2024) written out step by step in fp64 *without* the stabiliser;
* xlstm -- a mixed stack: its mLSTM blocks against transformers' blocks, its sLSTM blocks against that oracle.

Swapping ``edifice.ops.mlstm`` for a memory that never forgets must break the mLSTM parities.
"""

from __future__ import annotations

import math
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import edifice
from edifice.testing import mutate_op, signature
from edifice_recurrent.configs.xlstm import XLSTMConfig
from edifice_recurrent.xlstm import XLSTM, SLSTMLayer

transformers = pytest.importorskip("transformers")
# transformers imports its model modules lazily (seconds): pay that at collection, not in the first test.
pytest.importorskip("transformers.models.xlstm.modeling_xlstm")

ATOL = 1e-5


def make_hf(seed: int = 0, **overrides: Any) -> Any:
    """A tiny transformers xLSTMModel in fp32 with every parameter drawn at random (no zero or unit init left)."""
    config = transformers.xLSTMConfig(
        vocab_size=50,
        hidden_size=32,
        num_blocks=2,
        num_heads=2,
        ffn_round_up_to_multiple_of=8,
        chunk_size=4,
        autocast_kernel_dtype="float32",
        **overrides,
    )
    torch.manual_seed(seed)
    model = transformers.xLSTMModel(config).eval()
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            p.copy_(torch.randn(p.shape, generator=gen) * (0.3 if "weight" in name and p.dim() > 1 else 1.0))
    return model


def features(B: int, T: int, d: int, seed: int) -> torch.Tensor:
    return torch.randn(B, T, d, generator=torch.Generator().manual_seed(seed))


def hf_hidden(hf: Any, x: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return hf(inputs_embeds=x, use_cache=False).last_hidden_state  # type: ignore[no-any-return]


def mlstm_parity_error(T: int = 13) -> float:
    hf = make_hf()
    model = edifice.convert("transformers.xLSTMModel", hf).eval()
    x = features(2, T, 32, seed=1)
    with torch.no_grad():
        got = model(x=x)
    return float((got - hf_hidden(hf, x)).abs().max())


@signature("mlstm")
@pytest.mark.parametrize("T", [2, 4, 13])
def test_mlstm_matches_transformers(T: int) -> None:
    assert mlstm_parity_error(T) <= ATOL


@signature("mlstm")
def test_mlstm_steps_match_transformers() -> None:
    hf = make_hf(seed=2)
    model = edifice.convert("transformers.xLSTMModel", hf).eval()  # x = inputs_embeds -> last_hidden_state
    x = features(2, 9, 32, seed=3)
    want = hf_hidden(hf, x)
    with torch.no_grad():
        state = model.init_state(2)
        stepped = torch.cat(
            [model.step(x[:, :4], state)[0]] + [model.step(x[:, t : t + 1], state)[0] for t in range(4, 9)], 1
        )
    torch.testing.assert_close(stepped, want, atol=5 * ATOL, rtol=0)  # chunk-by-chunk sums round differently


def test_final_norm_uses_norm_eps() -> None:
    # At norm_eps = 1e-3 a final norm that kept the default 1e-6 is off by ~1e-3 (the per-head norms and the blocks'
    # norms already followed the config).
    hf = make_hf(seed=4, norm_eps=1e-3)
    model = edifice.convert("transformers.xLSTMModel", hf).eval()
    x = features(2, 5, 32, seed=5)
    with torch.no_grad():
        torch.testing.assert_close(model(x=x), hf_hidden(hf, x), atol=ATOL, rtol=0)
    assert model.norm.eps == 1e-3


def test_ffn_width_rounds_as_transformers_and_a_768_wide_checkpoint_converts() -> None:
    # transformers (and the authors' xlstm package) round int((x + m - 1) // m * m): 768 * 2.667 = 2048.26 -> 2048,
    # where ceil(x / m) * m would give 2112 and refuse the checkpoint's shapes.
    assert XLSTMConfig(d_model=768, n_heads=4).mlstm_ffn_dim == 2048
    assert XLSTMConfig(d_model=64, ffn_factor=1.5, ffn_multiple_of=64).mlstm_ffn_dim == 128  # 96 -> 128: still up
    config = transformers.xLSTMConfig(
        vocab_size=8, hidden_size=768, num_blocks=1, num_heads=4, chunk_size=4, autocast_kernel_dtype="float32"
    )
    torch.manual_seed(6)
    hf = transformers.xLSTMModel(config).eval()
    model = edifice.convert("transformers.xLSTMModel", hf).eval()
    assert model.layers[0].ffn.up_proj.out_features == 2048
    x = features(1, 3, 768, seed=7)
    with torch.no_grad():
        torch.testing.assert_close(model(x=x), hf_hidden(hf, x), atol=1e-4, rtol=0)


def test_mlstm_forgetting_is_what_matches() -> None:
    with mutate_op("mlstm"):
        assert mlstm_parity_error() > 1e-3


# -- sLSTM oracle ---------------------------------------------------------------------------------------------------
def slstm_oracle(layer: SLSTMLayer, x: torch.Tensor) -> torch.Tensor:
    """Eqs. 8-14 verbatim in fp64, unstabilised: exp(ĩ) as is, dense block-diagonal R, then per-head LayerNorm."""
    B, T, d = x.shape
    H, D = layer.n_heads, layer.head_dim
    W, b = layer.W.weight.double(), layer.W.bias.double()
    R = torch.block_diag(*[layer.R[h].double() for h in range(H)])  # (d, 4d) with columns per head (4, D)
    # Reorder R's columns from per-head (H, 4, D) to W's gate-major (4, H, D) layout.
    R = R.view(d, H, 4, D).transpose(1, 2).reshape(d, 4 * d)
    h, c, n = (torch.zeros(B, d, dtype=torch.float64) for _ in range(3))
    outs = []
    for t in range(T):
        pre = x[:, t].double() @ W.T + b + h @ R
        i_pre, f_pre, z_pre, o_pre = pre.split(d, dim=-1)
        i, f = torch.exp(i_pre), torch.sigmoid(f_pre)  # eqs. 12-13
        c = f * c + i * torch.tanh(z_pre)  # eqs. 8, 11
        n = f * n + i  # eq. 9
        h = torch.sigmoid(o_pre) * c / n  # eqs. 10, 14
        outs.append(h)
    y = torch.stack(outs, 1).view(B, T, H, D)
    return F.layer_norm(y, (D,), eps=layer.group_norm.eps).flatten(2) * layer.group_norm.weight.double()


def seeded_slstm(seed: int) -> SLSTMLayer:
    torch.manual_seed(seed)
    layer = SLSTMLayer(XLSTMConfig(d_model=12, n_heads=3, slstm_at=None))
    with torch.no_grad():
        for p in layer.parameters():
            p.add_(0.3 * torch.randn_like(p))
    return layer


@torch.no_grad()
def test_slstm_initialisation_is_the_authors() -> None:
    # xlstm package defaults: R = 0, W small-init N(0, 2/(5d)), i/z/o biases 0, forget-gate bias per unit j of each
    # head 5 - 12 (j/(D-1))^(0.3 + 1.3 r), r = block index / (blocks - 1) ("powerlaw_blockdependent").
    torch.manual_seed(8)
    model = edifice.build("slstm", d_model=64, n_layers=2, n_heads=4)
    for index, layer in enumerate(model.layers):
        cell = layer.mixer
        assert float(cell.R.abs().max()) == 0
        assert abs(float(cell.W.weight.std()) / math.sqrt(2 / (5 * 64)) - 1) < 0.05
        bias = cell.W.bias.view(4, 4, 16)  # (gate i/f/z/o, head, unit)
        assert float(bias[[0, 2, 3]].abs().max()) == 0
        j = torch.arange(16) / 15
        want = 5 - 12 * j ** (0.3 + 1.3 * index)
        torch.testing.assert_close(bias[1], want.expand(4, 16))


@signature("slstm")
@pytest.mark.parametrize("T", [1, 7])
def test_slstm_layer_matches_unstabilised_equations(T: int) -> None:
    layer = seeded_slstm(T)
    x = features(2, T, 12, seed=T)
    with torch.no_grad():
        got = layer(x)
    torch.testing.assert_close(got.double(), slstm_oracle(layer, x), atol=1e-5, rtol=1e-5)


@signature("slstm")
def test_slstm_recurrent_weights_matter() -> None:
    # A generic gated RNN without the head-wise recurrence R h_{t-1} must not pass as this cell.
    layer = seeded_slstm(3)
    x = features(2, 7, 12, seed=4)
    with torch.no_grad():
        want = slstm_oracle(layer, x)
        layer.R.zero_()
        assert (layer(x).double() - want).abs().max() > 1e-2


def test_slstm_does_not_overflow_at_input_scale_100() -> None:
    # exp(ĩ) overflows fp32 for ĩ > 88; the log-domain stabiliser keeps every exponent <= 0.
    layer = seeded_slstm(5)
    x = (features(2, 12, 12, seed=5) * 100).requires_grad_()
    assert torch.isinf(torch.exp(layer.W(x)[..., :12])).any()  # the input gate alone would overflow
    y = layer(x)
    assert torch.isfinite(y).all()
    y.square().sum().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in layer.parameters())


# -- the mixed stack ------------------------------------------------------------------------------------------------
@signature("xlstm")
def test_xlstm_blocks_match_their_references() -> None:
    hf = make_hf(seed=5)
    mixed = XLSTM(XLSTMConfig(d_model=32, n_layers=2, n_heads=2, slstm_at=(1,), ffn_multiple_of=8, chunk_size=4))
    pure = edifice.convert("transformers.xLSTMModel", hf).eval()
    mixed.layers[0].load_state_dict(pure.layers[0].state_dict())  # block 0: mLSTM, from transformers
    mixed.norm.load_state_dict(pure.norm.state_dict())
    mixed.eval()
    x = features(2, 11, 32, seed=6)
    with torch.no_grad():
        h0 = hf.blocks[0](x)[0]  # transformers' mLSTM block
        torch.testing.assert_close(mixed.layers[0](x)[0], h0, atol=ATOL, rtol=0)
        block = mixed.layers[1]  # sLSTM block: x + sLSTM(norm(x)), then x + GeGLU(norm(x))
        h1 = h0 + slstm_oracle(block.mixer, block.mixer_norm(h0)).float()
        h1 = h1 + block.ffn(block.ffn_norm(h1))
        torch.testing.assert_close(mixed(x=x), mixed.norm(h1), atol=ATOL, rtol=0)
        with mutate_op("mlstm"):
            assert (mixed(x=x) - mixed.norm(h1)).abs().max() > 1e-3
    assert isinstance(block.mixer, SLSTMLayer) and isinstance(block.ffn, nn.Module)


def test_chunked_model_matches_recurrent_model() -> None:
    # The whole stack with the chunkwise op vs with the per-step oracle, on a padded batch.
    torch.manual_seed(7)
    model = XLSTM(XLSTMConfig(d_model=16, n_layers=2, n_heads=2, slstm_at=(1,), ffn_multiple_of=8, chunk_size=3))
    x = features(2, 10, 16, seed=8)
    mask = torch.ones(2, 10, dtype=torch.bool)
    mask[1, :3] = False
    from edifice.ops.mlstm import mlstm_naive

    with torch.no_grad():
        want = model(x=x, attention_mask=mask)
        with edifice.ops.swap("mlstm", mlstm_naive):
            got = model(x=x, attention_mask=mask)
        torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
        # Left padding gives the unpadded result at the valid positions.
        torch.testing.assert_close(model(x=x[1:, 3:]), want[1:, 3:], atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("slstm_at", [(), None, (0,)], ids=["mlstm", "slstm", "mixed"])
def test_step_matches_forward_at_every_prefix_with_constant_state(slstm_at: Any) -> None:
    torch.manual_seed(9)
    model = XLSTM(XLSTMConfig(d_model=16, n_layers=2, n_heads=2, slstm_at=slstm_at, ffn_multiple_of=8, chunk_size=4))
    x = features(2, 9, 16, seed=10)
    with torch.no_grad():
        want = model(x=x)
        state = model.init_state(2)
        sizes = [t.numel() for layer in state.layers for t in vars(layer).values()]
        chunks = [model.step(x[:, :3], state)[0]] + [model.step(x[:, t : t + 1], state)[0] for t in range(3, 9)]
        assert [t.numel() for layer in state.layers for t in vars(layer).values()] == sizes
    torch.testing.assert_close(torch.cat(chunks, 1), want, atol=1e-5, rtol=1e-5)


def test_invalid_configs_raise() -> None:
    with pytest.raises(ValueError, match="slstm_at"):
        XLSTMConfig(n_layers=2, slstm_at=(2,))
    with pytest.raises(ValueError, match="n_heads"):
        XLSTMConfig(d_model=30, n_heads=4, slstm_at=None, qk_dim_factor=0.4, v_dim_factor=0.4)
