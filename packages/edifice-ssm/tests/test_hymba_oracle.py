"""Signature tests of ``hymba``: the hybrid-head module is the mean of the normalised attention and SSM heads.

There is no pip implementation of Hymba (transformers has none), so the mechanism is proved against the paper's
equations written out in fp64 -- attention with its causal / sliding-window / meta-token mask and softmax, the Mamba
heads as a direct causal convolution and the step-by-step selective recurrence, the two RMSNorms, the mean and
``W_out`` -- and by the properties only this module has: with ``β_2 = 0`` it is exactly the attention heads' output,
with ``β_1 = 0`` exactly the SSM heads', and the meta tokens are attended by every position even inside a sliding
window. The oracle uses no ``edifice.ops``, so a mutated ``sdpa``, ``selective_scan``, ``causal_conv1d`` (through the
stepped run) or ``rms_norm`` fails these tests.
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
from edifice_ssm.hymba import Hymba, HymbaMixer

TOL = {"atol": 1e-4, "rtol": 1e-4}

torch.testing.assert_close(torch.zeros(1), torch.zeros(1))  # pay assert_close's one-off import at collection


def rms(v: Tensor, weight: Tensor, eps: float) -> Tensor:
    return v / torch.sqrt(v.square().mean(-1, keepdim=True) + eps) * weight.double()


def rope(v: Tensor, base: float) -> Tensor:
    """RoPE on ``v [B, H, T, D]`` at positions ``0..T-1`` (rotate-half layout: feature i pairs with i + D/2)."""
    D, T = v.shape[-1], v.shape[-2]
    inv_freq = 1.0 / base ** (torch.arange(0, D, 2, dtype=torch.float64) / D)
    angles = torch.arange(T, dtype=torch.float64)[:, None] * inv_freq  # (T, D/2)
    cos, sin = torch.cat([angles.cos()] * 2, -1), torch.cat([angles.sin()] * 2, -1)
    v1, v2 = v[..., : D // 2], v[..., D // 2 :]
    return v * cos + torch.cat([-v2, v1], -1) * sin


def attention_heads(mixer: HymbaMixer, x: Tensor) -> Tensor:
    """``M_att x``: softmax(q k^T / sqrt(d_k) + mask) v per head, causal, window + meta tokens, GQA; ``[B, T, E]``."""
    att = mixer.attn
    B, T, _ = x.shape
    H, Hk, D, Dv = att.n_heads, att.n_kv_heads, att.head_dim, att.v_head_dim
    q = (x @ att.q_proj.weight.double().T).view(B, T, H, D).transpose(1, 2)
    k = (x @ att.k_proj.weight.double().T).view(B, T, Hk, D).transpose(1, 2)
    v = (x @ att.v_proj.weight.double().T).view(B, T, Hk, Dv).transpose(1, 2)
    q, k = rope(q, att.rope.base), rope(k, att.rope.base)
    k, v = k.repeat_interleave(H // Hk, dim=1), v.repeat_interleave(H // Hk, dim=1)
    t, s = torch.arange(T)[:, None], torch.arange(T)[None, :]
    allowed = s <= t
    if att.window is not None:
        allowed &= (t - s < att.window) | (s < att.n_meta)
    scores = (q @ k.transpose(-1, -2)) / math.sqrt(D)
    probs = torch.softmax(scores.masked_fill(~allowed, float("-inf")), dim=-1)
    return (probs @ v).transpose(1, 2).reshape(B, T, H * Dv)


def ssm_heads(mixer: HymbaMixer, x: Tensor) -> Tensor:
    """``M_ssm x``: Mamba's conv -> SiLU -> selective recurrence (ZOH Ā, Euler B̄) + D x, gated by SiLU(z)."""
    ssm = mixer.ssm
    B, T, _ = x.shape
    xs, z = (x @ ssm.in_proj.weight.double().T).chunk(2, dim=-1)  # (B, T, E)
    w, bias = ssm.conv1d.weight.double()[:, 0], ssm.conv1d.bias.double()  # (E, K)
    K = w.shape[1]
    history = torch.cat([xs.new_zeros(B, K - 1, xs.shape[-1]), xs], 1)
    u = F.silu(torch.stack([(history[:, t : t + K] * w.T).sum(1) + bias for t in range(T)], 1))
    dt_low, Bm, Cm = (u @ ssm.x_proj.weight.double().T).split([ssm.dt_rank, ssm.d_state, ssm.d_state], -1)
    delta = F.softplus(dt_low @ ssm.dt_proj.weight.double().T + ssm.dt_proj.bias.double())  # (B, T, E)
    A = -torch.exp(ssm.A_log.double())  # (E, N)
    h = torch.zeros(B, xs.shape[-1], ssm.d_state, dtype=torch.float64)
    ys = []
    for t in range(T):
        h = torch.exp(delta[:, t, :, None] * A) * h + delta[:, t, :, None] * Bm[:, t, None, :] * u[:, t, :, None]
        ys.append((h * Cm[:, t, None, :]).sum(-1) + ssm.D.double() * u[:, t])
    return torch.stack(ys, 1) * F.silu(z)


def paper_mixer(mixer: HymbaMixer, x: Tensor, *, branches: str = "both") -> Tensor:
    """``Y = W_out (β_1 norm(M_att x) + β_2 norm(M_ssm x)) / 2`` in fp64 (``branches`` keeps one of the two)."""
    x = x.double()
    eps = mixer.attn_norm.eps  # type: ignore[union-attr]
    total = torch.zeros(*x.shape[:2], mixer.d_inner, dtype=torch.float64)
    if branches in ("both", "attention"):
        total = total + rms(attention_heads(mixer, x), mixer.attn_norm.weight, eps)
    if branches in ("both", "ssm"):
        total = total + rms(ssm_heads(mixer, x), mixer.ssm_norm.weight, eps)
    return total / 2 @ mixer.out_proj.weight.double().T


def paper_model(model: Hymba, u: Tensor) -> Tensor:
    """The stack: [R, X] -> blocks of (mixer, SwiGLU), each pre-norm residual -> final norm, meta positions dropped."""
    eps, M = model.config.norm_eps, model.config.n_meta_tokens
    h = u.double() @ model.input_proj.weight.double().T + model.input_proj.bias.double()  # type: ignore[union-attr]
    h = torch.cat([model.meta_tokens.double().expand(h.shape[0], -1, -1), h], 1)
    for block in model.layers:
        h = h + paper_mixer(block.mixer, rms(h, block.mixer_norm.weight, eps))
        g, ffn = rms(h, block.ffn_norm.weight, eps), block.ffn
        hidden = F.silu(g @ ffn.gate_proj.weight.double().T) * (g @ ffn.up_proj.weight.double().T)
        h = h + hidden @ ffn.down_proj.weight.double().T
    return rms(h, model.norm.weight, eps)[:, M:]  # type: ignore[arg-type]


def randomised(mixer: HymbaMixer, seed: int) -> HymbaMixer:
    """Random β gains, D, conv bias and larger steps, so every term of the module is observable."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in (mixer.attn_norm.weight, mixer.ssm_norm.weight, mixer.ssm.D):
            p.copy_(torch.rand(p.shape, generator=gen) + 0.5)
        mixer.ssm.dt_proj.bias.uniform_(-1.0, 1.0, generator=gen)
    return mixer.eval()


def make_mixer(seed: int = 0, **overrides: Any) -> HymbaMixer:
    torch.manual_seed(seed)
    kwargs = {"n_heads": 4, "head_dim": 4, "n_kv_heads": 2, "expand": 2, "d_state": 4, "d_conv": 3, **overrides}
    return randomised(HymbaMixer(8, **kwargs), seed)


def inputs(batch: int, T: int, width: int, seed: int) -> Tensor:
    return torch.randn(batch, T, width, generator=torch.Generator().manual_seed(seed))


def stepped(mixer: HymbaMixer, x: Tensor, pieces: tuple[int, ...]) -> Tensor:
    """The mixer run chunk by chunk from its decoding state (KV cache + Mamba state)."""
    state = mixer.init_state(x.shape[0])
    outs, start = [], 0
    for n in pieces:
        outs.append(mixer(x[:, start : start + n], positions=torch.arange(start, start + n), state=state))
        start += n
    return torch.cat(outs, 1)


@signature("hymba")
@pytest.mark.parametrize("layer", [{"window": None}, {"window": 3, "n_meta": 2}], ids=["global", "local-with-meta"])
def test_the_module_is_the_mean_of_the_normalised_attention_and_ssm_heads(layer: dict[str, Any]) -> None:
    mixer = make_mixer(1, **layer)
    x = inputs(2, 10, 8, 2)
    with torch.no_grad():
        torch.testing.assert_close(mixer(x).double(), paper_mixer(mixer, x), **TOL)
        # Decoding: prefill 4, one step, then 5 -- the KV cache, the convolution's inputs and the SSM state carry over.
        torch.testing.assert_close(stepped(mixer, x, (4, 1, 5)).double(), paper_mixer(mixer, x), **TOL)
        # β_2 = 0 leaves exactly the attention heads' output, β_1 = 0 exactly the SSM heads' (and nothing of a gate).
        beta_1, beta_2 = mixer.attn_norm.weight.clone(), mixer.ssm_norm.weight.clone()
        mixer.ssm_norm.weight.zero_()
        torch.testing.assert_close(mixer(x).double(), paper_mixer(mixer, x, branches="attention"), **TOL)
        mixer.ssm_norm.weight.copy_(beta_2)
        mixer.attn_norm.weight.zero_()
        torch.testing.assert_close(mixer(x).double(), paper_mixer(mixer, x, branches="ssm"), **TOL)
        mixer.attn_norm.weight.copy_(beta_1)
        # Each branch is normalised before the mean: the attention heads' scale (here 7x larger values) is invisible.
        want = mixer(x)
        mixer.attn.v_proj.weight.mul_(7.0)
        torch.testing.assert_close(mixer(x), want, **TOL)


@signature("hymba")
def test_model_with_meta_tokens_and_local_layers_matches_the_paper_stack() -> None:
    torch.manual_seed(3)
    model = edifice.build(
        "hymba", d_model=8, n_layers=3, d_in=5, n_heads=2, n_kv_heads=1, d_state=4, d_conv=3, n_meta_tokens=3,
        window=2, d_ff=12, global_layers=(1,),
    ).eval()  # fmt: skip
    assert [block.mixer.attn.window for block in model.layers] == [2, None, 2]  # local, global, local
    for i, block in enumerate(model.layers):
        randomised(block.mixer, 20 + i)
    u = inputs(2, 9, 5, 4)
    want = paper_model(model, u)
    with torch.no_grad():
        torch.testing.assert_close(model(x=u).double(), want, **TOL)
        state = model.init_state(2)
        outs = [model.step(u[:, :4], state)[0]] + [model.step(u[:, t : t + 1], state)[0] for t in range(4, 9)]
    torch.testing.assert_close(torch.cat(outs, 1).double(), want, **TOL)  # type: ignore[arg-type]


def test_meta_tokens_are_attended_by_every_position_inside_a_sliding_window() -> None:
    """One local layer, attention heads only (β_2 = 0): a meta token reaches every position; a far token does not."""
    torch.manual_seed(5)
    model = edifice.build(
        "hymba", d_model=8, n_layers=1, d_in=4, n_heads=2, d_state=4, d_conv=3, n_meta_tokens=2, window=2, d_ff=0,
        global_layers=(),
    ).eval()  # fmt: skip
    mixer = model.layers[0].mixer
    u = inputs(1, 8, 4, 6)
    with torch.no_grad():
        mixer.ssm_norm.weight.zero_()
        base = model(x=u)
        model.meta_tokens[0].add_(1.0)
        moved = model(x=u)
        model.meta_tokens[0].sub_(1.0)
        far = u.clone()
        far[:, 0] += 1.0
        shifted = model(x=far)
    assert bool(((moved - base).abs().amax(-1) > 1e-4).all()), "a meta token must reach every position"
    # Token 0 sits at position M = 2; with window 2 only positions 2 and 3 may see it.
    assert (shifted - base)[:, 2:].abs().max() < 1e-6
    assert (shifted - base)[:, :2].abs().amax(-1).min() > 1e-4


def test_meta_tokens_change_every_output_and_are_dropped_from_it() -> None:
    torch.manual_seed(6)
    config = {**edifice.get_spec("hymba").tiny, "n_layers": 2}
    model = edifice.build("hymba", **config).eval()
    plain = edifice.build("hymba", **{**config, "n_meta_tokens": 0}).eval()
    plain.load_state_dict({**model.state_dict(), "meta_tokens": torch.zeros(0, 16)})  # same weights, no meta tokens
    u = inputs(2, 7, 6, 7)
    with torch.no_grad():
        with_meta, without = model(x=u), plain(x=u)
    assert with_meta.shape == without.shape == (2, 7, 16)
    assert bool(((with_meta - without).abs().amax(-1) > 1e-4).all())
