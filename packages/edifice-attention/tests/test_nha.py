"""Signature and property tests of ``nha`` (Native Hybrid Attention, Du et al. 2025).

No pip package ships NHA, so the signature test is an fp64 token loop of the equations in docs/design/nha.md: a
token leaving the window is written into the m gated slots (GSA's update), and each query takes ONE softmax over
the slots and the window. Properties: without slots it is sliding-window softmax attention (edifice.ops.sdpa), with
a window covering the sequence it is full causal attention, and the slots change the output when present.
"""

from __future__ import annotations

from typing import Any

import pytest
import torch
import torch.nn.functional as F

import edifice
from edifice import ops
from edifice.testing import mutate_op, signature

torch.testing.assert_close(torch.zeros(1), torch.zeros(1))

B, D = 2, 16


def build(seed: int = 0, **overrides: Any) -> Any:
    torch.manual_seed(seed)
    fields = {"d_model": D, "n_layers": 1, "n_heads": 2, "num_slots": 3, "window_size": 4, **overrides}
    model: Any = edifice.build("nha", **fields).eval()
    gen = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.3 * torch.randn(p.shape, generator=gen, dtype=p.dtype))
    return model


def nha_oracle(mixer: Any, x: torch.Tensor) -> torch.Tensor:
    """Token loop in fp64: evict x_{t-w} into the slots, then one softmax over [slots; window] (module doc)."""
    c = mixer.config
    H, d, m, w = c.n_heads, c.head_dim, c.num_slots, c.window_size
    P = {n: p.detach().double() for n, p in mixer.named_parameters()}
    x = x.double()
    Bsz, T, _ = x.shape
    q, k, v = (F.silu(x @ P[f"{n}_proj.weight"].T).view(Bsz, T, H, d) for n in "qkv")
    logits = x @ P["gate_proj.weight"].T + P["gate_proj.bias"] if m else x.new_zeros(Bsz, T, 0)
    alpha = torch.sigmoid(logits).view(Bsz, T, H, m)
    alpha = alpha ** (1 / c.gate_logit_normalizer)
    Ks, Vs = x.new_zeros(Bsz, H, m, d), x.new_zeros(Bsz, H, m, d)
    outs = []
    for t in range(T):
        j = t - w  # the token that leaves the window now
        if j >= 0:
            a = alpha[:, j][..., None]
            Ks = a * Ks + (1 - a) * k[:, j, :, None, :]
            Vs = a * Vs + (1 - a) * v[:, j, :, None, :]
        lo = max(t - w + 1, 0)
        keys, vals = k[:, lo : t + 1].transpose(1, 2), v[:, lo : t + 1].transpose(1, 2)  # (B, H, n, d)
        if j >= 0 and m:  # slots hold something only once a token has left the window
            keys, vals = torch.cat([Ks, keys], 2), torch.cat([Vs, vals], 2)
        if keys.shape[2] == 0:
            outs.append(x.new_zeros(Bsz, H, d))
            continue
        p = torch.softmax(torch.einsum("bhd,bhnd->bhn", q[:, t], keys) / d**0.5, -1)  # ONE softmax
        outs.append(torch.einsum("bhn,bhnd->bhd", p, vals))
    o = torch.stack(outs, 1).reshape(Bsz, T, H * d)
    return o @ P["o_proj.weight"].T


def check_mixer(T: int = 17, **overrides: Any) -> None:
    model = build(**overrides).double()
    mixer = model.layers[0].mixer
    x = torch.randn(B, T, D, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    with torch.no_grad():
        want = nha_oracle(mixer, x)
        # the slot scan (ops.linear_recurrence) runs in fp32 even for fp64 input: 1e-6
        torch.testing.assert_close(mixer(x), want, atol=1e-6, rtol=1e-6)
        state = mixer.init_state(B, dtype=torch.float64)
        pos = torch.arange(T).expand(B, T)
        ys = [mixer(x[:, :5], positions=pos[:, :5], state=state)]
        ys += [mixer(x[:, t : t + 1], positions=pos[:, t : t + 1], state=state) for t in range(5, T)]
    torch.testing.assert_close(torch.cat(ys, 1), want, atol=1e-6, rtol=1e-6)


@signature("nha")
@pytest.mark.parametrize("window", [0, 1, 4], ids=["slots-only", "w1", "w4"])
def test_nha_matches_the_fp64_token_loop(window: int) -> None:
    check_mixer(window_size=window)


def test_signature_fails_when_the_slots_never_forget() -> None:
    with mutate_op("linear_recurrence"), pytest.raises(AssertionError):
        check_mixer()


def test_without_slots_it_is_sliding_window_attention() -> None:
    model = build(num_slots=0, window_size=5).double()
    mixer = model.layers[0].mixer
    x = torch.randn(B, 23, D, generator=torch.Generator().manual_seed(4), dtype=torch.float64)
    H, d = mixer.n_heads, mixer.head_dim
    with torch.no_grad():
        q, k, v = (F.silu(p(x)).view(B, 23, H, d).transpose(1, 2) for p in (mixer.q_proj, mixer.k_proj, mixer.v_proj))
        swa = ops.sdpa(q, k, v, causal=True, window=5).transpose(1, 2).reshape(B, 23, H * d)
        torch.testing.assert_close(mixer(x), mixer.o_proj(swa), atol=1e-6, rtol=1e-6)  # sdpa: fp32 softmax
        full = ops.sdpa(q, k, v, causal=True).transpose(1, 2).reshape(B, 23, H * d)
        wide = build(num_slots=3, window_size=64).double().layers[0].mixer
        wide.load_state_dict(mixer.state_dict(), strict=False)  # same q/k/v/o; slots never filled
        torch.testing.assert_close(wide(x), wide.o_proj(full), atol=1e-6, rtol=1e-6)  # sdpa: fp32 softmax
        with_slots = build(num_slots=3, window_size=5).double().layers[0].mixer
        with_slots.load_state_dict(mixer.state_dict(), strict=False)
        assert (with_slots(x) - mixer(x)).abs().max() > 1e-3  # the slots take part in the softmax


@pytest.mark.parametrize("T", [1, 63, 130])
def test_forward_equals_prefill_and_steps(T: int) -> None:
    model = build(n_layers=2, window_size=7, num_slots=4)
    x = torch.randn(B, T, D, generator=torch.Generator().manual_seed(T))
    with torch.no_grad():
        want = model(x)
        state = model.init_state(B)
        cut = max(T - 5, 1)
        ys = [model.step(x[:, :cut], state)[0]] + [model.step(x[:, t : t + 1], state)[0] for t in range(cut, T)]
    torch.testing.assert_close(torch.cat(ys, 1), want, atol=1e-4, rtol=1e-4)


def test_bad_config_raises() -> None:
    with pytest.raises(ValueError, match="window_size"):
        edifice.build("nha", num_slots=0, window_size=0)
    with pytest.raises(ValueError, match="n_heads"):
        edifice.build("nha", d_model=10, n_heads=3)
