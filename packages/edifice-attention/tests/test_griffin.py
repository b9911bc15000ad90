"""Signature, oracle and decoding tests of ``griffin`` and ``hawk`` (De et al. 2024; RecurrentGemma).

* Parity: :func:`from_recurrent_gemma` turns a tiny random transformers ``RecurrentGemmaForCausalLM`` (fp32, every
  parameter perturbed) into a model whose logits match, from ``forward`` and from a prefill followed by single steps.
  Griffin uses RecurrentGemma's block pattern (recurrent, recurrent, attention) with a window shorter than the
  sequence; Hawk is RecurrentGemma with ``block_types=["recurrent"]`` (transformers allows it). Killed by the
  no-decay recurrence, unmasked attention, an unnormalised RMSNorm and a stateless Conv1D.
* Oracle: the RG-LRU (eqs. 1-4) against a token loop of the paper's equations in fp64, outputs, gradients and final
  state, at T = 1, 63, 130, from a non-zero initial state and with a segment reset inside.
* Forms: ``forward`` (parallel scan), chunked prefill (chunk sizes that do not divide T) and token-by-token ``step``
  agree at T = 1, 63, 130, also continuing from a non-zero state; the decoding state has a constant size.
* Initialisation: Λ gives ``a^c`` uniform in [0.9, 0.999] (§2.4).
"""

from __future__ import annotations

import math
from typing import Any

import pytest
import torch
import torch.nn.functional as F

import edifice
from edifice.testing import mutate_op, redraw_parameters, signature
from edifice_attention.griffin import RGLRU, Griffin, lru_init

transformers = pytest.importorskip("transformers")
RecurrentGemmaConfig = transformers.RecurrentGemmaConfig
RecurrentGemmaForCausalLM = transformers.RecurrentGemmaForCausalLM

TOL = 1e-5
VOCAB, B, T = 40, 2, 37  # T > the scan's chunk of 32 and > the window of 5
GRIFFIN = ["recurrent", "recurrent", "attention"]


def tiny_recurrent_gemma(block_types: list[str], *, seed: int = 0, **overrides: Any) -> Any:
    """A random 3-layer RecurrentGemma (window 5 < T), every parameter perturbed, fp32, eager attention."""
    fields = {
        "num_hidden_layers": 3,
        "vocab_size": VOCAB,
        "hidden_size": 32,
        "intermediate_size": 48,
        "num_attention_heads": 4,
        "num_key_value_heads": 1,
        "lru_width": 24,
        "attention_window_size": 5,
        "block_types": block_types,
        **overrides,
    }
    config = RecurrentGemmaConfig(**fields)
    config._attn_implementation = "eager"
    torch.manual_seed(seed)
    model = RecurrentGemmaForCausalLM(config).eval()
    return redraw_parameters(model, seed=seed)


def check_parity(block_types: list[str], arch: str) -> None:
    """Our converted model's logits against RecurrentGemma's: forward, and prefill of 4 + single steps."""
    hf = tiny_recurrent_gemma(block_types)
    model: Any = edifice.convert("transformers.RecurrentGemmaForCausalLM", hf)
    assert model.config.arch == arch
    ids = torch.randint(0, VOCAB, (B, T), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        want = hf(ids, use_cache=False).logits
        torch.testing.assert_close(model(input_ids=ids), want, atol=TOL, rtol=TOL)
        state = model.init_state(B)
        pieces = [model.step(ids[:, :4], state)[0]] + [model.step(ids[:, t : t + 1], state)[0] for t in range(4, T)]
    torch.testing.assert_close(torch.cat(pieces, 1), want, atol=TOL, rtol=TOL)


@signature("griffin")
def test_griffin_matches_recurrent_gemma() -> None:
    check_parity(GRIFFIN, "griffin")


@signature("hawk")
def test_hawk_matches_recurrent_gemma_with_recurrent_blocks_only() -> None:
    check_parity(["recurrent"], "hawk")


@pytest.mark.parametrize(
    ("op", "block_types"),
    [
        ("linear_recurrence", ["recurrent"]),
        ("causal_conv1d", ["recurrent"]),
        ("sdpa", GRIFFIN),
        ("rms_norm", GRIFFIN),
    ],
)
def test_signature_fails_with_a_mutated_op(op: str, block_types: list[str]) -> None:
    with mutate_op(op), pytest.raises(AssertionError):
        check_parity(block_types, "griffin" if "attention" in block_types else "hawk")


def test_signature_fails_without_the_sqrt_normalisation(monkeypatch: pytest.MonkeyPatch) -> None:
    """Dropping eq. 4's ``sqrt(1 - a_t²)`` (a plain gated recurrence) must break parity."""
    import edifice_attention.griffin as griffin

    monkeypatch.setattr(griffin, "sqrt_bounded_grad", lambda x: torch.ones_like(x))
    with pytest.raises(AssertionError):
        check_parity(["recurrent"], "hawk")


# -- the RG-LRU against the paper's equations ------------------------------------------------------------------------
def rg_lru_oracle(lru: RGLRU, x: torch.Tensor, positions: torch.Tensor, h0: torch.Tensor) -> torch.Tensor:
    """Eqs. 1-6 one token at a time in fp64: ``a = σ(Λ)``, ``a_t = a^{c r_t}``, reset where ``position == 0``."""
    wx, bx = lru.input_gate.weight.double(), lru.input_gate.bias.double()
    wa, ba = lru.recurrence_gate.weight.double(), lru.recurrence_gate.bias.double()
    a_base = torch.sigmoid(lru.lambda_.double())
    H, W = wx.shape[:2]
    h, states = h0.double(), []
    for t in range(x.shape[1]):
        xt = x[:, t].double()
        blocks = xt.view(-1, H, W)
        r = torch.sigmoid(torch.einsum("bhi,hij->bhj", blocks, wa) + ba).flatten(1)  # eq. 1
        i = torch.sigmoid(torch.einsum("bhi,hij->bhj", blocks, wx) + bx).flatten(1)  # eq. 2
        a = a_base ** (lru.c * r)  # eq. 3
        start = (positions[:, t] == 0)[:, None]
        h = torch.where(start, i * xt, a * h + torch.sqrt(1 - a**2) * (i * xt))  # eq. 4 (reset at a segment start)
        states.append(h)
    return torch.stack(states, 1)


@pytest.mark.parametrize("length", [1, 63, 130])
def test_rg_lru_matches_the_papers_equations_in_fp64(length: int) -> None:
    torch.manual_seed(0)
    config = edifice.config("hawk", d_model=16, n_heads=2, lru_width=12)
    lru = RGLRU(config)
    redraw_parameters(lru, seed=2)
    gen = torch.Generator().manual_seed(3)
    x = torch.randn(B, length, 12, generator=gen, requires_grad=True)
    h0 = torch.randn(B, 12, generator=gen, requires_grad=True)
    positions = torch.arange(length).expand(B, length) + 5  # continuing a sequence: h0 is used
    if length > 1:
        positions = positions.clone()
        positions[1, length // 2 :] -= int(positions[1, length // 2])  # a new segment starts in row 1
    got = lru(x, positions, initial=h0)
    want = rg_lru_oracle(lru, x, positions, h0)
    torch.testing.assert_close(got, want.float(), atol=TOL, rtol=TOL)  # outputs, and h[:, -1] the final state
    weights = torch.randn(got.shape, generator=gen)
    leaves = [x, h0, *lru.parameters()]
    g_got = torch.autograd.grad((got * weights).sum(), leaves)
    g_want = torch.autograd.grad((want * weights.double()).sum(), leaves)
    for name, a, b in zip(["x", "h0", *(n for n, _ in lru.named_parameters())], g_got, g_want, strict=True):
        torch.testing.assert_close(a, b.float(), atol=1e-4, rtol=1e-4, msg=lambda m, n=name: f"grad {n}: {m}")


def test_recurrence_gate_exponent_is_c() -> None:
    """With the recurrence gate saturated at r = 1, a_t = σ(Λ)^c exactly (c = 8, eq. 3)."""
    lru = RGLRU(edifice.config("hawk", d_model=8, n_heads=1, lru_width=8))
    with torch.no_grad():
        lru.recurrence_gate.weight.zero_()
        lru.recurrence_gate.bias.fill_(40.0)  # σ(40) = 1 in fp32
    a, _ = lru.coefficients(torch.randn(1, 3, 8), torch.arange(1, 4)[None])
    torch.testing.assert_close(a, torch.sigmoid(lru.lambda_.detach()).pow(8.0).expand(1, 3, 8))


# -- initialisation ---------------------------------------------------------------------------------------------------
def test_lambda_init_makes_a_to_the_c_uniform_in_0_9_0_999() -> None:
    """§2.4: Λ such that a^c is uniform in [0.9, 0.999] -- in every RG-LRU of a built model."""
    torch.manual_seed(0)  # a fixed draw: the statistical bounds below are then deterministic
    model: Any = edifice.build("griffin", d_model=64, n_layers=3, n_heads=4, lru_width=1024)
    for lru in model.rg_lrus():
        ac = torch.sigmoid(lru.lambda_.detach().double()) ** lru.c
        assert ac.min() >= 0.9 - 1e-6 and ac.max() <= 0.999 + 1e-6
        # Uniform: mean 0.9495, std 0.099/sqrt(12), and its empirical CDF within a KS band of U[0.9, 0.999].
        assert abs(ac.mean().item() - 0.9495) < 0.01
        assert abs(ac.std().item() - 0.099 / math.sqrt(12)) < 0.004
        cdf = (ac.sort().values - 0.9) / 0.099
        ks = (cdf - torch.arange(1, len(cdf) + 1, dtype=torch.float64) / len(cdf)).abs().max().item()
        assert ks < 1.63 / math.sqrt(len(cdf))  # the 1% critical value


def test_ring_init_is_the_released_codes() -> None:
    """``lru_init="ring"``: the base a has a² uniform in [0.81, 0.998] (recurrentgemma's ``rnn_param_init``)."""
    lam = lru_init((20000,), 8.0, 0.9, 0.999, "ring", torch.Generator().manual_seed(0))
    a2 = torch.sigmoid(lam.double()) ** 2
    assert a2.min() >= 0.81 - 1e-6 and a2.max() <= 0.999**2 + 1e-6
    assert abs(a2.mean().item() - (0.81 + 0.998001) / 2) < 0.002


# -- three forms: forward (scan), chunked prefill and single steps ---------------------------------------------------
def stepped(model: Any, x: torch.Tensor, chunk: int, state: Any = None) -> tuple[torch.Tensor, Any]:
    state = model.init_state(x.shape[0]) if state is None else state
    pieces = [model.step(x[:, s : s + chunk], state)[0] for s in range(0, x.shape[1], chunk)]
    return torch.cat(pieces, 1), state


def three_layer_griffin(**overrides: Any) -> Any:
    torch.manual_seed(0)
    fields = {"d_model": 16, "n_layers": 3, "n_heads": 2, "lru_width": 16, "d_ff": 24, "d_in": 6, "window": 8}
    model = edifice.build("griffin", **{**fields, **overrides}).eval()
    return redraw_parameters(model, seed=1)


@pytest.mark.parametrize("length", [1, 63, 130])
def test_forward_chunked_and_stepped_agree(length: int) -> None:
    model = three_layer_griffin()
    x = torch.randn(B, length, 6, generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        want = model(x)
        by_chunks, chunk_state = stepped(model, x, 7)
        by_steps, step_state = stepped(model, x, 1)
    torch.testing.assert_close(by_chunks, want, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(by_steps, want, atol=1e-4, rtol=1e-4)
    for a, b in zip(chunk_state.layers, step_state.layers, strict=True):  # the same final state
        if hasattr(a, "recurrent"):
            torch.testing.assert_close(a.recurrent, b.recurrent, atol=1e-4, rtol=1e-4)
            torch.testing.assert_close(a.conv, b.conv, atol=1e-5, rtol=1e-5)


def test_continuing_from_a_non_zero_state() -> None:
    """After a prefix, a chunked prefill and single steps from that (non-zero) state reproduce ``forward``."""
    model = three_layer_griffin()
    x = torch.randn(B, 130, 6, generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        want = model(x)
        _, state = stepped(model, x[:, :50], 50)
        assert all(s.recurrent.abs().min() > 0 for s in state.layers if hasattr(s, "recurrent"))
        rest, _ = stepped(model, x[:, 50:], 9, state)
    torch.testing.assert_close(rest, want[:, 50:], atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("length", [1, 63, 130])
def test_rg_lru_chunked_form_matches_the_scan_with_gradients(length: int) -> None:
    """The scan in chunks of 7 (each from the previous chunk's last state) equals one scan: states and gradients."""
    lru = redraw_parameters(RGLRU(edifice.config("hawk", d_model=16, n_heads=2, lru_width=12)), seed=4)
    gen = torch.Generator().manual_seed(5)
    x = torch.randn(B, length, 12, generator=gen, requires_grad=True)
    h0 = torch.randn(B, 12, generator=gen, requires_grad=True)
    positions = torch.arange(length).expand(B, length) + 1
    whole = lru(x, positions, initial=h0)
    pieces, h = [], h0
    for s in range(0, length, 7):
        pieces.append(lru(x[:, s : s + 7], positions[:, s : s + 7], initial=h))
        h = pieces[-1][:, -1]
    chunked = torch.cat(pieces, 1)
    torch.testing.assert_close(chunked, whole, atol=1e-5, rtol=1e-5)
    weights = torch.randn(whole.shape, generator=gen)
    leaves = [x, h0, *lru.parameters()]
    for a, b in zip(
        torch.autograd.grad((chunked * weights).sum(), leaves),
        torch.autograd.grad((whole * weights).sum(), leaves),
        strict=True,
    ):
        torch.testing.assert_close(a, b, atol=1e-4, rtol=1e-4)


def test_decoding_state_is_constant_in_t() -> None:
    model = three_layer_griffin()
    x = torch.randn(1, 140, 6, generator=torch.Generator().manual_seed(8))
    with torch.no_grad():
        _, short = stepped(model, x[:, :3], 1)
        _, long = stepped(model, x, 20)
    sizes = [[t.shape for t in torch.utils._pytree.tree_leaves(s)] for s in (short.layers, long.layers)]
    assert sizes[0] == sizes[1]
    attention_cache = long.layers[2]
    assert attention_cache.keys.shape[2] == model.config.window + 1  # a ring of window slots (+ one scratch slot)


def test_padding_is_exact() -> None:
    model = three_layer_griffin()
    x = torch.randn(1, 11, 6, generator=torch.Generator().manual_seed(9))
    padded = torch.cat([torch.randn(1, 3, 6), x, torch.randn(1, 2, 6)], 1)
    mask = torch.tensor([[False] * 3 + [True] * 11 + [False] * 2])
    with torch.no_grad():
        torch.testing.assert_close(model(padded, attention_mask=mask)[:, 3:14], model(x), atol=TOL, rtol=TOL)


# -- the model's structure, config and converter -----------------------------------------------------------------------
def test_griffin_pattern_and_hawk_share_the_builder() -> None:
    griffin: Any = edifice.build("griffin", d_model=16, n_layers=6, n_heads=2)
    hawk: Any = edifice.build("hawk", d_model=16, n_layers=3, n_heads=2)
    assert type(griffin) is type(hawk) is Griffin
    kinds = [type(layer.mixer).__name__ for layer in griffin.layers]
    assert kinds == ["RecurrentBlock", "RecurrentBlock", "LocalAttention"] * 2
    assert {type(layer.mixer).__name__ for layer in hawk.layers} == {"RecurrentBlock"}
    assert griffin.config.rnn_width == 22  # 4/3 · 16 rounded up to a multiple of n_heads (D_RNN = 4D/3)
    assert griffin.layers[0].ffn.up_proj.out_features == 48  # MLP expansion factor 3 (§2.2)
    assert griffin.layers[2].mixer.n_kv_heads == 1  # multi-query attention


@pytest.mark.parametrize(
    ("overrides", "field"),
    [
        ({"block_types": ("recurrent", "mlp")}, "block_types"),
        ({"lru_width": 15, "n_heads": 2}, "lru_width"),
        ({"lru_min": 0.99, "lru_max": 0.9}, "lru_min"),
        ({"lru_init": "uniform"}, "lru_init"),
        ({"n_heads": 3, "n_layers": 3}, "n_heads"),
    ],
)
def test_bad_config_names_the_field(overrides: dict[str, Any], field: str) -> None:
    with pytest.raises(ValueError, match=field):
        edifice.config("griffin", d_model=16, **overrides)


def test_hawk_block_types_are_fixed() -> None:
    with pytest.raises(ValueError, match="block_types"):
        edifice.config("hawk", block_types=("recurrent", "attention"))


def test_converter_accepts_a_config_dict_and_refuses_other_activations() -> None:
    hf = tiny_recurrent_gemma(GRIFFIN)
    model: Any = edifice.convert("transformers.RecurrentGemmaForCausalLM", (hf.config.to_dict(), hf.state_dict()))
    ids = torch.randint(0, VOCAB, (1, 9), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        torch.testing.assert_close(model(input_ids=ids), hf(ids, use_cache=False).logits, atol=TOL, rtol=TOL)
    with pytest.raises(edifice.CheckpointError, match="hidden_activation"):
        edifice.convert(
            "transformers.RecurrentGemmaForCausalLM", ({**hf.config.to_dict(), "hidden_activation": "relu"}, {})
        )


def test_soft_cap_and_embedding_scale() -> None:
    """Logits lie within ±cap; the embedding scale is sqrt(D) rounded to bfloat16 (RecurrentGemma's normaliser)."""
    model: Any = edifice.build(
        "hawk", d_model=32, n_heads=2, vocab_size=VOCAB, scale_embeddings=True, logits_soft_cap=2.0
    )
    assert model.embed_scale == 5.65625 != math.sqrt(32)
    with torch.no_grad():
        model.lm_head.weight.mul_(100)
        logits = model(input_ids=torch.arange(10)[None])
    assert logits.abs().max() <= 2.0 and F.relu(logits.abs() - 1.9).sum() > 0
