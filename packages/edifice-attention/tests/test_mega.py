"""Tests of ``mega`` (Ma et al. 2023, Mega: Moving Average Equipped Gated Attention).

Signature: a Mega sublayer equals, in fp64, the paper's equations written out here -- the damped EMA of eq. (2) run
as its recurrence one step at a time (the model runs eq. (4)'s convolution form), then eq. (5)-(14): shared ``Z``,
``Q``/``K`` by per-dimension scale and offset, reset and update gates, softmax or Laplace attention with the learned
relative bias, within chunks (Mega-chunk). The ``damped_ema`` mutation (no damping: a running sum) and the ``sdpa``
mutation (unmasked) break it, and so would plain attention without the gates. Decoding: ``step`` reproduces
``forward`` at every prefix, also for Laplace attention, chunks and a left-padded prompt.
"""

from __future__ import annotations

import math
from typing import Any

import pytest
import torch
import torch.nn.functional as F

import edifice
from edifice.testing import mutate_op, signature
from edifice_attention.mega import Mega, MovingAverageGatedAttention

TINY = {"d_model": 16, "n_layers": 2, "ema_dim": 3, "z_dim": 8, "v_dim": 12, "d_ff": 24, "vocab_size": 30}


def build(**overrides: object) -> Mega:
    torch.manual_seed(0)
    model = edifice.build("mega", **{**TINY, **overrides}).eval()
    assert isinstance(model, Mega)
    return model


def perturb(module: torch.nn.Module, seed: int = 1) -> None:
    """Move every parameter off its init (κ, biases and the relative bias start at or near 0)."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.add_(0.3 * torch.randn(p.shape, generator=gen, dtype=p.dtype))


def layer_oracle(m: MovingAverageGatedAttention, x: torch.Tensor, window: int | None, laplace: bool) -> torch.Tensor:
    """Eq. (2)-(14) of the paper for ``x [B, T, d]`` (pre-norm), one time step of the EMA at a time, fp64."""
    B, T, d = x.shape
    ln = m.norm
    X = F.layer_norm(x, (d,), ln.weight, ln.bias, ln.eps)  # the sublayer's (pre-)norm
    e = m.ema
    N = e.ndim
    alpha, delta, beta, eta = torch.sigmoid(e.alpha), torch.sigmoid(e.delta), e.beta, e.eta / math.sqrt(N)
    h = torch.zeros(B, d, N, dtype=x.dtype)
    ema = []
    for t in range(T):  # eq. (2): u = β x, h_t = α ⊙ u + (1 - α ⊙ δ) ⊙ h_{t-1}; eq. (3): y = η^T h
        h = alpha * beta * X[:, t, :, None] + (1 - alpha * delta) * h
        ema.append((eta * h).sum(-1))
    Xp = F.silu(torch.stack(ema, 1) + e.omega * X)  # X' (with the authors' ω skip and SiLU)
    z_dim, v_dim = m.z_dim, m.v_dim
    W, b = m.mx_proj.weight, m.mx_proj.bias
    Wphi, Wz, Wg, Wh = W.split([d, z_dim, v_dim, d])
    bphi, bz, bg, bh = b.split([d, z_dim, v_dim, d])
    Z = F.silu(Xp @ Wz.T + bz)  # eq. (6)
    Q = m.qk_scale[0] * Z + m.qk_offset[0]  # eq. (7)
    K = m.qk_scale[1] * Z + m.qk_offset[1]  # eq. (8)
    V = F.silu(X @ m.v_proj.weight.T + m.v_proj.bias)  # eq. (9)
    Out = torch.zeros(B, T, v_dim, dtype=x.dtype)
    M = m.rel_bias.shape[0]
    for i in range(T):
        start = 0 if window is None else (i // window) * window
        keys = range(start, i + 1)
        rel = torch.stack([m.rel_bias[min(i - j, M - 1)] for j in keys])
        s = torch.stack([(Q[:, i] * K[:, j]).sum(-1) for j in keys], -1)  # (B, n)
        if laplace:  # §3.3: τ(X) = n, f = Laplace
            s = s / len(keys) + rel
            a = 0.5 * (1 + torch.erf((s - math.sqrt(0.5)) / (math.sqrt(1 / (4 * math.pi)) * math.sqrt(2))))
        else:  # τ(X) = sqrt(z), f = softmax
            a = torch.softmax(s / math.sqrt(z_dim) + rel, -1)
        Out[:, i] = (a[..., None] * V[:, start : i + 1]).sum(1)  # eq. (10)
    gamma = F.silu(Xp @ Wg.T + bg)  # reset gate, eq. (11)
    phi = torch.sigmoid(Xp @ Wphi.T + bphi)  # update gate, eq. (12)
    H = F.silu(Xp @ Wh.T + bh + (gamma * Out) @ m.h_proj.weight.T + m.h_proj.bias)  # eq. (13)
    return phi * H + (1 - phi) * x  # eq. (14)


@signature("mega")
@pytest.mark.parametrize(("window", "laplace"), [(3, False), (None, True)])
def test_layer_matches_the_papers_equations_fp64(window: int | None, laplace: bool) -> None:
    model = build(window_size=window, laplace_attention=laplace, seq_len=5).double()
    layer = model.layers[1].mixer
    perturb(layer)
    x = torch.randn(2, 8, 16, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    with torch.no_grad():
        got = layer(x)
        want = layer_oracle(layer, x, window, laplace)
    # Softmax scores run in fp32 inside ops.sdpa; everything else is fp64.
    torch.testing.assert_close(got, want, atol=1e-6, rtol=1e-6)


@pytest.mark.parametrize("op", ["damped_ema", "sdpa"])
def test_signature_fails_under_the_mutations(op: str) -> None:
    with mutate_op(op), pytest.raises(AssertionError):
        test_layer_matches_the_papers_equations_fp64(3, False)


def test_without_the_gates_the_oracle_disagrees() -> None:
    # The oracle is sharp: the same layer with its update gate forced open (Y = Ĥ) is far from it.
    model = build(window_size=3).double()
    layer = model.layers[0].mixer
    perturb(layer)
    x = torch.randn(1, 6, 16, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    with torch.no_grad():
        want = layer_oracle(layer, x, 3, False)
        layer.mx_proj.bias[:16] += 50.0  # φ -> 1: no gated residual
        assert (layer(x) - want).abs().max() > 1e-2


@pytest.mark.parametrize(
    "overrides",
    [{"window_size": 3}, {"laplace_attention": True, "window_size": 4}, {"prenorm": False, "norm": "rmsnorm"}],
)
def test_prefill_and_steps_reproduce_forward(overrides: dict[str, object], check_padded_decoding: Any) -> None:
    model = build(**overrides)
    perturb(model, seed=4)
    check_padded_decoding(model, T=11, pad=3, prefill=5, seed=5)


def test_chunks_do_not_attend_across_boundaries() -> None:
    # With the EMA's input weight at zero the EMA is silent, so only attention could carry information: inputs in
    # chunk 0 then cannot move the output of chunk 1 in Mega-chunk.
    model = build(window_size=4, d_ff=0, n_layers=1)
    layer = model.layers[0].mixer
    with torch.no_grad():
        layer.ema.alpha.fill_(-1e4)  # sigmoid -> 0
        layer.ema.omega.zero_()
        x = torch.randn(1, 8, 16, generator=torch.Generator().manual_seed(6))
        changed = x.clone()
        changed[:, :4] += 1.0
        base, moved = layer(x), layer(changed)
    torch.testing.assert_close(moved[:, 4:], base[:, 4:], atol=1e-6, rtol=1e-6)
    assert (moved[:, :4] - base[:, :4]).abs().max() > 1e-3


@pytest.mark.parametrize(
    ("overrides", "field"),
    [({"window_size": 0}, "window_size"), ({"norm": "scalenorm"}, "norm"), ({"ema_dim": 0}, "ema_dim")],
)
def test_bad_config_names_the_field(overrides: dict[str, object], field: str) -> None:
    with pytest.raises(edifice.ConfigError, match=field):
        edifice.config("mega", **overrides)


def test_aliases_of_the_original_options() -> None:
    config = edifice.config("mega", hidden_size=32, num_layers=1, chunk_size=8)
    assert (config.d_model, config.n_layers, config.window_size) == (32, 1, 8)  # type: ignore[attr-defined]
