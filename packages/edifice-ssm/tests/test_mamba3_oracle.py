"""Signature tests of ``mamba3``: the chunked mixer and model against the paper's recurrence, stepped in fp64.

The oracle is written from docs/design/mamba3.md with *complex* arithmetic, one position at a time: the rotated pairs
of state dimensions carry a complex state ``h`` with transition ``exp(Δ_t (A_t - i θ_t))``, the trapezoid adds
``(1 - λ_t) Δ_t exp(Δ_t (A_t - i θ_t)) k_{t-1} x_{t-1}`` and ``λ_t Δ_t k_t x_t``, and ``y = Re(q̄ᵀ h)``. It uses no
rotation of B/C (the "RoPE trick"), no SSD and no ``edifice.ops``, so it proves the trick, the trapezoidal rule, the
MIMO update and the chunked scan at once, and ``--edifice-mutate`` of ``mimo_ssd``, ``linear_recurrence`` or
``rms_norm`` breaks it.
"""

from __future__ import annotations

import math
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor

import edifice
from edifice.testing import signature
from edifice_ssm.mamba3 import Mamba3, Mamba3Mixer

TOL = {"atol": 1e-4, "rtol": 1e-4}  # fp32 chunked scan against the fp64 loop

torch.testing.assert_close(torch.zeros(1), torch.zeros(1))  # pay assert_close's one-off import at collection


def randomised(mixer: Mamba3Mixer, seed: int) -> Mamba3Mixer:
    """Make every parameter observable: larger steps (real decay and rotation), random gains, biases, D, MIMO."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in mixer.named_parameters():
            if name == "dt_bias":
                p.copy_(torch.rand(p.shape, generator=gen) * 2 - 1)  # Δ = softplus(.) ~ 0.3 .. 1.3
            elif name != "in_proj.weight" and name != "out_proj.weight":
                p.copy_(torch.rand(p.shape, generator=gen) + 0.5)
    return mixer.eval()


def rms(v: Tensor, weight: Tensor, eps: float) -> Tensor:
    return v / torch.sqrt(v.square().mean(-1, keepdim=True) + eps) * weight.double()


def paper_mixer(mixer: Mamba3Mixer, u: Tensor) -> Tensor:
    """The Mamba-3 mixer from its equations, step by step in fp64 complex arithmetic: ``[B, T, d] -> [B, T, d]``."""
    batch, T, _ = u.shape
    H, P, N, R, G, S = mixer.n_heads, mixer.head_dim, mixer.d_state, mixer.mimo_rank, mixer.n_groups, mixer.n_angles
    proj = u.double() @ mixer.in_proj.weight.double().T
    z, x, Bp, Cp, dd_dt, dd_a, trap, theta = proj.split(mixer.split_sizes, dim=-1)
    dt = F.softplus(dd_dt + mixer.dt_bias.double())  # (B, T, H)
    A = torch.minimum(-F.softplus(dd_a), torch.tensor(-mixer.a_floor, dtype=torch.float64))
    lam = torch.sigmoid(trap) if mixer.trapezoidal else torch.ones_like(trap)
    theta = math.pi * torch.tanh(theta)  # (B, T, S)
    eps = mixer.B_norm.eps  # type: ignore[union-attr]
    group = torch.arange(H) // (H // G)
    k = rms(Bp.reshape(batch, T, R, G, N), mixer.B_norm.weight, eps)[:, :, :, group]  # (B, T, R, H, N)
    q = rms(Cp.reshape(batch, T, R, G, N), mixer.C_norm.weight, eps)[:, :, :, group]
    k, q = k + mixer.B_bias.double().transpose(0, 1), q + mixer.C_bias.double().transpose(0, 1)  # per-head biases
    x = x.reshape(batch, T, H, P)
    z = z.reshape(batch, T, H, P)
    ones = torch.ones(H, R, P, dtype=torch.float64)
    wx, wz, wo = (getattr(mixer, f"mimo_{n}").double() if R > 1 else ones for n in "xzo")  # (H, R, P)
    D = mixer.D.double()

    def complex_pairs(v: Tensor) -> tuple[Tensor, Tensor]:
        """``[..., N]`` -> the rotated pairs as complex numbers ``[..., S]`` and the real rest ``[..., N - 2S]``."""
        return torch.complex(v[..., 0 : 2 * S : 2], v[..., 1 : 2 * S : 2]), v[..., 2 * S :]

    hc = torch.zeros(batch, H, P, S, dtype=torch.complex128)  # complex part of the state
    hr = torch.zeros(batch, H, P, N - 2 * S, dtype=torch.float64)  # real part
    prev_x = torch.zeros(batch, R, H, P, dtype=torch.float64)
    prev_kc, prev_kr = complex_pairs(torch.zeros(batch, R, H, N, dtype=torch.float64))
    outs = []
    for t in range(T):
        xt = x[:, t, None] * wx.transpose(0, 1)  # (B, R, H, P): x_{t,j} = x_t ⊙ w^x_j
        kc, kr = complex_pairs(k[:, t])  # (B, R, H, S), (B, R, H, N - 2S)
        qc, qr = complex_pairs(q[:, t])
        d, a, lm = dt[:, t], A[:, t], lam[:, t]  # (B, H)
        decay_r = torch.exp(d * a)  # α_t
        # exp(Δ_t (A_t - i θ_t)) per head and rotated pair: the complex eigenvalue of the transition
        decay_c = torch.exp((d * a).to(torch.complex128)[..., None] - 1j * d[..., None] * theta[:, t, None])
        w_prev, w_now = (1 - lm) * d, lm * d  # β_t / α_t and γ_t
        hc = decay_c[:, :, None] * hc
        hr = decay_r[:, :, None, None] * hr
        hc = hc + torch.einsum("bh,bhm,brhp,brhm->bhpm", w_prev.to(hc.dtype), decay_c, prev_x.to(hc.dtype), prev_kc)
        hc = hc + torch.einsum("bh,brhp,brhm->bhpm", w_now.to(hc.dtype), xt.to(hc.dtype), kc)
        hr = hr + torch.einsum("bh,brhp,brhn->bhpn", w_prev * decay_r, prev_x, prev_kr)
        hr = hr + torch.einsum("bh,brhp,brhn->bhpn", w_now, xt, kr)
        y = torch.einsum("brhm,bhpm->brhp", qc.conj(), hc).real + torch.einsum("brhn,bhpn->brhp", qr, hr)
        y = (y + D[:, None] * xt) * F.silu(z[:, t, None] * wz.transpose(0, 1))
        outs.append((y * wo.transpose(0, 1)).sum(1).reshape(batch, H * P))
        if mixer.trapezoidal:
            prev_x, prev_kc, prev_kr = xt, kc, kr
    return torch.stack(outs, 1) @ mixer.out_proj.weight.double().T


def paper_model(model: Mamba3, u: Tensor) -> Tensor:
    """The residual stack around :func:`paper_mixer`, with every norm and MLP written out (fp64)."""
    eps = model.config.norm_eps
    h = u.double() @ model.input_proj.weight.double().T + model.input_proj.bias.double()  # type: ignore[union-attr]
    for block in model.layers:
        h = h + paper_mixer(block.mixer, rms(h, block.mixer_norm.weight, eps))
        if block.ffn is not None:
            g = rms(h, block.ffn_norm.weight, eps)
            ffn = block.ffn
            hidden = F.silu(g @ ffn.gate_proj.weight.double().T) * (g @ ffn.up_proj.weight.double().T)
            h = h + hidden @ ffn.down_proj.weight.double().T
    return rms(h, model.norm.weight, eps)  # type: ignore[arg-type]


def mixer(seed: int = 0, **overrides: Any) -> Mamba3Mixer:
    torch.manual_seed(seed)
    kwargs = {"d_state": 8, "expand": 2, "head_dim": 4, "n_groups": 2, "mimo_rank": 2, "chunk_size": 3, **overrides}
    return randomised(Mamba3Mixer(8, **kwargs), seed)


def inputs(batch: int, T: int, width: int, seed: int) -> Tensor:
    return torch.randn(batch, T, width, generator=torch.Generator().manual_seed(seed))


VARIANTS = {
    "mimo-trapezoid-rotary": {},
    "siso": {"mimo_rank": 1},
    "full-rotation": {"rope_fraction": 1.0, "mimo_rank": 3, "n_groups": 4},
    "euler-real": {"trapezoidal": False, "complex_state": False},
}


def check_mixer_against_paper(overrides: dict[str, Any], seed: int) -> None:
    m = mixer(seed, **overrides)
    u = inputs(2, 11, 8, seed + 100)  # 11 positions: four chunks of 3, the last one partial
    want = paper_mixer(m, u)
    with torch.no_grad():
        torch.testing.assert_close(m(u).double(), want, **TOL)
        # Prefill 4, one step, then 6: the state (SSM, last key/input, angle) carries everything across calls.
        state = m.init_state(2)
        stepped = torch.cat([m(u[:, :4], state=state), m(u[:, 4:5], state=state), m(u[:, 5:], state=state)], 1)
    torch.testing.assert_close(stepped.double(), want, **TOL)


@signature("mamba3")
@pytest.mark.parametrize("name", list(VARIANTS))
def test_mixer_matches_the_complex_trapezoidal_mimo_recurrence(name: str) -> None:
    check_mixer_against_paper(VARIANTS[name], seed=list(VARIANTS).index(name))


@signature("mamba3")
def test_model_matches_the_paper_stack_forward_and_decoding() -> None:
    torch.manual_seed(3)
    model = edifice.build(
        "mamba3", d_model=8, n_layers=2, d_in=5, d_state=8, head_dim=4, n_groups=2, mimo_rank=2, chunk_size=4, d_ff=12
    ).eval()
    for i, block in enumerate(model.layers):
        randomised(block.mixer, 10 + i)
    u = inputs(2, 9, 5, 7)
    want = paper_model(model, u)
    with torch.no_grad():
        torch.testing.assert_close(model(x=u).double(), want, **TOL)
        state = model.init_state(2)
        outs = [model.step(u[:, :5], state)[0]] + [model.step(u[:, t : t + 1], state)[0] for t in range(5, 9)]
    torch.testing.assert_close(torch.cat(outs, 1).double(), want, **TOL)  # type: ignore[arg-type]


def test_gradients_match_the_paper_recurrence() -> None:
    m = mixer(4).train()
    u = inputs(2, 8, 8, 5).requires_grad_()
    cotangent = inputs(2, 8, 8, 6)
    params = [m.in_proj.weight, m.dt_bias, m.B_bias, m.mimo_x, m.D, m.out_proj.weight]
    got = torch.autograd.grad((m(u) * cotangent).sum(), [u, *params])
    want = torch.autograd.grad((paper_mixer(m, u) * cotangent.double()).sum(), [u, *params])
    for a, b in zip(got, want, strict=True):
        torch.testing.assert_close(a.double(), b.double(), atol=1e-4, rtol=1e-4)
