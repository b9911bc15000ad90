"""Signature and property tests of ``spla`` (Block Sparse Plus Linear Attention, Wang et al. 2026).

No pip package ships SPLA, so the signature test is an fp64 per-query loop of the equations in docs/design/spla.md,
written independently of the layer: block statistics, the second-order Taylor estimate of each older block's softmax
mass, top-k selection, one softmax over the local and selected keys, and the residual linear attention summed over
the unselected keys directly (the layer computes it by the paper's subtraction, global minus selected). Property:
``selection_ratio = 1`` is dense causal softmax attention.
"""

from __future__ import annotations

import math
from typing import Any

import pytest
import torch
import torch.nn.functional as F

import edifice
from edifice.blocks.rope import RotaryEmbedding, apply_rotary
from edifice.testing import mutate_op, signature

torch.testing.assert_close(torch.zeros(1), torch.zeros(1))

B, D = 2, 16


def build(seed: int = 0, **overrides: Any) -> Any:
    torch.manual_seed(seed)
    fields = {"d_model": D, "n_layers": 1, "n_heads": 2, "block_stride": 3, "block_window": 1, "selection_ratio": 0.5}
    model: Any = edifice.build("spla", **{**fields, "max_len": 160, **overrides}).eval()
    gen = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.3 * torch.randn(p.shape, generator=gen, dtype=p.dtype))
    return model


def spla_oracle(mixer: Any, x: torch.Tensor) -> torch.Tensor:
    """One query at a time (fp64): select blocks by log n + s q·μ + ½ Var_j(s q·k_j), attend, add γ·RLA."""
    c = mixer.config
    H, d, S, W = mixer.n_heads, mixer.head_dim, c.block_stride, c.block_window
    s = d**-0.5
    P = {n: p.detach().double() for n, p in mixer.named_parameters()}
    x = x.double()
    Bsz, T, _ = x.shape
    q, k, v = ((x @ P[f"{n}_proj.weight"].T).view(Bsz, T, H, d).transpose(1, 2) for n in "qkv")
    cos, sin = RotaryEmbedding(d, base=c.rope_theta)(torch.arange(T))
    q, k = apply_rotary(q, cos.double(), sin.double()), apply_rotary(k, cos.double(), sin.double())
    out = torch.zeros(Bsz, H, T, d, dtype=torch.float64)
    for b in range(Bsz):
        for h in range(H):
            for t in range(T):
                qt, cb = q[b, h, t], t // S
                older = list(range(cb - W + 1))
                est = []
                for blk in older:
                    kk = k[b, h, blk * S : (blk + 1) * S]
                    z = s * kk @ qt  # the block's scores
                    est.append(math.log(len(kk)) + z.mean().item() + 0.5 * z.var(unbiased=False).item())
                n_sel = math.ceil(c.selection_ratio * len(older))
                chosen = {older[i] for i in sorted(range(len(older)), key=lambda i: -est[i])[:n_sel]}
                exact = [j for j in range(t + 1) if j // S > cb - W or j // S in chosen]
                rest = [j for j in range(t + 1) if j not in exact]
                p = torch.softmax(s * k[b, h, exact] @ qt, 0)
                o = p @ v[b, h, exact]
                if rest:  # residual linear attention over the unselected keys
                    o = o + P["rla_gate"][h] * ((s * k[b, h, rest] @ qt) @ v[b, h, rest])
                out[b, h, t] = o
    return out.transpose(1, 2).reshape(Bsz, T, H * d) @ P["o_proj.weight"].T


def check_mixer(T: int = 17, **overrides: Any) -> None:
    model = build(**overrides).double()
    mixer = model.layers[0].mixer
    x = torch.randn(B, T, D, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    with torch.no_grad():
        want = spla_oracle(mixer, x)
        # sdpa and linear_attention compute in fp32 even for fp64 input: 1e-6
        torch.testing.assert_close(mixer(x), want, atol=1e-6, rtol=1e-6)
        state = mixer.init_state(B, dtype=torch.float64)
        pos = torch.arange(T).expand(B, T)
        ys = [mixer(x[:, :7], positions=pos[:, :7], state=state)]
        ys += [mixer(x[:, t : t + 1], positions=pos[:, t : t + 1], state=state) for t in range(7, T)]
    torch.testing.assert_close(torch.cat(ys, 1), want, atol=1e-6, rtol=1e-6)


@signature("spla")
@pytest.mark.parametrize(
    "options",
    [{}, {"block_window": 2, "selection_ratio": 0.34}, {"selection_ratio": 0.0}],
    ids=["w1-r0.5", "w2-r0.34", "local-only"],
)
def test_spla_matches_the_fp64_per_query_loop(options: dict[str, Any]) -> None:
    check_mixer(**options)


@pytest.mark.parametrize("op", ["sdpa", "linear_attention"])
def test_signature_fails_with_a_broken_op(op: str) -> None:
    with mutate_op(op), pytest.raises(AssertionError):
        check_mixer()


def test_selection_ratio_one_is_dense_causal_softmax_attention() -> None:
    model = build(selection_ratio=1.0).double()
    mixer = model.layers[0].mixer
    assert mixer.rla_gate.abs().min() > 0  # the linear branch is live, yet has nothing left to attend
    x = torch.randn(B, 29, D, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    H, d = mixer.n_heads, mixer.head_dim
    with torch.no_grad():
        q, k, v = (p(x).view(B, 29, H, d).transpose(1, 2) for p in (mixer.q_proj, mixer.k_proj, mixer.v_proj))
        cos, sin = mixer.rope(torch.arange(29))
        q, k = apply_rotary(q, cos.double(), sin.double()), apply_rotary(k, cos.double(), sin.double())
        dense = F.scaled_dot_product_attention(q, k, v, is_causal=True).transpose(1, 2).reshape(B, 29, H * d)
        torch.testing.assert_close(mixer(x), mixer.o_proj(dense), atol=1e-6, rtol=1e-6)
        sparse = build(selection_ratio=0.3).double().layers[0].mixer
        sparse.load_state_dict(mixer.state_dict())
        assert (sparse(x) - mixer(x)).abs().max() > 1e-3  # below 1 the selection and the RLA change the output


@pytest.mark.parametrize("T", [1, 63, 130])
def test_forward_equals_prefill_and_steps(T: int) -> None:
    model = build(n_layers=2, block_stride=8, block_window=2, selection_ratio=0.3)
    x = torch.randn(B, T, D, generator=torch.Generator().manual_seed(T))
    with torch.no_grad():
        want = model(x)
        state = model.init_state(B)
        cut = max(T - 5, 1)
        ys = [model.step(x[:, :cut], state)[0]] + [model.step(x[:, t : t + 1], state)[0] for t in range(cut, T)]
    torch.testing.assert_close(torch.cat(ys, 1), want, atol=1e-4, rtol=1e-4)


def test_bad_config_raises() -> None:
    with pytest.raises(ValueError, match="selection_ratio"):
        edifice.build("spla", selection_ratio=1.5)
    with pytest.raises(ValueError, match="block_window"):
        edifice.build("spla", block_window=0)
