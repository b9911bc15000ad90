"""Signature tests of ``based`` against flash-linear-attention's ``BasedLinearAttention``.

fla's layer has a pure-PyTorch path, ``forward_reference`` (its Taylor map ``fla.modules.feature_map.TaylorFeatureMap``
and the normalised cumulative sums of eq. 2 written out); our Based mixer carries the same parameter names, so the
layer's weights load as they are. The mixer must match on a whole sequence (the chunked form of
``ops.linear_attention``) and when stepped. The hybrid's other layers (sliding-window attention, gated convolution)
are checked by stepping the whole model and by the window's reach.
"""

from __future__ import annotations

import importlib.util
import pathlib
import warnings
from typing import Any

import pytest
import torch

import edifice
from edifice.ops.linear_attention import linear_attention_parallel, linear_attention_recurrent
from edifice.testing import mutate_op, signature

with warnings.catch_warnings():  # fla warns that it runs on CPU; forward_reference is plain PyTorch
    warnings.simplefilter("ignore")
    from fla.layers import BasedLinearAttention as FlaBased

_spec = importlib.util.spec_from_file_location(
    "_flash", pathlib.Path(__file__).with_name("test_flash_linear_attention.py")
)
assert _spec is not None and _spec.loader is not None
flash_tests = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(flash_tests)

TOL = 2e-5
B, T, D, H, F_DIM = 2, 11, 16, 2, 4
TINY = {"d_model": D, "n_heads": H, "feature_dim": F_DIM, "chunk_size": 4}


def build_pair(seed: int = 0) -> tuple[Any, Any]:
    """fla's layer with perturbed weights, and our Based mixer with the same state dict."""
    torch.manual_seed(seed)
    layer = FlaBased(D, feature_dim=F_DIM, num_heads=H, num_key_value_heads=H)
    flash_tests.perturb(layer, seed + 1)
    model: Any = edifice.build("based", n_layers=1, layer_pattern=("based",), **TINY)
    mixer = model.layers[0].mixer
    mixer.load_state_dict(layer.state_dict(), strict=True)
    return layer.eval(), mixer.eval()


def check_mixer() -> None:
    layer, mixer = build_pair()
    x = torch.randn(B, T, D, generator=torch.Generator().manual_seed(3))
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # fla's Taylor map is wrapped in a checkpoint that warns outside training
        want = layer.forward_reference(x)
        torch.testing.assert_close(mixer(x), want, atol=TOL, rtol=TOL)
        state = mixer.init_state(B)
        pieces = [mixer(x[:, :4], state=state)] + [mixer(x[:, t : t + 1], state=state) for t in range(4, T)]
    torch.testing.assert_close(torch.cat(pieces, 1), want, atol=TOL, rtol=TOL)


def check_block() -> None:
    """A one-layer model around fla's layer: pre-norm RMSNorm, the layer, SwiGLU, final RMSNorm (written out)."""
    layer, _ = build_pair()
    torch.manual_seed(0)
    model: Any = edifice.build("based", n_layers=1, layer_pattern=("based",), d_ff=24, **TINY).eval()
    flash_tests.perturb(model, 6)
    model.layers[0].mixer.load_state_dict(layer.state_dict())
    sd = {name: p.detach() for name, p in model.named_parameters()}
    eps = model.config.norm_eps
    x = torch.randn(B, T, D, generator=torch.Generator().manual_seed(7))
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        h = x + layer.forward_reference(flash_tests.rms(x, sd["layers.0.mixer_norm.weight"], eps))
        m = flash_tests.rms(h, sd["layers.0.ffn_norm.weight"], eps)
        gate, up, down = (sd[f"layers.0.ffn.{n}_proj.weight"] for n in ("gate", "up", "down"))
        h = h + (torch.nn.functional.silu(m @ gate.T) * (m @ up.T)) @ down.T
        want = flash_tests.rms(h, sd["norm.weight"], eps)
        torch.testing.assert_close(model(x), want, atol=TOL, rtol=TOL)


@signature("based")
def test_based_matches_fla_based_linear_attention() -> None:
    check_mixer()
    check_block()  # the residual block around it
    check_window_reach()  # the hybrid's sliding-window layer


def check_window_reach() -> None:
    """One sliding-window layer of window 3: output t sees inputs t-2..t only."""
    torch.manual_seed(0)
    model: Any = edifice.build("based", n_layers=1, layer_pattern=("swa",), window_size=3, d_in=4, **TINY).eval()
    x = torch.randn(1, 9, 4, generator=torch.Generator().manual_seed(2))
    changed = x.clone()
    changed[:, 5] += 1.0
    with torch.no_grad():
        a, b = model(x), model(changed)
    assert torch.equal(a[:, :5], b[:, :5]) and torch.equal(a[:, 8], b[:, 8])  # causal; key 5 is out of 6..8
    assert not torch.allclose(a[:, 7], b[:, 7])  # keys 5..7


def test_signature_fails_when_the_diagonal_is_lost() -> None:
    with mutate_op("linear_attention"), pytest.raises(AssertionError):
        check_mixer()


def test_taylor_kernel_is_the_second_order_expansion_of_exp() -> None:
    """``φ(q)ᵀφ(k) = 1 + s + s²/2`` with ``s = qᵀk/√d`` (§3.2), in 1 + d + d(d+1)/2 features."""
    from edifice_attention.based import TaylorFeatureMap

    gen = torch.Generator().manual_seed(0)
    q, k = (
        torch.randn(2, 5, 16, generator=gen, dtype=torch.float64),
        torch.randn(2, 5, 16, generator=gen, dtype=torch.float64),
    )
    phi = TaylorFeatureMap(16)
    assert phi(q).shape[-1] == phi.width == 1 + 16 + 136
    s = (q * k).sum(-1) / 4.0
    torch.testing.assert_close((phi(q) * phi(k)).sum(-1), 1 + s + s**2 / 2, atol=1e-12, rtol=1e-12)


@pytest.mark.parametrize("length", [1, 63, 130])
def test_chunked_parallel_and_recurrent_forms_agree(length: int) -> None:
    """The Based mixer's three op forms from a non-zero state (chunks of 8 and 5: odd T)."""
    torch.manual_seed(0)
    model: Any = edifice.build("based", n_layers=1, layer_pattern=("based",), **TINY)
    forms = {"parallel": linear_attention_parallel, "recurrent": linear_attention_recurrent}
    flash_tests.forms_agree(model.layers[0].mixer, length, "linear_attention", forms, 1e-9, 1e-9)


def test_hybrid_steps_like_forward_and_pads_exactly() -> None:
    """All three mixers (the authors' period: conv, based, swa, conv, conv), past the window: steps = forward."""
    torch.manual_seed(0)
    model: Any = edifice.build("based", n_layers=5, window_size=4, d_in=6, **TINY).eval()
    kinds = [type(layer.mixer).__name__ for layer in model.layers]
    assert model.layers[2].mixer.ring_cache  # the sliding-window layer decodes from a constant-size ring
    assert kinds == [
        "GatedShortConv",
        "BasedLinearAttention",
        "Attention",
        "GatedShortConv",
        "GatedShortConv",
    ]
    x = torch.randn(B, 13, 6, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        want = model(x)
        state = model.init_state(B)
        pieces = [model.step(x[:, :5], state)[0]] + [model.step(x[:, t : t + 1], state)[0] for t in range(5, 13)]
        torch.testing.assert_close(torch.cat(pieces, 1), want, atol=1e-4, rtol=1e-4)
        padded = torch.cat([torch.randn(B, 3, 6), x], 1)
        mask = torch.tensor([[False] * 3 + [True] * 13] * B)
        torch.testing.assert_close(model(padded, attention_mask=mask)[:, 3:], want, atol=TOL, rtol=TOL)


def test_config_is_validated() -> None:
    with pytest.raises(edifice.ConfigError, match="taylor_order"):
        edifice.config("based", taylor_order=1)
    with pytest.raises(edifice.ConfigError, match="layer_pattern"):
        edifice.config("based", layer_pattern=("based", "mamba"))
    with pytest.raises(edifice.ConfigError, match="n_heads"):
        edifice.config("based", d_model=30, n_heads=4)
    model: Any = edifice.build("based", n_layers=1, layer_pattern=("based",), **TINY)
    assert model.layers[0].mixer.init_state(1).recurrent.shape == (
        1,
        H,
        1 + F_DIM + F_DIM * (F_DIM + 1) // 2,
        D // H + 1,
    )
