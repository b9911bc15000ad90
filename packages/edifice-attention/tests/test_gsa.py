"""Signature and converter tests of ``gsa`` (Gated Slot Attention) against flash-linear-attention's GSA.

fla's ``GatedSlotAttention`` runs only through Triton, so the oracle recomputes it from its weights (fla's names) with
independent code and fla's pure-PyTorch ``naive_recurrent_gsa`` (the authors' two token loops: ``h_k ← h_k ⊙ α + k sᵀ``
read by ``q``, a softmax over the slots, then ``h_v ← α ⊙ h_v + s vᵀ`` read by the probabilities): ``q, k, v =
Swish(x W)``, ``log α = logsigmoid(x W_α)/8``, ``s = 1 - α``, the read-out ``RMSNorm(Swish(o)) W_o``. The mixer must
match whole (chunked forms of both passes), stepped, and from non-zero slot memories; the converter must turn fla's
``GSAForCausalLM`` into a model whose logits match the oracle run on fla's own weights.
"""

from __future__ import annotations

import warnings
from typing import Any

import pytest
import torch
import torch.nn.functional as F

import edifice
from edifice.testing import mutate_op, signature

with warnings.catch_warnings():  # fla warns that it runs on CPU; these functions are plain PyTorch
    warnings.simplefilter("ignore")
    from fla.models import GSAConfig, GSAForCausalLM
    from fla.ops.gsa.naive import naive_recurrent_gsa

torch.testing.assert_close(torch.zeros(1), torch.zeros(1))  # pay the first call's import at collection

TOL = 2e-5
B, T, D, H, M = 2, 11, 16, 2, 6


def rms(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    return x * torch.rsqrt(x.square().mean(-1, keepdim=True) + eps) * weight


def gsa_oracle(
    w: dict[str, torch.Tensor], x: torch.Tensor, eps: float, memories: tuple[torch.Tensor, torch.Tensor] | None = None
) -> tuple[torch.Tensor, Any]:
    """fla's ``GatedSlotAttention`` on ``x [B, T, d]`` from its weights, from ``memories = (h_k, h_v)``."""
    bt = x.shape[:2]
    q, k, v = (F.silu(x @ w[f"{n}_proj.weight"].T).view(*bt, H, -1) for n in "qkv")
    f = F.logsigmoid(x @ w["f_proj.weight"].T).view(*bt, H, M) / 8
    o, final = naive_recurrent_gsa(q, k, v, 1 - f.exp(), f, scale=1.0, initial_state=memories, output_final_state=True)
    return rms(F.silu(o).flatten(2), w["g_norm.weight"], eps) @ w["o_proj.weight"].T, final


def fla_model(seed: int, layers: int = 2) -> Any:
    """A tiny random ``GSAForCausalLM`` with noise on every parameter (unit norm gains become visible)."""
    torch.manual_seed(seed)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        hf = GSAConfig(
            hidden_size=D, num_hidden_layers=layers, num_heads=H, num_slots=M, vocab_size=40, intermediate_size=24
        )
        model = GSAForCausalLM(hf)
    gen = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.3 * torch.randn(p.shape, generator=gen))
    return model


def mixer_and_weights(fla_oracle: Any, chunk_size: int = 4) -> tuple[Any, dict[str, torch.Tensor], float]:
    """Our first mixer holding the first layer of a random fla model (through the converter's key map)."""
    fla = fla_model(3, layers=1)
    prefix = "model.layers.0.attn."
    w = {k.removeprefix(prefix): v for k, v in fla.state_dict().items() if k.startswith(prefix)}
    model: Any = edifice.build("gsa", d_model=D, n_layers=1, n_heads=H, num_slots=M, chunk_size=chunk_size).eval()
    mixer = model.layers[0].mixer
    fla_oracle.load_layer(mixer, w)
    return mixer, w, model.config.norm_eps


def check_mixer(fla_oracle: Any) -> None:
    mixer, w, eps = mixer_and_weights(fla_oracle)
    x = torch.randn(B, T, D, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        want, (h_k, h_v) = gsa_oracle(w, x, eps)
        torch.testing.assert_close(mixer(x), want, atol=TOL, rtol=TOL)
        state = mixer.init_state(B)
        pieces = [mixer(x[:, :4], state=state)] + [mixer(x[:, t : t + 1], state=state) for t in range(4, T)]
        torch.testing.assert_close(torch.cat(pieces, 1), want, atol=TOL, rtol=TOL)
        # The carried memories are the paper's K̃ = h_kᵀ and Ṽ = h_v.
        torch.testing.assert_close(state.recurrent, torch.cat([h_k.transpose(-1, -2), h_v], -1), atol=TOL, rtol=TOL)


@signature("gsa")
def test_gsa_mixer_matches_fla_naive_recurrent_gsa(fla_oracle: Any) -> None:
    check_mixer(fla_oracle)


def test_gsa_continues_from_non_zero_memories(fla_oracle: Any) -> None:
    """From random slot memories (K̃₀, Ṽ₀) the chunked forward equals fla's loop started from them."""
    mixer, w, eps = mixer_and_weights(fla_oracle, chunk_size=16)
    gen = torch.Generator().manual_seed(7)
    h_k, h_v = torch.randn(B, H, D // H, M, generator=gen), torch.randn(B, H, M, D // H, generator=gen)
    x = torch.randn(B, 37, D, generator=gen)
    with torch.no_grad():
        want, (h_k1, h_v1) = gsa_oracle(w, x, eps, (h_k, h_v))
        state = mixer.init_state(B)
        state.recurrent.copy_(torch.cat([h_k.transpose(-1, -2), h_v], -1))
        torch.testing.assert_close(mixer(x, state=state), want, atol=TOL, rtol=TOL)
    torch.testing.assert_close(state.recurrent, torch.cat([h_k1.transpose(-1, -2), h_v1], -1), atol=TOL, rtol=TOL)


def no_softmax(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, g: torch.Tensor, **kwargs: Any) -> Any:
    """Pass 2 reading with the raw scores' exponentials normalised away: the slots weighted uniformly (no softmax)."""
    from edifice.ops.linear_attention import gated_linear_attention_reference

    return gated_linear_attention_reference(torch.full_like(q, 1 / q.shape[-1]), k, v, g, **kwargs)


@pytest.mark.parametrize(
    ("op", "wrong"),
    [("linear_attention", None), ("gated_linear_attention", None), ("gated_linear_attention", no_softmax)],
    ids=["pass1-exclusive", "pass2-no-decay", "no-softmax-read"],
)
def test_signature_fails_when_the_mechanism_breaks(op: str, wrong: Any, fla_oracle: Any) -> None:
    with mutate_op(op, wrong), pytest.raises(AssertionError):
        check_mixer(fla_oracle)


def test_converter_from_fla_matches_its_weights(fla_oracle: Any) -> None:
    fla = fla_model(4)
    model: Any = edifice.convert("fla.models.GSAForCausalLM", fla, chunk_size=4)
    assert model.config.arch == "gsa" and model.config.num_slots == M
    ids = torch.randint(0, 40, (B, T), generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        eps = fla.config.norm_eps
        want = fla_oracle.lm_logits(fla.state_dict(), ids, lambda w, h: gsa_oracle(w, h, eps)[0], 2, eps)
        torch.testing.assert_close(model(input_ids=ids), want, atol=TOL, rtol=TOL)
        again: Any = edifice.convert("fla.models.GSAForCausalLM", (fla.config.to_dict(), fla.state_dict()))
        torch.testing.assert_close(again(input_ids=ids), want, atol=TOL, rtol=TOL)


def test_converter_refuses_what_it_cannot_express() -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        hf = GSAConfig(hidden_size=D, num_hidden_layers=1, num_heads=2, feature_map="t2r", vocab_size=40)
    with pytest.raises(edifice.CheckpointError, match="feature_map='t2r' is not supported"):
        edifice.convert("fla.models.GSAForCausalLM", (hf, {}))
