"""Signature and property tests of ``tnn`` (Toeplitz Neural Network, Qin et al. ICLR 2023).

No pip package ships TNN, so the signature test is an fp64 oracle of the paper's equations: the GTU recomputed from
its weights with an explicit Toeplitz matrix ``T_ij = γ^{i-j} RPE(i-j)`` (the relative position encoder re-run by
hand) instead of the FFT. The decay and the encoder must matter, the two-sided operator must match its explicit
matrix too, and decoding (prefill + steps, the whole-history buffer) must reproduce ``forward``.
"""

from __future__ import annotations

from typing import Any

import pytest
import torch
import torch.nn.functional as F

import edifice
from edifice.testing import mutate_op, signature

torch.testing.assert_close(torch.zeros(1), torch.zeros(1))

B, D = 2, 12


def build(seed: int = 0, **overrides: Any) -> Any:
    torch.manual_seed(seed)
    fields = {"d_model": D, "n_layers": 1, "expand_ratio": 2.0, "rpe_dim": 8, "rpe_layers": 2, "max_len": 64}
    model: Any = edifice.build("tnn", **{**fields, **overrides}).eval()
    gen = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.2 * torch.randn(p.shape, generator=gen, dtype=p.dtype))
    return model


def rpe_oracle(w: dict[str, torch.Tensor], k: torch.Tensor, n_layers: int) -> torch.Tensor:
    """§3.3 by hand: Linear(1, r), [LayerNorm, ReLU, Linear] × n_layers, LayerNorm, ReLU, Linear(r, d1)."""
    h = k[:, None] * w["rpe.pos_proj.weight"].T + w["rpe.pos_proj.bias"]
    names = [f"rpe.layers.{i}" for i in range(n_layers)] + ["rpe.out"]
    for name in names:
        h = F.layer_norm(h, h.shape[-1:], w[f"{name}.0.weight"], w[f"{name}.0.bias"])
        h = torch.relu(h) @ w[f"{name}.2.weight"].T + w[f"{name}.2.bias"]
    return h  # (n, d1)


def gtu_oracle(mixer: Any, x: torch.Tensor) -> torch.Tensor:
    """The GTU with an explicit fp64 Toeplitz matrix per channel (eq. 3-4, §3.4 decay, §3.5 gating)."""
    c = mixer.config
    w = {k: p.detach().double() for k, p in mixer.named_parameters()}
    x = x.double()
    n = x.shape[1]
    u, v = F.silu(x @ w["uv_proj.weight"].T + w["uv_proj.bias"]).chunk(2, dim=-1)
    i = torch.arange(n, dtype=torch.float64)
    rel = i[:, None] - i[None, :]  # i - j
    t = rpe_oracle(w, rel.flatten(), c.rpe_layers).view(n, n, -1)  # RPE(i - j), (n, n, d1)
    if c.use_decay:
        t = t * (c.gamma ** rel.abs())[..., None]
    if c.causal:
        t = t * (rel >= 0)[..., None]
    y = torch.einsum("ijc,bjc->bic", t, v)  # y_i = Σ_j T_ij v_j
    z = u * y
    z = z * torch.rsqrt(z.square().mean(-1, keepdim=True) + c.norm_eps) * w["norm.weight"]
    return z @ w["o_proj.weight"].T + w["o_proj.bias"]


def check_gtu(causal: bool = True, use_decay: bool = True, T: int = 19) -> None:
    model = build(causal=causal, use_decay=use_decay, gamma=0.9).double()
    mixer = model.layers[0].mixer
    x = torch.randn(B, T, D, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    with torch.no_grad():
        # core rms_norm computes its statistics in fp32 even for fp64 inputs: 1e-6, not 1e-12
        torch.testing.assert_close(mixer(x), gtu_oracle(mixer, x), atol=1e-6, rtol=1e-6)


@signature("tnn")
@pytest.mark.parametrize("use_decay", [True, False], ids=["decay", "no-decay"])
def test_tnn_gtu_matches_an_explicit_fp64_toeplitz_matrix(use_decay: bool) -> None:
    check_gtu(use_decay=use_decay)


def test_signature_fails_with_a_circular_convolution() -> None:
    with mutate_op("long_conv"), pytest.raises(AssertionError):
        check_gtu()


def test_two_sided_operator_matches_its_matrix() -> None:
    check_gtu(causal=False)


def test_decay_and_position_encoder_matter() -> None:
    x = torch.randn(B, 24, D, generator=torch.Generator().manual_seed(4))
    mixer = build().layers[0].mixer
    with torch.no_grad():
        base = mixer(x)
        mixer.config.use_decay = False
        assert (mixer(x) - base).abs().max() > 1e-3  # γ^{|i-j|} changes the output
        mixer.config.use_decay = True
        torch.testing.assert_close(mixer(x), base)
        mixer.rpe.out[2].weight.add_(0.5)  # the coefficients come from the encoder
        assert (mixer(x) - base).abs().max() > 1e-3
    t = mixer.coefficients(40)
    assert t.shape == (2 * D, 40)
    # the decay bounds distant coefficients: |t_k| <= γ^k · max|RPE(k)|
    raw = mixer.rpe(torch.arange(40.0)).T
    torch.testing.assert_close(t, raw * 0.99 ** torch.arange(40.0), atol=1e-6, rtol=1e-6)


@pytest.mark.parametrize("T", [1, 63, 130])
def test_forward_equals_prefill_and_steps(T: int) -> None:
    model = build(n_layers=2, max_len=160)
    x = torch.randn(B, T, D, generator=torch.Generator().manual_seed(T))
    with torch.no_grad():
        want = model(x)
        state = model.init_state(B)
        cut = max(T - 6, 1) if T > 1 else 1
        ys = [model.step(x[:, :cut], state)[0]] + [model.step(x[:, t : t + 1], state)[0] for t in range(cut, T)]
    torch.testing.assert_close(torch.cat(ys, 1), want, atol=1e-4, rtol=1e-4)


def test_bad_config_raises() -> None:
    with pytest.raises(ValueError, match="gamma"):
        edifice.build("tnn", gamma=1.5)
    with pytest.raises(ValueError, match="rpe_activation"):
        edifice.build("tnn", rpe_activation="nope")
    with pytest.raises(ValueError, match="causal=False"):
        edifice.build("tnn", causal=False, d_model=8).init_state(1)
