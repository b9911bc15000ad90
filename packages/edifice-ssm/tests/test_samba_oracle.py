"""Signature test of samba: the paper's layer stack written as naive fp64 loops, the window, and ring-buffer decoding.

No pip package implements Samba, so the oracle is §2 written out by hand: per-position loops for the causal
convolution and the selective scan (Mamba eqs. 2a-2b, 4), an explicit softmax over the last ``window`` keys with
hand-written RoPE, SwiGLU and RMSNorm. On top of that the signature test checks the property only sliding-window
attention has -- with the Mamba layers silenced, a token influences exactly the next ``window`` outputs -- and that
decoding far past the window with the constant-size ring buffer reproduces the full forward.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

import edifice
from edifice.blocks.kv_cache import SlidingWindowKVCache
from edifice.testing import redraw_parameters, signature
from edifice.testing.tol import SCAN, Tolerance, assert_close
from edifice_ssm.mamba import MambaMixer
from edifice_ssm.samba import Samba, SlidingWindowAttention

TINY = {"d_model": 16, "n_layers": 2, "d_in": 5, "d_state": 4, "d_conv": 3, "n_heads": 4, "n_kv_heads": 2}
WINDOW = 3
ORACLE = Tolerance(atol=2e-5, rtol=2e-5)  # fp32 model (fp32 scan state and softmax) against fp64 loops


def _build(seed: int = 0, **overrides: object) -> Samba:
    torch.manual_seed(seed)
    model = edifice.build("samba", **{**TINY, "window": WINDOW, "d_ff": 24, **overrides})
    assert isinstance(model, Samba)
    redraw_parameters(model, seed=seed)  # every parameter moved: gains, skips and biases all observable
    return model.eval()


def _x(batch: int, length: int, seed: int = 1) -> Tensor:
    return torch.randn(batch, length, TINY["d_in"], generator=torch.Generator().manual_seed(seed))


def _rms(x: Tensor, weight: Tensor, eps: float) -> Tensor:
    return x / torch.sqrt(x.pow(2).mean(-1, keepdim=True) + eps) * weight


def _mamba(mixer: MambaMixer, u: Tensor) -> Tensor:
    """Mamba's block for one sequence ``u [T, d]`` by per-position loops (Gu & Dao 2023, Algorithm 2)."""
    p = {n: t.detach().double() for n, t in mixer.named_parameters()}
    T, E, N, R = u.shape[0], mixer.d_inner, mixer.d_state, mixer.dt_rank
    xz = u @ p["in_proj.weight"].T
    x, z = xz[:, :E], xz[:, E:]
    K = p["conv1d.weight"].shape[-1]
    xc = torch.zeros(T, E, dtype=torch.float64)
    for t in range(T):  # causal depthwise convolution, zero history
        acc = p["conv1d.bias"].clone()
        for k in range(K):
            if t - (K - 1) + k >= 0:
                acc = acc + p["conv1d.weight"][:, 0, k] * x[t - (K - 1) + k]
        xc[t] = F.silu(acc)
    A = -torch.exp(p["A_log"])  # (E, N)
    h = torch.zeros(E, N, dtype=torch.float64)
    ys = []
    for t in range(T):
        dbc = p["x_proj.weight"] @ xc[t]
        dt, B, C = dbc[:R], dbc[R : R + N], dbc[R + N :]
        delta = F.softplus(p["dt_proj.weight"] @ dt + p["dt_proj.bias"])  # (E,)
        h = torch.exp(delta[:, None] * A) * h + (delta * xc[t])[:, None] * B[None, :]  # eq. 2a with ZOH Ā (eq. 4)
        y = h @ C + p["D"] * xc[t]  # eq. 2b
        ys.append(y * F.silu(z[t]))
    return torch.stack(ys) @ p["out_proj.weight"].T


def _rope(x: Tensor, base: float) -> Tensor:
    """Rotate ``x [T, H, D]`` at positions 0..T-1 in the rotate-half layout, θ_i = base^(-2i/D)."""
    T, _, D = x.shape
    theta = base ** (-torch.arange(0, D, 2, dtype=torch.float64) / D)  # (D/2,)
    angle = torch.arange(T, dtype=torch.float64)[:, None, None] * theta  # (T, 1, D/2)
    x1, x2 = x[..., : D // 2], x[..., D // 2 :]
    return torch.cat([x1 * angle.cos() - x2 * angle.sin(), x2 * angle.cos() + x1 * angle.sin()], dim=-1)


def _swa(attn: SlidingWindowAttention, u: Tensor, base: float) -> Tensor:
    """Sliding-window softmax attention for one sequence ``u [T, d]``, one query at a time."""
    p = {n: t.detach().double() for n, t in attn.named_parameters()}
    T, H, Hk, D, W = u.shape[0], attn.n_heads, attn.n_kv_heads, attn.head_dim, attn.window
    assert W is not None
    q = _rope((u @ p["q_proj.weight"].T).view(T, H, D), base)
    k = _rope((u @ p["k_proj.weight"].T).view(T, Hk, D), base)
    v = (u @ p["v_proj.weight"].T).view(T, Hk, D)
    out = torch.zeros(T, H, D, dtype=torch.float64)
    for t in range(T):
        keys = range(max(0, t - W + 1), t + 1)  # the query's own position and the W - 1 before it
        for head in range(H):
            g = head // (H // Hk)
            scores = torch.stack([q[t, head] @ k[s, g] for s in keys]) / math.sqrt(D)
            weights = torch.softmax(scores, dim=0)
            out[t, head] = sum(w * v[s, g] for w, s in zip(weights, keys, strict=True))
    return out.reshape(T, H * D) @ p["o_proj.weight"].T


def _oracle(model: Samba, x: Tensor) -> Tensor:
    """Samba §2 for a batch ``x [B, T, d_in]``: pre-norm Mixer and SwiGLU residuals, final RMSNorm, in fp64."""
    c = model.config
    outs = []
    for sample in x.double():
        proj = model.input_proj
        h = sample @ proj.weight.double().T + proj.bias.double()
        for layer in model.layers:
            u = _rms(h, layer.mixer_norm.weight.double(), c.norm_eps)
            mixer = layer.mixer
            h = h + (_swa(mixer, u, c.rope_theta) if isinstance(mixer, SlidingWindowAttention) else _mamba(mixer, u))
            u = _rms(h, layer.ffn_norm.weight.double(), c.norm_eps)
            f = layer.ffn
            gate, up = u @ f.gate_proj.weight.double().T, u @ f.up_proj.weight.double().T
            h = h + (F.silu(gate) * up) @ f.down_proj.weight.double().T
        outs.append(_rms(h, model.norm.weight.double(), c.norm_eps))
    return torch.stack(outs)


@signature("samba")
def test_samba_matches_the_paper_and_its_window_bounds_the_receptive_field() -> None:
    model = _build(seed=2, n_layers=4)
    x = _x(2, 10, seed=3)
    with torch.no_grad():
        # 1. The whole stack against the naive fp64 oracle.
        got = model(x=x)
        assert_close(got, _oracle(model, x).float(), ORACLE, name="samba vs the naive oracle")

        # 2. With the Mamba layers silenced (out_proj = 0), one SWA layer and MLPs: a token at s moves exactly the
        #    outputs at s .. s + window - 1.
        ablated = _build(seed=4)
        ablated.layers[0].mixer.out_proj.weight.zero_()
        base = ablated(x=x)
        s = 2
        moved = x.clone()
        moved[:, s] += 3.0
        delta = (ablated(x=moved) - base).abs().amax(dim=(0, 2))  # (T,)
        assert delta[:s].max() == 0 and delta[s + WINDOW :].max() == 0, f"outside the window: {delta.tolist()}"
        assert bool((delta[s : s + WINDOW] > 1e-4).all()), f"inside the window: {delta.tolist()}"

        # 3. Prefill + one-token steps + a chunk longer than the window, through the ring buffer: equals forward
        #    at every position, three windows past the start, with a state that never changes size.
        state = model.init_state(2)
        ring = state.layers[1]
        assert isinstance(ring, SlidingWindowKVCache) and ring.keys.shape[2] == WINDOW + 1
        shapes = [tuple(s.keys.shape) for s in state.layers if isinstance(s, SlidingWindowKVCache)]
        pieces = []
        for start, stop in ((0, 2), (2, 3), (3, 4), (4, 8), (8, 9), (9, 10)):
            y, state = model.step(x[:, start:stop], state)
            pieces.append(y)
        assert [tuple(s.keys.shape) for s in state.layers if isinstance(s, SlidingWindowKVCache)] == shapes
        assert_close(torch.cat(pieces, 1), got, SCAN, name="samba: ring-buffer decoding vs forward")
