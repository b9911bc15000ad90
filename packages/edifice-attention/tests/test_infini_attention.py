"""infini_attention: fp64 oracle of the paper's memory (linear and delta updates), local attention at a closed gate,
step = forward at every prefix."""

from __future__ import annotations

import math

import pytest
import torch

import edifice
from edifice import ConfigError
from edifice.blocks.attention import Attention
from edifice.testing import signature
from edifice.testing.mutate import unmasked_sdpa
from edifice.testing.tol import FP32, SCAN, assert_close
from edifice_attention.infini_attention import InfiniSelfAttention

TINY = edifice.get_spec("infini_attention").tiny


def _sigma(x: torch.Tensor) -> torch.Tensor:
    return torch.where(x > 0, x + 1, x.exp())  # ELU + 1


def _oracle(mixer: InfiniSelfAttention, x: torch.Tensor, N: int, update: str, eps: float):
    """Munkhdalai et al. §2.1 token by token in fp64: eq. 2 (causal softmax within the segment), eq. 8 (retrieval from
    M_{s-1}, z_{s-1}), eq. 7 / eq. 9 (update after the segment), eq. 10 (sigmoid(β) gate). Returns (y, M, z)."""
    B, T, _ = x.shape
    H, Hk, D = mixer.n_heads, mixer.n_kv_heads, mixer.head_dim
    q = mixer.q_proj(x).view(B, T, H, D)
    k = mixer.k_proj(x).view(B, T, Hk, D)
    v = mixer.v_proj(x).view(B, T, Hk, D)
    out = torch.zeros(B, T, H, D, dtype=torch.float64)
    M = torch.zeros(B, Hk, D, D, dtype=torch.float64)
    z = torch.zeros(B, Hk, D, dtype=torch.float64)
    for b in range(B):
        for g in range(Hk):
            Mg, zg = torch.zeros(D, D, dtype=torch.float64), torch.zeros(D, dtype=torch.float64)
            for start in range(0, T, N):
                seg = range(start, min(start + N, T))
                for h in range(g * (H // Hk), (g + 1) * (H // Hk)):
                    gate = 1 / (1 + math.exp(-float(mixer.beta[h])))
                    for i in seg:
                        sq = _sigma(q[b, i, h])
                        a_mem = (sq @ Mg) / (sq @ zg + eps)
                        scores = torch.stack([q[b, i, h] @ k[b, j, g] / math.sqrt(D) for j in range(start, i + 1)])
                        a_dot = (scores.softmax(0)[:, None] * v[b, start : i + 1, g]).sum(0)
                        out[b, i, h] = gate * a_mem + (1 - gate) * a_dot
                if seg[-1] == T - 1:
                    break  # the last segment is written when the next one begins (it may still be open)
                Mold, zold = Mg.clone(), zg.clone()
                for j in seg:
                    sk = _sigma(k[b, j, g])
                    new = v[b, j, g] - (sk @ Mold) / (sk @ zold + eps) if update == "delta" else v[b, j, g]
                    Mg = Mg + torch.outer(sk, new)
                    zg = zg + sk
            M[b, g], z[b, g] = Mg, zg
    return mixer.o_proj(out.reshape(B, T, H * D)), M, z


def _mixer(update: str, rope: bool = False) -> InfiniSelfAttention:
    torch.manual_seed(0)
    kwargs = {"rope": edifice.blocks.rope.RotaryEmbedding(8)} if rope else {}
    mixer = InfiniSelfAttention(16, 2, n_kv_heads=1, segment_size=4, update=update, eps=1e-6, **kwargs).double()
    with torch.no_grad():
        mixer.beta.copy_(torch.tensor([-0.7, 1.3]))
    return mixer


@signature("infini_attention")
@pytest.mark.parametrize("update", ["linear", "delta"])
@pytest.mark.parametrize("T", [11, 12])
def test_memory_follows_the_papers_updates_in_fp64(update: str, T: int) -> None:
    mixer = _mixer(update)
    x = torch.randn(2, T, 16, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        want, M, z = _oracle(mixer, x, 4, update, 1e-6)
        assert_close(mixer(x), want, FP32, name="output")
        state = mixer.init_state(2)
        mixer(x, positions=torch.arange(T), state=state)
    assert_close(state.memory, M, FP32, name="memory M_s")
    assert_close(state.norm, z, FP32, name="normaliser z_s")
    assert int(state.valid.sum(1).max()) == (T - 1) % 4 + 1  # only the last segment's keys are kept


@signature("infini_attention")
def test_closed_gate_equals_segment_local_causal_attention() -> None:
    mixer = _mixer("delta", rope=True)
    plain = Attention(16, 2, n_kv_heads=1, rope=edifice.blocks.rope.RotaryEmbedding(8)).double()
    plain.load_state_dict({k: v for k, v in mixer.state_dict().items() if k != "beta"})
    x = torch.randn(2, 10, 16, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        mixer.beta.fill_(-1e4)  # sigmoid(β) = 0: local attention only
        want = torch.cat([plain(x[:, s : s + 4], positions=torch.arange(s, min(s + 4, 10))) for s in (0, 4, 8)], 1)
        assert_close(mixer(x), want, FP32, name="closed gate")
        mixer.beta.fill_(1e4)  # the memory alone: differs
        assert (mixer(x) - want).abs().max() > 1e-3


@pytest.mark.parametrize("update", ["linear", "delta"])
@pytest.mark.parametrize(("T", "prefill"), [(1, 1), (63, 6), (130, 9)])
def test_step_reproduces_forward_at_every_prefix(update: str, T: int, prefill: int) -> None:
    torch.manual_seed(0)
    model = edifice.build("infini_attention", **{**TINY, "n_layers": 1, "segment_size": 5, "memory_update": update})
    ids = torch.randint(0, 64, (2, T), generator=torch.Generator().manual_seed(3))
    full = model(input_ids=ids)
    state = model.init_state(2)
    outs = [model.step(ids[:, :prefill], state)[0]]
    outs += [model.step(ids[:, t : t + 3], state)[0] for t in range(prefill, T, 3)]  # chunks crossing segments
    assert_close(torch.cat(outs, dim=1), full, SCAN, name="step vs forward")
    g_full = torch.autograd.grad(full.square().sum(), model.layers[0].mixer.beta)[0]
    g_step = torch.autograd.grad(torch.cat(outs, dim=1).square().sum(), model.layers[0].mixer.beta)[0]
    assert_close(g_step, g_full, SCAN, name="gradient of beta")


def test_bad_configs() -> None:
    with pytest.raises(ConfigError, match="segment_size"):
        edifice.build("infini_attention", segment_size=0)
    with pytest.raises(ConfigError, match="memory_update"):
        edifice.build("infini_attention", memory_update="gated")
    with pytest.raises(ConfigError, match="window"):
        edifice.build("infini_attention", window=4)


def test_a_wrong_sdpa_breaks_the_closed_gate_property() -> None:
    with edifice.ops.swap("sdpa", unmasked_sdpa), pytest.raises(AssertionError):
        test_closed_gate_equals_segment_local_causal_attention()
